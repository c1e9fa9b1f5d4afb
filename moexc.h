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
     5. draw the results into RGB buffers (write them with stb_image_write).

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

   SIMD backends: AVX-512F, AVX2+FMA, SSE2, NEON (AArch64) and scalar. Every
   kernel is written once over an internal macro layer (moexc__v*), so each
   SIMD path has a scalar twin. moexc_simd_backend() names the one compiled in.

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
     >>api            declarations (public API, in data-flow order)
     >>base           status codes, errors, allocation, random numbers
     >>simd           the internal SIMD macro layer (one per backend)
     >>tensor         vector kernels: dot, axpy, softmax, silu, rmsnorm, exp
     >>gemm           packed, register-blocked GEMM in three layouts
     >>layers         embedding, RMSNorm, attention+RoPE, SwiGLU, MoE, losses
     >>model          dense and MoE transformers, parameter layout
     >>train          AdamW, schedules, clipping, router statistics
     >>data           tokenizer, token-stream files, built-in corpus
     >>checkpoint     JSON reader, safetensors writer and validating reader
     >>harvest        paired activations, shuffle buffer, activation cache
     >>crosscoder     L1 and BatchTopK crosscoders with shared latents
     >>analysis       relative decoder norm, classes, cosines, density, FVE
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

#if defined(__GNUC__) || defined(__clang__)
#  define MOEXC__PRINTF_LIKE(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#  define MOEXC__UNUSED_FN __attribute__((unused))
#else
#  define MOEXC__PRINTF_LIKE(fmt_index, first_arg)
#  define MOEXC__UNUSED_FN
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
   moexc file format. Bitwise with a nibble table: small and fast enough. */
static MOEXC__UNUSED_FN uint32_t moexc__crc32(uint32_t crc, const void *data, size_t n)
{
    static const uint32_t nibble[16] = {
        0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
        0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
        0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu };
    const unsigned char *p = (const unsigned char *)data;
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        crc = (crc >> 4) ^ nibble[crc & 15];
        crc = (crc >> 4) ^ nibble[crc & 15];
    }
    return ~crc;
}

/* ---- atomic file replacement --------------------------------------------- */
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
#ifdef _WIN32
    remove(af->path);   /* rename() does not replace on Windows */
#endif
    if (rename(af->tmp_path, af->path) != 0) {
        remove(af->tmp_path);
        return moexc__fail(err, MOEXC_ERR_IO, "%s: cannot rename %s into place", af->path, af->tmp_path);
    }
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
     moexc__vfmadd(a,b,c)      a*b + c (fused where the ISA has FMA)
     moexc__vhsum(v), moexc__vhmax(v)   horizontal reductions to a float
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
#  include <immintrin.h>
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
#  define moexc__vmax(a, b)      _mm512_max_ps((a), (b))
#  define moexc__vmin(a, b)      _mm512_min_ps((a), (b))
#  define moexc__vfmadd(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#  define moexc__vhsum(v)        _mm512_reduce_add_ps(v)
#  define moexc__vhmax(v)        _mm512_reduce_max_ps(v)
#  define moexc__vround(v)       _mm512_roundscale_ps((v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#  define moexc__vpow2i(n)       _mm512_castsi512_ps(_mm512_slli_epi32( \
                                     _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23))
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
#  define moexc__vmax(a, b)      vmaxq_f32((a), (b))
#  define moexc__vmin(a, b)      vminq_f32((a), (b))
#  define moexc__vfmadd(a, b, c) vfmaq_f32((c), (a), (b))
#  define moexc__vhsum(v)        vaddvq_f32(v)
#  define moexc__vhmax(v)        vmaxvq_f32(v)
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
#  define moexc__vmax(a, b)      ((a) > (b) ? (a) : (b))
#  define moexc__vmin(a, b)      ((a) < (b) ? (a) : (b))
#  define moexc__vfmadd(a, b, c) ((a) * (b) + (c))
#  define moexc__vhsum(v)        (v)
#  define moexc__vhmax(v)        (v)
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

MOEXC_DEF const char *moexc_simd_backend(void) { return MOEXC__BACKEND_NAME; }
MOEXC_DEF int moexc_simd_width(void) { return MOEXC__VW; }


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
