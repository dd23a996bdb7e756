/* TEMP: weak stand-ins while gguf.c, quant.c and tokenizer_gguf.c are written. Removed before they land. */
#include "model.h"
#include "quant/quant.h"
#include "tokenizer/tokenizer.h"


__attribute__((weak)) moecl_status mc_gguf_open(const char *path, mc_gguf **out) { *out = NULL; return mc_error(MOECL_ERR_UNSUPPORTED, "%s: GGUF not built", path); }
__attribute__((weak)) void mc_gguf_close(mc_gguf *g) { (void)g; }
__attribute__((weak)) const mc_gguf_tensor *mc_gguf_find_tensor(const mc_gguf *g, const char *n) { (void)g; (void)n; return NULL; }
__attribute__((weak)) moecl_status mc_gguf_get_float(const mc_gguf *g, const char *k, bool r, double *o) { (void)g; (void)k; (void)r; (void)o; return MOECL_ERR_UNSUPPORTED; }
__attribute__((weak)) moecl_status mc_gguf_get_int(const mc_gguf *g, const char *k, bool r, int64_t *o) { (void)g; (void)k; (void)r; (void)o; return MOECL_ERR_UNSUPPORTED; }
__attribute__((weak)) moecl_status mc_gguf_get_str(const mc_gguf *g, const char *k, bool r, mc_gguf_str *o) { (void)g; (void)k; (void)r; (void)o; return MOECL_ERR_UNSUPPORTED; }
__attribute__((weak)) int64_t mc_gguf_n_tensors(const mc_gguf *g) { (void)g; return 0; }
__attribute__((weak)) const char *mc_gguf_path(const mc_gguf *g) { (void)g; return ""; }
__attribute__((weak)) const mc_gguf_tensor *mc_gguf_tensor_at(const mc_gguf *g, int64_t i) { (void)g; (void)i; return NULL; }
__attribute__((weak)) const char *mc_gguf_type_name(uint32_t t) { (void)t; return NULL; }
__attribute__((weak)) moecl_status mc_tokenizer_from_gguf(const struct mc_gguf *g, moecl_tokenizer **out) { (void)g; *out = NULL; return MOECL_OK; }

__attribute__((weak)) int64_t mc_gguf_n_kv(const mc_gguf *g) { (void)g; return 0; }
__attribute__((weak)) const mc_gguf_kv *mc_gguf_kv_at(const mc_gguf *g, int64_t i) { (void)g; (void)i; return NULL; }
__attribute__((weak)) uint32_t mc_gguf_type_of(moecl_dtype t) { (void)t; return 0; }
__attribute__((weak)) moecl_status mc_gguf_writer_new(const char *p, uint32_t a, mc_gguf_writer **o) { (void)a; *o = NULL; return mc_error(MOECL_ERR_UNSUPPORTED, "%s: GGUF not built", p); }
__attribute__((weak)) moecl_status mc_gguf_writer_set_u32(mc_gguf_writer *w, const char *k, uint32_t v) { (void)w; (void)k; (void)v; return MOECL_ERR_UNSUPPORTED; }
__attribute__((weak)) moecl_status mc_gguf_writer_set_f32(mc_gguf_writer *w, const char *k, float v) { (void)w; (void)k; (void)v; return MOECL_ERR_UNSUPPORTED; }
__attribute__((weak)) moecl_status mc_gguf_writer_set_bool(mc_gguf_writer *w, const char *k, bool v) { (void)w; (void)k; (void)v; return MOECL_ERR_UNSUPPORTED; }
__attribute__((weak)) moecl_status mc_gguf_writer_set_str(mc_gguf_writer *w, const char *k, const char *v, size_t n) { (void)w; (void)k; (void)v; (void)n; return MOECL_ERR_UNSUPPORTED; }
__attribute__((weak)) moecl_status mc_gguf_writer_set_arr(mc_gguf_writer *w, const char *k, mc_gguf_vtype e, const void *d, uint64_t n) { (void)w; (void)k; (void)e; (void)d; (void)n; return MOECL_ERR_UNSUPPORTED; }
__attribute__((weak)) moecl_status mc_gguf_writer_set_str_arr(mc_gguf_writer *w, const char *k, const mc_gguf_str *s, uint64_t n) { (void)w; (void)k; (void)s; (void)n; return MOECL_ERR_UNSUPPORTED; }
__attribute__((weak)) moecl_status mc_gguf_writer_copy_kv(mc_gguf_writer *w, const mc_gguf_kv *kv) { (void)w; (void)kv; return MOECL_ERR_UNSUPPORTED; }
__attribute__((weak)) moecl_status mc_gguf_writer_add_tensor(mc_gguf_writer *w, const char *n, uint32_t t, int d, const int64_t *ne) { (void)w; (void)n; (void)t; (void)d; (void)ne; return MOECL_ERR_UNSUPPORTED; }
__attribute__((weak)) moecl_status mc_gguf_writer_write_data(mc_gguf_writer *w, const void *d, size_t n) { (void)w; (void)d; (void)n; return MOECL_ERR_UNSUPPORTED; }
__attribute__((weak)) moecl_status mc_gguf_writer_finish(mc_gguf_writer *w) { (void)w; return MOECL_ERR_UNSUPPORTED; }
__attribute__((weak)) void mc_gguf_writer_free(mc_gguf_writer *w) { (void)w; }
