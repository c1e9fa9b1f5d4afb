/* tests/fuzz_tokens.c - libFuzzer harness for the token-stream file reader
   (not part of `make test`; run with `make fuzz`). Every input is either
   rejected with a message naming the input, leaving the struct empty, or
   loads into a stream whose ids and labels are in range. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moexc_tokens t;
    moexc_error err;
    size_t i;
    if (size >= 36) {   /* let the fuzzer past the checksum half of the time */
        uint8_t *copy = (uint8_t *)malloc(size);
        memcpy(copy, data, size);
        if (data[0] & 1) moexc__put_u32le(copy + size - 4, moexc__crc32(0, copy, size - 4));
        if (moexc_tokens_load_memory(&t, copy, size, "fuzz", &err) == MOEXC_OK) {
            for (i = 0; i < t.n; i++)
                if (t.tokens[i] >= t.vocab_size || t.domains[i] >= t.n_domains) abort();
            moexc_tokens_free(&t);
        } else if (t.tokens || strncmp(err.message, "fuzz: ", 6) != 0) {
            abort();
        }
        free(copy);
        return 0;
    }
    if (moexc_tokens_load_memory(&t, data, size, "fuzz", &err) == MOEXC_OK) abort();
    return 0;
}
