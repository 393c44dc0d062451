// LayerNorm over the last dimension with FP32 statistics (eps 1e-5, PyTorch's biased variance).
// One warp per row, the row held in registers as 16-byte vectors (read once). Weight/bias gradients: one partial
// row per 256-row chunk, summed in shared memory in warp order, then an ordered sum over chunks (no atomics), so
// the result repeats bit for bit. dev/layernorm.cu has the path here (version 3) and the CPU reference.
#pragma once
#include <type_traits>
#include "common.h"

#define LAYERNORM_EPS 1e-5f
#define LAYERNORM_WARPS 8             // warps per block
#define LAYERNORM_ROWS_PER_CHUNK 256  // rows per partial row of the weight/bias gradients (a block each)
#define LAYERNORM_FINISH_THREADS_Y 16 // threads per column summing the partial rows

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
    return v;
}

// A warp's row in registers: lane l holds the 16-byte vectors l, l + 32, ..., l + 32·(V−1) of the row as loaded
// (uint4: 8 bf16 or 4 floats), value k of vector i being column (i·32 + l)·VEC + k; vectors past the row hold zeros.
template <typename T> constexpr int layernorm_vec_width() { return 16 / (int)sizeof(T); }

template <typename T>
__device__ __forceinline__ int row_vector_column(int i) { return (i * 32 + (int)threadIdx.x % 32) * layernorm_vec_width<T>(); }

__device__ __forceinline__ uint32_t uint4_word(uint4 v, int j) { return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w; }

// value k of a vector as FP32 (exact: a BF16 is the top half of its FP32 value)
template <typename T>
__device__ __forceinline__ float row_vector_value(uint4 v, int k) {
    if constexpr (std::is_same_v<T, float>) {
        return __uint_as_float(uint4_word(v, k));
    } else {
        uint32_t word = uint4_word(v, k / 2);
        return __uint_as_float(k % 2 == 0 ? word << 16 : word & 0xffff0000u);
    }
}

__device__ __forceinline__ uint32_t bf16x2_bits(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16);
}

// VEC FP32 values rounded to T, as one vector
template <typename T>
__device__ __forceinline__ uint4 pack_row_vector(const float (&x)[layernorm_vec_width<T>()]) {
    if constexpr (std::is_same_v<T, float>) {
        return make_uint4(__float_as_uint(x[0]), __float_as_uint(x[1]), __float_as_uint(x[2]), __float_as_uint(x[3]));
    } else {
        return make_uint4(bf16x2_bits(x[0], x[1]), bf16x2_bits(x[2], x[3]), bf16x2_bits(x[4], x[5]), bf16x2_bits(x[6], x[7]));
    }
}

// the lane's V vectors of a row of C values; `vectorized`: C is a multiple of VEC and the row 16-byte aligned, so a
// vector lies wholly inside the row or wholly past it (one 16-byte load); otherwise VEC scalar loads (any C)
template <typename T, int V>
__device__ __forceinline__ void load_row_vectors(uint4 (&v)[V], const T* row, int C, bool vectorized) {
#pragma unroll
    for (int i = 0; i < V; i++) {
        int c0 = row_vector_column<T>(i);
        if (vectorized) {
            v[i] = c0 < C ? *reinterpret_cast<const uint4*>(row + c0) : make_uint4(0, 0, 0, 0);
        } else {
            float x[layernorm_vec_width<T>()];
#pragma unroll
            for (int k = 0; k < layernorm_vec_width<T>(); k++) x[k] = c0 + k < C ? to_float(row[c0 + k]) : 0.0f;
            v[i] = pack_row_vector<T>(x);
        }
    }
}

// the columns below C of the lane's vector i, rounded to T
template <typename T>
__device__ __forceinline__ void store_row_vector(T* row, int i, const float (&x)[layernorm_vec_width<T>()], int C,
                                             bool vectorized) {
    int c0 = row_vector_column<T>(i);
    if (vectorized) {
        if (c0 < C) *reinterpret_cast<uint4*>(row + c0) = pack_row_vector<T>(x);
    } else {
#pragma unroll
        for (int k = 0; k < layernorm_vec_width<T>(); k++) {
            if (c0 + k < C) row[c0 + k] = from_float<T>(x[k]);
        }
    }
}

// the widest row a warp holds in registers: 16 vectors per lane (4096 BF16 or 2048 FP32 values)
template <typename T> constexpr int layernorm_max_channels() { return 16 * 32 * layernorm_vec_width<T>(); }

// calls launch(std::integral_constant<int, V>()) with the smallest V in {1, 2, 3, 4, 6, 8, 12, 16} such that V
// vectors per lane cover a row of C values; a row above layernorm_max_channels is refused (train_int4 checks
// its width against it before any GPU work)
template <typename T, typename Launch>
void with_row_vectors_per_lane(int C, Launch launch) {
    int needed = CEIL_DIV(CEIL_DIV(C, layernorm_vec_width<T>()), 32);
    if (needed <= 1) launch(std::integral_constant<int, 1>());
    else if (needed <= 2) launch(std::integral_constant<int, 2>());
    else if (needed <= 3) launch(std::integral_constant<int, 3>());
    else if (needed <= 4) launch(std::integral_constant<int, 4>());
    else if (needed <= 6) launch(std::integral_constant<int, 6>());
    else if (needed <= 8) launch(std::integral_constant<int, 8>());
    else if (needed <= 12) launch(std::integral_constant<int, 12>());
    else if (needed <= 16) launch(std::integral_constant<int, 16>());
    else {
        fprintf(stderr, "layernorm: C = %d is above the %d values a warp holds in registers\n", C,
                layernorm_max_channels<T>());
        exit(EXIT_FAILURE);
    }
}

// 16-byte loads are possible: C a multiple of the vector width and every row pointer 16-byte aligned
template <typename T>
bool layernorm_vectorizable(int C, const void* a, const void* b, const void* c, const void* d) {
    return C % layernorm_vec_width<T>() == 0 && ((uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d) % 16 == 0;
}

// out = norm·weight + bias, and mean, rstd per row;
// one warp per row, lane l holding the row's vectors l, l + 32, ... in registers (V per lane)
template <typename T, int V>
__global__ void layernorm_forward_kernel(T* out, float* mean, float* rstd, const T* inp, const T* weight,
                                         const T* bias, int N, int C, bool vectorized) {
    constexpr int VEC = layernorm_vec_width<T>();
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    uint4 x[V], w[V], b[V];
    load_row_vectors<T, V>(x, inp + (long)row * C, C, vectorized);
    load_row_vectors<T, V>(w, weight, C, vectorized);
    load_row_vectors<T, V>(b, bias, C, vectorized);
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < V; i++) {
#pragma unroll
        for (int k = 0; k < VEC; k++) sum += row_vector_value<T>(x[i], k);
    }
    float m = warp_sum(sum) / C;
    float sq = 0.0f;
#pragma unroll
    for (int i = 0; i < V; i++) {
#pragma unroll
        for (int k = 0; k < VEC; k++) {
            float d = row_vector_column<T>(i) + k < C ? row_vector_value<T>(x[i], k) - m : 0.0f;
            sq += d * d;
        }
    }
    float s = rsqrtf(warp_sum(sq) / C + LAYERNORM_EPS);
#pragma unroll
    for (int i = 0; i < V; i++) {
        float y[VEC];
#pragma unroll
        for (int k = 0; k < VEC; k++) {
            y[k] = (row_vector_value<T>(x[i], k) - m) * s * row_vector_value<T>(w[i], k) + row_vector_value<T>(b[i], k);
        }
        store_row_vector<T>(out + (long)row * C, i, y, C, vectorized);
    }
    if (threadIdx.x % 32 == 0) { mean[row] = m; rstd[row] = s; }
}

template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* weight, const T* bias, int N, int C,
                       cudaStream_t stream) {
    NVTX_RANGE_FN();
    bool vectorized = layernorm_vectorizable<T>(C, out, inp, weight, bias);
    with_row_vectors_per_lane<T>(C, [&](auto vectors) {
        constexpr int V = decltype(vectors)::value;
        layernorm_forward_kernel<T, V><<<CEIL_DIV(N, LAYERNORM_WARPS), 32 * LAYERNORM_WARPS, 0, stream>>>(
            out, mean, rstd, inp, weight, bias, N, C, vectorized);
    });
    cudaCheck(cudaGetLastError());
}

// One row's backward by one warp, the row in registers (V vectors per lane; dout, inp and dinp each read once):
// dinp += rstd·(dnorm − mean(dnorm) − norm·mean(dnorm·norm)), dnorm = dout·weight; and per column of the lane,
// sum_w += dout·norm and sum_b += dout (the weight and bias gradients' terms; columns past C add 0)
template <typename T, int V>
__device__ __forceinline__ void layernorm_backward_row(T* dinp_row, const T* dout_row, const T* inp_row,
                                                       const uint4 (&w)[V], float m, float s, int C, bool vectorized,
                                                       float (&sum_w)[V][layernorm_vec_width<T>()],
                                                       float (&sum_b)[V][layernorm_vec_width<T>()]) {
    constexpr int VEC = layernorm_vec_width<T>();
    uint4 dy[V], x[V], dx[V];
    load_row_vectors<T, V>(dy, dout_row, C, vectorized);
    load_row_vectors<T, V>(x, inp_row, C, vectorized);
    load_row_vectors<T, V>(dx, dinp_row, C, vectorized);
    float sum_dnorm = 0.0f, sum_dnorm_norm = 0.0f;  // columns past C add 0: their dout is 0
#pragma unroll
    for (int i = 0; i < V; i++) {
#pragma unroll
        for (int k = 0; k < VEC; k++) {
            float dout_value = row_vector_value<T>(dy[i], k);
            float norm = (row_vector_value<T>(x[i], k) - m) * s;
            float dnorm = dout_value * row_vector_value<T>(w[i], k);
            sum_dnorm += dnorm;
            sum_dnorm_norm += dnorm * norm;
            sum_w[i][k] += dout_value * norm;
            sum_b[i][k] += dout_value;
        }
    }
    float mean_dnorm = warp_sum(sum_dnorm) / C, mean_dnorm_norm = warp_sum(sum_dnorm_norm) / C;
#pragma unroll
    for (int i = 0; i < V; i++) {
        float y[VEC];
#pragma unroll
        for (int k = 0; k < VEC; k++) {
            float dnorm = row_vector_value<T>(dy[i], k) * row_vector_value<T>(w[i], k);
            float norm = (row_vector_value<T>(x[i], k) - m) * s;
            y[k] = row_vector_value<T>(dx[i], k) + s * (dnorm - mean_dnorm - norm * mean_dnorm_norm);
        }
        store_row_vector<T>(dinp_row, i, y, C, vectorized);
    }
}

// dinp (layernorm_backward_row) and, per ROWS-row chunk, the partial rows Σ dout·norm (partials[chunk], first
// n_chunks·C floats) and Σ dout (next n_chunks·C); one block per chunk, warp w taking rows w, w + 8, ... and
// summing its columns in registers, then the warps' sums added in warp order in shared memory (2·C floats)
template <typename T, int V, int ROWS = LAYERNORM_ROWS_PER_CHUNK>
__global__ void layernorm_backward_kernel(T* dinp, float* partials, const T* dout, const T* inp, const T* weight,
                                          const float* mean, const float* rstd, int N, int C, bool vectorized) {
    constexpr int VEC = layernorm_vec_width<T>();
    extern __shared__ float block_sums[];  // Σ dout·norm at [0, C), Σ dout at [C, 2C)
    int warp = threadIdx.x / 32;
    uint4 w[V];
    load_row_vectors<T, V>(w, weight, C, vectorized);
    float sum_w[V][VEC], sum_b[V][VEC];
#pragma unroll
    for (int i = 0; i < V; i++) {
#pragma unroll
        for (int k = 0; k < VEC; k++) sum_w[i][k] = sum_b[i][k] = 0.0f;
    }
    int row_end = min(((int)blockIdx.x + 1) * ROWS, N);
    for (int row = (int)blockIdx.x * ROWS + warp; row < row_end; row += LAYERNORM_WARPS) {
        layernorm_backward_row<T, V>(dinp + (long)row * C, dout + (long)row * C, inp + (long)row * C, w, mean[row],
                                     rstd[row], C, vectorized, sum_w, sum_b);
    }
    for (int turn = 0; turn < LAYERNORM_WARPS; turn++) {
        if (warp == turn) {
#pragma unroll
            for (int i = 0; i < V; i++) {
#pragma unroll
                for (int k = 0; k < VEC; k++) {
                    int c = row_vector_column<T>(i) + k;
                    if (c < C) {
                        block_sums[c] = turn == 0 ? sum_w[i][k] : block_sums[c] + sum_w[i][k];
                        block_sums[C + c] = turn == 0 ? sum_b[i][k] : block_sums[C + c] + sum_b[i][k];
                    }
                }
            }
        }
        __syncthreads();
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        partials[(long)blockIdx.x * C + c] = block_sums[c];
        partials[(long)(gridDim.x + blockIdx.x) * C + c] = block_sums[C + c];
    }
}

// dweight += Σ_chunks partials (Σ dout·norm), dbias += Σ_chunks (Σ dout);
// a block of 32 x 16 threads per 32 columns, thread (x, y) summing chunks y, y + 16, ..., thread (x, 0) the 16 in order
__global__ void layernorm_param_finish_kernel(float* dweight, float* dbias, const float* partials, int n_chunks, int C) {
    __shared__ float tile_w[LAYERNORM_FINISH_THREADS_Y][33], tile_b[LAYERNORM_FINISH_THREADS_Y][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    float sum_w = 0.0f, sum_b = 0.0f;
    if (c < C) {
        for (int k = threadIdx.y; k < n_chunks; k += LAYERNORM_FINISH_THREADS_Y) {
            sum_w += partials[(long)k * C + c];
            sum_b += partials[(long)(n_chunks + k) * C + c];
        }
    }
    tile_w[threadIdx.y][threadIdx.x] = sum_w;
    tile_b[threadIdx.y][threadIdx.x] = sum_b;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int y = 1; y < LAYERNORM_FINISH_THREADS_Y; y++) { sum_w += tile_w[y][threadIdx.x]; sum_b += tile_b[y][threadIdx.x]; }
        dweight[c] += sum_w;
        dbias[c] += sum_b;
    }
}

// the weight/bias gradient partials layernorm_backward writes to its scratch
inline size_t layernorm_scratch_floats(long N, int C) { return 2 * (size_t)CEIL_DIV(N, LAYERNORM_ROWS_PER_CHUNK) * C; }

// scratch: layernorm_scratch_floats(N, C)
template <typename T>
void layernorm_backward(T* dinp, float* dweight, float* dbias, const T* dout, const T* inp, const T* weight,
                        const float* mean, const float* rstd, int N, int C, float* scratch, cudaStream_t stream) {
    NVTX_RANGE_FN();
    bool vectorized = layernorm_vectorizable<T>(C, dinp, dout, inp, weight);
    int n_chunks = CEIL_DIV(N, LAYERNORM_ROWS_PER_CHUNK);
    size_t shared_bytes = 2 * (size_t)C * sizeof(float);
    with_row_vectors_per_lane<T>(C, [&](auto vectors) {
        constexpr int V = decltype(vectors)::value;
        layernorm_backward_kernel<T, V><<<n_chunks, 32 * LAYERNORM_WARPS, shared_bytes, stream>>>(
            dinp, scratch, dout, inp, weight, mean, rstd, N, C, vectorized);
    });
    cudaCheck(cudaGetLastError());
    layernorm_param_finish_kernel<<<CEIL_DIV(C, 32), dim3(32, LAYERNORM_FINISH_THREADS_Y), 0, stream>>>(
        dweight, dbias, scratch, n_chunks, C);
    cudaCheck(cudaGetLastError());
}
