/*
LayerNorm over the last dimension of an N x C tensor with FP32 statistics (eps 1e-5, PyTorch's biased variance):
    forward:  mean, rstd = 1/sqrt(var + eps), norm = (x − mean)·rstd, out = norm·weight + bias
    backward: dnorm = dout·weight
              dinp    += rstd·(dnorm − mean_c(dnorm) − norm·mean_c(dnorm·norm))   (mean_c: over the row's C values)
              dweight += Σ_rows dout·norm,  dbias += Σ_rows dout                    (FP32, no atomics: deterministic)
T is float (the trainer's FP32 mode) or __nv_bfloat16 (its BF16 and INT4 modes); statistics and sums are FP32.

Compile: make dev/layernorm GPU_ARCH="80 90a"
Run:     ./dev/layernorm [version]   validate, then time N x C = 32768 x 768 and 16384 x 1600, bf16 and fp32
         ./dev/layernorm --check     every version at 1000 x 200, 37 x 203 (C not a multiple of 8) and 32768 x 768

version 1: kernels/layernorm.h before this file: one warp per row with a strided scalar loop, the backward reads
           dout and inp twice (sums, then dinp); weight/bias gradients in a second kernel (32 columns x 256 rows per
           block, a partial row per 256-row chunk) and an ordered sum over chunks by one thread per column
version 2: the row in registers: each lane holds 16-byte vectors (8 bf16 or 4 floats) i·32 + lane of its row, read
           once with 16-byte loads; forward and backward input pass. dweight/dbias as in version 1
version 3: version 2 with dweight/dbias fused into the input pass: the weight row is read once per warp, each lane
           keeps its columns' Σ dout·norm and Σ dout over the warp's rows in registers, the block's 8 warps add
           theirs into shared memory in warp order and write one partial row per 256-row chunk; the finish sums the
           chunks with 16 threads per column in a fixed order. Forward as version 2
version 4: version 3 with 64-row chunks: 4x the blocks (16384 rows of 1600 in 256-row chunks are 64 blocks, half
           the H200's 132 SMs); the scratch grows to 2·ceil(N/64)·C floats. Measured on the H200
           (dev/results/bench_layernorm_attention_h200.log): slower than version 3 at 32768 x 768 (0.123 vs 0.078 ms, bf16)
           and barely faster at 16384 x 1600 (0.279 vs 0.296 ms), where both lose to version 2 (0.116 ms): a
           lane's column sums for C = 1600 (8 vectors) do not fit in registers. (An earlier version 4, 128-row
           chunks capped at 128 registers per thread, was slower still: spills.)
The fallback for C not a multiple of the vector width (or unaligned pointers) in versions 2 to 4: the same layout with
scalar loads. Versions 2 to 4 run kernels/layernorm.h's code (version 3 is exactly the trainer's layernorm_backward;
versions 2 and 4 reuse its forward, row function and backward kernel); version 1 is kept here as it was.
*/
#include <math.h>
#include <string.h>
#include <type_traits>
#include <vector>
#include "../kernels/common.h"
#include "../kernels/layernorm.h"
#include "../kernels/rng.h"
#include "timing.h"

// ----------------------------------------------------------------------------------------------------------------
// CPU reference: the formulas above, each row's sums in double (the GPU's FP32 sums are compared against it)

void layernorm_forward_cpu(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                           const float* bias, int N, int C) {
    for (int r = 0; r < N; r++) {
        const float* x = inp + (size_t)r * C;
        double sum = 0.0;
        for (int c = 0; c < C; c++) sum += x[c];
        float m = (float)(sum / C);
        double sq = 0.0;
        for (int c = 0; c < C; c++) sq += (double)(x[c] - m) * (x[c] - m);
        float s = (float)(1.0 / sqrt(sq / C + LAYERNORM_EPS));
        for (int c = 0; c < C; c++) out[(size_t)r * C + c] = (x[c] - m) * s * weight[c] + bias[c];
        mean[r] = m;
        rstd[r] = s;
    }
}

// also returns, per element, the magnitude its rounding errors scale with: |dinp before| + rstd·(|dnorm| +
// mean_c|dnorm| + |norm|·mean_c|dnorm·norm|), and per column Σ|dout·norm| and Σ|dout|, for the tolerances
void layernorm_backward_cpu(float* dinp, float* dweight, float* dbias, float* dinp_scale, double* dweight_scale,
                            double* dbias_scale, const float* dout, const float* inp, const float* weight,
                            const float* mean, const float* rstd, int N, int C) {
    std::vector<double> sum_w(C, 0.0), sum_b(C, 0.0);
    for (int c = 0; c < C; c++) dweight_scale[c] = dbias_scale[c] = 0.0;
    for (int r = 0; r < N; r++) {
        const float* x = inp + (size_t)r * C;
        const float* dy = dout + (size_t)r * C;
        float s = rstd[r];
        double sum_dnorm = 0.0, sum_dnorm_norm = 0.0, abs_dnorm = 0.0, abs_dnorm_norm = 0.0;
        for (int c = 0; c < C; c++) {
            double norm = (double)(x[c] - mean[r]) * s, dnorm = (double)dy[c] * weight[c];
            sum_dnorm += dnorm;
            sum_dnorm_norm += dnorm * norm;
            abs_dnorm += fabs(dnorm);
            abs_dnorm_norm += fabs(dnorm * norm);
            sum_w[c] += dy[c] * norm;
            sum_b[c] += dy[c];
            dweight_scale[c] += fabs(dy[c] * norm);
            dbias_scale[c] += fabs(dy[c]);
        }
        double mean_dnorm = sum_dnorm / C, mean_dnorm_norm = sum_dnorm_norm / C;
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)r * C + c;
            double norm = (double)(x[c] - mean[r]) * s, dnorm = (double)dy[c] * weight[c];
            dinp_scale[i] = (float)(fabs(dinp[i]) + s * (fabs(dnorm) + abs_dnorm / C + fabs(norm) * abs_dnorm_norm / C));
            dinp[i] = (float)(dinp[i] + s * (dnorm - mean_dnorm - norm * mean_dnorm_norm));
        }
    }
    for (int c = 0; c < C; c++) {
        dweight[c] += (float)sum_w[c];
        dbias[c] += (float)sum_b[c];
    }
}

// ----------------------------------------------------------------------------------------------------------------
// Version 1: the kernels of kernels/layernorm.h before this file

#define ROWS_PER_CHUNK1 256

// v1: out = norm·weight + bias, mean and rstd per row; one warp per row, lane l reading columns l, l + 32, ...
// three times (sum, squared deviations, output)
template <typename T>
__global__ void layernorm_forward_kernel1(T* out, float* mean, float* rstd, const T* inp, const T* weight,
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

// v1: dinp += rstd·(dnorm − mean(dnorm) − norm·mean(dnorm·norm)); one warp per row, lane l at columns l, l + 32, ...
template <typename T>
__global__ void layernorm_backward_input_kernel1(T* dinp, const T* dout, const T* inp, const T* weight,
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

// v1: partials[chunk][c] = Σ_rows dout·norm (first n_chunks*C floats) and Σ_rows dout (next n_chunks*C); a block
// of 32 x 8 threads per (32 columns, 256-row chunk), thread (x, y) summing rows y, y + 8, ... of column x
template <typename T>
__global__ void layernorm_param_partials_kernel1(float* partials, const T* dout, const T* inp, const float* mean,
                                                 const float* rstd, int N, int C) {
    __shared__ float tile_w[8][33], tile_b[8][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    int row_start = blockIdx.y * ROWS_PER_CHUNK1;
    int row_end = min(row_start + ROWS_PER_CHUNK1, N);
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

// v1: dweight += Σ_chunks partials, dbias likewise; one thread per column, chunks in order
__global__ void layernorm_param_finish_kernel1(float* dweight, float* dbias, const float* partials, int n_chunks, int C) {
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

// ----------------------------------------------------------------------------------------------------------------
// Versions 2 to 4: a warp's row in registers, with kernels/layernorm.h's helpers (lane l holds the 16-byte vectors
// l, l + 32, ... of its row). Version 2's forward is kernels/layernorm.h's; versions 3 and 4 are its backward with
// 256- and 64-row chunks.

// v2: dinp only (kernels/layernorm.h's layernorm_backward_row, its column sums unused); one warp per row
template <typename T, int V>
__global__ void layernorm_backward_input_kernel2(T* dinp, const T* dout, const T* inp, const T* weight,
                                                 const float* mean, const float* rstd, int N, int C, bool vectorized) {
    constexpr int VEC = layernorm_vec_width<T>();
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    uint4 w[V];
    load_row_vectors<T, V>(w, weight, C, vectorized);
    float unused_w[V][VEC] = {}, unused_b[V][VEC] = {};
    layernorm_backward_row<T, V>(dinp + (long)row * C, dout + (long)row * C, inp + (long)row * C, w, mean[row],
                                 rstd[row], C, vectorized, unused_w, unused_b);
}

#define ROWS_PER_CHUNK4 64  // version 4: 4x the blocks of kernels/layernorm.h's 256-row chunks

// ----------------------------------------------------------------------------------------------------------------
// Launchers

template <typename T>
void run_layernorm_forward(int version, T* out, float* mean, float* rstd, const T* inp, const T* weight, const T* bias,
                       int N, int C) {
    if (version == 1) {
        layernorm_forward_kernel1<<<CEIL_DIV(N, 8), 256>>>(out, mean, rstd, inp, weight, bias, N, C);
    } else {
        layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, 0);
    }
    cudaCheck(cudaGetLastError());
}

// floats of scratch a version needs
size_t backward_scratch_floats(int version, int N, int C) {
    return 2 * (size_t)CEIL_DIV(N, version == 4 ? ROWS_PER_CHUNK4 : LAYERNORM_ROWS_PER_CHUNK) * C;
}

template <typename T>
void run_layernorm_backward(int version, T* dinp, float* dweight, float* dbias, const T* dout, const T* inp,
                        const T* weight, const float* mean, const float* rstd, int N, int C, float* scratch) {
    bool vectorized = layernorm_vectorizable<T>(C, dinp, dout, inp, weight);
    if (version == 1 || version == 2) {
        if (version == 1) {
            layernorm_backward_input_kernel1<<<CEIL_DIV(N, 8), 256>>>(dinp, dout, inp, weight, mean, rstd, N, C);
        } else {
            with_row_vectors_per_lane<T>(C, [&](auto vectors) {
                constexpr int V = decltype(vectors)::value;
                layernorm_backward_input_kernel2<T, V><<<CEIL_DIV(N, 8), 256>>>(dinp, dout, inp, weight, mean, rstd,
                                                                                N, C, vectorized);
            });
        }
        cudaCheck(cudaGetLastError());
        int n_chunks = CEIL_DIV(N, ROWS_PER_CHUNK1);
        layernorm_param_partials_kernel1<<<dim3(CEIL_DIV(C, 32), n_chunks), dim3(32, 8)>>>(scratch, dout, inp, mean,
                                                                                          rstd, N, C);
        cudaCheck(cudaGetLastError());
        layernorm_param_finish_kernel1<<<CEIL_DIV(C, 256), 256>>>(dweight, dbias, scratch, n_chunks, C);
    } else if (version == 3) {
        layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C, scratch, 0);
    } else {
        int n_chunks = CEIL_DIV(N, ROWS_PER_CHUNK4);
        with_row_vectors_per_lane<T>(C, [&](auto vectors) {
            constexpr int V = decltype(vectors)::value;
            layernorm_backward_kernel<T, V, ROWS_PER_CHUNK4><<<n_chunks, 32 * LAYERNORM_WARPS, 2 * C * sizeof(float)>>>(
                dinp, scratch, dout, inp, weight, mean, rstd, N, C, vectorized);
        });
        cudaCheck(cudaGetLastError());
        layernorm_param_finish_kernel<<<CEIL_DIV(C, 32), dim3(32, LAYERNORM_FINISH_THREADS_Y)>>>(dweight, dbias,
                                                                                               scratch, n_chunks, C);
    }
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------------------------------------------
// Test data, validation and timing

template <typename T> const char* type_name() { return std::is_same_v<T, float> ? "fp32" : "bf16"; }

template <typename T> float host_to_float(T v) {
    if constexpr (std::is_same_v<T, float>) return v;
    else return __bfloat162float(v);
}

// a T tensor on the device and its values (after rounding to T) as FP32 on the host
template <typename T>
struct Tensor {
    std::vector<float> host;
    T* device = nullptr;
};

// n values a·N(0, 1) + b from the shared hash, rounded to T; `row_offsets`: each row of C also gets an offset
// uniform in [−3, 3] (LayerNorm inputs off zero mean, as the residual stream is)
template <typename T>
Tensor<T> make_tensor(size_t n, uint32_t stream, float a, float b, int C = 0) {
    Tensor<T> t{std::vector<float>(n), nullptr};
    std::vector<T> rounded(n);
    uint32_t key = rng_key(4321, stream);
    for (size_t i = 0; i < n; i++) {
        float offset = C > 0 ? 6.0f * rng_uniform(4321, stream + 1000, (uint32_t)(i / C)) - 3.0f : 0.0f;
        rounded[i] = host_from_float<T>(a * rng_normal(key, (uint32_t)i) + b + offset);
        t.host[i] = host_to_float(rounded[i]);
    }
    cudaCheck(cudaMalloc(&t.device, n * sizeof(T)));
    cudaCheck(cudaMemcpy(t.device, rounded.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    return t;
}

template <typename T> std::vector<float> download(const T* device, size_t n) {
    std::vector<T> values(n);
    cudaCheck(cudaMemcpy(values.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost));
    std::vector<float> out(n);
    for (size_t i = 0; i < n; i++) out[i] = host_to_float(values[i]);
    return out;
}

template <typename T> T* upload(const std::vector<float>& host) {
    std::vector<T> values(host.size());
    for (size_t i = 0; i < host.size(); i++) values[i] = host_from_float<T>(host[i]);
    T* device;
    cudaCheck(cudaMalloc(&device, values.size() * sizeof(T)));
    cudaCheck(cudaMemcpy(device, values.data(), values.size() * sizeof(T), cudaMemcpyHostToDevice));
    return device;
}

// Tolerances. An FP32 result differs from the double reference by its summation order: a row sum here is at most
// ~60 dependent FP32 additions (≤ 16 vectors x 8 values per lane, 5 shuffle levels; version 1: C/32 + 5), a column
// sum at most ~300 (v1: 32 rows per thread + 8 + 128 chunks at N = 32768; v3: 32 rows per warp + 8 warps + 8 + 16 in the finish), each off by
// ≤ 2^-24 of the running magnitude: ≤ 2e-5 of the magnitude an element's error scales with (the sum of the
// absolute values of its terms, *_scale). A BF16 output adds its rounding: ≤ half an ulp, and one FP32 difference
// can move it across a rounding boundary, so ≤ 1 ulp = 2^-7 of |value| at worst, 2^-8·|value| + half an ulp
// in practice: we allow 2^-7·|ref|.
#define FP32_SUM_TOLERANCE 3e-5

// prints the check's line; max over elements of |got − ref| / tolerance must be ≤ 1
bool check_close(const char* what, const std::vector<float>& got, const std::vector<float>& ref,
                 const std::vector<double>& scale, double bf16_relative) {
    double worst = 0.0;
    size_t worst_i = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        double tolerance = FP32_SUM_TOLERANCE * scale[i] + bf16_relative * fabs(ref[i]) + 1e-30;
        double ratio = fabs((double)got[i] - ref[i]) / tolerance;
        if (!(ratio <= worst)) { worst = ratio; worst_i = i; }  // a NaN becomes the worst
    }
    bool pass = worst <= 1.0;
    printf("%s %s: max |error| / tolerance = %.3f (element %zu: got %.7g, expected %.7g)\n", pass ? "PASS" : "FAIL",
           what, worst, worst_i, got[worst_i], ref[worst_i]);
    return pass;
}

// forward and backward of one version at N x C against the CPU reference; the backward twice from the same inputs,
// whose results must be bit-identical (the trainer's resume test needs bit-identical reruns)
template <typename T>
bool check_version(int version, int N, int C) {
    size_t n = (size_t)N * C;
    double bf16_relative = std::is_same_v<T, float> ? 0.0 : 0x1p-7;
    Tensor<T> inp = make_tensor<T>(n, 1, 1.5f, 0.0f, C), dout = make_tensor<T>(n, 2, 0.01f, 0.0f);
    Tensor<T> weight = make_tensor<T>(C, 3, 0.2f, 1.0f), bias = make_tensor<T>(C, 4, 0.2f, 0.0f);
    Tensor<T> dinp0 = make_tensor<T>(n, 5, 0.01f, 0.0f);
    char what[128];
    bool pass = true;

    std::vector<float> out_ref(n), mean_ref(N), rstd_ref(N);
    layernorm_forward_cpu(out_ref.data(), mean_ref.data(), rstd_ref.data(), inp.host.data(), weight.host.data(),
                          bias.host.data(), N, C);
    T* d_out;
    float *d_mean, *d_rstd;
    cudaCheck(cudaMalloc(&d_out, n * sizeof(T)));
    cudaCheck(cudaMalloc(&d_mean, N * sizeof(float)));
    cudaCheck(cudaMalloc(&d_rstd, N * sizeof(float)));
    run_layernorm_forward<T>(version, d_out, d_mean, d_rstd, inp.device, weight.device, bias.device, N, C);
    std::vector<double> out_scale(n), mean_scale(N), rstd_scale(N);
    for (int r = 0; r < N; r++) {
        double abs_sum = 0.0;
        for (int c = 0; c < C; c++) abs_sum += fabs(inp.host[(size_t)r * C + c]);
        mean_scale[r] = abs_sum / C;
        rstd_scale[r] = rstd_ref[r];
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)r * C + c;
            // the mean's rounding error (∝ mean|x|, large next to |x − m| for a row with a big offset) passes
            // into every output through rstd·weight, so it is part of each output's scale
            out_scale[i] = (fabs(inp.host[i] - mean_ref[r]) + mean_scale[r]) * rstd_ref[r] * fabs(weight.host[c]) +
                           fabs(bias.host[c]);
        }
    }
    snprintf(what, sizeof what, "layernorm_forward v%d %s %dx%d out", version, type_name<T>(), N, C);
    pass = check_close(what, download(d_out, n), out_ref, out_scale, bf16_relative) && pass;
    snprintf(what, sizeof what, "layernorm_forward v%d %s %dx%d mean", version, type_name<T>(), N, C);
    pass = check_close(what, download(d_mean, N), mean_ref, mean_scale, 0.0) && pass;
    snprintf(what, sizeof what, "layernorm_forward v%d %s %dx%d rstd", version, type_name<T>(), N, C);
    pass = check_close(what, download(d_rstd, N), rstd_ref, rstd_scale, 0.0) && pass;

    // the backward from the reference statistics (both sides use the same FP32 mean and rstd)
    std::vector<float> dinp_ref = dinp0.host, dweight_ref(C), dbias_ref(C), dinp_scale(n);
    std::vector<double> dweight_scale(C), dbias_scale(C);
    for (int c = 0; c < C; c++) { dweight_ref[c] = 0.5f; dbias_ref[c] = -0.25f; }  // the gradients accumulate
    std::vector<float> dweight_start = dweight_ref, dbias_start = dbias_ref;
    layernorm_backward_cpu(dinp_ref.data(), dweight_ref.data(), dbias_ref.data(), dinp_scale.data(),
                           dweight_scale.data(), dbias_scale.data(), dout.host.data(), inp.host.data(),
                           weight.host.data(), mean_ref.data(), rstd_ref.data(), N, C);
    cudaCheck(cudaMemcpy(d_mean, mean_ref.data(), N * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(d_rstd, rstd_ref.data(), N * sizeof(float), cudaMemcpyHostToDevice));
    float* scratch;
    cudaCheck(cudaMalloc(&scratch, backward_scratch_floats(version, N, C) * sizeof(float)));
    std::vector<float> results[2][3];
    for (int run = 0; run < 2; run++) {
        T* d_dinp = upload<T>(dinp0.host);
        float* d_dweight = upload<float>(dweight_start);
        float* d_dbias = upload<float>(dbias_start);
        run_layernorm_backward<T>(version, d_dinp, d_dweight, d_dbias, dout.device, inp.device, weight.device, d_mean,
                              d_rstd, N, C, scratch);
        results[run][0] = download(d_dinp, n);
        results[run][1] = download(d_dweight, C);
        results[run][2] = download(d_dbias, C);
        cudaCheck(cudaFree(d_dinp));
        cudaCheck(cudaFree(d_dweight));
        cudaCheck(cudaFree(d_dbias));
    }
    for (int c = 0; c < C; c++) { dweight_scale[c] += 0.5; dbias_scale[c] += 0.25; }  // the starting values
    std::vector<double> dinp_scale_d(dinp_scale.begin(), dinp_scale.end());
    snprintf(what, sizeof what, "layernorm_backward v%d %s %dx%d dinp", version, type_name<T>(), N, C);
    pass = check_close(what, results[0][0], dinp_ref, dinp_scale_d, bf16_relative) && pass;
    snprintf(what, sizeof what, "layernorm_backward v%d %s %dx%d dweight", version, type_name<T>(), N, C);
    pass = check_close(what, results[0][1], dweight_ref, dweight_scale, 0.0) && pass;
    snprintf(what, sizeof what, "layernorm_backward v%d %s %dx%d dbias", version, type_name<T>(), N, C);
    pass = check_close(what, results[0][2], dbias_ref, dbias_scale, 0.0) && pass;
    bool identical = true;
    for (int k = 0; k < 3; k++) identical = identical && memcmp(results[0][k].data(), results[1][k].data(),
                                                                 results[0][k].size() * sizeof(float)) == 0;
    printf("%s layernorm_backward v%d %s %dx%d: two runs bit-identical\n", identical ? "PASS" : "FAIL", version,
           type_name<T>(), N, C);
    pass = pass && identical;

    std::vector<void*> buffers = {inp.device, dout.device, weight.device, bias.device, dinp0.device, d_out, d_mean, d_rstd, scratch};
    for (void* p : buffers) cudaCheck(cudaFree(p));
    return pass;
}

#define N_VERSIONS 4

bool run_checks() {
    bool pass = true;
    const int shapes[3][2] = {{1000, 200}, {37, 203}, {32768, 768}};
    for (int version = 1; version <= N_VERSIONS; version++) {
        for (const auto& shape : shapes) {
            pass = check_version<float>(version, shape[0], shape[1]) && pass;
            pass = check_version<__nv_bfloat16>(version, shape[0], shape[1]) && pass;
        }
    }
    return pass;
}

// one version's forward and backward timed at N x C on cold L2 (rotating copies of every row-sized tensor)
template <typename T>
void benchmark(int version, int N, int C) {
    size_t n = (size_t)N * C, bytes = n * sizeof(T);
    int copies = rotating_copies(3 * bytes);
    Tensor<T> inp = make_tensor<T>(n, 1, 1.5f, 0.0f, C), dout = make_tensor<T>(n, 2, 0.01f, 0.0f);
    Tensor<T> weight = make_tensor<T>(C, 3, 0.2f, 1.0f), bias = make_tensor<T>(C, 4, 0.2f, 0.0f);
    std::vector<T*> inps(copies), douts(copies), dinps(copies), outs(copies);
    for (int c = 0; c < copies; c++) {
        cudaCheck(cudaMalloc(&inps[c], bytes));
        cudaCheck(cudaMalloc(&douts[c], bytes));
        cudaCheck(cudaMalloc(&dinps[c], bytes));
        cudaCheck(cudaMalloc(&outs[c], bytes));
        cudaCheck(cudaMemcpy(inps[c], inp.device, bytes, cudaMemcpyDeviceToDevice));
        cudaCheck(cudaMemcpy(douts[c], dout.device, bytes, cudaMemcpyDeviceToDevice));
        cudaCheck(cudaMemset(dinps[c], 0, bytes));
    }
    float *mean, *rstd, *dweight, *dbias, *scratch;
    cudaCheck(cudaMalloc(&mean, N * sizeof(float)));
    cudaCheck(cudaMalloc(&rstd, N * sizeof(float)));
    cudaCheck(cudaMalloc(&dweight, C * sizeof(float)));
    cudaCheck(cudaMalloc(&dbias, C * sizeof(float)));
    cudaCheck(cudaMalloc(&scratch, backward_scratch_floats(version, N, C) * sizeof(float)));
    cudaCheck(cudaMemset(dweight, 0, C * sizeof(float)));
    cudaCheck(cudaMemset(dbias, 0, C * sizeof(float)));
    float forward_ms = mean_launch_ms([&](int i) {
        int c = i % copies;
        run_layernorm_forward<T>(version, outs[c], mean, rstd, inps[c], weight.device, bias.device, N, C);
    }, 3, 50);
    float backward_ms = mean_launch_ms([&](int i) {
        int c = i % copies;
        run_layernorm_backward<T>(version, dinps[c], dweight, dbias, douts[c], inps[c], weight.device, mean, rstd, N, C,
                              scratch);
    }, 3, 50);
    // bytes that must move: forward reads inp, writes out; backward reads dout, inp, dinp, writes dinp
    double forward_gbs = (2.0 * bytes + 8.0 * N) / (forward_ms * 1e6), backward_gbs = (4.0 * bytes + 8.0 * N) / (backward_ms * 1e6);
    printf("v%d %s %5d x %4d | forward %.4f ms %5.0f GB/s | backward %.4f ms %5.0f GB/s\n", version, type_name<T>(), N,
           C, forward_ms, forward_gbs, backward_ms, backward_gbs);
    std::vector<void*> buffers = {inp.device, dout.device, weight.device, bias.device, mean, rstd, dweight, dbias, scratch};
    for (int c = 0; c < copies; c++) buffers.insert(buffers.end(), {inps[c], douts[c], dinps[c], outs[c]});
    for (void* p : buffers) cudaCheck(cudaFree(p));
}

int main(int argc, char** argv) {
    cudaCheck(cudaSetDevice(0));
    if (argc > 1 && strcmp(argv[1], "--check") == 0) return run_checks() ? EXIT_SUCCESS : EXIT_FAILURE;
    int first = 1, last = N_VERSIONS;
    if (argc > 1) first = last = atoi(argv[1]);
    if (first < 1 || last > N_VERSIONS) { fprintf(stderr, "version must be 1 to %d\n", N_VERSIONS); return EXIT_FAILURE; }
    bool pass = true;
    for (int version = first; version <= last; version++) {
        pass = check_version<float>(version, 1000, 200) && pass;
        pass = check_version<__nv_bfloat16>(version, 1000, 200) && pass;
    }
    if (!pass) return EXIT_FAILURE;
    for (int version = first; version <= last; version++) {
        benchmark<__nv_bfloat16>(version, 32768, 768);
        benchmark<__nv_bfloat16>(version, 16384, 1600);
        benchmark<float>(version, 32768, 768);
        benchmark<float>(version, 16384, 1600);
    }
    return EXIT_SUCCESS;
}
