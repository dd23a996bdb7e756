/*
 * quant.h - GGUF's quantized block formats: layouts, dequantization,
 * quantization, and the fused dequantize-and-dot kernels of the CPU backend.
 *
 * Layouts are exactly those of the GGUF files llama.cpp writes (little-endian,
 * packed, no padding); a row of n weights is n / block consecutive blocks.
 *
 *   Q8_0  32 weights  34 bytes   d (f16); qs[32] int8            w = d * q
 *   Q4_0  32 weights  18 bytes   d (f16); qs[16] nibbles          w = d * (q - 8)
 *          weight j < 16 is the low nibble of qs[j], weight j + 16 its high nibble
 *   Q4_K 256 weights 144 bytes   d, dmin (f16); scales[12]: eight 6-bit scales
 *          and eight 6-bit mins; qs[128] nibbles     w = d*sc[s] * q - dmin*m[s]
 *   Q5_K 256 weights 176 bytes   as Q4_K, plus qh[32]: the fifth bit
 *   Q6_K 256 weights 210 bytes   ql[128] low nibbles, qh[64] high 2 bits,
 *          scales[16] int8, d (f16)                   w = d * sc[s] * (q - 32)
 */
#ifndef MOECL_QUANT_H
#define MOECL_QUANT_H

#include "internal.h"

#define MC_QK8_0 32
#define MC_QK4_0 32
#define MC_QK_K 256
#define MC_K_SCALE_SIZE 12

typedef struct mc_block_q8_0 {
    uint16_t d;
    int8_t qs[MC_QK8_0];
} mc_block_q8_0;

typedef struct mc_block_q4_0 {
    uint16_t d;
    uint8_t qs[MC_QK4_0 / 2];
} mc_block_q4_0;

typedef struct mc_block_q4_K {
    uint16_t d, dmin;
    uint8_t scales[MC_K_SCALE_SIZE];
    uint8_t qs[MC_QK_K / 2];
} mc_block_q4_K;

typedef struct mc_block_q5_K {
    uint16_t d, dmin;
    uint8_t scales[MC_K_SCALE_SIZE];
    uint8_t qh[MC_QK_K / 8];
    uint8_t qs[MC_QK_K / 2];
} mc_block_q5_K;

typedef struct mc_block_q6_K {
    uint8_t ql[MC_QK_K / 2];
    uint8_t qh[MC_QK_K / 4];
    int8_t scales[MC_QK_K / 16];
    uint16_t d;
} mc_block_q6_K;

_Static_assert(sizeof(mc_block_q8_0) == 34, "q8_0 block");
_Static_assert(sizeof(mc_block_q4_0) == 18, "q4_0 block");
_Static_assert(sizeof(mc_block_q4_K) == 144, "q4_K block");
_Static_assert(sizeof(mc_block_q5_K) == 176, "q5_K block");
_Static_assert(sizeof(mc_block_q6_K) == 210, "q6_K block");

/* dst[0..n) = the n weights at src, for every moecl_dtype (the float types
 * too). n must be a whole number of blocks. Bit-exact with gguf.quants. */
void mc_dequantize_row(moecl_dtype t, const void *src, float *dst, int64_t n);

/* Quantize n floats (a whole number of blocks) into dst, for every
 * moecl_dtype (F16/BF16 round to nearest even). The K-quants search scales
 * and mins per sub-block as llama.cpp's reference quantizers do. */
void mc_quantize_row(moecl_dtype t, const float *src, void *dst, int64_t n);

/*
 * Scale and min of sub-block j (0..7) from the 12 scale bytes of a Q4_K or
 * Q5_K block: eight 6-bit scales (A..H) and eight 6-bit mins (a..h):
 *
 *   byte  0..3   EEAAAAAA FFBBBBBB GGCCCCCC HHDDDDDD   (top 2 bits of E..H)
 *   byte  4..7   eeaaaaaa ffbbbbbb ggcccccc hhdddddd   (top 2 bits of e..h)
 *   byte  8..11  eeeeEEEE ffffFFFF ggggGGGG hhhhHHHH   (low 4 bits of E..H, e..h)
 */
static inline void mc_q4k_scale_min(const uint8_t *s, int j, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4));
        *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

#endif
