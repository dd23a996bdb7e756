/*
 * threadpool.c - persistent workers, a claimed-chunk parallel for, bounded
 * spinning then sleeping (see threadpool.h).
 *
 * Why not OpenMP (measured on 2 vCPUs, mixtral-mini, 2 threads, issue 10):
 * libgomp's default wait policy spins for milliseconds between regions and
 * its static schedule makes every region wait for each thread's share, so
 * with one competing busy process generation fell from ~230 to 2-11 tok/s;
 * OMP_WAIT_POLICY=passive survives contention but pays a futex wake per
 * region (~25 % slower when quiet). Here a region's chunks are claimed from
 * one counter (a descheduled worker holds up at most the chunk it is on)
 * and the wait is a short spin, then a condition variable. README
 * ("Threads") has the figures of this pool against both policies.
 *
 * The protocol. One 64-bit word, `claim`, holds the job's sequence number
 * (high 32 bits) and the chunks not yet handed out (low 32 bits):
 *
 *   caller: write the job (fn, arg, n, chunk, n_chunks), done = 0,
 *           claim = seq << 32 | n_chunks, wake sleepers, take chunks itself,
 *           wait until done == n_chunks.
 *   worker: wait until claim's seq differs from the last one seen; then
 *           claim chunks by compare-and-swap while the seq is its job's and
 *           chunks remain; after each, done += 1.
 *
 * A worker reads the job only after claiming one of its chunks, and the
 * caller writes the next job only after every chunk is done, so a worker
 * that wakes late (its job finished, or already replaced) only sees a seq
 * that is not its own or no chunks left, and never reads a job being
 * rewritten. Sleeping is a Dekker pair on sequentially consistent atomics:
 * a worker counts itself in `sleepers` and then re-reads `claim` (under the
 * mutex, before waiting); the caller stores `claim` and then reads
 * `sleepers`: one of the two sees the other, so no wake is lost. The
 * caller's own sleep while waiting for `done` pairs `caller_asleep` with
 * the worker's increment of `done` the same way.
 */
#include "util/threadpool.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__APPLE__)
#include <sys/sysctl.h>
#endif

/* valgrind's helgrind does not see the ordering C11 atomics give (it reads
 * them as races, and misses the hand-off of the job's data they carry):
 * where its header is present, the hand-offs are declared to it and the
 * atomic words exempted. Outside valgrind each annotation is a few
 * instructions, once per job and chunk. */
#if defined(__has_include)
#if __has_include(<valgrind/helgrind.h>)
#include <valgrind/helgrind.h>
#define MC_HELGRIND 1
#endif
#endif
#ifdef MC_HELGRIND
#define HAPPENS_BEFORE(a) ANNOTATE_HAPPENS_BEFORE(a)
#define HAPPENS_AFTER(a) ANNOTATE_HAPPENS_AFTER(a)
#define NO_RACE_CHECK(a) VALGRIND_HG_DISABLE_CHECKING((a), sizeof *(a))
#else
#define HAPPENS_BEFORE(a) ((void)(a))
#define HAPPENS_AFTER(a) ((void)(a))
#define NO_RACE_CHECK(a) ((void)(a))
#endif

typedef struct worker_arg {
    mc_pool *pool;
    int tid;
} worker_arg;

struct mc_pool {
    int n_threads;          /* the caller included */
    int n_started;          /* workers running */
    pthread_t *threads;     /* [n_threads - 1] */
    worker_arg *args;       /* [n_threads - 1] */
    int64_t spin_ns;

    pthread_mutex_t call_mu; /* one mc_pool_for at a time */
    uint32_t seq;            /* the last job's number (under call_mu) */

    /* The job: written by the caller while none of its chunks can be claimed. */
    mc_pool_fn fn;
    void *arg;
    int64_t n, chunk;
    uint32_t n_chunks;
    atomic_int active;       /* threads 0..active-1 take part */

    /* Each on its own cache line: every thread writes them. */
    alignas(64) _Atomic uint64_t claim; /* seq << 32 | chunks not yet handed out */
    alignas(64) _Atomic uint32_t done;  /* chunks finished */

    alignas(64) pthread_mutex_t mu;
    pthread_cond_t wake;     /* a worker: a job or stop */
    pthread_cond_t finished; /* the caller: done == n_chunks */
    atomic_int sleepers;     /* workers waiting (or about to) on `wake` */
    atomic_bool caller_asleep;
    atomic_bool stop;
};

/* Set on a thread while it runs chunks: a nested call runs inline. */
static _Thread_local bool tls_in_chunk;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ======================================================================== */
/* Settings read once                                                       */
/* ======================================================================== */

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_spin_us, g_default_threads;

#if defined(__linux__)
/* A sysfs CPU list ("0-3,8,10-11\n") into set; false if unreadable. */
static bool read_cpu_list(const char *path, cpu_set_t *set) {
    CPU_ZERO(set);
    FILE *f = fopen(path, "re");
    if (!f) return false;
    char buf[4096];
    bool ok = fgets(buf, sizeof buf, f) != NULL;
    fclose(f);
    for (const char *s = buf; ok && *s && *s != '\n';) {
        char *e;
        long a = strtol(s, &e, 10), b = a;
        if (e == s || a < 0) return false;
        if (*e == '-') {
            s = e + 1;
            b = strtol(s, &e, 10);
            if (e == s || b < a) return false;
        }
        for (long i = a; i <= b && i < CPU_SETSIZE; i++) CPU_SET((int)i, set);
        s = *e == ',' ? e + 1 : e;
        if (*e != ',' && *e != '\n' && *e != '\0') return false;
    }
    return ok;
}

int mc_pool_count_cores(const char *sys, bool affinity) {
    cpu_set_t cand, tmp;
    char path[512];
    snprintf(path, sizeof path, "%s/devices/system/cpu/online", sys);
    if (!read_cpu_list(path, &cand)) return 0;
    if (affinity && sched_getaffinity(0, sizeof tmp, &tmp) == 0) CPU_AND(&cand, &cand, &tmp);
    /* Hybrid Intel (Alder Lake on): the P-cores are PMU "cpu_core", the
     * E-cores "cpu_atom". Threads on E-cores run the same chunks at about
     * half the speed; without work stealing on a finer grain they would
     * only slow the P-cores down. */
    snprintf(path, sizeof path, "%s/devices/cpu_core/cpus", sys);
    if (read_cpu_list(path, &tmp)) {
        cpu_set_t p;
        CPU_AND(&p, &cand, &tmp);
        if (CPU_COUNT(&p) > 0) cand = p;
    }
    int cores = 0;
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, &cand)) continue;
        /* A core counts at its lowest candidate SMT sibling. */
        snprintf(path, sizeof path, "%s/devices/system/cpu/cpu%d/topology/thread_siblings_list", sys, c);
        bool first = true;
        if (read_cpu_list(path, &tmp))
            for (int s = 0; s < c && first; s++) first = !(CPU_ISSET(s, &tmp) && CPU_ISSET(s, &cand));
        cores += first;
    }
    return cores;
}
#else
int mc_pool_count_cores(const char *sys, bool affinity) {
    (void)sys, (void)affinity;
    return 0;
}
#endif

static void read_settings(void) {
    g_spin_us = MC_POOL_SPIN_US;
    const char *s = getenv("MOECL_SPIN_US");
    if (s && *s) {
        char *e;
        long v = strtol(s, &e, 10);
        if (*e == '\0' && v >= 0 && v <= 1000000) g_spin_us = (int)v;
        else mc_log(MOECL_LOG_WARN, "MOECL_SPIN_US='%s' is not a number of microseconds in 0..1000000; using %d", s,
                    MC_POOL_SPIN_US);
    }
    int n = 0;
#if defined(__linux__)
    n = mc_pool_count_cores("/sys", true);
#elif defined(__APPLE__)
    int v = 0;
    size_t len = sizeof v;
    if (sysctlbyname("hw.perflevel0.physicalcpu", &v, &len, NULL, 0) == 0 && v > 0) n = v;
    else if (len = sizeof v, sysctlbyname("hw.physicalcpu", &v, &len, NULL, 0) == 0 && v > 0) n = v;
#endif
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)(c < 4096 ? c : 4096) : 1;
    }
    g_default_threads = n;
    HAPPENS_BEFORE(&g_once);
}

/* (helgrind does not see the order pthread_once gives either) */
int mc_pool_default_threads(void) {
    pthread_once(&g_once, read_settings);
    HAPPENS_AFTER(&g_once);
    return g_default_threads;
}

int mc_pool_spin_us(void) {
    pthread_once(&g_once, read_settings);
    HAPPENS_AFTER(&g_once);
    return g_spin_us;
}

/* ======================================================================== */
/* Running chunks                                                           */
/* ======================================================================== */

/* Claim and run chunks of job `seq` until none is left (or the job is no
 * longer the current one). */
static void run_chunks(mc_pool *p, uint32_t seq, int tid) {
    uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(c >> 32) != seq || (uint32_t)c == 0) return;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &c, c - 1, memory_order_acquire,
                                                   memory_order_acquire))
            continue;
        HAPPENS_AFTER(&p->claim);
        /* The job cannot be rewritten until this chunk is done. */
        const uint32_t total = p->n_chunks;
        const int64_t k = (int64_t)(total - (uint32_t)c);
        const int64_t i0 = k * p->chunk, i1 = i0 + p->chunk < p->n ? i0 + p->chunk : p->n;
        p->fn(p->arg, i0, i1, tid);
        HAPPENS_BEFORE(&p->done);
        if (atomic_fetch_add_explicit(&p->done, 1, memory_order_seq_cst) + 1 == total &&
            atomic_load_explicit(&p->caller_asleep, memory_order_seq_cst)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->finished);
            pthread_mutex_unlock(&p->mu);
        }
        c = atomic_load_explicit(&p->claim, memory_order_acquire);
    }
}

/* A worker between jobs: spin, then sleep, until claim's seq is not `seen`
 * (*seen becomes it; true) or the pool stops (false). */
static bool wait_for_job(mc_pool *p, uint32_t *seen) {
    const int64_t deadline = p->spin_ns > 0 ? now_ns() + p->spin_ns : 0;
    for (unsigned i = 1; deadline; i++) {
        uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
        if ((uint32_t)(c >> 32) != *seen) {
            *seen = (uint32_t)(c >> 32);
            return true;
        }
        if (atomic_load_explicit(&p->stop, memory_order_relaxed)) return false;
        if (!(i & 63) && now_ns() >= deadline) break;
        cpu_relax();
    }
    bool go = true;
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->sleepers, 1, memory_order_seq_cst);
    for (;;) {
        uint64_t c = atomic_load_explicit(&p->claim, memory_order_seq_cst);
        if ((uint32_t)(c >> 32) != *seen) {
            *seen = (uint32_t)(c >> 32);
            break;
        }
        if (atomic_load_explicit(&p->stop, memory_order_relaxed)) {
            go = false;
            break;
        }
        pthread_cond_wait(&p->wake, &p->mu);
    }
    atomic_fetch_sub_explicit(&p->sleepers, 1, memory_order_seq_cst);
    pthread_mutex_unlock(&p->mu);
    return go;
}

static void *worker_main(void *varg) {
    const worker_arg *w = varg;
    mc_pool *p = w->pool;
    uint32_t seen = 0;
    tls_in_chunk = true; /* everything a worker runs is inside a chunk */
    while (wait_for_job(p, &seen))
        if (w->tid < atomic_load_explicit(&p->active, memory_order_relaxed)) run_chunks(p, seen, w->tid);
    return NULL;
}

/* The caller after its own chunks: until every chunk is done. */
static void wait_done(mc_pool *p, uint32_t total) {
    const int64_t deadline = p->spin_ns > 0 ? now_ns() + p->spin_ns : 0;
    for (unsigned i = 1; deadline; i++) {
        if (atomic_load_explicit(&p->done, memory_order_acquire) == total) return;
        if (!(i & 63) && now_ns() >= deadline) break;
        cpu_relax();
    }
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->caller_asleep, true, memory_order_seq_cst);
    while (atomic_load_explicit(&p->done, memory_order_seq_cst) != total) pthread_cond_wait(&p->finished, &p->mu);
    atomic_store_explicit(&p->caller_asleep, false, memory_order_relaxed);
    pthread_mutex_unlock(&p->mu);
}

void mc_pool_for(mc_pool *p, int64_t n, mc_pool_sched sched, int64_t grain, int max_threads, mc_pool_fn fn,
                 void *arg) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int nt = p ? p->n_threads : 1;
    if (max_threads > 0 && max_threads < nt) nt = max_threads;
    int64_t chunk = grain;
    if (sched == MC_POOL_STATIC) {
        const int64_t units = (n - 1) / grain + 1, parts = nt < units ? nt : units;
        chunk = ((units - 1) / parts + 1) * grain;
    }
    /* The counter of chunks has 32 bits. */
    if ((n - 1) / chunk + 1 > (int64_t)UINT32_MAX) chunk = (n - 1) / (int64_t)UINT32_MAX + 1;
    const int64_t n_chunks = (n - 1) / chunk + 1;
    if (nt <= 1 || n_chunks <= 1 || tls_in_chunk) {
        fn(arg, 0, n, 0);
        return;
    }

    pthread_mutex_lock(&p->call_mu);
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    p->chunk = chunk;
    p->n_chunks = (uint32_t)n_chunks;
    atomic_store_explicit(&p->active, nt, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    const uint32_t seq = ++p->seq;
    HAPPENS_BEFORE(&p->claim);
    atomic_store_explicit(&p->claim, (uint64_t)seq << 32 | (uint64_t)n_chunks, memory_order_seq_cst);
    if (atomic_load_explicit(&p->sleepers, memory_order_seq_cst) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    tls_in_chunk = true;
    run_chunks(p, seq, 0);
    tls_in_chunk = false;
    wait_done(p, (uint32_t)n_chunks);
    HAPPENS_AFTER(&p->done);
    pthread_mutex_unlock(&p->call_mu);
}

/* ======================================================================== */
/* Lifetime                                                                 */
/* ======================================================================== */

int mc_pool_size(const mc_pool *p) { return p ? p->n_threads : 1; }

static void stop_workers(mc_pool *p) {
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->stop, true, memory_order_relaxed);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->threads[i], NULL);
    p->n_started = 0;
}

void mc_pool_free(mc_pool *p) {
    if (!p) return;
    stop_workers(p);
    pthread_cond_destroy(&p->finished);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->call_mu);
    free(p->threads);
    free(p->args);
    free(p);
}

moecl_status mc_pool_new(int n_threads, mc_pool **out) {
    *out = NULL;
    if (n_threads <= 0) n_threads = mc_pool_default_threads();
    const size_t size = (sizeof(mc_pool) + 63) & ~(size_t)63;
    mc_pool *p = aligned_alloc(64, size);
    if (!p) return mc_error(MOECL_ERR_NOMEM, "thread pool: out of memory");
    memset(p, 0, size);
    p->n_threads = n_threads;
    p->spin_ns = (int64_t)mc_pool_spin_us() * 1000;
    atomic_init(&p->active, 0);
    atomic_init(&p->claim, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->caller_asleep, false);
    atomic_init(&p->stop, false);
    NO_RACE_CHECK(&p->active);
    NO_RACE_CHECK(&p->claim);
    NO_RACE_CHECK(&p->done);
    NO_RACE_CHECK(&p->sleepers);
    NO_RACE_CHECK(&p->caller_asleep);
    NO_RACE_CHECK(&p->stop);
    pthread_mutex_init(&p->call_mu, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->finished, NULL);
    const int nw = n_threads - 1;
    if (nw > 0) {
        p->threads = calloc((size_t)nw, sizeof *p->threads);
        p->args = calloc((size_t)nw, sizeof *p->args);
        if (!p->threads || !p->args) {
            mc_pool_free(p);
            return mc_error(MOECL_ERR_NOMEM, "thread pool: out of memory for %d threads", n_threads);
        }
    }
    /* Workers take no asynchronous signals (a Ctrl-C handler belongs on the
     * application's threads); the synchronous ones a fault raises stay, for
     * the SIGBUS handler of guard.c. */
    sigset_t all, old;
    sigfillset(&all);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int err = 0;
    for (int i = 0; i < nw && !err; i++) {
        p->args[i] = (worker_arg){.pool = p, .tid = i + 1};
        if (!(err = pthread_create(&p->threads[i], NULL, worker_main, &p->args[i]))) p->n_started++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        mc_pool_free(p);
        return mc_error(MOECL_ERR_BACKEND, "thread pool: cannot start %d threads: %s", n_threads, strerror(err));
    }
    *out = p;
    return MOECL_OK;
}
