/*
 * backoff.c -- see backoff.h.
 */
#include "backoff.h"

#include <math.h>

double bq_backoff_delay(int attempt, double base, double cap, enum bq_jitter jitter,
                        double unit)
{
    if (base <= 0 || cap <= 0)
        return 0;
    if (attempt < 0)
        attempt = 0;
    /* 2^attempt overflows nothing here: past 60 doublings every delay is the cap anyway. */
    double d = attempt > 60 ? cap : fmin(cap, base * ldexp(1.0, attempt));
    if (unit < 0)
        unit = 0;
    if (unit >= 1)
        unit = 0.999999999;
    switch (jitter) {
    case BQ_JITTER_FULL: return d * unit;
    case BQ_JITTER_EQUAL: return d / 2 + d / 2 * unit;
    case BQ_JITTER_NONE: break;
    }
    return d;
}
