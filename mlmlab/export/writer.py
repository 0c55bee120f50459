"""`mlmlab export`: a checkpoint as a folder `transformers` loads (config, safetensors weights, the
modelling code, the tokenizer files and a model card).

Writing needs torch, `safetensors` and `tokenizers`, never `transformers` (only loading the result
does). The folder is built beside its destination and renamed into place only when every file is
written, so a failure leaves the destination as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from mlmlab.checkpoints import load_checkpoint
from mlmlab.errors import CheckpointError, MlmlabError
from mlmlab.export import require_safetensors
from mlmlab.export.card import CardFacts, model_card
from mlmlab.export.tokenizer_files import tokenizer_files
from mlmlab.model import MaskedLM
from mlmlab.predict.loading import resolve_checkpoint
from mlmlab.predict.predictor import Predictor
from mlmlab.store import Store
from mlmlab.tokenizer import MASK_ID, UNK_ID

MODELING_FILE = "modeling_mlmlab.py"
WEIGHTS_FILE = "model.safetensors"
EVAL_METRICS = ("eval_loss", "eval_acc", "eval_bpc")
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which mlmlab's model uses


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    run_id: int
    run_name: str
    step: int
    files: tuple[str, ...]
    bytes: int
    seconds: float


def parse_target(spec: str) -> tuple[str, int | None]:
    """RUN or RUN@STEP (a run id or name; STEP a number)."""
    name, at, step = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if at and not (name and step.isdigit()):
        raise MlmlabError(f"{spec!r}: expected RUN or RUN@STEP (a run id or name, STEP a number)")
    return name, (int(step) if at else None)


def export_run(db_path: Path, spec: str, out_dir: Path, force: bool = False) -> ExportResult:
    """Export run RUN's latest checkpoint (or the one at STEP) to `out_dir`."""
    start = time.perf_counter()
    require_safetensors()
    run_ref, step = parse_target(spec)
    out_dir = Path(out_dir)
    with Store(db_path, readonly=True) as store:
        ref = resolve_checkpoint(store, run_ref, step)
        stats = store.metric_stats(ref.run_id, EVAL_METRICS, at_step=ref.step)
    check_destination(out_dir, force, keep=(Path(db_path), ref.path))
    payload = load_checkpoint(ref.path)
    predictor = Predictor.from_payload(payload, ref.path)  # the model and vocabulary, or a one-line CheckpointError
    model, tokenizer = predictor.model, predictor.tokenizer
    if tokenizer.vocab_size != model.args.vocab_size:
        raise CheckpointError(f"checkpoint {ref.path}: its vocabulary has {tokenizer.vocab_size} entries "
                              f"but its model {model.args.vocab_size}")
    # Figures measured at this checkpoint's step (a checkpoint between evaluations has none of its own).
    at = {name: s["at"] for name, s in stats.items() if s.get("at_step") == ref.step and s.get("at") is not None}
    facts = CardFacts(
        run_id=ref.run_id, run_name=ref.run_name, step=ref.step, tokens=payload.get("tokens"),
        elapsed_s=payload.get("elapsed"), n_params=model.n_params(), config=payload["config"],
        model_args=model.args.to_dict(), tokenizer_kind=getattr(tokenizer, "kind", "char"),
        eval=at, eval_step=ref.step if at else None,
    )
    files = export_files(model, tokenizer, facts)
    written = write_folder(out_dir, files, model)
    size = sum((out_dir / name).stat().st_size for name in written)
    return ExportResult(out_dir, ref.run_id, ref.run_name, ref.step, written, size, time.perf_counter() - start)


def check_destination(out_dir: Path, force: bool, keep: tuple[Path, ...] = ()) -> None:
    """Refuse a destination that is a file, or a folder with files in it unless `force`; never one
    holding the run database or the checkpoint being exported, force or not."""
    if out_dir.is_symlink():
        raise MlmlabError(f"{out_dir} is a symbolic link: give the folder itself, or a new one")
    if out_dir.exists() and not out_dir.is_dir():
        raise MlmlabError(f"{out_dir} exists and is not a folder: choose another destination")
    if not out_dir.is_dir():
        return
    resolved = out_dir.resolve()
    for path in keep:
        if resolved == path.resolve() or resolved in path.resolve().parents:
            raise MlmlabError(f"{out_dir} holds {path}: export into a folder of its own")
    if any(out_dir.iterdir()) and not force:
        raise MlmlabError(f"{out_dir} exists and is not empty: choose an empty or new folder, or pass --force to replace it")


def hf_config(model: MaskedLM, facts: CardFacts) -> dict[str, Any]:
    """config.json: the model's sizes under transformers' usual names, and where its code is."""
    args = model.args
    module = MODELING_FILE.removesuffix(".py")
    return {
        "architectures": ["MlmlabForMaskedLM"],
        "model_type": "mlmlab",
        "auto_map": {
            "AutoConfig": f"{module}.MlmlabConfig",
            "AutoModel": f"{module}.MlmlabModel",
            "AutoModelForMaskedLM": f"{module}.MlmlabForMaskedLM",
        },
        "vocab_size": args.vocab_size,
        "hidden_size": args.d_model,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "intermediate_size": args.d_ff,
        "max_position_embeddings": args.max_seq_len,
        "dropout": args.dropout,
        "layer_norm_eps": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "hidden_act": "gelu",
        "pad_token_id": args.pad_id,
        "mask_token_id": MASK_ID,
        "unk_token_id": UNK_ID,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        # transformers 4.x pipelines load a tokenizer for a custom config only when it names one.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "mlmlab": {"run_id": facts.run_id, "run_name": facts.run_name, "step": facts.step, "tokenizer": facts.tokenizer_kind},
    }


def hf_state_dict(model: MaskedLM) -> dict[str, torch.Tensor]:
    """The weights under the exported model's names, fp32. The head's weight is the token embedding
    and is stored once, under the embedding's name (as `save_pretrained` does); the loader ties it."""
    state = {}
    for name, tensor in model.state_dict().items():
        key = "lm_head.bias" if name == "head_bias" else f"mlmlab.{name}"
        state[key] = tensor.detach().to("cpu", torch.float32).contiguous()
    return state


def modeling_code() -> str:
    return resources.files("mlmlab.export").joinpath("hf", MODELING_FILE).read_text(encoding="utf-8")


def export_files(model: MaskedLM, tokenizer, facts: CardFacts) -> dict[str, str]:
    """Every text file of the folder, by name (the weights are written separately)."""
    return {
        "config.json": json.dumps(hf_config(model, facts), ensure_ascii=False, indent=2) + "\n",
        MODELING_FILE: modeling_code(),
        **tokenizer_files(tokenizer, model.args.max_seq_len),
        "README.md": model_card(facts),
    }


def write_folder(out_dir: Path, files: dict[str, str], model: MaskedLM) -> tuple[str, ...]:
    """Write everything into a temporary folder beside `out_dir`, then put it in `out_dir`'s place."""
    from safetensors.torch import save_file

    parent = out_dir.absolute().parent
    tmp = parent / f".{out_dir.name}.export-{os.getpid()}.tmp"
    old = parent / f".{out_dir.name}.replaced-{os.getpid()}.tmp"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        save_file(hf_state_dict(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if out_dir.is_dir():  # empty, or replaced under --force: moved aside until the new one is in place
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if old.exists():
                os.replace(old, out_dir)
            raise
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MlmlabError(f"cannot write {out_dir} ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return tuple(sorted([*files, WEIGHTS_FILE]))
