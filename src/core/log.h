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
 * JSON (the '#' is not printed). Callers never pass a password: URLs are redacted first.
 */
#ifndef BINDUQ_LOG_H
#define BINDUQ_LOG_H

#include "../binduq.h"

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

#endif
