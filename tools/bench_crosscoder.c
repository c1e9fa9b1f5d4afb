/* bench_crosscoder - crosscoder training throughput (pairs/s): one step =
   forward + backward + clipping + Adam + dead counters + threshold EMA on a
   batch of paired activations. Prints the median of --steps timed steps
   after three warm-up steps. tools/bench_crosscoder_torch.py runs this and
   an identical PyTorch crosscoder and prints the ratio.

     bench_crosscoder [--threads N] [--steps N] [--batch N] [--d D] [--latents F]
                      [--k K] [--shared S] [--dead FRACTION] [--serve]

   --dead marks that fraction of the latents dead (moexc_xc_set_dead), so
   that each step also runs AuxK over them, as training does once latents
   stop firing (about 10% at the end of the default demo).

   --serve: after the three warm-up steps print "ready", then run one timed
   step per "step" line on standard input and print its seconds (at most
   --steps of them, the data pools taken in turn as above; "quit" or the end
   of input stops). bench_crosscoder_torch.py pairs these steps with the
   PyTorch ones, so that the host's slow and fast phases hit both sides.

   Output line (parsed by bench_crosscoder_torch.py):
     c crosscoder params <P> median_s <s> pairs_per_s <x> */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif
#include "moexc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tool_clock.h"
#ifdef _OPENMP
#include <omp.h>
#endif

int main(int argc, char **argv)
{
    double dead = 0.0;
    int threads = 0, steps = 20, batch = 1024, d = 128, F = 2048, k = 32, ns = 64, i, s, pools = 4, serve = 0;
    char line[64];
    moexc_xc_options o;
    moexc_xc *xc = NULL;
    moexc_error err;
    moexc_rng rng;
    float *xa, *xb;
    double *times, median;
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: bench_crosscoder [--threads N] [--steps N] [--batch N] [--d D] [--latents F] [--k K] [--shared S]\n"
               "                        [--dead FRACTION] [--serve]\n"
               "pairs/s of one BatchTopK crosscoder training step on random pairs, median of --steps [20]\n"
               "steps (defaults: d 128, F 2048, k 32, 64 shared, batch 1024, no dead latents: --dead 0.1\n"
               "marks the last 10%% of the latents dead, so AuxK runs)\n"
               "--serve: after the warm-up, one timed step per \"step\" line on standard input, its seconds\n"
               "         printed (at most --steps); see tools/bench_crosscoder.c\n");
        return 0;
    }
    for (i = 1; i < argc; i++) {
        const char *opt = argv[i], *val;
        int v;
        if (!strcmp(opt, "--serve")) { serve = 1; continue; }
        if (i + 1 >= argc) { fprintf(stderr, "bench_crosscoder: %s needs a value\n", opt); return 2; }
        val = argv[++i];
        v = atoi(val);
        if (!strcmp(opt, "--threads")) threads = v;
        else if (!strcmp(opt, "--steps")) steps = v;
        else if (!strcmp(opt, "--batch")) batch = v;
        else if (!strcmp(opt, "--d")) d = v;
        else if (!strcmp(opt, "--latents")) F = v;
        else if (!strcmp(opt, "--k")) k = v;
        else if (!strcmp(opt, "--shared")) ns = v;
        else if (!strcmp(opt, "--dead")) dead = atof(val);
        else { fprintf(stderr, "bench_crosscoder: unknown option %s\n", opt); return 2; }
    }
    if (steps < 1 || batch < 1 || d < 1 || F < 1) { fprintf(stderr, "bench_crosscoder: sizes must be >= 1\n"); return 2; }
    if (!(dead >= 0.0 && dead <= 1.0)) { fprintf(stderr, "bench_crosscoder: --dead %g not in [0, 1]\n", dead); return 2; }
#ifdef _OPENMP
    if (threads > 0) omp_set_num_threads(threads);
    threads = omp_get_max_threads();
#else
    threads = 1;
#endif
    memset(&o, 0, sizeof(o));
    o.n_latents = F; o.k = k; o.n_shared = ns; o.steps = 100000; o.batch = batch; o.seed = 1;
    if (moexc_xc_create(&xc, d, d, &o, &err) != MOEXC_OK) { fprintf(stderr, "bench_crosscoder: %s\n", err.message); return 1; }
    xa = (float *)malloc((size_t)pools * batch * d * sizeof(float));
    xb = (float *)malloc((size_t)pools * batch * d * sizeof(float));
    times = (double *)malloc((size_t)steps * sizeof(double));
    if (!xa || !xb || !times) { fprintf(stderr, "bench_crosscoder: out of memory\n"); return 1; }
    moexc_rng_seed(&rng, 7);
    for (i = 0; i < pools * batch * d; i++) { xa[i] = moexc_rng_normal(&rng); xb[i] = 0.5f * xa[i] + moexc_rng_normal(&rng); }
    moexc_xc_init_from_data(xc, xa, xb, batch, NULL);
    for (i = 0; i < (int)(dead * F); i++) moexc_xc_set_dead(xc, F - 1 - i, 1);
    for (s = 0; s < steps + 3; s++) {
        size_t off = (size_t)(s % pools) * batch * d;
        double t0;
        if (serve && s == 3) {
            printf("ready\n");
            fflush(stdout);
        }
        if (serve && s >= 3) {
            if (!fgets(line, sizeof line, stdin) || strncmp(line, "step", 4) != 0) break;
        }
        t0 = now_seconds();
        if (moexc_xc_train_step(xc, xa + off, xb + off, batch, NULL, &err) != MOEXC_OK) {
            fprintf(stderr, "bench_crosscoder: %s\n", err.message);
            return 1;
        }
        if (s >= 3) times[s - 3] = now_seconds() - t0;
        if (serve && s >= 3) {
            printf("%.9f\n", times[s - 3]);
            fflush(stdout);
        }
    }
    if (serve) {            /* the steps were reported one by one */
        moexc_xc_free(xc);
        free(xa); free(xb); free(times);
        return 0;
    }
    median = median_in_place(times, steps);
    printf("crosscoder BatchTopK d_A = d_B = %d, F %d, k %d, shared %d, batch %d, %d dead, %d threads (%s)\n",
           d, F, k, ns, batch, (int)(dead * F), threads, moexc_simd_backend());
    printf("c crosscoder params %lu median_s %.6f pairs_per_s %.1f\n", (unsigned long)moexc_xc_num_params(xc),
           median, batch / median);
    moexc_xc_free(xc);
    free(xa); free(xb); free(times);
    return 0;
}
