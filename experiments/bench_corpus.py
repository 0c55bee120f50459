"""Token cache figures: tokenise + cache time, throughput and peak RSS, first run against second.

    python experiments/bench_corpus.py                 # built-in corpus and a generated 200 MB corpus
    python experiments/bench_corpus.py --mb 500 --chunk-mb 4

The generated corpus is the built-in corpus repeated into files of a temporary folder (one file per
copy, each a document), so its size is what the flag says; it is deleted at the end and never
committed. Each measurement runs in a fresh process with a fresh cache folder ($MLMLAB_CACHE), so
its peak RSS (`resource.getrusage().ru_maxrss`, of that process alone) is the whole cost of
preparing the data: interpreter, numpy, one chunk. "second" is a second process on the same cache:
a run's start after the first, which must not tokenise again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from mlmlab.corpus import open_corpus
from mlmlab.token_cache import prepare_corpus
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
tok, cache = prepare_corpus(sys.argv[1], chunk_bytes=int(sys.argv[2]))
print(json.dumps({"seconds": time.perf_counter() - t0, "built": cache.built, "tokens": cache.n_tokens,
                  "vocab": tok.vocab_size, "bytes_on_disk": cache.nbytes, "documents": len(cache.docs),
                  "source_bytes": open_corpus(sys.argv[1]).total_bytes,
                  "rss_after_import_mb": base / 1024,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(source: str, cache: Path, chunk_bytes: int) -> dict:
    env = {**os.environ, "MLMLAB_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", CHILD, source, str(chunk_bytes)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def make_corpus(folder: Path, mb: int, cache: Path) -> int:
    """Copies of the built-in corpus, one file each, until `mb` megabytes; returns the bytes written."""
    env = {**os.environ, "MLMLAB_CACHE": str(cache)}
    builtin = subprocess.run([sys.executable, "-c", "from mlmlab.data import builtin_corpus_file; print(builtin_corpus_file())"],
                             env=env, check=True, capture_output=True, text=True).stdout.strip()
    data = Path(builtin).read_bytes()
    folder.mkdir(parents=True)
    written, i = 0, 0
    while written < mb * 1_000_000:
        (folder / f"part-{i:04d}.txt").write_bytes(data)
        written, i = written + len(data), i + 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the generated corpus (default 200)")
    parser.add_argument("--chunk-mb", type=float, default=4, help="bytes read at a time, in MiB (default 4, the default)")
    args = parser.parse_args()
    chunk = int(args.chunk_mb * (1 << 20))
    root = Path(tempfile.mkdtemp(prefix="mlmlab-bench-corpus-"))
    try:
        size = make_corpus(root / "corpus", args.mb, root / "builtin-cache")
        rows = []
        for name, source, cache in (("builtin", "builtin", root / "builtin-cache"),
                                    (f"generated {size / 1e6:.0f} MB", str(root / "corpus"), root / "big-cache")):
            first, second = measure(source, cache, chunk), measure(source, cache, chunk)
            rows.append((name, first, second))
        print(f"chunk {args.chunk_mb:g} MiB; python {sys.version.split()[0]}; {os.cpu_count()} CPUs")
        print(f"{'corpus':<22}{'tokens':>14}{'first s':>9}{'MB/s':>8}{'peak RSS MB':>13}{'second s':>10}{'retokenised':>12}{'on disk MB':>12}")
        for name, first, second in rows:
            mbps = first["source_bytes"] / 1e6 / first["seconds"]
            print(f"{name:<22}{first['tokens']:>14,}{first['seconds']:>9.2f}{mbps:>8.1f}{first['peak_rss_mb']:>13.0f}"
                  f"{second['seconds']:>10.2f}{str(second['built']):>12}{first['bytes_on_disk'] / 1e6:>12.1f}")
        print(json.dumps({name: {"first": f, "second": s} for name, f, s in rows}, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
