/* tests/test_readers.c - the readers of untrusted files against hostile
   inputs: the regression tests of issue 14 (each bug found by reading the
   code or by the libFuzzer harnesses tests/fuzz_*.c, rebuilt from its input)
   and the 64-bit offsets; the SAE files of issue 13 held to the same
   standard. Files are made with the library, then edited
   here: a metadata value replaced, one value of a tensor changed, a
   counter tensor stored in the old float32 layout.

   The implementation is compiled in (counting_alloc.h), so the tests reach
   internal helpers and check that no failure path leaks. */
/* gcc's -Wmaybe-uninitialized misfires on the training and crosscoder steps
   once the whole implementation is inlined into this file (not in moexc.o). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "counting_alloc.h"

/* ---- helpers ------------------------------------------------------------- */

/* Copy safetensors file src to dst with edits: metadata key set to value
   (NULL value: dropped), element `index` of tensor `tensor` set to `x`, and
   the I64 tensor `to_f32` (if any) stored as F32 instead. Returns 0 on success. */
static int st_rewrite(const char *src, const char *dst, const char *key, const char *value,
                      const char *tensor, size_t index, double x, const char *to_f32)
{
    moexc_st_file *f = NULL;
    moexc_error err;
    moexc_st_entry ent[256];
    moexc_st_kv kv[128];
    unsigned char is_i64[256];
    void *bufs[256];
    int i, n_kv = 0, found = key == NULL, d;
    if (moexc_st_open(&f, src, &err) != MOEXC_OK || f->n_tensors > 256 || f->n_meta > 127) {
        printf("  st_rewrite: %s: cannot open or too many entries\n", src);
        moexc_st_close(f);
        return 1;
    }
    for (i = 0; i < f->n_meta; i++) {
        kv[n_kv].key = f->meta[2 * i];
        kv[n_kv].value = f->meta[2 * i + 1];
        if (key && strcmp(key, kv[n_kv].key) == 0) { found = 1; if (!value) continue; kv[n_kv].value = value; }
        n_kv++;
    }
    if (!found && value) { kv[n_kv].key = key; kv[n_kv].value = value; n_kv++; }
    for (i = 0; i < f->n_tensors; i++) {
        const moexc__st_tensor *t = &f->tensors[i];
        size_t count = (size_t)(t->end - t->begin) / (size_t)moexc__st_dtypes[t->dtype].size;
        int i64 = strcmp(moexc__st_dtypes[t->dtype].name, "I64") == 0;
        memset(&ent[i], 0, sizeof(ent[i]));
        ent[i].name = t->name;
        ent[i].ndim = t->ndim;
        for (d = 0; d < t->ndim; d++) ent[i].shape[d] = t->shape[d];
        bufs[i] = malloc(8 * count + 8);
        if (i64) moexc__st_read_i64(f, t->name, (int64_t *)bufs[i], t->ndim, t->shape, &err);
        else moexc_st_read_f32(f, t->name, (float *)bufs[i], t->ndim, t->shape, &err);
        if (i64 && to_f32 && strcmp(to_f32, t->name) == 0) {   /* the old layout: whole counts in float32 */
            size_t j;
            float *g = (float *)malloc(4 * count + 4);
            for (j = 0; j < count; j++) g[j] = (float)((int64_t *)bufs[i])[j];
            free(bufs[i]);
            bufs[i] = g;
            i64 = 0;
        }
        if (tensor && strcmp(tensor, t->name) == 0 && index < count) {
            if (i64) ((int64_t *)bufs[i])[index] = (int64_t)x;
            else ((float *)bufs[i])[index] = (float)x;
        }
        is_i64[i] = (unsigned char)i64;
        ent[i].data = (const float *)bufs[i];
    }
    d = moexc__st_save_typed(dst, ent, is_i64, f->n_tensors, kv, n_kv, &err) != MOEXC_OK;
    if (d) printf("  st_rewrite: %s\n", err.message);
    for (i = 0; i < f->n_tensors; i++) free(bufs[i]);
    moexc_st_close(f);
    return d;
}

static int starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

/* tmp_path() returns one static buffer: two paths need their own copies. */
static const char *tmp_path2(const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", tmp_path(name));
    return buf;
}

/* A small BatchTopK crosscoder (d 8 + 8, F 16, 4 shared) after 3 steps, saved
   as a training checkpoint (training = 1) or an inference file. */
static moexc_xc *small_xc(const char *path, int training)
{
    moexc_xc_options xo;
    moexc_xc *xc = NULL;
    moexc_error err;
    moexc_rng rng;
    float xa[64 * 8], xb[64 * 8];
    int j;
    moexc_rng_seed(&rng, 3);
    for (j = 0; j < 64 * 8; j++) { xa[j] = moexc_rng_normal(&rng); xb[j] = moexc_rng_normal(&rng); }
    memset(&xo, 0, sizeof(xo));
    xo.n_latents = 16; xo.k = 3; xo.n_shared = 4; xo.steps = 10; xo.batch = 16;
    if (moexc_xc_create(&xc, 8, 8, &xo, &err) != MOEXC_OK || moexc_xc_init_from_data(xc, xa, xb, 64, &err) != MOEXC_OK)
        return NULL;
    for (j = 0; j < 3; j++) moexc_xc_train_step(xc, xa + 128 * j, xb + 128 * j, 16, NULL, &err);
    if ((training ? moexc_xc_save_training(xc, path, &err) : moexc_xc_save(xc, path, &err)) != MOEXC_OK) {
        moexc_xc_free(xc);
        return NULL;
    }
    return xc;
}

/* Load path as a crosscoder expecting failure with status want and a message
   that starts with the path and contains `needle`. */
static void expect_xc_fail(const char *path, moexc_status want, const char *needle, const char *what)
{
    moexc_xc *xc = NULL;
    moexc_error err;
    long live = g_live_blocks;
    moexc_status st = moexc_xc_load(&xc, path, &err);
    TH_CHECK(st == want && xc == NULL, "%s: status %s, expected %s (%s)", what, moexc_status_name(st),
             moexc_status_name(want), st ? err.message : "loaded");
    if (st != MOEXC_OK) {
        TH_CHECK(starts_with(err.message, path), "%s: message does not name the file: %s", what, err.message);
        TH_CHECK(strstr(err.message, needle) != NULL, "%s: message lacks '%s': %s", what, needle, err.message);
    }
    moexc_xc_free(xc);
    TH_CHECK(g_live_blocks == live, "%s: %ld blocks leaked", what, g_live_blocks - live);
}

/* ---- 64-bit offsets ---------------------------------------------------------- */

/* Issue 14: long/ftell offsets rejected files over 2 GiB on Windows and
   32-bit hosts. A sparse 2^31 + 44-byte activation cache (2^28 pairs of
   width 1 + 1) must open, measure right and read its first pairs. */
static void test_offsets_beyond_2gib(void)
{
    const char *path = tmp_path("readers_big.cache");
    uint64_t count = UINT64_C(1) << 28;
    int64_t size = 32 + (int64_t)count * 8 + 4;
    unsigned char h[32];
    moexc_act_cache c;
    moexc_error err;
    float xa[4], xb[4];
    int n = -1;
    FILE *f = fopen(path, "wb");
    TH_CHECK(f != NULL, "cannot create %s", path);
    if (!f) return;
    moexc__act_header(h, 1, 1, count);
    fwrite(h, 1, sizeof(h), f);
    TH_CHECK(moexc__fseek64(f, size - 1, SEEK_SET) == 0, "seek to %lld", (long long)(size - 1));
    fputc(0, f);   /* a sparse file: the pairs read as zeros */
    TH_CHECK(moexc__ftell64(f) == size, "ftell64 %lld, expected %lld", (long long)moexc__ftell64(f), (long long)size);
    TH_CHECK(moexc__file_size64(f) == size, "file size %lld", (long long)moexc__file_size64(f));
    fclose(f);
    TH_CHECK(moexc_act_cache_open(&c, path, &err) == MOEXC_OK, "open: %s", err.message);
    if (c.file) {
        TH_CHECK(c.count == count, "count %llu", (unsigned long long)c.count);
        TH_CHECK(moexc_act_cache_read(&c, xa, xb, 4, &n, &err) == MOEXC_OK && n == 4 && xa[3] == 0.0f,
                 "read: n %d (%s)", n, err.message);
        moexc_act_cache_close(&c, &err);
    }
    remove(path);
}

/* ---- activation caches ------------------------------------------------------- */

static void write_cache(const char *path, const float *xa, const float *xb, int n)
{
    moexc_act_cache c;
    moexc_error err;
    if (moexc_act_cache_create(&c, path, 2, 3, &err) != MOEXC_OK || moexc_act_cache_append(&c, xa, xb, n, &err) != MOEXC_OK ||
        moexc_act_cache_close(&c, &err) != MOEXC_OK)
        printf("  cannot write %s: %s\n", path, err.message);
}

/* A NaN activation in a cache with a valid CRC is rejected with the pair
   named; a nonzero reserved field and an empty cache with a bad CRC too. */
static void test_act_cache_hostile(void)
{
    const char *path = tmp_path("readers_nan.cache");
    float xa[2 * 5], xb[3 * 5], ra[2 * 5], rb[3 * 5];
    moexc_act_cache c;
    moexc_error err;
    unsigned char *buf;
    size_t size;
    int i, n;
    moexc_status st;
    long live = g_live_blocks;
    for (i = 0; i < 10; i++) xa[i] = (float)i;
    for (i = 0; i < 15; i++) xb[i] = (float)-i;
    xb[3 * 3 + 1] = (float)NAN;   /* pair 3, value 1 of model B */
    write_cache(path, xa, xb, 5);
    TH_CHECK(moexc_act_cache_open(&c, path, &err) == MOEXC_OK, "open: %s", err.message);
    st = moexc_act_cache_read(&c, ra, rb, 5, &n, &err);
    TH_CHECK(st == MOEXC_ERR_NUMERIC && starts_with(err.message, path) && strstr(err.message, "pair 3") &&
             strstr(err.message, "model B"), "NaN pair: %s: %s", moexc_status_name(st), err.message);
    moexc_act_cache_close(&c, &err);

    xb[3 * 3 + 1] = 1.0f;
    write_cache(path, xa, xb, 5);
    buf = slurp(path, &size);
    TH_CHECK(buf != NULL && size == 32 + 5 * 20 + 4, "size %lu", (unsigned long)size);
    if (!buf) return;
    buf[20] = 1;   /* the reserved field */
    { FILE *f = fopen(path, "wb"); fwrite(buf, 1, size, f); fclose(f); }
    st = moexc_act_cache_open(&c, path, &err);
    TH_CHECK(st == MOEXC_ERR_FORMAT && strstr(err.message, "reserved"), "reserved: %s", err.message);
    free(buf);

    write_cache(path, xa, xb, 0);   /* an empty cache: its CRC is checked at open */
    buf = slurp(path, &size);
    TH_CHECK(buf != NULL && size == 36, "empty size %lu", (unsigned long)size);
    if (!buf) return;
    TH_CHECK(moexc_act_cache_open(&c, path, &err) == MOEXC_OK, "empty cache: %s", err.message);
    moexc_act_cache_close(&c, &err);
    buf[35] = 0x5A;
    { FILE *f = fopen(path, "wb"); fwrite(buf, 1, size, f); fclose(f); }
    st = moexc_act_cache_open(&c, path, &err);
    TH_CHECK(st == MOEXC_ERR_CHECKSUM && starts_with(err.message, path), "empty cache, bad CRC: %s", err.message);
    free(buf);
    TH_CHECK(g_live_blocks == live, "%ld blocks leaked", g_live_blocks - live);
    remove(path);
}

/* ---- .npy -------------------------------------------------------------------- */

static void write_npy(const char *path, const char *shape)
{
    char dict[128];
    unsigned char head[10];
    size_t len;
    FILE *f = fopen(path, "wb");
    snprintf(dict, sizeof(dict), "{'descr': '<f4', 'fortran_order': False, 'shape': (%s,), }\n", shape);
    len = strlen(dict);
    memcpy(head, "\x93NUMPY\x01\x00", 8);
    head[8] = (unsigned char)(len & 0xFF); head[9] = (unsigned char)(len >> 8);
    fwrite(head, 1, 10, f);
    fwrite(dict, 1, len, f);
    fclose(f);
}

/* Issue 14: a shape whose byte count overflows was reported as out of
   memory. 2^62 elements (4 x 2^62 bytes wraps size_t to 0, matching an
   empty data section) and a 20-digit count must be invalid shapes, named. */
static void test_npy_shape_overflow(void)
{
    static const char *const shapes[3] = { "4611686018427387904", "99999999999999999999", "1152921504606846976" };
    const char *path = tmp_path("readers_big.npy");
    float *x = NULL;
    size_t n = 7;
    moexc_error err;
    int i;
    for (i = 0; i < 3; i++) {
        moexc_status st;
        write_npy(path, shapes[i]);
        st = moexc_npy_read_f32(path, &x, &n, &err);
        TH_CHECK(st == MOEXC_ERR_FORMAT && x == NULL && n == 0, "shape (%s,): %s: %s", shapes[i], moexc_status_name(st), err.message);
        TH_CHECK(starts_with(err.message, path) && strstr(err.message, "invalid shape"), "shape (%s,): %s", shapes[i], err.message);
    }
    write_npy(path, "0");   /* an empty array still reads */
    TH_CHECK(moexc_npy_read_f32(path, &x, &n, &err) == MOEXC_OK && n == 0, "empty array: %s", err.message);
    moexc_free(x);
    remove(path);
}

/* ---- metadata integers ------------------------------------------------------- */

/* Issue 14: strtoull overflow was ignored (saturated to 2^64 - 1), and it
   accepted "-1", " 7" and "+5". */
static void test_meta_integers(void)
{
    static const struct { const char *s; int ok_u; uint64_t u; int ok_i; int64_t i; } cases[] = {
        { "0", 1, 0, 1, 0 }, { "18446744073709551615", 1, UINT64_MAX, 0, 0 }, { "18446744073709551616", 0, 0, 0, 0 },
        { "99999999999999999999999", 0, 0, 0, 0 }, { "-1", 0, 0, 1, -1 }, { " 7", 0, 0, 0, 0 }, { "+5", 0, 0, 0, 0 },
        { "1e5", 0, 0, 0, 0 }, { "", 0, 0, 0, 0 }, { "-", 0, 0, 0, 0 }, { "9223372036854775807", 1, UINT64_C(9223372036854775807), 1, INT64_MAX },
        { "-9223372036854775808", 0, 0, 1, INT64_MIN }, { "-9223372036854775809", 0, 0, 0, 0 }, { "12a", 0, 0, 0, 0 } };
    moexc_st_file f;
    const char *kv[2];
    moexc_error err;
    size_t k;
    memset(&f, 0, sizeof(f));
    kv[0] = "key";
    f.meta = kv; f.n_meta = 1;
    for (k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        uint64_t u = 12345;
        int64_t v = 12345;
        moexc_status su, si;
        kv[1] = cases[k].s;
        su = moexc__st_meta_u64(&f, "file", "key", &u, &err);
        TH_CHECK((su == MOEXC_OK) == cases[k].ok_u && (!cases[k].ok_u || u == cases[k].u), "u64 \"%s\": %s, %llu",
                 cases[k].s, moexc_status_name(su), (unsigned long long)u);
        if (su) TH_CHECK(starts_with(err.message, "file: metadata 'key'"), "u64 message: %s", err.message);
        si = moexc__st_meta_i64(&f, "file", "key", INT64_MIN, INT64_MAX, &v, &err);
        TH_CHECK((si == MOEXC_OK) == cases[k].ok_i && (!cases[k].ok_i || v == cases[k].i), "i64 \"%s\": %s, %lld",
                 cases[k].s, moexc_status_name(si), (long long)v);
    }
    kv[1] = "11";
    TH_CHECK(moexc__st_meta_i64(&f, "file", "key", 0, 10, &(int64_t){0}, &err) == MOEXC_ERR_FORMAT &&
             strstr(err.message, "outside [0, 10]"), "range: %s", err.message);
}

/* ---- crosscoder files -------------------------------------------------------- */

/* Issue 14: the dead-latent counters were saved as float32 (inexact past
   2^24 tokens) and cast back to int64 unchecked. They are I64 now, exact. */
static void test_xc_counters_exact(void)
{
    const char *path = tmp_path("readers_xc.safetensors");
    moexc_xc *xc = small_xc(path, 1), *back = NULL;
    moexc_st_file *f = NULL;
    moexc_error err;
    int j, same = 1;
    TH_CHECK(xc != NULL, "small crosscoder");
    if (!xc) return;
    xc->since_fired[0] = (INT64_C(1) << 24) + 1;
    xc->since_fired[1] = (INT64_C(1) << 40) + 3;
    xc->since_fired[15] = INT64_C(9000000000000000001);
    xc->threshold_count = (INT64_C(1) << 53) + 1;   /* metadata integers are exact too */
    TH_CHECK(moexc_xc_save_training(xc, path, &err) == MOEXC_OK, "save: %s", err.message);
    TH_CHECK(moexc_st_open(&f, path, &err) == MOEXC_OK && strcmp(moexc_st_dtype(f, "train.since_fired"), "I64") == 0,
             "train.since_fired is stored as %s", f ? moexc_st_dtype(f, "train.since_fired") : "?");
    moexc_st_close(f);
    TH_CHECK(moexc_xc_load(&back, path, &err) == MOEXC_OK, "load: %s", err.message);
    if (back) {
        for (j = 0; j < 16; j++) same &= back->since_fired[j] == xc->since_fired[j];
        TH_CHECK(same, "counters differ: %lld %lld %lld", (long long)back->since_fired[0], (long long)back->since_fired[1],
                 (long long)back->since_fired[15]);
        TH_CHECK(back->threshold_count == xc->threshold_count, "threshold_count %lld", (long long)back->threshold_count);
    }
    moexc_xc_free(back);
    /* a negative counter is not a token count */
    TH_CHECK(st_rewrite(path, path, NULL, NULL, "train.since_fired", 2, -5.0, NULL) == 0, "rewrite");
    expect_xc_fail(path, MOEXC_ERR_FORMAT, "train.since_fired[2] = -5", "negative counter");
    moexc_xc_free(xc);
    remove(path);
}

/* Checkpoints from before the I64 counters (float32 since_fired) still
   load; a NaN, fractional or huge float counter (the unchecked cast to
   int64 was undefined behaviour) is rejected. */
static void test_xc_counters_old_f32(void)
{
    char pb[2048], bb[2048];
    const char *path = tmp_path2("readers_xc_old.safetensors", pb, sizeof(pb));
    const char *bad = tmp_path2("readers_xc_bad.safetensors", bb, sizeof(bb));
    static const double values[3] = { NAN, 2.5, 1e30 };
    moexc_xc *xc = small_xc(path, 1), *back = NULL;
    moexc_error err;
    int i;
    TH_CHECK(xc != NULL, "small crosscoder");
    if (!xc) return;
    xc->since_fired[4] = 4096;
    moexc_xc_save_training(xc, path, &err);
    TH_CHECK(st_rewrite(path, path, NULL, NULL, NULL, 0, 0.0, "train.since_fired") == 0, "rewrite to F32");
    TH_CHECK(moexc_xc_load(&back, path, &err) == MOEXC_OK, "old F32 counters: %s", err.message);
    if (back) TH_CHECK(back->since_fired[4] == 4096, "counter %lld", (long long)back->since_fired[4]);
    moexc_xc_free(back);
    for (i = 0; i < 3; i++) {
        TH_CHECK(st_rewrite(path, bad, NULL, NULL, "train.since_fired", 4, values[i], NULL) == 0, "rewrite");
        expect_xc_fail(bad, MOEXC_ERR_FORMAT, "is not a token count", "bad float counter");
    }
    moexc_xc_free(xc);
    remove(path);
    remove(bad);
}

/* Issue 14: theta and Adam's moments were not checked for finiteness. */
static void test_xc_nonfinite(void)
{
    char pb[2048], bb[2048];
    const char *path = tmp_path2("readers_xc_nf.safetensors", pb, sizeof(pb));
    const char *bad = tmp_path2("readers_xc_nf_bad.safetensors", bb, sizeof(bb));
    moexc_xc *xc = small_xc(path, 1);
    TH_CHECK(xc != NULL, "small crosscoder");
    if (!xc) return;
    TH_CHECK(st_rewrite(path, bad, NULL, NULL, "threshold", 0, NAN, NULL) == 0, "rewrite");
    expect_xc_fail(bad, MOEXC_ERR_NUMERIC, "threshold (theta)", "NaN theta");
    TH_CHECK(st_rewrite(path, bad, NULL, NULL, "threshold", 0, INFINITY, NULL) == 0, "rewrite");
    expect_xc_fail(bad, MOEXC_ERR_NUMERIC, "threshold (theta)", "infinite theta");
    TH_CHECK(st_rewrite(path, bad, NULL, NULL, "train.adam_m", 7, INFINITY, NULL) == 0, "rewrite");
    expect_xc_fail(bad, MOEXC_ERR_NUMERIC, "train.adam_m[7]", "infinite first moment");
    TH_CHECK(st_rewrite(path, bad, NULL, NULL, "train.adam_v", 9, NAN, NULL) == 0, "rewrite");
    expect_xc_fail(bad, MOEXC_ERR_NUMERIC, "train.adam_v[9]", "NaN second moment");
    TH_CHECK(st_rewrite(path, bad, NULL, NULL, "train.adam_v", 9, -1.0, NULL) == 0, "rewrite");
    expect_xc_fail(bad, MOEXC_ERR_NUMERIC, "train.adam_v[9]", "negative second moment");
    moexc_xc_free(xc);
    remove(path);
    remove(bad);
}

/* Integers in crosscoder metadata are exact: "2.5" latents per token, a
   seed "1e5" (strtoull read 1) and out-of-range values are rejected; huge
   widths in a small file are rejected before anything is allocated; and an
   option the crosscoder rejects is reported with the file's name (found by
   fuzz_xc: the message named no file). */
static void test_xc_metadata(void)
{
    static const struct { const char *key, *value, *needle; moexc_status st; } cases[] = {
        { "k", "2.5", "is not a 64-bit decimal integer", MOEXC_ERR_FORMAT },
        { "seed", "1e5", "is not an unsigned 64-bit decimal integer", MOEXC_ERR_FORMAT },
        { "seed", "18446744073709551616", "is not an unsigned 64-bit decimal integer", MOEXC_ERR_FORMAT },
        { "step", "-1", "outside", MOEXC_ERR_FORMAT },
        { "n_latents", "268435456", "bytes of weights", MOEXC_ERR_FORMAT },
        { "d_a", "1048576", "bytes of weights", MOEXC_ERR_FORMAT },
        { "threshold_beta", "1", "threshold_beta 1", MOEXC_ERR_ARG } };   /* found by fuzz_xc: xc_create's message, now with the path */
    char pb[2048], bb[2048];
    const char *path = tmp_path2("readers_xc_meta.safetensors", pb, sizeof(pb));
    const char *bad = tmp_path2("readers_xc_meta_bad.safetensors", bb, sizeof(bb));
    moexc_xc *xc = small_xc(path, 0);
    size_t k;
    TH_CHECK(xc != NULL, "small crosscoder");
    if (!xc) return;
    for (k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        char what[96];
        snprintf(what, sizeof(what), "%s = %s", cases[k].key, cases[k].value);
        TH_CHECK(st_rewrite(path, bad, cases[k].key, cases[k].value, NULL, 0, 0.0, NULL) == 0, "rewrite");
        expect_xc_fail(bad, cases[k].st, cases[k].needle, what);
    }
    moexc_xc_free(xc);
    remove(path);
    remove(bad);
}

/* ---- model files and training checkpoints ----------------------------------- */

static moexc_model *small_model(const char *path)
{
    moexc_model_config c;
    moexc_model *m = NULL;
    moexc_error err;
    memset(&c, 0, sizeof(c));
    c.vocab_size = 16; c.d_model = 8; c.n_heads = 2; c.n_layers = 1; c.context = 8; c.d_ff = 16;
    if (moexc_model_create(&m, &c, &err) != MOEXC_OK) return NULL;
    if (path && moexc_model_save(m, path, &err) != MOEXC_OK) { moexc_model_free(m); return NULL; }
    return m;
}

static void expect_model_fail(const char *path, moexc_status want, const char *needle, const char *what)
{
    moexc_model *m = NULL;
    moexc_error err;
    long live = g_live_blocks;
    moexc_status st = moexc_model_load(&m, path, &err);
    TH_CHECK(st == want && (m != NULL) == (want == MOEXC_OK), "%s: status %s, expected %s (%s)", what, moexc_status_name(st),
             moexc_status_name(want), st ? err.message : "loaded");
    if (st != MOEXC_OK)
        TH_CHECK(starts_with(err.message, path) && strstr(err.message, needle), "%s: message: %s", what, err.message);
    moexc_model_free(m);
    TH_CHECK(g_live_blocks == live, "%s: %ld blocks leaked", what, g_live_blocks - live);
}

/* A config naming huge sizes in a small file is rejected before the model is
   allocated (it asked for 2^20 x 2^20 floats, or RoPE tables of 2^30 x 4);
   the seed is read exactly (strtoull accepted "-1" and saturated overflow);
   a NaN weight is rejected with its tensor named. */
static void test_model_hostile(void)
{
    char pb[2048], bb[2048];
    const char *path = tmp_path2("readers_model.safetensors", pb, sizeof(pb));
    const char *bad = tmp_path2("readers_model_bad.safetensors", bb, sizeof(bb));
    moexc_model *m = small_model(path);
    TH_CHECK(m != NULL, "small model");
    if (!m) return;
    expect_model_fail(path, MOEXC_OK, "", "intact file");
    TH_CHECK(st_rewrite(path, bad, "moexc.config.d_model", "1048576", NULL, 0, 0.0, NULL) == 0, "rewrite");
    expect_model_fail(bad, MOEXC_ERR_FORMAT, "bytes of tensors", "d_model 2^20");
    TH_CHECK(st_rewrite(path, bad, "moexc.config.n_layers", "2000000000", NULL, 0, 0.0, NULL) == 0, "rewrite");
    expect_model_fail(bad, MOEXC_ERR_FORMAT, "bytes of tensors", "2e9 layers");
    TH_CHECK(st_rewrite(path, bad, "moexc.config.context", "1073741824", NULL, 0, 0.0, NULL) == 0, "rewrite");
    expect_model_fail(bad, MOEXC_ERR_FORMAT, "RoPE tables", "context 2^30");
    TH_CHECK(st_rewrite(path, bad, "moexc.config.seed", "18446744073709551616", NULL, 0, 0.0, NULL) == 0, "rewrite");
    expect_model_fail(bad, MOEXC_ERR_FORMAT, "moexc.config.seed", "seed 2^64");
    TH_CHECK(st_rewrite(path, bad, "moexc.config.seed", "-1", NULL, 0, 0.0, NULL) == 0, "rewrite");
    expect_model_fail(bad, MOEXC_ERR_FORMAT, "moexc.config.seed", "seed -1");
    TH_CHECK(st_rewrite(path, bad, NULL, NULL, "layers.0.attn.wk.weight", 5, NAN, NULL) == 0, "rewrite");
    expect_model_fail(bad, MOEXC_ERR_NUMERIC, "'layers.0.attn.wk.weight': value 5", "NaN weight");
    moexc_model_free(m);
    remove(path);
    remove(bad);
}

/* Issue 14: the optimiser moments of a training checkpoint were not checked
   for finiteness (a file with a matching CRC could carry NaN or a negative
   second moment, whose square root is NaN). And the audit: options the
   trainer rejects were reported without the file's name, float options out
   of float range were cast (undefined), a CRC above 2^32 - 1 compared after
   truncation, and integers were read through strtod. */
static void test_trainer_moments(void)
{
    const char *path = tmp_path("readers_train.ckpt");
    moexc_tokens tok;
    moexc_train_options o;
    moexc_trainer *t = NULL, *back = NULL;
    moexc_model *m = small_model(NULL), *mb = NULL;
    moexc_error err;
    int k;
    memset(&tok, 0, sizeof(tok));
    memset(&o, 0, sizeof(o));
    o.batch_size = 2; o.seq_len = 8; o.total_steps = 4; o.eval_interval = -1;
    TH_CHECK(m && moexc_corpus_builtin(&tok, 600, 1, &err) == MOEXC_OK, "corpus");
    if (!m) return;
    moexc_model_free(m);
    {
        moexc_model_config c;
        memset(&c, 0, sizeof(c));
        c.vocab_size = tok.vocab_size; c.d_model = 8; c.n_heads = 2; c.n_layers = 1; c.context = 8; c.d_ff = 16;
        m = NULL;
        TH_CHECK(moexc_model_create(&m, &c, &err) == MOEXC_OK, "model: %s", err.message);
    }
    TH_CHECK(m && moexc_trainer_create(&t, m, &tok, &o, &err) == MOEXC_OK, "trainer: %s", err.message);
    if (!t) { moexc_model_free(m); moexc_tokens_free(&tok); return; }
    for (k = 0; k < 2; k++) moexc_trainer_step(t, NULL, &err);
    for (k = 0; k < 3; k++) {
        static const char *const needles[3] = { "moment m[3]", "moment v[5]", "moment v[5]" };
        long live = g_live_blocks;
        moexc_status st;
        float saved_m = t->moments[3], saved_v = t->moments[t->n_params + 5];
        if (k == 0) t->moments[3] = (float)NAN;
        if (k == 1) t->moments[t->n_params + 5] = (float)INFINITY;
        if (k == 2) t->moments[t->n_params + 5] = -1e-3f;
        TH_CHECK(moexc_trainer_save(t, path, &err) == MOEXC_OK, "save: %s", err.message);   /* the CRC matches */
        st = moexc_trainer_resume(&back, &mb, path, &tok, &err);
        TH_CHECK(st == MOEXC_ERR_NUMERIC && !back && !mb, "case %d: %s: %s", k, moexc_status_name(st), err.message);
        TH_CHECK(starts_with(err.message, path) && strstr(err.message, needles[k]), "case %d: message %s", k, err.message);
        TH_CHECK(g_live_blocks == live, "case %d: %ld blocks leaked", k, g_live_blocks - live);
        moexc_trainer_free(back); moexc_model_free(mb); back = NULL; mb = NULL;
        t->moments[3] = saved_m; t->moments[t->n_params + 5] = saved_v;
    }
    TH_CHECK(moexc_trainer_save(t, path, &err) == MOEXC_OK && moexc_trainer_resume(&back, &mb, path, &tok, &err) == MOEXC_OK,
             "intact checkpoint: %s", err.message);
    moexc_trainer_free(back); moexc_model_free(mb);
    {   /* hostile options and metadata: every message names the file */
        static const struct { const char *key, *value, *needle; moexc_status st; } cases[] = {
            { "moexc.train.batch_size", "-3", "batch_size -3", MOEXC_ERR_ARG },
            { "moexc.train.seq_len", "9", "seq_len 9 outside [1, context 8]", MOEXC_ERR_ARG },
            { "moexc.train.lr", "1e300", "is not a number in", MOEXC_ERR_FORMAT },   /* (float)1e300 was undefined */
            { "moexc.train.total_steps", "4.0", "is not a 64-bit decimal integer", MOEXC_ERR_FORMAT },
            { "moexc.train.state_crc32", "4294967296", "above 2^32 - 1", MOEXC_ERR_FORMAT },
            { "moexc.train.rng", "18446744073709551616", "moexc.train.rng", MOEXC_ERR_FORMAT } };
        char pb[2048], bb[2048];
        const char *bad;
        snprintf(pb, sizeof(pb), "%s", path);   /* path is tmp_path's buffer, reused next */
        bad = tmp_path2("readers_train_bad.ckpt", bb, sizeof(bb));
        for (k = 0; k < (int)(sizeof(cases) / sizeof(cases[0])); k++) {
            long live = g_live_blocks;
            moexc_status st;
            TH_CHECK(st_rewrite(pb, bad, cases[k].key, cases[k].value, NULL, 0, 0.0, NULL) == 0, "rewrite");
            st = moexc_trainer_resume(&back, &mb, bad, &tok, &err);
            TH_CHECK(st == cases[k].st && !back && !mb, "%s = %s: %s: %s", cases[k].key, cases[k].value,
                     moexc_status_name(st), err.message);
            TH_CHECK(starts_with(err.message, bad) && strstr(err.message, cases[k].needle), "%s = %s: message %s",
                     cases[k].key, cases[k].value, err.message);
            TH_CHECK(g_live_blocks == live, "%s: %ld blocks leaked", cases[k].key, g_live_blocks - live);
            moexc_trainer_free(back); moexc_model_free(mb); back = NULL; mb = NULL;
        }
        remove(bad);
    }
    moexc_trainer_free(t);
    moexc_model_free(m);
    moexc_tokens_free(&tok);
    remove(tmp_path("readers_train.ckpt"));
}

/* ---- SAE files ------------------------------------------------------------------ */

/* A small SAE (d 8, F 16; Switch and Scale with 4 experts) after 3 steps,
   saved as a training checkpoint (training = 1) or an inference file. */
static moexc_sae *small_sae(const char *path, int variant, int training)
{
    moexc_sae_options so;
    moexc_sae *s = NULL;
    moexc_error err;
    moexc_rng rng;
    float x[64 * 8];
    int j;
    moexc_rng_seed(&rng, 4);
    for (j = 0; j < 64 * 8; j++) x[j] = moexc_rng_normal(&rng);
    memset(&so, 0, sizeof(so));
    so.variant = variant; so.n_latents = 16; so.k = 3; so.steps = 10; so.batch = 16; so.seed = 6;
    if (variant != MOEXC_SAE_TOPK) so.n_experts = 4;
    if (moexc_sae_create(&s, 8, &so, &err) != MOEXC_OK || moexc_sae_init_from_data(s, x, 64, &err) != MOEXC_OK) {
        moexc_sae_free(s);
        return NULL;
    }
    for (j = 0; j < 3; j++) moexc_sae_train_step(s, x + 128 * j, 16, NULL, &err);
    if ((training ? moexc_sae_save_training(s, path, &err) : moexc_sae_save(s, path, &err)) != MOEXC_OK) {
        moexc_sae_free(s);
        return NULL;
    }
    return s;
}

/* Load path as an SAE expecting failure with status want and a message that
   starts with the path and contains `needle`; nothing leaks. */
static void expect_sae_fail(const char *path, moexc_status want, const char *needle, const char *what)
{
    moexc_sae *s = NULL;
    moexc_error err;
    long live = g_live_blocks;
    moexc_status st = moexc_sae_load(&s, path, &err);
    TH_CHECK(st == want && s == NULL, "%s: status %s, expected %s (%s)", what, moexc_status_name(st),
             moexc_status_name(want), st ? err.message : "loaded");
    if (st != MOEXC_OK) {
        TH_CHECK(starts_with(err.message, path), "%s: message does not name the file: %s", what, err.message);
        TH_CHECK(strstr(err.message, needle) != NULL, "%s: message lacks '%s': %s", what, needle, err.message);
    }
    moexc_sae_free(s);
    TH_CHECK(g_live_blocks == live, "%s: %ld blocks leaked", what, g_live_blocks - live);
}

/* The SAE's dead-latent counters were saved as float32 (inexact past 2^24
   tokens) and cast back to int64; they are I64 now, exact, >= 0. */
static void test_sae_counters_exact(void)
{
    const char *path = tmp_path("readers_sae.safetensors");
    moexc_sae *s = small_sae(path, MOEXC_SAE_SWITCH, 1), *back = NULL;
    moexc_st_file *f = NULL;
    moexc_error err;
    int j, same = 1;
    TH_CHECK(s != NULL, "small SAE");
    if (!s) return;
    s->since_fired[0] = (INT64_C(1) << 24) + 1;
    s->since_fired[1] = (INT64_C(1) << 53) + 1;
    s->since_fired[15] = INT64_C(9000000000000000001);
    TH_CHECK(moexc_sae_save_training(s, path, &err) == MOEXC_OK, "save: %s", err.message);
    TH_CHECK(moexc_st_open(&f, path, &err) == MOEXC_OK && strcmp(moexc_st_dtype(f, "train.since_fired"), "I64") == 0,
             "train.since_fired is stored as %s", f ? moexc_st_dtype(f, "train.since_fired") : "?");
    moexc_st_close(f);
    TH_CHECK(moexc_sae_load(&back, path, &err) == MOEXC_OK, "load: %s", err.message);
    if (back) {
        for (j = 0; j < 16; j++) same &= back->since_fired[j] == s->since_fired[j];
        TH_CHECK(same, "counters differ: %lld %lld %lld", (long long)back->since_fired[0], (long long)back->since_fired[1],
                 (long long)back->since_fired[15]);
    }
    moexc_sae_free(back);
    TH_CHECK(st_rewrite(path, path, NULL, NULL, "train.since_fired", 2, -5.0, NULL) == 0, "rewrite");
    expect_sae_fail(path, MOEXC_ERR_FORMAT, "train.since_fired[2] = -5", "negative counter");
    /* the format is new: float32 counters (NaN or not) are not accepted */
    moexc_sae_save_training(s, path, &err);
    TH_CHECK(st_rewrite(path, path, NULL, NULL, "train.since_fired", 3, NAN, "train.since_fired") == 0, "rewrite to F32");
    expect_sae_fail(path, MOEXC_ERR_SHAPE, "expected I64", "float32 counters");
    moexc_sae_free(s);
    remove(path);
}

/* Adam's moments and every parameter are checked finite (the second moment
   >= 0), in every variant, with the tensor named. */
static void test_sae_nonfinite(void)
{
    char pb[2048], bb[2048];
    const char *path = tmp_path2("readers_sae_nf.safetensors", pb, sizeof(pb));
    const char *bad = tmp_path2("readers_sae_nf_bad.safetensors", bb, sizeof(bb));
    int v;
    for (v = 0; v < 3; v++) {
        moexc_sae *s = small_sae(path, v, 1);
        TH_CHECK(s != NULL, "small SAE %d", v);
        if (!s) continue;
        TH_CHECK(st_rewrite(path, bad, NULL, NULL, "train.adam_m", 7, INFINITY, NULL) == 0, "rewrite");
        expect_sae_fail(bad, MOEXC_ERR_NUMERIC, "train.adam_m[7]", "infinite first moment");
        TH_CHECK(st_rewrite(path, bad, NULL, NULL, "train.adam_v", 9, NAN, NULL) == 0, "rewrite");
        expect_sae_fail(bad, MOEXC_ERR_NUMERIC, "train.adam_v[9]", "NaN second moment");
        TH_CHECK(st_rewrite(path, bad, NULL, NULL, "train.adam_v", 9, -1.0, NULL) == 0, "rewrite");
        expect_sae_fail(bad, MOEXC_ERR_NUMERIC, "train.adam_v[9]", "negative second moment");
        TH_CHECK(st_rewrite(path, bad, NULL, NULL, "decoder.bias", 1, NAN, NULL) == 0, "rewrite");
        expect_sae_fail(bad, MOEXC_ERR_NUMERIC, "(decoder.bias)", "NaN decoder bias");
        if (v == MOEXC_SAE_SCALE) {
            TH_CHECK(st_rewrite(path, bad, NULL, NULL, "scale.lambda", 3, -INFINITY, NULL) == 0, "rewrite");
            expect_sae_fail(bad, MOEXC_ERR_NUMERIC, "(scale.lambda)", "infinite feature scaling");
        }
        if (v != MOEXC_SAE_TOPK) {
            TH_CHECK(st_rewrite(path, bad, NULL, NULL, "router.bias", 2, INFINITY, NULL) == 0, "rewrite");
            expect_sae_fail(bad, MOEXC_ERR_NUMERIC, "(router.bias)", "infinite router bias");
        }
        /* an inference file: a finite weight that overflows when unfolded */
        moexc_sae_save(s, path, NULL);
        TH_CHECK(st_rewrite(path, bad, "scale", "1e-3", "encoder.weight", 5, 3e38, NULL) == 0, "rewrite");
        expect_sae_fail(bad, MOEXC_ERR_NUMERIC, "overflows when the scale", "overflow on unfolding");
        moexc_sae_free(s);
    }
    remove(path);
    remove(bad);
}

/* Integers in SAE metadata are exact (the crosscoder's readers): "2.5"
   latents per token (read as 2 before), a seed "1e5" (read as 1), an
   overflowing seed, a negative or fractional counter; huge sizes in a small
   file are rejected before allocating; an option the SAE rejects is reported
   with the file's name. */
static void test_sae_metadata(void)
{
    static const struct { int variant; const char *key, *value, *needle; moexc_status st; } cases[] = {
        { 1, "k", "2.5", "'k' = \"2.5\" is not a 64-bit decimal integer", MOEXC_ERR_FORMAT },
        { 0, "seed", "1e5", "'seed' = \"1e5\" is not an unsigned 64-bit decimal integer", MOEXC_ERR_FORMAT },
        { 0, "seed", "18446744073709551616", "'seed' = \"18446744073709551616\" is not an unsigned", MOEXC_ERR_FORMAT },
        { 0, "seed", "-1", "'seed' = \"-1\" is not an unsigned", MOEXC_ERR_FORMAT },
        { 2, "step", "-1", "'step' = -1 is outside", MOEXC_ERR_FORMAT },
        { 2, "step", "nan", "'step' = \"nan\" is not a 64-bit decimal integer", MOEXC_ERR_FORMAT },
        { 2, "step", "2147483647", "'step' = 2147483647 is outside", MOEXC_ERR_FORMAT },
        { 1, "dead_tokens", "1e9", "'dead_tokens' = \"1e9\" is not a 64-bit", MOEXC_ERR_FORMAT },
        { 1, "steps", " 10", "'steps' = \" 10\" is not a 64-bit", MOEXC_ERR_FORMAT },
        { 0, "folded", "0.5", "'folded' = \"0.5\"", MOEXC_ERR_FORMAT },
        { 1, "k", "17", "'k' = 17 is outside [1, 16]", MOEXC_ERR_FORMAT },
        { 2, "n_latents", "268435456", "bytes of weights", MOEXC_ERR_FORMAT },
        { 2, "d", "1048576", "bytes of weights", MOEXC_ERR_FORMAT },
        { 0, "n_latents", "268435456", "bytes of weights", MOEXC_ERR_FORMAT },
        { 1, "n_experts", "3", "not a multiple of n_experts 3", MOEXC_ERR_ARG },
        { 1, "active_experts", "2", "routes to one expert", MOEXC_ERR_ARG } };
    char pb[3][2048], bb[2048];
    const char *bad = tmp_path2("readers_sae_meta_bad.safetensors", bb, sizeof(bb));
    moexc_sae *s[3];
    size_t k;
    int v;
    for (v = 0; v < 3; v++) {
        char name[64];
        snprintf(name, sizeof(name), "readers_sae_meta_%d.safetensors", v);
        s[v] = small_sae(tmp_path2(name, pb[v], sizeof(pb[v])), v, 0);
        TH_CHECK(s[v] != NULL, "small SAE %d", v);
        if (!s[v]) return;
    }
    for (k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        char what[128];
        snprintf(what, sizeof(what), "%s: %s = %s", moexc_sae_variant_name(cases[k].variant), cases[k].key, cases[k].value);
        TH_CHECK(st_rewrite(pb[cases[k].variant], bad, cases[k].key, cases[k].value, NULL, 0, 0.0, NULL) == 0, "rewrite");
        expect_sae_fail(bad, cases[k].st, cases[k].needle, what);
    }
    for (v = 0; v < 3; v++) { moexc_sae_free(s[v]); remove(pb[v]); }
    remove(bad);
}

/* Found by fuzz_sae: a Scale SAE checkpoint with huge finite weights whose
   pre-activations overflow to NaN made AuxK's selection (any sign) keep more
   than k_aux latents, a heap overflow in the training step. The selection
   keeps at most k with NaNs present (tests/test_select.c), and the step
   fails cleanly. */
static void test_sae_nan_selection(void)
{
    const char *path = tmp_path("readers_sae_nan.safetensors");
    float x[2 * 8];
    moexc_sae *s = small_sae(path, MOEXC_SAE_SCALE, 1), *back = NULL;
    moexc_error err;
    moexc_status st;
    int i;
    TH_CHECK(s != NULL, "small SAE");
    if (!s) return;
    for (i = 0; i < 8 * 16; i++) s->params[s->off_enc + i] = (i % 2 ? 3e38f : -3e38f);
    for (i = 0; i < 16; i++) s->since_fired[i] = INT64_C(1) << 40;   /* every latent dead: AuxK selects */
    TH_CHECK(moexc_sae_save_training(s, path, &err) == MOEXC_OK, "save: %s", err.message);
    TH_CHECK(moexc_sae_load(&back, path, &err) == MOEXC_OK, "load: %s", err.message);
    if (back) {
        for (i = 0; i < 2 * 8; i++) x[i] = (float)(i % 5) - 2.0f;
        st = moexc_sae_train_step(back, x, 2, NULL, &err);
        TH_CHECK(st == MOEXC_ERR_NUMERIC, "a step on overflowing pre-activations: %s (%s)", moexc_status_name(st),
                 st ? err.message : "ok");
    }
    moexc_sae_free(back);
    moexc_sae_free(s);
    remove(path);
}

int main(int argc, char **argv)
{
    (void)argc;
    tmp_dir_from_argv0(argv[0]);
    TH_RUN(test_offsets_beyond_2gib);
    TH_RUN(test_act_cache_hostile);
    TH_RUN(test_npy_shape_overflow);
    TH_RUN(test_meta_integers);
    TH_RUN(test_xc_counters_exact);
    TH_RUN(test_xc_counters_old_f32);
    TH_RUN(test_xc_nonfinite);
    TH_RUN(test_xc_metadata);
    TH_RUN(test_model_hostile);
    TH_RUN(test_trainer_moments);
    TH_RUN(test_sae_counters_exact);
    TH_RUN(test_sae_nonfinite);
    TH_RUN(test_sae_metadata);
    TH_RUN(test_sae_nan_selection);
    return th_summary();
}
