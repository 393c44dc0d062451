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
