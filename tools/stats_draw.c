/*
 * stats_draw.c - the pictures of `moecl stats`, drawn with cairo as PNG and
 * SVG: the layer x expert load heatmap, the co-activation matrix of one
 * layer, and a passage with each token coloured by its first-choice expert.
 *
 * Each picture is one paint function called on a cairo context; it is run
 * once on an image surface (PNG, through cairo's PNG writer) and once on an
 * SVG surface. Built without cairo (no libcairo2-dev), every entry point
 * fails with a message saying so.
 */
#include "stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void stats_pic_free(stats_pic *p) {
    free(p->png);
    free(p->svg);
    memset(p, 0, sizeof *p);
}

void stats_base64(FILE *f, const unsigned char *p, size_t n) {
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        const uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        fputc(a[v >> 18 & 63], f);
        fputc(a[v >> 12 & 63], f);
        fputc(i + 1 < n ? a[v >> 6 & 63] : '=', f);
        fputc(i + 2 < n ? a[v & 63] : '=', f);
    }
}

#ifndef MOECL_HAVE_CAIRO

bool stats_have_cairo(void) { return false; }

void stats_draw_release(void) {}

static bool no_cairo(stats_pic *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    snprintf(err, errlen, "this moecl was built without cairo (Debian: libcairo2-dev)");
    return false;
}
bool stats_draw_heatmap(const stats_data *d, stats_pic *out, char *err, size_t errlen) {
    (void)d;
    return no_cairo(out, err, errlen);
}
bool stats_draw_coactivation(const stats_data *d, stats_pic *out, char *err, size_t errlen) {
    (void)d;
    return no_cairo(out, err, errlen);
}
bool stats_draw_passage(const stats_data *d, stats_pic *out, char *err, size_t errlen) {
    (void)d;
    return no_cairo(out, err, errlen);
}

#else

#include <cairo-svg.h>
#include <cairo.h>
#ifdef MOECL_HAVE_FONTCONFIG
#include <fontconfig/fontconfig.h>
#endif

bool stats_have_cairo(void) { return true; }

#define FONT "DejaVu Sans"

/* ---- colours ---------------------------------------------------------------- */

typedef struct rgb {
    double r, g, b;
} rgb;

/* Expert e of E: 12 well-separated hues, then the golden angle around the wheel. */
static rgb expert_colour(int e) {
    static const rgb k[12] = {{0.12, 0.47, 0.71}, {1.00, 0.50, 0.05}, {0.17, 0.63, 0.17}, {0.84, 0.15, 0.16},
                              {0.58, 0.40, 0.74}, {0.55, 0.34, 0.29}, {0.89, 0.47, 0.76}, {0.50, 0.50, 0.50},
                              {0.74, 0.74, 0.13}, {0.09, 0.75, 0.81}, {0.68, 0.78, 0.91}, {1.00, 0.73, 0.47}};
    if (e < 12) return k[e];
    const double h = fmod(e * 137.508, 360.0) / 60.0, s = 0.65, v = 0.85;
    const double c = v * s, x = c * (1 - fabs(fmod(h, 2) - 1)), m = v - c;
    const int i = (int)h;
    const rgb r = i == 0 ? (rgb){c, x, 0} : i == 1 ? (rgb){x, c, 0} : i == 2 ? (rgb){0, c, x}
                : i == 3 ? (rgb){0, x, c} : i == 4 ? (rgb){x, 0, c} : (rgb){c, 0, x};
    return (rgb){r.r + m, r.g + m, r.b + m};
}

static rgb mix(rgb a, rgb b, double t) {
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    return (rgb){a.r + (b.r - a.r) * t, a.g + (b.g - a.g) * t, a.b + (b.b - a.b) * t};
}

/* Load relative to the mean: blue (unused) - white (the mean) - red (3x and more). */
static rgb load_colour(double ratio) {
    const rgb blue = {0.16, 0.35, 0.75}, white = {0.97, 0.97, 0.97}, red = {0.75, 0.08, 0.10};
    return ratio < 1 ? mix(blue, white, ratio) : mix(white, red, (ratio - 1) / 2);
}

static double luminance(rgb c) { return 0.2126 * c.r + 0.7152 * c.g + 0.0722 * c.b; }

static void set(cairo_t *cr, rgb c) { cairo_set_source_rgb(cr, c.r, c.g, c.b); }

static void text_at(cairo_t *cr, double x, double y, double size, const char *s, double align) {
    cairo_set_font_size(cr, size);
    cairo_text_extents_t te;
    cairo_text_extents(cr, s, &te);
    cairo_move_to(cr, x - align * te.x_advance, y);
    cairo_show_text(cr, s);
}

/* ---- rendering one painter to PNG and SVG ---------------------------------- */

typedef struct membuf {
    unsigned char *p;
    size_t n, cap;
    bool failed;
} membuf;

static cairo_status_t mem_write(void *closure, const unsigned char *data, unsigned int length) {
    membuf *b = closure;
    if (b->n + length > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 65536;
        while (cap < b->n + length) cap *= 2;
        unsigned char *q = realloc(b->p, cap);
        if (!q) {
            b->failed = true;
            return CAIRO_STATUS_WRITE_ERROR;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, length);
    b->n += length;
    return CAIRO_STATUS_SUCCESS;
}

typedef void (*painter)(cairo_t *cr, const stats_data *d, int w, int h);

static void prepare(cairo_t *cr, int w, int h) {
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_rectangle(cr, 0, 0, w, h);
    cairo_fill(cr);
    cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
}

static bool render(const stats_data *d, painter paint, int w, int h, stats_pic *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    membuf png = {0}, svg = {0};
    cairo_surface_t *s = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, w, h);
    cairo_t *cr = cairo_create(s);
    prepare(cr, w, h);
    paint(cr, d, w, h);
    cairo_status_t st = cairo_status(cr);
    cairo_destroy(cr);
    if (st == CAIRO_STATUS_SUCCESS) st = cairo_surface_write_to_png_stream(s, mem_write, &png);
    cairo_surface_destroy(s);
    if (st == CAIRO_STATUS_SUCCESS) {
        s = cairo_svg_surface_create_for_stream(mem_write, &svg, w, h);
        cr = cairo_create(s);
        prepare(cr, w, h);
        paint(cr, d, w, h);
        st = cairo_status(cr);
        cairo_destroy(cr);
        cairo_surface_finish(s);
        if (st == CAIRO_STATUS_SUCCESS) st = cairo_surface_status(s);
        cairo_surface_destroy(s);
    }
    if (st != CAIRO_STATUS_SUCCESS || png.failed || svg.failed) {
        snprintf(err, errlen, "cairo: %s", png.failed || svg.failed ? "out of memory" : cairo_status_to_string(st));
        free(png.p);
        free(svg.p);
        return false;
    }
    *out = (stats_pic){.png = png.p, .png_len = png.n, .svg = svg.p, .svg_len = svg.n, .width = w, .height = h};
    return true;
}

/* ---- the load heatmap: layers down, experts across ------------------------- */

typedef struct grid {
    double x0, y0, cw, ch;
} grid;

static grid heatmap_grid(const stats_data *d) {
    const double cw = d->E <= 16 ? 44 : d->E <= 64 ? 14 : 6, ch = d->L <= 32 ? 24 : 12;
    return (grid){70, 60, cw, ch};
}

static void legend_bar(cairo_t *cr, double x, double y, double w, const char *left, const char *mid,
                       const char *right) {
    for (int i = 0; i < 100; i++) {
        set(cr, load_colour(3.0 * i / 99.0));
        cairo_rectangle(cr, x + w * i / 100.0, y, w / 100.0 + 0.5, 12);
        cairo_fill(cr);
    }
    set(cr, (rgb){0.2, 0.2, 0.2});
    text_at(cr, x, y + 26, 11, left, 0);
    text_at(cr, x + w / 3, y + 26, 11, mid, 0.5);
    text_at(cr, x + w, y + 26, 11, right, 1);
}

static void paint_heatmap(cairo_t *cr, const stats_data *d, int w, int h) {
    (void)h;
    const grid g = heatmap_grid(d);
    char s[64];
    set(cr, (rgb){0.1, 0.1, 0.1});
    cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_BOLD);
    snprintf(s, sizeof s, "Load per expert, %lld tokens, top-%d", (long long)d->N, d->K);
    text_at(cr, 10, 22, 15, s, 0);
    cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    text_at(cr, g.x0 + d->E * g.cw / 2, 40, 11, "expert", 0.5);
    const double mean = (double)d->N * d->K / d->E;
    for (int e = 0; e < d->E; e++)
        if (d->E <= 16 || e % 8 == 0) {
            snprintf(s, sizeof s, "%d", e);
            text_at(cr, g.x0 + (e + 0.5) * g.cw, g.y0 - 4, 10, s, 0.5);
        }
    for (int l = 0; l < d->L; l++) {
        const double y = g.y0 + l * g.ch;
        if (d->L <= 32 || l % 4 == 0) {
            snprintf(s, sizeof s, "layer %d", l);
            set(cr, (rgb){0.1, 0.1, 0.1});
            text_at(cr, g.x0 - 6, y + g.ch * 0.7, 10, s, 1);
        }
        const stats_layer *y_ = &d->layers[l];
        for (int e = 0; e < d->E; e++) {
            const double x = g.x0 + e * g.cw;
            if (y_->dense) {
                set(cr, (rgb){0.85, 0.85, 0.85});
                cairo_rectangle(cr, x, y, g.cw, g.ch);
                cairo_fill(cr);
                continue;
            }
            const double ratio = mean > 0 ? (double)y_->counts[e] / mean : 0;
            const rgb c = load_colour(ratio);
            set(cr, c);
            cairo_rectangle(cr, x, y, g.cw, g.ch);
            cairo_fill(cr);
            if (ratio > 3.0) { /* the alert */
                cairo_set_source_rgb(cr, 0, 0, 0);
                cairo_set_line_width(cr, 2);
                cairo_rectangle(cr, x + 1, y + 1, g.cw - 2, g.ch - 2);
                cairo_stroke(cr);
            }
            if (g.cw >= 40 && g.ch >= 20) {
                snprintf(s, sizeof s, "%.0f%%", 100.0 * (double)y_->counts[e] / ((double)d->N * d->K));
                set(cr, luminance(c) < 0.5 ? (rgb){1, 1, 1} : (rgb){0.1, 0.1, 0.1});
                text_at(cr, x + g.cw / 2, y + g.ch * 0.68, 10, s, 0.5);
            }
        }
        if (y_->dense) {
            set(cr, (rgb){0.3, 0.3, 0.3});
            text_at(cr, g.x0 + d->E * g.cw / 2, y + g.ch * 0.7, 10, "dense", 0.5);
        }
    }
    const double ly = g.y0 + d->L * g.ch + 16;
    legend_bar(cr, g.x0, ly, w - g.x0 - 20 < 420 ? w - g.x0 - 20 : 420, "unused", "the mean (uniform)", "3x mean");
}

bool stats_draw_heatmap(const stats_data *d, stats_pic *out, char *err, size_t errlen) {
    const grid g = heatmap_grid(d);
    int w = (int)(g.x0 + d->E * g.cw + 20), h = (int)(g.y0 + d->L * g.ch + 60);
    if (w < 520) w = 520;
    return render(d, paint_heatmap, w, h, out, err, errlen);
}

/* ---- co-activation of one layer -------------------------------------------- */

static double coact_cell(const stats_data *d) { return d->E <= 16 ? 40 : d->E <= 64 ? 12 : 5; }

static void paint_coact(cairo_t *cr, const stats_data *d, int w, int h) {
    (void)w;
    (void)h;
    const int l = d->layer_shown, E = d->E;
    const stats_layer *y = &d->layers[l];
    const double cs = coact_cell(d), x0 = 50, y0 = 60;
    char s[96];
    set(cr, (rgb){0.1, 0.1, 0.1});
    cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_BOLD);
    snprintf(s, sizeof s, "Co-activation, layer %d%s", l, y->dense ? " (dense: no router)" : "");
    text_at(cr, 10, 22, 15, s, 0);
    cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    text_at(cr, 10, 40, 11, "tokens that chose both experts (diagonal: tokens per expert)", 0);
    uint64_t mx = 1;
    for (int i = 0; i < E; i++)
        for (int j = 0; j < E; j++)
            if (i != j && y->coact[(size_t)i * E + j] > mx) mx = y->coact[(size_t)i * E + j];
    const rgb lo = {0.98, 0.98, 0.98}, hi = {0.05, 0.20, 0.50};
    for (int i = 0; i < E; i++) {
        if (E <= 16 || i % 8 == 0) {
            snprintf(s, sizeof s, "%d", i);
            set(cr, (rgb){0.1, 0.1, 0.1});
            text_at(cr, x0 - 4, y0 + (i + 0.7) * cs, 10, s, 1);
            text_at(cr, x0 + (i + 0.5) * cs, y0 - 4, 10, s, 0.5);
        }
        for (int j = 0; j < E; j++) {
            const uint64_t v = y->coact[(size_t)i * E + j];
            const rgb c = i == j ? (rgb){0.80, 0.80, 0.80} : mix(lo, hi, sqrt((double)v / (double)mx));
            set(cr, c);
            cairo_rectangle(cr, x0 + j * cs, y0 + i * cs, cs - (cs > 8 ? 1 : 0), cs - (cs > 8 ? 1 : 0));
            cairo_fill(cr);
            if (cs >= 40) {
                snprintf(s, sizeof s, "%llu", (unsigned long long)v);
                set(cr, luminance(c) < 0.5 ? (rgb){1, 1, 1} : (rgb){0.1, 0.1, 0.1});
                text_at(cr, x0 + (j + 0.5) * cs, y0 + (i + 0.62) * cs, 10, s, 0.5);
            }
        }
    }
}

bool stats_draw_coactivation(const stats_data *d, stats_pic *out, char *err, size_t errlen) {
    const double cs = coact_cell(d);
    int w = (int)(50 + d->E * cs + 20), h = (int)(60 + d->E * cs + 20);
    if (w < 460) w = 460;
    return render(d, paint_coact, w, h, out, err, errlen);
}

/* ---- the passage, each token on its first-choice expert's colour ----------- */

#define PASSAGE_W 960
#define PASSAGE_MAX 400 /* tokens */
#define LINE_H 24

/* Lay the tokens out (and draw them when draw); returns the height used. */
static double layout_passage(cairo_t *cr, const stats_data *d, bool draw) {
    const int l = d->layer_shown;
    char s[96];
    double y = 28;
    if (draw) {
        set(cr, (rgb){0.1, 0.1, 0.1});
        cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_BOLD);
        snprintf(s, sizeof s, "First-choice expert of each token, layer %d%s", l,
                 d->layers[l].dense ? " (dense: no router)" : "");
        text_at(cr, 10, 22, 15, s, 0);
        cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    }
    /* Legend: one swatch per expert. */
    double x = 10;
    y += 10;
    for (int e = 0; e < d->E; e++) {
        snprintf(s, sizeof s, "%d", e);
        if (x + 40 > PASSAGE_W - 10) {
            x = 10;
            y += 20;
        }
        if (draw) {
            set(cr, expert_colour(e));
            cairo_rectangle(cr, x, y, 14, 14);
            cairo_fill(cr);
            set(cr, (rgb){0.1, 0.1, 0.1});
            text_at(cr, x + 18, y + 12, 11, s, 0);
        }
        x += 44;
    }
    y += 34;
    x = 10;
    cairo_set_font_size(cr, 14);
    const int64_t n = d->N < PASSAGE_MAX ? d->N : PASSAGE_MAX;
    for (int64_t t = 0; t < n; t++) {
        const char *p = d->piece ? d->piece[t] : "";
        if (!*p) continue;
        /* Newlines break the line; other control bytes are not drawn. */
        char buf[256];
        size_t o = 0;
        bool newline = false;
        for (const char *q = p; *q && o + 4 < sizeof buf; q++) {
            if (*q == '\n') newline = true;
            else if ((unsigned char)*q >= 0x20 || *q == '\t') buf[o++] = *q == '\t' ? ' ' : *q;
        }
        buf[o] = '\0';
        cairo_text_extents_t te;
        cairo_text_extents(cr, buf, &te);
        const double tw = te.x_advance + 2;
        if (x + tw > PASSAGE_W - 10 && x > 10) {
            x = 10;
            y += LINE_H;
        }
        const int32_t e = d->ex[(t * d->L + l) * d->K];
        if (draw && o) {
            const rgb c = e >= 0 ? expert_colour(e) : (rgb){0.85, 0.85, 0.85};
            set(cr, mix(c, (rgb){1, 1, 1}, 0.35));
            cairo_rectangle(cr, x, y - 16, tw, 21);
            cairo_fill(cr);
            set(cr, (rgb){0.05, 0.05, 0.05});
            cairo_move_to(cr, x + 1, y);
            cairo_show_text(cr, buf);
        }
        x += tw + 1;
        if (newline) {
            x = 10;
            y += LINE_H;
        }
    }
    return y + 16;
}

static void paint_passage(cairo_t *cr, const stats_data *d, int w, int h) {
    (void)w;
    (void)h;
    layout_passage(cr, d, true);
}

bool stats_draw_passage(const stats_data *d, stats_pic *out, char *err, size_t errlen) {
    cairo_surface_t *s = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, 1, 1);
    cairo_t *cr = cairo_create(s);
    cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    const double h = layout_passage(cr, d, false);
    cairo_destroy(cr);
    cairo_surface_destroy(s);
    return render(d, paint_passage, PASSAGE_W, (int)ceil(h), out, err, errlen);
}

/* cairo's toy font faces hold fontconfig patterns, and fontconfig its parsed
 * configuration, until exit; fontconfig stores its pointers as offsets, so
 * LeakSanitizer reports them as leaks. cairo's reset first (it drops its
 * patterns), then fontconfig's. */
void stats_draw_release(void) {
    cairo_debug_reset_static_data();
#ifdef MOECL_HAVE_FONTCONFIG
    FcFini();
#endif
}

#endif /* MOECL_HAVE_CAIRO */
