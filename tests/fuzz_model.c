/* tests/fuzz_model.c - libFuzzer harness for the model-file reader (the
   safetensors image through the config and shape checks into a model).
   Every input is rejected with a message naming it, or loads into a model
   whose weights are finite and which runs a forward pass. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moexc_st_file *f = NULL;
    moexc_model *m = NULL;
    moexc_error err;
    size_t i;
    if (moexc_st_open_memory(&f, data, size, "fuzz", &err) != MOEXC_OK) return 0;
    if (moexc__model_load_from(f, "fuzz", &m, &err) != MOEXC_OK) {
        if (m) abort();
        fuzz_check_message(&err, "fuzz");
    } else {
        const moexc_model_config *c = moexc_model_get_config(m);
        uint16_t tok[2];
        for (i = 0; i < moexc_model_num_params(m); i++)
            if (!isfinite(moexc_model_params(m)[i])) abort();
        tok[0] = 0;
        tok[1] = (uint16_t)(c->vocab_size - 1);
        if (moexc_model_forward(m, tok, NULL, 1, c->context >= 2 ? 2 : 1, NULL, &err) != MOEXC_OK) abort();
        moexc_model_free(m);
    }
    moexc_st_close(f);
    return 0;
}
