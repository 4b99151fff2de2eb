/*
 * fuzz_cron.c -- the cron parser and the next-tick search (src/core/cron.c): whatever the
 * expression (a recurring schedule's, from a script or a configuration file), parsing ends
 * with BQ_OK or BQ_EINVAL and a message, and a parsed one answers bq_cron_next for any time,
 * in UTC and in a zone with daylight-saving changes, with a tick later than asked for that
 * the expression matches (in UTC: its second, minute, hour, month and day by Vixie cron's
 * day rule, checked against gmtime_r), found again when asked from the second before it.
 *
 * Input: the expression up to the first NUL; the 8 bytes after it, if there are 8, are the
 * time asked from (any int64: the search must not overflow), besides a few fixed ones.
 */
#include "fuzz.h"

#include "../../src/core/cron.h"

#include <stdbool.h>
#include <string.h>
#include <time.h>

static bool matches_utc(const struct bq_cron *c, int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (gmtime_r(&tt, &tm) == NULL)
        return true; /* out of what gmtime can show: not checked */
    bool dom = (c->dom >> tm.tm_mday) & 1u, dow = (c->dow >> tm.tm_wday) & 1u;
    bool day = c->dom_star || c->dow_star ? dom && dow : dom || dow;
    return ((c->sec >> tm.tm_sec) & 1u) && ((c->min >> tm.tm_min) & 1u) &&
           ((c->hour >> tm.tm_hour) & 1u) && ((c->mon >> (tm.tm_mon + 1)) & 1u) && day;
}

static void check_next(const struct bq_cron *c, const struct bq_tz *tz, int64_t after)
{
    int64_t next = 0;
    if (!bq_cron_next(c, tz, after, &next))
        return;
    if (next <= after)
        FUZZ_FAIL("next %lld is not after %lld", (long long)next, (long long)after);
    if (tz == NULL && !matches_utc(c, next))
        FUZZ_FAIL("next %lld after %lld does not match", (long long)next, (long long)after);
    int64_t again = 0;
    if (!bq_cron_next(c, tz, next - 1, &again) || again != next)
        FUZZ_FAIL("from %lld the next is %lld, from the second before it %lld",
                  (long long)after, (long long)next, (long long)again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct bq_tz berlin;
    static int loaded; /* 0: not tried, 1: loaded, -1: no tzdata here */
    if (loaded == 0) {
        bq_err e;
        loaded = bq_tz_load("Europe/Berlin", NULL, &berlin, &e) == BQ_OK ? 1 : -1;
    }
    size_t len = strnlen((const char *)data, size);
    char *expr = malloc(len + 1);
    if (expr == NULL)
        return 0;
    memcpy(expr, data, len);
    expr[len] = '\0';
    struct bq_cron c;
    bq_err err;
    err.msg[0] = '\0';
    bq_status st = bq_cron_parse(expr, &c, &err);
    free(expr);
    if (st != BQ_OK) {
        if (st != BQ_EINVAL || err.msg[0] == '\0')
            FUZZ_FAIL("a refused expression gave status %d and no message", (int)st);
        return 0;
    }
    int64_t times[] = {0, 1, -1, 1767225599 /* 2025-12-31 23:59:59 */, 253402300799 /* 9999 */,
                       INT64_MAX, INT64_MIN, 0};
    size_t nt = sizeof times / sizeof *times - 1;
    if (size - len > 8) { /* the NUL, then 8 bytes */
        memcpy(&times[nt], data + len + 1, 8);
        nt++;
    }
    for (size_t i = 0; i < nt; i++) {
        check_next(&c, NULL, times[i]);
        if (loaded == 1)
            check_next(&c, &berlin, times[i]);
    }
    return 0;
}
