/*
 * guard.c - weight files that shrink or fail while mapped (see guard.h).
 */
#include "guard.h"
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* The process-wide registry the SIGBUS handler reads                       */
/* ------------------------------------------------------------------------ */

/* One mapped range. The handler reads slots without a lock: a slot is free
 * while hi is 0, and hi is published last (and cleared first). 1024 slots
 * hold 17 copies of Mixtral 8x22B's 59 shards; a range that finds no slot
 * keeps the size re-check only (a warning says so). */
#define N_SLOTS 1024

typedef struct slot {
    _Atomic uintptr_t lo, hi;       /* [lo, hi) */
    _Atomic(struct mc_guard *) owner;
    _Atomic int file;               /* index in owner->files */
} slot;

static slot g_slots[N_SLOTS];
static pthread_mutex_t g_slots_mu = PTHREAD_MUTEX_INITIALIZER; /* writers only */
static struct sigaction g_prev;     /* the handler installed before ours */
static uintptr_t g_page = 4096;
/* The handler is installed by the first model load, under a mutex rather
 * than pthread_once: helgrind (tests/helgrind.sh) sees the ordering a mutex
 * gives to g_page and g_installed, not the one pthread_once gives. */
static pthread_mutex_t g_install_mu = PTHREAD_MUTEX_INITIALIZER;
static bool g_install_tried;
static bool g_installed;

typedef struct gfile {
    char *path;
    int fd;             /* -1: the size cannot be re-checked */
    uint64_t size;      /* bytes mapped: the file must stay at least this long */
    uintptr_t lo, hi;   /* the range reads come from */
    int slot;           /* -1: none */
} gfile;

struct mc_guard {
    int n;
    gfile *files;
    _Atomic int armed;  /* calls in progress that read weights */
    _Atomic int fault;  /* 1 + index of the first file a read of which faulted; 0: none */
    _Atomic int dead;
    pthread_mutex_t mu; /* the message */
    char why[700];
};

/* Not the guard's fault: hand the signal to whoever had it before us. */
static void chain(int sig, siginfo_t *si, void *uctx) {
    if (g_prev.sa_flags & SA_SIGINFO) {
        if (g_prev.sa_sigaction) g_prev.sa_sigaction(sig, si, uctx);
        return;
    }
    if (g_prev.sa_handler == SIG_IGN && si && si->si_code <= 0) return; /* a sent signal, ignored as asked */
    if (g_prev.sa_handler == SIG_DFL || g_prev.sa_handler == SIG_IGN) {
        /* A fault cannot be ignored: die of it as without us. The raised
         * signal stays pending until we return, then the default acts. */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        sigaction(SIGBUS, &dfl, NULL);
        raise(SIGBUS);
        return;
    }
    g_prev.sa_handler(sig);
}

/* Async-signal-safe: atomics, mmap, sigaction, raise. */
static void on_sigbus(int sig, siginfo_t *si, void *uctx) {
    if (si && si->si_code > 0) { /* sent by the kernel for a fault: si_addr is meaningful */
        const uintptr_t a = (uintptr_t)si->si_addr;
        for (int i = 0; i < N_SLOTS; i++) {
            const uintptr_t hi = atomic_load(&g_slots[i].hi);
            if (!hi || a >= hi || a < atomic_load(&g_slots[i].lo)) continue;
            struct mc_guard *g = atomic_load(&g_slots[i].owner);
            if (!g || atomic_load(&g->armed) <= 0) break;
            /* Zero pages from the faulting one to the end of the range: the
             * read completes, and later reads of the range fault no more. */
            const uintptr_t page = a & ~(g_page - 1);
            if (mmap((void *)page, hi - page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
                break;
            int none = 0;
            atomic_compare_exchange_strong(&g->fault, &none, atomic_load(&g_slots[i].file) + 1);
            return;
        }
    }
    chain(sig, si, uctx);
}

static void install(void) {
    long p = sysconf(_SC_PAGESIZE);
    if (p > 0) g_page = (uintptr_t)p;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    g_installed = sigaction(SIGBUS, &sa, &g_prev) == 0;
    if (!g_installed) mc_log(MOECL_LOG_WARN, "cannot install the SIGBUS handler; weight files are only re-checked");
}

static int slot_add(mc_guard *g, int file) {
    pthread_mutex_lock(&g_slots_mu);
    int s = -1;
    for (int i = 0; i < N_SLOTS && s < 0; i++)
        if (!atomic_load(&g_slots[i].hi) && !atomic_load(&g_slots[i].owner)) s = i;
    if (s >= 0) {
        atomic_store(&g_slots[s].owner, g);
        atomic_store(&g_slots[s].file, file);
        atomic_store(&g_slots[s].lo, g->files[file].lo);
        atomic_store(&g_slots[s].hi, g->files[file].hi); /* published last */
    }
    pthread_mutex_unlock(&g_slots_mu);
    return s;
}

static void slot_remove(int s) {
    if (s < 0) return;
    pthread_mutex_lock(&g_slots_mu);
    atomic_store(&g_slots[s].hi, 0); /* cleared first */
    atomic_store(&g_slots[s].lo, 0);
    atomic_store(&g_slots[s].owner, NULL);
    pthread_mutex_unlock(&g_slots_mu);
}

/* ------------------------------------------------------------------------ */
/* A model's guard                                                          */
/* ------------------------------------------------------------------------ */

static moecl_status add_file(mc_guard *g, const char *path, uint64_t size, const void *lo, const void *hi) {
    gfile *f = &g->files[g->n];
    f->fd = -1;
    f->slot = -1;
    f->size = size;
    f->lo = (uintptr_t)lo & ~(g_page - 1);
    f->hi = (uintptr_t)hi;
    if (!(f->path = strdup(path))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", path);
    g->n++;
    /* A descriptor of its own (the reader closed its one after mapping);
     * non-blocking so a FIFO put in the file's place cannot hang us. */
    f->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat sb;
    if (f->fd >= 0 && (fstat(f->fd, &sb) != 0 || !S_ISREG(sb.st_mode))) {
        close(f->fd);
        f->fd = -1;
    }
    if (f->fd < 0) mc_log(MOECL_LOG_WARN, "%s: cannot reopen the file to watch its size", path);
    if (f->hi > f->lo && g_installed && (f->slot = slot_add(g, g->n - 1)) < 0)
        mc_log(MOECL_LOG_WARN, "%s: no SIGBUS guard left for this file (more than %d files mapped)", path,
               N_SLOTS);
    return MOECL_OK;
}

moecl_status mc_guard_new_model(const moecl_model *m, mc_guard **out) {
    *out = NULL;
    pthread_mutex_lock(&g_install_mu);
    if (!g_install_tried) {
        install();
        g_install_tried = true;
    }
    pthread_mutex_unlock(&g_install_mu);
    mc_guard *g = calloc(1, sizeof *g);
    const int n = m->files.n_files + (m->gguf ? 1 : 0);
    if (!g || !(g->files = calloc((size_t)(n ? n : 1), sizeof *g->files))) {
        free(g);
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", m->path);
    }
    pthread_mutex_init(&g->mu, NULL);
    atomic_store(&g->armed, 1); /* the loader reads weights next */
    moecl_status st = MOECL_OK;
    for (int i = 0; i < m->files.n_files && !st; i++) {
        const mc_st_file *f = &m->files.files[i];
        st = add_file(g, f->path, f->map_size, f->map, (const char *)f->map + f->map_size);
    }
    if (m->gguf && !st) {
        /* The reader does not expose its mapping: guard the tensor data,
         * which is what is read after loading. */
        const char *lo = NULL, *hi = NULL;
        for (int64_t i = 0; i < mc_gguf_n_tensors(m->gguf); i++) {
            const mc_gguf_tensor *t = mc_gguf_tensor_at(m->gguf, i);
            const char *b = t->data, *e = b + t->nbytes;
            if (!lo || b < lo) lo = b;
            if (!hi || e > hi) hi = e;
        }
        st = add_file(g, mc_gguf_path(m->gguf), mc_gguf_file_size(m->gguf), lo, hi);
    }
    if (st) {
        mc_guard_free(g);
        return st;
    }
    *out = g;
    return MOECL_OK;
}

void mc_guard_free(mc_guard *g) {
    if (!g) return;
    for (int i = 0; i < g->n; i++) {
        slot_remove(g->files[i].slot);
        if (g->files[i].fd >= 0) close(g->files[i].fd);
        free(g->files[i].path);
    }
    pthread_mutex_destroy(&g->mu);
    free(g->files);
    free(g);
}

/* The first reason wins; every later call repeats it. */
static moecl_status die(mc_guard *g, const char *fmt, ...) MC_PRINTF(2, 3);
static moecl_status die(mc_guard *g, const char *fmt, ...) {
    pthread_mutex_lock(&g->mu);
    if (!atomic_load(&g->dead)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g->why, sizeof g->why, fmt, ap);
        va_end(ap);
        atomic_store(&g->dead, 1);
    }
    moecl_status st = mc_error(MOECL_ERR_IO, "%s", g->why);
    pthread_mutex_unlock(&g->mu);
    return st;
}

#define AFTER " while in use; this model can no longer be used: free it and load it again"

static moecl_status check_fault(mc_guard *g) {
    const int f = atomic_load(&g->fault);
    if (!f) return MOECL_OK;
    return die(g, "%s: reading the mapped weights failed (SIGBUS: the file was truncated or its storage failed)" AFTER,
               g->files[f - 1].path);
}

moecl_status mc_guard_enter(mc_guard *g) {
    if (!g) return MOECL_OK;
    if (atomic_load(&g->dead)) return die(g, "%s", "");
    moecl_status st = check_fault(g);
    if (st) return st;
    for (int i = 0; i < g->n; i++) {
        const gfile *f = &g->files[i];
        struct stat sb;
        if (f->fd < 0) continue;
        if (fstat(f->fd, &sb) != 0)
            return die(g, "%s: cannot check the file's size: %s" AFTER, f->path, strerror(errno));
        if ((uint64_t)sb.st_size < f->size)
            return die(g, "%s: the file shrank from %llu to %lld bytes" AFTER, f->path,
                       (unsigned long long)f->size, (long long)sb.st_size);
    }
    atomic_fetch_add(&g->armed, 1);
    return MOECL_OK;
}

moecl_status mc_guard_leave(mc_guard *g, moecl_status st) {
    if (!g) return st;
    atomic_fetch_sub(&g->armed, 1);
    moecl_status sf = check_fault(g);
    return sf ? sf : st;
}

bool mc_guard_faulted(const mc_guard *g) { return g && (atomic_load(&g->fault) || atomic_load(&g->dead)); }
