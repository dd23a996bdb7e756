/*
 * test_decode.c - the library API around decoding: NULL handling, abort and
 * progress callbacks, context limits, rewinding, several sequences.
 */
#include "test_util.h"
#include "tiny_model.h"

#include "moecl.h"

static bool cancel_at_half(float f, void *user) {
    (*(int *)user)++;
    return f < 0.5f;
}

static bool abort_now(void *user) { return *(bool *)user; }

int main(void) {
    /* NULL and trivial calls */
    moecl_model_free(NULL);
    moecl_context_free(NULL);
    moecl_sampler_free(NULL);
    for (int s = 0; s >= -8; s--) CHECK(moecl_status_str((moecl_status)s) != NULL);
    CHECK(strcmp(moecl_version(), MOECL_VERSION_STRING) == 0);
    moecl_model *model = (moecl_model *)1;
    CHECK(moecl_model_load(NULL, NULL, &model) == MOECL_ERR_INVALID_ARG && model == NULL);
    CHECK(moecl_decode(NULL, NULL, 0) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_get_logits(NULL, -1) == NULL);

    char buf[512];
    const char *dir = tiny_model_dir(buf, sizeof buf);
    CHECK(dir != NULL);
    if (!dir) return t_done("decode");

    /* a progress callback that cancels */
    int calls = 0;
    moecl_model_params mp = moecl_model_default_params();
    mp.progress = cancel_at_half;
    mp.progress_user_data = &calls;
    model = (moecl_model *)1;
    CHECK(moecl_model_load(dir, &mp, &model) == MOECL_ERR_ABORTED && model == NULL && calls > 1);
    CHECK(strstr(moecl_last_error(), "cancel") != NULL);

    CHECK(moecl_model_load(dir, NULL, &model) == MOECL_OK);
    moecl_model_info info;
    CHECK(moecl_model_get_info(model, &info) == MOECL_OK);
    CHECK(info.n_vocab == 97 && info.n_layer == 2 && info.n_expert == 4 && info.head_dim == 8);
    CHECK(info.n_params_active < info.n_params);

    bool abort_flag = false;
    moecl_context_params cp = moecl_context_default_params();
    cp.n_ctx = 16;
    cp.n_batch = 8;
    cp.n_seq_max = 2;
    cp.abort_callback = abort_now;
    cp.abort_user_data = &abort_flag;
    moecl_context *ctx = NULL;
    CHECK(moecl_context_new(model, &cp, &ctx) == MOECL_OK);
    int32_t toks[20] = {5, 9, 13, 2, 40, 77, 3, 8, 1, 1, 6, 60, 61, 62, 63, 64, 65, 66, 67, 68};

    /* batch limits and bad ids leave nothing changed */
    CHECK(moecl_decode(ctx, toks, 9) == MOECL_ERR_INVALID_ARG);
    CHECK(strstr(moecl_context_last_error(ctx), "n_batch") != NULL);
    int32_t bad[2] = {3, 97};
    CHECK(moecl_decode(ctx, bad, 2) == MOECL_ERR_INVALID_ARG && moecl_seq_length(ctx, 0) == 0);
    CHECK(strstr(moecl_last_error(), "97") != NULL);
    bad[1] = -1;
    CHECK(moecl_decode(ctx, bad, 2) == MOECL_ERR_INVALID_ARG && moecl_seq_length(ctx, 0) == 0);

    /* reference logits for toks[0..4) */
    CHECK(moecl_decode(ctx, toks, 4) == MOECL_OK);
    float ref[97];
    memcpy(ref, moecl_get_logits(ctx, -1), sizeof ref);
    CHECK(moecl_get_logits(ctx, 0) == NULL); /* not kept without logits_all */

    /* abort: error, and the sequence is as before */
    abort_flag = true;
    CHECK(moecl_decode(ctx, toks + 4, 2) == MOECL_ERR_ABORTED && moecl_seq_length(ctx, 0) == 4);
    CHECK(moecl_get_logits(ctx, -1) == NULL);
    abort_flag = false;

    /* rewind to 3 and feed the 4th token again: same logits */
    CHECK(moecl_seq_truncate(ctx, 0, 3) == MOECL_OK && moecl_seq_length(ctx, 0) == 3);
    CHECK(moecl_decode(ctx, toks + 3, 1) == MOECL_OK);
    CHECK(t_nerr(moecl_get_logits(ctx, -1), ref, 97) < 1e-6);

    /* the context fills: 4 + 8 + 4 = 16 fit, one more does not */
    CHECK(moecl_decode(ctx, toks + 4, 8) == MOECL_OK);
    CHECK(moecl_decode(ctx, toks + 12, 4) == MOECL_OK && moecl_seq_length(ctx, 0) == 16);
    CHECK(moecl_decode(ctx, toks, 1) == MOECL_ERR_CONTEXT_FULL && moecl_seq_length(ctx, 0) == 16);
    CHECK(strstr(moecl_last_error(), "context") != NULL);

    /* sequence 1 is independent of sequence 0 */
    CHECK(moecl_seq_length(ctx, 1) == 0);
    int32_t seq1[4] = {1, 1, 1, 1};
    moecl_batch b = {.n_tokens = 4, .tokens = toks, .seq_id = seq1};
    CHECK(moecl_decode_batch(ctx, &b) == MOECL_OK);
    CHECK(t_nerr(moecl_get_logits(ctx, -1), ref, 97) < 1e-6);
    seq1[0] = 2; /* out of range */
    CHECK(moecl_decode_batch(ctx, &b) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_seq_truncate(ctx, 5, 0) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_seq_truncate(ctx, -1, 0) == MOECL_OK && moecl_seq_length(ctx, 0) == 0 && moecl_seq_length(ctx, 1) == 0);

    moecl_context_free(ctx);
    moecl_model_free(model);
    remove_dir(dir);
    return t_done("decode");
}
