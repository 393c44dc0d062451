"""A token shard of 2^22 uniformly random GPT-2-vocabulary tokens (llm.c format, fixed seed) for the speed
benchmarks, which measure throughput and do not need real text.
    python3 scripts/random_shard.py out.bin"""
import random
import struct
import sys

random.seed(0)
n = 1 << 22
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
    f.write(struct.pack(f"<{n}H", *(random.randrange(50257) for _ in range(n))))
