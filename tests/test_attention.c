/* tests/test_attention.c - causal attention's fast path against its plain
   form, bit for bit: attention on packed panels
   (moexc__attention_forward/_backward) against the blocked path that runs
   moexc_sgemm on strided q, k, v (odd lengths and head widths, a length past
   MOEXC_GEMM_KC where the packed path steps aside), and with q, k, v in rows
   of 3d as the model keeps them (_ld).
   The finite-difference and PyTorch checks of this layer are in
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
        {   /* P over the causal prefix (above the diagonal only what the products read is defined) */
            int same_p = 1, row, key;
            for (bh = 0; bh < B * H; bh++)
                for (row = 0; row < T; row++)
                    for (key = 0; key <= row; key++) {
                        size_t at = ((size_t)bh * T + (size_t)row) * T + (size_t)key;
                        same_p &= a1[at] == a2[at];
                    }
            TH_CHECK(same_p, "B %d T %d H %d dh %d: P, packed vs blocked", B, T, H, dh);
        }
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

int main(void)
{
    TH_RUN(test_attention_packed_matches_blocked);
    return th_summary();
}
