/*
 * fuzz_dlq.c -- the dead-letter entry (src/broker/broker.c, read back by binduq.scheduler's
 * parse_dead_letter): for any reason, task id and message bytes, the entry's first line is
 * one valid JSON object whose reason and task id read back as given (or as the invalid-UTF-8
 * stand-in), and the message reads back byte for byte -- or, for a message too large to
 * keep, its first BQ_DLQ_KEEP bytes with its length. tests/fuzz/dlq.lua holds the checks.
 *
 * Input: byte 0 the reason's length, byte 1 the task id's length, byte 2 bit 0 "too large";
 * then the reason, the task id, and the message.
 */
#include "fuzz.h"

#include "../../src/broker/broker.h"
#include "../../src/core/alloc.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    size_t rlen = data[0], tlen = data[1];
    bool large = data[2] & 1;
    data += 3;
    size -= 3;
    if (rlen + tlen > size)
        return 0;
    char *reason = bq_strndup((const char *)data, rlen);
    char *tid = bq_strndup((const char *)data + rlen, tlen);
    const char *raw = (const char *)data + rlen + tlen;
    size_t len = size - rlen - tlen;
    struct bq_dlq_info info = {NULL, reason, NULL, tlen ? tid : NULL, "run", "q", "w", 1,
                               large ? len + 1000 : 0};
    struct bq_msg e;
    FUZZ_ASSERT(bq_dlq_entry(&info, raw, len, &e) == BQ_OK);

    lua_State *L = fuzz_lua(FUZZ_ROOT "/tests/fuzz/dlq.lua");
    lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.property");
    lua_pushlstring(L, e.data, e.len);
    lua_pushlstring(L, reason, rlen);
    lua_pushlstring(L, tid, tlen);
    lua_pushlstring(L, raw, len);
    lua_pushboolean(L, large);
    if (lua_pcall(L, 5, 0, 0) != LUA_OK)
        FUZZ_FAIL("%s", lua_tostring(L, -1));
    static unsigned calls;
    if (++calls % 256 == 0)
        lua_gc(L, LUA_GCCOLLECT);
    bq_free(e.data);
    bq_free(reason);
    bq_free(tid);
    return 0;
}
