"""How fast the mask explorer answers: checkpoint load time and prediction latency for one sentence.

    python experiments/bench_predict.py                      # the seed preset's shape, freshly initialised
    python experiments/bench_predict.py --checkpoint runs/mlmlab/run-3/ckpt-00002000.pt

Without --checkpoint it writes a checkpoint of the seed preset's model (d_model 128, 6 layers,
8 heads, d_ff 256) with optimizer state, as training writes them, and measures:
  * load: `Predictor.load` (torch.load with weights_only=True, build the model, load the weights);
  * predict: one 64-character sentence with 15% of it hidden (9 positions), all at once, after
    the model is loaded and one warm-up call; also one hidden position, iterative filling, attention.
The seed preset reads 32 characters at once (max_seq_len 32), so by default the model is built
with max_seq_len 64 to read the whole sentence; `--max-seq-len 32` measures the preset as it is
(the explorer then predicts on a 32-character window around the hidden positions).
"""

from __future__ import annotations

import argparse
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

import torch

from mlmlab.checkpoints import save_checkpoint
from mlmlab.config import load_config
from mlmlab.model import MaskedLM
from mlmlab.notation import MaskedText, Slot
from mlmlab.predict.loading import PREDICT_THREADS
from mlmlab.predict.predictor import Predictor
from mlmlab.tokenizer import CharTokenizer
from mlmlab.engine.step import build_optimizer, model_args
from mlmlab.vocab import FILL_ITERATIVE, MASKED, VISIBLE

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it sleeps!"  # 64 characters


def seed_checkpoint(folder: Path, max_seq_len: int) -> Path:
    cfg = load_config("seed", [f"model.max_seq_len={max_seq_len}", "train.seq_len=32"])
    tokenizer = CharTokenizer(string.printable)
    model = MaskedLM(model_args(cfg, tokenizer.vocab_size))
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    ids = torch.randint(3, tokenizer.vocab_size, (2, 32))
    model(ids, ids)[1].backward()  # one step, so the optimizer state is as large as a real run's
    optimizer.step()
    payload = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 1, "tokens": 64,
        "config": cfg.to_dict(), "vocab": tokenizer.to_dict(), "model_args": model.args.to_dict(), "precision": "fp32",
    }
    path = folder / "ckpt-00000001.pt"
    save_checkpoint(payload, path)
    return path


def hide(text: str, every: int, span: int) -> MaskedText:
    """Hide every `every`-th character of the middle `span` ones (every=7 of 64 hides 9, about 15%)."""
    lo = (len(text) - span) // 2
    return MaskedText(tuple(Slot(ch, MASKED if i % every == 3 and lo <= i < lo + span else VISIBLE)
                            for i, ch in enumerate(text)))


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def describe(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"median {statistics.median(times):7.2f} ms   p90 {p90:7.2f} ms   min {ordered[0]:7.2f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="measure this checkpoint instead of a fresh seed-shaped one")
    parser.add_argument("--max-seq-len", type=int, default=64, help="for the fresh model (default 64; the seed preset has 32)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=PREDICT_THREADS,
                        help=f"torch.set_num_threads (default {PREDICT_THREADS}, as `mlmlab predict` and the app use)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint or seed_checkpoint(Path(tmp), args.max_seq_len)
        loads = []
        for _ in range(5):
            start = time.perf_counter()
            predictor = Predictor.load(path)
            loads.append(time.perf_counter() - start)
        size_mb = path.stat().st_size / 2**20

        a = predictor.model.args
        print(f"model: d_model {a.d_model}, {a.n_layers} layers, {a.n_heads} heads, d_ff {a.d_ff}, "
              f"max_seq_len {a.max_seq_len}, {predictor.model.n_params():,} parameters; checkpoint {size_mb:.1f} MiB")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {sys.version.split()[0]}")
        print(f"load (torch.load weights_only + build + load_state_dict): median {statistics.median(loads) * 1000:.0f} ms "
              f"over {len(loads)} loads (first {loads[0] * 1000:.0f} ms)")

        sentence = hide(SENTENCE, 7, min(len(SENTENCE), a.max_seq_len))
        one = MaskedText(tuple(Slot(ch, MASKED if i == 20 else VISIBLE) for i, ch in enumerate(SENTENCE)))
        result = predictor.predict(sentence)
        print(f"sentence: {len(SENTENCE)} characters, {len(sentence.hidden)} hidden; the model read positions "
              f"{result.window[0]}-{result.window[1] - 1}")
        rows = [
            ("predict, all at once", lambda: predictor.predict(sentence, top_k=5)),
            ("predict, one hidden position", lambda: predictor.predict(one, top_k=5)),
            (f"predict, iterative ({len(sentence.hidden)} passes)", lambda: predictor.predict(sentence, 5, FILL_ITERATIVE)),
            ("attention map, averaged", lambda: predictor.attention(sentence)),
        ]
        for label, fn in rows:
            print(f"{label:<34} {describe(timed(fn, args.repeats))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
