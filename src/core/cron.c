/*
 * cron.c -- see cron.h.
 *
 * The search works in two clocks. "Wall" seconds are the local date and time of a zone
 * counted as if it were UTC (wall = utc + offset); next_wall finds the first matching wall
 * second from a given one with plain calendar arithmetic. bq_cron_next walks the zone's
 * segments of constant offset: within a segment wall time is utc + off, one-to-one, so the
 * first match of the segment is exact; the rules for gaps and overlaps apply where two
 * segments meet.
 */
#include "cron.h"

#include "alloc.h"
#include "clock.h"
#include "err.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Calendar (clock.h's civil-date arithmetic) ----------------------------------------- */

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* ---- Parsing ------------------------------------------------------------------------------- */

static const char *const MONTHS[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                     "jul", "aug", "sep", "oct", "nov", "dec"};
static const char *const DAYS[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

static const struct field {
    const char *name;
    int lo, hi;
} FIELDS[6] = {
    {"second", 0, 59}, {"minute", 0, 59},      {"hour", 0, 23},
    {"day-of-month", 1, 31}, {"month", 1, 12}, {"day-of-week", 0, 7},
};

/* A number or (months, days) a name at *p; advances *p. -1 when there is none. */
static int value(const char **p, int f)
{
    const char *s = *p;
    if (isdigit((unsigned char)*s)) {
        long v = 0;
        while (isdigit((unsigned char)*s) && v < 1000)
            v = v * 10 + (*s++ - '0');
        *p = s;
        return (int)v;
    }
    const char *const *names = f == 4 ? MONTHS : f == 5 ? DAYS : NULL;
    int count = f == 4 ? 12 : 7;
    for (int i = 0; names != NULL && i < count; i++) {
        if (strncasecmp(s, names[i], 3) == 0 && !isalpha((unsigned char)s[3])) {
            *p = s + 3;
            return f == 4 ? i + 1 : i;
        }
    }
    return -1;
}

/* Parses field f from text[0..len) into *bits. */
static bq_status field(const char *text, size_t len, int f, uint64_t *bits, bq_err *err)
{
    char buf[128];
    const struct field *fd = &FIELDS[f];
    if (len == 0 || len >= sizeof buf)
        return bq_err_set(err, BQ_EINVAL, "cron: the %s field is %s", fd->name,
                          len == 0 ? "empty" : "too long");
    memcpy(buf, text, len);
    buf[len] = '\0';
    *bits = 0;
    const char *p = buf;
    for (;;) {
        int lo, hi, step = 1;
        if (*p == '*') {
            lo = fd->lo, hi = fd->hi;
            p++;
        } else {
            lo = value(&p, f);
            if (lo < 0)
                return bq_err_set(err, BQ_EINVAL, "cron: the %s field '%s' has no value where "
                                  "one is expected", fd->name, buf);
            hi = lo;
            if (*p == '-') {
                p++;
                hi = value(&p, f);
                if (hi < 0)
                    return bq_err_set(err, BQ_EINVAL, "cron: the %s field '%s' has a range "
                                      "without an end", fd->name, buf);
            } else if (*p == '/') {
                hi = fd->hi;
            }
        }
        if (*p == '/') {
            p++;
            step = value(&p, 0);
            if (step < 1)
                return bq_err_set(err, BQ_EINVAL, "cron: the %s field '%s' needs a step of 1 or "
                                  "more after '/'", fd->name, buf);
        }
        if (lo < fd->lo || hi > fd->hi || lo > hi)
            return bq_err_set(err, BQ_EINVAL, "cron: the %s field '%s' is out of range (%d-%d%s)",
                              fd->name, buf, fd->lo, fd->hi,
                              lo > hi ? ", and a range must not wrap" : "");
        for (int v = lo; v <= hi; v += step)
            *bits |= (uint64_t)1 << (f == 5 && v == 7 ? 0 : v);
        if (*p == '\0')
            return BQ_OK;
        if (*p != ',')
            return bq_err_set(err, BQ_EINVAL, "cron: the %s field '%s' has an unexpected '%c'",
                              fd->name, buf, *p);
        p++;
    }
}

static const struct {
    const char *name, *fields;
} MACROS[] = {
    {"@yearly", "0 0 0 1 1 *"}, {"@annually", "0 0 0 1 1 *"}, {"@monthly", "0 0 0 1 * *"},
    {"@weekly", "0 0 0 * * 0"}, {"@daily", "0 0 0 * * *"},    {"@midnight", "0 0 0 * * *"},
    {"@hourly", "0 0 * * * *"},
};

bq_status bq_cron_parse(const char *expr, struct bq_cron *out, bq_err *err)
{
    memset(out, 0, sizeof *out);
    if (expr == NULL)
        return bq_err_set(err, BQ_EINVAL, "cron: no expression");
    while (isspace((unsigned char)*expr))
        expr++;
    if (*expr == '@') {
        for (size_t i = 0; i < sizeof MACROS / sizeof MACROS[0]; i++) {
            size_t n = strlen(MACROS[i].name);
            if (strncasecmp(expr, MACROS[i].name, n) != 0 ||
                (expr[n] != '\0' && !isspace((unsigned char)expr[n])))
                continue;
            /* A macro is the whole expression: fields after it would be silently ignored. */
            const char *rest = expr + n;
            while (isspace((unsigned char)*rest))
                rest++;
            if (*rest != '\0')
                return bq_err_set(err, BQ_EINVAL, "cron: nothing may follow %s (got '%.32s')",
                                  MACROS[i].name, rest);
            return bq_cron_parse(MACROS[i].fields, out, err);
        }
        return bq_err_set(err, BQ_EINVAL, "cron: unknown macro '%.32s' (expected @yearly, "
                          "@monthly, @weekly, @daily or @hourly)", expr);
    }
    const char *start[7];
    size_t len[7];
    int n = 0;
    for (const char *p = expr; *p != '\0';) {
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\0')
            break;
        if (n == 6)
            return bq_err_set(err, BQ_EINVAL, "cron: more than 6 fields in '%.64s'", expr);
        start[n] = p;
        while (*p != '\0' && !isspace((unsigned char)*p))
            p++;
        len[n] = (size_t)(p - start[n]);
        n++;
    }
    if (n != 5 && n != 6)
        return bq_err_set(err, BQ_EINVAL, "cron: '%.64s' has %d fields (expected 6: second "
                          "minute hour day-of-month month day-of-week; or 5 without seconds)",
                          expr, n);
    int first = 6 - n; /* 5 fields: no seconds, which are then 0 */
    uint64_t bits[6] = {1, 0, 0, 0, 0, 0};
    for (int i = 0; i < n; i++) {
        bq_status st = field(start[i], len[i], first + i, &bits[first + i], err);
        if (st != BQ_OK)
            return st;
    }
    out->sec = bits[0];
    out->min = bits[1];
    out->hour = (uint32_t)bits[2];
    out->dom = (uint32_t)bits[3];
    out->mon = (uint16_t)bits[4];
    out->dow = (uint8_t)bits[5];
    out->hour_star = start[2 - first][0] == '*';
    out->dom_star = start[3 - first][0] == '*';
    out->dow_star = start[5 - first][0] == '*';
    return BQ_OK;
}

/* ---- Matching in wall time ----------------------------------------------------------------- */

static bool day_matches(const struct bq_cron *c, int64_t days, int d)
{
    int wd = (int)((days % 7 + 11) % 7); /* 1970-01-01 was a Thursday (4) */
    bool dom = (c->dom >> d) & 1, dow = (c->dow >> wd) & 1;
    return (c->dom_star || c->dow_star) ? (dom && dow) : (dom || dow);
}

/* The lowest set bit of bits at or above i, or -1. */
static int next_bit(uint64_t bits, int i)
{
    if (i >= 64)
        return -1;
    uint64_t rest = bits >> i;
    return rest == 0 ? -1 : i + __builtin_ctzll(rest);
}

#define TEN_YEARS (INT64_C(3653) * 86400)

#define NO_WALL INT64_MIN

/* The first wall second at or after w that c matches, or NO_WALL within ten years. */
static int64_t next_wall(const struct bq_cron *c, int64_t w)
{
    int64_t limit = w + TEN_YEARS;
    for (int iter = 0; iter < 100000 && w <= limit; iter++) {
        int64_t days = floor_div(w, 86400);
        long y;
        int sod = (int)(w - days * 86400), m, d;
        bq_civil_from_days((long)days, &y, &m, &d);
        if (!((c->mon >> m) & 1)) {
            w = bq_days_from_civil(m == 12 ? y + 1 : y, m == 12 ? 1 : m + 1, 1) * 86400;
            continue;
        }
        if (!day_matches(c, days, d)) {
            w = (days + 1) * 86400;
            continue;
        }
        int h = sod / 3600, mi = sod / 60 % 60, s = sod % 60;
        int nh = next_bit(c->hour, h);
        if (nh < 0) {
            w = (days + 1) * 86400;
            continue;
        }
        if (nh != h) {
            w = days * 86400 + nh * 3600;
            continue;
        }
        int nm = next_bit(c->min, mi);
        if (nm < 0 || nm > 59) {
            w = days * 86400 + (h + 1) * 3600;
            continue;
        }
        if (nm != mi) {
            w = days * 86400 + h * 3600 + nm * 60;
            continue;
        }
        int ns = next_bit(c->sec, s);
        if (ns < 0 || ns > 59) {
            w = days * 86400 + h * 3600 + (mi + 1) * 60;
            continue;
        }
        return days * 86400 + h * 3600 + mi * 60 + ns;
    }
    return NO_WALL;
}

/* ---- Time zones ---------------------------------------------------------------------------- */

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be64(const unsigned char *p)
{
    return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

/* A zone name as the tz database spells them: letters, digits, '_', '-', '+', '/' between
 * parts, no part starting with '.'. */
static bool zone_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= 64 || s[0] == '/' || s[n - 1] == '/')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!isalnum(ch) && ch != '_' && ch != '-' && ch != '+' && ch != '/')
            return false;
        if (ch == '/' && s[i + 1] == '/')
            return false;
    }
    return true;
}

/* Parses a TZif file (RFC 8536), version 2 or later: its 64-bit section. */
static bq_status tzif(const unsigned char *p, size_t len, struct bq_tz *tz, bq_err *err)
{
    if (len < 44 || memcmp(p, "TZif", 4) != 0 || p[4] < '2')
        return bq_err_set(err, BQ_EINVAL, "tz %s: not a TZif file of version 2 or later",
                          tz->name);
    /* Skip the 32-bit section. */
    uint32_t c[6];
    for (int i = 0; i < 6; i++)
        c[i] = be32(p + 20 + 4 * i);
    size_t skip = 44 + (size_t)c[3] * 5 + (size_t)c[4] * 6 + c[5] + (size_t)c[2] * 8 + c[1] + c[0];
    if (len < skip + 44 || memcmp(p + skip, "TZif", 4) != 0)
        return bq_err_set(err, BQ_EINVAL, "tz %s: truncated TZif file", tz->name);
    p += skip;
    len -= skip;
    for (int i = 0; i < 6; i++)
        c[i] = be32(p + 20 + 4 * i);
    if (c[2] != 0)
        return bq_err_set(err, BQ_EINVAL, "tz %s: a zone with leap seconds (right/...) counts "
                          "TAI-like seconds; use the zone without right/", tz->name);
    size_t timecnt = c[3], typecnt = c[4];
    size_t need = 44 + timecnt * 9 + typecnt * 6;
    if (typecnt == 0 || typecnt > 256 || timecnt > 100000 || len < need)
        return bq_err_set(err, BQ_EINVAL, "tz %s: malformed TZif file", tz->name);
    const unsigned char *times = p + 44, *idx = times + timecnt * 8, *types = idx + timecnt;
    tz->at = bq_calloc(timecnt ? timecnt : 1, sizeof *tz->at);
    tz->off = bq_calloc(timecnt ? timecnt : 1, sizeof *tz->off);
    if (tz->at == NULL || tz->off == NULL) {
        bq_tz_free(tz);
        return bq_err_set(err, BQ_ENOMEM, "tz %s: out of memory", tz->name);
    }
    tz->off0 = (int32_t)be32(types);
    for (size_t i = 0; i < timecnt; i++) {
        if (idx[i] >= typecnt) {
            bq_tz_free(tz);
            return bq_err_set(err, BQ_EINVAL, "tz %s: malformed TZif file", tz->name);
        }
        tz->at[i] = be64(times + 8 * i);
        tz->off[i] = (int32_t)be32(types + 6 * idx[i]);
    }
    tz->n = timecnt;
    return BQ_OK;
}

bq_status bq_tz_load(const char *name, const char *dir, struct bq_tz *out, bq_err *err)
{
    memset(out, 0, sizeof *out);
    if (name == NULL || *name == '\0' || strcmp(name, "UTC") == 0) {
        snprintf(out->name, sizeof out->name, "UTC");
        return BQ_OK;
    }
    if (!zone_name_ok(name) || strstr(name, "..") != NULL)
        return bq_err_set(err, BQ_EINVAL, "tz: '%.64s' is not a time zone name "
                          "(such as Europe/Berlin)", name);
    snprintf(out->name, sizeof out->name, "%s", name);
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir ? dir : "/usr/share/zoneinfo", name);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return bq_err_set(err, errno == ENOENT ? BQ_ENOTFOUND : BQ_EIO,
                          "tz %s: %s: %s (time zones come from the tzdata package)", name, path,
                          strerror(errno));
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = bq_malloc(cap);
    if (buf == NULL) {
        fclose(f);
        return bq_err_set(err, BQ_ENOMEM, "tz %s: out of memory", name);
    }
    len = fread(buf, 1, cap, f);
    fclose(f);
    bq_status st = tzif(buf, len, out, err);
    bq_free(buf);
    return st;
}

void bq_tz_free(struct bq_tz *tz)
{
    if (tz == NULL)
        return;
    bq_free(tz->at);
    bq_free(tz->off);
    tz->at = NULL;
    tz->off = NULL;
    tz->n = 0;
}

/* The index of the last transition at or before t, or -1. */
static long seg_index(const struct bq_tz *tz, int64_t t)
{
    long lo = 0, hi = (long)tz->n - 1, found = -1;
    while (lo <= hi) {
        long mid = lo + (hi - lo) / 2;
        if (tz->at[mid] <= t) {
            found = mid;
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    return found;
}

int32_t bq_tz_offset(const struct bq_tz *tz, int64_t t)
{
    if (tz == NULL || tz->n == 0)
        return tz ? tz->off0 : 0;
    long i = seg_index(tz, t);
    return i < 0 ? tz->off0 : tz->off[i];
}

/* ---- The next tick ------------------------------------------------------------------------- */

/* Ticks are searched from the year 0 to the end of 9999: the wall-clock arithmetic below
 * stays far from int64 overflow, and an `after` outside (say INT64_MAX) has no next tick. */
#define FIRST_SECOND (INT64_C(-62167219200)) /* 0000-01-01T00:00:00Z */
#define END_SECOND (INT64_C(253402300800))   /* 10000-01-01T00:00:00Z */

static bool found(int64_t t, int64_t *next)
{
    if (t >= END_SECOND)
        return false;
    *next = t;
    return true;
}

bool bq_cron_next(const struct bq_cron *c, const struct bq_tz *tz, int64_t after, int64_t *next)
{
    if (after < FIRST_SECOND || after >= END_SECOND)
        return false;
    int64_t t = after + 1;
    for (int iter = 0; iter < 256; iter++) {
        /* The segment of constant offset holding t: [start, end), with the offset before. */
        int32_t off = 0, prev = 0;
        int64_t start = INT64_MIN, end = INT64_MAX;
        if (tz != NULL && tz->n > 0) {
            long i = seg_index(tz, t);
            off = i < 0 ? tz->off0 : tz->off[i];
            prev = i < 0 ? off : i == 0 ? tz->off0 : tz->off[i - 1];
            start = i < 0 ? INT64_MIN : tz->at[i];
            end = (size_t)(i + 1) < tz->n ? tz->at[i + 1] : INT64_MAX;
        } else if (tz != NULL) {
            off = prev = tz->off0;
        }
        if (!c->hour_star && off > prev && t == start) {
            /* t is the instant the clocks went forward: a wall time they skipped fires now
             * (asked from the second before the change, the search starts here, past the
             * gap's wall times, and missed it). */
            int64_t g = next_wall(c, start + prev);
            if (g != NO_WALL && g < start + off)
                return found(start, next);
        }
        int64_t w = next_wall(c, t + off);
        if (w == NO_WALL)
            return false;
        int64_t cand = w - off; /* >= t */
        if (cand < end) {
            if (!c->hour_star && prev > off && cand < start + (prev - off)) {
                /* The clocks went back at `start`: this wall time was shown once already. */
                t = start + (prev - off);
                continue;
            }
            return found(cand, next);
        }
        /* No match before the segment ends; the next one starts at `end`. */
        int32_t off2 = bq_tz_offset(tz, end);
        if (!c->hour_star && off2 > off && w < end + off2) {
            /* The clocks went forward at `end`, over this wall time: fire once, then. */
            return found(end, next);
        }
        t = end;
    }
    return false;
}
