/*
 * rand.c -- see rand.h.
 */
#include "rand.h"

#include "clock.h"

#include <pthread.h>
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

/* Kernel random bytes for identifiers, fetched 512 at a time: a producer makes an id per
 * message, and a getrandom call each was most of its cost. Per thread; a forked child drops
 * what it inherited, so parent and child never hand out the same bytes. */
static _Thread_local struct {
    unsigned char b[512];
    size_t used;
} pool = {{0}, sizeof pool.b};

static void drop_pool(void)
{
    pool.used = sizeof pool.b;
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, drop_pool);
}

static void pooled_bytes(unsigned char *out, size_t n)
{
    pthread_once(&atfork_once, register_atfork);
    if (sizeof pool.b - pool.used < n) {
        bq_random_bytes(pool.b, sizeof pool.b);
        pool.used = 0;
    }
    memcpy(out, pool.b + pool.used, n);
    pool.used += n; /* each byte is handed out once */
}

void bq_uuid4(char out[37])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    pooled_bytes(b, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);
    char *p = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = hex[b[i] >> 4];
        *p++ = hex[b[i] & 15];
    }
    *p = '\0';
}

double bq_random_unit(void)
{
    return (double)(xs_next() >> 11) * (1.0 / 9007199254740992.0);
}
