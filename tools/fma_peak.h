/* tools/fma_peak.h - the machine's fp32 peak, measured: independent FMA
   chains on every thread, enough of them to cover latency x pipes. Used by
   the benchmarks to state what fraction of the peak a kernel or a training
   step reaches. Include after tool_clock.h (and <omp.h> when _OPENMP); needs
   clock_gettime (_POSIX_C_SOURCE 199309L or later) for CPU-time probes. */
#ifndef MOEXC_FMA_PEAK_H
#define MOEXC_FMA_PEAK_H
#include <time.h>
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

/* Seconds of CPU time of the calling thread. */
static TOOL_MAYBE_UNUSED double thread_cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define PEAK_CHAINS 16   /* 4-cycle FMA latency x 2 pipes = 8 in flight on current x86 cores; 16 leaves margin */

static TOOL_MAYBE_UNUSED double fma_probe_one_thread(long iters, int cpu_time)
{
    float sink[64];
    volatile float keep;
    double t0, t1;
    long it;
    int c;
#if defined(__AVX512F__)
    __m512 x[PEAK_CHAINS], a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (c = 0; c < PEAK_CHAINS; c++) x[c] = _mm512_set1_ps((float)c);
    t0 = cpu_time ? thread_cpu_seconds() : now_seconds();
    for (it = 0; it < iters; it++) {
        x[0] = _mm512_fmadd_ps(x[0], a, b);   x[1] = _mm512_fmadd_ps(x[1], a, b);
        x[2] = _mm512_fmadd_ps(x[2], a, b);   x[3] = _mm512_fmadd_ps(x[3], a, b);
        x[4] = _mm512_fmadd_ps(x[4], a, b);   x[5] = _mm512_fmadd_ps(x[5], a, b);
        x[6] = _mm512_fmadd_ps(x[6], a, b);   x[7] = _mm512_fmadd_ps(x[7], a, b);
        x[8] = _mm512_fmadd_ps(x[8], a, b);   x[9] = _mm512_fmadd_ps(x[9], a, b);
        x[10] = _mm512_fmadd_ps(x[10], a, b); x[11] = _mm512_fmadd_ps(x[11], a, b);
        x[12] = _mm512_fmadd_ps(x[12], a, b); x[13] = _mm512_fmadd_ps(x[13], a, b);
        x[14] = _mm512_fmadd_ps(x[14], a, b); x[15] = _mm512_fmadd_ps(x[15], a, b);
    }
    t1 = cpu_time ? thread_cpu_seconds() : now_seconds();
    for (c = 1; c < PEAK_CHAINS; c++) x[0] = _mm512_add_ps(x[0], x[c]);
    _mm512_storeu_ps(sink, x[0]);
    keep = sink[0];                        /* the chains' result is used */
    (void)keep;
    return (double)iters * PEAK_CHAINS * 16 * 2 / (t1 - t0) * 1e-9;
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 x[PEAK_CHAINS], a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (c = 0; c < PEAK_CHAINS; c++) x[c] = _mm256_set1_ps((float)c);
    t0 = cpu_time ? thread_cpu_seconds() : now_seconds();
    for (it = 0; it < iters; it++)
        for (c = 0; c < PEAK_CHAINS; c++) x[c] = _mm256_fmadd_ps(x[c], a, b);
    t1 = cpu_time ? thread_cpu_seconds() : now_seconds();
    for (c = 1; c < PEAK_CHAINS; c++) x[0] = _mm256_add_ps(x[0], x[c]);
    _mm256_storeu_ps(sink, x[0]);
    keep = sink[0];
    (void)keep;
    return (double)iters * PEAK_CHAINS * 8 * 2 / (t1 - t0) * 1e-9;
#else
    /* no FMA vector ISA known here: the scalar multiply-add rate */
    float x[PEAK_CHAINS], a = 0.999999f, b = 1e-7f;
    for (c = 0; c < PEAK_CHAINS; c++) x[c] = (float)c;
    t0 = cpu_time ? thread_cpu_seconds() : now_seconds();
    for (it = 0; it < iters; it++)
        for (c = 0; c < PEAK_CHAINS; c++) x[c] = x[c] * a + b;
    t1 = cpu_time ? thread_cpu_seconds() : now_seconds();
    for (c = 1; c < PEAK_CHAINS; c++) x[0] += x[c];
    sink[0] = x[0];
    keep = sink[0];
    (void)keep;
    return (double)iters * PEAK_CHAINS * 2 / (t1 - t0) * 1e-9;
#endif
}

/* Peak GFLOP/s of `threads` cores: best of `reps` probes of `iters` rounds
   each, summed over threads. */
static TOOL_MAYBE_UNUSED double fma_peak(int threads, int reps, long iters, int cpu_time)
{
    double best_total = 0.0;
    int r;
    for (r = 0; r < reps; r++) {
        double total = 0.0;
#ifdef _OPENMP
#       pragma omp parallel num_threads(threads) reduction(+ : total)
        total += fma_probe_one_thread(iters, cpu_time);
#else
        total = fma_probe_one_thread(iters, cpu_time) * (threads > 1 ? 0.0 : 1.0);
#endif
        if (total > best_total) best_total = total;
    }
    return best_total;
}

#endif
