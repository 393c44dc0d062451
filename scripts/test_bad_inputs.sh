#!/usr/bin/env bash
# Bad input gets a one-line error naming the file and what was expected, and a non-zero exit: never a
# crash (exit code >= 128 = killed by a signal), a hang (every command runs under a 60 s timeout) or a pass.
set -u
cd "$(dirname "$0")/.."
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
