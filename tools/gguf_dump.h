/*
 * gguf_dump.h - a GGUF file's header, metadata and tensor table as text on
 * stdout, for `moecl info FILE.gguf`.
 */
#ifndef MOECL_GGUF_DUMP_H
#define MOECL_GGUF_DUMP_H

/* Print path's version, alignment, every key/value (arrays abbreviated to
 * their type, count and first few values) and its tensor table (name, type,
 * shape, offset, bytes), at most max_tensors rows (< 0: all). Returns 0, or
 * 1 when the file cannot be read: the reason is then moecl_last_error(),
 * which names the file and the problem; nothing is printed to stdout. */
int gguf_dump_print(const char *path, int max_tensors);

#endif
