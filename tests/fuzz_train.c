/* tests/fuzz_train.c - libFuzzer harness for the training-checkpoint reader
   (moexc_trainer_resume). The checkpoint is resumed against a fixed small
   token stream, the one tests/make_fuzz_seeds.c trains its seed checkpoint on.
   Every input is rejected with a message naming the file, or resumes into a
   trainer whose model weights and optimiser moments are finite. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static moexc_tokens tokens;   /* the harness's own state, built once */
    const char *path;
    moexc_trainer *t = NULL;
    moexc_model *m = NULL;
    moexc_error err;
    size_t i;
    if (!tokens.n && moexc_corpus_builtin(&tokens, 600, 1, &err) != MOEXC_OK) abort();
    path = fuzz_write("train", data, size);
    if (moexc_trainer_resume(&t, &m, path, &tokens, &err) != MOEXC_OK) {
        if (t || m) abort();
        fuzz_check_message(&err, path);
        return 0;
    }
    for (i = 0; i < moexc_model_num_params(m); i++)
        if (!isfinite(moexc_model_params(m)[i]) || !isfinite(t->moments[i]) ||
            !isfinite(t->moments[t->n_params + i]) || t->moments[t->n_params + i] < 0.0f)
            abort();
    moexc_trainer_free(t);
    moexc_model_free(m);
    return 0;
}
