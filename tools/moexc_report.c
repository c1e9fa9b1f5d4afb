/* tools/moexc_report.c - the study's web page (report/index.html) rebuilt
   from saved files: a token stream, both models and a crosscoder.

     moexc_report --tokens report/corpus.tok --moe report/moe.ckpt \
                  --dense report/dense.ckpt --xc report/crosscoder.safetensors --out report

   Runs moexc_latent_study_run (SPEC §5.2: top contexts, domain and expert
   attribution, spliced loss) over the held-out tail of each domain, the
   latent analysis on the crosscoder's decoders with the densities of those
   tokens, and writes <out>/index.html and <out>/expert_purity.png with the
   same writer as the demo (tools/report_page.h). PNGs already in <out> (the
   demo's plots) appear on the page. Run with --help for every option. */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L   /* mkdir, opendir */
#endif
#include "../moexc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
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
#include "report_page.h"

static void usage(FILE *out)
{
    fprintf(out,
        "usage: moexc_report --tokens FILE --moe CKPT --dense CKPT --xc FILE --out DIR [options]\n"
        "The study as one web page from saved files: latent cards with top held-out contexts,\n"
        "domain and expert attribution, spliced loss, the class table and every PNG in DIR.\n\n"
        "  --tokens FILE     token stream (moexc_mkdata, or the demo's corpus.tok)\n"
        "  --moe CKPT        model A (the MoE; a model or training checkpoint)\n"
        "  --dense CKPT      model B (the dense model)\n"
        "  --xc FILE         crosscoder (safetensors, moexc_xc_save)\n"
        "  --out DIR         writes DIR/index.html and DIR/expert_purity.png (created if missing)\n"
        "  --layer L         harvested block, 0-based (default 3, as the demo)\n"
        "  --site S          ffn (default) or resid\n"
        "  --seq-len T       window length (default min(128, context))\n"
        "  --seqs N          held-out windows per domain (default 64)\n"
        "  --eval-fraction X held-out tail of each domain (default 0.05, the trainer's; 1 = all)\n"
        "  --top N           contexts kept per latent (default 20)\n"
        "  --raw-units       r from raw-unit decoders (default: normalised, as the demo)\n"
        "  --title TEXT      page title\n"
        "  --threads N       OpenMP threads\n"
        "  --seed S          seed of the shuffled baselines (default 1)\n"
        "  -h, --help        this help\n");
}

typedef struct args {
    const char *tokens, *moe, *dense, *xc, *out, *title;
    int layer, site, seq_len, seqs, top, raw_units, threads;
    double eval_fraction;
    unsigned long seed;
} args;

static int write_png(const char *name, const struct moexc_canvas *c, void *user)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", (const char *)user, name);
    return tool_write_png("moexc_report", path, c);
}

static int parse(args *a, int argc, char **argv)
{
    int i;
    memset(a, 0, sizeof(*a));
    a->layer = 3; a->seqs = 64; a->top = 20; a->eval_fraction = 0.05; a->seed = 1;
    for (i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) { usage(stdout); exit(0); }
        if (!strcmp(o, "--raw-units")) { a->raw_units = 1; continue; }
        if (!v) { fprintf(stderr, "moexc_report: %s needs a value (see --help)\n", o); return 1; }
        i++;
        if (!strcmp(o, "--tokens")) a->tokens = v;
        else if (!strcmp(o, "--moe")) a->moe = v;
        else if (!strcmp(o, "--dense")) a->dense = v;
        else if (!strcmp(o, "--xc")) a->xc = v;
        else if (!strcmp(o, "--out")) a->out = v;
        else if (!strcmp(o, "--title")) a->title = v;
        else if (!strcmp(o, "--site")) {
            if (!strcmp(v, "ffn")) a->site = MOEXC_SITE_FFN_OUT;
            else if (!strcmp(v, "resid")) a->site = MOEXC_SITE_RESID;
            else { fprintf(stderr, "moexc_report: --site %s: expected ffn or resid\n", v); return 1; }
        } else if (!strcmp(o, "--eval-fraction")) {
            a->eval_fraction = strtod(v, &end);
            if (*end || !(a->eval_fraction > 0 && a->eval_fraction <= 1)) { fprintf(stderr, "moexc_report: --eval-fraction %s: expected (0, 1]\n", v); return 1; }
        } else {
            long x = strtol(v, &end, 10);
            if (*end || x < 0 || x > 1000000) { fprintf(stderr, "moexc_report: %s %s: expected an integer in [0, 1000000]\n", o, v); return 1; }
            if (!strcmp(o, "--layer")) a->layer = (int)x;
            else if (!strcmp(o, "--seq-len")) a->seq_len = (int)x;
            else if (!strcmp(o, "--seqs") && x > 0) a->seqs = (int)x;
            else if (!strcmp(o, "--top") && x > 0) a->top = (int)x;
            else if (!strcmp(o, "--threads") && x > 0) a->threads = (int)x;
            else if (!strcmp(o, "--seed")) a->seed = (unsigned long)x;
            else { fprintf(stderr, "moexc_report: unknown option or bad value: %s %s (see --help)\n", o, v); return 1; }
        }
    }
    if (!a->tokens || !a->moe || !a->dense || !a->xc || !a->out) {
        fprintf(stderr, "moexc_report: --tokens, --moe, --dense, --xc and --out are required (see --help)\n");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    args a;
    moexc_error err;
    moexc_tokens data;
    moexc_model *moe = NULL, *dense = NULL;
    moexc_xc *xc = NULL;
    moexc_latent_study st;
    moexc_latent_study_options so;
    moexc_latent_analysis an;
    moexc_analysis_options ao;
    report_page pg;
    char probe[4200], title[256], msg[600], v[6][128];
    const char *keys[6], *vals[6];
    float *dec_a = NULL, *dec_b = NULL;
    int status = 1, F, d_a, d_b, i;

    memset(&data, 0, sizeof(data)); memset(&st, 0, sizeof(st)); memset(&an, 0, sizeof(an));
    if (parse(&a, argc, argv)) return 2;
#ifdef _OPENMP
    if (a.threads > 0) omp_set_num_threads(a.threads);
#endif
    /* the output folder must be writable before the long work */
    if (make_dir(a.out) != 0 && errno != EEXIST) { fprintf(stderr, "moexc_report: cannot create %s: %s\n", a.out, strerror(errno)); return 1; }
    snprintf(probe, sizeof(probe), "%s/index.html", a.out);
    if (moexc_check_writable(probe, &err) != MOEXC_OK) { fprintf(stderr, "moexc_report: --out: %s\n", err.message); return 1; }

    if (moexc_tokens_load(&data, a.tokens, &err)) { fprintf(stderr, "moexc_report: %s\n", err.message); goto done; }
    if (moexc_model_load(&moe, a.moe, &err) || moexc_model_load(&dense, a.dense, &err)) { fprintf(stderr, "moexc_report: %s\n", err.message); goto done; }
    if (moexc_xc_load(&xc, a.xc, &err)) { fprintf(stderr, "moexc_report: %s\n", err.message); goto done; }
    F = moexc_xc_get_options(xc)->n_latents; d_a = moexc_xc_dim(xc, 0); d_b = moexc_xc_dim(xc, 1);
    printf("moexc_report: %lu tokens in %d domains; crosscoder F %d; block %d (%s)\n", (unsigned long)data.n, data.n_domains, F,
           a.layer, a.site == MOEXC_SITE_RESID ? "residual" : "FFN/MoE output");

    memset(&so, 0, sizeof(so));
    so.layer = a.layer == 0 ? MOEXC_HARVEST_LAYER0 : a.layer;
    so.site = a.site; so.seq_len = a.seq_len; so.max_seqs = a.seqs; so.top_n = a.top;
    so.eval_fraction = (float)a.eval_fraction; so.seed = (uint64_t)a.seed + 11;
    if (moexc_latent_study_run(&st, moe, dense, xc, &data, &so, &err)) { fprintf(stderr, "moexc_report: %s\n", err.message); goto done; }

    dec_a = (float *)malloc((size_t)F * d_a * sizeof(float));
    dec_b = (float *)malloc((size_t)F * d_b * sizeof(float));
    if (!dec_a || !dec_b) { fprintf(stderr, "moexc_report: out of memory\n"); goto done; }
    moexc_xc_decoder(xc, 0, a.raw_units, dec_a);
    moexc_xc_decoder(xc, 1, a.raw_units, dec_b);
    memset(&ao, 0, sizeof(ao));
    ao.seed = a.seed;
    if (moexc_analyze_latents(&an, dec_a, d_a, dec_b, d_b, F, moexc_xc_get_options(xc)->n_shared, st.act.counts,
                              st.act.n_tokens, &ao, &err)) { fprintf(stderr, "moexc_report: %s\n", err.message); goto done; }
    moexc_analysis_print_table(stdout, &an, NULL);
    for (i = 0; i < 2; i++)
        printf("%s: loss recovered %.3f vs zero, %.3f vs mean ablation (CE %.4f clean, %.4f spliced)\n", i ? "dense" : "MoE",
               moexc_splice_acc_recovered(&st.splice, i, MOEXC_SPLICE_ZERO, st.n_domains),
               moexc_splice_acc_recovered(&st.splice, i, MOEXC_SPLICE_MEAN, st.n_domains),
               moexc_splice_acc_ce(&st.splice, i, MOEXC_SPLICE_CLEAN, st.n_domains),
               moexc_splice_acc_ce(&st.splice, i, MOEXC_SPLICE_XC, st.n_domains));

    snprintf(title, sizeof(title), "%s", a.title ? a.title : "moexc study: MoE vs dense through a crosscoder");
    keys[0] = "token stream"; snprintf(v[0], sizeof(v[0]), "%.120s", a.tokens);
    keys[1] = "models (A, B)"; snprintf(v[1], sizeof(v[1]), "%.60s, %.60s", a.moe, a.dense);
    keys[2] = "crosscoder"; snprintf(v[2], sizeof(v[2]), "%.80s: F %d, %d designated shared, k %d", a.xc, F,
                                     moexc_xc_get_options(xc)->n_shared, moexc_xc_get_options(xc)->k);
    keys[3] = "L0, dead fraction (these tokens)";
    snprintf(v[3], sizeof(v[3]), "%.1f, %.3f", moexc_activation_acc_l0(&st.act), moexc_activation_acc_dead_fraction(&st.act));
    keys[4] = "class counts (MoE-only, shared, dense-only)";
    snprintf(v[4], sizeof(v[4]), "%ld, %ld, %ld", (long)an.classes[MOEXC_CLASS_MOE_ONLY].count,
             (long)an.classes[MOEXC_CLASS_SHARED].count, (long)an.classes[MOEXC_CLASS_DENSE_ONLY].count);
    keys[5] = "r units"; snprintf(v[5], sizeof(v[5]), "%s", a.raw_units ? "raw" : "normalised");
    for (i = 0; i < 6; i++) vals[i] = v[i];
    memset(&pg, 0, sizeof(pg));
    pg.dir = a.out; pg.title = title; pg.summary_keys = keys; pg.summary_values = vals; pg.n_summary = 6;
    pg.an = &an; pg.st = &st; pg.data = &data;
    if (report_page_write(&pg, write_png, (void *)a.out, msg, sizeof(msg))) { fprintf(stderr, "moexc_report: %s\n", msg); goto done; }
    printf("wrote %s/index.html and %s/expert_purity.png\n", a.out, a.out);
    status = 0;
done:
    free(dec_a); free(dec_b);
    moexc_latent_analysis_free(&an);
    moexc_latent_study_free(&st);
    moexc_xc_free(xc); moexc_model_free(moe); moexc_model_free(dense);
    moexc_tokens_free(&data);
    return status;
}
