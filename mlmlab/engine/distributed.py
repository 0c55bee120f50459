"""What the ranks of a torchrun run share beyond DDP's gradient all-reduce.

* The data order: micro-batch `index` of optimizer step `step` is drawn from generators seeded by
  `micro_seed(seed, step, index)`, so its windows and masks are the same whichever rank and
  micro-step take it (1 process x accumulation 2 trains on what 2 processes x 1 do), and a
  checkpoint resumes under any world size without per-rank generator states.
* Figures: sums all-reduced once per log line (`all_reduce_sum`), a stop flag and the clock
  (`agree`), and each rank's host and device once at the start (`gather_ranks`).
* Failures: a rank that raises leaves its error text in the rendezvous store (`publish_failure`)
  before it closes its connections; rank 0, whose next collective then fails, reads it back
  (`peer_failure`) and records the run `failed` with that text. A collective that fails with no
  text published means a rank died without a word (killed): the run is `crashed`.

Every function is a no-op (or the trivial answer) without an initialised process group.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import torch

MASK64 = (1 << 64) - 1
TIMEOUT_ENV = "MLMLAB_DIST_TIMEOUT_S"
# Ranks other than 0 wait in their next collective while rank 0 evaluates and writes a checkpoint:
# the timeout must outlast the longest of those. A rank that raises does not need it (its closed
# connection fails the others at once); a rank that hangs does.
DEFAULT_TIMEOUT_S = 600.0
FAILURE_KEY = "mlmlab/failed/{rank}"
FAILURES_KEY = "mlmlab/failures"  # how many ranks published a failure: one read tells the watcher
WATCH_EVERY_S = 0.5
PEER_WAIT_S = 2.0  # how long rank 0 waits for a failing peer's text after its collective failed
# Text of the errors a collective raises when a peer is gone (gloo raises a plain RuntimeError).
PEER_LOSS_WORDS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo/", "NCCL",
                   "Timed out", "timed out", "ProcessGroup")


def collective_timeout() -> timedelta:
    """The collective timeout: $MLMLAB_DIST_TIMEOUT_S seconds, or DEFAULT_TIMEOUT_S."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = DEFAULT_TIMEOUT_S
    return timedelta(seconds=max(seconds, 1.0))


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def micro_seed(seed: int, step: int, index: int, stream: int) -> int:
    """A 63-bit seed for micro-batch `index` of step `step` (stream 0: windows, 1: masks).

    splitmix64 over the mixed inputs: nearby steps and indices give unrelated generator states.
    """
    x = (seed * 0x9E3779B97F4A7C15 + (step + 1) * 0xBF58476D1CE4E5B9 + (index + 1) * 0x94D049BB133111EB
         + stream * 0xD6E8FEB86659FD93) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return (x ^ (x >> 31)) & ((1 << 63) - 1)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks (one collective)."""
    if active():
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def agree(values: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum over ranks: a stop flag any rank raised, the latest clock."""
    if active():
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def gather_ranks(device: torch.device) -> list[dict]:
    """Every rank's rank, local rank, host, device and pid, in rank order (one collective)."""
    from mlmlab.store.liveness import this_host

    mine = {"rank": int(os.environ.get("RANK", 0)), "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
            "host": this_host(), "device": str(device), "pid": os.getpid()}
    if not active():
        return [mine]
    import torch.distributed as dist

    everyone: list[dict | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return [info for info in everyone if info is not None]


def _store():
    import torch.distributed as dist

    return dist.distributed_c10d._get_default_store()


def publish_failure(rank: int, text: str) -> None:
    """Leave this rank's error where rank 0 finds it. Best effort: the store may be gone too."""
    if not active():
        return
    try:
        store = _store()
        store.set(FAILURE_KEY.format(rank=rank), text[:2000])
        store.add(FAILURES_KEY, 1)
    except Exception:  # noqa: BLE001 - the launcher's store is gone: rank 0 records what it saw
        pass


def peer_failure(world_size: int, wait_s: float = 0.0) -> str | None:
    """The error text the lowest failing rank (other than 0) published, waiting up to `wait_s` for one."""
    if not active():
        return None
    deadline = time.monotonic() + wait_s
    try:
        store = _store()
        while True:
            if store.add(FAILURES_KEY, 0):  # adding 0 reads the count
                for rank in range(1, world_size):
                    key = FAILURE_KEY.format(rank=rank)
                    if store.check([key]):
                        return store.get(key).decode("utf-8", "replace")
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)
    except Exception:  # noqa: BLE001 - the store went with the failure: nothing to read
        return None


def is_peer_loss(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed because another rank is gone or silent."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(word in str(exc) for word in PEER_LOSS_WORDS)


class PeerWatch:
    """Rank 0's watch on the other ranks' failures, from a thread of its own.

    With gloo, a peer's exit fails rank 0's next collective at once and the loop records it. With
    NCCL, rank 0 can sit in a device synchronisation until the collective timeout, and torchrun
    SIGKILLs it 30 s after the failing rank exited: this thread sees the published text within
    WATCH_EVERY_S and hands it to `on_failure` (which records the run `failed`) first. The rendezvous
    store's client serialises its operations, so the thread may share it with the training thread.
    """

    def __init__(self, world_size: int, on_failure: Callable[[str], None], every_s: float = WATCH_EVERY_S):
        self.world_size, self.on_failure, self.every_s = world_size, on_failure, every_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mlmlab-peer-watch", daemon=True)

    def start(self) -> "PeerWatch":
        if active() and self.world_size > 1:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stopped.wait(self.every_s):
            text = peer_failure(self.world_size)
            if text:
                self.on_failure(text)
                return
