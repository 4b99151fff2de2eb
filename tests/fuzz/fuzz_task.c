/*
 * fuzz_task.c -- the task decoders: tests/fuzz/task.lua holds the properties (the simdjson
 * path gives exactly the general path's task; decode never raises and always says why).
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_lua_call(fuzz_lua(FUZZ_ROOT "/tests/fuzz/task.lua"), data, size);
    return 0;
}
