/*
 * mem.c -- the in-memory storage: task records of this process (see storage.h).
 *
 * One store per process, shared by every handle, so a producer and a worker in the same
 * process see the same tasks (the memory broker is shared the same way). Records live in
 * open-addressing hash tables (linear probing, power-of-two size of at least twice the bound,
 * tombstones) and on lists in creation order; past `capacity` records (100,000 unless a
 * storage was opened with max_tasks) one is forgotten: the oldest finished one among the 64
 * oldest, else the oldest, which the README states.
 *
 * A bound of SHARD_FROM records or more is split over NSHARDS shards by the id's hash, each
 * with its own mutex, table, list and a sixteenth of the bound, so handler threads working on
 * different tasks do not queue on one lock: at concurrency 4 on two cores one mutex for all
 * was a third of the worker's time, in futex waits and wake-ups. The record forgotten is then
 * the oldest of its shard (the ids spread evenly, so within a few of the oldest overall). A
 * smaller bound is one shard, exact. Listing takes every shard's lock (in index order, as a
 * change of the bound does) and merges them by creation number.
 *
 * A stored record's state is the static name (bq_task_state_name), and empty artifacts,
 * history or metadata are the static "[]" / "{}": no allocation for them, and 70 bytes less
 * per record. Its id, context and queue never change and share the record's own block. Each
 * slot's hash is kept in an array beside the table, so a probe touches a record only when
 * the hashes match. Copies handed out (get, list) are the caller's, every string allocated.
 */
#include "storage.h"

#include "../core/alloc.h"
#include "../core/clock.h"
#include "../core/err.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define MEM_CAPACITY 100000 /* records kept unless max_tasks says otherwise */
#define MAX_CAPACITY 10000000
#define NSHARDS 16          /* a power of two (see shard_of) */
#define SHARD_FROM 16384    /* a bound from this many records up is split over the shards */

struct mrec {
    struct bq_task_rec r;        /* owned strings, but for the three below */
    struct mrec *newer, *older;  /* creation order, within the shard */
    uint64_t seq;                /* creation number, across the shards */
    uint32_t hash;               /* of r.id */
    char text[];                 /* r.id, r.context_id and r.queue, which never change */
};

static char tombstone;
#define TOMBSTONE ((struct mrec *)(void *)&tombstone)

static const char EMPTY_ARRAY[] = "[]", EMPTY_OBJECT[] = "{}";

struct shard {
    pthread_mutex_t mu;
    struct mrec **table;   /* table_size slots, allocated on first use */
    uint32_t *hashes;      /* the hash of each slot's record: a probe reads the record only
                            * when they match, not on every step */
    uint32_t table_size;   /* made for this shard's part of the bound, grown past it */
    struct mrec *newest, *oldest;
    size_t count, used;    /* records; slots not NULL (records plus tombstones) */
} __attribute__((aligned(64)));

static struct shard shards[NSHARDS];
static pthread_once_t shards_once = PTHREAD_ONCE_INIT;
static atomic_int nshards;            /* shards in use: 1 or NSHARDS; changed with every lock held */
static size_t capacity = MEM_CAPACITY; /* the bound; changed with every lock held */
static atomic_size_t total;            /* records in all shards */
static atomic_ullong next_seq;

/* The smallest power of two at least twice n: short probes. */
static uint32_t size_for(size_t n)
{
    uint32_t t = 64;
    while (t < 2 * n)
        t <<= 1;
    return t;
}

/* Sets the shards' count and parts for a bound (every lock held, every table empty). */
static void configure(size_t cap)
{
    int n = cap >= SHARD_FROM ? NSHARDS : 1;
    for (int i = 0; i < NSHARDS; i++)
        shards[i].table_size = size_for(cap / (size_t)n + 1);
    capacity = cap;
    atomic_store(&nshards, n);
}

static void init_shards(void)
{
    for (int i = 0; i < NSHARDS; i++)
        pthread_mutex_init(&shards[i].mu, NULL);
    configure(MEM_CAPACITY);
}

/* The shard of a record whose id hashes to h, when there are NSHARDS: the top bits of h
 * times the golden ratio (FNV-1a's own top bits barely change between ids that differ in
 * their last character, such as consecutive task numbers, which run side by side). */
static unsigned shard_of(uint32_t h)
{
    return (uint32_t)(h * 2654435769u) >> 28;
}

static void lock_all(void)
{
    pthread_once(&shards_once, init_shards);
    for (int i = 0; i < NSHARDS; i++)
        pthread_mutex_lock(&shards[i].mu);
}

static void unlock_all(void)
{
    for (int i = NSHARDS - 1; i >= 0; i--)
        pthread_mutex_unlock(&shards[i].mu);
}

/* Locks and returns the shard of hash h. The count of shards changes only with every lock
 * held, so once this lock is held the count read before it is checked still to be true. */
static struct shard *lock_shard(uint32_t h)
{
    pthread_once(&shards_once, init_shards);
    for (;;) {
        int n = atomic_load(&nshards);
        struct shard *sh = &shards[n == 1 ? 0 : shard_of(h)];
        pthread_mutex_lock(&sh->mu);
        if (atomic_load(&nshards) == n)
            return sh;
        pthread_mutex_unlock(&sh->mu);
    }
}

/* Frees a stored string unless it is one of the static ones. */
static void release(char *p)
{
    if (p != EMPTY_ARRAY && p != EMPTY_OBJECT)
        bq_free(p);
}

/* Frees a stored record: its static strings are not the C library's to free, nor those in
 * its own block. */
static void rec_free(struct mrec *m)
{
    struct bq_task_rec *r = &m->r;
    release(r->history);
    release(r->artifacts);
    release(r->metadata);
    r->history = r->artifacts = r->metadata = r->state = NULL;
    r->id = r->context_id = r->queue = NULL;
    bq_task_rec_clear(r);
    bq_free(m);
}

static uint32_t hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static bool ensure(struct shard *sh)
{
    if (sh->table == NULL) {
        sh->table = bq_calloc(sh->table_size, sizeof *sh->table);
        sh->hashes = bq_calloc(sh->table_size, sizeof *sh->hashes);
        if (sh->table == NULL || sh->hashes == NULL) {
            bq_free(sh->table);
            bq_free(sh->hashes);
            sh->table = NULL;
            sh->hashes = NULL;
        }
    }
    return sh->table != NULL;
}

/* The slot index holding id (whose hash is h), or -1. */
static long find_hashed(const struct shard *sh, const char *id, uint32_t h)
{
    if (sh->table == NULL)
        return -1;
    uint32_t mask = sh->table_size - 1;
    for (uint32_t i = h & mask;; i = (i + 1) & mask) {
        struct mrec *m = sh->table[i];
        if (m == NULL)
            return -1;
        if (m != TOMBSTONE && sh->hashes[i] == h && strcmp(m->r.id, id) == 0)
            return (long)i;
    }
}

static void unlink_rec(struct shard *sh, struct mrec *m)
{
    if (m->newer)
        m->newer->older = m->older;
    else
        sh->newest = m->older;
    if (m->older)
        m->older->newer = m->newer;
    else
        sh->oldest = m->newer;
}

/* Puts m in the table (which has room) and at the new end of the list. */
static void link_rec(struct shard *sh, struct mrec *m)
{
    uint32_t mask = sh->table_size - 1, i = m->hash & mask;
    while (sh->table[i] != NULL && sh->table[i] != TOMBSTONE)
        i = (i + 1) & mask;
    sh->used += sh->table[i] == NULL;
    sh->table[i] = m;
    sh->hashes[i] = m->hash;
    m->newer = NULL;
    m->older = sh->newest;
    if (sh->newest)
        sh->newest->newer = m;
    sh->newest = m;
    if (sh->oldest == NULL)
        sh->oldest = m;
    sh->count++;
    atomic_fetch_add(&total, 1);
}

static void drop(struct shard *sh, long slot)
{
    struct mrec *m = sh->table[slot];
    unlink_rec(sh, m);
    rec_free(m);
    sh->table[slot] = TOMBSTONE;
    sh->count--;
    atomic_fetch_sub(&total, 1);
}

/* Forgets one record to make room: the oldest finished one among the MAKE_ROOM_SCAN oldest,
 * else the oldest. A task still open (running, waiting, queued) is near the new end, so its
 * record survives while finished ones go, unless that many of the oldest are open. */
#define MAKE_ROOM_SCAN 64
static void make_room(struct shard *sh)
{
    struct mrec *victim = sh->oldest;
    int n = 0;
    for (struct mrec *m = sh->oldest; m != NULL && n < MAKE_ROOM_SCAN; m = m->newer, n++) {
        if (bq_task_state_terminal(m->r.state)) {
            victim = m;
            break;
        }
    }
    drop(sh, find_hashed(sh, victim->r.id, victim->hash));
}

/* Rebuilds the shard's table at `size` slots without tombstones, so probes keep finding
 * empty slots. On failure the old table stays. */
static bool rebuild(struct shard *sh, uint32_t size)
{
    struct mrec **fresh = bq_calloc(size, sizeof *fresh);
    uint32_t *fresh_hashes = bq_calloc(size, sizeof *fresh_hashes);
    if (fresh == NULL || fresh_hashes == NULL) {
        bq_free(fresh);
        bq_free(fresh_hashes);
        return false;
    }
    for (struct mrec *m = sh->newest; m != NULL; m = m->older) {
        uint32_t k = m->hash & (size - 1);
        while (fresh[k] != NULL)
            k = (k + 1) & (size - 1);
        fresh[k] = m;
        fresh_hashes[k] = m->hash;
    }
    bq_free(sh->table);
    bq_free(sh->hashes);
    sh->table = fresh;
    sh->hashes = fresh_hashes;
    sh->table_size = size;
    sh->used = sh->count;
    return true;
}

/* Changes the bound (every lock held): the records are dealt out again over the shards the
 * new bound has, oldest first, and those over the bound are forgotten, each from the shard
 * holding the oldest record. On failure nothing changes. */
static bool rebound(size_t cap)
{
    int n = cap >= SHARD_FROM ? NSHARDS : 1;
    size_t counts[NSHARDS] = {0};
    struct mrec **tables[NSHARDS] = {NULL};
    uint32_t *hashes[NSHARDS] = {NULL}, sizes[NSHARDS] = {0};
    for (int i = 0; i < NSHARDS; i++) {
        for (struct mrec *m = shards[i].newest; m != NULL; m = m->older)
            counts[n == 1 ? 0 : shard_of(m->hash)]++;
    }
    if (atomic_load(&total) == 0) { /* nothing to move: the tables are made on first use */
        for (int i = 0; i < NSHARDS; i++) {
            bq_free(shards[i].table);
            bq_free(shards[i].hashes);
            shards[i].table = NULL;
            shards[i].hashes = NULL;
            shards[i].used = 0;
        }
        configure(cap);
        return true;
    }
    bool ok = true;
    for (int i = 0; i < n && ok; i++) {
        size_t part = cap / (size_t)n + 1;
        sizes[i] = size_for(counts[i] > part ? counts[i] : part);
        tables[i] = bq_calloc(sizes[i], sizeof *tables[i]);
        hashes[i] = bq_calloc(sizes[i], sizeof *hashes[i]);
        ok = tables[i] != NULL && hashes[i] != NULL;
    }
    if (!ok) {
        for (int i = 0; i < n; i++) {
            bq_free(tables[i]);
            bq_free(hashes[i]);
        }
        return false;
    }
    struct mrec *from[NSHARDS]; /* each old shard's oldest not yet moved */
    for (int i = 0; i < NSHARDS; i++) {
        struct shard *sh = &shards[i];
        from[i] = sh->oldest;
        bq_free(sh->table);
        bq_free(sh->hashes);
        sh->table = NULL;
        sh->hashes = NULL;
        sh->newest = sh->oldest = NULL;
        sh->count = sh->used = 0;
    }
    atomic_store(&total, 0);
    configure(cap);
    for (int i = 0; i < n; i++) {
        shards[i].table = tables[i];
        shards[i].hashes = hashes[i];
        shards[i].table_size = sizes[i];
    }
    for (;;) { /* merge by creation number, oldest first */
        int best = -1;
        for (int i = 0; i < NSHARDS; i++) {
            if (from[i] != NULL && (best < 0 || from[i]->seq < from[best]->seq))
                best = i;
        }
        if (best < 0)
            break;
        struct mrec *m = from[best];
        from[best] = m->newer;
        link_rec(&shards[n == 1 ? 0 : shard_of(m->hash)], m);
    }
    while (atomic_load(&total) > cap) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            if (shards[i].oldest != NULL && (best < 0 || shards[i].oldest->seq < shards[best].oldest->seq))
                best = i;
        }
        if (best < 0)
            break; /* nothing left to evict: the count is off, not the memory */
        make_room(&shards[best]);
    }
    return true;
}

static char *dup_or_null(const char *s)
{
    return s ? bq_strdup(s) : NULL;
}

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return p;
}

/* A JSON array text that is `a` followed by the elements of `b` (both arrays), or NULL. */
static char *append_array(const char *a, const char *b)
{
    const char *pa = skip_ws(a), *pb = skip_ws(b);
    if (*pa != '[' || *pb != '[')
        return NULL;
    size_t la = strlen(pa), lb = strlen(pb);
    while (la > 0 && strchr(" \t\r\n", pa[la - 1]))
        la--;
    while (lb > 0 && strchr(" \t\r\n", pb[lb - 1]))
        lb--;
    if (la < 2 || pa[la - 1] != ']' || lb < 2 || pb[lb - 1] != ']')
        return NULL;
    bool a_empty = *skip_ws(pa + 1) == ']', b_empty = *skip_ws(pb + 1) == ']';
    if (b_empty)
        return bq_strndup(pa, la);
    if (a_empty)
        return bq_strndup(pb, lb);
    char *out = bq_malloc(la + lb + 1);
    if (out == NULL)
        return NULL;
    memcpy(out, pa, la - 1);
    out[la - 1] = ',';
    memcpy(out + la, pb + 1, lb - 1);
    out[la + lb - 1] = '\0';
    return out;
}

/* Replaces *field by a copy of v ("" clears; NULL keeps). */
static bool set_field(char **field, const char *v)
{
    if (v == NULL)
        return true;
    char *n = NULL;
    if (*v != '\0' && (n = bq_strdup(v)) == NULL)
        return false;
    bq_free(*field);
    *field = n;
    return true;
}

static bool copy_rec(struct bq_task_rec *dst, const struct bq_task_rec *src)
{
    *dst = *src;
    char **f[] = {&dst->id,        &dst->context_id, &dst->state,     &dst->queue,
                  &dst->history,   &dst->artifacts,  &dst->metadata,  &dst->checkpoint,
                  &dst->error,     &dst->requested,  &dst->worker};
    bool ok = true;
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (*f[i] != NULL && (*f[i] = bq_strdup(*f[i])) == NULL)
            ok = false;
    }
    if (!ok) {
        bq_task_rec_clear(dst);
        return false;
    }
    return true;
}

/* Copies s into out[size], cut short if need be (state names fit; see BQ_STATE_LEN). */
static void copy_str(char *out, size_t size, const char *s)
{
    size_t n = strnlen(s, size - 1);
    memcpy(out, s, n);
    out[n] = '\0';
}

static void fill_result(struct bq_task_result *res, const struct bq_task_rec *r, bool changed)
{
    memset(res, 0, sizeof *res);
    res->found = r != NULL;
    res->changed = changed;
    if (r != NULL) {
        copy_str(res->state, sizeof res->state, r->state);
        copy_str(res->requested, sizeof res->requested, r->requested ? r->requested : "");
        res->attempts = r->attempts;
    }
}

/* ---- Operations ----------------------------------------------------------------------------- */

static bq_status mem_create(bq_storage *s, const struct bq_task_new *t,
                            struct bq_task_result *res, bq_err *err)
{
    (void)s;
    const char *state = t->state ? t->state : "submitted";
    if (t->id == NULL || *t->id == '\0')
        return bq_err_set(err, BQ_EINVAL, "storage create: a task needs an id");
    if (!bq_task_state_valid(state))
        return bq_err_set(err, BQ_EINVAL, "storage create: unknown state '%.30s'", state);
    /* The record is made before the lock is taken (and freed if the id is there already),
     * so the lock is held for the table's work only. One block for the record and its fixed
     * strings: one allocation, not four. */
    size_t id_n = strlen(t->id) + 1, ctx_n = t->context_id ? strlen(t->context_id) + 1 : 0,
           q_n = t->queue ? strlen(t->queue) + 1 : 0;
    struct mrec *m = bq_malloc(sizeof *m + id_n + ctx_n + q_n);
    double now = bq_now_wall();
    if (m != NULL) {
        memset(m, 0, sizeof *m);
        char *p = m->text;
        m->r.id = memcpy(p, t->id, id_n);
        m->r.context_id = ctx_n ? memcpy(p + id_n, t->context_id, ctx_n) : NULL;
        m->r.queue = q_n ? memcpy(p + id_n + ctx_n, t->queue, q_n) : NULL;
        m->r.state = (char *)bq_task_state_name(state);
        m->r.history = t->history && strcmp(t->history, "[]") != 0 ? bq_strdup(t->history)
                                                                    : (char *)EMPTY_ARRAY;
        m->r.artifacts = (char *)EMPTY_ARRAY;
        m->r.metadata = t->metadata && strcmp(t->metadata, "{}") != 0 ? bq_strdup(t->metadata)
                                                                      : (char *)EMPTY_OBJECT;
        m->r.worker = dup_or_null(t->worker);
        m->r.requested = t->requested && *t->requested ? bq_strdup(t->requested) : NULL;
        m->r.attempts = t->attempts > 0 ? t->attempts : 0;
        m->r.created_at = m->r.updated_at = m->r.state_at = now;
        m->hash = hash(t->id);
    }
    if (m == NULL || m->r.history == NULL || m->r.metadata == NULL ||
        (t->worker && m->r.worker == NULL) ||
        (t->requested && *t->requested && m->r.requested == NULL)) {
        if (m != NULL)
            rec_free(m);
        return bq_err_set(err, BQ_ENOMEM, "storage create: out of memory");
    }
    struct shard *sh = lock_shard(m->hash);
    bq_status st = BQ_OK;
    long slot = find_hashed(sh, t->id, m->hash);
    if (slot >= 0) {
        fill_result(res, &sh->table[slot]->r, false);
    } else if (!ensure(sh)) {
        st = bq_err_set(err, BQ_ENOMEM, "storage create: out of memory");
    } else {
        /* The bound is on all shards together; the record forgotten is from this one (a
         * shard with none lets the total pass the bound by one, until it has some). */
        while (atomic_load(&total) >= capacity && sh->count > 0)
            make_room(sh);
        /* Too full: rebuilt without its tombstones, and twice as large if the records
         * themselves fill half of it (a shard holding more than its share). */
        uint32_t size = sh->count >= sh->table_size / 2 ? sh->table_size * 2 : sh->table_size;
        if (sh->used >= sh->table_size / 4 * 3 && !rebuild(sh, size)) {
            st = bq_err_set(err, BQ_ENOMEM, "storage create: out of memory");
        } else {
            m->seq = atomic_fetch_add(&next_seq, 1);
            link_rec(sh, m);
            fill_result(res, &m->r, true);
            m = NULL;
        }
    }
    pthread_mutex_unlock(&sh->mu);
    if (m != NULL)
        rec_free(m);
    return st;
}

static bq_status mem_get(bq_storage *s, const char *id, struct bq_task_rec *out, bool *found,
                         bq_err *err)
{
    (void)s;
    memset(out, 0, sizeof *out);
    uint32_t h = hash(id);
    struct shard *sh = lock_shard(h);
    long slot = find_hashed(sh, id, h);
    bool ok = slot < 0 || copy_rec(out, &sh->table[slot]->r);
    *found = slot >= 0 && ok;
    pthread_mutex_unlock(&sh->mu);
    return ok ? BQ_OK : bq_err_set(err, BQ_ENOMEM, "storage get: out of memory");
}

static bq_status mem_change(bq_storage *s, const struct bq_task_change *c,
                            struct bq_task_result *res, bq_err *err)
{
    (void)s;
    if (c->to != NULL && !bq_task_state_valid(c->to))
        return bq_err_set(err, BQ_EINVAL, "storage change: unknown state '%.30s'", c->to);
    uint32_t hh = hash(c->id);
    struct shard *sh = lock_shard(hh);
    bq_status st = BQ_OK;
    long slot = find_hashed(sh, c->id, hh);
    struct bq_task_rec *r = slot >= 0 ? &sh->table[slot]->r : NULL;
    if (r == NULL || !bq_task_state_in(r->state, c->from) ||
        (c->if_requested != NULL &&
         strcmp(r->requested ? r->requested : "", c->if_requested) != 0)) {
        fill_result(res, r, false);
        goto out;
    }
    /* Build every new value first, so a memory failure changes nothing. */
    char *h = c->append_history ? append_array(r->history, c->append_history) : NULL;
    char *a = c->append_artifacts ? append_array(r->artifacts, c->append_artifacts) : NULL;
    if ((c->append_history && h == NULL) || (c->append_artifacts && a == NULL)) {
        bq_free(h);
        bq_free(a);
        st = bq_err_set(err, BQ_EINVAL, "storage change: history and artifacts must be JSON "
                        "arrays (or out of memory)");
        goto out;
    }
    if (!set_field(&r->checkpoint, c->checkpoint) || !set_field(&r->error, c->error) ||
        !set_field(&r->requested, c->requested) || !set_field(&r->worker, c->worker)) {
        bq_free(h);
        bq_free(a);
        st = bq_err_set(err, BQ_ENOMEM, "storage change: out of memory");
        goto out;
    }
    double now = bq_now_wall();
    if (h) {
        release(r->history);
        r->history = h;
    }
    if (a) {
        release(r->artifacts);
        r->artifacts = a;
    }
    if (c->to) {
        const char *to = bq_task_state_name(c->to);
        if (to != r->state)
            r->state_at = now;
        r->state = (char *)to;
    }
    if (c->count_attempt)
        r->attempts++;
    r->updated_at = now;
    fill_result(res, r, true);
out:
    pthread_mutex_unlock(&sh->mu);
    return st;
}

static bq_status mem_list(bq_storage *s, const struct bq_task_filter *f,
                          struct bq_task_rec **out, size_t *n, bq_err *err)
{
    (void)s;
    static const struct bq_task_filter all = {NULL, NULL, 0, 0, 0};
    if (f == NULL)
        f = &all;
    size_t limit = f->limit > 0 ? (size_t)f->limit : 100;
    *out = NULL;
    *n = 0;
    struct bq_task_rec *v = bq_calloc(limit, sizeof *v);
    if (v == NULL)
        return bq_err_set(err, BQ_ENOMEM, "storage list: out of memory");
    double cut = f->older_than > 0 ? bq_now_wall() - f->older_than : 0;
    int skip = f->offset;
    bq_status st = BQ_OK;
    size_t k = 0;
    lock_all();
    struct mrec *at[NSHARDS]; /* each shard's newest not yet looked at */
    for (int i = 0; i < NSHARDS; i++)
        at[i] = shards[i].newest;
    while (k < limit) { /* newest first across the shards, by creation number */
        int best = -1;
        for (int i = 0; i < NSHARDS; i++) {
            if (at[i] != NULL && (best < 0 || at[i]->seq > at[best]->seq))
                best = i;
        }
        if (best < 0)
            break;
        const struct bq_task_rec *r = &at[best]->r;
        at[best] = at[best]->older;
        if (f->state && strcmp(r->state, f->state) != 0)
            continue;
        if (f->context_id && (r->context_id == NULL || strcmp(r->context_id, f->context_id) != 0))
            continue;
        if (cut > 0 && r->state_at >= cut)
            continue;
        if (skip > 0) {
            skip--;
            continue;
        }
        if (!copy_rec(&v[k], r)) {
            st = bq_err_set(err, BQ_ENOMEM, "storage list: out of memory");
            break;
        }
        k++;
    }
    unlock_all();
    if (st != BQ_OK) {
        bq_task_recs_free(v, k);
        return st;
    }
    *out = v;
    *n = k;
    return BQ_OK;
}

static bq_status mem_remove(bq_storage *s, const char *id, bool *found, bq_err *err)
{
    (void)s;
    (void)err;
    uint32_t h = hash(id);
    struct shard *sh = lock_shard(h);
    long slot = find_hashed(sh, id, h);
    if (slot >= 0)
        drop(sh, slot);
    *found = slot >= 0;
    pthread_mutex_unlock(&sh->mu);
    return BQ_OK;
}

static bq_status mem_ping(bq_storage *s, bq_err *err)
{
    (void)s;
    (void)err;
    return BQ_OK;
}

static void mem_destroy(bq_storage *s)
{
    bq_free(s);
}

static const struct bq_storage_ops mem_ops = {
    "memory", mem_create, mem_get, mem_change, mem_list, mem_remove, mem_ping, mem_destroy, NULL,
    NULL, NULL, NULL,
};

bq_status bq_storage_mem_open(int max_tasks, bq_storage **out, bq_err *err)
{
    if (max_tasks > MAX_CAPACITY)
        return bq_err_set(err, BQ_EINVAL, "storage: max_tasks must be from 1 to %d (got %d)",
                          MAX_CAPACITY, max_tasks);
    if (max_tasks > 0) {
        lock_all();
        bool ok = (size_t)max_tasks == capacity || rebound((size_t)max_tasks);
        unlock_all();
        if (!ok)
            return bq_err_set(err, BQ_ENOMEM, "storage: out of memory");
    }
    bq_storage *s = bq_calloc(1, sizeof *s);
    if (s == NULL)
        return bq_err_set(err, BQ_ENOMEM, "storage: out of memory");
    s->ops = &mem_ops;
    atomic_init(&s->refs, 1);
    *out = s;
    return BQ_OK;
}

void bq_storage_mem_reset(void)
{
    lock_all();
    for (int i = 0; i < NSHARDS; i++) {
        struct shard *sh = &shards[i];
        while (sh->newest != NULL) {
            struct mrec *m = sh->newest;
            sh->newest = m->older;
            rec_free(m);
        }
        sh->oldest = NULL;
        bq_free(sh->table);
        bq_free(sh->hashes);
        sh->table = NULL;
        sh->hashes = NULL;
        sh->count = sh->used = 0;
    }
    atomic_store(&total, 0);
    configure(MEM_CAPACITY);
    unlock_all();
}
