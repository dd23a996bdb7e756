/*
 * tokenizer.h - Hugging Face tokenizer.json BPE tokenizers of two kinds,
 * and the same from GGUF metadata. Internal to src/.
 *
 * SentencePiece-style (Llama/Mistral): BPE over UTF-8 characters with byte
 * fallback, whitespace as "▁", added/special tokens:
 *
 *   text ──split on added tokens──▶ segments ──normalize (prepend ▁,
 *   ' '→▁)──▶ words ──chars (or <0xXX> bytes)──▶ BPE merges by rank
 *   (a heap, O(n log n) per word) ──▶ ids
 *
 *   ids ──piece bytes (▁→' ', <0xXX>→byte)──▶ concatenation ──drop one
 *   leading ' '──▶ text
 *
 * Byte-level (GPT-2, Qwen, OLMoE, Llama 3): every byte is a symbol, spelled
 * in the vocabulary as one of 256 printable characters (GPT-2's map):
 *
 *   text ──split on added tokens──▶ segments ──NFC (utf8proc)──▶ split on
 *   normalized added tokens ──pre-tokenizer regexes (PCRE2)──▶ pieces
 *   ──bytes──▶ BPE merges by rank ──▶ ids
 *
 *   ids ──piece bytes (each character mapped back to its byte)──▶ text
 */
#ifndef MOECL_TOKENIZER_H
#define MOECL_TOKENIZER_H

#include "internal.h"

#include <stdbool.h>

enum mc_tok_kind {
    MC_TOK_NORMAL = 0,
    MC_TOK_BYTE = 1,    /* <0xXX>: stands for one raw byte */
    MC_TOK_SPECIAL = 2, /* an added token with "special": true (<s>, </s>, <unk>) */
    MC_TOK_ADDED = 3,   /* an added token that is not special */
    MC_TOK_UNUSED = 4,  /* an id no string names (a gap) */
};

typedef struct mc_token {
    char *text;        /* the vocabulary string, NUL-terminated ("▁Hello", "<0x41>") */
    uint32_t len;      /* bytes of text */
    uint8_t kind;      /* enum mc_tok_kind */
    uint8_t byte;      /* MC_TOK_BYTE: the byte */
    uint8_t normalized; /* an added token matched in the normalized text (byte-level only) */
    char *piece;       /* decoded bytes, NUL-terminated (" Hello", "A") */
    uint32_t piece_len;
} mc_token;

/* One step of the normalizer / pre-tokenizer chain, applied in order. */
enum mc_norm_op { MC_NORM_PREPEND, MC_NORM_REPLACE, MC_NORM_METASPACE };
typedef struct mc_norm_step {
    int op;
    char *a, *b;           /* PREPEND: a; REPLACE: a -> b; METASPACE: a = replacement */
    int prepend_scheme;    /* METASPACE: 0 never, 1 always, 2 first */
    bool split;            /* METASPACE: split into words before each replacement */
} mc_norm_step;

/* One regex split of a byte-level pre-tokenizer: HF's "Split", or the
 * GPT-2 regex of "ByteLevel" with use_regex (bytelevel.c). */
enum mc_split_behavior {
    MC_SPLIT_ISOLATED,
    MC_SPLIT_REMOVED,
    MC_SPLIT_MERGED_PREV,
    MC_SPLIT_MERGED_NEXT,
    MC_SPLIT_CONTIGUOUS,
};
typedef struct mc_pretok_split {
    char *pattern;         /* as written in tokenizer.json (NUL-terminated) */
    bool literal;          /* a {"String": ...} pattern: matched as is */
    bool invert;           /* the pieces between matches are the matches */
    int behavior;          /* enum mc_split_behavior */
    void *code;            /* pcre2_code_8 *, JIT-compiled where possible */
} mc_pretok_split;

typedef struct mc_pair_slot {
    uint64_t key;          /* (left << 32) | right, UINT64_MAX: empty */
    int32_t rank;
    int32_t result;
} mc_pair_slot;

struct moecl_tokenizer {
    char *path;                 /* for messages */
    int32_t n_vocab;            /* ids are 0..n_vocab-1 */
    mc_token *tokens;           /* [n_vocab] */
    int32_t *str_table;         /* open addressing: vocabulary string -> id, -1 empty */
    size_t str_mask;
    mc_pair_slot *pairs;        /* open addressing: (left, right) -> rank, result */
    size_t pair_mask;
    int32_t n_merges;
    int32_t byte_id[256];       /* <0xXX> ids, -1 if absent */
    int32_t ascii_id[128];      /* single-byte characters, -1 if not in the vocabulary */
    bool byte_fallback, fuse_unk;
    int32_t unk_id;             /* -1: none */

    mc_norm_step *norm;         /* the normalizer, then the pre-tokenizer */
    int n_norm;

    /* Where no vocabulary token has this string ("▁") after other text, BPE
     * can never merge across "x▁", so a word is cut there into independent
     * pieces: the same ids, and short words that stay in cache. NULL: off. */
    char *word_split;

    int32_t *added;             /* ids of added tokens, longest first */
    int n_added;
    bool added_first[256];      /* bytes some added token starts with */
    bool has_nonspecial_added;

    /* decoder */
    bool dec_metaspace;         /* piece: replacement -> ' ' */
    bool dec_byte_level;        /* piece: each character -> its byte (GPT-2's map) */
    char *dec_replacement;
    int dec_strip_left;         /* leading ' ' removed from the whole text */

    /* byte-level BPE (all false/NULL for SentencePiece-style vocabularies) */
    bool byte_level;
    bool nfc;                   /* NFC normalizer */
    bool bl_prefix_space;       /* ByteLevel add_prefix_space: ' ' before each segment not starting with one */
    bool ignore_merges;         /* a whole piece in the vocabulary is one token, merges or not */
    mc_pretok_split *splits;    /* the pre-tokenizer's regexes, applied in order */
    int n_splits;
    int32_t bl_byte_id[256];    /* the one-character token of each byte, -1 if absent */
    char *pre_name;             /* llama.cpp's tokenizer.ggml.pre for this pre-tokenizer, NULL: none matches */

    int32_t bos_id, eos_id;     /* -1: none */
    int32_t pad_id;             /* -1: none */
    bool add_bos, add_eos;
    char *chat_template;        /* tokenizer_config.json's, NULL if none */
};

/* A growable list of ids. */
typedef struct mc_ids {
    int32_t *v;
    size_t n, cap;
} mc_ids;

moecl_status mc_ids_push(mc_ids *ids, int32_t id);

/* Length of the well-formed UTF-8 sequence at s[0..n), or 0 if s[0] does not
 * start one (RFC 3629: no overlongs, no surrogates, nothing past U+10FFFF). */
int mc_utf8_len(const uint8_t *s, size_t n);

/* Parse tokenizer.json text (NUL-terminated at len); path names it in
 * messages. Fills everything but bos/eos, which the caller settles. */
moecl_status mc_tokenizer_parse(const char *path, const char *text, size_t len, moecl_tokenizer **out);

/* Settle bos/eos/add_bos from the tokenizer itself and, where the files
 * exist, dir's tokenizer_config.json and generation_config.json (dir NULL:
 * none). */
moecl_status mc_tokenizer_read_configs(moecl_tokenizer *tok, const char *dir);

/* Look a vocabulary string up; -1 if absent. */
int32_t mc_tokenizer_find(const moecl_tokenizer *tok, const char *s, size_t len);

/* Append the ids of text[0..len) to out (no BOS/EOS). parse_special:
 * special-token strings in the text become their ids. */
moecl_status mc_tokenizer_encode(const moecl_tokenizer *tok, const char *text, size_t len, bool parse_special,
                                 mc_ids *out);

/* Building blocks the loaders share (tokenizer_load.c). alloc_vocab: the
 * n_vocab tokens (zeroed) and an empty string table; str_insert: index
 * tokens[id] by its text, returning the id already there or -1;
 * alloc_pairs: an empty merge table for up to n pairs; pair_insert: add a
 * merge (a repeated pair keeps its first rank); byte_token: "<0xXX>"'s byte;
 * finish: the added-token list, word_split and every token's piece, once
 * tokens, kinds, byte_fallback and the normalizer/decoder are settled. */
moecl_status mc_tokenizer_alloc_vocab(moecl_tokenizer *tok, int32_t n_vocab);
int32_t mc_tokenizer_str_insert(moecl_tokenizer *tok, int32_t id);
moecl_status mc_tokenizer_alloc_pairs(moecl_tokenizer *tok, size_t n);
void mc_tokenizer_pair_insert(moecl_tokenizer *tok, int32_t left, int32_t right, int32_t rank, int32_t result);
bool mc_tokenizer_byte_token(const char *s, size_t len, uint8_t *out);
moecl_status mc_tokenizer_finish(moecl_tokenizer *tok);

/* The model loader's hook: dir's tokenizer.json (with its configs) into
 * *out, or *out NULL when the file is absent. A malformed one is an error. */
moecl_status mc_tokenizer_load_dir_optional(const char *dir, moecl_tokenizer **out);

/* The tokenizer in a GGUF file's tokenizer.ggml.* metadata into *out, or
 * *out NULL when the file has none (src/tokenizer/tokenizer_gguf.c). */
struct mc_gguf;
moecl_status mc_tokenizer_from_gguf(const struct mc_gguf *g, moecl_tokenizer **out);
/* The same with a progress callback, polled while the merge table is built
 * from scores (returning false cancels: MOECL_ERR_ABORTED); the fraction
 * reported is 0, the tensors coming later. *work (may be NULL) gets the
 * trie steps taken, which the tests bound by the vocabulary's bytes. */
moecl_status mc_tokenizer_from_gguf_ex(const struct mc_gguf *g, moecl_progress_fn progress, void *progress_user,
                                       uint64_t *work, moecl_tokenizer **out);
/* The same from a GGUF file's path (moecl_tokenizer_load's GGUF case); a
 * file without a tokenizer is MOECL_ERR_FORMAT. */
moecl_status mc_tokenizer_load_gguf(const char *path, moecl_tokenizer **out);

/* The tokenizer as tokenizer.ggml.* metadata of a GGUF being written, as
 * llama.cpp writes a SentencePiece-style vocabulary (tokenizer_gguf_write.c). */
struct mc_gguf_writer;
moecl_status mc_tokenizer_write_gguf(const moecl_tokenizer *tok, struct mc_gguf_writer *w);
/* The same with n_total tokens at least: the ids past the tokenizer's up to
 * a model's vocab_size as unused placeholders ("[PAD<id>]"), as llama.cpp's
 * converter pads them, since llama.cpp sizes the embedding by the token
 * count (Qwen3's 151,669 tokens, vocab_size 151,936). */
moecl_status mc_tokenizer_write_gguf_n(const moecl_tokenizer *tok, struct mc_gguf_writer *w, int32_t n_total);

/* ------------------------------------------------------------------------ */
/* Byte-level BPE (bytelevel.c)                                             */
/* ------------------------------------------------------------------------ */

/* GPT-2's map: the code point that spells byte b in a vocabulary, and back
 * (-1: not a byte's character). */
uint32_t mc_bl_byte_char(uint8_t b);
int mc_bl_char_byte(uint32_t cp);

/* Compile s->pattern (sets s->code); path names the file in messages. */
moecl_status mc_pretok_compile(const char *path, mc_pretok_split *s);
void mc_pretok_free(mc_pretok_split *s);

/* A named pre-tokenizer as llama.cpp knows it (tokenizer.ggml.pre): the
 * regexes, whether NFC comes first and whether merges are ignored, taken
 * from the families' tokenizer.json files. NULL if the name is unknown. */
typedef struct mc_named_pretok {
    const char *name;
    const char *const *regex; /* NULL-terminated, each an Isolated split */
    bool nfc, ignore_merges;
} mc_named_pretok;
const mc_named_pretok *mc_pretok_by_name(const char *name, size_t len);
/* The names, for messages ("gpt-2, olmo, ..."). */
const char *mc_pretok_names(void);

/* Set tok's byte-level pre-tokenizer to a named one (GGUF). */
moecl_status mc_tokenizer_set_named_pretok(moecl_tokenizer *tok, const mc_named_pretok *np);
/* After loading a tokenizer.json: the llama.cpp name of tok's pre-tokenizer,
 * if one has exactly the same regexes, normalizer and merge rule. */
moecl_status mc_tokenizer_name_pretok(moecl_tokenizer *tok);
/* bl_byte_id from the vocabulary. */
void mc_tokenizer_bl_bytes(moecl_tokenizer *tok);

/* Pieces of a byte-level pre-tokenization: [start, end) into the text. */
typedef struct mc_span {
    size_t start, end;
    bool match;            /* while splitting: a regex match (not a gap) */
} mc_span;
typedef struct mc_spans {
    mc_span *v;
    size_t n, cap;
} mc_spans;

/* Split text[0..n) (valid UTF-8) by tok's pre-tokenizer regexes into *out
 * (emptied first); tmp is scratch the caller frees. */
moecl_status mc_pretok_split_text(const moecl_tokenizer *tok, const char *text, size_t n, mc_spans *out, mc_spans *tmp);

/* NFC of text[0..n) (valid UTF-8) into *out (malloc'd, NUL-terminated), or
 * *out NULL when the text is already NFC (ASCII, for one). */
moecl_status mc_nfc(const char *text, size_t n, char **out, size_t *out_len);

#endif
