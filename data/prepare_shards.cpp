// prepare_shards: byte-level tokens of a text file in llm.c's shard format, split into train and val.
//   ./tools/prepare_shards data/tinyshakespeare.txt data/tinyshakespeare
// writes data/tinyshakespeare_train.bin (first 90% of the bytes) and data/tinyshakespeare_val.bin (last 10%).
// Shard format (llm.c): 256 int32 header {20240520, 1, token count, 0...}, then one uint16 per token.
// The byte tokenizer is the identity: token = byte value (vocab 256). Files are written to a temporary
// name and renamed, so an interrupted run never leaves a half-written shard.
#include <stdint.h>
#include <stdio.h>
#include <string>
#include <vector>

#define SHARD_MAGIC 20240520
#define SHARD_VERSION 1

static bool write_shard(const std::string& path, const uint8_t* bytes, size_t count) {
    std::string tmp = path + ".tmp";
    FILE* f = fopen(tmp.c_str(), "wb");
    if (!f) { fprintf(stderr, "%s: cannot open for writing\n", tmp.c_str()); return false; }
    int32_t header[256] = {SHARD_MAGIC, SHARD_VERSION, (int32_t)count};
    std::vector<uint16_t> tokens(bytes, bytes + count);
    bool ok = fwrite(header, sizeof header, 1, f) == 1 &&
              fwrite(tokens.data(), sizeof(uint16_t), count, f) == count;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
        fprintf(stderr, "%s: write failed (disk full?)\n", path.c_str());
        remove(tmp.c_str());
        return false;
    }
    printf("wrote %s: %zu tokens\n", path.c_str(), count);
    return true;
}

int main(int argc, char** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s input.txt output_prefix  (writes output_prefix_train.bin and _val.bin)\n", argv[0]);
        return 1;
    }
    FILE* f = fopen(argv[1], "rb");
    if (!f) { fprintf(stderr, "%s: cannot open input text\n", argv[1]); return 1; }
    std::vector<uint8_t> text;
    uint8_t buffer[1 << 16];
    size_t n;
    while ((n = fread(buffer, 1, sizeof buffer, f)) > 0) { text.insert(text.end(), buffer, buffer + n); }
    fclose(f);
    if (text.size() < 1000 || text.size() > (size_t)INT32_MAX) {
        fprintf(stderr, "%s: %zu bytes; expected between 1000 and 2^31 bytes of text\n", argv[1], text.size());
        return 1;
    }
    size_t n_train = text.size() / 10 * 9;
    std::string prefix = argv[2];
    bool ok = write_shard(prefix + "_train.bin", text.data(), n_train) &&
              write_shard(prefix + "_val.bin", text.data() + n_train, text.size() - n_train);
    return ok ? 0 : 1;
}
