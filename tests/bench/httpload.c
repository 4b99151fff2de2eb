/*
 * httpload.c -- a small HTTP/1.1 load generator for `make bench` (the gateway's figures):
 * CONNS threads, each on one kept-alive connection, send the same request again and again for
 * SECONDS and read each response whole (by its Content-Length) before the next.
 *
 *   httpload PORT PATH CONNS SECONDS [BODY]     (GET without BODY, POST with it)
 *
 * Prints "<requests per second> <responses that were not 2xx> <responses>" on one line.
 * Loopback only.
 */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int port;
static double seconds;
static char request[8192];
static size_t request_len;
static atomic_long done, bad;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reads one response; returns its status, or -1 when the connection failed. */
static int read_response(int fd, char *buf, size_t cap, size_t *have)
{
    for (;;) {
        char *end = *have > 0 ? memmem(buf, *have, "\r\n\r\n", 4) : NULL;
        if (end != NULL) {
            size_t head = (size_t)(end - buf) + 4;
            const char *cl = memmem(buf, head, "Content-Length:", 15);
            size_t body = cl != NULL ? strtoul(cl + 15, NULL, 10) : 0;
            int status = atoi(buf + 9);
            while (*have < head + body) {
                if (head + body > cap)
                    return -1;
                ssize_t n = read(fd, buf + *have, cap - *have);
                if (n <= 0)
                    return -1;
                *have += (size_t)n;
            }
            memmove(buf, buf + head + body, *have - head - body);
            *have -= head + body;
            return status;
        }
        if (*have == cap)
            return -1;
        ssize_t n = read(fd, buf + *have, cap - *have);
        if (n <= 0)
            return -1;
        *have += (size_t)n;
    }
}

static void *worker(void *arg)
{
    (void)arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return NULL;
    }
    static _Thread_local char buf[1 << 16];
    size_t have = 0;
    double until = now() + seconds;
    while (now() < until) {
        if (write(fd, request, request_len) != (ssize_t)request_len)
            break;
        int status = read_response(fd, buf, sizeof buf, &have);
        if (status < 0)
            break;
        atomic_fetch_add(&done, 1);
        if (status < 200 || status > 299)
            atomic_fetch_add(&bad, 1);
    }
    close(fd);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: httpload PORT PATH CONNS SECONDS [BODY]\n");
        return 2;
    }
    port = atoi(argv[1]);
    int conns = atoi(argv[3]);
    seconds = atof(argv[4]);
    const char *body = argc > 5 ? argv[5] : NULL;
    if (conns < 1 || conns > 1000 || seconds <= 0 || seconds > 600) {
        fprintf(stderr, "httpload: 1 to 1000 connections, 0 to 600 seconds\n");
        return 2;
    }
    int n = body ? snprintf(request, sizeof request,
                            "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                            "application/json\r\nContent-Length: %zu\r\n\r\n%s",
                            argv[2], strlen(body), body)
                 : snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                            argv[2]);
    if (n < 0 || (size_t)n >= sizeof request) {
        fprintf(stderr, "httpload: the request is too long\n");
        return 2;
    }
    request_len = (size_t)n;
    pthread_t *t = calloc((size_t)conns, sizeof *t);
    if (t == NULL)
        return 1;
    double t0 = now();
    for (int i = 0; i < conns; i++)
        pthread_create(&t[i], NULL, worker, NULL);
    for (int i = 0; i < conns; i++)
        pthread_join(t[i], NULL);
    double dt = now() - t0;
    printf("%.1f %ld %ld\n", (double)atomic_load(&done) / dt, atomic_load(&bad), atomic_load(&done));
    free(t);
    return 0;
}
