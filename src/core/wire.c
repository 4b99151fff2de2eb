/*
 * wire.c -- see wire.h.
 */
#include "wire.h"

#include "clock.h"

#include <math.h>
#include <string.h>

const char *const bq_wire_types[BQ_WIRE_NTYPES] = {"run", "pause", "resume", "cancel"};

bool bq_wire_type_valid(const char *s, size_t len)
{
    for (int i = 0; s != NULL && i < BQ_WIRE_NTYPES; i++) {
        if (strlen(bq_wire_types[i]) == len && memcmp(s, bq_wire_types[i], len) == 0)
            return true;
    }
    return false;
}

bool bq_wire_timeout_valid(double seconds)
{
    return seconds > 0 && bq_duration_problem(seconds) == NULL;
}

const char *bq_wire_when_problem(bool has_delay, double delay, bool has_run_at, double run_at,
                                 double now)
{
    if (has_delay && has_run_at)
        return BQ_WIRE_WHEN_BOTH;
    if (has_delay) {
        if (bq_duration_problem(delay) == NULL)
            return NULL;
        if (isnan(delay))
            return "delay is not a number";
        if (isinf(delay))
            return "delay is infinite";
        if (delay < 0)
            return "delay is negative";
        return "delay is longer than 365 days";
    }
    if (!has_run_at)
        return NULL;
    if (isnan(run_at))
        return "run_at is not a number";
    if (isinf(run_at))
        return "run_at is infinite";
    if (run_at <= 0)
        return "run_at must be after 1970 (seconds since the epoch)";
    if (run_at - now > BQ_MAX_DURATION)
        return "run_at is more than 365 days ahead (seconds since the epoch, not milliseconds)";
    return NULL;
}

/* ---- ISO 8601 ------------------------------------------------------------------------------ */

/* Reads exactly n digits at s[*i]; -1 if they are not there. */
static long digits(const char *s, size_t len, size_t *i, int n)
{
    long v = 0;
    for (int k = 0; k < n; k++, (*i)++) {
        if (*i >= len || s[*i] < '0' || s[*i] > '9')
            return -1;
        v = v * 10 + (s[*i] - '0');
    }
    return v;
}

static bool expect(const char *s, size_t len, size_t *i, char c)
{
    if (*i < len && s[*i] == c) {
        (*i)++;
        return true;
    }
    return false;
}

static int days_in_month(long y, long m)
{
    static const int dim[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : dim[m - 1];
}

const char *bq_wire_parse_time(const char *s, size_t len, double *out)
{
    size_t i = 0;
    long y = digits(s, len, &i, 4), mo, d, h, mi, sec = 0;
    double frac = 0;
    if (y < 0 || !expect(s, len, &i, '-') || (mo = digits(s, len, &i, 2)) < 0 ||
        !expect(s, len, &i, '-') || (d = digits(s, len, &i, 2)) < 0)
        return BQ_WIRE_RUN_AT_RULE;
    if (!expect(s, len, &i, 'T') && !expect(s, len, &i, 't') && !expect(s, len, &i, ' '))
        return BQ_WIRE_RUN_AT_RULE;
    if ((h = digits(s, len, &i, 2)) < 0 || !expect(s, len, &i, ':') ||
        (mi = digits(s, len, &i, 2)) < 0)
        return BQ_WIRE_RUN_AT_RULE;
    if (expect(s, len, &i, ':')) {
        if ((sec = digits(s, len, &i, 2)) < 0)
            return BQ_WIRE_RUN_AT_RULE;
        if (expect(s, len, &i, '.') || expect(s, len, &i, ',')) {
            double scale = 0.1;
            size_t start = i;
            for (; i < len && s[i] >= '0' && s[i] <= '9'; i++, scale /= 10)
                frac += (s[i] - '0') * scale;
            if (i == start)
                return BQ_WIRE_RUN_AT_RULE;
        }
    }
    long off = 0; /* seconds east of UTC */
    if (expect(s, len, &i, 'Z') || expect(s, len, &i, 'z')) {
        off = 0;
    } else if (i < len && (s[i] == '+' || s[i] == '-')) {
        int sign = s[i++] == '-' ? -1 : 1;
        long oh = digits(s, len, &i, 2), om = 0;
        if (oh < 0)
            return BQ_WIRE_RUN_AT_RULE;
        bool colon = expect(s, len, &i, ':');
        if (i < len || colon) {
            if ((om = digits(s, len, &i, 2)) < 0)
                return BQ_WIRE_RUN_AT_RULE;
        }
        if (oh > 23 || om > 59)
            return "run_at has a zone offset out of range";
        off = sign * (oh * 3600 + om * 60);
    } else {
        return i == len ? "run_at needs a zone (Z or an offset such as +01:00)"
                        : BQ_WIRE_RUN_AT_RULE;
    }
    if (i != len)
        return BQ_WIRE_RUN_AT_RULE;
    if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60)
        return "run_at is not a valid date and time";
    double t = (double)bq_days_from_civil(y, (int)mo, (int)d) * 86400.0 + (double)(h * 3600 + mi * 60 + sec) +
               frac - (double)off;
    *out = t;
    return NULL;
}
