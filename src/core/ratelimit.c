/*
 * ratelimit.c -- see ratelimit.h.
 */
#include "ratelimit.h"

bool bq_window_admit(const double *times, size_t n, double now, long limit, double period,
                     size_t *expired, double *wait)
{
    size_t gone = 0;
    while (gone < n && times[gone] <= now - period)
        gone++;
    *expired = gone;
    size_t inside = n - gone;
    if (limit > 0 && inside < (size_t)limit) {
        *wait = 0;
        return true;
    }
    if (limit <= 0) {
        *wait = period;
        return false;
    }
    /* The oldest admission that must leave before one more fits. */
    double leave = times[gone + inside - (size_t)limit] + period;
    *wait = leave > now ? leave - now : 0;
    return false;
}
