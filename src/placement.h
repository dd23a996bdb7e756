/*
 * placement.h - which weights live on which device: the planner.
 *
 * A token of generation reads every dense tensor once and, in each MoE
 * layer, the experts the router chose: expert e of layer l with probability
 * freq[l][e] (K/E when nothing was measured; a profile or a calibration run
 * measures it). Weights on a device are read at the device's bandwidth,
 * those left on the host at the host's, and the two run at the same time
 * within a layer (tests/test_overlap.c). Device memory is therefore best
 * spent on the weights that save the most bytes read per token per byte
 * stored: a weight's value per byte is simply how often it is read (1 for
 * dense tensors, freq for an expert). The planner sorts by that and fills
 * each device's budget greedily, hot experts first; with uniform
 * frequencies the order is round-robin over the layers (expert 0 of every
 * layer, then expert 1, ...), which is what moecl placed before it had a
 * planner.
 *
 * Dense tensors go to one device as a whole (the hidden states stay there
 * across layers) or stay on the host: mc_place_dense_worth decides for
 * placement auto, by the same measure (time per token read from memory).
 */
#ifndef MOECL_PLACEMENT_H
#define MOECL_PLACEMENT_H

#include "internal.h"

#define MC_PLACE_MAX_DEV 4

/* One device the planner may fill. */
typedef struct mc_place_dev {
    int64_t budget;       /* bytes of expert weights it may hold */
    int max_per_layer;    /* most experts of one layer (its largest allocation); < 0: no limit */
    double read_bps;      /* measured read bandwidth, bytes/s; <= 0: unknown (no prediction) */
    double rtt_s;         /* one round trip (rows up, outputs back) per layer that uses it, seconds */
} mc_place_dev;

typedef struct mc_place_input {
    int n_layer, n_expert, n_expert_used;
    /* [n_layer * n_dev]: bytes one expert of layer l takes on device d (its
     * storage type there); 0: the layer has no experts (a dense layer). */
    const uint64_t *expert_dev_bytes;
    /* [n_layer]: bytes one expert of layer l takes on the host, as stored */
    const uint64_t *expert_host_bytes;
    /* [n_layer * n_expert]: share of tokens routed to each expert (a layer
     * sums to n_expert_used); NULL: n_expert_used / n_expert each */
    const float *freq;
    uint64_t dense_bytes; /* bytes of the dense tensors one token reads (attention, router, LM head, ...) */
    int n_dev;
    mc_place_dev dev[MC_PLACE_MAX_DEV];
    double host_read_bps; /* <= 0: unknown */
    int experts_per_layer;/* most experts of a layer on all devices together; < 0: no limit */
    int dense_dev;        /* d + 1: device d holds the dense tensors (their bytes out of its budget); 0: the host */
} mc_place_input;

typedef struct mc_place_plan {
    uint8_t *where;       /* [n_layer * n_expert]: 0 the host, d + 1 device d (caller's array) */
    int64_t used[MC_PLACE_MAX_DEV];     /* bytes placed on each device */
    int32_t n_placed[MC_PLACE_MAX_DEV]; /* experts placed on each device */
    double dev_bytes_per_token[MC_PLACE_MAX_DEV]; /* expected expert bytes read per token on each device */
    double host_bytes_per_token; /* expected expert bytes read per token on the host, plus dense_bytes */
    double tok_s;         /* predicted generation tokens/s; 0 when a bandwidth is unknown */
    double tok_s_host;    /* predicted with everything on the host; 0 when unknown */
} mc_place_plan;

/* Fill plan->where (which the caller allocated, n_layer * n_expert bytes)
 * and the rest of *plan. Never exceeds a budget or max_per_layer; a weight
 * that does not fit is skipped and smaller ones after it still placed.
 * With several devices each weight goes to the device that, holding it,
 * would finish its share of the layer soonest (bytes read / bandwidth), so
 * devices take shares in proportion to their speed. Pure: no I/O. */
void mc_place_plan_make(const mc_place_input *in, mc_place_plan *plan);

/* Predicted tokens/s of an existing plan->where (fills every field but
 * where). A layer's time is the slowest of the host's and the devices' share
 * of its experts (they overlap) plus a round trip for each device used;
 * dense tensors are read on the host before it. */
void mc_place_predict(const mc_place_input *in, mc_place_plan *plan);

/* Whether device d should hold the dense tensors, which need `need` bytes
 * of its budget (weights, KV cache, activations): they fit, both
 * bandwidths are known, and reading dense_bytes there plus a second round
 * trip per layer (the normed states come up before the router) takes less
 * time than reading them on the host. Per byte stored dense tensors are
 * worth more than any expert (read by every token), so they come first. */
bool mc_place_dense_worth(const mc_place_input *in, int d, int64_t need);

/* Read an expert profile (JSON, format "moecl-expert-profile", version 1:
 * see README "Placement") into freq[n_layer * n_expert], checking it against
 * the model's shape. Errors: MOECL_ERR_IO, MOECL_ERR_FORMAT naming path and
 * the field. */
moecl_status mc_place_profile_load(const char *path, int n_layer, int n_expert, int n_expert_used, float *freq);

#endif
