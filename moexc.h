/* moexc.h - v0.1 - train a dense and a Mixture-of-Experts transformer, then diff
   their internals with sparse crosscoders. One portable C99 header, public domain / MIT.

   ===========================================================================
   WHAT IT IS
   ===========================================================================
   A transparent pipeline with no framework underneath:

     1. train two small byte-level transformers with equal active parameters:
        a dense one (SwiGLU FFN) and a Mixture-of-Experts one (top-k router,
        Switch load-balancing loss), on code, scientific text and stories;
     2. run both on the same tokens and harvest one layer's output from each;
     3. train a BatchTopK (or L1) crosscoder with designated shared latents on
        the paired activations;
     4. classify latents by relative decoder norm into MoE-only, shared and
        dense-only, compare decoder cosines, densities and variance explained;
     5. draw the results into RGB buffers (write them with stb_image_write);
     6. look inside the MoE alone (MoE Lens, SPEC §6): which experts each
        domain's tokens go to, how few experts take half the routing, how
        close the top-weighted expert comes to the whole top-k mixture, and
        the perplexity with k' experts forced;
     7. train toy MoEs on synthetic sparse features, many configurations side
        by side, and measure superposition (SPEC §7): feature dimensionality,
        features per dimension, monosemantic fraction, expert specialisation.

   The math is written next to the code that computes it. The reference for
   every formula is SPEC.md (the distilled paper "Sparse Crosscoders for
   diffing MoEs and Dense models" and its sources).

   ===========================================================================
   HOW TO BUILD
   ===========================================================================
   In exactly one C or C++ file:

       #define MOEXC_IMPLEMENTATION
       #include "moexc.h"

   Everywhere else, just #include "moexc.h". Link with -lm. Optionally compile
   with -fopenmp (OpenMP is used only under #ifdef _OPENMP) and -march=native
   (the SIMD backend is picked from the compiler's own predefined macros).

       cc -std=c99 -O2 -march=native -fopenmp my_program.c -lm

   ===========================================================================
   OPTIONS (define before including the implementation)
   ===========================================================================
     MOEXC_IMPLEMENTATION   emit the implementation in this translation unit
     MOEXC_STATIC           make every function static (private to one file)
     MOEXC_DEF              linkage of public functions (default: extern)
     MOEXC_MALLOC(sz)       allocator overrides: define all three or none;
     MOEXC_REALLOC(p,sz)      every allocation of the library goes through
     MOEXC_FREE(p)            them, and a failed one is an error result
     MOEXC_ASSERT(x)        internal invariant checks (default: assert.h)
     MOEXC_NO_SIMD          force the scalar backend
     MOEXC_NO_AVX512        do not use AVX-512 even if the compiler offers it
     MOEXC_NO_AVX2          do not use AVX2+FMA (implies no AVX-512)
     MOEXC_NO_SSE2          do not use SSE2 (implies none of the above)
     MOEXC_NO_NEON          do not use NEON on ARM
     MOEXC_GEMM_KC/_MC/_NC  GEMM cache-blocking sizes (defaults 512, 12 x the
                            register tile's rows, 4096; see >>gemm)

   SIMD backends: AVX-512F, AVX2+FMA, SSE2, NEON (AArch64) and scalar. Every
   kernel is written once over an internal macro layer (moexc__v*), so each
   SIMD path has a scalar twin. moexc_simd_backend() names the one compiled in.

   ===========================================================================
   USAGE (examples/quickstart.c is this, compiled and run; error checks and
   frees are left out here)
   ===========================================================================
       moexc_error err;  moexc_tokens corpus = {0};
       moexc_model_config base = {0}, dense_cfg, moe_cfg;
       moexc_model *model[2];               // A = MoE (0), B = dense (1)
       moexc_train_options train = {0};     // zero = defaults
       moexc_harvest_options harvest = {0}; // block 3, FFN output
       moexc_xc_options xo = {0};           // BatchTopK

       moexc_corpus_builtin(&corpus, 300000, 1, &err);  // code, science, stories
       base.d_model = 64;
       moexc_model_config_pair(&base, &dense_cfg, &moe_cfg, &err);
       moexc_model_create(&model[0], &moe_cfg, &err);
       moexc_model_create(&model[1], &dense_cfg, &err);
       for (m = 0; m < 2; m++) {
           moexc_trainer_create(&trainer, model[m], &corpus, &train, &err);
           moexc_trainer_run(trainer, NULL, NULL, &err);  // or a progress callback
           moexc_trainer_free(trainer);
       }
       moexc_harvester_create(&h, model[0], model[1], &corpus, &harvest, &err);
       moexc_harvester_next(h, x_a, x_b, &rows, &err);  // repeat: paired rows
       xo.n_latents = 1024; xo.k = 16; xo.n_shared = 32;
       moexc_xc_create(&xc, d, d, &xo, &err);
       moexc_xc_init_from_data(xc, x_a, x_b, n, &err);
       moexc_xc_train_step(xc, x_a + i * d, x_b + i * d, batch, &stats, &err);
       moexc_xc_evaluate(xc, held_a, held_b, n_held, &eval, active_counts, &err);
       moexc_xc_decoder(xc, 0, 0, dec_a);  moexc_xc_decoder(xc, 1, 0, dec_b);
       moexc_analyze_latents(&an, dec_a, d, dec_b, d, F, 32, active_counts, n_held, NULL, &err);
       moexc_analysis_print_table(stdout, &an, NULL);

   What a latent is (SPEC §5.2; tools/moexc_report writes it as a web page):

       moexc_latent_study st;  moexc_latent_study_options so = {0};
       so.layer = 3;                                      // the harvested block
       moexc_latent_study_run(&st, model[0], model[1], xc, &corpus, &so, &err);
       moexc_top_acts_get(&st.top, i, entries);          // latent i's top contexts
       moexc_label_acc_latent(&st.domain, i, 0, share, mass, &purity, &entropy);
       moexc_label_acc_by_class(&st.expert_top1, an.cls, 1, per_class);
       moexc_splice_acc_recovered(&st.splice, 0, MOEXC_SPLICE_ZERO, D);
       moexc_latent_study_free(&st);

   The command-line face of each step is in tools/ (moexc_mkdata,
   moexc_train, moexc_crosscoder, moexc_lens); examples/moexc_demo.c runs the
   whole study and writes a report folder with PNG plots (make demo).

   The MoE Lens on a trained MoE (>>lens; tools/moexc_lens is its face):

       moexc_lens lens;  moexc_lens_options lo = {0};   // zero = defaults
       lo.max_k = 4;                                      // perplexity for k' = 1..4
       moexc_lens_init(&lens, moe, corpus.n_domains, &lo, &err);
       moexc_lens_run(&lens, moe, &corpus, &err);         // each domain's held-out tail
       moexc_lens_print(stdout, &lens);                   // or _write_csv/_json/_plots
       moexc_lens_free(&lens);

   Toy models of superposition in MoEs (>>toy; examples/toy_superposition.c
   draws the phase diagrams, make toy):

       moexc_toy toys[2];  moexc_toy_config tc = {0};   // zero = seed defaults
       moexc_toy_metrics mt;                            // n 32, m 8, E 4, k 1, S 0.9
       moexc_toy_create(&toys[0], &tc, &err);
       tc.n_experts = tc.top_k = 1;                     // the dense baseline
       moexc_toy_create(&toys[1], &tc, &err);
       moexc_toy_train_many(toys, 2, 3000, 0, NULL, NULL, &err);  // threads over models
       moexc_toy_measure(&toys[0], NULL, &mt, &err);    // mt.mono_fraction, ...

   Sparse autoencoders made of experts on one model's activations (>>sae;
   tools/moexc_sae is its face, make sae compares the three variants):

       moexc_sae *sae;  moexc_sae_options sa = {0};    // zero = defaults
       moexc_sae_eval ev;  double redund, mean_max;
       sa.variant = MOEXC_SAE_SCALE;                    // or _TOPK, _SWITCH
       sa.n_latents = 2048; sa.k = 32; sa.n_experts = 8; sa.active_experts = 2;
       moexc_sae_create(&sae, d, &sa, &err);
       moexc_sae_init_from_data(sae, x, n, &err);       // x: one side of the pairs
       moexc_sae_train_step(sae, x + i * d, batch, &step_stats, &err);
       moexc_sae_evaluate(sae, held, n_held, &ev, NULL, &err);   // FVE, L0, dead
       moexc_sae_decoder(sae, 0, dec);                  // (F x d)
       moexc_redundancy(dec, F, d, 0.9f, &redund, &mean_max, NULL, &err);
       moexc_sae_encoder_flops(sae);                    // per token
       moexc_sae_splice(sae, model[1], &corpus, 3, MOEXC_SITE_FFN_OUT, 128, 32,
                        0.05f, 0, &splice, 0, &err);    // spliced loss (SPEC §5.2)
       moexc_sae_save(sae, "sae.safetensors", &err);  moexc_sae_free(sae);

   Data-parallel training on many processes or machines (SPEC §9): give
   moexc_train_options.reduce or moexc_xc_options.reduce a moexc_reduce whose
   sum adds a buffer across the workers (tools/mpi_reduce.h does it with
   MPI_Allreduce: make MPI=1, mpirun -np W build/mpi/moexc_train ...). Each
   worker then trains on its share of every global batch and all end with
   the same bits; without it nothing changes.

   FILE FORMATS (all little-endian, all written to a temporary file and
   renamed): token streams (>>data), model and training checkpoints in
   safetensors (>>model, >>train), crosscoders in safetensors with the public
   PyTorch crosscoder layout (>>crosscoder), SAEs in safetensors (>>sae),
   activation caches (>>harvest),
   .npy arrays (>>analysis).

   ===========================================================================
   CONVENTIONS
   ===========================================================================
   Letters: B batch of sequences, T tokens per sequence, N = B*T tokens,
   d model width, V vocabulary, H heads, L layers, E experts, k active experts,
   F crosscoder latents. Matrices are row-major float32. A weight W that maps
   width K to width N is stored (N x K), as PyTorch's nn.Linear does.

   Errors: functions that can fail return a moexc_status (MOEXC_OK = 0) and
   take an optional moexc_error* that receives a message naming the file,
   field or value at fault. moexc_status_name() names each code. Nothing
   calls exit() and nothing prints unless a callback asks for it.

   State: no mutable globals. Settings travel in option structs whose zero
   value means "defaults". Randomness comes from an explicit moexc_rng.

   Determinism: the same seed and the same thread count give the same bits.
   GEMM results do not depend on the thread count at all (each output element
   is summed over K in a fixed order by one thread). SIMD and scalar builds
   agree within the tolerances stated in the kernel comments, not bit for bit
   (vector reductions re-associate sums; FMA rounds once).

   Files on disk are little-endian whatever the host.

   ===========================================================================
   TABLE OF CONTENTS (grep for the anchor)
   ===========================================================================
     >>api            declarations (public API; the implementation follows
                      in the same order after MOEXC_IMPLEMENTATION)
     >>base           status codes, errors, allocation, random numbers
     >>simd           the internal SIMD macro layer (one per backend)
     >>tensor         vector kernels: dot, axpy, softmax, silu, rmsnorm, exp
     >>gemm           packed, register-blocked GEMM in three layouts
     >>data           tokenizer, token-stream files, built-in corpus
     >>checkpoint     JSON reader, safetensors writer and validating reader
     >>layers         embedding, RMSNorm, attention+RoPE, SwiGLU, MoE, losses
     >>model          dense and MoE transformers, parameter layout
     >>train          AdamW, schedules, clipping, router statistics;
                      the data-parallel hook moexc_reduce (SPEC §9, MPI)
     >>lens           MoE Lens: routing share, co-activation, concentration,
                      single-expert early decoding, perplexity with k' experts
     >>toy            superposition in toy MoEs: sparse synthetic features,
                      tied-weight experts, sweeps, dimensionality, monosemanticity
     >>harvest        paired activations, shuffle buffer, activation cache
     >>crosscoder     L1 and BatchTopK crosscoders with shared latents
     >>sae            sparse autoencoders made of experts (SPEC §8): TopK,
                      Switch and Scale SAEs, redundancy, encoder FLOPs
     >>analysis       relative decoder norm, classes, cosines, density, FVE;
                      seed controls and verdicts; aligned cosines (Procrustes, SVD);
                      what a latent is: top contexts, domain and expert
                      attribution, spliced loss (moexc_latent_study_run)
     >>plot           raster plots with a built-in bitmap font
     >>license        license

   LIMITS
     Tensors are float32. Sizes are int (< 2^31 elements per matrix dimension).
     Vocabulary up to 65536 tokens (uint16_t token ids).
*/
#ifndef MOEXC_H_INCLUDE
#define MOEXC_H_INCLUDE

/* ======================================================================== */
/* >>api                                                                     */
/* ======================================================================== */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>   /* FILE, for the report writers */

#ifndef MOEXC_DEF
#  ifdef MOEXC_STATIC
#    if defined(__GNUC__) || defined(__clang__)
#      define MOEXC_DEF static __attribute__((unused))
#    else
#      define MOEXC_DEF static
#    endif
#  else
#    define MOEXC_DEF extern
#  endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- >>base: status codes, errors, random numbers ------------------------ */

typedef enum moexc_status {
    MOEXC_OK = 0,
    MOEXC_ERR_NOMEM,        /* an allocation failed                          */
    MOEXC_ERR_ARG,          /* an argument or option is out of range         */
    MOEXC_ERR_IO,           /* a file could not be opened, read or written   */
    MOEXC_ERR_FORMAT,       /* a file is malformed (header, JSON, bounds)    */
    MOEXC_ERR_CHECKSUM,     /* a file's checksum does not match its content  */
    MOEXC_ERR_VERSION,      /* a file has a version this build cannot read   */
    MOEXC_ERR_SHAPE,        /* a tensor's shape or dtype does not match      */
    MOEXC_ERR_MISSING,      /* a required tensor, field or key is absent     */
    MOEXC_ERR_UNSUPPORTED,  /* a valid request this build does not implement */
    MOEXC_ERR_NUMERIC,      /* a NaN or Inf appeared where it must not       */
    MOEXC_STATUS_COUNT
} moexc_status;

/* Optional error detail. Pass NULL where you only want the status code. */
typedef struct moexc_error {
    moexc_status code;
    char message[512];      /* e.g. "model.safetensors: tensor 'layers.0.attn.wq.weight': shape [64,32], expected [64,64]" */
} moexc_error;

MOEXC_DEF const char *moexc_status_name(moexc_status status);

/* Counter-based generator (SplitMix64 seeding a xoshiro128+-style state would
   be overkill here): SplitMix64. The stream is a pure function of the seed. */
typedef struct moexc_rng { uint64_t state; } moexc_rng;

MOEXC_DEF void     moexc_rng_seed(moexc_rng *rng, uint64_t seed);
MOEXC_DEF uint64_t moexc_rng_u64(moexc_rng *rng);
MOEXC_DEF uint32_t moexc_rng_below(moexc_rng *rng, uint32_t n);   /* uniform in [0, n), n > 0 */
MOEXC_DEF float    moexc_rng_uniform(moexc_rng *rng);             /* uniform in [0, 1)        */
MOEXC_DEF float    moexc_rng_normal(moexc_rng *rng);              /* standard normal (Box-Muller, no cached spare) */

/* Library-owned memory (what moexc_* functions hand back) is released with
   this, which goes through MOEXC_FREE. */
MOEXC_DEF void moexc_free(void *ptr);

/* Can a file be written at path? Creates "<path>.tmp" (the temporary file
   every writer of moexc renames into place) in path's directory, then
   removes it; an existing directory at path is refused. For programs to
   check each output before a long run instead of failing at its end.
   MOEXC_ERR_IO with a message naming path and, where the C library gives
   one, the reason. Leaves an existing file at path untouched. */
MOEXC_DEF moexc_status moexc_check_writable(const char *path, moexc_error *err);

/* Move tmp_path over path in one step (rename on POSIX; MoveFileEx with
   replace-existing on Windows, where rename() will not replace), so a crash
   leaves either the old file or the new one. On failure tmp_path is removed
   and the message names both. Every writer of moexc ends with it; programs
   writing their own files (PNGs, pages) can too. */
MOEXC_DEF moexc_status moexc_replace_file(const char *tmp_path, const char *path, moexc_error *err);

/* ---- >>tensor: vector kernels -------------------------------------------- */
/* All take float32 arrays of length n; pointers need no particular alignment.
   Outputs may alias inputs element for element (y == x is fine). */

MOEXC_DEF const char *moexc_simd_backend(void);   /* "avx512", "avx2", "sse2", "neon" or "scalar" */
MOEXC_DEF int         moexc_simd_width(void);     /* floats per vector register (1 for scalar)   */

MOEXC_DEF float moexc_dot(const float *a, const float *b, size_t n);        /* sum_i a_i b_i   */
MOEXC_DEF void  moexc_axpy(float *y, float alpha, const float *x, size_t n); /* y += alpha x    */
MOEXC_DEF void  moexc_scale(float *x, float alpha, size_t n);               /* x *= alpha      */
MOEXC_DEF void  moexc_add(float *y, const float *a, const float *b, size_t n); /* y = a + b    */
MOEXC_DEF void  moexc_mul(float *y, const float *a, const float *b, size_t n); /* y = a * b    */
MOEXC_DEF float moexc_sum(const float *x, size_t n);                        /* sum_i x_i       */
MOEXC_DEF float moexc_max(const float *x, size_t n);                        /* max_i x_i, n>0  */
MOEXC_DEF void  moexc_exp(float *y, const float *x, size_t n);              /* y = exp(x)      */
/* y = softmax(x) row by row, x and y (rows x cols), max subtracted first. */
MOEXC_DEF void  moexc_softmax_rows(float *y, const float *x, int rows, int cols);
/* y = silu(x) = x * sigmoid(x) */
MOEXC_DEF void  moexc_silu(float *y, const float *x, size_t n);
/* dx = dy * silu'(x),  silu'(x) = s(x) (1 + x (1 - s(x))),  s = sigmoid */
MOEXC_DEF void  moexc_silu_backward(float *dx, const float *x, const float *dy, size_t n);
/* RMSNorm rows: y = g * x / sqrt(mean(x^2) + eps); x, y (rows x cols), g (cols).
   inv_rms (rows) receives 1/sqrt(mean(x^2)+eps) when not NULL (for backward). */
MOEXC_DEF void  moexc_rmsnorm_rows(float *y, float *inv_rms, const float *x, const float *g,
                                   int rows, int cols, float eps);
/* One Adam(W) step over n parameters (torch.optim.Adam / AdamW, step t >= 1),
   with the gradient read as g * g_scale (global-norm clipping):
     theta *= decay                        (AdamW: 1 - lr wd; 1 for none)
     m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
     theta -= step_size m / (sqrt(v) / bc2_sqrt + eps)
   step_size = lr / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t). Element by element,
   so any chunking gives the same bits; callers thread it over chunks. */
typedef struct moexc_adam_coeffs {
    float g_scale, decay, beta1, beta2, eps, step_size, bc2_sqrt;
} moexc_adam_coeffs;
MOEXC_DEF void  moexc_adam_update(float *theta, const float *g, float *m, float *v, size_t n,
                                  const moexc_adam_coeffs *c);

/* ---- >>gemm --------------------------------------------------------------- */
/* General row-major single-precision GEMM:
       C (M x N) = alpha * op(A) * op(B) + beta * C
   op(A) is A (M x K, lda) or, with trans_a, A^T where A is (K x M, lda);
   op(B) is B (K x N, ldb) or, with trans_b, B^T where B is (N x K, ldb).
   beta == 0 overwrites C without reading it (NaNs in C do not propagate).
   Uses OpenMP over independent output tiles when compiled with -fopenmp;
   the result does not depend on the thread count. */
MOEXC_DEF void moexc_sgemm(int trans_a, int trans_b, int M, int N, int K,
                           float alpha, const float *A, int lda,
                           const float *B, int ldb,
                           float beta, float *C, int ldc);

/* The three layouts of a linear layer's training step. W is (N x K) as in
   nn.Linear; X (M x K); Y, dY (M x N).
   forward:         Y  = X * W^T (+ bias broadcast over rows, bias may be NULL)
   input grad:      dX = dY * W        (accumulate != 0: dX += ...)
   weight grad:     dW += dY^T * X     (always accumulates) */
MOEXC_DEF void moexc_linear_forward(float *Y, const float *X, const float *W, const float *bias,
                                    int M, int N, int K);
MOEXC_DEF void moexc_linear_backward_input(float *dX, const float *dY, const float *W,
                                           int M, int N, int K, int accumulate);
MOEXC_DEF void moexc_linear_backward_weight(float *dW, const float *dY, const float *X,
                                            int M, int N, int K);

/* ---- >>data: byte tokenizer, token-stream files, built-in corpus --------- */
/* Owned by the data/checkpoint section. The signatures below are the contract
   other sections code against; add to them, do not change them. */

#define MOEXC_MAX_DOMAINS 16
#define MOEXC_DOMAIN_NAME_MAX 32

/* A token stream with a domain label per token. Byte-level tokens are 0..255. */
typedef struct moexc_tokens {
    uint16_t *tokens;       /* n token ids                                   */
    uint8_t  *domains;      /* n domain labels, each < n_domains             */
    size_t    n;
    size_t    capacity;
    int       vocab_size;   /* 256 for the byte tokenizer                    */
    int       n_domains;
    char      domain_names[MOEXC_MAX_DOMAINS][MOEXC_DOMAIN_NAME_MAX];
} moexc_tokens;

MOEXC_DEF void moexc_tokens_free(moexc_tokens *t);   /* frees arrays, zeroes the struct */
/* Register a domain name (returns its index in *index); reuses an existing one. */
MOEXC_DEF moexc_status moexc_tokens_add_domain(moexc_tokens *t, const char *name, int *index, moexc_error *err);
/* Byte tokenizer: append len bytes of text as tokens labelled with domain. */
MOEXC_DEF moexc_status moexc_tokens_append_bytes(moexc_tokens *t, const void *text, size_t len, int domain, moexc_error *err);
/* Token-stream file: little-endian, header with magic, version, counts,
   domain names, then tokens and labels, then a CRC-32. */
MOEXC_DEF moexc_status moexc_tokens_save(const moexc_tokens *t, const char *path, moexc_error *err);
MOEXC_DEF moexc_status moexc_tokens_load(moexc_tokens *t, const char *path, moexc_error *err);
/* Built-in three-domain corpus ("code", "science", "stories"), generated
   deterministically from seed, bytes_per_domain bytes of each. */
MOEXC_DEF moexc_status moexc_corpus_builtin(moexc_tokens *t, size_t bytes_per_domain, uint64_t seed, moexc_error *err);

/* Notes on the functions above.
   moexc_tokens_load overwrites *t (it does not free it): pass a zeroed or
   freed struct. moexc_corpus_builtin appends to t: three contiguous blocks,
   "code", "science", "stories" (registered, or reused if present), each
   exactly bytes_per_domain bytes of documents ending in MOEXC_DOC_SEPARATOR
   (the last one cut at the size). The bytes depend only on (seed, domain):
   the same on every host. 3 x 2 MB take about 0.1 s.

   Extensions.
   Documents: a document is its bytes, a newline if it does not end with one,
   then the separator byte MOEXC_DOC_SEPARATOR (ASCII record separator, which
   text never contains). The next document starts right after it; the
   separator acts as the end-of-document / beginning-of-document token. */
#define MOEXC_DOC_SEPARATOR 0x1E
MOEXC_DEF moexc_status moexc_tokens_append_document(moexc_tokens *t, const void *text, size_t len, int domain,
                                                    moexc_error *err);
/* Append token ids (each < vocab_size, which must be set) labelled with domain. */
MOEXC_DEF moexc_status moexc_tokens_append(moexc_tokens *t, const uint16_t *ids, size_t n, int domain,
                                           moexc_error *err);
/* Load from an in-memory image of a token file (name appears in messages).
   Both loaders overwrite *t without freeing it (pass a zeroed or freed
   struct); on failure *t is left zeroed. */
MOEXC_DEF moexc_status moexc_tokens_load_memory(moexc_tokens *t, const void *data, size_t size, const char *name,
                                                moexc_error *err);
/* Tokens of one domain (0 when out of range). */
MOEXC_DEF size_t moexc_tokens_domain_count(const moexc_tokens *t, int domain);

/* ---- >>checkpoint: safetensors ------------------------------------------- */
/* Format: 8-byte little-endian header length n, n bytes of JSON header
   {"__metadata__":{"k":"v",...}, "name":{"dtype":"F32","shape":[...],
   "data_offsets":[begin,end]}, ...}, then the raw little-endian data. */

typedef struct moexc_st_entry {       /* one tensor to write */
    const char  *name;
    const float *data;                /* float32, row-major, prod(shape) values */
    int          ndim;                /* 0..8 */
    int64_t      shape[8];
} moexc_st_entry;

typedef struct moexc_st_kv { const char *key; const char *value; } moexc_st_kv;

/* Write atomically (temporary file, then rename). */
MOEXC_DEF moexc_status moexc_st_save(const char *path, const moexc_st_entry *tensors, int n_tensors,
                                     const moexc_st_kv *metadata, int n_metadata, moexc_error *err);

typedef struct moexc_st_file moexc_st_file;   /* opaque, validated on open */
/* Open and validate everything: header length and bounds, JSON syntax,
   dtypes, shapes, offsets (in range, non-overlapping, covering the data),
   file size. A bad file gets a message naming the problem. */
MOEXC_DEF moexc_status moexc_st_open(moexc_st_file **out, const char *path, moexc_error *err);
MOEXC_DEF void         moexc_st_close(moexc_st_file *f);
MOEXC_DEF int          moexc_st_count(const moexc_st_file *f);
MOEXC_DEF const char  *moexc_st_name(const moexc_st_file *f, int i);
/* NULL when the key is absent. */
MOEXC_DEF const char  *moexc_st_meta(const moexc_st_file *f, const char *key);
/* Shape of a tensor; MOEXC_ERR_MISSING when absent. */
MOEXC_DEF moexc_status moexc_st_shape(const moexc_st_file *f, const char *name, int *ndim, int64_t shape[8], moexc_error *err);
/* Copy a F32 tensor into dst after checking it has exactly the expected shape. */
MOEXC_DEF moexc_status moexc_st_read_f32(const moexc_st_file *f, const char *name, float *dst,
                                         int ndim, const int64_t *expected_shape, moexc_error *err);
/* Limits of the reader: header at most 100 MB (the reference's cap), JSON
   nesting at most 64 deep and at most 2^20 values, at most 8 dimensions,
   tensor entries with exactly the fields dtype/shape/data_offsets, dtypes
   BOOL U8 I8 F8_E5M2 F8_E4M3 I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64 (only F32
   can be read). The whole file is read into memory; names and metadata
   strings returned stay valid until moexc_st_close.
   Extensions: open an in-memory image (copied; name appears in messages),
   the metadata keys in sorted order, and a tensor's dtype name ("F32",
   "BF16", ...; NULL when absent). Strings live until moexc_st_close. */
MOEXC_DEF moexc_status moexc_st_open_memory(moexc_st_file **out, const void *data, size_t size,
                                            const char *name, moexc_error *err);
MOEXC_DEF int          moexc_st_meta_count(const moexc_st_file *f);
MOEXC_DEF const char  *moexc_st_meta_key(const moexc_st_file *f, int i);
MOEXC_DEF const char  *moexc_st_dtype(const moexc_st_file *f, const char *name);

/* ---- >>model: dense and MoE transformers ---------------------------------- */
/* Owned by the model section. The declarations in this block are the contract
   other sections (harvesting, the pipeline) code against; extend, do not change. */

typedef enum moexc_ffn_kind  { MOEXC_FFN_DENSE = 0, MOEXC_FFN_MOE = 1 } moexc_ffn_kind;
typedef enum moexc_gate_mode { MOEXC_GATE_RAW = 0, MOEXC_GATE_RENORM = 1 } moexc_gate_mode;
/* Where to read a layer: the FFN/MoE sub-layer output, or the residual stream after the block. */
typedef enum moexc_site      { MOEXC_SITE_FFN_OUT = 0, MOEXC_SITE_RESID = 1 } moexc_site;

/* Zero value = defaults (SPEC §1). */
typedef struct moexc_model_config {
    int      vocab_size;  /* 0 -> 256 (bytes)                                  */
    int      d_model;     /* 0 -> 128                                          */
    int      n_heads;     /* 0 -> 4                                            */
    int      n_layers;    /* 0 -> 5                                            */
    int      context;     /* 0 -> 256 tokens                                   */
    int      ffn;         /* moexc_ffn_kind                                    */
    int      d_ff;        /* dense hidden width; 0 -> 4 d                      */
    int      n_experts;   /* E; 0 -> 8                                         */
    int      top_k;       /* k; 0 -> 2                                         */
    int      d_expert;    /* h_e; 0 -> 2 d (so k h_e = dense h_ff)             */
    int      gate;        /* moexc_gate_mode; renormalised with k = 1 is refused */
    float    lb_alpha;    /* Switch load-balancing weight; 0 -> 0.01, < 0 off  */
    float    z_loss;      /* router z-loss weight; 0 = off (SPEC suggests 1e-3) */
    int      tied_head;   /* 1: LM head shares the embedding matrix           */
    float    init_std;    /* 0 -> 0.02                                         */
    uint64_t seed;        /* initialisation seed                               */
} moexc_model_config;

typedef struct moexc_model moexc_model;

MOEXC_DEF moexc_status moexc_model_create(moexc_model **out, const moexc_model_config *cfg, moexc_error *err);
MOEXC_DEF void         moexc_model_free(moexc_model *m);
/* The resolved configuration (defaults filled in). */
MOEXC_DEF const moexc_model_config *moexc_model_get_config(const moexc_model *m);
MOEXC_DEF moexc_status moexc_model_save(const moexc_model *m, const char *path, moexc_error *err);
MOEXC_DEF moexc_status moexc_model_load(moexc_model **out, const char *path, moexc_error *err);
/* Inference forward over B sequences of T tokens (T <= context); writes the
   activations of block `layer` (0-based) at `site` to out, (B*T x d_model). */
MOEXC_DEF moexc_status moexc_model_capture(moexc_model *m, const uint16_t *tokens, int B, int T,
                                           int layer, moexc_site site, float *out, moexc_error *err);

/* ---- training-side view (contract between >>model and >>train) ----------- */
/* All parameters live in one allocation; gradients share its layout (llm.c
   style), so optimisers, clipping and checkpoints are flat loops. */
typedef struct moexc_param_info {
    const char *name;       /* PyTorch-style, e.g. "layers.0.attn.wq.weight" */
    size_t      offset;     /* in floats from moexc_model_params()           */
    size_t      size;       /* number of floats                              */
    int         ndim;
    int64_t     shape[4];
    int         decay;      /* 1 for matrices (AdamW weight decay), 0 for gains */
} moexc_param_info;

MOEXC_DEF size_t  moexc_model_num_params(const moexc_model *m);
MOEXC_DEF float  *moexc_model_params(moexc_model *m);
MOEXC_DEF float  *moexc_model_grads(moexc_model *m);
MOEXC_DEF void    moexc_model_zero_grad(moexc_model *m);
MOEXC_DEF int     moexc_model_num_tensors(const moexc_model *m);
MOEXC_DEF const moexc_param_info *moexc_model_tensor(const moexc_model *m, int i);

typedef struct moexc_loss_stats {
    double loss;            /* total = ce + lb + z                             */
    double ce;              /* mean cross-entropy over the B*T predictions     */
    double lb;              /* sum over MoE layers of the Switch loss          */
    double z;               /* sum over MoE layers of the router z-loss        */
} moexc_loss_stats;

/* Forward over B sequences of T tokens. targets (B*T, the next tokens) may be
   NULL for inference; with targets, stats receives the losses and a
   following moexc_model_backward adds d loss / d params into the gradients. */
MOEXC_DEF moexc_status moexc_model_forward(moexc_model *m, const uint16_t *inputs, const uint16_t *targets,
                                           int B, int T, moexc_loss_stats *stats, moexc_error *err);
MOEXC_DEF moexc_status moexc_model_backward(moexc_model *m, moexc_error *err);
/* Logits of the last forward, (B*T x V). */
MOEXC_DEF const float *moexc_model_logits(const moexc_model *m);
/* Router outputs of the last forward at MoE layer `layer`: probabilities
   (B*T x E) and chosen experts (B*T x k, in descending probability). NULL for
   a dense model. */
MOEXC_DEF const float *moexc_model_router_probs(const moexc_model *m, int layer);
MOEXC_DEF const int   *moexc_model_router_choices(const moexc_model *m, int layer);

/* Forward as moexc_model_forward, with the output of block `layer` at `site`
   replaced by `replacement` (B*T x d_model) before the rest of the model runs
   (spliced loss, ablations: SPEC §5.2). No backward follows it. */
MOEXC_DEF moexc_status moexc_model_forward_replace(moexc_model *m, const uint16_t *inputs, const uint16_t *targets,
                                                   int B, int T, int layer, moexc_site site, const float *replacement,
                                                   moexc_loss_stats *stats, moexc_error *err);
/* Activations of the last forward at block `layer`, `site` (B*T x d_model;
   what moexc_model_capture copies out), or NULL when that block did not run.
   Valid until the next forward. */
MOEXC_DEF const float *moexc_model_site_output(const moexc_model *m, int layer, moexc_site site);

/* ---- using a model (extensions below are the model section's own) -------
       moexc_model_config cfg;  memset(&cfg, 0, sizeof cfg);   zero = SPEC defaults
       cfg.ffn = MOEXC_FFN_MOE;
       moexc_model_create(&m, &cfg, &err);                       init from cfg.seed
       each step:  moexc_model_zero_grad(m);
                   moexc_model_forward(m, inputs, targets, B, T, &stats, &err);
                   moexc_model_backward(m, &err);   grads += d(ce + Σ lb + Σ z)/d params
                   (optimiser: a flat loop over moexc_model_params / _grads)
       moexc_model_save(m, "model.safetensors", &err);  moexc_model_free(m);
   Activations are kept for the largest (B, T) seen so far. Each forward with
   targets allows exactly one backward; capture runs only the blocks it needs
   (afterwards moexc_model_logits is NULL until the next full forward).
   Tensors (names shared with the PyTorch twin tools/torch_model.py):
     tok_emb.weight (V,d); per layer l: layers.l.attn_norm.weight (d),
     layers.l.attn.{wq,wk,wv,wo}.weight (d,d), layers.l.ffn_norm.weight (d),
     dense: layers.l.ffn.{w_gate,w_up}.weight (h_ff,d), layers.l.ffn.w_down.weight (d,h_ff);
     MoE:   layers.l.moe.router.weight (E,d), layers.l.moe.experts.{w_gate,w_up} (E,h_e,d),
            layers.l.moe.experts.w_down (E,d,h_e);
     norm.weight (d); lm_head.weight (V,d) unless tied_head.
   Checkpoint: safetensors with metadata "moexc.format" = "model",
   "moexc.version" = "1" and every resolved config field as
   "moexc.config.<field>" (decimal strings); loading checks every shape. */

/* Router load of the last forward at MoE layer `layer`: f_i (fraction of the
   k N routing slots that went to expert i) and P_i (mean router probability),
   both (E). Either pointer may be NULL. */
MOEXC_DEF moexc_status moexc_model_router_load(const moexc_model *m, int layer, float *f, float *P, moexc_error *err);
/* The parameter tensor called `name` (e.g. "norm.weight"), or NULL. */
MOEXC_DEF const moexc_param_info *moexc_model_find_tensor(const moexc_model *m, const char *name);

/* ---- configurations, sizes, memory -------------------------------------- */
/* Fill in the defaults and validate (d divisible by H, even head width,
   1 <= k <= E, no renormalised gate with k = 1, ...). cfg may be NULL
   (all defaults); out may alias cfg. */
MOEXC_DEF moexc_status moexc_model_config_resolve(moexc_model_config *out, const moexc_model_config *cfg, moexc_error *err);
/* The paper's equal-active-parameter pair from one base config: a dense
   model with h_ff = base d_ff (default 4d) and a MoE with E = base n_experts
   (default 8), k = base top_k (default 2), h_e = h_ff / k (default 2d), so
   that k h_e = h_ff. Everything else is shared. Either output may be NULL. */
MOEXC_DEF moexc_status moexc_model_config_pair(const moexc_model_config *base, moexc_model_config *dense,
                                               moexc_model_config *moe, moexc_error *err);
/* Parameter counts of a config: total, and active per token (the router
   plus k of the E experts in each MoE layer). Either pointer may be NULL. */
MOEXC_DEF moexc_status moexc_model_count_params(const moexc_model_config *cfg, size_t *total, size_t *active,
                                                moexc_error *err);

typedef struct moexc_model_memory_info {
    size_t param_bytes;       /* parameters                                        */
    size_t grad_bytes;        /* gradients (same layout)                           */
    size_t activation_bytes;  /* forward activations kept for backward + backward
                                 scratch, for one (B, T) batch                     */
    size_t total_bytes;       /* the sum: what the model object holds after a
                                 forward/backward at (B, T); optimiser state
                                 (AdamW: 2 x params) is not included               */
} moexc_model_memory_info;
/* Exact memory the model object allocates for a config at batch (B, T). */
MOEXC_DEF moexc_status moexc_model_memory(const moexc_model_config *cfg, int B, int T, moexc_model_memory_info *out,
                                          moexc_error *err);
/* Evaluation option (SPEC §6, perplexity with k' experts forced): route every
   token to its k' best experts, 1 <= k' <= n_experts (above top_k too; the
   activation buffers grow), with the configured gate; 0 restores top_k.
   Router choices are then (B*T x k'). Not saved. */
MOEXC_DEF moexc_status moexc_model_set_active_experts(moexc_model *m, int k, moexc_error *err);
/* Experts per token in effect: k' when forced, else top_k (0 for a dense model). */
MOEXC_DEF int          moexc_model_active_experts(const moexc_model *m);

/* ---- >>train: AdamW, schedule, clipping, batches, evaluation, routing ----- */
/* Trains a moexc_model on a labelled token stream. One optimiser step =
   grad_accum micro-batches of B random windows of T+1 tokens, gradient
   averaged, clipped by global norm, then one AdamW update with the learning
   rate of a linear warm-up + cosine schedule over total_steps. The same seed
   and thread count give the same bits, and a run resumed from a checkpoint
   reproduces the uninterrupted run bit for bit. The library never prints:
   progress goes through a callback. */

/* Data-parallel training (SPEC §9): W workers (processes, machines) each
   hold the whole model or crosscoder, train on their own shard of every
   global batch, and sum through this hook, so W workers with batch B/W
   compute the update of one worker with batch B (up to the order of float
   sums). The library stays free of dependencies: the caller provides the
   sum (tools/mpi_reduce.h wraps MPI_Allreduce). Zero value (sum NULL) = one
   worker, nothing changes.
   sum: replace buf (n elements of moexc_reduce_type `type`) in place by
   its element-wise sum over all workers; return 0 on success (non-zero
   fails the step with MOEXC_ERR_IO). Every worker calls it the same number
   of times with the same n and type, so a worker whose call fails should
   end the whole job (MPI_Abort). Before its first step, a trainer or
   crosscoder checks through the hook that `world` workers answer and that
   their options, data fingerprint, step and state agree; a mismatch is an
   error on every worker, not a hang. */
typedef enum moexc_reduce_type { MOEXC_REDUCE_F32 = 0, MOEXC_REDUCE_F64 = 1 } moexc_reduce_type;
typedef struct moexc_reduce {
    int  (*sum)(void *buf, size_t n, int type, void *user);
    void  *user;
    int    rank;    /* this worker, 0 <= rank < world                         */
    int    world;   /* number of workers W (the global batch is divisible by W) */
} moexc_reduce;

/* Zero value = defaults. Fields marked "< 0 off" accept a negative value to
   disable the feature (0 would mean "the default"). */
typedef struct moexc_train_options {
    float    lr;             /* peak learning rate; 0 -> 1e-3                       */
    float    min_lr_ratio;   /* final lr = min_lr_ratio * lr; 0 -> 0.1, < 0 -> 0    */
    float    beta1;          /* AdamW beta1; 0 -> 0.9                                */
    float    beta2;          /* AdamW beta2; 0 -> 0.95                               */
    float    eps;            /* AdamW epsilon; 0 -> 1e-8                             */
    float    weight_decay;   /* decoupled, matrices only; 0 -> 0.1, < 0 off          */
    float    grad_clip;      /* global gradient-norm limit; 0 -> 1.0, < 0 off        */
    int      warmup_steps;   /* linear warm-up; 0 -> 5% of total_steps, < 0 none     */
    int      total_steps;    /* optimiser steps of the whole run; 0 -> 1000         */
    int      batch_size;     /* B sequences per micro-batch; 0 -> 8                  */
    int      seq_len;        /* T tokens per sequence; 0 -> the model's context      */
    int      grad_accum;     /* micro-batches per optimiser step; 0 -> 1             */
    int      eval_interval;  /* evaluate every n steps (and at the end); 0 -> 100, < 0 never */
    int      eval_batches;   /* held-out batches of B x T per evaluation; 0 -> 8     */
    float    eval_fraction;  /* held-out tail of each domain; 0 -> 0.05, < 0 none    */
    uint64_t seed;           /* data-sampling seed                                   */
    moexc_reduce reduce;     /* data-parallel hook (zero: one worker). batch_size stays
                                the global B: worker r trains on sequences
                                [r B/W, (r+1) B/W) of every batch drawn (all workers
                                draw the same windows), and evaluates its share of the
                                held-out windows; losses, gradients, routing counts
                                (the Switch loss's f_i) and evaluations are summed, so
                                every worker holds the same state. Not saved in
                                checkpoints: see moexc_trainer_set_reduce.           */
} moexc_train_options;

/* Learning rate of optimiser step `step` (0-based), defaults resolved:
     warm-up  (step < W):  lr * (step + 1) / W
     cosine   (step >= W): lr_min + (lr - lr_min) * (1 + cos(pi * s / S)) / 2,
              s = step - W, S = max(1, total_steps - W), lr_min = min_lr_ratio * lr */
MOEXC_DEF double moexc_train_lr(const moexc_train_options *opt, int step);

/* Router statistics of a MoE model, accumulated over forwards (SPEC §1, §6).
   Arrays are [layer][expert] and [layer][domain][expert], row-major. A dense
   model has n_layers = 0. */
typedef struct moexc_router_stats {
    int     n_layers, n_experts, top_k, n_domains;   /* top_k: k of the last forward added (k' if forced) */
    double  n_tokens;                      /* tokens accumulated                */
    double  domain_tokens[MOEXC_MAX_DOMAINS];
    double *slot_count;     /* [L][E]  tokens whose top-k holds e              */
    double *prob_sum;       /* [L][E]  sum over tokens of p_{t,e}              */
    double *domain_count;   /* [L][D][E] as slot_count, per domain of the token */
    /* derived, refreshed by moexc_router_stats_add: */
    double *f;              /* [L][E]  f_e = slot_count / (k N), sums to 1       */
    double *P;              /* [L][E]  P_e = prob_sum / N                        */
    double *entropy;        /* [L]     usage entropy -sum f log2 f, bits (uniform: log2 E) */
    double *domain_share;   /* [L][D][E] share of domain D's tokens whose top-k holds e (uniform: k/E;
                               k' of moexc_model_set_active_experts while forced) */
} moexc_router_stats;

MOEXC_DEF moexc_status moexc_router_stats_init(moexc_router_stats *s, const moexc_model *m, int n_domains, moexc_error *err);
MOEXC_DEF void         moexc_router_stats_reset(moexc_router_stats *s);
MOEXC_DEF void         moexc_router_stats_free(moexc_router_stats *s);
/* Add the routing of the model's last forward over n tokens; domains (n
   labels, < n_domains) may be NULL (then only the pooled statistics move). */
MOEXC_DEF moexc_status moexc_router_stats_add(moexc_router_stats *s, const moexc_model *m,
                                              const uint8_t *domains, int n, moexc_error *err);

/* Held-out evaluation, per domain of the predicted token. */
typedef struct moexc_domain_eval {
    double tokens;          /* predicted tokens evaluated                       */
    double nats;            /* mean cross-entropy, nats per token               */
    double bits_per_byte;   /* nats / ln 2 (byte-level vocabulary), else -1      */
    double unigram_nats;    /* baseline: cross-entropy of the domain's held-out
                               tokens under its training unigram distribution
                               (add-one smoothed)                               */
    double unigram_bpb;     /* the same in bits per byte, else -1               */
} moexc_domain_eval;

typedef struct moexc_eval_result {
    int                step;        /* optimiser steps done when evaluated      */
    int                n_domains;
    moexc_domain_eval  all;         /* pooled over domains                      */
    moexc_domain_eval  domain[MOEXC_MAX_DOMAINS];
    const moexc_router_stats *router;  /* routing on the held-out tokens (domain of
                                          the input token); n_layers = 0 if dense */
} moexc_eval_result;

/* What the callback sees after every optimiser step. */
typedef struct moexc_train_progress {
    int      step;           /* optimiser steps done (1 after the first)         */
    int      total_steps;
    double   tokens;         /* training tokens processed so far                 */
    double   loss, ce, lb, z;/* this step, mean over its micro-batches           */
    double   lr;             /* learning rate this step used                     */
    double   grad_norm;      /* global gradient norm before clipping             */
    double   usage_entropy;  /* this step's routing: mean over MoE layers, bits  */
    double   usage_min, usage_max;  /* smallest / largest f_e over layers        */
    const moexc_eval_result *eval;  /* non-NULL on steps that evaluated          */
} moexc_train_progress;
/* Return non-zero to stop moexc_trainer_run after this step. */
typedef int (*moexc_train_callback)(const moexc_train_progress *p, void *user);

typedef struct moexc_trainer moexc_trainer;

/* The trainer borrows model and data (both must outlive it). The data's
   held-out tail per domain is never trained on. */
MOEXC_DEF moexc_status moexc_trainer_create(moexc_trainer **out, moexc_model *model, const moexc_tokens *data,
                                            const moexc_train_options *opt, moexc_error *err);
MOEXC_DEF void         moexc_trainer_free(moexc_trainer *t);
MOEXC_DEF const moexc_train_options *moexc_trainer_options(const moexc_trainer *t);  /* resolved */
MOEXC_DEF int          moexc_trainer_step_count(const moexc_trainer *t);
MOEXC_DEF moexc_model *moexc_trainer_model(moexc_trainer *t);
/* One optimiser step; progress (may be NULL) receives its figures. A step
   whose loss, gradients or updated parameters are not finite fails with
   MOEXC_ERR_NUMERIC naming the step and the first such tensor; the step is
   not counted and the parameters may hold its update (reload a checkpoint). */
MOEXC_DEF moexc_status moexc_trainer_step(moexc_trainer *t, moexc_train_progress *progress, moexc_error *err);
/* Held-out loss per domain and routing statistics; the result is owned by
   the trainer and valid until the next evaluation. */
MOEXC_DEF moexc_status moexc_trainer_evaluate(moexc_trainer *t, const moexc_eval_result **out, moexc_error *err);
/* Steps until total_steps (or the callback asks to stop), evaluating every
   eval_interval steps and after the last one. */
MOEXC_DEF moexc_status moexc_trainer_run(moexc_trainer *t, moexc_train_callback cb, void *user, moexc_error *err);

/* Training checkpoint (safetensors): the model's tensors and metadata, AdamW
   moments "optim.m.<name>" / "optim.v.<name>", and metadata "moexc.train.*":
   step, data-RNG state, every option, a fingerprint of the data and a CRC-32
   of parameters and moments. Written atomically. */
MOEXC_DEF moexc_status moexc_trainer_save(const moexc_trainer *t, const char *path, moexc_error *err);
/* Rebuild model and trainer from a checkpoint, on the same data (refused if
   its fingerprint differs). The caller frees *trainer, then *model. */
MOEXC_DEF moexc_status moexc_trainer_resume(moexc_trainer **trainer, moexc_model **model, const char *path,
                                            const moexc_tokens *data, moexc_error *err);
/* Attach (or with NULL / sum NULL detach) the data-parallel hook, e.g. to a
   resumed trainer; checks that W divides batch_size. */
MOEXC_DEF moexc_status moexc_trainer_set_reduce(moexc_trainer *t, const moexc_reduce *r, moexc_error *err);

/* Autoregressive sampling: appends n_new tokens to out after the prompt
   (n_prompt >= 1), each drawn from softmax(logits / temperature) restricted
   to the top_k most likely tokens (top_k <= 0: all; temperature <= 0: the
   most likely token). The model sees the last `context` tokens. */
MOEXC_DEF moexc_status moexc_generate(moexc_model *m, const uint16_t *prompt, int n_prompt, int n_new,
                                      float temperature, int top_k, moexc_rng *rng, uint16_t *out,
                                      moexc_error *err);
/* ---- >>lens: MoE Lens, how experts specialise (SPEC §6) -------------------- */
/* The analyses of "MoE Lens - An Expert Is All You Need" for any moexc MoE,
   per MoE layer l and domain D (index n_domains = all domains pooled):
     routing share    % of D's tokens whose top-k holds expert e (uniform 100 k/E)
     co-activation    C[i][j] = % of the tokens routed to i also routed to j
     concentration    the smallest m such that the m most used experts take
                      >= 50% of D's routing slots, and the cumulative share curve
     early decoding   with r the residual entering the FFN, cosine between
                      r + w_top1 Expert_top1(u) and r + sum_topk w_e Expert_e(u),
                      and the LM head's decoding of final_norm(.) of both: top-1
                      token agreement and KL(full || single)
     perplexity       with k' experts forced in every MoE layer (k' = 1..max_k),
                      geometric mean over sequences, next to the unforced model.
   Accumulator shape: moexc_lens_init, moexc_lens_add per batch of sequences
   (or moexc_lens_run over a token stream), moexc_lens_finish, moexc_lens_free.
   Memory is bounded: the sums are O(L D E^2), the scratch O(64 V). */

typedef void (*moexc_lens_callback)(int done, int total, void *user);

/* Zero value = defaults. */
typedef struct moexc_lens_options {
    int      max_k;          /* largest k' of the perplexity sweep; 0 -> top_k; up to E      */
    int      no_sweep;       /* 1: no forced-k' runs (routing and decoding only)             */
    /* moexc_lens_run only: */
    int      seq_len;        /* T tokens per sequence; 0 -> the model's context              */
    int      batch_size;     /* B sequences per forward; 0 -> 8                              */
    int      max_seqs;       /* sequences per domain; 0 -> 64                                */
    float    eval_fraction;  /* read the last fraction of each domain's tokens (the
                                trainer's held-out tail); 0 -> 0.05, < 0 the whole stream    */
    moexc_lens_callback progress;  /* after each batch (may be NULL)                        */
    void    *user;
} moexc_lens_options;

typedef struct moexc_lens {
    int     n_layers, n_experts, top_k, vocab_size, n_domains, max_k;  /* max_k 0: no sweep */
    int     renorm;          /* the model's gate is renormalised                              */
    moexc_lens_options opt;  /* resolved                                                      */
    char    domain_names[MOEXC_MAX_DOMAINS + 1][MOEXC_DOMAIN_NAME_MAX];  /* [n_domains] = "all" */
    /* sums, moved by moexc_lens_add; DD = n_domains + 1 */
    double  tokens[MOEXC_MAX_DOMAINS + 1];   /* positions seen (routing, decoding)            */
    double  seqs[MOEXC_MAX_DOMAINS + 1];     /* sequences holding the domain (perplexity)     */
    double *route;           /* [L][DD][E]     tokens whose top-k holds e                     */
    double *coroute;         /* [L][DD][E][E]  tokens whose top-k holds both i and j          */
    double *cos_sum;         /* [L][DD]        sum of the hidden-state cosines                */
    double *ffn_cos_sum;     /* [L][DD]        sum of cos(w_top1 E_top1, sum w E)             */
    double *agree_sum;       /* [L][DD]        top-1 token agreements                         */
    double *kl_sum;          /* [L][DD]        sum of KL(full || single), nats                */
    double *nll_sum;         /* [max_k+1][DD]  sum over sequences of their mean NLL; row 0
                                               unforced, row k' forced                        */
    /* results, filled by moexc_lens_finish (NaN where there is no data) */
    double *share;           /* [L][DD][E]     routing share, %                               */
    double *coact;           /* [L][DD][E][E]  C[i][j], % (NaN when i is never chosen)        */
    double *curve;           /* [L][DD][E]     % of routing slots taken by the m most used
                                               experts, m = 1..E                              */
    int    *concentration;   /* [L][DD]        smallest m with curve >= 50% (0: no data)      */
    double *cosine;          /* [L][DD]        mean hidden-state cosine                       */
    double *ffn_cosine;      /* [L][DD]        mean FFN-output cosine                         */
    double *agreement;       /* [L][DD]        top-1 agreement, fraction                      */
    double *kl;              /* [L][DD]        mean KL, nats                                  */
    double *ppl;             /* [max_k+1][DD]  exp(mean over sequences of mean NLL)           */
    float  *scratch;         /* internal                                                      */
} moexc_lens;

/* Sized for model m (a MoE) and n_domains labels; domain names default to
   "d0", "d1", ... (moexc_lens_run copies the token stream's). opt may be NULL. */
MOEXC_DEF moexc_status moexc_lens_init(moexc_lens *lens, const moexc_model *m, int n_domains,
                                       const moexc_lens_options *opt, moexc_error *err);
/* B sequences of T tokens: inputs and targets (B*T, the next tokens) and the
   domain label of each position (B*T, < n_domains). Runs the model unforced
   (routing, early decoding, perplexity), then once per forced k'. The model's
   own k' setting is restored afterwards. */
MOEXC_DEF moexc_status moexc_lens_add(moexc_lens *lens, moexc_model *m, const uint16_t *inputs,
                                      const uint16_t *targets, const uint8_t *domains, int B, int T,
                                      moexc_error *err);
/* Windows of T+1 tokens inside one domain's held-out tail (opt.eval_fraction),
   up to opt.max_seqs per domain evenly spaced, added in batches of opt.batch_size. */
MOEXC_DEF moexc_status moexc_lens_run(moexc_lens *lens, moexc_model *m, const moexc_tokens *data, moexc_error *err);
/* Fill the results from the sums (may be called again after more adds). */
MOEXC_DEF void         moexc_lens_finish(moexc_lens *lens);
MOEXC_DEF void         moexc_lens_free(moexc_lens *lens);

/* Tables on a stream: routing share, concentration, co-activation (pooled),
   early decoding, perplexity against k'. */
MOEXC_DEF void         moexc_lens_print(FILE *out, const moexc_lens *lens);
/* Tidy CSV, header "metric,layer,domain,k,i,j,value" (empty when not
   applicable): share (i = expert), coact (i, j), curve (i = m), concentration,
   cosine, ffn_cosine, top1_agreement, kl, ppl (k = k', 0 unforced). Atomic. */
MOEXC_DEF moexc_status moexc_lens_write_csv(const moexc_lens *lens, const char *path, moexc_error *err);
/* JSON object {"name", "n_layers", "n_experts", "top_k", "gate", "domains",
   "tokens", "sequences", "layers": [{"share", "coact", "curve", "concentration",
   "cosine", "ffn_cosine", "top1_agreement", "kl"} per domain ...],
   "perplexity": {"k": [...], "unforced": {...}, "forced": {...}}}; NaN -> null. Atomic. */
MOEXC_DEF moexc_status moexc_lens_write_json(const moexc_lens *lens, const char *name, const char *path,
                                             moexc_error *err);
/* The plots, each drawn on a canvas and handed to write(path, canvas, user)
   (e.g. stb_image_write's PNG writer; return 0 on success):
     <dir>/<prefix>coact_L<l>.png     co-activation heatmaps of layer l, per domain
     <dir>/<prefix>concentration.png  cumulative routing share per domain, a line per layer
     <dir>/<prefix>early_decoding.png cosines, top-1 agreement, KL per layer and domain
     <dir>/<prefix>perplexity.png     perplexity and its ratio to unforced against k'
   prefix may be NULL. n_written (may be NULL) receives the number of plots. */
struct moexc_canvas;   /* >>plot */
typedef int (*moexc_png_writer)(const char *path, const struct moexc_canvas *c, void *user);
MOEXC_DEF moexc_status moexc_lens_write_plots(const moexc_lens *lens, const char *dir, const char *prefix,
                                              moexc_png_writer write, void *user, int *n_written,
                                              moexc_error *err);
/* ---- >>toy: superposition in toy MoEs (SPEC §7) ---------------------------- */
/* The toy models of "Sparsity and Superposition in Mixture of Experts": n
   sparse features squeezed through m hidden dimensions by each of E experts,
   a router choosing k of them. E = k = 1 is the dense baseline, the ReLU-output
   model of "Toy Models of Superposition". Everything here is small enough to
   train hundreds of configurations side by side in seconds.
     data      x in R^n, x_i = 0 with probability S, else uniform in [0, 1]
     expert    h = W_e^T x (m),  out_e = ReLU(W_e h + b_e) (n),  W_e (n x m) tied
     router    p = softmax(G x) (E), top-k of p, gates w_e = p_e / sum_topk p
     output    x^ = sum_{e in top-k} w_e out_e
     loss      (1/B) sum_b sum_i I_i (x_i - x^_i)^2  +  alpha E sum_e f_e P_e
   Parameters live in one allocation (W, then b, then G), and so do the
   gradient and the two AdamW moments, so the optimiser is one flat call. */

enum { MOEXC_TOY_INIT_XAVIER = 0,   /* router rows Xavier-normal, like W and b         */
       MOEXC_TOY_INIT_KHOT   = 1 }; /* router row e is 1 on a random disjoint block of
                                       about n/E features, 0 elsewhere ("K-hot")        */

/* One configuration. Zero value = the seed code's defaults (SPEC §7). */
typedef struct moexc_toy_config {
    int      n_features;       /* n; 0 -> 32                                           */
    int      n_hidden;         /* m per expert; 0 -> 8                                 */
    int      n_experts;        /* E; 0 -> 4 (1 with top_k 1 = the dense baseline)      */
    int      top_k;            /* k; 0 -> 1                                            */
    float    feature_prob;     /* 1 - S, the probability that a feature is non-zero;
                                  0 -> 0.1 (S = 0.9); 1 -> dense data (S = 0)          */
    float    importance_decay; /* I_i = decay^i; 0 -> 1 (all features equally important) */
    const float *importance;   /* (n) explicit I_i instead of the decay (copied), or NULL */
    int      router_init;      /* MOEXC_TOY_INIT_XAVIER (0) or MOEXC_TOY_INIT_KHOT      */
    int      no_load_balance;  /* 1: no load-balancing loss (it is on by default)      */
    float    lb_alpha;         /* alpha of alpha E sum_e f_e P_e; 0 -> 0.01            */
    int      batch_size;       /* B per step; 0 -> 1024                                */
    float    lr;               /* AdamW; 0 -> 1e-3 (constant)                          */
    float    weight_decay;     /* AdamW; 0 -> 0.01 (PyTorch's default), < 0 -> none   */
    uint64_t seed;             /* weights, K-hot blocks and the data stream            */
} moexc_toy_config;

typedef struct moexc_toy {
    moexc_toy_config cfg;      /* resolved (cfg.importance points at .importance)      */
    int       n, m, E, k;
    size_t    n_params;        /* E n m + E n + E n                                    */
    float    *params;          /* W (E x n x m), b (E x n), G (E x n)                  */
    float    *grad, *adam_m, *adam_v;   /* the same layout                             */
    float    *W, *b, *G;       /* views into params                                    */
    float    *importance;      /* (n) I_i                                              */
    int      *block;           /* (n) K-hot: the expert whose router row starts at 1 on
                                  feature i; -1 everywhere under Xavier init           */
    int       step;            /* AdamW steps taken                                    */
    moexc_rng rng;             /* the data stream                                      */
    float     loss, recon, lb; /* of the last step: total, reconstruction, balance     */
    void     *scratch;         /* internal, sized for cfg.batch_size                   */
} moexc_toy;

/* Resolve cfg (NULL = all defaults), check it (errors name the field), allocate
   and initialise: W, b and (Xavier init) G Xavier-normal with PyTorch's fans
   (W as an (E, n, m) tensor: std sqrt(2 / (n m + E m)); b and G as (E, n):
   std sqrt(2 / (n + E))). */
MOEXC_DEF moexc_status moexc_toy_create(moexc_toy *t, const moexc_toy_config *cfg, moexc_error *err);
MOEXC_DEF void         moexc_toy_free(moexc_toy *t);
/* B samples of n features into x (B x n): 0 with probability 1 - feature_prob,
   else uniform in [0, 1). Two draws per feature, whatever the outcome. */
MOEXC_DEF void  moexc_toy_sample(float *x, int B, int n, float feature_prob, moexc_rng *rng);
/* x^ (B x n) for x (B x n), B <= cfg.batch_size. gates (B x E, may be NULL)
   receives the renormalised top-k gates w_e (0 off the top-k). */
MOEXC_DEF void  moexc_toy_forward(moexc_toy *t, const float *x, int B, float *out, float *gates);
/* The loss of x (B x n) and its gradient, written (not added) to t->grad.
   recon and lb (may be NULL) receive the two terms; returns their sum. */
MOEXC_DEF float moexc_toy_loss_grad(moexc_toy *t, const float *x, int B, float *recon, float *lb);
/* Loss only (no gradient): what finite differences compare against. */
MOEXC_DEF float moexc_toy_loss(moexc_toy *t, const float *x, int B);
/* One training step: a fresh batch from t->rng, moexc_toy_loss_grad, one
   AdamW update (moexc_adam_update). Returns the loss; sets t->loss/recon/lb. */
MOEXC_DEF float moexc_toy_step(moexc_toy *t);

/* Train many configurations side by side: `steps` steps of each model, the
   models shared out over threads (OpenMP, one model per thread at a time).
   A model's steps depend only on its own seed, so the bits do not depend on
   the thread count at all. threads 0 -> all; progress (may be NULL) is
   called on the calling thread after each model finishes. */
typedef void (*moexc_toy_callback)(int done, int total, void *user);
MOEXC_DEF moexc_status moexc_toy_train_many(moexc_toy *models, int n_models, int steps, int threads,
                                            moexc_toy_callback progress, void *user, moexc_error *err);

/* The metrics of one trained model (SPEC §7). Zero options = defaults. */
typedef struct moexc_toy_metric_options {
    int      n_samples;        /* data samples for usage, specialisation, loss; 0 -> 8192 */
    float    mono_threshold;   /* monosemantic: score below this; 0 -> 0.2              */
    float    norm_threshold;   /* represented: ||W_{e,i}|| at least this; 0 -> 0.5      */
    uint64_t seed;             /* of the metric samples (not the training stream)      */
} moexc_toy_metric_options;

typedef struct moexc_toy_metrics {
    int    n, E;
    float *norm;               /* (E x n) ||W_{e,i}||                                  */
    float *dim;                /* (E x n) D_i^e = ||W_{e,i}||^2 / sum_j (W^_{e,i}.W_{e,j})^2 */
    float *score;              /* (E x n) s_{e,i} = sqrt(sum_{j!=i} (W^_{e,i}.W_{e,j})^2)    */
    float *usage;              /* (E) p_e, mean gate of expert e over the samples      */
    float *special;            /* (E) how often e is the top-1 choice with its
                                  monosemantic features clamped to 1; NaN if it has none */
    float *block_match;        /* (E) fraction of e's monosemantic features inside its
                                  K-hot block; NaN without K-hot init or without any   */
    int   *n_mono_expert;      /* (E) monosemantic features of expert e                */
    float  features_per_dim;   /* (1/k) sum_e p_e ||W_e||_F^2 / m                      */
    float  mono_fraction;      /* monosemantic / represented (e, i) pairs; NaN if none */
    int    n_represented, n_mono;
    float  specialisation;     /* mean of special over experts that have a value; NaN  */
    float  block_coherence;    /* mean of block_match over experts that have a value   */
    float  loss;               /* reconstruction loss on the samples                   */
} moexc_toy_metrics;

MOEXC_DEF moexc_status moexc_toy_measure(moexc_toy *t, const moexc_toy_metric_options *opt,
                                         moexc_toy_metrics *out, moexc_error *err);
MOEXC_DEF void         moexc_toy_metrics_free(moexc_toy_metrics *mt);
/* W_e W_e^T (n x n) of expert e, the picture of "Toy Models of Superposition". */
MOEXC_DEF void         moexc_toy_gram(const moexc_toy *t, int e, float *out);

/* A sweep's table, one row per model: its configuration and its metrics.
   CSV header "model,n,m,E,k,k_over_E,S,importance_decay,init,load_balance,
   loss,features_per_dim,mono_fraction,n_represented,n_mono,specialisation,
   block_coherence". JSON: {"name", "models": [{config, metrics, "experts":
   [{"usage", "special", "block_match", "norm", "dim", "score"}]}]}; NaN -> null.
   Both atomic (temporary file, then rename). */
MOEXC_DEF moexc_status moexc_toy_write_csv(const moexc_toy *models, const moexc_toy_metrics *mt, int n_models,
                                           const char *path, moexc_error *err);
MOEXC_DEF moexc_status moexc_toy_write_json(const moexc_toy *models, const moexc_toy_metrics *mt, int n_models,
                                            const char *name, const char *path, moexc_error *err);
/* The Elhage-style picture of one model on canvas c (whole canvas): a row per
   expert, left the feature norms ||W_{e,i}|| as bars coloured by the
   superposition score s_{e,i} (viridis, 0 to 1 and above), right W_e W_e^T. */
struct moexc_canvas;   /* >>plot */
MOEXC_DEF moexc_status moexc_toy_plot_experts(struct moexc_canvas *c, const moexc_toy *t, const moexc_toy_metrics *mt,
                                              const char *title, moexc_error *err);
/* ---- >>harvest: paired activations, shuffle buffer, activation cache ------ */
/* Run model A (MoE) and model B (dense) over the same token stream and read
   one layer of each (SPEC §3). Pairs (x^A, x^B) of the same token stay
   together through the shuffle buffer and the cache. */

/* The "layer" field of moexc_harvest_options counts blocks from 0; since a
   zero value means "default" (block 3, the paper's), block 0 is asked for
   with this value. */
#define MOEXC_HARVEST_LAYER0 (-1)

typedef struct moexc_harvest_options {
    int      layer;       /* 0 -> 3; MOEXC_HARVEST_LAYER0 for block 0          */
    int      site;        /* moexc_site: 0 = FFN/MoE output, 1 = residual      */
    int      seq_len;     /* T tokens per sequence; 0 -> min(128, contexts)    */
    int      batch_seqs;  /* sequences per model call; 0 -> 8                  */
    int      keep_first;  /* 0: skip position 0 of each sequence (default)     */
    int      sequential;  /* 1: consecutive windows from the start (wrapping);
                             0: windows at uniformly random offsets (default), so
                             a prefix of the stream is not one domain           */
    uint64_t seed;        /* random window offsets                              */
} moexc_harvest_options;

typedef struct moexc_harvester moexc_harvester;

/* Both models must have the same vocabulary. The harvester borrows the
   models and the tokens (keep them alive) and reads windows of seq_len
   tokens at random offsets (or consecutively, see the options). */
MOEXC_DEF moexc_status moexc_harvester_create(moexc_harvester **out, moexc_model *model_a, moexc_model *model_b,
                                              const moexc_tokens *tokens, const moexc_harvest_options *opt,
                                              moexc_error *err);
MOEXC_DEF void moexc_harvester_free(moexc_harvester *h);
/* Width of model m's activations (0 = A, 1 = B). */
MOEXC_DEF int  moexc_harvester_dim(const moexc_harvester *h, int m);
/* Pairs one model call yields (batch_seqs x (seq_len or seq_len - 1)). */
MOEXC_DEF int  moexc_harvester_rows_per_call(const moexc_harvester *h);
/* Next pairs in stream order: writes *rows = moexc_harvester_rows_per_call
   rows to x_a (rows x d_A) and x_b (rows x d_B). */
MOEXC_DEF moexc_status moexc_harvester_next(moexc_harvester *h, float *x_a, float *x_b, int *rows, moexc_error *err);

/* Streaming shuffle buffer: a fixed-capacity pool of pairs. Until it is
   full, pairs are stored; afterwards each incoming pair replaces a uniformly
   chosen stored pair, which is emitted. Memory is capacity x (d_A + d_B)
   floats whatever the number of pairs streamed through. */
typedef struct moexc_shuffle_buffer {
    int      d[2];
    int      capacity, count;
    float   *rows;        /* (capacity x (d_A + d_B)), a pair per row          */
    moexc_rng rng;
} moexc_shuffle_buffer;

MOEXC_DEF moexc_status moexc_shuffle_init(moexc_shuffle_buffer *b, int d_a, int d_b, int capacity,
                                          uint64_t seed, moexc_error *err);
MOEXC_DEF void moexc_shuffle_free(moexc_shuffle_buffer *b);
/* Push n pairs; emitted pairs go to out_a (n x d_A) and out_b (n x d_B),
   their number to *n_out (0 while filling, then n). */
MOEXC_DEF void moexc_shuffle_push(moexc_shuffle_buffer *b, const float *x_a, const float *x_b, int n,
                                  float *out_a, float *out_b, int *n_out);
/* Emit up to max stored pairs (uniformly chosen, without replacement), e.g.
   to drain the buffer at the end of a stream. Returns the number emitted. */
MOEXC_DEF int  moexc_shuffle_pop(moexc_shuffle_buffer *b, float *out_a, float *out_b, int max);

/* Activation cache on disk, little-endian whatever the host:
     offset 0   8 bytes  magic "MOEXCACT"
            8   u32      version (1)
           12   u32      d_A
           16   u32      d_B
           20   u32      reserved (0)
           24   u64      count (pairs)
           32   count x (d_A + d_B) float32: x^A then x^B of each pair
          end   u32      CRC-32 (zlib) of the float bytes
   Written through a temporary file renamed into place on close. */
typedef struct moexc_act_cache {
    int      d[2];
    uint64_t count;       /* pairs written, or pairs in the file              */
    uint64_t position;    /* reader: pairs already read                       */
    uint32_t crc;
    int      writing;
    void    *file;        /* FILE *                                           */
    char     path[4096], tmp_path[4100];
    float   *scratch;     /* one pair                                         */
} moexc_act_cache;

MOEXC_DEF moexc_status moexc_act_cache_create(moexc_act_cache *c, const char *path, int d_a, int d_b, moexc_error *err);
MOEXC_DEF moexc_status moexc_act_cache_append(moexc_act_cache *c, const float *x_a, const float *x_b, int n,
                                              moexc_error *err);
/* Writer: finish and rename into place. Reader: close. Always frees. */
MOEXC_DEF moexc_status moexc_act_cache_close(moexc_act_cache *c, moexc_error *err);
/* Open for reading: validates magic, version, widths and the file size. */
MOEXC_DEF moexc_status moexc_act_cache_open(moexc_act_cache *c, const char *path, moexc_error *err);
/* Read up to max pairs; *n receives how many (0 at the end). The CRC is
   checked when the last pair has been read (MOEXC_ERR_CHECKSUM then). */
MOEXC_DEF moexc_status moexc_act_cache_read(moexc_act_cache *c, float *x_a, float *x_b, int max, int *n,
                                            moexc_error *err);
/* Abandon a writer without producing the file. */
MOEXC_DEF void moexc_act_cache_abort(moexc_act_cache *c);

/* ---- >>crosscoder: L1 and BatchTopK crosscoders with shared latents ------- */
/* SPEC §4. Model A (index 0) is the MoE, model B (index 1) the dense model.
     f     = ReLU( sum_m x^m W_enc^m + b_enc )           W_enc^m (d_m x F)
     x̂^m  = f W_dec^m + b_dec^m                          W_dec^m (F x d_m)
   By default training encodes the centred input (SAE practice, Gao et al.
   2024, Bussmann et al. 2024): f = ReLU( sum_m (x^m - b_dec^m) W_enc^m + b_enc ),
   the same function with SPEC's bias b_enc - sum_m b_dec^m W_enc^m; the saved
   "encoder.bias" is that SPEC-form bias (option uncentred_encoder).
   Inputs are raw activations; internally they are multiplied by the
   normalisation scalars s_m (mean ||s_m x^m|| = sqrt(d_m)), and outputs are
   returned in raw units. The first n_shared latents have ONE decoder row for
   both models (exact tying; needs d_A == d_B).

   Saved crosscoder (safetensors; the layout of the public PyTorch crosscoder
   libraries, normalisation folded in so it works on raw activations):
     d_A == d_B == d:
       "encoder.weight"  (2, d, F)   W_enc^m * s_m
       "encoder.bias"    (F)          SPEC's b_enc: for the centred encoder
                                     b_enc - sum_m b_dec^m W_enc^m (unchanged by s_m)
       "decoder.weight"  (2, F, d)   W_dec^m / s_m (a shared row is stored in both
                                     slices; they differ by the factor s_A / s_B)
       "decoder.bias"    (2, d)      b_dec^m / s_m
     d_A != d_B: per-model tensors "encoder.weight.0" (d_A, F),
       "encoder.weight.1" (d_B, F), "decoder.weight.0" (F, d_A),
       "decoder.weight.1" (F, d_B), "decoder.bias.0" (d_A), "decoder.bias.1" (d_B)
     "threshold" (1)   BatchTopK inference threshold theta on scores f_i w_i, with
                       w_i = sum_m s_m ||d_i^m|| in terms of the saved rows (the
                       normalised-unit decoder norms); -1 = not estimated
     metadata: format "moexc-crosscoder", version "1", variant ("batchtopk" or
       "l1"), n_latents, k, n_shared, d_a, d_b, scale_a, scale_b (the folded
       s_m), lambda_f, lambda_ratio, aux_k, aux_alpha, folded ("1"),
       threshold_units ("normalised"), uncentred_encoder, step. A file
       without uncentred_encoder is read as uncentred (1).
   A training checkpoint (moexc_xc_save_training) stores the same tensors
   unfolded (folded "0"; multiply inputs by scale_m before using it), its
   "encoder.bias" the parameter b_enc itself (for the centred encoder the
   encoder reads s_m x^m - b_dec^m), plus
     "train.adam_m", "train.adam_v" (P)  Adam moments over the flat internal
                       parameter vector (moexc_xc_num_params)
     "train.since_fired" (F)            tokens since each latent last fired
   and metadata step, threshold_count, options (steps, lr, batch, seed, ...).
   Loading checks every shape and metadata value, unfolds, checks that the
   shared rows of the two slices agree (relative 1e-5), then re-ties them. */

typedef enum moexc_xc_variant { MOEXC_XC_BATCHTOPK = 0, MOEXC_XC_L1 = 1 } moexc_xc_variant;

/* Zero value = defaults. "off" values are negative. */
typedef struct moexc_xc_options {
    int      n_latents;     /* F; 0 -> 8 * (d_A + d_B)                               */
    int      variant;       /* moexc_xc_variant; 0 = BatchTopK                       */
    int      k;             /* BatchTopK: mean active latents per token; 0 -> 32     */
    int      n_shared;      /* designated shared latents (first n_s); needs d_A == d_B */
    float    lambda_f;      /* decoder-norm L1 weight; 0 -> 2.0 for L1, off for BatchTopK
                               (set > 0 for the seed's TopK + penalty hybrid)        */
    float    lambda_ratio;  /* lambda_s / lambda_f; 0 -> 0.15                        */
    int      aux_k;         /* AuxK latents per token; 0 -> max(d_A, d_B) / 2, < 0 off;
                               BatchTopK only                                        */
    float    aux_alpha;     /* 0 -> 1/32                                             */
    int      aux_exact_relu;/* AuxK's gradient at a selected dead latent whose pre-
                               activation is negative (so f_aux = ReLU = 0):
                               0 (default): straight-through, as if the ReLU were the
                               identity there, so a latent negative on every token
                               is still pushed up where its decoder row points along
                               the residual; 1: the exact ReLU gradient, 0 (the
                               references: OpenAI's TopK SAE, Bussmann et al.)     */
    int64_t  dead_tokens;   /* n_dead: dead after this many tokens without firing;
                               0 -> min(10M, steps * batch / 20)                     */
    int      steps;         /* total optimiser steps (schedules); 0 -> 10000         */
    int      batch;         /* tokens per step (only for defaults above); 0 -> 1024  */
    float    lr;            /* 0 -> min(1e-3, 2e-4 / sqrt(F / 2^14))                 */
    int      warmup_steps;  /* 0 -> min(1000, steps / 20)                            */
    float    decay_frac;    /* linear decay over the last fraction; 0 -> 0.2         */
    float    lambda_warmup; /* lambda_f ramp as a fraction of steps; 0 -> 0.05       */
    float    clip;          /* global gradient-norm clip; 0 -> 1.0, < 0 off          */
    float    init_norm;     /* decoder row norm at init; 0 -> 0.08 (L1), 1.0 (BatchTopK) */
    int      uncentred_encoder; /* 0 (default): the encoder reads x^m - b_dec^m,
                               f = ReLU(sum_m (x^m - b_dec^m) W_enc^m + b_enc), as TopK
                               SAEs do; SPEC's form with its bias b_enc - sum_m b_dec^m
                               W_enc^m (saved that way). Keeps pre-activations centred,
                               so latents (and AuxK's dead latents) are not negative on
                               every token. 1: the encoder reads x^m as SPEC writes it
                               (with b_enc = 0 at init, half the latents start
                               negative on the mean and many die)                 */
    float    threshold_beta;   /* EMA of the smallest kept score; 0 -> 0.999, scaled to
                                  the run: min(0.999, max(0.9, 1 - 10 / steps))      */
    int      threshold_start;  /* first step of the EMA; 0 -> warmup_steps           */
    int      dense_only;    /* 1: always dense GEMMs (the sparse decoder path is used
                               when at most 1/8 of f is non-zero; same results up to
                               summation order)                                      */
    uint64_t seed;
    moexc_reduce reduce;    /* data-parallel hook (zero: one worker; see moexc_reduce).
                               Each worker passes its own n pairs to train_step (the
                               same n on every worker, global batch W n: worker r's
                               rows are rows [r n, (r+1) n) of it). BatchTopK keeps
                               the k W n largest scores of the global batch, ties
                               to the lowest global row; the dead-latent counters,
                               AuxK's normaliser, the step statistics and
                               moexc_xc_evaluate (each worker scores its share of
                               the set it is given) are global; moexc_xc_loss_grad
                               leaves the gradient this worker's part (train_step
                               sums it). init_from_data and encode are not
                               reduced: give every worker the same init sample.
                               Not saved: see moexc_xc_set_reduce.                  */
} moexc_xc_options;

typedef struct moexc_xc moexc_xc;

/* What one training step measured (on the batch, before the update). */
typedef struct moexc_xc_step_stats {
    double loss;            /* rec + penalty + aux_alpha * aux                      */
    double rec;             /* mean_b sum_m ||x^m - x̂^m||^2 (normalised units)      */
    double rec_m[2];
    double penalty;         /* decoder-norm L1 terms (with the ramped lambda)       */
    double aux;             /* L_aux (before alpha); 0 when no latent is dead       */
    double fve[2];          /* on this batch                                        */
    double l0;              /* mean active latents per token                        */
    double dead_fraction;   /* latents not fired for dead_tokens tokens             */
    double grad_norm;       /* before clipping                                      */
    double lr, lambda;      /* the values used in this step                         */
    double min_kept_score;  /* BatchTopK: smallest kept score of the batch          */
} moexc_xc_step_stats;

/* Held-out evaluation (SPEC §5). FVE in normalised units (per-model FVE does
   not depend on the units; the pooled ratio of sums weighs both models as
   the training loss does). L0 and density use the inference rule. */
typedef struct moexc_xc_eval {
    int64_t n;              /* tokens evaluated                                     */
    double  fve[2], fve_pooled;
    double  l0;             /* mean active latents per token                        */
    double  dead_fraction;  /* latents never active on the set                      */
    double  mse[2];         /* mean_b ||x^m - x̂^m||^2, normalised units              */
} moexc_xc_eval;

MOEXC_DEF moexc_status moexc_xc_create(moexc_xc **out, int d_a, int d_b, const moexc_xc_options *opt,
                                       moexc_error *err);
MOEXC_DEF void moexc_xc_free(moexc_xc *xc);
/* The resolved options (defaults filled in). */
MOEXC_DEF const moexc_xc_options *moexc_xc_get_options(const moexc_xc *xc);
MOEXC_DEF int   moexc_xc_dim(const moexc_xc *xc, int m);
MOEXC_DEF float moexc_xc_scale(const moexc_xc *xc, int m);      /* s_m                     */
MOEXC_DEF float moexc_xc_threshold(const moexc_xc *xc);         /* theta, -1 before any EMA */
MOEXC_DEF int   moexc_xc_step(const moexc_xc *xc);              /* optimiser steps taken   */

/* Initialise from a sample of n pairs (raw): s_m, decoder rows (random
   directions of norm init_norm), W_enc^m = (W_dec^m)^T, b_enc = 0,
   b_dec^m = mean of s_m x^m. */
MOEXC_DEF moexc_status moexc_xc_init_from_data(moexc_xc *xc, const float *x_a, const float *x_b, int n,
                                               moexc_error *err);
/* Set s_m directly (e.g. 1, 1 for data that is already normalised). */
MOEXC_DEF void moexc_xc_set_scales(moexc_xc *xc, float s_a, float s_b);

/* One optimiser step on n pairs: forward, backward, clip, Adam, then the
   dead-latent counters and the threshold EMA. A non-finite loss, gradient or
   updated parameter fails with MOEXC_ERR_NUMERIC naming the step and the
   first such tensor; the step is not counted and the parameters may hold its
   update (reload a checkpoint). */
MOEXC_DEF moexc_status moexc_xc_train_step(moexc_xc *xc, const float *x_a, const float *x_b, int n,
                                           moexc_xc_step_stats *stats, moexc_error *err);

/* Loss and gradient without an update (gradients are zeroed first). For
   gradient checks; train_step is this plus the optimiser. */
MOEXC_DEF moexc_status moexc_xc_loss_grad(moexc_xc *xc, const float *x_a, const float *x_b, int n,
                                          moexc_xc_step_stats *stats, moexc_error *err);
/* Gradient checks: 1 = reuse the BatchTopK kept set, the AuxK selection and
   the AuxK target e (a stop-gradient constant) of the last moexc_xc_loss_grad
   call (same n), so a finite difference differentiates exactly what the
   backward pass does and does not cross a selection boundary. */
MOEXC_DEF void moexc_xc_freeze_selection(moexc_xc *xc, int frozen);
/* Mark latents dead (1) or alive (0) directly, e.g. to test AuxK. */
MOEXC_DEF void moexc_xc_set_dead(moexc_xc *xc, int latent, int dead);

/* Flat parameter vector, llm.c style (one allocation, gradients and Adam
   moments share its layout):
     W_enc^A (d_A x F) | W_enc^B (d_B x F) | b_enc (F) |
     W_dec^A (F x d_A, rows 0..n_s-1 are the shared rows) |
     W_dec^B exclusive rows ((F - n_s) x d_B) | b_dec^A (d_A) | b_dec^B (d_B)
   all in normalised units. */
MOEXC_DEF size_t moexc_xc_num_params(const moexc_xc *xc);
MOEXC_DEF float *moexc_xc_params(moexc_xc *xc);
MOEXC_DEF float *moexc_xc_grads(moexc_xc *xc);
/* Row i of W_dec^m (normalised units); for i < n_s both models return the
   same pointer (the tied row). */
MOEXC_DEF const float *moexc_xc_decoder_row(const moexc_xc *xc, int m, int i);
/* Full W_dec^m (F x d_m) into out, in normalised units (folded = 0) or raw
   units as saved (folded = 1, W_dec^m / s_m). Feed to moexc_analyze_latents. */
MOEXC_DEF void moexc_xc_decoder(const moexc_xc *xc, int m, int folded, float *out);

/* Inference. Latent activations f (n x F) of raw inputs: ReLU pre-
   activations; BatchTopK keeps f_i where f_i w_i > theta (before theta is
   estimated: the k*n largest scores of this batch). */
MOEXC_DEF moexc_status moexc_xc_encode(moexc_xc *xc, const float *x_a, const float *x_b, int n, float *f,
                                       moexc_error *err);
/* Reconstructions (raw units) x̂^A (n x d_A), x̂^B (n x d_B) of latents f. */
MOEXC_DEF void moexc_xc_decode(const moexc_xc *xc, const float *f, int n, float *xhat_a, float *xhat_b);
/* FVE, L0, dead fraction on a held-out set, in chunks of <= 1024 pairs.
   active_counts (F, may be NULL) receives per-latent active-token counts
   (for moexc_analyze_latents). */
MOEXC_DEF moexc_status moexc_xc_evaluate(moexc_xc *xc, const float *x_a, const float *x_b, int64_t n,
                                         moexc_xc_eval *out, int64_t *active_counts, moexc_error *err);

/* Save the inference crosscoder (folded, layout above), atomically. */
MOEXC_DEF moexc_status moexc_xc_save(const moexc_xc *xc, const char *path, moexc_error *err);
/* Save everything needed to resume training bit for bit. */
MOEXC_DEF moexc_status moexc_xc_save_training(const moexc_xc *xc, const char *path, moexc_error *err);
/* Load either kind. A folded file is unfolded with its scale_m metadata so
   that training can continue in normalised units; Adam state is restored
   when present. */
MOEXC_DEF moexc_status moexc_xc_load(moexc_xc **out, const char *path, moexc_error *err);
/* Attach (or with NULL / sum NULL detach) the data-parallel hook, e.g. to a
   loaded crosscoder. */
MOEXC_DEF moexc_status moexc_xc_set_reduce(moexc_xc *xc, const moexc_reduce *r, moexc_error *err);
/* ---- >>sae: TopK, Switch and Scale sparse autoencoders made of experts ----- */
/* SPEC §8. One model's activations x (d wide; one side of a harvested pair or
   one model's cache), normalised like the crosscoder's (mean ||s x|| =
   sqrt(d), folded into the weights on save). F latents in E experts of
   F_e = F / E latents each (expert e owns latents e F_e .. (e+1) F_e - 1).
   With x_c = s x - b_dec (the centred input, as the crosscoder's default):
     router (E > 1)  p = softmax(x_c W_r^T + b_r)                 W_r (E x d)
     pre_i           = M_i . x_c + b_enc_i                         M = W_enc (F x d)
     Scale SAE       pre_i = M̂_i . x_c + b_enc_i with the feature scaling
                     M̂_e = A_e + (1 + w_e)(M_e - A_e), A_e = Λ mean_rows(M_e)
                     (every row of A_e is the vector a_e = Λ μ_e), that is
                     pre_i = (1 + w_e) M_i . x_c - w_e a_e . x_c + b_enc_i;
                     Λ (d x d) starts at the identity, w_e at 0
     variants        TopK   E = 1, gate g = 1 (the baseline)
                     Switch the top-1 expert e*, g = p_e*
                     Scale  the top-e experts by p, g_e = p_e / sum_{selected} p
                            (the softmax over their logits)
     z_i             = g_e ReLU(pre_i) for the latents of the selected experts
     TopK            keep the k largest z_i of each token (one global TopK over
                     the selected experts' latents), zero the rest
     x̂             = sum_{kept i} z_i d_i + b_dec                 d_i row i of W_dec (F x d)
   Loss (normalised units): mean_b ||s x_b - x̂_b||^2 + aux_alpha L_aux
   + lb_alpha L_lb, with AuxK over dead latents as the crosscoder's (the top
   aux_k pre-activations of the dead latents, ungated, whatever the routing)
   and the Switch Transformer's load-balancing loss on the router
     L_lb = E sum_e f_e P_e,  f_e = share of the batch's routing slots that
            went to e (a constant), P_e = mean_b p_be
   (1 when balanced). The encoder evaluates the router and the selected
   experts' latents only (per expert one GEMM over the rows routed to it),
   plus in training the dead latents on every row (AuxK); the dead latents'
   cost is not in moexc_sae_encoder_flops.

   Saved SAE (safetensors, normalisation folded in, works on raw activations):
     "encoder.weight" (F, d)   s W_enc (the M_e blocks stacked; Scale: before
                               the feature scaling)
     "encoder.bias"   (F)      b_enc; the encoder reads x - "decoder.bias"
     "decoder.weight" (F, d)   W_dec / s
     "decoder.bias"   (d)      b_dec / s
     "router.weight"  (E, d)   s W_r, "router.bias" (E)      (E > 1)
     "scale.lambda"   (d, d)   Λ, "scale.omega" (E)           (Scale SAE)
     metadata: format "moexc-sae", version "1", variant (topk, switch,
       scale), n_latents, k, n_experts, active_experts, d, scale (the folded
       s), folded, lb_alpha, aux_k, aux_alpha, aux_exact_relu, dead_tokens, steps, batch, lr,
       warmup_steps, decay_frac, clip, init_norm, seed, step.
   A training checkpoint (moexc_sae_save_training) holds the same tensors
   unfolded (folded "0") plus "train.adam_m", "train.adam_v" (P) and
   "train.since_fired" (F, I64: exact token counts). Loading reads the
   integer metadata exactly (decimal digits, no exponent or fraction), checks
   every range and shape, that the sizes fit the file before allocating, that
   every parameter and Adam moment is finite (the second moment >= 0) and the
   counters >= 0, then unfolds. */

typedef enum moexc_sae_variant { MOEXC_SAE_TOPK = 0, MOEXC_SAE_SWITCH = 1, MOEXC_SAE_SCALE = 2 } moexc_sae_variant;

/* Zero value = defaults. "off" values are negative. */
typedef struct moexc_sae_options {
    int      variant;        /* moexc_sae_variant; 0 = TopK                          */
    int      n_latents;      /* F; 0 -> 16 d                                        */
    int      k;              /* active latents per token; 0 -> min(32, F_e e)       */
    int      n_experts;      /* E; 0 -> 1 (TopK), 8 (Switch, Scale); TopK needs 1   */
    int      active_experts; /* experts per token; 0 -> 1 (Switch, TopK), 2 (Scale) */
    float    lb_alpha;       /* load-balancing weight; 0 -> 1, < 0 off. L_lb is 1 when
                                balanced, the reconstruction loss about d (1 - FVE),
                                so a weight of 1 keeps the two comparable (a weight
                                as small as the LMs' 0.01 lets routing collapse)    */
    int      aux_k;          /* AuxK latents per token; 0 -> d / 2, < 0 off          */
    float    aux_alpha;      /* 0 -> 1/32                                           */
    int      aux_exact_relu; /* as the crosscoder's: 0 (default) AuxK's gradient passes
                                straight through the ReLU at a selected dead latent's
                                negative pre-activation; 1 only positive ones are
                                selected and the gradient is the exact one      */
    int64_t  dead_tokens;    /* dead after this many tokens without firing;
                                0 -> min(10M, steps * batch / 20)                    */
    int      steps;          /* optimiser steps (schedule); 0 -> 5000                */
    int      batch;          /* tokens per step (only for defaults above); 0 -> 1024 */
    float    lr;             /* 0 -> min(1e-3, 2e-4 / sqrt(F / 2^14))                */
    int      warmup_steps;   /* 0 -> min(1000, steps / 20)                           */
    float    decay_frac;     /* linear decay over the last fraction; 0 -> 0.2        */
    float    clip;           /* global gradient-norm clip; 0 -> 1.0, < 0 off         */
    float    init_norm;      /* decoder row norm at init; 0 -> 1                     */
    uint64_t seed;
} moexc_sae_options;

typedef struct moexc_sae moexc_sae;

/* What one training step measured (on the batch, before the update). */
typedef struct moexc_sae_step_stats {
    double loss;             /* rec + aux_alpha aux + lb_alpha lb                     */
    double rec;              /* mean_b ||s x - x̂||^2 (normalised units)               */
    double aux;              /* L_aux (before alpha); 0 when no latent is dead        */
    double lb;               /* L_lb (before alpha); 0 without a router               */
    double fve;              /* on this batch                                         */
    double l0;               /* mean active latents per token                         */
    double dead_fraction;    /* latents not fired for dead_tokens tokens              */
    double grad_norm;        /* before clipping                                       */
    double lr;
} moexc_sae_step_stats;

/* Held-out evaluation: FVE = 1 - sum_dims Var(x - x̂) / sum_dims Var(x), L0,
   the fraction of latents never active on the set, the MSE (normalised units),
   and the share of routing slots per expert. */
typedef struct moexc_sae_eval {
    int64_t n;
    double  fve, l0, dead_fraction, mse;
    double  expert_share[64];  /* first min(E, 64) experts; sums to 1          */
} moexc_sae_eval;

MOEXC_DEF moexc_status moexc_sae_create(moexc_sae **out, int d, const moexc_sae_options *opt, moexc_error *err);
MOEXC_DEF void moexc_sae_free(moexc_sae *sae);
MOEXC_DEF const moexc_sae_options *moexc_sae_get_options(const moexc_sae *sae);  /* resolved */
MOEXC_DEF int   moexc_sae_dim(const moexc_sae *sae);
MOEXC_DEF float moexc_sae_scale(const moexc_sae *sae);                          /* s        */
MOEXC_DEF int   moexc_sae_step(const moexc_sae *sae);
MOEXC_DEF const char *moexc_sae_variant_name(int variant);   /* "topk", "switch", "scale" */

/* From a sample of n raw rows: s, b_dec = mean of s x, decoder rows random
   directions of norm init_norm, W_enc = W_dec, b_enc = 0, router rows
   normal with standard deviation 1/d, Λ = I, w = 0. */
MOEXC_DEF moexc_status moexc_sae_init_from_data(moexc_sae *sae, const float *x, int n, moexc_error *err);
MOEXC_DEF void moexc_sae_set_scale(moexc_sae *sae, float s);

/* One optimiser step on n raw rows: forward, backward, clip, Adam (shared
   with the crosscoder), then the dead-latent counters. */
MOEXC_DEF moexc_status moexc_sae_train_step(moexc_sae *sae, const float *x, int n, moexc_sae_step_stats *stats,
                                            moexc_error *err);
/* Loss and gradient without an update. */
MOEXC_DEF moexc_status moexc_sae_loss_grad(moexc_sae *sae, const float *x, int n, moexc_sae_step_stats *stats,
                                           moexc_error *err);
/* Gradient checks: 1 = reuse the last loss_grad's routing (experts per
   token), kept latents, AuxK latents, AuxK target and load-balancing counts
   (same n): the loss is then a smooth function of every parameter, gates and
   feature scaling included. */
MOEXC_DEF void moexc_sae_freeze_selection(moexc_sae *sae, int frozen);
MOEXC_DEF void moexc_sae_set_dead(moexc_sae *sae, int latent, int dead);

/* Flat parameter vector (normalised units), gradients and Adam moments alike:
     W_enc (F x d) | b_enc (F) | W_dec (F x d) | b_dec (d) |
     W_r (E x d) | b_r (E)          (E > 1; empty otherwise) |
     Λ (d x d) | w (E)              (Scale SAE; empty otherwise) */
MOEXC_DEF size_t moexc_sae_num_params(const moexc_sae *sae);
MOEXC_DEF float *moexc_sae_params(moexc_sae *sae);
MOEXC_DEF float *moexc_sae_grads(moexc_sae *sae);
/* W_dec (F x d) in normalised units (folded = 0) or raw units (W_dec / s). */
MOEXC_DEF void moexc_sae_decoder(const moexc_sae *sae, int folded, float *out);

/* Inference on raw rows (n of any size; processed in chunks): latents z
   (n x F, dense, zeros outside the kept set; may be NULL), the experts each
   token used (n x active_experts; may be NULL) and the reconstruction x̂ in
   raw units (n x d; may be NULL). */
MOEXC_DEF moexc_status moexc_sae_encode(moexc_sae *sae, const float *x, int n, float *z, int *experts, float *xhat,
                                        moexc_error *err);
/* FVE, L0, dead fraction, expert shares on held-out rows. active_counts (F,
   may be NULL) receives per-latent active-token counts. */
MOEXC_DEF moexc_status moexc_sae_evaluate(moexc_sae *sae, const float *x, int64_t n, moexc_sae_eval *out,
                                          int64_t *active_counts, moexc_error *err);
/* Encoder FLOPs per token (2 per multiply-add) at inference, where the
   router and the selected experts are evaluated:
     TopK    2 F d
     Switch  2 E d + 2 F_e d
     Scale   2 E d + e (2 F_e d + 2 d + 2 F_e)   (a_e . x_c, then scale and shift)
   (biases, softmax and the TopK itself are not counted). */
MOEXC_DEF double moexc_sae_encoder_flops(const moexc_sae *sae);

/* Redundancy of a dictionary (SPEC §8): rows (F x d) are normalised, their
   Gram matrix is computed in blocks of GEMMs, and each row's largest cosine
   with another row is taken. *frac = share of rows whose largest cosine
   exceeds thresh (0.9 in SPEC), *mean_max = the mean largest cosine; zero
   rows count as cosine 0. max_cos (F, may be NULL) receives each row's. */
MOEXC_DEF moexc_status moexc_redundancy(const float *rows, int F, int d, float thresh, double *frac, double *mean_max,
                                        float *max_cos, moexc_error *err);

/* Spliced loss of an SAE (SPEC §5.2), into one model slot of a splice
   accumulator (moexc_splice_acc, >>analysis): over up to max_seqs held-out
   windows per domain (the trainer's split, eval_fraction), model `model` runs
   clean, with block `layer`'s `site` replaced by the SAE's reconstruction, by
   zeros and by the site's mean over the same tokens; moexc_splice_acc_recovered
   (acc, slot, ...) is then the fraction of loss recovered. Position 0 of each
   window keeps its clean value unless keep_first. */
struct moexc_splice_acc;
MOEXC_DEF moexc_status moexc_sae_splice(moexc_sae *sae, moexc_model *model, const moexc_tokens *data, int layer,
                                        moexc_site site, int seq_len, int max_seqs, float eval_fraction, int keep_first,
                                        struct moexc_splice_acc *acc, int slot, moexc_error *err);

/* Save the inference SAE (folded), or everything needed to resume training;
   load either kind (validated). */
MOEXC_DEF moexc_status moexc_sae_save(const moexc_sae *sae, const char *path, moexc_error *err);
MOEXC_DEF moexc_status moexc_sae_save_training(const moexc_sae *sae, const char *path, moexc_error *err);
MOEXC_DEF moexc_status moexc_sae_load(moexc_sae **out, const char *path, moexc_error *err);

/* ---- >>analysis: relative decoder norm, classes, cosines, density, FVE ---- */
/* Everything here takes plain arrays, so it works on any crosscoder:
   W_dec^A (F x d_A) and W_dec^B (F x d_B) row-major (A = MoE, B = dense),
   the first n_s latents designated shared, per-latent activation counts over
   an evaluation set, latent activations f (N x F), inputs x and
   reconstructions x_hat (N x d). SPEC §5 has the formulas. */

typedef enum moexc_latent_class {
    MOEXC_CLASS_MOE_ONLY = 0,   /* r in [0, moe_max)                          */
    MOEXC_CLASS_SHARED,         /* r in [moe_max, dense_min]                  */
    MOEXC_CLASS_DENSE_ONLY,     /* r in (dense_min, 1]                        */
    MOEXC_CLASS_DESIGNATED,     /* the first n_s latents (one tied decoder)   */
    MOEXC_CLASS_DEAD,           /* never active on the evaluation set, or both decoder rows zero */
    MOEXC_CLASS_COUNT
} moexc_latent_class;

/* "moe-only", "shared", "dense-only", "designated", "dead". */
MOEXC_DEF const char *moexc_latent_class_name(int cls);
/* Colour-blind-safe class colour (Okabe-Ito), 0xRRGGBB. */
MOEXC_DEF uint32_t    moexc_latent_class_color(int cls);

/* Zero value = the paper's defaults. */
typedef struct moexc_analysis_options {
    double   moe_max;        /* MoE-only: r < moe_max; 0 -> 0.3 (strict: 0.1)        */
    double   dense_min;      /* dense-only: r > dense_min; 0 -> 0.7 (strict: 0.9)    */
    int      strict;         /* 1: default bands 0.1 / 0.9 (Minder et al.)           */
    int      n_random_pairs; /* cosine baseline sample size; 0 -> 10000             */
    uint64_t seed;           /* seed of the random-pair baseline                     */
} moexc_analysis_options;

/* Per-class statistics. NaN where a statistic has no data (empty class,
   no activation counts, d_A != d_B for cosines). */
typedef struct moexc_class_summary {
    int64_t count;
    double  r_lo, r_hi;          /* band edges (designated: 0.5, dead: NaN)      */
    int     lo_open, hi_open;    /* 1 when the edge is excluded                  */
    double  r_mean;
    double  density_mean, density_median;
    double  cos_mean, cos_median, cos_frac_negative;
} moexc_class_summary;

/* Result of moexc_analyze_latents; free with moexc_latent_analysis_free. */
typedef struct moexc_latent_analysis {
    int      n_latents;          /* F                                              */
    int      n_shared;           /* n_s                                            */
    int      d_a, d_b;
    double   moe_max, dense_min; /* the bands used                                 */
    int64_t  n_tokens;           /* evaluation tokens (0: no counts given)         */
    float   *norm_a, *norm_b;    /* (F) ||d_i^A||, ||d_i^B||                       */
    float   *r;                  /* (F) ||d^B|| / (||d^A|| + ||d^B||), NaN if both 0 */
    float   *cosine;             /* (F) cos(d_i^A, d_i^B); NaN if a norm is 0 or d_A != d_B */
    float   *density;            /* (F) fraction of eval tokens active; NaN without counts */
    uint8_t *cls;                /* (F) moexc_latent_class                         */
    moexc_class_summary classes[MOEXC_CLASS_COUNT];
    /* Baseline: cos(d_i^A, d_j^B) for random live latents i != j. */
    int      n_random_pairs;
    float   *random_cosine;      /* (n_random_pairs)                               */
    double   random_cos_mean, random_cos_median, random_cos_frac_negative;
} moexc_latent_analysis;

/* Relative decoder norms, classes, cosines, densities and per-class stats.
     r_i   = ||d_i^B|| / (||d_i^A|| + ||d_i^B||)   (0 = MoE-only, 1 = dense-only)
     cos_i = d_i^A . d_i^B / (||d_i^A|| ||d_i^B||)  (needs d_A == d_B)
   active_counts (F, may be NULL) counts the evaluation tokens on which each
   latent fired, out of n_tokens; density_i = count_i / n_tokens, and a latent
   with count 0 is dead. Dead takes precedence over designated. */
MOEXC_DEF moexc_status moexc_analyze_latents(moexc_latent_analysis *out,
                                             const float *dec_a, int d_a,
                                             const float *dec_b, int d_b,
                                             int n_latents, int n_shared,
                                             const int64_t *active_counts, int64_t n_tokens,
                                             const moexc_analysis_options *opt, moexc_error *err);
MOEXC_DEF void moexc_latent_analysis_free(moexc_latent_analysis *a);

/* Median of n floats (NaNs skipped; NaN when none); does not modify x. */
MOEXC_DEF double moexc_median(const float *x, size_t n, moexc_error *err);

/* ---- seed controls: spread over seeds, latent overlap, verdicts ---------- */
/* SPEC §5.1: a count means something only against its null, two models that
   differ only in their seeds (dense-vs-dense, MoE-vs-MoE), and over several
   crosscoder seeds. */

/* Mean and sample standard deviation (n - 1) of n values; sd is NaN when
   n < 2, both NaN when n < 1. NaN values are skipped. */
MOEXC_DEF void moexc_mean_sd(const double *x, int n, double *mean, double *sd);

/* Overlap of two sets of latents from two crosscoders (seeds) on the same
   pair of models: the fraction of set 1's latents idx1 (n1 of them) that
   match some latent of set 2 (idx2, n2), where latents i and j match when
   cos(d_i^m, d_j^m) > min_cos in each model m that `models` names (bit 0:
   model A, bit 1: model B). For exclusive latents pass the model that
   carries them (A for MoE-only, B for dense-only): the other model's row is
   near zero by construction and its direction is noise. NaN when n1 == 0. */
MOEXC_DEF double moexc_latent_overlap(const float *dec_a1, const float *dec_b1, const int *idx1, int n1,
                                      const float *dec_a2, const float *dec_b2, const int *idx2, int n2,
                                      int d_a, int d_b, int models, double min_cos);

typedef enum moexc_verdict {
    MOEXC_VERDICT_HOLDS = 0,          /* same direction as the paper in every seed, beyond the controls */
    MOEXC_VERDICT_REVERSED,           /* opposite direction in every seed, beyond the controls          */
    MOEXC_VERDICT_NOT_DISTINGUISHABLE,/* one direction in every seed, within a control's spread         */
    MOEXC_VERDICT_MIXED,              /* the direction changes between seeds                            */
    MOEXC_VERDICT_NO_DATA,            /* a statistic is NaN in every seed                               */
    MOEXC_VERDICT_TOO_FEW_SEEDS,      /* a control has no spread to compare with (fewer than 2 seeds)   */
    MOEXC_VERDICT_COUNT
} moexc_verdict;

/* "holds", "reversed", "not distinguishable from the seed control",
   "mixed across seeds", "no data", "too few seeds to judge". */
MOEXC_DEF const char *moexc_verdict_name(int verdict);

/* The verdict on one finding. main (n_main seeds) holds a signed statistic
   of the MoE-vs-dense crosscoders that is > 0 when the paper's finding
   holds in that seed (e.g. dense-only count - MoE-only count for "fewer
   MoE-only than dense-only latents"); ctrl holds the same statistic for
   n_ctrl_sets controls of n_ctrl seeds each (ctrl[c * n_ctrl + s]). The
   difference is beyond a control when |mean_main - mean_ctrl| > 2 sd
   (strictly), sd the control's over its seeds; when fewer than 2 of the
   control's seeds are valid, the main statistic's sd over its seeds (both
   measure the seed-to-seed noise of one pair); when neither has 2 valid
   seeds, TOO_FEW_SEEDS. No controls: judged on the direction alone. NaN
   seeds are skipped. */
MOEXC_DEF moexc_verdict moexc_finding_verdict(const double *main, int n_main, const double *ctrl,
                                              int n_ctrl_sets, int n_ctrl);

/* ---- aligned cosines: orthogonal Procrustes -------------------------------- */
/* The two models' activation spaces have unrelated bases. Q (d_B x d_A) is
   the orthogonal map (Q^T Q = I when d_B >= d_A, Q Q^T = I otherwise) that
   best carries centred x^A onto centred x^B:
     M = sum_b (x_b^B - mean^B)(x_b^A - mean^A)^T = U S V^T,   Q = U V^T
   (a positive scale of either model changes nothing). The aligned cosine
   of a latent is cos(Q d_i^A, d_i^B): moexc_procrustes_apply to the A
   decoder, then moexc_analyze_latents. */
typedef struct moexc_procrustes_acc {
    int      d_a, d_b;
    int64_t  n;
    double  *cross;              /* (d_B x d_A) sum_b x_b^B x_b^A^T            */
    double  *sum_a, *sum_b;      /* (d_A), (d_B)                              */
    float   *chunk;              /* (d_B x d_A) one chunk's float product      */
} moexc_procrustes_acc;

MOEXC_DEF moexc_status moexc_procrustes_acc_init(moexc_procrustes_acc *acc, int d_a, int d_b, moexc_error *err);
/* x_a (n x d_A), x_b (n x d_B): paired rows. */
MOEXC_DEF moexc_status moexc_procrustes_acc_add(moexc_procrustes_acc *acc, const float *x_a, const float *x_b, int n,
                                                moexc_error *err);
/* Q (d_B x d_A). Needs at least 2 pairs. */
MOEXC_DEF moexc_status moexc_procrustes_fit(const moexc_procrustes_acc *acc, float *q, moexc_error *err);
MOEXC_DEF void moexc_procrustes_acc_free(moexc_procrustes_acc *acc);
/* out (n x d_B) = x (n x d_A) Q^T: each row x_i mapped to Q x_i. */
MOEXC_DEF void moexc_procrustes_apply(const float *q, int d_a, int d_b, const float *x, int n, float *out);

/* Thin singular value decomposition A = U diag(s) V^T of A (m x n, m >= n,
   row-major, double) by one-sided Jacobi rotations: U (m x n) with
   orthonormal columns, s (n) descending and >= 0, V (n x n) orthogonal.
   Columns of U for zero singular values are completed to an orthonormal
   set. Accurate to a few ulps of s_max; O(sweeps m n^2), fine for n <= 1000. */
MOEXC_DEF moexc_status moexc_svd_jacobi(const double *a, int m, int n, double *u, double *s, double *v,
                                        moexc_error *err);

/* ---- streaming evaluation accumulators ----------------------------------- */

/* Activation statistics over many batches: counts of active tokens per
   latent, L0 = mean number of active latents per token, dead fraction. */
typedef struct moexc_activation_acc {
    int      n_latents;
    int64_t  n_tokens;
    int64_t *counts;             /* (F) tokens with f_{b,i} > 0 */
    double   sum_active;         /* sum over tokens of #active latents */
} moexc_activation_acc;

MOEXC_DEF moexc_status moexc_activation_acc_init(moexc_activation_acc *acc, int n_latents, moexc_error *err);
/* f is (n_rows x F). */
MOEXC_DEF void   moexc_activation_acc_add(moexc_activation_acc *acc, const float *f, int n_rows);
MOEXC_DEF double moexc_activation_acc_l0(const moexc_activation_acc *acc);
MOEXC_DEF double moexc_activation_acc_dead_fraction(const moexc_activation_acc *acc);
MOEXC_DEF void   moexc_activation_acc_free(moexc_activation_acc *acc);

/* Fraction of variance explained for one model, streamed over batches:
     FVE = 1 - sum_dims Var_b(x - x_hat) / sum_dims Var_b(x)
   Per-dimension running means and squared deviations (Welford, in double). */
typedef struct moexc_fve_acc {
    int      dim;
    int64_t  n;
    double  *mean_x, *m2_x;      /* (dim) */
    double  *mean_e, *m2_e;      /* (dim) e = x - x_hat */
} moexc_fve_acc;

MOEXC_DEF moexc_status moexc_fve_acc_init(moexc_fve_acc *acc, int dim, moexc_error *err);
/* x, x_hat (n_rows x dim). */
MOEXC_DEF void   moexc_fve_acc_add(moexc_fve_acc *acc, const float *x, const float *x_hat, int n_rows);
MOEXC_DEF double moexc_fve_acc_value(const moexc_fve_acc *acc);   /* NaN when Var(x) sums to 0 */
/* Pooled over models: 1 - sum_m sum_dims Var(e^m) / sum_m sum_dims Var(x^m). */
MOEXC_DEF double moexc_fve_acc_pooled(const moexc_fve_acc *accs, int n_models);
MOEXC_DEF void   moexc_fve_acc_free(moexc_fve_acc *acc);

/* Latent Scaling (Minder et al. 2025), one model m, streamed over batches:
     beta_i = sum_b f_{b,i} <d_i, y_b> / (||d_i||^2 sum_b f_{b,i}^2)
   MOEXC_LS_RECONSTRUCTION: y is the model's reconstruction x_hat.
   MOEXC_LS_ERROR: pass y = x - x_hat; the latent's own contribution
   f_{b,i} d_i is added back, so <d_i, y_b> + f_{b,i} ||d_i||^2 is used.
   nu_i = beta_i^A / beta_i^B flags exclusivity that is a sparsity artefact. */
typedef enum moexc_ls_target { MOEXC_LS_RECONSTRUCTION = 0, MOEXC_LS_ERROR = 1 } moexc_ls_target;

typedef struct moexc_latent_scaling_acc {
    int          n_latents, dim, target;
    const float *dec;            /* (F x dim), borrowed: keep it alive while adding */
    double      *num, *den;      /* (F) */
    float       *norm2;          /* (F) ||d_i||^2 */
    float       *proj;           /* (chunk x F) scratch for Y D^T */
} moexc_latent_scaling_acc;

MOEXC_DEF moexc_status moexc_latent_scaling_init(moexc_latent_scaling_acc *acc, const float *dec,
                                                 int n_latents, int dim, moexc_ls_target target,
                                                 moexc_error *err);
/* f (n_rows x F), y (n_rows x dim). */
MOEXC_DEF void moexc_latent_scaling_add(moexc_latent_scaling_acc *acc, const float *f, const float *y, int n_rows);
/* beta (F); NaN for latents that never fired or have a zero decoder row. */
MOEXC_DEF void moexc_latent_scaling_beta(const moexc_latent_scaling_acc *acc, float *beta);
MOEXC_DEF void moexc_latent_scaling_free(moexc_latent_scaling_acc *acc);
/* nu_i = beta_a_i / beta_b_i (NaN when beta_b_i is 0 or NaN). */
MOEXC_DEF void moexc_latent_scaling_nu(float *nu, const float *beta_a, const float *beta_b, int n);

/* ---- what a latent is: contexts, domains, experts, spliced loss ---------- */
/* SPEC §5.2. Four streaming accumulators (init, add over chunks, results,
   free; memory independent of the number of tokens) and a driver that feeds
   them all in one pass over held-out windows of a token stream:
     top activations   the N strongest (latent, token) pairs of each latent,
                       a bounded min-heap per latent (F x N entries);
     label attribution per latent, the firings and activation mass carrying
                       each label (domain of the token, or the expert(s) the
                       MoE routed it to) against the labels' base rates, and a
                       shuffled baseline (each latent's firings reassigned to
                       random tokens of the same stream);
     spliced loss      cross-entropy with the harvested site replaced by the
                       crosscoder's reconstruction, by zeros and by the mean,
                       next to the clean run, per model and domain. */

/* One kept activation: where it happened and how strong it was. */
typedef struct moexc_top_entry {
    float   value;               /* f_i at that token                           */
    int32_t pos;                 /* position in its sequence                    */
    int64_t seq;                 /* the caller's sequence id (the driver: offset
                                    of the window's first token in the stream)  */
    int32_t label;               /* e.g. the token's domain (-1: none given)    */
} moexc_top_entry;

/* Entry a is stronger than b when a.value > b.value, or on equal values
   when (a.seq, a.pos) comes first: the kept set does not depend on the
   order in which tokens are added. */
typedef struct moexc_top_acts {
    int              n_latents, capacity;   /* F, N                              */
    int             *count;                 /* (F) entries held, <= N            */
    moexc_top_entry *heap;                  /* (F x N) a min-heap per latent      */
} moexc_top_acts;

/* capacity 0 -> 20. */
MOEXC_DEF moexc_status moexc_top_acts_init(moexc_top_acts *acc, int n_latents, int capacity, moexc_error *err);
/* f (n_rows x F); seq and pos (n_rows) say where row r sits; labels (n_rows)
   may be NULL. Only f > 0 counts. */
MOEXC_DEF void moexc_top_acts_add(moexc_top_acts *acc, const float *f, int n_rows, const int64_t *seq,
                                  const int32_t *pos, const int32_t *labels);
/* Latent i's entries, strongest first, into out (capacity entries); returns
   how many. */
MOEXC_DEF int  moexc_top_acts_get(const moexc_top_acts *acc, int latent, moexc_top_entry *out);
MOEXC_DEF void moexc_top_acts_free(moexc_top_acts *acc);

/* Label attribution. Each token carries per_row labels in [0, n_labels): its
   domain (per_row 1), its top-1 expert (1) or its k routed experts (k).
     share_{i,c}  = #{firings of i whose token carries c} / #firings of i
                    (sums to per_row over c)
     mass_{i,c}   = sum of f_i over those firings / sum of f_i
     base_c       = #{tokens carrying c} / #tokens
     purity_i     = max_c share_{i,c}   (1: every firing carries one label)
     entropy_i    = -sum_c p log2 p, p = share_{i,c} / per_row   (bits)
   The shuffled baseline draws each latent's #firings tokens at random (with
   replacement) from a reservoir sample of the stream's tokens: the purity
   a latent with as many firings but no preference would show. */
typedef struct moexc_label_acc {
    int      n_latents, n_labels, per_row, reservoir_size;
    int64_t  n_rows;             /* tokens added                                 */
    int64_t *label_rows;         /* (C) tokens carrying label c                  */
    int64_t *fires;              /* (F) tokens on which latent i fired           */
    int64_t *count;              /* (F x C) firings carrying label c             */
    double  *mass;               /* (F x C) activation on those firings          */
    double  *mass_total;         /* (F)                                          */
    int64_t *shuffled;           /* (F x C) the baseline, filled by _finish      */
    int32_t *reservoir;          /* (reservoir_size x per_row) sampled labels    */
    int      reservoir_fill;
    moexc_rng rng;
} moexc_label_acc;

/* reservoir 0 -> 8192 tokens. */
MOEXC_DEF moexc_status moexc_label_acc_init(moexc_label_acc *acc, int n_latents, int n_labels, int per_row,
                                            int reservoir, uint64_t seed, moexc_error *err);
/* f (n_rows x F), labels (n_rows x per_row). A label out of range is an error. */
MOEXC_DEF moexc_status moexc_label_acc_add(moexc_label_acc *acc, const float *f, int n_rows, const int32_t *labels,
                                           moexc_error *err);
/* Draw the shuffled baseline (call once after the last add). */
MOEXC_DEF void moexc_label_acc_finish(moexc_label_acc *acc);
/* Latent i: share, mass_share (C each, may be NULL), purity and entropy
   (may be NULL); shuffled = 1 reads the baseline. NaN when i never fired. */
MOEXC_DEF void moexc_label_acc_latent(const moexc_label_acc *acc, int latent, int shuffled, double *share,
                                      double *mass_share, double *purity, double *entropy);
/* base_c (C). */
MOEXC_DEF void moexc_label_acc_base(const moexc_label_acc *acc, double *base);

/* Per latent class: the mean purity and entropy over the class's latents
   that fired at least min_fires times (0 -> 1), and the same of the shuffled
   baseline. NaN for a class with no such latent. */
typedef struct moexc_label_class_stats {
    int64_t n;                   /* latents averaged                             */
    double  purity, entropy;
    double  purity_shuffled, entropy_shuffled;
} moexc_label_class_stats;
MOEXC_DEF void moexc_label_acc_by_class(const moexc_label_acc *acc, const uint8_t *cls, int min_fires,
                                        moexc_label_class_stats out[MOEXC_CLASS_COUNT]);
MOEXC_DEF void moexc_label_acc_free(moexc_label_acc *acc);

/* Spliced loss. Runs: clean, the site replaced by the crosscoder's
   reconstruction, by zeros, by the mean activation. Per model m (0 = A,
   1 = B) and domain D (index n_domains = pooled):
     CE_run        = mean next-token cross-entropy (nats) over D's predictions
     recovered_abl = (CE_abl - CE_splice) / (CE_abl - CE_clean)
                     (1: the reconstruction is as good as the site itself,
                      0: no better than ablating it) */
typedef enum moexc_splice_run {
    MOEXC_SPLICE_CLEAN = 0, MOEXC_SPLICE_XC, MOEXC_SPLICE_ZERO, MOEXC_SPLICE_MEAN, MOEXC_SPLICE_COUNT
} moexc_splice_run;
typedef struct moexc_splice_acc {
    int    n_domains;
    double nll[2][MOEXC_SPLICE_COUNT][MOEXC_MAX_DOMAINS + 1];   /* sums, nats */
    double tokens[2][MOEXC_SPLICE_COUNT][MOEXC_MAX_DOMAINS + 1];
} moexc_splice_acc;

MOEXC_DEF moexc_status moexc_splice_acc_init(moexc_splice_acc *acc, int n_domains, moexc_error *err);
/* Per-token losses nll (n) of one run of model m; domains (n) label each
   predicted token; a NaN loss is skipped (a position left out). */
MOEXC_DEF void   moexc_splice_acc_add(moexc_splice_acc *acc, int model, int run, const float *nll,
                                      const uint8_t *domains, int n);
MOEXC_DEF double moexc_splice_acc_ce(const moexc_splice_acc *acc, int model, int run, int domain);
/* ablation: MOEXC_SPLICE_ZERO or MOEXC_SPLICE_MEAN. NaN without data or when
   CE_abl == CE_clean. */
MOEXC_DEF double moexc_splice_acc_recovered(const moexc_splice_acc *acc, int model, int ablation, int domain);
/* Per-token cross-entropy: nll[t] = logsumexp(logits_t) - logits_t[targets[t]],
   logits (n x V). */
MOEXC_DEF void   moexc_token_nll(const float *logits, const uint16_t *targets, int n, int V, float *nll);

/* The driver: one pass over held-out windows of a token stream (per domain,
   the last eval_fraction of its tokens, as the trainer holds them out; up
   to max_seqs windows of seq_len + 1 tokens per domain, evenly spaced,
   batches mixing domains). Per batch: both models clean (router choices of
   the MoE at the layer, site outputs), the crosscoder's latents and
   reconstructions, then each model with its site replaced by the
   reconstruction, zeros and the mean. Position 0 of each window keeps its
   clean activation and is left out of every statistic (keep_first = 0, the
   harvester's default). The experts are those of the first of A, B that is
   a MoE (n_experts 0: neither is). Zero value = defaults. */
typedef struct moexc_latent_study_options {
    int          top_n;          /* top activations per latent; 0 -> 20              */
    int          layer;          /* harvested block; 0 -> 3, MOEXC_HARVEST_LAYER0 for 0 */
    int          site;           /* moexc_site                                       */
    int          seq_len;        /* 0 -> min(128, both contexts)                     */
    int          batch_seqs;     /* 0 -> 8                                           */
    int          max_seqs;       /* per domain; 0 -> 64                              */
    float        eval_fraction;  /* 0 -> 0.05; < 0 the whole stream                  */
    int          keep_first;     /* 1: position 0 counts too                         */
    int          no_splice;      /* 1: skip the spliced-loss runs                    */
    const float *mean_a, *mean_b;/* site means for mean ablation (d_A), (d_B); NULL:
                                    measured on the same windows by a first pass of
                                    partial forwards (blocks 0..layer)               */
    uint64_t     seed;           /* shuffled baselines                               */
} moexc_latent_study_options;

typedef struct moexc_latent_study {
    int      n_latents, n_domains, n_experts, top_k, layer, site, d_a, d_b, seq_len;
    int      expert_model;       /* 0 = A, 1 = B, -1: no MoE                          */
    int64_t  n_tokens;           /* tokens in the statistics                         */
    int64_t  n_seqs;
    char     domain_names[MOEXC_MAX_DOMAINS][MOEXC_DOMAIN_NAME_MAX];
    moexc_top_acts      top;
    moexc_label_acc     domain;        /* labels: domains                            */
    moexc_label_acc     expert_top1;   /* labels: the top-1 expert (if a MoE)        */
    moexc_label_acc     expert_topk;   /* labels: all k routed experts              */
    moexc_splice_acc    splice;
    moexc_activation_acc act;          /* densities on these tokens                  */
    double   fve[2];             /* of the reconstructions on these tokens           */
    float   *beta[2];            /* (F) Latent Scaling beta^m (reconstruction target) */
    float   *nu;                 /* (F) beta^A / beta^B                              */
    float   *aligned_cos;        /* (F) cos(Q d_i^A, d_i^B), Q fitted on these tokens
                                    (raw-unit decoders); NULL when d_A != d_B fails    */
} moexc_latent_study;

MOEXC_DEF moexc_status moexc_latent_study_run(moexc_latent_study *s, moexc_model *model_a, moexc_model *model_b,
                                              moexc_xc *xc, const moexc_tokens *data,
                                              const moexc_latent_study_options *opt, moexc_error *err);
MOEXC_DEF void moexc_latent_study_free(moexc_latent_study *s);

/* ---- histograms ----------------------------------------------------------- */
/* n_bins equal bins over [lo, hi] on a linear or log10 axis. Bin i covers
   [edge_i, edge_{i+1}); the last bin also takes x == hi. x < lo (or x <= 0 on
   a log axis) is underflow, x > hi overflow, NaN is counted apart. */
typedef struct moexc_histogram {
    int      n_bins;
    double   lo, hi;
    int      log10_axis;
    int64_t *counts;             /* (n_bins) */
    int64_t  underflow, overflow, nan_count, total;
} moexc_histogram;

MOEXC_DEF moexc_status moexc_histogram_init(moexc_histogram *h, int n_bins, double lo, double hi,
                                            int log10_axis, moexc_error *err);
MOEXC_DEF void   moexc_histogram_add1(moexc_histogram *h, double x);
MOEXC_DEF void   moexc_histogram_add(moexc_histogram *h, const float *x, size_t n);
/* Only the x[i] with labels[i] == label (e.g. one latent class). */
MOEXC_DEF void   moexc_histogram_add_where(moexc_histogram *h, const float *x, const uint8_t *labels,
                                           uint8_t label, size_t n);
MOEXC_DEF double moexc_histogram_edge(const moexc_histogram *h, int i);   /* i in 0..n_bins */
MOEXC_DEF void   moexc_histogram_free(moexc_histogram *h);

/* ---- reports ---------------------------------------------------------------- */
/* Scalar evaluation figures that go into the reports next to the class table.
   A field is reported only when its has_ flag is set. */
typedef struct moexc_eval_summary {
    const char *name;            /* run name (JSON-escaped in the report); NULL = none */
    int    has_fve;   double fve_a, fve_b, fve_pooled;
    int    has_l0;    double l0, dead_fraction;
} moexc_eval_summary;

/* The paper-style table: class, r range, count, mean and median density,
   mean cosine, then the random-pair baseline. summary may be NULL. */
MOEXC_DEF void moexc_analysis_print_table(FILE *out, const moexc_latent_analysis *a,
                                          const moexc_eval_summary *summary);
/* CSV: header "class,r_lo,r_hi,count,density_mean,density_median,cos_mean,
   cos_median,cos_frac_negative", one row per class then "random_pairs";
   an unavailable value is an empty field. Written atomically. */
MOEXC_DEF moexc_status moexc_analysis_write_csv(const moexc_latent_analysis *a, const char *path,
                                                moexc_error *err);
/* JSON object {"name", "n_latents", "n_shared", "n_tokens", "bands", "fve", "l0",
   "dead_fraction", "classes": [...], "random_pairs": {...}}; NaN -> null. Atomic. */
MOEXC_DEF moexc_status moexc_analysis_write_json(const moexc_latent_analysis *a,
                                                 const moexc_eval_summary *summary,
                                                 const char *path, moexc_error *err);
/* Writes <prefix>r.npy, <prefix>cosine.npy, <prefix>density.npy, <prefix>norm_a.npy,
   <prefix>norm_b.npy and <prefix>class.npy (class ids as float32). */
MOEXC_DEF moexc_status moexc_analysis_write_npy(const moexc_latent_analysis *a, const char *prefix,
                                                moexc_error *err);

/* NPY v1.0, 1-D float32: magic "\x93NUMPY", version 1.0, header
   {'descr': '<f4', 'fortran_order': False, 'shape': (n,), } padded with spaces
   and '\n' so the data starts at a multiple of 64; little-endian data on any
   host. Byte-identical to numpy.save. Written atomically. */
MOEXC_DEF moexc_status moexc_npy_write_f32(const char *path, const float *x, size_t n, moexc_error *err);
/* Reads a 1-D '<f4' C-order .npy (v1.0 or v2.0); *out is freed with moexc_free. */
MOEXC_DEF moexc_status moexc_npy_read_f32(const char *path, float **out, size_t *n, moexc_error *err);

/* ---- >>plot: raster plots with a built-in bitmap font ---------------------- */
/* An RGB canvas (3 bytes per pixel, row-major, top row first: what
   stbi_write_png(path, w, h, 3, rgb, 3 * w) takes). Colours are 0xRRGGBB. */
typedef struct moexc_canvas {
    int            width, height;
    unsigned char *rgb;          /* (height x width x 3) */
    int            owned;        /* 1: allocated by moexc_canvas_init */
} moexc_canvas;

MOEXC_DEF moexc_status moexc_canvas_init(moexc_canvas *c, int width, int height, moexc_error *err);  /* white */
MOEXC_DEF void moexc_canvas_wrap(moexc_canvas *c, unsigned char *rgb, int width, int height);     /* caller-owned */
MOEXC_DEF void moexc_canvas_free(moexc_canvas *c);
MOEXC_DEF void moexc_canvas_clear(moexc_canvas *c, uint32_t color);
MOEXC_DEF uint32_t moexc_canvas_get(const moexc_canvas *c, int x, int y);   /* 0xRRGGBB; 0 outside */

/* Primitives, all clipped to the canvas. Rectangles cover [x0, x1) x [y0, y1);
   alpha 0..255 blends over what is there (255 = opaque). */
MOEXC_DEF void moexc_draw_rect(moexc_canvas *c, int x0, int y0, int x1, int y1, uint32_t color);
MOEXC_DEF void moexc_draw_rect_alpha(moexc_canvas *c, int x0, int y0, int x1, int y1, uint32_t color, int alpha);
MOEXC_DEF void moexc_draw_rect_outline(moexc_canvas *c, int x0, int y0, int x1, int y1, int thickness, uint32_t color);
MOEXC_DEF void moexc_draw_line(moexc_canvas *c, int x0, int y0, int x1, int y1, int thickness, uint32_t color);

/* Built-in bitmap font of our own (ASCII 32..126): 5-pixel-wide glyphs,
   capitals and digits 7 tall, 2 more rows for descenders, advance 6, drawn
   at an integer scale (2 is legible on a 1000-pixel-wide figure). (x, y) is
   the top-left of the text box, moexc_text_width() x moexc_text_height()
   pixels. Other bytes draw as '?'. Returns the width drawn. */
MOEXC_DEF int  moexc_draw_text(moexc_canvas *c, int x, int y, const char *text, int scale, uint32_t color);
/* Rotated 90 degrees counter-clockwise (reads bottom to top); (x, y) is the
   top-left of its box, which is text_height wide and text_width tall. */
MOEXC_DEF int  moexc_draw_text_vertical(moexc_canvas *c, int x, int y, const char *text, int scale, uint32_t color);
MOEXC_DEF int  moexc_text_width(const char *text, int scale);
MOEXC_DEF int  moexc_text_height(int scale);

/* Colour-blind-safe palette (Okabe-Ito order: blue, vermillion, bluish green,
   orange, reddish purple, sky blue, yellow, black), cycled. */
MOEXC_DEF uint32_t moexc_palette(int i);
/* Viridis, t in [0, 1] (clamped). */
MOEXC_DEF uint32_t moexc_colormap_viridis(double t);

/* "Nice" ticks covering [lo, hi]: step 1, 2 or 5 x 10^n, about target_count
   of them. Writes at most max_ticks values; returns the count. */
MOEXC_DEF int moexc_nice_ticks(double lo, double hi, int target_count, double *ticks, int max_ticks);

/* Options shared by the chart functions. Zero value = defaults: the whole
   canvas, font scale 2, linear axes ranged from the data, a legend in the
   top corner (right or left) where the data leaves more room. Charts draw
   only inside their region, so several can share a canvas as panels. */
typedef struct moexc_plot_options {
    int         x, y, width, height;   /* region of the canvas; width 0 -> whole canvas */
    int         font_scale;            /* tick labels, legend, axis titles; 0 -> 2 (title: +1) */
    const char *title, *x_label, *y_label;
    int         log_x, log_y;          /* log10 axes (histograms take log_x from the histogram) */
    double      x_min, x_max;          /* both 0 -> from the data */
    double      y_min, y_max;          /* both 0 -> from the data (y_min 0 on linear histograms) */
    int         normalize;             /* histograms: fractions of each histogram's non-NaN total */
    int         no_legend;
    int         annotate;              /* heatmaps: print each cell's value */
    const char *value_format;          /* heatmap annotations / colour bar; NULL -> "%.3g" */
    double      z_min, z_max;          /* heatmap colour range; both 0 -> from the data */
    const char *z_label;               /* heatmap colour-bar title */
} moexc_plot_options;

/* A coloured band drawn behind a histogram's bars, e.g. the MoE-only /
   shared / dense-only regions of r; labelled in the legend. */
typedef struct moexc_band {
    double      lo, hi;
    uint32_t    color;
    const char *label;
} moexc_band;

/* Histograms on a shared binning (same n_bins, lo, hi, log10_axis). One
   histogram draws filled bars; several draw as overlaid step outlines in
   palette colours (colors may be NULL), labelled in a legend. */
MOEXC_DEF moexc_status moexc_plot_histograms(moexc_canvas *c, const moexc_histogram *hists, int n_hists,
                                             const char *const *labels, const uint32_t *colors,
                                             const moexc_band *bands, int n_bands,
                                             const moexc_plot_options *opt, moexc_error *err);

/* One line series; x NULL means 0, 1, ..., n-1. NaN points break the line. */
typedef struct moexc_series {
    const float *x, *y;
    int          n;
    const char  *label;
} moexc_series;
MOEXC_DEF moexc_status moexc_plot_lines(moexc_canvas *c, const moexc_series *series, int n_series,
                                        const moexc_plot_options *opt, moexc_error *err);

/* Heatmap of values (rows x cols, row-major), row 0 at the top, with a
   viridis colour bar. Labels may be NULL (then indices are printed). */
MOEXC_DEF moexc_status moexc_plot_heatmap(moexc_canvas *c, const float *values, int rows, int cols,
                                          const char *const *row_labels, const char *const *col_labels,
                                          const moexc_plot_options *opt, moexc_error *err);

#ifdef __cplusplus
}
#endif
#endif /* MOEXC_H_INCLUDE */

/* ======================================================================== */
/*                            IMPLEMENTATION                                */
/* ======================================================================== */
#ifdef MOEXC_IMPLEMENTATION
#ifndef MOEXC_IMPLEMENTATION_DONE
#define MOEXC_IMPLEMENTATION_DONE

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <math.h>
#include <float.h>
#include <limits.h>
#include <errno.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ======================================================================== */
/* >>base (implementation)                                                   */
/* ======================================================================== */

/* ---- allocation: all three overrides, or none ---------------------------- */
#if defined(MOEXC_MALLOC) && defined(MOEXC_REALLOC) && defined(MOEXC_FREE)
/* user-supplied */
#elif !defined(MOEXC_MALLOC) && !defined(MOEXC_REALLOC) && !defined(MOEXC_FREE)
#  define MOEXC_MALLOC(sz)     malloc(sz)
#  define MOEXC_REALLOC(p, sz) realloc((p), (sz))
#  define MOEXC_FREE(p)        free(p)
#else
#  error "moexc.h: define all of MOEXC_MALLOC, MOEXC_REALLOC and MOEXC_FREE, or none of them"
#endif

#ifndef MOEXC_ASSERT
#  include <assert.h>
#  define MOEXC_ASSERT(x) assert(x)
#endif

#if defined(__MINGW32__) && defined(__MINGW_PRINTF_FORMAT)
/* mingw-w64: "printf" would mean MSVCRT's formats (no %zu, %lld); its stdio.h
   names the formats of the printf this build links (C99's under -std=c99) */
#  define MOEXC__PRINTF_LIKE(fmt_index, first_arg) __attribute__((format(__MINGW_PRINTF_FORMAT, fmt_index, first_arg)))
#  define MOEXC__UNUSED_FN __attribute__((unused))
#elif defined(__GNUC__) || defined(__clang__)
#  define MOEXC__PRINTF_LIKE(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#  define MOEXC__UNUSED_FN __attribute__((unused))
#else
#  define MOEXC__PRINTF_LIKE(fmt_index, first_arg)
#  define MOEXC__UNUSED_FN
#endif
/* a function the compiler must not inline (the GEMM micro-kernels: inlined
   into moexc__gemm_blocked, the kernel with c_next ran up to 18% slower) */
#if defined(__GNUC__) || defined(__clang__)
#  define MOEXC__NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#  define MOEXC__NOINLINE __declspec(noinline)
#else
#  define MOEXC__NOINLINE
#endif

#define MOEXC__MIN(a, b) ((a) < (b) ? (a) : (b))
#define MOEXC__MAX(a, b) ((a) > (b) ? (a) : (b))

/* Plain allocations (returned to users, freed with moexc_free). n == 0 is
   treated as 1 so that a valid pointer always means success. */
static MOEXC__UNUSED_FN void *moexc__malloc(size_t n) { return MOEXC_MALLOC(n ? n : 1); }
static MOEXC__UNUSED_FN void *moexc__realloc(void *p, size_t n) { return MOEXC_REALLOC(p, n ? n : 1); }
static MOEXC__UNUSED_FN void  moexc__free(void *p) { if (p) MOEXC_FREE(p); }

/* count * size with overflow check; returns 0 on overflow (callers treat as NOMEM). */
static MOEXC__UNUSED_FN size_t moexc__mul_size(size_t count, size_t size)
{
    if (size && count > (size_t)-1 / size) return 0;
    return count * size;
}

/* Zeroed array allocation with overflow check. */
static MOEXC__UNUSED_FN void *moexc__calloc(size_t count, size_t size)
{
    size_t bytes = moexc__mul_size(count, size);
    void *p;
    if (count && size && bytes == 0) return NULL;
    p = moexc__malloc(bytes);
    if (p) memset(p, 0, bytes ? bytes : 1);
    return p;
}

/* 64-byte aligned, zeroed allocation for tensors (one cache line, one zmm).
   The byte distance back to the block MOEXC_MALLOC returned is stored in the
   pointer-sized slot just before the aligned address. */
#define MOEXC__ALIGN 64
static MOEXC__UNUSED_FN void *moexc__alloc_aligned(size_t bytes)
{
    size_t total = bytes + MOEXC__ALIGN + sizeof(void *);
    unsigned char *raw, *aligned;
    size_t offset;
    if (total < bytes) return NULL;
    raw = (unsigned char *)MOEXC_MALLOC(total);
    if (!raw) return NULL;
    offset = sizeof(void *) + (MOEXC__ALIGN - ((size_t)(uintptr_t)(raw + sizeof(void *)) % MOEXC__ALIGN)) % MOEXC__ALIGN;
    aligned = raw + offset;
    memcpy(aligned - sizeof(void *), &offset, sizeof(offset) < sizeof(void *) ? sizeof(offset) : sizeof(void *));
    memset(aligned, 0, bytes);
    return aligned;
}
static MOEXC__UNUSED_FN void moexc__free_aligned(void *p)
{
    size_t offset = 0;
    if (!p) return;
    memcpy(&offset, (unsigned char *)p - sizeof(void *), sizeof(offset) < sizeof(void *) ? sizeof(offset) : sizeof(void *));
    MOEXC_FREE((unsigned char *)p - offset);
}
/* n floats, aligned and zeroed; NULL on overflow or failure. */
static MOEXC__UNUSED_FN float *moexc__alloc_floats(size_t n)
{
    size_t bytes = moexc__mul_size(n, sizeof(float));
    if (n && bytes == 0) return NULL;
    return (float *)moexc__alloc_aligned(bytes);
}

MOEXC_DEF void moexc_free(void *ptr) { moexc__free(ptr); }

/* ---- status codes and error messages ------------------------------------- */
MOEXC_DEF const char *moexc_status_name(moexc_status status)
{
    switch (status) {
    case MOEXC_OK:              return "ok";
    case MOEXC_ERR_NOMEM:       return "out of memory";
    case MOEXC_ERR_ARG:         return "invalid argument";
    case MOEXC_ERR_IO:          return "i/o error";
    case MOEXC_ERR_FORMAT:      return "malformed file";
    case MOEXC_ERR_CHECKSUM:    return "checksum mismatch";
    case MOEXC_ERR_VERSION:     return "unsupported version";
    case MOEXC_ERR_SHAPE:       return "shape or dtype mismatch";
    case MOEXC_ERR_MISSING:     return "missing entry";
    case MOEXC_ERR_UNSUPPORTED: return "unsupported";
    case MOEXC_ERR_NUMERIC:     return "non-finite value";
    case MOEXC_STATUS_COUNT:    break;
    }
    return "unknown status";
}

/* Record a failure: fills err (if any) with the code and a formatted message,
   and returns the code so callers can write `return moexc__fail(err, ...)`. */
static MOEXC__UNUSED_FN moexc_status moexc__fail(moexc_error *err, moexc_status code, const char *fmt, ...) MOEXC__PRINTF_LIKE(3, 4);
static MOEXC__UNUSED_FN moexc_status moexc__fail(moexc_error *err, moexc_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
    }
    return code;
}

/* ---- random numbers: SplitMix64 ------------------------------------------ */
MOEXC_DEF void moexc_rng_seed(moexc_rng *rng, uint64_t seed) { rng->state = seed; }

MOEXC_DEF uint64_t moexc_rng_u64(moexc_rng *rng)
{
    uint64_t z = (rng->state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

MOEXC_DEF uint32_t moexc_rng_below(moexc_rng *rng, uint32_t n)
{
    /* Lemire's multiply-shift with rejection: exactly uniform. */
    uint64_t m = (uint64_t)(uint32_t)(moexc_rng_u64(rng) >> 32) * n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t threshold = (uint32_t)(0u - n) % n;
        while (low < threshold) {
            m = (uint64_t)(uint32_t)(moexc_rng_u64(rng) >> 32) * n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

MOEXC_DEF float moexc_rng_uniform(moexc_rng *rng)
{
    return (float)(moexc_rng_u64(rng) >> 40) * (1.0f / 16777216.0f);   /* 24 random bits */
}

MOEXC_DEF float moexc_rng_normal(moexc_rng *rng)
{
    /* Box-Muller in double; u1 in (0, 1] so log never sees 0. */
    double u1 = ((double)(moexc_rng_u64(rng) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(moexc_rng_u64(rng) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* ---- little-endian file helpers (every on-disk format uses these) -------- */
static MOEXC__UNUSED_FN int moexc__host_is_little_endian(void)
{
    uint32_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}
static MOEXC__UNUSED_FN void moexc__put_u32le(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}
static MOEXC__UNUSED_FN uint32_t moexc__get_u32le(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static MOEXC__UNUSED_FN void moexc__put_u64le(unsigned char *p, uint64_t v)
{
    moexc__put_u32le(p, (uint32_t)v);
    moexc__put_u32le(p + 4, (uint32_t)(v >> 32));
}
static MOEXC__UNUSED_FN uint64_t moexc__get_u64le(const unsigned char *p)
{
    return (uint64_t)moexc__get_u32le(p) | ((uint64_t)moexc__get_u32le(p + 4) << 32);
}
/* Byte-swap n 4-byte words in place when the host is big-endian, so that a
   buffer of float/int32/uint32 becomes (or came from) little-endian bytes. */
static MOEXC__UNUSED_FN void moexc__le32_swap_inplace(void *data, size_t n)
{
    unsigned char *p = (unsigned char *)data;
    size_t i;
    if (moexc__host_is_little_endian()) return;
    for (i = 0; i < n; i++, p += 4) {
        unsigned char t0 = p[0], t1 = p[1];
        p[0] = p[3]; p[1] = p[2]; p[2] = t1; p[3] = t0;
    }
}
/* Same for 2-byte words (uint16_t token ids). */
static MOEXC__UNUSED_FN void moexc__le16_swap_inplace(void *data, size_t n)
{
    unsigned char *p = (unsigned char *)data;
    size_t i;
    if (moexc__host_is_little_endian()) return;
    for (i = 0; i < n; i++, p += 2) { unsigned char t = p[0]; p[0] = p[1]; p[1] = t; }
}
/* Write n float32 values as little-endian; returns 1 on success. */
static MOEXC__UNUSED_FN int moexc__fwrite_f32le(FILE *f, const float *x, size_t n)
{
    unsigned char buf[4096];
    size_t done = 0;
    if (moexc__host_is_little_endian()) return fwrite(x, sizeof(float), n, f) == n;
    while (done < n) {
        size_t chunk = MOEXC__MIN(n - done, sizeof(buf) / 4), i;
        for (i = 0; i < chunk; i++) {
            uint32_t bits;
            memcpy(&bits, x + done + i, 4);
            moexc__put_u32le(buf + 4 * i, bits);
        }
        if (fwrite(buf, 4, chunk, f) != chunk) return 0;
        done += chunk;
    }
    return 1;
}
/* Read n little-endian float32 values; returns 1 on success. */
static MOEXC__UNUSED_FN int moexc__fread_f32le(FILE *f, float *x, size_t n)
{
    if (fread(x, sizeof(float), n, f) != n) return 0;
    moexc__le32_swap_inplace(x, n);
    return 1;
}

/* CRC-32 (IEEE 802.3, reflected, as zlib's crc32): the checksum of every
   moexc file format. Short inputs go byte by byte with a nibble table (two
   dependent lookups a byte). Long ones (at least
   MOEXC__CRC_SLICE_MIN bytes: checkpoints, token files, activation caches)
   go eight bytes a step ("slicing by 8"), through eight 256-entry tables
   built here on the stack from the nibble table (2,048 entries, a few
   microseconds); the result is the same. Table k maps a byte to its CRC
   after k more zero bytes: t[0][b] is the usual byte table, and
   t[k][b] = (t[k-1][b] >> 8) ^ t[0][t[k-1][b] & 0xFF]. */
#define MOEXC__CRC_SLICE_MIN 16384
static const uint32_t moexc__crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu };
typedef struct moexc__crc_tables { uint32_t t[8][256]; } moexc__crc_tables;
static MOEXC__UNUSED_FN void moexc__crc_tables_build(moexc__crc_tables *c)
{
    int b, k;
    for (b = 0; b < 256; b++) {
        uint32_t v = (uint32_t)b;
        v = (v >> 4) ^ moexc__crc_nibble[v & 15];
        c->t[0][b] = (v >> 4) ^ moexc__crc_nibble[v & 15];
    }
    for (k = 1; k < 8; k++)
        for (b = 0; b < 256; b++) c->t[k][b] = (c->t[k - 1][b] >> 8) ^ c->t[0][c->t[k - 1][b] & 0xFF];
}
/* The CRC through built tables (any length). */
static MOEXC__UNUSED_FN uint32_t moexc__crc32_sliced(const moexc__crc_tables *c, uint32_t crc, const void *data,
                                                     size_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    crc = ~crc;
    for (; n >= 8; n -= 8, p += 8) {
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        crc = c->t[7][lo & 0xFF] ^ c->t[6][(lo >> 8) & 0xFF] ^ c->t[5][(lo >> 16) & 0xFF] ^ c->t[4][lo >> 24]
            ^ c->t[3][p[4]] ^ c->t[2][p[5]] ^ c->t[1][p[6]] ^ c->t[0][p[7]];
    }
    while (n--) crc = (crc >> 8) ^ c->t[0][(crc ^ *p++) & 0xFF];
    return ~crc;
}
static MOEXC__UNUSED_FN uint32_t moexc__crc32(uint32_t crc, const void *data, size_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    if (n >= MOEXC__CRC_SLICE_MIN) {
        moexc__crc_tables c;
        moexc__crc_tables_build(&c);
        return moexc__crc32_sliced(&c, crc, data, n);
    }
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        crc = (crc >> 4) ^ moexc__crc_nibble[crc & 15];
        crc = (crc >> 4) ^ moexc__crc_nibble[crc & 15];
    }
    return ~crc;
}

/* ---- atomic file replacement --------------------------------------------- */
#ifdef _WIN32
/* kernel32's MoveFileExA, declared as <windows.h> does (BOOL = int, LPCSTR =
   const char *, DWORD = unsigned long) without pulling in its macros */
#  ifdef __cplusplus
extern "C"
#  endif
__declspec(dllimport) int __stdcall MoveFileExA(const char *existing, const char *target, unsigned long flags);
#endif
/* Open "<path>.tmp" for writing; the caller writes, then calls
   moexc__atomic_commit (fclose + rename over path) or moexc__atomic_abort.
   A crash mid-write leaves the old file untouched. */
typedef struct moexc__atomic_file { FILE *f; char tmp_path[4096]; const char *path; } moexc__atomic_file;

static MOEXC__UNUSED_FN moexc_status moexc__atomic_open(moexc__atomic_file *af, const char *path, moexc_error *err)
{
    size_t len = strlen(path);
    af->f = NULL;
    af->path = path;
    if (len + 5 >= sizeof(af->tmp_path))
        return moexc__fail(err, MOEXC_ERR_ARG, "%s: path too long", path);
    memcpy(af->tmp_path, path, len);
    memcpy(af->tmp_path + len, ".tmp", 5);
    af->f = fopen(af->tmp_path, "wb");
    if (!af->f) return moexc__fail(err, MOEXC_ERR_IO, "%s: cannot open for writing", af->tmp_path);
    return MOEXC_OK;
}
static MOEXC__UNUSED_FN void moexc__atomic_abort(moexc__atomic_file *af)
{
    if (af->f) fclose(af->f);
    af->f = NULL;
    remove(af->tmp_path);
}
static MOEXC__UNUSED_FN moexc_status moexc__atomic_commit(moexc__atomic_file *af, moexc_error *err)
{
    int bad = ferror(af->f) != 0;
    bad |= fflush(af->f) != 0;
    bad |= fclose(af->f) != 0;
    af->f = NULL;
    if (bad) {
        remove(af->tmp_path);
        return moexc__fail(err, MOEXC_ERR_IO, "%s: write failed (disk full?)", af->tmp_path);
    }
    return moexc_replace_file(af->tmp_path, af->path, err);
}

MOEXC_DEF moexc_status moexc_replace_file(const char *tmp_path, const char *path, moexc_error *err)
{
#ifdef _WIN32
    /* rename() does not replace on Windows; MoveFileEx does, in one step */
    if (!MoveFileExA(tmp_path, path, 0x1 | 0x8)) {   /* MOVEFILE_REPLACE_EXISTING | _WRITE_THROUGH */
#else
    if (rename(tmp_path, path) != 0) {
#endif
        remove(tmp_path);
        return moexc__fail(err, MOEXC_ERR_IO, "%s: cannot rename %s into place", path, tmp_path);
    }
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_check_writable(const char *path, moexc_error *err)
{
    moexc__atomic_file af;
    FILE *f;
    moexc_status st;
    int bad;
    if (!path || !*path) return moexc__fail(err, MOEXC_ERR_ARG, "check writable: empty path");
    /* a directory opens for reading on POSIX but cannot be read (nor renamed over) */
    if ((f = fopen(path, "rb")) != NULL) {
        int is_dir = fgetc(f) == EOF && ferror(f);
        fclose(f);
        if (is_dir) return moexc__fail(err, MOEXC_ERR_IO, "%s: is a directory, not a file", path);
    }
    errno = 0;
    if ((st = moexc__atomic_open(&af, path, err)) != MOEXC_OK) {
        if (st == MOEXC_ERR_IO)
            moexc__fail(err, st, "%s: cannot be written: cannot create %s%s%s%s", path, af.tmp_path,
                        errno ? " (" : "", errno ? strerror(errno) : "", errno ? ")" : "");
        return st;
    }
    bad = fputc(0, af.f) == EOF;
    bad |= fclose(af.f) != 0;
    af.f = NULL;
    bad |= remove(af.tmp_path) != 0;
    if (bad) return moexc__fail(err, MOEXC_ERR_IO, "%s: cannot be written: writing or removing %s failed", path, af.tmp_path);
    return MOEXC_OK;
}

/* ======================================================================== */
/* >>simd: the internal SIMD macro layer                                     */
/* ======================================================================== */
/* Kernels are written once against these macros:
     moexc__vf                 a vector of MOEXC__VW floats
     moexc__vload(p)/vstore(p,v)  unaligned load / store
     moexc__vset1(x), moexc__vzero()
     moexc__vadd/vsub/vmul/vmax/vmin(a,b)
     moexc__vdiv(a,b), moexc__vsqrt(a)   correctly rounded, as IEEE requires
     moexc__vfmadd(a,b,c)      a*b + c (fused where the ISA has FMA)
     moexc__vhsum(v), moexc__vhmax(v)   horizontal reductions to a float
     moexc__vmask_ge(a,b)      unsigned bit mask of the lanes with a >= b
                               (bit q for lane q; false for NaN)
     moexc__vround(v)          round to nearest integer (as float), |v| < 2^22
     moexc__vpow2i(n)          2^n for integer-valued n in [-126, 127]
   The scalar backend defines the same names over plain float, so every SIMD
   path has a scalar twin that runs the same algorithm. */
#if !defined(MOEXC_NO_SIMD) && !defined(MOEXC_NO_SSE2) && !defined(MOEXC_NO_AVX2) && \
    !defined(MOEXC_NO_AVX512) && defined(__AVX512F__)
#  define MOEXC__SIMD_AVX512 1
#elif !defined(MOEXC_NO_SIMD) && !defined(MOEXC_NO_SSE2) && !defined(MOEXC_NO_AVX2) && \
    defined(__AVX2__) && defined(__FMA__)
#  define MOEXC__SIMD_AVX2 1
#elif !defined(MOEXC_NO_SIMD) && !defined(MOEXC_NO_SSE2) && \
    (defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2))
#  define MOEXC__SIMD_SSE2 1
#elif !defined(MOEXC_NO_SIMD) && !defined(MOEXC_NO_NEON) && defined(__aarch64__) && defined(__ARM_NEON)
#  define MOEXC__SIMD_NEON 1
#else
#  define MOEXC__SIMD_SCALAR 1
#endif

#if defined(MOEXC__SIMD_AVX512)
#  if defined(__cplusplus) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
/* g++ 12 and older warn "'__Y' is used uninitialized" inside AVX-512
   intrinsics built on _mm512_undefined_ps (GCC bug 105593, C++ only).
   Silence it for the lines of that header alone. */
#    pragma GCC diagnostic push
#    pragma GCC diagnostic ignored "-Wuninitialized"
#    pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#    include <immintrin.h>
#    pragma GCC diagnostic pop
#  else
#    include <immintrin.h>
#  endif
#  define MOEXC__BACKEND_NAME "avx512"
#  define MOEXC__VW 16
typedef __m512 moexc__vf;
#  define moexc__vload(p)        _mm512_loadu_ps(p)
#  define moexc__vstore(p, v)    _mm512_storeu_ps((p), (v))
#  define moexc__vset1(x)        _mm512_set1_ps(x)
#  define moexc__vzero()         _mm512_setzero_ps()
#  define moexc__vadd(a, b)      _mm512_add_ps((a), (b))
#  define moexc__vsub(a, b)      _mm512_sub_ps((a), (b))
#  define moexc__vmul(a, b)      _mm512_mul_ps((a), (b))
#  define moexc__vdiv(a, b)      _mm512_div_ps((a), (b))
#  define moexc__vsqrt(a)        _mm512_sqrt_ps(a)
#  define moexc__vfmadd(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#  define moexc__vmax(a, b)      _mm512_max_ps((a), (b))
#  define moexc__vmin(a, b)      _mm512_min_ps((a), (b))
#  define moexc__vhsum(v)        _mm512_reduce_add_ps(v)
#  define moexc__vhmax(v)        _mm512_reduce_max_ps(v)
#  define moexc__vmask_ge(a, b)  ((unsigned)_mm512_cmp_ps_mask((a), (b), _CMP_GE_OQ))
#  define moexc__vround(v)       _mm512_roundscale_ps((v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#  define moexc__vpow2i(n)       _mm512_castsi512_ps(_mm512_slli_epi32( \
                                     _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23))
/* half-width (8-lane) vectors, for rows narrower than 16 floats (RoPE on
   heads of 16: 8 pairs) */
#  define MOEXC__VHW 8
typedef __m256 moexc__vhf;
#  define moexc__vhload(p)       _mm256_loadu_ps(p)
#  define moexc__vhstore(p, v)   _mm256_storeu_ps((p), (v))
#  define moexc__vhset1(x)       _mm256_set1_ps(x)
#  define moexc__vhadd(a, b)     _mm256_add_ps((a), (b))
#  define moexc__vhsub(a, b)     _mm256_sub_ps((a), (b))
#  define moexc__vhmul(a, b)     _mm256_mul_ps((a), (b))
#elif defined(MOEXC__SIMD_AVX2)
#  include <immintrin.h>
#  define MOEXC__BACKEND_NAME "avx2"
#  define MOEXC__VW 8
typedef __m256 moexc__vf;
#  define moexc__vload(p)        _mm256_loadu_ps(p)
#  define moexc__vstore(p, v)    _mm256_storeu_ps((p), (v))
#  define moexc__vset1(x)        _mm256_set1_ps(x)
#  define moexc__vzero()         _mm256_setzero_ps()
#  define moexc__vadd(a, b)      _mm256_add_ps((a), (b))
#  define moexc__vsub(a, b)      _mm256_sub_ps((a), (b))
#  define moexc__vmul(a, b)      _mm256_mul_ps((a), (b))
#  define moexc__vdiv(a, b)      _mm256_div_ps((a), (b))
#  define moexc__vsqrt(a)        _mm256_sqrt_ps(a)
#  define moexc__vmax(a, b)      _mm256_max_ps((a), (b))
#  define moexc__vmin(a, b)      _mm256_min_ps((a), (b))
#  define moexc__vfmadd(a, b, c) _mm256_fmadd_ps((a), (b), (c))
static MOEXC__UNUSED_FN float moexc__avx2_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
static MOEXC__UNUSED_FN float moexc__avx2_hmax(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
#  define moexc__vhsum(v)        moexc__avx2_hsum(v)
#  define moexc__vhmax(v)        moexc__avx2_hmax(v)
#  define moexc__vmask_ge(a, b)  ((unsigned)_mm256_movemask_ps(_mm256_cmp_ps((a), (b), _CMP_GE_OQ)))
#  define moexc__vround(v)       _mm256_round_ps((v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#  define moexc__vpow2i(n)       _mm256_castsi256_ps(_mm256_slli_epi32( \
                                     _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23))
#elif defined(MOEXC__SIMD_SSE2)
#  include <emmintrin.h>
#  define MOEXC__BACKEND_NAME "sse2"
#  define MOEXC__VW 4
typedef __m128 moexc__vf;
#  define moexc__vload(p)        _mm_loadu_ps(p)
#  define moexc__vstore(p, v)    _mm_storeu_ps((p), (v))
#  define moexc__vset1(x)        _mm_set1_ps(x)
#  define moexc__vzero()         _mm_setzero_ps()
#  define moexc__vadd(a, b)      _mm_add_ps((a), (b))
#  define moexc__vsub(a, b)      _mm_sub_ps((a), (b))
#  define moexc__vmul(a, b)      _mm_mul_ps((a), (b))
#  define moexc__vdiv(a, b)      _mm_div_ps((a), (b))
#  define moexc__vsqrt(a)        _mm_sqrt_ps(a)
#  define moexc__vmax(a, b)      _mm_max_ps((a), (b))
#  define moexc__vmin(a, b)      _mm_min_ps((a), (b))
#  define moexc__vfmadd(a, b, c) _mm_add_ps(_mm_mul_ps((a), (b)), (c))
static MOEXC__UNUSED_FN float moexc__sse2_hsum(__m128 s)
{
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
static MOEXC__UNUSED_FN float moexc__sse2_hmax(__m128 s)
{
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
#  define moexc__vhsum(v)        moexc__sse2_hsum(v)
#  define moexc__vhmax(v)        moexc__sse2_hmax(v)
#  define moexc__vmask_ge(a, b)  ((unsigned)_mm_movemask_ps(_mm_cmpge_ps((a), (b))))
#  define moexc__vround(v)       _mm_cvtepi32_ps(_mm_cvtps_epi32(v))
#  define moexc__vpow2i(n)       _mm_castsi128_ps(_mm_slli_epi32( \
                                     _mm_add_epi32(_mm_cvtps_epi32(n), _mm_set1_epi32(127)), 23))
#elif defined(MOEXC__SIMD_NEON)
#  include <arm_neon.h>
#  define MOEXC__BACKEND_NAME "neon"
#  define MOEXC__VW 4
typedef float32x4_t moexc__vf;
#  define moexc__vload(p)        vld1q_f32(p)
#  define moexc__vstore(p, v)    vst1q_f32((p), (v))
#  define moexc__vset1(x)        vdupq_n_f32(x)
#  define moexc__vzero()         vdupq_n_f32(0.0f)
#  define moexc__vadd(a, b)      vaddq_f32((a), (b))
#  define moexc__vsub(a, b)      vsubq_f32((a), (b))
#  define moexc__vmul(a, b)      vmulq_f32((a), (b))
#  define moexc__vdiv(a, b)      vdivq_f32((a), (b))
#  define moexc__vsqrt(a)        vsqrtq_f32(a)
#  define moexc__vmax(a, b)      vmaxq_f32((a), (b))
#  define moexc__vmin(a, b)      vminq_f32((a), (b))
#  define moexc__vfmadd(a, b, c) vfmaq_f32((c), (a), (b))
#  define moexc__vhsum(v)        vaddvq_f32(v)
#  define moexc__vhmax(v)        vmaxvq_f32(v)
#  define moexc__vmask_ge(a, b)  moexc__neon_mask_ge((a), (b))
static MOEXC__UNUSED_FN unsigned moexc__neon_mask_ge(float32x4_t a, float32x4_t b)
{
    static const uint32_t lane_bit[4] = { 1, 2, 4, 8 };
    return vaddvq_u32(vandq_u32(vcgeq_f32(a, b), vld1q_u32(lane_bit)));
}
#  define moexc__vround(v)       vrndnq_f32(v)
#  define moexc__vpow2i(n)       vreinterpretq_f32_s32(vshlq_n_s32( \
                                     vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23))
#else
#  define MOEXC__BACKEND_NAME "scalar"
#  define MOEXC__VW 1
typedef float moexc__vf;
#  define moexc__vload(p)        (*(p))
#  define moexc__vstore(p, v)    (*(p) = (v))
#  define moexc__vset1(x)        (x)
#  define moexc__vzero()         0.0f
#  define moexc__vadd(a, b)      ((a) + (b))
#  define moexc__vsub(a, b)      ((a) - (b))
#  define moexc__vmul(a, b)      ((a) * (b))
#  define moexc__vdiv(a, b)      ((a) / (b))
#  define moexc__vsqrt(a)        sqrtf(a)
#  define moexc__vmax(a, b)      ((a) > (b) ? (a) : (b))
#  define moexc__vmin(a, b)      ((a) < (b) ? (a) : (b))
#  define moexc__vfmadd(a, b, c) ((a) * (b) + (c))
#  define moexc__vhsum(v)        (v)
#  define moexc__vhmax(v)        (v)
#  define moexc__vmask_ge(a, b)  ((unsigned)((a) >= (b)))
/* round to nearest even by the 1.5*2^23 trick: exact for |v| < 2^22 */
static MOEXC__UNUSED_FN float moexc__scalar_round(float v) { volatile float t = v + 12582912.0f; return t - 12582912.0f; }
static MOEXC__UNUSED_FN float moexc__scalar_pow2i(float n)
{
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float r;
    memcpy(&r, &bits, 4);
    return r;
}
#  define moexc__vround(v)       moexc__scalar_round(v)
#  define moexc__vpow2i(n)       moexc__scalar_pow2i(n)
#endif

/* The first n (< MOEXC__VW) floats at p as a vector whose other lanes hold
   fill, and the store of a vector's first n lanes: the tails of row kernels
   (AVX-512 masks them; elsewhere they go through a padded copy). Nothing
   past p + n is read or written. */
#if defined(MOEXC__SIMD_AVX512)
static MOEXC__UNUSED_FN moexc__vf moexc__vload_part(const float *p, size_t n, float fill)
{
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), (__mmask16)((1u << n) - 1u), p);
}
static MOEXC__UNUSED_FN void moexc__vstore_part(float *p, moexc__vf v, size_t n)
{
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), v);
}
#else
static MOEXC__UNUSED_FN moexc__vf moexc__vload_part(const float *p, size_t n, float fill)
{
    float buf[MOEXC__VW];
    size_t i;
    for (i = 0; i < (size_t)MOEXC__VW; i++) buf[i] = i < n ? p[i] : fill;
    return moexc__vload(buf);
}
static MOEXC__UNUSED_FN void moexc__vstore_part(float *p, moexc__vf v, size_t n)
{
    float buf[MOEXC__VW];
    moexc__vstore(buf, v);
    memcpy(p, buf, n * sizeof(float));
}
#endif

MOEXC_DEF const char *moexc_simd_backend(void) { return MOEXC__BACKEND_NAME; }
MOEXC_DEF int moexc_simd_width(void) { return MOEXC__VW; }

/* ======================================================================== */
/* >>tensor: vector kernels                                                  */
/* ======================================================================== */
/* Each kernel is written once over the moexc__v* layer (see >>simd): a main
   loop over whole vectors and a tail for the last n % MOEXC__VW elements.
   With MOEXC_NO_SIMD the same code runs with MOEXC__VW = 1 (the scalar twin).
   No OpenMP here: callers run these inside their own parallel regions.

   What is and is not bit-identical across backends:
   - add, mul, scale, rmsnorm's final scaling: one IEEE operation per element,
     so every backend gives the same bits for the same inputs.
   - adam_update: written without FMA, so C builds (whose ISO modes do not
     contract a*b + c) give the same bits on every backend; a compiler that
     contracts (C++, -ffp-contract=fast) moves the last bit (the twin test:
     4 eps of the terms, measured 2 in a g++ build).
   - axpy: fused multiply-add on AVX2/AVX-512/NEON, two roundings on SSE2 and
     scalar: results differ by at most 1 ulp of the product's rounding.
   - dot, sum (and softmax's and rmsnorm's inner sums): four independent
     vector accumulators (for throughput), combined in a fixed order, so the
     result depends on the backend's width but never on pointer alignment.
   - exp and everything built on it: the same polynomial everywhere; FMA
     contraction changes the last bit or two.
   Tails of the exp-based kernels go through the same vector code on a part
   vector (moexc__vload_part: masked on AVX-512, a padded copy elsewhere), so
   an element's value never depends on its position in the array.
   tests/test_simd_twin.c holds a build to these promises against its scalar
   twin (tolerance / measured on AVX-512): dot 16 / 1.2 eps sum|a_i b_i|,
   sum 16 / 0.7 eps sum|x_i|, axpy 1 / 1 eps (|y| + |alpha x|), exp 2 / 1 ulp,
   silu 5 / 1.2 eps|y|, softmax (4 + sqrt(cols)) / 9.6 eps y (4099 columns),
   rmsnorm 16 / 2.5 eps|y|. */

/* ---- exp --------------------------------------------------------------- */
/* exp(x) = 2^n * exp(r),  n = round(x / ln2),  r = x - n ln2 in [-ln2/2, ln2/2].
   ln2 is split in two (C1 has 9 significant bits, so n*C1 is exact and the
   reduction loses nothing without FMA); exp(r) is the Cephes expf minimax
   polynomial: 1 + r + r^2 (1/2 + r/6 + ...). 2^n is applied as two factors
   2^n1 * 2^n2 (n1 + n2 = n, both in [-75, 64]) so that results underflow
   gradually to denormals and zero, and overflow to +inf, like libm; AVX-512
   applies 2^n with one scalef, which rounds the same way.
   Accuracy (tests/test_kernels.c, 2^22 points evenly over [-87, 88], against
   exp in double): at most 1.27 ulp from the exact value (scalar and SSE2;
   1.26 with FMA on AVX2/AVX-512; a correctly rounded exp would be 0.5), mean
   0.35 ulp. Denormal results (x in [-103.9, -87.3]) are within 0.78 of a
   step of 2^-149. x <= -104 gives 0 and x >= 88.73 gives +inf, as in libm
   (the clamp to [-104, 89] only keeps n in range); -inf gives 0, +inf gives
   +inf, NaN gives NaN. */
#define MOEXC__EXP_LO    -104.0f
#define MOEXC__EXP_HI      89.0f
#define MOEXC__LOG2E        1.44269504088896341f
#define MOEXC__LN2_HI       0.693359375f
#define MOEXC__LN2_LO      -2.12194440e-4f

static MOEXC__UNUSED_FN moexc__vf moexc__vexp(moexc__vf x)
{
    /* The exponent path sees NaN as EXP_HI (min/max return their second
       operand on NaN, the scalar macros do the same) so the float->int
       conversion inside vpow2i is always defined; the polynomial path keeps
       the NaN so it reaches the result. */
    moexc__vf xn = moexc__vmax(moexc__vmin(x, moexc__vset1(MOEXC__EXP_HI)), moexc__vset1(MOEXC__EXP_LO));
    moexc__vf xc = moexc__vmax(moexc__vset1(MOEXC__EXP_LO), moexc__vmin(moexc__vset1(MOEXC__EXP_HI), x));
    moexc__vf n  = moexc__vround(moexc__vmul(xn, moexc__vset1(MOEXC__LOG2E)));
    moexc__vf r, p;
    /* r = x - n ln2 */
    r = moexc__vfmadd(n, moexc__vset1(-MOEXC__LN2_HI), xc);
    r = moexc__vfmadd(n, moexc__vset1(-MOEXC__LN2_LO), r);
    /* exp(r) ~= 1 + r + r^2 P(r) */
    p = moexc__vset1(1.9875691500e-4f);
    p = moexc__vfmadd(p, r, moexc__vset1(1.3981999507e-3f));
    p = moexc__vfmadd(p, r, moexc__vset1(8.3334519073e-3f));
    p = moexc__vfmadd(p, r, moexc__vset1(4.1665795894e-2f));
    p = moexc__vfmadd(p, r, moexc__vset1(1.6666665459e-1f));
    p = moexc__vfmadd(p, r, moexc__vset1(5.0000001201e-1f));
    p = moexc__vfmadd(p, moexc__vmul(r, r), moexc__vadd(r, moexc__vset1(1.0f)));
#if defined(MOEXC__SIMD_AVX512)
    /* exp(x) = exp(r) * 2^n in one instruction (scalef), the same bits as the
       two factors below for every one of the 2^32 inputs */
    return _mm512_scalef_ps(p, n);
#else
    {   /* exp(x) = exp(r) * 2^n1 * 2^n2 */
        moexc__vf n2 = moexc__vround(moexc__vmul(n, moexc__vset1(0.5f)));
        moexc__vf n1 = moexc__vsub(n, n2);
        return moexc__vmul(moexc__vmul(p, moexc__vpow2i(n1)), moexc__vpow2i(n2));
    }
#endif
}

/* silu(x) = x * sigmoid(x) = x / (1 + exp(-x)) */
static MOEXC__UNUSED_FN moexc__vf moexc__vsilu(moexc__vf x)
{
    moexc__vf e = moexc__vexp(moexc__vsub(moexc__vzero(), x));
    return moexc__vdiv(x, moexc__vadd(moexc__vset1(1.0f), e));
}

/* dx = dy * s (1 + x (1 - s)),  s = sigmoid(x) = 1 / (1 + exp(-x)) */
static MOEXC__UNUSED_FN moexc__vf moexc__vsilu_backward(moexc__vf x, moexc__vf dy)
{
    moexc__vf one = moexc__vset1(1.0f);
    moexc__vf s = moexc__vdiv(one, moexc__vadd(one, moexc__vexp(moexc__vsub(moexc__vzero(), x))));
    moexc__vf t = moexc__vfmadd(x, moexc__vsub(one, s), one);
    return moexc__vmul(moexc__vmul(dy, s), t);
}

/* ---- reductions ---------------------------------------------------------- */
/* sum_i a_i b_i with four accumulators: ((acc0 + acc1) + (acc2 + acc3)), then
   the horizontal sum, then the tail in order. */
MOEXC_DEF float moexc_dot(const float *a, const float *b, size_t n)
{
    moexc__vf acc0 = moexc__vzero(), acc1 = moexc__vzero(), acc2 = moexc__vzero(), acc3 = moexc__vzero();
    size_t i = 0;
    float s;
    for (; i + 4 * MOEXC__VW <= n; i += 4 * MOEXC__VW) {
        acc0 = moexc__vfmadd(moexc__vload(a + i), moexc__vload(b + i), acc0);
        acc1 = moexc__vfmadd(moexc__vload(a + i + MOEXC__VW), moexc__vload(b + i + MOEXC__VW), acc1);
        acc2 = moexc__vfmadd(moexc__vload(a + i + 2 * MOEXC__VW), moexc__vload(b + i + 2 * MOEXC__VW), acc2);
        acc3 = moexc__vfmadd(moexc__vload(a + i + 3 * MOEXC__VW), moexc__vload(b + i + 3 * MOEXC__VW), acc3);
    }
    for (; i + MOEXC__VW <= n; i += MOEXC__VW)
        acc0 = moexc__vfmadd(moexc__vload(a + i), moexc__vload(b + i), acc0);
    s = moexc__vhsum(moexc__vadd(moexc__vadd(acc0, acc1), moexc__vadd(acc2, acc3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* sum_i x_i, accumulated like moexc_dot */
MOEXC_DEF float moexc_sum(const float *x, size_t n)
{
    moexc__vf acc0 = moexc__vzero(), acc1 = moexc__vzero(), acc2 = moexc__vzero(), acc3 = moexc__vzero();
    size_t i = 0;
    float s;
    for (; i + 4 * MOEXC__VW <= n; i += 4 * MOEXC__VW) {
        acc0 = moexc__vadd(acc0, moexc__vload(x + i));
        acc1 = moexc__vadd(acc1, moexc__vload(x + i + MOEXC__VW));
        acc2 = moexc__vadd(acc2, moexc__vload(x + i + 2 * MOEXC__VW));
        acc3 = moexc__vadd(acc3, moexc__vload(x + i + 3 * MOEXC__VW));
    }
    for (; i + MOEXC__VW <= n; i += MOEXC__VW) acc0 = moexc__vadd(acc0, moexc__vload(x + i));
    s = moexc__vhsum(moexc__vadd(moexc__vadd(acc0, acc1), moexc__vadd(acc2, acc3)));
    for (; i < n; i++) s += x[i];
    return s;
}

/* max_i x_i for n > 0 (n == 0 returns -FLT_MAX). The accumulators start at
   x_0, itself an element, so no sentinel value can leak into the result.
   Exact on every backend (max does not round); NaN handling is unspecified. */
MOEXC_DEF float moexc_max(const float *x, size_t n)
{
    moexc__vf m0, m1, m2, m3;
    size_t i = 0;
    float m;
    if (n == 0) return -FLT_MAX;
    m0 = m1 = m2 = m3 = moexc__vset1(x[0]);
    for (; i + 4 * MOEXC__VW <= n; i += 4 * MOEXC__VW) {
        m0 = moexc__vmax(m0, moexc__vload(x + i));
        m1 = moexc__vmax(m1, moexc__vload(x + i + MOEXC__VW));
        m2 = moexc__vmax(m2, moexc__vload(x + i + 2 * MOEXC__VW));
        m3 = moexc__vmax(m3, moexc__vload(x + i + 3 * MOEXC__VW));
    }
    for (; i + MOEXC__VW <= n; i += MOEXC__VW) m0 = moexc__vmax(m0, moexc__vload(x + i));
    m = moexc__vhmax(moexc__vmax(moexc__vmax(m0, m1), moexc__vmax(m2, m3)));
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* ---- elementwise ---------------------------------------------------------- */
/* y += alpha x */
MOEXC_DEF void moexc_axpy(float *y, float alpha, const float *x, size_t n)
{
    moexc__vf va = moexc__vset1(alpha);
    size_t i = 0;
    for (; i + MOEXC__VW <= n; i += MOEXC__VW)
        moexc__vstore(y + i, moexc__vfmadd(va, moexc__vload(x + i), moexc__vload(y + i)));
    for (; i < n; i++) y[i] += alpha * x[i];
}

/* x *= alpha */
MOEXC_DEF void moexc_scale(float *x, float alpha, size_t n)
{
    moexc__vf va = moexc__vset1(alpha);
    size_t i = 0;
    for (; i + MOEXC__VW <= n; i += MOEXC__VW) moexc__vstore(x + i, moexc__vmul(moexc__vload(x + i), va));
    for (; i < n; i++) x[i] *= alpha;
}

/* y = a + b */
MOEXC_DEF void moexc_add(float *y, const float *a, const float *b, size_t n)
{
    size_t i = 0;
    for (; i + MOEXC__VW <= n; i += MOEXC__VW)
        moexc__vstore(y + i, moexc__vadd(moexc__vload(a + i), moexc__vload(b + i)));
    for (; i < n; i++) y[i] = a[i] + b[i];
}

/* y = a * b (elementwise) */
MOEXC_DEF void moexc_mul(float *y, const float *a, const float *b, size_t n)
{
    size_t i = 0;
    for (; i + MOEXC__VW <= n; i += MOEXC__VW)
        moexc__vstore(y + i, moexc__vmul(moexc__vload(a + i), moexc__vload(b + i)));
    for (; i < n; i++) y[i] = a[i] * b[i];
}

/* Adam(W) step (declaration in >>api):
     theta *= decay;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
     theta -= step_size m / (sqrt(v) / bc2_sqrt + eps),   g = grad * g_scale */
MOEXC_DEF void moexc_adam_update(float *theta, const float *g, float *m, float *v, size_t n,
                                 const moexc_adam_coeffs *c)
{
    float b1 = c->beta1, b2 = c->beta2, ob1 = 1.0f - c->beta1, ob2 = 1.0f - c->beta2;
    moexc__vf vb1 = moexc__vset1(b1), vb2 = moexc__vset1(b2), vob1 = moexc__vset1(ob1), vob2 = moexc__vset1(ob2);
    moexc__vf vgs = moexc__vset1(c->g_scale), vdecay = moexc__vset1(c->decay), vstep = moexc__vset1(c->step_size);
    moexc__vf vbc2 = moexc__vset1(c->bc2_sqrt), veps = moexc__vset1(c->eps);
    size_t i = 0;
    for (; i + MOEXC__VW <= n; i += MOEXC__VW) {
        moexc__vf gi = moexc__vmul(moexc__vload(g + i), vgs);
        moexc__vf mi = moexc__vadd(moexc__vmul(vb1, moexc__vload(m + i)), moexc__vmul(vob1, gi));
        moexc__vf vi = moexc__vadd(moexc__vmul(vb2, moexc__vload(v + i)), moexc__vmul(moexc__vmul(vob2, gi), gi));
        moexc__vf den = moexc__vadd(moexc__vdiv(moexc__vsqrt(vi), vbc2), veps);
        moexc__vf p = moexc__vmul(moexc__vload(theta + i), vdecay);
        moexc__vstore(m + i, mi);
        moexc__vstore(v + i, vi);
        moexc__vstore(theta + i, moexc__vsub(p, moexc__vmul(vstep, moexc__vdiv(mi, den))));
    }
    for (; i < n; i++) {
        float gi = g[i] * c->g_scale;
        m[i] = b1 * m[i] + ob1 * gi;
        v[i] = b2 * v[i] + ob2 * gi * gi;
        theta[i] = theta[i] * c->decay - c->step_size * (m[i] / (sqrtf(v[i]) / c->bc2_sqrt + c->eps));
    }
}

/* ---- exp, silu ------------------------------------------------------------ */
/* y = exp(x) */
MOEXC_DEF void moexc_exp(float *y, const float *x, size_t n)
{
    size_t i = 0;
    for (; i + MOEXC__VW <= n; i += MOEXC__VW) moexc__vstore(y + i, moexc__vexp(moexc__vload(x + i)));
    if (i < n) {   /* tail: the same vector code on a zero-padded copy */
        float buf[MOEXC__VW] = {0};
        memcpy(buf, x + i, (n - i) * sizeof(float));
        moexc__vstore(buf, moexc__vexp(moexc__vload(buf)));
        memcpy(y + i, buf, (n - i) * sizeof(float));
    }
}

/* y = silu(x) = x sigmoid(x) */
MOEXC_DEF void moexc_silu(float *y, const float *x, size_t n)
{
    size_t i = 0;
    for (; i + MOEXC__VW <= n; i += MOEXC__VW) moexc__vstore(y + i, moexc__vsilu(moexc__vload(x + i)));
    if (i < n) {
        float buf[MOEXC__VW] = {0};
        memcpy(buf, x + i, (n - i) * sizeof(float));
        moexc__vstore(buf, moexc__vsilu(moexc__vload(buf)));
        memcpy(y + i, buf, (n - i) * sizeof(float));
    }
}

/* dx = dy * silu'(x) (overwrites dx; dx may alias x or dy) */
MOEXC_DEF void moexc_silu_backward(float *dx, const float *x, const float *dy, size_t n)
{
    size_t i = 0;
    for (; i + MOEXC__VW <= n; i += MOEXC__VW)
        moexc__vstore(dx + i, moexc__vsilu_backward(moexc__vload(x + i), moexc__vload(dy + i)));
    if (i < n) {
        float bx[MOEXC__VW] = {0}, bdy[MOEXC__VW] = {0};
        memcpy(bx, x + i, (n - i) * sizeof(float));
        memcpy(bdy, dy + i, (n - i) * sizeof(float));
        moexc__vstore(bx, moexc__vsilu_backward(moexc__vload(bx), moexc__vload(bdy)));
        memcpy(dx + i, bx, (n - i) * sizeof(float));
    }
}

/* ---- fused kernels for the layers ----------------------------------------- */
/* act = silu(gate) ⊙ up: the same operations as moexc_silu then moexc_mul,
   in one pass. */
static void moexc__swiglu_act(float *act, const float *gate, const float *up, size_t n)
{
    size_t i = 0;
    for (; i + MOEXC__VW <= n; i += MOEXC__VW)
        moexc__vstore(act + i, moexc__vmul(moexc__vsilu(moexc__vload(gate + i)), moexc__vload(up + i)));
    if (i < n) {
        float bg[MOEXC__VW] = {0}, bu[MOEXC__VW] = {0};
        memcpy(bg, gate + i, (n - i) * sizeof(float));
        memcpy(bu, up + i, (n - i) * sizeof(float));
        moexc__vstore(bg, moexc__vmul(moexc__vsilu(moexc__vload(bg)), moexc__vload(bu)));
        memcpy(act + i, bg, (n - i) * sizeof(float));
    }
}

/* Backward of act = silu(gate) ⊙ up, in one pass (overwrites dgate, dup):
     dup = dact ⊙ silu(gate),  dgate = silu'(gate) ⊙ (dact ⊙ up). */
static void moexc__swiglu_act_backward(float *dgate, float *dup, const float *dact, const float *gate,
                                       const float *up, size_t n)
{
    size_t i = 0;
    for (; i + MOEXC__VW <= n; i += MOEXC__VW) {
        moexc__vf g = moexc__vload(gate + i), da = moexc__vload(dact + i);
        moexc__vstore(dup + i, moexc__vmul(moexc__vsilu(g), da));
        moexc__vstore(dgate + i, moexc__vsilu_backward(g, moexc__vmul(da, moexc__vload(up + i))));
    }
    if (i < n) {
        float bg[MOEXC__VW] = {0}, bda[MOEXC__VW] = {0}, bu[MOEXC__VW] = {0}, bdu[MOEXC__VW];
        moexc__vf g, da;
        memcpy(bg, gate + i, (n - i) * sizeof(float));
        memcpy(bda, dact + i, (n - i) * sizeof(float));
        memcpy(bu, up + i, (n - i) * sizeof(float));
        g = moexc__vload(bg);
        da = moexc__vload(bda);
        moexc__vstore(bdu, moexc__vmul(moexc__vsilu(g), da));
        moexc__vstore(bg, moexc__vsilu_backward(g, moexc__vmul(da, moexc__vload(bu))));
        memcpy(dup + i, bdu, (n - i) * sizeof(float));
        memcpy(dgate + i, bg, (n - i) * sizeof(float));
    }
}

/* rows per batch of the causal-tile softmaxes below (their per-row
   maxima, sums and dot products wait in arrays of this size) */
#define MOEXC__SOFTMAX_ROWS 16

/* Softmax backward of one row p = softmax(x) (dx may alias dy):
     dx = scale · p ⊙ (dy − p·dy).
   p·dy is summed as moexc_dot sums it (the last n % MOEXC__VW products
   added one by one); the tails' products and dx go through part vectors,
   with the same operations per element as whole ones. */
static float moexc__softmax_backward_dot(const float *p, const float *dy, size_t n)
{
    const size_t whole = n / MOEXC__VW * MOEXC__VW, rest = n - whole;
    float pd = moexc_dot(p, dy, whole);
    if (rest) {
        float prod[MOEXC__VW];
        size_t i;
        moexc__vstore(prod, moexc__vmul(moexc__vload_part(p + whole, rest, 0.0f),
                                        moexc__vload_part(dy + whole, rest, 0.0f)));
        for (i = 0; i < rest; i++) pd += prod[i];
    }
    return pd;
}
/* dx = scale · p ⊙ (dy − pd) */
static void moexc__softmax_backward_apply(float *dx, const float *p, const float *dy, size_t n, float pd, float scale)
{
    const size_t whole = n / MOEXC__VW * MOEXC__VW, rest = n - whole;
    moexc__vf vpd = moexc__vset1(pd), vs = moexc__vset1(scale);
    size_t i;
    for (i = 0; i < whole; i += MOEXC__VW)
        moexc__vstore(dx + i, moexc__vmul(moexc__vmul(moexc__vload(p + i),
                                                      moexc__vsub(moexc__vload(dy + i), vpd)), vs));
    if (rest)
        moexc__vstore_part(dx + whole, moexc__vmul(moexc__vmul(moexc__vload_part(p + whole, rest, 0.0f),
                                                               moexc__vsub(moexc__vload_part(dy + whole, rest, 0.0f),
                                                                           vpd)), vs), rest);
}
static void moexc__softmax_backward(float *dx, const float *p, const float *dy, size_t n, float scale)
{
    moexc__softmax_backward_apply(dx, p, dy, n, moexc__softmax_backward_dot(p, dy, n), scale);
}
/* The same in place on rows r = 0 .. rows-1 of dS (dP in, dS out) and P
   (both ld floats apart), row r over its first n0 + r entries, then zeros
   to entry keys - 1: causal attention's tile of queries, like
   moexc__softmax_causal_tile below (all the rows' dot products first). */
static void moexc__softmax_backward_causal_tile(float *dS, const float *P, size_t ld, size_t n0, int rows,
                                                size_t keys, float scale)
{
    float pd[MOEXC__SOFTMAX_ROWS];
    int r0, r, count;
    for (r0 = 0; r0 < rows; r0 += MOEXC__SOFTMAX_ROWS) {
        count = MOEXC__MIN(MOEXC__SOFTMAX_ROWS, rows - r0);
        for (r = 0; r < count; r++)
            pd[r] = moexc__softmax_backward_dot(P + (size_t)(r0 + r) * ld, dS + (size_t)(r0 + r) * ld,
                                                n0 + (size_t)(r0 + r));
        for (r = 0; r < count; r++) {
            const size_t n = n0 + (size_t)(r0 + r);
            float *ds = dS + (size_t)(r0 + r) * ld;
            moexc__softmax_backward_apply(ds, P + (size_t)(r0 + r) * ld, ds, n, pd[r], scale);
            if (n < keys) memset(ds + n, 0, (keys - n) * sizeof(float));
        }
    }
}

/* ---- row-wise: softmax, RMSNorm ------------------------------------------- */
/* y_ij = exp(x_ij - m_i) / sum_j exp(x_ij - m_i),  m_i = max_j x_ij.
   The exponentials are summed as they are stored, in moexc_sum's order
   (four accumulators: a single running sum loses ~sqrt(cols) ulps on long
   rows; the last cols % MOEXC__VW added one by one after them). Entries of
   -inf get weight 0; a row that is all -inf (or holds +inf or NaN) becomes
   NaN, as in PyTorch. A row goes in three steps (the max, the exponentials
   and their sum, the scaling): moexc__softmax_row runs them on one row,
   moexc__softmax_causal_tile on a tile of attention's rows. */
/* m = max_j x_j (exact, so the tail may join it in any order) */
static float moexc__softmax_row_max(const float *x, size_t n)
{
    const size_t whole = n / MOEXC__VW * MOEXC__VW, rest = n - whole;
    float m = moexc_max(x, whole ? whole : n);
    if (whole && rest)          /* the tail's lanes, x_0 in the others */
        m = moexc__vhmax(moexc__vmax(moexc__vset1(m), moexc__vload_part(x + whole, rest, x[0])));
    return m;
}
/* y = exp(x - m), returns the sum of y */
static float moexc__softmax_row_exp(float *y, const float *x, size_t n, float m)
{
    const size_t whole = n / MOEXC__VW * MOEXC__VW, rest = n - whole;
    moexc__vf acc0 = moexc__vzero(), acc1 = moexc__vzero(), acc2 = moexc__vzero(), acc3 = moexc__vzero();
    moexc__vf vm = moexc__vset1(m), e0, e1, e2, e3;
    float sum;
    size_t i = 0;
    for (; i + 4 * MOEXC__VW <= whole; i += 4 * MOEXC__VW) {
        e0 = moexc__vexp(moexc__vsub(moexc__vload(x + i), vm));
        e1 = moexc__vexp(moexc__vsub(moexc__vload(x + i + MOEXC__VW), vm));
        e2 = moexc__vexp(moexc__vsub(moexc__vload(x + i + 2 * MOEXC__VW), vm));
        e3 = moexc__vexp(moexc__vsub(moexc__vload(x + i + 3 * MOEXC__VW), vm));
        moexc__vstore(y + i, e0);
        moexc__vstore(y + i + MOEXC__VW, e1);
        moexc__vstore(y + i + 2 * MOEXC__VW, e2);
        moexc__vstore(y + i + 3 * MOEXC__VW, e3);
        acc0 = moexc__vadd(acc0, e0);
        acc1 = moexc__vadd(acc1, e1);
        acc2 = moexc__vadd(acc2, e2);
        acc3 = moexc__vadd(acc3, e3);
    }
    for (; i < whole; i += MOEXC__VW) {
        e0 = moexc__vexp(moexc__vsub(moexc__vload(x + i), vm));
        moexc__vstore(y + i, e0);
        acc0 = moexc__vadd(acc0, e0);
    }
    sum = moexc__vhsum(moexc__vadd(moexc__vadd(acc0, acc1), moexc__vadd(acc2, acc3)));
    if (rest) {
        moexc__vstore_part(y + whole, moexc__vexp(moexc__vsub(moexc__vload_part(x + whole, rest, 0.0f), vm)), rest);
        for (i = whole; i < n; i++) sum += y[i];
    }
    return sum;
}
/* y *= 1 / sum */
static void moexc__softmax_row_scale(float *y, size_t n, float sum)
{
    const size_t whole = n / MOEXC__VW * MOEXC__VW, rest = n - whole;
    moexc__vf vinv = moexc__vset1(1.0f / sum);
    size_t i;
    for (i = 0; i < whole; i += MOEXC__VW) moexc__vstore(y + i, moexc__vmul(moexc__vload(y + i), vinv));
    if (rest) moexc__vstore_part(y + whole, moexc__vmul(moexc__vload_part(y + whole, rest, 0.0f), vinv), rest);
}
/* one row, y may alias x (moexc_softmax_rows runs it on each row) */
static void moexc__softmax_row(float *y, const float *x, size_t n)
{
    moexc__softmax_row_scale(y, n, moexc__softmax_row_exp(y, x, n, moexc__softmax_row_max(x, n)));
}
/* The same in place on rows r = 0 .. rows-1 of P (ld floats apart), row r
   over its first n0 + r entries (a tile of consecutive queries of causal
   attention, each seeing one more key), then zeros to entry keys - 1. Each
   step runs on every row before the next step: the rows' short dependency
   chains (the max's and the sum's reductions, 1 / sum) then overlap. */
static void moexc__softmax_causal_tile(float *P, size_t ld, size_t n0, int rows, size_t keys)
{
    float m[MOEXC__SOFTMAX_ROWS], sum[MOEXC__SOFTMAX_ROWS];
    int r0, r, count;
    for (r0 = 0; r0 < rows; r0 += MOEXC__SOFTMAX_ROWS) {
        count = MOEXC__MIN(MOEXC__SOFTMAX_ROWS, rows - r0);
        for (r = 0; r < count; r++) m[r] = moexc__softmax_row_max(P + (size_t)(r0 + r) * ld, n0 + (size_t)(r0 + r));
        for (r = 0; r < count; r++) {
            float *row = P + (size_t)(r0 + r) * ld;
            sum[r] = moexc__softmax_row_exp(row, row, n0 + (size_t)(r0 + r), m[r]);
        }
        for (r = 0; r < count; r++) {
            const size_t n = n0 + (size_t)(r0 + r);
            float *row = P + (size_t)(r0 + r) * ld;
            moexc__softmax_row_scale(row, n, sum[r]);
            if (n < keys) memset(row + n, 0, (keys - n) * sizeof(float));
        }
    }
}
MOEXC_DEF void moexc_softmax_rows(float *y, const float *x, int rows, int cols)
{
    int r;
    size_t n = cols > 0 ? (size_t)cols : 0;
    if (rows <= 0 || cols <= 0) return;
    for (r = 0; r < rows; r++) moexc__softmax_row(y + (size_t)r * n, x + (size_t)r * n, n);
}

/* y_ij = g_j x_ij / sqrt(mean_j(x_ij^2) + eps); inv_rms_i = 1 / sqrt(...) */
MOEXC_DEF void moexc_rmsnorm_rows(float *y, float *inv_rms, const float *x, const float *g,
                                  int rows, int cols, float eps)
{
    int r;
    size_t n = cols > 0 ? (size_t)cols : 0;
    if (rows <= 0 || cols <= 0) return;
    for (r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *yr = y + (size_t)r * n;
        float inv = 1.0f / sqrtf(moexc_dot(xr, xr, n) / (float)cols + eps);
        moexc__vf vinv = moexc__vset1(inv);
        size_t i = 0;
        if (inv_rms) inv_rms[r] = inv;
        for (; i + MOEXC__VW <= n; i += MOEXC__VW)
            moexc__vstore(yr + i, moexc__vmul(moexc__vmul(moexc__vload(g + i), moexc__vload(xr + i)), vinv));
        for (; i < n; i++) yr[i] = (g[i] * xr[i]) * inv;
    }
}
/* ======================================================================== */
/* >>gemm: packed, register-blocked GEMM in three layouts                    */
/* ======================================================================== */
/* C (M x N) = alpha * op(A) * op(B) + beta * C, row-major, BLIS-style.
   With OpenMP, C is cut into one slab of whole tiles per thread (rows when
   M >= N, else columns); each thread runs on its slab, with its own buffers:

     for jc in N step NC:
       for pc in K step KC:               B block  (kc x nc)  -> L3
         pack op(B)[pc.., jc..] into NR-wide column panels
         for ic in M step MC:             A block  (mc x kc)  -> L2
           pack op(A)[ic.., pc..] into MR-tall row panels (op(A) = A^T:
             read in place instead, but for a short last panel)
           for jr in nc step NR:          B micro-panel (kc x NR) stays in L1
             for ir in mc step MR:
               micro-kernel: MR x NR tile of C += A panel * B panel over kc

   Packing turns all four layouts (trans_a, trans_b) into the same contiguous
   panels, zero-padded to whole tiles, so one micro-kernel handles every shape.
   op(A) = A^T needs no copy: its MR-tall panel is already MR contiguous
   floats per step, one row of A, and the kernel steps lda floats instead of
   MR.
   The micro-kernel keeps MR x (NR / MOEXC__VW) accumulators in registers: per
   step p it loads NR floats of B and broadcasts MR floats of A.

   Determinism: element C[i][j] is summed over k in a fixed order: K blocks of
   a size that depends on K only, inside a block p = 0, 1, ... into one
   accumulator, whatever tile or slab holds it. Threads split M or N, never K,
   so the bits do not depend on the thread count. SIMD and scalar builds
   differ only by rounding (the scalar twin computes a*b + c with two
   roundings where FMA has one). */

/* Register tile MR x NR per backend: NR = 2 vectors, MR fills the register file
   (accumulators + 2 B vectors + 1 broadcast A). */
#if defined(MOEXC__SIMD_AVX512)
#  define MOEXC__GEMM_MR 14                 /* 28 zmm accumulators of 32 */
#  define MOEXC__GEMM_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)
#  define MOEXC__GEMM_HALF_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6)
#elif defined(MOEXC__SIMD_AVX2)
#  define MOEXC__GEMM_MR 6                  /* 12 ymm accumulators of 16 */
#  define MOEXC__GEMM_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#  define MOEXC__GEMM_HALF_ROWS(X) X(0) X(1) X(2)
#elif defined(MOEXC__SIMD_NEON)
#  define MOEXC__GEMM_MR 8                  /* 16 q accumulators of 32 */
#  define MOEXC__GEMM_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#  define MOEXC__GEMM_HALF_ROWS(X) X(0) X(1) X(2) X(3)
#elif defined(MOEXC__SIMD_SSE2)
#  define MOEXC__GEMM_MR 4                  /* 8 xmm accumulators of 16 (no FMA: mul+add temps) */
#  define MOEXC__GEMM_ROWS(X) X(0) X(1) X(2) X(3)
#  define MOEXC__GEMM_HALF_ROWS(X) X(0) X(1)
#else
#  define MOEXC__GEMM_MR 4                  /* scalar twin: 4 x 2 */
#  define MOEXC__GEMM_ROWS(X) X(0) X(1) X(2) X(3)
#  define MOEXC__GEMM_HALF_ROWS(X) X(0) X(1)
#endif
#define MOEXC__GEMM_NR (2 * MOEXC__VW)

/* Cache blocking, measured with tools/bench_gemm.c on a 2-core Xeon VM
   (Sapphire Rapids class: 48 KiB L1d, 2 MiB L2 per core):
   - KC: every K block reads and writes the whole C block once more, so a
     long KC saves C traffic (it matters when C outgrows L2: 1024^3, and the
     dW shapes whose K is the 4096 tokens). KC = 512 beat 256 by 2-5% there,
     although the B micro-panel (KC x NR x 4 B = 64 KiB on AVX-512) then
     outgrows L1 and is re-read from L2 (the hardware prefetcher keeps up
     with that sequential stream). On Zen 5 an earlier tuning preferred 256.
   - MC: the A block (MC x KC) is streamed from L2 once per B micro-panel; a
     small one (12 tiles = 168 rows on AVX-512, 336 KiB) beat 672 rows by
     4-8%, and the AVX2 path did not care.
   - NC: the B block KC x NC x 4 B (8 MiB) lives in L3. A thread that is
     not one of a team sharing the product by rows (moexc__gemm_blocked)
     narrows its B block to MOEXC__GEMM_B_L2 bytes (1 MiB, half its L2: 512
     columns at KC = 512), so that the block stays in L2 while every A
     block runs over it; the team needs the one N block it has. Where that
     narrowed the block (B blocks of 4 MiB: N = 2048, K = 512, and the
     crosscoder's encoder, N = 16384), 1.03-1.09x on 1 thread and up to
     1.08x on 2; 1024^3 unchanged.
   Override with -DMOEXC_GEMM_KC=... (and _MC, _NC) to tune for another
   machine. */
#ifndef MOEXC_GEMM_KC
#  define MOEXC_GEMM_KC 512
#endif
#ifndef MOEXC_GEMM_MC
#  define MOEXC_GEMM_MC (MOEXC__GEMM_MR * 12)
#endif
#ifndef MOEXC_GEMM_NC
#  define MOEXC_GEMM_NC 4096
#endif
#define MOEXC__GEMM_B_L2 ((size_t)1 << 20)

/* op(A) = A^T is read in place unless lda is a multiple of this many floats
   (2 KiB); see moexc__gemm_blocked. */
#define MOEXC__GEMM_ALIAS 512

/* The micro-kernel, written once over the SIMD macro layer:
     c (MR x NR, row stride ldc) = alpha * sum_p a[p*a_step + r*a_rs] * b[p*NR + j]
                                    + beta * c     (c not read when beta_zero)
   A packed A panel has a_step MR and a_rs 1; op(A) = A^T read in place has
   a_step lda and a_rs 1 (moexc__gemm_kernel); MR rows of a row-major A read
   in place have a_step 1 and a_rs lda (moexc__gemm_kernel_rows). */
#define MOEXC__GEMM_DECL(r) moexc__vf acc##r##_0 = moexc__vzero(), acc##r##_1 = moexc__vzero();
#define MOEXC__GEMM_FMA(r) {                                                     \
        moexc__vf a_r = moexc__vset1(a[(size_t)(r) * a_rs]);                    \
        acc##r##_0 = moexc__vfmadd(a_r, b_0, acc##r##_0);                        \
        acc##r##_1 = moexc__vfmadd(a_r, b_1, acc##r##_1); }
#define MOEXC__GEMM_STORE_OVER(r) {                                              \
        float *c_r = c + (size_t)(r) * ldc;                                      \
        moexc__vstore(c_r, moexc__vmul(v_alpha, acc##r##_0));                    \
        moexc__vstore(c_r + MOEXC__VW, moexc__vmul(v_alpha, acc##r##_1)); }
#define MOEXC__GEMM_STORE_ADD(r) {                                               \
        float *c_r = c + (size_t)(r) * ldc;                                      \
        moexc__vstore(c_r, moexc__vfmadd(v_alpha, acc##r##_0,                    \
                                         moexc__vmul(v_beta, moexc__vload(c_r)))); \
        moexc__vstore(c_r + MOEXC__VW, moexc__vfmadd(v_alpha, acc##r##_1,        \
                          moexc__vmul(v_beta, moexc__vload(c_r + MOEXC__VW)))); }

/* one step p of the micro-kernel: the rank-1 update of the rows ROWS names
   (all MR, or the first half for short edge tiles) by NR columns; the A
   panel is MR floats per step either way */
#define MOEXC__GEMM_STEP(ROWS) {                                                 \
        const moexc__vf b_0 = moexc__vload(b), b_1 = moexc__vload(b + MOEXC__VW); \
        ROWS(MOEXC__GEMM_FMA)                                                    \
        a += a_step;                                                             \
        b += MOEXC__GEMM_NR; }
/* The C tile is read and written only at the end. Its rows are ldc floats
   apart, and when ldc is a multiple of 1024 (4 KiB) all MR rows fall into the
   same two L1 sets (14 lines each on AVX-512, in 12 ways on the Xeon
   measured): lines fetched into L1 when the kernel starts are evicted again
   before the end. So the tile is fetched in two stages: into L2 at the
   start (PREFETCH_C_L2, read hint, locality 2), and into L1 shortly before
   the end (PREFETCH_C_L1, write hint), while the last MOEXC__GEMM_C_AHEAD
   steps still run. Worth 4-5% at 1024^3.
   The next tile's C (c_next, NULL for none) is asked into L2 one tile
   ahead: its row r's two lines with step pair r of the first loop, and the
   rows a short loop leaves over right after that loop. A C that the product
   writes afresh (beta 0, C from memory) then arrives while this tile
   computes. The tile's own L2 prefetch at the start stays: without it the
   products ran 14% slower. Measured on the Xeon VM, operands out of cache:
   C 4096 x 512 and 2048 x 512 with K = 128 1.20-1.31x on 1 thread,
   1.07-1.21x on 2; C 4096 x 1024 at K = 256 and 4096 x 2048 at K = 512
   1.04-1.08x; the dense and MoE training steps 1.00-1.02x. */
#define MOEXC__GEMM_C_AHEAD 24
#if defined(__GNUC__) || defined(__clang__)
#  define MOEXC__GEMM_PREFETCH_C_L2(r) __builtin_prefetch(c + (size_t)(r) * ldc, 0, 2); \
                                       __builtin_prefetch(c + (size_t)(r) * ldc + MOEXC__GEMM_NR - 1, 0, 2);
#  define MOEXC__GEMM_PREFETCH_C_L1(r) __builtin_prefetch(c + (size_t)(r) * ldc, 1, 3); \
                                       __builtin_prefetch(c + (size_t)(r) * ldc + MOEXC__GEMM_NR - 1, 1, 3);
#  define MOEXC__GEMM_PREFETCH_C_NEXT(r) __builtin_prefetch(c_next + (size_t)(r) * ldc, 0, 2); \
                                         __builtin_prefetch(c_next + (size_t)(r) * ldc + MOEXC__GEMM_NR - 1, 0, 2);
#else
#  define MOEXC__GEMM_PREFETCH_C_L2(r)
#  define MOEXC__GEMM_PREFETCH_C_L1(r)
#  define MOEXC__GEMM_PREFETCH_C_NEXT(r)
#endif

/* A step that first asks for the A panel's floats MOEXC__GEMM_C_AHEAD steps
   on (the cache lines holding the first and the last of those MR floats),
   for an A read in place from memory (moexc__gemm_kernel_fetch_a). Used in the kernel's first loop
   only, which ends MOEXC__GEMM_C_AHEAD steps before kc: the address asked
   for is always inside the panel. */
#if defined(__GNUC__) || defined(__clang__)
#  define MOEXC__GEMM_STEP_FETCH_A(ROWS) {                                      \
        __builtin_prefetch(a + MOEXC__GEMM_C_AHEAD * a_step, 0, 3);              \
        __builtin_prefetch(a + MOEXC__GEMM_C_AHEAD * a_step + (MOEXC__GEMM_MR - 1) * a_rs, 0, 3); \
        MOEXC__GEMM_STEP(ROWS) }
#else
#  define MOEXC__GEMM_STEP_FETCH_A(ROWS) MOEXC__GEMM_STEP(ROWS)
#endif

/* The kernel body over the rows ROWS names; FIRST_STEP is the step of its
   first loop (MOEXC__GEMM_STEP, or MOEXC__GEMM_STEP_FETCH_A). c_next (in
   scope) is the next tile's C or NULL. Every step runs in order whatever
   c_next is, so it does not change the bits. */
#define MOEXC__GEMM_KERNEL_BODY(ROWS) MOEXC__GEMM_KERNEL_LOOPS(ROWS, MOEXC__GEMM_STEP)
#define MOEXC__GEMM_KERNEL_LOOPS(ROWS, FIRST_STEP) {                             \
        int p = 0;                                                               \
        ROWS(MOEXC__GEMM_DECL)                                                   \
        ROWS(MOEXC__GEMM_PREFETCH_C_L2)                                          \
        if (c_next) {         /* the next tile's row r with step pair r */      \
            int r_next = 0;                                                      \
            for (; r_next < MOEXC__GEMM_MR && p + 2 <= kc - MOEXC__GEMM_C_AHEAD; r_next++, p += 2) { \
                MOEXC__GEMM_PREFETCH_C_NEXT(r_next)                              \
                FIRST_STEP(ROWS)                                                 \
                FIRST_STEP(ROWS)                                                 \
            }                                                                    \
            for (; r_next < MOEXC__GEMM_MR; r_next++) { MOEXC__GEMM_PREFETCH_C_NEXT(r_next) } \
        }                                                                        \
        /* unrolled by two: less loop overhead per FMA */                        \
        for (; p + 2 <= kc - MOEXC__GEMM_C_AHEAD; p += 2) {                      \
            FIRST_STEP(ROWS)                                                     \
            FIRST_STEP(ROWS)                                                     \
        }                                                                        \
        ROWS(MOEXC__GEMM_PREFETCH_C_L1)                                          \
        for (; p + 2 <= kc; p += 2) {          /* the last steps, same order */  \
            MOEXC__GEMM_STEP(ROWS)                                               \
            MOEXC__GEMM_STEP(ROWS)                                               \
        }                                                                        \
        if (p < kc) { MOEXC__GEMM_STEP(ROWS) }                                   \
        {   /* alpha and beta enter only now: inside the loop every register     \
               holds an accumulator */                                           \
            const moexc__vf v_alpha = moexc__vset1(alpha), v_beta = moexc__vset1(beta); \
            if (beta_zero) { ROWS(MOEXC__GEMM_STORE_OVER) }                      \
            else           { ROWS(MOEXC__GEMM_STORE_ADD) }                       \
        } }

static MOEXC__NOINLINE void moexc__gemm_kernel(int kc, const float *a, size_t a_step, const float *b, float *c,
                                               size_t ldc, float alpha, float beta, int beta_zero, const float *c_next)
{
    const size_t a_rs = 1;
    MOEXC__GEMM_KERNEL_BODY(MOEXC__GEMM_ROWS)
}

/* The same, with A read in place from memory: op(A) = A^T, MR contiguous
   floats per step, a_step = lda floats apart (moexc__gemm_blocked's direct
   A). Each step asks for the floats MOEXC__GEMM_C_AHEAD steps on. With the
   loop unrolled by two, each load instruction strides 2 lda floats, and
   Intel's per-instruction stride prefetcher follows strides of up to 2 KiB
   (its optimization manual): at lda = 256 and 384 (2 and 3 KiB) the first
   pass over a cold A waited on memory, at lda = 128 it did not. Measured on
   the Xeon VM (operands out of cache, dW += dYᵀ X over 2,048 tokens, 1 and
   2 threads): 384 x 128 ([q|k|v] of d 128) 1.12-1.21x, 256 x 128
   1.18-1.20x, 128 x 128 unchanged; a dense training step 1.01x on 2
   threads, 1.025x on 1. */
static MOEXC__NOINLINE void moexc__gemm_kernel_fetch_a(int kc, const float *a, size_t a_step, const float *b,
                                                       float *c, size_t ldc, float alpha, float beta, int beta_zero,
                                                       const float *c_next)
{
    const size_t a_rs = 1;
    MOEXC__GEMM_KERNEL_LOOPS(MOEXC__GEMM_ROWS, MOEXC__GEMM_STEP_FETCH_A)
}

/* The same with A read in place from MR rows of a row-major matrix, a_rs
   floats apart: a[r*a_rs + p]. */
static void moexc__gemm_kernel_rows(int kc, const float *a, size_t a_rs, const float *b, float *c, size_t ldc,
                                    float alpha, float beta, int beta_zero)
{
    const size_t a_step = 1;
    const float *const c_next = NULL;
    MOEXC__GEMM_KERNEL_BODY(MOEXC__GEMM_ROWS)
}

/* The first MR/2 rows only, for edge tiles that short: the same arithmetic
   per element, so the same bits as the full kernel's rows. */
static void moexc__gemm_kernel_half(int kc, const float *a, size_t a_step, const float *b, float *c, size_t ldc,
                                    float alpha, float beta, int beta_zero)
{
    const size_t a_rs = 1;
    const float *const c_next = NULL;
    MOEXC__GEMM_KERNEL_BODY(MOEXC__GEMM_HALF_ROWS)
}

/* A tile cut by the matrix edge (mr < MR or nr < NR): run the same kernel on
   a full tile in a local buffer, so edge elements get the same arithmetic;
   up to MR/2 rows the half kernel computes half the tile. */
static void moexc__gemm_kernel_edge(int kc, const float *a, size_t a_step, const float *b, float *c, size_t ldc,
                                    int mr, int nr, float alpha, float beta, int beta_zero)
{
    float tile[MOEXC__GEMM_MR * MOEXC__GEMM_NR];
    int r, j;
    memset(tile, 0, sizeof(tile));
    if (!beta_zero)
        for (r = 0; r < mr; r++)
            for (j = 0; j < nr; j++) tile[r * MOEXC__GEMM_NR + j] = c[(size_t)r * ldc + (size_t)j];
    if (2 * mr <= MOEXC__GEMM_MR) moexc__gemm_kernel_half(kc, a, a_step, b, tile, MOEXC__GEMM_NR, alpha, beta, beta_zero);
    else moexc__gemm_kernel(kc, a, a_step, b, tile, MOEXC__GEMM_NR, alpha, beta, beta_zero, NULL);
    for (r = 0; r < mr; r++)
        for (j = 0; j < nr; j++) c[(size_t)r * ldc + (size_t)j] = tile[r * MOEXC__GEMM_NR + j];
}

/* Packing is pure data movement, so its SIMD paths and the scalar twin below
   produce identical panels. The layouts where K is the contiguous dimension
   (op(A) = A, op(B) = B^T) need a transpose; on AVX-512 it runs 16 x 16
   blocks through registers, elsewhere element by element. */
#if defined(MOEXC__SIMD_AVX512)
/* dst[p*dst_stride + j] = src[j*ld + p] for j < rows (<= 16), p < 16: a
   16 x 16 transpose in registers (rows past `rows` read as zero); each output
   row stores `rows` floats. Written out in full so that nothing spills. */
/* the full-mask forms of the shuffles: the plain intrinsics read an undefined
   source that g++ 12 -Wuninitialized rejects */
#define MOEXC__UNPACKLO(a, b)     _mm512_mask_unpacklo_ps((a), (__mmask16)0xFFFF, (a), (b))
#define MOEXC__UNPACKHI(a, b)     _mm512_mask_unpackhi_ps((a), (__mmask16)0xFFFF, (a), (b))
#define MOEXC__SHUF(a, b, imm)    _mm512_mask_shuffle_ps((a), (__mmask16)0xFFFF, (a), (b), (imm))
#define MOEXC__SHUF128(a, b, imm) _mm512_mask_shuffle_f32x4((a), (__mmask16)0xFFFF, (a), (b), (imm))
#define MOEXC__T16_LOAD(j) r##j = (j) < rows ? _mm512_loadu_ps(src + (size_t)(j) * ld) : _mm512_setzero_ps();
#define MOEXC__T16_PAIR(i, k)  t##i = MOEXC__UNPACKLO(r##i, r##k); t##k = MOEXC__UNPACKHI(r##i, r##k);
#define MOEXC__T16_QUAD(a, b, c, d)                                               \
    r##a = MOEXC__SHUF(t##a, t##c, 0x44); r##b = MOEXC__SHUF(t##a, t##c, 0xEE); \
    r##c = MOEXC__SHUF(t##b, t##d, 0x44); r##d = MOEXC__SHUF(t##b, t##d, 0xEE);
/* column c of the 4 x 4 blocks: lanes L of r[c], r[4+c], r[8+c], r[12+c] -> rows c, 4+c, 8+c, 12+c */
#define MOEXC__T16_LANES(c0, c1, c2, c3) {                                       \
        __m512 v = MOEXC__SHUF128(r##c0, r##c1, 0x88), w = MOEXC__SHUF128(r##c0, r##c1, 0xDD); \
        __m512 x = MOEXC__SHUF128(r##c2, r##c3, 0x88), y = MOEXC__SHUF128(r##c2, r##c3, 0xDD); \
        t##c0 = MOEXC__SHUF128(v, x, 0x88); t##c1 = MOEXC__SHUF128(w, y, 0x88); \
        t##c2 = MOEXC__SHUF128(v, x, 0xDD); t##c3 = MOEXC__SHUF128(w, y, 0xDD); }
#define MOEXC__T16_STORE(j) _mm512_mask_storeu_ps(dst + (size_t)(j) * dst_stride, keep, t##j);
static void moexc__transpose_block16(float *dst, size_t dst_stride, const float *src, size_t ld, int rows)
{
    const __mmask16 keep = (__mmask16)((1u << rows) - 1u);
    __m512 r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, r13, r14, r15;
    __m512 t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13, t14, t15;
    MOEXC__T16_LOAD(0) MOEXC__T16_LOAD(1) MOEXC__T16_LOAD(2) MOEXC__T16_LOAD(3)
    MOEXC__T16_LOAD(4) MOEXC__T16_LOAD(5) MOEXC__T16_LOAD(6) MOEXC__T16_LOAD(7)
    MOEXC__T16_LOAD(8) MOEXC__T16_LOAD(9) MOEXC__T16_LOAD(10) MOEXC__T16_LOAD(11)
    MOEXC__T16_LOAD(12) MOEXC__T16_LOAD(13) MOEXC__T16_LOAD(14) MOEXC__T16_LOAD(15)
    MOEXC__T16_PAIR(0, 1) MOEXC__T16_PAIR(2, 3) MOEXC__T16_PAIR(4, 5) MOEXC__T16_PAIR(6, 7)       /* interleave row pairs */
    MOEXC__T16_PAIR(8, 9) MOEXC__T16_PAIR(10, 11) MOEXC__T16_PAIR(12, 13) MOEXC__T16_PAIR(14, 15)
    MOEXC__T16_QUAD(0, 1, 2, 3) MOEXC__T16_QUAD(4, 5, 6, 7)                                     /* 4 x 4 per lane */
    MOEXC__T16_QUAD(8, 9, 10, 11) MOEXC__T16_QUAD(12, 13, 14, 15)
    MOEXC__T16_LANES(0, 4, 8, 12) MOEXC__T16_LANES(1, 5, 9, 13)                                 /* lanes to rows */
    MOEXC__T16_LANES(2, 6, 10, 14) MOEXC__T16_LANES(3, 7, 11, 15)
    MOEXC__T16_STORE(0) MOEXC__T16_STORE(1) MOEXC__T16_STORE(2) MOEXC__T16_STORE(3)
    MOEXC__T16_STORE(4) MOEXC__T16_STORE(5) MOEXC__T16_STORE(6) MOEXC__T16_STORE(7)
    MOEXC__T16_STORE(8) MOEXC__T16_STORE(9) MOEXC__T16_STORE(10) MOEXC__T16_STORE(11)
    MOEXC__T16_STORE(12) MOEXC__T16_STORE(13) MOEXC__T16_STORE(14) MOEXC__T16_STORE(15)
}
/* Rows of a transposed operand are short streams (kc floats each) that the
   hardware prefetcher misses: while one panel is transposed, ask for the
   same 16 columns of the next panel's rows. */
static void moexc__prefetch_rows16(const float *src, size_t ld, int rows)
{
    int j;
    for (j = 0; j < rows; j++) {
        const char *line = (const char *)(src + (size_t)j * ld);
        _mm_prefetch(line, _MM_HINT_T0);
        _mm_prefetch(line + 60, _MM_HINT_T0);
    }
}
#endif

/* The copy layouts (op(A) = A^T, op(B) = B) are packed in strips of this many
   source rows (see moexc__gemm_pack_a and moexc__gemm_pack_b). */
#define MOEXC__GEMM_STRIP 8

/* Pack rows [i0, i0+mc) x cols [p0, p0+kc) of op(A) into MR-tall panels:
   panel q holds dst[q*MR*kc + p*MR + r] = op(A)[i0 + q*MR + r][p0 + p], rows
   past mc zero. */
static void moexc__gemm_pack_a(float *dst, int trans_a, const float *A, size_t lda,
                               int i0, int mc, int p0, int kc)
{
    int q, r, p, strip;
    if (trans_a) {
        /* A is (K x M): panel q's column p is MR contiguous floats of A's row
           p0 + p. Walking one panel down all kc rows would touch kc lines lda
           apart; at a power-of-two lda they share a few L1 sets and evict each
           other before the next panel reads the rest of the same lines. So
           the rows go in strips of MOEXC__GEMM_STRIP: a strip (its lines fit
           in the L1 ways) serves every panel before the next strip is read.
           Packing ran 1.4-2x faster than panel by panel. */
        for (strip = 0; strip < kc; strip += MOEXC__GEMM_STRIP) {
            const int strip_end = MOEXC__MIN(strip + MOEXC__GEMM_STRIP, kc);
            for (q = 0; q < mc; q += MOEXC__GEMM_MR) {
                const int mr = MOEXC__MIN(MOEXC__GEMM_MR, mc - q);
                float *d = dst + (size_t)q * (size_t)kc;
                for (p = strip; p < strip_end; p++) {
                    const float *src = A + (size_t)(p0 + p) * lda + (size_t)(i0 + q);
#if defined(MOEXC__SIMD_AVX512) && MOEXC__GEMM_MR <= 16
                    const __mmask16 rows = (__mmask16)((1u << mr) - 1u);
                    _mm512_mask_storeu_ps(d + p * MOEXC__GEMM_MR, (__mmask16)((1u << MOEXC__GEMM_MR) - 1u),
                                          _mm512_maskz_loadu_ps(rows, src));
#else
                    for (r = 0; r < mr; r++) d[p * MOEXC__GEMM_MR + r] = src[r];
                    for (; r < MOEXC__GEMM_MR; r++) d[p * MOEXC__GEMM_MR + r] = 0.0f;
#endif
                }
            }
        }
        return;
    }
    for (q = 0; q < mc; q += MOEXC__GEMM_MR) {    /* A is (M x K): a transpose */
        const int mr = MOEXC__MIN(MOEXC__GEMM_MR, mc - q);
        float *d = dst + (size_t)q * (size_t)kc;
        const float *src = A + (size_t)(i0 + q) * lda + (size_t)p0;
        p = 0;
#if defined(MOEXC__SIMD_AVX512) && MOEXC__GEMM_MR <= 16
        for (; p + 16 <= kc; p += 16) {
            if (q + MOEXC__GEMM_MR < mc)
                moexc__prefetch_rows16(src + (size_t)MOEXC__GEMM_MR * lda + (size_t)p, lda,
                                       MOEXC__MIN(MOEXC__GEMM_MR, mc - q - MOEXC__GEMM_MR));
            moexc__transpose_block16(d + p * MOEXC__GEMM_MR, MOEXC__GEMM_MR, src + p, lda, mr);
        }
#endif
        for (; p < kc; p++) {
            for (r = 0; r < mr; r++) d[p * MOEXC__GEMM_MR + r] = src[(size_t)r * lda + (size_t)p];
            for (; r < MOEXC__GEMM_MR; r++) d[p * MOEXC__GEMM_MR + r] = 0.0f;
        }
        if (mr < MOEXC__GEMM_MR)   /* the transpose stored only mr floats per p */
            for (p = 0; p < kc; p++)
                for (r = mr; r < MOEXC__GEMM_MR; r++) d[p * MOEXC__GEMM_MR + r] = 0.0f;
    }
}

/* Pack the NR-wide column panel starting at column j0 (nr <= NR valid
   columns) of rows [p0, p0+kc) of op(B) = B^T, B (N x K): a transpose,
   dst[p*NR + j] = B[j0+j][p0+p]. next_nr: valid columns of the next panel. */
static void moexc__gemm_pack_bt_panel(float *dst, const float *B, size_t ldb,
                                      int j0, int nr, int next_nr, int p0, int kc)
{
    int p, j;
    const float *src = B + (size_t)j0 * ldb + (size_t)p0;
    p = 0;
#if defined(MOEXC__SIMD_AVX512) && MOEXC__GEMM_NR == 32
    for (; p + 16 <= kc; p += 16) {
        if (next_nr > 0)        /* rows of the next panel: (j0 + NR + j) */
            moexc__prefetch_rows16(src + (size_t)MOEXC__GEMM_NR * ldb + (size_t)p, ldb, MOEXC__MIN(next_nr, 16));
        moexc__transpose_block16(dst + p * MOEXC__GEMM_NR, MOEXC__GEMM_NR, src + p, ldb, MOEXC__MIN(nr, 16));
        if (nr > 16) {
            if (next_nr > 16)
                moexc__prefetch_rows16(src + (size_t)(MOEXC__GEMM_NR + 16) * ldb + (size_t)p, ldb, next_nr - 16);
            moexc__transpose_block16(dst + p * MOEXC__GEMM_NR + 16, MOEXC__GEMM_NR,
                                     src + 16 * ldb + p, ldb, nr - 16);
        } else {
            for (j = 0; j < 16; j++) memset(dst + (p + j) * MOEXC__GEMM_NR + 16, 0, 16 * sizeof(float));
        }
    }
#endif
    (void)next_nr;
    for (; p < kc; p++) {
        for (j = 0; j < nr; j++) dst[p * MOEXC__GEMM_NR + j] = src[(size_t)j * ldb + (size_t)p];
        for (; j < MOEXC__GEMM_NR; j++) dst[p * MOEXC__GEMM_NR + j] = 0.0f;
    }
}

/* Pack columns [j0, j0+nc) x rows [p0, p0+kc) of op(B) into NR-wide panels:
   panel jr holds dst[jr*kc + p*NR + j] = op(B)[p0 + p][j0 + jr + j], columns
   past nc zero. */
static void moexc__gemm_pack_b(float *dst, int trans_b, const float *B, size_t ldb,
                               int j0, int nc, int p0, int kc)
{
    int jr, p, j, strip;
    if (trans_b) {
        for (jr = 0; jr < nc; jr += MOEXC__GEMM_NR)
            moexc__gemm_pack_bt_panel(dst + (size_t)jr * (size_t)kc, B, ldb, j0 + jr,
                                      MOEXC__MIN(MOEXC__GEMM_NR, nc - jr),
                                      MOEXC__MAX(0, MOEXC__MIN(MOEXC__GEMM_NR, nc - jr - MOEXC__GEMM_NR)), p0, kc);
        return;
    }
    /* B is (K x N): panel jr's row p is NR contiguous floats of B's row p0 + p,
       copied in strips of rows that serve every panel (as in pack_a) */
    for (strip = 0; strip < kc; strip += MOEXC__GEMM_STRIP) {
        const int strip_end = MOEXC__MIN(strip + MOEXC__GEMM_STRIP, kc);
        for (jr = 0; jr < nc; jr += MOEXC__GEMM_NR) {
            const int nr = MOEXC__MIN(MOEXC__GEMM_NR, nc - jr);
            float *d = dst + (size_t)jr * (size_t)kc;
            for (p = strip; p < strip_end; p++) {
                const float *src = B + (size_t)(p0 + p) * ldb + (size_t)(j0 + jr);
                if (nr == MOEXC__GEMM_NR) {
                    moexc__vstore(d + p * MOEXC__GEMM_NR, moexc__vload(src));
                    moexc__vstore(d + p * MOEXC__GEMM_NR + MOEXC__VW, moexc__vload(src + MOEXC__VW));
                } else {
                    for (j = 0; j < nr; j++) d[p * MOEXC__GEMM_NR + j] = src[j];
                    for (; j < MOEXC__GEMM_NR; j++) d[p * MOEXC__GEMM_NR + j] = 0.0f;
                }
            }
        }
    }
}

/* C = beta * C (beta == 0: C = 0 without reading C). */
static void moexc__gemm_scale_c(int M, int N, float beta, float *C, size_t ldc)
{
    int i, j;
    for (i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        if (beta == 0.0f) for (j = 0; j < N; j++) c[j] = 0.0f;
        else if (beta != 1.0f) for (j = 0; j < N; j++) c[j] *= beta;
    }
}

/* C's starting value: beta * C, or with c_row (N floats) that row in every
   row of C (the products' "C = c_row + alpha op(A) op(B)", see
   moexc__sgemm_ex). */
static void moexc__gemm_init_c(int M, int N, float beta, const float *c_row, float *C, size_t ldc)
{
    int i;
    if (!c_row) { moexc__gemm_scale_c(M, N, beta, C, ldc); return; }
    for (i = 0; i < M; i++) memcpy(C + (size_t)i * ldc, c_row, (size_t)N * sizeof(float));
}

/* Fallback when the packing buffers cannot be allocated: no extra memory,
   slower, same semantics (different rounding order from the packed path). */
static void moexc__gemm_unpacked(int trans_a, int trans_b, int M, int N, int K,
                                 float alpha, const float *A, size_t lda,
                                 const float *B, size_t ldb, float *C, size_t ldc)
{
    int i, j, p;
    for (i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        for (p = 0; p < K; p++) {
            float a = alpha * (trans_a ? A[(size_t)p * lda + (size_t)i] : A[(size_t)i * lda + (size_t)p]);
            if (trans_b) for (j = 0; j < N; j++) c[j] += a * B[(size_t)j * ldb + (size_t)p];
            else         for (j = 0; j < N; j++) c[j] += a * B[(size_t)p * ldb + (size_t)j];
        }
    }
}

/* What a product runs on rows of C as soon as they are final (see
   moexc__sgemm_then): rows(ctx, first, end) for C's rows [first, end), each
   row exactly once, possibly from several threads at a time on disjoint rows.
   With one K block and one N block (K <= MOEXC_GEMM_KC, N <= MOEXC_GEMM_NC)
   a thread calls it on each block of at most MOEXC_GEMM_MC rows it has just
   finished, while they are still in its cache; otherwise once the product is
   done. It must not depend on which rows come together: an element-wise
   step gives the same bits as a pass over the whole of C afterwards. */
typedef struct moexc__gemm_then {
    void (*rows)(const void *ctx, int first, int end);
    const void *ctx;
} moexc__gemm_then;

/* A team of threads sharing one product by rows (see moexc__gemm_blocked).
   The rows' MR tiles are cut into one slab per thread, as a fixed split
   would cut them; each slab's unclaimed tiles are [front, back). A thread
   claims from the front of its own slab, a quarter of what is left there
   (at least one tile): it computes the rows that the steps before and after
   the product, split the same way, touch on its own core. With its own slab
   done it claims a quarter of the back of the slab with the most tiles
   left: a thread the host slows down leaves its last tiles to the others. */
typedef struct moexc__gemm_team {
    int M, threads;
    int *front, *back;      /* per slab, in MR tiles */
} moexc__gemm_team;

/* Thread t's next claim: returns its first row (M when no row is left) and
   sets *end to its end. Every claim starts on a multiple of MR. */
static int moexc__gemm_claim(moexc__gemm_team *team, int t, int *end)
{
    int first = team->M;
#ifdef _OPENMP
#pragma omp critical (moexc__gemm_claim)
#endif
    {
        int s = t, left = team->back[t] - team->front[t], i, take;
        if (left <= 0)      /* own slab done: the back of the fullest one */
            for (i = 0; i < team->threads; i++)
                if (team->back[i] - team->front[i] > left) { left = team->back[i] - team->front[i]; s = i; }
        if (left > 0) {
            take = MOEXC__MAX(left / 4, 1);
            if (s == t) { first = team->front[s] * MOEXC__GEMM_MR; team->front[s] += take; }
            else        { team->back[s] -= take; first = team->back[s] * MOEXC__GEMM_MR; }
            *end = MOEXC__MIN(team->M, first + take * MOEXC__GEMM_MR);
        }
    }
    if (first >= team->M) *end = team->M;
    return first;
}

/* A tile of C (mr x nr) set to nr floats of c_row in every row. */
static void moexc__gemm_tile_from_row(int mr, int nr, const float *c_row, float *c, size_t ldc)
{
    int r, j;
    if (nr == MOEXC__GEMM_NR) {
        const moexc__vf lo = moexc__vload(c_row), hi = moexc__vload(c_row + MOEXC__VW);
        for (r = 0; r < mr; r++) {
            moexc__vstore(c + (size_t)r * ldc, lo);
            moexc__vstore(c + (size_t)r * ldc + MOEXC__VW, hi);
        }
    } else {
        for (r = 0; r < mr; r++)
            for (j = 0; j < nr; j++) c[(size_t)r * ldc + (size_t)j] = c_row[j];
    }
}

/* One thread's GEMM: the blocked loop nest above over its own packing
   buffers. team == NULL: all M rows of C. Otherwise the thread is thread t
   of a team that shares the product: it computes the rows it claims
   (moexc__gemm_claim), which needs one K block and one N block (K <=
   MOEXC_GEMM_KC, N <= MOEXC_GEMM_NC). The register tiles start on
   multiples of MR either way and see the same operands, so each element of
   C gets the same arithmetic whichever thread computes it. then (may be
   NULL) runs on the rows computed here, numbered from row_base (C is row
   row_base of the caller's product). */
static void moexc__gemm_blocked(int trans_a, int trans_b, int M, int N, int K,
                                float alpha, const float *A, size_t lda,
                                const float *B, size_t ldb, float beta, const float *c_row, float *C, size_t ldc,
                                moexc__gemm_team *team, int t, const moexc__gemm_then *then, int row_base)
{
    int k_blocks, kc_max, nc_max, nc_block, m_blocks, mc, jc, pc, kb, ic, rows_final;
    /* op(A) = A^T, A (K x M): the kernel can read its A panel in place (MR
       contiguous floats of one row of A per step, the next step lda floats
       on) instead of a packed copy. That skips a pass over A, worth 8-20% on
       the weight-gradient products dY^T X (K = tokens). Not when lda is a
       multiple of MOEXC__GEMM_ALIAS floats (2 KiB): the A block's rows then
       crowd into a fraction of L2's sets and in-place reads ran slower than
       packing (measured on the dW shapes of the default models). */
    const int direct_a = trans_a && lda % MOEXC__GEMM_ALIAS != 0;
    void *raw;
    float *buffer, *bp, *ap;

    /* K blocks of near-equal size in whole cache lines; they depend on K only,
       so every element is summed in the same order whatever the split */
    k_blocks = (K + MOEXC_GEMM_KC - 1) / MOEXC_GEMM_KC;
    kc_max = (K + k_blocks - 1) / k_blocks;
    kc_max = (kc_max + 15) / 16 * 16;
    k_blocks = (K + kc_max - 1) / kc_max;
    nc_block = MOEXC_GEMM_NC;   /* B blocks in L2 when no team needs one block */
    if (!team) {
        const int l2_cols = (int)(MOEXC__GEMM_B_L2 / ((size_t)kc_max * sizeof(float))) / MOEXC__GEMM_NR * MOEXC__GEMM_NR;
        if (l2_cols >= MOEXC__GEMM_NR && l2_cols < nc_block) nc_block = l2_cols;
    }
    rows_final = k_blocks == 1 && N <= nc_block;   /* a row block is final when computed */
    nc_max = MOEXC__MIN(N, nc_block);
    nc_max = (nc_max + MOEXC__GEMM_NR - 1) / MOEXC__GEMM_NR * MOEXC__GEMM_NR;
    m_blocks = (M + MOEXC_GEMM_MC - 1) / MOEXC_GEMM_MC;        /* near-equal M blocks */
    mc = (M + m_blocks - 1) / m_blocks;
    mc = (mc + MOEXC__GEMM_MR - 1) / MOEXC__GEMM_MR * MOEXC__GEMM_MR;

    /* Panels are written before they are read, so the buffer needs no zeroing
       (moexc__alloc_floats would clear it on every call): plain memory from
       the base allocator, aligned here to a cache line. */
    raw = moexc__malloc(moexc__mul_size((size_t)kc_max * ((size_t)nc_max + (size_t)mc) + 16, sizeof(float)));
    buffer = raw ? (float *)((uintptr_t)((char *)raw + 63) / 64 * 64) : NULL;
    if (!buffer) {              /* no memory for panels: slower, but still right */
        int first = 0, end = M;
        if (team) first = moexc__gemm_claim(team, t, &end);
        while (first < M) {
            float *c = C + (size_t)first * ldc;
            const float *a = trans_a ? A + first : A + (size_t)first * lda;
            moexc__gemm_init_c(end - first, N, beta, c_row, c, ldc);
            moexc__gemm_unpacked(trans_a, trans_b, end - first, N, K, alpha, a, lda, B, ldb, c, ldc);
            if (then) then->rows(then->ctx, row_base + first, row_base + end);
            first = team ? moexc__gemm_claim(team, t, &end) : M;
        }
        return;
    }
    bp = buffer;
    ap = buffer + (size_t)kc_max * (size_t)nc_max;

    for (jc = 0; jc < N; jc += nc_block) {
        const int nc = MOEXC__MIN(nc_block, N - jc);
        for (kb = 0, pc = 0; kb < k_blocks; kb++, pc += kc_max) {
            const int kc = MOEXC__MIN(kc_max, K - pc);
            /* the first K block applies beta (not reading C when beta == 0)
               or, with c_row, starts each tile from that row (copied into
               the tile just before the kernel reads it); later blocks
               accumulate */
            const int row_init = kb == 0 && c_row != NULL;
            const float beta_k = kb == 0 && !c_row ? beta : 1.0f;
            const int beta_zero = kb == 0 && !c_row && beta == 0.0f;
            int jr, ir, rows_end = M;     /* this thread's rows: [ic, rows_end) */
            moexc__gemm_pack_b(bp, trans_b, B, ldb, jc, nc, pc, kc);
            ic = team ? moexc__gemm_claim(team, t, &rows_end) : 0;
            while (ic < M) {
                const int mcb = MOEXC__MIN(mc, rows_end - ic);
                if (!direct_a) moexc__gemm_pack_a(ap, trans_a, A, lda, ic, mcb, pc, kc);
                else if (mcb % MOEXC__GEMM_MR)   /* only the short last panel, zero-padded */
                    moexc__gemm_pack_a(ap, trans_a, A, lda, ic + mcb / MOEXC__GEMM_MR * MOEXC__GEMM_MR,
                                       mcb % MOEXC__GEMM_MR, pc, kc);
                for (jr = 0; jr < nc; jr += MOEXC__GEMM_NR) {
                    const int nr = MOEXC__MIN(MOEXC__GEMM_NR, nc - jr);
                    const float *b_panel = bp + (size_t)jr * (size_t)kc;
                    for (ir = 0; ir < mcb; ir += MOEXC__GEMM_MR) {
                        const int mr = MOEXC__MIN(MOEXC__GEMM_MR, mcb - ir);
                        /* in place: MR floats of A's row pc + p at step p */
                        const int in_place = direct_a && mr == MOEXC__GEMM_MR;
                        const float *a_panel = in_place ? A + (size_t)pc * lda + (size_t)(ic + ir)
                                             : direct_a ? ap : ap + (size_t)ir * (size_t)kc;
                        const size_t a_step = in_place ? lda : (size_t)MOEXC__GEMM_MR;
                        float *c = C + (size_t)(ic + ir) * ldc + (size_t)(jc + jr);
                        /* the next whole tile: below in this panel, or the next panel's first */
                        const float *c_next =
                            ir + 2 * MOEXC__GEMM_MR <= mcb ? c + (size_t)MOEXC__GEMM_MR * ldc
                            : jr + 2 * MOEXC__GEMM_NR <= nc ? C + (size_t)ic * ldc + (size_t)(jc + jr + MOEXC__GEMM_NR)
                            : NULL;
                        if (row_init) moexc__gemm_tile_from_row(mr, nr, c_row + jc + jr, c, ldc);
                        /* the first B panel's tiles read this A block from memory */
                        if (in_place && jr == 0 && nr == MOEXC__GEMM_NR)
                            moexc__gemm_kernel_fetch_a(kc, a_panel, a_step, b_panel, c, ldc, alpha, beta_k,
                                                       beta_zero, c_next);
                        else if (mr == MOEXC__GEMM_MR && nr == MOEXC__GEMM_NR)
                            moexc__gemm_kernel(kc, a_panel, a_step, b_panel, c, ldc, alpha, beta_k, beta_zero, c_next);
                        else
                            moexc__gemm_kernel_edge(kc, a_panel, a_step, b_panel, c, ldc, mr, nr,
                                                    alpha, beta_k, beta_zero);
                    }
                }
                if (then && rows_final) then->rows(then->ctx, row_base + ic, row_base + ic + mcb);
                ic += mcb;
                if (team && ic >= rows_end) ic = moexc__gemm_claim(team, t, &rows_end);
            }
        }
    }
    if (then && !rows_final) then->rows(then->ctx, row_base, row_base + M);
    moexc__free(raw);
}

/* moexc_sgemm, then `then` (may be NULL) on every row of C: on blocks of
   rows as they are finished where the product allows it (see
   moexc__gemm_then), so that a step that reads C row by row right after the
   product finds it in cache instead of making a pass of its own. With c_row
   (N floats, may be NULL) C starts from that row in every row instead of
   beta * C (beta is then not used): C = c_row + alpha op(A) op(B), a
   broadcast bias without a pass that writes it into C first, and the same
   bits as that pass followed by the product with beta = 1. */
static void moexc__sgemm_ex(int trans_a, int trans_b, int M, int N, int K,
                            float alpha, const float *A, int lda,
                            const float *B, int ldb,
                            float beta, const float *c_row, float *C, int ldc, const moexc__gemm_then *then)
{
    const size_t slda = (size_t)lda, sldb = (size_t)ldb, sldc = (size_t)ldc;
    int threads = 1;

    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {
        moexc__gemm_init_c(M, N, beta, c_row, C, sldc);
        if (then) then->rows(then->ctx, 0, M);
        return;
    }

#ifdef _OPENMP
    /* small products are not worth waking a team; the bits do not change */
    if (!omp_in_parallel() && (double)M * (double)N * (double)K >= 1048576.0)
        threads = omp_get_max_threads();
#endif
    if (threads <= 1) {
        moexc__gemm_blocked(trans_a, trans_b, M, N, K, alpha, A, slda, B, sldb, beta, c_row, C, sldc, NULL, 0, then, 0);
        return;
    }
#ifdef _OPENMP
    {
        /* Each thread computes its own rows or columns of C, in whole tiles,
           with its own packing buffers. Rows are split when M >= N (each
           thread then packs all of op(B), the smaller operand), otherwise
           columns. With one K block and one N block (every forward and
           input-gradient product of the models), the threads claim rows
           (moexc__gemm_team): each its own slab first, then the tail of the
           slab with the most left, because on a shared host one thread often
           runs slower and a fixed slab would leave the other waiting at the
           end. Otherwise (a weight gradient summed over the tokens: several
           K blocks, summed in order) each thread takes a fixed slab. */
        const int split_rows = M >= N;
        const int unit = split_rows ? MOEXC__GEMM_MR : MOEXC__GEMM_NR;
        const int extent = split_rows ? M : N;
        const int units = (extent + unit - 1) / unit;
        int t;
        int *slabs = NULL;
        if (threads > units) threads = units;
        if (split_rows && K <= MOEXC_GEMM_KC && N <= MOEXC_GEMM_NC)
            slabs = (int *)moexc__malloc(2 * (size_t)threads * sizeof(int));
        if (slabs) {    /* no memory for the slabs: the fixed split below */
            moexc__gemm_team team;
            team.M = M; team.threads = threads; team.front = slabs; team.back = slabs + threads;
            for (t = 0; t < threads; t++) {
                team.front[t] = (int)((long long)units * t / threads);
                team.back[t] = (int)((long long)units * (t + 1) / threads);
            }
#           pragma omp parallel num_threads(threads)
            moexc__gemm_blocked(trans_a, trans_b, M, N, K, alpha, A, slda, B, sldb, beta, c_row, C, sldc, &team,
                                omp_get_thread_num(), then, 0);
            moexc__free(slabs);
            return;
        }
#       pragma omp parallel for schedule(static, 1) num_threads(threads)
        for (t = 0; t < threads; t++) {
            const int first = (int)((long long)units * t / threads) * unit;
            const int last = MOEXC__MIN(extent, (int)((long long)units * (t + 1) / threads) * unit);
            if (first >= last) continue;
            if (split_rows)
                moexc__gemm_blocked(trans_a, trans_b, last - first, N, K, alpha,
                                    trans_a ? A + first : A + (size_t)first * slda, slda,
                                    B, sldb, beta, c_row, C + (size_t)first * sldc, sldc, NULL, 0, then, first);
            else
                moexc__gemm_blocked(trans_a, trans_b, M, last - first, K, alpha, A, slda,
                                    trans_b ? B + (size_t)first * sldb : B + first, sldb,
                                    beta, c_row ? c_row + first : NULL, C + first, sldc, NULL, 0, NULL, 0);
        }
        /* split by columns, no row is final before the end */
        if (then && !split_rows) then->rows(then->ctx, 0, M);
    }
#endif
}

static void moexc__sgemm_then(int trans_a, int trans_b, int M, int N, int K,
                              float alpha, const float *A, int lda,
                              const float *B, int ldb,
                              float beta, float *C, int ldc, const moexc__gemm_then *then)
{
    moexc__sgemm_ex(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, NULL, C, ldc, then);
}

MOEXC_DEF void moexc_sgemm(int trans_a, int trans_b, int M, int N, int K,
                           float alpha, const float *A, int lda,
                           const float *B, int ldb,
                           float beta, float *C, int ldc)
{
    moexc__sgemm_then(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
}

/* Y (M x N) = X (M x K) * W^T, W (N x K); bias (N) broadcast over rows. */
MOEXC_DEF void moexc_linear_forward(float *Y, const float *X, const float *W, const float *bias,
                                    int M, int N, int K)
{
    int i, j;
    moexc_sgemm(0, 1, M, N, K, 1.0f, X, K, W, K, 0.0f, Y, N);
    if (bias)
        for (i = 0; i < M; i++)
            for (j = 0; j < N; j++) Y[(size_t)i * (size_t)N + (size_t)j] += bias[j];
}

/* dX (M x K) (+)= dY (M x N) * W (N x K) */
MOEXC_DEF void moexc_linear_backward_input(float *dX, const float *dY, const float *W,
                                           int M, int N, int K, int accumulate)
{
    moexc_sgemm(0, 0, M, K, N, 1.0f, dY, N, W, K, accumulate ? 1.0f : 0.0f, dX, K);
}

/* dW (N x K) += dY^T (N x M) * X (M x K) */
MOEXC_DEF void moexc_linear_backward_weight(float *dW, const float *dY, const float *X,
                                            int M, int N, int K)
{
    moexc_sgemm(1, 0, N, K, M, 1.0f, dY, N, X, K, 1.0f, dW, K);
}
/* ======================================================================== */
/* Data and checkpoints: >>data (tokens, token files, built-in corpus) and    */
/* >>checkpoint (JSON, safetensors).                                          */
/* ======================================================================== */

/* ---- helpers shared by >>data and >>checkpoint: whole-file reading, a
   growable string, UTF-8 validation, JSON string output ------------------- */

/* Read a whole file into a fresh buffer (freed with moexc__free). */
static MOEXC__UNUSED_FN moexc_status moexc__read_file(const char *path, unsigned char **out, size_t *out_size,
                                                      moexc_error *err)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0;
    *out = NULL;
    *out_size = 0;
    if (!f) return moexc__fail(err, MOEXC_ERR_IO, "%s: cannot open for reading", path);
    for (;;) {
        size_t got;
        if (len == cap) {
            size_t new_cap = cap ? cap * 2 : (size_t)1 << 16;
            unsigned char *p;
            if (new_cap < cap) { moexc__free(buf); fclose(f); return moexc__fail(err, MOEXC_ERR_NOMEM, "%s: file too large", path); }
            p = (unsigned char *)moexc__realloc(buf, new_cap);
            if (!p) { moexc__free(buf); fclose(f); return moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory reading the file", path); }
            buf = p;
            cap = new_cap;
        }
        got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    if (ferror(f)) { moexc__free(buf); fclose(f); return moexc__fail(err, MOEXC_ERR_IO, "%s: read error", path); }
    fclose(f);
    *out = buf;
    *out_size = len;
    return MOEXC_OK;
}

/* 64-bit file offsets on every platform: _fseeki64/_ftelli64 on Windows,
   fseeko/ftello where POSIX declares them (off_t is 64 bits on 64-bit hosts
   and with -D_FILE_OFFSET_BITS=64 on 32-bit ones), else fseek/ftell (long;
   64 bits on LP64 hosts). An offset the host type cannot hold fails (-1),
   so a reader reports an error instead of seeking to a wrapped position. */
static MOEXC__UNUSED_FN int moexc__fseek64(FILE *f, int64_t offset, int whence)
{
#if defined(_WIN32)
    return _fseeki64(f, (__int64)offset, whence);
#elif (defined(_POSIX_C_SOURCE) && _POSIX_C_SOURCE >= 200112L) || (defined(_XOPEN_SOURCE) && _XOPEN_SOURCE >= 500) || \
      defined(__APPLE__)
    if ((int64_t)(off_t)offset != offset) return -1;
    return fseeko(f, (off_t)offset, whence);
#else
    if (offset > (int64_t)LONG_MAX || offset < (int64_t)LONG_MIN) return -1;
    return fseek(f, (long)offset, whence);
#endif
}
static MOEXC__UNUSED_FN int64_t moexc__ftell64(FILE *f)
{
#if defined(_WIN32)
    return (int64_t)_ftelli64(f);
#elif (defined(_POSIX_C_SOURCE) && _POSIX_C_SOURCE >= 200112L) || (defined(_XOPEN_SOURCE) && _XOPEN_SOURCE >= 500) || \
      defined(__APPLE__)
    return (int64_t)ftello(f);
#else
    return (int64_t)ftell(f);
#endif
}
/* Size of an open file in bytes (the position is left at the end), -1 if
   it cannot be told. */
static MOEXC__UNUSED_FN int64_t moexc__file_size64(FILE *f)
{
    if (moexc__fseek64(f, 0, SEEK_END) != 0) return -1;
    return moexc__ftell64(f);
}

typedef struct moexc__sb { char *buf; size_t len, cap; int oom; } moexc__sb;   /* string builder */

static MOEXC__UNUSED_FN void moexc__sb_putn(moexc__sb *sb, const char *s, size_t n)
{
    if (sb->oom) return;
    if (sb->len + n + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap : 256;
        char *p;
        while (cap < sb->len + n + 1) cap *= 2;
        p = (char *)moexc__realloc(sb->buf, cap);
        if (!p) { sb->oom = 1; return; }
        sb->buf = p;
        sb->cap = cap;
    }
    memcpy(sb->buf + sb->len, s, n);
    sb->len += n;
    sb->buf[sb->len] = '\0';
}
static MOEXC__UNUSED_FN void moexc__sb_puts(moexc__sb *sb, const char *s) { moexc__sb_putn(sb, s, strlen(s)); }
static MOEXC__UNUSED_FN void moexc__sb_putu64(moexc__sb *sb, uint64_t v)
{
    char tmp[24];
    int i = (int)sizeof(tmp);
    do { tmp[--i] = (char)('0' + (int)(v % 10)); v /= 10; } while (v);
    moexc__sb_putn(sb, tmp + i, sizeof(tmp) - (size_t)i);
}

/* Length of the valid UTF-8 sequence at s (n bytes available), 0 if invalid:
   overlong forms, surrogates and code points above U+10FFFF are invalid. */
static MOEXC__UNUSED_FN size_t moexc__utf8_len(const unsigned char *s, size_t n)
{
    uint32_t cp;
    size_t len, i;
    if (n == 0) return 0;
    if (s[0] < 0x80) return 1;
    if (s[0] >= 0xC2 && s[0] <= 0xDF)      { len = 2; cp = s[0] & 0x1Fu; }
    else if ((s[0] & 0xF0) == 0xE0)        { len = 3; cp = s[0] & 0x0Fu; }
    else if (s[0] >= 0xF0 && s[0] <= 0xF4) { len = 4; cp = s[0] & 0x07u; }
    else return 0;
    if (n < len) return 0;
    for (i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3Fu);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}
static MOEXC__UNUSED_FN int moexc__utf8_valid(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t k = moexc__utf8_len((const unsigned char *)s + i, n - i);
        if (!k) return 0;
        i += k;
    }
    return 1;
}

/* Append s as a JSON string literal, escaped as serde_json and Python's
   json.dumps(ensure_ascii=False) do: \" \\ \b \f \n \r \t, other control
   characters as \u00xx, everything else (UTF-8 included) verbatim. */
static MOEXC__UNUSED_FN void moexc__sb_json_string(moexc__sb *sb, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    moexc__sb_putn(sb, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[7];
        switch (c) {
        case '"':  moexc__sb_putn(sb, "\\\"", 2); break;
        case '\\': moexc__sb_putn(sb, "\\\\", 2); break;
        case '\b': moexc__sb_putn(sb, "\\b", 2); break;
        case '\f': moexc__sb_putn(sb, "\\f", 2); break;
        case '\n': moexc__sb_putn(sb, "\\n", 2); break;
        case '\r': moexc__sb_putn(sb, "\\r", 2); break;
        case '\t': moexc__sb_putn(sb, "\\t", 2); break;
        default:
            if (c < 0x20) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                moexc__sb_putn(sb, esc, 6);
            } else {
                moexc__sb_putn(sb, s, 1);
            }
        }
    }
    moexc__sb_putn(sb, "\"", 1);
}

/* ======================================================================== */
/* >>data: byte tokenizer, token-stream files, built-in corpus               */
/* ======================================================================== */

MOEXC_DEF void moexc_tokens_free(moexc_tokens *t)
{
    if (!t) return;
    moexc__free(t->tokens);
    moexc__free(t->domains);
    memset(t, 0, sizeof(*t));
}

MOEXC_DEF moexc_status moexc_tokens_add_domain(moexc_tokens *t, const char *name, int *index, moexc_error *err)
{
    size_t len;
    int i;
    if (!t || !name) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_tokens_add_domain: NULL argument");
    len = strlen(name);
    if (len == 0 || len >= MOEXC_DOMAIN_NAME_MAX || !moexc__utf8_valid(name, len))
        return moexc__fail(err, MOEXC_ERR_ARG, "domain name '%.64s': must be 1..%d bytes of UTF-8",
                           name, MOEXC_DOMAIN_NAME_MAX - 1);
    for (i = 0; i < t->n_domains; i++)
        if (strcmp(t->domain_names[i], name) == 0) { if (index) *index = i; return MOEXC_OK; }
    if (t->n_domains >= MOEXC_MAX_DOMAINS)
        return moexc__fail(err, MOEXC_ERR_ARG, "domain '%s': already %d domains (the maximum)", name, MOEXC_MAX_DOMAINS);
    memset(t->domain_names[t->n_domains], 0, MOEXC_DOMAIN_NAME_MAX);
    memcpy(t->domain_names[t->n_domains], name, len);
    if (index) *index = t->n_domains;
    t->n_domains++;
    return MOEXC_OK;
}

/* Room for `more` tokens (capacity grows geometrically). */
static moexc_status moexc__tokens_reserve(moexc_tokens *t, size_t more, moexc_error *err)
{
    size_t need = t->n + more, cap;
    uint16_t *tok;
    uint8_t *dom;
    if (need < t->n) return moexc__fail(err, MOEXC_ERR_NOMEM, "token stream too large");
    if (need <= t->capacity && t->tokens && t->domains) return MOEXC_OK;
    cap = t->capacity ? t->capacity : 4096;
    while (cap < need) cap = cap * 2 > cap ? cap * 2 : need;
    if (!moexc__mul_size(cap, sizeof(uint16_t))) return moexc__fail(err, MOEXC_ERR_NOMEM, "token stream too large");
    tok = (uint16_t *)moexc__realloc(t->tokens, cap * sizeof(uint16_t));
    if (!tok) return moexc__fail(err, MOEXC_ERR_NOMEM, "out of memory for %lu tokens", (unsigned long)need);
    t->tokens = tok;
    dom = (uint8_t *)moexc__realloc(t->domains, cap);
    if (!dom) return moexc__fail(err, MOEXC_ERR_NOMEM, "out of memory for %lu tokens", (unsigned long)need);
    t->domains = dom;
    t->capacity = cap;
    return MOEXC_OK;
}

static moexc_status moexc__tokens_check_domain(const moexc_tokens *t, int domain, moexc_error *err)
{
    if (domain < 0 || domain >= t->n_domains)
        return moexc__fail(err, MOEXC_ERR_ARG, "domain index %d out of range (%d domains registered)", domain, t->n_domains);
    return MOEXC_OK;
}

/* Byte tokenizer: token id = byte value. */
MOEXC_DEF moexc_status moexc_tokens_append_bytes(moexc_tokens *t, const void *text, size_t len, int domain, moexc_error *err)
{
    const unsigned char *p = (const unsigned char *)text;
    moexc_status st;
    size_t i;
    if (!t || (!text && len)) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_tokens_append_bytes: NULL argument");
    if (t->vocab_size == 0) t->vocab_size = 256;
    if (t->vocab_size < 256)
        return moexc__fail(err, MOEXC_ERR_ARG, "byte tokens need vocab_size >= 256 (it is %d)", t->vocab_size);
    if ((st = moexc__tokens_check_domain(t, domain, err)) != MOEXC_OK) return st;
    if ((st = moexc__tokens_reserve(t, len, err)) != MOEXC_OK) return st;
    for (i = 0; i < len; i++) t->tokens[t->n + i] = p[i];
    memset(t->domains + t->n, domain, len);
    t->n += len;
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_tokens_append_document(moexc_tokens *t, const void *text, size_t len, int domain,
                                                    moexc_error *err)
{
    static const unsigned char newline_sep[2] = { '\n', MOEXC_DOC_SEPARATOR };
    moexc_status st = moexc_tokens_append_bytes(t, text, len, domain, err);
    int ends_with_newline = len > 0 && ((const unsigned char *)text)[len - 1] == '\n';
    if (st != MOEXC_OK) return st;
    return moexc_tokens_append_bytes(t, newline_sep + ends_with_newline, 2 - (size_t)ends_with_newline, domain, err);
}

MOEXC_DEF moexc_status moexc_tokens_append(moexc_tokens *t, const uint16_t *ids, size_t n, int domain, moexc_error *err)
{
    moexc_status st;
    size_t i;
    if (!t || (!ids && n)) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_tokens_append: NULL argument");
    if (t->vocab_size <= 0 || t->vocab_size > 65536)
        return moexc__fail(err, MOEXC_ERR_ARG, "moexc_tokens_append: vocab_size %d outside 1..65536", t->vocab_size);
    if ((st = moexc__tokens_check_domain(t, domain, err)) != MOEXC_OK) return st;
    for (i = 0; i < n; i++)
        if (ids[i] >= t->vocab_size)
            return moexc__fail(err, MOEXC_ERR_ARG, "token %lu: id %u >= vocab_size %d", (unsigned long)i, ids[i], t->vocab_size);
    if ((st = moexc__tokens_reserve(t, n, err)) != MOEXC_OK) return st;
    if (n) memcpy(t->tokens + t->n, ids, n * sizeof(uint16_t));
    memset(t->domains + t->n, domain, n);
    t->n += n;
    return MOEXC_OK;
}

MOEXC_DEF size_t moexc_tokens_domain_count(const moexc_tokens *t, int domain)
{
    size_t i, c = 0;
    if (!t || domain < 0 || domain >= t->n_domains) return 0;
    for (i = 0; i < t->n; i++) c += t->domains[i] == domain;
    return c;
}

/* ---- token-stream file -----------------------------------------------------
   All integers little-endian.
     offset            size         field
     0                 8            magic "MOEXCTOK"
     8                 4   u32      version (1)
     12                4   u32      vocab_size, 1..65536
     16                4   u32      n_domains, 0..16 (>= 1 when there are tokens)
     20                4   u32      flags, 0 (reserved)
     24                8   u64      n_tokens
     32                32 * n_domains   domain names: UTF-8, NUL-padded, 1..31 bytes, unique
     32 + 32 D         2 * n_tokens     u16 token ids, each < vocab_size
     ...               n_tokens         u8 domain label per token, each < n_domains
     end - 4           4   u32      CRC-32 (zlib) of every byte before it
   Loading checks the magic, version, counts against the file size, the CRC,
   then names, labels and ids; every message names the file and the field. */
#define MOEXC__TOK_MAGIC "MOEXCTOK"
#define MOEXC__TOK_VERSION 1u
#define MOEXC__TOK_HEADER 32u

MOEXC_DEF moexc_status moexc_tokens_save(const moexc_tokens *t, const char *path, moexc_error *err)
{
    unsigned char head[MOEXC__TOK_HEADER + MOEXC_MAX_DOMAINS * MOEXC_DOMAIN_NAME_MAX], buf[4096];
    moexc__crc_tables tables;
    size_t head_len, i, done;
    uint32_t crc;
    int vocab, d;
    moexc__atomic_file af;
    moexc_status st;
    if (!t || !path) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_tokens_save: NULL argument");
    vocab = t->vocab_size ? t->vocab_size : 256;
    if (vocab < 1 || vocab > 65536) return moexc__fail(err, MOEXC_ERR_ARG, "%s: vocab_size %d outside 1..65536", path, vocab);
    if (t->n_domains < 0 || t->n_domains > MOEXC_MAX_DOMAINS || (t->n && t->n_domains == 0))
        return moexc__fail(err, MOEXC_ERR_ARG, "%s: n_domains %d invalid for %lu tokens", path, t->n_domains, (unsigned long)t->n);
    if (t->n && (!t->tokens || !t->domains)) return moexc__fail(err, MOEXC_ERR_ARG, "%s: token arrays are NULL", path);
    for (i = 0; i < t->n; i++) {
        if (t->tokens[i] >= vocab)
            return moexc__fail(err, MOEXC_ERR_ARG, "%s: token %lu: id %u >= vocab_size %d", path, (unsigned long)i, t->tokens[i], vocab);
        if (t->domains[i] >= t->n_domains)
            return moexc__fail(err, MOEXC_ERR_ARG, "%s: token %lu: domain label %u >= n_domains %d", path, (unsigned long)i, t->domains[i], t->n_domains);
    }
    memset(head, 0, sizeof(head));
    memcpy(head, MOEXC__TOK_MAGIC, 8);
    moexc__put_u32le(head + 8, MOEXC__TOK_VERSION);
    moexc__put_u32le(head + 12, (uint32_t)vocab);
    moexc__put_u32le(head + 16, (uint32_t)t->n_domains);
    moexc__put_u32le(head + 20, 0);
    moexc__put_u64le(head + 24, (uint64_t)t->n);
    for (d = 0; d < t->n_domains; d++) {
        size_t len = strlen(t->domain_names[d]);
        if (len == 0 || len >= MOEXC_DOMAIN_NAME_MAX || !moexc__utf8_valid(t->domain_names[d], len))
            return moexc__fail(err, MOEXC_ERR_ARG, "%s: domain %d has an invalid name", path, d);
        memcpy(head + MOEXC__TOK_HEADER + (size_t)d * MOEXC_DOMAIN_NAME_MAX, t->domain_names[d], len);
    }
    head_len = MOEXC__TOK_HEADER + (size_t)t->n_domains * MOEXC_DOMAIN_NAME_MAX;
    if ((st = moexc__atomic_open(&af, path, err)) != MOEXC_OK) return st;
    crc = moexc__crc32(0, head, head_len);
    if (fwrite(head, 1, head_len, af.f) != head_len) goto write_error;
    moexc__crc_tables_build(&tables);
    for (done = 0; done < t->n;) {   /* tokens as u16le, in chunks */
        size_t chunk = MOEXC__MIN(t->n - done, sizeof(buf) / 2);
        for (i = 0; i < chunk; i++) {
            buf[2 * i] = (unsigned char)t->tokens[done + i];
            buf[2 * i + 1] = (unsigned char)(t->tokens[done + i] >> 8);
        }
        crc = moexc__crc32_sliced(&tables, crc, buf, 2 * chunk);
        if (fwrite(buf, 1, 2 * chunk, af.f) != 2 * chunk) goto write_error;
        done += chunk;
    }
    crc = moexc__crc32_sliced(&tables, crc, t->domains, t->n);
    if (t->n && fwrite(t->domains, 1, t->n, af.f) != t->n) goto write_error;
    moexc__put_u32le(buf, crc);
    if (fwrite(buf, 1, 4, af.f) != 4) goto write_error;
    return moexc__atomic_commit(&af, err);
write_error:
    moexc__atomic_abort(&af);
    return moexc__fail(err, MOEXC_ERR_IO, "%s: write failed (disk full?)", path);
}

MOEXC_DEF moexc_status moexc_tokens_load_memory(moexc_tokens *t, const void *data, size_t size, const char *name,
                                                moexc_error *err)
{
    const unsigned char *p = (const unsigned char *)data;
    uint32_t version, vocab, n_domains, flags, stored, crc;
    uint64_t n, expect;
    size_t i, tok_off, lab_off;
    moexc_status st;
    moexc_tokens tmp;   /* filled while validating; copied to *t on success */
    int d, e;
    if (!t) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_tokens_load: t is NULL");
    memset(t, 0, sizeof(*t));
    memset(&tmp, 0, sizeof(tmp));
    if (!name) name = "(memory)";
    if (!p && size) return moexc__fail(err, MOEXC_ERR_ARG, "%s: data is NULL", name);
    if (size < MOEXC__TOK_HEADER + 4)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: file is %lu bytes, shorter than the %u-byte minimum (truncated?)",
                           name, (unsigned long)size, MOEXC__TOK_HEADER + 4);
    if (memcmp(p, MOEXC__TOK_MAGIC, 8) != 0)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: bad magic (not a moexc token file)", name);
    version = moexc__get_u32le(p + 8);
    vocab = moexc__get_u32le(p + 12);
    n_domains = moexc__get_u32le(p + 16);
    flags = moexc__get_u32le(p + 20);
    n = moexc__get_u64le(p + 24);
    if (version != MOEXC__TOK_VERSION)
        return moexc__fail(err, MOEXC_ERR_VERSION, "%s: version %u, this build reads version %u", name, version, MOEXC__TOK_VERSION);
    if (vocab < 1 || vocab > 65536)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: vocab_size %u outside 1..65536", name, vocab);
    if (n_domains > MOEXC_MAX_DOMAINS)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: n_domains %u above the maximum %d", name, n_domains, MOEXC_MAX_DOMAINS);
    if (flags != 0) return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: flags 0x%x, expected 0", name, flags);
    /* size = header + names + 2 n + n + crc (n < 2^61 keeps this exact) */
    expect = n < (UINT64_C(1) << 61) ? MOEXC__TOK_HEADER + (uint64_t)n_domains * MOEXC_DOMAIN_NAME_MAX + 3 * n + 4 : 0;
    if (expect == 0 || expect != (uint64_t)size)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: file is %lu bytes but n_tokens %llu and n_domains %u imply %llu (truncated?)",
                           name, (unsigned long)size, (unsigned long long)n, n_domains, (unsigned long long)expect);
    stored = moexc__get_u32le(p + size - 4);
    crc = moexc__crc32(0, p, size - 4);
    if (stored != crc)
        return moexc__fail(err, MOEXC_ERR_CHECKSUM, "%s: CRC-32 0x%08x stored, 0x%08x computed (file corrupted)", name, stored, crc);
    if (n && n_domains == 0) return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: %llu tokens but no domains", name, (unsigned long long)n);
    for (d = 0; d < (int)n_domains; d++) {
        const char *nm = (const char *)p + MOEXC__TOK_HEADER + (size_t)d * MOEXC_DOMAIN_NAME_MAX;
        size_t len = 0;
        while (len < MOEXC_DOMAIN_NAME_MAX && nm[len]) len++;
        if (len == 0 || len == MOEXC_DOMAIN_NAME_MAX || !moexc__utf8_valid(nm, len))
            return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: domain %d: name is empty, unterminated or not UTF-8", name, d);
        for (i = len; i < MOEXC_DOMAIN_NAME_MAX; i++)
            if (nm[i]) return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: domain %d: name padding is not zero", name, d);
        for (e = 0; e < d; e++)
            if (strcmp(tmp.domain_names[e], nm) == 0)
                return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: domain %d: duplicate name '%s'", name, d, nm);
        memcpy(tmp.domain_names[d], nm, len + 1);
    }
    tok_off = MOEXC__TOK_HEADER + (size_t)n_domains * MOEXC_DOMAIN_NAME_MAX;
    lab_off = tok_off + 2 * (size_t)n;
    for (i = 0; i < (size_t)n; i++) {
        unsigned id = (unsigned)p[tok_off + 2 * i] | ((unsigned)p[tok_off + 2 * i + 1] << 8);
        if (id >= vocab)
            return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: token %lu: id %u >= vocab_size %u", name, (unsigned long)i, id, vocab);
        if (p[lab_off + i] >= n_domains)
            return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: token %lu: domain label %u >= n_domains %u",
                               name, (unsigned long)i, p[lab_off + i], n_domains);
    }
    tmp.vocab_size = (int)vocab;
    tmp.n_domains = (int)n_domains;
    if ((st = moexc__tokens_reserve(&tmp, (size_t)n, err)) != MOEXC_OK) {
        moexc_tokens_free(&tmp);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory for %llu tokens", name, (unsigned long long)n);
    }
    if (n) {
        memcpy(tmp.tokens, p + tok_off, 2 * (size_t)n);
        moexc__le16_swap_inplace(tmp.tokens, (size_t)n);
        memcpy(tmp.domains, p + lab_off, (size_t)n);
    }
    tmp.n = (size_t)n;
    *t = tmp;
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_tokens_load(moexc_tokens *t, const char *path, moexc_error *err)
{
    unsigned char *buf;
    size_t size;
    moexc_status st;
    if (!t || !path) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_tokens_load: NULL argument");
    memset(t, 0, sizeof(*t));
    if ((st = moexc__read_file(path, &buf, &size, err)) != MOEXC_OK) return st;
    st = moexc_tokens_load_memory(t, buf, size, path, err);
    moexc__free(buf);
    return st;
}

/* ---- built-in corpus: a small grammar engine -------------------------------
   The built-in corpus is generated, not shipped: three generators of our own
   write C-like code, scientific prose with LaTeX math and simple stories.
   Prose comes from template grammars expanded by this engine:
     <key>    a random alternative of rule `key` (alternatives are separated
              by '|' and are templates themselves)
     <^key>   the same with its first letter capitalised
     <!key>   the same preceded by "a " or "an "
     <Key>    (uppercase first letter) a per-document variable, e.g. the
              story's hero, set by the generator before each document
     <dig> <num> <big> <dec> <pct> <year>  random numbers
   A '<' not followed by a key and '>' is literal text. Beyond
   MOEXC__GEN_MAX_DEPTH nested expansions the first alternative is taken,
   so every recursive rule lists a non-recursive alternative first. */
#define MOEXC__GEN_MAX_DEPTH 12
#define MOEXC__GEN_MAX_VARS 24

typedef struct moexc__rule { const char *key; const char *alts; } moexc__rule;
typedef struct moexc__alt { const char *text; size_t len; } moexc__alt;
typedef struct moexc__rule_index { const char *key; int first, count; } moexc__rule_index;

typedef struct moexc__gen {
    moexc_rng rng;
    moexc__sb out;
    moexc__rule_index *index;   /* rules sorted by key */
    int n_rules;
    moexc__alt *alts;
    int depth;
    const char *var_key[MOEXC__GEN_MAX_VARS];
    const char *var_val[MOEXC__GEN_MAX_VARS];
    int n_vars;
} moexc__gen;

static int moexc__rule_index_cmp(const void *a, const void *b)
{
    return strcmp(((const moexc__rule_index *)a)->key, ((const moexc__rule_index *)b)->key);
}

static void moexc__gen_free(moexc__gen *g)
{
    moexc__free(g->index);
    moexc__free(g->alts);
    moexc__free(g->out.buf);
    memset(g, 0, sizeof(*g));
}

static moexc_status moexc__gen_init(moexc__gen *g, const moexc__rule *rules, int n_rules, uint64_t seed, moexc_error *err)
{
    int r, n_alts = 0;
    memset(g, 0, sizeof(*g));
    moexc_rng_seed(&g->rng, seed);
    for (r = 0; r < n_rules; r++) {
        const char *s;
        n_alts++;
        for (s = rules[r].alts; *s; s++) n_alts += *s == '|';
    }
    g->index = (moexc__rule_index *)moexc__calloc((size_t)n_rules, sizeof(*g->index));
    g->alts = (moexc__alt *)moexc__calloc((size_t)n_alts, sizeof(*g->alts));
    if (!g->index || !g->alts) { moexc__gen_free(g); return moexc__fail(err, MOEXC_ERR_NOMEM, "built-in corpus: out of memory"); }
    for (n_alts = 0, r = 0; r < n_rules; r++) {
        const char *s = rules[r].alts, *bar;
        g->index[r].key = rules[r].key;
        g->index[r].first = n_alts;
        for (;;) {
            bar = strchr(s, '|');
            g->alts[n_alts].text = s;
            g->alts[n_alts].len = bar ? (size_t)(bar - s) : strlen(s);
            n_alts++;
            if (!bar) break;
            s = bar + 1;
        }
        g->index[r].count = n_alts - g->index[r].first;
    }
    qsort(g->index, (size_t)n_rules, sizeof(*g->index), moexc__rule_index_cmp);
    g->n_rules = n_rules;
    return MOEXC_OK;
}

static void moexc__gen_var(moexc__gen *g, const char *key, const char *value)
{
    int i;
    for (i = 0; i < g->n_vars; i++)
        if (strcmp(g->var_key[i], key) == 0) { g->var_val[i] = value; return; }
    MOEXC_ASSERT(g->n_vars < MOEXC__GEN_MAX_VARS);
    if (g->n_vars >= MOEXC__GEN_MAX_VARS) return;
    g->var_key[g->n_vars] = key;
    g->var_val[g->n_vars++] = value;
}

static uint32_t moexc__gen_below(moexc__gen *g, uint32_t n) { return moexc_rng_below(&g->rng, n); }
static int moexc__gen_chance(moexc__gen *g, int percent) { return (int)moexc_rng_below(&g->rng, 100) < percent; }
static const char *moexc__gen_pick(moexc__gen *g, const char *const *list, int n) { return list[moexc_rng_below(&g->rng, (uint32_t)n)]; }

static void moexc__gen_expand(moexc__gen *g, const char *s, size_t n);

static int moexc__key_eq(const char *key, size_t klen, const char *word)
{
    return strncmp(key, word, klen) == 0 && word[klen] == '\0';
}

static void moexc__gen_slot(moexc__gen *g, const char *key, size_t klen)
{
    char num[32];
    int lo = 0, hi = g->n_rules - 1, i;
    if (key[0] >= 'A' && key[0] <= 'Z') {   /* a per-document variable */
        for (i = 0; i < g->n_vars; i++)
            if (moexc__key_eq(key, klen, g->var_key[i])) { moexc__gen_expand(g, g->var_val[i], strlen(g->var_val[i])); return; }
        MOEXC_ASSERT(!"unset corpus variable");
        return;
    }
    while (lo <= hi) {   /* binary search over the sorted rule keys */
        int mid = lo + (hi - lo) / 2, c = strncmp(g->index[mid].key, key, klen);
        if (c == 0 && g->index[mid].key[klen] != '\0') c = 1;
        if (c == 0) {
            const moexc__rule_index *r = &g->index[mid];
            int pick = g->depth >= MOEXC__GEN_MAX_DEPTH ? 0 : (int)moexc__gen_below(g, (uint32_t)r->count);
            g->depth++;
            moexc__gen_expand(g, g->alts[r->first + pick].text, g->alts[r->first + pick].len);
            g->depth--;
            return;
        }
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    if (moexc__key_eq(key, klen, "dig"))       snprintf(num, sizeof(num), "%u", 1 + moexc__gen_below(g, 9));
    else if (moexc__key_eq(key, klen, "num"))  snprintf(num, sizeof(num), "%u", 2 + moexc__gen_below(g, 199));
    else if (moexc__key_eq(key, klen, "big"))  snprintf(num, sizeof(num), "%u", 100 + moexc__gen_below(g, 9900));
    else if (moexc__key_eq(key, klen, "dec"))  snprintf(num, sizeof(num), "0.%02u", 1 + moexc__gen_below(g, 99));
    else if (moexc__key_eq(key, klen, "pct")) {   /* one draw: the order of argument evaluation is unspecified */
        uint32_t v = 500 + moexc__gen_below(g, 500);
        snprintf(num, sizeof(num), "%u.%u", v / 10, v % 10);
    }
    else if (moexc__key_eq(key, klen, "year")) snprintf(num, sizeof(num), "%u", 1995 + moexc__gen_below(g, 30));
    else { MOEXC_ASSERT(!"unknown corpus rule"); return; }
    moexc__sb_puts(&g->out, num);
}

static void moexc__gen_expand(moexc__gen *g, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i, k, start;
        char mod = 0;
        while (j < n && s[j] != '<') j++;
        moexc__sb_putn(&g->out, s + i, j - i);
        if (j >= n) return;
        k = j + 1;
        if (k < n && (s[k] == '^' || s[k] == '!')) mod = s[k++];
        start = k;
        while (k < n && ((s[k] >= 'a' && s[k] <= 'z') || (s[k] >= 'A' && s[k] <= 'Z') || (s[k] >= '0' && s[k] <= '9') || s[k] == '_')) k++;
        if (k >= n || s[k] != '>' || k == start) {   /* a literal '<' */
            moexc__sb_putn(&g->out, "<", 1);
            i = j + 1;
            continue;
        }
        {
            size_t at = g->out.len;
            moexc__gen_slot(g, s + start, k - start);
            if (g->out.oom || g->out.len == at) { i = k + 1; continue; }
            if (mod == '^' && g->out.buf[at] >= 'a' && g->out.buf[at] <= 'z') g->out.buf[at] = (char)(g->out.buf[at] - 'a' + 'A');
            if (mod == '!') {   /* "a" or "an" by the first letter (with the usual exceptions) */
                const char *w = g->out.buf + at;
                int vowel = strchr("aeiouAEIOU", w[0]) != NULL && w[0] != '\0';
                const char *art;
                size_t alen;
                if (strncmp(w, "uni", 3) == 0 || strncmp(w, "use", 3) == 0 || strncmp(w, "one", 3) == 0 ||
                    strncmp(w, "eu", 2) == 0) vowel = 0;
                if (strncmp(w, "hour", 4) == 0 || strncmp(w, "honest", 6) == 0) vowel = 1;
                art = vowel ? "an " : "a ";
                alen = strlen(art);
                moexc__sb_putn(&g->out, art, alen);   /* grow, then shift the word right */
                if (!g->out.oom) {
                    memmove(g->out.buf + at + alen, g->out.buf + at, g->out.len - alen - at);
                    memcpy(g->out.buf + at, art, alen);
                }
            }
        }
        i = k + 1;
    }
}

static void moexc__gen_say(moexc__gen *g, const char *tmpl) { moexc__gen_expand(g, tmpl, strlen(tmpl)); }

/* ---- corpus domain 1: C-like source code -------------------------------------
   A file: a comment, includes, defines, a struct or two, then functions whose
   bodies are generated recursively (if/else, for, while, switch, calls,
   assignments, returns) with braces and parentheses matched by construction,
   four-space indentation, comments, and identifiers drawn from the function's
   own parameters and locals, so names recur within a function. Module
   prefix and struct names recur across the functions of a file. */
static const moexc__rule moexc__code_rules[] = {
    { "comment",
      "<cverb> the <cnoun>|<cverb> each <cnoun> in the <cnoun>|TODO: handle <!cadj> <cnoun>|"
      "the <cnoun> must not be empty|<cverb> the <cnoun> before we <cverb2> it|note: the <cnoun> is <cadj> here|"
      "<cadj> case: no <cnoun> left|keep the <cnoun> <cadj>|FIXME: this is slow for <!cadj> <cnoun>|"
      "<cverb> the <cnoun> and return the <cnoun>|the caller owns the <cnoun>|<cadj> path|"
      "check that the <cnoun> fits|<cverb> the <cnoun>, then <cverb2> the <cnoun>|XXX: <cnoun> may overflow" },
    { "filecomment",
      "<name>.c - <cverb2> and <cverb2> <cnoun>s|<name>: <!cadj> <cnoun> for the <cnoun> module|"
      "<name>.c: <cadj> <cnoun> routines|helpers to <cverb2> <cadj> <cnoun>s" },
    { "cverb", "compute|update|check|find|copy|reset|grow|free|read|write|sort|scan|count|merge|clear|fill|skip|parse|hash|swap" },
    { "cverb2", "store|look up|insert|remove|resize|load|save|encode|decode|visit|walk|print|compare|validate" },
    { "cnoun", "buffer|count|node|list|item|value|index|size|length|key|table|entry|state|context|head|tail|result|"
               "offset|width|score|weight|token|string|array|block|slot|queue|stack|tree|map|edge|pixel|record|line|byte" },
    { "cadj", "empty|full|large|small|sorted|invalid|new|old|next|last|first|unused|dirty|fast|slow|common|rare|null" },
    { "name", "<P>" },
    { "prefix", "vec|map|list|tree|queue|buf|str|graph|pool|arena|heap|set|ring|trie|cache|parser|lexer|image|matrix|file" },
};

static const char *const moexc__code_nouns[] = {
    "buf", "count", "node", "item", "value", "index", "size", "len", "key", "table", "entry", "state", "ctx",
    "head", "tail", "next", "prev", "data", "result", "total", "sum", "offset", "width", "height", "score",
    "weight", "token", "pos", "cap", "flags", "mask", "hash", "step", "limit", "depth", "level", "start", "end",
    "left", "right", "root", "child", "parent", "min", "max", "acc", "delta", "scale", "bytes", "line", "col",
    "row", "pixel", "edge", "path", "name", "id", "tag", "slot", "block", "chunk", "page", "base", "cursor" };
static const char *const moexc__code_verbs[] = {
    "init", "free", "push", "pop", "find", "insert", "remove", "update", "compute", "parse", "read", "write",
    "copy", "merge", "sort", "reset", "scan", "check", "load", "save", "append", "resize", "hash", "visit",
    "get", "set", "clear", "count", "print", "grow", "shrink", "split", "join", "swap", "fill", "walk" };
static const char *const moexc__code_prefixes[] = {
    "vec", "map", "list", "tree", "queue", "buf", "str", "graph", "pool", "arena", "heap", "set", "ring",
    "trie", "cache", "parser", "lexer", "image", "matrix", "file", "bitset", "deque", "table", "mesh" };
static const char *const moexc__code_scalars[] = { "int", "size_t", "float", "double", "unsigned", "uint32_t", "long", "char", "int64_t", "uint8_t" };
static const char *const moexc__code_headers[] = { "stdio.h", "stdlib.h", "string.h", "stdint.h", "stddef.h", "math.h", "assert.h", "limits.h", "ctype.h", "stdbool.h" };

#define MOEXC__CODE_MAX_VARS 16
typedef struct moexc__code {
    moexc__gen *g;
    const char *prefix;
    char type_name[48];                     /* the module's struct type           */
    const char *fields[6];                  /* its fields                         */
    int n_fields;
    char funcs[6][48];                      /* functions defined so far,          */
    int func_arity[6], func_takes_ptr[6];   /* with their parameter lists         */
    int n_funcs;
    const char *vars[MOEXC__CODE_MAX_VARS]; /* variables in scope in the function */
    int n_vars;
    const char *loop_vars[3];
    int n_loops;                            /* loop variables in use              */
    int max_loops;                          /* 3 when i, j, k are declared, else 0 */
    const char *ptr;                        /* the struct pointer parameter       */
} moexc__code;

static void moexc__code_put(moexc__code *c, const char *s) { moexc__sb_puts(&c->g->out, s); }
static void moexc__code_indent(moexc__code *c, int level)
{
    int i;
    for (i = 0; i < level; i++) moexc__code_put(c, "    ");
}
static const char *moexc__code_var(moexc__code *c)
{
    return c->n_vars ? c->vars[moexc__gen_below(c->g, (uint32_t)c->n_vars)] : "0";
}
static void moexc__code_number(moexc__code *c)
{
    static const char *const small[] = { "0", "1", "2", "4", "8", "16", "32", "64", "255", "1024", "10", "3", "100" };
    moexc__code_put(c, moexc__gen_pick(c->g, small, (int)(sizeof(small) / sizeof(small[0]))));
}

static void moexc__code_expr(moexc__code *c, int depth);

/* A call of an earlier function of the file with arguments that fit its parameters. */
static void moexc__code_call(moexc__code *c, int depth)
{
    int f = (int)moexc__gen_below(c->g, (uint32_t)c->n_funcs), a;
    moexc__code_put(c, c->funcs[f]);
    moexc__code_put(c, "(");
    for (a = 0; a < c->func_arity[f]; a++) {
        if (a) moexc__code_put(c, ", ");
        if (a == 0 && c->func_takes_ptr[f]) moexc__code_put(c, c->ptr ? c->ptr : "NULL");
        else moexc__code_expr(c, depth - 1);
    }
    moexc__code_put(c, ")");
}

/* A scalar field of the module's struct (field 0 is its data pointer). */
static const char *moexc__code_field(moexc__code *c)
{
    return c->n_fields > 1 ? c->fields[1 + moexc__gen_below(c->g, (uint32_t)(c->n_fields - 1))] : c->fields[0];
}

/* An expression over the variables in scope; depth bounds the nesting. */
static void moexc__code_expr(moexc__code *c, int depth)
{
    static const char *const ops[] = { " + ", " - ", " * ", " / ", " % ", " & ", " | ", " ^ ", " << ", " >> " };
    uint32_t r = moexc__gen_below(c->g, depth <= 0 ? 3 : 9);
    switch (r) {
    case 0: moexc__code_put(c, moexc__code_var(c)); break;
    case 1: moexc__code_number(c); break;
    case 2:
        if (c->ptr && c->n_fields) {
            moexc__code_put(c, c->ptr);
            moexc__code_put(c, "->");
            moexc__code_put(c, moexc__code_field(c));
        } else {
            moexc__code_put(c, moexc__code_var(c));
        }
        break;
    case 3: case 4:
        moexc__code_expr(c, depth - 1);
        moexc__code_put(c, moexc__gen_pick(c->g, ops, moexc__gen_chance(c->g, 70) ? 3 : 10));
        moexc__code_expr(c, depth - 1);
        break;
    case 5:
        moexc__code_put(c, "(");
        moexc__code_expr(c, depth - 1);
        moexc__code_put(c, moexc__gen_pick(c->g, ops, 4));
        moexc__code_expr(c, depth - 1);
        moexc__code_put(c, ")");
        break;
    case 6:
        if (c->n_funcs) {
            moexc__code_call(c, depth);
        } else {
            moexc__code_put(c, "abs(");
            moexc__code_expr(c, depth - 1);
            moexc__code_put(c, ")");
        }
        break;
    case 7:
        if (c->ptr && c->n_fields) {   /* p->data[i] */
            moexc__code_put(c, c->ptr);
            moexc__code_put(c, "->");
            moexc__code_put(c, c->fields[0]);
            moexc__code_put(c, "[");
            moexc__code_put(c, c->n_loops ? c->loop_vars[c->n_loops - 1] : moexc__code_var(c));
            moexc__code_put(c, "]");
        } else {
            moexc__code_put(c, moexc__code_var(c));
        }
        break;
    default:
        moexc__code_put(c, moexc__code_var(c));
        moexc__code_put(c, moexc__gen_chance(c->g, 50) ? " + 1" : " - 1");
        break;
    }
}

static void moexc__code_cond(moexc__code *c, int depth)
{
    static const char *const cmp[] = { " < ", " > ", " <= ", " >= ", " == ", " != " };
    uint32_t r = moexc__gen_below(c->g, depth <= 0 ? 3 : 5);
    switch (r) {
    case 0:
        moexc__code_put(c, moexc__code_var(c));
        moexc__code_put(c, moexc__gen_pick(c->g, cmp, 6));
        moexc__code_expr(c, 1);
        break;
    case 1:
        moexc__code_put(c, moexc__gen_chance(c->g, 50) ? "!" : "");
        moexc__code_put(c, moexc__code_var(c));
        break;
    case 2:
        if (c->ptr) {
            moexc__code_put(c, c->ptr);
            moexc__code_put(c, moexc__gen_chance(c->g, 50) ? " == NULL" : " != NULL");
        } else {
            moexc__code_put(c, moexc__code_var(c));
            moexc__code_put(c, " == 0");
        }
        break;
    default:
        moexc__code_cond(c, depth - 1);
        moexc__code_put(c, r == 3 ? " && " : " || ");
        moexc__code_cond(c, depth - 1);
        break;
    }
}

static void moexc__code_block(moexc__code *c, int level, int n_statements);

static void moexc__code_while(moexc__code *c, int level)
{
    moexc__code_put(c, "while (");
    moexc__code_cond(c, 1);
    moexc__code_put(c, ") {\n");
    moexc__code_block(c, level + 1, 1 + (int)moexc__gen_below(c->g, 2));
    moexc__code_indent(c, level + 1);
    moexc__code_put(c, moexc__gen_chance(c->g, 50) ? "break;\n" : "continue;\n");
    moexc__code_indent(c, level);
    moexc__code_put(c, "}\n");
}

static void moexc__code_statement(moexc__code *c, int level)
{
    uint32_t r = moexc__gen_below(c->g, level >= 3 ? 5 : level == 1 ? 12 : 11);
    moexc__code_indent(c, level);
    switch (r) {
    case 0: case 1:
        moexc__code_put(c, moexc__code_var(c));
        moexc__code_put(c, moexc__gen_chance(c->g, 60) ? " = " : moexc__gen_chance(c->g, 50) ? " += " : " -= ");
        moexc__code_expr(c, 2);
        moexc__code_put(c, ";\n");
        break;
    case 2:
        moexc__code_put(c, moexc__code_var(c));
        moexc__code_put(c, moexc__gen_chance(c->g, 70) ? "++;\n" : "--;\n");
        break;
    case 3:
        moexc__code_put(c, "/* ");
        moexc__gen_say(c->g, "<comment>");
        moexc__code_put(c, " */\n");
        break;
    case 4:
        if (c->n_funcs && moexc__gen_chance(c->g, 60)) {
            moexc__code_call(c, 2);
            moexc__code_put(c, ";\n");
        } else {
            moexc__code_put(c, "printf(\"%d\\n\", ");
            moexc__code_put(c, moexc__code_var(c));
            moexc__code_put(c, ");\n");
        }
        break;
    case 5: case 6:
        moexc__code_put(c, "if (");
        moexc__code_cond(c, 2);
        moexc__code_put(c, ") {\n");
        moexc__code_block(c, level + 1, 1 + (int)moexc__gen_below(c->g, 3));
        moexc__code_indent(c, level);
        if (moexc__gen_chance(c->g, 35)) {
            moexc__code_put(c, "} else {\n");
            moexc__code_block(c, level + 1, 1 + (int)moexc__gen_below(c->g, 2));
            moexc__code_indent(c, level);
        }
        moexc__code_put(c, "}\n");
        break;
    case 7: case 8:
        if (c->n_loops < c->max_loops) {
            static const char *const names[] = { "i", "j", "k" };
            const char *v = names[c->n_loops];
            moexc__code_put(c, "for (");
            moexc__code_put(c, v);
            moexc__code_put(c, " = 0; ");
            moexc__code_put(c, v);
            moexc__code_put(c, " < ");
            if (c->ptr && c->n_fields && moexc__gen_chance(c->g, 50)) {
                moexc__code_put(c, c->ptr);
                moexc__code_put(c, "->");
                moexc__code_put(c, moexc__code_field(c));
            } else {
                moexc__code_put(c, moexc__code_var(c));
            }
            moexc__code_put(c, "; ");
            moexc__code_put(c, v);
            moexc__code_put(c, "++) {\n");
            c->loop_vars[c->n_loops++] = v;
            moexc__code_block(c, level + 1, 1 + (int)moexc__gen_below(c->g, 3));
            c->n_loops--;
            moexc__code_indent(c, level);
            moexc__code_put(c, "}\n");
        } else {
            moexc__code_while(c, level);   /* three nested loops are enough */
        }
        break;
    case 9:
        moexc__code_while(c, level);
        break;
    case 10:
        moexc__code_put(c, "// ");
        moexc__gen_say(c->g, "<comment>");
        moexc__code_put(c, "\n");
        break;
    default: {
        int k, cases = 2 + (int)moexc__gen_below(c->g, 2);
        moexc__code_put(c, "switch (");
        moexc__code_put(c, moexc__code_var(c));
        moexc__code_put(c, ") {\n");
        for (k = 0; k < cases; k++) {
            char label[32];
            snprintf(label, sizeof(label), "case %d:\n", k);
            moexc__code_indent(c, level);
            moexc__code_put(c, label);
            moexc__code_block(c, level + 1, 1);
            moexc__code_indent(c, level + 1);
            moexc__code_put(c, "break;\n");
        }
        moexc__code_indent(c, level);
        moexc__code_put(c, "default:\n");
        moexc__code_indent(c, level + 1);
        moexc__code_put(c, "return -1;\n");
        moexc__code_indent(c, level);
        moexc__code_put(c, "}\n");
    }
    }
}

static void moexc__code_block(moexc__code *c, int level, int n_statements)
{
    int s;
    for (s = 0; s < n_statements; s++) moexc__code_statement(c, level);
}

static void moexc__code_function(moexc__code *c)
{
    moexc__gen *g = c->g;
    const char *verb = moexc__gen_pick(g, moexc__code_verbs, (int)(sizeof(moexc__code_verbs) / sizeof(char *)));
    const char *ret = moexc__gen_chance(g, 60) ? "int" : moexc__gen_pick(g, moexc__code_scalars, 6);
    char name[48];
    int n_params = 1 + (int)moexc__gen_below(g, 3), n_locals = 1 + (int)moexc__gen_below(g, 4), p;
    if (moexc__gen_chance(g, 50))
        snprintf(name, sizeof(name), "%s_%s", c->prefix, verb);
    else
        snprintf(name, sizeof(name), "%s_%s_%s", c->prefix, verb,
                 moexc__gen_pick(g, moexc__code_nouns, (int)(sizeof(moexc__code_nouns) / sizeof(char *))));
    c->n_vars = 0;
    c->n_loops = 0;
    c->ptr = NULL;
    if (moexc__gen_chance(g, 50)) {
        moexc__code_put(c, "/* ");
        moexc__gen_say(g, "<comment>");
        moexc__code_put(c, " */\n");
    }
    moexc__code_put(c, moexc__gen_chance(g, 60) ? "static " : "");
    moexc__code_put(c, ret);
    moexc__code_put(c, " ");
    moexc__code_put(c, name);
    moexc__code_put(c, "(");
    for (p = 0; p < n_params; p++) {
        if (p) moexc__code_put(c, ", ");
        if (p == 0 && c->type_name[0] && moexc__gen_chance(g, 75)) {
            static const char *const ptr_names[] = { "p", "self", "s", "t", "obj", "q" };
            c->ptr = moexc__gen_pick(g, ptr_names, 6);
            moexc__code_put(c, c->type_name);
            moexc__code_put(c, " *");
            moexc__code_put(c, c->ptr);
        } else {
            const char *v = moexc__gen_pick(g, moexc__code_nouns, (int)(sizeof(moexc__code_nouns) / sizeof(char *)));
            int k, dup = 0;
            for (k = 0; k < c->n_vars; k++) dup |= strcmp(c->vars[k], v) == 0;
            if (dup || (c->ptr && strcmp(c->ptr, v) == 0)) v = p == 1 ? "n" : "m";
            moexc__code_put(c, moexc__gen_pick(g, moexc__code_scalars, 6));
            moexc__code_put(c, " ");
            moexc__code_put(c, v);
            c->vars[c->n_vars++] = v;
        }
    }
    moexc__code_put(c, ")\n{\n");
    c->max_loops = 0;
    if (moexc__gen_chance(g, 70)) { moexc__code_put(c, "    int i, j, k;\n"); c->max_loops = 3; }
    for (p = 0; p < n_locals && c->n_vars < MOEXC__CODE_MAX_VARS; p++) {
        const char *v = moexc__gen_pick(g, moexc__code_nouns, (int)(sizeof(moexc__code_nouns) / sizeof(char *)));
        int k, dup = 0;
        for (k = 0; k < c->n_vars; k++) dup |= strcmp(c->vars[k], v) == 0;
        if (dup || (c->ptr && strcmp(c->ptr, v) == 0)) continue;
        moexc__code_put(c, "    ");
        moexc__code_put(c, moexc__gen_pick(g, moexc__code_scalars, (int)(sizeof(moexc__code_scalars) / sizeof(char *))));
        moexc__code_put(c, " ");
        moexc__code_put(c, v);
        moexc__code_put(c, " = ");
        moexc__code_expr(c, 1);
        moexc__code_put(c, ";\n");
        c->vars[c->n_vars++] = v;
    }
    moexc__code_put(c, "\n");
    moexc__code_block(c, 1, 2 + (int)moexc__gen_below(g, 5));
    moexc__code_put(c, "    return ");
    moexc__code_expr(c, 1);
    moexc__code_put(c, ";\n}\n\n");
    if (c->n_funcs < 6) {
        memcpy(c->funcs[c->n_funcs], name, sizeof(name));
        c->func_arity[c->n_funcs] = n_params;
        c->func_takes_ptr[c->n_funcs] = c->ptr != NULL;
        c->n_funcs++;
    }
}

static void moexc__code_document(moexc__gen *g)
{
    moexc__code c;
    int i, n, used = 0;
    memset(&c, 0, sizeof(c));
    c.g = g;
    c.prefix = moexc__gen_pick(g, moexc__code_prefixes, (int)(sizeof(moexc__code_prefixes) / sizeof(char *)));
    moexc__gen_var(g, "P", c.prefix);
    moexc__code_put(&c, "/* ");
    moexc__gen_say(g, "<filecomment>");
    moexc__code_put(&c, " */\n");
    for (i = 0, n = 1 + (int)moexc__gen_below(g, 4); i < n; i++) {   /* distinct includes */
        int h = (int)moexc__gen_below(g, (uint32_t)(sizeof(moexc__code_headers) / sizeof(char *)));
        if (used & (1 << h)) continue;
        used |= 1 << h;
        moexc__code_put(&c, "#include <");
        moexc__code_put(&c, moexc__code_headers[h]);
        moexc__code_put(&c, ">\n");
    }
    moexc__code_put(&c, "\n");
    for (i = 0, n = (int)moexc__gen_below(g, 3); i < n; i++) {
        char line[96], upper[48];
        const char *noun = moexc__gen_pick(g, moexc__code_nouns, (int)(sizeof(moexc__code_nouns) / sizeof(char *)));
        size_t k;
        snprintf(upper, sizeof(upper), "%s_MAX_%s", c.prefix, noun);
        for (k = 0; upper[k]; k++) if (upper[k] >= 'a' && upper[k] <= 'z') upper[k] = (char)(upper[k] - 'a' + 'A');
        snprintf(line, sizeof(line), "#define %s %u\n", upper, 1u << (2 + moexc__gen_below(g, 10)));
        moexc__code_put(&c, line);
    }
    if (moexc__gen_chance(g, 80)) {   /* the module's struct */
        snprintf(c.type_name, sizeof(c.type_name), "%s_%s", c.prefix,
                 moexc__gen_pick(g, moexc__code_nouns, (int)(sizeof(moexc__code_nouns) / sizeof(char *))));
        moexc__code_put(&c, "\ntypedef struct ");
        moexc__code_put(&c, c.type_name);
        moexc__code_put(&c, " {\n");
        for (i = 0, n = 2 + (int)moexc__gen_below(g, 4); i < n; i++) {
            const char *f = moexc__gen_pick(g, moexc__code_nouns, (int)(sizeof(moexc__code_nouns) / sizeof(char *)));
            int k, dup = 0;
            for (k = 0; k < c.n_fields; k++) dup |= strcmp(c.fields[k], f) == 0;
            if (dup) continue;
            moexc__code_put(&c, "    ");
            moexc__code_put(&c, moexc__gen_pick(g, moexc__code_scalars, (int)(sizeof(moexc__code_scalars) / sizeof(char *))));
            moexc__code_put(&c, c.n_fields == 0 ? " *" : " ");
            moexc__code_put(&c, f);
            moexc__code_put(&c, ";");
            if (moexc__gen_chance(g, 30)) {
                moexc__code_put(&c, " /* ");
                moexc__gen_say(g, "<comment>");
                moexc__code_put(&c, " */");
            }
            moexc__code_put(&c, "\n");
            c.fields[c.n_fields++] = f;
        }
        moexc__code_put(&c, "} ");
        moexc__code_put(&c, c.type_name);
        moexc__code_put(&c, ";\n");
    }
    moexc__code_put(&c, "\n");
    for (i = 0, n = 2 + (int)moexc__gen_below(g, 4); i < n; i++) moexc__code_function(&c);
}

/* ---- corpus domain 2: scientific prose with LaTeX math ----------------------
   A paper: title, abstract, sections with paragraphs, inline math $...$,
   equation/align environments with labels, theorems with proofs, citations
   \cite{name2019}, references to sections, tables and equations. Per paper:
   a topic <T>, a method acronym <M>, a data set <D> and a main symbol <X>. */
static const moexc__rule moexc__sci_rules[] = {
    { "paper",
      "\\title{<title>}\n\n\\begin{abstract}\n<abstract>\n\\end{abstract}\n\n\\section{Introduction}\n<para>\n\n<para>\n\n"
      "\\section{<secname>}\n\\label{sec:<label>}\n<para>\n\n<display>\n<para>\n\n<theorem>\n\n"
      "\\section{Experiments}\n<expara>\n\n<expara>\n\n\\section{Conclusion}\n<conclusion>\n|"
      "\\title{<title>}\n\n\\begin{abstract}\n<abstract>\n\\end{abstract}\n\n\\section{Introduction}\n<para>\n\n"
      "\\section{Related Work}\n<relpara>\n\n\\section{<secname>}\n<para>\n\n<display>\n<para>\n\n<display>\n<para>\n\n"
      "\\subsection{<subname>}\n<para>\n\n<theorem>\n\n\\section{Results}\n<expara>\n\n\\section{Discussion}\n<conclusion>\n|"
      "\\section{<secname>}\n<para>\n\n<display>\n<para>\n\n\\subsection{<subname>}\n<para>\n\n<theorem>\n\n<para>\n" },
    { "title",
      "<^adj> <^noun> Estimation for <^T>|On the <^noun> of <^adj> <^noun>s|<M>: <^adj> <^noun>s for <^T>|"
      "Towards <^adj> <^T>|A <^noun> Approach to <^T>|Bounds on the <^noun> of <^adj> <^noun>s|"
      "Learning <^adj> <^noun>s with <^adj> <^noun>s" },
    { "abstract",
      "We study <T> in the setting of <!adj> <noun>. <contrib> <absresult> <sent>|"
      "<^T> is a central problem in <field>. <contrib> <sent> <absresult>|"
      "This paper considers <!adj> <noun> for <T>. <contrib> <absresult>" },
    { "contrib",
      "We propose <M>, <!adj> <noun> that <verbs> the <noun> of the <noun>.|"
      "We introduce <M>, a method based on <adj> <noun>s, and <verb> its <noun>.|"
      "Our main contribution is <!adj> <noun> for <T> with <adj> guarantees.|"
      "We <verb> <!adj> bound on the <noun> of <adj> <noun>s." },
    { "absresult",
      "Experiments on <D> show that <M> improves the <metric> by <pct>\\%.|"
      "On <D>, <M> reaches <pct>\\% <metric>, compared with <pct>\\% for the best baseline.|"
      "Our analysis shows that the <noun> decays as $O(<rate>)$.|"
      "The resulting <noun> converges at rate $O(<rate>)$ under <adj> assumptions." },
    { "para", "<sent> <sent> <sent> <mathsent>|<sent> <mathsent> <sent> <sent> <sent>|<mathsent> <sent> <sent>|<sent> <sent> <mathsent> <sent>" },
    { "relpara",
      "<^adj> <noun>s were first studied by <citet>. <citet> <verbed> the <noun> of <adj> <noun>s, and <citet> <verbed> "
      "<!adj> <noun> for <T>. <sent>|<^T> has a long history in <field> <cite>. <sent> <sent> In contrast to <cite>, we <verb> the <adj> case." },
    { "expara",
      "We evaluate <M> on <D> and <dataset>. <sent> Table~\\ref{tab:<label>} reports the <metric> of each <noun>. "
      "<M> reaches <pct>\\% on <D>, while <cite> reaches <pct>\\%. <sent>|"
      "Figure~\\ref{fig:<label>} shows the <metric> as a function of $<idxv>$. <sent> We use $<idxv> = <num>$ and a learning rate of $<dec>$. <sent>|"
      "We repeat each experiment <dig> times and report the mean and standard deviation. <sent> <mathsent>" },
    { "conclusion",
      "We presented <M>, <!adj> <noun> for <T>. <sent> In future work, we will <verb> <adj> <noun>s and extend our analysis to <T>.|"
      "<sent> Our results suggest that <adj> <noun>s are <adj> for <T>. <sent>" },
    { "sent",
      "We <verb> the <adj> <noun> of the <noun> <cite>.|The <noun> of <T> is <adj> under <!adj> <noun>.|"
      "<^adv>, the <noun> <verbs> the <noun> of each <noun>.|In Section~\\ref{sec:<label>}, we <verb> the <adj> <noun>.|"
      "Following <cite>, we <verb> <!adj> <noun>.|This <noun> is <adj> if the <noun> is <adj>.|"
      "Prior work <verbed> <adj> <noun>s <cite>, but the <noun> remains <adj>.|"
      "<^adv>, <M> <verbs> <!adj> <noun> without <!adj> <noun>.|Note that the <noun> depends only on the <noun>.|"
      "As shown in <cite>, <adj> <noun>s are <adj> in practice.|We refer to <citet> for <!adj> survey of <T>.|"
      "The main difficulty is that the <noun> is not <adj>.|These <noun>s are <adj> and <adj>.|"
      "Our <noun> is closely related to the <noun> of <citet>." },
    { "mathsent",
      "Let $<sym> \\in \\mathbb{R}^{<dimv> \\times <dimv>}$ denote the <noun> of the <noun>.|"
      "For every $<idx> \\le <dimv>$, we have $<expr> \\le <expr>$.|"
      "The <noun> satisfies $<expr> = <expr>$ for all $<idx> \\in \\{1, \\dots, <dimv>\\}$.|"
      "It follows that $<expr> \\leq <expr>$ with probability at least $1 - \\delta$.|"
      "By Equation~\\eqref{eq:<label>}, the <noun> is bounded by $<expr>$.|"
      "Here $<X>$ is the <noun> and $<sym>$ is the <noun>.|"
      "We set $<greek> = <dec>$ and $<dimv> = <num>$ in all experiments.|"
      "Taking $<idxv> \\to \\infty$ gives $<expr> \\to 0$." },
    { "display",
      "\\begin{equation}\n    <expr> = <expr>\n    \\label{eq:<label>}\n\\end{equation}|"
      "\\begin{equation}\n    <func>(<X>) = \\frac{1}{<dimv>} \\sum_{<idx>=1}^{<dimv>} <term>\n\\end{equation}|"
      "\\begin{align}\n    <expr> &= <expr> \\\\\n    &\\leq <expr>\n\\end{align}|"
      "\\begin{equation}\n    \\hat{<X>} = \\arg\\min_{<X>} \\; <expr> + <greek> \\lVert <X> \\rVert_2^2\n    \\label{eq:<label>}\n\\end{equation}" },
    { "theorem",
      "\\begin{theorem}\n\\label{thm:<label>}\nLet $<sym>$ be <!adj> <noun>. Then $<expr> \\leq <expr>$ for all $<idx> \\geq <dig>$.\n\\end{theorem}\n"
      "\\begin{proof}\n<sent> <mathsent> <sent>\n\\end{proof}|"
      "\\begin{lemma}\nIf the <noun> is <adj>, then $<expr> = O(<rate>)$.\n\\end{lemma}\n\\begin{proof}\n<mathsent> <sent>\n\\end{proof}|"
      "\\begin{definition}\nA <noun> $<sym>$ is called <adj> if $<expr> \\geq 0$.\n\\end{definition}" },
    { "expr",
      "<term>|<term> + <term>|<term> - <term>|<term> <term>|\\frac{<term>}{<term>}|\\sum_{<idx>=1}^{<dimv>} <term>|"
      "\\frac{1}{<dimv>} \\sum_{<idx>=1}^{<dimv>} <expr>|\\int_{0}^{1} <term> \\, d<var>|\\mathbb{E}\\left[<expr>\\right]|"
      "\\lVert <expr> \\rVert_2^2|\\log <term>|\\exp\\left(<expr>\\right)|\\sqrt{<expr>}|\\left(<expr>\\right)^{2}|\\max_{<idx>} <term>|"
      "<greek> <expr>|\\prod_{<idx>=1}^{<dimv>} <term>|<func>(<expr>)" },
    { "term",
      "<var>|<var>_{<idx>}|<var>^{2}|<greek>|<greek>_{<idx>}|<var>_{<idx>}^{(t)}|\\mathbf{<var>}|\\hat{<var>}|"
      "\\nabla <func>(<var>)|<X>|<X>_{<idx>}|<dig>|\\frac{<var>}{<dimv>}|<func>(<var>_{<idx>})" },
    { "sym", "<X>|<var>|\\mathbf{<var>}|<greek>|\\mathcal{<cal>}" },
    { "rate", "1/\\sqrt{<dimv>}|\\log <dimv> / <dimv>|<dimv>^{-1/2}|\\epsilon^{-2}|e^{-<dimv>}|<dimv> \\log <dimv>" },
    { "var", "x|y|z|u|v|w|a|b|c|s|t|p|q|W|A|B|X|Y|Z|K|L|M|Q|V" },
    { "greek", "\\alpha|\\beta|\\gamma|\\delta|\\epsilon|\\eta|\\theta|\\lambda|\\mu|\\nu|\\rho|\\sigma|\\tau|\\phi|\\psi|\\omega|\\xi|\\kappa" },
    { "cal", "F|H|L|X|D|M|P|S" },
    { "func", "f|g|h|\\ell|\\phi|\\psi|F|L|R" },
    { "idx", "i|j|k|t|l" },
    { "idxv", "n|m|k|T|d" },
    { "dimv", "n|N|m|d|K|T|L|p" },
    { "cite", "\\cite{<author><year>}|\\cite{<author><year>, <author><year>}|\\citep{<author><year>}" },
    { "citet", "\\citet{<author><year>}" },
    { "author",
      "smith|garcia|chen|mueller|tanaka|kumar|rossi|novak|ivanov|kim|nguyen|silva|dubois|cohen|larsen|okafor|"
      "hansen|wang|lopez|schmidt|moreau|jensen|sato|patel|fischer|bianchi|murphy|weber|haddad|costa" },
    { "label", "<labelw>|<labelw>-<labelw>|<labelw><dig>" },
    { "labelw", "main|bound|loss|setup|results|method|prelim|proof|rate|model|ablation|data|algo|def|risk|grad" },
    { "secname", "Preliminaries|Method|Problem Setup|Main Results|Analysis|Theoretical Guarantees|Model|Algorithm|Background" },
    { "subname", "Notation|Assumptions|Convergence|Complexity|Optimization|Estimation|Lower Bounds|Implementation Details" },
    { "field", "statistics|machine learning|optimization|signal processing|numerical analysis|information theory|physics|control theory" },
    { "metric", "accuracy|error|log-likelihood|F1 score|mean squared error|perplexity|recall|regret" },
    { "dataset", "CIFAR-10|ImageNet|MNIST|Penn Treebank|WikiText|the UCI benchmarks|a synthetic benchmark|SVHN" },
    { "adv", "in particular|moreover|however|furthermore|in contrast|consequently|intuitively|formally|similarly|in practice" },
    { "verb", "derive|analyze|propose|study|establish|estimate|bound|characterize|prove|approximate|minimize|compute|extend|generalize|show" },
    { "verbs", "controls|determines|bounds|minimizes|approximates|dominates|preserves|captures|reduces|improves" },
    { "verbed", "derived|analyzed|proposed|studied|established|estimated|bounded|characterized|proved|introduced" },
    { "adj",
      "convex|sparse|asymptotic|stochastic|linear|nonlinear|robust|optimal|adaptive|smooth|bounded|finite|"
      "orthogonal|low-rank|high-dimensional|Gaussian|empirical|uniform|consistent|efficient|tight|local|global|"
      "spectral|regularized|unbiased|Bayesian|discrete|continuous|invariant|minimax|approximate|exact|stable" },
    { "noun",
      "estimator|operator|gradient|eigenspace|eigenvalue|distribution|likelihood|posterior|kernel|functional|regularizer|"
      "objective|constraint|sample|parameter|representation|embedding|algorithm|bound|rate|variance|estimate|projection|"
      "manifold|network|model|solution|loss|risk|norm|covariance|feature|prior|sequence|transform|coefficient|signal|"
      "basis function|step size|error term|subspace|eigenvector|iterate|gradient flow|margin|predictor|classifier" },
};

static const char *const moexc__sci_topics[] = {
    "sparse regression", "matrix completion", "low-rank approximation", "kernel methods", "variational inference",
    "stochastic optimization", "graph learning", "density estimation", "compressed sensing", "online learning",
    "phase retrieval", "causal inference", "spectral clustering", "policy evaluation", "tensor decomposition",
    "optimal transport", "robust statistics", "Gaussian processes", "manifold learning", "language modeling" };
static const char *const moexc__sci_datasets[] = {
    "CIFAR-10", "ImageNet", "MNIST", "Penn Treebank", "WikiText-103", "the UCI benchmarks", "a synthetic benchmark", "SVHN", "OpenML-CC18" };
static const char *const moexc__sci_symbols[] = {
    "\\theta", "\\beta", "w", "\\mathbf{x}", "W", "\\Sigma", "\\mu", "f", "\\pi", "A" };

static void moexc__sci_document(moexc__gen *g, char *acronym)
{
    int i, n = 2 + (int)moexc__gen_below(g, 4);
    for (i = 0; i < n; i++) acronym[i] = (char)('A' + moexc__gen_below(g, 26));
    acronym[n] = '\0';
    moexc__gen_var(g, "M", acronym);
    moexc__gen_var(g, "T", moexc__gen_pick(g, moexc__sci_topics, (int)(sizeof(moexc__sci_topics) / sizeof(char *))));
    moexc__gen_var(g, "D", moexc__gen_pick(g, moexc__sci_datasets, (int)(sizeof(moexc__sci_datasets) / sizeof(char *))));
    moexc__gen_var(g, "X", moexc__gen_pick(g, moexc__sci_symbols, (int)(sizeof(moexc__sci_symbols) / sizeof(char *))));
    moexc__gen_say(g, "<paper>");
}

/* ---- corpus domain 3: simple English stories --------------------------------
   Simple past tense, a small vocabulary, dialogue in quotes, two recurring
   named characters per story (<A>, <B> and their pronouns), a place <P> and an
   object <O>, and an arc: opening, setup, problem, attempts, resolution,
   ending. */
static const moexc__rule moexc__story_rules[] = {
    { "story",
      "<opening> <setup>\n\n<Problem> <feelbad>\n\n<talk>\n\n<Attempt>\n\n<Resolution> <feelgood>\n\n<ending>\n|"
      "<opening>\n\n<setup> <setup2>\n\n<Problem>\n\n<talk> <Attempt>\n\n<attempt2>\n\n<Resolution>\n\n<talk2>\n\n<ending>\n|"
      "<opening> <setup2>\n\n<Problem> <talk>\n\n<attempt> <Attempt>\n\n<Resolution> <feelgood> <ending>\n|"
      "<opening> <setup>\n\n<Problem>\n\n<Attempt>\n\n<talk>\n\n<attempt2> <Resolution>\n\n<ending> The end.\n" },
    { "opening",
      "Once upon a time, there was <!adj> <Akind> named <A>.|"
      "There once was <!adj> <Akind> called <A> who lived <home>.|"
      "<A> was <!adj> <Akind> who lived <home>.|"
      "Long ago, in <!adj> <town>, there lived <!adj> <Akind> named <A>.|"
      "One <daypart>, <!adj> <Akind> named <A> woke up early.|"
      "Once there was <!adj> <Akind>. <^Ahis> name was <A>, and <Ahe> lived <home>.|"
      "In <!adj> <town> far away, there was <!adj> <Akind> named <A>." },
    { "home",
      "in a small house by the sea|near a big forest|in a little house on a hill|in a busy town|on a farm|"
      "next to a quiet lake|in a cozy hole under a tree|in a tall tree|by a long river|in a yellow house|"
      "near the park|in a little village|at the edge of the woods|in a house with a red door" },
    { "town", "village|town|forest|valley|kingdom|garden|farm|city|island|meadow" },
    { "daypart", "morning|day|afternoon|evening|night|summer day|winter morning|rainy day|sunny morning|spring day" },
    { "setup",
      "<A> loved to <activity>.|<A> liked to <activity> every day.|Every day, <Ahe> would <activity> with <Ahis> friend <B>, <!adj> <Bkind>.|"
      "<A> had <!adj> <O>. <^Ahe> took it everywhere.|<A> and <B> were best friends. They liked to <activity> together at <P>.|"
      "<A> had a friend named <B>. <B> was <!adj> <Bkind> who liked to <activity>.|"
      "<^Ahis> favorite thing was <!adj> <O>. <^Ahe> kept it <keepplace>.|"
      "<A> was very <trait>. <^Ahe> always wanted to <activity>." },
    { "setup2",
      "<^Ahis> mom said, \"Be careful, <A>.\"|<B> lived next door and often came to play.|"
      "They played at <P> every <daypart>.|<A> and <B> had fun all the time.|"
      "<A> and <B> were different: <B> was <trait>, and <A> was <trait>.|Every <daypart>, they <pastplay> at <P>.|"
      "<A> liked <B> very much, and <B> liked <A> too." },
    { "feelbad", "<A> was <feelneg>.|<A> began to cry.|<A> did not know what to do.|<^Ahe> sat down and felt <feelneg>.|It was a big problem." },
    { "feelgood", "<A> felt <feelpos>.|<A> smiled a big smile.|<A> and <B> laughed and laughed.|Everyone was <feelpos>.|<^Ahis> heart was full of joy." },
    { "talk",
      "\"<question>\" asked <A>.\n\n\"<answer>,\" said <B>.|"
      "<A> said, \"<statement>.\"\n\n<B> <replied>, \"<answer>!\"|"
      "\"<statement>,\" said <B>.\n\n\"<answer>,\" said <A>.|"
      "<B> came and asked, \"<question>\"\n\n<A> <replied>, \"<statement>.\"|"
      "\"<A>, <question2>\" asked <B>.\n\n\"<statement>,\" said <A>.|"
      "\"<exclaim>\" said <B>. \"<statement>.\"\n\n\"<answer>,\" said <A>." },
    { "talk2",
      "\"Thank you, <B>!\" said <A>.\n\n\"You are welcome,\" said <B>.|"
      "\"<happy>\" shouted <A>.|\"We did it!\" said <B>. \"<happy>\"|"
      "<A> hugged <B> and said, \"You are the best friend ever.\"" },
    { "question",
      "Where is my <O>?|Can you help me?|What should we do?|Do you want to play with me?|Why are you so <feelneg>?|"
      "Can we go to <P>?|What is that?|Is it far?|Will you come with me?|How can we get home?|What happened?" },
    { "question2", "are you okay?|can you help me?|what is wrong?|do you see it?|where did it go?|shall we try again?" },
    { "statement",
      "I will help you|Let us look <lookplace>|Do not be <feelneg>|We can <activity> together|I have an idea|"
      "It is okay|I lost my <O>|I want to go to <P>|I am scared|Let us ask <G>|We must be brave|Look over there|"
      "I miss my <O>|I like you, <A>|Let us go home|It is getting dark" },
    { "answer",
      "Yes, I will help|Do not worry|I think I know|Let us try together|We can do it|Maybe it is <lookplace>|"
      "I am not sure|Come with me|Okay, let us go|That is a good idea|Me too|I will be right back" },
    { "exclaim", "Oh no!|Look!|Wait!|Quick!|Come on!|Oh!|Wow!|Hello!" },
    { "happy", "Hooray!|Yay!|This is the best day ever!|I am so happy!|We found it!|Look, it worked!" },
    { "replied", "said|replied|smiled and said|whispered|shouted|nodded and said|answered" },
    { "attempt",
      "<A> and <B> looked <lookplace>. They looked <lookplace> too, but they did not find it.|"
      "They walked to <P>. The path was long, but they did not stop.|"
      "<B> had an idea. <^Bhe> ran to get <G>.|"
      "<A> tried to <tryverb>, but it did not work. <^Ahe> tried again.|"
      "They asked <!adj> <N> for help. The <N> <helped>.|"
      "<A> took a deep breath and tried to be brave.|"
      "<A> <pastact> and <pastact>. It was hard work." },
    { "attempt2",
      "Then <B> <pastact>.|After a while, they saw <!adj> <N>.|They <pastact> and <pastact> until the sun went down.|"
      "<A> did not give up.|Soon, <G> came to help them.|They sang a song to feel better." },
    { "ending",
      "From that day on, <A> and <B> <pastplay> together every day.|<A> learned that <lesson>.|"
      "And they lived happily ever after.|That night, <A> went to bed with a big smile.|"
      "<A> never forgot that day.|<A> and <B> were friends forever.|"
      "After that, <A> always kept <Ahis> <O> <keepplace>.|It was the best day ever." },
    { "lesson",
      "it is good to share|friends help each other|being kind is important|you should never give up|"
      "it is okay to ask for help|it is good to be brave|being honest is best|small friends can do big things|"
      "it is fun to try new things|we should listen to our parents" },
    { "activity",
      "play ball|draw pictures|sing songs|build sand castles|fly a kite|read books|bake cookies|climb trees|dance|"
      "swim in the lake|pick flowers|run in the grass|ride a bike|look at the stars|plant seeds|jump in puddles|"
      "play hide and seek|paint rocks|feed the ducks|make paper boats|splash in the river|catch bugs|play with blocks" },
    { "pastplay",
      "played ball|drew pictures|sang songs|built sand castles|flew kites|read books|baked cookies|climbed trees|danced|"
      "swam|picked flowers|ran in the grass|rode bikes|played hide and seek|fed the ducks|made paper boats" },
    { "pastact",
      "ran|jumped|walked|looked around|climbed up|dug a hole|pulled hard|called out|waited|searched|listened|"
      "pushed the rock|opened the door|crossed the bridge|followed the path|counted to ten" },
    { "pastbad", "fell down|broke <Ahis> <O>|got very wet|lost <Ahis> way|tore <Ahis> shirt|dropped <Ahis> ice cream" },
    { "tryverb", "reach it|climb the wall|open the box|fix the <O>|jump over the log|pull the rope|call for help" },
    { "helped", "was happy to help|showed them the way|pointed at the tree|found a path|flew up high to look" },
    { "lookplace",
      "under the bed|behind the tree|in the garden|near the pond|inside the box|on the hill|under the table|"
      "by the door|in the tall grass|next to the river|up in the tree|behind the house|in the old barn" },
    { "keepplace", "in a safe place|under <Ahis> pillow|in <Ahis> pocket|on a shelf|in a little box|next to <Ahis> bed" },
    { "adj",
      "happy|little|big|kind|brave|small|shy|curious|silly|old|young|clever|gentle|funny|quiet|busy|tiny|proud|"
      "friendly|sleepy|cheerful|lonely|strong|fast|soft|pretty|wise|playful|careful|good" },
    { "trait", "kind|brave|shy|curious|silly|clever|gentle|funny|quiet|busy|cheerful|careful|helpful|playful" },
    { "feelneg", "sad|scared|angry|lonely|tired|worried|upset|cold|hungry" },
    { "feelpos", "happy|glad|proud|safe|warm|excited|thankful|calm" },
    { "color", "red|blue|green|yellow|shiny|white|pink|purple|orange|gold" },
    { "animal", "bird|rabbit|frog|duck|cat|dog|squirrel|owl|turtle|mouse|fox|deer|lamb|goat|butterfly" },
};

static const char *const moexc__story_girls[] = {
    "Lily", "Mia", "Sara", "Anna", "Emma", "Lucy", "Zoe", "Nora", "Ella", "Ruby", "Amy", "Rosa", "Maya",
    "Kate", "Hana", "Ivy", "Lena", "Tina", "Jane", "Molly", "Sue", "Pia", "Lola", "Daisy" };
static const char *const moexc__story_boys[] = {
    "Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Tim", "Finn", "Noah", "Eli", "Jake", "Ned", "Otto", "Ravi",
    "Omar", "Luke", "Dan", "Ken", "Joe", "Theo", "Bob", "Pip", "Milo", "Hugo" };
static const char *const moexc__story_animals[] = {
    "bunny", "fox", "cat", "dog", "bear", "mouse", "duck", "frog", "owl", "turtle", "pig", "lamb", "bird", "squirrel", "puppy", "kitten" };
static const char *const moexc__story_places[] = {
    "the park", "the forest", "the beach", "the river", "the old barn", "the big hill", "the pond", "the garden",
    "the market", "the school", "the castle", "the lake", "the zoo", "the library", "the meadow", "the playground" };
static const char *const moexc__story_grownups[] = {
    "Mom", "Dad", "Grandma", "Grandpa", "the old owl", "the kind farmer", "the teacher", "the wise turtle" };
static const char *const moexc__story_helpers[] = {
    "bird", "rabbit", "frog", "duck", "squirrel", "owl", "turtle", "mouse", "deer", "goat", "butterfly", "beaver" };
static const char *const moexc__story_objects[] = {
    "ball", "kite", "teddy bear", "hat", "red balloon", "toy car", "blue bucket", "little boat", "doll", "book",
    "shiny stone", "drum", "scarf", "key", "flower", "wooden sword", "map", "bell", "cup", "star sticker" };

/* One character: name, kind and pronouns as variables <X>, <Xkind>, <Xhe>, <Xhim>, <Xhis>. */
static const char *moexc__story_character(moexc__gen *g, int slot, const char *avoid)
{
    static const char *const keys[2][5] = { { "A", "Akind", "Ahe", "Ahim", "Ahis" }, { "B", "Bkind", "Bhe", "Bhim", "Bhis" } };
    static const char *const girl_kinds[] = { "girl", "princess", "girl" };
    static const char *const boy_kinds[] = { "boy", "prince", "boy" };
    int girl = moexc__gen_chance(g, 50);
    const char *name;
    do {
        name = girl ? moexc__gen_pick(g, moexc__story_girls, (int)(sizeof(moexc__story_girls) / sizeof(char *)))
                    : moexc__gen_pick(g, moexc__story_boys, (int)(sizeof(moexc__story_boys) / sizeof(char *)));
    } while (avoid && strcmp(name, avoid) == 0);
    moexc__gen_var(g, keys[slot][0], name);
    moexc__gen_var(g, keys[slot][1], moexc__gen_chance(g, 50)
                   ? moexc__gen_pick(g, moexc__story_animals, (int)(sizeof(moexc__story_animals) / sizeof(char *)))
                   : girl ? moexc__gen_pick(g, girl_kinds, 3) : moexc__gen_pick(g, boy_kinds, 3));
    moexc__gen_var(g, keys[slot][2], girl ? "she" : "he");
    moexc__gen_var(g, keys[slot][3], girl ? "her" : "him");
    moexc__gen_var(g, keys[slot][4], girl ? "her" : "his");
    return name;
}

/* Story arcs: a problem, the attempt that fits it and its resolution. */
static const char *const moexc__story_arcs[][3] = {
    { "One day, <A> lost <Ahis> <O>. <^Ahe> looked <lookplace>, but it was not there.",
      "<A> and <B> looked <lookplace>. They looked <lookplace> too, but they did not find it.",
      "At last, <A> saw something <color> <lookplace>. It was <Ahis> <O>!" },
    { "One day, a big storm came. The wind blew and the rain fell on <P>.",
      "<A> and <B> ran home and hid under a blanket. They listened to the rain.",
      "After a while, the sun came out, and the storm was over. <A> and <B> went outside to play." },
    { "One <daypart>, <A> wanted to go to <P>, but it was too far.",
      "<B> had an idea. They asked <G> to take them.",
      "<G> said yes, and soon they were at <P>." },
    { "But one day, <B> felt <feelneg>. <^Bhe> did not want to play.",
      "<A> sat next to <B> and asked what was wrong. <^Ahe> listened to <Bhim>.",
      "<A> gave <B> a hug. <B> felt better and wanted to play again." },
    { "One day, <A> saw <!adj> <N> stuck <lookplace>.",
      "<A> tried to help the <N>, but it was hard. <^Ahe> called <B>, and they pulled together.",
      "With a big push, the <N> was free! The <N> said thank you and <helped>." },
    { "One day, <A> and <B> found <!adj> box at <P>. They could not open it.",
      "They tried to open the box with a stick. Then they tried with a stone.",
      "At last, the box opened. Inside was <!adj> <O>!" },
    { "One <daypart>, <A> and <B> got lost on the way to <P>.",
      "They walked and walked. Then they saw <!adj> <N>, and the <N> <helped>.",
      "Finally, they found the way to <P>." },
    { "One day, <B> took <A>'s <O> and did not give it back.",
      "<A> was angry, but <Ahe> did not shout. <^Ahe> told <B> how <Ahe> felt.",
      "<B> said sorry and gave the <O> back to <A>. Then they played with it together." },
    { "One day, <A> broke <Ahis> <O>. It was in two pieces.",
      "<A> and <B> took glue and tape. They worked hard to fix it.",
      "Soon the <O> was as good as new. <A> was very proud." },
    { "One <daypart>, <A> wanted to <activity>, but <Ahe> was too scared to try.",
      "<B> said, \"I will show you.\" <^Bhe> went first, and <A> watched.",
      "Then <A> tried too, and it was fun! <^Ahe> was not scared any more." },
};

static void moexc__story_document(moexc__gen *g)
{
    const char *const *arc = moexc__story_arcs[moexc__gen_below(g, (uint32_t)(sizeof(moexc__story_arcs) / sizeof(moexc__story_arcs[0])))];
    moexc__gen_var(g, "Problem", arc[0]);
    moexc__gen_var(g, "Attempt", arc[1]);
    moexc__gen_var(g, "Resolution", arc[2]);
    moexc__story_character(g, 1, moexc__story_character(g, 0, NULL));
    moexc__gen_var(g, "P", moexc__gen_pick(g, moexc__story_places, (int)(sizeof(moexc__story_places) / sizeof(char *))));
    moexc__gen_var(g, "O", moexc__gen_pick(g, moexc__story_objects, (int)(sizeof(moexc__story_objects) / sizeof(char *))));
    moexc__gen_var(g, "G", moexc__gen_pick(g, moexc__story_grownups, (int)(sizeof(moexc__story_grownups) / sizeof(char *))));
    moexc__gen_var(g, "N", moexc__gen_pick(g, moexc__story_helpers, (int)(sizeof(moexc__story_helpers) / sizeof(char *))));
    moexc__gen_say(g, "<story>");
}

/* ---- the built-in corpus -------------------------------------------------- */
MOEXC_DEF moexc_status moexc_corpus_builtin(moexc_tokens *t, size_t bytes_per_domain, uint64_t seed, moexc_error *err)
{
    static const char *const names[3] = { "code", "science", "stories" };
    int d;
    if (!t) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_corpus_builtin: t is NULL");
    for (d = 0; d < 3; d++) {
        static const unsigned char sep = MOEXC_DOC_SEPARATOR;
        moexc__gen g;
        moexc_rng mix;
        moexc_status st;
        char acronym[8];
        int index = 0;
        /* each domain's stream depends only on (seed, domain) */
        moexc_rng_seed(&mix, seed ^ (UINT64_C(0xD1B54A32D192ED03) * (uint64_t)(d + 1)));
        if (d == 0) st = moexc__gen_init(&g, moexc__code_rules, (int)(sizeof(moexc__code_rules) / sizeof(moexc__rule)), moexc_rng_u64(&mix), err);
        else if (d == 1) st = moexc__gen_init(&g, moexc__sci_rules, (int)(sizeof(moexc__sci_rules) / sizeof(moexc__rule)), moexc_rng_u64(&mix), err);
        else st = moexc__gen_init(&g, moexc__story_rules, (int)(sizeof(moexc__story_rules) / sizeof(moexc__rule)), moexc_rng_u64(&mix), err);
        if (st != MOEXC_OK) return st;
        while (g.out.len < bytes_per_domain && !g.out.oom) {   /* whole documents, then cut */
            if (d == 0) moexc__code_document(&g);
            else if (d == 1) moexc__sci_document(&g, acronym);
            else moexc__story_document(&g);
            if (g.out.len && g.out.buf[g.out.len - 1] != '\n') moexc__sb_putn(&g.out, "\n", 1);
            moexc__sb_putn(&g.out, (const char *)&sep, 1);
        }
        if (g.out.oom) { moexc__gen_free(&g); return moexc__fail(err, MOEXC_ERR_NOMEM, "built-in corpus: out of memory"); }
        st = moexc_tokens_add_domain(t, names[d], &index, err);
        if (st == MOEXC_OK) st = moexc_tokens_append_bytes(t, g.out.buf, bytes_per_domain, index, err);
        moexc__gen_free(&g);
        if (st != MOEXC_OK) return st;
    }
    return MOEXC_OK;
}


/* ======================================================================== */
/* >>checkpoint: JSON reader, safetensors writer and validating reader       */
/* ======================================================================== */

/* ---- a small strict JSON parser (RFC 8259) --------------------------------
   Parses a mutable buffer into a flat array of nodes linked by index. Strings
   are decoded in place (an escape never decodes to more bytes than it
   occupies), so string values point into the buffer, NUL-terminated, with
   their length (a \u0000 escape may put a NUL inside). Numbers keep their
   source text. Strict: no comments, trailing commas, leading zeros, raw
   control characters, invalid UTF-8 or lone surrogates; no duplicate keys in
   an object; only whitespace after the value; nesting at most
   MOEXC__JSON_MAX_DEPTH deep and at most MOEXC__JSON_MAX_NODES values. */
#define MOEXC__JSON_MAX_DEPTH 64
#define MOEXC__JSON_MAX_NODES (1 << 20)

enum { MOEXC__JNULL, MOEXC__JFALSE, MOEXC__JTRUE, MOEXC__JNUMBER, MOEXC__JSTRING, MOEXC__JARRAY, MOEXC__JOBJECT };

typedef struct moexc__jnode {
    int type;
    int first, next, count;   /* first child, next sibling (-1: none), number of children */
    const char *key;          /* member key when the parent is an object, else NULL */
    size_t key_len;
    const char *str;          /* string: decoded bytes; number: its source text */
    size_t len;
    size_t pos;               /* byte offset of the value in the text, for messages */
} moexc__jnode;

typedef struct moexc__json {
    char *text;
    size_t len, pos;
    moexc__jnode *nodes;
    int n_nodes, cap_nodes;
    const char *name;         /* file name for messages */
    moexc_error *err;
} moexc__json;

static moexc_status moexc__json_fail(moexc__json *js, size_t pos, const char *what)
{
    return moexc__fail(js->err, MOEXC_ERR_FORMAT, "%s: JSON header, byte %lu: %s",
                       js->name, (unsigned long)pos, what);
}

static void moexc__json_ws(moexc__json *js)
{
    while (js->pos < js->len) {
        char c = js->text[js->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        js->pos++;
    }
}

static moexc_status moexc__json_new_node(moexc__json *js, int type, int *index)
{
    moexc__jnode *nd;
    if (js->n_nodes == js->cap_nodes) {
        int cap = js->cap_nodes ? js->cap_nodes * 2 : 64;
        moexc__jnode *p;
        if (js->n_nodes >= MOEXC__JSON_MAX_NODES)
            return moexc__json_fail(js, js->pos, "more values than the parser's limit of 1048576");
        p = (moexc__jnode *)moexc__realloc(js->nodes, (size_t)cap * sizeof(*p));
        if (!p) return moexc__fail(js->err, MOEXC_ERR_NOMEM, "%s: out of memory parsing the JSON header", js->name);
        js->nodes = p;
        js->cap_nodes = cap;
    }
    *index = js->n_nodes++;
    nd = &js->nodes[*index];
    memset(nd, 0, sizeof(*nd));
    nd->type = type;
    nd->first = nd->next = -1;
    nd->pos = js->pos;
    return MOEXC_OK;
}

static int moexc__hex4(const char *s, uint32_t *out)
{
    uint32_t v = 0;
    int i;
    for (i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

/* Decode the string literal at js->pos (on the opening quote) in place. */
static moexc_status moexc__json_parse_string(moexc__json *js, const char **out, size_t *out_len)
{
    char *t = js->text;
    size_t r = js->pos + 1, w = r, start = r;   /* read and write cursors, w <= r */
    for (;;) {
        unsigned char c;
        if (r >= js->len) return moexc__json_fail(js, js->pos, "unterminated string");
        c = (unsigned char)t[r];
        if (c == '"') break;
        if (c < 0x20) return moexc__json_fail(js, r, "control character in a string (must be escaped)");
        if (c == '\\') {
            uint32_t cp, lo;
            if (r + 1 >= js->len) return moexc__json_fail(js, js->pos, "unterminated string");
            switch (t[r + 1]) {
            case '"': case '\\': case '/': t[w++] = t[r + 1]; r += 2; continue;
            case 'b': t[w++] = '\b'; r += 2; continue;
            case 'f': t[w++] = '\f'; r += 2; continue;
            case 'n': t[w++] = '\n'; r += 2; continue;
            case 'r': t[w++] = '\r'; r += 2; continue;
            case 't': t[w++] = '\t'; r += 2; continue;
            case 'u': break;
            default: return moexc__json_fail(js, r, "invalid escape sequence");
            }
            if (r + 6 > js->len || !moexc__hex4(t + r + 2, &cp))
                return moexc__json_fail(js, r, "\\u must be followed by four hex digits");
            r += 6;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return moexc__json_fail(js, r - 6, "lone low surrogate");
            if (cp >= 0xD800 && cp <= 0xDBFF) {   /* UTF-16 pair -> one code point */
                if (r + 6 > js->len || t[r] != '\\' || t[r + 1] != 'u' || !moexc__hex4(t + r + 2, &lo) ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return moexc__json_fail(js, r - 6, "high surrogate not followed by a low surrogate");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                r += 6;
            }
            if (cp < 0x80) {
                t[w++] = (char)cp;
            } else if (cp < 0x800) {
                t[w++] = (char)(0xC0 | (cp >> 6));
                t[w++] = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                t[w++] = (char)(0xE0 | (cp >> 12));
                t[w++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                t[w++] = (char)(0x80 | (cp & 0x3F));
            } else {
                t[w++] = (char)(0xF0 | (cp >> 18));
                t[w++] = (char)(0x80 | ((cp >> 12) & 0x3F));
                t[w++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                t[w++] = (char)(0x80 | (cp & 0x3F));
            }
        } else if (c < 0x80) {
            t[w++] = (char)c;
            r++;
        } else {
            size_t k = moexc__utf8_len((const unsigned char *)t + r, js->len - r);
            if (!k) return moexc__json_fail(js, r, "invalid UTF-8 in a string");
            memmove(t + w, t + r, k);
            w += k;
            r += k;
        }
    }
    t[w] = '\0';   /* w <= r: at worst this overwrites the closing quote */
    *out = t + start;
    *out_len = w - start;
    js->pos = r + 1;
    return MOEXC_OK;
}

static int moexc__json_is_digit(moexc__json *js, size_t pos)
{
    return pos < js->len && js->text[pos] >= '0' && js->text[pos] <= '9';
}

static moexc_status moexc__json_value(moexc__json *js, int depth, int *out);

/* Objects and arrays: members are linked in order; objects then reject duplicate keys. */
static int moexc__json_key_cmp(const void *a, const void *b)
{
    const moexc__jnode *x = *(const moexc__jnode *const *)a, *y = *(const moexc__jnode *const *)b;
    int c = memcmp(x->key, y->key, MOEXC__MIN(x->key_len, y->key_len));
    if (c) return c;
    return (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

static moexc_status moexc__json_container(moexc__json *js, int depth, int index)
{
    int is_object = js->nodes[index].type == MOEXC__JOBJECT, last = -1;
    char close = is_object ? '}' : ']';
    moexc_status st;
    js->pos++;   /* '{' or '[' */
    moexc__json_ws(js);
    if (js->pos < js->len && js->text[js->pos] == close) { js->pos++; return MOEXC_OK; }
    for (;;) {
        const char *key = NULL;
        size_t key_len = 0;
        int child;
        moexc__json_ws(js);
        if (is_object) {
            if (js->pos >= js->len || js->text[js->pos] != '"')
                return moexc__json_fail(js, js->pos, "expected a string key");
            if ((st = moexc__json_parse_string(js, &key, &key_len)) != MOEXC_OK) return st;
            moexc__json_ws(js);
            if (js->pos >= js->len || js->text[js->pos] != ':')
                return moexc__json_fail(js, js->pos, "expected ':' after an object key");
            js->pos++;
        }
        if ((st = moexc__json_value(js, depth + 1, &child)) != MOEXC_OK) return st;
        js->nodes[child].key = key;
        js->nodes[child].key_len = key_len;
        if (last < 0) js->nodes[index].first = child; else js->nodes[last].next = child;
        last = child;
        js->nodes[index].count++;
        moexc__json_ws(js);
        if (js->pos < js->len && js->text[js->pos] == ',') { js->pos++; continue; }
        if (js->pos < js->len && js->text[js->pos] == close) { js->pos++; break; }
        return moexc__json_fail(js, js->pos, is_object ? "expected ',' or '}' in an object" : "expected ',' or ']' in an array");
    }
    if (is_object && js->nodes[index].count > 1) {
        int n = js->nodes[index].count, i, c;
        const moexc__jnode **members = (const moexc__jnode **)moexc__calloc((size_t)n, sizeof(*members));
        if (!members) return moexc__fail(js->err, MOEXC_ERR_NOMEM, "%s: out of memory parsing the JSON header", js->name);
        for (i = 0, c = js->nodes[index].first; c >= 0; c = js->nodes[c].next) members[i++] = &js->nodes[c];
        qsort(members, (size_t)n, sizeof(*members), moexc__json_key_cmp);
        for (i = 1; i < n; i++) {
            if (moexc__json_key_cmp(&members[i - 1], &members[i]) == 0) {
                size_t pos = members[i]->pos;
                st = moexc__fail(js->err, MOEXC_ERR_FORMAT, "%s: JSON header, byte %lu: duplicate key \"%.200s\"",
                                 js->name, (unsigned long)pos, members[i]->key);
                moexc__free((void *)members);
                return st;
            }
        }
        moexc__free((void *)members);
    }
    return MOEXC_OK;
}

static moexc_status moexc__json_value(moexc__json *js, int depth, int *out)
{
    moexc_status st;
    char c;
    moexc__json_ws(js);
    if (js->pos >= js->len) return moexc__json_fail(js, js->pos, "unexpected end of the JSON text");
    c = js->text[js->pos];
    if (c == '{' || c == '[') {
        if (depth >= MOEXC__JSON_MAX_DEPTH)
            return moexc__json_fail(js, js->pos, "nesting deeper than 64 levels");
        if ((st = moexc__json_new_node(js, c == '{' ? MOEXC__JOBJECT : MOEXC__JARRAY, out)) != MOEXC_OK) return st;
        return moexc__json_container(js, depth, *out);
    }
    if (c == '"') {
        const char *s;
        size_t n;
        if ((st = moexc__json_new_node(js, MOEXC__JSTRING, out)) != MOEXC_OK) return st;
        if ((st = moexc__json_parse_string(js, &s, &n)) != MOEXC_OK) return st;
        js->nodes[*out].str = s;
        js->nodes[*out].len = n;
        return MOEXC_OK;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {   /* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
        size_t start = js->pos, p = js->pos;
        if (js->text[p] == '-') p++;
        if (!moexc__json_is_digit(js, p)) return moexc__json_fail(js, start, "invalid number");
        if (js->text[p] == '0') {
            p++;
            if (moexc__json_is_digit(js, p)) return moexc__json_fail(js, start, "number with a leading zero");
        } else {
            while (moexc__json_is_digit(js, p)) p++;
        }
        if (p < js->len && js->text[p] == '.') {
            p++;
            if (!moexc__json_is_digit(js, p)) return moexc__json_fail(js, start, "invalid number (no digit after '.')");
            while (moexc__json_is_digit(js, p)) p++;
        }
        if (p < js->len && (js->text[p] == 'e' || js->text[p] == 'E')) {
            p++;
            if (p < js->len && (js->text[p] == '+' || js->text[p] == '-')) p++;
            if (!moexc__json_is_digit(js, p)) return moexc__json_fail(js, start, "invalid number (bad exponent)");
            while (moexc__json_is_digit(js, p)) p++;
        }
        if ((st = moexc__json_new_node(js, MOEXC__JNUMBER, out)) != MOEXC_OK) return st;
        js->nodes[*out].str = js->text + start;
        js->nodes[*out].len = p - start;
        js->pos = p;
        return MOEXC_OK;
    }
    {
        static const char *const words[3] = { "null", "false", "true" };
        static const int types[3] = { MOEXC__JNULL, MOEXC__JFALSE, MOEXC__JTRUE };
        int i;
        for (i = 0; i < 3; i++) {
            size_t n = strlen(words[i]);
            if (js->len - js->pos >= n && memcmp(js->text + js->pos, words[i], n) == 0) {
                if ((st = moexc__json_new_node(js, types[i], out)) != MOEXC_OK) return st;
                js->pos += n;
                return MOEXC_OK;
            }
        }
    }
    return moexc__json_fail(js, js->pos, "unexpected character");
}

/* Parse text[0..len) (modified in place). On success the root is node 0;
   free js->nodes with moexc__free in every case. */
static moexc_status moexc__json_parse(moexc__json *js, char *text, size_t len, const char *name, moexc_error *err)
{
    moexc_status st;
    int root;
    memset(js, 0, sizeof(*js));
    js->text = text;
    js->len = len;
    js->name = name;
    js->err = err;
    if ((st = moexc__json_value(js, 0, &root)) != MOEXC_OK) return st;
    moexc__json_ws(js);
    if (js->pos != js->len) return moexc__json_fail(js, js->pos, "unexpected data after the JSON value");
    return MOEXC_OK;
}

/* A JSON number that is a plain non-negative integer fitting in 63 bits. */
static int moexc__json_u63(const moexc__jnode *nd, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;
    if (nd->type != MOEXC__JNUMBER) return 0;
    for (i = 0; i < nd->len; i++) {
        char c = nd->str[i];
        if (c < '0' || c > '9') return 0;
        if (v > (UINT64_C(0x7FFFFFFFFFFFFFFF) - (uint64_t)(c - '0')) / 10) return 0;
        v = v * 10 + (uint64_t)(c - '0');
    }
    *out = v;
    return 1;
}

/* ---- safetensors ----------------------------------------------------------
   File = u64le header length n | n bytes of JSON | data section.
   JSON: {"__metadata__": {str: str}, name: {"dtype": D, "shape": [..],
   "data_offsets": [begin, end]}, ...}; offsets are relative to the data
   section, and the tensors tile it exactly: sorted by offset, each begins
   where the previous ends, the last ends at the end of the file. The writer
   pads the JSON with spaces to a multiple of 8 bytes, as the reference
   implementation does, so the data section is 8-byte aligned. */
#define MOEXC__ST_MAX_HEADER 100000000u   /* the reference implementation's limit */

static const struct moexc__st_dtype { const char *name; int size; } moexc__st_dtypes[] = {
    { "BOOL", 1 }, { "U8", 1 }, { "I8", 1 }, { "F8_E5M2", 1 }, { "F8_E4M3", 1 },
    { "I16", 2 }, { "U16", 2 }, { "F16", 2 }, { "BF16", 2 },
    { "I32", 4 }, { "U32", 4 }, { "F32", 4 },
    { "F64", 8 }, { "I64", 8 }, { "U64", 8 } };
#define MOEXC__ST_N_DTYPES ((int)(sizeof(moexc__st_dtypes) / sizeof(moexc__st_dtypes[0])))
#define MOEXC__ST_F32 11

typedef struct moexc__st_tensor {
    const char *name;         /* points into the decoded JSON */
    int dtype;                /* index into moexc__st_dtypes */
    int ndim;
    int64_t shape[8];
    uint64_t begin, end;      /* byte range within the data section */
} moexc__st_tensor;

struct moexc_st_file {
    char *path;                   /* for messages */
    unsigned char *buf;           /* the whole file; JSON strings decoded in place */
    size_t size;
    size_t data_start;            /* 8 + header length */
    moexc__st_tensor *tensors;    /* in header order */
    int n_tensors;
    int *by_name;                 /* tensor indices sorted by name */
    const char **meta;            /* n_meta (key, value) pairs sorted by key */
    int n_meta;
};

static void moexc__shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t len = 0;
    int i;
    buf[0] = '\0';
    len += (size_t)snprintf(buf, cap, "[");
    for (i = 0; i < ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, i ? ",%lld" : "%lld", (long long)shape[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
}

MOEXC_DEF void moexc_st_close(moexc_st_file *f)
{
    if (!f) return;
    moexc__free(f->path);
    moexc__free(f->buf);
    moexc__free(f->tensors);
    moexc__free(f->by_name);
    moexc__free((void *)f->meta);
    moexc__free(f);
}

/* qsort helpers (no globals: the comparators see only the elements). */
static int moexc__cmp_cstr_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}
typedef struct moexc__st_order { const moexc__st_tensor *t; int index; } moexc__st_order;
static int moexc__st_cmp_offset(const void *a, const void *b)
{
    const moexc__st_tensor *x = ((const moexc__st_order *)a)->t, *y = ((const moexc__st_order *)b)->t;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}
static int moexc__st_cmp_name(const void *a, const void *b)
{
    return strcmp(((const moexc__st_order *)a)->t->name, ((const moexc__st_order *)b)->t->name);
}

/* Check one tensor entry of the header and fill *t. */
static moexc_status moexc__st_parse_tensor(const moexc_st_file *f, const moexc__json *js, const moexc__jnode *nd,
                                           moexc__st_tensor *t, uint64_t data_size, moexc_error *err)
{
    const moexc__jnode *dtype = NULL, *shape = NULL, *offsets = NULL;
    const char *name = nd->key, *path = f->path;
    uint64_t nbytes, v;
    int c, i;
    t->name = name;
    if (nd->type != MOEXC__JOBJECT)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensor '%s': entry is not a JSON object", path, name);
    for (c = nd->first; c >= 0; c = js->nodes[c].next) {
        const moexc__jnode *m = &js->nodes[c];
        if (strcmp(m->key, "dtype") == 0 && m->key_len == 5) dtype = m;
        else if (strcmp(m->key, "shape") == 0 && m->key_len == 5) shape = m;
        else if (strcmp(m->key, "data_offsets") == 0 && m->key_len == 12) offsets = m;
        else return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensor '%s': unknown field '%.100s'", path, name, m->key);
    }
    if (!dtype)   return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensor '%s': missing field 'dtype'", path, name);
    if (!shape)   return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensor '%s': missing field 'shape'", path, name);
    if (!offsets) return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensor '%s': missing field 'data_offsets'", path, name);

    if (dtype->type != MOEXC__JSTRING)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensor '%s': 'dtype' is not a string", path, name);
    for (t->dtype = 0; t->dtype < MOEXC__ST_N_DTYPES; t->dtype++)
        if (strcmp(dtype->str, moexc__st_dtypes[t->dtype].name) == 0 && dtype->len == strlen(dtype->str)) break;
    if (t->dtype == MOEXC__ST_N_DTYPES)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%.40s'", path, name, dtype->str);

    if (shape->type != MOEXC__JARRAY)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensor '%s': 'shape' is not an array", path, name);
    if (shape->count > 8)
        return moexc__fail(err, MOEXC_ERR_UNSUPPORTED, "%s: tensor '%s': %d dimensions (at most 8 supported)",
                           path, name, shape->count);
    t->ndim = shape->count;
    nbytes = (uint64_t)moexc__st_dtypes[t->dtype].size;
    for (i = 0, c = shape->first; c >= 0; c = js->nodes[c].next, i++) {
        if (!moexc__json_u63(&js->nodes[c], &v))
            return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer",
                               path, name, i);
        t->shape[i] = (int64_t)v;
        /* nbytes = size(dtype) * prod(shape), kept below 2^63 */
        if (v && nbytes > UINT64_C(0x7FFFFFFFFFFFFFFF) / v)
            return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensor '%s': shape too large (byte count overflows)", path, name);
        nbytes *= v;
    }

    if (offsets->type != MOEXC__JARRAY || offsets->count != 2 ||
        !moexc__json_u63(&js->nodes[offsets->first], &t->begin) ||
        !moexc__json_u63(&js->nodes[js->nodes[offsets->first].next], &t->end))
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensor '%s': 'data_offsets' is not [begin, end] of two non-negative integers",
                           path, name);
    if (t->begin > t->end)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin",
                           path, name, (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end - t->begin != nbytes) {
        char s[200];
        moexc__shape_str(s, sizeof(s), t->ndim, t->shape);
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes, but dtype %s shape %s needs %llu",
                           path, name, (unsigned long long)t->begin, (unsigned long long)t->end,
                           (unsigned long long)(t->end - t->begin), moexc__st_dtypes[t->dtype].name, s,
                           (unsigned long long)nbytes);
    }
    if (t->end > data_size)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensor '%s': data_offsets end %llu is beyond the %llu-byte data section (truncated file?)",
                           path, name, (unsigned long long)t->end, (unsigned long long)data_size);
    return MOEXC_OK;
}

/* Validate f->buf (f->size bytes) and build the index. */
static moexc_status moexc__st_parse(moexc_st_file *f, moexc_error *err)
{
    const char *path = f->path;
    moexc__json js;
    moexc__st_order *order = NULL;
    const moexc__jnode *root, *meta_node = NULL;
    uint64_t header_len, data_size, covered;
    moexc_status st;
    int c, i, k;

    if (f->size < 8)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: file is %lu bytes, too short for the 8-byte header length",
                           path, (unsigned long)f->size);
    header_len = moexc__get_u64le(f->buf);
    if (header_len > MOEXC__ST_MAX_HEADER)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: header length %llu exceeds the limit of %u bytes",
                           path, (unsigned long long)header_len, MOEXC__ST_MAX_HEADER);
    if (header_len > f->size - 8)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: header length %llu runs past the end of the %lu-byte file (truncated?)",
                           path, (unsigned long long)header_len, (unsigned long)f->size);
    if (header_len < 2)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: header length %llu is too short for a JSON object",
                           path, (unsigned long long)header_len);
    f->data_start = 8 + (size_t)header_len;
    data_size = (uint64_t)(f->size - f->data_start);

    st = moexc__json_parse(&js, (char *)f->buf + 8, (size_t)header_len, path, err);
    if (st != MOEXC_OK) goto done;
    root = &js.nodes[0];
    if (root->type != MOEXC__JOBJECT) {
        st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: the JSON header is not an object", path);
        goto done;
    }
    for (c = root->first; c >= 0; c = js.nodes[c].next) {
        const moexc__jnode *m = &js.nodes[c];
        if (strlen(m->key) != m->key_len) {
            st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: a header key contains a NUL character", path);
            goto done;
        }
        if (strcmp(m->key, "__metadata__") == 0) meta_node = m; else f->n_tensors++;
    }

    /* __metadata__: an object of strings */
    if (meta_node) {
        if (meta_node->type != MOEXC__JOBJECT) {
            st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: __metadata__ is not a JSON object", path);
            goto done;
        }
        f->meta = (const char **)moexc__calloc((size_t)meta_node->count * 2 + 1, sizeof(*f->meta));
        if (!f->meta) { st = moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory", path); goto done; }
        for (c = meta_node->first; c >= 0; c = js.nodes[c].next) {
            const moexc__jnode *m = &js.nodes[c];
            if (m->type != MOEXC__JSTRING) {
                st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: __metadata__ entry '%.100s' is not a string", path, m->key);
                goto done;
            }
            if (strlen(m->key) != m->key_len || strlen(m->str) != m->len) {
                st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: __metadata__ entry '%.100s' contains a NUL character", path, m->key);
                goto done;
            }
            f->meta[2 * f->n_meta] = m->key;
            f->meta[2 * f->n_meta + 1] = m->str;
            f->n_meta++;
        }
        /* pairs sorted by key: sort 2-pointer records as one unit */
        qsort((void *)f->meta, (size_t)f->n_meta, 2 * sizeof(*f->meta), moexc__cmp_cstr_ptr);
    }

    /* tensors */
    f->tensors = (moexc__st_tensor *)moexc__calloc((size_t)f->n_tensors + 1, sizeof(*f->tensors));
    f->by_name = (int *)moexc__calloc((size_t)f->n_tensors + 1, sizeof(*f->by_name));
    order = (moexc__st_order *)moexc__calloc((size_t)f->n_tensors + 1, sizeof(*order));
    if (!f->tensors || !f->by_name || !order) { st = moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory", path); goto done; }
    for (i = 0, c = root->first; c >= 0; c = js.nodes[c].next) {
        if (&js.nodes[c] == meta_node) continue;
        st = moexc__st_parse_tensor(f, &js, &js.nodes[c], &f->tensors[i], data_size, err);
        if (st != MOEXC_OK) goto done;
        order[i].t = &f->tensors[i];
        order[i].index = i;
        i++;
    }

    /* The tensors must tile the data section: sorted by offset, no gap, no overlap. */
    qsort(order, (size_t)f->n_tensors, sizeof(*order), moexc__st_cmp_offset);
    for (covered = 0, k = 0; k < f->n_tensors; k++) {
        const moexc__st_tensor *t = order[k].t;
        if (t->begin < covered) {
            st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensors '%.100s' and '%.100s' overlap in the data section",
                             path, order[k - 1].t->name, t->name);
            goto done;
        }
        if (t->begin > covered) {
            st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: data section bytes %llu..%llu belong to no tensor (before '%.100s')",
                             path, (unsigned long long)covered, (unsigned long long)t->begin, t->name);
            goto done;
        }
        covered = t->end;
    }
    if (covered != data_size) {
        st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: the data section is %llu bytes but the tensors cover %llu (file size %lu)",
                         path, (unsigned long long)data_size, (unsigned long long)covered, (unsigned long)f->size);
        goto done;
    }

    qsort(order, (size_t)f->n_tensors, sizeof(*order), moexc__st_cmp_name);
    for (k = 0; k < f->n_tensors; k++) f->by_name[k] = order[k].index;
    st = MOEXC_OK;
done:
    moexc__free(order);
    moexc__free(js.nodes);
    return st;
}

/* Open a safetensors image held in memory (copied); name is used in messages. */
MOEXC_DEF moexc_status moexc_st_open_memory(moexc_st_file **out, const void *data, size_t size, const char *name,
                                            moexc_error *err)
{
    moexc_st_file *f;
    moexc_status st;
    size_t name_len;
    if (!out) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_st_open_memory: out is NULL");
    *out = NULL;
    if (!data && size) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_st_open_memory: data is NULL");
    if (!name) name = "(memory)";
    name_len = strlen(name);
    f = (moexc_st_file *)moexc__calloc(1, sizeof(*f));
    if (!f) return moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory", name);
    f->path = (char *)moexc__malloc(name_len + 1);
    f->buf = (unsigned char *)moexc__malloc(size);
    if (!f->path || !f->buf) { moexc_st_close(f); return moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory", name); }
    memcpy(f->path, name, name_len + 1);
    if (size) memcpy(f->buf, data, size);
    f->size = size;
    st = moexc__st_parse(f, err);
    if (st != MOEXC_OK) { moexc_st_close(f); return st; }
    *out = f;
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_st_open(moexc_st_file **out, const char *path, moexc_error *err)
{
    moexc_st_file *f;
    moexc_status st;
    size_t path_len;
    if (!out || !path) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_st_open: NULL argument");
    *out = NULL;
    path_len = strlen(path);
    f = (moexc_st_file *)moexc__calloc(1, sizeof(*f));
    if (!f) return moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory", path);
    f->path = (char *)moexc__malloc(path_len + 1);
    if (!f->path) { moexc_st_close(f); return moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory", path); }
    memcpy(f->path, path, path_len + 1);
    st = moexc__read_file(path, &f->buf, &f->size, err);
    if (st == MOEXC_OK) st = moexc__st_parse(f, err);
    if (st != MOEXC_OK) { moexc_st_close(f); return st; }
    *out = f;
    return MOEXC_OK;
}

MOEXC_DEF int moexc_st_count(const moexc_st_file *f) { return f ? f->n_tensors : 0; }

MOEXC_DEF const char *moexc_st_name(const moexc_st_file *f, int i)
{
    return f && i >= 0 && i < f->n_tensors ? f->tensors[i].name : NULL;
}

MOEXC_DEF int moexc_st_meta_count(const moexc_st_file *f) { return f ? f->n_meta : 0; }

MOEXC_DEF const char *moexc_st_meta_key(const moexc_st_file *f, int i)
{
    return f && i >= 0 && i < f->n_meta ? f->meta[2 * i] : NULL;
}

MOEXC_DEF const char *moexc_st_meta(const moexc_st_file *f, const char *key)
{
    int lo = 0, hi;
    if (!f || !key) return NULL;
    hi = f->n_meta - 1;
    while (lo <= hi) {   /* binary search over the sorted keys */
        int mid = lo + (hi - lo) / 2, c = strcmp(f->meta[2 * mid], key);
        if (c == 0) return f->meta[2 * mid + 1];
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

/* Required metadata values, with the file and key named on error: a finite
   number in [lo, hi], or an unsigned decimal integer (64 bits, exact). The
   model, training and crosscoder loaders read their metadata through these. */
static MOEXC__UNUSED_FN moexc_status moexc__st_meta_number(const moexc_st_file *f, const char *path, const char *key,
                                                           double lo, double hi, double *out, moexc_error *err)
{
    const char *s = moexc_st_meta(f, key);
    char *end;
    double x;
    if (!s) return moexc__fail(err, MOEXC_ERR_MISSING, "%s: metadata '%s' is missing", path, key);
    x = strtod(s, &end);
    if (end == s || *end != '\0' || !(x >= lo && x <= hi))
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: metadata '%s' = \"%s\" is not a number in [%g, %g]",
                           path, key, s, lo, hi);
    *out = x;
    return MOEXC_OK;
}
/* Exact decimal integers: digits only (an optional '-' for the signed one),
   no spaces, no exponent, no overflow; strtoull would wrap or saturate
   silently and accept "-1", "+5" and " 7". */
static MOEXC__UNUSED_FN int moexc__parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (!s || !*s) return 0;
    for (; *s; s++) {
        unsigned dgt = (unsigned)(unsigned char)*s - '0';
        if (dgt > 9) return 0;
        if (v > (UINT64_MAX - dgt) / 10) return 0;
        v = v * 10 + dgt;
    }
    *out = v;
    return 1;
}
static MOEXC__UNUSED_FN moexc_status moexc__st_meta_u64(const moexc_st_file *f, const char *path, const char *key,
                                                        uint64_t *out, moexc_error *err)
{
    const char *s = moexc_st_meta(f, key);
    if (!s) return moexc__fail(err, MOEXC_ERR_MISSING, "%s: metadata '%s' is missing", path, key);
    if (!moexc__parse_u64(s, out))
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: metadata '%s' = \"%.60s\" is not an unsigned 64-bit decimal integer",
                           path, key, s);
    return MOEXC_OK;
}
/* A decimal integer in [lo, hi]. */
static MOEXC__UNUSED_FN moexc_status moexc__st_meta_i64(const moexc_st_file *f, const char *path, const char *key,
                                                        int64_t lo, int64_t hi, int64_t *out, moexc_error *err)
{
    const char *s = moexc_st_meta(f, key);
    uint64_t u = 0;
    int neg;
    int64_t v;
    if (!s) return moexc__fail(err, MOEXC_ERR_MISSING, "%s: metadata '%s' is missing", path, key);
    neg = *s == '-';
    if (!moexc__parse_u64(s + neg, &u) || u > (neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX))
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: metadata '%s' = \"%.60s\" is not a 64-bit decimal integer",
                           path, key, s);
    v = neg ? (u == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)u) : (int64_t)u;
    if (v < lo || v > hi)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: metadata '%s' = %lld is outside [%lld, %lld]",
                           path, key, (long long)v, (long long)lo, (long long)hi);
    *out = v;
    return MOEXC_OK;
}

static const moexc__st_tensor *moexc__st_find(const moexc_st_file *f, const char *name)
{
    int lo = 0, hi;
    if (!f || !name) return NULL;
    hi = f->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(f->tensors[f->by_name[mid]].name, name);
        if (c == 0) return &f->tensors[f->by_name[mid]];
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

MOEXC_DEF const char *moexc_st_dtype(const moexc_st_file *f, const char *name)
{
    const moexc__st_tensor *t = moexc__st_find(f, name);
    return t ? moexc__st_dtypes[t->dtype].name : NULL;
}

MOEXC_DEF moexc_status moexc_st_shape(const moexc_st_file *f, const char *name, int *ndim, int64_t shape[8],
                                      moexc_error *err)
{
    const moexc__st_tensor *t;
    int i;
    if (!f || !name) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_st_shape: NULL argument");
    t = moexc__st_find(f, name);
    if (!t) return moexc__fail(err, MOEXC_ERR_MISSING, "%s: no tensor '%s'", f->path, name);
    if (ndim) *ndim = t->ndim;
    if (shape) for (i = 0; i < 8; i++) shape[i] = i < t->ndim ? t->shape[i] : 0;
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_st_read_f32(const moexc_st_file *f, const char *name, float *dst,
                                         int ndim, const int64_t *expected_shape, moexc_error *err)
{
    const moexc__st_tensor *t;
    size_t nbytes;
    int i, same;
    if (!f || !name) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_st_read_f32: NULL argument");
    t = moexc__st_find(f, name);
    if (!t) return moexc__fail(err, MOEXC_ERR_MISSING, "%s: no tensor '%s'", f->path, name);
    if (t->dtype != MOEXC__ST_F32)
        return moexc__fail(err, MOEXC_ERR_SHAPE, "%s: tensor '%s' has dtype %s; only F32 can be read as float32",
                           f->path, name, moexc__st_dtypes[t->dtype].name);
    same = ndim == t->ndim && (ndim == 0 || expected_shape);
    for (i = 0; same && i < ndim; i++) same = expected_shape[i] == t->shape[i];
    if (!same) {
        char got[200], want[200];
        moexc__shape_str(got, sizeof(got), t->ndim, t->shape);
        if (ndim >= 0 && ndim <= 8 && (expected_shape || ndim == 0)) moexc__shape_str(want, sizeof(want), ndim, expected_shape);
        else snprintf(want, sizeof(want), "(%d dimensions)", ndim);
        return moexc__fail(err, MOEXC_ERR_SHAPE, "%s: tensor '%s': shape %s, expected %s", f->path, name, got, want);
    }
    nbytes = (size_t)(t->end - t->begin);
    if (nbytes && !dst) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_st_read_f32: dst is NULL");
    if (nbytes) memcpy(dst, f->buf + f->data_start + t->begin, nbytes);
    moexc__le32_swap_inplace(dst, nbytes / 4);
    return MOEXC_OK;
}

/* Copy an I64 tensor of exactly the given shape into dst (internal: the
   exact counters of a crosscoder training checkpoint). */
static MOEXC__UNUSED_FN moexc_status moexc__st_read_i64(const moexc_st_file *f, const char *name, int64_t *dst,
                                                        int ndim, const int64_t *expected_shape, moexc_error *err)
{
    const moexc__st_tensor *t = moexc__st_find(f, name);
    const unsigned char *src;
    size_t i, count;
    int same;
    if (!t) return moexc__fail(err, MOEXC_ERR_MISSING, "%s: no tensor '%s'", f->path, name);
    if (strcmp(moexc__st_dtypes[t->dtype].name, "I64") != 0)
        return moexc__fail(err, MOEXC_ERR_SHAPE, "%s: tensor '%s' has dtype %s, expected I64",
                           f->path, name, moexc__st_dtypes[t->dtype].name);
    same = ndim == t->ndim;
    for (i = 0; same && i < (size_t)ndim; i++) same = expected_shape[i] == t->shape[i];
    if (!same) {
        char got[200], want[200];
        moexc__shape_str(got, sizeof(got), t->ndim, t->shape);
        moexc__shape_str(want, sizeof(want), ndim, expected_shape);
        return moexc__fail(err, MOEXC_ERR_SHAPE, "%s: tensor '%s': shape %s, expected %s", f->path, name, got, want);
    }
    count = (size_t)(t->end - t->begin) / 8;
    src = f->buf + f->data_start + t->begin;
    for (i = 0; i < count; i++) dst[i] = (int64_t)moexc__get_u64le(src + 8 * i);
    return MOEXC_OK;
}

/* ---- writer --------------------------------------------------------------- */
/* Little-endian int64 values to a file; 1 on success. */
static int moexc__fwrite_i64le(FILE *f, const int64_t *x, size_t n)
{
    unsigned char buf[4096];
    size_t done = 0;
    while (done < n) {
        size_t chunk = MOEXC__MIN(n - done, sizeof(buf) / 8), i;
        for (i = 0; i < chunk; i++) moexc__put_u64le(buf + 8 * i, (uint64_t)x[done + i]);
        if (fwrite(buf, 8, chunk, f) != chunk) return 0;
        done += chunk;
    }
    return 1;
}

/* The writer. i64 (may be NULL) marks the entries whose data pointer holds
   int64_t values, written as dtype I64 (counters that must stay exact);
   the others are F32. */
static moexc_status moexc__st_save_typed(const char *path, const moexc_st_entry *tensors, const unsigned char *i64,
                                         int n_tensors, const moexc_st_kv *metadata, int n_metadata, moexc_error *err)
{
    moexc__sb sb;
    moexc__atomic_file af;
    const char **names = NULL;
    unsigned char len_bytes[8];
    uint64_t offset = 0;
    moexc_status st = MOEXC_OK;
    int i, j;

    if (!path) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_st_save: path is NULL");
    if (n_tensors < 0 || n_metadata < 0 || (n_tensors && !tensors) || (n_metadata && !metadata))
        return moexc__fail(err, MOEXC_ERR_ARG, "%s: invalid tensor or metadata list", path);
    memset(&sb, 0, sizeof(sb));

    /* validate, and check names and keys are unique */
    names = (const char **)moexc__calloc((size_t)MOEXC__MAX(n_tensors, n_metadata) + 1, sizeof(*names));
    if (!names) return moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory", path);
    for (i = 0; i < n_metadata; i++) {
        const moexc_st_kv *kv = &metadata[i];
        if (!kv->key || !kv->value) { st = moexc__fail(err, MOEXC_ERR_ARG, "%s: metadata entry %d has a NULL key or value", path, i); goto done; }
        if (!moexc__utf8_valid(kv->key, strlen(kv->key)) || !moexc__utf8_valid(kv->value, strlen(kv->value))) {
            st = moexc__fail(err, MOEXC_ERR_ARG, "%s: metadata entry '%.100s' is not valid UTF-8", path, kv->key);
            goto done;
        }
        names[i] = kv->key;
    }
    qsort((void *)names, (size_t)n_metadata, sizeof(*names), moexc__cmp_cstr_ptr);
    for (i = 1; i < n_metadata; i++)
        if (strcmp(names[i - 1], names[i]) == 0) { st = moexc__fail(err, MOEXC_ERR_ARG, "%s: duplicate metadata key '%.100s'", path, names[i]); goto done; }
    for (i = 0; i < n_tensors; i++) {
        const moexc_st_entry *t = &tensors[i];
        uint64_t count = 1;
        if (!t->name) { st = moexc__fail(err, MOEXC_ERR_ARG, "%s: tensor %d has no name", path, i); goto done; }
        if (!moexc__utf8_valid(t->name, strlen(t->name)) || strcmp(t->name, "__metadata__") == 0) {
            st = moexc__fail(err, MOEXC_ERR_ARG, "%s: tensor name '%.100s' is not allowed (reserved or not UTF-8)", path, t->name);
            goto done;
        }
        if (t->ndim < 0 || t->ndim > 8) { st = moexc__fail(err, MOEXC_ERR_ARG, "%s: tensor '%s': ndim %d outside 0..8", path, t->name, t->ndim); goto done; }
        for (j = 0; j < t->ndim; j++) {
            if (t->shape[j] < 0) { st = moexc__fail(err, MOEXC_ERR_ARG, "%s: tensor '%s': negative dimension %lld", path, t->name, (long long)t->shape[j]); goto done; }
            if (t->shape[j] && count > (((uint64_t)1 << 60) - offset / 8) / (uint64_t)t->shape[j]) {
                st = moexc__fail(err, MOEXC_ERR_ARG, "%s: tensor '%s': too large", path, t->name);
                goto done;
            }
            count *= (uint64_t)t->shape[j];
        }
        if (count && !t->data) { st = moexc__fail(err, MOEXC_ERR_ARG, "%s: tensor '%s': data is NULL", path, t->name); goto done; }
        offset += (i64 && i64[i] ? 8 : 4) * count;
        names[i] = t->name;
    }
    qsort((void *)names, (size_t)n_tensors, sizeof(*names), moexc__cmp_cstr_ptr);
    for (i = 1; i < n_tensors; i++)
        if (strcmp(names[i - 1], names[i]) == 0) { st = moexc__fail(err, MOEXC_ERR_ARG, "%s: duplicate tensor name '%.100s'", path, names[i]); goto done; }

    /* the header, compact JSON in the order given */
    moexc__sb_puts(&sb, "{");
    if (n_metadata) {
        moexc__sb_puts(&sb, "\"__metadata__\":{");
        for (i = 0; i < n_metadata; i++) {
            if (i) moexc__sb_puts(&sb, ",");
            moexc__sb_json_string(&sb, metadata[i].key);
            moexc__sb_puts(&sb, ":");
            moexc__sb_json_string(&sb, metadata[i].value);
        }
        moexc__sb_puts(&sb, "}");
    }
    for (offset = 0, i = 0; i < n_tensors; i++) {
        const moexc_st_entry *t = &tensors[i];
        uint64_t count = 1, size = i64 && i64[i] ? 8 : 4;
        for (j = 0; j < t->ndim; j++) count *= (uint64_t)t->shape[j];
        if (n_metadata || i) moexc__sb_puts(&sb, ",");
        moexc__sb_json_string(&sb, t->name);
        moexc__sb_puts(&sb, size == 8 ? ":{\"dtype\":\"I64\",\"shape\":[" : ":{\"dtype\":\"F32\",\"shape\":[");
        for (j = 0; j < t->ndim; j++) {
            if (j) moexc__sb_puts(&sb, ",");
            moexc__sb_putu64(&sb, (uint64_t)t->shape[j]);
        }
        moexc__sb_puts(&sb, "],\"data_offsets\":[");
        moexc__sb_putu64(&sb, offset);
        moexc__sb_puts(&sb, ",");
        moexc__sb_putu64(&sb, offset + size * count);
        moexc__sb_puts(&sb, "]}");
        offset += size * count;
    }
    moexc__sb_puts(&sb, "}");
    while (!sb.oom && sb.len % 8) moexc__sb_puts(&sb, " ");   /* pad: the data section starts 8-aligned */
    if (sb.oom) { st = moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory building the header", path); goto done; }

    if ((st = moexc__atomic_open(&af, path, err)) != MOEXC_OK) goto done;
    moexc__put_u64le(len_bytes, (uint64_t)sb.len);
    if (fwrite(len_bytes, 1, 8, af.f) != 8 || fwrite(sb.buf, 1, sb.len, af.f) != sb.len) goto write_error;
    for (i = 0; i < n_tensors; i++) {
        const moexc_st_entry *t = &tensors[i];
        size_t count = 1;
        for (j = 0; j < t->ndim; j++) count *= (size_t)t->shape[j];
        if (count && (i64 && i64[i] ? !moexc__fwrite_i64le(af.f, (const int64_t *)(const void *)t->data, count)
                                    : !moexc__fwrite_f32le(af.f, t->data, count))) goto write_error;
    }
    st = moexc__atomic_commit(&af, err);
    goto done;
write_error:
    moexc__atomic_abort(&af);
    st = moexc__fail(err, MOEXC_ERR_IO, "%s: write failed (disk full?)", path);
done:
    moexc__free((void *)names);
    moexc__free(sb.buf);
    return st;
}

MOEXC_DEF moexc_status moexc_st_save(const char *path, const moexc_st_entry *tensors, int n_tensors,
                                     const moexc_st_kv *metadata, int n_metadata, moexc_error *err)
{
    return moexc__st_save_typed(path, tensors, NULL, n_tensors, metadata, n_metadata, err);
}
/* ======================================================================== */
/* >>layers: embedding, RMSNorm, attention + RoPE, SwiGLU, MoE, losses       */
/* ======================================================================== */
/* Shapes: B sequences, T tokens each, N = B*T rows, d width, H heads of
   dh = d/H, h a SwiGLU hidden width, E experts, k active experts, V vocab.
   Activations are row-major (N, width); the heads of q, k, v sit side by side
   in a row (token t, head j at columns j*dh .. j*dh+dh-1).
   Every _forward has a _backward that ADDS into parameter gradients; input
   gradients add as well unless the comment says "overwritten". */

#define MOEXC__RMS_EPS 1e-6f
#define MOEXC__ROPE_THETA 10000.0
#define MOEXC__ATT_PAR_MIN 131072.0   /* multiply-adds of one attention GEMM set worth a parallel region */
/* Threading of the passes around the GEMMs: a pass worth a parallel region
   touches at least MOEXC__PAR_MIN floats. Element-wise passes are cut into
   chunks of MOEXC__CHUNK floats (a multiple of every MOEXC__VW, and each
   element's value does not depend on where a chunk starts), row-wise passes
   into rows; every row or chunk is computed whole by one thread, and the
   column sums (parameter gradients) are cut by columns, each summed over the
   rows in order. So no result depends on the thread count. */
#define MOEXC__PAR_MIN 32768
#define MOEXC__CHUNK 4096

/* y = a + b, chunked over threads */
static void moexc__add_par(float *y, const float *a, const float *b, size_t n)
{
    long c, n_chunks = (long)((n + MOEXC__CHUNK - 1) / MOEXC__CHUNK);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= MOEXC__PAR_MIN)
#endif
    for (c = 0; c < n_chunks; c++) {
        size_t i = (size_t)c * MOEXC__CHUNK;
        moexc_add(y + i, a + i, b + i, MOEXC__MIN((size_t)MOEXC__CHUNK, n - i));
    }
}

/* x *= alpha, chunked over threads */
static void moexc__scale_par(float *x, float alpha, size_t n)
{
    long c, n_chunks = (long)((n + MOEXC__CHUNK - 1) / MOEXC__CHUNK);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= MOEXC__PAR_MIN)
#endif
    for (c = 0; c < n_chunks; c++) {
        size_t i = (size_t)c * MOEXC__CHUNK;
        moexc_scale(x + i, alpha, MOEXC__MIN((size_t)MOEXC__CHUNK, n - i));
    }
}

/* Σ x_i² in double: MOEXC__SUMSQ_PARTS parts of whole chunks (their size
   depends on n only), each the double sum of its chunks' moexc_dot in order;
   the parts are added in order. */
#define MOEXC__SUMSQ_PARTS 64
static double moexc__sumsq_par(const float *x, size_t n)
{
    double part[MOEXC__SUMSQ_PARTS], total = 0.0;
    size_t per = (n + MOEXC__SUMSQ_PARTS - 1) / MOEXC__SUMSQ_PARTS;
    int q;
    per = (per + MOEXC__CHUNK - 1) / MOEXC__CHUNK * MOEXC__CHUNK;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= MOEXC__PAR_MIN)
#endif
    for (q = 0; q < MOEXC__SUMSQ_PARTS; q++) {
        size_t i = (size_t)q * per, end = MOEXC__MIN(n, i + per);
        double sum = 0.0;
        for (; i < end; i += MOEXC__CHUNK) {
            size_t len = MOEXC__MIN((size_t)MOEXC__CHUNK, end - i);
            sum += (double)moexc_dot(x + i, x + i, len);
        }
        part[q] = sum;
    }
    for (q = 0; q < MOEXC__SUMSQ_PARTS; q++) total += part[q];
    return total;
}

/* Whether x[0..n) holds a NaN or an Inf: x * 0 is NaN exactly for those, so
   x holds one when its sum of x * 0 is NaN. The sum runs in vectors (a
   single scalar sum would wait on every add). One thread, for a piece that
   is already in cache (the optimisers check each chunk they have just
   updated). */
static int moexc__chunk_nonfinite(const float *x, size_t n)
{
    size_t i = 0;
    const moexc__vf zero = moexc__vzero();
    moexc__vf acc = moexc__vzero();
    float z;
    for (; i + MOEXC__VW <= n; i += MOEXC__VW) acc = moexc__vfmadd(moexc__vload(x + i), zero, acc);
    z = moexc__vhsum(acc);
    for (; i < n; i++) z += x[i] * 0.0f;
    return z != z;
}

/* The same over x[0..n) in chunks over threads. The answer is a yes or no,
   the same whatever the split; callers that need the place scan for it then
   (it is rare: the run is about to stop). */
static int moexc__any_nonfinite(const float *x, size_t n)
{
    long c, n_chunks = (long)((n + MOEXC__CHUNK - 1) / MOEXC__CHUNK);
    int bad = 0;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) reduction(| : bad) if (n >= MOEXC__PAR_MIN)
#endif
    for (c = 0; c < n_chunks; c++) {
        size_t i = (size_t)c * MOEXC__CHUNK;
        bad |= moexc__chunk_nonfinite(x + i, MOEXC__MIN((size_t)MOEXC__CHUNK, n - i));
    }
    return bad;
}

/* The index of the first NaN or Inf in x[0..n), or n when there is none. */
static size_t moexc__first_nonfinite(const float *x, size_t n)
{
    size_t i = 0;
    if (moexc__any_nonfinite(x, n))
        while (i < n && x[i] * 0.0f == 0.0f) i++;
    else
        i = n;
    return i;
}

/* ---- embedding ----------------------------------------------------------- */
/* x (N,d) = tok_emb[tokens]; tokens (N), tok_emb (V,d) */
static void moexc__embedding_forward(float *x, const uint16_t *tokens, const float *tok_emb, int N, int d)
{
    int t;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if ((double)N * d >= MOEXC__PAR_MIN)
#endif
    for (t = 0; t < N; t++)
        memcpy(x + (size_t)t * d, tok_emb + (size_t)tokens[t] * d, (size_t)d * sizeof(float));
}
/* dtok_emb[tokens[t]] += dx[t], tokens in order; threads split the columns
   (blocks of MOEXC__VW), since two tokens may hit the same row */
static void moexc__embedding_backward(float *dtok_emb, const float *dx, const uint16_t *tokens, int N, int d)
{
    int jb, n_blocks = (d + MOEXC__VW - 1) / MOEXC__VW;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if ((double)N * d >= MOEXC__PAR_MIN)
#endif
    for (jb = 0; jb < n_blocks; jb++) {
        int t, j0 = jb * MOEXC__VW, w = MOEXC__MIN(MOEXC__VW, d - j0);
        for (t = 0; t < N; t++)
            moexc_axpy(dtok_emb + (size_t)tokens[t] * d + j0, 1.0f, dx + (size_t)t * d + j0, (size_t)w);
    }
}

/* ---- RMSNorm ------------------------------------------------------------- */
/* y (N,d) = g ⊙ x / sqrt(mean(x²) + 1e-6); inv_rms (N) = r_t kept for backward */
static void moexc__rmsnorm_forward(float *y, float *inv_rms, const float *x, const float *g, int N, int d)
{
    int t;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if ((double)N * d >= MOEXC__PAR_MIN)
#endif
    for (t = 0; t < N; t++)
        moexc_rmsnorm_rows(y + (size_t)t * d, inv_rms + t, x + (size_t)t * d, g, 1, d, MOEXC__RMS_EPS);
}
/* The residual add and the RMSNorm after it in one pass over the rows:
   h (N,d) = a + b (h may alias a or b), y = RMSNorm(h) as above. */
typedef struct moexc__residual_norm {
    float *h, *y, *inv_rms;
    const float *a, *b, *g;
    int d;
} moexc__residual_norm;
/* rows [first, end) of it; also what a product producing a or b runs on
   the rows it has just finished (moexc__gemm_then) */
static void moexc__residual_rmsnorm_rows(const void *ctx, int first, int end)
{
    const moexc__residual_norm *r = (const moexc__residual_norm *)ctx;
    int t;
    for (t = first; t < end; t++) {
        size_t o = (size_t)t * r->d;
        moexc_add(r->h + o, r->a + o, r->b + o, (size_t)r->d);
        moexc_rmsnorm_rows(r->y + o, r->inv_rms + t, r->h + o, r->g, 1, r->d, MOEXC__RMS_EPS);
    }
}
static moexc__residual_norm moexc__residual_norm_of(float *h, const float *a, const float *b, float *y,
                                                    float *inv_rms, const float *g, int d)
{
    moexc__residual_norm r;
    r.h = h; r.a = a; r.b = b; r.y = y; r.inv_rms = inv_rms; r.g = g; r.d = d;
    return r;
}
/* all N rows, in a pass of their own */
static void moexc__residual_rmsnorm_rows_par(const moexc__residual_norm *r, int N)
{
    int t;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if ((double)N * r->d >= MOEXC__PAR_MIN)
#endif
    for (t = 0; t < N; t++) moexc__residual_rmsnorm_rows(r, t, t + 1);
}
/* With r = inv_rms[t]:  dx_j += r g_j dy_j − x_j r³/d Σ_i g_i dy_i x_i,
                         dg_j += Σ_t dy_j x_j r.
   dx by rows (moexc__rmsnorm_backward_rows: also what the product making dy
   runs on the rows it has just finished, moexc__gemm_then); dg by groups of
   up to MOEXC__GAIN_BLOCKS blocks of MOEXC__VW columns, each column summed
   over t in order, a group in one pass over the rows with its sums in
   registers (moexc__rmsnorm_backward_gain). */
typedef struct moexc__rmsnorm_grad {
    float *dx;
    const float *dy, *x, *g, *inv_rms;
    int d;
} moexc__rmsnorm_grad;
static moexc__rmsnorm_grad moexc__rmsnorm_grad_of(float *dx, const float *dy, const float *x, const float *g,
                                                  const float *inv_rms, int d)
{
    moexc__rmsnorm_grad r;
    r.dx = dx; r.dy = dy; r.x = x; r.g = g; r.inv_rms = inv_rms; r.d = d;
    return r;
}
static void moexc__rmsnorm_backward_rows(const void *ctx, int first, int end)
{
    const moexc__rmsnorm_grad *r = (const moexc__rmsnorm_grad *)ctx;
    const int d = r->d;
    const float *g = r->g;
    int t;
    for (t = first; t < end; t++) {
        const float *xt = r->x + (size_t)t * d, *dyt = r->dy + (size_t)t * d;
        float *dxt = r->dx + (size_t)t * d;
        float rt = r->inv_rms[t], c, dot;
        moexc__vf acc = moexc__vzero(), vr, vc;
        int j = 0;
        for (; j + MOEXC__VW <= d; j += MOEXC__VW)
            acc = moexc__vfmadd(moexc__vmul(moexc__vload(g + j), moexc__vload(dyt + j)), moexc__vload(xt + j), acc);
        dot = moexc__vhsum(acc);
        for (; j < d; j++) dot += g[j] * dyt[j] * xt[j];
        c = (float)((double)rt * rt * rt * dot / d);
        vr = moexc__vset1(rt);
        vc = moexc__vset1(c);
        for (j = 0; j + MOEXC__VW <= d; j += MOEXC__VW)
            moexc__vstore(dxt + j, moexc__vadd(moexc__vload(dxt + j),
                moexc__vsub(moexc__vmul(moexc__vmul(vr, moexc__vload(g + j)), moexc__vload(dyt + j)),
                            moexc__vmul(vc, moexc__vload(xt + j)))));
        for (; j < d; j++) dxt[j] += rt * g[j] * dyt[j] - c * xt[j];
    }
}
/* the dg part alone (parallel); with_dx: the dx rows too, in the same region */
/* blocks of a group: their sums stay in registers, and d = 128 on AVX-512
   makes two groups, one per thread of two */
#define MOEXC__GAIN_BLOCKS 4
static void moexc__rmsnorm_backward_par(float *dg, const moexc__rmsnorm_grad *r, int N, int with_dx)
{
    const int d = r->d;
    const float *dy = r->dy, *x = r->x, *inv_rms = r->inv_rms;
    /* groups of whole blocks, then one group for a partial last block */
    const int full_blocks = d / MOEXC__VW;
    const int full_groups = (full_blocks + MOEXC__GAIN_BLOCKS - 1) / MOEXC__GAIN_BLOCKS;
    const int n_groups = full_groups + (d % MOEXC__VW != 0);
    int t, group;
#ifdef _OPENMP
#pragma omp parallel if ((double)N * d >= MOEXC__PAR_MIN)
#endif
    {
        if (with_dx) {
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
            for (t = 0; t < N; t++) moexc__rmsnorm_backward_rows(r, t, t + 1);
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (group = 0; group < n_groups; group++) {
            const int j0 = group < full_groups ? group * MOEXC__GAIN_BLOCKS * MOEXC__VW : full_blocks * MOEXC__VW;
            int row;
            if (group < full_groups) {  /* whole blocks: dg_j + Σ_t in order, in registers */
                const int blocks = MOEXC__MIN(MOEXC__GAIN_BLOCKS, full_blocks - group * MOEXC__GAIN_BLOCKS);
                moexc__vf acc[MOEXC__GAIN_BLOCKS];
                int b;
                for (b = 0; b < blocks; b++) acc[b] = moexc__vload(dg + j0 + b * MOEXC__VW);
                for (row = 0; row < N; row++) {
                    const float *xt = x + (size_t)row * d + j0, *dyt = dy + (size_t)row * d + j0;
                    const moexc__vf rt = moexc__vset1(inv_rms[row]);
                    for (b = 0; b < blocks; b++)
                        acc[b] = moexc__vadd(acc[b], moexc__vmul(moexc__vmul(moexc__vload(dyt + b * MOEXC__VW),
                                                                             moexc__vload(xt + b * MOEXC__VW)), rt));
                }
                for (b = 0; b < blocks; b++) moexc__vstore(dg + j0 + b * MOEXC__VW, acc[b]);
            } else {                /* the last d % MOEXC__VW columns */
                int j;
                for (row = 0; row < N; row++)
                    for (j = j0; j < d; j++) dg[j] += dy[(size_t)row * d + j] * x[(size_t)row * d + j] * inv_rms[row];
            }
        }
    }
}
static void moexc__rmsnorm_backward(float *dx, float *dg, const float *dy, const float *x, const float *g,
                                    const float *inv_rms, int N, int d)
{
    moexc__rmsnorm_grad r = moexc__rmsnorm_grad_of(dx, dy, x, g, inv_rms, d);
    moexc__rmsnorm_backward_par(dg, &r, N, 1);
}
/* dg alone: dx made by moexc__rmsnorm_backward_rows inside a product */
static void moexc__rmsnorm_backward_gain(float *dg, const moexc__rmsnorm_grad *r, int N)
{
    moexc__rmsnorm_backward_par(dg, r, N, 0);
}

/* ---- rotary position embedding (RoPE, rotate-half pairing) --------------- */
/* Tables (context, dh/2): θ_{t,i} = t · 10000^(−2i/dh), computed in double. */
static void moexc__rope_tables(float *cos_tab, float *sin_tab, int context, int dh)
{
    int t, i, half = dh / 2;
    for (t = 0; t < context; t++)
        for (i = 0; i < half; i++) {
            double angle = (double)t * pow(MOEXC__ROPE_THETA, -2.0 * i / dh);
            cos_tab[(size_t)t * half + i] = (float)cos(angle);
            sin_tab[(size_t)t * half + i] = (float)sin(angle);
        }
}
/* x (B,T,H·dh) in place, rows ld floats apart. Dim i pairs with i + dh/2 at position t:
     forward:  (x1, x2) <- (x1 cos θ − x2 sin θ,  x1 sin θ + x2 cos θ)
     backward (inverse = 1) applies the transpose, i.e. the rotation by −θ,
     which maps the gradient w.r.t. the rotated vector to the one w.r.t. x. */
typedef struct moexc__rope {
    float *x;                   /* row bt of it at x + bt ld                   */
    size_t ld;
    const float *cos_tab, *sin_tab;
    int T, H, dh;
    float sign;                 /* -1: the inverse rotation                    */
} moexc__rope;
/* rows (tokens) [first, end) of x; also what the product making x runs on
   the rows it has just finished (moexc__gemm_then) */
static void moexc__rope_rows(const void *ctx, int first, int end)
{
    const moexc__rope *r = (const moexc__rope *)ctx;
    const int T = r->T, H = r->H, dh = r->dh, half = dh / 2;
    const float sign = r->sign;
    float *x = r->x;
    const size_t ld = r->ld;
    int bt;
    for (bt = first; bt < end; bt++) {
        int t = bt % T, h, i;
        const float *c = r->cos_tab + (size_t)t * half, *s = r->sin_tab + (size_t)t * half;
        moexc__vf vsign = moexc__vset1(sign);
        for (h = 0; h < H; h++) {
            float *v = x + (size_t)bt * ld + (size_t)h * dh;
            for (i = 0; i + MOEXC__VW <= half; i += MOEXC__VW) {
                moexc__vf x1 = moexc__vload(v + i), x2 = moexc__vload(v + i + half);
                moexc__vf vc = moexc__vload(c + i), sn = moexc__vmul(vsign, moexc__vload(s + i));
                moexc__vstore(v + i, moexc__vsub(moexc__vmul(x1, vc), moexc__vmul(x2, sn)));
                moexc__vstore(v + i + half, moexc__vadd(moexc__vmul(x1, sn), moexc__vmul(x2, vc)));
            }
#ifdef MOEXC__VHW
            for (; i + MOEXC__VHW <= half; i += MOEXC__VHW) {   /* heads of 16 floats (d 64, 4 heads) */
                moexc__vhf x1 = moexc__vhload(v + i), x2 = moexc__vhload(v + i + half);
                moexc__vhf vc = moexc__vhload(c + i), sn = moexc__vhmul(moexc__vhset1(sign), moexc__vhload(s + i));
                moexc__vhstore(v + i, moexc__vhsub(moexc__vhmul(x1, vc), moexc__vhmul(x2, sn)));
                moexc__vhstore(v + i + half, moexc__vhadd(moexc__vhmul(x1, sn), moexc__vhmul(x2, vc)));
            }
#endif
            for (; i < half; i++) {
                float x1 = v[i], x2 = v[i + half], sn = sign * s[i];
                v[i]        = x1 * c[i] - x2 * sn;
                v[i + half] = x1 * sn + x2 * c[i];
            }
        }
    }
}
static moexc__rope moexc__rope_of(float *x, size_t ld, const float *cos_tab, const float *sin_tab, int T, int H,
                                  int dh, int inverse)
{
    moexc__rope r;
    r.x = x; r.ld = ld; r.cos_tab = cos_tab; r.sin_tab = sin_tab; r.T = T; r.H = H; r.dh = dh;
    r.sign = inverse ? -1.0f : 1.0f;
    return r;
}
static void moexc__rope_apply_ld(float *x, size_t ld, const float *cos_tab, const float *sin_tab,
                                 int B, int T, int H, int dh, int inverse)
{
    moexc__rope r = moexc__rope_of(x, ld, cos_tab, sin_tab, T, H, dh, inverse);
    int bt;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if ((double)B * T * H * dh >= MOEXC__PAR_MIN)
#endif
    for (bt = 0; bt < B * T; bt++) moexc__rope_rows(&r, bt, bt + 1);
}

/* the same on rows of d = H·dh floats */
static MOEXC__UNUSED_FN void moexc__rope_apply(float *x, const float *cos_tab, const float *sin_tab,
                                               int B, int T, int H, int dh, int inverse)
{
    moexc__rope_apply_ld(x, (size_t)H * dh, cos_tab, sin_tab, B, T, H, dh, inverse);
}

/* ---- causal multi-head self-attention ------------------------------------ */
/* Two ways to run one (batch, head); both sum every element over the same
   keys in the same order (terms they leave out are exact zeros), so they give
   the same bits.

   Packed (T <= MOEXC_GEMM_KC and dh <= MOEXC_GEMM_KC, with a workspace): the
   head's q, k, v (and dy in backward) are packed into GEMM panels once per
   (batch, head), and the GEMM micro-kernel runs on them tile by tile; it
   reads P and dS where they lie (MR of their rows for P v and dS k, MR
   contiguous floats per row for Pᵀ dy and dSᵀ q), and only a short last
   tile of them is packed. A row
   tile of MR queries t0 .. t0+MR-1 meets only the key panels that start
   before t0+MR, and P v, dS k run over keys 0 .. t0+MR-1 only; a key tile
   c0 .. c0+MR-1 gets dv, dk from queries c0 .. T-1 only. So the products
   follow the causal triangle at tile granularity, with one K block each
   (kc <= KC). For T = 256 on AVX-512 (MR 14, NR 32) they do 0.62 of the
   full T x T work for q kᵀ and dy vᵀ (whole key panels), 0.57 for P v and
   dS k, 0.53 for Pᵀ dy and dSᵀ q; and no packing is repeated.

   Blocked (the fallback: longer sequences, or no memory for the panels):
   the T query rows are cut into blocks of at most MOEXC__ATT_BLOCK rows; the
   block of rows r0 .. r1-1 sees keys 0 .. r1-1 only, and moexc_sgemm runs on
   the strided q, k, v (0.60 of the full T x T work for T = 256 and blocks of
   56 rows). A block is the whole GEMM register tiles of rows closest to 64
   (56 rows on AVX-512). */
#define MOEXC__ATT_BLOCK (64 / MOEXC__GEMM_MR * MOEXC__GEMM_MR)

/* C tile (mr x nr, row stride ldc) = alpha * (A panel, a_step floats per
   step) (packed B panel) over kc */
static void moexc__att_tile_step(int kc, const float *a, size_t a_step, const float *b, float *c, size_t ldc,
                                 int mr, int nr, float alpha)
{
    if (mr == MOEXC__GEMM_MR && nr == MOEXC__GEMM_NR) moexc__gemm_kernel(kc, a, a_step, b, c, ldc, alpha, 0.0f, 1, NULL);
    else moexc__gemm_kernel_edge(kc, a, a_step, b, c, ldc, mr, nr, alpha, 0.0f, 1);
}
/* the same with a packed A panel */
static void moexc__att_tile(int kc, const float *a, const float *b, float *c, size_t ldc, int mr, int nr, float alpha)
{
    moexc__att_tile_step(kc, a, MOEXC__GEMM_MR, b, c, ldc, mr, nr, alpha);
}

/* Workspace of the packed path, in floats (0: the packed path does not apply):
   pa, a (T x dh) operand in MR-row panels (q; dy); pb, a transposed one in
   NR-column panels (kᵀ; vᵀ); pc and pd, (T x dh) operands in NR-column
   panels (v; k, then dy and q); tile, the short last MR-row panel of P or
   dS. */
#define MOEXC__ATT_UP(x, m) (((size_t)(x) + (size_t)(m) - 1) / (size_t)(m) * (size_t)(m))
static size_t moexc__att_ws_floats(int T, int dh, int with_scores)
{
    size_t mr_panels = MOEXC__ATT_UP(T, MOEXC__GEMM_MR) * (size_t)dh;      /* op(A) = X,  X (T x dh)      */
    size_t nr_panels = MOEXC__ATT_UP(T, MOEXC__GEMM_NR) * (size_t)dh;      /* op(B) = Xᵀ, X (T x dh)      */
    size_t cols = MOEXC__ATT_UP(dh, MOEXC__GEMM_NR) * (size_t)T;           /* op(B) = X   (T x dh)        */
    size_t tile = (size_t)MOEXC__GEMM_MR * (size_t)T;
    size_t scores = with_scores ? (size_t)T * (size_t)T : 0;              /* dS of one (batch, head)     */
    if (T > MOEXC_GEMM_KC || dh > MOEXC_GEMM_KC) return 0;
    return mr_panels + nr_panels + cols + cols + tile + scores + 128;   /* + alignment */
}
/* the workspace carved into its panels, each aligned to a cache line;
   scores: the backward's dS (T x T), in the workspace so that it stays in
   this core's cache from the product that writes it to the ones that read it
   (a (B, H, T, T) array would go out to memory and back) */
typedef struct moexc__att_ws { float *pa, *pb, *pc, *pd, *tile, *scores; } moexc__att_ws;
static void moexc__att_ws_carve(moexc__att_ws *w, float *base, int T, int dh)
{
    size_t mr_panels = MOEXC__ATT_UP(T, MOEXC__GEMM_MR) * (size_t)dh;
    size_t nr_panels = MOEXC__ATT_UP(T, MOEXC__GEMM_NR) * (size_t)dh;
    size_t cols = MOEXC__ATT_UP(dh, MOEXC__GEMM_NR) * (size_t)T;
    float *p = (float *)((uintptr_t)((char *)base + 63) / 64 * 64);
    w->pa = p; p += MOEXC__ATT_UP(mr_panels, 16);
    w->pb = p; p += MOEXC__ATT_UP(nr_panels, 16);
    w->pc = p; p += MOEXC__ATT_UP(cols, 16);
    w->pd = p; p += MOEXC__ATT_UP(cols, 16);
    w->tile = p; p += MOEXC__ATT_UP((size_t)MOEXC__GEMM_MR * (size_t)T, 16);
    w->scores = p;      /* T x T when the workspace was sized with_scores */
}

/* C rows (mr x dh, row stride ldc) = (mr rows of A, lda apart, over kc) (B
   in NR-column panels of T rows): a whole MR x NR tile reads A in place;
   a tile cut by an edge (short last rows, or dh not a multiple of NR) runs
   on A packed once into w->tile */
static void moexc__att_rows_tile(int kc, const float *A, size_t lda, const moexc__att_ws *w,
                                 const float *b_panels, int T, float *c, size_t ldc, int mr, int dh)
{
    int j0, packed = 0;
    for (j0 = 0; j0 < dh; j0 += MOEXC__GEMM_NR) {
        const int nr = MOEXC__MIN(MOEXC__GEMM_NR, dh - j0);
        const float *b = b_panels + (size_t)j0 * T;
        if (mr == MOEXC__GEMM_MR && nr == MOEXC__GEMM_NR) {
            moexc__gemm_kernel_rows(kc, A, lda, b, c + j0, ldc, 1.0f, 0.0f, 1);
            continue;
        }
        if (!packed) { moexc__gemm_pack_a(w->tile, 0, A, lda, 0, mr, 0, kc); packed = 1; }
        moexc__att_tile(kc, w->tile, b, c + j0, ldc, mr, nr, 1.0f);
    }
}

/* One (batch, head) of the forward below, blocked. */
static void moexc__attention_forward_blocked(float *y, float *P, const float *q, const float *k, const float *v,
                                             int ld, int T, int d, int dh, float scale)
{
    int r0;
    for (r0 = 0; r0 < T; r0 += MOEXC__ATT_BLOCK) {
        int r1 = MOEXC__MIN(T, r0 + MOEXC__ATT_BLOCK);
        float *Pb = P + (size_t)r0 * T;
        /* S = q kᵀ / sqrt(dh)  (rows r0..r1-1, keys 0..r1-1) */
        moexc_sgemm(0, 1, r1 - r0, r1, dh, scale, q + (size_t)r0 * ld, ld, k, ld, 0.0f, Pb, T);
        /* causal softmax, max subtracted: row t sees keys 0..t */
        moexc__softmax_causal_tile(Pb, (size_t)T, (size_t)r0 + 1, r1 - r0, (size_t)T);
        /* y = P v  (rows r0..r1-1) */
        moexc_sgemm(0, 0, r1 - r0, dh, r1, 1.0f, Pb, T, v, ld, 0.0f, y + (size_t)r0 * d, d);
    }
}
/* One (batch, head) of the forward below, on packed panels. */
static void moexc__attention_forward_packed(float *y, float *P, const float *q, const float *k, const float *v,
                                            int ld, int T, int d, int dh, float scale, const moexc__att_ws *w)
{
    int t0, j0;
    moexc__gemm_pack_a(w->pa, 0, q, (size_t)ld, 0, T, 0, dh);    /* q  in MR-row panels    */
    moexc__gemm_pack_b(w->pb, 1, k, (size_t)ld, 0, T, 0, dh);    /* kᵀ in NR-column panels */
    moexc__gemm_pack_b(w->pc, 0, v, (size_t)ld, 0, dh, 0, T);    /* v  in NR-column panels */
    for (t0 = 0; t0 < T; t0 += MOEXC__GEMM_MR) {
        const int mr = MOEXC__MIN(MOEXC__GEMM_MR, T - t0), keys = t0 + mr;
        /* S = q kᵀ / sqrt(dh): rows t0..t0+mr-1, the key panels that start before t0+mr */
        for (j0 = 0; j0 < keys; j0 += MOEXC__GEMM_NR)
            moexc__att_tile(dh, w->pa + (size_t)t0 * dh, w->pb + (size_t)j0 * dh, P + (size_t)t0 * T + j0, (size_t)T,
                            mr, MOEXC__MIN(MOEXC__GEMM_NR, T - j0), scale);
        /* causal softmax, max subtracted: row t sees keys 0..t */
        moexc__softmax_causal_tile(P + (size_t)t0 * T, (size_t)T, (size_t)t0 + 1, mr, (size_t)keys);
        /* y = P v: rows t0..t0+mr-1 over keys 0..t0+mr-1 */
        moexc__att_rows_tile(keys, P + (size_t)t0 * T, (size_t)T, w, w->pc, T, y + (size_t)t0 * d, (size_t)d, mr, dh);
    }
}

/* q, k, v (B,T,d) with rows ld floats apart, q and k already rotated;
   att (B,H,T,T) receives the rows
   P = softmax(q kᵀ / sqrt(dh)) over the causal prefix; above the diagonal
   it is zero as far as the products read (to the end of the diagonal tile
   or block) and not defined beyond (not writing those zeros halves the
   forward's writes to this array); y (B,T,d) = P v per head (overwritten).
   Per (batch, head): S = q kᵀ / sqrt(dh), the causal softmax, y = P v, by
   row tiles (packed) or row blocks (blocked). */
static void moexc__attention_forward_ld(float *y, float *att, const float *q, const float *k, const float *v,
                                        int ld, int B, int T, int H, int dh)
{
    int d = H * dh;
    float scale = 1.0f / sqrtf((float)dh);
    size_t ws_floats = moexc__att_ws_floats(T, dh, 0);
#ifdef _OPENMP
    /* one (batch, head) per iteration, taken in turn (a slower core takes
       fewer): disjoint outputs, so any thread count or order gives the same
       bits; small problems stay serial (a parallel region costs more than it
       saves). Each thread packs into its own workspace. */
#pragma omp parallel if ((double)B * H * T * T * dh >= MOEXC__ATT_PAR_MIN)
#endif
    {
        float *raw = ws_floats ? (float *)moexc__malloc(moexc__mul_size(ws_floats, sizeof(float))) : NULL;
        moexc__att_ws w;
        int bh;
        if (raw) moexc__att_ws_carve(&w, raw, T, dh);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (bh = 0; bh < B * H; bh++) {
            int b = bh / H, h = bh % H;
            size_t off = (size_t)b * T * d + (size_t)h * dh, o = (size_t)b * T * ld + (size_t)h * dh;
            float *P = att + (size_t)bh * T * T;
            if (raw) moexc__attention_forward_packed(y + off, P, q + o, k + o, v + o, ld, T, d, dh, scale, &w);
            else moexc__attention_forward_blocked(y + off, P, q + o, k + o, v + o, ld, T, d, dh, scale);
        }
        moexc__free(raw);
    }
}

/* One (batch, head) of the backward below, blocked. */
static void moexc__attention_backward_blocked(float *dq, float *dk, float *dv, float *dS, const float *dy,
                                              const float *P, const float *q, const float *k, const float *v,
                                              int ld, int T, int d, int dh, float scale)
{
    int r0;
    for (r0 = 0; r0 < T; r0 += MOEXC__ATT_BLOCK) {
        int r1 = MOEXC__MIN(T, r0 + MOEXC__ATT_BLOCK);
        /* dP (rows r0..r1-1, keys 0..r1-1) */
        moexc_sgemm(0, 1, r1 - r0, r1, dh, 1.0f, dy + (size_t)r0 * d, d, v, ld, 0.0f, dS + (size_t)r0 * T, T);
        /* zeros above the diagonal inside the block, the only ones the
           GEMMs below read */
        moexc__softmax_backward_causal_tile(dS + (size_t)r0 * T, P + (size_t)r0 * T, (size_t)T, (size_t)r0 + 1,
                                            r1 - r0, (size_t)r1, scale);
        /* dq = dS k  (rows r0..r1-1) */
        moexc_sgemm(0, 0, r1 - r0, dh, r1, 1.0f, dS + (size_t)r0 * T, T, k, ld, 0.0f, dq + (size_t)r0 * ld, ld);
    }
    for (r0 = 0; r0 < T; r0 += MOEXC__ATT_BLOCK) {
        int c1 = MOEXC__MIN(T, r0 + MOEXC__ATT_BLOCK);
        const float *Pc = P + (size_t)r0 * T + r0;
        const float *dSc = dS + (size_t)r0 * T + r0;
        /* dv = Pᵀ dy and dk = dSᵀ q (keys r0..c1-1, rows r0..T-1) */
        moexc_sgemm(1, 0, c1 - r0, dh, T - r0, 1.0f, Pc, T, dy + (size_t)r0 * d, d, 0.0f, dv + (size_t)r0 * ld, ld);
        moexc_sgemm(1, 0, c1 - r0, dh, T - r0, 1.0f, dSc, T, q + (size_t)r0 * ld, ld, 0.0f, dk + (size_t)r0 * ld, ld);
    }
}
/* One (batch, head) of the backward below, on packed panels. */
static void moexc__attention_backward_packed(float *dq, float *dk, float *dv, float *dS, const float *dy,
                                             const float *P, const float *q, const float *k, const float *v,
                                             int ld, int T, int d, int dh, float scale, const moexc__att_ws *w)
{
    int t0, j0;
    moexc__gemm_pack_a(w->pa, 0, dy, (size_t)d, 0, T, 0, dh);    /* dy in MR-row panels    */
    moexc__gemm_pack_b(w->pb, 1, v, (size_t)ld, 0, T, 0, dh);    /* vᵀ in NR-column panels */
    moexc__gemm_pack_b(w->pc, 0, k, (size_t)ld, 0, dh, 0, T);    /* k  in NR-column panels */
    for (t0 = 0; t0 < T; t0 += MOEXC__GEMM_MR) {
        const int mr = MOEXC__MIN(MOEXC__GEMM_MR, T - t0), keys = t0 + mr;
#if defined(__GNUC__) || defined(__clang__)
        {   /* P's rows of this tile come from memory (the forward wrote them
               long ago): ask for them now, the product below hides the wait */
            int pf, line;
            for (pf = t0; pf < keys; pf++)
                for (line = 0; line <= pf; line += 16) __builtin_prefetch(P + (size_t)pf * T + line, 0, 3);
        }
#endif
        /* dP = dy vᵀ: rows t0..t0+mr-1, the key panels that start before t0+mr */
        for (j0 = 0; j0 < keys; j0 += MOEXC__GEMM_NR)
            moexc__att_tile(dh, w->pa + (size_t)t0 * dh, w->pb + (size_t)j0 * dh, dS + (size_t)t0 * T + j0,
                            (size_t)T, mr, MOEXC__MIN(MOEXC__GEMM_NR, T - j0), 1.0f);
        /* dS, with zeros above the diagonal inside the tile: the only ones
           the products below read */
        moexc__softmax_backward_causal_tile(dS + (size_t)t0 * T, P + (size_t)t0 * T, (size_t)T, (size_t)t0 + 1, mr,
                                            (size_t)keys, scale);
        /* dq = dS k: rows t0..t0+mr-1 over keys 0..t0+mr-1 */
        moexc__att_rows_tile(keys, dS + (size_t)t0 * T, (size_t)T, w, w->pc, T, dq + (size_t)t0 * ld, (size_t)ld, mr, dh);
    }
    /* dv = Pᵀ dy and dk = dSᵀ q: keys c0..c0+mr-1 over queries c0..T-1 */
    moexc__gemm_pack_b(w->pc, 0, dy, (size_t)d, 0, dh, 0, T);    /* dy in NR-column panels */
    moexc__gemm_pack_b(w->pd, 0, q, (size_t)ld, 0, dh, 0, T);    /* q  in NR-column panels */
    for (t0 = 0; t0 < T; t0 += MOEXC__GEMM_MR) {
        const int mr = MOEXC__MIN(MOEXC__GEMM_MR, T - t0), rows = T - t0;
        /* the A panels Pᵀ and dSᵀ (keys t0.., queries t0..T-1) are MR
           contiguous floats of one row of P or dS per query: read in place
           (step T), but for a short last tile */
        const float *a_p = P + (size_t)t0 * T + t0, *a_ds = dS + (size_t)t0 * T + t0;
        size_t a_step = (size_t)T;
        if (mr < MOEXC__GEMM_MR) {
            moexc__gemm_pack_a(w->tile, 1, P, (size_t)T, t0, mr, t0, rows);
            a_p = w->tile;
            a_step = MOEXC__GEMM_MR;
        }
        for (j0 = 0; j0 < dh; j0 += MOEXC__GEMM_NR)
            moexc__att_tile_step(rows, a_p, a_step, w->pc + (size_t)j0 * T + (size_t)t0 * MOEXC__GEMM_NR,
                                 dv + (size_t)t0 * ld + j0, (size_t)ld, mr, MOEXC__MIN(MOEXC__GEMM_NR, dh - j0), 1.0f);
        if (mr < MOEXC__GEMM_MR) {
            moexc__gemm_pack_a(w->tile, 1, dS, (size_t)T, t0, mr, t0, rows);
            a_ds = w->tile;
        }
        for (j0 = 0; j0 < dh; j0 += MOEXC__GEMM_NR)
            moexc__att_tile_step(rows, a_ds, a_step, w->pd + (size_t)j0 * T + (size_t)t0 * MOEXC__GEMM_NR,
                                 dk + (size_t)t0 * ld + j0, (size_t)ld, mr, MOEXC__MIN(MOEXC__GEMM_NR, dh - j0), 1.0f);
    }
}

/* dy (B,T,d) -> dq, dk, dv (B,T,d) overwritten (w.r.t. the rotated q, k),
   rows ld floats apart like q, k, v;
   datt (B,H,T,T) is scratch for the blocked path (above the diagonal blocks
   it is not written); the packed path keeps dS in its own workspace.
     dP = dy vᵀ,  dv = Pᵀ dy,  dS = P ⊙ (dP − rowsum(P ⊙ dP)) / sqrt(dh),
     dq = dS k,   dk = dSᵀ q.
   dP, dS and dq go by causal tiles or blocks of rows (rows r0..r1-1 need
   keys 0..r1-1); dv and dk by tiles or blocks of keys (keys c0..c1-1 get
   gradient from rows c0..T-1 only). */
static void moexc__attention_backward_ld(float *dq, float *dk, float *dv, float *datt, const float *dy,
                                         const float *att, const float *q, const float *k, const float *v,
                                         int ld, int B, int T, int H, int dh)
{
    int d = H * dh;
    float scale = 1.0f / sqrtf((float)dh);
    size_t ws_floats = moexc__att_ws_floats(T, dh, 1);
#ifdef _OPENMP
#pragma omp parallel if ((double)B * H * T * T * dh >= MOEXC__ATT_PAR_MIN)
#endif
    {
        float *raw = ws_floats ? (float *)moexc__malloc(moexc__mul_size(ws_floats, sizeof(float))) : NULL;
        moexc__att_ws w;
        int bh;
        if (raw) moexc__att_ws_carve(&w, raw, T, dh);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (bh = 0; bh < B * H; bh++) {
            int b = bh / H, h = bh % H;
            size_t off = (size_t)b * T * d + (size_t)h * dh, o = (size_t)b * T * ld + (size_t)h * dh;
            const float *P = att + (size_t)bh * T * T;
            float *dS = datt + (size_t)bh * T * T;
            if (raw)
                moexc__attention_backward_packed(dq + o, dk + o, dv + o, w.scores, dy + off, P, q + o, k + o, v + o,
                                                 ld, T, d, dh, scale, &w);
            else
                moexc__attention_backward_blocked(dq + o, dk + o, dv + o, dS, dy + off, P, q + o, k + o, v + o,
                                                  ld, T, d, dh, scale);
        }
        moexc__free(raw);
    }
}

/* The two above on q, k, v, dq, dk, dv with rows of d = H·dh floats (the
   model keeps them in rows of 3d; tests/test_model.c calls these). */
static MOEXC__UNUSED_FN void moexc__attention_forward(float *y, float *att, const float *q, const float *k,
                                                      const float *v, int B, int T, int H, int dh)
{
    moexc__attention_forward_ld(y, att, q, k, v, H * dh, B, T, H, dh);
}
static MOEXC__UNUSED_FN void moexc__attention_backward(float *dq, float *dk, float *dv, float *datt,
                                                       const float *dy, const float *att, const float *q,
                                                       const float *k, const float *v, int B, int T, int H, int dh)
{
    moexc__attention_backward_ld(dq, dk, dv, datt, dy, att, q, k, v, H * dh, B, T, H, dh);
}

/* ---- SwiGLU feed-forward (the dense FFN and every expert) ---------------- */
/* The element-wise steps of the SwiGLU, on rows [first, end) of (M,h)
   arrays, run by the product before them on the rows it has just finished
   (moexc__gemm_then): forward act = silu(gate) ⊙ up after up = u W_upᵀ;
   backward dgate, dup from dact = dout W_down, dgate in dact's place. */
typedef struct moexc__swiglu_rows {
    float *act, *dgate, *dup;
    const float *gate, *up;
    size_t h;
} moexc__swiglu_rows;
static void moexc__swiglu_act_rows(const void *ctx, int first, int end)
{
    const moexc__swiglu_rows *r = (const moexc__swiglu_rows *)ctx;
    size_t o = (size_t)first * r->h;
    moexc__swiglu_act(r->act + o, r->gate + o, r->up + o, (size_t)(end - first) * r->h);
}
static void moexc__swiglu_act_backward_rows(const void *ctx, int first, int end)
{
    const moexc__swiglu_rows *r = (const moexc__swiglu_rows *)ctx;
    size_t o = (size_t)first * r->h;
    moexc__swiglu_act_backward(r->dgate + o, r->dup + o, r->dgate + o, r->gate + o, r->up + o,
                               (size_t)(end - first) * r->h);
}

/* u (M,d); w_gate, w_up (h,d); w_down (d,h).
   gate = u W_gateᵀ, up = u W_upᵀ, act = silu(gate) ⊙ up (all (M,h), kept);
   out (M,d) = act W_downᵀ (overwritten), then then_out (may be NULL) on its
   rows.  FFN(u) = W_down(silu(W_gate u) ⊙ W_up u). */
static void moexc__swiglu_forward(float *out, float *gate, float *up, float *act, const float *u,
                                  const float *w_gate, const float *w_up, const float *w_down,
                                  int M, int d, int h, const moexc__gemm_then *then_out)
{
    moexc__swiglu_rows rows;
    moexc__gemm_then then;
    if (M <= 0) return;
    rows.act = act; rows.dgate = rows.dup = NULL; rows.gate = gate; rows.up = up; rows.h = (size_t)h;
    then.rows = moexc__swiglu_act_rows; then.ctx = &rows;
    moexc_linear_forward(gate, u, w_gate, NULL, M, h, d);
    moexc__sgemm_then(0, 1, M, h, d, 1.0f, u, d, w_up, d, 0.0f, up, h, &then);     /* up, then act */
    moexc__sgemm_then(0, 1, M, d, h, 1.0f, act, h, w_down, h, 0.0f, out, d, then_out);
}
/* dout (M,d) -> du (M,d) (overwritten, or added when accumulate);
   dw_gate, dw_up (h,d), dw_down (d,h) accumulate; dgate, dup (M,h) scratch.
     dW_down += doutᵀ act,  dact = dout W_down (into dgate's place),
     dup = dact ⊙ silu(gate),  dgate = silu'(gate) ⊙ dact ⊙ up,
     dW_gate += dgateᵀ u,  dW_up += dupᵀ u,  du = dgate W_gate + dup W_up,
   then then_du (may be NULL) on du's rows; dout is not read by then. */
static void moexc__swiglu_backward(float *du, int accumulate, float *dw_gate, float *dw_up, float *dw_down,
                                   float *dgate, float *dup, const float *dout, const float *u,
                                   const float *gate, const float *up, const float *act,
                                   const float *w_gate, const float *w_up, const float *w_down,
                                   int M, int d, int h, const moexc__gemm_then *then_du)
{
    moexc__swiglu_rows rows;
    moexc__gemm_then then;
    if (M <= 0) return;
    rows.act = NULL; rows.dgate = dgate; rows.dup = dup; rows.gate = gate; rows.up = up; rows.h = (size_t)h;
    then.rows = moexc__swiglu_act_backward_rows; then.ctx = &rows;
    moexc_linear_backward_weight(dw_down, dout, act, M, d, h);
    moexc__sgemm_then(0, 0, M, h, d, 1.0f, dout, d, w_down, h, 0.0f, dgate, h, &then);   /* dact, then dgate, dup */
    moexc_linear_backward_weight(dw_gate, dgate, u, M, h, d);
    moexc_linear_backward_weight(dw_up, dup, u, M, h, d);
    moexc_linear_backward_input(du, dgate, w_gate, M, h, d, accumulate);
    moexc__sgemm_then(0, 0, M, d, h, 1.0f, dup, h, w_up, d, 1.0f, du, d, then_du);     /* du += dup W_up */
}

/* ---- Mixture-of-Experts feed-forward (dropless top-k routing) ------------ */
typedef struct moexc__moe_acts {
    float *logits, *probs;      /* (N,E)  z = u W_rᵀ, p = softmax(z)                 */
    float *lse;                 /* (N)    logsumexp z_t (router z-loss)              */
    int   *choice;              /* (N,k)  S(t), descending p, lowest index on ties   */
    float *weight;              /* (N,k)  gate w_ti                                  */
    int   *expert_offset;       /* (E+1)  assignments grouped by expert              */
    int   *expert_cursor;       /* (E)    scratch while grouping, then the experts   */
                                /*        by descending load (the schedule)          */
    int   *assign_token;        /* (N*k)  token of each grouped assignment           */
    int   *token_assign;        /* (N*k)  grouped assignment of (t, slot)            */
    float *xg;                  /* (N*k,d)   gathered inputs                         */
    float *gate, *up, *act;     /* (N*k,h_e) expert SwiGLU internals                 */
    float *eo;                  /* (N*k,d)   unweighted expert outputs               */
    float *frac;                /* (E)  f_i = (1/(kN)) Σ_t 1{i ∈ S(t)}               */
    float *pmean;               /* (E)  P_i = (1/N) Σ_t p_ti                         */
    double lb, z;               /* this layer's L_lb and L_z (weights included)      */
} moexc__moe_acts;

typedef struct moexc__moe_scratch {
    float *d_eo, *d_xg;                 /* (N*k,d)   */
    float *d_gate, *d_up;               /* (N*k,h_e) */
    float *dp, *dz;                     /* (N,E)     */
    float *dw;                          /* (N,k)     */
} moexc__moe_scratch;

/* The hyper-parameters a MoE layer needs. */
typedef struct moexc__moe_dims {
    int d, E, k, h;
    int renorm;        /* 1: w = p / Σ_S p;  0: w = p                   */
    float lb_alpha;    /* α of the Switch loss (0 = off)                */
    float z_weight;    /* weight of the router z-loss (0 = off)         */
} moexc__moe_dims;

/* u (N,d) -> out (N,d) (overwritten).
   w_router (E,d); w_gate, w_up (E,h,d); w_down (E,d,h).
     z = u W_rᵀ,  p = softmax(z),  S(t) = the k largest p (lowest index wins ties),
     out_t = Σ_{i∈S(t)} w_ti Expert_i(u_t),  w = p (raw) or p / Σ_{j∈S} p_j (renorm).
   Tokens are grouped by expert (gather), each expert runs one SwiGLU over
   its tokens, outputs are combined per token in slot order (deterministic).
   Also fills the Switch loss L_lb = α E Σ_i f_i P_i and L_z = w_z mean_t lse_t². */
static void moexc__moe_forward(float *out, moexc__moe_acts *a, const float *u, const float *w_router,
                               const float *w_gate, const float *w_up, const float *w_down,
                               int N, const moexc__moe_dims *md)
{
    int d = md->d, E = md->E, k = md->k, h = md->h;
    int t, s, i, e, par = (double)N * (E + d) >= MOEXC__PAR_MIN;
    double lb = 0.0, zsum = 0.0;

    (void)par;
    moexc_linear_forward(a->logits, u, w_router, NULL, N, E, d);
    /* per token: p = softmax(z), top-k, gates, lse */
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (par)
#endif
    for (t = 0; t < N; t++) {
        const float *z = a->logits + (size_t)t * E;
        float *p = a->probs + (size_t)t * E;
        int *ch = a->choice + (size_t)t * k;
        float *w = a->weight + (size_t)t * k;
        double zmax = z[0], zs = 0.0, psum = 0.0;
        int r, j, prev;
        moexc_softmax_rows(p, z, 1, E);
        /* top-k by repeated arg-max; the strict '>' keeps the lowest index on ties */
        for (r = 0; r < k; r++) {
            int best = -1;
            for (j = 0; j < E; j++) {
                int taken = 0;
                for (prev = 0; prev < r; prev++) taken |= ch[prev] == j;
                if (!taken && (best < 0 || p[j] > p[best])) best = j;
            }
            ch[r] = best;
            w[r] = p[best];
            psum += p[best];
        }
        if (md->renorm)
            for (r = 0; r < k; r++) w[r] = (float)(w[r] / psum);
        /* lse_t = max z + log Σ exp(z − max z) */
        for (j = 1; j < E; j++) if (z[j] > zmax) zmax = z[j];
        for (j = 0; j < E; j++) zs += exp((double)z[j] - zmax);
        a->lse[t] = (float)(zmax + log(zs));
    }
    for (t = 0; t < N; t++) zsum += (double)a->lse[t] * a->lse[t];
    /* group the N*k assignments by expert, tokens ascending within an expert */
    for (i = 0; i <= E; i++) a->expert_offset[i] = 0;
    for (s = 0; s < N * k; s++) a->expert_offset[a->choice[s] + 1]++;
    for (e = 0; e < E; e++) a->expert_offset[e + 1] += a->expert_offset[e];
    for (e = 0; e < E; e++) a->expert_cursor[e] = a->expert_offset[e];
    for (t = 0; t < N; t++)
        for (s = 0; s < k; s++) {
            int slot = a->expert_cursor[a->choice[(size_t)t * k + s]]++;
            a->assign_token[slot] = t;
            a->token_assign[(size_t)t * k + s] = slot;
        }
    /* the schedule: experts by descending load (lowest index first on
       ties), so that the dynamic schedule below hands out the big ones first */
    for (i = 0; i < E; i++) {
        int load = a->expert_offset[i + 1] - a->expert_offset[i], j = i;
        for (; j > 0; j--) {
            int prev = a->expert_cursor[j - 1];
            if (a->expert_offset[prev + 1] - a->expert_offset[prev] >= load) break;
            a->expert_cursor[j] = prev;
        }
        a->expert_cursor[j] = i;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (par)
#endif
    for (s = 0; s < N * k; s++)
        memcpy(a->xg + (size_t)s * d, u + (size_t)a->assign_token[s] * d, (size_t)d * sizeof(float));
    /* the experts side by side, one thread each (their GEMMs then run on one
       thread, and a GEMM's bits do not depend on that), biggest first */
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) if (par && E > 1)
#endif
    for (i = 0; i < E; i++) {
        int e = a->expert_cursor[i], o = a->expert_offset[e], n_e = a->expert_offset[e + 1] - o;
        moexc__swiglu_forward(a->eo + (size_t)o * d, a->gate + (size_t)o * h, a->up + (size_t)o * h,
                              a->act + (size_t)o * h, a->xg + (size_t)o * d,
                              w_gate + (size_t)e * h * d, w_up + (size_t)e * h * d, w_down + (size_t)e * d * h,
                              n_e, d, h, NULL);
    }
    /* scatter-add: out_t = Σ_s w_ts eo[(t, s)] */
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (par)
#endif
    for (t = 0; t < N; t++) {
        float *ot = out + (size_t)t * d;
        int r;
        memset(ot, 0, (size_t)d * sizeof(float));
        for (r = 0; r < k; r++)
            moexc_axpy(ot, a->weight[(size_t)t * k + r], a->eo + (size_t)a->token_assign[(size_t)t * k + r] * d,
                       (size_t)d);
    }
    /* Switch load balancing: f_i = count_i / (kN) (a constant), P_i = mean_t p_ti */
    for (i = 0; i < E; i++) {
        double pm = 0.0;
        for (t = 0; t < N; t++) pm += a->probs[(size_t)t * E + i];
        a->pmean[i] = (float)(pm / N);
        a->frac[i] = (float)((double)(a->expert_offset[i + 1] - a->expert_offset[i]) / ((double)k * N));
        lb += (double)a->frac[i] * pm / N;
    }
    a->lb = md->lb_alpha > 0.0f ? md->lb_alpha * (double)E * lb : 0.0;
    a->z = md->z_weight > 0.0f ? md->z_weight * zsum / N : 0.0;
}

/* dout (N,d) -> du (N,d) (added); gradients of W_r (E,d), W_gate, W_up
   (E,h,d), W_down (E,d,h) accumulate.
     dw_ts = dout_t · Expert_i(u_t),   d Expert_i(u_t) = w_ts dout_t,
     raw:    dp_ti += dw_ti                         (i ∈ S(t))
     renorm: dp_tj += (dw_tj − Σ_{i∈S} dw_ti w_ti) / Σ_{i∈S} p_ti   (j ∈ S(t))
     Switch: dp_ti += α E f_i / N                   (all i, f constant)
     softmax: dz_t = p_t ⊙ (dp_t − p_t·dp_t)
     z-loss: dz_t += w_z · 2 lse_t / N · p_t        (∂lse/∂z = p)
     dW_r += dzᵀ u,  du += dz W_r + scatter of the experts' input gradients. */
static void moexc__moe_backward(float *du, float *dw_router, float *dw_gate, float *dw_up, float *dw_down,
                                const moexc__moe_scratch *sc, const moexc__moe_acts *a,
                                const float *dout, const float *u, const float *w_router,
                                const float *w_gate, const float *w_up, const float *w_down,
                                int N, const moexc__moe_dims *md)
{
    int d = md->d, E = md->E, k = md->k, h = md->h;
    int t, i, par = (double)N * (E + d) >= MOEXC__PAR_MIN;
    (void)par;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (par)
#endif
    for (t = 0; t < N; t++) {
        const float *dot_ = dout + (size_t)t * d;
        int r;
        for (r = 0; r < k; r++) {
            size_t ts = (size_t)t * k + r, slot = (size_t)a->token_assign[ts];
            float *deo = sc->d_eo + slot * d;
            sc->dw[ts] = moexc_dot(dot_, a->eo + slot * d, (size_t)d);
            memcpy(deo, dot_, (size_t)d * sizeof(float));
            moexc_scale(deo, a->weight[ts], (size_t)d);
        }
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) if (par && E > 1)
#endif
    for (i = 0; i < E; i++) {   /* the forward's schedule, biggest expert first */
        int e = a->expert_cursor[i], o = a->expert_offset[e], n_e = a->expert_offset[e + 1] - o;
        moexc__swiglu_backward(sc->d_xg + (size_t)o * d, 0,
                               dw_gate + (size_t)e * h * d, dw_up + (size_t)e * h * d, dw_down + (size_t)e * d * h,
                               sc->d_gate + (size_t)o * h, sc->d_up + (size_t)o * h,
                               sc->d_eo + (size_t)o * d, a->xg + (size_t)o * d,
                               a->gate + (size_t)o * h, a->up + (size_t)o * h, a->act + (size_t)o * h,
                               w_gate + (size_t)e * h * d, w_up + (size_t)e * h * d, w_down + (size_t)e * d * h,
                               n_e, d, h, NULL);
    }
    /* gather of the experts' input gradients, then the router:
       gate gradient -> dp -> softmax -> dz; per token */
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (par)
#endif
    for (t = 0; t < N; t++) {
        const float *p = a->probs + (size_t)t * E, *w = a->weight + (size_t)t * k, *dw = sc->dw + (size_t)t * k;
        const int *ch = a->choice + (size_t)t * k;
        float *dp = sc->dp + (size_t)t * E, *dz = sc->dz + (size_t)t * E;
        int r, i;
        for (r = 0; r < k; r++)
            moexc_axpy(du + (size_t)t * d, 1.0f, sc->d_xg + (size_t)a->token_assign[(size_t)t * k + r] * d,
                       (size_t)d);
        for (i = 0; i < E; i++)
            dp[i] = md->lb_alpha > 0.0f ? md->lb_alpha * (float)E * a->frac[i] / (float)N : 0.0f;
        if (md->renorm) {
            double psum = 0.0, c = 0.0;
            for (r = 0; r < k; r++) { psum += p[ch[r]]; c += (double)dw[r] * w[r]; }
            for (r = 0; r < k; r++) dp[ch[r]] += (float)((dw[r] - c) / psum);
        } else {
            for (r = 0; r < k; r++) dp[ch[r]] += dw[r];
        }
        moexc__softmax_backward(dz, p, dp, (size_t)E, 1.0f);
        if (md->z_weight > 0.0f)
            for (i = 0; i < E; i++) dz[i] += md->z_weight * 2.0f * a->lse[t] / (float)N * p[i];
    }
    moexc_linear_backward_weight(dw_router, sc->dz, u, N, E, d);
    moexc_linear_backward_input(du, sc->dz, w_router, N, E, d, 1);
}

/* ---- cross-entropy ------------------------------------------------------- */
/* logits (N,V), targets (N): loss = mean_t (lse_t − z_{t,y_t}),
   lse_t = max z_t + log Σ exp(z_t − max z_t), kept in lse (N). Returns the
   loss; dlogits (N,V) serves as scratch here. */
static double moexc__crossentropy_forward(float *lse, float *scratch, const float *logits, const uint16_t *targets,
                                          int N, int V)
{
    double total = 0.0;
    int t;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if ((double)N * V >= MOEXC__PAR_MIN)
#endif
    for (t = 0; t < N; t++) {
        const float *z = logits + (size_t)t * V;
        float *e = scratch + (size_t)t * V;
        float m = moexc_max(z, (size_t)V);
        int j;
        for (j = 0; j < V; j++) e[j] = z[j] - m;
        moexc_exp(e, e, (size_t)V);
        lse[t] = m + (float)log((double)moexc_sum(e, (size_t)V));
    }
    for (t = 0; t < N; t++) total += (double)lse[t] - logits[(size_t)t * V + targets[t]];
    return total / N;
}
/* dlogits (N,V) overwritten = (softmax(z) − onehot(y)) / N, softmax = exp(z − lse) */
static void moexc__crossentropy_backward(float *dlogits, const float *logits, const float *lse,
                                         const uint16_t *targets, int N, int V)
{
    int t;
    float inv_n = 1.0f / (float)N;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if ((double)N * V >= MOEXC__PAR_MIN)
#endif
    for (t = 0; t < N; t++) {
        const float *z = logits + (size_t)t * V;
        float *g = dlogits + (size_t)t * V;
        int j;
        for (j = 0; j < V; j++) g[j] = z[j] - lse[t];
        moexc_exp(g, g, (size_t)V);
        g[targets[t]] -= 1.0f;
        moexc_scale(g, inv_n, (size_t)V);
    }
}

/* ======================================================================== */
/* >>model: dense and MoE transformers, parameter layout                    */
/* ======================================================================== */

#define MOEXC__NAME_MAX 64

/* Named views into the flat parameter (or gradient) array. */
typedef struct moexc__layer_weights {
    float *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm;   /* (d), (d,d) x4, (d) */
    float *router;                                     /* MoE (E,d)          */
    float *w_gate, *w_up, *w_down;   /* dense (h,d),(h,d),(d,h); MoE (E,h_e,d),(E,h_e,d),(E,d,h_e) */
} moexc__layer_weights;

typedef struct moexc__weights {
    float *tok_emb;                  /* (V,d)                                   */
    moexc__layer_weights *layer;     /* L                                        */
    float *norm;                     /* (d)                                      */
    float *lm_head;                  /* (V,d); == tok_emb when tied              */
} moexc__weights;

/* Per-layer activations kept from forward for backward. */
typedef struct moexc__layer_acts {
    float *x;                        /* (N,d) residual entering the block         */
    float *attn_in, *attn_rms;       /* (N,d) RMSNorm(x), (N) its 1/rms          */
    float *q, *k, *v;                /* (N,d) each, rows 3d apart (one (N,3d) block:
                                        q | k | v); q, k rotated                  */
    float *att;                      /* (B,H,T,T) attention probabilities         */
    float *att_y;                    /* (N,d) heads before W_o                    */
    float *h;                        /* (N,d) x + Attn(RMSNorm(x))                */
    float *ffn_in, *ffn_rms;         /* (N,d) RMSNorm(h), (N)                     */
    float *ffn_out;                  /* (N,d) FFN or MoE output                   */
    float *gate, *up, *act;          /* dense (N,h_ff)                            */
    moexc__moe_acts moe;             /* MoE                                       */
} moexc__layer_acts;

struct moexc_model {
    moexc_model_config cfg;          /* resolved                                  */
    int n_tensors;
    moexc_param_info *info;          /* n_tensors                                 */
    char *names;                     /* n_tensors * MOEXC__NAME_MAX               */
    size_t n_params;
    float *params, *grads;           /* one allocation each, same layout          */
    moexc__weights w, g;             /* views into params and grads               */
    moexc__layer_weights *layer_views; /* 2L: w.layer then g.layer               */
    float *rope_cos, *rope_sin;      /* (context, dh/2)                           */
    /* activations, sized for (cap_B, cap_T) */
    int cap_B, cap_T;
    int cap_k;                       /* experts per token the MoE buffers hold    */
    float *fmem;
    int *imem;
    uint16_t *tokens, *targets;      /* (N) copies of the last forward's inputs   */
    moexc__layer_acts *acts;         /* L                                          */
    float *x_final;                  /* (N,d) residual after the last block        */
    float *xf, *xf_rms;              /* (N,d) final RMSNorm, (N)                   */
    float *logits, *lse;             /* (N,V), (N)                                 */
    /* backward scratch */
    float *dx, *dnorm, *dq, *dk, *dv, *datt_y, *datt, *dlogits;   /* dq, dk, dv: rows 3d apart, as q, k, v */
    float *dff_gate, *dff_up;             /* dense (N,h_ff)                      */
    moexc__moe_scratch moe_sc;
    /* state of the last forward */
    int B, T, layers_done, has_targets, backward_ready;
    int active_k;                    /* experts per token if overridden (0: cfg.top_k) */
    moexc_loss_stats stats;
    /* moexc_model_forward_replace: overwrite this site's output, then go on */
    const float *replace;            /* (N,d) or NULL                              */
    int replace_layer, replace_site;
};

/* ---- configuration -------------------------------------------------------- */
static moexc_status moexc__config_resolve(moexc_model_config *c, const moexc_model_config *in, moexc_error *err)
{
    *c = *in;
    if (!c->vocab_size) c->vocab_size = 256;
    if (!c->d_model) c->d_model = 128;
    if (!c->n_heads) c->n_heads = 4;
    if (!c->n_layers) c->n_layers = 5;
    if (!c->context) c->context = 256;
    if (!c->d_ff) c->d_ff = 4 * c->d_model;
    if (!c->n_experts) c->n_experts = 8;
    if (!c->top_k) c->top_k = 2;
    if (!c->d_expert) c->d_expert = 2 * c->d_model;
    if (c->lb_alpha == 0.0f) c->lb_alpha = 0.01f;
    if (c->init_std == 0.0f) c->init_std = 0.02f;

    if (c->vocab_size < 1 || c->vocab_size > 65536)
        return moexc__fail(err, MOEXC_ERR_ARG, "model config: vocab_size %d not in [1, 65536]", c->vocab_size);
    if (c->d_model < 1 || c->n_heads < 1 || c->n_layers < 1 || c->context < 1)
        return moexc__fail(err, MOEXC_ERR_ARG, "model config: d_model %d, n_heads %d, n_layers %d, context %d must be positive",
                           c->d_model, c->n_heads, c->n_layers, c->context);
    if (c->d_model % c->n_heads)
        return moexc__fail(err, MOEXC_ERR_ARG, "model config: d_model %d is not divisible by n_heads %d", c->d_model, c->n_heads);
    if ((c->d_model / c->n_heads) % 2)
        return moexc__fail(err, MOEXC_ERR_ARG, "model config: head width d_model/n_heads = %d must be even (RoPE pairs dims)",
                           c->d_model / c->n_heads);
    if (c->ffn != MOEXC_FFN_DENSE && c->ffn != MOEXC_FFN_MOE)
        return moexc__fail(err, MOEXC_ERR_ARG, "model config: ffn %d is neither MOEXC_FFN_DENSE nor MOEXC_FFN_MOE", c->ffn);
    if (c->gate != MOEXC_GATE_RAW && c->gate != MOEXC_GATE_RENORM)
        return moexc__fail(err, MOEXC_ERR_ARG, "model config: gate %d is neither MOEXC_GATE_RAW nor MOEXC_GATE_RENORM", c->gate);
    if (c->d_ff < 1 || c->d_expert < 1 || c->n_experts < 1)
        return moexc__fail(err, MOEXC_ERR_ARG, "model config: d_ff %d, d_expert %d, n_experts %d must be positive",
                           c->d_ff, c->d_expert, c->n_experts);
    if (c->top_k < 1 || c->top_k > c->n_experts)
        return moexc__fail(err, MOEXC_ERR_ARG, "model config: top_k %d not in [1, n_experts = %d]", c->top_k, c->n_experts);
    if (c->ffn == MOEXC_FFN_MOE && c->gate == MOEXC_GATE_RENORM && c->top_k == 1)
        return moexc__fail(err, MOEXC_ERR_ARG, "model config: the renormalised gate with top_k = 1 is identically 1, "
                           "so the router would get no gradient from the task loss; use MOEXC_GATE_RAW or top_k >= 2");
    if (!(c->z_loss >= 0.0f) || !(c->init_std > 0.0f) || !(c->lb_alpha == c->lb_alpha))
        return moexc__fail(err, MOEXC_ERR_ARG, "model config: z_loss %g must be >= 0 and init_std %g > 0",
                           (double)c->z_loss, (double)c->init_std);
    if (c->tied_head != 0 && c->tied_head != 1)
        return moexc__fail(err, MOEXC_ERR_ARG, "model config: tied_head %d must be 0 or 1", c->tied_head);
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_model_config_resolve(moexc_model_config *out, const moexc_model_config *cfg, moexc_error *err)
{
    moexc_model_config zero, tmp;
    moexc_status st;
    memset(&zero, 0, sizeof(zero));
    st = moexc__config_resolve(&tmp, cfg ? cfg : &zero, err);
    if (st == MOEXC_OK && out) *out = tmp;
    return st;
}

MOEXC_DEF moexc_status moexc_model_config_pair(const moexc_model_config *base, moexc_model_config *dense,
                                               moexc_model_config *moe, moexc_error *err)
{
    moexc_model_config b, dc, mc;
    moexc_status st = moexc_model_config_resolve(&b, base, err);
    if (st) return st;
    dc = b;
    dc.ffn = MOEXC_FFN_DENSE;
    mc = b;
    mc.ffn = MOEXC_FFN_MOE;
    if (!base || !base->n_experts) mc.n_experts = 8;
    if (!base || !base->top_k) mc.top_k = 2;
    /* equal active parameters: k h_e = h_ff(dense) */
    if (dc.d_ff % mc.top_k)
        return moexc__fail(err, MOEXC_ERR_ARG, "model pair: dense d_ff %d is not divisible by top_k %d", dc.d_ff, mc.top_k);
    mc.d_expert = dc.d_ff / mc.top_k;
    if ((st = moexc_model_config_resolve(&dc, &dc, err)) != MOEXC_OK) return st;
    if ((st = moexc_model_config_resolve(&mc, &mc, err)) != MOEXC_OK) return st;
    if (dense) *dense = dc;
    if (moe) *moe = mc;
    return MOEXC_OK;
}

/* Parameters of one FFN block: dense 3 h_ff d; MoE E d (router) + E 3 h_e d. */
static void moexc__count_params(const moexc_model_config *c, size_t *total, size_t *active)
{
    size_t d = (size_t)c->d_model, V = (size_t)c->vocab_size, L = (size_t)c->n_layers;
    size_t common = V * d + d + (c->tied_head ? 0 : V * d) + L * (2 * d + 4 * d * d);
    size_t ffn_total, ffn_active;
    if (c->ffn == MOEXC_FFN_MOE) {
        size_t expert = 3 * (size_t)c->d_expert * d;
        ffn_total = (size_t)c->n_experts * d + (size_t)c->n_experts * expert;
        ffn_active = (size_t)c->n_experts * d + (size_t)c->top_k * expert;
    } else {
        ffn_total = ffn_active = 3 * (size_t)c->d_ff * d;
    }
    if (total) *total = common + L * ffn_total;
    if (active) *active = common + L * ffn_active;
}

MOEXC_DEF moexc_status moexc_model_count_params(const moexc_model_config *cfg, size_t *total, size_t *active,
                                                moexc_error *err)
{
    moexc_model_config c;
    moexc_status st = moexc_model_config_resolve(&c, cfg, err);
    if (st) return st;
    moexc__count_params(&c, total, active);
    return MOEXC_OK;
}

/* ---- parameter layout ---------------------------------------------------- */
static void moexc__add_tensor(moexc_model *m, int *n, size_t *offset, float **pview, float **gview,
                              const char *name, int ndim, int64_t s0, int64_t s1, int64_t s2, int decay)
{
    if (m->info) {
        moexc_param_info *pi = &m->info[*n];
        char *dst = m->names + (size_t)*n * MOEXC__NAME_MAX;
        size_t i, size = 1;
        int64_t shape[3];
        shape[0] = s0; shape[1] = s1; shape[2] = s2;
        memset(pi, 0, sizeof(*pi));
        strncpy(dst, name, MOEXC__NAME_MAX - 1);
        dst[MOEXC__NAME_MAX - 1] = '\0';
        pi->name = dst;
        pi->offset = *offset;
        pi->ndim = ndim;
        for (i = 0; i < (size_t)ndim; i++) { pi->shape[i] = shape[i]; size *= (size_t)shape[i]; }
        pi->size = size;
        pi->decay = decay;
        if (m->params) { *pview = m->params + *offset; *gview = m->grads + *offset; }
        *offset += size;
    }
    (*n)++;
}

/* Walks the tensors in their fixed order. With m->info == NULL only counts
   them; with info set fills names, offsets and shapes (and sizes the total);
   with params/grads set also points the named views into them. */
static size_t moexc__layout(moexc_model *m)
{
    const moexc_model_config *c = &m->cfg;
    int64_t V = c->vocab_size, d = c->d_model, E = c->n_experts, he = c->d_expert, hf = c->d_ff;
    int n = 0, l;
    size_t off = 0;
    char name[MOEXC__NAME_MAX];
    moexc__add_tensor(m, &n, &off, &m->w.tok_emb, &m->g.tok_emb, "tok_emb.weight", 2, V, d, 0, 1);
    for (l = 0; l < c->n_layers; l++) {
        moexc__layer_weights *w = &m->w.layer[l], *g = &m->g.layer[l];
#define MOEXC__T(field, suffix, ndim, s0, s1, s2, decay) do {                            \
            snprintf(name, sizeof(name), "layers.%d.%s", l, suffix);                    \
            moexc__add_tensor(m, &n, &off, &w->field, &g->field, name, ndim, s0, s1, s2, decay); \
        } while (0)
        MOEXC__T(attn_norm, "attn_norm.weight", 1, d, 0, 0, 0);
        MOEXC__T(wq, "attn.wq.weight", 2, d, d, 0, 1);    /* wq, wk, wv adjacent: the forward */
        MOEXC__T(wk, "attn.wk.weight", 2, d, d, 0, 1);    /* and backward use them as one    */
        MOEXC__T(wv, "attn.wv.weight", 2, d, d, 0, 1);    /* (3d, d) matrix                   */
        MOEXC__T(wo, "attn.wo.weight", 2, d, d, 0, 1);
        MOEXC__T(ffn_norm, "ffn_norm.weight", 1, d, 0, 0, 0);
        if (c->ffn == MOEXC_FFN_MOE) {
            MOEXC__T(router, "moe.router.weight", 2, E, d, 0, 1);
            MOEXC__T(w_gate, "moe.experts.w_gate", 3, E, he, d, 1);
            MOEXC__T(w_up, "moe.experts.w_up", 3, E, he, d, 1);
            MOEXC__T(w_down, "moe.experts.w_down", 3, E, d, he, 1);
        } else {
            MOEXC__T(w_gate, "ffn.w_gate.weight", 2, hf, d, 0, 1);
            MOEXC__T(w_up, "ffn.w_up.weight", 2, hf, d, 0, 1);
            MOEXC__T(w_down, "ffn.w_down.weight", 2, d, hf, 0, 1);
        }
#undef MOEXC__T
    }
    moexc__add_tensor(m, &n, &off, &m->w.norm, &m->g.norm, "norm.weight", 1, d, 0, 0, 0);
    if (c->tied_head) {
        m->w.lm_head = m->w.tok_emb;
        m->g.lm_head = m->g.tok_emb;
    } else {
        moexc__add_tensor(m, &n, &off, &m->w.lm_head, &m->g.lm_head, "lm_head.weight", 2, V, d, 0, 1);
    }
    m->n_tensors = n;
    return off;
}

/* SPEC init: N(0, std) for matrices, std/sqrt(2L) for the residual output
   projections (attention out, FFN down), gains 1. */
static void moexc__init_params(moexc_model *m)
{
    moexc_rng rng;
    int i;
    float out_std = m->cfg.init_std / sqrtf(2.0f * (float)m->cfg.n_layers);
    moexc_rng_seed(&rng, m->cfg.seed);
    for (i = 0; i < m->n_tensors; i++) {
        const moexc_param_info *pi = &m->info[i];
        float *p = m->params + pi->offset;
        size_t j;
        size_t len = strlen(pi->name);
        int residual_out = (len > 14 && strcmp(pi->name + len - 14, "attn.wo.weight") == 0) ||
                           strstr(pi->name, "w_down") != NULL;
        float std = residual_out ? out_std : m->cfg.init_std;
        if (pi->ndim == 1) {
            for (j = 0; j < pi->size; j++) p[j] = 1.0f;
        } else {
            for (j = 0; j < pi->size; j++) p[j] = std * moexc_rng_normal(&rng);
        }
    }
}

/* ---- activation memory ----------------------------------------------------- */
/* Carves every activation and scratch array for (B, T) out of fbase / ibase;
   with NULL bases it only counts (floats and ints), so the memory report and
   the allocator share one definition. Each array starts 64-byte aligned. */
static float *moexc__carve(float *base, size_t *cursor, size_t n)
{
    float *p = base ? base + *cursor : NULL;
    *cursor += (n + 15) & ~(size_t)15;
    return p;
}
static int *moexc__carve_int(int *base, size_t *cursor, size_t n)
{
    int *p = base ? base + *cursor : NULL;
    *cursor += n;
    return p;
}
static void moexc__carve_acts(const moexc_model_config *c, int B, int T, float *fb, int *ib,
                              moexc__layer_acts *acts, moexc_model *m, size_t *nf, size_t *ni)
{
    size_t N = (size_t)B * T, d = (size_t)c->d_model, V = (size_t)c->vocab_size;
    size_t H = (size_t)c->n_heads, E = (size_t)c->n_experts, k = (size_t)c->top_k;
    size_t he = (size_t)c->d_expert, hf = (size_t)c->d_ff, att = (size_t)B * H * T * T;
    size_t fc = 0, ic = 0;
    int l, moe = c->ffn == MOEXC_FFN_MOE;
    moexc__layer_acts dummy;
    for (l = 0; l < c->n_layers; l++) {
        moexc__layer_acts *a = acts ? &acts[l] : &dummy;
        a->x = moexc__carve(fb, &fc, N * d);
        a->attn_in = moexc__carve(fb, &fc, N * d);
        a->attn_rms = moexc__carve(fb, &fc, N);
        a->q = moexc__carve(fb, &fc, N * 3 * d);      /* q, k, v side by side in rows of 3d */
        a->k = a->q ? a->q + d : NULL;
        a->v = a->q ? a->q + 2 * d : NULL;
        a->att = moexc__carve(fb, &fc, att);
        a->att_y = moexc__carve(fb, &fc, N * d);
        a->h = moexc__carve(fb, &fc, N * d);
        a->ffn_in = moexc__carve(fb, &fc, N * d);
        a->ffn_rms = moexc__carve(fb, &fc, N);
        a->ffn_out = moexc__carve(fb, &fc, N * d);
        if (moe) {
            moexc__moe_acts *ma = &a->moe;
            ma->logits = moexc__carve(fb, &fc, N * E);
            ma->probs = moexc__carve(fb, &fc, N * E);
            ma->lse = moexc__carve(fb, &fc, N);
            ma->weight = moexc__carve(fb, &fc, N * k);
            ma->xg = moexc__carve(fb, &fc, N * k * d);
            ma->gate = moexc__carve(fb, &fc, N * k * he);
            ma->up = moexc__carve(fb, &fc, N * k * he);
            ma->act = moexc__carve(fb, &fc, N * k * he);
            ma->eo = moexc__carve(fb, &fc, N * k * d);
            ma->frac = moexc__carve(fb, &fc, E);
            ma->pmean = moexc__carve(fb, &fc, E);
            ma->choice = moexc__carve_int(ib, &ic, N * k);
            ma->expert_offset = moexc__carve_int(ib, &ic, E + 1);
            ma->expert_cursor = moexc__carve_int(ib, &ic, E);
            ma->assign_token = moexc__carve_int(ib, &ic, N * k);
            ma->token_assign = moexc__carve_int(ib, &ic, N * k);
        } else {
            a->gate = moexc__carve(fb, &fc, N * hf);
            a->up = moexc__carve(fb, &fc, N * hf);
            a->act = moexc__carve(fb, &fc, N * hf);
        }
    }
    {
        moexc_model mm;
        moexc_model *t = m ? m : &mm;
        /* the token copies (uint16, two per int) */
        t->tokens = (uint16_t *)(void *)moexc__carve_int(ib, &ic, (N + 1) / 2);
        t->targets = (uint16_t *)(void *)moexc__carve_int(ib, &ic, (N + 1) / 2);
        t->x_final = moexc__carve(fb, &fc, N * d);
        t->xf = moexc__carve(fb, &fc, N * d);
        t->xf_rms = moexc__carve(fb, &fc, N);
        t->logits = moexc__carve(fb, &fc, N * V);
        t->lse = moexc__carve(fb, &fc, N);
        /* backward scratch, shared by all layers */
        t->dx = moexc__carve(fb, &fc, N * d);
        t->dnorm = moexc__carve(fb, &fc, N * d);
        t->dq = moexc__carve(fb, &fc, N * 3 * d);      /* dq, dk, dv in rows of 3d */
        t->dk = t->dq ? t->dq + d : NULL;
        t->dv = t->dq ? t->dq + 2 * d : NULL;
        t->datt_y = moexc__carve(fb, &fc, N * d);
        t->datt = moexc__carve(fb, &fc, att);
        t->dlogits = moexc__carve(fb, &fc, N * V);
        if (moe) {
            t->moe_sc.d_eo = moexc__carve(fb, &fc, N * k * d);
            t->moe_sc.d_xg = moexc__carve(fb, &fc, N * k * d);
            t->moe_sc.d_gate = moexc__carve(fb, &fc, N * k * he);
            t->moe_sc.d_up = moexc__carve(fb, &fc, N * k * he);
            t->moe_sc.dp = moexc__carve(fb, &fc, N * E);
            t->moe_sc.dz = moexc__carve(fb, &fc, N * E);
            t->moe_sc.dw = moexc__carve(fb, &fc, N * k);
        } else {
            t->dff_gate = moexc__carve(fb, &fc, N * hf);
            t->dff_up = moexc__carve(fb, &fc, N * hf);
        }
    }
    *nf = fc;
    *ni = ic;
}

MOEXC_DEF moexc_status moexc_model_memory(const moexc_model_config *cfg, int B, int T, moexc_model_memory_info *out,
                                          moexc_error *err)
{
    moexc_model_config c;
    size_t total, nf, ni;
    moexc_status st = moexc_model_config_resolve(&c, cfg, err);
    if (st) return st;
    if (B < 1 || T < 1 || T > c.context)
        return moexc__fail(err, MOEXC_ERR_ARG, "model memory: B %d, T %d (context %d) out of range", B, T, c.context);
    moexc__count_params(&c, &total, NULL);
    moexc__carve_acts(&c, B, T, NULL, NULL, NULL, NULL, &nf, &ni);
    if (out) {
        memset(out, 0, sizeof(*out));
        out->param_bytes = total * sizeof(float);
        out->grad_bytes = total * sizeof(float);
        out->activation_bytes = nf * sizeof(float) + ni * sizeof(int);
        out->total_bytes = out->param_bytes + out->grad_bytes + out->activation_bytes;
    }
    return MOEXC_OK;
}

static void moexc__free_acts(moexc_model *m)
{
    moexc__free_aligned(m->fmem);
    moexc__free(m->imem);
    m->fmem = NULL;
    m->imem = NULL;
    m->tokens = m->targets = NULL;
    m->cap_B = m->cap_T = 0;
    m->cap_k = 0;
    m->layers_done = 0;
    m->backward_ready = 0;
}

/* Grow the activation buffers to hold (B, T); keeps them when big enough. */
static moexc_status moexc__ensure_acts(moexc_model *m, int B, int T, moexc_error *err)
{
    size_t nf, ni;
    int nb = MOEXC__MAX(B, m->cap_B), nt = MOEXC__MAX(T, m->cap_T);
    moexc_model_config sized = m->cfg;          /* k' > top_k forced: MoE buffers for k' */
    sized.top_k = MOEXC__MAX(MOEXC__MAX(m->cfg.top_k, m->active_k), m->cap_k);
    if (m->fmem && B <= m->cap_B && T <= m->cap_T && sized.top_k <= m->cap_k) return MOEXC_OK;
    moexc__free_acts(m);
    moexc__carve_acts(&sized, nb, nt, NULL, NULL, NULL, NULL, &nf, &ni);
    m->fmem = moexc__alloc_floats(nf);
    m->imem = (int *)moexc__calloc(ni, sizeof(int));
    if (!m->fmem || !m->imem) {
        moexc__free_acts(m);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "model: cannot allocate activations for B %d, T %d (%.1f MiB)",
                           nb, nt, (double)(nf * sizeof(float) + ni * sizeof(int)) / 1048576.0);
    }
    moexc__carve_acts(&sized, nb, nt, m->fmem, m->imem, m->acts, m, &nf, &ni);
    m->cap_B = nb;
    m->cap_T = nt;
    m->cap_k = sized.top_k;
    return MOEXC_OK;
}

/* ---- create / free ------------------------------------------------------- */
MOEXC_DEF void moexc_model_free(moexc_model *m)
{
    if (!m) return;
    moexc__free_acts(m);
    moexc__free_aligned(m->params);
    moexc__free_aligned(m->grads);
    moexc__free_aligned(m->rope_cos);
    moexc__free_aligned(m->rope_sin);
    moexc__free(m->info);
    moexc__free(m->names);
    moexc__free(m->layer_views);
    moexc__free(m->acts);
    moexc__free(m);
}

MOEXC_DEF moexc_status moexc_model_create(moexc_model **out, const moexc_model_config *cfg, moexc_error *err)
{
    moexc_model *m;
    moexc_status st;
    int L, half;
    if (!out) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_model_create: out is NULL");
    *out = NULL;
    m = (moexc_model *)moexc__calloc(1, sizeof(*m));
    if (!m) return moexc__fail(err, MOEXC_ERR_NOMEM, "model: out of memory");
    st = moexc_model_config_resolve(&m->cfg, cfg, err);
    if (st) { moexc__free(m); return st; }
    L = m->cfg.n_layers;
    half = m->cfg.d_model / m->cfg.n_heads / 2;
    m->layer_views = (moexc__layer_weights *)moexc__calloc((size_t)2 * L, sizeof(moexc__layer_weights));
    m->acts = (moexc__layer_acts *)moexc__calloc((size_t)L, sizeof(moexc__layer_acts));
    if (!m->layer_views || !m->acts) goto nomem;
    m->w.layer = m->layer_views;
    m->g.layer = m->layer_views + L;
    moexc__layout(m);                       /* count the tensors */
    m->info = (moexc_param_info *)moexc__calloc((size_t)m->n_tensors, sizeof(moexc_param_info));
    m->names = (char *)moexc__calloc((size_t)m->n_tensors, MOEXC__NAME_MAX);
    if (!m->info || !m->names) goto nomem;
    m->n_params = moexc__layout(m);         /* names, shapes, offsets */
    m->params = moexc__alloc_floats(m->n_params);
    m->grads = moexc__alloc_floats(m->n_params);
    m->rope_cos = moexc__alloc_floats((size_t)m->cfg.context * half);
    m->rope_sin = moexc__alloc_floats((size_t)m->cfg.context * half);
    if (!m->params || !m->grads || !m->rope_cos || !m->rope_sin) goto nomem;
    moexc__layout(m);                       /* bind the named views */
    moexc__rope_tables(m->rope_cos, m->rope_sin, m->cfg.context, 2 * half);
    moexc__init_params(m);
    *out = m;
    return MOEXC_OK;
nomem:
    moexc_model_free(m);
    return moexc__fail(err, MOEXC_ERR_NOMEM, "model: cannot allocate parameters");
}

MOEXC_DEF const moexc_model_config *moexc_model_get_config(const moexc_model *m) { return &m->cfg; }
MOEXC_DEF size_t moexc_model_num_params(const moexc_model *m) { return m->n_params; }
MOEXC_DEF float *moexc_model_params(moexc_model *m) { return m->params; }
MOEXC_DEF float *moexc_model_grads(moexc_model *m) { return m->grads; }
MOEXC_DEF void moexc_model_zero_grad(moexc_model *m)
{
    long c, n_chunks = (long)((m->n_params + MOEXC__CHUNK - 1) / MOEXC__CHUNK);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (m->n_params >= MOEXC__PAR_MIN)
#endif
    for (c = 0; c < n_chunks; c++) {
        size_t i = (size_t)c * MOEXC__CHUNK;
        memset(m->grads + i, 0, MOEXC__MIN((size_t)MOEXC__CHUNK, m->n_params - i) * sizeof(float));
    }
}
MOEXC_DEF int moexc_model_num_tensors(const moexc_model *m) { return m->n_tensors; }
MOEXC_DEF const moexc_param_info *moexc_model_tensor(const moexc_model *m, int i)
{
    return (i >= 0 && i < m->n_tensors) ? &m->info[i] : NULL;
}
MOEXC_DEF const moexc_param_info *moexc_model_find_tensor(const moexc_model *m, const char *name)
{
    int i;
    for (i = 0; i < m->n_tensors; i++)
        if (strcmp(m->info[i].name, name) == 0) return &m->info[i];
    return NULL;
}

/* ---- forward / backward --------------------------------------------------- */
static moexc__moe_dims moexc__moe_dims_of(const moexc_model *m)
{
    const moexc_model_config *c = &m->cfg;
    moexc__moe_dims md;
    md.d = c->d_model;
    md.E = c->n_experts;
    md.k = m->active_k ? m->active_k : c->top_k;
    md.h = c->d_expert;
    md.renorm = c->gate == MOEXC_GATE_RENORM;
    md.lb_alpha = c->lb_alpha > 0.0f ? c->lb_alpha : 0.0f;
    md.z_weight = c->z_loss;
    return md;
}

/* Runs blocks 0..last_layer; with last_layer = L-1 also the final norm and
   LM head, and with targets the losses. */
static moexc_status moexc__forward(moexc_model *m, const uint16_t *inputs, const uint16_t *targets,
                                   int B, int T, int last_layer, moexc_loss_stats *stats, moexc_error *err)
{
    const moexc_model_config *c = &m->cfg;
    int N, d = c->d_model, H = c->n_heads, dh = d / H, V = c->vocab_size, l, t;
    moexc__moe_dims md = moexc__moe_dims_of(m);
    moexc_status st;
    if (!inputs) return moexc__fail(err, MOEXC_ERR_ARG, "model forward: inputs is NULL");
    if (B < 1 || T < 1 || T > c->context)
        return moexc__fail(err, MOEXC_ERR_ARG, "model forward: B %d, T %d (context %d) out of range", B, T, c->context);
    if ((size_t)B * T > (size_t)INT_MAX / (size_t)MOEXC__MAX(MOEXC__MAX(c->top_k, md.k), 1) / 4)
        return moexc__fail(err, MOEXC_ERR_ARG, "model forward: B*T = %d*%d too large", B, T);
    N = B * T;
    for (t = 0; t < N; t++) {
        if (inputs[t] >= V)
            return moexc__fail(err, MOEXC_ERR_ARG, "model forward: inputs[%d] = %d >= vocab_size %d", t, inputs[t], V);
        if (targets && targets[t] >= V)
            return moexc__fail(err, MOEXC_ERR_ARG, "model forward: targets[%d] = %d >= vocab_size %d", t, targets[t], V);
    }
    if ((st = moexc__ensure_acts(m, B, T, err)) != MOEXC_OK) return st;
    m->B = B;
    m->T = T;
    m->backward_ready = 0;
    m->has_targets = 0;
    m->layers_done = 0;
    memcpy(m->tokens, inputs, (size_t)N * sizeof(uint16_t));

    moexc__embedding_forward(m->acts[0].x, m->tokens, m->w.tok_emb, N, d);
    moexc__rmsnorm_forward(m->acts[0].attn_in, m->acts[0].attn_rms, m->acts[0].x, m->w.layer[0].attn_norm, N, d);
    for (l = 0; l <= last_layer; l++) {
        moexc__layer_acts *a = &m->acts[l];
        const moexc__layer_weights *w = &m->w.layer[l];
        float *x_out = l + 1 < c->n_layers ? m->acts[l + 1].x : m->x_final;
        /* The element-wise steps that follow a product on its rows run inside
           it, on each block of rows as soon as it is final (moexc__gemm_then):
           RoPE after [q | k | v], the residual add and the next RMSNorm after
           the attention output and after the dense FFN's down projection. */
        moexc__rope qk_rope = moexc__rope_of(a->q, (size_t)3 * d, m->rope_cos, m->rope_sin, T, 2 * H, dh, 0);
        moexc__residual_norm h_norm = moexc__residual_norm_of(a->h, a->h, a->x, a->ffn_in, a->ffn_rms, w->ffn_norm, d);
        moexc__residual_norm y_norm;
        moexc__gemm_then qk_then, h_then, y_then;
        /* y's RMSNorm in the dense FFN's product, unless this layer's output
           is replaced or ends a partial forward */
        const int y_in_product = c->ffn != MOEXC_FFN_MOE && !(m->replace && l == m->replace_layer)
                                 && (l < last_layer || l == c->n_layers - 1);
        if (l < last_layer)
            y_norm = moexc__residual_norm_of(x_out, a->h, a->ffn_out, m->acts[l + 1].attn_in, m->acts[l + 1].attn_rms,
                                             m->w.layer[l + 1].attn_norm, d);
        else
            y_norm = moexc__residual_norm_of(x_out, a->h, a->ffn_out, m->xf, m->xf_rms, m->w.norm, d);
        qk_then.rows = moexc__rope_rows; qk_then.ctx = &qk_rope;
        h_then.rows = moexc__residual_rmsnorm_rows; h_then.ctx = &h_norm;
        y_then.rows = moexc__residual_rmsnorm_rows; y_then.ctx = &y_norm;
        /* h = x + Attn(RMSNorm(x)), RMSNorm(x) made by the step before */
        /* [q | k | v] (N,3d) = RMSNorm(x) [W_q; W_k; W_v]ᵀ, one product: the
           three weights are adjacent in the layout (>>model); then RoPE on q
           and k, adjacent in each row: 2H heads of dh */
        moexc__sgemm_then(0, 1, N, 3 * d, d, 1.0f, a->attn_in, d, w->wq, d, 0.0f, a->q, 3 * d, &qk_then);
        moexc__attention_forward_ld(a->att_y, a->att, a->q, a->k, a->v, 3 * d, B, T, H, dh);
        /* h = att_y W_oᵀ, then h += x and RMSNorm(h) */
        moexc__sgemm_then(0, 1, N, d, d, 1.0f, a->att_y, d, w->wo, d, 0.0f, a->h, d, &h_then);
        /* y = h + FFN(RMSNorm(h)) */
        if (c->ffn == MOEXC_FFN_MOE)
            moexc__moe_forward(a->ffn_out, &a->moe, a->ffn_in, w->router, w->w_gate, w->w_up, w->w_down, N, &md);
        else
            moexc__swiglu_forward(a->ffn_out, a->gate, a->up, a->act, a->ffn_in, w->w_gate, w->w_up, w->w_down,
                                  N, d, c->d_ff, y_in_product ? &y_then : NULL);
        if (m->replace && l == m->replace_layer && m->replace_site == MOEXC_SITE_FFN_OUT)
            memcpy(a->ffn_out, m->replace, (size_t)N * d * sizeof(float));
        if (y_in_product)
            ;   /* y and its RMSNorm made by the down projection */
        else if (m->replace && l == m->replace_layer && m->replace_site == MOEXC_SITE_RESID) {
            /* the block's output itself replaced: the RMSNorm after it reads the replacement */
            memcpy(x_out, m->replace, (size_t)N * d * sizeof(float));
            if (l < last_layer)
                moexc__rmsnorm_forward(m->acts[l + 1].attn_in, m->acts[l + 1].attn_rms, x_out, m->w.layer[l + 1].attn_norm, N, d);
            else if (l == c->n_layers - 1)
                moexc__rmsnorm_forward(m->xf, m->xf_rms, x_out, m->w.norm, N, d);
        }
        /* with the RMSNorm that reads y: the next block's, or the final one */
        else if (l < last_layer || l == c->n_layers - 1)
            moexc__residual_rmsnorm_rows_par(&y_norm, N);
        else
            moexc__add_par(x_out, a->h, a->ffn_out, (size_t)N * d);
        m->layers_done = l + 1;
    }
    if (last_layer < c->n_layers - 1) return MOEXC_OK;

    moexc_linear_forward(m->logits, m->xf, m->w.lm_head, NULL, N, V, d);
    memset(&m->stats, 0, sizeof(m->stats));
    if (targets) {
        memcpy(m->targets, targets, (size_t)N * sizeof(uint16_t));
        /* loss = mean CE + Σ_ℓ L_lb + Σ_ℓ L_z */
        m->stats.ce = moexc__crossentropy_forward(m->lse, m->dlogits, m->logits, m->targets, N, V);
        if (c->ffn == MOEXC_FFN_MOE)
            for (l = 0; l < c->n_layers; l++) { m->stats.lb += m->acts[l].moe.lb; m->stats.z += m->acts[l].moe.z; }
        m->stats.loss = m->stats.ce + m->stats.lb + m->stats.z;
        if (stats) *stats = m->stats;
        if (!(m->stats.loss == m->stats.loss) || m->stats.loss > DBL_MAX)
            return moexc__fail(err, MOEXC_ERR_NUMERIC, "model forward: loss is %g (ce %g, lb %g, z %g)",
                               m->stats.loss, m->stats.ce, m->stats.lb, m->stats.z);
        m->has_targets = 1;
        m->backward_ready = 1;
    } else if (stats) {
        *stats = m->stats;
    }
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_model_forward(moexc_model *m, const uint16_t *inputs, const uint16_t *targets,
                                           int B, int T, moexc_loss_stats *stats, moexc_error *err)
{
    if (!m) return moexc__fail(err, MOEXC_ERR_ARG, "model forward: model is NULL");
    return moexc__forward(m, inputs, targets, B, T, m->cfg.n_layers - 1, stats, err);
}

MOEXC_DEF moexc_status moexc_model_forward_replace(moexc_model *m, const uint16_t *inputs, const uint16_t *targets,
                                                   int B, int T, int layer, moexc_site site, const float *replacement,
                                                   moexc_loss_stats *stats, moexc_error *err)
{
    moexc_status st;
    if (!m || !replacement) return moexc__fail(err, MOEXC_ERR_ARG, "model forward_replace: model or replacement is NULL");
    if (layer < 0 || layer >= m->cfg.n_layers)
        return moexc__fail(err, MOEXC_ERR_ARG, "model forward_replace: layer %d not in [0, %d)", layer, m->cfg.n_layers);
    if (site != MOEXC_SITE_FFN_OUT && site != MOEXC_SITE_RESID)
        return moexc__fail(err, MOEXC_ERR_ARG, "model forward_replace: unknown site %d", (int)site);
    m->replace = replacement; m->replace_layer = layer; m->replace_site = (int)site;
    st = moexc__forward(m, inputs, targets, B, T, m->cfg.n_layers - 1, stats, err);
    m->replace = NULL;
    m->backward_ready = 0;   /* the replaced site has no gradient path */
    return st;
}

MOEXC_DEF const float *moexc_model_site_output(const moexc_model *m, int layer, moexc_site site)
{
    if (!m || !m->fmem || layer < 0 || layer >= m->layers_done) return NULL;
    if (site == MOEXC_SITE_FFN_OUT) return m->acts[layer].ffn_out;
    if (site == MOEXC_SITE_RESID) return layer + 1 < m->cfg.n_layers ? m->acts[layer + 1].x : m->x_final;
    return NULL;
}

MOEXC_DEF moexc_status moexc_model_backward(moexc_model *m, moexc_error *err)
{
    const moexc_model_config *c;
    int B, T, N, d, H, dh, V, l;
    moexc__moe_dims md;
    if (!m) return moexc__fail(err, MOEXC_ERR_ARG, "model backward: model is NULL");
    if (!m->backward_ready)
        return moexc__fail(err, MOEXC_ERR_ARG, "model backward: needs a forward with targets first (once per forward)");
    c = &m->cfg;
    B = m->B; T = m->T; N = B * T; d = c->d_model; H = c->n_heads; dh = d / H; V = c->vocab_size;
    md = moexc__moe_dims_of(m);
    m->backward_ready = 0;

    /* loss -> logits -> final norm -> residual stream */
    moexc__crossentropy_backward(m->dlogits, m->logits, m->lse, m->targets, N, V);
    moexc_linear_backward_weight(m->g.lm_head, m->dlogits, m->xf, N, V, d);
    {   /* dnorm = dlogits W_head, then dx = 0 + the final RMSNorm's backward on its rows */
        moexc__rmsnorm_grad final_grad = moexc__rmsnorm_grad_of(m->dx, m->dnorm, m->x_final, m->w.norm, m->xf_rms, d);
        moexc__gemm_then final_then;
        final_then.rows = moexc__rmsnorm_backward_rows; final_then.ctx = &final_grad;
        memset(m->dx, 0, (size_t)N * d * sizeof(float));
        moexc__sgemm_then(0, 0, N, d, V, 1.0f, m->dlogits, V, m->w.lm_head, d, 0.0f, m->dnorm, d, &final_then);
        moexc__rmsnorm_backward_gain(m->g.norm, &final_grad, N);
    }

    for (l = c->n_layers - 1; l >= 0; l--) {
        moexc__layer_acts *a = &m->acts[l];
        const moexc__layer_weights *w = &m->w.layer[l];
        moexc__layer_weights *g = &m->g.layer[l];
        /* the RMSNorms' backward on dx's rows runs inside the products that
           make their dnorm (moexc__gemm_then); their gains' gradients after */
        moexc__rmsnorm_grad ffn_grad = moexc__rmsnorm_grad_of(m->dx, m->dnorm, a->h, w->ffn_norm, a->ffn_rms, d);
        moexc__rmsnorm_grad attn_grad = moexc__rmsnorm_grad_of(m->dx, m->dnorm, a->x, w->attn_norm, a->attn_rms, d);
        moexc__gemm_then ffn_then, attn_then;
        ffn_then.rows = attn_then.rows = moexc__rmsnorm_backward_rows;
        ffn_then.ctx = &ffn_grad;
        attn_then.ctx = &attn_grad;
        /* y = h + FFN(RMSNorm(h)): dx is dy here and becomes dh; the MoE adds
           into dnorm, the dense FFN overwrites it */
        if (c->ffn == MOEXC_FFN_MOE) {
            memset(m->dnorm, 0, (size_t)N * d * sizeof(float));
            moexc__moe_backward(m->dnorm, g->router, g->w_gate, g->w_up, g->w_down, &m->moe_sc, &a->moe,
                                m->dx, a->ffn_in, w->router, w->w_gate, w->w_up, w->w_down, N, &md);
            moexc__rmsnorm_backward(m->dx, g->ffn_norm, m->dnorm, a->h, w->ffn_norm, a->ffn_rms, N, d);
        } else {
            moexc__swiglu_backward(m->dnorm, 0, g->w_gate, g->w_up, g->w_down, m->dff_gate, m->dff_up,
                                   m->dx, a->ffn_in, a->gate, a->up, a->act, w->w_gate, w->w_up, w->w_down,
                                   N, d, c->d_ff, &ffn_then);
            moexc__rmsnorm_backward_gain(g->ffn_norm, &ffn_grad, N);
        }
        /* h = x + Attn(RMSNorm(x)): dx is dh here and becomes dx */
        moexc_linear_backward_weight(g->wo, m->dx, a->att_y, N, d, d);
        moexc_linear_backward_input(m->datt_y, m->dx, w->wo, N, d, d, 0);
        moexc__attention_backward_ld(m->dq, m->dk, m->dv, m->datt, m->datt_y, a->att, a->q, a->k, a->v, 3 * d,
                                     B, T, H, dh);
        /* RoPE's inverse on dq and dk, adjacent in each row: 2H heads of dh */
        moexc__rope_apply_ld(m->dq, (size_t)3 * d, m->rope_cos, m->rope_sin, B, T, 2 * H, dh, 1);
        /* with W = [W_q; W_k; W_v] (3d,d) and dY = [dq | dk | dv] (N,3d):
           dW += dYᵀ RMSNorm(x),  dRMSNorm(x) = dY W, one product each */
        moexc_sgemm(1, 0, 3 * d, d, N, 1.0f, m->dq, 3 * d, a->attn_in, d, 1.0f, g->wq, d);
        moexc__sgemm_then(0, 0, N, d, 3 * d, 1.0f, m->dq, 3 * d, w->wq, d, 0.0f, m->dnorm, d, &attn_then);
        moexc__rmsnorm_backward_gain(g->attn_norm, &attn_grad, N);
    }
    moexc__embedding_backward(m->g.tok_emb, m->dx, m->tokens, N, d);
    return MOEXC_OK;
}

MOEXC_DEF const float *moexc_model_logits(const moexc_model *m)
{
    return (m && m->fmem && m->layers_done == m->cfg.n_layers) ? m->logits : NULL;
}
MOEXC_DEF const float *moexc_model_router_probs(const moexc_model *m, int layer)
{
    if (!m || m->cfg.ffn != MOEXC_FFN_MOE || layer < 0 || layer >= m->layers_done) return NULL;
    return m->acts[layer].moe.probs;
}
MOEXC_DEF const int *moexc_model_router_choices(const moexc_model *m, int layer)
{
    if (!m || m->cfg.ffn != MOEXC_FFN_MOE || layer < 0 || layer >= m->layers_done) return NULL;
    return m->acts[layer].moe.choice;
}
MOEXC_DEF moexc_status moexc_model_router_load(const moexc_model *m, int layer, float *f, float *P, moexc_error *err)
{
    int i;
    if (!m || m->cfg.ffn != MOEXC_FFN_MOE || layer < 0 || layer >= m->layers_done)
        return moexc__fail(err, MOEXC_ERR_ARG, "model router load: layer %d has no router output (MoE model, after a forward?)", layer);
    for (i = 0; i < m->cfg.n_experts; i++) {
        if (f) f[i] = m->acts[layer].moe.frac[i];
        if (P) P[i] = m->acts[layer].moe.pmean[i];
    }
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_model_set_active_experts(moexc_model *m, int k, moexc_error *err)
{
    if (!m) return moexc__fail(err, MOEXC_ERR_ARG, "model set_active_experts: model is NULL");
    if (k == 0) { m->active_k = 0; return MOEXC_OK; }
    if (m->cfg.ffn != MOEXC_FFN_MOE)
        return moexc__fail(err, MOEXC_ERR_ARG, "model set_active_experts: a dense model has no experts");
    if (k < 0 || k > m->cfg.n_experts)
        return moexc__fail(err, MOEXC_ERR_ARG, "model set_active_experts: k %d not in [0, n_experts = %d]", k, m->cfg.n_experts);
    m->active_k = k == m->cfg.top_k ? 0 : k;
    m->backward_ready = 0;
    m->layers_done = 0;   /* the router outputs of the last forward had another k */
    return MOEXC_OK;
}
MOEXC_DEF int moexc_model_active_experts(const moexc_model *m)
{
    if (!m || m->cfg.ffn != MOEXC_FFN_MOE) return 0;
    return m->active_k ? m->active_k : m->cfg.top_k;
}

MOEXC_DEF moexc_status moexc_model_capture(moexc_model *m, const uint16_t *tokens, int B, int T,
                                           int layer, moexc_site site, float *out, moexc_error *err)
{
    moexc_status st;
    const float *src;
    if (!m || !out) return moexc__fail(err, MOEXC_ERR_ARG, "model capture: model or out is NULL");
    if (layer < 0 || layer >= m->cfg.n_layers)
        return moexc__fail(err, MOEXC_ERR_ARG, "model capture: layer %d not in [0, %d)", layer, m->cfg.n_layers);
    if (site != MOEXC_SITE_FFN_OUT && site != MOEXC_SITE_RESID)
        return moexc__fail(err, MOEXC_ERR_ARG, "model capture: unknown site %d", (int)site);
    if ((st = moexc__forward(m, tokens, NULL, B, T, layer, NULL, err)) != MOEXC_OK) return st;
    if (site == MOEXC_SITE_FFN_OUT) src = m->acts[layer].ffn_out;
    else src = layer + 1 < m->cfg.n_layers ? m->acts[layer + 1].x : m->x_final;
    memcpy(out, src, (size_t)B * T * m->cfg.d_model * sizeof(float));
    return MOEXC_OK;
}

/* ---- checkpoints (safetensors) ------------------------------------------- */
/* Metadata: "moexc.format" = "model", "moexc.version" = "1" and every
   resolved config field as "moexc.config.<field>" (decimal strings). */
#define MOEXC__MODEL_FORMAT_VERSION "1"
#define MOEXC__N_CONFIG_KEYS 16

static void moexc__config_to_meta(const moexc_model_config *c, char vals[MOEXC__N_CONFIG_KEYS][40],
                                  moexc_st_kv *kv)
{
    static const char *const keys[MOEXC__N_CONFIG_KEYS] = {
        "moexc.config.vocab_size", "moexc.config.d_model", "moexc.config.n_heads", "moexc.config.n_layers",
        "moexc.config.context", "moexc.config.ffn", "moexc.config.d_ff", "moexc.config.n_experts",
        "moexc.config.top_k", "moexc.config.d_expert", "moexc.config.gate", "moexc.config.lb_alpha",
        "moexc.config.z_loss", "moexc.config.tied_head", "moexc.config.init_std", "moexc.config.seed" };
    int i;
    snprintf(vals[0], 40, "%d", c->vocab_size);
    snprintf(vals[1], 40, "%d", c->d_model);
    snprintf(vals[2], 40, "%d", c->n_heads);
    snprintf(vals[3], 40, "%d", c->n_layers);
    snprintf(vals[4], 40, "%d", c->context);
    snprintf(vals[5], 40, "%d", c->ffn);
    snprintf(vals[6], 40, "%d", c->d_ff);
    snprintf(vals[7], 40, "%d", c->n_experts);
    snprintf(vals[8], 40, "%d", c->top_k);
    snprintf(vals[9], 40, "%d", c->d_expert);
    snprintf(vals[10], 40, "%d", c->gate);
    snprintf(vals[11], 40, "%.9g", (double)c->lb_alpha);
    snprintf(vals[12], 40, "%.9g", (double)c->z_loss);
    snprintf(vals[13], 40, "%d", c->tied_head);
    snprintf(vals[14], 40, "%.9g", (double)c->init_std);
    snprintf(vals[15], 40, "%llu", (unsigned long long)c->seed);
    for (i = 0; i < MOEXC__N_CONFIG_KEYS; i++) { kv[i].key = keys[i]; kv[i].value = vals[i]; }
}

/* The config's integer and float fields, by name. */
static moexc_status moexc__meta_int(const moexc_st_file *f, const char *path, const char *key, int *v, moexc_error *err)
{
    int64_t x;
    moexc_status st = moexc__st_meta_i64(f, path, key, INT_MIN, INT_MAX, &x, err);   /* decimal digits, exact */
    if (st == MOEXC_OK) *v = (int)x;
    return st;
}
static moexc_status moexc__meta_float(const moexc_st_file *f, const char *path, const char *key, float *v, moexc_error *err)
{
    double x;
    moexc_status st = moexc__st_meta_number(f, path, key, -FLT_MAX, FLT_MAX, &x, err);
    if (st == MOEXC_OK) *v = (float)x;
    return st;
}

/* Writes the model's tensors and config, plus extra tensors and metadata
   (a training checkpoint adds its optimiser state this way). */
static moexc_status moexc__model_save_with(const moexc_model *m, const char *path, const moexc_st_entry *extra, int n_extra,
                                           const moexc_st_kv *extra_meta, int n_extra_meta, moexc_error *err)
{
    char vals[MOEXC__N_CONFIG_KEYS][40];
    moexc_st_kv *kv;
    moexc_st_entry *ent;
    moexc_status st;
    int i, j, n_kv = 2 + MOEXC__N_CONFIG_KEYS + (n_extra_meta > 0 ? n_extra_meta : 0);
    int n_ent = m->n_tensors + (n_extra > 0 ? n_extra : 0);
    if (!path) return moexc__fail(err, MOEXC_ERR_ARG, "model save: path is NULL");
    kv = (moexc_st_kv *)moexc__calloc((size_t)n_kv, sizeof(*kv));
    ent = (moexc_st_entry *)moexc__calloc((size_t)n_ent, sizeof(*ent));
    if (!kv || !ent) {
        moexc__free(kv);
        moexc__free(ent);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory", path);
    }
    kv[0].key = "moexc.format";
    kv[0].value = "model";
    kv[1].key = "moexc.version";
    kv[1].value = MOEXC__MODEL_FORMAT_VERSION;
    moexc__config_to_meta(&m->cfg, vals, kv + 2);
    for (i = 0; i < n_extra_meta; i++) kv[2 + MOEXC__N_CONFIG_KEYS + i] = extra_meta[i];
    for (i = 0; i < m->n_tensors; i++) {
        const moexc_param_info *pi = &m->info[i];
        ent[i].name = pi->name;
        ent[i].data = m->params + pi->offset;
        ent[i].ndim = pi->ndim;
        for (j = 0; j < pi->ndim; j++) ent[i].shape[j] = pi->shape[j];
    }
    for (i = 0; i < n_extra; i++) ent[m->n_tensors + i] = extra[i];
    st = moexc_st_save(path, ent, n_ent, kv, n_kv, err);
    moexc__free(kv);
    moexc__free(ent);
    return st;
}

MOEXC_DEF moexc_status moexc_model_save(const moexc_model *m, const char *path, moexc_error *err)
{
    if (!m) return moexc__fail(err, MOEXC_ERR_ARG, "model save: model is NULL");
    return moexc__model_save_with(m, path, NULL, 0, NULL, 0, err);
}

/* Builds a model from an opened safetensors file: reads the config from the
   metadata, then every tensor, checking its shape against the config. */
static moexc_status moexc__model_load_from(const moexc_st_file *f, const char *path, moexc_model **out, moexc_error *err)
{
    moexc_model_config c;
    moexc_model *m = NULL;
    moexc_status st;
    const char *s;
    int64_t head_shape[8];
    size_t q;
    int i, j;
    if (!out) return moexc__fail(err, MOEXC_ERR_ARG, "%s: out is NULL", path);
    *out = NULL;
    s = moexc_st_meta(f, "moexc.format");
    if (!s || strcmp(s, "model") != 0)
        return moexc__fail(err, s ? MOEXC_ERR_FORMAT : MOEXC_ERR_MISSING,
                           "%s: metadata 'moexc.format' is %s%s%s, expected \"model\"", path,
                           s ? "\"" : "absent", s ? s : "", s ? "\"" : "");
    s = moexc_st_meta(f, "moexc.version");
    if (!s || strcmp(s, MOEXC__MODEL_FORMAT_VERSION) != 0)
        return moexc__fail(err, MOEXC_ERR_VERSION, "%s: model format version %s, this build reads " MOEXC__MODEL_FORMAT_VERSION,
                           path, s ? s : "(absent)");
    memset(&c, 0, sizeof(c));
    {
#define MOEXC__MI(field) if ((st = moexc__meta_int(f, path, "moexc.config." #field, &c.field, err)) != MOEXC_OK) return st
#define MOEXC__MF(field) if ((st = moexc__meta_float(f, path, "moexc.config." #field, &c.field, err)) != MOEXC_OK) return st
        MOEXC__MI(vocab_size); MOEXC__MI(d_model); MOEXC__MI(n_heads); MOEXC__MI(n_layers); MOEXC__MI(context);
        MOEXC__MI(ffn); MOEXC__MI(d_ff); MOEXC__MI(n_experts); MOEXC__MI(top_k); MOEXC__MI(d_expert);
        MOEXC__MI(gate); MOEXC__MF(lb_alpha); MOEXC__MF(z_loss); MOEXC__MI(tied_head); MOEXC__MF(init_std);
#undef MOEXC__MI
#undef MOEXC__MF
        /* exact: digits only, overflow rejected */
        if ((st = moexc__st_meta_u64(f, path, "moexc.config.seed", &c.seed, err)) != MOEXC_OK) return st;
    }
    /* the stored config is a resolved one: a zero that resolution would
       replace means the file was not written by this library */
    if (c.vocab_size < 1 || c.d_model < 1 || c.n_heads < 1 || c.n_layers < 1 || c.context < 1 || c.d_ff < 1 ||
        c.n_experts < 1 || c.top_k < 1 || c.d_expert < 1 || c.lb_alpha == 0.0f || c.init_std <= 0.0f)
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: metadata holds an unresolved or invalid model config", path);
    {   /* Before allocating: the tensors the config implies must roughly fit
           the file (at most twice its data section plus 64 MiB, so a header
           naming huge sizes costs little memory, while a file one tensor off
           still gets the message naming that tensor below), and the RoPE
           tables (context x head width / 2 floats, twice) stay below 256 MiB each. */
        double d = c.d_model, V = c.vocab_size, L = c.n_layers, E = c.n_experts, need;
        double ffn = c.ffn == MOEXC_FFN_MOE ? E * d + 3.0 * E * c.d_expert * d : 3.0 * c.d_ff * d;
        need = 4.0 * (V * d * (c.tied_head ? 1.0 : 2.0) + d + L * (2.0 * d + 4.0 * d * d + ffn));
        if (L > (double)moexc_st_count(f) || need > 2.0 * (double)(f->size - f->data_start) + 67108864.0)
            return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: the config (%d layers, d_model %d, vocab %d) needs %.0f bytes of "
                               "tensors, the file holds %lu", path, c.n_layers, c.d_model, c.vocab_size, need,
                               (unsigned long)(f->size - f->data_start));
        if (c.d_model % c.n_heads == 0 && (double)c.context * (c.d_model / c.n_heads / 2) > (double)(1 << 26))
            return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: context %d x head width %d: RoPE tables above the loader's "
                               "limit of 2^26 floats", path, c.context, c.d_model / c.n_heads);
    }
    if ((st = moexc_model_create(&m, &c, err)) != MOEXC_OK) {
        if (err) {
            char msg[sizeof(err->message)];
            memcpy(msg, err->message, sizeof(msg));
            return moexc__fail(err, st, "%s: %s", path, msg);
        }
        return st;
    }
    for (i = 0; i < m->n_tensors; i++) {
        const moexc_param_info *pi = &m->info[i];
        int ndim = 0;
        int64_t shape[8];
        int same;
        if ((st = moexc_st_shape(f, pi->name, &ndim, shape, NULL)) != MOEXC_OK) {
            st = moexc__fail(err, MOEXC_ERR_MISSING, "%s: tensor '%s' is missing", path, pi->name);
            moexc_model_free(m);
            return st;
        }
        same = ndim == pi->ndim;
        for (j = 0; same && j < ndim; j++) same = shape[j] == pi->shape[j];
        if (!same) {
            char got[128], want[128];
            moexc__shape_str(got, sizeof(got), ndim, shape);
            moexc__shape_str(want, sizeof(want), pi->ndim, pi->shape);
            st = moexc__fail(err, MOEXC_ERR_SHAPE, "%s: tensor '%s': shape %s, the config expects %s",
                             path, pi->name, got, want);
            moexc_model_free(m);
            return st;
        }
        if ((st = moexc_st_read_f32(f, pi->name, m->params + pi->offset, pi->ndim, pi->shape, err)) != MOEXC_OK) {
            moexc_model_free(m);
            return st;
        }
        for (q = 0; q < pi->size; q++)   /* a NaN or infinite weight poisons every output */
            if (!isfinite(m->params[pi->offset + q])) {
                st = moexc__fail(err, MOEXC_ERR_NUMERIC, "%s: tensor '%s': value %lu is not finite", path, pi->name,
                                 (unsigned long)q);
                moexc_model_free(m);
                return st;
            }
    }
    if (c.tied_head && moexc_st_shape(f, "lm_head.weight", &j, head_shape, NULL) == MOEXC_OK) {
        moexc_model_free(m);
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: tensor 'lm_head.weight' present but the config ties the head to tok_emb",
                           path);
    }
    *out = m;
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_model_load(moexc_model **out, const char *path, moexc_error *err)
{
    moexc_st_file *f = NULL;
    moexc_status st;
    if (!out || !path) return moexc__fail(err, MOEXC_ERR_ARG, "model load: out or path is NULL");
    *out = NULL;
    if ((st = moexc_st_open(&f, path, err)) != MOEXC_OK) return st;
    st = moexc__model_load_from(f, path, out, err);
    moexc_st_close(f);
    return st;
}
/* ======================================================================== */
/* >>train: AdamW, schedule, clipping, batches, evaluation, routing         */
/* ======================================================================== */

#define MOEXC__LN2 0.69314718055994530942

static void moexc__train_resolve(moexc_train_options *o, const moexc_train_options *in, int context)
{
    if (in) *o = *in; else memset(o, 0, sizeof(*o));
    if (o->lr == 0.0f)            o->lr = 1e-3f;
    if (o->min_lr_ratio == 0.0f)  o->min_lr_ratio = 0.1f;
    if (o->min_lr_ratio < 0.0f)   o->min_lr_ratio = 0.0f;
    if (o->beta1 == 0.0f)         o->beta1 = 0.9f;
    if (o->beta2 == 0.0f)         o->beta2 = 0.95f;
    if (o->eps == 0.0f)           o->eps = 1e-8f;
    if (o->weight_decay == 0.0f)  o->weight_decay = 0.1f;
    if (o->grad_clip == 0.0f)     o->grad_clip = 1.0f;
    if (o->total_steps == 0)      o->total_steps = 1000;
    if (o->warmup_steps == 0)     o->warmup_steps = MOEXC__MAX(1, o->total_steps / 20);
    if (o->batch_size == 0)       o->batch_size = 8;
    if (o->seq_len == 0)          o->seq_len = context;
    if (o->grad_accum == 0)       o->grad_accum = 1;
    if (o->eval_interval == 0)    o->eval_interval = 100;
    if (o->eval_batches == 0)     o->eval_batches = 8;
    if (o->eval_fraction == 0.0f) o->eval_fraction = 0.05f;
}

MOEXC_DEF double moexc_train_lr(const moexc_train_options *opt, int step)
{
    moexc_train_options o;
    double lr_max, lr_min, s, span;
    int warmup;
    moexc__train_resolve(&o, opt, 1);
    lr_max = o.lr;
    lr_min = (double)o.min_lr_ratio * lr_max;
    warmup = o.warmup_steps > 0 ? o.warmup_steps : 0;
    if (step < warmup) return lr_max * (double)(step + 1) / (double)warmup;
    /* cosine: lr_min + (lr - lr_min) (1 + cos(pi s / S)) / 2 */
    s = (double)(step - warmup);
    span = (double)MOEXC__MAX(1, o.total_steps - warmup);
    if (s > span) s = span;
    return lr_min + (lr_max - lr_min) * 0.5 * (1.0 + cos(3.14159265358979323846 * s / span));
}

/* ---- data parallelism (SPEC §9): helpers shared with >>crosscoder --------- */
static int moexc__dp_world(const moexc_reduce *r) { return r->sum ? r->world : 1; }
static int moexc__dp_rank(const moexc_reduce *r)  { return r->sum ? r->rank : 0; }

static moexc_status moexc__dp_valid(const moexc_reduce *r, const char *who, moexc_error *err)
{
    if (r->sum && (r->world < 1 || r->rank < 0 || r->rank >= r->world))
        return moexc__fail(err, MOEXC_ERR_ARG, "%s: reduce hook with rank %d, world %d (need 0 <= rank < world)",
                           who, r->rank, r->world);
    return MOEXC_OK;
}

/* buf (n elements of type) := its sum over the workers */
static moexc_status moexc__dp_sum(const moexc_reduce *r, void *buf, size_t n, int type, const char *who, moexc_error *err)
{
    int rc;
    if (!r->sum || n == 0) return MOEXC_OK;
    rc = r->sum(buf, n, type, r->user);
    if (rc != 0)
        return moexc__fail(err, MOEXC_ERR_IO, "%s: the reduce hook failed (code %d) on worker %d of %d",
                           who, rc, r->rank, r->world);
    return MOEXC_OK;
}

/* FNV-1a, 64 bits, over n bytes */
static uint64_t moexc__fnv64(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    size_t i;
    for (i = 0; i < n; i++) { h ^= b[i]; h *= UINT64_C(0x100000001B3); }
    return h;
}

/* Do `world` workers answer, and do they hold the same fingerprint? One sum
   of (1, x_j, x_j^2) over the fingerprint's four 16-bit pieces x_j: all
   workers agree iff W sum x^2 = (sum x)^2 for every piece (Cauchy-Schwarz;
   exact in double for W < 2^10), and every worker reaches the same verdict. */
static moexc_status moexc__dp_agree(const moexc_reduce *r, uint64_t print, const char *who, moexc_error *err)
{
    double buf[9];
    int j;
    moexc_status st;
    buf[0] = 1.0;
    for (j = 0; j < 4; j++) {
        double x = (double)((print >> (16 * j)) & 0xFFFF);
        buf[1 + 2 * j] = x;
        buf[2 + 2 * j] = x * x;
    }
    if ((st = moexc__dp_sum(r, buf, 9, MOEXC_REDUCE_F64, who, err)) != MOEXC_OK) return st;
    if (buf[0] != (double)r->world)
        return moexc__fail(err, MOEXC_ERR_ARG, "%s: %g workers answered the reduce hook, but its world is %d "
                           "(start as many workers as the hook's world)", who, buf[0], r->world);
    for (j = 0; j < 4; j++)
        if (buf[2 + 2 * j] * r->world != buf[1 + 2 * j] * buf[1 + 2 * j])
            return moexc__fail(err, MOEXC_ERR_ARG, "%s: the %d workers differ in their options, data or state "
                               "(worker %d's fingerprint %016llx): start every worker with the same options, data "
                               "and checkpoint", who, r->world, r->rank, (unsigned long long)print);
    return MOEXC_OK;
}

/* ---- router statistics ---------------------------------------------------- */
MOEXC_DEF moexc_status moexc_router_stats_init(moexc_router_stats *s, const moexc_model *m, int n_domains, moexc_error *err)
{
    const moexc_model_config *c = moexc_model_get_config(m);
    size_t L, E, D, n;
    double *block;
    memset(s, 0, sizeof(*s));
    if (n_domains < 1 || n_domains > MOEXC_MAX_DOMAINS)
        return moexc__fail(err, MOEXC_ERR_ARG, "router stats: n_domains %d outside [1, %d]", n_domains, MOEXC_MAX_DOMAINS);
    s->n_domains = n_domains;
    if (c->ffn != MOEXC_FFN_MOE) return MOEXC_OK;          /* dense: nothing to count */
    L = (size_t)c->n_layers; E = (size_t)c->n_experts; D = (size_t)n_domains;
    n = 4 * L * E + L + 2 * L * D * E;
    block = (double *)moexc__calloc(n, sizeof(double));
    if (!block) return moexc__fail(err, MOEXC_ERR_NOMEM, "router stats: out of memory");
    s->n_layers = c->n_layers; s->n_experts = c->n_experts; s->top_k = c->top_k;
    s->slot_count   = block;
    s->prob_sum     = s->slot_count + L * E;
    s->f            = s->prob_sum + L * E;
    s->P            = s->f + L * E;
    s->entropy      = s->P + L * E;
    s->domain_count = s->entropy + L;
    s->domain_share = s->domain_count + L * D * E;
    return MOEXC_OK;
}

MOEXC_DEF void moexc_router_stats_reset(moexc_router_stats *s)
{
    size_t L = (size_t)s->n_layers, E = (size_t)s->n_experts, D = (size_t)s->n_domains;
    if (s->slot_count) memset(s->slot_count, 0, (4 * L * E + L + 2 * L * D * E) * sizeof(double));
    s->n_tokens = 0;
    memset(s->domain_tokens, 0, sizeof(s->domain_tokens));
}

MOEXC_DEF void moexc_router_stats_free(moexc_router_stats *s)
{
    if (!s) return;
    moexc__free(s->slot_count);
    memset(s, 0, sizeof(*s));
}

static void moexc__router_stats_derive(moexc_router_stats *s);
MOEXC_DEF moexc_status moexc_router_stats_add(moexc_router_stats *s, const moexc_model *m,
                                              const uint8_t *domains, int n, moexc_error *err)
{
    /* the choices are (n x k') with k' the experts in effect (forced or top_k) */
    int L = s->n_layers, E = s->n_experts, K = moexc_model_active_experts(m), D = s->n_domains, l, t, j, e;
    for (t = 0; domains && t < n; t++)
        if (domains[t] >= D) return moexc__fail(err, MOEXC_ERR_ARG, "router stats: domain label %d >= %d", domains[t], D);
    for (t = 0; domains && t < n; t++) s->domain_tokens[domains[t]] += 1.0;
    s->n_tokens += n;
    if (L) s->top_k = K;
    for (l = 0; l < L; l++) {
        const float *p = moexc_model_router_probs(m, l);
        const int *choice = moexc_model_router_choices(m, l);
        double *slots = s->slot_count + (size_t)l * E, *psum = s->prob_sum + (size_t)l * E;
        double *dcount = s->domain_count + (size_t)l * D * E;
        if (!p || !choice) return moexc__fail(err, MOEXC_ERR_ARG, "router stats: layer %d has no router output", l);
        for (t = 0; t < n; t++) {
            for (j = 0; j < K; j++) {
                e = choice[(size_t)t * K + j];
                if (e < 0 || e >= E) return moexc__fail(err, MOEXC_ERR_ARG, "router stats: layer %d token %d: expert %d", l, t, e);
                slots[e] += 1.0;
                if (domains) dcount[(size_t)domains[t] * E + e] += 1.0;
            }
            for (e = 0; e < E; e++) psum[e] += p[(size_t)t * E + e];
        }
    }
    moexc__router_stats_derive(s);
    return MOEXC_OK;
}

/* The derived statistics (f, P, entropy, domain_share) from the sums. */
static void moexc__router_stats_derive(moexc_router_stats *s)
{
    int L = s->n_layers, E = s->n_experts, D = s->n_domains, l, e, d;
    for (l = 0; l < L; l++) {
        double *slots = s->slot_count + (size_t)l * E, *psum = s->prob_sum + (size_t)l * E;
        double *dcount = s->domain_count + (size_t)l * D * E;
        double h = 0.0, all_slots = 0.0;
        /* f_e = (1/(kN)) sum_t 1{e in S(t)} = slots_e / sum slots (k may differ
           between the forwards added),  P_e = (1/N) sum_t p_{t,e},  H = -sum f log2 f */
        for (e = 0; e < E; e++) all_slots += slots[e];
        for (e = 0; e < E; e++) {
            double f = all_slots > 0 ? slots[e] / all_slots : 0.0;
            s->f[(size_t)l * E + e] = f;
            s->P[(size_t)l * E + e] = s->n_tokens > 0 ? psum[e] / s->n_tokens : 0.0;
            if (f > 0) h -= f * log(f) / MOEXC__LN2;
        }
        s->entropy[l] = h;
        for (d = 0; d < D; d++)
            for (e = 0; e < E; e++)
                s->domain_share[((size_t)l * D + d) * E + e] =
                    s->domain_tokens[d] > 0 ? dcount[(size_t)d * E + e] / s->domain_tokens[d] : 0.0;
    }
}

/* ---- the trainer ------------------------------------------------------------ */
/* A run of consecutive positions of the stream that are all training (or all
   held-out) tokens; windows never cross from one split into the other. */
typedef struct moexc__run { size_t start, len; } moexc__run;

struct moexc_trainer {
    moexc_model             *model;
    const moexc_tokens      *data;
    moexc_train_options      opt;         /* resolved */
    int                      step;        /* optimiser steps done */
    double                   tokens;      /* training tokens processed */
    moexc_rng                rng;         /* data sampling */
    float                   *moments;     /* AdamW m then v, each in the parameter layout */
    size_t                   n_params;
    uint32_t                 data_crc;    /* fingerprint of the token stream */
    /* splits */
    moexc__run              *train_runs, *eval_runs;
    size_t                   n_train_runs, n_eval_runs;
    size_t                  *train_cum;   /* cumulative number of window starts per train run */
    size_t                   n_train_starts;
    /* batch buffers, B x T each: input and target tokens, their domain labels */
    uint16_t                *inputs, *targets;
    uint8_t                 *input_labels, *target_labels;
    /* evaluation */
    double                   unigram_nats[MOEXC_MAX_DOMAINS], unigram_tokens[MOEXC_MAX_DOMAINS];
    double                  *step_slots;  /* [L][E] routing counts of the current step */
    moexc_router_stats       router;
    moexc_eval_result        eval;
    int                      dp_checked;  /* the workers of opt.reduce agreed (moexc__trainer_dp_check) */
};

MOEXC_DEF const moexc_train_options *moexc_trainer_options(const moexc_trainer *t) { return &t->opt; }
MOEXC_DEF int          moexc_trainer_step_count(const moexc_trainer *t) { return t->step; }
MOEXC_DEF moexc_model *moexc_trainer_model(moexc_trainer *t) { return t->model; }

MOEXC_DEF void moexc_trainer_free(moexc_trainer *t)
{
    if (!t) return;
    moexc__free_aligned(t->moments);
    moexc__free(t->train_runs); moexc__free(t->eval_runs); moexc__free(t->train_cum);
    moexc__free(t->inputs); moexc__free(t->targets); moexc__free(t->input_labels);
    moexc__free(t->step_slots);
    moexc_router_stats_free(&t->router);
    moexc__free(t);
}

/* CRC-32 of the tokens and labels as little-endian bytes: identifies the data
   a checkpoint was trained on. */
static uint32_t moexc__tokens_fingerprint(const moexc_tokens *d)
{
    unsigned char buf[4096];
    moexc__crc_tables tables;
    uint32_t crc = 0;
    size_t i = 0, j;
    moexc__crc_tables_build(&tables);
    while (i < d->n) {
        size_t chunk = MOEXC__MIN(d->n - i, sizeof(buf) / 2);
        for (j = 0; j < chunk; j++) {
            buf[2 * j] = (unsigned char)(d->tokens[i + j] & 0xFF);
            buf[2 * j + 1] = (unsigned char)(d->tokens[i + j] >> 8);
        }
        crc = moexc__crc32_sliced(&tables, crc, buf, 2 * chunk);
        crc = moexc__crc32_sliced(&tables, crc, d->domains + i, chunk);
        i += chunk;
    }
    return crc;
}

/* Split the stream: per domain, the last eval_fraction of its tokens (in
   stream order) are held out. Also fits the per-domain unigram baseline on
   the training tokens and scores it on the held-out ones. */
static moexc_status moexc__trainer_split(moexc_trainer *t, moexc_error *err)
{
    const moexc_tokens *d = t->data;
    size_t count[MOEXC_MAX_DOMAINS] = {0}, cut[MOEXC_MAX_DOMAINS], seen[MOEXC_MAX_DOMAINS] = {0};
    size_t i, r, nt = 0, ne = 0, T = (size_t)t->opt.seq_len;
    int V = d->vocab_size > 0 ? d->vocab_size : 256, dom, v;
    double *uni = NULL;
    unsigned char *held = (unsigned char *)moexc__malloc(d->n);
    if (!held) return moexc__fail(err, MOEXC_ERR_NOMEM, "trainer: out of memory (split)");
    for (i = 0; i < d->n; i++) count[d->domains[i]]++;
    for (dom = 0; dom < d->n_domains; dom++) {
        double frac = t->opt.eval_fraction > 0 ? t->opt.eval_fraction : 0.0;
        cut[dom] = count[dom] - (size_t)floor((double)count[dom] * frac);
    }
    for (i = 0; i < d->n; i++) { dom = d->domains[i]; held[i] = seen[dom]++ >= cut[dom]; }
    /* runs of equal `held`, in two passes: count, then fill */
    for (r = 0; r < 2; r++) {
        size_t start = 0, k_t = 0, k_e = 0;
        for (i = 1; i <= d->n; i++) {
            if (i < d->n && held[i] == held[start]) continue;
            if (held[start]) { if (r) { t->eval_runs[k_e].start = start; t->eval_runs[k_e].len = i - start; } k_e++; }
            else             { if (r) { t->train_runs[k_t].start = start; t->train_runs[k_t].len = i - start; } k_t++; }
            start = i;
        }
        if (r == 0) {
            nt = k_t; ne = k_e;
            t->train_runs = (moexc__run *)moexc__calloc(nt ? nt : 1, sizeof(moexc__run));
            t->eval_runs  = (moexc__run *)moexc__calloc(ne ? ne : 1, sizeof(moexc__run));
            t->train_cum  = (size_t *)moexc__calloc(nt ? nt : 1, sizeof(size_t));
            uni = (double *)moexc__calloc((size_t)MOEXC_MAX_DOMAINS * (size_t)V, sizeof(double));
            if (!t->train_runs || !t->eval_runs || !t->train_cum || !uni) {
                moexc__free(held); moexc__free(uni);
                return moexc__fail(err, MOEXC_ERR_NOMEM, "trainer: out of memory (split)");
            }
        }
    }
    t->n_train_runs = nt; t->n_eval_runs = ne;
    /* a window of T+1 tokens starting at s needs s + T inside the run */
    t->n_train_starts = 0;
    for (r = 0; r < nt; r++) {
        if (t->train_runs[r].len > T) t->n_train_starts += t->train_runs[r].len - T;
        t->train_cum[r] = t->n_train_starts;
    }
    /* unigram baseline: p(v) = (count_train(v) + 1) / (N_train + V), scored on held-out */
    for (i = 0; i < d->n; i++)
        if (!held[i]) uni[(size_t)d->domains[i] * V + d->tokens[i]] += 1.0;
    for (dom = 0; dom < d->n_domains; dom++) {
        double total = 0.0;
        for (v = 0; v < V; v++) total += uni[(size_t)dom * V + v];
        for (v = 0; v < V; v++) uni[(size_t)dom * V + v] = -log((uni[(size_t)dom * V + v] + 1.0) / (total + V));
    }
    for (i = 0; i < d->n; i++)
        if (held[i]) {
            dom = d->domains[i];
            t->unigram_nats[dom] += uni[(size_t)dom * V + d->tokens[i]];
            t->unigram_tokens[dom] += 1.0;
        }
    moexc__free(uni);
    moexc__free(held);
    return MOEXC_OK;
}

static moexc_status moexc__trainer_alloc(moexc_trainer *t, moexc_error *err)
{
    const moexc_model_config *c = moexc_model_get_config(t->model);
    size_t BT = (size_t)t->opt.batch_size * (size_t)t->opt.seq_len;
    moexc_status st;
    t->n_params = moexc_model_num_params(t->model);
    t->moments = moexc__alloc_floats(2 * t->n_params);
    t->inputs = (uint16_t *)moexc__calloc(BT, sizeof(uint16_t));
    t->targets = (uint16_t *)moexc__calloc(BT, sizeof(uint16_t));
    t->input_labels = (uint8_t *)moexc__calloc(2 * BT, 1);
    t->step_slots = (double *)moexc__calloc((size_t)c->n_layers * (size_t)MOEXC__MAX(1, c->n_experts), sizeof(double));
    if (!t->moments || !t->inputs || !t->targets || !t->input_labels || !t->step_slots)
        return moexc__fail(err, MOEXC_ERR_NOMEM, "trainer: out of memory");
    t->target_labels = t->input_labels + BT;
    st = moexc_router_stats_init(&t->router, t->model, t->data->n_domains, err);
    if (st) return st;
    t->eval.router = &t->router;
    return moexc__trainer_split(t, err);
}

static moexc_status moexc__trainer_check(const moexc_trainer *t, moexc_error *err)
{
    const moexc_train_options *o = &t->opt;
    const moexc_model_config *c = moexc_model_get_config(t->model);
    const moexc_tokens *d = t->data;
    if (!(o->lr > 0) || !(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1) || !(o->eps > 0))
        return moexc__fail(err, MOEXC_ERR_ARG, "train options: lr %g must be > 0, betas (%g, %g) in [0, 1), eps %g > 0",
                           o->lr, o->beta1, o->beta2, o->eps);
    if (o->total_steps < 1 || o->batch_size < 1 || o->grad_accum < 1 || o->eval_batches < 1)
        return moexc__fail(err, MOEXC_ERR_ARG, "train options: total_steps %d, batch_size %d, grad_accum %d, eval_batches %d must be >= 1",
                           o->total_steps, o->batch_size, o->grad_accum, o->eval_batches);
    if (o->seq_len < 1 || o->seq_len > c->context)
        return moexc__fail(err, MOEXC_ERR_ARG, "train options: seq_len %d outside [1, context %d]", o->seq_len, c->context);
    if (!(o->eval_fraction < 0.5f))
        return moexc__fail(err, MOEXC_ERR_ARG, "train options: eval_fraction %g must be < 0.5", o->eval_fraction);
    if (moexc__dp_valid(&o->reduce, "train options", err) != MOEXC_OK) return MOEXC_ERR_ARG;
    if (o->batch_size % moexc__dp_world(&o->reduce) != 0)
        return moexc__fail(err, MOEXC_ERR_ARG, "train options: batch_size %d is not divisible by the %d workers of the "
                           "reduce hook (batch_size is the global batch)", o->batch_size, o->reduce.world);
    if (!d || d->n == 0 || d->n_domains < 1 || d->n_domains > MOEXC_MAX_DOMAINS)
        return moexc__fail(err, MOEXC_ERR_ARG, "trainer: empty token stream or bad domain count");
    if (d->vocab_size > c->vocab_size)
        return moexc__fail(err, MOEXC_ERR_ARG, "trainer: data vocabulary %d exceeds the model's %d", d->vocab_size, c->vocab_size);
    {
        size_t i;
        for (i = 0; i < d->n; i++)
            if (d->tokens[i] >= c->vocab_size || d->domains[i] >= d->n_domains)
                return moexc__fail(err, MOEXC_ERR_ARG, "trainer: token %zu: id %u or domain %u out of range",
                                   i, (unsigned)d->tokens[i], (unsigned)d->domains[i]);
    }
    return MOEXC_OK;
}

/* Held-out windows: each run cut into windows of T+1 tokens with stride T. */
static size_t moexc__eval_windows(const moexc_trainer *t)
{
    size_t r, total = 0, T = (size_t)t->opt.seq_len;
    for (r = 0; r < t->n_eval_runs; r++)
        if (t->eval_runs[r].len > T) total += (t->eval_runs[r].len - 1) / T;
    return total;
}

static moexc_status moexc__trainer_new(moexc_trainer **out, moexc_model *model, const moexc_tokens *data,
                                       const moexc_train_options *opt, moexc_error *err)
{
    moexc_trainer *t;
    moexc_status st;
    *out = NULL;
    if (!model || !data) return moexc__fail(err, MOEXC_ERR_ARG, "trainer: model and data are required");
    t = (moexc_trainer *)moexc__calloc(1, sizeof(*t));
    if (!t) return moexc__fail(err, MOEXC_ERR_NOMEM, "trainer: out of memory");
    t->model = model;
    t->data = data;
    moexc__train_resolve(&t->opt, opt, moexc_model_get_config(model)->context);
    if ((st = moexc__trainer_check(t, err)) != MOEXC_OK || (st = moexc__trainer_alloc(t, err)) != MOEXC_OK) {
        moexc_trainer_free(t);
        return st;
    }
    if (t->opt.eval_interval > 0 && t->n_eval_runs > 0 && moexc__eval_windows(t) == 0) {
        int window = t->opt.seq_len + 1;
        moexc_trainer_free(t);
        return moexc__fail(err, MOEXC_ERR_ARG, "trainer: no held-out window of %d tokens fits in the data "
                           "(use more data, a larger eval_fraction, or eval_interval < 0)", window);
    }
    if (t->n_train_starts == 0) {
        int window = t->opt.seq_len + 1;
        moexc_trainer_free(t);
        return moexc__fail(err, MOEXC_ERR_ARG, "trainer: no training window of %d tokens fits in the data", window);
    }
    t->data_crc = moexc__tokens_fingerprint(data);
    moexc_rng_seed(&t->rng, t->opt.seed);
    *out = t;
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_trainer_create(moexc_trainer **out, moexc_model *model, const moexc_tokens *data,
                                            const moexc_train_options *opt, moexc_error *err)
{
    return moexc__trainer_new(out, model, data, opt, err);
}

/* Copy the T+1 tokens at s into sequence b of the batch. */
static void moexc__trainer_fill(moexc_trainer *t, int b, size_t s)
{
    size_t T = (size_t)t->opt.seq_len, j;
    const moexc_tokens *d = t->data;
    for (j = 0; j < T; j++) {
        t->inputs[b * T + j] = d->tokens[s + j];
        t->targets[b * T + j] = d->tokens[s + j + 1];
        t->input_labels[b * T + j] = d->domains[s + j];
        t->target_labels[b * T + j] = d->domains[s + j + 1];
    }
}

/* B random training windows: a start uniform over all valid starts. With a
   reduce hook every worker draws all B and keeps its share [lo, lo + B/W). */
static void moexc__trainer_sample(moexc_trainer *t)
{
    int b, share = t->opt.batch_size / moexc__dp_world(&t->opt.reduce), first = moexc__dp_rank(&t->opt.reduce) * share;
    for (b = 0; b < t->opt.batch_size; b++) {
        size_t u = (size_t)(moexc_rng_u64(&t->rng) % (uint64_t)t->n_train_starts);  /* bias < n/2^64 */
        size_t lo = 0, hi = t->n_train_runs - 1, prev;
        while (lo < hi) {               /* first run whose cumulative count exceeds u */
            size_t mid = (lo + hi) / 2;
            if (t->train_cum[mid] > u) hi = mid; else lo = mid + 1;
        }
        prev = lo ? t->train_cum[lo - 1] : 0;
        if (b >= first && b < first + share) moexc__trainer_fill(t, b - first, t->train_runs[lo].start + (u - prev));
    }
}

/* ---- data-parallel steps (SPEC §9; see moexc_reduce) ----------------------- */
static uint32_t moexc__trainer_state_crc(moexc_trainer *t);

/* Before the first step with a hook: the workers' options, data, step,
   sampling state, parameters and moments must agree. */
static moexc_status moexc__trainer_dp_check(moexc_trainer *t, moexc_error *err)
{
    const moexc_train_options *o = &t->opt;
    uint64_t h = UINT64_C(0xCBF29CE484222325), n_params = (uint64_t)t->n_params;
    uint32_t crc = moexc__trainer_state_crc(t);
    moexc_status st;
    h = moexc__fnv64(h, &o->lr, sizeof(float));           h = moexc__fnv64(h, &o->min_lr_ratio, sizeof(float));
    h = moexc__fnv64(h, &o->beta1, sizeof(float));        h = moexc__fnv64(h, &o->beta2, sizeof(float));
    h = moexc__fnv64(h, &o->eps, sizeof(float));          h = moexc__fnv64(h, &o->weight_decay, sizeof(float));
    h = moexc__fnv64(h, &o->grad_clip, sizeof(float));    h = moexc__fnv64(h, &o->warmup_steps, sizeof(int));
    h = moexc__fnv64(h, &o->total_steps, sizeof(int));    h = moexc__fnv64(h, &o->batch_size, sizeof(int));
    h = moexc__fnv64(h, &o->seq_len, sizeof(int));        h = moexc__fnv64(h, &o->grad_accum, sizeof(int));
    h = moexc__fnv64(h, &o->eval_interval, sizeof(int));  h = moexc__fnv64(h, &o->eval_batches, sizeof(int));
    h = moexc__fnv64(h, &o->eval_fraction, sizeof(float)); h = moexc__fnv64(h, &o->seed, sizeof(uint64_t));
    h = moexc__fnv64(h, &t->step, sizeof(int));           h = moexc__fnv64(h, &t->rng.state, sizeof(uint64_t));
    h = moexc__fnv64(h, &t->data_crc, sizeof(uint32_t));  h = moexc__fnv64(h, &n_params, sizeof(uint64_t));
    h = moexc__fnv64(h, &crc, sizeof(uint32_t));
    if ((st = moexc__dp_agree(&o->reduce, h, "trainer", err)) != MOEXC_OK) return st;
    t->dp_checked = 1;
    return MOEXC_OK;
}

/* Between a micro-batch's forward and backward. The Switch loss's
   f_i = (1/(kN)) sum_t 1{i in S(t)} counts the global batch's N = W n
   tokens: the workers sum their routing counts and P_i sums, and each MoE
   layer's f_i becomes the global one before the backward reads it
   (dp_ti += alpha E f_i / n, summed over workers then / W: alpha E f_i / N).
   The loss figures become the global batch's: ce and z are means over
   equal shards, L_lb = alpha E sum_i f_i P_i with the global f and P. */
static moexc_status moexc__trainer_dp_router(moexc_trainer *t, moexc_loss_stats *ls, int n_tok, moexc_error *err)
{
    moexc_model *m = t->model;
    const moexc_model_config *c = moexc_model_get_config(m);
    int L = c->ffn == MOEXC_FFN_MOE ? c->n_layers : 0, E = c->n_experts, K = moexc_model_active_experts(m);
    int W = moexc__dp_world(&t->opt.reduce), l, e, i;
    size_t LE = (size_t)L * (size_t)E;
    double *buf = (double *)moexc__calloc(2 * LE + 2, sizeof(double)), N = (double)n_tok * W, lb = 0.0;
    moexc_status st;
    if (!buf) return moexc__fail(err, MOEXC_ERR_NOMEM, "trainer: out of memory (reduce)");
    for (l = 0; l < L; l++) {
        const moexc__moe_acts *a = &m->acts[l].moe;
        for (e = 0; e < E; e++) {
            double ps = 0.0;
            for (i = 0; i < n_tok; i++) ps += a->probs[(size_t)i * E + e];
            buf[(size_t)l * E + e] = (double)(a->expert_offset[e + 1] - a->expert_offset[e]);
            buf[LE + (size_t)l * E + e] = ps;
        }
    }
    buf[2 * LE] = ls->ce;
    buf[2 * LE + 1] = ls->z;
    if ((st = moexc__dp_sum(&t->opt.reduce, buf, 2 * LE + 2, MOEXC_REDUCE_F64, "trainer", err)) != MOEXC_OK) {
        moexc__free(buf);
        return st;
    }
    for (l = 0; l < L; l++) {
        moexc__moe_acts *a = &m->acts[l].moe;
        for (e = 0; e < E; e++) {   /* f_i = count_i / (kN), P_i = psum_i / N */
            a->frac[e] = (float)(buf[(size_t)l * E + e] / ((double)K * N));
            a->pmean[e] = (float)(buf[LE + (size_t)l * E + e] / N);
            lb += (double)a->frac[e] * buf[LE + (size_t)l * E + e] / N;
        }
    }
    ls->lb = c->lb_alpha > 0.0f ? c->lb_alpha * (double)E * lb : 0.0;
    ls->ce = buf[2 * LE] / W;
    ls->z = buf[2 * LE + 1] / W;
    ls->loss = ls->ce + ls->lb + ls->z;
    moexc__free(buf);
    return MOEXC_OK;
}

/* After the micro-batches: the gradient (each worker's the mean over its
   n tokens) summed over the W workers and divided by W is the gradient of
   the mean over the global batch; the step's routing counts are summed. */
static moexc_status moexc__trainer_dp_grads(moexc_trainer *t, moexc_error *err)
{
    const moexc_model_config *c = moexc_model_get_config(t->model);
    int L = c->ffn == MOEXC_FFN_MOE ? c->n_layers : 0, W = moexc__dp_world(&t->opt.reduce);
    float *grad = moexc_model_grads(t->model);
    moexc_status st = moexc__dp_sum(&t->opt.reduce, grad, t->n_params, MOEXC_REDUCE_F32, "trainer", err);
    if (st != MOEXC_OK) return st;
    if (W > 1) moexc__scale_par(grad, 1.0f / (float)W, t->n_params);
    return moexc__dp_sum(&t->opt.reduce, t->step_slots, (size_t)L * (size_t)c->n_experts, MOEXC_REDUCE_F64, "trainer", err);
}

/* After an evaluation: per-domain sums and the routing statistics summed,
   then the derived statistics refreshed. */
static moexc_status moexc__trainer_dp_eval(moexc_trainer *t, double *nats, double *count, moexc_error *err)
{
    moexc_router_stats *rs = &t->router;
    size_t D = MOEXC_MAX_DOMAINS, L = (size_t)rs->n_layers, E = (size_t)rs->n_experts, i;
    size_t n_sums = 2 * L * E + L * (size_t)rs->n_domains * E, n = 3 * D + 1 + n_sums;
    double *buf = (double *)moexc__calloc(n, sizeof(double));
    moexc_status st;
    if (!buf) return moexc__fail(err, MOEXC_ERR_NOMEM, "trainer: out of memory (reduce)");
    memcpy(buf, nats, D * sizeof(double));
    memcpy(buf + D, count, D * sizeof(double));
    memcpy(buf + 2 * D, rs->domain_tokens, D * sizeof(double));
    buf[3 * D] = rs->n_tokens;
    for (i = 0; i < 2 * L * E; i++) buf[3 * D + 1 + i] = i < L * E ? rs->slot_count[i] : rs->prob_sum[i - L * E];
    for (i = 0; i < n_sums - 2 * L * E; i++) buf[3 * D + 1 + 2 * L * E + i] = rs->domain_count[i];
    st = moexc__dp_sum(&t->opt.reduce, buf, n, MOEXC_REDUCE_F64, "trainer evaluation", err);
    if (st == MOEXC_OK) {
        memcpy(nats, buf, D * sizeof(double));
        memcpy(count, buf + D, D * sizeof(double));
        memcpy(rs->domain_tokens, buf + 2 * D, D * sizeof(double));
        rs->n_tokens = buf[3 * D];
        for (i = 0; i < 2 * L * E; i++) *(i < L * E ? &rs->slot_count[i] : &rs->prob_sum[i - L * E]) = buf[3 * D + 1 + i];
        for (i = 0; i < n_sums - 2 * L * E; i++) rs->domain_count[i] = buf[3 * D + 1 + 2 * L * E + i];
        moexc__router_stats_derive(rs);
    }
    moexc__free(buf);
    return st;
}

MOEXC_DEF moexc_status moexc_trainer_set_reduce(moexc_trainer *t, const moexc_reduce *r, moexc_error *err)
{
    moexc_reduce none;
    memset(&none, 0, sizeof(none));
    if (!t) return moexc__fail(err, MOEXC_ERR_ARG, "trainer set_reduce: trainer is NULL");
    if (!r) r = &none;
    if (moexc__dp_valid(r, "trainer set_reduce", err) != MOEXC_OK) return MOEXC_ERR_ARG;
    if (t->opt.batch_size % moexc__dp_world(r) != 0)
        return moexc__fail(err, MOEXC_ERR_ARG, "trainer set_reduce: batch_size %d is not divisible by the %d workers "
                           "(batch_size is the global batch)", t->opt.batch_size, r->world);
    t->opt.reduce = *r;
    t->dp_checked = 0;
    return MOEXC_OK;
}

/* AdamW (decoupled weight decay, as torch.optim.AdamW), step t >= 1:
     theta *= 1 - lr wd            (matrices only)
     m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
     theta -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
   with moexc_adam_update (>>tensor): element by element, so any chunking
   gives the same bits. g is the gradient times g_scale (the clipping
   coefficient, or 1), which moexc_adam_update applies as it reads it. All
   tensors in one parallel region, each cut into chunks. Returns whether an
   updated parameter is a NaN or an Inf: each chunk is checked right after
   its update, while it is still in cache. */
static int moexc__adamw(moexc_trainer *t, double lr, float g_scale)
{
    const moexc_train_options *o = &t->opt;
    float *theta = moexc_model_params(t->model), *grad = moexc_model_grads(t->model);
    float *mom = t->moments, *vel = t->moments + t->n_params;
    double step = (double)(t->step + 1);
    moexc_adam_coeffs base;
    int n_tensors = moexc_model_num_tensors(t->model), bad = 0;
    base.g_scale = g_scale;
    base.decay = 1.0f;
    base.beta1 = o->beta1;
    base.beta2 = o->beta2;
    base.eps = o->eps;
    base.step_size = (float)(lr / (1.0 - pow((double)o->beta1, step)));
    base.bc2_sqrt = (float)sqrt(1.0 - pow((double)o->beta2, step));
#ifdef _OPENMP
#pragma omp parallel if (t->n_params >= MOEXC__PAR_MIN) reduction(| : bad)
#endif
    {
        int k;
        for (k = 0; k < n_tensors; k++) {
            const moexc_param_info *pi = moexc_model_tensor(t->model, k);
            moexc_adam_coeffs c = base;
            long ch, n_chunks = (long)((pi->size + MOEXC__CHUNK - 1) / MOEXC__CHUNK);
            c.decay = (pi->decay && o->weight_decay > 0) ? (float)(1.0 - lr * o->weight_decay) : 1.0f;
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
            for (ch = 0; ch < n_chunks; ch++) {
                size_t i = pi->offset + (size_t)ch * MOEXC__CHUNK;
                size_t len = MOEXC__MIN((size_t)MOEXC__CHUNK, pi->size - (size_t)ch * MOEXC__CHUNK);
                moexc_adam_update(theta + i, grad + i, mom + i, vel + i, len, &c);
                bad |= moexc__chunk_nonfinite(theta + i, len);
            }
        }
    }
    return bad;
}

/* Divergence: the first tensor (model order) whose values in x (parameters
   or gradients, the model's flat layout) hold a NaN or an Inf, or -1;
   *elem receives the element's index inside it. */
static int moexc__train_nonfinite(const moexc_model *m, const float *x, size_t *elem)
{
    int k, n = moexc_model_num_tensors(m);
    if (!moexc__any_nonfinite(x, m->n_params)) return -1;    /* the common case, one pass */
    for (k = 0; k < n; k++) {
        const moexc_param_info *pi = moexc_model_tensor(m, k);
        size_t i = moexc__first_nonfinite(x + pi->offset, pi->size);
        if (i < pi->size) { *elem = i; return k; }
    }
    return -1;
}

/* The error of a step that went non-finite: names the step and the tensor
   (a non-finite parameter first, else the first non-finite gradient). when:
   "" before the update, " after the AdamW update" after it. */
static moexc_status moexc__train_diverged(moexc_trainer *t, const char *when, double loss, double norm, double lr,
                                          moexc_error *err)
{
    moexc_model *m = t->model;
    size_t at = 0;
    int k = moexc__train_nonfinite(m, moexc_model_params(m), &at), param = k >= 0;
    const float *x = param ? moexc_model_params(m) : moexc_model_grads(m);
    const moexc_param_info *pi;
    if (!param) k = moexc__train_nonfinite(m, x, &at);
    if (k < 0)
        return moexc__fail(err, MOEXC_ERR_NUMERIC, "trainer: step %d diverged: loss %g, gradient norm %g with every "
                           "parameter and gradient finite (lr %g)", t->step + 1, loss, norm, lr);
    pi = moexc_model_tensor(m, k);
    return moexc__fail(err, MOEXC_ERR_NUMERIC, "trainer: step %d diverged: %s '%s' is not finite%s (element %lu = %g); "
                       "loss %g, gradient norm %g, lr %g", t->step + 1, param ? "parameter" : "the gradient of",
                       pi->name, param ? when : "", (unsigned long)at, (double)x[pi->offset + at], loss, norm, lr);
}

/* A forward or backward that met a non-finite value: its message, with the
   step and the parameter tensor of the largest magnitude (the one that blew up). */
static moexc_status moexc__train_pass_failed(moexc_trainer *t, moexc_status st, moexc_error *err)
{
    char msg[sizeof(err->message)];
    const float *x = moexc_model_params(t->model);
    double big = -1.0;
    int k, n = moexc_model_num_tensors(t->model), at = 0;
    if (st != MOEXC_ERR_NUMERIC || !err) return st;
    memcpy(msg, err->message, sizeof(msg));
    for (k = 0; k < n; k++) {
        const moexc_param_info *pi = moexc_model_tensor(t->model, k);
        size_t i;
        for (i = 0; i < pi->size; i++)
            if (fabs((double)x[pi->offset + i]) > big) { big = fabs((double)x[pi->offset + i]); at = k; }
    }
    return moexc__fail(err, st, "trainer: step %d diverged: %s; the largest parameter is %g in '%s' (lr %g)", t->step + 1,
                       msg, big, moexc_model_tensor(t->model, at)->name, moexc_train_lr(&t->opt, t->step));
}

MOEXC_DEF moexc_status moexc_trainer_step(moexc_trainer *t, moexc_train_progress *progress, moexc_error *err)
{
    const moexc_model_config *c = moexc_model_get_config(t->model);
    const moexc_train_options *o = &t->opt;
    int B = o->batch_size / moexc__dp_world(&o->reduce), T = o->seq_len, A = o->grad_accum, a, l, e, j;   /* B: this worker's */
    int L = c->ffn == MOEXC_FFN_MOE ? c->n_layers : 0, E = c->n_experts, K = moexc_model_active_experts(t->model);
    float *grad = moexc_model_grads(t->model);
    size_t n = t->n_params;
    double sum_loss = 0, sum_ce = 0, sum_lb = 0, sum_z = 0, norm2 = 0, norm, lr;
    float g_scale = 1.0f;
    moexc_train_progress p;
    moexc_status st;

    if (o->reduce.sum && !t->dp_checked && (st = moexc__trainer_dp_check(t, err)) != MOEXC_OK) return st;
    moexc_model_zero_grad(t->model);
    if (L) memset(t->step_slots, 0, (size_t)L * (size_t)E * sizeof(double));
    for (a = 0; a < A; a++) {
        moexc_loss_stats ls;
        moexc__trainer_sample(t);
        if ((st = moexc_model_forward(t->model, t->inputs, t->targets, B, T, &ls, err)) != MOEXC_OK ||
            (o->reduce.sum && (st = moexc__trainer_dp_router(t, &ls, B * T, err)) != MOEXC_OK) ||
            (st = moexc_model_backward(t->model, err)) != MOEXC_OK) return moexc__train_pass_failed(t, st, err);
        sum_loss += ls.loss; sum_ce += ls.ce; sum_lb += ls.lb; sum_z += ls.z;
        for (l = 0; l < L; l++) {
            const int *choice = moexc_model_router_choices(t->model, l);
            for (j = 0; choice && j < B * T * K; j++) t->step_slots[(size_t)l * E + choice[j]] += 1.0;
        }
    }
    if (o->reduce.sum && (st = moexc__trainer_dp_grads(t, err)) != MOEXC_OK) return st;   /* sum / W */
    /* the step's loss is the mean over micro-batches: average the gradients */
    if (A > 1) moexc__scale_par(grad, 1.0f / (float)A, n);
    norm2 = moexc__sumsq_par(grad, n);
    norm = sqrt(norm2);
    if (!(norm < HUGE_VAL) || !(sum_loss < HUGE_VAL))
        return moexc__train_diverged(t, "", sum_loss / A, norm, moexc_train_lr(o, t->step), err);
    /* global norm clipping, as torch.nn.utils.clip_grad_norm_: g *= c / (|g| + 1e-6) when that is < 1,
       applied by AdamW as it reads g (the gradients stay as they are) */
    if (o->grad_clip > 0) {
        double coef = (double)o->grad_clip / (norm + 1e-6);
        if (coef < 1.0) g_scale = (float)coef;
    }
    lr = moexc_train_lr(o, t->step);
    /* a huge step can overflow the parameters themselves: stop before anyone saves them */
    if (moexc__adamw(t, lr, g_scale))
        return moexc__train_diverged(t, " after the AdamW update", sum_loss / A, norm, lr, err);
    t->step++;
    t->tokens += (double)A * o->batch_size * T;

    memset(&p, 0, sizeof(p));
    p.step = t->step; p.total_steps = o->total_steps; p.tokens = t->tokens;
    p.loss = sum_loss / A; p.ce = sum_ce / A; p.lb = sum_lb / A; p.z = sum_z / A;
    p.lr = lr; p.grad_norm = norm;
    if (L) {
        double slots = (double)A * o->batch_size * T * K;
        p.usage_min = 1.0;
        for (l = 0; l < L; l++)
            for (e = 0; e < E; e++) {
                double f = t->step_slots[(size_t)l * E + e] / slots;
                if (f > 0) p.usage_entropy -= f * log(f) / MOEXC__LN2 / L;
                p.usage_min = MOEXC__MIN(p.usage_min, f);
                p.usage_max = MOEXC__MAX(p.usage_max, f);
            }
    }
    if (progress) *progress = p;
    return MOEXC_OK;
}

/* Held-out windows: every run cut into consecutive windows of T+1 tokens with
   stride T (so every target is scored once), then eval_batches x B of them
   picked evenly spaced: deterministic, and proportional to each domain's share. */
MOEXC_DEF moexc_status moexc_trainer_evaluate(moexc_trainer *t, const moexc_eval_result **out, moexc_error *err)
{
    const moexc_train_options *o = &t->opt;
    int B = o->batch_size, T = o->seq_len, V = moexc_model_get_config(t->model)->vocab_size, b, dom;
    int byte_level = t->data->vocab_size == 256 || t->data->vocab_size == 0;
    size_t r, total = 0, want, w;
    double nats[MOEXC_MAX_DOMAINS] = {0}, count[MOEXC_MAX_DOMAINS] = {0}, all_nats = 0, all_count = 0, uni_all = 0, uni_n = 0;
    moexc_eval_result *res = &t->eval;
    moexc_status st;

    if (out) *out = NULL;
    total = moexc__eval_windows(t);
    if (total == 0)
        return moexc__fail(err, MOEXC_ERR_ARG, "trainer: no held-out window of %d tokens (eval_fraction %g)", T + 1, o->eval_fraction);
    want = MOEXC__MIN(total, (size_t)o->eval_batches * (size_t)B);
    moexc_router_stats_reset(&t->router);
    for (w = 0; w < want; ) {
        int nb = (int)MOEXC__MIN((size_t)B, want - w), i;
        /* with a reduce hook this worker scores windows [lo, hi) of each batch */
        int lo = nb * moexc__dp_rank(&o->reduce) / moexc__dp_world(&o->reduce);
        int hi = nb * (moexc__dp_rank(&o->reduce) + 1) / moexc__dp_world(&o->reduce);
        for (b = 0; b < nb; b++, w++) {
            size_t idx = (size_t)((double)w * (double)total / (double)want), k = idx;  /* evenly spaced */
            for (r = 0; b >= lo && b < hi && r < t->n_eval_runs; r++) {
                size_t cnt = t->eval_runs[r].len > (size_t)T ? (t->eval_runs[r].len - 1) / (size_t)T : 0;
                if (k < cnt) { moexc__trainer_fill(t, b - lo, t->eval_runs[r].start + k * (size_t)T); break; }
                k -= cnt;
            }
        }
        if ((nb = hi - lo) == 0) continue;
        if ((st = moexc_model_forward(t->model, t->inputs, NULL, nb, T, NULL, err)) != MOEXC_OK) return st;
        {
            const float *logits = moexc_model_logits(t->model);
            for (i = 0; i < nb * T; i++) {   /* CE = logsumexp(z) - z_target */
                const float *z = logits + (size_t)i * V;
                double mx = z[0], s = 0.0, ce;
                int v;
                for (v = 1; v < V; v++) if (z[v] > mx) mx = z[v];
                for (v = 0; v < V; v++) s += exp((double)z[v] - mx);
                ce = mx + log(s) - (double)z[t->targets[i]];
                nats[t->target_labels[i]] += ce;
                count[t->target_labels[i]] += 1.0;
            }
        }
        if ((st = moexc_router_stats_add(&t->router, t->model, t->input_labels, nb * T, err)) != MOEXC_OK) return st;
    }
    if (o->reduce.sum && (st = moexc__trainer_dp_eval(t, nats, count, err)) != MOEXC_OK) return st;
    res->step = t->step;
    res->n_domains = t->data->n_domains;
    for (dom = 0; dom < t->data->n_domains; dom++) {
        moexc_domain_eval *de = &res->domain[dom];
        de->tokens = count[dom];
        de->nats = count[dom] > 0 ? nats[dom] / count[dom] : 0.0;
        de->unigram_nats = t->unigram_tokens[dom] > 0 ? t->unigram_nats[dom] / t->unigram_tokens[dom] : 0.0;
        de->bits_per_byte = byte_level ? de->nats / MOEXC__LN2 : -1.0;
        de->unigram_bpb = byte_level ? de->unigram_nats / MOEXC__LN2 : -1.0;
        all_nats += nats[dom]; all_count += count[dom];
        uni_all += t->unigram_nats[dom]; uni_n += t->unigram_tokens[dom];
    }
    res->all.tokens = all_count;
    res->all.nats = all_count > 0 ? all_nats / all_count : 0.0;
    res->all.unigram_nats = uni_n > 0 ? uni_all / uni_n : 0.0;
    res->all.bits_per_byte = byte_level ? res->all.nats / MOEXC__LN2 : -1.0;
    res->all.unigram_bpb = byte_level ? res->all.unigram_nats / MOEXC__LN2 : -1.0;
    if (out) *out = res;
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_trainer_run(moexc_trainer *t, moexc_train_callback cb, void *user, moexc_error *err)
{
    while (t->step < t->opt.total_steps) {
        moexc_train_progress p;
        moexc_status st = moexc_trainer_step(t, &p, err);
        int last = t->step == t->opt.total_steps;
        if (st) return st;
        if (t->opt.eval_interval > 0 && t->n_eval_runs > 0 && (t->step % t->opt.eval_interval == 0 || last)) {
            st = moexc_trainer_evaluate(t, &p.eval, err);
            if (st) return st;
        }
        if (cb && cb(&p, user)) break;
    }
    return MOEXC_OK;
}

/* ---- training checkpoints -------------------------------------------------- */
/* CRC-32 over parameters then moments, as little-endian float bytes. */
static uint32_t moexc__floats_crc(uint32_t crc, const float *x, size_t n)
{
    unsigned char buf[4096];
    size_t i = 0, j;
    if (moexc__host_is_little_endian()) return moexc__crc32(crc, x, n * sizeof(float));   /* the same bytes */
    while (i < n) {
        size_t chunk = MOEXC__MIN(n - i, sizeof(buf) / 4);
        for (j = 0; j < chunk; j++) {
            uint32_t bits;
            memcpy(&bits, x + i + j, 4);
            moexc__put_u32le(buf + 4 * j, bits);
        }
        crc = moexc__crc32(crc, buf, 4 * chunk);
        i += chunk;
    }
    return crc;
}

static uint32_t moexc__trainer_state_crc(moexc_trainer *t)
{
    uint32_t crc = moexc__floats_crc(0, moexc_model_params(t->model), t->n_params);
    return moexc__floats_crc(crc, t->moments, 2 * t->n_params);
}

#define MOEXC__TRAIN_FORMAT "1"
/* metadata keys, float options as %.9g (exact round trip), integers in decimal */
enum { MOEXC__TRAIN_NKV = 23 };

MOEXC_DEF moexc_status moexc_trainer_save(const moexc_trainer *tc, const char *path, moexc_error *err)
{
    moexc_trainer *t = (moexc_trainer *)tc;   /* reads only: the CRC needs the params pointer */
    const moexc_train_options *o = &t->opt;
    int n_tensors = moexc_model_num_tensors(t->model), k, nkv = 0;
    char vals[MOEXC__TRAIN_NKV][40];
    moexc_st_kv kv[MOEXC__TRAIN_NKV];
    moexc_st_entry *ext;
    char *names;
    size_t name_cap = 0, used = 0;
    moexc_status st;

    for (k = 0; k < n_tensors; k++) name_cap += 2 * (strlen(moexc_model_tensor(t->model, k)->name) + 10);
    ext = (moexc_st_entry *)moexc__calloc((size_t)(2 * n_tensors), sizeof(moexc_st_entry));
    names = (char *)moexc__malloc(name_cap);
    if (!ext || !names) { moexc__free(ext); moexc__free(names); return moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory", path); }
    for (k = 0; k < 2 * n_tensors; k++) {
        const moexc_param_info *pi = moexc_model_tensor(t->model, k % n_tensors);
        int d;
        ext[k].name = names + used;
        used += (size_t)sprintf(names + used, "optim.%c.%s", k < n_tensors ? 'm' : 'v', pi->name) + 1;
        ext[k].data = t->moments + (k < n_tensors ? 0 : t->n_params) + pi->offset;
        ext[k].ndim = pi->ndim;
        for (d = 0; d < pi->ndim; d++) ext[k].shape[d] = pi->shape[d];
    }
#define MOEXC__KV(key_, fmt_, val_) do { sprintf(vals[nkv], fmt_, val_); kv[nkv].key = key_; kv[nkv].value = vals[nkv]; nkv++; } while (0)
    MOEXC__KV("moexc.train.format", "%s", MOEXC__TRAIN_FORMAT);
    MOEXC__KV("moexc.train.step", "%d", t->step);
    MOEXC__KV("moexc.train.tokens", "%.17g", t->tokens);
    MOEXC__KV("moexc.train.rng", "%llu", (unsigned long long)t->rng.state);
    MOEXC__KV("moexc.train.seed", "%llu", (unsigned long long)o->seed);
    MOEXC__KV("moexc.train.data_crc32", "%lu", (unsigned long)t->data_crc);
    MOEXC__KV("moexc.train.data_tokens", "%llu", (unsigned long long)t->data->n);
    MOEXC__KV("moexc.train.state_crc32", "%lu", (unsigned long)moexc__trainer_state_crc(t));
    MOEXC__KV("moexc.train.lr", "%.9g", (double)o->lr);
    MOEXC__KV("moexc.train.min_lr_ratio", "%.9g", (double)o->min_lr_ratio);
    MOEXC__KV("moexc.train.beta1", "%.9g", (double)o->beta1);
    MOEXC__KV("moexc.train.beta2", "%.9g", (double)o->beta2);
    MOEXC__KV("moexc.train.eps", "%.9g", (double)o->eps);
    MOEXC__KV("moexc.train.weight_decay", "%.9g", (double)o->weight_decay);
    MOEXC__KV("moexc.train.grad_clip", "%.9g", (double)o->grad_clip);
    MOEXC__KV("moexc.train.warmup_steps", "%d", o->warmup_steps);
    MOEXC__KV("moexc.train.total_steps", "%d", o->total_steps);
    MOEXC__KV("moexc.train.batch_size", "%d", o->batch_size);
    MOEXC__KV("moexc.train.seq_len", "%d", o->seq_len);
    MOEXC__KV("moexc.train.grad_accum", "%d", o->grad_accum);
    MOEXC__KV("moexc.train.eval_interval", "%d", o->eval_interval);
    MOEXC__KV("moexc.train.eval_batches", "%d", o->eval_batches);
    MOEXC__KV("moexc.train.eval_fraction", "%.9g", (double)o->eval_fraction);
#undef MOEXC__KV
    st = moexc__model_save_with(t->model, path, ext, 2 * n_tensors, kv, nkv, err);
    moexc__free(ext);
    moexc__free(names);
    return st;
}

MOEXC_DEF moexc_status moexc_trainer_resume(moexc_trainer **trainer, moexc_model **model, const char *path,
                                            const moexc_tokens *data, moexc_error *err)
{
    static const char *const float_keys[] = { "lr", "min_lr_ratio", "beta1", "beta2", "eps", "weight_decay",
                                              "grad_clip", "eval_fraction" };
    static const char *const int_keys[] = { "warmup_steps", "total_steps", "batch_size", "seq_len",
                                            "grad_accum", "eval_interval", "eval_batches", "step" };
    moexc_st_file *f = NULL;
    moexc_model *m = NULL;
    moexc_trainer *t = NULL;
    moexc_train_options o;
    float *fopt[8];
    int *iopt[8], step = 0, k, n_tensors;
    uint64_t rng_state, data_crc, data_tokens, state_crc;
    double val = 0.0, tokens = 0.0;
    char key[96];
    const char *fmt;
    moexc_status st;

    *trainer = NULL; *model = NULL;
    if ((st = moexc_st_open(&f, path, err)) != MOEXC_OK) return st;
    fmt = moexc_st_meta(f, "moexc.train.format");
    if (!fmt) { st = moexc__fail(err, MOEXC_ERR_MISSING, "%s: no 'moexc.train.format' metadata: a model file, not a training checkpoint", path); goto fail; }
    if (strcmp(fmt, MOEXC__TRAIN_FORMAT) != 0) { st = moexc__fail(err, MOEXC_ERR_VERSION, "%s: training checkpoint format '%s', this build reads '%s'", path, fmt, MOEXC__TRAIN_FORMAT); goto fail; }
    memset(&o, 0, sizeof(o));
    fopt[0] = &o.lr; fopt[1] = &o.min_lr_ratio; fopt[2] = &o.beta1; fopt[3] = &o.beta2; fopt[4] = &o.eps;
    fopt[5] = &o.weight_decay; fopt[6] = &o.grad_clip; fopt[7] = &o.eval_fraction;
    iopt[0] = &o.warmup_steps; iopt[1] = &o.total_steps; iopt[2] = &o.batch_size; iopt[3] = &o.seq_len;
    iopt[4] = &o.grad_accum; iopt[5] = &o.eval_interval; iopt[6] = &o.eval_batches; iopt[7] = &step;
    for (k = 0; k < 8; k++) {
        int64_t iv;
        sprintf(key, "moexc.train.%s", float_keys[k]);   /* a float32 option: finite, in float range */
        if ((st = moexc__st_meta_number(f, path, key, -FLT_MAX, FLT_MAX, &val, err)) != MOEXC_OK) goto fail;
        *fopt[k] = (float)val;
        sprintf(key, "moexc.train.%s", int_keys[k]);     /* decimal digits, exact */
        if ((st = moexc__st_meta_i64(f, path, key, -INT_MAX, INT_MAX, &iv, err)) != MOEXC_OK) goto fail;
        *iopt[k] = (int)iv;
    }
    if ((st = moexc__st_meta_number(f, path, "moexc.train.tokens", -DBL_MAX, DBL_MAX, &tokens, err)) != MOEXC_OK ||
        (st = moexc__st_meta_u64(f, path, "moexc.train.rng", &rng_state, err)) != MOEXC_OK ||
        (st = moexc__st_meta_u64(f, path, "moexc.train.seed", &o.seed, err)) != MOEXC_OK ||
        (st = moexc__st_meta_u64(f, path, "moexc.train.data_crc32", &data_crc, err)) != MOEXC_OK ||
        (st = moexc__st_meta_u64(f, path, "moexc.train.data_tokens", &data_tokens, err)) != MOEXC_OK ||
        (st = moexc__st_meta_u64(f, path, "moexc.train.state_crc32", &state_crc, err)) != MOEXC_OK)
        goto fail;
    if (step < 0 || step > o.total_steps) { st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: step %d outside [0, total_steps %d]", path, step, o.total_steps); goto fail; }
    if (data_crc > 0xFFFFFFFFu || state_crc > 0xFFFFFFFFu) {
        st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: a CRC-32 in the metadata is above 2^32 - 1", path);
        goto fail;
    }
    if ((st = moexc__model_load_from(f, path, &m, err)) != MOEXC_OK) goto fail;
    if ((st = moexc__trainer_new(&t, m, data, &o, err)) != MOEXC_OK) {   /* the options are the file's: name it */
        if (err) {
            char msg[sizeof(err->message)];
            memcpy(msg, err->message, sizeof(msg));
            moexc__fail(err, st, "%s: %s", path, msg);
        }
        goto fail;
    }
    if (data_tokens != (uint64_t)data->n || data_crc != (uint64_t)t->data_crc) {
        st = moexc__fail(err, MOEXC_ERR_ARG, "%s: trained on other data (%llu tokens, CRC %08lx; given %llu tokens, CRC %08lx)",
                         path, (unsigned long long)data_tokens, (unsigned long)data_crc,
                         (unsigned long long)data->n, (unsigned long)t->data_crc);
        goto fail;
    }
    n_tensors = moexc_model_num_tensors(m);
    for (k = 0; k < 2 * n_tensors; k++) {
        const moexc_param_info *pi = moexc_model_tensor(m, k % n_tensors);
        char name[256];
        if (strlen(pi->name) + 10 > sizeof(name)) { st = moexc__fail(err, MOEXC_ERR_ARG, "%s: tensor name too long", path); goto fail; }
        sprintf(name, "optim.%c.%s", k < n_tensors ? 'm' : 'v', pi->name);
        st = moexc_st_read_f32(f, name, t->moments + (k < n_tensors ? 0 : t->n_params) + pi->offset, pi->ndim, pi->shape, err);
        if (st) goto fail;
    }
    if (moexc__trainer_state_crc(t) != (uint32_t)state_crc) {
        st = moexc__fail(err, MOEXC_ERR_CHECKSUM, "%s: parameters and optimiser moments do not match their CRC-32 (corrupted file)", path);
        goto fail;
    }
    {   /* Adam's moments: finite, the second one >= 0 (its square root divides the step) */
        size_t q;
        for (q = 0; q < 2 * t->n_params; q++)
            if (!isfinite(t->moments[q]) || (q >= t->n_params && t->moments[q] < 0.0f)) {
                st = moexc__fail(err, MOEXC_ERR_NUMERIC, "%s: optimiser moment %s[%lu] = %g is not %s", path,
                                 q < t->n_params ? "m" : "v", (unsigned long)(q % t->n_params), (double)t->moments[q],
                                 q < t->n_params ? "finite" : "finite and >= 0");
                goto fail;
            }
    }
    t->step = step;
    t->tokens = tokens;
    t->rng.state = rng_state;
    moexc_st_close(f);
    *trainer = t; *model = m;
    return MOEXC_OK;
fail:
    moexc_trainer_free(t);
    moexc_model_free(m);
    moexc_st_close(f);
    return st;
}

/* ---- sampling ------------------------------------------------------------ */
static int moexc__cmp_float_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

MOEXC_DEF moexc_status moexc_generate(moexc_model *m, const uint16_t *prompt, int n_prompt, int n_new,
                                      float temperature, int top_k, moexc_rng *rng, uint16_t *out,
                                      moexc_error *err)
{
    const moexc_model_config *c = moexc_model_get_config(m);
    int V = c->vocab_size, ctx = c->context, total = n_prompt + n_new, len, i, v;
    uint16_t *seq;
    float *prob;
    moexc_status st = MOEXC_OK;
    if (n_prompt < 1 || n_new < 0 || !prompt || !out || (temperature > 0 && !rng))
        return moexc__fail(err, MOEXC_ERR_ARG, "generate: need a prompt of >= 1 token (got %d), n_new >= 0 and an rng", n_prompt);
    for (i = 0; i < n_prompt; i++)
        if (prompt[i] >= V) return moexc__fail(err, MOEXC_ERR_ARG, "generate: prompt token %d = %u >= vocabulary %d", i, (unsigned)prompt[i], V);
    seq = (uint16_t *)moexc__calloc((size_t)total, sizeof(uint16_t));
    prob = (float *)moexc__calloc((size_t)V, sizeof(float));
    if (!seq || !prob) { moexc__free(seq); moexc__free(prob); return moexc__fail(err, MOEXC_ERR_NOMEM, "generate: out of memory"); }
    memcpy(seq, prompt, (size_t)n_prompt * sizeof(uint16_t));
    for (len = n_prompt; len < total; len++) {
        int T = MOEXC__MIN(len, ctx), best = 0, keep;
        float thresh;
        const float *z;
        double sum = 0.0, u;
        if ((st = moexc_model_forward(m, seq + len - T, NULL, 1, T, NULL, err)) != MOEXC_OK) break;
        z = moexc_model_logits(m) + (size_t)(T - 1) * V;
        for (v = 1; v < V; v++) if (z[v] > z[best]) best = v;
        if (temperature <= 0) { seq[len] = (uint16_t)best; continue; }
        /* top-k: keep the logits >= the k-th largest */
        keep = (top_k > 0 && top_k < V) ? top_k : V;
        memcpy(prob, z, (size_t)V * sizeof(float));
        qsort(prob, (size_t)V, sizeof(float), moexc__cmp_float_desc);
        thresh = prob[keep - 1];
        for (v = 0; v < V; v++) {   /* softmax(z / temperature) over the kept tokens */
            prob[v] = z[v] >= thresh ? (float)exp(((double)z[v] - z[best]) / temperature) : 0.0f;
            sum += prob[v];
        }
        u = moexc_rng_uniform(rng) * sum;
        seq[len] = (uint16_t)best;
        for (v = 0; v < V; v++) {
            if (prob[v] <= 0) continue;
            if (u < prob[v]) { seq[len] = (uint16_t)v; break; }
            u -= prob[v];
        }
    }
    if (!st) memcpy(out, seq + n_prompt, (size_t)n_new * sizeof(uint16_t));
    moexc__free(seq);
    moexc__free(prob);
    return st;
}
/* ======================================================================== */
/* >>lens: MoE Lens, how experts specialise (SPEC §6)                        */
/* ======================================================================== */
/* Reads the MoE layer's kept activations (moexc__moe_acts) after an
   inference forward: the choices S(t), the gates w, the unweighted expert
   outputs, the residual h entering the FFN and the FFN output. */

#define MOEXC__LENS_CHUNK 64   /* positions decoded at once (scratch 2 x 64 x (d + V)) */

MOEXC_DEF void moexc_lens_free(moexc_lens *s)
{
    if (!s) return;
    moexc__free(s->route);
    moexc__free(s->concentration);
    moexc__free_aligned(s->scratch);
    memset(s, 0, sizeof(*s));
}

MOEXC_DEF moexc_status moexc_lens_init(moexc_lens *s, const moexc_model *m, int n_domains,
                                       const moexc_lens_options *opt, moexc_error *err)
{
    const moexc_model_config *c;
    size_t L, E, DD, K1, n, cur = 0;
    int d;
    if (!s) return moexc__fail(err, MOEXC_ERR_ARG, "lens init: lens is NULL");
    memset(s, 0, sizeof(*s));
    if (!m) return moexc__fail(err, MOEXC_ERR_ARG, "lens init: model is NULL");
    c = moexc_model_get_config(m);
    if (c->ffn != MOEXC_FFN_MOE) return moexc__fail(err, MOEXC_ERR_ARG, "lens init: the model is dense; the lens needs a MoE");
    if (n_domains < 1 || n_domains > MOEXC_MAX_DOMAINS)
        return moexc__fail(err, MOEXC_ERR_ARG, "lens init: n_domains %d outside [1, %d]", n_domains, MOEXC_MAX_DOMAINS);
    if (opt) s->opt = *opt;
    if (s->opt.max_k == 0) s->opt.max_k = c->top_k;
    if (s->opt.max_k < 1 || s->opt.max_k > c->n_experts)
        return moexc__fail(err, MOEXC_ERR_ARG, "lens options: max_k %d not in [1, n_experts = %d]", s->opt.max_k, c->n_experts);
    if (s->opt.seq_len == 0) s->opt.seq_len = c->context;
    if (s->opt.batch_size == 0) s->opt.batch_size = 8;
    if (s->opt.max_seqs == 0) s->opt.max_seqs = 64;
    if (s->opt.eval_fraction == 0.0f) s->opt.eval_fraction = 0.05f;
    if (s->opt.seq_len < 1 || s->opt.seq_len > c->context || s->opt.batch_size < 1 || s->opt.max_seqs < 1)
        return moexc__fail(err, MOEXC_ERR_ARG, "lens options: seq_len %d (context %d), batch_size %d, max_seqs %d out of range",
                           s->opt.seq_len, c->context, s->opt.batch_size, s->opt.max_seqs);
    if (!(s->opt.eval_fraction <= 1.0f))
        return moexc__fail(err, MOEXC_ERR_ARG, "lens options: eval_fraction %g must be <= 1", s->opt.eval_fraction);
    s->n_layers = c->n_layers; s->n_experts = c->n_experts; s->top_k = c->top_k; s->vocab_size = c->vocab_size;
    s->n_domains = n_domains; s->renorm = c->gate == MOEXC_GATE_RENORM;
    s->max_k = s->opt.no_sweep ? 0 : s->opt.max_k;
    for (d = 0; d < n_domains; d++) snprintf(s->domain_names[d], MOEXC_DOMAIN_NAME_MAX, "d%d", d);
    snprintf(s->domain_names[n_domains], MOEXC_DOMAIN_NAME_MAX, "all");
    L = (size_t)s->n_layers; E = (size_t)s->n_experts; DD = (size_t)n_domains + 1; K1 = (size_t)s->max_k + 1;
    /* sums then results, one block: route, coroute, 4 x [L][DD], nll; share, coact, curve, 4 x [L][DD], ppl */
    n = 2 * (L * DD * E + L * DD * E * E + 4 * L * DD + K1 * DD) + L * DD * E;
    s->route = (double *)moexc__calloc(n, sizeof(double));
    s->concentration = (int *)moexc__calloc(L * DD, sizeof(int));
    /* scratch: two rows of V log-probabilities (double), then per chunk position
       single, full, their norms (d each), two logit rows (V each), 1/rms */
    s->scratch = moexc__alloc_floats(4 * (size_t)c->vocab_size +
                                     (size_t)MOEXC__LENS_CHUNK * (4 * (size_t)c->d_model + 2 * (size_t)c->vocab_size + 1));
    if (!s->route || !s->concentration || !s->scratch) {
        moexc_lens_free(s);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "lens init: out of memory (%lu sums)", (unsigned long)n);
    }
#define MOEXC__LENS_TAKE(p, cnt) (p = s->route + cur, cur += (cnt))
    MOEXC__LENS_TAKE(s->route, L * DD * E);
    MOEXC__LENS_TAKE(s->coroute, L * DD * E * E);
    MOEXC__LENS_TAKE(s->cos_sum, L * DD);
    MOEXC__LENS_TAKE(s->ffn_cos_sum, L * DD);
    MOEXC__LENS_TAKE(s->agree_sum, L * DD);
    MOEXC__LENS_TAKE(s->kl_sum, L * DD);
    MOEXC__LENS_TAKE(s->nll_sum, K1 * DD);
    MOEXC__LENS_TAKE(s->share, L * DD * E);
    MOEXC__LENS_TAKE(s->coact, L * DD * E * E);
    MOEXC__LENS_TAKE(s->curve, L * DD * E);
    MOEXC__LENS_TAKE(s->cosine, L * DD);
    MOEXC__LENS_TAKE(s->ffn_cosine, L * DD);
    MOEXC__LENS_TAKE(s->agreement, L * DD);
    MOEXC__LENS_TAKE(s->kl, L * DD);
    MOEXC__LENS_TAKE(s->ppl, K1 * DD);
#undef MOEXC__LENS_TAKE
    MOEXC_ASSERT(cur == n);
    moexc_lens_finish(s);
    return MOEXC_OK;
}

/* Per-sequence mean NLL of the last forward's logits, per domain of the
   position (and pooled), added to row of nll_sum; counts sequences if asked. */
static void moexc__lens_nll(moexc_lens *s, const moexc_model *m, const uint16_t *targets, const uint8_t *domains,
                            int B, int T, int row, int count_seqs)
{
    const float *logits = moexc_model_logits(m);
    int V = s->vocab_size, D = s->n_domains, DD = D + 1, b, t, v, d;
    double *acc = s->nll_sum + (size_t)row * DD;
    for (b = 0; b < B; b++) {
        double sum[MOEXC_MAX_DOMAINS + 1], cnt[MOEXC_MAX_DOMAINS + 1];
        for (d = 0; d < DD; d++) sum[d] = cnt[d] = 0.0;
        for (t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            const float *z = logits + i * V;
            double mx = z[0], e = 0.0, nll;
            /* NLL_t = logsumexp(z_t) - z_t[target] */
            for (v = 1; v < V; v++) if (z[v] > mx) mx = z[v];
            for (v = 0; v < V; v++) e += exp((double)z[v] - mx);
            nll = mx + log(e) - (double)z[targets[i]];
            sum[domains[i]] += nll; cnt[domains[i]] += 1.0;
            sum[D] += nll; cnt[D] += 1.0;
        }
        /* geometric mean of per-sequence perplexities: exp(mean_s mean_t NLL) */
        for (d = 0; d < DD; d++)
            if (cnt[d] > 0) {
                acc[d] += sum[d] / cnt[d];
                if (count_seqs) s->seqs[d] += 1.0;
            }
    }
}

/* log-softmax of a row in double: lp = z - logsumexp(z); returns the arg-max
   (lowest index on ties). */
static int moexc__lens_logsoftmax(double *lp, const float *z, int V)
{
    double mx = z[0], e = 0.0, lse;
    int v, best = 0;
    for (v = 1; v < V; v++) if (z[v] > mx) { mx = z[v]; best = v; }
    for (v = 0; v < V; v++) e += exp((double)z[v] - mx);
    lse = mx + log(e);
    for (v = 0; v < V; v++) lp[v] = (double)z[v] - lse;
    return best;
}

static double moexc__lens_cos(const float *a, const float *b, int d)
{
    double ab = 0.0, aa = 0.0, bb = 0.0;
    int i;
    for (i = 0; i < d; i++) { ab += (double)a[i] * b[i]; aa += (double)a[i] * a[i]; bb += (double)b[i] * b[i]; }
    if (aa == 0.0 || bb == 0.0) return aa == bb ? 1.0 : 0.0;
    return ab / sqrt(aa * bb);
}

/* Routing counts and single-expert early decoding of the last (unforced) forward. */
static void moexc__lens_layers(moexc_lens *s, moexc_model *m, const uint8_t *domains, int N)
{
    const moexc_model_config *c = &m->cfg;
    int L = s->n_layers, E = s->n_experts, k = c->top_k, D = s->n_domains, DD = D + 1, V = s->vocab_size;
    int d = c->d_model, l, t, i, j, v;
    double *lp_s = (double *)(void *)s->scratch, *lp_f = lp_s + V;
    float *single = s->scratch + 4 * (size_t)V, *full = single + (size_t)MOEXC__LENS_CHUNK * d;
    float *single_n = full + (size_t)MOEXC__LENS_CHUNK * d, *full_n = single_n + (size_t)MOEXC__LENS_CHUNK * d;
    float *z_single = full_n + (size_t)MOEXC__LENS_CHUNK * d, *z_full = z_single + (size_t)MOEXC__LENS_CHUNK * V;
    float *rms = z_full + (size_t)MOEXC__LENS_CHUNK * V;
    for (t = 0; t < N; t++) { s->tokens[domains[t]] += 1.0; s->tokens[D] += 1.0; }
    for (l = 0; l < L; l++) {
        const moexc__moe_acts *a = &m->acts[l].moe;
        const float *r = m->acts[l].h, *ffn = m->acts[l].ffn_out;
        int t0;
        /* routing: route[D][e] += 1{e in S(t)},  coroute[D][i][j] += 1{i, j in S(t)} */
        for (t = 0; t < N; t++) {
            const int *ch = a->choice + (size_t)t * k;
            int dd[2];
            dd[0] = domains[t]; dd[1] = D;
            for (v = 0; v < 2; v++) {
                double *rt = s->route + ((size_t)l * DD + dd[v]) * E;
                double *co = s->coroute + ((size_t)l * DD + dd[v]) * E * E;
                for (i = 0; i < k; i++) {
                    rt[ch[i]] += 1.0;
                    for (j = 0; j < k; j++) co[(size_t)ch[i] * E + ch[j]] += 1.0;
                }
            }
        }
        /* early decoding, MOEXC__LENS_CHUNK positions at a time */
        for (t0 = 0; t0 < N; t0 += MOEXC__LENS_CHUNK) {
            int n = N - t0 < MOEXC__LENS_CHUNK ? N - t0 : MOEXC__LENS_CHUNK;
            for (t = 0; t < n; t++) {
                size_t tt = (size_t)(t0 + t);
                /* the top-weighted expert's gate as the layer would run with k' = 1:
                   w_top1 = p_top1 (raw gate) or 1 (renormalised over S' = {top1}) */
                float w1 = s->renorm ? 1.0f : a->weight[tt * k];
                const float *e1 = a->eo + (size_t)a->token_assign[tt * k] * d;
                const float *rt = r + tt * d, *ft = ffn + tt * d;
                float *st = single + (size_t)t * d, *fu = full + (size_t)t * d;
                double cf;
                int dom = domains[tt];
                /* single = r + w_top1 Expert_top1(u),  full = r + sum_{S(t)} w_e Expert_e(u) */
                for (i = 0; i < d; i++) { st[i] = rt[i] + w1 * e1[i]; fu[i] = rt[i] + ft[i]; }
                cf = moexc__lens_cos(st, fu, d);
                s->cos_sum[(size_t)l * DD + dom] += cf; s->cos_sum[(size_t)l * DD + D] += cf;
                /* the FFN outputs alone: cos(w_top1 E_top1, sum w E), in single_n as scratch */
                for (i = 0; i < d; i++) single_n[i] = w1 * e1[i];
                cf = moexc__lens_cos(single_n, ft, d);
                s->ffn_cos_sum[(size_t)l * DD + dom] += cf; s->ffn_cos_sum[(size_t)l * DD + D] += cf;
            }
            /* decode final_norm(.) of both with the LM head */
            moexc__rmsnorm_forward(single_n, rms, single, m->w.norm, n, d);
            moexc__rmsnorm_forward(full_n, rms, full, m->w.norm, n, d);
            moexc_linear_forward(z_single, single_n, m->w.lm_head, NULL, n, V, d);
            moexc_linear_forward(z_full, full_n, m->w.lm_head, NULL, n, V, d);
            for (t = 0; t < n; t++) {
                int dom = domains[t0 + t], a1, a2;
                double kl = 0.0;
                a1 = moexc__lens_logsoftmax(lp_s, z_single + (size_t)t * V, V);
                a2 = moexc__lens_logsoftmax(lp_f, z_full + (size_t)t * V, V);
                /* KL(full || single) = sum_v p_full (log p_full - log p_single) */
                for (v = 0; v < V; v++) kl += exp(lp_f[v]) * (lp_f[v] - lp_s[v]);
                s->kl_sum[(size_t)l * DD + dom] += kl; s->kl_sum[(size_t)l * DD + D] += kl;
                s->agree_sum[(size_t)l * DD + dom] += a1 == a2; s->agree_sum[(size_t)l * DD + D] += a1 == a2;
            }
        }
    }
}

MOEXC_DEF moexc_status moexc_lens_add(moexc_lens *s, moexc_model *m, const uint16_t *inputs,
                                      const uint16_t *targets, const uint8_t *domains, int B, int T,
                                      moexc_error *err)
{
    const moexc_model_config *c;
    int saved, kk, N, t;
    moexc_status st;
    if (!s || !s->route || !m || !inputs || !targets || !domains)
        return moexc__fail(err, MOEXC_ERR_ARG, "lens add: lens (initialised), model, inputs, targets and domains are required");
    c = &m->cfg;
    if (c->ffn != MOEXC_FFN_MOE || c->n_layers != s->n_layers || c->n_experts != s->n_experts ||
        c->top_k != s->top_k || c->vocab_size != s->vocab_size)
        return moexc__fail(err, MOEXC_ERR_ARG, "lens add: the model (L %d, E %d, k %d, V %d) is not the one the lens was sized for "
                           "(L %d, E %d, k %d, V %d)", c->n_layers, c->n_experts, c->top_k, c->vocab_size,
                           s->n_layers, s->n_experts, s->top_k, s->vocab_size);
    if (B < 1 || T < 1 || T > c->context)
        return moexc__fail(err, MOEXC_ERR_ARG, "lens add: B %d, T %d (context %d) out of range", B, T, c->context);
    N = B * T;
    for (t = 0; t < N; t++) {
        if (domains[t] >= s->n_domains)
            return moexc__fail(err, MOEXC_ERR_ARG, "lens add: domains[%d] = %d >= n_domains %d", t, domains[t], s->n_domains);
        if (targets[t] >= c->vocab_size)
            return moexc__fail(err, MOEXC_ERR_ARG, "lens add: targets[%d] = %d >= vocab_size %d", t, targets[t], c->vocab_size);
    }
    saved = m->active_k;
    m->active_k = 0;                                   /* unforced: top_k */
    st = moexc_model_forward(m, inputs, NULL, B, T, NULL, err);
    if (st == MOEXC_OK) {
        moexc__lens_layers(s, m, domains, N);
        moexc__lens_nll(s, m, targets, domains, B, T, 0, 1);
    }
    /* perplexity with k' experts forced in every MoE layer */
    for (kk = 1; st == MOEXC_OK && kk <= s->max_k; kk++) {
        if ((st = moexc_model_set_active_experts(m, kk, err)) != MOEXC_OK) break;
        if ((st = moexc_model_forward(m, inputs, NULL, B, T, NULL, err)) != MOEXC_OK) break;
        moexc__lens_nll(s, m, targets, domains, B, T, kk, 0);
    }
    m->active_k = saved;
    m->layers_done = 0;          /* the router outputs of the last forward had another k */
    m->backward_ready = 0;
    return st;
}

/* Held-out windows of T+1 tokens inside one domain's tail (the trainer's
   split: per domain, the last floor(count eval_fraction) tokens in stream
   order; runs of one domain's held positions cut with stride T), up to max_seqs per domain evenly spaced, interleaved by domain
   (round robin) so that batches mix domains. *starts is freed by the caller. */
static moexc_status moexc__heldout_windows(const moexc_tokens *data, int T, float eval_fraction, int max_seqs,
                                           const char *what, size_t **starts_out, size_t *n_out, moexc_error *err)
{
    size_t count[MOEXC_MAX_DOMAINS] = {0}, cut[MOEXC_MAX_DOMAINS], seen[MOEXC_MAX_DOMAINS];
    size_t nwin[MOEXC_MAX_DOMAINS] = {0}, first[MOEXC_MAX_DOMAINS + 1], total = 0, i, start = 0, T1 = (size_t)T + 1, n = 0, w;
    size_t *all = NULL, *pick = NULL;
    int D = data->n_domains, d, pass, held_prev = 0, more;
    *starts_out = NULL; *n_out = 0;
    for (i = 0; i < data->n; i++) {
        if (data->domains[i] >= D)
            return moexc__fail(err, MOEXC_ERR_ARG, "%s: token %lu: domain %d >= %d", what, (unsigned long)i, data->domains[i], D);
        count[data->domains[i]]++;
    }
    for (d = 0; d < D; d++)
        cut[d] = eval_fraction < 0 ? 0 : count[d] - (size_t)floor((double)count[d] * eval_fraction);
    for (pass = 0; pass < 2; pass++) {
        size_t fill[MOEXC_MAX_DOMAINS] = {0};
        memset(seen, 0, sizeof(seen));
        held_prev = 0;
        for (i = 0; i <= data->n; i++) {
            int held = 0, same;
            if (i < data->n) { d = data->domains[i]; held = seen[d]++ >= cut[d]; }
            same = i > 0 && i < data->n && held && held_prev && data->domains[i] == data->domains[i - 1];
            if (!same && i > 0 && held_prev) {
                int rd = data->domains[start];
                size_t p;
                for (p = start; p + T1 <= i; p += (size_t)T) {
                    if (pass) all[first[rd] + fill[rd]++] = p;
                    else nwin[rd]++;
                }
            }
            if (!same && held) start = i;
            held_prev = held;
        }
        if (pass == 0) {
            for (d = 0; d < D; d++) { first[d] = total; total += nwin[d]; }
            if (total == 0)
                return moexc__fail(err, MOEXC_ERR_ARG, "%s: no window of %d tokens inside one domain's held-out tail "
                                   "(eval_fraction %g of %lu tokens; use a shorter seq_len or a larger eval_fraction)",
                                   what, T + 1, eval_fraction, (unsigned long)data->n);
            all = (size_t *)moexc__calloc(total, sizeof(size_t));
            pick = (size_t *)moexc__calloc(total, sizeof(size_t));
            if (!all || !pick) { moexc__free(all); moexc__free(pick); return moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory (%lu windows)", what, (unsigned long)total); }
        }
    }
    for (w = 0, more = 1; more; w++) {       /* round robin over domains, evenly spaced within each */
        more = 0;
        for (d = 0; d < D; d++) {
            size_t want = nwin[d] < (size_t)max_seqs ? nwin[d] : (size_t)max_seqs;
            if (w < want) { pick[n++] = all[first[d] + (size_t)((double)w * (double)nwin[d] / (double)want)]; more = 1; }
        }
    }
    moexc__free(all);
    *starts_out = pick; *n_out = n;
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_lens_run(moexc_lens *s, moexc_model *m, const moexc_tokens *data, moexc_error *err)
{
    size_t *pick = NULL, n_pick = 0, w;
    uint16_t *in = NULL, *tg = NULL;
    uint8_t *lab = NULL;
    int T, B, D, d;
    moexc_status st = MOEXC_OK;
    if (!s || !s->route || !m || !data || !data->tokens || !data->domains)
        return moexc__fail(err, MOEXC_ERR_ARG, "lens run: lens (initialised), model and data are required");
    T = s->opt.seq_len; B = s->opt.batch_size; D = data->n_domains;
    if (D != s->n_domains)
        return moexc__fail(err, MOEXC_ERR_ARG, "lens run: the data has %d domains, the lens %d", D, s->n_domains);
    for (d = 0; d < D; d++) snprintf(s->domain_names[d], MOEXC_DOMAIN_NAME_MAX, "%s", data->domain_names[d]);
    /* up to max_seqs held-out windows per domain, evenly spaced (deterministic) */
    if ((st = moexc__heldout_windows(data, T, s->opt.eval_fraction, s->opt.max_seqs, "lens run", &pick, &n_pick, err)) != MOEXC_OK)
        return st;
    in = (uint16_t *)moexc__calloc((size_t)B * T, sizeof(uint16_t));
    tg = (uint16_t *)moexc__calloc((size_t)B * T, sizeof(uint16_t));
    lab = (uint8_t *)moexc__calloc((size_t)B * T, 1);
    if (!in || !tg || !lab) { st = moexc__fail(err, MOEXC_ERR_NOMEM, "lens run: out of memory (batch)"); goto done; }
    for (w = 0; w < n_pick && st == MOEXC_OK; ) {
        int nb = (int)(n_pick - w < (size_t)B ? n_pick - w : (size_t)B), b, t;
        for (b = 0; b < nb; b++, w++)
            for (t = 0; t < T; t++) {
                size_t p = pick[w] + (size_t)t;
                in[b * T + t] = data->tokens[p];
                tg[b * T + t] = data->tokens[p + 1];
                lab[b * T + t] = data->domains[p];
            }
        st = moexc_lens_add(s, m, in, tg, lab, nb, T, err);
        if (st == MOEXC_OK && s->opt.progress) s->opt.progress((int)w, (int)n_pick, s->opt.user);
    }
    if (st == MOEXC_OK) moexc_lens_finish(s);
done:
    moexc__free(pick); moexc__free(in); moexc__free(tg); moexc__free(lab);
    return st;
}

MOEXC_DEF void moexc_lens_finish(moexc_lens *s)
{
    int L = s->n_layers, E = s->n_experts, DD = s->n_domains + 1, K1 = s->max_k + 1, l, d, i, j;
    if (!s->route) return;
    for (l = 0; l < L; l++)
        for (d = 0; d < DD; d++) {
            size_t ld = (size_t)l * DD + d;
            const double *rt = s->route + ld * E, *co = s->coroute + ld * E * E;
            double n = s->tokens[d], slots = 0.0, cum = 0.0, *sorted = s->curve + ld * E;
            for (i = 0; i < E; i++) {
                /* share_e = 100 · #{t in D : e in S(t)} / #D */
                s->share[ld * E + i] = n > 0 ? 100.0 * rt[i] / n : NAN;
                /* C[i][j] = 100 · #{t : i, j in S(t)} / #{t : i in S(t)} */
                for (j = 0; j < E; j++) s->coact[(ld * E + i) * E + j] = rt[i] > 0 ? 100.0 * co[(size_t)i * E + j] / rt[i] : NAN;
                slots += rt[i];
            }
            /* concentration: experts by slot share, descending; the smallest m with
               sum of the m largest shares >= 50% */
            for (i = 0; i < E; i++) {
                double x = rt[i];
                for (j = i; j > 0 && sorted[j - 1] < x; j--) sorted[j] = sorted[j - 1];
                sorted[j] = x;
            }
            s->concentration[ld] = 0;
            for (i = 0; i < E; i++) {
                cum += sorted[i];                       /* curve_m = 100 · (top-m slots) / slots */
                if (slots > 0 && !s->concentration[ld] && 2.0 * cum >= slots) s->concentration[ld] = i + 1;
                sorted[i] = slots > 0 ? 100.0 * cum / slots : NAN;
            }
            s->cosine[ld] = n > 0 ? s->cos_sum[ld] / n : NAN;
            s->ffn_cosine[ld] = n > 0 ? s->ffn_cos_sum[ld] / n : NAN;
            s->agreement[ld] = n > 0 ? s->agree_sum[ld] / n : NAN;
            s->kl[ld] = n > 0 ? s->kl_sum[ld] / n : NAN;
        }
    /* perplexity = exp(mean over sequences of the sequence's mean NLL) */
    for (i = 0; i < K1; i++)
        for (d = 0; d < DD; d++)
            s->ppl[(size_t)i * DD + d] = s->seqs[d] > 0 ? exp(s->nll_sum[(size_t)i * DD + d] / s->seqs[d]) : NAN;
}

/* ---- reports: tables, CSV, JSON, plots ----------------------------------- */
MOEXC_DEF void moexc_lens_print(FILE *out, const moexc_lens *s)
{
    int L = s->n_layers, E = s->n_experts, D = s->n_domains, DD = D + 1, l, d, i, j, kk;
    fprintf(out, "MoE Lens: %d MoE layers, E = %d experts, k = %d (%s gate); tokens:", L, E, s->top_k,
            s->renorm ? "renormalised" : "raw");
    for (d = 0; d < DD; d++) fprintf(out, " %s %.0f", s->domain_names[d], s->tokens[d]);
    fprintf(out, "\n\nrouting share: %% of the domain's tokens whose top-k holds the expert (uniform %.1f);\n"
                 "m50 = fewest experts taking >= 50%% of routing slots (uniform %d), top = their share\n",
            100.0 * s->top_k / E, (E + 1) / 2);
    fprintf(out, "  layer %-10s", "domain");
    for (i = 0; i < E; i++) fprintf(out, " %5s%d", "e", i);
    fprintf(out, "  m50   top\n");
    for (l = 0; l < L; l++)
        for (d = 0; d < DD; d++) {
            size_t ld = (size_t)l * DD + d;
            int c = s->concentration[ld];
            fprintf(out, "  %5d %-10s", l, s->domain_names[d]);
            for (i = 0; i < E; i++) fprintf(out, " %6.1f", s->share[ld * E + i]);
            fprintf(out, "  %3d %5.1f\n", c, c > 0 ? s->curve[ld * E + c - 1] : NAN);
        }
    fprintf(out, "\nco-activation C[i][j], %% of the tokens routed to i also routed to j (all domains)\n");
    for (l = 0; l < L; l++) {
        size_t ld = (size_t)l * DD + D;
        fprintf(out, "  layer %d   ", l);
        for (j = 0; j < E; j++) fprintf(out, " %4s%d", "j=", j);
        fprintf(out, "\n");
        for (i = 0; i < E; i++) {
            fprintf(out, "    i=%-5d", i);
            for (j = 0; j < E; j++) fprintf(out, " %6.1f", s->coact[(ld * E + i) * E + j]);
            fprintf(out, "\n");
        }
    }
    fprintf(out, "\nsingle-expert early decoding: r + w_top1 E_top1(u) against r + sum_topk w_e E_e(u)\n"
                 "  (cos: hidden states; ffn cos: the FFN outputs alone; top-1 and KL(full || single):\n"
                 "   the LM head's decoding of final_norm of both)\n");
    fprintf(out, "  layer %-10s %8s %8s %8s %9s\n", "domain", "cos", "ffn cos", "top-1", "KL nats");
    for (l = 0; l < L; l++)
        for (d = 0; d < DD; d++) {
            size_t ld = (size_t)l * DD + d;
            fprintf(out, "  %5d %-10s %8.4f %8.4f %8.4f %9.5f\n", l, s->domain_names[d], s->cosine[ld],
                    s->ffn_cosine[ld], s->agreement[ld], s->kl[ld]);
        }
    if (s->max_k > 0) {
        fprintf(out, "\nperplexity per domain, geometric mean over sequences, with k' experts forced in every MoE layer\n");
        fprintf(out, "  %-10s %6s %10s", "domain", "seqs", "unforced");
        for (kk = 1; kk <= s->max_k; kk++) fprintf(out, "  %6s%-3d", "k'=", kk);
        fprintf(out, "  k'=1 vs unforced\n");
        for (d = 0; d < DD; d++) {
            double base = s->ppl[d];
            fprintf(out, "  %-10s %6.0f %10.4f", s->domain_names[d], s->seqs[d], base);
            for (kk = 1; kk <= s->max_k; kk++) fprintf(out, "  %9.4f", s->ppl[(size_t)kk * DD + d]);
            fprintf(out, "  %+.2f%%\n", 100.0 * (s->ppl[(size_t)DD + d] / base - 1.0));
        }
    }
}

static void moexc__lens_csv_row(FILE *f, const char *metric, int layer, const char *domain, int k, int i, int j, double v)
{
    fprintf(f, "%s,", metric);
    if (layer >= 0) fprintf(f, "%d", layer);
    fprintf(f, ",%s,", domain);
    if (k >= 0) fprintf(f, "%d", k);
    fputc(',', f);
    if (i >= 0) fprintf(f, "%d", i);
    fputc(',', f);
    if (j >= 0) fprintf(f, "%d", j);
    fputc(',', f);
    if (v == v) fprintf(f, "%.9g", v);
    fputc('\n', f);
}

MOEXC_DEF moexc_status moexc_lens_write_csv(const moexc_lens *s, const char *path, moexc_error *err)
{
    int L = s->n_layers, E = s->n_experts, DD = s->n_domains + 1, l, d, i, j, kk;
    moexc__atomic_file af;
    moexc_status st = moexc__atomic_open(&af, path, err);
    if (st != MOEXC_OK) return st;
    fputs("metric,layer,domain,k,i,j,value\n", af.f);
    for (l = 0; l < L; l++)
        for (d = 0; d < DD; d++) {
            size_t ld = (size_t)l * DD + d;
            const char *dn = s->domain_names[d];
            for (i = 0; i < E; i++) moexc__lens_csv_row(af.f, "share", l, dn, -1, i, -1, s->share[ld * E + i]);
            for (i = 0; i < E; i++)
                for (j = 0; j < E; j++) moexc__lens_csv_row(af.f, "coact", l, dn, -1, i, j, s->coact[(ld * E + i) * E + j]);
            for (i = 0; i < E; i++) moexc__lens_csv_row(af.f, "curve", l, dn, -1, i + 1, -1, s->curve[ld * E + i]);
            moexc__lens_csv_row(af.f, "concentration", l, dn, -1, -1, -1,
                                s->concentration[ld] > 0 ? (double)s->concentration[ld] : NAN);
            moexc__lens_csv_row(af.f, "cosine", l, dn, -1, -1, -1, s->cosine[ld]);
            moexc__lens_csv_row(af.f, "ffn_cosine", l, dn, -1, -1, -1, s->ffn_cosine[ld]);
            moexc__lens_csv_row(af.f, "top1_agreement", l, dn, -1, -1, -1, s->agreement[ld]);
            moexc__lens_csv_row(af.f, "kl", l, dn, -1, -1, -1, s->kl[ld]);
        }
    for (d = 0; d < DD; d++)
        for (kk = 0; kk <= s->max_k; kk++)
            moexc__lens_csv_row(af.f, "ppl", -1, s->domain_names[d], kk, -1, -1, s->ppl[(size_t)kk * DD + d]);
    return moexc__atomic_commit(&af, err);
}

static void moexc__lens_json_num(FILE *f, double v)
{
    if (v == v && v < HUGE_VAL && v > -HUGE_VAL) fprintf(f, "%.9g", v); else fputs("null", f);
}
static void moexc__lens_json_str(FILE *f, const char *str)
{
    moexc__sb sb;
    memset(&sb, 0, sizeof(sb));
    moexc__sb_json_string(&sb, str);
    fputs(sb.oom || !sb.buf ? "null" : sb.buf, f);
    moexc__free(sb.buf);
}
static void moexc__lens_json_array(FILE *f, const double *x, int n)
{
    int i;
    fputc('[', f);
    for (i = 0; i < n; i++) { if (i) fputs(", ", f); moexc__lens_json_num(f, x[i]); }
    fputc(']', f);
}

MOEXC_DEF moexc_status moexc_lens_write_json(const moexc_lens *s, const char *name, const char *path, moexc_error *err)
{
    int L = s->n_layers, E = s->n_experts, DD = s->n_domains + 1, l, d, i, kk;
    moexc__atomic_file af;
    moexc_status st = moexc__atomic_open(&af, path, err);
    FILE *f;
    if (st != MOEXC_OK) return st;
    f = af.f;
    fputs("{\n  \"name\": ", f);
    if (name) moexc__lens_json_str(f, name); else fputs("null", f);
    fprintf(f, ",\n  \"n_layers\": %d,\n  \"n_experts\": %d,\n  \"top_k\": %d,\n  \"gate\": \"%s\",\n  \"domains\": [",
            L, E, s->top_k, s->renorm ? "renorm" : "raw");
    for (d = 0; d < DD; d++) { if (d) fputs(", ", f); moexc__lens_json_str(f, s->domain_names[d]); }
    fputs("],\n  \"tokens\": ", f);
    moexc__lens_json_array(f, s->tokens, DD);
    fputs(",\n  \"sequences\": ", f);
    moexc__lens_json_array(f, s->seqs, DD);
    fputs(",\n  \"layers\": [", f);
    for (l = 0; l < L; l++) {
        fprintf(f, "%s\n    {\"layer\": %d, \"domains\": {", l ? "," : "", l);
        for (d = 0; d < DD; d++) {
            size_t ld = (size_t)l * DD + d;
            fprintf(f, "%s\n      ", d ? "," : "");
            moexc__lens_json_str(f, s->domain_names[d]);
            fputs(": {\"share\": ", f);
            moexc__lens_json_array(f, s->share + ld * E, E);
            fputs(", \"coact\": [", f);
            for (i = 0; i < E; i++) {
                if (i) fputs(", ", f);
                moexc__lens_json_array(f, s->coact + (ld * E + i) * E, E);
            }
            fputs("], \"curve\": ", f);
            moexc__lens_json_array(f, s->curve + ld * E, E);
            fputs(", \"concentration\": ", f);
            if (s->concentration[ld] > 0) fprintf(f, "%d", s->concentration[ld]); else fputs("null", f);
            fputs(", \"cosine\": ", f); moexc__lens_json_num(f, s->cosine[ld]);
            fputs(", \"ffn_cosine\": ", f); moexc__lens_json_num(f, s->ffn_cosine[ld]);
            fputs(", \"top1_agreement\": ", f); moexc__lens_json_num(f, s->agreement[ld]);
            fputs(", \"kl\": ", f); moexc__lens_json_num(f, s->kl[ld]);
            fputs("}", f);
        }
        fputs("}}", f);
    }
    fputs("\n  ],\n  \"perplexity\": {\"k\": [", f);
    for (kk = 1; kk <= s->max_k; kk++) fprintf(f, "%s%d", kk > 1 ? ", " : "", kk);
    fputs("], \"unforced\": {", f);
    for (d = 0; d < DD; d++) {
        if (d) fputs(", ", f);
        moexc__lens_json_str(f, s->domain_names[d]);
        fputs(": ", f);
        moexc__lens_json_num(f, s->ppl[d]);
    }
    fputs("}, \"forced\": {", f);
    for (d = 0; d < DD; d++) {
        if (d) fputs(", ", f);
        moexc__lens_json_str(f, s->domain_names[d]);
        fputs(": [", f);
        for (kk = 1; kk <= s->max_k; kk++) {
            if (kk > 1) fputs(", ", f);
            moexc__lens_json_num(f, s->ppl[(size_t)kk * DD + d]);
        }
        fputs("]", f);
    }
    fputs("}}\n}\n", f);
    return moexc__atomic_commit(&af, err);
}

/* Panels of a grid of `cols` columns over the canvas. */
static void moexc__lens_panel(moexc_plot_options *po, const moexc_canvas *c, int index, int n, int cols)
{
    int rows = (n + cols - 1) / cols;
    po->width = c->width / cols;
    po->height = c->height / rows;
    po->x = (index % cols) * po->width;
    po->y = (index / cols) * po->height;
}

static moexc_status moexc__lens_emit(const moexc_canvas *cv, const char *dir, const char *prefix, const char *name,
                                     moexc_png_writer write, void *user, int *n_written, moexc_error *err)
{
    char path[4096];
    int n = snprintf(path, sizeof(path), "%s%s%s%s", dir ? dir : "", dir && *dir ? "/" : "", prefix ? prefix : "", name);
    if (n < 0 || (size_t)n >= sizeof(path)) return moexc__fail(err, MOEXC_ERR_ARG, "lens plots: path too long (%s)", name);
    if (write(path, cv, user) != 0) return moexc__fail(err, MOEXC_ERR_IO, "lens plots: cannot write %s", path);
    if (n_written) (*n_written)++;
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_lens_write_plots(const moexc_lens *s, const char *dir, const char *prefix,
                                              moexc_png_writer write, void *user, int *n_written,
                                              moexc_error *err)
{
    int L = s->n_layers, E = s->n_experts, D = s->n_domains, DD = D + 1, l, d, i, kk, cols = DD > 1 ? 2 : 1;
    int max_series = MOEXC__MAX(L, DD) + 1;
    moexc_canvas cv;
    moexc_plot_options po;
    moexc_status st = MOEXC_OK;
    char title[160], name[64], (*labels)[48] = NULL;
    float *buf = NULL;
    moexc_series *ser = NULL;
    size_t nb = (size_t)(4 * L + 2 * E + 2 * (s->max_k + 1)) * (size_t)max_series + (size_t)E * E + 64;
    if (n_written) *n_written = 0;
    if (!write) return moexc__fail(err, MOEXC_ERR_ARG, "lens plots: no PNG writer given");
    memset(&cv, 0, sizeof(cv));
    buf = (float *)moexc__calloc(nb, sizeof(float));
    ser = (moexc_series *)moexc__calloc((size_t)max_series, sizeof(moexc_series));
    labels = (char (*)[48])moexc__calloc((size_t)max_series, sizeof(*labels));
    if (!buf || !ser || !labels) { st = moexc__fail(err, MOEXC_ERR_NOMEM, "lens plots: out of memory"); goto done; }
    if ((st = moexc_canvas_init(&cv, 1000, DD > 2 ? 900 : 500, err)) != MOEXC_OK) goto done;

    /* co-activation heatmaps: one figure per layer, a panel per domain */
    for (l = 0; l < L; l++) {
        moexc_canvas_clear(&cv, 0xFFFFFFu);
        for (d = 0; d < DD && st == MOEXC_OK; d++) {
            size_t ld = (size_t)l * DD + d;
            for (i = 0; i < E * E; i++) buf[i] = (float)s->coact[ld * E * E + i];
            memset(&po, 0, sizeof(po));
            moexc__lens_panel(&po, &cv, d, DD, cols);
            snprintf(title, sizeof(title), "Layer %d, %s: C[i][j] %%", l, s->domain_names[d]);
            po.title = title;
            po.x_label = "j (also routed to)";
            po.y_label = "i (routed to)";
            po.z_min = 0.0; po.z_max = 100.0;
            po.annotate = E <= 12;
            po.value_format = "%.0f";
            po.font_scale = E <= 12 ? 2 : 1;
            st = moexc_plot_heatmap(&cv, buf, E, E, NULL, NULL, &po, err);
        }
        snprintf(name, sizeof(name), "coact_L%d.png", l);
        if (st == MOEXC_OK) st = moexc__lens_emit(&cv, dir, prefix, name, write, user, n_written, err);
        if (st != MOEXC_OK) goto done;
    }

    /* concentration curves: a panel per domain, a line per layer, uniform for reference */
    moexc_canvas_clear(&cv, 0xFFFFFFu);
    {
        float *x = buf, *y = buf + E, *uni = buf + (size_t)E * (L + 1);
        for (i = 0; i < E; i++) { x[i] = (float)(i + 1); uni[i] = (float)(100.0 * (i + 1) / E); }
        for (d = 0; d < DD && st == MOEXC_OK; d++) {
            int n = 0;
            for (l = 0; l < L; l++) {
                size_t ld = (size_t)l * DD + d;
                for (i = 0; i < E; i++) y[(size_t)l * E + i] = (float)s->curve[ld * E + i];
                snprintf(labels[n], sizeof(labels[n]), "layer %d (m50 %d)", l, s->concentration[ld]);
                ser[n].x = x; ser[n].y = y + (size_t)l * E; ser[n].n = E; ser[n].label = labels[n];
                n++;
            }
            ser[n].x = x; ser[n].y = uni; ser[n].n = E; ser[n].label = "uniform"; n++;
            memset(&po, 0, sizeof(po));
            moexc__lens_panel(&po, &cv, d, DD, cols);
            snprintf(title, sizeof(title), "%s: top-m share", s->domain_names[d]);
            po.title = title;
            po.x_label = "m (experts, most used first)";
            po.y_label = "% of routing slots";
            po.y_min = 0.0; po.y_max = 100.0;
            st = moexc_plot_lines(&cv, ser, n, &po, err);
        }
        if (st == MOEXC_OK) st = moexc__lens_emit(&cv, dir, prefix, "concentration.png", write, user, n_written, err);
        if (st != MOEXC_OK) goto done;
    }

    /* early decoding: four panels, a line per domain over the layers */
    moexc_canvas_clear(&cv, 0xFFFFFFu);
    {
        static const char *const titles[4] = { "Hidden-state cosine, top-1 vs top-k",
                                               "FFN-output cosine, top-1 vs top-k",
                                               "Top-1 token agreement (LM head)",
                                               "KL(full || single), LM head" };
        static const char *const ylab[4] = { "cosine", "cosine", "fraction", "nats" };
        const double *src[4];
        float *x = buf, *y = buf + L;
        moexc_canvas big;
        src[0] = s->cosine; src[1] = s->ffn_cosine; src[2] = s->agreement; src[3] = s->kl;
        memset(&big, 0, sizeof(big));
        if ((st = moexc_canvas_init(&big, 1000, 900, err)) != MOEXC_OK) goto done;
        for (l = 0; l < L; l++) x[l] = (float)l;
        for (i = 0; i < 4 && st == MOEXC_OK; i++) {
            for (d = 0; d < DD; d++) {
                for (l = 0; l < L; l++) y[((size_t)i * DD + d) * L + l] = (float)src[i][(size_t)l * DD + d];
                ser[d].x = x; ser[d].y = y + ((size_t)i * DD + d) * L; ser[d].n = L; ser[d].label = s->domain_names[d];
            }
            memset(&po, 0, sizeof(po));
            moexc__lens_panel(&po, &big, i, 4, 2);
            po.title = titles[i];
            po.x_label = "MoE layer";
            po.y_label = ylab[i];
            st = moexc_plot_lines(&big, ser, DD, &po, err);
        }
        if (st == MOEXC_OK) st = moexc__lens_emit(&big, dir, prefix, "early_decoding.png", write, user, n_written, err);
        moexc_canvas_free(&big);
        if (st != MOEXC_OK) goto done;
    }

    /* perplexity against k': absolute and relative to the unforced model */
    if (s->max_k > 0) {
        moexc_canvas wide;
        float *x = buf, *y = buf + s->max_k, *rel = y + (size_t)DD * s->max_k;
        memset(&wide, 0, sizeof(wide));
        if ((st = moexc_canvas_init(&wide, 1000, 500, err)) != MOEXC_OK) goto done;
        for (kk = 1; kk <= s->max_k; kk++) x[kk - 1] = (float)kk;
        for (i = 0; i < 2 && st == MOEXC_OK; i++) {
            for (d = 0; d < DD; d++) {
                for (kk = 1; kk <= s->max_k; kk++) {
                    double p = s->ppl[(size_t)kk * DD + d];
                    y[(size_t)d * s->max_k + kk - 1] = (float)p;
                    rel[(size_t)d * s->max_k + kk - 1] = (float)(p / s->ppl[d]);
                }
                ser[d].x = x; ser[d].y = (i ? rel : y) + (size_t)d * s->max_k; ser[d].n = s->max_k;
                ser[d].label = s->domain_names[d];
            }
            memset(&po, 0, sizeof(po));
            moexc__lens_panel(&po, &wide, i, 2, 2);
            snprintf(title, sizeof(title), i ? "Perplexity / unforced (k = %d)" : "Perplexity with k' experts forced",
                     s->top_k);
            po.title = title;
            po.x_label = "k' forced in every MoE layer";
            po.y_label = i ? "ratio" : "perplexity (geometric mean)";
            st = moexc_plot_lines(&wide, ser, DD, &po, err);
        }
        if (st == MOEXC_OK) st = moexc__lens_emit(&wide, dir, prefix, "perplexity.png", write, user, n_written, err);
        moexc_canvas_free(&wide);
    }
done:
    moexc_canvas_free(&cv);
    moexc__free(buf); moexc__free(ser); moexc__free(labels);
    return st;
}

/* ======================================================================== */
/* >>toy: superposition in toy MoEs (SPEC §7)                                */
/* ======================================================================== */
/* Shapes: x (B x n), W (E x n x m) row-major so W_{e,i} is the m-vector of
   feature i in expert e, b and G (E x n). One sample at a time: the models
   are tiny (n m of a few hundred) and the data sparse, so a sample's work is
   a few loops that skip its zero features; a sweep runs one model per thread. */

/* Per-model scratch: the gradient pass keeps each sample's router
   probabilities and their gradient (B x E) for the router backward, which
   must wait for the batch's load-balancing fractions f_e. */
typedef struct moexc__toy_scratch {
    float *x;          /* (B x n) the step's batch                              */
    float *p, *dp;     /* (B x E) router probabilities, dL/dp                   */
    float *h;          /* (k x m) hidden of each active expert                  */
    float *pre;        /* (k x n) pre-activation of each active expert          */
    float *out, *dout; /* (n)                                                   */
    float *dh;         /* (m)                                                   */
    float *w, *dw;     /* (E) gates, dL/dgate                                   */
    float *fsum, *psum;/* (E) dispatch counts and summed probabilities          */
    int   *sel;        /* (k) the top-k experts, best first                     */
} moexc__toy_scratch;

static float moexc__toy_normal(moexc_rng *rng, float std) { return std * moexc_rng_normal(rng); }

MOEXC_DEF moexc_status moexc_toy_create(moexc_toy *t, const moexc_toy_config *cfg_in, moexc_error *err)
{
    moexc_toy_config c;
    moexc__toy_scratch *s;
    size_t n, m, E, k, B, nW, nf;
    float *f;
    moexc_rng init;
    int i, e;
    if (!t) return moexc__fail(err, MOEXC_ERR_ARG, "moexc_toy_create: NULL model");
    memset(t, 0, sizeof(*t));
    memset(&c, 0, sizeof(c));
    if (cfg_in) c = *cfg_in;
    if (c.n_features == 0) c.n_features = 32;
    if (c.n_hidden == 0) c.n_hidden = 8;
    if (c.n_experts == 0) c.n_experts = 4;
    if (c.top_k == 0) c.top_k = 1;
    if (c.feature_prob == 0.0f) c.feature_prob = 0.1f;
    if (c.importance_decay == 0.0f) c.importance_decay = 1.0f;
    if (c.lb_alpha == 0.0f) c.lb_alpha = 0.01f;
    if (c.batch_size == 0) c.batch_size = 1024;
    if (c.lr == 0.0f) c.lr = 1e-3f;
    if (c.weight_decay == 0.0f) c.weight_decay = 0.01f;
    if (c.weight_decay < 0.0f) c.weight_decay = 0.0f;
    if (c.n_features < 1 || c.n_features > 4096)
        return moexc__fail(err, MOEXC_ERR_ARG, "toy config: n_features %d outside 1..4096", c.n_features);
    if (c.n_hidden < 1 || c.n_hidden > 4096)
        return moexc__fail(err, MOEXC_ERR_ARG, "toy config: n_hidden %d outside 1..4096", c.n_hidden);
    if (c.n_experts < 1 || c.n_experts > 256)
        return moexc__fail(err, MOEXC_ERR_ARG, "toy config: n_experts %d outside 1..256", c.n_experts);
    if (c.top_k < 1 || c.top_k > c.n_experts)
        return moexc__fail(err, MOEXC_ERR_ARG, "toy config: top_k %d outside 1..n_experts (%d)", c.top_k, c.n_experts);
    if (!(c.feature_prob > 0.0f && c.feature_prob <= 1.0f))
        return moexc__fail(err, MOEXC_ERR_ARG, "toy config: feature_prob %g outside (0, 1]", (double)c.feature_prob);
    if (!(c.importance_decay > 0.0f && c.importance_decay < 1e6f))
        return moexc__fail(err, MOEXC_ERR_ARG, "toy config: importance_decay %g must be positive", (double)c.importance_decay);
    if (c.router_init != MOEXC_TOY_INIT_XAVIER && c.router_init != MOEXC_TOY_INIT_KHOT)
        return moexc__fail(err, MOEXC_ERR_ARG, "toy config: router_init %d is neither XAVIER (0) nor KHOT (1)", c.router_init);
    if (!(c.lb_alpha >= 0.0f && c.lb_alpha < 1e6f))
        return moexc__fail(err, MOEXC_ERR_ARG, "toy config: lb_alpha %g must be >= 0", (double)c.lb_alpha);
    if (c.batch_size < 1 || c.batch_size > (1 << 20))
        return moexc__fail(err, MOEXC_ERR_ARG, "toy config: batch_size %d outside 1..1048576", c.batch_size);
    if (!(c.lr > 0.0f && c.lr < 1e3f))
        return moexc__fail(err, MOEXC_ERR_ARG, "toy config: lr %g must be positive", (double)c.lr);
    if (!(c.weight_decay * c.lr < 1.0f))
        return moexc__fail(err, MOEXC_ERR_ARG, "toy config: weight_decay %g too large for lr %g",
                           (double)c.weight_decay, (double)c.lr);
    if (c.importance)
        for (i = 0; i < c.n_features; i++)
            if (!(c.importance[i] >= 0.0f && c.importance[i] < 1e30f))
                return moexc__fail(err, MOEXC_ERR_ARG, "toy config: importance[%d] = %g must be finite and >= 0",
                                   i, (double)c.importance[i]);

    n = (size_t)c.n_features; m = (size_t)c.n_hidden; E = (size_t)c.n_experts; k = (size_t)c.top_k;
    B = (size_t)c.batch_size;
    t->n = c.n_features; t->m = c.n_hidden; t->E = c.n_experts; t->k = c.top_k;
    nW = E * n * m;
    t->n_params = nW + 2 * E * n;
    /* one allocation for params, grad, m, v, importance; one for the scratch */
    nf = 4 * t->n_params + n;
    t->params = (float *)moexc__calloc(nf, sizeof(float));
    t->block = (int *)moexc__calloc(n, sizeof(int));
    s = (moexc__toy_scratch *)moexc__calloc(1, sizeof(moexc__toy_scratch));
    t->scratch = s;
    if (s) {
        size_t ns = B * n + 2 * B * E + k * m + k * n + 2 * n + m + 4 * E;
        s->x = (float *)moexc__calloc(ns, sizeof(float));
        s->sel = (int *)moexc__calloc(k, sizeof(int));
    }
    if (!t->params || !t->block || !s || !s->x || !s->sel) {
        moexc_toy_free(t);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "toy model (n %d, m %d, E %d, batch %d): out of memory",
                           c.n_features, c.n_hidden, c.n_experts, c.batch_size);
    }
    f = s->x + B * n;
    s->p = f; f += B * E;
    s->dp = f; f += B * E;
    s->h = f; f += k * m;
    s->pre = f; f += k * n;
    s->out = f; f += n;
    s->dout = f; f += n;
    s->dh = f; f += m;
    s->w = f; f += E;
    s->dw = f; f += E;
    s->fsum = f; f += E;
    s->psum = f;
    t->grad = t->params + t->n_params;
    t->adam_m = t->grad + t->n_params;
    t->adam_v = t->adam_m + t->n_params;
    t->importance = t->adam_v + t->n_params;
    t->W = t->params;
    t->b = t->W + nW;
    t->G = t->b + E * n;
    for (i = 0; i < c.n_features; i++)
        t->importance[i] = c.importance ? c.importance[i] : (float)pow((double)c.importance_decay, (double)i);
    c.importance = t->importance;
    t->cfg = c;

    /* Xavier-normal with PyTorch's fans: std = sqrt(2 / (fan_in + fan_out)),
       W as (E, n, m): fan_in = n m, fan_out = E m; b and G as (E, n). */
    moexc_rng_seed(&init, c.seed * UINT64_C(0x9E3779B97F4A7C15) + UINT64_C(0x746F79));
    {
        float sw = (float)sqrt(2.0 / (double)(n * m + E * m)), sb = (float)sqrt(2.0 / (double)(n + E));
        size_t j;
        for (j = 0; j < nW; j++) t->W[j] = moexc__toy_normal(&init, sw);
        for (j = 0; j < E * n; j++) t->b[j] = moexc__toy_normal(&init, sb);
        for (j = 0; j < E * n; j++) t->G[j] = moexc__toy_normal(&init, sb);
    }
    for (i = 0; i < c.n_features; i++) t->block[i] = -1;
    if (c.router_init == MOEXC_TOY_INIT_KHOT) {
        /* K-hot: a random permutation of the features cut into E consecutive
           blocks (sizes differ by at most one); G[e][i] = 1 on e's block. */
        int *perm = t->block;
        for (i = 0; i < c.n_features; i++) perm[i] = i;
        for (i = c.n_features - 1; i > 0; i--) {
            int j = (int)moexc_rng_below(&init, (uint32_t)(i + 1)), tmp = perm[i];
            perm[i] = perm[j]; perm[j] = tmp;
        }
        memset(t->G, 0, E * n * sizeof(float));
        for (i = 0; i < c.n_features; i++) {   /* position i of the permutation: expert i E / n */
            int feat = perm[i];
            e = (int)(((size_t)i * E) / n);
            t->G[(size_t)e * n + (size_t)feat] = 1.0f;
        }
        for (i = 0; i < c.n_features; i++) {
            t->block[i] = -1;
            for (e = 0; e < c.n_experts; e++)
                if (t->G[(size_t)e * n + (size_t)i] == 1.0f) t->block[i] = e;
        }
    }
    moexc_rng_seed(&t->rng, c.seed ^ UINT64_C(0xD1B54A32D192ED03));
    return MOEXC_OK;
}

MOEXC_DEF void moexc_toy_free(moexc_toy *t)
{
    moexc__toy_scratch *s;
    if (!t) return;
    s = (moexc__toy_scratch *)t->scratch;
    if (s) { moexc__free(s->x); moexc__free(s->sel); moexc__free(s); }
    moexc__free(t->params);
    moexc__free(t->block);
    memset(t, 0, sizeof(*t));
}

/* x_i = 0 with probability S = 1 - feature_prob, else uniform in [0, 1). */
MOEXC_DEF void moexc_toy_sample(float *x, int B, int n, float feature_prob, moexc_rng *rng)
{
    size_t j, total = (size_t)B * (size_t)n;
    for (j = 0; j < total; j++) {
        float u = moexc_rng_uniform(rng), keep = moexc_rng_uniform(rng);
        x[j] = keep < feature_prob ? u : 0.0f;
    }
}

/* Router of one sample: p = softmax(G x) (E), the top-k of p in sel (best
   first, ties to the lower index), gates w_e = p_e / sum_{j in top-k} p_j on
   the top-k and 0 elsewhere. E = 1: p = w = 1. Returns sum_{top-k} p. */
static float moexc__toy_route(const moexc_toy *t, const float *x, float *p, int *sel, float *w)
{
    int E = t->E, n = t->n, e, i, j;
    float mx, sum = 0.0f, s = 0.0f;
    if (E == 1) { p[0] = 1.0f; w[0] = 1.0f; sel[0] = 0; return 1.0f; }
    for (e = 0; e < E; e++) {
        const float *g = t->G + (size_t)e * n;
        float z = 0.0f;
        for (i = 0; i < n; i++) if (x[i] != 0.0f) z += g[i] * x[i];
        p[e] = z;
    }
    mx = p[0];
    for (e = 1; e < E; e++) mx = p[e] > mx ? p[e] : mx;
    for (e = 0; e < E; e++) { p[e] = expf(p[e] - mx); sum += p[e]; }
    for (e = 0; e < E; e++) { p[e] /= sum; w[e] = 0.0f; }
    for (j = 0; j < t->k; j++) {          /* k rounds of "best not yet taken" */
        int best = -1;
        for (e = 0; e < E; e++) {
            if (w[e] != 0.0f) continue;
            if (best < 0 || p[e] > p[best]) best = e;
        }
        sel[j] = best;
        w[best] = 1.0f;                   /* mark taken; the gate comes below */
        s += p[best];
    }
    for (e = 0; e < E; e++) w[e] = 0.0f;
    for (j = 0; j < t->k; j++) w[sel[j]] = p[sel[j]] / s;
    return s;
}

/* Expert e on one sample: h = W_e^T x (m), pre = W_e h + b_e (n). */
static void moexc__toy_expert(const moexc_toy *t, int e, const float *x, float *h, float *pre)
{
    int n = t->n, m = t->m, i, c;
    const float *We = t->W + (size_t)e * n * m, *be = t->b + (size_t)e * n;
    for (c = 0; c < m; c++) h[c] = 0.0f;
    for (i = 0; i < n; i++) {
        const float *wi = We + (size_t)i * m;
        float xi = x[i];
        if (xi == 0.0f) continue;
        for (c = 0; c < m; c++) h[c] += wi[c] * xi;
    }
    for (i = 0; i < n; i++) {
        const float *wi = We + (size_t)i * m;
        float a = be[i];
        for (c = 0; c < m; c++) a += wi[c] * h[c];
        pre[i] = a;
    }
}

/* The whole batch: the loss, and with want_grad its gradient into t->grad.
   out (B x n) and gates (B x E) may be NULL. Returns recon + lb. */
static float moexc__toy_run(moexc_toy *t, const float *x, int B, float *out_all, float *gates, int want_grad,
                            float *recon_out, float *lb_out)
{
    moexc__toy_scratch *s = (moexc__toy_scratch *)t->scratch;
    int n = t->n, m = t->m, E = t->E, k = t->k, b, i, c, j, e;
    float *gW = t->grad, *gb = t->grad + (size_t)E * n * m, *gG = gb + (size_t)E * n;
    float inv_b = 1.0f / (float)B, lb = 0.0f;
    int use_lb = E > 1 && !t->cfg.no_load_balance;
    double rsum = 0.0;
    MOEXC_ASSERT(!want_grad || B <= t->cfg.batch_size);
    if (want_grad) memset(t->grad, 0, t->n_params * sizeof(float));
    for (e = 0; e < E; e++) { s->fsum[e] = 0.0f; s->psum[e] = 0.0f; }
    for (b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * n;
        float *p = want_grad ? s->p + (size_t)b * E : s->dp;   /* dp: free when no gradient */
        float *out = out_all ? out_all + (size_t)b * n : s->out;
        float psel = moexc__toy_route(t, xb, p, s->sel, s->w);
        for (e = 0; e < E; e++) s->psum[e] += p[e];
        for (j = 0; j < k; j++) s->fsum[s->sel[j]] += 1.0f;
        if (gates) memcpy(gates + (size_t)b * E, s->w, (size_t)E * sizeof(float));
        /* x^ = sum_{e in top-k} w_e ReLU(W_e W_e^T x + b_e) */
        for (i = 0; i < n; i++) out[i] = 0.0f;
        for (j = 0; j < k; j++) {
            float *h = s->h + (size_t)j * m, *pre = s->pre + (size_t)j * n, we = s->w[s->sel[j]];
            moexc__toy_expert(t, s->sel[j], xb, h, pre);
            for (i = 0; i < n; i++) if (pre[i] > 0.0f) out[i] += we * pre[i];
        }
        /* recon = (1/B) sum_b sum_i I_i (x_i - x^_i)^2;  dL/dx^_i = (2/B) I_i (x^_i - x_i) */
        for (i = 0; i < n; i++) {
            float d = out[i] - xb[i];
            rsum += (double)(t->importance[i] * d * d);
            s->dout[i] = 2.0f * inv_b * t->importance[i] * d;
        }
        if (!want_grad) continue;
        for (j = 0; j < k; j++) {
            int ej = s->sel[j];
            float *h = s->h + (size_t)j * m, *pre = s->pre + (size_t)j * n, we = s->w[ej], dwe = 0.0f;
            float *gWe = gW + (size_t)ej * n * m, *gbe = gb + (size_t)ej * n;
            const float *We = t->W + (size_t)ej * n * m;
            for (c = 0; c < m; c++) s->dh[c] = 0.0f;
            for (i = 0; i < n; i++) {
                float dpre;
                if (pre[i] <= 0.0f) { pre[i] = 0.0f; continue; }   /* ReLU' = 0: pre becomes dpre */
                dwe += s->dout[i] * pre[i];                         /* dL/dw_e = dL/dx^ . out_e */
                dpre = we * s->dout[i];
                pre[i] = dpre;
                gbe[i] += dpre;                                     /* db_e = dpre */
                for (c = 0; c < m; c++) s->dh[c] += dpre * We[(size_t)i * m + c];  /* dh = W_e^T dpre */
            }
            /* pre = W_e h + b_e and h = W_e^T x, W tied:
               dW_e[i][c] = dpre_i h_c + x_i dh_c */
            for (i = 0; i < n; i++) {
                float dpi = pre[i], xi = xb[i];
                float *g = gWe + (size_t)i * m;
                if (dpi != 0.0f) for (c = 0; c < m; c++) g[c] += dpi * h[c];
                if (xi != 0.0f) for (c = 0; c < m; c++) g[c] += xi * s->dh[c];
            }
            s->dw[j] = dwe;
        }
        if (E > 1) {
            /* w_e = p_e / s over the top-k A:  dL/dp_e = (dL/dw_e - sum_{j in A} w_j dL/dw_j) / s
               for e in A, 0 elsewhere (the top-k choice itself has no gradient). */
            float *dp = s->dp + (size_t)b * E, avg = 0.0f;
            for (e = 0; e < E; e++) dp[e] = 0.0f;
            for (j = 0; j < k; j++) avg += s->w[s->sel[j]] * s->dw[j];
            for (j = 0; j < k; j++) dp[s->sel[j]] = (s->dw[j] - avg) / psel;
        }
    }
    /* Switch load balancing, the seed code's form: lb = alpha E sum_e f_e P_e,
       f_e = fraction of samples whose top-k holds e (sums to k, no gradient),
       P_e = mean_b p_{b,e};  dlb/dp_{b,e} = alpha E f_e / B. */
    if (use_lb) {
        double acc = 0.0;
        for (e = 0; e < E; e++) acc += (double)(s->fsum[e] * inv_b) * (double)(s->psum[e] * inv_b);
        lb = (float)((double)t->cfg.lb_alpha * E * acc);
    }
    if (want_grad && E > 1) {
        float coef = use_lb ? t->cfg.lb_alpha * (float)E * inv_b * inv_b : 0.0f;   /* alpha E (fsum/B) / B */
        for (b = 0; b < B; b++) {
            const float *xb = x + (size_t)b * n, *p = s->p + (size_t)b * E;
            float *dp = s->dp + (size_t)b * E, dot = 0.0f;
            for (e = 0; e < E; e++) { dp[e] += coef * s->fsum[e]; dot += p[e] * dp[e]; }
            /* softmax: dz_e = p_e (dp_e - sum_j p_j dp_j);  z = G x: dG_e += dz_e x */
            for (e = 0; e < E; e++) {
                float dz = p[e] * (dp[e] - dot);
                float *g = gG + (size_t)e * n;
                if (dz == 0.0f) continue;
                for (i = 0; i < n; i++) if (xb[i] != 0.0f) g[i] += dz * xb[i];
            }
        }
    }
    if (recon_out) *recon_out = (float)(rsum / B);
    if (lb_out) *lb_out = lb;
    return (float)(rsum / B) + lb;
}

MOEXC_DEF void moexc_toy_forward(moexc_toy *t, const float *x, int B, float *out, float *gates)
{
    moexc__toy_run(t, x, B, out, gates, 0, NULL, NULL);
}

MOEXC_DEF float moexc_toy_loss_grad(moexc_toy *t, const float *x, int B, float *recon, float *lb)
{
    return moexc__toy_run(t, x, B, NULL, NULL, 1, recon, lb);
}

MOEXC_DEF float moexc_toy_loss(moexc_toy *t, const float *x, int B)
{
    return moexc__toy_run(t, x, B, NULL, NULL, 0, NULL, NULL);
}

MOEXC_DEF float moexc_toy_step(moexc_toy *t)
{
    moexc__toy_scratch *s = (moexc__toy_scratch *)t->scratch;
    moexc_adam_coeffs ac;
    double st;
    moexc_toy_sample(s->x, t->cfg.batch_size, t->n, t->cfg.feature_prob, &t->rng);
    t->loss = moexc_toy_loss_grad(t, s->x, t->cfg.batch_size, &t->recon, &t->lb);
    /* AdamW as torch.optim.AdamW: betas (0.9, 0.999), eps 1e-8, constant lr */
    t->step++;
    st = (double)t->step;
    ac.g_scale = 1.0f;
    ac.decay = 1.0f - t->cfg.lr * t->cfg.weight_decay;
    ac.beta1 = 0.9f; ac.beta2 = 0.999f; ac.eps = 1e-8f;
    ac.step_size = (float)((double)t->cfg.lr / (1.0 - pow(0.9, st)));
    ac.bc2_sqrt = (float)sqrt(1.0 - pow(0.999, st));
    moexc_adam_update(t->params, t->grad, t->adam_m, t->adam_v, t->n_params, &ac);
    return t->loss;
}

MOEXC_DEF moexc_status moexc_toy_train_many(moexc_toy *models, int n_models, int steps, int threads,
                                            moexc_toy_callback progress, void *user, moexc_error *err)
{
    int i, done = 0;
    if (!models || n_models < 0) return moexc__fail(err, MOEXC_ERR_ARG, "toy_train_many: no models (n_models %d)", n_models);
    if (steps < 0) return moexc__fail(err, MOEXC_ERR_ARG, "toy_train_many: steps %d < 0", steps);
    for (i = 0; i < n_models; i++)
        if (!models[i].params) return moexc__fail(err, MOEXC_ERR_ARG, "toy_train_many: model %d is not created", i);
#ifdef _OPENMP
    if (threads <= 0) threads = omp_get_max_threads();
#   pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#else
    (void)threads;
#endif
    for (i = 0; i < n_models; i++) {
        int st;
        for (st = 0; st < steps; st++) moexc_toy_step(&models[i]);
#ifdef _OPENMP
#       pragma omp critical (moexc__toy_progress)
#endif
        {
            done++;
            if (progress) progress(done, n_models, user);
        }
    }
    for (i = 0; i < n_models; i++)
        if (steps > 0 && !(models[i].loss == models[i].loss && models[i].loss < HUGE_VALF))
            return moexc__fail(err, MOEXC_ERR_NUMERIC, "toy model %d (E %d, k %d, feature_prob %g): loss is %g after %d steps",
                               i, models[i].E, models[i].k, (double)models[i].cfg.feature_prob, (double)models[i].loss,
                               models[i].step);
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_toy_measure(moexc_toy *t, const moexc_toy_metric_options *opt_in,
                                         moexc_toy_metrics *mt, moexc_error *err)
{
    moexc_toy_metric_options o;
    int n, m, E, e, i, j, c, chunk, done;
    float *x = NULL, *gates = NULL, *row = NULL;
    double *usage = NULL, loss_sum = 0.0, fpd = 0.0;
    moexc_rng rng;
    moexc_status st = MOEXC_OK;
    if (!t || !t->params || !mt) return moexc__fail(err, MOEXC_ERR_ARG, "toy_measure: NULL model or metrics");
    memset(mt, 0, sizeof(*mt));
    memset(&o, 0, sizeof(o));
    if (opt_in) o = *opt_in;
    if (o.n_samples == 0) o.n_samples = 8192;
    if (o.mono_threshold == 0.0f) o.mono_threshold = 0.2f;
    if (o.norm_threshold == 0.0f) o.norm_threshold = 0.5f;
    if (o.n_samples < 1) return moexc__fail(err, MOEXC_ERR_ARG, "toy_measure: n_samples %d < 1", o.n_samples);
    if (!(o.mono_threshold > 0.0f)) return moexc__fail(err, MOEXC_ERR_ARG, "toy_measure: mono_threshold %g <= 0", (double)o.mono_threshold);
    if (!(o.norm_threshold >= 0.0f)) return moexc__fail(err, MOEXC_ERR_ARG, "toy_measure: norm_threshold %g < 0", (double)o.norm_threshold);
    n = t->n; m = t->m; E = t->E;
    mt->n = n; mt->E = E;
    chunk = o.n_samples < 1024 ? o.n_samples : 1024;
    mt->norm = (float *)moexc__calloc((size_t)3 * E * n + 3 * (size_t)E, sizeof(float));
    mt->n_mono_expert = (int *)moexc__calloc((size_t)E, sizeof(int));
    x = (float *)moexc__calloc((size_t)chunk * n + (size_t)chunk * E + (size_t)n, sizeof(float));
    usage = (double *)moexc__calloc((size_t)E, sizeof(double));
    if (!mt->norm || !mt->n_mono_expert || !x || !usage) {
        st = moexc__fail(err, MOEXC_ERR_NOMEM, "toy_measure: out of memory (n %d, E %d)", n, E);
        goto done;
    }
    gates = x + (size_t)chunk * n;
    row = gates + (size_t)chunk * E;
    mt->dim = mt->norm + (size_t)E * n;
    mt->score = mt->dim + (size_t)E * n;
    mt->usage = mt->score + (size_t)E * n;
    mt->special = mt->usage + E;
    mt->block_match = mt->special + E;

    /* Per expert and feature, with W^_{e,i} = W_{e,i} / ||W_{e,i}||:
         D_i^e   = ||W_{e,i}||^2 / sum_j (W^_{e,i} . W_{e,j})^2        (dimensionality)
         s_{e,i} = sqrt(sum_{j != i} (W^_{e,i} . W_{e,j})^2)            (superposition)
       A zero row has D = 0 and s = 0 (and is not represented). */
    for (e = 0; e < E; e++) {
        const float *We = t->W + (size_t)e * n * m;
        for (i = 0; i < n; i++) {
            const float *wi = We + (size_t)i * m;
            double nn = 0.0, tot = 0.0, other = 0.0, inv;
            for (c = 0; c < m; c++) nn += (double)wi[c] * wi[c];
            mt->norm[(size_t)e * n + i] = (float)sqrt(nn);
            if (nn <= 0.0) { mt->dim[(size_t)e * n + i] = 0.0f; mt->score[(size_t)e * n + i] = 0.0f; continue; }
            inv = 1.0 / sqrt(nn);
            for (j = 0; j < n; j++) {
                const float *wj = We + (size_t)j * m;
                double d = 0.0;
                for (c = 0; c < m; c++) d += (double)wi[c] * wj[c];
                d *= inv;
                tot += d * d;
                if (j != i) other += d * d;
            }
            mt->dim[(size_t)e * n + i] = (float)(nn / tot);
            mt->score[(size_t)e * n + i] = (float)sqrt(other);
        }
    }
    /* monosemantic: represented (||W_{e,i}|| >= norm_threshold) and s_{e,i} < 0.2 */
    for (e = 0; e < E; e++)
        for (i = 0; i < n; i++) {
            size_t ei = (size_t)e * n + i;
            if (mt->norm[ei] < o.norm_threshold) continue;
            mt->n_represented++;
            if (mt->score[ei] < o.mono_threshold) { mt->n_mono++; mt->n_mono_expert[e]++; }
        }
    mt->mono_fraction = mt->n_represented ? (float)mt->n_mono / (float)mt->n_represented : NAN;

    /* usage p_e = mean over samples of the gate w_e; the held-out loss */
    moexc_rng_seed(&rng, o.seed ^ (t->cfg.seed * UINT64_C(0x2545F4914F6CDD1D)) ^ UINT64_C(0x6D657472));
    for (done = 0; done < o.n_samples; done += chunk) {
        int bsz = MOEXC__MIN(chunk, o.n_samples - done);
        float rec;
        moexc_toy_sample(x, bsz, n, t->cfg.feature_prob, &rng);
        moexc__toy_run(t, x, bsz, NULL, gates, 0, &rec, NULL);
        loss_sum += (double)rec * bsz;
        for (i = 0; i < bsz; i++)
            for (e = 0; e < E; e++) usage[e] += gates[(size_t)i * E + e];
    }
    mt->loss = (float)(loss_sum / o.n_samples);
    /* features per dimension = (1/k) sum_e p_e ||W_e||_F^2 / m */
    for (e = 0; e < E; e++) {
        double fro = 0.0;
        size_t q;
        mt->usage[e] = (float)(usage[e] / o.n_samples);
        for (q = 0; q < (size_t)n * m; q++) fro += (double)t->W[(size_t)e * n * m + q] * t->W[(size_t)e * n * m + q];
        fpd += (double)mt->usage[e] * fro / m;
    }
    mt->features_per_dim = (float)(fpd / t->k);

    /* specialisation: samples from the data, expert e's monosemantic features
       clamped to 1; how often is e the router's top-1 choice? (NaN for E = 1
       or an expert without monosemantic features.) block_match: the share of
       e's monosemantic features inside its K-hot block. */
    {
        moexc__toy_scratch *s = (moexc__toy_scratch *)t->scratch;
        double sp_sum = 0.0, bm_sum = 0.0;
        int sp_n = 0, bm_n = 0;
        for (e = 0; e < E; e++) {
            int hits = 0, inside = 0;
            mt->special[e] = NAN;
            mt->block_match[e] = NAN;
            if (mt->n_mono_expert[e] == 0) continue;
            for (i = 0; i < n; i++) {
                size_t ei = (size_t)e * n + i;
                row[i] = (mt->norm[ei] >= o.norm_threshold && mt->score[ei] < o.mono_threshold) ? 1.0f : 0.0f;
                if (row[i] != 0.0f && t->block[i] == e) inside++;
            }
            if (t->cfg.router_init == MOEXC_TOY_INIT_KHOT) {
                mt->block_match[e] = (float)inside / (float)mt->n_mono_expert[e];
                bm_sum += mt->block_match[e]; bm_n++;
            }
            if (E == 1) continue;
            for (done = 0; done < o.n_samples; done += chunk) {
                int bsz = MOEXC__MIN(chunk, o.n_samples - done);
                moexc_toy_sample(x, bsz, n, t->cfg.feature_prob, &rng);
                for (j = 0; j < bsz; j++) {
                    float *xb = x + (size_t)j * n;
                    for (i = 0; i < n; i++) if (row[i] != 0.0f) xb[i] = 1.0f;
                    moexc__toy_route(t, xb, s->dp, s->sel, s->w);
                    hits += s->sel[0] == e;
                }
            }
            mt->special[e] = (float)hits / (float)o.n_samples;
            sp_sum += mt->special[e]; sp_n++;
        }
        mt->specialisation = sp_n ? (float)(sp_sum / sp_n) : NAN;
        mt->block_coherence = bm_n ? (float)(bm_sum / bm_n) : NAN;
    }
done:
    moexc__free(x);
    moexc__free(usage);
    if (st != MOEXC_OK) moexc_toy_metrics_free(mt);
    return st;
}

MOEXC_DEF void moexc_toy_metrics_free(moexc_toy_metrics *mt)
{
    if (!mt) return;
    moexc__free(mt->norm);
    moexc__free(mt->n_mono_expert);
    memset(mt, 0, sizeof(*mt));
}

MOEXC_DEF void moexc_toy_gram(const moexc_toy *t, int e, float *out)
{
    int n = t->n, m = t->m, i, j;
    const float *We = t->W + (size_t)e * n * m;
    for (i = 0; i < n; i++)
        for (j = 0; j < n; j++) {
            double a = 0.0;
            int c;
            for (c = 0; c < m; c++) a += (double)We[(size_t)i * m + c] * We[(size_t)j * m + c];
            out[(size_t)i * n + j] = (float)a;
        }
}

static void moexc__toy_num(FILE *f, double v)
{
    if (v == v && v < HUGE_VAL && v > -HUGE_VAL) fprintf(f, "%.6g", v); else fputs("null", f);
}
static void moexc__toy_csv_num(FILE *f, double v)
{
    if (v == v && v < HUGE_VAL && v > -HUGE_VAL) fprintf(f, "%.6g", v);
}

MOEXC_DEF moexc_status moexc_toy_write_csv(const moexc_toy *models, const moexc_toy_metrics *mt, int n_models,
                                           const char *path, moexc_error *err)
{
    moexc__atomic_file af;
    moexc_status st;
    int i;
    if (!models || !mt || n_models < 0 || !path) return moexc__fail(err, MOEXC_ERR_ARG, "toy_write_csv: NULL argument");
    if ((st = moexc__atomic_open(&af, path, err)) != MOEXC_OK) return st;
    fputs("model,n,m,E,k,k_over_E,S,importance_decay,init,load_balance,loss,features_per_dim,"
          "mono_fraction,n_represented,n_mono,specialisation,block_coherence\n", af.f);
    for (i = 0; i < n_models; i++) {
        const moexc_toy *t = models + i;
        const moexc_toy_metrics *q = mt + i;
        fprintf(af.f, "%d,%d,%d,%d,%d,%.6g,%.6g,%.6g,%s,%d,", i, t->n, t->m, t->E, t->k, (double)t->k / t->E,
                1.0 - (double)t->cfg.feature_prob, (double)t->cfg.importance_decay,
                t->cfg.router_init == MOEXC_TOY_INIT_KHOT ? "khot" : "xavier", t->E > 1 && !t->cfg.no_load_balance);
        moexc__toy_csv_num(af.f, q->loss); fputc(',', af.f);
        moexc__toy_csv_num(af.f, q->features_per_dim); fputc(',', af.f);
        moexc__toy_csv_num(af.f, q->mono_fraction);
        fprintf(af.f, ",%d,%d,", q->n_represented, q->n_mono);
        moexc__toy_csv_num(af.f, q->specialisation); fputc(',', af.f);
        moexc__toy_csv_num(af.f, q->block_coherence); fputc('\n', af.f);
    }
    return moexc__atomic_commit(&af, err);
}

static void moexc__toy_json_floats(FILE *f, const float *x, int n)
{
    int i;
    fputc('[', f);
    for (i = 0; i < n; i++) { if (i) fputc(',', f); moexc__toy_num(f, x[i]); }
    fputc(']', f);
}

MOEXC_DEF moexc_status moexc_toy_write_json(const moexc_toy *models, const moexc_toy_metrics *mt, int n_models,
                                            const char *name, const char *path, moexc_error *err)
{
    moexc__atomic_file af;
    moexc_status st;
    moexc__sb sb;
    int i, e;
    FILE *f;
    if (!models || !mt || n_models < 0 || !path) return moexc__fail(err, MOEXC_ERR_ARG, "toy_write_json: NULL argument");
    if ((st = moexc__atomic_open(&af, path, err)) != MOEXC_OK) return st;
    f = af.f;
    memset(&sb, 0, sizeof(sb));
    moexc__sb_json_string(&sb, name ? name : "toy");
    fprintf(f, "{\"name\": %s, \"models\": [\n", sb.oom || !sb.buf ? "\"toy\"" : sb.buf);
    moexc__free(sb.buf);
    for (i = 0; i < n_models; i++) {
        const moexc_toy *t = models + i;
        const moexc_toy_metrics *q = mt + i;
        fprintf(f, " {\"model\": %d, \"n\": %d, \"m\": %d, \"E\": %d, \"k\": %d, \"S\": %.6g, \"importance_decay\": %.6g, "
                "\"init\": \"%s\", \"load_balance\": %s, \"steps\": %d, \"seed\": %.0f,\n  \"loss\": ",
                i, t->n, t->m, t->E, t->k, 1.0 - (double)t->cfg.feature_prob, (double)t->cfg.importance_decay,
                t->cfg.router_init == MOEXC_TOY_INIT_KHOT ? "khot" : "xavier",
                t->E > 1 && !t->cfg.no_load_balance ? "true" : "false", t->step, (double)t->cfg.seed);
        moexc__toy_num(f, q->loss);
        fputs(", \"features_per_dim\": ", f); moexc__toy_num(f, q->features_per_dim);
        fputs(", \"mono_fraction\": ", f); moexc__toy_num(f, q->mono_fraction);
        fprintf(f, ", \"n_represented\": %d, \"n_mono\": %d, \"specialisation\": ", q->n_represented, q->n_mono);
        moexc__toy_num(f, q->specialisation);
        fputs(", \"block_coherence\": ", f); moexc__toy_num(f, q->block_coherence);
        fputs(",\n  \"experts\": [", f);
        for (e = 0; e < t->E; e++) {
            fputs(e ? ",\n   {\"usage\": " : "\n   {\"usage\": ", f); moexc__toy_num(f, q->usage[e]);
            fputs(", \"special\": ", f); moexc__toy_num(f, q->special[e]);
            fputs(", \"block_match\": ", f); moexc__toy_num(f, q->block_match[e]);
            fputs(", \"norm\": ", f); moexc__toy_json_floats(f, q->norm + (size_t)e * t->n, t->n);
            fputs(", \"dim\": ", f); moexc__toy_json_floats(f, q->dim + (size_t)e * t->n, t->n);
            fputs(", \"score\": ", f); moexc__toy_json_floats(f, q->score + (size_t)e * t->n, t->n);
            fputc('}', f);
        }
        fprintf(f, "]}%s\n", i + 1 < n_models ? "," : "");
    }
    fputs("]}\n", f);
    return moexc__atomic_commit(&af, err);
}

MOEXC_DEF moexc_status moexc_toy_plot_experts(moexc_canvas *cv, const moexc_toy *t, const moexc_toy_metrics *mt,
                                              const char *title, moexc_error *err)
{
    int E, n, e, i, W, H, top, rh, fs = 2, th;
    float *gram = NULL;
    moexc_status st = MOEXC_OK;
    char buf[128];
    if (!cv || !cv->rgb || !t || !t->params || !mt || !mt->norm)
        return moexc__fail(err, MOEXC_ERR_ARG, "toy_plot_experts: need a canvas, a model and its metrics");
    E = t->E; n = t->n; W = cv->width; H = cv->height;
    th = moexc_text_height(fs);
    top = 2 * th + 24;
    rh = (H - top) / E;
    if (rh < 60 || W < 400) return moexc__fail(err, MOEXC_ERR_ARG, "toy_plot_experts: canvas %dx%d too small for %d experts", W, H, E);
    gram = (float *)moexc__calloc((size_t)n * n, sizeof(float));
    if (!gram) return moexc__fail(err, MOEXC_ERR_NOMEM, "toy_plot_experts: out of memory");
    moexc_canvas_clear(cv, 0xFFFFFFu);
    moexc_draw_text(cv, 10, 6, title ? title : "toy model", fs + 1, 0x000000u);
    /* colour key of the bars: viridis over the superposition score 0..1 */
    {
        int kx = 10, ky = 10 + moexc_text_height(fs + 1), kw = 200, q;
        kx += moexc_draw_text(cv, kx, ky, "bar colour = superposition score  0 ", fs, 0x333333u);
        for (q = 0; q < kw; q++) moexc_draw_rect(cv, kx + q, ky, kx + q + 1, ky + th, moexc_colormap_viridis((double)q / (kw - 1)));
        moexc_draw_text(cv, kx + kw + 4, ky, "1+   (mono if < 0.2)", fs, 0x333333u);
    }
    for (e = 0; e < E && st == MOEXC_OK; e++) {
        int y0 = top + e * rh, lx0 = 60, lx1 = W / 2 - 20, py0 = y0 + th + 8, py1 = y0 + rh - 14;
        double ymax = 1.2;
        moexc_plot_options po;
        for (i = 0; i < n; i++) ymax = MOEXC__MAX(ymax, (double)mt->norm[(size_t)e * n + i] * 1.05);
        if (E > 1) snprintf(buf, sizeof(buf), "expert %d  usage %.2f  mono %d", e, (double)mt->usage[e], mt->n_mono_expert[e]);
        else snprintf(buf, sizeof(buf), "dense  mono %d of %d represented", mt->n_mono, mt->n_represented);
        moexc_draw_text(cv, lx0, y0 + 2, buf, fs, 0x000000u);
        /* axes: y = ||W_i|| from 0 to ymax, a grey line at 1 */
        moexc_draw_line(cv, lx0, py0, lx0, py1, 1, 0x000000u);
        moexc_draw_line(cv, lx0, py1, lx1, py1, 1, 0x000000u);
        {
            int y1 = py1 - (int)((py1 - py0) * (1.0 / ymax));
            moexc_draw_line(cv, lx0, y1, lx1, y1, 1, 0xBBBBBBu);
            moexc_draw_text(cv, lx0 - moexc_text_width("1", fs) - 6, y1 - th / 2, "1", fs, 0x333333u);
            moexc_draw_text(cv, lx0 - moexc_text_width("0", fs) - 6, py1 - th / 2, "0", fs, 0x333333u);
            moexc_draw_text_vertical(cv, 4, py0, "||W_i||", fs, 0x333333u);
        }
        for (i = 0; i < n; i++) {
            size_t ei = (size_t)e * n + i;
            int bx0 = lx0 + 2 + (int)((double)(lx1 - lx0 - 2) * i / n);
            int bx1 = lx0 + 2 + (int)((double)(lx1 - lx0 - 2) * (i + 1) / n) - 1;
            int by = py1 - (int)((py1 - py0) * ((double)mt->norm[ei] / ymax));
            double sc = mt->score[ei];
            moexc_draw_rect(cv, bx0, by, MOEXC__MAX(bx1, bx0 + 1), py1, moexc_colormap_viridis(sc > 1.0 ? 1.0 : sc));
            if (t->block[i] == e) moexc_draw_rect(cv, bx0, py1 + 2, MOEXC__MAX(bx1, bx0 + 1), py1 + 6, 0xD55E00u);
        }
        moexc_toy_gram(t, e, gram);
        memset(&po, 0, sizeof(po));
        po.x = W / 2; po.y = y0; po.width = W / 2; po.height = rh;
        po.font_scale = 1;
        po.title = E > 1 ? "W_e W_e^T" : "W W^T";
        po.z_min = -1.0; po.z_max = 1.0;
        st = moexc_plot_heatmap(cv, gram, n, n, NULL, NULL, &po, err);
    }
    moexc__free(gram);
    return st;
}

/* ======================================================================== */
/* >>harvest (implementation)                                                */
/* ======================================================================== */

struct moexc_harvester {
    moexc_model        *model[2];
    const moexc_tokens *tokens;
    moexc_harvest_options opt;   /* resolved */
    int                 layer, d[2];
    size_t              position;      /* next token of the stream (sequential) */
    moexc_rng           rng;           /* window offsets (random)           */
    uint16_t           *window;        /* (batch_seqs x seq_len)            */
    float              *act[2];        /* (batch_seqs * seq_len x d_m)      */
};

MOEXC_DEF moexc_status moexc_harvester_create(moexc_harvester **out, moexc_model *model_a, moexc_model *model_b,
                                              const moexc_tokens *tokens, const moexc_harvest_options *opt,
                                              moexc_error *err)
{
    moexc_harvest_options o;
    const moexc_model_config *ca, *cb;
    moexc_harvester *h;
    int m;
    *out = NULL;
    if (!model_a || !model_b || !tokens) return moexc__fail(err, MOEXC_ERR_ARG, "harvester: NULL model or tokens");
    memset(&o, 0, sizeof(o));
    if (opt) o = *opt;
    ca = moexc_model_get_config(model_a);
    cb = moexc_model_get_config(model_b);
    if (ca->vocab_size != cb->vocab_size)
        return moexc__fail(err, MOEXC_ERR_ARG, "harvester: vocabularies differ (%d vs %d)", ca->vocab_size, cb->vocab_size);
    if (o.layer == 0) o.layer = 3;
    else if (o.layer == MOEXC_HARVEST_LAYER0) o.layer = 0;
    if (o.layer < 0 || o.layer >= ca->n_layers || o.layer >= cb->n_layers)
        return moexc__fail(err, MOEXC_ERR_ARG, "harvester: layer %d out of range (models have %d and %d blocks)",
                           o.layer, ca->n_layers, cb->n_layers);
    if (o.site != MOEXC_SITE_FFN_OUT && o.site != MOEXC_SITE_RESID)
        return moexc__fail(err, MOEXC_ERR_ARG, "harvester: unknown site %d", o.site);
    if (o.seq_len == 0) o.seq_len = MOEXC__MIN(128, MOEXC__MIN(ca->context, cb->context));
    if (o.seq_len < 2 || o.seq_len > ca->context || o.seq_len > cb->context)
        return moexc__fail(err, MOEXC_ERR_ARG, "harvester: seq_len %d outside [2, %d]", o.seq_len,
                           MOEXC__MIN(ca->context, cb->context));
    if (o.batch_seqs == 0) o.batch_seqs = 8;
    if (o.batch_seqs < 0) return moexc__fail(err, MOEXC_ERR_ARG, "harvester: batch_seqs %d < 0", o.batch_seqs);
    if (tokens->n < (size_t)o.seq_len)
        return moexc__fail(err, MOEXC_ERR_ARG, "harvester: %lu tokens, fewer than one sequence of %d",
                           (unsigned long)tokens->n, o.seq_len);
    h = (moexc_harvester *)moexc__calloc(1, sizeof(*h));
    if (!h) return moexc__fail(err, MOEXC_ERR_NOMEM, "harvester: out of memory");
    h->model[0] = model_a; h->model[1] = model_b;
    h->tokens = tokens;
    h->opt = o;
    h->layer = o.layer;
    h->d[0] = ca->d_model; h->d[1] = cb->d_model;
    moexc_rng_seed(&h->rng, o.seed ^ UINT64_C(0x4A7E57));
    h->window = (uint16_t *)moexc__calloc((size_t)o.batch_seqs * (size_t)o.seq_len, sizeof(uint16_t));
    for (m = 0; m < 2; m++)
        h->act[m] = moexc__alloc_floats((size_t)o.batch_seqs * (size_t)o.seq_len * (size_t)h->d[m]);
    if (!h->window || !h->act[0] || !h->act[1]) {
        moexc_harvester_free(h);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "harvester: out of memory");
    }
    *out = h;
    return MOEXC_OK;
}

MOEXC_DEF void moexc_harvester_free(moexc_harvester *h)
{
    if (!h) return;
    moexc__free(h->window);
    moexc__free_aligned(h->act[0]);
    moexc__free_aligned(h->act[1]);
    moexc__free(h);
}

MOEXC_DEF int moexc_harvester_dim(const moexc_harvester *h, int m) { return h->d[m ? 1 : 0]; }

MOEXC_DEF int moexc_harvester_rows_per_call(const moexc_harvester *h)
{
    return h->opt.batch_seqs * (h->opt.seq_len - (h->opt.keep_first ? 0 : 1));
}

MOEXC_DEF moexc_status moexc_harvester_next(moexc_harvester *h, float *x_a, float *x_b, int *rows, moexc_error *err)
{
    int B = h->opt.batch_seqs, T = h->opt.seq_len, b, t, m, first = h->opt.keep_first ? 0 : 1;
    float *dst[2];
    dst[0] = x_a; dst[1] = x_b;
    *rows = 0;
    /* windows of T tokens: consecutive (wrapping) or at uniform random offsets */
    for (b = 0; b < B; b++) {
        size_t start;
        if (h->opt.sequential) {
            if (h->position + (size_t)T > h->tokens->n) h->position = 0;
            start = h->position;
            h->position += (size_t)T;
        } else {
            uint64_t span = (uint64_t)(h->tokens->n - (size_t)T) + 1u;
            start = (size_t)(moexc_rng_u64(&h->rng) % span);
        }
        memcpy(h->window + (size_t)b * (size_t)T, h->tokens->tokens + start, (size_t)T * sizeof(uint16_t));
    }
    /* The two captures. With 2 or 3 OpenMP threads (and outside any parallel
       region) they run at the same time, one thread each: each model then
       computes exactly what it computes alone (GEMM results do not depend on
       the thread count; every other loop of a forward pass gives each output
       to one thread), so the pairs have the same bits as one after the other.
       With 1 or 4+ threads, or one model passed twice, they run one after the
       other on all threads. On failure the first model's error is reported. */
    {
        moexc_status cst[2];
        moexc_error cerr[2];
        int concurrent = 0;
#ifdef _OPENMP
        concurrent = h->model[0] != h->model[1] && !omp_in_parallel() &&
                     omp_get_max_threads() >= 2 && omp_get_max_threads() <= 3;
        if (concurrent) {
#           pragma omp parallel sections num_threads(2)
            {
#               pragma omp section
                {
                    omp_set_num_threads(1);   /* this thread's nested regions: one thread */
                    cst[0] = moexc_model_capture(h->model[0], h->window, B, T, h->layer, (moexc_site)h->opt.site,
                                                 h->act[0], &cerr[0]);
                }
#               pragma omp section
                {
                    omp_set_num_threads(1);
                    cst[1] = moexc_model_capture(h->model[1], h->window, B, T, h->layer, (moexc_site)h->opt.site,
                                                 h->act[1], &cerr[1]);
                }
            }
        }
#endif
        if (!concurrent) {
            cst[1] = MOEXC_OK;
            for (m = 0; m < 2; m++) {
                cst[m] = moexc_model_capture(h->model[m], h->window, B, T, h->layer, (moexc_site)h->opt.site,
                                             h->act[m], &cerr[m]);
                if (cst[m] != MOEXC_OK) break;
            }
        }
        for (m = 0; m < 2; m++)
            if (cst[m] != MOEXC_OK) {
                if (err) *err = cerr[m];
                return cst[m];
            }
    }
    for (m = 0; m < 2; m++) {
        size_t d = (size_t)h->d[m], r = 0;
        for (b = 0; b < B; b++)
            for (t = first; t < T; t++, r++)
                memcpy(dst[m] + r * d, h->act[m] + ((size_t)b * (size_t)T + (size_t)t) * d, d * sizeof(float));
    }
    *rows = B * (T - first);
    return MOEXC_OK;
}

/* ---- streaming shuffle buffer --------------------------------------------- */
MOEXC_DEF moexc_status moexc_shuffle_init(moexc_shuffle_buffer *b, int d_a, int d_b, int capacity,
                                          uint64_t seed, moexc_error *err)
{
    memset(b, 0, sizeof(*b));
    if (d_a <= 0 || d_b <= 0 || capacity <= 0)
        return moexc__fail(err, MOEXC_ERR_ARG, "shuffle buffer: d_a %d, d_b %d, capacity %d must be > 0", d_a, d_b, capacity);
    b->rows = moexc__alloc_floats(moexc__mul_size((size_t)capacity, (size_t)d_a + (size_t)d_b));
    if (!b->rows) return moexc__fail(err, MOEXC_ERR_NOMEM, "shuffle buffer: %d pairs do not fit in memory", capacity);
    b->d[0] = d_a; b->d[1] = d_b;
    b->capacity = capacity;
    moexc_rng_seed(&b->rng, seed);
    return MOEXC_OK;
}

MOEXC_DEF void moexc_shuffle_free(moexc_shuffle_buffer *b)
{
    moexc__free_aligned(b->rows);
    memset(b, 0, sizeof(*b));
}

MOEXC_DEF void moexc_shuffle_push(moexc_shuffle_buffer *b, const float *x_a, const float *x_b, int n,
                                  float *out_a, float *out_b, int *n_out)
{
    size_t da = (size_t)b->d[0], db = (size_t)b->d[1], w = da + db;
    int i, emitted = 0;
    for (i = 0; i < n; i++) {
        float *slot;
        if (b->count < b->capacity) {
            slot = b->rows + (size_t)b->count++ * w;
        } else {
            /* reservoir-style replacement: emit a uniformly chosen stored pair */
            slot = b->rows + (size_t)moexc_rng_below(&b->rng, (uint32_t)b->capacity) * w;
            memcpy(out_a + (size_t)emitted * da, slot, da * sizeof(float));
            memcpy(out_b + (size_t)emitted * db, slot + da, db * sizeof(float));
            emitted++;
        }
        memcpy(slot, x_a + (size_t)i * da, da * sizeof(float));
        memcpy(slot + da, x_b + (size_t)i * db, db * sizeof(float));
    }
    *n_out = emitted;
}

MOEXC_DEF int moexc_shuffle_pop(moexc_shuffle_buffer *b, float *out_a, float *out_b, int max)
{
    size_t da = (size_t)b->d[0], db = (size_t)b->d[1], w = da + db;
    int emitted = 0;
    while (emitted < max && b->count > 0) {
        size_t j = moexc_rng_below(&b->rng, (uint32_t)b->count);
        float *slot = b->rows + j * w;
        memcpy(out_a + (size_t)emitted * da, slot, da * sizeof(float));
        memcpy(out_b + (size_t)emitted * db, slot + da, db * sizeof(float));
        b->count--;
        if (j != (size_t)b->count) memcpy(slot, b->rows + (size_t)b->count * w, w * sizeof(float));
        emitted++;
    }
    return emitted;
}

/* ---- activation cache ------------------------------------------------------ */
#define MOEXC__ACT_MAGIC "MOEXCACT"
#define MOEXC__ACT_HEADER 32
#define MOEXC__ACT_CHUNK 256   /* pairs per read/write block */

static void moexc__act_header(unsigned char *h, int d_a, int d_b, uint64_t count)
{
    memcpy(h, MOEXC__ACT_MAGIC, 8);
    moexc__put_u32le(h + 8, 1u);
    moexc__put_u32le(h + 12, (uint32_t)d_a);
    moexc__put_u32le(h + 16, (uint32_t)d_b);
    moexc__put_u32le(h + 20, 0u);
    moexc__put_u64le(h + 24, count);
}

MOEXC_DEF moexc_status moexc_act_cache_create(moexc_act_cache *c, const char *path, int d_a, int d_b, moexc_error *err)
{
    moexc__atomic_file af;
    unsigned char h[MOEXC__ACT_HEADER];
    moexc_status st;
    memset(c, 0, sizeof(*c));
    if (d_a <= 0 || d_b <= 0) return moexc__fail(err, MOEXC_ERR_ARG, "%s: widths %d, %d must be > 0", path, d_a, d_b);
    if (strlen(path) >= sizeof(c->path)) return moexc__fail(err, MOEXC_ERR_ARG, "%s: path too long", path);
    c->scratch = moexc__alloc_floats((size_t)MOEXC__ACT_CHUNK * ((size_t)d_a + (size_t)d_b));
    if (!c->scratch) return moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory", path);
    st = moexc__atomic_open(&af, path, err);
    if (st != MOEXC_OK) { moexc__free_aligned(c->scratch); c->scratch = NULL; return st; }
    c->file = af.f;
    strcpy(c->path, path);
    strcpy(c->tmp_path, af.tmp_path);
    c->d[0] = d_a; c->d[1] = d_b;
    c->writing = 1;
    moexc__act_header(h, d_a, d_b, 0);   /* count patched on close */
    if (fwrite(h, 1, sizeof(h), (FILE *)c->file) != sizeof(h)) {
        moexc_act_cache_abort(c);
        return moexc__fail(err, MOEXC_ERR_IO, "%s: write failed", path);
    }
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_act_cache_append(moexc_act_cache *c, const float *x_a, const float *x_b, int n,
                                              moexc_error *err)
{
    size_t da = (size_t)c->d[0], db = (size_t)c->d[1], w = da + db;
    int done = 0;
    if (!c->writing || !c->file) return moexc__fail(err, MOEXC_ERR_ARG, "%s: cache not open for writing", c->path);
    while (done < n) {
        int chunk = MOEXC__MIN(n - done, MOEXC__ACT_CHUNK), i;
        for (i = 0; i < chunk; i++) {
            memcpy(c->scratch + (size_t)i * w, x_a + (size_t)(done + i) * da, da * sizeof(float));
            memcpy(c->scratch + (size_t)i * w + da, x_b + (size_t)(done + i) * db, db * sizeof(float));
        }
        moexc__le32_swap_inplace(c->scratch, (size_t)chunk * w);      /* now little-endian bytes */
        c->crc = moexc__crc32(c->crc, c->scratch, (size_t)chunk * w * 4);
        if (fwrite(c->scratch, 4, (size_t)chunk * w, (FILE *)c->file) != (size_t)chunk * w)
            return moexc__fail(err, MOEXC_ERR_IO, "%s: write failed (disk full?)", c->tmp_path);
        done += chunk;
        c->count += (uint64_t)chunk;
    }
    return MOEXC_OK;
}

MOEXC_DEF void moexc_act_cache_abort(moexc_act_cache *c)
{
    if (c->file) fclose((FILE *)c->file);
    if (c->writing) remove(c->tmp_path);
    moexc__free_aligned(c->scratch);
    memset(c, 0, sizeof(*c));
}

MOEXC_DEF moexc_status moexc_act_cache_close(moexc_act_cache *c, moexc_error *err)
{
    moexc_status st = MOEXC_OK;
    if (c->writing && c->file) {
        unsigned char tail[4], h[MOEXC__ACT_HEADER];
        moexc__atomic_file af;
        FILE *f = (FILE *)c->file;
        moexc__put_u32le(tail, c->crc);
        moexc__act_header(h, c->d[0], c->d[1], c->count);
        if (fwrite(tail, 1, 4, f) != 4 || fseek(f, 0, SEEK_SET) != 0 || fwrite(h, 1, sizeof(h), f) != sizeof(h)) {
            moexc_act_cache_abort(c);
            return moexc__fail(err, MOEXC_ERR_IO, "%s: write failed", c->path);
        }
        af.f = f;
        memcpy(af.tmp_path, c->tmp_path, sizeof(af.tmp_path) < sizeof(c->tmp_path) ? sizeof(af.tmp_path) : sizeof(c->tmp_path));
        af.tmp_path[sizeof(af.tmp_path) - 1] = 0;
        af.path = c->path;
        c->file = NULL;
        st = moexc__atomic_commit(&af, err);
    } else if (c->file) {
        fclose((FILE *)c->file);
    }
    moexc__free_aligned(c->scratch);
    memset(c, 0, sizeof(*c));
    return st;
}

MOEXC_DEF moexc_status moexc_act_cache_open(moexc_act_cache *c, const char *path, moexc_error *err)
{
    unsigned char h[MOEXC__ACT_HEADER];
    FILE *f;
    uint32_t version, da, db, reserved;
    uint64_t count, row_bytes, expect, chunk;
    int64_t size;
    memset(c, 0, sizeof(*c));
    if (strlen(path) >= sizeof(c->path)) return moexc__fail(err, MOEXC_ERR_ARG, "%s: path too long", path);
    f = fopen(path, "rb");
    if (!f) return moexc__fail(err, MOEXC_ERR_IO, "%s: cannot open", path);
    if (fread(h, 1, sizeof(h), f) != sizeof(h)) {
        fclose(f);
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: truncated header (need %d bytes)", path, MOEXC__ACT_HEADER);
    }
    if (memcmp(h, MOEXC__ACT_MAGIC, 8) != 0) {
        fclose(f);
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: not an activation cache (bad magic)", path);
    }
    version = moexc__get_u32le(h + 8);
    da = moexc__get_u32le(h + 12);
    db = moexc__get_u32le(h + 16);
    reserved = moexc__get_u32le(h + 20);
    count = moexc__get_u64le(h + 24);
    if (version != 1u) { fclose(f); return moexc__fail(err, MOEXC_ERR_VERSION, "%s: version %u, expected 1", path, version); }
    if (da == 0 || db == 0 || da > (1u << 20) || db > (1u << 20)) {
        fclose(f);
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: widths d_A %u, d_B %u out of range", path, da, db);
    }
    if (reserved != 0) {
        fclose(f);
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: reserved header field is 0x%x, expected 0", path, reserved);
    }
    row_bytes = ((uint64_t)da + db) * 4u;
    if (count > (UINT64_C(1) << 62) / row_bytes) {
        fclose(f);
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: count %llu too large", path, (unsigned long long)count);
    }
    /* 64-bit offsets: a cache over 2 GiB opens on Windows and 32-bit hosts too */
    expect = MOEXC__ACT_HEADER + count * row_bytes + 4u;
    if ((size = moexc__file_size64(f)) < 0) {
        fclose(f);
        return moexc__fail(err, MOEXC_ERR_IO, "%s: cannot seek to the end to measure the file", path);
    }
    if ((uint64_t)size != expect) {
        fclose(f);
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: size %lld bytes, header says %llu pairs (%llu bytes)",
                           path, (long long)size, (unsigned long long)count, (unsigned long long)expect);
    }
    if (moexc__fseek64(f, MOEXC__ACT_HEADER, SEEK_SET) != 0) {
        fclose(f);
        return moexc__fail(err, MOEXC_ERR_IO, "%s: cannot seek back to the data after the header", path);
    }
    if (count == 0) {   /* nothing for the reader to check later: the CRC of no bytes is 0 */
        unsigned char tail[4];
        if (fread(tail, 1, 4, f) != 4 || moexc__get_u32le(tail) != 0u) {
            fclose(f);
            return moexc__fail(err, MOEXC_ERR_CHECKSUM, "%s: empty cache with a CRC-32 other than 0", path);
        }
    }
    /* the scratch block holds at most as many pairs as the file: a header
       claiming wide rows costs no memory until the data is there */
    chunk = MOEXC__MIN((uint64_t)MOEXC__ACT_CHUNK, MOEXC__MAX(count, (uint64_t)1));
    c->scratch = moexc__alloc_floats((size_t)chunk * ((size_t)da + db));
    if (!c->scratch) { fclose(f); return moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory", path); }
    c->file = f;
    c->d[0] = (int)da; c->d[1] = (int)db;
    c->count = count;
    strcpy(c->path, path);
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_act_cache_read(moexc_act_cache *c, float *x_a, float *x_b, int max, int *n,
                                            moexc_error *err)
{
    size_t da = (size_t)c->d[0], db = (size_t)c->d[1], w = da + db, j;
    int done = 0;
    *n = 0;
    if (c->writing || !c->file) return moexc__fail(err, MOEXC_ERR_ARG, "%s: cache not open for reading", c->path);
    while (done < max && c->position < c->count) {
        int chunk = (int)MOEXC__MIN((uint64_t)MOEXC__MIN(max - done, MOEXC__ACT_CHUNK), c->count - c->position), i;
        if (fread(c->scratch, 4, (size_t)chunk * w, (FILE *)c->file) != (size_t)chunk * w)
            return moexc__fail(err, MOEXC_ERR_IO, "%s: read failed at pair %llu", c->path, (unsigned long long)c->position);
        c->crc = moexc__crc32(c->crc, c->scratch, (size_t)chunk * w * 4);
        moexc__le32_swap_inplace(c->scratch, (size_t)chunk * w);
        /* a NaN or infinite activation would poison every crosscoder step it enters */
        for (j = 0; j < (size_t)chunk * w; j++)
            if (!isfinite(c->scratch[j]))
                return moexc__fail(err, MOEXC_ERR_NUMERIC, "%s: pair %llu: value %lu of model %c is not finite",
                                   c->path, (unsigned long long)(c->position + j / w), (unsigned long)(j % w < da ? j % w : j % w - da),
                                   j % w < da ? 'A' : 'B');
        for (i = 0; i < chunk; i++) {
            memcpy(x_a + (size_t)(done + i) * da, c->scratch + (size_t)i * w, da * sizeof(float));
            memcpy(x_b + (size_t)(done + i) * db, c->scratch + (size_t)i * w + da, db * sizeof(float));
        }
        done += chunk;
        c->position += (uint64_t)chunk;
        if (c->position == c->count) {
            unsigned char tail[4];
            if (fread(tail, 1, 4, (FILE *)c->file) != 4)
                return moexc__fail(err, MOEXC_ERR_IO, "%s: cannot read the CRC", c->path);
            if (moexc__get_u32le(tail) != c->crc)
                return moexc__fail(err, MOEXC_ERR_CHECKSUM, "%s: CRC-32 %08x, data gives %08x", c->path,
                                   moexc__get_u32le(tail), c->crc);
        }
    }
    *n = done;
    return MOEXC_OK;
}

/* ======================================================================== */
/* >>crosscoder (implementation)                                             */
/* ======================================================================== */

/* Chunk of the optimiser's fixed-order gradient-norm sum (one double of
   `partial` per chunk; moexc__grad_norm); shared with >>sae. */
#define MOEXC__OPT_CHUNK 16384

/* Letters: n pairs in a batch, F latents, d_m width of model m, n_s shared
   latents, D dead latents taking part in AuxK. All activations inside are in
   normalised units (x^m already multiplied by s_m). */

/* Positive floats order like their bit patterns: the top 12 bits (sign,
   exponent and 3 mantissa bits) of a positive score name its bucket, an
   eighth of an octave wide. */
#define MOEXC__SCORE_SHIFT 20
#define MOEXC__SCORE_BUCKETS 4096

struct moexc_xc {
    moexc_xc_options opt;            /* resolved */
    int      d[2], F, ns;
    int      d_cat;                  /* d_A + d_B: W_enc^A over W_enc^B is one (d_cat x F) matrix */
    float    scale[2];               /* s_m                                   */
    float    threshold;              /* theta; -1 until the EMA starts        */
    int64_t  threshold_count;        /* EMA updates so far                    */
    int      step;
    int      frozen;
    int      last_n;                 /* batch size of the last loss_grad */
    float    select_t, select_ratio;  /* selection hint: the last batch's k n-th largest score, and the
                                        fraction of it the next scan starts from (see moexc__xc_select) */
    /* parameters, gradients and Adam moments share one layout */
    size_t   n_params;
    float   *params, *grads, *adam_m, *adam_v;
    size_t   off_enc[2], off_benc, off_dec[2], off_bdec[2];
    int64_t *since_fired;            /* (F) tokens since the latent last fired */
    signed char *dead_override;      /* (F) -1 none, 0 alive, 1 dead           */
    unsigned char *fired;            /* (F) fired in the current batch         */
    float   *norm[2], *w;                         /* (F)                */
    float   *enc_bias;                            /* (F) SPEC-form encoder bias */
    int     *aux_idx;                             /* (F) the dead latents (AuxK) */
    /* workspace for up to cap rows */
    int      cap;
    float   *xs[2], *xhat[2], *e[2], *dxhat[2];   /* (n x d_m)          */
    float   *xcat;                                /* (n x d_cat) [xs^A | xs^B], the encoder's input */
    float   *ehat[2];                             /* (n x d_m) AuxK's x̂, then its gradient */
    float   *aux_e[2];                            /* (n x d_m) the AuxK target e, a constant */
    float   *pre;                                 /* (n x F) pre-activations */
    double  *partial;                             /* (max(n, chunks, d_A, d_B)) sums and means */
    int      cap_dense;                           /* rows of f and df, allocated on first use: */
    float   *f, *df;                              /* (n x F) dense activations (L1, dense_only, encode) */
    /* The batch's kept latents (BatchTopK) in row-major order: entry e is
       ent_row (token), ent_lat (latent), ent_val (f = ReLU(pre); during
       selection its score). */
    size_t   n_ent, cap_ent;
    int     *ent_row, *ent_lat;
    float   *ent_val;
    float   *cand;                                /* selection: the scores in the threshold's bucket */
    size_t   cap_cand;
    /* AuxK entries, row b's at [b aux_per_row, b aux_per_row + aux_cnt[b]) */
    int      n_aux, aux_per_row;                  /* D dead latents, min(k_aux, D) */
    int     *aux_cnt;                             /* (n)                */
    int     *aux_lat;                             /* (n x min(k_aux, F)) */
    float   *aux_pre, *aux_val, *aux_dpre;        /* (n x min(k_aux, F)) */
    /* the same entries by latent, each latent's in row order: latent i's
       kept entries are col_ent[col_ptr[i] .. col_ptr[i+1]) (ids into ent_*),
       its AuxK entries aux_col_ent[aux_col_ptr[i] ..) (ids into aux_*) */
    int     *col_ptr, *aux_col_ptr;               /* (F + 1)            */
    int     *col_ent;                             /* (cap_col)          */
    int     *aux_col_ent;                         /* (n x min(k_aux, F)) */
    size_t   cap_col;
    /* per chunk / thread scratch */
    int      n_threads;
    ptrdiff_t *hist;                              /* (threads x 4096) selection histograms */
    size_t  *chunk_pos;                           /* (2 threads) entry and candidate offsets */
    float   *thr_buf;                             /* (threads x thr_len) */
    unsigned char *thr_keep;                      /* (threads x F)      */
    size_t   thr_len;
    int      dp_checked;                          /* the workers of opt.reduce agreed */
    float    dp_select_t, dp_select_ratio;        /* select_t / select_ratio of the global selection
                                                     (moexc__xc_select_dp): moved only by training
                                                     steps, so the same on every worker */
};

#define MOEXC__XC_P(xc, off) ((xc)->params + (xc)->off)
#define MOEXC__XC_G(xc, off) ((xc)->grads + (xc)->off)

/* Threads of the parallel regions that follow (1 without OpenMP), and this
   thread's index inside one. */
static int moexc__xc_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
static int moexc__xc_thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static void moexc__xc_free_workspace(moexc_xc *xc)
{
    int m;
    for (m = 0; m < 2; m++) {
        moexc__free_aligned(xc->xs[m]); moexc__free_aligned(xc->xhat[m]);
        moexc__free_aligned(xc->e[m]); moexc__free_aligned(xc->dxhat[m]);
        moexc__free_aligned(xc->ehat[m]); moexc__free_aligned(xc->aux_e[m]);
        xc->xs[m] = xc->xhat[m] = xc->e[m] = xc->dxhat[m] = xc->ehat[m] = xc->aux_e[m] = NULL;
    }
    moexc__free_aligned(xc->xcat); moexc__free_aligned(xc->pre);
    moexc__free_aligned(xc->f); moexc__free_aligned(xc->df);
    moexc__free(xc->partial); moexc__free(xc->aux_cnt);
    moexc__free(xc->aux_lat); moexc__free(xc->aux_pre); moexc__free(xc->aux_val); moexc__free(xc->aux_dpre);
    moexc__free(xc->aux_col_ent);
    xc->xcat = xc->pre = xc->f = xc->df = NULL;
    xc->partial = NULL; xc->aux_cnt = xc->aux_lat = xc->aux_col_ent = NULL;
    xc->aux_pre = xc->aux_val = xc->aux_dpre = NULL;
    xc->cap = xc->cap_dense = 0;
}

static void moexc__xc_free_entries(moexc_xc *xc)
{
    moexc__free(xc->ent_row); moexc__free(xc->ent_lat); moexc__free(xc->ent_val);
    moexc__free(xc->cand); moexc__free(xc->col_ent);
    xc->ent_row = xc->ent_lat = xc->col_ent = NULL;
    xc->ent_val = xc->cand = NULL;
    xc->cap_ent = xc->cap_cand = xc->cap_col = xc->n_ent = 0;
}

static void moexc__xc_free_thread_scratch(moexc_xc *xc)
{
    moexc__free(xc->hist); moexc__free(xc->chunk_pos); moexc__free_aligned(xc->thr_buf); moexc__free(xc->thr_keep);
    xc->hist = NULL; xc->chunk_pos = NULL; xc->thr_buf = NULL; xc->thr_keep = NULL;
    xc->n_threads = 0;
}

/* Buffers for batches of up to n pairs and the current thread count. */
static moexc_status moexc__xc_workspace(moexc_xc *xc, int n, moexc_error *err)
{
    size_t nF = (size_t)n * (size_t)xc->F, F = (size_t)xc->F;
    size_t chunks = (xc->n_params + MOEXC__OPT_CHUNK - 1) / MOEXC__OPT_CHUNK;
    int m, ok = 1, threads = moexc__xc_threads();
    int ka = xc->opt.variant == MOEXC_XC_BATCHTOPK && xc->opt.aux_k > 0 ? MOEXC__MIN(xc->opt.aux_k, xc->F) : 0;
    if (threads > xc->n_threads) {
        moexc__xc_free_thread_scratch(xc);
        xc->thr_len = MOEXC__MAX(2 * F, 16 * (size_t)xc->d_cat);
        xc->hist = (ptrdiff_t *)moexc__calloc((size_t)threads * MOEXC__SCORE_BUCKETS, sizeof(ptrdiff_t));
        xc->chunk_pos = (size_t *)moexc__calloc(2 * (size_t)threads, sizeof(size_t));
        xc->thr_buf = moexc__alloc_floats((size_t)threads * xc->thr_len);
        xc->thr_keep = (unsigned char *)moexc__calloc((size_t)threads, F);
        if (!xc->hist || !xc->chunk_pos || !xc->thr_buf || !xc->thr_keep) {
            moexc__xc_free_thread_scratch(xc);
            return moexc__fail(err, MOEXC_ERR_NOMEM, "crosscoder: no memory for %d threads' scratch (F = %d)", threads, xc->F);
        }
        xc->n_threads = threads;
    }
    if (n <= xc->cap) return MOEXC_OK;
    moexc__xc_free_workspace(xc);
    for (m = 0; m < 2; m++) {
        size_t nd = (size_t)n * (size_t)xc->d[m];
        xc->xs[m] = moexc__alloc_floats(nd); xc->xhat[m] = moexc__alloc_floats(nd);
        xc->e[m] = moexc__alloc_floats(nd); xc->dxhat[m] = moexc__alloc_floats(nd);
        xc->ehat[m] = moexc__alloc_floats(nd); xc->aux_e[m] = moexc__alloc_floats(nd);
        ok &= xc->xs[m] && xc->xhat[m] && xc->e[m] && xc->dxhat[m] && xc->ehat[m] && xc->aux_e[m];
    }
    xc->xcat = moexc__alloc_floats((size_t)n * (size_t)xc->d_cat);
    xc->pre = moexc__alloc_floats(nF);
    xc->partial = (double *)moexc__calloc(MOEXC__MAX(MOEXC__MAX((size_t)n, chunks), (size_t)MOEXC__MAX(xc->d[0], xc->d[1])), sizeof(double));
    xc->aux_cnt = (int *)moexc__calloc((size_t)n, sizeof(int));
    ok &= xc->xcat && xc->pre && xc->partial && xc->aux_cnt;
    if (ka > 0) {
        size_t na = (size_t)n * (size_t)ka;
        xc->aux_lat = (int *)moexc__calloc(na, sizeof(int));
        xc->aux_pre = (float *)moexc__calloc(na, sizeof(float));
        xc->aux_val = (float *)moexc__calloc(na, sizeof(float));
        xc->aux_dpre = (float *)moexc__calloc(na, sizeof(float));
        xc->aux_col_ent = (int *)moexc__calloc(na, sizeof(int));
        ok &= xc->aux_lat && xc->aux_pre && xc->aux_val && xc->aux_dpre && xc->aux_col_ent;
    }
    if (!ok) {
        moexc__xc_free_workspace(xc);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "crosscoder: no memory for a batch of %d pairs (F = %d)", n, xc->F);
    }
    xc->cap = n;
    return MOEXC_OK;
}

/* The dense activations f and their gradient df for up to cap rows. */
static moexc_status moexc__xc_dense_workspace(moexc_xc *xc, moexc_error *err)
{
    size_t nF = (size_t)xc->cap * (size_t)xc->F;
    if (xc->cap_dense >= xc->cap) return MOEXC_OK;
    moexc__free_aligned(xc->f); moexc__free_aligned(xc->df);
    xc->f = moexc__alloc_floats(nF); xc->df = moexc__alloc_floats(nF);
    if (!xc->f || !xc->df) {
        moexc__free_aligned(xc->f); moexc__free_aligned(xc->df);
        xc->f = xc->df = NULL; xc->cap_dense = 0;
        return moexc__fail(err, MOEXC_ERR_NOMEM, "crosscoder: no memory for dense activations (%d x %d)", xc->cap, xc->F);
    }
    xc->cap_dense = xc->cap;
    return MOEXC_OK;
}

/* Room for n entries and n_cand bucket candidates. */
static moexc_status moexc__xc_entry_room(moexc_xc *xc, size_t n, size_t n_cand, moexc_error *err)
{
    if (n > xc->cap_ent) {
        size_t cap = MOEXC__MAX(n, xc->cap_ent + xc->cap_ent / 2);
        int *r = (int *)moexc__realloc(xc->ent_row, moexc__mul_size(cap, sizeof(int)));
        int *l = r ? (int *)moexc__realloc(xc->ent_lat, moexc__mul_size(cap, sizeof(int))) : NULL;
        float *v = NULL;
        if (r) xc->ent_row = r;
        if (l) { xc->ent_lat = l; v = (float *)moexc__realloc(xc->ent_val, moexc__mul_size(cap, sizeof(float))); }
        if (!v) {
            moexc__xc_free_entries(xc);
            return moexc__fail(err, MOEXC_ERR_NOMEM, "crosscoder: no memory for %lu selected latents", (unsigned long)n);
        }
        xc->ent_val = v;
        xc->cap_ent = cap;
    }
    if (n_cand > xc->cap_cand) {
        size_t cap = MOEXC__MAX(n_cand, xc->cap_cand + xc->cap_cand / 2);
        float *c = (float *)moexc__realloc(xc->cand, moexc__mul_size(cap, sizeof(float)));
        if (!c) {
            moexc__xc_free_entries(xc);
            return moexc__fail(err, MOEXC_ERR_NOMEM, "crosscoder: no memory for %lu selection candidates", (unsigned long)n_cand);
        }
        xc->cand = c;
        xc->cap_cand = cap;
    }
    return MOEXC_OK;
}

MOEXC_DEF void moexc_xc_free(moexc_xc *xc)
{
    if (!xc) return;
    moexc__xc_free_workspace(xc);
    moexc__xc_free_entries(xc);
    moexc__xc_free_thread_scratch(xc);
    moexc__free_aligned(xc->params); moexc__free_aligned(xc->grads);
    moexc__free_aligned(xc->adam_m); moexc__free_aligned(xc->adam_v);
    moexc__free(xc->since_fired); moexc__free(xc->dead_override); moexc__free(xc->aux_idx);
    moexc__free(xc->fired); moexc__free(xc->col_ptr); moexc__free(xc->aux_col_ptr);
    moexc__free_aligned(xc->norm[0]); moexc__free_aligned(xc->norm[1]); moexc__free_aligned(xc->w);
    moexc__free_aligned(xc->enc_bias);
    moexc__free(xc);
}

MOEXC_DEF moexc_status moexc_xc_create(moexc_xc **out, int d_a, int d_b, const moexc_xc_options *opt,
                                       moexc_error *err)
{
    moexc_xc_options o;
    moexc_xc *xc;
    size_t F, off = 0;
    int i, ok;
    *out = NULL;
    memset(&o, 0, sizeof(o));
    if (opt) o = *opt;
    if (d_a <= 0 || d_b <= 0) return moexc__fail(err, MOEXC_ERR_ARG, "crosscoder: widths d_A %d, d_B %d must be > 0", d_a, d_b);
    if (o.variant != MOEXC_XC_BATCHTOPK && o.variant != MOEXC_XC_L1)
        return moexc__fail(err, MOEXC_ERR_ARG, "crosscoder: unknown variant %d", o.variant);
    if (o.n_latents == 0) o.n_latents = 8 * (d_a + d_b);
    if (o.n_latents < 1) return moexc__fail(err, MOEXC_ERR_ARG, "crosscoder: n_latents %d < 1", o.n_latents);
    if (o.k == 0) o.k = MOEXC__MIN(32, o.n_latents);
    if (o.k < 1 || o.k > o.n_latents) return moexc__fail(err, MOEXC_ERR_ARG, "crosscoder: k %d outside [1, F = %d]", o.k, o.n_latents);
    if (o.n_shared < 0 || o.n_shared > o.n_latents)
        return moexc__fail(err, MOEXC_ERR_ARG, "crosscoder: n_shared %d outside [0, F = %d]", o.n_shared, o.n_latents);
    if (o.n_shared > 0 && d_a != d_b)
        return moexc__fail(err, MOEXC_ERR_ARG, "crosscoder: shared latents need d_A == d_B (got %d and %d)", d_a, d_b);
    if (o.lambda_f == 0.0f) o.lambda_f = o.variant == MOEXC_XC_L1 ? 2.0f : -1.0f;
    if (o.lambda_ratio == 0.0f) o.lambda_ratio = 0.15f;
    if (o.aux_k == 0) o.aux_k = o.variant == MOEXC_XC_BATCHTOPK ? MOEXC__MAX(1, MOEXC__MAX(d_a, d_b) / 2) : -1;
    if (o.aux_alpha == 0.0f) o.aux_alpha = 1.0f / 32.0f;
    if (o.steps == 0) o.steps = 10000;
    if (o.batch == 0) o.batch = 1024;
    if (o.steps < 1 || o.batch < 1) return moexc__fail(err, MOEXC_ERR_ARG, "crosscoder: steps %d and batch %d must be >= 1", o.steps, o.batch);
    if (o.dead_tokens == 0) o.dead_tokens = MOEXC__MAX(1, MOEXC__MIN((int64_t)10000000, (int64_t)o.steps * o.batch / 20));
    if (o.lr == 0.0f) o.lr = (float)MOEXC__MIN(1e-3, 2e-4 / sqrt((double)o.n_latents / 16384.0));
    if (o.warmup_steps == 0) o.warmup_steps = MOEXC__MIN(1000, o.steps / 20);
    if (o.decay_frac == 0.0f) o.decay_frac = 0.2f;
    if (o.lambda_warmup == 0.0f) o.lambda_warmup = 0.05f;
    if (o.clip == 0.0f) o.clip = 1.0f;
    if (o.init_norm == 0.0f) o.init_norm = o.variant == MOEXC_XC_L1 ? 0.08f : 1.0f;
    if (o.threshold_beta == 0.0f) o.threshold_beta = (float)MOEXC__MIN(0.999, MOEXC__MAX(0.9, 1.0 - 10.0 / o.steps));
    if (o.threshold_start == 0) o.threshold_start = o.warmup_steps;
    if (!(o.lr > 0.0f) || o.decay_frac < 0.0f || o.decay_frac > 1.0f ||
        !(o.threshold_beta > 0.0f && o.threshold_beta < 1.0f) || !(o.init_norm > 0.0f))
        return moexc__fail(err, MOEXC_ERR_ARG, "crosscoder: lr %g, decay_frac %g, threshold_beta %g or init_norm %g out of range",
                           o.lr, o.decay_frac, o.threshold_beta, o.init_norm);
    if (moexc__dp_valid(&o.reduce, "crosscoder", err) != MOEXC_OK) return MOEXC_ERR_ARG;

    xc = (moexc_xc *)moexc__calloc(1, sizeof(*xc));
    if (!xc) return moexc__fail(err, MOEXC_ERR_NOMEM, "crosscoder: out of memory");
    xc->opt = o;
    xc->d[0] = d_a; xc->d[1] = d_b; xc->d_cat = d_a + d_b;
    xc->F = o.n_latents; xc->ns = o.n_shared;
    xc->scale[0] = xc->scale[1] = 1.0f;
    xc->threshold = -1.0f;
    xc->select_ratio = 0.9f;
    F = (size_t)xc->F;
    /* the flat layout documented in the declaration */
    xc->off_enc[0] = off; off += (size_t)d_a * F;
    xc->off_enc[1] = off; off += (size_t)d_b * F;
    xc->off_benc = off;   off += F;
    xc->off_dec[0] = off; off += F * (size_t)d_a;
    xc->off_dec[1] = off; off += (F - (size_t)xc->ns) * (size_t)d_b;
    xc->off_bdec[0] = off; off += (size_t)d_a;
    xc->off_bdec[1] = off; off += (size_t)d_b;
    xc->n_params = off;
    xc->params = moexc__alloc_floats(off);
    xc->grads = moexc__alloc_floats(off);
    xc->adam_m = moexc__alloc_floats(off);
    xc->adam_v = moexc__alloc_floats(off);
    xc->since_fired = (int64_t *)moexc__calloc(F, sizeof(int64_t));
    xc->dead_override = (signed char *)moexc__malloc(F);
    xc->aux_idx = (int *)moexc__calloc(F, sizeof(int));
    xc->norm[0] = moexc__alloc_floats(F); xc->norm[1] = moexc__alloc_floats(F); xc->w = moexc__alloc_floats(F);
    xc->enc_bias = moexc__alloc_floats(F);
    xc->fired = (unsigned char *)moexc__calloc(F, 1);
    xc->col_ptr = (int *)moexc__calloc(F + 1, sizeof(int));
    xc->aux_col_ptr = (int *)moexc__calloc(F + 1, sizeof(int));
    ok = xc->params && xc->grads && xc->adam_m && xc->adam_v && xc->since_fired && xc->dead_override &&
         xc->aux_idx && xc->norm[0] && xc->norm[1] && xc->w && xc->enc_bias && xc->fired && xc->col_ptr && xc->aux_col_ptr;
    if (!ok) {
        moexc_xc_free(xc);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "crosscoder: no memory for F = %d, d = %d, %d", (int)F, d_a, d_b);
    }
    for (i = 0; i < xc->F; i++) xc->dead_override[i] = -1;
    *out = xc;
    return MOEXC_OK;
}

MOEXC_DEF const moexc_xc_options *moexc_xc_get_options(const moexc_xc *xc) { return &xc->opt; }
MOEXC_DEF int   moexc_xc_dim(const moexc_xc *xc, int m) { return xc->d[m ? 1 : 0]; }
MOEXC_DEF float moexc_xc_scale(const moexc_xc *xc, int m) { return xc->scale[m ? 1 : 0]; }
MOEXC_DEF float moexc_xc_threshold(const moexc_xc *xc) { return xc->threshold; }
MOEXC_DEF int   moexc_xc_step(const moexc_xc *xc) { return xc->step; }
MOEXC_DEF size_t moexc_xc_num_params(const moexc_xc *xc) { return xc->n_params; }
MOEXC_DEF float *moexc_xc_params(moexc_xc *xc) { return xc->params; }
MOEXC_DEF float *moexc_xc_grads(moexc_xc *xc) { return xc->grads; }
MOEXC_DEF void  moexc_xc_freeze_selection(moexc_xc *xc, int frozen) { xc->frozen = frozen != 0; }
MOEXC_DEF void  moexc_xc_set_scales(moexc_xc *xc, float s_a, float s_b) { xc->scale[0] = s_a; xc->scale[1] = s_b; }
MOEXC_DEF void  moexc_xc_set_dead(moexc_xc *xc, int latent, int dead)
{
    if (latent >= 0 && latent < xc->F) xc->dead_override[latent] = (signed char)(dead ? 1 : 0);
}

/* Row i of W_dec^m inside a parameter-shaped array (params or grads). */
static float *moexc__xc_dec_row(const moexc_xc *xc, float *base, int m, int i)
{
    if (m == 0 || i < xc->ns) return base + xc->off_dec[0] + (size_t)i * (size_t)xc->d[0];
    return base + xc->off_dec[1] + (size_t)(i - xc->ns) * (size_t)xc->d[1];
}

MOEXC_DEF const float *moexc_xc_decoder_row(const moexc_xc *xc, int m, int i)
{
    return moexc__xc_dec_row(xc, xc->params, m ? 1 : 0, i);
}

MOEXC_DEF void moexc_xc_decoder(const moexc_xc *xc, int m, int folded, float *out)
{
    int i, j, d;
    m = m ? 1 : 0;
    d = xc->d[m];
    for (i = 0; i < xc->F; i++) {
        const float *row = moexc__xc_dec_row(xc, xc->params, m, i);
        for (j = 0; j < d; j++) out[(size_t)i * (size_t)d + (size_t)j] = folded ? row[j] / xc->scale[m] : row[j];
    }
}

static int moexc__xc_is_dead(const moexc_xc *xc, int i)
{
    if (xc->dead_override[i] >= 0) return xc->dead_override[i];
    return xc->since_fired[i] >= xc->opt.dead_tokens;
}

MOEXC_DEF moexc_status moexc_xc_init_from_data(moexc_xc *xc, const float *x_a, const float *x_b, int n,
                                               moexc_error *err)
{
    const float *x[2];
    moexc_rng rng;
    int m, i, j, b;
    x[0] = x_a; x[1] = x_b;
    if (n < 1) return moexc__fail(err, MOEXC_ERR_ARG, "crosscoder init: need at least one pair, got %d", n);
    for (m = 0; m < 2; m++) {
        size_t d = (size_t)xc->d[m];
        double norm_sum = 0.0;
        float *bdec = MOEXC__XC_P(xc, off_bdec[m]);
        for (b = 0; b < n; b++) norm_sum += sqrt((double)moexc_dot(x[m] + (size_t)b * d, x[m] + (size_t)b * d, d));
        /* s_m: mean ||s_m x^m|| = sqrt(d_m) on the sample */
        if (!(norm_sum > 0.0) || !isfinite(norm_sum))
            return moexc__fail(err, MOEXC_ERR_NUMERIC, "crosscoder init: model %c activations have mean norm %g",
                               m ? 'B' : 'A', norm_sum / n);
        xc->scale[m] = (float)(sqrt((double)d) * n / norm_sum);
        /* b_dec^m = mean of s_m x^m */
        for (j = 0; j < (int)d; j++) {
            double s = 0.0;
            for (b = 0; b < n; b++) s += x[m][(size_t)b * d + (size_t)j];
            bdec[j] = (float)(s / n * xc->scale[m]);
        }
    }
    /* decoder rows: random directions of norm init_norm; W_enc^m = (W_dec^m)^T; b_enc = 0 */
    moexc_rng_seed(&rng, xc->opt.seed ^ UINT64_C(0x5C0DE5C0DE));
    for (m = 0; m < 2; m++) {
        int d = xc->d[m];
        float *enc = MOEXC__XC_P(xc, off_enc[m]);
        for (i = 0; i < xc->F; i++) {
            float *row = moexc__xc_dec_row(xc, xc->params, m, i);
            if (m == 0 || i >= xc->ns) {
                double nn = 0.0;
                for (j = 0; j < d; j++) { row[j] = moexc_rng_normal(&rng); nn += (double)row[j] * row[j]; }
                nn = sqrt(nn);
                for (j = 0; j < d; j++) row[j] = (float)(row[j] * xc->opt.init_norm / nn);
            }
            for (j = 0; j < d; j++) enc[(size_t)j * (size_t)xc->F + (size_t)i] = row[j];
        }
    }
    memset(MOEXC__XC_P(xc, off_benc), 0, (size_t)xc->F * sizeof(float));
    return MOEXC_OK;
}

/* ---- selection -------------------------------------------------------------- */

/* The k-th largest of a[0..n-1] (1 <= k <= n); reorders a (Hoare's FIND). */
static float moexc__kth_largest(float *a, ptrdiff_t n, ptrdiff_t k)
{
    ptrdiff_t lo = 0, hi = n - 1, target = k - 1;
    while (lo < hi) {
        float pivot = a[target];
        ptrdiff_t i = lo, j = hi;
        do {
            while (a[i] > pivot) i++;
            while (pivot > a[j]) j--;
            if (i <= j) { float t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
        } while (i <= j);
        if (j < target) lo = i;
        if (target < i) hi = j;
    }
    return a[target];
}

/* Index of the lowest set bit of a non-zero mask. */
static int moexc__lowest_bit(unsigned mask)
{
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctz(mask);
#else
    int q = 0;
    while (!(mask & 1u)) { mask >>= 1; q++; }
    return q;
#endif
}

/* Number of set bits of a lane mask. */
static int moexc__popcount(unsigned mask)
{
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_popcount(mask);
#else
    int c = 0;
    for (; mask; mask &= mask - 1u) c++;
    return c;
#endif
}

/* The float of a 32-bit key, where keys order like the floats they stand
   for: key = bits | 2^31 for a float with the sign bit clear, ~bits for one
   with it set (so -0 sits just below +0, and NaNs beyond +-inf). */
static float moexc__key_float(uint32_t key)
{
    uint32_t bits = (key & 0x80000000u) ? key & 0x7fffffffu : ~key;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* #{i : v[i] >= t} and, when min_out is given, the smallest such v[i]
   (+inf when none). */
static ptrdiff_t moexc__count_ge(const float *v, ptrdiff_t n, float t, float *min_out)
{
    moexc__vf vt = moexc__vset1(t);
    ptrdiff_t i = 0, c = 0;
    float mn = (float)HUGE_VAL, lanes[MOEXC__VW];
    for (; i + MOEXC__VW <= n; i += MOEXC__VW) {
        moexc__vf x = moexc__vload(v + i);
        unsigned mask = moexc__vmask_ge(x, vt);
        c += moexc__popcount(mask);
        if (min_out && mask) {
            moexc__vstore(lanes, x);
            for (; mask; mask &= mask - 1u) mn = MOEXC__MIN(mn, lanes[moexc__lowest_bit(mask)]);
        }
    }
    for (; i < n; i++)
        if (v[i] >= t) { c++; mn = MOEXC__MIN(mn, v[i]); }
    if (min_out) *min_out = mn;
    return c;
}

/* The k-th largest of v[0..n-1] (1 <= k <= n) without reordering it, by
   bisection on the keys: the largest key K with #{v >= float(K)} >= k,
   built from the top bit down, one vector count of v per bit; a count of
   exactly k ends it early (the answer is then the smallest v >= float(K)).
   NaN in v, or an answer of -inf, leaves no key that counts k: returns NaN
   (callers then fall back to moexc__kth_largest). Faster than quickselect
   on rows of up to a few thousand: each of its <= 32 passes is a
   branch-free vector compare, where quickselect's passes branch per value. */
static float moexc__kth_largest_bisect(const float *v, ptrdiff_t n, ptrdiff_t k)
{
    uint32_t key = 0, bit;
    for (bit = 0x80000000u; bit; bit >>= 1) {
        float t = moexc__key_float(key | bit);
        ptrdiff_t c = moexc__count_ge(v, n, t, NULL);
        if (c == k) {
            float mn;
            moexc__count_ge(v, n, t, &mn);
            return mn;
        }
        if (c > k) key |= bit;
    }
    return moexc__key_float(key);
}

/* Given t, the k-th largest of v: keep[i] = 1 for every v[i] > t and for the
   lowest-index v[i] == t until exactly k are kept. Never more than k: a NaN
   in v (pre-activations overflowed by huge finite weights) leaves the
   quickselect's t meaningless, and the callers' buffers hold k entries. */
static void moexc__keep_from_threshold(const float *v, ptrdiff_t n, ptrdiff_t k, float t, unsigned char *keep)
{
    ptrdiff_t i, greater = 0, need, kept = 0;
    for (i = 0; i < n; i++) greater += v[i] > t;
    need = k - greater;
    for (i = 0; i < n; i++) {
        if (v[i] > t && kept < k) { keep[i] = 1; kept++; }
        else if (v[i] == t && need > 0) { keep[i] = 1; need--; }
        else keep[i] = 0;
    }
}

/* keep[i] = 1 for the k largest v[i] of any sign (1 <= k <= n), ties at the
   boundary to the lowest index, so exactly k are kept. tmp holds n floats. */
static void moexc__select_top_any(const float *v, ptrdiff_t n, ptrdiff_t k, unsigned char *keep, float *tmp)
{
    float t = moexc__kth_largest_bisect(v, n, k);
    if (t != t) {                                  /* NaN in v, or the answer is -inf */
        memcpy(tmp, v, (size_t)n * sizeof(float));
        t = moexc__kth_largest(tmp, n, k);
    }
    moexc__keep_from_threshold(v, n, k, t, keep);
}

static uint32_t moexc__score_bucket(float s)
{
    uint32_t bits;
    memcpy(&bits, &s, 4);
    return bits >> MOEXC__SCORE_SHIFT;
}

/* keep[i] = 1 for the k largest positive v[i], 0 elsewhere; ties at the
   boundary go to the lowest index, so exactly min(k, #positive) are kept.
   Returns the smallest kept value (0 when none). tmp holds n floats.
   Radix pre-selection: a histogram of the buckets finds the one holding the
   k-th largest; only that bucket goes through quickselect. Short rows
   (n < 8192, e.g. one token's latents in an SAE) skip the histogram, whose
   4096 buckets cost more than they save there, and bisect for the k-th
   largest (moexc__kth_largest_bisect); the k-th largest, and so the result,
   is the same either way. */
static float moexc__select_top(const float *v, ptrdiff_t n, ptrdiff_t k, unsigned char *keep, float *tmp)
{
    ptrdiff_t hist[MOEXC__SCORE_BUCKETS];
    ptrdiff_t i, c = 0, above = 0;
    uint32_t bucket = 0;
    float t;
    int j, short_row = n < 8192;
    if (short_row) {
        c = moexc__count_ge(v, n, nextafterf(0.0f, 1.0f), NULL);    /* v >= the smallest positive float */
    } else {
        memset(hist, 0, sizeof(hist));
        for (i = 0; i < n; i++)
            if (v[i] > 0.0f) { hist[moexc__score_bucket(v[i])]++; c++; }
    }
    if (c == 0 || k <= 0) { memset(keep, 0, (size_t)n); return 0.0f; }
    if (c <= k) {
        float mn = FLT_MAX;
        for (i = 0; i < n; i++) { keep[i] = v[i] > 0.0f; if (keep[i] && v[i] < mn) mn = v[i]; }
        return mn;
    }
    if (short_row) {
        t = moexc__kth_largest_bisect(v, n, k);              /* c > k: the k-th largest is positive */
        if (t != t) {                                        /* NaN in v: quickselect the positive values */
            for (i = 0, c = 0; i < n; i++) if (v[i] > 0.0f) tmp[c++] = v[i];
            t = moexc__kth_largest(tmp, c, k);
        }
        moexc__keep_from_threshold(v, n, k, t, keep);
        return t;
    }
    for (j = MOEXC__SCORE_BUCKETS - 1; j >= 0; j--) {
        if (above + hist[j] >= k) { bucket = (uint32_t)j; break; }
        above += hist[j];
    }
    c = 0;
    for (i = 0; i < n; i++)
        if (v[i] > 0.0f && moexc__score_bucket(v[i]) == bucket) tmp[c++] = v[i];
    t = moexc__kth_largest(tmp, c, k - above);
    moexc__keep_from_threshold(v, n, k, t, keep);
    return t;
}

/* One scan over the BatchTopK scores s_bi = ReLU(pre_bi) w_i of rows
   [b0, b1), visiting the positive s >= floor: with collect == 0 it counts
   them into hist (by bucket); with collect != 0 it appends those in bucket
   >= `bucket` as entries (row, latent, score) at *pos, and
   copies the scores of bucket `bucket` itself to cand at *cpos. Each vector
   of scores is compared with the floor at once, and only the lanes at or
   above it are visited (a few percent of them). */
static void moexc__xc_scan_scores(moexc_xc *xc, const float *pre, int b0, int b1, float floor, ptrdiff_t *hist,
                                  int collect, uint32_t bucket, size_t *pos, size_t *cpos)
{
    const float *w = xc->w;
    /* s > 0 and s >= floor, as one compare: s >= the smallest positive float */
    float lo = floor > 0.0f ? floor : nextafterf(0.0f, 1.0f), lanes[MOEXC__VW];
    moexc__vf vlo = moexc__vset1(lo);
    size_t F = (size_t)xc->F, i, p = collect ? *pos : 0, cp = collect ? *cpos : 0;
    int b;
    for (b = b0; b < b1; b++) {
        const float *row = pre + (size_t)b * F;
        for (i = 0; i < F; i += MOEXC__VW) {
            size_t width = MOEXC__MIN((size_t)MOEXC__VW, F - i), q;
            unsigned mask;
            if (width == MOEXC__VW) {
                moexc__vf s = moexc__vmul(moexc__vmax(moexc__vload(row + i), moexc__vzero()), moexc__vload(w + i));
                mask = moexc__vmask_ge(s, vlo);
                if (!mask) continue;
                moexc__vstore(lanes, s);
            } else {
                for (q = 0, mask = 0; q < width; q++) {
                    lanes[q] = (row[i + q] > 0.0f ? row[i + q] : 0.0f) * w[i + q];
                    mask |= (unsigned)(lanes[q] >= lo) << q;
                }
            }
            while (mask) {
                int q = moexc__lowest_bit(mask);
                float s = lanes[q];
                uint32_t bk = moexc__score_bucket(s);
                mask &= mask - 1u;
                if (!collect) { hist[bk]++; continue; }
                if (bk < bucket) continue;
                xc->ent_row[p] = b; xc->ent_lat[p] = (int)(i + (size_t)q); xc->ent_val[p] = s; p++;
                if (bk == bucket) xc->cand[cp++] = s;
            }
        }
    }
    if (collect) { *pos = p; *cpos = cp; }
}

/* BatchTopK selection over the batch (SPEC §4): scores s_bi = ReLU(pre_bi) w_i,
   keep the k n largest (ties at the boundary to the lowest row-major index,
   so exactly min(k n, #positive) are kept). Writes the kept entries by row
   with f = pre and returns the smallest kept score.
   Two scans of the scores: the first histograms the buckets of the scores
   at or above a floor, which finds the bucket holding the k n-th largest
   score t; the second collects every score in or above that bucket;
   quickselect over the bucket's scores gives t; a walk in row order keeps
   s > t and the first s == t. The floor is a fraction (select_ratio, at
   most 0.9) of the last batch's t, so the scans skip most vectors; when
   fewer than k n scores reach it the first scan is redone with floor 0 and
   the fraction shrinks. The floor changes the work, never the result.
   Rows are split into one chunk per thread; chunks are concatenated in row
   order, so the result does not depend on the thread count. With max_floor
   > 0 (the inference threshold rule) nothing is selected: every score >=
   max_floor is kept. */
static moexc_status moexc__xc_select(moexc_xc *xc, const float *pre, int n, float max_floor, float *min_kept,
                                     moexc_error *err)
{
    ptrdiff_t hist[MOEXC__SCORE_BUCKETS], kn = (ptrdiff_t)xc->opt.k * n, above = 0, total, greater, need;
    int T = xc->n_threads, c, j, keep_all = max_floor > 0.0f;
    float floor = keep_all ? max_floor : xc->select_ratio * xc->select_t, t = 0.0f;
    uint32_t bucket = 0;
    size_t n_coll = 0, n_cand = 0, e, out;
    moexc_status st;
    for (;;) {
#ifdef _OPENMP
#       pragma omp parallel for schedule(static) if (T > 1 && (double)n * xc->F >= 262144.0)
#endif
        for (c = 0; c < T; c++) {
            ptrdiff_t *h = xc->hist + (size_t)c * MOEXC__SCORE_BUCKETS;
            memset(h, 0, MOEXC__SCORE_BUCKETS * sizeof(ptrdiff_t));
            moexc__xc_scan_scores(xc, pre, (int)((int64_t)n * c / T), (int)((int64_t)n * (c + 1) / T), floor, h, 0, 0, NULL, NULL);
        }
        memset(hist, 0, sizeof(hist));
        total = 0;
        for (c = 0; c < T; c++)
            for (j = 0; j < MOEXC__SCORE_BUCKETS; j++) hist[j] += xc->hist[(size_t)c * MOEXC__SCORE_BUCKETS + j];
        for (j = 0; j < MOEXC__SCORE_BUCKETS; j++) total += hist[j];
        if (keep_all || total >= kn || floor == 0.0f) break;
        floor = 0.0f;
        xc->select_ratio = MOEXC__MAX(0.25f, 0.5f * xc->select_ratio);
    }
    if (keep_all || total <= kn) keep_all = 1;    /* every score found is kept */
    else
        for (j = MOEXC__SCORE_BUCKETS - 1; j >= 0; j--) {
            if (above + hist[j] >= kn) { bucket = (uint32_t)j; break; }
            above += hist[j];
        }
    /* chunk c's entries start at chunk_pos[c], its candidates at chunk_pos[T + c] */
    for (c = 0; c < T; c++) {
        const ptrdiff_t *h = xc->hist + (size_t)c * MOEXC__SCORE_BUCKETS;
        xc->chunk_pos[c] = n_coll; xc->chunk_pos[T + c] = n_cand;
        for (j = (int)bucket; j < MOEXC__SCORE_BUCKETS; j++) n_coll += (size_t)h[j];
        n_cand += keep_all ? 0 : (size_t)h[bucket];
    }
    if ((st = moexc__xc_entry_room(xc, MOEXC__MAX(n_coll, (size_t)1), MOEXC__MAX(n_cand, (size_t)1), err)) != MOEXC_OK) return st;
#ifdef _OPENMP
#   pragma omp parallel for schedule(static) if (T > 1 && (double)n * xc->F >= 262144.0)
#endif
    for (c = 0; c < T; c++)
        moexc__xc_scan_scores(xc, pre, (int)((int64_t)n * c / T), (int)((int64_t)n * (c + 1) / T), floor, NULL, 1,
                              keep_all ? 0 : bucket, &xc->chunk_pos[c], &xc->chunk_pos[T + c]);
    if (keep_all) {
        t = FLT_MAX;
        for (e = 0; e < n_coll; e++) t = MOEXC__MIN(t, xc->ent_val[e]);
        if (n_coll == 0) t = 0.0f;
        need = 0;
    } else {
        t = moexc__kth_largest(xc->cand, (ptrdiff_t)n_cand, kn - above);
        greater = above;
        for (e = 0; e < n_cand; e++) greater += xc->cand[e] > t;
        need = kn - greater;
    }
    /* keep s > t and the first `need` s == t, in row-major order; f = pre */
    for (e = 0, out = 0; e < n_coll; e++) {
        float s = xc->ent_val[e];
        if (!keep_all && !(s > t || (s == t && need-- > 0))) continue;
        xc->ent_row[out] = xc->ent_row[e];
        xc->ent_lat[out] = xc->ent_lat[e];
        xc->ent_val[out] = pre[(size_t)xc->ent_row[e] * (size_t)xc->F + (size_t)xc->ent_lat[e]];
        out++;
    }
    xc->n_ent = out;
    if (max_floor <= 0.0f) {
        xc->select_t = t;
        xc->select_ratio = MOEXC__MIN(0.9f, xc->select_ratio + 0.05f);
    }
    if (min_kept) *min_kept = t;
    return MOEXC_OK;
}

/* ---- data parallelism (SPEC §9; see moexc_reduce) ------------------------------ */

/* Bits of a positive float, which order like the floats. */
static uint32_t moexc__xc_bits(float s)
{
    uint32_t bits;
    memcpy(&bits, &s, 4);
    return bits;
}

/* i in [0, n) of the largest j with above + sum_{j' > j} h[j'] < target <=
   above + sum_{j' >= j} h[j']; *above becomes the count of values in the
   higher bins. */
static int moexc__dp_bin(const double *h, int n, double target, double *above)
{
    int j;
    for (j = n - 1; j > 0; j--) {
        if (*above + h[j] >= target) return j;
        *above += h[j];
    }
    return 0;
}

/* BatchTopK selection over the global batch of W workers (SPEC §4 under
   SPEC §9): worker r holds rows [r n, (r+1) n) of the W n rows, and the
   k W n largest scores of all of them are kept (all positive ones if fewer),
   ties at the boundary to the lowest global row-major index: exactly what
   moexc__xc_select keeps for one worker holding the whole batch. The
   (k W n)-th largest score t is found by its bits (positive floats order
   like their bit patterns): the summed histogram of the top 12 bits
   (moexc__xc_scan_scores' buckets) gives t's bucket, summed histograms of
   the next 10 and of the last 10 bits of the scores in that bucket pin
   t's bits; then the workers' counts of s == t, in rank order, say how many
   of the ties each keeps (the first `need` of the global batch). The scans'
   floor (it changes the work, never the result) follows dp_select_t and
   dp_select_ratio as moexc__xc_select's follows select_t: only global
   selections move them, so every worker scans with the same floor. Four
   sums: 4096 + 1024 + 1024 bin counts, ties (W). Writes the kept entries
   by row with f = pre; *min_kept = t, the smallest kept score. */
static moexc_status moexc__xc_select_dp(moexc_xc *xc, const float *pre, int n, float *min_kept, moexc_error *err)
{
    const moexc_reduce *r = &xc->opt.reduce;
    int W = moexc__dp_world(r), rank = moexc__dp_rank(r), T = xc->n_threads, c, j, j1 = 0, j2 = 0, j3 = 0;
    double kn = (double)xc->opt.k * n * W, total = 0.0, above = 0.0, target, need, prior = 0.0, eq = 0.0;
    double *buf = (double *)moexc__calloc(MOEXC__SCORE_BUCKETS + (size_t)W, sizeof(double));
    size_t n_coll = 0, n_cand = 0, e, out;
    uint32_t tbits;
    float floor, t = 0.0f;
    moexc_status st;
    if (!buf) return moexc__fail(err, MOEXC_ERR_NOMEM, "crosscoder: out of memory (reduce)");
    if (xc->dp_select_ratio == 0.0f) xc->dp_select_ratio = 0.9f;   /* as select_ratio's start */
    floor = xc->dp_select_ratio * xc->dp_select_t;
    for (;;) {   /* level 1: the summed histogram of the scores >= floor */
#ifdef _OPENMP
#       pragma omp parallel for schedule(static) if (T > 1 && (double)n * xc->F >= 262144.0)
#endif
        for (c = 0; c < T; c++) {
            ptrdiff_t *h = xc->hist + (size_t)c * MOEXC__SCORE_BUCKETS;
            memset(h, 0, MOEXC__SCORE_BUCKETS * sizeof(ptrdiff_t));
            moexc__xc_scan_scores(xc, pre, (int)((int64_t)n * c / T), (int)((int64_t)n * (c + 1) / T), floor, h, 0, 0, NULL, NULL);
        }
        memset(buf, 0, MOEXC__SCORE_BUCKETS * sizeof(double));
        for (c = 0; c < T; c++)
            for (j = 0; j < MOEXC__SCORE_BUCKETS; j++) buf[j] += (double)xc->hist[(size_t)c * MOEXC__SCORE_BUCKETS + j];
        if ((st = moexc__dp_sum(r, buf, MOEXC__SCORE_BUCKETS, MOEXC_REDUCE_F64, "crosscoder selection", err)) != MOEXC_OK) goto done;
        for (total = 0.0, j = 0; j < MOEXC__SCORE_BUCKETS; j++) total += buf[j];
        if (total >= kn || floor == 0.0f) break;
        floor = 0.0f;
        xc->dp_select_ratio = MOEXC__MAX(0.25f, 0.5f * xc->dp_select_ratio);
    }
    target = MOEXC__MIN(kn, total);     /* keep the `target` largest scores */
    if (target > 0.0) j1 = moexc__dp_bin(buf, MOEXC__SCORE_BUCKETS, target, &above);
    /* collect this worker's scores in bucket >= j1 (its entries) and in j1 (candidates) */
    for (c = 0; c < T; c++) {
        const ptrdiff_t *h = xc->hist + (size_t)c * MOEXC__SCORE_BUCKETS;
        xc->chunk_pos[c] = n_coll; xc->chunk_pos[T + c] = n_cand;
        for (j = target > 0.0 ? j1 : MOEXC__SCORE_BUCKETS; j < MOEXC__SCORE_BUCKETS; j++) n_coll += (size_t)h[j];
        n_cand += target > 0.0 ? (size_t)h[j1] : 0;
    }
    if ((st = moexc__xc_entry_room(xc, MOEXC__MAX(n_coll, (size_t)1), MOEXC__MAX(n_cand, (size_t)1), err)) != MOEXC_OK) goto done;
    if (target > 0.0) {
#ifdef _OPENMP
#       pragma omp parallel for schedule(static) if (T > 1 && (double)n * xc->F >= 262144.0)
#endif
        for (c = 0; c < T; c++)
            moexc__xc_scan_scores(xc, pre, (int)((int64_t)n * c / T), (int)((int64_t)n * (c + 1) / T), floor, NULL, 1,
                                  (uint32_t)j1, &xc->chunk_pos[c], &xc->chunk_pos[T + c]);
        /* level 2: bits 10..19 of the candidates; level 3: bits 0..9 of those in bin j2 */
        memset(buf, 0, 1024 * sizeof(double));
        for (e = 0; e < n_cand; e++) buf[(moexc__xc_bits(xc->cand[e]) >> 10) & 0x3FF] += 1.0;
        if ((st = moexc__dp_sum(r, buf, 1024, MOEXC_REDUCE_F64, "crosscoder selection", err)) != MOEXC_OK) goto done;
        j2 = moexc__dp_bin(buf, 1024, target, &above);
        memset(buf, 0, 1024 * sizeof(double));
        for (e = 0; e < n_cand; e++) {
            uint32_t b = moexc__xc_bits(xc->cand[e]);
            if ((int)((b >> 10) & 0x3FF) == j2) buf[b & 0x3FF] += 1.0;
        }
        if ((st = moexc__dp_sum(r, buf, 1024, MOEXC_REDUCE_F64, "crosscoder selection", err)) != MOEXC_OK) goto done;
        j3 = moexc__dp_bin(buf, 1024, target, &above);
        tbits = ((uint32_t)j1 << MOEXC__SCORE_SHIFT) | ((uint32_t)j2 << 10) | (uint32_t)j3;
        memcpy(&t, &tbits, 4);
    }
    /* ties: above scores > t were kept; `need` of the s == t, lowest global index first */
    need = target - above;
    for (e = 0; e < n_cand; e++) eq += xc->cand[e] == t;
    memset(buf, 0, (size_t)W * sizeof(double));
    buf[rank] = eq;
    if ((st = moexc__dp_sum(r, buf, (size_t)W, MOEXC_REDUCE_F64, "crosscoder selection", err)) != MOEXC_OK) goto done;
    for (c = 0; c < rank; c++) prior += buf[c];
    need = MOEXC__MAX(0.0, MOEXC__MIN(eq, need - prior));
    /* keep s > t and the first `need` s == t, in row-major order; f = pre */
    for (e = 0, out = 0; e < n_coll; e++) {
        float s = xc->ent_val[e];
        if (!(s > t || (s == t && need > 0.0))) continue;
        if (s == t) need -= 1.0;
        xc->ent_row[out] = xc->ent_row[e];
        xc->ent_lat[out] = xc->ent_lat[e];
        xc->ent_val[out] = pre[(size_t)xc->ent_row[e] * (size_t)xc->F + (size_t)xc->ent_lat[e]];
        out++;
    }
    xc->n_ent = out;
    xc->dp_select_t = t;
    xc->dp_select_ratio = MOEXC__MIN(0.9f, xc->dp_select_ratio + 0.05f);
    if (min_kept) *min_kept = t;
done:
    moexc__free(buf);
    return st;
}

/* After the AuxK forward of a step: the figures of the global batch of the
   W workers' n pairs each. Sums of n, of e^m, x^m and AuxK's target e^m
   give the global means; then the centred sums of squares about them give
   FVE^m = 1 - sum Var(e^m) / sum Var(x^m) and AuxK's normaliser
   sum_m ||e^m - mean(e^m)||^2 over the global batch, so
   L_aux = sum_m ||e^m - ê^m||^2 (summed) / that. The local AuxK gradient
   uses *inv_den = W / den: it is summed over the workers and divided by W
   with the rest of the gradient (whose terms are means over n). */
static moexc_status moexc__xc_dp_stats(moexc_xc *xc, int n, moexc_xc_step_stats *s, double *inv_den, moexc_error *err)
{
    const moexc_reduce *r = &xc->opt.reduce;
    int W = moexc__dp_world(r), dc = xc->d_cat, aux = xc->opt.variant == MOEXC_XC_BATCHTOPK && xc->opt.aux_k > 0 && xc->n_aux > 0;
    int m, b, j, off;
    size_t n1 = 6 + 3 * (size_t)dc;
    double *buf = (double *)moexc__calloc(n1 + 6, sizeof(double)), *sum2, N;
    moexc_status st;
    if (!buf) return moexc__fail(err, MOEXC_ERR_NOMEM, "crosscoder: out of memory (reduce)");
    /* [n, n^2, rec_m n (2), penalty n, l0 n, sum_b e (d_cat), sum_b x (d_cat), sum_b aux_e (d_cat)] */
    buf[0] = n; buf[1] = (double)n * n;
    buf[2] = s->rec_m[0] * n; buf[3] = s->rec_m[1] * n; buf[4] = s->penalty * n; buf[5] = s->l0 * n;
    for (m = 0, off = 0; m < 2; off += xc->d[m], m++)
        for (b = 0; b < n; b++)
            for (j = 0; j < xc->d[m]; j++) {
                size_t i = (size_t)b * (size_t)xc->d[m] + (size_t)j;
                buf[6 + off + j] += xc->e[m][i];
                buf[6 + dc + off + j] += xc->xs[m][i];
                if (aux) buf[6 + 2 * dc + off + j] += xc->aux_e[m][i];
            }
    if ((st = moexc__dp_sum(r, buf, n1, MOEXC_REDUCE_F64, "crosscoder", err)) != MOEXC_OK) goto done;
    if (buf[1] * W != buf[0] * buf[0]) {
        st = moexc__fail(err, MOEXC_ERR_ARG, "crosscoder: the %d workers' batches differ in size (this worker: %d pairs); "
                         "every worker needs the same n", W, n);
        goto done;
    }
    N = buf[0];
    s->rec_m[0] = buf[2] / N; s->rec_m[1] = buf[3] / N; s->rec = s->rec_m[0] + s->rec_m[1];
    s->penalty = buf[4] / N; s->l0 = buf[5] / N;
    for (j = 0; j < 3 * dc; j++) buf[6 + j] /= N;   /* the means */
    /* [css(e^A), css(e^B), css(x^A), css(x^B), css(aux_e), ||aux_e - ê||^2] about the global means */
    sum2 = buf + n1;
    for (m = 0, off = 0; m < 2; off += xc->d[m], m++)
        for (b = 0; b < n; b++)
            for (j = 0; j < xc->d[m]; j++) {
                size_t i = (size_t)b * (size_t)xc->d[m] + (size_t)j;
                double de = xc->e[m][i] - buf[6 + off + j], dx = xc->xs[m][i] - buf[6 + dc + off + j];
                sum2[m] += de * de;
                sum2[2 + m] += dx * dx;
                if (aux) {
                    double da = xc->aux_e[m][i] - buf[6 + 2 * dc + off + j], dr = (double)xc->aux_e[m][i] - xc->ehat[m][i];
                    sum2[4] += da * da;
                    sum2[5] += dr * dr;
                }
            }
    if ((st = moexc__dp_sum(r, sum2, 6, MOEXC_REDUCE_F64, "crosscoder", err)) != MOEXC_OK) goto done;
    for (m = 0; m < 2; m++) s->fve[m] = 1.0 - sum2[m] / sum2[2 + m];
    s->aux = 0.0;
    *inv_den = 0.0;
    if (aux && sum2[4] > 0.0) {
        s->aux = sum2[5] / sum2[4];
        *inv_den = (double)W / sum2[4];
    }
done:
    moexc__free(buf);
    return st;
}

/* The gradient (each worker's, of means over its n pairs) summed over the
   workers and divided by W: the gradient of the global batch's mean. */
static moexc_status moexc__xc_dp_grads(moexc_xc *xc, moexc_error *err)
{
    int W = moexc__dp_world(&xc->opt.reduce);
    size_t i;
    moexc_status st = moexc__dp_sum(&xc->opt.reduce, xc->grads, xc->n_params, MOEXC_REDUCE_F32, "crosscoder", err);
    if (st != MOEXC_OK || W == 1) return st;
    for (i = 0; i < xc->n_params; i++) xc->grads[i] *= 1.0f / (float)W;
    return MOEXC_OK;
}

/* A latent fired in the global batch if it fired on any worker. */
static moexc_status moexc__xc_dp_fired(moexc_xc *xc, moexc_error *err)
{
    size_t F = (size_t)xc->F, j;
    float *buf = (float *)moexc__malloc(F * sizeof(float));
    moexc_status st;
    if (!buf) return moexc__fail(err, MOEXC_ERR_NOMEM, "crosscoder: out of memory (reduce)");
    for (j = 0; j < F; j++) buf[j] = xc->fired[j] ? 1.0f : 0.0f;
    st = moexc__dp_sum(&xc->opt.reduce, buf, F, MOEXC_REDUCE_F32, "crosscoder", err);
    for (j = 0; st == MOEXC_OK && j < F; j++) xc->fired[j] = buf[j] > 0.0f;
    moexc__free(buf);
    return st;
}

/* Before the first step with a hook: options, widths, scales, threshold,
   step, batch size, parameters, moments and dead counters must agree. */
static moexc_status moexc__xc_dp_check(moexc_xc *xc, int n, moexc_error *err)
{
    const moexc_xc_options *o = &xc->opt;
    uint64_t h = UINT64_C(0xCBF29CE484222325);
    uint32_t crc;
    moexc_status st;
    crc = moexc__floats_crc(0, xc->params, xc->n_params);
    crc = moexc__floats_crc(crc, xc->adam_m, xc->n_params);
    crc = moexc__floats_crc(crc, xc->adam_v, xc->n_params);
    h = moexc__fnv64(h, &o->n_latents, sizeof(int));     h = moexc__fnv64(h, &o->variant, sizeof(int));
    h = moexc__fnv64(h, &o->k, sizeof(int));             h = moexc__fnv64(h, &o->n_shared, sizeof(int));
    h = moexc__fnv64(h, &o->lambda_f, sizeof(float));    h = moexc__fnv64(h, &o->lambda_ratio, sizeof(float));
    h = moexc__fnv64(h, &o->aux_k, sizeof(int));         h = moexc__fnv64(h, &o->aux_alpha, sizeof(float));
    h = moexc__fnv64(h, &o->aux_exact_relu, sizeof(int)); h = moexc__fnv64(h, &o->dead_tokens, sizeof(int64_t));
    h = moexc__fnv64(h, &o->steps, sizeof(int));         h = moexc__fnv64(h, &o->batch, sizeof(int));
    h = moexc__fnv64(h, &o->lr, sizeof(float));          h = moexc__fnv64(h, &o->warmup_steps, sizeof(int));
    h = moexc__fnv64(h, &o->decay_frac, sizeof(float));  h = moexc__fnv64(h, &o->lambda_warmup, sizeof(float));
    h = moexc__fnv64(h, &o->clip, sizeof(float));        h = moexc__fnv64(h, &o->init_norm, sizeof(float));
    h = moexc__fnv64(h, &o->uncentred_encoder, sizeof(int)); h = moexc__fnv64(h, &o->threshold_beta, sizeof(float));
    h = moexc__fnv64(h, &o->threshold_start, sizeof(int)); h = moexc__fnv64(h, &o->dense_only, sizeof(int));
    h = moexc__fnv64(h, &o->seed, sizeof(uint64_t));
    h = moexc__fnv64(h, xc->d, sizeof(xc->d));           h = moexc__fnv64(h, xc->scale, sizeof(xc->scale));
    h = moexc__fnv64(h, &xc->threshold, sizeof(float));  h = moexc__fnv64(h, &xc->threshold_count, sizeof(int64_t));
    h = moexc__fnv64(h, &xc->step, sizeof(int));         h = moexc__fnv64(h, &n, sizeof(int));
    h = moexc__fnv64(h, &crc, sizeof(uint32_t));
    h = moexc__fnv64(h, xc->since_fired, (size_t)xc->F * sizeof(int64_t));
    if ((st = moexc__dp_agree(&o->reduce, h, "crosscoder", err)) != MOEXC_OK) return st;
    xc->dp_checked = 1;
    return MOEXC_OK;
}

/* After an evaluation over this worker's share: activation counts, squared
   errors and the FVE accumulators summed. The Welford accumulators (n_r,
   mean_r, m2_r) merge in two sums: the global mean, then
   m2 = sum_r m2_r + n_r (mean_r - mean)^2. */
static moexc_status moexc__xc_dp_eval(moexc_xc *xc, moexc_fve_acc *fve, moexc_activation_acc *act, double *mse,
                                      moexc_error *err)
{
    const moexc_reduce *r = &xc->opt.reduce;
    size_t F = (size_t)xc->F, dc = (size_t)xc->d_cat, i, n = F + 4 + 2 * dc;
    double *buf = (double *)moexc__calloc(n, sizeof(double)), *p;
    int m, j;
    moexc_status st;
    if (!buf) return moexc__fail(err, MOEXC_ERR_NOMEM, "crosscoder eval: out of memory (reduce)");
    /* [counts (F), sum_active, n, mse (2), n mean_x, n mean_e (d_cat each)] */
    for (i = 0; i < F; i++) buf[i] = (double)act->counts[i];
    buf[F] = act->sum_active; buf[F + 1] = (double)act->n_tokens; buf[F + 2] = mse[0]; buf[F + 3] = mse[1];
    for (m = 0, p = buf + F + 4; m < 2; p += fve[m].dim, m++)
        for (j = 0; j < fve[m].dim; j++) { p[j] = (double)fve[m].n * fve[m].mean_x[j]; p[dc + j] = (double)fve[m].n * fve[m].mean_e[j]; }
    if ((st = moexc__dp_sum(r, buf, n, MOEXC_REDUCE_F64, "crosscoder eval", err)) != MOEXC_OK) goto done;
    for (i = 0; i < F; i++) act->counts[i] = (int64_t)buf[i];
    act->sum_active = buf[F]; act->n_tokens = (int64_t)buf[F + 1]; mse[0] = buf[F + 2]; mse[1] = buf[F + 3];
    /* second sum: m2_r + n_r (mean_r - mean)^2 per dimension, about the global mean */
    for (m = 0, p = buf + F + 4; m < 2; p += fve[m].dim, m++)
        for (j = 0; j < fve[m].dim; j++) {
            double gx = act->n_tokens ? p[j] / (double)act->n_tokens : 0.0, ge = act->n_tokens ? p[dc + j] / (double)act->n_tokens : 0.0;
            double dx = fve[m].mean_x[j] - gx, de = fve[m].mean_e[j] - ge;
            p[j] = fve[m].m2_x[j] + (double)fve[m].n * dx * dx;
            p[dc + j] = fve[m].m2_e[j] + (double)fve[m].n * de * de;
            fve[m].mean_x[j] = gx; fve[m].mean_e[j] = ge;
        }
    if ((st = moexc__dp_sum(r, buf + F + 4, 2 * dc, MOEXC_REDUCE_F64, "crosscoder eval", err)) != MOEXC_OK) goto done;
    for (m = 0, p = buf + F + 4; m < 2; p += fve[m].dim, m++) {
        fve[m].n = act->n_tokens;
        for (j = 0; j < fve[m].dim; j++) { fve[m].m2_x[j] = p[j]; fve[m].m2_e[j] = p[dc + j]; }
    }
done:
    moexc__free(buf);
    return st;
}

MOEXC_DEF moexc_status moexc_xc_set_reduce(moexc_xc *xc, const moexc_reduce *r, moexc_error *err)
{
    moexc_reduce none;
    memset(&none, 0, sizeof(none));
    if (!xc) return moexc__fail(err, MOEXC_ERR_ARG, "crosscoder set_reduce: crosscoder is NULL");
    if (!r) r = &none;
    if (moexc__dp_valid(r, "crosscoder set_reduce", err) != MOEXC_OK) return MOEXC_ERR_ARG;
    xc->opt.reduce = *r;
    xc->dp_checked = 0;
    return MOEXC_OK;
}

/* ---- layers ----------------------------------------------------------------- */

/* Decoder norms: norm[m][i] = ||d_i^m|| (F each), w_i = sum_m ||d_i^m||
   (a shared latent: 2 ||d_i||). */
static void moexc__xc_norms(moexc_xc *xc)
{
    int i, m;
    for (m = 0; m < 2; m++) {
#ifdef _OPENMP
#       pragma omp parallel for schedule(static) if ((double)xc->F * xc->d[m] >= 262144.0)
#endif
        for (i = 0; i < xc->F; i++) {
            const float *row = moexc__xc_dec_row(xc, xc->params, m, i);
            xc->norm[m][i] = sqrtf(moexc_dot(row, row, (size_t)xc->d[m]));
        }
    }
    for (i = 0; i < xc->F; i++) xc->w[i] = xc->norm[0][i] + xc->norm[1][i];
}

/* bias (F) += sign * sum_m b_dec^m W_enc^m: the centring term of the encoder,
   moved into (sign -1) or out of (sign +1) an encoder bias. W_enc^A over
   W_enc^B is one (d_cat x F) matrix and [b_dec^A | b_dec^B] is contiguous
   too, so this is one pass over W_enc by rows, in column blocks (threads). */
static void moexc__xc_add_centring(const moexc_xc *xc, float *bias, float sign)
{
    const float *w_enc = xc->params + xc->off_enc[0], *bdec = xc->params + xc->off_bdec[0];
    int blk, n_blk = (xc->F + 1023) / 1024;
#ifdef _OPENMP
#   pragma omp parallel for schedule(static) if ((double)xc->F * xc->d_cat >= 262144.0)
#endif
    for (blk = 0; blk < n_blk; blk++) {
        size_t i0 = (size_t)blk * 1024, len = MOEXC__MIN((size_t)1024, (size_t)xc->F - i0);
        int j;
        for (j = 0; j < xc->d_cat; j++) moexc_axpy(bias + i0, sign * bdec[j], w_enc + (size_t)j * (size_t)xc->F + i0, len);
    }
}

/* SPEC-form encoder bias into out (F): b_enc, or for the centred encoder
     b_enc - sum_m b_dec^m W_enc^m   (so that pre = sum_m xs^m W_enc^m + out) */
static void moexc__xc_spec_enc_bias(const moexc_xc *xc, float *out)
{
    memcpy(out, xc->params + xc->off_benc, (size_t)xc->F * sizeof(float));
    if (!xc->opt.uncentred_encoder) moexc__xc_add_centring(xc, out, -1.0f);
}

/* encoder forward: xs^m (n x d_m), W_enc^m (d_m x F), b_enc (F) -> pre (n x F)
     pre = sum_m (xs^m - b_dec^m) W_enc^m + b_enc   (centred, default)
     pre = sum_m xs^m W_enc^m + b_enc               (uncentred_encoder)
   both computed as xcat W_enc + enc_bias (moexc__xc_spec_enc_bias), one GEMM
   with xcat = [xs^A | xs^B] and W_enc = W_enc^A over W_enc^B (d_cat x F).
   The only dense product of a BatchTopK training step. */
static void moexc__xc_encoder_forward(moexc_xc *xc, float *pre, int n)
{
    int F = xc->F;
    moexc__xc_spec_enc_bias(xc, xc->enc_bias);
    /* pre starts from enc_bias in every row, tile by tile inside the product */
    moexc__sgemm_ex(0, 0, n, F, xc->d_cat, 1.0f, xc->xcat, xc->d_cat, MOEXC__XC_P(xc, off_enc[0]), F, 0.0f,
                    xc->enc_bias, pre, F, NULL);
}

/* The centring term of the encoder backward, after db_enc = g = sum_b dpre
   (b_enc has no other gradient, so its gradient is g here):
     dW_enc^m -= b_dec^m^T g      (so dW_enc^m = (xs^m - b_dec^m)^T dpre)
     db_dec^m -= W_enc^m g^T      (b_dec^m also enters through the encoder)
   one pass over the rows j of W_enc^A over W_enc^B (b_dec likewise stacked). */
static void moexc__xc_encoder_backward_centre(moexc_xc *xc)
{
    const float *g = MOEXC__XC_G(xc, off_benc), *w_enc = xc->params + xc->off_enc[0], *bdec = xc->params + xc->off_bdec[0];
    float *dw = xc->grads + xc->off_enc[0], *dbdec = xc->grads + xc->off_bdec[0];
    size_t F = (size_t)xc->F;
    int j;
    if (xc->opt.uncentred_encoder) return;
#ifdef _OPENMP
#   pragma omp parallel for schedule(static) if ((double)xc->F * xc->d_cat >= 262144.0)
#endif
    for (j = 0; j < xc->d_cat; j++) {
        moexc_axpy(dw + (size_t)j * F, -bdec[j], g, F);
        dbdec[j] -= moexc_dot(w_enc + (size_t)j * F, g, F);
    }
}

/* dense encoder backward: dpre (n x F) -> dW_enc += xcat^T dpre, db_enc += sum_b dpre */
static void moexc__xc_encoder_backward(moexc_xc *xc, const float *dpre, int n)
{
    float *db = MOEXC__XC_G(xc, off_benc);
    int b, F = xc->F;
    moexc_sgemm(1, 0, xc->d_cat, F, n, 1.0f, xc->xcat, xc->d_cat, dpre, F, 1.0f, MOEXC__XC_G(xc, off_enc[0]), F);
    for (b = 0; b < n; b++) moexc_axpy(db, 1.0f, dpre + (size_t)b * (size_t)F, (size_t)F);
}

/* dense decoder forward: f (n x F) -> xhat^m (n x d_m) = f W_dec^m + b_dec^m (bias may be skipped).
   Model B's rows 0..n_s-1 are model A's (tied), the rest its own. */
static void moexc__xc_decoder_forward(const moexc_xc *xc, float *const *xhat, const float *f, int n, int with_bias)
{
    int b, m, F = xc->F, ns = xc->ns;
    for (m = 0; m < 2; m++) {
        int d = xc->d[m];
        if (m == 0 || ns == 0) {
            moexc_sgemm(0, 0, n, d, F, 1.0f, f, F, xc->params + xc->off_dec[m], d, 0.0f, xhat[m], d);
        } else {
            moexc_sgemm(0, 0, n, d, ns, 1.0f, f, F, xc->params + xc->off_dec[0], d, 0.0f, xhat[m], d);
            moexc_sgemm(0, 0, n, d, F - ns, 1.0f, f + ns, F, xc->params + xc->off_dec[1], d, 1.0f, xhat[m], d);
        }
        if (with_bias)
            for (b = 0; b < n; b++) moexc_axpy(xhat[m] + (size_t)b * (size_t)d, 1.0f, xc->params + xc->off_bdec[m], (size_t)d);
    }
}

/* dense decoder backward: dxhat^m (n x d_m) ->
     df += sum_m dxhat^m W_dec^m^T       (n x F)
     dW_dec^m += f^T dxhat^m             (a shared row receives both models' terms)
     db_dec^m += sum_b dxhat^m */
static void moexc__xc_decoder_backward(moexc_xc *xc, float *df, float *const *dxhat, const float *f, int n)
{
    int b, m, F = xc->F, ns = xc->ns;
    for (m = 0; m < 2; m++) {
        int d = xc->d[m];
        if (m == 0 || ns == 0) {
            moexc_sgemm(0, 1, n, F, d, 1.0f, dxhat[m], d, xc->params + xc->off_dec[m], d, 1.0f, df, F);
            moexc_sgemm(1, 0, F, d, n, 1.0f, f, F, dxhat[m], d, 1.0f, xc->grads + xc->off_dec[m], d);
        } else {
            moexc_sgemm(0, 1, n, ns, d, 1.0f, dxhat[m], d, xc->params + xc->off_dec[0], d, 1.0f, df, F);
            moexc_sgemm(0, 1, n, F - ns, d, 1.0f, dxhat[m], d, xc->params + xc->off_dec[1], d, 1.0f, df + ns, F);
            moexc_sgemm(1, 0, ns, d, n, 1.0f, f, F, dxhat[m], d, 1.0f, xc->grads + xc->off_dec[0], d);
            moexc_sgemm(1, 0, F - ns, d, n, 1.0f, f + ns, F, dxhat[m], d, 1.0f, xc->grads + xc->off_dec[1], d);
        }
        for (b = 0; b < n; b++) moexc_axpy(xc->grads + xc->off_bdec[m], 1.0f, dxhat[m] + (size_t)b * (size_t)d, (size_t)d);
    }
}

/* Counting sort of items 0 .. n_items-1 by key (items with key < 0 are
   skipped): key k's items, in increasing order, are out[ptr[k] .. ptr[k+1]). */
static void moexc__group_by_key(const int *key, size_t n_items, int n_keys, int *ptr, int *out)
{
    size_t e;
    int k;
    memset(ptr, 0, ((size_t)n_keys + 1) * sizeof(int));
    for (e = 0; e < n_items; e++) if (key[e] >= 0) ptr[key[e] + 1]++;
    for (k = 0; k < n_keys; k++) ptr[k + 1] += ptr[k];
    /* ptr[k] walks forward as key k's items are placed, ending at key k + 1's start */
    for (e = 0; e < n_items; e++) if (key[e] >= 0) out[ptr[key[e]]++] = (int)e;
    for (k = n_keys; k > 0; k--) ptr[k] = ptr[k - 1];
    ptr[0] = 0;
}

/* The kept entries grouped by latent (col_ptr, col_ent). */
static moexc_status moexc__xc_group_kept(moexc_xc *xc, moexc_error *err)
{
    if (xc->n_ent > (size_t)INT_MAX) return moexc__fail(err, MOEXC_ERR_ARG, "crosscoder: %lu entries in one batch", (unsigned long)xc->n_ent);
    if (xc->n_ent > xc->cap_col) {
        size_t cap = MOEXC__MAX(xc->n_ent, xc->cap_col + xc->cap_col / 2);
        int *c = (int *)moexc__realloc(xc->col_ent, moexc__mul_size(cap, sizeof(int)));
        if (!c) return moexc__fail(err, MOEXC_ERR_NOMEM, "crosscoder: no memory for %lu entries", (unsigned long)xc->n_ent);
        xc->col_ent = c;
        xc->cap_col = cap;
    }
    moexc__group_by_key(xc->ent_lat, xc->n_ent, xc->F, xc->col_ptr, xc->col_ent);
    return MOEXC_OK;
}

/* Sparse decoder forward from the kept entries (BatchTopK: k of F latents
   per token, so n k d instead of n F d):
     xhat^m_b = b_dec^m + sum_{kept i} f_bi d_i^m   (bias may be skipped)
   Each thread takes a block of rows and walks the latents in order, adding
   each decoder row to the rows of its block that keep it: the decoder is
   read once, in order, and each x̂_b is summed in increasing latent order
   whatever the thread count. */
static void moexc__xc_decoder_forward_sparse(const moexc_xc *xc, float *const *xhat, int n, int with_bias)
{
    int T = xc->n_threads, c;
#ifdef _OPENMP
#   pragma omp parallel for schedule(static) if (T > 1 && (double)xc->n_ent * xc->d_cat >= 131072.0)
#endif
    for (c = 0; c < T; c++) {
        int b0 = (int)((int64_t)n * c / T), b1 = (int)((int64_t)n * (c + 1) / T), b, i, m;
        for (b = b0; b < b1; b++)
            for (m = 0; m < 2; m++) {
                size_t d = (size_t)xc->d[m];
                if (with_bias) memcpy(xhat[m] + (size_t)b * d, xc->params + xc->off_bdec[m], d * sizeof(float));
                else memset(xhat[m] + (size_t)b * d, 0, d * sizeof(float));
            }
        for (i = 0; i < xc->F; i++) {
            int lo = xc->col_ptr[i], hi = xc->col_ptr[i + 1], p;
            while (lo < hi) {   /* the first of latent i's entries in row b0 or later */
                int mid = lo + (hi - lo) / 2;
                if (xc->ent_row[xc->col_ent[mid]] < b0) lo = mid + 1; else hi = mid;
            }
            for (p = lo; p < xc->col_ptr[i + 1]; p++) {
                size_t e = (size_t)xc->col_ent[p];
                if (xc->ent_row[e] >= b1) break;
                if (xc->ent_val[e] == 0.0f) continue;
                for (m = 0; m < 2; m++)
                    moexc_axpy(xhat[m] + (size_t)xc->ent_row[e] * (size_t)xc->d[m], xc->ent_val[e],
                               moexc__xc_dec_row(xc, xc->params, m, i), (size_t)xc->d[m]);
            }
        }
    }
}

/* f at the kept entries (a frozen selection's values are re-read from pre):
   f = ReLU(pre). Returns L0, the mean number of f > 0 per token. */
static double moexc__xc_entry_values(moexc_xc *xc, const float *pre, int n)
{
    size_t e, active = 0, F = (size_t)xc->F;
    for (e = 0; e < xc->n_ent; e++) {
        float p = pre[(size_t)xc->ent_row[e] * F + (size_t)xc->ent_lat[e]];
        xc->ent_val[e] = p > 0.0f ? p : 0.0f;
        active += p > 0.0f;
    }
    return (double)active / n;
}

/* Dense activations: f = ReLU(pre) (L1) or the kept entries scattered into
   zeros (BatchTopK). Returns L0. */
static double moexc__xc_dense_activations(moexc_xc *xc, float *f, const float *pre, int n)
{
    size_t i, nF = (size_t)n * (size_t)xc->F, active = 0;
    if (xc->opt.variant == MOEXC_XC_L1) {
        for (i = 0; i < nF; i++) { f[i] = pre[i] > 0.0f ? pre[i] : 0.0f; active += pre[i] > 0.0f; }
        return (double)active / n;
    }
    memset(f, 0, nF * sizeof(float));
    for (i = 0; i < xc->n_ent; i++) {
        f[(size_t)xc->ent_row[i] * (size_t)xc->F + (size_t)xc->ent_lat[i]] = xc->ent_val[i];
        active += xc->ent_val[i] > 0.0f;
    }
    return (double)active / n;
}

/* Decoder-norm penalty (SPEC §4, L1 crosscoder):
     P = lambda/n sum_b [ sum_{i>=n_s} f_bi (||d_i^A|| + ||d_i^B||) + ratio sum_{i<n_s} f_bi ||d_i|| ]
   forward returns P (col_sum_i = sum_b f_bi, from the dense f or the kept
   entries); backward: dP/df_bi = lambda c_i / n, c_i the bracket's weight of
   latent i (pen_coef, F), and dP/dd_i^m = lambda col_sum_i / n (times ratio
   for a shared latent) d_i^m / ||d_i^m||. */
static double moexc__xc_penalty_forward(moexc_xc *xc, const float *f, int n, float lambda, double *col_sum, float *pen_coef)
{
    size_t b, i, F = (size_t)xc->F;
    double p = 0.0;
    for (i = 0; i < F; i++) col_sum[i] = 0.0;
    if (f) {
        for (b = 0; b < (size_t)n; b++)
            for (i = 0; i < F; i++) col_sum[i] += f[b * F + i];
    } else {
        for (b = 0; b < xc->n_ent; b++) col_sum[xc->ent_lat[b]] += xc->ent_val[b];
    }
    for (i = 0; i < F; i++) {
        float coef = (int)i < xc->ns ? xc->opt.lambda_ratio * xc->norm[0][i] : xc->norm[0][i] + xc->norm[1][i];
        p += col_sum[i] * coef;
        pen_coef[i] = lambda * coef / n;
    }
    return lambda * p / n;
}

static void moexc__xc_penalty_backward_decoder(moexc_xc *xc, const double *col_sum, int n, float lambda)
{
    int i, m, j;
    for (i = 0; i < xc->F; i++) {
        int shared = i < xc->ns;
        for (m = 0; m < (shared ? 1 : 2); m++) {
            const float *row = moexc__xc_dec_row(xc, xc->params, m, i);
            float *grow = moexc__xc_dec_row(xc, xc->grads, m, i);
            float nrm = xc->norm[m][i];
            double c = lambda * col_sum[i] / n * (shared ? xc->opt.lambda_ratio : 1.0f);
            if (nrm <= 0.0f) continue;
            for (j = 0; j < xc->d[m]; j++) grow[j] += (float)(c * row[j] / nrm);
        }
    }
}

/* sum_b ||v_b - mean_b v||^2 over a (n x d) matrix, in double */
static double moexc__xc_centered_ss(const float *v, int n, int d, double *mean)
{
    double ss = 0.0;
    int b, j;
    for (j = 0; j < d; j++) mean[j] = 0.0;
    for (b = 0; b < n; b++)
        for (j = 0; j < d; j++) mean[j] += v[(size_t)b * d + j];
    for (j = 0; j < d; j++) mean[j] /= n;
    for (b = 0; b < n; b++)
        for (j = 0; j < d; j++) { double t = v[(size_t)b * d + j] - mean[j]; ss += t * t; }
    return ss;
}

/* AuxK forward (SPEC §4). Dead latents j (D of them); per token keep the top
   k_aux' = min(k_aux, D) of their pre-activations, f_aux = ReLU there;
     ê^m = sum_{kept j} f_aux_j d_j^m      (the dead latents' decoder rows)
     L_aux = sum_m ||e^m - ê^m||^2 / sum_m ||e^m - mean_b e^m||^2
   e is a constant here (detached, as in the literature): aux_e, a copy of e
   taken when the selection is made (a frozen selection keeps it). Returns L_aux and
   stores 1/denominator in *inv_den (0: nothing to do).
   SPEC: "the top k_aux pre-activations among dead latents" and "make sure
   its gradient really flows". The references apply the ReLU (OpenAI's TopK
   SAE relu's the AuxK values, Bussmann et al. take the top k_aux of ReLU
   activations), so a dead latent negative on every token gets no AuxK
   gradient; with the uncentred encoder, dead latents were positive on only
   ~0.04% of (token, dead latent) pairs (steps 300-500 of the demo's
   crosscoder) and L_aux stayed at 1. Our choice: select
   the top k_aux of any sign and keep the ReLU in the forward pass (the loss
   value is the references'), but by default pass the gradient straight
   through the ReLU at the selected negative positions (option
   aux_exact_relu), so the encoder learns to raise a dead latent where its
   decoder row would reduce the residual. With aux_exact_relu only positive
   pre-activations are selected, as before.
   The kept (token, dead latent) pairs are entries like the kept latents',
   so the AuxK terms cost n k_aux' d_m, not n D d_m. */
static double moexc__xc_auxk_forward(moexc_xc *xc, int n, int select, double *inv_den)
{
    int D, b, j, m, ka;
    size_t F = (size_t)xc->F;
    double num = 0.0, den = 0.0;
    *inv_den = 0.0;
    if (select) {
        D = 0;
        for (j = 0; j < xc->F; j++) if (moexc__xc_is_dead(xc, j)) xc->aux_idx[D++] = j;
        xc->n_aux = D;
        xc->aux_per_row = MOEXC__MIN(xc->opt.aux_k, D);
    }
    D = xc->n_aux;
    ka = xc->aux_per_row;
    if (D == 0) return 0.0;
#ifdef _OPENMP
#   pragma omp parallel for schedule(static) if ((double)n * (D + ka * xc->d_cat) >= 131072.0)
#endif
    for (b = 0; b < n; b++) {
        const float *pre = xc->pre + (size_t)b * F;
        int *lat = xc->aux_lat + (size_t)b * ka, q, cnt, mm;
        float *pv = xc->aux_pre + (size_t)b * ka, *fv = xc->aux_val + (size_t)b * ka;
        if (select) {
            int tid = moexc__xc_thread_id();
            float *v = xc->thr_buf + (size_t)tid * xc->thr_len, *tmp = v + F;
            unsigned char *keep = xc->thr_keep + (size_t)tid * F;
            for (q = 0; q < D; q++) v[q] = pre[xc->aux_idx[q]];
            /* per token the top k_aux': positive ones only (exact ReLU) or of any sign */
            if (xc->opt.aux_exact_relu) moexc__select_top(v, D, ka, keep, tmp);
            else moexc__select_top_any(v, D, ka, keep, tmp);
            for (q = 0, cnt = 0; q < D; q++) if (keep[q]) lat[cnt++] = xc->aux_idx[q];
            for (q = cnt; q < ka; q++) lat[q] = -1;
            xc->aux_cnt[b] = cnt;
        }
        cnt = xc->aux_cnt[b];
        for (q = 0; q < cnt; q++) { pv[q] = pre[lat[q]]; fv[q] = pv[q] > 0.0f ? pv[q] : 0.0f; }
        for (mm = 0; mm < 2; mm++) {
            size_t d = (size_t)xc->d[mm];
            float *row = xc->ehat[mm] + (size_t)b * d;
            memset(row, 0, d * sizeof(float));
            for (q = 0; q < cnt; q++)
                if (fv[q] != 0.0f) moexc_axpy(row, fv[q], moexc__xc_dec_row(xc, xc->params, mm, lat[q]), d);
        }
    }
    moexc__group_by_key(xc->aux_lat, (size_t)n * (size_t)ka, xc->F, xc->aux_col_ptr, xc->aux_col_ent);
    for (m = 0; m < 2; m++) {
        size_t i, nd = (size_t)n * (size_t)xc->d[m];
        den += moexc__xc_centered_ss(xc->aux_e[m], n, xc->d[m], xc->partial);
        for (i = 0; i < nd; i++) { double v = (double)xc->aux_e[m][i] - xc->ehat[m][i]; num += v * v; }
    }
    if (!(den > 0.0)) return 0.0;
    *inv_den = 1.0 / den;
    return num / den;
}

/* AuxK backward: dê^m = -2 alpha (e^m - ê^m) / den (into ehat, in place).
   The rest is taken by latent (moexc__xc_latent_grads): at each kept entry
   dpre_aux = sum_m dê^m_b . d_j^m where the ReLU passes it: pre > 0, and by
   default also pre <= 0 (straight-through, !aux_exact_relu; see the
   forward); and the decoder rows' dd_j^m += f_aux dê^m_b. */
static void moexc__xc_auxk_backward(moexc_xc *xc, int n, double inv_den)
{
    int m;
    float c = (float)(-2.0 * xc->opt.aux_alpha * inv_den);
    for (m = 0; m < 2; m++) {
        size_t i, nd = (size_t)n * (size_t)xc->d[m];
        float *dehat = xc->ehat[m];
        for (i = 0; i < nd; i++) dehat[i] = c * (xc->aux_e[m][i] - dehat[i]);
    }
}

/* Gradients by latent, from the entries grouped by latent. At each entry
   (b, i), kept or AuxK's, first d loss / d pre:
     dpre_bi = sum_m dxhat^m_b . d_i^m (+ the penalty's lambda c_i / n)   kept, f_bi > 0
     dpre_bi = sum_m dê^m_b . d_i^m                                    AuxK, where the ReLU passes it
   (0 elsewhere; AuxK's kept in aux_dpre for the dense path), then
     dd_i^m   = sum_{kept (b,i)} f_bi dxhat^m_b + sum_{AuxK (b,i)} f_aux_bi dê^m_b
                (a shared row receives both models' terms)
     dW_enc[:, i] = sum_{(b,i)} dpre_bi xcat_b
     db_enc_i = sum_{(b,i)} dpre_bi
   Going by latent reads each decoder row once. Sparse path (dense == 0):
   every element of these tensors is written, so no zeroing pass is needed;
   latents go in blocks of 16 whose encoder columns are summed as 16 rows of
   thread scratch and stored transposed into dW_enc (d_cat x F). Dense path
   (dense != 0): only the AuxK entries, whose dpre_aux and decoder terms are
   added (the rest comes from the GEMMs). with_aux = 0 skips AuxK. Each
   latent is summed by one thread in a fixed order: the bits do not depend
   on the thread count. */
static void moexc__xc_latent_grads(moexc_xc *xc, int dense, int with_aux, const float *pen_coef)
{
    const int BLK = 16;
    int blk, n_blk = (xc->F + BLK - 1) / BLK, F = xc->F, dc = xc->d_cat, ka = xc->aux_per_row;
    float *dW = MOEXC__XC_G(xc, off_enc[0]), *db = MOEXC__XC_G(xc, off_benc);
#ifdef _OPENMP
#   pragma omp parallel for schedule(dynamic, 4) if ((double)xc->F * xc->d_cat >= 131072.0)
#endif
    for (blk = 0; blk < n_blk; blk++) {
        float *acc = xc->thr_buf + (size_t)moexc__xc_thread_id() * xc->thr_len;
        int i0 = blk * BLK, i1 = MOEXC__MIN(F, i0 + BLK), i, j, m;
        for (i = i0; i < i1; i++) {
            int shared = i < xc->ns, p, aux;
            const float *row[2];
            float *grow[2], *enc = acc + (size_t)(i - i0) * (size_t)dc, gb = 0.0f;
            row[0] = moexc__xc_dec_row(xc, xc->params, 0, i);
            row[1] = moexc__xc_dec_row(xc, xc->params, 1, i);
            grow[0] = moexc__xc_dec_row(xc, xc->grads, 0, i);
            grow[1] = moexc__xc_dec_row(xc, xc->grads, 1, i);
            if (!dense) {
                memset(enc, 0, (size_t)dc * sizeof(float));
                memset(grow[0], 0, (size_t)xc->d[0] * sizeof(float));
                if (!shared) memset(grow[1], 0, (size_t)xc->d[1] * sizeof(float));
            }
            for (aux = dense; aux <= with_aux; aux++) {
                const int *ptr = aux ? xc->aux_col_ptr : xc->col_ptr, *ids = aux ? xc->aux_col_ent : xc->col_ent;
                for (p = ptr[i]; p < ptr[i + 1]; p++) {
                    size_t id = (size_t)ids[p];
                    int b, pass;
                    float fv, dp = 0.0f;
                    float *const *vec;
                    if (!aux) {
                        b = xc->ent_row[id]; fv = xc->ent_val[id]; vec = xc->dxhat;
                        pass = fv > 0.0f;
                        if (pass && pen_coef) dp = pen_coef[i];
                    } else {
                        b = (int)(id / (size_t)ka); fv = xc->aux_val[id]; vec = xc->ehat;
                        pass = xc->aux_pre[id] > 0.0f || !xc->opt.aux_exact_relu;
                    }
                    for (m = 0; m < 2; m++) {
                        const float *vb = vec[m] + (size_t)b * (size_t)xc->d[m];
                        if (pass) dp += moexc_dot(vb, row[m], (size_t)xc->d[m]);
                        if (fv != 0.0f) moexc_axpy(grow[shared ? 0 : m], fv, vb, (size_t)xc->d[m]);
                    }
                    if (aux) xc->aux_dpre[id] = dp;
                    if (!dense && dp != 0.0f) { moexc_axpy(enc, dp, xc->xcat + (size_t)b * (size_t)dc, (size_t)dc); gb += dp; }
                }
            }
            if (!dense) db[i] = gb;
        }
        if (!dense)
            for (j = 0; j < dc; j++)
                for (i = i0; i < i1; i++) dW[(size_t)j * (size_t)F + (size_t)i] = acc[(size_t)(i - i0) * (size_t)dc + (size_t)j];
    }
}

static float moexc__xc_lambda(const moexc_xc *xc)
{
    double ramp = xc->opt.lambda_warmup * xc->opt.steps;
    if (xc->opt.lambda_f <= 0.0f) return 0.0f;
    /* lambda_f ramped from 0 over the first lambda_warmup of the steps */
    if (ramp <= 0.0 || xc->step >= ramp) return xc->opt.lambda_f;
    return (float)(xc->opt.lambda_f * xc->step / ramp);
}

static moexc_status moexc__xc_check_inputs(moexc_xc *xc, const float *x_a, const float *x_b, int n, moexc_error *err)
{
    if (!x_a || !x_b || n < 1) return moexc__fail(err, MOEXC_ERR_ARG, "crosscoder: need n >= 1 pairs and two inputs (n = %d)", n);
    return moexc__xc_workspace(xc, n, err);
}

/* xs^m = s_m x^m, and xcat = [xs^A | xs^B] (n x d_cat), the encoder's input */
static void moexc__xc_scale_inputs(moexc_xc *xc, const float *x_a, const float *x_b, int n)
{
    const float *x[2];
    int b;
    x[0] = x_a; x[1] = x_b;
    for (b = 0; b < n; b++) {
        float *cat = xc->xcat + (size_t)b * (size_t)xc->d_cat;
        int m;
        for (m = 0; m < 2; m++) {
            size_t d = (size_t)xc->d[m], j;
            const float *src = x[m] + (size_t)b * d;
            float *dst = xc->xs[m] + (size_t)b * d;
            for (j = 0; j < d; j++) dst[j] = cat[j] = src[j] * xc->scale[m];
            cat += d;
        }
    }
}

/* The activations of a training step: BatchTopK's kept entries (selected,
   or a frozen selection re-read) and, on the dense path, f. */
static moexc_status moexc__xc_activations(moexc_xc *xc, int n, int select, int dense, moexc_xc_step_stats *s,
                                          moexc_error *err)
{
    moexc_status st;
    float t = 0.0f;
    if (xc->opt.variant == MOEXC_XC_BATCHTOPK) {
        if (select) {
            st = xc->opt.reduce.sum ? moexc__xc_select_dp(xc, xc->pre, n, &t, err) : moexc__xc_select(xc, xc->pre, n, 0.0f, &t, err);
            if (st != MOEXC_OK) return st;
            s->min_kept_score = t;
        }
        s->l0 = moexc__xc_entry_values(xc, xc->pre, n);
        if ((st = moexc__xc_group_kept(xc, err)) != MOEXC_OK) return st;
    }
    if (dense) {
        if ((st = moexc__xc_dense_workspace(xc, err)) != MOEXC_OK) return st;
        s->l0 = moexc__xc_dense_activations(xc, xc->f, xc->pre, n);
    }
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_xc_loss_grad(moexc_xc *xc, const float *x_a, const float *x_b, int n,
                                          moexc_xc_step_stats *stats, moexc_error *err)
{
    moexc_xc_step_stats s;
    size_t i, nF;
    double *col_sum = NULL, inv_den = 0.0;
    float *pen_coef = NULL, lambda = moexc__xc_lambda(xc);
    int m, b, select = !xc->frozen;
    int dense = xc->opt.variant == MOEXC_XC_L1 || xc->opt.dense_only;
    moexc_status st = moexc__xc_check_inputs(xc, x_a, x_b, n, err);
    if (st != MOEXC_OK) return st;
    if (xc->frozen && n != xc->last_n)
        return moexc__fail(err, MOEXC_ERR_ARG, "crosscoder: frozen selection needs the same batch size (%d, was %d)", n, xc->last_n);
    xc->last_n = n;
    memset(&s, 0, sizeof(s));
    nF = (size_t)n * (size_t)xc->F;

    /* forward */
    moexc__xc_scale_inputs(xc, x_a, x_b, n);
    moexc__xc_norms(xc);
    moexc__xc_encoder_forward(xc, xc->pre, n);
    if ((st = moexc__xc_activations(xc, n, select, dense, &s, err)) != MOEXC_OK) return st;
    if (dense) moexc__xc_decoder_forward(xc, xc->xhat, xc->f, n, 1);
    else moexc__xc_decoder_forward_sparse(xc, xc->xhat, n, 1);
    for (m = 0; m < 2; m++) {
        size_t nd = (size_t)n * (size_t)xc->d[m];
        double ss = 0.0;
        for (i = 0; i < nd; i++) {
            float e = xc->xs[m][i] - xc->xhat[m][i];
            xc->e[m][i] = e;
            ss += (double)e * e;
            xc->dxhat[m][i] = -2.0f * e / (float)n;   /* d rec / d x̂ */
        }
        s.rec_m[m] = ss / n;
        s.rec += ss / n;
        s.fve[m] = 1.0 - moexc__xc_centered_ss(xc->e[m], n, xc->d[m], xc->partial) /
                         moexc__xc_centered_ss(xc->xs[m], n, xc->d[m], xc->partial);
    }
    if (lambda > 0.0f) {
        col_sum = (double *)moexc__calloc((size_t)xc->F, sizeof(double));
        pen_coef = (float *)moexc__calloc((size_t)xc->F, sizeof(float));
        if (!col_sum || !pen_coef) {
            moexc__free(col_sum); moexc__free(pen_coef);
            return moexc__fail(err, MOEXC_ERR_NOMEM, "crosscoder: out of memory");
        }
        s.penalty = moexc__xc_penalty_forward(xc, dense ? xc->f : NULL, n, lambda, col_sum, pen_coef);
    }
    if (xc->opt.variant == MOEXC_XC_BATCHTOPK && xc->opt.aux_k > 0) {
        if (select)
            for (m = 0; m < 2; m++) memcpy(xc->aux_e[m], xc->e[m], (size_t)n * (size_t)xc->d[m] * sizeof(float));
        s.aux = moexc__xc_auxk_forward(xc, n, select, &inv_den);
    }
    if (xc->opt.reduce.sum && (st = moexc__xc_dp_stats(xc, n, &s, &inv_den, err)) != MOEXC_OK) {
        moexc__free(col_sum); moexc__free(pen_coef);
        return st;
    }
    s.loss = s.rec + s.penalty + xc->opt.aux_alpha * s.aux;
    s.lambda = lambda;
    if (!isfinite(s.loss)) {
        moexc__free(col_sum); moexc__free(pen_coef);
        return moexc__fail(err, MOEXC_ERR_NUMERIC, "crosscoder: loss is %g at step %d", s.loss, xc->step);
    }

    /* backward */
    if (inv_den > 0.0) moexc__xc_auxk_backward(xc, n, inv_den);
    if (dense) {
        memset(xc->grads, 0, xc->n_params * sizeof(float));
        memset(xc->df, 0, nF * sizeof(float));
        moexc__xc_decoder_backward(xc, xc->df, xc->dxhat, xc->f, n);
        if (pen_coef) for (b = 0; b < n; b++) moexc_axpy(xc->df + (size_t)b * (size_t)xc->F, 1.0f, pen_coef, (size_t)xc->F);
        /* through the selection and the ReLU: dpre = df where f > 0 (in place) */
        for (i = 0; i < nF; i++) if (!(xc->f[i] > 0.0f)) xc->df[i] = 0.0f;
        if (inv_den > 0.0) {
            int ka = xc->aux_per_row, q;
            moexc__xc_latent_grads(xc, 1, 1, NULL);
            for (b = 0; b < n; b++)
                for (q = 0; q < xc->aux_cnt[b]; q++)
                    xc->df[(size_t)b * (size_t)xc->F + (size_t)xc->aux_lat[(size_t)b * ka + q]] += xc->aux_dpre[(size_t)b * ka + q];
        }
        moexc__xc_encoder_backward(xc, xc->df, n);
    } else {
        moexc__xc_latent_grads(xc, 0, inv_den > 0.0, pen_coef);
        for (m = 0; m < 2; m++) {
            float *gb = xc->grads + xc->off_bdec[m];
            size_t d = (size_t)xc->d[m];
            memset(gb, 0, d * sizeof(float));
            for (b = 0; b < n; b++) moexc_axpy(gb, 1.0f, xc->dxhat[m] + (size_t)b * d, d);
        }
    }
    if (col_sum) moexc__xc_penalty_backward_decoder(xc, col_sum, n, lambda);
    moexc__xc_encoder_backward_centre(xc);    /* needs the finished db_enc */
    moexc__free(col_sum); moexc__free(pen_coef);
    if (stats) *stats = s;
    return MOEXC_OK;
}

/* Learning rate at a step: linear warm-up over warmup steps, then constant,
   then linear decay to 0 over the last decay_frac of the steps (the
   crosscoder's and the SAEs' schedule, SPEC §4). */
static double moexc__lr_schedule(double lr, int step, int steps, int warmup, float decay_frac)
{
    double decay_start = (1.0 - decay_frac) * steps;
    if (step < warmup) lr *= (step + 1.0) / warmup;
    if (decay_frac > 0.0f && step >= decay_start)
        lr *= MOEXC__MAX(0.0, (steps - step) / (steps - decay_start));
    return lr;
}

static double moexc__xc_lr(const moexc_xc *xc)
{
    const moexc_xc_options *o = &xc->opt;
    return moexc__lr_schedule(o->lr, xc->step, o->steps, o->warmup_steps, o->decay_frac);
}

/* The optimiser step over a flat parameter vector (the crosscoder's and the
   SAEs'), in two calls so that a caller can stop on a non-finite norm before
   anything moves. moexc__grad_norm: ||g|| as fixed chunks' float dot
   products summed in order (partial holds one double per chunk of
   MOEXC__OPT_CHUNK). moexc__adam_step: Adam with bias correction (beta 0.9,
   0.999, eps 1e-8) on the gradient clipped to global norm clip (clip <= 0:
   no clipping), with moexc_adam_update; step counts from 0, gn is ||g||;
   returns whether an updated parameter is a NaN or an Inf (each chunk
   checked right after its update). MOEXC__OPT_CHUNK is defined at the top
   of >>crosscoder. */
static double moexc__grad_norm(const float *grads, size_t n_params, double *partial)
{
    double gn = 0.0;
    long c, n_chunks = (long)((n_params + MOEXC__OPT_CHUNK - 1) / MOEXC__OPT_CHUNK);
#ifdef _OPENMP
#   pragma omp parallel for schedule(static) if (n_chunks > 8)
#endif
    for (c = 0; c < n_chunks; c++) {
        size_t lo = (size_t)c * MOEXC__OPT_CHUNK, len = MOEXC__MIN((size_t)MOEXC__OPT_CHUNK, n_params - lo);
        partial[c] = moexc_dot(grads + lo, grads + lo, len);
    }
    for (c = 0; c < n_chunks; c++) gn += partial[c];
    return sqrt(gn);
}

static int moexc__adam_step(float *params, const float *grads, float *adam_m, float *adam_v, size_t n_params,
                            double lr, int step, float clip, double gn)
{
    moexc_adam_coeffs ac;
    const double b1 = 0.9, b2 = 0.999;
    long c, n_chunks = (long)((n_params + MOEXC__OPT_CHUNK - 1) / MOEXC__OPT_CHUNK);
    int bad = 0;
    memset(&ac, 0, sizeof(ac));
    ac.g_scale = clip > 0.0f && gn > clip ? (float)(clip / gn) : 1.0f;
    ac.decay = 1.0f;
    ac.beta1 = (float)b1; ac.beta2 = (float)b2; ac.eps = 1e-8f;
    ac.step_size = (float)(lr / (1.0 - pow(b1, step + 1.0)));
    ac.bc2_sqrt = (float)sqrt(1.0 - pow(b2, step + 1.0));
#ifdef _OPENMP
#   pragma omp parallel for schedule(static) reduction(| : bad) if (n_chunks > 8)
#endif
    for (c = 0; c < n_chunks; c++) {
        size_t lo = (size_t)c * MOEXC__OPT_CHUNK, len = MOEXC__MIN((size_t)MOEXC__OPT_CHUNK, n_params - lo);
        moexc_adam_update(params + lo, grads + lo, adam_m + lo, adam_v + lo, len, &ac);
        bad |= moexc__chunk_nonfinite(params + lo, len);
    }
    return bad;
}

/* Divergence diagnostics over the blocks of the flat layout, in order:
   block b is [start[b], start[b + 1]). */
static const char *const moexc__xc_block_names[7] = {
    "W_enc^A (encoder.weight[0])", "W_enc^B (encoder.weight[1])", "b_enc (encoder.bias)",
    "W_dec^A (decoder.weight[0])", "W_dec^B (decoder.weight[1], exclusive rows)",
    "b_dec^A (decoder.bias[0])", "b_dec^B (decoder.bias[1])" };
static void moexc__xc_block_starts(const moexc_xc *xc, size_t start[8])
{
    start[0] = xc->off_enc[0]; start[1] = xc->off_enc[1]; start[2] = xc->off_benc; start[3] = xc->off_dec[0];
    start[4] = xc->off_dec[1]; start[5] = xc->off_bdec[0]; start[6] = xc->off_bdec[1]; start[7] = xc->n_params;
}
/* The first block whose values in x (parameters or gradients) hold a NaN or
   an Inf, or -1; *elem receives the element's index inside it. */
static int moexc__xc_nonfinite(const moexc_xc *xc, const float *x, size_t *elem)
{
    size_t start[8], i;
    int b;
    moexc__xc_block_starts(xc, start);
    if (!moexc__any_nonfinite(x + start[0], start[7] - start[0])) return -1;   /* the common case, one pass */
    for (b = 0; b < 7; b++) {
        i = moexc__first_nonfinite(x + start[b], start[b + 1] - start[b]);
        if (i < start[b + 1] - start[b]) { *elem = i; return b; }
    }
    return -1;
}

/* The parameter block of the largest magnitude (the one that blew up) and that magnitude. */
static int moexc__xc_largest_block(const moexc_xc *xc, double *big)
{
    size_t start[8], i;
    int b, at = 0;
    moexc__xc_block_starts(xc, start);
    *big = -1.0;
    for (b = 0; b < 7; b++)
        for (i = start[b]; i < start[b + 1]; i++)
            if (fabs((double)xc->params[i]) > *big) { *big = fabs((double)xc->params[i]); at = b; }
    return at;
}

/* The error of a step that went non-finite: the step and the block (a
   non-finite parameter first, else the first non-finite gradient, else the
   largest parameter block). */
static moexc_status moexc__xc_diverged(const moexc_xc *xc, const char *when, double loss, double gn, double lr,
                                       moexc_error *err)
{
    size_t at = 0;
    int b = moexc__xc_nonfinite(xc, xc->params, &at), param = b >= 0;
    double big;
    if (!param) b = moexc__xc_nonfinite(xc, xc->grads, &at);
    if (b < 0) {
        b = moexc__xc_largest_block(xc, &big);
        return moexc__fail(err, MOEXC_ERR_NUMERIC, "crosscoder: step %d diverged: loss %g, gradient norm %g; the largest "
                           "parameter is %g in %s (lr %g)", xc->step + 1, loss, gn, big, moexc__xc_block_names[b], lr);
    }
    return moexc__fail(err, MOEXC_ERR_NUMERIC, "crosscoder: step %d diverged: %s %s is not finite%s (element %lu); "
                       "loss %g, gradient norm %g, lr %g", xc->step + 1, param ? "parameter" : "the gradient of",
                       moexc__xc_block_names[b], param ? when : "", (unsigned long)at, loss, gn, lr);
}

/* A loss that came out non-finite (moexc_xc_loss_grad's message): with the
   step and the parameter block of the largest magnitude. */
static moexc_status moexc__xc_loss_failed(const moexc_xc *xc, moexc_status st, moexc_error *err)
{
    char msg[sizeof(err->message)];
    double big;
    int b;
    if (st != MOEXC_ERR_NUMERIC || !err) return st;
    memcpy(msg, err->message, sizeof(msg));
    b = moexc__xc_largest_block(xc, &big);
    return moexc__fail(err, st, "crosscoder: step %d diverged: %s; the largest parameter is %g in %s (lr %g)", xc->step + 1,
                       msg, big, moexc__xc_block_names[b], moexc__xc_lr(xc));
}

MOEXC_DEF moexc_status moexc_xc_train_step(moexc_xc *xc, const float *x_a, const float *x_b, int n,
                                           moexc_xc_step_stats *stats, moexc_error *err)
{
    moexc_xc_step_stats s;
    size_t i, j, F = (size_t)xc->F;
    int dead = 0;
    moexc_status st;
    int was_frozen = xc->frozen;
    if (xc->opt.reduce.sum && !xc->dp_checked && (st = moexc__xc_dp_check(xc, n, err)) != MOEXC_OK) return st;
    xc->frozen = 0;
    st = moexc_xc_loss_grad(xc, x_a, x_b, n, &s, err);
    xc->frozen = was_frozen;
    if (st != MOEXC_OK) return moexc__xc_loss_failed(xc, st, err);
    if (xc->opt.reduce.sum && (st = moexc__xc_dp_grads(xc, err)) != MOEXC_OK) return st;   /* sum / W */
    /* Adam with bias correction; one set of moments per parameter (a shared
       row is one parameter), on the gradient clipped to global norm clip */
    s.lr = moexc__xc_lr(xc);
    s.grad_norm = moexc__grad_norm(xc->grads, xc->n_params, xc->partial);
    if (!(s.grad_norm < HUGE_VAL) || !(s.loss < HUGE_VAL))
        return moexc__xc_diverged(xc, "", s.loss, s.grad_norm, s.lr, err);
    /* a huge step can overflow the parameters themselves: stop before anyone saves them */
    if (moexc__adam_step(xc->params, xc->grads, xc->adam_m, xc->adam_v, xc->n_params, s.lr, xc->step, xc->opt.clip,
                         s.grad_norm))
        return moexc__xc_diverged(xc, " after the Adam update", s.loss, s.grad_norm, s.lr, err);
    /* dead-latent counters: tokens since each latent last fired */
    memset(xc->fired, 0, F);
    if (xc->opt.variant == MOEXC_XC_BATCHTOPK && !xc->opt.dense_only) {
        for (i = 0; i < xc->n_ent; i++) if (xc->ent_val[i] > 0.0f) xc->fired[xc->ent_lat[i]] = 1;
    } else {
        for (i = 0; i < (size_t)n; i++)
            for (j = 0; j < F; j++) if (xc->f[i * F + j] > 0.0f) xc->fired[j] = 1;
    }
    if (xc->opt.reduce.sum && (st = moexc__xc_dp_fired(xc, err)) != MOEXC_OK) return st;   /* fired anywhere */
    for (j = 0; j < F; j++) {
        xc->since_fired[j] = xc->fired[j] ? 0 : xc->since_fired[j] + (int64_t)n * moexc__dp_world(&xc->opt.reduce);
        dead += moexc__xc_is_dead(xc, (int)j);
    }
    s.dead_fraction = (double)dead / xc->F;
    /* theta = EMA(beta) of the smallest kept score, after threshold_start steps */
    /* (the first 1/(1-beta) updates are a running mean: beta_t = min(beta, 1 - 1/(t+1))) */
    if (xc->opt.variant == MOEXC_XC_BATCHTOPK && xc->step >= xc->opt.threshold_start && s.min_kept_score > 0.0) {
        double beta = MOEXC__MIN((double)xc->opt.threshold_beta, 1.0 - 1.0 / (double)(xc->threshold_count + 1));
        xc->threshold = (float)(beta * (xc->threshold_count ? xc->threshold : 0.0f) + (1.0 - beta) * s.min_kept_score);
        xc->threshold_count++;
    }
    xc->step++;
    if (stats) *stats = s;
    return MOEXC_OK;
}

/* ---- inference ---------------------------------------------------------------- */

/* Latents of raw inputs (n <= cap), xs filled: the L1 crosscoder's in the
   dense f; BatchTopK's as entries, kept by the threshold rule f_i w_i > theta
   or, before theta is estimated, by the batch's own selection. */
static moexc_status moexc__xc_encode_ws(moexc_xc *xc, const float *x_a, const float *x_b, int n, moexc_error *err)
{
    moexc_status st;
    moexc__xc_scale_inputs(xc, x_a, x_b, n);
    moexc__xc_norms(xc);
    moexc__xc_encoder_forward(xc, xc->pre, n);
    if (xc->opt.variant == MOEXC_XC_L1) {
        if ((st = moexc__xc_dense_workspace(xc, err)) != MOEXC_OK) return st;
        moexc__xc_dense_activations(xc, xc->f, xc->pre, n);
        return MOEXC_OK;
    }
    /* s > theta is s >= the next float above theta (theta >= 0) */
    st = moexc__xc_select(xc, xc->pre, n, xc->threshold >= 0.0f ? nextafterf(xc->threshold, FLT_MAX) : 0.0f, NULL, err);
    return st == MOEXC_OK ? moexc__xc_group_kept(xc, err) : st;
}

MOEXC_DEF moexc_status moexc_xc_encode(moexc_xc *xc, const float *x_a, const float *x_b, int n, float *f,
                                       moexc_error *err)
{
    moexc_status st = moexc__xc_check_inputs(xc, x_a, x_b, n, err);
    if (st == MOEXC_OK) st = moexc__xc_encode_ws(xc, x_a, x_b, n, err);
    if (st == MOEXC_OK) st = moexc__xc_dense_workspace(xc, err);
    if (st != MOEXC_OK) return st;
    if (xc->opt.variant == MOEXC_XC_BATCHTOPK) moexc__xc_dense_activations(xc, xc->f, xc->pre, n);
    memcpy(f, xc->f, (size_t)n * (size_t)xc->F * sizeof(float));
    return MOEXC_OK;
}

MOEXC_DEF void moexc_xc_decode(const moexc_xc *xc, const float *f, int n, float *xhat_a, float *xhat_b)
{
    float *xhat[2];
    int m;
    xhat[0] = xhat_a; xhat[1] = xhat_b;
    moexc__xc_decoder_forward(xc, xhat, f, n, 1);
    for (m = 0; m < 2; m++) moexc_scale(xhat[m], 1.0f / xc->scale[m], (size_t)n * (size_t)xc->d[m]);
}

MOEXC_DEF moexc_status moexc_xc_evaluate(moexc_xc *xc, const float *x_a, const float *x_b, int64_t n,
                                         moexc_xc_eval *out, int64_t *active_counts, moexc_error *err)
{
    moexc_fve_acc fve[2];
    moexc_activation_acc act;
    int64_t done = 0, n_all = n, lo;
    int m, chunk_max;
    moexc_status st;
    memset(out, 0, sizeof(*out));
    memset(fve, 0, sizeof(fve));
    memset(&act, 0, sizeof(act));
    if (n < 1) return moexc__fail(err, MOEXC_ERR_ARG, "crosscoder eval: empty set");
    /* with a reduce hook this worker scores pairs [lo, lo + n) of the set */
    lo = n_all * moexc__dp_rank(&xc->opt.reduce) / moexc__dp_world(&xc->opt.reduce);
    n = n_all * (moexc__dp_rank(&xc->opt.reduce) + 1) / moexc__dp_world(&xc->opt.reduce) - lo;
    x_a += (size_t)lo * (size_t)xc->d[0];
    x_b += (size_t)lo * (size_t)xc->d[1];
    chunk_max = (int)MOEXC__MAX(1, MOEXC__MIN(n, (int64_t)1024));
    st = moexc__xc_check_inputs(xc, x_a, x_b, chunk_max, err);
    if (st == MOEXC_OK) st = moexc_fve_acc_init(&fve[0], xc->d[0], err);
    if (st == MOEXC_OK) st = moexc_fve_acc_init(&fve[1], xc->d[1], err);
    if (st == MOEXC_OK) st = moexc_activation_acc_init(&act, xc->F, err);
    while (st == MOEXC_OK && done < n) {
        int c = (int)MOEXC__MIN((int64_t)chunk_max, n - done);
        st = moexc__xc_encode_ws(xc, x_a + (size_t)done * (size_t)xc->d[0], x_b + (size_t)done * (size_t)xc->d[1], c, err);
        if (st != MOEXC_OK) break;
        if (xc->opt.variant == MOEXC_XC_BATCHTOPK) {
            size_t e;
            moexc__xc_decoder_forward_sparse(xc, xc->xhat, c, 1);
            /* the activation statistics of moexc_activation_acc_add, from the entries */
            for (e = 0; e < xc->n_ent; e++)
                if (xc->ent_val[e] > 0.0f) { act.counts[xc->ent_lat[e]]++; act.sum_active += 1.0; }
            act.n_tokens += c;
        } else {
            moexc__xc_decoder_forward(xc, xc->xhat, xc->f, c, 1);
            moexc_activation_acc_add(&act, xc->f, c);
        }
        for (m = 0; m < 2; m++) {
            size_t i, nd = (size_t)c * (size_t)xc->d[m];
            double ss = 0.0;
            for (i = 0; i < nd; i++) { double e = (double)xc->xs[m][i] - xc->xhat[m][i]; ss += e * e; }
            out->mse[m] += ss;
            moexc_fve_acc_add(&fve[m], xc->xs[m], xc->xhat[m], c);
        }
        done += c;
    }
    if (st == MOEXC_OK && xc->opt.reduce.sum) st = moexc__xc_dp_eval(xc, fve, &act, out->mse, err);
    if (st == MOEXC_OK) {
        out->n = n_all;
        for (m = 0; m < 2; m++) { out->fve[m] = moexc_fve_acc_value(&fve[m]); out->mse[m] /= (double)n_all; }
        out->fve_pooled = moexc_fve_acc_pooled(fve, 2);
        out->l0 = moexc_activation_acc_l0(&act);
        out->dead_fraction = moexc_activation_acc_dead_fraction(&act);
        if (active_counts) memcpy(active_counts, act.counts, (size_t)xc->F * sizeof(int64_t));
    }
    moexc_fve_acc_free(&fve[0]);
    moexc_fve_acc_free(&fve[1]);
    moexc_activation_acc_free(&act);
    return st;
}

/* ---- checkpoints ----------------------------------------------------------------- */

typedef struct moexc__xc_meta { char key[32]; char value[64]; } moexc__xc_meta;

static int moexc__xc_meta_list(const moexc_xc *xc, moexc__xc_meta *meta, int folded)
{
    const moexc_xc_options *o = &xc->opt;
    int n = 0;
#define MOEXC__XC_META(k, ...) do { snprintf(meta[n].key, sizeof(meta[n].key), "%s", k); \
        snprintf(meta[n].value, sizeof(meta[n].value), __VA_ARGS__); n++; } while (0)
    MOEXC__XC_META("format", "moexc-crosscoder");
    MOEXC__XC_META("version", "1");
    MOEXC__XC_META("variant", "%s", o->variant == MOEXC_XC_L1 ? "l1" : "batchtopk");
    MOEXC__XC_META("n_latents", "%d", xc->F);
    MOEXC__XC_META("k", "%d", o->k);
    MOEXC__XC_META("n_shared", "%d", xc->ns);
    MOEXC__XC_META("d_a", "%d", xc->d[0]);
    MOEXC__XC_META("d_b", "%d", xc->d[1]);
    MOEXC__XC_META("scale_a", "%.9g", xc->scale[0]);
    MOEXC__XC_META("scale_b", "%.9g", xc->scale[1]);
    MOEXC__XC_META("folded", "%d", folded);
    MOEXC__XC_META("threshold_units", "normalised");
    MOEXC__XC_META("lambda_f", "%.9g", o->lambda_f);
    MOEXC__XC_META("lambda_ratio", "%.9g", o->lambda_ratio);
    MOEXC__XC_META("aux_k", "%d", o->aux_k);
    MOEXC__XC_META("aux_alpha", "%.9g", o->aux_alpha);
    MOEXC__XC_META("aux_exact_relu", "%d", o->aux_exact_relu);
    MOEXC__XC_META("dead_tokens", "%lld", (long long)o->dead_tokens);
    MOEXC__XC_META("steps", "%d", o->steps);
    MOEXC__XC_META("batch", "%d", o->batch);
    MOEXC__XC_META("lr", "%.9g", o->lr);
    MOEXC__XC_META("warmup_steps", "%d", o->warmup_steps);
    MOEXC__XC_META("decay_frac", "%.9g", o->decay_frac);
    MOEXC__XC_META("lambda_warmup", "%.9g", o->lambda_warmup);
    MOEXC__XC_META("clip", "%.9g", o->clip);
    MOEXC__XC_META("init_norm", "%.9g", o->init_norm);
    MOEXC__XC_META("uncentred_encoder", "%d", o->uncentred_encoder);
    MOEXC__XC_META("threshold_beta", "%.9g", o->threshold_beta);
    MOEXC__XC_META("threshold_start", "%d", o->threshold_start);
    MOEXC__XC_META("threshold_count", "%lld", (long long)xc->threshold_count);
    MOEXC__XC_META("seed", "%llu", (unsigned long long)o->seed);
    MOEXC__XC_META("step", "%d", xc->step);
#undef MOEXC__XC_META
    return n;
}

static moexc_status moexc__xc_save(const moexc_xc *xc, const char *path, int training, moexc_error *err)
{
    moexc_st_entry t[16];
    unsigned char is_i64[16] = { 0 };
    moexc_st_kv kv[40];
    moexc__xc_meta meta[40];
    size_t F = (size_t)xc->F, da = (size_t)xc->d[0], db = (size_t)xc->d[1];
    float *enc = NULL, *dec = NULL, *bdec = NULL, *ebias = NULL, thr = xc->threshold;
    int nt = 0, nm, i, m, folded = !training;
    size_t j;
    moexc_status st;
    const char *enc_names[2] = { "encoder.weight.0", "encoder.weight.1" };
    const char *dec_names[2] = { "decoder.weight.0", "decoder.weight.1" };
    const char *bdec_names[2] = { "decoder.bias.0", "decoder.bias.1" };
    enc = moexc__alloc_floats((da + db) * F);
    dec = moexc__alloc_floats((da + db) * F);
    bdec = moexc__alloc_floats(da + db);
    ebias = moexc__alloc_floats(F);
    if (!enc || !dec || !bdec || !ebias) {
        st = moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    /* the inference file holds SPEC's bias (centring folded in: b_enc - sum_m
       b_dec^m W_enc^m, unchanged by the s_m folding); a training checkpoint
       holds the parameter b_enc itself */
    if (folded) moexc__xc_spec_enc_bias(xc, ebias);
    else memcpy(ebias, xc->params + xc->off_benc, F * sizeof(float));
    /* folding: W_enc^m s_m, W_dec^m / s_m, b_dec^m / s_m */
    for (m = 0; m < 2; m++) {
        size_t d = (size_t)xc->d[m], base = m ? da : 0;
        float s = folded ? xc->scale[m] : 1.0f;
        const float *src = xc->params + xc->off_enc[m];
        for (j = 0; j < d * F; j++) enc[base * F + j] = src[j] * s;
        moexc_xc_decoder(xc, m, folded, dec + base * F);
        for (j = 0; j < d; j++) bdec[base + j] = xc->params[xc->off_bdec[m] + j] / s;
    }
    if (da == db) {
        t[nt].name = "encoder.weight"; t[nt].data = enc; t[nt].ndim = 3;
        t[nt].shape[0] = 2; t[nt].shape[1] = (int64_t)da; t[nt].shape[2] = (int64_t)F; nt++;
        t[nt].name = "decoder.weight"; t[nt].data = dec; t[nt].ndim = 3;
        t[nt].shape[0] = 2; t[nt].shape[1] = (int64_t)F; t[nt].shape[2] = (int64_t)da; nt++;
        t[nt].name = "decoder.bias"; t[nt].data = bdec; t[nt].ndim = 2;
        t[nt].shape[0] = 2; t[nt].shape[1] = (int64_t)da; nt++;
    } else {
        for (m = 0; m < 2; m++) {
            size_t d = (size_t)xc->d[m], base = m ? da : 0;
            t[nt].name = enc_names[m]; t[nt].data = enc + base * F; t[nt].ndim = 2;
            t[nt].shape[0] = (int64_t)d; t[nt].shape[1] = (int64_t)F; nt++;
            t[nt].name = dec_names[m]; t[nt].data = dec + base * F; t[nt].ndim = 2;
            t[nt].shape[0] = (int64_t)F; t[nt].shape[1] = (int64_t)d; nt++;
            t[nt].name = bdec_names[m]; t[nt].data = bdec + base; t[nt].ndim = 1;
            t[nt].shape[0] = (int64_t)d; nt++;
        }
    }
    t[nt].name = "encoder.bias"; t[nt].data = ebias; t[nt].ndim = 1; t[nt].shape[0] = (int64_t)F; nt++;
    t[nt].name = "threshold"; t[nt].data = &thr; t[nt].ndim = 1; t[nt].shape[0] = 1; nt++;
    if (training) {
        t[nt].name = "train.adam_m"; t[nt].data = xc->adam_m; t[nt].ndim = 1; t[nt].shape[0] = (int64_t)xc->n_params; nt++;
        t[nt].name = "train.adam_v"; t[nt].data = xc->adam_v; t[nt].ndim = 1; t[nt].shape[0] = (int64_t)xc->n_params; nt++;
        /* the dead-latent counters are token counts: I64, exact (float32
           would round them past 2^24 tokens) */
        t[nt].name = "train.since_fired"; t[nt].data = (const float *)(const void *)xc->since_fired;
        t[nt].ndim = 1; t[nt].shape[0] = (int64_t)F; is_i64[nt] = 1; nt++;
    }
    nm = moexc__xc_meta_list(xc, meta, folded);
    for (i = 0; i < nm; i++) { kv[i].key = meta[i].key; kv[i].value = meta[i].value; }
    st = moexc__st_save_typed(path, t, is_i64, nt, kv, nm, err);
done:
    moexc__free_aligned(enc); moexc__free_aligned(dec); moexc__free_aligned(bdec);
    moexc__free_aligned(ebias);
    return st;
}

MOEXC_DEF moexc_status moexc_xc_save(const moexc_xc *xc, const char *path, moexc_error *err)
{
    return moexc__xc_save(xc, path, 0, err);
}

MOEXC_DEF moexc_status moexc_xc_save_training(const moexc_xc *xc, const char *path, moexc_error *err)
{
    return moexc__xc_save(xc, path, 1, err);
}

MOEXC_DEF moexc_status moexc_xc_load(moexc_xc **out, const char *path, moexc_error *err)
{
    moexc_st_file *f = NULL;
    moexc_xc_options o;
    moexc_xc *xc = NULL;
    moexc_status st;
    double v, sa, sb;
    int64_t iv, F_i = 0, da_i = 0, db_i = 0, threshold_count = 0;
    const char *s;
    float *enc = NULL, *dec = NULL, *bdec = NULL, thr;
    size_t F, da, db, j;
    int64_t shape[8];
    int m, i, folded = 0, step = 0;
    *out = NULL;
    st = moexc_st_open(&f, path, err);
    if (st != MOEXC_OK) return st;
    memset(&o, 0, sizeof(o));
    s = moexc_st_meta(f, "format");
    if (!s || strcmp(s, "moexc-crosscoder") != 0) {
        st = moexc__fail(err, s ? MOEXC_ERR_FORMAT : MOEXC_ERR_MISSING, "%s: metadata 'format' is %s%s%s, expected \"moexc-crosscoder\"",
                         path, s ? "\"" : "", s ? s : "missing", s ? "\"" : "");
        goto fail;
    }
    s = moexc_st_meta(f, "version");
    if (!s || strcmp(s, "1") != 0) { st = moexc__fail(err, MOEXC_ERR_VERSION, "%s: crosscoder version %s, expected 1", path, s ? s : "missing"); goto fail; }
    s = moexc_st_meta(f, "variant");
    if (!s || (strcmp(s, "batchtopk") != 0 && strcmp(s, "l1") != 0)) {
        st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: metadata 'variant' is %s, expected batchtopk or l1", path, s ? s : "missing");
        goto fail;
    }
    o.variant = strcmp(s, "l1") == 0 ? MOEXC_XC_L1 : MOEXC_XC_BATCHTOPK;
#define MOEXC__XC_GET(key, lo, hi, dst) do { st = moexc__st_meta_number(f, path, key, lo, hi, &v, err); \
        if (st != MOEXC_OK) goto fail; \
        dst; } while (0)
    /* integers are read exactly (decimal digits, range-checked before any cast) */
#define MOEXC__XC_INT(key, lo, hi, dst) do { st = moexc__st_meta_i64(f, path, key, lo, hi, &iv, err); \
        if (st != MOEXC_OK) goto fail; \
        dst; } while (0)
    MOEXC__XC_INT("n_latents", 1, 1 << 28, F_i = iv);
    MOEXC__XC_INT("d_a", 1, 1 << 20, da_i = iv);
    MOEXC__XC_INT("d_b", 1, 1 << 20, db_i = iv);
    MOEXC__XC_INT("n_shared", 0, F_i, o.n_shared = (int)iv);
    MOEXC__XC_INT("k", 1, F_i, o.k = (int)iv);
    MOEXC__XC_GET("scale_a", 1e-30, 1e30, sa = v);
    MOEXC__XC_GET("scale_b", 1e-30, 1e30, sb = v);
    MOEXC__XC_INT("folded", 0, 1, folded = (int)iv);
    MOEXC__XC_GET("lambda_f", -1e30, 1e30, o.lambda_f = (float)v);
    MOEXC__XC_GET("lambda_ratio", -1e30, 1e30, o.lambda_ratio = (float)v);
    MOEXC__XC_INT("aux_k", -1000000000, 1000000000, o.aux_k = (int)iv);
    MOEXC__XC_GET("aux_alpha", -1e30, 1e30, o.aux_alpha = (float)v);
    /* files from before the option lack the key: they used the exact ReLU */
    if (moexc_st_meta(f, "aux_exact_relu")) MOEXC__XC_INT("aux_exact_relu", 0, 1, o.aux_exact_relu = (int)iv);
    else o.aux_exact_relu = 1;
    MOEXC__XC_INT("dead_tokens", -INT64_C(1000000000000000000), INT64_C(1000000000000000000), o.dead_tokens = iv);
    MOEXC__XC_INT("steps", 1, INT_MAX, o.steps = (int)iv);
    MOEXC__XC_INT("batch", 1, INT_MAX, o.batch = (int)iv);
    MOEXC__XC_GET("lr", 0, 1e30, o.lr = (float)v);
    MOEXC__XC_INT("warmup_steps", -INT_MAX, INT_MAX, o.warmup_steps = (int)iv);
    MOEXC__XC_GET("decay_frac", -1e30, 1e30, o.decay_frac = (float)v);
    MOEXC__XC_GET("lambda_warmup", -1e30, 1e30, o.lambda_warmup = (float)v);
    MOEXC__XC_GET("clip", -1e30, 1e30, o.clip = (float)v);
    MOEXC__XC_GET("init_norm", 0, 1e30, o.init_norm = (float)v);
    /* files from before the centred encoder lack the key: they are uncentred */
    if (moexc_st_meta(f, "uncentred_encoder")) MOEXC__XC_INT("uncentred_encoder", 0, 1, o.uncentred_encoder = (int)iv);
    else o.uncentred_encoder = 1;
    MOEXC__XC_GET("threshold_beta", 0, 1, o.threshold_beta = (float)v);
    MOEXC__XC_INT("threshold_start", -INT_MAX, INT_MAX, o.threshold_start = (int)iv);
    MOEXC__XC_INT("threshold_count", 0, INT64_MAX, threshold_count = iv);
    MOEXC__XC_INT("step", 0, INT_MAX - 1, step = (int)iv);   /* one more step must fit an int */
#undef MOEXC__XC_GET
#undef MOEXC__XC_INT
    if ((st = moexc__st_meta_u64(f, path, "seed", &o.seed, err)) != MOEXC_OK) goto fail;
    o.n_latents = (int)F_i;
    /* the weights (2 (d_A + d_B) F floats of encoder and decoder) must
       roughly fit the file before the crosscoder is allocated: at most twice
       its data section plus 64 MiB, so a header naming huge widths costs
       little memory, while a file one tensor off gets the message naming
       that tensor below */
    if ((double)(da_i + db_i) * (double)F_i * 8.0 > 2.0 * (double)(f->size - f->data_start) + 67108864.0) {
        st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: n_latents %lld, d_a %lld, d_b %lld need %.0f bytes of weights, "
                         "the file's data section holds %lu", path, (long long)F_i, (long long)da_i, (long long)db_i,
                         (double)(da_i + db_i) * (double)F_i * 8.0, (unsigned long)(f->size - f->data_start));
        goto fail;
    }
    st = moexc_xc_create(&xc, (int)da_i, (int)db_i, &o, err);
    if (st != MOEXC_OK) {   /* the options are the file's: name it */
        if (err) {
            char msg[sizeof(err->message)];
            memcpy(msg, err->message, sizeof(msg));
            moexc__fail(err, st, "%s: %s", path, msg);
        }
        goto fail;
    }
    xc->opt.dead_tokens = o.dead_tokens;   /* the resolved values exactly as saved */
    F = (size_t)xc->F; da = (size_t)xc->d[0]; db = (size_t)xc->d[1];
    xc->scale[0] = (float)sa; xc->scale[1] = (float)sb;
    xc->step = step;
    xc->threshold_count = threshold_count;
    enc = moexc__alloc_floats((da + db) * F);
    dec = moexc__alloc_floats((da + db) * F);
    bdec = moexc__alloc_floats(da + db);
    if (!enc || !dec || !bdec) { st = moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory", path); goto fail; }
    if (da == db) {
        shape[0] = 2; shape[1] = (int64_t)da; shape[2] = (int64_t)F;
        if ((st = moexc_st_read_f32(f, "encoder.weight", enc, 3, shape, err)) != MOEXC_OK) goto fail;
        shape[1] = (int64_t)F; shape[2] = (int64_t)da;
        if ((st = moexc_st_read_f32(f, "decoder.weight", dec, 3, shape, err)) != MOEXC_OK) goto fail;
        shape[1] = (int64_t)da;
        if ((st = moexc_st_read_f32(f, "decoder.bias", bdec, 2, shape, err)) != MOEXC_OK) goto fail;
    } else {
        const char *enc_names[2] = { "encoder.weight.0", "encoder.weight.1" };
        const char *dec_names[2] = { "decoder.weight.0", "decoder.weight.1" };
        const char *bdec_names[2] = { "decoder.bias.0", "decoder.bias.1" };
        for (m = 0; m < 2; m++) {
            size_t d = (size_t)xc->d[m], base = m ? da : 0;
            shape[0] = (int64_t)d; shape[1] = (int64_t)F;
            if ((st = moexc_st_read_f32(f, enc_names[m], enc + base * F, 2, shape, err)) != MOEXC_OK) goto fail;
            shape[0] = (int64_t)F; shape[1] = (int64_t)d;
            if ((st = moexc_st_read_f32(f, dec_names[m], dec + base * F, 2, shape, err)) != MOEXC_OK) goto fail;
            shape[0] = (int64_t)d;
            if ((st = moexc_st_read_f32(f, bdec_names[m], bdec + base, 1, shape, err)) != MOEXC_OK) goto fail;
        }
    }
    shape[0] = (int64_t)F;
    if ((st = moexc_st_read_f32(f, "encoder.bias", xc->params + xc->off_benc, 1, shape, err)) != MOEXC_OK) goto fail;
    shape[0] = 1;
    if ((st = moexc_st_read_f32(f, "threshold", &thr, 1, shape, err)) != MOEXC_OK) goto fail;
    if (!isfinite(thr)) {   /* theta gates every latent at inference */
        st = moexc__fail(err, MOEXC_ERR_NUMERIC, "%s: threshold (theta) = %g is not finite", path, (double)thr);
        goto fail;
    }
    xc->threshold = thr;
    /* unfold (a training checkpoint is stored unfolded) and re-tie the shared rows */
    for (m = 0; m < 2; m++) {
        size_t d = (size_t)xc->d[m], base = m ? da : 0;
        float s_m = folded ? xc->scale[m] : 1.0f;
        for (j = 0; j < d * F; j++) xc->params[xc->off_enc[m] + j] = enc[base * F + j] / s_m;
        for (j = 0; j < d; j++) xc->params[xc->off_bdec[m] + j] = bdec[base + j] * s_m;
        for (i = 0; i < xc->F; i++) {
            const float *src = dec + base * F + (size_t)i * d;
            float *row = moexc__xc_dec_row(xc, xc->params, m, i);
            if (m == 1 && i < xc->ns) {
                double diff = 0.0, nn = 0.0;
                for (j = 0; j < d; j++) {
                    double a = (double)src[j] * s_m;
                    diff = MOEXC__MAX(diff, fabs(a - row[j]));
                    nn = MOEXC__MAX(nn, fabs((double)row[j]));
                }
                if (diff > 1e-5 * nn + 1e-30) {
                    st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: decoder.weight: shared latent %d differs between the two "
                                     "models (max |diff| %g), so it cannot be tied", path, i, diff);
                    goto fail;
                }
                continue;
            }
            for (j = 0; j < d; j++) row[j] = src[j] * s_m;
        }
    }
    /* an inference file holds SPEC's bias b_enc - sum_m b_dec^m W_enc^m: back to b_enc */
    if (folded && !xc->opt.uncentred_encoder) moexc__xc_add_centring(xc, xc->params + xc->off_benc, 1.0f);
    for (j = 0; j < xc->n_params; j++)
        if (!isfinite(xc->params[j])) {
            st = moexc__fail(err, MOEXC_ERR_NUMERIC, "%s: parameter %lu of the crosscoder is not finite", path, (unsigned long)j);
            goto fail;
        }
    if (moexc_st_shape(f, "train.adam_m", &i, shape, NULL) == MOEXC_OK) {
        const char *dt;
        shape[0] = (int64_t)xc->n_params;
        if ((st = moexc_st_read_f32(f, "train.adam_m", xc->adam_m, 1, shape, err)) != MOEXC_OK) goto fail;
        if ((st = moexc_st_read_f32(f, "train.adam_v", xc->adam_v, 1, shape, err)) != MOEXC_OK) goto fail;
        /* Adam's moments: finite, the second one >= 0 (its square root divides the step) */
        for (j = 0; j < xc->n_params; j++)
            if (!isfinite(xc->adam_m[j]) || !isfinite(xc->adam_v[j]) || xc->adam_v[j] < 0.0f) {
                st = moexc__fail(err, MOEXC_ERR_NUMERIC, "%s: train.adam_%c[%lu] = %g is not %s", path,
                                 isfinite(xc->adam_m[j]) ? 'v' : 'm', (unsigned long)j,
                                 (double)(isfinite(xc->adam_m[j]) ? xc->adam_v[j] : xc->adam_m[j]),
                                 isfinite(xc->adam_m[j]) ? "finite and >= 0" : "finite");
                goto fail;
            }
        shape[0] = (int64_t)F;
        dt = moexc_st_dtype(f, "train.since_fired");
        if (dt && strcmp(dt, "F32") == 0) {
            /* files from before the I64 counters: whole token counts in
               float32 (exact up to 2^24) */
            float *since = moexc__alloc_floats(F);
            if (!since) { st = moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory", path); goto fail; }
            st = moexc_st_read_f32(f, "train.since_fired", since, 1, shape, err);
            for (j = 0; st == MOEXC_OK && j < F; j++) {
                if (!(since[j] >= 0.0f && since[j] <= 9.0e18f) || since[j] != floor(since[j]))
                    st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: train.since_fired[%lu] = %g is not a token count "
                                     "(a whole number in [0, 9e18])", path, (unsigned long)j, (double)since[j]);
                else
                    xc->since_fired[j] = (int64_t)since[j];
            }
            moexc__free_aligned(since);
            if (st != MOEXC_OK) goto fail;
        } else {
            if ((st = moexc__st_read_i64(f, "train.since_fired", xc->since_fired, 1, shape, err)) != MOEXC_OK) goto fail;
            for (j = 0; j < F; j++)
                if (xc->since_fired[j] < 0) {
                    st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: train.since_fired[%lu] = %lld is negative",
                                     path, (unsigned long)j, (long long)xc->since_fired[j]);
                    goto fail;
                }
        }
    }
    moexc_st_close(f);
    moexc__free_aligned(enc); moexc__free_aligned(dec); moexc__free_aligned(bdec);
    *out = xc;
    return MOEXC_OK;
fail:
    moexc_st_close(f);
    moexc_xc_free(xc);
    moexc__free_aligned(enc); moexc__free_aligned(dec); moexc__free_aligned(bdec);
    return st;
}
/* ======================================================================== */
/* >>sae (implementation)                                                    */
/* ======================================================================== */
/* Letters: n rows in a batch, d width, F latents, E experts of F_e latents,
   a active experts per token (act), k kept latents per token, D dead latents.
   Everything inside is in normalised units (x already multiplied by s). The
   selection helpers (moexc__select_top, moexc__select_top_any), the centred
   sum of squares, the learning-rate schedule, clipping + Adam and the
   safetensors metadata reader are the crosscoder's. */

struct moexc_sae {
    moexc_sae_options opt;           /* resolved */
    int      d, F, E, Fe, act;
    float    scale;                  /* s */
    int      step, frozen, last_n;
    size_t   n_params;
    float   *params, *grads, *adam_m, *adam_v;
    size_t   off_enc, off_benc, off_dec, off_bdec, off_wr, off_br, off_lam, off_om;
    int64_t *since_fired;            /* (F) tokens since the latent last fired */
    signed char *dead_override;      /* (F) -1 none, 0 alive, 1 dead */
    unsigned char *fired;            /* (F) */
    int     *aux_idx;                /* (F) dead latents */
    int      n_aux, aux_per_row;     /* D, min(aux_k, D) */
    float   *mu, *amat, *dmat;       /* (E x d) Scale: mu_e, a_e = Λ mu_e, scratch for da_e / dmu_e */
    float   *lb_f;                   /* (E) share of the routing slots per expert (a constant) */
    double  *partial;                /* chunk sums for the gradient norm */
    /* workspace for up to cap rows */
    int      cap;
    float   *xs, *xc, *xhat, *e, *dxhat, *dxc;    /* (n x d) */
    float   *aux_e, *ehat;                        /* (n x d) AuxK's target (a constant) and ê, then dê */
    float   *pre, *P;                             /* (n x F) pre-activations; Scale: M x_c before scaling */
    float   *logits, *prob, *dlog, *cdot, *dc;    /* (n x E) */
    float   *xg;                                  /* (max(n, F) x d) rows gathered for an expert's GEMM */
    float   *pg;                                  /* (n x max(F_e, F)) that GEMM's output */
    int     *grow;                                /* (n) the rows gathered */
    int     *route;                               /* (n x act) experts, by decreasing probability */
    float   *gate, *dgate;                        /* (n x act) */
    int     *kept, *kslot, *kcnt;                 /* (n x k) latents, their slot; (n) how many */
    float   *kval, *kdp;                          /* (n x k) z and d loss / d pre */
    int     *aux_lat, *aux_cnt;                   /* (n x ka), (n) */
    float   *aux_val, *aux_pre, *aux_dp;          /* (n x ka) */
    int      n_threads;
    size_t   thr_len;
    float   *thr_buf;                             /* (threads x 2F) */
    unsigned char *thr_keep;                      /* (threads x F) */
};

#define MOEXC__SAE_P(s, off) ((s)->params + (s)->off)
#define MOEXC__SAE_G(s, off) ((s)->grads + (s)->off)

MOEXC_DEF const char *moexc_sae_variant_name(int variant)
{
    switch (variant) {
    case MOEXC_SAE_TOPK:   return "topk";
    case MOEXC_SAE_SWITCH: return "switch";
    case MOEXC_SAE_SCALE:  return "scale";
    default:               return "unknown";
    }
}

static void moexc__sae_free_workspace(moexc_sae *s)
{
    moexc__free_aligned(s->xs); moexc__free_aligned(s->xc); moexc__free_aligned(s->xhat);
    moexc__free_aligned(s->e); moexc__free_aligned(s->dxhat); moexc__free_aligned(s->dxc);
    moexc__free_aligned(s->aux_e); moexc__free_aligned(s->ehat);
    if (s->P != s->pre) moexc__free_aligned(s->P);   /* P is pre except in the Scale SAE */
    moexc__free_aligned(s->pre);
    moexc__free_aligned(s->logits); moexc__free_aligned(s->prob); moexc__free_aligned(s->dlog);
    moexc__free_aligned(s->cdot); moexc__free_aligned(s->dc);
    moexc__free_aligned(s->xg); moexc__free_aligned(s->pg); moexc__free(s->grow);
    moexc__free(s->route); moexc__free(s->gate); moexc__free(s->dgate);
    moexc__free(s->kept); moexc__free(s->kslot); moexc__free(s->kcnt); moexc__free(s->kval); moexc__free(s->kdp);
    moexc__free(s->aux_lat); moexc__free(s->aux_cnt); moexc__free(s->aux_val); moexc__free(s->aux_pre);
    moexc__free(s->aux_dp);
    moexc__free_aligned(s->thr_buf); moexc__free(s->thr_keep);
    s->xs = s->xc = s->xhat = s->e = s->dxhat = s->dxc = s->aux_e = s->ehat = s->pre = s->P = NULL;
    s->logits = s->prob = s->dlog = s->cdot = s->dc = s->gate = s->dgate = s->kval = s->kdp = NULL;
    s->aux_val = s->aux_pre = s->aux_dp = s->thr_buf = s->xg = s->pg = NULL;
    s->grow = NULL;
    s->route = s->kept = s->kslot = s->kcnt = s->aux_lat = s->aux_cnt = NULL;
    s->thr_keep = NULL;
    s->cap = 0; s->n_threads = 0;
}

static moexc_status moexc__sae_workspace(moexc_sae *s, int n, moexc_error *err)
{
    size_t nd = (size_t)n * (size_t)s->d, nF = (size_t)n * (size_t)s->F, nE = (size_t)n * (size_t)s->E;
    size_t na = (size_t)n * (size_t)s->act, nk = (size_t)n * (size_t)s->opt.k;
    size_t nka = (size_t)n * (size_t)MOEXC__MAX(1, MOEXC__MIN(s->opt.aux_k, s->F));
    int threads = moexc__xc_threads(), ok = 1;
    if (n <= s->cap && threads <= s->n_threads) return MOEXC_OK;
    moexc__sae_free_workspace(s);
    s->xs = moexc__alloc_floats(nd); s->xc = moexc__alloc_floats(nd); s->xhat = moexc__alloc_floats(nd);
    s->e = moexc__alloc_floats(nd); s->dxhat = moexc__alloc_floats(nd); s->dxc = moexc__alloc_floats(nd);
    s->aux_e = moexc__alloc_floats(nd); s->ehat = moexc__alloc_floats(nd);
    s->pre = moexc__alloc_floats(nF);
    s->P = s->opt.variant == MOEXC_SAE_SCALE ? moexc__alloc_floats(nF) : s->pre;
    s->logits = moexc__alloc_floats(nE); s->prob = moexc__alloc_floats(nE); s->dlog = moexc__alloc_floats(nE);
    s->cdot = moexc__alloc_floats(nE); s->dc = moexc__alloc_floats(nE);
    s->xg = moexc__alloc_floats((size_t)MOEXC__MAX(n, s->F) * (size_t)s->d);
    s->pg = s->E > 1 ? moexc__alloc_floats(nF) : moexc__alloc_floats(1);
    s->grow = (int *)moexc__calloc((size_t)n, sizeof(int));
    s->route = (int *)moexc__calloc(na, sizeof(int));
    s->gate = (float *)moexc__calloc(na, sizeof(float)); s->dgate = (float *)moexc__calloc(na, sizeof(float));
    s->kept = (int *)moexc__calloc(nk, sizeof(int)); s->kslot = (int *)moexc__calloc(nk, sizeof(int));
    s->kcnt = (int *)moexc__calloc((size_t)n, sizeof(int));
    s->kval = (float *)moexc__calloc(nk, sizeof(float)); s->kdp = (float *)moexc__calloc(nk, sizeof(float));
    s->aux_lat = (int *)moexc__calloc(nka, sizeof(int)); s->aux_cnt = (int *)moexc__calloc((size_t)n, sizeof(int));
    s->aux_val = (float *)moexc__calloc(nka, sizeof(float)); s->aux_pre = (float *)moexc__calloc(nka, sizeof(float));
    s->aux_dp = (float *)moexc__calloc(nka, sizeof(float));
    s->thr_len = 2 * (size_t)s->F;
    s->thr_buf = moexc__alloc_floats((size_t)threads * s->thr_len);
    s->thr_keep = (unsigned char *)moexc__calloc((size_t)threads, (size_t)s->F);
    ok = s->xs && s->xc && s->xhat && s->e && s->dxhat && s->dxc && s->aux_e && s->ehat && s->pre && s->P &&
         s->logits && s->prob && s->dlog && s->cdot && s->dc && s->route && s->gate && s->dgate && s->kept &&
         s->kslot && s->kcnt && s->kval && s->kdp && s->aux_lat && s->aux_cnt && s->aux_val && s->aux_pre &&
         s->aux_dp && s->thr_buf && s->thr_keep && s->xg && s->pg && s->grow;
    if (!ok) {
        moexc__sae_free_workspace(s);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "sae: no memory for a batch of %d rows (F = %d)", n, s->F);
    }
    s->cap = n;
    s->n_threads = threads;
    return MOEXC_OK;
}

MOEXC_DEF void moexc_sae_free(moexc_sae *s)
{
    if (!s) return;
    moexc__sae_free_workspace(s);
    moexc__free_aligned(s->params); moexc__free_aligned(s->grads);
    moexc__free_aligned(s->adam_m); moexc__free_aligned(s->adam_v);
    moexc__free(s->since_fired); moexc__free(s->dead_override); moexc__free(s->fired); moexc__free(s->aux_idx);
    moexc__free_aligned(s->mu); moexc__free_aligned(s->amat); moexc__free_aligned(s->dmat);
    moexc__free(s->lb_f); moexc__free(s->partial);
    moexc__free(s);
}

MOEXC_DEF moexc_status moexc_sae_create(moexc_sae **out, int d, const moexc_sae_options *opt, moexc_error *err)
{
    moexc_sae_options o;
    moexc_sae *s;
    size_t F, E, off = 0;
    int i, ok;
    *out = NULL;
    memset(&o, 0, sizeof(o));
    if (opt) o = *opt;
    if (d <= 0) return moexc__fail(err, MOEXC_ERR_ARG, "sae: width d %d must be > 0", d);
    if (o.variant != MOEXC_SAE_TOPK && o.variant != MOEXC_SAE_SWITCH && o.variant != MOEXC_SAE_SCALE)
        return moexc__fail(err, MOEXC_ERR_ARG, "sae: unknown variant %d", o.variant);
    if (o.n_latents == 0) o.n_latents = 16 * d;
    if (o.n_experts == 0) o.n_experts = o.variant == MOEXC_SAE_TOPK ? 1 : 8;
    if (o.active_experts == 0) o.active_experts = o.variant == MOEXC_SAE_SCALE ? 2 : 1;
    if (o.n_latents < 1) return moexc__fail(err, MOEXC_ERR_ARG, "sae: n_latents %d < 1", o.n_latents);
    if (o.n_experts < 1 || o.n_experts > 64)
        return moexc__fail(err, MOEXC_ERR_ARG, "sae: n_experts %d outside [1, 64]", o.n_experts);
    if (o.variant == MOEXC_SAE_TOPK && (o.n_experts != 1 || o.active_experts != 1))
        return moexc__fail(err, MOEXC_ERR_ARG, "sae: the TopK SAE has one expert (n_experts %d, active %d)", o.n_experts, o.active_experts);
    if (o.variant == MOEXC_SAE_SWITCH && o.active_experts != 1)
        return moexc__fail(err, MOEXC_ERR_ARG, "sae: the Switch SAE routes to one expert (active_experts %d)", o.active_experts);
    if (o.n_latents % o.n_experts != 0)
        return moexc__fail(err, MOEXC_ERR_ARG, "sae: n_latents %d is not a multiple of n_experts %d", o.n_latents, o.n_experts);
    if (o.active_experts < 1 || o.active_experts > o.n_experts)
        return moexc__fail(err, MOEXC_ERR_ARG, "sae: active_experts %d outside [1, n_experts = %d]", o.active_experts, o.n_experts);
    if (o.k == 0) o.k = MOEXC__MIN(32, o.n_latents / o.n_experts * o.active_experts);
    if (o.k < 1 || o.k > o.n_latents / o.n_experts * o.active_experts)
        return moexc__fail(err, MOEXC_ERR_ARG, "sae: k %d outside [1, F_e a = %d]", o.k, o.n_latents / o.n_experts * o.active_experts);
    if (o.lb_alpha == 0.0f) o.lb_alpha = 1.0f;
    if (o.aux_k == 0) o.aux_k = MOEXC__MAX(1, d / 2);
    if (o.aux_alpha == 0.0f) o.aux_alpha = 1.0f / 32.0f;
    if (o.steps == 0) o.steps = 5000;
    if (o.batch == 0) o.batch = 1024;
    if (o.steps < 1 || o.batch < 1) return moexc__fail(err, MOEXC_ERR_ARG, "sae: steps %d and batch %d must be >= 1", o.steps, o.batch);
    if (o.dead_tokens == 0) o.dead_tokens = MOEXC__MAX(1, MOEXC__MIN((int64_t)10000000, (int64_t)o.steps * o.batch / 20));
    if (o.lr == 0.0f) o.lr = (float)MOEXC__MIN(1e-3, 2e-4 / sqrt((double)o.n_latents / 16384.0));
    if (o.warmup_steps == 0) o.warmup_steps = MOEXC__MIN(1000, o.steps / 20);
    if (o.decay_frac == 0.0f) o.decay_frac = 0.2f;
    if (o.clip == 0.0f) o.clip = 1.0f;
    if (o.init_norm == 0.0f) o.init_norm = 1.0f;
    if (!(o.lr > 0.0f) || o.decay_frac < 0.0f || o.decay_frac > 1.0f || !(o.init_norm > 0.0f))
        return moexc__fail(err, MOEXC_ERR_ARG, "sae: lr %g, decay_frac %g or init_norm %g out of range", o.lr, o.decay_frac, o.init_norm);

    s = (moexc_sae *)moexc__calloc(1, sizeof(*s));
    if (!s) return moexc__fail(err, MOEXC_ERR_NOMEM, "sae: out of memory");
    s->opt = o;
    s->d = d; s->F = o.n_latents; s->E = o.n_experts; s->Fe = s->F / s->E; s->act = o.active_experts;
    s->scale = 1.0f;
    F = (size_t)s->F; E = (size_t)s->E;
    /* the flat layout documented in the declaration */
    s->off_enc = off;  off += F * (size_t)d;
    s->off_benc = off; off += F;
    s->off_dec = off;  off += F * (size_t)d;
    s->off_bdec = off; off += (size_t)d;
    s->off_wr = off;   off += E > 1 ? E * (size_t)d : 0;
    s->off_br = off;   off += E > 1 ? E : 0;
    s->off_lam = off;  off += o.variant == MOEXC_SAE_SCALE ? (size_t)d * (size_t)d : 0;
    s->off_om = off;   off += o.variant == MOEXC_SAE_SCALE ? E : 0;
    s->n_params = off;
    s->params = moexc__alloc_floats(off); s->grads = moexc__alloc_floats(off);
    s->adam_m = moexc__alloc_floats(off); s->adam_v = moexc__alloc_floats(off);
    s->since_fired = (int64_t *)moexc__calloc(F, sizeof(int64_t));
    s->dead_override = (signed char *)moexc__malloc(F);
    s->fired = (unsigned char *)moexc__calloc(F, 1);
    s->aux_idx = (int *)moexc__calloc(F, sizeof(int));
    s->mu = moexc__alloc_floats(E * (size_t)d); s->amat = moexc__alloc_floats(E * (size_t)d);
    s->dmat = moexc__alloc_floats(E * (size_t)d);
    s->lb_f = (float *)moexc__calloc(E, sizeof(float));
    s->partial = (double *)moexc__calloc(MOEXC__MAX((off + MOEXC__OPT_CHUNK - 1) / MOEXC__OPT_CHUNK + 1, (size_t)d), sizeof(double));
    ok = s->params && s->grads && s->adam_m && s->adam_v && s->since_fired && s->dead_override && s->fired &&
         s->aux_idx && s->mu && s->amat && s->dmat && s->lb_f && s->partial;
    if (!ok) {
        moexc_sae_free(s);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "sae: no memory for F = %d, d = %d", (int)F, d);
    }
    for (i = 0; i < s->F; i++) s->dead_override[i] = -1;
    if (o.variant == MOEXC_SAE_SCALE)                     /* Λ = I, w = 0 */
        for (i = 0; i < d; i++) s->params[s->off_lam + (size_t)i * (size_t)d + (size_t)i] = 1.0f;
    *out = s;
    return MOEXC_OK;
}

MOEXC_DEF const moexc_sae_options *moexc_sae_get_options(const moexc_sae *s) { return &s->opt; }
MOEXC_DEF int    moexc_sae_dim(const moexc_sae *s) { return s->d; }
MOEXC_DEF float  moexc_sae_scale(const moexc_sae *s) { return s->scale; }
MOEXC_DEF int    moexc_sae_step(const moexc_sae *s) { return s->step; }
MOEXC_DEF size_t moexc_sae_num_params(const moexc_sae *s) { return s->n_params; }
MOEXC_DEF float *moexc_sae_params(moexc_sae *s) { return s->params; }
MOEXC_DEF float *moexc_sae_grads(moexc_sae *s) { return s->grads; }
MOEXC_DEF void   moexc_sae_set_scale(moexc_sae *s, float scale) { s->scale = scale; }
MOEXC_DEF void   moexc_sae_freeze_selection(moexc_sae *s, int frozen) { s->frozen = frozen != 0; }
MOEXC_DEF void   moexc_sae_set_dead(moexc_sae *s, int latent, int dead)
{
    if (latent >= 0 && latent < s->F) s->dead_override[latent] = (signed char)(dead ? 1 : 0);
}

MOEXC_DEF void moexc_sae_decoder(const moexc_sae *s, int folded, float *out)
{
    size_t i, n = (size_t)s->F * (size_t)s->d;
    for (i = 0; i < n; i++) out[i] = folded ? s->params[s->off_dec + i] / s->scale : s->params[s->off_dec + i];
}

static int moexc__sae_is_dead(const moexc_sae *s, int i)
{
    if (s->dead_override[i] >= 0) return s->dead_override[i];
    return s->since_fired[i] >= s->opt.dead_tokens;
}

MOEXC_DEF double moexc_sae_encoder_flops(const moexc_sae *s)
{
    double d = s->d, Fe = s->Fe, E = s->E, a = s->act;
    if (s->opt.variant == MOEXC_SAE_TOPK) return 2.0 * s->F * d;
    if (s->opt.variant == MOEXC_SAE_SWITCH) return 2.0 * E * d + 2.0 * Fe * d;
    return 2.0 * E * d + a * (2.0 * Fe * d + 2.0 * d + 2.0 * Fe);
}

MOEXC_DEF moexc_status moexc_sae_init_from_data(moexc_sae *s, const float *x, int n, moexc_error *err)
{
    moexc_rng rng;
    size_t d = (size_t)s->d;
    double norm_sum = 0.0;
    float *bdec = MOEXC__SAE_P(s, off_bdec), *dec = MOEXC__SAE_P(s, off_dec), *enc = MOEXC__SAE_P(s, off_enc);
    int i, j, b;
    if (n < 1 || !x) return moexc__fail(err, MOEXC_ERR_ARG, "sae init: need at least one row, got %d", n);
    for (b = 0; b < n; b++) norm_sum += sqrt((double)moexc_dot(x + (size_t)b * d, x + (size_t)b * d, d));
    /* s: mean ||s x|| = sqrt(d) on the sample (SPEC §4) */
    if (!(norm_sum > 0.0) || !isfinite(norm_sum))
        return moexc__fail(err, MOEXC_ERR_NUMERIC, "sae init: activations have mean norm %g", norm_sum / n);
    s->scale = (float)(sqrt((double)d) * n / norm_sum);
    for (j = 0; j < (int)d; j++) {                /* b_dec = mean of s x */
        double sum = 0.0;
        for (b = 0; b < n; b++) sum += x[(size_t)b * d + (size_t)j];
        bdec[j] = (float)(sum / n * s->scale);
    }
    moexc_rng_seed(&rng, s->opt.seed ^ UINT64_C(0x5AE5AE5AE));
    for (i = 0; i < s->F; i++) {                  /* decoder rows: random directions; W_enc = W_dec */
        float *row = dec + (size_t)i * d;
        double nn = 0.0;
        for (j = 0; j < (int)d; j++) { row[j] = moexc_rng_normal(&rng); nn += (double)row[j] * row[j]; }
        nn = sqrt(nn);
        for (j = 0; j < (int)d; j++) row[j] = (float)(row[j] * s->opt.init_norm / nn);
        memcpy(enc + (size_t)i * d, row, d * sizeof(float));
    }
    memset(MOEXC__SAE_P(s, off_benc), 0, (size_t)s->F * sizeof(float));
    if (s->E > 1) {                               /* router: N(0, 1/d^2), b_r = 0 */
        float *wr = MOEXC__SAE_P(s, off_wr);
        for (i = 0; i < s->E * (int)d; i++) wr[i] = moexc_rng_normal(&rng) / (float)d;
        memset(MOEXC__SAE_P(s, off_br), 0, (size_t)s->E * sizeof(float));
    }
    return MOEXC_OK;
}

/* Scale SAE: mu_e = mean_rows(M_e), a_e = Λ mu_e (E x d each) */
static void moexc__sae_scale_vectors(moexc_sae *s)
{
    int e, i, d = s->d;
    const float *enc = MOEXC__SAE_P(s, off_enc);
    for (e = 0; e < s->E; e++) {
        float *mu = s->mu + (size_t)e * (size_t)d;
        memset(mu, 0, (size_t)d * sizeof(float));
        for (i = 0; i < s->Fe; i++) moexc_axpy(mu, 1.0f, enc + ((size_t)e * s->Fe + (size_t)i) * (size_t)d, (size_t)d);
        moexc_scale(mu, 1.0f / (float)s->Fe, (size_t)d);
    }
    /* amat = mu Λ^T: a_e[r] = sum_c Λ[r][c] mu_e[c] */
    moexc_sgemm(0, 1, s->E, d, d, 1.0f, s->mu, d, MOEXC__SAE_P(s, off_lam), d, 0.0f, s->amat, d);
}

/* Forward over n rows (n <= cap) of raw x, up to x̂ and e = s x - x̂.
   select = 0 reuses the routing, kept latents and AuxK choices (frozen).
   Fills the stats' rec, aux, lb, fve, l0; returns the loss's AuxK
   1/denominator in *inv_den (0: no AuxK term). */
static void moexc__sae_forward(moexc_sae *s, const float *x, int n, int select, int with_aux,
                               moexc_sae_step_stats *st, double *inv_den)
{
    int d = s->d, F = s->F, E = s->E, A = s->act, K = s->opt.k, Fe = s->Fe, b, j;
    int scale_sae = s->opt.variant == MOEXC_SAE_SCALE;
    int ka = with_aux ? MOEXC__MAX(1, MOEXC__MIN(s->opt.aux_k, F)) : 1;
    const float *bdec = MOEXC__SAE_P(s, off_bdec), *benc = MOEXC__SAE_P(s, off_benc), *dec = MOEXC__SAE_P(s, off_dec);
    const float *om = MOEXC__SAE_P(s, off_om);
    size_t nd = (size_t)n * (size_t)d, i;
    double rec = 0.0, active = 0.0, num = 0.0, den = 0.0;
    *inv_den = 0.0;
    /* xs = s x, x_c = xs - b_dec */
    for (b = 0; b < n; b++)
        for (j = 0; j < d; j++) {
            size_t q = (size_t)b * (size_t)d + (size_t)j;
            s->xs[q] = x[q] * s->scale;
            s->xc[q] = s->xs[q] - bdec[j];
        }
    /* router: p = softmax(x_c W_r^T + b_r) */
    if (E > 1) {
        moexc_sgemm(0, 1, n, E, d, 1.0f, s->xc, d, MOEXC__SAE_P(s, off_wr), d, 0.0f, s->logits, E);
        for (b = 0; b < n; b++) moexc_axpy(s->logits + (size_t)b * (size_t)E, 1.0f, MOEXC__SAE_P(s, off_br), (size_t)E);
        moexc_softmax_rows(s->prob, s->logits, n, E);
    }
    /* routing: the top-a experts by p (ties to the lower index) and their gates */
    if (select) {
        for (b = 0; b < n; b++) {
            int *r = s->route + (size_t)b * (size_t)A, q, e;
            const float *p = s->prob + (size_t)b * (size_t)E;
            for (q = 0; q < A; q++) {
                int best = -1;
                for (e = 0; e < E; e++) {
                    int taken = 0, t;
                    for (t = 0; t < q; t++) taken |= r[t] == e;
                    if (!taken && (best < 0 || p[e] > p[best])) best = e;
                }
                r[q] = E > 1 ? best : 0;
            }
        }
        /* f_e: share of the routing slots (a constant of the step) */
        for (j = 0; j < E; j++) s->lb_f[j] = 0.0f;
        for (i = 0; i < (size_t)n * (size_t)A; i++) s->lb_f[s->route[i]] += 1.0f / (float)((size_t)n * (size_t)A);
    }
    /* the dead latents of AuxK are chosen with the routing */
    if (with_aux && select) {
        int D = 0;
        for (j = 0; j < F; j++) if (moexc__sae_is_dead(s, j)) s->aux_idx[D++] = j;
        s->n_aux = D;
        s->aux_per_row = MOEXC__MIN(ka, D);
    }
    /* P = M x_c where it is needed: E = 1, one GEMM; else per expert e a GEMM
       over the rows routed to it (gathered), scattered into P's block e; then,
       for AuxK, the dead latents on every row (one GEMM over their rows) */
    if (E == 1) {
        moexc_sgemm(0, 1, n, F, d, 1.0f, s->xc, d, MOEXC__SAE_P(s, off_enc), d, 0.0f, s->P, F);
    } else {
        int e, q;
        for (e = 0; e < E; e++) {
            int cnt = 0, r;
            for (b = 0; b < n; b++)
                for (q = 0; q < A; q++)
                    if (s->route[(size_t)b * A + q] == e) {
                        s->grow[cnt] = b;
                        memcpy(s->xg + (size_t)cnt * d, s->xc + (size_t)b * d, (size_t)d * sizeof(float));
                        cnt++;
                    }
            if (cnt == 0) continue;
            moexc_sgemm(0, 1, cnt, Fe, d, 1.0f, s->xg, d, MOEXC__SAE_P(s, off_enc) + (size_t)e * Fe * d, d, 0.0f, s->pg, Fe);
            for (r = 0; r < cnt; r++)
                memcpy(s->P + (size_t)s->grow[r] * F + (size_t)e * Fe, s->pg + (size_t)r * Fe, (size_t)Fe * sizeof(float));
        }
    }
    if (with_aux && s->n_aux > 0 && E > 1) {
        int D = s->n_aux, q;
        for (q = 0; q < D; q++)
            memcpy(s->xg + (size_t)q * d, MOEXC__SAE_P(s, off_enc) + (size_t)s->aux_idx[q] * d, (size_t)d * sizeof(float));
        moexc_sgemm(0, 1, n, D, d, 1.0f, s->xc, d, s->xg, d, 0.0f, s->pg, D);
        for (b = 0; b < n; b++)
            for (q = 0; q < D; q++) s->P[(size_t)b * F + s->aux_idx[q]] = s->pg[(size_t)b * D + q];
    }
    if (scale_sae) {
        moexc__sae_scale_vectors(s);
        moexc_sgemm(0, 1, n, E, d, 1.0f, s->xc, d, s->amat, d, 0.0f, s->cdot, E);
    }
    /* pre = P + b_enc; Scale: pre = (1 + w_e) P - w_e a_e . x_c + b_enc, at the
       selected experts' latents and the dead ones (each entry once) */
#ifdef _OPENMP
#   pragma omp parallel for schedule(static) if ((double)n * A * Fe >= 262144.0)
#endif
    for (b = 0; b < n; b++) {
        float *pre = s->pre + (size_t)b * (size_t)F;
        const float *P = s->P + (size_t)b * (size_t)F, *cd = s->cdot + (size_t)b * E;
        const int *r = s->route + (size_t)b * (size_t)A;
        int q, t, e;
        for (q = 0; q <= A; q++) {
            int n_lat = q < A ? Fe : (with_aux ? s->n_aux : 0);
            for (t = 0; t < n_lat; t++) {
                int ii = q < A ? r[q] * Fe + t : s->aux_idx[t], sel = 0, u;
                if (q == A) { for (u = 0; u < A; u++) sel |= r[u] == ii / Fe; if (sel) continue; }
                e = ii / Fe;
                pre[ii] = scale_sae ? (1.0f + om[e]) * P[ii] - om[e] * cd[e] + benc[ii] : P[ii] + benc[ii];
            }
        }
    }
    for (b = 0; b < n; b++) {
        const int *r = s->route + (size_t)b * (size_t)A;
        float *g = s->gate + (size_t)b * (size_t)A, tot = 0.0f;
        int q;
        if (E == 1) { g[0] = 1.0f; continue; }
        /* Switch: g = p_e*; Scale: g_e = p_e / sum_selected p (softmax over the selected logits) */
        for (q = 0; q < A; q++) { g[q] = s->prob[(size_t)b * E + r[q]]; tot += g[q]; }
        if (scale_sae) for (q = 0; q < A; q++) g[q] /= tot;
    }
    /* load balancing: L_lb = E sum_e f_e P_e, P_e = mean_b p_be */
    st->lb = 0.0;
    if (E > 1)
        for (j = 0; j < E; j++) {
            double pm = 0.0;
            for (b = 0; b < n; b++) pm += s->prob[(size_t)b * E + j];
            st->lb += (double)E * s->lb_f[j] * pm / n;
        }
    /* TopK over the selected experts' z = g ReLU(pre), then x̂ and e */
#ifdef _OPENMP
#   pragma omp parallel for schedule(static) if ((double)n * F >= 65536.0)
#endif
    for (b = 0; b < n; b++) {
        const float *pre = s->pre + (size_t)b * (size_t)F, *g = s->gate + (size_t)b * (size_t)A;
        const int *r = s->route + (size_t)b * (size_t)A;
        int *kept = s->kept + (size_t)b * (size_t)K, *ksl = s->kslot + (size_t)b * (size_t)K, q, c, t;
        float *kval = s->kval + (size_t)b * (size_t)K, *xh = s->xhat + (size_t)b * (size_t)d;
        if (select) {
            int tid = moexc__xc_thread_id();
            float *v = s->thr_buf + (size_t)tid * s->thr_len, *tmp = v + F;
            unsigned char *keep = s->thr_keep + (size_t)tid * (size_t)F;
            for (q = 0; q < A; q++)
                for (t = 0; t < Fe; t++) {
                    float p = pre[(size_t)r[q] * Fe + t];
                    v[q * Fe + t] = g[q] * (p > 0.0f ? p : 0.0f);
                }
            moexc__select_top(v, (ptrdiff_t)A * Fe, K, keep, tmp);
            for (q = 0, c = 0; q < A * Fe; q++)
                if (keep[q]) { kept[c] = r[q / Fe] * Fe + q % Fe; ksl[c] = q / Fe; c++; }
            s->kcnt[b] = c;
        }
        memcpy(xh, bdec, (size_t)d * sizeof(float));
        for (c = 0; c < s->kcnt[b]; c++) {
            float p = pre[kept[c]];
            kval[c] = g[ksl[c]] * (p > 0.0f ? p : 0.0f);
            if (kval[c] != 0.0f) moexc_axpy(xh, kval[c], dec + (size_t)kept[c] * (size_t)d, (size_t)d);
        }
    }
    for (b = 0; b < n; b++) {
        for (j = 0; j < s->kcnt[b]; j++) active += s->kval[(size_t)b * K + j] > 0.0f;
    }
    for (i = 0; i < nd; i++) {
        float ev = s->xs[i] - s->xhat[i];
        s->e[i] = ev;
        rec += (double)ev * ev;
        s->dxhat[i] = -2.0f * ev / (float)n;                /* d rec / d x̂ */
    }
    st->rec = rec / n;
    st->l0 = active / n;
    st->fve = 1.0 - moexc__xc_centered_ss(s->e, n, d, s->partial) / moexc__xc_centered_ss(s->xs, n, d, s->partial);
    st->aux = 0.0;
    if (!with_aux) return;
    /* AuxK (SPEC §4, as the crosscoder's): the top aux_k pre-activations of
       the dead latents (any sign, the gradient passing straight through the
       ReLU at the negative ones; aux_exact_relu: positive ones only, the
       exact gradient), ê = sum f_aux d_j, f_aux = ReLU(pre),
       L_aux = ||e - ê||^2 / sum_b ||e_b - mean e||^2 with e a constant */
    if (select) memcpy(s->aux_e, s->e, nd * sizeof(float));
    if (s->n_aux == 0) return;
    ka = s->aux_per_row;
#ifdef _OPENMP
#   pragma omp parallel for schedule(static) if ((double)n * s->n_aux >= 65536.0)
#endif
    for (b = 0; b < n; b++) {
        const float *pre = s->pre + (size_t)b * (size_t)F;
        int *lat = s->aux_lat + (size_t)b * (size_t)ka, q, c;
        float *pv = s->aux_pre + (size_t)b * (size_t)ka, *fv = s->aux_val + (size_t)b * (size_t)ka;
        float *eh = s->ehat + (size_t)b * (size_t)d;
        if (select) {
            int tid = moexc__xc_thread_id();
            float *v = s->thr_buf + (size_t)tid * s->thr_len, *tmp = v + F;
            unsigned char *keep = s->thr_keep + (size_t)tid * (size_t)F;
            for (q = 0; q < s->n_aux; q++) v[q] = pre[s->aux_idx[q]];
            if (s->opt.aux_exact_relu) moexc__select_top(v, s->n_aux, ka, keep, tmp);
            else moexc__select_top_any(v, s->n_aux, ka, keep, tmp);
            for (q = 0, c = 0; q < s->n_aux; q++) if (keep[q]) lat[c++] = s->aux_idx[q];
            s->aux_cnt[b] = c;
        }
        memset(eh, 0, (size_t)d * sizeof(float));
        for (c = 0; c < s->aux_cnt[b]; c++) {
            pv[c] = pre[lat[c]];
            fv[c] = pv[c] > 0.0f ? pv[c] : 0.0f;
            if (fv[c] != 0.0f) moexc_axpy(eh, fv[c], dec + (size_t)lat[c] * (size_t)d, (size_t)d);
        }
    }
    den = moexc__xc_centered_ss(s->aux_e, n, d, s->partial);
    for (i = 0; i < nd; i++) { double v = (double)s->aux_e[i] - s->ehat[i]; num += v * v; }
    if (!(den > 0.0)) return;
    *inv_den = 1.0 / den;
    st->aux = num / den;
}

/* d loss / d pre_bi = dp at latent i of row b, into the encoder's gradients:
     dP_bi = (1 + w_e) dp (Scale) or dp;  dM_i += dP_bi x_c_b;  db_enc_i += dp;
     dx_c_b += dP_bi M_i   (row b's own buffer)
     Scale: dw_e += dp (P_bi - a_e . x_c_b),  dc_be -= w_e dp */
static void moexc__sae_pre_backward(moexc_sae *s, int b, int i, float dp)
{
    size_t d = (size_t)s->d;
    float dP = dp;
    if (dp == 0.0f) return;
    if (s->opt.variant == MOEXC_SAE_SCALE) {
        int e = i / s->Fe;
        float w = s->params[s->off_om + (size_t)e];
        dP = (1.0f + w) * dp;
        s->grads[s->off_om + (size_t)e] += dp * (s->P[(size_t)b * (size_t)s->F + (size_t)i] - s->cdot[(size_t)b * s->E + e]);
        s->dc[(size_t)b * s->E + e] -= w * dp;
    }
    moexc_axpy(s->grads + s->off_enc + (size_t)i * d, dP, s->xc + (size_t)b * d, d);
    s->grads[s->off_benc + (size_t)i] += dp;
    moexc_axpy(s->dxc + (size_t)b * d, dP, s->params + s->off_enc + (size_t)i * d, d);
}

MOEXC_DEF moexc_status moexc_sae_loss_grad(moexc_sae *s, const float *x, int n, moexc_sae_step_stats *stats,
                                           moexc_error *err)
{
    moexc_sae_step_stats st;
    double inv_den = 0.0;
    int d = s->d, F = s->F, E = s->E, A = s->act, K = s->opt.k, b, j, q;
    int with_aux = s->opt.aux_k > 0, scale_sae = s->opt.variant == MOEXC_SAE_SCALE;
    const float *dec = MOEXC__SAE_P(s, off_dec);
    float *gdec = MOEXC__SAE_G(s, off_dec), *gbdec = MOEXC__SAE_G(s, off_bdec);
    size_t nd = (size_t)n * (size_t)d, i;
    moexc_status rc;
    (void)F;
    if (!x || n < 1) return moexc__fail(err, MOEXC_ERR_ARG, "sae: need n >= 1 rows (n = %d)", n);
    if (s->frozen && n != s->last_n)
        return moexc__fail(err, MOEXC_ERR_ARG, "sae: frozen selection needs the same batch size (%d, was %d)", n, s->last_n);
    if ((rc = moexc__sae_workspace(s, n, err)) != MOEXC_OK) return rc;
    s->last_n = n;
    memset(&st, 0, sizeof(st));
    moexc__sae_forward(s, x, n, !s->frozen, with_aux, &st, &inv_den);
    st.loss = st.rec + s->opt.aux_alpha * st.aux + (s->opt.lb_alpha > 0.0f ? s->opt.lb_alpha * st.lb : 0.0);
    if (!isfinite(st.loss)) return moexc__fail(err, MOEXC_ERR_NUMERIC, "sae: loss is %g at step %d", st.loss, s->step);

    /* backward */
    memset(s->grads, 0, s->n_params * sizeof(float));
    memset(s->dxc, 0, nd * sizeof(float));
    memset(s->dgate, 0, (size_t)n * (size_t)A * sizeof(float));
    memset(s->dc, 0, (size_t)n * (size_t)E * sizeof(float));
    /* AuxK: dê = -2 alpha (e - ê) / den (into ehat) */
    if (inv_den > 0.0) {
        float c = (float)(-2.0 * s->opt.aux_alpha * inv_den);
        for (i = 0; i < nd; i++) s->ehat[i] = c * (s->aux_e[i] - s->ehat[i]);
    }
    /* per row: at kept latent i of slot q, dz = dx̂_b . d_i,
       d pre = g_q dz where pre > 0, d g_q += ReLU(pre) dz; at AuxK latent j,
       d pre = dê_b . d_j (straight through the ReLU unless aux_exact_relu) */
#ifdef _OPENMP
#   pragma omp parallel for schedule(static) if ((double)n * K * d >= 65536.0)
#endif
    for (b = 0; b < n; b++) {
        const float *pre = s->pre + (size_t)b * (size_t)s->F, *g = s->gate + (size_t)b * (size_t)A;
        const float *dxh = s->dxhat + (size_t)b * (size_t)d;
        float *dg = s->dgate + (size_t)b * (size_t)A;
        int c;
        for (c = 0; c < s->kcnt[b]; c++) {
            size_t id = (size_t)b * (size_t)K + (size_t)c;
            int lat = s->kept[id], sl = s->kslot[id];
            float p = pre[lat], dz = moexc_dot(dxh, dec + (size_t)lat * (size_t)d, (size_t)d);
            s->kdp[id] = p > 0.0f ? g[sl] * dz : 0.0f;
            if (p > 0.0f) dg[sl] += p * dz;
        }
        if (inv_den > 0.0) {
            int ka = s->aux_per_row;
            for (c = 0; c < s->aux_cnt[b]; c++) {
                size_t id = (size_t)b * (size_t)ka + (size_t)c;
                s->aux_dp[id] = s->aux_pre[id] > 0.0f || !s->opt.aux_exact_relu
                              ? moexc_dot(s->ehat + (size_t)b * (size_t)d, dec + (size_t)s->aux_lat[id] * (size_t)d, (size_t)d) : 0.0f;
            }
        }
    }
    /* decoder: dd_i += z dx̂_b (kept), f_aux dê_b (AuxK); db_dec += sum_b dx̂_b;
       encoder from d pre (rows in order, so the sums do not depend on threads) */
    for (b = 0; b < n; b++) {
        const float *dxh = s->dxhat + (size_t)b * (size_t)d;
        int c;
        moexc_axpy(gbdec, 1.0f, dxh, (size_t)d);
        for (c = 0; c < s->kcnt[b]; c++) {
            size_t id = (size_t)b * (size_t)K + (size_t)c;
            if (s->kval[id] != 0.0f) moexc_axpy(gdec + (size_t)s->kept[id] * (size_t)d, s->kval[id], dxh, (size_t)d);
            moexc__sae_pre_backward(s, b, s->kept[id], s->kdp[id]);
        }
        if (inv_den > 0.0) {
            int ka = s->aux_per_row;
            for (c = 0; c < s->aux_cnt[b]; c++) {
                size_t id = (size_t)b * (size_t)ka + (size_t)c;
                if (s->aux_val[id] != 0.0f)
                    moexc_axpy(gdec + (size_t)s->aux_lat[id] * (size_t)d, s->aux_val[id], s->ehat + (size_t)b * (size_t)d, (size_t)d);
                moexc__sae_pre_backward(s, b, s->aux_lat[id], s->aux_dp[id]);
            }
        }
    }
    /* router: d logits from the gates and the load-balancing loss
       (dL_lb / dp_be = lb_alpha E f_e / n), through the softmaxes:
       full softmax dl = p (dp - sum p dp); Scale's renormalised gates
       g = softmax over the selected logits: dl_q += g_q (dg_q - sum g dg) */
    if (E > 1) {
        float lbc = s->opt.lb_alpha > 0.0f ? s->opt.lb_alpha * (float)E / (float)n : 0.0f;
        for (b = 0; b < n; b++) {
            const float *p = s->prob + (size_t)b * E, *g = s->gate + (size_t)b * (size_t)A, *dg = s->dgate + (size_t)b * (size_t)A;
            const int *r = s->route + (size_t)b * (size_t)A;
            float *dl = s->dlog + (size_t)b * E, dp[64], dot = 0.0f;
            for (j = 0; j < E; j++) dp[j] = lbc * s->lb_f[j];
            if (!scale_sae) dp[r[0]] += dg[0];             /* Switch: g = p_e* */
            for (j = 0; j < E; j++) dot += p[j] * dp[j];
            for (j = 0; j < E; j++) dl[j] = p[j] * (dp[j] - dot);
            if (scale_sae) {
                float gdot = 0.0f;
                for (q = 0; q < A; q++) gdot += g[q] * dg[q];
                for (q = 0; q < A; q++) dl[r[q]] += g[q] * (dg[q] - gdot);
            }
        }
        /* logits = x_c W_r^T + b_r */
        moexc_sgemm(1, 0, E, d, n, 1.0f, s->dlog, E, s->xc, d, 1.0f, MOEXC__SAE_G(s, off_wr), d);
        for (b = 0; b < n; b++) moexc_axpy(MOEXC__SAE_G(s, off_br), 1.0f, s->dlog + (size_t)b * E, (size_t)E);
        moexc_sgemm(0, 0, n, d, E, 1.0f, s->dlog, E, MOEXC__SAE_P(s, off_wr), d, 1.0f, s->dxc, d);
    }
    /* Scale: c_be = a_e . x_c_b with a_e = Λ mu_e, mu_e = mean_rows(M_e):
         da_e = sum_b dc_be x_c_b,  dx_c_b += sum_e dc_be a_e,
         dΛ += sum_e da_e mu_e^T,   dmu_e = Λ^T da_e,  dM_i += dmu_e / F_e */
    if (scale_sae) {
        moexc_sgemm(1, 0, E, d, n, 1.0f, s->dc, E, s->xc, d, 0.0f, s->dmat, d);
        moexc_sgemm(0, 0, n, d, E, 1.0f, s->dc, E, s->amat, d, 1.0f, s->dxc, d);
        moexc_sgemm(1, 0, d, d, E, 1.0f, s->dmat, d, s->mu, d, 1.0f, MOEXC__SAE_G(s, off_lam), d);
        moexc_sgemm(0, 0, E, d, d, 1.0f, s->dmat, d, MOEXC__SAE_P(s, off_lam), d, 0.0f, s->amat, d);   /* amat := dmu */
        for (j = 0; j < s->F; j++)
            moexc_axpy(MOEXC__SAE_G(s, off_enc) + (size_t)j * (size_t)d, 1.0f / (float)s->Fe,
                       s->amat + (size_t)(j / s->Fe) * (size_t)d, (size_t)d);
    }
    /* centring: x_c = xs - b_dec, so db_dec -= sum_b dx_c_b */
    for (b = 0; b < n; b++) moexc_axpy(gbdec, -1.0f, s->dxc + (size_t)b * (size_t)d, (size_t)d);
    if (stats) *stats = st;
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_sae_train_step(moexc_sae *s, const float *x, int n, moexc_sae_step_stats *stats,
                                            moexc_error *err)
{
    moexc_sae_step_stats st;
    size_t i;
    int j, c, dead = 0, was_frozen = s->frozen, K = s->opt.k;
    moexc_status rc;
    s->frozen = 0;
    rc = moexc_sae_loss_grad(s, x, n, &st, err);
    s->frozen = was_frozen;
    if (rc != MOEXC_OK) return rc;
    st.lr = moexc__lr_schedule(s->opt.lr, s->step, s->opt.steps, s->opt.warmup_steps, s->opt.decay_frac);
    st.grad_norm = moexc__grad_norm(s->grads, s->n_params, s->partial);
    if (!(st.grad_norm < HUGE_VAL) || !(st.loss < HUGE_VAL))
        return moexc__fail(err, MOEXC_ERR_NUMERIC, "sae: step %d diverged: loss %g, gradient norm %g (lr %g); "
                           "the parameters are those of step %d", s->step + 1, st.loss, st.grad_norm, st.lr, s->step);
    /* a huge step can overflow the parameters themselves: stop before anyone saves them */
    if (moexc__adam_step(s->params, s->grads, s->adam_m, s->adam_v, s->n_params, st.lr, s->step, s->opt.clip,
                         st.grad_norm))
        return moexc__fail(err, MOEXC_ERR_NUMERIC, "sae: step %d diverged: a parameter is not finite after the Adam "
                           "update (loss %g, gradient norm %g, lr %g)", s->step + 1, st.loss, st.grad_norm, st.lr);
    /* dead-latent counters: tokens since each latent last fired */
    memset(s->fired, 0, (size_t)s->F);
    for (j = 0; j < n; j++)
        for (c = 0; c < s->kcnt[j]; c++) {
            i = (size_t)j * (size_t)K + (size_t)c;
            if (s->kval[i] > 0.0f) s->fired[s->kept[i]] = 1;
        }
    for (j = 0; j < s->F; j++) {
        s->since_fired[j] = s->fired[j] ? 0 : s->since_fired[j] + n;
        dead += moexc__sae_is_dead(s, j);
    }
    st.dead_fraction = (double)dead / s->F;
    s->step++;
    if (stats) *stats = st;
    return MOEXC_OK;
}

/* ---- inference and evaluation ------------------------------------------------ */

MOEXC_DEF moexc_status moexc_sae_encode(moexc_sae *s, const float *x, int n, float *z, int *experts, float *xhat,
                                        moexc_error *err)
{
    int done = 0, chunk = MOEXC__MIN(n, 1024), d = s->d, K = s->opt.k, A = s->act;
    moexc_status rc;
    if (!x || n < 1) return moexc__fail(err, MOEXC_ERR_ARG, "sae encode: need n >= 1 rows (n = %d)", n);
    if ((rc = moexc__sae_workspace(s, chunk, err)) != MOEXC_OK) return rc;
    while (done < n) {
        moexc_sae_step_stats st;
        double inv_den;
        int c = MOEXC__MIN(chunk, n - done), b, q;
        memset(&st, 0, sizeof(st));
        moexc__sae_forward(s, x + (size_t)done * (size_t)d, c, 1, 0, &st, &inv_den);
        s->last_n = -1;                          /* a frozen selection is gone */
        for (b = 0; b < c; b++) {
            size_t row = (size_t)(done + b);
            if (z) {
                float *zr = z + row * (size_t)s->F;
                memset(zr, 0, (size_t)s->F * sizeof(float));
                for (q = 0; q < s->kcnt[b]; q++) zr[s->kept[(size_t)b * K + q]] = s->kval[(size_t)b * K + q];
            }
            if (experts) memcpy(experts + row * (size_t)A, s->route + (size_t)b * A, (size_t)A * sizeof(int));
            if (xhat) {
                size_t j;
                for (j = 0; j < (size_t)d; j++) xhat[row * (size_t)d + j] = s->xhat[(size_t)b * (size_t)d + j] / s->scale;
            }
        }
        done += c;
    }
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_sae_evaluate(moexc_sae *s, const float *x, int64_t n, moexc_sae_eval *out,
                                          int64_t *active_counts, moexc_error *err)
{
    moexc_fve_acc fve;
    int64_t done = 0, *counts = NULL, slots[64];
    double active = 0.0, sse = 0.0;
    int d = s->d, K = s->opt.k, chunk = (int)MOEXC__MIN(n, (int64_t)1024), j;
    moexc_status rc;
    memset(out, 0, sizeof(*out));
    memset(&fve, 0, sizeof(fve));
    memset(slots, 0, sizeof(slots));
    if (n < 1 || !x) return moexc__fail(err, MOEXC_ERR_ARG, "sae eval: empty set");
    counts = (int64_t *)moexc__calloc((size_t)s->F, sizeof(int64_t));
    if (!counts) return moexc__fail(err, MOEXC_ERR_NOMEM, "sae eval: out of memory");
    rc = moexc__sae_workspace(s, chunk, err);
    if (rc == MOEXC_OK) rc = moexc_fve_acc_init(&fve, d, err);
    while (rc == MOEXC_OK && done < n) {
        moexc_sae_step_stats st;
        double inv_den;
        int c = (int)MOEXC__MIN((int64_t)chunk, n - done), b, q;
        size_t i;
        memset(&st, 0, sizeof(st));
        moexc__sae_forward(s, x + (size_t)done * (size_t)d, c, 1, 0, &st, &inv_den);
        s->last_n = -1;
        for (b = 0; b < c; b++) {
            for (q = 0; q < s->kcnt[b]; q++)
                if (s->kval[(size_t)b * K + q] > 0.0f) { counts[s->kept[(size_t)b * K + q]]++; active += 1.0; }
            for (q = 0; q < s->act; q++) slots[s->route[(size_t)b * s->act + q]]++;
        }
        for (i = 0; i < (size_t)c * (size_t)d; i++) sse += (double)s->e[i] * s->e[i];
        moexc_fve_acc_add(&fve, s->xs, s->xhat, c);
        done += c;
    }
    if (rc == MOEXC_OK) {
        int dead = 0;
        out->n = n;
        out->fve = moexc_fve_acc_value(&fve);
        out->mse = sse / (double)n;
        out->l0 = active / (double)n;
        for (j = 0; j < s->F; j++) dead += counts[j] == 0;
        out->dead_fraction = (double)dead / s->F;
        for (j = 0; j < s->E; j++) out->expert_share[j] = (double)slots[j] / ((double)n * s->act);
        if (active_counts) memcpy(active_counts, counts, (size_t)s->F * sizeof(int64_t));
    }
    moexc_fve_acc_free(&fve);
    moexc__free(counts);
    return rc;
}

/* ---- redundancy ----------------------------------------------------------------- */

MOEXC_DEF moexc_status moexc_redundancy(const float *rows, int F, int d, float thresh, double *frac, double *mean_max,
                                        float *max_cos, moexc_error *err)
{
    enum { BLK = 256 };
    float *u, *g, *mx;
    int i, j, i0, over = 0;
    double sum = 0.0;
    if (!rows || F < 2 || d < 1) return moexc__fail(err, MOEXC_ERR_ARG, "redundancy: need F >= 2 rows of d >= 1 (F %d, d %d)", F, d);
    u = moexc__alloc_floats((size_t)F * (size_t)d);
    g = moexc__alloc_floats((size_t)BLK * (size_t)F);
    mx = moexc__alloc_floats((size_t)F);
    if (!u || !g || !mx) {
        moexc__free_aligned(u); moexc__free_aligned(g); moexc__free_aligned(mx);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "redundancy: no memory for %d x %d", F, d);
    }
    /* u_i = d_i / ||d_i|| (a zero row stays zero: cosine 0 with every row) */
    for (i = 0; i < F; i++) {
        const float *r = rows + (size_t)i * (size_t)d;
        double nn = sqrt((double)moexc_dot(r, r, (size_t)d));
        for (j = 0; j < d; j++) u[(size_t)i * d + j] = nn > 0.0 ? (float)(r[j] / nn) : 0.0f;
    }
    /* max_{j != i} u_i . u_j, a block of rows at a time: G = U_blk U^T */
    for (i0 = 0; i0 < F; i0 += BLK) {
        int nb = MOEXC__MIN(BLK, F - i0);
        moexc_sgemm(0, 1, nb, F, d, 1.0f, u + (size_t)i0 * d, d, u, d, 0.0f, g, F);
        for (i = 0; i < nb; i++) {
            const float *gr = g + (size_t)i * F;
            float m = -FLT_MAX;
            for (j = 0; j < F; j++) if (j != i0 + i && gr[j] > m) m = gr[j];
            mx[i0 + i] = m;
        }
    }
    for (i = 0; i < F; i++) { sum += mx[i]; over += mx[i] > thresh; }
    if (frac) *frac = (double)over / F;
    if (mean_max) *mean_max = sum / F;
    if (max_cos) memcpy(max_cos, mx, (size_t)F * sizeof(float));
    moexc__free_aligned(u); moexc__free_aligned(g); moexc__free_aligned(mx);
    return MOEXC_OK;
}

/* ---- spliced loss ----------------------------------------------------------------- */

MOEXC_DEF moexc_status moexc_sae_splice(moexc_sae *sae, moexc_model *model, const moexc_tokens *data, int layer,
                                        moexc_site site, int seq_len, int max_seqs, float eval_fraction, int keep_first,
                                        struct moexc_splice_acc *acc, int slot, moexc_error *err)
{
    enum { B = 8 };
    size_t *starts = NULL, n_win = 0, w;
    int T = seq_len, d = sae->d, t0 = keep_first ? 0 : 1, pass, b, t, run, V;
    uint16_t *in = NULL, *tg = NULL;
    uint8_t *dom = NULL;
    float *x = NULL, *full = NULL, *xh = NULL, *nll = NULL, *mean_f = NULL;
    double *mean_d = NULL;
    int64_t n_mean = 0;
    moexc_status st;
    if (!sae || !model || !data || !acc || slot < 0 || slot > 1)
        return moexc__fail(err, MOEXC_ERR_ARG, "sae splice: NULL argument or slot %d not 0 or 1", slot);
    if (moexc_model_get_config(model)->d_model != d)
        return moexc__fail(err, MOEXC_ERR_ARG, "sae splice: model width %d, SAE width %d", moexc_model_get_config(model)->d_model, d);
    if (T < 2 || T > moexc_model_get_config(model)->context)
        return moexc__fail(err, MOEXC_ERR_ARG, "sae splice: seq_len %d not in [2, context %d]", T, moexc_model_get_config(model)->context);
    V = moexc_model_get_config(model)->vocab_size;
    if ((st = moexc__heldout_windows(data, T, eval_fraction > 0.0f ? eval_fraction : 0.05f, max_seqs > 0 ? max_seqs : 64,
                                     "sae splice", &starts, &n_win, err)) != MOEXC_OK) return st;
    in = (uint16_t *)moexc__calloc((size_t)B * T, sizeof(uint16_t));
    tg = (uint16_t *)moexc__calloc((size_t)B * T, sizeof(uint16_t));
    dom = (uint8_t *)moexc__calloc((size_t)B * T, 1);
    x = moexc__alloc_floats((size_t)B * T * d); full = moexc__alloc_floats((size_t)B * T * d);
    xh = moexc__alloc_floats((size_t)B * T * d); nll = moexc__alloc_floats((size_t)B * T);
    mean_f = moexc__alloc_floats((size_t)d);
    mean_d = (double *)moexc__calloc((size_t)d, sizeof(double));
    if (!in || !tg || !dom || !x || !full || !xh || !nll || !mean_f || !mean_d) {
        st = moexc__fail(err, MOEXC_ERR_NOMEM, "sae splice: out of memory");
        goto done;
    }
    /* pass 0: the site's mean over the same positions; pass 1: the runs */
    for (pass = 0; pass < 2 && st == MOEXC_OK; pass++) {
        for (w = 0; w < n_win && st == MOEXC_OK; ) {
            int nb = (int)MOEXC__MIN((size_t)B, n_win - w), nt = nb * T, i;
            for (b = 0; b < nb; b++, w++)
                for (t = 0; t < T; t++) {
                    size_t p = starts[w] + (size_t)t;
                    in[b * T + t] = data->tokens[p];
                    tg[b * T + t] = data->tokens[p + 1];
                    dom[b * T + t] = data->domains[p + 1];         /* the predicted token's domain */
                }
            if (pass == 0) {
                if ((st = moexc_model_capture(model, in, nb, T, layer, site, x, err)) != MOEXC_OK) break;
                for (b = 0; b < nb; b++)
                    for (t = t0; t < T; t++)
                        for (i = 0; i < d; i++) mean_d[i] += x[((size_t)b * T + t) * d + i];
                n_mean += (int64_t)nb * (T - t0);
                continue;
            }
            if ((st = moexc_model_forward(model, in, tg, nb, T, NULL, err)) != MOEXC_OK) break;
            memcpy(x, moexc_model_site_output(model, layer, site), (size_t)nt * d * sizeof(float));
            moexc_token_nll(moexc_model_logits(model), tg, nt, V, nll);
            for (b = 0; b < nb; b++) for (t = 0; t < t0; t++) nll[b * T + t] = NAN;
            moexc_splice_acc_add(acc, slot, MOEXC_SPLICE_CLEAN, nll, dom, nt);
            if ((st = moexc_sae_encode(sae, x, nt, NULL, NULL, xh, err)) != MOEXC_OK) break;
            for (run = MOEXC_SPLICE_XC; run < MOEXC_SPLICE_COUNT && st == MOEXC_OK; run++) {
                memcpy(full, x, (size_t)nt * d * sizeof(float));
                for (b = 0; b < nb; b++)
                    for (t = t0; t < T; t++) {
                        float *dst = full + ((size_t)b * T + t) * d;
                        if (run == MOEXC_SPLICE_XC) memcpy(dst, xh + ((size_t)b * T + t) * d, (size_t)d * sizeof(float));
                        else if (run == MOEXC_SPLICE_ZERO) memset(dst, 0, (size_t)d * sizeof(float));
                        else memcpy(dst, mean_f, (size_t)d * sizeof(float));
                    }
                if ((st = moexc_model_forward_replace(model, in, tg, nb, T, layer, site, full, NULL, err)) != MOEXC_OK) break;
                moexc_token_nll(moexc_model_logits(model), tg, nt, V, nll);
                for (b = 0; b < nb; b++) for (t = 0; t < t0; t++) nll[b * T + t] = NAN;
                moexc_splice_acc_add(acc, slot, run, nll, dom, nt);
            }
        }
        if (pass == 0) for (t = 0; t < d; t++) mean_f[t] = n_mean > 0 ? (float)(mean_d[t] / (double)n_mean) : 0.0f;
    }
done:
    moexc__free(starts); moexc__free(in); moexc__free(tg); moexc__free(dom);
    moexc__free_aligned(x); moexc__free_aligned(full); moexc__free_aligned(xh); moexc__free_aligned(nll);
    moexc__free_aligned(mean_f); moexc__free(mean_d);
    return st;
}

/* ---- checkpoints ------------------------------------------------------------------ */

static moexc_status moexc__sae_save(const moexc_sae *s, const char *path, int training, moexc_error *err)
{
    moexc_st_entry t[12];
    unsigned char is_i64[12] = { 0 };
    moexc_st_kv kv[32];
    moexc__xc_meta meta[32];
    const moexc_sae_options *o = &s->opt;
    size_t F = (size_t)s->F, d = (size_t)s->d, E = (size_t)s->E, j;
    float *enc = NULL, *dec = NULL, *bdec = NULL, *wr = NULL;
    float fs = training ? 1.0f : s->scale;
    int nt = 0, nm = 0, i;
    moexc_status st;
    enc = moexc__alloc_floats(F * d); dec = moexc__alloc_floats(F * d); bdec = moexc__alloc_floats(d);
    wr = moexc__alloc_floats(E * d + 1);
    if (!enc || !dec || !bdec || !wr) { st = moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory", path); goto done; }
    /* folding: W_enc s, W_dec / s, b_dec / s, W_r s (Λ, w, b_enc, b_r unchanged) */
    for (j = 0; j < F * d; j++) { enc[j] = s->params[s->off_enc + j] * fs; dec[j] = s->params[s->off_dec + j] / fs; }
    for (j = 0; j < d; j++) bdec[j] = s->params[s->off_bdec + j] / fs;
    if (E > 1) for (j = 0; j < E * d; j++) wr[j] = s->params[s->off_wr + j] * fs;
#define MOEXC__SAE_T(nm_, ptr, nd, s0, s1) do { t[nt].name = nm_; t[nt].data = ptr; t[nt].ndim = nd; \
        t[nt].shape[0] = (int64_t)(s0); t[nt].shape[1] = (int64_t)(s1); nt++; } while (0)
    MOEXC__SAE_T("encoder.weight", enc, 2, F, d);
    MOEXC__SAE_T("encoder.bias", s->params + s->off_benc, 1, F, 0);
    MOEXC__SAE_T("decoder.weight", dec, 2, F, d);
    MOEXC__SAE_T("decoder.bias", bdec, 1, d, 0);
    if (E > 1) {
        MOEXC__SAE_T("router.weight", wr, 2, E, d);
        MOEXC__SAE_T("router.bias", s->params + s->off_br, 1, E, 0);
    }
    if (o->variant == MOEXC_SAE_SCALE) {
        MOEXC__SAE_T("scale.lambda", s->params + s->off_lam, 2, d, d);
        MOEXC__SAE_T("scale.omega", s->params + s->off_om, 1, E, 0);
    }
    if (training) {
        MOEXC__SAE_T("train.adam_m", s->adam_m, 1, s->n_params, 0);
        MOEXC__SAE_T("train.adam_v", s->adam_v, 1, s->n_params, 0);
        /* the dead-latent counters are token counts: I64, exact (as the
           crosscoder's; float32 would round them past 2^24 tokens) */
        is_i64[nt] = 1;
        MOEXC__SAE_T("train.since_fired", (const float *)(const void *)s->since_fired, 1, F, 0);
    }
#undef MOEXC__SAE_T
#define MOEXC__SAE_META(k, ...) do { snprintf(meta[nm].key, sizeof(meta[nm].key), "%s", k); \
        snprintf(meta[nm].value, sizeof(meta[nm].value), __VA_ARGS__); nm++; } while (0)
    MOEXC__SAE_META("format", "moexc-sae");
    MOEXC__SAE_META("version", "1");
    MOEXC__SAE_META("variant", "%s", moexc_sae_variant_name(o->variant));
    MOEXC__SAE_META("n_latents", "%d", s->F);
    MOEXC__SAE_META("k", "%d", o->k);
    MOEXC__SAE_META("n_experts", "%d", s->E);
    MOEXC__SAE_META("active_experts", "%d", s->act);
    MOEXC__SAE_META("d", "%d", s->d);
    MOEXC__SAE_META("scale", "%.9g", s->scale);
    MOEXC__SAE_META("folded", "%d", !training);
    MOEXC__SAE_META("lb_alpha", "%.9g", o->lb_alpha);
    MOEXC__SAE_META("aux_k", "%d", o->aux_k);
    MOEXC__SAE_META("aux_alpha", "%.9g", o->aux_alpha);
    MOEXC__SAE_META("aux_exact_relu", "%d", o->aux_exact_relu);
    MOEXC__SAE_META("dead_tokens", "%lld", (long long)o->dead_tokens);
    MOEXC__SAE_META("steps", "%d", o->steps);
    MOEXC__SAE_META("batch", "%d", o->batch);
    MOEXC__SAE_META("lr", "%.9g", o->lr);
    MOEXC__SAE_META("warmup_steps", "%d", o->warmup_steps);
    MOEXC__SAE_META("decay_frac", "%.9g", o->decay_frac);
    MOEXC__SAE_META("clip", "%.9g", o->clip);
    MOEXC__SAE_META("init_norm", "%.9g", o->init_norm);
    MOEXC__SAE_META("seed", "%llu", (unsigned long long)o->seed);
    MOEXC__SAE_META("step", "%d", s->step);
#undef MOEXC__SAE_META
    for (i = 0; i < nm; i++) { kv[i].key = meta[i].key; kv[i].value = meta[i].value; }
    st = moexc__st_save_typed(path, t, is_i64, nt, kv, nm, err);
done:
    moexc__free_aligned(enc); moexc__free_aligned(dec); moexc__free_aligned(bdec);
    moexc__free_aligned(wr);
    return st;
}

MOEXC_DEF moexc_status moexc_sae_save(const moexc_sae *s, const char *path, moexc_error *err)
{
    return moexc__sae_save(s, path, 0, err);
}

MOEXC_DEF moexc_status moexc_sae_save_training(const moexc_sae *s, const char *path, moexc_error *err)
{
    return moexc__sae_save(s, path, 1, err);
}

/* The tensor of the flat parameter index j (for messages). */
static const char *moexc__sae_param_name(const moexc_sae *s, size_t j)
{
    if (j < s->off_benc) return "encoder.weight";
    if (j < s->off_dec) return "encoder.bias";
    if (j < s->off_bdec) return "decoder.weight";
    if (j < s->off_wr) return "decoder.bias";
    if (j < s->off_br) return "router.weight";
    if (j < s->off_lam) return "router.bias";
    if (j < s->off_om) return "scale.lambda";
    return "scale.omega";
}

MOEXC_DEF moexc_status moexc_sae_load(moexc_sae **out, const char *path, moexc_error *err)
{
    moexc_st_file *f = NULL;
    moexc_sae_options o;
    moexc_sae *s = NULL;
    moexc_status st;
    double v, sc = 1, need;
    int64_t iv, d_i = 0, folded = 1, step = 0;
    const char *str;
    int64_t shape[8];
    size_t F, d, E, j;
    int vi, nd;
    *out = NULL;
    if ((st = moexc_st_open(&f, path, err)) != MOEXC_OK) return st;
    memset(&o, 0, sizeof(o));
    str = moexc_st_meta(f, "format");
    if (!str || strcmp(str, "moexc-sae") != 0) {
        st = moexc__fail(err, str ? MOEXC_ERR_FORMAT : MOEXC_ERR_MISSING, "%s: metadata 'format' is %s, expected \"moexc-sae\"",
                         path, str ? str : "missing");
        goto fail;
    }
    str = moexc_st_meta(f, "version");
    if (!str || strcmp(str, "1") != 0) { st = moexc__fail(err, MOEXC_ERR_VERSION, "%s: SAE version %s, expected 1", path, str ? str : "missing"); goto fail; }
    str = moexc_st_meta(f, "variant");
    for (vi = 0; vi < 3; vi++) if (str && strcmp(str, moexc_sae_variant_name(vi)) == 0) break;
    if (vi == 3) {
        st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: metadata 'variant' is %s, expected topk, switch or scale", path, str ? str : "missing");
        goto fail;
    }
    o.variant = vi;
#define MOEXC__SAE_GET(key, lo, hi, dst) do { st = moexc__st_meta_number(f, path, key, lo, hi, &v, err); \
        if (st != MOEXC_OK) goto fail; \
        dst; } while (0)
    /* integers are read exactly (decimal digits, range-checked before any
       cast), with the crosscoder loader's readers */
#define MOEXC__SAE_INT(key, lo, hi, dst) do { st = moexc__st_meta_i64(f, path, key, lo, hi, &iv, err); \
        if (st != MOEXC_OK) goto fail; \
        dst; } while (0)
    MOEXC__SAE_INT("n_latents", 1, 1 << 28, o.n_latents = (int)iv);
    MOEXC__SAE_INT("k", 1, o.n_latents, o.k = (int)iv);
    MOEXC__SAE_INT("n_experts", 1, 64, o.n_experts = (int)iv);
    MOEXC__SAE_INT("active_experts", 1, 64, o.active_experts = (int)iv);
    MOEXC__SAE_INT("d", 1, 1 << 20, d_i = iv);
    MOEXC__SAE_GET("scale", 1e-30, 1e30, sc = v);
    MOEXC__SAE_INT("folded", 0, 1, folded = iv);
    MOEXC__SAE_GET("lb_alpha", -1e30, 1e30, o.lb_alpha = (float)v);
    MOEXC__SAE_INT("aux_k", -1000000000, 1000000000, o.aux_k = (int)iv);
    MOEXC__SAE_GET("aux_alpha", -1e30, 1e30, o.aux_alpha = (float)v);
    MOEXC__SAE_INT("aux_exact_relu", 0, 1, o.aux_exact_relu = (int)iv);
    MOEXC__SAE_INT("dead_tokens", 1, INT64_C(1000000000000000000), o.dead_tokens = iv);
    MOEXC__SAE_INT("steps", 1, INT_MAX, o.steps = (int)iv);
    MOEXC__SAE_INT("batch", 1, INT_MAX, o.batch = (int)iv);
    MOEXC__SAE_GET("lr", 1e-30, 1e30, o.lr = (float)v);
    MOEXC__SAE_INT("warmup_steps", -INT_MAX, INT_MAX, o.warmup_steps = (int)iv);
    MOEXC__SAE_GET("decay_frac", 0, 1, o.decay_frac = (float)v);
    MOEXC__SAE_GET("clip", -1e30, 1e30, o.clip = (float)v);
    MOEXC__SAE_GET("init_norm", 1e-30, 1e30, o.init_norm = (float)v);
    /* one below INT_MAX: a resumed training step adds one */
    MOEXC__SAE_INT("step", 0, INT_MAX - 1, step = iv);
#undef MOEXC__SAE_GET
#undef MOEXC__SAE_INT
    if ((st = moexc__st_meta_u64(f, path, "seed", &o.seed, err)) != MOEXC_OK) goto fail;
    /* the weights (2 F d floats of encoder and decoder, plus Λ's d^2 in a
       Scale SAE) must roughly fit the file before the SAE is allocated, as
       in moexc_xc_load: at most twice its data section plus 64 MiB, so a
       header naming huge sizes costs little memory, while a file one tensor
       off gets the message naming that tensor below */
    need = 4.0 * (2.0 * (double)o.n_latents * (double)d_i + (o.variant == MOEXC_SAE_SCALE ? (double)d_i * (double)d_i : 0.0));
    if (need > 2.0 * (double)(f->size - f->data_start) + 67108864.0) {
        st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: n_latents %d, d %lld (%s) need %.0f bytes of weights, "
                         "the file's data section holds %lu", path, o.n_latents, (long long)d_i,
                         moexc_sae_variant_name(o.variant), need, (unsigned long)(f->size - f->data_start));
        goto fail;
    }
    if ((st = moexc_sae_create(&s, (int)d_i, &o, err)) != MOEXC_OK) {   /* the options are the file's: name it */
        if (err) {
            char msg[sizeof(err->message)];
            memcpy(msg, err->message, sizeof(msg));
            moexc__fail(err, st, "%s: %s", path, msg);
        }
        goto fail;
    }
    s->scale = (float)sc;
    s->step = (int)step;
    F = (size_t)s->F; d = (size_t)s->d; E = (size_t)s->E;
#define MOEXC__SAE_READ(name, off, ndim, s0, s1) do { shape[0] = (int64_t)(s0); shape[1] = (int64_t)(s1); \
        if ((st = moexc_st_read_f32(f, name, s->params + (off), ndim, shape, err)) != MOEXC_OK) goto fail; } while (0)
    MOEXC__SAE_READ("encoder.weight", s->off_enc, 2, F, d);
    MOEXC__SAE_READ("encoder.bias", s->off_benc, 1, F, 0);
    MOEXC__SAE_READ("decoder.weight", s->off_dec, 2, F, d);
    MOEXC__SAE_READ("decoder.bias", s->off_bdec, 1, d, 0);
    if (E > 1) {
        MOEXC__SAE_READ("router.weight", s->off_wr, 2, E, d);
        MOEXC__SAE_READ("router.bias", s->off_br, 1, E, 0);
    }
    if (o.variant == MOEXC_SAE_SCALE) {
        MOEXC__SAE_READ("scale.lambda", s->off_lam, 2, d, d);
        MOEXC__SAE_READ("scale.omega", s->off_om, 1, E, 0);
    }
#undef MOEXC__SAE_READ
    /* finite as stored (the message names the tensor and the file's value),
       and again after unfolding (a large value times s may overflow) */
    for (j = 0; j < s->n_params; j++)
        if (!isfinite(s->params[j])) {
            st = moexc__fail(err, MOEXC_ERR_NUMERIC, "%s: parameter %lu of the SAE (%s) is %g, not finite", path,
                             (unsigned long)j, moexc__sae_param_name(s, j), (double)s->params[j]);
            goto fail;
        }
    /* unfold: W_enc / s, W_dec s, b_dec s, W_r / s */
    if (folded) {
        for (j = 0; j < F * d; j++) { s->params[s->off_enc + j] /= s->scale; s->params[s->off_dec + j] *= s->scale; }
        for (j = 0; j < d; j++) s->params[s->off_bdec + j] *= s->scale;
        if (E > 1) for (j = 0; j < E * d; j++) s->params[s->off_wr + j] /= s->scale;
        for (j = 0; j < s->n_params; j++)
            if (!isfinite(s->params[j])) {
                st = moexc__fail(err, MOEXC_ERR_NUMERIC, "%s: parameter %lu of the SAE (%s) overflows when the scale %g "
                                 "is unfolded", path, (unsigned long)j, moexc__sae_param_name(s, j), sc);
                goto fail;
            }
    }
    if (moexc_st_shape(f, "train.adam_m", &nd, shape, NULL) == MOEXC_OK) {
        shape[0] = (int64_t)s->n_params;
        if ((st = moexc_st_read_f32(f, "train.adam_m", s->adam_m, 1, shape, err)) != MOEXC_OK) goto fail;
        if ((st = moexc_st_read_f32(f, "train.adam_v", s->adam_v, 1, shape, err)) != MOEXC_OK) goto fail;
        /* Adam's moments: finite, the second one >= 0 (its square root divides the step) */
        for (j = 0; j < s->n_params; j++)
            if (!isfinite(s->adam_m[j]) || !isfinite(s->adam_v[j]) || s->adam_v[j] < 0.0f) {
                st = moexc__fail(err, MOEXC_ERR_NUMERIC, "%s: train.adam_%c[%lu] = %g is not %s", path,
                                 isfinite(s->adam_m[j]) ? 'v' : 'm', (unsigned long)j,
                                 (double)(isfinite(s->adam_m[j]) ? s->adam_v[j] : s->adam_m[j]),
                                 isfinite(s->adam_m[j]) ? "finite and >= 0" : "finite");
                goto fail;
            }
        /* the dead-latent counters: exact I64 token counts, >= 0 */
        shape[0] = (int64_t)F;
        if ((st = moexc__st_read_i64(f, "train.since_fired", s->since_fired, 1, shape, err)) != MOEXC_OK) goto fail;
        for (j = 0; j < F; j++)
            if (s->since_fired[j] < 0) {
                st = moexc__fail(err, MOEXC_ERR_FORMAT, "%s: train.since_fired[%lu] = %lld is negative",
                                 path, (unsigned long)j, (long long)s->since_fired[j]);
                goto fail;
            }
    }
    moexc_st_close(f);
    *out = s;
    return MOEXC_OK;
fail:
    moexc_st_close(f);
    moexc_sae_free(s);
    return st;
}
/* ======================================================================== */
/* >>analysis (implementation)                                               */
/* ======================================================================== */

MOEXC_DEF const char *moexc_latent_class_name(int cls)
{
    switch (cls) {
    case MOEXC_CLASS_MOE_ONLY:   return "moe-only";
    case MOEXC_CLASS_SHARED:     return "shared";
    case MOEXC_CLASS_DENSE_ONLY: return "dense-only";
    case MOEXC_CLASS_DESIGNATED: return "designated";
    case MOEXC_CLASS_DEAD:       return "dead";
    default:                     return "unknown";
    }
}

MOEXC_DEF uint32_t moexc_latent_class_color(int cls)
{
    switch (cls) {
    case MOEXC_CLASS_MOE_ONLY:   return 0xD55E00u;   /* vermillion     */
    case MOEXC_CLASS_SHARED:     return 0x009E73u;   /* bluish green   */
    case MOEXC_CLASS_DENSE_ONLY: return 0x0072B2u;   /* blue           */
    case MOEXC_CLASS_DESIGNATED: return 0xCC79A7u;   /* reddish purple */
    default:                     return 0x999999u;   /* grey           */
    }
}

/* Dot product accumulated in double: analysis statistics are not hot paths,
   and exact sums keep hand-checkable cases (and band edges) exact. */
static double moexc__dot_f64(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    size_t i;
    for (i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

static int moexc__cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of the non-NaN values of v (n of them), sorting v in place. */
static double moexc__median_inplace(double *v, size_t n)
{
    size_t m = 0, i;
    for (i = 0; i < n; i++) if (v[i] == v[i]) v[m++] = v[i];
    if (m == 0) return NAN;
    qsort(v, m, sizeof(double), moexc__cmp_double);
    return (m & 1) ? v[m / 2] : 0.5 * (v[m / 2 - 1] + v[m / 2]);
}

MOEXC_DEF double moexc_median(const float *x, size_t n, moexc_error *err)
{
    double *v = (double *)moexc__calloc(n, sizeof(double)), med;
    size_t i;
    if (!v) { moexc__fail(err, MOEXC_ERR_NOMEM, "median: %lu values", (unsigned long)n); return NAN; }
    for (i = 0; i < n; i++) v[i] = x[i];
    med = moexc__median_inplace(v, n);
    moexc__free(v);
    return med;
}

/* mean, median and fraction negative of the non-NaN x[i] with cls[i] == c
   (cls NULL: all), using scratch (n doubles). */
static void moexc__stats_where(const float *x, const uint8_t *cls, int c, size_t n, double *scratch,
                               double *mean, double *median, double *frac_negative)
{
    size_t i, m = 0, neg = 0;
    double sum = 0.0;
    for (i = 0; i < n; i++) {
        if (cls && cls[i] != c) continue;
        if (x[i] != x[i]) continue;
        scratch[m++] = x[i];
        sum += x[i];
        neg += x[i] < 0.0f;
    }
    if (m == 0) { *mean = *median = NAN; if (frac_negative) *frac_negative = NAN; return; }
    *mean = sum / (double)m;
    if (frac_negative) *frac_negative = (double)neg / (double)m;
    *median = moexc__median_inplace(scratch, m);
}

MOEXC_DEF void moexc_latent_analysis_free(moexc_latent_analysis *a)
{
    if (!a) return;
    moexc__free(a->norm_a); moexc__free(a->norm_b); moexc__free(a->r);
    moexc__free(a->cosine); moexc__free(a->density); moexc__free(a->cls);
    moexc__free(a->random_cosine);
    memset(a, 0, sizeof(*a));
}

MOEXC_DEF moexc_status moexc_analyze_latents(moexc_latent_analysis *out,
                                             const float *dec_a, int d_a,
                                             const float *dec_b, int d_b,
                                             int n_latents, int n_shared,
                                             const int64_t *active_counts, int64_t n_tokens,
                                             const moexc_analysis_options *opt, moexc_error *err)
{
    moexc_analysis_options o;
    moexc_latent_analysis a;
    size_t F = (size_t)(n_latents > 0 ? n_latents : 0), i;
    int *live = NULL, n_live = 0, c, same_width = d_a == d_b;
    double *scratch = NULL;
    moexc_rng rng;

    memset(out, 0, sizeof(*out));
    if (!dec_a || !dec_b || n_latents <= 0 || d_a <= 0 || d_b <= 0)
        return moexc__fail(err, MOEXC_ERR_ARG, "analyze_latents: need decoders and F, d_A, d_B > 0 (got F=%d d_A=%d d_B=%d)",
                           n_latents, d_a, d_b);
    if (n_shared < 0 || n_shared > n_latents)
        return moexc__fail(err, MOEXC_ERR_ARG, "analyze_latents: n_shared=%d outside [0, F=%d]", n_shared, n_latents);
    if (active_counts && n_tokens <= 0)
        return moexc__fail(err, MOEXC_ERR_ARG, "analyze_latents: n_tokens=%lld with activation counts",
                           (long long)n_tokens);
    memset(&o, 0, sizeof(o));
    if (opt) o = *opt;
    if (o.moe_max == 0.0) o.moe_max = o.strict ? 0.1 : 0.3;
    if (o.dense_min == 0.0) o.dense_min = o.strict ? 0.9 : 0.7;
    if (!(o.moe_max >= 0.0 && o.moe_max <= o.dense_min && o.dense_min <= 1.0))
        return moexc__fail(err, MOEXC_ERR_ARG, "analyze_latents: bands moe_max=%g dense_min=%g must satisfy 0 <= moe_max <= dense_min <= 1",
                           o.moe_max, o.dense_min);
    if (o.n_random_pairs <= 0) o.n_random_pairs = 10000;

    memset(&a, 0, sizeof(a));
    a.n_latents = n_latents; a.n_shared = n_shared; a.d_a = d_a; a.d_b = d_b;
    a.moe_max = o.moe_max; a.dense_min = o.dense_min;
    a.n_tokens = active_counts ? n_tokens : 0;
    a.norm_a = (float *)moexc__calloc(F, sizeof(float));
    a.norm_b = (float *)moexc__calloc(F, sizeof(float));
    a.r = (float *)moexc__calloc(F, sizeof(float));
    a.cosine = (float *)moexc__calloc(F, sizeof(float));
    a.density = (float *)moexc__calloc(F, sizeof(float));
    a.cls = (uint8_t *)moexc__calloc(F, 1);
    live = (int *)moexc__calloc(F, sizeof(int));
    scratch = (double *)moexc__calloc(F > (size_t)o.n_random_pairs ? F : (size_t)o.n_random_pairs, sizeof(double));
    if (!a.norm_a || !a.norm_b || !a.r || !a.cosine || !a.density || !a.cls || !live || !scratch) {
        moexc_latent_analysis_free(&a); moexc__free(live); moexc__free(scratch);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "analyze_latents: F=%d", n_latents);
    }

    for (i = 0; i < F; i++) {
        const float *da = dec_a + i * (size_t)d_a, *db = dec_b + i * (size_t)d_b;
        double na = sqrt(moexc__dot_f64(da, da, (size_t)d_a));
        double nb = sqrt(moexc__dot_f64(db, db, (size_t)d_b));
        double r = (na + nb > 0.0) ? nb / (na + nb) : NAN;
        int dead = (active_counts && active_counts[i] == 0) || na + nb == 0.0;
        a.norm_a[i] = (float)na;
        a.norm_b[i] = (float)nb;
        a.r[i] = (float)r;
        /* cos_i = d_i^A . d_i^B / (||d_i^A|| ||d_i^B||) */
        a.cosine[i] = (same_width && na > 0.0 && nb > 0.0)
                          ? (float)(moexc__dot_f64(da, db, (size_t)d_a) / (na * nb)) : NAN;
        a.density[i] = active_counts ? (float)((double)active_counts[i] / (double)n_tokens) : NAN;
        /* Classify in double so the band edges 0.3 / 0.7 are exact: shared is closed. */
        if (dead)                         c = MOEXC_CLASS_DEAD;
        else if ((int)i < n_shared)       c = MOEXC_CLASS_DESIGNATED;
        else if (r < o.moe_max)           c = MOEXC_CLASS_MOE_ONLY;
        else if (r > o.dense_min)         c = MOEXC_CLASS_DENSE_ONLY;
        else                              c = MOEXC_CLASS_SHARED;
        a.cls[i] = (uint8_t)c;
        if (!dead && na > 0.0 && nb > 0.0) live[n_live++] = (int)i;
    }

    for (c = 0; c < MOEXC_CLASS_COUNT; c++) {
        moexc_class_summary *s = &a.classes[c];
        double dummy;
        for (i = 0; i < F; i++) s->count += a.cls[i] == c;
        moexc__stats_where(a.r, a.cls, c, F, scratch, &s->r_mean, &dummy, NULL);
        moexc__stats_where(a.density, a.cls, c, F, scratch, &s->density_mean, &s->density_median, NULL);
        moexc__stats_where(a.cosine, a.cls, c, F, scratch, &s->cos_mean, &s->cos_median, &s->cos_frac_negative);
    }
    a.classes[MOEXC_CLASS_MOE_ONLY].r_lo = 0.0;
    a.classes[MOEXC_CLASS_MOE_ONLY].r_hi = o.moe_max;
    a.classes[MOEXC_CLASS_MOE_ONLY].hi_open = 1;
    a.classes[MOEXC_CLASS_SHARED].r_lo = o.moe_max;
    a.classes[MOEXC_CLASS_SHARED].r_hi = o.dense_min;
    a.classes[MOEXC_CLASS_DENSE_ONLY].r_lo = o.dense_min;
    a.classes[MOEXC_CLASS_DENSE_ONLY].r_hi = 1.0;
    a.classes[MOEXC_CLASS_DENSE_ONLY].lo_open = 1;
    a.classes[MOEXC_CLASS_DESIGNATED].r_lo = a.classes[MOEXC_CLASS_DESIGNATED].r_hi = 0.5;
    a.classes[MOEXC_CLASS_DEAD].r_lo = a.classes[MOEXC_CLASS_DEAD].r_hi = NAN;

    /* Random-pair baseline: cos(d_i^A, d_j^B) for live latents i != j. */
    a.random_cos_mean = a.random_cos_median = a.random_cos_frac_negative = NAN;
    if (same_width && n_live >= 2) {
        int k;
        a.random_cosine = (float *)moexc__calloc((size_t)o.n_random_pairs, sizeof(float));
        if (!a.random_cosine) {
            moexc_latent_analysis_free(&a); moexc__free(live); moexc__free(scratch);
            return moexc__fail(err, MOEXC_ERR_NOMEM, "analyze_latents: %d random pairs", o.n_random_pairs);
        }
        a.n_random_pairs = o.n_random_pairs;
        moexc_rng_seed(&rng, o.seed);
        for (k = 0; k < o.n_random_pairs; k++) {
            int p = live[moexc_rng_below(&rng, (uint32_t)n_live)];
            int q = live[moexc_rng_below(&rng, (uint32_t)(n_live - 1))];
            if (q == p) q = live[n_live - 1];   /* uniform over the other n_live - 1 */
            a.random_cosine[k] = (float)(moexc__dot_f64(dec_a + (size_t)p * d_a, dec_b + (size_t)q * d_b, (size_t)d_a)
                                         / ((double)a.norm_a[p] * (double)a.norm_b[q]));
        }
        moexc__stats_where(a.random_cosine, NULL, 0, (size_t)a.n_random_pairs, scratch,
                           &a.random_cos_mean, &a.random_cos_median, &a.random_cos_frac_negative);
    }
    moexc__free(live);
    moexc__free(scratch);
    *out = a;
    return MOEXC_OK;
}

/* ---- seed controls ---------------------------------------------------------- */

MOEXC_DEF void moexc_mean_sd(const double *x, int n, double *mean, double *sd)
{
    double s = 0.0, ss = 0.0, m;
    int i, k = 0;
    for (i = 0; i < n; i++) if (!isnan(x[i])) { s += x[i]; k++; }
    if (k < 1) { *mean = NAN; *sd = NAN; return; }
    m = s / k;
    for (i = 0; i < n; i++) if (!isnan(x[i])) ss += (x[i] - m) * (x[i] - m);
    *mean = m;
    *sd = k < 2 ? NAN : sqrt(ss / (k - 1));
}

/* cos(a, b) in double; 0 when a norm is 0 */
static double moexc__cos_f64(const float *a, const float *b, size_t d)
{
    double ab = moexc__dot_f64(a, b, d), aa = moexc__dot_f64(a, a, d), bb = moexc__dot_f64(b, b, d);
    return aa > 0.0 && bb > 0.0 ? ab / sqrt(aa * bb) : 0.0;
}

MOEXC_DEF double moexc_latent_overlap(const float *dec_a1, const float *dec_b1, const int *idx1, int n1,
                                      const float *dec_a2, const float *dec_b2, const int *idx2, int n2,
                                      int d_a, int d_b, int models, double min_cos)
{
    int i, j, matched = 0;
    if (n1 < 1) return NAN;
    for (i = 0; i < n1; i++)
        for (j = 0; j < n2; j++) {
            size_t p = (size_t)idx1[i], q = (size_t)idx2[j];
            if ((models & 1) && !(moexc__cos_f64(dec_a1 + p * (size_t)d_a, dec_a2 + q * (size_t)d_a, (size_t)d_a) > min_cos)) continue;
            if ((models & 2) && !(moexc__cos_f64(dec_b1 + p * (size_t)d_b, dec_b2 + q * (size_t)d_b, (size_t)d_b) > min_cos)) continue;
            matched++;
            break;
        }
    return (double)matched / n1;
}

MOEXC_DEF const char *moexc_verdict_name(int verdict)
{
    static const char *const names[MOEXC_VERDICT_COUNT] = {
        "holds", "reversed", "not distinguishable from the seed control", "mixed across seeds", "no data",
        "too few seeds to judge"
    };
    return verdict >= 0 && verdict < MOEXC_VERDICT_COUNT ? names[verdict] : "?";
}

/* Verdict (SPEC §5.1): one direction in every seed, and beyond each control:
     dir (mean_main - mean_ctrl) > 2 sd    (dir = +1 or -1; sd over the control's seeds, or over
                                            the main seeds when the control has fewer than 2) */
MOEXC_DEF moexc_verdict moexc_finding_verdict(const double *main, int n_main, const double *ctrl,
                                              int n_ctrl_sets, int n_ctrl)
{
    int i, c, pos = 0, neg = 0, valid = 0, dir;
    double mm, sm, mc, sc;
    for (i = 0; i < n_main; i++) {
        if (isnan(main[i])) continue;
        valid++;
        pos += main[i] > 0.0;
        neg += main[i] < 0.0;
    }
    if (valid == 0) return MOEXC_VERDICT_NO_DATA;
    if (pos != valid && neg != valid) return MOEXC_VERDICT_MIXED;
    dir = pos == valid ? 1 : -1;
    moexc_mean_sd(main, n_main, &mm, &sm);
    for (c = 0; c < n_ctrl_sets; c++) {
        moexc_mean_sd(ctrl + (size_t)c * (size_t)n_ctrl, n_ctrl, &mc, &sc);
        if (isnan(mc)) continue;
        if (isnan(sc)) sc = sm;
        if (isnan(sc)) return MOEXC_VERDICT_TOO_FEW_SEEDS;
        if (!(dir * (mm - mc) > 2.0 * sc)) return MOEXC_VERDICT_NOT_DISTINGUISHABLE;
    }
    return dir > 0 ? MOEXC_VERDICT_HOLDS : MOEXC_VERDICT_REVERSED;
}

/* ---- orthogonal Procrustes and the Jacobi SVD ------------------------------- */

MOEXC_DEF moexc_status moexc_svd_jacobi(const double *a, int m, int n, double *u, double *s, double *v,
                                        moexc_error *err)
{
    double *w, *vt, *norm;
    int *order, i, j, p, q, sweep, rotated, k;
    if (m < 1 || n < 1 || m < n) return moexc__fail(err, MOEXC_ERR_ARG, "svd: need m >= n >= 1 (m = %d, n = %d)", m, n);
    w = (double *)moexc__calloc((size_t)n * (size_t)m, sizeof(double));   /* columns of A as rows */
    vt = (double *)moexc__calloc((size_t)n * (size_t)n, sizeof(double));  /* columns of V as rows */
    norm = (double *)moexc__calloc((size_t)n, sizeof(double));
    order = (int *)moexc__calloc((size_t)n, sizeof(int));
    if (!w || !vt || !norm || !order) {
        moexc__free(w); moexc__free(vt); moexc__free(norm); moexc__free(order);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "svd: no memory for %d x %d", m, n);
    }
    for (i = 0; i < m; i++)
        for (j = 0; j < n; j++) w[(size_t)j * m + i] = a[(size_t)i * n + j];
    for (j = 0; j < n; j++) vt[(size_t)j * n + j] = 1.0;
    /* One-sided Jacobi (Hestenes): rotate column pairs (p, q) of W = A V until
       all are orthogonal; then s_j = ||W_j||, U_j = W_j / s_j. For a pair
       with alpha = ||W_p||^2, beta = ||W_q||^2, gamma = W_p . W_q:
         zeta = (beta - alpha) / (2 gamma),  t = sign(zeta) / (|zeta| + sqrt(1 + zeta^2)),
         c = 1 / sqrt(1 + t^2),  s = c t,  W_p <- c W_p - s W_q,  W_q <- s W_p + c W_q */
    for (sweep = 0; sweep < 60; sweep++) {
        rotated = 0;
        for (p = 0; p < n - 1; p++)
            for (q = p + 1; q < n; q++) {
                double *wp = w + (size_t)p * m, *wq = w + (size_t)q * m, *vp = vt + (size_t)p * n, *vq = vt + (size_t)q * n;
                double al = 0.0, be = 0.0, ga = 0.0, zeta, t, c, sn;
                for (i = 0; i < m; i++) { al += wp[i] * wp[i]; be += wq[i] * wq[i]; ga += wp[i] * wq[i]; }
                if (ga == 0.0 || fabs(ga) <= 1e-15 * sqrt(al * be)) continue;
                rotated = 1;
                zeta = (be - al) / (2.0 * ga);
                t = (zeta >= 0.0 ? 1.0 : -1.0) / (fabs(zeta) + sqrt(1.0 + zeta * zeta));
                c = 1.0 / sqrt(1.0 + t * t);
                sn = c * t;
                for (i = 0; i < m; i++) { double x = wp[i], y = wq[i]; wp[i] = c * x - sn * y; wq[i] = sn * x + c * y; }
                for (i = 0; i < n; i++) { double x = vp[i], y = vq[i]; vp[i] = c * x - sn * y; vq[i] = sn * x + c * y; }
            }
        if (!rotated) break;
    }
    for (j = 0; j < n; j++) {
        double ss = 0.0;
        for (i = 0; i < m; i++) ss += w[(size_t)j * m + i] * w[(size_t)j * m + i];
        norm[j] = sqrt(ss);
        order[j] = j;
    }
    for (j = 1; j < n; j++)   /* descending singular values (insertion sort; ties keep their order) */
        for (k = j; k > 0 && norm[order[k]] > norm[order[k - 1]]; k--) { int t = order[k]; order[k] = order[k - 1]; order[k - 1] = t; }
    for (j = 0; j < n; j++) {
        int src = order[j];
        double sj = norm[src];
        if (sj <= norm[order[0]] * (double)m * DBL_EPSILON) sj = 0.0;
        s[j] = sj;
        for (i = 0; i < n; i++) v[(size_t)i * n + j] = vt[(size_t)src * n + i];
        for (i = 0; i < m; i++) u[(size_t)i * n + j] = sj > 0.0 ? w[(size_t)src * m + i] / sj : 0.0;
    }
    /* complete U's columns of zero singular values: the standard basis vector
       with the largest part orthogonal to the columns so far, orthogonalised twice */
    for (j = 0; j < n; j++) {
        int best = 0, pass;
        double best_res = -1.0;
        if (s[j] > 0.0) continue;
        for (k = 0; k < m; k++) {
            double res = 1.0;
            for (p = 0; p < n; p++) if (p != j && (s[p] > 0.0 || p < j)) res -= u[(size_t)k * n + p] * u[(size_t)k * n + p];
            if (res > best_res) { best_res = res; best = k; }
        }
        for (i = 0; i < m; i++) u[(size_t)i * n + j] = i == best ? 1.0 : 0.0;
        for (pass = 0; pass < 2; pass++) {
            double nn = 0.0;
            for (p = 0; p < n; p++) {
                double dotp = 0.0;
                if (p == j || !(s[p] > 0.0 || p < j)) continue;
                for (i = 0; i < m; i++) dotp += u[(size_t)i * n + p] * u[(size_t)i * n + j];
                for (i = 0; i < m; i++) u[(size_t)i * n + j] -= dotp * u[(size_t)i * n + p];
            }
            for (i = 0; i < m; i++) nn += u[(size_t)i * n + j] * u[(size_t)i * n + j];
            nn = sqrt(nn);
            for (i = 0; i < m; i++) u[(size_t)i * n + j] /= nn;
        }
    }
    moexc__free(w); moexc__free(vt); moexc__free(norm); moexc__free(order);
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_procrustes_acc_init(moexc_procrustes_acc *acc, int d_a, int d_b, moexc_error *err)
{
    memset(acc, 0, sizeof(*acc));
    if (d_a < 1 || d_b < 1) return moexc__fail(err, MOEXC_ERR_ARG, "procrustes: widths %d and %d must be >= 1", d_a, d_b);
    acc->d_a = d_a; acc->d_b = d_b;
    acc->cross = (double *)moexc__calloc((size_t)d_a * (size_t)d_b, sizeof(double));
    acc->sum_a = (double *)moexc__calloc((size_t)d_a, sizeof(double));
    acc->sum_b = (double *)moexc__calloc((size_t)d_b, sizeof(double));
    acc->chunk = moexc__alloc_floats((size_t)d_a * (size_t)d_b);
    if (!acc->cross || !acc->sum_a || !acc->sum_b || !acc->chunk) {
        moexc_procrustes_acc_free(acc);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "procrustes: no memory for %d x %d", d_b, d_a);
    }
    return MOEXC_OK;
}

MOEXC_DEF void moexc_procrustes_acc_free(moexc_procrustes_acc *acc)
{
    moexc__free(acc->cross); moexc__free(acc->sum_a); moexc__free(acc->sum_b); moexc__free_aligned(acc->chunk);
    memset(acc, 0, sizeof(*acc));
}

/* cross += x_B^T x_A, in float GEMMs of 256 rows added to double sums */
MOEXC_DEF moexc_status moexc_procrustes_acc_add(moexc_procrustes_acc *acc, const float *x_a, const float *x_b, int n,
                                                moexc_error *err)
{
    int b, j, da = acc->d_a, db = acc->d_b;
    size_t i, dd = (size_t)da * (size_t)db;
    if (n < 0 || (n > 0 && (!x_a || !x_b))) return moexc__fail(err, MOEXC_ERR_ARG, "procrustes: bad batch of %d pairs", n);
    for (b = 0; b < n; b += 256) {
        int c = MOEXC__MIN(256, n - b);
        moexc_sgemm(1, 0, db, da, c, 1.0f, x_b + (size_t)b * db, db, x_a + (size_t)b * da, da, 0.0f, acc->chunk, da);
        for (i = 0; i < dd; i++) acc->cross[i] += acc->chunk[i];
    }
    for (b = 0; b < n; b++) {
        for (j = 0; j < da; j++) acc->sum_a[j] += x_a[(size_t)b * da + j];
        for (j = 0; j < db; j++) acc->sum_b[j] += x_b[(size_t)b * db + j];
    }
    acc->n += n;
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_procrustes_fit(const moexc_procrustes_acc *acc, float *q, moexc_error *err)
{
    int da = acc->d_a, db = acc->d_b, big = MOEXC__MAX(da, db), small = MOEXC__MIN(da, db), i, j, k;
    double *mat, *u, *s, *v;
    moexc_status st;
    if (acc->n < 2) return moexc__fail(err, MOEXC_ERR_ARG, "procrustes: need at least 2 pairs, have %ld", (long)acc->n);
    mat = (double *)moexc__calloc((size_t)da * (size_t)db, sizeof(double));
    u = (double *)moexc__calloc((size_t)big * (size_t)small, sizeof(double));
    s = (double *)moexc__calloc((size_t)small, sizeof(double));
    v = (double *)moexc__calloc((size_t)small * (size_t)small, sizeof(double));
    if (!mat || !u || !s || !v) {
        moexc__free(mat); moexc__free(u); moexc__free(s); moexc__free(v);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "procrustes: no memory for %d x %d", db, da);
    }
    /* M = sum_b x^B x^A^T - n mean^B mean^A^T, stored as M (d_B x d_A) when
       d_B >= d_A, else as M^T (the SVD wants rows >= columns) */
    for (i = 0; i < db; i++)
        for (j = 0; j < da; j++) {
            double mij = acc->cross[(size_t)i * da + j] - acc->sum_b[i] * acc->sum_a[j] / (double)acc->n;
            if (db >= da) mat[(size_t)i * da + j] = mij;
            else mat[(size_t)j * db + i] = mij;
        }
    st = moexc_svd_jacobi(mat, big, small, u, s, v, err);
    /* d_B >= d_A: M = U S V^T, Q = U V^T;  else M^T = U S V^T, Q = V U^T */
    if (st == MOEXC_OK)
        for (i = 0; i < db; i++)
            for (j = 0; j < da; j++) {
                double x = 0.0;
                for (k = 0; k < small; k++)
                    x += db >= da ? u[(size_t)i * small + k] * v[(size_t)j * small + k]
                                  : v[(size_t)i * small + k] * u[(size_t)j * small + k];
                q[(size_t)i * da + j] = (float)x;
            }
    moexc__free(mat); moexc__free(u); moexc__free(s); moexc__free(v);
    return st;
}

MOEXC_DEF void moexc_procrustes_apply(const float *q, int d_a, int d_b, const float *x, int n, float *out)
{
    moexc_sgemm(0, 1, n, d_b, d_a, 1.0f, x, d_a, q, d_a, 0.0f, out, d_b);
}

/* ---- streaming accumulators ---------------------------------------------- */
MOEXC_DEF moexc_status moexc_activation_acc_init(moexc_activation_acc *acc, int n_latents, moexc_error *err)
{
    memset(acc, 0, sizeof(*acc));
    if (n_latents <= 0) return moexc__fail(err, MOEXC_ERR_ARG, "activation_acc: n_latents=%d", n_latents);
    acc->counts = (int64_t *)moexc__calloc((size_t)n_latents, sizeof(int64_t));
    if (!acc->counts) return moexc__fail(err, MOEXC_ERR_NOMEM, "activation_acc: %d latents", n_latents);
    acc->n_latents = n_latents;
    return MOEXC_OK;
}

MOEXC_DEF void moexc_activation_acc_add(moexc_activation_acc *acc, const float *f, int n_rows)
{
    int b, i;
    for (b = 0; b < n_rows; b++) {
        const float *row = f + (size_t)b * acc->n_latents;
        int64_t active = 0;
        for (i = 0; i < acc->n_latents; i++)
            if (row[i] > 0.0f) { acc->counts[i]++; active++; }
        acc->sum_active += (double)active;
    }
    acc->n_tokens += n_rows > 0 ? n_rows : 0;
}

/* L0 = mean over tokens of the number of active latents. */
MOEXC_DEF double moexc_activation_acc_l0(const moexc_activation_acc *acc)
{
    return acc->n_tokens ? acc->sum_active / (double)acc->n_tokens : NAN;
}

MOEXC_DEF double moexc_activation_acc_dead_fraction(const moexc_activation_acc *acc)
{
    int i, dead = 0;
    if (acc->n_latents <= 0) return NAN;
    for (i = 0; i < acc->n_latents; i++) dead += acc->counts[i] == 0;
    return (double)dead / (double)acc->n_latents;
}

MOEXC_DEF void moexc_activation_acc_free(moexc_activation_acc *acc)
{
    if (!acc) return;
    moexc__free(acc->counts);
    memset(acc, 0, sizeof(*acc));
}

MOEXC_DEF moexc_status moexc_fve_acc_init(moexc_fve_acc *acc, int dim, moexc_error *err)
{
    memset(acc, 0, sizeof(*acc));
    if (dim <= 0) return moexc__fail(err, MOEXC_ERR_ARG, "fve_acc: dim=%d", dim);
    acc->mean_x = (double *)moexc__calloc((size_t)dim * 4, sizeof(double));
    if (!acc->mean_x) return moexc__fail(err, MOEXC_ERR_NOMEM, "fve_acc: dim=%d", dim);
    acc->m2_x = acc->mean_x + dim;
    acc->mean_e = acc->m2_x + dim;
    acc->m2_e = acc->mean_e + dim;
    acc->dim = dim;
    return MOEXC_OK;
}

/* Welford per dimension: n += 1; delta = v - mean; mean += delta / n; m2 += delta (v - mean).
   Sum_dims m2 / n is Sum_dims Var_b; the ratio needs no 1/n. */
MOEXC_DEF void moexc_fve_acc_add(moexc_fve_acc *acc, const float *x, const float *x_hat, int n_rows)
{
    int b, j;
    for (b = 0; b < n_rows; b++) {
        const float *xr = x + (size_t)b * acc->dim, *hr = x_hat + (size_t)b * acc->dim;
        double inv_n;
        acc->n++;
        inv_n = 1.0 / (double)acc->n;
        for (j = 0; j < acc->dim; j++) {
            double v = xr[j], e = (double)xr[j] - (double)hr[j];
            double dx = v - acc->mean_x[j], de = e - acc->mean_e[j];
            acc->mean_x[j] += dx * inv_n;
            acc->m2_x[j] += dx * (v - acc->mean_x[j]);
            acc->mean_e[j] += de * inv_n;
            acc->m2_e[j] += de * (e - acc->mean_e[j]);
        }
    }
}

static void moexc__fve_sums(const moexc_fve_acc *acc, double *var_x, double *var_e)
{
    int j;
    for (j = 0; j < acc->dim; j++) { *var_x += acc->m2_x[j]; *var_e += acc->m2_e[j]; }
}

/* FVE = 1 - sum_dims Var_b(x - x_hat) / sum_dims Var_b(x) */
MOEXC_DEF double moexc_fve_acc_value(const moexc_fve_acc *acc)
{
    return moexc_fve_acc_pooled(acc, 1);
}

/* FVE_pooled = 1 - sum_m sum_dims Var_b(e^m) / sum_m sum_dims Var_b(x^m) */
MOEXC_DEF double moexc_fve_acc_pooled(const moexc_fve_acc *accs, int n_models)
{
    double var_x = 0.0, var_e = 0.0;
    int m;
    for (m = 0; m < n_models; m++) {
        double vx = 0.0, ve = 0.0;
        if (accs[m].n == 0) return NAN;
        moexc__fve_sums(&accs[m], &vx, &ve);
        var_x += vx / (double)accs[m].n;   /* population variance: models may have seen different n */
        var_e += ve / (double)accs[m].n;
    }
    return var_x > 0.0 ? 1.0 - var_e / var_x : NAN;
}

MOEXC_DEF void moexc_fve_acc_free(moexc_fve_acc *acc)
{
    if (!acc) return;
    moexc__free(acc->mean_x);
    memset(acc, 0, sizeof(*acc));
}

#define MOEXC__LS_CHUNK 256

MOEXC_DEF moexc_status moexc_latent_scaling_init(moexc_latent_scaling_acc *acc, const float *dec,
                                                 int n_latents, int dim, moexc_ls_target target,
                                                 moexc_error *err)
{
    int i;
    memset(acc, 0, sizeof(*acc));
    if (!dec || n_latents <= 0 || dim <= 0)
        return moexc__fail(err, MOEXC_ERR_ARG, "latent_scaling: need a decoder, F=%d, dim=%d", n_latents, dim);
    if (target != MOEXC_LS_RECONSTRUCTION && target != MOEXC_LS_ERROR)
        return moexc__fail(err, MOEXC_ERR_ARG, "latent_scaling: target=%d", (int)target);
    acc->num = (double *)moexc__calloc((size_t)n_latents * 2, sizeof(double));
    acc->norm2 = moexc__alloc_floats((size_t)n_latents);
    acc->proj = moexc__alloc_floats((size_t)MOEXC__LS_CHUNK * (size_t)n_latents);
    if (!acc->num || !acc->norm2 || !acc->proj) {
        moexc_latent_scaling_free(acc);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "latent_scaling: F=%d", n_latents);
    }
    acc->den = acc->num + n_latents;
    acc->n_latents = n_latents; acc->dim = dim; acc->target = (int)target; acc->dec = dec;
    for (i = 0; i < n_latents; i++)
        acc->norm2[i] = (float)moexc__dot_f64(dec + (size_t)i * dim, dec + (size_t)i * dim, (size_t)dim);
    return MOEXC_OK;
}

/* num_i += sum_b f_{b,i} <d_i, y_b>  (+ f_{b,i}^2 ||d_i||^2 for the error target)
   den_i += sum_b f_{b,i}^2; the projections P = Y D^T come from one GEMM per chunk. */
MOEXC_DEF void moexc_latent_scaling_add(moexc_latent_scaling_acc *acc, const float *f, const float *y, int n_rows)
{
    int F = acc->n_latents, start;
    for (start = 0; start < n_rows; start += MOEXC__LS_CHUNK) {
        int rows = MOEXC__MIN(MOEXC__LS_CHUNK, n_rows - start), b, i;
        const float *fc = f + (size_t)start * F;
        /* proj (rows x F) = y_chunk (rows x dim) * dec^T */
        moexc_sgemm(0, 1, rows, F, acc->dim, 1.0f, y + (size_t)start * acc->dim, acc->dim,
                    acc->dec, acc->dim, 0.0f, acc->proj, F);
        for (b = 0; b < rows; b++) {
            const float *fr = fc + (size_t)b * F, *pr = acc->proj + (size_t)b * F;
            for (i = 0; i < F; i++) {
                double fi = fr[i], p;
                if (fi == 0.0) continue;
                p = pr[i];
                if (acc->target == MOEXC_LS_ERROR) p += fi * acc->norm2[i];
                acc->num[i] += fi * p;
                acc->den[i] += fi * fi;
            }
        }
    }
}

MOEXC_DEF void moexc_latent_scaling_beta(const moexc_latent_scaling_acc *acc, float *beta)
{
    int i;
    for (i = 0; i < acc->n_latents; i++) {
        double d = (double)acc->norm2[i] * acc->den[i];
        beta[i] = d > 0.0 ? (float)(acc->num[i] / d) : NAN;
    }
}

MOEXC_DEF void moexc_latent_scaling_free(moexc_latent_scaling_acc *acc)
{
    if (!acc) return;
    moexc__free(acc->num);
    moexc__free_aligned(acc->norm2);
    moexc__free_aligned(acc->proj);
    memset(acc, 0, sizeof(*acc));
}

MOEXC_DEF void moexc_latent_scaling_nu(float *nu, const float *beta_a, const float *beta_b, int n)
{
    int i;
    for (i = 0; i < n; i++)
        nu[i] = (beta_b[i] != 0.0f && beta_b[i] == beta_b[i]) ? beta_a[i] / beta_b[i] : NAN;
}

/* ---- what a latent is: contexts, domains, experts, spliced loss ---------- */
/* SPEC §5.2. */

/* a stronger than b: larger value; on ties the earlier (seq, pos) */
static int moexc__top_stronger(const moexc_top_entry *a, const moexc_top_entry *b)
{
    if (a->value != b->value) return a->value > b->value;
    if (a->seq != b->seq) return a->seq < b->seq;
    return a->pos < b->pos;
}

/* restore the min-heap (weakest at the root) below node i */
static void moexc__top_sift_down(moexc_top_entry *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        moexc_top_entry t;
        if (l < n && moexc__top_stronger(&h[w], &h[l])) w = l;
        if (r < n && moexc__top_stronger(&h[w], &h[r])) w = r;
        if (w == i) return;
        t = h[i]; h[i] = h[w]; h[w] = t;
        i = w;
    }
}

MOEXC_DEF moexc_status moexc_top_acts_init(moexc_top_acts *acc, int n_latents, int capacity, moexc_error *err)
{
    memset(acc, 0, sizeof(*acc));
    if (capacity == 0) capacity = 20;
    if (n_latents <= 0 || capacity < 0)
        return moexc__fail(err, MOEXC_ERR_ARG, "top_acts: n_latents %d, capacity %d", n_latents, capacity);
    acc->count = (int *)moexc__calloc((size_t)n_latents, sizeof(int));
    acc->heap = (moexc_top_entry *)moexc__calloc((size_t)n_latents * (size_t)capacity + 1, sizeof(moexc_top_entry));
    if (!acc->count || !acc->heap) {
        moexc_top_acts_free(acc);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "top_acts: %d latents x %d entries", n_latents, capacity);
    }
    acc->n_latents = n_latents;
    acc->capacity = capacity;
    return MOEXC_OK;
}

MOEXC_DEF void moexc_top_acts_add(moexc_top_acts *acc, const float *f, int n_rows, const int64_t *seq,
                                  const int32_t *pos, const int32_t *labels)
{
    int F = acc->n_latents, N = acc->capacity, b, i;
    if (N == 0) return;
    for (b = 0; b < n_rows; b++) {
        const float *row = f + (size_t)b * F;
        for (i = 0; i < F; i++) {
            moexc_top_entry e, *h;
            int *n;
            if (!(row[i] > 0.0f)) continue;
            e.value = row[i]; e.seq = seq[b]; e.pos = pos[b]; e.label = labels ? labels[b] : -1;
            h = acc->heap + (size_t)i * N;
            n = &acc->count[i];
            if (*n < N) {                              /* sift the new entry up */
                int j = (*n)++;
                while (j > 0 && moexc__top_stronger(&h[(j - 1) / 2], &e)) { h[j] = h[(j - 1) / 2]; j = (j - 1) / 2; }
                h[j] = e;
            } else if (moexc__top_stronger(&e, &h[0])) {   /* replace the weakest */
                h[0] = e;
                moexc__top_sift_down(h, N, 0);
            }
        }
    }
}

MOEXC_DEF int moexc_top_acts_get(const moexc_top_acts *acc, int latent, moexc_top_entry *out)
{
    int n, i, j;
    if (!acc->heap || latent < 0 || latent >= acc->n_latents) return 0;
    n = acc->count[latent];
    memcpy(out, acc->heap + (size_t)latent * acc->capacity, (size_t)n * sizeof(*out));
    for (i = 1; i < n; i++) {                          /* insertion sort, strongest first */
        moexc_top_entry e = out[i];
        for (j = i; j > 0 && moexc__top_stronger(&e, &out[j - 1]); j--) out[j] = out[j - 1];
        out[j] = e;
    }
    return n;
}

MOEXC_DEF void moexc_top_acts_free(moexc_top_acts *acc)
{
    moexc__free(acc->count);
    moexc__free(acc->heap);
    memset(acc, 0, sizeof(*acc));
}

MOEXC_DEF moexc_status moexc_label_acc_init(moexc_label_acc *acc, int n_latents, int n_labels, int per_row,
                                            int reservoir, uint64_t seed, moexc_error *err)
{
    size_t FC;
    memset(acc, 0, sizeof(*acc));
    if (reservoir == 0) reservoir = 8192;
    if (n_latents <= 0 || n_labels <= 0 || per_row <= 0 || per_row > n_labels || reservoir < 1)
        return moexc__fail(err, MOEXC_ERR_ARG, "label_acc: n_latents %d, n_labels %d, per_row %d, reservoir %d",
                           n_latents, n_labels, per_row, reservoir);
    FC = (size_t)n_latents * (size_t)n_labels;
    acc->label_rows = (int64_t *)moexc__calloc((size_t)n_labels, sizeof(int64_t));
    acc->fires = (int64_t *)moexc__calloc((size_t)n_latents, sizeof(int64_t));
    acc->count = (int64_t *)moexc__calloc(FC, sizeof(int64_t));
    acc->shuffled = (int64_t *)moexc__calloc(FC, sizeof(int64_t));
    acc->mass = (double *)moexc__calloc(FC, sizeof(double));
    acc->mass_total = (double *)moexc__calloc((size_t)n_latents, sizeof(double));
    acc->reservoir = (int32_t *)moexc__calloc((size_t)reservoir * (size_t)per_row, sizeof(int32_t));
    if (!acc->label_rows || !acc->fires || !acc->count || !acc->shuffled || !acc->mass || !acc->mass_total || !acc->reservoir) {
        moexc_label_acc_free(acc);
        return moexc__fail(err, MOEXC_ERR_NOMEM, "label_acc: %d latents x %d labels", n_latents, n_labels);
    }
    acc->n_latents = n_latents; acc->n_labels = n_labels; acc->per_row = per_row; acc->reservoir_size = reservoir;
    moexc_rng_seed(&acc->rng, seed);
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_label_acc_add(moexc_label_acc *acc, const float *f, int n_rows, const int32_t *labels,
                                           moexc_error *err)
{
    int F = acc->n_latents, C = acc->n_labels, K = acc->per_row, b, i, j;
    for (b = 0; b < n_rows * K; b++)
        if (labels[b] < 0 || labels[b] >= C)
            return moexc__fail(err, MOEXC_ERR_ARG, "label_acc add: row %d: label %d not in [0, %d)", b / K, labels[b], C);
    for (b = 0; b < n_rows; b++) {
        const float *row = f + (size_t)b * F;
        const int32_t *lab = labels + (size_t)b * K;
        uint64_t slot;
        for (j = 0; j < K; j++) acc->label_rows[lab[j]]++;
        /* reservoir sampling (Vitter's R): every token so far is held with equal probability */
        if (acc->reservoir_fill < acc->reservoir_size) slot = (uint64_t)acc->reservoir_fill++;
        else slot = moexc_rng_u64(&acc->rng) % (uint64_t)(acc->n_rows + 1);
        if (slot < (uint64_t)acc->reservoir_size) memcpy(acc->reservoir + slot * (uint64_t)K, lab, (size_t)K * sizeof(int32_t));
        acc->n_rows++;
        for (i = 0; i < F; i++) {
            float v = row[i];
            if (!(v > 0.0f)) continue;
            acc->fires[i]++;
            acc->mass_total[i] += v;
            for (j = 0; j < K; j++) {
                acc->count[(size_t)i * C + lab[j]]++;
                acc->mass[(size_t)i * C + lab[j]] += v;
            }
        }
    }
    return MOEXC_OK;
}

MOEXC_DEF void moexc_label_acc_finish(moexc_label_acc *acc)
{
    int F = acc->n_latents, C = acc->n_labels, K = acc->per_row, i, j;
    moexc_rng rng;
    memset(acc->shuffled, 0, (size_t)F * C * sizeof(int64_t));
    if (acc->reservoir_fill == 0) return;
    moexc_rng_seed(&rng, moexc_rng_u64(&acc->rng) ^ UINT64_C(0x5eed5eed));
    for (i = 0; i < F; i++) {
        int64_t t;
        for (t = 0; t < acc->fires[i]; t++) {
            const int32_t *lab = acc->reservoir + (size_t)moexc_rng_below(&rng, (uint32_t)acc->reservoir_fill) * K;
            for (j = 0; j < K; j++) acc->shuffled[(size_t)i * C + lab[j]]++;
        }
    }
}

MOEXC_DEF void moexc_label_acc_latent(const moexc_label_acc *acc, int latent, int shuffled, double *share,
                                      double *mass_share, double *purity, double *entropy)
{
    int C = acc->n_labels, c;
    double n = latent >= 0 && latent < acc->n_latents ? (double)acc->fires[latent] : 0.0, best = 0.0, h = 0.0;
    const int64_t *cnt = (shuffled ? acc->shuffled : acc->count) + (size_t)(latent < 0 ? 0 : latent) * C;
    for (c = 0; c < C; c++) {
        double s = n > 0 ? (double)cnt[c] / n : NAN, p = s / acc->per_row;
        if (share) share[c] = s;
        if (mass_share)
            mass_share[c] = n > 0 && acc->mass_total[latent] > 0 && !shuffled
                          ? acc->mass[(size_t)latent * C + c] / acc->mass_total[latent] : NAN;
        if (n > 0 && s > best) best = s;
        if (n > 0 && p > 0) h -= p * log2(p);
    }
    if (purity) *purity = n > 0 ? best : NAN;
    if (entropy) *entropy = n > 0 ? h : NAN;
}

MOEXC_DEF void moexc_label_acc_base(const moexc_label_acc *acc, double *base)
{
    int c;
    for (c = 0; c < acc->n_labels; c++)
        base[c] = acc->n_rows > 0 ? (double)acc->label_rows[c] / (double)acc->n_rows : NAN;
}

MOEXC_DEF void moexc_label_acc_by_class(const moexc_label_acc *acc, const uint8_t *cls, int min_fires,
                                        moexc_label_class_stats out[MOEXC_CLASS_COUNT])
{
    double sum[MOEXC_CLASS_COUNT][4];
    int i, c, k;
    if (min_fires <= 0) min_fires = 1;
    memset(sum, 0, sizeof(sum));
    memset(out, 0, sizeof(*out) * MOEXC_CLASS_COUNT);
    for (i = 0; i < acc->n_latents; i++) {
        double v[4];
        c = cls[i];
        if (c >= MOEXC_CLASS_COUNT || acc->fires[i] < min_fires) continue;
        moexc_label_acc_latent(acc, i, 0, NULL, NULL, &v[0], &v[1]);
        moexc_label_acc_latent(acc, i, 1, NULL, NULL, &v[2], &v[3]);
        for (k = 0; k < 4; k++) sum[c][k] += v[k];
        out[c].n++;
    }
    for (c = 0; c < MOEXC_CLASS_COUNT; c++) {
        double n = (double)out[c].n;
        out[c].purity = n > 0 ? sum[c][0] / n : NAN;
        out[c].entropy = n > 0 ? sum[c][1] / n : NAN;
        out[c].purity_shuffled = n > 0 ? sum[c][2] / n : NAN;
        out[c].entropy_shuffled = n > 0 ? sum[c][3] / n : NAN;
    }
}

MOEXC_DEF void moexc_label_acc_free(moexc_label_acc *acc)
{
    moexc__free(acc->label_rows); moexc__free(acc->fires); moexc__free(acc->count); moexc__free(acc->shuffled);
    moexc__free(acc->mass); moexc__free(acc->mass_total); moexc__free(acc->reservoir);
    memset(acc, 0, sizeof(*acc));
}

MOEXC_DEF moexc_status moexc_splice_acc_init(moexc_splice_acc *acc, int n_domains, moexc_error *err)
{
    memset(acc, 0, sizeof(*acc));
    if (n_domains < 1 || n_domains > MOEXC_MAX_DOMAINS)
        return moexc__fail(err, MOEXC_ERR_ARG, "splice_acc: n_domains %d not in [1, %d]", n_domains, MOEXC_MAX_DOMAINS);
    acc->n_domains = n_domains;
    return MOEXC_OK;
}

MOEXC_DEF void moexc_splice_acc_add(moexc_splice_acc *acc, int model, int run, const float *nll,
                                    const uint8_t *domains, int n)
{
    int t, D = acc->n_domains;
    if (model < 0 || model > 1 || run < 0 || run >= MOEXC_SPLICE_COUNT) return;
    for (t = 0; t < n; t++) {
        int d = domains[t] < D ? domains[t] : -1;
        if (nll[t] != nll[t]) continue;
        acc->nll[model][run][D] += nll[t]; acc->tokens[model][run][D] += 1.0;
        if (d >= 0) { acc->nll[model][run][d] += nll[t]; acc->tokens[model][run][d] += 1.0; }
    }
}

MOEXC_DEF double moexc_splice_acc_ce(const moexc_splice_acc *acc, int model, int run, int domain)
{
    if (model < 0 || model > 1 || run < 0 || run >= MOEXC_SPLICE_COUNT || domain < 0 || domain > acc->n_domains) return NAN;
    return acc->tokens[model][run][domain] > 0 ? acc->nll[model][run][domain] / acc->tokens[model][run][domain] : NAN;
}

MOEXC_DEF double moexc_splice_acc_recovered(const moexc_splice_acc *acc, int model, int ablation, int domain)
{
    /* (CE_ablate - CE_splice) / (CE_ablate - CE_clean) */
    double clean = moexc_splice_acc_ce(acc, model, MOEXC_SPLICE_CLEAN, domain);
    double splice = moexc_splice_acc_ce(acc, model, MOEXC_SPLICE_XC, domain);
    double abl = (ablation == MOEXC_SPLICE_ZERO || ablation == MOEXC_SPLICE_MEAN)
               ? moexc_splice_acc_ce(acc, model, ablation, domain) : NAN;
    if (!(abl - clean != 0.0)) return NAN;
    return (abl - splice) / (abl - clean);
}

MOEXC_DEF void moexc_token_nll(const float *logits, const uint16_t *targets, int n, int V, float *nll)
{
    int t, v;
    for (t = 0; t < n; t++) {
        const float *z = logits + (size_t)t * V;
        double mx = z[0], s = 0.0;
        for (v = 1; v < V; v++) if (z[v] > mx) mx = z[v];
        for (v = 0; v < V; v++) s += exp((double)z[v] - mx);
        nll[t] = (float)(mx + log(s) - (double)z[targets[t]]);
    }
}

MOEXC_DEF void moexc_latent_study_free(moexc_latent_study *s)
{
    moexc_top_acts_free(&s->top);
    moexc_label_acc_free(&s->domain);
    moexc_label_acc_free(&s->expert_top1);
    moexc_label_acc_free(&s->expert_topk);
    moexc_activation_acc_free(&s->act);
    moexc__free(s->beta[0]); moexc__free(s->beta[1]); moexc__free(s->nu); moexc__free(s->aligned_cos);
    memset(s, 0, sizeof(*s));
}

MOEXC_DEF moexc_status moexc_latent_study_run(moexc_latent_study *s, moexc_model *model_a, moexc_model *model_b,
                                              moexc_xc *xc, const moexc_tokens *data,
                                              const moexc_latent_study_options *opt_in, moexc_error *err)
{
    moexc_latent_study_options o;
    moexc_model *mod[2];
    moexc_latent_scaling_acc ls[2];
    moexc_fve_acc fve[2];
    moexc_procrustes_acc pro;
    size_t *starts = NULL, n_win = 0, w;
    int F, D, dm[2], T, B, N, m, k = 0, E = 0, i, t, pass, layer;
    uint16_t *in = NULL, *tg = NULL;
    uint8_t *dom = NULL;
    int32_t *lab = NULL, *pos = NULL, *dl = NULL;
    int64_t *seq = NULL;
    float *x[2] = {NULL, NULL}, *xh[2] = {NULL, NULL}, *full[2] = {NULL, NULL}, *f = NULL, *nll = NULL;
    float *mean_f[2] = {NULL, NULL}, *dec[2] = {NULL, NULL};
    double *mean_d[2] = {NULL, NULL};
    moexc_status st = MOEXC_OK;

    memset(s, 0, sizeof(*s));
    s->expert_model = -1;
    memset(ls, 0, sizeof(ls)); memset(fve, 0, sizeof(fve)); memset(&pro, 0, sizeof(pro));
    if (!model_a || !model_b || !xc || !data || !data->tokens || !data->domains)
        return moexc__fail(err, MOEXC_ERR_ARG, "latent study: models, crosscoder and data are required");
    if (opt_in) o = *opt_in; else memset(&o, 0, sizeof(o));
    mod[0] = model_a; mod[1] = model_b;
    layer = o.layer == 0 ? 3 : o.layer == MOEXC_HARVEST_LAYER0 ? 0 : o.layer;
    if (o.top_n == 0) o.top_n = 20;
    if (o.batch_seqs == 0) o.batch_seqs = 8;
    if (o.max_seqs == 0) o.max_seqs = 64;
    if (o.eval_fraction == 0) o.eval_fraction = 0.05f;
    if (o.seq_len == 0) {
        o.seq_len = 128;
        for (m = 0; m < 2; m++) if (moexc_model_get_config(mod[m])->context < o.seq_len) o.seq_len = moexc_model_get_config(mod[m])->context;
    }
    T = o.seq_len; B = o.batch_seqs; D = data->n_domains; F = moexc_xc_get_options(xc)->n_latents;
    for (m = 0; m < 2; m++) {
        const moexc_model_config *c = moexc_model_get_config(mod[m]);
        dm[m] = c->d_model;
        if (layer < 0 || layer >= c->n_layers)
            return moexc__fail(err, MOEXC_ERR_ARG, "latent study: layer %d not in [0, %d) of model %c", layer, c->n_layers, "AB"[m]);
        if (T < 2 || T > c->context)
            return moexc__fail(err, MOEXC_ERR_ARG, "latent study: seq_len %d not in [2, context %d] of model %c", T, c->context, "AB"[m]);
        if (dm[m] != moexc_xc_dim(xc, m))
            return moexc__fail(err, MOEXC_ERR_SHAPE, "latent study: model %c has d_model %d, the crosscoder expects %d", "AB"[m], dm[m], moexc_xc_dim(xc, m));
        if (c->vocab_size < data->vocab_size)
            return moexc__fail(err, MOEXC_ERR_ARG, "latent study: data vocabulary %d > model %c's %d", data->vocab_size, "AB"[m], c->vocab_size);
        if (!E && c->ffn == MOEXC_FFN_MOE) { s->expert_model = m; E = c->n_experts; k = moexc_model_active_experts(mod[m]); }
    }
    if (!E) s->expert_model = -1;
    if (B < 1 || o.max_seqs < 1 || o.top_n < 0 || D < 1)
        return moexc__fail(err, MOEXC_ERR_ARG, "latent study: batch_seqs %d, max_seqs %d, top_n %d, %d domains", B, o.max_seqs, o.top_n, D);
    N = B * T;
    s->n_latents = F; s->n_domains = D; s->n_experts = E; s->top_k = k; s->layer = layer; s->site = o.site;
    s->d_a = dm[0]; s->d_b = dm[1]; s->seq_len = T;
    for (i = 0; i < D; i++) snprintf(s->domain_names[i], MOEXC_DOMAIN_NAME_MAX, "%s", data->domain_names[i]);
    if ((st = moexc__heldout_windows(data, T, o.eval_fraction, o.max_seqs, "latent study", &starts, &n_win, err)) != MOEXC_OK) return st;

    in = (uint16_t *)moexc__calloc((size_t)N, sizeof(uint16_t));
    tg = (uint16_t *)moexc__calloc((size_t)N, sizeof(uint16_t));
    dom = (uint8_t *)moexc__calloc((size_t)N, 1);
    lab = (int32_t *)moexc__calloc((size_t)N * (size_t)(k > 0 ? k : 1), sizeof(int32_t));
    pos = (int32_t *)moexc__calloc((size_t)N, sizeof(int32_t));
    seq = (int64_t *)moexc__calloc((size_t)N, sizeof(int64_t));
    f = (float *)moexc__calloc((size_t)N * F, sizeof(float));
    nll = (float *)moexc__calloc((size_t)N, sizeof(float));
    dl = (int32_t *)moexc__calloc((size_t)N, sizeof(int32_t));
    for (m = 0; m < 2; m++) {
        x[m] = (float *)moexc__calloc((size_t)N * dm[m], sizeof(float));
        xh[m] = (float *)moexc__calloc((size_t)N * dm[m], sizeof(float));
        full[m] = (float *)moexc__calloc((size_t)N * dm[m], sizeof(float));
        mean_f[m] = (float *)moexc__calloc((size_t)dm[m], sizeof(float));
        mean_d[m] = (double *)moexc__calloc((size_t)dm[m], sizeof(double));
        dec[m] = (float *)moexc__calloc((size_t)F * dm[m], sizeof(float));
        s->beta[m] = (float *)moexc__calloc((size_t)F, sizeof(float));
    }
    s->nu = (float *)moexc__calloc((size_t)F, sizeof(float));
    if (!in || !tg || !dom || !lab || !pos || !seq || !f || !nll || !dl || !s->nu ||
        !x[0] || !x[1] || !xh[0] || !xh[1] || !full[0] || !full[1] || !mean_f[0] || !mean_f[1] || !mean_d[0] || !mean_d[1] ||
        !dec[0] || !dec[1] || !s->beta[0] || !s->beta[1]) {
        st = moexc__fail(err, MOEXC_ERR_NOMEM, "latent study: out of memory (batch of %d x %d tokens, %d latents)", B, T, F);
        goto done;
    }
    if ((st = moexc_top_acts_init(&s->top, F, o.top_n, err)) != MOEXC_OK ||
        (st = moexc_label_acc_init(&s->domain, F, D, 1, 0, o.seed ^ 1u, err)) != MOEXC_OK ||
        (st = moexc_splice_acc_init(&s->splice, D, err)) != MOEXC_OK ||
        (st = moexc_activation_acc_init(&s->act, F, err)) != MOEXC_OK) goto done;
    if (E && ((st = moexc_label_acc_init(&s->expert_top1, F, E, 1, 0, o.seed ^ 2u, err)) != MOEXC_OK ||
              (st = moexc_label_acc_init(&s->expert_topk, F, E, k, 0, o.seed ^ 3u, err)) != MOEXC_OK)) goto done;
    for (m = 0; m < 2; m++) {
        moexc_xc_decoder(xc, m, 1, dec[m]);                       /* raw units, as the site */
        if ((st = moexc_latent_scaling_init(&ls[m], dec[m], F, dm[m], MOEXC_LS_RECONSTRUCTION, err)) != MOEXC_OK ||
            (st = moexc_fve_acc_init(&fve[m], dm[m], err)) != MOEXC_OK) goto done;
    }
    if ((st = moexc_procrustes_acc_init(&pro, dm[0], dm[1], err)) != MOEXC_OK) goto done;
    if (o.mean_a && o.mean_b) {
        memcpy(mean_f[0], o.mean_a, (size_t)dm[0] * sizeof(float));
        memcpy(mean_f[1], o.mean_b, (size_t)dm[1] * sizeof(float));
    }

    /* pass 0 (only without given means): the site's mean over the same tokens */
    for (pass = (o.mean_a && o.mean_b) || o.no_splice ? 1 : 0; pass < 2 && st == MOEXC_OK; pass++) {
        int64_t n_mean = 0;
        for (w = 0; w < n_win && st == MOEXC_OK; ) {
            int nb = (int)(n_win - w < (size_t)B ? n_win - w : (size_t)B), b, nt, t0 = o.keep_first ? 0 : 1;
            for (b = 0; b < nb; b++, w++)
                for (t = 0; t < T; t++) {
                    size_t p = starts[w] + (size_t)t;
                    in[b * T + t] = data->tokens[p];
                    tg[b * T + t] = data->tokens[p + 1];
                    dom[b * T + t] = data->domains[p + 1];      /* the predicted token's domain */
                    seq[b * T + t] = (int64_t)starts[w];
                    pos[b * T + t] = t;
                }
            nt = nb * T;
            if (pass == 0) {
                for (m = 0; m < 2 && st == MOEXC_OK; m++) {
                    if ((st = moexc_model_capture(mod[m], in, nb, T, layer, (moexc_site)o.site, x[m], err)) != MOEXC_OK) break;
                    for (b = 0; b < nb; b++)
                        for (t = t0; t < T; t++)
                            for (i = 0; i < dm[m]; i++) mean_d[m][i] += x[m][((size_t)b * T + t) * dm[m] + i];
                }
                n_mean += (int64_t)nb * (T - t0);
                continue;
            }
            /* clean runs: losses, site outputs, routing */
            for (m = 0; m < 2 && st == MOEXC_OK; m++) {
                const float *site;
                if ((st = moexc_model_forward(mod[m], in, tg, nb, T, NULL, err)) != MOEXC_OK) break;
                site = moexc_model_site_output(mod[m], layer, (moexc_site)o.site);
                memcpy(x[m], site, (size_t)nt * dm[m] * sizeof(float));
                memcpy(full[m], site, (size_t)nt * dm[m] * sizeof(float));
                moexc_token_nll(moexc_model_logits(mod[m]), tg, nt, moexc_model_get_config(mod[m])->vocab_size, nll);
                for (b = 0; b < nb; b++) for (t = 0; t < t0; t++) nll[b * T + t] = NAN;
                moexc_splice_acc_add(&s->splice, m, MOEXC_SPLICE_CLEAN, nll, dom, nt);
                if (m == s->expert_model) {
                    const int *ch = moexc_model_router_choices(mod[m], layer);
                    for (i = 0; i < nt * k; i++) lab[i] = ch[i];
                }
            }
            if (st != MOEXC_OK) break;
            if ((st = moexc_xc_encode(xc, x[0], x[1], nt, f, err)) != MOEXC_OK) break;
            moexc_xc_decode(xc, f, nt, xh[0], xh[1]);
            /* the statistics, on positions t0..T-1 of each window (rows compacted) */
            {
                int r = 0, b2;
                for (b2 = 0; b2 < nb; b2++)
                    for (t = t0; t < T; t++, r++) {
                        int src = b2 * T + t;
                        if (r != src) {
                            memmove(f + (size_t)r * F, f + (size_t)src * F, (size_t)F * sizeof(float));
                            for (m = 0; m < 2; m++) {
                                memmove(x[m] + (size_t)r * dm[m], x[m] + (size_t)src * dm[m], (size_t)dm[m] * sizeof(float));
                                memmove(xh[m] + (size_t)r * dm[m], xh[m] + (size_t)src * dm[m], (size_t)dm[m] * sizeof(float));
                            }
                            if (k) memmove(lab + (size_t)r * k, lab + (size_t)src * k, (size_t)k * sizeof(int32_t));
                            seq[r] = seq[src]; pos[r] = pos[src];
                        }
                        dl[r] = data->domains[(size_t)seq[r] + (size_t)pos[r]];   /* the token's domain */
                    }
                moexc_top_acts_add(&s->top, f, r, seq, pos, dl);
                if ((st = moexc_label_acc_add(&s->domain, f, r, dl, err)) != MOEXC_OK) break;
                if (E) {
                    if ((st = moexc_label_acc_add(&s->expert_topk, f, r, lab, err)) != MOEXC_OK) break;
                    for (i = 0; i < r; i++) lab[i] = lab[(size_t)i * k];     /* top-1: the first (largest) choice */
                    if ((st = moexc_label_acc_add(&s->expert_top1, f, r, lab, err)) != MOEXC_OK) break;
                }
                moexc_activation_acc_add(&s->act, f, r);
                for (m = 0; m < 2; m++) {
                    moexc_latent_scaling_add(&ls[m], f, xh[m], r);
                    moexc_fve_acc_add(&fve[m], x[m], xh[m], r);
                }
                if ((st = moexc_procrustes_acc_add(&pro, x[0], x[1], r, err)) != MOEXC_OK) break;
                s->n_tokens += r;
                s->n_seqs += nb;
            }
            if (o.no_splice) continue;
            /* spliced runs: the site replaced (position 0 of each window keeps its clean value) */
            for (m = 0; m < 2 && st == MOEXC_OK; m++) {
                int run, d = dm[m];
                for (run = MOEXC_SPLICE_XC; run < MOEXC_SPLICE_COUNT && st == MOEXC_OK; run++) {
                    int r = 0;
                    for (b = 0; b < nb; b++)
                        for (t = t0; t < T; t++, r++) {
                            float *dst = full[m] + ((size_t)b * T + t) * d;
                            if (run == MOEXC_SPLICE_XC) memcpy(dst, xh[m] + (size_t)r * d, (size_t)d * sizeof(float));
                            else if (run == MOEXC_SPLICE_ZERO) memset(dst, 0, (size_t)d * sizeof(float));
                            else memcpy(dst, mean_f[m], (size_t)d * sizeof(float));
                        }
                    if ((st = moexc_model_forward_replace(mod[m], in, tg, nb, T, layer, (moexc_site)o.site, full[m], NULL, err)) != MOEXC_OK) break;
                    moexc_token_nll(moexc_model_logits(mod[m]), tg, nt, moexc_model_get_config(mod[m])->vocab_size, nll);
                    for (b = 0; b < nb; b++) for (t = 0; t < t0; t++) nll[b * T + t] = NAN;
                    moexc_splice_acc_add(&s->splice, m, run, nll, dom, nt);
                }
            }
        }
        if (pass == 0 && st == MOEXC_OK)
            for (m = 0; m < 2; m++)
                for (i = 0; i < dm[m]; i++) mean_f[m][i] = n_mean > 0 ? (float)(mean_d[m][i] / (double)n_mean) : 0.0f;
    }
    if (st != MOEXC_OK) goto done;
    /* results */
    moexc_label_acc_finish(&s->domain);
    if (E) { moexc_label_acc_finish(&s->expert_top1); moexc_label_acc_finish(&s->expert_topk); }
    for (m = 0; m < 2; m++) { moexc_latent_scaling_beta(&ls[m], s->beta[m]); s->fve[m] = moexc_fve_acc_value(&fve[m]); }
    moexc_latent_scaling_nu(s->nu, s->beta[0], s->beta[1], F);
    if (pro.n >= 2) {
        float *q = (float *)moexc__calloc((size_t)dm[0] * dm[1], sizeof(float));
        float *qa = (float *)moexc__calloc((size_t)F * dm[1], sizeof(float));
        s->aligned_cos = (float *)moexc__calloc((size_t)F, sizeof(float));
        if (!q || !qa || !s->aligned_cos) st = moexc__fail(err, MOEXC_ERR_NOMEM, "latent study: aligned cosines");
        else if ((st = moexc_procrustes_fit(&pro, q, err)) == MOEXC_OK) {
            moexc_procrustes_apply(q, dm[0], dm[1], dec[0], F, qa);
            for (i = 0; i < F; i++) {
                const float *a = qa + (size_t)i * dm[1], *bb = dec[1] + (size_t)i * dm[1];
                double na = moexc_dot(a, a, (size_t)dm[1]), nb2 = moexc_dot(bb, bb, (size_t)dm[1]);
                s->aligned_cos[i] = na > 0 && nb2 > 0 ? (float)(moexc_dot(a, bb, (size_t)dm[1]) / sqrt(na * nb2)) : NAN;
            }
        }
        moexc__free(q); moexc__free(qa);
    }
done:
    for (m = 0; m < 2; m++) {
        moexc_latent_scaling_free(&ls[m]); moexc_fve_acc_free(&fve[m]);
        moexc__free(x[m]); moexc__free(xh[m]); moexc__free(full[m]); moexc__free(mean_f[m]); moexc__free(mean_d[m]); moexc__free(dec[m]);
    }
    moexc_procrustes_acc_free(&pro);
    moexc__free(starts); moexc__free(in); moexc__free(tg); moexc__free(dom); moexc__free(lab); moexc__free(pos);
    moexc__free(seq); moexc__free(f); moexc__free(nll); moexc__free(dl);
    if (st != MOEXC_OK) moexc_latent_study_free(s);
    return st;
}

/* ---- histograms ----------------------------------------------------------- */
MOEXC_DEF moexc_status moexc_histogram_init(moexc_histogram *h, int n_bins, double lo, double hi,
                                            int log10_axis, moexc_error *err)
{
    memset(h, 0, sizeof(*h));
    if (n_bins <= 0 || !(lo < hi) || (log10_axis && !(lo > 0.0)))
        return moexc__fail(err, MOEXC_ERR_ARG, "histogram: n_bins=%d range [%g, %g]%s", n_bins, lo, hi,
                           log10_axis ? " (log axis needs lo > 0)" : "");
    h->counts = (int64_t *)moexc__calloc((size_t)n_bins, sizeof(int64_t));
    if (!h->counts) return moexc__fail(err, MOEXC_ERR_NOMEM, "histogram: %d bins", n_bins);
    h->n_bins = n_bins; h->lo = lo; h->hi = hi; h->log10_axis = log10_axis;
    return MOEXC_OK;
}

MOEXC_DEF double moexc_histogram_edge(const moexc_histogram *h, int i)
{
    double t = (double)i / (double)h->n_bins;
    if (i <= 0) return h->lo;
    if (i >= h->n_bins) return h->hi;
    if (h->log10_axis) {
        double e = log10(h->lo) + t * (log10(h->hi) - log10(h->lo)), k = floor(e + 0.5);
        /* a decade edge 10^k exactly (|k| <= 22: 10^|k| is exact, 1/10^|k| correctly
           rounded), not pow's result: mingw-w64's pow(10, -3) is 1 ulp above 0.001 */
        if (fabs(e - k) < 1e-9 && fabs(k) <= 22) {
            double p = 1.0;
            int j;
            for (j = 0; j < (int)fabs(k); j++) p *= 10.0;
            return k < 0 ? 1.0 / p : p;
        }
        return pow(10.0, e);
    }
    return h->lo + t * (h->hi - h->lo);
}

MOEXC_DEF void moexc_histogram_add1(moexc_histogram *h, double x)
{
    double t;
    int bin;
    h->total++;
    if (x != x) { h->nan_count++; return; }
    if (x < h->lo) { h->underflow++; return; }
    if (x > h->hi) { h->overflow++; return; }
    t = h->log10_axis ? (log10(x) - log10(h->lo)) / (log10(h->hi) - log10(h->lo))
                      : (x - h->lo) / (h->hi - h->lo);
    bin = (int)(t * h->n_bins);
    /* Rounding in t can move a value across an edge; settle it against the edges. */
    if (bin >= h->n_bins) bin = h->n_bins - 1;
    if (bin < 0) bin = 0;
    if (bin > 0 && x < moexc_histogram_edge(h, bin)) bin--;
    else if (bin + 1 < h->n_bins && x >= moexc_histogram_edge(h, bin + 1)) bin++;
    h->counts[bin]++;
}

MOEXC_DEF void moexc_histogram_add(moexc_histogram *h, const float *x, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) moexc_histogram_add1(h, x[i]);
}

MOEXC_DEF void moexc_histogram_add_where(moexc_histogram *h, const float *x, const uint8_t *labels,
                                         uint8_t label, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) if (labels[i] == label) moexc_histogram_add1(h, x[i]);
}

MOEXC_DEF void moexc_histogram_free(moexc_histogram *h)
{
    if (!h) return;
    moexc__free(h->counts);
    memset(h, 0, sizeof(*h));
}

/* ---- reports: table, CSV, JSON, NPY -------------------------------------- */
/* The order classes appear in reports: the bands, then the two special classes. */
static const int moexc__report_order[MOEXC_CLASS_COUNT] = {
    MOEXC_CLASS_MOE_ONLY, MOEXC_CLASS_SHARED, MOEXC_CLASS_DENSE_ONLY, MOEXC_CLASS_DESIGNATED, MOEXC_CLASS_DEAD };

static void moexc__range_text(const moexc_class_summary *s, char *buf, size_t size)
{
    if (s->r_lo != s->r_lo) snprintf(buf, size, "-");
    else if (s->r_lo == s->r_hi) snprintf(buf, size, "%.2f", s->r_lo);
    else snprintf(buf, size, "%c%.2f, %.2f%c", s->lo_open ? '(' : '[', s->r_lo, s->r_hi, s->hi_open ? ')' : ']');
}

/* A number, or `missing` when NaN/Inf. */
static void moexc__num_text(double v, const char *fmt, const char *missing, char *buf, size_t size)
{
    if (v != v || v - v != 0.0) snprintf(buf, size, "%s", missing);
    else snprintf(buf, size, fmt, v);
}

MOEXC_DEF void moexc_analysis_print_table(FILE *out, const moexc_latent_analysis *a,
                                          const moexc_eval_summary *summary)
{
    int k;
    char range[32], dm[32], dmed[32], cm[32];
    if (summary && summary->name) fprintf(out, "run: %s\n", summary->name);
    fprintf(out, "%d latents (%d designated shared), bands %.2f / %.2f, ", a->n_latents, a->n_shared,
            a->moe_max, a->dense_min);
    if (a->n_tokens > 0) fprintf(out, "%lld evaluation tokens\n", (long long)a->n_tokens);
    else fprintf(out, "no activation counts (no densities, no dead class)\n");
    if (summary && summary->has_fve)
        fprintf(out, "FVE: MoE %.4f  dense %.4f  pooled %.4f\n", summary->fve_a, summary->fve_b, summary->fve_pooled);
    if (summary && summary->has_l0)
        fprintf(out, "L0 %.2f  dead fraction %.4f\n", summary->l0, summary->dead_fraction);
    fprintf(out, "%-12s %-14s %8s %8s %13s %15s %9s\n", "class", "r range", "count", "share",
            "mean density", "median density", "mean cos");
    for (k = 0; k < MOEXC_CLASS_COUNT; k++) {
        const moexc_class_summary *s = &a->classes[moexc__report_order[k]];
        moexc__range_text(s, range, sizeof(range));
        moexc__num_text(s->density_mean, "%.3e", "-", dm, sizeof(dm));
        moexc__num_text(s->density_median, "%.3e", "-", dmed, sizeof(dmed));
        moexc__num_text(s->cos_mean, "%.3f", "-", cm, sizeof(cm));
        fprintf(out, "%-12s %-14s %8lld %7.2f%% %13s %15s %9s\n", moexc_latent_class_name(moexc__report_order[k]),
                range, (long long)s->count, 100.0 * (double)s->count / (double)a->n_latents, dm, dmed, cm);
    }
    moexc__num_text(a->random_cos_mean, "%.3f", "-", cm, sizeof(cm));
    fprintf(out, "%-12s %-14s %8d %8s %13s %15s %9s\n", "random pairs", "-", a->n_random_pairs, "", "-", "-", cm);
}

/* CSV field: numbers plain, NaN empty. */
static void moexc__csv_num(FILE *f, double v)
{
    if (v == v && v - v == 0.0) fprintf(f, "%.9g", v);
}

MOEXC_DEF moexc_status moexc_analysis_write_csv(const moexc_latent_analysis *a, const char *path,
                                                moexc_error *err)
{
    moexc__atomic_file af;
    moexc_status st = moexc__atomic_open(&af, path, err);
    int k;
    if (st != MOEXC_OK) return st;
    fprintf(af.f, "class,r_lo,r_hi,count,density_mean,density_median,cos_mean,cos_median,cos_frac_negative\n");
    for (k = 0; k < MOEXC_CLASS_COUNT; k++) {
        const moexc_class_summary *s = &a->classes[moexc__report_order[k]];
        fprintf(af.f, "%s,", moexc_latent_class_name(moexc__report_order[k]));
        moexc__csv_num(af.f, s->r_lo); fputc(',', af.f);
        moexc__csv_num(af.f, s->r_hi); fprintf(af.f, ",%lld,", (long long)s->count);
        moexc__csv_num(af.f, s->density_mean); fputc(',', af.f);
        moexc__csv_num(af.f, s->density_median); fputc(',', af.f);
        moexc__csv_num(af.f, s->cos_mean); fputc(',', af.f);
        moexc__csv_num(af.f, s->cos_median); fputc(',', af.f);
        moexc__csv_num(af.f, s->cos_frac_negative); fputc('\n', af.f);
    }
    fprintf(af.f, "random_pairs,,,%d,,,", a->n_random_pairs);
    moexc__csv_num(af.f, a->random_cos_mean); fputc(',', af.f);
    moexc__csv_num(af.f, a->random_cos_median); fputc(',', af.f);
    moexc__csv_num(af.f, a->random_cos_frac_negative); fputc('\n', af.f);
    return moexc__atomic_commit(&af, err);
}

/* JSON string with escapes for quote, backslash and control characters. */
static void moexc__json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') { fputc('\\', f); fputc(ch, f); }
        else if (ch == '\n') fputs("\\n", f);
        else if (ch == '\r') fputs("\\r", f);
        else if (ch == '\t') fputs("\\t", f);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

static void moexc__json_num(FILE *f, double v)
{
    if (v == v && v - v == 0.0) fprintf(f, "%.9g", v);
    else fputs("null", f);
}

MOEXC_DEF moexc_status moexc_analysis_write_json(const moexc_latent_analysis *a,
                                                 const moexc_eval_summary *summary,
                                                 const char *path, moexc_error *err)
{
    moexc__atomic_file af;
    moexc_status st = moexc__atomic_open(&af, path, err);
    FILE *f;
    int k;
    if (st != MOEXC_OK) return st;
    f = af.f;
    fputs("{\n  \"name\": ", f);
    if (summary && summary->name) moexc__json_string(f, summary->name); else fputs("null", f);
    fprintf(f, ",\n  \"n_latents\": %d,\n  \"n_shared\": %d,\n  \"n_tokens\": %lld,\n",
            a->n_latents, a->n_shared, (long long)a->n_tokens);
    fputs("  \"bands\": {\"moe_max\": ", f); moexc__json_num(f, a->moe_max);
    fputs(", \"dense_min\": ", f); moexc__json_num(f, a->dense_min);
    fputs("},\n  \"fve\": ", f);
    if (summary && summary->has_fve) {
        fputs("{\"moe\": ", f); moexc__json_num(f, summary->fve_a);
        fputs(", \"dense\": ", f); moexc__json_num(f, summary->fve_b);
        fputs(", \"pooled\": ", f); moexc__json_num(f, summary->fve_pooled); fputc('}', f);
    } else fputs("null", f);
    fputs(",\n  \"l0\": ", f); moexc__json_num(f, summary && summary->has_l0 ? summary->l0 : NAN);
    fputs(",\n  \"dead_fraction\": ", f); moexc__json_num(f, summary && summary->has_l0 ? summary->dead_fraction : NAN);
    fputs(",\n  \"classes\": [\n", f);
    for (k = 0; k < MOEXC_CLASS_COUNT; k++) {
        const moexc_class_summary *s = &a->classes[moexc__report_order[k]];
        fputs("    {\"class\": ", f); moexc__json_string(f, moexc_latent_class_name(moexc__report_order[k]));
        fputs(", \"r_lo\": ", f); moexc__json_num(f, s->r_lo);
        fputs(", \"r_hi\": ", f); moexc__json_num(f, s->r_hi);
        fprintf(f, ", \"lo_open\": %s, \"hi_open\": %s, \"count\": %lld", s->lo_open ? "true" : "false",
                s->hi_open ? "true" : "false", (long long)s->count);
        fputs(", \"r_mean\": ", f); moexc__json_num(f, s->r_mean);
        fputs(", \"density_mean\": ", f); moexc__json_num(f, s->density_mean);
        fputs(", \"density_median\": ", f); moexc__json_num(f, s->density_median);
        fputs(", \"cos_mean\": ", f); moexc__json_num(f, s->cos_mean);
        fputs(", \"cos_median\": ", f); moexc__json_num(f, s->cos_median);
        fputs(", \"cos_frac_negative\": ", f); moexc__json_num(f, s->cos_frac_negative);
        fputs(k + 1 < MOEXC_CLASS_COUNT ? "},\n" : "}\n", f);
    }
    fprintf(f, "  ],\n  \"random_pairs\": {\"count\": %d, \"cos_mean\": ", a->n_random_pairs);
    moexc__json_num(f, a->random_cos_mean);
    fputs(", \"cos_median\": ", f); moexc__json_num(f, a->random_cos_median);
    fputs(", \"cos_frac_negative\": ", f); moexc__json_num(f, a->random_cos_frac_negative);
    fputs("}\n}\n", f);
    return moexc__atomic_commit(&af, err);
}

/* NPY v1.0 header for a 1-D '<f4' array: total length (10 + header) a multiple of 64. */
static size_t moexc__npy_header(unsigned char *buf, size_t size, size_t n)
{
    char dict[128];
    int len = snprintf(dict, sizeof(dict), "{'descr': '<f4', 'fortran_order': False, 'shape': (%lu,), }",
                       (unsigned long)n);
    size_t total = ((size_t)10 + (size_t)len + 1 + 63) / 64 * 64, hlen = total - 10;
    if (len < 0 || total > size) return 0;
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = 1; buf[7] = 0;
    buf[8] = (unsigned char)(hlen & 0xFF); buf[9] = (unsigned char)(hlen >> 8);
    memcpy(buf + 10, dict, (size_t)len);
    memset(buf + 10 + len, ' ', hlen - (size_t)len - 1);
    buf[total - 1] = '\n';
    return total;
}

MOEXC_DEF moexc_status moexc_npy_write_f32(const char *path, const float *x, size_t n, moexc_error *err)
{
    unsigned char header[256];
    size_t hsize = moexc__npy_header(header, sizeof(header), n);
    moexc__atomic_file af;
    moexc_status st;
    if (!hsize) return moexc__fail(err, MOEXC_ERR_ARG, "%s: npy header for n=%lu", path, (unsigned long)n);
    st = moexc__atomic_open(&af, path, err);
    if (st != MOEXC_OK) return st;
    if (fwrite(header, 1, hsize, af.f) != hsize || !moexc__fwrite_f32le(af.f, x, n)) {
        moexc__atomic_abort(&af);
        return moexc__fail(err, MOEXC_ERR_IO, "%s: write failed", path);
    }
    return moexc__atomic_commit(&af, err);
}

/* Find "'key':" in a NPY header dict and return the text after it (spaces skipped). */
static const char *moexc__npy_field(const char *dict, const char *key)
{
    const char *p = strstr(dict, key);
    if (!p) return NULL;
    p += strlen(key);
    while (*p == ' ') p++;
    return p;
}

MOEXC_DEF moexc_status moexc_npy_read_f32(const char *path, float **out, size_t *n, moexc_error *err)
{
    unsigned char pre[12];
    char *dict = NULL;
    const char *p;
    size_t hlen, pre_len;
    uint64_t count = 0;
    int64_t file_size;
    float *data = NULL;
    FILE *f;
    *out = NULL; *n = 0;
    f = fopen(path, "rb");
    if (!f) return moexc__fail(err, MOEXC_ERR_IO, "%s: cannot open", path);
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        fclose(f);
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: not an NPY file (bad magic)", path);
    }
    if (pre[6] == 1) { hlen = (size_t)pre[8] | ((size_t)pre[9] << 8); pre_len = 10; }
    else if (pre[6] == 2 || pre[6] == 3) {
        if (fread(pre + 10, 1, 2, f) != 2) { fclose(f); return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: truncated header", path); }
        hlen = (size_t)moexc__get_u32le(pre + 8); pre_len = 12;
    } else {
        fclose(f);
        return moexc__fail(err, MOEXC_ERR_VERSION, "%s: NPY version %d.%d", path, pre[6], pre[7]);
    }
    if (hlen > 65536) { fclose(f); return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: header length %lu", path, (unsigned long)hlen); }
    dict = (char *)moexc__malloc(hlen + 1);
    if (!dict) { fclose(f); return moexc__fail(err, MOEXC_ERR_NOMEM, "%s: header", path); }
    if (fread(dict, 1, hlen, f) != hlen) {
        moexc__free(dict); fclose(f);
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: truncated header", path);
    }
    dict[hlen] = 0;
    p = moexc__npy_field(dict, "'descr':");
    if (!p || strncmp(p, "'<f4'", 5) != 0) {
        moexc__free(dict); fclose(f);
        return moexc__fail(err, MOEXC_ERR_SHAPE, "%s: dtype is not '<f4'", path);
    }
    p = moexc__npy_field(dict, "'fortran_order':");
    if (!p || strncmp(p, "False", 5) != 0) {
        moexc__free(dict); fclose(f);
        return moexc__fail(err, MOEXC_ERR_SHAPE, "%s: fortran_order is not False", path);
    }
    p = moexc__npy_field(dict, "'shape':");
    if (!p || *p != '(' || !(p[1] >= '0' && p[1] <= '9')) {
        moexc__free(dict); fclose(f);
        return moexc__fail(err, MOEXC_ERR_SHAPE, "%s: shape is not 1-D", path);
    }
    /* the element count, exact: it and its byte size must fit in 62 bits
       (a larger shape is an invalid file, not a request for memory) */
    for (p++; *p >= '0' && *p <= '9'; p++) {
        if (count > ((UINT64_C(1) << 62) / 4 - (uint64_t)(*p - '0')) / 10) {
            moexc__free(dict); fclose(f);
            return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: invalid shape: the element count overflows (more than 2^60 floats)", path);
        }
        count = count * 10 + (uint64_t)(*p - '0');
    }
    while (*p == ' ') p++;
    if (*p == ',') { p++; while (*p == ' ') p++; }
    if (*p != ')') {
        moexc__free(dict); fclose(f);
        return moexc__fail(err, MOEXC_ERR_SHAPE, "%s: shape is not 1-D", path);
    }
    moexc__free(dict);
    /* 64-bit offsets: files over 2 GiB on Windows and 32-bit hosts too */
    file_size = moexc__file_size64(f);
    if (file_size < 0 || moexc__fseek64(f, (int64_t)(pre_len + hlen), SEEK_SET) != 0) {
        fclose(f);
        return moexc__fail(err, MOEXC_ERR_IO, "%s: cannot seek in the file", path);
    }
    if ((uint64_t)file_size < pre_len + hlen || (uint64_t)file_size - pre_len - hlen != 4 * count) {
        fclose(f);
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: invalid shape: (%llu,) needs %llu data bytes, the file holds %lld",
                           path, (unsigned long long)count, (unsigned long long)(4 * count),
                           (long long)file_size - (long long)(pre_len + hlen));
    }
    if (count > (uint64_t)((size_t)-1 / sizeof(float))) {
        fclose(f);
        return moexc__fail(err, MOEXC_ERR_FORMAT, "%s: invalid shape: (%llu,) floats exceed this host's address space",
                           path, (unsigned long long)count);
    }
    data = (float *)moexc__calloc((size_t)count, sizeof(float));
    if (!data) { fclose(f); return moexc__fail(err, MOEXC_ERR_NOMEM, "%s: out of memory for %llu floats", path, (unsigned long long)count); }
    if (!moexc__fread_f32le(f, data, (size_t)count)) {
        moexc__free(data); fclose(f);
        return moexc__fail(err, MOEXC_ERR_IO, "%s: read failed", path);
    }
    fclose(f);
    *out = data; *n = (size_t)count;
    return MOEXC_OK;
}

MOEXC_DEF moexc_status moexc_analysis_write_npy(const moexc_latent_analysis *a, const char *prefix,
                                                moexc_error *err)
{
    static const char *const names[6] = { "r", "cosine", "density", "norm_a", "norm_b", "class" };
    char path[4096];
    float *cls = (float *)moexc__calloc((size_t)a->n_latents, sizeof(float));
    moexc_status st = MOEXC_OK;
    int k, i;
    if (!cls) return moexc__fail(err, MOEXC_ERR_NOMEM, "write_npy: F=%d", a->n_latents);
    for (i = 0; i < a->n_latents; i++) cls[i] = (float)a->cls[i];
    for (k = 0; k < 6 && st == MOEXC_OK; k++) {
        const float *src = k == 0 ? a->r : k == 1 ? a->cosine : k == 2 ? a->density
                         : k == 3 ? a->norm_a : k == 4 ? a->norm_b : cls;
        if ((size_t)snprintf(path, sizeof(path), "%s%s.npy", prefix, names[k]) >= sizeof(path)) {
            st = moexc__fail(err, MOEXC_ERR_ARG, "%s: prefix too long", prefix);
            break;
        }
        st = moexc_npy_write_f32(path, src, (size_t)a->n_latents, err);
    }
    moexc__free(cls);
    return st;
}

/* ======================================================================== */
/* >>plot (implementation)                                                   */
/* ======================================================================== */

/* ---- canvas and primitives ------------------------------------------------ */
MOEXC_DEF moexc_status moexc_canvas_init(moexc_canvas *c, int width, int height, moexc_error *err)
{
    size_t bytes;
    memset(c, 0, sizeof(*c));
    if (width <= 0 || height <= 0 || width > 32768 || height > 32768)
        return moexc__fail(err, MOEXC_ERR_ARG, "canvas: size %d x %d outside 1..32768", width, height);
    bytes = (size_t)width * (size_t)height * 3;
    c->rgb = (unsigned char *)moexc__malloc(bytes);
    if (!c->rgb) return moexc__fail(err, MOEXC_ERR_NOMEM, "canvas: %d x %d", width, height);
    memset(c->rgb, 255, bytes);
    c->width = width; c->height = height; c->owned = 1;
    return MOEXC_OK;
}

MOEXC_DEF void moexc_canvas_wrap(moexc_canvas *c, unsigned char *rgb, int width, int height)
{
    c->rgb = rgb; c->width = width; c->height = height; c->owned = 0;
}

MOEXC_DEF void moexc_canvas_free(moexc_canvas *c)
{
    if (!c) return;
    if (c->owned) moexc__free(c->rgb);
    memset(c, 0, sizeof(*c));
}

MOEXC_DEF uint32_t moexc_canvas_get(const moexc_canvas *c, int x, int y)
{
    const unsigned char *p;
    if (x < 0 || y < 0 || x >= c->width || y >= c->height) return 0;
    p = c->rgb + ((size_t)y * (size_t)c->width + (size_t)x) * 3;
    return ((uint32_t)p[0] << 16) | ((uint32_t)p[1] << 8) | p[2];
}

/* Clip rectangle [x0, x1) x [y0, y1): drawing never leaves it. */
typedef struct moexc__clip { int x0, y0, x1, y1; } moexc__clip;

static moexc__clip moexc__canvas_clip(const moexc_canvas *c)
{
    moexc__clip k;
    k.x0 = 0; k.y0 = 0; k.x1 = c->width; k.y1 = c->height;
    return k;
}

/* out = (src a + dst (255 - a)) / 255, per channel, rounded */
static void moexc__fill(moexc_canvas *c, moexc__clip k, int x0, int y0, int x1, int y1, uint32_t color, int alpha)
{
    unsigned char r = (unsigned char)(color >> 16), g = (unsigned char)(color >> 8), b = (unsigned char)color;
    int x, y;
    if (k.x0 < 0) k.x0 = 0;
    if (k.y0 < 0) k.y0 = 0;
    if (k.x1 > c->width) k.x1 = c->width;
    if (k.y1 > c->height) k.y1 = c->height;
    x0 = MOEXC__MAX(x0, k.x0); y0 = MOEXC__MAX(y0, k.y0);
    x1 = MOEXC__MIN(x1, k.x1); y1 = MOEXC__MIN(y1, k.y1);
    if (alpha <= 0) return;
    if (alpha > 255) alpha = 255;
    for (y = y0; y < y1; y++) {
        unsigned char *p = c->rgb + ((size_t)y * (size_t)c->width + (size_t)x0) * 3;
        for (x = x0; x < x1; x++, p += 3) {
            if (alpha == 255) { p[0] = r; p[1] = g; p[2] = b; continue; }
            p[0] = (unsigned char)((r * alpha + p[0] * (255 - alpha) + 127) / 255);
            p[1] = (unsigned char)((g * alpha + p[1] * (255 - alpha) + 127) / 255);
            p[2] = (unsigned char)((b * alpha + p[2] * (255 - alpha) + 127) / 255);
        }
    }
}

MOEXC_DEF void moexc_canvas_clear(moexc_canvas *c, uint32_t color)
{
    moexc__fill(c, moexc__canvas_clip(c), 0, 0, c->width, c->height, color, 255);
}

MOEXC_DEF void moexc_draw_rect(moexc_canvas *c, int x0, int y0, int x1, int y1, uint32_t color)
{
    moexc__fill(c, moexc__canvas_clip(c), x0, y0, x1, y1, color, 255);
}

MOEXC_DEF void moexc_draw_rect_alpha(moexc_canvas *c, int x0, int y0, int x1, int y1, uint32_t color, int alpha)
{
    moexc__fill(c, moexc__canvas_clip(c), x0, y0, x1, y1, color, alpha);
}

MOEXC_DEF void moexc_draw_rect_outline(moexc_canvas *c, int x0, int y0, int x1, int y1, int thickness, uint32_t color)
{
    moexc__clip k = moexc__canvas_clip(c);
    if (thickness < 1) thickness = 1;
    moexc__fill(c, k, x0, y0, x1, y0 + thickness, color, 255);
    moexc__fill(c, k, x0, y1 - thickness, x1, y1, color, 255);
    moexc__fill(c, k, x0, y0, x0 + thickness, y1, color, 255);
    moexc__fill(c, k, x1 - thickness, y0, x1, y1, color, 255);
}

/* Liang-Barsky: clip the segment to [x_lo, x_hi] x [y_lo, y_hi]; 0 when nothing is left. */
static int moexc__clip_segment(double *x0, double *y0, double *x1, double *y1,
                               double x_lo, double y_lo, double x_hi, double y_hi)
{
    double t0 = 0.0, t1 = 1.0, dx = *x1 - *x0, dy = *y1 - *y0;
    double p[4], q[4];
    int i;
    p[0] = -dx; q[0] = *x0 - x_lo;
    p[1] = dx;  q[1] = x_hi - *x0;
    p[2] = -dy; q[2] = *y0 - y_lo;
    p[3] = dy;  q[3] = y_hi - *y0;
    for (i = 0; i < 4; i++) {
        if (p[i] == 0.0) { if (q[i] < 0.0) return 0; continue; }
        if (p[i] < 0.0) { double t = q[i] / p[i]; if (t > t1) return 0; if (t > t0) t0 = t; }
        else            { double t = q[i] / p[i]; if (t < t0) return 0; if (t < t1) t1 = t; }
    }
    *x1 = *x0 + t1 * dx; *y1 = *y0 + t1 * dy;
    *x0 = *x0 + t0 * dx; *y0 = *y0 + t0 * dy;
    return 1;
}

/* Bresenham, stamping a thickness x thickness square at every step; the
   segment is first clipped to the clip rectangle (so far-away points cost nothing). */
static void moexc__line(moexc_canvas *c, moexc__clip k, int x0, int y0, int x1, int y1, int thickness, uint32_t color)
{
    double fx0 = x0, fy0 = y0, fx1 = x1, fy1 = y1;
    int dx, dy, sx, sy, e, e2, half;
    if (thickness < 1) thickness = 1;
    half = (thickness - 1) / 2;
    if (!moexc__clip_segment(&fx0, &fy0, &fx1, &fy1, k.x0 - (double)thickness, k.y0 - (double)thickness,
                             k.x1 + (double)thickness, k.y1 + (double)thickness)) return;
    x0 = (int)floor(fx0 + 0.5); y0 = (int)floor(fy0 + 0.5);
    x1 = (int)floor(fx1 + 0.5); y1 = (int)floor(fy1 + 0.5);
    dx = x1 > x0 ? x1 - x0 : x0 - x1; sx = x0 < x1 ? 1 : -1;
    dy = y1 > y0 ? y0 - y1 : y1 - y0; sy = y0 < y1 ? 1 : -1;   /* dy = -|y1 - y0| */
    e = dx + dy;
    for (;;) {
        moexc__fill(c, k, x0 - half, y0 - half, x0 - half + thickness, y0 - half + thickness, color, 255);
        if (x0 == x1 && y0 == y1) break;
        e2 = 2 * e;
        if (e2 >= dy) { e += dy; x0 += sx; }
        if (e2 <= dx) { e += dx; y0 += sy; }
    }
}

MOEXC_DEF void moexc_draw_line(moexc_canvas *c, int x0, int y0, int x1, int y1, int thickness, uint32_t color)
{
    moexc__line(c, moexc__canvas_clip(c), x0, y0, x1, y1, thickness, color);
}

/* ---- the built-in font ------------------------------------------------------ */
/* 5 x 9 glyphs for ASCII 32..126, drawn for moexc: rows 0..6 above the
   baseline (capitals and digits are 7 tall), rows 7..8 for descenders.
   One byte per row, bit 4 is the leftmost column. Advance 6, line 10. */
#define MOEXC__GLYPH_W 5
#define MOEXC__GLYPH_H 9
#define MOEXC__CELL_W 6
static const unsigned char moexc__font[95][MOEXC__GLYPH_H] = {
    {0x00,0x00,0x00,0x00,0x00,0x00,0x00,0x00,0x00},  /*   */
    {0x04,0x04,0x04,0x04,0x04,0x00,0x04,0x00,0x00},  /* ! */
    {0x0A,0x0A,0x0A,0x00,0x00,0x00,0x00,0x00,0x00},  /* " */
    {0x0A,0x0A,0x1F,0x0A,0x1F,0x0A,0x0A,0x00,0x00},  /* # */
    {0x04,0x0F,0x14,0x0E,0x05,0x1E,0x04,0x00,0x00},  /* $ */
    {0x18,0x19,0x02,0x04,0x08,0x13,0x03,0x00,0x00},  /* % */
    {0x0C,0x12,0x14,0x08,0x15,0x12,0x0D,0x00,0x00},  /* & */
    {0x04,0x04,0x08,0x00,0x00,0x00,0x00,0x00,0x00},  /* quote */
    {0x02,0x04,0x08,0x08,0x08,0x04,0x02,0x00,0x00},  /* ( */
    {0x08,0x04,0x02,0x02,0x02,0x04,0x08,0x00,0x00},  /* ) */
    {0x00,0x04,0x15,0x0E,0x15,0x04,0x00,0x00,0x00},  /* * */
    {0x00,0x04,0x04,0x1F,0x04,0x04,0x00,0x00,0x00},  /* + */
    {0x00,0x00,0x00,0x00,0x00,0x0C,0x0C,0x04,0x08},  /* , */
    {0x00,0x00,0x00,0x0E,0x00,0x00,0x00,0x00,0x00},  /* - */
    {0x00,0x00,0x00,0x00,0x00,0x0C,0x0C,0x00,0x00},  /* . */
    {0x01,0x01,0x02,0x04,0x08,0x10,0x10,0x00,0x00},  /* / */
    {0x0E,0x11,0x13,0x15,0x19,0x11,0x0E,0x00,0x00},  /* 0 */
    {0x04,0x0C,0x04,0x04,0x04,0x04,0x0E,0x00,0x00},  /* 1 */
    {0x0E,0x11,0x01,0x02,0x04,0x08,0x1F,0x00,0x00},  /* 2 */
    {0x1F,0x02,0x04,0x02,0x01,0x11,0x0E,0x00,0x00},  /* 3 */
    {0x02,0x06,0x0A,0x12,0x1F,0x02,0x02,0x00,0x00},  /* 4 */
    {0x1F,0x10,0x1E,0x01,0x01,0x11,0x0E,0x00,0x00},  /* 5 */
    {0x06,0x08,0x10,0x1E,0x11,0x11,0x0E,0x00,0x00},  /* 6 */
    {0x1F,0x01,0x02,0x04,0x08,0x08,0x08,0x00,0x00},  /* 7 */
    {0x0E,0x11,0x11,0x0E,0x11,0x11,0x0E,0x00,0x00},  /* 8 */
    {0x0E,0x11,0x11,0x0F,0x01,0x02,0x0C,0x00,0x00},  /* 9 */
    {0x00,0x0C,0x0C,0x00,0x00,0x0C,0x0C,0x00,0x00},  /* : */
    {0x00,0x0C,0x0C,0x00,0x00,0x0C,0x0C,0x04,0x08},  /* ; */
    {0x02,0x04,0x08,0x10,0x08,0x04,0x02,0x00,0x00},  /* < */
    {0x00,0x00,0x1F,0x00,0x1F,0x00,0x00,0x00,0x00},  /* = */
    {0x08,0x04,0x02,0x01,0x02,0x04,0x08,0x00,0x00},  /* > */
    {0x0E,0x11,0x01,0x02,0x04,0x00,0x04,0x00,0x00},  /* ? */
    {0x0E,0x11,0x17,0x15,0x17,0x10,0x0F,0x00,0x00},  /* @ */
    {0x0E,0x11,0x11,0x1F,0x11,0x11,0x11,0x00,0x00},  /* A */
    {0x1E,0x11,0x11,0x1E,0x11,0x11,0x1E,0x00,0x00},  /* B */
    {0x0E,0x11,0x10,0x10,0x10,0x11,0x0E,0x00,0x00},  /* C */
    {0x1E,0x11,0x11,0x11,0x11,0x11,0x1E,0x00,0x00},  /* D */
    {0x1F,0x10,0x10,0x1E,0x10,0x10,0x1F,0x00,0x00},  /* E */
    {0x1F,0x10,0x10,0x1E,0x10,0x10,0x10,0x00,0x00},  /* F */
    {0x0E,0x11,0x10,0x17,0x11,0x11,0x0F,0x00,0x00},  /* G */
    {0x11,0x11,0x11,0x1F,0x11,0x11,0x11,0x00,0x00},  /* H */
    {0x0E,0x04,0x04,0x04,0x04,0x04,0x0E,0x00,0x00},  /* I */
    {0x07,0x02,0x02,0x02,0x02,0x12,0x0C,0x00,0x00},  /* J */
    {0x11,0x12,0x14,0x18,0x14,0x12,0x11,0x00,0x00},  /* K */
    {0x10,0x10,0x10,0x10,0x10,0x10,0x1F,0x00,0x00},  /* L */
    {0x11,0x1B,0x15,0x15,0x11,0x11,0x11,0x00,0x00},  /* M */
    {0x11,0x11,0x19,0x15,0x13,0x11,0x11,0x00,0x00},  /* N */
    {0x0E,0x11,0x11,0x11,0x11,0x11,0x0E,0x00,0x00},  /* O */
    {0x1E,0x11,0x11,0x1E,0x10,0x10,0x10,0x00,0x00},  /* P */
    {0x0E,0x11,0x11,0x11,0x15,0x12,0x0D,0x00,0x00},  /* Q */
    {0x1E,0x11,0x11,0x1E,0x14,0x12,0x11,0x00,0x00},  /* R */
    {0x0F,0x10,0x10,0x0E,0x01,0x01,0x1E,0x00,0x00},  /* S */
    {0x1F,0x04,0x04,0x04,0x04,0x04,0x04,0x00,0x00},  /* T */
    {0x11,0x11,0x11,0x11,0x11,0x11,0x0E,0x00,0x00},  /* U */
    {0x11,0x11,0x11,0x11,0x11,0x0A,0x04,0x00,0x00},  /* V */
    {0x11,0x11,0x11,0x15,0x15,0x15,0x0A,0x00,0x00},  /* W */
    {0x11,0x11,0x0A,0x04,0x0A,0x11,0x11,0x00,0x00},  /* X */
    {0x11,0x11,0x0A,0x04,0x04,0x04,0x04,0x00,0x00},  /* Y */
    {0x1F,0x01,0x02,0x04,0x08,0x10,0x1F,0x00,0x00},  /* Z */
    {0x0E,0x08,0x08,0x08,0x08,0x08,0x0E,0x00,0x00},  /* [ */
    {0x10,0x10,0x08,0x04,0x02,0x01,0x01,0x00,0x00},  /* backslash */
    {0x0E,0x02,0x02,0x02,0x02,0x02,0x0E,0x00,0x00},  /* ] */
    {0x04,0x0A,0x11,0x00,0x00,0x00,0x00,0x00,0x00},  /* ^ */
    {0x00,0x00,0x00,0x00,0x00,0x00,0x00,0x1F,0x00},  /* _ */
    {0x08,0x04,0x00,0x00,0x00,0x00,0x00,0x00,0x00},  /* ` */
    {0x00,0x00,0x0E,0x01,0x0F,0x11,0x0F,0x00,0x00},  /* a */
    {0x10,0x10,0x1E,0x11,0x11,0x11,0x1E,0x00,0x00},  /* b */
    {0x00,0x00,0x0E,0x10,0x10,0x11,0x0E,0x00,0x00},  /* c */
    {0x01,0x01,0x0F,0x11,0x11,0x11,0x0F,0x00,0x00},  /* d */
    {0x00,0x00,0x0E,0x11,0x1F,0x10,0x0E,0x00,0x00},  /* e */
    {0x06,0x09,0x08,0x1C,0x08,0x08,0x08,0x00,0x00},  /* f */
    {0x00,0x00,0x0F,0x11,0x11,0x11,0x0F,0x01,0x0E},  /* g */
    {0x10,0x10,0x16,0x19,0x11,0x11,0x11,0x00,0x00},  /* h */
    {0x04,0x00,0x0C,0x04,0x04,0x04,0x0E,0x00,0x00},  /* i */
    {0x02,0x00,0x06,0x02,0x02,0x02,0x02,0x12,0x0C},  /* j */
    {0x10,0x10,0x12,0x14,0x18,0x14,0x12,0x00,0x00},  /* k */
    {0x0C,0x04,0x04,0x04,0x04,0x04,0x0E,0x00,0x00},  /* l */
    {0x00,0x00,0x1A,0x15,0x15,0x15,0x15,0x00,0x00},  /* m */
    {0x00,0x00,0x16,0x19,0x11,0x11,0x11,0x00,0x00},  /* n */
    {0x00,0x00,0x0E,0x11,0x11,0x11,0x0E,0x00,0x00},  /* o */
    {0x00,0x00,0x1E,0x11,0x11,0x11,0x1E,0x10,0x10},  /* p */
    {0x00,0x00,0x0F,0x11,0x11,0x11,0x0F,0x01,0x01},  /* q */
    {0x00,0x00,0x16,0x19,0x10,0x10,0x10,0x00,0x00},  /* r */
    {0x00,0x00,0x0F,0x10,0x0E,0x01,0x1E,0x00,0x00},  /* s */
    {0x08,0x08,0x1C,0x08,0x08,0x09,0x06,0x00,0x00},  /* t */
    {0x00,0x00,0x11,0x11,0x11,0x13,0x0D,0x00,0x00},  /* u */
    {0x00,0x00,0x11,0x11,0x11,0x0A,0x04,0x00,0x00},  /* v */
    {0x00,0x00,0x11,0x11,0x15,0x15,0x0A,0x00,0x00},  /* w */
    {0x00,0x00,0x11,0x0A,0x04,0x0A,0x11,0x00,0x00},  /* x */
    {0x00,0x00,0x11,0x11,0x11,0x11,0x0F,0x01,0x0E},  /* y */
    {0x00,0x00,0x1F,0x02,0x04,0x08,0x1F,0x00,0x00},  /* z */
    {0x02,0x04,0x04,0x08,0x04,0x04,0x02,0x00,0x00},  /* { */
    {0x04,0x04,0x04,0x04,0x04,0x04,0x04,0x04,0x00},  /* | */
    {0x08,0x04,0x04,0x02,0x04,0x04,0x08,0x00,0x00},  /* } */
    {0x00,0x00,0x08,0x15,0x02,0x00,0x00,0x00,0x00},  /* ~ */

};

MOEXC_DEF int moexc_text_width(const char *text, int scale)
{
    size_t n = text ? strlen(text) : 0;
    if (scale < 1) scale = 1;
    return n ? (int)n * MOEXC__CELL_W * scale - scale : 0;
}

MOEXC_DEF int moexc_text_height(int scale) { return MOEXC__GLYPH_H * (scale < 1 ? 1 : scale); }

/* Draw text; vertical != 0 rotates it 90 degrees counter-clockwise inside
   a box (text height wide, text width tall) whose top-left is (x, y). */
static int moexc__text(moexc_canvas *c, moexc__clip k, int x, int y, const char *text, int scale, uint32_t color, int vertical)
{
    int w = moexc_text_width(text, scale), pen = 0, row, col;
    if (scale < 1) scale = 1;
    for (; text && *text; text++, pen += MOEXC__CELL_W * scale) {
        unsigned char ch = (unsigned char)*text;
        const unsigned char *glyph = moexc__font[(ch >= 32 && ch <= 126 ? ch : '?') - 32];
        for (row = 0; row < MOEXC__GLYPH_H; row++)
            for (col = 0; col < MOEXC__GLYPH_W; col++) {
                int gx, gy;
                if (!(glyph[row] & (0x10 >> col))) continue;
                gx = pen + col * scale; gy = row * scale;
                if (!vertical) moexc__fill(c, k, x + gx, y + gy, x + gx + scale, y + gy + scale, color, 255);
                else moexc__fill(c, k, x + gy, y + w - gx - scale, x + gy + scale, y + w - gx, color, 255);
            }
    }
    return w;
}

MOEXC_DEF int moexc_draw_text(moexc_canvas *c, int x, int y, const char *text, int scale, uint32_t color)
{
    return moexc__text(c, moexc__canvas_clip(c), x, y, text, scale, color, 0);
}

MOEXC_DEF int moexc_draw_text_vertical(moexc_canvas *c, int x, int y, const char *text, int scale, uint32_t color)
{
    return moexc__text(c, moexc__canvas_clip(c), x, y, text, scale, color, 1);
}

/* ---- colours ---------------------------------------------------------------- */
MOEXC_DEF uint32_t moexc_palette(int i)
{
    /* Okabe & Ito (2008), distinguishable under the common colour-vision deficiencies. */
    static const uint32_t okabe_ito[8] = { 0x0072B2u, 0xD55E00u, 0x009E73u, 0xE69F00u,
                                           0xCC79A7u, 0x56B4E9u, 0xF0E442u, 0x000000u };
    return okabe_ito[((i % 8) + 8) % 8];
}

MOEXC_DEF uint32_t moexc_colormap_viridis(double t)
{
    /* matplotlib's viridis at 9 evenly spaced points, linearly interpolated. */
    static const uint32_t stops[9] = { 0x440154u, 0x472D7Bu, 0x3B528Bu, 0x2C728Eu, 0x21918Cu,
                                       0x28AE80u, 0x5EC962u, 0xADDC30u, 0xFDE725u };
    double u;
    int i, ch;
    uint32_t out = 0;
    if (!(t > 0.0)) t = 0.0;     /* NaN -> 0 */
    if (t > 1.0) t = 1.0;
    u = t * 8.0;
    i = (int)u;
    if (i >= 8) i = 7;
    u -= i;
    for (ch = 16; ch >= 0; ch -= 8) {
        double a = (double)((stops[i] >> ch) & 0xFF), b = (double)((stops[i + 1] >> ch) & 0xFF);
        out |= (uint32_t)(a + (b - a) * u + 0.5) << ch;
    }
    return out;
}

/* ---- ticks ------------------------------------------------------------------ */
/* Step 1, 2 or 5 x 10^n closest to range / target. */
static double moexc__nice_step(double range, int target)
{
    double raw = range / (double)(target > 0 ? target : 5), mag, norm;
    if (!(raw > 0.0)) return 1.0;
    mag = pow(10.0, floor(log10(raw)));
    norm = raw / mag;
    return (norm < 1.5 ? 1.0 : norm < 3.0 ? 2.0 : norm < 7.0 ? 5.0 : 10.0) * mag;
}

MOEXC_DEF int moexc_nice_ticks(double lo, double hi, int target_count, double *ticks, int max_ticks)
{
    double step, k, first, last;
    int n = 0;
    if (max_ticks <= 0 || lo != lo || hi != hi) return 0;
    if (!(hi > lo)) { ticks[0] = lo; return 1; }
    step = moexc__nice_step(hi - lo, target_count);
    first = ceil(lo / step - 1e-9);
    last = floor(hi / step + 1e-9);
    for (k = first; k <= last && n < max_ticks; k += 1.0) {
        double v = k * step;
        ticks[n++] = fabs(v) < step * 1e-9 ? 0.0 : v;
    }
    return n;
}

/* ---- frames: a plot area with axes, ticks, labels, title ------------------ */
#define MOEXC__MAX_TICKS 40
typedef struct moexc__axis {
    double lo, hi;
    int    log10_axis;
    int    whole;                      /* the data are whole numbers: no tick step under 1 */
    int    n_ticks;
    double ticks[MOEXC__MAX_TICKS];
    double step;                       /* linear tick step (decimals of the labels) */
} moexc__axis;

typedef struct moexc__frame {
    moexc_canvas *c;
    int           s;                   /* font scale */
    int           rx, ry, rw, rh;      /* region of the canvas */
    int           left, top, right, bottom;   /* plot area [left, right) x [top, bottom) */
    moexc__axis   x, y;
    moexc__clip   area;
} moexc__frame;

#define MOEXC__INK   0x222222u
#define MOEXC__GRID  0xE6E6E6u

static void moexc__axis_ticks(moexc__axis *a, int target)
{
    a->n_ticks = 0;
    a->step = 1.0;
    if (a->log10_axis) {
        int e0 = (int)ceil(log10(a->lo) - 1e-9), e1 = (int)floor(log10(a->hi) + 1e-9), every = 1, e;
        while ((e1 - e0) / every + 1 > 8) every++;
        for (e = e0; e <= e1 && a->n_ticks < MOEXC__MAX_TICKS; e++)
            if ((e - e0) % every == 0) a->ticks[a->n_ticks++] = pow(10.0, (double)e);
    } else {
        a->n_ticks = moexc_nice_ticks(a->lo, a->hi, target, a->ticks, MOEXC__MAX_TICKS);
        a->step = moexc__nice_step(a->hi - a->lo, target);
        if (a->whole && a->step < 1.0) {   /* layers, k', counts: 0 1 2 3, not 0 0.5 1 */
            double v;
            a->n_ticks = 0;
            a->step = 1.0;
            for (v = ceil(a->lo - 1e-9); v <= a->hi + 1e-9 && a->n_ticks < MOEXC__MAX_TICKS; v += 1.0)
                a->ticks[a->n_ticks++] = v;
        }
    }
}

/* Position in [0, 1] of v along the axis. */
static double moexc__axis_t(const moexc__axis *a, double v)
{
    if (a->log10_axis) {
        if (!(v > 0.0)) return -1e9;
        return (log10(v) - log10(a->lo)) / (log10(a->hi) - log10(a->lo));
    }
    return (v - a->lo) / (a->hi - a->lo);
}

static int moexc__px_round(double v)
{
    if (v > 1e8) return 100000000;
    if (v < -1e8) return -100000000;
    return (int)floor(v + 0.5);
}
static int moexc__frame_px(const moexc__frame *f, double v)
{
    return moexc__px_round(f->left + moexc__axis_t(&f->x, v) * (double)(f->right - 1 - f->left));
}
static int moexc__frame_py(const moexc__frame *f, double v)
{
    return moexc__px_round((f->bottom - 1) - moexc__axis_t(&f->y, v) * (double)(f->bottom - 1 - f->top));
}

/* Tick label: linear "%.*f" with the decimals its step needs; log axes
   write 10 with a superscript exponent (exp non-empty). */
static void moexc__tick_label(const moexc__axis *a, double v, char *base, char *exp, size_t size)
{
    exp[0] = 0;
    if (a->log10_axis) {
        int e = (int)floor(log10(v) + 0.5);
        snprintf(base, size, "10");
        snprintf(exp, size, "%d", e);
        return;
    }
    if (fabs(v) >= 1e6 || (fabs(v) < 1e-4 && v != 0.0)) { snprintf(base, size, "%.2g", v); return; }
    {
        int decimals = a->step >= 1.0 ? 0 : (int)ceil(-log10(a->step) - 1e-9);
        snprintf(base, size, "%.*f", decimals, v == 0.0 ? 0.0 : v);
    }
}

static int moexc__label_width(const char *base, const char *exp, int s)
{
    int se = s > 1 ? s - 1 : 1;
    return moexc_text_width(base, s) + (exp[0] ? s + moexc_text_width(exp, se) : 0);
}

/* Draw a tick label with its top-left at (x, y); the exponent is raised. */
static void moexc__draw_label(moexc_canvas *c, int x, int y, const char *base, const char *exp, int s, uint32_t color)
{
    int se = s > 1 ? s - 1 : 1;
    int w = moexc_draw_text(c, x, y, base, s, color);
    if (exp[0]) moexc_draw_text(c, x + w + s, y - 3 * s, exp, se, color);
}

/* Lay out a frame in the option's region: margins for the title, axis titles
   and tick labels; extra_right leaves room for a colour bar or legend. */
static void moexc__frame_init(moexc__frame *f, moexc_canvas *c, const moexc_plot_options *o, int extra_right)
{
    int s, pad, gap, tick, th, i, max_yw = 0, last_xw = 0;
    char base[64], exp[16];
    f->c = c;
    f->s = s = o->font_scale > 0 ? o->font_scale : 2;
    f->rx = o->width > 0 ? o->x : 0;
    f->ry = o->width > 0 ? o->y : 0;
    f->rw = o->width > 0 ? o->width : c->width;
    f->rh = o->width > 0 && o->height > 0 ? o->height : c->height - f->ry;
    pad = 5 * s; gap = 3 * s; tick = 3 * s; th = moexc_text_height(s);
    moexc__axis_ticks(&f->x, 6);
    moexc__axis_ticks(&f->y, 5);
    for (i = 0; i < f->y.n_ticks; i++) {
        moexc__tick_label(&f->y, f->y.ticks[i], base, exp, sizeof(base));
        max_yw = MOEXC__MAX(max_yw, moexc__label_width(base, exp, s));
    }
    if (f->x.n_ticks > 0) {
        moexc__tick_label(&f->x, f->x.ticks[f->x.n_ticks - 1], base, exp, sizeof(base));
        last_xw = moexc__label_width(base, exp, s);
    }
    /* the top y label sticks out half a line above the frame, its exponent more */
    f->top = f->ry + pad + (o->title ? moexc_text_height(s + 1) + 2 * gap : 0) + (f->y.log10_axis ? 7 * s : 4 * s);
    f->left = f->rx + pad + (o->y_label ? th + 2 * gap : 0) + max_yw + gap + tick;
    f->bottom = f->ry + f->rh - pad - (o->x_label ? th + 2 * gap : 0) - th - gap - tick;
    f->right = f->rx + f->rw - pad - MOEXC__MAX(extra_right, last_xw / 2);
    if (f->right < f->left + 10) f->right = f->left + 10;
    if (f->bottom < f->top + 10) f->bottom = f->top + 10;
    f->area.x0 = f->left; f->area.y0 = f->top; f->area.x1 = f->right; f->area.y1 = f->bottom;
}

static void moexc__frame_background(const moexc__frame *f)
{
    int i;
    moexc__clip k = moexc__canvas_clip(f->c);
    moexc__fill(f->c, k, f->rx, f->ry, f->rx + f->rw, f->ry + f->rh, 0xFFFFFFu, 255);
    for (i = 0; i < f->y.n_ticks; i++) {   /* light horizontal grid */
        int y = moexc__frame_py(f, f->y.ticks[i]);
        moexc__fill(f->c, f->area, f->left, y, f->right, y + 1, MOEXC__GRID, 255);
    }
}

static void moexc__draw_title(const moexc__frame *f, const moexc_plot_options *o)
{
    int s = f->s, pad = 5 * s, gap = 3 * s, th = moexc_text_height(s);
    int cx = (f->left + f->right) / 2;
    if (o->title) {
        /* a title too wide for the region drops a scale, then is cut with "..." */
        char buf[256];
        int ts = s + 1, avail = f->rw - 2 * pad, w, x, n;
        snprintf(buf, sizeof(buf), "%s", o->title);
        if (moexc_text_width(buf, ts) > avail && ts > 1) ts--;
        n = (int)strlen(buf);
        while (n > 3 && moexc_text_width(buf, ts) > avail) { n--; memcpy(buf + n - 3, "...", 4); }
        w = moexc_text_width(buf, ts);
        x = MOEXC__MAX(cx - w / 2, f->rx + pad);
        if (x + w > f->rx + f->rw - pad) x = f->rx + f->rw - pad - w;
        moexc_draw_text(f->c, x, f->ry + pad + gap / 2 + (s + 1 - ts) * 9 / 2, buf, ts, MOEXC__INK);
    }
    if (o->x_label) {
        int w = moexc_text_width(o->x_label, s);
        moexc_draw_text(f->c, cx - w / 2, f->ry + f->rh - pad - th, o->x_label, s, MOEXC__INK);
    }
    if (o->y_label) {
        int h = moexc_text_width(o->y_label, s);
        moexc_draw_text_vertical(f->c, f->rx + pad, (f->top + f->bottom) / 2 - h / 2, o->y_label, s, MOEXC__INK);
    }
}

/* Frame box, ticks (with minor ticks on log axes), tick labels, titles. */
static void moexc__frame_decorate(const moexc__frame *f, const moexc_plot_options *o)
{
    int s = f->s, tick = 3 * s, gap = 3 * s, lw = s > 2 ? 2 : 1, i, cap = 7 * s;
    char base[64], exp[16];
    moexc__clip k = moexc__canvas_clip(f->c);
    moexc_draw_rect_outline(f->c, f->left - lw, f->top - lw, f->right + lw, f->bottom + lw, lw, MOEXC__INK);
    for (i = 0; i < f->x.n_ticks; i++) {
        int x = moexc__frame_px(f, f->x.ticks[i]), w;
        moexc__fill(f->c, k, x - (lw - 1) / 2 - (lw > 1), f->bottom + lw, x + 1 + (lw - 1) / 2, f->bottom + lw + tick, MOEXC__INK, 255);
        moexc__tick_label(&f->x, f->x.ticks[i], base, exp, sizeof(base));
        w = moexc__label_width(base, exp, s);
        moexc__draw_label(f->c, x - w / 2, f->bottom + lw + tick + gap + (exp[0] ? 2 * s : 0), base, exp, s, MOEXC__INK);
    }
    for (i = 0; i < f->y.n_ticks; i++) {
        int y = moexc__frame_py(f, f->y.ticks[i]), w;
        moexc__fill(f->c, k, f->left - lw - tick, y - (lw - 1) / 2 - (lw > 1), f->left - lw, y + 1 + (lw - 1) / 2, MOEXC__INK, 255);
        moexc__tick_label(&f->y, f->y.ticks[i], base, exp, sizeof(base));
        w = moexc__label_width(base, exp, s);
        moexc__draw_label(f->c, f->left - lw - tick - gap - w, y - cap / 2, base, exp, s, MOEXC__INK);
    }
    /* minor ticks at 2..9 x 10^n on log axes */
    if (f->x.log10_axis) {
        double d;
        int m;
        for (d = pow(10.0, floor(log10(f->x.lo))); d < f->x.hi; d *= 10.0)
            for (m = 2; m <= 9; m++) {
                double v = d * m;
                int x;
                if (v < f->x.lo || v > f->x.hi) continue;
                x = moexc__frame_px(f, v);
                moexc__fill(f->c, k, x, f->bottom + lw, x + 1, f->bottom + lw + tick / 2 + 1, MOEXC__INK, 255);
            }
    }
    if (f->y.log10_axis) {
        double d;
        int m;
        for (d = pow(10.0, floor(log10(f->y.lo))); d < f->y.hi; d *= 10.0)
            for (m = 2; m <= 9; m++) {
                double v = d * m;
                int y;
                if (v < f->y.lo || v > f->y.hi) continue;
                y = moexc__frame_py(f, v);
                moexc__fill(f->c, k, f->left - lw - tick / 2 - 1, y, f->left - lw, y + 1, MOEXC__INK, 255);
            }
    }
    moexc__draw_title(f, o);
}

/* ---- legends ------------------------------------------------------------------ */
enum { MOEXC__SWATCH_BOX = 0, MOEXC__SWATCH_LINE = 1, MOEXC__SWATCH_BAND = 2 };
typedef struct moexc__legend_item { const char *label; uint32_t color; int kind; } moexc__legend_item;
#define MOEXC__BAND_ALPHA 60

/* The legend box in the top-right (or top-left) corner inside the plot area. */
static moexc__clip moexc__legend_box(const moexc__frame *f, const moexc__legend_item *items, int n, int at_left)
{
    int s = f->s, pad = 3 * s, sw = 8 * s, row = moexc_text_height(s) + 2 * s, w = 0, i;
    moexc__clip b;
    for (i = 0; i < n; i++) w = MOEXC__MAX(w, moexc_text_width(items[i].label ? items[i].label : "", s));
    w += 2 * pad + sw + 2 * s;
    b.x0 = at_left ? f->left + 3 * s : f->right - 3 * s - w;
    b.y0 = f->top + 3 * s;
    b.x1 = b.x0 + w;
    b.y1 = b.y0 + 2 * pad + n * row - 2 * s;
    return b;
}

static void moexc__legend(const moexc__frame *f, const moexc__legend_item *items, int n, int at_left)
{
    int s = f->s, pad = 3 * s, sw = 8 * s, row = moexc_text_height(s) + 2 * s, i;
    moexc__clip k = moexc__canvas_clip(f->c), b = moexc__legend_box(f, items, n, at_left);
    if (n <= 0) return;
    moexc__fill(f->c, k, b.x0, b.y0, b.x1, b.y1, 0xFFFFFFu, 235);
    moexc_draw_rect_outline(f->c, b.x0, b.y0, b.x1, b.y1, 1, 0xBBBBBBu);
    for (i = 0; i < n; i++) {
        int x = b.x0 + pad, y = b.y0 + pad + i * row, cy = y + 7 * s / 2;
        if (items[i].kind == MOEXC__SWATCH_LINE)
            moexc__fill(f->c, k, x, cy - s / 2 - 1, x + sw, cy + s / 2 + 1, items[i].color, 255);
        else {
            moexc__fill(f->c, k, x, y, x + sw, y + 7 * s, items[i].color,
                        items[i].kind == MOEXC__SWATCH_BAND ? MOEXC__BAND_ALPHA : 255);
            if (items[i].kind == MOEXC__SWATCH_BAND)
                moexc_draw_rect_outline(f->c, x, y, x + sw, y + 7 * s, 1, items[i].color);
        }
        moexc_draw_text(f->c, x + sw + 2 * s, y, items[i].label ? items[i].label : "", s, MOEXC__INK);
    }
}

/* Legend placement: copy both candidate corners before the data is drawn,
   then put the legend where the data changed fewer pixels. */
typedef struct moexc__legend_snap { moexc__clip box[2]; unsigned char *pix[2]; } moexc__legend_snap;

static void moexc__legend_snap_take(moexc__legend_snap *sn, const moexc__frame *f, const moexc__legend_item *items, int n)
{
    int side, y;
    for (side = 0; side < 2; side++) {
        moexc__clip b = moexc__legend_box(f, items, n, side);
        b.x0 = MOEXC__MAX(b.x0, 0); b.y0 = MOEXC__MAX(b.y0, 0);
        b.x1 = MOEXC__MIN(b.x1, f->c->width); b.y1 = MOEXC__MIN(b.y1, f->c->height);
        sn->box[side] = b;
        sn->pix[side] = NULL;
        if (n <= 0 || b.x1 <= b.x0 || b.y1 <= b.y0) continue;
        sn->pix[side] = (unsigned char *)moexc__malloc((size_t)(b.x1 - b.x0) * (size_t)(b.y1 - b.y0) * 3);
        if (!sn->pix[side]) continue;
        for (y = b.y0; y < b.y1; y++)
            memcpy(sn->pix[side] + (size_t)(y - b.y0) * (size_t)(b.x1 - b.x0) * 3,
                   f->c->rgb + ((size_t)y * (size_t)f->c->width + (size_t)b.x0) * 3, (size_t)(b.x1 - b.x0) * 3);
    }
}

/* 1 for top-left when it is clearly emptier than top-right; frees the copies. */
static int moexc__legend_snap_pick(moexc__legend_snap *sn, const moexc_canvas *c)
{
    long changed[2] = { 0, 0 };
    int side, x, y, left = 0;
    for (side = 0; side < 2; side++) {
        moexc__clip b = sn->box[side];
        if (!sn->pix[side]) { changed[side] = side ? 1L << 30 : 0; continue; }
        for (y = b.y0; y < b.y1; y++)
            for (x = b.x0; x < b.x1; x++) {
                const unsigned char *p = c->rgb + ((size_t)y * (size_t)c->width + (size_t)x) * 3;
                const unsigned char *q = sn->pix[side] + ((size_t)(y - b.y0) * (size_t)(b.x1 - b.x0) + (size_t)(x - b.x0)) * 3;
                changed[side] += p[0] != q[0] || p[1] != q[1] || p[2] != q[2];
            }
        moexc__free(sn->pix[side]);
        sn->pix[side] = NULL;
    }
    if (changed[1] < changed[0]) left = 1;
    return left;
}

/* Resolve the range of an axis: the option's when set, else the data's. */
static void moexc__pick_range(double opt_lo, double opt_hi, double *lo, double *hi)
{
    if (opt_lo != 0.0 || opt_hi != 0.0) { *lo = opt_lo; *hi = opt_hi; }
}

static moexc_status moexc__check_axis(const moexc__axis *a, const char *which, moexc_error *err)
{
    if (!(a->hi > a->lo) || a->lo - a->lo != 0.0 || a->hi - a->hi != 0.0 || (a->log10_axis && !(a->lo > 0.0)))
        return moexc__fail(err, MOEXC_ERR_ARG, "plot: %s range [%g, %g] is empty or invalid%s", which, a->lo, a->hi,
                           a->log10_axis ? " (log axis needs lo > 0)" : "");
    return MOEXC_OK;
}

/* Data range to a padded range; log axes snap outwards to decades. */
static void moexc__auto_range(double mn, double mx, int log10_axis, int from_zero, double *lo, double *hi)
{
    if (log10_axis) {
        if (!(mn > 0.0)) mn = mx > 0.0 ? mx * 1e-3 : 0.1;
        if (!(mx > 0.0)) mx = 1.0;
        *lo = pow(10.0, floor(log10(mn) + 1e-9));
        *hi = pow(10.0, ceil(log10(mx) - 1e-9));
        if (*hi <= *lo) *hi = *lo * 10.0;
        return;
    }
    if (from_zero) mn = MOEXC__MIN(mn, 0.0);
    if (!(mx > mn)) { mx = mn + 1.0; }
    {
        double step = moexc__nice_step(mx - mn, 5);
        *lo = from_zero && mn >= 0.0 ? 0.0 : floor(mn / step + 1e-9) * step;
        *hi = ceil(mx / step - 1e-9) * step;
        if (from_zero && *hi < mx * 1.04) *hi += step;   /* headroom above the tallest bar */
    }
}

/* ---- histograms ------------------------------------------------------------- */
static double moexc__hist_value(const moexc_histogram *h, int i, int normalize)
{
    int64_t in_range = h->total - h->nan_count;
    if (!normalize) return (double)h->counts[i];
    return in_range > 0 ? (double)h->counts[i] / (double)in_range : 0.0;
}

MOEXC_DEF moexc_status moexc_plot_histograms(moexc_canvas *c, const moexc_histogram *hists, int n_hists,
                                             const char *const *labels, const uint32_t *colors,
                                             const moexc_band *bands, int n_bands,
                                             const moexc_plot_options *opt, moexc_error *err)
{
    moexc_plot_options o;
    moexc__frame f;
    moexc__legend_item items[32];
    moexc__legend_snap snap;
    int n_items = 0, h, i;
    double vmin = HUGE_VAL, vmax = 0.0;
    moexc_status st;
    if (!c || !c->rgb || !hists || n_hists <= 0)
        return moexc__fail(err, MOEXC_ERR_ARG, "plot_histograms: need a canvas and at least one histogram");
    for (h = 1; h < n_hists; h++)
        if (hists[h].n_bins != hists[0].n_bins || hists[h].lo != hists[0].lo || hists[h].hi != hists[0].hi ||
            hists[h].log10_axis != hists[0].log10_axis)
            return moexc__fail(err, MOEXC_ERR_ARG, "plot_histograms: histogram %d has a different binning than histogram 0", h);
    memset(&o, 0, sizeof(o));
    if (opt) o = *opt;
    memset(&f, 0, sizeof(f));
    for (h = 0; h < n_hists; h++)
        for (i = 0; i < hists[h].n_bins; i++) {
            double v = moexc__hist_value(&hists[h], i, o.normalize);
            vmax = MOEXC__MAX(vmax, v);
            if (v > 0.0) vmin = MOEXC__MIN(vmin, v);
        }
    f.x.log10_axis = hists[0].log10_axis;
    f.x.lo = hists[0].lo; f.x.hi = hists[0].hi;
    moexc__pick_range(o.x_min, o.x_max, &f.x.lo, &f.x.hi);
    f.y.log10_axis = o.log_y;
    if (o.log_y) {
        moexc__auto_range(vmin, vmax, 1, 0, &f.y.lo, &f.y.hi);
        f.y.hi = vmax > 0.0 ? vmax * 2.0 : 10.0;           /* headroom, no empty decade */
        if (!o.normalize && f.y.lo >= 1.0) f.y.lo = 0.5;   /* single counts stay visible */
    } else moexc__auto_range(0.0, vmax, 0, 1, &f.y.lo, &f.y.hi);
    moexc__pick_range(o.y_min, o.y_max, &f.y.lo, &f.y.hi);
    if ((st = moexc__check_axis(&f.x, "x", err)) != MOEXC_OK) return st;
    if ((st = moexc__check_axis(&f.y, "y", err)) != MOEXC_OK) return st;
    moexc__frame_init(&f, c, &o, 0);
    moexc__frame_background(&f);

    for (i = 0; i < n_bands; i++) {
        int x0 = moexc__frame_px(&f, MOEXC__MAX(bands[i].lo, f.x.lo)), x1 = moexc__frame_px(&f, MOEXC__MIN(bands[i].hi, f.x.hi));
        moexc__fill(c, f.area, x0, f.top, x1 + 1, f.bottom, bands[i].color, MOEXC__BAND_ALPHA);
        if (n_items < 32) { items[n_items].label = bands[i].label; items[n_items].color = bands[i].color;
                            items[n_items++].kind = MOEXC__SWATCH_BAND; }
    }
    for (h = 0; h < n_hists; h++)
        if (labels && labels[h] && n_items < 32) {
            items[n_items].label = labels[h]; items[n_items].color = colors ? colors[h] : moexc_palette(h);
            items[n_items++].kind = n_hists == 1 ? MOEXC__SWATCH_BOX : MOEXC__SWATCH_LINE;
        }
    if (!o.no_legend) moexc__legend_snap_take(&snap, &f, items, n_items);
    for (h = 0; h < n_hists; h++) {
        const moexc_histogram *hg = &hists[h];
        uint32_t color = colors ? colors[h] : moexc_palette(h);
        int prev_y = f.bottom, base = f.bottom;
        for (i = 0; i < hg->n_bins; i++) {
            double v = moexc__hist_value(hg, i, o.normalize);
            int x0 = moexc__frame_px(&f, moexc_histogram_edge(hg, i));
            int x1 = moexc__frame_px(&f, moexc_histogram_edge(hg, i + 1));
            int y = v > 0.0 && (!o.log_y || v >= f.y.lo) ? moexc__frame_py(&f, v) : base;
            if (y < f.top) y = f.top;
            if (n_hists == 1) {
                /* filled bars, a one-pixel gap between wide ones */
                if (y < base) moexc__fill(c, f.area, x0 + (x1 - x0 >= 4), y, x1, base, color, 255);
            } else {
                /* step outline: vertical riser, then the bin's top */
                int lw = f.s;
                moexc__line(c, f.area, x0, prev_y, x0, y, lw, color);
                moexc__line(c, f.area, x0, y, x1, y, lw, color);
                if (i == hg->n_bins - 1) moexc__line(c, f.area, x1, y, x1, base, lw, color);
                prev_y = y;
            }
        }
    }
    moexc__frame_decorate(&f, &o);
    if (!o.no_legend) moexc__legend(&f, items, n_items, moexc__legend_snap_pick(&snap, c));
    return MOEXC_OK;
}

/* ---- line charts -------------------------------------------------------------- */
MOEXC_DEF moexc_status moexc_plot_lines(moexc_canvas *c, const moexc_series *series, int n_series,
                                        const moexc_plot_options *opt, moexc_error *err)
{
    moexc_plot_options o;
    moexc__frame f;
    moexc__legend_item items[32];
    moexc__legend_snap snap;
    int n_items = 0, sidx, i, whole_x = 1;
    double xmin = HUGE_VAL, xmax = -HUGE_VAL, ymin = HUGE_VAL, ymax = -HUGE_VAL;
    moexc_status st;
    if (!c || !c->rgb || !series || n_series <= 0)
        return moexc__fail(err, MOEXC_ERR_ARG, "plot_lines: need a canvas and at least one series");
    memset(&o, 0, sizeof(o));
    if (opt) o = *opt;
    memset(&f, 0, sizeof(f));
    for (sidx = 0; sidx < n_series; sidx++)
        for (i = 0; i < series[sidx].n; i++) {
            double x = series[sidx].x ? series[sidx].x[i] : (double)i, y = series[sidx].y[i];
            if (x != x || y != y || (o.log_x && !(x > 0.0)) || (o.log_y && !(y > 0.0))) continue;
            xmin = MOEXC__MIN(xmin, x); xmax = MOEXC__MAX(xmax, x);
            ymin = MOEXC__MIN(ymin, y); ymax = MOEXC__MAX(ymax, y);
            whole_x &= x == floor(x);
        }
    if (xmin > xmax) return moexc__fail(err, MOEXC_ERR_ARG, "plot_lines: no finite points to plot");
    f.x.log10_axis = o.log_x; f.y.log10_axis = o.log_y;
    f.x.whole = whole_x;
    if (o.log_x) moexc__auto_range(xmin, xmax, 1, 0, &f.x.lo, &f.x.hi);
    else { f.x.lo = xmin; f.x.hi = xmax > xmin ? xmax : xmin + 1.0; }
    if (o.log_y) moexc__auto_range(ymin, ymax, 1, 0, &f.y.lo, &f.y.hi);
    else {
        double padding = (ymax - ymin) * 0.05;
        if (!(padding > 0.0)) padding = fabs(ymax) * 0.05 + 1e-3;
        moexc__auto_range(ymin - padding, ymax + padding, 0, 0, &f.y.lo, &f.y.hi);
    }
    moexc__pick_range(o.x_min, o.x_max, &f.x.lo, &f.x.hi);
    moexc__pick_range(o.y_min, o.y_max, &f.y.lo, &f.y.hi);
    if ((st = moexc__check_axis(&f.x, "x", err)) != MOEXC_OK) return st;
    if ((st = moexc__check_axis(&f.y, "y", err)) != MOEXC_OK) return st;
    moexc__frame_init(&f, c, &o, 0);
    moexc__frame_background(&f);
    for (sidx = 0; sidx < n_series; sidx++)
        if (series[sidx].label && n_items < 32) {
            items[n_items].label = series[sidx].label; items[n_items].color = moexc_palette(sidx);
            items[n_items++].kind = MOEXC__SWATCH_LINE;
        }
    if (!o.no_legend) moexc__legend_snap_take(&snap, &f, items, n_items);
    for (sidx = 0; sidx < n_series; sidx++) {
        const moexc_series *sr = &series[sidx];
        uint32_t color = moexc_palette(sidx);
        int have_prev = 0, px = 0, py = 0, lw = f.s;
        for (i = 0; i < sr->n; i++) {
            double x = sr->x ? sr->x[i] : (double)i, y = sr->y[i];
            int qx, qy;
            if (x != x || y != y || (o.log_x && !(x > 0.0)) || (o.log_y && !(y > 0.0))) { have_prev = 0; continue; }
            qx = moexc__frame_px(&f, x); qy = moexc__frame_py(&f, y);
            if (have_prev) moexc__line(c, f.area, px, py, qx, qy, lw, color);
            else moexc__fill(c, f.area, qx - lw / 2, qy - lw / 2, qx - lw / 2 + lw, qy - lw / 2 + lw, color, 255);
            px = qx; py = qy; have_prev = 1;
        }
    }
    moexc__frame_decorate(&f, &o);
    if (!o.no_legend) moexc__legend(&f, items, n_items, moexc__legend_snap_pick(&snap, c));
    return MOEXC_OK;
}

/* ---- heatmaps ----------------------------------------------------------------- */
MOEXC_DEF moexc_status moexc_plot_heatmap(moexc_canvas *c, const float *values, int rows, int cols,
                                          const char *const *row_labels, const char *const *col_labels,
                                          const moexc_plot_options *opt, moexc_error *err)
{
    moexc_plot_options o;
    moexc__frame f;
    moexc__axis z;
    const char *fmt;
    char buf[64], exp[16];
    int s, pad, gap, tick, th, cap, i, j, max_rw = 0, max_cw = 0, max_zw = 0, vertical_cols;
    int bar_w, extra_right, col_h, cell_w, cell_h, bar_x, lw;
    double zmin = HUGE_VAL, zmax = -HUGE_VAL;
    moexc__clip k;
    if (!c || !c->rgb || !values || rows <= 0 || cols <= 0)
        return moexc__fail(err, MOEXC_ERR_ARG, "plot_heatmap: need a canvas and values (rows=%d cols=%d)", rows, cols);
    memset(&o, 0, sizeof(o));
    if (opt) o = *opt;
    fmt = o.value_format ? o.value_format : "%.3g";
    for (i = 0; i < rows * cols; i++)
        if (values[i] == values[i]) { zmin = MOEXC__MIN(zmin, values[i]); zmax = MOEXC__MAX(zmax, values[i]); }
    if (zmin > zmax) { zmin = 0.0; zmax = 1.0; }
    if (o.z_min != 0.0 || o.z_max != 0.0) { zmin = o.z_min; zmax = o.z_max; }
    if (!(zmax > zmin)) zmax = zmin + 1.0;
    memset(&z, 0, sizeof(z));
    z.lo = zmin; z.hi = zmax;
    moexc__axis_ticks(&z, 5);

    memset(&f, 0, sizeof(f));
    s = o.font_scale > 0 ? o.font_scale : 2;
    pad = 5 * s; gap = 3 * s; tick = 3 * s; th = moexc_text_height(s); cap = 7 * s;
    for (i = 0; i < rows; i++) {
        if (row_labels && row_labels[i]) snprintf(buf, sizeof(buf), "%s", row_labels[i]);
        else snprintf(buf, sizeof(buf), "%d", i);
        max_rw = MOEXC__MAX(max_rw, moexc_text_width(buf, s));
    }
    for (j = 0; j < cols; j++) {
        if (col_labels && col_labels[j]) snprintf(buf, sizeof(buf), "%s", col_labels[j]);
        else snprintf(buf, sizeof(buf), "%d", j);
        max_cw = MOEXC__MAX(max_cw, moexc_text_width(buf, s));
    }
    for (i = 0; i < z.n_ticks; i++) {
        moexc__tick_label(&z, z.ticks[i], buf, exp, sizeof(buf));
        max_zw = MOEXC__MAX(max_zw, moexc__label_width(buf, exp, s));
    }
    bar_w = 8 * s;
    extra_right = 4 * gap + bar_w + tick + gap + max_zw + (o.z_label ? 2 * gap + th : 0);

    f.c = c; f.s = s;
    f.rx = o.width > 0 ? o.x : 0; f.ry = o.width > 0 ? o.y : 0;
    f.rw = o.width > 0 ? o.width : c->width;
    f.rh = o.width > 0 && o.height > 0 ? o.height : c->height - f.ry;
    f.left = f.rx + pad + (o.y_label ? th + 2 * gap : 0) + max_rw + gap;
    f.right = f.rx + f.rw - pad - extra_right;
    cell_w = (f.right - f.left) / cols;
    vertical_cols = max_cw + 2 * s > cell_w;
    col_h = vertical_cols ? max_cw : th;
    f.top = f.ry + pad + (o.title ? moexc_text_height(s + 1) + 2 * gap : 3 * s);
    f.bottom = f.ry + f.rh - pad - (o.x_label ? th + 2 * gap : 0) - col_h - gap;
    cell_h = (f.bottom - f.top) / rows;
    if (cell_w < 1 || cell_h < 1)
        return moexc__fail(err, MOEXC_ERR_ARG, "plot_heatmap: %d x %d cells do not fit in a %d x %d region", rows, cols, f.rw, f.rh);
    /* snap the grid to whole cells */
    f.right = f.left + cell_w * cols;
    f.bottom = f.top + cell_h * rows;
    f.area.x0 = f.left; f.area.y0 = f.top; f.area.x1 = f.right; f.area.y1 = f.bottom;
    k = moexc__canvas_clip(c);
    moexc__fill(c, k, f.rx, f.ry, f.rx + f.rw, f.ry + f.rh, 0xFFFFFFu, 255);

    for (i = 0; i < rows; i++)
        for (j = 0; j < cols; j++) {
            double v = values[(size_t)i * cols + j], t = (v - zmin) / (zmax - zmin);
            int x0 = f.left + j * cell_w, y0 = f.top + i * cell_h;
            uint32_t color = v == v ? moexc_colormap_viridis(t) : 0xDDDDDDu;
            moexc__fill(c, k, x0, y0, x0 + cell_w, y0 + cell_h, color, 255);
            if (o.annotate && v == v) {
                int w;
                snprintf(buf, sizeof(buf), fmt, v);
                w = moexc_text_width(buf, s);
                if (w + 2 * s <= cell_w && cap + 2 * s <= cell_h)
                    moexc_draw_text(c, x0 + (cell_w - w) / 2, y0 + (cell_h - cap) / 2, buf, s,
                                    t < 0.6 ? 0xFFFFFFu : 0x111111u);
            }
        }
    /* row labels (right-aligned) and column labels (horizontal or vertical) */
    for (i = 0; i < rows; i++) {
        int w;
        if (row_labels && row_labels[i]) snprintf(buf, sizeof(buf), "%s", row_labels[i]);
        else snprintf(buf, sizeof(buf), "%d", i);
        w = moexc_text_width(buf, s);
        moexc_draw_text(c, f.left - gap - w, f.top + i * cell_h + (cell_h - cap) / 2, buf, s, MOEXC__INK);
    }
    for (j = 0; j < cols; j++) {
        int w, cx = f.left + j * cell_w + cell_w / 2;
        if (col_labels && col_labels[j]) snprintf(buf, sizeof(buf), "%s", col_labels[j]);
        else snprintf(buf, sizeof(buf), "%d", j);
        w = moexc_text_width(buf, s);
        if (vertical_cols) moexc_draw_text_vertical(c, cx - cap / 2, f.bottom + gap + max_cw - w, buf, s, MOEXC__INK);
        else moexc_draw_text(c, cx - w / 2, f.bottom + gap, buf, s, MOEXC__INK);
    }
    lw = 1;
    moexc_draw_rect_outline(c, f.left - lw, f.top - lw, f.right + lw, f.bottom + lw, lw, MOEXC__INK);

    /* colour bar: viridis from z_min (bottom) to z_max (top), ticked */
    bar_x = f.right + 4 * gap;
    for (i = f.top; i < f.bottom; i++) {
        double t = (double)(f.bottom - 1 - i) / (double)(f.bottom - 1 - f.top);
        moexc__fill(c, k, bar_x, i, bar_x + bar_w, i + 1, moexc_colormap_viridis(t), 255);
    }
    moexc_draw_rect_outline(c, bar_x - 1, f.top - 1, bar_x + bar_w + 1, f.bottom + 1, 1, MOEXC__INK);
    for (i = 0; i < z.n_ticks; i++) {
        int y = moexc__px_round((f.bottom - 1) - (z.ticks[i] - zmin) / (zmax - zmin) * (double)(f.bottom - 1 - f.top));
        moexc__fill(c, k, bar_x + bar_w + 1, y, bar_x + bar_w + 1 + tick, y + 1, MOEXC__INK, 255);
        moexc__tick_label(&z, z.ticks[i], buf, exp, sizeof(buf));
        moexc__draw_label(c, bar_x + bar_w + 1 + tick + gap, y - cap / 2, buf, exp, s, MOEXC__INK);
    }
    if (o.z_label) {
        int h = moexc_text_width(o.z_label, s);
        moexc_draw_text_vertical(c, bar_x + bar_w + 1 + tick + 2 * gap + max_zw, (f.top + f.bottom) / 2 - h / 2,
                                 o.z_label, s, MOEXC__INK);
    }
    moexc__draw_title(&f, &o);
    return MOEXC_OK;
}

#endif /* MOEXC_IMPLEMENTATION_DONE */
#endif /* MOEXC_IMPLEMENTATION */

/* ======================================================================== */
/* >>license                                                                 */
/* ======================================================================== */
/*
This software is available under 2 licenses -- choose whichever you prefer.
------------------------------------------------------------------------------
ALTERNATIVE A - MIT License
Copyright (c) 2026 the moexc authors
Permission is hereby granted, free of charge, to any person obtaining a copy of
this software and associated documentation files (the "Software"), to deal in
the Software without restriction, including without limitation the rights to
use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies
of the Software, and to permit persons to whom the Software is furnished to do
so, subject to the following conditions:
The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
------------------------------------------------------------------------------
ALTERNATIVE B - Public Domain (www.unlicense.org)
This is free and unencumbered software released into the public domain.
Anyone is free to copy, modify, publish, use, compile, sell, or distribute this
software, either in source code form or as a compiled binary, for any purpose,
commercial or non-commercial, and by any means.
In jurisdictions that recognize copyright laws, the author or authors of this
software dedicate any and all copyright interest in the software to the public
domain. We make this dedication for the benefit of the public at large and to
the detriment of our heirs and successors. We intend this dedication to be an
overt act of relinquishment in perpetuity of all present and future rights to
this software under copyright law.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN
ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION
WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
------------------------------------------------------------------------------
*/
