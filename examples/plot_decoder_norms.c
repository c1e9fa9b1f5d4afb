/* examples/plot_decoder_norms.c - classify crosscoder latents by relative
   decoder norm and draw the paper's two histograms.

     build/plot_decoder_norms crosscoder.safetensors [-o out/prefix_]
     build/plot_decoder_norms --synthetic [-o out/prefix_]

   Loads a saved crosscoder (moexc_xc_load validates it) and compares its
   decoders in the normalised units it was trained in; with
   --synthetic it makes decoders of its own (plus activation counts, so the
   density histogram and the dead class appear too). Prints the class table
   and writes <prefix>r_hist.png, <prefix>cosine_hist.png, (synthetic:
   <prefix>density_hist.png), <prefix>table.csv and <prefix>report.json. */
#include "../moexc.h"
#include <stdlib.h>
#include <string.h>
#include <math.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>   /* Debian: libstb-dev; the Makefile adds -isystem $(STB_DIR) */
#include "../tools/tool_png.h"

/* Decoders where every latent gets a target r and a cosine between its two rows. */
static void make_synthetic(float *dec_a, float *dec_b, int64_t *counts, int F, int d, int n_shared, uint64_t seed)
{
    moexc_rng rng;
    int i, j;
    moexc_rng_seed(&rng, seed);
    for (i = 0; i < F; i++) {
        float *a = dec_a + (size_t)i * d, *b = dec_b + (size_t)i * d;
        float u = moexc_rng_uniform(&rng), r, mix, na = 0, nb = 0, density;
        for (j = 0; j < d; j++) { a[j] = moexc_rng_normal(&rng); b[j] = moexc_rng_normal(&rng); }
        if (i < n_shared) { memcpy(b, a, (size_t)d * sizeof(float)); r = 0.5f; mix = 1.0f; density = 0.02f; }
        else if (u < 0.06f) { r = 0.05f + 0.2f * moexc_rng_uniform(&rng); mix = 0.2f; density = 0.05f; }   /* MoE-only   */
        else if (u < 0.20f) { r = 0.75f + 0.23f * moexc_rng_uniform(&rng); mix = 0.2f; density = 0.002f; } /* dense-only */
        else { r = 0.5f + 0.09f * moexc_rng_normal(&rng); mix = 0.3f + 0.7f * moexc_rng_uniform(&rng); density = 0.01f; }
        if (r < 0.01f) r = 0.01f;
        if (r > 0.99f) r = 0.99f;
        /* b = mix * a + (1 - mix) * noise, then scale the rows to norms (1 - r) and r */
        for (j = 0; j < d; j++) b[j] = mix * a[j] + (1.0f - mix) * b[j];
        for (j = 0; j < d; j++) { na += a[j] * a[j]; nb += b[j] * b[j]; }
        na = sqrtf(na); nb = sqrtf(nb);
        for (j = 0; j < d; j++) { a[j] *= (1.0f - r) / na; b[j] *= r / nb; }
        /* densities spread over decades; about 3% of latents never fire */
        counts[i] = moexc_rng_uniform(&rng) < 0.03f ? 0
                  : (int64_t)(1000000.0 * density * pow(10.0, 0.6 * moexc_rng_normal(&rng))) + 1;
        if (counts[i] > 1000000) counts[i] = 1000000;
    }
}

static int save_png(const char *prefix, const char *name, const moexc_canvas *c)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s%s", prefix, name);
    if (tool_write_png("plot_decoder_norms", path, c)) return 1;
    printf("wrote %s\n", path);
    return 0;
}

/* Load W_dec^A, W_dec^B and n_shared from a saved crosscoder. The file holds
   decoders folded into raw activation units (W_dec^m / s_m); relative norms
   are compared in the normalised units the crosscoder was trained in
   (folded = 0), otherwise a model whose activations are simply larger would
   own every latent. */
static moexc_status load_decoders(const char *path, float **dec_a, float **dec_b, int *F, int *d_a, int *d_b,
                                  int *n_shared, moexc_error *err)
{
    moexc_xc *xc = NULL;
    moexc_status st = moexc_xc_load(&xc, path, err);
    if (st != MOEXC_OK) return st;
    *F = moexc_xc_get_options(xc)->n_latents;
    *n_shared = moexc_xc_get_options(xc)->n_shared;
    *d_a = moexc_xc_dim(xc, 0);
    *d_b = moexc_xc_dim(xc, 1);
    *dec_a = (float *)malloc((size_t)*F * (size_t)(*d_a + *d_b) * sizeof(float));
    if (!*dec_a) {
        moexc_xc_free(xc);
        snprintf(err->message, sizeof(err->message), "%s: out of memory", path);
        return err->code = MOEXC_ERR_NOMEM;
    }
    *dec_b = *dec_a + (size_t)*F * (size_t)*d_a;
    moexc_xc_decoder(xc, 0, 0, *dec_a);
    moexc_xc_decoder(xc, 1, 0, *dec_b);
    moexc_xc_free(xc);
    return MOEXC_OK;
}

int main(int argc, char **argv)
{
    const char *input = NULL, *prefix = "decoder_norms_";
    float *dec_a = NULL, *dec_b = NULL;
    int64_t *counts = NULL;
    int F = 0, d_a = 0, d_b = 0, n_shared = 0, synthetic = 0, i, c, failed = 0;
    moexc_error err;
    moexc_latent_analysis an;
    moexc_canvas canvas;
    moexc_histogram hr, hc[MOEXC_CLASS_COUNT + 1], hd[MOEXC_CLASS_COUNT];
    moexc_plot_options po;
    const char *labels[MOEXC_CLASS_COUNT + 1];
    uint32_t colors[MOEXC_CLASS_COUNT + 1];
    char path[1024], title[256];
    int n_plot = 0;

    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--synthetic")) synthetic = 1;
        else if (!strcmp(argv[i], "-o") && i + 1 < argc) prefix = argv[++i];
        else if (argv[i][0] != '-' && !input) input = argv[i];
        else { fprintf(stderr, "usage: %s (crosscoder.safetensors | --synthetic) [-o prefix]\n", argv[0]); return 2; }
    }
    if (!synthetic && !input) { fprintf(stderr, "usage: %s (crosscoder.safetensors | --synthetic) [-o prefix]\n", argv[0]); return 2; }
    /* find out now, not after the work, whether the outputs can be written */
    snprintf(path, sizeof(path), "%stable.csv", prefix);
    if (moexc_check_writable(path, &err) != MOEXC_OK) { fprintf(stderr, "plot_decoder_norms: -o: %s\n", err.message); return 1; }

    if (synthetic) {
        F = 8192; d_a = d_b = 64; n_shared = 256;
        dec_a = (float *)malloc((size_t)F * (d_a + d_b) * sizeof(float));
        counts = (int64_t *)malloc((size_t)F * sizeof(int64_t));
        if (!dec_a || !counts) { fprintf(stderr, "out of memory\n"); return 1; }
        dec_b = dec_a + (size_t)F * d_a;
        make_synthetic(dec_a, dec_b, counts, F, d_a, n_shared, 42);
    } else if (load_decoders(input, &dec_a, &dec_b, &F, &d_a, &d_b, &n_shared, &err) != MOEXC_OK) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }

    /* r, classes, cosines, densities, per-class statistics (SPEC §5) */
    if (moexc_analyze_latents(&an, dec_a, d_a, dec_b, d_b, F, n_shared, counts, counts ? 1000000 : 0, NULL, &err) != MOEXC_OK) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    moexc_analysis_print_table(stdout, &an, NULL);
    snprintf(path, sizeof(path), "%stable.csv", prefix);
    if (moexc_analysis_write_csv(&an, path, &err) != MOEXC_OK) { fprintf(stderr, "%s\n", err.message); failed = 1; }
    snprintf(path, sizeof(path), "%sreport.json", prefix);
    if (moexc_analysis_write_json(&an, NULL, path, &err) != MOEXC_OK) { fprintf(stderr, "%s\n", err.message); failed = 1; }
    if (moexc_canvas_init(&canvas, 1000, 640, &err) != MOEXC_OK) { fprintf(stderr, "%s\n", err.message); return 1; }

    /* 1. histogram of r over the latents that are neither designated nor dead
          (those two classes are counted in the table), bands behind */
    {
        moexc_band bands[3];
        bands[0].lo = 0.0;         bands[0].hi = an.moe_max;   bands[0].color = moexc_latent_class_color(MOEXC_CLASS_MOE_ONLY);   bands[0].label = "MoE-only";
        bands[1].lo = an.moe_max;  bands[1].hi = an.dense_min; bands[1].color = moexc_latent_class_color(MOEXC_CLASS_SHARED);     bands[1].label = "shared";
        bands[2].lo = an.dense_min; bands[2].hi = 1.0;         bands[2].color = moexc_latent_class_color(MOEXC_CLASS_DENSE_ONLY); bands[2].label = "dense-only";
        moexc_histogram_init(&hr, 50, 0.0, 1.0, 0, NULL);
        for (c = MOEXC_CLASS_MOE_ONLY; c <= MOEXC_CLASS_DENSE_ONLY; c++)
            moexc_histogram_add_where(&hr, an.r, an.cls, (uint8_t)c, (size_t)F);
        memset(&po, 0, sizeof(po));
        snprintf(title, sizeof(title), "Relative decoder norm of %lld latents", (long long)hr.total);
        po.title = title;
        po.x_label = "r = |d_B| / (|d_A| + |d_B|)    (0 = MoE-only, 1 = dense-only)";
        po.y_label = "latents";
        po.log_y = 1;
        labels[0] = "latents"; colors[0] = 0x404040u;
        moexc_plot_histograms(&canvas, &hr, 1, labels, colors, bands, 3, &po, NULL);
        failed |= save_png(prefix, "r_hist.png", &canvas);
        moexc_histogram_free(&hr);
    }

    /* 2. decoder cosine per class (fractions), with the random-pair baseline */
    if (an.random_cosine) {
        for (c = 0; c < MOEXC_CLASS_DEAD; c++) {
            if (an.classes[c].count == 0) continue;
            moexc_histogram_init(&hc[n_plot], 40, -1.0, 1.0, 0, NULL);
            moexc_histogram_add_where(&hc[n_plot], an.cosine, an.cls, (uint8_t)c, (size_t)F);
            labels[n_plot] = moexc_latent_class_name(c);
            colors[n_plot] = moexc_latent_class_color(c);
            n_plot++;
        }
        moexc_histogram_init(&hc[n_plot], 40, -1.0, 1.0, 0, NULL);
        moexc_histogram_add(&hc[n_plot], an.random_cosine, (size_t)an.n_random_pairs);
        labels[n_plot] = "random pairs"; colors[n_plot] = 0x999999u;
        n_plot++;
        memset(&po, 0, sizeof(po));
        po.title = "Decoder cosine cos(d_A, d_B) per class";
        po.x_label = "cosine similarity";
        po.y_label = "fraction of class";
        po.normalize = 1;
        po.log_y = 1;
        moexc_plot_histograms(&canvas, hc, n_plot, labels, colors, NULL, 0, &po, NULL);
        failed |= save_png(prefix, "cosine_hist.png", &canvas);
        for (i = 0; i < n_plot; i++) moexc_histogram_free(&hc[i]);
    }

    /* 3. activation density per class on a log axis (needs counts) */
    if (counts) {
        n_plot = 0;
        for (c = 0; c < MOEXC_CLASS_DEAD; c++) {
            if (an.classes[c].count == 0) continue;
            moexc_histogram_init(&hd[n_plot], 40, 1e-6, 1.0, 1, NULL);
            moexc_histogram_add_where(&hd[n_plot], an.density, an.cls, (uint8_t)c, (size_t)F);
            labels[n_plot] = moexc_latent_class_name(c);
            colors[n_plot] = moexc_latent_class_color(c);
            n_plot++;
        }
        memset(&po, 0, sizeof(po));
        po.title = "Activation density per class";
        po.x_label = "fraction of evaluation tokens on which the latent fires";
        po.y_label = "fraction of class";
        po.normalize = 1;
        moexc_plot_histograms(&canvas, hd, n_plot, labels, colors, NULL, 0, &po, NULL);
        failed |= save_png(prefix, "density_hist.png", &canvas);
        for (i = 0; i < n_plot; i++) moexc_histogram_free(&hd[i]);
    }

    moexc_canvas_free(&canvas);
    moexc_latent_analysis_free(&an);
    free(dec_a);
    free(counts);
    return failed;
}
