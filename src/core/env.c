/*
 * env.c -- see env.h.
 */
#include "env.h"

#include "alloc.h"
#include "buf.h"
#include "err.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

extern char **environ;

#define DOTENV_MAX_FILE ((size_t)1 << 20)   /* 1 MiB */
#define DOTENV_MAX_VALUE ((size_t)64 << 10) /* 64 KiB */

const char *bq_env(const char *name)
{
    const char *v = getenv(name);
    return (v != NULL && *v != '\0') ? v : NULL;
}

const char *bq_env_any_case(const char *name)
{
    const char *v = bq_env(name);
    if (v != NULL)
        return v;
    size_t n = strlen(name);
    for (char **e = environ; e != NULL && *e != NULL; e++) {
        if (strncasecmp(*e, name, n) == 0 && (*e)[n] == '=' && (*e)[n + 1] != '\0')
            return *e + n + 1;
    }
    return NULL;
}

static bool name_char(int c, bool first)
{
    return isalpha(c) || c == '_' || (!first && (isdigit(c) || c == '.' || c == '-'));
}

/* Parses one line (without its newline); returns the value (owned) and fills name, or NULL
 * when the line is blank, a comment (*skip false) or malformed (*skip true). */
static char *parse_line(const char *p, const char *end, char *name, size_t nsize, bool *bad)
{
    *bad = false;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    if (p == end || *p == '#' || *p == '\r')
        return NULL;
    if (end - p > 7 && memcmp(p, "export ", 7) == 0) {
        p += 7;
        while (p < end && *p == ' ')
            p++;
    }
    const char *n0 = p;
    while (p < end && name_char((unsigned char)*p, p == n0))
        p++;
    size_t nlen = (size_t)(p - n0);
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    if (nlen == 0 || nlen >= nsize || p == end || *p != '=') {
        *bad = true;
        return NULL;
    }
    memcpy(name, n0, nlen);
    name[nlen] = '\0';
    p++;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    bq_buf b = BQ_BUF_INIT;
    if (p < end && (*p == '\'' || *p == '"')) {
        char q = *p++;
        bool closed = false;
        while (p < end) {
            char c = *p++;
            if (c == q) {
                closed = true;
                break;
            }
            if (q == '"' && c == '\\' && p < end) {
                char e = *p++;
                c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
                if (e != 'n' && e != 't' && e != 'r' && e != '"' && e != '\\')
                    bq_buf_putc(&b, '\\'); /* unknown escapes stay as written */
            }
            bq_buf_putc(&b, c);
        }
        /* after the closing quote: blanks, then nothing or a comment */
        while (closed && p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
            p++;
        if (!closed || (p < end && *p != '#'))
            *bad = true;
    } else {
        const char *v0 = p, *v1 = p;
        while (p < end && !(*p == '#' && p > v0 && (p[-1] == ' ' || p[-1] == '\t')))
            p++;
        v1 = p;
        while (v1 > v0 && (v1[-1] == ' ' || v1[-1] == '\t' || v1[-1] == '\r'))
            v1--;
        bq_buf_append(&b, v0, (size_t)(v1 - v0));
    }
    size_t vlen;
    char *v = bq_buf_detach(&b, &vlen);
    if (!*bad && (v == NULL || vlen > DOTENV_MAX_VALUE || memchr(v, '\0', vlen) != NULL))
        *bad = true;
    if (*bad) {
        bq_free(v);
        return NULL;
    }
    return v;
}

int bq_dotenv_parse(const char *text, size_t len,
                    void (*cb)(void *ud, const char *name, char *value), void *ud)
{
    int skipped = 0;
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        char name[BQ_DOTENV_NAME_MAX];
        bool bad;
        char *v = parse_line(p, stop, name, sizeof name, &bad);
        if (v != NULL)
            cb(ud, name, v);
        else if (bad)
            skipped++;
        p = stop + (nl != NULL);
    }
    return skipped;
}

static void set_missing(void *ud, const char *name, char *value)
{
    int *loaded = ud;
    if (getenv(name) == NULL && setenv(name, value, 0) == 0)
        (*loaded)++;
    bq_free(value);
}

bq_status bq_dotenv_load(const char *path, int *loaded, int *skipped, bq_err *err)
{
    int l = 0, s = 0;
    if (loaded != NULL)
        *loaded = 0;
    if (skipped != NULL)
        *skipped = 0;
    if (path == NULL)
        path = bq_env("BINDUQ_ENV_FILE");
    if (path == NULL)
        path = ".env";
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return errno == ENOENT ? BQ_OK
                               : bq_err_set(err, BQ_EIO, "%s: %s", path, strerror(errno));
    char *text = bq_malloc(DOTENV_MAX_FILE + 1);
    size_t n = text != NULL ? fread(text, 1, DOTENV_MAX_FILE + 1, f) : 0;
    bool too_big = n > DOTENV_MAX_FILE, failed = ferror(f) != 0;
    fclose(f);
    if (text == NULL)
        return bq_err_set(err, BQ_ENOMEM, "%s: out of memory", path);
    if (too_big || failed) {
        bq_free(text);
        return bq_err_set(err, BQ_EIO, "%s: %s", path,
                          too_big ? "larger than 1 MiB" : "cannot be read");
    }
    s = bq_dotenv_parse(text, n, set_missing, &l);
    bq_free(text);
    if (loaded != NULL)
        *loaded = l;
    if (skipped != NULL)
        *skipped = s;
    return BQ_OK;
}
