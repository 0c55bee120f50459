"""Time to accuracy: mlmlab's quick preset against `BertForMaskedLM` of the same size, equal wall time.

    pip install -e ".[bench]"
    python experiments/bench_time_to_accuracy.py --seconds 300          # the issue's 5 minutes
    python experiments/bench_time_to_accuracy.py --seconds 60 --set train.lr=3e-3   # recipe tuning

Both models train on the same char-level data (the built-in corpus unless --data), see the same
kind of batches (random windows of `train.seq_len`, masked with mlmlab's exact masking at the
preset's rate for mlmlab and BERT's standard 15 / 10 / 10 for Hugging Face), and are scored on the
*same* held-out batches with the *same* fixed masks (mlmlab's evaluation set: EVAL_SEED, masked
at BERT's standard 15 / 10 / 10 whatever rate a recipe trains with).

mlmlab trains exactly as `mlmlab run experiments/quick.toml --set train.max_minutes=SECONDS/60`
would: its StepRunner, precision and compile defaults, learning-rate schedule (which anneals by the
time limit) and short-sequence warm-up. Hugging Face runs at its fastest setting on this machine
(attention eager or sdpa, fp32 or bf16 autocast, chosen by a short trial), with HF's default model
config at these sizes (dropout 0.1, GELU, post-LN) and the recipe of the issue's reference
measurement: Adam(W) with the Noam schedule (lr 1 · d_model^-0.5 · min(n^-0.5, n · 4000^-1.5)).
`--hf-lr` and `--hf-schedule cosine` give it a time-annealed cosine instead.

Each trains in a process of its own (mlmlab.benchharness.IsolatedStep: in one process, the two slowed each
other down) and they take turns in chunks of `--chunk` seconds, each until it has trained for
`--seconds` of its own wall time, so a shared machine's load hits both alike. Evaluation is not
counted for either.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mlmlab.bench import build_setup
from mlmlab.benchharness import ForeignLoad, IsolatedStep
from mlmlab.config import load_config
from mlmlab.data import WindowSampler
from mlmlab.devices import resolve_device, resolve_precision
from mlmlab.errors import MlmlabError
from mlmlab.masking import IGNORE, mask_tokens, n_chosen_for
from mlmlab.tokenizer import PAD_ID
from mlmlab.engine.data import prepare_data
from mlmlab.engine.evaluation import build_eval_set, evaluate
from mlmlab.engine.schedule import describe_stages, seq_len_stages


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Contender:
    """Something that trains in chunks of wall time and is evaluated at the end."""

    name = ""

    def __init__(self):
        self.seconds = 0.0
        self.steps = 0
        self.tokens = 0
        self.foreign: list[float] = []

    def __call__(self) -> None:
        """One step (the speed trial runs contenders step by step)."""
        self.step()

    def train_for(self, seconds: float) -> dict:
        """Train for `seconds` of wall time; return the totals so far."""
        load = ForeignLoad()
        started = load.start()
        start = time.perf_counter()
        end = start + seconds
        while time.perf_counter() < end:
            self.tokens += self.step()
            self.steps += 1
        self.seconds += time.perf_counter() - start
        share = load.share(started)
        if share is not None:
            self.foreign.append(share)
        return {"seconds": self.seconds, "steps": self.steps, "tokens": self.tokens}

    def held_out(self) -> dict:
        """Loss and accuracy on the shared fixed-mask held-out batches, and the training totals."""
        figures = self.evaluate(self.evalset, self.device)
        masked = sum(int((labels != IGNORE).sum()) for _, _, labels in self.evalset.batches)
        return {**figures, "eval_batches": len(self.evalset.batches), "masked_tokens": masked,
                "steps": self.steps, "tokens": self.tokens, "seconds": round(self.seconds, 1),
                "tokens_per_s": self.tokens / max(self.seconds, 1e-9),
                "others_cpu_share": sum(self.foreign) / len(self.foreign) if self.foreign else None}

    def step(self) -> int:
        raise NotImplementedError

    def setting(self) -> str:
        raise NotImplementedError


class Mlmlab(Contender):
    name = "mlmlab"

    def __init__(self, cfg, data, device, name: str = "mlmlab"):
        super().__init__()
        self.name = name
        self.cfg = cfg
        self.precision = resolve_precision(cfg.train.precision, device)
        self.setup = build_setup(cfg, device, self.precision, data.train_ids, data.tokenizer.vocab_size, data.tokenizer)
        self.model = self.setup.runner.model
        self.device = device

    def step(self) -> int:
        t = self.cfg.train
        if self.steps >= t.steps:
            time.sleep(0.01)  # the preset's step budget is spent: it would have stopped here
            return 0
        out = self.setup.runner.step(self.steps, self.seconds)
        tokens = out.tokens
        self.setup.window.add(out, tokens)
        if (self.steps + 1) % t.log_every == 0:
            self.last_stats = self.setup.window.drain(self.steps + 1)  # the loop's one host read per log line
        return tokens

    def evaluate(self, evalset, device) -> dict:
        return evaluate(self.model, evalset, self.precision, device)

    def setting(self) -> str:
        t = self.cfg.train
        return (f"{self.precision}, lr {t.lr}, warm-up {t.warmup_steps}, masking {self.cfg.mask.masking_prob}, "
                f"batch {t.batch_size}x{t.seq_len}"
                + (f", seq_len by step {describe_stages(self.cfg)}" if len(seq_len_stages(self.cfg)) > 1 else ""))


class HuggingFace(Contender):
    name = "hf"

    def __init__(self, cfg, data, device, attn: str, precision: str, args):
        super().__init__()
        from transformers import BertConfig, BertForMaskedLM

        torch.manual_seed(0)
        m, t = cfg.model, cfg.train
        config = BertConfig(vocab_size=data.tokenizer.vocab_size, hidden_size=m.d_model, num_hidden_layers=m.n_layers,
                            num_attention_heads=m.n_heads, intermediate_size=m.d_ff,
                            max_position_embeddings=m.max_seq_len, pad_token_id=PAD_ID)
        config._attn_implementation = attn
        self.model = BertForMaskedLM(config).to(device).train()
        self.precision, self.device, self.args, self.cfg, self.attn = precision, device, args, cfg, attn
        fused = device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9,
                                           weight_decay=0.01, fused=fused or None)
        self.gen = torch.Generator(device).manual_seed(7)
        self.sampler = WindowSampler(data.train_ids.to(device), self.gen)
        self.vocab = data.tokenizer.vocab_size
        self.B, self.T = t.batch_size, t.seq_len
        self.n_chosen = n_chosen_for(self.B * self.T, 0.15)

    def setting(self) -> str:
        a = self.args
        return f"{self.attn} {self.precision}, {a.hf_schedule} lr {a.hf_lr} warm-up {a.hf_warmup}"

    def lr(self) -> float:
        a, d = self.args, self.cfg.model.d_model
        if a.hf_schedule == "noam":
            n = self.steps + 1
            return a.hf_lr * d**-0.5 * min(n**-0.5, n * a.hf_warmup**-1.5)
        if self.steps < a.hf_warmup:
            return a.hf_lr * (self.steps + 1) / a.hf_warmup
        progress = min(1.0, self.seconds / a.seconds)
        return a.hf_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    def step(self) -> int:
        ids = self.sampler.batch(self.B, self.T)
        batch = mask_tokens(ids, vocab_size=self.vocab, masking_prob=0.15, randomize_prob=0.1, no_change_prob=0.1,
                            generator=self.gen, n_chosen=self.n_chosen)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            loss = self.model(input_ids=batch.inputs, labels=batch.labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.B * self.T

    @torch.no_grad()
    def evaluate(self, evalset, device) -> dict:
        self.model.eval()
        total, correct, count = 0.0, 0, 0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            for _, inputs, labels in evalset.batches:
                logits = self.model(input_ids=inputs).logits
                chosen = labels != IGNORE
                picked = logits[chosen].float()
                total += F.cross_entropy(picked, labels[chosen], reduction="sum").item()
                correct += (picked.argmax(-1) == labels[chosen]).sum().item()
                count += int(chosen.sum())
        self.model.train()
        return {"eval_loss": total / count, "eval_acc": correct / count}


def build_contender(kind: str, args: argparse.Namespace, extra: list[str], name: str = "",
                    attn: str = "", precision: str = "") -> Contender:
    """A contender, built inside its own worker process (mlmlab.benchharness.IsolatedStep).

    Every worker builds the same held-out set from the base config (fixed seed and masks)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    base = load_config(args.config, base_sets(args))
    data = prepare_data(base)
    if kind == "mlmlab":
        contender: Contender = Mlmlab(load_config(args.config, [*base_sets(args), *extra]), data, device, name or "mlmlab")
    else:
        contender = HuggingFace(base, data, device, attn, precision, args)
    # mlmlab's evaluation set: BERT's standard 15 / 10 / 10 whatever rate a recipe trains with.
    contender.evalset = build_eval_set(data.valid_ids, base, data.tokenizer.vocab_size, None, device)
    return contender


def base_sets(args: argparse.Namespace) -> list[str]:
    sets = [*args.sets, f"train.max_minutes={args.seconds / 60}", f"train.eval_batches={args.eval_batches}"]
    return [*sets, f"data.source={args.data}"] if args.data else sets


def fastest_hf_setting(args: argparse.Namespace, tokens_per_step: int) -> tuple[str, str, dict]:
    from mlmlab.benchharness import alternate

    device = resolve_device(args.device)
    settings = [("eager", "bf16"), ("sdpa", "bf16"), ("eager", "fp32"), ("sdpa", "fp32")]
    if device.type == "cpu" and resolve_precision("auto", device) == "fp32":
        settings = [s for s in settings if s[1] == "fp32"]
    workers = {f"{a} {p}": IsolatedStep(build_contender, "hf", args, [], "", a, p) for a, p in settings}
    try:
        for worker in workers.values():
            worker.run(1)
        trial = alternate(workers, rounds=2, steps=3, tokens_per_step=tokens_per_step)
    finally:
        for worker in workers.values():
            worker.close()
    rounds, _ = trial.rounds_used(min_clean=1)
    medians = {k: trial.median(k, rounds) for k in workers}
    best = max(medians, key=medians.get)
    attn, precision = best.split()
    return attn, precision, medians


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=300.0, help="training wall time for each (default 300)")
    p.add_argument("--chunk", type=float, default=10.0, help="seconds per turn (default 10)")
    p.add_argument("--config", default="quick", help="mlmlab preset (default quick)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of mlmlab's preset (repeatable); sizes apply to both models")
    p.add_argument("--data", help="a UTF-8 text file or folder instead of the built-in corpus")
    p.add_argument("--eval-batches", type=int, default=32, help="held-out batches (fixed windows and masks)")
    p.add_argument("--hf-schedule", choices=("noam", "cosine"), default="noam")
    p.add_argument("--hf-lr", type=float, help="noam multiplier (default 1.0) or cosine peak (default 1e-3)")
    p.add_argument("--hf-warmup", type=int, help="warm-up steps (default 4000 for noam, 100 for cosine)")
    p.add_argument("--hf-setting", help="'ATTN PRECISION', e.g. 'eager bf16' (default: fastest in a short trial)")
    p.add_argument("--only", choices=("mlmlab", "hf"), help="train one side only")
    p.add_argument("--against", action="append", default=[], metavar="KEY=VALUE",
                   help="instead of Hugging Face, race mlmlab with these extra overrides (recipe tuning, repeatable)")
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.hf_setting and (len(args.hf_setting.split()) != 2 or args.hf_setting.split()[0] not in ("eager", "sdpa")
                            or args.hf_setting.split()[1] not in ("fp32", "bf16")):
        p.error(f"--hf-setting {args.hf_setting!r}: expected 'eager|sdpa fp32|bf16', e.g. 'eager bf16'")
    args.hf_lr = args.hf_lr if args.hf_lr is not None else (1.0 if args.hf_schedule == "noam" else 1e-3)
    args.hf_warmup = args.hf_warmup or (4000 if args.hf_schedule == "noam" else 100)
    return args


def start_workers(args, cfg, workers: dict[str, IsolatedStep], report: dict) -> None:
    """One worker per contender: mlmlab, and HF (at its fastest setting) or mlmlab with `--against`."""
    if args.only != "hf":
        workers["mlmlab"] = IsolatedStep(build_contender, "mlmlab", args, [])
    if args.against:
        workers["mlmlab+against"] = IsolatedStep(build_contender, "mlmlab", args, args.against, "mlmlab+against")
        report["against"] = args.against
    elif args.only != "mlmlab":
        if args.hf_setting:
            attn, precision = args.hf_setting.split()
        else:
            attn, precision, trial = fastest_hf_setting(args, cfg.train.batch_size * cfg.train.seq_len)
            report["hf_trial_tokens_per_s"] = trial
            log("HF speed trial: " + ", ".join(f"{k} {v:,.0f} tokens/s" for k, v in trial.items()))
        workers["hf"] = IsolatedStep(build_contender, "hf", args, [], "", attn, precision)


def train_in_turns(workers: dict[str, IsolatedStep], until_s: float, chunk_s: float, trained: dict[str, float]):
    """Train the workers in turns of `chunk_s` seconds until each has trained `until_s` in all;
    `trained` (seconds so far per worker) is kept up to date. Yields the last step count after each round."""
    while any(seconds < until_s for seconds in trained.values()):
        for name, worker in workers.items():
            if trained[name] < until_s:
                totals = worker.call("train_for", min(chunk_s, until_s - trained[name]))
                trained[name], steps = totals["seconds"], totals["steps"]
        yield steps


def race(args, workers: dict[str, IsolatedStep]) -> dict[str, dict]:
    """Train the workers in turns of `--chunk` seconds until each has trained `--seconds`; score them."""
    trained = dict.fromkeys(workers, 0.0)
    for steps in train_in_turns(workers, args.seconds, args.chunk, trained):
        log(" | ".join(f"{name} {trained[name]:5.0f} s" for name in workers) + f" (last: step {steps})")
    return {name: worker.call("held_out") for name, worker in workers.items()}


def print_report(args, device, settings: dict[str, str], results: dict[str, dict], report: dict) -> None:
    scored = next(iter(results.values()))  # every worker scored the same fixed batches
    print(f"\nTime to accuracy: {args.seconds:.0f} s of training each, held-out masked accuracy on "
          f"{scored['eval_batches']} fixed batches ({scored['masked_tokens']:,} masked tokens), {device}, "
          f"{torch.get_num_threads()} threads\n")
    print("| model | setting | steps | tokens/s | eval loss | eval accuracy |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {settings[name]} | {r['steps']:,} | {r['tokens_per_s']:,.0f} | {r['eval_loss']:.3f} | {r['eval_acc']:.1%} |")
    if "hf" in results and "mlmlab" in results:
        ratio = results["mlmlab"]["eval_acc"] / results["hf"]["eval_acc"]
        report["accuracy_ratio"] = ratio
        print(f"\naccuracy ratio mlmlab / HF: {ratio:.2f}x (target 1.2x)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = load_config(args.config, base_sets(args))
    if args.against:
        load_config(args.config, [*base_sets(args), *args.against])  # a bad override fails here, in one line
    prepare_data(cfg)  # once here, so the workers find the corpus cached

    workers: dict[str, IsolatedStep] = {}
    report: dict = {"seconds": args.seconds, "config": cfg.to_dict(), "threads": torch.get_num_threads(),
                    "device": str(device), "torch": torch.__version__}
    try:
        start_workers(args, cfg, workers, report)
        settings = {name: w.call("setting") for name, w in workers.items()}
        if "hf" in settings:
            report["hf_setting"] = settings["hf"]
        results = race(args, workers)
    finally:
        for worker in workers.values():
            worker.close()
    report["results"] = results
    print_report(args, device, settings, results, report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MlmlabError as exc:  # a bad --config, --set or --data: one line, as the CLI gives it
        print(f"{Path(__file__).name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
