"""`mlmlab run`: validate everything, then create the run row, train, and record how it ended.

Every user error (config, data, device, resume target) is raised before a run row exists, so a
mistake never leaves a run behind. Under torchrun, rank 0 owns the row; other ranks only train.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mlmlab import checkpoints as ckpt
from mlmlab.config import RESUMABLE_KEYS, SHAPE_KEYS, ExperimentConfig, build_config, load_config, parse_overrides
from mlmlab.devices import resolve_device, resolve_precision
from mlmlab.errors import CheckpointError, ConfigError, StoreError
from mlmlab.store import ACTIVE, Store, effective_status, this_host
from mlmlab.tokenizer import tokenizer_from_dict
from mlmlab.training import Reporter, SilentReporter, Trainer, prepare_data


@dataclass
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> "Distributed":
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))

    def device(self, device: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.world_size > 1 else device

    def init(self, device: torch.device) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def close(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def new_run(db_path: Path, config: str | None, sets: list[str], *, name: str | None, device: str | None,
            reporter: Reporter | None = None) -> tuple[int | None, str]:
    """Validate, create the run and train it. Returns (run id, final status)."""
    cfg = load_config(config, sets)
    if device:
        cfg = cfg.with_overrides({"train.device": device})
    dist = Distributed.from_env()
    dev = dist.device(resolve_device(cfg.train.device))
    precision = resolve_precision(cfg.train.precision, dev)
    data = prepare_data(cfg)
    run_name = name or (Path(config).stem if config else "quick")
    store = Store(db_path) if dist.rank == 0 else None
    run_id, run_dir = None, Path(".")
    if store:
        run_id = store.create_run(name=run_name, config=cfg.to_dict(), vocab=data.tokenizer.to_dict(),
                                  total_steps=cfg.train.steps, command=_command_line())
        run_dir = store.run_dir_for(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_id, _train(cfg, store, run_id, run_dir, data, dev, precision, dist, reporter, None)


def resume_run(db_path: Path, ref: str, sets: list[str], *, device: str | None,
               reporter: Reporter | None = None) -> tuple[int, str]:
    """Continue a run from its latest checkpoint; only its length may change."""
    dist = Distributed.from_env()
    with Store(db_path, readonly=dist.rank != 0) as store:
        run = store.find_run(ref)
    if effective_status(run) in ACTIVE:
        raise StoreError(f"run {run['id']} is still {run['status']} (pid {run['pid']} on {run['host']}); stop it first")
    cfg = _resumed_config(run, sets, device)
    payload = latest_checkpoint(run)
    if payload["step"] >= cfg.train.steps:
        raise ConfigError(
            f"run {run['id']} already reached step {payload['step']} of train.steps = {cfg.train.steps}; "
            f"extend it with --set train.steps=N"
        )
    dev = dist.device(resolve_device(cfg.train.device))
    precision = resolve_precision(cfg.train.precision, dev)
    data = prepare_data(cfg, tokenizer_from_dict(payload["vocab"]))
    store = Store(db_path) if dist.rank == 0 else None
    if store:
        store.truncate_after(run["id"], payload["step"])
        store.update_run(run["id"], status="queued", total_steps=cfg.train.steps, config=json.dumps(cfg.to_dict()),
                         step=payload["step"], tokens=payload.get("tokens", 0), error=None,
                         pid=os.getpid(), host=this_host(), heartbeat_at=time.time())
    return run["id"], _train(cfg, store, run["id"], Path(run["run_dir"]), data, dev, precision, dist, reporter, payload)


def _resumed_config(run: dict, sets: list[str], device: str | None) -> ExperimentConfig:
    overrides = parse_overrides(sets)
    for key in overrides:
        if key in SHAPE_KEYS:
            raise ConfigError(f"--resume cannot change {key}: the checkpoint's weights have the old shape (start a new run)")
        if key not in RESUMABLE_KEYS:
            raise ConfigError(f"--resume can change only {', '.join(RESUMABLE_KEYS)}, not {key}")
    cfg = build_config(run["config"])
    if device:
        overrides["train.device"] = device
    return cfg.with_overrides(overrides) if overrides else cfg


def latest_checkpoint(run: dict) -> dict:
    """The newest checkpoint of a run that loads; broken newer files are skipped, not trusted."""
    files = ckpt.checkpoint_files(Path(run["run_dir"]))
    if not Path(run["run_dir"]).is_dir():
        raise CheckpointError(f"run {run['id']}: its folder {run['run_dir']} is missing")
    for path in reversed(files):
        try:
            return ckpt.load_checkpoint(path)
        except CheckpointError:
            continue
    raise CheckpointError(f"run {run['id']} has no checkpoint to resume from")


def _train(cfg, store, run_id, run_dir, data, dev, precision, dist, reporter, payload) -> str:
    dist.init(dev)
    try:
        trainer = Trainer(cfg, store, run_id, run_dir, data, dev, precision, reporter or SilentReporter(),
                          resume_from=payload, rank=dist.rank, world_size=dist.world_size)
        return trainer.run()
    except BaseException as exc:
        # A failure before the loop took charge (e.g. out of memory building the model).
        if store and store.run(run_id)["status"] in ACTIVE:
            store.finish_run(run_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        dist.close()
        if store:
            store.close()


def _command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
