"""`mlmlab bench`: how fast a config trains on this machine, and how close to the hardware's limit.

It runs real training steps of the configured model through the same `StepRunner` the training
loop uses (window sampling, masking, forward, backward, gradient clipping, optimizer update, the
on-device metric window) after a few warm-up steps (which include `torch.compile`'s compilation
when compile is on), with no database. The sequence-length curriculum (and the older short warm-up)
is switched off: every step is timed at `train.seq_len`.

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

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mlmlab.config import ExperimentConfig
from mlmlab.devices import device_name, memory_mb
from mlmlab.engine.data import mask_strategy, no_mask_ids, prepare_data
from mlmlab.engine.metrics import MetricWindow
from mlmlab.engine.state import build_state
from mlmlab.engine.step import StepRunner
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
    sync = synchronizer(device)
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


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (CUDA and MPS run asynchronously; a CPU does not)."""
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
            synchronizer(self.device)()  # MPS is asynchronous too; CPU steps are already synchronous
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
    runner: StepRunner
    window: MetricWindow
    device: torch.device
    precision: str
    n_params: int
    args: ModelArgs


def build_setup(cfg: ExperimentConfig, device: torch.device, precision: str, train_ids: torch.Tensor,
                vocab_size: int, tokenizer=None) -> BenchSetup:
    """With the corpus's `tokenizer`, masking follows the config as a run's does (mask.no_mask_tokens,
    mask.strategy); synthetic token streams have none and mask single tokens."""
    no_mask, strategy = (no_mask_ids(tokenizer, cfg, device), mask_strategy(tokenizer, cfg, device)) if tokenizer else (None, None)
    state = build_state(cfg, device, precision, train_ids, vocab_size, no_mask, strategy=strategy)
    window = MetricWindow(device, cfg.train.skip_nonfinite)
    return BenchSetup(cfg, state.runner, window, device, precision, state.model.n_params(), state.model.args)


def time_steps(setup: BenchSetup, steps: int, first_step: int = 0) -> list[float]:
    """Seconds per step for `steps` consecutive training steps."""
    timer = StepTimer(setup.device)
    timer.mark()
    for i in range(steps):
        out = setup.runner.step(first_step + i)
        setup.window.add(out, out.tokens)
        timer.mark()
    return timer.seconds()


def run_bench(cfg: ExperimentConfig, device: torch.device, precision: str, *, steps: int = 30, warmup: int = 5,
              measure_peak: bool = True) -> dict:
    """Warm up, time `steps` training steps, and return the figures `mlmlab bench` prints."""
    cfg = cfg.with_overrides({"train.short_seq_len": 0, "train.short_seq_steps": 0, "train.seq_len_schedule": []})
    data = prepare_data(cfg)
    tok = data.tokenizer
    setup = build_setup(cfg, device, precision, data.train_ids, tok.vocab_size, tok)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    time_steps(setup, warmup)
    synchronizer(device)()
    warmup_s = time.perf_counter() - started
    # Start past the warm-up of the lr schedule so the timed steps are ordinary steps.
    per_step = time_steps(setup, steps, first_step=max(warmup, cfg.train.warmup_steps))
    setup.window.drain(steps + warmup)  # the one host read of the metrics, as the loop does every log_every
    tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
    total = sum(per_step)
    tokens_per_s = tokens_per_step * len(per_step) / total
    fpt = flops_per_token(setup.args, cfg.train.seq_len, cfg.mask.masking_prob)
    ms = sorted(1000 * s for s in per_step)
    # "inclusive": linear interpolation between the nearest ranks (numpy's default); one step is its own quartiles.
    p25, _, p75 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else ms * 3
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
        "step_ms_p25": p25,
        "step_ms_p75": p75,
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
