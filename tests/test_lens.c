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

int main(void)
{
    TH_RUN(test_router_stats_forced_k);
    TH_RUN(test_trainer_usage_forced_k);
    return th_summary();
}
