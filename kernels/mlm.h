// BERT's masked-LM corruption and special tokens, from the shared hash so that train_int4 and
// scripts/reference.py (mlm_mask) choose the same positions and replacements bit for bit.
// Position i of the flattened (B, T) batch uses draws 3i, 3i+1, 3i+2 of stream (micro-step, 0, RNG_USE_DATA):
// selected if u0 < 0.15 and the token is a byte; then u1 < 0.8 -> [MASK], u1 < 0.9 -> byte floor(256*u2),
// else the token is kept. Unselected positions get target -1 (not predicted).
#pragma once
#include "rng.h"

#define TOKEN_CLS 256
#define TOKEN_SEP 257
#define TOKEN_MASK 258
#define TOKEN_PAD 259
#define BERT_VOCAB 260
#define BERT_PADDED_VOCAB 384
#define MLM_SELECT 0.15f
#define MLM_USE_MASK 0.8f
#define MLM_USE_RANDOM 0.9f

HD void mlm_corrupt_token(int token, uint32_t key, uint32_t position, int* input, int* target) {
    float u_select = rng_uniform_from_bits(rng_hash_keyed(key, 3u * position));
    float u_action = rng_uniform_from_bits(rng_hash_keyed(key, 3u * position + 1u));
    float u_byte = rng_uniform_from_bits(rng_hash_keyed(key, 3u * position + 2u));
    if (!(u_select < MLM_SELECT && token < 256)) {
        *input = token;
        *target = -1;
        return;
    }
    *target = token;
    if (u_action < MLM_USE_MASK) {
        *input = TOKEN_MASK;
    } else if (u_action < MLM_USE_RANDOM) {
        *input = (int)floorf(u_byte * 256.0f);
    } else {
        *input = token;
    }
}

#ifdef __CUDACC__
// corrupts a (B*T) batch of token ids in place on the device and writes the MLM targets; one thread per position
__global__ void mlm_corrupt_kernel(int* tokens, int* targets, int n, uint32_t key) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int input, target;
    mlm_corrupt_token(tokens[i], key, (uint32_t)i, &input, &target);
    tokens[i] = input;
    targets[i] = target;
}
#endif
