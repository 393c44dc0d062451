#!/usr/bin/env bash
# The host tools (data/*.cpp) built with AddressSanitizer + UBSan and run on the bundled data and on bad
# input: a sanitizer report or an unexpected exit code is a FAIL. Without clang++: SKIP.
set -u
cd "$(dirname "$0")/.."
CLANGXX=${CLANGXX:-clang++}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for tool in prepare_shards prepare_speakers; do
    if ! "$CLANGXX" -g -O1 -std=c++17 -fsanitize=address,undefined -fno-sanitize-recover=all -Ikernels \
            "data/$tool.cpp" -o "$tmp/$tool" 2>"$tmp/build.log"; then
        echo "SKIP $tool under ASan/UBSan: cannot build with $CLANGXX"; continue
    fi
    printf 'short' > "$tmp/short.txt"
    good=$("$tmp/$tool" data/tinyshakespeare.txt "$tmp/out_$tool" 2>&1); rc_good=$?
    bad1=$("$tmp/$tool" "$tmp/missing.txt" "$tmp/bad" 2>&1); rc_bad1=$?
    bad2=$("$tmp/$tool" "$tmp/short.txt" "$tmp/bad" 2>&1); rc_bad2=$?
    if [ $rc_good -eq 0 ] && [ $rc_bad1 -eq 1 ] && [ $rc_bad2 -eq 1 ] && \
       ! grep -q "Sanitizer\|runtime error" <<<"$good$bad1$bad2"; then
        echo "PASS $tool under ASan/UBSan: bundled data, missing and too-short input, no reports"
    else
        echo "FAIL $tool under ASan/UBSan: exits $rc_good/$rc_bad1/$rc_bad2"; echo "$good$bad1$bad2" | grep -m3 "Sanitizer\|runtime error"
    fi
done
