/*
 * bulkcap.h -- keeps oversized bulk strings out of a worker's memory.
 *
 * Anyone who can push to a queue can push a 100 MB message, and a worker that reads it whole
 * holds it several times over (the reader's buffer, the reply object, the copies after it):
 * 520 MB peak for one 100 MB message, long after it was dead-lettered. This filter sits
 * between the socket and hiredis's reader. It follows the RESP2 framing byte by byte and
 * passes everything through unchanged, except a bulk string longer than `max`: that becomes
 * the error element
 *
 *     -BQOVERSIZE <length> <hex of its first BQ_BULKCAP_KEEP bytes>\r\n
 *
 * in the same place of the reply, and the rest of its bytes are skipped as they arrive. The
 * reply keeps its shape (an array element stays an element), so the caller sees which message
 * was too large, how large, and how it began, and its memory never grows with the message.
 * Redis never sends an error beginning "BQOVERSIZE " itself.
 *
 * A length line is read exactly as Debian's hiredis 0.14.1 reads it (a line ends at "\r\n";
 * the length is string2ll's: an optional '-', no leading zero, within a long long; -1 is the
 * null bulk; anything else is a protocol error) and passed on rewritten (a refused length as
 * "$x", which the reader refuses too), so the reader never sees a different structure than
 * the one the filter followed.
 *
 * Pure: no I/O, no allocation. Output goes to a sink in spans, pass-through spans straight
 * from the input (no copy of ordinary replies).
 */
#ifndef BINDUQ_BULKCAP_H
#define BINDUQ_BULKCAP_H

#include <stdbool.h>
#include <stddef.h>

#define BQ_BULKCAP_KEEP 256 /* bytes of an oversized bulk kept in its marker */

struct bq_bulkcap {
    size_t max;                      /* the longest bulk string passed whole */
    int state;                       /* internal */
    bool cr;                         /* the last byte of a line being read was '\r' */
    bool sign, stopped, junk, digits; /* the "$<len>" line being read, as hiredis reads it */
    unsigned long long value;
    unsigned long long left;         /* payload bytes (with its CRLF) to pass or skip */
    unsigned long long size;         /* the oversized bulk's length */
    unsigned char keep[BQ_BULKCAP_KEEP];
    size_t kept;
    unsigned long long replaced;     /* oversized bulks replaced so far */
};

typedef int (*bq_bulkcap_sink)(void *ud, const char *p, size_t n);

/* Starts a filter replacing bulk strings longer than `max` bytes. */
void bq_bulkcap_init(struct bq_bulkcap *f, size_t max);

/* Filters n bytes of a RESP stream into sink. Returns 0, or the sink's first non-zero
 * result (the filter's position is then unspecified: close the connection). */
int bq_bulkcap_feed(struct bq_bulkcap *f, const char *in, size_t n, bq_bulkcap_sink sink,
                    void *ud);

/* If the error string `s` (length len) is a marker, stores the bulk's length, its first
 * bytes (up to BQ_BULKCAP_KEEP, into prefix) and their count, and returns true. */
bool bq_bulkcap_marker(const char *s, size_t len, unsigned long long *size,
                       unsigned char *prefix, size_t *plen);

#endif
