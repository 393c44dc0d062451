// Reads a model file with train_int4's reader and writes it back with its writer (kernels/model_file.h):
//   tools/model_roundtrip IN OUT fp32|bf16
// scripts/test_llmc_format.sh compares OUT with IN byte for byte, IN written by llm.c's own exporter.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model_file.h"

int main(int argc, char** argv) {
    if (argc != 4 || (strcmp(argv[3], "fp32") && strcmp(argv[3], "bf16"))) {
        fprintf(stderr, "usage: %s IN OUT fp32|bf16\n", argv[0]);
        return EXIT_FAILURE;
    }
    GPTConfig cfg;
    std::vector<float> weights;
    if (!read_model_file(argv[1], &cfg, &weights)) return EXIT_FAILURE;
    printf("%s: maxT %d, V %d, Vp %d, L %d, NH %d, C %d, %zu parameters\n", argv[1], cfg.max_seq_len, cfg.vocab_size,
           cfg.padded_vocab_size, cfg.num_layers, cfg.num_heads, cfg.channels, weights.size());
    int version = strcmp(argv[3], "fp32") ? MODEL_VERSION_BF16 : MODEL_VERSION_FP32;
    return write_model_file(argv[2], cfg, version, weights.data(), weights.size()) ? EXIT_SUCCESS : EXIT_FAILURE;
}
