#!/usr/bin/env bash
# The whole test suite (`make test` builds everything first, then runs this). Every test program prints one
# line per check starting with PASS, FAIL or SKIP; this script runs them all, echoes their output, counts
# those lines, and counts a program that exits non-zero without printing a FAIL as one failure.
# Last line: "N passed, M failed, K skipped". Exit code 1 if anything failed.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
passed=0; failed=0; skipped=0

run() {  # run NAME CMD...: run one test program and count its lines
    local name=$1; shift
    echo "== $name: $*"
    local out rc
    out=$("$@" 2>&1); rc=$?
    echo "$out"
    local p f s
    p=$(grep -c '^PASS ' <<<"$out"); f=$(grep -c '^FAIL ' <<<"$out"); s=$(grep -c '^SKIP ' <<<"$out")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $name: exited with code $rc without reporting a failed check"
        f=1
    fi
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
}

# every CUDA binary is one fat binary with machine code for each GPU_ARCH (default sm_80 and sm_90a)
check_fatbinaries() {
    local archs=${GPU_ARCH:-80 90a} bin a missing=0
    if ! command -v cuobjdump >/dev/null; then echo "SKIP fatbinaries: cuobjdump not on PATH (.ci/run installs it)"; return 0; fi
    for bin in train_int4 train_int4_single_gpu test_int4 $(ls dev/*.cu 2>/dev/null | sed 's/\.cu$//'); do
        for a in $archs; do
            if [ -x "$bin" ] && cuobjdump --list-elf "$bin" 2>/dev/null | grep -q "sm_${a}\b"; then :; else
                echo "FAIL fatbinary $bin: no sm_${a} machine code (was it built?)"; missing=1
            fi
        done
    done
    [ $missing -eq 0 ] && echo "PASS fatbinaries: train_int4, train_int4_single_gpu, test_int4 and every dev/ program hold sm_${archs// /, sm_} code"
    return $missing
}

run "fat binaries" check_fatbinaries
run "PyTorch reference properties" "$PYTHON" scripts/test_reference.py
run "data tools" bash scripts/test_data.sh
run "test_int4 vs reference dump" ./test_int4 ref/dump.bin
run "test_int4 vs BERT reference dump" ./test_int4 ref/dump_bert.bin
run "bad inputs" bash scripts/test_bad_inputs.sh
run "faults (GPU)" bash scripts/test_faults.sh
run "multi-GPU (2+ GPUs)" bash scripts/test_multi_gpu.sh
run "llm.c model files (LLMC checkout)" bash scripts/test_llmc_format.sh
run "host tools under sanitizers" bash scripts/test_sanitized_tools.sh
run "fuzzing the loaders" bash scripts/run_fuzzers.sh
# every dev/ kernel program validates each of its versions against its CPU reference with --check (GPU)
for src in dev/*.cu; do
    prog=${src%.cu}
    if nvidia-smi -L >/dev/null 2>&1; then
        run "$prog --check" "./$prog" --check
    else
        run "$prog --check" echo "SKIP $prog --check: no CUDA device"
    fi
done

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
