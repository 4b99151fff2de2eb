/*
 * fuzz_dotenv.c -- the .env parser (src/core/env.c): whatever the file holds, it never reads
 * past the input, and each variable it reports has a name of letters, digits, '_', '.', '-'
 * (not starting with a digit, '.' or '-') under BQ_DOTENV_NAME_MAX bytes and a value of at
 * most 64 KiB with no NUL byte, which setenv could not carry.
 */
#include "fuzz.h"

#include "../../src/core/alloc.h"
#include "../../src/core/env.h"

#include <ctype.h>
#include <string.h>

static void check(void *ud, const char *name, char *value)
{
    size_t *n = ud;
    size_t len = strlen(name);
    if (len == 0 || len >= BQ_DOTENV_NAME_MAX || !(isalpha((unsigned char)name[0]) || name[0] == '_'))
        abort();
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!(isalnum(c) || c == '_' || c == '.' || c == '-'))
            abort();
    }
    if (strlen(value) > 64 * 1024)
        abort();
    (*n)++;
    bq_free(value);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t n = 0;
    int skipped = bq_dotenv_parse((const char *)data, size, check, &n);
    if (skipped < 0)
        abort();
    return 0;
}
