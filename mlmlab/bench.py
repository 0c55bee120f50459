"""`mlmlab bench`: how fast a config trains on this machine, and how close to the hardware's limit.

It runs real training steps of the configured model through the same `StepRunner` the training
loop uses (window sampling, masking, forward, backward, gradient clipping, optimizer update, the
on-device metric window) after a few warm-up steps (which include `torch.compile`'s compilation
when compile is on), with no database. Short-sequence warm-up is ignored: every step is timed at
`train.seq_len`.

Model FLOPs per token (a multiply-add is 2 FLOPs; training = forward + backward = 3 × forward):

    per layer:  2·(3d² + d² + 2·d·d_ff)   QKV, output projection, the two feed-forward matmuls
              + 2·2·T·d                   attention scores QKᵀ and scores × V over T keys
    head:       2·d·V at each predicted position, i.e. p·2·d·V per token (p = masking_prob)

    FLOPs/token = 3 · ( L·(8d² + 4·d·d_ff + 4·T·d) + p·2·d·V )

Embedding lookups, norms, softmax, GELU and the optimizer are not counted (the usual convention
for MFU, as in PaLM). Counting the head only where there is a label is conservative: a model that
computes it at every position does more arithmetic but no more useful work.

MFU = FLOPs/token × tokens/s ÷ peak, where peak is *measured* here: the best throughput of a large
square matmul in the run's precision (fp32, or bf16 under bf16 autocast) on this device, not a
datasheet figure.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from mlmlab.config import ExperimentConfig
from mlmlab.devices import memory_mb
from mlmlab.model import ModelArgs


def flops_per_token(args: ModelArgs, seq_len: int, masking_prob: float) -> float:
    """Training FLOPs per input token (see the module docstring for the formula)."""
    d, ff, L, V, T = args.d_model, args.d_ff, args.n_layers, args.vocab_size, seq_len
    per_layer = 8 * d * d + 4 * d * ff + 4 * T * d
    return 3.0 * (L * per_layer + masking_prob * 2 * d * V)


def matmul_peak(device: torch.device, precision: str, seconds: float = 1.0) -> float:
    """Measured matmul throughput (FLOP/s) of this device in this precision: best of several runs."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = {"cuda": 8192, "mps": 4096}.get(device.type, 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    flops = 2.0 * n**3
    sync = _synchronizer(device)
    torch.matmul(a, b, out=out)  # warm-up: library initialisation, thread pool, kernel choice
    sync()
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        reps = 1 if device.type == "cpu" else 10
        start = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=out)
        sync()
        elapsed = time.perf_counter() - start
        best = max(best, flops * reps / elapsed)
        if time.perf_counter() > deadline:
            return best


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


class StepTimer:
    """Per-step wall times without a host sync per step: CUDA events on CUDA, perf_counter elsewhere."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            _synchronizer(self.device)()  # MPS is asynchronous too; CPU steps are already synchronous
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


@dataclass
class BenchSetup:
    """Everything a timed step needs, built exactly as a training run builds it."""

    cfg: ExperimentConfig
    runner: object  # training.StepRunner
    window: object  # training._Window
    device: torch.device
    precision: str
    n_params: int
    args: ModelArgs


def build_setup(cfg: ExperimentConfig, device: torch.device, precision: str, train_ids: torch.Tensor,
                vocab_size: int, no_mask_ids: torch.Tensor | None = None) -> BenchSetup:
    from mlmlab.data import WindowSampler
    from mlmlab.training import StepRunner, _Window, build_optimizer, maybe_compile, model_args
    from mlmlab.model import MaskedLM

    torch.manual_seed(cfg.train.seed)
    args = model_args(cfg, vocab_size)
    model = MaskedLM(args).to(device)
    optimizer = build_optimizer(model, cfg, device)
    data_gen = torch.Generator(device).manual_seed(cfg.train.seed * 1000 + 17)
    mask_gen = torch.Generator(device).manual_seed(cfg.train.seed * 1000 + 29)
    sampler = WindowSampler(train_ids.to(device), data_gen)
    compiled = maybe_compile(model, cfg, device)
    runner = StepRunner(model, optimizer, cfg, device, precision, sampler, mask_gen, no_mask_ids, compiled=compiled)
    model.train()
    return BenchSetup(cfg, runner, _Window(device, cfg.train.skip_nonfinite), device, precision, model.n_params(), args)


def time_steps(setup: BenchSetup, steps: int, first_step: int = 0) -> list[float]:
    """Seconds per step for `steps` consecutive training steps."""
    timer = StepTimer(setup.device)
    tokens = setup.cfg.train.batch_size * setup.cfg.train.seq_len
    timer.mark()
    for i in range(steps):
        setup.window.add(setup.runner.step(first_step + i), tokens)
        timer.mark()
    return timer.seconds()


def run_bench(cfg: ExperimentConfig, device: torch.device, precision: str, *, steps: int = 30, warmup: int = 5,
              measure_peak: bool = True) -> dict:
    """Warm up, time `steps` training steps, and return the figures `mlmlab bench` prints."""
    from mlmlab.training import prepare_data

    cfg = cfg.with_overrides({"train.short_seq_len": 0, "train.short_seq_steps": 0})
    data = prepare_data(cfg)
    tok = data.tokenizer
    no_mask = torch.tensor(tok.ids_of(cfg.mask.no_mask_tokens), dtype=torch.long, device=device)
    setup = build_setup(cfg, device, precision, data.train_ids, tok.vocab_size, no_mask if no_mask.numel() else None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    time_steps(setup, warmup)
    _synchronizer(device)()
    warmup_s = time.perf_counter() - started
    # Start past the warm-up of the lr schedule so the timed steps are ordinary steps.
    per_step = time_steps(setup, steps, first_step=max(warmup, cfg.train.warmup_steps))
    setup.window.drain(steps + warmup)  # the one host read of the metrics, as the loop does every log_every
    tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
    total = sum(per_step)
    tokens_per_s = tokens_per_step * len(per_step) / total
    fpt = flops_per_token(setup.args, cfg.train.seq_len, cfg.mask.masking_prob)
    ms = sorted(1000 * s for s in per_step)
    result = {
        "config": cfg.to_dict(),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "precision": precision,
        "compile": bool(setup.runner.compiled),
        "attention": attention_path(setup),
        "torch": torch.__version__,
        "n_params": setup.n_params,
        "batch_size": cfg.train.batch_size,
        "seq_len": cfg.train.seq_len,
        "tokens_per_step": tokens_per_step,
        "warmup_steps": warmup,
        "warmup_s": round(warmup_s, 3),
        "steps": len(per_step),
        "tokens_per_s": tokens_per_s,
        "step_ms_median": statistics.median(ms),
        "step_ms_p25": _quantile(ms, 0.25),
        "step_ms_p75": _quantile(ms, 0.75),
        "step_ms_min": ms[0],
        "step_ms_max": ms[-1],
        "peak_mem_mb": memory_mb(device),
        "peak_mem_kind": "CUDA max allocated" if device.type == "cuda" else "process peak RSS",
        "flops_per_token": fpt,
        "achieved_tflops": fpt * tokens_per_s / 1e12,
        "peak_tflops": None,
        "mfu": None,
    }
    if measure_peak:
        peak = matmul_peak(device, precision)
        result["peak_tflops"] = peak / 1e12
        result["mfu"] = fpt * tokens_per_s / peak
    return result


def attention_path(setup: BenchSetup) -> str:
    """Which attention the timed steps ran (by model.py's own rule)."""
    from mlmlab.model import fused_cpu_attention_fits

    if setup.device.type != "cpu" or setup.precision != "bf16":
        return "scaled_dot_product_attention"
    args = setup.args
    if fused_cpu_attention_fits(args.d_model // args.n_heads, setup.cfg.train.seq_len, args.dropout):
        return "mlmlab's fused CPU kernel"
    return "written out (bf16 batched matmuls and softmax)"


def _quantile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            for line in open("/proc/cpuinfo", encoding="utf-8"):
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return os.uname().machine
    return device.type


def format_report(r: dict) -> str:
    """The human-readable `mlmlab bench` output."""
    m = r["config"]["model"]
    peak = f"{r['peak_tflops'] * 1000:,.0f} GFLOP/s" if r["peak_tflops"] is not None else "not measured"
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
    threads = f", {r['threads']} threads" if r["threads"] else ""
    lines = [
        f"device      {r['device']} ({r['device_name']}{threads}), precision {r['precision']}, "
        f"compile {'on' if r['compile'] else 'off'}, torch {r['torch']}",
        f"model       d_model {m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads, d_ff {m['d_ff']}: "
        f"{r['n_params']:,} parameters",
        f"batch       {r['batch_size']} × {r['seq_len']} = {r['tokens_per_step']:,} tokens per step",
        f"attention   {r['attention']}",
        f"steps       {r['steps']} timed after {r['warmup_steps']} warm-up ({r['warmup_s']:.1f} s)",
        f"tokens/s    {r['tokens_per_s']:,.0f}",
        f"ms/step     {r['step_ms_median']:.1f} median (p25 {r['step_ms_p25']:.1f}, p75 {r['step_ms_p75']:.1f}, "
        f"min {r['step_ms_min']:.1f}, max {r['step_ms_max']:.1f})",
        f"peak mem    {r['peak_mem_mb']:,.0f} MB ({r['peak_mem_kind']})",
        f"FLOPs/token {r['flops_per_token'] / 1e6:,.2f} M (training, head at predicted positions only)",
        f"achieved    {r['achieved_tflops'] * 1000:,.1f} GFLOP/s; matmul peak {peak} ({r['precision']}, measured)",
        f"MFU         {mfu}",
    ]
    return "\n".join(lines)


class ForeignLoad:
    """How busy the rest of the machine was during an interval: other processes' CPU time as a
    share of all cores (Linux /proc/stat; None elsewhere). On a shared machine a round that others
    disturbed can then be told from a clean one instead of being averaged in."""

    def __init__(self, own_pids: Iterable[int] = ()):
        self.available = Path("/proc/stat").is_file()
        self.tick = os.sysconf("SC_CLK_TCK") if self.available else 100
        self.cpus = os.cpu_count() or 1
        self.own_pids = list(own_pids)  # worker processes whose CPU time is ours, not foreign

    def _sample(self) -> tuple[float, float, float]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        mine = os.times()
        return busy / self.tick, mine.user + mine.system + self._workers_cpu(), time.perf_counter()

    def _workers_cpu(self) -> float:
        total = 0
        for pid in self.own_pids:
            try:  # fields 14 and 15 (utime, stime), counted after the ")" that ends the command name
                total += sum(int(v) for v in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13])
            except (OSError, ValueError, IndexError):
                pass
        return total / self.tick

    def start(self):
        return self._sample() if self.available else None

    def share(self, started) -> float | None:
        if started is None:
            return None
        busy, mine, now = self._sample()
        wall = max(now - started[2], 1e-9)
        return max(0.0, (busy - started[0]) - (mine - started[1])) / (wall * self.cpus)


@dataclass
class Alternation:
    """Tokens/s per round of each variant, and how busy the rest of the machine was meanwhile."""

    tokens_per_s: dict[str, list[float]]
    foreign: dict[str, list[float | None]]

    def clean_rounds(self, max_foreign: float = 0.05) -> list[int]:
        """Rounds in which no variant shared the machine with more than `max_foreign` of its CPU."""
        n = min(len(v) for v in self.tokens_per_s.values())
        return [r for r in range(n) if all(f[r] is not None and f[r] <= max_foreign for f in self.foreign.values())]

    def rounds_used(self, min_clean: int = 3, max_foreign: float = 0.05) -> tuple[list[int], bool]:
        """The clean rounds when there are at least `min_clean` of them, else all (flag: clean?)."""
        clean = self.clean_rounds(max_foreign)
        if len(clean) >= min_clean:
            return clean, True
        return list(range(min(len(v) for v in self.tokens_per_s.values()))), False

    def median(self, name: str, rounds: list[int]) -> float:
        return statistics.median(self.tokens_per_s[name][r] for r in rounds)

    def ratio(self, a: str, b: str, rounds: list[int]) -> float:
        """Median over `rounds` of a's tokens/s ÷ b's in the same round."""
        return statistics.median(self.tokens_per_s[a][r] / self.tokens_per_s[b][r] for r in rounds)


def alternate(variants: dict[str, Callable[[], object]], *, rounds: int, steps: int, tokens_per_step: dict[str, int] | int,
              sync: Callable[[], None] = lambda: None, log: Callable[[str], None] | None = None) -> Alternation:
    """Tokens/s of each variant per round, the variants taking turns `rounds` times (A B A B ...).

    On a shared or throttling machine, load drifts; taking turns puts every variant under the same
    drift, so ratios of per-round figures compare like with like, and rounds that other processes
    disturbed can be set aside (`Alternation.rounds_used`). Each callable runs one step; an
    IsolatedStep runs a round's steps in its worker with one message, and its CPU time counts as ours.
    """
    result = Alternation({name: [] for name in variants}, {name: [] for name in variants})
    load = ForeignLoad(v.pid for v in variants.values() if isinstance(v, IsolatedStep))
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))  # no variant always goes first
        for name in order:
            step = variants[name]
            sync()
            started = load.start()
            start = time.perf_counter()
            if isinstance(step, IsolatedStep):
                step.run(steps)
            else:
                for _ in range(steps):
                    step()
            sync()
            tokens = tokens_per_step if isinstance(tokens_per_step, int) else tokens_per_step[name]
            result.tokens_per_s[name].append(tokens * steps / (time.perf_counter() - start))
            result.foreign[name].append(load.share(started))
        if log:
            log(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {v[-1]:,.0f}" + (f" (others {result.foreign[n][-1]:.0%})" if result.foreign[n][-1] is not None else "")
                for n, v in result.tokens_per_s.items()))
    return result


class IsolatedStep:
    """A training step that lives in its own process: `factory(*args)` builds it there.

    Two contenders in one process disturb each other: after `torch.compile`'s generated kernels
    have run, Hugging Face's eager step ran 25% slower in the same process on a 2-core CPU (and
    ours slower beside it), so in-process alternation measured the neighbour, not the contender.
    Each contender therefore gets a process of its own; `alternate` wakes one at a time over a
    pipe. `factory` must be importable by name (a module-level function). It returns the step: a
    callable, which may also have methods for `call` (a trainer's `evaluate`, say).
    """

    def __init__(self, factory: Callable[..., Callable[[], object]], *args: object):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve_steps, args=(child, factory, args), daemon=True)
        self._process.start()
        child.close()
        self.pid = self._process.pid
        self._reply()  # built (or its error raised here)

    def __call__(self) -> None:
        self.run(1)

    def run(self, steps: int) -> None:
        """Run `steps` steps in the worker and wait for them (synchronised on CUDA)."""
        self._conn.send(("run", steps))
        self._reply()

    def call(self, method: str, *args: object) -> object:
        """Call a method of the worker's step object and return its (picklable) result."""
        self._conn.send(("call", method, args))
        return self._reply()

    def _reply(self) -> object:
        try:
            status, detail = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"benchmark worker {self.pid} died (exit code {self._process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"benchmark worker {self.pid} failed:\n{detail}")
        return detail

    def close(self) -> None:
        if self._process.is_alive():
            self._conn.send(None)
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()


def _serve_steps(conn, factory: Callable[..., Callable[[], object]], args: tuple) -> None:
    try:
        step = factory(*args)
        conn.send(("ready", None))
        while (request := conn.recv()) is not None:
            result = None
            if request[0] == "run":
                for _ in range(request[1]):
                    step()
            else:
                result = getattr(step, request[1])(*request[2])
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
            conn.send(("done", result))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
