/*
Fused softmax + cross-entropy over the first V of Vp logit columns, in FP32, as train_int4's loss runs it:
    loss_r   = log Σ_v exp(x_rv) − x_r,target                     (0 when target = −1)
    dlogit_rv = (softmax(x_r)_v − [v = target]) · scale           (0 in padding columns and when target = −1)
the gradient overwriting the logits in place. T is float (FP32 mode) or __nv_bfloat16 (BF16 and INT4 modes).

Compile: make dev/crossentropy
Run:     ./dev/crossentropy [version]   validate, then time 32768 rows x 50304 (GPT-2's padded vocab), bf16 and
                                        fp32, and x 20000 in fp32 (a row version 2 holds)
         ./dev/crossentropy --check     validate every version (PASS/FAIL lines), nothing timed

version 1: kernels/crossentropy.h (the trainer's): one block per row; a running (max, Σ exp) per thread over one
           read of the row, merged over the block; a second read writes the gradient
version 2: the row held in registers (Vp up to 53,248 BF16 or 26,624 FP32): one read, a block max, a block
           Σ exp, one write. Less traffic, yet slower on the H200 (dev/results/bench_attention_crossentropy_h200.log:
           4.02 vs 3.29 ms at 32768 x 50304 BF16; inside d12 training 4.70 ms per step against version 1's
           3.97, profile_d12_bf16_877d4e4_h200.log vs profile_d12_bf16_h200.log). Not profiled; likely causes:
           128 registers per thread allow one 512-thread block per SM, and version 1's second read of a row
           it has just read may be served from L2
*/
#include <math.h>
#include <string.h>
#include <type_traits>
#include <vector>
#include "../kernels/common.h"
#include "../kernels/crossentropy.h"
#include "../kernels/rng.h"
#include "timing.h"

#define SEED 1337u
#define N_VERSIONS 2

// ----------------------------------------------------------------------------------------------------------------
// CPU reference in double from the same (BF16-rounded where T is bf16) logits

static void crossentropy_cpu(std::vector<double>* losses, std::vector<double>* grads, const std::vector<float>& x,
                             const std::vector<int>& targets, int rows, int V, int Vp, double scale) {
    losses->assign(rows, 0.0);
    grads->assign((size_t)rows * Vp, 0.0);
    for (int r = 0; r < rows; r++) {
        const float* row = &x[(size_t)r * Vp];
        int target = targets[r];
        if (target < 0) continue;
        double maxval = -INFINITY, sum = 0.0;
        for (int v = 0; v < V; v++) maxval = fmax(maxval, row[v]);
        for (int v = 0; v < V; v++) sum += exp(row[v] - maxval);
        (*losses)[r] = log(sum) + maxval - row[target];
        for (int v = 0; v < V; v++) (*grads)[(size_t)r * Vp + v] = (exp(row[v] - maxval) / sum - (v == target)) * scale;
    }
}

// ----------------------------------------------------------------------------------------------------------------
// the versions on the GPU

#define CROSSENTROPY_THREADS 512
// 16-byte vectors per thread: rows up to 53,248 BF16 or 26,624 FP32 logits, which holds GPT-2's padded
// vocabulary (50,304) in BF16 within the 128 registers a thread of a 512-thread block may use (16 spills)
#define CROSSENTROPY_PACKS 13

// max (or sum) over the block, in every thread: warp results, then the warp totals in warp order
template <bool MAX> __device__ __forceinline__ float crossentropy_block_reduce(float v, float* shared) {
    for (int offset = 16; offset > 0; offset /= 2) {
        float other = __shfl_xor_sync(0xffffffff, v, offset);
        v = MAX ? fmaxf(v, other) : v + other;
    }
    __syncthreads();  // an earlier reduction's readers are done with `shared`
    if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
    __syncthreads();
    v = shared[0];
    for (int w = 1; w < CROSSENTROPY_THREADS / 32; w++) v = MAX ? fmaxf(v, shared[w]) : v + shared[w];
    return v;
}

// Version 2, the row in registers (16-byte aligned rows that fit): one block per row, thread t holds the
// 16-byte vectors t, t + 512, ... of the row; a block max, a block sum of exp(x − max), then the gradient
// written from the registers: the row is read once and written once.
template <typename T>
__global__ void __launch_bounds__(CROSSENTROPY_THREADS) crossentropy_in_registers_kernel(T* logits, float* losses,
                                                                                        const int* targets, int V,
                                                                                        int Vp, float grad_scale) {
    constexpr int P = Packed<T>::size;
    __shared__ float shared[CROSSENTROPY_THREADS / 32];
    T* x = logits + (long)blockIdx.x * Vp;
    int target = targets[blockIdx.x];
    float target_logit = threadIdx.x == 0 && target >= 0 ? to_float(x[target]) : 0.0f;
    Packed<T> row[CROSSENTROPY_PACKS];
    float maxval = -INFINITY;
#pragma unroll
    for (int k = 0; k < CROSSENTROPY_PACKS; k++) {
        int i = (k * CROSSENTROPY_THREADS + threadIdx.x) * P;
        if (i < Vp) row[k] = Packed<T>::load(x + i);
#pragma unroll
        for (int j = 0; j < P; j++)
            if (i + j < V) maxval = fmaxf(maxval, to_float(row[k].values[j]));
    }
    maxval = crossentropy_block_reduce<true>(maxval, shared);
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < CROSSENTROPY_PACKS; k++) {
        int i = (k * CROSSENTROPY_THREADS + threadIdx.x) * P;
#pragma unroll
        for (int j = 0; j < P; j++)
            if (i + j < V) sum += expf(to_float(row[k].values[j]) - maxval);
    }
    sum = crossentropy_block_reduce<false>(sum, shared);
    if (threadIdx.x == 0) losses[blockIdx.x] = target >= 0 ? logf(sum) + maxval - target_logit : 0.0f;
    if (grad_scale == 0.0f) return;
    float scale = grad_scale / sum;
#pragma unroll
    for (int k = 0; k < CROSSENTROPY_PACKS; k++) {
        int i = (k * CROSSENTROPY_THREADS + threadIdx.x) * P;
        if (i >= Vp) continue;
#pragma unroll
        for (int j = 0; j < P; j++) {
            int v = i + j;
            float g = 0.0f;
            if (v < V && target >= 0) g = expf(to_float(row[k].values[j]) - maxval) * scale - (v == target ? grad_scale : 0.0f);
            row[k].values[j] = from_float<T>(g);
        }
        row[k].store(x + i);
    }
}

// whether version 2 takes these rows: 16-byte rows (cudaMalloc's pointers are 256-byte aligned) that fit
template <typename T> static bool version_fits(int version, int Vp) {
    return version == 1 || ((Vp * sizeof(T)) % 16 == 0 && Vp <= CROSSENTROPY_PACKS * CROSSENTROPY_THREADS * Packed<T>::size);
}

template <typename T>
static void run_version(int version, T* logits, float* losses, const int* targets, int rows, int V, int Vp, float scale) {
    if (version == 1) {
        bool vectorized = aligned16(logits) && (Vp * sizeof(T)) % 16 == 0;
        crossentropy_forward_backward_kernel<<<rows, 512>>>(logits, losses, targets, V, Vp, scale, vectorized);
    } else {
        crossentropy_in_registers_kernel<<<rows, CROSSENTROPY_THREADS>>>(logits, losses, targets, V, Vp, scale);
    }
    cudaCheck(cudaGetLastError());
}

// the logits (as T), per-row losses and targets on the device
template <typename T> struct DeviceRows {
    T* logits;
    float* losses;
    int* targets;
    DeviceRows(const std::vector<float>& x, const std::vector<int>& t) {
        std::vector<T> host(x.size());
        for (size_t i = 0; i < x.size(); i++) host[i] = host_from_float<T>(x[i]);
        cudaCheck(cudaMalloc(&logits, host.size() * sizeof(T)));
        cudaCheck(cudaMalloc(&losses, t.size() * sizeof(float)));
        cudaCheck(cudaMalloc(&targets, t.size() * sizeof(int)));
        cudaCheck(cudaMemcpy(logits, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(targets, t.data(), t.size() * sizeof(int), cudaMemcpyHostToDevice));
    }
    ~DeviceRows() {
        cudaCheck(cudaFree(logits));
        cudaCheck(cudaFree(losses));
        cudaCheck(cudaFree(targets));
    }
};

// ----------------------------------------------------------------------------------------------------------------
// validation

// logits ~ 3·N(0, 1) (a spread like a trained LM head's), rounded to T; every 7th row's target is −1
template <typename T>
static void make_inputs(std::vector<float>* x, std::vector<int>* targets, int rows, int V, int Vp) {
    x->assign((size_t)rows * Vp, 0.0f);
    targets->resize(rows);
    for (int r = 0; r < rows; r++) {
        for (int v = 0; v < Vp; v++) {
            float value = v < V ? 3.0f * rng_normal(rng_key(SEED, 1), (uint32_t)((size_t)r * Vp + v)) : 1e4f;  // padding: large, must be ignored
            (*x)[(size_t)r * Vp + v] = (float)host_from_float<T>(value);
        }
        (*targets)[r] = r % 7 == 3 ? -1 : (int)(rng_hash(SEED, 2, (uint32_t)r) % V);
    }
}

// Tolerances. Losses: FP32 sums of V terms in an order unlike the CPU's, relative error ≲ V·2^-24 in the sum
// (≤ 3e-3 for V = 50257 in the worst case, ~1e-5 typically), so |Δloss| ≤ 1e-4 + 1e-5·loss is generous for an
// honest kernel and far below a wrong max or a dropped column. Gradients: FP32 math then rounding to T (bf16:
// 2^-9 relative), so |Δg| ≤ 2^-8·|g| + 1e-6·scale; a wrong target, scale or padding column misses by far more.
template <typename T>
static bool check_version(int version, int rows, int V, int Vp) {
    const char* type = std::is_same<T, float>::value ? "fp32" : "bf16";
    if (!version_fits<T>(version, Vp)) {
        printf("SKIP crossentropy version %d %s %d x %d: the row does not fit (16-byte rows of at most 53,248 BF16 / 26,624 FP32 values; version 1 runs it)\n",
               version, type, rows, Vp);
        return true;
    }
    std::vector<float> x;
    std::vector<int> targets;
    make_inputs<T>(&x, &targets, rows, V, Vp);
    float scale = 1.0f / rows;
    std::vector<double> losses_cpu, grads_cpu;
    crossentropy_cpu(&losses_cpu, &grads_cpu, x, targets, rows, V, Vp, scale);
    std::vector<float> losses_gpu(rows);
    std::vector<T> host(x.size());
    {
        DeviceRows<T> d(x, targets);
        run_version(version, d.logits, d.losses, d.targets, rows, V, Vp, scale);
        cudaCheck(cudaMemcpy(losses_gpu.data(), d.losses, rows * sizeof(float), cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemcpy(host.data(), d.logits, host.size() * sizeof(T), cudaMemcpyDeviceToHost));
    }
    double worst_loss = 0.0, worst_grad = 0.0;  // largest |error| / tolerance
    for (int r = 0; r < rows; r++) {
        double tolerance = 1e-4 + 1e-5 * fabs(losses_cpu[r]);
        worst_loss = fmax(worst_loss, fabs(losses_gpu[r] - losses_cpu[r]) / tolerance);
        if (!(losses_gpu[r] == losses_gpu[r])) worst_loss = INFINITY;  // NaN
    }
    for (size_t i = 0; i < host.size(); i++) {
        double g = (double)(float)host[i], tolerance = ldexp(fabs(grads_cpu[i]), -8) + 1e-6 * scale;
        double ratio = fabs(g - grads_cpu[i]) / tolerance;
        worst_grad = ratio == ratio ? fmax(worst_grad, ratio) : INFINITY;
    }
    bool ok = worst_loss <= 1.0 && worst_grad <= 1.0;
    printf("%s crossentropy version %d %s %d rows x V %d (Vp %d): max |error| / tolerance: loss %.3f, gradient %.3f\n",
           ok ? "PASS" : "FAIL", version, type, rows, V, Vp, worst_loss, worst_grad);
    return ok;
}

// GPT-2's vocabulary, a small one not a multiple of the vector width, and one too long for the registers
static bool check_all(int first, int last) {
    bool ok = true;
    for (int version = first; version <= last; version++) {
        ok = check_version<__nv_bfloat16>(version, 64, 50257, 50304) && ok;
        ok = check_version<float>(version, 64, 50257, 50304) && ok;
        ok = check_version<float>(version, 64, 20000, 20000) && ok;
        ok = check_version<__nv_bfloat16>(version, 37, 259, 384) && ok;
        ok = check_version<float>(version, 37, 100, 101) && ok;
        ok = check_version<__nv_bfloat16>(version, 8, 70000, 70016) && ok;
    }
    return ok;
}

// ----------------------------------------------------------------------------------------------------------------
// benchmark: the logits are overwritten by their gradients each launch, which keeps them in range

template <typename T>
static void benchmark(int version, int rows, int V, int Vp) {
    if (!version_fits<T>(version, Vp)) return;
    std::vector<float> x;
    std::vector<int> targets;
    make_inputs<T>(&x, &targets, rows, V, Vp);
    DeviceRows<T> d(x, targets);
    float ms = mean_launch_ms([&](int) { run_version(version, d.logits, d.losses, d.targets, rows, V, Vp, 1.0f / rows); }, 2, 10);
    double bytes = 2.0 * rows * Vp * sizeof(T);  // the least any version moves: the row read once and written once
    printf("version %d %s %d x %d | %7.3f ms | %6.0f GB/s counting one read and one write\n", version,
           std::is_same<T, float>::value ? "fp32" : "bf16", rows, Vp, ms, bytes / ms / 1e6);
}

int main(int argc, char** argv) {
    if (argc > 1 && !strcmp(argv[1], "--check")) return check_all(1, N_VERSIONS) ? EXIT_SUCCESS : EXIT_FAILURE;
    int first, last;
    if (!dev_versions(argc, argv, N_VERSIONS, &first, &last)) return EXIT_FAILURE;
    if (!check_all(first, last)) return EXIT_FAILURE;
    for (int version = first; version <= last; version++) {
        benchmark<__nv_bfloat16>(version, 32768, 50257, 50304);
        benchmark<float>(version, 32768, 50257, 50304);
        benchmark<float>(version, 32768, 20000, 20000);
    }
    return EXIT_SUCCESS;
}
