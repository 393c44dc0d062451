// Things every header needs: the host/device qualifier for shared scalar math, error checks with
// one-line messages, and a ceil-div. Nothing here depends on a GPU being present.
#pragma once
#include <stdint.h>
#include <type_traits>
#include <stdio.h>
#include <stdlib.h>

#ifdef __CUDACC__
#define HD __host__ __device__ __forceinline__
#else
#define HD inline
#endif

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

#ifdef __CUDACC__
#include <cuda_runtime.h>
inline void cuda_check(cudaError_t error, const char* file, int line) {
    if (error != cudaSuccess) {
        fprintf(stderr, "[CUDA ERROR] at %s:%d: %s\n", file, line, cudaGetErrorString(error));
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(err) (cuda_check(err, __FILE__, __LINE__))

// cp.async (sm_80+): 16 bytes from global to shared memory without passing through registers, so a thread
// block can load its next tile while it computes on the current one. The bytes past valid_bytes (0 or 16)
// are filled with zeros and not read. Copies are grouped by commit; wait<N> returns once at most N of this
// thread's groups are still in flight (then __syncthreads() before other threads read the data).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int valid_bytes = 16) {
    uint32_t smem_address = (uint32_t)__cvta_generic_to_shared(smem);
    size_t gmem_address = __cvta_generic_to_global(gmem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address), "l"(gmem_address),
                 "r"(valid_bytes) : "memory");
}
// the same for 4 bytes (through L1: cp.async.cg takes only 16)
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, int valid_bytes = 4) {
    uint32_t smem_address = (uint32_t)__cvta_generic_to_shared(smem);
    size_t gmem_address = __cvta_generic_to_global(gmem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_address), "l"(gmem_address),
                 "r"(valid_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int PENDING> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
}
#endif

#ifdef __CUDACC__
#include <nvtx3/nvToolsExt.h>
#include <map>
#include <string>
#include <vector>
// train_int4 -P: every NVTX range below also timed with two CUDA events on the legacy default stream, which
// waits for and holds back every blocking stream, so the events bracket exactly the range's kernels
struct OpTiming {
    const char* name;
    cudaEvent_t start, stop;
};
struct OpProfile {
    bool enabled = false;
    std::vector<OpTiming> ranges;                           // the current step's, in launch order
    std::map<std::string, std::pair<double, long>> totals;  // name -> (milliseconds, calls) over collected steps
};
inline OpProfile op_profile;

inline int op_profile_begin(const char* name) {
    if (!op_profile.enabled) return -1;
    OpTiming t = {name, nullptr, nullptr};
    cudaCheck(cudaEventCreate(&t.start));
    cudaCheck(cudaEventCreate(&t.stop));
    cudaCheck(cudaEventRecord(t.start, 0));
    op_profile.ranges.push_back(t);
    return (int)op_profile.ranges.size() - 1;
}

inline void op_profile_end(int index) {
    if (index >= 0) cudaCheck(cudaEventRecord(op_profile.ranges[index].stop, 0));
}

// adds the current step's range times to the totals (synchronises)
inline void op_profile_collect() {
    cudaCheck(cudaDeviceSynchronize());
    for (OpTiming& t : op_profile.ranges) {
        float ms = 0.0f;
        cudaCheck(cudaEventElapsedTime(&ms, t.start, t.stop));
        std::pair<double, long>& total = op_profile.totals[t.name];
        total.first += ms;
        total.second++;
        cudaCheck(cudaEventDestroy(t.start));
        cudaCheck(cudaEventDestroy(t.stop));
    }
    op_profile.ranges.clear();
}

// an NVTX range over the enclosing scope: every layer's launcher opens one named after itself, so a profile
// (nsys) shows each layer's forward and backward; train_int4.cu adds one per block around them
struct NvtxRange {
    int timing;  // index into op_profile.ranges, -1 when not timing
    explicit NvtxRange(const char* name) : timing(op_profile_begin(name)) { nvtxRangePush(name); }
    ~NvtxRange() {
        nvtxRangePop();
        op_profile_end(timing);
    }
};
#define NVTX_RANGE_FN() NvtxRange nvtx_range(__func__)
#endif

#ifdef __CUDACC__
#include <cuda_bf16.h>
// activations are float (fp32 mode) or __nv_bfloat16 (bf16 and int4 modes); kernels are templates over it
template <typename T> __device__ __forceinline__ float to_float(T v) { return (float)v; }
template <> __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v) { return (T)v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }

// host-side conversion for copying parameters between FP32 master weights and the compute copy
inline __nv_bfloat16 host_float_to_bf16(float f) { return __float2bfloat16_rn(f); }
template <typename T> inline T host_from_float(float f) {
    if constexpr (std::is_same<T, float>::value) return f;
    else return host_float_to_bf16(f);
}

// 16 bytes of activations (8 BF16 or 4 FP32 values) moved as one vector load or store; the pointer must be
// 16-byte aligned (kernels check `aligned16` on the host and otherwise move elements one by one)
inline bool aligned16(const void* p) { return (uintptr_t)p % 16 == 0; }
template <typename T> struct alignas(16) Packed {
    static constexpr int size = 16 / sizeof(T);
    T values[size];
    __device__ __forceinline__ static Packed load(const T* p) { return *reinterpret_cast<const Packed*>(p); }
    __device__ __forceinline__ void store(T* p) const { *reinterpret_cast<Packed*>(p) = *this; }
};

// out[i] = f(x) for i < n, x[j] = inputs[j][i] in FP32: thread t takes elements [t·P, t·P + P) with P the values
// in 16 bytes, as one vector load per input and one vector store when `vectorized` (every pointer 16-byte aligned)
template <typename T, int NIN, typename F>
__device__ __forceinline__ void elementwise_packed(T* out, const T* const (&inputs)[NIN], long n, bool vectorized, F f) {
    constexpr int P = Packed<T>::size;
    long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * P;
    if (vectorized && i + P <= n) {
        Packed<T> in[NIN], y;
#pragma unroll
        for (int j = 0; j < NIN; j++) in[j] = Packed<T>::load(inputs[j] + i);
#pragma unroll
        for (int k = 0; k < P; k++) {
            float x[NIN];
#pragma unroll
            for (int j = 0; j < NIN; j++) x[j] = to_float(in[j].values[k]);
            y.values[k] = from_float<T>(f(x));
        }
        y.store(out + i);
    } else {
        for (long end = i + P < n ? i + P : n; i < end; i++) {
            float x[NIN];
#pragma unroll
            for (int j = 0; j < NIN; j++) x[j] = to_float(inputs[j][i]);
            out[i] = from_float<T>(f(x));
        }
    }
}

// 8 BF16 values (16 bytes, element 0 in the lowest bits) widened to FP32: a BF16 is the top half of its FP32
// value, so the shift is exact (what __bfloat162float does)
__device__ __forceinline__ void unpack_bf16x8(float* out, uint4 bits) {
    const uint32_t words[4] = {bits.x, bits.y, bits.z, bits.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        out[2 * i] = __uint_as_float(words[i] << 16);
        out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
}
#endif
