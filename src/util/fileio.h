/*
 * fileio.h - opening the files a loader reads (model files, JSON files,
 * cached programs) so that a hostile path cannot hang or mislead it.
 */
#ifndef MOECL_FILEIO_H
#define MOECL_FILEIO_H

#include "internal.h"

#include <sys/stat.h>

/* Open path read-only, refusing anything that is not a regular file. A plain
 * open() of a FIFO blocks until a writer appears, possibly forever, so the
 * file is opened with O_NONBLOCK (which lets a FIFO open at once), checked
 * with fstat, and only then made blocking again. The descriptor has
 * O_CLOEXEC. On success *fd is the descriptor (the caller closes it) and
 * *sb its stat (sb may be NULL). On failure *fd is -1 and the status and
 * message (naming path: "cannot open: <errno text>", "not a regular file (a
 * FIFO)", ...) are recorded by mc_error. */
moecl_status mc_open_regular(const char *path, int *fd, struct stat *sb);

#endif
