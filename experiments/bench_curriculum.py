"""Sequence-length curriculum: two presets that differ only in it, trained for the same wall time.

    python experiments/bench_curriculum.py                    # 90 s each, curriculum-off vs curriculum-on
    python experiments/bench_curriculum.py --seconds 300 --marks 5
    python experiments/bench_curriculum.py --set train.schedule_keeps_tokens=true   # scale the batch instead

Each preset trains in a process of its own (mlmlab.benchharness.IsolatedStep) exactly as `mlmlab run`
trains it (its StepRunner, precision, compile default and learning rate, which anneals by the time
limit: `train.max_minutes` is set to --seconds and `train.steps` high enough that time binds both).
They take turns in chunks of --chunk seconds, so a shared machine's load hits both alike. At each of
--marks equal shares of the wall time both are scored on the *same* held-out batches at one fixed
length (--eval-len, default the presets' train.seq_len): fixed windows and masks (EVAL_SEED, BERT's
15 / 10 / 10), whatever lengths the curriculum trained on. Evaluation is not counted as training time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bench_time_to_accuracy import Mlmlab, train_in_turns  # its contender trains as `mlmlab run` does
from mlmlab.benchharness import IsolatedStep
from mlmlab.config import flatten, load_config
from mlmlab.devices import resolve_device
from mlmlab.engine.data import prepare_data
from mlmlab.engine.evaluation import build_eval_set
from mlmlab.engine.schedule import describe_stages
from mlmlab.errors import ConfigError, MlmlabError

HERE = Path(__file__).resolve().parent
CURRICULUM_KEYS = {"train.seq_len_schedule", "train.schedule_keeps_tokens", "train.short_seq_len", "train.short_seq_steps"}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def race_arguments(description: str, seconds: float) -> argparse.ArgumentParser:
    """The options every equal-wall-time race of two presets takes (bench_tokenizers.py reuses them)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seconds", type=float, default=seconds, help=f"training wall time for each (default {seconds:g})")
    p.add_argument("--chunk", type=float, default=10.0, help="seconds per turn (default 10)")
    p.add_argument("--marks", type=int, default=3, help="score both at this many equal shares of the time (default 3)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of both presets (repeatable)")
    p.add_argument("--data", help="a UTF-8 text file or folder instead of the presets' corpus")
    p.add_argument("--eval-batches", type=int, default=32, help="held-out batches (fixed windows and masks)")
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path)
    return p


def parse_race_args(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.chunk <= 0 or args.marks < 1:
        p.error("--seconds and --chunk must be positive and --marks at least 1")
    return args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = race_arguments(__doc__.split("\n\n")[0], 90.0)
    p.add_argument("--off", default=str(HERE / "curriculum-off.toml"), help="preset without the curriculum")
    p.add_argument("--on", default=str(HERE / "curriculum-on.toml"), help="preset with it")
    p.add_argument("--eval-len", type=int, help="held-out window length (default: the presets' train.seq_len)")
    return parse_race_args(p, argv)


def shared_sets(args: argparse.Namespace) -> list[str]:
    sets = [*args.sets, f"train.max_minutes={args.seconds / 60}", "train.steps=1000000000"]
    return [*sets, f"data.source={args.data}"] if args.data else sets


def configs(args: argparse.Namespace):
    """(off, on, eval) configs; the presets must differ only in the curriculum, and be scored alike."""
    off, on = (load_config(path, shared_sets(args)) for path in (args.off, args.on))
    a, b = flatten(off.to_dict()), flatten(on.to_dict())
    other = sorted(k for k in a if a[k] != b[k] and k not in CURRICULUM_KEYS)
    if other:
        raise ConfigError(f"--off and --on differ in more than the curriculum: {', '.join(other)}")
    # Scored at one length: the off preset without any curriculum, at --eval-len if given.
    eval_sets = [f"train.eval_batches={args.eval_batches}", "train.seq_len_schedule=[]", "train.short_seq_len=0",
                 "train.short_seq_steps=0", *([f"train.seq_len={args.eval_len}"] if args.eval_len else [])]
    return off, on, load_config(args.off, [*shared_sets(args), *eval_sets])


def build_worker(which: str, args: argparse.Namespace) -> Mlmlab:
    """One preset's trainer, built inside its worker process, with the held-out set both share."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    off, on, evaluation = configs(args)
    cfg = off if which == "off" else on
    data = prepare_data(cfg)
    contender = Mlmlab(cfg, data, device, which)
    contender.evalset = build_eval_set(prepare_data(evaluation).valid_ids, evaluation, data.tokenizer.vocab_size,
                                       None, device)
    return contender


def race_in_workers(build, names: tuple[str, str], args: argparse.Namespace) -> dict[str, list[dict]]:
    """`build(name, args)` in a process of its own for each name, then `race` them; the workers close after."""
    workers: dict[str, IsolatedStep] = {}
    try:
        for name in names:
            workers[name] = IsolatedStep(build, name, args)
        return race(args, workers)
    finally:
        for worker in workers.values():
            worker.close()


def race(args: argparse.Namespace, workers: dict[str, IsolatedStep]) -> dict[str, list[dict]]:
    """Train in turns until each has trained each mark's share of --seconds; score both at every mark."""
    trained = dict.fromkeys(workers, 0.0)
    scores: dict[str, list[dict]] = {name: [] for name in workers}
    for mark in range(1, args.marks + 1):
        target = args.seconds * mark / args.marks
        for _ in train_in_turns(workers, target, args.chunk, trained):
            pass
        for name, worker in workers.items():
            scores[name].append(worker.call("held_out"))
        log(f"{target:.0f} s: " + " | ".join(f"{n} step {s[-1]['steps']} eval loss {s[-1]['eval_loss']:.3f} "
                                             f"acc {s[-1]['eval_acc']:.1%}" for n, s in scores.items()))
    return scores


def print_report(args, stages: dict[str, str], scores: dict[str, list[dict]], eval_len: int, device) -> None:
    first = scores["off"][-1]
    print(f"\nSequence-length curriculum: {args.seconds:.0f} s of training each, held-out masked loss and accuracy "
          f"on {first['eval_batches']} fixed batches of {eval_len}-token windows ({first['masked_tokens']:,} masked "
          f"tokens), {device}, {torch.get_num_threads()} threads\n")
    print("| seconds | preset | seq_len by step | steps | tokens | tokens/s | others' CPU | eval loss | eval accuracy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mark in range(args.marks):
        for name, rows in scores.items():
            r = rows[mark]
            print(f"| {r['seconds']:.0f} | curriculum-{name} | {stages[name]} | {r['steps']:,} | {r['tokens']:,} | "
                  f"{r['tokens_per_s']:,.0f} | {_share(r['others_cpu_share'])} | {r['eval_loss']:.3f} | {r['eval_acc']:.1%} |")
    on, off = scores["on"][-1], scores["off"][-1]
    print(f"\ncurriculum-on minus curriculum-off at {args.seconds:.0f} s: eval loss {on['eval_loss'] - off['eval_loss']:+.3f}, "
          f"accuracy {100 * (on['eval_acc'] - off['eval_acc']):+.1f} points")


def _share(value: float | None) -> str:
    """Other processes' share of the CPU while this one trained (mlmlab.benchharness.ForeignLoad)."""
    return "-" if value is None else f"{value:.0%}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    off, on, evaluation = configs(args)  # a bad preset or --set fails here, in one line
    prepare_data(evaluation)  # once here, so the workers find the corpus cached
    scores = race_in_workers(build_worker, ("off", "on"), args)
    stages = {"off": describe_stages(off), "on": describe_stages(on)}
    device = resolve_device(args.device)
    print_report(args, stages, scores, evaluation.train.seq_len, device)
    if args.json:
        report = {"seconds": args.seconds, "eval_len": evaluation.train.seq_len, "device": str(device),
                  "threads": torch.get_num_threads(), "torch": torch.__version__, "stages": stages,
                  "configs": {"off": off.to_dict(), "on": on.to_dict()}, "scores": scores}
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MlmlabError as exc:  # a bad preset, --set or --data: one line, as the CLI gives it
        print(f"{Path(__file__).name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
