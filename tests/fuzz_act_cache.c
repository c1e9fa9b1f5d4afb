/* tests/fuzz_act_cache.c - libFuzzer harness for the activation-cache reader.
   Every input is rejected at open with a message naming the file, or is read
   to the end in uneven blocks: each block is finite, and the last one either
   passes the CRC or fails with a message naming the file. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path;
    moexc_act_cache c;
    moexc_error err;
    float *xa, *xb;
    int n, i, max = 7;
    uint8_t *copy = NULL;
    if (size >= 36 && (data[size - 1] & 1)) {   /* let the fuzzer past the checksum half of the time */
        copy = (uint8_t *)malloc(size);
        memcpy(copy, data, size);
        moexc__put_u32le(copy + size - 4, moexc__crc32(0, copy + 32, size - 36));
        data = copy;
    }
    path = fuzz_write("act", data, size);
    free(copy);
    if (moexc_act_cache_open(&c, path, &err) != MOEXC_OK) {
        if (c.file || c.scratch) abort();
        fuzz_check_message(&err, path);
        return 0;
    }
    xa = (float *)malloc((size_t)max * (size_t)c.d[0] * sizeof(float));
    xb = (float *)malloc((size_t)max * (size_t)c.d[1] * sizeof(float));
    for (;;) {
        moexc_status st = moexc_act_cache_read(&c, xa, xb, max, &n, &err);
        if (st != MOEXC_OK) { fuzz_check_message(&err, path); break; }
        if (n == 0) break;
        for (i = 0; i < n * c.d[0]; i++) if (!isfinite(xa[i])) abort();
        for (i = 0; i < n * c.d[1]; i++) if (!isfinite(xb[i])) abort();
        max = max == 7 ? 3 : 7;
    }
    free(xa);
    free(xb);
    if (moexc_act_cache_close(&c, &err) != MOEXC_OK) abort();
    return 0;
}
