/*
 * fuzz_log.c -- log formatting (core/log.c) and the escape rule (core/escape.c) on arbitrary
 * bytes. The input is a flags byte, then an event name, a key and a value separated by NUL
 * (C strings end there). Checked here, for the text and the JSON line: exactly one line (its
 * only '\n' at the end, no '\r'), no other byte below 0x20, no DEL, no C1 control, valid
 * UTF-8, at most BQ_LOG_MAX_LINE bytes. Checked in tests/fuzz/log.lua: the JSON line parses
 * (strict lua-cjson) and gives back the same strings (bytes of invalid UTF-8 as U+FFFD); the
 * text line reads back to the exact bytes; core.escape's modes keep the same promises.
 */
#include "fuzz.h"

#include "core/buf.h"
#include "core/log.h"

#include <stdbool.h>
#include <string.h>

static void check_line(const char *s, size_t len)
{
    FUZZ_ASSERT(len > 0 && s[len - 1] == '\n');
    FUZZ_ASSERT(len <= BQ_LOG_MAX_LINE);
    FUZZ_ASSERT(bq_utf8_valid(s, len, NULL));
    for (size_t i = 0; i + 1 < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            FUZZ_FAIL("byte 0x%02x at %zu of: %.*s", c, i, (int)len, s);
        if (c == 0xc2 && (unsigned char)s[i + 1] < 0xa0)
            FUZZ_FAIL("C1 control at %zu of: %.*s", i, (int)len, s);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > 8192)
        return 0;
    bool number = data[0] & 1;
    /* event \0 key \0 value: a copy with a NUL after the end, so each part is a C string. */
    char *text = malloc(size + 1);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    char *parts[3] = {text, (char *)"", (char *)""};
    char *p = text;
    for (int k = 1; k < 3; k++) {
        p = memchr(p, '\0', (size_t)(text + size - 1 - p));
        if (p == NULL)
            break;
        parts[k] = ++p;
    }
    char key[8200];
    snprintf(key, sizeof key, "%s%s", number ? "#" : "", parts[1]);
    const char *keys[] = {key}, *vals[] = {parts[2]};

    bq_buf lines[2] = {BQ_BUF_INIT, BQ_BUF_INIT};
    for (int json = 0; json < 2; json++) {
        bq_log_format(&lines[json], json, "2026-01-01T00:00:00.000Z", BQ_LOG_WARN, parts[0], 1,
                      keys, vals);
        FUZZ_ASSERT(!lines[json].oom);
        check_line(lines[json].p, lines[json].len);
    }

    lua_State *L = fuzz_lua(FUZZ_ROOT "/tests/fuzz/log.lua");
    lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.property");
    lua_pushstring(L, parts[0]);
    lua_pushstring(L, parts[1]);
    lua_pushstring(L, parts[2]);
    lua_pushboolean(L, number);
    lua_pushlstring(L, lines[0].p, lines[0].len);
    lua_pushlstring(L, lines[1].p, lines[1].len);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 7, 0, 0) != LUA_OK)
        FUZZ_FAIL("%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(not a string)");
    static unsigned calls;
    if (++calls % 256 == 0)
        lua_gc(L, LUA_GCCOLLECT);
    bq_buf_free(&lines[0]);
    bq_buf_free(&lines[1]);
    free(text);
    return 0;
}
