"""Tokens/s of 1 and 2 training processes for the same global batch, and the all-reduce's share of a step.

    python experiments/bench_distributed.py                       # the quick preset, global batch 64, CPU (gloo)
    python experiments/bench_distributed.py --global-batch 32 --steps 30 --set model.d_model=256
    python experiments/bench_distributed.py --device cuda         # 1 GPU: single-process rows only

Every row is mlmlab's real StepRunner (build_state, as `mlmlab run` builds it), timed over
`--steps` steps after `--warmup`, in `--rounds` rounds taking turns (a row: the median step). Rows:

* 1 process, batch B (all the machine's threads);
* 1 process, batch B/2 x grad_accum_steps 2 (the cost of accumulating);
* 2 processes (gloo, spawned), batch B/2 each, threads split between them: the DDP step;
* the same 2 processes, every other step inside `no_sync` (no gradient all-reduce; the steps take
  turns with the DDP steps): the DDP step minus its communication. The all-reduce share is
  1 - (no_sync step time / DDP step time): what the all-reduce adds to a step, overlapped with
  backward as DDP runs it.

Tokens/s always counts the global batch (every process's tokens). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time

import torch
import torch.multiprocessing as mp


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step_seconds(sets: list[str], device_name: str, steps: int, warmup: int, *, rank: int = 0, world_size: int = 1,
                 alternate_no_sync: bool = False) -> list[float]:
    """Seconds per optimizer step of the real step runner (the device synchronised at each mark).

    With `alternate_no_sync`, every other step runs inside DDP's `no_sync` (no gradient all-reduce):
    the two kinds of step take turns in one process, so a busy spell of the machine hits both."""
    from mlmlab.config import load_config
    from mlmlab.devices import resolve_device, resolve_precision
    from mlmlab.engine.data import mask_strategy, no_mask_ids, prepare_data
    from mlmlab.engine.state import build_state

    cfg = load_config(None, sets)
    device = resolve_device(device_name)
    precision = resolve_precision(cfg.train.precision, device)
    data = prepare_data(cfg, on_message=lambda text: None)
    tok = data.tokenizer
    wrap = None
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrap = DistributedDataParallel
    state = build_state(cfg, device, precision, data.train_ids, tok.vocab_size, no_mask_ids(tok, cfg, device),
                        rank=rank, world_size=world_size, wrap=wrap, strategy=mask_strategy(tok, cfg, device))
    runner = state.runner
    times = []
    for step in range(warmup + steps):
        started = time.perf_counter()
        if alternate_no_sync and step % 2:
            with runner.ddp.no_sync():
                runner.step(step)
        else:
            runner.step(step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    return times


def ddp_worker(rank: int, port: int, threads: int, sets: list[str], steps: int, warmup: int, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        times = step_seconds(sets, "cpu", 2 * steps, warmup, rank=rank, world_size=2, alternate_no_sync=True)
        gathered = [None, None]
        dist.all_gather_object(gathered, times)
        if rank == 0:
            results.put([max(pair) for pair in zip(*gathered)])  # a DDP step ends when its slowest rank does
    finally:
        dist.destroy_process_group()


def two_processes(sets: list[str], threads: int, steps: int, warmup: int) -> tuple[list[float], list[float]]:
    """(DDP step seconds, no_sync step seconds), `steps` of each, taking turns."""
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(ddp_worker, args=(free_port(), threads, sets, steps, warmup, results), nprocs=2,
                       start_method="spawn")
    times = results.get()
    first = warmup % 2  # times[i] is step warmup + i: odd steps ran inside no_sync
    synced = [t for i, t in enumerate(times) if (i + first) % 2 == 0]
    return synced, [t for i, t in enumerate(times) if (i + first) % 2 == 1]


def row(name: str, times: list[float], tokens_per_step: int) -> dict:
    median = statistics.median(times)
    return {"name": name, "step_ms": round(1000 * median, 2), "tokens_per_s": round(tokens_per_step / median),
            "steps": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--global-batch", type=int, default=64, help="sequences per optimizer step over all processes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu (1 and 2 processes) or cuda (1 process)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE (quick preset)")
    args = parser.parse_args()
    base = ["train.short_seq_len=0", "train.short_seq_steps=0", "train.max_minutes=0", "data.source=builtin", *args.sets]
    half = args.global_batch // 2
    seq_len = int(dict(s.split("=", 1) for s in base).get("train.seq_len", 64))
    tokens = args.global_batch * seq_len
    threads = torch.get_num_threads()
    per_process = max(1, threads // 2)
    log(f"global batch {args.global_batch} x {seq_len} tokens; {threads} threads; {args.rounds} rounds")
    variants = {
        "1 process": lambda: step_seconds([*base, f"train.batch_size={args.global_batch}"], args.device,
                                          args.steps, args.warmup),
        "1 process, accum 2": lambda: step_seconds([*base, f"train.batch_size={half}", "train.grad_accum_steps=2"],
                                                   args.device, args.steps, args.warmup),
    }
    if args.device == "cpu":
        sets = [*base, f"train.batch_size={half}"]
        variants["2 processes"] = lambda: two_processes(sets, per_process, args.steps, args.warmup)
    names = {"2 processes": [f"2 processes (gloo, {per_process} threads each)", "2 processes, no_sync (no all-reduce)"]}
    times: dict[str, list[float]] = {}
    for round_no in range(args.rounds):  # variants take turns, so a busy spell of the machine hits all of them
        for name, measure in variants.items():
            measured = measure()
            for label, values in zip(names.get(name, [name]), measured if name in names else [measured]):
                times[label] = times.get(label, []) + values
                log(f"round {round_no + 1}: {json.dumps(row(label, times[label], tokens))}")
    rows = [row(name, values, tokens) for name, values in times.items()]
    result = {"global_batch": args.global_batch, "seq_len": seq_len, "threads": threads, "device": args.device,
              "rows": rows}
    if args.device == "cpu":
        synced, unsynced = list(times.values())[2:]
        result["allreduce_share"] = round(1 - statistics.median(unsynced) / statistics.median(synced), 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
