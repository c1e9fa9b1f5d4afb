/* bench_train - training throughput (tokens/s) of the default dense and MoE
   models: one optimiser step = forward + backward + clipping + AdamW on a
   batch of B x T tokens. Prints the median of --steps timed steps after two
   warm-up steps. tools/bench_train_torch.py runs this and the PyTorch twin.

     bench_train [--threads N] [--steps N] [--batch B] [--seq T] [--model dense|moe] [--serve]

   Output lines (parsed by bench_train_torch.py):
     c <dense|moe> params <total> active <active> median_s <s> tokens_per_s <x> flops_per_token <f>

   --serve: build both models, run their two warm-up steps, print the line
   above for each (median_s -1: nothing timed yet) and "ready"; then read
   "dense" or "moe" lines from standard input and answer each with the
   seconds of one more step of that model, and "peak" lines with the fp32
   FMA peak of the thread count in GFLOP/s (tools/fma_peak.h), measured now. bench_train_torch.py uses it to
   time a moexc step and a PyTorch step back to back, so that the slow and
   fast phases of a shared host fall on both sides of each ratio.

   flops_per_token counts the matrix products of one training step (forward
   and backward) per token, the usual 6 N + 6 L T d:
     N = L (4 d^2 + FFN) + V d   weights a token multiplies by: attention's
                                 wq, wk, wv, wo; FFN = 3 d h_ff (dense) or
                                 E d + k 3 d h_e (router + the k experts it
                                 runs); the LM head (embedding lookups, norms
                                 and element-wise work are not counted);
     6 N                         2 N forward (a multiply-add per weight),
                                 4 N backward (input and weight gradients);
     6 L T d                     causal attention: per layer, query t meets t+1
                                 keys in Q K^T and in A V (2 d flop each), on
                                 average (T+1)/2 keys, so 2 d T forward per
                                 token, 4 d T backward: half of the 12 L T d
                                 usually quoted for full (non-causal) attention. */
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
#include "fma_peak.h"

/* One model and its trainer, ready to step. */
typedef struct bench_model {
    moexc_model *m;
    moexc_trainer *t;
    size_t total, active;
    double flops_per_token;
} bench_model;

static void bench_model_free(bench_model *b)
{
    moexc_trainer_free(b->t);
    moexc_model_free(b->m);
    memset(b, 0, sizeof(*b));
}

static int bench_model_create(bench_model *b, int moe, const moexc_tokens *data, int B, int T, int total_steps)
{
    moexc_model_config c;
    moexc_train_options o;
    moexc_error err;
    memset(b, 0, sizeof(*b));
    memset(&c, 0, sizeof(c));
    memset(&o, 0, sizeof(o));
    c.ffn = moe ? MOEXC_FFN_MOE : MOEXC_FFN_DENSE;    /* d 128, L 5, H 4, ctx 256; h_ff 512 | E 8, k 2, h_e 256 */
    o.batch_size = B; o.seq_len = T; o.total_steps = total_steps; o.eval_interval = -1;
    if (moexc_model_create(&b->m, &c, &err) || moexc_trainer_create(&b->t, b->m, data, &o, &err)
        || moexc_model_count_params(moexc_model_get_config(b->m), &b->total, &b->active, &err)) {
        fprintf(stderr, "bench_train: %s\n", err.message);
        bench_model_free(b);
        return 1;
    }
    {
        const moexc_model_config *r = moexc_model_get_config(b->m);
        double d = r->d_model, L = r->n_layers, V = r->vocab_size;
        double ffn = moe ? r->n_experts * d + r->top_k * 3.0 * d * r->d_expert : 3.0 * d * r->d_ff;
        double n_mm = L * (4.0 * d * d + ffn) + V * d;
        b->flops_per_token = 6.0 * n_mm + 6.0 * L * T * d;
    }
    return 0;
}

/* Seconds of one optimiser step, or -1 on an error (printed). */
static double bench_model_step(bench_model *b)
{
    moexc_error err;
    double t0 = now_seconds();
    if (moexc_trainer_step(b->t, NULL, &err)) { fprintf(stderr, "bench_train: %s\n", err.message); return -1.0; }
    return now_seconds() - t0;
}

static void bench_model_print(const bench_model *b, int moe, int B, int T, double median)
{
    printf("c %s params %lu active %lu median_s %.6f tokens_per_s %.1f flops_per_token %.0f\n", moe ? "moe" : "dense",
           (unsigned long)b->total, (unsigned long)b->active, median, median > 0 ? (double)B * T / median : -1.0,
           b->flops_per_token);
    fflush(stdout);
}

static int bench(int moe, const moexc_tokens *data, int B, int T, int steps)
{
    bench_model b;
    double *times = (double *)malloc(sizeof(double) * (size_t)steps);
    int s;
    if (!times) { fprintf(stderr, "bench_train: out of memory\n"); return 1; }
    if (bench_model_create(&b, moe, data, B, T, steps + 2)) { free(times); return 1; }
    for (s = 0; s < steps + 2; s++) {
        double dt = bench_model_step(&b);
        if (dt < 0) break;
        if (s >= 2) times[s - 2] = dt;
    }
    if (s == steps + 2) bench_model_print(&b, moe, B, T, median_in_place(times, steps));
    free(times);
    bench_model_free(&b);
    return s == steps + 2 ? 0 : 1;
}

/* --serve: see the top of the file. The trainers are sized for `limit` steps
   (their learning-rate schedules end there); more requests are an error. */
static int serve(const moexc_tokens *data, int B, int T, int limit, int threads)
{
    bench_model models[2];
    char line[64];
    int k, s, rc = 0, used[2] = {0, 0};
    for (k = 0; k < 2; k++)
        if (bench_model_create(&models[k], k, data, B, T, limit + 2)) {
            while (k-- > 0) bench_model_free(&models[k]);
            return 1;
        }
    for (k = 0; k < 2 && !rc; k++)
        for (s = 0; s < 2 && !rc; s++) rc = bench_model_step(&models[k]) < 0;
    for (k = 0; k < 2 && !rc; k++) bench_model_print(&models[k], k, B, T, -1.0);
    if (!rc) { printf("ready\n"); fflush(stdout); }
    while (!rc && fgets(line, sizeof(line), stdin)) {
        const int moe = !strncmp(line, "moe", 3);
        double dt;
        line[strcspn(line, "\r\n")] = '\0';
        if (!strncmp(line, "quit", 4)) break;
        if (!strncmp(line, "peak", 4)) {
            printf("%.3f\n", fma_peak(threads, 1, 4000000L, 0));
            fflush(stdout);
            continue;
        }
        if (!moe && strncmp(line, "dense", 5)) {
            fprintf(stderr, "bench_train: --serve reads \"dense\", \"moe\", \"peak\" or \"quit\", not \"%.20s\"\n", line);
            rc = 1;
        } else if (used[moe] >= limit) {
            fprintf(stderr, "bench_train: --serve: more than --steps %d steps of the %s model\n", limit, moe ? "moe" : "dense");
            rc = 1;
        } else if ((dt = bench_model_step(&models[moe])) < 0) {
            rc = 1;
        } else {
            used[moe]++;
            printf("%.6f\n", dt);
            fflush(stdout);
        }
    }
    for (k = 0; k < 2; k++) bench_model_free(&models[k]);
    return rc;
}

int main(int argc, char **argv)
{
    int threads = 0, steps = 7, B = 8, T = 256, i, rc = 0, serving = 0, which = 3;
    moexc_tokens data;
    moexc_rng rng;
    size_t n = 200000, k;
    for (i = 1; i < argc && (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")); i++) {
        printf("usage: bench_train [--threads N] [--steps N] [--batch B] [--seq T] [--model dense|moe] [--serve]\n"
               "tokens/s of one training step (forward, backward, clipping, AdamW) of the default dense\n"
               "and MoE models (d 128, 5 layers), median of --steps [7] steps; see the top of tools/bench_train.c\n"
               "--model: only that one (both by default)\n"
               "--serve: step a model per \"dense\" or \"moe\" line on standard input (at most --steps each),\n"
               "         measure the FMA peak per \"peak\" line\n");
        return 0;
    }
    for (i = 1; i < argc; i += 2) {
        if (!strcmp(argv[i], "--serve")) { serving = 1; i--; continue; }
        if (i + 1 >= argc) break;
        if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch")) B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--model")) which = !strcmp(argv[i + 1], "dense") ? 1 : !strcmp(argv[i + 1], "moe") ? 2 : 0;
        else { fprintf(stderr, "usage: bench_train [--threads N] [--steps N] [--batch B] [--seq T] [--model dense|moe] [--serve]\n"); return 2; }
    }
    if (i < argc || steps < 1 || B < 1 || T < 1 || !which) { fprintf(stderr, "usage: bench_train [--threads N] [--steps N] [--batch B] [--seq T] [--model dense|moe] [--serve]\n"); return 2; }
#ifdef _OPENMP
    if (threads > 0) omp_set_num_threads(threads);
    threads = omp_get_max_threads();
#else
    threads = 1;
#endif
    /* random bytes: throughput does not depend on the text */
    memset(&data, 0, sizeof(data));
    data.tokens = (uint16_t *)malloc(n * sizeof(uint16_t));
    data.domains = (uint8_t *)calloc(n, 1);
    if (!data.tokens || !data.domains) { fprintf(stderr, "out of memory\n"); return 1; }
    data.n = data.capacity = n; data.vocab_size = 256; data.n_domains = 1;
    strcpy(data.domain_names[0], "random");
    moexc_rng_seed(&rng, 1);
    for (k = 0; k < n; k++) data.tokens[k] = (uint16_t)moexc_rng_below(&rng, 256);
    printf("c threads %d simd %s batch %d x %d steps %d\n", threads, moexc_simd_backend(), B, T, steps);
    if (serving) {
        rc = serve(&data, B, T, steps, threads);
    } else {
        if (which & 1) rc |= bench(0, &data, B, T, steps);
        if (which & 2) rc |= bench(1, &data, B, T, steps);
    }
    free(data.tokens); free(data.domains);
    return rc;
}
