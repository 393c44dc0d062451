// Leverage score sampling of the token rows of a ∇W GEMM, all on the device (no host round trip): scores
// ‖∇Y_i‖·‖X̂_i‖ (computed by kernels/quant_linear.h's row pass), water-filled probabilities p_i = min(1, c·score_i)
// with Σp = ρ·rows, the Bernoulli keep u_i < p_i from the shared hash, and the kept rows compacted in increasing
// order with their p_i. Squares and water-filling sums run in FP64 like the CPU reference (lss_scores_cpu,
// lss_probabilities_cpu): every term is exact in FP64, so GPU and CPU differ only in summation order (~1e-16),
// and probabilities agree to the ulp (dev/bitsplit_lss.cu measures 0 ulp). The variants that led here are in
// dev/bitsplit_lss.cu.
#pragma once
#include "common.h"
#include "int4_math.h"
#include "rng.h"

#define LSS_KEEP_THREADS 1024

__device__ __forceinline__ double lss_warp_sum(double v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
    return v;
}

// (count, sum) over the block, in every thread: warp sums, then the warp totals in warp order (deterministic)
__device__ void lss_block_count_sum(int* count, double* sum, int* shared_count, double* shared_sum) {
    int c = *count;
    double s = lss_warp_sum(*sum);
    for (int offset = 16; offset > 0; offset /= 2) c += __shfl_xor_sync(0xffffffff, c, offset);
    if (threadIdx.x % 32 == 0) {
        shared_count[threadIdx.x / 32] = c;
        shared_sum[threadIdx.x / 32] = s;
    }
    __syncthreads();
    c = 0;
    s = 0.0;
    for (int w = 0; w < (int)blockDim.x / 32; w++) {
        c += shared_count[w];
        s += shared_sum[w];
    }
    __syncthreads();
    *count = c;
    *sum = s;
}

// how many threads before this one in the block have flag set; *total: how many in the whole block
__device__ int lss_block_exclusive_count(bool flag, int* total, int* shared_count) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    unsigned ballot = __ballot_sync(0xffffffff, flag);
    if (lane == 0) shared_count[warp] = __popc(ballot);
    __syncthreads();
    int before = __popc(ballot & ((1u << lane) - 1)), all = 0;
    for (int w = 0; w < (int)blockDim.x / 32; w++) {
        if (w < warp) before += shared_count[w];
        all += shared_count[w];
    }
    __syncthreads();
    *total = all;
    return before;
}

// Water-filling, keep and compaction in one block. c solves Σ min(1, c·score_i) = ρ·rows by Newton's method
// from c = ρ·rows / Σscore: c ← (ρ·rows − #clamped) / Σ unclamped scores; the function is concave and
// increasing, so the clamped set only grows and a step that adds no row ends it (a handful of steps). If no
// more rows than ρ·rows have a positive score, every one of them gets p = 1 (lss_probabilities_cpu).
// Outputs: kept_rows / kept_probs [0, *n_kept) in increasing row order; if not null: stats[0] = kept
// fraction, stats[1] = the variance proxy Σ(1/p − 1)·score² / (Σ score)² (telemetry), probs (rows) every
// p_i, *iterations the Newton steps (dev/bitsplit_lss.cu checks them), and *kept_absmax_bits the largest
// |dy_ij / p_i| over kept rows as float bits, from row_absmax_i = max_j |dy_ij|: division by p > 0 is monotonic
// in IEEE rounding, so max_j fl(|dy_ij| / p) = fl(max_j |dy_ij| / p) — the same bits as over every element.
__global__ void lss_keep_rows_kernel(int* kept_rows, float* kept_probs, int* n_kept, float* stats, float* probs,
                                     int* iterations, unsigned int* kept_absmax_bits, const float* scores,
                                     const float* row_absmax, int rows, float keep_ratio, uint32_t key) {
    __shared__ int shared_count[32];
    __shared__ double shared_sum[32];
    double target = (double)keep_ratio * rows;
    int positive = 0;
    double total = 0.0;
    for (int i = threadIdx.x; i < rows; i += blockDim.x) {
        if (scores[i] > 0.0f) {
            positive++;
            total += scores[i];
        }
    }
    lss_block_count_sum(&positive, &total, shared_count, shared_sum);
    bool keep_every_positive_row = positive <= target;
    double c = 0.0;
    int steps = 0;
    if (!keep_every_positive_row) {
        int clamped = 0;
        double unclamped_sum = total;
        while (true) {
            c = (target - clamped) / unclamped_sum;
            int next_clamped = 0;
            double next_unclamped_sum = 0.0;
            for (int i = threadIdx.x; i < rows; i += blockDim.x) {
                if (!(scores[i] > 0.0f)) continue;
                double s = scores[i];
                if (c * s > 1.0) next_clamped++; else next_unclamped_sum += s;
            }
            lss_block_count_sum(&next_clamped, &next_unclamped_sum, shared_count, shared_sum);
            steps++;
            if (next_clamped <= clamped) break;
            clamped = next_clamped;
            unclamped_sum = next_unclamped_sum;
        }
    }
    int kept = 0;
    double extra_variance = 0.0;
    unsigned int kept_absmax = 0;
    for (int tile = 0; tile < rows; tile += blockDim.x) {
        int i = tile + threadIdx.x;
        float p = 0.0f;
        bool keep = false;
        if (i < rows) {
            float s = scores[i];
            p = keep_every_positive_row ? (s > 0.0f ? 1.0f : 0.0f) : (float)fmin(1.0, c * (double)s);
            keep = rng_uniform_from_bits(rng_hash_keyed(key, (uint32_t)i)) < p;
            if (probs) probs[i] = p;
            if (p > 0.0f) extra_variance += (1.0 / p - 1.0) * (double)s * s;
        }
        int kept_in_tile;
        int position = kept + lss_block_exclusive_count(keep, &kept_in_tile, shared_count);
        if (keep) {
            kept_rows[position] = i;
            kept_probs[position] = p;
            if (kept_absmax_bits) kept_absmax = max(kept_absmax, __float_as_uint(__fdiv_rn(row_absmax[i], p)));
        }
        kept += kept_in_tile;
    }
    int unused = 0;
    lss_block_count_sum(&unused, &extra_variance, shared_count, shared_sum);
    if (kept_absmax_bits) {  // non-negative float bits fit an int: the block maximum through shared_count
        kept_absmax = __reduce_max_sync(0xffffffff, kept_absmax);
        if (threadIdx.x % 32 == 0) shared_count[threadIdx.x / 32] = (int)kept_absmax;
        __syncthreads();
        for (int w = 0; w < (int)blockDim.x / 32; w++) kept_absmax = max(kept_absmax, (unsigned int)shared_count[w]);
    }
    if (threadIdx.x == 0) {
        *n_kept = kept;
        if (stats) {
            stats[0] = (float)kept / rows;
            stats[1] = total > 0.0 ? (float)(extra_variance / (total * total)) : 0.0f;
        }
        if (iterations) *iterations = steps;
        if (kept_absmax_bits) *kept_absmax_bits = kept_absmax;
    }
}
