// libFuzzer harness for the token-shard loader (kernels/dataloader.h): any file content must give a loaded,
// valid shard (every token below the vocabulary, enough for a batch) or a one-line error, never a crash.
//   clang++ -g -O1 -fsanitize=fuzzer,address,undefined -Ikernels dev/fuzz/fuzz_shard.cpp
#include <stdio.h>
#include "fuzz_file.h"
#include "dataloader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string file = fuzz_input_file("fuzz_shard", data, size);
    if (file.empty()) return 0;
    const char* path = file.c_str();
    DataLoader loader;
    if (dataloader_init(&loader, path, 2, 8, 256, true, 1)) {
        for (uint16_t t : loader.tokens) if (t >= 256) __builtin_trap();
        if (loader.tokens.size() < 17) __builtin_trap();
        for (long batch = 0; batch < 3; batch++) {
            if (!dataloader_next_batch(&loader, batch)) __builtin_trap();
            for (int t : loader.targets) if (t < 0 || t >= 256) __builtin_trap();
        }
    }
    remove(path);
    return 0;
}
