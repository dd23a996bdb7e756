/*
 * safetensors.h - reading (mmap) and writing safetensors files, and sets of
 * shards listed by a model.safetensors.index.json.
 *
 * Format: u64 little-endian header length N, N bytes of JSON
 *   { "name": {"dtype": "F32", "shape": [r, c], "data_offsets": [begin, end]}, ...,
 *     "__metadata__": {...} }
 * then the data section; offsets are relative to its start.
 * Every size is validated before use: the header fits in the file, offsets lie
 * in the data section, end - begin == product(shape) * dtype size (computed
 * without overflow), tensors do not overlap.
 */
#ifndef MOECL_SAFETENSORS_H
#define MOECL_SAFETENSORS_H

#include "internal.h"

/* One tensor as it appears in a file. */
typedef struct mc_st_tensor {
    char *name;
    moecl_dtype type;   /* only F32, F16, BF16 are accepted; others: MOECL_ERR_UNSUPPORTED naming the dtype */
    int n_dims;         /* 0..4 */
    int64_t shape[4];
    const void *data;   /* inside the mapping */
    size_t nbytes;
} mc_st_tensor;

/* One mapped file. */
typedef struct mc_st_file {
    char *path;
    void *map;          /* mmap of the whole file */
    size_t map_size;
    bool borrowed;      /* map belongs to the caller (mc_st_open_memory): not unmapped */
    int n_tensors;
    mc_st_tensor *tensors;  /* sorted by name */
} mc_st_file;

/* A whole model's weights: one file, or the shards of an index. */
typedef struct mc_st_set {
    int n_files;
    mc_st_file *files;
} mc_st_set;

/* Open and validate one file. On error, returns a status with mc_error()
 * naming the path and problem, and *f is left zeroed. */
moecl_status mc_st_open(const char *path, mc_st_file *f);
void mc_st_close(mc_st_file *f);
/* Validate a file already in memory (tests, fuzzing): data must outlive f,
 * name is used in messages; otherwise as mc_st_open. */
moecl_status mc_st_open_memory(const void *data, size_t size, const char *name, mc_st_file *f);

/* Open a model directory: model.safetensors.index.json if present (each
 * shard it names is opened once; the tensor -> shard map is checked against
 * the shard contents), else model.safetensors. */
moecl_status mc_st_set_open_dir(const char *dir, mc_st_set *set);
void mc_st_set_close(mc_st_set *set);

/* Find a tensor by name; NULL if absent. O(log n) per file. */
const mc_st_tensor *mc_st_set_find(const mc_st_set *set, const char *name);

/* ---- writing ---------------------------------------------------------------- */

typedef struct mc_st_writer mc_st_writer;

/* Start a file at path (written beside it under a temporary name and renamed
 * by finish: formats/atomic_file.h); tensors are declared first, then their
 * data written in the same order. metadata_json: an object literal for "__metadata__"
 * (string values only) or NULL. */
moecl_status mc_st_writer_new(const char *path, mc_st_writer **out);
moecl_status mc_st_writer_declare(mc_st_writer *w, const char *name, moecl_dtype type, int n_dims,
                                  const int64_t *shape);
/* After all declarations: writes the header. */
moecl_status mc_st_writer_begin_data(mc_st_writer *w, const char *metadata_key, const char *metadata_value);
/* Write the next declared tensor's bytes (may be called several times per
 * tensor with consecutive pieces). */
moecl_status mc_st_writer_write(mc_st_writer *w, const void *data, size_t nbytes);
/* Checks every declared byte was written, closes; frees w in all cases. */
moecl_status mc_st_writer_finish(mc_st_writer *w);
void mc_st_writer_abort(mc_st_writer *w);   /* closes and removes the partial file */

#endif
