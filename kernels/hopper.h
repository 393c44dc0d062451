// sm_90a building blocks for a warp-specialised GEMM: mbarriers, TMA 2D loads, wgmma s8 on operands in shared
// memory (128-byte swizzle), and the host side (tensor maps through the driver entry point, an availability probe).
// The device functions exist only in the sm_90a pass of the build (__CUDA_ARCH_FEAT_SM90_ALL); kernels that use
// them compile to a trap elsewhere, and the host checks hopper_wgmma_available() before launching one.
#pragma once
#include <cuda.h>
#include <cudaTypedefs.h>
#include "common.h"

#define SWIZZLE_ROW_BYTES 128   // one row of a 128-byte-swizzled K-major tile: 128 s8 values along k
#define SWIZZLE_ATOM_BYTES 1024 // 8 rows: the unit the swizzle repeats over, and the alignment it needs

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ uint32_t smem_address(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// the first SWIZZLE_ATOM_BYTES-aligned byte of dynamic shared memory at or after `raw`. Pointer arithmetic on raw,
// not a round trip through an integer: that hides from the compiler that the result points to shared memory, and
// every access through it becomes a generic LD/ST (int4_gemm version 7: 4% slower at K = 768)
__device__ __forceinline__ uint8_t* align_to_swizzle_atom(uint8_t* raw) {
    uint32_t misalignment = smem_address(raw) % SWIZZLE_ATOM_BYTES;
    return raw + (misalignment == 0 ? 0 : SWIZZLE_ATOM_BYTES - misalignment);
}

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_address(bar)) : "memory");
}
__device__ __forceinline__ void mbarrier_arrive_expect_bytes(uint64_t* bar, int bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_address(bar)), "r"(bytes)
                 : "memory");
}
// spins until the barrier's phase with this parity has completed
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, int parity) {
    uint32_t done;
    do {
        asm volatile("{\n"
                     ".reg .pred done;\n"
                     "mbarrier.try_wait.parity.shared::cta.b64 done, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, done;\n"
                     "}\n"
                     : "=r"(done)
                     : "r"(smem_address(bar)), "r"(parity)
                     : "memory");
    } while (!done);
}
// after thread 0 has initialised the barriers: visible to the TMA unit, then to every thread (__syncthreads)
__device__ __forceinline__ void mbarrier_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// TMA: the box at (inner, outer) of a 2D tensor map -> shared memory; completion counted in bytes on `bar`
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, int inner, int outer, uint64_t* bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
                 "[%4];\n" ::"r"(smem_address(dst)), "l"(map), "r"(inner), "r"(outer), "r"(smem_address(bar))
                 : "memory");
}

// wgmma shared-memory descriptor of a K-major tile with 128-byte rows in the 128-byte swizzle (row r's 16-byte
// chunk c stored at chunk c ^ (r mod 8)): start address, stride between 8-row groups 1024 bytes (encoded >> 4),
// swizzle mode 1 in bits 62-63; the leading offset is unused in this mode (1 by convention). Adding 2 moves the
// start by 32 bytes: the next k = 32 step of s8 (the swizzle is applied to the final address).
__device__ __forceinline__ uint64_t wgmma_descriptor(const void* tile) {
    return (uint64_t)((smem_address(tile) & 0x3FFFF) >> 4) | (1ull << 16) | ((uint64_t)(SWIZZLE_ATOM_BYTES >> 4) << 32) |
           (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int PENDING> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(PENDING) : "memory");
}

// pins the accumulators in their registers across the asynchronous wgmma (no copies the compiler could move into
// the window between issue and wait, which would serialize the wgmma)
__device__ __forceinline__ void wgmma_fence_accumulators(int32_t (&acc)[16][4]) {
#pragma unroll
    for (int j = 0; j < 16; j++) {
        asm volatile("" : "+r"(acc[j][0]), "+r"(acc[j][1]), "+r"(acc[j][2]), "+r"(acc[j][3])::"memory");
    }
}

#define WGMMA_ACC8(i) "+r"(acc[i][0]), "+r"(acc[i][1]), "+r"(acc[i][2]), "+r"(acc[i][3])
#define WGMMA_ACC16(i) WGMMA_ACC8(i), WGMMA_ACC8(i + 1)
// D (64 x 128, s32) += A (64 x 32 s8, K-major, shared) · B (128 x 32 s8, K-major, shared)ᵀ for one warp group.
// Accumulator fragment (PTX ISA, "wgmma .m64nNk32 D"): warp w of the group holds rows 16w..16w+15; acc[j] holds
// columns 8j..8j+7 as mma.m16n8's C: lane 4·group + tig has (row group, cols 8j+2·tig, +1) in acc[j][0..1] and
// row group+8 in acc[j][2..3].
__device__ __forceinline__ void wgmma_s8_m64n128k32(int32_t (&acc)[16][4], uint64_t desc_a, uint64_t desc_b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, 1;\n"
                 : WGMMA_ACC16(0), WGMMA_ACC16(2), WGMMA_ACC16(4), WGMMA_ACC16(6), WGMMA_ACC16(8), WGMMA_ACC16(10),
                   WGMMA_ACC16(12), WGMMA_ACC16(14)
                 : "l"(desc_a), "l"(desc_b));
}
#endif

// 1 in the sm_90a pass of the build, 0 in every other
__global__ void hopper_wgmma_build_probe(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    *out = 1;
#else
    *out = 0;
#endif
}

// whether the current device runs this binary's sm_90a code (an sm_90 GPU, and a build that includes 90a): one
// tiny launch and a copy, so call it at setup, not in a step
inline bool hopper_wgmma_available() {
    int device, major;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    if (major != 9) return false;
    int *flag_device, flag = 0;
    cudaCheck(cudaMalloc(&flag_device, sizeof(int)));
    hopper_wgmma_build_probe<<<1, 1>>>(flag_device);
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaMemcpy(&flag, flag_device, sizeof(int), cudaMemcpyDeviceToHost));
    cudaCheck(cudaFree(flag_device));
    return flag == 1;
}

// a 2D tensor map of uint8 over `rows` rows of `row_bytes` (a multiple of 16) at `base`; boxes of box_rows x
// box_bytes, optionally 128-byte swizzled (then box_bytes = 128); reads past the edges return zeros
inline CUtensorMap tensor_map_2d_bytes(const void* base, long rows, long row_bytes, int box_rows, int box_bytes,
                                       bool swizzle_128b) {
    static PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
    if (!encode) {
        cudaDriverEntryPointQueryResult found;
        cudaCheck(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", (void**)&encode, 12000, cudaEnableDefault,
                                                   &found));
        if (found != cudaDriverEntryPointSuccess) {
            fprintf(stderr, "tensor_map_2d_bytes: the CUDA driver has no cuTensorMapEncodeTiled (TMA needs CUDA 12+)\n");
            exit(EXIT_FAILURE);
        }
    }
    CUtensorMap map;
    cuuint64_t dims[2] = {(cuuint64_t)row_bytes, (cuuint64_t)rows}, strides[1] = {(cuuint64_t)row_bytes};
    cuuint32_t box[2] = {(cuuint32_t)box_bytes, (cuuint32_t)box_rows}, element_strides[2] = {1, 1};
    CUresult result = encode(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, (void*)base, dims, strides, box, element_strides,
                             CU_TENSOR_MAP_INTERLEAVE_NONE,
                             swizzle_128b ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
                             CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (result != CUDA_SUCCESS) {
        fprintf(stderr, "tensor_map_2d_bytes: cuTensorMapEncodeTiled failed (error %d) for %ld rows x %ld bytes\n",
                (int)result, rows, row_bytes);
        exit(EXIT_FAILURE);
    }
    return map;
}
