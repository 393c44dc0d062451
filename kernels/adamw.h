// The optimizer, all FP32: global gradient norm (two deterministic reduction stages), then AdamW with
// decoupled weight decay and the clipping factor applied on the fly; the compute copy of the parameters
// (BF16, or the master itself in fp32 mode) is written in the same pass. One thread per parameter.
#pragma once
#include "common.h"

#define NORM_BLOCKS 1024

__global__ void squared_sum_partials_kernel(float* partials, const float* x, long n) {
    __shared__ float shared[32];
    float sum = 0.0f;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) sum += x[i] * x[i];
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        float block_sum = 0.0f;
        for (int w = 0; w < (int)blockDim.x / 32; w++) block_sum += shared[w];
        partials[blockIdx.x] = block_sum;
    }
}

// norm[0] = sqrt(Σ partials) in fixed order, by one thread
__global__ void norm_finish_kernel(float* norm, const float* partials, int n) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += partials[i];
    *norm = (float)sqrt(sum);
}

// device_norm <- ‖grads‖₂ over all n gradients; scratch: NORM_BLOCKS floats
inline void global_norm(float* device_norm, const float* grads, long n, float* scratch, cudaStream_t stream) {
    squared_sum_partials_kernel<<<NORM_BLOCKS, 256, 0, stream>>>(scratch, grads, n);
    cudaCheck(cudaGetLastError());
    norm_finish_kernel<<<1, 1, 0, stream>>>(device_norm, scratch, NORM_BLOCKS);
    cudaCheck(cudaGetLastError());
}

// p -= lr · (m̂ / (√v̂ + ε) + wd · p), with g scaled by min(1, clip / ‖g‖); bias corrections passed in.
// relative: the rate is lr·|p| instead, for scale parameters (INT4 mode's LSQ steps). Adam normalises the
// gradient away, so a plain update moves a step by ~lr in absolute terms — 10% per update for a weight step
// of 0.01 at lr 1e-3, enough to collapse it within tens of updates (measured: layer 0's QKV weight step fell
// 0.012 -> 0.001, clipping most weights). Relative updates move it by ~lr·|s|: Adam on log|s|, to first order.
template <typename T>
__global__ void adamw_kernel(float* master, T* params, const float* grads, float* m, float* v, long n, float lr,
                             float beta1, float beta2, float beta1_correction, float beta2_correction, float eps,
                             float weight_decay, const float* norm, float grad_clip, bool relative) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float clip_scale = (*norm > grad_clip) ? grad_clip / *norm : 1.0f;
    float g = grads[i] * clip_scale;
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float p = master[i];
    float rate = relative ? lr * fabsf(p) : lr;
    p -= rate * ((mi / beta1_correction) / (sqrtf(vi / beta2_correction) + eps) + weight_decay * p);
    master[i] = p;
    params[i] = from_float<T>(p);
}

template <typename T>
void adamw_update(float* master, T* params, const float* grads, float* m, float* v, long n, float lr, float beta1,
                  float beta2, int t, float eps, float weight_decay, const float* norm, float grad_clip,
                  cudaStream_t stream, bool relative = false) {
    float beta1_correction = 1.0f - powf(beta1, (float)t), beta2_correction = 1.0f - powf(beta2, (float)t);
    adamw_kernel<<<CEIL_DIV(n, 256), 256, 0, stream>>>(master, params, grads, m, v, n, lr, beta1, beta2,
                                                       beta1_correction, beta2_correction, eps, weight_decay, norm,
                                                       grad_clip, relative);
    cudaCheck(cudaGetLastError());
}
