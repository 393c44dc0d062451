// GELU with the tanh approximation (GPT-2's), forward and backward, FP32 math. One thread per 16 bytes of
// elements (8 BF16 or 4 FP32: one vector load and store when the pointers are 16-byte aligned). The backward
// of a GELU whose output is not kept per layer (train_int4 recomputes it) is one pass writing both the output
// and the input gradient (dev/gelu.cu: 0.194 vs 0.268 ms for recompute + backward as two passes, d12's MLP).
#pragma once
#include "common.h"

#define GELU_SCALE 0.7978845608028654f  // sqrt(2 / pi)

__device__ __forceinline__ float gelu(float x) {
    return 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ float gelu_derivative(float x) {
    float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    float th = tanhf(u);
    float dudx = GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * dudx;
}

template <typename T>
__global__ void gelu_forward_kernel(T* out, const T* inp, long n, bool vectorized) {
    const T* inputs[1] = {inp};
    elementwise_packed(out, inputs, n, vectorized, [](const float* x) { return gelu(x[0]); });
}

template <typename T>
__global__ void gelu_backward_kernel(T* dinp, const T* inp, const T* dout, long n, bool vectorized) {
    const T* inputs[2] = {inp, dout};
    elementwise_packed(dinp, inputs, n, vectorized, [](const float* x) { return gelu_derivative(x[0]) * x[1]; });
}

template <typename T> void gelu_forward(T* out, const T* inp, long n, cudaStream_t stream) {
    NVTX_RANGE_FN();
    bool vectorized = aligned16(out) && aligned16(inp);
    gelu_forward_kernel<<<CEIL_DIV(CEIL_DIV(n, Packed<T>::size), 256), 256, 0, stream>>>(out, inp, n, vectorized);
    cudaCheck(cudaGetLastError());
}

// dinp may alias dout (in place)
template <typename T> void gelu_backward(T* dinp, const T* inp, const T* dout, long n, cudaStream_t stream) {
    NVTX_RANGE_FN();
    bool vectorized = aligned16(dinp) && aligned16(inp) && aligned16(dout);
    gelu_backward_kernel<<<CEIL_DIV(CEIL_DIV(n, Packed<T>::size), 256), 256, 0, stream>>>(dinp, inp, dout, n, vectorized);
    cudaCheck(cudaGetLastError());
}

// y = gelu(x) and dx = gelu'(x)·g (dx may alias g) in one pass: x and g read once, y and dx written once; one
// thread per 16 bytes of elements
template <typename T>
__global__ void gelu_backward_recompute_kernel(T* dx, T* y, const T* x, const T* g, long n, bool vectorized) {
    constexpr int P = Packed<T>::size;
    long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * P;
    if (vectorized && i + P <= n) {
        Packed<T> xs = Packed<T>::load(x + i), gs = Packed<T>::load(g + i), ys, dxs;
#pragma unroll
        for (int k = 0; k < P; k++) {
            float v = to_float(xs.values[k]);
            ys.values[k] = from_float<T>(gelu(v));
            dxs.values[k] = from_float<T>(gelu_derivative(v) * to_float(gs.values[k]));
        }
        ys.store(y + i);
        dxs.store(dx + i);
    } else {
        for (long j = i; j < i + P && j < n; j++) {
            float v = to_float(x[j]);
            y[j] = from_float<T>(gelu(v));
            dx[j] = from_float<T>(gelu_derivative(v) * to_float(g[j]));
        }
    }
}

// y = gelu(x) recomputed and dx = gelu'(x)·g, dx may alias g (in place)
template <typename T> void gelu_backward_recompute(T* dx, T* y, const T* x, const T* g, long n, cudaStream_t stream) {
    NVTX_RANGE_FN();
    bool vectorized = aligned16(dx) && aligned16(y) && aligned16(x) && aligned16(g);
    gelu_backward_recompute_kernel<<<CEIL_DIV(CEIL_DIV(n, Packed<T>::size), 256), 256, 0, stream>>>(dx, y, x, g, n,
                                                                                                   vectorized);
    cudaCheck(cudaGetLastError());
}
