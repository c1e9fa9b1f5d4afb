/* tests/test_simd_twin.c - the SIMD build (build/moexc.o, whatever backend the
   compiler flags select) against its scalar twin (tests/scalar_twin.c: the same
   source compiled with MOEXC_NO_SIMD) on the same inputs: every vector kernel
   and moexc_sgemm, sizes 1..67, 255, 1000, 4099, aligned and offset by one float.

   Agreement promised (eps = 2^-23; deviations are |simd - scalar| in the unit
   shown; the measured maxima are printed):
     add, mul, scale, max    bit-identical
     axpy                    1 x eps (|y| + |alpha x|)       (FMA or not: one rounding)
     dot                     16 x eps sum|a_i b_i|           (different association)
     sum                     16 x eps sum|x_i|
     exp                     2 ulp of the result             (FMA in the polynomial)
     softmax                 (4 + sqrt(cols)) x eps y
     silu                    5 x eps |y|
     silu_backward           8 x eps |dy| s (1 + |x| (1 - s))
     rmsnorm                 16 x eps |y|
     sgemm                   16 x eps (|alpha| sum_p |a_ip b_pj| + |beta c_ij|) */
#include "../moexc.h"
#include "harness.h"
#include "scalar_twin.h"
#include <stdlib.h>
#include <float.h>

#define EPS ((double)FLT_EPSILON)
#define N_SIZES (67 + 3)
static size_t size_at(int k)
{
    static const size_t big[3] = { 255, 1000, 4099 };
    return k < 67 ? (size_t)(k + 1) : big[k - 67];
}

static float *alloc_f(size_t n) { return (float *)malloc((n + 1) * sizeof(float)); }

static void fill(float *x, size_t n, moexc_rng *rng, float scale)
{
    size_t i;
    for (i = 0; i < n; i++) x[i] = scale * moexc_rng_normal(rng);
}

static double ulp_at(double v)
{
    int e;
    double u;
    frexp(fabs(v), &e);
    u = ldexp(1.0, e - 24);
    return u < ldexp(1.0, -149) ? ldexp(1.0, -149) : u;
}

static double worst_of(double worst, double dev, double unit)
{
    double r = dev == 0 ? 0 : dev / unit;
    if (r != r) r = 1e30;   /* NaN counts as a huge deviation */
    return r > worst ? r : worst;
}

static void test_backends_differ(void)
{
    printf("     SIMD build: %s (width %d), twin: %s\n", moexc_simd_backend(), moexc_simd_width(), twin_backend());
    TH_CHECK(strcmp(twin_backend(), "scalar") == 0, "the twin runs %s", twin_backend());
    if (strcmp(moexc_simd_backend(), "scalar") == 0)
        printf("     note: this build is itself scalar (MOEXC_NO_SIMD or no SIMD ISA), the comparison is trivial\n");
}

static void test_reductions(void)
{
    moexc_rng rng;
    int k, off;
    double wdot = 0, wsum = 0;
    int max_diff = 0;
    moexc_rng_seed(&rng, 11);
    for (k = 0; k < N_SIZES; k++)
        for (off = 0; off < 2; off++) {
            size_t n = size_at(k), i;
            float *ab = alloc_f(n), *bb = alloc_f(n), *a = ab + off, *b = bb + off;
            double mag = 0, smag = 0;
            fill(a, n, &rng, 1.0f);
            fill(b, n, &rng, 1.0f);
            for (i = 0; i < n; i++) { mag += fabs((double)a[i] * b[i]); smag += fabs(a[i]); }
            wdot = worst_of(wdot, fabs((double)moexc_dot(a, b, n) - twin_dot(a, b, n)), EPS * mag);
            wsum = worst_of(wsum, fabs((double)moexc_sum(a, n) - twin_sum(a, n)), EPS * smag);
            max_diff += moexc_max(a, n) != twin_max(a, n);
            free(ab); free(bb);
        }
    printf("     dot: max deviation %.3g eps sum|ab|; sum: %.3g eps sum|x|; max: %d differ\n", wdot, wsum, max_diff);
    TH_CHECK(wdot <= 16, "dot deviates %.3g eps sum|ab|", wdot);
    TH_CHECK(wsum <= 16, "sum deviates %.3g eps sum|x|", wsum);
    TH_CHECK(max_diff == 0, "max differs on %d inputs", max_diff);
}

static void test_elementwise(void)
{
    moexc_rng rng;
    int k, off;
    int bits = 0;
    double waxpy = 0, wadam = 0;
    moexc_rng_seed(&rng, 12);
    for (k = 0; k < N_SIZES; k++)
        for (off = 0; off < 2; off++) {
            size_t n = size_at(k), i;
            float *ab = alloc_f(n), *bb = alloc_f(n), *yb = alloc_f(n), *zb = alloc_f(n);
            float *a = ab + off, *b = bb + off, *y = yb + off, *z = zb + off;
            const float alpha = 0.73f;
            fill(a, n, &rng, 2.0f);
            fill(b, n, &rng, 2.0f);
            moexc_add(y, a, b, n); twin_add(z, a, b, n);
            bits += memcmp(y, z, n * sizeof(float)) != 0;
            moexc_mul(y, a, b, n); twin_mul(z, a, b, n);
            bits += memcmp(y, z, n * sizeof(float)) != 0;
            memcpy(y, a, n * sizeof(float)); memcpy(z, a, n * sizeof(float));
            moexc_scale(y, alpha, n); twin_scale(z, alpha, n);
            bits += memcmp(y, z, n * sizeof(float)) != 0;
            memcpy(y, b, n * sizeof(float)); memcpy(z, b, n * sizeof(float));
            moexc_axpy(y, alpha, a, n); twin_axpy(z, alpha, a, n);
            for (i = 0; i < n; i++)
                waxpy = worst_of(waxpy, fabs((double)y[i] - z[i]), EPS * (fabs(b[i]) + fabs((double)alpha * a[i])));
            {   /* Adam(W): theta in y/z, g = a, moments from b (v >= 0), twice */
                moexc_adam_coeffs ac = { 0.5f, 0.999f, 0.9f, 0.95f, 1e-8f, 0.01f, 0.3f };
                float *m1 = alloc_f(n), *v1 = alloc_f(n), *m2 = alloc_f(n), *v2 = alloc_f(n);
                int rep;
                for (i = 0; i < n; i++) { m1[i] = m2[i] = 0.1f * b[i]; v1[i] = v2[i] = 0.01f * b[i] * b[i]; }
                memcpy(y, b, n * sizeof(float)); memcpy(z, b, n * sizeof(float));
                for (rep = 0; rep < 2; rep++) { moexc_adam_update(y, a, m1, v1, n, &ac); twin_adam_update(z, a, m2, v2, n, &ac); }
                for (i = 0; i < n; i++) {
                    wadam = worst_of(wadam, fabs((double)y[i] - z[i]), EPS * (fabs(y[i]) + ac.step_size));
                    /* m = b1 m + (1 - b1) g may cancel: its unit is the terms' size */
                    wadam = worst_of(wadam, fabs((double)m1[i] - m2[i]), EPS * (fabs(m1[i]) + fabs(a[i])));
                    wadam = worst_of(wadam, fabs((double)v1[i] - v2[i]), EPS * (fabs(v1[i]) + (double)a[i] * a[i]));
                }
                free(m1); free(v1); free(m2); free(v2);
            }
            free(ab); free(bb); free(yb); free(zb);
        }
    printf("     add/mul/scale: %d arrays differ; axpy: max deviation %.3g eps (|y| + |alpha x|); adam_update: %.3g eps\n",
           bits, waxpy, wadam);
    TH_CHECK(bits == 0, "add/mul/scale: %d arrays not bit-identical", bits);
    TH_CHECK(wadam <= 4, "adam_update deviates %.3g", wadam);
    TH_CHECK(waxpy <= 1, "axpy deviates %.3g", waxpy);
}

static void test_exp_family(void)
{
    moexc_rng rng;
    int k, off;
    double wexp = 0, wsilu = 0, wgrad = 0;
    moexc_rng_seed(&rng, 13);
    {   /* exp over its whole useful range */
        const size_t n = (size_t)1 << 20;
        float *x = alloc_f(n), *y = alloc_f(n), *z = alloc_f(n);
        size_t i;
        for (i = 0; i < n; i++) x[i] = (float)(-87.0 + 175.0 * (double)i / (double)(n - 1));
        moexc_exp(y, x, n); twin_exp(z, x, n);
        for (i = 0; i < n; i++) wexp = worst_of(wexp, fabs((double)y[i] - z[i]), ulp_at(z[i]));
        free(x); free(y); free(z);
    }
    for (k = 0; k < N_SIZES; k++)
        for (off = 0; off < 2; off++) {
            size_t n = size_at(k), i;
            float *xb = alloc_f(n), *db = alloc_f(n), *yb = alloc_f(n), *zb = alloc_f(n);
            float *x = xb + off, *dy = db + off, *y = yb + off, *z = zb + off;
            fill(x, n, &rng, 8.0f);
            fill(dy, n, &rng, 1.0f);
            moexc_exp(y, x, n); twin_exp(z, x, n);
            for (i = 0; i < n; i++) wexp = worst_of(wexp, fabs((double)y[i] - z[i]), ulp_at(z[i]));
            moexc_silu(y, x, n); twin_silu(z, x, n);
            for (i = 0; i < n; i++) wsilu = worst_of(wsilu, fabs((double)y[i] - z[i]), EPS * fabs(z[i]));
            moexc_silu_backward(y, x, dy, n); twin_silu_backward(z, x, dy, n);
            for (i = 0; i < n; i++) {
                double s = 1.0 / (1.0 + exp(-(double)x[i]));
                wgrad = worst_of(wgrad, fabs((double)y[i] - z[i]), EPS * fabs(dy[i]) * s * (1.0 + fabs(x[i]) * (1.0 - s)));
            }
            free(xb); free(db); free(yb); free(zb);
        }
    printf("     exp: max deviation %.3g ulp; silu: %.3g eps|y|; silu_backward: %.3g eps|dy|s(1+|x|(1-s))\n",
           wexp, wsilu, wgrad);
    TH_CHECK(wexp <= 2, "exp deviates %.3g ulp", wexp);
    TH_CHECK(wsilu <= 5, "silu deviates %.3g", wsilu);
    TH_CHECK(wgrad <= 8, "silu_backward deviates %.3g", wgrad);
}

static void test_rows(void)
{
    moexc_rng rng;
    int k, off;
    double wsoft = 0, wrms = 0, wsoft_ratio = 0;
    moexc_rng_seed(&rng, 14);
    for (k = 0; k < N_SIZES; k++)
        for (off = 0; off < 2; off++) {
            const int rows = 3;
            int cols = (int)size_at(k);
            size_t n = (size_t)rows * (size_t)cols, i;
            float *xb = alloc_f(n), *yb = alloc_f(n), *zb = alloc_f(n), *gb = alloc_f((size_t)cols);
            float *x = xb + off, *y = yb + off, *z = zb + off, *g = gb + off;
            float inv_y[3], inv_z[3];
            double ws = 0;
            fill(x, n, &rng, 4.0f);
            fill(g, (size_t)cols, &rng, 1.0f);
            moexc_softmax_rows(y, x, rows, cols); twin_softmax_rows(z, x, rows, cols);
            for (i = 0; i < n; i++) ws = worst_of(ws, fabs((double)y[i] - z[i]), EPS * z[i]);
            wsoft = ws > wsoft ? ws : wsoft;
            ws /= 4.0 + sqrt((double)cols);
            wsoft_ratio = ws > wsoft_ratio ? ws : wsoft_ratio;
            moexc_rmsnorm_rows(y, inv_y, x, g, rows, cols, 1e-6f); twin_rmsnorm_rows(z, inv_z, x, g, rows, cols, 1e-6f);
            for (i = 0; i < n; i++) wrms = worst_of(wrms, fabs((double)y[i] - z[i]), EPS * fabs(z[i]));
            for (i = 0; i < 3; i++) wrms = worst_of(wrms, fabs((double)inv_y[i] - inv_z[i]), EPS * inv_z[i]);
            free(xb); free(yb); free(zb); free(gb);
        }
    printf("     softmax: max deviation %.3g eps y (%.2f of its tolerance); rmsnorm: %.3g eps|y|\n",
           wsoft, wsoft_ratio, wrms);
    TH_CHECK(wsoft_ratio <= 1, "softmax deviates %.3g of tolerance", wsoft_ratio);
    TH_CHECK(wrms <= 16, "rmsnorm deviates %.3g", wrms);
}

static void test_sgemm(void)
{
    static const int dims[][3] = { {1, 1, 1}, {3, 5, 7}, {17, 33, 9}, {65, 31, 67}, {67, 129, 255}, {8, 8, 1000} };
    moexc_rng rng;
    int d, ta, tb;
    double worst = 0;
    moexc_rng_seed(&rng, 15);
    for (d = 0; d < (int)(sizeof dims / sizeof dims[0]); d++)
        for (ta = 0; ta < 2; ta++)
            for (tb = 0; tb < 2; tb++) {
                int M = dims[d][0], N = dims[d][1], K = dims[d][2], i, j, p;
                int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                size_t na = (size_t)lda * (size_t)(ta ? K : M), nb = (size_t)ldb * (size_t)(tb ? N : K);
                size_t nc = (size_t)ldc * (size_t)M;
                float *A = alloc_f(na), *B = alloc_f(nb), *C0 = alloc_f(nc), *C1 = alloc_f(nc), *C2 = alloc_f(nc);
                const float alpha = 0.5f, beta = -1.25f;
                fill(A, na, &rng, 1.0f);
                fill(B, nb, &rng, 1.0f);
                fill(C0, nc, &rng, 1.0f);
                memcpy(C1, C0, nc * sizeof(float));
                memcpy(C2, C0, nc * sizeof(float));
                moexc_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C1, ldc);
                twin_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C2, ldc);
                for (i = 0; i < M; i++)
                    for (j = 0; j < N; j++) {
                        double mag = fabs(beta * C0[(size_t)i * ldc + j]);
                        for (p = 0; p < K; p++) {
                            double a = ta ? A[(size_t)p * lda + i] : A[(size_t)i * lda + p];
                            double b = tb ? B[(size_t)j * ldb + p] : B[(size_t)p * ldb + j];
                            mag += fabs(alpha * a * b);
                        }
                        worst = worst_of(worst, fabs((double)C1[(size_t)i * ldc + j] - C2[(size_t)i * ldc + j]), EPS * mag);
                    }
                free(A); free(B); free(C0); free(C1); free(C2);
            }
    printf("     sgemm: max deviation %.3g eps (|alpha| sum|ab| + |beta c|)\n", worst);
    TH_CHECK(worst <= 16, "sgemm deviates %.3g", worst);
}

int main(void)
{
    TH_RUN(test_backends_differ);
    TH_RUN(test_reductions);
    TH_RUN(test_elementwise);
    TH_RUN(test_exp_family);
    TH_RUN(test_rows);
    TH_RUN(test_sgemm);
    return th_summary();
}
