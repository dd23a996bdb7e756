/*
 * test_placement.c - the placement planner (src/placement.c) and expert
 * profiles, without a device: known inputs give known plans; plans never
 * exceed a budget, grow with it, and take the hottest experts first;
 * several devices share by speed; the prediction matches a hand count; a
 * profile is read when good and refused, naming the problem, when not.
 */
#include "test_util.h"

#include "placement.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define L_MAX 8
#define E_MAX 16

typedef struct setup {
    mc_place_input in;
    uint64_t dev_b[L_MAX * MC_PLACE_MAX_DEV], host_b[L_MAX];
    float freq[L_MAX * E_MAX];
    uint8_t where[L_MAX * E_MAX];
} setup;

/* L layers of E experts of `bytes` each (host and device alike), one device. */
static void init(setup *s, int L, int E, int K, uint64_t bytes, int64_t budget) {
    memset(s, 0, sizeof *s);
    s->in = (mc_place_input){.n_layer = L, .n_expert = E, .n_expert_used = K, .expert_dev_bytes = s->dev_b,
                             .expert_host_bytes = s->host_b, .n_dev = 1, .experts_per_layer = -1};
    s->in.dev[0] = (mc_place_dev){.budget = budget, .max_per_layer = -1};
    for (int l = 0; l < L; l++) s->dev_b[l] = s->host_b[l] = bytes;
}

static int64_t plan(setup *s, mc_place_plan *p) {
    *p = (mc_place_plan){.where = s->where};
    mc_place_plan_make(&s->in, p);
    int64_t used = 0;
    for (int d = 0; d < s->in.n_dev; d++) used += p->used[d];
    return used;
}

static void test_known_plan(void) {
    setup s;
    init(&s, 2, 4, 2, 100, 300);
    const float f[8] = {0.9f, 0.1f, 0.6f, 0.4f, 0.2f, 0.8f, 0.5f, 0.5f};
    memcpy(s.freq, f, sizeof f);
    s.in.freq = s.freq;
    mc_place_plan p;
    CHECK(plan(&s, &p) == 300);
    const uint8_t want[8] = {1, 0, 1, 0, 0, 1, 0, 0}; /* 0.9, 0.8, 0.6 */
    CHECK(!memcmp(s.where, want, 8));
    CHECK(p.n_placed[0] == 3);

    /* uniform frequencies: layers in turn, expert 0 of each, then expert 1 */
    init(&s, 3, 4, 2, 100, 500);
    CHECK(plan(&s, &p) == 500);
    const uint8_t rr[12] = {1, 1, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0};
    CHECK(!memcmp(s.where, rr, 12));

    /* a per-device cap of experts per layer, and a dense layer (0 bytes) holds nothing */
    init(&s, 3, 4, 2, 100, 100000);
    s.dev_b[1] = s.host_b[1] = 0;
    s.in.dev[0].max_per_layer = 3;
    plan(&s, &p);
    CHECK(p.n_placed[0] == 6);
    for (int e = 0; e < 4; e++) CHECK(s.where[4 + e] == 0);
    CHECK(s.where[3] == 0 && s.where[11] == 0);
    /* a global cap */
    s.in.dev[0].max_per_layer = -1;
    s.in.experts_per_layer = 1;
    plan(&s, &p);
    CHECK(p.n_placed[0] == 2 && s.where[0] == 1 && s.where[8] == 1);

    /* a budget below one expert: nothing */
    init(&s, 2, 4, 2, 100, 99);
    CHECK(plan(&s, &p) == 0 && p.n_placed[0] == 0);
}

/* Value is per byte stored: a layer whose experts are stored smaller on the
 * device (quantized) is worth more per byte than one converted to F32. */
static void test_value_per_byte(void) {
    setup s;
    init(&s, 2, 2, 1, 100, 100);
    s.dev_b[0] = 400; /* layer 0 would take 4x its host size */
    s.in.dev[0].budget = 400;
    mc_place_plan p;
    plan(&s, &p);
    CHECK(s.where[0] == 0 && s.where[1] == 0 && s.where[2] == 1 && s.where[3] == 1);
}

static uint64_t rng = 88172645463325252ull;
static double urand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

/* Random frequencies and sizes, every budget from 0 up: never over budget;
 * with equal sizes the placed set only grows (and with it the bytes read on
 * the device; the predicted tokens/s need not: a layer whose device share
 * already outweighs the host's gets slower, a limit of filling by value);
 * hot first: no expert left on the host is hotter than one on the device. */
static void test_properties(void) {
    for (int trial = 0; trial < 40; trial++) {
        const int L = 1 + (int)(urand() * L_MAX), E = 2 + (int)(urand() * (E_MAX - 1)), K = 1 + (int)(urand() * 2);
        const bool equal = trial % 2 == 0;
        setup s;
        init(&s, L, E, K, 1000, 0);
        s.in.freq = s.freq;
        s.in.host_read_bps = 10e9;
        s.in.dev[0].read_bps = 100e9;
        s.in.dense_bytes = 5000;
        for (int l = 0; l < L; l++) {
            double sum = 0, w[E_MAX];
            for (int e = 0; e < E; e++) sum += w[e] = urand() * urand();
            for (int e = 0; e < E; e++) s.freq[l * E + e] = (float)(K * w[e] / sum > 1 ? 1 : K * w[e] / sum);
            if (!equal) s.dev_b[l] = s.host_b[l] = 500 + (uint64_t)(urand() * 2000);
        }
        uint8_t prev[L_MAX * E_MAX] = {0};
        double prev_tok = 0; /* device bytes per token of the previous budget */
        uint64_t total = 0;
        for (int l = 0; l < L; l++) total += s.dev_b[l] * (uint64_t)E;
        for (int64_t budget = 0; budget <= (int64_t)total + 1000; budget += 700) {
            s.in.dev[0].budget = budget;
            mc_place_plan p;
            int64_t used = plan(&s, &p);
            CHECKF(used <= budget, "trial %d: %lld bytes placed in a budget of %lld", trial, (long long)used,
                   (long long)budget);
            int64_t sum = 0;
            for (int i = 0; i < L * E; i++) sum += s.where[i] ? (int64_t)s.dev_b[i / E] : 0;
            CHECK(sum == used);
            if (equal) {
                for (int i = 0; i < L * E; i++)
                    CHECKF(!prev[i] || s.where[i], "trial %d budget %lld: expert %d left the device", trial,
                           (long long)budget, i);
                CHECKF(p.dev_bytes_per_token[0] >= prev_tok * (1 - 1e-12), "trial %d: %.6g device bytes/token after %.6g",
                       trial, p.dev_bytes_per_token[0], prev_tok);
                float coldest = 2, hottest = -1;
                for (int i = 0; i < L * E; i++) {
                    if (s.where[i] && s.freq[i] < coldest) coldest = s.freq[i];
                    if (!s.where[i] && s.freq[i] > hottest) hottest = s.freq[i];
                }
                CHECKF(coldest >= hottest, "trial %d: a host expert (%g) hotter than a device one (%g)", trial,
                       (double)hottest, (double)coldest);
            }
            memcpy(prev, s.where, sizeof prev);
            prev_tok = p.dev_bytes_per_token[0];
            CHECK(p.tok_s > 0);
        }
    }
}

/* Two devices, one twice as fast, room for everything: the fast one reads
 * about two thirds of the expected bytes (8 experts a layer: 6 to 2 or 5 to
 * 3 finish a layer at the same time). Budgets bind when small. */
static void test_two_devices(void) {
    setup s;
    init(&s, 4, 8, 2, 1000, 1 << 30);
    s.in.n_dev = 2;
    for (int l = 0; l < 4; l++) s.dev_b[l * 2] = s.dev_b[l * 2 + 1] = 1000;
    s.in.dev[0] = (mc_place_dev){.budget = 1 << 30, .max_per_layer = -1, .read_bps = 200e9};
    s.in.dev[1] = (mc_place_dev){.budget = 1 << 30, .max_per_layer = -1, .read_bps = 100e9};
    s.in.host_read_bps = 20e9;
    mc_place_plan p;
    plan(&s, &p);
    CHECK(p.n_placed[0] + p.n_placed[1] == 32);
    const double share = p.dev_bytes_per_token[0] / (p.dev_bytes_per_token[0] + p.dev_bytes_per_token[1]);
    CHECKF(share > 0.6 && share <= 0.75, "the fast device reads %.2f of the bytes", share);
    CHECK(p.host_bytes_per_token == 0);
    s.in.dev[0].budget = 3000;
    s.in.dev[1].budget = 5000;
    plan(&s, &p);
    CHECK(p.used[0] <= 3000 && p.used[1] <= 5000 && p.n_placed[0] == 3 && p.n_placed[1] == 5);
}

/* The prediction by hand: 2 layers, 2 experts of 1e9 bytes, K = 1, freq
 * 0.5 each; expert 0 of each layer on the device. Per layer: host 0.5e9 B
 * at 10 GB/s = 50 ms, device 0.5e9 B at 100 GB/s = 5 ms + 1 ms round trip;
 * overlap: 50 ms. Two layers + dense 1e9 B at 10 GB/s: 200 ms = 5 tok/s.
 * All on the host: 2 x 100 ms + 100 ms = 300 ms. */
static void test_prediction(void) {
    setup s;
    init(&s, 2, 2, 1, 1000000000ull, 1000000000ll * 2);
    s.in.host_read_bps = 10e9;
    s.in.dev[0].read_bps = 100e9;
    s.in.dev[0].rtt_s = 1e-3;
    s.in.dense_bytes = 1000000000ull;
    mc_place_plan p;
    plan(&s, &p);
    CHECK(s.where[0] == 1 && s.where[1] == 0 && s.where[2] == 1 && s.where[3] == 0);
    CHECKF(fabs(p.tok_s - 5.0) < 1e-9, "%.9g tok/s", p.tok_s);
    CHECKF(fabs(p.tok_s_host - 1.0 / 0.3) < 1e-9, "%.9g tok/s on the host", p.tok_s_host);
    CHECK(fabs(p.host_bytes_per_token - 2e9) < 1 && fabs(p.dev_bytes_per_token[0] - 1e9) < 1);
    s.in.host_read_bps = 0; /* unknown: no prediction, the plan is the same */
    plan(&s, &p);
    CHECK(p.tok_s == 0 && s.where[0] == 1 && s.where[2] == 1);
}

/* The dense tensors on the device: their bytes read there, plus a round
 * trip per layer; worth it only when that is faster and they fit. */
static void test_dense(void) {
    setup s;
    init(&s, 2, 2, 1, 1000000000ull, 1000000000ll * 2);
    s.in.host_read_bps = 10e9;
    s.in.dev[0].read_bps = 100e9;
    s.in.dev[0].rtt_s = 1e-3;
    s.in.dense_bytes = 1000000000ull;
    CHECK(mc_place_dense_worth(&s.in, 0, 1000000000ll));
    CHECK(!mc_place_dense_worth(&s.in, 0, 3000000000ll)); /* does not fit */
    CHECK(!mc_place_dense_worth(&s.in, 1, 1000));          /* no such device */
    s.in.dense_dev = 1;
    mc_place_plan p;
    plan(&s, &p);
    /* per layer 0.05 s on the host (its expert), then 1 GB at 100 GB/s and two 1 ms round trips */
    CHECKF(fabs(p.tok_s - 1.0 / 0.112) < 1e-9, "%.9g tok/s", p.tok_s);
    CHECK(fabs(p.host_bytes_per_token - 1e9) < 1 && fabs(p.dev_bytes_per_token[0] - 2e9) < 1);
    s.in.dev[0].rtt_s = 0.1; /* round trips cost more than the bytes save */
    CHECK(!mc_place_dense_worth(&s.in, 0, 1000000000ll));
    s.in.dev[0].rtt_s = 1e-3;
    s.in.dev[0].read_bps = 0; /* unknown: never */
    CHECK(!mc_place_dense_worth(&s.in, 0, 1000000000ll));
}

/* ------------------------------------------------------------------------ */
/* Profiles                                                                 */
/* ------------------------------------------------------------------------ */

static char g_dir[] = "/tmp/moecl-place-XXXXXX";

static moecl_status load_text(const char *text, float *freq, char *path, size_t len) {
    static int n = 0;
    snprintf(path, len, "%s/p%d.json", g_dir, n++);
    FILE *f = fopen(path, "w");
    if (!f) return MOECL_ERR_IO;
    fputs(text, f);
    fclose(f);
    return mc_place_profile_load(path, 2, 3, 2, freq);
}

#define HEAD "{\"format\": \"moecl-expert-profile\", \"version\": 1, \"model\": \"m\", "

static void expect_bad(const char *text, moecl_status want, const char *words) {
    float freq[6];
    char path[256];
    moecl_status st = load_text(text, freq, path, sizeof path);
    CHECKF(st == want, "%s: status %d, want %d", text, (int)st, (int)want);
    CHECKF(strstr(moecl_last_error(), path) && strstr(moecl_last_error(), words), "%s: message: %s", text,
           moecl_last_error());
}

static void test_profiles(void) {
    CHECK(mkdtemp(g_dir) != NULL);
    float freq[6];
    char path[256];
    CHECKF(load_text(HEAD "\"n_layer\": 2, \"n_expert\": 3, \"n_expert_used\": 2, \"tokens\": 100, "
                          "\"freq\": [[1, 0.5, 0.5], [0.25, 0.75, 1e-0]]}",
                     freq, path, sizeof path) == MOECL_OK,
           "%s", moecl_last_error());
    const float want[6] = {1, 0.5f, 0.5f, 0.25f, 0.75f, 1};
    CHECK(!memcmp(freq, want, sizeof want));

    const char *shape = "\"n_expert\": 3, \"n_expert_used\": 2, \"tokens\": 100, \"freq\": [[1,0,0],[0,1,0]]}";
    char buf[512];
    snprintf(buf, sizeof buf, HEAD "\"n_layer\": 3, %s", shape);
    expect_bad(buf, MOECL_ERR_FORMAT, "n_layer 3, this model has 2");
    expect_bad(HEAD "\"n_layer\": 2, \"n_expert\": 4, \"n_expert_used\": 2, \"tokens\": 1, \"freq\": []}",
               MOECL_ERR_FORMAT, "n_expert 4, this model has 3");
    expect_bad(HEAD "\"n_layer\": 2, \"n_expert\": 3, \"n_expert_used\": 1, \"tokens\": 1, \"freq\": []}",
               MOECL_ERR_FORMAT, "n_expert_used 1, this model has 2");
    expect_bad("{\"format\": \"other\", \"version\": 1}", MOECL_ERR_FORMAT, "\"format\"");
    expect_bad("{\"format\": \"moecl-expert-profile\", \"version\": 2}", MOECL_ERR_FORMAT, "\"version\" must be 1");
    expect_bad(HEAD "\"n_layer\": 2.5, \"n_expert\": 3, \"n_expert_used\": 2, \"tokens\": 1, \"freq\": []}",
               MOECL_ERR_FORMAT, "\"n_layer\" must be an integer");
    expect_bad(HEAD "\"n_layer\": 2, \"n_expert\": 3, \"n_expert_used\": 2, \"tokens\": 0, \"freq\": []}",
               MOECL_ERR_FORMAT, "\"tokens\"");
    expect_bad(HEAD "\"n_layer\": 2, \"n_expert\": 3, \"n_expert_used\": 2, \"tokens\": 5, \"freq\": [[1,0,0]]}",
               MOECL_ERR_FORMAT, "array of 2 layers");
    expect_bad(HEAD "\"n_layer\": 2, \"n_expert\": 3, \"n_expert_used\": 2, \"tokens\": 5, "
                    "\"freq\": [[1,0,0],[1,0]]}",
               MOECL_ERR_FORMAT, "freq[1] must be an array of 3");
    expect_bad(HEAD "\"n_layer\": 2, \"n_expert\": 3, \"n_expert_used\": 2, \"tokens\": 5, "
                    "\"freq\": [[1,0,0],[1,-0.1,0]]}",
               MOECL_ERR_FORMAT, "freq[1][1] must be a number in [0, 1]");
    expect_bad(HEAD "\"n_layer\": 2, \"n_expert\": 3, \"n_expert_used\": 2, \"tokens\": 5, "
                    "\"freq\": [[1,0,\"x\"],[1,0,0]]}",
               MOECL_ERR_FORMAT, "freq[0][2]");
    expect_bad(HEAD "\"n_layer\": 2, \"n_expert\": 3, \"n_expert_used\": 2, \"tokens\": 5, "
                    "\"freq\": [[1,1,1],[1,0,0]]}",
               MOECL_ERR_FORMAT, "sums to more than n_expert_used");
    expect_bad("{\"format\": ", MOECL_ERR_FORMAT, "not valid JSON");
    expect_bad("[1, 2]", MOECL_ERR_FORMAT, "");
    CHECK(mc_place_profile_load("/nonexistent/profile.json", 2, 3, 2, freq) == MOECL_ERR_IO);
    CHECK(strstr(moecl_last_error(), "/nonexistent/profile.json") != NULL);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    CHECK(system(cmd) == 0);
}

static void quiet(moecl_log_level level, const char *message, void *user) {
    (void)level, (void)message, (void)user; /* the refusals are expected; their messages are checked */
}

int main(void) {
    moecl_log_set(quiet, MOECL_LOG_ERROR, NULL);
    test_known_plan();
    test_value_per_byte();
    test_properties();
    test_two_devices();
    test_prediction();
    test_dense();
    test_profiles();
    return t_done("placement");
}
