// Token shards in llm.c's format (256 int32 header: magic 20240520, version 1, token count; then uint16
// tokens), found by a glob pattern, read one shard at a time. Sequential mode (evaluation): each batch is
// the next B*T+1 tokens (inputs, and targets shifted by one). Random mode (training): each row is T+1
// tokens from an offset drawn from the shared hash (seed, global batch number, row), nanoGPT-style, so a
// small corpus is never seen in the same windows twice; a shard gives tokens/(B*T) batches, then the next. Every shard is validated when opened — size against the header,
// token ids against the vocabulary, enough tokens for one batch — with a one-line error naming the file.
// The position (shard, offset) is part of the training state, so a resumed run reads the same batches.
#pragma once
#include <glob.h>
#include <stdint.h>
#include <stdio.h>
#include <string>
#include <vector>
#include "rng.h"

#define SHARD_MAGIC 20240520
#define SHARD_VERSION 1

struct DataLoader {
    std::vector<std::string> files;
    std::vector<uint16_t> tokens;  // the current shard
    int B, T, vocab;
    int shard = 0;                 // index into files
    long position = 0;             // sequential: next token to read; random: batches drawn from this shard
    bool random_windows;
    uint32_t seed;
    std::vector<int> inputs, targets;  // (B, T) of the last batch
};

// reads and validates one shard into loader->tokens; false with a message on any problem
inline bool dataloader_read_shard(DataLoader* loader, int shard) {
    const char* path = loader->files[shard].c_str();
    FILE* f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "%s: cannot open token shard\n", path); return false; }
    int32_t header[256];
    bool ok = false;
    long file_size = 0;
    if (fseek(f, 0, SEEK_END) == 0) { file_size = ftell(f); rewind(f); }
    if (fread(header, sizeof header, 1, f) != 1) {
        fprintf(stderr, "%s: shorter than the 1024-byte shard header (empty or not a shard)\n", path);
    } else if (header[0] != SHARD_MAGIC) {
        fprintf(stderr, "%s: bad magic %d, expected %d (not an llm.c token shard)\n", path, header[0], SHARD_MAGIC);
    } else if (header[1] != SHARD_VERSION) {
        fprintf(stderr, "%s: version %d, expected %d\n", path, header[1], SHARD_VERSION);
    } else if (header[2] < 0 || (long)header[2] * 2 + 1024 != file_size) {
        fprintf(stderr, "%s: header says %d tokens (%ld bytes) but the file has %ld bytes (truncated?)\n", path,
                header[2], (long)header[2] * 2 + 1024, file_size);
    } else if ((long)header[2] < (long)loader->B * loader->T + 1) {
        fprintf(stderr, "%s: %d tokens, fewer than one batch needs (B*T+1 = %ld)\n", path, header[2],
                (long)loader->B * loader->T + 1);
    } else {
        loader->tokens.resize(header[2]);
        ok = fread(loader->tokens.data(), sizeof(uint16_t), header[2], f) == (size_t)header[2];
        if (!ok) fprintf(stderr, "%s: read error\n", path);
        for (long i = 0; ok && i < header[2]; i++) {
            if (loader->tokens[i] >= loader->vocab) {
                fprintf(stderr, "%s: token %ld is %d, not below the vocabulary size %d (use -V)\n", path, i,
                        loader->tokens[i], loader->vocab);
                ok = false;
            }
        }
    }
    fclose(f);
    loader->shard = shard;
    loader->position = 0;
    return ok;
}

// opens every file matching pattern (sorted) and validates them all up front, so a bad shard stops the
// run before training starts rather than hours in
inline bool dataloader_init(DataLoader* loader, const char* pattern, int B, int T, int vocab,
                            bool random_windows = false, uint32_t seed = 0) {
    loader->random_windows = random_windows;
    loader->seed = seed;
    loader->B = B;
    loader->T = T;
    loader->vocab = vocab;
    glob_t matches;
    int rc = glob(pattern, 0, nullptr, &matches);
    if (rc != 0 || matches.gl_pathc == 0) {
        fprintf(stderr, "%s: no token shard matches this pattern\n", pattern);
        if (rc == 0) globfree(&matches);
        return false;
    }
    loader->files.assign(matches.gl_pathv, matches.gl_pathv + matches.gl_pathc);
    globfree(&matches);
    for (int s = (int)loader->files.size() - 1; s >= 0; s--) {
        if (!dataloader_read_shard(loader, s)) return false;
    }
    loader->inputs.resize((size_t)B * T);
    loader->targets.resize((size_t)B * T);
    return true;
}

// moves to (shard, position), e.g. from a state file
inline bool dataloader_seek(DataLoader* loader, int shard, long position) {
    if (shard < 0 || shard >= (int)loader->files.size()) return false;
    if (shard != loader->shard && !dataloader_read_shard(loader, shard)) return false;
    long limit = loader->random_windows ? (long)loader->tokens.size() / ((long)loader->B * loader->T)
                                        : (long)loader->tokens.size() - (long)loader->B * loader->T - 1;
    if (position < 0 || position > limit) return false;
    loader->position = position;
    return true;
}

// the next B*T inputs and targets; moves to the next shard (cyclically) when this one is used up.
// batch_number (random mode): the run's count of batches so far, which picks the windows
inline bool dataloader_next_batch(DataLoader* loader, long batch_number = 0) {
    long need = (long)loader->B * loader->T + 1;
    long n = (long)loader->tokens.size();
    if (loader->random_windows) {
        if ((loader->position + 1) * (need - 1) > n && loader->files.size() > 1) {
            if (!dataloader_read_shard(loader, (loader->shard + 1) % (int)loader->files.size())) return false;
        } else if ((loader->position + 1) * (need - 1) > n) {
            loader->position = 0;
        }
        uint32_t key = rng_key(loader->seed ^ 0x44415441u, (uint32_t)batch_number);
        for (int b = 0; b < loader->B; b++) {
            long start = (long)((double)rng_uniform_from_bits(rng_hash_keyed(key, (uint32_t)b)) * (double)(n - loader->T));
            if (start > n - loader->T - 1) start = n - loader->T - 1;
            for (int t = 0; t < loader->T; t++) {
                loader->inputs[(long)b * loader->T + t] = loader->tokens[start + t];
                loader->targets[(long)b * loader->T + t] = loader->tokens[start + t + 1];
            }
        }
        loader->position++;
        return true;
    }
    if (loader->position + need > n) {
        int next = (loader->shard + 1) % (int)loader->files.size();
        if (next != loader->shard || loader->files.size() > 1) {
            if (!dataloader_read_shard(loader, next)) return false;
        }
        loader->position = 0;
    }
    const uint16_t* src = loader->tokens.data() + loader->position;
    for (long i = 0; i < need - 1; i++) {
        loader->inputs[i] = src[i];
        loader->targets[i] = src[i + 1];
    }
    loader->position += need - 1;
    return true;
}
