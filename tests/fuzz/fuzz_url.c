/*
 * fuzz_url.c -- the URL parsers and the redaction (src/net/url.c), and libpq's reading of the
 * URL binduq hands it: no output ever depends on a secret.
 *
 * The input's first byte picks a scheme ("redis://", "postgresql://", ..., or none: the
 * input is the whole string); the other bytes, up to the first NUL, follow it. The secrets
 * of the URL are, by the rule of url.h: the user-info (everything between the first "://"
 * and the last '@'; without "://", everything before the last '@'), and the value of each
 * option whose name ends in "password". Which part of the user-info is secret depends on the
 * reader: the Redis parser quotes none of it; the redaction keeps the user name (before the
 * first ':') and hides the rest, or all of it when there is no ':'; for PostgreSQL the user
 * name is a user name (libpq and the server print it), so only what follows the first ':'.
 *
 * The property is non-interference: a second URL is made by changing every byte of the
 * secret parts into another one of the same kind (see twin()), which the parsers cannot
 * tell apart by meaning (an escape stays valid or invalid, %00 stays %00, no separator is
 * made or unmade), and every output must be byte for byte the same for both: the Redis
 * parser's status, error text and the parts it read (hosts, ports, path, master, database);
 * the redaction, whole and cut to a length the input picks; bq_pg_url_split's status, error
 * text, URL for libpq and keyword names; and libpq's verdict on that URL (PQconninfoParse,
 * with its error text and the values it read). A leak of any secret byte outside the fixed
 * set below shows up as a difference. The plainer check runs first, for a readable report:
 * a secret part of three bytes or more may appear in an output only if it also appears in
 * the twin's output or in the URL outside the secret parts.
 *
 * Bytes the twin keeps: '%' and '0' (escapes), ':' '@' '/' '&' '=' (separators). A secret
 * made only of those is not checked.
 */
#include "fuzz.h"

#include "../../src/net/url.h"
#include "../../src/storage/pqapi.h"

#include <ctype.h>
#include <stdbool.h>
#include <string.h>

static const char *const schemes[8] = {
    "",          "redis://",         "rediss://",           "unix://", "redis+sentinel://",
    "redis+cluster://", "postgresql://", "postgresql+asyncpg://",
};

/* The byte b becomes in the twin (a permutation of 1..255 fixing the bytes above). */
static unsigned char perm[256];

static bool kept(int c)
{
    return c == 0 || c == '%' || c == '0' || c == ':' || c == '@' || c == '/' || c == '&' ||
           c == '=';
}

static void make_perm(void)
{
    /* One cycle per kind: 1-9, a-f, A-F (hex digits stay hex digits, keeping escapes
     * valid or invalid), and everything else. */
    unsigned char cls[4][256];
    int n[4] = {0, 0, 0, 0};
    for (int c = 0; c < 256; c++) {
        perm[c] = (unsigned char)c;
        if (kept(c))
            continue;
        int k = (c >= '1' && c <= '9') ? 0 : (c >= 'a' && c <= 'f') ? 1
                                          : (c >= 'A' && c <= 'F') ? 2 : 3;
        cls[k][n[k]++] = (unsigned char)c;
    }
    for (int k = 0; k < 4; k++) {
        for (int i = 0; i < n[k]; i++)
            perm[cls[k][i]] = cls[k][(i + 1) % n[k]];
    }
}

/* A secret part: url[off..off+len). */
struct span {
    size_t off, len;
};

#define MAX_SPANS 64

struct secrets {
    struct span redis[MAX_SPANS], redact[MAX_SPANS], pg[MAX_SPANS];
    size_t nredis, nredact, npg;
};

static void add(struct span *v, size_t *n, size_t off, size_t len)
{
    if (len > 0 && *n < MAX_SPANS)
        v[(*n)++] = (struct span){off, len};
}

/* Finds the secret parts of url, by the rule, written out here again rather than taken from
 * bq_url_userinfo (only the option names use url.c's predicate, which is their definition). */
static void find_secrets(const char *url, struct secrets *s)
{
    memset(s, 0, sizeof *s);
    const char *sep = strstr(url, "://");
    const char *ui = sep ? sep + 3 : url, *at = strrchr(ui, '@');
    const char *rest = url;
    if (at != NULL) {
        size_t off = (size_t)(ui - url), len = (size_t)(at - ui);
        const char *colon = memchr(ui, ':', len);
        add(s->redis, &s->nredis, off, len);
        if (colon != NULL && sep != NULL) {
            size_t u = (size_t)(colon + 1 - ui);
            add(s->redact, &s->nredact, off + u, len - u);
            add(s->pg, &s->npg, off + u, len - u);
        } else {
            add(s->redact, &s->nredact, off, len);
        }
        rest = at + 1;
    } else if (sep != NULL) {
        rest = ui;
    }
    const char *q = strchr(rest, '?');
    if (q == NULL)
        return;
    for (const char *p = q + 1;;) {
        const char *amp = strchr(p, '&');
        const char *stop = amp ? amp : p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        if (eq != NULL && bq_url_secret_option(p, (size_t)(eq - p))) {
            size_t off = (size_t)(eq + 1 - url), len = (size_t)(stop - eq - 1);
            add(s->redis, &s->nredis, off, len);
            add(s->redact, &s->nredact, off, len);
            add(s->pg, &s->npg, off, len);
        }
        if (amp == NULL)
            break;
        p = amp + 1;
    }
}

/* The twin of url with the spans changed (a new string, freed by the caller). */
static char *twin(const char *url, const struct span *v, size_t n)
{
    char *t = strdup(url);
    FUZZ_ASSERT(t != NULL);
    for (size_t i = 0; i < n; i++) {
        for (size_t j = v[i].off; j < v[i].off + v[i].len; j++)
            t[j] = (char)perm[(unsigned char)t[j]];
    }
    return t;
}

/* Everything a reader printed or decided, as one string. */
struct out {
    char text[8192];
    size_t n;
};

static void emit(struct out *o, const char *tag, const char *s)
{
    int k = snprintf(o->text + o->n, sizeof o->text - o->n, "%s=[%s]\n", tag, s ? s : "(null)");
    if (k > 0)
        o->n += (size_t)k < sizeof o->text - o->n ? (size_t)k : sizeof o->text - o->n - 1;
}

static void emitf(struct out *o, const char *tag, long v)
{
    char b[32];
    snprintf(b, sizeof b, "%ld", v);
    emit(o, tag, b);
}

static void read_redis(const char *url, struct out *o)
{
    struct bq_url u;
    bq_err err;
    err.msg[0] = '\0';
    bq_status st = bq_url_parse(url, "REDIS_URL", &u, &err);
    emitf(o, "redis.status", st);
    if (st != BQ_OK) {
        emit(o, "redis.error", err.msg);
    } else {
        emitf(o, "redis.kind", u.kind);
        emitf(o, "redis.tls", u.tls);
        emitf(o, "redis.db", u.db);
        emit(o, "redis.path", u.path);
        emit(o, "redis.service", u.service);
        for (size_t i = 0; i < u.nhosts; i++) {
            emit(o, "redis.host", u.hosts[i].host);
            emitf(o, "redis.port", u.hosts[i].port);
        }
        char addr[256];
        bq_url_address(&u, addr, sizeof addr);
        emit(o, "redis.address", addr);
    }
    bq_url_free(&u);
}

static void read_redact(const char *url, size_t cut, struct out *o)
{
    char big[4096 + 64], small[256];
    bq_url_redact(url, big, sizeof big);
    emit(o, "redact", big);
    bq_url_redact(url, small, cut);
    emit(o, "redact.cut", cut ? small : "");
}

static void read_pg(const char *url, struct out *o)
{
    struct bq_pg_url u;
    bq_err err;
    err.msg[0] = '\0';
    bq_status st = bq_pg_url_split(url, "DATABASE_URL", &u, &err);
    emitf(o, "pg.status", st);
    if (st != BQ_OK) {
        emit(o, "pg.error", err.msg);
    } else {
        emit(o, "pg.url", u.url);
        for (size_t i = 0; i < u.nsecrets; i++)
            emit(o, "pg.key", u.keys[i]);
        static int loaded; /* 1: libpq is there, -1: it is not */
        if (loaded == 0)
            loaded = bq_pq_load(NULL) == BQ_OK ? 1 : -1;
        if (loaded == 1) {
            char *perr = NULL;
            PQconninfoOption *opts = bq_pq.PQconninfoParse(u.url, &perr);
            emit(o, "libpq.error", opts ? "" : perr ? perr : "(out of memory)");
            if (opts != NULL) {
                for (PQconninfoOption *p = opts; p->keyword != NULL; p++) {
                    if (p->val != NULL && p->val[0] != '\0')
                        emit(o, p->keyword, p->val);
                }
            }
            bq_pq.PQconninfoFree(opts);
            bq_pq.PQfreemem(perr);
        }
    }
    bq_pg_url_free(&u);
}

/* The plainer check: no secret part of 3 bytes or more in out unless it is in the twin's
 * output or in the URL outside the secret parts (then it may come from there). */
static void check_plain(const char *url, const struct span *v, size_t n, const struct out *a,
                        const struct out *b, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i].len < 3)
            continue;
        char *secret = strndup(url + v[i].off, v[i].len);
        char *pub = strdup(url);
        FUZZ_ASSERT(secret != NULL && pub != NULL);
        for (size_t k = 0; k < n; k++) /* blank out every secret part */
            memset(pub + v[k].off, '\0' + 1, v[k].len);
        bool from_elsewhere = strstr(b->text, secret) != NULL || strstr(pub, secret) != NULL;
        if (!from_elsewhere && strstr(a->text, secret) != NULL)
            FUZZ_FAIL("%s: the secret '%s' of '%s' appears in:\n%s", what, secret, url,
                      a->text);
        free(secret);
        free(pub);
    }
}

static void same(const char *url, const char *tw, const struct out *a, const struct out *b,
                 const char *what)
{
    if (a->n != b->n || memcmp(a->text, b->text, a->n) != 0)
        FUZZ_FAIL("%s: the output depends on a secret\nurl:  %s\ntwin: %s\n--- url:\n%s--- "
                  "twin:\n%s", what, url, tw, a->text, b->text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (perm['a'] == 0)
        make_perm();
    const char *scheme = schemes[data[0] & 7];
    size_t cut = data[0] >> 3; /* 0..31: the small buffer for the cut redaction */
    size_t tail = strnlen((const char *)data + 1, size - 1), slen = strlen(scheme);
    char *url = malloc(slen + tail + 1);
    FUZZ_ASSERT(url != NULL);
    memcpy(url, scheme, slen);
    memcpy(url + slen, data + 1, tail);
    url[slen + tail] = '\0';

    struct secrets s;
    find_secrets(url, &s);
    static struct out a, b;

    char *t = twin(url, s.redis, s.nredis);
    a.n = b.n = 0;
    read_redis(url, &a);
    read_redis(t, &b);
    check_plain(url, s.redis, s.nredis, &a, &b, "bq_url_parse");
    same(url, t, &a, &b, "bq_url_parse");
    free(t);

    t = twin(url, s.redact, s.nredact);
    a.n = b.n = 0;
    read_redact(url, cut, &a);
    read_redact(t, cut, &b);
    check_plain(url, s.redact, s.nredact, &a, &b, "bq_url_redact");
    same(url, t, &a, &b, "bq_url_redact");
    free(t);

    t = twin(url, s.pg, s.npg);
    a.n = b.n = 0;
    read_pg(url, &a);
    read_pg(t, &b);
    check_plain(url, s.pg, s.npg, &a, &b, "bq_pg_url_split");
    same(url, t, &a, &b, "bq_pg_url_split");
    free(t);

    free(url);
    return 0;
}
