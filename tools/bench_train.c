/* bench_train - training throughput (tokens/s) of the default dense and MoE
   models: one optimiser step = forward + backward + clipping + AdamW on a
   batch of B x T tokens. Prints the median of --steps timed steps after two
   warm-up steps. tools/bench_train_torch.py runs this and the PyTorch twin.

     bench_train [--threads N] [--steps N] [--batch B] [--seq T]

   Output lines (parsed by bench_train_torch.py):
     c <dense|moe> params <total> active <active> median_s <s> tokens_per_s <x> flops_per_token <f>

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

static int bench(int moe, const moexc_tokens *data, int B, int T, int steps)
{
    moexc_model_config c;
    moexc_train_options o;
    moexc_model *m = NULL;
    moexc_trainer *t = NULL;
    moexc_error err;
    double *times = (double *)malloc(sizeof(double) * (size_t)steps);
    size_t total = 0, active = 0;
    int s;
    memset(&c, 0, sizeof(c));
    memset(&o, 0, sizeof(o));
    c.ffn = moe ? MOEXC_FFN_MOE : MOEXC_FFN_DENSE;    /* d 128, L 5, H 4, ctx 256; h_ff 512 | E 8, k 2, h_e 256 */
    o.batch_size = B; o.seq_len = T; o.total_steps = steps + 2; o.eval_interval = -1;
    if (!times || moexc_model_create(&m, &c, &err) || moexc_trainer_create(&t, m, data, &o, &err)
        || moexc_model_count_params(moexc_model_get_config(m), &total, &active, &err)) {
        fprintf(stderr, "bench_train: %s\n", times ? err.message : "out of memory");
        free(times); moexc_trainer_free(t); moexc_model_free(m);
        return 1;
    }
    for (s = 0; s < steps + 2; s++) {
        double t0 = now_seconds();
        if (moexc_trainer_step(t, NULL, &err)) { fprintf(stderr, "bench_train: %s\n", err.message); break; }
        if (s >= 2) times[s - 2] = now_seconds() - t0;
    }
    if (s == steps + 2) {
        double median = median_in_place(times, steps);
        const moexc_model_config *r = moexc_model_get_config(m);
        double d = r->d_model, L = r->n_layers, V = r->vocab_size;
        double ffn = moe ? r->n_experts * d + r->top_k * 3.0 * d * r->d_expert : 3.0 * d * r->d_ff;
        double n_mm = L * (4.0 * d * d + ffn) + V * d;
        double flops_per_token = 6.0 * n_mm + 6.0 * L * T * d;
        printf("c %s params %lu active %lu median_s %.6f tokens_per_s %.1f flops_per_token %.0f\n", moe ? "moe" : "dense",
               (unsigned long)total, (unsigned long)active, median, (double)B * T / median, flops_per_token);
        fflush(stdout);
    }
    free(times);
    moexc_trainer_free(t);
    moexc_model_free(m);
    return s == steps + 2 ? 0 : 1;
}

int main(int argc, char **argv)
{
    int threads = 0, steps = 7, B = 8, T = 256, i, rc = 0;
    moexc_tokens data;
    moexc_rng rng;
    size_t n = 200000, k;
    for (i = 1; i < argc && (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")); i++) {
        printf("usage: bench_train [--threads N] [--steps N] [--batch B] [--seq T]\n"
               "tokens/s of one training step (forward, backward, clipping, AdamW) of the default dense\n"
               "and MoE models (d 128, 5 layers), median of --steps [7] steps; see the top of tools/bench_train.c\n");
        return 0;
    }
    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch")) B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq")) T = atoi(argv[i + 1]);
        else { fprintf(stderr, "usage: bench_train [--threads N] [--steps N] [--batch B] [--seq T]\n"); return 2; }
    }
    if (i < argc || steps < 1 || B < 1 || T < 1) { fprintf(stderr, "usage: bench_train [--threads N] [--steps N] [--batch B] [--seq T]\n"); return 2; }
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
    rc |= bench(0, &data, B, T, steps);
    rc |= bench(1, &data, B, T, steps);
    free(data.tokens); free(data.domains);
    return rc;
}
