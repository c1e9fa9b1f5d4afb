/* tools/moexc_crosscoder.c - train a crosscoder on paired activations of a
   MoE model (A) and a dense model (B), evaluate it, and classify its latents.

     moexc_crosscoder --model-a moe.safetensors --model-b dense.safetensors \
                      --corpus 400000 --steps 5000 --save xc.safetensors

   Run with --help for every option.
   Data-parallel over MPI (make MPI=1): mpirun -np W build/mpi/moexc_crosscoder
   ... trains the same crosscoder on W ranks, each on 1/W of every batch
   (tools/mpi_reduce.h; SPEC §9). */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L   /* clock_gettime */
#endif
#include "../moexc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tool_clock.h"
#include "mpi_reduce.h"
#include "schedule_probe.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define IMIN(a, b) ((a) < (b) ? (a) : (b))

typedef struct args {
    const char *model_a, *model_b, *tokens_path, *save, *checkpoint, *resume, *eval_only, *cache_write, *cache_read;
    long corpus_bytes;
    int layer, site, seq_len, keep_first, shuffle, eval_pairs, log_every, save_every, threads, init_pairs, raw_norms;
    double eval_frac;
    moexc_xc_options xo;
} args;

static void usage(FILE *out)
{
    fprintf(out,
        "usage: moexc_crosscoder [options]\n"
        "Train a crosscoder on paired activations of model A (MoE) and model B (dense), SPEC §3-5.\n\n"
        "data:\n"
        "  --model-a PATH        model A checkpoint (the MoE), required unless --cache/--eval with a cache\n"
        "  --model-b PATH        model B checkpoint (the dense model)\n"
        "  --tokens PATH         token-stream file (moexc_mkdata); default: the built-in corpus\n"
        "  --corpus BYTES        built-in corpus, bytes per domain (default 300000)\n"
        "  --layer N             block to read, 0-based (default 3)\n"
        "  --site ffn|resid      FFN/MoE output (default) or the residual stream after the block\n"
        "  --seq-len T           tokens per harvested sequence (default 128)\n"
        "  --keep-first          keep position 0 of each sequence (skipped by default)\n"
        "  --shuffle N           shuffle-buffer capacity in pairs (default 65536)\n"
        "  --eval-frac X         fraction of the token stream held out, as interleaved blocks (default 0.1)\n"
        "  --eval-pairs N        held-out pairs to evaluate on (default 32768)\n"
        "  --cache-write PATH    also write the training pairs to an activation cache\n"
        "  --cache PATH          train from an activation cache instead of the models\n"
        "crosscoder:\n"
        "  --latents F           latents (default 8 (d_A + d_B))\n"
        "  --variant batchtopk|l1  (default batchtopk)\n"
        "  --k K                 BatchTopK active latents per token (default 32)\n"
        "  --shared N            designated shared latents (default 0; needs d_A == d_B)\n"
        "  --lambda X            decoder-norm penalty lambda_f (L1 default 2; BatchTopK default off)\n"
        "  --ratio R             lambda_s / lambda_f (default 0.15)\n"
        "  --aux-k K             AuxK latents (default max(d)/2; -1 off)\n"
        "  --aux-alpha A         AuxK weight (default 1/32)\n"
        "  --aux-exact-relu      AuxK: no gradient at dead latents' negative pre-activations (the\n"
        "                        references); default: straight-through there\n"
        "  --dead-tokens N       tokens without firing before a latent is dead (default min(10M, steps*batch/20))\n"
        "  --init-norm X         decoder row norm at init (default 0.08 L1, 1 BatchTopK)\n"
        "  --uncentred-encoder   encode x^m as SPEC writes it, f = ReLU(sum W_enc x + b_enc); default:\n"
        "                        encode x^m - b_dec^m (SAE practice; saved in SPEC's form)\n");
    fprintf(out,
        "training:\n"
        "  --steps S             optimiser steps (default 5000)\n"
        "  --batch N             pairs per step (default 1024)\n"
        "  --lr X                Adam learning rate (default min(1e-3, 2e-4/sqrt(F/2^14)))\n"
        "  --warmup W            warm-up steps (default min(1000, steps/20))\n"
        "  --seed S              seed (default 1)\n"
        "  --threads N           OpenMP threads (default: the runtime's); with 2 or 3 (and one process)\n"
        "                        the next batch is drawn during the step if the first steps time that\n"
        "                        as faster (a \"schedule:\" line says which); the same bits either way\n"
        "  --init-pairs N        pairs used for the normalisation and b_dec init (default 16384)\n"
        "output:\n"
        "  --save PATH           write the inference crosscoder (safetensors, folded) at the end\n"
        "  --checkpoint PATH     write a training checkpoint every --save-every steps and at the end\n"
        "  --save-every N        (default 1000)\n"
        "  --resume PATH         continue from a training checkpoint (its options win); with the first\n"
        "                        run's data options (models, --tokens/--corpus/--cache, --layer, --site,\n"
        "                        --seq-len, --keep-first, --shuffle, --eval-frac, --init-pairs) it replays\n"
        "                        the data stream and ends bit for bit where the uninterrupted run would\n"
        "  --eval PATH           only evaluate a saved crosscoder on the held-out pairs\n"
        "  --log-every N         progress line every N steps (default 100)\n"
        "  --raw-norms           classify latents by decoder norms in raw units (folded, W_dec / s_m)\n"
        "                        instead of the normalised units the crosscoder trains in (default)\n"
        "  -h, --help            this text\n"
        "ranks (built with make MPI=1): mpirun -np W moexc_crosscoder ... trains data-parallel:\n"
        "  --batch stays the global batch (W must divide it); every rank reads the same pair\n"
        "  stream and trains on its share of each batch, the gradients and the BatchTopK\n"
        "  selection are global (SPEC 9); only rank 0 prints and writes files. Harvesting\n"
        "  runs on every rank: train from an activation cache (--cache) to share the work.\n");
}

static int parse_long(const char *s, long *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end) return 0;
    *out = v;
    return 1;
}

static int parse_args(int argc, char **argv, args *a)
{
    int i;
    memset(a, 0, sizeof(*a));
    a->corpus_bytes = 300000; a->layer = 3; a->seq_len = 128; a->shuffle = 65536;
    a->eval_pairs = 32768; a->log_every = 100; a->save_every = 1000; a->eval_frac = 0.1; a->init_pairs = 16384;
    a->xo.steps = 5000; a->xo.seed = 1;
    for (i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n = 0;
        double x = 0.0;
        int takes_int = 0, takes_num = 0;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) { usage(stdout); return -1; }
        if (!strcmp(o, "--keep-first")) { a->keep_first = 1; continue; }
        if (!strcmp(o, "--raw-norms")) { a->raw_norms = 1; continue; }
        if (!strcmp(o, "--uncentred-encoder")) { a->xo.uncentred_encoder = 1; continue; }
        if (!strcmp(o, "--aux-exact-relu")) { a->xo.aux_exact_relu = 1; continue; }
        if (!v) { fprintf(stderr, "moexc_crosscoder: %s needs a value (see --help)\n", o); return 0; }
#define INT_OPT(name, dst) if (!strcmp(o, name)) { takes_int = 1; if (!parse_long(v, &n)) goto bad; dst = n; i++; continue; }
#define NUM_OPT(name, dst) if (!strcmp(o, name)) { char *e_; takes_num = 1; x = strtod(v, &e_); if (e_ == v || *e_) goto bad; dst = x; i++; continue; }
#define STR_OPT(name, dst) if (!strcmp(o, name)) { dst = v; i++; continue; }
        STR_OPT("--model-a", a->model_a) STR_OPT("--model-b", a->model_b) STR_OPT("--tokens", a->tokens_path)
        STR_OPT("--save", a->save) STR_OPT("--checkpoint", a->checkpoint) STR_OPT("--resume", a->resume)
        STR_OPT("--eval", a->eval_only) STR_OPT("--cache-write", a->cache_write) STR_OPT("--cache", a->cache_read)
        INT_OPT("--corpus", a->corpus_bytes) INT_OPT("--layer", a->layer) INT_OPT("--seq-len", a->seq_len)
        INT_OPT("--shuffle", a->shuffle) INT_OPT("--eval-pairs", a->eval_pairs) INT_OPT("--log-every", a->log_every)
        INT_OPT("--save-every", a->save_every) INT_OPT("--threads", a->threads) INT_OPT("--init-pairs", a->init_pairs)
        INT_OPT("--latents", a->xo.n_latents) INT_OPT("--k", a->xo.k) INT_OPT("--shared", a->xo.n_shared)
        INT_OPT("--aux-k", a->xo.aux_k) INT_OPT("--dead-tokens", a->xo.dead_tokens) INT_OPT("--steps", a->xo.steps)
        INT_OPT("--batch", a->xo.batch) INT_OPT("--warmup", a->xo.warmup_steps) INT_OPT("--seed", a->xo.seed)
        NUM_OPT("--lambda", a->xo.lambda_f) NUM_OPT("--ratio", a->xo.lambda_ratio) NUM_OPT("--aux-alpha", a->xo.aux_alpha)
        NUM_OPT("--lr", a->xo.lr) NUM_OPT("--init-norm", a->xo.init_norm) NUM_OPT("--eval-frac", a->eval_frac)
#undef INT_OPT
#undef NUM_OPT
#undef STR_OPT
        if (!strcmp(o, "--site")) {
            if (!strcmp(v, "ffn")) a->site = MOEXC_SITE_FFN_OUT;
            else if (!strcmp(v, "resid")) a->site = MOEXC_SITE_RESID;
            else goto bad;
            i++; continue;
        }
        if (!strcmp(o, "--variant")) {
            if (!strcmp(v, "batchtopk")) a->xo.variant = MOEXC_XC_BATCHTOPK;
            else if (!strcmp(v, "l1")) a->xo.variant = MOEXC_XC_L1;
            else goto bad;
            i++; continue;
        }
        fprintf(stderr, "moexc_crosscoder: unknown option %s (see --help)\n", o);
        return 0;
    bad:
        fprintf(stderr, "moexc_crosscoder: bad value '%s' for %s%s\n", v, o,
                takes_int ? " (an integer)" : takes_num ? " (a number)" : "");
        return 0;
    }
    if (a->xo.n_latents < 0 || a->xo.steps < 1 || a->xo.batch < 0 || a->shuffle < 1 || a->eval_pairs < 1 ||
        a->log_every < 1 || a->save_every < 1 || a->seq_len < 2 || a->layer < 0 || a->init_pairs < 1 ||
        !(a->eval_frac > 0.0 && a->eval_frac < 1.0)) {
        fprintf(stderr, "moexc_crosscoder: an option is out of range (steps, batch, shuffle, eval-pairs >= 1, "
                        "seq-len >= 2, layer >= 0, 0 < eval-frac < 1)\n");
        return 0;
    }
    if (!a->cache_read && (!a->model_a || !a->model_b)) {
        fprintf(stderr, "moexc_crosscoder: --model-a and --model-b are required (or --cache)\n");
        return 0;
    }
    return 1;
}

/* ---- a stream of shuffled pairs ------------------------------------------------- */
typedef struct pair_source {
    moexc_harvester *h;
    moexc_act_cache  cache;        /* reading: --cache */
    int              from_cache;
    moexc_act_cache *writer;       /* --cache-write, may be NULL */
    moexc_shuffle_buffer sb;
    int      d[2], chunk;
    float   *raw[2], *out[2];      /* (chunk x d_m) */
    int      out_n, out_pos;
} pair_source;

/* Fill x_a, x_b with n shuffled pairs. */
static moexc_status source_next(pair_source *p, float *x_a, float *x_b, int n, moexc_error *err)
{
    int got = 0;
    while (got < n) {
        int take, rows = 0;
        moexc_status st;
        if (p->out_pos < p->out_n) {
            take = IMIN(n - got, p->out_n - p->out_pos);
            memcpy(x_a + (size_t)got * p->d[0], p->out[0] + (size_t)p->out_pos * p->d[0], (size_t)take * p->d[0] * sizeof(float));
            memcpy(x_b + (size_t)got * p->d[1], p->out[1] + (size_t)p->out_pos * p->d[1], (size_t)take * p->d[1] * sizeof(float));
            p->out_pos += take; got += take;
            continue;
        }
        if (p->from_cache) {
            st = moexc_act_cache_read(&p->cache, p->raw[0], p->raw[1], p->chunk, &rows, err);
            if (st != MOEXC_OK) return st;
            if (rows == 0) {   /* wrap: reopen */
                char path[4096];
                snprintf(path, sizeof(path), "%s", p->cache.path);
                moexc_act_cache_close(&p->cache, NULL);
                if ((st = moexc_act_cache_open(&p->cache, path, err)) != MOEXC_OK) return st;
                continue;
            }
        } else {
            st = moexc_harvester_next(p->h, p->raw[0], p->raw[1], &rows, err);
            if (st != MOEXC_OK) return st;
            if (p->writer && (st = moexc_act_cache_append(p->writer, p->raw[0], p->raw[1], rows, err)) != MOEXC_OK) return st;
        }
        moexc_shuffle_push(&p->sb, p->raw[0], p->raw[1], rows, p->out[0], p->out[1], &p->out_n);
        p->out_pos = 0;
    }
    return MOEXC_OK;
}

static void print_eval(const char *what, const moexc_xc_eval *ev)
{
    printf("%s: FVE A %.4f  B %.4f  pooled %.4f | L0 %.2f | dead %.4f | mse A %.4g B %.4g | %lld pairs\n", what,
           ev->fve[0], ev->fve[1], ev->fve_pooled, ev->l0, ev->dead_fraction, ev->mse[0], ev->mse[1], (long long)ev->n);
}

/* Relative decoder norms and classes (SPEC §5), on the folded decoders. */
static void print_classes(moexc_xc *xc, const int64_t *counts, int64_t n_tokens, const moexc_xc_eval *ev, int raw)
{
    int F = moexc_xc_get_options(xc)->n_latents, da = moexc_xc_dim(xc, 0), db = moexc_xc_dim(xc, 1);
    float *dec_a = (float *)malloc((size_t)F * da * sizeof(float)), *dec_b = (float *)malloc((size_t)F * db * sizeof(float));
    moexc_latent_analysis an;
    moexc_eval_summary sum;
    moexc_error err;
    if (!dec_a || !dec_b) { free(dec_a); free(dec_b); return; }
    moexc_xc_decoder(xc, 0, raw, dec_a);
    moexc_xc_decoder(xc, 1, raw, dec_b);
    printf("relative decoder norms r = |d^B| / (|d^A| + |d^B|) in %s units\n", raw ? "raw (folded)" : "normalised");
    memset(&an, 0, sizeof(an));
    if (moexc_analyze_latents(&an, dec_a, da, dec_b, db, F, moexc_xc_get_options(xc)->n_shared, counts, n_tokens,
                              NULL, &err) == MOEXC_OK) {
        memset(&sum, 0, sizeof(sum));
        sum.has_fve = 1; sum.fve_a = ev->fve[0]; sum.fve_b = ev->fve[1]; sum.fve_pooled = ev->fve_pooled;
        sum.has_l0 = 1; sum.l0 = ev->l0; sum.dead_fraction = ev->dead_fraction;
        moexc_analysis_print_table(stdout, &an, &sum);
        moexc_latent_analysis_free(&an);
    } else {
        fprintf(stderr, "analysis: %s\n", err.message);
    }
    free(dec_a); free(dec_b);
}

static int xc_main(int argc, char **argv, tool_dp *dp);

int main(int argc, char **argv)
{
    tool_dp dp;
    tool_dp_init(&dp, &argc, &argv);
    return tool_dp_exit(&dp, xc_main(argc, argv, &dp));
}

static int xc_main(int argc, char **argv, tool_dp *dp)
{
    args a;
    moexc_error err;
    moexc_model *ma = NULL, *mb = NULL;
    moexc_tokens tok, train_tok, eval_tok;
    moexc_harvest_options ho;
    moexc_harvester *eval_h = NULL;
    moexc_xc *xc = NULL;
    moexc_act_cache writer;
    pair_source src;
    float *ea = NULL, *eb = NULL, *xa = NULL, *xb = NULL;
    int64_t *counts = NULL;
    int eval_n = 0, step, rc = 1, m;
    moexc_xc_eval ev;
    double t0;
    memset(&tok, 0, sizeof(tok)); memset(&train_tok, 0, sizeof(train_tok)); memset(&eval_tok, 0, sizeof(eval_tok));
    memset(&src, 0, sizeof(src)); memset(&writer, 0, sizeof(writer));
    if ((rc = parse_args(argc, argv, &a)) <= 0) return rc < 0 ? 0 : 2;   /* --help, or an error */
    rc = 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* before any work: can every output be written? (by rank 0, the only
       writer: ranks probing one "<path>.tmp" at once would race) */
    if (!a.eval_only && dp->rank == 0) {
        const char *opt[3] = { "--save", "--checkpoint", "--cache-write" }, *path[3];
        path[0] = a.save; path[1] = a.checkpoint; path[2] = a.cache_read ? NULL : a.cache_write;
        for (m = 0; m < 3; m++)
            if (path[m] && moexc_check_writable(path[m], &err) != MOEXC_OK) {
                fprintf(stderr, "moexc_crosscoder: %s: %s\n", opt[m], err.message);
                return 1;
            }
    }
#ifdef _OPENMP
    if (a.threads > 0) omp_set_num_threads(a.threads);
#endif
#define CHECK(call) do { if ((call) != MOEXC_OK) { fprintf(stderr, "moexc_crosscoder: %s\n", err.message); goto done; } } while (0)

    /* a resumed run takes the checkpoint's seed, which seeds the data stream too */
    if (a.resume) {
        CHECK(moexc_xc_load(&xc, a.resume, &err));
        a.xo.seed = moexc_xc_get_options(xc)->seed;
    }

    /* ---- data: models and the held-out pairs ---- */
    if (a.eval_only && a.resume) { fprintf(stderr, "moexc_crosscoder: give --eval or --resume, not both\n"); goto done; }
    if (a.eval_only && (!a.model_a || !a.model_b)) {
        fprintf(stderr, "moexc_crosscoder: --eval needs --model-a and --model-b\n");
        goto done;
    }
    if (a.model_a && a.model_b) {   /* (with --cache, the models only give the held-out pairs) */
        size_t split;
        CHECK(moexc_model_load(&ma, a.model_a, &err));
        CHECK(moexc_model_load(&mb, a.model_b, &err));
        if (a.tokens_path) CHECK(moexc_tokens_load(&tok, a.tokens_path, &err));
        else CHECK(moexc_corpus_builtin(&tok, (size_t)a.corpus_bytes, 12345, &err));
        /* held out: every round(1/eval_frac)-th block of 8 sequences, so that
           both sets cover every domain of the stream */
        {
            size_t block = (size_t)a.seq_len * 8, period = (size_t)(1.0 / a.eval_frac + 0.5), b, len;
            train_tok = tok; eval_tok = tok;
            train_tok.tokens = (uint16_t *)malloc(tok.n * sizeof(uint16_t));
            train_tok.domains = (uint8_t *)malloc(tok.n);
            eval_tok.tokens = (uint16_t *)malloc(tok.n * sizeof(uint16_t));
            eval_tok.domains = (uint8_t *)malloc(tok.n);
            train_tok.n = eval_tok.n = 0;
            if (!train_tok.tokens || !train_tok.domains || !eval_tok.tokens || !eval_tok.domains) {
                fprintf(stderr, "moexc_crosscoder: out of memory\n");
                goto done;
            }
            if (period < 2) period = 2;
            for (split = 0, b = 0; split < tok.n; split += block, b++) {
                moexc_tokens *dst = b % period == period - 1 ? &eval_tok : &train_tok;
                len = IMIN(block, tok.n - split);
                memcpy(dst->tokens + dst->n, tok.tokens + split, len * sizeof(uint16_t));
                memcpy(dst->domains + dst->n, tok.domains + split, len);
                dst->n += len;
            }
        }
        memset(&ho, 0, sizeof(ho));
        ho.layer = a.layer == 0 ? MOEXC_HARVEST_LAYER0 : a.layer;
        ho.site = a.site; ho.seq_len = a.seq_len; ho.keep_first = a.keep_first; ho.seed = a.xo.seed;
        ho.sequential = 1;   /* the held-out set: its windows in order */
        CHECK(moexc_harvester_create(&eval_h, ma, mb, &eval_tok, &ho, &err));
        ho.sequential = 0;   /* training: random windows */
        src.d[0] = moexc_harvester_dim(eval_h, 0); src.d[1] = moexc_harvester_dim(eval_h, 1);
        {
            int per = moexc_harvester_rows_per_call(eval_h), rows;
            float *ta = (float *)malloc((size_t)per * src.d[0] * sizeof(float)), *tb = (float *)malloc((size_t)per * src.d[1] * sizeof(float));
            size_t max_pairs = (eval_tok.n / (size_t)a.seq_len) * (size_t)(a.seq_len - (a.keep_first ? 0 : 1));
            eval_n = (int)IMIN((size_t)a.eval_pairs, max_pairs);
            if (eval_n < 1) { fprintf(stderr, "moexc_crosscoder: the held-out tokens give no pairs (seq-len %d)\n", a.seq_len); free(ta); free(tb); goto done; }
            ea = (float *)malloc((size_t)eval_n * src.d[0] * sizeof(float));
            eb = (float *)malloc((size_t)eval_n * src.d[1] * sizeof(float));
            if (!ta || !tb || !ea || !eb) { fprintf(stderr, "moexc_crosscoder: out of memory\n"); free(ta); free(tb); goto done; }
            for (m = 0; m < eval_n; m += rows) {
                int take;
                if (moexc_harvester_next(eval_h, ta, tb, &rows, &err) != MOEXC_OK) { free(ta); free(tb); fprintf(stderr, "%s\n", err.message); goto done; }
                take = IMIN(rows, eval_n - m);
                memcpy(ea + (size_t)m * src.d[0], ta, (size_t)take * src.d[0] * sizeof(float));
                memcpy(eb + (size_t)m * src.d[1], tb, (size_t)take * src.d[1] * sizeof(float));
            }
            free(ta); free(tb);
        }
        printf("models: A %s (d %d), B %s (d %d); layer %d, %s; %lu tokens, %d held-out pairs\n", a.model_a, src.d[0],
               a.model_b, src.d[1], a.layer, a.site ? "residual stream" : "FFN output", (unsigned long)tok.n, eval_n);
    }

    if (a.eval_only) {
        CHECK(moexc_xc_load(&xc, a.eval_only, &err));
        printf("evaluating %s at step %d of %d\n", a.eval_only, moexc_xc_step(xc), moexc_xc_get_options(xc)->steps);
        CHECK(moexc_xc_set_reduce(xc, &dp->reduce, &err));   /* each rank scores its share */
        if (moexc_xc_dim(xc, 0) != src.d[0] || moexc_xc_dim(xc, 1) != src.d[1]) {
            fprintf(stderr, "moexc_crosscoder: %s has widths %d, %d; the models give %d, %d\n", a.eval_only,
                    moexc_xc_dim(xc, 0), moexc_xc_dim(xc, 1), src.d[0], src.d[1]);
            goto done;
        }
        counts = (int64_t *)calloc((size_t)moexc_xc_get_options(xc)->n_latents, sizeof(int64_t));
        CHECK(moexc_xc_evaluate(xc, ea, eb, eval_n, &ev, counts, &err));
        print_eval("eval", &ev);
        print_classes(xc, counts, eval_n, &ev, a.raw_norms);
        rc = 0;
        goto done;
    }

    /* ---- training source ---- */
    if (a.cache_read) {
        CHECK(moexc_act_cache_open(&src.cache, a.cache_read, &err));
        src.from_cache = 1;
        if (ea && (src.cache.d[0] != src.d[0] || src.cache.d[1] != src.d[1])) {
            fprintf(stderr, "moexc_crosscoder: cache %s has widths %d, %d; the models give %d, %d\n", a.cache_read,
                    src.cache.d[0], src.cache.d[1], src.d[0], src.d[1]);
            goto done;
        }
        src.d[0] = src.cache.d[0]; src.d[1] = src.cache.d[1];
        src.chunk = 4096;
    } else {
        CHECK(moexc_harvester_create(&src.h, ma, mb, &train_tok, &ho, &err));
        src.chunk = moexc_harvester_rows_per_call(src.h);
        if (a.cache_write && dp->rank == 0) { CHECK(moexc_act_cache_create(&writer, a.cache_write, src.d[0], src.d[1], &err)); src.writer = &writer; }
    }
    CHECK(moexc_shuffle_init(&src.sb, src.d[0], src.d[1], a.shuffle, a.xo.seed, &err));
    for (m = 0; m < 2; m++) {
        src.raw[m] = (float *)malloc((size_t)src.chunk * src.d[m] * sizeof(float));
        src.out[m] = (float *)malloc((size_t)src.chunk * src.d[m] * sizeof(float));
        if (!src.raw[m] || !src.out[m]) { fprintf(stderr, "moexc_crosscoder: out of memory\n"); goto done; }
    }

    /* ---- the crosscoder ---- */
    if (a.resume) {
        /* Replay the data stream to where the checkpoint left it: the pairs
           of the initialisation, then those of every step taken. The stream
           (random windows, shuffle buffer) is a pure function of the seed and
           the data options, so with the same options as the first run the
           resumed run sees the same pairs, and ends with the same bits. */
        const moexc_xc_options *o = moexc_xc_get_options(xc);
        double skip = (double)a.init_pairs + (double)moexc_xc_step(xc) * o->batch;
        CHECK(moexc_xc_set_reduce(xc, &dp->reduce, &err));
        printf("resumed %s at step %d of %d (the checkpoint's options apply); replaying %.0f pairs of the data stream\n",
               a.resume, moexc_xc_step(xc), o->steps, skip);
        xa = (float *)malloc((size_t)o->batch * src.d[0] * sizeof(float));
        xb = (float *)malloc((size_t)o->batch * src.d[1] * sizeof(float));
        if (!xa || !xb) { fprintf(stderr, "moexc_crosscoder: out of memory\n"); goto done; }
        while (skip > 0) {
            int take = skip < o->batch ? (int)skip : o->batch;
            CHECK(source_next(&src, xa, xb, take, &err));
            skip -= take;
        }
        free(xa); free(xb); xa = xb = NULL;
    } else {
        int n_init = a.init_pairs;
        a.xo.reduce = dp->reduce;   /* zero with one process */
        CHECK(moexc_xc_create(&xc, src.d[0], src.d[1], &a.xo, &err));
        xa = (float *)malloc((size_t)n_init * src.d[0] * sizeof(float));
        xb = (float *)malloc((size_t)n_init * src.d[1] * sizeof(float));
        if (!xa || !xb) { fprintf(stderr, "moexc_crosscoder: out of memory\n"); goto done; }
        CHECK(source_next(&src, xa, xb, n_init, &err));
        CHECK(moexc_xc_init_from_data(xc, xa, xb, n_init, &err));
        free(xa); free(xb); xa = xb = NULL;
    }
    {
        const moexc_xc_options *o = moexc_xc_get_options(xc);
        int share = o->batch / dp->world;   /* this rank's pairs of each batch: rows [rank share, (rank+1) share) */
        if (o->batch % dp->world != 0) {
            fprintf(stderr, "moexc_crosscoder: --batch %d is not divisible by the %d ranks (--batch is the global batch)\n",
                    o->batch, dp->world);
            goto done;
        }
        if (dp->world > 1)
            printf("data-parallel: %d ranks x %d pairs of each batch%s\n", dp->world, share,
                   src.from_cache ? "" : " (every rank harvests the whole stream: --cache shares that work)");
        printf("crosscoder: %s, F %d, k %d, shared %d, lambda_f %g, ratio %g, aux_k %d, dead after %lld tokens; "
               "steps %d x batch %d, lr %g; scales %.4g %.4g; %lu parameters\n",
               o->variant == MOEXC_XC_L1 ? "L1" : "BatchTopK", o->n_latents, o->k, o->n_shared, o->lambda_f,
               o->lambda_ratio, o->aux_k, (long long)o->dead_tokens, o->steps, o->batch, o->lr,
               moexc_xc_scale(xc, 0), moexc_xc_scale(xc, 1), (unsigned long)moexc_xc_num_params(xc));
        /* two batches: the step trains on one while the next is drawn into
           the other, one after the other or at once (tools/schedule_probe.h);
           at once needs 2 or 3 threads and one process (MPI is called from
           the step, on the main thread only) */
        const size_t half_a = (size_t)o->batch * src.d[0], half_b = (size_t)o->batch * src.d[1];
        const int first = moexc_xc_step(xc);
        const int overlap = dp->world == 1 && SCHEDULE_PROBE_APPLIES();
        schedule_probe probe;
        schedule_probe_init(&probe);
        xa = (float *)malloc(2 * half_a * sizeof(float));
        xb = (float *)malloc(2 * half_b * sizeof(float));
        if (!xa || !xb) { fprintf(stderr, "moexc_crosscoder: out of memory\n"); goto done; }
        t0 = now_seconds();
        if (first < o->steps) CHECK(source_next(&src, xa, xb, o->batch, &err));     /* the first batch */
        for (step = first; step < o->steps; step++) {
            const int cur = (step - first) % 2, last = step + 1 == o->steps;
            const float *cur_a = xa + cur * half_a + (size_t)dp->rank * share * src.d[0];
            const float *cur_b = xb + cur * half_b + (size_t)dp->rank * share * src.d[1];
            float *next_a = xa + (1 - cur) * half_a, *next_b = xb + (1 - cur) * half_b;
            /* whether drawing the next batch calls the harvester (or the cache) */
            const int calls_source = src.out_n - src.out_pos < o->batch;
            int together = 0, probed = 0;
            moexc_status st_step = MOEXC_OK, st_next = MOEXC_OK;
            moexc_error err_next;
            moexc_xc_step_stats s;
            double step_t0 = now_seconds();
            if (overlap && !last) {     /* from the second step on, the probe times both */
                probed = step > first && probe.probing;
                together = schedule_probe_pick(&probe, calls_source);
            }
#ifdef _OPENMP
            if (together) {
#               pragma omp parallel sections num_threads(2)
                {
#                   pragma omp section
                    {
                        omp_set_num_threads(1);    /* this thread's nested regions: one thread */
                        st_step = moexc_xc_train_step(xc, cur_a, cur_b, share, &s, &err);
                    }
#                   pragma omp section
                    {
                        omp_set_num_threads(1);
                        st_next = source_next(&src, next_a, next_b, o->batch, &err_next);
                    }
                }
            }
#endif
            if (!together) {
                st_step = moexc_xc_train_step(xc, cur_a, cur_b, share, &s, &err);
                if (st_step == MOEXC_OK && !last) st_next = source_next(&src, next_a, next_b, o->batch, &err_next);
            }
            CHECK(st_step);
            if (st_next != MOEXC_OK) { err = err_next; CHECK(st_next); }
            if (probed && schedule_probe_record(&probe, together, calls_source, now_seconds() - step_t0))
                printf("schedule: a step and its share of drawing pairs took %.1f ms one after the other, %.1f ms at once "
                       "(the step on one thread, the next batch on the other); %s from here on\n",
                       1e3 * probe.seconds[0], 1e3 * probe.seconds[1], probe.together ? "at once" : "one after the other");
            if ((step + 1) % a.log_every == 0 || step + 1 == o->steps) {
                double el = now_seconds() - t0, done_steps = step + 1 - (a.resume ? 0 : 0);
                double rate = (double)o->batch * (step + 1 - 0) / (el > 0 ? el : 1e-9);
                (void)done_steps;
                printf("step %6d | loss %.4f rec %.4f aux %.4f pen %.4f | FVE A %.3f B %.3f | L0 %.1f | dead %.3f | "
                       "lr %.2e | %.0f samples/s | ETA %.0f s\n", step + 1, s.loss, s.rec, s.aux, s.penalty,
                       s.fve[0], s.fve[1], s.l0, s.dead_fraction, s.lr, rate,
                       (o->steps - step - 1) * (double)o->batch / (rate > 0 ? rate : 1));
                fflush(stdout);
            }
            if (a.checkpoint && (step + 1) % a.save_every == 0 && dp->rank == 0) CHECK(moexc_xc_save_training(xc, a.checkpoint, &err));
        }
    }
    if (dp->world > 1) {   /* every rank must end with the same bits */
        unsigned long long print = 0;
        if (!tool_dp_same(dp, moexc_xc_params(xc), moexc_xc_num_params(xc) * sizeof(float), &print)) {
            fprintf(stderr, "moexc_crosscoder: the %d ranks ended with different parameters (rank %d: %016llx)\n",
                    dp->world, dp->rank, print);
            goto done;
        }
        printf("ranks: all %d hold identical parameters (fingerprint %016llx)\n", dp->world, print);
    }
    if (a.checkpoint && dp->rank == 0) CHECK(moexc_xc_save_training(xc, a.checkpoint, &err));
    if (a.save && dp->rank == 0) CHECK(moexc_xc_save(xc, a.save, &err));
    if (src.writer) { CHECK(moexc_act_cache_close(&writer, &err)); src.writer = NULL; }
    if (ea) {
        counts = (int64_t *)calloc((size_t)moexc_xc_get_options(xc)->n_latents, sizeof(int64_t));
        CHECK(moexc_xc_evaluate(xc, ea, eb, eval_n, &ev, counts, &err));
        print_eval("held-out", &ev);
        print_classes(xc, counts, eval_n, &ev, a.raw_norms);
    }
    rc = 0;
done:
    if (src.writer) moexc_act_cache_abort(&writer);
    if (src.from_cache) moexc_act_cache_close(&src.cache, NULL);
    moexc_shuffle_free(&src.sb);
    for (m = 0; m < 2; m++) { free(src.raw[m]); free(src.out[m]); }
    moexc_harvester_free(src.h);
    moexc_harvester_free(eval_h);
    moexc_xc_free(xc);
    moexc_model_free(ma); moexc_model_free(mb);
    moexc_tokens_free(&tok);
    free(train_tok.tokens); free(train_tok.domains); free(eval_tok.tokens); free(eval_tok.domains);
    free(ea); free(eb); free(xa); free(xb); free(counts);
    return rc;
}
