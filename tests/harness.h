/* tests/harness.h - the tiny test runner of moexc's test suite (no framework).

   A test is a function `static void test_name(void)` that calls TH_CHECK;
   main() runs each with TH_RUN(test_name) and returns th_summary().
   A test passes when none of its checks failed. The last line printed is
   "N passed, N failed" and the exit status is non-zero on any failure. */
#ifndef MOEXC_TEST_HARNESS_H
#define MOEXC_TEST_HARNESS_H
#include <stdio.h>
#include <string.h>
#include <math.h>

typedef struct th_state {
    int tests_passed, tests_failed;
    int checks_in_test, failures_in_test;
    const char *current;
} th_state;

static th_state th;

/* Record one check; print the first few failures of a test with file:line. */
#define TH_CHECK(cond, ...) do {                                                  \
        th.checks_in_test++;                                                      \
        if (!(cond)) {                                                            \
            if (th.failures_in_test++ < 8) {                                      \
                printf("  FAIL %s:%d in %s: ", __FILE__, __LINE__, th.current);   \
                printf(__VA_ARGS__);                                              \
                printf("\n");                                                     \
            }                                                                     \
        }                                                                         \
    } while (0)

/* |got - want| <= atol + rtol * |want|, NaN always fails. */
#define TH_CHECK_NEAR(got, want, atol, rtol, ...) do {                            \
        double th_g_ = (double)(got), th_w_ = (double)(want);                     \
        double th_tol_ = (atol) + (rtol) * fabs(th_w_);                           \
        TH_CHECK(fabs(th_g_ - th_w_) <= th_tol_, "got %.9g want %.9g (tol %.3g): %s", \
                 th_g_, th_w_, th_tol_, __VA_ARGS__);                             \
    } while (0)

#define TH_RUN(fn) do {                                                           \
        th.current = #fn; th.checks_in_test = 0; th.failures_in_test = 0;         \
        fn();                                                                     \
        if (th.failures_in_test == 0 && th.checks_in_test > 0) {                  \
            th.tests_passed++;                                                    \
            printf("ok   %-40s (%d checks)\n", #fn, th.checks_in_test);           \
        } else {                                                                  \
            th.tests_failed++;                                                    \
            printf("FAIL %-40s (%d of %d checks failed%s)\n", #fn,                \
                   th.failures_in_test, th.checks_in_test,                        \
                   th.checks_in_test == 0 ? "; a test with no checks fails" : ""); \
        }                                                                         \
        fflush(stdout);                                                           \
    } while (0)

static int th_summary(void)
{
    printf("%d passed, %d failed\n", th.tests_passed, th.tests_failed);
    return th.tests_failed != 0 || th.tests_passed == 0;
}
#endif
