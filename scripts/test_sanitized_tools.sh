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

# train_int4's host code (flags, shard, model, state and task file checks) built with AddressSanitizer +
# UBSan through nvcc's host compiler, for one GPU architecture at -O1 (a build only for this; with NCCL when
# the toolkit has it, as the Makefile's train_int4), then scripts/test_bad_inputs.sh run on it and on the
# plain ./train_int4: every case must get the same verdict, and no sanitizer may report. Leak checking is
# off: the error paths exit without freeing, by design. protect_shadow_gap=0 lets the CUDA driver map its
# memory next to ASan's shadow where there is a GPU.
NVCC=${NVCC:-nvcc}
nccl=""
echo '#include <nccl.h>' | "$NVCC" -E -x cu - >/dev/null 2>&1 && nccl="-DMULTI_GPU -lnccl"
if [ ! -x ./train_int4 ]; then
    echo "SKIP train_int4 host code under ASan/UBSan: no ./train_int4 to compare with (make train_int4)"
elif ! "$NVCC" -O1 -g -std=c++17 --expt-relaxed-constexpr $nccl \
        -Xcompiler -fsanitize=address,-fsanitize=undefined,-fno-sanitize-recover=all,-fopenmp \
        -gencode=arch=compute_80,code=sm_80 train_int4.cu -lcublasLt -lcublas -o "$tmp/train_int4_asan" 2>"$tmp/build.log"; then
    echo "SKIP train_int4 host code under ASan/UBSan: cannot build with $NVCC -fsanitize ($(tail -n 1 "$tmp/build.log"))"
else
    verdicts() { grep -o '^\(PASS\|FAIL\) [^:]*' <<<"$1"; }
    plain=$(bash scripts/test_bad_inputs.sh 2>&1)
    sanitized=$(TRAIN_INT4="$tmp/train_int4_asan" ASAN_OPTIONS=detect_leaks=0:protect_shadow_gap=0 \
                UBSAN_OPTIONS=print_stacktrace=1 bash scripts/test_bad_inputs.sh 2>&1)
    cases=$(grep -c '"\$TRAIN_INT4"' scripts/test_bad_inputs.sh)
    differ=$(diff <(verdicts "$plain") <(verdicts "$sanitized"))
    reports=$(grep -m3 "Sanitizer\|runtime error" <<<"$sanitized")
    if [ -z "$differ" ] && [ -z "$reports" ] && [ -n "$(verdicts "$sanitized")" ]; then
        echo "PASS train_int4 host code under ASan/UBSan: test_bad_inputs.sh's $cases train_int4 cases give the same verdicts as on ./train_int4, no reports"
    else
        echo "FAIL train_int4 host code under ASan/UBSan:"; echo "$differ$reports" | head -5
    fi
fi
