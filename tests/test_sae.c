/* tests/test_sae.c - sparse autoencoders made of experts (SPEC §8): gradients
   of the TopK, Switch and Scale SAEs by finite differences (router, feature
   scaling, AuxK and load balancing included, the TopK set held fixed), the
   Scale SAE at init equals the plain expert encoder, planted-dictionary
   recovery, redundancy on hand-built decoders, the encoder FLOPs, save/load
   round trips and the rejection of corrupt files. */
#include "../moexc.h"
#include "harness.h"
#include <stdlib.h>
#include <stdio.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static float *randn(int n, moexc_rng *rng, float scale)
{
    float *x = (float *)malloc((size_t)n * sizeof(float));
    int i;
    for (i = 0; i < n; i++) x[i] = scale * moexc_rng_normal(rng);
    return x;
}

/* Central differences of the frozen-selection loss for every parameter (or
   every stride-th), against the analytic gradient. Returns the mismatches. */
static int grad_check(moexc_sae *s, const float *x, int n, const char *what, size_t lo, size_t hi)
{
    size_t P = moexc_sae_num_params(s), i;
    float *p = moexc_sae_params(s);
    float *analytic = (float *)malloc(P * sizeof(float));
    moexc_sae_step_stats st;
    int bad = 0, checked = 0;
    double max_rel = 0.0;
    moexc_sae_freeze_selection(s, 0);
    TH_CHECK(moexc_sae_loss_grad(s, x, n, &st, NULL) == MOEXC_OK, "%s: loss_grad", what);
    memcpy(analytic, moexc_sae_grads(s), P * sizeof(float));
    moexc_sae_freeze_selection(s, 1);
    if (hi > P) hi = P;
    for (i = lo; i < hi; i++) {
        float saved = p[i];
        float eps = 1e-3f * (fabsf(saved) > 1.0f ? fabsf(saved) : 1.0f);
        moexc_sae_step_stats sp, sm;
        double fd, tol;
        p[i] = saved + eps;
        moexc_sae_loss_grad(s, x, n, &sp, NULL);
        p[i] = saved - eps;
        moexc_sae_loss_grad(s, x, n, &sm, NULL);
        p[i] = saved;
        fd = (sp.loss - sm.loss) / (2.0 * (double)eps);
        tol = 1e-3 + 2e-2 * fabs(fd);
        if (fabs(fd - analytic[i]) > tol) {
            if (bad < 5) printf("  %s: param %lu analytic %.6g fd %.6g\n", what, (unsigned long)i, analytic[i], fd);
            bad++;
        }
        if (fabs(fd) > 1e-2 && fabs(fd - analytic[i]) / fabs(fd) > max_rel) max_rel = fabs(fd - analytic[i]) / fabs(fd);
        checked++;
    }
    moexc_sae_freeze_selection(s, 0);
    printf("  %s: %d parameters checked, %d mismatches, max relative error %.2e\n", what, checked, bad, max_rel);
    free(analytic);
    return bad;
}

static moexc_sae *make_sae(int d, moexc_sae_options *o, const float *x, int n, int warm)
{
    moexc_sae *s = NULL;
    moexc_error err;
    int i;
    if (moexc_sae_create(&s, d, o, &err) != MOEXC_OK) { printf("  create: %s\n", err.message); return NULL; }
    moexc_sae_init_from_data(s, x, n, NULL);
    for (i = 0; i < warm; i++) moexc_sae_train_step(s, x, n, NULL, NULL);
    return s;
}

/* Perturb the router, Λ and w away from their init so their gradients are generic. */
static void perturb(moexc_sae *s, moexc_rng *rng, size_t from)
{
    size_t P = moexc_sae_num_params(s), i;
    float *p = moexc_sae_params(s);
    for (i = from; i < P; i++) p[i] += 0.1f * moexc_rng_normal(rng);
}

static void check_variant(int variant, const char *name)
{
    moexc_rng rng;
    int n = 24, d = 6, F = 24, i, dead_marked = 0;
    float *x;
    moexc_sae_options o;
    moexc_sae *s;
    moexc_sae_step_stats st;
    size_t tail;
    moexc_rng_seed(&rng, 11 + (uint64_t)variant);
    x = randn(n * d, &rng, 1.5f);
    for (i = 0; i < n * d; i++) x[i] += 0.5f * (float)(i % d);
    memset(&o, 0, sizeof(o));
    o.variant = variant; o.n_latents = F; o.k = 4; o.aux_k = 3; o.steps = 100;
    o.lb_alpha = 0.5f;                         /* large, so its gradient is visible */
    if (variant != MOEXC_SAE_TOPK) o.n_experts = 4;
    if (variant == MOEXC_SAE_SCALE) o.active_experts = 2;
    o.aux_alpha = 0.5f;
    o.aux_exact_relu = 1;      /* straight-through is not a derivative */
    s = make_sae(d, &o, x, n, 3);
    TH_CHECK(s != NULL, "%s: create", name);
    if (!s) { free(x); return; }
    tail = (size_t)F * d * 2 + F + d;          /* router, Λ and w follow the SAE proper */
    perturb(s, &rng, tail);
    {   /* spread the encoder bias too, so that a latent is not at a ReLU kink */
        float *p = moexc_sae_params(s);
        for (i = 0; i < F; i++) p[(size_t)F * d + i] += 0.05f * moexc_rng_normal(&rng);
    }
    for (i = 0; i < F; i += 3) { moexc_sae_set_dead(s, i, 1); dead_marked++; }
    TH_CHECK(moexc_sae_loss_grad(s, x, n, &st, NULL) == MOEXC_OK, "%s: loss_grad", name);
    TH_CHECK(st.aux > 0.0, "%s: AuxK active (aux %g)", name, st.aux);
    if (variant != MOEXC_SAE_TOPK) TH_CHECK(st.lb >= 1.0 - 1e-6, "%s: L_lb %g >= 1", name, st.lb);
    TH_CHECK(grad_check(s, x, n, name, 0, moexc_sae_num_params(s)) == 0, "%s: gradients", name);
    {   /* the router's and the feature scaling's gradients are not zero (so the check saw them) */
        size_t P = moexc_sae_num_params(s), j;
        double mx = 0.0;
        const float *g = moexc_sae_grads(s);
        for (j = tail; j < P; j++) mx = fabs(g[j]) > mx ? fabs(g[j]) : mx;
        if (variant != MOEXC_SAE_TOPK) TH_CHECK(mx > 1e-3, "%s: router/scaling gradient max %g", name, mx);
        else TH_CHECK(P == tail, "topk: no router or scaling parameters (%lu of %lu)", (unsigned long)tail, (unsigned long)P);
    }
    (void)dead_marked;
    moexc_sae_free(s);
    free(x);
}

static void test_grad_topk(void)   { check_variant(MOEXC_SAE_TOPK, "topk"); }
static void test_grad_switch(void) { check_variant(MOEXC_SAE_SWITCH, "switch"); }
static void test_grad_scale(void)  { check_variant(MOEXC_SAE_SCALE, "scale"); }

/* The plain expert encoder, by hand: x_c = s x - b_dec, p = softmax(W_r x_c + b_r),
   the top-a experts, g = p / sum of the selected p (Scale) or p (Switch),
   z_i = g ReLU(M_i . x_c + b_enc_i) over the selected experts' latents, the k largest kept. */
static void plain_encoder(moexc_sae *s, const float *x, float *z)
{
    const moexc_sae_options *o = moexc_sae_get_options(s);
    int d = moexc_sae_dim(s), F = o->n_latents, E = o->n_experts, A = o->active_experts, Fe = F / E, i, j, q, e;
    const float *p = moexc_sae_params(s), *enc = p, *benc = p + (size_t)F * d, *bdec = p + (size_t)2 * F * d + F;
    const float *wr = bdec + d, *br = wr + (size_t)E * d;
    float xc[64], logit[64], prob[64], tot = 0.0f, mx = -1e30f, g[64], sel_v[4096];
    int sel[64], used[64];
    for (j = 0; j < d; j++) xc[j] = x[j] * moexc_sae_scale(s) - bdec[j];
    for (e = 0; e < E; e++) {
        logit[e] = br[e];
        for (j = 0; j < d; j++) logit[e] += wr[(size_t)e * d + j] * xc[j];
        mx = logit[e] > mx ? logit[e] : mx;
    }
    for (e = 0; e < E; e++) { prob[e] = expf(logit[e] - mx); tot += prob[e]; }
    for (e = 0; e < E; e++) { prob[e] /= tot; used[e] = 0; }
    for (q = 0, tot = 0.0f; q < A; q++) {
        int best = -1;
        for (e = 0; e < E; e++) if (!used[e] && (best < 0 || prob[e] > prob[best])) best = e;
        used[best] = 1; sel[q] = best; tot += prob[best];
    }
    for (q = 0; q < A; q++) g[q] = o->variant == MOEXC_SAE_SCALE ? prob[sel[q]] / tot : prob[sel[q]];
    memset(z, 0, (size_t)F * sizeof(float));
    for (q = 0; q < A; q++)
        for (i = 0; i < Fe; i++) {
            int lat = sel[q] * Fe + i;
            float pre = benc[lat];
            for (j = 0; j < d; j++) pre += enc[(size_t)lat * d + j] * xc[j];
            sel_v[q * Fe + i] = g[q] * (pre > 0.0f ? pre : 0.0f);
        }
    for (q = 0; q < o->k; q++) {   /* the k largest positive values, ties to the lower index */
        int best = -1;
        for (i = 0; i < A * Fe; i++) if (sel_v[i] > 0.0f && (best < 0 || sel_v[i] > sel_v[best])) best = i;
        if (best < 0) break;
        z[sel[best / Fe] * Fe + best % Fe] = sel_v[best];
        sel_v[best] = -1.0f;
    }
}

static void test_scale_init_is_plain_encoder(void)
{
    moexc_rng rng;
    int n = 40, d = 8, F = 64, i, b;
    float *x, *z, *zr;
    moexc_sae_options o;
    moexc_sae *s;
    double maxdiff = 0.0, changed = 0.0;
    float *p;
    size_t lam;
    moexc_rng_seed(&rng, 5);
    x = randn(n * d, &rng, 1.0f);
    z = (float *)malloc((size_t)n * F * sizeof(float));
    zr = (float *)malloc((size_t)F * sizeof(float));
    memset(&o, 0, sizeof(o));
    o.variant = MOEXC_SAE_SCALE; o.n_latents = F; o.k = 6; o.n_experts = 4; o.active_experts = 2;
    TH_CHECK(moexc_sae_create(&s, d, &o, NULL) == MOEXC_OK, "create");
    moexc_sae_init_from_data(s, x, n, NULL);
    p = moexc_sae_params(s);
    lam = (size_t)2 * F * d + F + d + (size_t)o.n_experts * d + o.n_experts;
    for (i = 0; i < d; i++) TH_CHECK(p[lam + (size_t)i * d + i] == 1.0f, "Λ starts at the identity");
    for (i = 0; i < o.n_experts; i++) TH_CHECK(p[lam + (size_t)d * d + i] == 0.0f, "w starts at 0");
    for (i = 0; i < F; i++) p[(size_t)F * d + i] = 0.1f * moexc_rng_normal(&rng);   /* some encoder bias */
    /* at init, and with any Λ while w = 0, the Scale SAE is the plain expert encoder */
    for (i = 0; i < 2; i++) {
        if (i == 1) for (b = 0; b < d * d; b++) p[lam + b] += 0.5f * moexc_rng_normal(&rng);
        TH_CHECK(moexc_sae_encode(s, x, n, z, NULL, NULL, NULL) == MOEXC_OK, "encode");
        for (b = 0; b < n; b++) {
            int j;
            plain_encoder(s, x + (size_t)b * d, zr);
            for (j = 0; j < F; j++) {
                double df = fabs((double)z[(size_t)b * F + j] - zr[j]);
                maxdiff = df > maxdiff ? df : maxdiff;
            }
        }
    }
    TH_CHECK(maxdiff < 1e-4, "Scale SAE with w = 0 vs the plain expert encoder: max |diff| %g", maxdiff);
    /* w != 0 changes the encoder (so the comparison above can fail) */
    p[lam + (size_t)d * d + 1] = 0.5f;
    TH_CHECK(moexc_sae_encode(s, x, n, z, NULL, NULL, NULL) == MOEXC_OK, "encode");
    for (b = 0; b < n; b++) {
        int j;
        plain_encoder(s, x + (size_t)b * d, zr);
        for (j = 0; j < F; j++) changed += fabs((double)z[(size_t)b * F + j] - zr[j]);
    }
    TH_CHECK(changed > 1e-2, "w_1 = 0.5 changes the latents (sum |diff| %g)", changed);
    moexc_sae_free(s);
    free(x); free(z); free(zr);
}

static void test_redundancy(void)
{
    /* rows: e0, 2 e0 (a duplicate), e1, 0.6 e1 + 0.8 e2 (cos 0.6 with e1), e3, 0 */
    float rows[6 * 4] = { 1, 0, 0, 0,  2, 0, 0, 0,  0, 1, 0, 0,  0, 0.6f, 0.8f, 0,  0, 0, 0, 1,  0, 0, 0, 0 };
    float mc[6];
    double frac = -1, mean = -1;
    moexc_rng rng;
    int F = 600, d = 12, i, j, bad = 0, over = 0;
    float *r, *mc2;
    TH_CHECK(moexc_redundancy(rows, 6, 4, 0.9f, &frac, &mean, mc, NULL) == MOEXC_OK, "redundancy");
    TH_CHECK_NEAR(frac, 2.0 / 6.0, 1e-9, 0, "share of rows with max cos > 0.9");
    TH_CHECK_NEAR(mean, (1 + 1 + 0.6 + 0.6 + 0 + 0) / 6.0, 1e-6, 0, "mean max cos");
    TH_CHECK_NEAR(mc[3], 0.6, 1e-6, 0, "row 3's max cos");
    TH_CHECK(moexc_redundancy(rows, 1, 4, 0.9f, &frac, &mean, NULL, NULL) == MOEXC_ERR_ARG, "one row is an error");
    /* blocks of the Gram GEMM (F = 600 crosses the 256-row blocks) against a scalar loop */
    moexc_rng_seed(&rng, 9);
    r = randn(F * d, &rng, 1.0f);
    for (j = 0; j < d; j++) r[(size_t)599 * d + j] = 2.0f * r[(size_t)300 * d + j];
    mc2 = (float *)malloc((size_t)F * sizeof(float));
    TH_CHECK(moexc_redundancy(r, F, d, 0.9f, &frac, &mean, mc2, NULL) == MOEXC_OK, "redundancy F 600");
    for (i = 0; i < F; i++) {
        double best = -2.0;
        for (j = 0; j < F; j++) {
            double dot = 0, na = 0, nb = 0;
            int q;
            if (j == i) continue;
            for (q = 0; q < d; q++) {
                dot += (double)r[(size_t)i * d + q] * r[(size_t)j * d + q];
                na += (double)r[(size_t)i * d + q] * r[(size_t)i * d + q];
                nb += (double)r[(size_t)j * d + q] * r[(size_t)j * d + q];
            }
            dot /= sqrt(na * nb);
            best = dot > best ? dot : best;
        }
        if (fabs(best - mc2[i]) > 1e-5) bad++;
        over += best > 0.9;
    }
    TH_CHECK(bad == 0, "%d rows differ from the scalar loop", bad);
    TH_CHECK(mc2[300] > 0.9999f && mc2[599] > 0.9999f, "the planted duplicate pair (%g, %g)", mc2[300], mc2[599]);
    TH_CHECK_NEAR(frac, (double)over / F, 1e-9, 0, "share over 0.9 as the scalar loop counts it");
    free(r); free(mc2);
}

static void test_flops(void)
{
    moexc_sae_options o;
    moexc_sae *s;
    int v;
    double want[3];
    want[0] = 2.0 * 512 * 32;                                     /* 2 F d */
    want[1] = 2.0 * 8 * 32 + 2.0 * 64 * 32;                       /* 2 E d + 2 F_e d */
    want[2] = 2.0 * 8 * 32 + 2 * (2.0 * 64 * 32 + 2.0 * 32 + 2.0 * 64);
    for (v = 0; v < 3; v++) {
        memset(&o, 0, sizeof(o));
        o.variant = v; o.n_latents = 512; o.k = 8;
        TH_CHECK(moexc_sae_create(&s, 32, &o, NULL) == MOEXC_OK, "create %d", v);
        TH_CHECK_NEAR(moexc_sae_encoder_flops(s), want[v], 0.5, 0, moexc_sae_variant_name(v));
        moexc_sae_free(s);
    }
    memset(&o, 0, sizeof(o));
    o.variant = MOEXC_SAE_SWITCH; o.n_latents = 100; o.n_experts = 8;
    TH_CHECK(moexc_sae_create(&s, 32, &o, NULL) == MOEXC_ERR_ARG, "F not a multiple of E is rejected");
    o.variant = MOEXC_SAE_SWITCH; o.n_latents = 64; o.active_experts = 2;
    TH_CHECK(moexc_sae_create(&s, 32, &o, NULL) == MOEXC_ERR_ARG, "a Switch SAE with two active experts is rejected");
    o.variant = MOEXC_SAE_TOPK; o.active_experts = 0; o.n_experts = 4;
    TH_CHECK(moexc_sae_create(&s, 32, &o, NULL) == MOEXC_ERR_ARG, "a TopK SAE with experts is rejected");
}

/* A TopK SAE recovers a planted dictionary: x = sum of 3 of 24 unit atoms
   (random directions in d = 16) with magnitudes in [1, 2]. */
static void test_planted_dictionary(void)
{
    moexc_rng rng;
    int d = 16, F0 = 24, n = 8192, F = 48, i, j, b, found = 0, step;
    float *atoms, *x, *dec;
    moexc_sae_options o;
    moexc_sae *s;
    moexc_sae_eval ev;
    moexc_rng_seed(&rng, 77);
    atoms = randn(F0 * d, &rng, 1.0f);
    for (i = 0; i < F0; i++) {
        double nn = 0;
        for (j = 0; j < d; j++) nn += (double)atoms[i * d + j] * atoms[i * d + j];
        for (j = 0; j < d; j++) atoms[i * d + j] /= (float)sqrt(nn);
    }
    x = (float *)calloc((size_t)n * d, sizeof(float));
    for (b = 0; b < n; b++)
        for (i = 0; i < 3; i++) {
            int a = (int)moexc_rng_below(&rng, (uint32_t)F0);
            float c = 1.0f + moexc_rng_uniform(&rng);
            for (j = 0; j < d; j++) x[(size_t)b * d + j] += c * atoms[a * d + j];
        }
    memset(&o, 0, sizeof(o));
    o.variant = MOEXC_SAE_TOPK; o.n_latents = F; o.k = 3; o.steps = 1500; o.batch = 256; o.lr = 3e-3f; o.seed = 3;
    TH_CHECK(moexc_sae_create(&s, d, &o, NULL) == MOEXC_OK, "create");
    moexc_sae_init_from_data(s, x, n, NULL);
    for (step = 0; step < o.steps; step++)
        TH_CHECK(moexc_sae_train_step(s, x + (size_t)(step % (n / 256)) * 256 * d, 256, NULL, NULL) == MOEXC_OK, "step");
    TH_CHECK(moexc_sae_evaluate(s, x, n, &ev, NULL, NULL) == MOEXC_OK, "evaluate");
    dec = (float *)malloc((size_t)F * d * sizeof(float));
    moexc_sae_decoder(s, 1, dec);
    for (i = 0; i < F0; i++) {
        double best = 0;
        for (j = 0; j < F; j++) {
            double dot = 0, nn = 0;
            int q;
            for (q = 0; q < d; q++) { dot += (double)atoms[i * d + q] * dec[j * d + q]; nn += (double)dec[j * d + q] * dec[j * d + q]; }
            if (nn > 0 && dot / sqrt(nn) > best) best = dot / sqrt(nn);
        }
        found += best > 0.9;
    }
    printf("  planted: %d of %d atoms recovered (cos > 0.9), FVE %.3f, L0 %.2f\n", found, F0, ev.fve, ev.l0);
    TH_CHECK(found >= F0 * 9 / 10, "recovered %d of %d atoms", found, F0);
    TH_CHECK(ev.fve > 0.9, "FVE %g", ev.fve);
    TH_CHECK(ev.l0 <= 3.0 + 1e-9, "L0 %g <= k", ev.l0);
    moexc_sae_free(s);
    free(atoms); free(x); free(dec);
}

static long file_read(const char *path, unsigned char **out)
{
    FILE *f = fopen(path, "rb");
    long n;
    if (!f) return -1;
    fseek(f, 0, SEEK_END); n = ftell(f); fseek(f, 0, SEEK_SET);
    *out = (unsigned char *)malloc((size_t)n + 1);
    if (fread(*out, 1, (size_t)n, f) != (size_t)n) n = -1;
    fclose(f);
    return n;
}

static void file_write(const char *path, const unsigned char *p, long n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(p, 1, (size_t)n, f);
    fclose(f);
}

/* Overwrite the byte after the first occurrence of key in the file's bytes. */
static int patch(unsigned char *p, long n, const char *key, char to)
{
    size_t len = strlen(key);
    long i;
    for (i = 0; i + (long)len < n; i++)
        if (!memcmp(p + i, key, len)) { p[i + (long)len] = (unsigned char)to; return 1; }
    return 0;
}

static void test_save_load(void)
{
    moexc_rng rng;
    int n = 64, d = 8, v;
    float *x;
    char path[64], path2[64];
    moexc_rng_seed(&rng, 21);
    x = randn(n * d, &rng, 3.0f);
    for (v = 0; v < 3; v++) x[v] += 1.0f;
    for (v = 0; v < 3; v++) {
        moexc_sae_options o;
        moexc_sae *s, *t = NULL, *u = NULL;
        moexc_error err;
        float *z1 = (float *)malloc((size_t)n * 32 * sizeof(float)), *z2 = (float *)malloc((size_t)n * 32 * sizeof(float));
        float *h1 = (float *)malloc((size_t)n * d * sizeof(float)), *h2 = (float *)malloc((size_t)n * d * sizeof(float));
        int e1[128], e2[128], i, same = 1;
        double dz = 0, dh = 0;
        size_t P, j;
        memset(&o, 0, sizeof(o));
        o.variant = v; o.n_latents = 32; o.k = 4; o.steps = 20; o.seed = 4;
        if (v) o.n_experts = 4;
        s = make_sae(d, &o, x, n, 5);
        snprintf(path, sizeof(path), "test_sae_%d.safetensors", v);
        snprintf(path2, sizeof(path2), "test_sae_%d_train.safetensors", v);
        TH_CHECK(moexc_sae_save(s, path, &err) == MOEXC_OK, "save");
        TH_CHECK(moexc_sae_load(&t, path, &err) == MOEXC_OK, "load: %s", err.message);
        if (!t) { moexc_sae_free(s); continue; }
        TH_CHECK(moexc_sae_get_options(t)->variant == v && moexc_sae_get_options(t)->n_experts == moexc_sae_get_options(s)->n_experts,
                 "variant and experts survive");
        moexc_sae_encode(s, x, n, z1, v ? e1 : NULL, h1, NULL);
        moexc_sae_encode(t, x, n, z2, v ? e2 : NULL, h2, NULL);
        for (i = 0; i < n * 32; i++) dz = fabs((double)z1[i] - z2[i]) > dz ? fabs((double)z1[i] - z2[i]) : dz;
        for (i = 0; i < n * d; i++) dh = fabs((double)h1[i] - h2[i]) > dh ? fabs((double)h1[i] - h2[i]) : dh;
        if (v) for (i = 0; i < n * moexc_sae_get_options(s)->active_experts; i++) same &= e1[i] == e2[i];
        TH_CHECK(dz < 1e-4 && dh < 1e-4 && same, "%s: folded round trip: |dz| %g, |dx̂| %g, routing same %d",
                 moexc_sae_variant_name(v), dz, dh, same);
        /* a training checkpoint resumes bit for bit */
        TH_CHECK(moexc_sae_save_training(s, path2, &err) == MOEXC_OK, "save_training");
        TH_CHECK(moexc_sae_load(&u, path2, &err) == MOEXC_OK, "load training: %s", err.message);
        if (u) {
            moexc_sae_train_step(s, x, n, NULL, NULL);
            moexc_sae_train_step(u, x, n, NULL, NULL);
            P = moexc_sae_num_params(s);
            for (j = 0, same = P == moexc_sae_num_params(u); same && j < P; j++) same &= moexc_sae_params(s)[j] == moexc_sae_params(u)[j];
            TH_CHECK(same && moexc_sae_step(u) == moexc_sae_step(s), "%s: resumed step has the same bits", moexc_sae_variant_name(v));
        }
        /* corrupt files */
        {
            unsigned char *buf = NULL, *cp;
            long len = file_read(path, &buf), k;
            moexc_sae *bad = NULL;
            static const char *const from[4] = { "moexc-s", "\"variant\":\"", "\"n_experts\":\"", "\"d\":\"" };
            static const char to[4] = { 'b', 'X', '9', '9' };
            TH_CHECK(len > 0, "read back");
            cp = (unsigned char *)malloc((size_t)len + 1);
            for (k = 0; k < 4; k++) {
                memcpy(cp, buf, (size_t)len);
                TH_CHECK(patch(cp, len, from[k], to[k]), "patch %s", from[k]);
                file_write("test_sae_bad.safetensors", cp, len);
                TH_CHECK(moexc_sae_load(&bad, "test_sae_bad.safetensors", &err) != MOEXC_OK && bad == NULL,
                         "%s: a file with %s%c is rejected", moexc_sae_variant_name(v), from[k], to[k]);
                if (bad) { moexc_sae_free(bad); bad = NULL; }
            }
            file_write("test_sae_bad.safetensors", buf, len - 7);                 /* truncated */
            TH_CHECK(moexc_sae_load(&bad, "test_sae_bad.safetensors", &err) != MOEXC_OK, "a truncated file is rejected");
            if (bad) { moexc_sae_free(bad); bad = NULL; }
            memcpy(cp, buf, (size_t)len);                                          /* a NaN in the last tensor's data */
            cp[len - 1] = 0x7F; cp[len - 2] = 0xC0; cp[len - 3] = 0; cp[len - 4] = 0;
            file_write("test_sae_bad.safetensors", cp, len);
            TH_CHECK(moexc_sae_load(&bad, "test_sae_bad.safetensors", &err) == MOEXC_ERR_NUMERIC, "a NaN parameter is rejected: %s",
                     err.message);
            if (bad) moexc_sae_free(bad);
            free(cp); free(buf);
            remove("test_sae_bad.safetensors");
        }
        remove(path); remove(path2);
        moexc_sae_free(s); moexc_sae_free(t); moexc_sae_free(u);
        free(z1); free(z2); free(h1); free(h2);
    }
    free(x);
}

/* Same seed, same bits; training lowers the loss; the load-balancing loss is
   about 1 for a balanced router and every expert is used. */
/* A step whose update overflows the parameters stops with an error that
   names it: at lr 1e38 the first step's bias-corrected step size,
   lr / (1 - beta1), is past FLT_MAX, so the update makes the parameters
   non-finite (the loss and gradients stay finite). */
static void test_overflow_in_update(void)
{
    moexc_rng rng;
    int n = 64, d = 8;
    float *x;
    moexc_sae *s;
    moexc_sae_options o;
    moexc_error err;
    moexc_status st;
    moexc_rng_seed(&rng, 7);
    x = randn(n * d, &rng, 1.0f);
    memset(&o, 0, sizeof(o));
    o.variant = MOEXC_SAE_TOPK; o.n_latents = 32; o.k = 4; o.steps = 10; o.lr = 1e38f; o.seed = 2;
    s = make_sae(d, &o, x, n, 0);
    TH_CHECK(s != NULL, "create");
    if (!s) { free(x); return; }
    st = moexc_sae_train_step(s, x, n, NULL, &err);
    TH_CHECK(st == MOEXC_ERR_NUMERIC, "step with lr 1e38: status %d (%s)", (int)st, st ? err.message : "ok");
    TH_CHECK(st && strstr(err.message, "step 1 diverged") && strstr(err.message, "after the Adam update"),
             "the error names the step and the update: %s", st ? err.message : "(none)");
    moexc_sae_free(s);
    free(x);
}

static void test_train_determinism(void)
{
    moexc_rng rng;
    int n = 512, d = 16, i, r, same = 1;
    float *x;
    moexc_sae *s[2];
    moexc_sae_step_stats first, last;
    moexc_sae_options o;
    moexc_sae_eval ev;
    moexc_rng_seed(&rng, 31);
    x = randn(n * d, &rng, 1.0f);
    memset(&o, 0, sizeof(o));
    o.variant = MOEXC_SAE_SCALE; o.n_latents = 128; o.k = 8; o.n_experts = 4; o.steps = 60; o.lr = 3e-3f; o.seed = 8;
    for (r = 0; r < 2; r++) {
        moexc_sae_create(&s[r], d, &o, NULL);
        moexc_sae_init_from_data(s[r], x, n, NULL);
        for (i = 0; i < o.steps; i++) moexc_sae_train_step(s[r], x, n, i == 0 ? &first : &last, NULL);
    }
    for (i = 0; i < (int)moexc_sae_num_params(s[0]); i++) same &= moexc_sae_params(s[0])[i] == moexc_sae_params(s[1])[i];
    TH_CHECK(same, "two runs with one seed have the same bits");
#ifdef _OPENMP
    {   /* and the same bits on one thread (row loops in threads, sums in row order) */
        moexc_sae *one;
        int threads = omp_get_max_threads();
        omp_set_num_threads(1);
        moexc_sae_create(&one, d, &o, NULL);
        moexc_sae_init_from_data(one, x, n, NULL);
        for (i = 0; i < o.steps; i++) moexc_sae_train_step(one, x, n, NULL, NULL);
        omp_set_num_threads(threads);
        for (i = 0, same = 1; i < (int)moexc_sae_num_params(one); i++) same &= moexc_sae_params(one)[i] == moexc_sae_params(s[0])[i];
        TH_CHECK(same, "1 thread and %d threads give the same bits", threads);
        moexc_sae_free(one);
    }
#endif
    TH_CHECK(last.rec < 0.7 * first.rec, "training lowers the reconstruction loss (%g -> %g)", first.rec, last.rec);
    TH_CHECK(last.lb > 0.99 && last.lb < 1.5, "L_lb %g near 1", last.lb);
    TH_CHECK(moexc_sae_evaluate(s[0], x, n, &ev, NULL, NULL) == MOEXC_OK, "evaluate");
    for (i = 0; i < 4; i++) TH_CHECK(ev.expert_share[i] > 0.05, "expert %d used (share %g)", i, ev.expert_share[i]);
    TH_CHECK_NEAR(ev.expert_share[0] + ev.expert_share[1] + ev.expert_share[2] + ev.expert_share[3], 1.0, 1e-9, 0, "shares sum to 1");
    moexc_sae_free(s[0]); moexc_sae_free(s[1]);
    free(x);
}

int main(void)
{
    TH_RUN(test_grad_topk);
    TH_RUN(test_grad_switch);
    TH_RUN(test_grad_scale);
    TH_RUN(test_scale_init_is_plain_encoder);
    TH_RUN(test_redundancy);
    TH_RUN(test_flops);
    TH_RUN(test_planted_dictionary);
    TH_RUN(test_save_load);
    TH_RUN(test_overflow_in_update);
    TH_RUN(test_train_determinism);
    return th_summary();
}
