/* moexc_train - train a dense or MoE byte-level transformer, or sample from one.

     moexc_train --builtin 2000000 --ffn moe --steps 2000 --save moe.ckpt
     moexc_train --resume moe.ckpt --builtin 2000000
     moexc_train --sample moe.ckpt --prompt "int main(" --length 200

   Data-parallel over MPI (make MPI=1): mpirun -np 4 build/mpi/moexc_train
   ... trains the same run on 4 ranks, each with a quarter of every batch
   (tools/mpi_reduce.h; SPEC §9).

   Run with --help for every option. */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L   /* clock_gettime */
#endif
#include "moexc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tool_clock.h"
#include "mpi_reduce.h"
#include <math.h>

static const char *usage =
"usage: moexc_train (--builtin BYTES_PER_DOMAIN | --data FILE) [options]   train\n"
"       moexc_train --sample CHECKPOINT [--prompt TEXT] [sampling options]  generate text\n"
"\n"
"data\n"
"  --data FILE            token-stream file (moexc_tokens_save format)\n"
"  --builtin N            built-in corpus: N bytes each of code, science, stories\n"
"  --corpus-seed N        seed of the built-in corpus (default 1)\n"
"model (new runs)\n"
"  --ffn dense|moe        feed-forward kind (default dense)\n"
"  --d-model N --heads N --layers N --context N      (defaults 128, 4, 5, 256)\n"
"  --d-ff N               dense hidden width (default 4 d)\n"
"  --experts N --moe-k N --d-expert N                (defaults 8, 2, 2 d)\n"
"  --gate raw|renorm      MoE gate weights (default raw)\n"
"  --lb-alpha X           load-balancing weight (default 0.01, negative = off)\n"
"  --z-loss X             router z-loss weight (default 0 = off)\n"
"  --tied-head            share LM head and embedding\n"
"  --init-std X           init standard deviation (default 0.02)\n"
"  --model-seed N         initialisation seed (default 1)\n"
"optimiser (new runs; a resumed run keeps its own)\n"
"  --lr X                 peak learning rate (default 1e-3)\n"
"  --min-lr-ratio X       final lr / peak lr (default 0.1)\n"
"  --beta1 X --beta2 X    AdamW betas (default 0.9, 0.95)\n"
"  --eps X                AdamW epsilon (default 1e-8)\n"
"  --weight-decay X       decoupled, matrices only (default 0.1, negative = off)\n"
"  --grad-clip X          global norm limit (default 1, negative = off)\n"
"  --warmup N             warm-up steps (default 5% of --steps)\n"
"  --steps N              optimiser steps (default 1000)\n"
"  --batch N --seq-len N  micro-batch of N sequences of T tokens (default 8 x context)\n"
"  --accum N              micro-batches per step (default 1)\n"
"  --eval-interval N      evaluate every N steps (default 100)\n"
"  --eval-batches N       held-out batches per evaluation (default 8)\n"
"  --eval-fraction X      held-out tail of each domain (default 0.05)\n"
"  --seed N               data-sampling seed (default 1)\n"
"run\n"
"  --save FILE            training checkpoint (weights + AdamW state) at the end\n"
"  --save-every N         ... and every N steps\n"
"  --export FILE          model-only file (weights) at the end\n"
"  --resume FILE          continue a training checkpoint (same data)\n"
"  --time-limit SEC       stop (and save) after SEC seconds\n"
"  --log-every N          progress line every N steps (default 10)\n"
"sampling\n"
"  --sample FILE          model or training checkpoint to sample from\n"
"  --prompt TEXT          prompt (default \"\\n\")\n"
"  --temperature X        (default 0.8; 0 = greedy)\n"
"  --top-k N              keep the N most likely tokens (default 40; 0 = all)\n"
"  --length N             tokens to generate (default 300)\n"
"  --seed N               sampling seed\n"
"threads: OMP_NUM_THREADS (results are identical for the same seed and thread count)\n"
"ranks (built with make MPI=1): mpirun -np W moexc_train ... runs data-parallel: --batch\n"
"  stays the global batch (W must divide it), each rank trains on its share and the\n"
"  gradients are summed (SPEC 9); only rank 0 prints and writes files\n";

typedef struct run {
    tool_dp *dp;
    moexc_trainer *trainer;
    const moexc_tokens *data;
    const char *save_path;
    int save_every, log_every;
    double t0, time_limit, tokens0;
    int step0;
} run;

static void print_eval(const moexc_eval_result *ev, const moexc_tokens *data)
{
    int d;
    printf("  eval @%d  bits/byte (unigram):", ev->step);
    for (d = 0; d < ev->n_domains; d++)
        printf(" %s %.3f (%.3f)", data->domain_names[d], ev->domain[d].bits_per_byte, ev->domain[d].unigram_bpb);
    printf(" | all %.3f (%.3f)\n", ev->all.bits_per_byte, ev->all.unigram_bpb);
}

static int on_progress(const moexc_train_progress *p, void *user)
{
    run *r = (run *)user;
    double elapsed = now_seconds() - r->t0;
    double tps = (p->tokens - r->tokens0) / (elapsed > 0 ? elapsed : 1e-9);
    double eta = elapsed / (p->step - r->step0) * (p->total_steps - p->step);
    int stop = r->time_limit > 0 && elapsed >= r->time_limit;
#ifdef MOEXC_MPI
    if (r->time_limit > 0 && r->dp->world > 1) {   /* stop together: rank 0's clock decides */
        MPI_Bcast(&stop, 1, MPI_INT, 0, MPI_COMM_WORLD);
    }
#endif
    if (p->step % r->log_every == 0 || p->step == p->total_steps || p->eval || stop) {
        printf("step %5d/%d  loss %.4f (ce %.4f lb %.4f)  lr %.2e  |g| %.3f  %6.0f tok/s  ETA %dm%02ds",
               p->step, p->total_steps, p->loss, p->ce, p->lb, p->lr, p->grad_norm, tps,
               (int)(eta / 60), (int)eta % 60);
        if (p->usage_max > 0) printf("  usage H %.3f bits, f %.3f-%.3f", p->usage_entropy, p->usage_min, p->usage_max);
        printf("\n");
        if (p->eval) print_eval(p->eval, r->data);
        fflush(stdout);
    }
    if (r->save_path && r->save_every > 0 && p->step % r->save_every == 0 && r->dp->rank == 0) {
        moexc_error err;
        if (moexc_trainer_save(r->trainer, r->save_path, &err)) fprintf(stderr, "warning: %s\n", err.message);
    }
    if (stop) printf("time limit of %.0f s reached at step %d\n", r->time_limit, p->step);
    return stop;
}

static void print_summary(moexc_trainer *t, const moexc_tokens *data)
{
    moexc_model *m = moexc_trainer_model(t);
    const moexc_model_config *c = moexc_model_get_config(m);
    const moexc_eval_result *ev;
    const moexc_router_stats *rs;
    moexc_error err;
    size_t total = 0, active = 0;
    int d, l, e;
    if (moexc_model_count_params(c, &total, &active, &err)) { fprintf(stderr, "error: %s\n", err.message); return; }
    printf("parameters: %lu total, %lu active per token\n", (unsigned long)total, (unsigned long)active);
    if (moexc_trainer_evaluate(t, &ev, &err)) { fprintf(stderr, "evaluation: %s\n", err.message); return; }
    printf("final held-out evaluation (%.0f tokens):\n  %-10s %8s %10s %12s\n", ev->all.tokens, "domain", "nats", "bits/byte", "unigram bpb");
    for (d = 0; d < ev->n_domains; d++)
        printf("  %-10s %8.4f %10.4f %12.4f\n", data->domain_names[d], ev->domain[d].nats,
               ev->domain[d].bits_per_byte, ev->domain[d].unigram_bpb);
    printf("  %-10s %8.4f %10.4f %12.4f\n", "all", ev->all.nats, ev->all.bits_per_byte, ev->all.unigram_bpb);
    rs = ev->router;
    if (rs->n_layers == 0) return;
    printf("routing on held-out tokens: share of a domain's tokens sent to each expert (uniform k/E = %.3f)\n",
           (double)rs->top_k / rs->n_experts);
    for (l = 0; l < rs->n_layers; l++) {
        printf("  layer %d  usage entropy %.3f / %.3f bits\n", l, rs->entropy[l], log((double)rs->n_experts) / log(2.0));
        for (d = 0; d < rs->n_domains; d++) {
            printf("    %-9s", data->domain_names[d]);
            for (e = 0; e < rs->n_experts; e++)
                printf(" %.3f", rs->domain_share[((size_t)l * rs->n_domains + d) * rs->n_experts + e]);
            printf("\n");
        }
    }
}

static int sample(const char *path, const char *prompt, float temperature, int top_k, int length, uint64_t seed)
{
    moexc_model *m = NULL;
    moexc_error err;
    moexc_rng rng;
    size_t n = strlen(prompt), i;
    uint16_t *in = (uint16_t *)malloc((n + 1) * sizeof(uint16_t)), *out = (uint16_t *)malloc(((size_t)length + 1) * sizeof(uint16_t));
    int status = 1;
    if (!in || !out) { fprintf(stderr, "out of memory\n"); goto done; }
    if (moexc_model_load(&m, path, &err)) { fprintf(stderr, "error: %s\n", err.message); goto done; }
    for (i = 0; i < n; i++) in[i] = (unsigned char)prompt[i];
    moexc_rng_seed(&rng, seed);
    if (moexc_generate(m, in, (int)n, length, temperature, top_k, &rng, out, &err)) { fprintf(stderr, "error: %s\n", err.message); goto done; }
    fputs(prompt, stdout);
    for (i = 0; i < (size_t)length; i++) putchar(out[i] < 256 ? out[i] : '?');
    putchar('\n');
    status = 0;
done:
    moexc_model_free(m);
    free(in); free(out);
    return status;
}

/* Option parsing: every option but the flags takes one value. */
static int need(int argc, char **argv, int i)
{
    if (i + 1 >= argc) { fprintf(stderr, "error: %s needs a value (see --help)\n", argv[i]); exit(2); }
    return i + 1;
}
static double num(const char *opt, const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end) { fprintf(stderr, "error: %s: '%s' is not a number\n", opt, s); exit(2); }
    return v;
}
static int integer(const char *opt, const char *s)
{
    double v = num(opt, s);
    if (v != (double)(int)v) { fprintf(stderr, "error: %s: '%s' is not an integer\n", opt, s); exit(2); }
    return (int)v;
}

static int train_main(int argc, char **argv, tool_dp *dp);

int main(int argc, char **argv)
{
    tool_dp dp;
    tool_dp_init(&dp, &argc, &argv);
    return tool_dp_exit(&dp, train_main(argc, argv, &dp));
}

static int train_main(int argc, char **argv, tool_dp *dp)
{
    moexc_model_config mc;
    moexc_train_options to;
    moexc_tokens data;
    moexc_model *model = NULL;
    moexc_trainer *trainer = NULL;
    moexc_error err;
    run r;
    const char *data_path = NULL, *resume = NULL, *export_path = NULL, *sample_path = NULL, *prompt = "\n";
    double builtin = 0, time_limit = 0;
    uint64_t corpus_seed = 1, sample_seed = 1;
    float temperature = 0.8f;
    int top_k = 40, length = 300, status = 1, i;

    memset(&mc, 0, sizeof(mc)); memset(&to, 0, sizeof(to)); memset(&data, 0, sizeof(data)); memset(&r, 0, sizeof(r));
    mc.seed = 1; to.seed = 1; r.log_every = 10;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
#define OPT(name) (strcmp(a, name) == 0 && (i = need(argc, argv, i)) > 0)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(usage, stdout); return 0; }
        else if (!strcmp(a, "--tied-head")) mc.tied_head = 1;
        else if (OPT("--data")) data_path = argv[i];
        else if (OPT("--builtin")) builtin = num(a, argv[i]);
        else if (OPT("--corpus-seed")) corpus_seed = (uint64_t)num(a, argv[i]);
        else if (OPT("--ffn")) {
            if (!strcmp(argv[i], "dense")) mc.ffn = MOEXC_FFN_DENSE;
            else if (!strcmp(argv[i], "moe")) mc.ffn = MOEXC_FFN_MOE;
            else { fprintf(stderr, "error: --ffn must be dense or moe, not '%s'\n", argv[i]); return 2; }
        }
        else if (OPT("--gate")) {
            if (!strcmp(argv[i], "raw")) mc.gate = MOEXC_GATE_RAW;
            else if (!strcmp(argv[i], "renorm")) mc.gate = MOEXC_GATE_RENORM;
            else { fprintf(stderr, "error: --gate must be raw or renorm, not '%s'\n", argv[i]); return 2; }
        }
        else if (OPT("--d-model")) mc.d_model = integer(a, argv[i]);
        else if (OPT("--heads")) mc.n_heads = integer(a, argv[i]);
        else if (OPT("--layers")) mc.n_layers = integer(a, argv[i]);
        else if (OPT("--context")) mc.context = integer(a, argv[i]);
        else if (OPT("--d-ff")) mc.d_ff = integer(a, argv[i]);
        else if (OPT("--experts")) mc.n_experts = integer(a, argv[i]);
        else if (OPT("--moe-k")) mc.top_k = integer(a, argv[i]);
        else if (OPT("--d-expert")) mc.d_expert = integer(a, argv[i]);
        else if (OPT("--lb-alpha")) mc.lb_alpha = (float)num(a, argv[i]);
        else if (OPT("--z-loss")) mc.z_loss = (float)num(a, argv[i]);
        else if (OPT("--init-std")) mc.init_std = (float)num(a, argv[i]);
        else if (OPT("--model-seed")) mc.seed = (uint64_t)num(a, argv[i]);
        else if (OPT("--lr")) to.lr = (float)num(a, argv[i]);
        else if (OPT("--min-lr-ratio")) to.min_lr_ratio = (float)num(a, argv[i]);
        else if (OPT("--beta1")) to.beta1 = (float)num(a, argv[i]);
        else if (OPT("--beta2")) to.beta2 = (float)num(a, argv[i]);
        else if (OPT("--eps")) to.eps = (float)num(a, argv[i]);
        else if (OPT("--weight-decay")) to.weight_decay = (float)num(a, argv[i]);
        else if (OPT("--grad-clip")) to.grad_clip = (float)num(a, argv[i]);
        else if (OPT("--warmup")) to.warmup_steps = integer(a, argv[i]);
        else if (OPT("--steps")) to.total_steps = integer(a, argv[i]);
        else if (OPT("--batch")) to.batch_size = integer(a, argv[i]);
        else if (OPT("--seq-len")) to.seq_len = integer(a, argv[i]);
        else if (OPT("--accum")) to.grad_accum = integer(a, argv[i]);
        else if (OPT("--eval-interval")) to.eval_interval = integer(a, argv[i]);
        else if (OPT("--eval-batches")) to.eval_batches = integer(a, argv[i]);
        else if (OPT("--eval-fraction")) to.eval_fraction = (float)num(a, argv[i]);
        else if (OPT("--seed")) to.seed = sample_seed = (uint64_t)num(a, argv[i]);
        else if (OPT("--save")) r.save_path = argv[i];
        else if (OPT("--save-every")) r.save_every = integer(a, argv[i]);
        else if (OPT("--export")) export_path = argv[i];
        else if (OPT("--resume")) resume = argv[i];
        else if (OPT("--time-limit")) time_limit = num(a, argv[i]);
        else if (OPT("--log-every")) r.log_every = integer(a, argv[i]);
        else if (OPT("--sample")) sample_path = argv[i];
        else if (OPT("--prompt")) prompt = argv[i];
        else if (OPT("--temperature")) temperature = (float)num(a, argv[i]);
        else if (OPT("--top-k")) top_k = integer(a, argv[i]);
        else if (OPT("--length")) length = integer(a, argv[i]);
        else { fprintf(stderr, "error: unknown option '%s' (see --help)\n", a); return 2; }
#undef OPT
    }
    if (sample_path) return sample(sample_path, prompt, temperature, top_k, length < 0 ? 0 : length, sample_seed);
    if (!data_path == !(builtin > 0)) { fprintf(stderr, "error: give exactly one of --data FILE or --builtin BYTES (see --help)\n"); return 2; }
    if (r.log_every < 1) r.log_every = 1;
    /* before any work: can every output be written? (by rank 0, the only
       writer: ranks probing one "<path>.tmp" at once would race) */
    if (dp->rank == 0) {
        const char *opt[2] = { "--save", "--export" }, *path[2];
        path[0] = r.save_path; path[1] = export_path;
        for (i = 0; i < 2; i++)
            if (path[i] && moexc_check_writable(path[i], &err)) { fprintf(stderr, "error: %s: %s\n", opt[i], err.message); return 1; }
    }

    if (data_path ? moexc_tokens_load(&data, data_path, &err) : moexc_corpus_builtin(&data, (size_t)builtin, corpus_seed, &err)) {
        fprintf(stderr, "error: %s\n", err.message);
        return 1;
    }
    to.reduce = dp->reduce;   /* zero with one process */
    if (resume ? (moexc_trainer_resume(&trainer, &model, resume, &data, &err) != MOEXC_OK ||
                  moexc_trainer_set_reduce(trainer, &dp->reduce, &err) != MOEXC_OK)
               : (moexc_model_create(&model, &mc, &err) || moexc_trainer_create(&trainer, model, &data, &to, &err))) {
        fprintf(stderr, "error: %s\n", err.message);
        goto done;
    }
    {
        const moexc_model_config *c = moexc_model_get_config(model);
        const moexc_train_options *o = moexc_trainer_options(trainer);
        printf("%s model d=%d L=%d H=%d ctx=%d", c->ffn == MOEXC_FFN_MOE ? "MoE" : "dense", c->d_model, c->n_layers, c->n_heads, c->context);
        if (c->ffn == MOEXC_FFN_MOE) printf(" E=%d k=%d h_e=%d", c->n_experts, c->top_k, c->d_expert);
        else printf(" h_ff=%d", c->d_ff);
        printf(", %lu parameters; %lu tokens in %d domains; lr %g, %d steps (warm-up %d) of %d x %d x %d tokens\n",
               (unsigned long)moexc_model_num_params(model), (unsigned long)data.n, data.n_domains, o->lr, o->total_steps,
               o->warmup_steps, o->grad_accum, o->batch_size, o->seq_len);
        if (resume) printf("resumed from %s at step %d\n", resume, moexc_trainer_step_count(trainer));
        if (dp->world > 1) printf("data-parallel: %d ranks x %d sequences of each batch\n", dp->world, o->batch_size / dp->world);
    }
    r.dp = dp; r.trainer = trainer; r.data = &data; r.time_limit = time_limit;
    r.t0 = now_seconds(); r.step0 = moexc_trainer_step_count(trainer);
    r.tokens0 = (double)r.step0 * moexc_trainer_options(trainer)->grad_accum * moexc_trainer_options(trainer)->batch_size * moexc_trainer_options(trainer)->seq_len;
    if (moexc_trainer_run(trainer, on_progress, &r, &err)) { fprintf(stderr, "error: %s\n", err.message); goto done; }
    printf("trained %d steps in %.1f s\n", moexc_trainer_step_count(trainer) - r.step0, now_seconds() - r.t0);
    if (dp->world > 1) {   /* every rank must end with the same bits */
        unsigned long long print = 0;
        if (!tool_dp_same(dp, moexc_model_params(model), moexc_model_num_params(model) * sizeof(float), &print)) {
            fprintf(stderr, "error: the %d ranks ended with different parameters (rank %d: %016llx)\n", dp->world, dp->rank, print);
            goto done;
        }
        printf("ranks: all %d hold identical parameters (fingerprint %016llx)\n", dp->world, print);
    }
    if (r.save_path && dp->rank == 0) {
        if (moexc_trainer_save(trainer, r.save_path, &err)) { fprintf(stderr, "error: %s\n", err.message); goto done; }
        printf("saved training checkpoint %s\n", r.save_path);
    }
    if (export_path && dp->rank == 0) {
        if (moexc_model_save(model, export_path, &err)) { fprintf(stderr, "error: %s\n", err.message); goto done; }
        printf("saved model %s\n", export_path);
    }
    print_summary(trainer, &data);
    status = 0;
done:
    moexc_trainer_free(trainer);
    moexc_model_free(model);
    moexc_tokens_free(&data);
    return status;
}
