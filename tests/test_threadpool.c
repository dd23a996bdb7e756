/*
 * test_threadpool.c - src/util/threadpool.c: every index of a parallel for
 * is visited exactly once, in chunks of the promised shape, on no more
 * threads than asked; workers really take chunks; calls nested in a chunk
 * run inline; several threads use their own pools and one shared pool at
 * once; pools start and stop many times, with jobs and without, awake and
 * asleep.
 *
 *   test_threadpool [--quick]      (--quick: fewer rounds, for helgrind)
 *
 * tests/meson.build runs it with the default spin, with MOECL_SPIN_US=0
 * (every wait sleeps at once) and under helgrind.
 */
#include "test_util.h"
#include "util/threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static bool g_quick;

static void sleep_us(long us) {
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* ---- coverage ------------------------------------------------------------ */

typedef struct cover {
    atomic_int *count;   /* [n] visits per index */
    int64_t n, grain;
    mc_pool_sched sched;
    int max_tid;         /* threads that may take part */
    atomic_int bad;      /* chunks of the wrong shape, or on a thread that should not run */
    atomic_int tid_seen; /* bit t: thread t ran a chunk */
} cover;

static void cover_fn(void *arg, int64_t i0, int64_t i1, int tid) {
    cover *c = arg;
    bool ok = 0 <= i0 && i0 < i1 && i1 <= c->n && 0 <= tid && tid < c->max_tid;
    /* a dynamic chunk is `grain` long (the last may be shorter); a static
     * chunk starts on a multiple of grain, and the inline call is [0, n) */
    if (ok && !(i0 == 0 && i1 == c->n)) {
        if (c->sched == MC_POOL_DYNAMIC) ok = i0 % c->grain == 0 && (i1 - i0 == c->grain || i1 == c->n);
        else ok = i0 % c->grain == 0 && (i1 % c->grain == 0 || i1 == c->n);
    }
    if (!ok) atomic_fetch_add(&c->bad, 1);
    for (int64_t i = i0; ok && i < i1; i++) atomic_fetch_add_explicit(&c->count[i], 1, memory_order_relaxed);
    if (tid < 30) atomic_fetch_or(&c->tid_seen, 1 << tid);
}

static void test_coverage(void) {
    static const int64_t ns[] = {0, 1, 2, 3, 7, 64, 1000, 100003};
    static const int64_t grains[] = {1, 3, 16, 1000};
    int configs = 0, failures = 0;
    for (int pt = 1; pt <= 4; pt++) {
        mc_pool *p = NULL;
        CHECK(mc_pool_new(pt, &p) == MOECL_OK);
        if (!p) continue;
        CHECK(mc_pool_size(p) == pt);
        for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
            for (size_t gi = 0; gi < sizeof grains / sizeof *grains; gi++)
                for (int s = 0; s < 2; s++)
                    for (int mt = 0; mt <= pt + 1; mt++) {
                        const int64_t n = ns[ni];
                        if (g_quick && n > 1000) continue;
                        cover c = {.n = n, .grain = grains[gi], .sched = s ? MC_POOL_DYNAMIC : MC_POOL_STATIC,
                                   .max_tid = mt > 0 && mt < pt ? mt : pt};
                        c.count = calloc((size_t)n + 1, sizeof *c.count);
                        atomic_init(&c.bad, 0);
                        atomic_init(&c.tid_seen, 0);
                        mc_pool_for(p, n, c.sched, c.grain, mt, cover_fn, &c);
                        int wrong = 0;
                        for (int64_t i = 0; i < n; i++) wrong += atomic_load(&c.count[i]) != 1;
                        if (wrong || atomic_load(&c.bad)) {
                            failures++;
                            fprintf(stderr, "  pool %d, n=%lld, grain %lld, %s, max_threads %d: %d indices not "
                                            "visited once, %d bad chunks\n",
                                    pt, (long long)n, (long long)c.grain, s ? "dynamic" : "static", mt, wrong,
                                    atomic_load(&c.bad));
                        }
                        free(c.count);
                        configs++;
                    }
        mc_pool_free(p);
    }
    CHECKF(failures == 0, "%d of %d configurations failed", failures, configs);
    fprintf(stderr, "coverage: %d configurations, every index once\n", configs);
    /* A NULL pool: the caller alone. */
    cover c = {.n = 10, .grain = 1, .sched = MC_POOL_DYNAMIC, .max_tid = 1};
    c.count = calloc(10, sizeof *c.count);
    mc_pool_for(NULL, 10, MC_POOL_DYNAMIC, 1, 0, cover_fn, &c);
    for (int i = 0; i < 10; i++) CHECK(atomic_load(&c.count[i]) == 1);
    CHECK(mc_pool_size(NULL) == 1);
    free(c.count);
}

/* ---- the workers work ------------------------------------------------------ */

/* Thread 0 sleeps in each of its chunks, so the others must take chunks
 * however loaded the machine is. */
static void slow_caller_fn(void *arg, int64_t i0, int64_t i1, int tid) {
    cover *c = arg;
    if (tid == 0) sleep_us(2000);
    cover_fn(c, i0, i1, tid);
}

static void test_workers_run(void) {
    mc_pool *p = NULL;
    CHECK(mc_pool_new(3, &p) == MOECL_OK);
    if (!p) return;
    cover c = {.n = 64, .grain = 1, .sched = MC_POOL_DYNAMIC, .max_tid = 3};
    c.count = calloc(64, sizeof *c.count);
    atomic_init(&c.tid_seen, 0);
    mc_pool_for(p, 64, MC_POOL_DYNAMIC, 1, 0, slow_caller_fn, &c);
    for (int i = 0; i < 64; i++) CHECK(atomic_load(&c.count[i]) == 1);
    CHECKF(atomic_load(&c.tid_seen) & 6, "no worker ran a chunk (threads seen: %#x)", atomic_load(&c.tid_seen));
    /* max_threads 1 keeps the workers out */
    memset(c.count, 0, 64 * sizeof *c.count);
    atomic_store(&c.tid_seen, 0);
    c.max_tid = 1;
    mc_pool_for(p, 64, MC_POOL_DYNAMIC, 1, 1, cover_fn, &c);
    CHECK(atomic_load(&c.tid_seen) == 1);
    /* after the spin has run out: the workers sleep, and a call wakes them */
    sleep_us(20000 + (long)mc_pool_spin_us());
    memset(c.count, 0, 64 * sizeof *c.count);
    atomic_store(&c.tid_seen, 0);
    c.max_tid = 3;
    mc_pool_for(p, 64, MC_POOL_DYNAMIC, 1, 0, slow_caller_fn, &c);
    for (int i = 0; i < 64; i++) CHECK(atomic_load(&c.count[i]) == 1);
    CHECKF(atomic_load(&c.tid_seen) & 6, "no worker woke to run a chunk (threads seen: %#x)",
           atomic_load(&c.tid_seen));
    free(c.count);
    mc_pool_free(p);
}

/* ---- nested calls ---------------------------------------------------------- */

typedef struct nest {
    mc_pool *outer, *other;
    atomic_int *count; /* [64 * 100] */
    atomic_int bad;
} nest;

typedef struct inner_arg {
    nest *ns;
    int64_t row;
    int calls;
} inner_arg;

static void inner_fn(void *arg, int64_t i0, int64_t i1, int tid) {
    inner_arg *a = arg;
    /* inline: one call over everything, as thread 0 of 1 */
    if (tid != 0 || i0 != 0 || i1 != 100) atomic_fetch_add(&a->ns->bad, 1);
    a->calls++;
    for (int64_t i = i0; i < i1; i++) atomic_fetch_add(&a->ns->count[a->row * 100 + i], 1);
}

static void outer_fn(void *arg, int64_t i0, int64_t i1, int tid) {
    nest *ns = arg;
    (void)tid;
    for (int64_t r = i0; r < i1; r++) {
        inner_arg a = {.ns = ns, .row = r};
        mc_pool_for(r % 2 ? ns->other : ns->outer, 100, MC_POOL_DYNAMIC, 7, 0, inner_fn, &a);
        if (a.calls != 1) atomic_fetch_add(&ns->bad, 1);
    }
}

static void test_nested(void) {
    nest ns = {0};
    CHECK(mc_pool_new(2, &ns.outer) == MOECL_OK);
    CHECK(mc_pool_new(2, &ns.other) == MOECL_OK);
    ns.count = calloc(64 * 100, sizeof *ns.count);
    atomic_init(&ns.bad, 0);
    if (ns.outer && ns.other) mc_pool_for(ns.outer, 64, MC_POOL_DYNAMIC, 1, 0, outer_fn, &ns);
    int wrong = 0;
    for (int i = 0; i < 64 * 100; i++) wrong += atomic_load(&ns.count[i]) != 1;
    CHECKF(wrong == 0 && atomic_load(&ns.bad) == 0, "nested: %d indices not visited once, %d calls not inline",
           wrong, atomic_load(&ns.bad));
    free(ns.count);
    mc_pool_free(ns.outer);
    mc_pool_free(ns.other);
}

/* ---- several threads at once -------------------------------------------- */

typedef struct sum_job {
    const int32_t *v;
    _Atomic int64_t sum;
} sum_job;

static void sum_fn(void *arg, int64_t i0, int64_t i1, int tid) {
    sum_job *j = arg;
    (void)tid;
    int64_t s = 0;
    for (int64_t i = i0; i < i1; i++) s += j->v[i];
    atomic_fetch_add(&j->sum, s);
}

#define N_CALLERS 4
#define N_V 5000

typedef struct caller {
    mc_pool *pool; /* shared, or NULL: make one of its own */
    const int32_t *v;
    int64_t want;
    int rounds, wrong;
} caller;

static void *caller_main(void *arg) {
    caller *c = arg;
    mc_pool *own = NULL;
    mc_pool *p = c->pool;
    if (!p) {
        if (mc_pool_new(2, &own) != MOECL_OK) {
            c->wrong = -1;
            return NULL;
        }
        p = own;
    }
    for (int r = 0; r < c->rounds; r++) {
        sum_job j = {.v = c->v};
        atomic_init(&j.sum, 0);
        mc_pool_for(p, N_V, r % 2 ? MC_POOL_DYNAMIC : MC_POOL_STATIC, 1 + r % 37, 0, sum_fn, &j);
        c->wrong += atomic_load(&j.sum) != c->want;
    }
    mc_pool_free(own);
    return NULL;
}

static void test_concurrent(void) {
    int32_t *v = malloc(N_V * sizeof *v);
    int64_t want = 0;
    for (int i = 0; i < N_V; i++) want += v[i] = i * 7 - 300;
    mc_pool *shared = NULL;
    CHECK(mc_pool_new(3, &shared) == MOECL_OK);
    for (int mode = 0; mode < 2; mode++) { /* a pool each; one pool for all */
        pthread_t th[N_CALLERS];
        caller cs[N_CALLERS];
        for (int i = 0; i < N_CALLERS; i++) {
            cs[i] = (caller){.pool = mode ? shared : NULL, .v = v, .want = want, .rounds = g_quick ? 30 : 400};
            CHECK(pthread_create(&th[i], NULL, caller_main, &cs[i]) == 0);
        }
        for (int i = 0; i < N_CALLERS; i++) {
            pthread_join(th[i], NULL);
            CHECKF(cs[i].wrong == 0, "%s: caller %d: %d wrong sums", mode ? "shared pool" : "own pools", i,
                   cs[i].wrong);
        }
    }
    mc_pool_free(shared);
    free(v);
}

/* ---- start and stop ---------------------------------------------------------- */

static void test_cycles(void) {
    const int cycles = g_quick ? 20 : 300;
    int32_t v[100];
    int64_t want = 0;
    for (int i = 0; i < 100; i++) want += v[i] = i;
    int wrong = 0;
    for (int k = 0; k < cycles; k++) {
        mc_pool *p = NULL;
        if (mc_pool_new(1 + k % 4, &p) != MOECL_OK) {
            wrong++;
            continue;
        }
        if (k % 3) { /* some never run a job: freed while their workers start */
            sum_job j = {.v = v};
            atomic_init(&j.sum, 0);
            mc_pool_for(p, 100, MC_POOL_DYNAMIC, 3, 0, sum_fn, &j);
            wrong += atomic_load(&j.sum) != want;
        }
        if (k % 50 == 7) sleep_us(2000 + (long)mc_pool_spin_us()); /* and some have gone to sleep */
        mc_pool_free(p);
    }
    CHECKF(wrong == 0, "%d of %d start/stop cycles went wrong", wrong, cycles);
    mc_pool_free(NULL);
}

/* ---- counting cores ------------------------------------------------------- */

static void put(const char *root, const char *rel, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    for (char *s = path + strlen(root) + 1; *s; s++) /* the directories on the way */
        if (*s == '/') {
            *s = '\0';
            mkdir(path, 0755);
            *s = '/';
        }
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void siblings(const char *root, int cpu, const char *list) {
    char rel[128];
    snprintf(rel, sizeof rel, "devices/system/cpu/cpu%d/topology/thread_siblings_list", cpu);
    put(root, rel, list);
}

static void test_count_cores(void) {
#if defined(__linux__)
    char root[] = "/tmp/moecl-sysfs-XXXXXX";
    CHECK(mkdtemp(root) != NULL);
    /* 4 cores with 2 threads each, Linux numbering: siblings (i, i + 4) */
    put(root, "devices/system/cpu/online", "0-7\n");
    for (int c = 0; c < 8; c++) {
        char l[16];
        snprintf(l, sizeof l, "%d,%d\n", c % 4, c % 4 + 4);
        siblings(root, c, l);
    }
    CHECKF(mc_pool_count_cores(root, false) == 4, "SMT: %d cores, want 4", mc_pool_count_cores(root, false));
    /* CPUs 2 and 6 (core 2) offline: 3 cores; a list with ranges and singles */
    put(root, "devices/system/cpu/online", "0-1,3-5,7\n");
    CHECKF(mc_pool_count_cores(root, false) == 3, "offline: %d cores, want 3", mc_pool_count_cores(root, false));
    /* hybrid: P-cores 0-3 as 2 cores with 2 threads each, E-cores 4-7 single */
    put(root, "devices/system/cpu/online", "0-7\n");
    for (int c = 0; c < 4; c++) siblings(root, c, c < 2 ? "0-1\n" : "2-3\n");
    for (int c = 4; c < 8; c++) {
        char l[16];
        snprintf(l, sizeof l, "%d\n", c);
        siblings(root, c, l);
    }
    put(root, "devices/cpu_core/cpus", "0-3\n");
    CHECKF(mc_pool_count_cores(root, false) == 2, "hybrid: %d cores, want 2 (P-cores)",
           mc_pool_count_cores(root, false));
    /* no topology files: every online CPU counts */
    put(root, "devices/cpu_core/cpus", "\n");
    char rel[128];
    for (int c = 0; c < 8; c++) {
        snprintf(rel, sizeof rel, "%s/devices/system/cpu/cpu%d/topology/thread_siblings_list", root, c);
        remove(rel);
    }
    CHECKF(mc_pool_count_cores(root, false) == 8, "no topology: %d cores, want 8", mc_pool_count_cores(root, false));
    /* garbage: cannot tell */
    put(root, "devices/system/cpu/online", "x-y\n");
    CHECK(mc_pool_count_cores(root, false) == 0);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    CHECK(system(cmd) == 0);
    /* this machine: never more than the online CPUs */
    const int here = mc_pool_count_cores("/sys", true);
    CHECK(here >= 0 && here <= sysconf(_SC_NPROCESSORS_ONLN));
#endif
}

int main(int argc, char **argv) {
    g_quick = argc > 1 && !strcmp(argv[1], "--quick");
    const int cores = mc_pool_default_threads();
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    fprintf(stderr, "default threads (physical cores): %d of %ld online CPUs; spin %d us\n", cores, online,
            mc_pool_spin_us());
    CHECK(cores >= 1 && (online < 1 || cores <= online));
    test_count_cores();
    test_coverage();
    test_workers_run();
    test_nested();
    test_concurrent();
    test_cycles();
    return t_done("test_threadpool");
}
