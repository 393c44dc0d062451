// The quantized linear layer of train_int4's INT4 mode (../shared/method.md): HQ-MM forward, BS + LSS
// backward, as kernels/int4_reference.h computes it on the CPU (same scalar functions, same FP32 order).
// INT4 codes are held one per int8 and multiplied on the s8 tensor cores through cuBLASLt (INT32
// accumulation): the integers are exactly those of an INT4 GEMM, and a bit-split gradient (14·high + low)
// is one INT8 operand. Nothing here allocates or waits for the host: LSS runs on the device (kernels/lss.h)
// and the ∇W GEMM reduces over a fixed length (all token rows, padded to 16; the kept rows first, the rest
// zero), because cuBLASLt needs its sizes on the host — so ρ < 1 lowers the estimator's cost in a GEMM that
// can read n_kept on the device, not here. Codes are recomputed from the saved BF16/FP32 input in the
// backward and transposes are separate passes; the fused, packed variants are in dev/.
#pragma once
#include <algorithm>
#include "common.h"
#include "int4_math.h"
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

// codes = q(v·H) for a (rows x K) tensor at step |*step|, optionally also the transpose (K x rows);
// one thread per (row, block of g values), the block held in registers/local memory
template <typename T>
__global__ void hadamard_quantize_kernel(int8_t* codes, int8_t* codes_transposed, const T* v, int rows, int K, int g,
                                         const float* step) {
    int blocks_per_row = K / g;
    long b = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= (long)rows * blocks_per_row) return;
    int row = b / blocks_per_row, col0 = (b % blocks_per_row) * g;
    float block[128];
    for (int i = 0; i < g; i++) block[i] = to_float(v[(long)row * K + col0 + i]);
    hadamard_block_inplace(block, g);
    float step_abs = fabsf(*step);
    for (int i = 0; i < g; i++) {
        int8_t q = (int8_t)quantize_int4(block[i], step_abs);
        codes[(long)row * K + col0 + i] = q;
        if (codes_transposed) codes_transposed[(long)(col0 + i) * rows + row] = q;
    }
}

// y = acc · (|s_x|·|s_w|) + b, rounded like the reference (product, then sum)
template <typename T>
__global__ void dequantize_bias_kernel(T* out, const int32_t* acc, const T* bias, long rows, int M, const float* step_x,
                                       const float* step_w) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * M) return;
    float scale = __fmul_rn(fabsf(*step_x), fabsf(*step_w));
    float y = __fmul_rn((float)acc[i], scale);
    out[i] = from_float<T>(bias ? __fadd_rn(y, to_float(bias[i % M])) : y);
}

// per-row bit split of dy (rows x M): one block per row, max |g| by a block reduction, then
// operand = 14·high + low with u = rng(key, row·M + col)
template <typename T>
__global__ void bitsplit_rows_kernel(int8_t* operand, float* row_scale, const T* dy, int M, uint32_t key) {
    __shared__ float shared[32];
    long row = blockIdx.x;
    const T* g = dy + row * M;
    float absmax = 0.0f;
    for (int c = threadIdx.x; c < M; c += blockDim.x) absmax = fmaxf(absmax, fabsf(to_float(g[c])));
    for (int offset = 16; offset > 0; offset /= 2) absmax = fmaxf(absmax, __shfl_xor_sync(0xffffffff, absmax, offset));
    if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = absmax;
    __syncthreads();
    absmax = 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) absmax = fmaxf(absmax, shared[w]);
    float scale = bitsplit_scale(absmax);
    if (threadIdx.x == 0) row_scale[row] = scale;
    for (int c = threadIdx.x; c < M; c += blockDim.x) {
        float u = rng_uniform_from_bits(rng_hash_keyed(key, (uint32_t)(row * M + c)));
        operand[row * M + c] = (int8_t)bitsplit_value(to_float(g[c]), scale, u, nullptr, nullptr);
    }
}

// the largest |dy_i / p_i| over kept rows (as float bits, for atomicMax on non-negative floats)
template <typename T>
__global__ void kept_absmax_kernel(unsigned int* absmax_bits, const T* dy, int M, const int* kept_rows,
                                   const float* kept_probs, const int* n_kept) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)*n_kept * M) return;
    int j = i / M, c = i % M;
    float v = fabsf(__fdiv_rn(to_float(dy[(long)kept_rows[j] * M + c]), kept_probs[j]));
    atomicMax(absmax_bits, __float_as_uint(v));
}

// for kept row j (original row i): operand_t[c][j] = bitsplit(dy[i][c] / p_j) with u = rng(key, i·M + c),
// codes_t[k][j] = codes_x[i][k]; columns j >= *n_kept (up to n_padded) are zero.
// One thread per (j, c) for the operand and per (j, k) for the codes.
template <typename T>
__global__ void lss_gather_kernel(int8_t* operand_t, int8_t* codes_t, const T* dy, const int8_t* codes_x, int M, int K,
                                  const int* kept_rows, const float* kept_probs, const int* n_kept, int n_padded,
                                  const unsigned int* absmax_bits, uint32_t key) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    long width = M > K ? M : K;
    if (i >= (long)n_padded * width) return;
    int j = i / width, c = i % width;
    bool real = j < *n_kept;
    if (c < M) {
        int8_t op = 0;
        if (real) {
            float scale = bitsplit_scale(__uint_as_float(*absmax_bits));
            long src = (long)kept_rows[j] * M + c;
            float u = rng_uniform_from_bits(rng_hash_keyed(key, (uint32_t)src));
            op = (int8_t)bitsplit_value(__fdiv_rn(to_float(dy[src]), kept_probs[j]), scale, u, nullptr, nullptr);
        }
        operand_t[(long)c * n_padded + j] = op;
    }
    if (c < K) codes_t[(long)c * n_padded + j] = real ? codes_x[(long)kept_rows[j] * K + c] : 0;
}

// Backward finish for one operand, per (row, block of g): v̂-gradient = acc · coef (coef per row, or the
// tensor's), straight-through mask on ṽ = v·H (recomputed), step-gradient partial Σ v̂-grad · term(ṽ), and
// the gradient back through H. out: written (TOut = activation type) or accumulated (FP32 weight gradient).
// Step-gradient partials: one per thread block, summed in order by lsq_step_grad_finish_kernel.
template <typename TIn, typename TOut>
__global__ void quant_backward_finish_kernel(TOut* out, bool accumulate, float* step_partials, const int32_t* acc,
                                             const float* row_coef, const float* tensor_coef, const TIn* v, int rows, int K,
                                             int g, const float* step) {
    __shared__ float shared[32];
    int blocks_per_row = K / g;
    long b = (long)blockIdx.x * blockDim.x + threadIdx.x;
    float partial = 0.0f;
    if (b < (long)rows * blocks_per_row) {
        int row = b / blocks_per_row, col0 = (b % blocks_per_row) * g;
        float step_abs = fabsf(*step);
        float coef = row_coef ? row_coef[row] : *tensor_coef;
        float v_tilde[128], grad[128];
        for (int i = 0; i < g; i++) v_tilde[i] = to_float(v[(long)row * K + col0 + i]);
        hadamard_block_inplace(v_tilde, g);
        for (int i = 0; i < g; i++) {
            float grad_hat = __fmul_rn((float)acc[(long)row * K + col0 + i], coef);
            partial += grad_hat * lsq_step_grad_term(v_tilde[i], step_abs);
            grad[i] = __fmul_rn(grad_hat, lsq_in_range(v_tilde[i], step_abs) ? 1.0f : 0.0f);
        }
        hadamard_block_inplace(grad, g);
        for (int i = 0; i < g; i++) {
            long e = (long)row * K + col0 + i;
            out[e] = accumulate ? from_float<TOut>(to_float(out[e]) + grad[i]) : from_float<TOut>(grad[i]);
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

// grad_step += sign(s) · Σ partials / √(numel·7), summed in order in double by one thread
__global__ void lsq_step_grad_finish_kernel(float* grad_step, const float* partials, int n, const float* step, double numel) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += partials[i];
    float g = (float)(sum / sqrt(numel * 7.0));
    *grad_step += *step > 0.0f ? g : (*step < 0.0f ? -g : 0.0f);
}

// the ∇W coefficient |s_x| / scale of the per-tensor bit split, scale = 98 / max|dy_i / p_i| (0 if all zero)
__global__ void tensor_coef_kernel(float* coef, const unsigned int* absmax_bits, const float* step_x) {
    float scale = bitsplit_scale(__uint_as_float(*absmax_bits));
    *coef = scale > 0.0f ? F32_DIV(fabsf(*step_x), scale) : 0.0f;
}

// row_coef[i] = |s_w| / scale_i (0 for an all-zero row)
__global__ void row_coef_kernel(float* coef, const float* row_scale, int rows, const float* step_w) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows) coef[i] = row_scale[i] > 0.0f ? __fdiv_rn(fabsf(*step_w), row_scale[i]) : 0.0f;
}

// Scratch for the largest layer; reused by every quantized layer (one layer at a time on one stream)
struct QuantScratch {
    int8_t *codes_x, *codes_w, *codes_w_t, *operand, *operand_t, *codes_x_t;
    int32_t* acc;
    float *row_scale, *row_coef, *scores, *kept_probs, *step_partials, *tensor_coef;
    int *kept_rows, *n_kept;
    unsigned int* absmax_bits;
};

#define QUANT_THREADS 128

inline void quant_scratch_alloc(QuantScratch* s, long N, int max_dim) {
    long n_padded = CEIL_DIV(N, 16) * 16;
    long big = std::max(N, (long)max_dim) * max_dim;
    cudaCheck(cudaMalloc(&s->codes_x, big));
    cudaCheck(cudaMalloc(&s->codes_w, (long)max_dim * max_dim));
    cudaCheck(cudaMalloc(&s->codes_w_t, (long)max_dim * max_dim));
    cudaCheck(cudaMalloc(&s->operand, big));
    cudaCheck(cudaMalloc(&s->operand_t, n_padded * max_dim));
    cudaCheck(cudaMalloc(&s->codes_x_t, n_padded * max_dim));
    cudaCheck(cudaMalloc(&s->acc, big * sizeof(int32_t)));
    cudaCheck(cudaMalloc(&s->row_scale, N * sizeof(float)));
    cudaCheck(cudaMalloc(&s->row_coef, N * sizeof(float)));
    cudaCheck(cudaMalloc(&s->scores, N * sizeof(float)));
    cudaCheck(cudaMalloc(&s->kept_probs, N * sizeof(float)));
    cudaCheck(cudaMalloc(&s->kept_rows, N * sizeof(int)));
    cudaCheck(cudaMalloc(&s->step_partials, CEIL_DIV(big, QUANT_THREADS * 16) * sizeof(float) + 4096));
    cudaCheck(cudaMalloc(&s->absmax_bits, sizeof(unsigned int)));
    cudaCheck(cudaMalloc(&s->n_kept, sizeof(int)));
    cudaCheck(cudaMalloc(&s->tensor_coef, sizeof(float)));
}

inline void quant_scratch_free(QuantScratch* s) {
    void* buffers[] = {s->codes_x, s->codes_w, s->codes_w_t, s->operand, s->operand_t, s->codes_x_t, s->acc,
                       s->row_scale, s->row_coef, s->scores, s->kept_probs, s->kept_rows, s->step_partials, s->absmax_bits,
                       s->n_kept, s->tensor_coef};
    for (void* p : buffers) cudaCheck(cudaFree(p));
}

template <typename T>
void hadamard_quantize(int8_t* codes, int8_t* codes_transposed, const T* v, int rows, int K, int g, const float* step,
                       cudaStream_t stream) {
    long n = (long)rows * (K / g);
    hadamard_quantize_kernel<<<CEIL_DIV(n, QUANT_THREADS), QUANT_THREADS, 0, stream>>>(codes, codes_transposed, v, rows, K, g, step);
    cudaCheck(cudaGetLastError());
}

// HQ-MM forward: out (N x M) = |s_x|·|s_w| · q(inp·H) · q(weight·H)ᵀ + bias
template <typename T>
void quant_linear_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int K, int M, int g,
                          const float* step_x, const float* step_w, QuantScratch& s, cudaStream_t stream) {
    hadamard_quantize(s.codes_x, (int8_t*)nullptr, inp, N, K, g, step_x, stream);
    hadamard_quantize(s.codes_w, (int8_t*)nullptr, weight, M, K, g, step_w, stream);
    int8_matmul_tn(s.acc, s.codes_w, s.codes_x, M, N, K, stream);  // column-major M x N = row-major N x M
    dequantize_bias_kernel<<<CEIL_DIV((long)N * M, 256), 256, 0, stream>>>(out, s.acc, bias, N, M, step_x, step_w);
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
    // recompute the forward's codes (steps are unchanged within a micro-step); the weight also transposed
    hadamard_quantize(s.codes_x, (int8_t*)nullptr, inp, N, K, g, step_x, stream);
    hadamard_quantize(s.codes_w, s.codes_w_t, weight, M, K, g, step_w, stream);
    if (dbias) bias_backward(dbias, dout, N, M, reduce_scratch, stream);
    // ∇X: per-row bit split, s8 GEMM over M, then mask / step gradient / Hadamard per block
    uint32_t key_dx = rng_key(seed, rng_stream_train(micro_step, linear_index, RNG_USE_DX_ROUND));
    bitsplit_rows_kernel<<<N, 256, 0, stream>>>(s.operand, s.row_scale, dout, M, key_dx);
    cudaCheck(cudaGetLastError());
    int8_matmul_tn(s.acc, s.codes_w_t, s.operand, K, N, M, stream);  // row-major N x K
    row_coef_kernel<<<CEIL_DIV(N, 256), 256, 0, stream>>>(s.row_coef, s.row_scale, N, step_w);
    long blocks_x = CEIL_DIV((long)N * (K / g), QUANT_THREADS);
    quant_backward_finish_kernel<<<blocks_x, QUANT_THREADS, 0, stream>>>(dinp, false, s.step_partials, s.acc, s.row_coef,
                                                                        (const float*)nullptr, inp, N, K, g, step_x);
    cudaCheck(cudaGetLastError());
    lsq_step_grad_finish_kernel<<<1, 1, 0, stream>>>(dstep_x, s.step_partials, (int)blocks_x, step_x, (double)N * K);
    // ∇W: leverage scores, water-filling, keep and compaction on the device; kept rows gathered (scaled by
    // 1/p) and bit-split with one tensor scale; the s8 GEMM over n_padded token columns (zeros past n_kept)
    lss_scores_kernel<<<N, 256, 0, stream>>>(s.scores, dout, M, s.codes_x, K, step_x);
    cudaCheck(cudaGetLastError());
    uint32_t key_keep = rng_key(seed, rng_stream_train(micro_step, linear_index, RNG_USE_LSS_KEEP));
    lss_keep_rows_kernel<<<1, LSS_KEEP_THREADS, 0, stream>>>(s.kept_rows, s.kept_probs, s.n_kept, lss_stats, s.scores,
                                                             N, keep_ratio, key_keep);
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaMemsetAsync(s.absmax_bits, 0, sizeof(unsigned int), stream));
    kept_absmax_kernel<<<CEIL_DIV((long)N * M, 256), 256, 0, stream>>>(s.absmax_bits, dout, M, s.kept_rows,
                                                                       s.kept_probs, s.n_kept);
    cudaCheck(cudaGetLastError());
    uint32_t key_dw = rng_key(seed, rng_stream_train(micro_step, linear_index, RNG_USE_DW_ROUND));
    int n_padded = CEIL_DIV(N, 16) * 16;
    long gather = (long)n_padded * std::max(M, K);
    lss_gather_kernel<<<CEIL_DIV(gather, 256), 256, 0, stream>>>(s.operand_t, s.codes_x_t, dout, s.codes_x, M, K,
                                                                 s.kept_rows, s.kept_probs, s.n_kept, n_padded,
                                                                 s.absmax_bits, key_dw);
    cudaCheck(cudaGetLastError());
    int8_matmul_tn(s.acc, s.codes_x_t, s.operand_t, K, M, n_padded, stream);  // row-major M x K
    tensor_coef_kernel<<<1, 1, 0, stream>>>(s.tensor_coef, s.absmax_bits, step_x);
    cudaCheck(cudaGetLastError());
    long blocks_w = CEIL_DIV((long)M * (K / g), QUANT_THREADS);
    quant_backward_finish_kernel<<<blocks_w, QUANT_THREADS, 0, stream>>>(dweight, true, s.step_partials, s.acc,
                                                                        (const float*)nullptr, s.tensor_coef, weight, M,
                                                                        K, g, step_w);
    cudaCheck(cudaGetLastError());
    lsq_step_grad_finish_kernel<<<1, 1, 0, stream>>>(dstep_w, s.step_partials, (int)blocks_w, step_w, (double)M * K);
    cudaCheck(cudaGetLastError());
}
