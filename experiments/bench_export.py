"""`mlmlab export` on the quick preset's model: how long it takes, how big the folder is, and how
far the exported model's logits are from mlmlab's own.

    pip install -e ".[hf]"
    python experiments/bench_export.py                    # trains the quick preset for --steps steps first
    python experiments/bench_export.py --db runs/mlmlab.db --run 7

Without --run it trains the quick preset (built-in corpus, char vocabulary; d_model 128, 4 layers,
4 heads, d_ff 512, max_seq_len 128) for --steps steps in a temporary database, so the weights are
trained ones rather than the initialisation's. Then:
  * export: `export_run` (resolve the checkpoint, load it, write the seven files, rename into place),
    median over --repeats fresh folders, and the folder's size file by file;
  * logits: the exported model loaded by `AutoModelForMaskedLM.from_pretrained(..., trust_remote_code=True)`
    against mlmlab's `MaskedLM` in fp32 on --batches batches of 8 random windows of max_seq_len
    tokens, one with padding (transformers' attention_mask against mlmlab's pad mask): max |difference|;
  * the fill-mask pipeline's top 5 (real tokens) against `Predictor.predict`'s on one sentence,
    and the load and pipeline-call times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mlmlab.checkpoints import checkpoint_path
from mlmlab.export.writer import export_run
from mlmlab.notation import parse
from mlmlab.predict.predictor import Predictor
from mlmlab.store import Store
from mlmlab.tokenizer import MASK_ID, N_SPECIAL, PAD_ID

SENTENCE = "The quick brown fox jumps over the [MASK]azy dog."


def train_quick(db: Path, steps: int) -> str:
    """The quick preset trained for `steps` steps (no time budget) in `db`: the run's id."""
    cmd = [sys.executable, "-m", "mlmlab", "run", "quick", "--db", str(db), "--quiet", "--name", "quick",
           "--set", f"train.steps={steps}", "--set", "train.max_minutes=0", "--set", f"train.checkpoint_every={steps}"]
    subprocess.run(cmd, check=True)
    return "quick"


def folder_bytes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="a database holding --run (default: train one in a temporary folder)")
    parser.add_argument("--run", help="RUN[@STEP] to export (with --db)")
    parser.add_argument("--steps", type=int, default=300, help="quick-preset training steps when no --run (default 300)")
    parser.add_argument("--repeats", type=int, default=5, help="exports timed (default 5)")
    parser.add_argument("--batches", type=int, default=4, help="batches of 8 random windows compared (default 4)")
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.run:
            db, spec = args.db, args.run
        else:
            db = tmp / "runs" / "mlmlab.db"
            start = time.perf_counter()
            spec = train_quick(db, args.steps)
            print(f"trained the quick preset for {args.steps} steps in {time.perf_counter() - start:.0f} s")

        times, result = [], None
        for i in range(args.repeats):
            result = export_run(db, spec, tmp / f"export-{i}")
            times.append(result.seconds)
        folder = result.out_dir
        sizes = folder_bytes(folder)
        with Store(db, readonly=True) as store:
            run = store.find_run(result.run_id)
        ckpt = checkpoint_path(Path(run["run_dir"]), result.step)
        predictor = Predictor.load(ckpt)
        ours = predictor.model
        a = ours.args
        print(f"model: run {result.run_id} @ step {result.step}; d_model {a.d_model}, {a.n_layers} layers, {a.n_heads} heads, "
              f"d_ff {a.d_ff}, max_seq_len {a.max_seq_len}, vocab {a.vocab_size}, {ours.n_params():,} parameters; "
              f"checkpoint {ckpt.stat().st_size / 1e6:.2f} MB (with optimizer state)")
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
              f"python {sys.version.split()[0]}")
        print(f"export: median {statistics.median(times) * 1000:.0f} ms over {len(times)} exports "
              f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")
        print(f"folder: {sum(sizes.values()) / 1e6:.3f} MB in {len(sizes)} files: "
              + ", ".join(f"{name} {size / 1e3:.1f} kB" for name, size in sizes.items()))

        start = time.perf_counter()
        model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True, local_files_only=True).eval()
        load_s = time.perf_counter() - start
        gen = torch.Generator().manual_seed(0)
        worst = scale = 0.0
        with torch.no_grad():
            for b in range(args.batches):
                ids = torch.randint(N_SPECIAL, a.vocab_size, (8, a.max_seq_len), generator=gen)
                ids[:, ::17] = MASK_ID
                if b == 0:
                    ids[3, -40:] = PAD_ID
                    theirs = model(input_ids=ids, attention_mask=(ids != PAD_ID).long()).logits
                    mine = ours(ids, attn_mask=ours.attention_mask(ids))[0]
                else:
                    theirs, mine = model(input_ids=ids).logits, ours(ids)[0]
                worst = max(worst, float((theirs - mine).abs().max()))
                scale = max(scale, float(mine.abs().max()))
        print(f"logits: max |transformers - mlmlab| = {worst:.3g} over {args.batches} x 8 x {a.max_seq_len} positions "
              f"x {a.vocab_size} tokens, fp32 (logits reach |{scale:.1f}|); from_pretrained {load_s * 1000:.0f} ms")

        fill = pipeline("fill-mask", model=str(folder), tokenizer=AutoTokenizer.from_pretrained(folder, trust_remote_code=True),
                        trust_remote_code=True)
        fill(SENTENCE)
        start = time.perf_counter()
        candidates = fill(SENTENCE, top_k=5 + N_SPECIAL)
        call_ms = (time.perf_counter() - start) * 1000
        theirs = [(predictor.tokenizer.token(c["token"]), round(c["score"], 4)) for c in candidates if c["token"] >= N_SPECIAL][:5]
        (position,) = predictor.predict(parse(SENTENCE), top_k=5).positions
        mine = [(c.token, round(c.probability, 4)) for c in position.top]
        print(f"fill-mask {SENTENCE!r}: pipeline {theirs}")
        print(f"{'':>{len('fill-mask ') + len(repr(SENTENCE)) + 2}}mlmlab   {mine}  "
              f"({'the same' if theirs == mine else 'DIFFERENT'}; pipeline call {call_ms:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
