/* tools/bench_gemm.c - GEMM throughput of moexc_sgemm in the three layouts of
   a linear layer's training step, next to OpenBLAS's cblas_sgemm (built with
   -DMOEXC_BENCH_OPENBLAS) and the machine's fp32 peak (measured by an FMA
   throughput probe), on 1 thread and on --threads N (default 2).

   usage: bench_gemm [reps] [--cpu-time] [--threads N] [--json PATH] [--help]
          (default 31 repetitions per entry)

   Ours and OpenBLAS run interleaved, repetition by repetition: a repetition
   times one call of each (or as many calls as last 5 ms) right after each
   other, so background load hits both alike; which one runs first
   alternates. Each entry reports the median and the best GFLOP/s, and the
   median of the per-repetition ratios. The worst entry of a run is the
   minimum over 54 noisy medians: with moexc timed against itself (both
   sides the same code) 31 repetitions put it at 0.94 in two runs on the
   shared 2-vCPU host this was tuned on; 7 repetitions of 20 ms batches
   read 0.91-0.95.
   --cpu-time times the 1-thread entries (and the 1-thread peak) by the
   thread's CPU clock instead of the wall clock, which leaves out the time the
   thread sat descheduled on a busy machine (both libraries then run on the
   calling thread).
   --json PATH writes the run's results for tools/bench_summary.py: the
   worst moexc / OpenBLAS ratio over every shape and thread count (each a
   median over repetitions) and the 1024^3 rates of the three layouts on N
   threads (the "same-run GEMM rate" of the other benchmarks' ratios).
   `make bench-gemm` runs it with OPENBLAS_CORETYPE=SkylakeX. */
#define _POSIX_C_SOURCE 199309L
#include "moexc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tool_clock.h"
#include "fma_peak.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef MOEXC_BENCH_OPENBLAS
#include <cblas.h>
#endif

/* Let the other library's idle worker threads stop spinning (OpenMP and
   OpenBLAS both busy-wait a little after a parallel call) before a
   repetition's pair of batches. */
static void settle(void)
{
    struct timespec ts = { 0, 3000000 };   /* 3 ms */
    nanosleep(&ts, NULL);
}

static void set_threads(int threads)
{
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
#ifdef MOEXC_BENCH_OPENBLAS
    openblas_set_num_threads(threads);
#endif
    (void)threads;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
static double best(const double *v, int n)
{
    double b = v[0];
    int i;
    for (i = 1; i < n; i++) if (v[i] > b) b = v[i];
    return b;
}

/* ---- the three layouts -------------------------------------------------- */
/* W (N x K), X (M x K), Y / dY (M x N):
     forward   Y  = X W^T      sgemm(0, 1, M, N, K)
     input     dX = dY W       sgemm(0, 0, M, K, N)
     weight    dW += dY^T X    sgemm(1, 0, N, K, M)                          */
enum { LAYOUT_FORWARD, LAYOUT_INPUT, LAYOUT_WEIGHT };
static const char *const layout_names[] = { "Y=XW^T", "dX=dYW", "dW+=dY^TX" };

typedef struct bench_case {
    int layout, M, N, K;
    float *X, *W, *dY, *out;    /* out sized for the largest of Y, dX, dW */
} bench_case;

static void run_ours(const bench_case *b)
{
    switch (b->layout) {
    case LAYOUT_FORWARD: moexc_sgemm(0, 1, b->M, b->N, b->K, 1.0f, b->X, b->K, b->W, b->K, 0.0f, b->out, b->N); break;
    case LAYOUT_INPUT:   moexc_sgemm(0, 0, b->M, b->K, b->N, 1.0f, b->dY, b->N, b->W, b->K, 0.0f, b->out, b->K); break;
    default:             moexc_sgemm(1, 0, b->N, b->K, b->M, 1.0f, b->dY, b->N, b->X, b->K, 1.0f, b->out, b->K); break;
    }
}

#ifdef MOEXC_BENCH_OPENBLAS
static void run_openblas(const bench_case *b)
{
    switch (b->layout) {
    case LAYOUT_FORWARD: cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b->M, b->N, b->K, 1.0f,
                                     b->X, b->K, b->W, b->K, 0.0f, b->out, b->N); break;
    case LAYOUT_INPUT:   cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b->M, b->K, b->N, 1.0f,
                                     b->dY, b->N, b->W, b->K, 0.0f, b->out, b->K); break;
    default:             cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, b->N, b->K, b->M, 1.0f,
                                     b->dY, b->N, b->X, b->K, 1.0f, b->out, b->K); break;
    }
}
#endif

/* GFLOP/s of one timed batch of `calls` calls (sized to last >= 5 ms) */
static double time_batch(void (*fn)(const bench_case *), const bench_case *b, int calls, int cpu_time)
{
    double flops = 2.0 * b->M * b->N * b->K * calls, t0;
    int c;
    t0 = cpu_time ? thread_cpu_seconds() : now_seconds();
    for (c = 0; c < calls; c++) fn(b);
    return flops / ((cpu_time ? thread_cpu_seconds() : now_seconds()) - t0) * 1e-9;
}

#define MAX_REPS 63

/* Time one shape and layout; prints a table row, returns our median and best. */
static void bench_one(int layout, int M, int N, int K, int threads, int reps, double peak, int cpu_time,
                      double *our_median, double *our_best, double *their_median, double *ratio_median)
{
    bench_case b;
    size_t big = (size_t)M * (size_t)(N > K ? N : K);
    double ours[MAX_REPS], theirs[MAX_REPS], ratio[MAX_REPS], of_peak[MAX_REPS], t0;
    int calls, r;
    moexc_rng rng;
    size_t i;
    if ((size_t)N * (size_t)K > big) big = (size_t)N * (size_t)K;
    b.layout = layout; b.M = M; b.N = N; b.K = K;
    b.X = (float *)malloc((size_t)M * K * sizeof(float));
    b.W = (float *)malloc((size_t)N * K * sizeof(float));
    b.dY = (float *)malloc((size_t)M * N * sizeof(float));
    b.out = (float *)calloc(big, sizeof(float));
    if (!b.X || !b.W || !b.dY || !b.out) { printf("out of memory\n"); exit(1); }
    moexc_rng_seed(&rng, 42);
    for (i = 0; i < (size_t)M * K; i++) b.X[i] = moexc_rng_uniform(&rng) - 0.5f;
    for (i = 0; i < (size_t)N * K; i++) b.W[i] = moexc_rng_uniform(&rng) - 0.5f;
    for (i = 0; i < (size_t)M * N; i++) b.dY[i] = moexc_rng_uniform(&rng) - 0.5f;

    set_threads(threads);
    run_ours(&b);                               /* warm-up, and size the batch */
    t0 = now_seconds();
    run_ours(&b);
    calls = (int)(0.005 / (now_seconds() - t0 + 1e-9)) + 1;
#ifdef MOEXC_BENCH_OPENBLAS
    run_openblas(&b);
#endif
    /* Each repetition times a batch of ours and one of OpenBLAS (one call,
       or as many as last 5 ms) right after each other, then a short FMA
       probe, so that a slow phase of the (shared) host hits both alike: the
       ratio and /peak columns are medians of per-repetition ratios. Odd
       repetitions time OpenBLAS first, so that neither library always has
       the same place in the pair. */
    for (r = 0; r < reps; r++) {
        double peak_now;
        settle();
#ifdef MOEXC_BENCH_OPENBLAS
        if (r % 2) theirs[r] = time_batch(run_openblas, &b, calls, cpu_time);
        ours[r] = time_batch(run_ours, &b, calls, cpu_time);
        if (r % 2 == 0) theirs[r] = time_batch(run_openblas, &b, calls, cpu_time);
#else
        ours[r] = time_batch(run_ours, &b, calls, cpu_time);
        theirs[r] = 0.0;
#endif
        peak_now = fma_peak(threads, 1, 4000000L, cpu_time);
        ratio[r] = theirs[r] > 0.0 ? ours[r] / theirs[r] : 0.0;
        of_peak[r] = ours[r] / (peak_now > 0.0 ? peak_now : peak);
    }
    {
        double ob = best(ours, reps), tb = best(theirs, reps);
        double om = median(ours, reps), tm = median(theirs, reps);
        printf("%-10s %5d %5d %5d %2d | %7.1f %7.1f | %7.1f %7.1f | %5.2f | %5.2f\n",
               layout_names[layout], M, N, K, threads, om, ob, tm, tb,
               median(ratio, reps), median(of_peak, reps));
        fflush(stdout);
        *our_median = om;
        *our_best = ob;
        *their_median = tm;
        *ratio_median = median(ratio, reps);
    }
    free(b.X); free(b.W); free(b.dY); free(b.out);
}

#ifdef MOEXC_BENCH_OPENBLAS
/* A JSON string (the OpenBLAS configuration; escapes quotes and controls). */
static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", (unsigned)(unsigned char)*s);
        else fputc(*s, f);
    }
    fputc('"', f);
}
#endif

static const char *const usage =
    "usage: bench_gemm [reps] [--cpu-time] [--threads N] [--json PATH]\n"
    "  reps         repetitions per entry (default 31, at most 63)\n"
    "  --cpu-time   time 1-thread entries by the thread's CPU clock\n"
    "  --threads N  the multi-threaded entries' thread count (default 2; 1: one thread only)\n"
    "  --json PATH  also write the results as JSON (for tools/bench_summary.py)\n";

#define N_MODEL_SHAPES 8

int main(int argc, char **argv)
{
    /* model shapes: K, N of the d = 128..512 models' linear layers, M = 4096 tokens */
    static const int model_kn[N_MODEL_SHAPES][2] = { { 128, 128 }, { 128, 512 }, { 512, 128 }, { 256, 1024 },
                                                     { 1024, 256 }, { 512, 512 }, { 512, 2048 }, { 2048, 512 } };
    int reps = 31, cpu_time = 0, layout, s, a, n_counts = 1, ti, bench_threads = 2, n_cases = 0;
    int thread_counts[2] = { 1, 2 };
    double peak[2], cube_median[2][3], cube_best[2][3], cube_theirs[2][3], cube_ratio[2][3];
    double unused_median, unused_best, their_median, ratio, min_ratio = 1e300;
    char min_case[160] = "";
    const char *json_path = NULL;
    for (a = 1; a < argc; a++) {
        if (strcmp(argv[a], "--cpu-time") == 0) cpu_time = 1;
        else if (strcmp(argv[a], "--help") == 0 || strcmp(argv[a], "-h") == 0) { fputs(usage, stdout); return 0; }
        else if (strcmp(argv[a], "--threads") == 0 && a + 1 < argc && atoi(argv[a + 1]) > 0) bench_threads = atoi(argv[++a]);
        else if (strcmp(argv[a], "--json") == 0 && a + 1 < argc) json_path = argv[++a];
        else if (atoi(argv[a]) > 0) reps = atoi(argv[a]);
        else { fputs(usage, stderr); return 2; }
    }
    if (reps < 1) reps = 1;
    if (reps > MAX_REPS) reps = MAX_REPS;
#ifndef _OPENMP
    bench_threads = 1;   /* no OpenMP: one thread only (OpenBLAS is held to one as well) */
#endif
    if (bench_threads > 1) { thread_counts[1] = bench_threads; n_counts = 2; }
    printf("moexc GEMM benchmark: backend %s, %d reps, GFLOP/s (median / best)%s\n",
           moexc_simd_backend(), reps, cpu_time ? ", 1-thread rows timed by thread CPU clock" : "");
#ifdef MOEXC_BENCH_OPENBLAS
    printf("OpenBLAS %s, core %s\n", openblas_get_config(), openblas_get_corename());
#else
    printf("OpenBLAS: not compiled in (build with -DMOEXC_BENCH_OPENBLAS -lopenblas)\n");
#endif
    for (ti = 0; ti < n_counts; ti++) {
        int threads = thread_counts[ti];
        peak[ti] = fma_peak(threads, 5, 20000000L, cpu_time && threads == 1);
        printf("fp32 FMA peak, %d thread%s: %.1f GFLOP/s (best of 5 probes)\n", threads, threads > 1 ? "s" : "", peak[ti]);
        fflush(stdout);
    }
    printf("\n%-10s %5s %5s %5s %2s | %15s | %15s | %5s | %5s\n", "layout", "M", "N", "K", "th",
           "moexc med/best", "OpenBLAS m/b", "ratio", "/peak");
    printf("(layout dims: Y=XW^T is X (M x K) W (N x K); dX=dYW gives (M x K); dW+=dY^TX gives (N x K), summed over M)\n");
    printf("(ratio = moexc / OpenBLAS and /peak = moexc / FMA peak: medians over repetitions of ratios taken\n"
           " within one repetition, the peak re-probed right after each, so host slow phases cancel)\n");
    for (ti = 0; ti < n_counts; ti++) {
        int threads = thread_counts[ti];
        for (layout = 0; layout < 3; layout++) {
            bench_one(layout, 1024, 1024, 1024, threads, reps, peak[ti], cpu_time && threads == 1,
                      &cube_median[ti][layout], &cube_best[ti][layout], &cube_theirs[ti][layout], &cube_ratio[ti][layout]);
            if (cube_ratio[ti][layout] < min_ratio) {
                min_ratio = cube_ratio[ti][layout];
                snprintf(min_case, sizeof(min_case), "%s M 1024 N 1024 K 1024, %d thread%s", layout_names[layout],
                         threads, threads > 1 ? "s" : "");
            }
            n_cases++;
        }
        for (s = 0; s < N_MODEL_SHAPES; s++)
            for (layout = 0; layout < 3; layout++) {
                bench_one(layout, 4096, model_kn[s][1], model_kn[s][0], threads, reps, peak[ti],
                          cpu_time && threads == 1, &unused_median, &unused_best, &their_median, &ratio);
                if (ratio < min_ratio) {
                    min_ratio = ratio;
                    snprintf(min_case, sizeof(min_case), "%s M 4096 N %d K %d, %d thread%s", layout_names[layout],
                             model_kn[s][1], model_kn[s][0], threads, threads > 1 ? "s" : "");
                }
                n_cases++;
            }
    }
    if (n_counts >= 2 && cpu_time)
        printf("\n(%d-thread rows use the wall clock, 1-thread rows the CPU clock: no scaling ratio printed)\n", bench_threads);
    else if (n_counts >= 2) {
        printf("\n%d threads / 1 thread at 1024^3 (moexc):", bench_threads);
        for (layout = 0; layout < 3; layout++)
            printf("  %s %.2fx (best %.2fx)", layout_names[layout], cube_median[1][layout] / cube_median[0][layout],
                   cube_best[1][layout] / cube_best[0][layout]);
        printf("\n");
    }
    if (json_path) {
        FILE *f = fopen(json_path, "w");
        int last = n_counts - 1;
        if (!f) { fprintf(stderr, "bench_gemm: cannot write %s\n", json_path); return 1; }
        fprintf(f, "{\"bench\": \"gemm\", \"simd\": \"%s\", \"reps\": %d, \"threads\": %d, \"cpu_time\": %s,\n",
                moexc_simd_backend(), reps, thread_counts[last], cpu_time ? "true" : "false");
#ifdef MOEXC_BENCH_OPENBLAS
        fprintf(f, " \"openblas\": ");
        json_str(f, openblas_get_config());
        fprintf(f, ", \"openblas_core\": ");
        json_str(f, openblas_get_corename());
        fprintf(f, ",\n \"min_ratio_vs_openblas\": %.4f, \"min_ratio_case\": ", min_ratio);
        json_str(f, min_case);
        fprintf(f, ", \"cases\": %d,\n", n_cases);
#else
        fprintf(f, " \"openblas\": null, \"min_ratio_vs_openblas\": null,"
                   " \"reason\": \"OpenBLAS not compiled in (libopenblas-dev missing when bench_gemm was built)\",\n");
#endif
        fprintf(f, " \"peak_gflops\": %.2f,\n \"gemm_1024\": {", peak[last]);
        for (layout = 0; layout < 3; layout++)
            fprintf(f, "%s\"%s\": {\"moexc_gflops\": %.2f, \"openblas_gflops\": %.2f}", layout ? ", " : "",
                    layout_names[layout], cube_median[last][layout], cube_theirs[last][layout]);
        fprintf(f, "},\n \"gemm_1024_1thread\": {");
        for (layout = 0; layout < 3; layout++)
            fprintf(f, "%s\"%s\": {\"moexc_gflops\": %.2f, \"openblas_gflops\": %.2f}", layout ? ", " : "",
                    layout_names[layout], cube_median[0][layout], cube_theirs[0][layout]);
        fprintf(f, "}}\n");
        if (fclose(f) != 0) { fprintf(stderr, "bench_gemm: cannot write %s\n", json_path); return 1; }
    }
    return 0;
}
