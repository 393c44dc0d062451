// Matrix products through cuBLASLt with FP32 accumulation: the linear layers (forward with a fused bias,
// backward for the input and the weight) and the batched products of attention. Row-major tensors; the
// column-major view cuBLAS sees is spelled out at each call. Deterministic: a fixed algorithm per shape.
// Bias gradients are column sums in two deterministic stages (no atomics), so runs repeat bit for bit.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <nvtx3/nvToolsExtMemCudaRt.h>
#include <type_traits>
#include "common.h"

inline void cublas_check(cublasStatus_t status, const char* file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "[cuBLAS ERROR] %d at %s:%d\n", (int)status, file, line);
        exit(EXIT_FAILURE);
    }
}
#define cublasCheck(status) (cublas_check((status), __FILE__, __LINE__))

static cublasLtHandle_t cublaslt_handle;
static void* cublaslt_workspace = nullptr;
static const size_t CUBLASLT_WORKSPACE_SIZE = 32 * 1024 * 1024;

inline void matmul_setup() {
    cublasCheck(cublasLtCreate(&cublaslt_handle));
    cudaCheck(cudaMalloc(&cublaslt_workspace, CUBLASLT_WORKSPACE_SIZE));
}

inline void matmul_teardown() {
    cudaCheck(cudaFree(cublaslt_workspace));
    cublasCheck(cublasLtDestroy(cublaslt_handle));
}

// cuBLASLt's first heuristic algorithm for D = op(A)·op(B) with these layouts (D in place of C), within our
// workspace; a one-line error naming `what` and exit if there is none
inline cublasLtMatmulAlgo_t cublaslt_algorithm(cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t layout_a,
                                               cublasLtMatrixLayout_t layout_b, cublasLtMatrixLayout_t layout_d,
                                               const char* what) {
    cublasLtMatmulPreference_t preference;
    cublasCheck(cublasLtMatmulPreferenceCreate(&preference));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                     &CUBLASLT_WORKSPACE_SIZE, sizeof CUBLASLT_WORKSPACE_SIZE));
    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    cublasCheck(cublasLtMatmulAlgoGetHeuristic(cublaslt_handle, desc, layout_a, layout_b, layout_d, layout_d,
                                               preference, 1, &heuristic, &found));
    cublasCheck(cublasLtMatmulPreferenceDestroy(preference));
    if (found == 0) {
        fprintf(stderr, "cuBLASLt: no algorithm for %s\n", what);
        exit(EXIT_FAILURE);
    }
    return heuristic.algo;
}

// Tells compute-sanitizer's initcheck (run with --nvtx yes) that cuBLASLt wrote D, when D is one contiguous
// block (ld = rows, batches back to back): on sm_90 the tool misses those stores and reports later reads of GEMM
// outputs as uninitialised, values the tests check against the reference. Outside a tool the call does nothing.
inline void sanitizer_mark_written(void* d, cublasLtMatrixLayout_t layout_d, cudaStream_t stream) {
    static nvtxDomainHandle_t domain = nvtxDomainCreateA("train_int4");
    uint64_t rows = 0, cols = 0;
    int64_t ld = 0, stride = 0;
    int32_t batch = 1;
    cudaDataType_t type;
    size_t written;
    cublasCheck(cublasLtMatrixLayoutGetAttribute(layout_d, CUBLASLT_MATRIX_LAYOUT_TYPE, &type, sizeof type, &written));
    cublasCheck(cublasLtMatrixLayoutGetAttribute(layout_d, CUBLASLT_MATRIX_LAYOUT_ROWS, &rows, sizeof rows, &written));
    cublasCheck(cublasLtMatrixLayoutGetAttribute(layout_d, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof cols, &written));
    cublasCheck(cublasLtMatrixLayoutGetAttribute(layout_d, CUBLASLT_MATRIX_LAYOUT_LD, &ld, sizeof ld, &written));
    cublasCheck(cublasLtMatrixLayoutGetAttribute(layout_d, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch, &written));
    cublasCheck(cublasLtMatrixLayoutGetAttribute(layout_d, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                 sizeof stride, &written));
    if ((uint64_t)ld != rows || (batch > 1 && (uint64_t)stride != rows * cols)) return;
    size_t element = type == CUDA_R_16BF ? 2 : type == CUDA_R_8I ? 1 : 4;  // BF16, INT8, else FP32 / INT32
    nvtxMemVirtualRangeDesc_t range = {rows * cols * batch * element, d};
    nvtxMemMarkInitializedBatch_t region = {NVTX_EXT_COMPATID_MEM, sizeof region, NVTX_MEM_TYPE_VIRTUAL_ADDRESS, 1,
                                            sizeof range, &range};
    nvtxMemCudaMarkInitialized(domain, stream, 0, &region);
}

// runs D = alpha·op(A)·op(B) + beta·D with the heuristic's first algorithm, then destroys desc and layouts
inline void cublaslt_run(cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t layout_a, cublasLtMatrixLayout_t layout_b,
                         cublasLtMatrixLayout_t layout_d, const void* alpha, const void* a, const void* b,
                         const void* beta, void* d, cudaStream_t stream) {
    cublasLtMatmulAlgo_t algo = cublaslt_algorithm(desc, layout_a, layout_b, layout_d,
                                                   "this shape and type (integer products need dimensions that are multiples of 4)");
    cublasCheck(cublasLtMatmul(cublaslt_handle, desc, alpha, a, layout_a, b, layout_b, beta, d, layout_d, d, layout_d,
                               &algo, cublaslt_workspace, CUBLASLT_WORKSPACE_SIZE, stream));
    sanitizer_mark_written(d, layout_d, stream);
    cublasCheck(cublasLtMatrixLayoutDestroy(layout_a));
    cublasCheck(cublasLtMatrixLayoutDestroy(layout_b));
    cublasCheck(cublasLtMatrixLayoutDestroy(layout_d));
    cublasCheck(cublasLtMatmulDescDestroy(desc));
}

template <typename T> constexpr cudaDataType_t cuda_type() {
    return std::is_same<T, float>::value ? CUDA_R_32F : CUDA_R_16BF;
}

// D (m x n, column-major, ldd) = alpha * op(A) * op(B) + beta * D [+ bias (m) broadcast over columns],
// batched over `batch` with the given strides. A and B are TIn; D is TOut (TOut = float lets bf16 inputs
// accumulate into FP32 gradients). Pure FP32 (no TF32) when TIn is float, so fp32 mode matches PyTorch closely.
template <typename TIn, typename TOut>
void matmul_lt(TOut* d, const TIn* a, const TIn* b, const TOut* bias, int m, int n, int k, bool trans_a, bool trans_b,
               int lda, int ldb, int ldd, float alpha, float beta, int batch = 1, long stride_a = 0,
               long stride_b = 0, long stride_d = 0, cudaStream_t stream = 0) {
    cublasLtMatmulDesc_t desc;
    cublasCheck(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
    if (bias) {
        cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bias_type = cuda_type<TOut>();
        cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
        cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
        cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type));
    }
    cublasLtMatrixLayout_t layout_a, layout_b, layout_d;
    cublasCheck(cublasLtMatrixLayoutCreate(&layout_a, cuda_type<TIn>(), trans_a ? k : m, trans_a ? m : k, lda));
    cublasCheck(cublasLtMatrixLayoutCreate(&layout_b, cuda_type<TIn>(), trans_b ? n : k, trans_b ? k : n, ldb));
    cublasCheck(cublasLtMatrixLayoutCreate(&layout_d, cuda_type<TOut>(), m, n, ldd));
    if (batch > 1) {
        cublasLtMatrixLayout_t layouts[3] = {layout_a, layout_b, layout_d};
        long strides[3] = {stride_a, stride_b, stride_d};
        for (int i = 0; i < 3; i++) {
            cublasCheck(cublasLtMatrixLayoutSetAttribute(layouts[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch));
            cublasCheck(cublasLtMatrixLayoutSetAttribute(layouts[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                         &strides[i], sizeof strides[i]));
        }
    }
    cublaslt_run(desc, layout_a, layout_b, layout_d, &alpha, a, b, &beta, d, stream);
}

// out (N x M) = inp (N x K) · weight (M x K)ᵀ + bias (M). Column-major: outᵀ = W(ᵀ as stored) · inpᵀ.
template <typename T>
void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int K, int M, cudaStream_t stream = 0) {
    NVTX_RANGE_FN();
    matmul_lt(out, weight, inp, bias, M, N, K, true, false, K, K, M, 1.0f, 0.0f, 1, 0, 0, 0, stream);
}

// column sums of dout (N x M) in FP32: stage 1, one block per 32 columns x a chunk of rows -> partials
// (n_chunks x M); stage 2, each thread adds its column's partials in chunk order. No atomics: deterministic.
#define BIAS_ROWS_PER_CHUNK 256
template <typename T>
__global__ void column_sum_partials_kernel(float* partials, const T* dout, int N, int M) {
    __shared__ float tile[8][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    int row_start = blockIdx.y * BIAS_ROWS_PER_CHUNK;
    int row_end = min(row_start + BIAS_ROWS_PER_CHUNK, N);
    float sum = 0.0f;
    if (col < M) {
        for (int row = row_start + threadIdx.y; row < row_end; row += 8) sum += to_float(dout[(size_t)row * M + col]);
    }
    tile[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && col < M) {
        for (int y = 1; y < 8; y++) sum += tile[y][threadIdx.x];
        partials[(size_t)blockIdx.y * M + col] = sum;
    }
}

__global__ void column_sum_finish_kernel(float* out, const float* partials, int n_chunks, int M) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= M) return;
    float sum = 0.0f;
    for (int c = 0; c < n_chunks; c++) sum += partials[(size_t)c * M + col];
    out[col] += sum;
}

// scratch must hold ceil(N / 256) * M floats
template <typename T>
void bias_backward(float* dbias, const T* dout, int N, int M, float* scratch, cudaStream_t stream = 0) {
    int n_chunks = CEIL_DIV(N, BIAS_ROWS_PER_CHUNK);
    column_sum_partials_kernel<<<dim3(CEIL_DIV(M, 32), n_chunks), dim3(32, 8), 0, stream>>>(scratch, dout, N, M);
    cudaCheck(cudaGetLastError());
    column_sum_finish_kernel<<<CEIL_DIV(M, 256), 256, 0, stream>>>(dbias, scratch, n_chunks, M);
    cudaCheck(cudaGetLastError());
}

// dinp (N x K) = dout (N x M) · weight (M x K)   [written, not accumulated]
template <typename T>
void matmul_backward_input(T* dinp, const T* dout, const T* weight, int N, int K, int M, cudaStream_t stream = 0) {
    matmul_lt(dinp, weight, dout, (const T*)nullptr, K, N, M, false, false, K, M, K, 1.0f, 0.0f, 1, 0, 0, 0, stream);
}

// dweight (M x K, FP32) += doutᵀ · inp            [accumulated: gradient accumulation over micro-steps]
// dbias (M, FP32) += column sums of dout (if dbias)
template <typename T>
void matmul_backward_weight(float* dweight, float* dbias, const T* dout, const T* inp, int N, int K, int M,
                            float* scratch, cudaStream_t stream = 0) {
    matmul_lt(dweight, inp, dout, (const float*)nullptr, K, M, N, false, true, K, M, K, 1.0f, 1.0f, 1, 0, 0, 0, stream);
    if (dbias) bias_backward(dbias, dout, N, M, scratch, stream);
}

// both: the input gradient, then the weight and bias gradients
template <typename T>
void matmul_backward(T* dinp, float* dweight, float* dbias, const T* dout, const T* inp, const T* weight, int N,
                     int K, int M, float* scratch, cudaStream_t stream = 0) {
    NVTX_RANGE_FN();
    matmul_backward_input(dinp, dout, weight, N, K, M, stream);
    matmul_backward_weight(dweight, dbias, dout, inp, N, K, M, scratch, stream);
}
