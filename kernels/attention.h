// Multi-head self-attention with the scores and softmax in FP32, two paths behind one pair of calls:
// BF16 activations with head size 16, 32 or 64 take the fused kernels of flash_attention.h (no (T, T) tensor
// in memory); FP32 mode and other head sizes take the cuBLASLt path here: q·kᵀ and att·v are batched
// cuBLASLt products over (batch × heads), the softmax and the layout permutations are kernels below.
// Causal (GPT) or bidirectional with [PAD] keys masked (BERT: pass the batch's tokens as key_tokens).
#pragma once
#include <type_traits>
#include "common.h"
#include "flash_attention.h"
#include "layernorm.h"
#include "matmul.h"
#include "mlm.h"

// element i of a (B, NH, T, hs) tensor: its offset in (B, T, NH*hs) with `parts` tensors interleaved per
// token (parts = 3 for the qkv layout (B, T, 3, NH, hs), 1 for (B, T, C))
__device__ __forceinline__ long heads_to_tokens_index(long i, int T_, int NH, int hs, int parts) {
    int d = i % hs, t = (i / hs) % T_, h = (i / ((long)hs * T_)) % NH;
    long b = i / ((long)hs * T_ * NH);
    return ((b * T_ + t) * parts * NH + h) * hs + d;
}

// qkv (B, T, 3, NH, hs) -> q, k, v each (B, NH, T, hs); one thread per element of q
template <typename T>
__global__ void permute_qkv_kernel(T* q, T* k, T* v, const T* qkv, int B, int T_, int NH, int hs) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)B * NH * T_ * hs) return;
    long src = heads_to_tokens_index(i, T_, NH, hs, 3);
    q[i] = qkv[src];
    k[i] = qkv[src + (long)NH * hs];
    v[i] = qkv[src + 2L * NH * hs];
}

// the reverse, for gradients: dq, dk, dv (B, NH, T, hs) -> dqkv (B, T, 3, NH, hs)
template <typename T>
__global__ void permute_qkv_backward_kernel(T* dqkv, const T* dq, const T* dk, const T* dv, int B, int T_, int NH, int hs) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)B * NH * T_ * hs) return;
    long dst = heads_to_tokens_index(i, T_, NH, hs, 3);
    dqkv[dst] = dq[i];
    dqkv[dst + (long)NH * hs] = dk[i];
    dqkv[dst + 2L * NH * hs] = dv[i];
}

// (B, NH, T, hs) <-> (B, T, NH*hs); one thread per element; `to_heads` picks the direction
template <typename T>
__global__ void permute_heads_kernel(T* out, const T* inp, int B, int T_, int NH, int hs, bool to_heads) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)B * NH * T_ * hs) return;
    long flat = heads_to_tokens_index(i, T_, NH, hs, 1);
    if (to_heads) out[i] = inp[flat]; else out[flat] = inp[i];
}

// att = softmax over keys of the (already scaled) FP32 scores, masked; one warp per (b, h, query) row
template <typename T>
__global__ void softmax_forward_kernel(T* att, const float* preatt, const int* key_tokens, int B, int NH, int T_) {
    long row = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= (long)B * NH * T_) return;
    int t = row % T_;
    long b = row / ((long)NH * T_);
    const float* x = preatt + row * T_;
    const int* tokens = key_tokens ? key_tokens + b * T_ : nullptr;
    auto visible = [&](int s) { return tokens ? tokens[s] != TOKEN_PAD : s <= t; };
    float maxval = -INFINITY;
    for (int s = lane; s < T_; s += 32) if (visible(s)) maxval = fmaxf(maxval, x[s]);
    for (int offset = 16; offset > 0; offset /= 2) maxval = fmaxf(maxval, __shfl_xor_sync(0xffffffff, maxval, offset));
    float sum = 0.0f;
    for (int s = lane; s < T_; s += 32) if (visible(s)) sum += expf(x[s] - maxval);
    sum = warp_sum(sum);
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    T* y = att + row * T_;
    for (int s = lane; s < T_; s += 32) y[s] = from_float<T>(visible(s) ? expf(x[s] - maxval) * inv : 0.0f);
}

// dpreatt = att · (datt − Σ att·datt) per row; masked entries have att = 0 and get 0
template <typename T>
__global__ void softmax_backward_kernel(T* dpreatt, const float* datt, const T* att, long rows, int T_) {
    long row = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* g = datt + row * T_;
    const T* p = att + row * T_;
    float dot = 0.0f;
    for (int s = lane; s < T_; s += 32) dot += to_float(p[s]) * g[s];
    dot = warp_sum(dot);
    for (int s = lane; s < T_; s += 32) dpreatt[row * T_ + s] = from_float<T>(to_float(p[s]) * (g[s] - dot));
}

// which path activations of type T with head size hs take
template <typename T> bool attention_is_flash(int hs) {
    return std::is_same_v<T, __nv_bfloat16> && flash_attention_supported(hs);
}

// what one layer's attention keeps for its backward: the probabilities att (B, NH, T, T) on the cuBLASLt
// path, the rows' lse2 (B, NH, T) on the flash path; the other is null
template <typename T> struct AttentionSaved {
    T* att;
    float* lse2;
};

// scratch buffers of one layer's attention (reused across layers); the cuBLASLt path's, or flash's dot
template <typename T> struct AttentionScratch {
    T *q, *k, *v, *y_heads;  // (B, NH, T, hs) each
    float* scores;           // (B, NH, T, T): preatt in the forward, datt in the backward
    T* dscores;              // (B, NH, T, T)
    T *dq, *dk, *dv;         // (B, NH, T, hs) each
    float* dot;              // (B, NH, T): flash path, Σ dout·out per row
};

// the cuBLASLt path: out (B, T, C) = attention of qkv (B, T, 3C); att (B, NH, T, T) kept for the backward
template <typename T>
void attention_forward_cublaslt(T* out, T* att, const T* qkv, const int* key_tokens, int B, int T_, int C, int NH,
                                AttentionScratch<T>& s, cudaStream_t stream) {
    int hs = C / NH;
    long n = (long)B * T_ * C;
    int batch = B * NH;
    float scale = 1.0f / sqrtf((float)hs);
    permute_qkv_kernel<<<CEIL_DIV(n, 256), 256, 0, stream>>>(s.q, s.k, s.v, qkv, B, T_, NH, hs);
    cudaCheck(cudaGetLastError());
    matmul_lt(s.scores, s.k, s.q, (const float*)nullptr, T_, T_, hs, true, false, hs, hs, T_, scale, 0.0f, batch,
              (long)T_ * hs, (long)T_ * hs, (long)T_ * T_, stream);
    softmax_forward_kernel<<<CEIL_DIV((long)batch * T_, 8), 256, 0, stream>>>(att, s.scores, key_tokens, B, NH, T_);
    cudaCheck(cudaGetLastError());
    matmul_lt(s.y_heads, s.v, att, (const T*)nullptr, hs, T_, T_, false, false, hs, T_, hs, 1.0f, 0.0f, batch,
              (long)T_ * hs, (long)T_ * T_, (long)T_ * hs, stream);
    permute_heads_kernel<<<CEIL_DIV(n, 256), 256, 0, stream>>>(out, s.y_heads, B, T_, NH, hs, false);
    cudaCheck(cudaGetLastError());
}

// the cuBLASLt path's backward: dqkv (B, T, 3C) from dout (B, T, C); recomputes q, k, v from qkv
template <typename T>
void attention_backward_cublaslt(T* dqkv, const T* dout, const T* qkv, const T* att, int B, int T_, int C, int NH,
                                 AttentionScratch<T>& s, cudaStream_t stream) {
    int hs = C / NH;
    long n = (long)B * T_ * C;
    int batch = B * NH;
    float scale = 1.0f / sqrtf((float)hs);
    permute_qkv_kernel<<<CEIL_DIV(n, 256), 256, 0, stream>>>(s.q, s.k, s.v, qkv, B, T_, NH, hs);
    permute_heads_kernel<<<CEIL_DIV(n, 256), 256, 0, stream>>>(s.y_heads, dout, B, T_, NH, hs, true);
    cudaCheck(cudaGetLastError());
    // datt = dy · vᵀ ; dv = attᵀ · dy
    matmul_lt(s.scores, s.v, s.y_heads, (const float*)nullptr, T_, T_, hs, true, false, hs, hs, T_, 1.0f, 0.0f, batch,
              (long)T_ * hs, (long)T_ * hs, (long)T_ * T_, stream);
    matmul_lt(s.dv, s.y_heads, att, (const T*)nullptr, hs, T_, T_, false, true, hs, T_, hs, 1.0f, 0.0f, batch,
              (long)T_ * hs, (long)T_ * T_, (long)T_ * hs, stream);
    softmax_backward_kernel<<<CEIL_DIV((long)batch * T_, 8), 256, 0, stream>>>(s.dscores, s.scores, att,
                                                                               (long)batch * T_, T_);
    cudaCheck(cudaGetLastError());
    // dq = dpreatt · k · scale ; dk = dpreattᵀ · q · scale
    matmul_lt(s.dq, s.k, s.dscores, (const T*)nullptr, hs, T_, T_, false, false, hs, T_, hs, scale, 0.0f, batch,
              (long)T_ * hs, (long)T_ * T_, (long)T_ * hs, stream);
    matmul_lt(s.dk, s.q, s.dscores, (const T*)nullptr, hs, T_, T_, false, true, hs, T_, hs, scale, 0.0f, batch,
              (long)T_ * hs, (long)T_ * T_, (long)T_ * hs, stream);
    permute_qkv_backward_kernel<<<CEIL_DIV(n, 256), 256, 0, stream>>>(dqkv, s.dq, s.dk, s.dv, B, T_, NH, hs);
    cudaCheck(cudaGetLastError());
}

// out (B, T, C) = attention of qkv (B, T, 3C); `saved` is filled for the backward
template <typename T>
void attention_forward(T* out, AttentionSaved<T> saved, const T* qkv, const int* key_tokens, int B, int T_, int C,
                       int NH, AttentionScratch<T>& s, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        if (attention_is_flash<T>(C / NH)) {
            flash_attention_forward(out, saved.lse2, qkv, key_tokens, B, T_, C, NH, stream);
            return;
        }
    }
    attention_forward_cublaslt(out, saved.att, qkv, key_tokens, B, T_, C, NH, s, stream);
}

// dqkv (B, T, 3C) from dout (B, T, C), the forward's qkv, out and saved state
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, AttentionSaved<T> saved,
                        const int* key_tokens, int B, int T_, int C, int NH, AttentionScratch<T>& s,
                        cudaStream_t stream) {
    NVTX_RANGE_FN();
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        if (attention_is_flash<T>(C / NH)) {
            flash_attention_backward(dqkv, s.dot, dout, out, qkv, saved.lse2, key_tokens, B, T_, C, NH, stream);
            return;
        }
    }
    attention_backward_cublaslt(dqkv, dout, qkv, saved.att, B, T_, C, NH, s, stream);
}
