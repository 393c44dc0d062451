// Shared randomness: one stateless counter-based hash, written identically in scripts/reference.py
// (rng_hash there), so stochastic rounding, LSS draws and init agree bit for bit between CUDA and PyTorch.
//   u = rng_uniform(seed, stream, index) in [0, 1), 24 random bits.
// The mixer is Chris Wellons' "lowbias32" (public domain integer hash, constants from his hash-prospector).
// `stream` separates uses so that no two draws share a counter; see rng_stream_* below for the layout.
#pragma once
#include "common.h"

HD uint32_t rng_mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

// the per-(seed, stream) key; kernels compute it once and reuse it for every index
HD uint32_t rng_key(uint32_t seed, uint32_t stream) {
    return rng_mix32(rng_mix32(seed ^ 0x6a09e667u) ^ stream);
}

// two rounds on the index so that two streams never produce shifted copies of each other
// (key1 ^ i == key2 ^ j would otherwise give equal outputs)
HD uint32_t rng_hash_keyed(uint32_t key, uint32_t index) {
    return rng_mix32(rng_mix32(index ^ key) + key);
}

HD uint32_t rng_hash(uint32_t seed, uint32_t stream, uint32_t index) {
    return rng_hash_keyed(rng_key(seed, stream), index);
}

// top 24 bits -> float in [0, 1); exact in FP32, so torch computes the identical value
HD float rng_uniform_from_bits(uint32_t bits) {
    return (float)(bits >> 8) * (1.0f / 16777216.0f);
}

HD float rng_uniform(uint32_t seed, uint32_t stream, uint32_t index) {
    return rng_uniform_from_bits(rng_hash(seed, stream, index));
}

// Stream layout (32 bits):
//   bit 31 = 1: initialisation, low bits = parameter tensor index
//   bit 31 = 0: training draws, bits 30..14 = micro-step (wraps after 131072 micro-steps),
//               bits 13..2 = quantized linear layer index (layer * 4 + which), bits 1..0 = use
enum RngUse { RNG_USE_DX_ROUND = 0, RNG_USE_LSS_KEEP = 1, RNG_USE_DW_ROUND = 2, RNG_USE_DATA = 3 };

HD uint32_t rng_stream_init(uint32_t tensor_index) { return 0x80000000u | tensor_index; }

HD uint32_t rng_stream_train(uint32_t micro_step, uint32_t linear_index, uint32_t use) {
    return ((micro_step & 0x1ffffu) << 14) | ((linear_index & 0xfffu) << 2) | (use & 3u);
}

// standard normal for weight init (host only): Box-Muller in double from two draws (indices 2i, 2i+1);
// double keeps the float32 result identical to the PyTorch float64 computation in practice
// (both sides use correctly rounded log/cos on the same inputs up to libm's last-bit differences,
// which float32 rounding hides; init is compared with a tolerance, not bit for bit)
#include <math.h>
inline float rng_normal(uint32_t key, uint32_t i) {
    double u1 = ((double)(rng_hash_keyed(key, 2 * i) >> 8) + 1.0) / 16777216.0;  // (0, 1]
    double u2 = (double)(rng_hash_keyed(key, 2 * i + 1) >> 8) / 16777216.0;       // [0, 1)
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
