/* tests/test_gemm.c - moexc_sgemm and the three linear-layer layouts against a
   double-precision reference.

   Tolerance: the classical forward error bound of a float dot product of
   length K (any summation order, with or without FMA), widened by a few
   roundings for alpha, beta and the final add:
       |C - C_ref| <= (K + 4) * FLT_EPSILON * (|alpha| sum_k |a_ik b_kj| + |beta c_ij|)
   A wrong index, a dropped or doubled K block or a missed beta shows up as an
   error of order |a b| per element, far above this bound. */
#include "../moexc.h"
#include "harness.h"
#include <stdlib.h>
#include <float.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define PAD_SENTINEL 12345.0f

static float *alloc_random(moexc_rng *rng, size_t n)
{
    float *x = (float *)malloc((n ? n : 1) * sizeof(float));
    size_t i;
    for (i = 0; i < n; i++) x[i] = 2.0f * moexc_rng_uniform(rng) - 1.0f;
    return x;
}

/* op(A)[i][p] and op(B)[p][j] of row-major storage */
static float op_a(int ta, const float *A, int lda, int i, int p)
{ return ta ? A[(size_t)p * lda + i] : A[(size_t)i * lda + p]; }
static float op_b(int tb, const float *B, int ldb, int p, int j)
{ return tb ? B[(size_t)j * ldb + p] : B[(size_t)p * ldb + j]; }

/* Run one GEMM with leading dimensions padded by `pad` and check `rows_to_check`
   rows (0 = all) against the double reference; also check that the padding of
   C between rows was left untouched. Returns the worst error / bound ratio. */
static double check_gemm(moexc_rng *rng, int ta, int tb, int M, int N, int K,
                         float alpha, float beta, int pad, int rows_to_check, const char *what)
{
    int rows_a = ta ? K : M, cols_a = ta ? M : K, rows_b = tb ? N : K, cols_b = tb ? K : N;
    int lda = cols_a + pad, ldb = cols_b + pad, ldc = N + pad;
    float *A = alloc_random(rng, (size_t)rows_a * lda);
    float *B = alloc_random(rng, (size_t)rows_b * ldb);
    float *C = alloc_random(rng, (size_t)M * ldc);
    float *C0 = (float *)malloc((size_t)M * ldc * sizeof(float));
    double worst = 0.0;
    int i, j, p, r, bad_pad = 0, bad_elems = 0;
    char label[256];
    snprintf(label, sizeof(label), "%s ta=%d tb=%d M=%d N=%d K=%d alpha=%g beta=%g pad=%d",
             what, ta, tb, M, N, K, alpha, beta, pad);
    for (i = 0; i < M; i++)
        for (j = 0; j < ldc; j++) {
            size_t at = (size_t)i * ldc + j;
            if (j >= N) C[at] = PAD_SENTINEL;
            else if (beta == 0.0f) C[at] = (float)NAN;   /* must not be read */
        }
    memcpy(C0, C, (size_t)M * ldc * sizeof(float));

    moexc_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);

    for (i = 0; i < M; i++)
        for (j = N; j < ldc; j++) bad_pad += C[(size_t)i * ldc + j] != PAD_SENTINEL;
    TH_CHECK(bad_pad == 0, "%d padding elements of C were written: %s", bad_pad, label);

    for (r = 0; r < (rows_to_check ? rows_to_check : M); r++) {
        /* sampled rows: always the first and the last, the rest at random */
        i = !rows_to_check ? r : r == 0 ? 0 : r == 1 ? M - 1 : (int)moexc_rng_below(rng, (uint32_t)M);
        for (j = 0; j < N; j++) {
            double sum = 0.0, mag = 0.0, ref, bound, got = C[(size_t)i * ldc + j];
            double c0 = beta == 0.0f ? 0.0 : C0[(size_t)i * ldc + j];
            for (p = 0; p < K; p++) {
                double prod = (double)op_a(ta, A, lda, i, p) * (double)op_b(tb, B, ldb, p, j);
                sum += prod;
                mag += fabs(prod);
            }
            ref = (double)alpha * sum + (double)beta * c0;
            bound = (K + 4) * (double)FLT_EPSILON * (fabs((double)alpha) * mag + fabs((double)beta * c0));
            if (!(fabs(got - ref) <= bound)) {          /* NaN fails too */
                if (bad_elems++ < 3)
                    printf("    C[%d][%d] = %.9g, want %.9g (bound %.3g)\n", i, j, got, ref, bound);
            } else if (bound > 0.0 && fabs(got - ref) / bound > worst) {
                worst = fabs(got - ref) / bound;
            }
        }
    }
    TH_CHECK(bad_elems == 0, "%d elements outside the error bound: %s", bad_elems, label);
    free(A); free(B); free(C); free(C0);
    return worst;
}

static const float alphas[] = { 1.0f, 0.5f, -1.5f, 1.0f };
static const float betas[]  = { 0.0f, 1.0f, 0.25f, -2.0f };

/* Every layout over odd shapes, alpha/beta variants, padded leading dims. */
static void test_odd_shapes_all_layouts(void)
{
    static const int sizes[] = { 1, 7, 33, 129 };
    moexc_rng rng;
    int layout, mi, ni, ki, variant = 0;
    double worst = 0.0;
    moexc_rng_seed(&rng, 1);
    for (layout = 0; layout < 4; layout++)
        for (mi = 0; mi < 4; mi++)
            for (ni = 0; ni < 4; ni++)
                for (ki = 0; ki < 4; ki++, variant++)
                    worst = fmax(worst, check_gemm(&rng, layout >> 1, layout & 1, sizes[mi], sizes[ni], sizes[ki],
                                                   alphas[variant % 4], betas[(variant / 4) % 4], variant % 3, 0, "odd"));
    printf("     worst |error| / bound: %.3g\n", worst);
}

/* Shapes that cross the cache blocks (KC, MC, NC) and tile remainders. */
static void test_block_boundaries(void)
{
    moexc_rng rng;
    int layout;
    moexc_rng_seed(&rng, 2);
    for (layout = 0; layout < 4; layout++) {
        check_gemm(&rng, layout >> 1, layout & 1, 701, 95, 1100, 1.0f, 0.5f, 1, 0, "k-blocks");   /* 3 K blocks at KC = 512 */
        check_gemm(&rng, layout >> 1, layout & 1, 1500, 67, 1025, -1.0f, 0.0f, 0, 40, "m-blocks");
        check_gemm(&rng, layout >> 1, layout & 1, 3, 4129, 200, 2.0f, 1.0f, 5, 0, "n-blocks");
        check_gemm(&rng, layout >> 1, layout & 1, 2, 3, 5000, 1.0f, 0.0f, 0, 0, "long-k");
    }
}

/* The model's shapes (M = 4096 tokens, K, N in {128, ..., 1024}), through the
   three linear wrappers, checking sampled rows against the reference. */
static void test_model_shapes(void)
{
    static const int shapes[][2] = { { 128, 512 }, { 512, 128 }, { 256, 1024 }, { 1024, 256 } };
    moexc_rng rng;
    int s;
    double worst = 0.0;
    moexc_rng_seed(&rng, 3);
    for (s = 0; s < 4; s++) {
        int K = shapes[s][0], N = shapes[s][1];
        worst = fmax(worst, check_gemm(&rng, 0, 1, 4096, N, K, 1.0f, 0.0f, 0, 12, "forward Y = X W^T"));
        worst = fmax(worst, check_gemm(&rng, 0, 0, 4096, K, N, 1.0f, 1.0f, 0, 12, "input grad dX += dY W"));
        worst = fmax(worst, check_gemm(&rng, 1, 0, N, K, 4096, 1.0f, 1.0f, 0, 12, "weight grad dW += dY^T X"));
    }
    printf("     worst |error| / bound: %.3g\n", worst);
}

/* beta == 0 never reads C; alpha == 0 or K == 0 scales C by beta. */
static void test_beta_alpha_k_edge_cases(void)
{
    float A[6] = { 1, 2, 3, 4, 5, 6 }, B[6] = { 1, 0, 0, 1, 1, 1 };
    float C[4];
    int i, finite = 1;
    for (i = 0; i < 4; i++) C[i] = (float)NAN;
    moexc_sgemm(0, 0, 2, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2);   /* [1 2 3; 4 5 6] [1 0; 0 1; 1 1] */
    TH_CHECK(C[0] == 4.0f && C[1] == 5.0f && C[2] == 10.0f && C[3] == 11.0f,
             "2x3 * 3x2 with NaN C, beta 0: got %g %g %g %g", C[0], C[1], C[2], C[3]);
    for (i = 0; i < 4; i++) C[i] = (float)NAN;
    moexc_sgemm(0, 0, 2, 2, 3, 0.0f, A, 3, B, 2, 0.0f, C, 2);
    for (i = 0; i < 4; i++) finite &= C[i] == 0.0f;
    TH_CHECK(finite, "alpha 0, beta 0 over NaN C must give zeros");
    for (i = 0; i < 4; i++) C[i] = (float)(i + 1);
    moexc_sgemm(1, 1, 2, 2, 0, 1.0f, A, 2, B, 2, 3.0f, C, 2);
    TH_CHECK(C[0] == 3.0f && C[3] == 12.0f, "K 0 must give beta C: got %g %g", C[0], C[3]);
    moexc_sgemm(0, 0, 0, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2);   /* M 0: nothing happens */
    TH_CHECK(C[0] == 3.0f, "M 0 must not touch C");
}

/* 1, 2 and 3 threads must give the same bits (with OpenMP), and repeated
   calls always do. Shapes split over M, over N (M tiny), with several K
   blocks, and C rows not a whole number of vectors. */
static void test_thread_count_bit_identical(void)
{
    /* split over rows (M >= N) and over columns, with K blocks and edge tiles */
    static const int shapes[][3] = { { 600, 301, 250 }, { 5, 3000, 200 }, { 2048, 64, 300 },
                                     { 64, 256, 2048 }, { 33, 33, 1025 }, { 37, 45, 1024 },
                                     { 20, 70, 3072 } };
    moexc_rng rng;
    int s, layout;
    moexc_rng_seed(&rng, 4);
    for (s = 0; s < 7; s++)
        for (layout = 0; layout < 4; layout++) {
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
            int ta = layout >> 1, tb = layout & 1;
            float *A = alloc_random(&rng, (size_t)M * K), *B = alloc_random(&rng, (size_t)K * N);
            float *C0 = alloc_random(&rng, (size_t)M * N);
            float *C1 = (float *)malloc((size_t)M * N * sizeof(float));
            float *Ct = (float *)malloc((size_t)M * N * sizeof(float));
            int threads;
            for (threads = 1; threads <= 3; threads++) {
                float *C = threads == 1 ? C1 : Ct;
                memcpy(C, C0, (size_t)M * N * sizeof(float));
#ifdef _OPENMP
                omp_set_num_threads(threads);
#endif
                moexc_sgemm(ta, tb, M, N, K, 0.75f, A, ta ? M : K, B, tb ? K : N, 0.5f, C, N);
                if (threads > 1)
                    TH_CHECK(memcmp(C1, Ct, (size_t)M * N * sizeof(float)) == 0,
                             "1 vs %d threads differ: ta=%d tb=%d M=%d N=%d K=%d", threads, ta, tb, M, N, K);
            }
            free(A); free(B); free(C0); free(C1); free(Ct);
        }
}

/* op(A) = A^T is read in place unless lda is a multiple of 512 floats, where
   it is packed first; both must give the same bits. The same A (K x M) with
   lda = M and with lda = 1024, over edge tiles (M = 45, 61), K blocks and a
   K of one, with 1 and 2 threads. */
static void test_in_place_a_matches_packed(void)
{
    static const int shapes[][3] = { { 45, 70, 1100 }, { 61, 33, 300 }, { 14, 32, 1 }, { 300, 40, 2048 } };
    moexc_rng rng;
    int s, threads;
#ifdef _OPENMP
    const int max_threads = omp_get_max_threads();
#endif
    moexc_rng_seed(&rng, 6);
    for (s = 0; s < 4; s++)
        for (threads = 1; threads <= 2; threads++) {
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], p;
            float *A = alloc_random(&rng, (size_t)K * M), *B = alloc_random(&rng, (size_t)K * N);
            float *A_wide = (float *)calloc((size_t)K * 1024, sizeof(float));
            float *C0 = alloc_random(&rng, (size_t)M * N);
            float *C1 = (float *)malloc((size_t)M * N * sizeof(float));
            float *C2 = (float *)malloc((size_t)M * N * sizeof(float));
            for (p = 0; p < K; p++) memcpy(A_wide + (size_t)p * 1024, A + (size_t)p * M, (size_t)M * sizeof(float));
            memcpy(C1, C0, (size_t)M * N * sizeof(float));
            memcpy(C2, C0, (size_t)M * N * sizeof(float));
#ifdef _OPENMP
            omp_set_num_threads(threads);
#endif
            moexc_sgemm(1, 0, M, N, K, 0.75f, A, M, B, N, 0.5f, C1, N);
            moexc_sgemm(1, 0, M, N, K, 0.75f, A_wide, 1024, B, N, 0.5f, C2, N);
            TH_CHECK(memcmp(C1, C2, (size_t)M * N * sizeof(float)) == 0,
                     "A^T in place (lda %d) vs packed (lda 1024) differ: M=%d N=%d K=%d, %d threads",
                     M, M, N, K, threads);
            free(A); free(B); free(A_wide); free(C0); free(C1); free(C2);
        }
#ifdef _OPENMP
    omp_set_num_threads(max_threads);
#endif
}

/* The wrappers: bias broadcast, accumulate flag, weight grad accumulates. */
static void test_linear_wrappers(void)
{
    enum { M = 37, N = 21, K = 19 };
    moexc_rng rng;
    float *X, *W, *bias, *Y, *dY, *dX, *dW;
    int i, j, t, bad_y = 0, bad_dx = 0, bad_dw = 0;
    moexc_rng_seed(&rng, 5);
    X = alloc_random(&rng, M * K); W = alloc_random(&rng, N * K); bias = alloc_random(&rng, N);
    Y = alloc_random(&rng, M * N); dY = alloc_random(&rng, M * N);
    dX = alloc_random(&rng, M * K); dW = alloc_random(&rng, N * K);
    {
        float *dX0 = (float *)malloc(sizeof(float) * M * K), *dW0 = (float *)malloc(sizeof(float) * N * K);
        memcpy(dX0, dX, sizeof(float) * M * K);
        memcpy(dW0, dW, sizeof(float) * N * K);
        moexc_linear_forward(Y, X, W, bias, M, N, K);
        moexc_linear_backward_input(dX, dY, W, M, N, K, 1);
        moexc_linear_backward_weight(dW, dY, X, M, N, K);
        for (i = 0; i < M; i++)
            for (j = 0; j < N; j++) {               /* Y = X W^T + bias */
                double s = bias[j], mag = fabs(bias[j]);
                for (t = 0; t < K; t++) { s += (double)X[i * K + t] * W[j * K + t]; mag += fabs((double)X[i * K + t] * W[j * K + t]); }
                bad_y += !(fabs(Y[i * N + j] - s) <= (K + 4) * FLT_EPSILON * mag);
            }
        for (i = 0; i < M; i++)
            for (t = 0; t < K; t++) {               /* dX += dY W */
                double s = dX0[i * K + t], mag = fabs(dX0[i * K + t]);
                for (j = 0; j < N; j++) { s += (double)dY[i * N + j] * W[j * K + t]; mag += fabs((double)dY[i * N + j] * W[j * K + t]); }
                bad_dx += !(fabs(dX[i * K + t] - s) <= (N + 4) * FLT_EPSILON * mag);
            }
        for (j = 0; j < N; j++)
            for (t = 0; t < K; t++) {               /* dW += dY^T X */
                double s = dW0[j * K + t], mag = fabs(dW0[j * K + t]);
                for (i = 0; i < M; i++) { s += (double)dY[i * N + j] * X[i * K + t]; mag += fabs((double)dY[i * N + j] * X[i * K + t]); }
                bad_dw += !(fabs(dW[j * K + t] - s) <= (M + 4) * FLT_EPSILON * mag);
            }
        TH_CHECK(bad_y == 0, "linear_forward: %d bad elements", bad_y);
        TH_CHECK(bad_dx == 0, "linear_backward_input (accumulate): %d bad elements", bad_dx);
        TH_CHECK(bad_dw == 0, "linear_backward_weight: %d bad elements", bad_dw);
        /* accumulate = 0 overwrites, even NaN */
        for (i = 0; i < M * K; i++) dX[i] = (float)NAN;
        moexc_linear_backward_input(dX, dY, W, M, N, K, 0);
        bad_dx = 0;
        for (i = 0; i < M; i++)
            for (t = 0; t < K; t++) {
                double s = 0.0, mag = 0.0;
                for (j = 0; j < N; j++) { s += (double)dY[i * N + j] * W[j * K + t]; mag += fabs((double)dY[i * N + j] * W[j * K + t]); }
                bad_dx += !(fabs(dX[i * K + t] - s) <= (N + 4) * FLT_EPSILON * mag);
            }
        TH_CHECK(bad_dx == 0, "linear_backward_input (overwrite over NaN): %d bad elements", bad_dx);
        free(dX0); free(dW0);
    }
    free(X); free(W); free(bias); free(Y); free(dY); free(dX); free(dW);
}

int main(void)
{
    printf("gemm backend: %s\n", moexc_simd_backend());
    TH_RUN(test_odd_shapes_all_layouts);
    TH_RUN(test_block_boundaries);
    TH_RUN(test_model_shapes);
    TH_RUN(test_beta_alpha_k_edge_cases);
    TH_RUN(test_thread_count_bit_identical);
    TH_RUN(test_in_place_a_matches_packed);
    TH_RUN(test_linear_wrappers);
    return th_summary();
}
