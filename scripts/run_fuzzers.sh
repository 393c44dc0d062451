#!/usr/bin/env bash
# Builds every libFuzzer harness in dev/fuzz/ with AddressSanitizer + UBSan and runs each for FUZZ_SECONDS
# (default 60) from its committed seed corpus (new inputs go to a temporary folder; the corpus stays as
# committed). A crash, leak, sanitizer report or timeout is a FAIL. Without clang's fuzzer runtime: SKIP.
set -u
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
CLANGXX=${CLANGXX:-clang++}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for src in dev/fuzz/fuzz_*.cpp; do
    name=$(basename "$src" .cpp)
    if ! command -v "$CLANGXX" >/dev/null || ! "$CLANGXX" -g -O1 -std=c++17 -fsanitize=fuzzer,address,undefined \
            -fno-sanitize-recover=undefined -Ikernels "$src" -o "$tmp/$name" 2>"$tmp/$name.build"; then
        echo "SKIP $name: cannot build with $CLANGXX -fsanitize=fuzzer ($(head -c 200 "$tmp/$name.build" 2>/dev/null))"
        continue
    fi
    corpus=dev/fuzz/corpus_${name#fuzz_}
    mkdir -p "$tmp/$name.new"
    if timeout $((seconds + 60)) "$tmp/$name" -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=200000 \
            -timeout=10 "$tmp/$name.new" "$corpus" >"$tmp/$name.log" 2>&1; then
        echo "PASS $name: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$tmp/$name.log")"
    else
        echo "FAIL $name: $(grep -m1 -E 'ERROR|SUMMARY|deadly|timeout' "$tmp/$name.log")"
        tail -n 30 "$tmp/$name.log"
    fi
done
