/*
 * bulkcap.c -- see bulkcap.h.
 */
#include "bulkcap.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

enum { AT_TYPE, IN_LINE, IN_HEAD, IN_PAYLOAD, IN_SKIP };

void bq_bulkcap_init(struct bq_bulkcap *f, size_t max)
{
    memset(f, 0, sizeof *f);
    f->max = max;
    f->state = AT_TYPE;
}

/* One byte of a length line's content (what lies between '$' and "\r\n"), checked as
 * hiredis checks it (string2ll): an optional '-', then "0" or digits without a leading zero,
 * within a long long. */
static void head_byte(struct bq_bulkcap *f, char ch)
{
    size_t k = f->size++; /* bytes of the content so far */
    if (f->junk)
        return;
    if (k == 0 && ch == '-') {
        f->sign = true;
    } else if (ch >= '0' && ch <= '9' && !f->stopped) {
        unsigned d = (unsigned)(ch - '0');
        bool first = k == (f->sign ? 1u : 0u);
        if ((d == 0 && first && f->sign) || f->value > ((unsigned long long)LLONG_MAX - d) / 10)
            f->junk = true; /* "-0", or past a long long */
        f->value = f->value * 10 + d;
        f->stopped = d == 0 && first; /* a leading zero: nothing may follow */
        f->digits = true;
    } else {
        f->junk = true;
    }
}

/* The length of the line read, -1 for the null bulk, or -2 if hiredis refuses it. */
static long long head_length(const struct bq_bulkcap *f)
{
    if (f->junk || !f->digits)
        return -2;
    if (f->sign)
        return f->value == 1 ? -1 : -2;
    return (long long)f->value;
}

/* The length line hiredis reads, "$<len>\r\n", or "$x\r\n" (one it refuses) for len -2; len
 * is -2, -1 or more (head_length). Without printf: it is written once a fetched message. */
static int length_line(char h[32], long long len)
{
    if (len == -2) {
        memcpy(h, "$x\r\n", 4);
        return 4;
    }
    if (len == -1) {
        memcpy(h, "$-1\r\n", 5);
        return 5;
    }
    char d[24];
    int k = 0, n = 0;
    unsigned long long v = (unsigned long long)len;
    do {
        d[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    h[n++] = '$';
    while (k > 0)
        h[n++] = d[--k];
    h[n++] = '\r';
    h[n++] = '\n';
    return n;
}

static int emit_marker(struct bq_bulkcap *f, bq_bulkcap_sink sink, void *ud)
{
    static const char hex[] = "0123456789abcdef";
    char m[64 + 2 * BQ_BULKCAP_KEEP];
    int n = snprintf(m, sizeof m, "-BQOVERSIZE %llu ", f->size);
    for (size_t i = 0; i < f->kept; i++) {
        m[n++] = hex[f->keep[i] >> 4];
        m[n++] = hex[f->keep[i] & 15];
    }
    m[n++] = '\r';
    m[n++] = '\n';
    f->replaced++;
    return sink(ud, m, (size_t)n);
}

int bq_bulkcap_feed(struct bq_bulkcap *f, const char *in, size_t n, bq_bulkcap_sink sink,
                    void *ud)
{
    size_t i = 0, span = 0; /* in[span..i) passes through unchanged */
    int rc = 0;
#define FLUSH()                                                                                \
    do {                                                                                       \
        if (i > span && (rc = sink(ud, in + span, i - span)) != 0)                             \
            return rc;                                                                         \
        span = i;                                                                              \
    } while (0)
    while (i < n) {
        switch (f->state) {
        case AT_TYPE:
            f->cr = false;
            if (in[i] == '$') {
                FLUSH();
                i++;
                span = i; /* the length line is written again, not passed */
                f->state = IN_HEAD;
                f->sign = f->stopped = f->junk = f->digits = false;
                f->value = 0;
                f->size = 0; /* bytes of the line seen so far */
            } else {
                f->state = IN_LINE;
                i++;
            }
            break;
        case IN_LINE:
            while (i < n && f->state == IN_LINE) {
                char ch = in[i++];
                if (ch == '\n' && f->cr)
                    f->state = AT_TYPE;
                f->cr = ch == '\r';
            }
            break;
        case IN_HEAD: {
            char ch = in[i++];
            span = i;
            if (ch == '\n' && f->cr) {
                f->cr = false;
            } else {
                if (f->cr)
                    head_byte(f, '\r'); /* a '\r' not ending the line is content */
                f->cr = ch == '\r';
                if (!f->cr)
                    head_byte(f, ch);
                break;
            }
            long long len = head_length(f);
            if (len < 0 || (unsigned long long)len <= f->max) {
                char h[32];
                int hn = length_line(h, len); /* one hiredis refuses stays one it refuses */
                if ((rc = sink(ud, h, (size_t)hn)) != 0)
                    return rc;
                f->left = len >= 0 ? (unsigned long long)len + 2 : 0;
                f->state = f->left > 0 ? IN_PAYLOAD : AT_TYPE;
            } else {
                f->size = (unsigned long long)len;
                f->left = f->size + 2;
                f->kept = 0;
                f->state = IN_SKIP;
            }
            break;
        }
        case IN_PAYLOAD: {
            size_t take = n - i < f->left ? n - i : (size_t)f->left;
            i += take;
            f->left -= take;
            if (f->left == 0)
                f->state = AT_TYPE;
            break;
        }
        case IN_SKIP: {
            size_t take = n - i < f->left ? n - i : (size_t)f->left;
            size_t want = BQ_BULKCAP_KEEP - f->kept;
            if (want > f->size - f->kept)
                want = (size_t)(f->size - f->kept);
            if (want > take)
                want = take;
            bool was_short = f->kept < BQ_BULKCAP_KEEP && f->kept < f->size;
            memcpy(f->keep + f->kept, in + i, want);
            f->kept += want;
            i += take;
            span = i;
            f->left -= take;
            bool full = f->kept == BQ_BULKCAP_KEEP || f->kept == f->size;
            if (was_short && full && (rc = emit_marker(f, sink, ud)) != 0)
                return rc;
            if (f->left == 0)
                f->state = AT_TYPE;
            break;
        }
        }
    }
    FLUSH();
    return 0;
#undef FLUSH
}

static int unhex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

bool bq_bulkcap_marker(const char *s, size_t len, unsigned long long *size,
                       unsigned char *prefix, size_t *plen)
{
    static const char tag[] = "BQOVERSIZE ";
    if (s == NULL || len < sizeof tag || memcmp(s, tag, sizeof tag - 1) != 0)
        return false;
    size_t i = sizeof tag - 1;
    unsigned long long v = 0;
    size_t digits = 0;
    for (; i < len && s[i] >= '0' && s[i] <= '9' && digits < 19; i++, digits++)
        v = v * 10 + (unsigned long long)(s[i] - '0');
    if (digits == 0 || i >= len || s[i] != ' ')
        return false;
    i++;
    size_t k = 0;
    for (; i + 1 < len + 1 && i < len && k < BQ_BULKCAP_KEEP; i += 2) {
        int hi = unhex(s[i]), lo = i + 1 < len ? unhex(s[i + 1]) : -1;
        if (hi < 0 || lo < 0)
            return false;
        prefix[k++] = (unsigned char)(hi << 4 | lo);
    }
    if (i != len)
        return false;
    *size = v;
    *plen = k;
    return true;
}
