"""A training process keeps the memory it frees, so its next step does not fault in fresh pages."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from mlmlab import devices
from mlmlab.engine.step import StepRunner

GLIBC_LINUX = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"

# Steps of 30 activations of 1 MB each, all freed at the end of the step, as a training step frees
# its activations after the backward pass; prints the page faults of each step after the first.
STEPS = """
import json, resource, sys, torch
from mlmlab import devices
kept = devices.keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for step in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    activations = [torch.ones(2**18) for _ in range(30)]
    del activations
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults[1:]}))
"""


def faults_per_step(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not GLIBC_LINUX, reason="mallopt is glibc's")
def test_kept_memory_spares_every_later_step_its_page_faults():
    default = faults_per_step("default")["faults"]
    kept = faults_per_step("keep")
    # By default glibc maps 30 MB of fresh pages back in at the next steps (until its own adaptive
    # threshold catches up with this simple pattern; a real step's mix of sizes kept it faulting).
    assert sum(default) > 10_000
    assert kept["kept"] is True and sum(kept["faults"]) < sum(default) / 4


def test_off_switch_and_other_platforms_leave_malloc_alone(monkeypatch):
    monkeypatch.setattr(devices, "KEEP_FREED_MEMORY", False)
    assert devices.keep_freed_memory() is False
    monkeypatch.setattr(devices, "KEEP_FREED_MEMORY", True)
    monkeypatch.setattr(devices.sys, "platform", "darwin")
    assert devices.keep_freed_memory() is False


def test_every_training_step_runner_keeps_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(devices, "keep_freed_memory", lambda: calls.append(1) or True)
    model = torch.nn.Linear(1, 1)
    model.args = SimpleNamespace(vocab_size=2)
    StepRunner(model, None, None, torch.device("cpu"), "fp32", None, None, None)
    assert calls == [1]
