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

/* The longest duration binduq takes anywhere (a sleep, a timeout, a lease, a retry delay):
 * 365 days. Anything longer is a mistake or an attack, and infinity or NaN reaching a clock
 * call is undefined behaviour (a double converted to time_t) or a spin. */
#define BQ_MAX_DURATION (365.0 * 86400.0)

/* NULL if `seconds` is a duration binduq accepts (finite, 0 <= seconds <= BQ_MAX_DURATION),
 * else why not: "is not a number", "is infinite", "is negative", "is longer than 365 days".
 * Every duration from outside (options, messages, Lua calls) is checked with this. */
const char *bq_duration_problem(double seconds);

/* The absolute CLOCK_MONOTONIC timespec for "now + seconds", for condition variables made
 * with bq_cond_init. NaN and negative count as 0, anything longer as BQ_MAX_DURATION. */
struct timespec bq_abstime_after(double seconds);

/* A condition variable waiting on CLOCK_MONOTONIC (immune to wall-clock jumps). */
int bq_cond_init(pthread_cond_t *cond);

/* Waits on cond for at most `seconds` (negative: forever; NaN: 0; at most BQ_MAX_DURATION).
 * Returns true if it timed out. A wait the system refuses (any error but ETIMEDOUT) counts
 * as timed out after a 10 ms pause with the mutex released, so a caller looping on a
 * deadline can never spin holding its lock. */
bool bq_cond_wait_for(pthread_cond_t *cond, pthread_mutex_t *mu, double seconds);

/* Sleeps for `seconds`, restarting after signals (NaN or <= 0: not at all; at most
 * BQ_MAX_DURATION). */
void bq_sleep(double seconds);

#endif
