"""The log control file's raw cost on this disk: a group commit (2 MiB + fdatasync) vs the control write (32 B +
fdatasync), 300 rounds. Usage: python3 fsync_cost.py SCRATCH_DIR (issue 21; BENCHMARKS.md)."""
import os, time, statistics, sys
d = sys.argv[1]; os.makedirs(d, exist_ok=True)
log = os.open(os.path.join(d, "log"), os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(log, 64 << 20)
ctl = os.open(os.path.join(d, "control"), os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(ctl, b"\0" * 1024, 0); os.fsync(ctl)
group = os.urandom(2 << 20)  # one group commit of 2 MiB (a 256-document upsert of 64 x 128-d f16 tokens is 4 MiB)
a, b = [], []
pos = 0
for i in range(300):
    if pos + len(group) > (64 << 20): pos = 0
    t = time.perf_counter(); os.pwrite(log, group, pos); os.fdatasync(log); t1 = time.perf_counter()
    os.pwrite(ctl, i.to_bytes(32, "little"), (i % 2) * 512); os.fdatasync(ctl); t2 = time.perf_counter()
    a.append(t1 - t); b.append(t2 - t1); pos += len(group)
print(f"log group 2 MiB + fdatasync: median {statistics.median(a)*1e3:.2f} ms; control 32 B + fdatasync: median {statistics.median(b)*1e3:.3f} ms (p90 {sorted(b)[270]*1e3:.3f}); ratio {statistics.median(b)/statistics.median(a):.3f}")
