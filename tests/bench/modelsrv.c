/*
 * modelsrv.c -- the model server of `make bench`'s agents figure: an OpenAI-style streamed
 * chat completion held for a delay, on libmicrohttpd, so that thousands of waiting requests
 * cost the machine almost nothing beside the worker being measured. (tests/helpers/
 * fakemodel.py, the tests' server, spends about 150 us of Python a request and starts a
 * request's delay up to 0.25 s late when 2,000 arrive together: measured in docs/
 * benchmarks.md.)
 *
 *   modelsrv [MAX_SECONDS]
 *
 * Listens on a free loopback port and prints "PORT <n>" on one line. Every POST (any path)
 * is answered, after ?delay=S seconds (default 0), with text/event-stream (chunked): one
 * chunk event with delta {"role":"assistant","content":""}, ?tokens=N (default 1) events of
 * one word each, one with finish_reason "stop", then "data: [DONE]", all in one write, as a
 * server that has them at hand sends them. Anything else gets 404. Exits on SIGTERM or
 * SIGINT, or by itself after MAX_SECONDS (default 600).
 */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MAX_TOKENS 10000

struct req {
    struct MHD_Connection *conn;
    double due;      /* monotonic seconds; 0 until the request is read */
    bool answered;   /* resumed: the response may go */
    char *body;      /* the response */
    size_t len;
};

/* The suspended requests, a binary heap by due time, and the thread that resumes them. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv;
static struct req **heap;
static size_t nheap, capheap;
static volatile sig_atomic_t stopping;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void heap_push(struct req *r)
{
    if (nheap == capheap) {
        capheap = capheap ? capheap * 2 : 4096;
        heap = realloc(heap, capheap * sizeof *heap);
        if (heap == NULL)
            abort();
    }
    size_t i = nheap++;
    while (i > 0 && heap[(i - 1) / 2]->due > r->due) {
        heap[i] = heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    heap[i] = r;
}

static struct req *heap_pop(void)
{
    struct req *top = heap[0], *last = heap[--nheap];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= nheap)
            break;
        if (c + 1 < nheap && heap[c + 1]->due < heap[c]->due)
            c++;
        if (last->due <= heap[c]->due)
            break;
        heap[i] = heap[c];
        i = c;
    }
    if (nheap > 0)
        heap[i] = last;
    return top;
}

static void *resumer(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    while (!stopping) {
        double t = now();
        while (nheap > 0 && heap[0]->due <= t) {
            struct req *r = heap_pop();
            r->answered = true;
            MHD_resume_connection(r->conn);
        }
        double wait = nheap > 0 ? heap[0]->due - t : 0.05;
        if (wait > 0.05)
            wait = 0.05;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        long ns = ts.tv_nsec + (long)(wait * 1e9);
        ts.tv_sec += ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        pthread_cond_timedwait(&cv, &mu, &ts);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

static double query_num(struct MHD_Connection *c, const char *name, double dflt, double max)
{
    const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
    if (v == NULL)
        return dflt;
    char *end;
    double d = strtod(v, &end);
    return end == v || *end != '\0' || !(d >= 0) ? dflt : d > max ? max : d;
}

/* The streamed answer: every event at once. */
static void build(struct req *r, long tokens)
{
    static const char head[] = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\","
                               "\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":";
    size_t cap = 512 + (size_t)(tokens + 2) * (sizeof head + 64);
    r->body = malloc(cap);
    if (r->body == NULL)
        abort();
    size_t n = 0;
    n += (size_t)snprintf(r->body + n, cap - n, "%s{\"role\":\"assistant\",\"content\":\"\"},"
                          "\"finish_reason\":null}]}\n\n", head);
    for (long i = 1; i <= tokens; i++)
        n += (size_t)snprintf(r->body + n, cap - n, "%s{\"content\":\"%sw%ld\"},"
                              "\"finish_reason\":null}]}\n\n", head, i > 1 ? " " : "", i);
    n += (size_t)snprintf(r->body + n, cap - n, "%s{},\"finish_reason\":\"stop\"}]}\n\n"
                          "data: [DONE]\n\n", head);
    r->len = n;
}

static ssize_t reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct req *r = cls;
    if (pos >= r->len)
        return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = r->len - (size_t)pos < max ? r->len - (size_t)pos : max;
    memcpy(buf, r->body + pos, n);
    return (ssize_t)n;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **state)
{
    (void)cls, (void)url, (void)version, (void)upload;
    struct req *r = *state;
    if (strcmp(method, "POST") != 0) {
        static char nf[] = "not found\n";
        struct MHD_Response *resp = MHD_create_response_from_buffer(sizeof nf - 1, nf,
                                                                    MHD_RESPMEM_PERSISTENT);
        enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_NOT_FOUND, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    if (r == NULL) {
        r = calloc(1, sizeof *r);
        if (r == NULL)
            return MHD_NO;
        r->conn = c;
        *state = r;
        return MHD_YES;
    }
    if (*upload_size > 0) { /* the request body: not looked at */
        *upload_size = 0;
        return MHD_YES;
    }
    if (!r->answered) {
        double delay = query_num(c, "delay", 0, 3600);
        build(r, (long)query_num(c, "tokens", 1, MAX_TOKENS));
        if (delay > 0) {
            r->due = now() + delay;
            pthread_mutex_lock(&mu);
            MHD_suspend_connection(c);
            heap_push(r);
            if (heap[0] == r)
                pthread_cond_signal(&cv);
            pthread_mutex_unlock(&mu);
            return MHD_YES;
        }
        r->answered = true;
    }
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024,
                                                                  reader, r, NULL);
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

static void completed(void *cls, struct MHD_Connection *c, void **state,
                      enum MHD_RequestTerminationCode why)
{
    (void)cls, (void)c, (void)why;
    struct req *r = *state;
    if (r != NULL) {
        free(r->body);
        free(r);
        *state = NULL;
    }
}

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

int main(int argc, char **argv)
{
    unsigned max_seconds = argc > 1 ? (unsigned)atoi(argv[1]) : 600;
    /* A connection per request held: as many open files as the system lets this process have. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cv, &ca);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME, 0, NULL, NULL, handle, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_LIMIT, 20000,
        MHD_OPTION_CONNECTION_TIMEOUT, 120, MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096,
        MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "modelsrv: the server did not start\n");
        return 1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    printf("PORT %u\n", info ? info->port : 0);
    fflush(stdout);
    pthread_t th;
    if (pthread_create(&th, NULL, resumer, NULL) != 0)
        return 1;
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    double end = now() + max_seconds;
    while (!stopping && now() < end)
        usleep(50000);
    pthread_mutex_lock(&mu);
    stopping = 1;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(th, NULL);
    MHD_stop_daemon(d);
    return 0;
}
