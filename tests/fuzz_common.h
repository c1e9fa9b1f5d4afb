/* tests/fuzz_common.h - shared by the libFuzzer harnesses tests/fuzz_*.c
   (not part of `make test`; run with `make fuzz`). Each harness includes the
   implementation itself (MOEXC_STATIC), so it can call the internal readers.

   The readers that take a path get the input through a scratch file, one per
   process: FUZZ_SCRATCH in the environment names its directory (default
   /tmp). A rejected input must leave a message that names that path. */
#ifndef MOEXC_FUZZ_COMMON_H
#define MOEXC_FUZZ_COMMON_H
#define _POSIX_C_SOURCE 200809L
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic ignored "-Wunused-function"
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define MOEXC_STATIC
#define MOEXC_IMPLEMENTATION
#include "../moexc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The scratch path of this process, "<dir>/moexc_fuzz_<tag>_<pid>". */
static const char *fuzz_path(const char *tag)
{
    static char path[512];
    if (!path[0]) {
        const char *dir = getenv("FUZZ_SCRATCH");
        snprintf(path, sizeof(path), "%s/moexc_fuzz_%s_%ld", dir && *dir ? dir : "/tmp", tag, (long)getpid());
    }
    return path;
}

/* Writes the input to the scratch file; aborts if it cannot (a harness bug). */
static const char *fuzz_write(const char *tag, const uint8_t *data, size_t size)
{
    const char *path = fuzz_path(tag);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        fprintf(stderr, "fuzz harness: cannot write %s\n", path);
        abort();
    }
    return path;
}

/* A failed load must name its input at the start of the message. */
static void fuzz_check_message(const moexc_error *err, const char *name)
{
    size_t n = strlen(name);
    if (strncmp(err->message, name, n) != 0 || err->message[n] != ':') {
        fprintf(stderr, "fuzz harness: the message does not name %s: %s\n", name, err->message);
        abort();
    }
}
#endif
