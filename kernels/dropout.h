// Dropout on a residual branch: out = inp · keep / (1 − p), keep = (u ≥ p) with u from the shared hash at
// (key, element index). The hash is stateless, so the backward recomputes the same mask instead of storing
// it. One thread per element; out may alias inp.
#pragma once
#include "rng.h"

template <typename T>
__global__ void dropout_kernel(T* out, const T* inp, long n, float p, uint32_t key) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    bool keep = rng_uniform_from_bits(rng_hash_keyed(key, (uint32_t)i)) >= p;
    out[i] = from_float<T>(keep ? to_float(inp[i]) / (1.0f - p) : 0.0f);
}

// the forward and the backward are the same map (mask and scale are their own adjoint)
template <typename T> void dropout(T* out, const T* inp, long n, float p, uint32_t key, cudaStream_t stream) {
    NVTX_RANGE_FN();
    dropout_kernel<<<CEIL_DIV(n, 256), 256, 0, stream>>>(out, inp, n, p, key);
    cudaCheck(cudaGetLastError());
}
