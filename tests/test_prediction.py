"""The mask notation and the predictor, on a tiny model trained by the test session."""

from __future__ import annotations

import fractions
import math
import sqlite3

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from mlmlab.errors import CheckpointError, MlmlabError, NotationError, StoreError
from mlmlab.notation import MaskedText, Slot, parse
from mlmlab.predict.loading import PredictorCache, load_predictor, resolve_checkpoint
from mlmlab.predict.predictor import Predictor
from mlmlab.predict.results import disagreements
from mlmlab.store import Store
from mlmlab.tokenizer import MASK_ID, N_SPECIAL, UNK
from mlmlab.vocab import FILL_ITERATIVE, KEEP, MASKED, RANDOM, VISIBLE

# --- notation ------------------------------------------------------------------------------------


def shape(masked: MaskedText) -> list[tuple[str | None, bool]]:
    return [(s.answer, s.hidden) for s in masked.slots]


def test_braces_hide_each_character_and_keep_it_as_the_answer():
    m = parse("The {quick} fox")
    assert m.hidden == [4, 5, 6, 7, 8]
    assert "".join(m.slots[i].answer for i in m.hidden) == "quick"
    assert m.text == "The quick fox"
    assert all(m.slots[i].kind == MASKED for i in m.hidden)


def test_mask_token_hides_one_position_without_answer():
    m = parse("To be or [MASK] to be")
    assert m.hidden == [9]
    assert m.slots[9].answer is None
    assert len(m) == len("To be or ? to be")
    assert m.text == "To be or [MASK] to be"


def test_several_groups_and_mask_tokens_mix():
    m = parse("{a}b[MASK][MASK]{cd}")
    assert shape(m) == [("a", True), ("b", False), (None, True), (None, True), ("c", True), ("d", True)]


def test_escapes_make_braces_brackets_and_backslash_literal():
    m = parse(r"a \{b\} \[MASK] c\\ {\}}")
    assert m.text == r"a {b} [MASK] c\ }"
    assert m.hidden == [len(r"a {b} [MASK] c\ ")]
    assert m.slots[m.hidden[0]].answer == "}"
    # A backslash before anything else is an ordinary character.
    assert parse(r"C:\path {x}").text == r"C:\path x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty text"),
        ("   ", "empty text"),
        ("no masks here", "nothing is masked"),
        ("The {quick brown", "brace opened at column 5 is never closed"),
        ("The quick} brown", "closing brace at column 10 has no opening brace"),
        ("a {b {c}} d", "brace at column 6 opens inside the brace opened at column 3"),
        ("a {} b", "empty braces at column 3 hide nothing"),
        ("a {b[MASK]} c", "[MASK] at column 5 is inside braces opened at column 3"),
        (r"only \{escaped\}", "nothing is masked"),
    ],
)
def test_notation_errors_are_one_line_and_name_the_problem(text, expected):
    with pytest.raises(NotationError) as err:
        parse(text)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


slot_strategy = st.one_of(
    st.builds(Slot, st.characters(blacklist_categories=("Cs",)), st.sampled_from([VISIBLE, MASKED])),
    st.just(Slot(None, MASKED)),
)


@given(st.lists(slot_strategy, min_size=1, max_size=30))
def test_notation_round_trips(slots):
    masked = MaskedText(tuple(slots))
    assume(masked.text.strip())  # whitespace alone is "empty text", an error by design
    assert parse(masked.notation(), require_mask=False) == masked


def test_toggles_hide_and_show_positions_and_words():
    m = parse("the cat sat", require_mask=False)
    m = m.toggle(4)
    assert m.hidden == [4]
    assert m.toggle(4).hidden == []
    word = m.toggle_word(5)  # part of "cat" is hidden: the whole word gets hidden
    assert word.hidden == [4, 5, 6]
    assert word.toggle_word(4).hidden == []  # all hidden: shown again
    with pytest.raises(NotationError, match="not inside a word"):
        m.toggle_word(3)
    with pytest.raises(NotationError, match="no known text"):
        parse("a [MASK] b").toggle(2)
    assert parse("a{b}[MASK]").unmasked().hidden == [2]


# --- the predictor -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(trained_run):
    db, run_id = trained_run
    cache = PredictorCache()
    ref, predictor = load_predictor(db, run_id, None, cache)
    return db, run_id, ref, predictor, cache


def test_latest_checkpoint_is_default_and_loaded_once(trained):
    db, run_id, ref, predictor, cache = trained
    with Store(db, readonly=True) as store:
        steps = [r["step"] for r in store.checkpoints(run_id)]
    assert ref.step == steps[-1] == predictor.step
    again_ref, again = load_predictor(db, str(run_id), None, cache)
    assert again is predictor and again_ref == ref
    earlier_ref, earlier = load_predictor(db, "shared", steps[0], cache)  # by name and step
    assert earlier.step == earlier_ref.step == steps[0] and earlier is not predictor


def test_top_k_is_ordered_sums_to_at_most_one_and_holds_only_real_tokens(trained):
    predictor = trained[3]
    result = predictor.predict(parse("The {cat} sat on [MASK] mat."), top_k=7)
    assert [p.index for p in result.positions] == [4, 5, 6, 15]
    vocab_real = set(predictor.tokenizer.chars)
    for p in result.positions:
        probs = [c.probability for c in p.top]
        assert len(p.top) == 7
        assert probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-6
        assert {c.token for c in p.top} <= vocab_real
        assert p.shown == "[MASK]"
        if p.answer is not None and p.answer_rank <= 7:
            assert p.top[p.answer_rank - 1].token == p.answer
            assert p.top[p.answer_rank - 1].probability == pytest.approx(p.answer_probability)
    assert result.positions[3].answer is None and result.positions[3].answer_rank is None
    assert result.n_known == 3
    assert result.filled == "The " + "".join(p.choice for p in result.positions[:3]) + " sat on " + result.positions[3].choice + " mat."


def test_loss_is_the_models_own_cross_entropy_over_answered_positions(trained):
    predictor = trained[3]
    masked = parse("A {big} dog ran to the {sea}.")
    result = predictor.predict(masked)
    ids = torch.tensor([predictor.tokenizer.encode(masked.text)])
    labels = torch.full_like(ids, -100)
    inputs = ids.clone()
    for i in masked.hidden:
        labels[0, i] = ids[0, i]
        inputs[0, i] = MASK_ID
    with torch.no_grad():
        _, loss = predictor.model(inputs, labels)
    assert result.loss == pytest.approx(float(loss), rel=1e-4)


def test_iterative_fill_changes_one_position_per_pass_most_confident_first(trained):
    predictor = trained[3]
    masked = parse("The {quick} brown fox [MASK]umps.")
    at_once = predictor.predict(masked)
    result = predictor.predict(masked, mode=FILL_ITERATIVE)
    assert len(result.passes) == len(masked.hidden) == 6
    before = list(result.model_input)
    for n, step in enumerate(result.passes, start=1):
        after = list(step.inputs)
        changed = [i for i, (x, y) in enumerate(zip(before, after)) if x != y]
        assert changed == [step.index]  # exactly one position per pass
        assert before[step.index] == "[MASK]" and after[step.index] == step.token
        filled = next(p for p in result.positions if p.index == step.index)
        assert filled.fill_pass == n and filled.choice == step.token
        before = after
    assert sorted(s.index for s in result.passes) == masked.hidden
    # The first pass sees what all-at-once sees, and fills its most confident position.
    first = result.passes[0]
    assert first.probability == pytest.approx(max(p.top[0].probability for p in at_once.positions), rel=1e-5)
    assert "[MASK]" not in "".join(result.passes[-1].inputs)
    assert result.filled == "".join(result.passes[-1].inputs)


def test_comparison_of_two_checkpoints(trained):
    db, run_id, ref, late, cache = trained
    with Store(db, readonly=True) as store:
        first_step = store.checkpoints(run_id)[0]["step"]
    _, early = load_predictor(db, run_id, first_step, cache)
    masked = parse("The {old man} sat by the {river}.")
    a, b = early.predict(masked), late.predict(masked)
    assert a.step == first_step and b.step == ref.step != first_step
    # Two different checkpoints really were asked: their probabilities differ.
    assert any(abs(p.top[0].probability - q.top[0].probability) > 1e-4 for p, q in zip(a.positions, b.positions))
    differ = disagreements(a, b)
    assert differ == [p.index for p, q in zip(a.positions, b.positions) if p.choice != q.choice]
    assert disagreements(b, b) == []
    with pytest.raises(MlmlabError, match="differently masked"):
        disagreements(a, late.predict(parse("The {old} man sat by the river.")))


def test_long_text_is_predicted_on_a_window_around_the_masks(trained):
    predictor = trained[3]
    limit = predictor.max_seq_len
    text = "the cat sat on a mat " * 4 + "and the {dog} ran " + "to the big red house " * 3
    masked = parse(text)
    assert len(masked) > limit
    result = predictor.predict(masked)
    start, end = result.window
    assert end - start == limit and start <= masked.hidden[0] and masked.hidden[-1] < end
    assert any(f"max_seq_len {limit}" in note for note in result.notes)
    # The same as asking about the window alone.
    alone = predictor.predict(MaskedText(masked.slots[start:end]))
    assert [c.probability for c in alone.positions[0].top] == pytest.approx([c.probability for c in result.positions[0].top], abs=1e-6)
    assert [p.index for p in result.positions] == masked.hidden
    spread = parse("{a}" + "b" * limit + "{c}")
    with pytest.raises(NotationError, match=f"span {limit + 2} characters"):
        predictor.predict(spread)


def test_unseen_characters_are_read_as_unk(trained):
    predictor = trained[3]
    result = predictor.predict(parse("Ω the {cat} sat ☃"))
    assert result.model_input[0] == UNK and result.model_input[-1] == UNK
    assert any("never saw" in n and "Ω☃" in n for n in result.notes)
    unknown_answer = predictor.predict(parse("the {Ω} sat"))
    assert unknown_answer.positions[0].answer_rank is None and unknown_answer.loss is None
    assert any("cannot produce" in n for n in unknown_answer.notes)


def test_bad_top_k_and_nothing_masked(trained):
    predictor = trained[3]
    with pytest.raises(MlmlabError, match="top-k must be at least 1"):
        predictor.predict(parse("{a}"), top_k=0)
    with pytest.raises(NotationError, match="nothing is masked"):
        predictor.predict(parse("abc", require_mask=False))


def test_attention_rows_are_distributions_and_average_over_heads(trained):
    predictor = trained[3]
    masked = parse("The {cat} sat.")
    args = predictor.model.args
    avg = predictor.attention(masked, layer=1, head=None)
    assert len(avg.weights) == len(avg.tokens) == len(masked)
    assert all(sum(row) == pytest.approx(1.0, abs=1e-5) for row in avg.weights)
    heads = [predictor.attention(masked, layer=1, head=h).weights for h in range(args.n_heads)]
    mean = torch.tensor(heads).mean(0)
    assert torch.allclose(torch.tensor(avg.weights), mean, atol=1e-6)
    assert avg.tokens[4] == "[MASK]"
    with pytest.raises(MlmlabError, match=f"layers 0-{args.n_layers - 1}"):
        predictor.attention(masked, layer=args.n_layers)
    with pytest.raises(MlmlabError, match=f"heads 0-{args.n_heads - 1}"):
        predictor.attention(masked, head=-1)


def test_random_masking_follows_the_runs_split_like_training(trained):
    predictor = trained[3]
    text = parse("the quick brown fox jumps over the lazy dog ", require_mask=False)
    predictor_cfg = dict(predictor.config)
    try:
        predictor.config = {**predictor_cfg, "mask": {"masking_prob": 0.5, "randomize_prob": 0.25, "no_change_prob": 0.25}}
        drawn = predictor.draw_training_mask(text, seed=7)
    finally:
        predictor.config = predictor_cfg
    n = min(len(text), predictor.max_seq_len)
    kinds = [drawn.slots[i].kind for i in drawn.hidden]
    n_chosen = round(n * 0.5)  # every character of the window is in the vocabulary
    assert len(kinds) == n_chosen
    assert kinds.count(RANDOM) == round(n_chosen * 0.25) and kinds.count(KEEP) == round(n_chosen * 0.25)
    assert all(drawn.slots[i].answer == text.slots[i].answer for i in range(len(text)))
    for i in drawn.hidden:
        slot = drawn.slots[i]
        if slot.kind == RANDOM:
            assert slot.shown in predictor.tokenizer.chars
    result = predictor.predict(drawn)
    for p in result.positions:
        expected = {MASKED: "[MASK]", KEEP: p.answer}.get(p.kind, drawn.slots[p.index].shown)
        assert p.shown == expected
    assert predictor.draw_training_mask(text, seed=7) != predictor.draw_training_mask(text, seed=8)


# --- bad checkpoints and runs --------------------------------------------------------------------


def copy_db(src, dst):
    """A private copy of the shared run database, safe to edit."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


def test_missing_and_corrupt_checkpoint_files(trained, tmp_path):
    db, run_id, ref, *_ = trained
    copy = copy_db(db, tmp_path / "copy.db")
    cache = PredictorCache()

    def point_latest_at(path):
        with sqlite3.connect(copy) as conn:
            conn.execute("update checkpoints set path = ? where run_id = ? and step = ?", [str(path), run_id, ref.step])

    point_latest_at(tmp_path / "gone.pt")
    with pytest.raises(CheckpointError, match="gone.pt: file is missing"):
        load_predictor(copy, run_id, None, cache)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    point_latest_at(garbage)
    with pytest.raises(CheckpointError, match="garbage.pt: .*corrupt"):
        load_predictor(copy, run_id, None, cache)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ref.path.read_bytes()[:2000])
    point_latest_at(truncated)
    with pytest.raises(CheckpointError, match="truncated.pt: .*corrupt"):
        load_predictor(copy, run_id, None, cache)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": fractions.Fraction(1, 3)}, unsafe)  # needs a global the safe unpickler refuses
    point_latest_at(unsafe)
    with pytest.raises(CheckpointError, match="unsafe.pt: holds objects other than tensors .*refused"):
        load_predictor(copy, run_id, None, cache)


def test_no_checkpoint_yet_unknown_step_and_unknown_run(trained, tmp_path):
    db, run_id, ref, *_ = trained
    fresh = tmp_path / "fresh.db"
    with Store(fresh) as store:
        new_id = store.create_run(name="starting", config={"train": {"checkpoint_every": 500}}, vocab={}, total_steps=10)
    with Store(fresh, readonly=True) as store:
        with pytest.raises(CheckpointError, match=rf"run {new_id} \(starting\) has no checkpoint yet: .* every 500 steps"):
            resolve_checkpoint(store, new_id)
    with Store(db, readonly=True) as store:
        with pytest.raises(CheckpointError, match=rf"no checkpoint at step 7 \(it has: .*{ref.step}\)"):
            resolve_checkpoint(store, run_id, 7)
        with pytest.raises(StoreError, match="no run with id or name 'nope'"):
            resolve_checkpoint(store, "nope")


def test_checkpoint_with_wrong_shapes_is_refused(trained, tmp_path):
    ref = trained[2]
    from mlmlab.checkpoints import load_checkpoint

    payload = load_checkpoint(ref.path)
    payload["model_args"] = {**payload["model_args"], "d_model": payload["model_args"]["d_model"] * 2}
    with pytest.raises(CheckpointError, match="does not fit its own model description"):
        Predictor.from_payload(payload)


def test_cache_reloads_a_rewritten_file_and_keeps_a_bounded_number(trained, tmp_path):
    ref = trained[2]
    path = tmp_path / "ckpt.pt"
    path.write_bytes(ref.path.read_bytes())
    cache = PredictorCache(size=1)
    first = cache.get(path)
    assert cache.get(path) is first and path in cache
    path.write_bytes(ref.path.read_bytes())
    import os

    os.utime(path, ns=(1, 1))
    assert cache.get(path) is not first
    cache.get(ref.path)
    assert path not in cache and ref.path in cache
    assert math.isfinite(first.load_seconds) and first.load_seconds > 0
