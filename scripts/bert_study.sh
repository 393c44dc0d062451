#!/usr/bin/env bash
# BERT study (issue: BERT-style encoder): masked-LM pretraining of a d6 encoder on the tinyshakespeare bytes,
# then fine-tuning a [CLS] classifier on the speaker task (data/speakers_*.tsv: which of the 8 most frequent
# speakers says a passage), in BF16 and in INT4 (HQ forward, bit split + LSS backward), same seeds, data
# order and steps. The INT4 classifier is fine-tuned from the INT4-pretrained encoder, in INT4.
# Prints MLM validation loss and held-out accuracy per run; writes the logs under $1.
#   MLM_STEPS, FT_STEPS, FT_LR, SEEDS (fine-tuning seeds, space-separated) override the defaults.
set -u
cd "$(dirname "$0")/.."
out=${1:-out/bert}
mlm_steps=${MLM_STEPS:-1500}
ft_steps=${FT_STEPS:-400}
ft_lr=${FT_LR:-1e-4}
seeds=${SEEDS:-"1337"}
mkdir -p "$out"
for p in bf16 int4; do
    ./train_int4 -m bert -p $p -x $mlm_steps -o "$out/mlm_$p" > "$out/mlm_$p.log" 2>&1 || echo "mlm_$p failed"
    model=$(ls "$out/mlm_$p"/model_*.bin | tail -1)
    for seed in $seeds; do
        ./train_int4 -m bert -p $p -e "$model" -f data/speakers_train.tsv -F data/speakers_val.tsv -b 32 -t 256 \
            -x $ft_steps -l $ft_lr -u 40 -D 0.1 -v 50 -z $seed -o "$out/ft_${p}_s$seed" > "$out/ft_${p}_s$seed.log" 2>&1 \
            || echo "ft_${p}_s$seed failed"
    done
done
printf "%-14s %-12s %-12s %-10s\n" run "final val" "accuracy" "ms/step"
for log in "$out"/mlm_*.log "$out"/ft_*.log; do
    name=$(basename "$log" .log)
    val=$(awk '/^val loss/ { v = $3 } END { print v }' "$log")
    acc=$(awk '/^val loss/ && /accuracy/ { a = $7 } END { print (a == "" ? "-" : a) }' "$log")
    ms=$(awk '/^step/ { for (i = 1; i <= NF; i++) if ($i == "ms") { s += $(i - 1); n++ } } END { printf "%.1f", s / n }' "$log")
    printf "%-14s %-12s %-12s %-10s\n" "$name" "$val" "$acc" "$ms"
done
grep -h "majority class" "$out"/ft_*.log | head -1
