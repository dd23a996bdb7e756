/*
 * fileio.c - see fileio.h.
 */
#include "util/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

static const char *kind_of(mode_t m) {
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    return "not a file";
}

moecl_status mc_open_regular(const char *path, int *fd, struct stat *sb) {
    *fd = -1;
    struct stat local;
    if (!sb) sb = &local;
    int f;
    do f = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    while (f < 0 && errno == EINTR);
    if (f < 0) return mc_error(MOECL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    moecl_status st = MOECL_OK;
    int flags;
    if (fstat(f, sb) != 0)
        st = mc_error(MOECL_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(sb->st_mode))
        st = mc_error(MOECL_ERR_IO, "%s: not a regular file (%s)", path, kind_of(sb->st_mode));
    else if ((flags = fcntl(f, F_GETFL)) < 0 || fcntl(f, F_SETFL, flags & ~O_NONBLOCK) != 0)
        st = mc_error(MOECL_ERR_IO, "%s: cannot make the descriptor blocking: %s", path, strerror(errno));
    if (st != MOECL_OK) {
        close(f);
        return st;
    }
    *fd = f;
    return MOECL_OK;
}
