/*
 * id.c -- see id.h.
 */
#include "id.h"

#include "buf.h"

#include <stdio.h>

bool bq_id_check(const char *str, size_t len, char *why)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t bad;
    if (len == 0) {
        if (why)
            snprintf(why, BQ_ID_WHY_SIZE, "must not be empty");
        return false;
    }
    if (len > BQ_MAX_ID_LEN) {
        if (why)
            snprintf(why, BQ_ID_WHY_SIZE, "is longer than %d bytes", BQ_MAX_ID_LEN);
        return false;
    }
    if (!bq_utf8_valid(str, len, &bad)) {
        if (why)
            snprintf(why, BQ_ID_WHY_SIZE, "is not valid UTF-8 (byte %zu)", bad);
        return false;
    }
    /* Valid UTF-8 from here: a C1 control is the two bytes C2 80..C2 9F. */
    for (size_t i = 0; i < len; i++) {
        unsigned cp;
        if (s[i] < 0x20 || s[i] == 0x7F)
            cp = s[i];
        else if (s[i] == 0xC2 && s[i + 1] < 0xA0)
            cp = s[i + 1];
        else
            continue;
        if (why)
            snprintf(why, BQ_ID_WHY_SIZE, "contains a control character (U+%04X at byte %zu)",
                     cp, i);
        return false;
    }
    return true;
}
