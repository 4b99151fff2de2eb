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

void bq_iso8601(double t, char *out, size_t size)
{
    time_t secs = (time_t)floor(t);
    int ms = (int)((t - floor(t)) * 1000.0);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(out, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms > 999 ? 999 : ms);
}

struct timespec bq_abstime_after(double seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (seconds < 0)
        seconds = 0;
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
    return pthread_cond_timedwait(cond, mu, &ts) == ETIMEDOUT;
}

void bq_sleep(double seconds)
{
    if (seconds <= 0)
        return;
    struct timespec ts = {(time_t)floor(seconds), (long)((seconds - floor(seconds)) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}
