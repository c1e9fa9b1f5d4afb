/* tests/test_attention.c - the fast paths of the transformer layers against
   their plain forms, bit for bit where the arithmetic is the same:
   - causal attention on packed panels (moexc__attention_forward/_backward)
     against the blocked path that runs moexc_sgemm on strided q, k, v
     (odd lengths and head widths, a length past MOEXC_GEMM_KC where the
     packed path steps aside), and with q, k, v in rows of 3d (_ld);
   - the dense SwiGLU with W_gate and W_up as one matrix (_gu) against the
     one with separate matrices.
   The finite-difference and PyTorch checks of these layers are in
   tests/test_model.c. Like test_model, this file includes the implementation
   (the Makefile builds it without build/moexc.o) to call internal functions. */
#include <stdlib.h>
#define MOEXC_IMPLEMENTATION
#include "../moexc.h"
#include "harness.h"

static void fill_normal(float *x, size_t n, moexc_rng *r)
{
    size_t i;
    for (i = 0; i < n; i++) x[i] = moexc_rng_normal(r);
}

/* One shape: packed vs blocked, strided vs not. Returns 0 when it could not allocate. */
static int attention_case(int B, int T, int H, int dh)
{
    int d = H * dh, bh, j;
    size_t n = (size_t)B * T * d, na = (size_t)B * H * T * T, t;
    float scale = 1.0f / sqrtf((float)dh);
    float *q = (float *)malloc(n * 4), *k = (float *)malloc(n * 4), *v = (float *)malloc(n * 4);
    float *dy = (float *)malloc(n * 4), *qkv = (float *)malloc(3 * n * 4);
    float *y1 = (float *)calloc(n, 4), *y2 = (float *)calloc(n, 4), *y3 = (float *)calloc(n, 4);
    float *a1 = (float *)calloc(na, 4), *a2 = (float *)calloc(na, 4), *a3 = (float *)calloc(na, 4);
    float *s1 = (float *)calloc(na, 4), *s2 = (float *)calloc(na, 4), *s3 = (float *)calloc(na, 4);
    float *g1 = (float *)calloc(3 * n, 4), *g2 = (float *)calloc(3 * n, 4), *g3 = (float *)calloc(3 * n, 4);
    moexc_rng r;
    int ok = q && k && v && dy && qkv && y1 && y2 && y3 && a1 && a2 && a3 && s1 && s2 && s3 && g1 && g2 && g3;
    if (ok) {
        int same_strided = 1;
        moexc_rng_seed(&r, (uint64_t)(T * 131 + dh));
        fill_normal(q, n, &r); fill_normal(k, n, &r); fill_normal(v, n, &r); fill_normal(dy, n, &r);
        /* the layer as the model calls it (packed when T, dh <= MOEXC_GEMM_KC) */
        moexc__attention_forward(y1, a1, q, k, v, B, T, H, dh);
        moexc__attention_backward(g1, g1 + n, g1 + 2 * n, s1, dy, a1, q, k, v, B, T, H, dh);
        /* the blocked path, head by head */
        for (bh = 0; bh < B * H; bh++) {
            size_t off = (size_t)(bh / H) * T * d + (size_t)(bh % H) * dh, at = (size_t)bh * T * T;
            moexc__attention_forward_blocked(y2 + off, a2 + at, q + off, k + off, v + off, d, T, d, dh, scale);
            moexc__attention_backward_blocked(g2 + off, g2 + n + off, g2 + 2 * n + off, s2 + at, dy + off, a2 + at,
                                              q + off, k + off, v + off, d, T, d, dh, scale);
        }
        TH_CHECK(memcmp(y1, y2, n * 4) == 0, "B %d T %d H %d dh %d: y, packed vs blocked", B, T, H, dh);
        TH_CHECK(memcmp(a1, a2, na * 4) == 0, "B %d T %d H %d dh %d: P, packed vs blocked", B, T, H, dh);
        TH_CHECK(memcmp(g1, g2, 3 * n * 4) == 0, "B %d T %d H %d dh %d: dq, dk, dv, packed vs blocked", B, T, H, dh);
        /* q | k | v in rows of 3d, as the model keeps them */
        for (t = 0; t < (size_t)B * T; t++)
            for (j = 0; j < d; j++) {
                qkv[t * 3 * d + j] = q[t * d + j];
                qkv[t * 3 * d + d + j] = k[t * d + j];
                qkv[t * 3 * d + 2 * d + j] = v[t * d + j];
            }
        moexc__attention_forward_ld(y3, a3, qkv, qkv + d, qkv + 2 * d, 3 * d, B, T, H, dh);
        moexc__attention_backward_ld(g3, g3 + d, g3 + 2 * d, s3, dy, a3, qkv, qkv + d, qkv + 2 * d, 3 * d, B, T, H, dh);
        TH_CHECK(memcmp(y3, y1, n * 4) == 0, "B %d T %d H %d dh %d: y, rows of 3d", B, T, H, dh);
        for (t = 0; t < (size_t)B * T; t++)
            for (j = 0; j < d; j++)
                same_strided &= g3[t * 3 * d + j] == g1[t * d + j] && g3[t * 3 * d + d + j] == g1[n + t * d + j]
                                && g3[t * 3 * d + 2 * d + j] == g1[2 * n + t * d + j];
        TH_CHECK(same_strided, "B %d T %d H %d dh %d: dq, dk, dv, rows of 3d", B, T, H, dh);
    }
    free(q); free(k); free(v); free(dy); free(qkv); free(y1); free(y2); free(y3);
    free(a1); free(a2); free(a3); free(s1); free(s2); free(s3); free(g1); free(g2); free(g3);
    return ok;
}

static void test_attention_packed_matches_blocked(void)
{
    /* whole and partial register tiles (MR rows, NR columns), head widths
       below, at and above NR, T = 1, and T past MOEXC_GEMM_KC (blocked only) */
    static const int shapes[][4] = {{2, 256, 4, 32}, {1, 37, 3, 6}, {2, 100, 2, 48}, {1, 15, 1, 2},
                                    {3, 64, 2, 64}, {1, 1, 1, 2}, {1, MOEXC_GEMM_KC + 88, 1, 8}};
    size_t i;
    for (i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
        TH_CHECK(attention_case(shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3]), "out of memory");
}

static void test_swiglu_gu_matches_separate(void)
{
    const int M = 45, d = 24, h = 40;
    size_t nu = (size_t)M * d, nh = (size_t)M * h, nw = (size_t)h * d, i;
    float *u = (float *)malloc(nu * 4), *dout = (float *)malloc(nu * 4), *w_gu = (float *)malloc(2 * nw * 4);
    float *w_down = (float *)malloc(nw * 4);
    float *out1 = (float *)calloc(nu, 4), *out2 = (float *)calloc(nu, 4);
    float *gate = (float *)calloc(nh, 4), *up = (float *)calloc(nh, 4), *act1 = (float *)calloc(nh, 4);
    float *gu = (float *)calloc(2 * nh, 4), *act2 = (float *)calloc(nh, 4);
    float *du1 = (float *)calloc(nu, 4), *du2 = (float *)calloc(nu, 4);
    float *dw1 = (float *)calloc(3 * nw, 4), *dw2 = (float *)calloc(3 * nw, 4);
    float *s1 = (float *)calloc(nh, 4), *s2 = (float *)calloc(nh, 4), *s3 = (float *)calloc(nh, 4);
    float *t1 = (float *)calloc(nh, 4), *t2 = (float *)calloc(2 * nh, 4);
    moexc_rng r;
    int same_gu = 1;
    double du_err = 0.0, du_scale = 0.0;
    if (!u || !dout || !w_gu || !w_down || !out1 || !out2 || !gate || !up || !act1 || !gu || !act2 || !du1 || !du2
        || !dw1 || !dw2 || !s1 || !s2 || !s3 || !t1 || !t2) {
        TH_CHECK(0, "out of memory");
    } else {
        moexc_rng_seed(&r, 7);
        fill_normal(u, nu, &r); fill_normal(dout, nu, &r); fill_normal(w_gu, 2 * nw, &r); fill_normal(w_down, nw, &r);
        moexc__swiglu_forward(out1, gate, up, act1, u, w_gu, w_gu + nw, w_down, M, d, h);
        moexc__swiglu_forward_gu(out2, gu, act2, u, w_gu, w_down, M, d, h);
        for (i = 0; i < nh; i++)
            same_gu &= gu[(i / h) * 2 * h + i % h] == gate[i] && gu[(i / h) * 2 * h + h + i % h] == up[i];
        TH_CHECK(same_gu, "gate, up: the fused projection differs");
        TH_CHECK(memcmp(act1, act2, nh * 4) == 0 && memcmp(out1, out2, nu * 4) == 0, "act, out differ");
        /* weight gradients: the same sums in the same order; the input
           gradient sums over 2h at once instead of h + h (rounding only) */
        moexc__swiglu_backward(du1, 0, dw1, dw1 + nw, dw1 + 2 * nw, s1, s2, s3, dout, u, gate, up, act1,
                               w_gu, w_gu + nw, w_down, M, d, h);
        moexc__swiglu_backward_gu(du2, 0, dw2, dw2 + 2 * nw, t1, t2, dout, u, gu, act2, w_gu, w_down, M, d, h);
        TH_CHECK(memcmp(dw1, dw2, 3 * nw * 4) == 0, "dW_gate, dW_up, dW_down differ");
        for (i = 0; i < nu; i++) {
            du_err = MOEXC__MAX(du_err, fabs((double)du1[i] - du2[i]));
            du_scale = MOEXC__MAX(du_scale, fabs((double)du1[i]));
        }
        TH_CHECK(du_scale > 0.0 && du_err <= 1e-5 * du_scale, "du: max error %g of scale %g", du_err, du_scale);
    }
    free(u); free(dout); free(w_gu); free(w_down); free(out1); free(out2); free(gate); free(up); free(act1);
    free(gu); free(act2); free(du1); free(du2); free(dw1); free(dw2); free(s1); free(s2); free(s3); free(t1); free(t2);
}

int main(void)
{
    TH_RUN(test_attention_packed_matches_blocked);
    TH_RUN(test_swiglu_gu_matches_separate);
    return th_summary();
}
