/*
 * log.c -- see log.h.
 */
#include "log.h"

#include "buf.h"
#include "clock.h"
#include "err.h"
#include "escape.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

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

/* Says that the environment variable `name` holds `value`, which is not one of `accepted`,
 * and that `fallback` is used instead: one line on stderr. The value is the user's but is
 * escaped all the same (a pasted control character must not reach the terminal), and every
 * length is measured, so no stray byte (a NUL) is written. */
static void env_warning(const char *name, const char *value, const char *accepted,
                        const char *fallback)
{
    bq_buf b = BQ_BUF_INIT;
    bq_buf_puts(&b, "binduq: ");
    bq_buf_puts(&b, name);
    bq_buf_puts(&b, "=\"");
    bq_escape(&b, value, strlen(value), BQ_ESC_QUOTED);
    bq_buf_puts(&b, "\" is not one of ");
    bq_buf_puts(&b, accepted);
    bq_buf_puts(&b, "; using ");
    bq_buf_puts(&b, fallback);
    bq_buf_putc(&b, '\n');
    if (!b.oom)
        write_line(b.p, b.len);
    bq_buf_free(&b);
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
            env_warning("BINDUQ_LOG_LEVEL", lv, "debug, info, warn, error or off", "info");
    }
    if (fmt != NULL && *fmt != '\0' && !atomic_load(&format_overridden)) {
        if (strcasecmp(fmt, "json") == 0)
            atomic_store(&json_format, true);
        else if (strcasecmp(fmt, "text") != 0)
            env_warning("BINDUQ_LOG_FORMAT", fmt, "text or json", "text");
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

/* ---- Formatting ----------------------------------------------------------------------------
 *
 * Every event name, key and value may come from outside (a handler's bq.log, a task id, an
 * error message), so each goes through bq_escape (escape.h): a line cannot be forged, a
 * terminal tailing the log takes no command from it, and a JSON line always parses.
 */

/* A logfmt token written bare: non-empty, printable, no space, '"', '=' or '\', and nothing
 * bq_escape would change. */
static bool plain_token(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == ' ' || c == '"' || c == '=' || c == '\\')
            return false;
    }
    return bq_escape_clean(s, len);
}

/* Text: bare when plain, otherwise quoted with every escape of BQ_ESC_QUOTED (lossless). */
static void put_text(bq_buf *b, const char *s)
{
    size_t len = strlen(s);
    if (plain_token(s, len)) {
        bq_buf_append(b, s, len);
        return;
    }
    bq_buf_putc(b, '"');
    bq_escape(b, s, len, BQ_ESC_QUOTED);
    bq_buf_putc(b, '"');
}

static void put_json(bq_buf *b, const char *s)
{
    bq_buf_putc(b, '"');
    bq_escape(b, s, strlen(s), BQ_ESC_JSON);
    bq_buf_putc(b, '"');
}

/* Whether v is a number by JSON's grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool json_number(const char *v)
{
    const char *p = v;
    if (*p == '-')
        p++;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (*p >= '0' && *p <= '9')
            p++;
    } else {
        return false;
    }
    if (*p == '.') {
        if (*++p < '0' || *p > '9')
            return false;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        if (*++p == '+' || *p == '-')
            p++;
        if (*p < '0' || *p > '9')
            return false;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    return *p == '\0';
}

/* "NaN", "Infinity" or "-Infinity" when v spells a number that is not finite (printf's
 * "-nan", "inf", Lua's "-nan", "inf"), else NULL. */
static const char *non_finite(const char *v)
{
    const char *p = v + (*v == '-' || *v == '+');
    if (strncasecmp(p, "nan", 3) == 0 && (p[3] == '\0' || p[3] == '('))
        return "NaN";
    if (strcasecmp(p, "inf") == 0 || strcasecmp(p, "infinity") == 0)
        return *v == '-' ? "-Infinity" : "Infinity";
    return NULL;
}

void bq_log_format(bq_buf *b, bool json, const char *ts, bq_log_level level, const char *event,
                   size_t n, const char *const *keys, const char *const *vals)
{
    size_t start = b->len;
    if (json) {
        bq_buf_printf(b, "{\"ts\":\"%s\",\"level\":\"%s\",\"event\":", ts,
                      bq_log_level_name(level));
        put_json(b, event);
    } else {
        bq_buf_printf(b, "%s %s ", ts, bq_log_level_name(level));
        put_text(b, event);
    }
    for (size_t i = 0; i < n; i++) {
        if (keys[i] == NULL || vals[i] == NULL)
            continue;
        /* A key marked '#' holds a number: bare in JSON when it is one by JSON's grammar,
         * a string otherwise ("NaN", "Infinity", "-Infinity" for the non-finite ones). */
        bool number = keys[i][0] == '#';
        const char *key = keys[i] + (number ? 1 : 0), *v = vals[i];
        bool bare = number && json_number(v);
        const char *nf = number && !bare ? non_finite(v) : NULL;
        if (json) {
            bq_buf_putc(b, ',');
            put_json(b, key);
            bq_buf_putc(b, ':');
            if (bare)
                bq_buf_puts(b, v);
            else
                put_json(b, nf != NULL ? nf : v);
        } else {
            bq_buf_putc(b, ' ');
            put_text(b, key);
            bq_buf_putc(b, '=');
            put_text(b, nf != NULL ? nf : v);
        }
    }
    bq_buf_puts(b, json ? "}\n" : "\n");
    if (b->oom || b->len - start <= BQ_LOG_MAX_LINE)
        return;
    /* Cut long lines; JSON consumers get a valid object with a marker instead. */
    if (json) {
        b->len = start;
        bq_buf_printf(b, "{\"ts\":\"%s\",\"level\":\"%s\",\"event\":\"log_truncated\"}\n", ts,
                      bq_log_level_name(level));
    } else {
        /* The line is escaped, so it is ASCII plus whole UTF-8 sequences: cut between two. */
        size_t cut = start + BQ_LOG_MAX_LINE - 4;
        while (cut > start && ((unsigned char)b->p[cut] & 0xC0) == 0x80)
            cut--;
        b->len = cut;
        bq_buf_puts(b, "...\n");
    }
}

void bq_log_kv(bq_log_level level, const char *event, size_t n, const char *const *keys,
               const char *const *vals)
{
    if (!bq_log_enabled(level))
        return;
    char ts[40];
    bq_iso8601(bq_now_wall(), ts, sizeof ts);
    bq_buf b = BQ_BUF_INIT;
    bq_log_format(&b, atomic_load_explicit(&json_format, memory_order_relaxed), ts, level, event,
                  n, keys, vals);
    const char *line = bq_buf_cstr(&b);
    if (line == NULL)
        write_line("binduq: out of memory while logging\n", 36);
    else
        write_line(line, b.len);
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
