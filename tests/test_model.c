/* tests/test_model.c - the layers and the two models.

   Two witnesses:
   1. finite differences: every layer's backward on its own (RMSNorm,
      attention + RoPE, SwiGLU, MoE in both gate modes with the Switch and
      z-loss terms, cross-entropy), then whole tiny dense and MoE models;
   2. PyTorch: tests/fixtures/model_* were written by tools/torch_ref.py
      (float64 references from float32 weights); logits, losses, routing and
      every parameter gradient must match to 1e-4 of each tensor's scale.
   Plus checkpoints, config validation, parameter counts and determinism.

   This file includes the implementation itself (the Makefile's model block
   builds it without build/moexc.o) so that it can call the internal layer
   functions (moexc__*_forward/_backward) directly. */
#include <stdlib.h>
/* An allocator that can be told to fail: the n-th allocation from now
   returns NULL (out-of-memory test). */
static long g_alloc_countdown = -1;
static int g_alloc_failed = 0;
static void *test_malloc(size_t n)
{
    if (g_alloc_countdown == 0) { g_alloc_failed = 1; return NULL; }
    if (g_alloc_countdown > 0) g_alloc_countdown--;
    return malloc(n);
}
static void *test_realloc(void *p, size_t n)
{
    if (g_alloc_countdown == 0) { g_alloc_failed = 1; return NULL; }
    if (g_alloc_countdown > 0) g_alloc_countdown--;
    return realloc(p, n);
}
#define MOEXC_MALLOC(n) test_malloc(n)
#define MOEXC_REALLOC(p, n) test_realloc((p), (n))
#define MOEXC_FREE(p) free(p)
#define MOEXC_IMPLEMENTATION
#include "../moexc.h"
#include "harness.h"

#include <stdlib.h>

#define FIXTURES "tests/fixtures/"

/* ---- helpers ------------------------------------------------------------- */
static void fill_normal(float *x, size_t n, float std, moexc_rng *rng)
{
    size_t i;
    for (i = 0; i < n; i++) x[i] = std * moexc_rng_normal(rng);
}
static float *falloc(size_t n) { return (float *)calloc(n ? n : 1, sizeof(float)); }
static double dot_d(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    size_t i;
    for (i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}
static float max_abs(const float *x, size_t n)
{
    float m = 0.0f;
    size_t i;
    for (i = 0; i < n; i++) if (fabsf(x[i]) > m) m = fabsf(x[i]);
    return m;
}

/* A scalar loss of the current state; sets *discontinuous when a
   perturbation changed the top-k routing (that sample is then skipped). */
typedef double (*loss_fn)(void *ctx, int *discontinuous);

/* Fourth-order central differences on up to `samples` entries of x (spread
   evenly): fd = (8 (L(x+h) − L(x−h)) − (L(x+2h) − L(x−2h))) / 12h, whose
   truncation error is O(h⁴), so h can be large enough that float32 rounding
   of the forward stays small. Compared with the analytic gradient; the error
   of one entry is
   |fd − an| / (max(|fd|, |an|) + 0.02 max|an over x| + 1e-7): relative, with
   a floor at 2% of the tensor's largest gradient for entries near zero.
   Returns the largest error; *skipped counts samples that flipped routing. */
static double fd_check(loss_fn f, void *ctx, float *x, const float *grad, size_t n, int samples, float eps,
                       int *skipped)
{
    double worst = 0.0, gmax = max_abs(grad, n);
    size_t i, step = (size_t)samples >= n ? 1 : n / (size_t)samples;
    for (i = 0; i < n; i += step) {
        float keep = x[i];
        int flip = 0;
        double lp, lm, lp2, lm2, fd, an = grad[i], e;
        x[i] = keep + eps;      lp = f(ctx, &flip);
        x[i] = keep - eps;      lm = f(ctx, &flip);
        x[i] = keep + 2 * eps;  lp2 = f(ctx, &flip);
        x[i] = keep - 2 * eps;  lm2 = f(ctx, &flip);
        x[i] = keep;
        if (flip) { if (skipped) (*skipped)++; continue; }
        fd = (8.0 * (lp - lm) - (lp2 - lm2)) / (12.0 * (double)eps);
        e = fabs(fd - an) / (MOEXC__MAX(fabs(fd), fabs(an)) + 0.02 * gmax + 1e-7);
        if (e > worst) worst = e;
    }
    return worst;
}

static double g_max_fd_err = 0.0;   /* largest finite-difference error seen, for the summary */
static double g_max_parity_err = 0.0;
#define FD_TOL 2e-2   /* float32 forwards: correct gradients stay below ~1e-2 on every backend */
#define PARITY_TOL 1e-4

static void check_fd(double err, const char *what)
{
    if (err > g_max_fd_err) g_max_fd_err = err;
    if (getenv("MOEXC_TEST_VERBOSE")) printf("     fd %-50s %.2e\n", what, err);
    TH_CHECK(err < FD_TOL, "%s: finite-difference relative error %.3g >= %g", what, err, FD_TOL);
}

/* ---- RMSNorm ------------------------------------------------------------- */
typedef struct { int N, d; float *x, *g, *y, *r, *rms; } rms_ctx;
static double rms_loss(void *p, int *disc)
{
    rms_ctx *c = (rms_ctx *)p;
    (void)disc;
    moexc__rmsnorm_forward(c->y, c->rms, c->x, c->g, c->N, c->d);
    return dot_d(c->y, c->r, (size_t)c->N * c->d);
}
static void test_rmsnorm_grad(void)
{
    rms_ctx c;
    moexc_rng rng;
    float *dx, *dg;
    int i;
    size_t n;
    c.N = 6; c.d = 16; n = (size_t)c.N * c.d;
    c.x = falloc(n); c.y = falloc(n); c.r = falloc(n); c.g = falloc(c.d); c.rms = falloc(c.N);
    dx = falloc(n); dg = falloc(c.d);
    moexc_rng_seed(&rng, 1);
    fill_normal(c.x, n, 1.0f, &rng);
    fill_normal(c.r, n, 1.0f, &rng);
    for (i = 0; i < c.d; i++) c.g[i] = 1.0f + 0.3f * moexc_rng_normal(&rng);
    rms_loss(&c, NULL);
    moexc__rmsnorm_backward(dx, dg, c.r, c.x, c.g, c.rms, c.N, c.d);
    check_fd(fd_check(rms_loss, &c, c.x, dx, n, 200, 1e-2f, NULL), "rmsnorm dx");
    check_fd(fd_check(rms_loss, &c, c.g, dg, (size_t)c.d, 200, 1e-2f, NULL), "rmsnorm dg");
    /* the forward is the SPEC formula */
    {
        double ms = 0.0;
        for (i = 0; i < c.d; i++) ms += (double)c.x[i] * c.x[i];
        ms /= c.d;
        TH_CHECK_NEAR(c.y[3], c.g[3] * c.x[3] / sqrt(ms + 1e-6), 1e-6, 1e-5, "rmsnorm value");
    }
    free(c.x); free(c.y); free(c.r); free(c.g); free(c.rms); free(dx); free(dg);
}

/* ---- attention + RoPE ------------------------------------------------------ */
typedef struct {
    int B, T, H, dh;
    float *q, *k, *v, *qr, *kr, *att, *y, *r, *cos_t, *sin_t;
} attn_ctx;
static double attn_loss(void *p, int *disc)
{
    attn_ctx *c = (attn_ctx *)p;
    size_t n = (size_t)c->B * c->T * c->H * c->dh;
    (void)disc;
    memcpy(c->qr, c->q, n * sizeof(float));
    memcpy(c->kr, c->k, n * sizeof(float));
    moexc__rope_apply(c->qr, c->cos_t, c->sin_t, c->B, c->T, c->H, c->dh, 0);
    moexc__rope_apply(c->kr, c->cos_t, c->sin_t, c->B, c->T, c->H, c->dh, 0);
    moexc__attention_forward(c->y, c->att, c->qr, c->kr, c->v, c->B, c->T, c->H, c->dh);
    return dot_d(c->y, c->r, n);
}
static void test_attention_grad(void)
{
    attn_ctx c;
    moexc_rng rng;
    float *dq, *dk, *dv, *datt;
    size_t n, na;
    int t, j;
    c.B = 2; c.T = 7; c.H = 2; c.dh = 8;
    n = (size_t)c.B * c.T * c.H * c.dh;
    na = (size_t)c.B * c.H * c.T * c.T;
    c.q = falloc(n); c.k = falloc(n); c.v = falloc(n); c.qr = falloc(n); c.kr = falloc(n);
    c.y = falloc(n); c.r = falloc(n); c.att = falloc(na);
    c.cos_t = falloc((size_t)c.T * c.dh / 2); c.sin_t = falloc((size_t)c.T * c.dh / 2);
    dq = falloc(n); dk = falloc(n); dv = falloc(n); datt = falloc(na);
    moexc__rope_tables(c.cos_t, c.sin_t, c.T, c.dh);
    moexc_rng_seed(&rng, 2);
    fill_normal(c.q, n, 1.0f, &rng);
    fill_normal(c.k, n, 1.0f, &rng);
    fill_normal(c.v, n, 1.0f, &rng);
    fill_normal(c.r, n, 1.0f, &rng);
    attn_loss(&c, NULL);
    /* causal: row t of every head sums to 1 over keys 0..t, and is zero
       beyond, up to the end of its row tile (all the products read; further
       on the stored P is not defined) */
    {
        int ok = 1;
        for (t = 0; t < c.T; t++) {
            const int tile_end = MOEXC__MIN(c.T, (t / MOEXC__GEMM_MR + 1) * MOEXC__GEMM_MR);
            double s = 0.0;
            for (j = 0; j < tile_end; j++) {
                float a = c.att[(size_t)3 * c.T * c.T + (size_t)t * c.T + j];
                if (j > t && a != 0.0f) ok = 0;
                if (j <= t) s += a;
            }
            if (fabs(s - 1.0) > 1e-5) ok = 0;
        }
        TH_CHECK(ok, "attention rows are causal softmax distributions");
    }
    /* RoPE at position 3, head 1, pair i = 1: (x1, x2) rotated by 3 * 10000^(-2/dh) */
    {
        size_t base = (size_t)3 * c.H * c.dh + (size_t)1 * c.dh;
        double ang = 3.0 * pow(10000.0, -2.0 * 1 / c.dh);
        float x1 = c.q[base + 1], x2 = c.q[base + 1 + c.dh / 2];
        TH_CHECK_NEAR(c.qr[base + 1], x1 * cos(ang) - x2 * sin(ang), 1e-6, 1e-5, "rope x1");
        TH_CHECK_NEAR(c.qr[base + 1 + c.dh / 2], x1 * sin(ang) + x2 * cos(ang), 1e-6, 1e-5, "rope x2");
    }
    moexc__attention_backward(dq, dk, dv, datt, c.r, c.att, c.qr, c.kr, c.v, c.B, c.T, c.H, c.dh);
    moexc__rope_apply(dq, c.cos_t, c.sin_t, c.B, c.T, c.H, c.dh, 1);
    moexc__rope_apply(dk, c.cos_t, c.sin_t, c.B, c.T, c.H, c.dh, 1);
    check_fd(fd_check(attn_loss, &c, c.q, dq, n, 120, 1e-2f, NULL), "attention dq (through RoPE)");
    check_fd(fd_check(attn_loss, &c, c.k, dk, n, 120, 1e-2f, NULL), "attention dk (through RoPE)");
    check_fd(fd_check(attn_loss, &c, c.v, dv, n, 120, 1e-2f, NULL), "attention dv");
    free(c.q); free(c.k); free(c.v); free(c.qr); free(c.kr); free(c.y); free(c.r); free(c.att);
    free(c.cos_t); free(c.sin_t); free(dq); free(dk); free(dv); free(datt);
}

/* RoPE on every element, for head widths that take each of its loops: dh 8
   (scalar), 16 (8-lane vectors where the backend has them), 32 (full vectors
   on AVX2/NEON/SSE), 48 (full vectors then an 8-lane block on AVX-512); the
   forward rotation against the formula in double, the inverse restoring x,
   and the result the same bits as a row rotated alone (B = 1, T = 1). */
static void test_rope_widths(void)
{
    static const int widths[4] = { 8, 16, 32, 48 };
    int w, bad_fwd = 0, bad_inv = 0, bad_row = 0;
    for (w = 0; w < 4; w++) {
        int B = 2, T = 9, H = 3, dh = widths[w], half = dh / 2, b, t, h, i;
        size_t n = (size_t)B * T * H * dh;
        float *x = falloc(n), *y = falloc(n), *cs = falloc((size_t)T * half), *sn = falloc((size_t)T * half);
        moexc_rng rng;
        moexc_rng_seed(&rng, 40 + (uint64_t)w);
        for (i = 0; i < (int)n; i++) x[i] = moexc_rng_normal(&rng);
        memcpy(y, x, n * sizeof(float));
        moexc__rope_tables(cs, sn, T, dh);
        moexc__rope_apply(y, cs, sn, B, T, H, dh, 0);
        for (b = 0; b < B; b++)
            for (t = 0; t < T; t++)
                for (h = 0; h < H; h++)
                    for (i = 0; i < half; i++) {
                        size_t base = (((size_t)b * T + t) * H + h) * dh;
                        double ang = t * pow(10000.0, -2.0 * i / dh), x1 = x[base + i], x2 = x[base + i + half];
                        if (fabs(y[base + i] - (x1 * cos(ang) - x2 * sin(ang))) > 1e-5 ||
                            fabs(y[base + i + half] - (x1 * sin(ang) + x2 * cos(ang))) > 1e-5) bad_fwd++;
                    }
        {   /* position 5 of batch 1, rotated alone, from its own table row */
            size_t row = ((size_t)1 * T + 5) * H * dh;
            float *one = falloc((size_t)H * dh);
            memcpy(one, x + row, (size_t)H * dh * sizeof(float));
            moexc__rope_apply(one, cs + (size_t)5 * half, sn + (size_t)5 * half, 1, 1, H, dh, 0);
            if (memcmp(one, y + row, (size_t)H * dh * sizeof(float)) != 0) bad_row++;
            free(one);
        }
        moexc__rope_apply(y, cs, sn, B, T, H, dh, 1);
        for (i = 0; i < (int)n; i++) if (fabs(y[i] - x[i]) > 1e-5) bad_inv++;
        free(x); free(y); free(cs); free(sn);
    }
    TH_CHECK(bad_fwd == 0, "RoPE: %d rotated pairs off the formula", bad_fwd);
    TH_CHECK(bad_inv == 0, "RoPE: %d elements not restored by the inverse", bad_inv);
    TH_CHECK(bad_row == 0, "RoPE: %d rows differ from the same row rotated alone", bad_row);
}

/* ---- SwiGLU ---------------------------------------------------------------- */
typedef struct { int M, d, h; float *u, *wg, *wu, *wd, *gate, *up, *act, *out, *r; } swiglu_ctx;
static double swiglu_loss(void *p, int *disc)
{
    swiglu_ctx *c = (swiglu_ctx *)p;
    (void)disc;
    moexc__swiglu_forward(c->out, c->gate, c->up, c->act, c->u, c->wg, c->wu, c->wd, c->M, c->d, c->h, NULL);
    return dot_d(c->out, c->r, (size_t)c->M * c->d);
}
static void test_swiglu_grad(void)
{
    swiglu_ctx c;
    moexc_rng rng;
    float *du, *dwg, *dwu, *dwd, *s1, *s2;
    size_t nu, nw, nh;
    c.M = 9; c.d = 8; c.h = 12;
    nu = (size_t)c.M * c.d; nw = (size_t)c.h * c.d; nh = (size_t)c.M * c.h;
    c.u = falloc(nu); c.out = falloc(nu); c.r = falloc(nu);
    c.wg = falloc(nw); c.wu = falloc(nw); c.wd = falloc(nw);
    c.gate = falloc(nh); c.up = falloc(nh); c.act = falloc(nh);
    du = falloc(nu); dwg = falloc(nw); dwu = falloc(nw); dwd = falloc(nw);
    s1 = falloc(nh); s2 = falloc(nh);
    moexc_rng_seed(&rng, 3);
    fill_normal(c.u, nu, 1.0f, &rng);
    fill_normal(c.r, nu, 1.0f, &rng);
    fill_normal(c.wg, nw, 0.4f, &rng);
    fill_normal(c.wu, nw, 0.4f, &rng);
    fill_normal(c.wd, nw, 0.4f, &rng);
    swiglu_loss(&c, NULL);
    moexc__swiglu_backward(du, 0, dwg, dwu, dwd, s1, s2, c.r, c.u, c.gate, c.up, c.act, c.wg, c.wu, c.wd,
                           c.M, c.d, c.h, NULL);
    check_fd(fd_check(swiglu_loss, &c, c.u, du, nu, 100, 1e-2f, NULL), "swiglu du");
    check_fd(fd_check(swiglu_loss, &c, c.wg, dwg, nw, 100, 1e-2f, NULL), "swiglu dW_gate");
    check_fd(fd_check(swiglu_loss, &c, c.wu, dwu, nw, 100, 1e-2f, NULL), "swiglu dW_up");
    check_fd(fd_check(swiglu_loss, &c, c.wd, dwd, nw, 100, 1e-2f, NULL), "swiglu dW_down");
    free(c.u); free(c.out); free(c.r); free(c.wg); free(c.wu); free(c.wd); free(c.gate); free(c.up); free(c.act);
    free(du); free(dwg); free(dwu); free(dwd); free(s1); free(s2);
}

/* ---- MoE --------------------------------------------------------------------- */
typedef struct {
    int N;
    moexc__moe_dims md;
    float *u, *wr, *wg, *wu, *wd, *out, *r, *fmem;
    int *imem, *base_choice;
    moexc__moe_acts a;
    moexc__moe_scratch sc;
} moe_ctx;

static void moe_setup(moe_ctx *c, int N, int d, int E, int k, int h, int renorm, float alpha, float zw, uint64_t seed)
{
    size_t nk = (size_t)N * k, fc = 0, ic = 0;
    moexc_rng rng;
    memset(c, 0, sizeof(*c));
    c->N = N;
    c->md.d = d; c->md.E = E; c->md.k = k; c->md.h = h;
    c->md.renorm = renorm; c->md.lb_alpha = alpha; c->md.z_weight = zw;
    c->fmem = falloc((size_t)N * d * 3 + (size_t)E * d + (size_t)E * h * d * 3 + (size_t)N * E * 4 + N +
                     nk * (2 + 2 * d + 6 * h + 2 * (size_t)d) + 2 * (size_t)E);
    c->imem = (int *)calloc(nk * 4 + 2 * (size_t)E + 1, sizeof(int));
#define F_(n) (c->fmem + (fc += (n)) - (n))
#define I_(n) (c->imem + (ic += (n)) - (n))
    c->u = F_((size_t)N * d); c->out = F_((size_t)N * d); c->r = F_((size_t)N * d);
    c->wr = F_((size_t)E * d); c->wg = F_((size_t)E * h * d); c->wu = F_((size_t)E * h * d); c->wd = F_((size_t)E * h * d);
    c->a.logits = F_((size_t)N * E); c->a.probs = F_((size_t)N * E); c->a.lse = F_((size_t)N);
    c->a.weight = F_(nk); c->a.xg = F_(nk * d); c->a.gate = F_(nk * h); c->a.up = F_(nk * h); c->a.act = F_(nk * h);
    c->a.eo = F_(nk * d); c->a.frac = F_((size_t)E); c->a.pmean = F_((size_t)E);
    c->sc.d_eo = F_(nk * d); c->sc.d_xg = F_(nk * d); c->sc.d_gate = F_(nk * h);
    c->sc.d_up = F_(nk * h); c->sc.dp = F_((size_t)N * E); c->sc.dz = F_((size_t)N * E); c->sc.dw = F_(nk);
    c->a.choice = I_(nk); c->a.expert_offset = I_((size_t)E + 1); c->a.expert_cursor = I_((size_t)E);
    c->a.assign_token = I_(nk); c->a.token_assign = I_(nk); c->base_choice = I_(nk);
#undef F_
#undef I_
    moexc_rng_seed(&rng, seed);
    fill_normal(c->u, (size_t)N * d, 1.0f, &rng);
    fill_normal(c->r, (size_t)N * d, 1.0f, &rng);
    fill_normal(c->wr, (size_t)E * d, 1.0f, &rng);
    fill_normal(c->wg, (size_t)E * h * d, 0.4f, &rng);
    fill_normal(c->wu, (size_t)E * h * d, 0.4f, &rng);
    fill_normal(c->wd, (size_t)E * h * d, 0.4f, &rng);
    /* top-k routing is discontinuous: redraw each token until its k-th and
       (k+1)-th router logits differ by > 0.05, far more than any finite
       difference step moves them */
    if (k < E) {
        int t, i, j;
        for (t = 0; t < N; t++) {
            for (;;) {
                double z[16], kth, next;
                for (i = 0; i < E; i++) z[i] = dot_d(c->wr + (size_t)i * d, c->u + (size_t)t * d, (size_t)d);
                for (i = 0; i < E; i++)      /* sort descending (E <= 16) */
                    for (j = i + 1; j < E; j++)
                        if (z[j] > z[i]) { double tmp = z[i]; z[i] = z[j]; z[j] = tmp; }
                kth = z[k - 1];
                next = z[k];
                if (kth - next > 0.05) break;
                fill_normal(c->u + (size_t)t * d, (size_t)d, 1.0f, &rng);
            }
        }
    }
}
static void moe_free(moe_ctx *c) { free(c->fmem); free(c->imem); }

/* loss = Σ r ⊙ out + L_lb + L_z; r = 0 isolates the auxiliary losses */
static double moe_loss(void *p, int *disc)
{
    moe_ctx *c = (moe_ctx *)p;
    moexc__moe_forward(c->out, &c->a, c->u, c->wr, c->wg, c->wu, c->wd, c->N, &c->md);
    if (disc && memcmp(c->a.choice, c->base_choice, (size_t)c->N * c->md.k * sizeof(int)) != 0) *disc = 1;
    return dot_d(c->out, c->r, (size_t)c->N * c->md.d) + c->a.lb + c->a.z;
}

static void moe_grad_case(int renorm, int k, int task_loss, const char *label)
{
    moe_ctx c;
    int N = 16, d = 8, E = 4, h = 6, skipped = 0, samples = 0;
    size_t nw = (size_t)E * h * d;
    float *du, *dwr, *dwg, *dwu, *dwd;
    char what[128];
    moe_setup(&c, N, d, E, k, h, renorm, 0.5f, 0.1f, 40 + (uint64_t)renorm * 2 + (uint64_t)k);
    if (!task_loss) memset(c.r, 0, (size_t)N * d * sizeof(float));
    du = falloc((size_t)N * d); dwr = falloc((size_t)E * d); dwg = falloc(nw); dwu = falloc(nw); dwd = falloc(nw);
    moe_loss(&c, NULL);
    memcpy(c.base_choice, c.a.choice, (size_t)N * k * sizeof(int));
    moexc__moe_backward(du, dwr, dwg, dwu, dwd, &c.sc, &c.a, c.r, c.u, c.wr, c.wg, c.wu, c.wd, N, &c.md);
#define CHECK_T(x, g, n, name) do {                                                            \
        snprintf(what, sizeof(what), "%s %s", label, name);                                    \
        check_fd(fd_check(moe_loss, &c, x, g, n, 100, 2e-3f, &skipped), what);                \
        samples += (int)MOEXC__MIN((size_t)100, (size_t)(n));                                  \
    } while (0)
    CHECK_T(c.wr, dwr, (size_t)E * d, "dW_router");
    CHECK_T(c.u, du, (size_t)N * d, "du");
    if (task_loss) {
        CHECK_T(c.wg, dwg, nw, "dW_gate");
        CHECK_T(c.wu, dwu, nw, "dW_up");
        CHECK_T(c.wd, dwd, nw, "dW_down");
    }
#undef CHECK_T
    /* eps 1e-3 rarely moves a token across a top-k boundary; if it does, that
       sample is skipped, and there must be few such samples */
    TH_CHECK(skipped * 10 <= samples, "%s: %d of %d samples flipped the top-k set", label, skipped, samples);
    TH_CHECK(max_abs(dwr, (size_t)E * d) > 1e-4f, "%s: the router gets a gradient", label);
    moe_free(&c);
    free(du); free(dwr); free(dwg); free(dwu); free(dwd);
}

static void test_moe_grad_raw(void) { moe_grad_case(0, 2, 1, "moe raw k=2"); }
static void test_moe_grad_renorm(void) { moe_grad_case(1, 2, 1, "moe renorm k=2"); }
static void test_moe_grad_raw_k1(void) { moe_grad_case(0, 1, 1, "moe raw k=1"); }
static void test_moe_grad_renorm_k3(void) { moe_grad_case(1, 3, 1, "moe renorm k=3"); }
/* only L_lb + L_z: the Switch gradient α E f_i / N through the softmax, and the z-loss */
static void test_moe_aux_loss_grad(void) { moe_grad_case(0, 2, 0, "moe lb+z only"); }

static void test_moe_forward_semantics(void)
{
    moe_ctx c;
    int N = 8, d = 6, E = 5, k = 2, h = 4, t, s, i;
    double lb = 0.0, f_sum = 0.0, zsum = 0.0;
    moe_setup(&c, N, d, E, k, h, 0, 0.01f, 1e-3f, 77);
    /* experts 1 and 3 have identical router rows: exact probability ties */
    memcpy(c.wr + 3 * d, c.wr + 1 * d, (size_t)d * sizeof(float));
    moe_loss(&c, NULL);
    for (t = 0; t < N; t++) {
        const float *p = c.a.probs + (size_t)t * E;
        const int *ch = c.a.choice + (size_t)t * k;
        int rank_ok = 1;
        /* chosen are the k largest, descending; on a tie the lower index comes first */
        for (s = 0; s < k; s++)
            for (i = 0; i < E; i++) {
                int chosen = 0, q;
                for (q = 0; q < k; q++) chosen |= ch[q] == i;
                if (!chosen && (p[i] > p[ch[s]] || (p[i] == p[ch[s]] && i < ch[s]))) rank_ok = 0;
            }
        if (p[1] == p[3] && (ch[0] == 3 || ch[1] == 3)) rank_ok = rank_ok && (ch[0] == 1 || ch[1] == 1);
        TH_CHECK(rank_ok, "token %d: top-k choice %d,%d violates the lowest-index tie rule", t, ch[0], ch[1]);
        TH_CHECK(p[1] == p[3], "token %d: tied router rows give equal probabilities", t);
        /* out_t = Σ_S p_i Expert_i(u_t) (raw gate) */
        for (s = 0; s < k; s++) TH_CHECK(c.a.weight[(size_t)t * k + s] == p[ch[s]], "raw gate weight = p");
    }
    /* L_lb = α E Σ f_i P_i with Σ f_i = 1, L_z = w mean lse² */
    for (i = 0; i < E; i++) { lb += (double)c.a.frac[i] * c.a.pmean[i]; f_sum += c.a.frac[i]; }
    for (t = 0; t < N; t++) zsum += (double)c.a.lse[t] * c.a.lse[t];
    TH_CHECK_NEAR(f_sum, 1.0, 1e-6, 0, "sum of f_i");
    TH_CHECK_NEAR(c.a.lb, 0.01 * E * lb, 1e-9, 1e-6, "L_lb");
    TH_CHECK_NEAR(c.a.z, 1e-3 * zsum / N, 1e-9, 1e-6, "L_z");
    /* at perfect balance (uniform router) L_lb = α for any k */
    memset(c.wr, 0, (size_t)E * d * sizeof(float));
    c.md.k = 1;
    moe_loss(&c, NULL);
    TH_CHECK(c.a.choice[0] == 0, "all-equal probabilities pick expert 0 first");
    moe_free(&c);
}

/* ---- cross-entropy -------------------------------------------------------- */
typedef struct { int N, V; float *logits, *lse, *scratch; uint16_t *targets; } ce_ctx;
static double ce_loss(void *p, int *disc)
{
    ce_ctx *c = (ce_ctx *)p;
    (void)disc;
    return moexc__crossentropy_forward(c->lse, c->scratch, c->logits, c->targets, c->N, c->V);
}
static void test_crossentropy_grad(void)
{
    ce_ctx c;
    moexc_rng rng;
    float *dl;
    uint16_t targets[5] = { 3, 0, 6, 2, 2 };
    double want = 0.0, loss;
    int t, j;
    c.N = 5; c.V = 7; c.targets = targets;
    c.logits = falloc(35); c.lse = falloc(5); c.scratch = falloc(35); dl = falloc(35);
    moexc_rng_seed(&rng, 5);
    fill_normal(c.logits, 35, 2.0f, &rng);
    c.logits[7] = 80.0f;   /* a large logit: max subtraction keeps it finite */
    loss = ce_loss(&c, NULL);
    for (t = 0; t < c.N; t++) {
        double s = 0.0, m = -1e30;
        for (j = 0; j < c.V; j++) m = MOEXC__MAX(m, c.logits[t * c.V + j]);
        for (j = 0; j < c.V; j++) s += exp(c.logits[t * c.V + j] - m);
        want += m + log(s) - c.logits[t * c.V + targets[t]];
    }
    TH_CHECK_NEAR(loss, want / c.N, 1e-6, 1e-6, "cross-entropy value");
    moexc__crossentropy_backward(dl, c.logits, c.lse, c.targets, c.N, c.V);
    check_fd(fd_check(ce_loss, &c, c.logits, dl, 35, 35, 1e-2f, NULL), "cross-entropy dlogits");
    free(c.logits); free(c.lse); free(c.scratch); free(dl);
}

/* ---- whole models ----------------------------------------------------------- */
typedef struct { moexc_model *m; const uint16_t *in, *tg; int B, T; int *base_choice; size_t n_choice; } model_ctx;

static void model_choices(moexc_model *m, int *out)
{
    const moexc_model_config *c = moexc_model_get_config(m);
    int l;
    size_t per = (size_t)m->B * m->T * c->top_k;
    for (l = 0; l < c->n_layers; l++) memcpy(out + l * per, moexc_model_router_choices(m, l), per * sizeof(int));
}
static double model_loss(void *p, int *disc)
{
    model_ctx *c = (model_ctx *)p;
    moexc_loss_stats st;
    moexc_model_forward(c->m, c->in, c->tg, c->B, c->T, &st, NULL);
    if (disc && c->base_choice) {
        int *now = (int *)malloc(c->n_choice * sizeof(int));
        model_choices(c->m, now);
        if (memcmp(now, c->base_choice, c->n_choice * sizeof(int)) != 0) *disc = 1;
        free(now);
    }
    return st.loss;
}

static void model_grad_case(moexc_model_config cfg, const char *label)
{
    moexc_model *m = NULL;
    moexc_error err;
    model_ctx c;
    uint16_t in[2 * 6], tg[2 * 6];
    moexc_rng rng;
    int i, skipped = 0, samples = 0;
    float *grads;
    moexc_status st = moexc_model_create(&m, &cfg, &err);
    TH_CHECK(st == MOEXC_OK, "%s: create: %s", label, err.message);
    if (st) return;
    moexc_rng_seed(&rng, 9);
    for (i = 0; i < 12; i++) { in[i] = (uint16_t)moexc_rng_below(&rng, 32); tg[i] = (uint16_t)moexc_rng_below(&rng, 32); }
    /* gains away from 1 so their gradients are generic */
    for (i = 0; i < moexc_model_num_tensors(m); i++) {
        const moexc_param_info *pi = moexc_model_tensor(m, i);
        size_t j;
        if (pi->ndim == 1)
            for (j = 0; j < pi->size; j++) moexc_model_params(m)[pi->offset + j] = 1.0f + 0.2f * moexc_rng_normal(&rng);
    }
    c.m = m; c.in = in; c.tg = tg; c.B = 2; c.T = 6; c.base_choice = NULL; c.n_choice = 0;
    moexc_model_zero_grad(m);
    model_loss(&c, NULL);
    TH_CHECK(moexc_model_backward(m, &err) == MOEXC_OK, "%s: backward: %s", label, err.message);
    grads = (float *)malloc(moexc_model_num_params(m) * sizeof(float));
    memcpy(grads, moexc_model_grads(m), moexc_model_num_params(m) * sizeof(float));
    if (cfg.ffn == MOEXC_FFN_MOE) {
        c.n_choice = (size_t)cfg.n_layers * 12 * cfg.top_k;
        c.base_choice = (int *)malloc(c.n_choice * sizeof(int));
        model_choices(m, c.base_choice);
    }
    for (i = 0; i < moexc_model_num_tensors(m); i++) {
        const moexc_param_info *pi = moexc_model_tensor(m, i);
        char what[160];
        snprintf(what, sizeof(what), "%s %s", label, pi->name);
        check_fd(fd_check(model_loss, &c, moexc_model_params(m) + pi->offset, grads + pi->offset, pi->size, 12,
                          1e-2f, &skipped), what);
        samples += (int)MOEXC__MIN(pi->size, (size_t)12);
        TH_CHECK(max_abs(grads + pi->offset, pi->size) > 0.0f, "%s: zero gradient", what);
    }
    TH_CHECK(skipped * 10 <= samples, "%s: %d of %d samples flipped routing", label, skipped, samples);
    free(grads);
    free(c.base_choice);
    moexc_model_free(m);
}

static moexc_model_config tiny_config(int ffn)
{
    moexc_model_config c;
    memset(&c, 0, sizeof(c));
    c.vocab_size = 32; c.d_model = 16; c.n_heads = 2; c.n_layers = 2; c.context = 8;
    c.ffn = ffn; c.d_ff = 32; c.n_experts = 4; c.top_k = 2; c.d_expert = 16;
    c.init_std = 0.2f; c.seed = 11;
    return c;
}
static void test_model_grad_dense(void)
{
    moexc_model_config c = tiny_config(MOEXC_FFN_DENSE);
    model_grad_case(c, "dense");
    c.tied_head = 1;
    model_grad_case(c, "dense tied");
}
static void test_model_grad_moe(void)
{
    moexc_model_config c = tiny_config(MOEXC_FFN_MOE);
    c.lb_alpha = 0.1f; c.z_loss = 0.01f;
    model_grad_case(c, "moe raw");
    c.gate = MOEXC_GATE_RENORM;
    c.tied_head = 1;
    model_grad_case(c, "moe renorm tied");
}

/* ---- PyTorch parity ------------------------------------------------------ */
static int read_ref(const moexc_st_file *f, const char *name, float *dst, size_t n)
{
    int ndim, i;
    int64_t shape[8];
    size_t count = 1;
    if (moexc_st_shape(f, name, &ndim, shape, NULL) != MOEXC_OK) return 0;
    for (i = 0; i < ndim; i++) count *= (size_t)shape[i];
    if (count != n) return 0;
    return moexc_st_read_f32(f, name, dst, ndim, shape, NULL) == MOEXC_OK;
}
static double meta_double(const moexc_st_file *f, const char *key)
{
    const char *s = moexc_st_meta(f, key);
    return s ? strtod(s, NULL) : NAN;
}
/* max |got − want| / max |want| over a tensor */
static double tensor_err(const float *got, const float *want, size_t n)
{
    double worst = 0.0, scale = max_abs(want, n);
    size_t i;
    for (i = 0; i < n; i++) worst = MOEXC__MAX(worst, fabs((double)got[i] - want[i]));
    return worst / (scale > 0 ? scale : 1.0);
}

static void parity_case(moexc_model *m, const char *ref_path, const char *label)
{
    moexc_st_file *f = NULL;
    moexc_error err;
    const moexc_model_config *cfg = moexc_model_get_config(m);
    int B = 2, T = 16, N = 32, V = cfg->vocab_size, i, l;
    float buf[32];
    uint16_t in[32], tg[32];
    moexc_loss_stats st;
    float *want;
    double worst = 0.0;
    if (moexc_st_open(&f, ref_path, &err) != MOEXC_OK) {
        TH_CHECK(0, "%s: %s (run /usr/bin/python3 tools/torch_ref.py)", label, err.message);
        return;
    }
    TH_CHECK(read_ref(f, "inputs", buf, 32), "%s: inputs", label);
    for (i = 0; i < N; i++) in[i] = (uint16_t)buf[i];
    TH_CHECK(read_ref(f, "targets", buf, 32), "%s: targets", label);
    for (i = 0; i < N; i++) tg[i] = (uint16_t)buf[i];
    TH_CHECK(moexc_model_forward(m, in, tg, B, T, &st, &err) == MOEXC_OK, "%s: forward: %s", label, err.message);
    TH_CHECK_NEAR(st.ce, meta_double(f, "ce"), 1e-6, 1e-5, "ce");
    TH_CHECK_NEAR(st.lb, meta_double(f, "lb"), 1e-7, 1e-5, "lb");
    TH_CHECK_NEAR(st.z, meta_double(f, "z"), 1e-7, 1e-5, "z");
    TH_CHECK_NEAR(st.loss, meta_double(f, "loss"), 1e-6, 1e-5, "loss");
    want = (float *)malloc(moexc_model_num_params(m) * sizeof(float) + (size_t)N * V * sizeof(float));
    TH_CHECK(read_ref(f, "logits", want, (size_t)N * V), "%s: logits fixture", label);
    worst = tensor_err(moexc_model_logits(m), want, (size_t)N * V);
    TH_CHECK(worst < PARITY_TOL, "%s: logits error %.3g", label, worst);
    if (cfg->ffn == MOEXC_FFN_MOE)
        for (l = 0; l < cfg->n_layers; l++) {
            char name[64];
            double e;
            int same = 1;
            snprintf(name, sizeof(name), "router_probs.%d", l);
            TH_CHECK(read_ref(f, name, want, (size_t)N * cfg->n_experts), "%s: %s", label, name);
            e = tensor_err(moexc_model_router_probs(m, l), want, (size_t)N * cfg->n_experts);
            TH_CHECK(e < PARITY_TOL, "%s: %s error %.3g", label, name, e);
            worst = MOEXC__MAX(worst, e);
            snprintf(name, sizeof(name), "router_choice.%d", l);
            TH_CHECK(read_ref(f, name, want, (size_t)N * cfg->top_k), "%s: %s", label, name);
            for (i = 0; i < N * cfg->top_k; i++) same &= (int)want[i] == moexc_model_router_choices(m, l)[i];
            TH_CHECK(same, "%s: layer %d top-k choices differ from PyTorch", label, l);
        }
    moexc_model_zero_grad(m);
    TH_CHECK(moexc_model_backward(m, &err) == MOEXC_OK, "%s: backward: %s", label, err.message);
    for (i = 0; i < moexc_model_num_tensors(m); i++) {
        const moexc_param_info *pi = moexc_model_tensor(m, i);
        char name[96];
        double e;
        snprintf(name, sizeof(name), "grad.%s", pi->name);
        if (!read_ref(f, name, want, pi->size)) { TH_CHECK(0, "%s: fixture lacks %s", label, name); continue; }
        e = tensor_err(moexc_model_grads(m) + pi->offset, want, pi->size);
        TH_CHECK(e < PARITY_TOL, "%s: %s error %.3g (tolerance %g of the tensor's max)", label, name, e, PARITY_TOL);
        worst = MOEXC__MAX(worst, e);
    }
    if (worst > g_max_parity_err) g_max_parity_err = worst;
    printf("     %s: max error vs PyTorch float64 %.2e (relative to each tensor's max)\n", label, worst);
    free(want);
    moexc_st_close(f);
}

static void test_torch_parity_dense(void)
{
    moexc_model *m = NULL;
    moexc_error err;
    TH_CHECK(moexc_model_load(&m, FIXTURES "model_dense.safetensors", &err) == MOEXC_OK, "load: %s", err.message);
    if (!m) return;
    TH_CHECK(moexc_model_get_config(m)->tied_head == 1, "dense fixture has a tied head");
    parity_case(m, FIXTURES "model_dense_ref.safetensors", "dense");
    moexc_model_free(m);
}
static void test_torch_parity_moe(void)
{
    moexc_model *m = NULL, *r = NULL;
    moexc_model_config c;
    moexc_error err;
    TH_CHECK(moexc_model_load(&m, FIXTURES "model_moe.safetensors", &err) == MOEXC_OK, "load: %s", err.message);
    if (!m) return;
    parity_case(m, FIXTURES "model_moe_raw_ref.safetensors", "moe raw");
    /* the same weights with the renormalised gate */
    c = *moexc_model_get_config(m);
    c.gate = MOEXC_GATE_RENORM;
    TH_CHECK(moexc_model_create(&r, &c, &err) == MOEXC_OK, "create renorm: %s", err.message);
    if (r) {
        memcpy(moexc_model_params(r), moexc_model_params(m), moexc_model_num_params(m) * sizeof(float));
        parity_case(r, FIXTURES "model_moe_renorm_ref.safetensors", "moe renorm");
    }
    moexc_model_free(r);
    moexc_model_free(m);
}

/* ---- checkpoints -------------------------------------------------------------- */
#define CKPT "build/test_model_ckpt.safetensors"
static void test_checkpoint_roundtrip(void)
{
    moexc_model_config c = tiny_config(MOEXC_FFN_MOE);
    moexc_model *a = NULL, *b = NULL;
    moexc_error err;
    uint16_t in[16];
    int i;
    c.z_loss = 1e-3f; c.lb_alpha = -1.0f; c.gate = MOEXC_GATE_RENORM; c.seed = UINT64_C(0xFEDCBA9876543210);
    TH_CHECK(moexc_model_create(&a, &c, &err) == MOEXC_OK, "create: %s", err.message);
    if (!a) return;
    for (i = 0; i < 16; i++) in[i] = (uint16_t)(i * 7 % 32);
    TH_CHECK(moexc_model_save(a, CKPT, &err) == MOEXC_OK, "save: %s", err.message);
    TH_CHECK(moexc_model_load(&b, CKPT, &err) == MOEXC_OK, "load: %s", err.message);
    if (b) {
        const moexc_model_config *ca = moexc_model_get_config(a), *cb = moexc_model_get_config(b);
        TH_CHECK(memcmp(ca, cb, sizeof(*ca)) == 0, "config survives the round trip");
        TH_CHECK(cb->seed == UINT64_C(0xFEDCBA9876543210) && cb->lb_alpha == -1.0f, "seed and disabled lb survive");
        TH_CHECK(moexc_model_num_params(a) == moexc_model_num_params(b) &&
                 memcmp(moexc_model_params(a), moexc_model_params(b), moexc_model_num_params(a) * sizeof(float)) == 0,
                 "parameters are bit-identical");
        TH_CHECK(moexc_model_forward(a, in, NULL, 2, 8, NULL, NULL) == MOEXC_OK &&
                 moexc_model_forward(b, in, NULL, 2, 8, NULL, NULL) == MOEXC_OK, "forwards run");
        TH_CHECK(memcmp(moexc_model_logits(a), moexc_model_logits(b), (size_t)16 * 32 * sizeof(float)) == 0,
                 "logits are bit-identical after loading");
    }
    moexc_model_free(a);
    moexc_model_free(b);
    remove(CKPT);
}

/* Writes the model's tensors with tensor `bad` given a wrong shape (or left
   out with drop = 1) and config metadata from cfg_meta. */
static moexc_status write_tampered(const moexc_model *m, const moexc_model_config *cfg_meta, const char *bad, int drop,
                                   moexc_error *err)
{
    moexc_st_entry ent[64];
    moexc_st_kv kv[2 + MOEXC__N_CONFIG_KEYS];
    char vals[MOEXC__N_CONFIG_KEYS][40];
    float *big = falloc(4096);
    int i, n = 0, j;
    moexc_status st;
    kv[0].key = "moexc.format"; kv[0].value = "model";
    kv[1].key = "moexc.version"; kv[1].value = "1";
    moexc__config_to_meta(cfg_meta, vals, kv + 2);
    for (i = 0; i < m->n_tensors; i++) {
        const moexc_param_info *pi = &m->info[i];
        if (drop && strcmp(pi->name, bad) == 0) continue;
        ent[n].name = pi->name;
        ent[n].data = m->params + pi->offset;
        ent[n].ndim = pi->ndim;
        for (j = 0; j < pi->ndim; j++) ent[n].shape[j] = pi->shape[j];
        if (!drop && strcmp(pi->name, bad) == 0) { ent[n].shape[ent[n].ndim - 1] /= 2; }
        n++;
    }
    st = moexc_st_save(CKPT, ent, n, kv, 2 + MOEXC__N_CONFIG_KEYS, err);
    free(big);
    return st;
}

static void test_checkpoint_rejects_mismatch(void)
{
    moexc_model_config c = tiny_config(MOEXC_FFN_DENSE), c2;
    moexc_model *a = NULL, *b = NULL;
    moexc_error err;
    moexc_status st;
    TH_CHECK(moexc_model_create(&a, &c, &err) == MOEXC_OK, "create: %s", err.message);
    if (!a) return;
    /* a tensor whose shape disagrees with the config */
    TH_CHECK(write_tampered(a, &a->cfg, "layers.1.attn.wk.weight", 0, &err) == MOEXC_OK, "write: %s", err.message);
    st = moexc_model_load(&b, CKPT, &err);
    TH_CHECK(st == MOEXC_ERR_SHAPE && b == NULL, "wrong shape refused (status %d)", (int)st);
    TH_CHECK(strstr(err.message, "layers.1.attn.wk.weight") != NULL, "message names the tensor: %s", err.message);
    /* metadata claiming another width: every tensor disagrees, the first is named */
    c2 = a->cfg;
    c2.d_ff = 48;
    TH_CHECK(write_tampered(a, &c2, "", 0, &err) == MOEXC_OK, "write: %s", err.message);
    st = moexc_model_load(&b, CKPT, &err);
    TH_CHECK(st == MOEXC_ERR_SHAPE && strstr(err.message, "layers.0.ffn.w_gate.weight") != NULL,
             "config/tensor disagreement refused: %s", err.message);
    /* a missing tensor */
    TH_CHECK(write_tampered(a, &a->cfg, "norm.weight", 1, &err) == MOEXC_OK, "write: %s", err.message);
    st = moexc_model_load(&b, CKPT, &err);
    TH_CHECK(st == MOEXC_ERR_MISSING && strstr(err.message, "norm.weight") != NULL, "missing tensor: %s", err.message);
    /* an invalid config in the metadata */
    c2 = a->cfg;
    c2.n_heads = 3;
    TH_CHECK(write_tampered(a, &c2, "", 0, &err) == MOEXC_OK, "write: %s", err.message);
    st = moexc_model_load(&b, CKPT, &err);
    TH_CHECK(st == MOEXC_ERR_ARG && strstr(err.message, "n_heads") != NULL, "invalid config: %s", err.message);
    /* not a model file */
    {
        moexc_st_entry e;
        float x[2] = { 1, 2 };
        e.name = "x"; e.data = x; e.ndim = 1; e.shape[0] = 2;
        TH_CHECK(moexc_st_save(CKPT, &e, 1, NULL, 0, &err) == MOEXC_OK, "write: %s", err.message);
        st = moexc_model_load(&b, CKPT, &err);
        TH_CHECK(st == MOEXC_ERR_MISSING && strstr(err.message, "moexc.format") != NULL, "plain file: %s", err.message);
    }
    TH_CHECK(b == NULL, "no model returned on failure");
    moexc_model_free(a);
    remove(CKPT);
}

/* ---- configuration, counts, memory ---------------------------------------- */
static void test_config_validation(void)
{
    moexc_model_config c, r;
    moexc_error err;
    moexc_model *m = NULL;
    TH_CHECK(moexc_model_config_resolve(&r, NULL, &err) == MOEXC_OK, "defaults resolve");
    TH_CHECK(r.vocab_size == 256 && r.d_model == 128 && r.n_heads == 4 && r.n_layers == 5 && r.context == 256 &&
             r.d_ff == 512 && r.n_experts == 8 && r.top_k == 2 && r.d_expert == 256 &&
             r.lb_alpha == (float)0.01 && r.init_std == (float)0.02 && r.z_loss == 0.0f && r.ffn == MOEXC_FFN_DENSE &&
             r.gate == MOEXC_GATE_RAW && r.tied_head == 0,
             "SPEC defaults: V %d d %d H %d L %d ctx %d h_ff %d E %d k %d h_e %d alpha %g std %g z %g",
             r.vocab_size, r.d_model, r.n_heads, r.n_layers, r.context, r.d_ff, r.n_experts, r.top_k, r.d_expert,
             (double)r.lb_alpha, (double)r.init_std, (double)r.z_loss);
    memset(&c, 0, sizeof(c));
    c.d_model = 30;
    TH_CHECK(moexc_model_config_resolve(&r, &c, &err) == MOEXC_ERR_ARG && strstr(err.message, "divisible"), "%s", err.message);
    c.d_model = 36; c.n_heads = 4;   /* d_head 9 is odd */
    TH_CHECK(moexc_model_config_resolve(&r, &c, &err) == MOEXC_ERR_ARG && strstr(err.message, "even"), "%s", err.message);
    memset(&c, 0, sizeof(c));
    c.ffn = MOEXC_FFN_MOE; c.n_experts = 4; c.top_k = 5;
    TH_CHECK(moexc_model_config_resolve(&r, &c, &err) == MOEXC_ERR_ARG && strstr(err.message, "top_k"), "%s", err.message);
    c.top_k = 1; c.gate = MOEXC_GATE_RENORM;
    TH_CHECK(moexc_model_create(&m, &c, &err) == MOEXC_ERR_ARG && m == NULL && strstr(err.message, "top_k = 1"),
             "renormalised gate with k = 1 refused: %s", err.message);
    memset(&c, 0, sizeof(c));
    c.vocab_size = 70000;
    TH_CHECK(moexc_model_config_resolve(&r, &c, &err) == MOEXC_ERR_ARG, "vocab > 65536 refused");
}

static void test_param_counts_and_pair(void)
{
    moexc_model_config dense, moe;
    moexc_model *m = NULL;
    moexc_model_memory_info mem;
    moexc_error err;
    size_t dt, da, mt, ma, d = 128, L = 5;
    memset(&mem, 0, sizeof(mem));
    TH_CHECK(moexc_model_config_pair(NULL, &dense, &moe, &err) == MOEXC_OK, "pair: %s", err.message);
    TH_CHECK(dense.ffn == MOEXC_FFN_DENSE && dense.d_ff == 512, "dense h_ff = 4d");
    TH_CHECK(moe.ffn == MOEXC_FFN_MOE && moe.n_experts == 8 && moe.top_k == 2 && moe.d_expert == 256, "MoE E 8, k 2, h_e 2d");
    moexc_model_count_params(&dense, &dt, &da, NULL);
    moexc_model_count_params(&moe, &mt, &ma, NULL);
    printf("     default pair: dense %zu params (all active); MoE %zu total, %zu active\n", dt, mt, ma);
    TH_CHECK(dt == da, "dense: all parameters active");
    /* equal active parameters up to the router: k h_e = h_ff */
    TH_CHECK(ma - da == L * 8 * d, "MoE active − dense = the routers' L E d");
    TH_CHECK(mt - ma == L * 6 * 3 * 256 * d, "MoE inactive = L (E − k) 3 h_e d");
    /* the counts are what the model allocates (a smaller pair, to keep the test fast) */
    {
        moexc_model_config base;
        memset(&base, 0, sizeof(base));
        base.d_model = 64; base.n_layers = 3; base.vocab_size = 256;
        moexc_model_config_pair(&base, NULL, &moe, NULL);
        moexc_model_count_params(&moe, &mt, &ma, NULL);
    }
    TH_CHECK(moexc_model_create(&m, &moe, &err) == MOEXC_OK, "create: %s", err.message);
    if (m) {
        TH_CHECK(moexc_model_num_params(m) == mt, "count matches the allocation");
        TH_CHECK(moexc_model_num_tensors(m) == 1 + 3 * 10 + 2, "tensor table size");
        TH_CHECK(strcmp(moexc_model_tensor(m, 7)->name, "layers.0.moe.router.weight") == 0, "names: %s",
                 moexc_model_tensor(m, 7)->name);
        TH_CHECK(moexc_model_find_tensor(m, "layers.2.moe.experts.w_down") &&
                 moexc_model_find_tensor(m, "layers.2.moe.experts.w_down")->shape[1] == 64 &&
                 moexc_model_find_tensor(m, "layers.2.moe.experts.w_down")->shape[2] == 128, "expert w_down is (E, d, h_e)");
        {
            /* SPEC init: std 0.02, residual outputs 0.02 / sqrt(2L), gains 1 (4096 samples: ±1.1%) */
            const moexc_param_info *wq = moexc_model_find_tensor(m, "layers.2.attn.wq.weight");
            const moexc_param_info *wo = moexc_model_find_tensor(m, "layers.2.attn.wo.weight");
            const moexc_param_info *g = moexc_model_find_tensor(m, "layers.2.ffn_norm.weight");
            double sq = dot_d(moexc_model_params(m) + wq->offset, moexc_model_params(m) + wq->offset, wq->size);
            double so = dot_d(moexc_model_params(m) + wo->offset, moexc_model_params(m) + wo->offset, wo->size);
            TH_CHECK_NEAR(sqrt(sq / wq->size), 0.02, 0, 0.05, "wq std");
            TH_CHECK_NEAR(sqrt(so / wo->size), 0.02 / sqrt(6.0), 0, 0.05, "wo std");
            TH_CHECK(moexc_model_params(m)[g->offset + 5] == 1.0f && g->decay == 0 && wq->decay == 1, "gains 1, no decay");
        }
        moexc_model_free(m);
    }
    TH_CHECK(moexc_model_memory(&moe, 4, 64, &mem, &err) == MOEXC_OK, "memory: %s", err.message);
    TH_CHECK(mem.param_bytes == mt * 4 && mem.total_bytes > mem.param_bytes * 2, "memory report");
    printf("     MoE at B 4, T 64: params %.1f MiB, activations %.1f MiB\n", mem.param_bytes / 1048576.0,
           mem.activation_bytes / 1048576.0);
}

/* ---- forward behaviour ------------------------------------------------------ */
static void test_forward_behaviour(void)
{
    moexc_model_config c = tiny_config(MOEXC_FFN_MOE);
    moexc_model *m = NULL;
    moexc_error err;
    moexc_loss_stats s1, s2;
    uint16_t in[32], tg[32];
    float *logits1, *cap;
    int i;
    TH_CHECK(moexc_model_create(&m, &c, &err) == MOEXC_OK, "create: %s", err.message);
    if (!m) return;
    for (i = 0; i < 32; i++) { in[i] = (uint16_t)(i * 5 % 32); tg[i] = (uint16_t)((i * 5 + 1) % 32); }
    logits1 = falloc(16 * 32);
    cap = falloc(16 * 16);
    /* backward before forward is an error, not a crash */
    TH_CHECK(moexc_model_backward(m, &err) == MOEXC_ERR_ARG, "backward without forward refused");
    TH_CHECK(moexc_model_forward(m, in, tg, 2, 8, &s1, &err) == MOEXC_OK, "forward: %s", err.message);
    TH_CHECK(fabs(s1.ce - log(32.0)) < 0.5, "fresh model ce %.3f near log V", s1.ce);
    TH_CHECK(s1.lb > 0 && fabs(s1.lb - 2 * 0.01) < 0.01, "lb %.4f near alpha per layer at init", s1.lb);
    memcpy(logits1, moexc_model_logits(m), 16 * 32 * sizeof(float));
    /* a bigger batch reallocates; the first sequence's logits are unchanged (causal, per-sequence) */
    TH_CHECK(moexc_model_forward(m, in, tg, 4, 8, &s2, &err) == MOEXC_OK, "forward B 4: %s", err.message);
    TH_CHECK(memcmp(logits1, moexc_model_logits(m), 16 * 32 * sizeof(float)) == 0, "rows independent of batch size");
    /* causality: changing the last token does not change earlier logits */
    in[7] = (uint16_t)((in[7] + 1) % 32);
    TH_CHECK(moexc_model_forward(m, in, NULL, 1, 8, NULL, &err) == MOEXC_OK, "forward: %s", err.message);
    TH_CHECK(memcmp(logits1, moexc_model_logits(m), 7 * 32 * sizeof(float)) == 0, "causal: positions < 7 unchanged");
    TH_CHECK(memcmp(logits1 + 7 * 32, moexc_model_logits(m) + 7 * 32, 32 * sizeof(float)) != 0, "position 7 changed");
    in[7] = (uint16_t)((in[7] + 31) % 32);
    /* capture = the forward's own activations */
    TH_CHECK(moexc_model_forward(m, in, NULL, 2, 8, NULL, &err) == MOEXC_OK, "forward: %s", err.message);
    memcpy(cap, m->acts[1].ffn_out, 16 * 16 * sizeof(float));
    TH_CHECK(moexc_model_capture(m, in, 2, 8, 1, MOEXC_SITE_FFN_OUT, logits1, &err) == MOEXC_OK, "capture: %s", err.message);
    TH_CHECK(memcmp(cap, logits1, 16 * 16 * sizeof(float)) == 0, "capture FFN_OUT layer 1");
    TH_CHECK(moexc_model_capture(m, in, 2, 8, 0, MOEXC_SITE_RESID, logits1, &err) == MOEXC_OK, "capture: %s", err.message);
    TH_CHECK(memcmp(m->acts[1].x, logits1, 16 * 16 * sizeof(float)) == 0, "capture RESID layer 0 = input of block 1");
    TH_CHECK(moexc_model_logits(m) == NULL && moexc_model_router_probs(m, 1) == NULL, "partial forward exposes no logits");
    TH_CHECK(moexc_model_capture(m, in, 2, 8, 2, MOEXC_SITE_RESID, logits1, &err) == MOEXC_ERR_ARG, "layer range checked");
    /* bad input is an error */
    in[3] = 40;
    TH_CHECK(moexc_model_forward(m, in, NULL, 2, 8, NULL, &err) == MOEXC_ERR_ARG && strstr(err.message, "inputs[3]"),
             "token >= V refused: %s", err.message);
    TH_CHECK(moexc_model_forward(m, in, NULL, 1, 9, NULL, &err) == MOEXC_ERR_ARG, "T > context refused");
    free(logits1);
    free(cap);
    moexc_model_free(m);
}

/* Forcing k' = 1 experts equals a model configured with top_k = 1. */
static void test_active_experts_override(void)
{
    moexc_model_config c = tiny_config(MOEXC_FFN_MOE);
    moexc_model *a = NULL, *b = NULL;
    moexc_error err;
    uint16_t in[16];
    int i;
    for (i = 0; i < 16; i++) in[i] = (uint16_t)(i * 9 % 32);
    TH_CHECK(moexc_model_create(&a, &c, &err) == MOEXC_OK, "create: %s", err.message);
    c.top_k = 1;
    TH_CHECK(moexc_model_create(&b, &c, &err) == MOEXC_OK, "create: %s", err.message);
    if (!a || !b) { moexc_model_free(a); moexc_model_free(b); return; }
    memcpy(moexc_model_params(b), moexc_model_params(a), moexc_model_num_params(a) * sizeof(float));
    TH_CHECK(moexc_model_set_active_experts(a, 5, &err) == MOEXC_ERR_ARG, "k' > n_experts refused");
    TH_CHECK(moexc_model_set_active_experts(a, 1, &err) == MOEXC_OK, "set: %s", err.message);
    moexc_model_forward(a, in, NULL, 2, 8, NULL, NULL);
    moexc_model_forward(b, in, NULL, 2, 8, NULL, NULL);
    TH_CHECK(memcmp(moexc_model_logits(a), moexc_model_logits(b), 16 * 32 * sizeof(float)) == 0, "k' = 1 forced = top_k 1");
    TH_CHECK(memcmp(moexc_model_router_choices(a, 1), moexc_model_router_choices(b, 1), 16 * sizeof(int)) == 0,
             "choices (N x k')");
    TH_CHECK(moexc_model_set_active_experts(a, 0, &err) == MOEXC_OK, "reset");
    moexc_model_forward(a, in, NULL, 2, 8, NULL, NULL);
    TH_CHECK(memcmp(moexc_model_logits(a), moexc_model_logits(b), 16 * 32 * sizeof(float)) != 0, "k = 2 again differs");
    moexc_model_free(a);
    moexc_model_free(b);
}

/* Every allocation failure surfaces as MOEXC_ERR_NOMEM, never a crash or a
   leak (run under AddressSanitizer to check the leaks). */
static void test_out_of_memory(void)
{
    moexc_model_config c = tiny_config(MOEXC_FFN_MOE);
    uint16_t in[16];
    long n;
    int i, failures = 0, completed = 0;
    for (i = 0; i < 16; i++) in[i] = (uint16_t)(i * 5 % 32);
    {
        /* the checkpoint to load is written without injected failures
           (moexc_st_save is the data section's and is tested there) */
        moexc_model *m = NULL;
        TH_CHECK(moexc_model_create(&m, &c, NULL) == MOEXC_OK && moexc_model_save(m, CKPT, NULL) == MOEXC_OK, "save");
        moexc_model_free(m);
    }
    for (n = 0; n < 400 && !completed; n++) {
        moexc_model *m = NULL, *b = NULL;
        moexc_error err;
        moexc_status st;
        err.code = MOEXC_OK;
        g_alloc_countdown = n;
        g_alloc_failed = 0;
        st = moexc_model_create(&m, &c, &err);
        if (st == MOEXC_OK) st = moexc_model_forward(m, in, in, 2, 8, NULL, &err);
        if (st == MOEXC_OK) st = moexc_model_backward(m, &err);
        if (st == MOEXC_OK) st = moexc_model_load(&b, CKPT, &err);
        completed = !g_alloc_failed;    /* nothing failed: every step ran */
        g_alloc_countdown = -1;
        if (st != MOEXC_OK) {
            failures++;
            TH_CHECK(st == MOEXC_ERR_NOMEM || st == MOEXC_ERR_IO, "allocation %ld failing gives status %d (%s)", n,
                     (int)st, err.message);
        } else {
            TH_CHECK(completed, "allocation %ld failed yet everything reported success", n);
        }
        moexc_model_free(m);
        moexc_model_free(b);
    }
    TH_CHECK(completed && failures > 10, "walked every allocation (%d failures injected)", failures);
    remove(CKPT);
}

/* Gradients add up, and OpenMP thread counts do not change a bit. */
static void test_backward_accumulates_and_determinism(void)
{
    /* big enough that attention and GEMM take their parallel paths */
    moexc_model_config c = tiny_config(MOEXC_FFN_MOE);
    enum { B = 4, T = 64 };
    moexc_model *m = NULL;
    uint16_t in[B * T], tg[B * T];
    float *g1;
    size_t n, i;
    int ok = 1;
    c.d_model = 64; c.context = T; c.d_expert = 64;
    TH_CHECK(moexc_model_create(&m, &c, NULL) == MOEXC_OK, "create");
    if (!m) return;
    for (i = 0; i < B * T; i++) { in[i] = (uint16_t)(i * 3 % 32); tg[i] = (uint16_t)(i * 11 % 32); }
    n = moexc_model_num_params(m);
    g1 = falloc(n);
    moexc_model_zero_grad(m);
    moexc_model_forward(m, in, tg, B, T, NULL, NULL);
    moexc_model_backward(m, NULL);
    memcpy(g1, moexc_model_grads(m), n * sizeof(float));
    TH_CHECK(moexc_model_backward(m, NULL) == MOEXC_ERR_ARG, "second backward per forward refused");
    moexc_model_forward(m, in, tg, B, T, NULL, NULL);
    moexc_model_backward(m, NULL);
    for (i = 0; i < n; i++) ok &= fabsf(moexc_model_grads(m)[i] - 2 * g1[i]) <= 1e-6f * (1 + fabsf(g1[i]));
    TH_CHECK(ok, "two backwards accumulate to twice the gradient");
#ifdef _OPENMP
    {
        int threads = omp_get_max_threads();
        omp_set_num_threads(1);
        moexc_model_zero_grad(m);
        moexc_model_forward(m, in, tg, B, T, NULL, NULL);
        moexc_model_backward(m, NULL);
        omp_set_num_threads(threads);
        TH_CHECK(memcmp(g1, moexc_model_grads(m), n * sizeof(float)) == 0, "1 thread and %d threads agree bitwise", threads);
    }
#endif
    free(g1);
    moexc_model_free(m);
}

/* The divergence checks' scan: any NaN or +-Inf at the start, middle or end
   of arrays of many lengths (inside a vector, in the scalar tail, across
   thread chunks), and none in arrays of huge finite values. */
static void test_any_nonfinite(void)
{
    static const size_t lengths[] = {1, 15, 16, 17, 4095, 4096, 4097, 100003};
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    size_t li;
    for (li = 0; li < sizeof(lengths) / sizeof(lengths[0]); li++) {
        size_t n = lengths[li], i, at[3];
        int b, w;
        float *x = (float *)malloc(n * sizeof(float));
        if (!x) { TH_CHECK(0, "out of memory"); return; }
        for (i = 0; i < n; i++) x[i] = (i % 2 ? -FLT_MAX : FLT_MAX) / 6.0f * (float)(i % 7);   /* up to +-FLT_MAX */
        TH_CHECK(moexc__any_nonfinite(x, n) == 0, "n %lu: huge finite values read as non-finite", (unsigned long)n);
        at[0] = 0; at[1] = n / 2; at[2] = n - 1;
        for (b = 0; b < 3; b++)
            for (w = 0; w < 3; w++) {
                float keep = x[at[w]];
                x[at[w]] = bad[b];
                TH_CHECK(moexc__any_nonfinite(x, n) == 1, "n %lu: %g at %lu not found", (unsigned long)n, (double)bad[b],
                         (unsigned long)at[w]);
                x[at[w]] = keep;
            }
        free(x);
    }
}

int main(void)
{
    TH_RUN(test_rmsnorm_grad);
    TH_RUN(test_attention_grad);
    TH_RUN(test_rope_widths);
    TH_RUN(test_swiglu_grad);
    TH_RUN(test_moe_grad_raw);
    TH_RUN(test_moe_grad_renorm);
    TH_RUN(test_moe_grad_raw_k1);
    TH_RUN(test_moe_grad_renorm_k3);
    TH_RUN(test_moe_aux_loss_grad);
    TH_RUN(test_moe_forward_semantics);
    TH_RUN(test_crossentropy_grad);
    TH_RUN(test_model_grad_dense);
    TH_RUN(test_model_grad_moe);
    TH_RUN(test_torch_parity_dense);
    TH_RUN(test_torch_parity_moe);
    TH_RUN(test_checkpoint_roundtrip);
    TH_RUN(test_checkpoint_rejects_mismatch);
    TH_RUN(test_config_validation);
    TH_RUN(test_param_counts_and_pair);
    TH_RUN(test_forward_behaviour);
    TH_RUN(test_active_experts_override);
    TH_RUN(test_out_of_memory);
    TH_RUN(test_backward_accumulates_and_determinism);
    TH_RUN(test_any_nonfinite);
    printf("     max finite-difference error %.2e (tolerance %g); max PyTorch parity error %.2e (tolerance %g)\n",
           g_max_fd_err, FD_TOL, g_max_parity_err, PARITY_TOL);
    return th_summary();
}
