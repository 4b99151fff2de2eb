/*
 * test_gateway.c -- the gateway's HTTP side (engine/gateway.c): a request's body reaches
 * bq_gateway_next whole, its answer reaches the client; a stream's pieces arrive in order
 * and end; a body over the bound is answered 413 unread; an answer for a connection that is
 * gone is refused; a stop answers what waits. The client is a plain socket speaking HTTP/1.1
 * with "Connection: close", so each response ends with the connection. Runs under ASan, TSan
 * and valgrind with the rest (a race or a leak in the suspend/resume hand-offs shows there).
 */
#include "check.h"

#include "../../src/core/clock.h"
#include "../../src/engine/gateway.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct call {
    int port;
    char request[4096];
    size_t request_len;
    char response[1 << 16];
    size_t response_len;
};

static void *client(void *arg)
{
    struct call *c = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        size_t off = 0;
        while (off < c->request_len) {
            ssize_t n = write(fd, c->request + off, c->request_len - off);
            if (n <= 0)
                break;
            off += (size_t)n;
        }
        for (;;) {
            ssize_t n = read(fd, c->response + c->response_len,
                             sizeof c->response - 1 - c->response_len);
            if (n <= 0)
                break;
            c->response_len += (size_t)n;
        }
    }
    c->response[c->response_len] = '\0';
    close(fd);
    return NULL;
}

static void post(struct call *c, int port, const char *path, const char *body)
{
    memset(c, 0, sizeof *c);
    c->port = port;
    c->request_len = (size_t)snprintf(c->request, sizeof c->request,
                                      "POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                      "Authorization: Bearer tok\r\nContent-Length: %zu\r\n\r\n%s",
                                      path, strlen(body), body);
}

static bq_gateway *start(size_t max_body)
{
    struct bq_gateway_options o = {.host = "127.0.0.1", .port = 0, .max_body = max_body};
    bq_gateway *g = NULL;
    bq_err err;
    if (bq_gateway_start(&o, &g, &err) != BQ_OK) {
        printf("  gateway: %s\n", err.msg);
        return NULL;
    }
    return g;
}

TEST(a_request_and_its_answer)
{
    bq_gateway *g = start(0);
    if (g == NULL)
        SKIP("no libmicrohttpd");
    struct call c;
    post(&c, bq_gateway_port(g), "/rpc", "{\"hello\":1}");
    pthread_t t;
    pthread_create(&t, NULL, client, &c);
    struct bq_gateway_request r;
    CHECK_INT(bq_gateway_next(g, 5, &r), 1);
    CHECK_STR(r.method, "POST");
    CHECK_STR(r.path, "/rpc");
    CHECK_STR(r.body, "{\"hello\":1}");
    CHECK_INT((int)r.body_len, 11);
    CHECK_STR(r.authorization, "Bearer tok");
    CHECK_STR(r.peer, "127.0.0.1");
    const char *names[] = {"X-One"}, *values[] = {"1"};
    CHECK(bq_gateway_reply(g, r.id, 200, "application/json", "{\"ok\":true}", 11, names, values, 1));
    CHECK(!bq_gateway_reply(g, r.id, 200, "text/plain", "again", 5, NULL, NULL, 0)); /* answered */
    pthread_join(t, NULL);
    CHECK(strstr(c.response, "HTTP/1.1 200") == c.response);
    CHECK(strstr(c.response, "X-One: 1") != NULL);
    CHECK(strstr(c.response, "\r\n\r\n{\"ok\":true}") != NULL);
    bq_gateway_request_free(&r);
    CHECK_INT(bq_gateway_next(g, 0.05, &r), 0); /* nothing else came */
    bq_gateway_free(g);
}

TEST(a_stream_in_pieces)
{
    bq_gateway *g = start(0);
    if (g == NULL)
        SKIP("no libmicrohttpd");
    struct call c;
    post(&c, bq_gateway_port(g), "/", "{}");
    pthread_t t;
    pthread_create(&t, NULL, client, &c);
    struct bq_gateway_request r;
    CHECK_INT(bq_gateway_next(g, 5, &r), 1);
    CHECK(bq_gateway_stream(g, r.id, "text/event-stream", NULL, NULL, 0));
    for (int i = 0; i < 5; i++) {
        char ev[32];
        int n = snprintf(ev, sizeof ev, "data: %d\n\n", i);
        CHECK(bq_gateway_send(g, r.id, ev, (size_t)n));
        bq_sleep(0.01);
    }
    bq_gateway_end(g, r.id);
    pthread_join(t, NULL);
    CHECK(strstr(c.response, "text/event-stream") != NULL);
    const char *p = c.response;
    for (int i = 0; i < 5; i++) {
        char ev[32];
        snprintf(ev, sizeof ev, "data: %d", i);
        p = strstr(p, ev);
        CHECK(p != NULL);
        if (p == NULL)
            break;
    }
    bq_gateway_request_free(&r);
    bq_gateway_free(g);
}

TEST(a_body_over_the_bound_is_refused)
{
    bq_gateway *g = start(8);
    if (g == NULL)
        SKIP("no libmicrohttpd");
    struct call c;
    post(&c, bq_gateway_port(g), "/", "0123456789");
    pthread_t t;
    pthread_create(&t, NULL, client, &c);
    pthread_join(t, NULL);
    CHECK(strstr(c.response, "HTTP/1.1 413") == c.response);
    struct bq_gateway_request r;
    CHECK_INT(bq_gateway_next(g, 0.05, &r), 0); /* never handed over */
    bq_gateway_free(g);
}

TEST(a_stop_answers_what_waits)
{
    bq_gateway *g = start(0);
    if (g == NULL)
        SKIP("no libmicrohttpd");
    struct call c;
    post(&c, bq_gateway_port(g), "/", "x");
    pthread_t t;
    pthread_create(&t, NULL, client, &c);
    struct bq_gateway_request r;
    CHECK_INT(bq_gateway_next(g, 5, &r), 1); /* taken, never answered */
    bq_gateway_request_free(&r);
    bq_gateway_free(g);                       /* must not wait for an answer */
    pthread_join(t, NULL);
    CHECK(c.response_len == 0 || strstr(c.response, "HTTP/1.1 503") == c.response);
}

int main(void)
{
    RUN(a_request_and_its_answer);
    RUN(a_stream_in_pieces);
    RUN(a_body_over_the_bound_is_refused);
    RUN(a_stop_answers_what_waits);
    return check_report("test_gateway");
}
