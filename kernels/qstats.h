// Quantization telemetry (train_int4 -qstats) and a Hadamard block choice (test_int4 checks it): how well an INT4
// quantizer with step s represents a tensor, with and without the block Hadamard transform.
// Sums run in FP32 per thread and FP64 atomics across threads; the host wrapper synchronises (telemetry runs
// every N steps, outside the timed step).
#pragma once
#include <string.h>
#include <cuda_bf16.h>
#include "int4_math.h"

// sums[0] += Σ|ṽ|, where ṽ is v with the block Hadamard transform along rows (g > 0) or v itself (g == 0)
// sums[1] += Σ ṽ², sums[2] += Σ (|s|·q(ṽ) − ṽ)² (only when step_abs > 0), sums[3] = max |ṽ| / |s| (as float bits)
// One thread per (row, block of g values; 32 when g == 0); the block is held in a local array.
template <typename T>
__global__ void quant_error_kernel(const T* v, long rows, int K, int g, float step_abs, double* sums) {
    const int width = g > 0 ? g : 32;
    long blocks_per_row = K / width;
    long b = (long)blockIdx.x * blockDim.x + threadIdx.x;
    float abs_sum = 0.0f, sq_sum = 0.0f, err_sum = 0.0f, ratio = 0.0f;
    if (b < rows * blocks_per_row) {
        const T* src = v + (b / blocks_per_row) * K + (b % blocks_per_row) * width;
        float block[128];
        for (int i = 0; i < width; i++) block[i] = (float)src[i];
        if (g > 0) hadamard_block_inplace(block, g);
        for (int i = 0; i < width; i++) {
            float x = block[i];
            abs_sum += fabsf(x);
            sq_sum += x * x;
            if (step_abs > 0.0f) {
                float e = (float)quantize_int4(x, step_abs) * step_abs - x;
                err_sum += e * e;
                ratio = fmaxf(ratio, fabsf(x) / step_abs);
            }
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        abs_sum += __shfl_down_sync(0xffffffff, abs_sum, offset);
        sq_sum += __shfl_down_sync(0xffffffff, sq_sum, offset);
        err_sum += __shfl_down_sync(0xffffffff, err_sum, offset);
        ratio = fmaxf(ratio, __shfl_down_sync(0xffffffff, ratio, offset));
    }
    if (threadIdx.x % 32 == 0) {
        atomicAdd(&sums[0], (double)abs_sum);
        atomicAdd(&sums[1], (double)sq_sum);
        atomicAdd(&sums[2], (double)err_sum);
        atomicMax((unsigned long long*)&sums[3], (unsigned long long)__float_as_uint(ratio));  // ratio >= 0
    }
}

struct QuantError {
    float step;            // the step used: the given one, or the LSQ init 2·mean|ṽ|/√7 when none was given
    float relative_error;  // ‖|s|·q(ṽ) − ṽ‖ / ‖ṽ‖ = ‖Q(vH)Hᵀ − v‖ / ‖v‖ (H is orthogonal)
    float outlier_ratio;   // max |ṽ| / |s|: above 7.5 the largest values clip
};

// quantisation error of the (rows × K) tensor v with Hadamard block g (0 = no transform) at step_abs
// (0 = the LSQ initial step for this tensor). scratch: 4 doubles of device memory. Synchronises the stream.
template <typename T>
QuantError quant_error(const T* v, long rows, int K, int g, float step_abs, double* scratch, cudaStream_t stream) {
    const int width = g > 0 ? g : 32;
    if (K % width != 0 || width > 128) {
        fprintf(stderr, "quant_error: K = %d is not a multiple of the block %d (at most 128)\n", K, width);
        exit(EXIT_FAILURE);
    }
    const int threads = 256;
    const long n_blocks = CEIL_DIV(rows * (K / width), threads);
    double sums[4];
    for (int pass = step_abs > 0.0f ? 1 : 0; pass < 2; pass++) {
        cudaCheck(cudaMemsetAsync(scratch, 0, 4 * sizeof(double), stream));
        quant_error_kernel<<<n_blocks, threads, 0, stream>>>(v, rows, K, g, step_abs, scratch);
        cudaCheck(cudaGetLastError());
        cudaCheck(cudaMemcpyAsync(sums, scratch, sizeof sums, cudaMemcpyDeviceToHost, stream));
        cudaCheck(cudaStreamSynchronize(stream));
        if (pass == 0) step_abs = (float)(2.0 * (sums[0] / ((double)rows * K)) / sqrt(7.0));
    }
    unsigned long long ratio_bits;
    memcpy(&ratio_bits, &sums[3], sizeof ratio_bits);
    uint32_t ratio_low = (uint32_t)ratio_bits;
    float ratio;
    memcpy(&ratio, &ratio_low, sizeof ratio);
    return {step_abs, sums[1] > 0.0 ? (float)sqrt(sums[2] / sums[1]) : 0.0f, ratio};
}

// the Hadamard block g ∈ {16, 32, 64, 128} (dividing K) that minimises
// ‖Q(XH)Hᵀ − X‖·‖Q(WH)Hᵀ − W‖ with LSQ initial steps, as the official dynamic mode does at the first step
template <typename TX, typename TW>
int hadamard_block_auto(const TX* x, long x_rows, const TW* w, long w_rows, int K, double* scratch,
                        cudaStream_t stream) {
    int best_g = 0;
    float best = 0.0f;
    for (int g = 16; g <= 128; g *= 2) {
        if (K % g != 0) continue;
        float product = quant_error(x, x_rows, K, g, 0.0f, scratch, stream).relative_error *
                        quant_error(w, w_rows, K, g, 0.0f, scratch, stream).relative_error;
        if (best_g == 0 || product < best) { best_g = g; best = product; }
    }
    return best_g;
}
