/* tools/moexc_lens.c - MoE Lens (SPEC §6): how a trained MoE's experts
   specialise and how close the top-weighted expert comes to the ensemble.

     moexc_lens --model report/moe.ckpt --tokens report/corpus.tok --out lens/
     moexc_lens --model moe.safetensors --builtin 300000 --max-k 8

   Prints the tables, writes <out>/<prefix>lens.csv, lens.json and the PNG
   plots (stb_image_write; the Makefile adds -isystem $(STB_DIR)).
   Run with --help for every option. */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L   /* clock_gettime, mkdir */
#endif
#include "../moexc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include "tool_clock.h"
#ifdef _WIN32
#include <direct.h>
#define make_dir(p) _mkdir(p)
#else
#include <sys/stat.h>
#define make_dir(p) mkdir((p), 0777)
#endif
#ifdef _OPENMP
#include <omp.h>
#endif
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
#include "tool_png.h"

static void usage(FILE *out)
{
    fprintf(out,
        "usage: moexc_lens --model PATH [--tokens FILE | --builtin BYTES] [options]\n"
        "MoE Lens (SPEC §6) for a MoE checkpoint: per MoE layer and domain, the routing share,\n"
        "co-activation C[i][j], concentration (fewest experts taking >= 50%% of routing slots),\n"
        "single-expert early decoding (cosine, top-1 agreement, KL against the full top-k layer)\n"
        "and perplexity with k' experts forced in every MoE layer.\n\n"
        "input:\n"
        "  --model PATH          MoE model or training checkpoint (moexc_train --save/--export, the demo's moe.ckpt)\n"
        "  --tokens FILE         token-stream file (moexc_mkdata, the demo's corpus.tok)\n"
        "  --builtin N           else the built-in corpus, N bytes per domain (default 300000)\n"
        "  --corpus-seed N       seed of the built-in corpus (default 1)\n"
        "  --eval-fraction X     read the last X of each domain's tokens: the trainer's held-out tail\n"
        "                        when the file is the training corpus (default 0.05; negative: all)\n"
        "  --seq-len T           tokens per sequence (default: the model's context)\n"
        "  --seqs N              sequences per domain, evenly spaced (default 64)\n"
        "  --batch B             sequences per forward (default 8)\n"
        "perplexity sweep:\n"
        "  --max-k N             forced k' = 1..N (default the model's k; up to E)\n"
        "  --no-sweep            routing and early decoding only\n"
        "output:\n"
        "  --out DIR             output folder (default lens_report; created if missing)\n"
        "  --prefix S            file-name prefix inside DIR (default none)\n"
        "  --name S              run name in the JSON (default: the model path)\n"
        "  --no-plots            skip the PNGs\n"
        "  --threads N           OpenMP threads (default: the runtime's; same threads, same bits)\n"
        "  -h, --help            this text\n"
        "Writes DIR/PREFIXlens.csv (tidy: metric,layer,domain,k,i,j,value), DIR/PREFIXlens.json,\n"
        "DIR/PREFIXcoact_L<l>.png, PREFIXconcentration.png, PREFIXearly_decoding.png, PREFIXperplexity.png.\n");
}

typedef struct args {
    const char *model, *tokens, *out, *prefix, *name;
    long builtin, corpus_seed;
    int no_plots, threads;
    moexc_lens_options lo;
} args;

static int parse_long(const char *s, long lo, long *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < lo) return 0;
    *out = v;
    return 1;
}

static int parse_args(int argc, char **argv, args *a)
{
    int i;
    memset(a, 0, sizeof(*a));
    a->builtin = 300000; a->corpus_seed = 1; a->out = "lens_report"; a->prefix = "";
    for (i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) { usage(stdout); exit(0); }
        if (!strcmp(o, "--no-sweep")) { a->lo.no_sweep = 1; continue; }
        if (!strcmp(o, "--no-plots")) { a->no_plots = 1; continue; }
        if (!v) { fprintf(stderr, "moexc_lens: %s needs a value (see --help)\n", o); return 0; }
        i++;
        if (!strcmp(o, "--model")) a->model = v;
        else if (!strcmp(o, "--tokens")) a->tokens = v;
        else if (!strcmp(o, "--out")) a->out = v;
        else if (!strcmp(o, "--prefix")) a->prefix = v;
        else if (!strcmp(o, "--name")) a->name = v;
        else if (!strcmp(o, "--eval-fraction")) {
            char *end;
            double x = strtod(v, &end);
            if (end == v || *end || x == 0.0 || x > 1.0) goto bad;
            a->lo.eval_fraction = (float)x;
        }
#define INT_OPT(flag, lo_, dst) else if (!strcmp(o, flag)) { if (!parse_long(v, lo_, &n) || n > 2000000000L) goto bad; dst = n; }
        INT_OPT("--builtin", 1, a->builtin)
        INT_OPT("--corpus-seed", 0, a->corpus_seed)
        INT_OPT("--seq-len", 1, a->lo.seq_len)
        INT_OPT("--seqs", 1, a->lo.max_seqs)
        INT_OPT("--batch", 1, a->lo.batch_size)
        INT_OPT("--max-k", 1, a->lo.max_k)
        INT_OPT("--threads", 1, a->threads)
#undef INT_OPT
        else { fprintf(stderr, "moexc_lens: unknown option %s (see --help)\n", o); return 0; }
        continue;
    bad:
        fprintf(stderr, "moexc_lens: bad value '%s' for %s (see --help)\n", v, o);
        return 0;
    }
    if (!a->model) { fprintf(stderr, "moexc_lens: --model is required (see --help)\n"); return 0; }
    return 1;
}

/* PNGs go to "<path>.tmp" and are renamed into place when complete. */
static int write_png(const char *path, const struct moexc_canvas *c, void *user)
{
    (void)user;
    if (tool_write_png("moexc_lens", path, c)) return 1;
    printf("  wrote %s\n", path);
    return 0;
}

static void on_progress(int done, int total, void *user)
{
    double t0 = *(const double *)user, el = now_seconds() - t0;
    fprintf(stderr, "  [lens] %d/%d sequences  %.1f s  ETA %.0f s\n", done, total, el, el / done * (total - done));
}

int main(int argc, char **argv)
{
    args a;
    moexc_error err;
    moexc_model *m = NULL;
    moexc_tokens data;
    moexc_lens lens;
    char path[4096];
    double t0 = now_seconds();
    int status = 1, n_png = 0;
    const moexc_model_config *c;
    memset(&data, 0, sizeof(data));
    memset(&lens, 0, sizeof(lens));
    if (!parse_args(argc, argv, &a)) return 2;
#ifdef _OPENMP
    if (a.threads > 0) omp_set_num_threads(a.threads);
#endif
    /* before the long work: can the outputs be written? */
    if (make_dir(a.out) != 0 && errno != EEXIST) {
        fprintf(stderr, "moexc_lens: cannot create %s: %s\n", a.out, strerror(errno));
        return 1;
    }
    snprintf(path, sizeof(path), "%s/%slens.json", a.out, a.prefix);
    if (moexc_check_writable(path, &err) != MOEXC_OK) { fprintf(stderr, "moexc_lens: --out: %s\n", err.message); return 1; }

    if (moexc_model_load(&m, a.model, &err)) { fprintf(stderr, "moexc_lens: %s\n", err.message); return 1; }
    c = moexc_model_get_config(m);
    if (c->ffn != MOEXC_FFN_MOE) { fprintf(stderr, "moexc_lens: %s is a dense model; the lens needs a MoE\n", a.model); goto done; }
    if (a.tokens) {
        if (moexc_tokens_load(&data, a.tokens, &err)) { fprintf(stderr, "moexc_lens: %s\n", err.message); goto done; }
    } else if (moexc_corpus_builtin(&data, (size_t)a.builtin, (uint64_t)a.corpus_seed, &err)) {
        fprintf(stderr, "moexc_lens: built-in corpus: %s\n", err.message);
        goto done;
    }
    a.lo.progress = on_progress;
    a.lo.user = &t0;
    if (moexc_lens_init(&lens, m, data.n_domains, &a.lo, &err)) { fprintf(stderr, "moexc_lens: %s\n", err.message); goto done; }
    printf("moexc_lens: %s (E = %d, k = %d, %d layers, d = %d) on %s: %lu tokens, %d domains; "
           "%d sequences of %d per domain from the last %g of each; k' = 1..%d\n",
           a.model, c->n_experts, c->top_k, c->n_layers, c->d_model, a.tokens ? a.tokens : "the built-in corpus",
           (unsigned long)data.n, data.n_domains, lens.opt.max_seqs, lens.opt.seq_len,
           lens.opt.eval_fraction < 0 ? 1.0 : lens.opt.eval_fraction, lens.max_k);
    fflush(stdout);
    if (moexc_lens_run(&lens, m, &data, &err)) { fprintf(stderr, "moexc_lens: %s\n", err.message); goto done; }
    printf("\n");
    moexc_lens_print(stdout, &lens);
    printf("\n");
    snprintf(path, sizeof(path), "%s/%slens.csv", a.out, a.prefix);
    if (moexc_lens_write_csv(&lens, path, &err)) { fprintf(stderr, "moexc_lens: %s\n", err.message); goto done; }
    printf("  wrote %s\n", path);
    snprintf(path, sizeof(path), "%s/%slens.json", a.out, a.prefix);
    if (moexc_lens_write_json(&lens, a.name ? a.name : a.model, path, &err)) { fprintf(stderr, "moexc_lens: %s\n", err.message); goto done; }
    printf("  wrote %s\n", path);
    if (!a.no_plots && moexc_lens_write_plots(&lens, a.out, a.prefix, write_png, NULL, &n_png, &err)) {
        fprintf(stderr, "moexc_lens: %s\n", err.message);
        goto done;
    }
    printf("done in %.1f s\n", now_seconds() - t0);
    status = 0;
done:
    moexc_lens_free(&lens);
    moexc_tokens_free(&data);
    moexc_model_free(m);
    return status;
}
