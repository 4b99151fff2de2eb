/*
 * ratelimit.h -- the sliding-window log, as a pure function.
 *
 * "At most `limit` admissions in any window of `period` seconds": an admission at time `now`
 * is allowed when fewer than `limit` admissions happened in (now - period, now]; otherwise it
 * must wait until the oldest of those leaves the window. The Redis script ratelimit-N.lua
 * does the same arithmetic on a sorted set, with the server's clock; the in-memory scheduler
 * calls this.
 */
#ifndef BINDUQ_RATELIMIT_H
#define BINDUQ_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>

/* times[0..n) are earlier admissions in ascending order. Returns true if `now` is admitted.
 * *expired is how many leading entries fell out of the window (the caller drops them);
 * *wait is the seconds until an admission would be allowed (0 when admitted). */
bool bq_window_admit(const double *times, size_t n, double now, long limit, double period,
                     size_t *expired, double *wait);

#endif
