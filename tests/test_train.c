/* tests/test_train.c - the training loop (>>train): schedule, AdamW parity with
   PyTorch, overfitting, gradient accumulation, checkpoints and resume,
   determinism, evaluation and router statistics, sampling.
   Fixtures come from tools/torch_ref_train.py. */
#include "moexc.h"
#include "harness.h"
#include <stdlib.h>

#define FIXTURES "tests/fixtures/"
#define TMP_CKPT "build/test_train_ckpt.safetensors"
#define TMAX(a, b) ((a) > (b) ? (a) : (b))

/* Shared with tools/torch_ref_train.py. */
static const char ref_text[] =
    "The quick brown fox jumps over the lazy dog. int main(void) { return 0; } "
    "Energy is conserved: dE/dt = 0. Once upon a time a small robot learned to read.\n";

/* A token stream built by hand (this test does not depend on >>data). */
static void tokens_init(moexc_tokens *t, size_t n, int n_domains)
{
    int d;
    memset(t, 0, sizeof(*t));
    t->tokens = (uint16_t *)calloc(n ? n : 1, sizeof(uint16_t));
    t->domains = (uint8_t *)calloc(n ? n : 1, 1);
    t->n = t->capacity = n;
    t->vocab_size = 256;
    t->n_domains = n_domains;
    for (d = 0; d < n_domains; d++) sprintf(t->domain_names[d], "dom%d", d);
}
static void tokens_release(moexc_tokens *t) { free(t->tokens); free(t->domains); memset(t, 0, sizeof(*t)); }

/* n_domains equal contiguous parts; domain d repeats short phrases over an
   alphabet of 4 << d symbols (learnable, with different unigram entropies). */
static void tokens_synthetic(moexc_tokens *t, size_t n, int n_domains, uint64_t seed)
{
    moexc_rng rng;
    size_t i;
    tokens_init(t, n, n_domains);
    moexc_rng_seed(&rng, seed);
    for (i = 0; i < n; i++) {
        int d = (int)(i * (size_t)n_domains / n);
        uint32_t alphabet = 4u << d;
        t->domains[i] = (uint8_t)d;
        t->tokens[i] = (uint16_t)(32 + 40 * d + (i % 7 < 3 ? (uint32_t)(i % 7) : 3 + moexc_rng_below(&rng, alphabet)));
    }
}

static moexc_model_config tiny_config(int moe)
{
    moexc_model_config c;
    memset(&c, 0, sizeof(c));
    c.d_model = 16; c.n_heads = 2; c.n_layers = 2; c.context = 16;
    c.ffn = moe ? MOEXC_FFN_MOE : MOEXC_FFN_DENSE;
    c.d_ff = 64; c.n_experts = 4; c.top_k = 2; c.d_expert = 32;
    c.seed = 5;
    return c;
}

static int same_bits(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

/* ---- schedule ------------------------------------------------------------ */
static void test_lr_schedule(void)
{
    moexc_train_options o;
    memset(&o, 0, sizeof(o));
    o.lr = 1.0f; o.min_lr_ratio = 0.1f; o.warmup_steps = 4; o.total_steps = 104;
    TH_CHECK_NEAR(moexc_train_lr(&o, 0), 0.25, 1e-12, 0, "first warm-up step");
    TH_CHECK_NEAR(moexc_train_lr(&o, 3), 1.0, 1e-12, 0, "end of warm-up = peak");
    TH_CHECK_NEAR(moexc_train_lr(&o, 54), 0.55, 1e-9, 0, "half-way through cosine = (lr + lr_min) / 2");
    TH_CHECK_NEAR(moexc_train_lr(&o, 104), 0.1, 0, 1e-6, "end of cosine = lr_min (float ratio)");
    TH_CHECK(moexc_train_lr(&o, 40) > moexc_train_lr(&o, 41), "cosine decreases monotonically");
    o.min_lr_ratio = -1.0f;
    TH_CHECK_NEAR(moexc_train_lr(&o, 104), 0.0, 1e-12, 0, "negative min_lr_ratio decays to 0");
    memset(&o, 0, sizeof(o));   /* defaults: lr 1e-3, 1000 steps, 50 warm-up */
    TH_CHECK_NEAR(moexc_train_lr(&o, 49), 1e-3, 1e-9, 1e-6, "default warm-up is 5%% of 1000 steps");
    TH_CHECK_NEAR(moexc_train_lr(&o, 1000), 1e-4, 1e-9, 1e-6, "default lr_min = 0.1 lr");
}

/* ---- AdamW + schedule + clipping + accumulation against PyTorch ---------- */
static void parity(const char *kind)
{
    char path[256], line[256];
    moexc_model *m = NULL, *ref = NULL;
    moexc_trainer *t = NULL;
    moexc_tokens data;
    moexc_train_options o;
    moexc_error err;
    FILE *f;
    int step = 0, k, checked = 0;
    size_t i, n;
    double max_rel = 0;

    tokens_init(&data, sizeof(ref_text) - 1, 1);
    for (i = 0; i < data.n; i++) data.tokens[i] = (unsigned char)ref_text[i];
    memset(&o, 0, sizeof(o));
    o.lr = 1e-2f; o.min_lr_ratio = 0.1f; o.beta1 = 0.9f; o.beta2 = 0.95f; o.eps = 1e-8f;
    o.weight_decay = 0.1f; o.grad_clip = 0.5f; o.warmup_steps = 3; o.total_steps = 10;
    o.batch_size = 2; o.seq_len = 16; o.grad_accum = 2; o.seed = 7;
    o.eval_fraction = -1.0f; o.eval_interval = -1;
    sprintf(path, FIXTURES "train_init_%s.safetensors", kind);
    TH_CHECK(moexc_model_load(&m, path, &err) == MOEXC_OK, "%s: %s", path, err.message);
    sprintf(path, FIXTURES "train_losses_%s.txt", kind);
    f = fopen(path, "r");
    TH_CHECK(f != NULL, "cannot open %s", path);
    if (!m || !f) goto done;
    TH_CHECK(moexc_trainer_create(&t, m, &data, &o, &err) == MOEXC_OK, "%s", err.message);
    if (!t) goto done;
    for (k = 0; k < moexc_model_num_tensors(m); k++) {   /* torch groups decay by p.dim() >= 2 */
        const moexc_param_info *pi = moexc_model_tensor(m, k);
        TH_CHECK(pi->decay == (pi->ndim >= 2), "%s: decay flag %d, ndim %d", pi->name, pi->decay, pi->ndim);
    }
    while (fgets(line, sizeof(line), f)) {
        double loss, ce, lb, lr, gnorm;
        moexc_train_progress p;
        if (line[0] == '#') continue;
        if (sscanf(line, "%d %lf %lf %lf %lf %lf", &step, &loss, &ce, &lb, &lr, &gnorm) != 6) continue;
        TH_CHECK(moexc_trainer_step(t, &p, &err) == MOEXC_OK, "step %d: %s", step, err.message);
        TH_CHECK_NEAR(p.loss, loss, 0, 1e-4, kind);
        TH_CHECK_NEAR(p.ce, ce, 0, 1e-4, kind);
        TH_CHECK_NEAR(p.lb, lb, 1e-7, 1e-4, kind);
        TH_CHECK_NEAR(p.lr, lr, 0, 1e-6, kind);
        TH_CHECK_NEAR(p.grad_norm, gnorm, 0, 1e-3, kind);
        if (fabs(p.loss - loss) / loss > max_rel) max_rel = fabs(p.loss - loss) / loss;
        checked++;
    }
    TH_CHECK(checked == 10, "%s: %d reference steps read", kind, checked);
    /* the weights after the last step */
    sprintf(path, FIXTURES "train_final_%s.safetensors", kind);
    TH_CHECK(moexc_model_load(&ref, path, &err) == MOEXC_OK, "%s: %s", path, err.message);
    if (ref) {
        const float *a = moexc_model_params(m), *b = moexc_model_params(ref);
        double worst = 0;
        n = moexc_model_num_params(m);
        for (i = 0; i < n; i++) worst = TMAX(worst, fabs((double)a[i] - b[i]));
        TH_CHECK(worst < 2e-5, "%s: final weights differ from PyTorch by up to %g", kind, worst);
        printf("  %s: 10 AdamW steps, max relative loss difference %.2e, max weight difference %.2e\n", kind, max_rel, worst);
    }
done:
    if (f) fclose(f);
    moexc_trainer_free(t);
    moexc_model_free(m);
    moexc_model_free(ref);
    tokens_release(&data);
}
static void test_torch_parity_dense(void) { parity("dense"); }
static void test_torch_parity_moe(void) { parity("moe"); }

/* ---- overfit one batch --------------------------------------------------- */
static void overfit(int moe)
{
    moexc_model_config c = tiny_config(moe);
    moexc_model *m = NULL;
    moexc_trainer *t = NULL;
    moexc_tokens data;
    moexc_train_options o;
    moexc_train_progress p;
    moexc_error err;
    double first = 0;
    int s;
    size_t i;
    tokens_init(&data, 17, 1);           /* exactly one window of T + 1 = 17 tokens */
    for (i = 0; i < data.n; i++) data.tokens[i] = (unsigned char)ref_text[i];
    memset(&o, 0, sizeof(o));
    o.lr = 1e-2f; o.total_steps = 150; o.warmup_steps = 10; o.batch_size = 2; o.seq_len = 16;
    o.eval_fraction = -1.0f; o.eval_interval = -1;
    TH_CHECK(moexc_model_create(&m, &c, &err) == MOEXC_OK, "%s", err.message);
    TH_CHECK(m && moexc_trainer_create(&t, m, &data, &o, &err) == MOEXC_OK, "%s", err.message);
    for (s = 0; t && s < o.total_steps; s++) {
        if (moexc_trainer_step(t, &p, &err) != MOEXC_OK) { TH_CHECK(0, "step %d: %s", s, err.message); break; }
        if (s == 0) first = p.ce;
    }
    TH_CHECK_NEAR(first, log(256.0), 0.1, 0, "initial loss is about ln V");
    TH_CHECK(p.ce < 0.05, "%s: cross-entropy after 150 steps on one batch: %g", moe ? "moe" : "dense", p.ce);
    moexc_trainer_free(t);
    moexc_model_free(m);
    tokens_release(&data);
}
static void test_overfit_dense(void) { overfit(0); }
static void test_overfit_moe(void) { overfit(1); }

/* ---- a step whose update overflows the parameters stops with an error ------ */
/* lr 1e38: AdamW's first bias-corrected step size, lr / (1 - beta1), is past
   FLT_MAX, so the parameters, not the loss or the gradients, turn
   non-finite. The check that catches it runs inside the update. */
static void test_overflow_in_update(void)
{
    moexc_model_config c = tiny_config(0);
    moexc_model *m = NULL;
    moexc_trainer *t = NULL;
    moexc_tokens data;
    moexc_train_options o;
    moexc_train_progress p;
    moexc_error err;
    moexc_status st = MOEXC_OK;
    size_t i;
    tokens_init(&data, 64, 1);
    for (i = 0; i < data.n; i++) data.tokens[i] = (unsigned char)ref_text[i];
    memset(&o, 0, sizeof(o));
    o.lr = 1e38f; o.total_steps = 10; o.warmup_steps = -1; o.batch_size = 2; o.seq_len = 16;
    o.eval_fraction = -1.0f; o.eval_interval = -1;
    TH_CHECK(moexc_model_create(&m, &c, &err) == MOEXC_OK, "%s", err.message);
    TH_CHECK(m && moexc_trainer_create(&t, m, &data, &o, &err) == MOEXC_OK, "%s", err.message);
    if (t) st = moexc_trainer_step(t, &p, &err);
    TH_CHECK(st == MOEXC_ERR_NUMERIC, "step with lr 1e38: status %d (%s)", (int)st, st ? err.message : "ok");
    TH_CHECK(st && strstr(err.message, "step 1 diverged") && strstr(err.message, "after the AdamW update"),
             "the error names the step and the update: %s", st ? err.message : "(none)");
    moexc_trainer_free(t);
    moexc_model_free(m);
    tokens_release(&data);
}

/* ---- gradient accumulation: 2 x (B=2) = 1 x (B=4) on the same windows ------ */
static void test_grad_accum(void)
{
    moexc_model_config c = tiny_config(0);
    moexc_model *m1 = NULL, *m2 = NULL;
    moexc_trainer *t1 = NULL, *t2 = NULL;
    moexc_tokens data;
    moexc_train_options o;
    moexc_train_progress p1, p2;
    moexc_error err;
    size_t i, n;
    double worst = 0;
    int s;
    tokens_synthetic(&data, 4000, 1, 3);
    memset(&o, 0, sizeof(o));
    o.lr = 3e-3f; o.total_steps = 5; o.seq_len = 16; o.eval_fraction = -1.0f; o.seed = 9;
    TH_CHECK(moexc_model_create(&m1, &c, &err) == MOEXC_OK && moexc_model_create(&m2, &c, &err) == MOEXC_OK, "%s", err.message);
    o.batch_size = 4; o.grad_accum = 1;
    TH_CHECK(moexc_trainer_create(&t1, m1, &data, &o, &err) == MOEXC_OK, "%s", err.message);
    o.batch_size = 2; o.grad_accum = 2;
    TH_CHECK(moexc_trainer_create(&t2, m2, &data, &o, &err) == MOEXC_OK, "%s", err.message);
    for (s = 0; t1 && t2 && s < 5; s++) {
        TH_CHECK(moexc_trainer_step(t1, &p1, &err) == MOEXC_OK && moexc_trainer_step(t2, &p2, &err) == MOEXC_OK, "%s", err.message);
        TH_CHECK_NEAR(p2.loss, p1.loss, 0, 1e-5, "accumulated loss = big-batch loss");
        TH_CHECK_NEAR(p2.grad_norm, p1.grad_norm, 0, 1e-4, "accumulated gradient norm");
        TH_CHECK(p1.tokens == p2.tokens, "tokens per step");
    }
    n = moexc_model_num_params(m1);
    for (i = 0; i < n; i++) worst = TMAX(worst, fabs((double)moexc_model_params(m1)[i] - moexc_model_params(m2)[i]));
    TH_CHECK(worst < 1e-5, "weights after 5 steps differ by %g", worst);
    moexc_trainer_free(t1); moexc_trainer_free(t2);
    moexc_model_free(m1); moexc_model_free(m2);
    tokens_release(&data);
}

/* Train `steps` steps of a fresh tiny model; returns the trainer (model in *m). */
static moexc_trainer *fresh(moexc_model **m, const moexc_tokens *data, int moe, uint64_t seed, int total)
{
    moexc_model_config c = tiny_config(moe);
    moexc_train_options o;
    moexc_trainer *t = NULL;
    moexc_error err;
    memset(&o, 0, sizeof(o));
    o.lr = 3e-3f; o.total_steps = total; o.batch_size = 3; o.seq_len = 12; o.grad_accum = 2;
    o.eval_interval = 3; o.eval_batches = 2; o.seed = seed;
    *m = NULL;
    if (moexc_model_create(m, &c, &err) || moexc_trainer_create(&t, *m, data, &o, &err)) {
        TH_CHECK(0, "setup: %s", err.message);
        moexc_model_free(*m); *m = NULL;
        return NULL;
    }
    return t;
}

/* ---- determinism ----------------------------------------------------------- */
static void test_determinism(void)
{
    moexc_tokens data;
    moexc_model *a, *b, *c;
    moexc_trainer *ta, *tb, *tc;
    moexc_error err;
    tokens_synthetic(&data, 6000, 3, 4);
    ta = fresh(&a, &data, 1, 21, 6); tb = fresh(&b, &data, 1, 21, 6); tc = fresh(&c, &data, 1, 22, 6);
    if (ta && tb && tc) {
        TH_CHECK(moexc_trainer_run(ta, NULL, NULL, &err) == MOEXC_OK, "%s", err.message);
        TH_CHECK(moexc_trainer_run(tb, NULL, NULL, &err) == MOEXC_OK, "%s", err.message);
        TH_CHECK(moexc_trainer_run(tc, NULL, NULL, &err) == MOEXC_OK, "%s", err.message);
        TH_CHECK(moexc_trainer_step_count(ta) == 6, "run stops at total_steps");
        TH_CHECK(same_bits(moexc_model_params(a), moexc_model_params(b), moexc_model_num_params(a)), "same seed, same bits");
        TH_CHECK(!same_bits(moexc_model_params(a), moexc_model_params(c), moexc_model_num_params(a)), "another data seed differs");
    }
    moexc_trainer_free(ta); moexc_trainer_free(tb); moexc_trainer_free(tc);
    moexc_model_free(a); moexc_model_free(b); moexc_model_free(c);
    tokens_release(&data);
}

/* ---- checkpoint round trip and bit-exact resume ----------------------------- */
static void resume_case(int moe)
{
    moexc_tokens data;
    moexc_model *a = NULL, *b = NULL, *r = NULL;
    moexc_trainer *ta, *tb, *tr = NULL;
    moexc_error err;
    int s;
    tokens_synthetic(&data, 6000, 3, 5);
    ta = fresh(&a, &data, moe, 31, 8);
    tb = fresh(&b, &data, moe, 31, 8);
    if (ta && tb) {
        TH_CHECK(moexc_trainer_run(ta, NULL, NULL, &err) == MOEXC_OK, "%s", err.message);      /* 8 straight */
        for (s = 0; s < 4; s++) TH_CHECK(moexc_trainer_step(tb, NULL, &err) == MOEXC_OK, "%s", err.message);
        TH_CHECK(moexc_trainer_save(tb, TMP_CKPT, &err) == MOEXC_OK, "save: %s", err.message);
        TH_CHECK(moexc_trainer_resume(&tr, &r, TMP_CKPT, &data, &err) == MOEXC_OK, "resume: %s", err.message);
    }
    if (tr) {
        const moexc_train_options *o1 = moexc_trainer_options(tb), *o2 = moexc_trainer_options(tr);
        TH_CHECK(moexc_trainer_step_count(tr) == 4, "step restored: %d", moexc_trainer_step_count(tr));
        TH_CHECK(memcmp(o1, o2, sizeof(*o1)) == 0, "options restored exactly");
        TH_CHECK(same_bits(moexc_model_params(b), moexc_model_params(r), moexc_model_num_params(b)), "weights restored");
        TH_CHECK(memcmp(moexc_model_get_config(b), moexc_model_get_config(r), sizeof(moexc_model_config)) == 0, "config restored");
        TH_CHECK(moexc_trainer_run(tr, NULL, NULL, &err) == MOEXC_OK, "%s", err.message);      /* 4 more */
        TH_CHECK(moexc_trainer_step_count(tr) == 8, "resumed run ends at 8");
        TH_CHECK(same_bits(moexc_model_params(a), moexc_model_params(r), moexc_model_num_params(a)),
                 "%s: 4 + save + load + 4 steps = 8 straight steps, bit for bit", moe ? "moe" : "dense");
    }
    moexc_trainer_free(ta); moexc_trainer_free(tb); moexc_trainer_free(tr);
    moexc_model_free(a); moexc_model_free(b); moexc_model_free(r);
    tokens_release(&data);
    remove(TMP_CKPT);
}
static void test_resume_dense(void) { resume_case(0); }
static void test_resume_moe(void) { resume_case(1); }

/* ---- bad checkpoints are refused cleanly ------------------------------------- */
static unsigned char *slurp(const char *path, long *size)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END); *size = ftell(f); fseek(f, 0, SEEK_SET);
    buf = (unsigned char *)malloc((size_t)*size);
    if (buf && fread(buf, 1, (size_t)*size, f) != (size_t)*size) { free(buf); buf = NULL; }
    fclose(f);
    return buf;
}
static void spit(const char *path, const unsigned char *buf, long size)
{
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(buf, 1, (size_t)size, f);
    fclose(f);
}

static void test_bad_checkpoints(void)
{
    static const long cuts[] = { 0, 4, 8, 100, 1000, -4000, -1 };
    const char *bad = "build/test_train_bad.safetensors";
    moexc_tokens data, other;
    moexc_model *m = NULL, *r = NULL;
    moexc_trainer *t, *tr = NULL;
    moexc_error err;
    moexc_status st;
    unsigned char *buf;
    long size = 0;
    size_t k;
    tokens_synthetic(&data, 6000, 3, 6);
    tokens_synthetic(&other, 6000, 3, 7);
    t = fresh(&m, &data, 1, 41, 4);
    if (!t) { tokens_release(&data); tokens_release(&other); return; }
    TH_CHECK(moexc_trainer_step(t, NULL, &err) == MOEXC_OK, "%s", err.message);
    TH_CHECK(moexc_trainer_save(t, TMP_CKPT, &err) == MOEXC_OK, "%s", err.message);
    buf = slurp(TMP_CKPT, &size);
    TH_CHECK(buf && size > 5000, "checkpoint written (%ld bytes)", size);
    for (k = 0; buf && k < sizeof(cuts) / sizeof(cuts[0]); k++) {
        long keep = cuts[k] >= 0 ? cuts[k] : size + cuts[k];
        spit(bad, buf, keep);
        st = moexc_trainer_resume(&tr, &r, bad, &data, &err);
        TH_CHECK(st != MOEXC_OK && !tr && !r, "truncated to %ld of %ld bytes: accepted", keep, size);
        if (st != MOEXC_OK) TH_CHECK(strstr(err.message, bad) != NULL, "message names the file: %s", err.message);
    }
    if (buf) {   /* one flipped bit in the last tensor's data, then in the first tensor's */
        buf[size - 3] ^= 0x10;
        spit(bad, buf, size);
        st = moexc_trainer_resume(&tr, &r, bad, &data, &err);
        TH_CHECK(st == MOEXC_ERR_CHECKSUM, "bit flip at the end: status %s (%s)", moexc_status_name(st), err.message);
        buf[size - 3] ^= 0x10;
        buf[size - 4 * (long)moexc_model_num_params(m) * 3 + 5] ^= 0x01;
        spit(bad, buf, size);
        st = moexc_trainer_resume(&tr, &r, bad, &data, &err);
        TH_CHECK(st == MOEXC_ERR_CHECKSUM, "bit flip in the weights: status %s (%s)", moexc_status_name(st), err.message);
    }
    st = moexc_trainer_resume(&tr, &r, TMP_CKPT, &other, &err);
    TH_CHECK(st == MOEXC_ERR_ARG && strstr(err.message, "other data"), "other data refused: %s", err.message);
    TH_CHECK(moexc_model_save(m, bad, &err) == MOEXC_OK, "%s", err.message);
    st = moexc_trainer_resume(&tr, &r, bad, &data, &err);
    TH_CHECK(st == MOEXC_ERR_MISSING, "a model-only file is not a training checkpoint: %s", err.message);
    st = moexc_trainer_resume(&tr, &r, "build/no_such_checkpoint", &data, &err);
    TH_CHECK(st == MOEXC_ERR_IO, "missing file: %s", moexc_status_name(st));
    TH_CHECK(moexc_trainer_resume(&tr, &r, TMP_CKPT, &data, &err) == MOEXC_OK, "the intact file still loads: %s", err.message);
    free(buf);
    moexc_trainer_free(tr); moexc_model_free(r);
    moexc_trainer_free(t); moexc_model_free(m);
    tokens_release(&data); tokens_release(&other);
    remove(TMP_CKPT); remove(bad);
}

/* ---- evaluation and router statistics ---------------------------------------- */
static void test_eval_and_router_stats(void)
{
    moexc_tokens data;
    moexc_model *m = NULL;
    moexc_trainer *t;
    const moexc_eval_result *ev = NULL;
    moexc_error err;
    int d, l, e;
    tokens_synthetic(&data, 30000, 3, 8);
    t = fresh(&m, &data, 1, 51, 10);
    if (!t) { tokens_release(&data); return; }
    TH_CHECK(moexc_trainer_evaluate(t, &ev, &err) == MOEXC_OK, "%s", err.message);
    if (ev) {
        const moexc_router_stats *rs = ev->router;
        double counted = 0;
        TH_CHECK(ev->n_domains == 3 && ev->step == 0, "header");
        for (d = 0; d < 3; d++) {
            /* domain d: 3 of 7 tokens fixed, 4 of 7 uniform over 4 << d symbols */
            double p_fixed = 3.0 / 7, p_rand = 4.0 / 7, sym = (double)(4 << d);
            double h = -(3 * (p_fixed / 3) * log(p_fixed / 3)) - sym * (p_rand / sym) * log(p_rand / sym);
            TH_CHECK(ev->domain[d].tokens >= 20, "domain %d evaluated on %g tokens", d, ev->domain[d].tokens);
            TH_CHECK_NEAR(ev->domain[d].unigram_nats, h, 0.08, 0, "unigram baseline = the domain's entropy");
            TH_CHECK_NEAR(ev->domain[d].nats, log(256.0), 0.1, 0, "untrained model: about ln V nats");
            TH_CHECK_NEAR(ev->domain[d].bits_per_byte, ev->domain[d].nats / log(2.0), 1e-12, 0, "bits per byte");
            counted += ev->domain[d].tokens;
        }
        TH_CHECK(counted == ev->all.tokens && counted == 2 * 3 * 12, "all held-out predictions counted once: %g", counted);
        TH_CHECK(rs->n_layers == 2 && rs->n_experts == 4 && rs->top_k == 2 && rs->n_tokens == counted, "router stats shape");
        for (l = 0; l < rs->n_layers; l++) {
            double fs = 0, ps = 0;
            for (e = 0; e < 4; e++) { fs += rs->f[l * 4 + e]; ps += rs->P[l * 4 + e]; }
            TH_CHECK_NEAR(fs, 1.0, 1e-9, 0, "f sums to 1");
            TH_CHECK_NEAR(ps, 1.0, 1e-5, 0, "P sums to 1");
            TH_CHECK(rs->entropy[l] > 0 && rs->entropy[l] <= 2.0 + 1e-12, "usage entropy %g in (0, log2 E]", rs->entropy[l]);
            for (d = 0; d < 3; d++) {
                double share = 0;
                for (e = 0; e < 4; e++) share += rs->domain_share[(l * 3 + d) * 4 + e];
                TH_CHECK_NEAR(share, 2.0, 1e-9, 0, "a domain's shares sum to k");
            }
        }
    }
    /* training lowers the held-out loss below the unigram baseline's neighbourhood */
    {
        TH_CHECK(moexc_trainer_run(t, NULL, NULL, &err) == MOEXC_OK, "%s", err.message);
        TH_CHECK(moexc_trainer_evaluate(t, &ev, &err) == MOEXC_OK, "%s", err.message);
        TH_CHECK(ev && ev->step == 10 && ev->all.nats < log(256.0) - 0.2, "10 steps lower the held-out loss: %g", ev ? ev->all.nats : 0);
    }
    moexc_trainer_free(t);
    moexc_model_free(m);
    tokens_release(&data);
}

/* ---- bad options ---------------------------------------------------------------- */
static void test_bad_options(void)
{
    moexc_model_config c = tiny_config(0);
    moexc_model *m = NULL;
    moexc_trainer *t = NULL;
    moexc_tokens data;
    moexc_train_options o;
    moexc_error err;
    tokens_synthetic(&data, 3000, 2, 9);
    TH_CHECK(moexc_model_create(&m, &c, &err) == MOEXC_OK, "%s", err.message);
    memset(&o, 0, sizeof(o)); o.seq_len = 17;
    TH_CHECK(moexc_trainer_create(&t, m, &data, &o, &err) == MOEXC_ERR_ARG && !t && strstr(err.message, "seq_len"), "seq_len > context: %s", err.message);
    memset(&o, 0, sizeof(o)); o.beta2 = 1.0f;
    TH_CHECK(moexc_trainer_create(&t, m, &data, &o, &err) == MOEXC_ERR_ARG && !t, "beta2 = 1: %s", err.message);
    memset(&o, 0, sizeof(o)); o.lr = -1.0f;
    TH_CHECK(moexc_trainer_create(&t, m, &data, &o, &err) == MOEXC_ERR_ARG && !t, "negative lr: %s", err.message);
    memset(&o, 0, sizeof(o)); o.eval_fraction = 0.002f;   /* 3 held-out tokens per domain */
    TH_CHECK(moexc_trainer_create(&t, m, &data, &o, &err) == MOEXC_ERR_ARG && !t && strstr(err.message, "held-out"), "no held-out window: %s", err.message);
    o.eval_interval = -1;
    TH_CHECK(moexc_trainer_create(&t, m, &data, &o, &err) == MOEXC_OK && t, "... fine without evaluation: %s", err.message);
    moexc_trainer_free(t); t = NULL;
    data.tokens[10] = 300;   /* beyond the byte vocabulary */
    memset(&o, 0, sizeof(o));
    TH_CHECK(moexc_trainer_create(&t, m, &data, &o, &err) == MOEXC_ERR_ARG && !t && strstr(err.message, "token 10"), "bad token: %s", err.message);
    data.tokens[10] = 65; data.n = 10;
    TH_CHECK(moexc_trainer_create(&t, m, &data, &o, &err) == MOEXC_ERR_ARG && !t, "too little data: %s", err.message);
    moexc_model_free(m);
    tokens_release(&data);
}

/* ---- sampling ------------------------------------------------------------------- */
static void test_generate(void)
{
    moexc_model *m = NULL;
    moexc_error err;
    moexc_rng rng;
    uint16_t prompt[3] = { 'T', 'h', 'e' }, g1[40], g2[40], s1[40], s2[40];
    int i, in_range = 1;
    TH_CHECK(moexc_model_load(&m, FIXTURES "train_final_dense.safetensors", &err) == MOEXC_OK, "%s", err.message);
    if (!m) return;
    TH_CHECK(moexc_generate(m, prompt, 3, 40, 0.0f, 0, NULL, g1, &err) == MOEXC_OK, "greedy: %s", err.message);
    moexc_rng_seed(&rng, 1);
    TH_CHECK(moexc_generate(m, prompt, 3, 40, 1.0f, 1, &rng, g2, &err) == MOEXC_OK, "top-1: %s", err.message);
    TH_CHECK(memcmp(g1, g2, sizeof(g1)) == 0, "top-k = 1 sampling is greedy decoding");
    moexc_rng_seed(&rng, 2);
    TH_CHECK(moexc_generate(m, prompt, 3, 40, 1.0f, 0, &rng, s1, &err) == MOEXC_OK, "%s", err.message);
    moexc_rng_seed(&rng, 2);
    TH_CHECK(moexc_generate(m, prompt, 3, 40, 1.0f, 0, &rng, s2, &err) == MOEXC_OK, "%s", err.message);
    TH_CHECK(memcmp(s1, s2, sizeof(s1)) == 0, "same seed, same sample");
    for (i = 0; i < 40; i++) in_range &= s1[i] < 256;
    TH_CHECK(in_range, "sampled tokens are in the vocabulary");
    TH_CHECK(moexc_generate(m, prompt, 0, 5, 1.0f, 0, &rng, s1, &err) == MOEXC_ERR_ARG, "empty prompt refused");
    prompt[1] = 999;
    TH_CHECK(moexc_generate(m, prompt, 3, 5, 1.0f, 0, &rng, s1, &err) == MOEXC_ERR_ARG, "out-of-vocabulary prompt refused");
    moexc_model_free(m);
}

int main(void)
{
    TH_RUN(test_lr_schedule);
    TH_RUN(test_torch_parity_dense);
    TH_RUN(test_torch_parity_moe);
    TH_RUN(test_overfit_dense);
    TH_RUN(test_overfit_moe);
    TH_RUN(test_overflow_in_update);
    TH_RUN(test_grad_accum);
    TH_RUN(test_determinism);
    TH_RUN(test_resume_dense);
    TH_RUN(test_resume_moe);
    TH_RUN(test_bad_checkpoints);
    TH_RUN(test_eval_and_router_stats);
    TH_RUN(test_bad_options);
    TH_RUN(test_generate);
    return th_summary();
}
