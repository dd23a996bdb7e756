/*
 * atomic_file.h - writing a file so that it appears whole or not at all.
 *
 * Every file moecl writes (GGUF files, the default model, the OpenCL
 * program cache) goes through here: the bytes go to a new temporary file in
 * the destination's directory, created with O_EXCL | O_NOFOLLOW under a
 * random name (so two writers never share one, and a symlink planted at any
 * name is never followed), then fsync, rename over the destination, fsync of
 * the directory. Every failure removes the temporary file.
 *
 * With MC_AFILE_IF_UNCHANGED the rename happens only if the destination is
 * still the file (or the absence of one) seen when writing began: of two
 * processes writing one path at the same time, the first to finish wins and
 * the second fails, so each one's report is true. The check and the rename
 * hold an flock on the directory against other moecl writers.
 */
#ifndef MOECL_ATOMIC_FILE_H
#define MOECL_ATOMIC_FILE_H

#include "internal.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum {
    MC_AFILE_IF_UNCHANGED = 1, /* commit fails if someone else replaced the destination meanwhile */
};

typedef struct mc_afile {
    int fd;          /* the temporary file; -1 once committed or discarded */
    char *path;      /* the destination */
    char *tmp;       /* the temporary file's name */
    unsigned flags;
    bool had_dest;   /* the destination existed at open ... */
    dev_t dev;       /* ... as this file */
    ino_t ino;
} mc_afile;

/* Start writing path. A path that names a directory, or whose directory
 * cannot take a new file, fails here: MOECL_ERR_IO (or INVALID_ARG for a
 * directory) naming it. *f is valid for discard even after a failure. */
moecl_status mc_afile_open(mc_afile *f, const char *path, unsigned flags);
/* Append n bytes (retrying short writes and EINTR). */
moecl_status mc_afile_write(mc_afile *f, const void *p, size_t n);
/* fsync, rename into place, fsync the directory. Closes the file in every
 * case; on failure the temporary file is gone and the destination is as it
 * was. */
moecl_status mc_afile_commit(mc_afile *f);
/* Close and remove the temporary file; a no-op once committed or discarded. */
void mc_afile_discard(mc_afile *f);

/* The whole of a file in one call: open, write, commit. */
moecl_status mc_afile_write_all(const char *path, const void *p, size_t n, unsigned flags);

/* Test hook: the source of the random part of temporary names (NULL: the
 * system's random numbers). Not thread-safe; for tests only. */
extern uint64_t (*mc_afile_random)(void);

#endif
