/* example_embed.c - moecl embedded in a program: load, prompt, greedy decode.
 * usage: example_embed MODEL_DIR */
#include <moecl.h>
#include <stdio.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    moecl_model *model = NULL;
    moecl_context *ctx = NULL;
    moecl_sampler *smpl = NULL;
    moecl_sampler_params sp = moecl_sampler_default_params();
    sp.temperature = 0; /* greedy */
    moecl_status st = moecl_model_load(argv[1], NULL, &model);
    if (!st) st = moecl_context_new(model, NULL, &ctx);
    if (!st) st = moecl_sampler_new(&sp, &smpl);
    int32_t tok = 1; /* BOS */
    for (int i = 0; i < 8 && !st; i++) {
        if ((st = moecl_decode(ctx, &tok, 1))) break;
        moecl_model_info info;
        moecl_model_get_info(model, &info);
        if ((st = moecl_sampler_sample(smpl, moecl_get_logits(ctx, -1), info.n_vocab, &tok))) break;
        printf("%d ", tok);
    }
    printf("\n");
    if (st) fprintf(stderr, "example_embed: %s: %s\n", moecl_status_str(st), moecl_last_error());
    moecl_sampler_free(smpl);
    moecl_context_free(ctx);
    moecl_model_free(model);
    return st ? 1 : 0;
}
