// Reader of the reference dump written by scripts/reference.py --dump (format in README.md): a 256-int32
// header, then named records (name, dtype, dims, data). Host only. Every failure is a one-line error that
// names the file and what was expected, and the loader returns false instead of crashing.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <string>
#include <vector>

#define REFERENCE_DUMP_MAGIC 20261123
#define REFERENCE_DUMP_VERSION 1

enum DumpDtype { DUMP_F32 = 0, DUMP_I32 = 1, DUMP_I8 = 2, DUMP_U8 = 3, DUMP_U32 = 4 };

struct DumpRecord {
    std::string name;
    int dtype;
    std::vector<int> dims;
    std::vector<uint8_t> data;
    size_t numel() const { size_t n = 1; for (int d : dims) n *= (size_t)d; return n; }
    template <typename T> const T* as() const { return reinterpret_cast<const T*>(data.data()); }
};

struct ReferenceDump {
    int32_t header[256];
    std::vector<DumpRecord> records;
    const DumpRecord* find(const char* name) const {
        for (const DumpRecord& r : records) { if (r.name == name) return &r; }
        return nullptr;
    }
    float header_float(int i) const { float f; memcpy(&f, &header[i], sizeof f); return f; }
};

inline size_t dump_dtype_size(int dtype) {
    switch (dtype) {
        case DUMP_F32: case DUMP_I32: case DUMP_U32: return 4;
        case DUMP_I8: case DUMP_U8: return 1;
        default: return 0;
    }
}

// reads a whole dump from f (named path in messages); on any problem prints "<path>: <what was expected>"
// to stderr and returns false. Sizes are checked against the bytes left before anything is allocated.
inline bool reference_dump_read(FILE* f, const char* path, ReferenceDump* dump) {
    bool ok = false;
    if (fseek(f, 0, SEEK_END) != 0) { fprintf(stderr, "%s: not a seekable file\n", path); return false; }
    long file_size = ftell(f);
    rewind(f);
    char why[256] = "";
    if (fread(dump->header, sizeof(int32_t), 256, f) != 256) {
        snprintf(why, sizeof why, "shorter than the 1024-byte header");
    } else if (dump->header[0] != REFERENCE_DUMP_MAGIC) {
        snprintf(why, sizeof why, "bad magic %d, expected %d (not a reference dump)", dump->header[0], REFERENCE_DUMP_MAGIC);
    } else if (dump->header[1] != REFERENCE_DUMP_VERSION) {
        snprintf(why, sizeof why, "version %d, expected %d (regenerate with scripts/reference.py)", dump->header[1], REFERENCE_DUMP_VERSION);
    } else if (dump->header[21] < 0 || dump->header[21] > 100000) {
        snprintf(why, sizeof why, "record count %d in the header is implausible", dump->header[21]);
    } else {
        ok = true;
        dump->records.clear();
        for (int i = 0; i < dump->header[21] && ok; i++) {
            DumpRecord r;
            int32_t name_len, ndim;
            ok = false;
            if (fread(&name_len, 4, 1, f) != 1 || name_len <= 0 || name_len > 256) {
                snprintf(why, sizeof why, "record %d: truncated or bad name length", i); break;
            }
            r.name.resize(name_len);
            if (fread(&r.name[0], 1, name_len, f) != (size_t)name_len || fread(&r.dtype, 4, 1, f) != 1 ||
                fread(&ndim, 4, 1, f) != 1) {
                snprintf(why, sizeof why, "record %d: truncated", i); break;
            }
            if (dump_dtype_size(r.dtype) == 0 || ndim < 0 || ndim > 8) {
                snprintf(why, sizeof why, "record '%s': bad dtype %d or ndim %d", r.name.c_str(), r.dtype, ndim); break;
            }
            r.dims.resize(ndim);
            if (ndim > 0 && fread(r.dims.data(), 4, ndim, f) != (size_t)ndim) {
                snprintf(why, sizeof why, "record '%s': truncated dims", r.name.c_str()); break;
            }
            bool dims_ok = true;
            size_t numel = 1;  // checked as it grows so a hostile header cannot overflow it
            for (int d : r.dims) {
                dims_ok = dims_ok && d >= 0 && (d == 0 || numel <= ((size_t)1 << 34) / (size_t)d);
                if (dims_ok) numel *= (size_t)d;
            }
            if (!dims_ok) { snprintf(why, sizeof why, "record '%s': implausible dims", r.name.c_str()); break; }
            size_t bytes = numel * dump_dtype_size(r.dtype);
            if (bytes > (size_t)(file_size - ftell(f))) {
                snprintf(why, sizeof why, "record '%s': truncated data (%zu bytes expected)", r.name.c_str(), bytes); break;
            }
            r.data.resize(bytes);
            if (bytes > 0 && fread(r.data.data(), 1, bytes, f) != bytes) {
                snprintf(why, sizeof why, "record '%s': read error", r.name.c_str()); break;
            }
            dump->records.push_back(std::move(r));
            ok = true;
        }
    }
    if (!ok) fprintf(stderr, "%s: %s\n", path, why);
    return ok;
}

inline bool reference_dump_load(const char* path, ReferenceDump* dump) {
    FILE* f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "%s: cannot open reference dump (make it with `make ref/dump.bin`)\n", path); return false; }
    bool ok = reference_dump_read(f, path, dump);
    fclose(f);
    return ok;
}

// a record that must exist with the given dtype and element count; prints why not and returns nullptr
inline const DumpRecord* dump_require(const ReferenceDump& dump, const char* name, int dtype, size_t numel) {
    const DumpRecord* r = dump.find(name);
    if (!r) { fprintf(stderr, "reference dump: record '%s' is missing\n", name); return nullptr; }
    if (r->dtype != dtype || r->numel() != numel) {
        fprintf(stderr, "reference dump: record '%s' has dtype %d and %zu elements, expected dtype %d and %zu\n",
                name, r->dtype, r->numel(), dtype, numel);
        return nullptr;
    }
    return r;
}
