/*
 * moecl.h - the whole public API of moecl, a portable Mixture-of-Experts
 * inference runtime.
 *
 * Conventions (they hold for every function below unless its comment says
 * otherwise):
 *
 *   - Every function that can fail returns a moecl_status. MOECL_OK is 0,
 *     errors are negative. moecl_status_str() names a status; the message of
 *     the last failure on the calling thread is moecl_last_error(), and a
 *     context also keeps the last error of calls made on it
 *     (moecl_context_last_error()).
 *   - Handles are opaque. Each has a *_new / *_load function and a *_free
 *     function; *_free(NULL) is a harmless no-op.
 *   - Strings passed in are copied if they are kept; strings returned are
 *     owned by the library and stay valid as documented.
 *   - Nothing here calls exit() or writes to stdout. Diagnostics go through
 *     the log callback (stderr, warnings and errors only, by default).
 *
 * Thread safety: a moecl_model is read-only once loaded and may be shared by
 * any number of contexts on any threads. A moecl_context or moecl_sampler
 * must be used by one thread at a time. The log callback is process-global.
 *
 * Weight files that change under a loaded model: weights are memory-mapped,
 * so a weight file truncated (or whose storage fails) while a model uses it
 * would raise SIGBUS. What moecl promises:
 *   - moecl_model_load, moecl_context_new and moecl_decode(_batch) first
 *     re-check the size of every weight file (fstat); a file shorter than
 *     when it was mapped gives MOECL_ERR_IO naming the file.
 *   - While those calls run, a SIGBUS raised by reading the model's mapped
 *     weights, on any thread (the caller's, moecl's workers, OpenBLAS's), is caught:
 *     the read sees zeros, the call stops at the next layer and returns
 *     MOECL_ERR_IO naming the file. The process does not die.
 *   - After either error the model is dead: every later decode on any of
 *     its contexts, and moecl_context_new on it, returns MOECL_ERR_IO with
 *     the same message. Free the contexts and the model, then load again.
 *   - The handler is installed (sigaction, SA_SIGINFO) by the first
 *     moecl_model_load and chains to the SIGBUS handler installed before it
 *     for every fault that is not a read of a mapped weight file during one
 *     of those calls (the application's, or the default action). An
 *     application that installs its own SIGBUS handler after loading a
 *     model must chain to the previous one, or it loses this protection.
 *   - A file replaced by another one (rename) after loading is harmless:
 *     the old file stays mapped and intact, and the re-check watches it
 *     through a descriptor opened at load.
 *   - Not covered: moecl_quantize's reads of its input (a fault there ends
 *     the process as before).
 */
#ifndef MOECL_H
#define MOECL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(MOECL_BUILDING_DLL)
#define MOECL_API __declspec(dllexport)
#elif defined(__GNUC__)
#define MOECL_API __attribute__((visibility("default")))
#else
#define MOECL_API
#endif

/* ------------------------------------------------------------------------ */
/* Version                                                                  */
/* ------------------------------------------------------------------------ */

#define MOECL_VERSION_MAJOR 0
#define MOECL_VERSION_MINOR 1
#define MOECL_VERSION_PATCH 0
#define MOECL_VERSION_STRING "0.1.0"

/* The version of the library actually linked, e.g. "0.1.0". Static string. */
MOECL_API const char *moecl_version(void);

/* ------------------------------------------------------------------------ */
/* Status codes and errors                                                  */
/* ------------------------------------------------------------------------ */

typedef enum moecl_status {
    MOECL_OK = 0,
    MOECL_ERR_INVALID_ARG = -1,  /* a NULL handle, a bad parameter, a token id out of range */
    MOECL_ERR_IO = -2,           /* a file could not be opened, mapped or written */
    MOECL_ERR_FORMAT = -3,       /* a model or config file is malformed */
    MOECL_ERR_UNSUPPORTED = -4,  /* well-formed but not something moecl runs (architecture, dtype) */
    MOECL_ERR_NOMEM = -5,        /* an allocation failed */
    MOECL_ERR_CONTEXT_FULL = -6, /* the tokens do not fit in the context (n_ctx); nothing was changed */
    MOECL_ERR_ABORTED = -7,      /* a progress or abort callback asked to stop */
    MOECL_ERR_BACKEND = -8,      /* a compute backend failed (device error, kernel build) */
    MOECL_ERR_BUSY = -9,         /* a bounded queue is full (moecl_engine_submit); try again later */
} moecl_status;

/* A static English name for a status ("ok", "malformed file", ...). Never NULL. */
MOECL_API const char *moecl_status_str(moecl_status status);

/* The message of the last failure on the calling thread, e.g.
 * "models/x/model.safetensors: tensor 'lm_head.weight' ends past the end of
 * the file". Empty string if none. Valid until the next moecl call on the
 * same thread. */
MOECL_API const char *moecl_last_error(void);

/* ------------------------------------------------------------------------ */
/* Logging and callbacks                                                    */
/* ------------------------------------------------------------------------ */

typedef enum moecl_log_level {
    MOECL_LOG_ERROR = 0,
    MOECL_LOG_WARN = 1,
    MOECL_LOG_INFO = 2,
    MOECL_LOG_DEBUG = 3,
} moecl_log_level;

/* Receives one complete message (no trailing newline). May be called from
 * any thread that calls into moecl. */
typedef void (*moecl_log_fn)(moecl_log_level level, const char *message, void *user_data);

/* Route log messages with level <= max_level to fn (fn NULL: the default
 * logger, which writes to stderr). Process-global; not thread-safe against
 * concurrent calls to itself. The default is stderr with MOECL_LOG_WARN. */
MOECL_API void moecl_log_set(moecl_log_fn fn, moecl_log_level max_level, void *user_data);

/* Progress while loading: fraction in [0, 1]. Return false to cancel; the
 * load then fails with MOECL_ERR_ABORTED and frees everything. */
typedef bool (*moecl_progress_fn)(float fraction, void *user_data);

/* Polled during moecl_decode between layers. Return true to abort: decode
 * then returns MOECL_ERR_ABORTED and the context is left as it was before
 * the call. */
typedef bool (*moecl_abort_fn)(void *user_data);

/* ------------------------------------------------------------------------ */
/* Models                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct moecl_model moecl_model;

/* Storage types of weights. The quantized types have GGUF's block layouts:
 * Q8_0 and Q4_0 blocks of 32 weights, the K-quants super-blocks of 256. */
typedef enum moecl_dtype {
    MOECL_DTYPE_F32 = 0,
    MOECL_DTYPE_F16 = 1,
    MOECL_DTYPE_BF16 = 2,
    MOECL_DTYPE_Q8_0 = 3,
    MOECL_DTYPE_Q4_0 = 4,
    MOECL_DTYPE_Q4_K = 5,
    MOECL_DTYPE_Q5_K = 6,
    MOECL_DTYPE_Q6_K = 7,
    MOECL_DTYPE_COUNT
} moecl_dtype;

/* Static name of a dtype ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_K",
 * "q5_K", "q6_K"), "?" if out of range. */
MOECL_API const char *moecl_dtype_name(moecl_dtype dtype);

typedef struct moecl_model_params {
    moecl_progress_fn progress; /* NULL: no progress reports */
    void *progress_user_data;
} moecl_model_params;

MOECL_API moecl_model_params moecl_model_default_params(void);

/* Load a model. path is a Hugging Face model directory (config.json and
 * model.safetensors, or shards listed by model.safetensors.index.json), or a
 * GGUF file (versions 2 and 3) as llama.cpp writes Mixtral: architecture
 * "llama" with experts, stacked or per-expert expert tensors, weights in any
 * moecl_dtype, the tokenizer from its tokenizer.ggml.* metadata. Weight files
 * are memory-mapped, not copied: a quantized model computes on its blocks
 * and occupies about its file size. params may be NULL for the
 * defaults. On success *out owns the model (free with moecl_model_free); on
 * failure *out is NULL and moecl_last_error() names the file and problem.
 * Thread-safe. */
MOECL_API moecl_status moecl_model_load(const char *path, const moecl_model_params *params,
                                        moecl_model **out);

/* Free a model. All contexts made from it must be freed first. NULL: no-op. */
MOECL_API void moecl_model_free(moecl_model *model);

typedef struct moecl_model_info {
    char architecture[64];      /* "MixtralForCausalLM" */
    int32_t n_vocab;            /* vocabulary size */
    int32_t n_embd;             /* hidden size */
    int32_t n_ff;               /* expert intermediate size */
    int32_t n_layer;
    int32_t n_head;             /* query heads */
    int32_t n_head_kv;          /* key/value heads (GQA) */
    int32_t head_dim;
    int32_t n_expert;           /* experts per layer */
    int32_t n_expert_used;      /* experts chosen per token (top-k) */
    int32_t n_ctx_train;        /* max_position_embeddings */
    int32_t sliding_window;     /* 0: none */
    float rms_norm_eps;
    float rope_theta;
    int32_t bos_id, eos_id;     /* -1 if unknown */
    bool tie_word_embeddings;
    uint64_t n_params;          /* all parameters */
    uint64_t n_params_active;   /* parameters used per token (top-k experts) */
    uint64_t bytes_by_dtype[MOECL_DTYPE_COUNT]; /* weight bytes stored in each dtype */
    uint64_t bytes_per_token;   /* weight bytes one generated token reads: attention, router, LM head
                                   and n_expert_used experts per layer (their mean size), in the stored
                                   types; the bound memory bandwidth puts on generation */
    moecl_dtype expert_dtype;   /* storage type of the first expert's gate projection */
} moecl_model_info;

/* Fill *info. Thread-safe. */
MOECL_API moecl_status moecl_model_get_info(const moecl_model *model, moecl_model_info *info);

/* ------------------------------------------------------------------------ */
/* Contexts: KV cache, scratch, a backend                                   */
/* ------------------------------------------------------------------------ */

typedef struct moecl_context moecl_context;

typedef enum moecl_backend_type {
    MOECL_BACKEND_AUTO = 0,   /* an OpenCL GPU if there is one (or the device named by `device` or
                                 MOECL_DEVICE), else the CPU; OpenCL failures fall back to the CPU
                                 with a warning. A CPU OpenCL device (PoCL) is used only when named. */
    MOECL_BACKEND_CPU = 1,
    MOECL_BACKEND_OPENCL = 2, /* expert FFNs on an OpenCL device; failing to get one is an error */
} moecl_backend_type;

/* What the placement planner may put on the OpenCL devices. */
typedef enum moecl_placement {
    MOECL_PLACEMENT_AUTO = 0,    /* by bytes saved per token per byte stored (README "Placement"): the
                                    dense layers on the first device when they fit and its measured
                                    bandwidth makes them faster there (never on a CPU device), then experts */
    MOECL_PLACEMENT_EXPERTS = 1, /* routed experts only, the hottest first; dense layers on the host */
    MOECL_PLACEMENT_DENSE = 2,   /* the dense layers (attention, norms, dense FFNs, shared experts, LM
                                    head, the KV cache) on the first device, then as many experts as fit;
                                    moecl_context_new fails (MOECL_ERR_BACKEND) when they do not fit */
} moecl_placement;

/* Limits of moecl_context_params, checked by moecl_context_new
 * (MOECL_ERR_INVALID_ARG beyond them). */
#define MOECL_MAX_CTX   (1u << 24) /* n_ctx: positions per sequence */
#define MOECL_MAX_BATCH (1u << 16) /* n_batch: tokens per moecl_decode call */
#define MOECL_MAX_SEQ   1024u      /* n_seq_max: sequences */

typedef struct moecl_context_params {
    uint32_t n_ctx;       /* positions per sequence; 0: min(n_ctx_train, 4096) */
    uint32_t n_batch;     /* most tokens one moecl_decode call may take; 0: 512 */
    uint32_t n_seq_max;   /* independent sequences in the KV cache; 0: 1 */
    int32_t n_threads;    /* threads computing (the caller's included); 0: the physical (performance) cores */
    bool logits_all;      /* keep logits of every token of a batch, not only the last of each sequence */
    moecl_backend_type backend;
    moecl_abort_fn abort_callback; /* NULL: never abort */
    void *abort_user_data;
    /* OpenCL (MOECL_BACKEND_OPENCL, or AUTO when it finds a device): */
    const char *device;      /* device index in moecl_device_get_info order, or a case-insensitive
                                substring of "platform vendor name"; NULL: $MOECL_DEVICE, else the
                                first GPU, else (OPENCL only) the first device. Not kept. */
    int32_t gpu_mem_mib;     /* MiB of expert weights on the device; -1 (default): device memory
                                less headroom; 0: no experts on the device */
    int32_t gpu_experts;     /* most experts per layer on the device; -1 (default): the budget decides */
    moecl_dtype device_dtype;/* expert weights on the device: F32 or F16 (arithmetic is F32);
                                MOECL_DTYPE_COUNT (default): as the model stores them (quantized
                                blocks stay quantized, F16 stays F16), BF16 as F32 */
    /* Placement (README "Placement"). `device` may list several devices, "0,1": each takes a
       share of the experts under one plan, gpu_mem_mib and gpu_experts applying to each. */
    moecl_placement placement; /* what the planner may put on the devices; default AUTO */
    const float *expert_freq;  /* [n_layer * n_expert] share of tokens routed to each expert, in
                                  [0, 1] (a layer sums to n_expert_used): a profile
                                  (moecl_expert_profile_load) or a calibration run's counts / tokens.
                                  The hottest experts go to the devices first. NULL (default):
                                  n_expert_used / n_expert each. Not kept. */
    /* The KV cache: one pool of cells (a cell holds the keys and values of
     * one position in every layer) shared by all sequences, handed out in
     * blocks of 16 positions as sequences grow and given back when they are
     * truncated; memory is allocated for the most cells ever held at once,
     * not for the budget. */
    uint32_t n_kv_cells;     /* cells over all sequences together (rounded up to blocks of 16);
                                0 or more than n_seq_max x n_ctx (each rounded up to blocks):
                                that, every sequence can be full at once (as before the pool) */
    moecl_dtype kv_type;     /* MOECL_DTYPE_F32 (0, default) or MOECL_DTYPE_F16: half the memory;
                                keys and values rounded to binary16 (logits move by a few 1e-3
                                relative to the F32 cache: README, "KV cache") */
} moecl_context_params;

MOECL_API moecl_context_params moecl_context_default_params(void);

/* An OpenCL device, as moecl_device_get_info describes it. */
typedef struct moecl_device_info {
    char platform[128];     /* "Portable Computing Language" */
    char vendor[128];
    char name[128];
    char version[64];       /* "OpenCL 3.0 PoCL ..." */
    char driver[64];        /* driver version */
    bool is_gpu;
    bool fp16;              /* cl_khr_fp16 (not required: F16 weights are read with vload_half) */
    uint64_t global_mem;    /* bytes */
    uint64_t max_alloc;     /* bytes, largest single buffer */
    int32_t compute_units;
} moecl_device_info;

/* Number of OpenCL devices over all platforms. 0 when there are none, and
 * then moecl_last_error() says why: the OpenCL library (libOpenCL.so.1,
 * opened at run time; $MOECL_OPENCL_LIBRARY names another) cannot be loaded,
 * or no platform has a device. Thread-safe. */
MOECL_API int32_t moecl_device_count(void);

/* Describe device `index` (0 <= index < moecl_device_count()).
 * MOECL_ERR_INVALID_ARG for a NULL info or an index out of range. */
MOECL_API moecl_status moecl_device_get_info(int32_t index, moecl_device_info *info);

/* Create a context for model (which must outlive it). params may be NULL.
 * Errors: MOECL_ERR_INVALID_ARG for n_ctx, n_batch or n_seq_max beyond the MOECL_MAX_*
 * limits or a kv_type other than F32 and F16; MOECL_ERR_NOMEM when the KV
 * cache's budget (n_kv_cells x 2 x n_layer x n_head_kv x head_dim values)
 * is larger than the machine's physical memory (sysconf(_SC_PHYS_PAGES)),
 * since it could never be filled, or when an allocation fails; MOECL_ERR_IO when the model is dead (see the top of
 * this file). Thread-safe with respect to the model.
 * The context starts n_threads - 1 worker threads of its own, which live
 * until moecl_context_free. Between decode calls they spin for at most
 * MOECL_SPIN_US microseconds (environment; default 20, 0: none) and then
 * sleep, so an idle context costs no CPU; they take no asynchronous
 * signals. MOECL_ERR_BACKEND if a thread cannot be started. */
MOECL_API moecl_status moecl_context_new(const moecl_model *model, const moecl_context_params *params,
                                         moecl_context **out);

/* NULL: no-op. */
MOECL_API void moecl_context_free(moecl_context *ctx);

/* The KV cache of a context, now. */
typedef struct moecl_kv_info {
    moecl_dtype type;          /* MOECL_DTYPE_F32 or MOECL_DTYPE_F16 */
    int32_t block_cells;       /* cells per block (16) */
    int64_t n_cells;           /* the budget, a whole number of blocks */
    int64_t n_cells_held;      /* cells in blocks the sequences hold */
    int64_t n_positions;       /* positions held, over all sequences (<= n_cells_held) */
    uint64_t bytes_per_cell;   /* 2 x n_layer x n_head_kv x head_dim x (4 or 2) */
    uint64_t bytes_allocated;  /* block memory allocated: the most cells ever held at once, in bytes */
} moecl_kv_info;

/* Fill *info. MOECL_ERR_INVALID_ARG for a NULL ctx or info. Not
 * thread-safe with respect to calls that decode or truncate on ctx. */
MOECL_API moecl_status moecl_context_get_kv_info(const moecl_context *ctx, moecl_kv_info *info);

/* Where the experts of a context run (for `moecl info` and logs). */
typedef struct moecl_context_backend_info {
    moecl_backend_type backend; /* MOECL_BACKEND_OPENCL when any expert is on a device, else CPU */
    char device[128];           /* the OpenCL device's name; "" when none */
    int32_t n_expert_device;    /* experts, over all layers, on the device */
    int32_t n_expert_cpu;       /* experts on the CPU */
    uint64_t device_bytes;      /* bytes of expert weights on the device */
    moecl_dtype device_dtype;   /* their storage type (F32, F16, or the model's quantized type) */
} moecl_context_backend_info;

/* Fill *info. MOECL_ERR_INVALID_ARG for a NULL ctx or info. */
MOECL_API moecl_status moecl_context_get_backend_info(const moecl_context *ctx, moecl_context_backend_info *info);

/* Where expert `expert` of layer `layer` runs: MOECL_BACKEND_CPU or
 * MOECL_BACKEND_OPENCL; -1 for a NULL ctx or an index out of range. */
MOECL_API int32_t moecl_context_expert_backend(const moecl_context *ctx, int32_t layer, int32_t expert);

/* Where expert `expert` of layer `layer` runs: 0 the host, d + 1 the d-th
 * device of the context's plan (moecl_placement_info.device[d]); -1 for a
 * NULL ctx or an index out of range. */
MOECL_API int32_t moecl_context_expert_device(const moecl_context *ctx, int32_t layer, int32_t expert);

#define MOECL_MAX_PLACE_DEVICES 4

/* The placement plan of a context and what it predicts. */
typedef struct moecl_placement_info {
    int32_t n_device;               /* OpenCL devices holding experts */
    struct {
        char name[128];
        int32_t n_expert;           /* experts it holds */
        uint64_t bytes;             /* bytes of weights it holds */
        int64_t budget;             /* bytes it was given */
        double read_gbs;            /* measured read bandwidth, GB/s; 0: unknown */
        double rtt_us;              /* measured host round trip, microseconds */
        double gb_per_token;        /* expected GB of its weights read per generated token */
    } device[MOECL_MAX_PLACE_DEVICES];
    int32_t n_expert_host;          /* experts on the host */
    double host_read_gbs;           /* measured host read bandwidth, GB/s; 0: unknown */
    double host_gb_per_token;       /* expected GB read on the host per generated token (dense + experts) */
    bool profiled;                  /* frequencies came from expert_freq, not K/E */
    double predicted_tok_s;         /* generation tokens/s the plan predicts; 0: a bandwidth is unknown */
    double predicted_tok_s_host;    /* the same with every weight on the host */
    bool dense_device;              /* the dense layers run on device[0] (else on the host) */
    uint64_t dense_bytes;           /* device bytes they take there: weights, KV cache, activations */
} moecl_placement_info;

/* Fill *info. MOECL_ERR_INVALID_ARG for a NULL ctx or info. The prediction is
 * memory-bound: per layer the slower of the host's and each device's share
 * of the expected expert bytes (plus a round trip per device), plus the dense
 * bytes at the host's bandwidth (dense_device: at the device's, plus a round
 * trip per layer); it ignores attention's dependence on context length and
 * compute-bound kernels. */
MOECL_API moecl_status moecl_context_get_placement(const moecl_context *ctx, moecl_placement_info *info);

/* Read an expert profile (README "Placement"; `moecl stats --save-profile`
 * writes one) for model into freq[n_layer * n_expert], for
 * moecl_context_params.expert_freq. The file is untrusted: MOECL_ERR_IO,
 * MOECL_ERR_FORMAT naming the file and the field, including a profile of
 * another shape (n_layer, n_expert, n_expert_used). */
MOECL_API moecl_status moecl_expert_profile_load(const moecl_model *model, const char *path, float *freq);

/* The message of the last failure of a call on ctx ("" if none). Owned by
 * ctx, valid until the next call on ctx. */
MOECL_API const char *moecl_context_last_error(const moecl_context *ctx);

/* Process n_tokens tokens appended to sequence 0 (prompt or one decode
 * step), as one batch. After success moecl_get_logits(ctx, -1) holds the
 * logits of the last token. Returns MOECL_ERR_CONTEXT_FULL (nothing changed)
 * if they do not fit in n_ctx, or the KV cache's pool has too few free
 * cells for them (only with n_kv_cells below n_ctx x n_seq_max; the
 * message says which), MOECL_ERR_INVALID_ARG for an id outside the
 * vocabulary or n_tokens outside 1..n_batch (MOECL_ERR_CONTEXT_FULL when
 * they would not fit in the context either), MOECL_ERR_ABORTED if the abort
 * callback fired (the KV cache is left as before the call), MOECL_ERR_IO if
 * a weight file was truncated or failed (the model is then dead: see the
 * top of this file). */
MOECL_API moecl_status moecl_decode(moecl_context *ctx, const int32_t *tokens, int32_t n_tokens);

/* A batch over several sequences: token i is appended to sequence seq_id[i]
 * (0 <= seq_id < n_seq_max), in order. Tokens of different sequences are
 * computed together: each expert's weights are read once per batch. */
typedef struct moecl_batch {
    int32_t n_tokens;
    const int32_t *tokens;  /* [n_tokens] */
    const int32_t *seq_id;  /* [n_tokens]; NULL: all sequence 0 */
} moecl_batch;

/* Like moecl_decode for a multi-sequence batch. Logits kept: the last token
 * of every sequence present in the batch (all tokens if logits_all). */
MOECL_API moecl_status moecl_decode_batch(moecl_context *ctx, const moecl_batch *batch);

/* Logits (n_vocab floats) of token i of the last batch; i = -1 means the
 * last token. Without logits_all only the last token of each sequence in the
 * batch has logits; other i return NULL. Owned by ctx, valid until the next
 * decode. */
MOECL_API const float *moecl_get_logits(moecl_context *ctx, int32_t i);

/* Number of positions held for sequence seq (0 if seq is out of range). */
MOECL_API int32_t moecl_seq_length(const moecl_context *ctx, int32_t seq);

/* Drop positions >= n_keep of sequence seq (n_keep 0 clears it); seq -1
 * means every sequence. Used to rewind or start over. The KV blocks no
 * longer needed go back to the context's pool, for any sequence; their
 * memory is kept for reuse until the context is freed. */
MOECL_API moecl_status moecl_seq_truncate(moecl_context *ctx, int32_t seq, int32_t n_keep);

/* ---- Routing statistics -------------------------------------------------- */

/* Per context, moecl can count the tokens its routers send to each expert of
 * each layer and the sum of their router weights (the weights after the
 * family's rule: renormalised top-k for Mixtral and Qwen3-MoE, the top-k
 * softmax probabilities for OLMoE and Qwen2-MoE). Counts are indexed
 * [layer * n_expert + expert] (layer-major; a dense layer's are all 0) and
 * cover every successful moecl_decode(_batch) since the counters were turned
 * on or last reset: a decode that fails (aborted, context full, I/O) adds
 * nothing. Each token of a batch adds n_expert_used to the counts of every
 * MoE layer. Off by default; when on they cost a few integer and float adds
 * per token per layer. Not thread-safe: call them from the thread that
 * decodes (see moecl_engine_get_routing_counts for an engine). */

/* Turn the counters on or off (turning off keeps the totals). MOECL_ERR_NOMEM
 * the first time if their 2 x n_layer x n_expert values cannot be allocated;
 * MOECL_ERR_INVALID_ARG for a NULL ctx. */
MOECL_API moecl_status moecl_context_set_routing_counters(moecl_context *ctx, bool on);

/* Copy the totals: tokens[i] routed and weight_sum[i], for i < n_layer *
 * n_expert (either pointer may be NULL to skip it). n is the length of the
 * arrays; MOECL_ERR_INVALID_ARG if it is less than n_layer * n_expert or ctx
 * is NULL. All zero if the counters were never on. */
MOECL_API moecl_status moecl_context_get_routing_counts(const moecl_context *ctx, uint64_t *tokens,
                                                        double *weight_sum, size_t n);

/* Set the totals to zero (whether or not the counters are on). */
MOECL_API moecl_status moecl_context_reset_routing_counts(moecl_context *ctx);

/* Called during moecl_decode(_batch), on the decoding thread, once per token
 * per MoE layer right after that layer's router chose: layer, the token's
 * index in the batch, its sequence and position, and its k = n_expert_used
 * experts with their weights, in decreasing order of router probability
 * (experts/weights are valid during the call only). A decode that fails
 * later has still made the calls of the layers it reached. It must not call
 * moecl functions on the same context. */
typedef void (*moecl_routing_fn)(int32_t layer, int32_t token, int32_t seq, int32_t pos, const int32_t *experts,
                                 const float *weights, int32_t k, void *user_data);

/* Set (cb NULL: remove) the routing callback; NULL costs one test per layer.
 * MOECL_ERR_INVALID_ARG for a NULL ctx, MOECL_ERR_NOMEM as above. */
MOECL_API moecl_status moecl_context_set_routing_callback(moecl_context *ctx, moecl_routing_fn cb,
                                                          void *user_data);

/* ------------------------------------------------------------------------ */
/* Sampling                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct moecl_sampler moecl_sampler;

typedef struct moecl_sampler_params {
    float temperature;    /* <= 0: greedy (argmax; ties go to the lowest id) */
    int32_t top_k;        /* keep the k most likely; <= 0: all */
    float top_p;          /* nucleus: smallest set with probability >= top_p; >= 1: off */
    float min_p;          /* drop tokens with p < min_p * p_max; <= 0: off */
    float repeat_penalty; /* CTRL-style penalty on the last repeat_last_n tokens; 1: off */
    int32_t repeat_last_n;/* history length for the penalty; 0: off */
    uint64_t seed;        /* same seed, same logits: same tokens */
} moecl_sampler_params;

/* temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.0,
 * repeat_last_n 64, seed 0x5EED. */
MOECL_API moecl_sampler_params moecl_sampler_default_params(void);

/* params may be NULL for the defaults. */
MOECL_API moecl_status moecl_sampler_new(const moecl_sampler_params *params, moecl_sampler **out);

/* NULL: no-op. */
MOECL_API void moecl_sampler_free(moecl_sampler *sampler);

/* Record a token in the history used by the repetition penalty (call it for
 * prompt tokens; sampled tokens are recorded by moecl_sampler_sample). */
MOECL_API void moecl_sampler_accept(moecl_sampler *sampler, int32_t token);

/* Choose the next token from n_vocab logits (not modified) and record it.
 * Stages in order: repetition penalty, top-k, temperature, softmax, top-p,
 * min-p, random draw. */
MOECL_API moecl_status moecl_sampler_sample(moecl_sampler *sampler, const float *logits, int32_t n_vocab,
                                            int32_t *out_token);

/* Forget the history and restart the random stream from the seed. */
MOECL_API void moecl_sampler_reset(moecl_sampler *sampler);

/* ------------------------------------------------------------------------ */
/* Writing random models (benchmarks, tests, the default model)             */
/* ------------------------------------------------------------------------ */

typedef struct moecl_random_model_params {
    int32_t n_vocab, n_embd, n_ff, n_layer, n_head, n_head_kv, head_dim; /* head_dim 0: n_embd / n_head */
    int32_t n_expert, n_expert_used, n_ctx_train;  /* n_ff: one routed expert's FFN width */
    float rope_theta, rms_norm_eps;
    moecl_dtype dtype;    /* F32, F16 or BF16 */
    uint64_t seed;
    /* The family and its options. */
    const char *arch;       /* "mixtral" (or NULL), "qwen3moe", "qwen2moe", "olmoe" (moecl info's names) */
    int32_t n_dense_layers; /* the first N layers have a dense FFN (mlp_only_layers; qwen2moe, qwen3moe only) */
    int32_t n_ff_dense;     /* their FFN width; 0: n_ff * n_expert_used */
    int32_t n_ff_shexp;     /* qwen2moe: the shared expert's FFN width; 0: n_ff * n_expert_used */
    int32_t norm_topk;      /* renormalise the top-k router weights: 1 yes, 0 no, -1 the family's usual
                             * choice (mixtral and qwen3moe yes; qwen2moe and olmoe no; mixtral has only yes) */
    int32_t bos_id, eos_id; /* config.json's bos_token_id / eos_token_id; -1: not written */
} moecl_random_model_params;

/* The "mixtral-mini" shape: vocab 32000, hidden 1024, 8 layers, 16 heads,
 * 4 kv heads, 8 experts, top-2, intermediate 3584, F32; arch NULL
 * (Mixtral), no dense layers, norm_topk -1, bos 1, eos 2. */
MOECL_API moecl_random_model_params moecl_random_model_default_params(void);

/* Write a Hugging Face model directory of the family params->arch names
 * (config.json, model.safetensors; the tensor names and config keys of the
 * family's transformers class) with deterministic random weights at dir
 * (created if missing). The config says the weights are random; no
 * tokenizer is written. A shape the family cannot have (dense layers in
 * Mixtral or OLMoE, OLMoE with head_dim != n_embd / n_head) is
 * MOECL_ERR_INVALID_ARG. progress may be NULL. */
MOECL_API moecl_status moecl_random_model_write(const char *dir, const moecl_random_model_params *params,
                                                moecl_progress_fn progress, void *progress_user_data);

/* ------------------------------------------------------------------------ */
/* Quantizing                                                               */
/* ------------------------------------------------------------------------ */

typedef struct moecl_quantize_params {
    /* The file type, as llama.cpp's llama-quantize names them:
     *   "f32", "f16", "bf16", "q8_0", "q4_0"   every matrix in that type
     *   "q4_K_S", "q4_K_M", "q5_K_S", "q5_K_M", "q6_K"
     *                      the K-quant recipes: llama.cpp's choice of which
     *                      tensors get more bits (output, attn_v, attn_k,
     *                      attn_output, ffn_down by layer)
     *   "q4_K", "q5_K"     every matrix in that type (llama-quantize --pure)
     * Norms and the router stay F32. A matrix whose rows are not whole
     * blocks of the chosen type falls back to Q8_0, then F16. */
    const char *type;
    int n_threads;              /* 0: the physical (performance) cores */
    bool allow_requantize;      /* quantize weights that already are (loses accuracy; to "f32",
                                   which is lossless, allowed without it) */
    moecl_progress_fn progress; /* NULL: none; called at least every 256 rows written (0 while loading
                                   the input); returning false cancels: MOECL_ERR_ABORTED, nothing
                                   written. A CLI's signal handler can set a flag this returns. */
    void *progress_user_data;
} moecl_quantize_params;

MOECL_API moecl_quantize_params moecl_quantize_default_params(void);

/* Write the model at in_path (a Hugging Face directory or a GGUF file) as a
 * GGUF file at out_path in llama.cpp's layout (architecture "llama", stacked
 * expert tensors, Q and K rows permuted for its RoPE, the tokenizer as
 * tokenizer.ggml.* metadata), so llama.cpp loads it too. The file is written
 * under a new temporary name beside out_path (never following a symlink) and
 * renamed when complete: on any failure, cancellation included, out_path is
 * left as it was and the temporary file is removed. If another process
 * writes out_path meanwhile, the later of the two to finish fails
 * (MOECL_ERR_IO) and leaves the other's file. MOECL_ERR_INVALID_ARG, before
 * any work, when out_path is a directory or is the input file, or one of the
 * input directory's *.json and *.safetensors files, under any name (symlink,
 * hard link). */
MOECL_API moecl_status moecl_quantize(const char *in_path, const char *out_path, const moecl_quantize_params *params);

/* ------------------------------------------------------------------------ */
/* Tokenizer                                                                */
/* ------------------------------------------------------------------------ */

/* A Hugging Face tokenizer.json BPE tokenizer of one of two kinds: the
 * Llama/Mistral kind (Mixtral's), with byte fallback, SentencePiece-style
 * spaces ("▁"), added and special tokens; or byte-level BPE (GPT-2, Qwen2/
 * Qwen3, OLMoE/GPT-NeoX, Llama 3): NFC, ByteLevel/Split/Digits
 * pre-tokenizers (regexes matched with PCRE2), ByteLevel decoder. The ids
 * are those Hugging Face tokenizers gives. Other kinds (WordPiece, Unigram,
 * ...) are refused with MOECL_ERR_UNSUPPORTED rather than tokenized
 * differently.
 *
 * Thread safety: a moecl_tokenizer is read-only once loaded and may be used
 * from any number of threads at once. A moecl_detokenizer must be used by
 * one thread at a time. */
typedef struct moecl_tokenizer moecl_tokenizer;

/* Load a tokenizer. path is a tokenizer.json file, or a directory holding
 * tokenizer.json and, optionally, tokenizer_config.json (bos_token,
 * eos_token, add_bos_token, chat_template) and generation_config.json
 * (bos_token_id, eos_token_id), which are read when present, or a GGUF file
 * (its tokenizer.ggml.* metadata, SentencePiece-style "llama" vocabularies:
 * merged by tokenizer.ggml.merges when present, else by score as llama.cpp
 * does; byte-level "gpt2" ones with the pre-tokenizer tokenizer.ggml.pre
 * names: gpt-2, olmo, qwen2, llama-bpe, deepseek-llm; a GGUF without a
 * tokenizer is MOECL_ERR_FORMAT, another tokenizer model or pre-tokenizer
 * MOECL_ERR_UNSUPPORTED). On success *out
 * owns the tokenizer (free with moecl_tokenizer_free); on failure *out is
 * NULL and moecl_last_error() names the file and problem: MOECL_ERR_IO (no
 * file), MOECL_ERR_FORMAT (not JSON, a missing or mistyped field, a merge
 * naming an unknown token, duplicate ids, byte_fallback without the 256
 * <0xXX> tokens), MOECL_ERR_UNSUPPORTED (another tokenizer kind).
 * Thread-safe. */
MOECL_API moecl_status moecl_tokenizer_load(const char *path, moecl_tokenizer **out);

/* NULL: no-op. Not for the tokenizer of a model (moecl_model_get_tokenizer). */
MOECL_API void moecl_tokenizer_free(moecl_tokenizer *tok);

/* The tokenizer loaded with a model from its directory's tokenizer.json, or
 * NULL if the directory has none (or model is NULL). Owned by the model:
 * valid until moecl_model_free; do not free it. */
MOECL_API const moecl_tokenizer *moecl_model_get_tokenizer(const moecl_model *model);

/* Number of ids (0 for NULL); the BOS and EOS ids (-1 if none or NULL). */
MOECL_API int32_t moecl_tokenizer_n_vocab(const moecl_tokenizer *tok);
MOECL_API int32_t moecl_tokenizer_bos_id(const moecl_tokenizer *tok);
MOECL_API int32_t moecl_tokenizer_eos_id(const moecl_tokenizer *tok);

/* Flags of moecl_tokenize. */
#define MOECL_TOKENIZE_NO_BOS        1u /* do not add BOS (or EOS) even if the tokenizer's config says to */
#define MOECL_TOKENIZE_PARSE_SPECIAL 2u /* special-token strings in the text ("<s>") become their ids;
                                           without it they are plain text like any other */

/* Tokenize text[0..len) (UTF-8; NUL bytes are text too; text may be NULL if
 * len is 0). BOS is added first when the tokenizer's config says so (the
 * Mistral/Mixtral tokenizers do) unless flags has MOECL_TOKENIZE_NO_BOS.
 * Bytes that are not well-formed UTF-8 are not an error: each such byte
 * becomes its byte token (<0xXX>, or in a byte-level vocabulary the token of
 * its character, a piece of its own) and decodes back to the same byte.
 *
 * Buffer rule: on MOECL_OK, tokens[0..*n_tokens) hold the ids. *n_tokens is
 * always set to the number of ids the text needs (0 on other errors). If
 * tokens is NULL (n_max must then be 0) nothing is written and MOECL_OK is
 * returned: that is how to ask for the count. If n_max is smaller than the
 * count, MOECL_ERR_INVALID_ARG is returned and tokens is left unspecified:
 * call again with a buffer of *n_tokens. Time is O(n log n) in the length
 * of the text. Thread-safe. */
MOECL_API moecl_status moecl_tokenize(const moecl_tokenizer *tok, const char *text, size_t len, uint32_t flags,
                                      int32_t *tokens, int32_t n_max, int32_t *n_tokens);

/* The vocabulary string of a token ("▁Hello", "<0x0A>", "<s>"), NUL-
 * terminated; NULL if id is out of range or tok NULL. Owned by tok. */
MOECL_API const char *moecl_token_text(const moecl_tokenizer *tok, int32_t id);

/* The bytes a token stands for as text (" Hello", "\n" for <0x0A>, "<s>"),
 * *len of them (a byte token may be "\0"; the string is also NUL-
 * terminated). A byte token alone may be part of a multi-byte character.
 * NULL (and *len 0) if id is out of range. len may be NULL. Owned by tok. */
MOECL_API const char *moecl_token_to_piece(const moecl_tokenizer *tok, int32_t id, size_t *len);

/* Whether id is a special token (<s>, </s>, <unk>, ...). false if out of range. */
MOECL_API bool moecl_token_is_special(const moecl_tokenizer *tok, int32_t id);

/* Flags of moecl_detokenize and moecl_detokenizer_new. */
#define MOECL_DETOKENIZE_SKIP_SPECIAL       1u /* special tokens produce no text */
#define MOECL_DETOKENIZE_KEEP_LEADING_SPACE 2u /* keep the space the decoder drops at the start ("▁Hello" -> " Hello") */

/* Ids to text: the pieces concatenated, then the leading space the
 * tokenizer's decoder strips removed (so detokenize(tokenize(x)) == x for
 * valid UTF-8 without "▁"). Bytes are returned as they are, not repaired:
 * byte tokens that do not form UTF-8 give those bytes back.
 *
 * Buffer rule: *len is set to the text's length in bytes (without the NUL).
 * text NULL with cap 0 asks for the length (MOECL_OK). If cap < *len + 1,
 * MOECL_ERR_INVALID_ARG and text is left unspecified; otherwise text holds
 * the NUL-terminated text. An id out of range is MOECL_ERR_INVALID_ARG.
 * Thread-safe. */
MOECL_API moecl_status moecl_detokenize(const moecl_tokenizer *tok, const int32_t *ids, int32_t n_ids, uint32_t flags,
                                        char *text, size_t cap, size_t *len);

/* Streaming detokenization, one token at a time as they are generated: each
 * push returns only complete UTF-8 characters, holding back the start of a
 * character whose bytes are split over tokens until it is whole. What all
 * pushes and the final flush return, concatenated, equals moecl_detokenize
 * of all the ids with the same flags. */
typedef struct moecl_detokenizer moecl_detokenizer;

/* tok must outlive the detokenizer. */
MOECL_API moecl_status moecl_detokenizer_new(const moecl_tokenizer *tok, uint32_t flags, moecl_detokenizer **out);

/* NULL: no-op. */
MOECL_API void moecl_detokenizer_free(moecl_detokenizer *detok);

/* Add a token. *text receives the bytes now ready (NUL-terminated, *len of
 * them, possibly none), owned by detok and valid until its next call. A
 * byte that can no longer become part of a well-formed character is
 * passed through as it is. */
MOECL_API moecl_status moecl_detokenizer_push(moecl_detokenizer *detok, int32_t id, const char **text, size_t *len);

/* The bytes still held back (an incomplete character at the end of the
 * stream), as moecl_detokenizer_push returns them; the detokenizer is then
 * empty but keeps its place (no leading space is stripped again). */
MOECL_API moecl_status moecl_detokenizer_flush(moecl_detokenizer *detok, const char **text, size_t *len);

/* Start over as if new (drops held bytes; the next text's leading space is
 * stripped again). NULL: no-op. */
MOECL_API void moecl_detokenizer_reset(moecl_detokenizer *detok);

/* Chat: the Mixtral-Instruct format, and the formats of other families below. */
typedef struct moecl_chat_message {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* UTF-8, NUL-terminated; plain text ("[INST]" in it stays text) */
} moecl_chat_message;

#define MOECL_CHAT_NO_BOS   1u /* a continuation: for appending later turns to a conversation already decoded,
                                    whose last reply ended with the end-of-turn (EOS) token: no <s> (Mistral), no
                                    default system message, and what the format puts after that token ("\n") first */
#define MOECL_CHAT_NO_THINK 2u /* qwen3: an empty <think></think> after the generation prompt (transformers'
                                    enable_thinking=False), so the model answers without reasoning first */

/* Tokenize a conversation for Mixtral-Instruct exactly as mistral-common's
 * v1 instruct tokenizer does (the reference for Mixtral 8x7B Instruct):
 *
 *   <s>[INST] {system}\n\n{user 1} [/INST]{assistant 1}</s>[INST] {user 2} [/INST]
 *
 * where each user turn "[INST] ... [/INST]" and each assistant reply is
 * tokenized on its own (so each starts with "▁"), and <s>, </s> are the
 * special ids.
 * System messages, wherever they are, are joined by "\n\n" and put before
 * the first user message; consecutive messages of one role are joined by
 * "\n\n". After that the conversation must start and end with a user
 * message (MOECL_ERR_INVALID_ARG otherwise, or for an unknown role); the
 * model's reply follows the returned ids. tokenizer_config.json's
 * chat_template is not interpreted: this is the format for Mistral/Mixtral
 * vocabularies. Buffer rule, flags and thread safety as moecl_tokenize. */
MOECL_API moecl_status moecl_chat_tokenize(const moecl_tokenizer *tok, const moecl_chat_message *messages,
                                           int32_t n_messages, uint32_t flags, int32_t *tokens, int32_t n_max,
                                           int32_t *n_tokens);


/* ------------------------------------------------------------------------ */
/* Engine: concurrent requests sharing every decode step                    */
/* ------------------------------------------------------------------------ */

/* An engine runs many generations at once on one model. It owns one
 * context with n_slots sequences and one scheduler thread. Each step the
 * scheduler builds one moecl_decode_batch of at most n_batch tokens: one
 * token of every generating request, then chunks of the prompts still being
 * read (chunked prefill, oldest first), so a long prompt never stalls the
 * others and every expert's weights are read once for all of them.
 *
 * Requests wait in a bounded FIFO queue until a slot is free. A slot keeps
 * the tokens of its last request in its KV cache after that request ends;
 * a new request goes to the free slot whose cache shares the longest prefix
 * with its prompt, and only the rest of the prompt is read ("prefix reuse":
 * a multi-turn chat does not read its history again). Across slots, the
 * KV blocks (16 positions) at the start of a prompt that any slot, running
 * or idle, already holds with the same tokens from position 0 are shared,
 * not read again (a common system prompt, a chat moved to another slot):
 * several slots then reference the same memory, which is copied only when
 * one of them writes into a block the others hold, and freed when the last
 * one lets go.
 *
 * Memory: the slots share the context's KV pool (context.n_kv_cells cells,
 * default n_slots x n_ctx; context.kv_type F32 or F16), which is allocated
 * as sequences grow, not reserved up front. A queued request takes a slot
 * only when the pool can hold its whole prompt (counting the cells idle
 * slots keep for prefix reuse, which are freed when needed); until then it
 * waits in the queue, and the requests behind it too. When a step's tokens
 * do not fit, idle slots' caches are freed first (least recently used
 * first), then prompt chunks wait for a later step (newest first), then the
 * newest request is preempted, as vLLM does: its blocks are freed and it
 * goes back to the head of the queue with its prompt and the tokens it has
 * generated, which are read again when the pool has room. Its events carry
 * on where they stopped (no text repeated or lost) and its tokens are those
 * it would have produced alone. Only a request the pool cannot hold even
 * alone ends, with MOECL_FINISH_LENGTH, status MOECL_ERR_CONTEXT_FULL and a
 * message saying so.
 *
 * Thread safety: moecl_engine_submit, moecl_engine_cancel,
 * moecl_engine_get_stats and moecl_engine_get_routing_counts may be called
 * from any thread at any time, including from inside an event callback. moecl_engine_free must not be
 * called from a callback or concurrently with the other calls. */
typedef struct moecl_engine moecl_engine;

typedef struct moecl_engine_params {
    int32_t n_slots;  /* sequences decoded together; 0: 4 */
    int32_t n_ctx;    /* positions per slot (prompt + generated); 0: min(n_ctx_train, 4096) */
    int32_t n_batch;  /* token budget of one step (generating slots + prompt chunks); 0: 512;
                         raised to n_slots if smaller */
    int32_t n_queue;  /* most requests waiting for a slot; 0: 64 */
    moecl_context_params context; /* threads, backend, device options as for moecl_context_new;
                                     its n_ctx, n_batch, n_seq_max, logits_all and abort callback are
                                     set by the engine */
} moecl_engine_params;

/* 4 slots, n_ctx 0 (the model's), budget 512, queue 64, default context params. */
MOECL_API moecl_engine_params moecl_engine_default_params(void);

/* Why a request ended. */
typedef enum moecl_finish_reason {
    MOECL_FINISH_NONE = 0,      /* not finished: more events follow */
    MOECL_FINISH_STOP = 1,      /* a stop id (EOS included) or a stop string */
    MOECL_FINISH_LENGTH = 2,    /* max_tokens generated, or the slot's context is full, or the KV pool
                                   cannot hold the request even alone (status MOECL_ERR_CONTEXT_FULL) */
    MOECL_FINISH_CANCELLED = 3, /* moecl_engine_cancel, or the engine was freed */
    MOECL_FINISH_ERROR = 4,     /* decoding failed; see the event's status and error */
} moecl_finish_reason;

/* Static name: "none", "stop", "length", "cancelled", "error"; "?" if out of range. */
MOECL_API const char *moecl_finish_reason_str(moecl_finish_reason reason);

typedef struct moecl_engine_usage {
    int32_t prompt_tokens;        /* tokens of the prompt (after chat rendering) */
    int32_t cached_prompt_tokens; /* of those, how many were reused from a slot's cache or blocks shared
                                     with other slots, not read again */
    int32_t completion_tokens;    /* tokens generated so far */
} moecl_engine_usage;

/* One event of a request, passed to its callback. */
typedef struct moecl_engine_event {
    uint64_t request_id;
    int32_t token;        /* the token generated by this step; -1 when the event has none (cancelled,
                             error, a prompt that ended before any token) */
    const char *text;     /* text now ready, text_len bytes (NUL-terminated, possibly empty): whole UTF-8
                             characters, never text that may still become part of a stop string, nothing
                             from special tokens, nothing after a stop string. Concatenated over the
                             events of a request it is the completion. Never NULL. Owned by the engine,
                             valid during the callback only. */
    size_t text_len;
    moecl_finish_reason finish; /* MOECL_FINISH_NONE except on the last event of the request */
    moecl_engine_usage usage;
    moecl_status status;  /* MOECL_OK, or the failure for MOECL_FINISH_ERROR, or
                             MOECL_ERR_CONTEXT_FULL for MOECL_FINISH_LENGTH when the KV pool ended it */
    const char *error;    /* the failure's message when status is not MOECL_OK, else ""; valid during
                             the callback only */
} moecl_engine_event;

/* Called on the engine's scheduler thread, in order, once per generated
 * token and always exactly once with finish != MOECL_FINISH_NONE (the
 * last call for that request; its user_data may be released then). It
 * holds up every other request while it runs: copy the text and return.
 * It may call moecl_engine_submit, moecl_engine_cancel and
 * moecl_engine_get_stats, not moecl_engine_free. */
typedef void (*moecl_engine_callback)(const moecl_engine_event *event, void *user_data);

/* A generation request. Everything is copied by moecl_engine_submit. */
typedef struct moecl_engine_request {
    /* The prompt: token ids, or chat messages rendered in the model's chat
     * format (moecl_chat_tokenize, with BOS). Exactly one of the two. */
    const int32_t *prompt;
    int32_t n_prompt;
    const moecl_chat_message *messages;
    int32_t n_messages;
    moecl_sampler_params sampling; /* as moecl_sampler_new; the prompt is accepted into the repetition
                                      history; seed included */
    int32_t max_tokens;            /* most tokens to generate; <= 0: until a stop or the context is full */
    const char *const *stop;       /* n_stop stop strings (NUL-terminated; empty ones ignored): the text
                                      ends before the first occurrence of any of them. Needs the model's
                                      tokenizer. */
    int32_t n_stop;
    const int32_t *stop_ids;       /* n_stop_ids token ids that end the generation (not shown as text) */
    int32_t n_stop_ids;
    bool ignore_eos;               /* false: the tokenizer's (else the model's) EOS id is also a stop id */
    moecl_engine_callback callback;/* required */
    void *user_data;
} moecl_engine_request;

/* Everything zero, sampling = moecl_sampler_default_params(). */
MOECL_API moecl_engine_request moecl_engine_default_request(void);

/* Create an engine for model (which must outlive it) and start its
 * scheduler thread. params may be NULL for the defaults. On success *out
 * owns the engine (free with moecl_engine_free). Errors: those of
 * moecl_context_new, MOECL_ERR_INVALID_ARG for a NULL model/out or a
 * negative parameter, MOECL_ERR_NOMEM, MOECL_ERR_BACKEND if the thread
 * cannot be started. Thread-safe with respect to the model. */
MOECL_API moecl_status moecl_engine_new(const moecl_model *model, const moecl_engine_params *params,
                                        moecl_engine **out);

/* Stop the scheduler and free the engine. Requests still queued or
 * running get their final event (MOECL_FINISH_CANCELLED) before it
 * returns; a step in progress is aborted between layers. NULL: no-op. */
MOECL_API void moecl_engine_free(moecl_engine *engine);

/* Queue a request. On MOECL_OK *id (may be NULL) receives its id (> 0) and
 * the callback will be called, from the scheduler thread, until its final
 * event. On any error nothing was queued and the callback is never called:
 *   MOECL_ERR_BUSY          the queue holds n_queue requests already
 *   MOECL_ERR_CONTEXT_FULL  the prompt has more than n_ctx tokens
 *   MOECL_ERR_INVALID_ARG   NULL engine/request/callback, an empty prompt, both or neither of prompt
 *                           and messages, a token id outside the vocabulary, a bad chat message,
 *                           messages or stop strings without a tokenizer, bad sampling params
 *   MOECL_ERR_NOMEM
 * moecl_last_error() says which. Thread-safe. */
MOECL_API moecl_status moecl_engine_submit(moecl_engine *engine, const moecl_engine_request *request,
                                           uint64_t *id);

/* Cancel a request, queued or running: it ends with MOECL_FINISH_CANCELLED
 * at the start of the next step and its slot is free for the next request.
 * MOECL_ERR_INVALID_ARG if engine is NULL or id is not a queued or running
 * request (already finished, or never submitted): harmless. Thread-safe,
 * also from a callback. */
MOECL_API moecl_status moecl_engine_cancel(moecl_engine *engine, uint64_t id);

/* Counters since the engine was created. */
typedef struct moecl_engine_stats {
    int32_t n_slots;
    int32_t n_ctx;               /* positions per slot */
    int32_t n_batch;             /* token budget per step */
    int32_t n_running;           /* requests in a slot (reading their prompt or generating) */
    int32_t n_queued;            /* requests waiting for a slot */
    uint64_t n_submitted, n_finished;
    uint64_t n_steps;            /* decode steps */
    uint64_t n_batch_tokens;     /* tokens decoded over all steps (prompt chunks + generated tokens fed back) */
    uint64_t n_prompt_tokens;    /* prompt tokens read (prefill) */
    uint64_t n_cached_tokens;    /* prompt tokens reused from a slot's cache or shared blocks instead
                                    (after a preemption, counted again when read back) */
    uint64_t n_generated_tokens; /* tokens sampled */
    int32_t last_batch_tokens;   /* tokens in the last step's batch */
    int32_t last_batch_seqs;     /* sequences in it */
    uint64_t batch_hist[17];     /* steps whose batch had 2^(i-1) < tokens <= 2^i (i = 0: one token;
                                    i = 16: more than 32768 too) */
    double step_seconds;         /* time spent in decode steps */
    /* The KV pool (see the Memory paragraph above). */
    int64_t kv_cells;            /* its budget */
    int64_t kv_cells_held;       /* cells in blocks the slots hold (running and idle) */
    uint64_t kv_bytes;           /* memory allocated for it */
    uint64_t n_kv_evicted;       /* idle slots' caches freed to make room */
    uint64_t n_kv_full;          /* requests ended with "length": the pool cannot hold them even alone */
    uint64_t n_preempted;        /* preemptions (a request preempted twice counts twice) */
    uint64_t n_shared_tokens;    /* of n_cached_tokens, those in blocks taken from other slots */
    int64_t kv_cells_shared;     /* cells in blocks more than one slot holds now (each block once) */
} moecl_engine_stats;

/* Fill *stats. MOECL_ERR_INVALID_ARG for a NULL argument. Thread-safe. */
MOECL_API moecl_status moecl_engine_get_stats(moecl_engine *engine, moecl_engine_stats *stats);

/* Tokens routed to each expert of each layer and the sum of their router
 * weights, over every step since the engine was created, as
 * moecl_context_get_routing_counts gives them for the engine's context
 * (layer-major, n >= n_layer * n_expert, either pointer may be NULL; the
 * engine keeps its counters on). Updated after each successful step.
 * MOECL_ERR_INVALID_ARG for a NULL engine or n too small. Thread-safe. */
MOECL_API moecl_status moecl_engine_get_routing_counts(moecl_engine *engine, uint64_t *tokens, double *weight_sum,
                                                       size_t n);

/* The tokenizer of the engine's model (NULL if it has none). Owned by the model. */
MOECL_API const moecl_tokenizer *moecl_engine_get_tokenizer(const moecl_engine *engine);

/* Chat formats other than Mixtral's, by name, each giving the ids that
 * transformers' apply_chat_template(messages, add_generation_prompt=True)
 * gives with the family's own template (so special-token strings written in
 * a message, "<|im_end|>", are special tokens there too, as in transformers):
 *
 *   "mistral"  Mixtral-Instruct, as moecl_chat_tokenize above.
 *   "chatml"   <|im_start|>{role}\n{content}<|im_end|>\n per message, then
 *              <|im_start|>assistant\n.
 *   "qwen2"    ChatML with "You are a helpful assistant." as the system
 *              message when the first message is not one (Qwen1.5/Qwen2,
 *              Qwen1.5-MoE and Qwen2-MoE Instruct).
 *   "qwen2.5"  the same with "You are Qwen, created by Alibaba Cloud. You are
 *              a helpful assistant." (Qwen2.5 Instruct).
 *   "qwen3"    Qwen3's template (Qwen3 and Qwen3-MoE): ChatML without a
 *              default system message; an assistant message before the last
 *              user message loses its <think>...</think> reasoning; one after
 *              it is written as <think>\n{reasoning}\n</think>\n\n{answer};
 *              MOECL_CHAT_NO_THINK adds the empty thinking block.
 *   "olmoe"    OLMoE-Instruct's (Tulu's): {bos}<|system|>\n...\n<|user|>\n
 *              ...\n<|assistant|>\n{reply}{eos}\n ... <|assistant|>\n.
 *
 * Roles are "system", "user" and "assistant" (others: MOECL_ERR_INVALID_ARG).
 * format NULL: the format moecl_chat_format(tok) names. An unknown name is
 * MOECL_ERR_INVALID_ARG; a format whose special tokens the vocabulary lacks
 * is MOECL_ERR_UNSUPPORTED. Buffer rule, flags and thread safety as
 * moecl_tokenize. */
MOECL_API moecl_status moecl_chat_tokenize_format(const moecl_tokenizer *tok, const char *format,
                                                  const moecl_chat_message *messages, int32_t n_messages,
                                                  uint32_t flags, int32_t *tokens, int32_t n_max, int32_t *n_tokens);

/* The name of the chat format above that tok's chat template
 * (tokenizer_config.json's or tokenizer.chat_template) is recognised as:
 * "mistral" also for a SentencePiece-style tokenizer without a template.
 * NULL (with moecl_last_error() saying why: no template, or one moecl does
 * not recognise) otherwise; the caller can then name a format. The string
 * is static. Thread-safe. */
MOECL_API const char *moecl_chat_format(const moecl_tokenizer *tok);

#ifdef __cplusplus
}
#endif

#endif /* MOECL_H */
