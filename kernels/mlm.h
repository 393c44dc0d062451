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

// a masked-LM batch (B, T) from B windows of T - 2 shard tokens (window b starts at windows + b * stride):
// row b = [CLS] + window b + [SEP], then corrupted with key; returns the number of predicted positions
inline int mlm_batch(const int* windows, long stride, int B, int T, uint32_t key, int* inputs, int* targets) {
    int predicted = 0;
    for (int b = 0; b < B; b++) {
        int* row = inputs + (long)b * T;
        row[0] = TOKEN_CLS;
        for (int t = 1; t < T - 1; t++) row[t] = windows[b * stride + t - 1];
        row[T - 1] = TOKEN_SEP;
        for (int t = 0; t < T; t++) {
            long i = (long)b * T + t;
            mlm_corrupt_token(row[t], key, (uint32_t)i, &inputs[i], &targets[i]);
            predicted += targets[i] >= 0;
        }
    }
    return predicted;
}
