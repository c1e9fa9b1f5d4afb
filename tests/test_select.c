/* tests/test_select.c - the top-k selection helpers behind TopK, BatchTopK's
   AuxK and the SAEs' routing (moexc__kth_largest_bisect, moexc__select_top,
   moexc__select_top_any) against a reference that sorts: sizes 1..67 and
   255, 1000, 4099, rows offset by one float (unaligned), every k at the
   small sizes and 1, 2, n/2, n-1, n at the big ones; values drawn as
   normals, as a few repeated integers (ties), with signed zeros, denormals,
   +-inf and huge magnitudes. The k-th largest must be exact (it is a value
   of the row), and the kept set exactly the reference's: the values above
   it, then ties to the lowest index. With NaN in a row or -inf as the
   answer the bisection returns NaN, and the callers still keep at most k.
   Built with the implementation (all backends run it: the MOEXC_NO_SIMD
   leg of the portability matrix is the scalar twin). */
#include <stdlib.h>
#define MOEXC_IMPLEMENTATION
#include "../moexc.h"
#include "harness.h"

#define N_SIZES (67 + 3)
static ptrdiff_t size_at(int k)
{
    static const ptrdiff_t big[3] = { 255, 1000, 4099 };
    return k < 67 ? (ptrdiff_t)(k + 1) : big[k - 67];
}

static int desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Values of kind 0..5 (see the top). */
static float draw(moexc_rng *rng, int kind)
{
    static const float special[8] = { 0.0f, -0.0f, 1e-45f, -1e-45f, 3e38f, -3e38f, INFINITY, -INFINITY };
    switch (kind) {
    case 0: return moexc_rng_normal(rng);
    case 1: return (float)(int)moexc_rng_below(rng, 4) - 1.0f;                 /* -1, 0, 1, 2 */
    case 2: return moexc_rng_below(rng, 2) ? 0.0f : -0.0f;
    case 3: return moexc_rng_normal(rng) * 1e-39f;                               /* denormals */
    case 4: return moexc_rng_below(rng, 3) ? moexc_rng_normal(rng) : special[moexc_rng_below(rng, 8)];
    default: return moexc_rng_normal(rng) * 1e37f;
    }
}

/* keep_ref[i]: the k largest, ties at the boundary to the lowest index. */
static void reference_keep(const float *v, ptrdiff_t n, ptrdiff_t k, float t, unsigned char *keep_ref)
{
    ptrdiff_t i, greater = 0, need;
    for (i = 0; i < n; i++) greater += v[i] > t;
    need = k - greater;
    for (i = 0; i < n; i++) keep_ref[i] = v[i] > t || (v[i] == t && need-- > 0);
}

static void test_kth_and_keep(void)
{
    moexc_rng rng;
    int s, kind, off, wrong_t = 0, wrong_keep = 0, wrong_pos = 0, cases = 0;
    moexc_rng_seed(&rng, 5);
    for (s = 0; s < N_SIZES; s++)
        for (kind = 0; kind < 6; kind++)
            for (off = 0; off < 2; off++) {
                ptrdiff_t n = size_at(s), i, k, ks[5];
                float *buf = (float *)malloc((size_t)(n + 1) * sizeof(float)), *v = buf + off;
                float *sorted = (float *)malloc((size_t)n * sizeof(float)), *tmp = (float *)malloc((size_t)n * sizeof(float));
                unsigned char *keep = (unsigned char *)malloc((size_t)n), *keep_ref = (unsigned char *)malloc((size_t)n);
                int nk, j;
                if (!buf || !sorted || !tmp || !keep || !keep_ref) { TH_CHECK(0, "out of memory"); return; }
                for (i = 0; i < n; i++) v[i] = draw(&rng, kind);
                memcpy(sorted, v, (size_t)n * sizeof(float));
                qsort(sorted, (size_t)n, sizeof(float), desc);
                nk = 0;
                if (n <= 67) nk = -1;
                else { ks[0] = 1; ks[1] = 2; ks[2] = n / 2; ks[3] = n - 1; ks[4] = n; nk = 5; }
                for (j = 0; nk < 0 ? j < n : j < nk; j++) {
                    float t, want;
                    ptrdiff_t pos = 0;
                    k = nk < 0 ? j + 1 : ks[j];
                    want = sorted[k - 1];
                    t = moexc__kth_largest_bisect(v, n, k);
                    cases++;
                    if (want == -INFINITY && t != t) t = want;     /* said so: the callers fall back */
                    if (!(t == want)) {
                        if (wrong_t++ < 3) printf("     n %ld kind %d k %ld: k-th largest %g, want %g\n", (long)n, kind, (long)k, t, want);
                        continue;
                    }
                    reference_keep(v, n, k, want, keep_ref);
                    moexc__select_top_any(v, n, k, keep, tmp);
                    if (memcmp(keep, keep_ref, (size_t)n) != 0 && wrong_keep++ < 3)
                        printf("     n %ld kind %d k %ld: select_top_any kept another set\n", (long)n, kind, (long)k);
                    /* positive only: the k largest of the positive values */
                    for (i = 0; i < n; i++) pos += v[i] > 0.0f;
                    if (pos > k) {
                        float got = moexc__select_top(v, n, k, keep, tmp);
                        if (!(got == want) || memcmp(keep, keep_ref, (size_t)n) != 0) {
                            if (wrong_pos++ < 3) printf("     n %ld kind %d k %ld: select_top returned %g, want %g\n", (long)n, kind, (long)k, got, want);
                        }
                    }
                }
                free(buf); free(sorted); free(tmp); free(keep); free(keep_ref);
            }
    printf("     %d (row, k) cases\n", cases);
    TH_CHECK(wrong_t == 0, "%d wrong k-th largest", wrong_t);
    TH_CHECK(wrong_keep == 0, "%d wrong select_top_any sets", wrong_keep);
    TH_CHECK(wrong_pos == 0, "%d wrong select_top results", wrong_pos);
}

/* The bisection cannot place NaN, nor an answer of -inf (keys beyond it
   are NaN): it says so with NaN, and the callers fall back to quickselect. */
static void test_nan_and_minus_inf(void)
{
    static const float minus_inf[6] = { 3.0f, -INFINITY, 1.0f, -INFINITY, 2.0f, -INFINITY };
    /* the last three: the rows of the fuzz_sae finding (tests/test_readers.c), padded */
    static const float nan_rows[5][9] = { { NAN, NAN, NAN, 1.0f, NAN, NAN, NAN, NAN, NAN },
                                          { 4.0f, NAN, 3.0f, 2.0f, NAN, 1.0f, 0.5f, NAN, 0.25f },
                                          { NAN, 5, 4, 3, 2, 1, 0, -1, -2 }, { 1, NAN, 2, NAN, 3, NAN, 4, NAN, 5 },
                                          { 9, 8, 7, 6, 5, 4, 3, NAN, 2 } };
    unsigned char keep[9];
    float tmp[9], t;
    int k, i, r, most = 0;
    t = moexc__kth_largest_bisect(minus_inf, 6, 3);
    TH_CHECK(t == 1.0f, "3rd largest with -inf present: %g", t);
    t = moexc__kth_largest_bisect(minus_inf, 6, 4);
    TH_CHECK(t != t, "4th largest is -inf: bisection says %g, want NaN", t);
    moexc__select_top_any(minus_inf, 6, 5, keep, tmp);
    for (i = 0, k = 0; i < 6; i++) k += keep[i];
    TH_CHECK(k == 5 && keep[1] && keep[3] && !keep[5], "select_top_any k 5 with -inf: kept %d, ties to the lowest index", k);
    t = moexc__kth_largest_bisect(nan_rows[0], 9, 2);
    TH_CHECK(t != t, "2nd largest of one number and NaNs: %g, want NaN", t);
    t = moexc__kth_largest_bisect(nan_rows[1], 9, 3);
    TH_CHECK(t == 2.0f, "3rd largest ignoring NaN: %g", t);
    for (r = 0; r < 5; r++)
        for (k = 1; k <= 9; k++) {
            int kept = 0;
            moexc__select_top_any(nan_rows[r], 9, k, keep, tmp);
            for (i = 0; i < 9; i++) kept += keep[i];
            if (kept > k && kept - k > most) most = kept - k;
            kept = 0;
            moexc__select_top(nan_rows[r], 9, k, keep, tmp);
            for (i = 0; i < 9; i++) kept += keep[i];
            if (kept > k && kept - k > most) most = kept - k;
        }
    TH_CHECK(most == 0, "kept %d more than k with NaNs present", most);
}

int main(void)
{
    TH_RUN(test_kth_and_keep);
    TH_RUN(test_nan_and_minus_inf);
    return th_summary();
}
