/*
 * storage.h -- where task state lives: the interface the worker and the producer use, with
 * three implementations, in memory (mem.c: the default, one process), PostgreSQL (pg.c,
 * through libpq) and Redis (rstore.c: hashes in the queue's Cluster slot, with a TTL once
 * finished).
 *
 * A task record:
 *
 *   id          the task_id (primary key)
 *   context_id  the conversation / context id (NULL when none)
 *   state       submitted | working | input-required | auth-required | paused   (open)
 *               completed | failed | canceled | rejected                       (terminal)
 *   queue       the queue its run was pushed to (the recovery sweep pushes it there again)
 *   history     JSON array of messages: the user's, then the agent's, in order
 *   artifacts   JSON array of artifacts the handler produced
 *   metadata    JSON object given with the task
 *   checkpoint  JSON value the handler saved with ctx:checkpoint() (NULL when none); a
 *               resume after a pause hands it back
 *   error       JSON object {code, message, ...} of the last failure (NULL when none)
 *   requested   "pause" while a pause waits for the running handler's next yield point
 *   attempts    how many times a worker started the handler
 *   worker      the id of the worker that ran it last
 *   created_at, updated_at, state_at   epoch seconds (state_at: when the state last changed)
 *
 * Every state change is a compare-and-set: it names the states the task must be in. A
 * terminal state never changes again unless a change names it explicitly in `from` (only
 * an operator's requeue of a dead-lettered task does, see the README); a late completion
 * therefore never overwrites "canceled", and a duplicate run of a completed task changes
 * nothing.
 *
 * JSON columns travel as JSON text both ways. The memory storage keeps the text as given
 * (it only appends arrays); PostgreSQL stores jsonb, so it rejects invalid JSON and gives
 * back its own rendering, equal as JSON but not byte for byte. All operations are
 * thread-safe. Strings in records are owned by the record (bq_task_rec_clear). Handles are
 * reference counted (a constructor returns one reference): the engine and the Lua objects
 * of one process share one storage. Times come from the store's clock (the database
 * server's for PostgreSQL). A change retried after a connection lost mid-reply may apply
 * twice (see pg.c); callers only retry compare-and-set changes, which then refuse.
 */
#ifndef BINDUQ_STORAGE_H
#define BINDUQ_STORAGE_H

#include "../binduq.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

struct bq_broker_config;

#define BQ_STATE_LEN 24  /* longest state name ("input-required") plus room */

typedef struct bq_storage bq_storage;

struct bq_task_rec {
    char *id, *context_id, *state, *queue;
    char *history, *artifacts, *metadata; /* JSON text, never NULL in a loaded record */
    char *checkpoint, *error;             /* JSON text or NULL */
    char *requested, *worker;             /* NULL when none */
    int attempts;
    double created_at, updated_at, state_at;
};

/* Frees the strings of r and zeroes it. */
void bq_task_rec_clear(struct bq_task_rec *r);
void bq_task_recs_free(struct bq_task_rec *r, size_t n);

/* A new task. */
struct bq_task_new {
    const char *id;         /* required */
    const char *context_id; /* NULL: none */
    const char *queue;      /* NULL: none */
    const char *state;      /* NULL: "submitted" */
    const char *history;    /* JSON array; NULL: [] */
    const char *metadata;   /* JSON object; NULL: {} */
    const char *worker;     /* NULL: none */
    int attempts;           /* the starting count (a task created already "working": 1) */
    const char *requested;  /* NULL or "": none (see lua/binduq/lifecycle/order.lua) */
};

/* A compare-and-set change of one task. */
struct bq_task_change {
    const char *id;
    const char *from; /* comma-separated states (no spaces) the task must be in; NULL: any
                       * open state */
    const char *to;   /* the new state; NULL: unchanged */
    const char *append_history;   /* JSON array appended to history; NULL: none */
    const char *append_artifacts; /* JSON array appended to artifacts; NULL: none */
    const char *checkpoint;       /* JSON text; "" clears it; NULL: unchanged */
    const char *error;            /* the same */
    const char *requested;        /* the same */
    const char *worker;           /* the same */
    bool count_attempt;           /* attempts + 1 */
    const char *if_requested;     /* non-NULL: the change is made only if the task's
                                   * `requested` is this ("" for none), as `from` for its
                                   * state (not in batches: bq_storage_change_many) */
};

/* What a change found. When the task is unknown, found is false and state "". */
struct bq_task_result {
    bool found, changed;
    char state[BQ_STATE_LEN];  /* the state after the change (or the state that refused it) */
    char requested[16];        /* "", "pause", or what lifecycle/order.lua keeps */
    int attempts;              /* the attempts after the change */
    bq_status status;          /* batches only: BQ_OK, or this task's change failed on its
                                * own (the rest of its batch was made), why says why and
                                * the fields above are zero */
    char why[192];
};

struct bq_task_filter {
    const char *state;      /* NULL: any */
    const char *context_id; /* NULL: any */
    double older_than;      /* > 0: only tasks whose state is older than this many seconds */
    int limit;              /* <= 0: 100 */
    int offset;             /* > 0: skip this many matching tasks first (paging) */
};

struct bq_storage_ops {
    const char *name; /* "memory" | "postgres" | "redis" */
    /* Records a new task unless its id exists; res->changed says which. */
    bq_status (*create)(bq_storage *s, const struct bq_task_new *t, struct bq_task_result *res,
                        bq_err *err);
    /* Loads a task; *found false (and out zeroed) if unknown. */
    bq_status (*get)(bq_storage *s, const char *id, struct bq_task_rec *out, bool *found,
                     bq_err *err);
    bq_status (*change)(bq_storage *s, const struct bq_task_change *c, struct bq_task_result *res,
                        bq_err *err);
    /* The tasks matching f (NULL: all), newest first (by created_at); *out owned by the
     * caller (bq_task_recs_free). History and artifacts are included. */
    bq_status (*list)(bq_storage *s, const struct bq_task_filter *f, struct bq_task_rec **out,
                      size_t *n, bq_err *err);
    /* Removes a task (tests, operators). *found says whether it existed. */
    bq_status (*remove)(bq_storage *s, const char *id, bool *found, bq_err *err);
    /* One round trip to the store. */
    bq_status (*ping)(bq_storage *s, bq_err *err);
    void (*destroy)(bq_storage *s);
    /* Optional: changes[0..n) (distinct ids, n <= BQ_CHANGE_MANY_MAX), each exactly as change
     * would make it, in one round trip; res[i] as change's. Use bq_storage_change_many. */
    bq_status (*change_many)(bq_storage *s, const struct bq_task_change *changes, size_t n,
                             struct bq_task_result *res, bq_err *err);
    /* Optional: starts tasks[0..n) (distinct ids, n <= BQ_CHANGE_MANY_MAX) in one round trip,
     * as bq_storage_start_many says. Use that. */
    bq_status (*start_many)(bq_storage *s, const struct bq_task_new *tasks, size_t n,
                            struct bq_task_result *res, bq_err *err);
    /* Optional: creates tasks[0..n) (distinct ids, n <= BQ_CHANGE_MANY_MAX), each exactly as
     * create would, in one round trip; res[i] as create's (a producer's batch of runs). */
    bq_status (*create_many)(bq_storage *s, const struct bq_task_new *tasks, size_t n,
                             struct bq_task_result *res, bq_err *err);
    /* Optional: change_many's changes then start_many's tasks (each 1 to BQ_CHANGE_MANY_MAX,
     * every id distinct across both) in one round trip and one transaction, as
     * bq_storage_change_start_many says. Use that. */
    bq_status (*change_start_many)(bq_storage *s, const struct bq_task_change *changes,
                                   size_t nc, const struct bq_task_new *tasks, size_t nt,
                                   struct bq_task_result *rc, struct bq_task_result *rt,
                                   bq_err *err);
};

#define BQ_CHANGE_MANY_MAX 64

struct bq_storage {
    const struct bq_storage_ops *ops;
    atomic_int refs;
};

struct bq_storage_config {
    const char *type;       /* "memory" | "postgres" | "redis"; NULL: postgres if url is set */
    const char *url;        /* postgresql://... (postgres://, postgresql+asyncpg:// too); for
                             * redis the URL is in `redis` */
    const char *schema;     /* PostgreSQL schema; NULL: "binduq" */
    int max_connections;    /* <= 0: 4 */
    double connect_timeout; /* seconds; <= 0: 5 */
    int max_tasks;          /* memory: the records the process keeps (the table is one per
                             * process, so this sets its bound); <= 0: as it is (100,000) */
    const char *layout;     /* PostgreSQL: "binduq" (NULL: binduq's own table) or "bindu"
                             * (Bindu's tasks and contexts tables, pg.c) */
    const char *url_name;   /* where url came from, for messages ("DATABASE_URL",
                             * "storage.url", ...); NULL: "storage url" */
    /* Redis: the server's settings (the scheduler's, or its url replaced by storage.url),
     * borrowed for the open; the queue whose Cluster slot holds every key (NULL:
     * "bindu:tasks"); seconds a finished task is kept (0: 7 days; < 0: for ever). */
    const struct bq_broker_config *redis;
    const char *queue;
    double ttl;
};

/* Opens a storage (the memory storage is one per process: every handle shares it). */
bq_status bq_storage_open(const struct bq_storage_config *cfg, bq_storage **out, bq_err *err);
bq_storage *bq_storage_ref(bq_storage *s);
/* Drops a reference; the last one closes the storage. NULL is fine. */
void bq_storage_unref(bq_storage *s);

/* Makes changes[0..n), each a compare-and-set as ops->change makes it, res[i] its result: in
 * one round trip when the storage can batch and the ids are distinct, else one by one. When
 * the server refuses the batch statement (BQ_EPG: for one change's data, say, a text jsonb
 * cannot hold; nothing was made), the changes are made one by one. One by one, a change the
 * server refuses fails alone (res[i].status, res[i].why) and the others are made; any other
 * error (a lost connection) ends the call: it is the call's error if nothing was made yet
 * (the results zeroed), else that change and the ones after it fail with it (BQ_OK). */
bq_status bq_storage_change_many(bq_storage *s, const struct bq_task_change *changes, size_t n,
                                 struct bq_task_result *res, bq_err *err);

/* Starts each of tasks[0..n) for tasks[i].worker: submitted -> working, its attempt counted
 * and its pending request cleared (store:start); a task nobody recorded is created working
 * with one attempt from the other fields (their state is ignored); a task in another state
 * is left as it is, res[i] saying which. In one round trip when the storage can batch and the
 * ids are distinct (an error: none was started), else one by one, with the per-task errors
 * of bq_storage_change_many one by one. */
bq_status bq_storage_start_many(bq_storage *s, const struct bq_task_new *tasks, size_t n,
                                struct bq_task_result *res, bq_err *err);

/* bq_storage_change_many(changes, nc, rc) then bq_storage_start_many(tasks, nt, rt): a
 * chunk's finished states and the next chunk's starts. In one round trip and one transaction
 * (one commit) when the storage can and every id is distinct across both; otherwise, or when
 * the server refused the statement for its data (BQ_EPG: nothing was made), as the two calls
 * one after the other, so that one bad task does not fail the others. An error is the
 * changes' (nothing was made; err says why). BQ_OK: the changes were made (rc); *started
 * says whether the starts were too (rt), and if not, err says why. */
bq_status bq_storage_change_start_many(bq_storage *s, const struct bq_task_change *changes,
                                       size_t nc, const struct bq_task_new *tasks, size_t nt,
                                       struct bq_task_result *rc, struct bq_task_result *rt,
                                       bool *started, bq_err *err);

/* The implementations' constructors (bq_storage_open picks one). */
bq_status bq_storage_mem_open(int max_tasks, bq_storage **out, bq_err *err);
bq_status bq_storage_pg_open(const struct bq_storage_config *cfg, bq_storage **out,
                             bq_err *err);
bq_status bq_storage_redis_open(const struct bq_storage_config *cfg, bq_storage **out,
                                bq_err *err);
/* Forgets every task of the memory storage and restores its default bound (tests). */
void bq_storage_mem_reset(void);

/* Helpers shared by the implementations. */
bool bq_task_state_terminal(const char *state);
bool bq_task_state_valid(const char *state);
/* The state's name as a static string (the same pointer for the same name), or NULL when it
 * is not a state. */
const char *bq_task_state_name(const char *state);
/* True if state is one of the comma-separated names in `from`; NULL `from` means any open
 * state. A terminal state matches only when `from` names it. */
bool bq_task_state_in(const char *state, const char *from);

#endif
