"""mlmlab against Hugging Face `BertForMaskedLM`, side by side, each in a process of its own.

    pip install -e ".[bench]"
    python experiments/bench_vs_hf.py                      # all three configs, masking, logging
    python experiments/bench_vs_hf.py --configs seed --rounds 9 --steps 4
    python experiments/bench_vs_hf.py --only masking

Throughput: for each config both models get exactly the same sizes, batch and sequence length, the
same windows of the same token stream, the same masking (mlmlab's) and the same optimizer (AdamW,
fused), gradient clipping at 1.0 and no dropout. mlmlab runs at its defaults (precision `auto`,
compile `auto`, as `mlmlab run` would resolve them for the seed preset with these sizes). Hugging
Face runs at its best setting: every combination of attention (eager, sdpa) and precision (fp32,
bf16 autocast) is tried for a few alternating rounds and the fastest is kept. Then the two take
turns for `--rounds` rounds of `--steps` steps; the table gives each one's median tokens/s and the
median over rounds of the ratio within a round, so load drifting on a shared machine hits both.
Each contender trains in a process of its own (`mlmlab.benchharness.IsolatedStep`): sharing one process,
they slowed each other down (HF by a quarter after torch.compile's kernels had run beside it).

Masking: mlmlab's `mask_tokens` (exact split) against the labml reference's vectorised algorithm
(independent Bernoulli draws for chosen / random / unchanged, which overlap), re-implemented below
from its description; interleaved calls, median ms.

Logging: a training step with the metric pipeline on (the per-step accuracy, masking split and
on-device sums, plus the trainer's row building and batched SQLite writes every `log_every` steps)
against the same step with all of it off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mlmlab.bench import build_setup, synchronizer
from mlmlab.benchharness import IsolatedStep, alternate, interleaved_ms
from mlmlab.config import load_config
from mlmlab.data import WindowSampler
from mlmlab.devices import bf16_supported, cpu_flags, keep_freed_memory, resolve_device, resolve_precision
from mlmlab.masking import mask_tokens, n_chosen_for
from mlmlab.tokenizer import MASK_ID, N_SPECIAL, PAD_ID
from mlmlab.engine.step import compile_decision

# The issue's three configs (vocab 67 as the labml reference's char-level Tiny Shakespeare).
CONFIGS = {
    "seed": dict(vocab=67, d_model=128, n_layers=6, n_heads=8, d_ff=256, seq_len=32, batch_size=64, target=1.5),
    "seq128": dict(vocab=67, d_model=128, n_layers=6, n_heads=8, d_ff=256, seq_len=128, batch_size=32, target=1.5),
    "d256": dict(vocab=67, d_model=256, n_layers=6, n_heads=4, d_ff=1024, seq_len=128, batch_size=32, target=1.3),
}
HF_SETTINGS = [("sdpa", "fp32"), ("sdpa", "bf16"), ("eager", "fp32"), ("eager", "bf16")]
CPU_FLAGS_THAT_MATTER = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def hf_settings(device: torch.device) -> list[tuple[str, str]]:
    """HF's settings worth a trial here: bf16 autocast only where the device has fast bf16 (on a CPU
    without bf16 instructions it runs at a tenth of fp32's speed and would make the trial take minutes)."""
    if bf16_supported(device):
        return HF_SETTINGS
    log(f"{device} has no fast bf16 (no avx512_bf16 / amx_bf16): HF's bf16 autocast settings are left out of the trial")
    return [(attn, prec) for attn, prec in HF_SETTINGS if prec != "bf16"]


def cpu_flags_line() -> str:
    """The instruction-set flags that decide which kernels are fast, as present (+) or absent (-)."""
    flags = cpu_flags()
    return " ".join(("+" if f in flags else "-") + f for f in CPU_FLAGS_THAT_MATTER)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the two training steps ---------------------------------------------------------------------


def token_stream(vocab: int, n: int = 1_000_000, seed: int = 0) -> torch.Tensor:
    return torch.randint(N_SPECIAL, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def resized_seed(c: dict, *extra: str):
    """The seed preset (a long run: compile auto is on) with the sizes, batch and length of `c`."""
    return load_config("seed", [
        f"model.d_model={c['d_model']}", f"model.n_layers={c['n_layers']}", f"model.n_heads={c['n_heads']}",
        f"model.d_ff={c['d_ff']}", f"model.max_seq_len={c['seq_len']}", f"train.seq_len={c['seq_len']}",
        f"train.batch_size={c['batch_size']}", "train.warmup_steps=100", *extra,
    ])


def mlmlab_step(c: dict, device: str, threads: int | None = None):
    """mlmlab's real StepRunner at its defaults for the seed preset resized to `c` (built in its worker)."""
    device = _worker_setup(device, threads)
    cfg = resized_seed(c)
    precision = resolve_precision(cfg.train.precision, device)
    setup = build_setup(cfg, device, precision, token_stream(c["vocab"]), c["vocab"])
    counter = iter(range(10**9))
    tokens = c["batch_size"] * c["seq_len"]

    def step():
        setup.window.add(setup.runner.step(next(counter) + 200), tokens)  # past warm-up: ordinary steps

    return step


def mlmlab_label(c: dict, device: torch.device) -> str:
    cfg = resized_seed(c)
    return f"{resolve_precision(cfg.train.precision, device)}, compile {'on' if compile_decision(cfg, device) else 'off'}"


def hf_step(c: dict, device: str, attn: str, precision: str, threads: int | None = None, keep_freed: bool = False):
    """One training step of `BertForMaskedLM` of the same size, built in its worker.

    With `keep_freed`, its process keeps freed memory as mlmlab's training does (a setting of
    mlmlab's, not Hugging Face's, so off by default: it shows what HF would gain from it).
    """
    from transformers import BertConfig, BertForMaskedLM

    device = _worker_setup(device, threads)
    if keep_freed:
        keep_freed_memory()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=c["vocab"], hidden_size=c["d_model"], num_hidden_layers=c["n_layers"],
        num_attention_heads=c["n_heads"], intermediate_size=c["d_ff"], max_position_embeddings=c["seq_len"],
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=PAD_ID,
    )
    config._attn_implementation = attn
    model = BertForMaskedLM(config).to(device).train()
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
    gen = torch.Generator(device).manual_seed(1)
    sampler = WindowSampler(token_stream(c["vocab"]).to(device), gen)
    B, T = c["batch_size"], c["seq_len"]
    n_chosen = n_chosen_for(B * T, 0.15)

    def step():
        ids = sampler.batch(B, T)
        batch = mask_tokens(ids, vocab_size=c["vocab"], masking_prob=0.15, randomize_prob=0.1, no_change_prob=0.1,
                            generator=gen, n_chosen=n_chosen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=batch.inputs, labels=batch.labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _worker_setup(device: str, threads: int | None) -> torch.device:
    if threads:
        torch.set_num_threads(threads)
    return torch.device(device)


def throughput(name: str, c: dict, device: torch.device, args) -> dict:
    tokens = c["batch_size"] * c["seq_len"]
    ours_label = mlmlab_label(c, device)
    started = time.perf_counter()
    ours = IsolatedStep(mlmlab_step, c, str(device), args.threads)
    ours.run(args.warmup)
    log(f"[{name}] mlmlab ({ours_label}) built and warmed up in {time.perf_counter() - started:.1f} s")

    candidates = {f"hf {attn} {prec}": IsolatedStep(hf_step, c, str(device), attn, prec, args.threads,
                                                                args.hf_keeps_freed_memory)
                  for attn, prec in hf_settings(device)}
    try:
        for step in candidates.values():
            step.run(2)
        trial = alternate(candidates, rounds=args.hf_trial_rounds, steps=args.hf_trial_steps, tokens_per_step=tokens)
        trial_rounds, _ = trial.rounds_used(min_clean=1, max_foreign=args.max_foreign)
        trial_median = {k: trial.median(k, trial_rounds) for k in candidates}
        best = max(trial_median, key=trial_median.get)
        log(f"[{name}] HF trial: " + ", ".join(f"{k} {v:,.0f}" for k, v in trial_median.items()) + f" -> {best}")
        for key in candidates:
            if key != best:
                candidates[key].close()
        figures = alternate({"mlmlab": ours, "hf": candidates[best]}, rounds=args.rounds, steps=args.steps,
                            tokens_per_step=tokens, log=lambda s: log(f"[{name}] {s}"))
    finally:
        ours.close()
        for step in candidates.values():
            step.close()
    rounds, clean = figures.rounds_used(min_clean=3, max_foreign=args.max_foreign)
    hf_label = best.removeprefix("hf ") + (", keeps freed memory" if args.hf_keeps_freed_memory else "")
    return {
        "config": name, **{k: v for k, v in c.items() if k != "target"}, "target": c["target"],
        "mlmlab_setting": ours_label, "hf_setting": hf_label, "hf_trial": trial_median,
        "mlmlab_tokens_per_s": figures.median("mlmlab", rounds), "hf_tokens_per_s": figures.median("hf", rounds),
        "ratio": figures.ratio("mlmlab", "hf", rounds), "rounds_used": len(rounds), "clean": clean,
        "per_round": figures.tokens_per_s, "others_cpu_share": figures.foreign,
        "threads": torch.get_num_threads(), "device": str(device),
    }


# --- masking ---------------------------------------------------------------------------------------


def reference_masking(x: torch.Tensor, *, n_tokens: int, masking_prob: float, randomize_prob: float,
                      no_change_prob: float, mask_id: int, pad_id: int, generator: torch.Generator,
                      no_mask_tokens: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """The labml reference's vectorised masking, written from its description.

    Choose each position with probability masking_prob (never a no-mask token); among the chosen,
    draw "unchanged" and "random" independently (so the two groups overlap and the split is only
    approximately the configured one); replace the random ones with any token id; [MASK] the rest;
    labels are the original ids at chosen positions and padding elsewhere.
    """
    full_mask = torch.rand(x.shape, generator=generator, device=x.device) < masking_prob
    for token in no_mask_tokens:
        full_mask &= x != token
    unchanged = full_mask & (torch.rand(x.shape, generator=generator, device=x.device) < no_change_prob)
    random_token_mask = full_mask & (torch.rand(x.shape, generator=generator, device=x.device) < randomize_prob)
    random_token_idx = torch.nonzero(random_token_mask, as_tuple=True)
    random_tokens = torch.randint(0, n_tokens, (len(random_token_idx[0]),), generator=generator, device=x.device)
    mask = full_mask & ~random_token_mask & ~unchanged
    y = x.clone()
    x = x.clone()
    x.masked_fill_(mask, mask_id)
    x[random_token_idx] = random_tokens
    y.masked_fill_(~full_mask, pad_id)
    return x, y


def masking(device: torch.device, reps: int) -> list[dict]:
    rows = []
    for B, T in ((32, 64), (512, 256)):
        vocab = 67
        gen = torch.Generator(device).manual_seed(0)
        ids = torch.randint(N_SPECIAL, vocab, (B, T), generator=gen, device=device)
        n = n_chosen_for(B * T, 0.15)
        fns = {
            "mlmlab": lambda: mask_tokens(ids, vocab_size=vocab, masking_prob=0.15, randomize_prob=0.1,
                                          no_change_prob=0.1, generator=gen, n_chosen=n),
            "reference": lambda: reference_masking(ids, n_tokens=vocab, masking_prob=0.15, randomize_prob=0.1,
                                                   no_change_prob=0.1, mask_id=MASK_ID, pad_id=PAD_ID, generator=gen),
        }
        times = interleaved_ms(fns, reps, synchronizer(device))
        rows.append({"batch": f"{B}x{T}", **{f"{k}_ms": statistics.median(v) for k, v in times.items()},
                     **{f"{k}_p10_ms": sorted(v)[len(v) // 10] for k, v in times.items()}})
    return rows


# --- logging overhead -------------------------------------------------------------------------------


def logging_overhead(device: torch.device, args) -> dict:
    """The quick preset's step with the metric pipeline on (as `mlmlab run` does) and off."""
    from mlmlab.store import Store
    from mlmlab.engine.data import prepare_data
    from mlmlab.engine.state import Progress
    from mlmlab.engine.trainer import Trainer

    cfg = load_config("quick", ["train.max_minutes=0"])
    precision = resolve_precision(cfg.train.precision, device)
    data = prepare_data(cfg)
    tokens = cfg.train.batch_size * cfg.train.seq_len
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        run_id = store.create_run(name="bench", config=cfg.to_dict(), vocab=data.tokenizer.to_dict(),
                                  total_steps=10**6, command="bench")
        trainer = Trainer(cfg, store, run_id, Path(tmp), data, device, precision)
        on = build_setup(cfg, device, precision, data.train_ids, data.tokenizer.vocab_size)
        off = build_setup(cfg, device, precision, data.train_ids, data.tokenizer.vocab_size)
        off.runner.metrics = False
        progress = Progress()
        spent = {"logging_s": 0.0, "steps": 0}

        def step_on():
            out = on.runner.step(progress.step + 200)
            start = time.perf_counter()
            on.window.add(out, tokens)
            progress.step += 1
            progress.tokens += tokens
            if progress.step % cfg.train.log_every == 0:
                stats = on.window.drain(progress.step)
                trainer._log(progress, stats)  # the trainer's own row building and batched writes
            spent["logging_s"] += time.perf_counter() - start
            spent["steps"] += 1

        counter = iter(range(10**9))

        def step_off():
            off.runner.step(next(counter) + 200)

        for _ in range(3):
            step_on()
            step_off()
        figures = alternate({"on": step_on, "off": step_off}, rounds=args.logging_rounds,
                            steps=cfg.train.log_every * 2, tokens_per_step=tokens, sync=synchronizer(device))
        trainer.flush(progress, force=True)
        store.close()
    rounds, clean = figures.rounds_used(min_clean=3, max_foreign=args.max_foreign)
    step_ms_on = 1000 * tokens / figures.median("on", rounds)
    in_step_ms = statistics.median(in_step_metrics_ms(on, cfg, device, args.masking_reps))
    return {
        "in_step_share": in_step_ms / step_ms_on, "in_step_ms": in_step_ms,
        "overhead_ab": 1 / figures.ratio("on", "off", rounds) - 1,  # step time on / off - 1
        "outside_step_share": spent["logging_s"] / spent["steps"] / (step_ms_on / 1000),
        "step_ms_on": step_ms_on, "step_ms_off": 1000 * tokens / figures.median("off", rounds),
        "log_every": cfg.train.log_every, "precision": precision, "rounds_used": len(rounds), "clean": clean,
    }


def in_step_metrics_ms(setup, cfg, device, reps: int) -> list[float]:
    """What the metric pipeline adds inside a step: the accuracy count and the masking split."""
    from mlmlab.masking import split_vector

    runner = setup.runner
    ids = runner.sampler.batch(cfg.train.batch_size, cfg.train.seq_len)
    batch = mask_tokens(ids, vocab_size=runner.vocab_size, masking_prob=cfg.mask.masking_prob,
                        randomize_prob=cfg.mask.randomize_prob, no_change_prob=cfg.mask.no_change_prob,
                        generator=runner.mask_gen, n_chosen=n_chosen_for(ids.numel(), cfg.mask.masking_prob))
    logits = torch.randn(batch.positions.numel(), runner.vocab_size, device=device, dtype=torch.bfloat16)

    def metrics():
        targets = ids.reshape(-1)[batch.positions]
        return (logits.max(-1).indices == targets).sum(), split_vector(batch, ids)  # as StepRunner.step

    return interleaved_ms({"metrics": metrics}, reps, synchronizer(device))["metrics"]


# --- report -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    p.add_argument("--only", choices=("throughput", "masking", "logging"), help="run one part only")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds, mlmlab vs HF (default 7)")
    p.add_argument("--steps", type=int, default=4, help="steps per round (default 4)")
    p.add_argument("--warmup", type=int, default=3, help="mlmlab warm-up steps (compilation happens here)")
    p.add_argument("--hf-trial-rounds", type=int, default=2)
    p.add_argument("--hf-trial-steps", type=int, default=3)
    p.add_argument("--masking-reps", type=int, default=200)
    p.add_argument("--logging-rounds", type=int, default=6)
    p.add_argument("--max-foreign", type=float, default=0.05,
                   help="a round counts as clean when other processes used at most this share of the CPUs; "
                        "figures use the clean rounds when there are at least 3 (default 0.05)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument("--hf-keeps-freed-memory", action="store_true",
                   help="give HF's process mlmlab's malloc setting too (keep freed memory; off: HF as it ships)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    args = p.parse_args(argv)
    unknown = sorted(set(args.configs.split(",")) - set(CONFIGS))
    if unknown:
        p.error(f"unknown config {', '.join(unknown)}: choose from {', '.join(CONFIGS)}")
    return args


def print_throughput(rows: list[dict], device, args) -> None:
    print(f"\nThroughput, tokens/s (median of alternating rounds of {args.steps} steps; "
          f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__})\n")
    print("| config | HF BertForMaskedLM (best setting) | mlmlab (defaults) | ratio | target | rounds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        shape = f"d{r['d_model']} L{r['n_layers']} H{r['n_heads']} ff{r['d_ff']}, {r['batch_size']}x{r['seq_len']}"
        print(f"| {r['config']} ({shape}) | {r['hf_tokens_per_s']:,.0f} ({r['hf_setting']}) | "
              f"{r['mlmlab_tokens_per_s']:,.0f} ({r['mlmlab_setting']}) | {r['ratio']:.2f}x | {r['target']}x | "
              f"{r['rounds_used']} {'clean' if r['clean'] else 'all (too few clean)'} |")


def print_masking(rows: list[dict]) -> None:
    print("\nMasking, ms per batch (median of interleaved calls; p10 in brackets)\n")
    print("| batch | reference (Bernoulli, overlapping groups) | mlmlab (exact split) |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['reference_ms']:.3f} ({r['reference_p10_ms']:.3f}) | "
              f"{r['mlmlab_ms']:.3f} ({r['mlmlab_p10_ms']:.3f}) |")


def print_logging(r: dict) -> None:
    print(f"\nMetric logging (quick preset, {r['precision']}, log_every {r['log_every']}): step "
          f"{r['step_ms_on']:.1f} ms on vs {r['step_ms_off']:.1f} ms off, A/B overhead {r['overhead_ab']:+.2%} "
          f"(median paired, {r['rounds_used']} {'clean' if r['clean'] else 'disturbed'} rounds); "
          f"window + rows + writes outside the step: {r['outside_step_share']:.3%} of step time; "
          f"accuracy and masking split inside the step: {r['in_step_ms']:.3f} ms = {r['in_step_share']:.3%}; "
          f"total {r['outside_step_share'] + r['in_step_share']:.3%}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cpu":
        report["cpu_flags"] = cpu_flags_line()
        print(f"CPU flags: {report['cpu_flags']}", file=sys.stderr)
    try:
        import transformers

        report["transformers"] = transformers.__version__
    except ImportError:
        if args.only in (None, "throughput"):
            print("transformers is not installed: pip install -e '.[bench]'", file=sys.stderr)
            return 2

    if args.only in (None, "throughput"):
        report["throughput"] = [throughput(name, CONFIGS[name], device, args) for name in args.configs.split(",")]
        print_throughput(report["throughput"], device, args)
    if args.only in (None, "masking"):
        report["masking"] = masking(device, args.masking_reps)
        print_masking(report["masking"])
    if args.only in (None, "logging"):
        report["logging"] = logging_overhead(device, args)
        print_logging(report["logging"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
