"""Char against subword: two presets trained for the same wall time, scored in bits per character.

    python experiments/bench_tokenizers.py                     # 120 s each: quick.toml (char) vs wordpiece.toml
    python experiments/bench_tokenizers.py --seconds 300 --marks 5
    python experiments/bench_tokenizers.py --b experiments/wordpiece.toml --set train.seed=1

Held-out masked accuracy does not compare across tokenizers (guessing one of ~100 characters is not
guessing one of 8000 pieces), and neither does loss per token. Loss per character does: each run
is scored on its own fixed held-out batches (EVAL_SEED; BERT's 15 / 10 / 10 token masking), and
`eval_bpc` is the loss summed over the hidden tokens, in bits, over the characters those tokens
cover (a word-start piece counts its leading space, as a char model predicts the space). The
held-out text is the same for both: the split is drawn over characters whatever the tokenizer.

Each preset trains in a process of its own exactly as `mlmlab run` trains it (its StepRunner,
precision, compile default, schedule annealed by the time limit: `train.max_minutes` is set to
--seconds); they take turns in chunks of --chunk seconds so a shared machine's load hits both
alike, and both are scored at each of --marks equal shares of the time. Evaluation is not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bench_curriculum import parse_race_args, race_arguments, race_in_workers
from bench_time_to_accuracy import Mlmlab
from mlmlab.config import load_config
from mlmlab.devices import resolve_device
from mlmlab.engine.data import prepare_data
from mlmlab.engine.evaluation import build_eval_set, token_chars
from mlmlab.errors import MlmlabError

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = race_arguments(__doc__.split("\n\n")[0], 120.0)
    p.add_argument("--a", default=str(HERE / "quick.toml"), help="first preset (default quick.toml, char)")
    p.add_argument("--b", default=str(HERE / "wordpiece.toml"), help="second preset (default wordpiece.toml)")
    return parse_race_args(p, argv)


def config(which: str, args: argparse.Namespace, evaluation: bool = False):
    sets = [*args.sets, f"train.max_minutes={args.seconds / 60}", "train.steps=1000000000"]
    sets += [f"data.source={args.data}"] if args.data else []
    sets += [f"train.eval_batches={args.eval_batches}"] if evaluation else []
    return load_config(args.a if which == "a" else args.b, sets)


def build_worker(which: str, args: argparse.Namespace) -> Mlmlab:
    """One preset's trainer, built inside its worker process, with its own held-out set."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = config(which, args)
    data = prepare_data(cfg)
    contender = Mlmlab(cfg, data, device, which)
    tok = data.tokenizer
    contender.evalset = build_eval_set(data.valid_ids, config(which, args, evaluation=True), tok.vocab_size, None, device,
                                       token_chars(tok, device))
    return contender


def describe(cfg) -> str:
    d = cfg.data
    return d.tokenizer if d.tokenizer == "char" else f"{d.tokenizer} {d.vocab_size or 8000}"


def print_report(args, configs: dict, scores: dict[str, list[dict]], device) -> None:
    print(f"\nChar against subword: {args.seconds:.0f} s of training each, held-out loss per character on each "
          f"run's own {args.eval_batches} fixed batches, {device}, {torch.get_num_threads()} threads\n")
    print("| seconds | preset | tokenizer | window | steps | tokens/s | eval loss/token | eval acc | bits/char |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mark in range(args.marks):
        for name, rows in scores.items():
            r, cfg = rows[mark], configs[name]
            print(f"| {r['seconds']:.0f} | {Path(args.a if name == 'a' else args.b).stem} | {describe(cfg)} | "
                  f"{cfg.train.batch_size}x{cfg.train.seq_len} | {r['steps']:,} | {r['tokens_per_s']:,.0f} | "
                  f"{r['eval_loss']:.3f} | {r['eval_acc']:.1%} | {r['eval_bpc']:.3f} |")
    a, b = scores["a"][-1], scores["b"][-1]
    print(f"\nbits per character at {args.seconds:.0f} s: {Path(args.a).stem} {a['eval_bpc']:.3f}, "
          f"{Path(args.b).stem} {b['eval_bpc']:.3f} ({b['eval_bpc'] - a['eval_bpc']:+.3f})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = {which: config(which, args) for which in ("a", "b")}  # a bad preset or --set fails here, in one line
    for cfg in configs.values():
        prepare_data(cfg)  # once here, so the workers find the corpus and vocabulary cached
    scores = race_in_workers(build_worker, ("a", "b"), args)
    device = resolve_device(args.device)
    print_report(args, configs, scores, device)
    if args.json:
        report = {"seconds": args.seconds, "device": str(device), "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "configs": {k: c.to_dict() for k, c in configs.items()}, "scores": scores}
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MlmlabError as exc:  # a bad preset, --set or --data: one line
        print(f"{Path(__file__).name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
