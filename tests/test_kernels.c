/* tests/test_kernels.c - the vector kernels of >>tensor against double-precision
   references: sizes 1..67 and 255, 1000, 4099, pointers offset by one float
   (unaligned), and outputs aliasing inputs.

   Tolerances (eps = FLT_EPSILON = 2^-23; "ulp" is measured from the exact value):
     add, mul, scale, max          exact (bit-identical to the IEEE float result)
     axpy                          |err| <= eps (|y| + |alpha x|)  (fused or not)
     dot, sum                      |err| <= 16 eps sum|a_i b_i|    (sum|x_i|)
     exp                           <= 1.5 ulp on [-87, 88] (measured 1.26-1.28);
                                   <= 1 denormal step 2^-149 on [-103.9, -87.3]
     softmax                       |err| <= (4 + sqrt(cols) + |x - max|/2) eps y + 1e-30: the row
                                   sum's rounding grows like sqrt(cols), and x - max is rounded
                                   (exp's condition number is |x|); rows sum to 1 +- 1e-5
     silu                          |err| <= 6e-7 |y| + 1e-30
     silu_backward                 |err| <= 1e-6 |dy| s (1 + |x| (1 - s)) + 1e-30
     rmsnorm                       |err| <= 2e-6 |y| + 1e-30, inv_rms to 1e-6 */
#include "../moexc.h"
#include "harness.h"
#include <stdlib.h>
#include <float.h>

#define EPS ((double)FLT_EPSILON)

static const size_t big_sizes[] = { 255, 1000, 4099 };

/* sizes 1..67 then the big ones: index -> n */
#define N_SIZES (67 + 3)
static size_t size_at(int k) { return k < 67 ? (size_t)(k + 1) : big_sizes[k - 67]; }

/* A buffer of n floats starting at a 16-byte aligned block plus `offset` floats. */
typedef struct buf { float *block; float *p; } buf;
static buf buf_make(size_t n, int offset)
{
    buf b;
    b.block = (float *)malloc((n + 2) * sizeof(float));
    b.p = b.block + offset;
    return b;
}
static void buf_free(buf *b) { free(b->block); b->block = b->p = NULL; }

static void fill_normal(float *x, size_t n, moexc_rng *rng, float scale)
{
    size_t i;
    for (i = 0; i < n; i++) x[i] = scale * moexc_rng_normal(rng);
}

/* distance to the exact value in units of the float ulp at the exact value
   (denormal results: in steps of 2^-149) */
static double ulp_error(float got, double exact)
{
    int e;
    double u;
    frexp(fabs(exact), &e);
    u = ldexp(1.0, e - 24);
    if (u < ldexp(1.0, -149)) u = ldexp(1.0, -149);
    return fabs((double)got - exact) / u;
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

static void test_backend_reported(void)
{
    const char *name = moexc_simd_backend();
    int w = moexc_simd_width();
    int expected = !strcmp(name, "avx512") ? 16 : !strcmp(name, "avx2") ? 8
                 : (!strcmp(name, "sse2") || !strcmp(name, "neon")) ? 4 : !strcmp(name, "scalar") ? 1 : -1;
    printf("     backend %s, width %d\n", name, w);
    TH_CHECK(expected == w, "backend %s reports width %d", name, w);
}

static void test_dot_sum(void)
{
    moexc_rng rng;
    int k, off, positive;
    moexc_rng_seed(&rng, 1);
    for (positive = 0; positive < 2; positive++)
    for (k = 0; k < N_SIZES; k++)
        for (off = 0; off < 2; off++) {
            size_t n = size_at(k), i;
            buf a = buf_make(n, off), b = buf_make(n, off), a0 = buf_make(n, 0), b0 = buf_make(n, 0);
            double ref = 0, mag = 0, sref = 0, smag = 0;
            float got, sgot;
            for (i = 0; i < n; i++) {
                a.p[i] = positive ? moexc_rng_uniform(&rng) : moexc_rng_normal(&rng);
                b.p[i] = positive ? moexc_rng_uniform(&rng) : moexc_rng_normal(&rng);
                ref += (double)a.p[i] * b.p[i];
                mag += fabs((double)a.p[i] * b.p[i]);
                sref += a.p[i];
                smag += fabs(a.p[i]);
            }
            got = moexc_dot(a.p, b.p, n);
            sgot = moexc_sum(a.p, n);
            TH_CHECK(fabs(got - ref) <= 16 * EPS * mag, "dot n=%zu off=%d pos=%d: %.9g vs %.9g", n, off, positive, got, ref);
            TH_CHECK(fabs(sgot - sref) <= 16 * EPS * smag, "sum n=%zu off=%d pos=%d: %.9g vs %.9g", n, off, positive, sgot, sref);
            /* the result depends on n only, never on where the data sits */
            memcpy(a0.p, a.p, n * sizeof(float));
            memcpy(b0.p, b.p, n * sizeof(float));
            TH_CHECK(same_bits(moexc_dot(a0.p, b0.p, n), got), "dot n=%zu depends on alignment", n);
            TH_CHECK(same_bits(moexc_sum(a0.p, n), sgot), "sum n=%zu depends on alignment", n);
            buf_free(&a); buf_free(&b); buf_free(&a0); buf_free(&b0);
        }
    {   /* dot(x, x) is the squared norm; empty inputs give 0 */
        float x[3] = { 3.0f, 4.0f, 12.0f };
        TH_CHECK(moexc_dot(x, x, 3) == 169.0f, "dot(x,x) = %g", moexc_dot(x, x, 3));
        TH_CHECK(moexc_dot(x, x, 0) == 0.0f && moexc_sum(x, 0) == 0.0f, "empty dot/sum not 0");
    }
}

static void test_max(void)
{
    moexc_rng rng;
    int k, off;
    moexc_rng_seed(&rng, 2);
    for (k = 0; k < N_SIZES; k++)
        for (off = 0; off < 2; off++) {
            size_t n = size_at(k), i, where[3];
            int w;
            buf x = buf_make(n, off);
            where[0] = 0; where[1] = n - 1; where[2] = moexc_rng_below(&rng, (uint32_t)n);
            for (w = 0; w < 3; w++) {
                /* all negative, so a zero-initialised accumulator would show */
                for (i = 0; i < n; i++) x.p[i] = -1.0f - moexc_rng_uniform(&rng);
                x.p[where[w]] = -0.5f;
                TH_CHECK(moexc_max(x.p, n) == -0.5f, "max n=%zu off=%d at %zu: %g", n, off, where[w],
                         moexc_max(x.p, n));
            }
            buf_free(&x);
        }
}

static void test_elementwise_exact(void)
{
    moexc_rng rng;
    int k, off;
    moexc_rng_seed(&rng, 3);
    for (k = 0; k < N_SIZES; k++)
        for (off = 0; off < 2; off++) {
            size_t n = size_at(k), i;
            buf a = buf_make(n, off), b = buf_make(n, off), y = buf_make(n, off), y0 = buf_make(n, 0);
            int bad_add = 0, bad_mul = 0, bad_scale = 0, bad_axpy = 0, bad_alias = 0;
            const float alpha = -0.37f;
            fill_normal(a.p, n, &rng, 3.0f);
            fill_normal(b.p, n, &rng, 0.5f);
            /* float + and * of two floats done in double round once: the IEEE result */
            moexc_add(y.p, a.p, b.p, n);
            for (i = 0; i < n; i++) bad_add += !same_bits(y.p[i], (float)((double)a.p[i] + b.p[i]));
            moexc_mul(y.p, a.p, b.p, n);
            for (i = 0; i < n; i++) bad_mul += !same_bits(y.p[i], (float)((double)a.p[i] * b.p[i]));
            memcpy(y.p, a.p, n * sizeof(float));
            moexc_scale(y.p, alpha, n);
            for (i = 0; i < n; i++) bad_scale += !same_bits(y.p[i], (float)((double)a.p[i] * alpha));
            /* axpy: exact y + alpha x, within one rounding of each operation */
            memcpy(y.p, b.p, n * sizeof(float));
            moexc_axpy(y.p, alpha, a.p, n);
            for (i = 0; i < n; i++) {
                double exact = (double)b.p[i] + (double)alpha * a.p[i];
                double tol = EPS * (fabs(b.p[i]) + fabs((double)alpha * a.p[i]));
                bad_axpy += !(fabs(y.p[i] - exact) <= tol);
            }
            /* aliasing: y == a for add and mul, x == y for axpy */
            memcpy(y.p, a.p, n * sizeof(float));
            moexc_add(y.p, y.p, b.p, n);
            for (i = 0; i < n; i++) bad_alias += !same_bits(y.p[i], (float)((double)a.p[i] + b.p[i]));
            memcpy(y.p, a.p, n * sizeof(float));
            moexc_mul(y.p, b.p, y.p, n);
            for (i = 0; i < n; i++) bad_alias += !same_bits(y.p[i], (float)((double)a.p[i] * b.p[i]));
            memcpy(y.p, a.p, n * sizeof(float));
            moexc_axpy(y.p, 2.0f, y.p, n);     /* y + 2y = 3y, exact to one rounding */
            for (i = 0; i < n; i++) bad_alias += !(fabs(y.p[i] - 3.0 * a.p[i]) <= EPS * 3.0 * fabs(a.p[i]));
            TH_CHECK(bad_add == 0, "add n=%zu off=%d: %d wrong", n, off, bad_add);
            TH_CHECK(bad_mul == 0, "mul n=%zu off=%d: %d wrong", n, off, bad_mul);
            TH_CHECK(bad_scale == 0, "scale n=%zu off=%d: %d wrong", n, off, bad_scale);
            TH_CHECK(bad_axpy == 0, "axpy n=%zu off=%d: %d wrong", n, off, bad_axpy);
            TH_CHECK(bad_alias == 0, "aliased n=%zu off=%d: %d wrong", n, off, bad_alias);
            buf_free(&a); buf_free(&b); buf_free(&y); buf_free(&y0);
        }
}

/* The accuracy claim of the >>tensor comment: a dense sweep of [-87, 88]. */
static void test_exp_accuracy(void)
{
    const size_t n = (size_t)1 << 22;
    float *x = (float *)malloc(n * sizeof(float)), *y = (float *)malloc(n * sizeof(float));
    double worst = 0, worst_x = 0, worst_sub = 0;
    size_t i;
    for (i = 0; i < n; i++) x[i] = (float)(-87.0 + 175.0 * (double)i / (double)(n - 1));
    moexc_exp(y, x, n);
    for (i = 0; i < n; i++) {
        double u = ulp_error(y[i], exp((double)x[i]));
        if (u > worst) { worst = u; worst_x = x[i]; }
    }
    printf("     exp on [-87, 88], %zu points: max %.3f ulp at x = %.9g\n", n, worst, worst_x);
    TH_CHECK(worst <= 1.5, "exp: %.3f ulp at %.9g", worst, worst_x);
    /* denormal results: within one step of 2^-149 */
    for (i = 0; i < n; i++) x[i] = (float)(-103.9 + 16.6 * (double)i / (double)(n - 1));
    moexc_exp(y, x, n);
    for (i = 0; i < n; i++) {
        double u = ulp_error(y[i], exp((double)x[i]));
        if (u > worst_sub) worst_sub = u;
    }
    printf("     exp on [-103.9, -87.3]: max error %.3f x 2^-149\n", worst_sub);
    TH_CHECK(worst_sub <= 1.0, "exp denormal range: %.3f steps", worst_sub);
    free(x);
    free(y);
}

static void test_exp_special(void)
{
    float x[10], y[10];
    int i;
    x[0] = -INFINITY; x[1] = INFINITY; x[2] = NAN; x[3] = -104.0f; x[4] = -1000.0f;
    x[5] = 88.72f; x[6] = 88.73f; x[7] = 1000.0f; x[8] = 0.0f; x[9] = 1.0f;
    moexc_exp(y, x, 10);
    TH_CHECK(y[0] == 0.0f, "exp(-inf) = %g", y[0]);
    TH_CHECK(isinf(y[1]) && y[1] > 0, "exp(inf) = %g", y[1]);
    TH_CHECK(isnan(y[2]), "exp(nan) = %g", y[2]);
    TH_CHECK(y[3] == 0.0f && y[4] == 0.0f, "exp(-104) = %g, exp(-1000) = %g", y[3], y[4]);
    TH_CHECK(ulp_error(y[5], exp((double)x[5])) <= 1.5 && !isinf(y[5]), "exp(88.72) = %g", y[5]);
    TH_CHECK(isinf(y[6]) && isinf(y[7]), "exp(88.73) = %g, exp(1000) = %g", y[6], y[7]);
    TH_CHECK(y[8] == 1.0f, "exp(0) = %.9g", y[8]);
    TH_CHECK(ulp_error(y[9], exp(1.0)) <= 1.0, "exp(1) = %.9g", y[9]);
    /* every size, offset and in-place, and an element's value does not depend
       on its position (main loop or tail) */
    for (i = 0; i < N_SIZES; i++) {
        size_t n = size_at(i), j;
        int off, bad = 0, moved = 0, inplace = 0;
        moexc_rng rng;
        moexc_rng_seed(&rng, 100 + (uint64_t)i);
        for (off = 0; off < 2; off++) {
            buf a = buf_make(n, off), b = buf_make(n, off);
            fill_normal(a.p, n, &rng, 20.0f);
            moexc_exp(b.p, a.p, n);
            for (j = 0; j < n; j++) {
                float one;
                bad += !(ulp_error(b.p[j], exp((double)a.p[j])) <= 1.5);
                moexc_exp(&one, a.p + j, 1);
                moved += !same_bits(one, b.p[j]);
            }
            moexc_exp(a.p, a.p, n);
            inplace += memcmp(a.p, b.p, n * sizeof(float)) != 0;
            buf_free(&a); buf_free(&b);
        }
        TH_CHECK(bad == 0 && moved == 0 && inplace == 0, "exp n=%zu: %d inaccurate, %d position-dependent, %d in-place",
                 n, bad, moved, inplace);
    }
}

static void test_softmax(void)
{
    int k, off;
    moexc_rng rng;
    moexc_rng_seed(&rng, 4);
    for (k = 0; k < N_SIZES; k++)
        for (off = 0; off < 2; off++) {
            const int rows = 3;
            int cols = (int)size_at(k), r, j, bad = 0, badsum = 0, inplace;
            size_t n = (size_t)rows * (size_t)cols;
            buf x = buf_make(n, off), y = buf_make(n, off);
            fill_normal(x.p, n, &rng, 4.0f);
            for (j = 0; j < cols; j++) x.p[2 * cols + j] += 1000.0f;   /* max subtraction must save this row */
            if (cols > 1) x.p[cols + cols / 2] = -INFINITY;               /* a masked entry */
            moexc_softmax_rows(y.p, x.p, rows, cols);
            for (r = 0; r < rows; r++) {
                const float *xr = x.p + (size_t)r * cols;
                const float *yr = y.p + (size_t)r * cols;
                double m = -INFINITY, s = 0, ys = 0;
                for (j = 0; j < cols; j++) m = xr[j] > m ? xr[j] : m;
                for (j = 0; j < cols; j++) s += exp((double)xr[j] - m);
                for (j = 0; j < cols; j++) {
                    double ref = exp((double)xr[j] - m) / s;
                    double cond = isinf(xr[j]) ? 0.0 : 0.5 * fabs(xr[j] - m);
                    bad += !(fabs(yr[j] - ref) <= (4.0 + sqrt((double)cols) + cond) * EPS * ref + 1e-30);
                    ys += yr[j];
                }
                badsum += !(fabs(ys - 1.0) <= 1e-5);
            }
            TH_CHECK(bad == 0 && badsum == 0, "softmax cols=%d off=%d: %d entries, %d row sums wrong",
                     cols, off, bad, badsum);
            if (cols > 1) TH_CHECK(y.p[cols + cols / 2] == 0.0f, "masked entry got %g", y.p[cols + cols / 2]);
            moexc_softmax_rows(x.p, x.p, rows, cols);
            inplace = memcmp(x.p, y.p, n * sizeof(float));
            TH_CHECK(inplace == 0, "softmax in place differs, cols=%d", cols);
            buf_free(&x); buf_free(&y);
        }
    {   /* a single column is exactly 1 */
        float x1[2] = { -3.0f, 7.0f }, y1[2];
        moexc_softmax_rows(y1, x1, 2, 1);
        TH_CHECK(y1[0] == 1.0f && y1[1] == 1.0f, "softmax of one column: %g %g", y1[0], y1[1]);
    }
}

static double silu_ref(double x) { return x / (1.0 + exp(-x)); }

static void test_silu(void)
{
    int k, off;
    moexc_rng rng;
    moexc_rng_seed(&rng, 5);
    for (k = 0; k < N_SIZES; k++)
        for (off = 0; off < 2; off++) {
            size_t n = size_at(k), i;
            int bad = 0, badg = 0, inplace = 0;
            buf x = buf_make(n, off), dy = buf_make(n, off), y = buf_make(n, off), dx = buf_make(n, off);
            fill_normal(x.p, n, &rng, 6.0f);
            fill_normal(dy.p, n, &rng, 1.0f);
            if (n > 2) { x.p[0] = -100.0f; x.p[1] = 100.0f; }
            moexc_silu(y.p, x.p, n);
            moexc_silu_backward(dx.p, x.p, dy.p, n);
            for (i = 0; i < n; i++) {
                double xi = x.p[i], s = 1.0 / (1.0 + exp(-xi));
                double ref = silu_ref(xi);
                double gref = dy.p[i] * s * (1.0 + xi * (1.0 - s));
                bad += !(fabs(y.p[i] - ref) <= 6e-7 * fabs(ref) + 1e-30);
                badg += !(fabs(dx.p[i] - gref) <= 1e-6 * fabs(dy.p[i]) * s * (1.0 + fabs(xi) * (1.0 - s)) + 1e-30);
            }
            TH_CHECK(bad == 0, "silu n=%zu off=%d: %d wrong", n, off, bad);
            TH_CHECK(badg == 0, "silu_backward n=%zu off=%d: %d wrong", n, off, badg);
            /* in place: silu(x) into x; silu_backward into dy (dx aliases dy) */
            {
                buf t = buf_make(n, off);
                memcpy(t.p, x.p, n * sizeof(float));
                moexc_silu(t.p, t.p, n);
                inplace += memcmp(t.p, y.p, n * sizeof(float)) != 0;
                moexc_silu_backward(dy.p, x.p, dy.p, n);
                inplace += memcmp(dy.p, dx.p, n * sizeof(float)) != 0;
                buf_free(&t);
            }
            TH_CHECK(inplace == 0, "silu in place n=%zu: %d differ", n, inplace);
            buf_free(&x); buf_free(&dy); buf_free(&y); buf_free(&dx);
        }
    {   /* silu_backward is the derivative of silu: central differences in double */
        const float xs[6] = { -6.0f, -1.2785f, -0.5f, 0.0f, 0.7f, 4.0f };
        float ones[6] = { 1, 1, 1, 1, 1, 1 }, g[6];
        int i;
        moexc_silu_backward(g, xs, ones, 6);
        for (i = 0; i < 6; i++) {
            double h = 1e-5, fd = (silu_ref(xs[i] + h) - silu_ref(xs[i] - h)) / (2 * h);
            TH_CHECK(fabs(g[i] - fd) <= 1e-6 + 1e-5 * fabs(fd), "silu'(%g) = %.9g, central difference %.9g", xs[i], g[i], fd);
        }
    }
}

static void test_rmsnorm(void)
{
    int k, off;
    moexc_rng rng;
    moexc_rng_seed(&rng, 6);
    for (k = 0; k < N_SIZES; k++)
        for (off = 0; off < 2; off++) {
            const int rows = 3;
            const float eps = 1e-6f;
            int cols = (int)size_at(k), r, j, bad = 0, badinv = 0;
            size_t n = (size_t)rows * (size_t)cols;
            buf x = buf_make(n, off), y = buf_make(n, off), g = buf_make((size_t)cols, off);
            float inv[3];
            fill_normal(x.p, n, &rng, 2.0f);
            for (j = 0; j < cols; j++) { x.p[j] *= 1e-3f; g.p[j] = 1.0f + 0.5f * moexc_rng_normal(&rng); }
            for (j = 0; j < cols; j++) x.p[2 * cols + j] = 0.0f;     /* an all-zero row: y = 0 */
            moexc_rmsnorm_rows(y.p, inv, x.p, g.p, rows, cols, eps);
            for (r = 0; r < rows; r++) {
                const float *xr = x.p + (size_t)r * cols;
                double ss = 0, iref;
                for (j = 0; j < cols; j++) ss += (double)xr[j] * xr[j];
                iref = 1.0 / sqrt(ss / cols + (double)eps);
                badinv += !(fabs(inv[r] - iref) <= 1e-6 * iref);
                for (j = 0; j < cols; j++) {
                    double ref = (double)g.p[j] * xr[j] * iref;
                    bad += !(fabs(y.p[(size_t)r * cols + j] - ref) <= 2e-6 * fabs(ref) + 1e-30);
                }
            }
            TH_CHECK(bad == 0 && badinv == 0, "rmsnorm cols=%d off=%d: %d y, %d inv_rms wrong", cols, off, bad, badinv);
            {   /* in place, without inv_rms: same bits */
                buf t = buf_make(n, off);
                memcpy(t.p, x.p, n * sizeof(float));
                moexc_rmsnorm_rows(t.p, NULL, t.p, g.p, rows, cols, eps);
                TH_CHECK(memcmp(t.p, y.p, n * sizeof(float)) == 0, "rmsnorm in place differs, cols=%d", cols);
                buf_free(&t);
            }
            buf_free(&x); buf_free(&y); buf_free(&g);
        }
}

int main(void)
{
    TH_RUN(test_backend_reported);
    TH_RUN(test_dot_sum);
    TH_RUN(test_max);
    TH_RUN(test_elementwise_exact);
    TH_RUN(test_exp_accuracy);
    TH_RUN(test_exp_special);
    TH_RUN(test_softmax);
    TH_RUN(test_silu);
    TH_RUN(test_rmsnorm);
    return th_summary();
}
