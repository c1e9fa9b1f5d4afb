/* tools/moexc_sae.c - sparse autoencoders made of experts (SPEC §8): train a
   TopK, Switch or Scale SAE on one model's activations, evaluate it, or
   compare all three on both models of a pair (make sae).

     moexc_sae --model dense.ckpt --tokens corpus.tok --variant scale --save sae.safetensors
     moexc_sae --model-a moe.ckpt --model-b dense.ckpt --tokens corpus.tok --compare sae_report

   Run with --help for every option. */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L   /* clock_gettime, mkdir */
#endif
#include "../moexc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tool_clock.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef _WIN32
#include <direct.h>
#define make_dir(p) _mkdir(p)
#else
#include <sys/stat.h>
#define make_dir(p) mkdir((p), 0777)
#endif
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>   /* the Makefile adds -isystem $(STB_DIR) */
#include "tool_png.h"

#define IMIN(a, b) ((a) < (b) ? (a) : (b))

typedef struct args {
    const char *model, *model_a, *model_b, *tokens_path, *cache, *save, *checkpoint, *eval_only, *compare;
    long corpus_bytes;
    int side, layer, site, seq_len, train_rows, eval_rows, log_every, threads, splice, splice_seqs;
    double eval_frac;
    moexc_sae_options so;
} args;

static void usage(FILE *out)
{
    fprintf(out,
        "usage: moexc_sae [options]\n"
        "Train a sparse autoencoder made of experts (SPEC §8) on one model's activations and evaluate it:\n"
        "a TopK SAE (the baseline), a Switch SAE (one expert per token, scaled by its router probability)\n"
        "or a Scale SAE (the top experts, softmax-weighted, with feature scaling).\n\n"
        "data (one model, one side of a pair, or an activation cache):\n"
        "  --model PATH          the model whose activations are encoded\n"
        "  --model-a PATH        model A of a pair (the MoE) ...\n"
        "  --model-b PATH        ... and model B (the dense model); --side picks one\n"
        "  --side a|b            which model of the pair or the cache (default a)\n"
        "  --cache PATH          activation cache (moexc_crosscoder --cache-write): its first\n"
        "                        train-rows pairs train, the next eval-rows evaluate\n"
        "  --tokens PATH         token-stream file (moexc_mkdata); default: the built-in corpus\n"
        "  --corpus BYTES        built-in corpus, bytes per domain (default 300000)\n"
        "  --layer N             block to read, 0-based (default 3)\n"
        "  --site ffn|resid      FFN/MoE output (default) or the residual stream after the block\n"
        "  --seq-len T           tokens per harvested sequence (default 128)\n"
        "  --eval-frac X         held-out share of the token stream, interleaved blocks (default 0.1)\n"
        "  --train-rows N        training activations held in memory (default 262144)\n"
        "  --eval-rows N         held-out activations (default 32768)\n"
        "sae:\n"
        "  --variant topk|switch|scale   (default topk)\n"
        "  --latents F           latents (default 16 d)\n"
        "  --k K                 active latents per token (default 32)\n"
        "  --experts E           experts (Switch, Scale; default 8; ignored by topk)\n"
        "  --active A            experts per token (Scale; default 2; ignored by topk)\n"
        "  --lb-alpha X          router load-balancing weight (default 1; negative = off)\n"
        "  --aux-k K             AuxK latents (default d/2; -1 off)\n"
        "  --aux-alpha A         AuxK weight (default 1/32)\n"
        "  --dead-tokens N       tokens without firing before a latent is dead (default min(10M, steps*batch/20))\n"
        "training:\n"
        "  --steps S             optimiser steps (default 5000)\n"
        "  --batch N             rows per step (default 1024)\n"
        "  --lr X                Adam learning rate (default min(1e-3, 2e-4/sqrt(F/2^14)))\n"
        "  --warmup W            warm-up steps (default min(1000, steps/20))\n"
        "  --seed S              seed (default 1)\n"
        "  --threads N           OpenMP threads (default: the runtime's)\n"
        "output:\n"
        "  --save PATH           the inference SAE (safetensors, normalisation folded) at the end\n"
        "  --checkpoint PATH     a training checkpoint at the end\n"
        "  --eval PATH           only evaluate a saved SAE on the held-out rows\n"
        "  --splice              also the spliced loss (SPEC 5.2; needs a model): the site replaced by\n"
        "                        the SAE's reconstruction, against zero and mean ablations\n"
        "  --splice-seqs N       held-out windows per domain for --splice (default 32)\n"
        "  --log-every N         progress line every N steps (default 100)\n"
        "comparison (make sae):\n"
        "  --compare DIR         with --model-a and --model-b: train all three variants on each model\n"
        "                        at the same F and k (the sae options above apply to all; TopK has one\n"
        "                        expert), then write DIR/sae_table.md, sae_table.csv, the SAEs and\n"
        "                        PNGs (sae_fve_flops.png, sae_redundancy.png, sae_expert_usage.png)\n"
        "  -h, --help            this text\n");
}

static int parse_num(const char *opt, const char *v, double lo, double hi, double *out)
{
    char *end;
    double x;
    if (!v) { fprintf(stderr, "moexc_sae: %s needs a value\n", opt); return 0; }
    x = strtod(v, &end);
    if (end == v || *end || !(x >= lo && x <= hi)) {
        fprintf(stderr, "moexc_sae: %s '%s' is not a number in [%g, %g]\n", opt, v, lo, hi);
        return 0;
    }
    *out = x;
    return 1;
}

static int parse_args(int argc, char **argv, args *a)
{
    int i;
    memset(a, 0, sizeof(*a));
    a->corpus_bytes = 300000; a->layer = 3; a->seq_len = 128; a->eval_frac = 0.1;
    a->train_rows = 262144; a->eval_rows = 32768; a->log_every = 100; a->splice_seqs = 32;
    a->so.seed = 1;
    for (i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double x = 0;
        int ok = 1, takes = 1;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) { usage(stdout); exit(0); }
        else if (!strcmp(o, "--model")) a->model = v;
        else if (!strcmp(o, "--model-a")) a->model_a = v;
        else if (!strcmp(o, "--model-b")) a->model_b = v;
        else if (!strcmp(o, "--cache")) a->cache = v;
        else if (!strcmp(o, "--tokens")) a->tokens_path = v;
        else if (!strcmp(o, "--save")) a->save = v;
        else if (!strcmp(o, "--checkpoint")) a->checkpoint = v;
        else if (!strcmp(o, "--eval")) a->eval_only = v;
        else if (!strcmp(o, "--compare")) a->compare = v;
        else if (!strcmp(o, "--side")) {
            if (v && (!strcmp(v, "a") || !strcmp(v, "A"))) a->side = 0;
            else if (v && (!strcmp(v, "b") || !strcmp(v, "B"))) a->side = 1;
            else { fprintf(stderr, "moexc_sae: --side must be a or b\n"); return 0; }
        } else if (!strcmp(o, "--site")) {
            if (v && !strcmp(v, "ffn")) a->site = MOEXC_SITE_FFN_OUT;
            else if (v && !strcmp(v, "resid")) a->site = MOEXC_SITE_RESID;
            else { fprintf(stderr, "moexc_sae: --site must be ffn or resid\n"); return 0; }
        } else if (!strcmp(o, "--variant")) {
            if (v && !strcmp(v, "topk")) a->so.variant = MOEXC_SAE_TOPK;
            else if (v && !strcmp(v, "switch")) a->so.variant = MOEXC_SAE_SWITCH;
            else if (v && !strcmp(v, "scale")) a->so.variant = MOEXC_SAE_SCALE;
            else { fprintf(stderr, "moexc_sae: --variant must be topk, switch or scale\n"); return 0; }
        }
        else if (!strcmp(o, "--corpus")) { ok = parse_num(o, v, 1000, 1e10, &x); a->corpus_bytes = (long)x; }
        else if (!strcmp(o, "--layer")) { ok = parse_num(o, v, 0, 1000, &x); a->layer = (int)x; }
        else if (!strcmp(o, "--seq-len")) { ok = parse_num(o, v, 2, 1e6, &x); a->seq_len = (int)x; }
        else if (!strcmp(o, "--eval-frac")) { ok = parse_num(o, v, 1e-6, 0.9, &x); a->eval_frac = x; }
        else if (!strcmp(o, "--train-rows")) { ok = parse_num(o, v, 1, 1e9, &x); a->train_rows = (int)x; }
        else if (!strcmp(o, "--eval-rows")) { ok = parse_num(o, v, 1, 1e9, &x); a->eval_rows = (int)x; }
        else if (!strcmp(o, "--latents")) { ok = parse_num(o, v, 1, 1 << 28, &x); a->so.n_latents = (int)x; }
        else if (!strcmp(o, "--k")) { ok = parse_num(o, v, 1, 1 << 28, &x); a->so.k = (int)x; }
        else if (!strcmp(o, "--experts")) { ok = parse_num(o, v, 1, 64, &x); a->so.n_experts = (int)x; }
        else if (!strcmp(o, "--active")) { ok = parse_num(o, v, 1, 64, &x); a->so.active_experts = (int)x; }
        else if (!strcmp(o, "--lb-alpha")) { ok = parse_num(o, v, -1e9, 1e9, &x); a->so.lb_alpha = (float)x; }
        else if (!strcmp(o, "--aux-k")) { ok = parse_num(o, v, -1, 1 << 28, &x); a->so.aux_k = (int)x; }
        else if (!strcmp(o, "--aux-alpha")) { ok = parse_num(o, v, 1e-9, 1e9, &x); a->so.aux_alpha = (float)x; }
        else if (!strcmp(o, "--dead-tokens")) { ok = parse_num(o, v, 1, 1e18, &x); a->so.dead_tokens = (int64_t)x; }
        else if (!strcmp(o, "--steps")) { ok = parse_num(o, v, 1, 2e9, &x); a->so.steps = (int)x; }
        else if (!strcmp(o, "--batch")) { ok = parse_num(o, v, 1, 1 << 24, &x); a->so.batch = (int)x; }
        else if (!strcmp(o, "--lr")) { ok = parse_num(o, v, 1e-9, 1, &x); a->so.lr = (float)x; }
        else if (!strcmp(o, "--warmup")) { ok = parse_num(o, v, 0, 2e9, &x); a->so.warmup_steps = (int)x; }
        else if (!strcmp(o, "--seed")) { ok = parse_num(o, v, 0, 1.8e19, &x); a->so.seed = (uint64_t)x; }
        else if (!strcmp(o, "--threads")) { ok = parse_num(o, v, 1, 1024, &x); a->threads = (int)x; }
        else if (!strcmp(o, "--splice-seqs")) { ok = parse_num(o, v, 1, 1e6, &x); a->splice_seqs = (int)x; }
        else if (!strcmp(o, "--log-every")) { ok = parse_num(o, v, 1, 2e9, &x); a->log_every = (int)x; }
        else if (!strcmp(o, "--splice")) { a->splice = 1; takes = 0; }
        else { fprintf(stderr, "moexc_sae: unknown option '%s' (see --help)\n", o); return 0; }
        if (!ok) return 0;
        if (takes) {
            if (!v) { fprintf(stderr, "moexc_sae: %s needs a value\n", o); return 0; }
            i++;
        }
    }
    if (a->model && (a->model_a || a->model_b)) { fprintf(stderr, "moexc_sae: give --model or --model-a/--model-b, not both\n"); return 0; }
    if ((a->model_a != NULL) != (a->model_b != NULL)) { fprintf(stderr, "moexc_sae: --model-a and --model-b go together\n"); return 0; }
    if (a->compare && !a->model_a) { fprintf(stderr, "moexc_sae: --compare needs --model-a and --model-b\n"); return 0; }
    if (a->so.variant == MOEXC_SAE_TOPK && !a->compare)   /* --experts, --active: routed SAEs only */
        a->so.n_experts = a->so.active_experts = 0;
    if (!a->model && !a->model_a && !a->cache) { fprintf(stderr, "moexc_sae: give --model, --model-a/--model-b or --cache (see --help)\n"); return 0; }
    if (a->splice && !a->model && !a->model_a) { fprintf(stderr, "moexc_sae: --splice needs a model\n"); return 0; }
    return 1;
}

/* ---- activations --------------------------------------------------------------- */

/* Rows of both sides (x_a, x_b may be the same model twice). */
typedef struct rows {
    int    d, n_train, n_eval;
    float *train[2], *eval[2];
} rows_t;

static void rows_free(rows_t *r)
{
    int m;
    for (m = 0; m < 2; m++) { free(r->train[m]); free(r->eval[m]); }
    memset(r, 0, sizeof(*r));
}

/* Fill n rows of both sides from a harvester. */
static moexc_status harvest(moexc_harvester *h, int d, float *xa, float *xb, int n, moexc_error *err)
{
    int per = moexc_harvester_rows_per_call(h), got = 0, rows;
    float *ta = (float *)malloc((size_t)per * d * sizeof(float)), *tb = (float *)malloc((size_t)per * d * sizeof(float));
    moexc_status st = MOEXC_OK;
    if (!ta || !tb) { free(ta); free(tb); return MOEXC_ERR_NOMEM; }
    while (got < n) {
        int take;
        if ((st = moexc_harvester_next(h, ta, tb, &rows, err)) != MOEXC_OK) break;
        take = IMIN(rows, n - got);
        memcpy(xa + (size_t)got * d, ta, (size_t)take * d * sizeof(float));
        if (xb) memcpy(xb + (size_t)got * d, tb, (size_t)take * d * sizeof(float));
        got += take;
    }
    free(ta); free(tb);
    return st;
}

/* Split the token stream into training and held-out parts: every
   round(1/eval_frac)-th block of 8 sequences is held out. */
static int split_tokens(const moexc_tokens *tok, size_t block, double eval_frac, moexc_tokens *train, moexc_tokens *held)
{
    size_t period = (size_t)(1.0 / eval_frac + 0.5), pos, b, len;
    *train = *tok; *held = *tok;
    train->tokens = (uint16_t *)malloc(tok->n * sizeof(uint16_t)); train->domains = (uint8_t *)malloc(tok->n);
    held->tokens = (uint16_t *)malloc(tok->n * sizeof(uint16_t)); held->domains = (uint8_t *)malloc(tok->n);
    train->n = held->n = 0;
    if (!train->tokens || !train->domains || !held->tokens || !held->domains) return 0;
    if (period < 2) period = 2;
    for (pos = 0, b = 0; pos < tok->n; pos += block, b++) {
        moexc_tokens *dst = b % period == period - 1 ? held : train;
        len = IMIN(block, tok->n - pos);
        memcpy(dst->tokens + dst->n, tok->tokens + pos, len * sizeof(uint16_t));
        memcpy(dst->domains + dst->n, tok->domains + pos, len);
        dst->n += len;
    }
    return 1;
}

/* ---- training and evaluation ------------------------------------------------- */

typedef struct result {
    moexc_sae_eval ev;
    double redundancy, mean_max_cos, flops, seconds, recovered;
} result;

static moexc_status train_sae(moexc_sae *sae, const float *x, int n, int log_every, const char *tag, moexc_error *err)
{
    const moexc_sae_options *o = moexc_sae_get_options(sae);
    int d = moexc_sae_dim(sae), step, b;
    float *batch = (float *)malloc((size_t)o->batch * d * sizeof(float));
    moexc_rng rng;
    moexc_status st = MOEXC_OK;
    double t0 = now_seconds();
    if (!batch) return MOEXC_ERR_NOMEM;
    moexc_rng_seed(&rng, o->seed ^ 0xBA7C4u);
    for (step = moexc_sae_step(sae); step < o->steps; step++) {
        moexc_sae_step_stats s;
        for (b = 0; b < o->batch; b++)          /* rows drawn uniformly with replacement */
            memcpy(batch + (size_t)b * d, x + (size_t)moexc_rng_below(&rng, (uint32_t)n) * d, (size_t)d * sizeof(float));
        if ((st = moexc_sae_train_step(sae, batch, o->batch, &s, err)) != MOEXC_OK) break;
        if ((step + 1) % log_every == 0 || step + 1 == o->steps) {
            double el = now_seconds() - t0;
            printf("%s step %5d | loss %.4f rec %.4f aux %.3f lb %.3f | FVE %.3f | L0 %.1f | dead %.3f | lr %.2e | %.0f rows/s\n",
                   tag, step + 1, s.loss, s.rec, s.aux, s.lb, s.fve, s.l0, s.dead_fraction, s.lr,
                   (double)o->batch * (step + 1) / (el > 0 ? el : 1e-9));
        }
    }
    free(batch);
    return st;
}

static moexc_status measure(moexc_sae *sae, const float *x_eval, int n_eval, result *r, moexc_error *err)
{
    const moexc_sae_options *o = moexc_sae_get_options(sae);
    int d = moexc_sae_dim(sae);
    float *dec = (float *)malloc((size_t)o->n_latents * d * sizeof(float));
    moexc_status st;
    if (!dec) return MOEXC_ERR_NOMEM;
    st = moexc_sae_evaluate(sae, x_eval, n_eval, &r->ev, NULL, err);
    moexc_sae_decoder(sae, 0, dec);
    if (st == MOEXC_OK) st = moexc_redundancy(dec, o->n_latents, d, 0.9f, &r->redundancy, &r->mean_max_cos, NULL, err);
    r->flops = moexc_sae_encoder_flops(sae);
    free(dec);
    return st;
}

static void print_result(const char *tag, const moexc_sae *sae, const result *r)
{
    const moexc_sae_options *o = moexc_sae_get_options(sae);
    int e;
    printf("%s: FVE %.4f | L0 %.2f | dead %.4f | redundancy %.4f (rows with max cos > 0.9) | mean max cos %.4f | "
           "encoder %.0f FLOPs/token | %lld rows\n", tag, r->ev.fve, r->ev.l0, r->ev.dead_fraction, r->redundancy,
           r->mean_max_cos, r->flops, (long long)r->ev.n);
    if (o->n_experts > 1) {
        printf("%s: expert shares", tag);
        for (e = 0; e < o->n_experts && e < 64; e++) printf(" %.3f", r->ev.expert_share[e]);
        printf("\n");
    }
}

/* ---- the comparison's outputs ------------------------------------------------- */

static int write_png(const char *dir, const char *name, const moexc_canvas *c)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (tool_write_png("moexc_sae", path, c)) return 1;
    printf("  wrote %s\n", path);
    return 0;
}

static FILE *open_tmp(const char *dir, const char *name, char *path, char *tmp)
{
    snprintf(path, 4200, "%s/%s", dir, name);
    snprintf(tmp, 4300, "%s.tmp", path);
    return fopen(tmp, "w");
}

static int close_tmp(FILE *f, const char *path, const char *tmp)
{
    moexc_error err;
    int bad = ferror(f) != 0;
    bad |= fclose(f) != 0;
    if (bad) { remove(tmp); fprintf(stderr, "moexc_sae: cannot write %s\n", tmp); return 1; }
    if (moexc_replace_file(tmp, path, &err) != MOEXC_OK) { fprintf(stderr, "moexc_sae: %s\n", err.message); return 1; }
    printf("  wrote %s\n", path);
    return 0;
}

static const char *model_name[2] = { "MoE (A)", "dense (B)" };
static const char *variant_label[3] = { "TopK", "Switch", "Scale" };

static int write_outputs(const char *dir, result r[2][3], const moexc_sae_options so[3], int with_splice)
{
    char path[4200], tmp[4300];
    FILE *f;
    int m, v, e, bad = 0;
    moexc_canvas cv;
    moexc_plot_options po;
    moexc_error err;
    /* the table: markdown and CSV */
    if (!(f = open_tmp(dir, "sae_table.md", path, tmp))) { fprintf(stderr, "moexc_sae: cannot write %s\n", tmp); return 1; }
    fprintf(f, "| model | SAE | F | k | E | active | FVE | L0 | dead | redundancy (>0.9) | mean max cos | encoder FLOPs/token |%s\n",
            with_splice ? " loss recovered (zero abl.) |" : "");
    fprintf(f, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|%s\n", with_splice ? "---:|" : "");
    for (m = 0; m < 2; m++)
        for (v = 0; v < 3; v++) {
            const result *q = &r[m][v];
            fprintf(f, "| %s | %s | %d | %d | %d | %d | %.4f | %.2f | %.4f | %.4f | %.4f | %.0f |", model_name[m], variant_label[v],
                    so[v].n_latents, so[v].k, so[v].n_experts, so[v].active_experts, q->ev.fve, q->ev.l0,
                    q->ev.dead_fraction, q->redundancy, q->mean_max_cos, q->flops);
            if (with_splice) fprintf(f, " %.4f |", q->recovered);
            fprintf(f, "\n");
        }
    bad |= close_tmp(f, path, tmp);
    if (!(f = open_tmp(dir, "sae_table.csv", path, tmp))) { fprintf(stderr, "moexc_sae: cannot write %s\n", tmp); return 1; }
    fprintf(f, "model,variant,n_latents,k,n_experts,active_experts,fve,l0,dead_fraction,redundancy,mean_max_cos,encoder_flops,"
               "loss_recovered,train_seconds");
    for (e = 0; e < so[1].n_experts; e++) fprintf(f, ",expert_share_%d", e);
    fprintf(f, "\n");
    for (m = 0; m < 2; m++)
        for (v = 0; v < 3; v++) {
            const result *q = &r[m][v];
            fprintf(f, "%s,%s,%d,%d,%d,%d,%.6f,%.4f,%.6f,%.6f,%.6f,%.0f,%.6f,%.1f", m ? "dense" : "moe",
                    moexc_sae_variant_name(v), so[v].n_latents, so[v].k, so[v].n_experts, so[v].active_experts, q->ev.fve,
                    q->ev.l0, q->ev.dead_fraction, q->redundancy, q->mean_max_cos, q->flops, with_splice ? q->recovered : -1.0,
                    q->seconds);
            for (e = 0; e < so[1].n_experts; e++) fprintf(f, ",%.6f", e < so[v].n_experts ? q->ev.expert_share[e] : 0.0);
            fprintf(f, "\n");
        }
    bad |= close_tmp(f, path, tmp);

    /* FVE against encoder FLOPs per token: one series per model, variants in FLOPs order */
    if (moexc_canvas_init(&cv, 900, 600, &err) != MOEXC_OK) { fprintf(stderr, "moexc_sae: %s\n", err.message); return 1; }
    {
        float fx[2][3], fy[2][3];
        moexc_series s[2];
        int order[3] = { 0, 1, 2 }, i, j;
        for (i = 0; i < 3; i++)
            for (j = i + 1; j < 3; j++)
                if (r[0][order[j]].flops < r[0][order[i]].flops) { int t = order[i]; order[i] = order[j]; order[j] = t; }
        for (m = 0; m < 2; m++) {
            for (i = 0; i < 3; i++) { fx[m][i] = (float)r[m][order[i]].flops; fy[m][i] = (float)r[m][order[i]].ev.fve; }
            s[m].x = fx[m]; s[m].y = fy[m]; s[m].n = 3; s[m].label = model_name[m];
        }
        memset(&po, 0, sizeof(po));
        po.title = "held-out FVE vs encoder FLOPs per token";
        po.x_label = order[0] == 1 && order[1] == 2 ? "encoder FLOPs / token (points: Switch, Scale, TopK)" : "encoder FLOPs / token";
        po.y_label = "FVE";
        po.log_x = 1;
        if (moexc_plot_lines(&cv, s, 2, &po, &err) != MOEXC_OK) { fprintf(stderr, "moexc_sae: %s\n", err.message); bad = 1; }
        else bad |= write_png(dir, "sae_fve_flops.png", &cv);
    }
    /* redundancy per variant: variants x (share > 0.9, mean max cos) per model */
    {
        float val[3 * 4];
        const char *rl[3], *cl[4] = { "MoE: >0.9", "dense: >0.9", "MoE: mean max", "dense: mean max" };
        for (v = 0; v < 3; v++) {
            rl[v] = variant_label[v];
            val[v * 4 + 0] = (float)r[0][v].redundancy; val[v * 4 + 1] = (float)r[1][v].redundancy;
            val[v * 4 + 2] = (float)r[0][v].mean_max_cos; val[v * 4 + 3] = (float)r[1][v].mean_max_cos;
        }
        moexc_canvas_clear(&cv, 0xFFFFFF);
        memset(&po, 0, sizeof(po));
        po.title = "decoder redundancy: share of rows with max cosine > 0.9, mean max cosine";
        po.annotate = 1; po.value_format = "%.3f"; po.z_min = 0.0; po.z_max = 1.0; po.z_label = "cosine / share";
        if (moexc_plot_heatmap(&cv, val, 3, 4, rl, cl, &po, &err) != MOEXC_OK) { fprintf(stderr, "moexc_sae: %s\n", err.message); bad = 1; }
        else bad |= write_png(dir, "sae_redundancy.png", &cv);
    }
    /* expert usage: (Switch, Scale) x model rows, experts as columns */
    if (so[1].n_experts > 1 && so[1].n_experts == so[2].n_experts) {
        int E = so[1].n_experts;
        float *val = (float *)malloc((size_t)4 * E * sizeof(float));
        const char *rl[4] = { "Switch, MoE", "Switch, dense", "Scale, MoE", "Scale, dense" };
        if (val) {
            for (v = 0; v < 2; v++)
                for (m = 0; m < 2; m++)
                    for (e = 0; e < E; e++) val[(v * 2 + m) * E + e] = (float)r[m][v + 1].ev.expert_share[e];
            moexc_canvas_clear(&cv, 0xFFFFFF);
            memset(&po, 0, sizeof(po));
            po.title = "expert usage: share of routing slots per expert (held-out)";
            po.annotate = 1; po.value_format = "%.2f"; po.z_label = "share";
            if (moexc_plot_heatmap(&cv, val, 4, E, rl, NULL, &po, &err) != MOEXC_OK) { fprintf(stderr, "moexc_sae: %s\n", err.message); bad = 1; }
            else bad |= write_png(dir, "sae_expert_usage.png", &cv);
            free(val);
        }
    }
    moexc_canvas_free(&cv);
    return bad;
}

int main(int argc, char **argv)
{
    args a;
    moexc_error err;
    moexc_model *mod[2] = { NULL, NULL };
    moexc_tokens tok, train_tok, held_tok;
    moexc_harvest_options ho;
    moexc_harvester *h = NULL;
    moexc_sae *sae = NULL;
    rows_t rw;
    int rc = 1, m, two;
    memset(&tok, 0, sizeof(tok)); memset(&train_tok, 0, sizeof(train_tok)); memset(&held_tok, 0, sizeof(held_tok));
    memset(&rw, 0, sizeof(rw));
    if (!parse_args(argc, argv, &a)) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
#ifdef _OPENMP
    if (a.threads > 0) omp_set_num_threads(a.threads);
#endif
#define CHECK(call) do { if ((call) != MOEXC_OK) { fprintf(stderr, "moexc_sae: %s\n", err.message); goto done; } } while (0)
    memset(&err, 0, sizeof(err));
    two = a.model_a != NULL;

    /* ---- activations ---- */
    if (a.model || a.model_a) {
        CHECK(moexc_model_load(&mod[0], a.model ? a.model : a.model_a, &err));
        if (two) CHECK(moexc_model_load(&mod[1], a.model_b, &err));
        else mod[1] = mod[0];
        if (a.tokens_path) CHECK(moexc_tokens_load(&tok, a.tokens_path, &err));
        else CHECK(moexc_corpus_builtin(&tok, (size_t)a.corpus_bytes, 12345, &err));
        if (!split_tokens(&tok, (size_t)a.seq_len * 8, a.eval_frac, &train_tok, &held_tok)) {
            fprintf(stderr, "moexc_sae: out of memory\n");
            goto done;
        }
        if (moexc_model_get_config(mod[0])->d_model != moexc_model_get_config(mod[1])->d_model && a.compare) {
            fprintf(stderr, "moexc_sae: --compare needs two models of the same width\n");
            goto done;
        }
        memset(&ho, 0, sizeof(ho));
        ho.layer = a.layer == 0 ? MOEXC_HARVEST_LAYER0 : a.layer;
        ho.site = a.site; ho.seq_len = a.seq_len; ho.seed = a.so.seed;
        rw.d = moexc_model_get_config(mod[a.side && two ? 1 : 0])->d_model;
        {
            size_t max_eval = (held_tok.n / (size_t)a.seq_len) * (size_t)(a.seq_len - 1);
            rw.n_train = a.train_rows;
            rw.n_eval = (int)IMIN((size_t)a.eval_rows, max_eval);
            if (rw.n_eval < 1) { fprintf(stderr, "moexc_sae: the held-out tokens give no rows (seq-len %d)\n", a.seq_len); goto done; }
        }
        for (m = 0; m < 2; m++) {
            int need = two && (a.compare || a.side == m);
            if (!two && m == 1) break;
            if (!need && two) continue;
            rw.train[m] = (float *)malloc((size_t)rw.n_train * rw.d * sizeof(float));
            rw.eval[m] = (float *)malloc((size_t)rw.n_eval * rw.d * sizeof(float));
            if (!rw.train[m] || !rw.eval[m]) { fprintf(stderr, "moexc_sae: out of memory (%d rows)\n", rw.n_train); goto done; }
        }
        {
            double t0 = now_seconds();
            int idx = two ? a.side : 0;
            float *tr_b = two && a.compare ? rw.train[1] : NULL, *ev_b = two && a.compare ? rw.eval[1] : NULL;
            float *tr_a = two && a.compare ? rw.train[0] : rw.train[idx], *ev_a = two && a.compare ? rw.eval[0] : rw.eval[idx];
            /* the harvester runs model A and model B; one model: the same one twice (one side kept) */
            moexc_model *ha = two ? mod[0] : mod[0], *hb = two ? mod[1] : mod[0];
            if (two && !a.compare) { ha = mod[a.side]; hb = mod[a.side]; }
            ho.sequential = 1;
            CHECK(moexc_harvester_create(&h, ha, hb, &held_tok, &ho, &err));
            CHECK(harvest(h, rw.d, ev_a, ev_b, rw.n_eval, &err));
            moexc_harvester_free(h); h = NULL;
            ho.sequential = 0;
            CHECK(moexc_harvester_create(&h, ha, hb, &train_tok, &ho, &err));
            CHECK(harvest(h, rw.d, tr_a, tr_b, rw.n_train, &err));
            moexc_harvester_free(h); h = NULL;
            printf("activations: layer %d %s, d %d; %d training and %d held-out rows per model (%lu tokens) in %.1f s\n",
                   a.layer, a.site ? "residual stream" : "FFN output", rw.d, rw.n_train, rw.n_eval, (unsigned long)tok.n,
                   now_seconds() - t0);
        }
    } else {
        /* an activation cache: the first train_rows pairs train, the next eval_rows evaluate */
        moexc_act_cache c;
        float *other;
        int got = 0, n, side = a.side;
        memset(&c, 0, sizeof(c));
        CHECK(moexc_act_cache_open(&c, a.cache, &err));
        rw.d = c.d[side];
        if (c.count < 2) { fprintf(stderr, "moexc_sae: cache %s holds %llu pairs\n", a.cache, (unsigned long long)c.count); moexc_act_cache_close(&c, NULL); goto done; }
        rw.n_eval = (int)IMIN((uint64_t)a.eval_rows, c.count / 2);
        rw.n_train = (int)IMIN((uint64_t)a.train_rows, c.count - (uint64_t)rw.n_eval);
        rw.train[0] = (float *)malloc((size_t)(rw.n_train + rw.n_eval) * rw.d * sizeof(float));
        other = (float *)malloc((size_t)4096 * c.d[1 - side] * sizeof(float));
        if (!rw.train[0] || !other) { free(other); moexc_act_cache_close(&c, NULL); fprintf(stderr, "moexc_sae: out of memory\n"); goto done; }
        while (got < rw.n_train + rw.n_eval) {
            float *dst = rw.train[0] + (size_t)got * rw.d;
            moexc_status st = side == 0 ? moexc_act_cache_read(&c, dst, other, IMIN(4096, rw.n_train + rw.n_eval - got), &n, &err)
                                        : moexc_act_cache_read(&c, other, dst, IMIN(4096, rw.n_train + rw.n_eval - got), &n, &err);
            if (st != MOEXC_OK || n == 0) {
                if (st == MOEXC_OK) fprintf(stderr, "moexc_sae: cache %s ended early\n", a.cache);
                else fprintf(stderr, "moexc_sae: %s\n", err.message);
                free(other); moexc_act_cache_close(&c, NULL); goto done;
            }
            got += n;
        }
        free(other);
        moexc_act_cache_close(&c, NULL);
        rw.eval[0] = rw.train[0] + (size_t)rw.n_train * rw.d;
        printf("activations: cache %s, side %c, d %d; %d training and %d held-out rows\n", a.cache, side ? 'B' : 'A', rw.d,
               rw.n_train, rw.n_eval);
        a.side = 0;     /* the rows are in slot 0 */
    }

    /* ---- evaluate a saved SAE ---- */
    if (a.eval_only) {
        result r;
        int slot = two ? a.side : 0;
        memset(&r, 0, sizeof(r));
        CHECK(moexc_sae_load(&sae, a.eval_only, &err));
        if (moexc_sae_dim(sae) != rw.d) {
            fprintf(stderr, "moexc_sae: %s has width %d; the activations have %d\n", a.eval_only, moexc_sae_dim(sae), rw.d);
            goto done;
        }
        CHECK(measure(sae, rw.eval[slot], rw.n_eval, &r, &err));
        print_result("eval", sae, &r);
        rc = 0;
        goto done;
    }

    /* ---- the comparison ---- */
    if (a.compare) {
        result r[2][3];
        moexc_sae_options so[3];
        int v;
        double t_all = now_seconds();
        make_dir(a.compare);
        memset(r, 0, sizeof(r));
        for (v = 0; v < 3; v++) {
            so[v] = a.so;
            so[v].variant = v;
            if (v == MOEXC_SAE_TOPK) so[v].n_experts = so[v].active_experts = 1;
            if (v == MOEXC_SAE_SWITCH) so[v].active_experts = 1;
        }
        for (m = 0; m < 2; m++)
            for (v = 0; v < 3; v++) {
                char tag[64], file[4200];
                double t0 = now_seconds();
                snprintf(tag, sizeof(tag), "%s %s", m ? "dense" : "moe", moexc_sae_variant_name(v));
                CHECK(moexc_sae_create(&sae, rw.d, &so[v], &err));
                CHECK(moexc_sae_init_from_data(sae, rw.train[m], IMIN(rw.n_train, 16384), &err));
                so[v] = *moexc_sae_get_options(sae);       /* resolved, for the table */
                CHECK(train_sae(sae, rw.train[m], rw.n_train, a.log_every, tag, &err));
                r[m][v].seconds = now_seconds() - t0;
                CHECK(measure(sae, rw.eval[m], rw.n_eval, &r[m][v], &err));
                r[m][v].recovered = -1.0;
                if (a.splice) {
                    moexc_splice_acc acc;
                    CHECK(moexc_splice_acc_init(&acc, tok.n_domains, &err));
                    CHECK(moexc_sae_splice(sae, mod[m], &tok, a.layer, (moexc_site)a.site, a.seq_len, a.splice_seqs, 0.05f, 0,
                                           &acc, 0, &err));
                    r[m][v].recovered = moexc_splice_acc_recovered(&acc, 0, MOEXC_SPLICE_ZERO, tok.n_domains);
                    printf("%s: CE clean %.4f, SAE %.4f, zero %.4f, mean %.4f nats; loss recovered %.4f (zero), %.4f (mean)\n", tag,
                           moexc_splice_acc_ce(&acc, 0, MOEXC_SPLICE_CLEAN, tok.n_domains), moexc_splice_acc_ce(&acc, 0, MOEXC_SPLICE_XC, tok.n_domains),
                           moexc_splice_acc_ce(&acc, 0, MOEXC_SPLICE_ZERO, tok.n_domains), moexc_splice_acc_ce(&acc, 0, MOEXC_SPLICE_MEAN, tok.n_domains),
                           r[m][v].recovered, moexc_splice_acc_recovered(&acc, 0, MOEXC_SPLICE_MEAN, tok.n_domains));
                }
                print_result(tag, sae, &r[m][v]);
                printf("%s: trained in %.1f s\n", tag, r[m][v].seconds);
                snprintf(file, sizeof(file), "%s/sae_%s_%s.safetensors", a.compare, moexc_sae_variant_name(v), m ? "dense" : "moe");
                CHECK(moexc_sae_save(sae, file, &err));
                moexc_sae_free(sae); sae = NULL;
            }
        if (write_outputs(a.compare, r, so, a.splice)) goto done;
        printf("comparison done in %.1f s; table in %s/sae_table.md\n", now_seconds() - t_all, a.compare);
        rc = 0;
        goto done;
    }

    /* ---- one SAE ---- */
    {
        result r;
        int slot = two ? a.side : 0;
        const moexc_sae_options *o;
        memset(&r, 0, sizeof(r));
        CHECK(moexc_sae_create(&sae, rw.d, &a.so, &err));
        CHECK(moexc_sae_init_from_data(sae, rw.train[slot], IMIN(rw.n_train, 16384), &err));
        o = moexc_sae_get_options(sae);
        printf("sae: %s, F %d, k %d, E %d, active %d, lb_alpha %g, aux_k %d, dead after %lld tokens; steps %d x batch %d, "
               "lr %g; scale %.4g; %lu parameters\n", moexc_sae_variant_name(o->variant), o->n_latents, o->k, o->n_experts,
               o->active_experts, o->lb_alpha, o->aux_k, (long long)o->dead_tokens, o->steps, o->batch, o->lr,
               moexc_sae_scale(sae), (unsigned long)moexc_sae_num_params(sae));
        CHECK(train_sae(sae, rw.train[slot], rw.n_train, a.log_every, "train", &err));
        if (a.checkpoint) CHECK(moexc_sae_save_training(sae, a.checkpoint, &err));
        if (a.save) CHECK(moexc_sae_save(sae, a.save, &err));
        CHECK(measure(sae, rw.eval[slot], rw.n_eval, &r, &err));
        print_result("held-out", sae, &r);
        if (a.splice) {
            moexc_splice_acc acc;
            moexc_model *mm = mod[two ? a.side : 0];
            CHECK(moexc_splice_acc_init(&acc, tok.n_domains, &err));
            CHECK(moexc_sae_splice(sae, mm, &tok, a.layer, (moexc_site)a.site, a.seq_len, a.splice_seqs, 0.05f, 0, &acc, 0, &err));
            printf("spliced: CE clean %.4f, SAE %.4f, zero %.4f, mean %.4f nats; loss recovered %.4f (zero), %.4f (mean)\n",
                   moexc_splice_acc_ce(&acc, 0, MOEXC_SPLICE_CLEAN, tok.n_domains), moexc_splice_acc_ce(&acc, 0, MOEXC_SPLICE_XC, tok.n_domains),
                   moexc_splice_acc_ce(&acc, 0, MOEXC_SPLICE_ZERO, tok.n_domains), moexc_splice_acc_ce(&acc, 0, MOEXC_SPLICE_MEAN, tok.n_domains),
                   moexc_splice_acc_recovered(&acc, 0, MOEXC_SPLICE_ZERO, tok.n_domains),
                   moexc_splice_acc_recovered(&acc, 0, MOEXC_SPLICE_MEAN, tok.n_domains));
        }
        rc = 0;
    }
done:
    moexc_harvester_free(h);
    moexc_sae_free(sae);
    if (mod[1] != mod[0]) moexc_model_free(mod[1]);
    moexc_model_free(mod[0]);
    moexc_tokens_free(&tok);
    free(train_tok.tokens); free(train_tok.domains); free(held_tok.tokens); free(held_tok.domains);
    if (rw.eval[0] && rw.train[0] && rw.eval[0] == rw.train[0] + (size_t)rw.n_train * rw.d) rw.eval[0] = NULL;
    rows_free(&rw);
    return rc;
}
