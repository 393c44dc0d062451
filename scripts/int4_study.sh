#!/usr/bin/env bash
# Accuracy study (issue: INT4 training end to end): the default GPT (d6, tinyshakespeare bytes, 1500 steps,
# seed 1337, same data order) in BF16 and in INT4 for Hadamard blocks g in {16, 32, 64} and LSS keep ratios
# rho in {1, 0.5}, one after the other (~20 s for BF16, ~2 min for each INT4 run on an H100). Prints a table
# of best and final validation loss; writes loss curves to $1/int4_study.png.
set -u
cd "$(dirname "$0")/.."
out=${1:-out/study}
mkdir -p "$out"
./train_int4 -p bf16 -s 0 -o "$out/bf16" > "$out/bf16.log" 2>&1
for g in 16 32 64; do
    for r in 1 0.5; do
        ./train_int4 -p int4 -q $g -r $r -s 0 -o "$out/int4_g${g}_r${r}" > "$out/int4_g${g}_r${r}.log" 2>&1
    done
done
printf "%-16s %-10s %-10s %-8s\n" run "best val" "final val" "ms/step"
for log in "$out"/*/main.log; do
    name=$(basename "$(dirname "$log")")
    best=$(awk -F'tel:' '/tel:/ { if (min == "" || $2 < min) min = $2 } END { printf "%.4f", min }' "$log")
    final=$(awk -F'tel:' '/tel:/ { v = $2 } END { printf "%.4f", v }' "$log")
    ms=$(awk '/^step/ { for (i = 1; i <= NF; i++) if ($i == "ms") { s += $(i - 1); n++ } } END { printf "%.1f", s / n }' "$out/$name.log")
    printf "%-16s %-10s %-10s %-8s\n" "$name" "$best" "$final" "$ms"
done
python3 scripts/plot.py "$out"/*/main.log -o "$out/int4_study.png" --ymax 2.5
