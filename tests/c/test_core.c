/*
 * test_core.c -- pure logic: backoff, the JSON string writer, UTF-8 validation, key layout,
 * the C task encoder, dead-letter entries, configuration resolution, log lines, the Lua
 * states' small-object arena, the embedded Redis scripts' SHA1 names, optional libraries,
 * timestamps and UUIDs.
 */
#include "check.h"

#include "../../src/broker/broker.h"
#include "../../src/broker/keys.h"
#include "../../src/broker/scripts.h"
#include "../../src/core/alloc.h"
#include "../../src/core/arena.h"
#include "../../src/core/backoff.h"
#include "../../src/core/env.h"
#include "../../src/core/buf.h"
#include "../../src/core/clock.h"
#include "../../src/core/dl.h"
#include "../../src/core/log.h"
#include "../../src/core/rand.h"
#include "../../src/core/ratelimit.h"
#include "../../src/core/wire.h"
#include "../../src/engine/config.h"
#include "../../src/engine/task.h"
#include "../../src/engine/worker.h"
#include "../../src/net/bulkcap.h"
#include "../../src/net/conn.h"
#include "../../src/net/sslapi.h"

#include <limits.h>
#include <math.h>
#include <openssl/evp.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

TEST(backoff_grows_and_caps)
{
    /* No jitter: base * 2^attempt, capped. */
    const double expect[] = {0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0};
    for (int i = 0; i < 8; i++)
        CHECK(fabs(bq_backoff_delay(i, 0.1, 5.0, BQ_JITTER_NONE, 0.5) - expect[i]) < 1e-9);
    CHECK(bq_backoff_delay(1000, 1.0, 300.0, BQ_JITTER_NONE, 0) == 300.0);
    CHECK(bq_backoff_delay(-3, 1.0, 300.0, BQ_JITTER_NONE, 0) == 1.0);
    /* Full jitter spans [0, d); equal jitter [d/2, d). */
    CHECK(bq_backoff_delay(3, 1.0, 300.0, BQ_JITTER_FULL, 0.0) == 0.0);
    CHECK(fabs(bq_backoff_delay(3, 1.0, 300.0, BQ_JITTER_FULL, 0.5) - 4.0) < 1e-9);
    CHECK(bq_backoff_delay(3, 1.0, 300.0, BQ_JITTER_FULL, 0.9999) < 8.0);
    CHECK(fabs(bq_backoff_delay(3, 1.0, 300.0, BQ_JITTER_EQUAL, 0.0) - 4.0) < 1e-9);
    CHECK(bq_backoff_delay(3, 1.0, 300.0, BQ_JITTER_EQUAL, 1.5) < 8.0);
    CHECK(bq_backoff_delay(2, 0, 300.0, BQ_JITTER_NONE, 0.5) == 0);
}

static const char *json_of(const char *s, size_t n, bq_buf *b)
{
    b->len = 0;
    bq_buf_json_str(b, s, n);
    return bq_buf_cstr(b);
}

TEST(json_strings)
{
    bq_buf b = BQ_BUF_INIT;
    CHECK_STR(json_of("plain", 5, &b), "\"plain\"");
    CHECK_STR(json_of("a\"b\\c", 5, &b), "\"a\\\"b\\\\c\"");
    CHECK_STR(json_of("l1\nl2\t\r", 7, &b), "\"l1\\nl2\\t\\r\"");
    CHECK_STR(json_of("\x01\x1f", 2, &b), "\"\\u0001\\u001f\"");
    CHECK_STR(json_of("nul\0x", 5, &b), "\"nul\\u0000x\"");
    CHECK_STR(json_of("h\xc3\xa9llo \xe2\x82\xac", 10, &b), "\"h\xc3\xa9llo \xe2\x82\xac\"");
    bq_buf_free(&b);
}

static const char *secs_of(double v, bq_buf *b)
{
    b->len = 0;
    bq_buf_put_secs(b, v);
    return bq_buf_cstr(b);
}

TEST(seconds_and_integers_without_printf)
{
    bq_buf b = BQ_BUF_INIT;
    CHECK_STR(secs_of(1764849600.125, &b), "1764849600.125");
    CHECK_STR(secs_of(0, &b), "0.000");
    CHECK_STR(secs_of(0.0005, &b), "0.001"); /* rounded, as %.3f */
    CHECK_STR(secs_of(2.9996, &b), "3.000");
    CHECK_STR(secs_of(-0.5, &b), "-0.500");
    CHECK_STR(secs_of(-1.25, &b), "-1.250");
    CHECK_STR(secs_of(NAN, &b), "0.000");
    CHECK_STR(secs_of(INFINITY, &b), "0.000");
    CHECK_STR(secs_of(1e16, &b), "0.000");
    char want[64];
    for (double v = 0.001; v < 1e12; v = v * 7.3 + 0.001) {
        snprintf(want, sizeof want, "%.3f", v);
        CHECK_STR(secs_of(v, &b), want);
    }
    b.len = 0;
    bq_buf_put_int(&b, 0);
    bq_buf_putc(&b, ' ');
    bq_buf_put_int(&b, -42);
    bq_buf_putc(&b, ' ');
    bq_buf_put_int(&b, LLONG_MIN);
    CHECK_STR(bq_buf_cstr(&b), "0 -42 -9223372036854775808");
    bq_buf_free(&b);
}

/* The writer reads eight bytes at a time: against a byte-at-a-time reference, on strings of
 * every length up to 40 with a byte of each kind at every position. */
static void json_reference(const unsigned char *s, size_t n, bq_buf *b)
{
    b->len = 0;
    bq_buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        switch (s[i]) {
        case '"': bq_buf_puts(b, "\\\""); break;
        case '\\': bq_buf_puts(b, "\\\\"); break;
        case '\n': bq_buf_puts(b, "\\n"); break;
        case '\r': bq_buf_puts(b, "\\r"); break;
        case '\t': bq_buf_puts(b, "\\t"); break;
        default:
            if (s[i] < 0x20)
                bq_buf_printf(b, "\\u%04x", s[i]);
            else
                bq_buf_putc(b, (char)s[i]);
        }
    }
    bq_buf_putc(b, '"');
}

TEST(json_strings_by_word)
{
    static const unsigned char probes[] = {0x00, 0x01, 0x1f, 0x20, '"', '\\', '\n', 0x21, 0x5b,
                                           0x5d, 0x7f, 0x80, 0xa2, 0xdc, 0xff};
    bq_buf got = BQ_BUF_INIT, want = BQ_BUF_INIT;
    unsigned char s[40];
    int bad = 0;
    for (size_t n = 0; n <= sizeof s; n++) {
        for (size_t at = 0; at < (n ? n : 1); at++) {
            for (size_t p = 0; p < sizeof probes; p++) {
                memset(s, 'a', sizeof s);
                if (n > 0)
                    s[at] = probes[p];
                if (n > 3)
                    s[n - 1] = probes[(p + 5) % sizeof probes];
                json_reference(s, n, &want);
                json_of((const char *)s, n, &got);
                bad += got.len != want.len || memcmp(got.p, want.p, want.len) != 0;
            }
        }
    }
    CHECK_INT(bad, 0);
    bq_buf_free(&got);
    bq_buf_free(&want);
}

TEST(utf8_validation)
{
    size_t bad = 99;
    CHECK(bq_utf8_valid("", 0, NULL));
    CHECK(bq_utf8_valid("ascii", 5, NULL));
    CHECK(bq_utf8_valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9, NULL));
    CHECK(!bq_utf8_valid("ab\xff", 3, &bad));
    CHECK_INT(bad, 2);
    CHECK(!bq_utf8_valid("\xc0\xaf", 2, &bad));       /* overlong '/' */
    CHECK(!bq_utf8_valid("\xed\xa0\x80", 3, &bad));   /* surrogate U+D800 */
    CHECK(!bq_utf8_valid("\xf4\x90\x80\x80", 4, &bad)); /* above U+10FFFF */
    CHECK(!bq_utf8_valid("x\xe2\x82", 3, &bad));      /* truncated */
    CHECK_INT(bad, 1);
    CHECK(!bq_utf8_valid("\x80", 1, &bad));           /* lone continuation */
}

TEST(key_layout)
{
    char k[128];
    CHECK(bq_key_derive("bindu:tasks", "dlq", k, sizeof k));
    CHECK_STR(k, "{bindu:tasks}:dlq");
    CHECK(bq_key_derive("{bindu}:tasks:high", "dlq", k, sizeof k));
    CHECK_STR(k, "{bindu}:tasks:high:dlq");
    CHECK(!bq_key_derive("bindu:tasks", "dlq", k, 8));
    CHECK(!bq_key_has_tag("bindu:tasks"));
    CHECK(!bq_key_has_tag("a{}b"));
    CHECK(bq_key_has_tag("x{t}y"));
    /* Reference slots from the Redis Cluster specification and CLUSTER KEYSLOT. */
    CHECK_INT(bq_key_slot("123456789"), 0x31C3 & 16383);
    CHECK_INT(bq_key_slot("foo"), 12182);
    CHECK_INT(bq_key_slot("{user1000}.following"), bq_key_slot("user1000"));
    /* A derived key shares its queue's slot, with or without a tag. */
    CHECK(bq_key_derive("bindu:tasks", "dlq", k, sizeof k));
    CHECK_INT(bq_key_slot(k), bq_key_slot("bindu:tasks"));
    CHECK(bq_key_derive("{bindu}:tasks:low", "dlq", k, sizeof k));
    CHECK_INT(bq_key_slot(k), bq_key_slot("{bindu}:tasks:high"));
}

TEST(task_encoding)
{
    struct bq_message m[2] = {{"user", "What is \"AI\"?\n"}, {"agent", "A field."}};
    struct bq_task t = {"run", "t-1", "c-1", m, 2};
    struct bq_msg out;
    bq_err err;
    CHECK_INT(bq_task_encode(&t, &out, &err), BQ_OK);
    CHECK_CONTAINS(out.data, "{\"type\":\"run\",\"task_id\":\"t-1\",\"conversation_id\":\"c-1\","
                             "\"messages\":[{\"role\":\"user\",\"content\":\"What is \\\"AI\\\"?"
                             "\\n\"},{\"role\":\"agent\",\"content\":\"A field.\"}],"
                             "\"artifacts\":[],\"timestamp\":\"");
    CHECK_INT(out.data[out.len - 1], '}');
    bq_free(out.data);

    /* A run without a conversation gets a fresh UUID. */
    struct bq_task t2 = {"run", "t-2", NULL, m, 1};
    CHECK_INT(bq_task_encode(&t2, &out, &err), BQ_OK);
    CHECK_CONTAINS(out.data, "\"conversation_id\":\"");
    bq_free(out.data);

    struct bq_task c = {"cancel", "t-3", NULL, NULL, 0};
    CHECK_INT(bq_task_encode(&c, &out, &err), BQ_OK);
    CHECK_NOT_CONTAINS(out.data, "messages");
    CHECK_NOT_CONTAINS(out.data, "conversation_id");
    bq_free(out.data);

    /* The parts a producer records: the history (the "messages" array) and the
     * conversation id, the one made for a run without one. */
    struct bq_task_parts parts;
    CHECK_INT(bq_task_encode_parts(&t2, &out, &parts, &err), BQ_OK);
    CHECK_INT(strlen(parts.uuid), 36);
    CHECK(parts.conversation_id == parts.uuid);
    char want[64];
    snprintf(want, sizeof want, "\"conversation_id\":\"%s\"", parts.uuid);
    CHECK_CONTAINS(out.data, want);
    const char *history = "[{\"role\":\"user\",\"content\":\"What is \\\"AI\\\"?\\n\"}]";
    CHECK_INT(parts.history_len, strlen(history));
    CHECK(strncmp(out.data + parts.history_off, history, parts.history_len) == 0);
    bq_free(out.data);
    CHECK_INT(bq_task_encode_parts(&t, &out, &parts, &err), BQ_OK);
    CHECK_STR(parts.conversation_id, "c-1");
    CHECK_INT(parts.uuid[0], '\0');
    bq_free(out.data);
    CHECK_INT(bq_task_encode_parts(&c, &out, &parts, &err), BQ_OK);
    CHECK(parts.conversation_id == NULL);
    CHECK_INT(parts.history_len, 0);
    bq_free(out.data);
}

TEST(task_validation_names_the_field)
{
    struct bq_message m = {"user", "hi"};
    struct bq_message bad_role = {"", "hi"};
    struct bq_message bad_utf8 = {"user", "\xff"};
    struct {
        struct bq_task t;
        const char *expect;
    } cases[] = {
        {{"run", NULL, NULL, &m, 1}, "task_id is required"},
        {{"run", "", NULL, &m, 1}, "task_id must not be empty"},
        {{"walk", "x", NULL, &m, 1}, "type must be"},
        {{NULL, "x", NULL, &m, 1}, "type must be"},
        {{"run", "x", NULL, NULL, 0}, "at least one message"},
        {{"cancel", "x", NULL, &m, 1}, "only allowed for run and resume"},
        {{"run", "x", NULL, &bad_role, 1}, "messages[0].role must not be empty"},
        {{"run", "x", NULL, &bad_utf8, 1}, "messages[0].content is not valid UTF-8"},
        {{"run", "x", "\xc3", &m, 1}, "conversation_id is not valid UTF-8"},
        {{"run", "x", NULL, NULL, 2}, "messages is NULL"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct bq_msg out = {NULL, 0, 0, false, 0, 0};
        bq_err err;
        CHECK_INT(bq_task_encode(&cases[i].t, &out, &err), BQ_EINVAL);
        CHECK_CONTAINS(err.msg, cases[i].expect);
        CHECK(out.data == NULL);
    }
}

TEST(ids_refuse_control_characters)
{
    static const struct {
        const char *id;
        size_t len;
        const char *why; /* NULL: a valid id */
    } cases[] = {
        {"task-1", 6, NULL},
        {"caf\xc3\xa9 \xc2\xa0nbsp ~", 14, NULL}, /* U+00A0 is not a control */
        {"victim\0attacker", 15, "contains a control character (U+0000 at byte 6)"},
        {"a\nb", 3, "contains a control character (U+000A at byte 1)"},
        {"\x1b[2J", 4, "contains a control character (U+001B at byte 0)"},
        {"del\x7f", 4, "contains a control character (U+007F at byte 3)"},
        {"x\xc2\x9b" "2J", 5, "contains a control character (U+009B at byte 1)"},
        {"x\xc2\x80", 3, "contains a control character (U+0080 at byte 1)"},
        {"", 0, "must not be empty"},
        {"a\x9b", 2, "is not valid UTF-8 (byte 1)"},
    };
    char why[BQ_ID_WHY_SIZE];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        why[0] = '\0';
        CHECK_INT(bq_id_check(cases[i].id, cases[i].len, why), cases[i].why == NULL);
        if (cases[i].why)
            CHECK_STR(why, cases[i].why);
    }
    char longest[BQ_MAX_ID_LEN + 1];
    memset(longest, 'a', sizeof longest);
    CHECK(bq_id_check(longest, BQ_MAX_ID_LEN, NULL));
    CHECK(!bq_id_check(longest, BQ_MAX_ID_LEN + 1, why));
    CHECK_STR(why, "is longer than 256 bytes");
    /* the C producer and the control channel follow the same rule */
    struct bq_message m = {"user", "hi"};
    struct bq_task t = {"cancel", "victim\x1b]52;c;x\x07", NULL, NULL, 0};
    struct bq_msg out = {NULL, 0, 0, false, 0, 0};
    bq_err err;
    CHECK_INT(bq_task_encode(&t, &out, &err), BQ_EINVAL);
    CHECK_STR(err.msg, "task_id contains a control character (U+001B at byte 6)");
    t = (struct bq_task){"run", "ok", "c\r", &m, 1};
    CHECK_INT(bq_task_encode(&t, &out, &err), BQ_EINVAL);
    CHECK_STR(err.msg, "conversation_id contains a control character (U+000D at byte 1)");
    char id[BQ_MAX_ID_LEN + 1], msg[BQ_MAX_ID_LEN + 16];
    CHECK_INT(bq_control_parse("cancel victim\0attacker", 22, id, sizeof id), BQ_CONTROL_NONE);
    CHECK_INT(bq_control_parse("pause a\nb", 9, id, sizeof id), BQ_CONTROL_NONE);
    CHECK_INT(bq_control_parse("cancel victim", 13, id, sizeof id), BQ_CONTROL_CANCEL);
    CHECK_STR(id, "victim");
    CHECK_INT(bq_control_format(msg, sizeof msg, BQ_CONTROL_CANCEL, "a\x1b"), -1);
}

TEST(dead_letter_entry_keeps_the_bytes)
{
    const char raw[] = "not json \xff\n{}";
    struct bq_dlq_info info = {NULL, "invalid UTF-8 at byte 10", NULL, NULL, NULL, "bindu:tasks",
                               "w1", 0, 0};
    struct bq_msg e;
    CHECK_INT(bq_dlq_entry(&info, raw, sizeof raw - 1, &e), BQ_OK);
    const char *nl = memchr(e.data, '\n', e.len);
    CHECK(nl != NULL);
    if (nl != NULL) {
        CHECK_INT((size_t)(e.data + e.len - (nl + 1)), sizeof raw - 1);
        CHECK(memcmp(nl + 1, raw, sizeof raw - 1) == 0);
        CHECK(strncmp(e.data, "{\"reason\":\"invalid UTF-8 at byte 10\",\"queue\":\"bindu:tasks\","
                              "\"worker\":\"w1\",\"attempts\":0,\"failed_at\":\"", 97) == 0);
    }
    bq_free(e.data);

    struct bq_dlq_info f = {NULL, "boom", "{\"code\":\"EHANDLER\"}", "t1", "run", "q", "w", 1, 0};
    CHECK_INT(bq_dlq_entry(&f, "{}", 2, &e), BQ_OK);
    CHECK_CONTAINS(e.data, "\"error\":{\"code\":\"EHANDLER\"},\"task_id\":\"t1\",\"type\":\"run\"");
    bq_free(e.data);

    /* a message too large to keep: its length, "truncated", and only its first bytes */
    char big[4096];
    memset(big, 'x', sizeof big);
    struct bq_dlq_info t = {NULL, "message too large", NULL, NULL, NULL, "q", "w", 0, 4096};
    CHECK_INT(bq_dlq_entry(&t, big, sizeof big, &e), BQ_OK);
    CHECK_CONTAINS(e.data, ",\"size\":4096,\"truncated\":true}\n");
    nl = memchr(e.data, '\n', e.len);
    CHECK(nl != NULL && (size_t)(e.data + e.len - (nl + 1)) == BQ_DLQ_KEEP);
    bq_free(e.data);
}

TEST(config_precedence)
{
    struct bq_config cfg;
    bq_err err;
    unsetenv("REDIS_URL");
    unsetenv("REDIS_QUEUE_NAME");
    unsetenv("REDIS_MAX_CONNECTIONS");
    CHECK_INT(bq_config_resolve(NULL, &cfg, &err), BQ_OK);
    CHECK(cfg.url == NULL); /* the in-memory default */
    CHECK_STR(cfg.queue_name, "bindu:tasks");
    CHECK_INT(cfg.max_connections, 10);
    bq_config_free(&cfg);

    setenv("REDIS_URL", "redis://envhost:1/0", 1);
    setenv("REDIS_QUEUE_NAME", "env:q", 1);
    setenv("REDIS_MAX_CONNECTIONS", "7", 1);
    CHECK_INT(bq_config_resolve(NULL, &cfg, &err), BQ_OK);
    CHECK_STR(cfg.url, "redis://envhost:1/0");
    CHECK_STR(cfg.url_source, "REDIS_URL");
    CHECK_STR(cfg.queue_name, "env:q");
    CHECK_INT(cfg.max_connections, 7);
    bq_config_free(&cfg);

    struct bq_client_options o = {.url = "redis://opt:2/0", .queue_name = "opt:q", .max_connections = 3};
    CHECK_INT(bq_config_resolve(&o, &cfg, &err), BQ_OK);
    CHECK_STR(cfg.url, "redis://opt:2/0");
    CHECK_STR(cfg.url_source, "scheduler.url");
    CHECK_STR(cfg.queue_name, "opt:q");
    CHECK_INT(cfg.max_connections, 3);
    bq_config_free(&cfg);

    struct bq_client_options mem = {.memory = true};
    CHECK_INT(bq_config_resolve(&mem, &cfg, &err), BQ_OK);
    CHECK(cfg.url == NULL);
    bq_config_free(&cfg);

    setenv("REDIS_MAX_CONNECTIONS", "lots", 1);
    CHECK_INT(bq_config_resolve(NULL, &cfg, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "REDIS_MAX_CONNECTIONS");
    CHECK_CONTAINS(err.msg, "'lots'");
    bq_config_free(&cfg);
    unsetenv("REDIS_URL");
    unsetenv("REDIS_QUEUE_NAME");
    unsetenv("REDIS_MAX_CONNECTIONS");
}

struct dotenv_seen {
    char text[512];
};

static void dotenv_collect(void *ud, const char *name, char *value)
{
    struct dotenv_seen *s = ud;
    size_t n = strlen(s->text);
    snprintf(s->text + n, sizeof s->text - n, "%s=[%s];", name, value);
    bq_free(value);
}

/* .env lines as python-dotenv reads them (the subset env.h names). */
TEST(dotenv_lines)
{
    static const char text[] =
        "# a comment\n"
        "\n"
        "export SCHEDULER_TYPE=redis\n"
        "REDIS_URL=\"redis://h:1/0\"\n"
        "QUEUE_NAME = 'a b' # why\n"
        "BARE=two words # comment\n"
        "HASH=a#b\n"
        "ESC=\"x\\ny\\\"z\"\n"
        "EMPTY=\n"
        "EMPTYQ=\"\"\n"
        "CRLF=v\r\n"
        "not a setting\n"
        "OPEN=\"never closed\n"
        "9LIVES=x\n"
        "LAST=end";
    struct dotenv_seen s = {{0}};
    int skipped = bq_dotenv_parse(text, sizeof text - 1, dotenv_collect, &s);
    CHECK_STR(s.text, "SCHEDULER_TYPE=[redis];REDIS_URL=[redis://h:1/0];QUEUE_NAME=[a b];"
                      "BARE=[two words];HASH=[a#b];ESC=[x\ny\"z];EMPTY=[];EMPTYQ=[];CRLF=[v];"
                      "LAST=[end];");
    CHECK_INT(skipped, 3);
}

/* A header binduq embeds in a message in Bindu's format, found by broker.h's rule. */
TEST(embedded_headers_are_found_by_their_shape)
{
    static const char op[] = "{\"operation\": \"run\", \"params\": {\"task_id\": \"t\"}, "
                             "\"trace_id\": null, \"span_id\": null}";
    char m[512];
    snprintf(m, sizeof m, "%.*s,\"binduq\":{\"attempt\":2,\"id\":\"x\"}}", (int)strlen(op) - 1, op);
    size_t k = bq_embedded_header(m, strlen(m));
    CHECK_INT(k, strlen(op) - 1);
    CHECK(bq_bindu_form(op, strlen(op)));
    CHECK_INT(bq_embedded_header(op, strlen(op)), 0); /* none */
    static const char *const no[] = {
        "{\"type\":\"run\",\"binduq\":{\"attempt\":2}}",                 /* native */
        "{\"operation\":\"run\",\"binduq\":{\"a\":{\"b\":1}}}",            /* nested */
        "{\"operation\":\"run\",\"x\":{\"attempt\":2}}",                   /* another key */
        "{\"operation\":\"run\"\"binduq\":{\"attempt\":2}}",              /* no comma */
        "{\"operation\":\"run\",\"binduq\":{\"attempt\":2}} ",            /* not at the end */
        "#bq {}\n{\"operation\":\"run\"}",
        "{\"operation\":\"run\",\"binduq\":{}",
    };
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        CHECK_INT(bq_embedded_header(no[i], strlen(no[i])), 0);
    /* an object longer than BQ_EMBED_MAX is not a header binduq wrote */
    char big[2200];
    int n = snprintf(big, sizeof big, "{\"operation\":\"run\",\"binduq\":{\"pad\":\"");
    memset(big + n, 'p', 1100);
    snprintf(big + n + 1100, sizeof big - (size_t)n - 1100, "\"}}");
    CHECK_INT(bq_embedded_header(big, strlen(big)), 0);
    struct bq_msg msg = {m, strlen(m), 0, false, 0, 0};
    CHECK(bq_msg_has_header(&msg));
}

TEST(config_queue_order)
{
    struct bq_config cfg;
    bq_err err;
    unsetenv("BINDUQ_QUEUE_ORDER");
    CHECK_INT(bq_config_resolve(NULL, &cfg, &err), BQ_OK);
    CHECK_INT(bq_orders_of(&cfg.orders, "bindu:tasks"), BQ_ORDER_LPUSH); /* the default */
    bq_config_free(&cfg);
    setenv("BINDUQ_QUEUE_ORDER", "RPUSH", 1);
    CHECK_INT(bq_config_resolve(NULL, &cfg, &err), BQ_OK);
    CHECK_INT(bq_orders_of(&cfg.orders, "any"), BQ_ORDER_RPUSH);
    bq_config_free(&cfg);
    /* the option beats the environment; a queue's own order beats both */
    const char *per[] = {"jobs", "rpush", "other", "lpush", NULL};
    struct bq_client_options o = {.order = "lpush", .queue_orders = per};
    CHECK_INT(bq_config_resolve(&o, &cfg, &err), BQ_OK);
    CHECK_INT(bq_orders_of(&cfg.orders, "bindu:tasks"), BQ_ORDER_LPUSH);
    CHECK_INT(bq_orders_of(&cfg.orders, "jobs"), BQ_ORDER_RPUSH);
    CHECK_INT(bq_orders_of(&cfg.orders, "other"), BQ_ORDER_LPUSH);
    bq_config_free(&cfg);
    setenv("BINDUQ_QUEUE_ORDER", "fifo", 1);
    CHECK_INT(bq_config_resolve(NULL, &cfg, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "BINDUQ_QUEUE_ORDER: expected \"lpush\" or \"rpush\", got 'fifo'");
    bq_config_free(&cfg);
    unsetenv("BINDUQ_QUEUE_ORDER");
    const char *bad[] = {"jobs", "left", NULL};
    struct bq_client_options ob = {.queue_orders = bad};
    CHECK_INT(bq_config_resolve(&ob, &cfg, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "order of queue 'jobs'");
    bq_config_free(&cfg);
}

/* Captures what bq_log writes to stderr. */
static char *capture_log(void (*fn)(void))
{
    static char buf[4096];
    int fds[2];
    if (pipe(fds) != 0)
        return NULL;
    int saved = dup(2);
    dup2(fds[1], 2);
    fn();
    dup2(saved, 2);
    close(saved);
    close(fds[1]);
    ssize_t n = read(fds[0], buf, sizeof buf - 1);
    close(fds[0]);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

static void log_sample(void)
{
    bq_log(BQ_LOG_INFO, "completed", "task_id", "t 1", "queue", "bindu:tasks", "#duration_ms",
           "1.5", "skipped", (const char *)NULL, "note", "a\"b", NULL);
    bq_log(BQ_LOG_DEBUG, "hidden", "k", "v", NULL);
}

TEST(log_lines)
{
    CHECK_INT(bq_log_set_level("info"), BQ_OK);
    CHECK_INT(bq_log_set_format("text"), BQ_OK);
    const char *text = capture_log(log_sample);
    CHECK_CONTAINS(text, " info completed task_id=\"t 1\" queue=bindu:tasks duration_ms=1.5 "
                         "note=\"a\\\"b\"\n");
    CHECK_NOT_CONTAINS(text, "hidden");
    CHECK_INT(bq_log_set_format("json"), BQ_OK);
    const char *json = capture_log(log_sample);
    CHECK_CONTAINS(json, "\"level\":\"info\",\"event\":\"completed\",\"task_id\":\"t 1\","
                         "\"queue\":\"bindu:tasks\",\"duration_ms\":1.5,\"note\":\"a\\\"b\"}\n");
    CHECK_INT(bq_log_set_format("yaml"), BQ_EINVAL);
    CHECK_INT(bq_log_set_level("loud"), BQ_EINVAL);
    bq_log_set_format("text");
}

/* One formatted line, stamped "T". */
static const char *log_fmt(bool json, const char *event, size_t n, const char *const *keys,
                           const char *const *vals)
{
    static char line[2 * BQ_LOG_MAX_LINE];
    bq_buf b = BQ_BUF_INIT;
    bq_log_format(&b, json, "T", BQ_LOG_INFO, event, n, keys, vals);
    snprintf(line, sizeof line, "%s", b.oom ? "(oom)" : bq_buf_cstr(&b));
    bq_buf_free(&b);
    return line;
}

/* Exactly one line: valid UTF-8, ends in its only '\n', no other control, DEL or C1. */
static bool one_clean_line(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || s[len - 1] != '\n' || !bq_utf8_valid(s, len, NULL))
        return false;
    for (size_t i = 0; i + 1 < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || (c == 0xc2 && (unsigned char)s[i + 1] < 0xa0))
            return false;
    }
    return true;
}

static void log_hostile(void)
{
    bq_log(BQ_LOG_INFO, "a\nb", "k\n2026-01-01T00:00:00Z error x", "v", "#n", "-nan", "#i",
           "inf", "bad\xff", "\xc2\x9b", NULL);
}

/* What bq_log writes: one line whatever the event, keys and values hold; JSON that parses. */
TEST(log_lines_cannot_be_forged)
{
    CHECK_INT(bq_log_set_level("info"), BQ_OK);
    CHECK_INT(bq_log_set_format("text"), BQ_OK);
    const char *text = capture_log(log_hostile);
    CHECK_CONTAINS(text, " info \"a\\nb\" \"k\\n2026-01-01T00:00:00Z error x\"=v n=NaN i=Infinity "
                         "\"bad\\xff\"=\"\\u{9b}\"\n");
    CHECK(one_clean_line(text));
    CHECK_INT(bq_log_set_format("json"), BQ_OK);
    const char *json = capture_log(log_hostile);
    CHECK_CONTAINS(json, "\"event\":\"a\\nb\",\"k\\n2026-01-01T00:00:00Z error x\":\"v\","
                         "\"n\":\"NaN\",\"i\":\"Infinity\",\"bad\\ufffd\":\"\\u009b\"}\n");
    CHECK(one_clean_line(json));
    bq_log_set_format("text");
}

TEST(log_lines_are_escaped)
{
    const char *keys[] = {"k\r", "osc", "c1", "bad", "del", "x=y", "ok", "#nan", "#inf", "#ninf",
                          "#n", "#forged"};
    const char *vals[] = {"v\n2026-01-01T00:00:00Z error forged", "\x1b]52;c;QQ==\x07", "\xc2\x9b",
                          "\xff\xc3", "\x7f", "", "caf\xc3\xa9", "-nan", "inf", "-inf", "1.5e3",
                          "1,\"admin\":true"};
    const char *text = log_fmt(false, "a\nb", 12, keys, vals);
    CHECK_STR(text, "T info \"a\\nb\" \"k\\r\"=\"v\\n2026-01-01T00:00:00Z error forged\" "
                    "osc=\"\\x1b]52;c;QQ==\\x07\" c1=\"\\u{9b}\" bad=\"\\xff\\xc3\" "
                    "del=\"\\x7f\" \"x=y\"=\"\" ok=caf\xc3\xa9 nan=NaN inf=Infinity "
                    "ninf=-Infinity n=1.5e3 forged=\"1,\\\"admin\\\":true\"\n");
    CHECK(one_clean_line(text));
    const char *json = log_fmt(true, "a\nb", 12, keys, vals);
    CHECK_STR(json, "{\"ts\":\"T\",\"level\":\"info\",\"event\":\"a\\nb\",\"k\\r\":"
                    "\"v\\n2026-01-01T00:00:00Z error forged\",\"osc\":\"\\u001b]52;c;QQ==\\u0007\","
                    "\"c1\":\"\\u009b\",\"bad\":\"\\ufffd\\ufffd\",\"del\":\"\\u007f\",\"x=y\":\"\","
                    "\"ok\":\"caf\xc3\xa9\",\"nan\":\"NaN\",\"inf\":\"Infinity\",\"ninf\":\"-Infinity\","
                    "\"n\":1.5e3,\"forged\":\"1,\\\"admin\\\":true\"}\n");
    CHECK(one_clean_line(json));
    /* Keys are cleaned of invalid UTF-8 too. */
    const char *k2[] = {"\xc0\xaf\xed\xa0\x80"}, *v2[] = {"x"};
    CHECK_STR(log_fmt(true, "e", 1, k2, v2), "{\"ts\":\"T\",\"level\":\"info\",\"event\":\"e\","
                                             "\"\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\":\"x\"}\n");
    CHECK_STR(log_fmt(false, "e", 1, k2, v2), "T info e \"\\xc0\\xaf\\xed\\xa0\\x80\"=x\n");

    /* A long line is cut between two UTF-8 sequences (text), or replaced (JSON). */
    static char big[3 * BQ_LOG_MAX_LINE];
    for (size_t i = 0; i + 2 < sizeof big; i += 2)
        memcpy(big + i, "\xc3\xa9", 2);
    const char *k3[] = {"big"}, *v3[] = {big};
    text = log_fmt(false, "e", 1, k3, v3);
    CHECK(strlen(text) <= BQ_LOG_MAX_LINE);
    CHECK(strlen(text) >= BQ_LOG_MAX_LINE - 8);
    CHECK_CONTAINS(text, "...\n");
    CHECK(one_clean_line(text));
    json = log_fmt(true, "e", 1, k3, v3);
    CHECK_STR(json, "{\"ts\":\"T\",\"level\":\"info\",\"event\":\"log_truncated\"}\n");
}

TEST(pickup_latency_rejects_absurd_timestamps)
{
    const struct {
        double in;
        bool ok;
        double out;
    } cases[] = {
        {0.0, true, 0.0},       {0.25, true, 0.25},       {-0.5, true, 0.0},
        {-1.0, true, 0.0},      {-1.001, false, 0},       {-86400.0, false, 0},
        {BQ_PICKUP_MAX, true, BQ_PICKUP_MAX},             {BQ_PICKUP_MAX + 1, false, 0},
        {6.4e10, false, 0} /* year 1 */,                  {NAN, false, 0},
        {INFINITY, false, 0},   {-INFINITY, false, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double v = cases[i].in;
        CHECK_INT(bq_pickup_accept(&v), cases[i].ok);
        if (cases[i].ok)
            CHECK(v == cases[i].out);
    }
}

/* run_at's ISO 8601 with a zone (wire.h), against timegm for what it accepts. */
TEST(run_at_parses_iso8601_with_a_zone)
{
    const struct {
        const char *in;
        double out; /* -1: refused */
    } cases[] = {
        {"1970-01-01T00:00:00Z", 0},
        {"2026-12-03T10:00:00Z", 1796292000},
        {"2026-12-03t10:00:00z", 1796292000},
        {"2026-12-03 10:00:00Z", 1796292000},
        {"2026-12-03T11:00:00.250+01:00", 1796292000.25},
        {"2026-12-03T11:00:00,5+0100", 1796292000.5},
        {"2026-12-03T05:30-04:30", 1796292000},
        {"2026-12-03T12:00+02", 1796292000},
        {"2024-02-29T00:00:00Z", 1709164800},
        {"2026-12-03T10:00:00", -1},   /* no zone */
        {"2025-02-29T00:00:00Z", -1},  /* not a leap year */
        {"2026-13-01T00:00:00Z", -1},
        {"2026-12-03T24:00:00Z", -1},
        {"2026-12-03T10:00:00+24:00", -1},
        {"2026-12-03T10:00:00.Z", -1},
        {"2026-12-03T10:00:00Zjunk", -1},
        {"tomorrow", -1},
        {"", -1},
        {"1796292000", -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double t = -1;
        const char *why = bq_wire_parse_time(cases[i].in, strlen(cases[i].in), &t);
        if (cases[i].out < 0) {
            CHECK(why != NULL);
            if (why != NULL)
                CHECK_CONTAINS(why, "run_at");
        } else {
            CHECK(why == NULL);
            if (fabs(t - cases[i].out) > 1e-6)
                printf("  %s: %.6f, want %.6f\n", cases[i].in, t, cases[i].out);
            CHECK(fabs(t - cases[i].out) <= 1e-6);
        }
    }
}

/* delay and run_at: one of them, each within its bounds, naming the field. */
TEST(when_refuses_bad_delays_and_times_naming_the_field)
{
    double now = 1796292000;
    CHECK(bq_wire_when_problem(false, 0, false, 0, now) == NULL);
    CHECK(bq_wire_when_problem(true, 0, false, 0, now) == NULL);
    CHECK(bq_wire_when_problem(true, 0.5, false, 0, now) == NULL);
    CHECK(bq_wire_when_problem(true, BQ_MAX_DURATION, false, 0, now) == NULL);
    CHECK(bq_wire_when_problem(false, 0, true, now - 3600, now) == NULL); /* past: at once */
    CHECK(bq_wire_when_problem(false, 0, true, now + 86400, now) == NULL);
    CHECK_STR(bq_wire_when_problem(true, -1, false, 0, now), "delay is negative");
    CHECK_STR(bq_wire_when_problem(true, NAN, false, 0, now), "delay is not a number");
    CHECK_STR(bq_wire_when_problem(true, INFINITY, false, 0, now), "delay is infinite");
    CHECK_STR(bq_wire_when_problem(true, BQ_MAX_DURATION + 1, false, 0, now),
              "delay is longer than 365 days");
    CHECK_STR(bq_wire_when_problem(true, 1, true, now, now), BQ_WIRE_WHEN_BOTH);
    CHECK_STR(bq_wire_when_problem(false, 0, true, NAN, now), "run_at is not a number");
    CHECK_STR(bq_wire_when_problem(false, 0, true, -5, now),
              "run_at must be after 1970 (seconds since the epoch)");
    CHECK_CONTAINS(bq_wire_when_problem(false, 0, true, now * 1000, now), "not milliseconds");
}

TEST(buf_out_of_memory_is_sticky)
{
    bq_buf b = BQ_BUF_INIT;
    bq_alloc_fail_after(0);
    bq_buf_puts(&b, "x");
    bq_alloc_fail_after(-1);
    bq_buf_puts(&b, "y");
    CHECK(b.oom);
    CHECK(bq_buf_cstr(&b) == NULL);
    CHECK(bq_buf_detach(&b, NULL) == NULL);
    bq_buf_free(&b);
}

TEST(sliding_window)
{
    size_t expired;
    double wait;
    /* empty log: admitted */
    CHECK(bq_window_admit(NULL, 0, 10.0, 3, 1.0, &expired, &wait));
    CHECK_INT(expired, 0);
    CHECK(wait == 0);
    /* three in the last second, limit 3: wait for the oldest to leave */
    double t[] = {9.2, 9.5, 9.9};
    CHECK(!bq_window_admit(t, 3, 10.0, 3, 1.0, &expired, &wait));
    CHECK_INT(expired, 0);
    CHECK(fabs(wait - 0.2) < 1e-9);
    /* at 10.2 the first has left: admitted, one expired */
    CHECK(bq_window_admit(t, 3, 10.2, 3, 1.0, &expired, &wait));
    CHECK_INT(expired, 1);
    /* at 10.7 two have left, at 10.95 all three */
    CHECK(bq_window_admit(t, 3, 10.7, 3, 1.0, &expired, &wait));
    CHECK_INT(expired, 2);
    CHECK(bq_window_admit(t, 3, 10.95, 3, 1.0, &expired, &wait));
    CHECK_INT(expired, 3);
    /* limit 1 */
    double one[] = {5.0};
    CHECK(!bq_window_admit(one, 1, 5.5, 1, 2.0, &expired, &wait));
    CHECK(fabs(wait - 1.5) < 1e-9);
    /* any window of `period` holds at most `limit` admissions: simulate a steady demand */
    double log[4096];
    size_t n = 0, admitted = 0;
    for (double now = 0; now < 10.0; now += 0.001) {
        if (bq_window_admit(log, n, now, 50, 1.0, &expired, &wait)) {
            memmove(log, log + expired, (n - expired) * sizeof *log);
            n -= expired;
            log[n++] = now;
            admitted++;
        } else {
            memmove(log, log + expired, (n - expired) * sizeof *log);
            n -= expired;
            CHECK(wait >= 0 && wait <= 1.0);
        }
        CHECK(n <= 50);
    }
    CHECK_INT(admitted, 500);
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(seed * 31u + i);
}

static int intact(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed * 31u + i))
            return 0;
    return 1;
}

TEST(arena_blocks_keep_their_bytes)
{
    bq_arena *a = bq_arena_new(0);
    CHECK(a != NULL);
    /* Every size up to past the arena's limit, then resized up and down across classes and
     * across the limit: the contents survive every move. */
    enum { N = BQ_ARENA_MAX + 100 };
    unsigned char *b[N + 1] = {0};
    for (size_t n = 1; n <= N; n++) {
        b[n] = bq_arena_lua_alloc(a, NULL, 5 /* LUA_TTABLE: a kind, not a size */, n);
        CHECK(b[n] != NULL);
        CHECK(((uintptr_t)b[n] & 15) == 0);
        fill(b[n], n, (unsigned)n);
    }
    for (size_t n = 1; n <= N; n++)
        CHECK(intact(b[n], n, (unsigned)n));
    for (size_t n = 1; n <= N; n += 7) {
        size_t up = n * 3 + 1, down = n / 2 + 1, keep = down < n ? down : n;
        b[n] = bq_arena_lua_alloc(a, b[n], n, up);
        CHECK(b[n] != NULL && intact(b[n], n, (unsigned)n));
        b[n] = bq_arena_lua_alloc(a, b[n], up, down);
        CHECK(b[n] != NULL && intact(b[n], keep, (unsigned)n));
        fill(b[n], down, (unsigned)n);
        CHECK(bq_arena_lua_alloc(a, b[n], down, 0) == NULL);
        b[n] = NULL;
    }
    for (size_t n = 1; n <= N; n++)
        if (b[n] != NULL)
            CHECK(bq_arena_lua_alloc(a, b[n], n, 0) == NULL);
#if !defined(__SANITIZE_ADDRESS__)
    /* A freed block is the next one of its class; a resize within a class stays put. */
    void *x = bq_arena_lua_alloc(a, NULL, 0, 40);
    CHECK(bq_arena_lua_alloc(a, x, 40, 48) == x);
    bq_arena_lua_alloc(a, x, 48, 0);
    CHECK(bq_arena_lua_alloc(a, NULL, 0, 33) == x);
    size_t held = bq_arena_held(a);
    CHECK(held > 0 && held % (32 * 1024) == 0);
    /* Reuse does not grow the arena. */
    for (int i = 0; i < 10000; i++) {
        void *y = bq_arena_lua_alloc(a, NULL, 0, 100);
        bq_arena_lua_alloc(a, y, 100, 0);
    }
    CHECK_INT(bq_arena_held(a), held);
    bq_arena_lua_alloc(a, x, 33, 0);
#endif
    bq_arena_free(a);
    bq_arena_free(NULL);
}

TEST(arena_stops_growing_at_its_bound)
{
    /* Two chunks at most; 5,000 live blocks of 100 bytes need fifteen. (valgrind's leak check
     * sees a block freed to the wrong side: nothing else points at it once b[i] is NULL.) */
    bq_arena *a = bq_arena_new(64 * 1024);
    CHECK(a != NULL);
    enum { N = 5000 };
    static unsigned char *b[N];
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            b[i] = bq_arena_lua_alloc(a, NULL, 0, 100);
            CHECK(b[i] != NULL);
            fill(b[i], 100, (unsigned)i);
        }
        /* Resizes within the class stay put, whichever side the block came from. */
        for (int i = 0; i < N; i += 97) {
            unsigned char *r = bq_arena_lua_alloc(a, b[i], 100, 110);
#if !defined(__SANITIZE_ADDRESS__)
            CHECK(r == b[i]);
#endif
            b[i] = r;
        }
        for (int i = 0; i < N; i++)
            CHECK(intact(b[i], 100, (unsigned)i));
        /* Freed in an order that mixes the arena's blocks and the C library's. */
        for (int i = 0; i < N; i += 2)
            b[i] = bq_arena_lua_alloc(a, b[i], i % 97 == 0 ? 110 : 100, 0);
        for (int i = 1; i < N; i += 2)
            b[i] = bq_arena_lua_alloc(a, b[i], i % 97 == 0 ? 110 : 100, 0);
#if !defined(__SANITIZE_ADDRESS__)
        CHECK(bq_arena_held(a) <= 64 * 1024);
#endif
    }
    bq_arena_free(a);
}

TEST(arena_out_of_memory_keeps_the_old_block)
{
    bq_arena *a = bq_arena_new(0);
    CHECK(a != NULL);
    unsigned char *p = bq_arena_lua_alloc(a, NULL, 0, 24);
    REQUIRE(p != NULL);
    fill(p, 24, 9);
    /* Use up the current chunk's room for the largest class, then fail every allocation. */
    void *keep[300] = {0};
    int n = 0;
    while (n < 64 && (keep[n] = bq_arena_lua_alloc(a, NULL, 0, BQ_ARENA_MAX)) != NULL)
        n++;
    bq_alloc_fail_after(0);
    void *q = NULL;
    while (n < 300 && (q = bq_arena_lua_alloc(a, NULL, 0, BQ_ARENA_MAX)) != NULL)
        keep[n++] = q;
    CHECK(q == NULL);
    CHECK(bq_arena_lua_alloc(a, p, 24, 4000) == NULL); /* a failed move */
    bq_alloc_fail_after(-1);
    CHECK(intact(p, 24, 9));
    unsigned char *r = bq_arena_lua_alloc(a, p, 24, 4000);
    CHECK(r != NULL && intact(r, 24, 9));
    bq_arena_lua_alloc(a, r, 4000, 0);
    for (int i = 0; i < n; i++)
        bq_arena_lua_alloc(a, keep[i], BQ_ARENA_MAX, 0);
    bq_arena_free(a);
}

TEST(script_sha1s_are_the_scripts)
{
    /* embed.lua names each script by sha1sum at build time; EVALSHA needs exactly that. */
    const struct {
        const char *src, *sha;
    } s[] = {
#define S(v) {bq_script_##v, bq_script_##v##_sha}
        S(bury_3),    S(enqueue_N),   S(fetch_2),     S(fetchm_N), S(handback_2),
        S(heartbeat_N), S(promote_2), S(ratelimit_N), S(reap_4),   S(requeue_3),
        S(retry_3),   S(unregister_2),
#undef S
    };
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned n = 0;
        CHECK(EVP_Digest(s[i].src, strlen(s[i].src), md, &n, EVP_sha1(), NULL) == 1 && n == 20);
        char hex[41];
        for (unsigned k = 0; k < 20; k++)
            snprintf(hex + 2 * k, 3, "%02x", md[k]);
        CHECK_STR(hex, s[i].sha);
    }
}

TEST(optional_libraries_fail_with_a_reason)
{
    char why[300] = "";
    CHECK(bq_dl_open("libbinduq-no-such-library.so.9", why, sizeof why) == NULL);
    CHECK_CONTAINS(why, "libbinduq-no-such-library.so.9");
    void *lib = bq_dl_open("libc.so.6", why, sizeof why);
    CHECK(lib != NULL);
    size_t (*len)(const char *) = NULL;
    CHECK(bq_dl_sym(lib, "strlen", &len, sizeof len, why, sizeof why));
    CHECK(len != NULL && len("four") == 4);
    void (*none)(void) = NULL;
    CHECK(!bq_dl_sym(lib, "bq_no_such_function", &none, sizeof none, why, sizeof why));
    CHECK_CONTAINS(why, "has no bq_no_such_function");
    CHECK(none == NULL);
}

static struct {
    size_t (*strlen)(const char *);
    void (*bq_no_such_function)(void);
} libc_fns;

static int fills;

static bool fill_libc_strlen(void *lib, char *why, size_t size)
{
    fills++;
    BQ_DL_SYM(libc_fns, strlen)
    return true;
}

static bool fill_libc_missing(void *lib, char *why, size_t size)
{
    fills++;
    BQ_DL_SYM(libc_fns, bq_no_such_function)
    return true;
}

TEST(an_optional_library_is_loaded_once_and_remembers_why_not)
{
    static struct bq_dl_lib ok = {.soname = "libc.so.6", .fill = fill_libc_strlen};
    static struct bq_dl_lib missing = {.soname = "libc.so.6", .fill = fill_libc_missing};
    static struct bq_dl_lib absent = {.soname = "libbinduq-no-such-library.so.9",
                                      .fill = fill_libc_strlen};
    fills = 0;
    CHECK(bq_dl_load(&ok) == NULL);
    CHECK(bq_dl_load(&ok) == NULL);
    CHECK(libc_fns.strlen != NULL && libc_fns.strlen("four") == 4);
    const char *why = bq_dl_load(&missing);
    REQUIRE(why != NULL);
    CHECK_CONTAINS(why, "has no bq_no_such_function");
    CHECK(bq_dl_load(&missing) == why);
    why = bq_dl_load(&absent);
    REQUIRE(why != NULL);
    CHECK_CONTAINS(why, "libbinduq-no-such-library.so.9");
    CHECK_INT(fills, 2); /* each library was filled once; the absent one never */
}

static bool mapped(const char *name)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    bool found = false;
    while (f != NULL && !found && fgets(line, sizeof line, f) != NULL)
        found = strstr(line, name) != NULL;
    if (f != NULL)
        fclose(f);
    return found;
}

/* That binduq-lua maps none of the optional libraries until it uses them is checked in
 * tests/host (this test program links libpq, which links OpenSSL). */
TEST(openssl_loads_every_function)
{
    bq_err err;
    CHECK_INT(bq_ssl_load(&err), BQ_OK);
    CHECK(mapped("libssl.so"));
    const void *const *fn = (const void *const *)(const void *)&bq_ssl;
    size_t missing = 0;
    for (size_t i = 0; i < sizeof bq_ssl / sizeof(void *); i++)
        missing += fn[i] == NULL;
    CHECK_INT(missing, 0);
    CHECK_INT(bq_ssl_load(&err), BQ_OK); /* once per process */
}

static int to_buf(void *ud, const char *p, size_t n)
{
    bq_buf_append(ud, p, n);
    return 0;
}

/* Filters `in` split into chunks of `step` bytes (0: whole), returns the output (owned). */
static char *bulkcap_run(const char *in, size_t len, size_t max, size_t step)
{
    struct bq_bulkcap f;
    bq_bulkcap_init(&f, max);
    bq_buf b = BQ_BUF_INIT;
    for (size_t i = 0; i < len;) {
        size_t n = step == 0 || len - i < step ? len - i : step;
        bq_bulkcap_feed(&f, in + i, n, to_buf, &b);
        i += n;
    }
    bq_buf_putc(&b, '\0');
    return bq_buf_detach(&b, NULL);
}

TEST(bulkcap_replaces_oversized_bulks_whatever_the_chunks)
{
    char big[300 + 40];
    memcpy(big, "$300\r\n", 6);
    memset(big + 6, 'z', 300);
    memcpy(big + 306, "\r\n", 3);
    char in[1024];
    int n = snprintf(in, sizeof in, "*5\r\n$3\r\nabc\r\n$10\r\n0123456789\r\n:5\r\n$-1\r\n%s"
                                    "+OK\r\n$5\r\nfive!\r\n", big);
    char want[2048];
    char hexz[2 * BQ_BULKCAP_KEEP + 1];
    for (int i = 0; i < BQ_BULKCAP_KEEP; i++)
        memcpy(hexz + 2 * i, "7a", 2);
    hexz[2 * BQ_BULKCAP_KEEP] = '\0';
    snprintf(want, sizeof want, "*5\r\n$3\r\nabc\r\n-BQOVERSIZE 10 30313233343536373839\r\n"
             ":5\r\n$-1\r\n-BQOVERSIZE 300 %s\r\n+OK\r\n$5\r\nfive!\r\n", hexz);
    size_t steps[] = {0, 1, 2, 3, 7, 64};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        char *out = bulkcap_run(in, (size_t)n, 5, steps[i]);
        CHECK_STR(out, want);
        bq_free(out);
    }
    /* every split point into two chunks */
    for (int cut = 1; cut < n; cut++) {
        struct bq_bulkcap f;
        bq_bulkcap_init(&f, 5);
        bq_buf b = BQ_BUF_INIT;
        bq_bulkcap_feed(&f, in, (size_t)cut, to_buf, &b);
        bq_bulkcap_feed(&f, in + cut, (size_t)(n - cut), to_buf, &b);
        bq_buf_putc(&b, '\0');
        if (strcmp(b.p, want) != 0) {
            CHECK_STR(b.p, want);
            bq_buf_free(&b);
            break;
        }
        bq_buf_free(&b);
    }
    /* hiredis reads the result as the same shape, and the marker gives length and prefix */
    char *out = bulkcap_run(in, (size_t)n, 5, 0);
    redisReader *r = redisReaderCreate();
    redisReaderFeed(r, out, strlen(out));
    void *rep = NULL;
    CHECK_INT(redisReaderGetReply(r, &rep), REDIS_OK);
    const redisReply *a = rep;
    CHECK(a != NULL && a->type == REDIS_REPLY_ARRAY && a->elements == 5);
    if (a != NULL && a->elements == 5) {
        unsigned long long size = 0;
        unsigned char prefix[BQ_BULKCAP_KEEP];
        size_t plen = 0;
        CHECK(bq_bulkcap_marker(a->element[1]->str, a->element[1]->len, &size, prefix, &plen));
        CHECK(size == 10 && plen == 10 && memcmp(prefix, "0123456789", 10) == 0);
        CHECK(bq_bulkcap_marker(a->element[4]->str, a->element[4]->len, &size, prefix, &plen));
        CHECK(size == 300 && plen == BQ_BULKCAP_KEEP && prefix[0] == 'z');
        CHECK(!bq_bulkcap_marker("ERR wrong type", 14, &size, prefix, &plen));
        CHECK(!bq_bulkcap_marker("BQOVERSIZE 12 zz", 16, &size, prefix, &plen));
    }
    freeReplyObject(rep);
    redisReaderFree(r);
    bq_free(out);
    /* under the cap, the stream is unchanged */
    out = bulkcap_run(in, (size_t)n, 1000, 1);
    CHECK_STR(out, in);
    bq_free(out);
}

/* Before: bq_abstime_after(inf) converted inf to time_t (undefined), the timed wait failed
 * with EINVAL, and bq_slot_sleep spun at 100 % holding the slot lock. */
TEST(durations_refuse_infinity_and_clock_calls_survive_it)
{
    CHECK(bq_duration_problem(0) == NULL);
    CHECK(bq_duration_problem(2.5) == NULL);
    CHECK(bq_duration_problem(BQ_MAX_DURATION) == NULL);
    CHECK_STR(bq_duration_problem(NAN), "is not a number");
    CHECK_STR(bq_duration_problem(INFINITY), "is infinite");
    CHECK_STR(bq_duration_problem(-INFINITY), "is infinite");
    CHECK_STR(bq_duration_problem(-0.5), "is negative");
    CHECK_STR(bq_duration_problem(1e300), "is longer than 365 days");

    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double far[] = {INFINITY, 1e300, NAN, -1, -INFINITY};
    for (size_t i = 0; i < sizeof far / sizeof far[0]; i++) {
        struct timespec ts = bq_abstime_after(far[i]);
        CHECK(ts.tv_nsec >= 0 && ts.tv_nsec < 1000000000L);
        CHECK(ts.tv_sec >= now.tv_sec && ts.tv_sec <= now.tv_sec + (time_t)BQ_MAX_DURATION + 1);
    }

    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv;
    CHECK_INT(bq_cond_init(&cv), 0);
    pthread_mutex_lock(&mu);
    double t0 = bq_now_mono();
    CHECK(bq_cond_wait_for(&cv, &mu, NAN));   /* NaN: no wait at all */
    CHECK(bq_cond_wait_for(&cv, &mu, 0.001)); /* and a short one still times out */
    pthread_mutex_unlock(&mu);
    bq_sleep(NAN);
    bq_sleep(-INFINITY);
    CHECK(bq_now_mono() - t0 < 5); /* neither hung: they returned at all */
    pthread_cond_destroy(&cv);

    struct bq_slot_ctl ctl = {0};
    pthread_mutex_init(&ctl.mu, NULL);
    bq_cond_init(&ctl.cv);
    CHECK(bq_slot_sleep(&ctl, NAN));
    CHECK(bq_slot_sleep(&ctl, -1));
    atomic_store(&ctl.interrupt, 1); /* an interrupted slot: infinity returns at once */
    CHECK(!bq_slot_sleep(&ctl, INFINITY));
    pthread_cond_destroy(&ctl.cv);
    pthread_mutex_destroy(&ctl.mu);
}

TEST(iso8601_agrees_with_gmtime)
{
    /* Every day from 1900 to 2200 both ways, and times of day against gmtime_r + snprintf. */
    for (long z = -25567; z < 84000; z++) {
        long y;
        int m, d;
        bq_civil_from_days(z, &y, &m, &d);
        if (bq_days_from_civil(y, m, d) != z) {
            CHECK_INT(bq_days_from_civil(y, m, d), z);
            break;
        }
    }
    const double samples[] = {0, 0.5, 59.999, 86399.9994, 951782400.25, 1709202896.123,
                              1767225599.001, 4102444800.0, 7258118399.5, -1.5, -86400.0};
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        double t = samples[i];
        char got[32], want[96];
        bq_iso8601(t, got, sizeof got);
        time_t secs = (time_t)floor(t);
        struct tm tm;
        gmtime_r(&secs, &tm);
        int ms = (int)((t - floor(t)) * 1000.0);
        snprintf(want, sizeof want, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
        CHECK_STR(got, want);
    }
    char small[20];
    bq_iso8601(0, small, sizeof small); /* too small: cut, never overrun */
    CHECK_STR(small, "1970-01-01T00:00:00");
}

static bool uuid_shaped(const char *u)
{
    if (strlen(u) != 36 || u[14] != '4' || !strchr("89ab", u[19]))
        return false;
    for (int i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? u[i] != '-' : !strchr("0123456789abcdef", u[i]))
            return false;
    }
    return true;
}

TEST(uuid4_is_version_4_and_unique_across_fork)
{
    enum { N = 2000 };
    static char ids[N][37];
    for (int i = 0; i < N; i++) {
        bq_uuid4(ids[i]);
        CHECK(uuid_shaped(ids[i]));
    }
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++)
            if (strcmp(ids[i], ids[j]) == 0)
                CHECK(!"a repeated uuid");
    /* A child must not hand out the random bytes its parent has not used yet. */
    int fd[2];
    CHECK(pipe(fd) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        char c[37];
        bq_uuid4(c);
        ssize_t w = write(fd[1], c, sizeof c);
        _exit(w == (ssize_t)sizeof c ? 0 : 1);
    }
    char mine[37], theirs[37] = "";
    bq_uuid4(mine);
    CHECK(read(fd[0], theirs, sizeof theirs) == (ssize_t)sizeof theirs);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(uuid_shaped(theirs));
    CHECK(strcmp(mine, theirs) != 0);
    close(fd[0]);
    close(fd[1]);
}

TEST(outcome_names_and_kinds_round_trip)
{
    for (int k = 0; k < BQ_OUTCOME_COUNT; k++) {
        enum bq_outcome_kind got = BQ_OUTCOME_COUNT;
        CHECK(bq_outcome_kind_of(bq_outcome_name((enum bq_outcome_kind)k), &got));
        CHECK_INT(got, k);
    }
    enum bq_outcome_kind got = BQ_OUTCOME_COMPLETED;
    CHECK(!bq_outcome_kind_of("complete", &got));
    CHECK(!bq_outcome_kind_of("", &got));
    CHECK(!bq_outcome_kind_of(NULL, &got));
    CHECK_INT(got, BQ_OUTCOME_COMPLETED); /* untouched */
    CHECK_STR(bq_outcome_name(BQ_OUTCOME_COUNT), "?");
}

int main(void)
{
    RUN(backoff_grows_and_caps);
    RUN(json_strings);
    RUN(seconds_and_integers_without_printf);
    RUN(json_strings_by_word);
    RUN(utf8_validation);
    RUN(key_layout);
    RUN(task_encoding);
    RUN(task_validation_names_the_field);
    RUN(ids_refuse_control_characters);
    RUN(dead_letter_entry_keeps_the_bytes);
    RUN(config_precedence);
    RUN(config_queue_order);
    RUN(embedded_headers_are_found_by_their_shape);
    RUN(dotenv_lines);
    RUN(log_lines);
    RUN(log_lines_are_escaped);
    RUN(log_lines_cannot_be_forged);
    RUN(pickup_latency_rejects_absurd_timestamps);
    RUN(run_at_parses_iso8601_with_a_zone);
    RUN(when_refuses_bad_delays_and_times_naming_the_field);
    RUN(buf_out_of_memory_is_sticky);
    RUN(sliding_window);
    RUN(arena_blocks_keep_their_bytes);
    RUN(arena_stops_growing_at_its_bound);
    RUN(arena_out_of_memory_keeps_the_old_block);
    RUN(script_sha1s_are_the_scripts);
    RUN(optional_libraries_fail_with_a_reason);
    RUN(openssl_loads_every_function);
    RUN(durations_refuse_infinity_and_clock_calls_survive_it);
    RUN(bulkcap_replaces_oversized_bulks_whatever_the_chunks);
    RUN(iso8601_agrees_with_gmtime);
    RUN(uuid4_is_version_4_and_unique_across_fork);
    RUN(outcome_names_and_kinds_round_trip);
    RUN(an_optional_library_is_loaded_once_and_remembers_why_not);
    return check_report("test_core");
}
