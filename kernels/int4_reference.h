// CPU reference of the INT4 method's tensor operations (../shared/method.md), built from the scalar math in
// int4_math.h and the hash in rng.h. Used by test_int4.cu (against the PyTorch dump, bit for bit) and by the
// dev/ programs as the reference their GPU kernels must reproduce. Plain loops, row-major, no threads.
#pragma once
#include <math.h>
#include <string.h>
#include <algorithm>
#include <vector>
#include "int4_math.h"
#include "rng.h"

// out = in · blockdiag(H_g, ..., H_g): the Hadamard transform along each row (K a multiple of g)
inline void hadamard_rows_cpu(const float* in, float* out, int rows, int K, int g) {
    for (int r = 0; r < rows; r++) {
        memcpy(out + (size_t)r * K, in + (size_t)r * K, K * sizeof(float));
        for (int b = 0; b < K; b += g) { hadamard_block_inplace(out + (size_t)r * K + b, g); }
    }
}

// LSQ step initialisation at the first forward: s = 2 * mean(|v|) / sqrt(7) (mean in double)
inline float lsq_init_step_cpu(const float* v, size_t n) {
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) { sum += fabs((double)v[i]); }
    return (float)(2.0 * (sum / (double)n) / sqrt(7.0));
}

inline void quantize_int4_cpu(const float* v, int8_t* codes, size_t n, float step_abs) {
    for (size_t i = 0; i < n; i++) { codes[i] = (int8_t)quantize_int4(v[i], step_abs); }
}

// two codes per byte along each row (n even), low nibble first
inline void pack_int4_cpu(const int8_t* codes, uint8_t* packed, size_t n) {
    for (size_t i = 0; i < n / 2; i++) { packed[i] = pack_int4_pair(codes[2 * i], codes[2 * i + 1]); }
}

// C (rows_a x rows_b) = A · Bᵀ over K, exact in int32 (A, B are INT4 or INT8 codes, one per byte)
inline void int_gemm_abt_cpu(const int8_t* a, const int8_t* b, int32_t* c, int rows_a, int rows_b, int K) {
    for (int i = 0; i < rows_a; i++) {
        for (int j = 0; j < rows_b; j++) {
            int32_t acc = 0;
            for (int k = 0; k < K; k++) { acc += (int32_t)a[(size_t)i * K + k] * (int32_t)b[(size_t)j * K + k]; }
            c[(size_t)i * rows_b + j] = acc;
        }
    }
}

// Bit split of g (rows x cols). per_row: one scale per row (the ∇X path), else one per tensor (the ∇W path).
// Element (r, c) draws u = rng_uniform(seed, stream, r*cols + c). Writes the INT8 operand 14*high + low,
// optionally the halves, and the scales (rows of them, or one).
inline void bitsplit_cpu(const float* g, int rows, int cols, bool per_row, uint32_t seed, uint32_t stream,
                         int8_t* operand, int8_t* high, int8_t* low, float* scales) {
    uint32_t key = rng_key(seed, stream);
    float tensor_absmax = 0.0f;
    if (!per_row) {
        for (size_t i = 0; i < (size_t)rows * cols; i++) { tensor_absmax = fmaxf(tensor_absmax, fabsf(g[i])); }
        scales[0] = bitsplit_scale(tensor_absmax);
    }
    for (int r = 0; r < rows; r++) {
        const float* row = g + (size_t)r * cols;
        float scale = scales[0];
        if (per_row) {
            float absmax = 0.0f;
            for (int c = 0; c < cols; c++) { absmax = fmaxf(absmax, fabsf(row[c])); }
            scale = scales[r] = bitsplit_scale(absmax);
        }
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * cols + c;
            int h, l;
            float u = rng_uniform_from_bits(rng_hash_keyed(key, (uint32_t)i));
            operand[i] = (int8_t)bitsplit_value(row[c], scale, u, &h, &l);
            if (high) high[i] = (int8_t)h;
            if (low) low[i] = (int8_t)l;
        }
    }
}

// Leverage scores of the ∇W̃ = ∇Yᵀ·X̂ terms: score_i = ‖∇Y_i‖·‖X̂_i‖ (norms in double)
inline void lss_scores_cpu(const float* dy, int M, const float* x_hat, int K, int rows, float* scores) {
    for (int i = 0; i < rows; i++) {
        double a = 0.0, b = 0.0;
        for (int m = 0; m < M; m++) { a += (double)dy[(size_t)i * M + m] * dy[(size_t)i * M + m]; }
        for (int k = 0; k < K; k++) { b += (double)x_hat[(size_t)i * K + k] * x_hat[(size_t)i * K + k]; }
        scores[i] = (float)(sqrt(a) * sqrt(b));
    }
}

// Water-filling: p_i = min(1, c·score_i) with c chosen so that Σ p_i = keep_ratio·rows; rows with score 0
// get p = 0. If there are no more nonzero rows than the target, every nonzero row gets p = 1.
// Sort descending; with the k largest clamped to 1, c = (target - k) / Σ_{rest} score; the first k for which
// c·score_(k+1) <= 1 is the solution. Sums in double, in sorted order (scripts/reference.py does the same).
inline void lss_probabilities_cpu(const float* scores, int rows, float keep_ratio, float* probs) {
    std::vector<double> sorted;
    for (int i = 0; i < rows; i++) { if (scores[i] > 0.0f) sorted.push_back(scores[i]); }
    double target = (double)keep_ratio * rows;
    if ((double)sorted.size() <= target) {
        for (int i = 0; i < rows; i++) { probs[i] = scores[i] > 0.0f ? 1.0f : 0.0f; }
        return;
    }
    std::sort(sorted.begin(), sorted.end(), [](double a, double b) { return a > b; });
    std::vector<double> suffix(sorted.size() + 1, 0.0);  // suffix[k] = Σ_{i>=k} sorted[i]
    for (size_t k = sorted.size(); k-- > 0;) { suffix[k] = suffix[k + 1] + sorted[k]; }
    double c = 0.0;
    for (size_t k = 0; k < sorted.size(); k++) {
        c = (target - (double)k) / suffix[k];
        if (c * sorted[k] <= 1.0) break;
    }
    for (int i = 0; i < rows; i++) { probs[i] = (float)std::min(1.0, c * (double)scores[i]); }
}

// Bernoulli keep with the shared hash: row i is kept if u_i < p_i, u_i = rng_uniform(seed, stream, i)
inline void lss_keep_cpu(const float* probs, int rows, uint32_t seed, uint32_t stream, uint8_t* keep) {
    uint32_t key = rng_key(seed, stream);
    for (int i = 0; i < rows; i++) { keep[i] = rng_uniform_from_bits(rng_hash_keyed(key, (uint32_t)i)) < probs[i]; }
}

// The rows entering the ∇W bit split: kept rows scaled by 1/p_i (FP32 division), dropped rows zero
inline void lss_scale_kept_rows_cpu(const float* dy, int rows, int M, const float* probs, const uint8_t* keep,
                                    float* out) {
    for (int i = 0; i < rows; i++) {
        for (int m = 0; m < M; m++) {
            size_t e = (size_t)i * M + m;
            out[e] = keep[i] ? F32_DIV(dy[e], probs[i]) : 0.0f;
        }
    }
}
