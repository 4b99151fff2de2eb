/*
 * id.h -- the one rule for an id that keys a task: a task_id, a conversation (context) id.
 *
 * An id is 1 to BQ_MAX_ID_LEN bytes of valid UTF-8 with no control character: no C0 (U+0000
 * to U+001F), no DEL (U+007F), no C1 (U+0080 to U+009F). An id names the task in storage
 * (a C string in PostgreSQL and in the memory storage's table), in the control channel
 * ("cancel <id>"), in log lines and in dead-letter entries, so a zero byte would cut it there
 * ("victim\0attacker" would become "victim") and a newline or an escape would forge lines or
 * drive the operator's terminal. Every place an id enters binduq -- the Lua and C producers,
 * both decoders of the worker, Bindu's format, the control channel -- asks this function, and
 * the Lua side reaches it as core.id_problem, so there is one rule with one set of reasons.
 */
#ifndef BINDUQ_ID_H
#define BINDUQ_ID_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Largest task_id / conversation_id, in bytes. */
#define BQ_MAX_ID_LEN 256

/* Whether s[0..len) is an id by the rule above. When it is not and `why` is not NULL, writes
 * the reason there (at most 64 bytes with its NUL), to follow the id's name: "must not be
 * empty", "is longer than 256 bytes", "is not valid UTF-8 (byte 3)", "contains a control
 * character (U+0000 at byte 6)". Bytes are counted from 0. Pure; any thread. */
#define BQ_ID_WHY_SIZE 64
bool bq_id_check(const char *s, size_t len, char *why);

#ifdef __cplusplus
}
#endif

#endif
