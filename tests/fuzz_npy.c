/* tests/fuzz_npy.c - libFuzzer harness for the .npy reader
   (moexc_npy_read_f32). Every input is rejected with a message naming the
   file, or reads into an array whose length matches the file's data size. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("npy", data, size);
    moexc_error err;
    float *x = NULL;
    size_t n = 0;
    if (moexc_npy_read_f32(path, &x, &n, &err) != MOEXC_OK) {
        if (x || n) abort();
        fuzz_check_message(&err, path);
        return 0;
    }
    if (4 * n > size) abort();
    if (n) x[n - 1] += 0.0f;   /* ASan: the whole array is there */
    moexc_free(x);
    return 0;
}
