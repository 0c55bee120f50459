"""The torch side of prediction: a checkpoint's model and vocabulary, asked about hidden positions.

The answers are `mlmlab.predict.results` types; `loading` finds checkpoints and caches predictors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from mlmlab.checkpoints import load_checkpoint
from mlmlab.config.schema import MaskConfig
from mlmlab.errors import CheckpointError, MlmlabError, NotationError
from mlmlab.masking import mask_tokens
from mlmlab.masking_strategies import word_masking
from mlmlab.model import MaskedLM, ModelArgs
from mlmlab.notation import MaskedText, Slot
from mlmlab.predict.alignment import Alignment, align, is_subword
from mlmlab.predict.results import AttentionMap, Candidate, FillPass, PositionPrediction, Prediction
from mlmlab.tokenizer import N_SPECIAL, CharTokenizer, tokenizer_from_dict
from mlmlab.vocab import FILL_ALL, FILL_ITERATIVE, FILL_MODES, KIND_NAMES, KIND_RANDOM


@dataclass
class Predictor:
    """A checkpoint's model and vocabulary, ready to predict on the CPU (or another device)."""

    model: MaskedLM
    tokenizer: CharTokenizer  # or a subword.SubwordTokenizer: the same questions, answered by `alignment`
    config: dict[str, Any]
    step: int | None  # None: a model that is not a run's checkpoint (hf_model.HFPredictor)
    path: Path | None = None
    load_seconds: float = 0.0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: Path | None = None, device: str = "cpu") -> "Predictor":
        try:
            args = ModelArgs(**payload["model_args"])
            tokenizer = tokenizer_from_dict(payload["vocab"])
            model = MaskedLM(args)
            model.load_state_dict(payload["model"])
        except (TypeError, KeyError, RuntimeError, MlmlabError) as exc:
            where = f"checkpoint {path}" if path else "checkpoint"
            raise CheckpointError(f"{where}: does not fit its own model description ({str(exc).splitlines()[0][:120]})") from None
        dev = torch.device(device)
        return cls(model.to(dev).eval(), tokenizer, payload["config"], int(payload["step"]), path, device=dev)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "Predictor":
        start = time.perf_counter()
        predictor = cls.from_payload(load_checkpoint(path, map_location=device), Path(path), device)
        predictor.load_seconds = time.perf_counter() - start
        return predictor

    @property
    def max_seq_len(self) -> int:
        return self.model.args.max_seq_len

    @property
    def n_layers(self) -> int:
        return self.model.args.n_layers

    @property
    def n_heads(self) -> int:
        return self.model.args.n_heads

    @property
    def never_offered(self) -> tuple[int, ...]:
        """Ids never listed as candidates nor counted in an answer's rank: masking never asks for them."""
        return tuple(range(N_SPECIAL))

    @cached_property
    def _never_ids(self) -> torch.Tensor:
        return torch.tensor(self.never_offered, dtype=torch.long)

    def _offered(self, probs: torch.Tensor) -> torch.Tensor:
        """`probs` with the ids never offered at -1, so no top-k, max or rank picks them."""
        return probs.index_fill(-1, self._never_ids, -1.0)

    # Sentence → ids ---------------------------------------------------------------------------

    @property
    def subword(self) -> bool:
        return is_subword(self.tokenizer)

    def align(self, masked: MaskedText) -> Alignment:
        """The positions this model reads for `masked`: characters, or subwords with their characters."""
        return align(masked, self.tokenizer)

    def _window(self, aligned: Alignment) -> tuple[int, int, list[str]]:
        """The stretch of at most max_seq_len positions (characters or subwords) around the hidden ones."""
        n, limit = len(aligned), self.max_seq_len
        if n <= limit:
            return 0, n, []
        hidden = aligned.hidden
        lo, hi = hidden[0], hidden[-1]
        span = hi - lo + 1
        start = max(0, min(lo - (limit - span) // 2, n - limit))
        if not aligned.subword:
            if span > limit:
                raise NotationError(
                    f"the hidden positions span {span} characters ({lo}-{hi}), more than this model reads at once "
                    f"(max_seq_len {limit}): hide a shorter stretch"
                )
            note = (f"the text is {n} characters, longer than this model reads at once (max_seq_len {limit}): "
                    f"predicted on positions {start}-{start + limit - 1} around the hidden ones")
            return start, start + limit, [note]
        chars = aligned.slot_span(lo, hi + 1)
        if span > limit:
            raise NotationError(
                f"the hidden subwords span {span} tokens (characters {chars[0]}-{chars[1] - 1}), more than this model "
                f"reads at once (max_seq_len {limit}): hide a shorter stretch"
            )
        seen = aligned.slot_span(start, start + limit)
        note = (f"the text is {n} subwords, longer than this model reads at once (max_seq_len {limit}): "
                f"predicted on subwords {start}-{start + limit - 1} (characters {seen[0]}-{seen[1] - 1}) around the hidden ones")
        return start, start + limit, [note]

    def _prepare(self, masked: MaskedText) -> tuple[Alignment, list[int], int, int, list[str]]:
        masked.require_hidden()
        aligned = self.align(masked)
        if not aligned.hidden:
            raise NotationError("nothing to predict: the hidden characters are whitespace, which this tokenizer "
                                "does not encode; hide a word or write [MASK]")
        start, end, window_notes = self._window(aligned)
        ids = [u.shown_id for u in aligned.units[start:end]]
        return aligned, ids, start, end, window_notes + aligned.notes(start, end)

    # Forward -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def _probabilities(self, window_ids: list[int], at: list[int]) -> torch.Tensor:
        """Softmax over the vocabulary at window offsets `at`: (len(at), V), float32 on the CPU."""
        ids = torch.tensor([window_ids], dtype=torch.long, device=self.device)
        positions = torch.tensor(at, dtype=torch.long, device=self.device)
        logits, _ = self.model(ids, positions=positions)
        return logits.float().softmax(-1).cpu()

    def _position(self, aligned: Alignment, index: int, probs: torch.Tensor, top_k: int,
                  fill_pass: int | None = None) -> PositionPrediction:
        real = self._offered(probs)
        k = max(1, min(top_k, real.numel() - len(self.never_offered)))
        values, order = real.topk(k)
        top = tuple(Candidate(self.tokenizer.token(int(i)), float(v), int(i)) for v, i in zip(values, order))
        unit = aligned.units[index]
        rank = probability = None
        if unit.answer_id is not None:
            probability = float(probs[unit.answer_id])
            rank = 1 + int((real > probs[unit.answer_id]).sum())
        span = unit.span if aligned.subword else None
        return PositionPrediction(index, unit.answer, self.tokenizer.token(unit.shown_id), unit.kind, top, rank,
                                  probability, fill_pass, span, unit.answer_id)

    def _result(self, aligned: Alignment, mode: str, positions, start: int, end: int, seen, notes, passes=()) -> Prediction:
        spans = aligned.spans[start:end] if aligned.subword else ()
        return Prediction(aligned.masked, mode, tuple(positions), (start, end), seen, tuple(notes), tuple(passes),
                          self.step, self.tokenizer.kind, spans)

    def predict(self, masked: MaskedText, top_k: int = 5, mode: str = FILL_ALL) -> Prediction:
        """Predict every hidden position: all at once, or iteratively (most confident first)."""
        if top_k < 1:
            raise MlmlabError(f"top-k must be at least 1, not {top_k}")
        if mode not in FILL_MODES:
            raise MlmlabError(f"fill mode must be {FILL_ALL!r} or {FILL_ITERATIVE!r}, not {mode!r}")
        aligned, ids, start, end, notes = self._prepare(masked)
        seen = tuple(self.tokenizer.token(i) for i in ids)
        hidden = aligned.hidden
        if mode == FILL_ALL:
            probs = self._probabilities(ids, [i - start for i in hidden])
            positions = [self._position(aligned, i, p, top_k) for i, p in zip(hidden, probs)]
            return self._result(aligned, mode, positions, start, end, seen, notes)
        return self._fill_iteratively(aligned, ids, start, end, seen, notes, top_k)

    def _fill_iteratively(self, aligned: Alignment, ids, start, end, seen, notes, top_k) -> Prediction:
        """Mask-predict one position (character or subword) per pass: fill the most confident, then look again."""
        ids = list(ids)
        remaining = list(aligned.hidden)
        done: dict[int, PositionPrediction] = {}
        passes = []
        while remaining:
            probs = self._probabilities(ids, [i - start for i in remaining])
            best_prob, best_token = self._offered(probs).max(-1)
            pick = int(best_prob.argmax())
            index = remaining.pop(pick)
            done[index] = self._position(aligned, index, probs[pick], top_k, fill_pass=len(passes) + 1)
            ids[index - start] = int(best_token[pick])
            passes.append(FillPass(index, self.tokenizer.token(ids[index - start]), float(best_prob[pick]),
                                   tuple(self.tokenizer.token(i) for i in ids)))
        positions = [done[i] for i in aligned.hidden]
        return self._result(aligned, FILL_ITERATIVE, positions, start, end, seen, notes, passes)

    @torch.inference_mode()
    def attention(self, masked: MaskedText, layer: int | None = None, head: int | None = None) -> AttentionMap:
        """Attention weights of one layer and head; None averages over layers or heads."""
        n_layers, n_heads = self.n_layers, self.n_heads
        if layer is not None and not 0 <= layer < n_layers:
            raise MlmlabError(f"layer {layer} does not exist: this model has layers 0-{n_layers - 1}")
        if head is not None and not 0 <= head < n_heads:
            raise MlmlabError(f"head {head} does not exist: this model has heads 0-{n_heads - 1}")
        aligned, ids, start, end, _ = self._prepare(masked)
        maps = self._attention_maps(ids)  # (layers, heads, T, T)
        maps = maps.mean(0) if layer is None else maps[layer]
        maps = maps.mean(0) if head is None else maps[head]
        weights = tuple(tuple(row) for row in maps.tolist())
        tokens = tuple(self.tokenizer.token(i) for i in ids)
        if not aligned.subword:
            return AttentionMap(tokens, weights, start, layer, head, n_layers, n_heads)
        units = aligned.units[start:end]
        return AttentionMap(tokens, weights, start, layer, head, n_layers, n_heads,
                            tuple(u.span for u in units), tuple(u.kind for u in units))

    def _attention_maps(self, window_ids: list[int]) -> torch.Tensor:
        """Every layer's and head's attention over the window: (layers, heads, T, T), float32 on the CPU."""
        maps = self.model.attention_maps(torch.tensor([window_ids], dtype=torch.long, device=self.device))[:, 0]
        return maps.float().cpu()

    def mask_config(self) -> MaskConfig:
        """How training hid positions: the config's own section (it fills the keys an older
        checkpoint lacks, e.g. mask.strategy: token)."""
        return MaskConfig.model_validate(self.config["mask"])

    def draw_training_mask(self, masked: MaskedText, seed: int, around: int = 0) -> MaskedText:
        """Hide positions exactly as training does (`mask.*` of the run's config), replacing earlier masks.

        Chosen positions become [MASK], a random real token, or stay unchanged in the run's
        proportions. [MASK]s without an answer stay; characters the model never saw are never chosen.
        On a subword model the units drawn are subwords (whole words with mask.strategy whole_word), and
        every character of a chosen one takes its kind. On text longer than max_seq_len, only the window
        (in the model's positions) around the character `around` is drawn from.
        """
        base = masked.unmasked()
        aligned = self.align(base)
        ids = [u.shown_id for u in aligned.units]
        n, limit = len(ids), self.max_seq_len
        around = aligned.unit_at(around)
        start = max(0, min(around - limit // 2, n - limit)) if n > limit else 0
        window = torch.tensor([ids[start : start + limit]], dtype=torch.long)
        k = self.mask_config()
        no_mask = self.tokenizer.ids_of(k.no_mask_tokens) + [i for i in self.never_offered if i >= N_SPECIAL]
        batch = mask_tokens(
            window, vocab_size=self.tokenizer.vocab_size, masking_prob=k.masking_prob,
            randomize_prob=k.randomize_prob, no_change_prob=k.no_change_prob,
            generator=torch.Generator().manual_seed(seed),
            no_mask_ids=torch.tensor(no_mask, dtype=torch.long) if no_mask else None,
            strategy=word_masking(k.strategy, self.tokenizer, "cpu", k.span_p, k.span_max_words),
        )
        if batch.positions.numel() == 0:
            raise NotationError("nothing here can be masked as training does: the model knows none of these characters")
        changes = {}
        for offset, kind in enumerate(batch.kinds[0].tolist()):
            if not kind:
                continue
            shown_id = int(batch.inputs[0, offset]) if kind == KIND_RANDOM else None
            shown = self.tokenizer.token(shown_id) if shown_id is not None else None
            for i in aligned.units[start + offset].slots:  # a subword's every character
                slot = base.slots[i]
                if slot.answer is not None:
                    changes[i] = Slot(slot.answer, KIND_NAMES[kind], shown, shown_id if aligned.subword else None)
        return base.with_slots(changes)
