/* tests/test_alloc_hooks.c - MOEXC_MALLOC / MOEXC_REALLOC / MOEXC_FREE at run time.

   This translation unit holds its own copy of the implementation (MOEXC_STATIC)
   built over counting allocators, and is not linked with build/moexc.o.
   For each scenario (a public function that allocates, then its cleanup):
   1. a normal run succeeds, the hooks see at least one allocation, and every
      block is freed again;
   2. the run is repeated with the k-th allocation failing, for every k the
      normal run made: each must return MOEXC_ERR_NOMEM (never crash) and
      leave no block behind. */
#include <stdlib.h>
#include <string.h>
#include <float.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct hook_state {
    long calls;      /* allocation requests (malloc and realloc) this run */
    long fail_at;    /* the request that fails (-1: none)                 */
    long live;       /* blocks currently allocated                        */
    size_t refuse_above; /* requests of more bytes fail, uncounted (0: off)  */
} hook_state;
static hook_state hooks = { 0, -1, 0, 0 };

static void *hook_malloc(size_t n)
{
    void *p;
    if (hooks.refuse_above && n > hooks.refuse_above) return NULL;
    if (hooks.calls++ == hooks.fail_at) return NULL;
    p = malloc(n);
    if (p) hooks.live++;
    return p;
}
static void *hook_realloc(void *old, size_t n)
{
    void *p;
    if (hooks.refuse_above && n > hooks.refuse_above) return NULL;
    if (hooks.calls++ == hooks.fail_at) return NULL;
    p = realloc(old, n);
    if (p && !old) hooks.live++;
    return p;
}
static void hook_free(void *p)
{
    if (p) hooks.live--;
    free(p);
}

#define MOEXC_MALLOC(sz)     hook_malloc(sz)
#define MOEXC_REALLOC(p, sz) hook_realloc((p), (sz))
#define MOEXC_FREE(p)        hook_free(p)
#define MOEXC_STATIC
#define MOEXC_IMPLEMENTATION
#include "../moexc.h"
#include "harness.h"

#define TMP_PATH "test_alloc_hooks.tmp"

/* ---- scenarios: allocate through the public API, clean up, return status -- */
static double last_loss;   /* loss of the last successful model step */

static moexc_status run_model(int step)
{
    moexc_model_config cfg;
    moexc_model *m = NULL;
    moexc_status st;
    moexc_loss_stats ls;
    uint16_t in[8] = { 1, 2, 3, 4, 5, 6, 7, 8 }, tg[8] = { 2, 3, 4, 5, 6, 7, 8, 9 };
    memset(&cfg, 0, sizeof cfg);
    memset(&ls, 0, sizeof ls);
    cfg.d_model = 16; cfg.n_heads = 2; cfg.n_layers = 1; cfg.context = 8;
    cfg.ffn = MOEXC_FFN_MOE; cfg.n_experts = 4; cfg.top_k = 2; cfg.seed = 1;
    st = moexc_model_create(&m, &cfg, NULL);
    if (step && st == MOEXC_OK) st = moexc_model_forward(m, in, tg, 2, 4, &ls, NULL);
    if (step && st == MOEXC_OK) st = moexc_model_backward(m, NULL);
    last_loss = ls.loss;
    moexc_model_free(m);
    return st;
}
static moexc_status run_model_create(void) { return run_model(0); }
static moexc_status run_model_step(void) { return run_model(1); }

static moexc_status run_corpus(void)
{
    moexc_tokens t;
    moexc_status st;
    memset(&t, 0, sizeof t);
    st = moexc_corpus_builtin(&t, 3000, 7, NULL);
    moexc_tokens_free(&t);
    return st;
}

static moexc_status run_safetensors(void)
{
    static const float data[6] = { 1, 2, 3, 4, 5, 6 };
    moexc_st_entry e;
    moexc_st_kv kv = { "format", "pt" };
    moexc_st_file *f = NULL;
    moexc_status st;
    memset(&e, 0, sizeof e);
    e.name = "w"; e.data = data; e.ndim = 2; e.shape[0] = 2; e.shape[1] = 3;
    st = moexc_st_save(TMP_PATH, &e, 1, &kv, 1, NULL);
    if (st == MOEXC_OK) st = moexc_st_open(&f, TMP_PATH, NULL);
    moexc_st_close(f);
    return st;
}

static moexc_status run_crosscoder(void)
{
    moexc_xc_options opt;
    moexc_xc *xc = NULL;
    moexc_status st;
    memset(&opt, 0, sizeof opt);
    opt.n_latents = 32; opt.k = 4; opt.n_shared = 4; opt.seed = 3;
    st = moexc_xc_create(&xc, 8, 8, &opt, NULL);
    moexc_xc_free(xc);
    return st;
}

static moexc_status run_histogram(void)
{
    moexc_histogram h;
    moexc_status st;
    memset(&h, 0, sizeof h);
    st = moexc_histogram_init(&h, 10, 0.0, 1.0, 0, NULL);
    if (st == MOEXC_OK) moexc_histogram_free(&h);
    return st;
}

/* ---- the sweep ---------------------------------------------------------------- */
/* may_recover: a failing allocation may also give MOEXC_OK, with the same loss
   (moexc_sgemm allocates packing buffers and, being void, falls back to an
   unpacked loop when they are refused). */
static void sweep(const char *name, moexc_status (*scenario)(void), int may_recover)
{
    long total, k, wrong = 0, leaks = 0, recovered = 0;
    double ref_loss;
    moexc_status st;
    hooks.calls = 0; hooks.fail_at = -1; hooks.live = 0;
    st = scenario();
    total = hooks.calls;
    ref_loss = last_loss;
    TH_CHECK(st == MOEXC_OK, "%s: normal run returned %s", name, moexc_status_name(st));
    TH_CHECK(total > 0, "%s: the hooks saw no allocation", name);
    TH_CHECK(hooks.live == 0, "%s: %ld blocks not freed", name, hooks.live);
    for (k = 0; k < total; k++) {
        hooks.calls = 0; hooks.fail_at = k; hooks.live = 0;
        st = scenario();
        if (st == MOEXC_OK && may_recover && fabs(last_loss - ref_loss) <= 1e-5 * fabs(ref_loss)) {
            recovered++;
        } else if (st != MOEXC_ERR_NOMEM) {
            if (wrong++ < 3)
                printf("     %s: allocation %ld of %ld failing gave %s (loss %.9g, normal %.9g)\n", name, k, total,
                       moexc_status_name(st), last_loss, ref_loss);
        }
        if (hooks.live != 0 && leaks++ < 3)
            printf("     %s: allocation %ld failing leaked %ld blocks\n", name, k, hooks.live);
    }
    printf("     %s: %ld allocations, each made to fail once: %ld NOMEM, %ld recovered\n", name, total,
           total - recovered - wrong, recovered);
    TH_CHECK(wrong == 0, "%s: %ld failed allocations neither NOMEM nor recovered", name, wrong);
    TH_CHECK(leaks == 0, "%s: %ld failure paths leaked", name, leaks);
}

static void test_model_create(void) { sweep("model_create", run_model_create, 0); }
static void test_model_step(void) { sweep("model_create+forward+backward", run_model_step, 1); }
static void test_corpus(void) { sweep("corpus_builtin", run_corpus, 0); }
static void test_safetensors(void) { sweep("st_save+st_open", run_safetensors, 0); remove(TMP_PATH); }
static void test_crosscoder(void) { sweep("xc_create", run_crosscoder, 0); }
static void test_histogram(void) { sweep("histogram_init", run_histogram, 0); }

static void test_aligned_floats(void)
{
    /* the private aligned allocator also goes through the hooks */
    float *p;
    hooks.calls = 0; hooks.fail_at = -1; hooks.live = 0;
    p = moexc__alloc_floats(100);
    TH_CHECK(p != NULL && ((uintptr_t)p % 64) == 0 && hooks.calls == 1 && hooks.live == 1,
             "alloc_floats: %p, %ld calls, %ld live", (void *)p, hooks.calls, hooks.live);
    moexc__free_aligned(p);
    TH_CHECK(hooks.live == 0, "free_aligned left %ld blocks", hooks.live);
    hooks.calls = 0; hooks.fail_at = 0;
    TH_CHECK(moexc__alloc_floats(100) == NULL, "a failing hook must give NULL");
    hooks.fail_at = -1;
}

/* moexc_sgemm with no memory for its packing buffers falls back to an
   unpacked loop. When the threads share a product by claiming rows, each
   must run that loop on its own claims only: the result is the same bits on
   1, 2 and 3 threads, and close to the packed product. Shapes on the
   claiming path (M >= N, K <= MOEXC_GEMM_KC), with beta != 0 so that rows
   done twice would show; refusing requests over 256 bytes leaves the
   team's slab counters and takes the buffers, refusing every request takes
   both (the fixed split then). */
static void test_sgemm_without_buffers(void)
{
    static const int shapes[][3] = { { 300, 70, 50 }, { 2048, 16, 40 }, { 301, 45, 80 } };   /* >= 2^20 multiply-adds: threaded */
    moexc_rng rng;
    int s, threads;
#ifdef _OPENMP
    const int max_threads = omp_get_max_threads();
#endif
    moexc_rng_seed(&rng, 11);
    for (s = 0; s < 6; s++) {
        const int M = shapes[s % 3][0], N = shapes[s % 3][1], K = shapes[s % 3][2];
        const size_t refuse_above = s < 3 ? 256 : 1;
        float *A = (float *)malloc((size_t)M * K * sizeof(float)), *B = (float *)malloc((size_t)K * N * sizeof(float));
        float *C0 = (float *)malloc((size_t)M * N * sizeof(float)), *packed = (float *)malloc((size_t)M * N * sizeof(float));
        float *one = (float *)malloc((size_t)M * N * sizeof(float)), *C = (float *)malloc((size_t)M * N * sizeof(float));
        size_t i;
        double worst = 0.0;
        for (i = 0; i < (size_t)M * K; i++) A[i] = 2.0f * moexc_rng_uniform(&rng) - 1.0f;
        for (i = 0; i < (size_t)K * N; i++) B[i] = 2.0f * moexc_rng_uniform(&rng) - 1.0f;
        for (i = 0; i < (size_t)M * N; i++) C0[i] = 2.0f * moexc_rng_uniform(&rng) - 1.0f;
        memcpy(packed, C0, (size_t)M * N * sizeof(float));
        moexc_sgemm(0, 1, M, N, K, 0.75f, A, K, B, K, 0.5f, packed, N);
        for (threads = 1; threads <= 3; threads++) {
            float *out = threads == 1 ? one : C;
#ifdef _OPENMP
            omp_set_num_threads(threads);
#endif
            memcpy(out, C0, (size_t)M * N * sizeof(float));
            hooks.refuse_above = refuse_above;
            moexc_sgemm(0, 1, M, N, K, 0.75f, A, K, B, K, 0.5f, out, N);
            hooks.refuse_above = 0;
            if (threads > 1)
                TH_CHECK(memcmp(one, C, (size_t)M * N * sizeof(float)) == 0,
                         "no packing memory (over %lu bytes): 1 vs %d threads differ (M %d N %d K %d)",
                         (unsigned long)refuse_above, threads, M, N, K);
        }
        /* |a b| <= 1 per term: K + 4 roundings of at most 0.75 K + 0.5 */
        for (i = 0; i < (size_t)M * N; i++) worst = fmax(worst, fabs((double)one[i] - (double)packed[i]));
        TH_CHECK(worst <= (K + 4) * FLT_EPSILON * (0.75 * K + 0.5) * 2.0,
                 "no packing memory (over %lu bytes): %g from the packed product (M %d N %d K %d)",
                 (unsigned long)refuse_above, worst, M, N, K);
        free(A); free(B); free(C0); free(packed); free(one); free(C);
    }
#ifdef _OPENMP
    omp_set_num_threads(max_threads);
#endif
}

int main(void)
{
    TH_RUN(test_sgemm_without_buffers);
    TH_RUN(test_aligned_floats);
    TH_RUN(test_histogram);
    TH_RUN(test_corpus);
    TH_RUN(test_safetensors);
    TH_RUN(test_crosscoder);
    TH_RUN(test_model_create);
    TH_RUN(test_model_step);
    return th_summary();
}
