"""The new-run form for subword runs (issue 12, requirement 6): tokenizer, vocabulary size, masking
strategy and the seq_len schedule, validated as `mlmlab run --set …` validates, and a wordpiece run
launched from it."""

from __future__ import annotations

import sqlite3

import pytest
from textual.widgets import Input, Select, Static
from tui_helpers import Notifications, build_app, run_status, wait_for, wait_for_screen

from mlmlab.config import find_preset, load_config, to_toml
from mlmlab.errors import ConfigError
from mlmlab.tokenizer import TOKENIZER_KINDS
from mlmlab.tui.screens.form import NewRunScreen, field_id
from mlmlab.tui.screens.runs import RunsScreen
from mlmlab.vocab import MASK_STRATEGIES

TRAIN_TIMEOUT = 180  # a tiny run takes seconds, but this 2-core machine is shared


def cli_message(preset: str, *sets: str) -> str:
    """What `mlmlab run PRESET --set …` says about these settings."""
    with pytest.raises(ConfigError) as caught:
        load_config(str(find_preset(preset)), list(sets))
    return str(caught.value)


def verdict(form: NewRunScreen) -> str:
    return str(form.query_one("#form-error", Static).content)


def field(form: NewRunScreen, key: str):
    return form.query_one(f"#{field_id(key)}")


async def open_form(pilot, app, preset: str | None = None) -> NewRunScreen:
    await pilot.press("n")
    form = await wait_for_screen(pilot, app, NewRunScreen)
    if preset:
        form.query_one("#preset", Select).value = preset
        await wait_for(pilot, lambda: form.current_preset == preset, 5, f"the {preset} preset")
    await wait_for(pilot, lambda: form.config is not None, 5, "the preset to validate")
    return form


async def test_the_form_offers_every_tokenizer_a_vocabulary_size_every_strategy_and_the_schedule(db_path):
    app = build_app(db_path)
    async with app.run_test(size=(120, 50)) as pilot:
        form = await open_form(pilot, app)
        assert isinstance(field(form, "data.vocab_size"), Input)
        for key, values in (("data.tokenizer", TOKENIZER_KINDS), ("mask.strategy", MASK_STRATEGIES)):
            for value in values:  # a Select refuses a value it does not offer
                field(form, key).value = value
        field(form, "data.tokenizer").value = "wordpiece"
        field(form, "data.vocab_size").value = "2000"
        field(form, "mask.strategy").value = "whole_word"
        field(form, "train.seq_len_schedule").value = "[[0, 32], [100, 64]]"
        field(form, "train.schedule_keeps_tokens").value = "true"
        await pilot.pause()
        cfg = form.config
        assert cfg is not None, verdict(form)
        assert (cfg.data.tokenizer, cfg.data.vocab_size, cfg.mask.strategy) == ("wordpiece", 2000, "whole_word")
        assert cfg.train.seq_len_schedule == [[0, 32], [100, 64]] and cfg.train.schedule_keeps_tokens


async def test_the_wordpiece_preset_loads_into_the_form(db_path):
    app = build_app(db_path)
    async with app.run_test(size=(120, 50)) as pilot:
        form = await open_form(pilot, app, "wordpiece")
        preset = load_config("wordpiece")
        assert field(form, "data.tokenizer").value == "wordpiece"
        assert field(form, "data.vocab_size").value == str(preset.data.vocab_size)
        assert form.config == preset


async def test_the_vocabulary_size_is_validated_as_the_cli_does(db_path, monkeypatch):
    app = build_app(db_path)
    launched = []
    monkeypatch.setattr(app, "start_new_run", lambda *a, **k: launched.append(a))
    async with app.run_test(size=(120, 50)) as pilot:
        form = await open_form(pilot, app, "wordpiece")
        size = field(form, "data.vocab_size")

        field(form, "data.tokenizer").value = "char"  # a wordpiece size with the char tokenizer
        await pilot.pause()
        assert verdict(form) == cli_message("wordpiece", "data.tokenizer=char")
        assert verdict(form).startswith(f"data.vocab_size = {size.value}: the char tokenizer takes every character")
        assert size.has_class("-invalid") and form.config is None
        await pilot.press("ctrl+l")
        assert launched == [] and isinstance(app.screen, NewRunScreen)

        size.value = "0"
        await pilot.pause()
        assert form.config is not None and not size.has_class("-invalid"), verdict(form)

        field(form, "data.tokenizer").value = "bytelevel"
        size.value = "100"
        await pilot.pause()
        assert verdict(form) == cli_message("wordpiece", "data.tokenizer=bytelevel", "data.vocab_size=100")
        assert verdict(form) == ("data.vocab_size = 100: too small for bytelevel: at least 259 "
                                 "(the 3 special tokens and the 256 bytes)")
        assert size.has_class("-invalid") and len(verdict(form).splitlines()) == 1

        size.value = "-1"
        await pilot.pause()
        assert verdict(form).startswith("data.vocab_size = -1:") and size.has_class("-invalid")

        size.value = "300"
        await pilot.pause()
        assert form.config is not None and form.config.data.vocab_size == 300, verdict(form)
        await pilot.press("ctrl+l")
        assert len(launched) == 1 and 'tokenizer = "bytelevel"' in launched[0][0] and "vocab_size = 300" in launched[0][0]


@pytest.fixture
def wordpiece_presets(tmp_path, tiny_sets):
    """An experiments/ folder holding a tiny wordpiece preset on the test corpus."""
    folder = tmp_path / "experiments"
    folder.mkdir()
    cfg = load_config(None, [*tiny_sets, "data.tokenizer=wordpiece", "data.vocab_size=100", "mask.strategy=whole_word"])
    (folder / "tinywp.toml").write_text(to_toml(cfg))
    return folder


@pytest.mark.slow
async def test_a_wordpiece_run_launched_from_the_form_completes(db_path, wordpiece_presets):
    app = build_app(db_path, presets_dir=wordpiece_presets)
    async with app.run_test(size=(120, 50)) as pilot:
        form = await open_form(pilot, app, "tinywp")
        assert field(form, "data.tokenizer").value == "wordpiece" and field(form, "data.vocab_size").value == "100"
        form.query_one("#name", Input).value = "wp-form"
        await pilot.pause()
        await pilot.press("ctrl+l")
        await wait_for_screen(pilot, app, RunsScreen)
        await wait_for(pilot, lambda: run_status(app, 1) == "completed", TRAIN_TIMEOUT, "completed")
        await wait_for(pilot, lambda: not app.launches, 10, "the launch watcher to finish")
    with sqlite3.connect(db_path) as conn:
        name, vocab, step = conn.execute("select name, vocab, step from runs where id = 1").fetchone()
    assert name == "wp-form" and '"kind": "wordpiece"' in vocab and step == 40


@pytest.mark.slow
async def test_a_vocabulary_the_corpus_cannot_give_fails_the_launch_with_one_line_and_no_run(db_path, wordpiece_presets):
    """Valid in the form (only training the vocabulary shows the corpus's limit): the launched process
    says why, before any run row exists."""
    app = build_app(db_path, presets_dir=wordpiece_presets)
    notifications = Notifications()
    async with app.run_test(size=(120, 50), notifications=True, message_hook=notifications) as pilot:
        form = await open_form(pilot, app, "tinywp")
        form.query_one("#name", Input).value = "too-big"
        field(form, "data.vocab_size").value = "5000"
        await pilot.pause()
        assert form.config is not None, verdict(form)
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: not app.launches, TRAIN_TIMEOUT, "the run to end")
        failed = [m for m in notifications.messages if "'too-big' failed" in m]
        assert failed and "data.vocab_size = 5000: larger than this corpus can give" in failed[0], notifications.messages
    if db_path.exists():
        with sqlite3.connect(db_path) as conn:
            assert conn.execute("select count(*) from runs").fetchone()[0] == 0
