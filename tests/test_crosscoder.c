/* tests/test_crosscoder.c - the crosscoder (SPEC §4): gradients of every
   loss term by finite differences, exact tying, BatchTopK selection, the
   inference threshold, normalisation folding, checkpoints, and recovery of a
   planted dictionary. */
#include "../moexc.h"
#include "harness.h"
#include <stdlib.h>
#include <time.h>
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

/* Central differences of the frozen-selection loss for every parameter,
   compared with the analytic gradient. Returns the number of mismatches. */
static int grad_check(moexc_xc *xc, const float *xa, const float *xb, int n, const char *what)
{
    size_t P = moexc_xc_num_params(xc), i;
    float *p = moexc_xc_params(xc), *g;
    float *analytic = (float *)malloc(P * sizeof(float));
    moexc_xc_step_stats s;
    int bad = 0;
    double max_rel = 0.0;
    moexc_xc_freeze_selection(xc, 0);
    TH_CHECK(moexc_xc_loss_grad(xc, xa, xb, n, &s, NULL) == MOEXC_OK, "%s: loss_grad", what);
    g = moexc_xc_grads(xc);
    memcpy(analytic, g, P * sizeof(float));
    moexc_xc_freeze_selection(xc, 1);
    for (i = 0; i < P; i++) {
        float saved = p[i];
        float eps = 2e-3f * (fabsf(saved) > 1.0f ? fabsf(saved) : 1.0f);
        moexc_xc_step_stats sp, sm;
        double fd, tol;
        p[i] = saved + eps;
        moexc_xc_loss_grad(xc, xa, xb, n, &sp, NULL);
        p[i] = saved - eps;
        moexc_xc_loss_grad(xc, xa, xb, n, &sm, NULL);
        p[i] = saved;
        fd = (sp.loss - sm.loss) / (2.0 * (double)eps);
        tol = 2e-3 + 2e-2 * fabs(fd);
        if (fabs(fd - analytic[i]) > tol) {
            if (bad < 5) printf("  %s: param %lu analytic %.6g fd %.6g\n", what, (unsigned long)i, analytic[i], fd);
            bad++;
        }
        if (fabs(fd) > 1e-2) max_rel = fabs(fd - analytic[i]) / fabs(fd) > max_rel ? fabs(fd - analytic[i]) / fabs(fd) : max_rel;
    }
    moexc_xc_freeze_selection(xc, 0);
    printf("  %s: %lu parameters, %d mismatches, max relative error %.2e\n", what, (unsigned long)P, bad, max_rel);
    free(analytic);
    return bad;
}

/* A crosscoder after a few training steps (so biases and norms are generic). */
static moexc_xc *make_xc(int da, int db, moexc_xc_options *o, const float *xa, const float *xb, int n, int warm_steps)
{
    moexc_xc *xc = NULL;
    moexc_error err;
    int s;
    if (moexc_xc_create(&xc, da, db, o, &err) != MOEXC_OK) { printf("  create: %s\n", err.message); return NULL; }
    moexc_xc_init_from_data(xc, xa, xb, n, NULL);
    for (s = 0; s < warm_steps; s++) moexc_xc_train_step(xc, xa, xb, n, NULL, NULL);
    return xc;
}

static void test_grad_l1_unequal_widths(void)
{
    moexc_rng rng;
    int n = 6, da = 5, db = 7;
    float *xa, *xb;
    moexc_xc_options o;
    moexc_xc *xc;
    moexc_rng_seed(&rng, 1);
    xa = randn(n * da, &rng, 2.0f); xb = randn(n * db, &rng, 0.5f);
    memset(&o, 0, sizeof(o));
    o.variant = MOEXC_XC_L1; o.n_latents = 10; o.steps = 10; o.lambda_warmup = -1.0f; /* full lambda at once */
    o.lambda_f = 0.7f; o.lr = 1e-2f; o.warmup_steps = 1; o.seed = 3;
    xc = make_xc(da, db, &o, xa, xb, n, 3);
    TH_CHECK(xc != NULL, "create");
    if (xc) {
        moexc_xc_step_stats s;
        moexc_xc_loss_grad(xc, xa, xb, n, &s, NULL);
        TH_CHECK(s.penalty > 0.0, "penalty term present (%g)", s.penalty);
        TH_CHECK(grad_check(xc, xa, xb, n, "L1, d_A 5, d_B 7") == 0, "L1 gradient");
    }
    moexc_xc_free(xc);
    /* the same with the uncentred encoder (it reads x^m, not x^m - b_dec^m) */
    o.uncentred_encoder = 1;
    xc = make_xc(da, db, &o, xa, xb, n, 3);
    TH_CHECK(xc != NULL, "create");
    if (xc) TH_CHECK(grad_check(xc, xa, xb, n, "L1, d_A 5, d_B 7, uncentred encoder") == 0, "L1 uncentred gradient");
    moexc_xc_free(xc); free(xa); free(xb);
}

static void test_grad_l1_shared(void)
{
    moexc_rng rng;
    int n = 6, d = 6;
    float *xa, *xb;
    moexc_xc_options o;
    moexc_xc *xc;
    moexc_rng_seed(&rng, 2);
    xa = randn(n * d, &rng, 1.0f); xb = randn(n * d, &rng, 1.0f);
    memset(&o, 0, sizeof(o));
    o.variant = MOEXC_XC_L1; o.n_latents = 9; o.n_shared = 3; o.steps = 10; o.lambda_warmup = -1.0f;
    o.lambda_f = 0.5f; o.lambda_ratio = 0.4f; o.lr = 1e-2f; o.warmup_steps = 1; o.seed = 4;
    xc = make_xc(d, d, &o, xa, xb, n, 3);
    TH_CHECK(xc != NULL, "create");
    if (xc) TH_CHECK(grad_check(xc, xa, xb, n, "L1, 3 shared latents") == 0, "L1 + shared gradient");
    moexc_xc_free(xc); free(xa); free(xb);
}

static void test_grad_batchtopk_shared_penalty_auxk(void)
{
    moexc_rng rng;
    int n = 8, d = 6, F = 12;
    float *xa, *xb;
    moexc_xc_options o;
    moexc_xc *xc;
    moexc_xc_step_stats s;
    moexc_rng_seed(&rng, 5);
    xa = randn(n * d, &rng, 1.0f); xb = randn(n * d, &rng, 3.0f);
    memset(&o, 0, sizeof(o));
    o.variant = MOEXC_XC_BATCHTOPK; o.n_latents = F; o.n_shared = 2; o.k = 2; o.steps = 10;
    o.lambda_f = 0.3f; o.lambda_warmup = -1.0f; o.aux_k = 3; o.aux_alpha = 0.5f; /* large so the check sees it */
    o.lr = 1e-2f; o.warmup_steps = 1; o.seed = 6;
    o.aux_exact_relu = 1;   /* the straight-through default is not a derivative: test_auxk_straight_through */
    xc = make_xc(d, d, &o, xa, xb, n, 3);
    TH_CHECK(xc != NULL, "create");
    if (!xc) return;
    /* latents 1 (shared), 5, 7, 9, 10, 11 are dead: AuxK reconstructs the residual from them */
    moexc_xc_set_dead(xc, 1, 1); moexc_xc_set_dead(xc, 5, 1); moexc_xc_set_dead(xc, 7, 1);
    moexc_xc_set_dead(xc, 9, 1); moexc_xc_set_dead(xc, 10, 1); moexc_xc_set_dead(xc, 11, 1);
    moexc_xc_loss_grad(xc, xa, xb, n, &s, NULL);
    TH_CHECK(s.aux > 0.0 && s.aux < 10.0, "aux loss %g", s.aux);
    TH_CHECK(s.penalty > 0.0, "penalty %g", s.penalty);
    TH_CHECK(fabs(s.l0 * n - o.k * n) < 0.5, "kept %g, want k*n = %d", s.l0 * n, o.k * n);
    TH_CHECK(grad_check(xc, xa, xb, n, "BatchTopK, shared, penalty, AuxK") == 0, "BatchTopK gradient");

    moexc_xc_free(xc); free(xa); free(xb);
}

/* AuxK's gradient really reaches the encoder: a latent that BatchTopK never
   keeps gets an encoder gradient only when it is dead and AuxK is on. */
static void test_auxk_reaches_encoder(void)
{
    moexc_rng rng;
    int n = 16, d = 8, F = 24, i, j, found = 0;
    float *xa, *xb, *g_off;
    moexc_xc_options o;
    moexc_xc *on, *off;
    moexc_xc_step_stats s;
    moexc_rng_seed(&rng, 9);
    xa = randn(n * d, &rng, 1.0f); xb = randn(n * d, &rng, 1.0f);
    memset(&o, 0, sizeof(o));
    o.n_latents = F; o.k = 2; o.steps = 100; o.seed = 10; o.aux_k = 4;
    on = make_xc(d, d, &o, xa, xb, n, 0);
    o.aux_k = -1;
    off = make_xc(d, d, &o, xa, xb, n, 0);
    TH_CHECK(on && off, "create");
    if (!on || !off) return;
    memcpy(moexc_xc_params(off), moexc_xc_params(on), moexc_xc_num_params(on) * sizeof(float));
    g_off = (float *)malloc(moexc_xc_num_params(on) * sizeof(float));
    for (i = 0; i < F && found < 3; i++) {
        double col_off = 0.0, col_on = 0.0;
        float *g;
        moexc_xc_set_dead(off, i, 1);
        moexc_xc_loss_grad(off, xa, xb, n, &s, NULL);
        memcpy(g_off, moexc_xc_grads(off), moexc_xc_num_params(off) * sizeof(float));
        for (j = 0; j < 2 * d; j++) col_off += fabs(g_off[(size_t)j * F + i]);
        if (col_off != 0.0) continue;          /* kept by BatchTopK somewhere */
        moexc_xc_set_dead(on, i, 1);
        moexc_xc_loss_grad(on, xa, xb, n, &s, NULL);
        g = moexc_xc_grads(on);
        for (j = 0; j < 2 * d; j++) col_on += fabs(g[(size_t)j * F + i]);
        if (s.aux > 0.0 && col_on > 1e-7) found++;
        moexc_xc_set_dead(on, i, 0);
    }
    TH_CHECK(found >= 1, "found %d never-kept latents whose encoder AuxK trains", found);
    free(g_off);
    moexc_xc_free(on); moexc_xc_free(off); free(xa); free(xb);
}

/* AuxK's straight-through gradient (the default): a dead latent j negative on
   every token (b_enc[j] = -50), the only dead one, so ê = 0 and
     dL/db_enc[j]  = sum_b c_b,   dL/dW_enc^m[:, j] = sum_b c_b (xs_b^m - b_dec^m),
     c_b = -2 alpha / den sum_m e_b^m . d_j^m,  den = sum_m ||e^m - mean_b e^m||^2,
   with e = x - x̂ from moexc_xc_encode/decode (BatchTopK over the batch before
   theta exists, the training selection). With aux_exact_relu they are 0. */
static void test_auxk_straight_through(void)
{
    moexc_rng rng;
    int n = 12, d = 6, F = 16, jd = 5, b, m, q, exact;
    float *x[2], *f, *xh[2], *bdec[2];
    moexc_xc_options o;
    moexc_rng_seed(&rng, 19);
    x[0] = randn(n * d, &rng, 1.0f); x[1] = randn(n * d, &rng, 2.0f);
    f = (float *)malloc((size_t)n * F * sizeof(float));
    xh[0] = (float *)malloc((size_t)n * d * sizeof(float)); xh[1] = (float *)malloc((size_t)n * d * sizeof(float));
    for (exact = 0; exact < 2; exact++) {
        moexc_xc *xc;
        moexc_xc_step_stats s;
        double den = 0.0, want_b = 0.0, want_w[2][6], got_b, err_w = 0.0, scale_w = 0.0;
        float *p, *g;
        memset(&o, 0, sizeof(o));
        o.n_latents = F; o.k = 3; o.steps = 10; o.seed = 20; o.aux_k = 4; o.aux_alpha = 0.5f; o.aux_exact_relu = exact;
        xc = make_xc(d, d, &o, x[0], x[1], n, 0);
        TH_CHECK(xc != NULL, "create");
        if (!xc) break;
        moexc_xc_set_scales(xc, 1.0f, 1.0f);
        p = moexc_xc_params(xc);
        p[2 * (size_t)d * F + jd] = -50.0f;                 /* b_enc[jd]: negative on every token */
        moexc_xc_set_dead(xc, jd, 1);
        TH_CHECK(moexc_xc_loss_grad(xc, x[0], x[1], n, &s, NULL) == MOEXC_OK, "loss_grad");
        g = moexc_xc_grads(xc);
        moexc_xc_encode(xc, x[0], x[1], n, f, NULL);
        moexc_xc_decode(xc, f, n, xh[0], xh[1]);
        bdec[0] = p + moexc_xc_num_params(xc) - 2 * (size_t)d; bdec[1] = bdec[0] + d;
        for (m = 0; m < 2; m++) {
            for (q = 0; q < d; q++) {
                double mean = 0.0;
                for (b = 0; b < n; b++) mean += x[m][b * d + q] - xh[m][b * d + q];
                mean /= n;
                for (b = 0; b < n; b++) { double e = x[m][b * d + q] - xh[m][b * d + q] - mean; den += e * e; }
                want_w[m][q] = 0.0;
            }
        }
        for (b = 0; b < n; b++) {
            double c = 0.0;
            for (m = 0; m < 2; m++) {
                const float *row = moexc_xc_decoder_row(xc, m, jd);
                for (q = 0; q < d; q++) c += (x[m][b * d + q] - xh[m][b * d + q]) * row[q];
            }
            c *= -2.0 * o.aux_alpha / den;
            want_b += c;
            for (m = 0; m < 2; m++) for (q = 0; q < d; q++) want_w[m][q] += c * (x[m][b * d + q] - bdec[m][q]);
        }
        got_b = g[2 * (size_t)d * F + jd];
        for (m = 0; m < 2; m++)
            for (q = 0; q < d; q++) {
                double gw = g[(size_t)m * d * F + (size_t)q * F + jd];
                err_w += fabs(gw - (exact ? 0.0 : want_w[m][q]));
                scale_w += fabs(want_w[m][q]);
            }
        TH_CHECK(f[jd] == 0.0f && s.aux > 0.99, "latent %d never active (f %g), aux %g (ê = 0)", jd, f[jd], s.aux);
        if (exact) {
            TH_CHECK(got_b == 0.0 && err_w == 0.0, "exact ReLU: no gradient (b_enc %g, W_enc %g)", got_b, err_w);
        } else {
            TH_CHECK(fabs(want_b) > 1e-4 && fabs(got_b - want_b) <= 1e-4 * fabs(want_b) + 1e-7,
                     "straight-through db_enc %g, want %g", got_b, want_b);
            TH_CHECK(scale_w > 1e-4 && err_w <= 1e-4 * scale_w, "straight-through dW_enc off by %g of %g", err_w, scale_w);
            printf("  straight-through: db_enc %.6g (want %.6g), |dW_enc| %.4g\n", got_b, want_b, scale_w);
        }
        moexc_xc_free(xc);
    }
    free(x[0]); free(x[1]); free(f); free(xh[0]); free(xh[1]);
}

/* Exact tying: after many steps the shared rows are one parameter (the same
   pointer for both models), the parameter count has one set of them, and
   the saved file holds identical rows in both slices. */
static void test_tying_invariant(void)
{
    moexc_rng rng;
    int n = 64, d = 8, F = 32, ns = 5, s, i, j, same = 1;
    float *xa, *xb, *da, *db;
    moexc_xc_options o;
    moexc_xc *xc;
    moexc_rng_seed(&rng, 11);
    xa = randn(n * d, &rng, 1.0f); xb = randn(n * d, &rng, 4.0f);
    memset(&o, 0, sizeof(o));
    o.n_latents = F; o.n_shared = ns; o.k = 4; o.steps = 300; o.lambda_f = 0.1f; o.seed = 12;
    xc = make_xc(d, d, &o, xa, xb, n, 0);
    TH_CHECK(xc != NULL, "create");
    if (!xc) return;
    for (s = 0; s < 300; s++) moexc_xc_train_step(xc, xa, xb, n, NULL, NULL);
    TH_CHECK(moexc_xc_num_params(xc) == (size_t)(2 * d * F + F + F * d + (F - ns) * d + 2 * d),
             "parameter count %lu has one copy of the shared rows", (unsigned long)moexc_xc_num_params(xc));
    for (i = 0; i < ns; i++) TH_CHECK(moexc_xc_decoder_row(xc, 0, i) == moexc_xc_decoder_row(xc, 1, i), "row %d tied", i);
    TH_CHECK(moexc_xc_decoder_row(xc, 0, ns) != moexc_xc_decoder_row(xc, 1, ns), "row %d untied", ns);
    da = (float *)malloc((size_t)F * d * sizeof(float)); db = (float *)malloc((size_t)F * d * sizeof(float));
    moexc_xc_decoder(xc, 0, 0, da); moexc_xc_decoder(xc, 1, 0, db);
    for (i = 0; i < ns; i++) for (j = 0; j < d; j++) same &= da[i * d + j] == db[i * d + j];
    TH_CHECK(same, "shared rows identical after 300 steps");
    same = 1;
    for (j = 0; j < d; j++) same &= da[ns * d + j] == db[ns * d + j];
    TH_CHECK(!same, "exclusive rows differ");
    free(da); free(db);
    moexc_xc_free(xc); free(xa); free(xb);
}

/* A step whose update overflows the parameters stops with an error that
   names it: at lr 1e38 the first step's bias-corrected step size,
   lr / (1 - beta1), is past FLT_MAX, so the update makes the parameters
   non-finite (the loss and gradients stay finite). */
static void test_overflow_in_update(void)
{
    moexc_rng rng;
    int n = 64, d = 8, F = 32;
    float *xa, *xb;
    moexc_xc_options o;
    moexc_xc *xc;
    moexc_error err;
    moexc_status st;
    moexc_rng_seed(&rng, 5);
    xa = randn(n * d, &rng, 1.0f); xb = randn(n * d, &rng, 1.0f);
    memset(&o, 0, sizeof(o));
    o.n_latents = F; o.n_shared = 4; o.k = 4; o.steps = 10; o.lr = 1e38f; o.seed = 3;
    xc = make_xc(d, d, &o, xa, xb, n, 0);
    TH_CHECK(xc != NULL, "create");
    if (!xc) { free(xa); free(xb); return; }
    st = moexc_xc_train_step(xc, xa, xb, n, NULL, &err);
    TH_CHECK(st == MOEXC_ERR_NUMERIC, "step with lr 1e38: status %d (%s)", (int)st, st ? err.message : "ok");
    TH_CHECK(st && strstr(err.message, "step 1 diverged") && strstr(err.message, "after the Adam update"),
             "the error names the step and the update: %s", st ? err.message : "(none)");
    moexc_xc_free(xc); free(xa); free(xb);
}

/* BatchTopK keeps exactly k * batch latents, ties included (duplicated rows
   tie exactly), and the same selection every time. */
static void test_batchtopk_exact_count(void)
{
    moexc_rng rng;
    int n = 24, d = 10, F = 40, k = 3, r;
    float *xa, *xb, *f1, *f2;
    moexc_xc_options o;
    moexc_xc *xc;
    moexc_xc_step_stats s;
    size_t i, kept = 0;
    moexc_rng_seed(&rng, 13);
    xa = randn(n * d, &rng, 1.0f); xb = randn(n * d, &rng, 1.0f);
    for (r = 1; r < 7; r++) { memcpy(xa + r * d, xa, d * sizeof(float)); memcpy(xb + r * d, xb, d * sizeof(float)); }
    memset(&o, 0, sizeof(o));
    o.n_latents = F; o.k = k; o.steps = 100; o.seed = 14;
    xc = make_xc(d, d, &o, xa, xb, n, 0);
    TH_CHECK(xc != NULL, "create");
    if (!xc) return;
    moexc_xc_loss_grad(xc, xa, xb, n, &s, NULL);
    TH_CHECK(fabs(s.l0 - k) < 1e-9, "L0 %g, want exactly %d", s.l0, k);
    f1 = (float *)malloc((size_t)n * F * sizeof(float)); f2 = (float *)malloc((size_t)n * F * sizeof(float));
    /* before the threshold exists, inference uses the batch rule too */
    moexc_xc_encode(xc, xa, xb, n, f1, NULL);
    moexc_xc_encode(xc, xa, xb, n, f2, NULL);
    for (i = 0; i < (size_t)n * F; i++) kept += f1[i] > 0.0f;
    TH_CHECK(kept == (size_t)(k * n), "kept %lu, want %d", (unsigned long)kept, k * n);
    TH_CHECK(memcmp(f1, f2, (size_t)n * F * sizeof(float)) == 0, "deterministic selection");
    free(f1); free(f2);
    moexc_xc_free(xc); free(xa); free(xb);
}

/* The batch selection starts its scans from a floor taken from the last
   batch (a speed hint): whether that floor is far too high (the scan is
   redone), far too low, or absent, the kept set is the same. F = 200 is not
   a whole number of vectors, so the scalar tails are crossed too. */
static void test_selection_floor_independent(void)
{
    moexc_rng rng;
    int n = 64, d = 12, F = 200, k = 5, which;
    float *xa, *xb, *big_a, *big_b, *f_ref, *f;
    moexc_xc_options o;
    size_t i;
    moexc_rng_seed(&rng, 41);
    xa = randn(n * d, &rng, 1.0f); xb = randn(n * d, &rng, 1.0f);
    big_a = (float *)malloc((size_t)n * d * sizeof(float)); big_b = (float *)malloc((size_t)n * d * sizeof(float));
    f_ref = (float *)malloc((size_t)n * F * sizeof(float)); f = (float *)malloc((size_t)n * F * sizeof(float));
    memset(&o, 0, sizeof(o));
    o.n_latents = F; o.k = k; o.steps = 100; o.seed = 42;
    for (which = 0; which < 3; which++) {
        /* 0: no hint; 1: the hint from a batch with 30x larger scores (floor far
           too high); 2: from one with 30x smaller scores (floor far too low) */
        moexc_xc *xc = make_xc(d, d, &o, xa, xb, n, 0);
        size_t kept = 0;
        TH_CHECK(xc != NULL, "create");
        if (!xc) break;
        if (which) {
            float s = which == 1 ? 30.0f : 1.0f / 30.0f;
            for (i = 0; i < (size_t)n * d; i++) { big_a[i] = xa[i] * s; big_b[i] = xb[i] * s; }
            moexc_xc_encode(xc, big_a, big_b, n, f, NULL);
        }
        TH_CHECK(moexc_xc_encode(xc, xa, xb, n, which ? f : f_ref, NULL) == MOEXC_OK, "encode");
        for (i = 0; i < (size_t)n * F; i++) kept += (which ? f : f_ref)[i] > 0.0f;
        TH_CHECK(kept == (size_t)k * n, "case %d: kept %lu, want %d", which, (unsigned long)kept, k * n);
        if (which) TH_CHECK(memcmp(f, f_ref, (size_t)n * F * sizeof(float)) == 0, "case %d: the kept set depends on the floor", which);
        moexc_xc_free(xc);
    }
    free(xa); free(xb); free(big_a); free(big_b); free(f_ref); free(f);
}

/* Training steps give the same bits at 1 and 2 threads: every threaded part
   of a step (selection, sparse decoder, AuxK, gradients by latent, norm,
   Adam) sums in an order that does not depend on the thread count. The
   shapes are large enough for the parallel paths, with dead latents (AuxK).
   Without OpenMP both runs use one thread (the same-seed promise). */
static void test_thread_count_bit_identical(void)
{
    moexc_rng rng;
    int n = 256, d = 64, F = 1024, run, s, i;
    float *xa, *xb, *params[2];
    moexc_xc_options o;
    size_t P = 0;
#ifdef _OPENMP
    int saved = omp_get_max_threads();
#endif
    moexc_rng_seed(&rng, 43);
    xa = randn(n * d, &rng, 1.0f); xb = randn(n * d, &rng, 1.0f);
    memset(&o, 0, sizeof(o));
    o.n_latents = F; o.k = 16; o.n_shared = 32; o.steps = 20; o.seed = 44;
    for (run = 0; run < 2; run++) {
        moexc_xc *xc;
#ifdef _OPENMP
        omp_set_num_threads(run + 1);
#endif
        xc = make_xc(d, d, &o, xa, xb, n, 0);
        TH_CHECK(xc != NULL, "create");
        if (!xc) { params[run] = NULL; continue; }
        for (i = 700; i < F; i++) moexc_xc_set_dead(xc, i, 1);
        for (s = 0; s < 6; s++) moexc_xc_train_step(xc, xa + (s % 2) * (n / 2) * d, xb + (s % 2) * (n / 2) * d, n / 2, NULL, NULL);
        P = moexc_xc_num_params(xc);
        params[run] = (float *)malloc(P * sizeof(float));
        memcpy(params[run], moexc_xc_params(xc), P * sizeof(float));
        moexc_xc_free(xc);
    }
#ifdef _OPENMP
    omp_set_num_threads(saved);
#endif
    if (params[0] && params[1])
        TH_CHECK(memcmp(params[0], params[1], P * sizeof(float)) == 0, "parameters differ between the two runs (1 and 2 threads)");
    free(params[0]); free(params[1]); free(xa); free(xb);
}

/* The sparse decoder path (used when at most 1/8 of f is non-zero) gives
   the dense GEMMs' loss and gradient up to summation order. */
static void test_sparse_matches_dense(void)
{
    moexc_rng rng;
    int n = 64, d = 16, F = 96, i;
    float *xa, *xb, *g_dense;
    moexc_xc_options o;
    moexc_xc *sp, *de;
    moexc_xc_step_stats ss, sd;
    double max_diff = 0.0, max_g = 0.0;
    moexc_rng_seed(&rng, 15);
    xa = randn(n * d, &rng, 1.0f); xb = randn(n * d, &rng, 2.0f);
    memset(&o, 0, sizeof(o));
    o.n_latents = F; o.k = 4; o.n_shared = 6; o.steps = 50; o.lambda_f = 0.1f; o.lambda_warmup = -1.0f; o.aux_k = 5; o.seed = 16;
    sp = make_xc(d, d, &o, xa, xb, n, 0);
    o.dense_only = 1;
    de = make_xc(d, d, &o, xa, xb, n, 0);
    TH_CHECK(sp && de, "create");
    if (!sp || !de) return;
    for (i = 60; i < F; i++) { moexc_xc_set_dead(sp, i, 1); moexc_xc_set_dead(de, i, 1); }
    moexc_xc_loss_grad(sp, xa, xb, n, &ss, NULL);
    moexc_xc_loss_grad(de, xa, xb, n, &sd, NULL);
    TH_CHECK(ss.l0 * 8.0 <= F, "the sparse path is taken (L0 %g)", ss.l0);
    TH_CHECK(ss.aux > 0.0, "AuxK active (%g)", ss.aux);
    TH_CHECK_NEAR(ss.loss, sd.loss, 1e-6, 1e-5, "loss");
    g_dense = moexc_xc_grads(de);
    for (i = 0; i < (int)moexc_xc_num_params(sp); i++) {
        double diff = fabs((double)moexc_xc_grads(sp)[i] - g_dense[i]);
        if (diff > max_diff) max_diff = diff;
        if (fabs(g_dense[i]) > max_g) max_g = fabs(g_dense[i]);
    }
    TH_CHECK(max_diff <= 1e-5 * max_g + 1e-7, "max gradient difference %g (max |g| %g)", max_diff, max_g);
    moexc_xc_free(sp); moexc_xc_free(de); free(xa); free(xb);
}

/* Loss terms and gradient against PyTorch autograd (tools/xc_torch_ref.py). */
static void check_torch_fixture(const char *path)
{
    moexc_st_file *sf = NULL;
    moexc_error err;
    moexc_xc_options o;
    moexc_xc *xc = NULL;
    moexc_xc_step_stats s;
    int64_t sh[8];
    int nd, n, da, db, F, i, bad = 0;
    float *xa, *xb, *grads, *dead, want[4];
    const char *names[4] = { "loss", "rec", "penalty", "aux" };
    double got[4], max_g = 0.0;
    size_t P, q;
    if (moexc_st_open(&sf, path, &err) != MOEXC_OK) { TH_CHECK(0, "open %s: %s", path, err.message); return; }
    memset(&o, 0, sizeof(o));
    o.variant = strcmp(moexc_st_meta(sf, "variant"), "l1") == 0 ? MOEXC_XC_L1 : MOEXC_XC_BATCHTOPK;
    o.n_latents = F = atoi(moexc_st_meta(sf, "n_latents"));
    o.k = atoi(moexc_st_meta(sf, "k"));
    o.n_shared = atoi(moexc_st_meta(sf, "n_shared"));
    o.lambda_f = (float)atof(moexc_st_meta(sf, "lambda_f"));
    o.lambda_ratio = (float)atof(moexc_st_meta(sf, "lambda_ratio"));
    o.aux_k = atoi(moexc_st_meta(sf, "aux_k"));
    o.aux_alpha = (float)atof(moexc_st_meta(sf, "aux_alpha"));
    o.aux_exact_relu = moexc_st_meta(sf, "aux_exact_relu") ? atoi(moexc_st_meta(sf, "aux_exact_relu")) : 1;
    o.uncentred_encoder = moexc_st_meta(sf, "uncentred_encoder") ? atoi(moexc_st_meta(sf, "uncentred_encoder")) : 1;
    o.lambda_warmup = -1.0f;    /* the full lambda at step 0 */
    da = atoi(moexc_st_meta(sf, "d_a")); db = atoi(moexc_st_meta(sf, "d_b"));
    n = atoi(moexc_st_meta(sf, "n"));
    TH_CHECK(moexc_xc_create(&xc, da, db, &o, &err) == MOEXC_OK, "create: %s", err.message);
    if (!xc) { moexc_st_close(sf); return; }
    P = moexc_xc_num_params(xc);
    xa = (float *)malloc((size_t)n * da * sizeof(float)); xb = (float *)malloc((size_t)n * db * sizeof(float));
    grads = (float *)malloc(P * sizeof(float)); dead = (float *)malloc((size_t)F * sizeof(float));
    sh[0] = n; sh[1] = da;
    TH_CHECK(moexc_st_read_f32(sf, "x_a", xa, 2, sh, &err) == MOEXC_OK, "x_a: %s", err.message);
    sh[1] = db;
    TH_CHECK(moexc_st_read_f32(sf, "x_b", xb, 2, sh, &err) == MOEXC_OK, "x_b: %s", err.message);
    sh[0] = (int64_t)P;
    TH_CHECK(moexc_st_read_f32(sf, "params", moexc_xc_params(xc), 1, sh, &err) == MOEXC_OK, "params: %s", err.message);
    TH_CHECK(moexc_st_read_f32(sf, "grads", grads, 1, sh, &err) == MOEXC_OK, "grads: %s", err.message);
    sh[0] = F;
    TH_CHECK(moexc_st_read_f32(sf, "dead", dead, 1, sh, &err) == MOEXC_OK, "dead: %s", err.message);
    for (i = 0; i < 4; i++) {
        sh[0] = 1;
        TH_CHECK(moexc_st_shape(sf, names[i], &nd, sh, NULL) == MOEXC_OK && moexc_st_read_f32(sf, names[i], want + i, 1, sh, NULL) == MOEXC_OK, "%s", names[i]);
    }
    moexc_st_close(sf);
    moexc_xc_set_scales(xc, 1.0f, 1.0f);
    for (i = 0; i < F; i++) moexc_xc_set_dead(xc, i, dead[i] > 0.0f);
    TH_CHECK(moexc_xc_loss_grad(xc, xa, xb, n, &s, &err) == MOEXC_OK, "loss_grad: %s", err.message);
    got[0] = s.loss; got[1] = s.rec; got[2] = s.penalty; got[3] = s.aux;
    for (i = 0; i < 4; i++) TH_CHECK_NEAR(got[i], want[i], 1e-5, 1e-5, names[i]);
    for (q = 0; q < P; q++) if (fabs(grads[q]) > max_g) max_g = fabs(grads[q]);
    for (q = 0; q < P; q++) {
        double diff = fabs((double)moexc_xc_grads(xc)[q] - grads[q]);
        if (diff > 1e-5 * max_g + 1e-6 * fabs(grads[q])) {
            if (bad < 4) printf("  %s: grad %lu: %.8g, torch %.8g\n", path, (unsigned long)q, moexc_xc_grads(xc)[q], grads[q]);
            bad++;
        }
    }
    TH_CHECK(bad == 0, "%s: %d of %lu gradients differ from PyTorch", path, bad, (unsigned long)P);
    printf("  %s: loss %.6f (torch %.6f), aux %.6f (torch %.6f), %lu gradients\n", path, s.loss, want[0], s.aux, want[3], (unsigned long)P);
    moexc_xc_free(xc);
    free(xa); free(xb); free(grads); free(dead);
}

static void test_against_pytorch(void)
{
    check_torch_fixture("tests/fixtures/xc_ref_batchtopk.safetensors");
    check_torch_fixture("tests/fixtures/xc_ref_l1.safetensors");
}

/* ---- planted dictionary -------------------------------------------------- */
/* Atoms: 0..23 shared (12 with the same direction in both models, 12 with
   correlated directions, cosine ~0.6), 24..35 A-only, 36..47 B-only. Each
   fires with probability p, magnitude uniform in [0.5, 1.5]. */
#define PD_D 32
#define PD_ATOMS 48
typedef struct planted { float ua[PD_ATOMS][PD_D], ub[PD_ATOMS][PD_D]; int cls[PD_ATOMS]; } planted;

static void unit(float *v, int d) { double s = 0; int j; for (j = 0; j < d; j++) s += (double)v[j] * v[j]; s = sqrt(s); for (j = 0; j < d; j++) v[j] = (float)(v[j] / s); }

static void planted_init(planted *pd, moexc_rng *rng)
{
    int a, j;
    memset(pd, 0, sizeof(*pd));
    for (a = 0; a < PD_ATOMS; a++) {
        pd->cls[a] = a < 24 ? 1 : a < 36 ? 0 : 2;   /* 0 A-only, 1 shared, 2 B-only */
        for (j = 0; j < PD_D; j++) pd->ua[a][j] = moexc_rng_normal(rng);
        unit(pd->ua[a], PD_D);
        if (a < 12) memcpy(pd->ub[a], pd->ua[a], sizeof(pd->ua[a]));
        else {
            float noise[PD_D];
            for (j = 0; j < PD_D; j++) noise[j] = moexc_rng_normal(rng);
            unit(noise, PD_D);
            for (j = 0; j < PD_D; j++) pd->ub[a][j] = 0.6f * pd->ua[a][j] + 0.8f * noise[j];
            unit(pd->ub[a], PD_D);
        }
        if (pd->cls[a] == 2) memcpy(pd->ub[a], pd->ua[a], sizeof(pd->ua[a]));
        if (pd->cls[a] == 0) memset(pd->ub[a], 0, sizeof(pd->ub[a]));
        if (pd->cls[a] == 2) memset(pd->ua[a], 0, sizeof(pd->ua[a]));
    }
}

static void planted_sample(const planted *pd, moexc_rng *rng, int n, float *xa, float *xb)
{
    int b, a, j;
    /* a little dense noise so that nothing reconstructs perfectly */
    for (j = 0; j < n * PD_D; j++) { xa[j] = 0.03f * moexc_rng_normal(rng); xb[j] = 0.03f * moexc_rng_normal(rng); }
    for (b = 0; b < n; b++)
        for (a = 0; a < PD_ATOMS; a++) {
            float c;
            if (moexc_rng_uniform(rng) >= 0.06f) continue;
            c = 0.5f + moexc_rng_uniform(rng);
            for (j = 0; j < PD_D; j++) {
                xa[b * PD_D + j] += c * pd->ua[a][j];
                xb[b * PD_D + j] += c * pd->ub[a][j];
            }
        }
}

static void test_planted_dictionary(void)
{
    static planted pd;
    moexc_rng rng;
    int n = 120, F = 64, ns = 8, steps = 3000, s, a, i, j, correct = 0;
    int n_eval = 4096;
    float *xa = (float *)malloc((size_t)n_eval * PD_D * sizeof(float));
    float *xb = (float *)malloc((size_t)n_eval * PD_D * sizeof(float));
    float *da = (float *)malloc((size_t)F * PD_D * sizeof(float));
    float *db = (float *)malloc((size_t)F * PD_D * sizeof(float));
    moexc_xc_options o;
    moexc_xc *xc = NULL;
    moexc_xc_eval ev;
    moexc_error err;
    moexc_rng_seed(&rng, 21);
    planted_init(&pd, &rng);
    memset(&o, 0, sizeof(o));
    o.n_latents = F; o.n_shared = ns; o.k = 3; o.steps = steps; o.batch = n; o.lr = 3e-3f; o.seed = 22;
    o.dead_tokens = 20 * n;
    TH_CHECK(moexc_xc_create(&xc, PD_D, PD_D, &o, &err) == MOEXC_OK, "create: %s", err.message);
    planted_sample(&pd, &rng, n_eval, xa, xb);
    moexc_xc_init_from_data(xc, xa, xb, n_eval, NULL);
    for (s = 0; s < steps; s++) {
        planted_sample(&pd, &rng, n, xa, xb);
        moexc_xc_train_step(xc, xa, xb, n, NULL, NULL);
    }
    planted_sample(&pd, &rng, n_eval, xa, xb);
    TH_CHECK(moexc_xc_evaluate(xc, xa, xb, n_eval, &ev, NULL, &err) == MOEXC_OK, "eval: %s", err.message);
    printf("  planted: FVE A %.4f B %.4f pooled %.4f, L0 %.2f, dead %.3f\n", ev.fve[0], ev.fve[1], ev.fve_pooled, ev.l0, ev.dead_fraction);
    TH_CHECK(ev.fve[0] >= 0.9 && ev.fve[1] >= 0.9, "FVE A %g B %g >= 0.9", ev.fve[0], ev.fve[1]);
    moexc_xc_decoder(xc, 0, 0, da);
    moexc_xc_decoder(xc, 1, 0, db);
    /* match each atom to the latent whose concatenated decoder [d^A, d^B] has the
       largest cosine with the atom's [u^A, u^B]; classify that latent by r */
    for (a = 0; a < PD_ATOMS; a++) {
        double best = -2.0; int bi = 0, cls; double na, nb, r;
        for (i = 0; i < F; i++) {
            double dot = 0, nl = 0, nu = 0;
            for (j = 0; j < PD_D; j++) {
                dot += (double)da[i * PD_D + j] * pd.ua[a][j] + (double)db[i * PD_D + j] * pd.ub[a][j];
                nl += (double)da[i * PD_D + j] * da[i * PD_D + j] + (double)db[i * PD_D + j] * db[i * PD_D + j];
                nu += (double)pd.ua[a][j] * pd.ua[a][j] + (double)pd.ub[a][j] * pd.ub[a][j];
            }
            if (nl > 0 && dot / sqrt(nl * nu) > best) { best = dot / sqrt(nl * nu); bi = i; }
        }
        na = 0; nb = 0;
        for (j = 0; j < PD_D; j++) { na += (double)da[bi * PD_D + j] * da[bi * PD_D + j]; nb += (double)db[bi * PD_D + j] * db[bi * PD_D + j]; }
        r = sqrt(nb) / (sqrt(na) + sqrt(nb));
        cls = r < 0.3 ? 0 : r > 0.7 ? 2 : 1;
        correct += cls == pd.cls[a] && best > 0.9;
    }
    printf("  planted: %d of %d atoms recovered (cosine > 0.9) and classified by r\n", correct, PD_ATOMS);
    TH_CHECK(correct >= (int)(0.9 * PD_ATOMS + 0.999), "recovered %d of %d atoms", correct, PD_ATOMS);
    free(xa); free(xb); free(da); free(db);
    moexc_xc_free(xc);
}

/* The EMA threshold makes inference keep about k latents per token, and a
   trained crosscoder saved (folded) then loaded gives the same outputs. */
static void test_threshold_and_folding(void)
{
    static planted pd;
    moexc_rng rng;
    int n = 120, F = 64, steps = 1200, s, k = 4, n_eval = 2048, ok, i;
    size_t nF = (size_t)n_eval * F, q;
    float *xa = (float *)malloc((size_t)n_eval * PD_D * sizeof(float));
    float *xb = (float *)malloc((size_t)n_eval * PD_D * sizeof(float));
    float *f1 = (float *)malloc(nF * sizeof(float)), *f2 = (float *)malloc(nF * sizeof(float));
    float *ha1 = (float *)malloc((size_t)n_eval * PD_D * sizeof(float)), *hb1 = (float *)malloc((size_t)n_eval * PD_D * sizeof(float));
    float *ha2 = (float *)malloc((size_t)n_eval * PD_D * sizeof(float)), *hb2 = (float *)malloc((size_t)n_eval * PD_D * sizeof(float));
    moexc_xc_options o;
    moexc_xc *xc = NULL, *back = NULL;
    moexc_xc_eval ev, ev2;
    moexc_error err;
    const char *path = "build/test_xc_folded.safetensors";
    moexc_rng_seed(&rng, 31);
    planted_init(&pd, &rng);
    memset(&o, 0, sizeof(o));
    o.n_latents = F; o.n_shared = 4; o.k = k; o.steps = steps; o.batch = n; o.lr = 3e-3f; o.seed = 32;
    o.threshold_start = 100;
    o.threshold_beta = 0.99f;   /* a short run needs a shorter memory than 0.999 */
    moexc_xc_create(&xc, PD_D, PD_D, &o, NULL);
    planted_sample(&pd, &rng, n_eval, xa, xb);
    /* raw activations far from unit scale, differently per model */
    for (q = 0; q < (size_t)n_eval * PD_D; q++) { xa[q] *= 7.0f; xb[q] *= 0.3f; }
    moexc_xc_init_from_data(xc, xa, xb, n_eval, NULL);
    TH_CHECK(fabs(moexc_xc_scale(xc, 0) * 7.0 / (moexc_xc_scale(xc, 1) * 0.3) - 1.0) < 0.1, "scales %g %g",
             moexc_xc_scale(xc, 0), moexc_xc_scale(xc, 1));
    for (s = 0; s < steps; s++) {
        planted_sample(&pd, &rng, n, xa, xb);
        for (q = 0; q < (size_t)n * PD_D; q++) { xa[q] *= 7.0f; xb[q] *= 0.3f; }
        moexc_xc_train_step(xc, xa, xb, n, NULL, NULL);
    }
    TH_CHECK(moexc_xc_threshold(xc) > 0.0f, "threshold %g estimated", moexc_xc_threshold(xc));
    planted_sample(&pd, &rng, n_eval, xa, xb);
    for (q = 0; q < (size_t)n_eval * PD_D; q++) { xa[q] *= 7.0f; xb[q] *= 0.3f; }
    moexc_xc_evaluate(xc, xa, xb, n_eval, &ev, NULL, NULL);
    printf("  threshold %.4f: inference L0 %.2f (k = %d), FVE %.3f %.3f\n", moexc_xc_threshold(xc), ev.l0, k, ev.fve[0], ev.fve[1]);
    TH_CHECK(ev.l0 > 0.75 * k && ev.l0 < 1.25 * k, "inference L0 %g near k = %d", ev.l0, k);

    /* folding */
    TH_CHECK(moexc_xc_save(xc, path, &err) == MOEXC_OK, "save: %s", err.message);
    TH_CHECK(moexc_xc_load(&back, path, &err) == MOEXC_OK, "load: %s", err.message);
    if (!back) goto done;
    moexc_xc_encode(xc, xa, xb, n_eval, f1, NULL);
    moexc_xc_encode(back, xa, xb, n_eval, f2, NULL);
    moexc_xc_decode(xc, f1, n_eval, ha1, hb1);
    moexc_xc_decode(back, f2, n_eval, ha2, hb2);
    ok = 1;
    for (q = 0; q < nF; q++) ok &= fabsf(f1[q] - f2[q]) <= 1e-4f * (1.0f + fabsf(f1[q]));
    TH_CHECK(ok, "latents equal after save/load");
    ok = 1;
    for (q = 0; q < (size_t)n_eval * PD_D; q++)
        ok &= fabsf(ha1[q] - ha2[q]) <= 1e-4f * 7.0f && fabsf(hb1[q] - hb2[q]) <= 1e-4f * 0.3f;
    TH_CHECK(ok, "reconstructions equal after save/load");
    moexc_xc_evaluate(back, xa, xb, n_eval, &ev2, NULL, NULL);
    TH_CHECK(fabs(ev.fve[0] - ev2.fve[0]) < 1e-4 && fabs(ev.l0 - ev2.l0) < 0.01, "eval equal after load");

    /* the file alone, as a PyTorch user would read it, reproduces the outputs on raw inputs:
       f = ReLU(sum_m x^m W_enc[m] + b_enc), x̂^m = f W_dec[m] + b_dec[m] */
    {
        moexc_st_file *sf = NULL;
        int64_t sh[3] = { 2, PD_D, 64 };
        float *enc = (float *)malloc(2 * PD_D * 64 * sizeof(float)), *dec = (float *)malloc(2 * PD_D * 64 * sizeof(float));
        float benc[64], bdec[2 * PD_D];
        int b, j, m, bad = 0;
        TH_CHECK(moexc_st_open(&sf, path, &err) == MOEXC_OK, "open: %s", err.message);
        moexc_st_read_f32(sf, "encoder.weight", enc, 3, sh, NULL);
        sh[1] = 64; sh[2] = PD_D;
        moexc_st_read_f32(sf, "decoder.weight", dec, 3, sh, NULL);
        sh[0] = 64;
        moexc_st_read_f32(sf, "encoder.bias", benc, 1, sh, NULL);
        sh[0] = 2; sh[1] = PD_D;
        moexc_st_read_f32(sf, "decoder.bias", bdec, 2, sh, NULL);
        for (b = 0; b < 64; b++) {
            float pre[64], xh[PD_D];
            for (i = 0; i < 64; i++) {
                double acc = benc[i];
                for (j = 0; j < PD_D; j++)
                    acc += (double)xa[b * PD_D + j] * enc[j * 64 + i] + (double)xb[b * PD_D + j] * enc[(PD_D + j) * 64 + i];
                pre[i] = acc > 0 ? (float)acc : 0.0f;
                /* kept latents of the crosscoder must have this pre-activation */
                if (f1[(size_t)b * 64 + i] > 0.0f && fabsf(f1[(size_t)b * 64 + i] - pre[i]) > 1e-3f * (1.0f + pre[i])) bad++;
            }
            for (m = 0; m < 2; m++) {
                for (j = 0; j < PD_D; j++) {
                    double acc = bdec[m * PD_D + j];
                    for (i = 0; i < 64; i++) acc += (double)f1[(size_t)b * 64 + i] * dec[((size_t)m * 64 + i) * PD_D + j];
                    xh[j] = (float)acc;
                }
                for (j = 0; j < PD_D; j++) {
                    float want = m ? hb1[b * PD_D + j] : ha1[b * PD_D + j];
                    if (fabsf(xh[j] - want) > 1e-3f * (m ? 0.3f : 7.0f)) bad++;
                }
            }
        }
        TH_CHECK(bad == 0, "%d mismatches between the file's folded weights and the crosscoder", bad);
        moexc_st_close(sf);
        free(enc); free(dec);
    }
done:
    remove(path);
    moexc_xc_free(xc); moexc_xc_free(back);
    free(xa); free(xb); free(f1); free(f2); free(ha1); free(hb1); free(ha2); free(hb2);
}

/* A training checkpoint resumes bit for bit; unequal widths use per-model
   tensors; corrupt files are rejected with the tensor named. */
static void test_checkpoints(void)
{
    moexc_rng rng;
    int n = 32, da = 6, db = 9, F = 20, s;
    float *xa, *xb;
    moexc_xc_options o;
    moexc_xc *xc = NULL, *back = NULL;
    moexc_error err;
    moexc_st_file *sf = NULL;
    const char *path = "build/test_xc_train.safetensors";
    moexc_rng_seed(&rng, 41);
    xa = randn(n * da, &rng, 3.0f); xb = randn(n * db, &rng, 0.2f);
    memset(&o, 0, sizeof(o));
    o.n_latents = F; o.k = 3; o.steps = 40; o.lambda_f = 0.2f; o.seed = 42; o.dead_tokens = 64;
    xc = make_xc(da, db, &o, xa, xb, n, 10);
    TH_CHECK(moexc_xc_save_training(xc, path, &err) == MOEXC_OK, "save: %s", err.message);
    TH_CHECK(moexc_xc_load(&back, path, &err) == MOEXC_OK, "load: %s", err.message);
    if (back) {
        TH_CHECK(moexc_xc_num_params(back) == moexc_xc_num_params(xc), "same layout");
        TH_CHECK(moexc_xc_step(back) == 10, "step %d", moexc_xc_step(back));
        for (s = 0; s < 5; s++) {
            moexc_xc_train_step(xc, xa, xb, n, NULL, NULL);
            moexc_xc_train_step(back, xa, xb, n, NULL, NULL);
        }
        TH_CHECK(memcmp(moexc_xc_params(xc), moexc_xc_params(back), moexc_xc_num_params(xc) * sizeof(float)) == 0,
                 "resumed training is bit-identical");
        TH_CHECK(moexc_xc_threshold(xc) == moexc_xc_threshold(back), "threshold");
    }
    TH_CHECK(moexc_st_open(&sf, path, &err) == MOEXC_OK, "open");
    if (sf) {
        TH_CHECK(moexc_st_meta(sf, "d_b") && strcmp(moexc_st_meta(sf, "d_b"), "9") == 0, "metadata d_b");
        {
            int64_t sh8[8];
            TH_CHECK(moexc_st_shape(sf, "decoder.weight.1", &s, sh8, NULL) == MOEXC_OK && sh8[0] == F && sh8[1] == db,
                     "per-model tensor decoder.weight.1 (F, d_B)");
        }
        moexc_st_close(sf);
    }
    moexc_xc_free(back); back = NULL;

    /* corrupt: wrong shape of a tensor */
    {
        float buf[9 * 20];
        moexc_st_entry e[1];
        moexc_st_kv kv[3] = { { "format", "moexc-crosscoder" }, { "version", "1" }, { "variant", "batchtopk" } };
        memset(buf, 0, sizeof(buf));
        e[0].name = "encoder.weight.0"; e[0].data = buf; e[0].ndim = 2; e[0].shape[0] = 9; e[0].shape[1] = 20;
        moexc_st_save(path, e, 1, kv, 3, NULL);
        TH_CHECK(moexc_xc_load(&back, path, &err) != MOEXC_OK && strstr(err.message, "n_latents"), "missing metadata named: %s", err.message);
    }
    /* truncated file */
    moexc_xc_save(xc, path, NULL);
    {
        FILE *f = fopen(path, "rb");
        long size;
        char *bytes;
        fseek(f, 0, SEEK_END); size = ftell(f); fseek(f, 0, SEEK_SET);
        bytes = (char *)malloc((size_t)size);
        TH_CHECK(fread(bytes, 1, (size_t)size, f) == (size_t)size, "read");
        fclose(f);
        f = fopen(path, "wb"); fwrite(bytes, 1, (size_t)size - 100, f); fclose(f);
        TH_CHECK(moexc_xc_load(&back, path, &err) != MOEXC_OK && back == NULL, "truncated file rejected");
        printf("  truncated: %s\n", err.message);
        free(bytes);
    }
    remove(path);
    moexc_xc_free(xc); free(xa); free(xb);

    /* shared rows that differ between the two slices cannot be tied */
    {
        int d = 6;
        moexc_xc *t = NULL;
        float *x1, *x2;
        x1 = randn(n * d, &rng, 1.0f); x2 = randn(n * d, &rng, 1.0f);
        memset(&o, 0, sizeof(o));
        o.n_latents = F; o.n_shared = 3; o.k = 3; o.steps = 10; o.seed = 43;
        t = make_xc(d, d, &o, x1, x2, n, 2);
        moexc_xc_save(t, path, NULL);
        {
            moexc_st_file *g = NULL;
            moexc_st_entry e[5];
            moexc_st_kv kv[64];
            int64_t sh[8];
            float *w = (float *)malloc(2 * (size_t)F * d * sizeof(float)), *ew = (float *)malloc(2 * (size_t)F * d * sizeof(float));
            float eb[64], db2[12], thr[1];
            int i, nm, ndim;
            moexc_st_open(&g, path, NULL);
            moexc_st_shape(g, "decoder.weight", &ndim, sh, NULL);
            moexc_st_read_f32(g, "decoder.weight", w, 3, sh, NULL);
            moexc_st_shape(g, "encoder.weight", &ndim, sh, NULL);
            moexc_st_read_f32(g, "encoder.weight", ew, 3, sh, NULL);
            moexc_st_shape(g, "encoder.bias", &ndim, sh, NULL);
            moexc_st_read_f32(g, "encoder.bias", eb, 1, sh, NULL);
            moexc_st_shape(g, "decoder.bias", &ndim, sh, NULL);
            moexc_st_read_f32(g, "decoder.bias", db2, 2, sh, NULL);
            moexc_st_shape(g, "threshold", &ndim, sh, NULL);
            moexc_st_read_f32(g, "threshold", thr, 1, sh, NULL);
            nm = moexc_st_meta_count(g);
            for (i = 0; i < nm && i < 64; i++) { kv[i].key = moexc_st_meta_key(g, i); kv[i].value = moexc_st_meta(g, kv[i].key); }
            w[(size_t)F * d + 1 * d + 2] += 0.5f;   /* model B's slice, shared latent 1 */
            e[0].name = "encoder.weight"; e[0].data = ew; e[0].ndim = 3; e[0].shape[0] = 2; e[0].shape[1] = d; e[0].shape[2] = F;
            e[1].name = "decoder.weight"; e[1].data = w; e[1].ndim = 3; e[1].shape[0] = 2; e[1].shape[1] = F; e[1].shape[2] = d;
            e[2].name = "encoder.bias"; e[2].data = eb; e[2].ndim = 1; e[2].shape[0] = F;
            e[3].name = "decoder.bias"; e[3].data = db2; e[3].ndim = 2; e[3].shape[0] = 2; e[3].shape[1] = d;
            e[4].name = "threshold"; e[4].data = thr; e[4].ndim = 1; e[4].shape[0] = 1;
            TH_CHECK(moexc_st_save("build/test_xc_untied.safetensors", e, 5, kv, nm, &err) == MOEXC_OK, "rewrite: %s", err.message);
            TH_CHECK(moexc_xc_load(&back, "build/test_xc_untied.safetensors", &err) != MOEXC_OK &&
                     strstr(err.message, "decoder.weight") && strstr(err.message, "shared latent 1"),
                     "untied shared row rejected: %s", err.message);
            printf("  untied: %s\n", err.message);
            /* and the wrong shape is named */
            e[1].shape[1] = F - 1;
            moexc_st_save("build/test_xc_untied.safetensors", e, 5, kv, nm, NULL);
            TH_CHECK(moexc_xc_load(&back, "build/test_xc_untied.safetensors", &err) == MOEXC_ERR_SHAPE &&
                     strstr(err.message, "decoder.weight"), "wrong shape named: %s", err.message);
            printf("  shape: %s\n", err.message);
            remove("build/test_xc_untied.safetensors");
            moexc_st_close(g);
            free(w); free(ew);
        }
        moexc_xc_free(t); free(x1); free(x2);
        remove(path);
    }
}

#define TIMED(fn) do { clock_t c0_ = clock(); TH_RUN(fn); \
        printf("     (%.1f s cpu)\n", (double)(clock() - c0_) / CLOCKS_PER_SEC); } while (0)

int main(void)
{
    TIMED(test_grad_l1_unequal_widths);
    TIMED(test_grad_l1_shared);
    TIMED(test_grad_batchtopk_shared_penalty_auxk);
    TIMED(test_auxk_reaches_encoder);
    TIMED(test_auxk_straight_through);
    TIMED(test_tying_invariant);
    TIMED(test_overflow_in_update);
    TIMED(test_batchtopk_exact_count);
    TIMED(test_selection_floor_independent);
    TIMED(test_thread_count_bit_identical);
    TIMED(test_sparse_matches_dense);
    TIMED(test_against_pytorch);
    TIMED(test_threshold_and_folding);
    TIMED(test_checkpoints);
    TIMED(test_planted_dictionary);
    return th_summary();
}
