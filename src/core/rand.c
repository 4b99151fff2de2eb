/*
 * rand.c -- see rand.h.
 */
#include "rand.h"

#include "clock.h"

#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

static _Thread_local uint64_t xs_state;

static uint64_t xs_next(void)
{
    if (xs_state == 0) {
        if (getrandom(&xs_state, sizeof xs_state, 0) != (ssize_t)sizeof xs_state)
            xs_state = (uint64_t)(bq_now_mono() * 1e9) ^ ((uint64_t)getpid() << 32);
        if (xs_state == 0)
            xs_state = 0x9E3779B97F4A7C15ull;
    }
    uint64_t x = xs_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    xs_state = x;
    return x;
}

void bq_random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t k = getrandom(p, n, 0);
        if (k <= 0)
            break;
        p += k;
        n -= (size_t)k;
    }
    for (; n > 0; n--)
        *p++ = (unsigned char)xs_next();
}

void bq_uuid4(char out[37])
{
    unsigned char b[16];
    bq_random_bytes(b, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
}

double bq_random_unit(void)
{
    return (double)(xs_next() >> 11) * (1.0 / 9007199254740992.0);
}
