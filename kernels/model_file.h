// The files of a model, host only (so the loader fuzzer can include it): the config and parameter layout that
// size them, llm.c's model file (magic 20240326; version 3 FP32, 5 BF16; header ints 2-7 as llm.c, 8-9 ours:
// BERT flag and classifier classes, 0 in llm.c's GPT-2 files) and train_int4's state file (FP32 master
// weights with INT4 mode's LSQ steps, AdamW moments, step, data position, seed, precision).
// Every reader checks the header against the file size before reading, and fails with one line naming the file.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <vector>
#include "checkpoint.h"

struct GPTConfig {
    int max_seq_len;        // maxT: rows of wpe
    int vocab_size;         // V: real tokens (256 bytes, or 50257 GPT-2 BPE)
    int padded_vocab_size;  // Vp: V rounded up to a multiple of 128 (rows of wte)
    int num_layers;         // L
    int num_heads;          // NH
    int channels;           // C
    int bert;               // 0: GPT (causal, next-token loss); 1: BERT encoder (bidirectional, [PAD] keys masked)
    int num_classes;        // BERT with a classifier on [CLS]: its classes (fine-tuning); else 0
};

enum Precision { PRECISION_FP32 = 0, PRECISION_BF16 = 1, PRECISION_INT4 = 2 };
inline const char* precision_names[] = {"fp32", "bf16", "int4"};

// the tensors in llm.c's order (so its checkpoints load), then BERT's classifier head (empty unless
// num_classes > 0, so GPT files are exactly llm.c's)
#define NUM_PARAMETER_TENSORS 18
inline const char* parameter_names[NUM_PARAMETER_TENSORS] = {
    "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
    "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb", "clsw", "clsb"};

inline void fill_parameter_sizes(size_t sizes[NUM_PARAMETER_TENSORS], const GPTConfig& cfg) {
    size_t Vp = cfg.padded_vocab_size, C = cfg.channels, maxT = cfg.max_seq_len, L = cfg.num_layers;
    size_t K = cfg.num_classes;
    size_t shapes[NUM_PARAMETER_TENSORS] = {Vp * C, maxT * C, L * C, L * C, L * 3 * C * C, L * 3 * C, L * C * C, L * C,
                                            L * C, L * C, L * 4 * C * C, L * 4 * C, L * C * 4 * C, L * C, C, C, K * C, K};
    memcpy(sizes, shapes, sizeof shapes);
}

#define MODEL_MAGIC 20240326
#define MODEL_VERSION_FP32 3
#define MODEL_VERSION_BF16 5
#define STATE_MAGIC 20261124
#define STATE_VERSION 1

inline void model_header(int32_t header[256], const GPTConfig& c, int version) {
    memset(header, 0, 256 * sizeof(int32_t));
    header[0] = MODEL_MAGIC;
    header[1] = version;
    header[2] = c.max_seq_len;
    header[3] = c.vocab_size;
    header[4] = c.num_layers;
    header[5] = c.num_heads;
    header[6] = c.channels;
    header[7] = c.padded_vocab_size;
    header[8] = c.bert;         // beyond llm.c's fields (0 in its GPT-2 files)
    header[9] = c.num_classes;
}

// reads an llm.c model file (version 3 FP32 or 5 BF16) into FP32 host weights
inline bool read_model_file(const char* path, GPTConfig* cfg, std::vector<float>* weights) {
    int32_t header[256];
    long file_size;
    FILE* f = open_checked(path, header, MODEL_MAGIC, "model file", &file_size);
    if (!f) return false;
    int version = header[1];
    *cfg = {header[2], header[3], header[7], header[4], header[5], header[6], header[8], header[9]};
    bool ok = false;
    if (version != MODEL_VERSION_FP32 && version != MODEL_VERSION_BF16) {
        fprintf(stderr, "%s: model version %d, expected 3 (FP32) or 5 (BF16)\n", path, version);
    } else if (cfg->max_seq_len <= 0 || cfg->vocab_size <= 0 || cfg->padded_vocab_size < cfg->vocab_size ||
               cfg->num_layers <= 0 || cfg->num_heads <= 0 || cfg->channels <= 0 || cfg->channels % cfg->num_heads ||
               cfg->channels > 65536 || cfg->num_layers > 1024 || cfg->padded_vocab_size > (1 << 22) ||
               (cfg->bert != 0 && cfg->bert != 1) || cfg->num_classes < 0 || cfg->num_classes > 65536 ||
               (cfg->num_classes > 0 && !cfg->bert)) {
        fprintf(stderr, "%s: implausible model config in the header\n", path);
    } else {
        size_t sizes[NUM_PARAMETER_TENSORS], n = 0;
        fill_parameter_sizes(sizes, *cfg);
        for (size_t s : sizes) n += s;
        size_t elem = version == MODEL_VERSION_FP32 ? 4 : 2;
        if ((size_t)file_size != 1024 + n * elem) {
            fprintf(stderr, "%s: %ld bytes, but the header's config needs %zu (truncated?)\n", path, file_size, 1024 + n * elem);
        } else if (elem == 4) {
            weights->resize(n);
            ok = read_exact(f, weights->data(), n * 4, path);
        } else {
            std::vector<uint16_t> raw(n);
            ok = read_exact(f, raw.data(), n * 2, path);
            weights->resize(n);
            for (size_t i = 0; ok && i < n; i++) {
                uint32_t bits = (uint32_t)raw[i] << 16;
                memcpy(&(*weights)[i], &bits, 4);
            }
        }
    }
    fclose(f);
    return ok;
}

// writes FP32 host weights as an llm.c model file: version 3 (FP32) or 5 (BF16, rounded to nearest even, as
// PyTorch's .to(torch.bfloat16) that llm.c's export uses); temp file + rename
inline bool write_model_file(const std::string& path, const GPTConfig& cfg, int version, const float* weights, size_t n) {
    int32_t header[256];
    model_header(header, cfg, version);
    if (version == MODEL_VERSION_FP32) return write_file_atomic(path, header, {{weights, n * 4}});
    std::vector<uint16_t> raw(n);
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &weights[i], 4);
        raw[i] = (uint16_t)((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
    }
    return write_file_atomic(path, header, {{raw.data(), n * 2}});
}

// what a state file records besides the values: the optimizer steps done, the train data position, the
// seed and the precision (enum Precision)
struct TrainState {
    int step;
    int shard;
    long position;
    uint32_t seed;
    int precision;
};

// a state file's header: magic, version, step, shard, position (int64 at 2 ints), seed, precision at 0-7; the
// model's maxT, V, Vp, L, NH, C at 8-13; the count of values per array (int64) at 14-15; BERT flag and classes at
// 16-17. total = parameters + LSQ steps; three FP32 arrays of it follow (master, m, v)
inline void state_header(int32_t header[256], const TrainState& st, const GPTConfig& c, size_t total) {
    memset(header, 0, 256 * sizeof(int32_t));
    int32_t fields[8] = {STATE_MAGIC, STATE_VERSION, st.step, st.shard, 0, 0, (int32_t)st.seed, st.precision};
    memcpy(header, fields, sizeof fields);
    memcpy(&header[4], &st.position, sizeof(long));
    int32_t config[6] = {c.max_seq_len, c.vocab_size, c.padded_vocab_size, c.num_layers, c.num_heads, c.channels};
    memcpy(&header[8], config, sizeof config);
    memcpy(&header[14], &total, sizeof total);
    header[16] = c.bert;
    header[17] = c.num_classes;
}

inline TrainState state_header_train_state(const int32_t header[256]) {
    TrainState st = {header[2], header[3], 0, (uint32_t)header[6], header[7]};
    memcpy(&st.position, &header[4], sizeof(long));
    return st;
}

// a state file's header against this run: version, model config, precision, and the file's size for
// total = parameters + LSQ steps values (master, m, v)
inline bool state_header_check(const int32_t header[256], long file_size, const GPTConfig& c, int precision,
                               size_t total, const char* path) {
    size_t n;
    memcpy(&n, &header[14], sizeof n);
    int32_t config[6] = {c.max_seq_len, c.vocab_size, c.padded_vocab_size, c.num_layers, c.num_heads, c.channels};
    bool same_model = memcmp(&header[8], config, sizeof config) == 0 && header[16] == c.bert && header[17] == c.num_classes;
    if (header[1] != STATE_VERSION) {
        fprintf(stderr, "%s: state version %d, expected %d\n", path, header[1], STATE_VERSION);
    } else if (!same_model || n != total) {
        fprintf(stderr, "%s: model config (maxT %d, V %d, Vp %d, L %d, NH %d, C %d, %s, %d classes) differs from this "
                "run's flags\n", path, header[8], header[9], header[10], header[11], header[12], header[13],
                header[16] ? "bert" : "gpt", header[17]);
    } else if (header[7] != precision) {
        fprintf(stderr, "%s: written by a %s run, this run is %s (-p)\n", path,
                header[7] >= 0 && header[7] < 3 ? precision_names[header[7]] : "?", precision_names[precision]);
    } else if ((size_t)file_size != 1024 + 3 * n * 4) {
        fprintf(stderr, "%s: %ld bytes, expected %zu (truncated?)\n", path, file_size, 1024 + 3 * n * 4);
    } else {
        return true;
    }
    return false;
}
