/*
 * gguf_dump.c - a GGUF file as text (see gguf_dump.h):
 *
 *   GGUF v3, alignment 32, 4.1 KiB, 30 key/values, 13 tensors
 *   general.architecture         string   "llama"
 *   tokenizer.ggml.tokens        [string x 32000] "<unk>", "<s>", "</s>", ...
 *   ...
 *   tensor                        type    shape            offset     bytes
 *   token_embd.weight             q4_K    [4096, 32000]    0          73728000
 */
#include "gguf_dump.h"
#include "formats/gguf.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define MAX_ITEMS 6   /* array values shown */
#define MAX_STR 60    /* string bytes shown */

/* A string from the file, quoted, escaped (mc_escape: no byte of it can
 * reach the terminal as a control), cut at MAX_STR bytes. */
static void put_str(mc_gguf_str s) {
    char buf[MAX_STR * 6 + 1]; /* the longest escape, \u0080, is 6 bytes for 2 */
    uint64_t n = s.len < MAX_STR ? s.len : MAX_STR;
    mc_escape(buf, sizeof buf, s.ptr, (size_t)n, MC_ESC_QUOTES);
    printf("\"%s\"", buf);
    if (s.len > n) printf("...(%" PRIu64 " bytes)", s.len);
}

/* A key or tensor name from the file, escaped (long ones cut). */
static const char *esc_name(const char *s, char *buf, size_t cap) {
    mc_escape(buf, cap, s, strlen(s), MC_ESC_QUOTES);
    return buf;
}

static uint64_t le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}


/* One fixed-size value at p (little-endian, maybe unaligned). */
static void put_scalar(mc_gguf_vtype t, const unsigned char *p) {
    switch (t) {
    case MC_GGUF_UINT8: printf("%u", p[0]); break;
    case MC_GGUF_INT8: printf("%d", (int8_t)p[0]); break;
    case MC_GGUF_BOOL: fputs(p[0] ? "true" : "false", stdout); break;
    case MC_GGUF_UINT16: printf("%u", (unsigned)le(p, 2)); break;
    case MC_GGUF_INT16: printf("%d", (int16_t)le(p, 2)); break;
    case MC_GGUF_UINT32: printf("%" PRIu32, (uint32_t)le(p, 4)); break;
    case MC_GGUF_INT32: printf("%" PRId32, (int32_t)(uint32_t)le(p, 4)); break;
    case MC_GGUF_UINT64: printf("%" PRIu64, le(p, 8)); break;
    case MC_GGUF_INT64: printf("%" PRId64, (int64_t)le(p, 8)); break;
    case MC_GGUF_FLOAT32: {
        union { uint32_t u; float f; } v = {.u = (uint32_t)le(p, 4)};
        printf("%.9g", v.f);
        break;
    }
    case MC_GGUF_FLOAT64: {
        union { uint64_t u; double d; } v = {.u = le(p, 8)};
        printf("%.17g", v.d);
        break;
    }
    default: fputs("?", stdout); break;
    }
}

static void put_array(const mc_gguf_kv *kv) {
    printf("[%s x %" PRIu64 "]", mc_gguf_vtype_name(kv->arr_type), kv->n);
    for (uint64_t i = 0; i < kv->n && i < MAX_ITEMS; i++) {
        fputs(i ? ", " : " ", stdout);
        if (kv->arr_type == MC_GGUF_STRING)
            put_str(kv->strs[i]);
        else if (kv->arr_type == MC_GGUF_ARRAY)
            putchar('{'), put_array(&kv->items[i]), putchar('}');
        else
            put_scalar(kv->arr_type, (const unsigned char *)kv->data + i * mc_gguf_vtype_size(kv->arr_type));
    }
    if (kv->n > MAX_ITEMS) fputs(", ...", stdout);
}

static void put_size(uint64_t n) {
    if (n < 1024) printf("%" PRIu64 " B", n);
    else if (n < (1u << 20)) printf("%.1f KiB", (double)n / 1024);
    else if (n < (1u << 30)) printf("%.1f MiB", (double)n / (1 << 20));
    else printf("%.2f GiB", (double)n / (1 << 30));
}

int gguf_dump_print(const char *path, int max_tensors) {
    mc_gguf *g = NULL;
    if (mc_gguf_open(path, &g) != MOECL_OK) return 1;
    int64_t n_kv = mc_gguf_n_kv(g), n_t = mc_gguf_n_tensors(g);
    char pbuf[512];
    printf("%s: GGUF v%" PRIu32 ", alignment %" PRIu64 ", ", esc_name(path, pbuf, sizeof pbuf), mc_gguf_version(g),
           mc_gguf_alignment(g));
    put_size(mc_gguf_file_size(g));
    printf(", %" PRId64 " key/values, %" PRId64 " tensors\n\n", n_kv, n_t);

    for (int64_t i = 0; i < n_kv; i++) {
        const mc_gguf_kv *kv = mc_gguf_kv_at(g, i);
        char name[256];
        printf("  %-40s ", esc_name(kv->key, name, sizeof name));
        if (kv->type == MC_GGUF_ARRAY) {
            put_array(kv);
        } else {
            printf("%-8s ", mc_gguf_vtype_name(kv->type));
            if (kv->type == MC_GGUF_STRING)
                put_str(kv->strs[0]);
            else
                put_scalar(kv->type, kv->data);
        }
        putchar('\n');
    }

    uint64_t total = 0;
    for (int64_t i = 0; i < n_t; i++) total += mc_gguf_tensor_at(g, i)->nbytes;
    printf("\n  %-40s %-8s %-24s %14s %14s\n", "tensor", "type", "shape", "offset", "bytes");
    for (int64_t i = 0; i < n_t && (max_tensors < 0 || i < max_tensors); i++) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(g, i);
        char shape[96];
        size_t len = (size_t)snprintf(shape, sizeof shape, "[");
        for (int d = 0; d < t->n_dims && len < sizeof shape; d++)
            len += (size_t)snprintf(shape + len, sizeof shape - len, "%s%" PRId64, d ? ", " : "", t->ne[d]);
        if (len < sizeof shape) snprintf(shape + len, sizeof shape - len, "]");
        char name[256];
        printf("  %-40s %-8s %-24s %14" PRIu64 " %14zu\n", esc_name(t->name, name, sizeof name),
               mc_gguf_type_name(t->ggml_type), shape,
               t->offset, t->nbytes);
    }
    if (max_tensors >= 0 && n_t > max_tensors) printf("  ... %" PRId64 " more tensors\n", n_t - max_tensors);
    printf("\n  tensor data: ");
    put_size(total);
    putchar('\n');
    mc_gguf_close(g);
    return 0;
}
