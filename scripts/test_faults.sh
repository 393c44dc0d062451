#!/usr/bin/env bash
# Faults, on a GPU (SKIP without one): NaN gradients are skipped and counted, K in a row stop the run;
# a gradient spike is skipped when -S is set;
# SIGTERM finishes the step, writes a checkpoint and exits 0, and the run resumes from it; SIGKILL while
# checkpoints are being written leaves the latest complete checkpoint loadable; a full disk keeps the old one.
set -u
cd "$(dirname "$0")/.."
if ! nvidia-smi -L >/dev/null 2>&1; then
    for t in "NaN update skipped" "K NaN steps stop the run" "gradient spike skipped" "SIGTERM checkpoint and resume" "SIGKILL during checkpoint writes" "disk full keeps the old checkpoint"; do
        echo "SKIP $t: no CUDA device"
    done
    exit 0
fi
tmp=$(mktemp -d); trap 'umount "$tmp/full" 2>/dev/null; rm -rf "$tmp"' EXIT
small="-v 0 -s 0 -b 16 -t 128"
ok() { echo "PASS $1"; }; bad() { echo "FAIL $1"; }

out=$(TRAIN_INT4_FAULT_NAN_STEPS=3,4 ./train_int4 -x 8 $small 2>&1); rc=$?
if [ $rc -eq 0 ] && grep -q "update skipped (2 in a row, 2 in all)" <<<"$out" && grep -q "step     8/8 | loss [0-9]" <<<"$out"; then
    ok "NaN update skipped: steps 3 and 4 skipped, training went on with finite losses"
else bad "NaN update skipped: exit $rc"; echo "$out" | tail -5; fi

out=$(TRAIN_INT4_FAULT_NAN_STEPS=2,3,4 ./train_int4 -x 10 -K 3 $small 2>&1); rc=$?
if [ $rc -ne 0 ] && grep -q "3 steps in a row had a non-finite loss" <<<"$out"; then
    ok "K NaN steps stop the run: $(tail -n 1 <<<"$out" | cut -c1-100)"
else bad "K NaN steps stop the run: exit $rc"; fi

out=$(TRAIN_INT4_FAULT_SPIKE_STEPS=40 ./train_int4 -x 45 -S 6 $small 2>&1); rc=$?
if [ $rc -eq 0 ] && grep -q "step    40/45 .*update skipped: spike .*1 spikes in all" <<<"$out" && \
   [ "$(grep -c "update skipped" <<<"$out")" -eq 1 ] && grep -q "step    45/45 | loss [0-9]" <<<"$out"; then
    ok "gradient spike skipped: $(grep -o "grad norm z-score [0-9.]*" <<<"$out" | head -1) at step 40 (limit 6), no other step skipped"
else bad "gradient spike skipped: exit $rc"; grep "skipped" <<<"$out" | head -3; fi

./train_int4 -x 100000 $small -o "$tmp/sig" > "$tmp/sig.log" 2>&1 &
pid=$!; sleep 10; kill -TERM $pid; wait $pid; rc=$?
stopped=$(grep -o "checkpoint written at step [0-9]*" "$tmp/sig.log" | grep -o "[0-9]*$")
if [ $rc -eq 0 ] && [ -n "$stopped" ] && [ -f "$tmp/sig/state_$(printf %08d "$stopped").bin" ] && \
   ./train_int4 -x $((stopped + 3)) $small -o "$tmp/sig" -y 1 > "$tmp/resume.log" 2>&1 && grep -q "resumed from" "$tmp/resume.log"; then
    ok "SIGTERM checkpoint and resume: stopped at step $stopped with exit 0, resumed and trained 3 more steps"
else bad "SIGTERM checkpoint and resume: exit $rc, step '$stopped'"; tail -3 "$tmp/sig.log"; fi

./train_int4 -x 100000 $small -n 1 -o "$tmp/kill" > "$tmp/kill.log" 2>&1 &
pid=$!; sleep 12; kill -KILL $pid; wait $pid 2>/dev/null
latest=$(ls "$tmp/kill"/state_*.bin 2>/dev/null | tail -n 1)
step=$(basename "$latest" .bin | sed 's/state_0*//')
if [ -n "$latest" ] && ./train_int4 -x $((step + 2)) $small -o "$tmp/kill" -y 1 > "$tmp/kill_resume.log" 2>&1 && \
   grep -q "resumed from" "$tmp/kill_resume.log"; then
    ok "SIGKILL during checkpoint writes: killed after $(ls "$tmp/kill"/state_*.bin | wc -l) checkpoints ($(ls "$tmp/kill"/*.tmp 2>/dev/null | wc -l) unfinished .tmp), latest (step $step) loads and training resumes"
else bad "SIGKILL during checkpoint writes: latest '$latest'"; tail -3 "$tmp/kill_resume.log"; fi

mkdir -p "$tmp/full"
if mount -t tmpfs -o size=40m tmpfs "$tmp/full" 2>/dev/null; then
    out=$(./train_int4 -x 4 $small -e 2:128:2 -n 2 -o "$tmp/full" 2>&1)
    first=$(ls "$tmp/full"/state_*.bin 2>/dev/null | head -n 1)
    head -c $((40 * 1024 * 1024)) /dev/zero > "$tmp/full/filler" 2>/dev/null
    out=$(./train_int4 -x 6 $small -e 2:128:2 -n 1 -o "$tmp/full" -y 1 2>&1)
    if grep -q "write failed (disk full or I/O error); the previous file is kept" <<<"$out" && [ -n "$first" ] && \
       rm -f "$tmp/full/filler" && ./train_int4 -x 5 $small -e 2:128:2 -o "$tmp/full" -y 1 >/dev/null 2>&1; then
        ok "disk full keeps the old checkpoint: the write failure is reported and the previous state still resumes"
    else bad "disk full keeps the old checkpoint"; echo "$out" | tail -4; fi
else
    echo "SKIP disk full keeps the old checkpoint: cannot mount a small tmpfs here"
fi
