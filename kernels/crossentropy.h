// Fused softmax + cross-entropy in FP32 over the first V of Vp logit columns (padding columns ignored, as
// llm.c). Forward writes each row's loss; with a gradient scale it also overwrites the logits with
// dlogits = (softmax − onehot(target)) · scale (0 in padding columns). Targets of −1 are not predicted
// (BERT's unmasked positions): loss 0, gradient 0. dev/crossentropy.cu checks it against a CPU reference and
// times it beside a variant that holds the row in registers (one read instead of two; slower, measured).
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

// One block per row: one read of the row keeps a running (max, sum) per thread, merged over the block; then,
// for training, a second pass overwrites the row with its gradient. 16-byte vector loads and stores when the
// rows are 16-byte aligned.
template <typename T>
__global__ void crossentropy_forward_backward_kernel(T* logits, float* losses, const int* targets, int V, int Vp,
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

// grad_scale 0: loss only (evaluation); else the loss gradient's scale, e.g. 1 / (predicted positions · accumulation steps)
template <typename T>
void crossentropy_forward_backward(T* logits, float* losses, const int* targets, long rows, int V, int Vp,
                                   float grad_scale, cudaStream_t stream) {
    NVTX_RANGE_FN();
    bool vectorized = aligned16(logits) && (Vp * sizeof(T)) % 16 == 0;
    crossentropy_forward_backward_kernel<<<rows, 512, 0, stream>>>(logits, losses, targets, V, Vp, grad_scale,
                                                                   vectorized);
    cudaCheck(cudaGetLastError());
}
