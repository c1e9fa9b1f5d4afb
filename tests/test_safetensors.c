/* tests/test_safetensors.c - the JSON parser and the safetensors writer and
   validating reader: round trips, interop with a file written by Python
   (tools/make_st_fixture.py), byte-exact output, hostile files (every
   truncation, every header bit flip, crafted bad headers), allocation
   failures at every allocation, and no leaks.

   The implementation is compiled into this file (MOEXC_STATIC) with a
   counting allocator, so every test can assert that nothing leaked and can
   make the k-th allocation fail. */
#include <math.h>
#include "counting_alloc.h"

static const char *fixture(const char *name)
{
    static char buf[1024];
    FILE *f;
    snprintf(buf, sizeof(buf), "tests/fixtures/%s", name);
    if ((f = fopen(buf, "rb")) != NULL) { fclose(f); return buf; }
    snprintf(buf, sizeof(buf), "../tests/fixtures/%s", name);
    return buf;
}

static int bits_equal(float a, float b) { return memcmp(&a, &b, sizeof(float)) == 0; }

/* A safetensors image: u64le length, the JSON text, then `data_len` bytes 0..255. */
static unsigned char *make_image(const char *json, size_t data_len, size_t *size)
{
    size_t n = strlen(json), i;
    unsigned char *buf = (unsigned char *)malloc(8 + n + data_len + 1);
    for (i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, json, n);
    for (i = 0; i < data_len; i++) buf[8 + n + i] = (unsigned char)i;
    *size = 8 + n + data_len;
    return buf;
}

/* Open a JSON header + data image; returns the status, message in err. */
static moexc_status open_image(const char *json, size_t data_len, moexc_error *err)
{
    size_t size;
    unsigned char *img = make_image(json, data_len, &size);
    moexc_st_file *f = NULL;
    moexc_status st = moexc_st_open_memory(&f, img, size, "hostile.safetensors", err);
    moexc_st_close(f);
    free(img);
    return st;
}

/* ---- the JSON parser ------------------------------------------------------ */
static moexc_status parse(const char *text, moexc__json *js, char *buf, moexc_error *err)
{
    size_t n = strlen(text);
    memcpy(buf, text, n + 1);
    return moexc__json_parse(js, buf, n, "t.json", err);
}

static void test_json_valid(void)
{
    static const char *const ok[] = {
        "{}", "[]", " \t\r\n{ } ", "0", "-0", "1.5e10", "-12.25E-3", "1E+2", "\"\"", "true", "false", "null",
        "[1,[2,[3,{}]],\"x\",null]", "{\"a\":{\"b\":[true,false]},\"c\":-1}",
        "{\"a\":1,\"A\":2,\"a \":3}", "\"\\u00e9\\/\\b\\f\\n\\r\\t\\\"\\\\\"", "\"\xc3\xa9\xe2\x9c\x93\xf0\x9f\x98\x80\"",
    };
    char buf[256];
    moexc__json js;
    moexc_error err;
    long live0 = g_live_blocks;
    size_t i;
    for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        moexc_status st = parse(ok[i], &js, buf, &err);
        TH_CHECK(st == MOEXC_OK, "valid JSON %s rejected: %s", ok[i], err.message);
        moexc__free(js.nodes);
    }
    /* escapes and surrogate pairs decode to UTF-8 */
    TH_CHECK(parse("{\"k\\u0041\":\"\\u00e9\\u2713\\ud83d\\ude00\\u0000z\"}", &js, buf, &err) == MOEXC_OK, "%s", err.message);
    if (js.nodes) {
        const moexc__jnode *v = &js.nodes[js.nodes[0].first];
        TH_CHECK(v->key_len == 2 && memcmp(v->key, "kA", 2) == 0, "key decoded");
        TH_CHECK(v->len == 2 + 3 + 4 + 2 && memcmp(v->str, "\xc3\xa9\xe2\x9c\x93\xf0\x9f\x98\x80\0z", 11) == 0,
                 "string decoded to UTF-8 (len %d)", (int)v->len);
    }
    moexc__free(js.nodes);
    /* structure: counts and order */
    TH_CHECK(parse("[10, 20, [30], {\"x\": 40}]", &js, buf, &err) == MOEXC_OK, "%s", err.message);
    if (js.nodes) {
        const moexc__jnode *r = &js.nodes[0], *c = &js.nodes[r->first];
        uint64_t v = 0;
        TH_CHECK(r->type == MOEXC__JARRAY && r->count == 4, "array of 4");
        TH_CHECK(moexc__json_u63(c, &v) && v == 10, "first is 10");
        c = &js.nodes[c->next];
        TH_CHECK(moexc__json_u63(c, &v) && v == 20, "second is 20");
        c = &js.nodes[c->next];
        TH_CHECK(c->type == MOEXC__JARRAY && c->count == 1, "third is [30]");
        c = &js.nodes[c->next];
        TH_CHECK(c->type == MOEXC__JOBJECT && c->next == -1, "last is an object");
    }
    moexc__free(js.nodes);
    /* 64 levels nest, 65 do not */
    {
        char deep[200];
        int d;
        for (d = 0; d < 64; d++) { deep[d] = '['; deep[64 + d] = ']'; }
        deep[128] = '\0';
        TH_CHECK(parse(deep, &js, buf, &err) == MOEXC_OK, "depth 64 accepted: %s", err.message);
        moexc__free(js.nodes);
        for (d = 0; d < 65; d++) { deep[d] = '['; deep[65 + d] = ']'; }
        deep[130] = '\0';
        TH_CHECK(parse(deep, &js, buf, &err) == MOEXC_ERR_FORMAT && strstr(err.message, "nesting"),
                 "depth 65 rejected: %s", err.message);
        moexc__free(js.nodes);
    }
    {
        uint64_t v;
        TH_CHECK(parse("[9223372036854775807, 9223372036854775808, 1.0, -1, 1e3]", &js, buf, &err) == MOEXC_OK, "%s", err.message);
        if (js.nodes) {
            int c = js.nodes[0].first;
            TH_CHECK(moexc__json_u63(&js.nodes[c], &v) && v == UINT64_C(9223372036854775807), "2^63-1 fits");
            c = js.nodes[c].next;
            TH_CHECK(!moexc__json_u63(&js.nodes[c], &v), "2^63 does not fit");
            c = js.nodes[c].next;
            TH_CHECK(!moexc__json_u63(&js.nodes[c], &v), "1.0 is not a plain integer");
            c = js.nodes[c].next;
            TH_CHECK(!moexc__json_u63(&js.nodes[c], &v), "-1 is negative");
            c = js.nodes[c].next;
            TH_CHECK(!moexc__json_u63(&js.nodes[c], &v), "1e3 is not a plain integer");
        }
        moexc__free(js.nodes);
    }
    TH_CHECK(g_live_blocks == live0, "no leak (%ld blocks)", g_live_blocks - live0);
}

static void test_json_invalid(void)
{
    static const char *const bad[][2] = {
        { "", "end" }, { "   ", "end" }, { "{", "key" }, { "[", "end" }, { "{\"a\"}", "':'" },
        { "{\"a\":1,}", "key" }, { "[1,]", "unexpected" }, { "[1 2]", "','" }, { "{\"a\":1 \"b\":2}", "','" },
        { "{} x", "after" }, { "{}{}", "after" }, { "01", "leading zero" }, { "-", "number" }, { "+1", "unexpected" },
        { ".5", "unexpected" }, { "1.", "after '.'" }, { "1e", "exponent" }, { "1e+", "exponent" }, { "tru", "unexpected" },
        { "nul", "unexpected" }, { "NaN", "unexpected" }, { "\"abc", "unterminated" }, { "\"a\\", "unterminated" },
        { "\"\\x\"", "escape" }, { "\"\\u12\"", "hex" }, { "\"\\u12G4\"", "hex" }, { "\"\\ud800\"", "surrogate" },
        { "\"\\ud800\\u0041\"", "surrogate" }, { "\"\\udc00\"", "surrogate" }, { "\"a\tb\"", "control" },
        { "\"\xc3\"", "UTF-8" }, { "\"\xc0\xaf\"", "UTF-8" }, { "\"\xed\xa0\x80\"", "UTF-8" }, { "\"\xf4\x90\x80\x80\"", "UTF-8" },
        { "\"\xe2\x9c\"", "UTF-8" }, { "\"\xff\"", "UTF-8" }, { "{\"a\":1,\"b\":2,\"a\":3}", "duplicate key \"a\"" },
        { "{\"\\u0061\":1,\"a\":2}", "duplicate" }, { "{1:2}", "key" }, { "[1,,2]", "unexpected" }, { "//\n{}", "unexpected" },
    };
    char buf[256];
    moexc__json js;
    moexc_error err;
    long live0 = g_live_blocks;
    size_t i;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        moexc_status st;
        err.message[0] = '\0';
        st = parse(bad[i][0], &js, buf, &err);
        TH_CHECK(st == MOEXC_ERR_FORMAT, "invalid JSON '%s' accepted", bad[i][0]);
        TH_CHECK(strstr(err.message, "t.json: JSON header, byte ") && strstr(err.message, bad[i][1]),
                 "message for '%s' should mention '%s': %s", bad[i][0], bad[i][1], err.message);
        moexc__free(js.nodes);
    }
    TH_CHECK(g_live_blocks == live0, "no leak (%ld blocks)", g_live_blocks - live0);
}

/* ---- writer and reader ---------------------------------------------------- */
static void test_roundtrip(void)
{
    float a[6] = { 1.0f, -2.5f, 3.25f, 0.0f, -0.0f, 1e-40f }, b[24], s = 42.0f, got[24];
    moexc_st_entry t[4];
    moexc_st_kv kv[3] = { { "format", "pt" }, { "zeta", "last" }, { "alpha", "first \"q\" \\ \n" } };
    moexc_st_file *f = NULL;
    moexc_error err;
    int64_t shape[8];
    int i, ndim = -1;
    long live0 = g_live_blocks;
    const char *path = tmp_path("st_roundtrip.safetensors");
    size_t size;
    unsigned char *bytes;

    for (i = 0; i < 24; i++) b[i] = (float)i * 0.5f - 3.0f;
    memset(t, 0, sizeof(t));
    t[0].name = "z.last.but.first"; t[0].data = a; t[0].ndim = 2; t[0].shape[0] = 2; t[0].shape[1] = 3;
    t[1].name = "cube";             t[1].data = b; t[1].ndim = 3; t[1].shape[0] = 2; t[1].shape[1] = 3; t[1].shape[2] = 4;
    t[2].name = "scalar";           t[2].data = &s; t[2].ndim = 0;
    t[3].name = "empty";            t[3].data = NULL; t[3].ndim = 2; t[3].shape[0] = 5; t[3].shape[1] = 0;
    TH_CHECK(moexc_st_save(path, t, 4, kv, 3, &err) == MOEXC_OK, "save: %s", err.message);
    {
        char tmp[2100];
        FILE *leftover;
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        leftover = fopen(tmp, "rb");
        TH_CHECK(leftover == NULL, "temporary file renamed away");
        if (leftover) fclose(leftover);
    }
    bytes = slurp(path, &size);
    TH_CHECK(bytes != NULL && size > 8, "file written");
    if (bytes) {
        uint64_t n = moexc__get_u64le(bytes);
        TH_CHECK(n % 8 == 0, "header padded to 8 bytes (%d)", (int)n);
        TH_CHECK(size == 8 + n + 4 * (6 + 24 + 1), "file size %d", (int)size);
        TH_CHECK(bytes[8] == '{' && (bytes[8 + n - 1] == ' ' || bytes[8 + n - 1] == '}'), "JSON then spaces");
        /* data in the order given, little-endian */
        TH_CHECK(moexc__get_u32le(bytes + 8 + n + 4) == 0xC0200000u, "-2.5f stored little-endian");
        free(bytes);
    }
    TH_CHECK(moexc_st_open(&f, path, &err) == MOEXC_OK, "open: %s", err.message);
    if (f) {
        TH_CHECK(moexc_st_count(f) == 4, "4 tensors");
        TH_CHECK(strcmp(moexc_st_name(f, 0), "z.last.but.first") == 0 && strcmp(moexc_st_name(f, 3), "empty") == 0,
                 "names in file order");
        TH_CHECK(moexc_st_name(f, 4) == NULL && moexc_st_name(f, -1) == NULL, "out-of-range names are NULL");
        TH_CHECK(moexc_st_meta(f, "format") && strcmp(moexc_st_meta(f, "format"), "pt") == 0, "meta format");
        TH_CHECK(moexc_st_meta(f, "alpha") && strcmp(moexc_st_meta(f, "alpha"), "first \"q\" \\ \n") == 0, "meta escapes");
        TH_CHECK(moexc_st_meta(f, "nope") == NULL, "absent meta is NULL");
        TH_CHECK(moexc_st_meta_count(f) == 3 && strcmp(moexc_st_meta_key(f, 0), "alpha") == 0 &&
                 strcmp(moexc_st_meta_key(f, 2), "zeta") == 0, "meta keys sorted");
        TH_CHECK(moexc_st_shape(f, "cube", &ndim, shape, &err) == MOEXC_OK && ndim == 3 && shape[0] == 2 &&
                 shape[1] == 3 && shape[2] == 4 && shape[3] == 0, "shape of cube");
        TH_CHECK(strcmp(moexc_st_dtype(f, "cube"), "F32") == 0 && moexc_st_dtype(f, "nope") == NULL, "dtype");
        TH_CHECK(moexc_st_read_f32(f, "cube", got, 3, t[1].shape, &err) == MOEXC_OK, "read cube: %s", err.message);
        for (i = 0; i < 24; i++) TH_CHECK(bits_equal(got[i], b[i]), "cube[%d]", i);
        TH_CHECK(moexc_st_read_f32(f, "z.last.but.first", got, 2, t[0].shape, &err) == MOEXC_OK, "read a");
        for (i = 0; i < 6; i++) TH_CHECK(bits_equal(got[i], a[i]), "a[%d] bit-exact (incl. -0 and subnormal)", i);
        got[0] = 0.0f;
        TH_CHECK(moexc_st_read_f32(f, "scalar", got, 0, NULL, &err) == MOEXC_OK && got[0] == 42.0f, "scalar");
        TH_CHECK(moexc_st_read_f32(f, "empty", NULL, 2, t[3].shape, &err) == MOEXC_OK, "empty tensor");
        /* error paths */
        TH_CHECK(moexc_st_read_f32(f, "missing", got, 0, NULL, &err) == MOEXC_ERR_MISSING &&
                 strstr(err.message, "st_roundtrip.safetensors") && strstr(err.message, "'missing'"),
                 "missing tensor: %s", err.message);
        {
            int64_t wrong[3] = { 3, 2, 4 };
            TH_CHECK(moexc_st_read_f32(f, "cube", got, 3, wrong, &err) == MOEXC_ERR_SHAPE &&
                     strstr(err.message, "'cube': shape [2,3,4], expected [3,2,4]"), "shape mismatch: %s", err.message);
            TH_CHECK(moexc_st_read_f32(f, "cube", got, 2, wrong, &err) == MOEXC_ERR_SHAPE, "rank mismatch");
        }
        TH_CHECK(moexc_st_shape(f, "nope", &ndim, shape, &err) == MOEXC_ERR_MISSING, "shape of missing");
        moexc_st_close(f);
    }
    remove(path);
    /* an empty file list is a valid file */
    TH_CHECK(moexc_st_save(path, NULL, 0, NULL, 0, &err) == MOEXC_OK, "save nothing: %s", err.message);
    bytes = slurp(path, &size);
    TH_CHECK(bytes && size == 16 && memcmp(bytes + 8, "{}      ", 8) == 0, "empty file is '{}' + 6 spaces");
    free(bytes);
    f = NULL;
    TH_CHECK(moexc_st_open(&f, path, &err) == MOEXC_OK && moexc_st_count(f) == 0, "open empty: %s", err.message);
    moexc_st_close(f);
    remove(path);
    TH_CHECK(g_live_blocks == live0, "no leak (%ld blocks)", g_live_blocks - live0);
}

static void test_save_arguments(void)
{
    float x[4] = { 1, 2, 3, 4 };
    moexc_st_entry t[2];
    moexc_st_kv kv[2] = { { "k", "v" }, { "k", "w" } };
    moexc_error err;
    const char *path = tmp_path("st_args.safetensors");
    FILE *f;
    long live0 = g_live_blocks;
    memset(t, 0, sizeof(t));
    t[0].name = "w"; t[0].data = x; t[0].ndim = 1; t[0].shape[0] = 4;
    t[1] = t[0];
    TH_CHECK(moexc_st_save(path, t, 2, NULL, 0, &err) == MOEXC_ERR_ARG && strstr(err.message, "duplicate tensor name 'w'"),
             "duplicate names: %s", err.message);
    t[1].name = "__metadata__";
    TH_CHECK(moexc_st_save(path, t, 2, NULL, 0, &err) == MOEXC_ERR_ARG, "reserved name");
    t[1].name = "v"; t[1].ndim = 9;
    TH_CHECK(moexc_st_save(path, t, 2, NULL, 0, &err) == MOEXC_ERR_ARG && strstr(err.message, "ndim 9"), "ndim 9");
    t[1].ndim = 1; t[1].shape[0] = -1;
    TH_CHECK(moexc_st_save(path, t, 2, NULL, 0, &err) == MOEXC_ERR_ARG && strstr(err.message, "negative"), "negative dim");
    t[1].shape[0] = 4; t[1].data = NULL;
    TH_CHECK(moexc_st_save(path, t, 2, NULL, 0, &err) == MOEXC_ERR_ARG && strstr(err.message, "data is NULL"), "NULL data");
    t[1].data = x; t[1].name = "bad\xff";
    TH_CHECK(moexc_st_save(path, t, 2, NULL, 0, &err) == MOEXC_ERR_ARG, "invalid UTF-8 name");
    t[1].name = "v";
    TH_CHECK(moexc_st_save(path, t, 2, kv, 2, &err) == MOEXC_ERR_ARG && strstr(err.message, "duplicate metadata key 'k'"),
             "duplicate metadata: %s", err.message);
    f = fopen(path, "rb");
    TH_CHECK(f == NULL, "nothing written on argument errors");
    if (f) fclose(f);
    TH_CHECK(moexc_st_save("/nonexistent-dir/x.safetensors", t, 2, NULL, 0, &err) == MOEXC_ERR_IO &&
             strstr(err.message, "/nonexistent-dir/x.safetensors"), "unwritable path: %s", err.message);
    TH_CHECK(moexc_st_open(NULL, path, &err) == MOEXC_ERR_ARG, "NULL out");
    {
        moexc_st_file *sf = NULL;
        TH_CHECK(moexc_st_open(&sf, "/nonexistent-file.safetensors", &err) == MOEXC_ERR_IO &&
                 strstr(err.message, "/nonexistent-file.safetensors") && sf == NULL, "missing file: %s", err.message);
    }
    TH_CHECK(g_live_blocks == live0, "no leak (%ld blocks)", g_live_blocks - live0);
}

/* The fixture tools/make_st_fixture.py wrote with json + numpy. */
static float fixture_embed(int i) { return (float)(((i * 37) % 101 - 50) / 8.0); }
static const float fixture_special[8] = { -0.0f, 1e-45f, 3.4028235e38f, -1.5f, 9.5367431640625e-07f,
                                          (float)(1.0 / 3.0), -7.25f, 65504.0f };
static const char fixture_note[] = "h\xc3\xa9llo \"quoted\"\n\ttab \x01 \xe2\x9c\x93 \xf0\x9f\x98\x80 back\\slash";

static void test_python_interop(void)
{
    const char *path = fixture("data_st_py.safetensors");
    moexc_st_file *f = NULL;
    moexc_error err;
    float embed[12], scalar = 0.1f, special[8], got[12];
    int64_t s_embed[2] = { 4, 3 }, s_empty[2] = { 0, 3 }, s_special[3] = { 2, 2, 2 };
    moexc_st_entry t[4];
    moexc_st_kv kv[2] = { { "format", "pt" }, { "note", fixture_note } };
    unsigned char *want, *have;
    size_t want_size, have_size;
    long live0 = g_live_blocks;
    int i;

    for (i = 0; i < 12; i++) embed[i] = fixture_embed(i);
    memcpy(special, fixture_special, sizeof(special));
    TH_CHECK(moexc_st_open(&f, path, &err) == MOEXC_OK, "open Python fixture %s: %s", path, err.message);
    if (!f) return;
    TH_CHECK(moexc_st_count(f) == 4, "4 tensors");
    TH_CHECK(moexc_st_meta(f, "note") && strcmp(moexc_st_meta(f, "note"), fixture_note) == 0, "UTF-8 metadata survives");
    TH_CHECK(moexc_st_read_f32(f, "embed.weight", got, 2, s_embed, &err) == MOEXC_OK, "%s", err.message);
    for (i = 0; i < 12; i++) TH_CHECK(bits_equal(got[i], embed[i]), "embed[%d] = %g", i, got[i]);
    TH_CHECK(moexc_st_read_f32(f, "scalar", got, 0, NULL, &err) == MOEXC_OK && bits_equal(got[0], 0.1f), "scalar 0.1f");
    TH_CHECK(moexc_st_read_f32(f, "empty", got, 2, s_empty, &err) == MOEXC_OK, "empty");
    TH_CHECK(moexc_st_read_f32(f, "layers.0.w", got, 3, s_special, &err) == MOEXC_OK, "%s", err.message);
    for (i = 0; i < 8; i++) TH_CHECK(bits_equal(got[i], special[i]), "special[%d] = %g", i, got[i]);
    moexc_st_close(f);

    /* the same content written by C: byte-for-byte identical */
    memset(t, 0, sizeof(t));
    t[0].name = "embed.weight"; t[0].data = embed; t[0].ndim = 2; t[0].shape[0] = 4; t[0].shape[1] = 3;
    t[1].name = "scalar"; t[1].data = &scalar; t[1].ndim = 0;
    t[2].name = "empty"; t[2].data = NULL; t[2].ndim = 2; t[2].shape[0] = 0; t[2].shape[1] = 3;
    t[3].name = "layers.0.w"; t[3].data = special; t[3].ndim = 3; t[3].shape[0] = t[3].shape[1] = t[3].shape[2] = 2;
    TH_CHECK(moexc_st_save(tmp_path("st_c.safetensors"), t, 4, kv, 2, &err) == MOEXC_OK, "%s", err.message);
    want = slurp(path, &want_size);
    have = slurp(tmp_path("st_c.safetensors"), &have_size);
    TH_CHECK(want && have && want_size == have_size && memcmp(want, have, want_size) == 0,
             "C output identical to the Python-written file (%d vs %d bytes)", (int)have_size, (int)want_size);
    free(want);
    free(have);
    remove(tmp_path("st_c.safetensors"));
    TH_CHECK(g_live_blocks == live0, "no leak (%ld blocks)", g_live_blocks - live0);
}

/* ---- hostile files -------------------------------------------------------- */
static void test_truncation_and_bitflips(void)
{
    size_t size, cut, byte;
    unsigned char *img = slurp(fixture("data_st_py.safetensors"), &size), *copy;
    moexc_st_file *f = NULL;
    moexc_error err;
    long live0 = g_live_blocks;
    int all_rejected = 1, bit, accepted = 0, rejected = 0, named = 1;
    uint64_t header_len;
    TH_CHECK(img != NULL, "fixture present");
    if (!img) return;
    for (cut = 0; cut < size; cut++) {
        moexc_status st = moexc_st_open_memory(&f, img, cut, "cut.safetensors", &err);
        if (st == MOEXC_OK) { all_rejected = 0; moexc_st_close(f); f = NULL; }
        else if (!strstr(err.message, "cut.safetensors: ")) named = 0;
    }
    TH_CHECK(all_rejected, "every truncation rejected");
    TH_CHECK(named, "every message names the file");
    /* with trailing bytes appended, too */
    copy = (unsigned char *)malloc(size + 1);
    memcpy(copy, img, size);
    copy[size] = 0;
    TH_CHECK(moexc_st_open_memory(&f, copy, size + 1, "long.safetensors", &err) == MOEXC_ERR_FORMAT &&
             strstr(err.message, "tensors cover"), "trailing byte rejected: %s", err.message);
    /* every single-bit flip of the length and the header: no crash, no leak;
       a file that still opens must still read back consistently */
    header_len = moexc__get_u64le(img);
    for (byte = 0; byte < 8 + header_len; byte++) {
        for (bit = 0; bit < 8; bit++) {
            moexc_status st;
            memcpy(copy, img, size);
            copy[byte] ^= (unsigned char)(1u << bit);
            st = moexc_st_open_memory(&f, copy, size, "flip.safetensors", &err);
            if (st == MOEXC_OK) {
                int i, n = moexc_st_count(f);
                accepted++;
                for (i = 0; i < n; i++) {
                    int64_t shape[8];
                    int ndim;
                    float buf[16];
                    const char *name = moexc_st_name(f, i);
                    if (moexc_st_shape(f, name, &ndim, shape, &err) != MOEXC_OK) { all_rejected = -1; continue; }
                    if (strcmp(moexc_st_dtype(f, name), "F32") == 0 && ndim <= 3)
                        TH_CHECK(moexc_st_read_f32(f, name, buf, ndim, shape, &err) == MOEXC_OK, "flip %d:%d read %s: %s",
                                 (int)byte, bit, name, err.message);
                }
                moexc_st_close(f);
                f = NULL;
            } else {
                rejected++;
            }
        }
    }
    TH_CHECK(all_rejected != -1, "accepted files are self-consistent");
    TH_CHECK(rejected > accepted, "most header bit flips are rejected (%d rejected, %d accepted)", rejected, accepted);
    printf("  header bit flips: %d rejected, %d accepted (flips in names or metadata text stay valid)\n", rejected, accepted);
    free(copy);
    free(img);
    TH_CHECK(g_live_blocks == live0, "no leak (%ld blocks)", g_live_blocks - live0);
}

static void test_crafted_headers(void)
{
    static const struct { const char *json; size_t data; const char *expect; } cases[] = {
        { "[]", 0, "not an object" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlap" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", 16, "belong to no tensor" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "bytes 0..4 belong to no tensor" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "beyond the 4-byte data section" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 9, "the data section is 9 bytes but the tensors cover 8" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "'a': data_offsets [0, 8] hold 8 bytes, but dtype F32 shape [3] needs 12" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "end before they begin" },
        { "{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "'a': unknown dtype 'F33'" },
        { "{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "'dtype' is not a string" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "shape[0] is not a non-negative integer" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8, "shape[0]" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, "'shape' is not an array" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, "9 dimensions" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, "overflows" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "'data_offsets' is not [begin, end]" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8, "'data_offsets'" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,99999999999999999999]}}", 8, "'data_offsets'" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "missing field 'data_offsets'" },
        { "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "missing field 'dtype'" },
        { "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "missing field 'shape'" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"extra\":1}}", 8, "unknown field 'extra'" },
        { "{\"a\":[1]}", 0, "'a': entry is not a JSON object" },
        { "{\"__metadata__\":[]}", 0, "__metadata__ is not a JSON object" },
        { "{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ entry 'k' is not a string" },
        { "{\"__metadata__\":{\"k\":\"a\\u0000b\"}}", 0, "NUL" },
        { "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0, "NUL" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, "duplicate key \"a\"" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x", 8, "after the JSON value" },
        { "{ ", 0, "JSON header, byte 2: expected a string key" },
        { "{}", 4, "the data section is 4 bytes but the tensors cover 0" },
    };
    moexc_error err;
    long live0 = g_live_blocks;
    size_t i;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        moexc_status st;
        err.message[0] = '\0';
        st = open_image(cases[i].json, cases[i].data, &err);
        TH_CHECK(st != MOEXC_OK, "case %d accepted: %s", (int)i, cases[i].json);
        TH_CHECK(strncmp(err.message, "hostile.safetensors: ", 21) == 0 && strstr(err.message, cases[i].expect),
                 "case %d: message should say '%s': %s", (int)i, cases[i].expect, err.message);
    }
    /* valid edge cases: several empty tensors at one offset, leading whitespace, unsorted offsets */
    TH_CHECK(open_image("{\"e1\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                        "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[4,8]},"
                        "\"e2\":{\"dtype\":\"U8\",\"shape\":[3,0],\"data_offsets\":[0,0]},"
                        "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, &err) == MOEXC_OK,
             "valid edge cases: %s", err.message);
    {
        size_t size;
        unsigned char *img = make_image(" {\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}} ", 4, &size);
        moexc_st_file *f = NULL;
        float x[2];
        int64_t shape[1] = { 2 };
        TH_CHECK(moexc_st_open_memory(&f, img, size, "bf16.safetensors", &err) == MOEXC_OK, "%s", err.message);
        TH_CHECK(moexc_st_read_f32(f, "b", x, 1, shape, &err) == MOEXC_ERR_SHAPE &&
                 strstr(err.message, "bf16.safetensors: tensor 'b' has dtype BF16"), "BF16 read as F32: %s", err.message);
        moexc_st_close(f);
        free(img);
    }
    /* header lengths: huge, above the cap, past the end, too small */
    {
        unsigned char img[64];
        moexc_st_file *f = NULL;
        memset(img, ' ', sizeof(img));
        moexc__put_u64le(img, UINT64_C(0xFFFFFFFFFFFFFFFF));
        TH_CHECK(moexc_st_open_memory(&f, img, sizeof(img), "h.st", &err) == MOEXC_ERR_FORMAT &&
                 strstr(err.message, "exceeds the limit"), "2^64-1: %s", err.message);
        moexc__put_u64le(img, 100000001u);
        TH_CHECK(moexc_st_open_memory(&f, img, sizeof(img), "h.st", &err) == MOEXC_ERR_FORMAT &&
                 strstr(err.message, "exceeds the limit"), "100 MB + 1: %s", err.message);
        moexc__put_u64le(img, 57);
        TH_CHECK(moexc_st_open_memory(&f, img, sizeof(img), "h.st", &err) == MOEXC_ERR_FORMAT &&
                 strstr(err.message, "runs past the end of the 64-byte file"), "past end: %s", err.message);
        moexc__put_u64le(img, 1);
        TH_CHECK(moexc_st_open_memory(&f, img, sizeof(img), "h.st", &err) == MOEXC_ERR_FORMAT &&
                 strstr(err.message, "too short"), "1-byte header: %s", err.message);
        TH_CHECK(moexc_st_open_memory(&f, img, 5, "h.st", &err) == MOEXC_ERR_FORMAT &&
                 strstr(err.message, "h.st: file is 5 bytes"), "5-byte file: %s", err.message);
        TH_CHECK(f == NULL, "no handle on failure");
    }
    TH_CHECK(g_live_blocks == live0, "no leak (%ld blocks)", g_live_blocks - live0);
}

/* Make allocation k fail, for every k, in open and save: each failure is a
   clean MOEXC_ERR_NOMEM (or the I/O error it causes) and leaks nothing. */
static void test_allocation_failures(void)
{
    const char *path = fixture("data_st_py.safetensors");
    const char *out = tmp_path("st_oom.safetensors");
    float x[6] = { 1, 2, 3, 4, 5, 6 };
    moexc_st_entry t[2];
    moexc_st_kv kv[1] = { { "k", "v" } };
    moexc_error err;
    long live0 = g_live_blocks, k;
    int ok_open = 0, ok_save = 0, clean = 1;
    memset(t, 0, sizeof(t));
    t[0].name = "a"; t[0].data = x; t[0].ndim = 2; t[0].shape[0] = 2; t[0].shape[1] = 3;
    t[1].name = "b"; t[1].data = x; t[1].ndim = 1; t[1].shape[0] = 6;
    for (k = 0; k < 200 && !(ok_open && ok_save); k++) {
        moexc_st_file *f = NULL;
        moexc_status st;
        g_alloc_calls = 0;
        g_fail_at = k;
        st = moexc_st_open(&f, path, &err);
        if (st == MOEXC_OK) { ok_open = 1; moexc_st_close(f); }
        else if (st != MOEXC_ERR_NOMEM || f != NULL) clean = 0;
        g_alloc_calls = 0;
        st = moexc_st_save(out, t, 2, kv, 1, &err);
        if (st == MOEXC_OK) ok_save = 1;
        else if (st != MOEXC_ERR_NOMEM) clean = 0;
        if (g_live_blocks != live0) clean = 0;
    }
    g_fail_at = -1;
    TH_CHECK(ok_open && ok_save, "open and save eventually succeed (k = %ld)", k);
    TH_CHECK(clean, "every injected failure is MOEXC_ERR_NOMEM without a leak");
    TH_CHECK(k > 5, "several allocation sites were exercised (%ld)", k);
    printf("  allocation failure injected at each of the first %ld allocations\n", k - 1);
    remove(out);
}

int main(int argc, char **argv)
{
    (void)argc;
    tmp_dir_from_argv0(argv[0]);
    TH_RUN(test_json_valid);
    TH_RUN(test_json_invalid);
    TH_RUN(test_roundtrip);
    TH_RUN(test_save_arguments);
    TH_RUN(test_python_interop);
    TH_RUN(test_truncation_and_bitflips);
    TH_RUN(test_crafted_headers);
    TH_RUN(test_allocation_failures);
    return th_summary();
}
