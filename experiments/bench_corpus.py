"""Token cache figures: tokenise + cache time, throughput and peak RSS, first run against second.

    python experiments/bench_corpus.py                 # char and wordpiece, built-in corpus and a generated 200 MB one
    python experiments/bench_corpus.py --mb 500 --chunk-mb 4
    python experiments/bench_corpus.py --kinds char,wordpiece,bpe,bytelevel --vocab-size 8000

The generated corpus is the built-in corpus repeated into files of a temporary folder (one file per
copy, each a document), so its size is what the flag says; it is deleted at the end and never
committed. Each measurement runs in a fresh process with a fresh cache folder ($MLMLAB_CACHE), so
its peak RSS (`resource.getrusage().ru_maxrss`, of that process alone) is the whole cost of
preparing the data: interpreter, numpy, one chunk. "second" is a second process on the same cache:
a run's start after the first, which must not tokenise again.

For a subword kind the first run also trains its vocabulary on the training split (the `tokenizers`
library, streamed); the table splits the first run's time into hashing, vocabulary and tokenise +
cache, and gives the throughput of the whole first run and of the tokenise + cache pass alone.
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
from mlmlab.token_cache import content_hash, corpus_tokenizer, load_or_build
source, chunk, kind, vocab_size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
corpus = open_corpus(source)  # (the built-in corpus is written on first use: not timed)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()  # the steps of token_cache.prepare_corpus, timed one by one
digest = content_hash(corpus, chunk_bytes=chunk)
t1 = time.perf_counter()
tok = corpus_tokenizer(corpus, digest, kind, 0, 0.05, 129, chunk, vocab_size=vocab_size)
t2 = time.perf_counter()
rss_vocab = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cache = load_or_build(corpus, tok, 0, digest=digest, chunk_bytes=chunk)
t3 = time.perf_counter()
print(json.dumps({"seconds": t3 - t0, "hash_s": t1 - t0, "vocab_s": t2 - t1, "tokenise_s": t3 - t2,
                  "built": cache.built, "tokens": cache.n_tokens,
                  "vocab": tok.vocab_size, "bytes_on_disk": cache.nbytes, "documents": len(cache.docs),
                  "source_bytes": corpus.total_bytes,
                  "rss_after_import_mb": base / 1024, "peak_rss_after_vocab_mb": rss_vocab / 1024,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(source: str, cache: Path, chunk_bytes: int, kind: str = "char", vocab_size: int = 0) -> dict:
    env = {**os.environ, "MLMLAB_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", CHILD, source, str(chunk_bytes), kind, str(vocab_size)], env=env,
                         check=True, capture_output=True, text=True).stdout
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
    parser.add_argument("--kinds", default="char,wordpiece", help="tokenizer kinds, comma-separated (default char,wordpiece)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="subword vocabulary size (default 8000, as wordpiece.toml)")
    parser.add_argument("--skip-builtin", action="store_true", help="measure the generated corpus only")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    chunk = int(args.chunk_mb * (1 << 20))
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    root = Path(tempfile.mkdtemp(prefix="mlmlab-bench-corpus-"))
    try:
        size = make_corpus(root / "corpus", args.mb, root / "builtin-cache")
        corpora = [("builtin", "builtin"), (f"generated {size / 1e6:.0f} MB", str(root / "corpus"))]
        rows = []
        for name, source in corpora[1:] if args.skip_builtin else corpora:
            for kind in kinds:
                cache = root / f"cache-{kind}-{len(rows)}"  # fresh for each (corpus, kind): nothing reused
                vocab = 0 if kind == "char" else args.vocab_size
                first = measure(source, cache, chunk, kind, vocab)
                second = measure(source, cache, chunk, kind, vocab)
                rows.append((name, kind, first, second))
                print(f"measured {name} / {kind}", file=sys.stderr, flush=True)
        print(f"chunk {args.chunk_mb:g} MiB; python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
              f"subword vocabulary {args.vocab_size}")
        print(f"{'corpus':<18}{'kind':<11}{'tokens':>13}{'first s':>9}{'hash s':>8}{'vocab s':>9}{'tok+cache s':>12}"
              f"{'MB/s all':>9}{'MB/s tok':>9}{'peak RSS MB':>12}{'second s':>10}{'retokenised':>12}{'on disk MB':>11}")
        for name, kind, first, second in rows:
            mb = first["source_bytes"] / 1e6
            print(f"{name:<18}{kind:<11}{first['tokens']:>13,}{first['seconds']:>9.2f}{first['hash_s']:>8.2f}"
                  f"{first['vocab_s']:>9.2f}{first['tokenise_s']:>12.2f}{mb / first['seconds']:>9.1f}"
                  f"{mb / first['tokenise_s']:>9.1f}{first['peak_rss_mb']:>12.0f}{second['seconds']:>10.2f}"
                  f"{str(second['built']):>12}{first['bytes_on_disk'] / 1e6:>11.1f}")
        figures = {f"{name} / {kind}": {"first": f, "second": s} for name, kind, f, s in rows}
        print(json.dumps(figures, indent=1))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
