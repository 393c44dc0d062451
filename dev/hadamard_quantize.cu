/*
Fused block Hadamard transform + LSQ INT4 quantizer + packing: the forward operand of HQ-MM (../shared/method.md).
For a rows x K BF16 tensor v and the step s (a device scalar):
    packed[r][k/2] = two codes of q(v·H), q(t) = clamp(round_half_even(t / |s|), -8, 7), H = blockdiag(H_g, ...),
    element 2j in the low nibble, element 2j+1 in the high nibble.
Every version runs the FP32 operations of hadamard_block_inplace (kernels/int4_math.h) in the reference's order
(butterfly stages 1, 2, 4, ..., then x 1/sqrt(g)), then quantize_int4 (version 4: a shortcut proven to give the
same codes) and pack_int4_pair, so its bytes equal the CPU reference (kernels/int4_reference.h) exactly.
Built without --use_fast_math: IEEE division, rint.

Compile: make dev/hadamard_quantize GPU_ARCH="80 90a"
Run:     ./dev/hadamard_quantize [version] [g]   validate, then time 16384 x {768, 3072, 4096} (every g, or just g)
         ./dev/hadamard_quantize --check         every version, g = 16, 32, 64, 128, small shapes: PASS/FAIL lines

version 1: one thread per (row, g-block), the block in local memory, scalar loads, byte stores
           (kernels/quant_linear.h's kernel, writing packed codes)
version 2: one warp per 256 values, 8 per lane from one 16-byte load: stages 1, 2, 4 in registers,
           stages 8 .. g/2 across lanes with __shfl_xor_sync; 8 codes per lane in one 4-byte store
version 3: a lane owns min(g, 32) consecutive values; each warp stages its values through shared memory so global
           loads stay 16-byte coalesced while stages up to 16 are in-register adds: only g = 64 and 128 shuffle
           (1 and 2 stages, against 3 and 4 in version 2); 8- or 16-byte stores
version 4: version 3 without a division per value: t·RN(1/|s|) gives the code unless it lies within 2^-17 of a
           half-integer; such a lane (~1 in 2000) redoes its values with quantize_int4. The IEEE division and its
           slow-path branch are ~9 SASS instructions per value: ~29 per value in version 3, ~23 here (sm_90a)
*/
#include <string.h>
#include <type_traits>
#include <vector>
#include "../kernels/common.h"
#include "timing.h"
#include "../kernels/int4_math.h"
#include "../kernels/int4_reference.h"
#include "../kernels/rng.h"

#define FULL_MASK 0xffffffffu

// ----------------------------------------------------------------------------------------------------------------
// CPU reference

// packed codes of q(v·H) for a rows x K tensor (flat row-major), from the shared scalar functions
void hadamard_quantize_cpu(uint8_t* packed, const float* v, int rows, int K, int g, float step) {
    size_t n = (size_t)rows * K;
    std::vector<float> transformed(n);
    std::vector<int8_t> codes(n);
    hadamard_rows_cpu(v, transformed.data(), rows, K, g);
    quantize_int4_cpu(transformed.data(), codes.data(), n, fabsf(step));
    pack_int4_cpu(codes.data(), packed, n);
}

// ----------------------------------------------------------------------------------------------------------------
// Device helpers of versions 2, 3 and 4

// stages h = 1, 2, ..., E/2 of hadamard_block_inplace on E consecutive values of one block held by one thread:
// the reference's pairs (j, j + h) in its order, one loop of E/2 pairs per stage: constant trip counts unroll
// completely (the reference's three nested loops do not, at E = 32) and x stays in registers
template <int E>
__device__ __forceinline__ void hadamard_stages_in_thread(float (&x)[E]) {
#pragma unroll
    for (int h = 1; h < E; h *= 2) {
#pragma unroll
        for (int pair = 0; pair < E / 2; pair++) {
            int j = pair / h * 2 * h + pair % h;
            float a = x[j], b = x[j + h];
            x[j] = F32_ADD(a, b);
            x[j + h] = F32_SUB(a, b);
        }
    }
}

// one stage h >= E of hadamard_block_inplace when lane l holds values l·E .. l·E + E-1 of its block: value j
// pairs with j + h, held by lane l ^ (h/E) in the same register. The lower lane needs a + b, the upper a − b
// (a = lower's value, b = upper's). Both are partner + sign·own in one FFMA: ±own is exact, so the FMA's single
// rounding is the reference's rounding of a + b or a − b (IEEE defines a − b as a + (−b), signed zeros included).
template <int E>
__device__ __forceinline__ void hadamard_stage_across_lanes(float (&x)[E], int lane_offset) {
    float sign = (threadIdx.x % 32) & lane_offset ? -1.0f : 1.0f;
#pragma unroll
    for (int e = 0; e < E; e++) {
        float partner = __shfl_xor_sync(FULL_MASK, x[e], lane_offset);
        x[e] = __fmaf_rn(sign, x[e], partner);
    }
}

// the last step of hadamard_block_inplace (× 1/√g), then the codes of E values, 8 per 32-bit word (pack_int4_pair
// per byte, byte b of a word = values 2b and 2b+1, so the words stored little-endian are the packed layout)
template <int E>
__device__ __forceinline__ void quantize_pack(uint32_t (&words)[E / 8], const float (&x)[E], float norm, float step_abs) {
#pragma unroll
    for (int w = 0; w < E / 8; w++) {
        uint32_t word = 0;
#pragma unroll
        for (int b = 0; b < 4; b++) {
            int lo = quantize_int4(F32_MUL(x[8 * w + 2 * b], norm), step_abs);
            int hi = quantize_int4(F32_MUL(x[8 * w + 2 * b + 1], norm), step_abs);
            word |= (uint32_t)pack_int4_pair(lo, hi) << (8 * b);
        }
        words[w] = word;
    }
}

// ----------------------------------------------------------------------------------------------------------------
// Kernels. All see the tensor as flat: K is a multiple of g, so g-blocks never straddle rows, and n = rows·K.

// v1: packed codes of q(v·H); one thread per (row, g-block): the block is read value by value into a local array,
// transformed by hadamard_block_inplace itself, quantized and written one packed byte at a time
__global__ void hadamard_quantize_kernel1(uint8_t* packed, const __nv_bfloat16* v, long n_blocks, int g,
                                          const float* step) {
    long b = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) return;
    const __nv_bfloat16* src = v + b * g;
    uint8_t* dst = packed + b * g / 2;
    float block[128];
    for (int i = 0; i < g; i++) block[i] = __bfloat162float(src[i]);
    hadamard_block_inplace(block, g);
    float step_abs = fabsf(*step);
    for (int i = 0; i < g; i += 2) dst[i / 2] = pack_int4_pair(quantize_int4(block[i], step_abs), quantize_int4(block[i + 1], step_abs));
}

// v2: packed codes of q(v·H); one warp per 256 consecutive values, lane l holding values 8l .. 8l+7 of the warp's
// chunk (one coalesced 16-byte load): stages 1, 2, 4 in registers, stages 8 .. G/2 across lanes by shuffles
template <int G>
__global__ void hadamard_quantize_kernel2(uint8_t* packed, const __nv_bfloat16* v, long n, float norm, const float* step) {
    long first = ((long)blockIdx.x * blockDim.x + threadIdx.x) * 8;  // this lane's first value
    if (first - (long)(threadIdx.x % 32) * 8 >= n) return;           // the whole warp is past the end
    // n is a multiple of G: a lane's 8 values, and every block a lane shares, lie wholly inside or outside
    bool active = first < n;
    float x[8];
    unpack_bf16x8(x, active ? *reinterpret_cast<const uint4*>(v + first) : make_uint4(0, 0, 0, 0));
    hadamard_stages_in_thread<8>(x);
#pragma unroll
    for (int h = 8; h < G; h *= 2) hadamard_stage_across_lanes<8>(x, h / 8);
    uint32_t word[1];
    quantize_pack<8>(word, x, norm, fabsf(*step));
    if (active) *reinterpret_cast<uint32_t*>(packed + first / 2) = word[0];
}

#define STAGED_WARPS 8  // warps per block in versions 3 and 4

// shared-memory position of a warp's 16-byte slot s in versions 3 and 4: an XOR swizzle inside each lane's group of
// SLOTS slots, so that both the coalesced writes (8 consecutive slots per quarter-warp) and the per-lane reads (slot
// stride SLOTS) touch 8 distinct 16-byte bank groups: no bank conflicts
template <int SLOTS>
__device__ __forceinline__ int staging_index(int s) { return s ^ ((s >> 3) & (SLOTS - 1)); }

// values per lane in versions 3 and 4
template <int G> constexpr int staged_values_per_lane() { return G < 32 ? G : 32; }

// versions 3 and 4, first half: lane l of the warp whose chunk starts at value `base` gets values base + l·E ..
// base + l·E + E-1, transformed by every stage of hadamard_block_inplace except the final × 1/√G. The chunk goes
// through shared memory (`staging`: this warp's 32·E/8 slots) so that the global loads are coalesced 16-byte loads.
// Returns false for a lane past the end of the tensor (its x is zero; it still takes part in the shuffles).
template <int G>
__device__ __forceinline__ bool load_staged_and_transform(float (&x)[staged_values_per_lane<G>()], uint4* staging,
                                                          const __nv_bfloat16* v, long base, long n) {
    constexpr int E = staged_values_per_lane<G>();
    constexpr int SLOTS = E / 8;  // 16-byte slots per lane
    int lane = threadIdx.x % 32;
    const uint4* src = reinterpret_cast<const uint4*>(v + base);
    long n_slots = (n - base) / 8;  // slots of this chunk inside the tensor (a multiple of SLOTS: n is one of G)
#pragma unroll
    for (int r = 0; r < SLOTS; r++) {
        int s = r * 32 + lane;
        if (s < n_slots) staging[staging_index<SLOTS>(s)] = src[s];
    }
    __syncwarp();
    bool active = lane * SLOTS < n_slots;
#pragma unroll
    for (int j = 0; j < SLOTS; j++) {
        uint4 bits = active ? staging[staging_index<SLOTS>(lane * SLOTS + j)] : make_uint4(0, 0, 0, 0);
        unpack_bf16x8(x + 8 * j, bits);
    }
    hadamard_stages_in_thread<E>(x);
#pragma unroll
    for (int h = E; h < G; h *= 2) hadamard_stage_across_lanes<E>(x, h / E);
    return active;
}

// versions 3 and 4, second half: a lane's E/2 packed bytes in one 8- or 16-byte store
template <int SLOTS>
__device__ __forceinline__ void store_words(uint8_t* dst, const uint32_t (&words)[SLOTS]) {
    if constexpr (SLOTS == 2) {
        *reinterpret_cast<uint2*>(dst) = make_uint2(words[0], words[1]);
    } else {
        *reinterpret_cast<uint4*>(dst) = make_uint4(words[0], words[1], words[2], words[3]);
    }
}

// v3: packed codes of q(v·H); lane l owns E = min(G, 32) consecutive values (l·E .. l·E + E-1 of its warp's chunk
// of 32·E), read back from a shared-memory copy of the chunk: stages 1 .. E/2 are in-register adds, stages >= 32
// (G = 64, 128) go across lanes by shuffles; E/2 bytes per lane in one store
template <int G>
__global__ void hadamard_quantize_kernel3(uint8_t* packed, const __nv_bfloat16* v, long n, float norm, const float* step) {
    constexpr int E = staged_values_per_lane<G>();
    __shared__ uint4 staging[STAGED_WARPS][32 * E / 8];
    int warp = threadIdx.x / 32;
    long base = ((long)blockIdx.x * STAGED_WARPS + warp) * 32 * E;
    if (base >= n) return;
    float x[E];
    bool active = load_staged_and_transform<G>(x, staging[warp], v, base, n);
    uint32_t words[E / 8];
    quantize_pack<E>(words, x, norm, fabsf(*step));
    if (active) store_words<E / 8>(packed + (base + (long)(threadIdx.x % 32) * E) / 2, words);
}

// quantize_int4(t, |s|) without a division, exact whenever *tie_gap > 2^-17 (all but a few values in a million).
// reciprocal = RN(1/|s|), a normal number. Then y = t·reciprocal is within |t/s|·2^-23·(1 + 2^-24) + 2^-150 of t/|s|.
// Clamping y to [−8.25, 7.25] before rounding settles the ends: beyond them t/|s| is beyond −8.2 or 7.2, so the exact
// code is the same end (a NaN t lands on −8.25 and gives −8, as quantize_int4's clamp does). Inside, |y − t/|s|| <
// 2^-19.8 and fl(t/|s|) is within half an ulp (<= 2^-21) of t/|s|: |y − fl(t/|s|)| < 2^-19. So when y is more than
// 2^-17 from every half-integer (tie_gap = 0.5 − |y − rint(y)|, exact), fl(t/|s|) rounds to the same integer.
// Checked on the CPU with the same float operations: all 2^32 t for five steps, 2.6e8 random and near-tie (t, s).
__device__ __forceinline__ int quantize_int4_by_reciprocal(float t, float reciprocal, float* tie_gap) {
    float y = fminf(fmaxf(__fmul_rn(t, reciprocal), -8.25f), 7.25f);
    float nearest = rintf(y);
    *tie_gap = __fsub_rn(0.5f, fabsf(__fsub_rn(y, nearest)));
    return (int)nearest;
}

// quantize_pack with quantize_int4_by_reciprocal; returns false if any of the E values came within 2^-17 of a
// tie, and then the caller redoes the lane with quantize_pack (one rarely taken branch per lane, none per value)
template <int E>
__device__ __forceinline__ bool quantize_pack_by_reciprocal(uint32_t (&words)[E / 8], const float (&x)[E], float norm,
                                                            float reciprocal) {
    float min_tie_gap = 0.5f;
#pragma unroll
    for (int w = 0; w < E / 8; w++) {
        uint32_t word = 0;
#pragma unroll
        for (int b = 0; b < 4; b++) {
            float gap_lo, gap_hi;
            int lo = quantize_int4_by_reciprocal(F32_MUL(x[8 * w + 2 * b], norm), reciprocal, &gap_lo);
            int hi = quantize_int4_by_reciprocal(F32_MUL(x[8 * w + 2 * b + 1], norm), reciprocal, &gap_hi);
            min_tie_gap = fminf(min_tie_gap, fminf(gap_lo, gap_hi));
            word |= (uint32_t)pack_int4_pair(lo, hi) << (8 * b);
        }
        words[w] = word;
    }
    return min_tie_gap > 0x1p-17f;
}

// v4: v3 with the division-free quantizer (quantize_int4_by_reciprocal): same thread layout, same bytes
template <int G>
__global__ void hadamard_quantize_kernel4(uint8_t* packed, const __nv_bfloat16* v, long n, float norm, const float* step) {
    constexpr int E = staged_values_per_lane<G>();
    __shared__ uint4 staging[STAGED_WARPS][32 * E / 8];
    int warp = threadIdx.x / 32;
    long base = ((long)blockIdx.x * STAGED_WARPS + warp) * 32 * E;
    if (base >= n) return;
    float x[E];
    bool active = load_staged_and_transform<G>(x, staging[warp], v, base, n);
    float step_abs = fabsf(*step);
    bool reciprocal_is_normal = step_abs >= 0x1p-126f && step_abs <= 0x1p126f;  // the same for every thread
    uint32_t words[E / 8];
    if (!(reciprocal_is_normal && quantize_pack_by_reciprocal<E>(words, x, norm, __frcp_rn(step_abs)))) {
        quantize_pack<E>(words, x, norm, step_abs);
    }
    if (active) store_words<E / 8>(packed + (base + (long)(threadIdx.x % 32) * E) / 2, words);
}

// the bandwidth ceiling: out = in for n_vectors x 16 bytes; one thread per 16-byte vector
__global__ void copy_kernel(uint4* out, const uint4* in, long n_vectors) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n_vectors) out[i] = in[i];
}

// ----------------------------------------------------------------------------------------------------------------
// Launchers

// calls launch(std::integral_constant<int, G>()) with G = the runtime Hadamard block size g (checked by the caller)
template <typename Launch>
void with_block_size(int g, Launch launch) {
    switch (g) {
        case 16: launch(std::integral_constant<int, 16>()); break;
        case 32: launch(std::integral_constant<int, 32>()); break;
        case 64: launch(std::integral_constant<int, 64>()); break;
        default: launch(std::integral_constant<int, 128>()); break;
    }
}

void hadamard_quantize1(uint8_t* packed, const __nv_bfloat16* v, int rows, int K, int g, const float* step) {
    long n_blocks = (long)rows * K / g;
    const int threads = 128;
    hadamard_quantize_kernel1<<<CEIL_DIV(n_blocks, threads), threads>>>(packed, v, n_blocks, g, step);
}

void hadamard_quantize2(uint8_t* packed, const __nv_bfloat16* v, int rows, int K, int g, const float* step) {
    long n = (long)rows * K;
    const int threads = 256;
    with_block_size(g, [&](auto block_size) {
        constexpr int G = decltype(block_size)::value;
        hadamard_quantize_kernel2<G><<<CEIL_DIV(n / 8, threads), threads>>>(packed, v, n, hadamard_norm(G), step);
    });
}

void hadamard_quantize3(uint8_t* packed, const __nv_bfloat16* v, int rows, int K, int g, const float* step) {
    long n = (long)rows * K;
    with_block_size(g, [&](auto block_size) {
        constexpr int G = decltype(block_size)::value;
        long values_per_block = 32L * staged_values_per_lane<G>() * STAGED_WARPS;
        hadamard_quantize_kernel3<G><<<CEIL_DIV(n, values_per_block), 32 * STAGED_WARPS>>>(packed, v, n, hadamard_norm(G), step);
    });
}

void hadamard_quantize4(uint8_t* packed, const __nv_bfloat16* v, int rows, int K, int g, const float* step) {
    long n = (long)rows * K;
    with_block_size(g, [&](auto block_size) {
        constexpr int G = decltype(block_size)::value;
        long values_per_block = 32L * staged_values_per_lane<G>() * STAGED_WARPS;
        hadamard_quantize_kernel4<G><<<CEIL_DIV(n, values_per_block), 32 * STAGED_WARPS>>>(packed, v, n, hadamard_norm(G), step);
    });
}

// g is 16, 32, 64 or 128 and K a multiple of g (so also of 16: 16-byte aligned rows for the vector loads)
void hadamard_quantize(int version, uint8_t* packed, const __nv_bfloat16* v, int rows, int K, int g, const float* step) {
    if (g != 16 && g != 32 && g != 64 && g != 128) { fprintf(stderr, "g must be 16, 32, 64 or 128 (got %d)\n", g); exit(EXIT_FAILURE); }
    if (K % g != 0) { fprintf(stderr, "K = %d is not a multiple of g = %d\n", K, g); exit(EXIT_FAILURE); }
    switch (version) {
        case 1: hadamard_quantize1(packed, v, rows, K, g, step); break;
        case 2: hadamard_quantize2(packed, v, rows, K, g, step); break;
        case 3: hadamard_quantize3(packed, v, rows, K, g, step); break;
        case 4: hadamard_quantize4(packed, v, rows, K, g, step); break;
        default: fprintf(stderr, "version must be 1, 2, 3 or 4 (got %d)\n", version); exit(EXIT_FAILURE);
    }
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------------------------------------------
// Test data, validation and timing

// a BF16 tensor on the device and its values as FP32 on the host
struct Input {
    std::vector<float> host;
    __nv_bfloat16* device;
};

// uploads values rounded to BF16, and keeps the rounded values as FP32 on the host
Input upload_as_bf16(const std::vector<float>& values) {
    Input in{std::vector<float>(values.size()), nullptr};
    std::vector<__nv_bfloat16> bf16(values.size());
    for (size_t i = 0; i < values.size(); i++) {
        bf16[i] = host_float_to_bf16(values[i]);
        in.host[i] = __bfloat162float(bf16[i]);
    }
    cudaCheck(cudaMalloc(&in.device, bf16.size() * sizeof(__nv_bfloat16)));
    cudaCheck(cudaMemcpy(in.device, bf16.data(), bf16.size() * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
    return in;
}

// n values from the shared hash (fixed seed): N(0, 1) with one value in 64 scaled by 20 (activation outliers),
// or, with small_integers, integers in [-4, 4], whose transform is exact for g = 16 and 64 (1/√g = 1/4, 1/8):
// at step 0.5 many quotients are exactly k + 0.5, the round-half-even ties
std::vector<float> test_values(size_t n, bool small_integers) {
    std::vector<float> values(n);
    uint32_t key = rng_key(1234, small_integers ? 2 : 1);
    for (size_t i = 0; i < n; i++) {
        if (small_integers) {
            values[i] = (float)(int)(rng_hash_keyed(key, (uint32_t)i) % 9) - 4.0f;
        } else {
            values[i] = rng_normal(key, (uint32_t)i);
            if (rng_hash_keyed(key ^ 0x55555555u, (uint32_t)i) % 64 == 0) values[i] *= 20.0f;
        }
    }
    return values;
}

Input make_input(size_t n, bool small_integers) { return upload_as_bf16(test_values(n, small_integers)); }

float float_from_bits(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

// A BF16 value a and a step s that defeat a division-free quantizer: a block [a, 0, ..., 0] transforms to
// t = fl(a/√g) in every position, and fl(t/|s|) is a tie that t·RN(1/|s|) misses (version 4's fast path would give
// the wrong code, so its exact path must decide). Searched among a in [1, 2) and steps within 64 ulps of
// t/(k + 1/2); found within a few thousand candidates for every g.
bool find_tie_trap(int g, float* a, float* step) {
    for (uint32_t mantissa = 0; mantissa < 128; mantissa++) {
        *a = float_from_bits((0x3f80u | mantissa) << 16);
        float t = F32_MUL(*a, hadamard_norm(g));
        for (int twice_tie = -15; twice_tie <= 13; twice_tie += 2) {
            float nearest_step = fabsf(t / (0.5f * twice_tie));
            uint32_t nearest_step_bits;
            memcpy(&nearest_step_bits, &nearest_step, sizeof nearest_step_bits);
            for (int d = -64; d <= 64; d++) {
                *step = float_from_bits(nearest_step_bits + d);
                int by_reciprocal = (int)rintf(fminf(fmaxf(t * (1.0f / *step), -8.25f), 7.25f));
                if (by_reciprocal != quantize_int4(t, *step)) return true;
            }
        }
    }
    return false;
}

// the Gaussian test values with every third g-block replaced by [a, 0, ..., 0]
Input make_tie_trap_input(size_t n, int g, float a) {
    std::vector<float> values = test_values(n, false);
    for (size_t block = 0; block < n / g; block += 3) {
        for (int i = 0; i < g; i++) values[block * g + i] = i == 0 ? a : 0.0f;
    }
    return upload_as_bf16(values);
}

float* device_scalar(float value) {
    float* d;
    cudaCheck(cudaMalloc(&d, sizeof(float)));
    cudaCheck(cudaMemcpy(d, &value, sizeof(float), cudaMemcpyHostToDevice));
    return d;
}

// runs one version and compares its packed bytes with the CPU reference's; prints the first difference
bool packed_matches_reference(int version, const Input& in, int rows, int K, int g, float step, const float* d_step) {
    size_t n_bytes = (size_t)rows * K / 2;
    std::vector<uint8_t> expected(n_bytes), got(n_bytes);
    hadamard_quantize_cpu(expected.data(), in.host.data(), rows, K, g, step);
    // the output starts as the complement of the expected bytes, so a byte the kernel fails to write differs
    for (size_t i = 0; i < n_bytes; i++) got[i] = (uint8_t)~expected[i];
    uint8_t* d_packed;
    cudaCheck(cudaMalloc(&d_packed, n_bytes));
    cudaCheck(cudaMemcpy(d_packed, got.data(), n_bytes, cudaMemcpyHostToDevice));
    hadamard_quantize(version, d_packed, in.device, rows, K, g, d_step);
    cudaCheck(cudaMemcpy(got.data(), d_packed, n_bytes, cudaMemcpyDeviceToHost));
    cudaCheck(cudaFree(d_packed));
    for (size_t i = 0; i < n_bytes; i++) {
        if (got[i] != expected[i]) {
            printf("  first difference at byte %zu (row %zu, columns %zu-%zu): got 0x%02x, expected 0x%02x\n", i,
                   2 * i / K, 2 * i % K, 2 * i % K + 1, got[i], expected[i]);
            return false;
        }
    }
    return true;
}

// the step LSQ initialises with, 2·mean|v|/√7, from the input (the transform preserves the mean square)
float lsq_step_for(const Input& in) { return lsq_init_step_cpu(in.host.data(), in.host.size()); }

// every version, every g, three inputs: Gaussian with outliers at the LSQ initial step; small integers at step −0.5,
// where ties are frequent and |s| must be taken; tie traps (find_tie_trap) mixed into the Gaussian values. One
// PASS/FAIL line per (version, g)
bool run_checks() {
    const int rows = 37, K = 384;  // rows·K = 14208 is not a multiple of any version's chunk: tails are exercised
    const size_t n = (size_t)rows * K;
    Input gaussian = make_input(n, false), integers = make_input(n, true);
    float gaussian_step = lsq_step_for(gaussian), integer_step = -0.5f;
    float *d_gaussian_step = device_scalar(gaussian_step), *d_integer_step = device_scalar(integer_step);
    bool all_pass = true;
    for (int g : {16, 32, 64, 128}) {
        float trap_value, trap_step;
        if (!find_tie_trap(g, &trap_value, &trap_step)) {
            printf("FAIL hadamard_quantize g%d: no tie trap found for the check input\n", g);
            all_pass = false;
            continue;
        }
        Input traps = make_tie_trap_input(n, g, trap_value);
        float* d_trap_step = device_scalar(trap_step);
        for (int version = 1; version <= 4; version++) {
            bool pass = packed_matches_reference(version, gaussian, rows, K, g, gaussian_step, d_gaussian_step);
            pass = packed_matches_reference(version, integers, rows, K, g, integer_step, d_integer_step) && pass;
            pass = packed_matches_reference(version, traps, rows, K, g, trap_step, d_trap_step) && pass;
            printf("%s hadamard_quantize v%d g%d\n", pass ? "PASS" : "FAIL", version, g);
            all_pass = all_pass && pass;
        }
        cudaCheck(cudaFree(traps.device));
        cudaCheck(cudaFree(d_trap_step));
    }
    cudaCheck(cudaFree(gaussian.device));
    cudaCheck(cudaFree(integers.device));
    cudaCheck(cudaFree(d_gaussian_step));
    cudaCheck(cudaFree(d_integer_step));
    return all_pass;
}

// mean time of one launch in microseconds; launch(i) runs the i-th launch (3 untimed first)
template <typename Launch>
float time_us(Launch launch) {
    return mean_launch_ms(launch, 3, 50) * 1000.0f;
}

// copies of the input (the first is in.device) and of the packed output, allocated for rotation
struct Rotation {
    std::vector<__nv_bfloat16*> inputs;
    std::vector<uint8_t*> outputs;
};

Rotation make_rotation(const Input& in, size_t n, int copies) {
    Rotation r;
    for (int c = 0; c < copies; c++) {
        __nv_bfloat16* input = in.device;
        if (c > 0) {
            cudaCheck(cudaMalloc(&input, n * sizeof(__nv_bfloat16)));
            cudaCheck(cudaMemcpy(input, in.device, n * sizeof(__nv_bfloat16), cudaMemcpyDeviceToDevice));
        }
        uint8_t* output;
        cudaCheck(cudaMalloc(&output, n / 2));
        r.inputs.push_back(input);
        r.outputs.push_back(output);
    }
    return r;
}

void free_rotation(Rotation& r) {
    for (size_t c = 1; c < r.inputs.size(); c++) cudaCheck(cudaFree(r.inputs[c]));
    for (uint8_t* output : r.outputs) cudaCheck(cudaFree(output));
}

// time of the BF16 copy of n values (read 2n, write 2n bytes), the ceiling for a pass over the tensor
float copy_time_us(size_t n) {
    size_t bytes = n * sizeof(__nv_bfloat16);
    int copies = rotating_copies(2 * bytes);
    std::vector<uint4*> src(copies), dst(copies);
    for (int c = 0; c < copies; c++) {
        cudaCheck(cudaMalloc(&src[c], bytes));
        cudaCheck(cudaMalloc(&dst[c], bytes));
        cudaCheck(cudaMemset(src[c], 0, bytes));
    }
    long n_vectors = (long)(bytes / 16);
    float us = time_us([&](int i) {
        copy_kernel<<<CEIL_DIV(n_vectors, 256), 256>>>(dst[i % copies], src[i % copies], n_vectors);
    });
    cudaCheck(cudaGetLastError());
    for (int c = 0; c < copies; c++) {
        cudaCheck(cudaFree(src[c]));
        cudaCheck(cudaFree(dst[c]));
    }
    return us;
}

int main(int argc, char** argv) {
    cudaCheck(cudaSetDevice(0));
    if (argc > 1 && strcmp(argv[1], "--check") == 0) return run_checks() ? EXIT_SUCCESS : EXIT_FAILURE;
    int version = argc > 1 ? atoi(argv[1]) : 4;
    std::vector<int> block_sizes = {16, 32, 64, 128};
    if (argc > 2) block_sizes = {atoi(argv[2])};
    printf("hadamard_quantize version %d: bytes moved = 2 per BF16 value read + 1/2 per code written\n", version);
    const int rows = 16384;
    bool all_pass = true;
    for (int K : {768, 3072, 4096}) {
        size_t n = (size_t)rows * K;
        Input in = make_input(n, false);
        float step = lsq_step_for(in);
        float* d_step = device_scalar(step);
        float copy_us = copy_time_us(n);
        double copy_gbs = 4.0 * n / (copy_us * 1e3);
        printf("%d x %d: BF16 copy %.1f us, %.0f GB/s\n", rows, K, copy_us, copy_gbs);
        for (int g : block_sizes) {
            bool pass = packed_matches_reference(version, in, rows, K, g, step, d_step);
            all_pass = all_pass && pass;
            if (!pass) {
                printf("FAIL hadamard_quantize v%d g%d %dx%d: packed bytes differ from the CPU reference\n", version, g, rows, K);
                continue;
            }
            Rotation rotation = make_rotation(in, n, rotating_copies(n * 5 / 2));
            float us = time_us([&](int i) {
                int c = i % (int)rotation.inputs.size();
                hadamard_quantize(version, rotation.outputs[c], rotation.inputs[c], rows, K, g, d_step);
            });
            free_rotation(rotation);
            double gbs = 2.5 * n / (us * 1e3);
            printf("  g = %3d: exact | %7.1f us | %5.0f GB/s | %3.0f%% of copy bandwidth\n", g, us, gbs, 100.0 * gbs / copy_gbs);
        }
        cudaCheck(cudaFree(in.device));
        cudaCheck(cudaFree(d_step));
    }
    return all_pass ? EXIT_SUCCESS : EXIT_FAILURE;
}
