/*
 * dl.c -- see dl.h.
 */
#include "dl.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

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
