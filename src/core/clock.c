/*
 * clock.c -- see clock.h.
 */
#include "clock.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>

static double sys_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double sys_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct bq_clock_hooks hooks = {sys_mono, sys_wall};

void bq_clock_set_hooks(const struct bq_clock_hooks *h)
{
    hooks.mono = (h != NULL && h->mono != NULL) ? h->mono : sys_mono;
    hooks.wall = (h != NULL && h->wall != NULL) ? h->wall : sys_wall;
}

double bq_now_mono(void)
{
    return hooks.mono();
}

double bq_now_wall(void)
{
    return hooks.wall();
}

/* The arithmetic on 400-year eras (146,097 days each): no tables, no time zone, no libc. */
long bq_days_from_civil(long y, int m, int d)
{
    y -= m <= 2;
    long era = (y >= 0 ? y : y - 399) / 400;
    long yoe = y - era * 400;
    long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

void bq_civil_from_days(long z, long *y, int *m, int *d)
{
    z += 719468; /* days from 0000-03-01 */
    long era = (z >= 0 ? z : z - 146096) / 146097;
    long doe = z - era * 146097;                                        /* [0, 146096] */
    long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;   /* [0, 399] */
    long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);                 /* [0, 365] */
    long mp = (5 * doy + 2) / 153;                                      /* March = 0 */
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static char *put2(char *p, int v)
{
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
    return p + 2;
}

/* Every producer stamps every message, so no gmtime_r (it takes the time zone lock) and no
 * snprintf. */
void bq_iso8601(double t, char *out, size_t size)
{
    double whole = floor(t);
    int ms = (int)((t - whole) * 1000.0);
    long long secs = (long long)whole;
    long long days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
    int rem = (int)(secs - days * 86400);
    long y;
    int mo, d;
    bq_civil_from_days((long)days, &y, &mo, &d);
    if (y < 0 || y > 9999 || size < 25) {
        snprintf(out, size, "%04ld-%02d-%02dT%02d:%02d:%02d.%03dZ", y, mo, d, rem / 3600,
                 rem / 60 % 60, rem % 60, ms > 999 ? 999 : ms);
        return;
    }
    char *p = out;
    p = put2(p, (int)(y / 100));
    p = put2(p, (int)(y % 100));
    *p++ = '-';
    p = put2(p, mo);
    *p++ = '-';
    p = put2(p, d);
    *p++ = 'T';
    p = put2(p, rem / 3600);
    *p++ = ':';
    p = put2(p, rem / 60 % 60);
    *p++ = ':';
    p = put2(p, rem % 60);
    *p++ = '.';
    if (ms > 999)
        ms = 999;
    *p++ = (char)('0' + ms / 100);
    p = put2(p, ms % 100);
    *p++ = 'Z';
    *p = '\0';
}

const char *bq_duration_problem(double seconds)
{
    if (isnan(seconds))
        return "is not a number";
    if (isinf(seconds))
        return "is infinite";
    if (seconds < 0)
        return "is negative";
    if (seconds > BQ_MAX_DURATION)
        return "is longer than 365 days";
    return NULL;
}

/* NaN and negative become 0, anything longer BQ_MAX_DURATION: what every clock call below
 * does with a duration before converting it to integers. */
static double clamp_duration(double seconds)
{
    if (!(seconds > 0))
        return 0;
    return seconds > BQ_MAX_DURATION ? BQ_MAX_DURATION : seconds;
}

struct timespec bq_abstime_after(double seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    seconds = clamp_duration(seconds);
    double whole = floor(seconds);
    ts.tv_sec += (time_t)whole;
    ts.tv_nsec += (long)((seconds - whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

int bq_cond_init(pthread_cond_t *cond)
{
    pthread_condattr_t attr;
    int rc = pthread_condattr_init(&attr);
    if (rc != 0)
        return rc;
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    rc = pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
    return rc;
}

bool bq_cond_wait_for(pthread_cond_t *cond, pthread_mutex_t *mu, double seconds)
{
    if (seconds < 0) {
        pthread_cond_wait(cond, mu);
        return false;
    }
    struct timespec ts = bq_abstime_after(seconds);
    int rc = pthread_cond_timedwait(cond, mu, &ts);
    if (rc == 0 || rc == ETIMEDOUT)
        return rc == ETIMEDOUT;
    pthread_mutex_unlock(mu);
    bq_sleep(0.01);
    pthread_mutex_lock(mu);
    return true;
}

void bq_sleep(double seconds)
{
    seconds = clamp_duration(seconds);
    if (seconds <= 0)
        return;
    struct timespec ts = {(time_t)floor(seconds), (long)((seconds - floor(seconds)) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}
