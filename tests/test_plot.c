/* tests/test_plot.c - the raster plotting section: primitives, font, ticks,
   colour maps, and the charts checked at known pixels. */
#include "../moexc.h"
#include "harness.h"

#define INK 0x222222u

/* (src a + dst (255 - a)) / 255 rounded, per channel: what a band tint must be. */
static uint32_t blend(uint32_t src, uint32_t dst, int a)
{
    uint32_t out = 0;
    int ch;
    for (ch = 16; ch >= 0; ch -= 8) {
        int s = (int)((src >> ch) & 255), d = (int)((dst >> ch) & 255);
        out |= (uint32_t)((s * a + d * (255 - a) + 127) / 255) << ch;
    }
    return out;
}

/* The plot frame: columns / rows that are mostly INK. The plot area is
   [*x0, *x1) x [*y0, *y1) inside the frame lines. */
static int find_frame(const moexc_canvas *c, int *x0, int *y0, int *x1, int *y1)
{
    int x, y, first = -1, last = -1, top = -1, bottom = -1;
    for (x = 0; x < c->width; x++) {
        int n = 0;
        for (y = 0; y < c->height; y++) n += moexc_canvas_get(c, x, y) == INK;
        if (n > c->height / 2) { if (first < 0) first = x; last = x; }
    }
    for (y = 0; y < c->height; y++) {
        int n = 0;
        for (x = 0; x < c->width; x++) n += moexc_canvas_get(c, x, y) == INK;
        if (n > c->width / 2) { if (top < 0) top = y; bottom = y; }
    }
    *x0 = first + 1; *x1 = last; *y0 = top + 1; *y1 = bottom;
    return first >= 0 && last > first + 2 && top >= 0 && bottom > top + 2;
}

static int count_color(const moexc_canvas *c, int x0, int y0, int x1, int y1, uint32_t color)
{
    int x, y, n = 0;
    for (y = y0; y < y1; y++) for (x = x0; x < x1; x++) n += moexc_canvas_get(c, x, y) == color;
    return n;
}

static void test_primitives(void)
{
    moexc_canvas c;
    unsigned char buf[20 * 10 * 3];
    moexc_error err;
    TH_CHECK(moexc_canvas_init(&c, 40, 30, &err) == MOEXC_OK, "init");
    TH_CHECK(moexc_canvas_get(&c, 0, 0) == 0xFFFFFFu && moexc_canvas_get(&c, 39, 29) == 0xFFFFFFu, "white");
    moexc_draw_rect(&c, 5, 6, 10, 8, 0x123456u);
    TH_CHECK(moexc_canvas_get(&c, 5, 6) == 0x123456u && moexc_canvas_get(&c, 9, 7) == 0x123456u, "rect inside");
    TH_CHECK(moexc_canvas_get(&c, 10, 7) == 0xFFFFFFu && moexc_canvas_get(&c, 9, 8) == 0xFFFFFFu, "rect end exclusive");
    TH_CHECK(c.rgb[(6 * 40 + 5) * 3] == 0x12 && c.rgb[(6 * 40 + 5) * 3 + 2] == 0x56, "RGB byte order");
    moexc_draw_rect(&c, -100, -100, 2, 1, 0xFF0000u);          /* clipped, no crash */
    TH_CHECK(moexc_canvas_get(&c, 1, 0) == 0xFF0000u && moexc_canvas_get(&c, 2, 0) == 0xFFFFFFu, "clipped rect");
    moexc_draw_rect_alpha(&c, 20, 20, 21, 21, 0x000000u, 128);
    TH_CHECK(moexc_canvas_get(&c, 20, 20) == blend(0, 0xFFFFFFu, 128), "alpha blend %06x", moexc_canvas_get(&c, 20, 20));
    TH_CHECK(moexc_canvas_get(&c, -1, 3) == 0 && moexc_canvas_get(&c, 40, 3) == 0, "get outside");

    moexc_canvas_clear(&c, 0xFFFFFFu);
    moexc_draw_line(&c, 2, 3, 30, 3, 1, 0x0000FFu);                /* horizontal */
    TH_CHECK(count_color(&c, 0, 0, 40, 30, 0x0000FFu) == 29, "horizontal line covers 29 pixels");
    moexc_draw_line(&c, 0, 0, 20, 20, 1, 0x00FF00u);               /* diagonal */
    TH_CHECK(moexc_canvas_get(&c, 10, 10) == 0x00FF00u && moexc_canvas_get(&c, 20, 20) == 0x00FF00u &&
             moexc_canvas_get(&c, 11, 10) == 0xFFFFFFu, "diagonal");
    moexc_draw_line(&c, 35, 0, 35, 29, 3, 0xFF00FFu);               /* thick vertical */
    TH_CHECK(moexc_canvas_get(&c, 34, 15) == 0xFF00FFu && moexc_canvas_get(&c, 36, 15) == 0xFF00FFu &&
             moexc_canvas_get(&c, 33, 15) == 0xFFFFFFu, "thickness 3");
    /* a line to a far-away point is clipped first: instant, and it still reaches the edge */
    moexc_draw_line(&c, 5, 25, 2000000000, 25, 1, 0x00FFFFu);
    TH_CHECK(moexc_canvas_get(&c, 39, 25) == 0x00FFFFu && moexc_canvas_get(&c, 5, 25) == 0x00FFFFu, "far line");
    moexc_draw_rect_outline(&c, 10, 12, 20, 18, 1, 0x111111u);
    TH_CHECK(moexc_canvas_get(&c, 10, 15) == 0x111111u && moexc_canvas_get(&c, 19, 15) == 0x111111u &&
             moexc_canvas_get(&c, 15, 17) == 0x111111u && moexc_canvas_get(&c, 15, 15) != 0x111111u, "outline");
    moexc_canvas_free(&c);
    TH_CHECK(c.rgb == NULL, "freed");

    memset(buf, 0, sizeof(buf));
    moexc_canvas_wrap(&c, buf, 20, 10);
    moexc_draw_rect(&c, 0, 0, 1, 1, 0xABCDEFu);
    TH_CHECK(buf[0] == 0xAB && buf[1] == 0xCD && buf[2] == 0xEF && buf[3] == 0, "caller-owned buffer");
    moexc_canvas_free(&c);           /* does not free a wrapped buffer */
    TH_CHECK(moexc_canvas_init(&c, 0, 10, &err) == MOEXC_ERR_ARG, "zero width refused");
}

static void test_font(void)
{
    moexc_canvas c;
    int w, x, y, inside = 0, outside = 0;
    TH_CHECK(moexc_text_width("ab", 2) == 22 && moexc_text_width("", 3) == 0 && moexc_text_height(2) == 18, "metrics");
    TH_CHECK(moexc_canvas_init(&c, 60, 40, NULL) == MOEXC_OK, "init");
    /* 'I' is .###. on its top row and 7 rows tall */
    w = moexc_draw_text(&c, 10, 10, "I", 1, 0x000000u);
    TH_CHECK(w == 5, "width of one glyph %d", w);
    TH_CHECK(moexc_canvas_get(&c, 10, 10) == 0xFFFFFFu && moexc_canvas_get(&c, 11, 10) == 0 &&
             moexc_canvas_get(&c, 13, 10) == 0 && moexc_canvas_get(&c, 14, 10) == 0xFFFFFFu, "I top row");
    TH_CHECK(moexc_canvas_get(&c, 12, 13) == 0 && moexc_canvas_get(&c, 11, 13) == 0xFFFFFFu, "I stem");
    TH_CHECK(moexc_canvas_get(&c, 12, 16) == 0 && moexc_canvas_get(&c, 12, 17) == 0xFFFFFFu, "I is 7 rows");
    /* scale 2 text stays inside its box and draws something in every glyph */
    moexc_canvas_clear(&c, 0xFFFFFFu);
    w = moexc_draw_text(&c, 3, 4, "g1?", 2, 0x000000u);
    for (y = 0; y < 40; y++)
        for (x = 0; x < 60; x++) {
            int ink = moexc_canvas_get(&c, x, y) == 0;
            if (x >= 3 && x < 3 + w && y >= 4 && y < 4 + moexc_text_height(2)) inside += ink; else outside += ink;
        }
    TH_CHECK(inside > 40 && outside == 0, "text in its box: %d inside, %d outside", inside, outside);
    TH_CHECK(count_color(&c, 3, 4 + 14, 3 + 10, 4 + 18, 0) > 0, "g has a descender");
    TH_CHECK(count_color(&c, 15, 4, 25, 22, 0) > 0 && count_color(&c, 27, 4, 37, 22, 0) > 0, "every glyph inked");
    /* vertical text: box is text_height wide, text_width tall; reads bottom to top */
    moexc_canvas_clear(&c, 0xFFFFFFu);
    w = moexc_draw_text_vertical(&c, 5, 2, "L", 1, 0x000000u);
    /* 'L' has its stem on column 0 -> the bottom row of the rotated box; its foot row 6 -> column 5 + 6 */
    TH_CHECK(count_color(&c, 5, 2 + w - 1, 5 + 7, 2 + w, 0) == 7, "rotated stem on the bottom row");
    TH_CHECK(count_color(&c, 5 + 6, 2, 5 + 7, 2 + w, 0) == 5, "rotated foot in column 6");
    moexc_canvas_free(&c);
}

static void test_ticks_and_colors(void)
{
    double t[16];
    int n = moexc_nice_ticks(0.0, 1.0, 5, t, 16);
    TH_CHECK(n == 6 && t[0] == 0.0 && fabs(t[1] - 0.2) < 1e-12 && fabs(t[5] - 1.0) < 1e-12, "0..1: %d ticks", n);
    n = moexc_nice_ticks(-1.0, 1.0, 5, t, 16);
    TH_CHECK(n == 5 && t[0] == -1.0 && t[2] == 0.0 && !signbit(t[2]) && t[3] == 0.5, "-1..1 by 0.5: %d", n);
    n = moexc_nice_ticks(0.0, 7350.0, 5, t, 16);
    TH_CHECK(n == 8 && t[7] == 7000.0, "0..7350 by 1000: %d", n);
    n = moexc_nice_ticks(0.013, 0.087, 5, t, 16);
    TH_CHECK(n == 7 && fabs(t[0] - 0.02) < 1e-12 && fabs(t[6] - 0.08) < 1e-12, "0.013..0.087 by 0.01: %d", n);
    n = moexc_nice_ticks(0.0, 0.3, 5, t, 16);
    TH_CHECK(n == 7 && fabs(t[1] - 0.05) < 1e-12, "0..0.3 by 0.05: %d", n);
    n = moexc_nice_ticks(0.0, 1.0, 5, t, 3);
    TH_CHECK(n == 3, "max_ticks respected");
    TH_CHECK(moexc_colormap_viridis(0.0) == 0x440154u && moexc_colormap_viridis(1.0) == 0xFDE725u &&
             moexc_colormap_viridis(0.5) == 0x21918Cu && moexc_colormap_viridis(-3.0) == 0x440154u, "viridis");
    TH_CHECK(moexc_palette(0) == 0x0072B2u && moexc_palette(8) == moexc_palette(0), "palette cycles");
    TH_CHECK(moexc_latent_class_color(MOEXC_CLASS_MOE_ONLY) != moexc_latent_class_color(MOEXC_CLASS_DENSE_ONLY), "class colours");
}

static void test_histogram_chart(void)
{
    moexc_canvas c;
    moexc_histogram h, two[2];
    moexc_plot_options o;
    moexc_band band;
    moexc_error err;
    int x0, y0, x1, y1, xq, x3q, ypx, ok;
    uint32_t bar = 0x404040u;
    TH_CHECK(moexc_canvas_init(&c, 400, 300, NULL) == MOEXC_OK, "init");
    moexc_histogram_init(&h, 2, 0.0, 1.0, 0, NULL);
    h.counts[0] = 5; h.counts[1] = 8; h.total = 13;
    band.lo = 0.0; band.hi = 0.5; band.color = 0xD55E00u; band.label = "MoE-only";
    memset(&o, 0, sizeof(o));
    o.y_min = 0.0; o.y_max = 10.0; o.no_legend = 1; o.title = "T";
    TH_CHECK(moexc_plot_histograms(&c, &h, 1, NULL, &bar, &band, 1, &o, &err) == MOEXC_OK, "plot: %s", err.message);
    ok = find_frame(&c, &x0, &y0, &x1, &y1);
    TH_CHECK(ok, "frame found");
    if (!ok) { moexc_canvas_free(&c); return; }
    TH_CHECK(x0 > 20 && y0 > 20 && x1 < 400 && y1 < 280, "margins leave room for labels: %d %d %d %d", x0, y0, x1, y1);
    xq = x0 + (x1 - x0) / 4; x3q = x0 + 3 * (x1 - x0) / 4;
    /* value v sits at pixel row (y1 - 1) - v / 10 * (y1 - 1 - y0) */
#define ROW(v) ((int)floor((y1 - 1) - (v) / 10.0 * (y1 - 1 - y0) + 0.5))
    TH_CHECK(moexc_canvas_get(&c, xq, ROW(4.5)) == bar, "bar 0 below 5");
    TH_CHECK(moexc_canvas_get(&c, xq, ROW(5.0) - 2) == blend(0xD55E00u, 0xFFFFFFu, 60), "band tint above bar 0: %06x",
             moexc_canvas_get(&c, xq, ROW(5.0) - 2));
    TH_CHECK(moexc_canvas_get(&c, x3q, ROW(7.5)) == bar && moexc_canvas_get(&c, x3q, ROW(8.0) - 2) == 0xFFFFFFu,
             "bar 1 ends at 8, no band on the right half");
    for (ypx = ROW(5.0) + 1; ypx < y1; ypx++) if (moexc_canvas_get(&c, xq, ypx) != bar) break;
    TH_CHECK(ypx == y1, "bar 0 reaches the axis (stopped at %d of %d)", ypx, y1);
    TH_CHECK(moexc_canvas_get(&c, x0 - 1, (y0 + y1) / 2) == INK && moexc_canvas_get(&c, (x0 + x1) / 2, y1) == INK, "axis lines");
    TH_CHECK(count_color(&c, 0, 0, 400, y0 - 2, INK) > 10, "title pixels drawn");
    TH_CHECK(count_color(&c, 0, y1 + 2, 400, 300, INK) > 30, "x tick labels drawn");
    TH_CHECK(count_color(&c, 0, y0, x0 - 2, y1, INK) > 30, "y tick labels drawn");

    /* the legend appears when asked (in the emptier top corner: the left one here) */
    o.no_legend = 0;
    {
        const char *lab = "count";
        TH_CHECK(moexc_plot_histograms(&c, &h, 1, &lab, &bar, &band, 1, &o, &err) == MOEXC_OK, "plot with legend");
        TH_CHECK(count_color(&c, x0, y0, (x0 + x1) / 2, ROW(5.0) - 1, INK) > 20, "legend text top-left");
        TH_CHECK(count_color(&c, x3q - 5, y0, x1, ROW(8.0) - 1, INK) == 0, "top right left free");
    }

    /* log y: 1..1000, a bar of 100 ends two thirds of the way up */
    memset(&o, 0, sizeof(o));
    o.log_y = 1; o.y_min = 1.0; o.y_max = 1000.0; o.no_legend = 1;
    h.counts[0] = 100; h.counts[1] = 0;
    TH_CHECK(moexc_plot_histograms(&c, &h, 1, NULL, &bar, NULL, 0, &o, &err) == MOEXC_OK, "log plot");
    ok = find_frame(&c, &x0, &y0, &x1, &y1);
    TH_CHECK(ok, "frame found");
    if (ok) {
        int top = (int)floor((y1 - 1) - 2.0 / 3.0 * (y1 - 1 - y0) + 0.5);
        xq = x0 + (x1 - x0) / 4; x3q = x0 + 3 * (x1 - x0) / 4;
        TH_CHECK(moexc_canvas_get(&c, xq, top + 1) == bar && moexc_canvas_get(&c, xq, top - 2) != bar, "log bar height");
        TH_CHECK(count_color(&c, x3q, y0, x3q + 1, y1, bar) == 0, "empty bin draws nothing");
    }

    /* overlaid histograms draw step outlines in their colours */
    moexc_histogram_init(&two[0], 4, 0.0, 1.0, 0, NULL);
    moexc_histogram_init(&two[1], 4, 0.0, 1.0, 0, NULL);
    moexc_histogram_add1(&two[0], 0.1); moexc_histogram_add1(&two[1], 0.9);
    memset(&o, 0, sizeof(o));
    TH_CHECK(moexc_plot_histograms(&c, two, 2, NULL, NULL, NULL, 0, &o, &err) == MOEXC_OK, "overlay");
    TH_CHECK(count_color(&c, 0, 0, 400, 300, moexc_palette(0)) > 50 && count_color(&c, 0, 0, 400, 300, moexc_palette(1)) > 50,
             "both outlines drawn");
    /* errors */
    moexc_histogram_free(&two[1]);
    moexc_histogram_init(&two[1], 5, 0.0, 1.0, 0, NULL);
    TH_CHECK(moexc_plot_histograms(&c, two, 2, NULL, NULL, NULL, 0, &o, &err) == MOEXC_ERR_ARG &&
             strstr(err.message, "binning"), "different binning refused: %s", err.message);
    o.log_y = 1; o.y_min = -1.0; o.y_max = 10.0;
    TH_CHECK(moexc_plot_histograms(&c, &h, 1, NULL, NULL, NULL, 0, &o, &err) == MOEXC_ERR_ARG, "log y with lo < 0 refused");
    moexc_histogram_free(&two[0]);
    moexc_histogram_free(&two[1]);
    moexc_histogram_free(&h);
    moexc_canvas_free(&c);
#undef ROW
}

static void test_line_chart(void)
{
    moexc_canvas c;
    moexc_plot_options o;
    moexc_series s;
    static const float x[3] = { 0.0f, 0.5f, 1.0f }, y[3] = { 0.0f, 0.5f, 1.0f };
    float ynan[3] = { 0.0f, NAN, 1.0f };
    int x0, y0, x1, y1, ok;
    TH_CHECK(moexc_canvas_init(&c, 300, 240, NULL) == MOEXC_OK, "init");
    memset(&o, 0, sizeof(o));
    o.x_min = 0; o.x_max = 1; o.y_min = 0; o.y_max = 1; o.no_legend = 1;
    s.x = x; s.y = y; s.n = 3; s.label = "y = x";
    TH_CHECK(moexc_plot_lines(&c, &s, 1, &o, NULL) == MOEXC_OK, "plot");
    ok = find_frame(&c, &x0, &y0, &x1, &y1);
    TH_CHECK(ok, "frame");
    if (ok) {
        int cx = x0 + (x1 - 1 - x0) / 2, cy = (y1 - 1) - (y1 - 1 - y0) / 2;
        TH_CHECK(count_color(&c, cx - 2, cy - 2, cx + 3, cy + 3, moexc_palette(0)) > 0, "line through the centre");
        TH_CHECK(count_color(&c, x0, y0, cx - 10, cy - 10, moexc_palette(0)) == 0, "nothing top-left of the diagonal");
    }
    /* a NaN breaks the line: no pixels at the centre */
    s.y = ynan;
    TH_CHECK(moexc_plot_lines(&c, &s, 1, &o, NULL) == MOEXC_OK, "plot with NaN");
    if (ok) {
        int cx = x0 + (x1 - 1 - x0) / 2, cy = (y1 - 1) - (y1 - 1 - y0) / 2;
        TH_CHECK(count_color(&c, cx - 5, cy - 5, cx + 6, cy + 6, moexc_palette(0)) == 0, "gap at the NaN");
    }
    ynan[0] = ynan[2] = NAN;
    TH_CHECK(moexc_plot_lines(&c, &s, 1, NULL, NULL) == MOEXC_ERR_ARG, "all-NaN series refused");
    moexc_canvas_free(&c);
}

/* Tick marks under the x axis: runs of ink in a row just below the frame. */
static int count_x_ticks(const moexc_canvas *c, int x0, int x1, int row)
{
    int x, runs = 0, in = 0;
    for (x = x0 - 3; x <= x1 + 3; x++) {
        int ink = moexc_canvas_get(c, x, row) == INK;
        runs += ink && !in;
        in = ink;
    }
    return runs;
}

/* x data that are all whole numbers (layers, k') get ticks 1 apart, not
   0.5; fractional data over the same range keep the finer step. */
static void test_whole_number_ticks(void)
{
    static const float whole_x[5] = { 0, 1, 2, 3, 4 }, half_x[9] = { 0, 0.5f, 1, 1.5f, 2, 2.5f, 3, 3.5f, 4 };
    static const float y[9] = { 1, 3, 2, 5, 4, 2, 3, 1, 2 };
    moexc_canvas c;
    moexc_series sr;
    moexc_plot_options o;
    moexc_error err;
    int x0, y0, x1, y1, n_whole = -1, n_half = -1;
    TH_CHECK(moexc_canvas_init(&c, 500, 300, NULL) == MOEXC_OK, "init");
    memset(&o, 0, sizeof(o));
    o.no_legend = 1;
    memset(&sr, 0, sizeof(sr));
    sr.x = whole_x; sr.y = y; sr.n = 5;
    moexc_canvas_clear(&c, 0xFFFFFFu);
    TH_CHECK(moexc_plot_lines(&c, &sr, 1, &o, &err) == MOEXC_OK, "whole x: %s", err.message);
    if (find_frame(&c, &x0, &y0, &x1, &y1)) n_whole = count_x_ticks(&c, x0, x1, y1 + 2);
    sr.x = half_x; sr.n = 9;
    moexc_canvas_clear(&c, 0xFFFFFFu);
    TH_CHECK(moexc_plot_lines(&c, &sr, 1, &o, &err) == MOEXC_OK, "half x: %s", err.message);
    if (find_frame(&c, &x0, &y0, &x1, &y1)) n_half = count_x_ticks(&c, x0, x1, y1 + 2);
    TH_CHECK(n_whole == 5, "x 0..4 in whole numbers: %d ticks, want 5 (0 1 2 3 4)", n_whole);
    TH_CHECK(n_half == 9, "x 0..4 in halves: %d ticks, want 9 (step 0.5)", n_half);
    moexc_canvas_free(&c);
}

static void test_heatmap(void)
{
    moexc_canvas c;
    moexc_plot_options o;
    static const float v[2] = { 0.0f, 1.0f };
    static const char *const rows[1] = { "code" };
    int x, y, dark = 0, bright = 0, first_dark = -1, last_bright = -1;
    moexc_error err;
    TH_CHECK(moexc_canvas_init(&c, 400, 200, NULL) == MOEXC_OK, "init");
    memset(&o, 0, sizeof(o));
    o.title = "routing";
    TH_CHECK(moexc_plot_heatmap(&c, v, 1, 2, rows, NULL, &o, &err) == MOEXC_OK, "heatmap: %s", err.message);
    /* a row through the cells: a run of viridis(0), then an equal run of viridis(1) */
    for (y = 0; y < 200 && count_color(&c, 0, y, 400, y + 1, 0x440154u) == 0; y++) {}
    y += 10;
    for (x = 0; x < 400 && moexc_canvas_get(&c, x, y) != 0x440154u; x++) {}
    first_dark = x;
    for (; x < 400 && moexc_canvas_get(&c, x, y) == 0x440154u; x++) dark++;
    for (; x < 400 && moexc_canvas_get(&c, x, y) == 0xFDE725u; x++) bright++;
    last_bright = x;
    TH_CHECK(first_dark > 0 && dark > 50, "dark cell run %d", dark);
    TH_CHECK(bright == dark && moexc_canvas_get(&c, last_bright, y) == INK, "bright cell run %d vs %d, then the frame", bright, dark);
    TH_CHECK(count_color(&c, 0, 0, first_dark, 200, INK) > 20, "row label drawn");
    o.annotate = 1;
    TH_CHECK(moexc_plot_heatmap(&c, v, 1, 2, rows, NULL, &o, &err) == MOEXC_OK, "annotated");
    TH_CHECK(count_color(&c, first_dark, 0, first_dark + dark, 200, 0xFFFFFFu) > 10, "white value text on the dark cell");
    o.width = 30; o.height = 30;
    TH_CHECK(moexc_plot_heatmap(&c, v, 1, 2, rows, NULL, &o, &err) == MOEXC_ERR_ARG, "too small refused");
    moexc_canvas_free(&c);
}

int main(void)
{
    TH_RUN(test_primitives);
    TH_RUN(test_font);
    TH_RUN(test_ticks_and_colors);
    TH_RUN(test_histogram_chart);
    TH_RUN(test_line_chart);
    TH_RUN(test_whole_number_ticks);
    TH_RUN(test_heatmap);
    return th_summary();
}
