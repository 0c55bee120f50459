"""The benchmark scripts in experiments/ still run: tiny smoke runs, real worker processes, no timing asserts.

bench_vs_hf.py needs transformers (the `bench` extra, not installed for the tests); its mlmlab side
is what bench_fastpath.py and bench_time_to_accuracy.py exercise here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def run_script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXPERIMENTS / name), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_bench_fastpath_measures_items_in_worker_processes(tmp_path):
    out = tmp_path / "fastpath.json"
    result = run_script("bench_fastpath.py", "--items", "no_sync,bf16_residual", "--rounds", "1", "--steps", "1",
                        "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["item"] for r in rows] == ["no_sync", "bf16_residual"]
    assert all(r["tokens_per_s_default"] > 0 and r["tokens_per_s_without"] > 0 for r in rows)
    assert "| no_sync |" in result.stdout


@pytest.mark.slow
def test_time_to_accuracy_trains_and_scores_in_a_worker(tmp_path, corpus_file):
    out = tmp_path / "tta.json"
    result = run_script("bench_time_to_accuracy.py", "--only", "mlmlab", "--seconds", "2", "--chunk", "1",
                        "--eval-batches", "2", "--data", str(corpus_file), "--set", "model.n_layers=1",
                        "--set", "train.batch_size=8", "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    figures = report["results"]["mlmlab"]
    assert figures["steps"] > 0 and 0 <= figures["eval_acc"] <= 1 and figures["seconds"] >= 2


@pytest.mark.slow
def test_curriculum_bench_trains_both_presets_for_equal_time(tmp_path, corpus_file):
    out = tmp_path / "curriculum.json"
    result = run_script("bench_curriculum.py", "--seconds", "1", "--chunk", "0.5", "--marks", "2", "--eval-batches", "1",
                        "--eval-len", "64", "--data", str(corpus_file), "--set", "model.n_layers=1",
                        "--set", "model.d_model=32", "--set", "model.d_ff=64", "--set", "train.batch_size=8",
                        "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["eval_len"] == 64 and report["stages"]["off"] == "0: 128"
    assert report["stages"]["on"] == "0: 32, 500: 64, 900: 128"
    for rows in report["scores"].values():
        assert len(rows) == 2 and all(r["steps"] > 0 and 0 <= r["eval_acc"] <= 1 for r in rows)
        assert rows[-1]["seconds"] >= 1
    off, on = report["scores"]["off"][-1], report["scores"]["on"][-1]
    assert off["masked_tokens"] == on["masked_tokens"]  # one held-out set for both
    assert "| curriculum-on |" in result.stdout and "curriculum-on minus curriculum-off" in result.stdout


def test_bad_arguments_are_one_line_each(tmp_path):
    for script, args, expected in [
        ("bench_fastpath.py", ["--items", "nope"], "unknown item nope"),
        ("bench_time_to_accuracy.py", ["--set", "train.lr=abc"], "train.lr = 'abc'"),
        ("bench_time_to_accuracy.py", ["--hf-setting", "fast"], "expected 'eager|sdpa fp32|bf16'"),
        ("bench_time_to_accuracy.py", ["--against", "model.d_model=7"], "model.d_model = 7"),
        ("bench_curriculum.py", ["--set", "train.seq_len_schedule=[[3, 32]]"], "the first stage must start at step 0"),
        ("bench_curriculum.py", ["--on", str(EXPERIMENTS / "quick.toml")], "differ in more than the curriculum"),
    ]:
        result = run_script(script, *args, cwd=tmp_path)
        assert result.returncode == 2, (script, args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and expected in result.stderr, result.stderr


def test_vs_hf_leaves_bf16_out_of_the_trial_on_a_cpu_without_bf16(monkeypatch, capsys):
    """On a CPU without bf16 instructions HF's bf16 autocast runs at a tenth of fp32's speed: the
    trial skips it, says so in one line, and the flags that decide it are printed."""
    import torch

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "experiments"))
    import bench_vs_hf

    monkeypatch.setattr(bench_vs_hf, "bf16_supported", lambda device: False)
    assert bench_vs_hf.hf_settings(torch.device("cpu")) == [("sdpa", "fp32"), ("eager", "fp32")]
    assert "left out of the trial" in capsys.readouterr().err
    monkeypatch.setattr(bench_vs_hf, "bf16_supported", lambda device: True)
    assert ("sdpa", "bf16") in bench_vs_hf.hf_settings(torch.device("cpu"))
    assert all(flag in bench_vs_hf.cpu_flags_line() for flag in ("avx2", "avx512_bf16"))
