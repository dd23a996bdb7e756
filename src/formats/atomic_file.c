/*
 * atomic_file.c - writing a file so that it appears whole or not at all
 * (see atomic_file.h).
 */
#include "formats/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Tries before giving up on finding a free temporary name: each collision
 * is a file someone else made at a random 60-bit name. */
#define MAX_TRIES 64

static uint64_t system_random(void) {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, GRND_NONBLOCK) == (ssize_t)sizeof v) return v;
    /* No entropy yet (early boot): time, pid and a counter, mixed. */
    static _Atomic uint64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t z = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 40) ^
                 (counter++ * 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t (*mc_afile_random)(void) = NULL;

/* The directory part of path ("." when there is none), malloc'd. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

static void fsync_dir(const char *path) {
    char *dir = dir_of(path);
    int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (fd >= 0) {
        fsync(fd); /* some file systems refuse it on directories; the rename itself is done */
        close(fd);
    }
    free(dir);
}

moecl_status mc_afile_open(mc_afile *f, const char *path, unsigned flags) {
    if (!f) return mc_error(MOECL_ERR_INVALID_ARG, "mc_afile_open: no file");
    memset(f, 0, sizeof *f);
    f->fd = -1;
    if (!path || !*path) return mc_error(MOECL_ERR_INVALID_ARG, "mc_afile_open: no path");
    f->flags = flags;
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: is a directory, not a file name to write", path);
    if (lstat(path, &sb) == 0) {
        f->had_dest = true;
        f->dev = sb.st_dev;
        f->ino = sb.st_ino;
    }
    const size_t n = strlen(path) + 32;
    if (!(f->path = strdup(path)) || !(f->tmp = malloc(n))) {
        mc_afile_discard(f);
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", path);
    }
    static const char digits[] = "0123456789abcdefghijklmnopqrstuv";
    int err = EEXIST;
    for (int t = 0; t < MAX_TRIES && err == EEXIST; t++) {
        uint64_t r = mc_afile_random ? mc_afile_random() : system_random();
        char suffix[13];
        for (int i = 0; i < 12; i++, r >>= 5) suffix[i] = digits[r & 31];
        suffix[12] = '\0';
        snprintf(f->tmp, n, "%s.%s.tmp", path, suffix);
        /* O_EXCL: a name that exists, a symlink included, is never opened. */
        f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
        err = f->fd < 0 ? errno : 0;
    }
    if (f->fd < 0) {
        moecl_status st = err == EEXIST
            ? mc_error(MOECL_ERR_IO, "%s: no free temporary name beside it after %d tries (%s exists)", path,
                       MAX_TRIES, f->tmp)
            : mc_error(MOECL_ERR_IO, "%s: cannot create %s: %s", path, f->tmp, strerror(err));
        free(f->tmp); /* never created: nothing to remove */
        f->tmp = NULL;
        mc_afile_discard(f);
        return st;
    }
    return MOECL_OK;
}

moecl_status mc_afile_write(mc_afile *f, const void *p, size_t n) {
    if (!f || f->fd < 0) return mc_error(MOECL_ERR_INVALID_ARG, "mc_afile_write: the file is closed");
    const char *b = p;
    while (n) {
        ssize_t k = write(f->fd, b, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return mc_error(MOECL_ERR_IO, "%s: write failed: %s", f->tmp, k < 0 ? strerror(errno) : "no progress");
        b += k;
        n -= (size_t)k;
    }
    return MOECL_OK;
}

/* Is the destination still what open saw? */
static bool unchanged(const mc_afile *f) {
    struct stat sb;
    if (lstat(f->path, &sb) != 0) return !f->had_dest && errno == ENOENT;
    return f->had_dest && sb.st_dev == f->dev && sb.st_ino == f->ino;
}

moecl_status mc_afile_commit(mc_afile *f) {
    if (!f || f->fd < 0) return mc_error(MOECL_ERR_INVALID_ARG, "mc_afile_commit: the file is closed");
    moecl_status st = MOECL_OK;
    if (fsync(f->fd) != 0) st = mc_error(MOECL_ERR_IO, "%s: write failed: %s", f->tmp, strerror(errno));
    if (close(f->fd) != 0 && !st) st = mc_error(MOECL_ERR_IO, "%s: write failed: %s", f->tmp, strerror(errno));
    f->fd = -1;
    int dir_fd = -1;
    if (!st && (f->flags & MC_AFILE_IF_UNCHANGED)) {
        /* Other moecl writers of this directory wait here, so that the check
         * and the rename are one step for them. */
        char *dir = dir_of(f->path);
        dir_fd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
        free(dir);
        if (dir_fd >= 0)
            while (flock(dir_fd, LOCK_EX) != 0 && errno == EINTR) {
            }
        if (!unchanged(f))
            st = mc_error(MOECL_ERR_IO, "%s: another process wrote this file while this one was being written; "
                          "left as the other process wrote it", f->path);
    }
    if (!st && rename(f->tmp, f->path) != 0)
        st = mc_error(MOECL_ERR_IO, "%s: cannot rename %s to it: %s", f->path, f->tmp, strerror(errno));
    if (dir_fd >= 0) close(dir_fd); /* and the lock with it */
    if (!st) {
        free(f->tmp); /* renamed: nothing to remove */
        f->tmp = NULL;
        fsync_dir(f->path);
    }
    mc_afile_discard(f); /* on failure: removes the temporary file */
    return st;
}

void mc_afile_discard(mc_afile *f) {
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    if (f->tmp) unlink(f->tmp);
    f->fd = -1;
    free(f->tmp);
    free(f->path);
    f->tmp = f->path = NULL;
}

moecl_status mc_afile_write_all(const char *path, const void *p, size_t n, unsigned flags) {
    mc_afile f;
    moecl_status st = mc_afile_open(&f, path, flags);
    if (!st) st = mc_afile_write(&f, p, n);
    if (!st) return mc_afile_commit(&f);
    mc_afile_discard(&f);
    return st;
}
