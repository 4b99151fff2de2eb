/*
 * dl.h -- optional libraries, loaded when first used.
 *
 * libpq (PostgreSQL storage), libmicrohttpd (the metrics endpoint) and OpenSSL (TLS) are
 * opened with dlopen the first time a process needs them, not linked: a worker whose state
 * is in memory, that serves no metrics and talks to Redis over plain TCP never maps them,
 * nor the libraries they pull in (GSSAPI, LDAP, GnuTLS, p11-kit), whose start-up code alone
 * leaves about 3 MiB resident; libssl and libcrypto are 1.7 MiB more. A program that links
 * libbinduq links none of them. Each library's functions are listed once, in an X-macro,
 * which gives both the table of typed pointers and the code that fills it; bq_dl_load is the
 * one loader all three use (pqapi.c, sslapi.c, metrics.c).
 */
#ifndef BINDUQ_DL_H
#define BINDUQ_DL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

/* One optional library, loaded once per process by bq_dl_load: `fill` looks up every function
 * of its table (with bq_dl_sym, from the library's X-macro list). Define one statically:
 *   static struct bq_dl_lib libpq = {.soname = "libpq.so.5", .fill = fill_pq};  */
struct bq_dl_lib {
    const char *soname;
    bool (*fill)(void *lib, char *why, size_t size);
    atomic_bool done;  /* tried, successfully or not: failure says which */
    char failure[300]; /* "" once loaded */
};

/* Loads l the first time (threads wait for the first), then answers at once: NULL when its
 * functions are there, else why not. */
const char *bq_dl_load(struct bq_dl_lib *l);

/* In a fill function: looks up f into table.f, or returns false with why. */
#define BQ_DL_SYM(table, f)                                                                    \
    if (!bq_dl_sym(lib, #f, &(table).f, sizeof(table).f, why, size))                           \
        return false;

/* Opens the shared library `soname` (kept open for the process's life); NULL with why. */
void *bq_dl_open(const char *soname, char *why, size_t size);

/* Stores the address of `name` in the function pointer at `fn` (of `fn_size` bytes); false
 * with why when the library lacks it. */
bool bq_dl_sym(void *lib, const char *name, void *fn, size_t fn_size, char *why, size_t size);

#endif
