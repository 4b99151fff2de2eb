/*
 * log.c -- see log.h.
 */
#include "log.h"

#include "buf.h"
#include "clock.h"
#include "err.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define MAX_LINE 4096
#define MAX_FIELDS 32

static atomic_int cur_level = BQ_LOG_INFO;
static atomic_bool json_format = false;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;
static atomic_bool level_overridden = false;
static atomic_bool format_overridden = false;

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

bq_status bq_log_level_parse(const char *name, bq_log_level *out)
{
    for (int i = 0; i <= BQ_LOG_OFF; i++) {
        if (name != NULL && strcasecmp(name, level_names[i]) == 0) {
            *out = (bq_log_level)i;
            return BQ_OK;
        }
    }
    if (name != NULL && strcasecmp(name, "warning") == 0) {
        *out = BQ_LOG_WARN;
        return BQ_OK;
    }
    return BQ_EINVAL;
}

const char *bq_log_level_name(bq_log_level level)
{
    return (level >= BQ_LOG_DEBUG && level <= BQ_LOG_OFF) ? level_names[level] : "?";
}

static void write_line(const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void read_env(void)
{
    const char *lv = getenv("BINDUQ_LOG_LEVEL");
    const char *fmt = getenv("BINDUQ_LOG_FORMAT");
    bq_log_level parsed;
    if (lv != NULL && *lv != '\0' && !atomic_load(&level_overridden)) {
        if (bq_log_level_parse(lv, &parsed) == BQ_OK)
            atomic_store(&cur_level, (int)parsed);
        else
            write_line("binduq: ignoring BINDUQ_LOG_LEVEL (expected debug, info, warn, error "
                       "or off)\n", 78);
    }
    if (fmt != NULL && *fmt != '\0' && !atomic_load(&format_overridden)) {
        if (strcasecmp(fmt, "json") == 0)
            atomic_store(&json_format, true);
        else if (strcasecmp(fmt, "text") != 0)
            write_line("binduq: ignoring BINDUQ_LOG_FORMAT (expected text or json)\n", 59);
    }
}

bq_status bq_log_set_level(const char *level)
{
    bq_log_level parsed;
    pthread_once(&env_once, read_env);
    if (bq_log_level_parse(level, &parsed) != BQ_OK)
        return BQ_EINVAL;
    atomic_store(&level_overridden, true);
    atomic_store(&cur_level, (int)parsed);
    return BQ_OK;
}

bq_status bq_log_set_format(const char *format)
{
    pthread_once(&env_once, read_env);
    if (format == NULL || (strcasecmp(format, "json") != 0 && strcasecmp(format, "text") != 0))
        return BQ_EINVAL;
    atomic_store(&format_overridden, true);
    atomic_store(&json_format, strcasecmp(format, "json") == 0);
    return BQ_OK;
}

bool bq_log_enabled(bq_log_level level)
{
    pthread_once(&env_once, read_env);
    return level != BQ_LOG_OFF && (int)level >= atomic_load_explicit(&cur_level,
                                                                      memory_order_relaxed);
}

/* Appends v, replacing bytes of invalid UTF-8 with '?', so a log line is always valid text. */
static void put_json_value(bq_buf *b, const char *v)
{
    size_t len = strlen(v), bad;
    if (bq_utf8_valid(v, len, &bad)) {
        bq_buf_json_str(b, v, len);
        return;
    }
    bq_buf tmp = BQ_BUF_INIT;
    while (len > 0) {
        if (bq_utf8_valid(v, len, &bad)) {
            bq_buf_append(&tmp, v, len);
            break;
        }
        bq_buf_append(&tmp, v, bad);
        bq_buf_putc(&tmp, '?');
        v += bad + 1;
        len -= bad + 1;
    }
    const char *s = bq_buf_cstr(&tmp);
    if (s != NULL)
        bq_buf_json_str(b, s, tmp.len);
    bq_buf_free(&tmp);
}

/* logfmt: bare when the value is a plain token, otherwise quoted with escapes. */
static void put_text_value(bq_buf *b, const char *v)
{
    bool plain = *v != '\0';
    for (const char *p = v; *p && plain; p++)
        plain = (unsigned char)*p > ' ' && *p != '"' && *p != '=' && *p != '\\';
    if (plain) {
        bq_buf_puts(b, v);
        return;
    }
    bq_buf_putc(b, '"');
    for (const char *p = v; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            bq_buf_putc(b, '\\');
            bq_buf_putc(b, (char)c);
        } else if (c == '\n') {
            bq_buf_puts(b, "\\n");
        } else if (c < ' ') {
            bq_buf_putc(b, ' ');
        } else {
            bq_buf_putc(b, (char)c);
        }
    }
    bq_buf_putc(b, '"');
}

void bq_log_kv(bq_log_level level, const char *event, size_t n, const char *const *keys,
               const char *const *vals)
{
    if (!bq_log_enabled(level))
        return;
    char ts[40];
    bq_iso8601(bq_now_wall(), ts, sizeof ts);
    bool json = atomic_load_explicit(&json_format, memory_order_relaxed);
    char stackbuf[MAX_LINE + 8];
    bq_buf b = BQ_BUF_INIT;
    if (json) {
        bq_buf_printf(&b, "{\"ts\":\"%s\",\"level\":\"%s\",\"event\":", ts,
                      bq_log_level_name(level));
        put_json_value(&b, event);
    } else {
        bq_buf_printf(&b, "%s %s %s", ts, bq_log_level_name(level), event);
    }
    for (size_t i = 0; i < n; i++) {
        if (keys[i] == NULL || vals[i] == NULL)
            continue;
        bool number = keys[i][0] == '#';
        const char *key = keys[i] + (number ? 1 : 0);
        if (json) {
            bq_buf_putc(&b, ',');
            bq_buf_json_str(&b, key, strlen(key));
            bq_buf_putc(&b, ':');
            if (number)
                bq_buf_puts(&b, vals[i]);
            else
                put_json_value(&b, vals[i]);
        } else {
            bq_buf_printf(&b, " %s=", key);
            put_text_value(&b, vals[i]);
        }
    }
    bq_buf_puts(&b, json ? "}\n" : "\n");
    const char *line = bq_buf_cstr(&b);
    if (line == NULL) {
        write_line("binduq: out of memory while logging\n", 36);
    } else if (b.len > MAX_LINE) {
        /* Cut long lines; JSON consumers get a valid object with a marker instead. */
        if (json) {
            int k = snprintf(stackbuf, sizeof stackbuf,
                             "{\"ts\":\"%s\",\"level\":\"%s\",\"event\":\"log_truncated\"}\n", ts,
                             bq_log_level_name(level));
            write_line(stackbuf, (size_t)k);
        } else {
            memcpy(stackbuf, line, MAX_LINE - 4);
            memcpy(stackbuf + MAX_LINE - 4, "...\n", 4);
            write_line(stackbuf, MAX_LINE);
        }
    } else {
        write_line(line, b.len);
    }
    bq_buf_free(&b);
}

void bq_log(bq_log_level level, const char *event, ...)
{
    if (!bq_log_enabled(level))
        return;
    const char *keys[MAX_FIELDS], *vals[MAX_FIELDS];
    size_t n = 0;
    va_list ap;
    va_start(ap, event);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (k == NULL)
            break;
        const char *v = va_arg(ap, const char *);
        if (n < MAX_FIELDS) {
            keys[n] = k;
            vals[n] = v;
            n++;
        }
    }
    va_end(ap);
    bq_log_kv(level, event, n, keys, vals);
}
