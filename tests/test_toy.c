/* tests/test_toy.c - the toy MoEs of >>toy (SPEC §7): finite-difference
   gradients (router and load balancing included), the metrics on hand-built
   weights, the dense baseline's known n = 2, m = 1 result, K-hot init,
   config errors, and the same bits at 1 and 2 threads. */
#include "moexc.h"
#include "harness.h"
#include <stdlib.h>

static moexc_toy_config small_config(int E, int k, int lb)
{
    moexc_toy_config c;
    memset(&c, 0, sizeof(c));
    c.n_features = 6; c.n_hidden = 3; c.n_experts = E; c.top_k = k;
    c.feature_prob = 0.5f; c.importance_decay = 0.8f;
    c.no_load_balance = !lb; c.lb_alpha = 0.3f;   /* large alpha: its gradient shows */
    c.batch_size = 16; c.seed = 11;
    return c;
}

/* Central differences of moexc_toy_loss against moexc_toy_loss_grad. ReLU
   kinks and top-k switches make a few coordinates non-differentiable at the
   probe size: those are the ones where two step sizes disagree, and are
   skipped (they must stay few). */
static void check_gradients(int E, int k, int lb, const char *what)
{
    moexc_toy_config c = small_config(E, k, lb);
    moexc_toy t;
    moexc_error err;
    moexc_rng rng;
    float x[16 * 6], *grad = NULL;
    size_t j;
    int checked = 0, skipped = 0, router_checked = 0;
    TH_CHECK(moexc_toy_create(&t, &c, &err) == MOEXC_OK, "create: %s", err.message);
    moexc_rng_seed(&rng, 5);
    moexc_toy_sample(x, 16, 6, 0.5f, &rng);
    /* a few steps so that the router and the weights are not at their init */
    for (j = 0; j < 20; j++) moexc_toy_step(&t);
    moexc_toy_loss_grad(&t, x, 16, NULL, NULL);
    grad = (float *)malloc(t.n_params * sizeof(float));
    memcpy(grad, t.grad, t.n_params * sizeof(float));
    for (j = 0; j < t.n_params; j++) {
        float keep = t.params[j], h1 = 2e-3f, h2 = 1e-3f;
        double f1, f2;
        t.params[j] = keep + h1; f1 = moexc_toy_loss(&t, x, 16);
        t.params[j] = keep - h1; f1 = (f1 - moexc_toy_loss(&t, x, 16)) / (2.0 * h1);
        t.params[j] = keep + h2; f2 = moexc_toy_loss(&t, x, 16);
        t.params[j] = keep - h2; f2 = (f2 - moexc_toy_loss(&t, x, 16)) / (2.0 * h2);
        t.params[j] = keep;
        if (fabs(f1 - f2) > 2e-3 + 0.05 * fabs(f1)) { skipped++; continue; }
        checked++;
        if (j >= t.n_params - (size_t)E * t.n && fabs(grad[j]) > 1e-4) router_checked++;
        TH_CHECK_NEAR(grad[j], f2, 2e-3, 3e-2, what);
    }
    TH_CHECK(skipped * 10 <= checked, "%s: %d coordinates skipped at kinks, %d checked", what, skipped, checked);
    if (E > 1 && (k > 1 || lb))
        TH_CHECK(router_checked >= E, "%s: only %d router gradients checked", what, router_checked);
    free(grad);
    moexc_toy_free(&t);
}

static void test_gradients_moe_top2_lb(void) { check_gradients(3, 2, 1, "E3 k2 load balancing"); }
static void test_gradients_moe_top2(void)    { check_gradients(4, 2, 0, "E4 k2"); }
static void test_gradients_moe_top1_lb(void) { check_gradients(3, 1, 1, "E3 k1 load balancing"); }
static void test_gradients_dense(void)       { check_gradients(1, 1, 0, "dense"); }

/* A model whose W is set by hand: E = 1, n x m. */
static void hand_model(moexc_toy *t, int n, int m, const float *W)
{
    moexc_toy_config c;
    moexc_error err;
    memset(&c, 0, sizeof(c));
    c.n_features = n; c.n_hidden = m; c.n_experts = 1; c.top_k = 1; c.batch_size = 8;
    TH_CHECK(moexc_toy_create(t, &c, &err) == MOEXC_OK, "create: %s", err.message);
    memcpy(t->W, W, (size_t)n * m * sizeof(float));
}

static void test_metrics_hand_built(void)
{
    moexc_toy t;
    moexc_toy_metrics mt;
    moexc_error err;
    moexc_toy_metric_options mo;
    int i;
    /* orthogonal features (W = I, 4 x 4): D = 1, s = 0, all monosemantic,
       features per dimension ||W||_F^2 / m = 1 */
    float eye[16] = { 1, 0, 0, 0,  0, 1, 0, 0,  0, 0, 1, 0,  0, 0, 0, 1 };
    /* an antipodal pair in one dimension: D = 1/2 each, s = 1, 2 features per dimension */
    float pair[2] = { 1.0f, -1.0f };
    /* W_0 = (1, 0), W_1 = (0.6, 0.8), W_2 = 0:  W^_0 . W_1 = W^_1 . W_0 = 0.6,
       s_0 = s_1 = 0.6, D_0 = D_1 = 1 / (1 + 0.36); W_2 unrepresented */
    float known[6] = { 1.0f, 0.0f,  0.6f, 0.8f,  0.0f, 0.0f };
    memset(&mo, 0, sizeof(mo));
    mo.n_samples = 256;

    hand_model(&t, 4, 4, eye);
    TH_CHECK(moexc_toy_measure(&t, &mo, &mt, &err) == MOEXC_OK, "measure: %s", err.message);
    for (i = 0; i < 4; i++) {
        TH_CHECK_NEAR(mt.dim[i], 1.0, 1e-6, 0.0, "orthogonal: dimensionality 1");
        TH_CHECK_NEAR(mt.score[i], 0.0, 1e-6, 0.0, "orthogonal: score 0");
    }
    TH_CHECK_NEAR(mt.features_per_dim, 1.0, 1e-6, 0.0, "orthogonal: 1 feature per dimension");
    TH_CHECK_NEAR(mt.mono_fraction, 1.0, 0.0, 0.0, "orthogonal: all monosemantic");
    TH_CHECK(mt.n_represented == 4 && mt.n_mono == 4, "represented %d mono %d", mt.n_represented, mt.n_mono);
    TH_CHECK_NEAR(mt.usage[0], 1.0, 1e-6, 0.0, "dense usage");
    moexc_toy_metrics_free(&mt);
    moexc_toy_free(&t);

    hand_model(&t, 2, 1, pair);
    TH_CHECK(moexc_toy_measure(&t, &mo, &mt, &err) == MOEXC_OK, "measure: %s", err.message);
    TH_CHECK_NEAR(mt.dim[0], 0.5, 1e-6, 0.0, "antipodal: dimensionality 1/2");
    TH_CHECK_NEAR(mt.dim[1], 0.5, 1e-6, 0.0, "antipodal: dimensionality 1/2");
    TH_CHECK_NEAR(mt.score[0], 1.0, 1e-6, 0.0, "antipodal: score 1");
    TH_CHECK_NEAR(mt.features_per_dim, 2.0, 1e-6, 0.0, "antipodal: 2 features per dimension");
    TH_CHECK(mt.n_mono == 0 && mt.mono_fraction == 0.0f, "antipodal: none monosemantic (%d)", mt.n_mono);
    moexc_toy_metrics_free(&mt);
    moexc_toy_free(&t);

    hand_model(&t, 3, 2, known);
    TH_CHECK(moexc_toy_measure(&t, &mo, &mt, &err) == MOEXC_OK, "measure: %s", err.message);
    TH_CHECK_NEAR(mt.score[0], 0.6, 1e-6, 0.0, "known score s_0");
    TH_CHECK_NEAR(mt.score[1], 0.6, 1e-6, 0.0, "known score s_1");
    TH_CHECK_NEAR(mt.dim[0], 1.0 / 1.36, 1e-6, 0.0, "known dimensionality D_0");
    TH_CHECK_NEAR(mt.dim[1], 1.0 / 1.36, 1e-6, 0.0, "known dimensionality D_1");
    TH_CHECK(mt.dim[2] == 0.0f && mt.norm[2] == 0.0f, "zero row: D 0");
    TH_CHECK(mt.n_represented == 2 && mt.n_mono == 0, "represented %d mono %d", mt.n_represented, mt.n_mono);
    TH_CHECK_NEAR(mt.features_per_dim, 2.0 / 2.0, 1e-6, 0.0, "features per dimension (1 + 1) / 2");
    moexc_toy_metrics_free(&mt);
    moexc_toy_free(&t);
}

/* MoE metrics by hand: two experts, router fixed so that features 0,1 go to
   expert 0 and 2,3 to expert 1; expert e holds its pair orthogonally. */
static void test_metrics_moe_specialisation(void)
{
    moexc_toy_config c;
    moexc_toy t;
    moexc_toy_metrics mt;
    moexc_toy_metric_options mo;
    moexc_error err;
    int i;
    memset(&c, 0, sizeof(c));
    c.n_features = 4; c.n_hidden = 2; c.n_experts = 2; c.top_k = 1; c.batch_size = 8;
    c.feature_prob = 0.3f;
    TH_CHECK(moexc_toy_create(&t, &c, &err) == MOEXC_OK, "create: %s", err.message);
    memset(t.W, 0, (size_t)2 * 4 * 2 * sizeof(float));
    t.W[0 * 8 + 0 * 2 + 0] = 1.0f; t.W[0 * 8 + 1 * 2 + 1] = 1.0f;   /* expert 0: features 0, 1 */
    t.W[1 * 8 + 2 * 2 + 0] = 1.0f; t.W[1 * 8 + 3 * 2 + 1] = 1.0f;   /* expert 1: features 2, 3 */
    for (i = 0; i < 4; i++) { t.G[i] = i < 2 ? 5.0f : 0.0f; t.G[4 + i] = i < 2 ? 0.0f : 5.0f; }
    memset(&mo, 0, sizeof(mo));
    mo.n_samples = 2000;
    TH_CHECK(moexc_toy_measure(&t, &mo, &mt, &err) == MOEXC_OK, "measure: %s", err.message);
    TH_CHECK(mt.n_mono_expert[0] == 2 && mt.n_mono_expert[1] == 2, "mono per expert %d %d",
             mt.n_mono_expert[0], mt.n_mono_expert[1]);
    /* clamping expert 0's features to 1 gives z_0 = 10 >= z_1 = 5 (x_2 + x_3) with x <= 1, almost always */
    TH_CHECK(mt.special[0] > 0.95f && mt.special[1] > 0.95f, "specialisation %g %g", (double)mt.special[0], (double)mt.special[1]);
    TH_CHECK(mt.usage[0] > 0.2f && mt.usage[1] > 0.2f, "usage %g %g", (double)mt.usage[0], (double)mt.usage[1]);
    /* (1/k) sum_e p_e ||W_e||_F^2 / m = (p_0 + p_1) 2 / 2 = 1 */
    TH_CHECK_NEAR(mt.features_per_dim, 1.0, 1e-5, 0.0, "features per dimension");
    TH_CHECK(mt.block_coherence != mt.block_coherence, "no K-hot blocks: coherence NaN");
    moexc_toy_metrics_free(&mt);
    moexc_toy_free(&t);
}

static void test_khot_init(void)
{
    moexc_toy_config c;
    moexc_toy t;
    moexc_error err;
    int e, i, count[4] = { 0, 0, 0, 0 };
    memset(&c, 0, sizeof(c));
    c.n_features = 10; c.n_experts = 4; c.router_init = MOEXC_TOY_INIT_KHOT; c.seed = 3;
    TH_CHECK(moexc_toy_create(&t, &c, &err) == MOEXC_OK, "create: %s", err.message);
    for (i = 0; i < 10; i++) {
        int ones = 0;
        for (e = 0; e < 4; e++) {
            float g = t.G[e * 10 + i];
            TH_CHECK(g == 0.0f || g == 1.0f, "G[%d][%d] = %g", e, i, (double)g);
            ones += g == 1.0f;
        }
        TH_CHECK(ones == 1 && t.block[i] >= 0 && t.G[t.block[i] * 10 + i] == 1.0f, "feature %d: %d ones", i, ones);
        if (t.block[i] >= 0) count[t.block[i]]++;
    }
    for (e = 0; e < 4; e++) TH_CHECK(count[e] == 2 || count[e] == 3, "block %d has %d features", e, count[e]);
    moexc_toy_free(&t);
}

static void test_config_errors(void)
{
    moexc_toy_config c;
    moexc_toy t;
    moexc_error err;
    memset(&c, 0, sizeof(c));
    c.n_experts = 2; c.top_k = 3;
    TH_CHECK(moexc_toy_create(&t, &c, &err) == MOEXC_ERR_ARG && strstr(err.message, "top_k"), "%s", err.message);
    c.top_k = 1; c.feature_prob = 1.5f;
    TH_CHECK(moexc_toy_create(&t, &c, &err) == MOEXC_ERR_ARG && strstr(err.message, "feature_prob"), "%s", err.message);
    c.feature_prob = 0.0f; c.router_init = 7;
    TH_CHECK(moexc_toy_create(&t, &c, &err) == MOEXC_ERR_ARG && strstr(err.message, "router_init"), "%s", err.message);
    /* defaults resolve to the seed code's */
    memset(&c, 0, sizeof(c));
    TH_CHECK(moexc_toy_create(&t, &c, &err) == MOEXC_OK, "%s", err.message);
    /* (float) casts: with FLT_EVAL_METHOD 1 (s390x) a float constant keeps double precision */
    TH_CHECK(t.n == 32 && t.m == 8 && t.E == 4 && t.k == 1 && t.cfg.feature_prob == (float)0.1f && t.cfg.batch_size == 1024
             && t.cfg.lb_alpha == (float)0.01f, "defaults n %d m %d E %d k %d, feature_prob %.9g, lb_alpha %.9g, batch %d",
             t.n, t.m, t.E, t.k, (double)t.cfg.feature_prob, (double)t.cfg.lb_alpha, t.cfg.batch_size);
    moexc_toy_free(&t);
}

/* The dense baseline (E = k = 1) on n = 2 features, m = 1 dimension, equal
   importance ("Toy Models of Superposition"): with dense data one feature
   takes the dimension and the other is dropped; with sparse data both share
   it as an antipodal pair (W_0 W_1 < 0, |W_0| ~ |W_1| ~ 1). As there, the
   best of a few seeds: a Xavier-initialised bias can start a feature's ReLU
   dead, and a dead feature never comes back. */
static void test_dense_small_n(void)
{
    enum { SEEDS = 4 };
    moexc_toy t[2 * SEEDS];
    moexc_toy_config c;
    moexc_error err;
    int i, s, best[2] = { 0, SEEDS };
    float w0, w1, lo, hi;
    memset(&c, 0, sizeof(c));
    c.n_features = 2; c.n_hidden = 1; c.n_experts = 1; c.top_k = 1; c.batch_size = 256; c.lr = 1e-2f;
    for (i = 0; i < 2; i++)
        for (s = 0; s < SEEDS; s++) {
            c.feature_prob = i ? 0.05f : 1.0f;  /* S = 0.95 or S = 0 */
            c.seed = 1 + (uint64_t)s;
            TH_CHECK(moexc_toy_create(&t[i * SEEDS + s], &c, &err) == MOEXC_OK, "%s", err.message);
        }
    TH_CHECK(moexc_toy_train_many(t, 2 * SEEDS, 3000, 0, NULL, NULL, &err) == MOEXC_OK, "%s", err.message);
    for (i = 0; i < 2; i++) {
        float best_loss = HUGE_VALF;
        for (s = 0; s < SEEDS; s++) {
            moexc_toy_metrics mt;
            moexc_toy_metric_options mo;
            memset(&mo, 0, sizeof(mo));
            mo.n_samples = 4096;
            TH_CHECK(moexc_toy_measure(&t[i * SEEDS + s], &mo, &mt, &err) == MOEXC_OK, "%s", err.message);
            if (mt.loss < best_loss) { best_loss = mt.loss; best[i] = i * SEEDS + s; }
            moexc_toy_metrics_free(&mt);
        }
    }
    for (i = 0; i < 2; i++) {
        const moexc_toy *b = &t[best[i]];
        w0 = b->W[0]; w1 = b->W[1];
        lo = fabsf(w0) < fabsf(w1) ? fabsf(w0) : fabsf(w1);
        hi = fabsf(w0) < fabsf(w1) ? fabsf(w1) : fabsf(w0);
        printf("     S = %s: W = (%.3f, %.3f), b = (%.3f, %.3f), seed %d\n", i ? "0.95" : "0   ",
               (double)w0, (double)w1, (double)b->b[0], (double)b->b[1], (int)b->cfg.seed);
        if (i == 0) {
            TH_CHECK(hi > 0.8f && lo < 0.2f, "S = 0: one feature, W = (%g, %g)", (double)w0, (double)w1);
        } else {
            TH_CHECK(lo > 0.8f && w0 * w1 < 0.0f, "S = 0.95: antipodal pair, W = (%g, %g)", (double)w0, (double)w1);
        }
    }
    for (i = 0; i < 2 * SEEDS; i++) moexc_toy_free(&t[i]);
}

/* The sweep gives the same bits at 1 and 2 threads (each model's steps
   depend only on its own seed). */
static void test_train_many_threads(void)
{
    enum { NM = 6 };
    moexc_toy a[NM], b[NM];
    moexc_toy_config c;
    moexc_error err;
    int i, same = 1;
    for (i = 0; i < NM; i++) {
        memset(&c, 0, sizeof(c));
        c.n_features = 12; c.n_hidden = 3; c.n_experts = 1 + i % 3; c.top_k = 1 + (i % 3 == 2);
        c.feature_prob = 0.1f + 0.15f * i; c.batch_size = 64; c.seed = 100 + (uint64_t)i;
        c.router_init = i & 1 ? MOEXC_TOY_INIT_KHOT : MOEXC_TOY_INIT_XAVIER;
        TH_CHECK(moexc_toy_create(&a[i], &c, &err) == MOEXC_OK, "%s", err.message);
        TH_CHECK(moexc_toy_create(&b[i], &c, &err) == MOEXC_OK, "%s", err.message);
    }
    TH_CHECK(moexc_toy_train_many(a, NM, 150, 1, NULL, NULL, &err) == MOEXC_OK, "%s", err.message);
    TH_CHECK(moexc_toy_train_many(b, NM, 150, 2, NULL, NULL, &err) == MOEXC_OK, "%s", err.message);
    for (i = 0; i < NM; i++) {
        same &= memcmp(a[i].params, b[i].params, a[i].n_params * sizeof(float)) == 0;
        same &= memcmp(&a[i].loss, &b[i].loss, sizeof(float)) == 0;
        TH_CHECK(a[i].step == 150, "steps %d", a[i].step);
        moexc_toy_free(&a[i]);
        moexc_toy_free(&b[i]);
    }
    TH_CHECK(same, "1 and 2 threads differ");
}

int main(void)
{
    TH_RUN(test_gradients_moe_top2_lb);
    TH_RUN(test_gradients_moe_top2);
    TH_RUN(test_gradients_moe_top1_lb);
    TH_RUN(test_gradients_dense);
    TH_RUN(test_metrics_hand_built);
    TH_RUN(test_metrics_moe_specialisation);
    TH_RUN(test_khot_init);
    TH_RUN(test_config_errors);
    TH_RUN(test_dense_small_n);
    TH_RUN(test_train_many_threads);
    return th_summary();
}
