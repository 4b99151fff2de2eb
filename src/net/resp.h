/*
 * resp.h -- a RESP2 scanner that bounds a reply before hiredis reads it.
 *
 * hiredis 0.14's reader has no limits: it buffers a bulk string whole, however long its
 * header says it is, callocs a pointer for every element an array header announces, and makes
 * a redisReply (some 50 bytes) for every element, so 8 MB of tiny elements grew a process by
 * 148 MB. The scanner reads the same bytes just before they are fed to the reader, keeps its
 * state across reads, and counts, for the reply in progress, its bytes and its elements (every
 * redisReply the reader would make: the reply itself, and each element of each array, counted
 * when the array's header announces it). A reply over a limit is refused at the byte that
 * shows it -- an array header announcing too many elements, a bulk header announcing too many
 * bytes, a line that goes on too long -- before the reader has allocated anything for it.
 *
 * The scanner accepts exactly what hiredis 0.14.1's reader accepts, and finds a reply's end
 * where the reader does (tests/fuzz/fuzz_resp.c holds it to that): the same strict integers
 * (no sign on 0, no leading zeros, no overflow), the two bytes after a bulk string's data
 * skipped unchecked, arrays nested at most 7 deep below the reply (BQ_RESP_MAX_DEPTH open
 * arrays), and the reader's own messages for a protocol error. Pure: no I/O, no allocation.
 */
#ifndef BINDUQ_RESP_H
#define BINDUQ_RESP_H

#include "../binduq.h"

#include <stdbool.h>
#include <stddef.h>

#define BQ_RESP_MAX_DEPTH 8 /* arrays open at once (hiredis: nesting depth > 7 is an error) */

struct bq_resp_scanner {
    /* Limits for one reply; 0: none. Set before the first bq_resp_scan. */
    size_t max_bytes;    /* bytes of the reply as sent, headers and CRLFs included */
    size_t max_elements; /* the reply and every element of every array, counted recursively */

    unsigned long long replies; /* whole replies scanned */

    /* The reply in progress (private). */
    size_t bytes, elements;
    int depth;                            /* arrays open */
    long long left[BQ_RESP_MAX_DEPTH];    /* elements still to come in each */
    int state;                            /* what the next byte is */
    char type;                            /* the type byte of the line being read */
    bool cr;                              /* the line's last byte was '\r' */
    int num;                              /* where the line's integer is */
    bool negative;                        /* it began with '-' */
    unsigned long long value;             /* its digits so far */
    unsigned long long bulk_left;         /* bulk data and its 2 closing bytes still to come */

    bq_status error;                      /* BQ_OK, BQ_EPROTO or BQ_ETOOBIG; sticky */
    char msg[128];                        /* what is wrong, as hiredis would say it; or
                                           * "exceeds N bytes" / "exceeds N elements" */
};

/* A scanner with these limits (0: none), before any byte. */
void bq_resp_init(struct bq_resp_scanner *s, size_t max_bytes, size_t max_elements);

/* Scans the next `len` bytes of the stream. Returns BQ_OK when they are all fine (a reply may
 * still be incomplete), BQ_EPROTO when they break the protocol (s->msg says how) or
 * BQ_ETOOBIG when the reply in progress goes over a limit. After an error every call returns
 * it again. `*whole` (may be NULL) is set to the number of leading bytes of `p` that end the
 * last reply completed in this call, 0 if none did: on an error, those bytes can still be
 * given to the reader, and the replies in them used. */
bq_status bq_resp_scan(struct bq_resp_scanner *s, const char *p, size_t len, size_t *whole);

#endif
