/*
 * log.h -- one line per event, to stderr, as text (logfmt) or JSON lines.
 *
 *   2026-11-28T05:11:20.123Z info completed task_id=42 queue=bindu:tasks duration_ms=0.8
 *   {"ts":"2026-11-28T05:11:20.123Z","level":"info","event":"completed","task_id":"42",...}
 *
 * The level and format start from BINDUQ_LOG_LEVEL (debug|info|warn|error|off, default info)
 * and BINDUQ_LOG_FORMAT (text|json, default text); bq_log_set_level/format (binduq.h)
 * override them. Each line is written with a single write(2), so lines from many threads and
 * processes sharing a pipe do not interleave (up to PIPE_BUF bytes; longer lines are cut at
 * 4 KiB). Values are strings; a key that starts with '#' marks a number, written unquoted in
 * JSON (the '#' is not printed) when it is a number by JSON's grammar; a number that is not
 * finite is written as the string "NaN", "Infinity" or "-Infinity", anything else under a
 * '#' key as a string. Callers never pass a password: URLs are redacted first.
 *
 * Event names, keys and values are escaped (escape.h), so each event is exactly one line
 * whatever a handler or a message puts in them. Text: a token that is not plain (empty, or
 * with a space, '"', '=', '\', a control, C1 or invalid UTF-8) is quoted, with \" \\ \n \r
 * \t \xNN \u{NN} inside; this applies to event names and keys as well as values, and reads
 * back to the exact bytes. JSON: controls, DEL and C1 as \u00NN, each byte of invalid UTF-8
 * as \ufffd. A string is cut at its first NUL (C strings).
 */
#ifndef BINDUQ_LOG_H
#define BINDUQ_LOG_H

#include "../binduq.h"

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>

typedef enum bq_log_level {
    BQ_LOG_DEBUG = 0,
    BQ_LOG_INFO,
    BQ_LOG_WARN,
    BQ_LOG_ERROR,
    BQ_LOG_OFF,
} bq_log_level;

/* Parses "debug", "info", "warn", "error", "off". */
bq_status bq_log_level_parse(const char *name, bq_log_level *out);
const char *bq_log_level_name(bq_log_level level);

bool bq_log_enabled(bq_log_level level);

/* Logs `event` with key/value string pairs, terminated by a NULL key. A NULL value is
 * skipped. */
void bq_log(bq_log_level level, const char *event, ...);

/* The same with arrays (used by the Lua binding). */
void bq_log_kv(bq_log_level level, const char *event, size_t n, const char *const *keys,
               const char *const *vals);

/* The longest line written, '\n' included: longer text lines are cut and end in "...\n",
 * longer JSON lines are replaced by a "log_truncated" event. */
#define BQ_LOG_MAX_LINE 4096

/* Appends to b the line bq_log_kv writes (with its '\n'), in JSON or text, stamped `ts`:
 * the formatter alone, for tests and the fuzz target. */
void bq_log_format(bq_buf *b, bool json, const char *ts, bq_log_level level, const char *event,
                   size_t n, const char *const *keys, const char *const *vals);

#endif
