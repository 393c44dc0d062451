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

// ----------------------------------------------------------------------------------------------------------
// The whole quantized linear layer on the CPU (scripts/reference.py QuantLinearFunction, op for op)

// HQ-MM forward: y (N x M) = |s_x|·|s_w| · (q(x·H) · q(w·H)ᵀ) + b; also returns the transformed tensors and
// the codes the backward needs. x: N x K, w: M x K, b: M (or null).
inline void hq_linear_forward_cpu(const float* x, const float* w, const float* b, int N, int M, int K, int g,
                                  float step_x, float step_w, float* x_tilde, float* w_tilde, int8_t* x_codes,
                                  int8_t* w_codes, float* y) {
    hadamard_rows_cpu(x, x_tilde, N, K, g);
    hadamard_rows_cpu(w, w_tilde, M, K, g);
    quantize_int4_cpu(x_tilde, x_codes, (size_t)N * K, fabsf(step_x));
    quantize_int4_cpu(w_tilde, w_codes, (size_t)M * K, fabsf(step_w));
    std::vector<int32_t> acc((size_t)N * M);
    int_gemm_abt_cpu(x_codes, w_codes, acc.data(), N, M, K);
    float scale = F32_MUL(fabsf(step_x), fabsf(step_w));
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < M; j++) {
            float v = F32_MUL((float)acc[(size_t)i * M + j], scale);
            y[(size_t)i * M + j] = b ? F32_ADD(v, b[j]) : v;
        }
    }
}

// the LSQ step gradient of one quantized tensor: sign(s) · Σ(∇v̂ · term(v)) / √(n·7), the sum in double
inline float lsq_step_grad_cpu(const float* grad_hat, const float* v_tilde, size_t n, float step) {
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) { sum += (double)grad_hat[i] * (double)lsq_step_grad_term(v_tilde[i], fabsf(step)); }
    float g = (float)(sum / sqrt((double)n * 7.0));
    return step > 0.0f ? g : (step < 0.0f ? -g : 0.0f);
}

// BS + LSS backward of the layer above, given ∇y (N x M): dx (N x K), dw (M x K), db (M), the two step
// gradients. Draws use streams (micro_step, linear_index, use) of `seed`.
inline void lss_linear_backward_cpu(const float* dy, const float* x_tilde, const float* w_tilde,
                                    const int8_t* x_codes, const int8_t* w_codes, int N, int M, int K, int g,
                                    float step_x, float step_w, float keep_ratio, uint32_t seed, uint32_t micro_step,
                                    uint32_t linear_index, float* dx, float* dw, float* db, float* dstep_x,
                                    float* dstep_w) {
    const float sx = fabsf(step_x), sw = fabsf(step_w);
    // ∇X path: per-row bit split, s8 x s4 GEMM over M, dequantised by |s_w| / scale_row
    std::vector<int8_t> op((size_t)N * M), w_codes_t((size_t)K * M), x_codes_t((size_t)K * N), op_t((size_t)M * N);
    std::vector<float> row_scale(N), dx_hat((size_t)N * K), dw_hat((size_t)M * K), masked;
    std::vector<int32_t> acc((size_t)N * K);
    bitsplit_cpu(dy, N, M, true, seed, rng_stream_train(micro_step, linear_index, RNG_USE_DX_ROUND), op.data(),
                 nullptr, nullptr, row_scale.data());
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++) w_codes_t[(size_t)k * M + m] = w_codes[(size_t)m * K + k];
    int_gemm_abt_cpu(op.data(), w_codes_t.data(), acc.data(), N, K, M);
    for (int i = 0; i < N; i++) {
        float coef = row_scale[i] > 0.0f ? F32_DIV(sw, row_scale[i]) : 0.0f;
        for (int k = 0; k < K; k++) dx_hat[(size_t)i * K + k] = F32_MUL((float)acc[(size_t)i * K + k], coef);
    }
    // ∇W path: LSS over token rows, kept rows scaled by 1/p, per-tensor bit split, GEMM over tokens
    std::vector<float> x_hat((size_t)N * K), scores(N), probs(N), dy_kept((size_t)N * M);
    std::vector<uint8_t> keep(N);
    for (size_t e = 0; e < x_hat.size(); e++) x_hat[e] = (float)x_codes[e] * sx;
    lss_scores_cpu(dy, M, x_hat.data(), K, N, scores.data());
    lss_probabilities_cpu(scores.data(), N, keep_ratio, probs.data());
    lss_keep_cpu(probs.data(), N, seed, rng_stream_train(micro_step, linear_index, RNG_USE_LSS_KEEP), keep.data());
    lss_scale_kept_rows_cpu(dy, N, M, probs.data(), keep.data(), dy_kept.data());
    float tensor_scale;
    bitsplit_cpu(dy_kept.data(), N, M, false, seed, rng_stream_train(micro_step, linear_index, RNG_USE_DW_ROUND),
                 op.data(), nullptr, nullptr, &tensor_scale);
    for (int i = 0; i < N; i++) {
        for (int m = 0; m < M; m++) op_t[(size_t)m * N + i] = op[(size_t)i * M + m];
        for (int k = 0; k < K; k++) x_codes_t[(size_t)k * N + i] = x_codes[(size_t)i * K + k];
    }
    acc.resize((size_t)M * K);
    int_gemm_abt_cpu(op_t.data(), x_codes_t.data(), acc.data(), M, K, N);
    float coef_w = tensor_scale > 0.0f ? F32_DIV(sx, tensor_scale) : 0.0f;
    for (size_t e = 0; e < dw_hat.size(); e++) dw_hat[e] = F32_MUL((float)acc[e], coef_w);
    // straight-through masks in the transformed domain, then back through H (symmetric)
    masked.resize((size_t)N * K);
    // multiplying by 1 or 0 (not selecting) keeps the sign of zero the same as PyTorch's mask product
    for (size_t e = 0; e < masked.size(); e++) masked[e] = F32_MUL(dx_hat[e], lsq_in_range(x_tilde[e], sx) ? 1.0f : 0.0f);
    hadamard_rows_cpu(masked.data(), dx, N, K, g);
    masked.resize((size_t)M * K);
    for (size_t e = 0; e < masked.size(); e++) masked[e] = F32_MUL(dw_hat[e], lsq_in_range(w_tilde[e], sw) ? 1.0f : 0.0f);
    hadamard_rows_cpu(masked.data(), dw, M, K, g);
    *dstep_x = lsq_step_grad_cpu(dx_hat.data(), x_tilde, (size_t)N * K, step_x);
    *dstep_w = lsq_step_grad_cpu(dw_hat.data(), w_tilde, (size_t)M * K, step_w);
    for (int m = 0; m < M; m++) {
        double sum = 0.0;
        for (int i = 0; i < N; i++) sum += dy[(size_t)i * M + m];
        db[m] = (float)sum;
    }
}
