// Token + position embedding. Forward: out[b,t,:] = wte[token[b,t],:] + wpe[t,:], one thread per element.
// Backward without atomics, so runs repeat bit for bit: positions are bucketed by token on the host
// (a counting sort of the batch, which the host holds anyway), then one block per distinct token sums its
// positions' gradients in position order; dwpe sums over the batch, one thread per (t, c).
#pragma once
#include <vector>
#include "common.h"

template <typename T>
__global__ void encoder_forward_kernel(T* out, const int* tokens, const T* wte, const T* wpe, int B, int T_, int C) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)B * T_ * C) return;
    long bt = i / C;
    int c = i % C, t = bt % T_;
    out[i] = from_float<T>(to_float(wte[(long)tokens[bt] * C + c]) + to_float(wpe[(long)t * C + c]));
}

template <typename T>
void encoder_forward(T* out, const int* tokens, const T* wte, const T* wpe, int B, int T_, int C, cudaStream_t stream) {
    NVTX_RANGE_FN();
    long n = (long)B * T_ * C;
    encoder_forward_kernel<<<CEIL_DIV(n, 256), 256, 0, stream>>>(out, tokens, wte, wpe, B, T_, C);
    cudaCheck(cudaGetLastError());
}

// the batch's positions grouped by token: bucket b holds token bucket_token[b] at positions
// positions[bucket_start[b] .. bucket_start[b+1]), in increasing order. Built on the host per micro-batch.
struct TokenBuckets {
    std::vector<int> bucket_token, bucket_start, positions;  // host copies, uploaded into one device buffer
    int count() const { return (int)bucket_token.size(); }
};

inline void token_buckets_build(TokenBuckets* buckets, const int* tokens, int n, int vocab) {
    std::vector<int> counts(vocab, 0);
    for (int i = 0; i < n; i++) counts[tokens[i]]++;
    buckets->bucket_token.clear();
    buckets->bucket_start.assign(1, 0);
    std::vector<int> offset(vocab, 0);
    for (int v = 0; v < vocab; v++) {
        if (counts[v] == 0) continue;
        offset[v] = buckets->bucket_start.back();
        buckets->bucket_token.push_back(v);
        buckets->bucket_start.push_back(offset[v] + counts[v]);
    }
    buckets->positions.resize(n);
    for (int i = 0; i < n; i++) buckets->positions[offset[tokens[i]]++] = i;
}

template <typename T>
__global__ void wte_backward_kernel(float* dwte, const T* dout, const int* bucket_token, const int* bucket_start,
                                    const int* positions, int C) {
    int bucket = blockIdx.x;
    int begin = bucket_start[bucket], end = bucket_start[bucket + 1];
    float* row = dwte + (long)bucket_token[bucket] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float sum = 0.0f;
        for (int p = begin; p < end; p++) sum += to_float(dout[(long)positions[p] * C + c]);
        row[c] += sum;
    }
}

template <typename T>
__global__ void wpe_backward_kernel(float* dwpe, const T* dout, int B, int T_, int C) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= T_ * C) return;
    float sum = 0.0f;
    for (int b = 0; b < B; b++) sum += to_float(dout[(long)b * T_ * C + i]);
    dwpe[i] += sum;
}

// device_buckets: the bucket arrays concatenated (token, start, positions), uploaded by the caller
template <typename T>
void encoder_backward(float* dwte, float* dwpe, const T* dout, const TokenBuckets& buckets, const int* device_buckets,
                      int B, int T_, int C, cudaStream_t stream) {
    NVTX_RANGE_FN();
    int n_buckets = buckets.count();
    const int* d_token = device_buckets;
    const int* d_start = d_token + n_buckets;
    const int* d_positions = d_start + n_buckets + 1;
    wte_backward_kernel<<<n_buckets, 256, 0, stream>>>(dwte, dout, d_token, d_start, d_positions, C);
    cudaCheck(cudaGetLastError());
    wpe_backward_kernel<<<CEIL_DIV(T_ * C, 256), 256, 0, stream>>>(dwpe, dout, B, T_, C);
    cudaCheck(cudaGetLastError());
}
