/* examples/toy_superposition.c - superposition in toy MoEs (SPEC §7, the
   paper "Sparsity and Superposition in Mixture of Experts"), in one run of
   under two minutes on two cores:

     1. the phase diagram: toy MoEs and the dense baseline (n 32 features, m 8
        dimensions per expert) over feature sparsity S x network sparsity k/E;
        monosemantic fraction and features per dimension, and features per
        dimension against 1/(1 - S);
     2. the small-n phase change: n 2, m 1, over S x the importance of the
        second feature, dense against a 2-expert MoE (is there a sharp jump?);
     3. expert specialisation under K-hot and Xavier router init;
     4. Elhage-style pictures of the experts of a few models;
   and writes a report folder: toy.csv and toy.json (one row / object per
   model), summary.json (the verdicts), and the PNGs.

       make toy                         # build/toy_superposition --out toy_report
       build/toy_superposition --help

   Reads top to bottom: settings, helpers for files, then main() runs the
   three sweeps, measures, writes, and prints the verdicts. */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L   /* mkdir */
#endif
#include "../moexc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>
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
#include <stb_image_write.h>   /* the Makefile adds -isystem $(STB_DIR) */
#include "../tools/tool_png.h"

/* ------------------------------------------------------------------------- */
/* Settings                                                                   */

/* Sweep 1: feature sparsity S (columns) x architecture (rows: k/E). */
static const float SPARSITY[] = { 0.0f, 0.5f, 0.8f, 0.9f, 0.95f, 0.98f, 0.99f };
#define N_S ((int)(sizeof(SPARSITY) / sizeof(SPARSITY[0])))
typedef struct arch { int E, k; const char *label; } arch;
static const arch ARCHS[] = { { 1, 1, "dense" }, { 8, 1, "k/E 1/8" }, { 4, 1, "k/E 1/4" },
                              { 4, 2, "k/E 1/2" }, { 4, 4, "k/E 1" } };
#define N_A ((int)(sizeof(ARCHS) / sizeof(ARCHS[0])))
/* Sweeps 1 and 3: I_i = 0.9^i. With equal importance (the seed code's
   default) a dense model has no preferred basis at low sparsity: any
   rotation of the 8 kept directions is as good, so no feature is
   monosemantic; a decay picks the basis, as in "Toy Models of Superposition". */
#define IMPORTANCE_DECAY 0.9f
/* Sweep 2: n 2, m 1; importance of feature 1 relative to feature 0 (rows). */
static const float IMPORTANCE[] = { 0.2f, 0.5f, 0.8f, 1.25f, 2.0f, 5.0f };
#define N_I ((int)(sizeof(IMPORTANCE) / sizeof(IMPORTANCE[0])))
#define SMALL_SEEDS 2          /* best of (lowest loss), as in Elhage et al.  */
/* Sweep 3: E 4, k 1, S 0.9, seeds x {Xavier, K-hot} router init. */
#define SPEC_SEEDS 4

typedef struct settings {
    const char *out;
    int   steps, batch, threads;
    float lr;
    uint64_t seed;
} settings;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: toy_superposition [options]\n"
        "  Trains toy MoEs and dense baselines on sparse synthetic features (SPEC §7)\n"
        "  and writes a report folder: toy.csv, toy.json, summary.json, PNGs.\n"
        "  --out DIR      report folder (default toy_report; created if missing)\n"
        "  --steps N      AdamW steps per model (default 1600)\n"
        "  --batch B      samples per step (default 256)\n"
        "  --lr X         learning rate (default 0.005)\n"
        "  --threads T    OpenMP threads over models (default: all)\n"
        "  --seed S       base seed (default 1)\n"
        "  --help         this text\n"
        "  The seed code trains 10,000 steps of 1024 at lr 0.001; the defaults here are\n"
        "  scaled down to fit two minutes on two cores.\n");
}

/* ------------------------------------------------------------------------- */
/* Files: every file is written to a temporary name and renamed into place.  */

static void join(char *dst, size_t cap, const char *dir, const char *name)
{
    snprintf(dst, cap, "%s/%s", dir, name);
}

/* Before any work: create the folder and prove that a file can be written there. */
static int check_writable(const char *dir)
{
    char path[4096];
    FILE *f;
    make_dir(dir);   /* fails harmlessly if it exists; the probe decides */
    join(path, sizeof(path), dir, ".toy_write_probe");
    f = fopen(path, "wb");
    if (!f || fputs("ok\n", f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "toy_superposition: cannot write into %s (create it, or choose --out)\n", dir);
        return 1;
    }
    remove(path);
    return 0;
}

/* The PNG writer the library's plot functions call: temp name, then rename. */
static int write_png(const char *path, const moexc_canvas *c, void *user)
{
    (void)user;
    if (tool_write_png("toy_superposition", path, c)) return 1;
    printf("  wrote %s\n", path);
    return 0;
}

static int save_png(const char *dir, const char *name, const moexc_canvas *c)
{
    char path[4096];
    join(path, sizeof(path), dir, name);
    return write_png(path, c, NULL);
}

static double now_seconds(void)
{
#ifdef _OPENMP
    return omp_get_wtime();
#else
    return (double)clock() / CLOCKS_PER_SEC;
#endif
}

static void progress(int done, int total, void *user)
{
    if (done == total || done % 16 == 0) printf("  %s: %d/%d models\n", (const char *)user, done, total);
    fflush(stdout);
}

static void json_num(FILE *f, double x)
{
    if (x != x || x > 1e300 || x < -1e300) fputs("null", f);
    else fprintf(f, "%.4g", x);
}

#define CHECK(call) do { if ((call) != MOEXC_OK) { fprintf(stderr, "toy_superposition: %s\n", err.message); return 1; } } while (0)

int main(int argc, char **argv)
{
    settings cfg;
    moexc_error err;
    moexc_toy *sweep = NULL, *small = NULL, *spec = NULL;
    moexc_toy_metrics *msweep = NULL, *msmall = NULL, *mspec = NULL;
    moexc_toy_metric_options mo;
    moexc_canvas cv;
    moexc_plot_options po;
    int i, a, s, q, n_sweep = N_A * N_S, n_small = 2 * N_I * N_S * SMALL_SEEDS, n_spec = 2 * SPEC_SEEDS;
    float mono[N_A * N_S], fpd[N_A * N_S], small_fpd[2][N_I * N_S], xs[N_S];
    float jump[2] = { 0, 0 }, spec_mean[2] = { 0, 0 }, coherence = 0;
    int spec_experts[2] = { 0, 0 };
    char path[4096], s_labels[N_S][16], i_labels[N_I][16];
    const char *s_lab[N_S], *a_lab[N_A], *i_lab[N_I];
    double t0 = now_seconds(), t_train = 0;
    FILE *f;

    /* ---- 0. options, and the output folder before any work ------------- */
    memset(&cfg, 0, sizeof(cfg));
    cfg.out = "toy_report"; cfg.steps = 1600; cfg.batch = 256; cfg.lr = 5e-3f; cfg.seed = 1;
    for (i = 1; i < argc; i += 2) {   /* every option takes a value, except --help */
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) { usage(stdout); return 0; }
        if (!v) { fprintf(stderr, "toy_superposition: %s needs a value\n", o); usage(stderr); return 2; }
        if (!strcmp(o, "--out")) cfg.out = v;
        else if (!strcmp(o, "--steps")) cfg.steps = atoi(v);
        else if (!strcmp(o, "--batch")) cfg.batch = atoi(v);
        else if (!strcmp(o, "--lr")) cfg.lr = (float)atof(v);
        else if (!strcmp(o, "--threads")) cfg.threads = atoi(v);
        else if (!strcmp(o, "--seed")) cfg.seed = (uint64_t)strtoull(v, NULL, 10);
        else { fprintf(stderr, "toy_superposition: unknown option %s\n", o); usage(stderr); return 2; }
    }
    if (cfg.steps < 1 || cfg.batch < 1 || !(cfg.lr > 0.0f) || cfg.threads < 0) {
        fprintf(stderr, "toy_superposition: --steps %d, --batch %d, --lr %g, --threads %d out of range\n",
                cfg.steps, cfg.batch, (double)cfg.lr, cfg.threads);
        return 2;
    }
    if (check_writable(cfg.out)) return 1;
#ifdef _OPENMP
    if (cfg.threads > 0) omp_set_num_threads(cfg.threads);
    printf("toy_superposition: %d threads, %d steps x %d samples per model, lr %g -> %s/\n",
           cfg.threads ? cfg.threads : omp_get_max_threads(), cfg.steps, cfg.batch, (double)cfg.lr, cfg.out);
#else
    printf("toy_superposition: 1 thread (no OpenMP), %d steps x %d samples per model -> %s/\n", cfg.steps, cfg.batch, cfg.out);
#endif

    sweep = (moexc_toy *)calloc((size_t)n_sweep, sizeof(*sweep));
    small = (moexc_toy *)calloc((size_t)n_small, sizeof(*small));
    spec = (moexc_toy *)calloc((size_t)n_spec, sizeof(*spec));
    msweep = (moexc_toy_metrics *)calloc((size_t)n_sweep, sizeof(*msweep));
    msmall = (moexc_toy_metrics *)calloc((size_t)n_small, sizeof(*msmall));
    mspec = (moexc_toy_metrics *)calloc((size_t)n_spec, sizeof(*mspec));
    if (!sweep || !small || !spec || !msweep || !msmall || !mspec) { fprintf(stderr, "toy_superposition: out of memory\n"); return 1; }
    memset(&mo, 0, sizeof(mo));
    mo.n_samples = 4096;

    /* ---- 1. the models: three sweeps, created then trained side by side - */
    for (a = 0; a < N_A; a++)                       /* sweep 1: S x k/E, n 32, m 8 */
        for (s = 0; s < N_S; s++) {
            moexc_toy_config c;
            memset(&c, 0, sizeof(c));               /* zero = the seed code's defaults */
            c.n_experts = ARCHS[a].E; c.top_k = ARCHS[a].k;
            c.feature_prob = 1.0f - SPARSITY[s];
            c.importance_decay = IMPORTANCE_DECAY;
            c.batch_size = cfg.batch; c.lr = cfg.lr;
            c.seed = cfg.seed * 1000 + (uint64_t)(a * N_S + s);
            CHECK(moexc_toy_create(&sweep[a * N_S + s], &c, &err));
        }
    for (q = 0; q < 2; q++)                         /* sweep 2: n 2, m 1, S x importance */
        for (i = 0; i < N_I; i++)
            for (s = 0; s < N_S; s++) {
                int r;
                for (r = 0; r < SMALL_SEEDS; r++) {
                    moexc_toy_config c;
                    float imp[2];
                    imp[0] = 1.0f; imp[1] = IMPORTANCE[i];
                    memset(&c, 0, sizeof(c));
                    c.n_features = 2; c.n_hidden = 1;
                    c.n_experts = q ? 2 : 1; c.top_k = 1;
                    c.importance = imp;             /* copied by create */
                    c.feature_prob = 1.0f - SPARSITY[s];
                    c.batch_size = cfg.batch; c.lr = cfg.lr;
                    c.seed = cfg.seed * 1000 + 500 + (uint64_t)(((q * N_I + i) * N_S + s) * SMALL_SEEDS + r);
                    CHECK(moexc_toy_create(&small[((q * N_I + i) * N_S + s) * SMALL_SEEDS + r], &c, &err));
                }
            }
    for (q = 0; q < n_spec; q++) {                  /* sweep 3: Xavier (even) / K-hot (odd) */
        moexc_toy_config c;
        memset(&c, 0, sizeof(c));                   /* E 4, k 1, S 0.9, n 32, m 8 */
        c.importance_decay = IMPORTANCE_DECAY;
        c.router_init = q & 1 ? MOEXC_TOY_INIT_KHOT : MOEXC_TOY_INIT_XAVIER;
        c.batch_size = cfg.batch; c.lr = cfg.lr;
        c.seed = cfg.seed * 1000 + 900 + (uint64_t)(q / 2);   /* same W init for a pair */
        CHECK(moexc_toy_create(&spec[q], &c, &err));
    }
    {
        double t1 = now_seconds();
        CHECK(moexc_toy_train_many(sweep, n_sweep, cfg.steps, cfg.threads, progress, (void *)"S x k/E sweep", &err));
        CHECK(moexc_toy_train_many(small, n_small, cfg.steps, cfg.threads, progress, (void *)"n 2, m 1 sweep", &err));
        CHECK(moexc_toy_train_many(spec, n_spec, cfg.steps, cfg.threads, progress, (void *)"router init", &err));
        t_train = now_seconds() - t1;
        printf("  trained %d models in %.1f s\n", n_sweep + n_small + n_spec, t_train);
    }

    /* ---- 2. the metrics ------------------------------------------------- */
    for (i = 0; i < n_sweep; i++) CHECK(moexc_toy_measure(&sweep[i], &mo, &msweep[i], &err));
    for (i = 0; i < n_small; i++) CHECK(moexc_toy_measure(&small[i], &mo, &msmall[i], &err));
    for (i = 0; i < n_spec; i++) CHECK(moexc_toy_measure(&spec[i], &mo, &mspec[i], &err));
    for (i = 0; i < n_sweep; i++) { mono[i] = msweep[i].mono_fraction; fpd[i] = msweep[i].features_per_dim; }
    /* sweep 2: the best seed of each cell; the largest jump of features per
       dimension between neighbouring S (the sharpness of a phase change) */
    for (q = 0; q < 2; q++)
        for (i = 0; i < N_I; i++)
            for (s = 0; s < N_S; s++) {
                int r, base = ((q * N_I + i) * N_S + s) * SMALL_SEEDS, best = base;
                for (r = 1; r < SMALL_SEEDS; r++) if (msmall[base + r].loss < msmall[best].loss) best = base + r;
                small_fpd[q][i * N_S + s] = msmall[best].features_per_dim;
                if (s > 0) {
                    float d = fabsf(small_fpd[q][i * N_S + s] - small_fpd[q][i * N_S + s - 1]);
                    if (d > jump[q]) jump[q] = d;
                }
            }
    {   /* means over the experts that have monosemantic features (NaN: none) */
        int cnt[2] = { 0, 0 }, ccnt = 0, e;
        for (q = 0; q < n_spec; q++)
            for (e = 0; e < 4; e++) {
                float v = mspec[q].special[e], bmv = mspec[q].block_match[e];
                if (v == v) { spec_mean[q & 1] += v; cnt[q & 1]++; }
                if (bmv == bmv) { coherence += bmv; ccnt++; }
            }
        spec_experts[0] = cnt[0]; spec_experts[1] = cnt[1];
        spec_mean[0] = cnt[0] ? spec_mean[0] / cnt[0] : NAN;
        spec_mean[1] = cnt[1] ? spec_mean[1] / cnt[1] : NAN;
        coherence = ccnt ? coherence / ccnt : NAN;
    }

    /* ---- 3. tables ------------------------------------------------------ */
    join(path, sizeof(path), cfg.out, "toy.csv");
    CHECK(moexc_toy_write_csv(sweep, msweep, n_sweep, path, &err));
    join(path, sizeof(path), cfg.out, "toy_small.csv");
    CHECK(moexc_toy_write_csv(small, msmall, n_small, path, &err));
    join(path, sizeof(path), cfg.out, "toy_router_init.csv");
    CHECK(moexc_toy_write_csv(spec, mspec, n_spec, path, &err));
    join(path, sizeof(path), cfg.out, "toy.json");
    CHECK(moexc_toy_write_json(sweep, msweep, n_sweep, "S x k/E sweep (n 32, m 8)", path, &err));
    join(path, sizeof(path), cfg.out, "toy_router_init.json");
    CHECK(moexc_toy_write_json(spec, mspec, n_spec, "router init (E 4, k 1, S 0.9)", path, &err));

    /* ---- 4. plots ------------------------------------------------------- */
    for (s = 0; s < N_S; s++) { snprintf(s_labels[s], sizeof(s_labels[s]), "%.2f", (double)SPARSITY[s]); s_lab[s] = s_labels[s]; }
    for (a = 0; a < N_A; a++) a_lab[a] = ARCHS[a].label;
    for (i = 0; i < N_I; i++) { snprintf(i_labels[i], sizeof(i_labels[i]), "I1 %.2g", (double)IMPORTANCE[i]); i_lab[i] = i_labels[i]; }
    CHECK(moexc_canvas_init(&cv, 1100, 520, &err));
    /* phase diagrams: S x k/E, the dense baseline as the top row */
    memset(&po, 0, sizeof(po));
    po.title = "Monosemantic fraction (s < 0.2 of represented features)";
    po.x_label = "feature sparsity S"; po.y_label = "network";
    po.z_min = 0.0; po.z_max = 1.0; po.annotate = 1; po.value_format = "%.2f";
    CHECK(moexc_plot_heatmap(&cv, mono, N_A, N_S, a_lab, s_lab, &po, &err));
    if (save_png(cfg.out, "phase_mono.png", &cv)) return 1;
    moexc_canvas_clear(&cv, 0xFFFFFFu);
    po.title = "Features per dimension (1/k) sum_e p_e ||W_e||_F^2 / m";
    po.z_min = 0.0; po.z_max = 4.0;
    CHECK(moexc_plot_heatmap(&cv, fpd, N_A, N_S, a_lab, s_lab, &po, &err));
    if (save_png(cfg.out, "phase_fpd.png", &cv)) return 1;
    /* features per dimension against 1/(1 - S), a line per network */
    {
        moexc_series ser[N_A];
        moexc_canvas_clear(&cv, 0xFFFFFFu);
        for (s = 0; s < N_S; s++) xs[s] = 1.0f / (1.0f - SPARSITY[s]);
        for (a = 0; a < N_A; a++) { ser[a].x = xs; ser[a].y = fpd + a * N_S; ser[a].n = N_S; ser[a].label = ARCHS[a].label; }
        memset(&po, 0, sizeof(po));
        po.title = "Features per dimension against 1/(1-S)";
        po.x_label = "1/(1-S)"; po.y_label = "features per dimension"; po.log_x = 1;
        CHECK(moexc_plot_lines(&cv, ser, N_A, &po, &err));
        if (save_png(cfg.out, "fpd_vs_sparsity.png", &cv)) return 1;
    }
    /* small-n phase change: dense next to MoE, features per dimension over S x importance */
    moexc_canvas_free(&cv);
    CHECK(moexc_canvas_init(&cv, 1400, 480, &err));
    for (q = 0; q < 2; q++) {
        memset(&po, 0, sizeof(po));
        po.x = q * 700; po.width = 700;
        po.title = q ? "MoE E 2, k 1: features per dim" : "Dense n 2, m 1: features per dim";
        po.x_label = "feature sparsity S"; po.y_label = "importance of feature 1";
        po.z_min = 0.0; po.z_max = 2.0; po.annotate = 1; po.value_format = "%.1f"; po.font_scale = 2;
        CHECK(moexc_plot_heatmap(&cv, small_fpd[q], N_I, N_S, i_lab, s_lab, &po, &err));
    }
    if (save_png(cfg.out, "phase_small_n.png", &cv)) return 1;
    /* specialisation under each init: a row per model, a column per expert */
    {
        float sp[SPEC_SEEDS * 2 * 4], bm[SPEC_SEEDS * 4];
        char labels[2 * SPEC_SEEDS][24], blabels[SPEC_SEEDS][24];
        const char *lab[2 * SPEC_SEEDS], *blab[SPEC_SEEDS];
        for (q = 0; q < n_spec; q++) {
            int row = (q & 1) * SPEC_SEEDS + q / 2, e;
            snprintf(labels[row], sizeof(labels[row]), "%s seed %d", q & 1 ? "K-hot" : "Xavier", q / 2);
            lab[row] = labels[row];
            for (e = 0; e < 4; e++) sp[row * 4 + e] = mspec[q].special[e];
            if (q & 1) {
                snprintf(blabels[q / 2], sizeof(blabels[q / 2]), "K-hot seed %d", q / 2);
                blab[q / 2] = blabels[q / 2];
                for (e = 0; e < 4; e++) bm[(q / 2) * 4 + e] = mspec[q].block_match[e];
            }
        }
        moexc_canvas_clear(&cv, 0xFFFFFFu);
        memset(&po, 0, sizeof(po));
        po.x = 0; po.width = 700;
        po.title = "Top-1 rate, own mono features clamped to 1";
        po.x_label = "expert"; po.z_min = 0.0; po.z_max = 1.0; po.annotate = 1; po.value_format = "%.2f";
        CHECK(moexc_plot_heatmap(&cv, sp, 2 * SPEC_SEEDS, 4, lab, NULL, &po, &err));
        po.x = 700; po.title = "K-hot: share of mono features in own block";
        CHECK(moexc_plot_heatmap(&cv, bm, SPEC_SEEDS, 4, blab, NULL, &po, &err));
        if (save_png(cfg.out, "specialisation.png", &cv)) return 1;
    }
    moexc_canvas_free(&cv);
    /* Elhage-style pictures: dense and E 4 k 1 at S 0.9, and a K-hot model */
    {
        struct { const moexc_toy *t; const moexc_toy_metrics *m; const char *name, *title; } pics[3];
        int s09 = 3;   /* SPARSITY[3] = 0.9 */
        pics[0].t = &sweep[0 * N_S + s09]; pics[0].m = &msweep[0 * N_S + s09];
        pics[0].name = "experts_dense_S0.9.png"; pics[0].title = "Dense baseline, S 0.9 (n 32, m 8)";
        pics[1].t = &sweep[2 * N_S + s09]; pics[1].m = &msweep[2 * N_S + s09];
        pics[1].name = "experts_E4k1_S0.9.png"; pics[1].title = "MoE E 4, k 1, S 0.9 (Xavier router)";
        pics[2].t = &spec[1]; pics[2].m = &mspec[1];
        pics[2].name = "experts_E4k1_khot.png"; pics[2].title = "MoE E 4, k 1, S 0.9, K-hot router (orange: block)";
        for (q = 0; q < 3; q++) {
            CHECK(moexc_canvas_init(&cv, 1100, 70 + 230 * pics[q].t->E, &err));
            CHECK(moexc_toy_plot_experts(&cv, pics[q].t, pics[q].m, pics[q].title, &err));
            if (save_png(cfg.out, pics[q].name, &cv)) return 1;
            moexc_canvas_free(&cv);
        }
    }

    /* ---- 5. the verdicts ------------------------------------------------ */
    {
        float mono_by_a[N_A], sparse_mono[N_A];
        char tmp[4200];
        for (a = 0; a < N_A; a++) {
            float acc = 0, acc_sparse = 0;
            int cnt = 0, cnt_sparse = 0;
            for (s = 0; s < N_S; s++) {
                float v = mono[a * N_S + s];
                if (v == v) { acc += v; cnt++; if (SPARSITY[s] >= 0.9f) { acc_sparse += v; cnt_sparse++; } }
            }
            mono_by_a[a] = cnt ? acc / cnt : NAN;
            sparse_mono[a] = cnt_sparse ? acc_sparse / cnt_sparse : NAN;
        }
        printf("\nmonosemantic fraction (rows: network, columns: S)\n%-9s", "");
        for (s = 0; s < N_S; s++) printf(" %6.2f", (double)SPARSITY[s]);
        printf("   mean  (S>=0.9)\n");
        for (a = 0; a < N_A; a++) {
            printf("%-9s", ARCHS[a].label);
            for (s = 0; s < N_S; s++) printf(" %6.2f", (double)mono[a * N_S + s]);
            printf("  %5.2f  %5.2f\n", (double)mono_by_a[a], (double)sparse_mono[a]);
        }
        printf("features per dimension\n");
        for (a = 0; a < N_A; a++) {
            printf("%-9s", ARCHS[a].label);
            for (s = 0; s < N_S; s++) printf(" %6.2f", (double)fpd[a * N_S + s]);
            printf("\n");
        }
        printf("n 2, m 1: largest jump of features per dimension between neighbouring S: dense %.2f, MoE %.2f\n",
               (double)jump[0], (double)jump[1]);
        printf("specialisation (top-1 rate with own mono features at 1; chance 0.25): Xavier %.2f (%d experts),"
               " K-hot %.2f (%d experts); K-hot block coherence %.2f\n", (double)spec_mean[0], spec_experts[0],
               (double)spec_mean[1], spec_experts[1], (double)coherence);
        join(path, sizeof(path), cfg.out, "summary.json");
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        f = fopen(tmp, "wb");
        if (!f) { fprintf(stderr, "toy_superposition: cannot write %s\n", tmp); return 1; }
        fprintf(f, "{\"steps\": %d, \"batch\": %d, \"lr\": %g, \"seed\": %.0f, \"train_seconds\": %.1f,\n",
                cfg.steps, cfg.batch, (double)cfg.lr, (double)cfg.seed, t_train);
        fputs(" \"sparsity\": [", f);
        for (s = 0; s < N_S; s++) { if (s) fputs(", ", f); json_num(f, SPARSITY[s]); }
        fputs("],\n \"networks\": [", f);
        for (a = 0; a < N_A; a++) {
            fprintf(f, "%s{\"label\": \"%s\", \"E\": %d, \"k\": %d, \"mono_fraction\": [", a ? ", " : "", ARCHS[a].label,
                    ARCHS[a].E, ARCHS[a].k);
            for (s = 0; s < N_S; s++) { if (s) fputs(", ", f); json_num(f, mono[a * N_S + s]); }
            fputs("], \"features_per_dim\": [", f);
            for (s = 0; s < N_S; s++) { if (s) fputs(", ", f); json_num(f, fpd[a * N_S + s]); }
            fputs("], \"mean_mono_fraction\": ", f); json_num(f, mono_by_a[a]);
            fputs("}", f);
        }
        fputs("],\n \"small_n_max_jump\": {\"dense\": ", f); json_num(f, jump[0]);
        fputs(", \"moe\": ", f); json_num(f, jump[1]);
        fputs("},\n \"specialisation\": {\"xavier\": ", f); json_num(f, spec_mean[0]);
        fputs(", \"khot\": ", f); json_num(f, spec_mean[1]);
        fputs(", \"khot_block_coherence\": ", f); json_num(f, coherence);
        fprintf(f, ", \"experts_with_mono\": {\"xavier\": %d, \"khot\": %d}", spec_experts[0], spec_experts[1]);
        fputs("}}\n", f);
        if (fclose(f) != 0 || moexc_replace_file(tmp, path, NULL) != MOEXC_OK) { remove(tmp); fprintf(stderr, "toy_superposition: cannot write %s\n", path); return 1; }
        printf("  wrote %s\n", path);
    }
    printf("done in %.1f s\n", now_seconds() - t0);

    for (i = 0; i < n_sweep; i++) { moexc_toy_metrics_free(&msweep[i]); moexc_toy_free(&sweep[i]); }
    for (i = 0; i < n_small; i++) { moexc_toy_metrics_free(&msmall[i]); moexc_toy_free(&small[i]); }
    for (i = 0; i < n_spec; i++) { moexc_toy_metrics_free(&mspec[i]); moexc_toy_free(&spec[i]); }
    free(sweep); free(small); free(spec); free(msweep); free(msmall); free(mspec);
    return 0;
}
