"""`mlmlab bench`: real training steps of a tiny model, printed and as JSON. No timed assertions."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import run_cli, sets_args

from mlmlab.bench import flops_per_token
from mlmlab.benchharness import Alternation, IsolatedStep, alternate
from mlmlab.model import ModelArgs


@pytest.mark.slow
def test_bench_json_has_every_field(tiny_sets, db_path):
    result = run_cli("bench", "--steps", "2", "--warmup", "1", "--json", "--device", "cpu", *sets_args(tiny_sets))
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    for key in ("tokens_per_s", "step_ms_median", "step_ms_p25", "step_ms_p75", "step_ms_min", "step_ms_max",
                "peak_mem_mb", "flops_per_token", "achieved_tflops", "peak_tflops", "mfu", "precision",
                "compile", "device", "n_params", "steps", "warmup_s", "attention"):
        assert key in r, key
    assert r["steps"] == 2 and r["tokens_per_step"] == 16 * 32
    assert r["tokens_per_s"] > 0 and r["peak_tflops"] > 0 and 0 < r["mfu"]
    assert r["precision"] in ("fp32", "bf16")
    assert r["compile"] is False  # a tiny, short run on a CPU: compiling would not pay
    assert r["attention"] == "scaled_dot_product_attention"  # fp32 (TINY_SETS)
    assert not db_path.exists()  # bench never writes a database


@pytest.mark.slow
def test_bench_prints_a_table(tiny_sets):
    result = run_cli("bench", "--steps", "2", "--warmup", "0", "--no-peak", "--set", "train.precision=fp32",
                     *sets_args(tiny_sets))
    assert result.returncode == 0, result.stderr
    for label in ("tokens/s", "ms/step", "peak mem", "FLOPs/token", "MFU", "precision fp32",
                  "attention   scaled_dot_product_attention"):
        assert label in result.stdout, label


def test_bench_names_the_attention_its_steps_ran(monkeypatch):
    from types import SimpleNamespace

    from mlmlab import cpu_attention
    from mlmlab.bench import attention_path

    monkeypatch.setattr(cpu_attention, "READY", True)
    args = ModelArgs(vocab_size=40, d_model=64, n_heads=4, max_seq_len=64)

    def setup(precision="bf16", seq_len=32, dropout=0.0):
        return SimpleNamespace(device=torch.device("cpu"), precision=precision,
                               args=ModelArgs(**{**args.to_dict(), "dropout": dropout}),
                               cfg=SimpleNamespace(train=SimpleNamespace(seq_len=seq_len)))

    assert attention_path(setup()) == "mlmlab's fused CPU kernel"
    for case in (dict(seq_len=40), dict(dropout=0.1)):
        assert attention_path(setup(**case)).startswith("written out"), case
    assert attention_path(setup(precision="fp32")) == "scaled_dot_product_attention"


def test_bench_rejects_bad_input(tiny_sets):
    result = run_cli("bench", "--steps", "2", *sets_args([*tiny_sets, "model.n_heads=3"]))
    assert result.returncode == 2 and "n_heads" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("bench", "--steps", "0", *sets_args(tiny_sets))
    assert result.returncode == 2


def test_flops_formula():
    """FLOPs/token = 3 · (L · (8d² + 4·d·d_ff + 4·T·d) + p · 2·d·V), the seed config by hand."""
    args = ModelArgs(vocab_size=67, d_model=128, n_layers=6, n_heads=8, d_ff=256, max_seq_len=32)
    per_layer = 8 * 128**2 + 4 * 128 * 256 + 4 * 32 * 128
    assert flops_per_token(args, 32, 0.15) == pytest.approx(3 * (6 * per_layer + 0.15 * 2 * 128 * 67))


def test_alternation_pairs_rounds_and_sets_disturbed_ones_aside():
    figures = Alternation({"a": [10.0, 40.0, 12.0, 9.0], "b": [5.0, 20.0, 12.0, 3.0]},
                          {"a": [0.0, 0.01, 0.5, 0.0], "b": [0.02, 0.0, 0.0, 0.0]})
    assert figures.clean_rounds() == [0, 1, 3]
    rounds, clean = figures.rounds_used(min_clean=3)
    assert clean and figures.ratio("a", "b", rounds) == 2.0 and figures.median("a", rounds) == 10.0
    assert figures.rounds_used(min_clean=4) == ([0, 1, 2, 3], False)
    calls = []
    result = alternate({"x": lambda: calls.append("x"), "y": lambda: calls.append("y")}, rounds=2, steps=2,
                       tokens_per_step=10)
    assert calls == ["x", "x", "y", "y", "y", "y", "x", "x"]  # taking turns, the order flipped each round
    assert len(result.tokens_per_s["x"]) == 2 and len(result.foreign["y"]) == 2



def appending_step(path: str):
    """A factory for IsolatedStep: each step appends the worker's pid to a file."""
    def step():
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
    return step


class CountingStep:
    """A step with a method the parent can call."""

    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1

    def total(self, plus: int) -> int:
        return self.count + plus


def failing_factory():
    raise ValueError("no such model")


def test_isolated_step_runs_in_a_process_of_its_own(tmp_path):
    calls = tmp_path / "calls"
    step = IsolatedStep(appending_step, str(calls))
    try:
        step.run(3)
        step()
        alternate({"isolated": step, "here": lambda: None}, rounds=2, steps=2, tokens_per_step=1)
    finally:
        step.close()
    pids = calls.read_text().split()
    assert len(pids) == 3 + 1 + 2 * 2
    assert set(pids) == {str(step.pid)} and step.pid != os.getpid()


def test_isolated_step_answers_calls_to_its_step_object():
    step = IsolatedStep(CountingStep)
    try:
        step.run(3)
        assert step.call("total", 10) == 13
        with pytest.raises(RuntimeError, match="AttributeError"):
            step.call("no_such_method")
    finally:
        step.close()


def test_isolated_step_reports_a_failed_build():
    with pytest.raises(RuntimeError, match="no such model"):
        IsolatedStep(failing_factory)

def test_model_skips_only_unused_work():
    """With positions, logits and every gradient equal the full model's at those positions."""
    from mlmlab.masking import mask_tokens
    from mlmlab.model import MaskedLM

    torch.manual_seed(0)
    model = MaskedLM(ModelArgs(40, 32, 3, 4, 64, 0.0, 16)).double()
    ids = torch.randint(3, 40, (6, 16))
    b = mask_tokens(ids, vocab_size=40, masking_prob=0.2, randomize_prob=0.1, no_change_prob=0.1,
                    generator=torch.Generator().manual_seed(1))
    params = list(model.parameters())
    part, loss_part = model(b.inputs, b.labels, b.positions)
    grads_part = torch.autograd.grad(loss_part, params)
    full, loss_full = model(b.inputs, b.labels)
    grads_full = torch.autograd.grad(loss_full, params)
    assert torch.allclose(part, full.reshape(-1, 40)[b.positions], atol=1e-12)
    assert torch.allclose(loss_part, loss_full, atol=1e-5)
    for gp, gf in zip(grads_part, grads_full):
        assert torch.allclose(gp, gf, atol=1e-10)


@pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported() if hasattr(torch.cpu, "_is_avx512_bf16_supported") else True,
                    reason="CPU without bf16 instructions")
def test_cpu_bf16_attention_matches_sdpa():
    """Under CPU bf16 autocast the model writes attention out (faster there); same function."""
    from mlmlab.model import MaskedLM

    torch.manual_seed(0)
    model = MaskedLM(ModelArgs(40, 32, 2, 4, 64, 0.0, 16))
    ids = torch.randint(3, 40, (4, 16))
    reference, _ = model(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, _ = model(ids)
    assert (fast.float() - reference).abs().max() < 0.05 * reference.abs().max()


@pytest.mark.slow
def test_a_failed_compilation_falls_back_to_eager(corpus_file):
    """A machine without a working C++ compiler fails at the first compiled call: train eagerly."""
    from mlmlab.bench import build_setup
    from mlmlab.config import load_config
    from mlmlab.engine.data import prepare_data

    cfg = load_config("tiny", [f"data.source={corpus_file}", "train.precision=fp32"])
    data = prepare_data(cfg)
    setup = build_setup(cfg, torch.device("cpu"), "fp32", data.train_ids, data.tokenizer.vocab_size)
    runner = setup.runner

    class BrokenCompiled:
        _orig_mod = runner.model

        def __call__(self, *args):
            raise RuntimeError("InductorError: no C++ compiler found\nmore detail")

    messages = []
    runner.forward, runner.eager, runner.compiled, runner._checked = BrokenCompiled(), runner.model, True, False
    runner.on_message = messages.append
    out = runner.step(0)
    assert torch.isfinite(out.loss) and runner.compiled is False and runner.forward is runner.model
    assert messages and "no C++ compiler" in messages[0]
    runner.step(1)


def test_compile_auto_pays_only_on_long_cpu_runs():
    from mlmlab.config import load_config
    from mlmlab.engine.step import compile_decision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not compile_decision(load_config("quick"), cpu)  # 2 minutes
    assert compile_decision(load_config("seed"), cpu)  # 20000 steps, no time limit
    assert compile_decision(load_config("quick", ["train.max_minutes=30"]), cpu)
    assert compile_decision(load_config("quick"), cuda)
    assert not compile_decision(load_config("seed", ["train.compile=off"]), cuda)
    assert compile_decision(load_config("quick", ["train.compile=on"]), cpu)


def test_cosine_anneals_by_the_time_limit():
    """A time-limited run reaches the cosine floor at its deadline, whichever budget ends first."""
    from mlmlab.config import load_config
    from mlmlab.engine.schedule import lr_at

    cfg = load_config("quick", ["train.steps=100000", "train.max_minutes=2", "train.warmup_steps=10", "train.lr=1e-3"])
    assert lr_at(5, cfg, 0.0) == pytest.approx(6e-4)  # warm-up is in steps
    assert lr_at(50, cfg, 0.0) == pytest.approx(1e-3, rel=1e-3)
    assert lr_at(50, cfg, 60.0) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5), rel=1e-3)  # half the time
    assert lr_at(50, cfg, 120.0) == pytest.approx(1e-4)  # the deadline: the floor
    steps_bound = load_config("quick", ["train.steps=1000", "train.max_minutes=60", "train.warmup_steps=0"])
    assert lr_at(999, steps_bound, 1.0) == pytest.approx(steps_bound.train.lr * 0.1, rel=1e-2)
