/*
 * backoff.h -- capped exponential backoff with jitter, as a pure function so tests can check
 * it exhaustively. Used for reconnecting to Redis (equal jitter: never retry immediately) and
 * for task retries (full jitter, as AWS's "Exponential Backoff and Jitter" recommends to
 * spread a thundering herd).
 */
#ifndef BINDUQ_BACKOFF_H
#define BINDUQ_BACKOFF_H

enum bq_jitter {
    BQ_JITTER_NONE = 0,  /* exactly min(cap, base * 2^attempt) */
    BQ_JITTER_FULL,      /* uniform in [0, that) */
    BQ_JITTER_EQUAL,     /* uniform in [that/2, that) */
};

/* The delay before retry number `attempt` (0 for the first retry). `unit` is a uniform
 * random number in [0, 1). Non-negative, never above cap. */
double bq_backoff_delay(int attempt, double base, double cap, enum bq_jitter jitter,
                        double unit);

#endif
