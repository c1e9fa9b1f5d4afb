/* tests/fuzz_xc.c - libFuzzer harness for the crosscoder reader: inference
   files and training checkpoints (moexc_xc_load). Every input is rejected
   with a message naming the file, or loads into a crosscoder whose
   parameters, threshold, moments and counters are in range and which
   encodes and decodes a pair. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("xc", data, size);
    moexc_xc *xc = NULL;
    moexc_error err;
    size_t j;
    if (moexc_xc_load(&xc, path, &err) != MOEXC_OK) {
        if (xc) abort();
        fuzz_check_message(&err, path);
        return 0;
    }
    for (j = 0; j < xc->n_params; j++)
        if (!isfinite(xc->params[j]) || !isfinite(xc->adam_m[j]) || !(xc->adam_v[j] >= 0.0f) || !isfinite(xc->adam_v[j]))
            abort();
    for (j = 0; j < (size_t)xc->F; j++)
        if (xc->since_fired[j] < 0) abort();
    if (!isfinite(xc->threshold)) abort();
    {
        size_t da = (size_t)xc->d[0], db = (size_t)xc->d[1], F = (size_t)xc->F;
        float *x = (float *)calloc(2 * (da + db) + 2 * F, sizeof(float));
        for (j = 0; j < 2 * (da + db); j++) x[j] = (float)((int)(j % 7) - 3) * 0.25f;
        if (moexc_xc_encode(xc, x, x + 2 * da, 2, x + 2 * (da + db), &err) != MOEXC_OK) abort();
        moexc_xc_decode(xc, x + 2 * (da + db), 2, x, x + 2 * da);
        free(x);
    }
    moexc_xc_free(xc);
    return 0;
}
