/* tools/tool_clock.h - a wall clock and a median for the command-line tools
   and benchmarks (progress lines, ETAs, timed steps). Define
   _POSIX_C_SOURCE 200809L before any include to get clock_gettime. */
#ifndef MOEXC_TOOL_CLOCK_H
#define MOEXC_TOOL_CLOCK_H
#include <stdlib.h>
#include <time.h>

/* Not every tool uses every helper. */
#if defined(__GNUC__) || defined(__clang__)
#define TOOL_MAYBE_UNUSED __attribute__((unused))
#else
#define TOOL_MAYBE_UNUSED
#endif

/* Seconds on a monotonic wall clock (CPU time where there is none). On
   Windows clock() is the wall time since the process started (mingw-w64's
   clock_gettime would need libwinpthread). */
static TOOL_MAYBE_UNUSED double now_seconds(void)
{
#if defined(CLOCK_MONOTONIC) && !defined(_WIN32)
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#else
    return (double)clock() / CLOCKS_PER_SEC;
#endif
}

static TOOL_MAYBE_UNUSED int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of v[0..n) (sorts v in place; n >= 1). */
static TOOL_MAYBE_UNUSED double median_in_place(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return v[n / 2];
}
#endif
