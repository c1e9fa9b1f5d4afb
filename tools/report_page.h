/* tools/report_page.h - the study as one web page, report/index.html, and
   the expert-purity figure beside it. One writer shared by the demo
   (examples/moexc_demo.c) and tools/moexc_report.c; include it after
   moexc.h in a file that defines _POSIX_C_SOURCE (it lists the PNGs of the
   report folder with opendir where available).

   The page is data plus a template: every byte that comes from a corpus
   (contexts, domain names) goes through page_text(), which writes printable
   ASCII with the five HTML-special characters as entities and every other
   byte (controls, NUL, bytes >= 0x80, so invalid UTF-8 too) as a visible
   escape such as \x00. Nothing from the corpus reaches an attribute, a tag
   or the script; the page is self-contained (inline CSS, a little plain
   script, the PNGs beside it) and asks for nothing over the network. */
#ifndef MOEXC_REPORT_PAGE_H
#define MOEXC_REPORT_PAGE_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#if !defined(_WIN32)
#include <dirent.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#define PAGE_FN static __attribute__((unused))
#else
#define PAGE_FN static
#endif
#define PAGE_MAX_PNGS 64
#define PAGE_CONTEXT_BEFORE 48
#define PAGE_CONTEXT_AFTER 8

typedef struct report_page {
    const char *dir;                     /* report folder                                   */
    const char *title;                   /* e.g. "moexc study (preset tiny)"                */
    const char *const *summary_keys;     /* n_summary rows of the summary table (our text)  */
    const char *const *summary_values;
    int n_summary;
    const moexc_latent_analysis *an;     /* r, classes, cosines, densities                 */
    const moexc_latent_study *st;        /* contexts, attribution, spliced loss            */
    const moexc_tokens *data;            /* the stream the study read (for contexts)       */
    const float *beta_a, *beta_b, *nu;   /* NULL: the study's                              */
    const float *aligned_cos;            /* NULL: the study's                              */
    int cards_per_list;                  /* per class, most exclusive and densest; 0 -> 6  */
    int contexts_shown;                  /* per card before "more"; 0 -> 8                 */
} report_page;

/* ---- escaping: corpus bytes as text ------------------------------------- */
PAGE_FN void page_byte(FILE *f, unsigned t)
{
    if (t == '<') fputs("&lt;", f);
    else if (t == '>') fputs("&gt;", f);
    else if (t == '&') fputs("&amp;", f);
    else if (t == '"') fputs("&quot;", f);
    else if (t == '\'') fputs("&#39;", f);
    else if (t >= 0x20 && t < 0x7F) fputc((int)t, f);
    else if (t == '\n') fputs("<span class=\"c\">\xE2\x86\xB5</span>", f);            /* ↵ */
    else if (t == '\t') fputs("<span class=\"c\">\xE2\x86\x92</span>", f);            /* → */
    else if (t == MOEXC_DOC_SEPARATOR) fputs("<span class=\"c\">\xE2\x90\x9E</span>", f); /* ␞ */
    else if (t < 256) fprintf(f, "<span class=\"c\">\\x%02X</span>", t);
    else fprintf(f, "<span class=\"c\">&lt;%u&gt;</span>", t);
}
PAGE_FN void page_text(FILE *f, const char *s)
{
    for (; *s; s++) page_byte(f, (unsigned char)*s);
}
PAGE_FN void page_num(FILE *f, const char *fmt, double x)
{
    if (x != x) fputs("&ndash;", f);
    else fprintf(f, fmt, x);
}

/* ---- the expert-purity figure ------------------------------------------- */
/* Grouped bars per class: domain purity, expert purity (top-1) and expert
   purity (top-k slots), each next to its shuffled baseline (hatched pale). */
PAGE_FN int page_purity_plot(const report_page *p, moexc_canvas *cv, moexc_error *err)
{
    const int W = 1000, H = 520, x0 = 90, y0 = 60, x1 = 980, y1 = 430;
    moexc_label_class_stats cs[3][MOEXC_CLASS_COUNT];
    const moexc_label_acc *acc[3];
    const char *names[3] = {"domain purity", "expert purity (top-1)", "expert purity (top-k)"};
    int n_acc = 0, k, c, i, ng = 0, groups[MOEXC_CLASS_COUNT];
    double ticks[16];
    int nt;
    acc[n_acc++] = &p->st->domain;
    if (p->st->n_experts) { acc[n_acc++] = &p->st->expert_top1; acc[n_acc++] = &p->st->expert_topk; }
    for (k = 0; k < n_acc; k++) moexc_label_acc_by_class(acc[k], p->an->cls, 1, cs[k]);
    for (c = 0; c < MOEXC_CLASS_DEAD; c++) if (cs[0][c].n > 0) groups[ng++] = c;
    if (moexc_canvas_init(cv, W, H, err)) return 1;
    moexc_draw_text(cv, x0, 16, "Mean purity of each class's latents vs a shuffled baseline", 2, 0x000000);
    nt = moexc_nice_ticks(0.0, 1.0, 6, ticks, 16);
    for (i = 0; i < nt; i++) {
        char buf[32];
        int y = y1 - (int)((y1 - y0) * ticks[i]);
        moexc_draw_line(cv, x0, y, x1, y, 1, 0xDDDDDD);
        snprintf(buf, sizeof(buf), "%.1f", ticks[i]);
        moexc_draw_text(cv, x0 - 8 - moexc_text_width(buf, 2), y - 7, buf, 2, 0x333333);
    }
    moexc_draw_text_vertical(cv, 18, y0 + 60, "mean purity", 2, 0x333333);
    for (i = 0; i < ng; i++) {
        int gx0 = x0 + (x1 - x0) * i / (ng ? ng : 1), gw = (x1 - x0) / (ng ? ng : 1), bw = gw / (2 * n_acc + 2);
        char lab[64];
        c = groups[i];
        for (k = 0; k < n_acc; k++) {
            uint32_t col = moexc_palette(k);
            double v = cs[k][c].purity, vs = cs[k][c].purity_shuffled;
            int bx = gx0 + bw + 2 * k * bw;
            if (v == v) moexc_draw_rect(cv, bx, y1 - (int)((y1 - y0) * v), bx + bw - 2, y1, col);
            if (vs == vs) {
                moexc_draw_rect_alpha(cv, bx + bw, y1 - (int)((y1 - y0) * vs), bx + 2 * bw - 4, y1, col, 70);
                moexc_draw_rect_outline(cv, bx + bw, y1 - (int)((y1 - y0) * vs), bx + 2 * bw - 4, y1, 1, col);
            }
        }
        snprintf(lab, sizeof(lab), "%s (%ld)", moexc_latent_class_name(c), (long)cs[0][c].n);
        moexc_draw_text(cv, gx0 + gw / 2 - moexc_text_width(lab, 2) / 2, y1 + 10, lab, 2, 0x000000);
    }
    moexc_draw_line(cv, x0, y1, x1, y1, 2, 0x000000);
    for (k = 0; k < n_acc; k++) {
        int lx = x0 + k * 300, ly = H - 50;
        moexc_draw_rect(cv, lx, ly, lx + 18, ly + 14, moexc_palette(k));
        moexc_draw_text(cv, lx + 24, ly, names[k], 2, 0x000000);
    }
    moexc_draw_rect_alpha(cv, x0, H - 28, x0 + 18, H - 14, 0x777777, 70);
    moexc_draw_rect_outline(cv, x0, H - 28, x0 + 18, H - 14, 1, 0x777777);
    moexc_draw_text(cv, x0 + 24, H - 28, "pale: shuffled baseline (same firing counts, random tokens)", 2, 0x333333);
    return 0;
}

/* ---- latent selection ---------------------------------------------------- */
typedef struct page_pick { int latent; float key; } page_pick;
PAGE_FN int page_pick_cmp(const void *a, const void *b)
{
    const page_pick *x = (const page_pick *)a, *y = (const page_pick *)b;
    if (x->key != y->key) return x->key > y->key ? -1 : 1;
    return x->latent - y->latent;
}

/* most exclusive (by |r - 0.5|, shared: closest to 0.5) and densest latents of cls */
PAGE_FN int page_select(const report_page *p, int cls, int per_list, int *out, char *kind)
{
    const moexc_latent_analysis *an = p->an;
    int F = an->n_latents, i, n = 0, m, list, got = 0;
    page_pick *pk = (page_pick *)malloc((size_t)F * sizeof(page_pick));
    if (!pk) return 0;
    for (list = 0; list < 2; list++) {
        if (list == 0 && cls == MOEXC_CLASS_DESIGNATED) continue;
        for (i = 0, n = 0; i < F; i++) {
            float key;
            if (an->cls[i] != cls || p->st->top.count[i] == 0) continue;
            if (list == 1) key = an->density[i];
            else if (cls == MOEXC_CLASS_SHARED) key = -(float)fabs(an->r[i] - 0.5f);
            else key = (float)fabs(an->r[i] - 0.5f);
            if (key != key) key = -1e30f;
            pk[n].latent = i; pk[n].key = key; n++;
        }
        qsort(pk, (size_t)n, sizeof(*pk), page_pick_cmp);
        for (i = 0, m = 0; i < n && m < per_list; i++) {
            int j, dup = 0;
            for (j = 0; j < got; j++) if (out[j] == pk[i].latent) { dup = 1; kind[j] = 'b'; }
            if (dup) continue;
            out[got] = pk[i].latent; kind[got] = list == 0 ? 'x' : 'd'; got++; m++;
        }
    }
    free(pk);
    return got;
}

/* ---- one card ------------------------------------------------------------- */
PAGE_FN void page_shares(FILE *f, const char *title, const double *share, const double *base, int C,
                        const char *const *names, int per_row)
{
    int c;
    fprintf(f, "<div class=\"shares\"><div class=\"st\">%s</div>", title);
    for (c = 0; c < C; c++) {
        double s = share[c] / per_row, b = base[c] / per_row;
        fputs("<div class=\"bar\"><span class=\"bl\">", f);
        if (names) page_text(f, names[c]); else fprintf(f, "E%d", c);
        fprintf(f, "</span><span class=\"bt\"><span class=\"bf\" style=\"width:%.1f%%\"></span>"
                   "<span class=\"bb\" style=\"left:%.1f%%\"></span></span><span class=\"bv\">",
                s == s ? 100.0 * s : 0.0, b == b ? 100.0 * b : 0.0);
        page_num(f, "%.0f%%", 100.0 * share[c]);
        fputs("</span></div>", f);
    }
    fputs("</div>", f);
}

PAGE_FN void page_card(FILE *f, const report_page *p, int i, char kind, int order, moexc_top_entry *ent,
                      const char *const *dom_names)
{
    const moexc_latent_analysis *an = p->an;
    const moexc_latent_study *st = p->st;
    const float *ba = p->beta_a ? p->beta_a : st->beta[0], *bb = p->beta_b ? p->beta_b : st->beta[1];
    const float *nu = p->nu ? p->nu : st->nu, *ac = p->aligned_cos ? p->aligned_cos : st->aligned_cos;
    double share[256], base[256], mass[256], pur, ent_bits;
    int n = moexc_top_acts_get(&st->top, i, ent), j, shown = p->contexts_shown > 0 ? p->contexts_shown : 8;
    int cls = an->cls[i], D = st->n_domains;
    float top = n > 0 ? ent[0].value : 0.0f;
    fprintf(f, "<div class=\"card\" data-idx=\"%d\" data-cls=\"%d\" data-r=\"%.6g\" data-density=\"%.6g\" data-top=\"%.6g\" "
               "data-order=\"%d\" style=\"border-top-color:#%06X\">\n", i, cls, an->r[i] == an->r[i] ? an->r[i] : -1.0,
            an->density[i] == an->density[i] ? an->density[i] : 0.0, top, order, (unsigned)moexc_latent_class_color(cls));
    fprintf(f, "<div class=\"ch\"><span class=\"ci\">latent %d</span> <span class=\"cc\" style=\"background:#%06X\">%s</span> "
               "<span class=\"ck\">%s</span></div>\n", i, (unsigned)moexc_latent_class_color(cls), moexc_latent_class_name(cls),
            kind == 'x' ? "most exclusive" : kind == 'd' ? "densest" : "most exclusive, densest");
    fputs("<table class=\"kv\"><tr><th>r</th><th>cos</th><th>aligned cos</th><th>density</th><th>&beta;<sub>MoE</sub></th>"
          "<th>&beta;<sub>dense</sub></th><th>&nu;</th><th>firings</th><th>max f</th></tr><tr>", f);
    fputs("<td>", f); page_num(f, "%.3f", an->r[i]); fputs("</td><td>", f);
    page_num(f, "%.3f", an->cosine[i]); fputs("</td><td>", f);
    page_num(f, "%.3f", ac ? ac[i] : NAN); fputs("</td><td>", f);
    page_num(f, "%.2e", an->density[i]); fputs("</td><td>", f);
    page_num(f, "%.3g", ba[i]); fputs("</td><td>", f);
    page_num(f, "%.3g", bb[i]); fputs("</td><td>", f);
    page_num(f, "%.3g", nu[i]); fputs("</td><td>", f);
    fprintf(f, "%ld</td><td>", (long)st->domain.fires[i]);
    page_num(f, "%.3g", top); fputs("</td></tr></table>\n<div class=\"attr\">", f);
    moexc_label_acc_latent(&st->domain, i, 0, share, mass, &pur, &ent_bits);
    moexc_label_acc_base(&st->domain, base);
    page_shares(f, "domains (firings; tick: base rate)", share, base, D, dom_names, 1);
    if (st->n_experts) {
        moexc_label_acc_latent(&st->expert_top1, i, 0, share, NULL, &pur, &ent_bits);
        moexc_label_acc_base(&st->expert_top1, base);
        page_shares(f, "top-1 expert", share, base, st->n_experts, NULL, 1);
        moexc_label_acc_latent(&st->expert_topk, i, 0, share, NULL, &pur, &ent_bits);
        moexc_label_acc_base(&st->expert_topk, base);
        page_shares(f, "any of the top-k experts", share, base, st->n_experts, NULL, 1);
    }
    fputs("</div>\n<div class=\"ctxs\">\n", f);
    for (j = 0; j < n; j++) {
        const moexc_top_entry *e = &ent[j];
        int64_t at = e->seq + e->pos, a = at - PAGE_CONTEXT_BEFORE, b = at + PAGE_CONTEXT_AFTER + 1, t;
        double shade = top > 0 ? e->value / top : 0.0;
        if (a < e->seq) a = e->seq;                                  /* what the model saw */
        if (b > (int64_t)p->data->n) b = (int64_t)p->data->n;
        if (j == shown) fputs("<details><summary>more contexts</summary>\n", f);
        fprintf(f, "<div class=\"ctx\"><span class=\"cv\">%.3g</span><span class=\"cd\">", e->value);
        if (e->label >= 0 && e->label < D) page_text(f, dom_names[e->label]);
        fputs("</span><code>", f);
        for (t = a; t < b; t++) {
            if (t == at) fprintf(f, "<mark style=\"background:rgba(230,97,0,%.2f)\">", 0.15 + 0.85 * shade);
            page_byte(f, p->data->tokens[t]);
            if (t == at) fputs("</mark>", f);
        }
        fputs("</code></div>\n", f);
    }
    if (n > shown) fputs("</details>\n", f);
    fputs("</div></div>\n", f);
}

PAGE_FN int page_png_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Writes expert_purity.png through write("expert_purity.png", canvas, user)
   (the name is relative to p->dir; the writer saves it there; write NULL:
   the caller has written it, from page_purity_plot), then <dir>/index.html
   (temporary file, then rename), which lists the PNGs in <dir>. Returns 0
   on success, else a message in msg. */
PAGE_FN int report_page_write(const report_page *p, moexc_png_writer write, void *user, char *msg, size_t msg_size)
{
    const moexc_latent_analysis *an = p->an;
    const moexc_latent_study *st = p->st;
    char path[4096], tmp[4110];
    const char *dom_names[MOEXC_MAX_DOMAINS];
    char *pngs[PAGE_MAX_PNGS];
    int n_png = 0, i, c, m, d, k, per = p->cards_per_list > 0 ? p->cards_per_list : 6, order = 0;
    int *sel = NULL;
    char *kind = NULL;
    moexc_top_entry *ent = NULL;
    moexc_canvas cv;
    moexc_error err;
    moexc_label_class_stats cs[3][MOEXC_CLASS_COUNT];
    FILE *f;
    int ok = 0, n_acc = st->n_experts ? 3 : 1;
    const moexc_label_acc *acc[3];
    acc[0] = &st->domain; acc[1] = &st->expert_top1; acc[2] = &st->expert_topk;
    for (d = 0; d < st->n_domains; d++) dom_names[d] = st->domain_names[d];
    memset(&cv, 0, sizeof(cv));
    if (write) {
        if (page_purity_plot(p, &cv, &err)) { snprintf(msg, msg_size, "expert purity plot: %.400s", err.message); return 1; }
        snprintf(path, sizeof(path), "expert_purity.png");
        if (write(path, &cv, user)) { moexc_canvas_free(&cv); snprintf(msg, msg_size, "cannot write %.400s", path); return 1; }
        moexc_canvas_free(&cv);
    }
#if !defined(_WIN32)
    {
        DIR *dir = opendir(p->dir);
        struct dirent *de;
        while (dir && (de = readdir(dir)) != NULL && n_png < PAGE_MAX_PNGS) {
            size_t L = strlen(de->d_name), q;
            int safe = L > 4 && strcmp(de->d_name + L - 4, ".png") == 0;
            for (q = 0; q < L && safe; q++) {       /* our own file names only: no escaping needed in src */
                char ch = de->d_name[q];
                safe = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || ch == '.';
            }
            if (safe && (pngs[n_png] = (char *)malloc(L + 1)) != NULL) memcpy(pngs[n_png++], de->d_name, L + 1);
        }
        if (dir) closedir(dir);
        qsort(pngs, (size_t)n_png, sizeof(pngs[0]), page_png_cmp);
    }
#endif
    sel = (int *)malloc(sizeof(int) * (size_t)(2 * per + 1));
    kind = (char *)malloc((size_t)(2 * per + 1));
    ent = (moexc_top_entry *)malloc(sizeof(moexc_top_entry) * (size_t)(st->top.capacity + 1));
    snprintf(path, sizeof(path), "%s/index.html", p->dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if (!sel || !kind || !ent || !(f = fopen(tmp, "wb"))) { snprintf(msg, msg_size, "cannot write %.400s", tmp); goto out; }
    for (k = 0; k < n_acc; k++) moexc_label_acc_by_class(acc[k], an->cls, 1, cs[k]);

    fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
          "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self' file:; "
          "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n<title>", f);
    page_text(f, p->title);
    fputs("</title>\n<style>\n"
          "body{font:14px/1.45 \"Helvetica Neue\",Arial,sans-serif;color:#222;max-width:1250px;margin:24px auto;padding:0 18px;background:#fff}\n"
          "h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ccc;padding-bottom:3px}\n"
          ".sub{color:#666;margin:0 0 14px}table{border-collapse:collapse;font-variant-numeric:tabular-nums}\n"
          "th,td{padding:3px 9px;white-space:nowrap;text-align:right;border-bottom:1px solid #e4e4e4}th{font-weight:600;border-bottom:1.5px solid #333}\n"
          "td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:12.5px;max-width:980px}\n"
          ".figs{display:flex;flex-wrap:wrap;gap:14px}.figs figure{margin:0;width:400px}.figs img{width:400px;border:1px solid #ddd}\n"
          ".figs figcaption{font-size:12px;color:#555}\n"
          ".ctl{position:sticky;top:0;background:#fafafa;border:1px solid #ddd;padding:7px 10px;margin:10px 0;z-index:2}\n"
          ".ctl label{margin-right:14px}#found{color:#a33;margin-left:10px}\n"
          ".cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(590px,1fr));gap:14px}\n"
          ".card{border:1px solid #d6d6d6;border-top:5px solid #888;border-radius:4px;padding:8px 10px;background:#fff}\n"
          ".ch{margin-bottom:4px}.ci{font-weight:700;font-size:15px}.cc{color:#fff;border-radius:3px;padding:1px 6px;font-size:12px}\n"
          ".ck{color:#777;font-size:12px}.kv{font-size:12.5px;margin:2px 0 6px}.kv th,.kv td{padding:1px 6px}\n"
          ".attr{display:flex;gap:14px;flex-wrap:wrap;font-size:11.5px}.shares{min-width:170px}.st{color:#555;margin-bottom:2px}\n"
          ".bar{display:flex;align-items:center;gap:4px;height:14px}.bl{width:58px;overflow:hidden;white-space:nowrap}\n"
          ".bt{position:relative;width:80px;height:9px;background:#eee}.bf{position:absolute;left:0;top:0;bottom:0;background:#0072B2}\n"
          ".bb{position:absolute;top:-2px;bottom:-2px;width:2px;background:#000}.bv{width:34px;text-align:right;color:#444}\n"
          ".ctxs{margin-top:6px}.ctx{display:flex;gap:6px;align-items:baseline;font-size:12px;border-top:1px dotted #e2e2e2;padding:1px 0}\n"
          ".cv{width:44px;text-align:right;color:#444;flex:none;font-variant-numeric:tabular-nums}.cd{width:52px;color:#777;flex:none;overflow:hidden}\n"
          "code{font:12px/1.35 Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-all}\n"
          "mark{color:#000;outline:1.5px solid #b34700;border-radius:2px;padding:0 1px}.c{color:#999}\n"
          "details summary{cursor:pointer;color:#0072B2;font-size:12px}\n"
          "</style></head><body>\n<h1>", f);
    page_text(f, p->title);
    fprintf(f, "</h1>\n<p class=\"sub\">MoE (model A) vs dense (model B) through one crosscoder: %d latents, block %d (%s). "
               "Held-out statistics over %ld tokens in %ld windows of %d.</p>\n",
            an->n_latents, st->layer, st->site == MOEXC_SITE_RESID ? "residual stream" : "FFN/MoE output",
            (long)st->n_tokens, (long)st->n_seqs, st->seq_len);

    /* summary */
    fputs("<h2>Summary</h2>\n<table id=\"summary\">", f);
    for (i = 0; i < p->n_summary; i++) {
        fputs("<tr><td>", f); page_text(f, p->summary_keys[i]); fputs("</td><td>", f);
        page_text(f, p->summary_values[i]); fputs("</td></tr>\n", f);
    }
    fprintf(f, "<tr><td>FVE on these tokens (MoE, dense)</td><td>%.3f, %.3f</td></tr>\n</table>\n", st->fve[0], st->fve[1]);

    /* classes */
    fputs("<h2>Latent classes</h2>\n<table id=\"classes\"><tr><th>class</th><th>r range</th><th>count</th><th>density mean</th>"
          "<th>density median</th><th>cos mean</th><th>domain purity</th><th>(shuffled)</th>", f);
    if (st->n_experts) fputs("<th>expert purity top-1</th><th>(shuffled)</th><th>entropy top-1, bits</th><th>(shuffled)</th>"
                             "<th>top-k purity</th><th>(shuffled)</th>", f);
    fputs("</tr>\n", f);
    for (c = 0; c < MOEXC_CLASS_COUNT; c++) {
        const moexc_class_summary *s = &an->classes[c];
        fprintf(f, "<tr><td><span class=\"cc\" style=\"background:#%06X\">%s</span></td><td>", (unsigned)moexc_latent_class_color(c),
                moexc_latent_class_name(c));
        if (s->r_lo == s->r_lo) fprintf(f, "%s%.2f, %.2f%s", s->lo_open ? "(" : "[", s->r_lo, s->r_hi, s->hi_open ? ")" : "]");
        else fputs("&ndash;", f);
        fprintf(f, "</td><td>%ld</td><td>", (long)s->count);
        page_num(f, "%.2e", s->density_mean); fputs("</td><td>", f);
        page_num(f, "%.2e", s->density_median); fputs("</td><td>", f);
        page_num(f, "%.3f", s->cos_mean); fputs("</td>", f);
        for (k = 0; k < n_acc; k++) {
            fputs("<td>", f); page_num(f, "%.3f", cs[k][c].purity); fputs("</td><td>", f);
            page_num(f, "%.3f", cs[k][c].purity_shuffled); fputs("</td>", f);
            if (k == 1) {
                fputs("<td>", f); page_num(f, "%.2f", cs[k][c].entropy); fputs("</td><td>", f);
                page_num(f, "%.2f", cs[k][c].entropy_shuffled); fputs("</td>", f);
            }
        }
        fputs("</tr>\n", f);
    }
    fputs("</table>\n<p class=\"note\">r = |d<sup>dense</sup>| / (|d<sup>MoE</sup>| + |d<sup>dense</sup>|): 0 MoE-only, 1 dense-only. "
          "Purity = the largest share of a latent's firings in one domain (one expert), averaged over the class's latents that fired; "
          "the shuffled column is the same for as many firings on random held-out tokens (what no preference looks like with that many "
          "firings). Top-k purity: the largest fraction of firings whose token had that expert among its k. Entropy of the top-1 expert "
          "distribution in bits (uniform: log<sub>2</sub> E). Base rates:", f);
    {
        double base[256];
        moexc_label_acc_base(&st->domain, base);
        for (d = 0; d < st->n_domains; d++) { fputs(d ? ", " : " ", f); page_text(f, dom_names[d]); page_num(f, " %.2f", base[d]); }
        if (st->n_experts) {
            moexc_label_acc_base(&st->expert_top1, base);
            fputs("; top-1 expert", f);
            for (k = 0; k < st->n_experts; k++) { fprintf(f, "%s E%d ", k ? "," : "", k); page_num(f, "%.2f", base[k]); }
        }
    }
    fputs(".</p>\n", f);

    /* spliced loss */
    fputs("<h2>Spliced loss</h2>\n<table id=\"splice\"><tr><th>model</th><th>domain</th><th>CE clean</th><th>CE spliced</th>"
          "<th>CE zero-ablated</th><th>CE mean-ablated</th><th>loss recovered vs zero</th><th>vs mean</th></tr>\n", f);
    for (m = 0; m < 2; m++)
        for (d = 0; d <= st->n_domains; d++) {
            fprintf(f, "<tr><td>%s</td><td>", m == 0 ? "MoE" : "dense");
            if (d < st->n_domains) page_text(f, dom_names[d]); else fputs("<strong>all</strong>", f);
            for (k = 0; k < MOEXC_SPLICE_COUNT; k++) { fputs("</td><td>", f); page_num(f, "%.4f", moexc_splice_acc_ce(&st->splice, m, k, d)); }
            fputs("</td><td>", f); page_num(f, "%.3f", moexc_splice_acc_recovered(&st->splice, m, MOEXC_SPLICE_ZERO, d));
            fputs("</td><td>", f); page_num(f, "%.3f", moexc_splice_acc_recovered(&st->splice, m, MOEXC_SPLICE_MEAN, d));
            fputs("</td></tr>\n", f);
        }
    fputs("</table>\n<p class=\"note\">Cross-entropy in nats per token with the harvested site of one model replaced by the "
          "crosscoder's reconstruction of it (the other model untouched), by zeros, or by its mean over these tokens. Loss recovered = "
          "(CE<sub>ablated</sub> &minus; CE<sub>spliced</sub>) / (CE<sub>ablated</sub> &minus; CE<sub>clean</sub>): 1 means the "
          "reconstruction stands in for the site perfectly.</p>\n", f);

    /* plots */
    fputs("<h2>Plots</h2>\n<div class=\"figs\">\n", f);
    for (i = 0; i < n_png; i++)
        fprintf(f, "<figure><a href=\"%s\"><img src=\"%s\" alt=\"%s\"></a><figcaption>%s</figcaption></figure>\n",
                pngs[i], pngs[i], pngs[i], pngs[i]);
    fputs("</div>\n", f);

    /* cards */
    fputs("<h2>Latents</h2>\n<div class=\"ctl\"><label>latent # <input id=\"q\" type=\"number\" min=\"0\" style=\"width:80px\"></label>"
          "<label>class <select id=\"fc\"><option value=\"\">all</option>", f);
    for (c = 0; c < MOEXC_CLASS_DEAD; c++) fprintf(f, "<option value=\"%d\">%s</option>", c, moexc_latent_class_name(c));
    fputs("</select></label><label>sort <select id=\"so\"><option value=\"order\">by class</option><option value=\"r\">r</option>"
          "<option value=\"density\">density</option><option value=\"top\">max activation</option><option value=\"idx\">index</option>"
          "</select></label><span id=\"found\"></span></div>\n<p class=\"note\">For each class, the most exclusive latents (MoE-only: "
          "smallest r, dense-only: largest r, shared: r nearest 0.5) and the densest ones. Contexts: the strongest held-out "
          "activations, the firing token marked and shaded by its activation relative to the latent's strongest, up to 48 tokens "
          "before it (within the window the models saw) and 8 after. Non-printing bytes are shown escaped "
          "(\xE2\x86\xB5 newline, \xE2\x90\x9E document separator, \\xNN other bytes).</p>\n<div class=\"cards\" id=\"cards\">\n", f);
    for (c = 0; c < MOEXC_CLASS_DEAD; c++) {
        int n = page_select(p, c, per, sel, kind);
        for (i = 0; i < n; i++) page_card(f, p, sel[i], kind[i], order++, ent, dom_names);
    }
    fputs("</div>\n<script>\n", f);
    /* r and class of every latent, for "find a latent" when it has no card: our numbers only */
    fputs("var R=[", f);
    for (i = 0; i < an->n_latents; i++) fprintf(f, "%s%.3g", i ? "," : "", an->r[i] == an->r[i] ? an->r[i] : -1.0);
    fputs("],C=[", f);
    for (i = 0; i < an->n_latents; i++) fprintf(f, "%s%d", i ? "," : "", an->cls[i]);
    fputs("],N=[", f);
    for (c = 0; c < MOEXC_CLASS_COUNT; c++) fprintf(f, "%s\"%s\"", c ? "," : "", moexc_latent_class_name(c));
    fputs("];\n(function(){var g=document.getElementById('cards'),q=document.getElementById('q'),fc=document.getElementById('fc'),"
          "so=document.getElementById('so'),fd=document.getElementById('found'),all=[].slice.call(g.children);\n"
          "function upd(){var k=so.value,v=q.value.trim(),c=fc.value,shown=0;\n"
          " all.sort(function(a,b){var x=+a.dataset[k],y=+b.dataset[k];if(k==='order'||k==='idx')return x-y;return y-x;});\n"
          " all.forEach(function(e){var on=(c===''||e.dataset.cls===c)&&(v===''||e.dataset.idx===v);e.style.display=on?'':'none';"
          "if(on)shown++;g.appendChild(e);});\n"
          " fd.textContent=v!==''&&!shown?(+v>=0&&+v<R.length?'latent '+v+' has no card: '+N[C[+v]]+', r = '+R[+v]:'no latent '+v):'';}\n"
          " q.addEventListener('input',upd);fc.addEventListener('change',upd);so.addEventListener('change',upd);})();\n"
          "</script>\n</body></html>\n", f);
    if (ferror(f)) { fclose(f); remove(tmp); snprintf(msg, msg_size, "write error on %.400s", tmp); goto out; }
    if (fclose(f) != 0 || moexc_replace_file(tmp, path, NULL) != MOEXC_OK) {
        remove(tmp);
        snprintf(msg, msg_size, "cannot finish %.400s", path);
        goto out;
    }
    ok = 1;
out:
    for (i = 0; i < n_png; i++) free(pngs[i]);
    free(sel); free(kind); free(ent);
    return !ok;
}

#endif /* MOEXC_REPORT_PAGE_H */
