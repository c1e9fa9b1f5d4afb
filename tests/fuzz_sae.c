/* tests/fuzz_sae.c - libFuzzer harness for the SAE reader: inference files
   and training checkpoints of the TopK, Switch and Scale SAEs
   (moexc_sae_load). Every input is rejected with a message naming the file,
   or loads into an SAE whose parameters, Adam moments and counters are in
   range, which encodes two rows and takes one training step on them (the
   step may fail, with a message, but must not crash). */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("sae", data, size);
    moexc_sae *s = NULL;
    moexc_error err;
    size_t j;
    if (moexc_sae_load(&s, path, &err) != MOEXC_OK) {
        if (s) abort();
        fuzz_check_message(&err, path);
        return 0;
    }
    for (j = 0; j < s->n_params; j++)
        if (!isfinite(s->params[j]) || !isfinite(s->adam_m[j]) || !(s->adam_v[j] >= 0.0f) || !isfinite(s->adam_v[j]))
            abort();
    for (j = 0; j < (size_t)s->F; j++)
        if (s->since_fired[j] < 0) abort();
    if (!(s->scale > 0.0f) || s->step < 0) abort();
    {
        size_t d = (size_t)s->d, F = (size_t)s->F, A = (size_t)s->act;
        float *x = (float *)calloc(2 * d, sizeof(float)), *xh = (float *)calloc(2 * d, sizeof(float));
        float *z = (float *)calloc(2 * F, sizeof(float));
        int *ex = (int *)calloc(2 * A, sizeof(int));
        if (!x || !xh || !z || !ex) abort();
        for (j = 0; j < 2 * d; j++) x[j] = (float)((int)(j % 7) - 3) * 0.25f;
        if (moexc_sae_encode(s, x, 2, z, ex, xh, &err) != MOEXC_OK) abort();
        for (j = 0; j < 2 * A; j++)
            if (ex[j] < 0 || ex[j] >= s->E) abort();
        (void)moexc_sae_train_step(s, x, 2, NULL, &err);
        free(x); free(xh); free(z); free(ex);
    }
    moexc_sae_free(s);
    return 0;
}
