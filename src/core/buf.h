/*
 * buf.h -- a growable byte buffer with a sticky out-of-memory flag, and the JSON string
 * writer that binduq uses for log lines, dead-letter headers and the C producer's messages.
 *
 * Appends never fail visibly: after the first failed allocation the buffer sets `oom` and
 * ignores further appends, so a caller builds a whole value and checks once at the end.
 * binduq writes JSON but never parses it in C: decoding is lua-cjson's job in the handler
 * states.
 */
#ifndef BINDUQ_BUF_H
#define BINDUQ_BUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct bq_buf {
    char *p;     /* owned; NUL-terminated when len > 0 or after bq_buf_cstr */
    size_t len;
    size_t cap;
    bool oom;
} bq_buf;

#define BQ_BUF_INIT {NULL, 0, 0, false}

void bq_buf_append(bq_buf *b, const void *data, size_t len);
void bq_buf_puts(bq_buf *b, const char *s);
void bq_buf_putc(bq_buf *b, char c);
void bq_buf_printf(bq_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends a string literal, its length known at compile time (no strlen). */
#define BQ_BUF_LIT(b, lit) bq_buf_append((b), "" lit, sizeof(lit) - 1)

/* Appends s[0..len) as a quoted JSON string. s must be valid UTF-8 (see bq_utf8_valid);
 * control characters, quotes and backslashes are escaped. */
void bq_buf_json_str(bq_buf *b, const char *s, size_t len);

/* Appends seconds with three decimals ("1764849600.125"), without printf's floating point
 * (a task event's times: the hot path); a value that is not finite, or beyond 1e15, as 0. */
void bq_buf_put_secs(bq_buf *b, double secs);

/* Appends a decimal integer. */
void bq_buf_put_int(bq_buf *b, long long v);

/* A NUL-terminated view of the contents ("" for an empty buffer); NULL after an OOM. */
const char *bq_buf_cstr(bq_buf *b);

/* Releases the storage and resets to the empty state. */
void bq_buf_free(bq_buf *b);

/* Moves the contents out (caller frees with bq_free) and resets the buffer. NULL on OOM. */
char *bq_buf_detach(bq_buf *b, size_t *len);

/* True if s[0..len) is well-formed UTF-8: no overlong forms, no surrogates, nothing past
 * U+10FFFF. On false, *bad (if not NULL) is the byte offset of the first bad sequence. */
bool bq_utf8_valid(const char *s, size_t len, size_t *bad);

#endif
