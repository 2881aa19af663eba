#!/usr/bin/env python3
"""What an fdatasync costs after a write, by what the write lands on (docs/benchmarks.md).

Usage: python3 benches/fsync_after_write.py [DIR] [ROUNDS]
    DIR: where the test file goes (default: the current directory); it is removed after.

Each round writes WRITES records of WRITE_BYTES one after another (a log's batches), each
followed by an fdatasync, into a file that is:
  - append:    empty: every write grows the file, so every fdatasync also writes the
               inode (the new size and blocks; or commits the journal, where there is one);
  - sparse:    sized first with ftruncate (a hole): the size no longer changes, but every
               write still allocates blocks;
  - fallocate: allocated with posix_fallocate first (unwritten extents on ext4);
  - zeros:     written with zeros and synced first, so the writes land on blocks that
               are allocated and written, as in a segment prepared the way PostgreSQL
               prepares its WAL segments.
It prints the mean and median of the fdatasync and of the pwrite, in microseconds.
"""
import os
import sys
import time

WRITES = 600
# Not a multiple of the page size, as a log's batches are not.
WRITE_BYTES = 100_003
ZERO_CHUNK = 1 << 20


def run(path, mode):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        total = WRITES * WRITE_BYTES + ZERO_CHUNK
        if mode == "zeros":
            zeros = bytes(ZERO_CHUNK)
            for at in range(0, total, ZERO_CHUNK):
                os.pwrite(fd, zeros, at)
            os.fsync(fd)
        elif mode == "sparse":
            os.ftruncate(fd, total)
            os.fsync(fd)
        elif mode == "fallocate":
            os.posix_fallocate(fd, 0, total)
            os.fsync(fd)
        record = b"x" * WRITE_BYTES
        syncs, writes = [], []
        for i in range(WRITES):
            start = time.perf_counter()
            os.pwrite(fd, record, i * WRITE_BYTES)
            writes.append(time.perf_counter() - start)
            start = time.perf_counter()
            os.fdatasync(fd)
            syncs.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(path)

    def summary(xs):
        xs = sorted(xs)
        return "mean %4.0f p50 %4.0f" % (sum(xs) / len(xs) * 1e6, xs[len(xs) // 2] * 1e6)

    return "fdatasync %s | pwrite %s" % (summary(syncs), summary(writes))


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    path = os.path.join(directory, "fsync_after_write.tmp")
    for _ in range(rounds):
        for mode in ("append", "sparse", "fallocate", "zeros"):
            print(mode.ljust(10), run(path, mode))


if __name__ == "__main__":
    main()
