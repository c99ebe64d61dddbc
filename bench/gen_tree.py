#!/usr/bin/env python3
"""Generate a deterministic tree of files of mixed sizes.

usage: gen_tree.py DIR FILES TOTAL_BYTES

About 90% of the files are small (1-32 KiB), the rest share what is left of
the total. Content is pseudo-random (incompressible, no duplicates).
"""
import os
import random
import sys

root, files, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(42)
small = [rng.randint(1024, 32 * 1024) for _ in range(int(files * 0.9))]
rest = max(total - sum(small), 0)
big_n = files - len(small)
big = [rest // big_n] * big_n if big_n else []
sizes = small + big
rng.shuffle(sizes)
for i, size in enumerate(sizes):
    d = os.path.join(root, f"d{i % 100:02d}", f"e{(i // 100) % 20:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
        f.write(rng.randbytes(size))
print(f"{len(sizes)} files, {sum(sizes) / (1 << 20):.0f} MiB in {root}")
