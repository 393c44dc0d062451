// Scalar math of the INT4 method (../shared/method.md), one definition used by the GPU kernels, the CPU
// reference (kernels/int4_reference.h) and the tests. scripts/reference.py mirrors each function with the
// same FP32 operations in the same order, so codes agree bit for bit. Everything here must be built
// without --use_fast_math: division and rounding have to be IEEE round-to-nearest-even.
#pragma once
#include <math.h>
#include "common.h"

#define INT4_MIN (-8)
#define INT4_MAX 7
// bit split: value = (BITSPLIT_BASE * high + low) / scale, scale = BITSPLIT_RANGE / max|g|,
// so |high| <= 7 and low in [-7, 7] (see bitsplit_value's carry): two INT4 halves, and 14*high + low fits one
// INT8 operand
#define BITSPLIT_BASE 14
#define BITSPLIT_RANGE 98.0f

#ifdef __CUDA_ARCH__
#define F32_DIV(a, b) __fdiv_rn(a, b)
#define F32_MUL(a, b) __fmul_rn(a, b)
#define F32_ADD(a, b) __fadd_rn(a, b)
#define F32_SUB(a, b) __fsub_rn(a, b)
#else
#define F32_DIV(a, b) ((float)(a) / (float)(b))
#define F32_MUL(a, b) ((float)(a) * (float)(b))
#define F32_ADD(a, b) ((float)(a) + (float)(b))
#define F32_SUB(a, b) ((float)(a) - (float)(b))
#endif

// LSQ quantizer: q = clamp(round_half_even(v / |s|), -8, 7); step_abs = |s|
HD int quantize_int4(float v, float step_abs) {
    float r = rintf(F32_DIV(v, step_abs));
    r = fminf(fmaxf(r, (float)INT4_MIN), (float)INT4_MAX);
    return (int)r;
}

// LSQ straight-through mask: 1 where -8 <= v/|s| <= 7
HD bool lsq_in_range(float v, float step_abs) {
    float r = F32_DIV(v, step_abs);
    return r >= (float)INT4_MIN && r <= (float)INT4_MAX;
}

// d(|s| * q(v)) / d|s| for one element (before the sign(s) and 1/sqrt(numel*7) factors)
HD float lsq_step_grad_term(float v, float step_abs) {
    float r = F32_DIV(v, step_abs);
    if (r < (float)INT4_MIN) return (float)INT4_MIN;
    if (r > (float)INT4_MAX) return (float)INT4_MAX;
    return F32_SUB(rintf(r), r);
}

// two INT4 codes per byte: element 2j in the low nibble, element 2j+1 in the high nibble
// (the order mma.sync s4 expects: lower k index in lower bits)
HD uint8_t pack_int4_pair(int lo, int hi) { return (uint8_t)((lo & 0xF) | ((hi & 0xF) << 4)); }
HD int unpack_int4_lo(uint8_t b) { return (int)((int8_t)(b << 4) >> 4); }
HD int unpack_int4_hi(uint8_t b) { return (int)((int8_t)b >> 4); }

// float32(1/sqrt(g)), the normalisation of the Sylvester Hadamard matrix H_g
HD float hadamard_norm(int g) { return (float)(1.0 / sqrt((double)g)); }

// in-place fast Walsh-Hadamard transform of g contiguous values (g a power of two), then * 1/sqrt(g).
// The butterfly order (stride 1, 2, 4, ...) is part of the contract: it fixes the FP32 rounding.
HD void hadamard_block_inplace(float* v, int g) {
    for (int h = 1; h < g; h *= 2) {
        for (int i = 0; i < g; i += 2 * h) {
            for (int j = i; j < i + h; j++) {
                float a = v[j], b = v[j + h];
                v[j] = F32_ADD(a, b);
                v[j + h] = F32_SUB(a, b);
            }
        }
    }
    float norm = hadamard_norm(g);
    for (int j = 0; j < g; j++) { v[j] = F32_MUL(v[j], norm); }
}

// bit split scale for a row or tensor whose largest |g| is absmax; 0 for an all-zero row
HD float bitsplit_scale(float absmax) { return absmax > 0.0f ? F32_DIV(BITSPLIT_RANGE, absmax) : 0.0f; }

// x = s*g, high = round_half_even(x / 14), low = floor(x - 14*high + u): E[14*high + low] = x.
// Returns the INT8 operand 14*high + low; the halves are written if asked for.
HD int bitsplit_value(float g, float scale, float u, int* high_out, int* low_out) {
    float x = F32_MUL(g, scale);
    float high = rintf(F32_DIV(x, (float)BITSPLIT_BASE));
    float rest = F32_SUB(x, F32_MUL((float)BITSPLIT_BASE, high));  // 14*high is exact
    float low = floorf(F32_ADD(rest, u));
    if (low > (float)INT4_MAX) {  // rest = +7 (a tie) and 7 + u rounded up to 8 in FP32 (u > 1 - 2^-22): 8 is not
        high += 1.0f;             // INT4, so carry 14 into high (high <= 6 here, as x <= 98); the operand is unchanged
        low -= (float)BITSPLIT_BASE;
    }
    if (high_out) *high_out = (int)high;
    if (low_out) *low_out = (int)low;
    return BITSPLIT_BASE * (int)high + (int)low;
}
