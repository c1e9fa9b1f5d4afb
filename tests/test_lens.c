/* tests/test_lens.c - the MoE Lens analyses (>>lens, SPEC §6) on known
   answers, and the router statistics while k' < k experts are forced. */
#include "moexc.h"
#include "harness.h"
#include <stdlib.h>

static moexc_model_config lens_config(int gate)
{
    moexc_model_config c;
    memset(&c, 0, sizeof(c));
    c.vocab_size = 32; c.d_model = 16; c.n_heads = 2; c.n_layers = 2; c.context = 16;
    c.ffn = MOEXC_FFN_MOE; c.n_experts = 4; c.top_k = 2; c.d_expert = 16;
    c.gate = gate; c.init_std = 0.2f; c.seed = 7;
    return c;
}

static void fill_tokens(uint16_t *in, uint8_t *dom, int n, int V, int D)
{
    int i;
    for (i = 0; i < n; i++) {
        in[i] = (uint16_t)((i * 7 + i / 5) % V);
        dom[i] = (uint8_t)(i * D / n);
    }
}

/* Router statistics taken while k' < k experts are forced count k' choices
   per token (SPEC §6): before the fix they read the (N x k') choices with
   stride k and counted stale slots. */
static void test_router_stats_forced_k(void)
{
    moexc_model_config c = lens_config(MOEXC_GATE_RAW);
    moexc_model *m = NULL;
    moexc_router_stats rs;
    moexc_error err;
    enum { B = 3, T = 16, N = B * T, D = 2 };
    uint16_t in[N];
    uint8_t dom[N];
    int l, t, e, d;
    fill_tokens(in, dom, N, c.vocab_size, D);
    TH_CHECK(moexc_model_create(&m, &c, &err) == MOEXC_OK, "create: %s", err.message);
    if (!m) return;
    /* a k = 2 forward first, so that the choice buffers hold stale slots */
    TH_CHECK(moexc_model_forward(m, in, NULL, B, T, NULL, &err) == MOEXC_OK, "forward: %s", err.message);
    TH_CHECK(moexc_model_set_active_experts(m, 1, &err) == MOEXC_OK, "set k' = 1: %s", err.message);
    TH_CHECK(moexc_model_active_experts(m) == 1, "active experts %d", moexc_model_active_experts(m));
    TH_CHECK(moexc_model_forward(m, in, NULL, B, T, NULL, &err) == MOEXC_OK, "forward: %s", err.message);
    TH_CHECK(moexc_router_stats_init(&rs, m, D, &err) == MOEXC_OK, "init: %s", err.message);
    TH_CHECK(moexc_router_stats_add(&rs, m, dom, N, &err) == MOEXC_OK, "add: %s", err.message);
    for (l = 0; l < c.n_layers; l++) {
        const int *ch = moexc_model_router_choices(m, l);
        double want[D][4], total = 0, fsum = 0;
        memset(want, 0, sizeof(want));
        for (t = 0; t < N; t++) want[dom[t]][ch[t]] += 1.0;          /* one choice per token */
        for (e = 0; e < c.n_experts; e++) {
            double slots = want[0][e] + want[1][e];
            TH_CHECK(rs.slot_count[l * 4 + e] == slots, "layer %d expert %d: %g slots, want %g", l, e,
                     rs.slot_count[l * 4 + e], slots);
            TH_CHECK_NEAR(rs.f[l * 4 + e], slots / N, 1e-12, 0, "f_e = slots / (k' N)");
            total += rs.slot_count[l * 4 + e];
            fsum += rs.f[l * 4 + e];
            for (d = 0; d < D; d++)
                TH_CHECK_NEAR(rs.domain_share[(l * D + d) * 4 + e], want[d][e] / (N / 2), 1e-12, 0,
                              "domain share");
        }
        TH_CHECK(total == N, "layer %d: %g slots counted for %d tokens at k' = 1", l, total, N);
        TH_CHECK_NEAR(fsum, 1.0, 1e-12, 0, "f sums to 1");
    }
    moexc_router_stats_free(&rs);
    moexc_model_free(m);
}

/* The trainer's per-step usage figures read k' choices per token too. */
static void test_trainer_usage_forced_k(void)
{
    moexc_model_config c = lens_config(MOEXC_GATE_RAW);
    moexc_model *m = NULL;
    moexc_trainer *tr = NULL;
    moexc_train_options o;
    moexc_train_progress p;
    moexc_tokens data;
    moexc_error err;
    size_t i;
    int l, t, e;
    memset(&data, 0, sizeof(data));
    memset(&o, 0, sizeof(o));
    data.n = data.capacity = 4000;
    data.tokens = (uint16_t *)calloc(data.n, sizeof(uint16_t));
    data.domains = (uint8_t *)calloc(data.n, 1);
    data.vocab_size = 32; data.n_domains = 1;
    strcpy(data.domain_names[0], "all");
    for (i = 0; i < data.n; i++) data.tokens[i] = (uint16_t)((i * 7 + i / 3) % 32);
    o.total_steps = 2; o.batch_size = 4; o.seq_len = 16; o.eval_interval = -1; o.seed = 3;
    TH_CHECK(moexc_model_create(&m, &c, &err) == MOEXC_OK, "create: %s", err.message);
    TH_CHECK(m && moexc_trainer_create(&tr, m, &data, &o, &err) == MOEXC_OK, "trainer: %s", err.message);
    if (tr) {
        TH_CHECK(moexc_trainer_step(tr, &p, &err) == MOEXC_OK, "step k = 2: %s", err.message);
        TH_CHECK(moexc_model_set_active_experts(m, 1, &err) == MOEXC_OK, "set: %s", err.message);
        TH_CHECK(moexc_trainer_step(tr, &p, &err) == MOEXC_OK, "step k' = 1: %s", err.message);
        {   /* brute force from the last (only) micro-batch's choices */
            double lo = 1.0, hi = 0.0, h = 0.0;
            for (l = 0; l < c.n_layers; l++) {
                const int *ch = moexc_model_router_choices(m, l);
                double cnt[4] = {0, 0, 0, 0};
                for (t = 0; t < 4 * 16; t++) cnt[ch[t]] += 1.0;
                for (e = 0; e < 4; e++) {
                    double f = cnt[e] / 64.0;
                    if (f > 0) h -= f * log(f) / log(2.0) / c.n_layers;
                    lo = f < lo ? f : lo;
                    hi = f > hi ? f : hi;
                }
            }
            TH_CHECK_NEAR(p.usage_min, lo, 1e-12, 0, "usage min");
            TH_CHECK_NEAR(p.usage_max, hi, 1e-12, 0, "usage max");
            TH_CHECK_NEAR(p.usage_entropy, h, 1e-9, 0, "usage entropy");
        }
    }
    moexc_trainer_free(tr);
    moexc_model_free(m);
    free(data.tokens);
    free(data.domains);
}

/* Set every expert of every layer to expert 0's weights. */
static void make_experts_identical(moexc_model *m)
{
    const moexc_model_config *c = moexc_model_get_config(m);
    static const char *const parts[3] = {"w_gate", "w_up", "w_down"};
    float *p = moexc_model_params(m);
    char name[96];
    int l, j, e;
    for (l = 0; l < c->n_layers; l++)
        for (j = 0; j < 3; j++) {
            const moexc_param_info *in;
            size_t per;
            snprintf(name, sizeof(name), "layers.%d.moe.experts.%s", l, parts[j]);
            in = moexc_model_find_tensor(m, name);
            if (!in) continue;
            per = in->size / (size_t)c->n_experts;
            for (e = 1; e < c->n_experts; e++) memcpy(p + in->offset + e * per, p + in->offset, per * sizeof(float));
        }
}
static void zero_router(moexc_model *m)
{
    const moexc_model_config *c = moexc_model_get_config(m);
    char name[64];
    int l;
    for (l = 0; l < c->n_layers; l++) {
        const moexc_param_info *in;
        snprintf(name, sizeof(name), "layers.%d.moe.router.weight", l);
        in = moexc_model_find_tensor(m, name);
        if (in) memset(moexc_model_params(m) + in->offset, 0, in->size * sizeof(float));
    }
}

enum { LB = 3, LT = 16, LN = LB * LT, LD = 2 };
static void lens_batch(uint16_t *in, uint16_t *tg, uint8_t *dom, int V)
{
    int i;
    for (i = 0; i < LN; i++) {
        in[i] = (uint16_t)((i * 7 + i / 5) % V);
        tg[i] = (uint16_t)((i * 7 + 3 + i / 4) % V);
        dom[i] = (uint8_t)(i / LT == 1);            /* sequence 1 is domain 1 */
    }
}

/* Identical experts and the renormalised gate: the top-1 expert alone is the
   mixture, so every cosine is 1, every decoding agrees, KL is 0, and the
   perplexity does not depend on k'. */
static void test_lens_identical_experts(void)
{
    moexc_model_config c = lens_config(MOEXC_GATE_RENORM);
    moexc_model *m = NULL;
    moexc_lens lens;
    moexc_lens_options o;
    moexc_error err;
    uint16_t in[LN], tg[LN];
    uint8_t dom[LN];
    int l, d, k;
    lens_batch(in, tg, dom, c.vocab_size);
    memset(&o, 0, sizeof(o));
    o.max_k = 4;
    TH_CHECK(moexc_model_create(&m, &c, &err) == MOEXC_OK, "create: %s", err.message);
    if (!m) return;
    make_experts_identical(m);
    TH_CHECK(moexc_lens_init(&lens, m, LD, &o, &err) == MOEXC_OK, "init: %s", err.message);
    TH_CHECK(moexc_lens_add(&lens, m, in, tg, dom, LB, LT, &err) == MOEXC_OK, "add: %s", err.message);
    moexc_lens_finish(&lens);
    for (l = 0; l < c.n_layers; l++)
        for (d = 0; d <= LD; d++) {
            size_t ld = (size_t)l * (LD + 1) + d;
            TH_CHECK_NEAR(lens.cosine[ld], 1.0, 1e-6, 0, "hidden-state cosine");
            TH_CHECK_NEAR(lens.ffn_cosine[ld], 1.0, 1e-5, 0, "FFN-output cosine");
            TH_CHECK(lens.agreement[ld] == 1.0, "layer %d domain %d: top-1 agreement %g", l, d, lens.agreement[ld]);
            TH_CHECK_NEAR(lens.kl[ld], 0.0, 1e-9, 0, "KL");
        }
    TH_CHECK(lens.tokens[0] == 2 * LT && lens.tokens[1] == LT && lens.tokens[2] == LN, "tokens per domain");
    TH_CHECK(lens.seqs[0] == 2 && lens.seqs[1] == 1 && lens.seqs[2] == 3, "sequences per domain");
    for (d = 0; d <= LD; d++)
        for (k = 1; k <= 4; k++)
            TH_CHECK_NEAR(lens.ppl[k * (LD + 1) + d], lens.ppl[d], 0, 1e-5, "perplexity independent of k'");
    TH_CHECK(moexc_model_active_experts(m) == 2, "the model's k restored");
    moexc_lens_free(&lens);
    moexc_model_free(m);
}

/* A zero router gives every expert the same probability, and ties go to the
   lowest index: S(t) = {0, 1} for every token (k = 2), {0} for k = 1. */
static void test_lens_forced_router(void)
{
    int kcase;
    for (kcase = 1; kcase <= 2; kcase++) {
        moexc_model_config c = lens_config(MOEXC_GATE_RAW);
        moexc_model *m = NULL;
        moexc_lens lens;
        moexc_error err;
        uint16_t in[LN], tg[LN];
        uint8_t dom[LN];
        int l, d, i, j;
        c.top_k = kcase;
        lens_batch(in, tg, dom, c.vocab_size);
        TH_CHECK(moexc_model_create(&m, &c, &err) == MOEXC_OK, "create: %s", err.message);
        if (!m) return;
        zero_router(m);
        TH_CHECK(moexc_lens_init(&lens, m, LD, NULL, &err) == MOEXC_OK, "init: %s", err.message);
        TH_CHECK(moexc_lens_add(&lens, m, in, tg, dom, LB, LT, &err) == MOEXC_OK, "add: %s", err.message);
        moexc_lens_finish(&lens);
        for (l = 0; l < c.n_layers; l++)
            for (d = 0; d <= LD; d++) {
                size_t ld = (size_t)l * (LD + 1) + d;
                const double *co = lens.coact + ld * 16, *sh = lens.share + ld * 4, *cu = lens.curve + ld * 4;
                TH_CHECK(lens.concentration[ld] == 1, "k %d layer %d domain %d: concentration %d", kcase, l, d,
                         lens.concentration[ld]);
                TH_CHECK(cu[0] == 100.0 / kcase && cu[kcase - 1] == 100.0 && cu[3] == 100.0, "curve %g %g", cu[0], cu[3]);
                for (i = 0; i < 4; i++) {
                    TH_CHECK(sh[i] == (i < kcase ? 100.0 : 0.0), "share of expert %d: %g", i, sh[i]);
                    for (j = 0; j < 4; j++) {
                        double want = i < kcase ? (j < kcase ? 100.0 : 0.0) : NAN;
                        TH_CHECK(i < kcase ? co[i * 4 + j] == want : co[i * 4 + j] != co[i * 4 + j],
                                 "k %d C[%d][%d] = %g, want %g", kcase, i, j, co[i * 4 + j], want);
                    }
                }
            }
        moexc_lens_free(&lens);
        moexc_model_free(m);
    }
}

/* Co-activation and routing shares of a trained-looking (random) router,
   against a count by hand from the router's choices. */
static void test_lens_coactivation_by_hand(void)
{
    moexc_model_config c = lens_config(MOEXC_GATE_RAW);
    moexc_model *m = NULL;
    moexc_lens lens;
    moexc_error err;
    uint16_t in[LN], tg[LN];
    uint8_t dom[LN];
    int l, t, i, j, d;
    lens_batch(in, tg, dom, c.vocab_size);
    TH_CHECK(moexc_model_create(&m, &c, &err) == MOEXC_OK, "create: %s", err.message);
    if (!m) return;
    TH_CHECK(moexc_lens_init(&lens, m, LD, NULL, &err) == MOEXC_OK, "init: %s", err.message);
    TH_CHECK(moexc_lens_add(&lens, m, in, tg, dom, LB, LT, &err) == MOEXC_OK, "add: %s", err.message);
    moexc_lens_finish(&lens);
    TH_CHECK(moexc_model_forward(m, in, NULL, LB, LT, NULL, &err) == MOEXC_OK, "forward: %s", err.message);
    for (l = 0; l < c.n_layers; l++) {
        const int *ch = moexc_model_router_choices(m, l);
        for (d = 0; d <= LD; d++) {
            double n_i[4] = {0, 0, 0, 0}, n_ij[4][4], tok = 0, slots[4] = {0, 0, 0, 0}, best = 0;
            size_t ld = (size_t)l * (LD + 1) + d;
            int m50 = 0;
            memset(n_ij, 0, sizeof(n_ij));
            for (t = 0; t < LN; t++) {
                if (d < LD && dom[t] != d) continue;
                tok += 1;
                for (i = 0; i < 2; i++) {
                    n_i[ch[t * 2 + i]] += 1;
                    slots[ch[t * 2 + i]] += 1;
                    for (j = 0; j < 2; j++) n_ij[ch[t * 2 + i]][ch[t * 2 + j]] += 1;
                }
            }
            for (i = 0; i < 4; i++) {
                TH_CHECK_NEAR(lens.share[ld * 4 + i], 100.0 * n_i[i] / tok, 1e-12, 0, "share");
                for (j = 0; j < 4; j++)
                    if (n_i[i] > 0) TH_CHECK_NEAR(lens.coact[(ld * 4 + i) * 4 + j], 100.0 * n_ij[i][j] / n_i[i], 1e-12, 0, "C[i][j]");
            }
            /* concentration by brute force: take the largest remaining until >= half */
            {
                double taken = 0, used[4] = {0, 0, 0, 0};
                while (2 * taken < 2 * tok) {
                    int arg = -1;
                    for (i = 0; i < 4; i++) if (!used[i] && (arg < 0 || slots[i] > slots[arg])) arg = i;
                    used[arg] = 1; taken += slots[arg]; m50++;
                    best = taken;
                }
            }
            TH_CHECK(lens.concentration[ld] == m50, "layer %d domain %d: concentration %d, by hand %d", l, d,
                     lens.concentration[ld], m50);
            TH_CHECK_NEAR(lens.curve[ld * 4 + m50 - 1], 100.0 * best / (2 * tok), 1e-12, 0, "curve at m50");
        }
    }
    moexc_lens_free(&lens);
    moexc_model_free(m);
}

/* Forcing k' = k reproduces the unforced model bit for bit, also after a
   k' = E forward grew the buffers; and the lens's k' = k row equals its
   unforced row exactly. */
static void test_lens_forced_k_equals_unforced(void)
{
    moexc_model_config c = lens_config(MOEXC_GATE_RAW);
    moexc_model *m = NULL;
    moexc_lens lens;
    moexc_lens_options o;
    moexc_loss_stats s0, s1, s4;
    moexc_error err;
    uint16_t in[LN], tg[LN];
    uint8_t dom[LN];
    float *z0 = (float *)malloc(LN * 32 * sizeof(float));
    int d;
    lens_batch(in, tg, dom, c.vocab_size);
    TH_CHECK(moexc_model_create(&m, &c, &err) == MOEXC_OK, "create: %s", err.message);
    if (!m || !z0) { free(z0); moexc_model_free(m); return; }
    TH_CHECK(moexc_model_forward(m, in, tg, LB, LT, &s0, &err) == MOEXC_OK, "forward: %s", err.message);
    memcpy(z0, moexc_model_logits(m), LN * 32 * sizeof(float));
    TH_CHECK(moexc_model_set_active_experts(m, 4, &err) == MOEXC_OK, "k' = E: %s", err.message);
    TH_CHECK(moexc_model_forward(m, in, tg, LB, LT, &s4, &err) == MOEXC_OK, "forward k' = E: %s", err.message);
    TH_CHECK(moexc_model_backward(m, &err) == MOEXC_OK, "backward k' = E: %s", err.message);
    TH_CHECK(s4.ce != s0.ce, "k' = E differs (%g vs %g)", s4.ce, s0.ce);
    TH_CHECK(moexc_model_set_active_experts(m, 2, &err) == MOEXC_OK, "k' = k: %s", err.message);
    TH_CHECK(moexc_model_forward(m, in, tg, LB, LT, &s1, &err) == MOEXC_OK, "forward k' = k: %s", err.message);
    TH_CHECK(memcmp(&s0.loss, &s1.loss, sizeof(double)) == 0 && memcmp(&s0.ce, &s1.ce, sizeof(double)) == 0 &&
             memcmp(&s0.lb, &s1.lb, sizeof(double)) == 0, "loss bit for bit: %.17g vs %.17g", s1.loss, s0.loss);
    TH_CHECK(memcmp(z0, moexc_model_logits(m), LN * 32 * sizeof(float)) == 0, "logits bit for bit");
    memset(&o, 0, sizeof(o));
    o.max_k = 4;
    TH_CHECK(moexc_lens_init(&lens, m, LD, &o, &err) == MOEXC_OK, "init: %s", err.message);
    TH_CHECK(moexc_lens_add(&lens, m, in, tg, dom, LB, LT, &err) == MOEXC_OK, "add: %s", err.message);
    TH_CHECK(moexc_lens_add(&lens, m, in, tg, dom, LB, LT, &err) == MOEXC_OK, "add again: %s", err.message);
    moexc_lens_finish(&lens);
    for (d = 0; d <= LD; d++) {
        TH_CHECK(memcmp(&lens.nll_sum[2 * (LD + 1) + d], &lens.nll_sum[d], sizeof(double)) == 0,
                 "domain %d: NLL k' = k %.17g, unforced %.17g", d, lens.nll_sum[2 * (LD + 1) + d], lens.nll_sum[d]);
        TH_CHECK(lens.ppl[2 * (LD + 1) + d] == lens.ppl[d], "perplexity k' = k = unforced");
        TH_CHECK_NEAR(lens.ppl[d], exp(lens.nll_sum[d] / lens.seqs[d]), 0, 1e-15, "perplexity from the sums");
    }
    /* the pooled unforced NLL is the model's mean cross-entropy when every sequence has T tokens */
    TH_CHECK_NEAR(log(lens.ppl[LD]), s0.ce, 0, 1e-6, "pooled log perplexity = mean CE");
    moexc_lens_free(&lens);
    moexc_model_free(m);
    free(z0);
}

/* Wrong inputs are errors with a message, never a crash. */
static void test_lens_errors(void)
{
    moexc_model_config c = lens_config(MOEXC_GATE_RAW);
    moexc_model *m = NULL, *dense = NULL;
    moexc_lens lens;
    moexc_lens_options o;
    moexc_error err;
    uint16_t in[LN], tg[LN];
    uint8_t dom[LN];
    lens_batch(in, tg, dom, c.vocab_size);
    memset(&o, 0, sizeof(o));
    TH_CHECK(moexc_model_create(&m, &c, &err) == MOEXC_OK, "create: %s", err.message);
    c.ffn = MOEXC_FFN_DENSE; c.d_ff = 32;
    TH_CHECK(moexc_model_create(&dense, &c, &err) == MOEXC_OK, "create dense: %s", err.message);
    if (!m || !dense) { moexc_model_free(m); moexc_model_free(dense); return; }
    TH_CHECK(moexc_lens_init(&lens, dense, LD, NULL, &err) == MOEXC_ERR_ARG && strstr(err.message, "dense"),
             "dense refused: %s", err.message);
    o.max_k = 5;
    TH_CHECK(moexc_lens_init(&lens, m, LD, &o, &err) == MOEXC_ERR_ARG && strstr(err.message, "max_k 5"),
             "max_k > E refused: %s", err.message);
    o.max_k = 0;
    TH_CHECK(moexc_lens_init(&lens, m, LD, &o, &err) == MOEXC_OK, "init: %s", err.message);
    dom[5] = 7;
    TH_CHECK(moexc_lens_add(&lens, m, in, tg, dom, LB, LT, &err) == MOEXC_ERR_ARG && strstr(err.message, "domains[5] = 7"),
             "bad label refused: %s", err.message);
    TH_CHECK(moexc_lens_write_csv(&lens, "/nonexistent-dir/lens.csv", &err) == MOEXC_ERR_IO &&
             strstr(err.message, "/nonexistent-dir/lens.csv"), "unwritable path named: %s", err.message);
    moexc_lens_free(&lens);
    moexc_model_free(m);
    moexc_model_free(dense);
}

static int count_png(const char *path, const struct moexc_canvas *c, void *user)
{
    int *n = (int *)user;
    (*n)++;
    return !(path && strstr(path, "/tmp_lens_") && c->width > 0 && c->height > 0);
}

/* moexc_lens_run over a labelled stream: windows inside each domain's
   held-out tail, up to max_seqs per domain; then every writer. */
static void test_lens_run_and_writers(void)
{
    moexc_model_config c = lens_config(MOEXC_GATE_RAW);
    moexc_model *m = NULL;
    moexc_lens lens;
    moexc_lens_options o;
    moexc_tokens data;
    moexc_error err;
    size_t i;
    int calls = 0, written = 0;
    FILE *f;
    char line[64];
    memset(&data, 0, sizeof(data));
    data.n = data.capacity = 3000;
    data.tokens = (uint16_t *)calloc(data.n, sizeof(uint16_t));
    data.domains = (uint8_t *)calloc(data.n, 1);
    data.vocab_size = 32; data.n_domains = 2;
    strcpy(data.domain_names[0], "alpha"); strcpy(data.domain_names[1], "beta");
    for (i = 0; i < data.n; i++) { data.tokens[i] = (uint16_t)((i * 11 + i / 7) % 32); data.domains[i] = i >= 1000; }
    memset(&o, 0, sizeof(o));
    o.seq_len = 16; o.batch_size = 4; o.max_seqs = 5; o.eval_fraction = 0.1f;
    TH_CHECK(moexc_model_create(&m, &c, &err) == MOEXC_OK, "create: %s", err.message);
    if (!m) return;
    TH_CHECK(moexc_lens_init(&lens, m, 2, &o, &err) == MOEXC_OK, "init: %s", err.message);
    TH_CHECK(moexc_lens_run(&lens, m, &data, &err) == MOEXC_OK, "run: %s", err.message);
    /* alpha's tail: 100 tokens = 5 windows of 17 with stride 16 (6 would need 97); beta's: 200 tokens, 12 -> 5 */
    TH_CHECK(lens.seqs[0] == 5 && lens.seqs[1] == 5 && lens.tokens[2] == 10 * 16, "sequences %g %g, tokens %g",
             lens.seqs[0], lens.seqs[1], lens.tokens[2]);
    TH_CHECK(!strcmp(lens.domain_names[1], "beta") && !strcmp(lens.domain_names[2], "all"), "domain names");
    TH_CHECK(lens.ppl[0] > 1.0 && lens.ppl[2 * 3 + 1] > 1.0, "perplexities %g %g", lens.ppl[0], lens.ppl[7]);
    TH_CHECK(moexc_lens_write_csv(&lens, "build/tmp_lens.csv", &err) == MOEXC_OK, "csv: %s", err.message);
    f = fopen("build/tmp_lens.csv", "r");
    TH_CHECK(f && fgets(line, sizeof(line), f) && !strcmp(line, "metric,layer,domain,k,i,j,value\n"), "csv header");
    if (f) fclose(f);
    TH_CHECK(moexc_lens_write_json(&lens, "test \"lens\"", "build/tmp_lens.json", &err) == MOEXC_OK, "json: %s", err.message);
    TH_CHECK(moexc_lens_write_plots(&lens, "build", "tmp_lens_", count_png, &calls, &written, &err) == MOEXC_OK,
             "plots: %s", err.message);
    TH_CHECK(calls == c.n_layers + 3 && written == calls, "%d plots written (%d calls)", written, calls);
    remove("build/tmp_lens.csv"); remove("build/tmp_lens.json");
    /* no window fits: an error that says why */
    moexc_lens_free(&lens);
    o.eval_fraction = 0.005f;             /* tails of 5 and 10 tokens */
    TH_CHECK(moexc_lens_init(&lens, m, 2, &o, &err) == MOEXC_OK, "init: %s", err.message);
    TH_CHECK(moexc_lens_run(&lens, m, &data, &err) == MOEXC_ERR_ARG && strstr(err.message, "no window of 17"),
             "too short a tail: %s", err.message);
    moexc_lens_free(&lens);
    moexc_model_free(m);
    free(data.tokens); free(data.domains);
}

int main(void)
{
    TH_RUN(test_router_stats_forced_k);
    TH_RUN(test_trainer_usage_forced_k);
    TH_RUN(test_lens_identical_experts);
    TH_RUN(test_lens_forced_router);
    TH_RUN(test_lens_coactivation_by_hand);
    TH_RUN(test_lens_forced_k_equals_unforced);
    TH_RUN(test_lens_errors);
    TH_RUN(test_lens_run_and_writers);
    return th_summary();
}
