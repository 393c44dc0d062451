// libFuzzer harness for the reference dump loader (kernels/reference_dump.h): any byte string must give
// either a loaded dump or a one-line error, never a crash, an out-of-bounds access or a huge allocation.
//   clang++ -g -O1 -fsanitize=fuzzer,address,undefined -Ikernels dev/fuzz/fuzz_reference_dump.cpp
#include <stdio.h>
#include "reference_dump.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;  // fmemopen refuses empty buffers; the empty file is a unit test
    FILE* f = fmemopen((void*)data, size, "rb");
    if (!f) return 0;
    ReferenceDump dump;
    if (reference_dump_read(f, "fuzz-input", &dump)) {
        for (const DumpRecord& r : dump.records) {  // a loaded record's data must be exactly its dims' size
            if (r.data.size() != r.numel() * dump_dtype_size(r.dtype)) __builtin_trap();
        }
    }
    fclose(f);
    return 0;
}
