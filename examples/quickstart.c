/* examples/quickstart.c - the whole study on one page, at a toy size.

   1. generate the built-in three-domain corpus;
   2. build the equal-active-parameter dense / MoE pair and train both;
   3. harvest block 3's FFN output from both models on the same tokens;
   4. train a BatchTopK crosscoder with designated shared latents;
   5. classify latents by relative decoder norm and print the paper's table.

   It runs in well under a minute. examples/moexc_demo.c is the full-size
   version that also writes the report folder and the plots. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../moexc.h"

/* Stop on the first error and print the message the library wrote. */
#define TRY(call) do { if ((call) != MOEXC_OK) { fprintf(stderr, "error: %s\n", err.message); return 1; } } while (0)

int main(void)
{
    enum { PAIRS = 32768, HELD_OUT = 4096, BATCH = 512 };
    moexc_error err;
    moexc_tokens corpus;
    moexc_model_config base, dense_cfg, moe_cfg;
    moexc_model *model[2];                 /* A = MoE (index 0), B = dense (index 1) */
    moexc_train_options train;
    moexc_harvest_options harvest;
    moexc_harvester *harvester;
    moexc_xc_options xc_opt;
    moexc_xc *xc;
    moexc_xc_eval eval;
    moexc_latent_analysis analysis;
    moexc_eval_summary summary;
    float *x_a, *x_b, *dec_a, *dec_b;
    int64_t *active_counts;
    int m, d, rows, have, step;

    memset(&err, 0, sizeof(err));
    memset(&corpus, 0, sizeof(corpus));
    TRY(moexc_corpus_builtin(&corpus, 300000, /* seed */ 1, &err));

    /* Dense h_ff = 4d against MoE E = 8, k = 2, h_e = 2d: equal active parameters. */
    memset(&base, 0, sizeof(base));
    base.d_model = 64;
    base.context = 64;
    TRY(moexc_model_config_pair(&base, &dense_cfg, &moe_cfg, &err));
    TRY(moexc_model_create(&model[0], &moe_cfg, &err));
    TRY(moexc_model_create(&model[1], &dense_cfg, &err));

    memset(&train, 0, sizeof(train));      /* zero = defaults (AdamW, warm-up + cosine) */
    train.total_steps = 300;
    train.lr = 3e-3f;
    train.seq_len = 64;
    for (m = 0; m < 2; m++) {
        moexc_trainer *trainer;
        const moexc_eval_result *result;
        TRY(moexc_trainer_create(&trainer, model[m], &corpus, &train, &err));
        TRY(moexc_trainer_run(trainer, NULL, NULL, &err));
        TRY(moexc_trainer_evaluate(trainer, &result, &err));
        printf("%-5s held-out %.3f bits/byte (unigram baseline %.3f)\n", m == 0 ? "MoE" : "dense",
               result->all.bits_per_byte, result->all.unigram_bpb);
        moexc_trainer_free(trainer);
    }

    /* Paired activations: row i of x_a and x_b come from the same token. */
    memset(&harvest, 0, sizeof(harvest));  /* block 3, FFN output, skip position 0 */
    harvest.seq_len = 64;
    TRY(moexc_harvester_create(&harvester, model[0], model[1], &corpus, &harvest, &err));
    d = moexc_harvester_dim(harvester, 0);
    x_a = (float *)malloc(sizeof(float) * (size_t)(PAIRS + moexc_harvester_rows_per_call(harvester)) * (size_t)d);
    x_b = (float *)malloc(sizeof(float) * (size_t)(PAIRS + moexc_harvester_rows_per_call(harvester)) * (size_t)d);
    if (!x_a || !x_b) { fprintf(stderr, "error: out of memory\n"); return 1; }
    for (have = 0; have < PAIRS; have += rows)
        TRY(moexc_harvester_next(harvester, x_a + (size_t)have * d, x_b + (size_t)have * d, &rows, &err));
    moexc_harvester_free(harvester);

    /* BatchTopK crosscoder, the first 32 latents designated shared. */
    memset(&xc_opt, 0, sizeof(xc_opt));
    xc_opt.n_latents = 1024;
    xc_opt.k = 16;
    xc_opt.n_shared = 32;
    xc_opt.steps = 600;
    xc_opt.batch = BATCH;
    TRY(moexc_xc_create(&xc, d, d, &xc_opt, &err));
    TRY(moexc_xc_init_from_data(xc, x_a, x_b, PAIRS - HELD_OUT, &err));   /* scales, b_dec */
    for (step = 0; step < xc_opt.steps; step++) {
        int start = (step * BATCH) % (PAIRS - HELD_OUT - BATCH);
        TRY(moexc_xc_train_step(xc, x_a + (size_t)start * d, x_b + (size_t)start * d, BATCH, NULL, &err));
    }

    /* Held-out evaluation, then the relative-norm analysis in normalised units. */
    active_counts = (int64_t *)calloc((size_t)xc_opt.n_latents, sizeof(int64_t));
    dec_a = (float *)malloc(sizeof(float) * (size_t)xc_opt.n_latents * (size_t)d);
    dec_b = (float *)malloc(sizeof(float) * (size_t)xc_opt.n_latents * (size_t)d);
    if (!active_counts || !dec_a || !dec_b) { fprintf(stderr, "error: out of memory\n"); return 1; }
    TRY(moexc_xc_evaluate(xc, x_a + (size_t)(PAIRS - HELD_OUT) * d, x_b + (size_t)(PAIRS - HELD_OUT) * d,
                          HELD_OUT, &eval, active_counts, &err));
    moexc_xc_decoder(xc, 0, /* folded */ 0, dec_a);
    moexc_xc_decoder(xc, 1, 0, dec_b);
    TRY(moexc_analyze_latents(&analysis, dec_a, d, dec_b, d, xc_opt.n_latents, xc_opt.n_shared,
                              active_counts, HELD_OUT, NULL, &err));
    memset(&summary, 0, sizeof(summary));
    summary.has_fve = 1;
    summary.fve_a = eval.fve[0]; summary.fve_b = eval.fve[1]; summary.fve_pooled = eval.fve_pooled;
    summary.has_l0 = 1;
    summary.l0 = eval.l0; summary.dead_fraction = eval.dead_fraction;
    moexc_analysis_print_table(stdout, &analysis, &summary);

    moexc_latent_analysis_free(&analysis);
    free(active_counts); free(dec_a); free(dec_b); free(x_a); free(x_b);
    moexc_xc_free(xc);
    moexc_model_free(model[0]);
    moexc_model_free(model[1]);
    moexc_tokens_free(&corpus);
    return 0;
}
