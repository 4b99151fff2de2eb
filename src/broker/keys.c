/*
 * keys.c -- see keys.h.
 */
#include "keys.h"

#include "../core/err.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

void bq_key_hashed_part(const char *key, const char **start, size_t *len)
{
    const char *open = strchr(key, '{');
    if (open != NULL) {
        const char *close = strchr(open + 1, '}');
        if (close != NULL && close > open + 1) {
            *start = open + 1;
            *len = (size_t)(close - open - 1);
            return;
        }
    }
    *start = key;
    *len = strlen(key);
}

bool bq_key_has_tag(const char *key)
{
    const char *s;
    size_t n;
    bq_key_hashed_part(key, &s, &n);
    (void)n;
    return s != key;
}

const char *bq_queue_name_problem(const char *queue)
{
    if (*queue == '\0')
        return "is empty";
    if (strlen(queue) > BQ_QUEUE_NAME_MAX)
        return "is longer than 200 bytes";
    if (!bq_key_has_tag(queue) && strchr(queue, '}') != NULL)
        return "has a '}' outside a hash tag, so its keys could not share one Redis Cluster "
               "slot (give it a tag: the part between the first '{' and the next '}', not empty)";
    return NULL;
}

size_t bq_key_prefix(const char *queue, char *out, size_t size)
{
    if (bq_queue_name_problem(queue) != NULL)
        return 0;
    int n = bq_key_has_tag(queue) ? snprintf(out, size, "%s:", queue)
                                  : snprintf(out, size, "{%s}:", queue);
    return n > 0 && (size_t)n < size ? (size_t)n : 0;
}

bool bq_key_derive(const char *queue, const char *suffix, char *out, size_t size)
{
    size_t n = bq_key_prefix(queue, out, size);
    size_t s = strlen(suffix);
    if (n == 0 || n + s >= size)
        return false;
    memcpy(out + n, suffix, s + 1);
    return true;
}

bq_status bq_key_derive_err(const char *queue, const char *suffix, char *out, bq_err *err)
{
    if (bq_key_derive(queue, suffix, out, BQ_KEY_MAX))
        return BQ_OK;
    const char *why = bq_queue_name_problem(queue);
    return bq_err_set(err, BQ_EINVAL, "queue name '%.200s' %s", queue,
                      why != NULL ? why : "makes a key that is too long");
}

/* CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis Cluster specifies. */
static uint16_t crc16(const char *s, size_t n)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)((unsigned char)s[i] << 8);
        for (int k = 0; k < 8; k++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned bq_key_slot(const char *key)
{
    const char *s;
    size_t n;
    bq_key_hashed_part(key, &s, &n);
    return crc16(s, n) & 16383u;
}
