// Things every header needs: the host/device qualifier for shared scalar math, error checks with
// one-line messages, and a ceil-div. Nothing here depends on a GPU being present.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef __CUDACC__
#define HD __host__ __device__ __forceinline__
#else
#define HD inline
#endif

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

#ifdef __CUDACC__
#include <cuda_runtime.h>
inline void cuda_check(cudaError_t error, const char* file, int line) {
    if (error != cudaSuccess) {
        fprintf(stderr, "[CUDA ERROR] at %s:%d: %s\n", file, line, cudaGetErrorString(error));
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(err) (cuda_check(err, __FILE__, __LINE__))
#endif

#ifdef __CUDACC__
#include <cuda_bf16.h>
// activations are float (fp32 mode) or __nv_bfloat16 (bf16 and int4 modes); kernels are templates over it
template <typename T> __device__ __forceinline__ float to_float(T v) { return (float)v; }
template <> __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v) { return (T)v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }

// host-side conversion for copying parameters between FP32 master weights and the compute copy
inline __nv_bfloat16 host_float_to_bf16(float f) { return __float2bfloat16_rn(f); }
#endif
