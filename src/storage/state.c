/*
 * state.c -- see state.h. An open-addressing hash table of task ids (linear probing, power
 * of two size, tombstones on eviction) plus a ring of insertion order for forgetting the
 * oldest entry once the capacity is reached. One mutex: every operation is a few
 * microseconds and happens once or twice per task.
 */
#include "state.h"

#include "../core/alloc.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define TABLE_SIZE (1u << 18) /* > 2 x capacity keeps probes short */

struct entry {
    char *id;      /* owned; NULL: empty; TOMBSTONE: deleted */
    char state[16];
};

static char tombstone;
#define TOMBSTONE (&tombstone)

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct entry *table;    /* TABLE_SIZE entries, allocated on first use */
static char **order;           /* BQ_STATE_CAPACITY ids, oldest at `head` (borrowed) */
static size_t head, count;
static size_t used;            /* slots not NULL: live entries plus tombstones */

static uint32_t hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static bool ensure(void)
{
    if (table != NULL)
        return true;
    table = bq_calloc(TABLE_SIZE, sizeof *table);
    order = bq_calloc(BQ_STATE_CAPACITY, sizeof *order);
    if (table == NULL || order == NULL) {
        bq_free(table);
        bq_free(order);
        table = NULL;
        order = NULL;
        return false;
    }
    return true;
}

/* The slot holding id, or NULL. */
static struct entry *lookup(const char *id)
{
    for (uint32_t i = hash(id) & (TABLE_SIZE - 1);; i = (i + 1) & (TABLE_SIZE - 1)) {
        struct entry *e = &table[i];
        if (e->id == NULL)
            return NULL;
        if (e->id != TOMBSTONE && strcmp(e->id, id) == 0)
            return e;
    }
}

static void forget_oldest(void)
{
    struct entry *e = lookup(order[head]);
    if (e != NULL) {
        bq_free(e->id);
        e->id = TOMBSTONE;
    }
    head = (head + 1) % BQ_STATE_CAPACITY;
    count--;
}

/* Rebuilds the table without tombstones, so probes keep finding empty slots. */
static bool rebuild(void)
{
    struct entry *fresh = bq_calloc(TABLE_SIZE, sizeof *fresh);
    if (fresh == NULL)
        return false;
    for (uint32_t i = 0; i < TABLE_SIZE; i++) {
        if (table[i].id == NULL || table[i].id == TOMBSTONE)
            continue;
        uint32_t k = hash(table[i].id) & (TABLE_SIZE - 1);
        while (fresh[k].id != NULL)
            k = (k + 1) & (TABLE_SIZE - 1);
        fresh[k] = table[i];
    }
    bq_free(table);
    table = fresh;
    used = count;
    return true;
}

/* Inserts id (not present) and returns its entry, or NULL when out of memory. */
static struct entry *insert(const char *id)
{
    if (count == BQ_STATE_CAPACITY)
        forget_oldest();
    if (used >= TABLE_SIZE / 4 * 3 && !rebuild())
        return NULL;
    char *copy = bq_strdup(id);
    if (copy == NULL)
        return NULL;
    uint32_t i = hash(id) & (TABLE_SIZE - 1);
    while (table[i].id != NULL && table[i].id != TOMBSTONE)
        i = (i + 1) & (TABLE_SIZE - 1);
    used += table[i].id == NULL;
    table[i].id = copy;
    order[(head + count) % BQ_STATE_CAPACITY] = copy;
    count++;
    return &table[i];
}

bool bq_state_terminal(const char *s)
{
    return s != NULL && (strcmp(s, "completed") == 0 || strcmp(s, "failed") == 0 ||
                         strcmp(s, "canceled") == 0 || strcmp(s, "rejected") == 0);
}

bool bq_state_get(const char *task_id, char *out, size_t size)
{
    pthread_mutex_lock(&mu);
    struct entry *e = table != NULL ? lookup(task_id) : NULL;
    if (e != NULL && size > 0) {
        strncpy(out, e->state, size - 1);
        out[size - 1] = '\0';
    }
    pthread_mutex_unlock(&mu);
    return e != NULL;
}

/* True if `cur` is one of the comma-separated names in `list`. */
static bool listed(const char *list, const char *cur)
{
    size_t n = strlen(cur);
    for (const char *p = list;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == n && strncmp(p, cur, n) == 0)
            return true;
        if (comma == NULL)
            return false;
        p = comma + 1;
    }
}

bool bq_state_set(const char *task_id, const char *state, const char *from)
{
    if (strlen(state) >= sizeof table[0].state)
        return false;
    pthread_mutex_lock(&mu);
    bool changed = false;
    if (ensure()) {
        struct entry *e = lookup(task_id);
        const char *cur = e ? e->state : "";
        if (!bq_state_terminal(cur) && (from == NULL || listed(from, cur))) {
            if (e == NULL)
                e = insert(task_id);
            if (e != NULL) {
                strcpy(e->state, state);
                changed = true;
            }
        }
    }
    pthread_mutex_unlock(&mu);
    return changed;
}

void bq_state_forget(const char *task_id)
{
    pthread_mutex_lock(&mu);
    struct entry *e = table != NULL ? lookup(task_id) : NULL;
    if (e != NULL) /* the id stays in the eviction ring; forget_oldest finds nothing then */
        strcpy(e->state, "");
    pthread_mutex_unlock(&mu);
}

void bq_state_reset(void)
{
    pthread_mutex_lock(&mu);
    for (uint32_t i = 0; table != NULL && i < TABLE_SIZE; i++) {
        if (table[i].id != TOMBSTONE)
            bq_free(table[i].id);
    }
    bq_free(table);
    bq_free(order);
    table = NULL;
    order = NULL;
    head = count = used = 0;
    pthread_mutex_unlock(&mu);
}
