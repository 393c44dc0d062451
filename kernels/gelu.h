// GELU with the tanh approximation (GPT-2's), forward and backward; one thread per element, FP32 math.
#pragma once
#include "common.h"

#define GELU_SCALE 0.7978845608028654f  // sqrt(2 / pi)

template <typename T>
__global__ void gelu_forward_kernel(T* out, const T* inp, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = to_float(inp[i]);
    out[i] = from_float<T>(0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + 0.044715f * x * x * x))));
}

template <typename T>
__global__ void gelu_backward_kernel(T* dinp, const T* inp, const T* dout, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = to_float(inp[i]);
    float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    float th = tanhf(u);
    float dudx = GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * dudx;
    dinp[i] = from_float<T>(grad * to_float(dout[i]));
}

template <typename T> void gelu_forward(T* out, const T* inp, long n, cudaStream_t stream) {
    NVTX_RANGE_FN();
    gelu_forward_kernel<<<CEIL_DIV(n, 256), 256, 0, stream>>>(out, inp, n);
    cudaCheck(cudaGetLastError());
}

// dinp may alias dout (in place)
template <typename T> void gelu_backward(T* dinp, const T* inp, const T* dout, long n, cudaStream_t stream) {
    NVTX_RANGE_FN();
    gelu_backward_kernel<<<CEIL_DIV(n, 256), 256, 0, stream>>>(dinp, inp, dout, n);
    cudaCheck(cudaGetLastError());
}
