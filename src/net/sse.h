/*
 * sse.h -- a server-sent-events reader (the WHATWG HTML "event stream" format), fed the body
 * of a text/event-stream response in whatever pieces the network delivers.
 *
 * It never touches a socket (the hiredis reader's shape): bq_sse_feed takes bytes and calls
 * back once per complete event. The format's rules, as the specification gives them:
 *   - lines end with CRLF, LF or CR; a CR at the end of one piece and an LF at the start of
 *     the next are one line end;
 *   - a UTF-8 byte-order mark at the very start of the stream is skipped;
 *   - "field: value" (one space after the colon dropped), "field" alone (value ""), and
 *     lines starting with ':' (comments: keep-alives) ignored;
 *   - `data` lines accumulate, joined by "\n"; `event` sets the type (default "message");
 *     `id` sets the last event id unless the value holds a NUL; `retry` takes digits only;
 *     any other field is ignored;
 *   - an empty line dispatches: no event when no data line was seen (the type resets);
 *   - at the end of the stream an event not ended by an empty line is dropped.
 * Bounds: one event (its data, type and id together) is at most `max_event` bytes; past it
 * the feed fails with BQ_ETOOBIG and the reader stays failed.
 */
#ifndef BINDUQ_SSE_H
#define BINDUQ_SSE_H

#include "../binduq.h"
#include "../core/buf.h"

#include <stdbool.h>
#include <stddef.h>

/* One event, valid during the callback only. id is the last event id seen on the stream
 * (it carries over to later events, as the specification says); retry is -1 unless this
 * event's lines set it. */
struct bq_sse_event {
    const char *type;
    size_t type_len;
    const char *data;
    size_t data_len;
    const char *id;
    size_t id_len;
    long long retry;
};

/* Returns false to stop: bq_sse_feed then returns BQ_EINTR at once. */
typedef bool (*bq_sse_cb)(void *ud, const struct bq_sse_event *ev);

struct bq_sse {
    bq_buf line;  /* the line being read */
    bq_buf data;  /* the event's data lines, each followed by "\n" */
    bq_buf type;
    bq_buf id;    /* the last event id */
    long long retry;
    size_t max_event;
    bool cr;       /* the last byte fed ended a line with CR */
    bool started;  /* past the first byte (the BOM check) */
    bool bom;      /* inside a BOM's bytes at the start */
    int bom_at;
    bool failed;
    bool has_data;
};

/* A reader with the given bound (0: 1 MiB). */
void bq_sse_init(struct bq_sse *p, size_t max_event);
void bq_sse_free(struct bq_sse *p);

/* Reads s[0..len), calling cb for each event completed. BQ_ETOOBIG past the bound, BQ_ENOMEM,
 * BQ_EINTR when cb returned false; err says which. */
bq_status bq_sse_feed(struct bq_sse *p, const char *s, size_t len, bq_sse_cb cb, void *ud,
                      bq_err *err);

#endif
