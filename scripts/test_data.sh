#!/usr/bin/env bash
# Tests of the shard writer (tools/prepare_shards): the shards it makes hold the text's bytes in llm.c's
# format, and bad input gives a one-line error and a non-zero exit without leaving files behind.
set -u
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ok() { echo "PASS $1"; }; bad() { echo "FAIL $1"; }

# round trip: header fields and every token equal the source bytes (train = first 90%, val = the rest)
PY=${PYTHON:-python3}
./tools/prepare_shards data/tinyshakespeare.txt "$tmp/ts" >/dev/null
if "$PY" - "$tmp/ts" data/tinyshakespeare.txt <<'PYEOF'
import struct, sys
prefix, text = sys.argv[1], open(sys.argv[2], "rb").read()
tokens = b""
for part in ("train", "val"):
    raw = open(f"{prefix}_{part}.bin", "rb").read()
    magic, version, count = struct.unpack("<3i", raw[:12])
    assert (magic, version) == (20240520, 1), (magic, version)
    assert len(raw) == 1024 + 2 * count, "size does not match the header's token count"
    body = struct.unpack(f"<{count}H", raw[1024:])
    assert max(body) < 256
    tokens += bytes(body)
assert tokens == text, "tokens differ from the text's bytes"
n_train = struct.unpack("<3i", open(f"{prefix}_train.bin", "rb").read(12))[2]
assert n_train == len(text) // 10 * 9
PYEOF
then ok "shards round-trip the text bytes in llm.c format"; else bad "shards round-trip the text bytes in llm.c format"; fi

# the speaker task: 8 labels, one label<TAB>text per line, train and held-out passages disjoint, and the
# held-out majority class far from trivial (<= 25%)
./tools/prepare_speakers data/tinyshakespeare.txt "$tmp/sp" > "$tmp/sp.log"
if "$PY" - "$tmp/sp" "$tmp/sp.log" <<'PYEOF'
import sys
prefix, log = sys.argv[1], open(sys.argv[2]).read()
rows = {part: [l.rstrip("\n").split("\t") for l in open(f"{prefix}_{part}.tsv", encoding="utf-8")] for part in ("train", "val")}
for part, r in rows.items():
    assert all(len(x) == 2 and x[1] for x in r), f"{part}: a line is not label<TAB>text"
labels = {x[0] for x in rows["train"]} | {x[0] for x in rows["val"]}
assert len(labels) == 8, labels
shared = {x[1] for x in rows["train"]} & {x[1] for x in rows["val"]}
assert all(len(t) < 40 for t in shared), f"long held-out passages also in train: {shared}"  # "I am content." may recur
assert len(rows["train"]) > 800 and len(rows["val"]) > 150, (len(rows["train"]), len(rows["val"]))
counts = {l: sum(x[0] == l for x in rows["val"]) for l in labels}
assert max(counts.values()) / len(rows["val"]) <= 0.25, counts
assert "majority-class baseline" in log
PYEOF
then ok "speaker task: 8 classes, label<TAB>text, disjoint splits, majority baseline <= 25%"; else bad "speaker task: 8 classes, label<TAB>text, disjoint splits, majority baseline <= 25%"; fi

expect_error() {  # NAME PATTERN CMD...: non-zero exit, one-line message matching PATTERN, no shard left
    local name=$1 pattern=$2; shift 2
    local out rc; out=$("$@" 2>&1); rc=$?
    if [ $rc -ne 0 ] && grep -q "$pattern" <<<"$out" && [ "$(wc -l <<<"$out")" -eq 1 ] && ! ls "$tmp"/bad* >/dev/null 2>&1; then
        ok "$name: $out"
    else
        bad "$name: exit $rc, output '$out'"
    fi
}
printf 'short' > "$tmp/short.txt"
expect_error "prepare_shards missing input" "cannot open input" ./tools/prepare_shards "$tmp/nope.txt" "$tmp/bad"
expect_error "prepare_shards tiny input" "expected between" ./tools/prepare_shards "$tmp/short.txt" "$tmp/bad"
expect_error "prepare_shards unwritable output" "cannot open for writing" ./tools/prepare_shards data/tinyshakespeare.txt /nonexistent/dir/bad
expect_error "prepare_shards usage" "usage" ./tools/prepare_shards
