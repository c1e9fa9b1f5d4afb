/* tests/test_analysis.c - relative decoder norm, classes, cosines, density,
   FVE, L0, Latent Scaling, histograms, and the CSV / JSON / NPY writers,
   all on small cases computed by hand. */
#include "../moexc.h"
#include "harness.h"
#include <stdlib.h>

static char tmp_path_buf[512];
static const char *tmp_path(const char *name)
{
    const char *dir = getenv("TMPDIR");
    snprintf(tmp_path_buf, sizeof(tmp_path_buf), "%s/moexc_test_analysis_%s", dir && *dir ? dir : "/tmp", name);
    return tmp_path_buf;
}

/* Ten latents, d_A = d_B = 2, n_s = 1 (see the comments for r and cos). */
#define F10 10
static const float dec_a10[F10 * 2] = {
    1, 0,            /* 0 designated: r 0.5, cos 1                  */
    7, 0,            /* 1 r = 3/10 = 0.3 -> shared (closed), cos 1  */
    3, 0,            /* 2 r = 7/10 = 0.7 -> shared (closed), cos 0  */
    4, 0,            /* 3 r = 1/5 -> moe-only, cos 0                */
    1, 0,            /* 4 r = 4/5 -> dense-only, cos -1             */
    1, 0,            /* 5 never active -> dead                      */
    0, 0,            /* 6 both rows zero -> dead                    */
    0, 2,            /* 7 r 0.5 -> shared, cos -1                   */
    0.7001f, 0,      /* 8 r just below 0.3 -> moe-only              */
    0.2999f, 0 };    /* 9 r just above 0.7 -> dense-only            */
static const float dec_b10[F10 * 2] = {
    1, 0,  3, 0,  0, 7,  0, 1,  -4, 0,  1, 0,  0, 0,  0, -2,  0.2999f, 0,  0.7001f, 0 };
static const int64_t counts10[F10] = { 10, 5, 5, 2, 1, 0, 3, 4, 1, 1 };

static void test_classes_and_bands(void)
{
    moexc_latent_analysis a;
    moexc_error err;
    static const int want[F10] = { MOEXC_CLASS_DESIGNATED, MOEXC_CLASS_SHARED, MOEXC_CLASS_SHARED,
                                   MOEXC_CLASS_MOE_ONLY, MOEXC_CLASS_DENSE_ONLY, MOEXC_CLASS_DEAD,
                                   MOEXC_CLASS_DEAD, MOEXC_CLASS_SHARED, MOEXC_CLASS_MOE_ONLY,
                                   MOEXC_CLASS_DENSE_ONLY };
    int i;
    moexc_status st = moexc_analyze_latents(&a, dec_a10, 2, dec_b10, 2, F10, 1, counts10, 10, NULL, &err);
    TH_CHECK(st == MOEXC_OK, "status %d", (int)st);
    if (st != MOEXC_OK) return;
    for (i = 0; i < F10; i++) TH_CHECK(a.cls[i] == want[i], "latent %d class %d want %d", i, a.cls[i], want[i]);
    TH_CHECK_NEAR(a.r[1], 0.3, 1e-7, 0, "r_1");
    TH_CHECK_NEAR(a.r[2], 0.7, 1e-7, 0, "r_2");
    TH_CHECK_NEAR(a.r[3], 0.2, 1e-7, 0, "r_3");
    TH_CHECK(a.r[6] != a.r[6], "r of a zero latent is NaN");
    TH_CHECK_NEAR(a.cosine[0], 1.0, 1e-6, 0, "cos designated");
    TH_CHECK_NEAR(a.cosine[4], -1.0, 1e-6, 0, "cos_4");
    TH_CHECK_NEAR(a.cosine[2], 0.0, 1e-6, 0, "cos_2");
    TH_CHECK_NEAR(a.norm_a[1], 7.0, 1e-6, 0, "norm_a");
    TH_CHECK_NEAR(a.density[3], 0.2, 1e-7, 0, "density_3");
    TH_CHECK(a.classes[MOEXC_CLASS_SHARED].count == 3, "shared count %lld", (long long)a.classes[MOEXC_CLASS_SHARED].count);
    TH_CHECK(a.classes[MOEXC_CLASS_MOE_ONLY].count == 2, "moe count");
    TH_CHECK(a.classes[MOEXC_CLASS_DENSE_ONLY].count == 2, "dense count");
    TH_CHECK(a.classes[MOEXC_CLASS_DESIGNATED].count == 1, "designated count");
    TH_CHECK(a.classes[MOEXC_CLASS_DEAD].count == 2, "dead count");
    /* shared = latents 1, 2, 7: densities .5 .5 .4, cosines 1 0 -1 */
    TH_CHECK_NEAR(a.classes[MOEXC_CLASS_SHARED].density_mean, 1.4 / 3.0, 1e-7, 0, "shared density mean");
    TH_CHECK_NEAR(a.classes[MOEXC_CLASS_SHARED].density_median, 0.5, 1e-7, 0, "shared density median");
    TH_CHECK_NEAR(a.classes[MOEXC_CLASS_SHARED].cos_mean, 0.0, 1e-6, 0, "shared cos mean");
    TH_CHECK_NEAR(a.classes[MOEXC_CLASS_SHARED].cos_frac_negative, 1.0 / 3.0, 1e-12, 0, "shared frac negative");
    /* moe-only = latents 3 and 8: densities .2 and .1, median of two = mean */
    TH_CHECK_NEAR(a.classes[MOEXC_CLASS_MOE_ONLY].density_median, 0.15, 1e-7, 0, "moe density median");
    TH_CHECK(a.classes[MOEXC_CLASS_SHARED].r_lo == 0.3 && a.classes[MOEXC_CLASS_SHARED].r_hi == 0.7, "band edges");
    TH_CHECK(a.classes[MOEXC_CLASS_MOE_ONLY].hi_open && !a.classes[MOEXC_CLASS_SHARED].lo_open, "band openness");
    moexc_latent_analysis_free(&a);

    /* Strict bands 0.1 / 0.9: r 0.2 and 0.8 become shared. */
    {
        moexc_analysis_options opt;
        memset(&opt, 0, sizeof(opt));
        opt.strict = 1;
        st = moexc_analyze_latents(&a, dec_a10, 2, dec_b10, 2, F10, 1, counts10, 10, &opt, &err);
        TH_CHECK(st == MOEXC_OK, "strict status");
        if (st != MOEXC_OK) return;
        TH_CHECK(a.cls[3] == MOEXC_CLASS_SHARED && a.cls[4] == MOEXC_CLASS_SHARED, "strict: %d %d", a.cls[3], a.cls[4]);
        TH_CHECK(a.classes[MOEXC_CLASS_MOE_ONLY].count == 0, "strict moe count");
        TH_CHECK(a.classes[MOEXC_CLASS_MOE_ONLY].density_mean != a.classes[MOEXC_CLASS_MOE_ONLY].density_mean,
                 "empty class stats are NaN");
        TH_CHECK(a.moe_max == 0.1 && a.dense_min == 0.9, "strict bands");
        moexc_latent_analysis_free(&a);
    }
    /* Without counts: nothing dead except the zero latent, densities NaN. */
    st = moexc_analyze_latents(&a, dec_a10, 2, dec_b10, 2, F10, 1, NULL, 0, NULL, &err);
    TH_CHECK(st == MOEXC_OK, "no-count status");
    if (st != MOEXC_OK) return;
    TH_CHECK(a.cls[5] == MOEXC_CLASS_SHARED && a.cls[6] == MOEXC_CLASS_DEAD, "no counts: %d %d", a.cls[5], a.cls[6]);
    TH_CHECK(a.density[0] != a.density[0], "density NaN without counts");
    moexc_latent_analysis_free(&a);

    /* Bad arguments get a message, never a crash. */
    st = moexc_analyze_latents(&a, dec_a10, 2, dec_b10, 2, F10, 11, NULL, 0, NULL, &err);
    TH_CHECK(st == MOEXC_ERR_ARG && strstr(err.message, "n_shared=11"), "n_shared check: %s", err.message);
}

static void test_random_pair_baseline(void)
{
    /* Two live latents: the only pairs are (0,1) -> cos(a0, b1) = 1 and (1,0) -> cos(a1, b0) = 0. */
    static const float da[4] = { 1, 0, 1, 0 }, db[4] = { 0, 1, 3, 0 };
    moexc_latent_analysis a, b;
    moexc_analysis_options opt;
    int k, ones = 0, zeros = 0;
    memset(&opt, 0, sizeof(opt));
    opt.n_random_pairs = 1000; opt.seed = 7;
    TH_CHECK(moexc_analyze_latents(&a, da, 2, db, 2, 2, 0, NULL, 0, &opt, NULL) == MOEXC_OK, "status");
    TH_CHECK(a.n_random_pairs == 1000, "pairs %d", a.n_random_pairs);
    for (k = 0; k < a.n_random_pairs; k++) {
        ones += fabsf(a.random_cosine[k] - 1.0f) < 1e-6f;
        zeros += fabsf(a.random_cosine[k]) < 1e-6f;
    }
    TH_CHECK(ones + zeros == 1000 && ones > 400 && zeros > 400, "pairs of different latents: %d ones %d zeros", ones, zeros);
    TH_CHECK_NEAR(a.random_cos_mean, (double)ones / 1000.0, 1e-6, 0, "baseline mean");
    TH_CHECK(moexc_analyze_latents(&b, da, 2, db, 2, 2, 0, NULL, 0, &opt, NULL) == MOEXC_OK, "status");
    TH_CHECK(memcmp(a.random_cosine, b.random_cosine, 1000 * sizeof(float)) == 0, "seeded: same pairs");
    moexc_latent_analysis_free(&a);
    moexc_latent_analysis_free(&b);
}

static void test_fve(void)
{
    /* x = (1,0),(3,2),(5,4): sum_dims Var = 8/3 + 8/3 = 16/3.
       x_hat = (1,1),(3,1),(5,3): e = (0,-1),(0,1),(0,1): Var = 0 + 8/9.
       FVE = 1 - (8/9)/(16/3) = 5/6. Model B reconstructs exactly: pooled 1 - (8/9)/(32/3) = 11/12. */
    static const float x[6] = { 1, 0, 3, 2, 5, 4 }, xh[6] = { 1, 1, 3, 1, 5, 3 };
    moexc_fve_acc acc[2];
    TH_CHECK(moexc_fve_acc_init(&acc[0], 2, NULL) == MOEXC_OK, "init");
    TH_CHECK(moexc_fve_acc_init(&acc[1], 2, NULL) == MOEXC_OK, "init");
    moexc_fve_acc_add(&acc[0], x, xh, 1);             /* streamed in two batches */
    moexc_fve_acc_add(&acc[0], x + 2, xh + 2, 2);
    moexc_fve_acc_add(&acc[1], x, x, 3);
    TH_CHECK_NEAR(moexc_fve_acc_value(&acc[0]), 5.0 / 6.0, 1e-12, 0, "FVE A");
    TH_CHECK_NEAR(moexc_fve_acc_value(&acc[1]), 1.0, 1e-12, 0, "FVE B");
    TH_CHECK_NEAR(moexc_fve_acc_pooled(acc, 2), 11.0 / 12.0, 1e-12, 0, "FVE pooled");
    moexc_fve_acc_free(&acc[0]);
    moexc_fve_acc_free(&acc[1]);
    TH_CHECK(moexc_fve_acc_init(&acc[0], 0, NULL) == MOEXC_ERR_ARG, "dim 0 refused");
}

static void test_activation_acc(void)
{
    /* 3 tokens x 4 latents; latent 3 never fires. */
    static const float f[12] = { 1, 0, 2, 0,   0, 0, 0.5f, 0,   3, 1, 0, 0 };
    moexc_activation_acc acc;
    TH_CHECK(moexc_activation_acc_init(&acc, 4, NULL) == MOEXC_OK, "init");
    moexc_activation_acc_add(&acc, f, 2);
    moexc_activation_acc_add(&acc, f + 8, 1);
    TH_CHECK(acc.counts[0] == 2 && acc.counts[1] == 1 && acc.counts[2] == 2 && acc.counts[3] == 0, "counts");
    TH_CHECK(acc.n_tokens == 3, "tokens");
    TH_CHECK_NEAR(moexc_activation_acc_l0(&acc), 5.0 / 3.0, 1e-12, 0, "L0");
    TH_CHECK_NEAR(moexc_activation_acc_dead_fraction(&acc), 0.25, 1e-12, 0, "dead fraction");
    moexc_activation_acc_free(&acc);
}

static void test_latent_scaling(void)
{
    /* d0 = (2,0), d1 = (0,1), d2 = (1,1) never fires.
       f: b0 (1,0,0), b1 (2,1,0); y: b0 (4,1), b1 (6,3).
       beta_0 = (1*8 + 2*12) / (4 * (1 + 4)) = 1.6; beta_1 = 3 / 1 = 3.
       Error target adds f ||d||^2: beta_0 = (1*12 + 2*20) / 20 = 2.6, beta_1 = 4. */
    static const float dec[6] = { 2, 0, 0, 1, 1, 1 };
    static const float f[6] = { 1, 0, 0, 2, 1, 0 }, y[4] = { 4, 1, 6, 3 };
    moexc_latent_scaling_acc acc;
    float beta[3], beta_err[3], nu[3];
    TH_CHECK(moexc_latent_scaling_init(&acc, dec, 3, 2, MOEXC_LS_RECONSTRUCTION, NULL) == MOEXC_OK, "init");
    moexc_latent_scaling_add(&acc, f, y, 1);
    moexc_latent_scaling_add(&acc, f + 3, y + 2, 1);
    moexc_latent_scaling_beta(&acc, beta);
    moexc_latent_scaling_free(&acc);
    TH_CHECK_NEAR(beta[0], 1.6, 1e-6, 0, "beta_0");
    TH_CHECK_NEAR(beta[1], 3.0, 1e-6, 0, "beta_1");
    TH_CHECK(beta[2] != beta[2], "never-fired latent: NaN");
    TH_CHECK(moexc_latent_scaling_init(&acc, dec, 3, 2, MOEXC_LS_ERROR, NULL) == MOEXC_OK, "init");
    moexc_latent_scaling_add(&acc, f, y, 2);
    moexc_latent_scaling_beta(&acc, beta_err);
    moexc_latent_scaling_free(&acc);
    TH_CHECK_NEAR(beta_err[0], 2.6, 1e-6, 0, "beta_0 error target");
    TH_CHECK_NEAR(beta_err[1], 4.0, 1e-6, 0, "beta_1 error target");
    moexc_latent_scaling_nu(nu, beta, beta_err, 3);
    TH_CHECK_NEAR(nu[0], 1.6 / 2.6, 1e-6, 0, "nu_0");
    TH_CHECK(nu[2] != nu[2], "nu NaN");

    /* More rows than one GEMM chunk: against a direct double computation. */
    {
        enum { N = 600, FF = 5, D = 7 };
        static float dd[FF * D], ff[N * FF], yy[N * D];
        moexc_rng rng;
        double num[FF] = { 0 }, den[FF] = { 0 }, n2[FF] = { 0 };
        int b, i, j;
        moexc_rng_seed(&rng, 3);
        for (i = 0; i < FF * D; i++) dd[i] = moexc_rng_normal(&rng);
        for (i = 0; i < N * FF; i++) { float u = moexc_rng_normal(&rng); ff[i] = u > 0.5f ? u : 0.0f; }
        for (i = 0; i < N * D; i++) yy[i] = moexc_rng_normal(&rng);
        for (i = 0; i < FF; i++) for (j = 0; j < D; j++) n2[i] += (double)dd[i * D + j] * dd[i * D + j];
        for (b = 0; b < N; b++) for (i = 0; i < FF; i++) {
            double p = 0;
            for (j = 0; j < D; j++) p += (double)dd[i * D + j] * yy[b * D + j];
            num[i] += ff[b * FF + i] * p;
            den[i] += (double)ff[b * FF + i] * ff[b * FF + i];
        }
        TH_CHECK(moexc_latent_scaling_init(&acc, dd, FF, D, MOEXC_LS_RECONSTRUCTION, NULL) == MOEXC_OK, "init");
        moexc_latent_scaling_add(&acc, ff, yy, 300);
        moexc_latent_scaling_add(&acc, ff + 300 * FF, yy + 300 * D, N - 300);
        {
            float bb[FF];
            moexc_latent_scaling_beta(&acc, bb);
            for (i = 0; i < FF; i++) TH_CHECK_NEAR(bb[i], num[i] / (n2[i] * den[i]), 1e-5, 1e-4, "beta vs direct");
        }
        moexc_latent_scaling_free(&acc);
    }
}

static void test_histogram(void)
{
    moexc_histogram h;
    static const float v[3] = { 0.05f, 0.95f, 0.5f };
    static const uint8_t lab[3] = { 1, 2, 1 };
    TH_CHECK(moexc_histogram_init(&h, 10, 0.0, 1.0, 0, NULL) == MOEXC_OK, "init");
    moexc_histogram_add1(&h, 0.0);    /* bin 0 */
    moexc_histogram_add1(&h, 0.3);    /* exactly on edge 3: bin 3 */
    moexc_histogram_add1(&h, 0.7);    /* bin 7 */
    moexc_histogram_add1(&h, 1.0);    /* hi goes to the last bin */
    moexc_histogram_add1(&h, 1.0001); /* overflow */
    moexc_histogram_add1(&h, -0.1);   /* underflow */
    moexc_histogram_add1(&h, NAN);
    moexc_histogram_add_where(&h, v, lab, 1, 3);  /* 0.05 -> bin 0, 0.5 -> bin 5 */
    TH_CHECK(h.counts[0] == 2 && h.counts[3] == 1 && h.counts[7] == 1 && h.counts[9] == 1 && h.counts[5] == 1,
             "bins %lld %lld %lld %lld %lld", (long long)h.counts[0], (long long)h.counts[3], (long long)h.counts[7],
             (long long)h.counts[9], (long long)h.counts[5]);
    TH_CHECK(h.counts[2] == 0 && h.counts[6] == 0 && h.counts[8] == 0, "empty bins");
    TH_CHECK(h.overflow == 1 && h.underflow == 1 && h.nan_count == 1 && h.total == 9, "out of range counts");
    TH_CHECK_NEAR(moexc_histogram_edge(&h, 3), 0.3, 1e-15, 0, "edge 3");
    moexc_histogram_free(&h);

    TH_CHECK(moexc_histogram_init(&h, 4, 1e-4, 1.0, 1, NULL) == MOEXC_OK, "log init");
    moexc_histogram_add1(&h, 1e-3);   /* decade edge: bin 1 */
    moexc_histogram_add1(&h, 5e-4);   /* bin 0 */
    moexc_histogram_add1(&h, 0.0);    /* underflow on a log axis */
    moexc_histogram_add1(&h, 0.5);    /* bin 3 */
    TH_CHECK(h.counts[0] == 1 && h.counts[1] == 1 && h.counts[3] == 1 && h.underflow == 1, "log bins");
    TH_CHECK_NEAR(moexc_histogram_edge(&h, 2), 1e-2, 1e-17, 1e-12, "log edge");
    moexc_histogram_free(&h);
    TH_CHECK(moexc_histogram_init(&h, 4, 0.0, 1.0, 1, NULL) == MOEXC_ERR_ARG, "log axis with lo 0 refused");
}

/* ---- a minimal JSON reader to check the report's structure --------------- */
typedef struct jp { const char *p; int ok; } jp;
static void jp_ws(jp *j) { while (*j->p == ' ' || *j->p == '\n' || *j->p == '\t' || *j->p == '\r') j->p++; }
static void jp_value(jp *j);
/* Parses a string; copies its unescaped text into out (size) when out != NULL. */
static void jp_string(jp *j, char *out, size_t size)
{
    size_t n = 0;
    if (*j->p != '"') { j->ok = 0; return; }
    j->p++;
    while (j->ok && *j->p != '"') {
        char c = *j->p++;
        if (c == 0 || (unsigned char)c < 0x20) { j->ok = 0; return; }
        if (c == '\\') {
            c = *j->p++;
            if (c == 'n') c = '\n'; else if (c == 't') c = '\t'; else if (c == 'r') c = '\r';
            else if (c == 'u') {
                int k, v = 0;
                for (k = 0; k < 4; k++) {
                    char h = *j->p++;
                    v = v * 16 + (h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : (j->ok = 0));
                }
                c = (char)v;
            } else if (c != '"' && c != '\\' && c != '/') { j->ok = 0; return; }
        }
        if (out && n + 1 < size) out[n++] = c;
    }
    if (out) out[n] = 0;
    j->p++;
}
static void jp_value(jp *j)
{
    jp_ws(j);
    if (*j->p == '{') {
        j->p++; jp_ws(j);
        if (*j->p == '}') { j->p++; return; }
        while (j->ok) {
            jp_ws(j); jp_string(j, NULL, 0); jp_ws(j);
            if (*j->p != ':') { j->ok = 0; return; }
            j->p++; jp_value(j); jp_ws(j);
            if (*j->p == ',') { j->p++; continue; }
            if (*j->p == '}') { j->p++; return; }
            j->ok = 0;
        }
    } else if (*j->p == '[') {
        j->p++; jp_ws(j);
        if (*j->p == ']') { j->p++; return; }
        while (j->ok) {
            jp_value(j); jp_ws(j);
            if (*j->p == ',') { j->p++; continue; }
            if (*j->p == ']') { j->p++; return; }
            j->ok = 0;
        }
    } else if (*j->p == '"') jp_string(j, NULL, 0);
    else if (!strncmp(j->p, "true", 4)) j->p += 4;
    else if (!strncmp(j->p, "false", 5)) j->p += 5;
    else if (!strncmp(j->p, "null", 4)) j->p += 4;
    else {
        char *end;
        strtod(j->p, &end);
        if (end == j->p) j->ok = 0;
        j->p = end;
    }
}

static char *slurp(const char *path, long *len)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END); *len = ftell(f); fseek(f, 0, SEEK_SET);
    buf = (char *)malloc((size_t)*len + 1);
    if (buf && fread(buf, 1, (size_t)*len, f) != (size_t)*len) { free(buf); buf = NULL; }
    if (buf) buf[*len] = 0;
    fclose(f);
    return buf;
}

static void test_reports(void)
{
    moexc_latent_analysis a;
    moexc_eval_summary s;
    moexc_error err;
    char *text, name[64], path[512];
    long len;
    const char *p;
    int lines = 0, commas_ok = 1, k;
    FILE *f;
    TH_CHECK(moexc_analyze_latents(&a, dec_a10, 2, dec_b10, 2, F10, 1, counts10, 10, NULL, &err) == MOEXC_OK, "analyze");
    memset(&s, 0, sizeof(s));
    s.name = "run \"7\"\\ a\nb\x01";
    s.has_fve = 1; s.fve_a = 0.85; s.fve_b = 0.9; s.fve_pooled = 0.87;
    s.has_l0 = 1; s.l0 = 31.5; s.dead_fraction = 0.2;

    /* CSV: header, five classes in report order, the baseline; 9 fields each. */
    snprintf(path, sizeof(path), "%s", tmp_path("table.csv"));
    TH_CHECK(moexc_analysis_write_csv(&a, path, &err) == MOEXC_OK, "csv: %s", err.message);
    text = slurp(path, &len);
    TH_CHECK(text != NULL, "csv read");
    if (text) {
        static const char *const first[7] = { "class,", "moe-only,0,0.3,2,", "shared,0.3,0.7,3,", "dense-only,0.7,1,2,",
                                               "designated,0.5,0.5,1,", "dead,,,2,", "random_pairs,,," };
        const char *line = text;
        for (k = 0; k < 7 && *line; k++) {
            const char *nl = strchr(line, '\n'), *q;
            int commas = 0;
            if (!nl) break;
            for (q = line; q < nl; q++) commas += *q == ',';
            commas_ok &= commas == 8;
            TH_CHECK(strncmp(line, first[k], strlen(first[k])) == 0, "csv line %d starts '%.*s'", k, (int)(nl - line), line);
            lines++;
            line = nl + 1;
        }
        TH_CHECK(lines == 7 && *line == 0, "csv has 7 lines (%d)", lines);
        TH_CHECK(commas_ok, "every csv row has 9 fields");
        free(text);
    }

    /* JSON: parses, and the name round-trips through the escapes. */
    snprintf(path, sizeof(path), "%s", tmp_path("report.json"));
    TH_CHECK(moexc_analysis_write_json(&a, &s, path, &err) == MOEXC_OK, "json: %s", err.message);
    text = slurp(path, &len);
    TH_CHECK(text != NULL, "json read");
    if (text) {
        jp j;
        j.p = text; j.ok = 1;
        jp_value(&j); jp_ws(&j);
        TH_CHECK(j.ok && *j.p == 0, "json parses (stopped at offset %ld)", (long)(j.p - text));
        p = strstr(text, "\"name\": ");
        TH_CHECK(p != NULL, "json has name");
        if (p) {
            j.p = p + 8; j.ok = 1;
            jp_string(&j, name, sizeof(name));
            TH_CHECK(j.ok && strcmp(name, s.name) == 0, "name round-trips: '%s'", name);
        }
        TH_CHECK(strstr(text, "\"class\": \"dead\", \"r_lo\": null") != NULL, "NaN written as null");
        TH_CHECK(strstr(text, "\"pooled\": 0.87") != NULL, "pooled FVE");
        TH_CHECK(strstr(text, "\"count\": 3, \"r_mean\"") != NULL, "shared count");
        free(text);
    }

    /* The printed table. */
    snprintf(path, sizeof(path), "%s", tmp_path("table.txt"));
    f = fopen(path, "wb");
    TH_CHECK(f != NULL, "open table");
    if (f) {
        moexc_analysis_print_table(f, &a, &s);
        fclose(f);
        text = slurp(path, &len);
        TH_CHECK(text && strstr(text, "shared       [0.30, 0.70]          3") != NULL, "table row:\n%s", text ? text : "");
        TH_CHECK(text && strstr(text, "moe-only     [0.00, 0.30)") != NULL, "moe row");
        TH_CHECK(text && strstr(text, "dense-only   (0.70, 1.00]") != NULL, "dense row");
        TH_CHECK(text && strstr(text, "pooled 0.8700") != NULL, "fve line");
        free(text);
    }
    remove(path);
    remove(tmp_path("table.csv"));
    remove(tmp_path("report.json"));
    moexc_latent_analysis_free(&a);
}

static void test_npy(void)
{
    static const float x[3] = { 1.0f, -2.5f, 3.0e-3f };
    static const char dict[] = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }";
    unsigned char *bytes;
    char path[512];
    long len;
    float *back = NULL;
    size_t n = 0;
    int k, pad_ok = 1;
    moexc_error err;
    FILE *f;
    snprintf(path, sizeof(path), "%s", tmp_path("x.npy"));
    TH_CHECK(moexc_npy_write_f32(path, x, 3, &err) == MOEXC_OK, "write: %s", err.message);
    bytes = (unsigned char *)slurp(path, &len);
    TH_CHECK(bytes && len == 128 + 12, "file length %ld", len);
    if (!bytes || len != 140) { free(bytes); return; }
    /* Byte for byte what numpy.save writes. */
    TH_CHECK(memcmp(bytes, "\x93NUMPY\x01\x00", 8) == 0, "magic and version");
    TH_CHECK(bytes[8] == 118 && bytes[9] == 0, "header length %d", bytes[8] | bytes[9] << 8);
    TH_CHECK(memcmp(bytes + 10, dict, sizeof(dict) - 1) == 0, "dict");
    for (k = 10 + (int)sizeof(dict) - 1; k < 127; k++) pad_ok &= bytes[k] == ' ';
    TH_CHECK(pad_ok && bytes[127] == '\n', "space padding, newline at 127");
    TH_CHECK(bytes[128] == 0x00 && bytes[129] == 0x00 && bytes[130] == 0x80 && bytes[131] == 0x3F, "1.0f little-endian");
    TH_CHECK(bytes[132] == 0x00 && bytes[133] == 0x00 && bytes[134] == 0x20 && bytes[135] == 0xC0, "-2.5f little-endian");
    free(bytes);
    TH_CHECK(moexc_npy_read_f32(path, &back, &n, &err) == MOEXC_OK, "read: %s", err.message);
    TH_CHECK(n == 3 && back && memcmp(back, x, sizeof(x)) == 0, "round trip, bit for bit");
    moexc_free(back);

    /* A truncated file is refused with a message. */
    f = fopen(path, "r+b");
    if (f) {
        bytes = (unsigned char *)slurp(path, &len);
        fclose(f);
        f = fopen(path, "wb");
        if (f && bytes) fwrite(bytes, 1, 136, f);
        if (f) fclose(f);
        free(bytes);
    }
    TH_CHECK(moexc_npy_read_f32(path, &back, &n, &err) == MOEXC_ERR_FORMAT && strstr(err.message, "shape"),
             "truncated: %s", err.message);
    /* 1000 values: the header grows and stays 64-aligned. */
    {
        static float big[1000];
        TH_CHECK(moexc_npy_write_f32(path, big, 1000, &err) == MOEXC_OK, "write 1000");
        bytes = (unsigned char *)slurp(path, &len);
        TH_CHECK(bytes && len == 128 + 4000 && bytes[127] == '\n', "1000 floats: length %ld", len);
        free(bytes);
    }
    remove(path);
}

static void test_median_and_npy_export(void)
{
    static const float v[5] = { 3.0f, NAN, 1.0f, 2.0f, 10.0f };
    moexc_latent_analysis a;
    char prefix[512], path[600];
    float *back = NULL;
    size_t n = 0;
    moexc_error err;
    TH_CHECK_NEAR(moexc_median(v, 5, NULL), 2.5, 0, 0, "median of 1 2 3 10 (NaN skipped)");
    TH_CHECK_NEAR(moexc_median(v, 3, NULL), 2.0, 0, 0, "median of 3 1");
    TH_CHECK(moexc_median(v + 1, 1, NULL) != moexc_median(v + 1, 1, NULL), "median of nothing is NaN");
    TH_CHECK(v[0] == 3.0f && v[2] == 1.0f, "input untouched");
    TH_CHECK(moexc_analyze_latents(&a, dec_a10, 2, dec_b10, 2, F10, 1, counts10, 10, NULL, &err) == MOEXC_OK, "analyze");
    snprintf(prefix, sizeof(prefix), "%s", tmp_path("lat_"));
    TH_CHECK(moexc_analysis_write_npy(&a, prefix, &err) == MOEXC_OK, "export: %s", err.message);
    snprintf(path, sizeof(path), "%sclass.npy", prefix);
    TH_CHECK(moexc_npy_read_f32(path, &back, &n, &err) == MOEXC_OK && n == F10, "class.npy: %s", err.message);
    TH_CHECK(back && back[0] == (float)MOEXC_CLASS_DESIGNATED && back[5] == (float)MOEXC_CLASS_DEAD, "class ids");
    moexc_free(back);
    remove(path);
    snprintf(path, sizeof(path), "%sr.npy", prefix);
    TH_CHECK(moexc_npy_read_f32(path, &back, &n, &err) == MOEXC_OK && n == F10 && back && back[1] == a.r[1], "r.npy");
    moexc_free(back);
    remove(path);
    {
        static const char *const rest[4] = { "cosine", "density", "norm_a", "norm_b" };
        int k;
        for (k = 0; k < 4; k++) { snprintf(path, sizeof(path), "%s%s.npy", prefix, rest[k]); TH_CHECK(remove(path) == 0, "%s written", path); }
    }
    moexc_latent_analysis_free(&a);
}

/* Jacobi SVD: A = U S V^T with orthonormal U columns and orthogonal V, s
   descending; a rank-deficient matrix gets a completed orthonormal U. */
static void check_svd(const double *a, int m, int n, const char *what)
{
    double *u = (double *)calloc((size_t)m * n, sizeof(double)), *s = (double *)calloc((size_t)n, sizeof(double));
    double *v = (double *)calloc((size_t)n * n, sizeof(double)), rec = 0.0, orth_u = 0.0, orth_v = 0.0;
    int i, j, k;
    TH_CHECK(moexc_svd_jacobi(a, m, n, u, s, v, NULL) == MOEXC_OK, "%s: svd", what);
    for (i = 0; i < m; i++)
        for (j = 0; j < n; j++) {
            double x = 0.0;
            for (k = 0; k < n; k++) x += u[i * n + k] * s[k] * v[j * n + k];
            rec = fmax(rec, fabs(x - a[i * n + j]));
        }
    for (j = 0; j < n; j++)
        for (k = 0; k < n; k++) {
            double du = 0.0, dv = 0.0;
            for (i = 0; i < m; i++) du += u[i * n + j] * u[i * n + k];
            for (i = 0; i < n; i++) dv += v[i * n + j] * v[i * n + k];
            orth_u = fmax(orth_u, fabs(du - (j == k)));
            orth_v = fmax(orth_v, fabs(dv - (j == k)));
        }
    for (j = 1; j < n; j++) TH_CHECK(s[j] <= s[j - 1] && s[j] >= 0.0, "%s: s not descending at %d", what, j);
    printf("  %s: max |U S V^T - A| %.2e, |U^T U - I| %.2e, |V^T V - I| %.2e, s_min %.3g\n", what, rec, orth_u, orth_v, s[n - 1]);
    TH_CHECK(rec < 1e-12 && orth_u < 1e-12 && orth_v < 1e-12, "%s: not a decomposition", what);
    free(u); free(s); free(v);
}

static void test_svd_jacobi(void)
{
    moexc_rng rng;
    double a[9 * 5], r[5 * 3];
    int i;
    moexc_rng_seed(&rng, 91);
    for (i = 0; i < 9 * 5; i++) a[i] = moexc_rng_normal(&rng);
    check_svd(a, 9, 5, "random 9 x 5");
    for (i = 0; i < 5; i++) {   /* third column = first + second: rank 2 */
        r[i * 3] = moexc_rng_normal(&rng); r[i * 3 + 1] = moexc_rng_normal(&rng);
        r[i * 3 + 2] = r[i * 3] + r[i * 3 + 1];
    }
    check_svd(r, 5, 3, "rank-2 5 x 3");
    TH_CHECK(moexc_svd_jacobi(a, 3, 5, a, a, a, NULL) == MOEXC_ERR_ARG, "m < n is rejected");
}

/* Procrustes recovers a planted orthogonal map from paired activations with
   different offsets and scales (d_B = d_A), and a planted isometry into a
   wider space (d_B > d_A) and back out of it (d_B < d_A). */
static void test_procrustes(void)
{
    moexc_rng rng;
    int n = 600, shapes[3][2] = { { 6, 6 }, { 4, 7 }, { 7, 4 } }, c, i, j, k;
    moexc_rng_seed(&rng, 92);
    for (c = 0; c < 3; c++) {
        int da = shapes[c][0], db = shapes[c][1], big = da > db ? da : db, small = da < db ? da : db;
        double *g = (double *)malloc((size_t)big * small * sizeof(double)), *u = (double *)malloc((size_t)big * small * sizeof(double));
        double *s = (double *)malloc((size_t)small * sizeof(double)), *v = (double *)malloc((size_t)small * small * sizeof(double));
        float *q_true = (float *)malloc((size_t)db * da * sizeof(float)), *q = (float *)malloc((size_t)db * da * sizeof(float));
        float *xa = (float *)malloc((size_t)n * da * sizeof(float)), *xb = (float *)malloc((size_t)n * db * sizeof(float));
        float *mapped = (float *)malloc((size_t)n * db * sizeof(float));
        moexc_procrustes_acc acc;
        double err_q = 0.0, err_map = 0.0;
        /* a random isometry from the SVD of a Gaussian matrix: Q = U V^T */
        for (i = 0; i < big * small; i++) g[i] = moexc_rng_normal(&rng);
        moexc_svd_jacobi(g, big, small, u, s, v, NULL);
        for (i = 0; i < db; i++)
            for (j = 0; j < da; j++) {
                double x = 0.0;
                for (k = 0; k < small; k++) x += db >= da ? u[i * small + k] * v[j * small + k] : v[i * small + k] * u[j * small + k];
                q_true[i * da + j] = (float)x;
            }
        /* x_B = 2.5 Q x_A + offset (when d_B < d_A, Q drops directions: keep x_A in Q's row space) */
        for (i = 0; i < n; i++) {
            for (j = 0; j < da; j++) xa[i * da + j] = moexc_rng_normal(&rng) * (1.0f + 0.3f * j) + 3.0f;
            if (db < da) {   /* project onto the row space of Q (Q^T Q x), then re-offset */
                float tmp[8], back[8];
                for (k = 0; k < da; k++) xa[i * da + k] -= 3.0f;
                for (k = 0; k < db; k++) { tmp[k] = 0; for (j = 0; j < da; j++) tmp[k] += q_true[k * da + j] * xa[i * da + j]; }
                for (j = 0; j < da; j++) { back[j] = 0; for (k = 0; k < db; k++) back[j] += q_true[k * da + j] * tmp[k]; }
                for (j = 0; j < da; j++) xa[i * da + j] = back[j] + 3.0f;
            }
            for (k = 0; k < db; k++) {
                double x = 0.0;
                for (j = 0; j < da; j++) x += q_true[k * da + j] * (xa[i * da + j] - 3.0);
                xb[i * db + k] = (float)(2.5 * x - 1.0 + 0.001 * moexc_rng_normal(&rng));
            }
        }
        TH_CHECK(moexc_procrustes_acc_init(&acc, da, db, NULL) == MOEXC_OK, "init");
        moexc_procrustes_acc_add(&acc, xa, xb, 250, NULL);
        moexc_procrustes_acc_add(&acc, xa + 250 * da, xb + 250 * db, n - 250, NULL);
        TH_CHECK(moexc_procrustes_fit(&acc, q, NULL) == MOEXC_OK, "fit");
        for (i = 0; i < db * da; i++) err_q = fmax(err_q, fabs((double)q[i] - q_true[i]));
        moexc_procrustes_apply(q, da, db, xa, n, mapped);
        for (i = 0; i < n; i++)
            for (k = 0; k < db; k++) {
                double want = 0.0;
                for (j = 0; j < da; j++) want += q_true[k * da + j] * xa[i * da + j];
                err_map = fmax(err_map, fabs(mapped[i * db + k] - want));
            }
        printf("  procrustes d_A %d -> d_B %d: max |Q - Q_true| %.2e, max |apply - Q_true x| %.2e\n", da, db, err_q, err_map);
        TH_CHECK(err_q < 2e-3, "d_A %d, d_B %d: Q off by %g", da, db, err_q);
        TH_CHECK(err_map < 1e-3 * 10, "apply off by %g", err_map);
        moexc_procrustes_acc_free(&acc);
        free(g); free(u); free(s); free(v); free(q_true); free(q); free(xa); free(xb); free(mapped);
    }
    {
        moexc_procrustes_acc acc;
        float q1[4];
        moexc_procrustes_acc_init(&acc, 2, 2, NULL);
        TH_CHECK(moexc_procrustes_fit(&acc, q1, NULL) == MOEXC_ERR_ARG, "fit without pairs is an error");
        moexc_procrustes_acc_free(&acc);
    }
}

/* Seed statistics and verdicts on hand-made numbers. */
static void test_seed_controls(void)
{
    const double counts[3] = { 10, 12, 14 }, one[1] = { 5 }, with_nan[3] = { NAN, 4, 6 };
    double m, sd;
    /* set 1's latent 0 matches set 2's latent 1 in model A only; its latent 1
       matches set 2's latent 0 in both models */
    const float a1[3 * 2] = { 1, 0,   0, 1,   1, 1 }, b1[3 * 2] = { 0, 1,   1, 0,   1, 1 };
    const float a2[2 * 2] = { 0, 1,   0.99f, 0.1f }, b2[2 * 2] = { 1, 0,  -1, 0 };
    const int i1[2] = { 0, 1 }, i2[2] = { 0, 1 };
    const double main_holds[3] = { 5, 7, 6 }, main_rev[3] = { -5, -7, -6 }, main_small[3] = { 2, 3, 1 };
    const double main_mixed[3] = { 1, -1, 2 }, nans[2] = { NAN, NAN };
    const double ctrl_tight[6] = { 0, 1, -1,   1, 0, 2 }, ctrl_wide[3] = { 0, 2, -2 };
    const double ctrl_one_seed[6] = { NAN, 5.5, NAN,   0, NAN, NAN };
    moexc_mean_sd(counts, 3, &m, &sd);
    TH_CHECK(m == 12.0 && fabs(sd - 2.0) < 1e-12, "mean %g sd %g, want 12 and 2", m, sd);
    moexc_mean_sd(one, 1, &m, &sd);
    TH_CHECK(m == 5.0 && isnan(sd), "one value: sd is NaN");
    moexc_mean_sd(with_nan, 3, &m, &sd);
    TH_CHECK(m == 5.0 && fabs(sd - sqrt(2.0)) < 1e-12, "NaN skipped: mean %g sd %g", m, sd);
    TH_CHECK(moexc_latent_overlap(a1, b1, i1, 2, a2, b2, i2, 2, 2, 2, 1, 0.9) == 1.0, "overlap in A: 2 of 2");
    TH_CHECK(moexc_latent_overlap(a1, b1, i1, 2, a2, b2, i2, 2, 2, 2, 3, 0.9) == 0.5, "overlap in A and B: 1 of 2");
    TH_CHECK(moexc_latent_overlap(a1, b1, i1, 2, a2, b2, i2, 2, 2, 2, 2, 0.9) == 0.5, "overlap in B: 1 of 2");
    TH_CHECK(moexc_latent_overlap(a1, b1, i1, 2, a2, b2, i2, 2, 2, 2, 1, 0.999) == 0.5, "a stricter cosine: 1 of 2");
    TH_CHECK(isnan(moexc_latent_overlap(a1, b1, i1, 0, a2, b2, i2, 2, 2, 2, 1, 0.9)), "empty set: NaN");
    TH_CHECK(moexc_finding_verdict(main_holds, 3, ctrl_tight, 2, 3) == MOEXC_VERDICT_HOLDS, "holds");
    TH_CHECK(moexc_finding_verdict(main_rev, 3, ctrl_tight, 2, 3) == MOEXC_VERDICT_REVERSED, "reversed");
    TH_CHECK(moexc_finding_verdict(main_small, 3, ctrl_wide, 1, 3) == MOEXC_VERDICT_NOT_DISTINGUISHABLE, "2 +- 1 vs 0 +- 2");
    TH_CHECK(moexc_finding_verdict(main_small, 3, ctrl_tight, 2, 3) == MOEXC_VERDICT_NOT_DISTINGUISHABLE, "2 vs the second control 1 +- 1");
    TH_CHECK(moexc_finding_verdict(main_mixed, 3, ctrl_tight, 2, 3) == MOEXC_VERDICT_MIXED, "mixed");
    TH_CHECK(moexc_finding_verdict(nans, 2, ctrl_tight, 2, 3) == MOEXC_VERDICT_NO_DATA, "no data");
    TH_CHECK(moexc_finding_verdict(main_small, 3, NULL, 0, 0) == MOEXC_VERDICT_HOLDS, "no controls: direction only");
    /* a control with one valid seed borrows the main seeds' spread: 6 +- 1 vs 5.5 is within it,
       vs 0 beyond it; one main seed and one control seed: nothing to judge by */
    TH_CHECK(moexc_finding_verdict(main_holds, 3, ctrl_one_seed, 1, 3) == MOEXC_VERDICT_NOT_DISTINGUISHABLE,
             "6 +- 1 vs a one-seed control at 5.5");
    TH_CHECK(moexc_finding_verdict(main_holds, 3, ctrl_one_seed + 3, 1, 3) == MOEXC_VERDICT_HOLDS,
             "6 +- 1 vs a one-seed control at 0");
    TH_CHECK(moexc_finding_verdict(main_holds, 1, ctrl_one_seed + 3, 1, 3) == MOEXC_VERDICT_TOO_FEW_SEEDS,
             "one seed each: too few seeds");
    TH_CHECK(strcmp(moexc_verdict_name(MOEXC_VERDICT_TOO_FEW_SEEDS), "too few seeds to judge") == 0, "name: too few");
    TH_CHECK(strcmp(moexc_verdict_name(MOEXC_VERDICT_NOT_DISTINGUISHABLE), "not distinguishable from the seed control") == 0, "names");
}

int main(void)
{
    TH_RUN(test_classes_and_bands);
    TH_RUN(test_random_pair_baseline);
    TH_RUN(test_fve);
    TH_RUN(test_activation_acc);
    TH_RUN(test_latent_scaling);
    TH_RUN(test_histogram);
    TH_RUN(test_reports);
    TH_RUN(test_npy);
    TH_RUN(test_median_and_npy_export);
    TH_RUN(test_svd_jacobi);
    TH_RUN(test_procrustes);
    TH_RUN(test_seed_controls);
    return th_summary();
}
