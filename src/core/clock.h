/*
 * clock.h -- time for binduq: a monotonic clock for deadlines and durations, a wall clock for
 * timestamps, both behind a hook so tests can freeze and advance time.
 *
 * All times are seconds as doubles. Monotonic time is CLOCK_MONOTONIC, which on Linux is
 * shared by all processes of a machine, so a producer's send time and a worker's pickup time
 * can be compared directly (the pickup-latency benchmark relies on this).
 */
#ifndef BINDUQ_CLOCK_H
#define BINDUQ_CLOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <time.h>

struct bq_clock_hooks {
    double (*mono)(void);
    double (*wall)(void);
};

/* NULL restores the system clocks. Not thread-safe: set it before threads start. */
void bq_clock_set_hooks(const struct bq_clock_hooks *hooks);

double bq_now_mono(void);
double bq_now_wall(void);

/* Formats wall time `t` as "2024-12-09T14:30:00.123Z" into out (at least 32 bytes). */
void bq_iso8601(double t, char *out, size_t size);

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar, and back. */
long bq_days_from_civil(long y, int m, int d);
void bq_civil_from_days(long days, long *y, int *m, int *d);

/* The absolute CLOCK_MONOTONIC timespec for "now + seconds", for condition variables made
 * with bq_cond_init. */
struct timespec bq_abstime_after(double seconds);

/* A condition variable waiting on CLOCK_MONOTONIC (immune to wall-clock jumps). */
int bq_cond_init(pthread_cond_t *cond);

/* Waits on cond for at most `seconds` (negative: forever). Returns true if it timed out. */
bool bq_cond_wait_for(pthread_cond_t *cond, pthread_mutex_t *mu, double seconds);

/* Sleeps for `seconds`, restarting after signals. */
void bq_sleep(double seconds);

#endif
