/* tests/test_latents.c - what a latent is (SPEC §5.2): top activations with a
   bounded heap, domain and expert attribution with a shuffled baseline,
   spliced loss, the model's site replacement hook and the one-pass driver,
   on small hand-computed cases. */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L   /* tools/report_page.h lists PNGs with opendir */
#endif
#include "../moexc.h"
#include "harness.h"
#include <stdlib.h>
#include "../tools/report_page.h"

static void test_top_acts_heap(void)
{
    /* 2 latents, keep 3. Latent 0 sees 1, 5, 3, 5, 2, 4 on rows 0..5; the two
       5s tie and the earlier (seq, pos) ranks first. Latent 1 fires once. */
    float f[6 * 2] = {1, 0, 5, 0, 3, 0, 5, 0, 2, 7, 4, 0};
    int64_t seq[6] = {10, 10, 10, 20, 20, 20};
    int32_t pos[6] = {1, 2, 3, 1, 2, 3}, lab[6] = {0, 0, 0, 1, 1, 1};
    float fr[6 * 2];
    int64_t sr[6];
    int32_t pr[6], lr[6];
    moexc_top_acts acc, acc2;
    moexc_top_entry e[3];
    moexc_error err;
    int n, r;
    TH_CHECK(moexc_top_acts_init(&acc, 2, 3, &err) == MOEXC_OK, "init: %s", err.message);
    moexc_top_acts_add(&acc, f, 3, seq, pos, lab);           /* in two chunks */
    moexc_top_acts_add(&acc, f + 6, 3, seq + 3, pos + 3, lab + 3);
    n = moexc_top_acts_get(&acc, 0, e);
    TH_CHECK(n == 3, "latent 0 keeps 3, got %d", n);
    TH_CHECK(e[0].value == 5 && e[0].seq == 10 && e[0].pos == 2 && e[0].label == 0, "first 5 (10,2): %g %ld %d",
             e[0].value, (long)e[0].seq, e[0].pos);
    TH_CHECK(e[1].value == 5 && e[1].seq == 20 && e[1].pos == 1 && e[1].label == 1, "second 5 (20,1)");
    TH_CHECK(e[2].value == 4 && e[2].seq == 20 && e[2].pos == 3, "then 4");
    n = moexc_top_acts_get(&acc, 1, e);
    TH_CHECK(n == 1 && e[0].value == 7 && e[0].seq == 20 && e[0].pos == 2, "latent 1: one entry, 7 at (20,2)");
    TH_CHECK(moexc_top_acts_get(&acc, 2, e) == 0, "out of range latent: 0 entries");
    /* the same rows in reverse order keep the same set in the same order */
    for (r = 0; r < 6; r++) {
        fr[2 * r] = f[2 * (5 - r)]; fr[2 * r + 1] = f[2 * (5 - r) + 1];
        sr[r] = seq[5 - r]; pr[r] = pos[5 - r]; lr[r] = lab[5 - r];
    }
    TH_CHECK(moexc_top_acts_init(&acc2, 2, 3, &err) == MOEXC_OK, "init 2");
    moexc_top_acts_add(&acc2, fr, 6, sr, pr, lr);
    {
        moexc_top_entry a[3], b[3];
        int na = moexc_top_acts_get(&acc, 0, a), nb = moexc_top_acts_get(&acc2, 0, b), i, same = na == nb;
        for (i = 0; i < na && same; i++) same = a[i].value == b[i].value && a[i].seq == b[i].seq && a[i].pos == b[i].pos;
        TH_CHECK(same, "order of adds does not change the kept entries");
    }
    moexc_top_acts_free(&acc); moexc_top_acts_free(&acc2);
    TH_CHECK(moexc_top_acts_init(&acc, 0, 3, &err) == MOEXC_ERR_ARG, "0 latents refused");
    TH_CHECK(moexc_top_acts_init(&acc, 4, 0, &err) == MOEXC_OK && acc.capacity == 20, "capacity 0 -> 20");
    moexc_top_acts_free(&acc);
}

static void test_label_attribution(void)
{
    /* 4 tokens with domains 0, 0, 1, 2; latent 0 fires on tokens 0, 1, 2 with
       1, 1, 2; latent 1 on token 3 only; latent 2 never.
       latent 0: share (2/3, 1/3, 0), mass (2/4, 2/4, 0), purity 2/3,
                 entropy -(2/3 log2 2/3 + 1/3 log2 1/3) = 0.9182958
       base rates (1/2, 1/4, 1/4). */
    float f[4 * 3] = {1, 0, 0, 1, 0, 0, 2, 0, 0, 0, 3, 0};
    int32_t dom[4] = {0, 0, 1, 2}, bad[4] = {0, 3, 0, 0};
    double share[3], mass[3], base[3], pur, ent;
    moexc_label_acc acc;
    moexc_label_class_stats cs[MOEXC_CLASS_COUNT];
    uint8_t cls[3] = {MOEXC_CLASS_MOE_ONLY, MOEXC_CLASS_MOE_ONLY, MOEXC_CLASS_DENSE_ONLY};
    moexc_error err;
    TH_CHECK(moexc_label_acc_init(&acc, 3, 3, 1, 16, 5, &err) == MOEXC_OK, "init: %s", err.message);
    TH_CHECK(moexc_label_acc_add(&acc, f, 4, dom, &err) == MOEXC_OK, "add");
    TH_CHECK(moexc_label_acc_add(&acc, f, 4, bad, &err) == MOEXC_ERR_ARG && strstr(err.message, "label 3"), "bad label named: %s", err.message);
    moexc_label_acc_finish(&acc);
    moexc_label_acc_latent(&acc, 0, 0, share, mass, &pur, &ent);
    TH_CHECK_NEAR(share[0], 2.0 / 3, 1e-12, 0, "share 0"); TH_CHECK_NEAR(share[1], 1.0 / 3, 1e-12, 0, "share 1");
    TH_CHECK_NEAR(share[2], 0, 1e-12, 0, "share 2");
    TH_CHECK_NEAR(mass[0], 0.5, 1e-12, 0, "mass 0"); TH_CHECK_NEAR(mass[1], 0.5, 1e-12, 0, "mass 1");
    TH_CHECK_NEAR(pur, 2.0 / 3, 1e-12, 0, "purity"); TH_CHECK_NEAR(ent, 0.91829583405, 1e-9, 0, "entropy");
    moexc_label_acc_latent(&acc, 1, 0, share, NULL, &pur, &ent);
    TH_CHECK(pur == 1.0 && ent == 0.0 && share[2] == 1.0, "latent 1 pure");
    moexc_label_acc_latent(&acc, 2, 0, share, NULL, &pur, &ent);
    TH_CHECK(pur != pur && ent != ent, "a latent that never fired: NaN");
    moexc_label_acc_base(&acc, base);
    TH_CHECK(base[0] == 0.5 && base[1] == 0.25 && base[2] == 0.25, "base rates");
    /* shuffled: as many firings, each a random token of the stream */
    moexc_label_acc_latent(&acc, 0, 1, share, NULL, &pur, &ent);
    TH_CHECK_NEAR(share[0] + share[1] + share[2], 1.0, 1e-12, 0, "shuffled shares sum to 1");
    moexc_label_acc_by_class(&acc, cls, 1, cs);
    TH_CHECK(cs[MOEXC_CLASS_MOE_ONLY].n == 2, "2 moe-only latents averaged");
    TH_CHECK_NEAR(cs[MOEXC_CLASS_MOE_ONLY].purity, (2.0 / 3 + 1.0) / 2, 1e-12, 0, "mean purity");
    TH_CHECK(cs[MOEXC_CLASS_DENSE_ONLY].n == 0 && cs[MOEXC_CLASS_DENSE_ONLY].purity != cs[MOEXC_CLASS_DENSE_ONLY].purity,
             "a dead class: NaN");
    moexc_label_acc_by_class(&acc, cls, 2, cs);
    TH_CHECK(cs[MOEXC_CLASS_MOE_ONLY].n == 1, "min_fires 2 leaves latent 0");
    moexc_label_acc_free(&acc);

    /* top-k labels (k = 2 of E = 4): latent 0 fires on tokens routed to {0,1}
       and {0,2}: share (1, 1/2, 1/2, 0), purity 1, entropy of (1/2, 1/4, 1/4) = 1.5 */
    {
        float g[2] = {1, 1};
        int32_t ch[4] = {0, 1, 2, 0};
        TH_CHECK(moexc_label_acc_init(&acc, 1, 4, 2, 0, 1, &err) == MOEXC_OK, "init k=2");
        TH_CHECK(moexc_label_acc_add(&acc, g, 2, ch, &err) == MOEXC_OK, "add k=2");
        moexc_label_acc_finish(&acc);
        moexc_label_acc_latent(&acc, 0, 0, share, NULL, &pur, &ent);
        TH_CHECK(share[0] == 1.0 && share[1] == 0.5 && share[2] == 0.5, "top-k shares");
        TH_CHECK_NEAR(pur, 1.0, 1e-12, 0, "top-k purity"); TH_CHECK_NEAR(ent, 1.5, 1e-12, 0, "top-k entropy");
        moexc_label_acc_free(&acc);
    }
    /* the shuffled baseline of a latent firing everywhere approaches the base rates */
    {
        int n = 20000, i;
        float *g = (float *)malloc((size_t)n * sizeof(float));
        int32_t *l = (int32_t *)malloc((size_t)n * sizeof(int32_t));
        double s1[2];
        for (i = 0; i < n; i++) { g[i] = 1; l[i] = i % 4 == 0; }        /* base (3/4, 1/4) */
        TH_CHECK(moexc_label_acc_init(&acc, 1, 2, 1, 4096, 9, &err) == MOEXC_OK, "init big");
        TH_CHECK(moexc_label_acc_add(&acc, g, n, l, &err) == MOEXC_OK, "add big");
        moexc_label_acc_finish(&acc);
        moexc_label_acc_latent(&acc, 0, 1, s1, NULL, NULL, NULL);
        TH_CHECK_NEAR(s1[1], 0.25, 0.02, 0, "shuffled share near the base rate");
        moexc_label_acc_free(&acc);
        free(g); free(l);
    }
}

static void test_splice_acc(void)
{
    /* model 0, domain 0: clean 1.0, splice 1.5, zero 3.0, mean 2.0 ->
       recovered vs zero (3 - 1.5) / (3 - 1) = 0.75, vs mean (2 - 1.5) / (2 - 1) = 0.5 */
    moexc_splice_acc acc;
    float c[2] = {1.0f, 1.0f}, x[2] = {1.25f, 1.75f}, z[2] = {3.0f, 3.0f}, mn[2] = {2.0f, 2.0f}, nan2[2];
    uint8_t d[2] = {0, 0};
    moexc_error err;
    nan2[0] = NAN; nan2[1] = 5.0f;
    TH_CHECK(moexc_splice_acc_init(&acc, 2, &err) == MOEXC_OK, "init");
    moexc_splice_acc_add(&acc, 0, MOEXC_SPLICE_CLEAN, c, d, 2);
    moexc_splice_acc_add(&acc, 0, MOEXC_SPLICE_XC, x, d, 2);
    moexc_splice_acc_add(&acc, 0, MOEXC_SPLICE_ZERO, z, d, 2);
    moexc_splice_acc_add(&acc, 0, MOEXC_SPLICE_MEAN, mn, d, 2);
    TH_CHECK_NEAR(moexc_splice_acc_ce(&acc, 0, MOEXC_SPLICE_XC, 0), 1.5, 1e-12, 0, "CE splice");
    TH_CHECK_NEAR(moexc_splice_acc_recovered(&acc, 0, MOEXC_SPLICE_ZERO, 0), 0.75, 1e-12, 0, "recovered vs zero");
    TH_CHECK_NEAR(moexc_splice_acc_recovered(&acc, 0, MOEXC_SPLICE_MEAN, 2), 0.5, 1e-12, 0, "recovered vs mean, pooled");
    TH_CHECK(moexc_splice_acc_ce(&acc, 0, MOEXC_SPLICE_XC, 1) != moexc_splice_acc_ce(&acc, 0, MOEXC_SPLICE_XC, 1), "no data: NaN");
    TH_CHECK(moexc_splice_acc_recovered(&acc, 1, MOEXC_SPLICE_ZERO, 2) != moexc_splice_acc_recovered(&acc, 1, MOEXC_SPLICE_ZERO, 2),
             "model 1 without data: NaN");
    moexc_splice_acc_add(&acc, 1, MOEXC_SPLICE_CLEAN, nan2, d, 2);
    TH_CHECK(moexc_splice_acc_ce(&acc, 1, MOEXC_SPLICE_CLEAN, 0) == 5.0, "a NaN position is left out");
    TH_CHECK(moexc_splice_acc_init(&acc, 0, &err) == MOEXC_ERR_ARG, "0 domains refused");
    {
        /* logits (0, ln 3): nll of target 0 = ln 4, of target 1 = ln 4 - ln 3 */
        float lg[2] = {0.0f, (float)log(3.0)}, out[2];
        uint16_t tg[2] = {0, 1};
        moexc_token_nll(lg, tg, 1, 2, out);
        moexc_token_nll(lg, tg + 1, 1, 2, out + 1);
        TH_CHECK_NEAR(out[0], log(4.0), 1e-6, 0, "nll target 0"); TH_CHECK_NEAR(out[1], log(4.0 / 3.0), 1e-6, 0, "nll target 1");
    }
}

static moexc_model *tiny_model(int ffn, int d, uint64_t seed)
{
    moexc_model_config c;
    moexc_model *m = NULL;
    moexc_error err;
    memset(&c, 0, sizeof(c));
    c.d_model = d; c.n_heads = 2; c.n_layers = 3; c.context = 32; c.ffn = ffn; c.seed = seed;
    c.n_experts = 4; c.top_k = 2;
    if (moexc_model_create(&m, &c, &err) != MOEXC_OK) printf("  model: %s\n", err.message);
    return m;
}

static void test_forward_replace(void)
{
    moexc_model *m = tiny_model(MOEXC_FFN_MOE, 16, 3);
    uint16_t in[2 * 8], tg[2 * 8];
    float *site, *logits, *cap;
    moexc_loss_stats s0, s1, s2;
    moexc_error err;
    int i, site_kind, same;
    size_t nl = 2 * 8 * 256;
    if (!m) { TH_CHECK(0, "model"); return; }
    for (i = 0; i < 16; i++) { in[i] = (uint16_t)(97 + i % 7); tg[i] = (uint16_t)(97 + (i + 1) % 7); }
    site = (float *)malloc(16 * 16 * sizeof(float)); cap = (float *)malloc(16 * 16 * sizeof(float));
    logits = (float *)malloc(nl * sizeof(float));
    for (site_kind = 0; site_kind < 2; site_kind++) {
        TH_CHECK(moexc_model_forward(m, in, tg, 2, 8, &s0, &err) == MOEXC_OK, "forward");
        memcpy(site, moexc_model_site_output(m, 1, (moexc_site)site_kind), 16 * 16 * sizeof(float));
        memcpy(logits, moexc_model_logits(m), nl * sizeof(float));
        TH_CHECK(moexc_model_capture(m, in, 2, 8, 1, (moexc_site)site_kind, cap, &err) == MOEXC_OK, "capture");
        TH_CHECK(memcmp(cap, site, 16 * 16 * sizeof(float)) == 0, "site_output = capture (site %d)", site_kind);
        /* replacing the site by itself changes nothing */
        TH_CHECK(moexc_model_forward_replace(m, in, tg, 2, 8, 1, (moexc_site)site_kind, site, &s1, &err) == MOEXC_OK, "replace");
        same = memcmp(logits, moexc_model_logits(m), nl * sizeof(float)) == 0;
        TH_CHECK(same && s1.ce == s0.ce, "identity replacement: same logits (site %d)", site_kind);
        TH_CHECK(moexc_model_backward(m, &err) == MOEXC_ERR_ARG, "no backward after a replaced forward");
        /* zeros change the loss; the next plain forward is clean again */
        memset(cap, 0, 16 * 16 * sizeof(float));
        TH_CHECK(moexc_model_forward_replace(m, in, tg, 2, 8, 1, (moexc_site)site_kind, cap, &s2, &err) == MOEXC_OK, "zero");
        TH_CHECK(s2.ce != s0.ce, "zero ablation moves the loss (%g vs %g)", s2.ce, s0.ce);
        TH_CHECK(moexc_model_forward(m, in, tg, 2, 8, &s1, &err) == MOEXC_OK && s1.ce == s0.ce, "hook cleared afterwards");
    }
    TH_CHECK(moexc_model_forward_replace(m, in, tg, 2, 8, 3, MOEXC_SITE_FFN_OUT, site, NULL, &err) == MOEXC_ERR_ARG &&
             strstr(err.message, "layer 3"), "layer out of range named: %s", err.message);
    TH_CHECK(moexc_model_site_output(m, 5, MOEXC_SITE_FFN_OUT) == NULL, "no site beyond the model");
    free(site); free(cap); free(logits);
    moexc_model_free(m);
}

/* The driver on tiny untrained models: consistent with the parts it is made of. */
static void test_study_driver(void)
{
    moexc_model *a = tiny_model(MOEXC_FFN_MOE, 16, 1), *b = tiny_model(MOEXC_FFN_DENSE, 16, 2);
    moexc_tokens tok;
    moexc_xc *xc = NULL;
    moexc_xc_options xo;
    moexc_latent_study s, s2;
    moexc_latent_study_options o;
    moexc_error err;
    float *xa, *xb, *f;
    int i, F = 64, ok;
    moexc_top_entry e[5];
    memset(&tok, 0, sizeof(tok));
    TH_CHECK(a && b && moexc_corpus_builtin(&tok, 4000, 3, &err) == MOEXC_OK, "setup");
    memset(&xo, 0, sizeof(xo));
    xo.n_latents = F; xo.k = 4; xo.n_shared = 4; xo.steps = 10; xo.batch = 64; xo.seed = 1;
    TH_CHECK(moexc_xc_create(&xc, 16, 16, &xo, &err) == MOEXC_OK, "xc");
    xa = (float *)malloc(64 * 16 * sizeof(float)); xb = (float *)malloc(64 * 16 * sizeof(float));
    f = (float *)malloc(16 * (size_t)F * sizeof(float));
    TH_CHECK(moexc_model_capture(a, tok.tokens, 4, 16, 1, MOEXC_SITE_FFN_OUT, xa, &err) == MOEXC_OK &&
             moexc_model_capture(b, tok.tokens, 4, 16, 1, MOEXC_SITE_FFN_OUT, xb, &err) == MOEXC_OK, "sample");
    TH_CHECK(moexc_xc_init_from_data(xc, xa, xb, 64, &err) == MOEXC_OK, "xc init");
    for (i = 0; i < 5; i++) moexc_xc_train_step(xc, xa, xb, 64, NULL, &err);
    memset(&o, 0, sizeof(o));
    o.layer = 1; o.seq_len = 16; o.batch_seqs = 3; o.max_seqs = 4; o.top_n = 5; o.eval_fraction = 0.2f; o.seed = 7;
    TH_CHECK(moexc_latent_study_run(&s, a, b, xc, &tok, &o, &err) == MOEXC_OK, "study: %s", err.message);
    TH_CHECK(s.n_seqs == 12 && s.n_tokens == 12 * 15, "12 windows x 15 positions (got %ld, %ld)", (long)s.n_seqs, (long)s.n_tokens);
    TH_CHECK(s.expert_model == 0 && s.n_experts == 4 && s.top_k == 2, "experts of model A");
    TH_CHECK(s.domain.n_rows == s.n_tokens && s.expert_topk.n_rows == s.n_tokens, "every token attributed");
    for (i = 0; i <= 3; i++) {
        double cl = moexc_splice_acc_ce(&s.splice, 0, MOEXC_SPLICE_CLEAN, i);
        TH_CHECK(cl > 4.0 && cl < 7.0, "untrained CE near ln 256 = 5.55 (domain %d: %g)", i, cl);
    }
    /* the strongest entry of a latent is its activation recomputed at that place */
    ok = 0;
    for (i = 0; i < F && !ok; i++) {
        int n = moexc_top_acts_get(&s.top, i, e);
        if (n > 0) {
            float ya[16 * 16], yb[16 * 16];
            const uint16_t *w = tok.tokens + e[0].seq;
            TH_CHECK(moexc_model_capture(a, w, 1, 16, 1, MOEXC_SITE_FFN_OUT, ya, &err) == MOEXC_OK &&
                     moexc_model_capture(b, w, 1, 16, 1, MOEXC_SITE_FFN_OUT, yb, &err) == MOEXC_OK, "recapture");
            TH_CHECK(moexc_xc_encode(xc, ya, yb, 16, f, &err) == MOEXC_OK, "encode");
            TH_CHECK_NEAR(f[(size_t)e[0].pos * F + i], e[0].value, 1e-5, 1e-4, "top value recomputed");
            TH_CHECK(e[0].pos >= 1 && e[0].label == tok.domains[e[0].seq + e[0].pos], "position 0 skipped, domain label");
            ok = 1;
        }
    }
    TH_CHECK(ok, "some latent fired");
    TH_CHECK(s.aligned_cos != NULL, "aligned cosines");
    /* same inputs, same bits */
    TH_CHECK(moexc_latent_study_run(&s2, a, b, xc, &tok, &o, &err) == MOEXC_OK, "again");
    TH_CHECK(memcmp(s.domain.shuffled, s2.domain.shuffled, (size_t)F * s.n_domains * sizeof(int64_t)) == 0 &&
             memcmp(s.top.heap, s2.top.heap, (size_t)F * 5 * sizeof(moexc_top_entry)) == 0 &&
             s.splice.nll[1][MOEXC_SPLICE_XC][3] == s2.splice.nll[1][MOEXC_SPLICE_XC][3], "deterministic");
    moexc_latent_study_free(&s2);
    /* a wrong layer is named */
    o.layer = 7;
    TH_CHECK(moexc_latent_study_run(&s2, a, b, xc, &tok, &o, &err) == MOEXC_ERR_ARG && strstr(err.message, "layer 7"),
             "bad layer: %s", err.message);
    moexc_latent_study_free(&s);
    free(xa); free(xb); free(f);
    moexc_xc_free(xc); moexc_model_free(a); moexc_model_free(b); moexc_tokens_free(&tok);
}

/* Every byte a corpus can hold, through the page's escaper: the output is
   printable ASCII without a raw < > " ' (and & only as an entity), apart
   from our own markup for escaped bytes and our UTF-8 glyphs. */
static void test_page_escaper(void)
{
    FILE *f = tmpfile();
    char buf[64];
    unsigned t;
    int bad_raw = 0, nul_shown = 0, ff_shown = 0;
    if (!f) { TH_CHECK(0, "tmpfile"); return; }
    for (t = 0; t < 256; t++) {
        long n;
        rewind(f);
        page_byte(f, t);
        n = ftell(f);
        rewind(f);
        memset(buf, 0, sizeof(buf));
        if (n <= 0 || n >= (long)sizeof(buf) || fread(buf, 1, (size_t)n, f) != (size_t)n) { bad_raw++; continue; }
        if (t == 0) nul_shown = strcmp(buf, "<span class=\"c\">\\x00</span>") == 0;
        if (t == 0xFF) ff_shown = strcmp(buf, "<span class=\"c\">\\xFF</span>") == 0;
        if (strncmp(buf, "<span class=\"c\">", 16) == 0) {     /* our markup around an escape: check the inside */
            const char *in = buf + 16, *end = strstr(in, "</span>");
            const char *q;
            if (!end) { bad_raw++; continue; }
            for (q = in; q < end; q++) if (*q == '<' || *q == '>' || *q == '"' || *q == 0) bad_raw++;
        } else if (buf[0] == '&') {
            bad_raw += !(strcmp(buf, "&lt;") == 0 || strcmp(buf, "&gt;") == 0 || strcmp(buf, "&amp;") == 0 ||
                         strcmp(buf, "&quot;") == 0 || strcmp(buf, "&#39;") == 0);
        } else {
            bad_raw += !(n == 1 && buf[0] >= 0x20 && buf[0] < 0x7F && buf[0] != '<' && buf[0] != '>' && buf[0] != '"' && buf[0] != '\'');
        }
    }
    fclose(f);
    TH_CHECK(bad_raw == 0, "%d bytes escaped unsafely", bad_raw);
    TH_CHECK(nul_shown, "NUL shown as \\x00");
    TH_CHECK(ff_shown, "0xFF (invalid UTF-8) shown as \\xFF");
}

int main(void)
{
    TH_RUN(test_page_escaper);
    TH_RUN(test_top_acts_heap);
    TH_RUN(test_label_attribution);
    TH_RUN(test_splice_acc);
    TH_RUN(test_forward_replace);
    TH_RUN(test_study_driver);
    return th_summary();
}
