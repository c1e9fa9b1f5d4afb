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
   acts.cache                     an activation cache (d 3 + 5, 10 pairs)
   array.npy                      a 1-D float32 array
   json_*.json, meta_*.txt        JSON texts and metadata values */
#include "../moexc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(x) do { if ((x) != MOEXC_OK) { fprintf(stderr, "make_fuzz_seeds: %s\n", err.message); return 1; } } while (0)

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
    int i, m, j;
    if (argc != 2 || strcmp(argv[1], "--help") == 0) {
        fprintf(stderr, "usage: make_fuzz_seeds DIR   (writes small files of every moexc format into DIR)\n");
        return argc == 2 ? 0 : 2;
    }
    dir = argv[1];
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
    for (i = 0; i < (int)(sizeof(json) / sizeof(json[0])); i++) {
        snprintf(path, sizeof(path), "json_%d.json", i);
        if (put_text(dir, path, json[i])) return 1;
    }
    for (i = 0; i < (int)(sizeof(meta) / sizeof(meta[0])); i++) {
        snprintf(path, sizeof(path), "meta_%d.txt", i);
        if (put_text(dir, path, meta[i])) return 1;
    }
    moexc_tokens_free(&tok);
    printf("make_fuzz_seeds: wrote the seed files into %s\n", dir);
    return 0;
}
