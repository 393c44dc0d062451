// What the dev/ benchmarks share: timing with CUDA events, and how many copies of a launch's buffers to
// rotate through so that every timed launch finds its data cold in L2 (as in training, where every layer's
// tensors pass through L2 before the next layer's).
#pragma once
#include <vector>
#include "../kernels/common.h"

// mean milliseconds of launch(i) over `repeats` back-to-back launches i = 0, 1, ..., after `warmup` untimed ones
template <typename Launch> float mean_launch_ms(Launch launch, int warmup, int repeats) {
    for (int i = 0; i < warmup; i++) launch(i);
    cudaEvent_t start, stop;
    cudaCheck(cudaEventCreate(&start));
    cudaCheck(cudaEventCreate(&stop));
    cudaCheck(cudaEventRecord(start));
    for (int i = 0; i < repeats; i++) launch(i);
    cudaCheck(cudaEventRecord(stop));
    cudaCheck(cudaEventSynchronize(stop));
    float ms;
    cudaCheck(cudaEventElapsedTime(&ms, start, stop));
    cudaCheck(cudaEventDestroy(start));
    cudaCheck(cudaEventDestroy(stop));
    return ms / repeats;
}

// copies of bytes_per_launch needed so that the launches in between evict one copy from L2 (twice its size)
inline int rotating_copies(size_t bytes_per_launch) {
    int l2_bytes;
    cudaCheck(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, 0));
    if (bytes_per_launch >= 2 * (size_t)l2_bytes) return 1;
    return 1 + (int)CEIL_DIV(2 * (size_t)l2_bytes, bytes_per_launch);
}

// which versions a dev program's command line asks to validate and time: none named = all of 1..n_versions,
// one number = that one; anything else prints the usage and returns false
inline bool dev_versions(int argc, char** argv, int n_versions, int* first, int* last) {
    *first = 1;
    *last = n_versions;
    if (argc > 1) *first = *last = atoi(argv[1]);
    if (argc > 2 || *first < 1 || *last > n_versions) {
        fprintf(stderr, "usage: %s [--check | VERSION (1 to %d)]\n", argv[0], n_versions);
        return false;
    }
    return true;
}
