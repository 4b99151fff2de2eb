/*
 * state.h -- the in-memory record of task states, shared by every thread of the process.
 *
 * This is the storage of the single-process default (PostgreSQL comes with the task
 * lifecycle work). The worker asks it before running a task, so a redelivered or duplicate
 * operation on a task that already reached a terminal state (completed, failed, canceled,
 * rejected) is acknowledged without running the handler again; and every change is a
 * compare-and-set, so a terminal state never changes. It holds the most recent
 * BQ_STATE_CAPACITY tasks; older ones are forgotten first.
 */
#ifndef BINDUQ_STATE_H
#define BINDUQ_STATE_H

#include <stdbool.h>
#include <stddef.h>

#define BQ_STATE_CAPACITY 100000

/* True if `state` is completed, failed, canceled or rejected. */
bool bq_state_terminal(const char *state);

/* Copies the state of task_id into out (size bytes); false if unknown. */
bool bq_state_get(const char *task_id, char *out, size_t size);

/* Sets task_id's state unless its current state is terminal; returns whether it changed.
 * When `from` is not NULL, the current state must be one of the comma-separated names in it
 * ("" stands for an unknown task). */
bool bq_state_set(const char *task_id, const char *state, const char *from);

/* Forgets task_id (an operator requeued it: it may run again). */
void bq_state_forget(const char *task_id);

/* Forgets everything (tests). */
void bq_state_reset(void);

#endif
