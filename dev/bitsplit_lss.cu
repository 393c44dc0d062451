/*
The row-wise steps of the BS + LSS backward (../shared/method.md) that come before its INT8 GEMMs:
(a) per-row bit split of ∇Y (rows x M, BF16): scale_r = bitsplit_scale(max_c |g_rc|), operand = 14·high + low =
    bitsplit_value(g, scale_r, u) with u = rng_uniform_from_bits(rng_hash_keyed(key, r·M + c)): the INT8 operand of
    the ∇X GEMM, equal to bitsplit_cpu (kernels/int4_reference.h) bit for bit, and per row either the FP32 scale
    (versions 1, 2) or what the trainer keeps of it (version 3): max |g| and the ∇X coefficient |s_w| / scale_r;
(b) leverage score sampling of the token rows of the ∇W GEMM: score_i = ‖∇Y_i‖·‖X̂_i‖ with X̂ = |s_x|·codes,
    water-filled p_i = min(1, c·score_i) with Σp = ρ·rows, keep row i if u_i < p_i, and the kept row indices
    compacted in increasing order with their p_i (the 1/p_i factor is applied downstream as a division by p_i, as
    lss_scale_kept_rows_cpu does: dy/p and dy·fl(1/p) differ in the last bit). All on the GPU, no host round trip.
    With version 3 the keep kernel also gives the largest |dy_ic / p_i| over kept rows (the ∇W bit split's
    per-tensor max) from the row maxima of (a).

Scores sum their squares in FP64, like lss_scores_cpu: every term (a BF16 or a |s_x|·code rounded to FP32, squared)
is exact in FP64, so the GPU and the CPU differ only in the order of the sums, ~1e-16 relative. Water-filling on the
GPU (lss_keep_rows_kernel in kernels/lss.h) is Newton's method on f(c) = Σ min(1, c·score_i) = ρ·rows from c = ρ·rows / Σ score:
each step is c ← (ρ·rows − #clamped) / Σ unclamped scores. f is concave and increasing, so the iterates rise to the
solution, the clamped set (c·score > 1) only grows, and a step that adds no row ends it: at most rows + 1 steps,
a handful in practice. Sums in FP64 as lss_probabilities_cpu; c matches its sorted computation to ~1e-15.

Compile: make dev/bitsplit_lss GPU_ARCH="80 90a"
Run:     ./dev/bitsplit_lss [version]   validate, then time rows = 16384 with (M, K) = (768, 3072) and (3072, 768)
                                        (version 3 when none is named)
         ./dev/bitsplit_lss --check     all three versions on small shapes, several keep ratios: PASS/FAIL lines

version 1: the trainer's former kernels: bit split with one block per row and two passes over the row in global
           memory, scores with one block per row, scalar loads, FP64 sums
version 2: bit split with one warp per row, the row held in registers (read once with 16-byte loads, operands
           written 8 per 8-byte store); scores with one warp per row, 16-byte loads, and the 16 possible x̂² read
           from a shared-memory table instead of a conversion, a multiply and a widening per code
version 3: what the trainer runs now (bitsplit_scores_rows_kernel, kernels/quant_linear.h): bit split and scores in
           one kernel, one warp per row: one pass over dy from DRAM for the max, Σg² and the operand, plus Σx̂² from the
           codes; the row is re-read from cache for the operand, not held in registers, so any M works (M % 8 == 0)
all:       water-filling, Bernoulli keep and stable compaction in one single-block kernel (kernels/lss.h, which
           the trainer uses)
*/
#include <string.h>
#include <vector>
#include "../kernels/common.h"
#include "timing.h"
#include "../kernels/int4_math.h"
#include "../kernels/int4_reference.h"
#include "../kernels/rng.h"
#include "../kernels/quant_linear.h"  // version 3 is the trainer's: bitsplit_scores_rows_kernel; kernels/lss.h

#define FULL_MASK 0xffffffffu

// ----------------------------------------------------------------------------------------------------------------
// CPU reference (kernels/int4_reference.h)

// per-row bit split of dy (rows x M): INT8 operands and one scale per row
void bitsplit_rows_cpu(int8_t* operand, float* row_scale, const float* dy, int rows, int M, uint32_t seed, uint32_t stream) {
    bitsplit_cpu(dy, rows, M, true, seed, stream, operand, nullptr, nullptr, row_scale);
}

// LSS of the rows: scores (FP64 sums), water-filled probabilities and the Bernoulli keep flags, as the CPU
// backward (lss_linear_backward_cpu) computes them; x̂ = code·|s_x| rounded to FP32
void lss_cpu(float* scores, float* probs, uint8_t* keep, const float* dy, int M, const int8_t* codes, int K,
             float step_x, int rows, float keep_ratio, uint32_t seed, uint32_t stream) {
    std::vector<float> x_hat((size_t)rows * K);
    for (size_t e = 0; e < x_hat.size(); e++) x_hat[e] = (float)codes[e] * fabsf(step_x);
    lss_scores_cpu(dy, M, x_hat.data(), K, rows, scores);
    lss_probabilities_cpu(scores, rows, keep_ratio, probs);
    lss_keep_cpu(probs, rows, seed, stream, keep);
}

// ----------------------------------------------------------------------------------------------------------------
// Kernels: bit split

// v1: per-row bit split of dy (rows x M): one block per row, max |g| by a block reduction, then
// operand = 14·high + low with u = rng(key, row·M + col), each thread's columns in a second pass over the row
template <typename T>
__global__ void bitsplit_rows_kernel1(int8_t* operand, float* row_scale, const T* dy, int M, uint32_t key) {
    __shared__ float shared[32];
    long row = blockIdx.x;
    const T* g = dy + row * M;
    float absmax = 0.0f;
#pragma unroll 8
    for (int c = threadIdx.x; c < M; c += blockDim.x) absmax = fmaxf(absmax, fabsf(to_float(g[c])));
    for (int offset = 16; offset > 0; offset /= 2) absmax = fmaxf(absmax, __shfl_xor_sync(FULL_MASK, absmax, offset));
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

// v2: per-row bit split (operand and scale); one warp per row, the row read once into registers: lane l holds the
// 16-byte slots s·32 + l (values 8(s·32 + l) .. +7, coalesced), max |g| by warp shuffles (max is exact in any
// order), then 8 operands per lane and slot in one 8-byte store
template <int SLOTS>
__global__ void bitsplit_rows_kernel2(int8_t* operand, float* row_scale, const __nv_bfloat16* dy, int rows, int M,
                                      uint32_t key) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const uint4* src = reinterpret_cast<const uint4*>(dy + (long)row * M);
    uint4 slots[SLOTS];
    float absmax = 0.0f;
#pragma unroll
    for (int s = 0; s < SLOTS; s++) {
        if ((s * 32 + lane) * 8 >= M) continue;
        slots[s] = src[s * 32 + lane];
        float g[8];
        unpack_bf16x8(g, slots[s]);
#pragma unroll
        for (int i = 0; i < 8; i++) absmax = fmaxf(absmax, fabsf(g[i]));
    }
    for (int offset = 16; offset > 0; offset /= 2) absmax = fmaxf(absmax, __shfl_xor_sync(FULL_MASK, absmax, offset));
    float scale = bitsplit_scale(absmax);
    if (lane == 0) row_scale[row] = scale;
#pragma unroll
    for (int s = 0; s < SLOTS; s++) {
        int col = (s * 32 + lane) * 8;
        if (col >= M) continue;
        float g[8];
        unpack_bf16x8(g, slots[s]);
        uint32_t words[2] = {0, 0};
#pragma unroll
        for (int i = 0; i < 8; i++) {
            float u = rng_uniform_from_bits(rng_hash_keyed(key, (uint32_t)((long)row * M + col + i)));
            int op = bitsplit_value(g[i], scale, u, nullptr, nullptr);
            words[i / 4] |= (uint32_t)(uint8_t)op << (8 * (i % 4));
        }
        *reinterpret_cast<uint2*>(operand + (long)row * M + col) = make_uint2(words[0], words[1]);
    }
}

// ----------------------------------------------------------------------------------------------------------------
// Kernels: LSS

// v1: scores_i = ‖dy_i‖·‖x̂_i‖ with x̂ = FP32(code·|s_x|), squares summed in FP64; one block per row, each thread's
// columns in order (loads unrolled ahead of the sums), then warp and block sums in a fixed order
template <typename T>
__global__ void lss_scores_kernel1(float* scores, const T* dy, int M, const int8_t* codes_x, int K, const float* step_x) {
    __shared__ double shared[2][32];
    long row = blockIdx.x;
    float step_abs = fabsf(*step_x);
    double dy_sq = 0.0, x_sq = 0.0;
#pragma unroll 8
    for (int c = threadIdx.x; c < M; c += blockDim.x) {
        float g = to_float(dy[row * M + c]);
        dy_sq += (double)g * g;
    }
#pragma unroll 8
    for (int c = threadIdx.x; c < K; c += blockDim.x) {
        float x_hat = F32_MUL((float)codes_x[row * K + c], step_abs);
        x_sq += (double)x_hat * x_hat;
    }
    dy_sq = lss_warp_sum(dy_sq);
    x_sq = lss_warp_sum(x_sq);
    if (threadIdx.x % 32 == 0) {
        shared[0][threadIdx.x / 32] = dy_sq;
        shared[1][threadIdx.x / 32] = x_sq;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        dy_sq = x_sq = 0.0;
        for (int w = 0; w < (int)blockDim.x / 32; w++) {
            dy_sq += shared[0][w];
            x_sq += shared[1][w];
        }
        scores[row] = (float)(sqrt(dy_sq) * sqrt(x_sq));
    }
}

// v2: LSS scores as v1; one warp per row, 16-byte loads (8 dy values, 16 codes per lane and step). A code has 16
// possible values, so the 16 squares (double)(code·|s_x|)² sit in a shared table indexed by the code's low nibble
__global__ void lss_scores_kernel2(float* scores, const __nv_bfloat16* dy, int rows, int M, const int8_t* codes, int K,
                                   const float* step_x) {
    __shared__ double code_square[16];
    if (threadIdx.x < 16) {
        int code = threadIdx.x < 8 ? (int)threadIdx.x : (int)threadIdx.x - 16;  // the INT4 whose low nibble is threadIdx.x
        float x_hat = F32_MUL((float)code, fabsf(*step_x));
        code_square[threadIdx.x] = (double)x_hat * x_hat;
    }
    __syncthreads();
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const uint4* dy_row = reinterpret_cast<const uint4*>(dy + (long)row * M);
    const uint4* codes_row = reinterpret_cast<const uint4*>(codes + (long)row * K);
    double dy_sq = 0.0, x_sq = 0.0;
    for (int s = lane; s < M / 8; s += 32) {
        float g[8];
        unpack_bf16x8(g, dy_row[s]);
#pragma unroll
        for (int i = 0; i < 8; i++) dy_sq += (double)g[i] * g[i];
    }
    for (int s = lane; s < K / 16; s += 32) {
        uint4 bits = codes_row[s];
        const uint32_t words[4] = {bits.x, bits.y, bits.z, bits.w};
#pragma unroll
        for (int i = 0; i < 16; i++) x_sq += code_square[(words[i / 4] >> (8 * (i % 4))) & 15];
    }
    dy_sq = lss_warp_sum(dy_sq);
    x_sq = lss_warp_sum(x_sq);
    if (lane == 0) scores[row] = (float)(sqrt(dy_sq) * sqrt(x_sq));
}

// the bandwidth ceiling: out = in for n_vectors x 16 bytes; one thread per 16-byte vector
__global__ void copy_kernel(uint4* out, const uint4* in, long n_vectors) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n_vectors) out[i] = in[i];
}

// ----------------------------------------------------------------------------------------------------------------
// Launchers

#define ROWS_PER_BLOCK 4  // warps (rows) per block of the warp-per-row kernels

void bitsplit_rows1(int8_t* operand, float* row_scale, const __nv_bfloat16* dy, int rows, int M, uint32_t key) {
    bitsplit_rows_kernel1<__nv_bfloat16><<<rows, 256>>>(operand, row_scale, dy, M, key);
}

template <int SLOTS>
void launch_bitsplit_rows2(int8_t* operand, float* row_scale, const __nv_bfloat16* dy, int rows, int M, uint32_t key) {
    bitsplit_rows_kernel2<SLOTS><<<CEIL_DIV(rows, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK>>>(operand, row_scale, dy, rows, M, key);
}

// the row must fit the registers: M <= 4096 (SLOTS = 16 slots of 8 values per lane), M a multiple of 8
void bitsplit_rows2(int8_t* operand, float* row_scale, const __nv_bfloat16* dy, int rows, int M, uint32_t key) {
    int slots = CEIL_DIV(M, 256);
    if (M % 8 != 0 || slots > 16) { fprintf(stderr, "bit split v2 needs M <= 4096, a multiple of 8 (M = %d)\n", M); exit(EXIT_FAILURE); }
    if (slots <= 3) {
        launch_bitsplit_rows2<3>(operand, row_scale, dy, rows, M, key);
    } else if (slots <= 6) {
        launch_bitsplit_rows2<6>(operand, row_scale, dy, rows, M, key);
    } else if (slots <= 12) {
        launch_bitsplit_rows2<12>(operand, row_scale, dy, rows, M, key);
    } else {
        launch_bitsplit_rows2<16>(operand, row_scale, dy, rows, M, key);
    }
}

// versions 1 and 2: the bit split on its own (version 3 fuses it with the scores: row_pass3)
void bitsplit_rows(int version, int8_t* operand, float* row_scale, const __nv_bfloat16* dy, int rows, int M, uint32_t key) {
    switch (version) {
        case 1: bitsplit_rows1(operand, row_scale, dy, rows, M, key); break;
        case 2: bitsplit_rows2(operand, row_scale, dy, rows, M, key); break;
        default: fprintf(stderr, "bit split on its own: version 1 or 2 (got %d; version 3 is row_pass3)\n", version); exit(EXIT_FAILURE);
    }
    cudaCheck(cudaGetLastError());
}

// versions 1 and 2: the scores on their own (version 3: row_pass3); version 2 needs M a multiple of 8 and K of 16
// (16-byte aligned rows)
void lss_scores(int version, float* scores, const __nv_bfloat16* dy, int rows, int M, const int8_t* codes, int K,
                const float* step_x) {
    switch (version) {
        case 1: lss_scores_kernel1<__nv_bfloat16><<<rows, 256>>>(scores, dy, M, codes, K, step_x); break;
        case 2:
            if (M % 8 != 0 || K % 16 != 0) { fprintf(stderr, "scores v2 need M %% 8 == 0, K %% 16 == 0\n"); exit(EXIT_FAILURE); }
            lss_scores_kernel2<<<CEIL_DIV(rows, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK>>>(scores, dy, rows, M, codes, K, step_x);
            break;
        default: fprintf(stderr, "scores on their own: version 1 or 2 (got %d; version 3 is row_pass3)\n", version); exit(EXIT_FAILURE);
    }
    cudaCheck(cudaGetLastError());
}

// version 3, the trainer's row pass: the ∇X operand, max |g| and the ∇X coefficient |s_w| / scale per row, and the
// scores in one launch. Needs M a multiple of 8 and K of 16 (16-byte aligned rows)
void row_pass3(int8_t* operand, float* row_absmax, float* row_coef, float* scores, const __nv_bfloat16* dy, int rows,
               int M, const int8_t* codes, int K, const float* step_x, const float* step_w, uint32_t key) {
    if (M % 8 != 0 || K % 16 != 0) { fprintf(stderr, "row pass v3 needs M %% 8 == 0, K %% 16 == 0 (M %d, K %d)\n", M, K); exit(EXIT_FAILURE); }
    bitsplit_scores_rows_kernel<__nv_bfloat16><<<CEIL_DIV(rows, ROW_PASS_WARPS), 32 * ROW_PASS_WARPS>>>(
        operand, row_absmax, row_coef, scores, dy, rows, M, codes, K, step_x, step_w, key);
    cudaCheck(cudaGetLastError());
}

// water-filling, keep and compaction; with row_absmax (version 3's row maxima) also *kept_absmax_bits, the largest
// |dy_ic / p_i| over kept rows as float bits (versions 1 and 2 pass null for both)
void lss_keep_rows(float* probs, int* kept_rows, float* kept_probs, int* n_kept, int* n_iterations,
                   unsigned int* kept_absmax_bits, const float* scores, const float* row_absmax, int rows,
                   float keep_ratio, uint32_t key) {
    lss_keep_rows_kernel<<<1, LSS_KEEP_THREADS>>>(kept_rows, kept_probs, n_kept, (float*)nullptr, probs, n_iterations,
                                                  kept_absmax_bits, scores, row_absmax, rows, keep_ratio, key);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------------------------------------------
// Test data

const uint32_t SEED = 42, MICRO_STEP = 3, LINEAR_INDEX = 5;
const float STEP_W = -0.0123f;  // s_w of version 3's ∇X coefficient |s_w| / scale (negative: the kernel must take |s_w|)

template <typename T>
T* to_device(const std::vector<T>& host) {
    T* d;
    cudaCheck(cudaMalloc(&d, host.size() * sizeof(T)));
    cudaCheck(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

template <typename T>
std::vector<T> to_host(const T* d, size_t n) {
    std::vector<T> host(n);
    cudaCheck(cudaMemcpy(host.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
}

// ∇Y (rows x M, BF16) with row norms spread like real gradients (a log-normal factor per row, so water-filling
// clamps the largest rows) and every 16th row zero (scale 0, score 0); host copy as FP32
struct Gradient {
    std::vector<float> host;
    __nv_bfloat16* device;
};

Gradient make_gradient(int rows, int M) {
    std::vector<__nv_bfloat16> bf16((size_t)rows * M);
    Gradient dy{std::vector<float>(bf16.size()), nullptr};
    uint32_t key = rng_key(SEED, 100);
    for (int r = 0; r < rows; r++) {
        float row_factor = r % 16 == 5 ? 0.0f : 1e-3f * expf(1.5f * rng_normal(key, (uint32_t)r));
        for (int c = 0; c < M; c++) {
            size_t i = (size_t)r * M + c;
            bf16[i] = host_float_to_bf16(row_factor * rng_normal(key ^ 0x9e3779b9u, (uint32_t)i));
            dy.host[i] = __bfloat162float(bf16[i]);
        }
    }
    dy.device = to_device(bf16);
    return dy;
}

// INT4 codes of X̃ (rows x K, one per byte), uniform in [-8, 7], every 32nd row zero
std::vector<int8_t> make_codes(int rows, int K) {
    std::vector<int8_t> codes((size_t)rows * K);
    uint32_t key = rng_key(SEED, 101);
    for (int r = 0; r < rows; r++) {
        for (int k = 0; k < K; k++) {
            size_t i = (size_t)r * K + k;
            codes[i] = r % 32 == 7 ? 0 : (int8_t)((int)(rng_hash_keyed(key, (uint32_t)i) % 16) - 8);
        }
    }
    return codes;
}

// ----------------------------------------------------------------------------------------------------------------
// Validation

// bit split of one version against the CPU: operands and scales must be identical (outputs start as the
// complement of the expected bytes, so anything left unwritten differs). Version 3 gives max |g| and the ∇X
// coefficient instead of the scale: max |g| must be the row's exactly, bitsplit_scale of it the CPU's scale, and the
// coefficient |s_w| / scale in FP32 (0 for a zero row). Its scores (here of 16-column code rows, unchecked) are
// checked by lss_matches_reference
bool bitsplit_matches_reference(int version, const Gradient& dy, int rows, int M) {
    uint32_t stream = rng_stream_train(MICRO_STEP, LINEAR_INDEX, RNG_USE_DX_ROUND);
    std::vector<int8_t> expected_operand((size_t)rows * M), operand_init(expected_operand.size());
    std::vector<float> expected_scale(rows), scale_init(rows);
    bitsplit_rows_cpu(expected_operand.data(), expected_scale.data(), dy.host.data(), rows, M, SEED, stream);
    for (size_t i = 0; i < operand_init.size(); i++) operand_init[i] = (int8_t)~expected_operand[i];
    for (int r = 0; r < rows; r++) scale_init[r] = -1.0f - expected_scale[r];
    int8_t* d_operand = to_device(operand_init);
    std::vector<float> scale, absmax, coef;  // versions 1, 2: scale; version 3: absmax and coef
    if (version < 3) {
        float* d_scale = to_device(scale_init);
        bitsplit_rows(version, d_operand, d_scale, dy.device, rows, M, rng_key(SEED, stream));
        scale = to_host(d_scale, rows);
        cudaCheck(cudaFree(d_scale));
    } else {
        const int K = 16;  // the fewest code columns the kernel takes
        int8_t* d_codes = to_device(make_codes(rows, K));
        float* d_steps = to_device(std::vector<float>{1.0f, STEP_W});  // s_x (for the unchecked scores), s_w
        float* d_absmax = to_device(std::vector<float>(rows, -1.0f));  // never a max |g|
        float* d_coef = to_device(scale_init);                         // negative: never a coefficient
        float* d_scores;
        cudaCheck(cudaMalloc(&d_scores, rows * sizeof(float)));
        row_pass3(d_operand, d_absmax, d_coef, d_scores, dy.device, rows, M, d_codes, K, d_steps, d_steps + 1,
                  rng_key(SEED, stream));
        absmax = to_host(d_absmax, rows);
        coef = to_host(d_coef, rows);
        void* buffers[] = {d_codes, d_steps, d_absmax, d_coef, d_scores};
        for (void* b : buffers) cudaCheck(cudaFree(b));
        for (int r = 0; r < rows; r++) scale.push_back(bitsplit_scale(absmax[r]));
    }
    std::vector<int8_t> operand = to_host(d_operand, operand_init.size());
    cudaCheck(cudaFree(d_operand));
    if (version == 3) {
        for (int r = 0; r < rows; r++) {
            float expected_absmax = 0.0f;
            for (int c = 0; c < M; c++) expected_absmax = fmaxf(expected_absmax, fabsf(dy.host[(size_t)r * M + c]));
            float expected_coef = expected_scale[r] > 0.0f ? F32_DIV(fabsf(STEP_W), expected_scale[r]) : 0.0f;
            if (memcmp(&absmax[r], &expected_absmax, sizeof(float)) != 0 || memcmp(&coef[r], &expected_coef, sizeof(float)) != 0) {
                printf("  row %d: max |g| %.9g, coefficient %.9g, expected %.9g and %.9g\n", r, absmax[r], coef[r],
                       expected_absmax, expected_coef);
                return false;
            }
        }
    }
    for (int r = 0; r < rows; r++) {
        if (memcmp(&scale[r], &expected_scale[r], sizeof(float)) != 0) {
            printf("  row %d: scale %.9g, expected %.9g\n", r, scale[r], expected_scale[r]);
            return false;
        }
    }
    for (size_t i = 0; i < operand.size(); i++) {
        if (operand[i] != expected_operand[i]) {
            printf("  operand (%zu, %zu): %d, expected %d\n", i / M, i % M, operand[i], expected_operand[i]);
            return false;
        }
    }
    return true;
}

// distance in units in the last place between two non-negative floats (their bit patterns are ordered)
long ulp_distance(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    return labs((long)ia - (long)ib);
}

// Tolerances. GPU and CPU form the same exact FP64 terms and differ only in summation order (~M·2^-53 relative),
// so a score rounds to a different float only when its FP64 value sits that close to a rounding boundary: <= 1 ulp,
// and rarely. c inherits ~1e-15 relative from sums of the same kind, so p = float(min(1, c·score)) can move by the
// score's ulp plus its own rounding: <= 2 ulps. A keep decision u < p may then differ only where u lies within
// 2 ulps of p; such rows are counted and skipped, every other row must be decided alike.
const long SCORE_ULPS = 1, PROB_ULPS = 2;

// LSS of one version against the CPU: scores and probabilities within the tolerances above; the GPU's kept list
// exactly {i : u_i < p_i} of its own probabilities, increasing, with their p; the same kept set as the CPU except
// for rows whose u is within PROB_ULPS of p. Version 3 (scores from the fused row pass): the keep kernel's kept-row
// max must be, bit for bit, max |dy_ic / p_i| over the GPU's kept rows i and all columns c, divided in FP32 on the
// host. Prints one line of statistics.
bool lss_matches_reference(int version, const Gradient& dy, int M, const std::vector<int8_t>& codes, int K, int rows,
                           float step_x, float keep_ratio) {
    uint32_t stream = rng_stream_train(MICRO_STEP, LINEAR_INDEX, RNG_USE_LSS_KEEP), key = rng_key(SEED, stream);
    std::vector<float> expected_scores(rows), expected_probs(rows);
    std::vector<uint8_t> expected_keep(rows);
    lss_cpu(expected_scores.data(), expected_probs.data(), expected_keep.data(), dy.host.data(), M, codes.data(), K,
            step_x, rows, keep_ratio, SEED, stream);

    int8_t* d_codes = to_device(codes);
    float *d_steps, *d_scores, *d_probs, *d_kept_probs, *d_row_absmax = nullptr;
    int *d_kept_rows, *d_counts;  // n_kept, n_iterations
    unsigned int* d_kept_absmax_bits = nullptr;
    d_steps = to_device(std::vector<float>{step_x, STEP_W});
    cudaCheck(cudaMalloc(&d_scores, rows * sizeof(float)));
    cudaCheck(cudaMalloc(&d_probs, rows * sizeof(float)));
    cudaCheck(cudaMalloc(&d_kept_probs, rows * sizeof(float)));
    cudaCheck(cudaMalloc(&d_kept_rows, rows * sizeof(int)));
    cudaCheck(cudaMalloc(&d_counts, 2 * sizeof(int)));
    if (version < 3) {
        lss_scores(version, d_scores, dy.device, rows, M, d_codes, K, d_steps);
    } else {  // the row pass's operand and coefficients are bitsplit_matches_reference's; its max |g| feeds the keep kernel
        int8_t* d_operand;
        float* d_row_coef;
        cudaCheck(cudaMalloc(&d_operand, (size_t)rows * M));
        cudaCheck(cudaMalloc(&d_row_coef, rows * sizeof(float)));
        cudaCheck(cudaMalloc(&d_row_absmax, rows * sizeof(float)));
        d_kept_absmax_bits = to_device(std::vector<unsigned int>{0xffffffffu});  // a NaN: never the kept-row max
        row_pass3(d_operand, d_row_absmax, d_row_coef, d_scores, dy.device, rows, M, d_codes, K, d_steps, d_steps + 1,
                  rng_key(SEED, rng_stream_train(MICRO_STEP, LINEAR_INDEX, RNG_USE_DX_ROUND)));
        cudaCheck(cudaFree(d_operand));
        cudaCheck(cudaFree(d_row_coef));
    }
    lss_keep_rows(d_probs, d_kept_rows, d_kept_probs, d_counts, d_counts + 1, d_kept_absmax_bits, d_scores, d_row_absmax,
                  rows, keep_ratio, key);
    std::vector<float> scores = to_host(d_scores, rows), probs = to_host(d_probs, rows);
    std::vector<int> counts = to_host(d_counts, 2);
    int n_kept = counts[0];
    std::vector<int> kept_rows = to_host(d_kept_rows, n_kept);
    std::vector<float> kept_probs = to_host(d_kept_probs, n_kept);
    unsigned int kept_absmax_bits = version == 3 ? to_host(d_kept_absmax_bits, 1)[0] : 0;
    void* buffers[] = {d_codes, d_steps, d_scores, d_probs, d_kept_probs, d_kept_rows, d_counts, d_row_absmax,
                       d_kept_absmax_bits};
    for (void* b : buffers) cudaCheck(cudaFree(b));  // the last two are null for versions 1 and 2: a no-op

    bool pass = true;
    long max_score_ulps = 0, max_prob_ulps = 0;
    int scores_differing = 0, ambiguous = 0, clamped = 0;
    for (int i = 0; i < rows; i++) {
        long score_ulps = ulp_distance(scores[i], expected_scores[i]), prob_ulps = ulp_distance(probs[i], expected_probs[i]);
        max_score_ulps = std::max(max_score_ulps, score_ulps);
        max_prob_ulps = std::max(max_prob_ulps, prob_ulps);
        scores_differing += score_ulps != 0;
        clamped += expected_probs[i] == 1.0f;
    }
    if (max_score_ulps > SCORE_ULPS || max_prob_ulps > PROB_ULPS) {
        printf("  scores differ by up to %ld ulps (tolerance %ld), probabilities by up to %ld (tolerance %ld)\n",
               max_score_ulps, SCORE_ULPS, max_prob_ulps, PROB_ULPS);
        pass = false;
    }
    std::vector<uint8_t> keep(rows, 0);
    for (int j = 0; j < n_kept; j++) {
        int i = kept_rows[j];
        if (i < 0 || i >= rows || (j > 0 && i <= kept_rows[j - 1]) || memcmp(&kept_probs[j], &probs[i], sizeof(float)) != 0) {
            printf("  kept entry %d (row %d, p %.9g) is out of order, out of range or not the row's probability\n", j, i, kept_probs[j]);
            return false;
        }
        keep[i] = 1;
    }
    if (version == 3) {
        float expected_kept_absmax = 0.0f;  // the kernel's value when nothing is kept
        for (int j = 0; j < n_kept; j++) {
            const float* g = dy.host.data() + (size_t)kept_rows[j] * M;
            for (int c = 0; c < M; c++) expected_kept_absmax = fmaxf(expected_kept_absmax, fabsf(g[c] / kept_probs[j]));
        }
        unsigned int expected_bits;
        memcpy(&expected_bits, &expected_kept_absmax, sizeof expected_bits);
        if (kept_absmax_bits != expected_bits) {
            float kept_absmax;
            memcpy(&kept_absmax, &kept_absmax_bits, sizeof kept_absmax);
            printf("  kept-row max |dy/p| %.9g (bits 0x%08x), expected %.9g (0x%08x)\n", kept_absmax, kept_absmax_bits,
                   expected_kept_absmax, expected_bits);
            pass = false;
        }
    }
    for (int i = 0; i < rows; i++) {
        float u = rng_uniform_from_bits(rng_hash_keyed(key, (uint32_t)i));
        if (keep[i] != (u < probs[i])) {
            printf("  row %d: kept = %d, but u = %.9g and its p = %.9g\n", i, keep[i], u, probs[i]);
            return false;
        }
        float p = expected_probs[i];
        if (fabsf(u - p) <= PROB_ULPS * (nextafterf(p, INFINITY) - p)) {
            ambiguous++;
        } else if (keep[i] != expected_keep[i]) {
            printf("  row %d: kept = %d, the CPU reference keeps %d (u = %.9g, p = %.9g, CPU p = %.9g)\n", i, keep[i],
                   expected_keep[i], u, probs[i], p);
            pass = false;
        }
    }
    printf("  rows %d, rho %.2f: scores %d differ (max %ld ulp), probabilities max %ld ulp, %d rows at p = 1, "
           "%d iterations, kept %d, %d ambiguous\n", rows, keep_ratio, scores_differing, max_score_ulps, max_prob_ulps,
           clamped, counts[1], n_kept, ambiguous);
    return pass;
}

// every version: bit split on shapes with partial blocks, warps and slots and the largest M of version 2 (version 3
// also beyond it, its last step partial); LSS with partial compaction tiles at keep ratios that clamp many rows, few
// rows, and none (every nonzero row kept)
bool run_checks() {
    bool all_pass = true;
    for (int version = 1; version <= 3; version++) {
        std::vector<std::pair<int, int>> shapes = {{2500, 200}, {2500, 768}, {301, 3072}, {64, 4096}};
        if (version == 3) shapes.push_back({64, 5000});
        for (auto& shape : shapes) {
            int rows = shape.first, M = shape.second;
            Gradient dy = make_gradient(rows, M);
            bool pass = bitsplit_matches_reference(version, dy, rows, M);
            printf("%s bitsplit_lss v%d bitsplit rows%d M%d\n", pass ? "PASS" : "FAIL", version, rows, M);
            all_pass = all_pass && pass;
            cudaCheck(cudaFree(dy.device));
        }
        const int lss_shapes[][3] = {{2500, 200, 80}, {2500, 768, 3072}};
        for (auto& shape : lss_shapes) {
            int rows = shape[0], M = shape[1], K = shape[2];
            Gradient dy = make_gradient(rows, M);
            std::vector<int8_t> codes = make_codes(rows, K);
            for (float keep_ratio : {0.1f, 0.5f, 0.9f, 1.0f}) {
                bool pass = lss_matches_reference(version, dy, M, codes, K, rows, -0.0371f, keep_ratio);
                printf("%s bitsplit_lss v%d lss rows%d M%d K%d rho%.1f\n", pass ? "PASS" : "FAIL", version, rows, M, K, keep_ratio);
                all_pass = all_pass && pass;
            }
            cudaCheck(cudaFree(dy.device));
        }
    }
    return all_pass;
}

// ----------------------------------------------------------------------------------------------------------------
// Timing


// `copies` device buffers of `bytes`, each a copy of src (or uninitialised when src is null)
std::vector<void*> device_copies(const void* src, size_t bytes, int copies) {
    std::vector<void*> buffers(copies);
    for (void*& b : buffers) {
        cudaCheck(cudaMalloc(&b, bytes));
        if (src) cudaCheck(cudaMemcpy(b, src, bytes, cudaMemcpyDeviceToDevice));
    }
    return buffers;
}

void free_all(const std::vector<void*>& buffers) {
    for (void* b : buffers) cudaCheck(cudaFree(b));
}

// mean time of one launch in microseconds; launch(i) runs the i-th launch (3 untimed first)
template <typename Launch>
float time_us(Launch launch) {
    return mean_launch_ms(launch, 3, 50) * 1000.0f;
}

// validates `version` at rows x M (codes rows x K), then prints the times of the BF16 copy of dy, the bit split and
// the scores (version 3: the two in one pass) and the keep-rows kernel (version 3: with the kept-row max, as the
// trainer runs it)
bool benchmark(int version, int rows, int M, int K) {
    const float keep_ratio = 0.5f, step_x = 0.0371f;
    Gradient dy = make_gradient(rows, M);
    std::vector<int8_t> codes = make_codes(rows, K);
    printf("rows %d, M %d, K %d:\n", rows, M, K);
    bool bitsplit_pass = bitsplit_matches_reference(version, dy, rows, M);
    printf("%s bitsplit_lss v%d bitsplit rows%d M%d\n", bitsplit_pass ? "PASS" : "FAIL", version, rows, M);
    bool lss_pass = lss_matches_reference(version, dy, M, codes, K, rows, step_x, keep_ratio);
    printf("%s bitsplit_lss v%d lss rows%d M%d K%d rho%.1f\n", lss_pass ? "PASS" : "FAIL", version, rows, M, K, keep_ratio);

    size_t dy_bytes = (size_t)rows * M * sizeof(__nv_bfloat16), codes_bytes = (size_t)rows * K;
    int8_t* d_codes = to_device(codes);
    float* d_steps = to_device(std::vector<float>{step_x, STEP_W});

    int copies = rotating_copies(2 * dy_bytes);
    std::vector<void*> copy_src = device_copies(dy.device, dy_bytes, copies), copy_dst = device_copies(nullptr, dy_bytes, copies);
    long n_vectors = (long)(dy_bytes / 16);
    float copy_us = time_us([&](int i) {
        copy_kernel<<<CEIL_DIV(n_vectors, 256), 256>>>((uint4*)copy_dst[i % copies], (const uint4*)copy_src[i % copies], n_vectors);
    });
    free_all(copy_src);
    free_all(copy_dst);
    double copy_gbs = 2.0 * dy_bytes / (copy_us * 1e3);
    printf("  BF16 copy of dy             %7.1f us  %5.0f GB/s\n", copy_us, copy_gbs);

    uint32_t key_dx = rng_key(SEED, rng_stream_train(MICRO_STEP, LINEAR_INDEX, RNG_USE_DX_ROUND));
    // each rotating copy's inputs and scores (the keep kernel reads copy 0's), and version 3's max |g| per row
    std::vector<void*> dys, code_copies, score_outputs, row_absmaxes;
    if (version < 3) {
        size_t bitsplit_bytes = dy_bytes + (size_t)rows * M + rows * sizeof(float);
        copies = rotating_copies(bitsplit_bytes);
        dys = device_copies(dy.device, dy_bytes, copies);
        std::vector<void*> operands = device_copies(nullptr, (size_t)rows * M, copies),
                           row_scales = device_copies(nullptr, rows * sizeof(float), copies);
        float bitsplit_us = time_us([&](int i) {
            int c = i % copies;
            bitsplit_rows(version, (int8_t*)operands[c], (float*)row_scales[c], (const __nv_bfloat16*)dys[c], rows, M, key_dx);
        });
        free_all(operands);
        free_all(row_scales);
        double bitsplit_gbs = bitsplit_bytes / (bitsplit_us * 1e3);
        printf("  bit split v%d                %7.1f us  %5.0f GB/s  %3.0f%% of copy bandwidth\n", version, bitsplit_us,
               bitsplit_gbs, 100.0 * bitsplit_gbs / copy_gbs);

        size_t scores_bytes = dy_bytes + codes_bytes + rows * sizeof(float);
        int score_copies = rotating_copies(scores_bytes);
        free_all(dys);
        dys = device_copies(dy.device, dy_bytes, score_copies);
        code_copies = device_copies(d_codes, codes_bytes, score_copies);
        score_outputs = device_copies(nullptr, rows * sizeof(float), score_copies);
        float scores_us = time_us([&](int i) {
            int c = i % score_copies;
            lss_scores(version, (float*)score_outputs[c], (const __nv_bfloat16*)dys[c], rows, M, (const int8_t*)code_copies[c], K, d_steps);
        });
        double scores_gbs = scores_bytes / (scores_us * 1e3);
        printf("  LSS scores v%d               %7.1f us  %5.0f GB/s  %3.0f%% of copy bandwidth\n", version, scores_us,
               scores_gbs, 100.0 * scores_gbs / copy_gbs);
    } else {
        // dy read once from DRAM (the operand's second read of a row hits the cache), the operand written, the codes
        // read, and max |g|, the ∇X coefficient and the score written per row
        size_t row_pass_bytes = dy_bytes + (size_t)rows * M + codes_bytes + 3 * rows * sizeof(float);
        copies = rotating_copies(row_pass_bytes);
        dys = device_copies(dy.device, dy_bytes, copies);
        code_copies = device_copies(d_codes, codes_bytes, copies);
        score_outputs = device_copies(nullptr, rows * sizeof(float), copies);
        row_absmaxes = device_copies(nullptr, rows * sizeof(float), copies);
        std::vector<void*> operands = device_copies(nullptr, (size_t)rows * M, copies),
                           row_coefs = device_copies(nullptr, rows * sizeof(float), copies);
        float row_pass_us = time_us([&](int i) {
            int c = i % copies;
            row_pass3((int8_t*)operands[c], (float*)row_absmaxes[c], (float*)row_coefs[c], (float*)score_outputs[c],
                      (const __nv_bfloat16*)dys[c], rows, M, (const int8_t*)code_copies[c], K, d_steps, d_steps + 1, key_dx);
        });
        free_all(operands);
        free_all(row_coefs);
        double row_pass_gbs = row_pass_bytes / (row_pass_us * 1e3);
        printf("  bit split + scores v%d       %7.1f us  %5.0f GB/s  %3.0f%% of copy bandwidth\n", version, row_pass_us,
               row_pass_gbs, 100.0 * row_pass_gbs / copy_gbs);
    }

    float *d_probs, *d_kept_probs;
    int *d_kept_rows, *d_counts;
    unsigned int* d_kept_absmax_bits = nullptr;
    cudaCheck(cudaMalloc(&d_probs, rows * sizeof(float)));
    cudaCheck(cudaMalloc(&d_kept_probs, rows * sizeof(float)));
    cudaCheck(cudaMalloc(&d_kept_rows, rows * sizeof(int)));
    cudaCheck(cudaMalloc(&d_counts, 2 * sizeof(int)));
    if (version == 3) cudaCheck(cudaMalloc(&d_kept_absmax_bits, sizeof(unsigned int)));
    const float* row_absmax = version == 3 ? (const float*)row_absmaxes[0] : nullptr;
    uint32_t key_keep = rng_key(SEED, rng_stream_train(MICRO_STEP, LINEAR_INDEX, RNG_USE_LSS_KEEP));
    float keep_us = time_us([&](int) {
        lss_keep_rows(d_probs, d_kept_rows, d_kept_probs, d_counts, d_counts + 1, d_kept_absmax_bits,
                      (const float*)score_outputs[0], row_absmax, rows, keep_ratio, key_keep);
    });
    std::vector<int> counts = to_host(d_counts, 2);
    printf("  water-fill + keep + compact %7.1f us  (%d Newton steps, %d of %d rows kept)\n", keep_us, counts[1], counts[0], rows);

    free_all(dys);
    free_all(code_copies);
    free_all(score_outputs);
    free_all(row_absmaxes);
    void* buffers[] = {dy.device, d_codes, d_steps, d_probs, d_kept_probs, d_kept_rows, d_counts, d_kept_absmax_bits};
    for (void* b : buffers) cudaCheck(cudaFree(b));
    return bitsplit_pass && lss_pass;
}

int main(int argc, char** argv) {
    cudaCheck(cudaSetDevice(0));
    if (argc > 1 && strcmp(argv[1], "--check") == 0) return run_checks() ? EXIT_SUCCESS : EXIT_FAILURE;
    int version = argc > 1 ? atoi(argv[1]) : 3;
    if (version < 1 || version > 3) { fprintf(stderr, "version must be 1, 2 or 3 (got %d)\n", version); return EXIT_FAILURE; }
    const int rows = 16384;
    bool pass = benchmark(version, rows, 768, 3072);
    pass = benchmark(version, rows, 3072, 768) && pass;
    return pass ? EXIT_SUCCESS : EXIT_FAILURE;
}
