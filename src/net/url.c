/*
 * url.c -- see url.h. A small hand-written scanner: the grammar is fixed and tiny, and every
 * error must say which part is wrong without echoing secrets.
 */
#include "url.h"

#include "../core/alloc.h"
#include "../core/err.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        } else {
            return bq_err_set(err, BQ_EINVAL, "%s: unknown URL option '%.*s'", what,
                              (int)klen, p);
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
    if (colon == NULL)
        return bq_err_set(err, BQ_EINVAL, "%s: the user-info part has a user name but no "
                          "password (write :password@ for a password alone)", what);
    bool bad;
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
        return bq_err_set(err, BQ_EINVAL, "%s: unknown scheme '%.*s' (expected redis, rediss, "
                          "unix, redis+sentinel or redis+cluster)", what,
                          (int)(sep - url) > 32 ? 32 : (int)(sep - url), url);
    }

    /* Cut the query string off first; '?' cannot appear in the other parts. */
    const char *query = strchr(rest, '?');
    size_t len = query ? (size_t)(query - rest) : strlen(rest);

    /* User info ends at the last '@' before the path, so passwords may contain '@'
     * if they are percent-encoded, and unencoded '/' in passwords stays an error. */
    const char *slash = out->kind == BQ_URL_UNIX ? NULL : memchr(rest, '/', len);
    size_t authlen = slash ? (size_t)(slash - rest) : len;
    const char *at = NULL;
    for (const char *p = rest; p < rest + (out->kind == BQ_URL_UNIX ? len : authlen); p++) {
        if (*p == '@')
            at = p;
    }
    bq_status st;
    if (at != NULL) {
        st = parse_userinfo(rest, (size_t)(at - rest), what, out, err);
        if (st != BQ_OK)
            return st;
        len -= (size_t)(at + 1 - rest);
        authlen -= (size_t)(at + 1 - rest);
        rest = at + 1;
    }

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

void bq_url_redact(const char *url, char *out, size_t size)
{
    if (size == 0)
        return;
    out[0] = '\0';
    if (url == NULL)
        return;
    const char *sep = strstr(url, "://");
    const char *auth = sep ? sep + 3 : url;
    /* For unix:// the user info may precede an absolute path; elsewhere it precedes '/'. */
    size_t alen = strncmp(url, "unix", 4) == 0 ? strcspn(auth, "?") : strcspn(auth, "/?");
    const char *at = NULL;
    for (const char *p = auth; sep != NULL && p < auth + alen; p++) {
        if (*p == '@')
            at = p;
    }
    size_t n = 0;
    if (at != NULL) {
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        int keep = colon ? (int)(colon - auth) : 0;
        n = (size_t)snprintf(out, size, "%.*s%.*s:***", (int)(auth - url), url, keep, auth);
        url = at;
    }
    /* Copy the rest, hiding the value of a sentinel_password option. */
    const char *opt = strstr(url, "sentinel_password=");
    if (opt != NULL) {
        opt += strlen("sentinel_password=");
        if (n < size)
            n += (size_t)snprintf(out + n, size - n, "%.*s***", (int)(opt - url), url);
        url = opt + strcspn(opt, "&");
    }
    if (n < size)
        snprintf(out + n, size - n, "%s", url);
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
