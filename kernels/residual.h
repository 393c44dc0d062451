// Residual connection: out = a + b elementwise, one thread per 16 bytes of elements (8 BF16 or 4 FP32, one
// vector load and store when the pointers are 16-byte aligned). Its backward needs no kernel: the
// residual-stream gradient flows on unchanged and each branch's layernorm backward adds into it.
#pragma once
#include "common.h"

template <typename T>
__global__ void residual_forward_kernel(T* out, const T* a, const T* b, long n, bool vectorized) {
    constexpr int P = Packed<T>::size;
    long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * P;
    if (vectorized && i + P <= n) {
        Packed<T> x = Packed<T>::load(a + i), y = Packed<T>::load(b + i), z;
#pragma unroll
        for (int k = 0; k < P; k++) z.values[k] = from_float<T>(to_float(x.values[k]) + to_float(y.values[k]));
        z.store(out + i);
    } else {
        for (long end = i + P < n ? i + P : n; i < end; i++) out[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
    }
}

template <typename T> void residual_forward(T* out, const T* a, const T* b, long n, cudaStream_t stream) {
    NVTX_RANGE_FN();
    bool vectorized = aligned16(out) && aligned16(a) && aligned16(b);
    residual_forward_kernel<<<CEIL_DIV(CEIL_DIV(n, Packed<T>::size), 256), 256, 0, stream>>>(out, a, b, n, vectorized);
    cudaCheck(cudaGetLastError());
}
