"""`mlmlab run`: validate everything, then create the run row, train, and record how it ended.

Every user error (config, data, device, resume target) is raised before a run row exists, so a
mistake never leaves a run behind. Under torchrun, rank 0 owns the row; other ranks only train.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from mlmlab import checkpoints as ckpt
from mlmlab.config import RESUMABLE_KEYS, SHAPE_KEYS, ExperimentConfig, build_config, load_config, parse_overrides
from mlmlab.devices import resolve_device, resolve_precision
from mlmlab.errors import CheckpointError, ConfigError, DataError, MlmlabError, StoreError
from mlmlab.paths import write_text_atomic
from mlmlab.store import Store
from mlmlab.tokenizer import tokenizer_from_dict
from mlmlab.vocab import ACTIVE
from mlmlab.engine.data import PreparedData, prepare_data
from mlmlab.engine.distributed import collective_timeout
from mlmlab.engine.reporting import Reporter, SilentReporter
from mlmlab.engine.trainer import Trainer


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
        """Join the process group: NCCL on CUDA, gloo on the CPU, with the collective timeout
        (distributed.collective_timeout) so a rank that hangs fails the others instead of hanging them."""
        if self.world_size > 1:
            import torch.distributed as dist

            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=collective_timeout())

    def reporter(self, reporter: Reporter | None) -> Reporter | None:
        """Rank 0 reports progress; the others say nothing (their errors still reach stderr)."""
        return reporter if self.rank == 0 else SilentReporter()

    def close(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def new_run(db_path: Path, config: str | None, sets: list[str], *, name: str | None, device: str | None,
            reporter: Reporter | None = None, id_file: Path | None = None) -> tuple[int | None, str]:
    """Validate, create the run and train it. Returns (run id, final status).

    With `id_file`, the run's id is written there once its row and folder exist (see `write_id_file`).
    """
    cfg = load_config(config, sets)
    if device:
        cfg = cfg.with_overrides({"train.device": device})
    dist = Distributed.from_env()
    reporter = dist.reporter(reporter)
    dev = dist.device(resolve_device(cfg.train.device))
    precision = resolve_precision(cfg.train.precision, dev)
    data = prepare_data(cfg)  # every rank, at once (the token cache is written atomically, so they may race)
    run_name = name or (Path(config).stem if config else "quick")
    store = Store(db_path) if dist.rank == 0 else None
    run_id, run_dir = None, Path(".")
    if store:
        try:
            run_id = store.create_run(name=run_name, config=cfg.to_dict(), vocab=data.tokenizer.to_dict(),
                                      total_steps=cfg.train.steps, command=_command_line(), make_dir=True)
        except BaseException:
            store.close()
            raise
        run_dir = store.run_dir_for(run_id)
        write_id_file(id_file, run_id)
    return run_id, _train(cfg, store, run_id, run_dir, data, dev, precision, dist, reporter, None)


def resume_run(db_path: Path, ref: str, sets: list[str], *, device: str | None,
               reporter: Reporter | None = None, id_file: Path | None = None) -> tuple[int, str]:
    """Continue a run from its latest checkpoint; only its length may change.

    Under torchrun every rank reads the run and its checkpoint (so the database's folder must be
    on a file system every node mounts); only rank 0 claims the run and checks it is not active
    (the others may read it after rank 0 has claimed it)."""
    dist = Distributed.from_env()
    reporter = dist.reporter(reporter)
    with Store(db_path, readonly=True) as store:  # only looks: a wrong --resume changes nothing
        run = store.find_run(ref)
        run["run_dir"] = str(_run_dir(store, run))
    if run["status"] in ACTIVE and dist.rank == 0:
        raise StoreError(f"run {run['id']} is still {run['status']} (pid {run['pid']} on {run['host']}); stop it first",
                         run_id=run["id"])
    cfg = _resumed_config(run, sets, device)
    payload = latest_checkpoint(run, reporter)
    if payload["step"] >= cfg.train.steps:
        raise ConfigError(
            f"run {run['id']} already reached step {payload['step']} of train.steps = {cfg.train.steps}; "
            f"extend it with --set train.steps=N"
        )
    dev = dist.device(resolve_device(cfg.train.device))
    precision = resolve_precision(cfg.train.precision, dev)
    try:
        tokenizer = tokenizer_from_dict(payload["vocab"])
    except DataError as exc:  # a vocabulary that does not parse: name the file it came from
        raise CheckpointError(f"checkpoint {payload['path']}: {exc}", run_id=run["id"]) from None
    data = prepare_data(cfg, tokenizer)
    store = Store(db_path) if dist.rank == 0 else None
    if store:
        try:
            # Claim the run, and cut its history back to the checkpoint, in one transaction.
            store.begin_resume(run, payload, total_steps=cfg.train.steps, config=json.dumps(cfg.to_dict()),
                               run_dir=run["run_dir"])
        except BaseException:
            store.close()
            raise
        ckpt.remove_stale_temp_files(Path(run["run_dir"]))  # half-written files of the killed process
        write_id_file(id_file, run["id"])
    return run["id"], _train(cfg, store, run["id"], Path(run["run_dir"]), data, dev, precision, dist, reporter, payload)


def _run_dir(store: Store, run: dict) -> Path:
    """The run's folder: as stored, or next to the database if the stored path is gone (the
    database and its folders were moved together, or a relative path was stored by an old version)."""
    stored = Path(run["run_dir"])
    if stored.is_absolute() and stored.is_dir():
        return stored
    beside = store.run_dir_for(run["id"])
    return beside if beside.is_dir() or not stored.is_dir() else stored.resolve()


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


def latest_checkpoint(run: dict, reporter: Reporter | None = None) -> dict:
    """The newest checkpoint of a run that loads; broken newer files are skipped (and said so), not
    trusted. The payload gains `path`, the file it came from."""
    folder = Path(run["run_dir"])
    if not folder.is_dir():
        raise CheckpointError(f"run {run['id']}: its folder {folder} is missing, so there is no checkpoint to resume from",
                              run_id=run["id"])
    broken: list[str] = []
    for path in reversed(ckpt.checkpoint_files(folder)):
        try:
            payload = ckpt.load_checkpoint(path)
        except CheckpointError as exc:
            broken.append(str(exc))
            continue
        for problem in broken:
            (reporter or SilentReporter()).message(f"skipped {problem}")
        return {**payload, "path": str(path)}
    if broken:
        raise CheckpointError(f"run {run['id']} has no loadable checkpoint: {broken[0]}"
                              + (f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""), run_id=run["id"])
    raise CheckpointError(f"run {run['id']} has no checkpoint to resume from (it stopped before its first one)",
                          run_id=run["id"])


def _train(cfg, store, run_id, run_dir, data, dev, precision, dist, reporter, payload) -> str:
    dist.init(dev)
    try:
        data = _rank0_vocabulary(cfg, data, dist)
        trainer = Trainer(cfg, store, run_id, run_dir, data, dev, precision, reporter or SilentReporter(),
                          resume_from=payload, rank=dist.rank, world_size=dist.world_size)
        return trainer.run()
    except BaseException as exc:
        # A failure before the loop took charge (e.g. out of memory building the model).
        try:
            if store and store.run(run_id)["status"] in ACTIVE:
                store.finish_run(run_id, "failed", str(exc) if isinstance(exc, MlmlabError) else f"{type(exc).__name__}: {exc}")
        except MlmlabError:
            pass  # the database is the problem; the row reads crashed once this process is gone
        raise
    finally:
        dist.close()
        if store:
            store.close()


def _rank0_vocabulary(cfg: ExperimentConfig, data: PreparedData, dist: Distributed) -> PreparedData:
    """Every rank trains on rank 0's vocabulary. Each rank built its own from the same corpus (a
    char vocabulary always agrees); a rank whose differs (a subword trainer that is not
    deterministic) encodes the corpus again with rank 0's, so the embedding rows mean the same."""
    if dist.world_size == 1:
        return data
    import torch.distributed as tdist

    vocab = [data.tokenizer.to_dict() if dist.rank == 0 else None]
    tdist.broadcast_object_list(vocab, src=0)
    if vocab[0] == data.tokenizer.to_dict():
        return data
    return prepare_data(cfg, tokenizer_from_dict(vocab[0]))


def write_id_file(path: Path | None, run_id: int) -> None:
    """Tell whoever launched this process (the app) which run it is: the id as text, written to a
    temporary file and renamed, so a reader never sees half of it. A failure only costs the
    launcher its log adoption, so it is said in the output and training goes on."""
    if path is None:
        return
    path = Path(path)
    try:
        write_text_atomic(path, f"{run_id}\n")
    except OSError as exc:
        print(f"mlmlab: could not write the run id to {path} ({exc.strerror})", file=sys.stderr)


def _command_line() -> str:
    """The command as typed, for the run's row; without `--id-file`, which only tells the launcher its id."""
    args, typed = [], iter(sys.argv[1:])
    for arg in typed:
        if arg == "--id-file":
            next(typed, None)  # and its PATH
        elif not arg.startswith("--id-file="):
            args.append(arg)
    return " ".join([Path(sys.argv[0]).name, *args])
