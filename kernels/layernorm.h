// LayerNorm over the last dimension with FP32 statistics (eps 1e-5, PyTorch's biased variance).
// Forward and the input gradient: one warp per row. Weight/bias gradients: per-chunk partial sums then an
// ordered sum over chunks (no atomics), so the result repeats bit for bit.
#pragma once
#include "common.h"

#define LAYERNORM_EPS 1e-5f
#define LAYERNORM_ROWS_PER_CHUNK 256

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
    return v;
}

template <typename T>
__global__ void layernorm_forward_kernel(T* out, float* mean, float* rstd, const T* inp, const T* weight,
                                         const T* bias, int N, int C) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= N) return;
    const T* x = inp + (long)row * C;
    float sum = 0.0f;
    for (int c = lane; c < C; c += 32) sum += to_float(x[c]);
    float m = warp_sum(sum) / C;
    float sq = 0.0f;
    for (int c = lane; c < C; c += 32) { float d = to_float(x[c]) - m; sq += d * d; }
    float s = rsqrtf(warp_sum(sq) / C + LAYERNORM_EPS);
    T* y = out + (long)row * C;
    for (int c = lane; c < C; c += 32) {
        y[c] = from_float<T>((to_float(x[c]) - m) * s * to_float(weight[c]) + to_float(bias[c]));
    }
    if (lane == 0) { mean[row] = m; rstd[row] = s; }
}

template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* weight, const T* bias, int N, int C,
                       cudaStream_t stream) {
    NVTX_RANGE_FN();
    layernorm_forward_kernel<<<CEIL_DIV(N, 8), 256, 0, stream>>>(out, mean, rstd, inp, weight, bias, N, C);
    cudaCheck(cudaGetLastError());
}

// dinp += rstd · (dnorm − mean(dnorm) − norm · mean(dnorm · norm)), dnorm = dout · weight
template <typename T>
__global__ void layernorm_backward_input_kernel(T* dinp, const T* dout, const T* inp, const T* weight,
                                                const float* mean, const float* rstd, int N, int C) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= N) return;
    const T* x = inp + (long)row * C;
    const T* dy = dout + (long)row * C;
    float m = mean[row], s = rstd[row];
    float sum_dnorm = 0.0f, sum_dnorm_norm = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float dnorm = to_float(dy[c]) * to_float(weight[c]);
        sum_dnorm += dnorm;
        sum_dnorm_norm += dnorm * (to_float(x[c]) - m) * s;
    }
    float mean_dnorm = warp_sum(sum_dnorm) / C, mean_dnorm_norm = warp_sum(sum_dnorm_norm) / C;
    T* dx = dinp + (long)row * C;
    for (int c = lane; c < C; c += 32) {
        float norm = (to_float(x[c]) - m) * s;
        float dnorm = to_float(dy[c]) * to_float(weight[c]);
        dx[c] = from_float<T>(to_float(dx[c]) + s * (dnorm - mean_dnorm - norm * mean_dnorm_norm));
    }
}

// partials[chunk][c] = Σ_rows dout·norm (first n_chunks*C floats) and Σ_rows dout (next n_chunks*C)
template <typename T>
__global__ void layernorm_param_partials_kernel(float* partials, const T* dout, const T* inp, const float* mean,
                                                const float* rstd, int N, int C) {
    __shared__ float tile_w[8][33], tile_b[8][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    int row_start = blockIdx.y * LAYERNORM_ROWS_PER_CHUNK;
    int row_end = min(row_start + LAYERNORM_ROWS_PER_CHUNK, N);
    float sum_w = 0.0f, sum_b = 0.0f;
    if (c < C) {
        for (int row = row_start + threadIdx.y; row < row_end; row += 8) {
            float dy = to_float(dout[(long)row * C + c]);
            sum_w += dy * (to_float(inp[(long)row * C + c]) - mean[row]) * rstd[row];
            sum_b += dy;
        }
    }
    tile_w[threadIdx.y][threadIdx.x] = sum_w;
    tile_b[threadIdx.y][threadIdx.x] = sum_b;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int y = 1; y < 8; y++) { sum_w += tile_w[y][threadIdx.x]; sum_b += tile_b[y][threadIdx.x]; }
        partials[(long)blockIdx.y * C + c] = sum_w;
        partials[(long)(gridDim.y + blockIdx.y) * C + c] = sum_b;
    }
}

__global__ void layernorm_param_finish_kernel(float* dweight, float* dbias, const float* partials, int n_chunks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sum_w = 0.0f, sum_b = 0.0f;
    for (int k = 0; k < n_chunks; k++) {
        sum_w += partials[(long)k * C + c];
        sum_b += partials[(long)(n_chunks + k) * C + c];
    }
    dweight[c] += sum_w;
    dbias[c] += sum_b;
}

// scratch: 2 * ceil(N / 256) * C floats
template <typename T>
void layernorm_backward(T* dinp, float* dweight, float* dbias, const T* dout, const T* inp, const T* weight,
                        const float* mean, const float* rstd, int N, int C, float* scratch, cudaStream_t stream) {
    NVTX_RANGE_FN();
    layernorm_backward_input_kernel<<<CEIL_DIV(N, 8), 256, 0, stream>>>(dinp, dout, inp, weight, mean, rstd, N, C);
    cudaCheck(cudaGetLastError());
    int n_chunks = CEIL_DIV(N, LAYERNORM_ROWS_PER_CHUNK);
    layernorm_param_partials_kernel<<<dim3(CEIL_DIV(C, 32), n_chunks), dim3(32, 8), 0, stream>>>(scratch, dout, inp,
                                                                                                  mean, rstd, N, C);
    cudaCheck(cudaGetLastError());
    layernorm_param_finish_kernel<<<CEIL_DIV(C, 256), 256, 0, stream>>>(dweight, dbias, scratch, n_chunks, C);
    cudaCheck(cudaGetLastError());
}
