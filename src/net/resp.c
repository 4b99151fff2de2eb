/*
 * resp.c -- see resp.h.
 *
 * One byte at a time, except bulk data, which is skipped a read's worth at once. A line (the
 * rest of a '+', '-', ':', '$' or '*' item) ends at the first "\r\n", as in hiredis; a '\r'
 * not followed by '\n' belongs to the line. The integer of a ':', '$' or '*' line is checked
 * as it arrives, with hiredis's rules (string2ll in its read.c), and judged at the line's end:
 * the reader, too, says nothing about a line until its "\r\n" has come.
 */
#include "resp.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum { S_TYPE = 0, S_LINE, S_BULK };             /* state: what the next byte is */
enum { N_START = 0, N_MINUS, N_ZERO, N_DIGITS, N_BAD }; /* num: the line's integer so far */

void bq_resp_init(struct bq_resp_scanner *s, size_t max_bytes, size_t max_elements)
{
    memset(s, 0, sizeof *s);
    s->max_bytes = max_bytes;
    s->max_elements = max_elements;
    s->state = S_TYPE;
    s->error = BQ_OK;
}

static bq_status fail(struct bq_resp_scanner *s, bq_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bq_status fail(struct bq_resp_scanner *s, bq_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->msg, sizeof s->msg, fmt, ap);
    va_end(ap);
    s->error = st;
    return st;
}

/* The next byte of the line's integer. */
static void num_feed(struct bq_resp_scanner *s, unsigned char ch)
{
    bool digit = ch >= '0' && ch <= '9';
    unsigned d = (unsigned)(ch - '0');
    switch (s->num) {
    case N_START:
        if (ch == '-') {
            s->num = N_MINUS;
            s->negative = true;
        } else if (ch == '0') {
            s->num = N_ZERO;
        } else {
            s->num = digit ? N_DIGITS : N_BAD;
            s->value = d;
        }
        break;
    case N_MINUS: /* "-0" is not an integer either */
        s->num = digit && ch != '0' ? N_DIGITS : N_BAD;
        s->value = d;
        break;
    case N_DIGITS:
        if (!digit || s->value > ULLONG_MAX / 10 || s->value * 10 > ULLONG_MAX - d)
            s->num = N_BAD;
        else
            s->value = s->value * 10 + d;
        break;
    default:
        s->num = N_BAD;
        break;
    }
}

/* The line's integer, at its end: false if it is not one. */
static bool num_end(const struct bq_resp_scanner *s, long long *v)
{
    if (s->num == N_ZERO) {
        *v = 0;
        return true;
    }
    if (s->num != N_DIGITS)
        return false;
    if (s->negative) {
        if (s->value > (unsigned long long)LLONG_MAX + 1)
            return false;
        *v = s->value == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN : -(long long)s->value;
        return true;
    }
    if (s->value > (unsigned long long)LLONG_MAX)
        return false;
    *v = (long long)s->value;
    return true;
}

/* An item has ended at offset `end` of the current call: so have the arrays it completes, and
 * the reply when no array is left open. */
static void item_done(struct bq_resp_scanner *s, size_t end, size_t *whole)
{
    s->state = S_TYPE;
    while (s->depth > 0) {
        if (--s->left[s->depth - 1] > 0)
            return;
        s->depth--; /* that array has ended: it was an element of the one around it */
    }
    s->replies++;
    *whole = end;
}

/* The byte that says what the next item is. */
static bq_status type_byte(struct bq_resp_scanner *s, unsigned char ch)
{
    switch (ch) {
    case '*':
        if (s->depth == BQ_RESP_MAX_DEPTH)
            return fail(s, BQ_EPROTO, "No support for nested multi bulk replies with depth > 7");
        /* fall through */
    case '+':
    case '-':
    case ':':
    case '$':
        s->state = S_LINE;
        s->type = (char)ch;
        s->cr = false;
        s->num = N_START;
        s->negative = false;
        s->value = 0;
        return BQ_OK;
    default:
        /* As hiredis prints the byte (its chrtos). */
        if (ch == '\\' || ch == '"')
            return fail(s, BQ_EPROTO, "Protocol error, got \"\\%c\" as reply type byte", ch);
        const char *esc = ch == '\n' ? "\\n" : ch == '\r' ? "\\r" : ch == '\t' ? "\\t"
                          : ch == '\a' ? "\\a" : ch == '\b' ? "\\b" : NULL;
        if (esc != NULL)
            return fail(s, BQ_EPROTO, "Protocol error, got \"%s\" as reply type byte", esc);
        if (ch >= 0x20 && ch < 0x7f)
            return fail(s, BQ_EPROTO, "Protocol error, got \"%c\" as reply type byte", ch);
        return fail(s, BQ_EPROTO, "Protocol error, got \"\\x%02x\" as reply type byte", ch);
    }
}

/* The line has ended (its "\r\n" is at offset `end` - 1 of the current call). */
static bq_status line_end(struct bq_resp_scanner *s, size_t end, size_t *whole)
{
    long long v = 0;
    bool ok = num_end(s, &v);
    switch (s->type) {
    case ':':
        if (!ok)
            return fail(s, BQ_EPROTO, "Bad integer value");
        break;
    case '$':
        if (!ok)
            return fail(s, BQ_EPROTO, "Bad bulk string length");
        if (v < -1)
            return fail(s, BQ_EPROTO, "Bulk string length out of range");
        if (v == -1)
            break;
        /* The data and the two bytes after it, refused before the reader buffers them. */
        if (s->max_bytes > 0 && (unsigned long long)v + 2 > s->max_bytes - s->bytes)
            return fail(s, BQ_ETOOBIG, "exceeds %zu bytes", s->max_bytes);
        s->bulk_left = (unsigned long long)v + 2;
        s->state = S_BULK;
        return BQ_OK;
    case '*':
        if (!ok)
            return fail(s, BQ_EPROTO, "Bad multi-bulk length");
        if (v < -1 || v > INT_MAX)
            return fail(s, BQ_EPROTO, "Multi-bulk length out of range");
        if (v <= 0)
            break;
        /* Refused before the reader callocs a pointer for each. */
        if (s->max_elements > 0 && (unsigned long long)v > s->max_elements - s->elements)
            return fail(s, BQ_ETOOBIG, "exceeds %zu elements", s->max_elements);
        s->elements += (size_t)v;
        s->left[s->depth++] = v;
        s->state = S_TYPE;
        return BQ_OK;
    default: /* '+' and '-': any text */
        break;
    }
    item_done(s, end, whole);
    return BQ_OK;
}

bq_status bq_resp_scan(struct bq_resp_scanner *s, const char *p, size_t len, size_t *whole)
{
    size_t whole_ = 0;
    if (whole == NULL)
        whole = &whole_;
    *whole = 0;
    if (s->error != BQ_OK)
        return s->error;
    const unsigned char *b = (const unsigned char *)p;
    size_t i = 0;
    while (i < len) {
        if (s->state == S_BULK) {
            size_t k = len - i;
            if (k > s->bulk_left)
                k = (size_t)s->bulk_left;
            s->bytes += k; /* within max_bytes: the header was checked */
            s->bulk_left -= k;
            i += k;
            if (s->bulk_left == 0)
                item_done(s, i, whole);
            continue;
        }
        unsigned char ch = b[i++];
        if (s->state == S_TYPE && s->depth == 0) {
            s->bytes = 0; /* a new reply: itself its first element */
            s->elements = 1;
        }
        if (++s->bytes > s->max_bytes && s->max_bytes > 0)
            return fail(s, BQ_ETOOBIG, "exceeds %zu bytes", s->max_bytes);
        if (s->state == S_TYPE) {
            if (type_byte(s, ch) != BQ_OK)
                return s->error;
            continue;
        }
        /* S_LINE */
        if (s->cr) {
            s->cr = false;
            if (ch == '\n') {
                if (line_end(s, i, whole) != BQ_OK)
                    return s->error;
                continue;
            }
            num_feed(s, '\r'); /* a lone '\r' is part of the line */
        }
        if (ch == '\r')
            s->cr = true;
        else
            num_feed(s, ch);
    }
    return BQ_OK;
}
