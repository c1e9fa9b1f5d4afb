/* tests/scalar_twin.h - wrappers around the MOEXC_NO_SIMD build of the kernels
   (tests/scalar_twin.c, a MOEXC_STATIC translation unit), so one test binary
   can hold the SIMD build (build/moexc.o) and its scalar twin side by side. */
#ifndef MOEXC_SCALAR_TWIN_H
#define MOEXC_SCALAR_TWIN_H
#include <stddef.h>
#include "../moexc.h"

const char *twin_backend(void);
float twin_dot(const float *a, const float *b, size_t n);
float twin_sum(const float *x, size_t n);
float twin_max(const float *x, size_t n);
void  twin_axpy(float *y, float alpha, const float *x, size_t n);
void  twin_scale(float *x, float alpha, size_t n);
void  twin_add(float *y, const float *a, const float *b, size_t n);
void  twin_mul(float *y, const float *a, const float *b, size_t n);
void  twin_exp(float *y, const float *x, size_t n);
void  twin_softmax_rows(float *y, const float *x, int rows, int cols);
void  twin_silu(float *y, const float *x, size_t n);
void  twin_silu_backward(float *dx, const float *x, const float *dy, size_t n);
void  twin_rmsnorm_rows(float *y, float *inv_rms, const float *x, const float *g, int rows, int cols, float eps);
void  twin_adam_update(float *theta, const float *g, float *m, float *v, size_t n, const moexc_adam_coeffs *c);
void  twin_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc);
#endif
