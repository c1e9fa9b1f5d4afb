/* tests/counting_alloc.h - the implementation compiled into a test file
   (MOEXC_STATIC) with a counting allocator, plus small file helpers.

   Include it instead of moexc.h + harness.h. Every allocation of the library
   goes through test_malloc/test_realloc/test_free, so a test can assert that
   nothing leaked (g_live_blocks back where it started) and can make the k-th
   allocation fail (g_fail_at = k) to walk every out-of-memory path.
   Temporary files go next to the test binary: call tmp_dir_from_argv0(argv[0])
   first in main(). */
#ifndef MOEXC_TEST_COUNTING_ALLOC_H
#define MOEXC_TEST_COUNTING_ALLOC_H
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

static long g_live_blocks;      /* allocations not yet freed             */
static long g_alloc_calls;      /* allocations attempted                 */
static long g_fail_at = -1;     /* make allocation number g_fail_at fail */

static void *test_malloc(size_t n)
{
    void *p;
    if (g_alloc_calls++ == g_fail_at) return NULL;
    p = malloc(n);
    if (p) g_live_blocks++;
    return p;
}
static void *test_realloc(void *old, size_t n)
{
    void *p;
    if (g_alloc_calls++ == g_fail_at) return NULL;
    p = realloc(old, n);
    if (p && !old) g_live_blocks++;
    return p;
}
static void test_free(void *p)
{
    if (p) g_live_blocks--;
    free(p);
}

/* With MOEXC_STATIC, declarations of functions a test does not use would
   warn "declared static but never defined". */
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic ignored "-Wunused-function"
#endif
#define MOEXC_STATIC
#define MOEXC_MALLOC(sz) test_malloc(sz)
#define MOEXC_REALLOC(p, sz) test_realloc((p), (sz))
#define MOEXC_FREE(p) test_free(p)
#define MOEXC_IMPLEMENTATION
#include "../moexc.h"
#include "harness.h"

static char g_tmpdir[1024] = ".";

/* The directory of the test binary (from argv[0]) holds its temporary files. */
static void tmp_dir_from_argv0(const char *argv0)
{
    const char *slash = argv0 ? strrchr(argv0, '/') : NULL;
    if (slash) {
        size_t n = (size_t)(slash - argv0);
        if (n < sizeof(g_tmpdir)) { memcpy(g_tmpdir, argv0, n); g_tmpdir[n] = '\0'; }
    }
}

static const char *tmp_path(const char *name)
{
    static char buf[2048];
    snprintf(buf, sizeof(buf), "%s/%s", g_tmpdir, name);
    return buf;
}

/* A whole file in a fresh malloc'd buffer (NULL if it cannot be read). */
static unsigned char *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long n;
    *size = 0;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = (unsigned char *)malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    *size = (size_t)n;
    return buf;
}
#endif
