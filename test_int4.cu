/*
test_int4: checks train_int4 against the PyTorch reference dump (scripts/reference.py --dump), like llm.c's
test_gpt2.cu. Each check prints one line, PASS / FAIL / SKIP, with its largest difference; the exit code is
non-zero if any check failed. Checks that need a GPU print SKIP (with the reason) on a machine without one.

    make test_int4 ref/dump.bin && ./test_int4 ref/dump.bin
*/
#define TESTING
#include "train_int4.cu"
#include <stdarg.h>
#include "kernels/int4_reference.h"
#include "kernels/mlm.h"
#include "kernels/classification_data.h"
#include "kernels/qstats.h"
#include "kernels/reference_dump.h"

// ----------------------------------------------------------------------------------------------------------
// reporting

static int checks_passed = 0, checks_failed = 0, checks_skipped = 0;

static void check(bool ok, const char* name, const char* detail_format, ...) {
    char detail[512];
    va_list args;
    va_start(args, detail_format);
    vsnprintf(detail, sizeof detail, detail_format, args);
    va_end(args);
    printf("%s %s: %s\n", ok ? "PASS" : "FAIL", name, detail);
    (ok ? checks_passed : checks_failed)++;
}

static void skip(const char* name, const char* why) {
    printf("SKIP %s: %s\n", name, why);
    checks_skipped++;
}

// number of positions where two arrays differ in value (for floats: -0 == +0, NaN never equal)
template <typename A, typename B> static size_t count_mismatches(const A* a, const B* b, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) { bad += !(a[i] == b[i]); }
    return bad;
}

// number of positions where two float arrays differ in any bit
static size_t count_bit_mismatches(const float* a, const float* b, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) { bad += memcmp(&a[i], &b[i], 4) != 0; }
    return bad;
}

static float max_rel_diff(const float* a, const float* b, size_t n) {
    float worst = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float scale = fmaxf(fabsf(a[i]), fabsf(b[i]));
        if (scale > 0.0f) worst = fmaxf(worst, fabsf(a[i] - b[i]) / scale);
    }
    return worst;
}

// ----------------------------------------------------------------------------------------------------------
// the shared hash: C (host and device) and PyTorch agree on every value

static void rng_check_inputs(uint32_t i, uint32_t* seed, uint32_t* stream, uint32_t* index) {
    // the triples scripts/reference.py rng_check_inputs() draws
    *seed = 1234u + i % 3u;
    *stream = i >> 10;
    *index = (uint32_t)((uint64_t)i * 2654435761ull);
}

static void test_rng_host(const ReferenceDump& dump) {
    const DumpRecord* hashes = dump.find("rng/hash");
    const DumpRecord* uniforms = dump.find("rng/uniform");
    if (!hashes || !uniforms || hashes->numel() != uniforms->numel()) {
        check(false, "rng host", "records rng/hash and rng/uniform missing or of different sizes");
        return;
    }
    size_t n = hashes->numel(), bad_hash = 0, bad_uniform = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t seed, stream, index;
        rng_check_inputs(i, &seed, &stream, &index);
        uint32_t h = rng_hash(seed, stream, index);
        float u = rng_uniform_from_bits(h);
        bad_hash += h != hashes->as<uint32_t>()[i];
        bad_uniform += memcmp(&u, &uniforms->as<float>()[i], 4) != 0;
    }
    check(bad_hash == 0 && bad_uniform == 0 && n >= 1000000, "rng host == pytorch",
          "%zu values, %zu hash and %zu uniform mismatches", n, bad_hash, bad_uniform);
}

__global__ void rng_check_kernel(uint32_t* out, uint32_t n) {
    uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    uint32_t seed, stream, index;
    seed = 1234u + i % 3u;
    stream = i >> 10;
    index = i * 2654435761u;
    out[i] = rng_hash(seed, stream, index);
}

static void test_rng_device(const ReferenceDump& dump, bool have_gpu) {
    if (!have_gpu) { skip("rng device == pytorch", "no CUDA device"); return; }
    const DumpRecord* hashes = dump.find("rng/hash");
    if (!hashes) { check(false, "rng device == pytorch", "record rng/hash missing"); return; }
    uint32_t n = (uint32_t)hashes->numel();
    uint32_t* d_out;
    std::vector<uint32_t> out(n);
    cudaCheck(cudaMalloc(&d_out, n * sizeof(uint32_t)));
    rng_check_kernel<<<CEIL_DIV(n, 256), 256>>>(d_out, n);
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaMemcpy(out.data(), d_out, n * sizeof(uint32_t), cudaMemcpyDeviceToHost));
    cudaCheck(cudaFree(d_out));
    size_t bad = count_mismatches(out.data(), hashes->as<uint32_t>(), n);
    check(bad == 0, "rng device == pytorch", "%u values, %zu mismatches", n, bad);
}

// the bit split's carry (kernels/int4_math.h): x = 7 with the largest uniform, 1 - 2^-24, makes floor(7 + u) = 8
// in FP32; the halves must stay INT4 (high 1, low -6) with the operand unchanged (8), as reference.py splits it
static void test_bitsplit_carry_host() {
    int high = 0, low = 0;
    int operand = bitsplit_value(7.0f, 1.0f, 1.0f - 0x1p-24f, &high, &low);
    check(operand == 8 && high == 1 && low == -6, "bit split carry at low = 8 (host)",
          "x = 7, u = 1-2^-24: operand %d, high %d, low %d (expected 8, 1, -6)", operand, high, low);
}

// ----------------------------------------------------------------------------------------------------------
// layer 0's quantizer intermediates (the QKV linear at micro-step 0), recomputed on the host from the dump's
// inputs with kernels/int4_reference.h: integer outputs must be identical, floats bit-identical where the
// operations are the same FP32 ops in the same order

static void test_layer0_quantizers_host(const ReferenceDump& dump) {
    const int B = dump.header[9], T = dump.header[10], C = dump.header[8], g = dump.header[12], L = dump.header[6];
    const int N = B * T, K = C, M = 3 * C;
    const uint32_t seed = (uint32_t)dump.header[11];
    const float keep_ratio = dump.header_float(13);
    const DumpRecord* x = dump_require(dump, "int4/l0/x", DUMP_F32, (size_t)N * K);
    const DumpRecord* qkvw = dump_require(dump, "param/qkvw", DUMP_F32, (size_t)L * M * K);
    const DumpRecord* steps = dump_require(dump, "int4/lsq_steps", DUMP_F32, (size_t)L * 4 * 2);
    const DumpRecord* x_tilde_ref = dump_require(dump, "int4/l0/x_tilde", DUMP_F32, (size_t)N * K);
    const DumpRecord* w_tilde_ref = dump_require(dump, "int4/l0/w_tilde", DUMP_F32, (size_t)M * K);
    const DumpRecord* x_codes_ref = dump_require(dump, "int4/l0/x_codes", DUMP_I8, (size_t)N * K);
    const DumpRecord* w_codes_ref = dump_require(dump, "int4/l0/w_codes", DUMP_I8, (size_t)M * K);
    const DumpRecord* x_packed_ref = dump_require(dump, "int4/l0/x_packed", DUMP_U8, (size_t)N * K / 2);
    const DumpRecord* dy = dump_require(dump, "int4/l0/dy", DUMP_F32, (size_t)N * M);
    const DumpRecord* dx_high_ref = dump_require(dump, "int4/l0/dx_high", DUMP_I8, (size_t)N * M);
    const DumpRecord* dx_low_ref = dump_require(dump, "int4/l0/dx_low", DUMP_I8, (size_t)N * M);
    const DumpRecord* dx_scale_ref = dump_require(dump, "int4/l0/dx_scale", DUMP_F32, (size_t)N);
    const DumpRecord* scores_ref = dump_require(dump, "int4/l0/lss_scores", DUMP_F32, (size_t)N);
    const DumpRecord* probs_ref = dump_require(dump, "int4/l0/lss_prob", DUMP_F32, (size_t)N);
    const DumpRecord* keep_ref = dump_require(dump, "int4/l0/lss_keep", DUMP_U8, (size_t)N);
    const DumpRecord* dw_high_ref = dump_require(dump, "int4/l0/dw_high", DUMP_I8, (size_t)N * M);
    const DumpRecord* dw_low_ref = dump_require(dump, "int4/l0/dw_low", DUMP_I8, (size_t)N * M);
    const DumpRecord* dw_scale_ref = dump_require(dump, "int4/l0/dw_scale", DUMP_F32, 1);
    if (!x || !qkvw || !steps || !x_tilde_ref || !w_tilde_ref || !x_codes_ref || !w_codes_ref || !x_packed_ref ||
        !dy || !dx_high_ref || !dx_low_ref || !dx_scale_ref || !scores_ref || !probs_ref || !keep_ref ||
        !dw_high_ref || !dw_low_ref || !dw_scale_ref) {
        check(false, "layer0 quantizers host", "dump records missing (see messages above)");
        return;
    }
    // forward: Hadamard transform, LSQ init, INT4 codes, packing
    std::vector<float> x_tilde((size_t)N * K), w_tilde((size_t)M * K);
    hadamard_rows_cpu(x->as<float>(), x_tilde.data(), N, K, g);
    hadamard_rows_cpu(qkvw->as<float>(), w_tilde.data(), M, K, g);
    check(count_bit_mismatches(x_tilde.data(), x_tilde_ref->as<float>(), x_tilde.size()) == 0,
          "l0 x_tilde bit-exact", "%zu of %zu differ", count_bit_mismatches(x_tilde.data(), x_tilde_ref->as<float>(), x_tilde.size()), x_tilde.size());
    check(count_bit_mismatches(w_tilde.data(), w_tilde_ref->as<float>(), w_tilde.size()) == 0,
          "l0 w_tilde bit-exact", "%zu of %zu differ", count_bit_mismatches(w_tilde.data(), w_tilde_ref->as<float>(), w_tilde.size()), w_tilde.size());
    float step_x = steps->as<float>()[0], step_w = steps->as<float>()[1];
    float init_x = lsq_init_step_cpu(x_tilde.data(), x_tilde.size());
    float init_w = lsq_init_step_cpu(w_tilde.data(), w_tilde.size());
    // both sides sum |v| in float64 (different order: ~1e-16 relative) and round once to float32, so the
    // results agree to one float32 ulp (6e-8) at worst
    float init_diff = fmaxf(max_rel_diff(&init_x, &step_x, 1), max_rel_diff(&init_w, &step_w, 1));
    check(init_diff <= 1.2e-7f, "l0 LSQ init steps", "x %.8g vs %.8g, w %.8g vs %.8g, rel diff %.2g",
          init_x, step_x, init_w, step_w, init_diff);
    std::vector<int8_t> x_codes(x_tilde.size()), w_codes(w_tilde.size());
    std::vector<uint8_t> x_packed(x_tilde.size() / 2);
    quantize_int4_cpu(x_tilde.data(), x_codes.data(), x_codes.size(), fabsf(step_x));
    quantize_int4_cpu(w_tilde.data(), w_codes.data(), w_codes.size(), fabsf(step_w));
    pack_int4_cpu(x_codes.data(), x_packed.data(), x_codes.size());
    size_t bad;
    bad = count_mismatches(x_codes.data(), x_codes_ref->as<int8_t>(), x_codes.size());
    check(bad == 0, "l0 x INT4 codes", "%zu of %zu differ", bad, x_codes.size());
    bad = count_mismatches(w_codes.data(), w_codes_ref->as<int8_t>(), w_codes.size());
    check(bad == 0, "l0 w INT4 codes", "%zu of %zu differ", bad, w_codes.size());
    bad = count_mismatches(x_packed.data(), x_packed_ref->as<uint8_t>(), x_packed.size());
    check(bad == 0, "l0 x packed nibbles", "%zu of %zu bytes differ", bad, x_packed.size());

    // backward, ∇X path: per-row bit split with stochastic rounding from the shared hash
    std::vector<int8_t> operand((size_t)N * M), high((size_t)N * M), low((size_t)N * M);
    std::vector<float> dx_scale(N);
    bitsplit_cpu(dy->as<float>(), N, M, true, seed, rng_stream_train(0, 0, RNG_USE_DX_ROUND), operand.data(),
                 high.data(), low.data(), dx_scale.data());
    bad = count_mismatches(high.data(), dx_high_ref->as<int8_t>(), high.size()) +
          count_mismatches(low.data(), dx_low_ref->as<int8_t>(), low.size());
    check(bad == 0, "l0 dX bit-split halves", "%zu of %zu codes differ", bad, 2 * high.size());
    bad = count_bit_mismatches(dx_scale.data(), dx_scale_ref->as<float>(), N);
    check(bad == 0, "l0 dX row scales bit-exact", "%zu of %d differ", bad, N);

    // backward, ∇W path: leverage scores, water-filled probabilities, keep mask, per-tensor bit split
    std::vector<float> x_hat(x_tilde.size()), scores(N), probs(N), dy_kept((size_t)N * M);
    for (size_t i = 0; i < x_hat.size(); i++) { x_hat[i] = (float)x_codes[i] * fabsf(step_x); }
    lss_scores_cpu(dy->as<float>(), M, x_hat.data(), K, N, scores.data());
    // norms in float64 summed in another order, rounded once to float32: within one ulp (6e-8 relative)
    float score_diff = max_rel_diff(scores.data(), scores_ref->as<float>(), N);
    check(score_diff <= 1.2e-7f, "l0 LSS scores", "max rel diff %.2g", score_diff);
    lss_probabilities_cpu(scores_ref->as<float>(), N, keep_ratio, probs.data());
    // the water level c comes from float64 sums in another order; the float32 probabilities agree to an ulp
    float prob_diff = max_rel_diff(probs.data(), probs_ref->as<float>(), N);
    float prob_sum = 0.0f;
    for (int i = 0; i < N; i++) prob_sum += probs[i];
    check(prob_diff <= 1.2e-7f, "l0 LSS probabilities", "max rel diff %.2g, sum %.4f (target %.4f)", prob_diff,
          prob_sum, keep_ratio * N);
    std::vector<uint8_t> keep(N);
    lss_keep_cpu(probs_ref->as<float>(), N, seed, rng_stream_train(0, 0, RNG_USE_LSS_KEEP), keep.data());
    bad = count_mismatches(keep.data(), keep_ref->as<uint8_t>(), N);
    check(bad == 0, "l0 LSS keep mask", "%zu of %d differ (%d kept)", bad, N,
          (int)std::count(keep.begin(), keep.end(), 1));
    float dw_scale;
    lss_scale_kept_rows_cpu(dy->as<float>(), N, M, probs_ref->as<float>(), keep_ref->as<uint8_t>(), dy_kept.data());
    bitsplit_cpu(dy_kept.data(), N, M, false, seed, rng_stream_train(0, 0, RNG_USE_DW_ROUND), operand.data(),
                 high.data(), low.data(), &dw_scale);
    bad = count_mismatches(high.data(), dw_high_ref->as<int8_t>(), high.size()) +
          count_mismatches(low.data(), dw_low_ref->as<int8_t>(), low.size());
    check(bad == 0, "l0 dW bit-split halves", "%zu of %zu codes differ", bad, 2 * high.size());
    check(memcmp(&dw_scale, dw_scale_ref->as<float>(), 4) == 0, "l0 dW tensor scale bit-exact", "%.9g vs %.9g",
          dw_scale, dw_scale_ref->as<float>()[0]);
}

// BERT dumps: the MLM corruption of the dump's batch (micro-step 0) recomputed on the host, per token and
// through mlm_batch (the trainer's batch builder) on the dump's full rows (b % 3 == 0: [CLS] + T-2 bytes + [SEP])
static void test_mlm_masking(const ReferenceDump& dump) {
    const int B = dump.header[9], T = dump.header[10], n = B * T;
    const DumpRecord* tokens = dump_require(dump, "tokens", DUMP_I32, (size_t)n);
    const DumpRecord* inputs = dump_require(dump, "inputs", DUMP_I32, (size_t)n);
    const DumpRecord* targets = dump_require(dump, "targets", DUMP_I32, (size_t)n);
    if (!tokens || !inputs || !targets) { check(false, "mlm masking host", "dump records missing"); return; }
    uint32_t key = rng_key((uint32_t)dump.header[11], rng_stream_train(0, 0, RNG_USE_DATA));
    std::vector<int> in(n), tg(n);
    for (int i = 0; i < n; i++) mlm_corrupt_token(tokens->as<int>()[i], key, (uint32_t)i, &in[i], &tg[i]);
    size_t bad = count_mismatches(in.data(), inputs->as<int>(), n) + count_mismatches(tg.data(), targets->as<int>(), n);
    int predicted = (int)std::count_if(tg.begin(), tg.end(), [](int t) { return t >= 0; });
    check(bad == 0, "mlm masking host == pytorch", "%zu of %d differ, %d positions predicted", bad, 2 * n, predicted);
    mlm_batch(tokens->as<int>() + 1, T, B, T, key, in.data(), tg.data());
    bad = 0;
    int rows = 0;
    for (int b = 0; b < B; b += 3, rows++) {
        bad += count_mismatches(in.data() + b * T, inputs->as<int>() + b * T, T) +
               count_mismatches(tg.data() + b * T, targets->as<int>() + b * T, T);
    }
    check(bad == 0 && rows > 0, "mlm_batch rows == pytorch", "%zu of %d values differ over %d full rows", bad, 2 * rows * T, rows);
}

// the whole quantized layer 0 (QKV) on the host: forward output and every gradient of its backward
static void test_layer0_linear_host(const ReferenceDump& dump) {
    const int B = dump.header[9], T = dump.header[10], C = dump.header[8], g = dump.header[12], L = dump.header[6];
    const int N = B * T, K = C, M = 3 * C;
    const DumpRecord* x = dump_require(dump, "int4/l0/x", DUMP_F32, (size_t)N * K);
    const DumpRecord* qkvw = dump_require(dump, "param/qkvw", DUMP_F32, (size_t)L * M * K);
    const DumpRecord* qkvb = dump_require(dump, "param/qkvb", DUMP_F32, (size_t)L * M);
    const DumpRecord* steps = dump_require(dump, "int4/lsq_steps", DUMP_F32, (size_t)L * 4 * 2);
    const DumpRecord* dy = dump_require(dump, "int4/l0/dy", DUMP_F32, (size_t)N * M);
    const DumpRecord* y_ref = dump_require(dump, "int4/l0/y", DUMP_F32, (size_t)N * M);
    const DumpRecord* dx_ref = dump_require(dump, "int4/l0/dx", DUMP_F32, (size_t)N * K);
    const DumpRecord* dw_ref = dump_require(dump, "int4/l0/dw", DUMP_F32, (size_t)M * K);
    const DumpRecord* db_ref = dump_require(dump, "int4/l0/db", DUMP_F32, (size_t)M);
    const DumpRecord* dsx_ref = dump_require(dump, "int4/l0/dstep_x", DUMP_F32, 1);
    const DumpRecord* dsw_ref = dump_require(dump, "int4/l0/dstep_w", DUMP_F32, 1);
    if (!x || !qkvw || !qkvb || !steps || !dy || !y_ref || !dx_ref || !dw_ref || !db_ref || !dsx_ref || !dsw_ref) {
        check(false, "layer0 linear host", "dump records missing (see messages above)");
        return;
    }
    std::vector<float> x_tilde((size_t)N * K), w_tilde((size_t)M * K), y((size_t)N * M), dx((size_t)N * K),
        dw((size_t)M * K), db(M);
    std::vector<int8_t> x_codes((size_t)N * K), w_codes((size_t)M * K);
    float step_x = steps->as<float>()[0], step_w = steps->as<float>()[1], dstep_x, dstep_w;
    hq_linear_forward_cpu(x->as<float>(), qkvw->as<float>(), qkvb->as<float>(), N, M, K, g, step_x, step_w,
                          x_tilde.data(), w_tilde.data(), x_codes.data(), w_codes.data(), y.data());
    lss_linear_backward_cpu(dy->as<float>(), x_tilde.data(), w_tilde.data(), x_codes.data(), w_codes.data(), N, M,
                            K, g, step_x, step_w, dump.header_float(13), (uint32_t)dump.header[11], 0, 0, dx.data(),
                            dw.data(), db.data(), &dstep_x, &dstep_w);
    // the same FP32 operations in the same order as PyTorch: equal values expected (integer products are exact)
    size_t bad = count_mismatches(y.data(), y_ref->as<float>(), y.size());
    check(bad == 0, "l0 HQ forward y exact", "%zu of %zu differ (max rel %.2g)", bad, y.size(), max_rel_diff(y.data(), y_ref->as<float>(), y.size()));
    bad = count_mismatches(dx.data(), dx_ref->as<float>(), dx.size());
    check(bad == 0, "l0 BS backward dX exact", "%zu of %zu differ (max rel %.2g)", bad, dx.size(), max_rel_diff(dx.data(), dx_ref->as<float>(), dx.size()));
    bad = count_mismatches(dw.data(), dw_ref->as<float>(), dw.size());
    check(bad == 0, "l0 LSS backward dW exact", "%zu of %zu differ (max rel %.2g)", bad, dw.size(), max_rel_diff(dw.data(), dw_ref->as<float>(), dw.size()));
    // sums over 128 tokens / 8192 elements in another order: FP32 bias sums differ by ~N ulps of the largest
    // partial sum, the float64 step sums by one float32 rounding; 1e-5 relative (of the largest value) covers both
    float db_max = 0.0f, db_err = 0.0f;
    for (int m = 0; m < M; m++) { db_max = fmaxf(db_max, fabsf(db_ref->as<float>()[m])); db_err = fmaxf(db_err, fabsf(db[m] - db_ref->as<float>()[m])); }
    check(db_err <= 1e-5f * db_max, "l0 bias gradient", "max abs diff %.2g (largest %.3g)", db_err, db_max);
    float step_diff = fmaxf(max_rel_diff(&dstep_x, dsx_ref->as<float>(), 1), max_rel_diff(&dstep_w, dsw_ref->as<float>(), 1));
    check(step_diff <= 1e-5f, "l0 LSQ step gradients", "x %.7g vs %.7g, w %.7g vs %.7g", dstep_x, dsx_ref->as<float>()[0],
          dstep_w, dsw_ref->as<float>()[0]);
}

// ----------------------------------------------------------------------------------------------------------
// quantization telemetry (kernels/qstats.h) against a float64 host computation, on activations with outliers

static void test_quant_error_device(bool have_gpu) {
    if (!have_gpu) { skip("quant_error telemetry", "no CUDA device"); return; }
    const int rows = 333, K = 256;  // rows not a multiple of anything the kernel tiles by
    std::vector<float> x((size_t)rows * K), xt((size_t)rows * K);
    uint32_t key = rng_key(7, 7);
    for (size_t i = 0; i < x.size(); i++) x[i] = rng_normal(key, (uint32_t)i) * ((i % K) % 61 == 3 ? 20.0f : 1.0f);
    float* d_x;
    double* d_scratch;
    cudaCheck(cudaMalloc(&d_x, x.size() * sizeof(float)));
    cudaCheck(cudaMalloc(&d_scratch, 4 * sizeof(double)));
    cudaCheck(cudaMemcpy(d_x, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice));
    for (int g : {0, 32, 128}) {
        QuantError got = quant_error(d_x, rows, K, g, 0.0f, d_scratch, 0);
        if (g > 0) hadamard_rows_cpu(x.data(), xt.data(), rows, K, g); else xt = x;
        float step = lsq_init_step_cpu(xt.data(), xt.size());
        double err = 0.0, norm = 0.0, ratio = 0.0;
        for (float v : xt) {
            double e = (double)quantize_int4(v, step) * step - v;
            err += e * e;
            norm += (double)v * v;
            ratio = fmax(ratio, fabs(v) / step);
        }
        float want = (float)sqrt(err / norm);
        // FP32 partial sums over up to 128 values, then FP64: relative differences ~1e-6; a code flipped by a
        // step that differs in the last bit moves the error by ~1e-6 too. 1e-4 leaves room and catches real bugs.
        bool ok = fabsf(got.step - step) <= 1e-5f * step && fabsf(got.relative_error - want) <= 1e-4f * want &&
                  fabsf(got.outlier_ratio - (float)ratio) <= 1e-4f * (float)ratio;
        char name[64];
        snprintf(name, sizeof name, "quant_error telemetry g=%d", g);
        check(ok, name, "step %.6g vs %.6g, rel error %.5f vs %.5f, outlier ratio %.3f vs %.3f", got.step, step,
              got.relative_error, want, got.outlier_ratio, (float)ratio);
    }
    // auto block choice: must return the g whose product of errors is smallest (checked against the host)
    int chosen = hadamard_block_auto(d_x, rows, d_x, rows, K, d_scratch, 0);
    float best = 1e30f;
    int best_g = 0;
    for (int g = 16; g <= 128; g *= 2) {
        hadamard_rows_cpu(x.data(), xt.data(), rows, K, g);
        float step = lsq_init_step_cpu(xt.data(), xt.size());
        double err = 0.0, norm = 0.0;
        for (float v : xt) { double e = (double)quantize_int4(v, step) * step - v; err += e * e; norm += (double)v * v; }
        if (err / norm < best) { best = (float)(err / norm); best_g = g; }
    }
    check(chosen == best_g, "hadamard_block_auto", "chose g=%d, host float64 says g=%d", chosen, best_g);
    cudaCheck(cudaFree(d_x));
    cudaCheck(cudaFree(d_scratch));
}

// the ∇W GEMM over the kept rows (kernels/s8_wgmma_gemm.h) against an int32 CPU product over the first
// min(length, ld) columns, bit for bit: stored (1 split) and atomic (several), a length inside a k-tile, zero,
// all of ld and past it, ld not a multiple of the 128-column k-tile (TMA's zero fill past ld)
static void test_kept_rows_gemm_device(bool have_gpu) {
    if (!have_gpu) { skip("kept_rows_gemm", "no CUDA device"); return; }
    if (!hopper_wgmma_available()) { skip("kept_rows_gemm", "needs an sm_90 GPU and a build with sm_90a"); return; }
    struct Case { int rows, cols, ld, length, splits; };
    const Case cases[] = {{256, 384, 1040, 300, 1}, {256, 384, 1040, 1040, 3}, {128, 128, 1040, 0, 1},
                          {128, 256, 1040, 0, 4},   {384, 128, 2048, 1153, 8}, {256, 384, 1040, 5000, 2}};
    for (const Case& t : cases) {
        int used = std::min(t.length, t.ld);
        std::vector<int8_t> a((size_t)t.rows * t.ld, 0), b((size_t)t.cols * t.ld, 0);
        uint32_t key = rng_key(11, (uint32_t)t.splits);
        // full-range s8 in the used columns, zeros after them (as lss_gather leaves the dropped rows)
        for (int r = 0; r < t.rows; r++)
            for (int j = 0; j < used; j++) a[(size_t)r * t.ld + j] = (int8_t)(rng_hash(key, 0, r * t.ld + j) & 255);
        for (int c = 0; c < t.cols; c++)
            for (int j = 0; j < used; j++) b[(size_t)c * t.ld + j] = (int8_t)(rng_hash(key, 1, c * t.ld + j) & 255);
        std::vector<int32_t> want((size_t)t.rows * t.cols), got(want.size());
        for (int r = 0; r < t.rows; r++)
            for (int c = 0; c < t.cols; c++) {
                int32_t sum = 0;
                for (int j = 0; j < used; j++) sum += a[(size_t)r * t.ld + j] * b[(size_t)c * t.ld + j];
                want[(size_t)r * t.cols + c] = sum;
            }
        int8_t *d_a, *d_b;
        int32_t* d_c;
        int* d_length;
        cudaCheck(cudaMalloc(&d_a, a.size()));
        cudaCheck(cudaMalloc(&d_b, b.size()));
        cudaCheck(cudaMalloc(&d_c, want.size() * sizeof(int32_t)));
        cudaCheck(cudaMalloc(&d_length, sizeof(int)));
        cudaCheck(cudaMemcpy(d_a, a.data(), a.size(), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(d_b, b.data(), b.size(), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(d_length, &t.length, sizeof(int), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemset(d_c, 0xFF, want.size() * sizeof(int32_t)));  // -1 everywhere: stale output fails
        kept_rows_gemm(d_c, d_a, d_b, t.rows, t.cols, t.ld, d_length, t.splits, 0);
        cudaCheck(cudaMemcpy(got.data(), d_c, got.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
        size_t bad = count_mismatches(got.data(), want.data(), want.size());
        char name[96];
        snprintf(name, sizeof name, "kept_rows_gemm %dx%d ld %d length %d splits %d", t.rows, t.cols, t.ld, t.length,
                 t.splits);
        check(bad == 0, name, "%zu of %zu int32 outputs differ from the CPU product", bad, want.size());
        cudaCheck(cudaFree(d_a));
        cudaCheck(cudaFree(d_b));
        cudaCheck(cudaFree(d_c));
        cudaCheck(cudaFree(d_length));
    }
}

// the forward GEMM with the dequantize in its epilogue (kernels/s8_wgmma_gemm.h) against the path it replaces,
// cuBLASLt's INT32 GEMM then dequantize_bias_kernel: both round acc·scale, then + bias, once each in FP32, so
// every output must match bit for bit. INT4 codes in [-8, 7] as the quantizer writes them; shapes with whole
// tiles, edge tiles (rows and columns not multiples of 128) and more tiles than SMs (the persistent walk)
template <typename T> static void test_dequant_gemm_device(const char* type) {
    if (!hopper_wgmma_available()) { skip("dequant_gemm", "needs an sm_90 GPU and a build with sm_90a"); return; }
    struct Case { int N, M, K; bool bias; };
    const Case cases[] = {{256, 384, 256, true}, {300, 136, 96, true}, {200, 72, 48, false}, {4096, 768, 64, true}};
    for (const Case& t : cases) {
        std::vector<int8_t> x((size_t)t.N * t.K), w((size_t)t.M * t.K);
        std::vector<T> bias(t.M);
        uint32_t key = rng_key(12, (uint32_t)t.N);
        for (size_t i = 0; i < x.size(); i++) x[i] = (int8_t)((int)(rng_hash(key, 0, (uint32_t)i) & 15) - 8);
        for (size_t i = 0; i < w.size(); i++) w[i] = (int8_t)((int)(rng_hash(key, 1, (uint32_t)i) & 15) - 8);
        for (int m = 0; m < t.M; m++) bias[m] = host_from_float<T>(rng_uniform_from_bits(rng_hash(key, 2, m)) - 0.5f);
        float steps[2] = {-0.0123f, 0.00457f};   // a negative step too: the scale takes |s|
        int8_t *d_x, *d_w;
        T *d_bias, *d_fused, *d_unfused;
        float* d_steps;
        int32_t* d_acc;
        cudaCheck(cudaMalloc(&d_x, x.size()));
        cudaCheck(cudaMalloc(&d_w, w.size()));
        cudaCheck(cudaMalloc(&d_bias, t.M * sizeof(T)));
        cudaCheck(cudaMalloc(&d_steps, sizeof steps));
        cudaCheck(cudaMalloc(&d_acc, (size_t)t.N * t.M * sizeof(int32_t)));
        cudaCheck(cudaMalloc(&d_fused, (size_t)t.N * t.M * sizeof(T)));
        cudaCheck(cudaMalloc(&d_unfused, (size_t)t.N * t.M * sizeof(T)));
        cudaCheck(cudaMemcpy(d_x, x.data(), x.size(), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(d_w, w.data(), w.size(), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(d_bias, bias.data(), t.M * sizeof(T), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(d_steps, steps, sizeof steps, cudaMemcpyHostToDevice));
        cudaCheck(cudaMemset(d_fused, 0xFF, (size_t)t.N * t.M * sizeof(T)));   // NaN everywhere: stale output fails
        int sms;
        cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
        const T* b = t.bias ? d_bias : nullptr;
        dequant_gemm(d_fused, d_x, d_w, b, t.N, t.M, t.K, d_steps, d_steps + 1, sms, 0);
        int8_matmul_tn(d_acc, d_w, d_x, t.M, t.N, t.K, 0);
        int vectors = (int)((long)t.N * t.M / Packed<T>::size);
        dequantize_bias_kernel<<<CEIL_DIV(vectors, 256), 256>>>(d_unfused, d_acc, b, vectors, t.M, d_steps, d_steps + 1);
        cudaCheck(cudaGetLastError());
        std::vector<T> fused((size_t)t.N * t.M), unfused(fused.size());
        cudaCheck(cudaMemcpy(fused.data(), d_fused, fused.size() * sizeof(T), cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemcpy(unfused.data(), d_unfused, unfused.size() * sizeof(T), cudaMemcpyDeviceToHost));
        size_t bad = 0;
        for (size_t i = 0; i < fused.size(); i++) bad += memcmp(&fused[i], &unfused[i], sizeof(T)) != 0;
        char name[96];
        snprintf(name, sizeof name, "dequant_gemm %s %dx%dx%d%s", type, t.N, t.M, t.K, t.bias ? " + bias" : "");
        check(bad == 0, name, "%zu of %zu outputs differ from cuBLASLt + dequantize_bias_kernel", bad, fused.size());
        for (void* p : std::initializer_list<void*>{d_x, d_w, d_bias, d_steps, d_acc, d_fused, d_unfused}) {
            cudaCheck(cudaFree(p));
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// the CUDA model against the reference dump (GPT dumps): logits, loss, every gradient, 10 AdamW steps

// the model of a dump; classifier: BERT's with the classes of param/clsw (the dump's cls_* records)
static GPTConfig dump_config(const ReferenceDump& dump, bool classifier = false) {
    const DumpRecord* clsw = classifier ? dump.find("param/clsw") : nullptr;
    return {dump.header[5], dump.header[3], dump.header[4], dump.header[6], dump.header[7], dump.header[8],
            dump.header[2], clsw && !clsw->dims.empty() ? clsw->dims[0] : 0};
}

static std::vector<float> dump_parameters(const ReferenceDump& dump, const GPTConfig& cfg) {
    size_t sizes[NUM_PARAMETER_TENSORS];
    fill_parameter_sizes(sizes, cfg);
    std::vector<float> all;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        if (sizes[i] == 0) continue;  // no classifier
        std::string name = std::string("param/") + parameter_names[i];
        const DumpRecord* r = dump_require(dump, name.c_str(), DUMP_F32, sizes[i]);
        if (!r) return {};
        all.insert(all.end(), r->as<float>(), r->as<float>() + sizes[i]);
    }
    return all;
}

// the largest |a - b| relative to the largest |b| of the tensor: gradients span orders of magnitude across
// tensors, so each is judged against its own scale
static float max_diff_scaled(const float* a, const float* b, size_t n) {
    float diff = 0.0f, scale = 0.0f;
    for (size_t i = 0; i < n; i++) { diff = fmaxf(diff, fabsf(a[i] - b[i])); scale = fmaxf(scale, fabsf(b[i])); }
    return scale > 0.0f ? diff / scale : diff;
}

template <typename T> static std::vector<float> device_to_float(const T* src, size_t n) {
    std::vector<T> raw(n);
    std::vector<float> out(n);
    cudaCheck(cudaMemcpy(raw.data(), src, n * sizeof(T), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) out[i] = (float)raw[i];
    return out;
}

// Tolerances. fp32: pure FP32 GEMMs (no TF32) and FP32 kernels whose sums run in another order than
// PyTorch's: ~1e-7 relative per op, growing through 2 layers and the backward to the ~6e-7 measured on the
// H100 (dev/results/test_int4_model_h100.log); 1e-5 of each tensor's scale leaves a 16x margin and still
// catches any wrong term, which moves results by far more. bf16: activations and the compute copy of the
// weights carry 8 mantissa bits (2^-9 = 2e-3 relative) at every op; measured errors are up to 6e-3 of a
// tensor's scale, so 2e-2. The loss averages 128 tokens: fp32 within 1e-5 absolute, bf16 within 1e-2.
// AdamW normalises each update to ~lr per element whatever the gradient's error, so the 10-step losses
// track the reference as closely as the first loss (measured 5e-7 fp32, 2e-3 bf16): 1e-5 and 1e-2.
// int4 (FP32 activations, quantized linears, the dump's LSQ steps): the forward is exact integer arithmetic
// on identical codes, so logits and loss get the fp32 tolerances (measured 2e-7). In the backward, inputs of
// a quantized layer differ from PyTorch's by FP32 rounding (~1e-7), which can flip a stochastic-rounding
// decision or an LSS keep where u lands within that distance of the threshold: one flipped low code moves
// one term of a token sum by 1/98 of that row's largest gradient. Measured: 1.8e-3 of the tensor's scale
// (attprojw), so 5e-3. Such flips make the 10-step trajectories drift apart; the allowed drift per step is
// what the reference measures for itself under other draws of its randomness (below), above the fp32 1e-5.
// mode_name: "fp32", "bf16" (both against the dump's fp32 records) or "int4" (FP32 activations with the
// quantized linear layers, against the int4 records, starting from the dump's LSQ steps); with a prefix
// ("cls_"), BERT's classifier records, whose batch is the unmasked tokens and the labels. A GPT dump checks
// the LM, a BERT dump the masked LM (same records, masked inputs, targets -1 where unpredicted).
template <typename T> static void test_model_vs_dump(const ReferenceDump& dump, const char* mode_name,
                                                     float tol_logits, float tol_loss, float tol_grad, float tol_steps,
                                                     const char* prefix = "") {
    const bool classifier = prefix[0] != 0;
    GPTConfig cfg = dump_config(dump, classifier);
    const int B = dump.header[9], T_ = dump.header[10], N = B * T_;
    const int rows = classifier ? B : N, width = classifier ? cfg.num_classes : cfg.padded_vocab_size;
    const bool int4 = !strcmp(mode_name, "int4");
    const std::string ref = std::string(prefix) + (int4 ? "int4/" : "fp32/");
    std::vector<float> master = dump_parameters(dump, cfg);
    const DumpRecord* inputs = dump_require(dump, classifier ? "tokens" : "inputs", DUMP_I32, (size_t)N);
    const DumpRecord* targets = dump_require(dump, classifier ? "labels" : "targets", DUMP_I32, (size_t)rows);
    const DumpRecord* logits_ref = dump_require(dump, (ref + "logits").c_str(), DUMP_F32, (size_t)rows * width);
    const DumpRecord* loss_ref = dump_require(dump, (ref + "loss").c_str(), DUMP_F32, 1);
    const DumpRecord* losses_ref = dump_require(dump, (ref + "losses").c_str(), DUMP_F32, (size_t)dump.header[14]);
    const DumpRecord* steps_ref = int4 ? dump_require(dump, (ref + "lsq_steps").c_str(), DUMP_F32, (size_t)cfg.num_layers * 8) : nullptr;
    const DumpRecord* step_grads_ref = int4 ? dump_require(dump, (ref + "grad/lsq_steps").c_str(), DUMP_F32, (size_t)cfg.num_layers * 8) : nullptr;
    const DumpRecord* resampled = int4 ? dump_require(dump, (ref + "losses_resampled").c_str(), DUMP_F32, 8 * (size_t)dump.header[14]) : nullptr;
    char name[128];
    std::string label = std::string(prefix) + mode_name;
    mode_name = label.c_str();
    if (master.empty() || !inputs || !targets || !logits_ref || !loss_ref || !losses_ref ||
        (int4 && (!steps_ref || !step_grads_ref || !resampled))) {
        snprintf(name, sizeof name, "%s model vs dump", mode_name);
        check(false, name, "dump records missing");
        return;
    }
    GPT<T> model;
    QuantConfig quant = {int4, dump.header[12], dump.header_float(13), {}};
    gpt_build(&model, cfg, master.data(), B, T_, quant);
    model.seed = (uint32_t)dump.header[11];
    if (int4) {
        cudaCheck(cudaMemcpy(model.lsq_steps, steps_ref->as<float>(), cfg.num_layers * 8 * sizeof(float), cudaMemcpyHostToDevice));
        model.lsq_steps_initialised = true;
    }
    gpt_upload_batch(&model, inputs->as<int>(), targets->as<int>());
    gpt_zero_grad(&model);
    gpt_forward(&model);
    std::vector<float> logits = device_to_float(model.acts.logits, (size_t)rows * width);
    snprintf(name, sizeof name, "%s logits", mode_name);
    float d = max_diff_scaled(logits.data(), logits_ref->as<float>(), logits.size());
    check(d <= tol_logits, name, "max diff %.2e of max |logit| (tolerance %.0e)", d, tol_logits);
    gpt_loss(&model, gpt_grad_scale(&model, 1));
    float loss = gpt_mean_loss(&model);
    snprintf(name, sizeof name, "%s loss", mode_name);
    check(fabsf(loss - loss_ref->as<float>()[0]) <= tol_loss, name, "%.6f vs %.6f", loss, loss_ref->as<float>()[0]);
    gpt_backward(&model);
    std::vector<float> grads(model.num_parameters + model.num_lsq_steps);
    cudaCheck(cudaMemcpy(grads.data(), model.grads_memory, grads.size() * sizeof(float), cudaMemcpyDeviceToHost));
    if (int4) {
        float gd = max_diff_scaled(grads.data() + model.num_parameters, step_grads_ref->as<float>(), model.num_lsq_steps);
        snprintf(name, sizeof name, "%s grad lsq_steps", mode_name);
        check(gd <= tol_grad, name, "max diff %.2e of the largest step gradient (tolerance %.0e)", gd, tol_grad);
    }
    size_t offset = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        if (model.parameter_sizes[i] == 0) continue;
        std::string rec = ref + "grad/" + parameter_names[i];
        const DumpRecord* r = dump_require(dump, rec.c_str(), DUMP_F32, model.parameter_sizes[i]);
        float gd = r ? max_diff_scaled(grads.data() + offset, r->as<float>(), model.parameter_sizes[i]) : 1e30f;
        snprintf(name, sizeof name, "%s grad %s", mode_name, parameter_names[i]);
        check(gd <= tol_grad, name, "max diff %.2e of the tensor's max |grad| (tolerance %.0e)", gd, tol_grad);
        offset += model.parameter_sizes[i];
    }
    // 10 AdamW steps on the same batch, constant lr, as the reference
    OptimizerConfig opt = {dump.header_float(15), dump.header_float(17), dump.header_float(18), dump.header_float(19),
                           dump.header_float(16), dump.header_float(20)};
    // int4: flipped rounding decisions (see above) make trajectories drift, by how much depends on the task
    // (4 [CLS] rows carry the classifier's whole gradient, so one flip weighs more than among 128 tokens).
    // The reference measured its own drift: the same 10 steps under 8 other draws of the quantizers'
    // randomness. Ours, perturbed by a few flips, is one more such draw, so at step s it may differ from the
    // reference by tol_steps plus the range (max - min) of those 9 trajectories over steps <= s (drift only
    // accumulates). A code bug (a wrong update, step gradient or scale) moves the loss already at steps 1-2,
    // where that range is still ~1e-3, and keeps moving it.
    const int steps = dump.header[14];
    std::vector<float> allowed(steps, tol_steps);
    float range = 0.0f;
    for (int step = 0; int4 && step < steps; step++) {
        float lo = losses_ref->as<float>()[step], hi = lo;
        for (int k = 0; k < 8; k++) {
            lo = fminf(lo, resampled->as<float>()[k * steps + step]);
            hi = fmaxf(hi, resampled->as<float>()[k * steps + step]);
        }
        range = fmaxf(range, hi - lo);
        allowed[step] = tol_steps + range;
    }
    float step_diff = 0.0f, worst_ratio = 0.0f;
    std::string trace;
    for (int step = 0; step < steps; step++) {
        model.micro_step = (uint32_t)step;  // the reference's RNG streams use the step number
        if (step > 0) {
            gpt_zero_grad(&model);
            gpt_forward(&model);
            gpt_loss(&model, gpt_grad_scale(&model, 1));
            loss = gpt_mean_loss(&model);
            gpt_backward(&model);
        }
        gpt_grad_norm(&model);
        gpt_update(&model, opt, opt.learning_rate, step + 1);
        float diff = fabsf(loss - losses_ref->as<float>()[step]);
        step_diff = fmaxf(step_diff, diff);
        worst_ratio = fmaxf(worst_ratio, diff / allowed[step]);
        char buf[48];
        snprintf(buf, sizeof buf, " %.4f/%.4f(%.0e)", loss, losses_ref->as<float>()[step], allowed[step]);
        trace += buf;
    }
    snprintf(name, sizeof name, "%s 10 AdamW steps", mode_name);
    check(worst_ratio <= 1.0f, name, "max loss diff %.2e, at worst %.2f of the allowed (ours/ref(allowed)):%s",
          step_diff, worst_ratio, trace.c_str());
    gpt_free(&model);
}

// train 2n steps straight == train n, checkpoint, rebuild from scratch, resume, train n: identical losses
// (with random data windows and dropout, as the trainer runs)
template <typename T> static void test_resume_determinism(const ReferenceDump& dump, const char* mode_name) {
    const bool int4 = !strcmp(mode_name, "int4");  // bf16 activations with the quantized layers, as -p int4
    QuantConfig quant = {int4, dump.header[12], dump.header_float(13), {}};
    GPTConfig cfg = dump_config(dump);
    const int B = dump.header[9], T_ = dump.header[10], n = 3;
    std::vector<float> master = dump_parameters(dump, cfg);
    char dir[] = "/tmp/test_int4_resume_XXXXXX";
    char name[96];
    snprintf(name, sizeof name, "%s save/resume bit-identical", mode_name);
    if (master.empty() || !mkdtemp(dir)) { check(false, name, "setup failed"); return; }
    OptimizerConfig opt = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f};
    auto run = [&](GPT<T>* model, DataLoader* loader, int from, int to, std::vector<float>* losses) {
        for (int step = from; step < to; step++) {
            dataloader_next_batch(loader, step);
            gpt_upload_batch(model, loader->inputs.data(), loader->targets.data());
            gpt_zero_grad(model);
            model->seed = 1337;
            model->micro_step = (uint32_t)step;  // dropout masks depend on it, so resuming must restore it
            gpt_forward(model, 0.1f);
            gpt_loss(model, gpt_grad_scale(model, 1));
            losses->push_back(gpt_mean_loss(model));
            gpt_backward(model);
            gpt_grad_norm(model);
            gpt_update(model, opt, learning_rate_at(step, 2, 2 * n, 1e-3f, 0.1f), step + 1);
        }
    };
    std::vector<float> straight, resumed;
    DataLoader loader;
    if (!dataloader_init(&loader, "data/tinyshakespeare_train.bin", B, T_, cfg.vocab_size, true, 1337)) { check(false, name, "no data (make data)"); return; }
    GPT<T> model;
    gpt_build(&model, cfg, master.data(), B, T_, quant);
    run(&model, &loader, 0, 2 * n, &straight);
    gpt_free(&model);
    dataloader_seek(&loader, 0, 0);
    gpt_build(&model, cfg, master.data(), B, T_, quant);
    run(&model, &loader, 0, n, &resumed);
    TrainState st = {n, loader.shard, loader.position, 1337, model_precision(&model)};
    bool saved = save_checkpoint(&model, dir, st);
    gpt_free(&model);
    std::vector<float> zeros(master.size(), 0.0f);  // the resumed model must get everything from the files
    gpt_build(&model, cfg, zeros.data(), B, T_, quant);
    TrainState loaded;
    DataLoader fresh;
    dataloader_init(&fresh, "data/tinyshakespeare_train.bin", B, T_, cfg.vocab_size, true, 1337);
    bool restored = saved && load_state(&model, latest_state_file(dir).c_str(), &loaded) &&
                    dataloader_seek(&fresh, loaded.shard, loaded.position);
    if (restored) run(&model, &fresh, loaded.step, 2 * n, &resumed);
    gpt_free(&model);
    bool same = restored && resumed.size() == straight.size() &&
                memcmp(resumed.data(), straight.data(), straight.size() * sizeof(float)) == 0;
    check(same, name, "%zu losses, last %.7f vs %.7f%s", straight.size(), straight.back(),
          resumed.empty() ? 0.0f : resumed.back(), restored ? "" : " (restore failed)");
    std::string cleanup = std::string("rm -rf ") + dir;
    if (system(cleanup.c_str()) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

// -R 2 (the layernorm outputs recomputed in the backward from the kept residual stream) against -R 1: two
// training steps on the dump's batch with dropout, the losses and every gradient (LSQ steps included) equal bit
// for bit: the recompute runs the forward's kernel on the same inputs, so nothing may change
template <typename T> static void test_recompute_layernorm(const ReferenceDump& dump, const char* mode_name) {
    const bool int4 = !strcmp(mode_name, "int4");  // bf16 activations with the quantized layers, as -p int4
    QuantConfig quant = {int4, dump.header[12], dump.header_float(13), {}};
    GPTConfig cfg = dump_config(dump);
    const int B = dump.header[9], T_ = dump.header[10], N = B * T_;
    std::vector<float> master = dump_parameters(dump, cfg);
    const DumpRecord* inputs = dump_require(dump, "inputs", DUMP_I32, (size_t)N);
    const DumpRecord* targets = dump_require(dump, "targets", DUMP_I32, (size_t)N);
    char name[96];
    snprintf(name, sizeof name, "%s -R 2 == -R 1 bit for bit", mode_name);
    if (master.empty() || !inputs || !targets) { check(false, name, "dump records missing"); return; }
    OptimizerConfig opt = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f};
    std::vector<float> results[2];  // per setting, per step: the loss, then all gradients
    for (int setting = 0; setting < 2; setting++) {
        GPT<T> model;
        gpt_build(&model, cfg, master.data(), B, T_, quant, setting == 1);
        model.seed = 1337;
        gpt_upload_batch(&model, inputs->as<int>(), targets->as<int>());
        for (int step = 0; step < 2; step++) {
            model.micro_step = (uint32_t)step;
            gpt_zero_grad(&model);
            gpt_forward(&model, 0.1f);
            gpt_loss(&model, gpt_grad_scale(&model, 1));
            results[setting].push_back(gpt_mean_loss(&model));
            gpt_backward(&model);
            size_t n = model.num_parameters + model.num_lsq_steps, at = results[setting].size();
            results[setting].resize(at + n);
            cudaCheck(cudaMemcpy(results[setting].data() + at, model.grads_memory, n * sizeof(float), cudaMemcpyDeviceToHost));
            gpt_grad_norm(&model);
            gpt_update(&model, opt, 1e-3f, step + 1);
        }
        gpt_free(&model);
    }
    bool same_size = results[0].size() == results[1].size();
    size_t differ = 0;
    for (size_t i = 0; same_size && i < results[0].size(); i++) {
        differ += memcmp(&results[0][i], &results[1][i], sizeof(float)) != 0;
    }
    check(same_size && differ == 0, name, "%zu values (2 losses, 2 x every gradient), %zu differ; first loss %.7f",
          results[0].size(), differ, results[0][0]);
}

// ----------------------------------------------------------------------------------------------------------
// host pieces of the trainer: learning-rate schedule, encoder-backward buckets, training data windows

// the state file's header (kernels/model_file.h): what state_header writes, state_header_check accepts for the
// same run and the right file size, and state_header_train_state reads back; another config is refused
static void test_state_header_host() {
    GPTConfig c = {1024, 256, 256, 2, 2, 64, 0, 0};
    TrainState st = {7, 1, 123456789012L, 1337u, PRECISION_INT4};
    size_t total = 1000;
    int32_t header[256];
    state_header(header, st, c, total);
    long size = 1024 + 3 * (long)total * 4;
    TrainState back = state_header_train_state(header);
    bool same = back.step == st.step && back.shard == st.shard && back.position == st.position &&
                back.seed == st.seed && back.precision == st.precision;
    GPTConfig other = c;
    other.num_layers = 3;
    bool accepted = state_header_check(header, size, c, PRECISION_INT4, total, "state (test)");
    bool refused = !state_header_check(header, size, other, PRECISION_INT4, total, "state (test, other config)") &&
                   !state_header_check(header, size - 4, c, PRECISION_INT4, total, "state (test, short)");
    check(header[0] == STATE_MAGIC && same && accepted && refused, "state file header round trip",
          "fields read back %s, same run %s, other config / short file %s", same ? "equal" : "DIFFER",
          accepted ? "accepted" : "REFUSED", refused ? "refused" : "ACCEPTED");
}

// kept_rows_gemm's split count (host): always 1..KEPT_MAX_SPLITS and at most the k-tiles, unsplit once the
// tiles fill half the multiprocessors, and a split grid never needs a second wave (its atomic epilogues would
// then cost more than the split saves: dev/results/kept_rows_gemm_h200.log)
// dequant_gemm's tile walk (host): every tile exactly once, in bands of DEQUANT_BAND_TILES tile rows (the order
// the blocks take them), over grids from 1 x 1 to ones with a short last band, and the trainer's 128 x 6 .. 24
static void test_dequant_tile_walk_host() {
    int bad = 0, grids = 0;
    std::vector<std::pair<int, int>> shapes = {{128, 6}, {128, 18}, {128, 24}, {128, 128}};
    for (int tiles_r = 1; tiles_r <= 27; tiles_r++)
        for (int tiles_c = 1; tiles_c <= 13; tiles_c++) shapes.push_back({tiles_r, tiles_c});
    for (auto [tiles_r, tiles_c] : shapes) {
        std::vector<int> hits((size_t)tiles_r * tiles_c, 0);
        bool ok = true;
        for (int t = 0; t < tiles_r * tiles_c; t++) {
            int r0, c0;
            dequant_tile_origin(t, tiles_r, tiles_c, &r0, &c0);
            int r = r0 / S8_TILE, c = c0 / S8_TILE;
            ok = ok && r0 % S8_TILE == 0 && c0 % S8_TILE == 0 && r >= 0 && r < tiles_r && c >= 0 && c < tiles_c &&
                 r / DEQUANT_BAND_TILES == t / (DEQUANT_BAND_TILES * tiles_c);
            if (ok) hits[(size_t)r * tiles_c + c]++;
        }
        for (int h : hits) ok = ok && h == 1;
        bad += !ok;
        grids++;
    }
    check(bad == 0, "dequant_gemm tile walk", "%d of %d grids not covered once each in bands of %d tile rows", bad,
          grids, DEQUANT_BAND_TILES);
}

static void test_kept_rows_gemm_splits_host() {
    int bad = 0, checked = 0;
    for (int sms : {78, 108, 132})
        for (int tiles = 1; tiles <= 400; tiles++)
            for (int k_tiles = 0; k_tiles <= 160; k_tiles++) {
                int s = kept_rows_gemm_splits(tiles, sms, k_tiles);
                bool ok = s >= 1 && s <= KEPT_MAX_SPLITS && s <= std::max(k_tiles, 1) && (tiles <= sms / 2 || s == 1) &&
                          (s == 1 || tiles * s <= sms);
                bad += !ok;
                checked++;
            }
    check(bad == 0, "kept_rows_gemm split counts", "%d of %d (tiles, SMs, k-tiles) cases outside the rules", bad,
          checked);
}

static void test_trainer_host_pieces() {
    // warmup 10 to lr 1.0, cosine to 0.1 at step 100
    float first = learning_rate_at(0, 10, 100, 1.0f, 0.1f), peak = learning_rate_at(9, 10, 100, 1.0f, 0.1f);
    float mid = learning_rate_at(55, 10, 100, 1.0f, 0.1f), end = learning_rate_at(100, 10, 100, 1.0f, 0.1f);
    check(fabsf(first - 0.1f) < 1e-6f && fabsf(peak - 1.0f) < 1e-6f && fabsf(mid - 0.55f) < 1e-5f && fabsf(end - 0.1f) < 1e-6f,
          "learning-rate schedule", "step 0 %.3f, end of warmup %.3f, halfway %.4f (0.55), end %.3f (0.1)", first, peak, mid, end);
    // buckets: every position exactly once, under its own token, in increasing order within a bucket
    int tokens[12] = {5, 3, 5, 0, 3, 5, 7, 7, 0, 5, 1, 3};
    TokenBuckets b;
    token_buckets_build(&b, tokens, 12, 8);
    bool ok = b.count() == 5 && b.bucket_start.back() == 12;
    std::vector<int> seen(12, 0);
    for (int k = 0; ok && k < b.count(); k++) {
        for (int p = b.bucket_start[k]; p < b.bucket_start[k + 1]; p++) {
            ok = ok && tokens[b.positions[p]] == b.bucket_token[k] && (p == b.bucket_start[k] || b.positions[p] > b.positions[p - 1]);
            seen[b.positions[p]]++;
        }
    }
    for (int v : seen) ok = ok && v == 1;
    check(ok, "encoder-backward token buckets", "%d buckets cover 12 positions once each, in order", b.count());
    // random windows: a function of (seed, batch number), inside the shard, targets = inputs shifted by one
    DataLoader a1, a2;
    ok = dataloader_init(&a1, "data/tinyshakespeare_train.bin", 4, 64, 256, true, 7) &&
         dataloader_init(&a2, "data/tinyshakespeare_train.bin", 4, 64, 256, true, 7);
    if (!ok) { check(false, "training data windows", "data/tinyshakespeare_train.bin missing (make data)"); return; }
    dataloader_next_batch(&a1, 42);
    dataloader_next_batch(&a2, 42);
    bool same = a1.inputs == a2.inputs && a1.targets == a2.targets;
    std::vector<int> first_inputs = a1.inputs;
    dataloader_next_batch(&a1, 43);
    bool differs = a1.inputs != first_inputs;
    bool shifted = true;
    for (int t = 0; t + 1 < 64; t++) shifted = shifted && a2.targets[t] == a2.inputs[t + 1];
    check(same && differs && shifted, "training data windows", "same batch number -> same windows, next -> new ones, targets shifted by one");
}

// ----------------------------------------------------------------------------------------------------------
// multi-GPU start-up (host): ranks meet through a file; NCCL's id is opaque bytes, so any bytes test it

static void test_multi_gpu_rendezvous() {
    char dir[] = "/tmp/test_int4_rendezvous_XXXXXX";
    if (!mkdtemp(dir)) { check(false, "multi-GPU rendezvous file", "no temp folder"); return; }
    std::string path = std::string(dir) + "/nccl_id_test.bin";
    unsigned char sent[128], received[128];
    for (int i = 0; i < 128; i++) sent[i] = (unsigned char)rng_hash(7, 0, (uint32_t)i);
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {  // rank 0, starting late: the reader must wait for it
        usleep(300 * 1000);
        _exit(rendezvous_exchange(path, sent, sizeof sent, 0) ? 0 : 1);
    }
    bool read = rendezvous_exchange(path, received, sizeof received, 1);
    int status = 1;
    waitpid(child, &status, 0);
    bool same = read && WIFEXITED(status) && WEXITSTATUS(status) == 0 && memcmp(sent, received, sizeof sent) == 0;
    bool no_tmp_left = access((path + ".tmp").c_str(), F_OK) != 0;
    check(same && no_tmp_left, "multi-GPU rendezvous file", "rank 1 waited for rank 0's 128 bytes and read them intact");
    std::string cleanup = std::string("rm -rf ") + dir;
    if (system(cleanup.c_str()) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

// ----------------------------------------------------------------------------------------------------------
// file loaders (host): the classification task format

static bool load_classification_text(const char* text, const std::vector<std::string>* known, ClassificationSet* set) {
    FILE* f = fmemopen((void*)text, strlen(text), "rb");
    if (!f) return false;
    bool ok = classification_read(f, "memory", known, set);
    fclose(f);
    return ok;
}

static void test_classification_loader() {
    ClassificationSet train, val;
    bool ok = classification_load("data/speakers_train.tsv", nullptr, &train) &&
              classification_load("data/speakers_val.tsv", &train.label_names, &val);
    check(ok && train.label_names.size() == 8 && train.labels.size() > 800 && val.labels.size() > 150,
          "speaker task loads", "%zu classes, %zu train and %zu held-out examples", train.label_names.size(),
          train.labels.size(), val.labels.size());
    ok = load_classification_text("b\tsecond\r\na\tfirst\n\nb\tthird", nullptr, &train);
    check(ok && train.label_names == std::vector<std::string>{"a", "b"} && train.labels == std::vector<int>{1, 0, 1} &&
          train.texts[0] == "second" && train.texts[2] == "third", "classification labels sorted, CRLF and blank lines",
          "labels a=0 b=1, texts read without line endings");
    int row[8];
    classification_tokens("hello world", 8, row);
    check(row[0] == TOKEN_CLS && row[1] == 'h' && row[5] == 'o' && row[6] == ' ' && row[7] == TOKEN_SEP, "classification tokens truncate",
          "[CLS] + first T-2 bytes + [SEP]");
    classification_tokens("hi", 8, row);
    check(row[3] == TOKEN_SEP && row[4] == TOKEN_PAD && row[7] == TOKEN_PAD, "classification tokens pad", "[CLS] h i [SEP] [PAD]...");
    // bad files: each is rejected (the loader prints its one-line reason on stderr)
    const char* bad_files[] = {"", "\n\n", "no tab here\n", "\ttext without label\n", "label without text\t\n",
                               "a\tonly one class\na\tagain\n"};
    int rejected = 0;
    for (const char* text : bad_files) rejected += !load_classification_text(text, nullptr, &train);
    std::vector<std::string> known = {"a", "b"};
    rejected += !load_classification_text("c\tunknown label\n", &known, &val);
    rejected += !classification_load("data/does_not_exist.tsv", nullptr, &train);
    check(rejected == 8, "classification bad files rejected", "%d of 8 (empty, blank, no tab, no label, no text, one class, unknown label, missing)", rejected);
}

// ----------------------------------------------------------------------------------------------------------

// usage: test_int4 [dump] [modes]: modes, a comma list of fp32, bf16, int4 (default all), limits the GPU model
// checks to those precisions (e.g. to run one under compute-sanitizer, which is slow)
int main(int argc, char** argv) {
    const char* dump_path = argc > 1 ? argv[1] : "ref/dump.bin";
    bool want[3] = {argc <= 2, argc <= 2, argc <= 2};  // fp32, bf16, int4
    static const char* mode_names[3] = {"fp32", "bf16", "int4"};
    for (std::string list = argc > 2 ? argv[2] : ""; !list.empty();) {
        size_t comma = list.find(',');
        std::string mode = list.substr(0, comma);
        list = comma == std::string::npos ? "" : list.substr(comma + 1);
        int m = 0;
        while (m < 3 && mode != mode_names[m]) m++;
        if (m == 3) {
            fprintf(stderr, "error: test_int4 modes '%s': expected a comma list of fp32, bf16, int4\n", argv[2]);
            return EXIT_FAILURE;
        }
        want[m] = true;
    }
    ReferenceDump dump;
    if (!reference_dump_load(dump_path, &dump)) { return EXIT_FAILURE; }
    int device_count = 0;
    bool have_gpu = cudaGetDeviceCount(&device_count) == cudaSuccess && device_count > 0;
    printf("test_int4: %s, %s\n", dump_path, have_gpu ? "CUDA device found" : "no CUDA device: GPU checks skip");

    test_rng_host(dump);
    test_rng_device(dump, have_gpu);
    test_bitsplit_carry_host();
    test_layer0_quantizers_host(dump);
    test_layer0_linear_host(dump);
    if (dump.header[2] == 0) test_trainer_host_pieces();
    if (dump.header[2] == 0) test_kept_rows_gemm_splits_host();
    if (dump.header[2] == 0) test_dequant_tile_walk_host();
    if (dump.header[2] == 0) test_state_header_host();
    if (dump.header[2] == 0) test_multi_gpu_rendezvous();
    test_quant_error_device(have_gpu);
    test_kept_rows_gemm_device(have_gpu);
    if (have_gpu) {  // GPT: the LM; BERT: the masked LM, then the classifier (same tolerances, same reasons)
        matmul_setup();
        test_dequant_gemm_device<float>("fp32");
        test_dequant_gemm_device<__nv_bfloat16>("bf16");
        if (want[0]) test_model_vs_dump<float>(dump, "fp32", 1e-5f, 1e-5f, 1e-5f, 1e-5f);
        if (want[1]) test_model_vs_dump<__nv_bfloat16>(dump, "bf16", 2e-2f, 1e-2f, 2e-2f, 1e-2f);
        if (want[2]) test_model_vs_dump<float>(dump, "int4", 1e-5f, 1e-5f, 5e-3f, 1e-5f);
        if (want[0]) test_recompute_layernorm<float>(dump, "fp32");
        if (want[1]) test_recompute_layernorm<__nv_bfloat16>(dump, "bf16");
        if (want[2]) test_recompute_layernorm<__nv_bfloat16>(dump, "int4");
        if (dump.header[2] == 1) {
            if (want[0]) test_model_vs_dump<float>(dump, "fp32", 1e-5f, 1e-5f, 1e-5f, 1e-5f, "cls_");
            if (want[1]) test_model_vs_dump<__nv_bfloat16>(dump, "bf16", 2e-2f, 1e-2f, 2e-2f, 1e-2f, "cls_");
            if (want[2]) test_model_vs_dump<float>(dump, "int4", 1e-5f, 1e-5f, 5e-3f, 1e-5f, "cls_");
        } else {
            if (want[0]) test_resume_determinism<float>(dump, "fp32");
            if (want[1]) test_resume_determinism<__nv_bfloat16>(dump, "bf16");
            if (want[2]) test_resume_determinism<__nv_bfloat16>(dump, "int4");
        }
        matmul_teardown();
    } else {
        skip("fp32, bf16 and int4 model vs dump (and -R 2 == -R 1; GPT: and save/resume; BERT: MLM and classifier)", "no CUDA device");
    }
    if (dump.header[2] == 1) {
        test_mlm_masking(dump);
        test_classification_loader();
    }

    printf("test_int4: %d passed, %d failed, %d skipped\n", checks_passed, checks_failed, checks_skipped);
    return checks_failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
