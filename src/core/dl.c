/*
 * dl.c -- see dl.h.
 */
#include "dl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static pthread_mutex_t load_mu = PTHREAD_MUTEX_INITIALIZER;

const char *bq_dl_load(struct bq_dl_lib *l)
{
    if (!atomic_load_explicit(&l->done, memory_order_acquire)) {
        pthread_mutex_lock(&load_mu);
        if (!atomic_load_explicit(&l->done, memory_order_relaxed)) {
            void *lib = bq_dl_open(l->soname, l->failure, sizeof l->failure);
            if (lib != NULL && !l->fill(lib, l->failure, sizeof l->failure) &&
                l->failure[0] == '\0')
                snprintf(l->failure, sizeof l->failure, "%s: a function is missing", l->soname);
            atomic_store_explicit(&l->done, true, memory_order_release);
        }
        pthread_mutex_unlock(&load_mu);
    }
    return l->failure[0] != '\0' ? l->failure : NULL;
}

void *bq_dl_open(const char *soname, char *why, size_t size)
{
    void *lib = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        const char *e = dlerror();
        snprintf(why, size, "%s", e ? e : soname);
    }
    return lib;
}

bool bq_dl_sym(void *lib, const char *name, void *fn, size_t fn_size, char *why, size_t size)
{
    void *p = dlsym(lib, name);
    if (p == NULL || fn_size != sizeof p) {
        snprintf(why, size, "the library has no %s", name);
        return false;
    }
    /* POSIX guarantees a data pointer can hold a function's address; copy its bytes. */
    memcpy(fn, &p, sizeof p);
    return true;
}
