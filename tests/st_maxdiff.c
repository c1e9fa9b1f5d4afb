/* tests/st_maxdiff.c - compare the F32 tensors of two safetensors files
   (for tests/test_mpi.sh): prints
     max_abs_diff X tensors N identical I worst NAME
   where I counts the tensors equal bit for bit. Tensors missing from the
   second file or of another shape are an error (exit 1). */
#include "moexc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

int main(int argc, char **argv)
{
    moexc_st_file *f[2] = {NULL, NULL};
    moexc_error err;
    double worst = 0.0;
    const char *worst_name = "-";
    int i, k, n = 0, same = 0, rc = 1;
    if (argc != 3) { fprintf(stderr, "usage: st_maxdiff A.safetensors B.safetensors\n"); return 2; }
    for (k = 0; k < 2; k++)
        if (moexc_st_open(&f[k], argv[1 + k], &err)) { fprintf(stderr, "st_maxdiff: %s\n", err.message); goto done; }
    for (i = 0; i < moexc_st_count(f[0]); i++) {
        const char *name = moexc_st_name(f[0], i);
        int ndim, d;
        int64_t shape[8], len = 1, j;
        float *a, *b;
        const char *dt = moexc_st_dtype(f[0], name);
        if (!dt || strcmp(dt, "F32") != 0) continue;
        if (moexc_st_shape(f[0], name, &ndim, shape, &err)) { fprintf(stderr, "st_maxdiff: %s\n", err.message); goto done; }
        for (d = 0; d < ndim; d++) len *= shape[d];
        a = (float *)malloc((size_t)(len ? len : 1) * sizeof(float));
        b = (float *)malloc((size_t)(len ? len : 1) * sizeof(float));
        if (!a || !b || moexc_st_read_f32(f[0], name, a, ndim, shape, &err) || moexc_st_read_f32(f[1], name, b, ndim, shape, &err)) {
            fprintf(stderr, "st_maxdiff: %s: %s\n", name, a && b ? err.message : "out of memory");
            free(a); free(b);
            goto done;
        }
        for (j = 0; j < len; j++) {
            double dd = fabs((double)a[j] - (double)b[j]);
            if (!(dd <= worst)) { worst = dd; worst_name = name; }   /* NaN counts as worst */
        }
        same += memcmp(a, b, (size_t)len * sizeof(float)) == 0;
        n++;
        free(a); free(b);
    }
    printf("max_abs_diff %.3g tensors %d identical %d worst %s\n", worst, n, same, worst_name);
    rc = 0;
done:
    moexc_st_close(f[0]); moexc_st_close(f[1]);
    return rc;
}
