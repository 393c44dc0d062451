// s8 GEMMs on sm_90a tensor cores: C[r][c] = Σ_j A[r][j]·B[c][j] with A (rows x depth) and B (cols x depth) s8,
// K-major, in 128 x 128 output tiles. One thread streams 128-column k-tiles of A and B with TMA (128-byte swizzle)
// into a 4-stage mbarrier ring; two consumer warp groups multiply 64 rows each with wgmma m64n128k32 s8. Two uses:
//   kept_rows_gemm: the ∇W GEMM of the LSS backward over the kept token rows only, int32 out. *length (the
//     kept-row count) is read on the device, so the GEMM skips the dropped rows without a host sync — cuBLASLt
//     takes its sizes from the host and has to run over all ld columns. The operands must be zero in columns
//     [*length, ld) (lss_gather writes them so): whole 128-column k-tiles are multiplied, and TMA reads past ld
//     return zeros. Integer sums are exact, so the result is bit-identical to cuBLASLt's, whatever the split.
//   dequant_gemm: the quantized forward, out = T(acc·|s_x|·|s_w| + bias) with the dequantize fused into the
//     epilogue (the cuBLASLt path writes int32 and reads it back in a second kernel), rounded like that kernel.
#pragma once
#include <algorithm>
#include "common.h"
#include "hopper.h"

#define S8_TILE 128                                        // output rows x cols per tile; columns per k-tile
#define S8_STAGES 4                                        // k-tiles in flight
#define S8_STAGE_BYTES (2 * S8_TILE * SWIZZLE_ROW_BYTES)   // A tile then B tile, s8, swizzled: 32 KiB
#define S8_GEMM_THREADS 384                                // warp group 0 loads (one thread), 1 and 2 multiply
#define S8_RING_BYTES (S8_STAGES * S8_STAGE_BYTES + 2 * S8_STAGES * 8)   // the stages, then their barriers
#define KEPT_MAX_SPLITS 8
#define KEPT_SMEM_BYTES (S8_RING_BYTES + SWIZZLE_ATOM_BYTES)
// dequant_gemm: per consumer group, 64 staged bf16 output rows (padded: see dequant_store_tile) and 128 biases
#define DEQUANT_STAGING_ROW_BYTES (2 * S8_TILE + 16)
#define DEQUANT_GROUP_BYTES (64 * DEQUANT_STAGING_ROW_BYTES + S8_TILE * 4)
#define DEQUANT_SMEM_BYTES (S8_RING_BYTES + 2 * DEQUANT_GROUP_BYTES + SWIZZLE_ATOM_BYTES)
#define DEQUANT_BAND_TILES 8   // tile rows per band of dequant_gemm's walk (dequant_tile_origin)

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// the stage ring: S8_STAGES k-tiles of A then B, full barriers (the loader's arrive + the TMA bytes) and empty ones
// (one arrive per consumer group once its wgmma on the stage are done). A k-tile's ring position p counts every
// k-tile the block has loaded before it: stage p % S8_STAGES, barrier phase p / S8_STAGES.
struct S8Ring {
    uint8_t* stages;
    uint64_t *full, *empty;
};

// the ring at the start of dynamic shared memory (1024-aligned, as the swizzle requires); thread 0 initialises the
// barriers, which the whole block sees on return. Shared memory past the ring starts at s8_ring_end.
__device__ __forceinline__ S8Ring s8_ring_setup(uint8_t* smem_raw) {
    S8Ring ring;
    ring.stages = align_to_swizzle_atom(smem_raw);
    ring.full = (uint64_t*)(ring.stages + S8_STAGES * S8_STAGE_BYTES);
    ring.empty = ring.full + S8_STAGES;
    if (threadIdx.x == 0) {
        for (int s = 0; s < S8_STAGES; s++) {
            mbarrier_init(&ring.full[s], 1);
            mbarrier_init(&ring.empty[s], 2);
        }
        mbarrier_init_fence();
    }
    __syncthreads();
    return ring;
}
__device__ __forceinline__ uint8_t* s8_ring_end(const S8Ring& ring) { return (uint8_t*)(ring.empty + S8_STAGES); }

// the loader (one thread): `count` k-tiles, k-tile first + i·stride for i < count, of A rows r0.. and B rows c0..
// into ring positions pos + i, each once the consumers have released the stage's previous k-tile
__device__ __forceinline__ void s8_load_k_tiles(const S8Ring& ring, const CUtensorMap* map_a, const CUtensorMap* map_b,
                                                int r0, int c0, int count, int first, int stride, int pos) {
    for (int i = 0; i < count; i++) {
        int p = pos + i, s = p % S8_STAGES, column = (first + i * stride) * S8_TILE;
        if (p >= S8_STAGES) mbarrier_wait(&ring.empty[s], (p / S8_STAGES - 1) & 1);
        uint8_t* stage = ring.stages + s * S8_STAGE_BYTES;
        mbarrier_arrive_expect_bytes(&ring.full[s], S8_STAGE_BYTES);   // whole boxes, zero-filled parts included
        tma_load_2d(stage, map_a, column, r0, &ring.full[s]);
        tma_load_2d(stage + S8_TILE * SWIZZLE_ROW_BYTES, map_b, column, c0, &ring.full[s]);
    }
}

// consumer group g (A rows 64g..64g+63 of the tile): acc += the k-tiles at ring positions pos .. pos+count-1, four
// wgmma per k-tile with one k-tile in flight; a stage is released once its wgmma are done. On return every wgmma
// has completed and every stage is released.
__device__ __forceinline__ void s8_multiply_k_tiles(const S8Ring& ring, int32_t (&acc)[16][4], int count, int pos,
                                                    int consumer, int thread) {
    for (int i = 0; i < count; i++) {
        int p = pos + i, s = p % S8_STAGES;
        mbarrier_wait(&ring.full[s], (p / S8_STAGES) & 1);
        const uint8_t* stage = ring.stages + s * S8_STAGE_BYTES;
        uint64_t desc_a = wgmma_descriptor(stage + 64 * consumer * SWIZZLE_ROW_BYTES);
        uint64_t desc_b = wgmma_descriptor(stage + S8_TILE * SWIZZLE_ROW_BYTES);
        wgmma_fence();
        wgmma_fence_accumulators(acc);
#pragma unroll
        for (int step = 0; step < SWIZZLE_ROW_BYTES / 32; step++) {   // k = 32 bytes per step: +2 in the address
            wgmma_s8_m64n128k32(acc, desc_a + 2 * step, desc_b + 2 * step);
        }
        wgmma_commit();
        wgmma_wait<1>();   // the previous k-tile's wgmma are done: its stage can be refilled
        wgmma_fence_accumulators(acc);
        if (i > 0 && thread == 0) mbarrier_arrive(&ring.empty[(p - 1) % S8_STAGES]);
    }
    wgmma_wait<0>();
    wgmma_fence_accumulators(acc);
    if (count > 0 && thread == 0) mbarrier_arrive(&ring.empty[(pos + count - 1) % S8_STAGES]);
}

__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
#endif

// C tile (blockIdx.y, blockIdx.x) from k-tiles blockIdx.z, +gridDim.z, ... < ceil(*length / 128): split z of
// gridDim.z, interleaved so every split has work whatever *length is. With one split C is stored; with several,
// each adds its partial sums atomically into a zeroed C (exact for integers).
__global__ void __launch_bounds__(S8_GEMM_THREADS, 1)
    kept_rows_gemm_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                          int32_t* c, int cols, const int* length, int ld) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ uint8_t smem_raw[];
    S8Ring ring = s8_ring_setup(smem_raw);
    int warp_group = threadIdx.x / 128, r0 = blockIdx.y * S8_TILE, c0 = blockIdx.x * S8_TILE;
    int split = blockIdx.z, splits = gridDim.z;
    int k_tiles = CEIL_DIV(min(max(*length, 0), ld), S8_TILE);
    int my_k_tiles = k_tiles > split ? CEIL_DIV(k_tiles - split, splits) : 0;
    if (warp_group == 0) {
        if (threadIdx.x == 0) s8_load_k_tiles(ring, &map_a, &map_b, r0, c0, my_k_tiles, split, splits, 0);
        return;
    }
    int consumer = warp_group - 1, thread = threadIdx.x % 128;   // consumer g multiplies A rows 64g..64g+63
    int32_t acc[16][4] = {};
    s8_multiply_k_tiles(ring, acc, my_k_tiles, 0, consumer, thread);
    if (splits > 1 && my_k_tiles == 0) return;   // nothing to add
    int warp = thread / 32, lane = thread % 32, group = lane / 4, tig = lane % 4;
    int row = r0 + 64 * consumer + 16 * warp + group;   // and row + 8
#pragma unroll
    for (int j = 0; j < 16; j++) {
        int col = c0 + 8 * j + 2 * tig;
        int32_t* lo = c + (size_t)row * cols + col;
        int32_t* hi = lo + (size_t)8 * cols;
        if (splits == 1) {
            *reinterpret_cast<int2*>(lo) = make_int2(acc[j][0], acc[j][1]);
            *reinterpret_cast<int2*>(hi) = make_int2(acc[j][2], acc[j][3]);
        } else {
            atomicAdd(lo, acc[j][0]);
            atomicAdd(lo + 1, acc[j][1]);
            atomicAdd(hi, acc[j][2]);
            atomicAdd(hi + 1, acc[j][3]);
        }
    }
#else
    __trap();   // launched only where the sm_90a code runs (kept_rows_gemm_fits with hopper_wgmma_available)
#endif
}

// the shapes the kernel takes: whole 128 x 128 output tiles, and token rows of a multiple of 16 bytes (TMA)
inline bool kept_rows_gemm_fits(int rows, int cols, int ld) {
    return rows > 0 && cols > 0 && rows % S8_TILE == 0 && cols % S8_TILE == 0 && ld > 0 && ld % 16 == 0;
}

// the split count for `tiles` output tiles on `sms` multiprocessors (one block each) when about k_tiles k-tiles
// are kept: splits only fill multiprocessors that would idle (tiles <= sms / 2), since an atomic epilogue costs
// about as much as 20-30 k-tiles of a block (3072 x 768 ∇W on the H200: 4 splits 0.070 ms, one wave of 108
// unsplit tiles 0.025 ms; dev/results/kept_rows_gemm_h200.log)
inline int kept_rows_gemm_splits(int tiles, int sms, int k_tiles) {
    if (tiles > sms / 2) return 1;
    return std::max(1, std::min({KEPT_MAX_SPLITS, sms / tiles, k_tiles}));
}

// C (rows x cols) = A · Bᵀ over the first *length of ld token columns, `splits` ways (1: stored, else added into
// C zeroed here). Requires kept_rows_gemm_fits and hopper_wgmma_available(); no host sync.
inline void kept_rows_gemm(int32_t* c, const int8_t* a, const int8_t* b, int rows, int cols, int ld,
                           const int* length, int splits, cudaStream_t stream) {
    CUtensorMap map_a = tensor_map_2d_bytes(a, rows, ld, S8_TILE, SWIZZLE_ROW_BYTES, true);
    CUtensorMap map_b = tensor_map_2d_bytes(b, cols, ld, S8_TILE, SWIZZLE_ROW_BYTES, true);
    cudaCheck(cudaFuncSetAttribute(kept_rows_gemm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   KEPT_SMEM_BYTES));
    if (splits > 1) cudaCheck(cudaMemsetAsync(c, 0, (size_t)rows * cols * sizeof(int32_t), stream));
    dim3 grid(cols / S8_TILE, rows / S8_TILE, splits);
    kept_rows_gemm_kernel<<<grid, S8_GEMM_THREADS, KEPT_SMEM_BYTES, stream>>>(map_a, map_b, c, cols, length, ld);
    cudaCheck(cudaGetLastError());
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// consumer group g's 64 x 128 accumulators of the tile at (r0 = the group's first row, c0) -> out, dequantized:
// y = acc·scale (+ bias[c]), the product then the sum, rounded once each, as dequantize_bias_kernel. `area`: the
// group's DEQUANT_GROUP_BYTES. The tile's biases go to shared memory first (one load per thread, not 16 loads each
// waited for between the stores). A whole BF16 tile (cols % 8 == 0 and out 16-byte aligned) is staged in shared
// memory (rows padded to 272 bytes: the 32 lanes' 4-byte writes of 8 rows hit 32 banks) and leaves in 16-byte
// stores of whole 256-byte rows; FP32 outputs (a quad writes a whole 32-byte sector) and edge tiles go directly,
// bounds-checked. Every branch is uniform over the group, as the named barrier (id 2 + g) needs.
template <typename T>
__device__ __forceinline__ void dequant_store_tile(T* out, const T* bias, const int32_t (&acc)[16][4], float scale,
                                                   int r0, int c0, int rows, int cols, int consumer, int thread,
                                                   uint8_t* area) {
    float* tile_bias = reinterpret_cast<float*>(area + 64 * DEQUANT_STAGING_ROW_BYTES);
    named_barrier_sync(2 + consumer, 128);   // the group's last tile has left the area
    if (bias) tile_bias[thread] = c0 + thread < cols ? to_float(bias[c0 + thread]) : 0.0f;
    named_barrier_sync(2 + consumer, 128);
    int warp = thread / 32, lane = thread % 32, group = lane / 4, tig = lane % 4;
    int row = 16 * warp + group;   // of the group's 64; and row + 8
    bool staged = sizeof(T) == 2 && r0 + 64 <= rows && c0 + S8_TILE <= cols && cols % 8 == 0 &&
                  (uintptr_t)out % 16 == 0;
#pragma unroll
    for (int j = 0; j < 16; j++) {
        int col = 8 * j + 2 * tig;
        float y[4];
#pragma unroll
        for (int q = 0; q < 4; q++) {
            float v = __fmul_rn((float)acc[j][q], scale);
            y[q] = bias ? __fadd_rn(v, tile_bias[col + (q & 1)]) : v;
        }
        if (staged) {
            *reinterpret_cast<__nv_bfloat162*>(area + row * DEQUANT_STAGING_ROW_BYTES + 2 * col) =
                __floats2bfloat162_rn(y[0], y[1]);
            *reinterpret_cast<__nv_bfloat162*>(area + (row + 8) * DEQUANT_STAGING_ROW_BYTES + 2 * col) =
                __floats2bfloat162_rn(y[2], y[3]);
        } else {
#pragma unroll
            for (int q = 0; q < 4; q++) {
                int r = r0 + row + 8 * (q >> 1), c = c0 + col + (q & 1);
                if (r < rows && c < cols) out[(size_t)r * cols + c] = from_float<T>(y[q]);
            }
        }
    }
    if (!staged) return;
    named_barrier_sync(2 + consumer, 128);   // the group's tile is staged
#pragma unroll
    for (int i = 0; i < 8; i++) {   // 64 rows x 16 chunks of 16 bytes; a warp writes two whole rows
        int chunk = thread + 128 * i, r = chunk / 16, c = chunk % 16;
        uint4 v = *reinterpret_cast<const uint4*>(area + r * DEQUANT_STAGING_ROW_BYTES + 16 * c);
        *reinterpret_cast<uint4*>(reinterpret_cast<uint8_t*>(out + (size_t)(r0 + r) * cols + c0) + 16 * c) = v;
    }
}
#endif

// the origin of tile t of dequant_gemm: bands of DEQUANT_BAND_TILES tile rows, each walked column by column, so the
// blocks at work at one time share a few tile rows of A and columns of B, which stay in L2 even when B does not
// (16384 x 4096 s8 is 64 MiB; walking whole tile rows, every row of tiles read all of B from DRAM again)
HD void dequant_tile_origin(int t, int tiles_r, int tiles_c, int* r0, int* c0) {
    int band = t / (DEQUANT_BAND_TILES * tiles_c), first = band * DEQUANT_BAND_TILES;
    int band_rows = tiles_r - first < DEQUANT_BAND_TILES ? tiles_r - first : DEQUANT_BAND_TILES;
    int i = t - first * tiles_c;
    *r0 = (first + i % band_rows) * S8_TILE;
    *c0 = (i / band_rows) * S8_TILE;
}

// out (rows x cols) = T(A·Bᵀ · |s_x|·|s_w| + bias) over `depth` columns: A the input's codes, B the weight's.
// Persistent: one block per SM walks the 128 x 128 tiles (dequant_tile_origin); the loader runs ahead into the
// next tile while the consumers dequantize and store the last one.
template <typename T>
__global__ void __launch_bounds__(S8_GEMM_THREADS, 1)
    dequant_gemm_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b, T* out,
                        const T* bias, int rows, int cols, int depth, const float* step_x, const float* step_w) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ uint8_t smem_raw[];
    S8Ring ring = s8_ring_setup(smem_raw);
    int warp_group = threadIdx.x / 128, tiles_r = CEIL_DIV(rows, S8_TILE), tiles_c = CEIL_DIV(cols, S8_TILE);
    int tiles = tiles_r * tiles_c, k_tiles = CEIL_DIV(depth, S8_TILE), r0, c0;
    if (warp_group == 0) {
        if (threadIdx.x != 0) return;
        for (int tile = blockIdx.x, pos = 0; tile < tiles; tile += gridDim.x, pos += k_tiles) {
            dequant_tile_origin(tile, tiles_r, tiles_c, &r0, &c0);
            s8_load_k_tiles(ring, &map_a, &map_b, r0, c0, k_tiles, 0, 1, pos);
        }
        return;
    }
    int consumer = warp_group - 1, thread = threadIdx.x % 128;
    float scale = __fmul_rn(fabsf(*step_x), fabsf(*step_w));
    uint8_t* area = s8_ring_end(ring) + consumer * DEQUANT_GROUP_BYTES;
    for (int tile = blockIdx.x, pos = 0; tile < tiles; tile += gridDim.x, pos += k_tiles) {
        int32_t acc[16][4] = {};
        s8_multiply_k_tiles(ring, acc, k_tiles, pos, consumer, thread);
        dequant_tile_origin(tile, tiles_r, tiles_c, &r0, &c0);
        dequant_store_tile(out, bias, acc, scale, r0 + 64 * consumer, c0, rows, cols, consumer, thread, area);
    }
#else
    __trap();   // launched only where the sm_90a code runs (the caller checks hopper_wgmma_available)
#endif
}

// the shapes dequant_gemm takes: code rows of a multiple of 16 bytes (TMA); any row and column counts
inline bool dequant_gemm_fits(int depth) { return depth > 0 && depth % 16 == 0; }

// out (N x M) = T(codes_x · codes_wᵀ · |s_x|·|s_w| + bias), codes_x N x K and codes_w M x K (s8, row-major), bias
// (M) or null; `sms` blocks at most. Requires dequant_gemm_fits(K) and hopper_wgmma_available(); no host sync.
template <typename T>
void dequant_gemm(T* out, const int8_t* codes_x, const int8_t* codes_w, const T* bias, int N, int M, int K,
                  const float* step_x, const float* step_w, int sms, cudaStream_t stream) {
    CUtensorMap map_a = tensor_map_2d_bytes(codes_x, N, K, S8_TILE, SWIZZLE_ROW_BYTES, true);
    CUtensorMap map_b = tensor_map_2d_bytes(codes_w, M, K, S8_TILE, SWIZZLE_ROW_BYTES, true);
    cudaCheck(cudaFuncSetAttribute(dequant_gemm_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   DEQUANT_SMEM_BYTES));
    int tiles = CEIL_DIV(N, S8_TILE) * CEIL_DIV(M, S8_TILE);
    dequant_gemm_kernel<T><<<std::min(tiles, sms), S8_GEMM_THREADS, DEQUANT_SMEM_BYTES, stream>>>(
        map_a, map_b, out, bias, N, M, K, step_x, step_w);
    cudaCheck(cudaGetLastError());
}
