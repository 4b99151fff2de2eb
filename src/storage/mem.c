/*
 * mem.c -- the in-memory storage: task records of this process (see storage.h).
 *
 * One store per process, shared by every handle, so a producer and a worker in the same
 * process see the same tasks (the memory broker is shared the same way). Records live in an
 * open-addressing hash table (linear probing, power-of-two size of at least twice the bound,
 * tombstones) and on a list in creation order; past `capacity` records (100,000 unless a
 * storage was opened with max_tasks) one is forgotten: the oldest finished one among the 64
 * oldest, else the oldest, which the README states. One mutex guards everything: each
 * operation is a few microseconds.
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
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define MEM_CAPACITY 100000 /* records kept unless max_tasks says otherwise */
#define MAX_CAPACITY 10000000

struct mrec {
    struct bq_task_rec r;        /* owned strings, but for the three below */
    struct mrec *newer, *older;  /* creation order */
    uint32_t hash;               /* of r.id */
    char text[];                 /* r.id, r.context_id and r.queue, which never change */
};

static char tombstone;
#define TOMBSTONE ((struct mrec *)(void *)&tombstone)

static const char EMPTY_ARRAY[] = "[]", EMPTY_OBJECT[] = "{}";

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct mrec **table; /* table_size slots, allocated on first use */
static uint32_t *hashes;    /* the hash of each slot's record: a probe reads the record only
                             * when they match, not on every step */
static uint32_t table_size = 1u << 18; /* size_for(MEM_CAPACITY) */
static size_t capacity = MEM_CAPACITY;
static struct mrec *newest, *oldest;
static size_t count, used;  /* records; slots not NULL (records plus tombstones) */

/* The smallest power of two at least twice n: short probes. */
static uint32_t size_for(size_t n)
{
    uint32_t t = 64;
    while (t < 2 * n)
        t <<= 1;
    return t;
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

static bool ensure(void)
{
    if (table == NULL) {
        table = bq_calloc(table_size, sizeof *table);
        hashes = bq_calloc(table_size, sizeof *hashes);
        if (table == NULL || hashes == NULL) {
            bq_free(table);
            bq_free(hashes);
            table = NULL;
            hashes = NULL;
        }
    }
    return table != NULL;
}

/* The slot index holding id (whose hash is h), or -1. */
static long find_hashed(const char *id, uint32_t h)
{
    for (uint32_t i = h & (table_size - 1);; i = (i + 1) & (table_size - 1)) {
        struct mrec *m = table[i];
        if (m == NULL)
            return -1;
        if (m != TOMBSTONE && hashes[i] == h && strcmp(m->r.id, id) == 0)
            return (long)i;
    }
}

static long find(const char *id)
{
    return find_hashed(id, hash(id));
}

static void unlink_rec(struct mrec *m)
{
    if (m->newer)
        m->newer->older = m->older;
    else
        newest = m->older;
    if (m->older)
        m->older->newer = m->newer;
    else
        oldest = m->newer;
}

static void drop(long slot)
{
    struct mrec *m = table[slot];
    unlink_rec(m);
    rec_free(m);
    table[slot] = TOMBSTONE;
    count--;
}

/* Forgets one record to make room: the oldest finished one among the MAKE_ROOM_SCAN oldest,
 * else the oldest. A task still open (running, waiting, queued) is near the new end, so its
 * record survives while finished ones go, unless that many of the oldest are open. */
#define MAKE_ROOM_SCAN 64
static void make_room(void)
{
    struct mrec *victim = oldest;
    int n = 0;
    for (struct mrec *m = oldest; m != NULL && n < MAKE_ROOM_SCAN; m = m->newer, n++) {
        if (bq_task_state_terminal(m->r.state)) {
            victim = m;
            break;
        }
    }
    drop(find_hashed(victim->r.id, victim->hash));
}

/* Rebuilds the table at `size` slots without tombstones, so probes keep finding empty
 * slots. On failure the old table stays. */
static bool rebuild(uint32_t size)
{
    struct mrec **fresh = bq_calloc(size, sizeof *fresh);
    uint32_t *fresh_hashes = bq_calloc(size, sizeof *fresh_hashes);
    if (fresh == NULL || fresh_hashes == NULL) {
        bq_free(fresh);
        bq_free(fresh_hashes);
        return false;
    }
    for (struct mrec *m = newest; m != NULL; m = m->older) {
        uint32_t k = m->hash & (size - 1);
        while (fresh[k] != NULL)
            k = (k + 1) & (size - 1);
        fresh[k] = m;
        fresh_hashes[k] = m->hash;
    }
    bq_free(table);
    bq_free(hashes);
    table = fresh;
    hashes = fresh_hashes;
    table_size = size;
    used = count;
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
    pthread_mutex_lock(&mu);
    bq_status st = BQ_OK;
    if (!ensure()) {
        st = bq_err_set(err, BQ_ENOMEM, "storage create: out of memory");
        goto out;
    }
    uint32_t h = hash(t->id);
    long slot = find_hashed(t->id, h);
    if (slot >= 0) {
        fill_result(res, &table[slot]->r, false);
        goto out;
    }
    while (count >= capacity)
        make_room();
    if (used >= table_size / 4 * 3 && !rebuild(table_size)) {
        st = bq_err_set(err, BQ_ENOMEM, "storage create: out of memory");
        goto out;
    }
    /* One block for the record and its fixed strings: one allocation, not four. */
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
        m->r.attempts = t->attempts > 0 ? t->attempts : 0;
        m->r.created_at = m->r.updated_at = m->r.state_at = now;
    }
    if (m == NULL || m->r.history == NULL || m->r.metadata == NULL ||
        (t->worker && m->r.worker == NULL)) {
        if (m != NULL)
            rec_free(m);
        st = bq_err_set(err, BQ_ENOMEM, "storage create: out of memory");
        goto out;
    }
    m->hash = h;
    uint32_t i = h & (table_size - 1);
    while (table[i] != NULL && table[i] != TOMBSTONE)
        i = (i + 1) & (table_size - 1);
    used += table[i] == NULL;
    table[i] = m;
    hashes[i] = h;
    m->older = newest;
    if (newest)
        newest->newer = m;
    newest = m;
    if (oldest == NULL)
        oldest = m;
    count++;
    fill_result(res, &m->r, true);
out:
    pthread_mutex_unlock(&mu);
    return st;
}

static bq_status mem_get(bq_storage *s, const char *id, struct bq_task_rec *out, bool *found,
                         bq_err *err)
{
    (void)s;
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&mu);
    long slot = table != NULL ? find(id) : -1;
    bool ok = slot < 0 || copy_rec(out, &table[slot]->r);
    *found = slot >= 0 && ok;
    pthread_mutex_unlock(&mu);
    return ok ? BQ_OK : bq_err_set(err, BQ_ENOMEM, "storage get: out of memory");
}

static bq_status mem_change(bq_storage *s, const struct bq_task_change *c,
                            struct bq_task_result *res, bq_err *err)
{
    (void)s;
    if (c->to != NULL && !bq_task_state_valid(c->to))
        return bq_err_set(err, BQ_EINVAL, "storage change: unknown state '%.30s'", c->to);
    pthread_mutex_lock(&mu);
    bq_status st = BQ_OK;
    long slot = table != NULL ? find(c->id) : -1;
    struct bq_task_rec *r = slot >= 0 ? &table[slot]->r : NULL;
    if (r == NULL || !bq_task_state_in(r->state, c->from)) {
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
    pthread_mutex_unlock(&mu);
    return st;
}

static bq_status mem_list(bq_storage *s, const struct bq_task_filter *f,
                          struct bq_task_rec **out, size_t *n, bq_err *err)
{
    (void)s;
    static const struct bq_task_filter all = {NULL, NULL, 0, 0};
    if (f == NULL)
        f = &all;
    size_t limit = f->limit > 0 ? (size_t)f->limit : 100;
    *out = NULL;
    *n = 0;
    struct bq_task_rec *v = bq_calloc(limit, sizeof *v);
    if (v == NULL)
        return bq_err_set(err, BQ_ENOMEM, "storage list: out of memory");
    double cut = f->older_than > 0 ? bq_now_wall() - f->older_than : 0;
    bq_status st = BQ_OK;
    size_t k = 0;
    pthread_mutex_lock(&mu);
    for (struct mrec *m = newest; m != NULL && k < limit; m = m->older) {
        const struct bq_task_rec *r = &m->r;
        if (f->state && strcmp(r->state, f->state) != 0)
            continue;
        if (f->context_id && (r->context_id == NULL || strcmp(r->context_id, f->context_id) != 0))
            continue;
        if (cut > 0 && r->state_at >= cut)
            continue;
        if (!copy_rec(&v[k], r)) {
            st = bq_err_set(err, BQ_ENOMEM, "storage list: out of memory");
            break;
        }
        k++;
    }
    pthread_mutex_unlock(&mu);
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
    pthread_mutex_lock(&mu);
    long slot = table != NULL ? find(id) : -1;
    if (slot >= 0)
        drop(slot);
    *found = slot >= 0;
    pthread_mutex_unlock(&mu);
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
    "memory", mem_create, mem_get, mem_change, mem_list, mem_remove, mem_ping, mem_destroy,
};

bq_status bq_storage_mem_open(int max_tasks, bq_storage **out, bq_err *err)
{
    if (max_tasks > MAX_CAPACITY)
        return bq_err_set(err, BQ_EINVAL, "storage: max_tasks must be from 1 to %d (got %d)",
                          MAX_CAPACITY, max_tasks);
    if (max_tasks > 0) {
        pthread_mutex_lock(&mu);
        bool ok = true;
        capacity = (size_t)max_tasks;
        while (count > capacity)
            make_room();
        uint32_t size = size_for(capacity);
        if (table == NULL)
            table_size = size;
        else if (size != table_size)
            ok = rebuild(size);
        pthread_mutex_unlock(&mu);
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
    pthread_mutex_lock(&mu);
    while (newest != NULL) {
        struct mrec *m = newest;
        newest = m->older;
        rec_free(m);
    }
    oldest = NULL;
    bq_free(table);
    bq_free(hashes);
    table = NULL;
    hashes = NULL;
    count = used = 0;
    capacity = MEM_CAPACITY;
    table_size = size_for(MEM_CAPACITY);
    pthread_mutex_unlock(&mu);
}
