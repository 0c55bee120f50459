"""The sequence-length curriculum: `train.seq_len_schedule`, `train.schedule_keeps_tokens`, its checks and its log."""

from __future__ import annotations

import pytest

from conftest import TINY_SETS, run_cli, sets_args
from mlmlab.config import build_config, load_config, parse_overrides, parse_toml, to_toml
from mlmlab.engine.schedule import batch_varies, describe_stages, longest_seq_len, seq_len_at, stage_at
from mlmlab.errors import ConfigError
from mlmlab.store import Store

KEY = "train.seq_len_schedule"


def old_warmup_seq_len(step: int, cfg) -> int:
    """The short-sequence warm-up as it was written before the schedule existed."""
    t = cfg.train
    warm = t.short_seq_len and t.short_seq_len < t.seq_len and step < t.short_seq_steps
    return t.short_seq_len if warm else t.seq_len


@pytest.mark.parametrize("sets", [
    [],  # the quick defaults: 32 for 400 steps, then 64
    ["train.short_seq_len=0", "train.short_seq_steps=0"],
    ["train.short_seq_len=64"],  # not below seq_len: no warm-up
    ["train.short_seq_len=100", "train.seq_len=128"],
    ["train.short_seq_len=8", "train.short_seq_steps=0"],
])
def test_an_empty_schedule_is_the_old_warmup(sets):
    cfg = load_config(None, sets)
    assert cfg.train.seq_len_schedule == [] and not cfg.train.schedule_keeps_tokens
    for step in range(0, 1200):
        assert stage_at(step, cfg) == (cfg.train.batch_size, old_warmup_seq_len(step, cfg)), (sets, step)
    assert longest_seq_len(cfg) == cfg.train.seq_len and not batch_varies(cfg)


def test_the_schedule_switches_at_its_steps():
    cfg = load_config(None, [f"{KEY}=[[0, 16], [100, 32], [250, 128]]"])
    assert [seq_len_at(s, cfg) for s in (0, 99, 100, 249, 250, 10**6)] == [16, 16, 32, 32, 128, 128]
    assert stage_at(0, cfg).batch_size == cfg.train.batch_size  # batch fixed by default
    assert longest_seq_len(cfg) == 128  # the corpus split must hold the longest window, not only seq_len
    assert describe_stages(cfg) == "0: 16, 100: 32, 250: 128"


def test_keeping_tokens_scales_the_batch_rounding_down():
    cfg = load_config(None, [f"{KEY}=[[0, 32], [10, 48], [20, 128]]", "train.schedule_keeps_tokens=true",
                             "train.batch_size=10"])
    assert [stage_at(s, cfg) for s in (0, 10, 20)] == [(40, 32), (26, 48), (10, 128)]  # 1280 // 48 = 26
    assert all(b * t <= 10 * 128 < (b + 1) * t for b, t in (stage_at(s, cfg) for s in (0, 10, 20)))
    assert batch_varies(cfg) and describe_stages(cfg) == "0: 32 x 40, 10: 48 x 26, 20: 128 x 10"
    # The derived warm-up keeps tokens too when asked: 64 x 64 tokens per step during the 32-token steps.
    quick = load_config(None, ["train.schedule_keeps_tokens=true"])
    assert stage_at(0, quick) == (128, 32) and stage_at(400, quick) == (64, 64)
    one = load_config(None, [f"{KEY}=[[0, 64]]", "train.schedule_keeps_tokens=true"])
    assert stage_at(0, one) == (64, 64) and not batch_varies(one)


@pytest.mark.parametrize("value, words", [
    ("[[1, 32], [2000, 128]]", "the first stage must start at step 0"),
    ("[[0, 32], [0, 64]]", "the steps must strictly increase"),
    ("[[0, 32], [500, 64], [400, 128]]", "the steps must strictly increase"),
    ("[[0, 3]]", "each seq_len must be between 4 and model.max_seq_len = 128"),
    ("[[0, 32], [10, 256]]", "each seq_len must be between 4 and model.max_seq_len = 128"),
    ("[[0, 32, 5]]", "must be a list of [step, seq_len] integer pairs"),
    ("[[0, 'a']]", "must be a list of [step, seq_len] integer pairs"),
    ("[0, 32]", "must be a list of [step, seq_len] integer pairs"),
    ("thirty-two", "must be a list of [step, seq_len] integer pairs"),
    ("[[0, 4], [1, 5], [2, 6], [3, 7], [4, 8], [5, 9], [6, 10], [7, 11], [8, 12]]", "at most 8 stages"),
])
def test_bad_schedules_are_one_line_naming_the_key(value, words):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [f"{KEY}={value}"])
    message = str(caught.value)
    assert message.startswith(f"{KEY} = ") and words in message and "\n" not in message
    assert caught.value.key == KEY
    with pytest.raises(ConfigError, match="train.schedule_keeps_tokens"):
        load_config(None, ["train.schedule_keeps_tokens=3"])


def test_the_cli_refuses_a_bad_schedule_with_exit_2(tmp_path):
    result = run_cli("run", "--db", str(tmp_path / "x.db"), "--set", f"{KEY}=[[5, 32]]")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{KEY} = [[5, 32]]: the first stage must start at step 0" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.db").exists()  # checked before any row


def test_set_parses_the_schedule_and_toml_round_trips_it():
    assert parse_overrides([f"{KEY}=[[0,32],[2000,128]]"]) == {KEY: [[0, 32], [2000, 128]]}
    assert parse_overrides([f"{KEY}=[]"]) == {KEY: []}
    cfg = load_config(None, [f"{KEY}=[[0,32],[2000,128]]", "train.schedule_keeps_tokens=true"])
    assert cfg.train.seq_len_schedule == [[0, 32], [2000, 128]] and cfg.train.schedule_keeps_tokens
    assert build_config(parse_toml(to_toml(cfg))) == cfg
    # A config saved before these keys existed (an old run row or checkpoint) reads with the defaults.
    old = cfg.to_dict()
    del old["train"]["seq_len_schedule"], old["train"]["schedule_keeps_tokens"]
    assert build_config(old).train.seq_len_schedule == [] and not build_config(old).train.schedule_keeps_tokens


def test_the_form_shows_the_schedule_as_the_cli_reads_it():
    from mlmlab.config import parse_value
    from mlmlab.tui.screens.form import FIELD_KEYS, field_id, invalid_widget_id, shown_value

    assert KEY in FIELD_KEYS and invalid_widget_id(KEY) == field_id(KEY)
    for value in ([[0, 32], [2000, 128]], []):
        assert parse_value(shown_value(value)) == value
    assert load_config(None, [f"{KEY}=[]"]).train.seq_len_schedule == []  # the form sends [] for an emptied field
    with pytest.raises(ConfigError, match="train.seq_len_schedule"):
        load_config(None, [f"{KEY}="])  # an empty value is not a list: one line naming the key


@pytest.fixture(scope="module")
def curriculum_run(tmp_path_factory, corpus_file):
    """A tiny run whose schedule switches from 8 to 32 tokens at step 10, keeping 16 x 32 tokens per step."""
    db_path = tmp_path_factory.mktemp("curriculum") / "mlmlab.db"
    sets = [*TINY_SETS, f"data.source={corpus_file}", "train.steps=20", f"{KEY}=[[0, 8], [10, 32]]",
            "train.schedule_keeps_tokens=true"]
    result = run_cli("run", "--db", str(db_path), "--quiet", *sets_args(sets))
    assert result.returncode == 0, result.stderr
    return db_path


@pytest.mark.slow
def test_a_run_switches_seq_len_at_the_step_and_logs_it(curriculum_run):
    from mlmlab.tui.reader import DetailRequest, poll_detail

    db_path = curriculum_run
    with Store(db_path, readonly=True) as store:
        seq_len = dict(store.series(1, "seq_len"))
        batch = dict(store.series(1, "batch_size"))
        tokens = {s: t for (s, _), (t, _) in zip(store.series(1, "seq_len"), store.series(1, "seq_len", x="tokens"))}
        run = store.run(1)
    assert seq_len == {5: 8, 10: 8, 15: 32, 20: 32}  # a log row gives the length of its last step
    assert batch == {5: 64, 10: 64, 15: 16, 20: 16}  # 16 x 32 tokens per step throughout
    assert tokens[10] == 10 * 64 * 8 and run["tokens"] == 20 * 16 * 32
    poll = poll_detail(db_path, DetailRequest(1, "step", 60))
    assert poll.error is None and [y for _, y in poll.series.points["seq_len"]] == [8, 8, 32, 32]


async def test_the_form_validates_the_schedule_as_the_cli_does(db_path):
    from textual.widgets import Input, Static
    from tui_helpers import build_app, wait_for, wait_for_screen

    from mlmlab.tui.screens.form import NewRunScreen, field_id

    app = build_app(db_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("n")
        await wait_for_screen(pilot, app, NewRunScreen)
        form = app.screen
        await wait_for(pilot, lambda: form.config is not None, 5, "the preset to validate")
        field = form.query_one(f"#{field_id(KEY)}", Input)
        assert field.value == "[]"
        field.value = "[[0, 32], [50, 500]]"
        await wait_for(pilot, lambda: form.config is None, 5, "the bad schedule to be refused")
        error = str(form.query_one("#form-error", Static).content)
        assert error.startswith(f"{KEY} = [[0, 32], [50, 500]]: each seq_len must be between 4") and field.has_class("-invalid")
        field.value = "[[0, 32], [50, 64]]"
        await wait_for(pilot, lambda: form.config is not None, 5, "the good schedule to validate")
        assert form.config.train.seq_len_schedule == [[0, 32], [50, 64]] and not field.has_class("-invalid")


@pytest.mark.slow
async def test_the_detail_screen_draws_seq_len_beside_the_learning_rate(curriculum_run):
    from tui_helpers import build_app, wait_for, wait_for_screen

    from mlmlab.tui.plots import MetricPlot
    from mlmlab.tui.screens.detail import RunDetailScreen

    app = build_app(curriculum_run)
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(RunDetailScreen(1))
        screen = await wait_for_screen(pilot, app, RunDetailScreen)
        plot = screen.query_one("#plot-lr", MetricPlot)
        await wait_for(pilot, lambda: plot.n_points > 0, 10, "the learning-rate panel's points")
        lines = {line.label: line for line in plot.lines if line.points}
        assert set(lines) == {"lr", "seq_len (right)", "batch (right)"}
        assert [y for _, y in lines["seq_len (right)"].points] == [8, 8, 32, 32] and lines["seq_len (right)"].right
        assert not lines["lr"].right
