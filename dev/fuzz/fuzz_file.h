// What the file-loader fuzz harnesses share: the fuzzer's input written to a per-process temporary file, so
// each loader is exercised through its real path-based entry point.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>
#include <string>

// writes data to /tmp/<name>_<pid>.bin; returns the path, or "" if it cannot be written
inline std::string fuzz_input_file(const char* name, const uint8_t* data, size_t size) {
    std::string path = "/tmp/" + std::string(name) + "_" + std::to_string((int)getpid()) + ".bin";
    FILE* f = fopen(path.c_str(), "wb");
    if (!f) return "";
    bool ok = fwrite(data, 1, size, f) == size;
    ok = fclose(f) == 0 && ok;
    return ok ? path : "";
}
