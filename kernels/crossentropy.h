// Fused softmax + cross-entropy in FP32 over the first V of Vp logit columns (padding columns ignored, as
// llm.c). Forward writes each row's loss; with a gradient scale it also overwrites the logits with
// dlogits = (softmax − onehot(target)) · scale (0 in padding columns). Targets of −1 are not predicted
// (BERT's unmasked positions): loss 0, gradient 0. Two kernels: the row held in registers (read once) when
// it fits, else streamed (read twice). dev/crossentropy.cu checks both against a CPU reference and times them.
#pragma once
#include "common.h"

// (max, Σ exp(x − max)) of the values seen so far, and how two of them merge
struct SoftmaxSum {
    float max = -INFINITY, sum = 0.0f;
    __device__ __forceinline__ void add(float x) {
        if (x > max) {
            sum = sum * expf(max - x) + 1.0f;
            max = x;
        } else {
            sum += expf(x - max);
        }
    }
    __device__ __forceinline__ void merge(float other_max, float other_sum) {
        float m = fmaxf(max, other_max);
        if (m == -INFINITY) return;
        sum = sum * expf(max - m) + other_sum * expf(other_max - m);
        max = m;
    }
};

// Streamed, any V: one block per row; one read of the row keeps a running (max, sum) per thread, merged over
// the block; then, for training, a second read overwrites the row with its gradient. 16-byte vector loads and
// stores when the rows are 16-byte aligned.
template <typename T>
__global__ void crossentropy_streamed_kernel(T* logits, float* losses, const int* targets, int V, int Vp,
                                                     float grad_scale, bool vectorized) {
    constexpr int P = Packed<T>::size;
    __shared__ float shared_max[32], shared_sum[32];
    long row = blockIdx.x;
    T* x = logits + row * Vp;
    int target = targets[row];
    SoftmaxSum softmax;
    for (int i = threadIdx.x * P; i < V; i += blockDim.x * P) {
        if (vectorized && i + P <= V) {
            Packed<T> p = Packed<T>::load(x + i);
#pragma unroll
            for (int k = 0; k < P; k++) softmax.add(to_float(p.values[k]));
        } else {
            for (int v = i; v < min(i + P, V); v++) softmax.add(to_float(x[v]));
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        float other_max = __shfl_xor_sync(0xffffffff, softmax.max, offset);
        float other_sum = __shfl_xor_sync(0xffffffff, softmax.sum, offset);
        softmax.merge(other_max, other_sum);
    }
    if (threadIdx.x % 32 == 0) {
        shared_max[threadIdx.x / 32] = softmax.max;
        shared_sum[threadIdx.x / 32] = softmax.sum;
    }
    __syncthreads();
    SoftmaxSum total;
    for (int w = 0; w < (int)blockDim.x / 32; w++) total.merge(shared_max[w], shared_sum[w]);
    float maxval = total.max, sum = total.sum;
    if (threadIdx.x == 0) losses[row] = target >= 0 ? logf(sum) + maxval - to_float(x[target]) : 0.0f;
    if (grad_scale == 0.0f) return;
    __syncthreads();  // every thread has read x[target] before it is overwritten
    auto gradient = [&](int v, float logit) {
        if (v >= V || target < 0) return 0.0f;
        return (expf(logit - maxval) / sum - (v == target ? 1.0f : 0.0f)) * grad_scale;
    };
    for (int i = threadIdx.x * P; i < Vp; i += blockDim.x * P) {
        if (vectorized && i + P <= Vp) {
            Packed<T> p = Packed<T>::load(x + i);
#pragma unroll
            for (int k = 0; k < P; k++) p.values[k] = from_float<T>(gradient(i + k, to_float(p.values[k])));
            p.store(x + i);
        } else {
            for (int v = i; v < min(i + P, Vp); v++) x[v] = from_float<T>(gradient(v, to_float(x[v])));
        }
    }
}

#define CROSSENTROPY_THREADS 512
// 16-byte vectors per thread: rows up to 53,248 BF16 or 26,624 FP32 logits, which holds GPT-2's padded
// vocabulary (50,304) in BF16 within the 128 registers a thread of a 512-thread block may use (16 spills)
#define CROSSENTROPY_PACKS 13

// max (or sum) over the block, in every thread: warp results, then the warp totals in warp order
template <bool MAX> __device__ __forceinline__ float crossentropy_block_reduce(float v, float* shared) {
    for (int offset = 16; offset > 0; offset /= 2) {
        float other = __shfl_xor_sync(0xffffffff, v, offset);
        v = MAX ? fmaxf(v, other) : v + other;
    }
    __syncthreads();  // an earlier reduction's readers are done with `shared`
    if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
    __syncthreads();
    v = shared[0];
    for (int w = 1; w < CROSSENTROPY_THREADS / 32; w++) v = MAX ? fmaxf(v, shared[w]) : v + shared[w];
    return v;
}

// The row in registers, when Vp fits (16-byte aligned rows): one block per row, thread t holds the 16-byte
// vectors t, t + 512, ... of the row; a block max, a block sum of exp(x − max), then the gradient written
// from the registers: the row is read once and written once.
template <typename T>
__global__ void __launch_bounds__(CROSSENTROPY_THREADS) crossentropy_in_registers_kernel(T* logits, float* losses,
                                                                                        const int* targets, int V,
                                                                                        int Vp, float grad_scale) {
    constexpr int P = Packed<T>::size;
    __shared__ float shared[CROSSENTROPY_THREADS / 32];
    T* x = logits + (long)blockIdx.x * Vp;
    int target = targets[blockIdx.x];
    float target_logit = threadIdx.x == 0 && target >= 0 ? to_float(x[target]) : 0.0f;
    Packed<T> row[CROSSENTROPY_PACKS];
    float maxval = -INFINITY;
#pragma unroll
    for (int k = 0; k < CROSSENTROPY_PACKS; k++) {
        int i = (k * CROSSENTROPY_THREADS + threadIdx.x) * P;
        if (i < Vp) row[k] = Packed<T>::load(x + i);
#pragma unroll
        for (int j = 0; j < P; j++)
            if (i + j < V) maxval = fmaxf(maxval, to_float(row[k].values[j]));
    }
    maxval = crossentropy_block_reduce<true>(maxval, shared);
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < CROSSENTROPY_PACKS; k++) {
        int i = (k * CROSSENTROPY_THREADS + threadIdx.x) * P;
#pragma unroll
        for (int j = 0; j < P; j++)
            if (i + j < V) sum += expf(to_float(row[k].values[j]) - maxval);
    }
    sum = crossentropy_block_reduce<false>(sum, shared);
    if (threadIdx.x == 0) losses[blockIdx.x] = target >= 0 ? logf(sum) + maxval - target_logit : 0.0f;
    if (grad_scale == 0.0f) return;
    float scale = grad_scale / sum;
#pragma unroll
    for (int k = 0; k < CROSSENTROPY_PACKS; k++) {
        int i = (k * CROSSENTROPY_THREADS + threadIdx.x) * P;
        if (i >= Vp) continue;
#pragma unroll
        for (int j = 0; j < P; j++) {
            int v = i + j;
            float g = 0.0f;
            if (v < V && target >= 0) g = expf(to_float(row[k].values[j]) - maxval) * scale - (v == target ? grad_scale : 0.0f);
            row[k].values[j] = from_float<T>(g);
        }
        row[k].store(x + i);
    }
}

// whether crossentropy_in_registers_kernel takes these rows: 16-byte aligned, and a row fits
template <typename T> bool crossentropy_fits_in_registers(const T* logits, int Vp) {
    return aligned16(logits) && (Vp * sizeof(T)) % 16 == 0 && Vp <= CROSSENTROPY_PACKS * CROSSENTROPY_THREADS * Packed<T>::size;
}

// grad_scale 0: loss only (evaluation); else the loss gradient's scale, e.g. 1 / (predicted positions · accumulation steps)
template <typename T>
void crossentropy_forward_backward(T* logits, float* losses, const int* targets, long rows, int V, int Vp,
                                   float grad_scale, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (crossentropy_fits_in_registers(logits, Vp)) {
        crossentropy_in_registers_kernel<<<rows, CROSSENTROPY_THREADS, 0, stream>>>(logits, losses, targets, V, Vp, grad_scale);
    } else {
        bool vectorized = aligned16(logits) && (Vp * sizeof(T)) % 16 == 0;
        crossentropy_streamed_kernel<<<rows, 512, 0, stream>>>(logits, losses, targets, V, Vp, grad_scale, vectorized);
    }
    cudaCheck(cudaGetLastError());
}
