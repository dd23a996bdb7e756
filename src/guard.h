/*
 * guard.h - weight files that shrink or fail while they are mapped.
 *
 * A model computes on its files through mmap. If a file is truncated (or its
 * storage fails) while mapped, reading a page past the new end raises SIGBUS,
 * which would kill the process. Two defences, both per model:
 *
 *   1. Each call that reads weights (model load, context creation, decode)
 *      first re-checks every file's size through a descriptor kept open
 *      since load (fstat: a few microseconds for all the files).
 *   2. While such a call runs, the model is "armed": a process-wide SIGBUS
 *      handler turns a fault on an address inside one of the model's mapped
 *      ranges, on any thread (pool workers, OpenBLAS and driver threads included),
 *      into a flag, maps zero pages over the rest of that range so the
 *      faulting instruction and every later read go on harmlessly, and
 *      returns. The call then sees the flag and fails with MOECL_ERR_IO.
 *      Faults elsewhere, or on a model that is not armed, go to the handler
 *      installed before ours (the application's, or the default: the
 *      process dies as it would without moecl).
 *
 * Why not sigsetjmp/siglongjmp: a fault usually happens on a pool worker
 * or inside OpenBLAS, where no jump buffer of the caller can be reached, and
 * jumping out of a chunk or a BLAS call leaves the pool's or the BLAS's locks
 * and threads in an undefined state. Letting the faulting read finish on
 * a zero page needs no jump at all and works on every thread the same way.
 *
 * Either way the model is then dead: its mapping no longer holds its
 * weights. Every later call through it (decode, context creation) returns
 * MOECL_ERR_IO with the same message; free it and load the file again.
 */
#ifndef MOECL_GUARD_H
#define MOECL_GUARD_H

#include "internal.h"

#include <stdbool.h>

typedef struct mc_guard mc_guard;

/* Watch the mapped files of a model just loaded (its safetensors files or
 * its GGUF file): keep a descriptor of each and register its mapped range
 * with the SIGBUS handler (installed on first use). The guard starts armed
 * (the loader reads weights next); mc_guard_leave disarms it. */
moecl_status mc_guard_new_model(const moecl_model *m, mc_guard **out);

/* Unregister and close. Call before the files are unmapped. NULL: no-op. */
void mc_guard_free(mc_guard *g);

/* Before a call reads weights: MOECL_ERR_IO (the message names the file) if
 * the model is dead or a file is now shorter than its mapping (the model
 * then becomes dead); otherwise arm the guard and return MOECL_OK. Every
 * successful enter needs one leave. NULL guard: MOECL_OK. */
moecl_status mc_guard_enter(mc_guard *g);

/* After the call: disarm; if a read faulted meanwhile, the model becomes
 * dead and MOECL_ERR_IO (with its message) replaces st. */
moecl_status mc_guard_leave(mc_guard *g, moecl_status st);

/* Whether a read faulted since the model was loaded (cheap: polled between
 * layers so a decode stops early). */
bool mc_guard_faulted(const mc_guard *g);

#endif
