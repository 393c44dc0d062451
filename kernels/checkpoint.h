// File I/O that loses nothing: a checkpoint is written to "<path>.tmp", flushed to disk, then renamed over
// <path>, so a run killed at any moment leaves either the old file or the new one, never half of one; a
// failed write (disk full) removes the temporary file and keeps the old checkpoint. Reading checks sizes and
// reports one line naming the file. Host only.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>
#include <string>
#include <utility>
#include <vector>

// writes header (256 int32) then each chunk, atomically; false (old file kept) on any error
inline bool write_file_atomic(const std::string& path, const int32_t header[256],
                              const std::vector<std::pair<const void*, size_t>>& chunks) {
    std::string tmp = path + ".tmp";
    FILE* f = fopen(tmp.c_str(), "wb");
    if (!f) { fprintf(stderr, "%s: cannot open for writing\n", tmp.c_str()); return false; }
    bool ok = fwrite(header, sizeof(int32_t), 256, f) == 256;
    for (auto& chunk : chunks) ok = ok && fwrite(chunk.first, 1, chunk.second, f) == chunk.second;
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
        fprintf(stderr, "%s: write failed (disk full or I/O error); the previous file is kept\n", path.c_str());
        remove(tmp.c_str());
        return false;
    }
    return true;
}

// opens path and reads its 256-int32 header; checks magic; returns the open file (positioned after the
// header) and its total size, or null with a message
inline FILE* open_checked(const char* path, int32_t header[256], int32_t magic, const char* what, long* file_size) {
    FILE* f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "%s: cannot open %s\n", path, what); return nullptr; }
    *file_size = 0;
    if (fseek(f, 0, SEEK_END) == 0) { *file_size = ftell(f); rewind(f); }
    if (fread(header, sizeof(int32_t), 256, f) != 256) {
        fprintf(stderr, "%s: shorter than the 1024-byte header of a %s\n", path, what);
    } else if (header[0] != magic) {
        fprintf(stderr, "%s: bad magic %d, expected %d (not a %s)\n", path, header[0], magic, what);
    } else {
        return f;
    }
    fclose(f);
    return nullptr;
}

// reads exactly bytes into dst; false with a message naming the file if it is shorter
inline bool read_exact(FILE* f, void* dst, size_t bytes, const char* path) {
    if (fread(dst, 1, bytes, f) != bytes) {
        fprintf(stderr, "%s: truncated (expected %zu more bytes)\n", path, bytes);
        return false;
    }
    return true;
}
