#!/usr/bin/env bash
# Bad input gets a one-line error naming the file and what was expected, and a non-zero exit: never a
# crash (exit code >= 128 = killed by a signal), a hang (every command runs under a 60 s timeout) or a pass.
set -u
cd "$(dirname "$0")/.."
TRAIN_INT4=${TRAIN_INT4:-./train_int4}  # scripts/test_sanitized_tools.sh runs these cases on a sanitizer build
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

expect_error() {  # NAME PATTERN CMD...: exit code in 1..127, stderr+stdout's last line matches PATTERN
    local name=$1 pattern=$2; shift 2
    local out rc; out=$(timeout 60 "$@" 2>&1); rc=$?
    local last; last=$(tail -n 1 <<<"$out")
    if [ $rc -ge 1 ] && [ $rc -lt 124 ] && grep -q -- "$pattern" <<<"$last"; then
        echo "PASS $name: $last"
    else
        echo "FAIL $name: exit $rc, last line '$last'"
    fi
}

# reference dump (test_int4): missing, empty, truncated header, truncated record, wrong magic, wrong version
dump=ref/dump.bin
head -c 0 "$dump" > "$tmp/empty.bin"
head -c 500 "$dump" > "$tmp/short_header.bin"
head -c $(( $(stat -c %s "$dump") - 1000 )) "$dump" > "$tmp/truncated.bin"
python3 - "$dump" "$tmp" <<'PYEOF'
import struct, sys
raw = bytearray(open(sys.argv[1], "rb").read())
bad = bytearray(raw); bad[0:4] = struct.pack("<i", 12345); open(sys.argv[2] + "/magic.bin", "wb").write(bad)
bad = bytearray(raw); bad[4:8] = struct.pack("<i", 99); open(sys.argv[2] + "/version.bin", "wb").write(bad)
bad = bytearray(raw); bad[1024:1028] = struct.pack("<i", -5); open(sys.argv[2] + "/name.bin", "wb").write(bad)
PYEOF
expect_error "dump missing" "nope.bin: cannot open reference dump" ./test_int4 "$tmp/nope.bin"
expect_error "dump empty" "empty.bin: shorter than the 1024-byte header" ./test_int4 "$tmp/empty.bin"
expect_error "dump short header" "short_header.bin: shorter than the 1024-byte header" ./test_int4 "$tmp/short_header.bin"
expect_error "dump truncated" "truncated.bin: record .*truncated" ./test_int4 "$tmp/truncated.bin"
expect_error "dump wrong magic" "magic.bin: bad magic 12345" ./test_int4 "$tmp/magic.bin"
expect_error "dump wrong version" "version.bin: version 99, expected 1" ./test_int4 "$tmp/version.bin"
expect_error "dump corrupt record" "name.bin: record 0: truncated or bad name length" ./test_int4 "$tmp/name.bin"
expect_error "test_int4 unknown mode" "test_int4 modes 'fp32,fp64': expected a comma list of fp32, bf16, int4" ./test_int4 "$dump" fp32,fp64

# train_int4 flags: each is rejected before any GPU work, with a message naming the flag
expect_error "flag unknown" "unknown flag '-w'" "$TRAIN_INT4" -w 1
expect_error "flag missing value" "flag -b needs a value" "$TRAIN_INT4" -b
expect_error "flag non-numeric" "-x expects an integer" "$TRAIN_INT4" -x ten
expect_error "flag B <= 0" "-b expects an integer in \[1," "$TRAIN_INT4" -b 0
expect_error "flag negative lr" "-l expects a number in" "$TRAIN_INT4" -l -1
expect_error "flag bad precision" "-p expects fp32, bf16 or int4" "$TRAIN_INT4" -p fp8
expect_error "flag Hadamard block" "-q expects 16, 32, 64 or 128, got '48'" "$TRAIN_INT4" -p int4 -q 48
expect_error "flag keep ratio 0" "-r expects a keep ratio in (0, 1\], got '0'" "$TRAIN_INT4" -p int4 -r 0
expect_error "flag keep ratio > 1" "-r expects a number in \[0, 1\], got '1.5'" "$TRAIN_INT4" -p int4 -r 1.5
expect_error "flag recompute level" "-R expects an integer in \[1, 2\], got '3'" "$TRAIN_INT4" -R 3
expect_error "flag width not a multiple of the block" "-q 64: the width C = 96 is not a multiple" "$TRAIN_INT4" -p int4 -e 2:96:2 -q 64
expect_error "flag BF16 layer list" "-k 0,7: expected comma-separated layer indices in \[0, 6)" "$TRAIN_INT4" -p int4 -k 0,7
expect_error "flag total batch" "-d 100 is not a positive multiple of B\*T" "$TRAIN_INT4" -d 100
expect_error "flag heads not dividing width" "NH dividing C" "$TRAIN_INT4" -e 2:64:5
expect_error "flag bad model descriptor" "use d1..d12" "$TRAIN_INT4" -e d13
expect_error "width beyond LayerNorm's registers" "-e 1:2560:20: width C = 2560 is above the 2048 that LayerNorm holds in registers in fp32 mode" "$TRAIN_INT4" -p fp32 -e 1:2560:20
expect_error "flag qstats without int4" "-qstats needs -p int4 and -o" "$TRAIN_INT4" -qstats 10
expect_error "flag negative spike limit" "-S expects a number in \[0, 1e+06\], got '-1'" "$TRAIN_INT4" -S -1
expect_error "flag -N without -o" "-N needs -o" "$TRAIN_INT4" -N 2
expect_error "flag -N out of range" "-N expects an integer in \[1, 64\], got '0'" "$TRAIN_INT4" -N 0
expect_error "flag -P out of range" "-P expects an integer in \[0, 1000\], got '-1'" "$TRAIN_INT4" -P -1
expect_error "flag -N in a build without NCCL" "built without NCCL (NO_MULTI_GPU=1)" ./train_int4_single_gpu -N 2 -o "$tmp/mg"
expect_error "flag resume without -o" "-y 1 needs -o" "$TRAIN_INT4" -y 1

# token shards: missing, empty, short header, wrong magic, wrong version, truncated, token >= vocab, too few tokens
python3 - "$tmp" <<'PYEOF'
import struct, sys
d = sys.argv[1]
def shard(name, tokens, magic=20240520, version=1, count=None, cut=0):
    body = struct.pack(f"<{len(tokens)}H", *tokens)
    raw = struct.pack("<256i", magic, version, len(tokens) if count is None else count, *([0] * 253)) + body
    open(f"{d}/{name}", "wb").write(raw[:len(raw) - cut])
open(f"{d}/empty.bin", "wb").close()
open(f"{d}/short.bin", "wb").write(b"\0" * 100)
tokens = [i % 256 for i in range(20000)]
shard("magic.bin", tokens, magic=1234)
shard("version.bin", tokens, version=7)
shard("truncated.bin", tokens, cut=10)
shard("vocab.bin", tokens[:-1] + [300])
shard("few.bin", tokens[:100])
# a complete tiny llm.c model file (version 3: maxT 16, V 256, L 1, NH 1, C 8, Vp 256; 3064 zero weights)
open(f"{d}/tiny_model.bin", "wb").write(struct.pack("<256i", 20240326, 3, 16, 256, 1, 1, 8, 256, *([0] * 248)) + b"\0" * 4 * 3064)
PYEOF
expect_error "shard missing" "nope_\*.bin: no token shard matches" "$TRAIN_INT4" -i "$tmp/nope_*.bin"
expect_error "shard empty" "empty.bin: shorter than the 1024-byte shard header" "$TRAIN_INT4" -i "$tmp/empty.bin"
expect_error "shard short header" "short.bin: shorter than the 1024-byte shard header" "$TRAIN_INT4" -i "$tmp/short.bin"
expect_error "shard wrong magic" "magic.bin: bad magic 1234" "$TRAIN_INT4" -i "$tmp/magic.bin"
expect_error "shard wrong version" "version.bin: version 7, expected 1" "$TRAIN_INT4" -i "$tmp/version.bin"
expect_error "shard truncated" "truncated.bin: header says 20000 tokens" "$TRAIN_INT4" -i "$tmp/truncated.bin"
expect_error "shard token >= vocab" "vocab.bin: token 19999 is 300, not below the vocabulary size 256" "$TRAIN_INT4" -i "$tmp/vocab.bin"
expect_error "shard fewer tokens than a batch" "few.bin: 100 tokens, fewer than one batch needs" "$TRAIN_INT4" -i "$tmp/few.bin"
expect_error "val shard bad" "magic.bin: bad magic 1234" "$TRAIN_INT4" -j "$tmp/magic.bin"
# model files: missing, wrong magic, bad version, truncated
expect_error "flag T beyond max context" "-t 32 exceeds the model's maximum sequence length 16" "$TRAIN_INT4" -e "$tmp/tiny_model.bin" -t 32
head -c 1024 "$tmp/tiny_model.bin" > "$tmp/model_trunc.bin"; printf 'xxxx' >> "$tmp/model_trunc.bin"
cp "$tmp/magic.bin" "$tmp/model_magic.bin"
python3 -c "import struct,sys; open(sys.argv[1],'wb').write(struct.pack('<256i',20240326,4,1024,256,1,1,8,256,*([0]*248)))" "$tmp/model_version.bin"
expect_error "model file missing" "nope_model.bin: cannot open model file" "$TRAIN_INT4" -e "$tmp/nope_model.bin"
expect_error "model file wrong magic" "model_magic.bin: bad magic 1234, expected 20240326" "$TRAIN_INT4" -e "$tmp/model_magic.bin"
expect_error "model file wrong version" "model_version.bin: model version 4, expected 3" "$TRAIN_INT4" -e "$tmp/model_version.bin"
expect_error "model file truncated" "model_trunc.bin: 1028 bytes, but the header's config needs 13280" "$TRAIN_INT4" -e "$tmp/model_trunc.bin"
# output folder that cannot be written (a file where the folder should be)
touch "$tmp/not_a_dir"
expect_error "output folder unwritable" "-o $tmp/not_a_dir: cannot write" "$TRAIN_INT4" -o "$tmp/not_a_dir"

# BERT (-m bert): flags, task files, and model files of the other kind or with another classifier
printf 'a\tone\nb\ttwo\n' > "$tmp/task_ab.tsv"
printf 'a\tone\nc\tthree\n' > "$tmp/task_ac.tsv"
printf 'no tab on this line\n' > "$tmp/task_notab.tsv"
python3 - "$tmp" <<'PYEOF'
import struct, sys
# a BERT model file with a 3-class classifier: maxT 16, V 260, L 1, NH 1, C 8, Vp 384, bert 1, classes 3
maxT, V, L, NH, C, Vp, K = 16, 260, 1, 1, 8, 384, 3
n = Vp * C + maxT * C + L * (2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + 4 * C * C + 4 * C + 4 * C * C + C) + 2 * C + K * C + K
header = struct.pack("<256i", 20240326, 3, maxT, V, L, NH, C, Vp, 1, K, *([0] * 246))
open(sys.argv[1] + "/bert_3class.bin", "wb").write(header + b"\0" * 4 * n)
PYEOF
expect_error "flag -m neither model nor number" "-m expects gpt, bert or a number of validation batches" "$TRAIN_INT4" -m bart
expect_error "flag -f without -m bert" "-f $tmp/task_ab.tsv: fine-tuning a classifier needs -m bert" "$TRAIN_INT4" -f "$tmp/task_ab.tsv"
expect_error "flag -F without -f" "-F $tmp/task_ab.tsv needs -f" "$TRAIN_INT4" -m bert -F "$tmp/task_ab.tsv"
expect_error "flag BERT sequence too short" "-m bert needs -t >= 3" "$TRAIN_INT4" -m bert -t 2
expect_error "flag -V with -m bert" "-V 300: BERT's vocabulary is fixed" "$TRAIN_INT4" -m bert -V 300
expect_error "task file missing" "nope.tsv: cannot open classification file" "$TRAIN_INT4" -m bert -f "$tmp/nope.tsv"
expect_error "task file without tab" "task_notab.tsv:1: expected label<TAB>text" "$TRAIN_INT4" -m bert -f "$tmp/task_notab.tsv"
expect_error "task held-out label unknown" "has label 'c', which the training file does not have" "$TRAIN_INT4" -m bert -f "$tmp/task_ab.tsv" -F "$tmp/task_ac.tsv"
expect_error "GPT model file with -m bert" "tiny_model.bin is a GPT model; use -m gpt" "$TRAIN_INT4" -m bert -e "$tmp/tiny_model.bin"
expect_error "BERT model file without -m bert" "bert_3class.bin is a BERT model; use -m bert" "$TRAIN_INT4" -e "$tmp/bert_3class.bin" -t 8
expect_error "classifier classes differ from the task" "has a classifier with 3 classes, $tmp/task_ab.tsv needs 2" "$TRAIN_INT4" -m bert -e "$tmp/bert_3class.bin" -t 8 -f "$tmp/task_ab.tsv"

# state files for -y 1 (a run of -e 1:8:1, bf16): checked against the run before anything is written
python3 - "$tmp" <<'PYEOF'
import os, struct, sys
d = sys.argv[1]
maxT, V, Vp, L, NH, C = 1024, 256, 256, 1, 1, 8
n = Vp * C + maxT * C + L * (2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + 4 * C * C + 4 * C + 4 * C * C + C) + 2 * C
def state(name, magic=20261124, version=1, precision=1, config=(maxT, V, Vp, L, NH, C), cut=0):
    os.makedirs(f"{d}/{name}", exist_ok=True)
    h = [0] * 256
    h[0], h[1], h[2], h[6], h[7] = magic, version, 5, 1337, precision
    h[8:14] = config
    raw = bytearray(struct.pack("<256i", *h))
    raw[14 * 4:16 * 4] = struct.pack("<Q", n)
    raw += b"\0" * (3 * n * 4)
    open(f"{d}/{name}/state_00000005.bin", "wb").write(raw[:len(raw) - cut])
state("st_trunc", cut=100)
state("st_magic", magic=77)
state("st_version", version=7)
state("st_other_run", config=(maxT, V, Vp, 2, NH, C))
state("st_precision", precision=2)
os.makedirs(f"{d}/st_none", exist_ok=True)
PYEOF
st="-e 1:8:1 -t 8 -b 1 -y 1"
expect_error "state file missing" "-y 1: no state_\*.bin in $tmp/st_none" "$TRAIN_INT4" $st -o "$tmp/st_none"
expect_error "state file truncated" "state_00000005.bin: [0-9]* bytes, expected [0-9]* (truncated?)" "$TRAIN_INT4" $st -o "$tmp/st_trunc"
expect_error "state file wrong magic" "bad magic 77, expected 20261124 (not a state file)" "$TRAIN_INT4" $st -o "$tmp/st_magic"
expect_error "state file wrong version" "state version 7, expected 1" "$TRAIN_INT4" $st -o "$tmp/st_version"
expect_error "state file from another run" "model config (maxT 1024, V 256, Vp 256, L 2, NH 1, C 8, gpt, 0 classes) differs" "$TRAIN_INT4" $st -o "$tmp/st_other_run"
expect_error "state file of another precision" "written by a int4 run, this run is bf16" "$TRAIN_INT4" $st -o "$tmp/st_precision"
if ls "$tmp"/st_*/main.log >/dev/null 2>&1; then echo "FAIL state files rejected before anything is written: a main.log exists"
else echo "PASS state files rejected before anything is written: no main.log in any of the -o folders"; fi

# dev/int4_gemm's shape rules, checked before it touches the GPU: K a multiple of 16 (versions 1-3) or of 32 (4-7 and
# the default: 16-byte cp.async and TMA rows), at most 65536 (int32 headroom), N and M positive; versions 1-7
expect_error "int4_gemm K not a multiple of 32 for v4" "K a positive multiple of 32 (versions 4-7).*K=48" ./dev/int4_gemm 4 128 128 48
expect_error "int4_gemm K not a multiple of 16 for v2" "K a positive multiple of 16 (versions 1-3).*K=40" ./dev/int4_gemm 2 128 128 40
expect_error "int4_gemm K too large" "at most 65536 (got N=16384 M=768 K=131072)" ./dev/int4_gemm 6 16384 768 131072
expect_error "int4_gemm N zero" "N and M must be positive.*N=0" ./dev/int4_gemm 1 0 64 64
expect_error "int4_gemm unknown version" "unknown version 8 (1-7)" ./dev/int4_gemm 8

# the GPU: none (this machine has no NVIDIA GPU), or not enough free memory for the model and batch
if nvidia-smi -L >/dev/null 2>&1; then
    expect_error "GPU memory too small for the model and batch" "need [0-9.]* GiB of GPU memory, [0-9.]* GiB are free" "$TRAIN_INT4" -e d48 -b 512 -t 1024 -v 0
else
    expect_error "no GPU" "no CUDA device found (train_int4 needs an NVIDIA GPU)" "$TRAIN_INT4" -x 1
fi
