// libFuzzer harness for the classification task loader (kernels/classification_data.h): any byte string,
// read as a training file and as an evaluation file, loads or fails with a message, never crashes.
//   clang++ -g -O1 -fsanitize=fuzzer,address,undefined -Ikernels dev/fuzz/fuzz_classification.cpp
#include <stdio.h>
#include "classification_data.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    ClassificationSet train, eval;
    std::vector<std::string> known = {"a", "b", "GLOUCESTER"};
    for (int as_eval = 0; as_eval < 2; as_eval++) {
        FILE* f = fmemopen((void*)data, size, "rb");
        if (!f) return 0;
        ClassificationSet* set = as_eval ? &eval : &train;
        if (classification_read(f, "fuzz-input", as_eval ? &known : nullptr, set)) {
            int row[64];
            for (size_t i = 0; i < set->texts.size(); i++) {
                if (set->labels[i] < 0 || set->labels[i] >= (int)set->label_names.size()) __builtin_trap();
                classification_tokens(set->texts[i], 64, row);
            }
        }
        fclose(f);
    }
    return 0;
}
