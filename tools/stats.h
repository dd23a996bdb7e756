/*
 * stats.h - what `moecl stats` measures (tools/stats.c) and draws
 * (tools/stats_draw.c, with cairo).
 */
#ifndef MOECL_TOOLS_STATS_H
#define MOECL_TOOLS_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Token classes of the specialisation table, by the first character after
 * a leading space of the token's text. */
enum { CLS_LETTERS, CLS_DIGITS, CLS_PUNCT, CLS_SPACE, CLS_OTHER_SCRIPT, CLS_SPECIAL, N_CLS };
extern const char *const k_class_names[N_CLS];

typedef struct stats_layer {
    bool dense;
    uint64_t *counts;      /* [E] tokens routed to each expert */
    double *wsum;          /* [E] sum of their router weights */
    double entropy;        /* of counts / sum, divided by log E: 1 is perfectly balanced */
    double gini;           /* of the counts: 0 equal, (E-1)/E all on one expert */
    double max_mean;       /* max count / mean count */
    uint64_t *coact;       /* [E, E] tokens that chose both i and j (i != j); diagonal: counts */
    uint64_t *cls;         /* [N_CLS, E] slots of each token class routed to each expert */
} stats_layer;

typedef struct stats_data {
    const char *model_name;
    int L, E, K;
    int64_t N;             /* tokens routed */
    int32_t *ids;          /* [N] */
    int32_t *ex;           /* [N, L, K] chosen experts (-1 in dense layers) */
    float *w;              /* [N, L, K] their weights */
    stats_layer *layers;   /* [L] */
    int layer_shown;       /* the layer of the passage and co-activation pictures */
    const char *const *piece; /* [N] each token's text (NUL-terminated), for pictures */
} stats_data;

/* A rendered picture: PNG and SVG bytes (malloc'd). */
typedef struct stats_pic {
    unsigned char *png, *svg;
    size_t png_len, svg_len;
    int width, height;
} stats_pic;

void stats_pic_free(stats_pic *p);

/* Each returns false with a message in err on failure (including "built
 * without cairo"). */
bool stats_draw_heatmap(const stats_data *d, stats_pic *out, char *err, size_t errlen);
bool stats_draw_coactivation(const stats_data *d, stats_pic *out, char *err, size_t errlen);
bool stats_draw_passage(const stats_data *d, stats_pic *out, char *err, size_t errlen);
bool stats_have_cairo(void);
/* Give back the font caches cairo and fontconfig keep for the life of the
 * process, so that a leak checker (the README's sanitizer run) finds none.
 * Only once every picture is drawn: no cairo object may be alive. */
void stats_draw_release(void);

/* base64 of n bytes to f. */
void stats_base64(FILE *f, const unsigned char *p, size_t n);

#endif
