// Residual connection: out = a + b elementwise, one thread per element. Its backward needs no kernel: the
// residual-stream gradient flows on unchanged and each branch's layernorm backward adds into it.
#pragma once
#include "common.h"

template <typename T>
__global__ void residual_forward_kernel(T* out, const T* a, const T* b, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
}

template <typename T> void residual_forward(T* out, const T* a, const T* b, long n, cudaStream_t stream) {
    NVTX_RANGE_FN();
    residual_forward_kernel<<<CEIL_DIV(n, 256), 256, 0, stream>>>(out, a, b, n);
    cudaCheck(cudaGetLastError());
}
