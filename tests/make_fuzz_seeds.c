/* tests/make_fuzz_seeds.c - writes small valid files of every format into a
   directory, as seeds for the libFuzzer harnesses (`make fuzz`) and as the
   intact inputs of tests/valgrind_readers.sh:

       build/make_fuzz_seeds DIR

   model_{dense,moe}.safetensors  tiny models (vocab 16, d 8, 1 layer)
   train_{dense,moe}.ckpt         their training checkpoints after 2 steps on
                                  moexc_corpus_builtin(600 bytes, seed 1),
                                  the stream tests/fuzz_train.c resumes on
   tokens.tok                     that token stream
   xc_{infer,train}.safetensors   a BatchTopK crosscoder (d 8 + 8, F 16,
                                  4 shared) as inference file and checkpoint
   xc_l1_{infer,train}.safetensors  an L1 crosscoder (d 6 + 10, F 12)
   sae_{topk,switch,scale}_{infer,train}.safetensors  SAEs (d 8, F 16; Switch
                                  and Scale with 4 experts, Scale 2 active)
                                  as inference file and training checkpoint
   acts.cache                     an activation cache (d 3 + 5, 10 pairs)
   array.npy                      a 1-D float32 array
   json_*.json, meta_*.txt        JSON texts and metadata values

       build/make_fuzz_seeds --hostile DIR

   writes the same files, then DIR/hostile/ (tests/valgrind_readers.sh feeds
   them to the tools): each file truncated to half, with single bits flipped
   (in the header, the middle and the last byte), and with oversized shapes
   (a model config of d_model 2^20, 2e9 layers or context 2^30; a crosscoder
   of 2^28 latents or d_a 2^20; SAEs of 2^28 latents or d 2^20, a
   non-integer k; a token file, a cache and an .npy whose counts claim
   petabytes). */
#include "../moexc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(x) do { if ((x) != MOEXC_OK) { fprintf(stderr, "make_fuzz_seeds: %s\n", err.message); return 1; } } while (0)

static int put_bytes(const char *path, const unsigned char *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size)) { fprintf(stderr, "make_fuzz_seeds: cannot write %s\n", path); if (f) fclose(f); return 1; }
    return fclose(f) != 0;
}

static unsigned char *get_bytes(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t cap = 0, got;
    *size = 0;
    if (!f) return NULL;
    do {
        if (*size == cap) buf = (unsigned char *)realloc(buf, cap = cap ? 2 * cap : 65536);
        got = fread(buf + *size, 1, cap - *size, f);
        *size += got;
    } while (got);
    fclose(f);
    return buf;
}

/* Copy a safetensors file of F32 tensors with metadata key set to value. */
static int rewrite_meta(const char *src, const char *dst, const char *key, const char *value)
{
    moexc_st_file *f = NULL;
    moexc_error err;
    moexc_st_entry ent[64];
    moexc_st_kv kv[64];
    float *bufs[64];
    int i, n, nm, rc;
    if (moexc_st_open(&f, src, &err) != MOEXC_OK) { fprintf(stderr, "make_fuzz_seeds: %s\n", err.message); return 1; }
    n = moexc_st_count(f);
    nm = moexc_st_meta_count(f);
    if (n > 64 || nm > 64) { moexc_st_close(f); return 1; }
    for (i = 0; i < nm; i++) {
        kv[i].key = moexc_st_meta_key(f, i);
        kv[i].value = strcmp(kv[i].key, key) == 0 ? value : moexc_st_meta(f, kv[i].key);
    }
    for (i = 0; i < n; i++) {
        int64_t count = 1;
        int d;
        memset(&ent[i], 0, sizeof(ent[i]));
        ent[i].name = moexc_st_name(f, i);
        moexc_st_shape(f, ent[i].name, &ent[i].ndim, ent[i].shape, &err);
        for (d = 0; d < ent[i].ndim; d++) count *= ent[i].shape[d];
        bufs[i] = (float *)malloc((size_t)count * 4 + 4);
        moexc_st_read_f32(f, ent[i].name, bufs[i], ent[i].ndim, ent[i].shape, &err);
        ent[i].data = bufs[i];
    }
    rc = moexc_st_save(dst, ent, n, kv, nm, &err) != MOEXC_OK;
    if (rc) fprintf(stderr, "make_fuzz_seeds: %s\n", err.message);
    for (i = 0; i < n; i++) free(bufs[i]);
    moexc_st_close(f);
    return rc;
}

/* DIR/hostile/NAME.trunc (the first half) and NAME.flipK (one bit flipped at
   byte 3, 12, a third, the middle and the last byte). */
static int damage(const char *dir, const char *name)
{
    char path[4096];
    size_t size, k, at[5];
    unsigned char *buf;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    buf = get_bytes(path, &size);
    if (!buf || size < 16) { free(buf); return 1; }
    snprintf(path, sizeof(path), "%s/hostile/%s.trunc", dir, name);
    if (put_bytes(path, buf, size / 2)) return 1;
    at[0] = 3; at[1] = 12; at[2] = size / 3; at[3] = size / 2; at[4] = size - 1;
    for (k = 0; k < 5; k++) {
        buf[at[k]] ^= (unsigned char)(1u << (k + 2));
        snprintf(path, sizeof(path), "%s/hostile/%s.flip%d", dir, name, (int)k);
        if (put_bytes(path, buf, size)) return 1;
        buf[at[k]] ^= (unsigned char)(1u << (k + 2));
    }
    free(buf);
    return 0;
}

/* A copy of DIR/name with the 8 bytes at `offset` set to v (little-endian). */
static int patch_u64(const char *dir, const char *name, size_t offset, uint64_t v, const char *out)
{
    char path[4096];
    size_t size, i;
    unsigned char *buf;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    buf = get_bytes(path, &size);
    if (!buf || size < offset + 8) { free(buf); return 1; }
    for (i = 0; i < 8; i++) buf[offset + i] = (unsigned char)(v >> (8 * i));
    snprintf(path, sizeof(path), "%s/hostile/%s", dir, out);
    i = (size_t)put_bytes(path, buf, size);
    free(buf);
    return (int)i;
}

static int hostile(const char *dir)
{
    static const char *const files[] = { "model_dense.safetensors", "model_moe.safetensors", "train_dense.ckpt",
        "train_moe.ckpt", "tokens.tok", "xc_infer.safetensors", "xc_train.safetensors", "xc_l1_infer.safetensors",
        "acts.cache", "array.npy", "sae_topk_infer.safetensors", "sae_topk_train.safetensors",
        "sae_switch_infer.safetensors", "sae_switch_train.safetensors", "sae_scale_infer.safetensors",
        "sae_scale_train.safetensors" };
    static const char *const sae_meta[4][3] = { { "n_latents", "268435456", "sae_scale_infer.huge_latents" },
        { "d", "1048576", "sae_scale_infer.huge_width" }, { "k", "2.5", "sae_switch_infer.k_fraction" },
        { "seed", "1e5", "sae_topk_infer.seed_exponent" } };
    static const char *const model_meta[3][3] = { { "moexc.config.d_model", "1048576", "model_dense.huge_dmodel" },
        { "moexc.config.n_layers", "2000000000", "model_dense.huge_layers" },
        { "moexc.config.context", "1073741824", "model_dense.huge_context" } };
    char src[4096], dst[4096];
    size_t i;
    FILE *f;
    snprintf(dst, sizeof(dst), "%s/hostile", dir);
    snprintf(src, sizeof(src), "%s/hostile/.probe", dir);
    if (!(f = fopen(src, "wb"))) { fprintf(stderr, "make_fuzz_seeds: create the directory %s first\n", dst); return 1; }
    fclose(f);
    remove(src);
    for (i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        if (damage(dir, files[i])) { fprintf(stderr, "make_fuzz_seeds: cannot damage %s\n", files[i]); return 1; }
    snprintf(src, sizeof(src), "%s/model_dense.safetensors", dir);
    for (i = 0; i < 3; i++) {
        snprintf(dst, sizeof(dst), "%s/hostile/%s", dir, model_meta[i][2]);
        if (rewrite_meta(src, dst, model_meta[i][0], model_meta[i][1])) return 1;
    }
    snprintf(src, sizeof(src), "%s/xc_infer.safetensors", dir);
    snprintf(dst, sizeof(dst), "%s/hostile/xc_infer.huge_latents", dir);
    if (rewrite_meta(src, dst, "n_latents", "268435456")) return 1;
    snprintf(dst, sizeof(dst), "%s/hostile/xc_infer.huge_width", dir);
    if (rewrite_meta(src, dst, "d_a", "1048576")) return 1;
    for (i = 0; i < 4; i++) {   /* SAE headers: oversized sizes, integers that are not */
        snprintf(src, sizeof(src), "%s/%.*s.safetensors", dir, (int)(strchr(sae_meta[i][2], '.') - sae_meta[i][2]), sae_meta[i][2]);
        snprintf(dst, sizeof(dst), "%s/hostile/%s", dir, sae_meta[i][2]);
        if (rewrite_meta(src, dst, sae_meta[i][0], sae_meta[i][1])) return 1;
    }
    /* binary counts: the token file's n_tokens (offset 24), the cache's pair
       count (24) and widths (12, 16), the npy shape */
    if (patch_u64(dir, "tokens.tok", 24, UINT64_C(1) << 50, "tokens.huge_count")) return 1;
    if (patch_u64(dir, "acts.cache", 24, UINT64_C(1) << 50, "acts.huge_count")) return 1;
    if (patch_u64(dir, "acts.cache", 12, UINT64_C(0x0010000000100000), "acts.huge_width")) return 1;
    {
        static const char npy[] = "\x93NUMPY\x01\x00\x76\x00{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904,), }";
        unsigned char buf[128];
        memset(buf, ' ', sizeof(buf));
        memcpy(buf, npy, sizeof(npy) - 1);
        buf[127] = '\n';
        snprintf(dst, sizeof(dst), "%s/hostile/array.huge_shape", dir);
        if (put_bytes(dst, buf, sizeof(buf))) return 1;
    }
    return 0;
}

static int put_text(const char *dir, const char *name, const char *text)
{
    char path[4096];
    FILE *f;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (!f) { fprintf(stderr, "make_fuzz_seeds: cannot write %s\n", path); return 1; }
    fputs(text, f);
    return fclose(f) != 0;
}

int main(int argc, char **argv)
{
    static const char *const json[] = {
        "{\"__metadata__\":{\"format\":\"model\",\"seed\":\"18446744073709551615\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}",
        "[1, -0.5e-3, true, false, null, \"\\u00e9\\ud83d\\ude00\\n\", {\"k\": [[], {}]}]",
        "{\"x\": 12345678901234567890123, \"y\": -0, \"z\": 1E+2}" };
    static const char *const meta[] = { "0", "18446744073709551615", "18446744073709551616", "-9223372036854775808",
                                        "1e5", "-1", "007", "3.25", "nan" };
    moexc_error err;
    moexc_tokens tok = { 0 };
    moexc_model_config base = { 0 }, dense_cfg, moe_cfg;
    moexc_train_options to = { 0 };
    char path[4096];
    const char *dir;
    int i, m, j, with_hostile = argc == 3 && strcmp(argv[1], "--hostile") == 0;
    if (!(argc == 2 || with_hostile) || strcmp(argv[1], "--help") == 0) {
        fprintf(stderr, "usage: make_fuzz_seeds [--hostile] DIR   (writes small files of every moexc format into DIR,\n"
                        "       with --hostile also damaged and oversized ones into DIR/hostile)\n");
        return argc == 2 ? 0 : 2;
    }
    dir = argv[argc - 1];
    CHECK(moexc_corpus_builtin(&tok, 600, 1, &err));
    snprintf(path, sizeof(path), "%s/tokens.tok", dir);
    CHECK(moexc_tokens_save(&tok, path, &err));

    base.vocab_size = tok.vocab_size; base.d_model = 8; base.n_heads = 2; base.n_layers = 1; base.context = 8;
    base.d_ff = 16; base.n_experts = 4; base.top_k = 2;
    CHECK(moexc_model_config_pair(&base, &dense_cfg, &moe_cfg, &err));
    to.batch_size = 2; to.seq_len = 8; to.total_steps = 4; to.eval_interval = -1;
    for (m = 0; m < 2; m++) {
        moexc_model *model;
        moexc_trainer *tr;
        CHECK(moexc_model_create(&model, m ? &moe_cfg : &dense_cfg, &err));
        snprintf(path, sizeof(path), "%s/model_%s.safetensors", dir, m ? "moe" : "dense");
        CHECK(moexc_model_save(model, path, &err));
        CHECK(moexc_trainer_create(&tr, model, &tok, &to, &err));
        for (i = 0; i < 2; i++) CHECK(moexc_trainer_step(tr, NULL, &err));
        snprintf(path, sizeof(path), "%s/train_%s.ckpt", dir, m ? "moe" : "dense");
        CHECK(moexc_trainer_save(tr, path, &err));
        moexc_trainer_free(tr);
        moexc_model_free(model);
    }

    for (m = 0; m < 2; m++) {   /* BatchTopK with shared latents (d_A = d_B), then L1 with d_A != d_B */
        int da = m ? 6 : 8, db = m ? 10 : 8, n = 64;
        moexc_xc_options xo;
        moexc_xc *xc;
        float *xa = (float *)malloc((size_t)n * (size_t)da * sizeof(float));
        float *xb = (float *)malloc((size_t)n * (size_t)db * sizeof(float));
        moexc_rng rng;
        moexc_rng_seed(&rng, 7);
        for (j = 0; j < n * da; j++) xa[j] = moexc_rng_normal(&rng);
        for (j = 0; j < n * db; j++) xb[j] = moexc_rng_normal(&rng);
        memset(&xo, 0, sizeof(xo));
        xo.variant = m ? MOEXC_XC_L1 : MOEXC_XC_BATCHTOPK;
        xo.n_latents = m ? 12 : 16; xo.k = 3; xo.n_shared = m ? 0 : 4; xo.steps = 10; xo.batch = 16;
        CHECK(moexc_xc_create(&xc, da, db, &xo, &err));
        CHECK(moexc_xc_init_from_data(xc, xa, xb, n, &err));
        for (i = 0; i < 3; i++) CHECK(moexc_xc_train_step(xc, xa + 16 * i * da, xb + 16 * i * db, 16, NULL, &err));
        snprintf(path, sizeof(path), "%s/xc%s_infer.safetensors", dir, m ? "_l1" : "");
        CHECK(moexc_xc_save(xc, path, &err));
        snprintf(path, sizeof(path), "%s/xc%s_train.safetensors", dir, m ? "_l1" : "");
        CHECK(moexc_xc_save_training(xc, path, &err));
        moexc_xc_free(xc);
        if (m == 1) {
            moexc_act_cache c;
            snprintf(path, sizeof(path), "%s/acts.cache", dir);
            CHECK(moexc_act_cache_create(&c, path, 3, 5, &err));
            CHECK(moexc_act_cache_append(&c, xa, xb, 10, &err));
            CHECK(moexc_act_cache_close(&c, &err));
            snprintf(path, sizeof(path), "%s/array.npy", dir);
            CHECK(moexc_npy_write_f32(path, xa, 12, &err));
        }
        free(xa);
        free(xb);
    }
    {   /* the three SAE variants on 64 random rows of width 8 (the models' d_model) */
        int d = 8, n = 64, v;
        float *x = (float *)malloc((size_t)n * (size_t)d * sizeof(float));
        moexc_rng rng;
        moexc_rng_seed(&rng, 9);
        for (j = 0; j < n * d; j++) x[j] = moexc_rng_normal(&rng);
        for (v = 0; v < 3; v++) {
            moexc_sae_options so;
            moexc_sae *sae;
            memset(&so, 0, sizeof(so));
            so.variant = v; so.n_latents = 16; so.k = 3; so.steps = 10; so.batch = 16; so.seed = 5;
            if (v) so.n_experts = 4;
            CHECK(moexc_sae_create(&sae, d, &so, &err));
            CHECK(moexc_sae_init_from_data(sae, x, n, &err));
            for (i = 0; i < 3; i++) CHECK(moexc_sae_train_step(sae, x + 16 * i * d, 16, NULL, &err));
            snprintf(path, sizeof(path), "%s/sae_%s_infer.safetensors", dir, moexc_sae_variant_name(v));
            CHECK(moexc_sae_save(sae, path, &err));
            snprintf(path, sizeof(path), "%s/sae_%s_train.safetensors", dir, moexc_sae_variant_name(v));
            CHECK(moexc_sae_save_training(sae, path, &err));
            moexc_sae_free(sae);
        }
        free(x);
    }
    for (i = 0; i < (int)(sizeof(json) / sizeof(json[0])); i++) {
        snprintf(path, sizeof(path), "json_%d.json", i);
        if (put_text(dir, path, json[i])) return 1;
    }
    for (i = 0; i < (int)(sizeof(meta) / sizeof(meta[0])); i++) {
        snprintf(path, sizeof(path), "meta_%d.txt", i);
        if (put_text(dir, path, meta[i])) return 1;
    }
    moexc_tokens_free(&tok);
    if (with_hostile && hostile(dir)) return 1;
    printf("make_fuzz_seeds: wrote the seed files into %s%s\n", dir, with_hostile ? " and hostile/" : "");
    return 0;
}
