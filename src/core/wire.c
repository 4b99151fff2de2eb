/*
 * wire.c -- see wire.h.
 */
#include "wire.h"

#include "clock.h"

#include <string.h>

const char *const bq_wire_types[BQ_WIRE_NTYPES] = {"run", "pause", "resume", "cancel"};

bool bq_wire_type_valid(const char *s, size_t len)
{
    for (int i = 0; s != NULL && i < BQ_WIRE_NTYPES; i++) {
        if (strlen(bq_wire_types[i]) == len && memcmp(s, bq_wire_types[i], len) == 0)
            return true;
    }
    return false;
}

bool bq_wire_timeout_valid(double seconds)
{
    return seconds > 0 && bq_duration_problem(seconds) == NULL;
}
