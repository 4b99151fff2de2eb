/*
 * escape.c -- see escape.h.
 */
#include "escape.h"

#include <string.h>

size_t bq_utf8_next(const char *str, size_t len, uint32_t *cp)
{
    const unsigned char *s = (const unsigned char *)str;
    if (len == 0)
        return 0;
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t n;
    uint32_t v, min;
    if ((c & 0xE0) == 0xC0) {
        n = 2, v = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        n = 3, v = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        n = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n > len)
        return 0;
    for (size_t k = 1; k < n; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[k] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return n;
}

/* Whether byte c at s[0..len) starts something `mode` copies as it is; *n is its length. */
static bool copied(const char *s, size_t len, bq_escape_mode mode, size_t *n)
{
    unsigned char c = (unsigned char)s[0];
    *n = 1;
    if (c >= 0x20 && c < 0x7f)
        return !((mode == BQ_ESC_QUOTED || mode == BQ_ESC_JSON) && (c == '"' || c == '\\'));
    if (c < 0x80)
        return false;
    uint32_t cp = 0;
    size_t k = bq_utf8_next(s, len, &cp);
    if (k == 0)
        return false; /* a stray byte: escaped alone */
    *n = k;
    return cp >= 0xA0; /* U+0080..U+009F are the C1 controls */
}

void bq_escape(bq_buf *b, const char *s, size_t len, bq_escape_mode mode)
{
    static const char hex[] = "0123456789abcdef";
    bool json = mode == BQ_ESC_JSON || mode == BQ_ESC_JSON_TEXT;
    size_t i = 0, run = 0, n;
    while (i < len) {
        if (copied(s + i, len - i, mode, &n)) {
            i += n;
            continue;
        }
        bq_buf_append(b, s + run, i - run);
        unsigned char c = (unsigned char)s[i];
        char e[8];
        size_t el = 2;
        e[0] = '\\';
        if (c >= 0x80 && n == 1) { /* not UTF-8 */
            if (json) {
                memcpy(e + 1, "ufffd", 5), el = 6;
            } else {
                e[1] = 'x', e[2] = hex[c >> 4], e[3] = hex[c & 15], el = 4;
            }
        } else if (c >= 0x80) { /* C1: C2 80..C2 9F */
            unsigned char v = (unsigned char)s[i + 1] & 0x3F;
            v |= 0x80;
            if (json) {
                memcpy(e + 1, "u00", 3), e[4] = hex[v >> 4], e[5] = hex[v & 15], el = 6;
            } else {
                memcpy(e + 1, "u{", 2), e[3] = hex[v >> 4], e[4] = hex[v & 15], e[5] = '}', el = 6;
            }
        } else if (c == '"' || c == '\\') {
            e[1] = (char)c;
        } else if (c == '\n') {
            e[1] = 'n';
        } else if (c == '\r') {
            e[1] = 'r';
        } else if (c == '\t') {
            e[1] = 't';
        } else if (json) {
            memcpy(e + 1, "u00", 3), e[4] = hex[c >> 4], e[5] = hex[c & 15], el = 6;
        } else {
            e[1] = 'x', e[2] = hex[c >> 4], e[3] = hex[c & 15], el = 4;
        }
        bq_buf_append(b, e, el);
        i += n;
        run = i;
    }
    bq_buf_append(b, s + run, i - run);
}

bool bq_escape_clean(const char *s, size_t len)
{
    size_t i = 0, n;
    while (i < len) {
        if (!copied(s + i, len - i, BQ_ESC_DISPLAY, &n))
            return false;
        i += n;
    }
    return true;
}
