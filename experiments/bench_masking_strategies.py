"""ms per masking call for each mask.strategy, on real text windows (built-in corpus, char tokenizer).

    python experiments/bench_masking_strategies.py [--device cpu|cuda] [--threads N]

Prints the median of 200 calls (after 20 warm-up calls) at batch 64 x seq 64 and 32 x 128, the
shapes of the quick preset; the count is static, as in training (`n_chosen` passed).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from mlmlab.bench import synchronizer
from mlmlab.benchharness import interleaved_ms
from mlmlab.data import load_corpus
from mlmlab.masking import mask_tokens, n_chosen_for
from mlmlab.masking_strategies import word_masking
from mlmlab.tokenizer import CharTokenizer
from mlmlab.vocab import MASK_STRATEGIES


def time_calls(call, device: torch.device, n: int = 200, warmup: int = 20) -> float:
    """Median milliseconds per call, after `warmup` calls (the harness adds its own five)."""
    for _ in range(warmup):
        call()
    return statistics.median(interleaved_ms({"call": call}, n, synchronizer(device))["call"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    text = load_corpus("builtin", 400_000)
    tok = CharTokenizer.from_text(text)
    stream = torch.tensor(tok.encode(text), device=device)
    gen = torch.Generator(device).manual_seed(0)
    print(f"device {device}, torch threads {torch.get_num_threads()}; median ms per mask_tokens call")
    for B, T in ((64, 64), (32, 128)):
        starts = torch.randint(0, stream.numel() - T, (B,), device=device, generator=gen)
        ids = stream[starts.unsqueeze(1) + torch.arange(T, device=device)]
        n_chosen = n_chosen_for(ids.numel(), 0.15)
        row = []
        for name in MASK_STRATEGIES:
            how = word_masking(name, tok, device)
            ms = time_calls(lambda: mask_tokens(ids, vocab_size=tok.vocab_size, masking_prob=0.15, randomize_prob=0.1,
                                                no_change_prob=0.1, generator=gen, n_chosen=n_chosen, strategy=how), device)
            row.append(f"{name} {ms:.3f}")
        print(f"  {B:>3} x {T:<4} " + "   ".join(row))


if __name__ == "__main__":
    main()
