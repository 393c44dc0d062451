// INT4 GEMM with a fused dequantize + bias epilogue: the forward product of train_int4's quantized linear layers.
//   acc[n][m] = Σ_k A[n][k]·B[m][k]   (INT32)
//   out[n][m] = bf16 or fp32( acc[n][m] · scale_a[n] · scale_b[m] + bias[m] )
// A (N x K) and B (M x K) hold INT4 codes in [-8, 7] packed two per byte along K, K-major (kernels/int4_math.h:
// element 2j in the low nibble, 2j+1 in the high nibble). Scales are per row; a per-tensor scale is the case of
// equal entries.
//
// Build: make dev/int4_gemm     (sm_80 + sm_90a; no --use_fast_math: the epilogue rounds like the CPU reference)
// Run:   ./dev/int4_gemm [version] [N M K]   default: the fastest version for this GPU on GPT-2-sized shapes
//        ./dev/int4_gemm --check             every version on five shapes, PASS/FAIL per version and output
// Sizes: any N, M >= 1. K: a multiple of 16 (the smallest Hadamard block g) for versions 1-3, of 32 for versions
// 4-7, whose 16-byte cp.async and TMA loads need packed rows (K/2 bytes) in whole 16-byte units. Tiles past N, M
// or K are loaded as zeros and their outputs not stored.
//
// version 1: naive, one thread per output, nibbles unpacked straight from global memory
// version 2: 64x64 output tiles, packed k-tiles in shared memory, 4x4 outputs per thread, scalar integer math
// version 3: mma.sync m16n8k32 s8 tensor cores; nibbles sign-extended to s8 while building the fragments
//            (the H100 path: sm_90 has no INT4 tensor cores, its s4 mma is emulated)
// version 4: version 3 + a 4-stage cp.async pipeline, 128x128x128 tiles on 8 warps, one 128-bit shared load
//            per row and k-tile (a k-permutation instead of ldmatrix), nibbles expanded as 16·q in 3 ops per word
// version 5: native INT4, mma.sync m16n8k64 s4 on the packed bytes, in version 4's pipeline (the sm_80/86/89
//            path; on sm_90 it is correct but emulated, ~26x slower than s8: ../shared/device-ceilings.md)
// version 6: sm_90a, warp-specialised: TMA streams packed k-tiles into an mbarrier ring, two consumer warp groups
//            expand them to s8 in the 128-byte swizzle and multiply with wgmma m64n128k32 s8; bf16 tile staged
//            in shared memory for 16-byte stores (needs a build with sm_90a)
// version 7: version 6 made persistent: one block per SM walks the output tiles, the TMA loader runs ahead into
//            the next tile while the consumers store the last one (the sm_90 default)
// Baselines on the same shapes: cuBLASLt BF16 (bf16 in, fp32 accumulate, bf16 out with bias) and cuBLASLt INT8
// (int8 in, int32 out, TN, CUBLAS_COMPUTE_32I).
#include <string.h>
#include <vector>
#include "../kernels/common.h"
#include "../kernels/rng.h"
#include "timing.h"
#include "../kernels/int4_math.h"
#include "../kernels/matmul.h"
#include "../kernels/hopper.h"

#define NUM_VERSIONS 7
#define MAX_K 65536                         // versions 4, 6 accumulate 256·acc: 256·64·K must stay below 2^31
#define FULL_CHECK_MAX_MACS (1ull << 28)    // beyond this the CPU checks a sample (a full check would take minutes)
#define SAMPLED_OUTPUTS 4096
#define WARMUP_REPEATS 3
#define TIMED_REPEATS 20

// one INT4 GEMM problem as the kernels see it
struct Int4GemmParams {
    const uint8_t* a;             // (N, K/2) packed INT4
    const uint8_t* b;             // (M, K/2) packed INT4
    const float* scale_a;         // (N)
    const float* scale_b;         // (M)
    const __nv_bfloat16* bias;    // (M)
    __nv_bfloat16* out;           // (N, M), or when out_f32 is set:
    float* out_f32;               // (N, M) FP32 outputs instead
    int32_t* acc_out;             // (N, M) the raw accumulators, for exact validation; nullptr when timing
    int N, M, K;
};

// ---------------------------------------------------------------------------------------------------------------
// CPU reference

// the epilogue in FP32 with one rounding per operation and no FMA (F32_MUL/F32_ADD are __fmul_rn/__fadd_rn on the
// GPU), products before the sum: host and device compute the same float, only the final bf16 rounding follows
HD float epilogue_value(int32_t acc, float scale_a, float scale_b, float bias) {
    return F32_ADD(F32_MUL(F32_MUL((float)acc, scale_a), scale_b), bias);
}

// acc[n][m] for one output from the packed rows a_row = A[n] and b_row = B[m]
static int32_t int4_dot_reference(const uint8_t* a_row, const uint8_t* b_row, int K) {
    int32_t acc = 0;
    for (int j = 0; j < K / 2; j++) {
        acc += unpack_int4_lo(a_row[j]) * unpack_int4_lo(b_row[j]) + unpack_int4_hi(a_row[j]) * unpack_int4_hi(b_row[j]);
    }
    return acc;
}

// ---------------------------------------------------------------------------------------------------------------
// device helpers shared by the kernels

// signed INT4 value j (0..7) of a 32-bit word of packed codes: bits 4j..4j+3, sign-extended
__device__ __forceinline__ int int4_from_word(uint32_t word, int j) { return (int)(word << (28 - 4 * j)) >> 28; }

// out[n][m] (and acc_out[n][m] when validating) from one accumulator; nothing past the last row or column
__device__ __forceinline__ void store_result(const Int4GemmParams& p, int n, int m, int32_t acc) {
    if (n >= p.N || m >= p.M) return;
    size_t idx = (size_t)n * p.M + m;
    if (p.acc_out) p.acc_out[idx] = acc;
    float y = epilogue_value(acc, p.scale_a[n], p.scale_b[m], __bfloat162float(p.bias[m]));
    if (p.out_f32) {
        p.out_f32[idx] = y;
    } else {
        p.out[idx] = __float2bfloat16_rn(y);
    }
}

// out[n][m], out[n][m+1] from two accumulators (m even): one 4-byte bf16x2 (or 8-byte float2) store, one 8-byte
// int2 store. CHECK_BOUNDS: nothing past the last row, and at the last column or when M is odd (rows then start
// at odd elements, misaligned for pair stores) two single stores instead.
template <bool CHECK_BOUNDS>
__device__ __forceinline__ void store_result_pair(const Int4GemmParams& p, int n, int m, int32_t acc0, int32_t acc1) {
    if (CHECK_BOUNDS && (m + 1 >= p.M || p.M % 2 != 0)) {
        store_result(p, n, m, acc0);
        store_result(p, n, m + 1, acc1);
        return;
    }
    if (CHECK_BOUNDS && n >= p.N) return;
    size_t idx = (size_t)n * p.M + m;
    if (p.acc_out) *reinterpret_cast<int2*>(p.acc_out + idx) = make_int2(acc0, acc1);
    float scale_a = p.scale_a[n];
    float y0 = epilogue_value(acc0, scale_a, p.scale_b[m], __bfloat162float(p.bias[m]));
    float y1 = epilogue_value(acc1, scale_a, p.scale_b[m + 1], __bfloat162float(p.bias[m + 1]));
    if (p.out_f32) {
        *reinterpret_cast<float2*>(p.out_f32 + idx) = make_float2(y0, y1);
    } else {
        *reinterpret_cast<__nv_bfloat162*>(p.out + idx) = __floats2bfloat162_rn(y0, y1);
    }
}

// D = A·B + D on one 16x8 tile with k = 32 signed bytes. Fragments (PTX ISA, "Matrix Fragments for
// mma.m16n8k32", .s8), lane = 4·group + tig, the lowest byte of a register holds the lowest k:
//   a[0]: row group,   k 4·tig..4·tig+3        a[1]: row group+8, k 4·tig..4·tig+3
//   a[2]: row group,   k 16+4·tig..+3          a[3]: row group+8, k 16+4·tig..+3
//   b[0]: col group,   k 4·tig..4·tig+3        b[1]: col group,   k 16+4·tig..+3
//   c[0], c[1]: row group, cols 2·tig, 2·tig+1     c[2], c[3]: row group+8, cols 2·tig, 2·tig+1
__device__ __forceinline__ void mma_s8_m16n8k32(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// D = A·B + D on one 16x8 tile with k = 64 signed nibbles. Fragments (PTX ISA, "Matrix Fragments for
// mma.m16n8k64", .s4), lane = 4·group + tig, the lowest nibble of a register holds the lowest k:
//   a[0]: row group,   k 8·tig..8·tig+7        a[1]: row group+8, k 8·tig..8·tig+7
//   a[2]: row group,   k 32+8·tig..+7          a[3]: row group+8, k 32+8·tig..+7
//   b[0]: col group,   k 8·tig..8·tig+7        b[1]: col group,   k 32+8·tig..+7
//   c: as for m16n8k32
__device__ __forceinline__ void mma_s4_m16n8k64(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// a warp's MI x NJ grid of 16x8 accumulator tiles (layout of c above) -> outputs; n_base, m_base: the warp's
// first output row and column. `shift` undoes a power-of-two operand scaling (arithmetic shift, exact there).
template <int MI, int NJ, bool CHECK_BOUNDS>
__device__ __forceinline__ void store_warp_pairs(const Int4GemmParams& p, const int32_t (&acc)[MI][NJ][4], int n_base,
                                                 int m_base, int group, int tig, int shift) {
    #pragma unroll
    for (int mi = 0; mi < MI; mi++) {
        #pragma unroll
        for (int nj = 0; nj < NJ; nj++) {
            int n = n_base + 16 * mi + group, m = m_base + 8 * nj + 2 * tig;
            store_result_pair<CHECK_BOUNDS>(p, n, m, acc[mi][nj][0] >> shift, acc[mi][nj][1] >> shift);
            store_result_pair<CHECK_BOUNDS>(p, n + 8, m, acc[mi][nj][2] >> shift, acc[mi][nj][3] >> shift);
        }
    }
}

// the same; only a warp whose outputs cross the last row or column (or with M odd) checks each pair (a branch
// uniform over the warp: checks in every warp cost version 4 about 10% at K = 768, 273 against 304 TOP/s)
template <int MI, int NJ>
__device__ __forceinline__ void store_warp_tile(const Int4GemmParams& p, const int32_t (&acc)[MI][NJ][4], int n_base,
                                                int m_base, int group, int tig, int shift) {
    if (n_base + 16 * MI <= p.N && m_base + 8 * NJ <= p.M && p.M % 2 == 0) {
        store_warp_pairs<MI, NJ, false>(p, acc, n_base, m_base, group, tig, shift);
    } else {
        store_warp_pairs<MI, NJ, true>(p, acc, n_base, m_base, group, tig, shift);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// version 1: naive

// version 1: out[n][m] as one dot product per thread, both nibbles of each byte unpacked from global memory.
// block (32, 8), one output per thread: threadIdx.x walks m, so a warp shares one row of A and reads 32 rows of B.
__global__ void int4_gemm_naive_kernel(Int4GemmParams p) {
    int m = blockIdx.x * blockDim.x + threadIdx.x;
    int n = blockIdx.y * blockDim.y + threadIdx.y;
    if (n >= p.N || m >= p.M) return;
    size_t row_bytes = p.K / 2;
    const uint8_t* a_row = p.a + n * row_bytes;
    const uint8_t* b_row = p.b + m * row_bytes;
    int32_t acc = 0;
    for (size_t j = 0; j < row_bytes; j++) {
        uint8_t x = a_row[j], y = b_row[j];
        acc += unpack_int4_lo(x) * unpack_int4_lo(y) + unpack_int4_hi(x) * unpack_int4_hi(y);
    }
    store_result(p, n, m, acc);
}

void launch_int4_gemm_naive(const Int4GemmParams& p) {
    dim3 block(32, 8);
    dim3 grid(CEIL_DIV(p.M, block.x), CEIL_DIV(p.N, block.y));
    int4_gemm_naive_kernel<<<grid, block>>>(p);
    cudaCheck(cudaGetLastError());
}

// ---------------------------------------------------------------------------------------------------------------
// version 2: shared-memory tiles

#define SMEM_TILE 64          // 64 x 64 outputs per block
#define SMEM_K_WORDS 8        // k-tile: 8 packed words = 64 INT4 values per row
#define SMEM_THREADS 256      // 16 x 16 threads, 4 x 4 outputs each

// version 2: a 64x64 output tile per block; 64-value packed k-tiles of A and B staged in shared memory.
// 16x16 threads; thread (ty, tx) owns rows ty+16i, columns tx+16j (i, j < 4) and unpacks nibbles for scalar MACs.
__global__ void __launch_bounds__(SMEM_THREADS) int4_gemm_smem_kernel(Int4GemmParams p) {
    // one padding word per row: the 16 different B rows a warp reads in one step fall on 16 distinct banks
    __shared__ uint32_t tile_a[SMEM_TILE][SMEM_K_WORDS + 1];
    __shared__ uint32_t tile_b[SMEM_TILE][SMEM_K_WORDS + 1];
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    int n0 = blockIdx.y * SMEM_TILE, m0 = blockIdx.x * SMEM_TILE;
    int row_words = p.K / 8;
    const uint32_t* a_words = reinterpret_cast<const uint32_t*>(p.a);
    const uint32_t* b_words = reinterpret_cast<const uint32_t*>(p.b);
    int32_t acc[4][4] = {};
    for (int k_word0 = 0; k_word0 < row_words; k_word0 += SMEM_K_WORDS) {
        for (int i = threadIdx.x; i < SMEM_TILE * SMEM_K_WORDS; i += SMEM_THREADS) {
            int row = i / SMEM_K_WORDS, word = i % SMEM_K_WORDS, k_word = k_word0 + word;
            bool in_k = k_word < row_words;   // zeros past the last row or k
            tile_a[row][word] = in_k && n0 + row < p.N ? a_words[(size_t)(n0 + row) * row_words + k_word] : 0u;
            tile_b[row][word] = in_k && m0 + row < p.M ? b_words[(size_t)(m0 + row) * row_words + k_word] : 0u;
        }
        __syncthreads();
        for (int word = 0; word < SMEM_K_WORDS; word++) {
            uint32_t a_word[4], b_word[4];
            for (int i = 0; i < 4; i++) a_word[i] = tile_a[ty + 16 * i][word];
            for (int j = 0; j < 4; j++) b_word[j] = tile_b[tx + 16 * j][word];
            #pragma unroll
            for (int nibble = 0; nibble < 8; nibble++) {
                int a_val[4], b_val[4];
                for (int i = 0; i < 4; i++) a_val[i] = int4_from_word(a_word[i], nibble);
                for (int j = 0; j < 4; j++) b_val[j] = int4_from_word(b_word[j], nibble);
                for (int i = 0; i < 4; i++) {
                    for (int j = 0; j < 4; j++) acc[i][j] += a_val[i] * b_val[j];
                }
            }
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 4; j++) store_result(p, n0 + ty + 16 * i, m0 + tx + 16 * j, acc[i][j]);
    }
}

void launch_int4_gemm_smem(const Int4GemmParams& p) {
    dim3 grid(CEIL_DIV(p.M, SMEM_TILE), CEIL_DIV(p.N, SMEM_TILE));
    int4_gemm_smem_kernel<<<grid, SMEM_THREADS>>>(p);
    cudaCheck(cudaGetLastError());
}

// ---------------------------------------------------------------------------------------------------------------
// version 3: s8 tensor cores

#define MMA_TILE 64           // 64 x 64 outputs per block: 2 x 2 warps of 32 x 32
#define MMA_K_BYTES 32        // k-tile: 64 INT4 values = 32 packed bytes per row
#define MMA_ROW_STRIDE 40     // shared bytes per row: 32 + 8 padding, see the bank note in the kernel
#define MMA_THREADS 128

// four INT4 codes (16 bits, lowest k in the lowest nibble) -> four sign-extended s8 bytes, byte i = nibble i
__device__ __forceinline__ uint32_t sign_extend_int4x4(uint32_t packed16) {
    uint32_t spread = (packed16 & 0x000Fu) | ((packed16 & 0x00F0u) << 4) | ((packed16 & 0x0F00u) << 8) |
                      ((packed16 & 0xF000u) << 12);
    // a byte with bit 3 set holds a negative code: OR 0xF0 into it (8·0x1E = 0xF0, so no carry between bytes)
    return spread | ((spread & 0x08080808u) * 0x1Eu);
}

__device__ __forceinline__ uint32_t load_u16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }

// version 3: a 64x64 output tile per block from m16n8k32 s8 mma; packed 64-value k-tiles staged in shared
// memory. 4 warps of 32x32 (2 x 4 mma tiles); each fragment register is 16 packed bits sign-extended to 4 bytes.
__global__ void __launch_bounds__(MMA_THREADS) int4_gemm_mma_s8_kernel(Int4GemmParams p) {
    // Bank note: a fragment load reads 8 rows (group) x 8 bytes (tig). With 40-byte rows, row g starts at word
    // 10g, and 10g mod 32 = 0, 10, 20, 30, 8, 18, 28, 6 puts the 8 word pairs on 16 distinct banks.
    __shared__ __align__(16) uint8_t tile_a[MMA_TILE * MMA_ROW_STRIDE];
    __shared__ __align__(16) uint8_t tile_b[MMA_TILE * MMA_ROW_STRIDE];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int group = lane / 4, tig = lane % 4;
    int warp_n = (warp / 2) * 32, warp_m = (warp % 2) * 32;
    int n0 = blockIdx.y * MMA_TILE, m0 = blockIdx.x * MMA_TILE;
    size_t row_bytes = p.K / 2;
    int32_t acc[2][4][4] = {};
    for (size_t k_byte0 = 0; k_byte0 < row_bytes; k_byte0 += MMA_K_BYTES) {
        for (int i = threadIdx.x; i < MMA_TILE * MMA_K_BYTES / 4; i += MMA_THREADS) {
            int row = i / (MMA_K_BYTES / 4), word = i % (MMA_K_BYTES / 4);
            size_t offset = k_byte0 + 4 * word;   // zeros past the last row or k (rows are whole words: K % 16 == 0)
            bool in_k = offset < row_bytes;
            *reinterpret_cast<uint32_t*>(tile_a + row * MMA_ROW_STRIDE + 4 * word) =
                in_k && n0 + row < p.N ? *reinterpret_cast<const uint32_t*>(p.a + (n0 + row) * row_bytes + offset) : 0u;
            *reinterpret_cast<uint32_t*>(tile_b + row * MMA_ROW_STRIDE + 4 * word) =
                in_k && m0 + row < p.M ? *reinterpret_cast<const uint32_t*>(p.b + (m0 + row) * row_bytes + offset) : 0u;
        }
        __syncthreads();
        #pragma unroll
        for (int step = 0; step < MMA_K_BYTES; step += 16) {    // two m16n8k32 steps of 16 packed bytes
            uint32_t a_frag[2][4], b_frag[4][2];
            #pragma unroll
            for (int mi = 0; mi < 2; mi++) {
                // k 4·tig..4·tig+3 of the step = packed bytes 2·tig, 2·tig+1; k 16+4·tig.. is 8 bytes further
                const uint8_t* row = tile_a + (warp_n + 16 * mi + group) * MMA_ROW_STRIDE + step + 2 * tig;
                const uint8_t* row8 = row + 8 * MMA_ROW_STRIDE;
                a_frag[mi][0] = sign_extend_int4x4(load_u16(row));
                a_frag[mi][1] = sign_extend_int4x4(load_u16(row8));
                a_frag[mi][2] = sign_extend_int4x4(load_u16(row + 8));
                a_frag[mi][3] = sign_extend_int4x4(load_u16(row8 + 8));
            }
            #pragma unroll
            for (int nj = 0; nj < 4; nj++) {
                const uint8_t* col = tile_b + (warp_m + 8 * nj + group) * MMA_ROW_STRIDE + step + 2 * tig;
                b_frag[nj][0] = sign_extend_int4x4(load_u16(col));
                b_frag[nj][1] = sign_extend_int4x4(load_u16(col + 8));
            }
            #pragma unroll
            for (int mi = 0; mi < 2; mi++) {
                #pragma unroll
                for (int nj = 0; nj < 4; nj++) mma_s8_m16n8k32(acc[mi][nj], a_frag[mi], b_frag[nj]);
            }
        }
        __syncthreads();
    }
    store_warp_tile(p, acc, n0 + warp_n, m0 + warp_m, group, tig, 0);
}

void launch_int4_gemm_mma_s8(const Int4GemmParams& p) {
    dim3 grid(CEIL_DIV(p.M, MMA_TILE), CEIL_DIV(p.N, MMA_TILE));
    int4_gemm_mma_s8_kernel<<<grid, MMA_THREADS>>>(p);
    cudaCheck(cudaGetLastError());
}

// ---------------------------------------------------------------------------------------------------------------
// versions 4 and 5: cp.async pipeline, 128 x 128 x 128 tiles

#define PIPE_TILE 128                                      // outputs per block along n and m
#define PIPE_K_TILE 128                                    // INT4 values along k per stage
#define PIPE_ROW_BYTES (PIPE_K_TILE / 2)                   // 64 packed bytes per row and stage
#define PIPE_STAGES 4
#define PIPE_STAGE_BYTES (2 * PIPE_TILE * PIPE_ROW_BYTES)  // A tile then B tile: 16 KiB
#define PIPE_THREADS 256                                   // 8 warps: 2 along n x 4 along m, 64 x 32 outputs each
#define PIPE_WARP_N 64
#define PIPE_WARP_M 32

// copies the k-tile at packed byte k_byte0 of the block's 128 A rows and 128 B rows into `stage` (A then B, 64
// bytes per row): 1024 chunks of 16 bytes, 4 per thread, consecutive threads on consecutive chunks (one 64-byte run
// per row). CHECK_BOUNDS: chunks past the last row or k are zero-filled without a read (K % 32 == 0: a chunk is
// wholly in or out).
template <bool CHECK_BOUNDS>
__device__ __forceinline__ void copy_stage_chunks(uint8_t* stage, const Int4GemmParams& p, int n0, int m0,
                                                  size_t k_byte0) {
    size_t row_bytes = p.K / 2;
    const int chunks_per_row = PIPE_ROW_BYTES / 16;
    #pragma unroll
    for (int chunk = threadIdx.x; chunk < PIPE_TILE * chunks_per_row; chunk += PIPE_THREADS) {
        int row = chunk / chunks_per_row, offset = 16 * (chunk % chunks_per_row);
        bool in_k = !CHECK_BOUNDS || k_byte0 + offset < row_bytes;
        bool a_in = in_k && (!CHECK_BOUNDS || n0 + row < p.N), b_in = in_k && (!CHECK_BOUNDS || m0 + row < p.M);
        cp_async_16(stage + row * PIPE_ROW_BYTES + offset,
                    a_in ? p.a + (n0 + row) * row_bytes + k_byte0 + offset : p.a, a_in ? 16 : 0);
        cp_async_16(stage + (PIPE_TILE + row) * PIPE_ROW_BYTES + offset,
                    b_in ? p.b + (m0 + row) * row_bytes + k_byte0 + offset : p.b, b_in ? 16 : 0);
    }
}

// k-tile `k_tile` into `stage`; only the k-tiles at the matrices' edges pay for the bounds checks (a uniform branch:
// checks on every k-tile cost version 4 about 6% at K = 768: 257 against 273 TOP/s, both with checked stores)
__device__ __forceinline__ void load_stage_async(uint8_t* stage, const Int4GemmParams& p, int n0, int m0, int k_tile) {
    size_t k_byte0 = (size_t)k_tile * PIPE_ROW_BYTES;
    if (n0 + PIPE_TILE <= p.N && m0 + PIPE_TILE <= p.M && k_byte0 + PIPE_ROW_BYTES <= (size_t)p.K / 2) {
        copy_stage_chunks<false>(stage, p, n0, m0, k_byte0);
    } else {
        copy_stage_chunks<true>(stage, p, n0, m0, k_byte0);
    }
}

// One stage's packed operands of a warp: thread (group, tig) holds bytes [16·tig, 16·tig+16) -- k values
// [32·tig, 32·tig+32) of the stage -- of A rows warp_n + 16·mi + group (+8) and of B rows warp_m + 8·nj + group.
// One 16-byte ld.shared per row: the 8 lanes of a quarter warp read rows r, r+1 = 128 contiguous bytes, so the
// loads are conflict-free without padding. ldmatrix would deliver the same 16 bytes per instruction; with the
// k-permutation below no transposition is needed, so plain vector loads do the job.
struct PackedWarpOperands {
    uint32_t a[4][2][4];    // [mi][row group, row group+8][word]
    uint32_t b[4][4];       // [nj][word]
};

__device__ __forceinline__ void load_words(uint32_t (&dst)[4], const uint8_t* src) {
    uint4 v = *reinterpret_cast<const uint4*>(src);
    dst[0] = v.x, dst[1] = v.y, dst[2] = v.z, dst[3] = v.w;
}

__device__ __forceinline__ void load_warp_operands(PackedWarpOperands& ops, const uint8_t* stage, int warp_n,
                                                   int warp_m, int group, int tig) {
    const uint8_t* tile_a = stage + 16 * tig;
    const uint8_t* tile_b = stage + PIPE_TILE * PIPE_ROW_BYTES + 16 * tig;
    #pragma unroll
    for (int mi = 0; mi < 4; mi++) {
        int row = warp_n + 16 * mi + group;
        load_words(ops.a[mi][0], tile_a + row * PIPE_ROW_BYTES);
        load_words(ops.a[mi][1], tile_a + (row + 8) * PIPE_ROW_BYTES);
    }
    #pragma unroll
    for (int nj = 0; nj < 4; nj++) load_words(ops.b[nj], tile_b + (warp_m + 8 * nj + group) * PIPE_ROW_BYTES);
}

// The pipeline of versions 4 and 5: PIPE_STAGES-1 k-tiles in flight while the warps multiply the oldest one;
// multiply_stage(ops) gets the warp's packed operands of each k-tile in order. One commit group per iteration
// (empty at the tail), so wait_group(PIPE_STAGES-2) at iteration kt means k-tile kt has landed.
template <typename MultiplyStage>
__device__ __forceinline__ void pipelined_mainloop(const Int4GemmParams& p, uint8_t* pipeline, int n0, int m0,
                                                   int warp_n, int warp_m, int group, int tig,
                                                   MultiplyStage multiply_stage) {
    int k_tiles = CEIL_DIV(p.K, PIPE_K_TILE);
    for (int s = 0; s < PIPE_STAGES - 1; s++) {
        if (s < k_tiles) load_stage_async(pipeline + s * PIPE_STAGE_BYTES, p, n0, m0, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; kt++) {
        cp_async_wait<PIPE_STAGES - 2>();
        // k-tile kt is visible to all threads, and all have finished k-tile kt-1, whose stage is refilled next
        __syncthreads();
        int next = kt + PIPE_STAGES - 1;
        if (next < k_tiles) load_stage_async(pipeline + (next % PIPE_STAGES) * PIPE_STAGE_BYTES, p, n0, m0, next);
        cp_async_commit();
        PackedWarpOperands ops;
        load_warp_operands(ops, pipeline + (kt % PIPE_STAGES) * PIPE_STAGE_BYTES, warp_n, warp_m, group, tig);
        multiply_stage(ops);
    }
}

// eight INT4 codes (a packed word, lowest k lowest) -> two s8x4 registers holding 16·q: each nibble moved to the
// top of a byte keeps its sign bit, so no sign extension is needed. Even nibbles 0, 2, 4, 6 and odd 1, 3, 5, 7.
__device__ __forceinline__ uint32_t even_nibbles_x16(uint32_t packed) { return (packed << 4) & 0xF0F0F0F0u; }
__device__ __forceinline__ uint32_t odd_nibbles_x16(uint32_t packed) { return packed & 0xF0F0F0F0u; }

// version 4: a 128x128 output tile per block from m16n8k32 s8 mma on 16·q operands, fed by the cp.async pipeline.
// 8 warps of 64x32 (4 x 4 mma tiles); per k-tile each thread expands 12 packed words per mma step of k = 32.
__global__ void __launch_bounds__(PIPE_THREADS) int4_gemm_pipelined_s8_kernel(Int4GemmParams p) {
    extern __shared__ __align__(16) uint8_t pipeline[];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int group = lane / 4, tig = lane % 4;
    int warp_n = (warp / 4) * PIPE_WARP_N, warp_m = (warp % 4) * PIPE_WARP_M;
    int n0 = blockIdx.y * PIPE_TILE, m0 = blockIdx.x * PIPE_TILE;
    int32_t acc[4][4][4] = {};
    // k-permutation: a dot product does not depend on the order of k, only on A and B pairing the same k. In mma
    // step s, thread tig feeds packed word s (stage k 32·tig+8s .. +7): its even nibbles as the fragment's
    // "k 4·tig..4·tig+3" register, its odd nibbles as "k 16+4·tig..+3". A and B use the same map, and over the
    // 4 steps and 4 tigs every k of the stage is used once.
    pipelined_mainloop(p, pipeline, n0, m0, warp_n, warp_m, group, tig, [&](const PackedWarpOperands& ops) {
        #pragma unroll
        for (int s = 0; s < 4; s++) {
            uint32_t b_frag[4][2];
            #pragma unroll
            for (int nj = 0; nj < 4; nj++) {
                b_frag[nj][0] = even_nibbles_x16(ops.b[nj][s]);
                b_frag[nj][1] = odd_nibbles_x16(ops.b[nj][s]);
            }
            #pragma unroll
            for (int mi = 0; mi < 4; mi++) {
                uint32_t a_frag[4] = {even_nibbles_x16(ops.a[mi][0][s]), even_nibbles_x16(ops.a[mi][1][s]),
                                      odd_nibbles_x16(ops.a[mi][0][s]), odd_nibbles_x16(ops.a[mi][1][s])};
                #pragma unroll
                for (int nj = 0; nj < 4; nj++) mma_s8_m16n8k32(acc[mi][nj], a_frag, b_frag[nj]);
            }
        }
    });
    // (16a)·(16b) = 256·ab: acc holds 256·Σab; |Σab| <= 64·K <= 2^22 (K <= MAX_K) keeps it within 2^30, so no
    // int32 overflow, and the shift by 8 is exact
    store_warp_tile(p, acc, n0 + warp_n, m0 + warp_m, group, tig, 8);
}

// version 5: a 128x128 output tile per block from native m16n8k64 s4 mma on the packed bytes as loaded, fed
// by the cp.async pipeline. 8 warps of 64x32 (4 x 4 mma tiles); no unpacking at all.
__global__ void __launch_bounds__(PIPE_THREADS) int4_gemm_native_s4_kernel(Int4GemmParams p) {
    extern __shared__ __align__(16) uint8_t pipeline[];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int group = lane / 4, tig = lane % 4;
    int warp_n = (warp / 4) * PIPE_WARP_N, warp_m = (warp % 4) * PIPE_WARP_M;
    int n0 = blockIdx.y * PIPE_TILE, m0 = blockIdx.x * PIPE_TILE;
    int32_t acc[4][4][4] = {};
    // k-permutation as in version 4: in mma step s, thread tig's packed word 2s (stage k 32·tig+16s .. +7) is
    // the fragment's "k 8·tig..8·tig+7" register and word 2s+1 its "k 32+8·tig..+7" register, for A and B alike
    pipelined_mainloop(p, pipeline, n0, m0, warp_n, warp_m, group, tig, [&](const PackedWarpOperands& ops) {
        #pragma unroll
        for (int s = 0; s < 2; s++) {
            #pragma unroll
            for (int mi = 0; mi < 4; mi++) {
                uint32_t a_frag[4] = {ops.a[mi][0][2 * s], ops.a[mi][1][2 * s], ops.a[mi][0][2 * s + 1],
                                      ops.a[mi][1][2 * s + 1]};
                #pragma unroll
                for (int nj = 0; nj < 4; nj++) {
                    uint32_t b_frag[2] = {ops.b[nj][2 * s], ops.b[nj][2 * s + 1]};
                    mma_s4_m16n8k64(acc[mi][nj], a_frag, b_frag);
                }
            }
        }
    });
    store_warp_tile(p, acc, n0 + warp_n, m0 + warp_m, group, tig, 0);
}

// versions 4 and 5 share the grid and the dynamic shared memory (64 KiB, above the 48 KiB default)
template <typename Kernel> void launch_pipelined(Kernel kernel, const Int4GemmParams& p) {
    const int smem_bytes = PIPE_STAGES * PIPE_STAGE_BYTES;
    cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
    dim3 grid(CEIL_DIV(p.M, PIPE_TILE), CEIL_DIV(p.N, PIPE_TILE));
    kernel<<<grid, PIPE_THREADS, smem_bytes>>>(p);
    cudaCheck(cudaGetLastError());
}

void launch_int4_gemm_pipelined_s8(const Int4GemmParams& p) { launch_pipelined(int4_gemm_pipelined_s8_kernel, p); }

void launch_int4_gemm_native_s4(const Int4GemmParams& p) { launch_pipelined(int4_gemm_native_s4_kernel, p); }

// ---------------------------------------------------------------------------------------------------------------
// versions 6 and 7: wgmma + TMA (sm_90a)

#define WG_TILE 128                                  // outputs per block along n (2 consumer warp groups x 64) and m
#define WG_K_TILE 128                                // INT4 values per k-tile: one 128-byte row of s8 per operand row
#define WG_PACKED_ROW_BYTES (WG_K_TILE / 2)          // 64 packed bytes per row and k-tile, as TMA loads them
#define WG_PACKED_STAGES 4                           // packed k-tiles in flight
#define WG_PACKED_STAGE_BYTES (2 * WG_TILE * WG_PACKED_ROW_BYTES)   // A tile then B tile: 16 KiB
#define WG_S8_BUFFERS 3                              // expanded k-tiles: one being written, up to two being multiplied
#define WG_S8_BUFFER_BYTES (2 * WG_TILE * WG_K_TILE)                // A tile then B tile: 32 KiB
#define WG_THREADS 384                               // warp group 0 loads (one thread), 1 and 2 expand and multiply

#define WG_STAGING_ROW_BYTES (2 * WG_TILE + 16)     // a bf16 output row in the epilogue, padded (store_consumer_tile)
// a consumer group's epilogue area: 64 staged bf16 rows, then the tile's 128 column scales, 64 row scales, 128 biases
#define WG_EPILOGUE_GROUP_BYTES (64 * WG_STAGING_ROW_BYTES + WG_TILE * 4 + 64 * 4 + WG_TILE * 2)
// dynamic shared memory: the expanded buffers, the packed stages, their mbarriers, room to align the start to 1024;
// version 7 adds the two epilogue areas (version 6 puts them in the packed stages, free by then)
#define WG_SMEM_BYTES (WG_S8_BUFFERS * WG_S8_BUFFER_BYTES + WG_PACKED_STAGES * WG_PACKED_STAGE_BYTES + \
                       2 * WG_PACKED_STAGES * 8 + SWIZZLE_ATOM_BYTES)
#define WG_PERSISTENT_SMEM_BYTES (WG_SMEM_BYTES + 2 * WG_EPILOGUE_GROUP_BYTES)

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// 64 rows of A and 64 rows of B of a packed k-tile (64 bytes per row) -> s8 16·q in the 128-byte swizzle (row
// r's 16-byte chunk c at chunk c ^ (r mod 8)), by one warp group: 2 x 512 chunks, 8 per thread. A quarter warp
// writes one whole 128-byte row and a warp reads 256 contiguous packed bytes, so neither side has bank conflicts.
// Chunk c holds the even nibbles then the odd nibbles of each of its two packed words: the same k-permutation for
// A and B. All eight loads come before the first store: the compiler may not move a shared load above a shared
// store (they might alias), and one load's latency after another's was the kernel's main stall.
__device__ __forceinline__ void expand_k_tile_swizzled(uint8_t* s8_a_rows, uint8_t* s8_b_rows,
                                                       const uint8_t* packed_a_rows, const uint8_t* packed_b_rows,
                                                       int thread) {
    uint2 a[4], b[4];
    #pragma unroll
    for (int i = 0; i < 4; i++) {
        int item = thread + 128 * i, offset = (item / 8) * WG_PACKED_ROW_BYTES + 8 * (item % 8);
        a[i] = *reinterpret_cast<const uint2*>(packed_a_rows + offset);
        b[i] = *reinterpret_cast<const uint2*>(packed_b_rows + offset);
    }
    #pragma unroll
    for (int i = 0; i < 4; i++) {
        int item = thread + 128 * i, row = item / 8, chunk = item % 8;
        int offset = row * WG_K_TILE + 16 * (chunk ^ (row % 8));
        *reinterpret_cast<uint4*>(s8_a_rows + offset) = make_uint4(even_nibbles_x16(a[i].x), odd_nibbles_x16(a[i].x),
                                                                   even_nibbles_x16(a[i].y), odd_nibbles_x16(a[i].y));
        *reinterpret_cast<uint4*>(s8_b_rows + offset) = make_uint4(even_nibbles_x16(b[i].x), odd_nibbles_x16(b[i].x),
                                                                   even_nibbles_x16(b[i].y), odd_nibbles_x16(b[i].y));
    }
}

// shared memory: WG_S8_BUFFERS expanded k-tiles (1024-aligned, as the swizzle requires), then the packed TMA
// stages, then the stages' full and empty mbarriers, then (own_epilogue) the consumers' epilogue areas, which
// otherwise reuse the packed stages
struct WgmmaSharedMemory {
    uint8_t* s8_buffers;
    uint8_t* packed_stages;
    uint64_t *full, *empty;
    uint8_t* epilogue;   // consumer c's WG_EPILOGUE_GROUP_BYTES at c · WG_EPILOGUE_GROUP_BYTES
};

__device__ __forceinline__ WgmmaSharedMemory wgmma_shared_memory(uint8_t* raw, bool own_epilogue) {
    WgmmaSharedMemory m;
    m.s8_buffers = align_to_swizzle_atom(raw);
    m.packed_stages = m.s8_buffers + WG_S8_BUFFERS * WG_S8_BUFFER_BYTES;
    m.full = (uint64_t*)(m.packed_stages + WG_PACKED_STAGES * WG_PACKED_STAGE_BYTES);
    m.empty = m.full + WG_PACKED_STAGES;
    m.epilogue = own_epilogue ? (uint8_t*)(m.empty + WG_PACKED_STAGES) : m.packed_stages;
    return m;
}

// thread 0 initialises the stage barriers, which the whole block then sees
__device__ __forceinline__ void init_stage_barriers(const WgmmaSharedMemory& m) {
    if (threadIdx.x == 0) {
        for (int s = 0; s < WG_PACKED_STAGES; s++) {
            mbarrier_init(&m.full[s], 1);    // the loader's arrive; the bytes come with the TMA
            mbarrier_init(&m.empty[s], 1);   // one consumer thread, after both groups are done with the stage
        }
        mbarrier_init_fence();
    }
    __syncthreads();
}

// the loader (one thread): the k-tiles of one output tile, k-tile kt's packed A rows n0.. and B rows m0.. into
// stage i % WG_PACKED_STAGES (i = ring + kt, ring: the k-tiles this block loaded before) once the consumers have
// released that stage's previous k-tile
__device__ __forceinline__ void load_packed_k_tiles(const WgmmaSharedMemory& m, const CUtensorMap* map_a,
                                                    const CUtensorMap* map_b, int n0, int m0, int k_tiles, int ring) {
    for (int kt = 0; kt < k_tiles; kt++) {
        int i = ring + kt, s = i % WG_PACKED_STAGES;
        if (i >= WG_PACKED_STAGES) mbarrier_wait(&m.empty[s], (i / WG_PACKED_STAGES - 1) & 1);
        uint8_t* stage = m.packed_stages + s * WG_PACKED_STAGE_BYTES;
        // the whole boxes count, zero-filled parts past the last row or k included
        mbarrier_arrive_expect_bytes(&m.full[s], WG_PACKED_STAGE_BYTES);
        tma_load_2d(stage, map_a, kt * WG_PACKED_ROW_BYTES, n0, &m.full[s]);
        tma_load_2d(stage + WG_TILE * WG_PACKED_ROW_BYTES, map_b, kt * WG_PACKED_ROW_BYTES, m0, &m.full[s]);
    }
}

// after a consumer group has written its part of an expanded k-tile: the writes are visible to the tensor cores
// (async proxy), both groups are done (named barrier 1 over the 256 consumer threads), the packed stage goes back
// to the loader
__device__ __forceinline__ void publish_expanded_k_tile(const WgmmaSharedMemory& m, int stage, int consumer_thread) {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
    if (consumer_thread == 0) mbarrier_arrive(&m.empty[stage]);
}

// consumer group c's 64 x 128 accumulators -> outputs (rows n0 + 64c ..). The operands were 16·q, so acc holds
// 256·Σab (version 4) and the shift by 8 is exact. FP32 outputs go straight out: a quad of lanes writes 32
// contiguous bytes, a whole sector. BF16 ones would write half sectors, so they go to a bf16 tile in shared memory
// (rows padded to 272 bytes, so the 32 lanes' 4-byte writes of 8 rows hit 32 banks), then out as 16-byte stores
// of whole 256-byte rows. The tile's scales and biases are first copied to shared memory, one load per thread.
// `area`: the group's WG_EPILOGUE_GROUP_BYTES, not in use by the main loop. A tile that crosses the last row or
// column, or whose rows are not 16-byte aligned (M % 8 != 0), takes the direct stores of FP32 outputs, which check
// bounds per element (the choice is the same for the whole block, as the barriers need).
__device__ __forceinline__ void store_consumer_tile(const Int4GemmParams& p, int32_t (&acc)[16][4], int n0, int m0,
                                                    int consumer, int thread, uint8_t* area) {
    int warp = thread / 32, lane = thread % 32, group = lane / 4, tig = lane % 4;
    bool whole_tile = n0 + WG_TILE <= p.N && m0 + WG_TILE <= p.M && p.M % 8 == 0;
    if (p.out_f32 || !whole_tile) {
        const int32_t(&acc_tile)[1][16][4] = *reinterpret_cast<const int32_t(*)[1][16][4]>(&acc);
        store_warp_tile(p, acc_tile, n0 + 64 * consumer + 16 * warp, m0, group, tig, 8);
        return;
    }
    uint8_t* staging = area;
    float* tile_scale_b = reinterpret_cast<float*>(area + 64 * WG_STAGING_ROW_BYTES);
    float* tile_scale_a = tile_scale_b + WG_TILE;
    __nv_bfloat16* tile_bias = reinterpret_cast<__nv_bfloat16*>(tile_scale_a + 64);
    tile_scale_b[thread] = p.scale_b[m0 + thread];
    tile_bias[thread] = p.bias[m0 + thread];
    if (thread < 64) tile_scale_a[thread] = p.scale_a[n0 + 64 * consumer + thread];
    asm volatile("bar.sync %0, 128;\n" ::"r"(2 + consumer) : "memory");   // the group's scales and biases are in
    int row = 16 * warp + group, n = n0 + 64 * consumer + row;   // and row + 8
    float scale_lo = tile_scale_a[row], scale_hi = tile_scale_a[row + 8];
    #pragma unroll
    for (int j = 0; j < 16; j++) {
        int col = 8 * j + 2 * tig, m = m0 + col;
        int32_t lo0 = acc[j][0] >> 8, lo1 = acc[j][1] >> 8, hi0 = acc[j][2] >> 8, hi1 = acc[j][3] >> 8;
        float2 scale_b = *reinterpret_cast<const float2*>(tile_scale_b + col);
        float2 bias = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(tile_bias + col));
        __nv_bfloat162 y_lo = __floats2bfloat162_rn(epilogue_value(lo0, scale_lo, scale_b.x, bias.x),
                                                     epilogue_value(lo1, scale_lo, scale_b.y, bias.y));
        __nv_bfloat162 y_hi = __floats2bfloat162_rn(epilogue_value(hi0, scale_hi, scale_b.x, bias.x),
                                                     epilogue_value(hi1, scale_hi, scale_b.y, bias.y));
        *reinterpret_cast<__nv_bfloat162*>(staging + row * WG_STAGING_ROW_BYTES + 2 * col) = y_lo;
        *reinterpret_cast<__nv_bfloat162*>(staging + (row + 8) * WG_STAGING_ROW_BYTES + 2 * col) = y_hi;
        if (p.acc_out) {
            *reinterpret_cast<int2*>(p.acc_out + (size_t)n * p.M + m) = make_int2(lo0, lo1);
            *reinterpret_cast<int2*>(p.acc_out + (size_t)(n + 8) * p.M + m) = make_int2(hi0, hi1);
        }
    }
    asm volatile("bar.sync %0, 128;\n" ::"r"(2 + consumer) : "memory");   // this group's tile is complete
    #pragma unroll
    for (int i = 0; i < 8; i++) {   // 64 rows x 16 chunks of 16 bytes; a warp writes two whole rows
        int chunk = thread + 128 * i, r = chunk / 16, c = chunk % 16;
        uint4 v = *reinterpret_cast<const uint4*>(staging + r * WG_STAGING_ROW_BYTES + 16 * c);
        *reinterpret_cast<uint4*>(p.out + (size_t)(n0 + 64 * consumer + r) * p.M + m0 + 8 * c) = v;
    }
}

// consumer group c's part of one output tile: its 64 x 128 accumulators over the tile's k_tiles k-tiles, taken
// from the ring at position ring (as the loader put them). Per k-tile: wait for the packed stage, expand this
// group's 64 A rows and 64 B rows to s8, publish, four m64n128k32 wgmma on the group's A rows and all 128 B rows,
// keeping one k-tile's wgmma in flight. On return every wgmma has completed.
__device__ __forceinline__ void multiply_tile(const WgmmaSharedMemory& m, int32_t (&acc)[16][4], int k_tiles, int ring,
                                              int consumer, int thread) {
    for (int kt = 0; kt < k_tiles; kt++) {
        int i = ring + kt, s = i % WG_PACKED_STAGES;
        mbarrier_wait(&m.full[s], (i / WG_PACKED_STAGES) & 1);
        const uint8_t* stage = m.packed_stages + s * WG_PACKED_STAGE_BYTES;
        // buffer i % 3 was last read by the wgmma of k-tile i-3: this group waited for those at the end of k-tile
        // i-2 (or of its tile), and the other group too, since it has passed the barrier of k-tile i-1
        uint8_t* s8_a = m.s8_buffers + (i % WG_S8_BUFFERS) * WG_S8_BUFFER_BYTES;
        uint8_t* s8_b = s8_a + WG_TILE * WG_K_TILE;
        expand_k_tile_swizzled(s8_a + 64 * consumer * WG_K_TILE, s8_b + 64 * consumer * WG_K_TILE,
                               stage + 64 * consumer * WG_PACKED_ROW_BYTES,
                               stage + (WG_TILE + 64 * consumer) * WG_PACKED_ROW_BYTES, thread);
        publish_expanded_k_tile(m, s, 128 * consumer + thread);
        wgmma_fence();
        uint64_t desc_a = wgmma_descriptor(s8_a + 64 * consumer * WG_K_TILE), desc_b = wgmma_descriptor(s8_b);
        wgmma_fence_accumulators(acc);
        #pragma unroll
        for (int step = 0; step < WG_K_TILE / 32; step++) {   // k = 32 bytes per step: +2 in the address field
            wgmma_s8_m64n128k32(acc, desc_a + 2 * step, desc_b + 2 * step);
        }
        wgmma_commit();
        wgmma_wait<1>();
        wgmma_fence_accumulators(acc);
    }
    wgmma_wait<0>();
    wgmma_fence_accumulators(acc);
}
#endif

// version 6: a 128x128 output tile per block. One thread of warp group 0 streams packed k-tiles of A and B with
// TMA into a 4-stage ring (full/empty mbarriers); warp groups 1 and 2 each expand 64 rows of A and of B to s8
// 16·q in a swizzled buffer and run four m64n128k32 wgmma per k-tile on their 64 rows, one k-tile in flight.
__global__ void __launch_bounds__(WG_THREADS, 1)
    int4_gemm_wgmma_tma_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                               Int4GemmParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ uint8_t smem_raw[];
    WgmmaSharedMemory m = wgmma_shared_memory(smem_raw, false);
    int warp_group = threadIdx.x / 128, n0 = blockIdx.y * WG_TILE, m0 = blockIdx.x * WG_TILE;
    int k_tiles = CEIL_DIV(p.K, WG_K_TILE);   // TMA fills the boxes' parts past the last row or k with zeros
    init_stage_barriers(m);
    if (warp_group == 0) {
        if (threadIdx.x == 0) load_packed_k_tiles(m, &map_a, &map_b, n0, m0, k_tiles, 0);
        return;
    }
    int consumer = warp_group - 1, thread = threadIdx.x % 128;   // consumer c owns A rows 64c..64c+63 of the tile
    int32_t acc[16][4] = {};
    multiply_tile(m, acc, k_tiles, 0, consumer, thread);
    // every k-tile has been loaded and expanded (the last publish barrier): the packed stages are free for the
    // epilogue areas
    store_consumer_tile(p, acc, n0, m0, consumer, thread, m.epilogue + consumer * WG_EPILOGUE_GROUP_BYTES);
#else
    __trap();   // launched only where the sm_90a code runs (wgmma_tensor_maps checks)
#endif
}

// version 7: version 6 made persistent. One block per SM walks the output tiles t = blockIdx.x, + gridDim.x, ...
// (m fastest, as version 6's grid); the loader runs ahead across tile boundaries, so the next tile's first k-tiles
// arrive while the consumers are in the epilogue, which stages in shared memory of its own.
__global__ void __launch_bounds__(WG_THREADS, 1)
    int4_gemm_wgmma_persistent_kernel(const __grid_constant__ CUtensorMap map_a,
                                      const __grid_constant__ CUtensorMap map_b, Int4GemmParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ uint8_t smem_raw[];
    WgmmaSharedMemory m = wgmma_shared_memory(smem_raw, true);
    int warp_group = threadIdx.x / 128, tiles_m = CEIL_DIV(p.M, WG_TILE), tiles = CEIL_DIV(p.N, WG_TILE) * tiles_m;
    int k_tiles = CEIL_DIV(p.K, WG_K_TILE);
    init_stage_barriers(m);
    if (warp_group == 0) {
        if (threadIdx.x != 0) return;
        for (int tile = blockIdx.x, ring = 0; tile < tiles; tile += gridDim.x, ring += k_tiles) {
            load_packed_k_tiles(m, &map_a, &map_b, (tile / tiles_m) * WG_TILE, (tile % tiles_m) * WG_TILE, k_tiles,
                                ring);
        }
        return;
    }
    int consumer = warp_group - 1, thread = threadIdx.x % 128;
    for (int tile = blockIdx.x, ring = 0; tile < tiles; tile += gridDim.x, ring += k_tiles) {
        int32_t acc[16][4] = {};
        multiply_tile(m, acc, k_tiles, ring, consumer, thread);
        // the epilogue area is free again: this group finished reading it in the previous tile's epilogue before
        // it reached this tile's first publish barrier
        store_consumer_tile(p, acc, (tile / tiles_m) * WG_TILE, (tile % tiles_m) * WG_TILE, consumer, thread,
                            m.epilogue + consumer * WG_EPILOGUE_GROUP_BYTES);
    }
#else
    __trap();   // launched only where the sm_90a code runs (wgmma_tensor_maps checks)
#endif
}

// versions 6 and 7: the tensor maps of A and B. Box: one block's 128 rows x 64 packed bytes, unswizzled (the
// expansion reads it row by row); the row stride K/2 is a multiple of 16 bytes, as TMA requires.
static void wgmma_tensor_maps(const Int4GemmParams& p, CUtensorMap* map_a, CUtensorMap* map_b) {
    static const bool available = hopper_wgmma_available();
    if (!available) {
        fprintf(stderr, "int4_gemm: versions 6 and 7 (wgmma + TMA) need an sm_90 GPU and a build with sm_90a\n");
        exit(EXIT_FAILURE);
    }
    *map_a = tensor_map_2d_bytes(p.a, p.N, p.K / 2, WG_TILE, WG_PACKED_ROW_BYTES, false);
    *map_b = tensor_map_2d_bytes(p.b, p.M, p.K / 2, WG_TILE, WG_PACKED_ROW_BYTES, false);
}

// version 6: a grid of 128x128 tiles, 384 threads
void launch_int4_gemm_wgmma_tma(const Int4GemmParams& p) {
    CUtensorMap map_a, map_b;
    wgmma_tensor_maps(p, &map_a, &map_b);
    cudaCheck(cudaFuncSetAttribute(int4_gemm_wgmma_tma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   WG_SMEM_BYTES));
    dim3 grid(CEIL_DIV(p.M, WG_TILE), CEIL_DIV(p.N, WG_TILE));
    int4_gemm_wgmma_tma_kernel<<<grid, WG_THREADS, WG_SMEM_BYTES>>>(map_a, map_b, p);
    cudaCheck(cudaGetLastError());
}

// version 7: one block per SM (its shared memory allows no second), at most one per tile
void launch_int4_gemm_wgmma_persistent(const Int4GemmParams& p) {
    CUtensorMap map_a, map_b;
    wgmma_tensor_maps(p, &map_a, &map_b);
    static int sms = 0;
    if (sms == 0) cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaCheck(cudaFuncSetAttribute(int4_gemm_wgmma_persistent_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   WG_PERSISTENT_SMEM_BYTES));
    int tiles = CEIL_DIV(p.M, WG_TILE) * CEIL_DIV(p.N, WG_TILE);
    int4_gemm_wgmma_persistent_kernel<<<min(tiles, sms), WG_THREADS, WG_PERSISTENT_SMEM_BYTES>>>(map_a, map_b, p);
    cudaCheck(cudaGetLastError());
}

void run_int4_gemm(int version, const Int4GemmParams& p) {
    switch (version) {
        case 1: launch_int4_gemm_naive(p); break;
        case 2: launch_int4_gemm_smem(p); break;
        case 3: launch_int4_gemm_mma_s8(p); break;
        case 4: launch_int4_gemm_pipelined_s8(p); break;
        case 5: launch_int4_gemm_native_s4(p); break;
        case 6: launch_int4_gemm_wgmma_tma(p); break;
        case 7: launch_int4_gemm_wgmma_persistent(p); break;
        default: fprintf(stderr, "int4_gemm: unknown version %d (1-%d)\n", version, NUM_VERSIONS); exit(EXIT_FAILURE);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// cuBLASLt baselines

// the baselines' operands, one value per element: packed INT4 -> T (int8_t or __nv_bfloat16), exact either way;
// one thread per packed byte
template <typename T> __global__ void unpack_int4_kernel(T* out, const uint8_t* packed, size_t n_bytes) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_bytes) return;
    out[2 * i] = from_float<T>((float)unpack_int4_lo(packed[i]));
    out[2 * i + 1] = from_float<T>((float)unpack_int4_hi(packed[i]));
}

template <typename T> T* unpacked_copy(const uint8_t* packed, int rows, int K) {
    size_t n_bytes = (size_t)rows * K / 2;
    T* out;
    cudaCheck(cudaMalloc(&out, (size_t)rows * K * sizeof(T)));
    unpack_int4_kernel<<<CEIL_DIV(n_bytes, 256), 256>>>(out, packed, n_bytes);
    cudaCheck(cudaGetLastError());
    return out;
}

// one cuBLASLt product set up once (descriptor, layouts, algorithm), so the timed loop holds only the matmuls.
// out (N x M, row-major) = A (N x K) · B (M x K)ᵀ; column-major for cuBLAS: outᵀ (M x N) = op_T(B) · A, both
// operands k-major (the TN layout integer products require).
struct CublasLtGemm {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t layout_b, layout_a, layout_out;
    cublasLtMatmulAlgo_t algo;
};

static CublasLtGemm make_cublaslt_gemm(cudaDataType_t in_type, cudaDataType_t out_type, cublasComputeType_t compute,
                                       cudaDataType_t scale_type, int N, int M, int K, const __nv_bfloat16* bias) {
    CublasLtGemm g;
    cublasCheck(cublasLtMatmulDescCreate(&g.desc, compute, scale_type));
    cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof op_t));
    cublasCheck(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof op_n));
    if (bias) {
        cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bias_type = CUDA_R_16BF;
        cublasCheck(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
        cublasCheck(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
        cublasCheck(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                   sizeof bias_type));
    }
    cublasCheck(cublasLtMatrixLayoutCreate(&g.layout_b, in_type, K, M, K));
    cublasCheck(cublasLtMatrixLayoutCreate(&g.layout_a, in_type, K, N, K));
    cublasCheck(cublasLtMatrixLayoutCreate(&g.layout_out, out_type, M, N, M));
    char what[64];
    snprintf(what, sizeof what, "the int4_gemm baseline %d x %d x %d", N, M, K);
    g.algo = cublaslt_algorithm(g.desc, g.layout_b, g.layout_a, g.layout_out, what);
    return g;
}

static void run_cublaslt_gemm(const CublasLtGemm& g, const void* alpha, const void* beta, const void* a,
                              const void* b, void* out) {
    cublasCheck(cublasLtMatmul(cublaslt_handle, g.desc, alpha, b, g.layout_b, a, g.layout_a, beta, out, g.layout_out,
                               out, g.layout_out, &g.algo, cublaslt_workspace, CUBLASLT_WORKSPACE_SIZE, 0));
}

static void destroy_cublaslt_gemm(CublasLtGemm& g) {
    cublasCheck(cublasLtMatrixLayoutDestroy(g.layout_b));
    cublasCheck(cublasLtMatrixLayoutDestroy(g.layout_a));
    cublasCheck(cublasLtMatrixLayoutDestroy(g.layout_out));
    cublasCheck(cublasLtMatmulDescDestroy(g.desc));
}

// ---------------------------------------------------------------------------------------------------------------
// inputs, validation, timing

// deterministic inputs from the shared hash (kernels/rng.h): stream = the index's high 32 bits
static uint32_t hash_index(uint32_t seed, uint64_t i) {
    return rng_hash(seed, (uint32_t)(i >> 32), (uint32_t)i);
}
static float hash_unit(uint32_t seed, uint64_t i) { return rng_uniform_from_bits(hash_index(seed, i)); }

struct HostProblem {
    int N, M, K;
    std::vector<uint8_t> a, b;            // (N, K/2), (M, K/2) packed
    std::vector<float> scale_a, scale_b;  // (N), (M)
    std::vector<__nv_bfloat16> bias;      // (M)
    std::vector<int32_t> ref_acc;         // (N, M) the CPU's accumulators, once computed (full checks)
};

// rows x K codes, uniform over [-8, 7] (so -8·-8 = 64, the largest product, is well represented), packed
static std::vector<uint8_t> random_packed_int4(int rows, int K, uint32_t seed) {
    std::vector<uint8_t> packed((size_t)rows * K / 2);
    for (size_t j = 0; j < packed.size(); j++) {
        int lo = (int)(hash_index(seed, 2 * j) & 15) - 8, hi = (int)(hash_index(seed, 2 * j + 1) & 15) - 8;
        packed[j] = pack_int4_pair(lo, hi);
    }
    return packed;
}

// scales in [0.01, 0.03): with |acc| ~ 21·sqrt(K) the products are O(0.1..1), the size of the bias in [-0.5, 0.5)
static HostProblem make_host_problem(int N, int M, int K) {
    HostProblem h;
    h.N = N, h.M = M, h.K = K;
    h.a = random_packed_int4(N, K, 1);
    h.b = random_packed_int4(M, K, 2);
    h.scale_a.resize(N);
    h.scale_b.resize(M);
    h.bias.resize(M);
    for (int n = 0; n < N; n++) h.scale_a[n] = 0.01f + 0.02f * hash_unit(3, n);
    for (int m = 0; m < M; m++) h.scale_b[m] = 0.01f + 0.02f * hash_unit(4, m);
    for (int m = 0; m < M; m++) h.bias[m] = host_float_to_bf16(hash_unit(5, m) - 0.5f);
    return h;
}

struct DeviceProblem {
    uint8_t *a, *b;
    float *scale_a, *scale_b;
    __nv_bfloat16 *bias, *out;
    float* out_f32;
    int32_t* acc;
};

template <typename T> static T* upload(const std::vector<T>& v) {
    T* d;
    cudaCheck(cudaMalloc(&d, v.size() * sizeof(T)));
    cudaCheck(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

static DeviceProblem upload_problem(const HostProblem& h) {
    DeviceProblem d;
    d.a = upload(h.a);
    d.b = upload(h.b);
    d.scale_a = upload(h.scale_a);
    d.scale_b = upload(h.scale_b);
    d.bias = upload(h.bias);
    cudaCheck(cudaMalloc(&d.out, (size_t)h.N * h.M * sizeof(__nv_bfloat16)));
    cudaCheck(cudaMalloc(&d.out_f32, (size_t)h.N * h.M * sizeof(float)));
    cudaCheck(cudaMalloc(&d.acc, (size_t)h.N * h.M * sizeof(int32_t)));
    return d;
}

static void free_problem(DeviceProblem& d) {
    cudaCheck(cudaFree(d.a));
    cudaCheck(cudaFree(d.b));
    cudaCheck(cudaFree(d.scale_a));
    cudaCheck(cudaFree(d.scale_b));
    cudaCheck(cudaFree(d.bias));
    cudaCheck(cudaFree(d.out));
    cudaCheck(cudaFree(d.out_f32));
    cudaCheck(cudaFree(d.acc));
}

// bf16 outputs, or fp32 ones; with_acc: the raw accumulators too (validation)
static Int4GemmParams gemm_params(const HostProblem& h, const DeviceProblem& d, bool with_acc, bool fp32_out) {
    return Int4GemmParams{d.a, d.b, d.scale_a, d.scale_b, d.bias, d.out, fp32_out ? d.out_f32 : nullptr,
                          with_acc ? d.acc : nullptr, h.N, h.M, h.K};
}

// Checks a GPU result (acc, out: all N x M outputs) against the CPU reference on every output (full) or on the
// four corners and SAMPLED_OUTPUTS - 4 hashed (n, m) positions (big shapes: a full CPU product takes minutes).
// INT32 accumulators must match exactly. Outputs are checked against the reference's FP32 epilogue value y:
// both sides do the same FP32 operations, so fp32 outputs must equal y bit for bit, and bf16 ones differ only by
// the final round-to-nearest-even to bf16, whose error is at most half an ulp, i.e. 2^-8·|y| for an 8-bit
// significand. out holds the outputs as floats. On failure `why` says where.
static bool compare_with_reference(const HostProblem& h, const std::vector<int32_t>& acc,
                                   const std::vector<float>& out, bool fp32_out, bool full, char* why,
                                   size_t why_size, double* max_rel_err) {
    size_t row_bytes = (size_t)h.K / 2, checks = full ? (size_t)h.N * h.M : SAMPLED_OUTPUTS;
    *max_rel_err = 0.0;
    for (size_t i = 0; i < checks; i++) {
        int n, m;
        if (full) {
            n = (int)(i / h.M), m = (int)(i % h.M);
        } else if (i < 4) {
            n = (i & 1) ? h.N - 1 : 0, m = (i & 2) ? h.M - 1 : 0;
        } else {
            n = (int)(hash_index(6, 2 * i) % h.N), m = (int)(hash_index(6, 2 * i + 1) % h.M);
        }
        size_t idx = (size_t)n * h.M + m;
        int32_t want = h.ref_acc.empty() ? int4_dot_reference(&h.a[n * row_bytes], &h.b[m * row_bytes], h.K)
                                         : h.ref_acc[idx];
        if (acc[idx] != want) {
            snprintf(why, why_size, "int32 accumulator at n=%d m=%d is %d, expected %d", n, m, acc[idx], want);
            return false;
        }
        float y = epilogue_value(want, h.scale_a[n], h.scale_b[m], __bfloat162float(h.bias[m]));
        float got = out[idx];
        double err = fabs((double)got - (double)y), bound = fp32_out ? 0.0 : ldexp(fabs((double)y), -8);
        if (!(err <= bound) || (fp32_out && memcmp(&got, &y, sizeof y) != 0)) {   // NaN fails, and -0 != +0 in fp32
            snprintf(why, why_size, "%s output at n=%d m=%d is %.9g, expected %.9g (allowed difference %.3g)",
                     fp32_out ? "fp32" : "bf16", n, m, got, y, bound);
            return false;
        }
        if (y != 0.0f) *max_rel_err = fmax(*max_rel_err, err / fabs((double)y));
    }
    return true;
}

// runs `version` once (bf16 or fp32 outputs), writing the raw accumulators too, and compares it with the CPU
// reference
static bool run_and_validate(int version, const HostProblem& h, const DeviceProblem& d, bool fp32_out, bool full,
                             char* why, size_t why_size, double* max_rel_err) {
    size_t count = (size_t)h.N * h.M;
    // all bits set: NaN outputs and -1 accumulators, so stale results cannot pass
    cudaCheck(cudaMemset(d.out, 0xFF, count * sizeof(__nv_bfloat16)));
    cudaCheck(cudaMemset(d.out_f32, 0xFF, count * sizeof(float)));
    cudaCheck(cudaMemset(d.acc, 0xFF, count * sizeof(int32_t)));
    run_int4_gemm(version, gemm_params(h, d, true, fp32_out));
    cudaCheck(cudaDeviceSynchronize());
    std::vector<int32_t> acc(count);
    std::vector<float> out(count);
    cudaCheck(cudaMemcpy(acc.data(), d.acc, count * sizeof(int32_t), cudaMemcpyDeviceToHost));
    if (fp32_out) {
        cudaCheck(cudaMemcpy(out.data(), d.out_f32, count * sizeof(float), cudaMemcpyDeviceToHost));
    } else {
        std::vector<__nv_bfloat16> out_bf16(count);
        cudaCheck(cudaMemcpy(out_bf16.data(), d.out, count * sizeof(__nv_bfloat16), cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < count; i++) out[i] = __bfloat162float(out_bf16[i]);
    }
    return compare_with_reference(h, acc, out, fp32_out, full, why, why_size, max_rel_err);
}

// mean milliseconds of one call over TIMED_REPEATS back-to-back calls, after WARMUP_REPEATS untimed ones
template <typename Fn> static float time_ms(Fn&& fn) {
    return mean_launch_ms([&](int) { fn(); }, WARMUP_REPEATS, TIMED_REPEATS);
}

// what K must be a multiple of (the header says why); version 0, the default, is one of 4-7
static int k_multiple(int version) { return version >= 1 && version <= 3 ? 16 : 32; }

// the shape rules of `version` (0: the default); K <= MAX_K keeps versions 4 and 6's 256·acc within int32
static bool shape_supported(int version, int N, int M, int K, bool report) {
    int multiple = k_multiple(version);
    if (N > 0 && M > 0 && K > 0 && K % multiple == 0 && K <= MAX_K) return true;
    if (report) {
        fprintf(stderr, "int4_gemm: N and M must be positive and K a positive multiple of %d (versions %s), at most "
                "%d (got N=%d M=%d K=%d)\n", multiple, multiple == 16 ? "1-3" : "4-7", MAX_K, N, M, K);
    }
    return false;
}

// validates `version` on N x M x K, then times it and the two cuBLASLt baselines; false if validation fails
static bool benchmark_shape(int version, int N, int M, int K) {
    HostProblem h = make_host_problem(N, M, K);
    DeviceProblem d = upload_problem(h);
    bool full = (uint64_t)N * M * K <= FULL_CHECK_MAX_MACS;
    char why[256];
    double max_rel_err;
    if (!run_and_validate(version, h, d, false, full, why, sizeof why, &max_rel_err)) {
        printf("%5d x %5d x %5d  FAIL v%d: %s\n", N, M, K, version, why);
        free_problem(d);
        return false;
    }
    Int4GemmParams params = gemm_params(h, d, false, false);
    float int4_ms = time_ms([&] { run_int4_gemm(version, params); });

    // baselines on the same values; their outputs reuse the (already validated) output buffers
    __nv_bfloat16* a_bf16 = unpacked_copy<__nv_bfloat16>(d.a, N, K);
    __nv_bfloat16* b_bf16 = unpacked_copy<__nv_bfloat16>(d.b, M, K);
    int8_t* a_int8 = unpacked_copy<int8_t>(d.a, N, K);
    int8_t* b_int8 = unpacked_copy<int8_t>(d.b, M, K);
    CublasLtGemm bf16_gemm = make_cublaslt_gemm(CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUDA_R_32F, N, M, K,
                                                d.bias);
    CublasLtGemm int8_gemm = make_cublaslt_gemm(CUDA_R_8I, CUDA_R_32I, CUBLAS_COMPUTE_32I, CUDA_R_32I, N, M, K,
                                                nullptr);
    float alpha_f = 1.0f, beta_f = 0.0f;
    int32_t alpha_i = 1, beta_i = 0;
    float bf16_ms = time_ms([&] { run_cublaslt_gemm(bf16_gemm, &alpha_f, &beta_f, a_bf16, b_bf16, d.out); });
    float int8_ms = time_ms([&] { run_cublaslt_gemm(int8_gemm, &alpha_i, &beta_i, a_int8, b_int8, d.acc); });

    double ops = 2.0 * N * M * K;
    double int4_tops = ops / (int4_ms * 1e9), bf16_tflops = ops / (bf16_ms * 1e9), int8_tops = ops / (int8_ms * 1e9);
    printf("%5d x %5d x %5d  v%d %8.4f ms %7.1f TOP/s | bf16 %8.4f ms %7.1f TFLOP/s | int8 %8.4f ms %7.1f TOP/s | "
           "int4/bf16 %5.2fx  int4/int8 %5.2fx | validated %s outputs, max bf16 rel err %.1e\n",
           N, M, K, version, int4_ms, int4_tops, bf16_ms, bf16_tflops, int8_ms, int8_tops, int4_tops / bf16_tflops,
           int4_tops / int8_tops, full ? "all" : "4096 sampled", max_rel_err);

    destroy_cublaslt_gemm(bf16_gemm);
    destroy_cublaslt_gemm(int8_gemm);
    cudaCheck(cudaFree(a_bf16));
    cudaCheck(cudaFree(b_bf16));
    cudaCheck(cudaFree(a_int8));
    cudaCheck(cudaFree(b_int8));
    free_problem(d);
    return true;
}

// all N x M accumulators on the CPU, once for the full checks of every version (OpenMP threads over rows)
static void compute_reference_accumulators(HostProblem& h) {
    size_t row_bytes = (size_t)h.K / 2;
    h.ref_acc.resize((size_t)h.N * h.M);
    #pragma omp parallel for
    for (int n = 0; n < h.N; n++) {
        for (int m = 0; m < h.M; m++) {
            h.ref_acc[(size_t)n * h.M + m] = int4_dot_reference(&h.a[n * row_bytes], &h.b[m * row_bytes], h.K);
        }
    }
}

// every version on N x M x K (those whose K rule it meets), BF16 then FP32 outputs, each checked in full against
// the CPU; the number of failures
static int check_shape(int N, int M, int K) {
    HostProblem h = make_host_problem(N, M, K);
    compute_reference_accumulators(h);
    DeviceProblem d = upload_problem(h);
    int failures = 0;
    for (int version = 1; version <= NUM_VERSIONS; version++) {
        if (!shape_supported(version, N, M, K, false)) {
            printf("     int4_gemm v%d not run on %d x %d x %d: it needs K to be a multiple of %d\n", version, N, M, K,
                   k_multiple(version));
            continue;
        }
        if (version >= 6 && !hopper_wgmma_available()) {
            printf("SKIP int4_gemm v%d (%d x %d x %d): wgmma needs an sm_90 GPU and a build with sm_90a\n", version, N,
                   M, K);
            continue;
        }
        for (bool fp32_out : {false, true}) {
            char why[256];
            double max_rel_err;
            if (run_and_validate(version, h, d, fp32_out, true, why, sizeof why, &max_rel_err)) {
                if (fp32_out) {
                    printf("PASS int4_gemm v%d fp32 out (%d x %d x %d, int32 and fp32 exact)\n", version, N, M, K);
                } else {
                    printf("PASS int4_gemm v%d bf16 out (%d x %d x %d, int32 exact, max bf16 rel err %.1e)\n",
                           version, N, M, K, max_rel_err);
                }
            } else {
                printf("FAIL int4_gemm v%d %s out (%d x %d x %d): %s\n", version, fp32_out ? "fp32" : "bf16", N, M,
                       K, why);
                failures++;
            }
        }
    }
    free_problem(d);
    return failures;
}

// --check: every version on five shapes, each checked in full, with BF16 and with FP32 outputs:
//   384 x 256 x 640  whole tiles; N != M catches swapped indices; 5 k-tiles of 128 run versions 4-7 past 4 stages
//   200 x 70 x 96    partial tiles along N and M (M % 8 != 0: versions 6-7's direct stores), one partial k-tile
//   130 x 37 x 608   odd M (single stores), 2 rows in a second row of tiles, 4 whole k-tiles and a partial one
//   77 x 45 x 48     K a multiple of g = 16 only: versions 1-3 (4-7 need K % 32)
//   2200 x 2200 x 352  324 tiles, more than 2x the H200's 132 SMs: version 7's blocks walk 2-3 tiles each, and
//                      with 3 k-tiles per tile its 4-stage ring wraps at a different k-tile in each tile
static int run_check() {
    const int shapes[][3] = {{384, 256, 640}, {200, 70, 96}, {130, 37, 608}, {77, 45, 48}, {2200, 2200, 352}};
    int failures = 0;
    for (const auto& shape : shapes) failures += check_shape(shape[0], shape[1], shape[2]);
    return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

int main(int argc, char** argv) {
    bool check = argc == 2 && strcmp(argv[1], "--check") == 0;
    if (!check && argc != 1 && argc != 2 && argc != 5) {
        fprintf(stderr, "usage: %s [version 1-%d] [N M K]  |  %s --check\n", argv[0], NUM_VERSIONS, argv[0]);
        return EXIT_FAILURE;
    }
    int version = argc >= 2 && !check ? atoi(argv[1]) : 0;
    if (argc >= 2 && !check && (version < 1 || version > NUM_VERSIONS)) {
        fprintf(stderr, "int4_gemm: unknown version %s (1-%d)\n", argv[1], NUM_VERSIONS);
        return EXIT_FAILURE;
    }
    // GPT-2 124M's linear layers at B·T = 16384 tokens (N x M x K: proj, qkv, fc, fcproj), then larger ones
    std::vector<int> shapes = {16384, 768, 768, 16384, 2304, 768, 16384, 3072, 768,
                               16384, 768, 3072, 16384, 4096, 4096, 16384, 16384, 4096};
    if (argc == 5) shapes = {atoi(argv[2]), atoi(argv[3]), atoi(argv[4])};
    for (size_t i = 0; i < shapes.size(); i += 3) {
        if (!shape_supported(version, shapes[i], shapes[i + 1], shapes[i + 2], true)) return EXIT_FAILURE;
    }

    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    matmul_setup();
    if (check) {
        int status = run_check();
        matmul_teardown();
        return status;
    }
    // by default the fastest version for the device: native s4 where INT4 tensor cores exist (sm_8x), persistent
    // wgmma on sm_90 (dev/results/int4_gemm_odd_sizes_v7_h200.log: 1.0-1.1x version 6, 1.8-1.9x version 4), else
    // s8 mma.sync
    if (version == 0) version = prop.major == 8 ? 5 : hopper_wgmma_available() ? 7 : 4;
    printf("int4_gemm version %d on %s (sm_%d%d); ratios are int4 TOP/s over the baseline's T(FL)OP/s\n", version,
           prop.name, prop.major, prop.minor);
    bool all_valid = true;
    for (size_t i = 0; i < shapes.size(); i += 3) {
        all_valid &= benchmark_shape(version, shapes[i], shapes[i + 1], shapes[i + 2]);
    }
    matmul_teardown();
    return all_valid ? EXIT_SUCCESS : EXIT_FAILURE;
}
