/*
 * threadpool.h - the library's own worker threads (in place of OpenMP).
 *
 * A pool holds n_threads - 1 persistent workers; the thread that calls
 * mc_pool_for is thread 0 and works too. A call splits [0, n) into chunks
 * that every participating thread claims from one atomic counter, so a
 * worker the scheduler has taken off its core holds up at most the chunk it
 * is on: the others (the caller included) take the rest. Between calls a
 * worker spins for a short, bounded while (MOECL_SPIN_US microseconds,
 * default MC_POOL_SPIN_US) in case the next call comes soon, as it does
 * within a decode step, and then sleeps on a condition variable: nothing
 * spins while an application sits idle between decode calls, and a busy
 * machine gets its cores back after at most that while.
 *
 * Each context owns one pool (its CPU backends share it); the quantizer
 * makes one for its run. Nothing is shared between pools, so contexts on
 * different threads run at the same time on workers of their own.
 *
 * Thread safety: mc_pool_for may be called from several threads on the same
 * pool; the calls then run one after another. A call made from inside a
 * chunk (of any pool) runs on the calling thread alone, as 0 of 1: the
 * threads are already busy.
 */
#ifndef MOECL_THREADPOOL_H
#define MOECL_THREADPOOL_H

#include "internal.h"

#include <stdbool.h>
#include <stdint.h>

/* Spin before sleeping, in microseconds, when MOECL_SPIN_US is not set.
 * Long enough to bridge the host work between the parallel steps of a
 * decode (microseconds), short because the scheduler favours a thread that
 * sleeps over one that burns its share spinning: with a busy process beside
 * it (on a shared 2-vCPU machine at load 13-18, so noisy), mixtral-mini
 * Q4_K_M generation medians were 30.0 tok/s with 20 us, 14.2 with 100 us
 * and 15.1 with 0 (tools/bench_threads.sh, 3 rounds). */
#ifndef MC_POOL_SPIN_US
#define MC_POOL_SPIN_US 20
#endif

typedef struct mc_pool mc_pool;

/* The default thread count: the physical cores this process may run on,
 * counted once per core (SMT siblings are not extra cores), and only the
 * performance cores of a hybrid CPU (Linux: /sys/devices/cpu_core/cpus;
 * macOS: hw.perflevel0.physicalcpu). Falls back to the online CPUs. >= 1. */
int mc_pool_default_threads(void);

/* Linux: the physical cores that sysfs under `sys` ("/sys") shows among the
 * online CPUs (and, with affinity, those this process may run on), counted
 * as mc_pool_default_threads does; 0 if it cannot tell, and elsewhere. For
 * the tests, which give it a made-up tree. */
int mc_pool_count_cores(const char *sys, bool affinity);

/* A pool of n_threads threads in all (n_threads - 1 workers started now;
 * n_threads <= 0: mc_pool_default_threads()). MOECL_ERR_NOMEM or
 * MOECL_ERR_BACKEND (a thread could not be started; the message says why)
 * with *out NULL on failure. */
moecl_status mc_pool_new(int n_threads, mc_pool **out);

/* Stop and join the workers, free the pool. NULL: no-op. No call may be in
 * progress. */
void mc_pool_free(mc_pool *p);

/* Threads in all (the caller included); 1 for NULL. */
int mc_pool_size(const mc_pool *p);

/* fn(arg, i0, i1, tid) computes items [i0, i1) on thread tid (0 <= tid <
 * the threads used; the caller is 0). A chunk runs on one thread, every
 * item in exactly one chunk; a thread may run several chunks, in any order. */
typedef void (*mc_pool_fn)(void *arg, int64_t i0, int64_t i1, int tid);

typedef enum mc_pool_sched {
    /* One contiguous chunk per thread, boundaries at multiples of `grain`.
     * The chunks are still claimed, not owned: a thread that is not
     * running lets another take its chunk. */
    MC_POOL_STATIC,
    /* Chunks of `grain` items (the last may be shorter), handed out in
     * order: for work whose cost varies from item to item. */
    MC_POOL_DYNAMIC,
} mc_pool_sched;

/* Run fn over [0, n) on at most max_threads threads of the pool (<= 0: all
 * of them) and return when every chunk is done. grain >= 1. With one
 * thread, one chunk, a NULL pool or from inside a chunk: fn(arg, 0, n, 0)
 * on the calling thread. */
void mc_pool_for(mc_pool *p, int64_t n, mc_pool_sched sched, int64_t grain, int max_threads, mc_pool_fn fn,
                 void *arg);

/* The spin this process uses, in microseconds (MOECL_SPIN_US, read once). */
int mc_pool_spin_us(void);

#endif
