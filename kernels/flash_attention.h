// Fused attention for BF16 activations (flash-attention-2's scheme), head sizes 16, 32 and 64: the (T, T)
// scores never reach global memory. Q·Kᵀ and P·V run on the BF16 tensor cores (mma.sync m16n8k16, FP32
// accumulation); the scale, mask and online softmax run in FP32 in registers. The forward keeps one FP32
// number per query row for the backward: the log2 of its softmax denominator (lse2, in the scaled-log2
// units the kernels work in), from which the backward recomputes every probability exactly as the forward
// made it. The backward is two kernels so that nothing is summed with atomics (the trainer's runs repeat
// bit for bit): one per key block accumulates dK and dV over query blocks, one per query block accumulates
// dQ over key blocks; both recompute the scores. They read q, k, v straight from the qkv layout
// (B, T, 3, NH, hs) and write dq, dk, dv straight into dqkv: no permutation passes. Every kernel walks its
// blocks with two shared-memory buffers: the next block's tiles load (cp.async) while the current ones are
// multiplied. Causal (GPT) or bidirectional with [PAD] keys masked (BERT: key_tokens). dev/attention.cu
// validates it (version 3) against a CPU reference, version 2 (no load pipeline: equal bits) and the cuBLASLt
// path of kernels/attention.h (version 1), and times them.
#pragma once
#include <math.h>
#include <type_traits>
#include "common.h"
#include "mlm.h"

#define FLASH_ROWS 64                         // query or key rows per thread block: 4 warps x 16 rows
#define FLASH_THREADS 128
#define FLASH_LOG2E 1.4426950408889634f

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ uint32_t shared_address(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// four 8x8 BF16 matrices from shared memory; lanes 8i..8i+7 give the row addresses of matrix i
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_address(p)));
}

// the same, each matrix transposed on the way into registers
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_address(p)));
}

// c (16x8 FP32) += a (16x16 BF16, row-major) · b (16x8 BF16, column-major)
__device__ __forceinline__ void mma_bf16_16x8x16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// two FP32 values rounded to BF16 and packed, the first in the low half (the order mma operands use)
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// 2^x in one instruction: exp2f compiles (without fast-math) to the same MUFU.EX2 plus four instructions
// that halve an input whose result is subnormal (below 2^-126) and square the result (seen in the SASS).
// Here such results are 0 instead; every other result is the same bits as exp2f's.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// A 64 x HS BF16 tile in shared memory, row-major, its 16-byte chunks permuted within each row (XOR with a
// function of the row) so that the 8 row addresses of every ldmatrix hit 8 different bank groups.
template <int HS> struct alignas(16) FlashTile {
    static constexpr int CHUNKS = HS / 8;  // 16-byte chunks per row
    bf16 data[FLASH_ROWS * HS];
    __device__ __forceinline__ static int index(int row, int c) {
        int swizzle = CHUNKS >= 8 ? row % 8 : (row / (8 / CHUNKS)) % CHUNKS;
        return row * HS + (c ^ swizzle) * 8;
    }
    __device__ __forceinline__ const bf16* chunk(int row, int c) const { return data + index(row, c); }
    // rows t0 .. t0+63 of a tensor whose row t starts at base + t·stride (zeros past row T_), copied with
    // cp.async by all threads: the caller commits the group and waits for it
    __device__ __forceinline__ void load_async(const bf16* base, long stride, int t0, int T_) {
#pragma unroll
        for (int j = 0; j < FLASH_ROWS * CHUNKS / FLASH_THREADS; j++) {
            int i = threadIdx.x + j * FLASH_THREADS, row = i / CHUNKS, c = i % CHUNKS;
            bool real = t0 + row < T_;
            cp_async_16(data + index(row, c), real ? base + (t0 + row) * stride + c * 8 : base, real ? 16 : 0);
        }
    }
    // A operand: rows row0..row0+15, columns 16·kk..16·kk+15
    __device__ __forceinline__ void a_fragment(uint32_t a[4], int row0, int kk) const {
        int lane = threadIdx.x % 32;
        ldmatrix_x4(a, chunk(row0 + lane % 16, 2 * kk + lane / 16));
    }
    // B operands of two n-tiles when the tile is stored n-major (row = n, columns = k): n = n0..n0+15,
    // k = 16·kk..16·kk+15. b[0], b[1]: n-tile n0; b[2], b[3]: n-tile n0 + 8
    __device__ __forceinline__ void b_fragments_n_major(uint32_t b[4], int n0, int kk) const {
        int lane = threadIdx.x % 32;
        ldmatrix_x4(b, chunk(n0 + lane % 8 + (lane / 16) * 8, 2 * kk + (lane / 8) % 2));
    }
    // the same when the tile is stored k-major (row = k, columns = n): k = 16·kk.., n = n0..n0+15
    __device__ __forceinline__ void b_fragments_k_major(uint32_t b[4], int kk, int n0) const {
        int lane = threadIdx.x % 32;
        ldmatrix_x4_trans(b, chunk(16 * kk + lane % 8 + ((lane / 8) % 2) * 8, n0 / 8 + lane / 16));
    }
};

// which (query, key) pairs take part: keys below T_, and causal (key <= query) or a non-[PAD] key
__device__ __forceinline__ bool flash_visible(int query, int key, int T_, const int* key_tokens) {
    return key < T_ && (key_tokens ? key_tokens[key] != TOKEN_PAD : key <= query);
}

// acc (16 x 64, as 8 n-tiles) = rows row0.. of `a` (16 x HS, A fragments) · the 64 rows of `b`ᵀ
template <int HS>
__device__ __forceinline__ void flash_scores(float acc[8][4], const uint32_t a[HS / 16][4], const FlashTile<HS>& b) {
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[nt][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++) {
#pragma unroll
        for (int np = 0; np < 4; np++) {
            uint32_t frag[4];
            b.b_fragments_n_major(frag, 16 * np, kk);
            mma_bf16_16x8x16(acc[2 * np], a[kk], frag[0], frag[1]);
            mma_bf16_16x8x16(acc[2 * np + 1], a[kk], frag[2], frag[3]);
        }
    }
}

// out (16 x HS) += p (16 x 64, accumulator layout, rounded to BF16 here) · `b` (64 x HS, k-major)
template <int HS>
__device__ __forceinline__ void flash_accumulate(float out[HS / 8][4], const float p[8][4], const FlashTile<HS>& b) {
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
        // the accumulators of two neighbouring n-tiles are exactly an A fragment of a 16x16 tile
        uint32_t a[4] = {pack_bf16x2(p[2 * ks][0], p[2 * ks][1]), pack_bf16x2(p[2 * ks][2], p[2 * ks][3]),
                         pack_bf16x2(p[2 * ks + 1][0], p[2 * ks + 1][1]), pack_bf16x2(p[2 * ks + 1][2], p[2 * ks + 1][3])};
#pragma unroll
        for (int dp = 0; dp < HS / 16; dp++) {
            uint32_t frag[4];
            b.b_fragments_k_major(frag, ks, 16 * dp);
            mma_bf16_16x8x16(out[2 * dp], a, frag[0], frag[1]);
            mma_bf16_16x8x16(out[2 * dp + 1], a, frag[2], frag[3]);
        }
    }
}

// Where a thread block of the kernels below works, from its grid position (64-row block, head, batch row): the
// block (heaviest causal blocks first if asked), the head's columns of qkv, the batch row's key tokens (BERT)
// or null, and the two rows (g and g + 8 of the warp's 16) that this thread's accumulator values belong to
template <int HS> struct FlashBlock {
    int blocks, block, h, b, C, warp, lane, first_row;
    int rows[2];
    const bf16* q_base;
    const int* tokens;
    float scale_log2;
    __device__ __forceinline__ FlashBlock(const bf16* qkv, const int* key_tokens, int T_, int NH, float scale,
                                          bool heaviest_first)
        : blocks(gridDim.x), block(heaviest_first ? gridDim.x - 1 - blockIdx.x : blockIdx.x), h(blockIdx.y),
          b(blockIdx.z), C(NH * HS), warp(threadIdx.x / 32), lane(threadIdx.x % 32), first_row(block * FLASH_ROWS),
          q_base(qkv + (long)b * T_ * 3 * C + h * HS), tokens(key_tokens ? key_tokens + (long)b * T_ : nullptr),
          scale_log2(scale * FLASH_LOG2E) {
        rows[0] = first_row + warp * 16 + lane / 4;
        rows[1] = rows[0] + 8;
    }
    // this thread's part of a 16 x HS accumulator, row i times scales[i], rounded to BF16 into the rows
    // rows[i] < T_ of a tensor whose row t starts at base + t·stride
    __device__ __forceinline__ void store(bf16* base, long stride, const float (&acc)[HS / 8][4],
                                          const float (&scales)[2], int T_) const {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            if (rows[i] >= T_) continue;
            bf16* row = base + rows[i] * stride;
#pragma unroll
            for (int dt = 0; dt < HS / 8; dt++) {
                *reinterpret_cast<uint32_t*>(row + dt * 8 + 2 * (lane % 4)) =
                    pack_bf16x2(acc[dt][2 * i] * scales[i], acc[dt][2 * i + 1] * scales[i]);
            }
        }
    }
    // dK (times the score scale) and dV of this thread's rows into dqkv's k and v parts
    __device__ __forceinline__ void store_key_gradients(bf16* dqkv, const float (&dk)[HS / 8][4],
                                                        const float (&dv)[HS / 8][4], float scale, int T_) const {
        bf16* dqkv_head = dqkv + (long)b * T_ * 3 * C + h * HS;
        store(dqkv_head + C, 3L * C, dk, {scale, scale}, T_);
        store(dqkv_head + 2 * C, 3L * C, dv, {1.0f, 1.0f}, T_);
    }
};

// One step of the kernels' double-buffered loops over blocks: once every warp is done with the other buffer,
// load(next, other buffer) starts the next block's copies into it (if next < end); then this block's copies
// are waited for and made visible to every thread
template <typename Load>
__device__ __forceinline__ void flash_pipeline_step(int next, int end, int buffer, Load load) {
    __syncthreads();
    if (next < end) {
        load(next, buffer ^ 1);
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
    __syncthreads();
}

// One key block of the online softmax: s (16 x 64 scores in scaled-log2 units, −inf where hidden) becomes
// exp2(s − the rows' running maximum); the running maximum and this thread's part of the row sums move on,
// and the output accumulators o are rescaled to the new maximum
template <int HS>
__device__ __forceinline__ void flash_softmax_step(float s[8][4], float o[HS / 8][4], float row_max[2], float row_sum[2]) {
    float block_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) block_max[e / 2] = fmaxf(block_max[e / 2], s[nt][e]);
    float rescale[2], subtract[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {  // the 4 threads of a quad hold one row's 64 columns
        block_max[i] = fmaxf(block_max[i], __shfl_xor_sync(0xffffffff, block_max[i], 1));
        block_max[i] = fmaxf(block_max[i], __shfl_xor_sync(0xffffffff, block_max[i], 2));
        float new_max = fmaxf(row_max[i], block_max[i]);
        subtract[i] = new_max == -INFINITY ? 0.0f : new_max;  // a row with nothing visible yet stays 0
        rescale[i] = fast_exp2(row_max[i] - subtract[i]);
        row_max[i] = new_max;
        row_sum[i] *= rescale[i];
    }
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            s[nt][e] = fast_exp2(s[nt][e] - subtract[e / 2]);
            row_sum[e / 2] += s[nt][e];
        }
#pragma unroll
    for (int dt = 0; dt < HS / 8; dt++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[dt][e] *= rescale[e / 2];
}

// the end of the forward for this thread's two rows: the row sums completed over the quad, lse2 written
// (+inf for a row with no visible key: every recomputed probability is then 0), and o divided by the sums
template <int HS>
__device__ __forceinline__ void flash_forward_finish(const FlashBlock<HS>& f, bf16* out, float* lse2, float (&o)[HS / 8][4],
                                                     const float row_max[2], float row_sum[2], int T_, int NH) {
    float inv[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        row_sum[i] += __shfl_xor_sync(0xffffffff, row_sum[i], 1);
        row_sum[i] += __shfl_xor_sync(0xffffffff, row_sum[i], 2);
        inv[i] = row_sum[i] > 0.0f ? 1.0f / row_sum[i] : 0.0f;  // no visible key: output 0
        if (f.rows[i] < T_ && f.lane % 4 == 0) {
            lse2[((long)f.b * NH + f.h) * T_ + f.rows[i]] = row_sum[i] > 0.0f ? row_max[i] + log2f(row_sum[i]) : INFINITY;
        }
    }
    f.store(out + (long)f.b * T_ * f.C + f.h * HS, f.C, o, inv, T_);
}

// Forward: out (B, T, C) and lse2 (B, NH, T) from qkv. One block per (64-query block, head, batch row), the
// heaviest causal blocks first; each warp owns 16 queries and walks the key blocks with an online softmax,
// the next key block's K and V tiles loading (cp.async, two buffers) while the current one is multiplied.
template <int HS>
__global__ void __launch_bounds__(FLASH_THREADS) flash_attention_forward_kernel(bf16* out, float* lse2, const bf16* qkv,
                                                                                const int* key_tokens, int T_, int NH,
                                                                                float scale) {
    __shared__ FlashTile<HS> k_tiles[2], v_tiles[2];
    const FlashBlock<HS> f(qkv, key_tokens, T_, NH, scale, true);
    const long stride = 3L * f.C;
    auto load_key_block = [&](int kb, int buffer) {
        k_tiles[buffer].load_async(f.q_base + f.C, stride, kb * FLASH_ROWS, T_);
        v_tiles[buffer].load_async(f.q_base + 2 * f.C, stride, kb * FLASH_ROWS, T_);
        cp_async_commit();
    };
    v_tiles[1].load_async(f.q_base, stride, f.first_row, T_);  // the queries, through a buffer not yet in use
    cp_async_commit();
    load_key_block(0, 0);
    cp_async_wait<1>();
    __syncthreads();
    uint32_t q[HS / 16][4];
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++) v_tiles[1].a_fragment(q[kk], f.warp * 16, kk);
    float o[HS / 8][4] = {};
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};  // row_sum: this thread's columns
    int key_blocks = key_tokens ? f.blocks : f.block + 1;
    for (int kb = 0; kb < key_blocks; kb++) {
        const int buffer = kb % 2;
        flash_pipeline_step(kb + 1, key_blocks, buffer, load_key_block);
        float s[8][4];
        flash_scores<HS>(s, q, k_tiles[buffer]);
        auto scale_and_mask = [&](auto masked) {  // std::true_type: the pairs hidden from each other get −inf
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int key = kb * FLASH_ROWS + nt * 8 + 2 * (f.lane % 4) + e % 2;
                    bool hidden = masked && !flash_visible(f.rows[e / 2], key, T_, f.tokens);
                    s[nt][e] = hidden ? -INFINITY : s[nt][e] * f.scale_log2;
                }
        };
        // only the diagonal block (causal) or [PAD] keys (BERT) hide anything: keys past T_ lie in the last block
        if (key_tokens || kb == f.block) scale_and_mask(std::true_type());
        else scale_and_mask(std::false_type());
        flash_softmax_step<HS>(s, o, row_max, row_sum);
        flash_accumulate<HS>(o, s, v_tiles[buffer]);
    }
    flash_forward_finish<HS>(f, out, lse2, o, row_max, row_sum, T_, NH);
}

// dot (B, NH, T) = Σ_d dout·out per query row and head, in FP32 (the softmax backward's row term);
// one thread per (batch, token, head)
template <int HS>
__global__ void flash_attention_dot_kernel(float* dot, const bf16* dout, const bf16* out, int B, int T_, int NH) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)B * T_ * NH) return;
    int h = i % NH;
    long bt = i / NH;
    const uint4* g = reinterpret_cast<const uint4*>(dout + bt * NH * HS + h * HS);
    const uint4* y = reinterpret_cast<const uint4*>(out + bt * NH * HS + h * HS);
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < HS / 8; c++) {
        float gv[8], yv[8];
        unpack_bf16x8(gv, g[c]);
        unpack_bf16x8(yv, y[c]);
#pragma unroll
        for (int j = 0; j < 8; j++) sum += gv[j] * yv[j];
    }
    long b = bt / T_, t = bt % T_;
    dot[(b * NH + h) * T_ + t] = sum;
}

// dK, dV of one 64-key block: one block per (key block, head, batch row); each warp owns 16 keys and walks
// the query blocks that see them, recomputing Pᵀ = exp2(K·Qᵀ·scale − lse2) and dPᵀ = V·dOᵀ in registers,
// the next query block's Q, dO, lse2 and dot loading (cp.async, two buffers) while the current one is used.
template <int HS>
__global__ void __launch_bounds__(FLASH_THREADS) flash_attention_backward_kv_kernel(
    bf16* dqkv, const bf16* qkv, const bf16* dout, const float* lse2, const float* dot, const int* key_tokens, int T_,
    int NH, float scale) {
    __shared__ FlashTile<HS> q_tiles[2], dout_tiles[2];
    __shared__ float lse_s[2][FLASH_ROWS], dot_s[2][FLASH_ROWS];
    const FlashBlock<HS> f(qkv, key_tokens, T_, NH, scale, false);
    const long stride = 3L * f.C;
    const bf16* dout_base = dout + (long)f.b * T_ * f.C + f.h * HS;
    const float* lse_row = lse2 + ((long)f.b * NH + f.h) * T_;
    const float* dot_row = dot + ((long)f.b * NH + f.h) * T_;
    // rows past T_ get zeros: their probabilities are masked to 0 below
    auto load_query_block = [&](int qb, int buffer) {
        const int q0 = qb * FLASH_ROWS;
        q_tiles[buffer].load_async(f.q_base, stride, q0, T_);
        dout_tiles[buffer].load_async(dout_base, f.C, q0, T_);
        if (threadIdx.x < FLASH_ROWS) {
            bool real = q0 + threadIdx.x < T_;
            cp_async_4(&lse_s[buffer][threadIdx.x], lse_row + (real ? q0 + threadIdx.x : 0), real ? 4 : 0);
            cp_async_4(&dot_s[buffer][threadIdx.x], dot_row + (real ? q0 + threadIdx.x : 0), real ? 4 : 0);
        }
        cp_async_commit();
    };
    const int first = key_tokens ? 0 : f.block;
    q_tiles[1].load_async(f.q_base + f.C, stride, f.first_row, T_);  // keys and values, through buffers not
    dout_tiles[1].load_async(f.q_base + 2 * f.C, stride, f.first_row, T_);  // yet in use
    cp_async_commit();
    load_query_block(first, 0);
    cp_async_wait<1>();
    __syncthreads();
    uint32_t k[HS / 16][4], v[HS / 16][4];  // this warp's 16 keys and values as A operands
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++) {
        q_tiles[1].a_fragment(k[kk], f.warp * 16, kk);
        dout_tiles[1].a_fragment(v[kk], f.warp * 16, kk);
    }
    float dk[HS / 8][4] = {}, dv[HS / 8][4] = {};
    for (int qb = first; qb < f.blocks; qb++) {
        const int q0 = qb * FLASH_ROWS, buffer = (qb - first) % 2;
        flash_pipeline_step(qb + 1, f.blocks, buffer, load_query_block);
        const FlashTile<HS>& q_tile = q_tiles[buffer];
        const FlashTile<HS>& dout_tile = dout_tiles[buffer];
        float p[8][4], dp[8][4];
        flash_scores<HS>(p, k, q_tile);      // Sᵀ: rows = keys, columns = queries
        flash_scores<HS>(dp, v, dout_tile);  // dPᵀ = V·dOᵀ
        auto probabilities = [&](auto masked) {  // std::true_type: the pairs hidden from each other get 0
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int column = nt * 8 + 2 * (f.lane % 4) + e % 2;
                    bool hidden = masked && !(flash_visible(q0 + column, f.rows[e / 2], T_, f.tokens) && q0 + column < T_);
                    p[nt][e] = hidden ? 0.0f : fast_exp2(p[nt][e] * f.scale_log2 - lse_s[buffer][column]);
                    dp[nt][e] = p[nt][e] * (dp[nt][e] - dot_s[buffer][column]);  // dSᵀ
                }
        };
        // only the diagonal block (causal), [PAD] keys (BERT) or queries past T_ (the last block) hide anything
        if (key_tokens || qb == f.block || q0 + FLASH_ROWS > T_) probabilities(std::true_type());
        else probabilities(std::false_type());
        flash_accumulate<HS>(dv, p, dout_tile);  // dV += Pᵀ·dO
        flash_accumulate<HS>(dk, dp, q_tile);    // dK += dSᵀ·Q (scaled below)
    }
    f.store_key_gradients(dqkv, dk, dv, scale, T_);
}

// dQ of one 64-query block: one block per (query block, head, batch row), heaviest first; each warp owns 16
// queries and walks the key blocks they see, recomputing P and dP = dO·Vᵀ in registers, the next key
// block's K and V tiles loading (cp.async, two buffers) while the current one is used
template <int HS>
__global__ void __launch_bounds__(FLASH_THREADS) flash_attention_backward_q_kernel(
    bf16* dqkv, const bf16* qkv, const bf16* dout, const float* lse2, const float* dot, const int* key_tokens, int T_,
    int NH, float scale) {
    __shared__ FlashTile<HS> k_tiles[2], v_tiles[2];
    const FlashBlock<HS> f(qkv, key_tokens, T_, NH, scale, true);
    const long stride = 3L * f.C;
    float row_lse[2], row_dot[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        long index = ((long)f.b * NH + f.h) * T_ + f.rows[i];
        row_lse[i] = f.rows[i] < T_ ? lse2[index] : INFINITY;
        row_dot[i] = f.rows[i] < T_ ? dot[index] : 0.0f;
    }
    auto load_key_block = [&](int kb, int buffer) {
        k_tiles[buffer].load_async(f.q_base + f.C, stride, kb * FLASH_ROWS, T_);
        v_tiles[buffer].load_async(f.q_base + 2 * f.C, stride, kb * FLASH_ROWS, T_);
        cp_async_commit();
    };
    k_tiles[1].load_async(f.q_base, stride, f.first_row, T_);  // queries and output gradients, through
    v_tiles[1].load_async(dout + (long)f.b * T_ * f.C + f.h * HS, f.C, f.first_row, T_);  // buffers not yet in use
    cp_async_commit();
    load_key_block(0, 0);
    cp_async_wait<1>();
    __syncthreads();
    uint32_t q[HS / 16][4], g[HS / 16][4];  // this warp's 16 queries and output gradients as A operands
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++) {
        k_tiles[1].a_fragment(q[kk], f.warp * 16, kk);
        v_tiles[1].a_fragment(g[kk], f.warp * 16, kk);
    }
    float dq[HS / 8][4] = {};
    int key_blocks = key_tokens ? f.blocks : f.block + 1;
    for (int kb = 0; kb < key_blocks; kb++) {
        const int buffer = kb % 2;
        flash_pipeline_step(kb + 1, key_blocks, buffer, load_key_block);
        float p[8][4], ds[8][4];
        flash_scores<HS>(p, q, k_tiles[buffer]);
        flash_scores<HS>(ds, g, v_tiles[buffer]);  // dP = dO·Vᵀ
        auto score_gradients = [&](auto masked) {  // std::true_type: the pairs hidden from each other get 0
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int key = kb * FLASH_ROWS + nt * 8 + 2 * (f.lane % 4) + e % 2;
                    bool hidden = masked && !flash_visible(f.rows[e / 2], key, T_, f.tokens);
                    float prob = hidden ? 0.0f : fast_exp2(p[nt][e] * f.scale_log2 - row_lse[e / 2]);
                    ds[nt][e] = prob * (ds[nt][e] - row_dot[e / 2]);
                }
        };
        // only the diagonal block (causal) or [PAD] keys (BERT) hide anything: keys past T_ lie in the last block
        if (key_tokens || kb == f.block) score_gradients(std::true_type());
        else score_gradients(std::false_type());
        flash_accumulate<HS>(dq, ds, k_tiles[buffer]);  // dQ += dS·K (scaled below)
    }
    f.store(dqkv + (long)f.b * T_ * 3 * f.C + f.h * HS, 3L * f.C, dq, {scale, scale}, T_);
}

// the head sizes the kernels are built for (the trainer's other shapes, and FP32 mode, take the cuBLASLt path)
inline bool flash_attention_supported(int hs) { return hs == 16 || hs == 32 || hs == 64; }

#define FLASH_DISPATCH(hs, launch) \
    switch (hs) {                  \
        case 16: launch(16); break; \
        case 32: launch(32); break; \
        default: launch(64); break; \
    }

// out (B, T, C), lse2 (B, NH, T) = attention of qkv (B, T, 3C)
inline void flash_attention_forward(bf16* out, float* lse2, const bf16* qkv, const int* key_tokens, int B, int T_,
                                    int C, int NH, cudaStream_t stream) {
    int hs = C / NH;
    dim3 grid(CEIL_DIV(T_, FLASH_ROWS), NH, B);
    float scale = 1.0f / sqrtf((float)hs);
#define LAUNCH(HS) flash_attention_forward_kernel<HS><<<grid, FLASH_THREADS, 0, stream>>>(out, lse2, qkv, key_tokens, T_, NH, scale)
    FLASH_DISPATCH(hs, LAUNCH)
#undef LAUNCH
    cudaCheck(cudaGetLastError());
}

// dqkv (B, T, 3C) from dout (B, T, C), the forward's out and lse2; dot: (B, NH, T) FP32 scratch
inline void flash_attention_backward(bf16* dqkv, float* dot, const bf16* dout, const bf16* out, const bf16* qkv,
                                     const float* lse2, const int* key_tokens, int B, int T_, int C, int NH,
                                     cudaStream_t stream) {
    int hs = C / NH;
    dim3 grid(CEIL_DIV(T_, FLASH_ROWS), NH, B);
    float scale = 1.0f / sqrtf((float)hs);
    long rows = (long)B * T_ * NH;
#define LAUNCH(HS)                                                                                                    \
    flash_attention_dot_kernel<HS><<<CEIL_DIV(rows, 256), 256, 0, stream>>>(dot, dout, out, B, T_, NH);             \
    flash_attention_backward_kv_kernel<HS><<<grid, FLASH_THREADS, 0, stream>>>(dqkv, qkv, dout, lse2, dot, key_tokens, \
                                                                               T_, NH, scale);                      \
    flash_attention_backward_q_kernel<HS><<<grid, FLASH_THREADS, 0, stream>>>(dqkv, qkv, dout, lse2, dot, key_tokens, \
                                                                              T_, NH, scale)
    FLASH_DISPATCH(hs, LAUNCH)
#undef LAUNCH
    cudaCheck(cudaGetLastError());
}
