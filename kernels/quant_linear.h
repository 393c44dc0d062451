// The quantized linear layer of train_int4's INT4 mode (../shared/method.md): HQ-MM forward, BS + LSS
// backward, as kernels/int4_reference.h computes it on the CPU (same scalar functions, same FP32 order).
// INT4 codes are held one per int8 and multiplied on the s8 tensor cores (INT32 accumulation): the integers are
// exactly those of an INT4 GEMM, and a bit-split gradient (14·high + low) is one INT8 operand. On sm_90a the
// forward GEMM dequantizes in its epilogue (kernels/s8_wgmma_gemm.h), elsewhere cuBLASLt writes INT32 and a second
// kernel dequantizes. Nothing here allocates or waits for the host: LSS runs on the device (kernels/lss.h)
// and the ∇W GEMM reduces over the kept token rows only (kernels/s8_wgmma_gemm.h reads their count on the
// device; on sm_90a, for whole 128 x 128 tiles) or else, through cuBLASLt, which needs its sizes on the host,
// over all token rows padded to 16 (the kept rows first, the rest zero). Codes are recomputed from the saved
// BF16/FP32 input in the backward and transposes are separate passes; the fused, packed variants are in dev/.
#pragma once
#include <algorithm>
#include "common.h"
#include "int4_math.h"
#include "s8_wgmma_gemm.h"
#include "lss.h"
#include "matmul.h"
#include "rng.h"

// C (m x n, column-major, int32) = op(A) · op(B) on the s8 tensor cores: A is k x m and B is k x n, both
// stored with k contiguous (the "TN" layout integer GEMMs require)
inline void int8_matmul_tn(int32_t* c, const int8_t* a, const int8_t* b, int m, int n, int k, cudaStream_t stream) {
    cublasLtMatmulDesc_t desc;
    cublasCheck(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32I, CUDA_R_32I));
    cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof op_t));
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof op_n));
    cublasLtMatrixLayout_t layout_a, layout_b, layout_c;
    cublasCheck(cublasLtMatrixLayoutCreate(&layout_a, CUDA_R_8I, k, m, k));
    cublasCheck(cublasLtMatrixLayoutCreate(&layout_b, CUDA_R_8I, k, n, k));
    cublasCheck(cublasLtMatrixLayoutCreate(&layout_c, CUDA_R_32I, m, n, m));
    int32_t alpha = 1, beta = 0;
    cublaslt_run(desc, layout_a, layout_b, layout_c, &alpha, a, b, &beta, c, stream);
}

// The block Hadamard transform with lane l holding the V contiguous values lV .. lV+V−1 of 32·V consecutive
// values (G <= 32·V, V <= G): stages h < V pair registers i and i + h, stages h >= V exchange with lane l ^ (h/V).
// Every stage forms the same a+b / a−b from the same operands as hadamard_block_inplace: bit-identical to it.
template <int G, int V>
__device__ __forceinline__ void hadamard_lanes(float* v) {
    int lane = threadIdx.x % 32;
#pragma unroll
    for (int h = 1; h < G; h *= 2) {
        if (h < V) {
#pragma unroll
            for (int i = 0; i < V; i++) {
                if (i & h) continue;
                float a = v[i], b = v[i + h];
                v[i] = F32_ADD(a, b);
                v[i + h] = F32_SUB(a, b);
            }
        } else {
#pragma unroll
            for (int i = 0; i < V; i++) {
                float partner = __shfl_xor_sync(0xffffffff, v[i], h / V);
                v[i] = (lane & (h / V)) ? F32_SUB(partner, v[i]) : F32_ADD(v[i], partner);
            }
        }
    }
    float norm = hadamard_norm(G);
#pragma unroll
    for (int i = 0; i < V; i++) v[i] = F32_MUL(v[i], norm);
}

// codes = q(v·H) for a flat tensor of total values (a multiple of G; blocks never cross rows), one INT4 code per
// byte (the s8 GEMM's operand). A thread per V = 16/sizeof(T) contiguous values: one 16-byte load, the transform
// in registers and shuffles (hadamard_lanes), one V-byte store. v must be 16-byte aligned.
template <typename T, int G>
__global__ void hadamard_quantize_kernel(int8_t* codes, const T* v, long total, const float* step) {
    constexpr int V = Packed<T>::size;
    long e = ((long)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (e - (long)(threadIdx.x % 32) * V >= total) return;  // the whole warp: its first value is past the end
    bool inside = e < total;  // a lane's V values (and a G-block) are all inside or all outside: V | G | total
    float x[V];
    Packed<T> in;
    if (inside) in = Packed<T>::load(v + e);
#pragma unroll
    for (int i = 0; i < V; i++) x[i] = inside ? to_float(in.values[i]) : 0.0f;
    hadamard_lanes<G, V>(x);
    if (!inside) return;
    float step_abs = fabsf(*step);
    uint32_t words[V / 4];
#pragma unroll
    for (int w = 0; w < V / 4; w++) words[w] = 0;
#pragma unroll
    for (int i = 0; i < V; i++) {
        words[i / 4] |= (uint32_t)(uint8_t)(int8_t)quantize_int4(x[i], step_abs) << (8 * (i % 4));
    }
    if constexpr (V == 8) {
        *reinterpret_cast<uint2*>(codes + e) = make_uint2(words[0], words[1]);
    } else {
        *reinterpret_cast<uint32_t*>(codes + e) = words[0];
    }
}

// out (cols x rows) = inᵀ for an int8 (rows x cols) matrix: a 32 x 32 tile per block of 32 x 8 threads, read
// along in's rows and written along out's rows through shared memory
__global__ void transpose_codes_kernel(int8_t* out, const int8_t* in, int rows, int cols) {
    __shared__ int8_t tile[32][33];
    int row0 = blockIdx.y * 32, col0 = blockIdx.x * 32;
    for (int k = threadIdx.y; k < 32; k += blockDim.y) {
        int row = row0 + k, col = col0 + threadIdx.x;
        if (row < rows && col < cols) tile[k][threadIdx.x] = in[(long)row * cols + col];
    }
    __syncthreads();
    for (int k = threadIdx.y; k < 32; k += blockDim.y) {
        int col = col0 + k, row = row0 + threadIdx.x;
        if (row < rows && col < cols) out[(long)col * rows + row] = tile[threadIdx.x][k];
    }
}

// y = acc · (|s_x|·|s_w|) + b, rounded like the reference (product, then sum); a thread per P = 16/sizeof(T)
// consecutive values of a row (M % P == 0): two or one 16-byte loads of acc, one 16-byte store
template <typename T>
__global__ void dequantize_bias_kernel(T* out, const int32_t* acc, const T* bias, int vectors, int M, const float* step_x,
                                       const float* step_w) {
    constexpr int P = Packed<T>::size;
    int vector = blockIdx.x * blockDim.x + threadIdx.x;
    if (vector >= vectors) return;
    long i = (long)vector * P;
    int c = (vector % (M / P)) * P;
    float scale = __fmul_rn(fabsf(*step_x), fabsf(*step_w));
    int32_t a[P];
#pragma unroll
    for (int k = 0; k < P; k += 4) *reinterpret_cast<int4*>(a + k) = *reinterpret_cast<const int4*>(acc + i + k);
    Packed<T> y;
#pragma unroll
    for (int k = 0; k < P; k++) {
        float v = __fmul_rn((float)a[k], scale);
        y.values[k] = from_float<T>(bias ? __fadd_rn(v, to_float(bias[c + k])) : v);
    }
    y.store(out + i);
}

// The row pass of the backward over dy (rows x M): one warp per row, lane l holding the 16-byte vectors l, l+32, ..
// First max |g| and Σg² (FP64, exact terms) in one read, and Σx̂² over the row's codes (x̂ = code·|s_x|, FP64);
// then the row again (from cache) into the ∇X GEMM's INT8 operand 14·high + low, u = rng(key, row·M + col), 8 or
// 4 bytes per store. Per row it writes max |g| (LSS's kept-row maximum reads it), the ∇X coefficient |s_w| / scale
// (0 for an all-zero row) and the leverage score ‖g‖·‖x̂‖. M % (16/sizeof(T)) == 0, K % 16 == 0, rows 16-byte aligned.
template <typename T>
__global__ void bitsplit_scores_rows_kernel(int8_t* operand, float* row_absmax, float* row_coef, float* scores,
                                            const T* dy, int rows, int M, const int8_t* codes_x, int K,
                                            const float* step_x, const float* step_w, uint32_t key) {
    constexpr int V = Packed<T>::size;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;  // the whole warp
    const T* g_row = dy + (long)row * M;
    float absmax = 0.0f;
    double dy_sq = 0.0, x_sq = 0.0;
#pragma unroll 4
    for (int c = lane * V; c < M; c += 32 * V) {
        Packed<T> g = Packed<T>::load(g_row + c);
#pragma unroll
        for (int i = 0; i < V; i++) {
            float v = to_float(g.values[i]);
            absmax = fmaxf(absmax, fabsf(v));
            dy_sq += (double)v * v;
        }
    }
    float step_abs = fabsf(*step_x);
    const int8_t* codes_row = codes_x + (long)row * K;
    for (int k = lane * 16; k < K; k += 32 * 16) {
        uint4 bits = *reinterpret_cast<const uint4*>(codes_row + k);
        const uint32_t words[4] = {bits.x, bits.y, bits.z, bits.w};
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float x_hat = F32_MUL((float)(int8_t)(words[i / 4] >> (8 * (i % 4))), step_abs);
            x_sq += (double)x_hat * x_hat;
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) absmax = fmaxf(absmax, __shfl_xor_sync(0xffffffff, absmax, offset));
    dy_sq = lss_warp_sum(dy_sq);
    x_sq = lss_warp_sum(x_sq);
    float scale = bitsplit_scale(absmax);
    if (lane == 0) {
        row_absmax[row] = absmax;
        row_coef[row] = scale > 0.0f ? __fdiv_rn(fabsf(*step_w), scale) : 0.0f;
        scores[row] = (float)(sqrt(dy_sq) * sqrt(x_sq));
    }
    for (int c = lane * V; c < M; c += 32 * V) {
        Packed<T> g = Packed<T>::load(g_row + c);
        uint32_t words[V / 4];
#pragma unroll
        for (int w = 0; w < V / 4; w++) words[w] = 0;
#pragma unroll
        for (int i = 0; i < V; i++) {
            float u = rng_uniform_from_bits(rng_hash_keyed(key, (uint32_t)((long)row * M + c + i)));
            int op = bitsplit_value(to_float(g.values[i]), scale, u, nullptr, nullptr);
            words[i / 4] |= (uint32_t)(uint8_t)(int8_t)op << (8 * (i % 4));
        }
        if constexpr (V == 8) {
            *reinterpret_cast<uint2*>(operand + (long)row * M + c) = make_uint2(words[0], words[1]);
        } else {
            *reinterpret_cast<uint32_t*>(operand + (long)row * M + c) = words[0];
        }
    }
}

#define LSS_GATHER_TILE 64  // kept rows x columns per block of lss_gather_kernel

// for kept row j (original row i): operand_t[c][j] = bitsplit(dy[i][c] / p_j) with u = rng(key, i·M + c),
// codes_t[k][j] = codes_x[i][k]; columns j >= *n_kept (up to n_padded) are zero. A block per 64 x 64 tile
// (blockIdx.x: 64 columns j, blockIdx.y: 64 columns c or k): read along the rows of dy and codes_x, transposed
// in shared memory, written along the rows of operand_t and codes_t, 4 bytes (4 j) per thread.
template <typename T>
__global__ void lss_gather_kernel(int8_t* operand_t, int8_t* codes_t, const T* dy, const int8_t* codes_x, int M, int K,
                                  const int* kept_rows, const float* kept_probs, const int* n_kept, int n_padded,
                                  const unsigned int* absmax_bits, uint32_t key) {
    constexpr int TILE = LSS_GATHER_TILE, PITCH = TILE + 4;  // PITCH: a row of 17 words, conflict-free stores
    __shared__ __align__(4) int8_t operand_tile[TILE][PITCH];  // [c - c0][j - j0]
    __shared__ __align__(4) int8_t codes_tile[TILE][PITCH];
    __shared__ int tile_rows[TILE];
    __shared__ float tile_probs[TILE];
    int j0 = blockIdx.x * TILE, c0 = blockIdx.y * TILE;
    int kept = min(max(*n_kept - j0, 0), TILE);  // kept rows in this tile: the first `kept` j
    bool has_operand = c0 < M, has_codes = c0 < K;
    if (kept > 0) {
        for (int t = threadIdx.x; t < kept; t += blockDim.x) {
            tile_rows[t] = kept_rows[j0 + t];
            tile_probs[t] = kept_probs[j0 + t];
        }
        __syncthreads();
        if (has_operand) {
            float scale = bitsplit_scale(__uint_as_float(*absmax_bits));
            for (int t = threadIdx.x; t < TILE * TILE; t += blockDim.x) {
                int jt = t / TILE, ct = t % TILE, c = c0 + ct;
                if (jt >= kept || c >= M) continue;
                long src = (long)tile_rows[jt] * M + c;
                float u = rng_uniform_from_bits(rng_hash_keyed(key, (uint32_t)src));
                operand_tile[ct][jt] =
                    (int8_t)bitsplit_value(__fdiv_rn(to_float(dy[src]), tile_probs[jt]), scale, u, nullptr, nullptr);
            }
        }
        if (has_codes) {  // 4 codes per thread (K % 16 == 0: rows of whole Hadamard blocks)
            for (int t = threadIdx.x; t < TILE * TILE / 4; t += blockDim.x) {
                int jt = t / (TILE / 4), kt = 4 * (t % (TILE / 4)), k = c0 + kt;
                if (jt >= kept || k >= K) continue;
                uint32_t word = *reinterpret_cast<const uint32_t*>(codes_x + (long)tile_rows[jt] * K + k);
#pragma unroll
                for (int i = 0; i < 4; i++) codes_tile[kt + i][jt] = (int8_t)(word >> (8 * i));
            }
        }
        __syncthreads();
    }
    // write: thread t covers j = j0 + 4·(t % 16) .. +3 of tile row t / 16 (+ 16 per step); n_padded % 16 == 0
    for (int t = threadIdx.x; t < TILE * TILE / 4; t += blockDim.x) {
        int ct = t / (TILE / 4), jt = 4 * (t % (TILE / 4)), c = c0 + ct, j = j0 + jt;
        if (j >= n_padded) continue;
        uint32_t operand_word = 0, codes_word = 0;
        if (jt < kept) {  // j < *n_kept: the bytes of j past *n_kept are zeroed below
            operand_word = *reinterpret_cast<const uint32_t*>(&operand_tile[ct][jt]);
            codes_word = *reinterpret_cast<const uint32_t*>(&codes_tile[ct][jt]);
            int real = kept - jt;  // < 4: only the low `real` bytes are kept rows
            if (real < 4) {
                uint32_t mask = (1u << (8 * real)) - 1u;
                operand_word &= mask;
                codes_word &= mask;
            }
        }
        if (c < M) *reinterpret_cast<uint32_t*>(operand_t + (long)c * n_padded + j) = operand_word;
        if (c < K) *reinterpret_cast<uint32_t*>(codes_t + (long)c * n_padded + j) = codes_word;
    }
}

// Backward finish for one operand: v̂-gradient = acc · coef (coef per row, or the tensor's), the
// straight-through mask on ṽ = v·H (recomputed), step-gradient partial Σ v̂-grad · term(ṽ), and the gradient
// back through H. out: written (TOut = activation type) or accumulated (FP32 weight gradient). Lane l of a warp
// holds the V = 16/sizeof(TIn) consecutive values lV .. lV+V−1 of 32·V (one 16-byte load of v, V/4 of acc), the
// transforms in registers and shuffles (hadamard_lanes); a grid-stride loop over a fixed grid steps each lane's
// row along without division. Step-gradient partials: one per block, summed by lsq_step_grad_finish_kernel.
template <typename TIn, typename TOut, int G>
__global__ void quant_backward_finish_kernel(TOut* out, bool accumulate, float* step_partials, const int32_t* acc,
                                             const float* row_coef, const float* tensor_coef, const TIn* v, int rows,
                                             int K, const float* step) {
    constexpr int V = Packed<TIn>::size, VO = Packed<TOut>::size;
    __shared__ float shared[32];
    long total = (long)rows * K;
    int lane = threadIdx.x % 32;
    long warp = ((long)blockIdx.x * blockDim.x + threadIdx.x) / 32, warps = (long)gridDim.x * blockDim.x / 32;
    long first = warp * 32 * V + lane * V, stride = warps * 32 * V;  // this lane's first value; V | K: one row
    int row = (int)(first / K), col = (int)(first % K);
    int stride_rows = (int)(stride / K), stride_cols = (int)(stride % K);
    float partial = 0.0f;
    float step_abs = fabsf(*step);
    float coef_tensor = row_coef ? 0.0f : *tensor_coef;
    for (long e = first; e - lane * V < total; e += stride) {  // warp-uniform: the warp's first value is inside
        bool inside = e < total;
        float v_tilde[V], grad[V];
        int32_t a[V];
        if (inside) {
            Packed<TIn> in = Packed<TIn>::load(v + e);
#pragma unroll
            for (int i = 0; i < V; i++) v_tilde[i] = to_float(in.values[i]);
#pragma unroll
            for (int i = 0; i < V; i += 4) *reinterpret_cast<int4*>(a + i) = *reinterpret_cast<const int4*>(acc + e + i);
        } else {
#pragma unroll
            for (int i = 0; i < V; i++) {
                v_tilde[i] = 0.0f;
                a[i] = 0;
            }
        }
        float coef = row_coef ? (inside ? row_coef[row] : 0.0f) : coef_tensor;
        hadamard_lanes<G, V>(v_tilde);
#pragma unroll
        for (int i = 0; i < V; i++) {
            float grad_hat = __fmul_rn((float)a[i], coef);
            partial += grad_hat * lsq_step_grad_term(v_tilde[i], step_abs);
            grad[i] = __fmul_rn(grad_hat, lsq_in_range(v_tilde[i], step_abs) ? 1.0f : 0.0f);
        }
        hadamard_lanes<G, V>(grad);
        if (inside) {
#pragma unroll
            for (int j = 0; j < V; j += VO) {
                Packed<TOut> o;
                if (accumulate) o = Packed<TOut>::load(out + e + j);
#pragma unroll
                for (int i = 0; i < VO; i++) {
                    o.values[i] = from_float<TOut>(accumulate ? to_float(o.values[i]) + grad[j + i] : grad[j + i]);
                }
                o.store(out + e + j);
            }
        }
        row += stride_rows;
        col += stride_cols;
        if (col >= K) {
            col -= K;
            row++;
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) partial += __shfl_xor_sync(0xffffffff, partial, offset);
    if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = partial;
    __syncthreads();
    if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (int w = 0; w < (int)blockDim.x / 32; w++) sum += shared[w];
        step_partials[blockIdx.x] = sum;
    }
}

// grad_step += sign(s) · Σ partials / √(numel·7): one warp, each lane summing every 32nd partial in order in
// double, then a fixed shuffle tree
__global__ void lsq_step_grad_finish_kernel(float* grad_step, const float* partials, int n, const float* step, double numel) {
    double sum = 0.0;
    for (int i = threadIdx.x; i < n; i += 32) sum += partials[i];
    sum = lss_warp_sum(sum);
    if (threadIdx.x != 0) return;
    float g = (float)(sum / sqrt(numel * 7.0));
    *grad_step += *step > 0.0f ? g : (*step < 0.0f ? -g : 0.0f);
}

// the ∇W coefficient |s_x| / scale of the per-tensor bit split, scale = 98 / max|dy_i / p_i| (0 if all zero)
__global__ void tensor_coef_kernel(float* coef, const unsigned int* absmax_bits, const float* step_x) {
    float scale = bitsplit_scale(__uint_as_float(*absmax_bits));
    *coef = scale > 0.0f ? F32_DIV(fabsf(*step_x), scale) : 0.0f;
}

// Scratch for the largest layer; reused by every quantized layer (one layer at a time). LSS's single-block
// water-filling runs on side_stream while the ∇X GEMM and finish run on the layer's stream (two events join them)
struct QuantScratch {
    int8_t *codes_x, *codes_w, *codes_w_t, *operand, *operand_t, *codes_x_t;
    int32_t* acc;
    float *row_absmax, *row_coef, *scores, *kept_probs, *step_partials, *tensor_coef;
    int *kept_rows, *n_kept;
    unsigned int* absmax_bits;
    cudaStream_t side_stream;
    cudaEvent_t rows_done, keep_done;
    bool wgmma;   // kernels/s8_wgmma_gemm.h's sm_90a code runs here: dequant_gemm forward, ∇W over the kept rows
    int sms;      // the device's multiprocessors: kept_rows_gemm's split count, dequant_gemm's blocks
};

#define QUANT_THREADS 128
#define ROW_PASS_WARPS 8         // rows (one per warp) per block of bitsplit_scores_rows_kernel
#define FINISH_MAX_BLOCKS 2048  // the backward finish's fixed grid (full occupancy), and its step-gradient partials

// the scratch buffers for N rows and dimensions up to max_dim: where each pointer lives and its size in bytes
#define QUANT_SCRATCH_BUFFERS 16
inline void quant_scratch_layout(QuantScratch* s, long N, int max_dim, void** where[QUANT_SCRATCH_BUFFERS],
                                 size_t bytes[QUANT_SCRATCH_BUFFERS]) {
    size_t n = (size_t)N, n_padded = CEIL_DIV(n, 16) * 16, dim = (size_t)max_dim;
    size_t big = std::max(n, dim) * dim;
    void** pointers[QUANT_SCRATCH_BUFFERS] = {
        (void**)&s->codes_x, (void**)&s->codes_w, (void**)&s->codes_w_t, (void**)&s->operand, (void**)&s->operand_t,
        (void**)&s->codes_x_t, (void**)&s->acc, (void**)&s->row_absmax, (void**)&s->row_coef, (void**)&s->scores,
        (void**)&s->kept_probs, (void**)&s->kept_rows, (void**)&s->step_partials, (void**)&s->absmax_bits,
        (void**)&s->n_kept, (void**)&s->tensor_coef};
    size_t sizes[QUANT_SCRATCH_BUFFERS] = {
        big, dim * dim, dim * dim, big, n_padded * dim, n_padded * dim, big * sizeof(int32_t), n * sizeof(float),
        n * sizeof(float), n * sizeof(float), n * sizeof(float), n * sizeof(int), FINISH_MAX_BLOCKS * sizeof(float),
        sizeof(unsigned int), sizeof(int), sizeof(float)};
    for (int i = 0; i < QUANT_SCRATCH_BUFFERS; i++) {
        where[i] = pointers[i];
        bytes[i] = sizes[i];
    }
}

// GPU memory quant_scratch_alloc takes (train_int4's memory check counts it)
inline size_t quant_scratch_bytes(long N, int max_dim) {
    QuantScratch s;
    void** where[QUANT_SCRATCH_BUFFERS];
    size_t bytes[QUANT_SCRATCH_BUFFERS], total = 0;
    quant_scratch_layout(&s, N, max_dim, where, bytes);
    for (size_t b : bytes) total += b;
    return total;
}

inline void quant_scratch_alloc(QuantScratch* s, long N, int max_dim) {
    void** where[QUANT_SCRATCH_BUFFERS];
    size_t bytes[QUANT_SCRATCH_BUFFERS];
    quant_scratch_layout(s, N, max_dim, where, bytes);
    for (int i = 0; i < QUANT_SCRATCH_BUFFERS; i++) cudaCheck(cudaMalloc(where[i], bytes[i]));
    cudaCheck(cudaStreamCreateWithFlags(&s->side_stream, cudaStreamNonBlocking));
    cudaCheck(cudaEventCreateWithFlags(&s->rows_done, cudaEventDisableTiming));
    cudaCheck(cudaEventCreateWithFlags(&s->keep_done, cudaEventDisableTiming));
    s->wgmma = hopper_wgmma_available();
    int device;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&s->sms, cudaDevAttrMultiProcessorCount, device));
}

inline void quant_scratch_free(QuantScratch* s) {
    void** where[QUANT_SCRATCH_BUFFERS];
    size_t bytes[QUANT_SCRATCH_BUFFERS];
    quant_scratch_layout(s, 1, 1, where, bytes);
    for (void** p : where) cudaCheck(cudaFree(*p));
    cudaCheck(cudaStreamDestroy(s->side_stream));
    cudaCheck(cudaEventDestroy(s->rows_done));
    cudaCheck(cudaEventDestroy(s->keep_done));
}

// the layer's kernels move 16-byte vectors: pointers 16-byte aligned, rows a whole number of vectors
inline void quant_check_vectors(const char* what, const void* p, long row_bytes) {
    if (!aligned16(p) || row_bytes % 16 != 0) {
        fprintf(stderr, "%s: needs a 16-byte aligned tensor whose rows are a multiple of 16 bytes (row: %ld bytes)\n",
                what, row_bytes);
        exit(EXIT_FAILURE);
    }
}

// codes = q(v·H) (rows x K), and if codes_transposed is not null also its transpose (K x rows)
template <typename T>
void hadamard_quantize(int8_t* codes, int8_t* codes_transposed, const T* v, int rows, int K, int g, const float* step,
                       cudaStream_t stream) {
    quant_check_vectors("hadamard_quantize", v, (long)K * sizeof(T));
    long total = (long)rows * K, blocks = CEIL_DIV(total / (long)(16 / sizeof(T)), QUANT_THREADS);
    switch (g) {
        case 16: hadamard_quantize_kernel<T, 16><<<blocks, QUANT_THREADS, 0, stream>>>(codes, v, total, step); break;
        case 32: hadamard_quantize_kernel<T, 32><<<blocks, QUANT_THREADS, 0, stream>>>(codes, v, total, step); break;
        case 64: hadamard_quantize_kernel<T, 64><<<blocks, QUANT_THREADS, 0, stream>>>(codes, v, total, step); break;
        default: hadamard_quantize_kernel<T, 128><<<blocks, QUANT_THREADS, 0, stream>>>(codes, v, total, step); break;
    }
    cudaCheck(cudaGetLastError());
    if (codes_transposed) {
        transpose_codes_kernel<<<dim3(CEIL_DIV(K, 32), CEIL_DIV(rows, 32)), dim3(32, 8), 0, stream>>>(codes_transposed,
                                                                                                     codes, rows, K);
        cudaCheck(cudaGetLastError());
    }
}

// the backward finish of one operand (see quant_backward_finish_kernel), then its step gradient
template <typename TIn, typename TOut>
void quant_backward_finish(TOut* out, bool accumulate, const int32_t* acc, const float* row_coef,
                           const float* tensor_coef, const TIn* v, int rows, int K, int g, const float* step,
                           float* grad_step, float* step_partials, cudaStream_t stream) {
    quant_check_vectors("quant_backward_finish", v, (long)K * sizeof(TIn));
    quant_check_vectors("quant_backward_finish", out, (long)K * sizeof(TOut));
    long vectors = (long)rows * K / Packed<TIn>::size;
    long blocks = std::min(CEIL_DIV(vectors, (long)QUANT_THREADS), (long)FINISH_MAX_BLOCKS);
    switch (g) {
        case 16: quant_backward_finish_kernel<TIn, TOut, 16><<<blocks, QUANT_THREADS, 0, stream>>>(out, accumulate, step_partials, acc, row_coef, tensor_coef, v, rows, K, step); break;
        case 32: quant_backward_finish_kernel<TIn, TOut, 32><<<blocks, QUANT_THREADS, 0, stream>>>(out, accumulate, step_partials, acc, row_coef, tensor_coef, v, rows, K, step); break;
        case 64: quant_backward_finish_kernel<TIn, TOut, 64><<<blocks, QUANT_THREADS, 0, stream>>>(out, accumulate, step_partials, acc, row_coef, tensor_coef, v, rows, K, step); break;
        default: quant_backward_finish_kernel<TIn, TOut, 128><<<blocks, QUANT_THREADS, 0, stream>>>(out, accumulate, step_partials, acc, row_coef, tensor_coef, v, rows, K, step); break;
    }
    cudaCheck(cudaGetLastError());
    lsq_step_grad_finish_kernel<<<1, 32, 0, stream>>>(grad_step, step_partials, (int)blocks, step, (double)rows * K);
    cudaCheck(cudaGetLastError());
}

// HQ-MM forward: out (N x M) = |s_x|·|s_w| · q(inp·H) · q(weight·H)ᵀ + bias
template <typename T>
void quant_linear_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int K, int M, int g,
                          const float* step_x, const float* step_w, QuantScratch& s, cudaStream_t stream) {
    NVTX_RANGE_FN();
    hadamard_quantize(s.codes_x, (int8_t*)nullptr, inp, N, K, g, step_x, stream);
    hadamard_quantize(s.codes_w, (int8_t*)nullptr, weight, M, K, g, step_w, stream);
    if (s.wgmma && dequant_gemm_fits(K)) {
        dequant_gemm(out, s.codes_x, s.codes_w, bias, N, M, K, step_x, step_w, s.sms, stream);
        return;
    }
    int8_matmul_tn(s.acc, s.codes_w, s.codes_x, M, N, K, stream);  // column-major M x N = row-major N x M
    quant_check_vectors("quant_linear_forward", out, (long)M * sizeof(T));
    int vectors = (int)((long)N * M / Packed<T>::size);
    dequantize_bias_kernel<<<CEIL_DIV(vectors, 256), 256, 0, stream>>>(out, s.acc, bias, vectors, M, step_x, step_w);
    cudaCheck(cudaGetLastError());
}

// BS + LSS backward: dinp (N x K) written, dweight (M x K) and dbias (M) accumulated (FP32), the two step
// gradients accumulated; lss_stats (device, 2 floats): the kept fraction and variance proxy (telemetry).
// Draws: streams (micro_step, linear_index, use) of seed, as the reference.
template <typename T>
void quant_linear_backward(T* dinp, float* dweight, float* dbias, float* dstep_x, float* dstep_w, const T* dout,
                           const T* inp, const T* weight, int N, int K, int M, int g, const float* step_x,
                           const float* step_w, float keep_ratio, uint32_t seed, uint32_t micro_step,
                           uint32_t linear_index, float* lss_stats, QuantScratch& s, float* reduce_scratch,
                           cudaStream_t stream) {
    NVTX_RANGE_FN();
    // recompute the forward's codes (steps are unchanged within a micro-step); the weight also transposed
    hadamard_quantize(s.codes_x, (int8_t*)nullptr, inp, N, K, g, step_x, stream);
    hadamard_quantize(s.codes_w, s.codes_w_t, weight, M, K, g, step_w, stream);
    if (dbias) bias_backward(dbias, dout, N, M, reduce_scratch, stream);
    // one pass over dout's rows: the ∇X operand (per-row bit split) and coefficients, the leverage scores
    quant_check_vectors("quant_linear_backward", dout, (long)M * sizeof(T));
    uint32_t key_dx = rng_key(seed, rng_stream_train(micro_step, linear_index, RNG_USE_DX_ROUND));
    bitsplit_scores_rows_kernel<<<CEIL_DIV(N, ROW_PASS_WARPS), 32 * ROW_PASS_WARPS, 0, stream>>>(
        s.operand, s.row_absmax, s.row_coef, s.scores, dout, N, M, s.codes_x, K, step_x, step_w, key_dx);
    cudaCheck(cudaGetLastError());
    // LSS on the side stream (one block, latency-bound): water-filling, keep, compaction, max |dy_i / p_i|
    uint32_t key_keep = rng_key(seed, rng_stream_train(micro_step, linear_index, RNG_USE_LSS_KEEP));
    cudaCheck(cudaEventRecord(s.rows_done, stream));
    cudaCheck(cudaStreamWaitEvent(s.side_stream, s.rows_done, 0));
    lss_keep_rows_kernel<<<1, LSS_KEEP_THREADS, 0, s.side_stream>>>(s.kept_rows, s.kept_probs, s.n_kept, lss_stats,
                                                                    (float*)nullptr, (int*)nullptr, s.absmax_bits,
                                                                    s.scores, s.row_absmax, N, keep_ratio, key_keep);
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaEventRecord(s.keep_done, s.side_stream));
    // ∇X: s8 GEMM over M, then mask / step gradient / Hadamard per block
    int8_matmul_tn(s.acc, s.codes_w_t, s.operand, K, N, M, stream);  // row-major N x K
    quant_backward_finish(dinp, false, s.acc, s.row_coef, (const float*)nullptr, inp, N, K, g, step_x, dstep_x,
                          s.step_partials, stream);
    // ∇W: kept rows gathered (scaled by 1/p) and bit-split with one tensor scale; the s8 GEMM over the kept token
    // columns where kept_rows_gemm runs, else over all n_padded (zeros past n_kept) with cuBLASLt
    cudaCheck(cudaStreamWaitEvent(stream, s.keep_done, 0));
    uint32_t key_dw = rng_key(seed, rng_stream_train(micro_step, linear_index, RNG_USE_DW_ROUND));
    int n_padded = CEIL_DIV(N, 16) * 16;
    dim3 gather_tiles(CEIL_DIV(n_padded, LSS_GATHER_TILE), CEIL_DIV(std::max(M, K), LSS_GATHER_TILE));
    lss_gather_kernel<<<gather_tiles, 256, 0, stream>>>(s.operand_t, s.codes_x_t, dout, s.codes_x, M, K, s.kept_rows,
                                                        s.kept_probs, s.n_kept, n_padded, s.absmax_bits, key_dw);
    cudaCheck(cudaGetLastError());
    if (s.wgmma && kept_rows_gemm_fits(M, K, n_padded)) {
        int expected_k_tiles = (int)ceilf(keep_ratio * n_padded / S8_TILE);
        int splits = kept_rows_gemm_splits((M / S8_TILE) * (K / S8_TILE), s.sms, expected_k_tiles);
        kept_rows_gemm(s.acc, s.operand_t, s.codes_x_t, M, K, n_padded, s.n_kept, splits, stream);  // M x K
    } else {
        int8_matmul_tn(s.acc, s.codes_x_t, s.operand_t, K, M, n_padded, stream);  // row-major M x K
    }
    tensor_coef_kernel<<<1, 1, 0, stream>>>(s.tensor_coef, s.absmax_bits, step_x);
    cudaCheck(cudaGetLastError());
    quant_backward_finish(dweight, true, s.acc, (const float*)nullptr, s.tensor_coef, weight, M, K, g, step_w, dstep_w,
                          s.step_partials, stream);
    cudaCheck(cudaGetLastError());
}
