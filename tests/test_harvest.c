/* tests/test_harvest.c - paired activations (SPEC §3): the harvester against
   direct captures, the streaming shuffle buffer, the activation cache. */
#include "../moexc.h"
#include "harness.h"
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static moexc_model *tiny_model(int ffn, int d, uint64_t seed)
{
    moexc_model_config c;
    moexc_model *m = NULL;
    moexc_error err;
    memset(&c, 0, sizeof(c));
    c.d_model = d; c.n_heads = 2; c.n_layers = 4; c.context = 32; c.ffn = ffn; c.seed = seed;
    if (moexc_model_create(&m, &c, &err) != MOEXC_OK) printf("  model: %s\n", err.message);
    return m;
}

static void test_harvester_matches_capture(void)
{
    moexc_model *a = tiny_model(MOEXC_FFN_MOE, 16, 1), *b = tiny_model(MOEXC_FFN_DENSE, 24, 2);
    moexc_tokens tok;
    moexc_harvester *h = NULL;
    moexc_harvest_options o;
    moexc_error err;
    int rows, call, T = 12, B = 3, ok = 1, s, t, j, site;
    float *xa, *xb, *ref_a, *ref_b;
    memset(&tok, 0, sizeof(tok));
    TH_CHECK(a && b, "models");
    TH_CHECK(moexc_corpus_builtin(&tok, 300, 7, &err) == MOEXC_OK, "corpus: %s", err.message);
    if (!a || !b) return;
    xa = (float *)malloc((size_t)B * T * 16 * sizeof(float)); xb = (float *)malloc((size_t)B * T * 24 * sizeof(float));
    ref_a = (float *)malloc((size_t)B * T * 16 * sizeof(float)); ref_b = (float *)malloc((size_t)B * T * 24 * sizeof(float));
    for (site = 0; site < 2; site++) {
        size_t pos = 0;
        memset(&o, 0, sizeof(o));
        o.seq_len = T; o.batch_seqs = B; o.site = site; o.sequential = 1;   /* layer 0 -> 3 by default */
        TH_CHECK(moexc_harvester_create(&h, a, b, &tok, &o, &err) == MOEXC_OK, "create: %s", err.message);
        if (!h) break;
        TH_CHECK(moexc_harvester_dim(h, 0) == 16 && moexc_harvester_dim(h, 1) == 24, "dims");
        TH_CHECK(moexc_harvester_rows_per_call(h) == B * (T - 1), "position 0 skipped");
        for (call = 0; call < 3; call++) {
            uint16_t win[3 * 12];
            TH_CHECK(moexc_harvester_next(h, xa, xb, &rows, &err) == MOEXC_OK, "next: %s", err.message);
            TH_CHECK(rows == B * (T - 1), "rows %d", rows);
            for (s = 0; s < B; s++) { memcpy(win + s * T, tok.tokens + pos, (size_t)T * sizeof(uint16_t)); pos += (size_t)T; }
            moexc_model_capture(a, win, B, T, 3, (moexc_site)site, ref_a, NULL);
            moexc_model_capture(b, win, B, T, 3, (moexc_site)site, ref_b, NULL);
            for (s = 0; s < B; s++)
                for (t = 1; t < T; t++) {
                    int r = s * (T - 1) + (t - 1);
                    for (j = 0; j < 16; j++) ok &= xa[r * 16 + j] == ref_a[(s * T + t) * 16 + j];
                    for (j = 0; j < 24; j++) ok &= xb[r * 24 + j] == ref_b[(s * T + t) * 24 + j];
                }
        }
        TH_CHECK(ok, "site %d: pairs equal the models' own captures at layer 3, positions 1..T-1", site);
        moexc_harvester_free(h); h = NULL;
    }
    /* bad options are refused with a message */
    memset(&o, 0, sizeof(o));
    o.layer = 9;
    TH_CHECK(moexc_harvester_create(&h, a, b, &tok, &o, &err) == MOEXC_ERR_ARG && strstr(err.message, "layer 9"), "layer refused: %s", err.message);
    o.layer = MOEXC_HARVEST_LAYER0; o.seq_len = 64;
    TH_CHECK(moexc_harvester_create(&h, a, b, &tok, &o, &err) == MOEXC_ERR_ARG && strstr(err.message, "seq_len"), "seq_len refused: %s", err.message);
    free(xa); free(xb); free(ref_a); free(ref_b);
    moexc_tokens_free(&tok);
    moexc_model_free(a); moexc_model_free(b);
}

/* Random windows (the default): reproducible from the seed, different for
   another seed. */
static void test_harvester_random_windows(void)
{
    moexc_model *a = tiny_model(MOEXC_FFN_MOE, 16, 1), *b = tiny_model(MOEXC_FFN_DENSE, 16, 2);
    moexc_tokens tok;
    moexc_harvester *h1 = NULL, *h2 = NULL, *h3 = NULL;
    moexc_harvest_options o;
    int rows, n = 2 * 9, same12, same13;
    float x1[2 * 9 * 16], y1[2 * 9 * 16], x2[2 * 9 * 16], y2[2 * 9 * 16], x3[2 * 9 * 16], y3[2 * 9 * 16];
    memset(&tok, 0, sizeof(tok));
    TH_CHECK(a && b && moexc_corpus_builtin(&tok, 300, 7, NULL) == MOEXC_OK, "setup");
    if (!a || !b) return;
    memset(&o, 0, sizeof(o));
    o.seq_len = 10; o.batch_seqs = 2; o.seed = 5;
    moexc_harvester_create(&h1, a, b, &tok, &o, NULL);
    moexc_harvester_create(&h2, a, b, &tok, &o, NULL);
    o.seed = 6;
    moexc_harvester_create(&h3, a, b, &tok, &o, NULL);
    TH_CHECK(h1 && h2 && h3, "create");
    if (h1 && h2 && h3) {
        moexc_harvester_next(h1, x1, y1, &rows, NULL);
        TH_CHECK(rows == n, "rows %d", rows);
        moexc_harvester_next(h2, x2, y2, &rows, NULL);
        moexc_harvester_next(h3, x3, y3, &rows, NULL);
        same12 = memcmp(x1, x2, sizeof(x1)) == 0 && memcmp(y1, y2, sizeof(y1)) == 0;
        same13 = memcmp(x1, x3, sizeof(x1)) == 0;
        TH_CHECK(same12, "same seed, same pairs");
        TH_CHECK(!same13, "another seed, other windows");
    }
    moexc_harvester_free(h1); moexc_harvester_free(h2); moexc_harvester_free(h3);
    moexc_tokens_free(&tok);
    moexc_model_free(a); moexc_model_free(b);
}

/* Every pair comes out exactly once, whole (x^A and x^B of a pair stay
   together), in a shuffled order; memory is the fixed capacity. */
static void test_shuffle_buffer(void)
{
    moexc_shuffle_buffer sb;
    int cap = 50, total = 1000, chunk = 7, i, emitted = 0, n_out, inversions = 0, together = 1;
    float xa[7 * 2], xb[7 * 3], oa[7 * 2], ob[7 * 3];
    int *seen = (int *)calloc((size_t)total, sizeof(int));
    float *order = (float *)malloc((size_t)total * sizeof(float));
    TH_CHECK(moexc_shuffle_init(&sb, 2, 3, cap, 5, NULL) == MOEXC_OK, "init");
    for (i = 0; i < total; i += chunk) {
        int n = total - i < chunk ? total - i : chunk, r, q;
        for (r = 0; r < n; r++) {
            xa[r * 2] = (float)(i + r); xa[r * 2 + 1] = -(float)(i + r);
            for (q = 0; q < 3; q++) xb[r * 3 + q] = (float)(i + r) + 0.25f * (float)q;
        }
        moexc_shuffle_push(&sb, xa, xb, n, oa, ob, &n_out);
        TH_CHECK(sb.count <= cap, "bounded");
        for (r = 0; r < n_out; r++) {
            int id = (int)oa[r * 2];
            together &= oa[r * 2 + 1] == -(float)id && ob[r * 3] == (float)id && ob[r * 3 + 2] == (float)id + 0.5f;
            if (id >= 0 && id < total) seen[id]++;
            order[emitted++] = (float)id;
        }
    }
    while ((n_out = moexc_shuffle_pop(&sb, oa, ob, chunk)) > 0) {
        int r;
        for (r = 0; r < n_out; r++) {
            int id = (int)oa[r * 2];
            together &= ob[r * 3] == (float)id;
            if (id >= 0 && id < total) seen[id]++;
            order[emitted++] = (float)id;
        }
    }
    TH_CHECK(emitted == total, "emitted %d of %d", emitted, total);
    for (i = 0; i < total; i++) TH_CHECK(seen[i] == 1, "pair %d seen %d times", i, seen[i]);
    TH_CHECK(together, "pairs stay whole");
    for (i = 1; i < total; i++) inversions += order[i] < order[i - 1];
    TH_CHECK(inversions > total / 4, "shuffled (%d descents)", inversions);
    moexc_shuffle_free(&sb);
    free(seen); free(order);
}

static void test_activation_cache(void)
{
    moexc_act_cache c;
    moexc_error err;
    moexc_rng rng;
    int n = 600, da = 5, db = 3, got = 0, k, ok = 1, i;
    float *xa = (float *)malloc((size_t)n * da * sizeof(float)), *xb = (float *)malloc((size_t)n * db * sizeof(float));
    float ra[37 * 5], rb[37 * 3];
    const char *path = "build/test_harvest.act";
    moexc_rng_seed(&rng, 3);
    for (i = 0; i < n * da; i++) xa[i] = moexc_rng_normal(&rng);
    for (i = 0; i < n * db; i++) xb[i] = moexc_rng_normal(&rng);
    TH_CHECK(moexc_act_cache_create(&c, path, da, db, &err) == MOEXC_OK, "create: %s", err.message);
    TH_CHECK(moexc_act_cache_append(&c, xa, xb, 250, &err) == MOEXC_OK, "append");
    TH_CHECK(moexc_act_cache_append(&c, xa + 250 * da, xb + 250 * db, n - 250, &err) == MOEXC_OK, "append");
    TH_CHECK(moexc_act_cache_close(&c, &err) == MOEXC_OK, "close: %s", err.message);
    TH_CHECK(moexc_act_cache_open(&c, path, &err) == MOEXC_OK, "open: %s", err.message);
    TH_CHECK(c.count == (uint64_t)n && c.d[0] == da && c.d[1] == db, "header");
    /* read back in odd-sized chunks */
    while (moexc_act_cache_read(&c, ra, rb, 37, &k, &err) == MOEXC_OK && k > 0) {
        ok &= memcmp(ra, xa + (size_t)got * da, (size_t)k * da * sizeof(float)) == 0;
        ok &= memcmp(rb, xb + (size_t)got * db, (size_t)k * db * sizeof(float)) == 0;
        got += k;
    }
    TH_CHECK(got == n && ok, "read back %d of %d pairs, equal: %d", got, n, ok);
    moexc_act_cache_close(&c, NULL);
    /* one flipped data byte: checksum error once the end is reached */
    {
        FILE *f = fopen(path, "r+b");
        unsigned char byte;
        moexc_status st = MOEXC_OK;
        fseek(f, 32 + 1000, SEEK_SET);
        TH_CHECK(fread(&byte, 1, 1, f) == 1, "read");
        byte ^= 0x10;
        fseek(f, 32 + 1000, SEEK_SET);
        fwrite(&byte, 1, 1, f);
        fclose(f);
        moexc_act_cache_open(&c, path, NULL);
        while ((st = moexc_act_cache_read(&c, ra, rb, 37, &k, &err)) == MOEXC_OK && k > 0) {}
        TH_CHECK(st == MOEXC_ERR_CHECKSUM, "checksum error, got %s: %s", moexc_status_name(st), err.message);
        moexc_act_cache_close(&c, NULL);
    }
    /* truncated */
    {
        FILE *f = fopen(path, "r+b");
        char *bytes = (char *)malloc(5000);
        size_t len = fread(bytes, 1, 5000, f);
        fclose(f);
        f = fopen(path, "wb"); fwrite(bytes, 1, len, f); fclose(f);
        TH_CHECK(moexc_act_cache_open(&c, path, &err) == MOEXC_ERR_FORMAT, "truncated refused: %s", err.message);
        printf("  truncated: %s\n", err.message);
        memcpy(bytes, "NOTACACH", 8);
        f = fopen(path, "wb"); fwrite(bytes, 1, len, f); fclose(f);
        TH_CHECK(moexc_act_cache_open(&c, path, &err) == MOEXC_ERR_FORMAT && strstr(err.message, "magic"), "magic: %s", err.message);
        free(bytes);
    }
    remove(path);
    free(xa); free(xb);
}

/* With 2 threads the two models' captures run at the same time, one thread
   each; the pairs must have the bits of a one-thread harvest. The models are
   wide enough (d 64, 8 x 64 tokens) for their GEMMs to thread when alone. */
static void test_harvester_concurrent_bits(void)
{
    moexc_model *a = tiny_model(MOEXC_FFN_MOE, 64, 3), *b = tiny_model(MOEXC_FFN_DENSE, 48, 4);
    moexc_tokens tok;
    moexc_harvest_options o;
    moexc_error err;
    float *x[2][2];
    int run, rows = 0, call, ok = 1, saved = 1;
    size_t i, n;
    memset(&tok, 0, sizeof(tok));
    TH_CHECK(a && b, "models");
    TH_CHECK(moexc_corpus_builtin(&tok, 20000, 7, &err) == MOEXC_OK, "corpus: %s", err.message);
    if (!a || !b) return;
    memset(&o, 0, sizeof(o));
    o.seq_len = 32; o.batch_seqs = 8; o.seed = 5;
    n = (size_t)8 * 31;
    for (run = 0; run < 2; run++) { x[run][0] = (float *)malloc(n * 64 * sizeof(float)); x[run][1] = (float *)malloc(n * 48 * sizeof(float)); }
#ifdef _OPENMP
    saved = omp_get_max_threads();
#endif
    for (run = 0; run < 2; run++) {
        moexc_harvester *h = NULL;
#ifdef _OPENMP
        omp_set_num_threads(run == 0 ? 1 : 2);
#endif
        TH_CHECK(moexc_harvester_create(&h, a, b, &tok, &o, &err) == MOEXC_OK, "create: %s", err.message);
        if (!h) break;
        for (call = 0; call < 3; call++)   /* the third call's pairs are compared */
            TH_CHECK(moexc_harvester_next(h, x[run][0], x[run][1], &rows, &err) == MOEXC_OK, "next: %s", err.message);
        moexc_harvester_free(h);
    }
#ifdef _OPENMP
    omp_set_num_threads(saved);
#endif
    for (i = 0; i < n * 64; i++) ok &= memcmp(&x[0][0][i], &x[1][0][i], sizeof(float)) == 0;
    for (i = 0; i < n * 48; i++) ok &= memcmp(&x[0][1][i], &x[1][1][i], sizeof(float)) == 0;
    TH_CHECK(rows == (int)n, "rows %d", rows);
    TH_CHECK(ok, "1-thread and 2-thread (concurrent) harvests give the same bits");
    for (run = 0; run < 2; run++) { free(x[run][0]); free(x[run][1]); }
    (void)saved;
    moexc_tokens_free(&tok);
    moexc_model_free(a); moexc_model_free(b);
}

int main(void)
{
    TH_RUN(test_harvester_matches_capture);
    TH_RUN(test_harvester_random_windows);
    TH_RUN(test_harvester_concurrent_bits);
    TH_RUN(test_shuffle_buffer);
    TH_RUN(test_activation_cache);
    return th_summary();
}
