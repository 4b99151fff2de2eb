/*
 * buf.c -- see buf.h.
 */
#include "buf.h"

#include "alloc.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Makes room for `extra` more bytes plus a terminating NUL. */
static bool reserve(bq_buf *b, size_t extra)
{
    if (b->oom)
        return false;
    if (extra > SIZE_MAX - b->len - 1) {
        b->oom = true;
        return false;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return true;
    size_t cap = b->cap < 64 ? 64 : b->cap;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = bq_realloc(b->p, cap);
    if (p == NULL) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void bq_buf_append(bq_buf *b, const void *data, size_t len)
{
    if (!reserve(b, len))
        return;
    if (len > 0)
        memcpy(b->p + b->len, data, len);
    b->len += len;
    b->p[b->len] = '\0';
}

void bq_buf_puts(bq_buf *b, const char *s)
{
    bq_buf_append(b, s, strlen(s));
}

void bq_buf_putc(bq_buf *b, char c)
{
    bq_buf_append(b, &c, 1);
}

void bq_buf_put_int(bq_buf *b, long long v)
{
    char tmp[24];
    size_t n = sizeof tmp;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[--n] = (char)('0' + u % 10);
        u /= 10;
    } while (u > 0);
    if (v < 0)
        tmp[--n] = '-';
    bq_buf_append(b, tmp + n, sizeof tmp - n);
}

void bq_buf_put_secs(bq_buf *b, double secs)
{
    if (!(secs > -1e15 && secs < 1e15))
        secs = 0;
    long long ms = llround(secs * 1000.0);
    unsigned long long frac = (unsigned long long)(ms < 0 ? -ms : ms) % 1000;
    long long whole = ms / 1000;
    if (ms < 0 && whole == 0)
        bq_buf_putc(b, '-');
    bq_buf_put_int(b, whole);
    char tail[4] = {'.', (char)('0' + frac / 100), (char)('0' + frac / 10 % 10), (char)('0' + frac % 10)};
    bq_buf_append(b, tail, 4);
}

void bq_buf_printf(bq_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Whether any of the eight bytes of w is below 0x20, a quote or a backslash (the bytes JSON
 * escapes). Each test is exact for "any byte": see "Determine if a word has a byte less than
 * n" in Sean Anderson's Bit Twiddling Hacks. Bytes >= 0x80 (UTF-8) never match. */
static inline bool needs_escape(uint64_t w)
{
    const uint64_t ones = UINT64_C(0x0101010101010101), highs = UINT64_C(0x8080808080808080);
    uint64_t q = w ^ (ones * '"'), bs = w ^ (ones * '\\');
    return (((w - ones * 0x20) & ~w) | ((q - ones) & ~q) | ((bs - ones) & ~bs)) & highs;
}

void bq_buf_json_str(bq_buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    /* Room for the worst case (every byte \u00XX) up front, so the loop only stores. */
    if (len > (SIZE_MAX - 2) / 6) {
        b->oom = true;
        return;
    }
    if (!reserve(b, len * 6 + 2))
        return;
    char *o = b->p + b->len;
    *o++ = '"';
    size_t i = 0;
    while (i < len) {
        /* Eight bytes at a time while none needs escaping (text is mostly plain). */
        uint64_t w;
        while (len - i >= 8 && (memcpy(&w, s + i, 8), !needs_escape(w))) {
            memcpy(o, &w, 8);
            o += 8;
            i += 8;
        }
        for (size_t end = len - i > 8 ? i + 8 : len; i < end; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c >= 0x20 && c != '"' && c != '\\') {
                *o++ = (char)c;
                continue;
            }
            *o++ = '\\';
            switch (c) {
            case '"': *o++ = '"'; break;
            case '\\': *o++ = '\\'; break;
            case '\n': *o++ = 'n'; break;
            case '\r': *o++ = 'r'; break;
            case '\t': *o++ = 't'; break;
            default:
                memcpy(o, "u00", 3);
                o[3] = hex[c >> 4];
                o[4] = hex[c & 15];
                o += 5;
            }
        }
    }
    *o++ = '"';
    *o = '\0';
    b->len = (size_t)(o - b->p);
}

const char *bq_buf_cstr(bq_buf *b)
{
    if (b->oom)
        return NULL;
    return b->p == NULL ? "" : b->p;
}

void bq_buf_free(bq_buf *b)
{
    bq_free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = false;
}

char *bq_buf_detach(bq_buf *b, size_t *len)
{
    if (b->oom || !reserve(b, 0)) {
        bq_buf_free(b);
        return NULL;
    }
    char *p = b->p;
    p[b->len] = '\0'; /* an empty buffer was never written */
    if (len != NULL)
        *len = b->len;
    b->p = NULL;
    b->len = b->cap = 0;
    return p;
}

bool bq_utf8_valid(const char *str, size_t len, size_t *bad)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c < 0x80) {
            /* ASCII runs eight bytes at a time (messages are mostly ASCII). */
            uint64_t word;
            i++;
            while (len - i >= 8) {
                memcpy(&word, s + i, 8);
                if (word & UINT64_C(0x8080808080808080))
                    break;
                i += 8;
            }
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            n = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3, cp = c & 0x07, min = 0x10000;
        } else {
            goto invalid;
        }
        if (n > len - i - 1)
            goto invalid;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                goto invalid;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            goto invalid;
        i += n + 1;
    }
    return true;
invalid:
    if (bad != NULL)
        *bad = i;
    return false;
}
