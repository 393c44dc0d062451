#!/usr/bin/env bash
# Data-parallel scaling (issue: multi-GPU): tok/s on 1, 2, 4 and 8 GPUs (as many as this machine has) at
# d_model 1024 (d24) and 2048 (24 layers, 16 heads), BF16 (PRECISION to change), B=8 x T=1024 per GPU, random
# GPT-2-vocabulary tokens, mean over steps 6-15; efficiency = tok/s / (GPUs x 1-GPU tok/s).
# NCCL_NVLS_ENABLE=0: NVLink multicast stays off on the lent machines.
set -eu
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$gpus" -ge 1 ] || { echo "bench_multi_gpu: no GPU here"; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 scripts/random_shard.py "$tmp/random.bin"
printf "%-12s %-5s %-12s %-10s\n" model GPUs tok/s efficiency
for model in d24 24:2048:16; do
    base=0
    for n in 1 2 4 8; do
        [ "$n" -le "$gpus" ] || break
        ./train_int4 -e "$model" -b 8 -t 1024 -d $((8 * 1024 * n)) -V 50257 -i "$tmp/random.bin" -v 0 -s 0 -x 15 -u 0 \
            -l 1e-4 -D 0 -p "${PRECISION:-bf16}" -N "$n" -o "$tmp/run_$n" > "$tmp/log" 2>&1
        tok=$(awk '/^step/ { split($2, s, "/"); if (s[1] > 5) { for (i = 1; i <= NF; i++) if ($i == "tok/s") sum += $(i - 1); c++ } }
                   END { printf "%.0f", sum / c }' "$tmp/log")
        [ "$n" -eq 1 ] && base=$tok
        printf "%-12s %-5s %-12s %-10s\n" "$model" "$n" "$tok" "$(awk -v t="$tok" -v b="$base" -v n="$n" 'BEGIN { printf "%.0f%%", 100 * t / (n * b) }')"
    done
done
