// Residual connection: out = a + b elementwise, one thread per 16 bytes of elements (8 BF16 or 4 FP32, one
// vector load and store when the pointers are 16-byte aligned). Its backward needs no kernel: the
// residual-stream gradient flows on unchanged and each branch's layernorm backward adds into it.
#pragma once
#include "common.h"

template <typename T>
__global__ void residual_forward_kernel(T* out, const T* a, const T* b, long n, bool vectorized) {
    const T* inputs[2] = {a, b};
    elementwise_packed(out, inputs, n, vectorized, [](const float* x) { return x[0] + x[1]; });
}

template <typename T> void residual_forward(T* out, const T* a, const T* b, long n, cudaStream_t stream) {
    NVTX_RANGE_FN();
    bool vectorized = aligned16(out) && aligned16(a) && aligned16(b);
    residual_forward_kernel<<<CEIL_DIV(CEIL_DIV(n, Packed<T>::size), 256), 256, 0, stream>>>(out, a, b, n, vectorized);
    cudaCheck(cudaGetLastError());
}
