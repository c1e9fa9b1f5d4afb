/* tests/test_dp.c - data-parallel training through the reduce hook (SPEC §9),
   without MPI: W workers are threads of this process and the hook is an
   in-process sum (a barrier, then every worker adds the W buffers in rank
   order, so all workers get the same bits, as MPI_Allreduce gives them).
   SPEC §9's rule: W workers with batch B/W compute the update of one worker
   with batch B, up to the order of float sums. Checked for the dense and
   the MoE language model (with evaluation) and the BatchTopK crosscoder
   (with AuxK, dead latents, the threshold EMA and evaluation): the workers
   end with identical bits, and within float tolerance of one worker. Also:
   one worker with a hook is bit-identical to no hook (LM), and a mismatch
   of options, of the worker count or of the batch's divisibility is an
   error on every worker, not a hang. */
#include "moexc.h"
#include "harness.h"
#include <pthread.h>
#include <stdlib.h>

#define MAXW 4

/* ---- the in-process reduction ------------------------------------------------ */
typedef struct fake_world {
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    int             members, arrived;
    unsigned        gen;
    void           *slot[MAXW];
    size_t          n[MAXW];
    int             type[MAXW];
} fake_world;

typedef struct fake_member { fake_world *w; int rank; } fake_member;

static void fake_barrier(fake_world *w)
{
    unsigned gen;
    pthread_mutex_lock(&w->mu);
    gen = w->gen;
    if (++w->arrived == w->members) { w->arrived = 0; w->gen++; pthread_cond_broadcast(&w->cv); }
    else while (gen == w->gen) pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

static int fake_sum(void *buf, size_t n, int type, void *user)
{
    fake_member *me = (fake_member *)user;
    fake_world *w = me->w;
    size_t i, size = type == MOEXC_REDUCE_F64 ? sizeof(double) : sizeof(float);
    void *tmp = malloc(n * size);
    int r, bad = tmp == NULL;
    w->slot[me->rank] = buf; w->n[me->rank] = n; w->type[me->rank] = type;
    fake_barrier(w);
    for (r = 0; r < w->members; r++) bad |= w->n[r] != n || w->type[r] != type;
    for (i = 0; !bad && i < n; i++) {
        if (type == MOEXC_REDUCE_F64) {
            double s = ((double *)w->slot[0])[i];
            for (r = 1; r < w->members; r++) s += ((double *)w->slot[r])[i];
            ((double *)tmp)[i] = s;
        } else {
            float s = ((float *)w->slot[0])[i];
            for (r = 1; r < w->members; r++) s += ((float *)w->slot[r])[i];
            ((float *)tmp)[i] = s;
        }
    }
    fake_barrier(w);   /* everyone has read every slot */
    if (!bad) memcpy(buf, tmp, n * size);
    free(tmp);
    return bad;
}

static void world_init(fake_world *w, int members)
{
    memset(w, 0, sizeof(*w));
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->members = members;
}
static void world_free(fake_world *w)
{
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
}

/* ---- language models --------------------------------------------------------- */
static moexc_tokens g_data;

typedef struct lm_job {
    fake_member me;
    int world;          /* 0: no hook */
    int hook_world;     /* the world the hook claims (default: world) */
    int ffn, steps, batch, accum;
    float lr;
    /* results */
    moexc_status st_create, st_run;
    char msg[600];
    float *params;
    size_t n_params;
    double eval_nats, eval_entropy0, loss_last, lb_last;
} lm_job;

static int lm_progress(const moexc_train_progress *p, void *user)
{
    lm_job *j = (lm_job *)user;
    j->loss_last = p->loss;
    j->lb_last = p->lb;
    return 0;
}

static void *lm_worker(void *arg)
{
    lm_job *j = (lm_job *)arg;
    moexc_model_config mc;
    moexc_train_options to;
    moexc_model *m = NULL;
    moexc_trainer *t = NULL;
    moexc_error err;
    const moexc_eval_result *ev = NULL;
    memset(&mc, 0, sizeof(mc)); memset(&to, 0, sizeof(to));
    err.message[0] = 0;
    mc.d_model = 32; mc.n_heads = 2; mc.n_layers = 2; mc.context = 32; mc.ffn = j->ffn;
    mc.n_experts = 4; mc.top_k = 2; mc.seed = 7;
    to.total_steps = j->steps; to.batch_size = j->batch; to.seq_len = 32; to.lr = j->lr; to.grad_accum = j->accum;
    to.warmup_steps = 1; to.eval_interval = 2; to.eval_batches = 2; to.seed = 3;
    if (j->world) {
        to.reduce.sum = fake_sum; to.reduce.user = &j->me;
        to.reduce.rank = j->me.rank; to.reduce.world = j->hook_world ? j->hook_world : j->world;
    }
    j->st_create = moexc_model_create(&m, &mc, &err);
    if (!j->st_create) j->st_create = moexc_trainer_create(&t, m, &g_data, &to, &err);
    if (j->st_create) { snprintf(j->msg, sizeof(j->msg), "%s", err.message); goto done; }
    j->st_run = moexc_trainer_run(t, lm_progress, j, &err);
    if (!j->st_run) j->st_run = moexc_trainer_evaluate(t, &ev, &err);
    if (j->st_run) { snprintf(j->msg, sizeof(j->msg), "%s", err.message); goto done; }
    j->eval_nats = ev->all.nats;
    j->eval_entropy0 = ev->router->n_layers ? ev->router->entropy[0] : 0.0;
    j->n_params = moexc_model_num_params(m);
    j->params = (float *)malloc(j->n_params * sizeof(float));
    if (j->params) memcpy(j->params, moexc_model_params(m), j->n_params * sizeof(float));
done:
    moexc_trainer_free(t);
    moexc_model_free(m);
    return NULL;
}

/* Run `workers` threads of job template `tmpl` (world = workers) */
static void lm_run(lm_job *jobs, int workers, const lm_job *tmpl, fake_world *w)
{
    pthread_t th_[MAXW];
    int r;
    for (r = 0; r < workers; r++) {
        jobs[r] = *tmpl;
        jobs[r].me.w = w; jobs[r].me.rank = r;
    }
    for (r = 0; r < workers; r++) pthread_create(&th_[r], NULL, lm_worker, &jobs[r]);
    for (r = 0; r < workers; r++) pthread_join(th_[r], NULL);
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double d = 0.0;
    size_t i;
    for (i = 0; i < n; i++) d = fabs((double)a[i] - b[i]) > d ? fabs((double)a[i] - b[i]) : d;
    return d;
}

static void lm_case(int ffn)
{
    lm_job one[1], two[2], hook1[1], tmpl;
    fake_world w1, w2;
    double d;
    memset(&tmpl, 0, sizeof(tmpl));
    tmpl.ffn = ffn; tmpl.steps = 4; tmpl.batch = 4; tmpl.lr = 3e-3f;
    tmpl.accum = ffn == MOEXC_FFN_MOE ? 2 : 1;   /* the MoE with 2 micro-batches per step */
    world_init(&w1, 1); world_init(&w2, 2);
    lm_run(one, 1, &tmpl, &w1);                    /* no hook, batch 4 */
    tmpl.world = 1; lm_run(hook1, 1, &tmpl, &w1);  /* a hook, one worker */
    tmpl.world = 2; lm_run(two, 2, &tmpl, &w2);    /* two workers of 2 */
    TH_CHECK(!one[0].st_create && !one[0].st_run && one[0].params, "one worker: %s", one[0].msg);
    TH_CHECK(!hook1[0].st_create && !hook1[0].st_run && hook1[0].params, "hook, one worker: %s", hook1[0].msg);
    TH_CHECK(!two[0].st_create && !two[0].st_run && two[0].params, "worker 0: %s", two[0].msg);
    TH_CHECK(!two[1].st_create && !two[1].st_run && two[1].params, "worker 1: %s", two[1].msg);
    if (one[0].params && hook1[0].params && two[0].params && two[1].params) {
        size_t n = one[0].n_params;
        TH_CHECK(memcmp(one[0].params, hook1[0].params, n * sizeof(float)) == 0,
                 "one worker with a hook is bit-identical to no hook");
        TH_CHECK(memcmp(two[0].params, two[1].params, n * sizeof(float)) == 0, "the two workers hold the same bits");
        d = max_diff(one[0].params, two[0].params, n);
        printf("  %s LM, 4 steps of %d x batch 4: max |param(1 worker) - param(2 workers)| = %.3g\n",
               ffn == MOEXC_FFN_MOE ? "MoE" : "dense", tmpl.accum, d);
        TH_CHECK(d <= 2e-5, "parameters within 2e-5 of one worker: %.3g", d);
        TH_CHECK_NEAR(two[0].eval_nats, one[0].eval_nats, 1e-5, 1e-5, "held-out nats");
        TH_CHECK(two[0].eval_nats == two[1].eval_nats, "the workers' evaluations agree");
        TH_CHECK_NEAR(two[0].loss_last, one[0].loss_last, 1e-5, 1e-5, "last step's loss");
        TH_CHECK_NEAR(two[0].lb_last, one[0].lb_last, 1e-7, 1e-5, "last step's Switch loss");
        if (ffn == MOEXC_FFN_MOE) TH_CHECK_NEAR(two[1].eval_entropy0, one[0].eval_entropy0, 1e-6, 1e-5, "routing entropy");
    }
    free(one[0].params); free(hook1[0].params); free(two[0].params); free(two[1].params);
    world_free(&w1); world_free(&w2);
}

static void test_lm_dense(void) { lm_case(MOEXC_FFN_DENSE); }
static void test_lm_moe(void)   { lm_case(MOEXC_FFN_MOE); }

/* Errors on every worker, not hangs. */
static void test_lm_errors(void)
{
    lm_job jobs[2], tmpl;
    fake_world w;
    memset(&tmpl, 0, sizeof(tmpl));
    tmpl.ffn = MOEXC_FFN_DENSE; tmpl.steps = 1; tmpl.batch = 4; tmpl.lr = 1e-3f; tmpl.world = 2;
    /* a batch W does not divide: an error at creation, before any sum */
    world_init(&w, 2);
    tmpl.batch = 3;
    lm_run(jobs, 2, &tmpl, &w);
    TH_CHECK(jobs[0].st_create == MOEXC_ERR_ARG && jobs[1].st_create == MOEXC_ERR_ARG, "batch 3 on 2 workers refused");
    TH_CHECK(strstr(jobs[0].msg, "not divisible") != NULL, "message: %s", jobs[0].msg);
    /* different options: every worker fails the first step's check */
    tmpl.batch = 4;
    {
        pthread_t th_[2];
        int r;
        for (r = 0; r < 2; r++) { jobs[r] = tmpl; jobs[r].me.w = &w; jobs[r].me.rank = r; }
        jobs[1].lr = 2e-3f;
        for (r = 0; r < 2; r++) pthread_create(&th_[r], NULL, lm_worker, &jobs[r]);
        for (r = 0; r < 2; r++) pthread_join(th_[r], NULL);
    }
    TH_CHECK(jobs[0].st_run == MOEXC_ERR_ARG && jobs[1].st_run == MOEXC_ERR_ARG, "lr mismatch fails on both workers (%d, %d)",
             jobs[0].st_run, jobs[1].st_run);
    TH_CHECK(strstr(jobs[1].msg, "differ") != NULL, "message: %s", jobs[1].msg);
    /* the hook claims 3 workers, 2 answer */
    tmpl.hook_world = 3; tmpl.batch = 6;
    lm_run(jobs, 2, &tmpl, &w);
    TH_CHECK(jobs[0].st_run == MOEXC_ERR_ARG && jobs[1].st_run == MOEXC_ERR_ARG, "world 3 with 2 workers fails on both");
    TH_CHECK(strstr(jobs[0].msg, "answered") != NULL, "message: %s", jobs[0].msg);
    free(jobs[0].params); free(jobs[1].params);
    world_free(&w);
}

/* ---- the crosscoder ------------------------------------------------------------ */
enum { XD = 16, XN_INIT = 256, XBATCH = 64, XSTEPS = 8, XEVAL = 200 };
static float *g_xa, *g_xb;   /* XN_INIT + XSTEPS * XBATCH + XEVAL pairs */

typedef struct xc_job {
    fake_member me;
    int world;          /* 0: no hook */
    int k, force_dead;  /* force_dead: latents 8..15 marked dead (AuxK runs) */
    int variant;
    moexc_status st;
    char msg[600];
    float *params;
    size_t n_params;
    float threshold;
    double dead_last, aux_last, fve_last, l0_last, eval_fve, eval_l0;
    int64_t counts_sum;
} xc_job;

static void *xc_worker(void *arg)
{
    xc_job *j = (xc_job *)arg;
    moexc_xc_options o;
    moexc_xc *xc = NULL;
    moexc_error err;
    moexc_xc_step_stats s;
    moexc_xc_eval ev;
    int64_t counts[64];
    int W = j->world ? j->world : 1, n = XBATCH / W, step, i;
    memset(&o, 0, sizeof(o));
    memset(&s, 0, sizeof(s));
    o.n_latents = 64; o.k = j->k; o.n_shared = 4; o.aux_k = 8; o.dead_tokens = 3 * XBATCH;
    o.variant = j->variant;
    o.steps = XSTEPS; o.batch = XBATCH; o.lr = 5e-3f; o.warmup_steps = 1; o.threshold_start = 2; o.seed = 5;
    if (j->world) { o.reduce.sum = fake_sum; o.reduce.user = &j->me; o.reduce.rank = j->me.rank; o.reduce.world = j->world; }
    j->st = moexc_xc_create(&xc, XD, XD, &o, &err);
    if (!j->st) j->st = moexc_xc_init_from_data(xc, g_xa, g_xb, XN_INIT, &err);   /* the same sample everywhere */
    for (i = 8; !j->st && j->force_dead && i < 16; i++) moexc_xc_set_dead(xc, i, 1);
    for (step = 0; !j->st && step < XSTEPS; step++) {
        size_t row = XN_INIT + (size_t)step * XBATCH + (size_t)j->me.rank * n;   /* this worker's slice */
        j->st = moexc_xc_train_step(xc, g_xa + row * XD, g_xb + row * XD, n, &s, &err);
    }
    if (!j->st) j->st = moexc_xc_evaluate(xc, g_xa + (size_t)(XN_INIT + XSTEPS * XBATCH) * XD,
                                          g_xb + (size_t)(XN_INIT + XSTEPS * XBATCH) * XD, XEVAL, &ev, counts, &err);
    if (j->st) { snprintf(j->msg, sizeof(j->msg), "%s", err.message); moexc_xc_free(xc); return NULL; }
    j->dead_last = s.dead_fraction; j->aux_last = s.aux; j->fve_last = s.fve[0]; j->l0_last = s.l0;
    j->eval_fve = ev.fve_pooled; j->eval_l0 = ev.l0;
    for (i = 0, j->counts_sum = 0; i < 64; i++) j->counts_sum += counts[i];
    j->threshold = moexc_xc_threshold(xc);
    j->n_params = moexc_xc_num_params(xc);
    j->params = (float *)malloc(j->n_params * sizeof(float));
    if (j->params) memcpy(j->params, moexc_xc_params(xc), j->n_params * sizeof(float));
    moexc_xc_free(xc);
    return NULL;
}

static void xc_run(xc_job *jobs, int workers, const xc_job *tmpl, fake_world *w)
{
    pthread_t th_[MAXW];
    int r;
    for (r = 0; r < workers; r++) { jobs[r] = *tmpl; jobs[r].me.w = w; jobs[r].me.rank = r; }
    for (r = 0; r < workers; r++) pthread_create(&th_[r], NULL, xc_worker, &jobs[r]);
    for (r = 0; r < workers; r++) pthread_join(th_[r], NULL);
}

static void xc_case(int k, int force_dead, int variant)
{
    xc_job one[1], two[2], four[4], tmpl;
    fake_world w1, w2, w4;
    int r;
    memset(&tmpl, 0, sizeof(tmpl));
    tmpl.k = k; tmpl.force_dead = force_dead; tmpl.variant = variant;
    world_init(&w1, 1); world_init(&w2, 2); world_init(&w4, 4);
    xc_run(one, 1, &tmpl, &w1);
    tmpl.world = 2; xc_run(two, 2, &tmpl, &w2);
    tmpl.world = 4; xc_run(four, 4, &tmpl, &w4);
    TH_CHECK(!one[0].st && one[0].params, "one worker: %s", one[0].msg);
    for (r = 0; r < 2; r++) TH_CHECK(!two[r].st && two[r].params, "2 workers, worker %d: %s", r, two[r].msg);
    for (r = 0; r < 4; r++) TH_CHECK(!four[r].st && four[r].params, "4 workers, worker %d: %s", r, four[r].msg);
    if (!th.failures_in_test) {
        size_t n = one[0].n_params;
        double d2 = max_diff(one[0].params, two[0].params, n), d4 = max_diff(one[0].params, four[0].params, n);
        for (r = 1; r < 4; r++) TH_CHECK(memcmp(four[0].params, four[r].params, n * sizeof(float)) == 0, "4 workers: worker %d's bits", r);
        TH_CHECK(memcmp(two[0].params, two[1].params, n * sizeof(float)) == 0, "the two workers hold the same bits");
        printf("  crosscoder %s k %d, %d steps, batch %d: max |param(1) - param(2 workers)| = %.3g, (4 workers) %.3g\n",
               variant == MOEXC_XC_L1 ? "L1" : "BatchTopK", k, XSTEPS, XBATCH, d2, d4);
        TH_CHECK(d2 <= 1e-5 && d4 <= 1e-5, "parameters within 1e-5 of one worker: %.3g, %.3g", d2, d4);
        if (variant == MOEXC_XC_BATCHTOPK) {
            TH_CHECK(one[0].dead_last > 0.0, "some latents died (AuxK ran): dead %.3f", one[0].dead_last);
            TH_CHECK(one[0].aux_last > 0.0, "AuxK loss %.4f", one[0].aux_last);
            TH_CHECK(one[0].threshold > 0.0f, "threshold EMA ran: %g", one[0].threshold);
        }
        TH_CHECK(two[0].dead_last == one[0].dead_last && four[3].dead_last == one[0].dead_last,
                 "dead fraction %.4f, %.4f vs one worker %.4f", two[0].dead_last, four[3].dead_last, one[0].dead_last);
        TH_CHECK_NEAR(two[1].aux_last, one[0].aux_last, 1e-6, 1e-4, "AuxK loss, 2 workers");
        TH_CHECK_NEAR(four[2].aux_last, one[0].aux_last, 1e-6, 1e-4, "AuxK loss, 4 workers");
        TH_CHECK_NEAR(two[1].fve_last, one[0].fve_last, 1e-6, 1e-5, "batch FVE");
        TH_CHECK(two[1].l0_last == one[0].l0_last, "batch L0 %.4f vs %.4f (the same selection)", two[1].l0_last, one[0].l0_last);
        TH_CHECK_NEAR(two[0].threshold, one[0].threshold, 0.0, 1e-5, "threshold");
        TH_CHECK(two[0].threshold == two[1].threshold, "the workers' thresholds agree");
        TH_CHECK_NEAR(two[0].eval_fve, one[0].eval_fve, 1e-6, 1e-5, "held-out FVE");
        TH_CHECK_NEAR(four[1].eval_l0, one[0].eval_l0, 1e-9, 1e-3, "held-out L0");
        TH_CHECK(two[0].counts_sum == two[1].counts_sum && four[0].counts_sum == four[3].counts_sum, "active counts agree");
    }
    free(one[0].params);
    for (r = 0; r < 2; r++) free(two[r].params);
    for (r = 0; r < 4; r++) free(four[r].params);
    world_free(&w1); world_free(&w2); world_free(&w4);
}

static void test_xc_batchtopk(void)     { xc_case(4, 1, MOEXC_XC_BATCHTOPK); }
/* k 1: the boundary is a single score, so ties and the per-worker counts of
   the threshold bins matter most */
static void test_xc_batchtopk_k1(void)  { xc_case(1, 0, MOEXC_XC_BATCHTOPK); }
/* L1: dense activations, the decoder-norm penalty with its lambda ramp */
static void test_xc_l1(void)            { xc_case(4, 0, MOEXC_XC_L1); }

/* Ties at the selection boundary: equal scores across the two halves of the
   batch (the same pairs twice) are kept lowest global row first, so two
   workers keep exactly what one keeps. */
static void test_xc_ties(void)
{
    xc_job one[1], two[2], tmpl;
    fake_world w1, w2;
    float *sa = g_xa, *sb = g_xb;
    float *ta = (float *)malloc((size_t)(XN_INIT + XSTEPS * XBATCH + XEVAL) * XD * sizeof(float));
    float *tb = (float *)malloc((size_t)(XN_INIT + XSTEPS * XBATCH + XEVAL) * XD * sizeof(float));
    size_t step, i;
    if (!ta || !tb) { TH_CHECK(0, "out of memory"); free(ta); free(tb); return; }
    memcpy(ta, g_xa, (size_t)(XN_INIT + XSTEPS * XBATCH + XEVAL) * XD * sizeof(float));
    memcpy(tb, g_xb, (size_t)(XN_INIT + XSTEPS * XBATCH + XEVAL) * XD * sizeof(float));
    for (step = 0; step < XSTEPS; step++)   /* the second half of every batch repeats the first */
        for (i = 0; i < (size_t)XBATCH / 2 * XD; i++) {
            size_t row0 = XN_INIT + step * XBATCH;
            ta[(row0 + XBATCH / 2) * XD + i] = ta[row0 * XD + i];
            tb[(row0 + XBATCH / 2) * XD + i] = tb[row0 * XD + i];
        }
    g_xa = ta; g_xb = tb;
    memset(&tmpl, 0, sizeof(tmpl));
    tmpl.k = 3;   /* k n = 3 * 64 is odd per pair of duplicates: the boundary splits a tie */
    world_init(&w1, 1); world_init(&w2, 2);
    xc_run(one, 1, &tmpl, &w1);
    tmpl.world = 2; xc_run(two, 2, &tmpl, &w2);
    TH_CHECK(!one[0].st && !two[0].st && !two[1].st, "runs: %s %s", one[0].msg, two[0].msg);
    if (!one[0].st && !two[0].st && !two[1].st) {
        double d = max_diff(one[0].params, two[0].params, one[0].n_params);
        TH_CHECK(memcmp(two[0].params, two[1].params, one[0].n_params * sizeof(float)) == 0, "the workers' bits agree");
        TH_CHECK(two[0].l0_last == one[0].l0_last, "L0 %.4f vs %.4f", two[0].l0_last, one[0].l0_last);
        TH_CHECK(d <= 1e-5, "tied batches: max diff %.3g", d);
    }
    free(one[0].params); free(two[0].params); free(two[1].params);
    world_free(&w1); world_free(&w2);
    g_xa = sa; g_xb = sb;
    free(ta); free(tb);
}

int main(void)
{
    moexc_error err;
    moexc_rng rng;
    size_t n = (size_t)(XN_INIT + XSTEPS * XBATCH + XEVAL), i, j;
    if (moexc_corpus_builtin(&g_data, 30000, 1, &err)) { printf("corpus: %s\n0 passed, 1 failed\n", err.message); return 1; }
    /* crosscoder data: a few shared directions with sparse coefficients, plus noise */
    g_xa = (float *)malloc(n * XD * sizeof(float));
    g_xb = (float *)malloc(n * XD * sizeof(float));
    if (!g_xa || !g_xb) { printf("out of memory\n0 passed, 1 failed\n"); return 1; }
    moexc_rng_seed(&rng, 11);
    for (i = 0; i < n; i++)
        for (j = 0; j < XD; j++) {
            float u = moexc_rng_uniform(&rng);
            g_xa[i * XD + j] = 0.3f * moexc_rng_normal(&rng) + (u < 0.2f ? 2.0f * u : 0.0f) + 0.5f;
            g_xb[i * XD + j] = 0.3f * moexc_rng_normal(&rng) + (u < 0.2f ? 3.0f * u : 0.0f) - 0.2f;
        }
    TH_RUN(test_lm_dense);
    TH_RUN(test_lm_moe);
    TH_RUN(test_lm_errors);
    TH_RUN(test_xc_batchtopk);
    TH_RUN(test_xc_batchtopk_k1);
    TH_RUN(test_xc_ties);
    TH_RUN(test_xc_l1);
    moexc_tokens_free(&g_data);
    free(g_xa); free(g_xb);
    return th_summary();
}
