// The ∇W GEMM of the LSS backward over the kept token rows only (sm_90a): C (rows x cols, int32, row-major) =
// Σ_{j < *length} A[r][j]·B[c][j] with A (rows x ld) and B (cols x ld) s8, token-major. *length (the kept-row count)
// is read on the device, so the GEMM skips the dropped rows without a host sync — cuBLASLt takes its sizes from
// the host and has to run over all ld columns. The operands must be zero in columns [*length, ld) (lss_gather
// writes them so): whole 128-column k-tiles are multiplied, and TMA reads past ld return zeros.
// Integer sums are exact, so the result is bit-identical to cuBLASLt's over all columns, whatever the split.
#pragma once
#include <algorithm>
#include "common.h"
#include "hopper.h"

#define KEPT_TILE 128                                      // output rows x cols per block; columns per k-tile
#define KEPT_STAGES 4                                      // k-tiles in flight
#define KEPT_STAGE_BYTES (2 * KEPT_TILE * SWIZZLE_ROW_BYTES)  // A tile then B tile, s8, swizzled: 32 KiB
#define KEPT_THREADS 384                                   // warp group 0 loads (one thread), 1 and 2 multiply
#define KEPT_MAX_SPLITS 8
#define KEPT_SMEM_BYTES (KEPT_STAGES * KEPT_STAGE_BYTES + 2 * KEPT_STAGES * 8 + SWIZZLE_ATOM_BYTES)

// C tile (blockIdx.y, blockIdx.x) from k-tiles blockIdx.z, +gridDim.z, ... < ceil(*length / 128): split z of
// gridDim.z, interleaved so every split has work whatever *length is. One thread of warp group 0 streams A and B
// k-tiles with TMA (128-byte swizzle) into a 4-stage mbarrier ring; warp groups 1 and 2 multiply 64 rows each with
// four wgmma m64n128k32 s8 per k-tile, one k-tile in flight, and release a stage once its wgmma are done. With one
// split C is stored; with several, each adds its partial sums atomically into a zeroed C (exact for integers).
__global__ void __launch_bounds__(KEPT_THREADS, 1)
    kept_rows_gemm_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                          int32_t* c, int cols, const int* length, int ld) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ uint8_t smem_raw[];
    uint8_t* stages = align_to_swizzle_atom(smem_raw);
    uint64_t* full = (uint64_t*)(stages + KEPT_STAGES * KEPT_STAGE_BYTES);
    uint64_t* empty = full + KEPT_STAGES;
    int warp_group = threadIdx.x / 128, r0 = blockIdx.y * KEPT_TILE, c0 = blockIdx.x * KEPT_TILE;
    int split = blockIdx.z, splits = gridDim.z;
    int k_tiles = CEIL_DIV(min(max(*length, 0), ld), KEPT_TILE);
    int my_k_tiles = k_tiles > split ? CEIL_DIV(k_tiles - split, splits) : 0;
    if (threadIdx.x == 0) {
        for (int s = 0; s < KEPT_STAGES; s++) {
            mbarrier_init(&full[s], 1);    // the loader's arrive; the bytes come with the TMA
            mbarrier_init(&empty[s], 2);   // one thread per consumer group, once its wgmma on the stage are done
        }
        mbarrier_init_fence();
    }
    __syncthreads();

    if (warp_group == 0) {
        if (threadIdx.x == 0) {
            for (int i = 0; i < my_k_tiles; i++) {
                int s = i % KEPT_STAGES, column = (split + i * splits) * KEPT_TILE;
                if (i >= KEPT_STAGES) mbarrier_wait(&empty[s], (i / KEPT_STAGES - 1) & 1);
                uint8_t* stage = stages + s * KEPT_STAGE_BYTES;
                mbarrier_arrive_expect_bytes(&full[s], KEPT_STAGE_BYTES);
                tma_load_2d(stage, &map_a, column, r0, &full[s]);
                tma_load_2d(stage + KEPT_TILE * SWIZZLE_ROW_BYTES, &map_b, column, c0, &full[s]);
            }
        }
        return;
    }

    int consumer = warp_group - 1, thread = threadIdx.x % 128;   // consumer g multiplies A rows 64g..64g+63
    int32_t acc[16][4] = {};
    for (int i = 0; i < my_k_tiles; i++) {
        int s = i % KEPT_STAGES;
        mbarrier_wait(&full[s], (i / KEPT_STAGES) & 1);
        const uint8_t* stage = stages + s * KEPT_STAGE_BYTES;
        uint64_t desc_a = wgmma_descriptor(stage + 64 * consumer * SWIZZLE_ROW_BYTES);
        uint64_t desc_b = wgmma_descriptor(stage + KEPT_TILE * SWIZZLE_ROW_BYTES);
        wgmma_fence();
        wgmma_fence_accumulators(acc);
#pragma unroll
        for (int step = 0; step < SWIZZLE_ROW_BYTES / 32; step++) {   // k = 32 bytes per step: +2 in the address
            wgmma_s8_m64n128k32(acc, desc_a + 2 * step, desc_b + 2 * step);
        }
        wgmma_commit();
        wgmma_wait<1>();   // the previous k-tile's wgmma are done: its stage can be refilled
        wgmma_fence_accumulators(acc);
        if (i > 0 && thread == 0) mbarrier_arrive(&empty[(i - 1) % KEPT_STAGES]);
    }
    wgmma_wait<0>();
    wgmma_fence_accumulators(acc);
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
    return rows > 0 && cols > 0 && rows % KEPT_TILE == 0 && cols % KEPT_TILE == 0 && ld > 0 && ld % 16 == 0;
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
    CUtensorMap map_a = tensor_map_2d_bytes(a, rows, ld, KEPT_TILE, SWIZZLE_ROW_BYTES, true);
    CUtensorMap map_b = tensor_map_2d_bytes(b, cols, ld, KEPT_TILE, SWIZZLE_ROW_BYTES, true);
    cudaCheck(cudaFuncSetAttribute(kept_rows_gemm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   KEPT_SMEM_BYTES));
    if (splits > 1) cudaCheck(cudaMemsetAsync(c, 0, (size_t)rows * cols * sizeof(int32_t), stream));
    dim3 grid(cols / KEPT_TILE, rows / KEPT_TILE, splits);
    kept_rows_gemm_kernel<<<grid, KEPT_THREADS, KEPT_SMEM_BYTES, stream>>>(map_a, map_b, c, cols, length, ld);
    cudaCheck(cudaGetLastError());
}
