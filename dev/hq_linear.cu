/*
The whole quantized linear layer as train_int4 runs it (kernels/quant_linear.h), against cuBLASLt BF16 on the
same shapes: the numbers behind "where does INT4 time go" at the layer level.
  HQ-MM forward:  y = |s_x|·|s_w| · q(x·H)·q(w·H)ᵀ + b   (x: N x K, w: M x K, y: N x M; codes on the s8 tensor cores)
  BS+LSS backward: dX (bit split per row, GEMM over M), dW (leverage-score-sampled rows at keep ratio 0.5,
                   bit split per tensor, GEMM over the kept tokens), db, and the two LSQ step gradients
The weights are quantized once per optimizer step in a fused trainer, so their Hadamard-quantize pass is timed
on its own and subtracted from the forward ("fwd - wq").

Compile: make dev/hq_linear
Run:     ./dev/hq_linear            validate (five shapes, FP32 and BF16) against the CPU reference, then time the issue's shapes
         ./dev/hq_linear --check    the validation only, one PASS/FAIL line per tensor
         ./dev/hq_linear N M K      one shape

There is one version here, the layer the trainer calls; its pieces have their own numbered variants:
dev/hadamard_quantize.cu (the transform + quantizer), dev/int4_gemm.cu (the GEMM on packed INT4),
dev/bitsplit_lss.cu (the bit split and LSS with on-device water-filling).
*/
#include <string.h>
#include <algorithm>
#include <initializer_list>
#include <type_traits>
#include <vector>
#include "../kernels/common.h"
#include "../kernels/rng.h"
#include "../kernels/int4_reference.h"
#include "../kernels/quant_linear.h"
#include "timing.h"

#define HADAMARD_BLOCK 32
#define KEEP_RATIO 0.5f
#define SEED 1337u
#define REPEATS 20

// x and dy ~ N(0, 1) with 1% of the input's columns scaled by 20 (outlier channels, as activations have);
// w ~ N(0, 0.02)
static void fill_inputs(std::vector<float>* x, std::vector<float>* w, std::vector<float>* b, std::vector<float>* dy,
                        int N, int M, int K) {
    x->resize((size_t)N * K);
    w->resize((size_t)M * K);
    b->resize(M);
    dy->resize((size_t)N * M);
    uint32_t kx = rng_key(SEED, 1), kw = rng_key(SEED, 2), kb = rng_key(SEED, 3), kd = rng_key(SEED, 4);
    for (size_t i = 0; i < x->size(); i++) (*x)[i] = rng_normal(kx, (uint32_t)i) * ((i % K) % 100 == 7 ? 20.0f : 1.0f);
    for (size_t i = 0; i < w->size(); i++) (*w)[i] = rng_normal(kw, (uint32_t)i) * 0.02f;
    for (int i = 0; i < M; i++) (*b)[i] = rng_normal(kb, (uint32_t)i) * 0.02f;
    for (size_t i = 0; i < dy->size(); i++) (*dy)[i] = rng_normal(kd, (uint32_t)i) * 1e-3f;
}

template <typename T> static T* upload(const std::vector<float>& host) {
    std::vector<T> converted(host.size());
    for (size_t i = 0; i < host.size(); i++) converted[i] = (T)host[i];
    T* device;
    cudaCheck(cudaMalloc(&device, host.size() * sizeof(T)));
    cudaCheck(cudaMemcpy(device, converted.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    return device;
}

// a device tensor of T as floats
template <typename T> static std::vector<float> download(const T* device, size_t n) {
    std::vector<T> host(n);
    cudaCheck(cudaMemcpy(host.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost));
    return std::vector<float>(host.begin(), host.end());
}

static size_t count_differences(const std::vector<float>& a, const std::vector<float>& b) {
    size_t n = 0;
    for (size_t i = 0; i < a.size(); i++) n += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return n;
}

// The layer on the GPU with T tensors vs lss_linear_backward_cpu / hq_linear_forward_cpu on the same values
// (BF16 inputs widened to FP32): the same scalar functions in the same FP32 order, so every output is equal bit
// for bit — y and dX after rounding the CPU's FP32 result to T, dW in FP32. (The one place the GPU rounds
// differently is the LSS score, FP64 sums in another order; a keep decision flips only if u lands within an ulp
// of p, ~N·2^-24 = 6e-5 for these shapes.)
template <typename T> static bool check_shape(int N, int M, int K, int g) {
    const char* type = std::is_same<T, float>::value ? "fp32" : "bf16";
    std::vector<float> x, w, b, dy;
    fill_inputs(&x, &w, &b, &dy, N, M, K);
    std::fill(dy.begin() + 3 * (size_t)M, dy.begin() + 4 * (size_t)M, 0.0f);  // a zero row: scale 0, score 0, p = 0
    for (std::vector<float>* v : {&x, &w, &b, &dy}) {
        for (float& f : *v) f = (float)host_from_float<T>(f);
    }
    std::vector<float> xt((size_t)N * K), wt((size_t)M * K), y_ref((size_t)N * M);
    std::vector<int8_t> xc((size_t)N * K), wc((size_t)M * K);
    hadamard_rows_cpu(x.data(), xt.data(), N, K, g);
    hadamard_rows_cpu(w.data(), wt.data(), M, K, g);
    float steps[2] = {lsq_init_step_cpu(xt.data(), xt.size()), lsq_init_step_cpu(wt.data(), wt.size())};
    hq_linear_forward_cpu(x.data(), w.data(), b.data(), N, M, K, g, steps[0], steps[1], xt.data(), wt.data(),
                          xc.data(), wc.data(), y_ref.data());
    std::vector<float> dx_ref((size_t)N * K), dw_ref((size_t)M * K), db_ref(M), dsteps_ref(2);
    lss_linear_backward_cpu(dy.data(), xt.data(), wt.data(), xc.data(), wc.data(), N, M, K, g, steps[0], steps[1],
                            KEEP_RATIO, SEED, 0, 0, dx_ref.data(), dw_ref.data(), db_ref.data(), &dsteps_ref[0],
                            &dsteps_ref[1]);
    for (std::vector<float>* v : {&y_ref, &dx_ref}) {
        for (float& f : *v) f = (float)host_from_float<T>(f);
    }
    T *d_x = upload<T>(x), *d_w = upload<T>(w), *d_b = upload<T>(b), *d_dy = upload<T>(dy), *d_y, *d_dx;
    float *d_steps = upload<float>(std::vector<float>(steps, steps + 2)), *d_dw, *d_db, *d_dsteps, *d_reduce;
    float* d_lss_stats;
    cudaCheck(cudaMalloc(&d_lss_stats, 2 * sizeof(float)));
    cudaCheck(cudaMalloc(&d_y, (size_t)N * M * sizeof(T)));
    cudaCheck(cudaMalloc(&d_dx, (size_t)N * K * sizeof(T)));
    cudaCheck(cudaMalloc(&d_dw, (size_t)M * K * sizeof(float)));
    cudaCheck(cudaMalloc(&d_db, M * sizeof(float)));
    cudaCheck(cudaMalloc(&d_dsteps, 2 * sizeof(float)));
    cudaCheck(cudaMalloc(&d_reduce, CEIL_DIV(N, 256) * (size_t)M * sizeof(float)));
    cudaCheck(cudaMemset(d_dw, 0, (size_t)M * K * sizeof(float)));
    cudaCheck(cudaMemset(d_db, 0, M * sizeof(float)));
    cudaCheck(cudaMemset(d_dsteps, 0, 2 * sizeof(float)));
    QuantScratch scratch;
    quant_scratch_alloc(&scratch, N, std::max(M, K));
    quant_linear_forward(d_y, d_x, d_w, d_b, N, K, M, g, d_steps, d_steps + 1, scratch, 0);
    quant_linear_backward(d_dx, d_dw, d_db, d_dsteps, d_dsteps + 1, d_dy, d_x, d_w, N, K, M, g, d_steps, d_steps + 1,
                          KEEP_RATIO, SEED, 0, 0, d_lss_stats, scratch, d_reduce, 0);
    struct { const char* name; std::vector<float> got; const std::vector<float>* reference; } exact[] = {
        {"y", download(d_y, y_ref.size()), &y_ref}, {"dX", download(d_dx, dx_ref.size()), &dx_ref},
        {"dW", download(d_dw, dw_ref.size()), &dw_ref}};
    bool ok = true;
    for (auto& o : exact) {
        size_t bad = count_differences(o.got, *o.reference);
        printf("%s hq_linear %s %s (%d x %d x %d, g=%d, rho=%.1f): %zu of %zu differ from the CPU reference\n",
               bad == 0 ? "PASS" : "FAIL", type, o.name, N, M, K, g, KEEP_RATIO, bad, o.reference->size());
        ok = ok && bad == 0;
    }
    // the bias and step gradients are sums of N (or N·K) terms, in FP32 partials on the GPU and in double on
    // the CPU: they differ by FP32 summation rounding, ~1e-7 of the summands' size per add; judged against the
    // largest |value| of the tensor (a column sum that cancels to ~0 has no meaningful relative error): 1e-5
    struct { const char* name; const float* device; const std::vector<float>* reference; } summed[] = {
        {"db", d_db, &db_ref}, {"step gradients", d_dsteps, &dsteps_ref}};
    for (auto& o : summed) {
        std::vector<float> got = download(o.device, o.reference->size());
        float worst = 0.0f, scale = 1e-30f;
        for (size_t i = 0; i < got.size(); i++) {
            worst = fmaxf(worst, fabsf(got[i] - (*o.reference)[i]));
            scale = fmaxf(scale, fabsf((*o.reference)[i]));
        }
        worst /= scale;
        printf("%s hq_linear %s %s (%d x %d x %d, g=%d): max difference %.1e of the largest |value| (tolerance 1e-5: "
               "FP32 vs double sums)\n", worst <= 1e-5f ? "PASS" : "FAIL", type, o.name, N, M, K, g, worst);
        ok = ok && worst <= 1e-5f;
    }
    quant_scratch_free(&scratch);
    for (void* p : std::initializer_list<void*>{d_x, d_w, d_b, d_dy, d_y, d_dx, d_steps, d_dw, d_db, d_dsteps, d_reduce,
                                                d_lss_stats}) {
        cudaCheck(cudaFree(p));
    }
    return ok;
}

// FP32 and BF16 tensors; shapes with N not a multiple of 16 (the ∇W GEMM's padding) or of a block, M a
// multiple of 8 only, K of the Hadamard block only, and every block size. The last three have whole 128 x 128
// ∇W tiles, so where its sm_90a code runs the ∇W GEMM goes over the kept rows only (kernels/s8_wgmma_gemm.h),
// split 4, 4 and 8 ways (few tiles; test_int4 checks the unsplit path on its own)
static bool run_checks() {
    const int shapes[][4] = {{256, 192, 128, 32}, {1000, 136, 96, 32}, {300, 64, 256, 16}, {300, 64, 256, 64},
                             {300, 64, 256, 128}, {1000, 256, 128, 32}, {1000, 256, 384, 64}, {2000, 1024, 256, 32}};
    bool ok = true;
    for (auto& sh : shapes) ok = check_shape<float>(sh[0], sh[1], sh[2], sh[3]) && ok;
    for (auto& sh : shapes) ok = check_shape<__nv_bfloat16>(sh[0], sh[1], sh[2], sh[3]) && ok;
    return ok;
}

// mean milliseconds of `op` over REPEATS runs after one warm-up
template <typename F> static float time_ms(F op) {
    return mean_launch_ms([&](int) { op(); }, 1, REPEATS);
}

static void benchmark_shape(int N, int M, int K) {
    typedef __nv_bfloat16 bf16;
    std::vector<float> x, w, b, dy;
    fill_inputs(&x, &w, &b, &dy, N, M, K);
    bf16 *d_x = upload<bf16>(x), *d_w = upload<bf16>(w), *d_b = upload<bf16>(b), *d_dy = upload<bf16>(dy), *d_y, *d_dx;
    float steps[2] = {0.5f, 0.004f};  // about what LSQ's init gives these inputs
    float *d_steps = upload<float>(std::vector<float>(steps, steps + 2)), *d_dw, *d_db, *d_dsteps, *d_reduce, *d_lss_stats;
    cudaCheck(cudaMalloc(&d_lss_stats, 2 * sizeof(float)));
    cudaCheck(cudaMalloc(&d_y, (size_t)N * M * sizeof(bf16)));
    cudaCheck(cudaMalloc(&d_dx, (size_t)N * K * sizeof(bf16)));
    cudaCheck(cudaMalloc(&d_dw, (size_t)M * K * sizeof(float)));
    cudaCheck(cudaMalloc(&d_db, M * sizeof(float)));
    cudaCheck(cudaMalloc(&d_dsteps, 2 * sizeof(float)));
    cudaCheck(cudaMalloc(&d_reduce, CEIL_DIV(N, 256) * (size_t)M * sizeof(float)));
    QuantScratch s;
    quant_scratch_alloc(&s, N, std::max(M, K));
    double flops = 2.0 * N * M * K;
    float bf16_fwd = time_ms([&] { matmul_forward(d_y, d_x, d_w, d_b, N, K, M); });
    float bf16_bwd = time_ms([&] { matmul_backward(d_dx, d_dw, d_db, d_dy, d_x, d_w, N, K, M, d_reduce); });
    float int8_gemm = time_ms([&] { int8_matmul_tn(s.acc, s.codes_w, s.codes_x, M, N, K, 0); });
    float weight_quant = time_ms([&] { hadamard_quantize(s.codes_w, (int8_t*)nullptr, d_w, M, K, HADAMARD_BLOCK, d_steps + 1, 0); });
    auto int4_forward = [&] { quant_linear_forward(d_y, d_x, d_w, d_b, N, K, M, HADAMARD_BLOCK, d_steps, d_steps + 1, s, 0); };
    float int4_fwd = time_ms(int4_forward);
    // where the forward GEMM dequantizes in its epilogue (sm_90a), the path it replaced too: cuBLASLt's INT32 GEMM,
    // then the dequantize pass
    s.wgmma = false;
    float int4_fwd_unfused = time_ms(int4_forward);
    s.wgmma = hopper_wgmma_available();
    float int4_bwd = time_ms([&] {
        quant_linear_backward(d_dx, d_dw, d_db, d_dsteps, d_dsteps + 1, d_dy, d_x, d_w, N, K, M, HADAMARD_BLOCK, d_steps,
                              d_steps + 1, KEEP_RATIO, SEED, 0, 0, d_lss_stats, s, d_reduce, 0);
    });
    float fwd_no_wq = int4_fwd - weight_quant;
    printf("%6d x %5d x %5d | bf16 fwd %7.3f ms %5.0f TF/s, bwd %7.3f ms | int8 GEMM %7.3f ms %5.0f TOP/s | "
           "int4 wq %6.3f ms, fwd - wq %7.3f ms (%.2fx bf16; unfused %7.3f ms), bwd %7.3f ms (%.2fx bf16) | "
           "fwd+bwd %.2fx bf16\n",
           N, M, K, bf16_fwd, flops / bf16_fwd * 1e-9, bf16_bwd, int8_gemm, flops / int8_gemm * 1e-9, weight_quant,
           fwd_no_wq, bf16_fwd / fwd_no_wq, int4_fwd_unfused - weight_quant, int4_bwd, bf16_bwd / int4_bwd,
           (bf16_fwd + bf16_bwd) / (fwd_no_wq + int4_bwd));
    // the ∇W GEMM alone on the operands the last backward left (its kept rows, n_kept of them): BF16 over all N
    // rows, the s8 GEMM over all rows padded (cuBLASLt), over the kept rows only (kernels/s8_wgmma_gemm.h)
    int n_padded = CEIL_DIV(N, 16) * 16, n_kept;
    cudaCheck(cudaMemcpy(&n_kept, s.n_kept, sizeof(int), cudaMemcpyDeviceToHost));
    float bf16_dw = time_ms([&] { matmul_backward_weight(d_dw, (float*)nullptr, d_dy, d_x, N, K, M, d_reduce); });
    float int8_dw_all = time_ms([&] { int8_matmul_tn(s.acc, s.codes_x_t, s.operand_t, K, M, n_padded, 0); });
    if (s.wgmma && kept_rows_gemm_fits(M, K, n_padded)) {
        int splits = kept_rows_gemm_splits((M / S8_TILE) * (K / S8_TILE), s.sms,
                                           (int)ceilf(KEEP_RATIO * n_padded / S8_TILE));
        float int8_dw_kept = time_ms([&] {
            kept_rows_gemm(s.acc, s.operand_t, s.codes_x_t, M, K, n_padded, s.n_kept, splits, 0);
        });
        printf("%27s dW GEMM: bf16 %7.3f ms | s8 all %d rows %7.3f ms (%.2fx bf16) | s8 kept %d rows, %d split%s "
               "%7.3f ms (%.2fx bf16, %.0f TOP/s on the kept rows)\n", "", bf16_dw, n_padded, int8_dw_all,
               bf16_dw / int8_dw_all, n_kept, splits, splits > 1 ? "s" : "", int8_dw_kept, bf16_dw / int8_dw_kept,
               2.0 * M * K * n_kept / int8_dw_kept * 1e-9);
    } else {
        printf("%27s dW GEMM: bf16 %7.3f ms | s8 all %d rows %7.3f ms (%.2fx bf16) | s8 kept rows: not here (needs "
               "sm_90a and 128 x 128 tiles)\n", "", bf16_dw, n_padded, int8_dw_all, bf16_dw / int8_dw_all);
    }
    quant_scratch_free(&s);
    for (void* p : {(void*)d_x, (void*)d_w, (void*)d_b, (void*)d_dy, (void*)d_y, (void*)d_dx, (void*)d_steps,
                    (void*)d_dw, (void*)d_db, (void*)d_dsteps, (void*)d_reduce, (void*)d_lss_stats}) {
        cudaCheck(cudaFree(p));
    }
}

int main(int argc, char** argv) {
    matmul_setup();
    bool check_only = argc > 1 && !strcmp(argv[1], "--check");
    bool ok = run_checks();
    if (check_only || !ok) { matmul_teardown(); return ok ? EXIT_SUCCESS : EXIT_FAILURE; }
    int shapes[][3] = {{16384, 768, 768}, {16384, 2304, 768}, {16384, 3072, 768}, {16384, 768, 3072},
                       {16384, 4096, 4096}, {16384, 16384, 4096}};
    if (argc == 4) {
        shapes[0][0] = atoi(argv[1]);
        shapes[0][1] = atoi(argv[2]);
        shapes[0][2] = atoi(argv[3]);
        if (shapes[0][0] <= 0 || shapes[0][1] <= 0 || shapes[0][2] <= 0 || shapes[0][2] % HADAMARD_BLOCK) {
            fprintf(stderr, "error: N M K must be positive with K a multiple of %d\n", HADAMARD_BLOCK);
            return EXIT_FAILURE;
        }
    }
    printf("hq_linear: the trainer's INT4 layer (g=%d, rho=%.1f, BF16 tensors) vs cuBLASLt BF16; mean of %d runs\n",
           HADAMARD_BLOCK, KEEP_RATIO, REPEATS);
    for (int i = 0; i < (argc == 4 ? 1 : 6); i++) benchmark_shape(shapes[i][0], shapes[i][1], shapes[i][2]);
    matmul_teardown();
    return EXIT_SUCCESS;
}
