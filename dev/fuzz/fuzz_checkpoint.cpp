// libFuzzer harness for the checkpoint readers (kernels/model_file.h): any file content, read as an llm.c model
// file and as a state file of a fixed small run, must load consistently (weights sized by a plausible header
// config, a state file exactly as long as its arrays) or fail with a one-line error — never crash or overread.
//   clang++ -g -O1 -fsanitize=fuzzer,address,undefined -Ikernels dev/fuzz/fuzz_checkpoint.cpp
#include <stdio.h>
#include "fuzz_file.h"
#include "model_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string file = fuzz_input_file("fuzz_checkpoint", data, size);
    if (file.empty()) return 0;
    const char* path = file.c_str();
    GPTConfig cfg;
    std::vector<float> weights;
    if (read_model_file(path, &cfg, &weights)) {
        size_t sizes[NUM_PARAMETER_TENSORS], n = 0;
        fill_parameter_sizes(sizes, cfg);
        for (size_t s : sizes) n += s;
        if (weights.size() != n || cfg.channels % cfg.num_heads != 0 || cfg.padded_vocab_size < cfg.vocab_size) __builtin_trap();
    }
    // the state file of a run with L=1, C=8, NH=1, maxT=16, V=Vp=256, bf16, no LSQ steps
    GPTConfig run = {16, 256, 256, 1, 1, 8, 0, 0};
    size_t sizes[NUM_PARAMETER_TENSORS], total = 0;
    fill_parameter_sizes(sizes, run);
    for (size_t s : sizes) total += s;
    int32_t header[256];
    long file_size;
    FILE* f = open_checked(path, header, STATE_MAGIC, "state file", &file_size);
    if (f) {
        if (state_header_check(header, file_size, run, PRECISION_BF16, total, path)) {
            if ((size_t)file_size != 1024 + 3 * total * 4) __builtin_trap();
            std::vector<float> buffer(total);
            for (int i = 0; i < 3; i++) {
                if (!read_exact(f, buffer.data(), total * 4, path)) __builtin_trap();
            }
        }
        fclose(f);
    }
    remove(path);
    return 0;
}
