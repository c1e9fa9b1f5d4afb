/* tests/fuzz_safetensors.c - libFuzzer harness for the safetensors reader and
   its JSON parser (not part of `make test`; run with `make fuzz`).

       clang -g -O1 -fsanitize=fuzzer,address,undefined -I. tests/fuzz_safetensors.c -o build/fuzz_safetensors -lm
       ./build/fuzz_safetensors -max_total_time=60 CORPUS_DIR tests/fixtures/data_st_py.safetensors

   Every input must either be rejected with a message or open into a handle
   whose every F32 tensor reads back; ASan and UBSan catch the rest. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moexc_st_file *f = NULL;
    moexc_error err;
    int i;
    if (moexc_st_open_memory(&f, data, size, "fuzz", &err) != MOEXC_OK) {
        if (f != NULL || strncmp(err.message, "fuzz: ", 6) != 0) abort();
        return 0;
    }
    for (i = 0; i < moexc_st_count(f); i++) {
        const char *name = moexc_st_name(f, i);
        int64_t shape[8], count = 1;
        int ndim, d;
        float *buf;
        if (moexc_st_shape(f, name, &ndim, shape, &err) != MOEXC_OK) abort();
        for (d = 0; d < ndim; d++) count *= shape[d];   /* bounded: the data is in the input */
        buf = (float *)malloc((size_t)count * 4 + 4);
        if (strcmp(moexc_st_dtype(f, name), "F32") == 0) {
            if (moexc_st_read_f32(f, name, buf, ndim, shape, &err) != MOEXC_OK) abort();
        } else if (moexc_st_read_f32(f, name, buf, ndim, shape, &err) != MOEXC_ERR_SHAPE) {
            abort();
        }
        free(buf);
    }
    for (i = 0; i < moexc_st_meta_count(f); i++)
        if (!moexc_st_meta(f, moexc_st_meta_key(f, i))) abort();
    moexc_st_close(f);
    return 0;
}
