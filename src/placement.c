/*
 * placement.c - the placement planner and expert profiles (placement.h).
 */
#include "placement.h"

#include "formats/json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* The plan                                                                 */
/* ------------------------------------------------------------------------ */

static double freq_of(const mc_place_input *in, int l, int e) {
    if (in->freq) return in->freq[(int64_t)l * in->n_expert + e];
    return (double)in->n_expert_used / (double)in->n_expert;
}

typedef struct cand {
    double value; /* host bytes no longer read per token, per byte stored on the device */
    int layer, expert;
} cand;

/* Most valuable first; equal values round-robin over the layers (expert 0 of
 * every layer, then expert 1, ...) so that a uniform profile spreads the
 * budget evenly and keeps the placement moecl made before the planner. */
static int cand_cmp(const void *pa, const void *pb) {
    const cand *a = pa, *b = pb;
    if (a->value != b->value) return a->value > b->value ? -1 : 1;
    if (a->expert != b->expert) return a->expert < b->expert ? -1 : 1;
    return (a->layer > b->layer) - (a->layer < b->layer);
}

void mc_place_predict(const mc_place_input *in, mc_place_plan *plan) {
    const int L = in->n_layer, E = in->n_expert, N = in->n_dev;
    bool known = in->host_read_bps > 0;
    for (int d = 0; d < N; d++) known &= in->dev[d].read_bps > 0 || plan->n_placed[d] == 0;
    double t = 0, t_host = 0;
    const int dd = in->dense_dev > 0 && in->dense_dev <= N ? in->dense_dev - 1 : -1;
    plan->host_bytes_per_token = dd < 0 ? (double)in->dense_bytes : 0;
    for (int d = 0; d < N; d++) plan->dev_bytes_per_token[d] = d == dd ? (double)in->dense_bytes : 0;
    if (dd >= 0) known &= in->dev[dd].read_bps > 0;
    for (int l = 0; l < L; l++) {
        double host = 0, dev[MC_PLACE_MAX_DEV] = {0}, all = 0;
        bool used[MC_PLACE_MAX_DEV] = {false};
        for (int e = 0; e < E; e++) {
            const uint8_t w = plan->where[(int64_t)l * E + e];
            const double f = freq_of(in, l, e);
            all += f * (double)in->expert_host_bytes[l];
            if (w == 0) {
                host += f * (double)in->expert_host_bytes[l];
            } else {
                dev[w - 1] += f * (double)in->expert_dev_bytes[(int64_t)l * N + (w - 1)];
                used[w - 1] = true;
            }
        }
        plan->host_bytes_per_token += host;
        double slowest = known ? host / in->host_read_bps : 0;
        for (int d = 0; d < N; d++) {
            plan->dev_bytes_per_token[d] += dev[d];
            if (known && used[d]) {
                const double td = dev[d] / in->dev[d].read_bps + in->dev[d].rtt_s;
                if (td > slowest) slowest = td;
            }
        }
        t += slowest;
        if (known) t_host += all / in->host_read_bps;
    }
    if (known) {
        t += dd < 0 ? (double)in->dense_bytes / in->host_read_bps
                    : (double)in->dense_bytes / in->dev[dd].read_bps + L * in->dev[dd].rtt_s;
        t_host += (double)in->dense_bytes / in->host_read_bps;
    }
    plan->tok_s = known && t > 0 ? 1.0 / t : 0;
    plan->tok_s_host = in->host_read_bps > 0 && t_host > 0 ? 1.0 / t_host : 0;
}

bool mc_place_dense_worth(const mc_place_input *in, int d, int64_t need) {
    if (d < 0 || d >= in->n_dev || need > in->dev[d].budget) return false;
    const mc_place_dev *v = &in->dev[d];
    if (in->host_read_bps <= 0 || v->read_bps <= 0) return false;
    const double host = (double)in->dense_bytes / in->host_read_bps;
    const double dev = (double)in->dense_bytes / v->read_bps + in->n_layer * v->rtt_s;
    return dev < host;
}

void mc_place_plan_make(const mc_place_input *in, mc_place_plan *plan) {
    const int L = in->n_layer, E = in->n_expert, N = in->n_dev;
    uint8_t *where = plan->where;
    memset(plan, 0, sizeof *plan);
    plan->where = where;
    memset(where, 0, (size_t)L * (size_t)E);
    size_t n = 0;
    cand *c = malloc((size_t)L * (size_t)E * sizeof *c);
    int *per_layer = calloc((size_t)L * (MC_PLACE_MAX_DEV + 1), sizeof(int)); /* [l][d], [l][N]: all devices */
    /* time each device spends on its share of each layer, bytes / bandwidth (or bytes when unknown) */
    double *load = calloc((size_t)L * MC_PLACE_MAX_DEV, sizeof(double));
    if (!c || !per_layer || !load || N <= 0) { /* everything stays on the host */
        free(c);
        free(per_layer);
        free(load);
        mc_place_predict(in, plan);
        return;
    }
    for (int l = 0; l < L; l++) {
        if (!in->expert_dev_bytes[(int64_t)l * N]) continue; /* a dense layer */
        for (int e = 0; e < E; e++)
            c[n++] = (cand){freq_of(in, l, e) * (double)in->expert_host_bytes[l] /
                                (double)in->expert_dev_bytes[(int64_t)l * N],
                            l, e};
    }
    qsort(c, n, sizeof *c, cand_cmp);
    for (size_t i = 0; i < n; i++) {
        const int l = c[i].layer, e = c[i].expert;
        int *pl = per_layer + (size_t)l * (MC_PLACE_MAX_DEV + 1);
        if (in->experts_per_layer >= 0 && pl[MC_PLACE_MAX_DEV] >= in->experts_per_layer) continue;
        const double f = freq_of(in, l, e);
        int best = -1;
        double best_t = 0;
        for (int d = 0; d < N; d++) {
            const uint64_t b = in->expert_dev_bytes[(int64_t)l * N + d];
            const mc_place_dev *dv = &in->dev[d];
            if ((int64_t)b > dv->budget - plan->used[d]) continue;
            if (dv->max_per_layer >= 0 && pl[d] >= dv->max_per_layer) continue;
            const double bw = dv->read_bps > 0 ? dv->read_bps : 1.0;
            const double t = load[(size_t)l * MC_PLACE_MAX_DEV + d] + f * (double)b / bw;
            if (best < 0 || t < best_t) {
                best = d;
                best_t = t;
            }
        }
        if (best < 0) continue;
        where[(int64_t)l * E + e] = (uint8_t)(best + 1);
        load[(size_t)l * MC_PLACE_MAX_DEV + best] = best_t;
        plan->used[best] += (int64_t)in->expert_dev_bytes[(int64_t)l * N + best];
        plan->n_placed[best]++;
        pl[best]++;
        pl[MC_PLACE_MAX_DEV]++;
    }
    free(c);
    free(per_layer);
    free(load);
    mc_place_predict(in, plan);
}

/* ------------------------------------------------------------------------ */
/* Profiles                                                                 */
/* ------------------------------------------------------------------------ */

static moecl_status bad(const char *path, const char *what, const cJSON *v) {
    char buf[64];
    return mc_error(MOECL_ERR_FORMAT, "%s: not a moecl expert profile: %s (found %s)", path, what,
                    mc_json_describe(v, buf, sizeof buf));
}

/* An integer field equal to want. */
static moecl_status check_int(const char *path, const cJSON *root, const char *key, int want, const char *whose) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 1e9) {
        char what[96];
        snprintf(what, sizeof what, "\"%s\" must be an integer", key);
        return bad(path, what, v);
    }
    if ((int)v->valuedouble != want)
        return mc_error(MOECL_ERR_FORMAT, "%s: the profile is for a model with %s %d, this model has %d", path, whose,
                        (int)v->valuedouble, want);
    return MOECL_OK;
}

moecl_status mc_place_profile_load(const char *path, int n_layer, int n_expert, int n_expert_used, float *freq) {
    cJSON *root = NULL;
    moecl_status st = mc_json_load_file(path, MC_JSON_PROFILE, &root);
    if (st) return st;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "version");
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    const cJSON *fr = cJSON_GetObjectItemCaseSensitive(root, "freq");
    if (!cJSON_IsObject(root)) st = bad(path, "the top level must be an object", root);
    else if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "moecl-expert-profile") != 0)
        st = bad(path, "\"format\" must be \"moecl-expert-profile\"", fmt);
    else if (!cJSON_IsNumber(ver) || ver->valuedouble != 1)
        st = bad(path, "\"version\" must be 1 (the only version this build reads)", ver);
    else if (!cJSON_IsNumber(tok) || !(tok->valuedouble >= 1) || tok->valuedouble > 1e18 ||
             tok->valuedouble != floor(tok->valuedouble))
        st = bad(path, "\"tokens\" must be a whole number of tokens, at least 1", tok);
    else if (!(st = check_int(path, root, "n_layer", n_layer, "n_layer")) &&
             !(st = check_int(path, root, "n_expert", n_expert, "n_expert")) &&
             !(st = check_int(path, root, "n_expert_used", n_expert_used, "n_expert_used"))) {
        if (!cJSON_IsArray(fr) || cJSON_GetArraySize(fr) != n_layer) {
            char what[96];
            snprintf(what, sizeof what, "\"freq\" must be an array of %d layers", n_layer);
            st = bad(path, what, fr);
        }
        int l = 0;
        for (const cJSON *row = fr ? fr->child : NULL; row && !st; row = row->next, l++) {
            if (!cJSON_IsArray(row) || cJSON_GetArraySize(row) != n_expert) {
                char what[96];
                snprintf(what, sizeof what, "freq[%d] must be an array of %d numbers", l, n_expert);
                st = bad(path, what, row);
                break;
            }
            int e = 0;
            double sum = 0;
            for (const cJSON *v = row->child; v; v = v->next, e++) {
                /* a share of tokens: 0..1 (an expert is chosen at most once per token) */
                if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= 1)) {
                    char what[96];
                    snprintf(what, sizeof what, "freq[%d][%d] must be a number in [0, 1]", l, e);
                    st = bad(path, what, v);
                    break;
                }
                freq[(int64_t)l * n_expert + e] = (float)v->valuedouble;
                sum += v->valuedouble;
            }
            /* each token chooses n_expert_used experts; a layer of a dense
             * model's profile or of an unvisited layer may sum to 0 */
            if (!st && sum > n_expert_used * (1 + 1e-3) + 1e-6) {
                char what[128];
                snprintf(what, sizeof what, "freq[%d] sums to more than n_expert_used (%d)", l, n_expert_used);
                st = bad(path, what, row);
            }
        }
    }
    cJSON_Delete(root);
    return st;
}
