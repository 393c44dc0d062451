// Fused softmax + cross-entropy in FP32 over the first V of Vp logit columns (padding columns ignored, as
// llm.c). Forward writes each row's loss; with a gradient scale it also overwrites the logits with
// dlogits = (softmax − onehot(target)) · scale (0 in padding columns). Targets of −1 are not predicted
// (BERT's unmasked positions): loss 0, gradient 0. One block per row.
#pragma once
#include "common.h"

template <typename T>
__global__ void crossentropy_forward_backward_kernel(T* logits, float* losses, const int* targets, int V, int Vp,
                                                     float grad_scale) {
    long row = blockIdx.x;
    T* x = logits + row * Vp;
    int target = targets[row];
    __shared__ float shared[32];
    float maxval = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) maxval = fmaxf(maxval, to_float(x[v]));
    for (int offset = 16; offset > 0; offset /= 2) maxval = fmaxf(maxval, __shfl_xor_sync(0xffffffff, maxval, offset));
    if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = maxval;
    __syncthreads();
    maxval = -INFINITY;
    for (int w = 0; w < (int)blockDim.x / 32; w++) maxval = fmaxf(maxval, shared[w]);
    __syncthreads();
    float sum = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) sum += expf(to_float(x[v]) - maxval);
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = sum;
    __syncthreads();
    sum = 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) sum += shared[w];
    float log_sum = logf(sum);
    if (threadIdx.x == 0) losses[row] = target >= 0 ? log_sum + maxval - to_float(x[target]) : 0.0f;
    if (grad_scale == 0.0f) return;
    __syncthreads();  // every thread has read x[target] before it is overwritten
    for (int v = threadIdx.x; v < Vp; v += blockDim.x) {
        float grad = 0.0f;
        if (v < V && target >= 0) grad = (expf(to_float(x[v]) - maxval) / sum - (v == target ? 1.0f : 0.0f)) * grad_scale;
        x[v] = from_float<T>(grad);
    }
}

// grad_scale 0: loss only (evaluation); else the loss gradient's scale, e.g. 1 / (predicted positions · accumulation steps)
template <typename T>
void crossentropy_forward_backward(T* logits, float* losses, const int* targets, long rows, int V, int Vp,
                                   float grad_scale, cudaStream_t stream) {
    NVTX_RANGE_FN();
    crossentropy_forward_backward_kernel<<<rows, 512, 0, stream>>>(logits, losses, targets, V, Vp, grad_scale);
    cudaCheck(cudaGetLastError());
}
