"""pyheap MiB: a python3 process with a large heap of small objects (about MiB of them:
lists of ints and bytes objects in a dict), with a checksum per 1/64 of the heap taken at
start. Prints "ready <seconds>", then "tick N" every 20 ms; after every tick it re-verifies
the next 1/64 of the heap ("FAIL ..." on a mismatch), so 64 ticks cover all of it."""
import random
import sys
import time
import zlib

mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
t0 = time.monotonic()
rng = random.Random(12345)
# one entry: a 64-byte bytes object and a list of 8 small ints, about 0.5 KiB with overheads
per_entry = 512
n = mib * 1024 * 1024 // per_entry
SLICES = 64
heap = {}
for i in range(n):
    heap[i] = (rng.randbytes(64), [rng.getrandbits(30) for _ in range(8)])


def digest(s):
    h = 0
    for i in range(s, n, SLICES):
        b, l = heap[i]
        h = zlib.crc32(b, h)
        h = zlib.crc32(repr(l).encode(), h)
    return h


sums = [digest(s) for s in range(SLICES)]
print(f"ready {time.monotonic() - t0:.3f}", flush=True)
k = 0
while True:
    k += 1
    print(f"tick {k}", flush=True)
    s = k % SLICES
    if digest(s) != sums[s]:
        print(f"FAIL heap slice {s} changed", flush=True)
        sys.exit(2)
    time.sleep(0.02)
