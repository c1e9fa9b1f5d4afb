/* examples/moexc_demo.c - the paper's whole study in one command, offline.

     build/moexc_demo                      default preset into ./report (~10 min on 2 cores)
     build/moexc_demo --preset tiny --out /tmp/r    seconds, for tests
     build/moexc_demo --help                       every option

   Does "MoE vs dense: what do crosscoders see?" end to end on the built-in
   three-domain corpus, and doubles as a walkthrough of the C API:

     1. corpus      moexc_corpus_builtin             (tools/moexc_mkdata)
     2. two LMs     moexc_model_config_pair, moexc_trainer_*   (tools/moexc_train)
     3. harvest     moexc_harvester_*, moexc_shuffle_*         (tools/moexc_crosscoder)
     4. crosscoder  moexc_xc_*  (BatchTopK, designated shared latents)
     5. analysis    moexc_xc_evaluate, moexc_analyze_latents, moexc_latent_scaling_*
     6. report      table.csv, summary.json, *.npy, *.png, checkpoints

   Model A of the crosscoder is the MoE, model B the dense model; the relative
   decoder norm r = |d_B| / (|d_A| + |d_B|) is 0 for MoE-only latents and 1 for
   dense-only ones (SPEC.md §5). PNGs are written with stb_image_write (Debian:
   libstb-dev); the library itself never includes it.

   The report folder:
     table.csv, analysis.json     the paper-style class table (moexc_analysis_write_*)
     summary.json                 FVE per model and pooled, L0, dead fraction, class
                                  counts, bits per byte per domain of both LMs, MoE
                                  routing, and the answers to the paper's three findings
     latent_*.npy                 per latent: r, cosine, density, norms, class, counts,
                                  Latent Scaling beta (MoE, dense) and nu
     lm_curves.csv, lm_eval.csv   LM training loss per step, held-out bits per byte
     xc_curves.csv, xc_eval_curve.csv   crosscoder loss/FVE/L0/dead per step, held-out FVE
     routing.csv                  share of each domain's tokens per layer and expert
     lens.csv, lens.json, lens_*.png   MoE Lens (SPEC §6): co-activation, concentration,
                                  single-expert early decoding, perplexity with k' experts
     *.png                        r histogram, cosines, densities, curves, routing
     index.html, expert_purity.png  the study as one web page (step 8, SPEC §5.2): latent
                                  cards with top contexts, domain and expert shares, spliced loss
     corpus.tok, dense.ckpt, moe.ckpt, crosscoder.safetensors
                                  inputs for moexc_train / moexc_crosscoder and Python */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L   /* clock_gettime, mkdir */
#endif
#include "../moexc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <time.h>
#ifdef _WIN32
#include <direct.h>
#define make_dir(p) _mkdir(p)
#else
#include <sys/stat.h>
#define make_dir(p) mkdir((p), 0777)
#endif
#ifdef _OPENMP
#include <omp.h>
#endif
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>   /* the Makefile adds -isystem $(STB_DIR) */
#include "../tools/tool_png.h"
#include "../tools/schedule_probe.h"

/* ------------------------------------------------------------------------- */
/* Settings. A preset fills all of them; command-line options override.      */

typedef struct demo_config {
    const char *preset, *out;
    int      threads;                 /* 0: OpenMP's default (all cores)           */
    int      threads_given;           /* --threads on the command line             */
    uint64_t seed;
    /* 1. corpus */
    double   bytes_per_domain;
    /* 2. language models (the MoE gets E experts of width 4d/k: equal active parameters) */
    int      d_model, n_layers, n_heads, context, n_experts, top_k;
    int      lm_steps, lm_batch, lm_seq, lm_evals;
    float    lm_lr;
    /* 3. harvesting */
    int      layer, site;             /* block (0-based) and moexc_site             */
    int      raw_units;               /* r from raw-unit decoders (default: normalised) */
    /* 4. crosscoder */
    int      xc_latents, xc_k, xc_shared, xc_steps, xc_batch, xc_buffer, xc_evals;
    float    xc_lr;
    /* 5. held-out evaluation */
    int      eval_pairs;
    /* corpus file (--data) and seed controls (--controls, --seeds) */
    const char *data_path;            /* NULL: the built-in corpus                  */
    int      controls, n_seeds;       /* controls on; crosscoder seeds per pair     */
} demo_config;

static void preset(demo_config *c, const char *name)
{
    c->preset = name;
    c->layer = 3;  c->site = MOEXC_SITE_FFN_OUT;          /* the paper's released crosscoder */
    c->n_layers = 5; c->n_experts = 8; c->top_k = 2;       /* 5-layer models, E = 8, k = 2    */
    c->lm_evals = 10; c->xc_evals = 12;
    /* Two threads (fewer on a one-core machine, see main): the two language
       models train at the same time, one thread each (at d = 64 one model's
       GEMMs are too small for two threads to pay off: measured 32k vs 34k
       tokens/s), then the crosscoder runs on both. */
    c->threads = 2;
    if (!strcmp(name, "tiny")) {           /* seconds: exercises every step, for tests */
        c->bytes_per_domain = 60e3;
        c->d_model = 32; c->n_heads = 2; c->context = 64;
        c->lm_steps = 30; c->lm_batch = 4; c->lm_seq = 64; c->lm_lr = 3e-3f;
        c->xc_latents = 512; c->xc_k = 8; c->xc_shared = 16;
        c->xc_steps = 150; c->xc_batch = 256; c->xc_buffer = 4096; c->xc_lr = 2e-3f;
        c->eval_pairs = 4096;
    } else if (!strcmp(name, "paper")) {   /* toward the paper's scale: about a day on 2 cores */
        c->bytes_per_domain = 30e6;
        c->d_model = 256; c->n_heads = 8; c->context = 256;
        c->lm_steps = 4000; c->lm_batch = 32; c->lm_seq = 256; c->lm_lr = 1e-3f;
        c->xc_latents = 16384; c->xc_k = 64; c->xc_shared = 512;
        c->xc_steps = 6000; c->xc_batch = 2048; c->xc_buffer = 262144; c->xc_lr = 0;  /* lr: library default */
        c->threads = 0;                    /* OpenMP's default: all cores (the LMs one after the other) */
        c->eval_pairs = 262144;
    } else if (!strcmp(name, "study")) {   /* controls + 3 seeds; see README for its time */
        c->bytes_per_domain = 3e6;
        c->d_model = 64; c->n_heads = 4; c->context = 128;
        c->lm_steps = 2400; c->lm_batch = 16; c->lm_seq = 128; c->lm_lr = 2e-3f;
        c->xc_latents = 4096; c->xc_k = 32; c->xc_shared = 64;
        c->xc_steps = 2500; c->xc_batch = 1024; c->xc_buffer = 65536; c->xc_lr = 0;
        c->eval_pairs = 65536;
        c->controls = 1; c->n_seeds = 3;
    } else {                               /* "default": about 10 minutes on 2 quiet cores */
        c->preset = "default";
        c->bytes_per_domain = 2e6;
        c->d_model = 64; c->n_heads = 4; c->context = 128;
        c->lm_steps = 2000; c->lm_batch = 16; c->lm_seq = 128; c->lm_lr = 2e-3f;
        c->xc_latents = 4096; c->xc_k = 32; c->xc_shared = 64;
        c->xc_steps = 2500; c->xc_batch = 1024; c->xc_buffer = 65536; c->xc_lr = 0;  /* lr: library default */
        c->eval_pairs = 65536;
    }
}

static const char *usage =
"usage: moexc_demo [options]\n"
"Train a dense and an equal-active-parameter MoE transformer on the built-in\n"
"code/science/stories corpus, train a BatchTopK crosscoder with designated shared\n"
"latents on layer activations of both, and write the paper-style report.\n"
"\n"
"  --out DIR              report folder (default ./report)\n"
"  --preset NAME          tiny (seconds), default (5-10 min on 2 cores), study\n"
"                         (controls and 3 seeds, see the README for its time),\n"
"                         paper (about a day on 2 cores; the paper: 1B tokens, 24.6k latents)\n"
"  --threads N            OpenMP threads (tiny, default: 2; paper: all cores). With 2 or\n"
"                         3 threads the two LMs train concurrently, one thread each;\n"
"                         the crosscoder uses all N. Same seed and N: same bits.\n"
"                         On a busy machine set OMP_WAIT_POLICY=passive\n"
"  --seed N               seed of corpus, models, data order, crosscoder (default 1)\n"
"  --layer N              block to harvest, 0-based (default 3)\n"
"  --site ffn|resid       FFN/MoE output (default) or residual stream after the block\n"
"corpus and language models\n"
"  --bytes N              corpus bytes per domain\n"
"  --d-model N --layers N --heads N --context N\n"
"  --experts N --top-k N  MoE experts and active experts (h_e = 4d / k)\n"
"  --lm-steps N --lm-batch N --lm-seq N --lm-lr X\n"
"crosscoder\n"
"  --xc-latents N         latents F\n"
"  --xc-k N               BatchTopK: mean active latents per token\n"
"  --xc-shared N          designated shared latents (the first N)\n"
"  --xc-steps N --xc-batch N --xc-lr X (0 = library default)\n"
"  --xc-buffer N          shuffle-buffer capacity in token pairs\n"
"  --eval-pairs N         held-out token pairs for the final evaluation\n"
"corpus file and seed controls (SPEC 5.1)\n"
"  --data FILE.tok        run on a token file from moexc_mkdata (its domains) instead\n"
"                         of the built-in corpus; the last 5% of each domain is held out\n"
"  --controls             also diff two dense models and two MoE models that differ\n"
"                         only in their seeds, with --seeds crosscoders per pair, and\n"
"                         judge the paper's findings against them (on in 'study')\n"
"  --seeds N              crosscoder seeds per pair (default 3; implies --controls)\n"
"  --r-units normalised|raw  decoder units for r (default normalised: each model's\n"
"                         activations scaled to mean norm sqrt(d), as the crosscoder\n"
"                         saw them; raw: W_dec / s_m as saved)\n"
"\n"
"presets (d / layers / LM steps x tokens / F / k / crosscoder steps x batch):\n"
"  tiny     32 / 5 /    30 x 256   /   512 /  8 /   150 x 256\n"
"  default  64 / 5 /  2000 x 2048  /  4096 / 32 /  2500 x 1024\n"
"  study    64 / 5 /  2400 x 2048  /  4096 / 32 /  2500 x 1024, controls, 3 seeds\n"
"  paper   256 / 5 /  4000 x 8192  / 16384 / 64 /  6000 x 2048\n"
"Each step is also a command-line tool: moexc_mkdata, moexc_train, moexc_crosscoder.\n";

/* ------------------------------------------------------------------------- */
/* Small helpers: time, errors, files.                                        */

static double now_seconds(void)
{
#if defined(CLOCK_MONOTONIC) && !defined(_WIN32)   /* Windows: clock() is wall time */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#else
    return (double)clock() / CLOCKS_PER_SEC;
#endif
}

static void format_eta(char *buf, size_t size, double seconds)
{
    if (!(seconds >= 0) || seconds > 1e7) seconds = 0;
    snprintf(buf, size, "%dm%02ds", (int)(seconds / 60), (int)seconds % 60);
}

/* Print a library error and tell main to stop. */
static int failed(const char *what, const moexc_error *err)
{
    fprintf(stderr, "moexc_demo: %s: %s (%s)\n", what, err->message, moexc_status_name(err->code));
    return 1;
}

static void join(char *buf, size_t size, const char *dir, const char *name)
{
    snprintf(buf, size, "%s/%s", dir, name);
}

/* Text outputs go to "<path>.tmp" and are renamed into place when complete. */
static FILE *open_tmp(const char *path)
{
    char tmp[4200];
    FILE *f;
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "wb");
    if (!f) fprintf(stderr, "moexc_demo: cannot write %s: %s\n", tmp, strerror(errno));
    return f;
}
static int commit_tmp(FILE *f, const char *path)
{
    char tmp[4200];
    int bad = ferror(f);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    bad |= fclose(f) != 0;
    if (bad || moexc_replace_file(tmp, path, NULL) != MOEXC_OK) {
        fprintf(stderr, "moexc_demo: cannot write %s\n", path);
        remove(tmp);
        return 1;
    }
    return 0;
}

/* Where figures go: the report folder, the text stream their "wrote" lines
   go to (stdout, or a buffer while steps run side by side), and the queue
   their encoding waits in (NULL: encoded at once). zlib compression is much
   of the time the report's last steps take, so while the MoE Lens and the
   rest of the report run side by side their figures are copied into a queue
   and encoded by whichever side is free (png_queue_drain). A queued
   figure's "wrote" line comes when it is queued; if it cannot be written
   later, the demo says so and fails. */
typedef struct png_queue { int n, cap, next; char **path; moexc_canvas *canvas; } png_queue;
typedef struct png_sink { const char *dir; FILE *out; png_queue *queue; } png_sink;

#ifdef _OPENMP   /* queues are used only when steps run side by side */
static void png_queue_free(png_queue *q)
{
    int i;
    for (i = 0; i < q->n; i++) { free(q->path[i]); free(q->canvas[i].rgb); }
    free(q->path); free(q->canvas);
    memset(q, 0, sizeof(*q));
}

/* Encode queued figures until none is left to take; 1 if one failed. Any
   number of threads may drain a queue at once, and figures may be added
   meanwhile. */
static int png_queue_drain(png_queue *q)
{
    int bad = 0;
    for (;;) {
        int i;
#       pragma omp critical (demo_png_queue)
        i = q->next < q->n ? q->next++ : -1;
        if (i < 0) return bad;
        if (tool_write_png("moexc_demo", q->path[i], &q->canvas[i])) bad = 1;
    }
}
#endif

/* Copy the figure into the queue (0), or fail for want of memory (1). */
static int png_queue_add(png_queue *q, const char *path, const moexc_canvas *c)
{
    size_t bytes = (size_t)c->width * (size_t)c->height * 3;
    int bad = 0;
#ifdef _OPENMP
#   pragma omp critical (demo_png_queue)
#endif
    {
        if (q->n == q->cap) {
            int cap = q->cap ? 2 * q->cap : 16;
            char **np = (char **)realloc(q->path, (size_t)cap * sizeof(*np));
            moexc_canvas *nc = np ? (moexc_canvas *)realloc(q->canvas, (size_t)cap * sizeof(*nc)) : NULL;
            if (np) q->path = np;
            if (nc) { q->canvas = nc; q->cap = cap; }
        }
        if (q->n < q->cap) {
            char *pcopy = (char *)malloc(strlen(path) + 1);
            unsigned char *rgb = (unsigned char *)malloc(bytes ? bytes : 1);
            if (pcopy && rgb) {
                strcpy(pcopy, path);
                memcpy(rgb, c->rgb, bytes);
                q->path[q->n] = pcopy;
                q->canvas[q->n] = *c;
                q->canvas[q->n].rgb = rgb;
                q->canvas[q->n].owned = 0;
                q->n++;
            } else {
                free(pcopy); free(rgb); bad = 1;
            }
        } else {
            bad = 1;
        }
    }
    return bad;
}

/* Write (or queue) figure `name` in the sink's folder and say so. */
static int save_png(const png_sink *sink, const char *name, const moexc_canvas *c)
{
    char path[4096];
    join(path, sizeof(path), sink->dir, name);
    if (!sink->queue) {
        if (tool_write_png("moexc_demo", path, c)) return 1;
    } else if (png_queue_add(sink->queue, path, c)) {
        fprintf(stderr, "moexc_demo: out of memory for %s\n", path);
        return 1;
    }
    fprintf(sink->out, "  wrote %s\n", path);
    return 0;
}
/* save_png as the library's figure callback (user: the png_sink). */
static int sink_png(const char *name, const struct moexc_canvas *c, void *user)
{
    return save_png((const png_sink *)user, name, c);
}

/* A JSON number, or null for NaN / infinity. */
static void json_num(FILE *f, double x)
{
    if (x != x || x > 1e300 || x < -1e300) fputs("null", f);
    else fprintf(f, "%.6g", x);
}
static const char *json_bool(int b) { return b ? "true" : "false"; }

/* The last 5% of each domain's tokens are held out: the LMs never train on
   them, and the crosscoder is evaluated on activations of these tokens. */
#define DEMO_EVAL_FRACTION 0.05f

/* ------------------------------------------------------------------------- */
/* Step 2 bookkeeping: what the training callback records.                    */

typedef struct lm_record {
    const char *name;                 /* "dense" or "moe"                          */
    const moexc_tokens *data;
    int    n_steps, n_evals, log_every;
    int   *stop;                      /* shared by both models: raised when one fails */
    int   *done;                      /* raised when this model is trained and saved  */
    const int *sibling_done;          /* the other model's done flag while both train */
                                      /* at once (NULL otherwise)                     */
    int    yielded;                   /* stopped early to give up its thread: the     */
                                      /* other model is done                          */
    double t0;
    float *step, *loss, *ce, *lb, *lr;                /* per optimiser step         */
    float *eval_step, *eval_bpb;                      /* [eval][domain + 1 (all)]   */
} lm_record;

/* The two models may train at the same time on two threads, each reading
   flags the other raises: after each step a model stops when the other
   failed, and yields its thread when the other is done (to go on with all
   threads; see train_pair). */
static int flag_is_set(const int *flag)
{
    int v;
#ifdef _OPENMP
#   pragma omp atomic read
#endif
    v = *flag;
    return v;
}
static void flag_raise(int *flag)
{
#ifdef _OPENMP
#   pragma omp atomic write
#endif
    *flag = 1;
}

/* Progress lines are built whole and written with one call, so the lines of
   two models training at once never mix. */
static void append(char *buf, size_t size, const char *fmt, ...)
{
    size_t n = strlen(buf);
    va_list ap;
    if (n + 1 >= size) return;
    va_start(ap, fmt);
    vsnprintf(buf + n, size - n, fmt, ap);
    va_end(ap);
}

static int on_lm_progress(const moexc_train_progress *p, void *user)
{
    lm_record *r = (lm_record *)user;
    int i = p->step - 1, d, D = r->data->n_domains;
    if (i >= 0 && i < r->n_steps) {
        r->step[i] = (float)p->step; r->loss[i] = (float)p->loss; r->ce[i] = (float)p->ce;
        r->lb[i] = (float)p->lb; r->lr[i] = (float)p->lr;
    }
    if (p->eval && r->n_evals < r->n_steps + 1) {
        float *row = r->eval_bpb + (size_t)r->n_evals * (D + 1);
        r->eval_step[r->n_evals] = (float)p->eval->step;
        for (d = 0; d < D; d++) row[d] = (float)p->eval->domain[d].bits_per_byte;
        row[D] = (float)p->eval->all.bits_per_byte;
        r->n_evals++;
    }
    if (p->step % r->log_every == 0 || p->step == p->total_steps || p->eval) {
        double elapsed = now_seconds() - r->t0;
        char eta[32], line[512];
        format_eta(eta, sizeof(eta), elapsed / p->step * (p->total_steps - p->step));
        line[0] = 0;
        append(line, sizeof(line), "  [%-5s] step %5d/%d  loss %.4f (ce %.4f lb %.4f)  %7.0f tok/s  ETA %s", r->name,
               p->step, p->total_steps, p->loss, p->ce, p->lb, p->tokens / (elapsed > 0 ? elapsed : 1e-9), eta);
        if (p->usage_max > 0) append(line, sizeof(line), "  routing H %.2f bits", p->usage_entropy);
        append(line, sizeof(line), "\n");
        if (p->eval) {
            append(line, sizeof(line), "  [%-5s] held-out bits/byte:", r->name);
            for (d = 0; d < D; d++) append(line, sizeof(line), " %s %.3f", r->data->domain_names[d], p->eval->domain[d].bits_per_byte);
            append(line, sizeof(line), " | all %.3f\n", p->eval->all.bits_per_byte);
        }
        fputs(line, stderr);
    }
    if (flag_is_set(r->stop)) return 1;
    if (r->sibling_done && flag_is_set(r->sibling_done)) r->yielded = 1;
    return r->yielded;
}

/* Results kept from the final held-out evaluation of one LM. */
typedef struct lm_result {
    size_t  params_total, params_active;
    double  seconds, tokens_per_second;
    double  bpb[MOEXC_MAX_DOMAINS + 1], unigram_bpb[MOEXC_MAX_DOMAINS + 1];   /* [domain], [D] = all */
    int     router_layers, router_experts, router_k;
    double *domain_share;             /* [L][D][E], MoE only                        */
    double *f, *entropy;              /* [L][E], [L]                                */
} lm_result;

/* Train one model (*trainer_io NULL: from the start; otherwise on from
   where it yielded), save its training checkpoint, keep its final
   evaluation, raise rec->done. On failure, raise rec->stop so that a model
   training alongside stops too; a model stopped that way saves nothing.
   Returns 0 also when the model yielded its thread (rec->yielded; see
   train_pair): *trainer_io then holds the run, for a second call to go on. */
static int train_lm(moexc_trainer **trainer_io, moexc_model *model, const moexc_tokens *data, const demo_config *c,
                    lm_record *rec, lm_result *res, const char *ckpt_path)
{
    moexc_train_options to;
    moexc_trainer *trainer = *trainer_io;
    const moexc_eval_result *ev;
    moexc_error err;
    int d, D = data->n_domains, bad = 1;

    *trainer_io = NULL;
    rec->yielded = 0;
    if (trainer) goto run;
    memset(&to, 0, sizeof(to));                   /* zero = defaults: AdamW, warm-up + cosine, clip 1 */
    to.lr = c->lm_lr;
    to.total_steps = c->lm_steps;
    to.batch_size = c->lm_batch;
    to.seq_len = c->lm_seq;
    to.eval_interval = c->lm_steps / c->lm_evals > 0 ? c->lm_steps / c->lm_evals : 1;
    to.seed = c->seed;                            /* same data order for both models */
    to.eval_fraction = DEMO_EVAL_FRACTION;
    if (moexc_trainer_create(&trainer, model, data, &to, &err)) { flag_raise(rec->stop); return failed("trainer", &err); }

    rec->data = data;
    rec->n_steps = c->lm_steps;
    rec->log_every = c->lm_steps / 20 > 0 ? c->lm_steps / 20 : 1;
    rec->t0 = now_seconds();
run:
    if (moexc_trainer_run(trainer, on_lm_progress, rec, &err)) { bad = failed("training", &err); goto done; }
    if (moexc_trainer_step_count(trainer) < c->lm_steps && rec->yielded && !flag_is_set(rec->stop)) {
        *trainer_io = trainer;                                      /* to go on later */
        return 0;
    }
    if (moexc_trainer_step_count(trainer) < c->lm_steps) {          /* the other model failed */
        fprintf(stderr, "moexc_demo: %s model stopped at step %d: the other model failed\n", rec->name,
                moexc_trainer_step_count(trainer));
        goto done;
    }
    res->seconds = now_seconds() - rec->t0;
    res->tokens_per_second = (double)c->lm_steps * c->lm_batch * c->lm_seq / res->seconds;

    if (moexc_trainer_save(trainer, ckpt_path, &err)) { bad = failed("checkpoint", &err); goto done; }
    printf("  saved %s (%.1f s, %.0f tok/s)\n", ckpt_path, res->seconds, res->tokens_per_second);

    /* the final held-out evaluation (the trainer owns ev until its next evaluation) */
    if (moexc_trainer_evaluate(trainer, &ev, &err)) { bad = failed("evaluation", &err); goto done; }
    for (d = 0; d < D; d++) { res->bpb[d] = ev->domain[d].bits_per_byte; res->unigram_bpb[d] = ev->domain[d].unigram_bpb; }
    res->bpb[D] = ev->all.bits_per_byte; res->unigram_bpb[D] = ev->all.unigram_bpb;
    if (ev->router && ev->router->n_layers > 0) {
        const moexc_router_stats *rs = ev->router;
        size_t nle = (size_t)rs->n_layers * rs->n_experts, nlde = nle * rs->n_domains;
        res->router_layers = rs->n_layers; res->router_experts = rs->n_experts; res->router_k = rs->top_k;
        res->domain_share = (double *)malloc(nlde * sizeof(double));
        res->f = (double *)malloc(nle * sizeof(double));
        res->entropy = (double *)malloc((size_t)rs->n_layers * sizeof(double));
        if (!res->domain_share || !res->f || !res->entropy) { fprintf(stderr, "moexc_demo: out of memory\n"); goto done; }
        memcpy(res->domain_share, rs->domain_share, nlde * sizeof(double));
        memcpy(res->f, rs->f, nle * sizeof(double));
        memcpy(res->entropy, rs->entropy, (size_t)rs->n_layers * sizeof(double));
    }
    bad = 0;
done:
    if (bad) flag_raise(rec->stop);
    else if (rec->done) flag_raise(rec->done);
    moexc_trainer_free(trainer);
    return bad;
}

/* Trains a dense and a MoE model (model[0], model[1]). Concurrent: both at
   once, one thread each; the one that is done first raises its flag, the
   other yields its thread after its current step and goes on with all
   threads (a step's bits do not depend on the thread count, so the models
   are the ones one thread trains). Otherwise one after the other on all
   threads. Returns non-zero when either failed. */
static int train_pair(moexc_model *model[2], const moexc_tokens *data, const demo_config *c, lm_record rec[2],
                      lm_result res[2], char ckpt[2][4096], int concurrent)
{
    moexc_trainer *trainer[2] = {NULL, NULL};
    int done[2] = {0, 0}, bad[2] = {0, 0}, m;
    for (m = 0; m < 2; m++) rec[m].done = &done[m];
    if (concurrent) {
#ifdef _OPENMP
        rec[0].sibling_done = &done[1];
        rec[1].sibling_done = &done[0];
#       pragma omp parallel sections num_threads(2)
        {
#           pragma omp section
            {
                omp_set_num_threads(1);
                bad[0] = train_lm(&trainer[0], model[0], data, c, &rec[0], &res[0], ckpt[0]);
            }
#           pragma omp section
            {
                omp_set_num_threads(1);
                bad[1] = train_lm(&trainer[1], model[1], data, c, &rec[1], &res[1], ckpt[1]);
            }
        }
        for (m = 0; m < 2; m++) rec[m].sibling_done = NULL;
        for (m = 0; m < 2; m++)
            if (trainer[m] && !bad[0] && !bad[1]) {
                fprintf(stderr, "  [%-5s] the other model is done: on with %d threads\n", rec[m].name, omp_get_max_threads());
                bad[m] = train_lm(&trainer[m], model[m], data, c, &rec[m], &res[m], ckpt[m]);
            }
#endif
    } else {
        for (m = 0; m < 2 && !bad[0]; m++) bad[m] = train_lm(&trainer[m], model[m], data, c, &rec[m], &res[m], ckpt[m]);
    }
    for (m = 0; m < 2; m++) { moexc_trainer_free(trainer[m]); rec[m].done = NULL; }
    return bad[0] || bad[1];
}

/* ------------------------------------------------------------------------- */
/* Step 3 helper: a harvesting stream.                                        */
/* The harvester reads consecutive windows. The built-in corpus is one block  */
/* per domain, so we hand it a stream that interleaves windows of the three   */
/* domains (code, science, stories, code, ...). held_out = 0 takes the tokens */
/* the LMs trained on, 1 the held-out tail of each domain (the same split as  */
/* the trainer: the last eval_fraction of each domain's tokens).              */
static moexc_status interleave_split(moexc_tokens *out, const moexc_tokens *data, double eval_fraction,
                                     int held_out, int window, moexc_error *err)
{
    size_t begin[MOEXC_MAX_DOMAINS], end[MOEXC_MAX_DOMAINS], seen[MOEXC_MAX_DOMAINS] = {0}, i;
    uint16_t *dom_tokens[MOEXC_MAX_DOMAINS] = {0};
    int d, D = data->n_domains, any = 1, index;
    moexc_status st = MOEXC_OK;

    memset(out, 0, sizeof(*out));
    out->vocab_size = data->vocab_size;
    for (d = 0; d < D && st == MOEXC_OK; d++) {
        size_t count = moexc_tokens_domain_count(data, d), cut = count - (size_t)floor((double)count * eval_fraction);
        begin[d] = held_out ? cut : 0;
        end[d] = held_out ? count : cut;
        dom_tokens[d] = (uint16_t *)malloc((count ? count : 1) * sizeof(uint16_t));
        if (!dom_tokens[d]) st = MOEXC_ERR_NOMEM;
        else st = moexc_tokens_add_domain(out, data->domain_names[d], &index, err);
    }
    for (i = 0; i < data->n && st == MOEXC_OK; i++) {      /* each domain's tokens in stream order */
        d = data->domains[i];
        dom_tokens[d][seen[d]++] = data->tokens[i];
    }
    while (any && st == MOEXC_OK) {                         /* round robin, one window per domain */
        any = 0;
        for (d = 0; d < D && st == MOEXC_OK; d++) {
            if (begin[d] + (size_t)window > end[d]) continue;
            st = moexc_tokens_append(out, dom_tokens[d] + begin[d], (size_t)window, d, err);
            begin[d] += (size_t)window;
            any = 1;
        }
    }
    for (d = 0; d < D; d++) free(dom_tokens[d]);
    if (st == MOEXC_ERR_NOMEM && err) { err->code = st; snprintf(err->message, sizeof(err->message), "out of memory"); }
    return st;
}

/* ------------------------------------------------------------------------- */
/* Step 4 helper: crosscoder batches, the next one harvested during a step.   */
/* Pairs flow harvester -> shuffle buffer -> batches of `batch` pairs, in     */
/* stream order: a push can emit more pairs than the batch still needs, and   */
/* that surplus opens the next batch. Two batch buffers: while the crosscoder */
/* trains on one, the next can be filled. With 2 or 3 OpenMP threads the two  */
/* then run at the same time, one thread each; otherwise one after the other */
/* on all threads. A crosscoder step and a harvest give the same bits on one */
/* thread as on two, so both schedules train on the same pairs to the same   */
/* bits; which is faster depends on the widths and on the host, so the first */
/* steps time both and the faster one runs the rest (tools/schedule_probe.h). */

/* What a step trains: crosscoders xc[first..end-1], in order, on one batch
   (the study's controls train several seeds on the same stream). */
typedef struct xc_trainer {
    moexc_xc **xc;
    int first, end;
    moexc_xc_step_stats ss;             /* the last one's step statistics */
} xc_trainer;

static moexc_status train_xcs(xc_trainer *t, const float *x_a, const float *x_b, int n, moexc_error *err)
{
    moexc_status st = MOEXC_OK;
    int s;
    for (s = t->first; s < t->end && st == MOEXC_OK; s++) st = moexc_xc_train_step(t->xc[s], x_a, x_b, n, &t->ss, err);
    return st;
}

typedef struct batch_feed {
    moexc_harvester *harvest;
    moexc_shuffle_buffer *shuffle;
    int d, batch, cur, fill[2];
    float *harvest_a, *harvest_b;       /* one harvester call (rows x d)  */
    float *a[2], *b[2];                 /* batch buffers ((batch + rows) x d) */
    int steps;                          /* steps taken                    */
    schedule_probe probe;               /* which schedule is faster       */
} batch_feed;

static void feed_free(batch_feed *f)
{
    free(f->harvest_a); free(f->harvest_b);
    free(f->a[0]); free(f->a[1]); free(f->b[0]); free(f->b[1]);
    memset(f, 0, sizeof(*f));
}

static int feed_init(batch_feed *f, moexc_harvester *h, moexc_shuffle_buffer *shuffle, int batch)
{
    int rows = moexc_harvester_rows_per_call(h), i;
    size_t d = (size_t)moexc_harvester_dim(h, 0);
    memset(f, 0, sizeof(*f));
    f->harvest = h; f->shuffle = shuffle; f->d = (int)d; f->batch = batch;
    schedule_probe_init(&f->probe);
    f->harvest_a = (float *)malloc((size_t)rows * d * sizeof(float));
    f->harvest_b = (float *)malloc((size_t)rows * d * sizeof(float));
    for (i = 0; i < 2; i++) {
        f->a[i] = (float *)malloc((size_t)(batch + rows) * d * sizeof(float));
        f->b[i] = (float *)malloc((size_t)(batch + rows) * d * sizeof(float));
    }
    if (!f->harvest_a || !f->harvest_b || !f->a[0] || !f->a[1] || !f->b[0] || !f->b[1]) {
        feed_free(f);
        fprintf(stderr, "moexc_demo: out of memory\n");
        return 1;
    }
    return 0;
}

/* One harvester call pushed through the shuffle buffer into batch buffer i. */
static moexc_status feed_push(batch_feed *f, int i, moexc_error *err)
{
    int got, emitted;
    size_t at = (size_t)f->fill[i] * (size_t)f->d;
    moexc_status st = moexc_harvester_next(f->harvest, f->harvest_a, f->harvest_b, &got, err);
    if (st != MOEXC_OK) return st;
    moexc_shuffle_push(f->shuffle, f->harvest_a, f->harvest_b, got, f->a[i] + at, f->b[i] + at, &emitted);
    f->fill[i] += emitted;
    return MOEXC_OK;
}

/* Fill the shuffle buffer; pairs it already emits open the first batch. */
static moexc_status feed_prime(batch_feed *f, moexc_error *err)
{
    moexc_status st = MOEXC_OK;
    while (st == MOEXC_OK && f->shuffle->count < f->shuffle->capacity) st = feed_push(f, f->cur, err);
    return st;
}

static moexc_status feed_fill(batch_feed *f, int i, moexc_error *err)
{
    moexc_status st = MOEXC_OK;
    while (st == MOEXC_OK && f->fill[i] < f->batch) st = feed_push(f, i, err);
    return st;
}

/* One step: the trainer's crosscoders on the current batch while the next
   one is filled (not when last is set). On failure *what names the part
   that failed. */
static moexc_status feed_step(batch_feed *f, int last, xc_trainer *train, const char **what, moexc_error *err)
{
    int cur = f->cur, next = 1 - cur, together = 0, surplus, harvests, probed = 0;
    size_t d = (size_t)f->d;
    moexc_status st_train = MOEXC_OK, st_fill;
    moexc_error err_fill;
    double t0 = now_seconds();
    *what = "harvest";
    if ((st_fill = feed_fill(f, cur, err)) != MOEXC_OK) return st_fill;     /* the first batch */
    surplus = f->fill[cur] - f->batch;
    memcpy(f->a[next], f->a[cur] + (size_t)f->batch * d, (size_t)surplus * d * sizeof(float));
    memcpy(f->b[next], f->b[cur] + (size_t)f->batch * d, (size_t)surplus * d * sizeof(float));
    f->fill[next] = surplus;
    harvests = surplus < f->batch;
    /* from step 2 on the probe times the two schedules (each kind of step
       takes them in turn); after it, the faster one */
    if (SCHEDULE_PROBE_APPLIES() && !last) {
        probed = f->steps >= 1 && f->probe.probing;
        together = schedule_probe_pick(&f->probe, harvests);
    }
#ifdef _OPENMP
    if (together) {
#       pragma omp parallel sections num_threads(2)
        {
#           pragma omp section
            {
                omp_set_num_threads(1);    /* this thread's nested regions: one thread */
                st_train = train_xcs(train, f->a[cur], f->b[cur], f->batch, err);
            }
#           pragma omp section
            {
                omp_set_num_threads(1);
                st_fill = feed_fill(f, next, &err_fill);
            }
        }
    }
#endif
    if (!together) {
        st_train = train_xcs(train, f->a[cur], f->b[cur], f->batch, err);
        if (st_train == MOEXC_OK && !last) st_fill = feed_fill(f, next, &err_fill);
    }
    if (probed && schedule_probe_record(&f->probe, together, harvests, now_seconds() - t0))
        fprintf(stderr, "  [xc] a step and its share of harvesting: %.1f ms one after the other, %.1f ms at once; %s\n",
                1e3 * f->probe.seconds[0], 1e3 * f->probe.seconds[1],
                f->probe.together ? "at once from here on" : "one after the other from here on");
    f->steps++;
    f->fill[cur] = 0;
    f->cur = next;
    if (st_train != MOEXC_OK) { *what = "crosscoder step"; return st_train; }
    if (st_fill != MOEXC_OK) { *err = err_fill; return st_fill; }
    return MOEXC_OK;
}

/* ------------------------------------------------------------------------- */
/* Plots. Every figure is composed from the library's chart functions.        */

static moexc_band class_band(int cls, double lo, double hi, const char *label)
{
    moexc_band b;
    b.lo = lo; b.hi = hi; b.color = moexc_latent_class_color(cls); b.label = label;
    return b;
}

/* r histogram with the three bands; designated and dead latents are counted in the table. */
static int plot_r_histogram(const png_sink *sink, const moexc_latent_analysis *an, moexc_canvas *cv)
{
    moexc_histogram h;
    moexc_band bands[3];
    moexc_plot_options po;
    const char *label = "latents";
    uint32_t color = 0x303030u;
    char title[200];
    int c, bad;
    if (moexc_histogram_init(&h, 50, 0.0, 1.0, 0, NULL)) return 1;
    for (c = MOEXC_CLASS_MOE_ONLY; c <= MOEXC_CLASS_DENSE_ONLY; c++)
        moexc_histogram_add_where(&h, an->r, an->cls, (uint8_t)c, (size_t)an->n_latents);
    bands[0] = class_band(MOEXC_CLASS_MOE_ONLY, 0.0, an->moe_max, "MoE-only");
    bands[1] = class_band(MOEXC_CLASS_SHARED, an->moe_max, an->dense_min, "shared");
    bands[2] = class_band(MOEXC_CLASS_DENSE_ONLY, an->dense_min, 1.0, "dense-only");
    memset(&po, 0, sizeof(po));
    snprintf(title, sizeof(title), "Relative decoder norm of %lld live latents (designated shared and dead excluded)",
             (long long)h.total);
    po.title = title;
    po.x_label = "r = |d_dense| / (|d_MoE| + |d_dense|)     0 = MoE-only, 1 = dense-only";
    po.y_label = "latents";
    po.log_y = 1;
    moexc_canvas_clear(cv, 0xFFFFFFu);
    bad = moexc_plot_histograms(cv, &h, 1, &label, &color, bands, 3, &po, NULL) != MOEXC_OK;
    moexc_histogram_free(&h);
    return bad | save_png(sink, "r_hist.png", cv);
}

/* Histograms of x per live class, as overlaid outlines (fractions of each class). */
static int plot_per_class(const png_sink *sink, const char *file, const moexc_latent_analysis *an, const float *x,
                          int n_bins, double lo, double hi, int log_axis, const float *extra, int n_extra,
                          const char *extra_label, int skip_class, const moexc_plot_options *base, moexc_canvas *cv)
{
    moexc_histogram h[MOEXC_CLASS_COUNT + 1];
    const char *labels[MOEXC_CLASS_COUNT + 1];
    uint32_t colors[MOEXC_CLASS_COUNT + 1];
    char names[MOEXC_CLASS_COUNT][64];
    int c, n = 0, i, bad;
    for (c = 0; c < MOEXC_CLASS_DEAD; c++) {
        if (an->classes[c].count == 0 || c == skip_class) continue;
        if (moexc_histogram_init(&h[n], n_bins, lo, hi, log_axis, NULL)) return 1;
        moexc_histogram_add_where(&h[n], x, an->cls, (uint8_t)c, (size_t)an->n_latents);
        snprintf(names[n], sizeof(names[n]), "%s (%lld)", moexc_latent_class_name(c), (long long)an->classes[c].count);
        labels[n] = names[n];
        colors[n] = moexc_latent_class_color(c);
        n++;
    }
    if (extra) {
        if (moexc_histogram_init(&h[n], n_bins, lo, hi, log_axis, NULL)) return 1;
        moexc_histogram_add(&h[n], extra, (size_t)n_extra);
        labels[n] = extra_label; colors[n] = 0x999999u;
        n++;
    }
    moexc_canvas_clear(cv, 0xFFFFFFu);
    bad = moexc_plot_histograms(cv, h, n, labels, colors, NULL, 0, base, NULL) != MOEXC_OK;
    for (i = 0; i < n; i++) moexc_histogram_free(&h[i]);
    return bad | save_png(sink, file, cv);
}

/* Heatmap: rows "layer l, domain", columns experts, cells = % of the domain's
   tokens whose top-k includes the expert (uniform: 100 k / E). */
static int plot_routing(const png_sink *sink, const lm_result *moe, const moexc_tokens *data, moexc_error *err)
{
    int L = moe->router_layers, E = moe->router_experts, D = data->n_domains, l, d, e, bad;
    int rows = L * D;
    float *v = (float *)malloc((size_t)rows * E * sizeof(float));
    char (*row_names)[48] = (char (*)[48])malloc((size_t)rows * sizeof(*row_names));
    char col_names[64][8];
    const char **rl = (const char **)malloc((size_t)rows * sizeof(char *));
    const char *cl[64];
    moexc_canvas cv;
    moexc_plot_options po;
    char title[200];
    if (!v || !row_names || !rl || E > 64) { free(v); free(row_names); free(rl); return 1; }
    for (l = 0; l < L; l++)
        for (d = 0; d < D; d++) {
            int r = l * D + d;
            snprintf(row_names[r], sizeof(row_names[r]), "L%d %s", l, data->domain_names[d]);
            rl[r] = row_names[r];
            for (e = 0; e < E; e++)
                v[(size_t)r * E + e] = (float)(100.0 * moe->domain_share[((size_t)l * D + d) * E + e]);
        }
    for (e = 0; e < E; e++) { snprintf(col_names[e], sizeof(col_names[e]), "e%d", e); cl[e] = col_names[e]; }
    bad = moexc_canvas_init(&cv, 1000, 140 + 34 * rows, err) != MOEXC_OK;
    if (!bad) {
        memset(&po, 0, sizeof(po));
        snprintf(title, sizeof(title), "MoE routing: %% of each domain's tokens per expert (uniform %.0f%%)",
                 100.0 * moe->router_k / E);
        po.title = title;
        po.x_label = "expert (held-out tokens; rows: layer and domain)";
        po.annotate = 1;
        po.value_format = "%.0f";
        bad = moexc_plot_heatmap(&cv, v, rows, E, rl, cl, &po, err) != MOEXC_OK;
        if (!bad) bad = save_png(sink, "routing_heatmap.png", &cv);
        moexc_canvas_free(&cv);
    }
    free(v); free(row_names); free(rl);
    return bad;
}

/* A noisy per-step curve for plotting: mean over a centred window of about
   1% of the run (no lag, unlike an exponential average). */
static void smooth(float *y, const float *x, int n)
{
    int i, j, half = n / 200;
    for (i = 0; i < n; i++) {
        int lo = i - half < 0 ? 0 : i - half, hi = i + half >= n ? n - 1 : i + half;
        double s = 0;
        for (j = lo; j <= hi; j++) s += x[j];
        y[i] = (float)(s / (hi - lo + 1));
    }
}

/* ------------------------------------------------------------------------- */
/* Controls (SPEC.md §5.1, --controls): is a MoE-vs-dense difference real?     */
/* Three pairs of models, each diffed by n crosscoders that differ only in     */
/* their seed (--seeds): MoE vs dense (the study), dense vs dense and MoE vs   */
/* MoE (two models of one kind that differ only in their initialisation seed:  */
/* same data, same data order, same crosscoder settings). The controls' counts */
/* are what chance and training noise alone produce. Model A of a control is   */
/* the study's model, B its twin; "A-only" and "B-only" play the roles of      */
/* MoE-only and dense-only. Per crosscoder seed, also the aligned cosine       */
/* cos(Q d_i^A, d_i^B), Q the orthogonal Procrustes map fitted on the pair's    */
/* held-out activations.                                                        */

#define CTRL_PAIRS     3
#define CTRL_FINDINGS  3
#define CTRL_MAX_SEEDS 16

typedef struct seed_stats {
    uint64_t seed;
    double   count[MOEXC_CLASS_COUNT], density_median[MOEXC_CLASS_COUNT];
    double   cos_raw[MOEXC_CLASS_COUNT], cos_aligned[MOEXC_CLASS_COUNT];   /* class means   */
    double   random_raw, random_aligned;          /* mean cosine of random latent pairs    */
    double   fve[2], l0, dead_fraction;
    float   *dec_a, *dec_b;                       /* (F x d) decoders, r's units           */
    float   *r;                                   /* (F)                                   */
    uint8_t *cls;                                 /* (F)                                   */
} seed_stats;

typedef struct pair_stats {
    const char *name;                             /* "moe-vs-dense", ...                   */
    const char *a_only, *b_only;                  /* "MoE-only" / "A-only (MoE)", ...      */
    int         n_seeds;
    seed_stats  seed[CTRL_MAX_SEEDS];
    double      overlap[2];                       /* A-only, B-only latents across seeds   */
    double      seconds;
} pair_stats;

typedef struct controls {
    int        n_seeds, n_latents, d;
    double     moe_max, dense_min;                /* the r bands                           */
    pair_stats pair[CTRL_PAIRS];
    /* per finding, pair and seed: a statistic > 0 when the paper's finding holds */
    double     stat[CTRL_FINDINGS][CTRL_PAIRS][CTRL_MAX_SEEDS];
    int        verdict[CTRL_FINDINGS];
    double     seconds;
} controls;

static const char *const finding_keys[CTRL_FINDINGS] = {
    "fewer_moe_only_than_dense_only", "moe_only_denser_than_shared", "dense_only_sparser_than_shared"
};
static const char *const finding_text[CTRL_FINDINGS] = {
    "fewer MoE-only than dense-only latents", "MoE-only denser than shared", "dense-only sparser than shared"
};
static const char *const finding_stat_text[CTRL_FINDINGS] = {
    "count(B-only) - count(A-only)", "median density A-only - shared", "median density shared - B-only"
};

static void controls_free(controls *ct)
{
    int p, s;
    for (p = 0; p < CTRL_PAIRS; p++)
        for (s = 0; s < CTRL_MAX_SEEDS; s++) {
            seed_stats *st = &ct->pair[p].seed[s];
            free(st->dec_a); free(st->r); free(st->cls);
            st->dec_a = st->dec_b = st->r = NULL; st->cls = NULL;
        }
}

/* Mean of x over the latents of class cls (NaN when none or all NaN). */
static double class_mean(const float *x, const uint8_t *cls, int n, int c)
{
    double s = 0;
    int i, k = 0;
    for (i = 0; i < n; i++) if (cls[i] == c && x[i] == x[i]) { s += x[i]; k++; }
    return k ? s / k : NAN;
}

/* Evaluate one crosscoder on the pair's held-out set: classes, densities, raw
   and aligned cosines (q: the pair's Procrustes map, d x d). */
static int seed_stats_fill(seed_stats *s, moexc_xc *xc, const float *eval_a, const float *eval_b, int n_eval,
                           const float *q, int d, const demo_config *c, controls *ct)
{
    int F = c->xc_latents, k, bad = 1;
    int64_t *counts = (int64_t *)calloc((size_t)F, sizeof(int64_t));
    float *qa = (float *)malloc((size_t)F * d * sizeof(float));
    moexc_latent_analysis an, al;
    moexc_analysis_options ao;
    moexc_xc_eval ev;
    moexc_error err;
    memset(&an, 0, sizeof(an)); memset(&al, 0, sizeof(al));
    s->dec_a = (float *)malloc((size_t)F * d * 2 * sizeof(float));
    s->cls = (uint8_t *)malloc((size_t)F);
    if (!counts || !qa || !s->dec_a || !s->cls) { fprintf(stderr, "moexc_demo: out of memory\n"); goto done; }
    s->dec_b = s->dec_a + (size_t)F * d;
    s->r = NULL;
    if (moexc_xc_evaluate(xc, eval_a, eval_b, n_eval, &ev, counts, &err)) { failed("controls: evaluation", &err); goto done; }
    moexc_xc_decoder(xc, 0, c->raw_units, s->dec_a);
    moexc_xc_decoder(xc, 1, c->raw_units, s->dec_b);
    moexc_procrustes_apply(q, d, d, s->dec_a, F, qa);            /* Q d_i^A */
    memset(&ao, 0, sizeof(ao));
    ao.seed = c->seed;
    if (moexc_analyze_latents(&an, s->dec_a, d, s->dec_b, d, F, c->xc_shared, counts, n_eval, &ao, &err) ||
        moexc_analyze_latents(&al, qa, d, s->dec_b, d, F, c->xc_shared, counts, n_eval, &ao, &err)) {
        failed("controls: analysis", &err);
        goto done;
    }
    for (k = 0; k < MOEXC_CLASS_COUNT; k++) {          /* classes of the raw analysis */
        s->count[k] = (double)an.classes[k].count;
        s->density_median[k] = an.classes[k].density_median;
        s->cos_raw[k] = an.classes[k].cos_mean;
        s->cos_aligned[k] = class_mean(al.cosine, an.cls, F, k);
    }
    s->random_raw = an.random_cos_mean;
    s->random_aligned = al.random_cos_mean;
    s->fve[0] = ev.fve[0]; s->fve[1] = ev.fve[1]; s->l0 = ev.l0; s->dead_fraction = ev.dead_fraction;
    s->r = (float *)malloc((size_t)F * sizeof(float));
    if (!s->r) { fprintf(stderr, "moexc_demo: out of memory\n"); goto done; }
    memcpy(s->r, an.r, (size_t)F * sizeof(float));
    memcpy(s->cls, an.cls, (size_t)F);
    ct->moe_max = an.moe_max; ct->dense_min = an.dense_min;
    bad = 0;
done:
    moexc_latent_analysis_free(&an);
    moexc_latent_analysis_free(&al);
    free(counts); free(qa);
    return bad;
}

/* The harvesting options of the study (the same for every pair). */
static void study_harvest_options(const demo_config *c, moexc_harvest_options *ho)
{
    memset(ho, 0, sizeof(*ho));
    ho->layer = c->layer == 0 ? MOEXC_HARVEST_LAYER0 : c->layer;
    ho->site = c->site;
    ho->seq_len = c->context < 128 ? c->context : 128;
}

/* One pair of models: harvest its held-out set, fit the Procrustes map on it,
   then train the pair's crosscoders on one shared stream of harvested pairs
   (the same data pipeline as the study's crosscoder: shuffle buffer seeded
   seed + 7, the same init sample), one optimiser step of each per batch, and
   evaluate each. have (may be NULL) is the study's already-trained crosscoder
   for this pair: it becomes seed 0 and is not trained again. */
static int run_pair(pair_stats *p, moexc_model *model_a, moexc_model *model_b, const moexc_tokens *train_tokens,
                    const moexc_tokens *eval_tokens, const demo_config *c, moexc_xc *have, controls *ct)
{
    moexc_harvest_options ho;
    moexc_harvester *harvest = NULL, *harvest_eval = NULL;
    moexc_shuffle_buffer shuffle;
    moexc_procrustes_acc pacc;
    moexc_xc *xc[CTRL_MAX_SEEDS];
    moexc_error err;
    batch_feed feed;
    float *eval_a = NULL, *eval_b = NULL, *q = NULL;
    int d, rows, i, s, n_eval = c->eval_pairs, first = have ? 1 : 0, n_seeds = ct->n_seeds, bad = 1;
    double t0 = now_seconds();
    memset(xc, 0, sizeof(xc));
    memset(&shuffle, 0, sizeof(shuffle));
    memset(&feed, 0, sizeof(feed));
    memset(&pacc, 0, sizeof(pacc));
    p->n_seeds = n_seeds;
    study_harvest_options(c, &ho);
    if (moexc_harvester_create(&harvest, model_a, model_b, train_tokens, &ho, &err) ||
        moexc_harvester_create(&harvest_eval, model_a, model_b, eval_tokens, &ho, &err)) { failed("controls: harvester", &err); goto done; }
    d = moexc_harvester_dim(harvest, 0);
    rows = moexc_harvester_rows_per_call(harvest);
    eval_a = (float *)malloc((size_t)(n_eval + rows) * d * sizeof(float));
    eval_b = (float *)malloc((size_t)(n_eval + rows) * d * sizeof(float));
    q = (float *)malloc((size_t)d * d * sizeof(float));
    if (!eval_a || !eval_b || !q) { fprintf(stderr, "moexc_demo: out of memory\n"); goto done; }
    for (i = 0; i < n_eval; i += rows) {
        int got;
        if (moexc_harvester_next(harvest_eval, eval_a + (size_t)i * d, eval_b + (size_t)i * d, &got, &err)) { failed("controls: harvest", &err); goto done; }
    }
    /* Q (d x d) from the held-out pairs: Q = U V^T, U S V^T = sum_b x_b^B x_b^A^T (centred) */
    if (moexc_procrustes_acc_init(&pacc, d, d, &err) || moexc_procrustes_acc_add(&pacc, eval_a, eval_b, n_eval, &err) ||
        moexc_procrustes_fit(&pacc, q, &err)) { failed("controls: Procrustes", &err); goto done; }
    if (first < n_seeds) {
        moexc_xc_options xo;
        int n_init, step, log_every = c->xc_steps / 10 > 0 ? c->xc_steps / 10 : 1;
        xc_trainer tr;
        float *ia, *ib;
        if (moexc_shuffle_init(&shuffle, d, d, c->xc_buffer, c->seed + 7, &err)) { failed("controls: shuffle buffer", &err); goto done; }
        if (feed_init(&feed, harvest, &shuffle, c->xc_batch)) goto done;
        if (feed_prime(&feed, &err)) { failed("controls: harvest", &err); goto done; }
        n_init = shuffle.count < 16384 ? shuffle.count : 16384;
        ia = (float *)malloc((size_t)n_init * d * sizeof(float));
        ib = (float *)malloc((size_t)n_init * d * sizeof(float));
        if (!ia || !ib) { free(ia); free(ib); fprintf(stderr, "moexc_demo: out of memory\n"); goto done; }
        for (i = 0; i < n_init; i++) {
            memcpy(ia + (size_t)i * d, shuffle.rows + (size_t)i * 2 * d, (size_t)d * sizeof(float));
            memcpy(ib + (size_t)i * d, shuffle.rows + ((size_t)i * 2 + 1) * d, (size_t)d * sizeof(float));
        }
        memset(&xo, 0, sizeof(xo));
        xo.variant = MOEXC_XC_BATCHTOPK;
        xo.n_latents = c->xc_latents; xo.k = c->xc_k; xo.n_shared = c->xc_shared;
        xo.steps = c->xc_steps; xo.batch = c->xc_batch; xo.lr = c->xc_lr;
        for (s = first; s < n_seeds; s++) {
            xo.seed = c->seed + (uint64_t)s;                 /* crosscoder seed s */
            if (moexc_xc_create(&xc[s], d, d, &xo, &err) || moexc_xc_init_from_data(xc[s], ia, ib, n_init, &err)) {
                free(ia); free(ib); failed("controls: crosscoder", &err); goto done;
            }
        }
        free(ia); free(ib);
        tr.xc = xc; tr.first = first; tr.end = n_seeds;
        for (step = 1; step <= c->xc_steps; step++) {
            const char *what;
            char msg[64];
            if (feed_step(&feed, step == c->xc_steps, &tr, &what, &err)) {
                snprintf(msg, sizeof(msg), "controls: %s", what);
                failed(msg, &err);
                goto done;
            }
            if (step % log_every == 0 || step == c->xc_steps) {
                double el = now_seconds() - t0;
                char eta[32];
                format_eta(eta, sizeof(eta), el / step * (c->xc_steps - step));
                fprintf(stderr, "  [%s] step %5d/%d, %d crosscoder%s  last: loss %.4f FVE A %.3f B %.3f  ETA %s\n", p->name,
                        step, c->xc_steps, n_seeds - first, n_seeds - first > 1 ? "s" : "", tr.ss.loss, tr.ss.fve[0], tr.ss.fve[1], eta);
            }
        }
    }
    for (s = 0; s < n_seeds; s++) {
        p->seed[s].seed = c->seed + (uint64_t)s;
        if (seed_stats_fill(&p->seed[s], s < first ? have : xc[s], eval_a, eval_b, n_eval, q, d, c, ct)) goto done;
    }
    {   /* overlap of exclusive latents across seeds: mean over ordered seed pairs */
        int cls2[2] = {MOEXC_CLASS_MOE_ONLY, MOEXC_CLASS_DENSE_ONLY}, e, a, b, F = c->xc_latents;
        int *idx = (int *)malloc((size_t)F * 2 * sizeof(int));
        if (!idx) { fprintf(stderr, "moexc_demo: out of memory\n"); goto done; }
        for (e = 0; e < 2; e++) {
            double sum = 0;
            int n = 0;
            for (a = 0; a < n_seeds; a++)
                for (b = 0; b < n_seeds; b++) {
                    int n1 = 0, n2 = 0;
                    double o;
                    if (a == b) continue;
                    for (i = 0; i < F; i++) {
                        if (p->seed[a].cls[i] == cls2[e]) idx[n1++] = i;
                        if (p->seed[b].cls[i] == cls2[e]) idx[F + n2++] = i;
                    }
                    /* an exclusive latent lives in the model that carries it (A for A-only, B for B-only) */
                    o = moexc_latent_overlap(p->seed[a].dec_a, p->seed[a].dec_b, idx, n1, p->seed[b].dec_a, p->seed[b].dec_b,
                                             idx + F, n2, d, d, e == 0 ? 1 : 2, 0.9);
                    if (o == o) { sum += o; n++; }
                }
            p->overlap[e] = n ? sum / n : NAN;
        }
        free(idx);
    }
    p->seconds = now_seconds() - t0;
    ct->d = d;
    bad = 0;
done:
    for (s = 0; s < CTRL_MAX_SEEDS; s++) moexc_xc_free(xc[s]);
    moexc_procrustes_acc_free(&pacc);
    moexc_shuffle_free(&shuffle);
    moexc_harvester_free(harvest);
    moexc_harvester_free(harvest_eval);
    free(eval_a); free(eval_b); feed_free(&feed); free(q);
    return bad;
}

/* The three findings' per-seed statistics and verdicts. */
static void controls_verdicts(controls *ct)
{
    int f, p, s, n = ct->n_seeds;
    double ctrl[2 * CTRL_MAX_SEEDS];
    for (p = 0; p < CTRL_PAIRS; p++)
        for (s = 0; s < n; s++) {
            const seed_stats *st = &ct->pair[p].seed[s];
            ct->stat[0][p][s] = st->count[MOEXC_CLASS_DENSE_ONLY] - st->count[MOEXC_CLASS_MOE_ONLY];
            ct->stat[1][p][s] = st->density_median[MOEXC_CLASS_MOE_ONLY] - st->density_median[MOEXC_CLASS_SHARED];
            ct->stat[2][p][s] = st->density_median[MOEXC_CLASS_SHARED] - st->density_median[MOEXC_CLASS_DENSE_ONLY];
        }
    for (f = 0; f < CTRL_FINDINGS; f++) {
        for (p = 1; p < CTRL_PAIRS; p++)
            for (s = 0; s < n; s++) ctrl[(p - 1) * n + s] = ct->stat[f][p][s];
        ct->verdict[f] = moexc_finding_verdict(ct->stat[f][0], n, ctrl, CTRL_PAIRS - 1, n);
    }
}

/* mean and sd over the seeds of one field of seed_stats, picked by a getter */
static void seeds_mean_sd(const pair_stats *p, const double *field0, double *mean, double *sd)
{
    double x[CTRL_MAX_SEEDS];
    int s;
    size_t off = (size_t)((const char *)field0 - (const char *)&p->seed[0]);
    for (s = 0; s < p->n_seeds; s++) x[s] = *(const double *)((const char *)&p->seed[s] + off);
    moexc_mean_sd(x, p->n_seeds, mean, sd);
}

/* "12.3 ± 4.5" (or "12.3" with one seed); fmt for one number */
static const char *pm(char *buf, size_t size, const char *fmt, double m, double s)
{
    char a[32], b[32];
    if (m != m) { snprintf(buf, size, "-"); return buf; }
    snprintf(a, sizeof(a), fmt, m);
    if (s == s) { snprintf(b, sizeof(b), fmt, s); snprintf(buf, size, "%s +- %s", a, b); }
    else snprintf(buf, size, "%s", a);
    return buf;
}

static const int ctrl_classes[3] = {MOEXC_CLASS_MOE_ONLY, MOEXC_CLASS_SHARED, MOEXC_CLASS_DENSE_ONLY};

/* The printed controls report and controls.csv (one row per pair, class and seed, then mean/sd rows). */
static int report_controls(const controls *ct, const demo_config *c)
{
    char path[4096], b1[80], b2[80], b3[80], b4[80];
    int p, k, f, s, n = ct->n_seeds;
    double m, sd, m2, sd2;
    FILE *fo;
    printf("seed controls (SPEC 5.1): %d crosscoder seeds per pair; mean +- sd over seeds\n", n);
    printf("%-15s %-11s %16s %16s %18s %18s\n", "pair", "class", "count", "median density", "cosine raw", "cosine aligned");
    for (p = 0; p < CTRL_PAIRS; p++) {
        const pair_stats *ps = &ct->pair[p];
        for (k = 0; k < 3; k++) {
            int cl = ctrl_classes[k];
            const char *name = cl == MOEXC_CLASS_MOE_ONLY ? ps->a_only : cl == MOEXC_CLASS_DENSE_ONLY ? ps->b_only : "shared";
            seeds_mean_sd(ps, &ps->seed[0].count[cl], &m, &sd);
            printf("%-15s %-11s %16s", k == 0 ? ps->name : "", name, pm(b1, sizeof(b1), "%.1f", m, sd));
            seeds_mean_sd(ps, &ps->seed[0].density_median[cl], &m, &sd);
            printf(" %16s", pm(b2, sizeof(b2), "%.2g", m, sd));
            seeds_mean_sd(ps, &ps->seed[0].cos_raw[cl], &m, &sd);
            seeds_mean_sd(ps, &ps->seed[0].cos_aligned[cl], &m2, &sd2);
            printf(" %18s %18s\n", pm(b3, sizeof(b3), "%.3f", m, sd), pm(b4, sizeof(b4), "%.3f", m2, sd2));
        }
        seeds_mean_sd(ps, &ps->seed[0].random_raw, &m, &sd);
        seeds_mean_sd(ps, &ps->seed[0].random_aligned, &m2, &sd2);
        printf("%-15s %-11s %16s %16s %18s %18s\n", "", "random", "", "", pm(b3, sizeof(b3), "%.3f", m, sd), pm(b4, sizeof(b4), "%.3f", m2, sd2));
        printf("%-15s overlap across seeds (cos > 0.9 in the carrying model): %s %.2f, %s %.2f; %.0f s\n", "",
               ps->a_only, ps->overlap[0], ps->b_only, ps->overlap[1], ps->seconds);
    }
    printf("\nthe paper's findings against the seed controls (statistic > 0 when the finding holds; per seed, then mean +- sd):\n");
    for (f = 0; f < CTRL_FINDINGS; f++) {
        int valid = 0;
        for (s = 0; s < n; s++) valid += ct->stat[f][0][s] == ct->stat[f][0][s];
        printf("  %s: %s (MoE vs dense: %d of %d seeds with data; beyond a control means |mean - control mean| > 2 control sd)\n",
               finding_text[f], moexc_verdict_name(ct->verdict[f]), valid, n);
        for (p = 0; p < CTRL_PAIRS; p++) {
            printf("    %-15s %s:", ct->pair[p].name, finding_stat_text[f]);
            for (s = 0; s < n; s++) printf(" %.3g", ct->stat[f][p][s]);
            moexc_mean_sd(ct->stat[f][p], n, &m, &sd);
            printf("  -> %s\n", pm(b1, sizeof(b1), "%.3g", m, sd));
        }
    }
    printf("\n");
    join(path, sizeof(path), c->out, "controls.csv");
    if (!(fo = open_tmp(path))) return 1;
    fprintf(fo, "pair,seed,class,count,density_median,cos_raw,cos_aligned\n");
    for (p = 0; p < CTRL_PAIRS; p++)
        for (s = 0; s < n; s++) {
            const seed_stats *st = &ct->pair[p].seed[s];
            for (k = 0; k < MOEXC_CLASS_COUNT; k++)
                fprintf(fo, "%s,%lu,%s,%.0f,%.6g,%.6g,%.6g\n", ct->pair[p].name, (unsigned long)st->seed, moexc_latent_class_name(k),
                        st->count[k], st->density_median[k], st->cos_raw[k], st->cos_aligned[k]);
            fprintf(fo, "%s,%lu,random_pairs,,,%.6g,%.6g\n", ct->pair[p].name, (unsigned long)st->seed, st->random_raw, st->random_aligned);
        }
    return commit_tmp(fo, path);
}

static void json_mean_sd(FILE *f, const pair_stats *ps, const double *field0)
{
    double m, sd;
    seeds_mean_sd(ps, field0, &m, &sd);
    fprintf(f, "{\"mean\": "); json_num(f, m);
    fprintf(f, ", \"sd\": "); json_num(f, sd);
    fprintf(f, "}");
}

/* The "controls" member of summary.json. */
static void write_controls_json(FILE *f, const controls *ct)
{
    int p, k, s, fi, n = ct->n_seeds;
    double m, sd;
    fprintf(f, "  \"controls\": {\n    \"n_seeds\": %d, \"overlap_min_cos\": 0.9, \"seconds\": ", n);
    json_num(f, ct->seconds);
    fprintf(f, ",\n    \"pairs\": {");
    for (p = 0; p < CTRL_PAIRS; p++) {
        const pair_stats *ps = &ct->pair[p];
        fprintf(f, "%s\n      \"%s\": {\"a_only\": \"%s\", \"b_only\": \"%s\", \"seeds\": [", p ? "," : "", ps->name, ps->a_only, ps->b_only);
        for (s = 0; s < n; s++) fprintf(f, "%s%lu", s ? ", " : "", (unsigned long)ps->seed[s].seed);
        fprintf(f, "],\n        \"classes\": {");
        for (k = 0; k < MOEXC_CLASS_COUNT; k++) {
            fprintf(f, "%s\n          \"%s\": {\"count\": [", k ? "," : "", moexc_latent_class_name(k));
            for (s = 0; s < n; s++) { fprintf(f, "%s", s ? ", " : ""); json_num(f, ps->seed[s].count[k]); }
            fprintf(f, "], \"count_mean_sd\": "); json_mean_sd(f, ps, &ps->seed[0].count[k]);
            fprintf(f, ", \"density_median\": [");
            for (s = 0; s < n; s++) { fprintf(f, "%s", s ? ", " : ""); json_num(f, ps->seed[s].density_median[k]); }
            fprintf(f, "], \"density_median_mean_sd\": "); json_mean_sd(f, ps, &ps->seed[0].density_median[k]);
            fprintf(f, ", \"cos_raw_mean_sd\": "); json_mean_sd(f, ps, &ps->seed[0].cos_raw[k]);
            fprintf(f, ", \"cos_aligned_mean_sd\": "); json_mean_sd(f, ps, &ps->seed[0].cos_aligned[k]);
            fprintf(f, "}");
        }
        fprintf(f, "},\n        \"random_pairs\": {\"cos_raw_mean_sd\": "); json_mean_sd(f, ps, &ps->seed[0].random_raw);
        fprintf(f, ", \"cos_aligned_mean_sd\": "); json_mean_sd(f, ps, &ps->seed[0].random_aligned);
        fprintf(f, "},\n        \"fve_a_mean_sd\": "); json_mean_sd(f, ps, &ps->seed[0].fve[0]);
        fprintf(f, ", \"fve_b_mean_sd\": "); json_mean_sd(f, ps, &ps->seed[0].fve[1]);
        fprintf(f, ",\n        \"overlap_exclusive\": {\"a_only\": "); json_num(f, ps->overlap[0]);
        fprintf(f, ", \"b_only\": "); json_num(f, ps->overlap[1]);
        fprintf(f, "}, \"seconds\": "); json_num(f, ps->seconds);
        fprintf(f, "}");
    }
    fprintf(f, "\n    },\n    \"verdicts\": {");
    for (fi = 0; fi < CTRL_FINDINGS; fi++) {
        fprintf(f, "%s\n      \"%s\": {\"verdict\": \"%s\", \"statistic\": \"%s\"", fi ? "," : "", finding_keys[fi],
                moexc_verdict_name(ct->verdict[fi]), finding_stat_text[fi]);
        for (p = 0; p < CTRL_PAIRS; p++) {
            fprintf(f, ",\n        \"%s\": {\"per_seed\": [", ct->pair[p].name);
            for (s = 0; s < n; s++) { fprintf(f, "%s", s ? ", " : ""); json_num(f, ct->stat[fi][p][s]); }
            moexc_mean_sd(ct->stat[fi][p], n, &m, &sd);
            fprintf(f, "], \"mean\": "); json_num(f, m);
            fprintf(f, ", \"sd\": "); json_num(f, sd);
            fprintf(f, "}");
        }
        fprintf(f, "}");
    }
    fprintf(f, "\n    }\n  },\n");
}

/* Points with error bars as one line series per group: for each x a vertical
   bar mean - sd .. mean + sd and a short horizontal tick at the mean, each
   drawn apart (NaN breaks the line). buf holds 6 floats x 2 per point. */
static void errorbar_series(moexc_series *s, float *buf, const double *x, const double *mean, const double *sd, int n,
                            int log_y, const char *label)
{
    float *px = buf, *py = buf + 6 * (size_t)n;
    int i, k = 0;
    const float nan = NAN;
    for (i = 0; i < n; i++) {
        double lo = mean[i] - (sd[i] == sd[i] ? sd[i] : 0), hi = mean[i] + (sd[i] == sd[i] ? sd[i] : 0);
        if (log_y && !(lo > 0)) lo = mean[i] * 0.1;
        px[k] = (float)x[i]; py[k++] = (float)lo;
        px[k] = (float)x[i]; py[k++] = (float)hi;
        px[k] = nan; py[k++] = nan;
        px[k] = (float)(x[i] - 0.08); py[k++] = (float)mean[i];
        px[k] = (float)(x[i] + 0.08); py[k++] = (float)mean[i];
        px[k] = nan; py[k++] = nan;
    }
    s->x = px; s->y = py; s->n = k; s->label = label;
}

/* One panel: per pair, a quantity at n_x positions (x = position + pair offset)
   as mean +- sd over seeds; get(pair, seed, position) picks the value. */
typedef double (*ctrl_getter)(const controls *ct, int p, int s, int k);
static double get_count(const controls *ct, int p, int s, int k) { return ct->pair[p].seed[s].count[k == 0 ? MOEXC_CLASS_MOE_ONLY : MOEXC_CLASS_DENSE_ONLY]; }
static double get_density(const controls *ct, int p, int s, int k) { return ct->pair[p].seed[s].density_median[ctrl_classes[k]]; }
static double get_cos_raw(const controls *ct, int p, int s, int k) { return k < 3 ? ct->pair[p].seed[s].cos_raw[ctrl_classes[k]] : ct->pair[p].seed[s].random_raw; }
static double get_cos_aligned(const controls *ct, int p, int s, int k) { return k < 3 ? ct->pair[p].seed[s].cos_aligned[ctrl_classes[k]] : ct->pair[p].seed[s].random_aligned; }

static int errorbar_panel(moexc_canvas *cv, const controls *ct, ctrl_getter get, int n_x, const moexc_plot_options *po)
{
    moexc_series s[CTRL_PAIRS];
    float *buf = (float *)malloc((size_t)CTRL_PAIRS * 12 * n_x * sizeof(float));
    double x[8], mean[8], sd[8], v[CTRL_MAX_SEEDS];
    moexc_error err;
    int p, k, i, bad, finite = 0;
    if (!buf || n_x > 8) { free(buf); return 1; }
    for (p = 0; p < CTRL_PAIRS; p++) {
        for (k = 0; k < n_x; k++) {
            for (i = 0; i < ct->n_seeds; i++) v[i] = get(ct, p, i, k);
            moexc_mean_sd(v, ct->n_seeds, &mean[k], &sd[k]);
            x[k] = k + 0.2 * (p - 1);
            finite += mean[k] == mean[k] && (!po->log_y || mean[k] > 0);
        }
        errorbar_series(&s[p], buf + (size_t)p * 12 * n_x, x, mean, sd, n_x, po->log_y, ct->pair[p].name);
    }
    if (!finite) {                               /* e.g. every class empty: say so */
        moexc_draw_text(cv, po->x + 40, po->y + po->height / 2, "no data in any seed", 2, 0x000000u);
        free(buf);
        return 0;
    }
    bad = moexc_plot_lines(cv, s, CTRL_PAIRS, po, &err) != MOEXC_OK;
    if (bad) fprintf(stderr, "moexc_demo: plot: %s\n", err.message);
    free(buf);
    return bad;
}

static int plot_controls(const png_sink *sink, const controls *ct, moexc_canvas *cv)
{
    moexc_plot_options po;
    char title[200];
    int p, s, bad = 0;
    {   /* r histograms of the three pairs, all seeds pooled, fractions of live latents */
        moexc_histogram h[CTRL_PAIRS];
        const char *labels[CTRL_PAIRS];
        moexc_band bands[3];
        for (p = 0; p < CTRL_PAIRS; p++) {
            if (moexc_histogram_init(&h[p], 50, 0.0, 1.0, 0, NULL)) return 1;
            for (s = 0; s < ct->n_seeds; s++) {
                int c;
                for (c = MOEXC_CLASS_MOE_ONLY; c <= MOEXC_CLASS_DENSE_ONLY; c++)
                    moexc_histogram_add_where(&h[p], ct->pair[p].seed[s].r, ct->pair[p].seed[s].cls, (uint8_t)c, (size_t)ct->n_latents);
            }
            labels[p] = ct->pair[p].name;
        }
        bands[0] = class_band(MOEXC_CLASS_MOE_ONLY, 0.0, ct->moe_max, "A-only (MoE-only)");
        bands[1] = class_band(MOEXC_CLASS_SHARED, ct->moe_max, ct->dense_min, "shared");
        bands[2] = class_band(MOEXC_CLASS_DENSE_ONLY, ct->dense_min, 1.0, "B-only (dense-only)");
        memset(&po, 0, sizeof(po));
        snprintf(title, sizeof(title), "r of the study and its seed controls (%d crosscoder seeds pooled)", ct->n_seeds);
        po.title = title;
        po.x_label = "r = |d_B| / (|d_A| + |d_B|)   (A, B: MoE, dense | dense, dense' | MoE, MoE')";
        po.y_label = "fraction of live latents";
        po.log_y = 1; po.normalize = 1;
        moexc_canvas_clear(cv, 0xFFFFFFu);
        bad = moexc_plot_histograms(cv, h, CTRL_PAIRS, labels, NULL, bands, 3, &po, NULL) != MOEXC_OK;
        for (p = 0; p < CTRL_PAIRS; p++) moexc_histogram_free(&h[p]);
        if (bad || save_png(sink, "r_hist_controls.png", cv)) return 1;
    }
    /* class counts and median densities, mean +- sd over crosscoder seeds */
    moexc_canvas_clear(cv, 0xFFFFFFu);
    memset(&po, 0, sizeof(po));
    po.x = 0; po.y = 0; po.width = 500; po.height = 640;
    po.title = "Exclusive latents";
    po.x_label = "0 A-only (MoE)  1 B-only (dense)";
    po.y_label = "latents, mean +- sd over seeds";
    po.x_min = -0.5; po.x_max = 1.5;
    if (errorbar_panel(cv, ct, get_count, 2, &po)) return 1;
    memset(&po, 0, sizeof(po));
    po.x = 500; po.y = 0; po.width = 500; po.height = 640;
    po.title = "Median density per class";
    po.x_label = "0 A-only  1 shared  2 B-only";
    po.y_label = "median fraction of tokens (log10)";
    po.x_min = -0.5; po.x_max = 2.5; po.log_y = 1;
    if (errorbar_panel(cv, ct, get_density, 3, &po)) return 1;
    if (save_png(sink, "class_counts_controls.png", cv)) return 1;
    /* raw and aligned decoder cosines per class, against random pairs */
    moexc_canvas_clear(cv, 0xFFFFFFu);
    memset(&po, 0, sizeof(po));
    po.x = 0; po.y = 0; po.width = 500; po.height = 640;
    po.title = "Raw cos(d_A, d_B)";
    po.x_label = "0 A-only 1 shared 2 B-only 3 random";
    po.y_label = "mean cosine per class, mean +- sd over seeds";
    po.x_min = -0.5; po.x_max = 3.5; po.y_min = -0.6; po.y_max = 1.0;
    if (errorbar_panel(cv, ct, get_cos_raw, 4, &po)) return 1;
    po.x = 500;
    po.title = "Aligned cos(Q d_A, d_B)";
    po.y_label = "mean aligned cosine per class (Procrustes Q)";
    if (errorbar_panel(cv, ct, get_cos_aligned, 4, &po)) return 1;
    return save_png(sink, "cosine_aligned.png", cv);
}

/* The controls' twin models: a dense and a MoE model like the study's, whose
   initialisation seed is seed + 1 (same corpus, same data order, same
   training settings). Trained like the study's pair, at the same time with
   2 or 3 threads; checkpoints dense_twin.ckpt and moe_twin.ckpt. */
static int train_twins(moexc_model *twin[2], const moexc_tokens *data, const demo_config *c, int concurrent)
{
    static const char *const names[2] = {"dense'", "moe'"};
    moexc_model_config base, cfg[2];
    lm_record rec[2];
    lm_result res[2];
    moexc_error err;
    char ckpt[2][4096];
    int m, stop = 0, bad = 1;
    size_t n = (size_t)c->lm_steps;
    memset(rec, 0, sizeof(rec)); memset(res, 0, sizeof(res));
    memset(&base, 0, sizeof(base));
    base.d_model = c->d_model; base.n_layers = c->n_layers; base.n_heads = c->n_heads; base.context = c->context;
    base.n_experts = c->n_experts; base.top_k = c->top_k; base.seed = c->seed + 1;
    base.vocab_size = data->vocab_size;
    if (moexc_model_config_pair(&base, &cfg[0], &cfg[1], &err)) return failed("twin model config", &err);
    for (m = 0; m < 2; m++) {
        if (moexc_model_create(&twin[m], &cfg[m], &err)) return failed("twin model", &err);
        rec[m].name = names[m];
        rec[m].step = (float *)calloc(5 * n, sizeof(float));
        rec[m].eval_step = (float *)calloc(n + 1, sizeof(float));
        rec[m].eval_bpb = (float *)calloc((n + 1) * (size_t)(data->n_domains + 1), sizeof(float));
        if (!rec[m].step || !rec[m].eval_step || !rec[m].eval_bpb) { fprintf(stderr, "moexc_demo: out of memory\n"); goto done; }
        rec[m].loss = rec[m].step + n; rec[m].ce = rec[m].step + 2 * n; rec[m].lb = rec[m].step + 3 * n; rec[m].lr = rec[m].step + 4 * n;
        rec[m].stop = &stop;
        snprintf(ckpt[m], sizeof(ckpt[m]), "%s/%s_twin.ckpt", c->out, m == 0 ? "dense" : "moe");
    }
    bad = train_pair(twin, data, c, rec, res, ckpt, concurrent);
    if (!bad)
        printf("  twins' held-out bits per byte: dense' %.3f, MoE' %.3f\n", res[0].bpb[data->n_domains], res[1].bpb[data->n_domains]);
done:
    for (m = 0; m < 2; m++) {
        free(rec[m].step); free(rec[m].eval_step); free(rec[m].eval_bpb);
        free(res[m].domain_share); free(res[m].f); free(res[m].entropy);
    }
    return bad;
}

/* ------------------------------------------------------------------------- */
/* Step 6: the report. Everything the run measured, gathered for the writers. */

typedef struct report_inputs {
    const demo_config *c;
    const moexc_tokens *data;
    const lm_record *rec;                         /* [2]: dense, MoE           */
    const lm_result *res;                         /* [2]                        */
    const moexc_xc *xc;
    const moexc_xc_eval *eval;                    /* final held-out evaluation  */
    const moexc_latent_analysis *an, *an_alt;     /* r in the chosen / other units */
    const float *nu_err;                          /* Latent Scaling nu (error target) */
    const float *xc_curve, *xc_eval_curve;
    int n_xc_evals, n_eval;
    double seconds;
    const controls *ctl;                          /* NULL without --controls    */
} report_inputs;

static const char *const model_names[2] = {"dense", "moe"};

/* lm_curves.csv, lm_eval.csv, xc_curves.csv, xc_eval_curve.csv, routing.csv */
static int write_csvs(const report_inputs *in)
{
    const demo_config *c = in->c;
    const moexc_tokens *data = in->data;
    const lm_record *rec = in->rec;
    const lm_result *res = in->res;
    int D = data->n_domains, m, d;
    char path[4096];
    const float *xc_curve = in->xc_curve, *xc_eval_curve = in->xc_eval_curve;
    int n_xc_evals = in->n_xc_evals;
    {
        FILE *f;
        int k, e, l;
        join(path, sizeof(path), c->out, "lm_curves.csv");
        if (!(f = open_tmp(path))) return 1;
        fprintf(f, "model,step,loss,ce,lb,lr\n");
        for (m = 0; m < 2; m++)
            for (k = 0; k < c->lm_steps; k++)
                fprintf(f, "%s,%d,%.6g,%.6g,%.6g,%.6g\n", model_names[m], k + 1, rec[m].loss[k], rec[m].ce[k], rec[m].lb[k], rec[m].lr[k]);
        if (commit_tmp(f, path)) return 1;
        join(path, sizeof(path), c->out, "lm_eval.csv");
        if (!(f = open_tmp(path))) return 1;
        fprintf(f, "model,step,domain,bits_per_byte\n");
        for (m = 0; m < 2; m++)
            for (k = 0; k < rec[m].n_evals; k++)
                for (d = 0; d <= D; d++)
                    fprintf(f, "%s,%d,%s,%.6g\n", model_names[m], (int)rec[m].eval_step[k], d < D ? data->domain_names[d] : "all",
                            rec[m].eval_bpb[(size_t)k * (D + 1) + d]);
        if (commit_tmp(f, path)) return 1;
        join(path, sizeof(path), c->out, "xc_curves.csv");
        if (!(f = open_tmp(path))) return 1;
        fprintf(f, "step,loss,fve_moe,fve_dense,l0,dead_fraction,lr\n");
        for (k = 0; k < c->xc_steps; k++) {
            const float *r = xc_curve + (size_t)k * 6;
            fprintf(f, "%d,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g\n", k + 1, r[0], r[1], r[2], r[3], r[4], r[5]);
        }
        if (commit_tmp(f, path)) return 1;
        join(path, sizeof(path), c->out, "xc_eval_curve.csv");
        if (!(f = open_tmp(path))) return 1;
        fprintf(f, "step,fve_moe,fve_dense,fve_pooled,l0,dead_fraction\n");
        for (k = 0; k < n_xc_evals; k++) {
            const float *r = xc_eval_curve + (size_t)k * 6;
            fprintf(f, "%d,%.6g,%.6g,%.6g,%.6g,%.6g\n", (int)r[0], r[1], r[2], r[3], r[4], r[5]);
        }
        if (commit_tmp(f, path)) return 1;
        join(path, sizeof(path), c->out, "routing.csv");
        if (!(f = open_tmp(path))) return 1;
        fprintf(f, "layer,domain,expert,share\n");
        for (l = 0; l < res[1].router_layers; l++)
            for (d = 0; d < D; d++)
                for (e = 0; e < res[1].router_experts; e++)
                    fprintf(f, "%d,%s,%d,%.6g\n", l, data->domain_names[d], e,
                            res[1].domain_share[((size_t)l * D + d) * res[1].router_experts + e]);
        if (commit_tmp(f, path)) return 1;
    }

    return 0;
}

/* summary.json, and the paper's three findings on stdout */
static int write_summary(const report_inputs *in)
{
    const demo_config *c = in->c;
    const moexc_tokens *data = in->data;
    const lm_result *res = in->res;
    int D = data->n_domains, m, d, i;
    char path[4096];
    const moexc_xc *xc = in->xc;
    const moexc_xc_eval *ev = in->eval;
    const moexc_latent_analysis *an = in->an, *an_alt = in->an_alt;
    const float *nu_err = in->nu_err;
    int n_eval = in->n_eval;
    double seconds = in->seconds;
    {
        FILE *f;
        const moexc_class_summary *cs = an->classes;
        double moe_den = cs[MOEXC_CLASS_MOE_ONLY].density_median, sh_den = cs[MOEXC_CLASS_SHARED].density_median,
               de_den = cs[MOEXC_CLASS_DENSE_ONLY].density_median;
        int64_t n_moe = cs[MOEXC_CLASS_MOE_ONLY].count, n_dense = cs[MOEXC_CLASS_DENSE_ONLY].count;
        int k, l;
        join(path, sizeof(path), c->out, "summary.json");
        if (!(f = open_tmp(path))) return 1;
        fprintf(f, "{\n  \"preset\": \"%s\",\n  \"seed\": %lu,\n  \"r_units\": \"%s\",\n  \"seconds\": ", c->preset,
                (unsigned long)c->seed, c->raw_units ? "raw" : "normalised");
        json_num(f, seconds);
        fprintf(f, ",\n  \"config\": {\"bytes_per_domain\": %.0f, \"d_model\": %d, \"n_layers\": %d, \"n_heads\": %d, "
                   "\"context\": %d, \"n_experts\": %d, \"top_k\": %d, \"lm_steps\": %d, \"lm_batch\": %d, \"lm_seq\": %d, "
                   "\"layer\": %d, \"site\": \"%s\", \"xc_latents\": %d, \"xc_k\": %d, \"xc_shared\": %d, \"xc_steps\": %d, "
                   "\"xc_batch\": %d, \"eval_pairs\": %d},\n",
                c->bytes_per_domain, c->d_model, c->n_layers, c->n_heads, c->context, c->n_experts, c->top_k, c->lm_steps,
                c->lm_batch, c->lm_seq, c->layer, c->site == MOEXC_SITE_RESID ? "resid" : "ffn_out", c->xc_latents, c->xc_k,
                c->xc_shared, c->xc_steps, c->xc_batch, n_eval);
        fprintf(f, "  \"models\": {\n");
        for (m = 0; m < 2; m++) {
            fprintf(f, "    \"%s\": {\"params_total\": %lu, \"params_active\": %lu, \"train_seconds\": ", model_names[m],
                    (unsigned long)res[m].params_total, (unsigned long)res[m].params_active);
            json_num(f, res[m].seconds);
            fprintf(f, ", \"tokens_per_second\": "); json_num(f, res[m].tokens_per_second);
            fprintf(f, ",\n      \"bits_per_byte\": {");
            for (d = 0; d <= D; d++) {
                fprintf(f, "%s\"%s\": ", d ? ", " : "", d < D ? data->domain_names[d] : "all");
                json_num(f, res[m].bpb[d]);
            }
            fprintf(f, "},\n      \"unigram_bits_per_byte\": {");
            for (d = 0; d <= D; d++) {
                fprintf(f, "%s\"%s\": ", d ? ", " : "", d < D ? data->domain_names[d] : "all");
                json_num(f, res[m].unigram_bpb[d]);
            }
            fprintf(f, "}");
            if (res[m].router_layers > 0) {
                int L = res[m].router_layers, E = res[m].router_experts, e;
                fprintf(f, ",\n      \"routing\": {\"top_k\": %d, \"n_experts\": %d, \"uniform_share\": ", res[m].router_k, E);
                json_num(f, (double)res[m].router_k / E);
                fprintf(f, ", \"usage_entropy_bits\": [");
                for (l = 0; l < L; l++) { fprintf(f, "%s", l ? ", " : ""); json_num(f, res[m].entropy[l]); }
                fprintf(f, "],\n        \"domain_share\": {");
                for (d = 0; d < D; d++) {
                    fprintf(f, "%s\n          \"%s\": [", d ? "," : "", data->domain_names[d]);
                    for (l = 0; l < L; l++) {
                        fprintf(f, "%s[", l ? ", " : "");
                        for (e = 0; e < E; e++) { fprintf(f, "%s", e ? ", " : ""); json_num(f, res[m].domain_share[((size_t)l * D + d) * E + e]); }
                        fprintf(f, "]");
                    }
                    fprintf(f, "]");
                }
                fprintf(f, "}}");
            }
            fprintf(f, "}%s\n", m == 0 ? "," : "");
        }
        fprintf(f, "  },\n  \"crosscoder\": {\"scale_moe\": ");
        json_num(f, moexc_xc_scale(xc, 0));
        fprintf(f, ", \"scale_dense\": "); json_num(f, moexc_xc_scale(xc, 1));
        fprintf(f, ", \"threshold\": "); json_num(f, moexc_xc_threshold(xc));
        fprintf(f, ",\n    \"fve\": {\"moe\": "); json_num(f, ev->fve[0]);
        fprintf(f, ", \"dense\": "); json_num(f, ev->fve[1]);
        fprintf(f, ", \"pooled\": "); json_num(f, ev->fve_pooled);
        fprintf(f, "}, \"l0\": "); json_num(f, ev->l0);
        fprintf(f, ", \"dead_fraction\": "); json_num(f, ev->dead_fraction);
        fprintf(f, ", \"eval_tokens\": %d},\n", n_eval);
        fprintf(f, "  \"classes\": {");
        for (k = 0; k < MOEXC_CLASS_COUNT; k++) {
            fprintf(f, "%s\n    \"%s\": {\"count\": %lld, \"count_%s_units\": %lld, \"density_mean\": ", k ? "," : "",
                    moexc_latent_class_name(k), (long long)cs[k].count, c->raw_units ? "normalised" : "raw",
                    (long long)an_alt->classes[k].count);
            json_num(f, cs[k].density_mean);
            fprintf(f, ", \"density_median\": "); json_num(f, cs[k].density_median);
            fprintf(f, ", \"cos_mean\": "); json_num(f, cs[k].cos_mean);
            fprintf(f, ", \"cos_frac_negative\": "); json_num(f, cs[k].cos_frac_negative);
            {   /* median Latent Scaling ratio nu (error target) over the class */
                float *tmp = (float *)malloc((size_t)c->xc_latents * sizeof(float));
                int n = 0;
                if (tmp) for (i = 0; i < c->xc_latents; i++) if (an->cls[i] == k) tmp[n++] = nu_err[i];
                fprintf(f, ", \"nu_median\": ");
                json_num(f, tmp && n ? moexc_median(tmp, (size_t)n, NULL) : NAN);
                free(tmp);
            }
            fprintf(f, "}");
        }
        fprintf(f, "\n  },\n  \"random_pair_cosine\": {\"mean\": "); json_num(f, an->random_cos_mean);
        fprintf(f, ", \"median\": "); json_num(f, an->random_cos_median);
        fprintf(f, "},\n  \"findings\": {\n");
        fprintf(f, "    \"fewer_moe_only_than_dense_only\": {\"answer\": %s, \"moe_only\": %lld, \"dense_only\": %lld},\n",
                json_bool(n_moe < n_dense), (long long)n_moe, (long long)n_dense);
        fprintf(f, "    \"moe_only_denser_than_shared\": {\"answer\": %s, \"moe_only_median_density\": ",
                (moe_den == moe_den && sh_den == sh_den) ? json_bool(moe_den > sh_den) : "null");
        json_num(f, moe_den);
        fprintf(f, ", \"shared_median_density\": "); json_num(f, sh_den);
        fprintf(f, "},\n    \"dense_only_sparser_than_shared\": {\"answer\": %s, \"dense_only_median_density\": ",
                (de_den == de_den && sh_den == sh_den) ? json_bool(de_den < sh_den) : "null");
        json_num(f, de_den);
        fprintf(f, ", \"shared_median_density\": "); json_num(f, sh_den);
        fprintf(f, "}\n  },\n");
        if (in->ctl) write_controls_json(f, in->ctl);
        fprintf(f, "  \"paper\": {\"fve\": 0.87, \"moe_only\": 910, \"dense_only\": 3226, \"shared\": 18940}\n}\n");
        if (commit_tmp(f, path)) return 1;
        printf("paper's findings at this scale:\n");
        printf("  fewer MoE-only than dense-only latents?   %s (%lld vs %lld; paper: 910 vs 3,226)\n",
               n_moe < n_dense ? "yes" : "no", (long long)n_moe, (long long)n_dense);
        printf("  MoE-only denser than shared?              %s (median density %.3g vs %.3g)\n",
               moe_den > sh_den ? "yes" : moe_den == moe_den ? "no" : "n/a (empty class)", moe_den, sh_den);
        printf("  dense-only sparser than shared?           %s (median density %.3g vs %.3g)\n",
               de_den < sh_den ? "yes" : de_den == de_den ? "no" : "n/a (empty class)", de_den, sh_den);
        printf("  FVE MoE %.3f, dense %.3f, pooled %.3f (paper: about 0.87)\n\n", ev->fve[0], ev->fve[1], ev->fve_pooled);
    }

    return 0;
}

/* the PNGs, on one reusable canvas */
static int draw_plots(const report_inputs *in, const png_sink *sink, moexc_canvas *cv)
{
    const demo_config *c = in->c;
    const moexc_tokens *data = in->data;
    const lm_record *rec = in->rec;
    const lm_result *res = in->res;
    int D = data->n_domains, m, d;
    const moexc_latent_analysis *an = in->an;
    const float *xc_curve = in->xc_curve, *xc_eval_curve = in->xc_eval_curve;
    int n_xc_evals = in->n_xc_evals, n_eval = in->n_eval;
    moexc_error err;
    if (plot_r_histogram(sink, an, cv)) return 1;
    {
        moexc_plot_options po;
        memset(&po, 0, sizeof(po));
        po.title = "Decoder cosine cos(d_MoE, d_dense) per class vs random latent pairs";
        po.x_label = "cosine of the latent's two decoder rows (designated shared: 1, not shown)";
        po.y_label = "fraction of class";
        po.normalize = 1;
        if (plot_per_class(sink, "cosine_hist.png", an, an->cosine, 40, -1.0, 1.0, 0, an->random_cosine,
                           an->n_random_pairs, "random pairs", MOEXC_CLASS_DESIGNATED, &po, cv)) return 1;
        memset(&po, 0, sizeof(po));
        po.title = "Activation density per class (held-out tokens)";
        po.x_label = "fraction of held-out tokens on which the latent fires (log10)";
        po.y_label = "fraction of class";
        po.normalize = 1;
        if (plot_per_class(sink, "density_hist.png", an, an->density, 40, 1.0 / n_eval, 1.0, 1, NULL, 0, NULL,
                           -1, &po, cv)) return 1;
    }
    {   /* LM training curves (left) and held-out bits per byte (right) */
        moexc_series s[8];
        moexc_plot_options po;
        float *sm = (float *)malloc((size_t)c->lm_steps * 2 * sizeof(float));
        float *ev_x[2], *ev_y[2][MOEXC_MAX_DOMAINS + 1];
        int n = 0, k;
        char labels[8][64];
        if (!sm) return 1;
        for (m = 0; m < 2; m++) {
            smooth(sm + (size_t)m * c->lm_steps, rec[m].ce, c->lm_steps);
            s[m].x = rec[m].step; s[m].y = sm + (size_t)m * c->lm_steps; s[m].n = c->lm_steps;
            s[m].label = m == 0 ? "dense" : "MoE";
        }
        moexc_canvas_clear(cv, 0xFFFFFFu);
        memset(&po, 0, sizeof(po));
        po.x = 0; po.y = 0; po.width = 500; po.height = 640;
        po.title = "Training loss";
        po.x_label = "optimiser step"; po.y_label = "cross-entropy, nats/byte";
        if (moexc_plot_lines(cv, s, 2, &po, &err)) { free(sm); return failed("plot", &err); }
        /* held-out bpb per domain: one series per (model, domain) */
        for (m = 0; m < 2; m++) {
            ev_x[m] = rec[m].eval_step;
            for (d = 0; d <= D; d++) {
                ev_y[m][d] = (float *)malloc((size_t)(rec[m].n_evals + 1) * sizeof(float));
                if (!ev_y[m][d]) { free(sm); return 1; }
                for (k = 0; k < rec[m].n_evals; k++) ev_y[m][d][k] = rec[m].eval_bpb[(size_t)k * (D + 1) + d];
            }
        }
        for (m = 0; m < 2; m++)
            for (d = 0; d < D && n < 8; d++) {
                snprintf(labels[n], sizeof(labels[n]), "%s %s", m == 0 ? "dense" : "MoE", data->domain_names[d]);
                s[n].x = ev_x[m]; s[n].y = ev_y[m][d]; s[n].n = rec[m].n_evals; s[n].label = labels[n];
                n++;
            }
        memset(&po, 0, sizeof(po));
        po.x = 500; po.y = 0; po.width = 500; po.height = 640;
        po.title = "Held-out bits per byte";
        po.x_label = "optimiser step"; po.y_label = "bits/byte";
        k = moexc_plot_lines(cv, s, n, &po, &err) != MOEXC_OK;
        for (m = 0; m < 2; m++) for (d = 0; d <= D; d++) free(ev_y[m][d]);
        free(sm);
        if (k) { return failed("plot", &err); }
        if (save_png(sink, "lm_curves.png", cv)) return 1;
    }
    {   /* crosscoder training: loss, L0 and dead fraction; FVE over training */
        moexc_series s[4];
        moexc_plot_options po;
        int n = c->xc_steps, k;
        float *buf = (float *)malloc((size_t)n * 5 * sizeof(float)), *x, *y0, *y1, *y2, *y3;
        float ex[64], ey[3][64];
        if (!buf) return 1;
        x = buf; y0 = buf + n; y1 = buf + 2 * (size_t)n; y2 = buf + 3 * (size_t)n; y3 = buf + 4 * (size_t)n;
        for (k = 0; k < n; k++) { x[k] = (float)(k + 1); y3[k] = xc_curve[(size_t)k * 6 + 0]; }
        smooth(y0, y3, n);
        moexc_canvas_clear(cv, 0xFFFFFFu);
        memset(&po, 0, sizeof(po));
        po.x = 0; po.y = 0; po.width = 500; po.height = 640;
        po.title = "Crosscoder training loss"; po.x_label = "step"; po.y_label = "loss, normalised units"; po.log_y = 1;
        po.no_legend = 1;
        s[0].x = x; s[0].y = y0; s[0].n = n; s[0].label = "loss";
        if (moexc_plot_lines(cv, s, 1, &po, &err)) { free(buf); return failed("plot", &err); }
        for (k = 0; k < n; k++) { y3[k] = xc_curve[(size_t)k * 6 + 4]; }
        for (k = 0; k < n; k++) y1[k] = xc_curve[(size_t)k * 6 + 3] / (float)c->xc_k;
        smooth(y2, y1, n);
        memset(&po, 0, sizeof(po));
        po.x = 500; po.y = 0; po.width = 500; po.height = 640;
        po.title = "Sparsity during training"; po.x_label = "step"; po.y_label = "fraction";
        po.y_min = 0; po.y_max = 1.5;
        s[0].x = x; s[0].y = y2; s[0].n = n; s[0].label = "L0 / k (batch)";
        s[1].x = x; s[1].y = y3; s[1].n = n; s[1].label = "dead fraction";
        if (moexc_plot_lines(cv, s, 2, &po, &err)) { free(buf); return failed("plot", &err); }
        if (save_png(sink, "xc_curves.png", cv)) { free(buf); return 1; }
        /* FVE: per-batch training FVE (smoothed) and held-out FVE at intervals */
        for (m = 0; m < 2; m++) {
            for (k = 0; k < n; k++) y3[k] = xc_curve[(size_t)k * 6 + 1 + m];
            smooth(m == 0 ? y1 : y2, y3, n);
        }
        for (k = 0; k < n_xc_evals && k < 64; k++) {
            ex[k] = xc_eval_curve[(size_t)k * 6];
            for (m = 0; m < 3; m++) ey[m][k] = xc_eval_curve[(size_t)k * 6 + 1 + m];
        }
        moexc_canvas_clear(cv, 0xFFFFFFu);
        memset(&po, 0, sizeof(po));
        po.title = "Crosscoder fraction of variance explained during training";
        po.x_label = "step"; po.y_label = "FVE";
        po.y_min = 0.5; po.y_max = 1;              /* the first steps start far below */
        s[0].x = ex; s[0].y = ey[0]; s[0].n = n_xc_evals < 64 ? n_xc_evals : 64; s[0].label = "MoE, held-out";
        s[1].x = ex; s[1].y = ey[1]; s[1].n = s[0].n; s[1].label = "dense, held-out";
        s[2].x = x; s[2].y = y1; s[2].n = n; s[2].label = "MoE, training batches";
        s[3].x = x; s[3].y = y2; s[3].n = n; s[3].label = "dense, training batches";
        if (moexc_plot_lines(cv, s, 4, &po, &err)) { free(buf); return failed("plot", &err); }
        free(buf);
        if (save_png(sink, "fve_curve.png", cv)) return 1;
    }
    if (res[1].router_layers > 0 && plot_routing(sink, &res[1], data, &err)) return 1;
    if (in->ctl && plot_controls(sink, in->ctl, cv)) return 1;

    return 0;
}

static int write_plots(const report_inputs *in, const png_sink *sink)
{
    moexc_canvas cv;
    moexc_error err;
    int bad;
    if (moexc_canvas_init(&cv, 1000, 640, &err)) return failed("canvas", &err);
    bad = draw_plots(in, sink, &cv);
    moexc_canvas_free(&cv);
    return bad;
}

/* Fail fast: every file the study saves in the report folder can be written
   (moexc_check_writable: a temporary file made and removed next to it). */
static int check_outputs(const char *dir)
{
    static const char *const names[] = { "corpus.tok", "dense.ckpt", "moe.ckpt", "crosscoder.safetensors",
                                         "summary.json", "table.csv", "index.html" };
    char path[4096];
    moexc_error err;
    size_t i;
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        join(path, sizeof(path), dir, names[i]);
        if (moexc_check_writable(path, &err) != MOEXC_OK) {
            fprintf(stderr, "moexc_demo: --out %s: %s\n", dir, err.message);
            return 1;
        }
    }
    return 0;
}

/* --data FILE.tok: a token file from moexc_mkdata. Each domain must hold
   enough tokens for training windows and for at least one held-out window
   (the last 5% of each domain). */
static int load_corpus(moexc_tokens *data, const demo_config *c)
{
    moexc_error err;
    int d, T = c->context < 128 ? c->context : 128;
    if (moexc_tokens_load(data, c->data_path, &err)) {
        fprintf(stderr, "moexc_demo: --data: %s (%s)\n", err.message, moexc_status_name(err.code));
        return 1;
    }
    if (data->n_domains < 1 || data->n == 0) {
        fprintf(stderr, "moexc_demo: --data %s: no tokens\n", c->data_path);
        return 1;
    }
    for (d = 0; d < data->n_domains; d++) {
        size_t count = moexc_tokens_domain_count(data, d);
        size_t held = (size_t)floor((double)count * DEMO_EVAL_FRACTION);
        if (held < (size_t)T || count - held < (size_t)c->lm_seq + 1) {
            fprintf(stderr, "moexc_demo: --data %s: domain '%s' has %lu tokens; it needs at least %lu "
                            "(5%% held out must fill one window of %d tokens)\n", c->data_path, data->domain_names[d],
                    (unsigned long)count, (unsigned long)((size_t)T * 20 + 20), T);
            return 1;
        }
    }
    for (d = 0; d < data->n_domains; d++)
        printf("  %s: %lu tokens\n", data->domain_names[d], (unsigned long)moexc_tokens_domain_count(data, d));
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Step 7: the MoE Lens (SPEC §6; tools/moexc_lens is the same analysis on    */
/* any checkpoint): routing, concentration, single-expert early decoding and  */
/* perplexity with k' = 1..k experts, on each domain's held-out tail.         */

static int run_lens(const demo_config *c, moexc_model *moe, const moexc_tokens *data, FILE *out, png_queue *queue)
{
    moexc_lens lens;
    moexc_lens_options lo;
    moexc_error err;
    char path[4096];
    double t0 = now_seconds(), mean_m50 = 0, best_cos = -1;
    int l, d, best_l = 0, bad = 0, L, D, DD;
    png_sink sink;
    sink.dir = c->out; sink.out = out; sink.queue = queue;
    memset(&lo, 0, sizeof(lo));
    lo.seq_len = c->lm_seq;
    lo.batch_size = c->lm_batch;
    lo.max_seqs = 64;
    lo.eval_fraction = DEMO_EVAL_FRACTION;       /* the tail the LMs never trained on */
    fprintf(out, "\n7. MoE Lens (SPEC §6) on the MoE, %d held-out sequences of %d tokens per domain\n\n", lo.max_seqs, lo.seq_len);
    if (moexc_lens_init(&lens, moe, data->n_domains, &lo, &err)) return failed("lens", &err);
    if (moexc_lens_run(&lens, moe, data, &err)) { moexc_lens_free(&lens); return failed("lens", &err); }
    moexc_lens_print(out, &lens);
    L = lens.n_layers; D = lens.n_domains; DD = D + 1;
    for (l = 0; l < L; l++) {
        for (d = 0; d < D; d++) mean_m50 += lens.concentration[l * DD + d] / (double)(L * D);
        if (lens.cosine[l * DD + D] > best_cos) { best_cos = lens.cosine[l * DD + D]; best_l = l; }
    }
    fprintf(out, "\nMoE Lens against the paper (DeepSeekMoE, 64 experts, top-6) at this scale (E = %d, k = %d):\n",
                 lens.n_experts, lens.top_k);
    fprintf(out, "  few experts take >= 50%% of routing slots? mean m50 %.2f of %d experts (uniform %d)\n",
                 mean_m50, lens.n_experts, (lens.n_experts + 1) / 2);
    fprintf(out, "  single-expert hidden-state cosine:         up to %.3f (layer %d; paper: up to 0.95)\n", best_cos, best_l);
    fprintf(out, "  perplexity with one expert (k' = 1):       ");
    for (d = 0; d < DD; d++)
        fprintf(out, "%s%s %+.2f%%", d ? ", " : "", lens.domain_names[d], 100.0 * (lens.ppl[DD + d] / lens.ppl[d] - 1.0));
    fprintf(out, " (paper: about +5%%)\n");
    join(path, sizeof(path), c->out, "lens.csv");
    if (moexc_lens_write_csv(&lens, path, &err)) bad = failed("lens.csv", &err);
    join(path, sizeof(path), c->out, "lens.json");
    if (!bad && moexc_lens_write_json(&lens, "moexc_demo MoE", path, &err)) bad = failed("lens.json", &err);
    if (!bad && moexc_lens_write_plots(&lens, NULL, "lens_", sink_png, &sink, NULL, &err))
        bad = failed("lens plots", &err);
    if (!bad) fprintf(out, "  MoE Lens in %.1f s\n", now_seconds() - t0);
    moexc_lens_free(&lens);
    return bad;
}

/* ------------------------------------------------------------------------- */
/* Step 8: what a latent is (SPEC §5.2), the study as a web page. One pass    */
/* over held-out windows (moexc_latent_study_run): top contexts, domain and   */
/* expert attribution, spliced loss; then report/index.html and               */
/* expert_purity.png through tools/report_page.h, the writer that             */
/* tools/moexc_report shares.                                                 */

#include "../tools/report_page.h"

/* The study (st, freed by the caller with moexc_latent_study_free when this
   returns 0) and its lines on `out`. */
static int run_latent_study(const demo_config *c, moexc_model *moe, moexc_model *dense, moexc_xc *xc,
                            const moexc_tokens *data, const moexc_latent_analysis *an, const float *eval_a,
                            const float *eval_b, int n_eval, moexc_latent_study *st_out, FILE *out)
{
    moexc_latent_study st;
    moexc_latent_study_options so;
    moexc_error err;
    double t0 = now_seconds(), *sum = NULL;
    float *mean = NULL;
    int d = moexc_xc_dim(xc, 0), m, i, j, D = data->n_domains;
    /* the site's mean over the held-out pairs (mean ablation) */
    sum = (double *)calloc((size_t)2 * d, sizeof(double));
    mean = (float *)calloc((size_t)2 * d, sizeof(float));
    if (!sum || !mean) { free(sum); free(mean); fprintf(stderr, "moexc_demo: out of memory\n"); return 1; }
    for (i = 0; i < n_eval; i++)
        for (j = 0; j < d; j++) { sum[j] += eval_a[(size_t)i * d + j]; sum[d + j] += eval_b[(size_t)i * d + j]; }
    for (j = 0; j < 2 * d; j++) mean[j] = (float)(sum[j] / (n_eval > 0 ? n_eval : 1));
    free(sum);
    memset(&so, 0, sizeof(so));
    so.layer = c->layer == 0 ? MOEXC_HARVEST_LAYER0 : c->layer;
    so.site = c->site;
    so.seq_len = c->context < 128 ? c->context : 128;
    so.max_seqs = !strcmp(c->preset, "tiny") ? 24 : 96;
    so.eval_fraction = DEMO_EVAL_FRACTION;
    so.mean_a = mean; so.mean_b = mean + d;
    so.seed = c->seed + 11;
    if (moexc_latent_study_run(&st, moe, dense, xc, data, &so, &err)) { free(mean); return failed("latent study", &err); }
    free(mean);
    fprintf(out, "\n8. what a latent is (SPEC §5.2): %ld held-out tokens in %ld windows (%.1f s)\n",
                 (long)st.n_tokens, (long)st.n_seqs, now_seconds() - t0);
    fprintf(out, "  spliced loss, fraction of loss recovered vs zero / mean ablation (CE clean -> spliced, nats):\n");
    for (m = 0; m < 2; m++)
        for (i = 0; i <= D; i++)
            fprintf(out, "    %-5s %-8s %.3f / %.3f   (%.4f -> %.4f; zero %.4f, mean %.4f)\n", m ? "dense" : "MoE",
                         i < D ? data->domain_names[i] : "all", moexc_splice_acc_recovered(&st.splice, m, MOEXC_SPLICE_ZERO, i),
                         moexc_splice_acc_recovered(&st.splice, m, MOEXC_SPLICE_MEAN, i),
                         moexc_splice_acc_ce(&st.splice, m, MOEXC_SPLICE_CLEAN, i), moexc_splice_acc_ce(&st.splice, m, MOEXC_SPLICE_XC, i),
                         moexc_splice_acc_ce(&st.splice, m, MOEXC_SPLICE_ZERO, i), moexc_splice_acc_ce(&st.splice, m, MOEXC_SPLICE_MEAN, i));
    {
        moexc_label_class_stats dc[MOEXC_CLASS_COUNT], ec[MOEXC_CLASS_COUNT];
        int cl;
        moexc_label_acc_by_class(&st.domain, an->cls, 1, dc);
        if (st.n_experts) moexc_label_acc_by_class(&st.expert_top1, an->cls, 1, ec);
        fprintf(out, "  mean purity per class (shuffled baseline): domain%s\n", st.n_experts ? "; top-1 expert; top-1 expert entropy, bits" : "");
        for (cl = 0; cl < MOEXC_CLASS_DEAD; cl++) {
            fprintf(out, "    %-10s n %4ld  %.3f (%.3f)", moexc_latent_class_name(cl), (long)dc[cl].n, dc[cl].purity, dc[cl].purity_shuffled);
            if (st.n_experts) fprintf(out, "; %.3f (%.3f); %.2f (%.2f)", ec[cl].purity, ec[cl].purity_shuffled, ec[cl].entropy, ec[cl].entropy_shuffled);
            fprintf(out, "\n");
        }
    }
    *st_out = st;
    return 0;
}

/* The page's figure, expert_purity.png, into the sink. */
static int save_purity_figure(const moexc_latent_study *st, const moexc_latent_analysis *an, const png_sink *sink)
{
    report_page pg;
    moexc_canvas cv;
    moexc_error err;
    int bad;
    memset(&pg, 0, sizeof(pg));
    memset(&cv, 0, sizeof(cv));
    pg.an = an; pg.st = st;
    if (page_purity_plot(&pg, &cv, &err)) return failed("expert purity plot", &err);
    bad = save_png(sink, "expert_purity.png", &cv);
    moexc_canvas_free(&cv);
    return bad;
}

/* The page, index.html (its figure is saved before, save_purity_figure): it
   lists the PNGs in the folder, so it comes after every other figure is
   written. */
static int write_latent_page(const demo_config *c, const moexc_latent_study *st, const moexc_tokens *data,
                             const moexc_latent_analysis *an, int n_eval, const moexc_xc_eval *ev, const float *beta_a,
                             const float *beta_b, const float *nu)
{
    report_page pg;
    char title[160], v[8][96], msg[600];
    const char *keys[8], *vals[8];
    int i, bad = 0;
    snprintf(title, sizeof(title), "moexc study: MoE vs dense through a crosscoder (preset %s)", c->preset);
    keys[0] = "preset, seed";                snprintf(v[0], sizeof(v[0]), "%s, %lu", c->preset, (unsigned long)c->seed);
    keys[1] = "models";                      snprintf(v[1], sizeof(v[1]), "d %d, %d layers, MoE E %d k %d", c->d_model, c->n_layers, c->n_experts, c->top_k);
    keys[2] = "crosscoder";                  snprintf(v[2], sizeof(v[2]), "F %d (%d designated shared), BatchTopK k %d, %d steps",
                                                      c->xc_latents, c->xc_shared, c->xc_k, c->xc_steps);
    keys[3] = "held-out FVE (MoE, dense, pooled)"; snprintf(v[3], sizeof(v[3]), "%.3f, %.3f, %.3f", ev->fve[0], ev->fve[1], ev->fve_pooled);
    keys[4] = "L0, dead fraction";           snprintf(v[4], sizeof(v[4]), "%.1f, %.3f", ev->l0, ev->dead_fraction);
    keys[5] = "class counts (MoE-only, shared, dense-only)";
    snprintf(v[5], sizeof(v[5]), "%ld, %ld, %ld", (long)an->classes[MOEXC_CLASS_MOE_ONLY].count,
             (long)an->classes[MOEXC_CLASS_SHARED].count, (long)an->classes[MOEXC_CLASS_DENSE_ONLY].count);
    keys[6] = "evaluation pairs (classes, densities)"; snprintf(v[6], sizeof(v[6]), "%d", n_eval);
    for (i = 0; i < 7; i++) vals[i] = v[i];
    memset(&pg, 0, sizeof(pg));
    pg.dir = c->out; pg.title = title; pg.summary_keys = keys; pg.summary_values = vals; pg.n_summary = 7;
    pg.an = an; pg.st = st; pg.data = data; pg.beta_a = beta_a; pg.beta_b = beta_b; pg.nu = nu;
    if (report_page_write(&pg, NULL, NULL, msg, sizeof(msg))) { fprintf(stderr, "moexc_demo: %s\n", msg); bad = 1; }
    else printf("  wrote %s/index.html\n", c->out);
    return bad;
}

#ifdef _OPENMP   /* used only when steps 7 and 8 run side by side */
/* Copy a buffer of report lines to stdout. */
static void flush_lines(FILE *buf)
{
    char chunk[4096];
    size_t n;
    rewind(buf);
    while ((n = fread(chunk, 1, sizeof(chunk), buf)) > 0) fwrite(chunk, 1, n, stdout);
}
#endif

/* The end of step 6 (tables and figures) and steps 7 and 8. With 2 or more
   threads the first part runs side by side, one thread each (at the demo's
   widths each is mostly serial work: small forward passes and PNG
   compression):
     - the MoE Lens, on a copy of the MoE (the lens runs the model and sets
       its active experts, the latent study runs it too);
     - step 6's files and figures, then the latent study on the originals;
   the lines of steps 7 and 8 go to two buffers, printed in step order, and
   every figure (the study's page figure too) to a queue; each side, once
   done, encodes queued figures until none is left. Then the study's page,
   which lists the figures in the folder. Each step computes exactly
   what it computes alone on one thread. With 1 thread, or when a copy or a
   buffer cannot be made, all runs one step after another. */
static int run_tail(const report_inputs *in, moexc_model *moe, moexc_model *dense, moexc_xc *xc,
                    const float *eval_a, const float *eval_b, const float *beta_a, const float *beta_b,
                    const float *nu, int threads)
{
    const demo_config *c = in->c;
    const moexc_tokens *data = in->data;
    moexc_latent_study st;
    png_sink report_sink;
    int bad[3] = {0, 0, 0};
#ifdef _OPENMP
    moexc_model *lens_moe = NULL;
    moexc_error err;
    FILE *buf[2] = {NULL, NULL};
    png_queue queue;
    int drain_bad[2] = {0, 0};
    memset(&queue, 0, sizeof(queue));
    report_sink.dir = c->out; report_sink.out = stdout; report_sink.queue = &queue;
    if (threads >= 2 && moexc_model_create(&lens_moe, moexc_model_get_config(moe), &err) == MOEXC_OK
        && (buf[0] = tmpfile()) != NULL && (buf[1] = tmpfile()) != NULL) {
        memcpy(moexc_model_params(lens_moe), moexc_model_params(moe), moexc_model_num_params(moe) * sizeof(float));
        fflush(stdout);
#       pragma omp parallel sections num_threads(2)
        {
#           pragma omp section
            {
                omp_set_num_threads(1);
                bad[0] = run_lens(c, lens_moe, data, buf[0], &queue);
                drain_bad[0] = png_queue_drain(&queue);
            }
#           pragma omp section
            {
                omp_set_num_threads(1);
                bad[1] = write_csvs(in) || write_summary(in) || write_plots(in, &report_sink);
                if (!bad[1])
                    bad[1] = run_latent_study(c, moe, dense, xc, data, in->an, eval_a, eval_b, in->n_eval, &st, buf[1]);
                if (!bad[1]) {
                    report_sink.out = buf[1];                 /* its line goes with step 8's */
                    if (save_purity_figure(&st, in->an, &report_sink)) { bad[1] = 1; moexc_latent_study_free(&st); }
                }
                drain_bad[1] = png_queue_drain(&queue);
            }
        }
        fflush(stdout);
        if (!bad[1]) { flush_lines(buf[0]); flush_lines(buf[1]); }
        bad[2] = drain_bad[0] || drain_bad[1];
        png_queue_free(&queue);
        fclose(buf[0]);
        fclose(buf[1]);
        moexc_model_free(lens_moe);
        if (!bad[1]) {
            if (!bad[0] && !bad[2])
                bad[2] = write_latent_page(c, &st, data, in->an, in->n_eval, in->eval, beta_a, beta_b, nu);
            moexc_latent_study_free(&st);
        }
        return bad[0] || bad[1] || bad[2];
    }
    if (buf[0]) fclose(buf[0]);
    moexc_model_free(lens_moe);
#endif
    (void)threads;
    report_sink.dir = c->out; report_sink.out = stdout; report_sink.queue = NULL;
    if (write_csvs(in) || write_summary(in) || write_plots(in, &report_sink)) return 1;
    if (run_lens(c, moe, data, stdout, NULL)) return 1;
    if (run_latent_study(c, moe, dense, xc, data, in->an, eval_a, eval_b, in->n_eval, &st, stdout)) return 1;
    bad[0] = save_purity_figure(&st, in->an, &report_sink) ||
             write_latent_page(c, &st, data, in->an, in->n_eval, in->eval, beta_a, beta_b, nu);
    moexc_latent_study_free(&st);
    return bad[0];
}

/* ------------------------------------------------------------------------- */
/* Option parsing.                                                           */

static int parse_int(const char *opt, const char *s, int lo, int *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || v != floor(v) || v < lo || v > 2e9) {
        fprintf(stderr, "moexc_demo: %s: '%s' is not an integer >= %d\n", opt, s, lo);
        return 1;
    }
    *out = (int)v;
    return 0;
}
static int parse_num(const char *opt, const char *s, double lo, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= lo)) {
        fprintf(stderr, "moexc_demo: %s: '%s' is not a number >= %g\n", opt, s, lo);
        return 1;
    }
    *out = v;
    return 0;
}

static int parse_args(demo_config *c, int argc, char **argv)
{
    int i, bad = 0;
    double x;
    const char *name = "default";
    for (i = 1; i < argc; i++) {                      /* the preset first, then overrides */
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { fputs(usage, stdout); exit(0); }
        if (!strcmp(argv[i], "--preset") && i + 1 < argc) name = argv[i + 1];
    }
    if (strcmp(name, "tiny") && strcmp(name, "default") && strcmp(name, "paper") && strcmp(name, "study")) {
        fprintf(stderr, "moexc_demo: --preset must be tiny, default, study or paper, not '%s'\n", name);
        return 1;
    }
    memset(c, 0, sizeof(*c));
    preset(c, name);
    c->out = "report";
    c->seed = 1;
    for (i = 1; i < argc && !bad; i++) {
        const char *a = argv[i], *v;
        if (a[0] != '-' || a[1] != '-') { fprintf(stderr, "moexc_demo: unexpected argument '%s' (see --help)\n", a); return 1; }
        if (!strcmp(a, "--controls")) { c->controls = 1; continue; }       /* the one option without a value */
        if (i + 1 >= argc) { fprintf(stderr, "moexc_demo: %s needs a value (see --help)\n", a); return 1; }
        v = argv[++i];
        if (!strcmp(a, "--preset")) continue;
        else if (!strcmp(a, "--out")) c->out = v;
        else if (!strcmp(a, "--threads")) { bad = parse_int(a, v, 1, &c->threads); c->threads_given = 1; }
        else if (!strcmp(a, "--seed")) { bad = parse_num(a, v, 0, &x); c->seed = (uint64_t)x; }
        else if (!strcmp(a, "--layer")) bad = parse_int(a, v, 0, &c->layer);
        else if (!strcmp(a, "--site")) {
            if (!strcmp(v, "ffn")) c->site = MOEXC_SITE_FFN_OUT;
            else if (!strcmp(v, "resid")) c->site = MOEXC_SITE_RESID;
            else { fprintf(stderr, "moexc_demo: --site must be ffn or resid, not '%s'\n", v); return 1; }
        }
        else if (!strcmp(a, "--r-units")) {
            if (!strcmp(v, "normalised") || !strcmp(v, "normalized")) c->raw_units = 0;
            else if (!strcmp(v, "raw")) c->raw_units = 1;
            else { fprintf(stderr, "moexc_demo: --r-units must be normalised or raw, not '%s'\n", v); return 1; }
        }
        else if (!strcmp(a, "--bytes")) { bad = parse_num(a, v, 1000, &c->bytes_per_domain); }
        else if (!strcmp(a, "--d-model")) bad = parse_int(a, v, 2, &c->d_model);
        else if (!strcmp(a, "--layers")) bad = parse_int(a, v, 1, &c->n_layers);
        else if (!strcmp(a, "--heads")) bad = parse_int(a, v, 1, &c->n_heads);
        else if (!strcmp(a, "--context")) bad = parse_int(a, v, 2, &c->context);
        else if (!strcmp(a, "--experts")) bad = parse_int(a, v, 1, &c->n_experts);
        else if (!strcmp(a, "--top-k")) bad = parse_int(a, v, 1, &c->top_k);
        else if (!strcmp(a, "--lm-steps")) bad = parse_int(a, v, 1, &c->lm_steps);
        else if (!strcmp(a, "--lm-batch")) bad = parse_int(a, v, 1, &c->lm_batch);
        else if (!strcmp(a, "--lm-seq")) bad = parse_int(a, v, 2, &c->lm_seq);
        else if (!strcmp(a, "--lm-lr")) { bad = parse_num(a, v, 0, &x); c->lm_lr = (float)x; }
        else if (!strcmp(a, "--xc-latents")) bad = parse_int(a, v, 2, &c->xc_latents);
        else if (!strcmp(a, "--xc-k")) bad = parse_int(a, v, 1, &c->xc_k);
        else if (!strcmp(a, "--xc-shared")) bad = parse_int(a, v, 0, &c->xc_shared);
        else if (!strcmp(a, "--xc-steps")) bad = parse_int(a, v, 1, &c->xc_steps);
        else if (!strcmp(a, "--xc-batch")) bad = parse_int(a, v, 1, &c->xc_batch);
        else if (!strcmp(a, "--xc-lr")) { bad = parse_num(a, v, 0, &x); c->xc_lr = (float)x; }
        else if (!strcmp(a, "--xc-buffer")) bad = parse_int(a, v, 1, &c->xc_buffer);
        else if (!strcmp(a, "--eval-pairs")) bad = parse_int(a, v, 1, &c->eval_pairs);
        else if (!strcmp(a, "--data")) c->data_path = v;
        else if (!strcmp(a, "--seeds")) { bad = parse_int(a, v, 1, &c->n_seeds); if (!bad) c->controls = 1; }
        else { fprintf(stderr, "moexc_demo: unknown option '%s' (see --help)\n", a); return 1; }
    }
    if (bad) return 1;
    if (c->layer >= c->n_layers) {
        fprintf(stderr, "moexc_demo: --layer %d: the models have %d blocks (0..%d)\n", c->layer, c->n_layers, c->n_layers - 1);
        return 1;
    }
    if (c->xc_shared >= c->xc_latents) {
        fprintf(stderr, "moexc_demo: --xc-shared %d must be below --xc-latents %d\n", c->xc_shared, c->xc_latents);
        return 1;
    }
    if (c->lm_seq > c->context) {
        fprintf(stderr, "moexc_demo: --lm-seq %d exceeds --context %d\n", c->lm_seq, c->context);
        return 1;
    }
    if (c->xc_buffer < c->xc_batch) c->xc_buffer = c->xc_batch;
    if (c->controls && c->n_seeds == 0) c->n_seeds = 3;
    if (c->n_seeds > CTRL_MAX_SEEDS) {
        fprintf(stderr, "moexc_demo: --seeds %d: at most %d crosscoder seeds per pair\n", c->n_seeds, CTRL_MAX_SEEDS);
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    demo_config c;
    moexc_error err;
    moexc_tokens data, xc_train_tokens, xc_eval_tokens;
    moexc_model_config base, dense_cfg, moe_cfg;
    moexc_model *dense = NULL, *moe = NULL, *twin[2] = {NULL, NULL};   /* twins: --controls */
    controls ctl;
    lm_record rec[2];
    lm_result res[2];
    moexc_harvester *harvest = NULL, *harvest_eval = NULL;
    moexc_harvest_options ho;
    moexc_shuffle_buffer shuffle;
    moexc_xc *xc = NULL;
    moexc_xc_options xo;
    moexc_xc_eval final_eval;
    moexc_latent_analysis an, an_alt;
    moexc_eval_summary summary;
    batch_feed feed;
    float *eval_a = NULL, *eval_b = NULL, *dec_a = NULL, *dec_b = NULL, *dec_norm_a = NULL, *dec_norm_b = NULL;
    float *beta[2][2] = {{NULL, NULL}, {NULL, NULL}}, *nu[2] = {NULL, NULL};
    float *xc_curve = NULL;           /* per step: loss, fve_a, fve_b, l0, dead, lr           */
    float *xc_eval_curve = NULL;      /* per evaluation: step, fve_a, fve_b, fve_pooled, l0, dead */
    int64_t *counts = NULL;
    char path[4096], ckpt[2][4096];
    double t_start = now_seconds(), t_phase;
    int m, i, D, d_model, rows, n_xc_evals = 0, status = 1, n_eval;
    int threads = 1, lm_concurrent, lm_stop = 0;
    const int EVAL_SUBSET = 8192;     /* held-out pairs for the FVE-over-training curve */

    memset(&data, 0, sizeof(data)); memset(&xc_train_tokens, 0, sizeof(xc_train_tokens));
    memset(&xc_eval_tokens, 0, sizeof(xc_eval_tokens)); memset(rec, 0, sizeof(rec)); memset(res, 0, sizeof(res));
    memset(&shuffle, 0, sizeof(shuffle)); memset(&feed, 0, sizeof(feed)); memset(&an, 0, sizeof(an)); memset(&an_alt, 0, sizeof(an_alt));
    memset(&ctl, 0, sizeof(ctl));
    if (parse_args(&c, argc, argv)) return 2;
#ifdef _OPENMP
    if (!c.threads_given && c.threads > omp_get_num_procs()) c.threads = omp_get_num_procs();
    if (c.threads > 0) omp_set_num_threads(c.threads);
    threads = omp_get_max_threads();
#endif
    lm_concurrent = threads == 2 || threads == 3;
    if (make_dir(c.out) != 0 && errno != EEXIST) {
        fprintf(stderr, "moexc_demo: cannot create %s: %s\n", c.out, strerror(errno));
        return 1;
    }
    if (check_outputs(c.out)) return 1;                  /* fail before the long work */
    printf("moexc demo, preset '%s', seed %lu, report in %s/ (SIMD %s, %d thread%s)\n", c.preset, (unsigned long)c.seed,
           c.out, moexc_simd_backend(), threads, threads > 1 ? "s" : "");

    /* ---- 1. The corpus: code, scientific text and stories -------------------- */
    t_phase = now_seconds();
    if (c.data_path) printf("\n1. corpus: %s\n", c.data_path);
    else printf("\n1. corpus: %.0f bytes per domain\n", c.bytes_per_domain);
    if (c.data_path) {
        if (load_corpus(&data, &c)) return 1;
    } else if (moexc_corpus_builtin(&data, (size_t)c.bytes_per_domain, c.seed, &err)) return failed("corpus", &err);
    D = data.n_domains;
    join(path, sizeof(path), c.out, "corpus.tok");
    if (moexc_tokens_save(&data, path, &err)) { status = failed("corpus", &err); goto done; }
    printf("  %lu tokens in %d domains (%.1f s), saved %s\n", (unsigned long)data.n, D, now_seconds() - t_phase, path);

    /* ---- 2. Two language models with equal active parameters ----------------- */
    /* One base config; moexc_model_config_pair derives the dense model
       (h_ff = 4d) and the MoE (E experts of h_e = h_ff / k), so k h_e = h_ff. */
    memset(&base, 0, sizeof(base));
    base.d_model = c.d_model; base.n_layers = c.n_layers; base.n_heads = c.n_heads; base.context = c.context;
    base.n_experts = c.n_experts; base.top_k = c.top_k; base.seed = c.seed;
    base.vocab_size = data.vocab_size;
    if (moexc_model_config_pair(&base, &dense_cfg, &moe_cfg, &err)) { status = failed("model config", &err); goto done; }
    for (m = 0; m < 2; m++) {
        moexc_model_config *cfg = m == 0 ? &dense_cfg : &moe_cfg;
        if (moexc_model_count_params(cfg, &res[m].params_total, &res[m].params_active, &err)) { status = failed("model config", &err); goto done; }
    }
    printf("\n2. language models: d=%d, %d layers, %d heads, context %d; %d steps of %d x %d tokens; %s\n",
           c.d_model, c.n_layers, c.n_heads, c.context, c.lm_steps, c.lm_batch, c.lm_seq,
           lm_concurrent ? "both at once, one thread each" : "one after the other");
    printf("  dense: h_ff=%d, %lu parameters (%lu active)\n", dense_cfg.d_ff,
           (unsigned long)res[0].params_total, (unsigned long)res[0].params_active);
    printf("  MoE:   E=%d, k=%d, h_e=%d, %lu parameters (%lu active)\n", moe_cfg.n_experts, moe_cfg.top_k,
           moe_cfg.d_expert, (unsigned long)res[1].params_total, (unsigned long)res[1].params_active);
    if (moexc_model_create(&dense, &dense_cfg, &err) || moexc_model_create(&moe, &moe_cfg, &err)) {
        status = failed("model", &err);
        goto done;
    }
    for (m = 0; m < 2; m++) {
        size_t n = (size_t)c.lm_steps;
        rec[m].name = model_names[m];
        rec[m].step = (float *)calloc(5 * n, sizeof(float));
        rec[m].eval_step = (float *)calloc(n + 1, sizeof(float));
        rec[m].eval_bpb = (float *)calloc((n + 1) * (size_t)(D + 1), sizeof(float));
        if (!rec[m].step || !rec[m].eval_step || !rec[m].eval_bpb) { fprintf(stderr, "moexc_demo: out of memory\n"); goto done; }
        rec[m].loss = rec[m].step + n; rec[m].ce = rec[m].step + 2 * n; rec[m].lb = rec[m].step + 3 * n; rec[m].lr = rec[m].step + 4 * n;
        rec[m].stop = &lm_stop;
        snprintf(ckpt[m], sizeof(ckpt[m]), "%s/%s.ckpt", c.out, model_names[m]);
    }
    /* With 2 or 3 threads the two models train at the same time, one thread
       each. At these widths one model's kernels gain little from a second
       thread, and each model computes exactly what it computes alone on one
       thread (same bits). Inside a section the library sees one thread: its
       GEMM runs single-threaded inside a parallel region, and
       omp_set_num_threads(1) holds its other loops to one thread even where
       nested parallelism is enabled. The model done last finishes on all
       threads (train_pair). With 1 or with 4+ threads the models train one
       after the other on all threads. */
    {
        moexc_model *pair[2];
        pair[0] = dense; pair[1] = moe;
        if (train_pair(pair, &data, &c, rec, res, ckpt, lm_concurrent)) goto done;
    }

    if (c.controls) {
        printf("\n2b. the controls' twin models (initialisation seed %lu, same data and data order)\n", (unsigned long)(c.seed + 1));
        if (train_twins(twin, &data, &c, lm_concurrent)) goto done;
    }

    /* ---- 3. Harvest layer activations of both models on the same tokens ------ */
    t_phase = now_seconds();
    memset(&ho, 0, sizeof(ho));
    ho.layer = c.layer == 0 ? MOEXC_HARVEST_LAYER0 : c.layer;   /* 0 in the struct means "default" */
    ho.site = c.site;
    ho.seq_len = c.context < 128 ? c.context : 128;
    if (interleave_split(&xc_train_tokens, &data, DEMO_EVAL_FRACTION, 0, ho.seq_len, &err) ||
        interleave_split(&xc_eval_tokens, &data, DEMO_EVAL_FRACTION, 1, ho.seq_len, &err)) { status = failed("harvest streams", &err); goto done; }
    /* model A = MoE, model B = dense */
    if (moexc_harvester_create(&harvest, moe, dense, &xc_train_tokens, &ho, &err) ||
        moexc_harvester_create(&harvest_eval, moe, dense, &xc_eval_tokens, &ho, &err)) { status = failed("harvester", &err); goto done; }
    d_model = moexc_harvester_dim(harvest, 0);
    rows = moexc_harvester_rows_per_call(harvest);
    printf("\n3. harvesting block %d (%s) of both models: %lu training / %lu held-out tokens, %d pairs per call\n",
           c.layer, c.site == MOEXC_SITE_RESID ? "residual stream" : "FFN/MoE output",
           (unsigned long)xc_train_tokens.n, (unsigned long)xc_eval_tokens.n, rows);
    /* the held-out set for the final evaluation, in stream order */
    n_eval = c.eval_pairs;
    eval_a = (float *)malloc((size_t)(n_eval + rows) * d_model * sizeof(float));
    eval_b = (float *)malloc((size_t)(n_eval + rows) * d_model * sizeof(float));
    if (!eval_a || !eval_b) { fprintf(stderr, "moexc_demo: out of memory\n"); goto done; }
    for (i = 0; i < n_eval; i += rows) {
        int got;
        if (moexc_harvester_next(harvest_eval, eval_a + (size_t)i * d_model, eval_b + (size_t)i * d_model, &got, &err)) { status = failed("harvest", &err); goto done; }
    }
    if ((size_t)n_eval > xc_eval_tokens.n) printf("  note: %d held-out pairs requested, %lu held-out tokens: some repeat\n", n_eval, (unsigned long)xc_eval_tokens.n);
    /* fill the shuffle buffer; pairs come out in random order once it is full */
    if (moexc_shuffle_init(&shuffle, d_model, d_model, c.xc_buffer, c.seed + 7, &err)) { status = failed("shuffle buffer", &err); goto done; }
    if (feed_init(&feed, harvest, &shuffle, c.xc_batch)) goto done;
    if (feed_prime(&feed, &err)) { status = failed("harvest", &err); goto done; }
    printf("  %d held-out pairs and a shuffle buffer of %d pairs in %.1f s\n", n_eval, shuffle.capacity, now_seconds() - t_phase);

    /* ---- 4. The BatchTopK crosscoder with designated shared latents ---------- */
    t_phase = now_seconds();
    memset(&xo, 0, sizeof(xo));
    xo.variant = MOEXC_XC_BATCHTOPK;
    xo.n_latents = c.xc_latents;
    xo.k = c.xc_k;
    xo.n_shared = c.xc_shared;
    xo.steps = c.xc_steps;
    xo.batch = c.xc_batch;
    xo.lr = c.xc_lr;
    xo.seed = c.seed;
    if (moexc_xc_create(&xc, d_model, d_model, &xo, &err)) { status = failed("crosscoder", &err); goto done; }
    {   /* normalisation scalars s_m and b_dec from the buffered sample (its rows hold x^A then x^B) */
        int n_init = shuffle.count < 16384 ? shuffle.count : 16384;
        float *ia = (float *)malloc((size_t)n_init * d_model * sizeof(float)), *ib = (float *)malloc((size_t)n_init * d_model * sizeof(float));
        if (!ia || !ib) { free(ia); free(ib); fprintf(stderr, "moexc_demo: out of memory\n"); goto done; }
        for (i = 0; i < n_init; i++) {
            memcpy(ia + (size_t)i * d_model, shuffle.rows + (size_t)i * 2 * d_model, (size_t)d_model * sizeof(float));
            memcpy(ib + (size_t)i * d_model, shuffle.rows + ((size_t)i * 2 + 1) * d_model, (size_t)d_model * sizeof(float));
        }
        if (moexc_xc_init_from_data(xc, ia, ib, n_init, &err)) { free(ia); free(ib); status = failed("crosscoder init", &err); goto done; }
        free(ia); free(ib);
    }
    printf("\n4. crosscoder: F=%d latents (%d designated shared), BatchTopK k=%d, %d steps of %d pairs, lr %.2g; "
           "s_MoE=%.3g s_dense=%.3g\n", c.xc_latents, c.xc_shared, c.xc_k, c.xc_steps, c.xc_batch,
           moexc_xc_get_options(xc)->lr, moexc_xc_scale(xc, 0), moexc_xc_scale(xc, 1));
    xc_curve = (float *)calloc((size_t)c.xc_steps * 6, sizeof(float));
    xc_eval_curve = (float *)calloc((size_t)(c.xc_evals + 2) * 6, sizeof(float));
    if (!xc_curve || !xc_eval_curve) { fprintf(stderr, "moexc_demo: out of memory\n"); goto done; }
    {
        int eval_every = c.xc_steps / c.xc_evals > 0 ? c.xc_steps / c.xc_evals : 1;
        int log_every = c.xc_steps / 20 > 0 ? c.xc_steps / 20 : 1;
        int subset = n_eval < EVAL_SUBSET ? n_eval : EVAL_SUBSET, step;
        xc_trainer tr;
        const moexc_xc_step_stats *ss = &tr.ss;
        moexc_xc_eval ev;
        tr.xc = &xc; tr.first = 0; tr.end = 1;
        for (step = 1; step <= c.xc_steps; step++) {
            float *row = xc_curve + (size_t)(step - 1) * 6;
            const char *what;
            /* this step's batch; the next one streams in meanwhile */
            if (feed_step(&feed, step == c.xc_steps, &tr, &what, &err)) { status = failed(what, &err); goto done; }
            row[0] = (float)ss->loss; row[1] = (float)ss->fve[0]; row[2] = (float)ss->fve[1];
            row[3] = (float)ss->l0; row[4] = (float)ss->dead_fraction; row[5] = (float)ss->lr;
            if (step % eval_every == 0 || step == c.xc_steps || step == 1) {
                float *er = xc_eval_curve + (size_t)n_xc_evals * 6;
                if (moexc_xc_evaluate(xc, eval_a, eval_b, subset, &ev, NULL, &err)) { status = failed("crosscoder eval", &err); goto done; }
                er[0] = (float)step; er[1] = (float)ev.fve[0]; er[2] = (float)ev.fve[1]; er[3] = (float)ev.fve_pooled;
                er[4] = (float)ev.l0; er[5] = (float)ev.dead_fraction;
                if (n_xc_evals < c.xc_evals + 2) n_xc_evals++;
            }
            if (step % log_every == 0 || step == c.xc_steps) {
                double el = now_seconds() - t_phase;
                char eta[32];
                format_eta(eta, sizeof(eta), el / step * (c.xc_steps - step));
                fprintf(stderr, "  [xc] step %5d/%d  loss %.4f  FVE MoE %.3f dense %.3f  L0 %.1f  dead %.3f  aux %.3f  ETA %s\n",
                        step, c.xc_steps, ss->loss, ss->fve[0], ss->fve[1], ss->l0, ss->dead_fraction, ss->aux, eta);
            }
        }
    }
    join(path, sizeof(path), c.out, "crosscoder.safetensors");
    if (moexc_xc_save(xc, path, &err)) { status = failed("crosscoder save", &err); goto done; }
    printf("  trained in %.1f s, saved %s (threshold %.4g)\n", now_seconds() - t_phase, path, moexc_xc_threshold(xc));

    /* ---- 5. Held-out evaluation and the latent analysis --------------------- */
    t_phase = now_seconds();
    counts = (int64_t *)calloc((size_t)c.xc_latents, sizeof(int64_t));
    dec_a = (float *)malloc((size_t)c.xc_latents * d_model * 4 * sizeof(float));
    if (!counts || !dec_a) { fprintf(stderr, "moexc_demo: out of memory\n"); goto done; }
    dec_b = dec_a + (size_t)c.xc_latents * d_model;
    dec_norm_a = dec_b + (size_t)c.xc_latents * d_model;
    dec_norm_b = dec_norm_a + (size_t)c.xc_latents * d_model;
    if (moexc_xc_evaluate(xc, eval_a, eval_b, n_eval, &final_eval, counts, &err)) { status = failed("crosscoder eval", &err); goto done; }
    /* r, classes, cosines, densities. The crosscoder saw each model's
       activations scaled by s_m to mean norm sqrt(d), and r is read in those
       normalised units: a latent with r = 0.5 explains equally much of both
       models' (normalised) activations. In raw units (W_dec^m / s_m, as saved)
       every r would also carry the ratio s_MoE / s_dense of the two models'
       activation scales, which is far from 1 here (the MoE's raw-probability
       gates can shrink its FFN output), so raw units are an option
       (--r-units raw) and the other units' class counts are reported too. */
    moexc_xc_decoder(xc, 0, 1, dec_a);
    moexc_xc_decoder(xc, 1, 1, dec_b);
    moexc_xc_decoder(xc, 0, 0, dec_norm_a);
    moexc_xc_decoder(xc, 1, 0, dec_norm_b);
    {
        moexc_analysis_options ao;
        memset(&ao, 0, sizeof(ao));
        ao.seed = c.seed;
        const float *pa = c.raw_units ? dec_a : dec_norm_a, *pb = c.raw_units ? dec_b : dec_norm_b;
        const float *qa = c.raw_units ? dec_norm_a : dec_a, *qb = c.raw_units ? dec_norm_b : dec_b;
        if (moexc_analyze_latents(&an, pa, d_model, pb, d_model, c.xc_latents, c.xc_shared, counts, n_eval, &ao, &err) ||
            moexc_analyze_latents(&an_alt, qa, d_model, qb, d_model, c.xc_latents, c.xc_shared, counts, n_eval, &ao, &err)) {
            status = failed("analysis", &err);
            goto done;
        }
    }
    /* Latent Scaling (Minder et al.): beta_i^m against the reconstruction and
       against the error with the latent's own contribution added back */
    {
        moexc_latent_scaling_acc ls[2][2];
        int chunk = 1024, t, bad = 0;
        float *f = (float *)malloc((size_t)chunk * c.xc_latents * sizeof(float));
        float *xh[2], *e[2];
        memset(ls, 0, sizeof(ls));
        xh[0] = (float *)malloc((size_t)chunk * d_model * 4 * sizeof(float));
        if (!f || !xh[0]) { free(f); free(xh[0]); fprintf(stderr, "moexc_demo: out of memory\n"); goto done; }
        xh[1] = xh[0] + (size_t)chunk * d_model; e[0] = xh[1] + (size_t)chunk * d_model; e[1] = e[0] + (size_t)chunk * d_model;
        for (m = 0; m < 2; m++)
            for (t = 0; t < 2; t++)
                if (moexc_latent_scaling_init(&ls[m][t], m == 0 ? dec_a : dec_b, c.xc_latents, d_model,
                                              t == 0 ? MOEXC_LS_RECONSTRUCTION : MOEXC_LS_ERROR, &err))
                    bad = failed("latent scaling", &err);
        for (i = 0; i < n_eval && !bad; i += chunk) {
            int n = n_eval - i < chunk ? n_eval - i : chunk;
            size_t k, nd = (size_t)n * d_model;
            const float *xa = eval_a + (size_t)i * d_model, *xb = eval_b + (size_t)i * d_model;
            if (moexc_xc_encode(xc, xa, xb, n, f, &err)) { bad = failed("encode", &err); break; }
            moexc_xc_decode(xc, f, n, xh[0], xh[1]);
            for (k = 0; k < nd; k++) { e[0][k] = xa[k] - xh[0][k]; e[1][k] = xb[k] - xh[1][k]; }
            for (m = 0; m < 2; m++) {
                moexc_latent_scaling_add(&ls[m][0], f, xh[m], n);
                moexc_latent_scaling_add(&ls[m][1], f, e[m], n);
            }
        }
        for (m = 0; m < 2; m++)
            for (t = 0; t < 2; t++) {
                beta[m][t] = (float *)malloc((size_t)c.xc_latents * sizeof(float));
                if (!beta[m][t]) bad = 1;
                else if (!bad) moexc_latent_scaling_beta(&ls[m][t], beta[m][t]);
                moexc_latent_scaling_free(&ls[m][t]);
            }
        for (t = 0; t < 2; t++) {
            nu[t] = (float *)malloc((size_t)c.xc_latents * sizeof(float));
            if (!nu[t]) bad = 1;
            else if (!bad) moexc_latent_scaling_nu(nu[t], beta[0][t], beta[1][t], c.xc_latents);
        }
        free(f); free(xh[0]);
        if (bad) { fprintf(stderr, "moexc_demo: latent scaling failed\n"); goto done; }
    }
    printf("\n5. held-out evaluation on %d token pairs (%.1f s)\n", n_eval, now_seconds() - t_phase);
    printf("  FVE MoE %.4f, dense %.4f, pooled %.4f; L0 %.2f; dead fraction %.4f\n",
           final_eval.fve[0], final_eval.fve[1], final_eval.fve_pooled, final_eval.l0, final_eval.dead_fraction);

    /* ---- 5b. Seed controls (--controls) ---------------------------------------- */
    if (c.controls) {
        t_phase = now_seconds();
        ctl.n_seeds = c.n_seeds; ctl.n_latents = c.xc_latents;
        ctl.pair[0].name = "moe-vs-dense";   ctl.pair[0].a_only = "MoE-only"; ctl.pair[0].b_only = "dense-only";
        ctl.pair[1].name = "dense-vs-dense"; ctl.pair[1].a_only = "A-only";   ctl.pair[1].b_only = "B-only";
        ctl.pair[2].name = "moe-vs-moe";     ctl.pair[2].a_only = "A-only";   ctl.pair[2].b_only = "B-only";
        printf("\n5b. seed controls: %d crosscoder seeds for each of MoE vs dense (seed %lu is the one above), "
               "dense vs dense', MoE vs MoE'\n", c.n_seeds, (unsigned long)c.seed);
        if (run_pair(&ctl.pair[0], moe, dense, &xc_train_tokens, &xc_eval_tokens, &c, xc, &ctl) ||
            run_pair(&ctl.pair[1], dense, twin[0], &xc_train_tokens, &xc_eval_tokens, &c, NULL, &ctl) ||
            run_pair(&ctl.pair[2], moe, twin[1], &xc_train_tokens, &xc_eval_tokens, &c, NULL, &ctl)) goto done;
        controls_verdicts(&ctl);
        ctl.seconds = now_seconds() - t_phase;
        printf("  %d crosscoders in %.1f s\n", 3 * c.n_seeds - 1, ctl.seconds);
    }

    /* ---- 6. The report ------------------------------------------------------- */
    printf("\n6. report\n\n");
    memset(&summary, 0, sizeof(summary));
    summary.name = "moexc_demo";
    summary.has_fve = 1; summary.fve_a = final_eval.fve[0]; summary.fve_b = final_eval.fve[1]; summary.fve_pooled = final_eval.fve_pooled;
    summary.has_l0 = 1; summary.l0 = final_eval.l0; summary.dead_fraction = final_eval.dead_fraction;
    moexc_analysis_print_table(stdout, &an, &summary);
    printf("r in %s units; in %s units (s_MoE %.3g, s_dense %.3g): %lld MoE-only, %lld shared, %lld dense-only\n\n",
           c.raw_units ? "raw" : "normalised", c.raw_units ? "normalised" : "raw", moexc_xc_scale(xc, 0), moexc_xc_scale(xc, 1),
           (long long)an_alt.classes[MOEXC_CLASS_MOE_ONLY].count, (long long)an_alt.classes[MOEXC_CLASS_SHARED].count,
           (long long)an_alt.classes[MOEXC_CLASS_DENSE_ONLY].count);
    if (c.controls && report_controls(&ctl, &c)) goto done;
    join(path, sizeof(path), c.out, "table.csv");
    if (moexc_analysis_write_csv(&an, path, &err)) { status = failed("table.csv", &err); goto done; }
    join(path, sizeof(path), c.out, "analysis.json");
    if (moexc_analysis_write_json(&an, &summary, path, &err)) { status = failed("analysis.json", &err); goto done; }
    join(path, sizeof(path), c.out, "latent_");
    if (moexc_analysis_write_npy(&an, path, &err)) { status = failed("npy", &err); goto done; }
    {
        const char *npy_names[6] = {"latent_beta_moe.npy", "latent_beta_dense.npy", "latent_nu.npy",
                                    "latent_beta_err_moe.npy", "latent_beta_err_dense.npy", "latent_nu_err.npy"};
        const float *npy_data[6];
        npy_data[0] = beta[0][0]; npy_data[1] = beta[1][0]; npy_data[2] = nu[0];
        npy_data[3] = beta[0][1]; npy_data[4] = beta[1][1]; npy_data[5] = nu[1];
        for (i = 0; i < 6; i++) {
            join(path, sizeof(path), c.out, npy_names[i]);
            if (moexc_npy_write_f32(path, npy_data[i], (size_t)c.xc_latents, &err)) { status = failed("npy", &err); goto done; }
        }
        join(path, sizeof(path), c.out, "latent_counts.npy");
        for (i = 0; i < c.xc_latents; i++) dec_a[i] = (float)counts[i];    /* reuse as scratch */
        if (moexc_npy_write_f32(path, dec_a, (size_t)c.xc_latents, &err)) { status = failed("npy", &err); goto done; }
    }

    {
        report_inputs in;
        in.c = &c; in.data = &data; in.rec = rec; in.res = res; in.xc = xc; in.eval = &final_eval;
        in.an = &an; in.an_alt = &an_alt; in.nu_err = nu[1];
        in.xc_curve = xc_curve; in.xc_eval_curve = xc_eval_curve; in.n_xc_evals = n_xc_evals; in.n_eval = n_eval;
        in.seconds = now_seconds() - t_start;
        in.ctl = c.controls ? &ctl : NULL;
        if (run_tail(&in, moe, dense, xc, eval_a, eval_b, beta[0][0], beta[1][0], nu[0], threads)) goto done;
    }
    printf("\ndone in %.1f s; report in %s/\n", now_seconds() - t_start, c.out);
    status = 0;
done:
    moexc_latent_analysis_free(&an);
    moexc_latent_analysis_free(&an_alt);
    for (m = 0; m < 2; m++) {
        free(beta[m][0]); free(beta[m][1]); free(nu[m]);
        free(rec[m].step); free(rec[m].eval_step); free(rec[m].eval_bpb);
        free(res[m].domain_share); free(res[m].f); free(res[m].entropy);
    }
    free(counts); free(dec_a); free(xc_curve); free(xc_eval_curve);
    free(eval_a); free(eval_b); feed_free(&feed);
    moexc_xc_free(xc);
    moexc_shuffle_free(&shuffle);
    moexc_harvester_free(harvest);
    moexc_harvester_free(harvest_eval);
    moexc_model_free(dense);
    moexc_model_free(moe);
    moexc_model_free(twin[0]);
    moexc_model_free(twin[1]);
    controls_free(&ctl);
    moexc_tokens_free(&xc_eval_tokens);
    moexc_tokens_free(&xc_train_tokens);
    moexc_tokens_free(&data);
    return status;
}
