/*
 * url.c -- see url.h. A small hand-written scanner: the grammar is fixed and tiny, and every
 * error must say which part is wrong without echoing secrets. The user-info is found first,
 * by one rule (bq_url_userinfo: up to the last '@'), and cut off before anything else is
 * looked at, so no later error can quote a piece of it; password options are recognised by
 * one predicate (bq_url_secret_option) in the parser, the redaction and the PostgreSQL split.
 */
#include "url.h"

#include "../core/alloc.h"
#include "../core/err.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void bq_url_free(struct bq_url *u)
{
    if (u == NULL)
        return;
    bq_free(u->user);
    bq_free(u->password);
    for (size_t i = 0; i < u->nhosts; i++)
        bq_free(u->hosts[i].host);
    bq_free(u->hosts);
    bq_free(u->path);
    bq_free(u->service);
    bq_free(u->sentinel_password);
    bq_free(u->ssl_ca_certs);
    bq_free(u->ssl_ca_path);
    bq_free(u->ssl_certfile);
    bq_free(u->ssl_keyfile);
    memset(u, 0, sizeof *u);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
}

/* Percent-decodes s[0..n) into a new string. Returns NULL with *bad set on a bad escape,
 * NULL with *bad clear when out of memory. */
static char *pct_decode(const char *s, size_t n, bool *bad)
{
    *bad = false;
    char *out = bq_malloc(n + 1);
    if (out == NULL)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            int hi = i + 1 < n ? hexval((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                bq_free(out);
                *bad = true;
                return NULL;
            }
            out[j++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[j++] = s[i];
        }
    }
    out[j] = '\0';
    return out;
}

/* Parses a decimal integer in [lo, hi] from s[0..n). */
static bool parse_int(const char *s, size_t n, long lo, long hi, int *out)
{
    if (n == 0 || n > 10)
        return false;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi)
        return false;
    *out = (int)v;
    return true;
}

bool bq_url_userinfo(const char *url, size_t *start, size_t *len)
{
    const char *sep = url ? strstr(url, "://") : NULL;
    if (sep == NULL)
        return false;
    const char *ui = sep + 3, *at = strrchr(ui, '@');
    if (at == NULL)
        return false;
    *start = (size_t)(ui - url);
    *len = (size_t)(at - ui);
    return true;
}

bool bq_url_secret_option(const char *name, size_t n)
{
    /* Decode on the fly, keeping the last 8 characters: the name may be any length. An
     * escape that is not one is kept as written (libpq refuses it anyway). */
    static const char suffix[] = "password";
    char tail[8];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)name[i];
        if (c == '%' && i + 2 < n) {
            int hi = hexval((unsigned char)name[i + 1]), lo = hexval((unsigned char)name[i + 2]);
            if (hi >= 0 && lo >= 0) {
                c = hi * 16 + lo;
                i += 2;
            }
        }
        if (k == sizeof tail) {
            memmove(tail, tail + 1, sizeof tail - 1);
            k--;
        }
        tail[k++] = (char)tolower(c);
    }
    return k == sizeof tail && memcmp(tail, suffix, sizeof tail) == 0;
}

/* True if s[0..n) can be a scheme (RFC 3986: a letter, then letters, digits, '+', '-', '.'),
 * at most 32 bytes: only then is it quoted in an error. */
static bool scheme_ok(const char *s, size_t n)
{
    if (n == 0 || n > 32 || !isalpha((unsigned char)s[0]))
        return false;
    for (size_t i = 1; i < n; i++) {
        int c = (unsigned char)s[i];
        if (!isalnum(c) && c != '+' && c != '-' && c != '.')
            return false;
    }
    return true;
}

static bool host_char_ok(int c)
{
    return isalnum(c) || c == '.' || c == '-' || c == '_';
}

#define OOM() bq_err_set(err, BQ_ENOMEM, "%s: out of memory", what)

/* Parses one "host[:port]" or "[v6]:port" from s[0..n) into hp. */
static bq_status parse_hostport(const char *s, size_t n, int defport, const char *what,
                                struct bq_hostport *hp, bq_err *err)
{
    const char *host = s, *port = NULL;
    size_t hostlen, portlen = 0;
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (close == NULL)
            return bq_err_set(err, BQ_EINVAL, "%s: unterminated IPv6 address '%.*s'", what,
                              (int)n, s);
        host = s + 1;
        hostlen = (size_t)(close - host);
        size_t rest = n - (size_t)(close + 1 - s);
        if (rest > 0) {
            if (close[1] != ':')
                return bq_err_set(err, BQ_EINVAL, "%s: unexpected text after IPv6 address "
                                  "'%.*s'", what, (int)n, s);
            port = close + 2;
            portlen = rest - 1;
        }
        for (size_t i = 0; i < hostlen; i++) {
            if (!isxdigit((unsigned char)host[i]) && host[i] != ':' && host[i] != '.')
                return bq_err_set(err, BQ_EINVAL, "%s: bad IPv6 address '%.*s'", what,
                                  (int)hostlen, host);
        }
        if (hostlen == 0)
            return bq_err_set(err, BQ_EINVAL, "%s: empty IPv6 address", what);
    } else {
        const char *colon = memchr(s, ':', n);
        hostlen = colon ? (size_t)(colon - s) : n;
        if (colon != NULL) {
            port = colon + 1;
            portlen = n - hostlen - 1;
        }
        for (size_t i = 0; i < hostlen; i++) {
            if (!host_char_ok((unsigned char)host[i]))
                return bq_err_set(err, BQ_EINVAL, "%s: bad host name '%.*s'", what,
                                  (int)hostlen, host);
        }
    }
    hp->port = defport;
    if (port != NULL && !parse_int(port, portlen, 1, 65535, &hp->port))
        return bq_err_set(err, BQ_EINVAL, "%s: bad port '%.*s' (expected 1-65535)", what,
                          (int)portlen, port);
    hp->host = hostlen == 0 ? bq_strdup("localhost") : bq_strndup(host, hostlen);
    return hp->host == NULL ? OOM() : BQ_OK;
}

/* Parses a comma-separated host list into u->hosts. */
static bq_status parse_hosts(const char *s, size_t n, int defport, bool multi, const char *what,
                             struct bq_url *u, bq_err *err)
{
    size_t count = 1;
    for (size_t i = 0; i < n; i++)
        count += s[i] == ',';
    if (count > 1 && !multi)
        return bq_err_set(err, BQ_EINVAL, "%s: several hosts are only allowed with "
                          "redis+sentinel:// or redis+cluster://", what);
    u->hosts = bq_calloc(count, sizeof *u->hosts);
    if (u->hosts == NULL)
        return OOM();
    const char *p = s, *end = s + n;
    while (p <= end && u->nhosts < count) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *stop = comma ? comma : end;
        if (stop == p && multi)
            return bq_err_set(err, BQ_EINVAL, "%s: empty host in the host list", what);
        bq_status st = parse_hostport(p, (size_t)(stop - p), defport, what,
                                      &u->hosts[u->nhosts], err);
        if (st != BQ_OK)
            return st;
        u->nhosts++;
        p = stop + 1;
    }
    return BQ_OK;
}

/* redis-py's to_bool: "0", "F", "FALSE", "N", "NO" (any case) are false; anything else,
 * true ("" is absent). */
static int py_bool(const char *v)
{
    static const char *const no[] = {"0", "f", "false", "n", "no"};
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        if (strcasecmp(v, no[i]) == 0)
            return 0;
    return 1;
}

/* A number of seconds as redis-py's float() takes it, finite, from 0 to a year. */
static bool py_seconds(const char *v, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    while (*end == ' ')
        end++;
    if (*v == '\0' || *end != '\0' || errno != 0 || !(d >= 0 && d <= 365.0 * 86400))
        return false;
    *out = d;
    return true;
}

/* Takes one redis-py option (name k, percent-decoded value v); false if k is not one. */
static bq_status py_option(const char *k, const char *v, const char *what, struct bq_url *u,
                           bool *known, bq_err *err)
{
    static const char *const ignored[] = {
        "health_check_interval", "protocol", "client_name", "decode_responses", "encoding",
        "encoding_errors", "socket_keepalive", "ssl_check_hostname", "ssl_password",
        "single_connection_client",
    };
    *known = true;
    int n;
    if (strcmp(k, "socket_timeout") == 0 || strcmp(k, "socket_connect_timeout") == 0) {
        double *d = k[7] == 't' ? &u->socket_timeout : &u->socket_connect_timeout;
        if (!py_seconds(v, d))
            return bq_err_set(err, BQ_EINVAL, "%s: URL option %s must be a number of seconds "
                              "(got '%.40s')", what, k, v);
    } else if (strcmp(k, "max_connections") == 0) {
        if (!parse_int(v, strlen(v), 1, 100000, &u->max_connections))
            return bq_err_set(err, BQ_EINVAL, "%s: URL option max_connections must be a whole "
                              "number from 1 to 100000 (got '%.40s')", what, v);
    } else if (strcmp(k, "retry_on_timeout") == 0) {
        u->retry_on_timeout = py_bool(v);
    } else if (strcmp(k, "ssl_cert_reqs") == 0) {
        if (strcasecmp(v, "none") == 0 || strcasecmp(v, "cert_none") == 0)
            u->ssl_cert_reqs = 0;
        else if (strcasecmp(v, "optional") == 0 || strcasecmp(v, "cert_optional") == 0)
            u->ssl_cert_reqs = 1;
        else if (strcasecmp(v, "required") == 0 || strcasecmp(v, "cert_required") == 0)
            u->ssl_cert_reqs = 2;
        else
            return bq_err_set(err, BQ_EINVAL, "%s: URL option ssl_cert_reqs must be none, "
                              "optional or required (got '%.40s')", what, v);
    } else if (strcmp(k, "ssl_ca_certs") == 0 || strcmp(k, "ssl_ca_path") == 0 ||
               strcmp(k, "ssl_certfile") == 0 || strcmp(k, "ssl_keyfile") == 0) {
        char **dst = strcmp(k, "ssl_ca_certs") == 0  ? &u->ssl_ca_certs
                     : strcmp(k, "ssl_ca_path") == 0 ? &u->ssl_ca_path
                     : strcmp(k, "ssl_certfile") == 0 ? &u->ssl_certfile
                                                      : &u->ssl_keyfile;
        bq_free(*dst);
        if ((*dst = bq_strdup(v)) == NULL)
            return OOM();
    } else {
        *known = false;
        for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++) {
            if (strcmp(k, ignored[i]) != 0)
                continue;
            *known = true;
            if ((strcmp(k, "health_check_interval") == 0 || strcmp(k, "protocol") == 0) &&
                !parse_int(v, strlen(v), 0, 0x7fffffff, &n))
                return bq_err_set(err, BQ_EINVAL, "%s: URL option %s must be a whole number "
                                  "(got '%.40s')", what, k, v);
            size_t used = strlen(u->ignored);
            if (strstr(u->ignored, k) == NULL && used + strlen(k) + 2 < sizeof u->ignored)
                snprintf(u->ignored + used, sizeof u->ignored - used, "%s%s", used ? "," : "",
                         k);
        }
    }
    return BQ_OK;
}

/* Parses the query string "k=v&k=v" (s[0..n), without the '?'). */
static bq_status parse_query(const char *s, size_t n, const char *what, struct bq_url *u,
                             bq_err *err)
{
    const char *p = s, *end = s + n;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        if (eq == NULL)
            return bq_err_set(err, BQ_EINVAL, "%s: URL option '%.*s' has no value", what,
                              (int)(stop - p), p);
        size_t klen = (size_t)(eq - p), vlen = (size_t)(stop - eq - 1);
        const char *v = eq + 1;
        if (klen == 2 && memcmp(p, "db", 2) == 0) {
            if (!parse_int(v, vlen, 0, 0x7fffffff, &u->db))
                return bq_err_set(err, BQ_EINVAL, "%s: bad database number '%.*s' in ?db=",
                                  what, (int)vlen, v);
        } else if (klen == 17 && memcmp(p, "sentinel_password", 17) == 0 &&
                   u->kind == BQ_URL_SENTINEL) {
            bool bad;
            bq_free(u->sentinel_password);
            u->sentinel_password = pct_decode(v, vlen, &bad);
            if (u->sentinel_password == NULL)
                return bad ? bq_err_set(err, BQ_EINVAL, "%s: bad percent-escape in "
                                        "sentinel_password", what) : OOM();
        } else if ((klen == 8 && memcmp(p, "password", 8) == 0) ||
                   (klen == 8 && memcmp(p, "username", 8) == 0)) {
            /* As redis-py: the query's, when the user-info gives none. */
            bool bad, pw = p[0] == 'p';
            char **dst = pw ? &u->password : &u->user;
            char *val = pct_decode(v, vlen, &bad);
            if (val == NULL)
                return bad ? bq_err_set(err, BQ_EINVAL, "%s: bad percent-escape in the %s",
                                        what, pw ? "password" : "user name") : OOM();
            if (*dst == NULL)
                *dst = val;
            else
                bq_free(val);
        } else {
            bool bad, known = false;
            char key[32];
            char *val = klen < sizeof key ? pct_decode(v, vlen, &bad) : NULL;
            bq_status st = BQ_OK;
            if (val != NULL) {
                memcpy(key, p, klen);
                key[klen] = '\0';
                st = py_option(key, val, what, u, &known, err);
                bq_free(val);
            } else if (klen < sizeof key && !bad) {
                return OOM();
            }
            if (st != BQ_OK)
                return st;
            if (!known)
                return bq_err_set(err, BQ_EINVAL, "%s: unknown URL option '%.*s'", what,
                                  (int)(klen < 40 ? klen : 40), p);
        }
        p = stop + 1;
    }
    return BQ_OK;
}

/* Splits "user:password" (s[0..n)) into u->user and u->password. */
static bq_status parse_userinfo(const char *s, size_t n, const char *what, struct bq_url *u,
                                bq_err *err)
{
    const char *colon = memchr(s, ':', n);
    bool bad;
    if (colon == NULL) {
        /* A user name alone, as redis-py reads redis://default@host: no AUTH is sent. */
        u->user = n > 0 ? pct_decode(s, n, &bad) : NULL;
        if (n > 0 && u->user == NULL)
            return bad ? bq_err_set(err, BQ_EINVAL, "%s: bad percent-escape in the user name",
                                    what) : OOM();
        return BQ_OK;
    }
    size_t ulen = (size_t)(colon - s);
    if (ulen > 0) {
        u->user = pct_decode(s, ulen, &bad);
        if (u->user == NULL)
            return bad ? bq_err_set(err, BQ_EINVAL, "%s: bad percent-escape in the user name",
                                    what) : OOM();
    }
    u->password = pct_decode(colon + 1, n - ulen - 1, &bad);
    if (u->password == NULL)
        return bad ? bq_err_set(err, BQ_EINVAL, "%s: bad percent-escape in the password", what)
                   : OOM();
    return BQ_OK;
}

bq_status bq_url_parse(const char *url, const char *what, struct bq_url *out, bq_err *err)
{
    memset(out, 0, sizeof *out);
    out->socket_timeout = out->socket_connect_timeout = -1;
    out->retry_on_timeout = out->ssl_cert_reqs = -1;
    if (what == NULL)
        what = "URL";
    if (url == NULL || *url == '\0')
        return bq_err_set(err, BQ_EINVAL, "%s: empty URL", what);

    static const struct {
        const char *prefix;
        enum bq_url_kind kind;
        bool tls;
    } schemes[] = {
        {"redis://", BQ_URL_TCP, false},           {"rediss://", BQ_URL_TCP, true},
        {"unix://", BQ_URL_UNIX, false},           {"redis+sentinel://", BQ_URL_SENTINEL, false},
        {"rediss+sentinel://", BQ_URL_SENTINEL, true},
        {"redis+cluster://", BQ_URL_CLUSTER, false},
        {"rediss+cluster://", BQ_URL_CLUSTER, true},
    };
    const char *rest = NULL;
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
        size_t k = strlen(schemes[i].prefix);
        if (strncmp(url, schemes[i].prefix, k) == 0) {
            out->kind = schemes[i].kind;
            out->tls = schemes[i].tls;
            rest = url + k;
            break;
        }
    }
    if (rest == NULL) {
        const char *sep = strstr(url, "://");
        if (sep == NULL)
            return bq_err_set(err, BQ_EINVAL, "%s: not a URL (expected redis://host:port/db)",
                              what);
        if (!scheme_ok(url, (size_t)(sep - url)))
            return bq_err_set(err, BQ_EINVAL, "%s: unknown scheme (expected redis, rediss, "
                              "unix, redis+sentinel or redis+cluster)", what);
        return bq_err_set(err, BQ_EINVAL, "%s: unknown scheme '%.*s' (expected redis, rediss, "
                          "unix, redis+sentinel or redis+cluster)", what, (int)(sep - url), url);
    }

    /* The user-info first (up to the last '@' of the whole URL, see url.h), so that nothing
     * below ever looks at, or quotes, a piece of it. */
    size_t uistart, uilen;
    bq_status st;
    if (bq_url_userinfo(url, &uistart, &uilen)) {
        st = parse_userinfo(url + uistart, uilen, what, out, err);
        if (st != BQ_OK)
            return st;
        rest = url + uistart + uilen + 1;
    }
    const char *query = strchr(rest, '?');
    size_t len = query ? (size_t)(query - rest) : strlen(rest);
    const char *slash = out->kind == BQ_URL_UNIX ? NULL : memchr(rest, '/', len);
    size_t authlen = slash ? (size_t)(slash - rest) : len;

    if (out->kind == BQ_URL_UNIX) {
        if (len == 0 || rest[0] != '/')
            return bq_err_set(err, BQ_EINVAL, "%s: unix:// needs an absolute socket path "
                              "(unix:///path/to/redis.sock)", what);
        out->path = bq_strndup(rest, len);
        if (out->path == NULL)
            return OOM();
    } else {
        bool multi = out->kind == BQ_URL_SENTINEL || out->kind == BQ_URL_CLUSTER;
        int defport = out->kind == BQ_URL_SENTINEL ? 26379 : 6379;
        if (multi && authlen == 0)
            return bq_err_set(err, BQ_EINVAL, "%s: no hosts given", what);
        st = parse_hosts(rest, authlen, defport, multi, what, out, err);
        if (st != BQ_OK)
            return st;
        /* Path: "/db" for redis, "/master[/db]" for sentinel, nothing for cluster. */
        const char *path = rest + authlen;
        size_t plen = len - authlen;
        if (plen > 0 && path[0] == '/') {
            path++;
            plen--;
        }
        if (out->kind == BQ_URL_SENTINEL) {
            const char *sl = memchr(path, '/', plen);
            size_t mlen = sl ? (size_t)(sl - path) : plen;
            if (mlen == 0)
                return bq_err_set(err, BQ_EINVAL, "%s: missing the master name "
                                  "(redis+sentinel://host:26379/mymaster/0)", what);
            out->service = bq_strndup(path, mlen);
            if (out->service == NULL)
                return OOM();
            path += mlen;
            plen -= mlen;
            if (plen > 0) {
                path++;
                plen--;
            }
        }
        if (plen > 0 && out->kind == BQ_URL_CLUSTER)
            return bq_err_set(err, BQ_EINVAL, "%s: a cluster URL has no database path "
                              "(Redis Cluster only has database 0)", what);
        if (plen > 0 && !parse_int(path, plen, 0, 0x7fffffff, &out->db))
            return bq_err_set(err, BQ_EINVAL, "%s: bad database number '%.*s' in the path "
                              "(expected /0, /1, ...)", what, (int)plen, path);
    }
    if (query != NULL) {
        st = parse_query(query + 1, strlen(query + 1), what, out, err);
        if (st != BQ_OK)
            return st;
    }
    return BQ_OK;
}


/* Appends s[0..n) to out (size bytes, *used so far), truncating; keeps out terminated. */
static void put(char *out, size_t size, size_t *used, const char *s, size_t n)
{
    if (*used + 1 >= size)
        return;
    size_t room = size - 1 - *used;
    if (n > room)
        n = room;
    memcpy(out + *used, s, n);
    *used += n;
    out[*used] = '\0';
}

void bq_url_redact(const char *url, char *out, size_t size)
{
    if (size == 0)
        return;
    out[0] = '\0';
    if (url == NULL)
        return;
    size_t n = 0, uistart, uilen;
    const char *rest = url;
    if (bq_url_userinfo(url, &uistart, &uilen)) {
        const char *ui = url + uistart, *colon = memchr(ui, ':', uilen);
        put(out, size, &n, url, uistart);
        if (colon != NULL) {
            put(out, size, &n, ui, (size_t)(colon - ui));
            put(out, size, &n, ":***@", 5);
        } else {
            put(out, size, &n, "***@", 4);
        }
        rest = ui + uilen + 1;
    } else if (strstr(url, "://") != NULL) {
        rest = strstr(url, "://") + 3; /* a '?' before it does not start the query */
        put(out, size, &n, url, (size_t)(rest - url));
    } else if (strrchr(url, '@') != NULL) {
        put(out, size, &n, "***@", 4);
        rest = strrchr(url, '@') + 1;
    }
    /* The rest as written, except the values of password options. */
    const char *query = strchr(rest, '?');
    put(out, size, &n, rest, query ? (size_t)(query - rest) : strlen(rest));
    if (query == NULL)
        return;
    put(out, size, &n, "?", 1);
    const char *p = query + 1, *end = p + strlen(p);
    while (p <= end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        if (eq != NULL && bq_url_secret_option(p, (size_t)(eq - p))) {
            put(out, size, &n, p, (size_t)(eq + 1 - p));
            put(out, size, &n, "***", 3);
        } else {
            put(out, size, &n, p, (size_t)(stop - p));
        }
        if (amp == NULL)
            break;
        put(out, size, &n, "&", 1);
        p = amp + 1;
    }
}

void bq_url_address(const struct bq_url *u, char *out, size_t size)
{
    if (u->kind == BQ_URL_UNIX)
        snprintf(out, size, "%s", u->path ? u->path : "");
    else if (u->nhosts == 0)
        snprintf(out, size, "?");
    else if (strchr(u->hosts[0].host, ':') != NULL)
        snprintf(out, size, "[%s]:%d", u->hosts[0].host, u->hosts[0].port);
    else
        snprintf(out, size, "%s:%d", u->hosts[0].host, u->hosts[0].port);
}

/* ---- PostgreSQL ------------------------------------------------------------------------------ */

void bq_pg_url_free(struct bq_pg_url *u)
{
    if (u == NULL)
        return;
    bq_free(u->url);
    for (size_t i = 0; i < u->nsecrets; i++) {
        bq_free(u->keys[i]);
        bq_free(u->values[i]);
    }
    memset(u, 0, sizeof *u);
}

/* Adds keyword key (taken) = value (taken) to u; frees both on failure. */
static bq_status add_secret(struct bq_pg_url *u, char *key, char *value, const char *what,
                            bq_err *err)
{
    if (key == NULL || value == NULL || u->nsecrets == BQ_PG_URL_MAX_SECRETS) {
        bool oom = key == NULL || value == NULL;
        bq_free(key);
        bq_free(value);
        return oom ? OOM() : bq_err_set(err, BQ_EINVAL, "%s: more than %d passwords", what,
                                        BQ_PG_URL_MAX_SECRETS);
    }
    u->keys[u->nsecrets] = key;
    u->values[u->nsecrets++] = value;
    return BQ_OK;
}

/* Appends the percent-encoding of s (every byte but the unreserved ones) to out at *n. */
static void pct_encode(const char *s, char *out, size_t *n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            out[(*n)++] = (char)*p;
        } else {
            out[(*n)++] = '%';
            out[(*n)++] = hex[*p >> 4];
            out[(*n)++] = hex[*p & 15];
        }
    }
}

/* The query of a PostgreSQL URL (s[0..len), after the '?'): password options move to u's
 * keywords, the others are appended to out at *n as written. */
static bq_status pg_query(const char *s, size_t len, const char *what, struct bq_pg_url *u,
                          char *out, size_t *n, bq_err *err)
{
    const char *p = s, *end = s + len;
    bool first = true;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        if (eq != NULL && bq_url_secret_option(p, (size_t)(eq - p))) {
            bool bad;
            char *key = pct_decode(p, (size_t)(eq - p), &bad);
            if (key == NULL)
                return bad ? bq_err_set(err, BQ_EINVAL, "%s: bad percent-escape in the name "
                                        "of a password option", what) : OOM();
            char *value = pct_decode(eq + 1, (size_t)(stop - eq - 1), &bad);
            if (value == NULL && bad) {
                bool show = strlen(key) <= 32 && strspn(key, "abcdefghijklmnopqrstuvwxyz"
                                                        "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
                                                        == strlen(key);
                bq_err_set(err, BQ_EINVAL, "%s: bad percent-escape in the value of the "
                           "%s%s%s option (not shown)", what, show ? "'" : "",
                           show ? key : "password", show ? "'" : "");
                bq_free(key);
                return BQ_EINVAL;
            }
            bq_status st = add_secret(u, key, value, what, err);
            if (st != BQ_OK)
                return st;
        } else if (stop > p) {
            out[(*n)++] = first ? '?' : '&';
            memcpy(out + *n, p, (size_t)(stop - p));
            *n += (size_t)(stop - p);
            first = false;
        }
        p = stop + 1;
    }
    return BQ_OK;
}

bq_status bq_pg_url_split(const char *url, const char *what, struct bq_pg_url *out,
                          bq_err *err)
{
    memset(out, 0, sizeof *out);
    if (what == NULL)
        what = "URL";
    const char *sep = url ? strstr(url, "://") : NULL;
    if (sep == NULL)
        return bq_err_set(err, BQ_EINVAL, "%s: expected "
                          "postgresql://[user[:password]@]host[:port]/database", what);
    size_t slen = (size_t)(sep - url);
    const char *plus = memchr(url, '+', slen);
    size_t base = plus ? (size_t)(plus - url) : slen;
    if (!((base == 10 && strncmp(url, "postgresql", 10) == 0) ||
          (base == 8 && strncmp(url, "postgres", 8) == 0)) ||
        (plus != NULL && (size_t)(plus - url) + 1 == slen)) {
        if (!scheme_ok(url, slen))
            return bq_err_set(err, BQ_EINVAL, "%s: unsupported scheme (supported: postgresql://, "
                              "postgres:// or postgresql+driver://, e.g. postgresql+asyncpg://)",
                              what);
        return bq_err_set(err, BQ_EINVAL, "%s: unsupported scheme '%.*s' (supported: "
                          "postgresql://, postgres:// or postgresql+driver://, e.g. "
                          "postgresql+asyncpg://)", what, (int)slen, url);
    }

    /* The user-info (up to the last '@'): the user name goes back into the URL encoded, the
     * password becomes the first keyword. */
    const char *rest = sep + 3;
    char *user = NULL;
    size_t uistart, uilen;
    bq_status st = BQ_OK;
    if (bq_url_userinfo(url, &uistart, &uilen)) {
        const char *ui = url + uistart, *colon = memchr(ui, ':', uilen);
        size_t ulen = colon ? (size_t)(colon - ui) : uilen;
        bool bad;
        user = pct_decode(ui, ulen, &bad);
        if (user == NULL)
            return bad ? bq_err_set(err, BQ_EINVAL, "%s: bad percent-escape in the user name",
                                    what) : OOM();
        if (colon != NULL) {
            char *pw = pct_decode(colon + 1, uilen - ulen - 1, &bad);
            if (pw == NULL && bad)
                st = bq_err_set(err, BQ_EINVAL, "%s: bad percent-escape in the password",
                                what);
            else
                st = add_secret(out, bq_strdup("password"), pw, what, err);
        }
        rest = ui + uilen + 1;
    }
    /* Room for: scheme, "://", the user encoded (3 bytes a byte), '@', the rest. */
    size_t rlen = strlen(rest);
    size_t need = base + 3 + (user ? 3 * strlen(user) + 1 : 0) + rlen + 1;
    if (st == BQ_OK && (out->url = bq_malloc(need)) == NULL)
        st = OOM();
    if (st != BQ_OK) {
        bq_free(user);
        return st;
    }
    size_t n = 0;
    memcpy(out->url, url, base);
    n = base;
    memcpy(out->url + n, "://", 3);
    n += 3;
    if (user != NULL && user[0] != '\0') {
        pct_encode(user, out->url, &n);
        out->url[n++] = '@';
    }
    bq_free(user);
    const char *query = memchr(rest, '?', rlen);
    size_t hlen = query ? (size_t)(query - rest) : rlen;
    memcpy(out->url + n, rest, hlen);
    n += hlen;
    if (query != NULL)
        st = pg_query(query + 1, rlen - hlen - 1, what, out, out->url, &n, err);
    out->url[n] = '\0';
    return st;
}
