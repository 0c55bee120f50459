"""`mlmlab data SOURCE`: tokenise a corpus into the token cache ahead of a run, with a progress bar.

The work is `token_cache.prepare_corpus`, the very call a run's start makes, so a run on the same
source (and the same `data.*` settings) finds the cache ready and does not tokenise again.
"""

from __future__ import annotations

import sys
import time

from mlmlab.config import ExperimentConfig
from mlmlab.engine.schedule import longest_seq_len
from mlmlab.token_cache import prepare_corpus


def corpus_arguments(cfg: ExperimentConfig) -> dict:
    """`prepare_corpus`'s settings for runs of `cfg`: a run's start and `mlmlab data` pass the same ones,
    so they build (and find) the same cache. Each side of the split must hold the longest window."""
    d = cfg.data
    return {"kind": d.tokenizer, "vocab_size": d.vocab_size, "max_chars": d.max_chars, "valid_fraction": d.valid_fraction,
            "min_len": longest_seq_len(cfg) + 1}


def prepare_ahead(cfg: ExperimentConfig, stream=None) -> dict:
    """Prepare the cache of `cfg`'s corpus and return its figures (tokens, vocabulary, bytes, seconds, built)."""
    stream = stream or sys.stderr
    started = time.perf_counter()
    with _Bar(stream) as bar:
        tokenizer, cache = prepare_corpus(cfg.data.source, **corpus_arguments(cfg), progress=bar.advance,
                                          on_message=bar.say)
    return {"source": cfg.data.source, "tokenizer": cfg.data.tokenizer, "tokens": cache.n_tokens, "vocab_size": tokenizer.vocab_size,
            "documents": len(cache.docs), "bytes_on_disk": cache.nbytes, "seconds": time.perf_counter() - started,
            "built": cache.built, "path": str(cache.path)}


def format_figures(fig: dict) -> str:
    state = "tokenised" if fig["built"] else "already cached"
    return (f"{fig['source']}: {state} with the {fig['tokenizer']} tokenizer\n"
            f"  tokens     {fig['tokens']:,}\n  vocabulary {fig['vocab_size']:,}\n  documents  {fig['documents']:,}\n"
            f"  on disk    {fig['bytes_on_disk'] / 1e6:,.1f} MB  ({fig['path']})\n  time       {fig['seconds']:.2f} s")


class _Bar:
    """A rich bar over the bytes read (each pass reads the corpus once: hash, vocabulary, tokens),
    or nothing on a stream that is not a terminal."""

    def __init__(self, stream):
        self.stream, self.bar, self.task = stream, None, None

    def __enter__(self):
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

            self.bar = Progress(TextColumn("[bold]reading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                TimeElapsedColumn(), console=Console(file=self.stream), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("reading", total=None)
        return self

    def advance(self, n: int) -> None:
        if self.bar:
            self.bar.advance(self.task, n)

    def say(self, text: str) -> None:
        if self.bar:
            self.bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()
