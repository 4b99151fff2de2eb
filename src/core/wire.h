/*
 * wire.h -- the rules and limits of binduq's task operations, both wire formats, in one place.
 *
 * An operation is encoded by the Lua producer (lua/binduq/task.lua, both formats), the Lua
 * producer's fast path (src/lua/l_produce.c) and the C producer (src/engine/task.c), and
 * decoded by the worker's fast path (src/lua/l_json.cpp), its native decoder
 * (src/lua/l_task.c) and task.lua (Bindu's format, and whatever the fast paths pass on). Each
 * of those asks this header for what an operation may be: its types, the limits on its
 * fields, the rule for its ids (id.h), and the exact text of each refusal; the Lua side reads
 * the same as core.wire (src/lua/l_core.c). Differential tests hold the encoders and decoders
 * to each other (tests/lua/task_spec.lua, hotpath_spec.lua, tests/c/test_core.c).
 */
#ifndef BINDUQ_WIRE_H
#define BINDUQ_WIRE_H

#include "id.h" /* BQ_MAX_ID_LEN and the rule for task and conversation ids */

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The operations, in this order. */
#define BQ_WIRE_NTYPES 4
extern const char *const bq_wire_types[BQ_WIRE_NTYPES]; /* "run", "pause", "resume", "cancel" */
#define BQ_WIRE_TYPE_RULE "type must be run, pause, resume or cancel"

/* Whether s[0..len) is one of bq_wire_types. */
bool bq_wire_type_valid(const char *s, size_t len);

/* A message's role: 1 to BQ_WIRE_ROLE_MAX bytes (what producers write; a worker reads any). */
#define BQ_WIRE_ROLE_MAX 64

/* The "#bq {...}\n" header line binduq puts before a message it queues again: a line longer
 * than this is not binduq's (binduq's own are under 200 bytes). */
#define BQ_WIRE_HEADER_MAX 1024

/* An operation's own `timeout`: seconds, > 0 and at most 365 days (clock.h's
 * BQ_MAX_DURATION). */
#define BQ_WIRE_TIMEOUT_RULE "timeout must be a positive number of seconds, at most 365 days"
bool bq_wire_timeout_valid(double seconds);

/* An operation's own `max_attempts`: a whole number, at least 1 (a decoded 3.0 is 3). */
#define BQ_WIRE_MAX_ATTEMPTS_RULE "max_attempts must be a whole number, at least 1"

/* When an operation runs: `delay` (seconds from now, by Redis' clock) or `run_at` (a time,
 * seconds since the epoch; producers also take ISO 8601 with a zone), at most one of them.
 * A run_at already past runs at once. Checks both against the producer's wall clock `now`
 * (only to refuse a run_at more than BQ_MAX_DURATION ahead, which is most often milliseconds
 * given for seconds). Returns NULL, or the refusal naming the field. */
#define BQ_WIRE_WHEN_BOTH "give delay or run_at, not both"
const char *bq_wire_when_problem(bool has_delay, double delay, bool has_run_at, double run_at,
                                 double now);

/* Parses an ISO 8601 time with a zone, as run_at takes it: YYYY-MM-DDTHH:MM[:SS[.frac]]
 * then Z or +HH:MM, -HH:MM, +HHMM, +HH ('T' may be 't' or a space). *out is seconds since
 * the epoch. Returns NULL, or why it is not one (a sentence naming run_at). */
#define BQ_WIRE_RUN_AT_RULE                                                                    \
    "run_at must be seconds since the epoch or an ISO 8601 time with a zone "                  \
    "(2026-12-03T10:00:00Z, 2026-12-03T11:00:00.250+01:00)"
const char *bq_wire_parse_time(const char *s, size_t len, double *out);

#ifdef __cplusplus
}
#endif

#endif
