/*
 * test_http.c -- the event-stream reader (net/sse.c) against the format's rules, fed whole and
 * in every split; the HTTP layer's URL redaction and error codes (net/http.c, which needs
 * libcurl loaded: those tests skip without it). The calls themselves are tested from Lua
 * against the fake model server (tests/integration/http_spec.lua).
 */
#include "check.h"

#include "../../src/core/alloc.h"
#include "../../src/core/buf.h"
#include "../../src/net/http.h"
#include "../../src/net/sse.h"

#include <stdio.h>
#include <string.h>

/* Events written as "type|data|id|retry;" so a test compares one string. */
static bool collect(void *ud, const struct bq_sse_event *ev)
{
    bq_buf *b = ud;
    bq_buf_append(b, ev->type, ev->type_len);
    bq_buf_putc(b, '|');
    bq_buf_append(b, ev->data, ev->data_len);
    bq_buf_putc(b, '|');
    bq_buf_append(b, ev->id, ev->id_len);
    bq_buf_printf(b, "|%lld;", ev->retry);
    return true;
}

/* Feeds s whole, then split at every position, then byte by byte: every way must give the
 * same events, equal to want. */
static void check_stream(const char *s, const char *want, int line)
{
    size_t n = strlen(s);
    for (size_t cut = 0; cut <= n + 1; cut++) {
        struct bq_sse p;
        bq_sse_init(&p, 0);
        bq_buf b = BQ_BUF_INIT;
        bq_err err;
        bq_status rc = BQ_OK;
        if (cut <= n) {
            rc = bq_sse_feed(&p, s, cut, collect, &b, &err);
            if (rc == BQ_OK)
                rc = bq_sse_feed(&p, s + cut, n - cut, collect, &b, &err);
        } else {
            for (size_t i = 0; i < n && rc == BQ_OK; i++)
                rc = bq_sse_feed(&p, s + i, 1, collect, &b, &err);
        }
        if (rc != BQ_OK || strcmp(bq_buf_cstr(&b), want) != 0) {
            printf("  line %d, cut %zu: got \"%s\" (rc %d), want \"%s\"\n", line, cut,
                   bq_buf_cstr(&b), (int)rc, want);
            check_failed_now = 1;
            bq_buf_free(&b);
            bq_sse_free(&p);
            return;
        }
        bq_buf_free(&b);
        bq_sse_free(&p);
    }
}
#define STREAM(s, want) check_stream(s, want, __LINE__)

TEST(sse_fields_and_dispatch)
{
    STREAM("data: a\n\n", "message|a||-1;");
    STREAM("data:a\n\n", "message|a||-1;");
    STREAM("data:  two spaces\n\n", "message| two spaces||-1;");
    STREAM("data: 1\ndata: 2\n\n", "message|1\n2||-1;");
    STREAM("data\n\n", "message|||-1;");            /* a field alone: empty value */
    STREAM("event: add\ndata: x\n\n", "add|x||-1;");
    STREAM("id: 7\ndata: x\n\ndata: y\n\n", "message|x|7|-1;message|y|7|-1;");
    STREAM("retry: 1500\ndata: x\n\n", "message|x||1500;");
    STREAM("retry: 15a\ndata: x\n\n", "message|x||-1;"); /* digits only */
    STREAM(": keep-alive\n\ndata: x\n\n", "message|x||-1;");
    STREAM("event: a\n\ndata: x\n\n", "message|x||-1;"); /* no data: the type resets */
    STREAM("foo: bar\ndata: x\n\n", "message|x||-1;");    /* unknown fields ignored */
    STREAM("data: x\n", "");                               /* not ended: dropped */
    STREAM("data: {\"a\":1}\n\ndata: [DONE]\n\n", "message|{\"a\":1}||-1;message|[DONE]||-1;");
}

TEST(sse_line_ends_and_bom)
{
    STREAM("data: a\r\n\r\n", "message|a||-1;");
    STREAM("data: a\r\rdata: b\r\r", "message|a||-1;message|b||-1;");
    STREAM("data: a\r\ndata: b\n\r\n", "message|a\nb||-1;");
    STREAM("\xef\xbb\xbf" "data: a\n\n", "message|a||-1;");
    /* Only the first BOM is skipped; a second is part of the field name (ignored). */
    STREAM("\xef\xbb\xbf\xef\xbb\xbf" "data: a\n\n", "");
    /* Not a BOM: its bytes are text. */
    STREAM("\xef\xbb" "data: a\n\n", "");
    STREAM("\xefx\n\ndata: b\n\n", "message|b||-1;");
}

TEST(sse_id_with_nul_is_ignored)
{
    struct bq_sse p;
    bq_sse_init(&p, 0);
    bq_buf b = BQ_BUF_INIT;
    static const char s[] = "id: 1\ndata: a\n\nid: x\0y\ndata: b\n\n";
    CHECK_INT(bq_sse_feed(&p, s, sizeof s - 1, collect, &b, NULL), BQ_OK);
    CHECK_STR(bq_buf_cstr(&b), "message|a|1|-1;message|b|1|-1;");
    bq_buf_free(&b);
    bq_sse_free(&p);
}

TEST(sse_bound_and_stop)
{
    struct bq_sse p;
    bq_sse_init(&p, 16);
    bq_buf b = BQ_BUF_INIT;
    bq_err err;
    CHECK_INT(bq_sse_feed(&p, "data: 0123456789\n", 17, collect, &b, &err), BQ_OK);
    CHECK_INT(bq_sse_feed(&p, "data: 0123456789\n", 17, collect, &b, &err), BQ_ETOOBIG);
    CHECK(strstr(err.msg, "16 bytes") != NULL);
    CHECK_INT(bq_sse_feed(&p, "\n", 1, collect, &b, &err), BQ_EINVAL); /* stays failed */
    bq_sse_free(&p);
    /* A line with no end counts too. */
    bq_sse_init(&p, 16);
    CHECK_INT(bq_sse_feed(&p, "data: 0123456789abcdef", 22, collect, &b, &err), BQ_ETOOBIG);
    bq_sse_free(&p);
    bq_buf_free(&b);
}

static bool stop_first(void *ud, const struct bq_sse_event *ev)
{
    (void)ev;
    (*(int *)ud)++;
    return false;
}

TEST(sse_callback_stops)
{
    struct bq_sse p;
    bq_sse_init(&p, 0);
    int n = 0;
    bq_err err;
    CHECK_INT(bq_sse_feed(&p, "data: a\n\ndata: b\n\n", 18, stop_first, &n, &err), BQ_EINTR);
    CHECK_INT(n, 1);
    bq_sse_free(&p);
}

TEST(sse_allocation_failures_are_clean)
{
    int saw_ok = 0;
    for (long n = 0; n < 20 && !saw_ok; n++) {
        struct bq_sse p;
        bq_sse_init(&p, 0);
        bq_buf b = BQ_BUF_INIT;
        bq_alloc_fail_after(n);
        bq_status st = bq_sse_feed(&p, "event: e\ndata: a\nid: 1\n\n", 24, collect, &b, NULL);
        bq_alloc_fail_after(-1);
        CHECK(st == BQ_OK || st == BQ_ENOMEM);
        saw_ok = st == BQ_OK;
        bq_sse_free(&p);
        bq_buf_free(&b);
    }
    CHECK(saw_ok);
}

static bool have_curl(void)
{
    bq_err err;
    struct bq_http_loop *l = bq_http_loop_new(&err);
    bq_http_loop_free(l);
    return l != NULL;
}

TEST(urls_are_shown_without_secrets)
{
    if (!have_curl())
        SKIP("no libcurl");
    char out[256];
    bq_http_redact_url("https://user:s3cret@api.example.com:8443/v1/chat?key=k3y#frag", out,
                       sizeof out);
    CHECK_STR(out, "https://api.example.com:8443/v1/chat");
    bq_http_redact_url("http://127.0.0.1", out, sizeof out);
    CHECK_STR(out, "http://127.0.0.1/");
    bq_http_redact_url("http://[::1]:80/a%20b", out, sizeof out);
    CHECK_STR(out, "http://[::1]:80/a%20b");
    bq_http_redact_url("http://bad host/", out, sizeof out);
    CHECK_STR(out, "(bad URL)");
    bq_http_redact_url("https://u:p@h/x", out, 10); /* cut, never past the buffer */
    CHECK_STR(out, "https://h");
}

TEST(bad_requests_name_the_option)
{
    if (!have_curl())
        SKIP("no libcurl");
    bq_err err;
    struct bq_http_loop *l = bq_http_loop_new(&err);
    struct bq_http *h = NULL;
    const char *code = NULL;
    struct bq_http_request r = {.url = "ftp://x/"};
    CHECK_INT(bq_http_start(l, &r, &h, &code, &err), BQ_EINVAL);
    CHECK_STR(code, "EINVAL");
    CHECK(strstr(err.msg, "http:// or https://") != NULL);
    r.url = "http://127.0.0.1/";
    r.method = "get";
    CHECK_INT(bq_http_start(l, &r, &h, &code, &err), BQ_EINVAL);
    CHECK(strstr(err.msg, "method") != NULL);
    r.method = NULL;
    const char *bad[] = {"X-A: 1\r\nX-B: 2"};
    r.headers = bad;
    r.nheaders = 1;
    CHECK_INT(bq_http_start(l, &r, &h, &code, &err), BQ_EINVAL);
    CHECK(strstr(err.msg, "header 1") != NULL);
    CHECK(h == NULL);
    bq_http_loop_free(l);
}

TEST(error_codes)
{
    CHECK_STR(bq_http_code_of(28), "ETIMEDOUT");    /* CURLE_OPERATION_TIMEDOUT */
    CHECK_STR(bq_http_code_of(7), "ECONNREFUSED");  /* CURLE_COULDNT_CONNECT */
    CHECK_STR(bq_http_code_of(6), "ENOTFOUND");     /* CURLE_COULDNT_RESOLVE_HOST */
    CHECK_STR(bq_http_code_of(60), "ETLS");         /* CURLE_PEER_FAILED_VERIFICATION */
    CHECK_STR(bq_http_code_of(35), "ETLS");         /* CURLE_SSL_CONNECT_ERROR */
    CHECK_STR(bq_http_code_of(63), "ETOOBIG");      /* CURLE_FILESIZE_EXCEEDED */
    CHECK_STR(bq_http_code_of(47), "EREDIRECT");    /* CURLE_TOO_MANY_REDIRECTS */
    CHECK_STR(bq_http_code_of(56), "ECONNRESET");   /* CURLE_RECV_ERROR */
    CHECK_STR(bq_http_code_of(52), "ECONNRESET");   /* CURLE_GOT_NOTHING */
    CHECK_STR(bq_http_code_of(5), "EPROXY");        /* CURLE_COULDNT_RESOLVE_PROXY */
    CHECK_STR(bq_http_code_of(99), "EIO");
}

int main(void)
{
    RUN(sse_fields_and_dispatch);
    RUN(sse_line_ends_and_bom);
    RUN(sse_id_with_nul_is_ignored);
    RUN(sse_bound_and_stop);
    RUN(sse_callback_stops);
    RUN(sse_allocation_failures_are_clean);
    RUN(urls_are_shown_without_secrets);
    RUN(bad_requests_name_the_option);
    RUN(error_codes);
    return check_report("test_http");
}
