/*
 * dl.h -- optional libraries, loaded when first used.
 *
 * libpq (PostgreSQL storage), libmicrohttpd (the metrics endpoint) and OpenSSL (TLS) are
 * opened with dlopen the first time a process needs them, not linked: a worker whose state
 * is in memory, that serves no metrics and talks to Redis over plain TCP never maps them,
 * nor the libraries they pull in (GSSAPI, LDAP, GnuTLS, p11-kit), whose start-up code alone
 * leaves about 3 MiB resident; libssl and libcrypto are 1.7 MiB more. A program that links
 * libbinduq links none of them. Each library's functions are listed once, in an X-macro,
 * which gives both the table of typed pointers and the code that fills it.
 */
#ifndef BINDUQ_DL_H
#define BINDUQ_DL_H

#include <stdbool.h>
#include <stddef.h>

/* Opens the shared library `soname` (kept open for the process's life); NULL with why. */
void *bq_dl_open(const char *soname, char *why, size_t size);

/* Stores the address of `name` in the function pointer at `fn` (of `fn_size` bytes); false
 * with why when the library lacks it. */
bool bq_dl_sym(void *lib, const char *name, void *fn, size_t fn_size, char *why, size_t size);

#endif
