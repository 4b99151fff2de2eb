/*
 * check.h -- a tiny test harness for binduq's C tests.
 *
 *   TEST(name) { CHECK_INT(a, b); CHECK_STR(s, "x"); CHECK(cond); }
 *   int main(void) { RUN(name); ... return check_report("test_file"); }
 *
 * Each failed check prints file:line and both values and marks the test failed; the test goes
 * on (so one run shows every broken expectation). check_report prints "N passed, N failed"
 * (", N skipped" when tests were skipped) and returns the exit status.
 */
#ifndef BINDUQ_CHECK_H
#define BINDUQ_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failed_now, check_passed, check_failed, check_skipped;
static const char *check_skip_reason;

#define TEST(name) static void name(void)

#define RUN(name)                                                                              \
    do {                                                                                       \
        check_failed_now = 0;                                                                  \
        check_skip_reason = NULL;                                                              \
        name();                                                                                \
        if (check_skip_reason) {                                                               \
            check_skipped++;                                                                   \
            printf("skip %s (%s)\n", #name, check_skip_reason);                                \
        } else if (check_failed_now) {                                                         \
            check_failed++;                                                                    \
            printf("FAIL %s\n", #name);                                                        \
        } else {                                                                               \
            check_passed++;                                                                    \
            printf("ok   %s\n", #name);                                                        \
        }                                                                                      \
        fflush(stdout);                                                                        \
    } while (0)

#define SKIP(reason)                                                                           \
    do {                                                                                       \
        check_skip_reason = (reason);                                                          \
        return;                                                                                \
    } while (0)

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            printf("  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);                  \
            check_failed_now = 1;                                                              \
        }                                                                                      \
    } while (0)

/* CHECK that ends the test when it fails: for what the rest of the test dereferences. */
#define REQUIRE(cond)                                                                          \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            printf("  %s:%d: REQUIRE(%s) failed\n", __FILE__, __LINE__, #cond);                \
            check_failed_now = 1;                                                              \
            return;                                                                            \
        }                                                                                      \
    } while (0)

#define CHECK_INT(a, b)                                                                        \
    do {                                                                                       \
        long long va_ = (long long)(a), vb_ = (long long)(b);                                  \
        if (va_ != vb_) {                                                                      \
            printf("  %s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, #a, #b,     \
                   va_, vb_);                                                                  \
            check_failed_now = 1;                                                              \
        }                                                                                      \
    } while (0)

#define CHECK_STR(a, b)                                                                        \
    do {                                                                                       \
        const char *sa_ = (a), *sb_ = (b);                                                     \
        if (sa_ == NULL || sb_ == NULL ? sa_ != sb_ : strcmp(sa_, sb_) != 0) {                 \
            printf("  %s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__, __LINE__, #a, #b, \
                   sa_ ? sa_ : "(null)", sb_ ? sb_ : "(null)");                                \
            check_failed_now = 1;                                                              \
        }                                                                                      \
    } while (0)

#define CHECK_CONTAINS(hay, needle)                                                            \
    do {                                                                                       \
        const char *h_ = (hay), *n_ = (needle);                                                \
        if (h_ == NULL || strstr(h_, n_) == NULL) {                                            \
            printf("  %s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__,            \
                   h_ ? h_ : "(null)", n_);                                                    \
            check_failed_now = 1;                                                              \
        }                                                                                      \
    } while (0)

#define CHECK_NOT_CONTAINS(hay, needle)                                                        \
    do {                                                                                       \
        const char *h_ = (hay), *n_ = (needle);                                                \
        if (h_ != NULL && strstr(h_, n_) != NULL) {                                            \
            printf("  %s:%d: \"%s\" contains \"%s\"\n", __FILE__, __LINE__, h_, n_);           \
            check_failed_now = 1;                                                              \
        }                                                                                      \
    } while (0)

static inline int check_report(const char *suite)
{
    printf("%s: %d passed, %d failed", suite, check_passed, check_failed);
    if (check_skipped)
        printf(", %d skipped", check_skipped);
    printf("\n");
    return check_failed ? 1 : 0;
}

#endif
