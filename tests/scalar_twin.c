/* tests/scalar_twin.c - the scalar twin: the whole library compiled with
   MOEXC_NO_SIMD as static functions, exposed through twin_* wrappers.
   Built to build/scalar_twin.o and linked into build/test_simd_twin. */
#define MOEXC_STATIC
#ifndef MOEXC_NO_SIMD
#define MOEXC_NO_SIMD
#endif
#define MOEXC_IMPLEMENTATION
#include "../moexc.h"
#include "scalar_twin.h"

const char *twin_backend(void) { return moexc_simd_backend(); }
float twin_dot(const float *a, const float *b, size_t n) { return moexc_dot(a, b, n); }
float twin_sum(const float *x, size_t n) { return moexc_sum(x, n); }
float twin_max(const float *x, size_t n) { return moexc_max(x, n); }
void  twin_axpy(float *y, float alpha, const float *x, size_t n) { moexc_axpy(y, alpha, x, n); }
void  twin_scale(float *x, float alpha, size_t n) { moexc_scale(x, alpha, n); }
void  twin_add(float *y, const float *a, const float *b, size_t n) { moexc_add(y, a, b, n); }
void  twin_mul(float *y, const float *a, const float *b, size_t n) { moexc_mul(y, a, b, n); }
void  twin_exp(float *y, const float *x, size_t n) { moexc_exp(y, x, n); }
void  twin_softmax_rows(float *y, const float *x, int rows, int cols) { moexc_softmax_rows(y, x, rows, cols); }
void  twin_silu(float *y, const float *x, size_t n) { moexc_silu(y, x, n); }
void  twin_silu_backward(float *dx, const float *x, const float *dy, size_t n) { moexc_silu_backward(dx, x, dy, n); }
void  twin_rmsnorm_rows(float *y, float *inv_rms, const float *x, const float *g, int rows, int cols, float eps)
{
    moexc_rmsnorm_rows(y, inv_rms, x, g, rows, cols, eps);
}
void  twin_adam_update(float *theta, const float *g, float *m, float *v, size_t n, const moexc_adam_coeffs *c)
{
    moexc_adam_update(theta, g, m, v, n, c);
}
void  twin_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc)
{
    moexc_sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
