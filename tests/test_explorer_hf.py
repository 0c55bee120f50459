"""The mask explorer on local Hugging Face model directories: a path typed into the pickers' box opens
a tiny BERT or RoBERTa (built by tests/test_hf_models.py's builders, random weights, no downloads),
whose predictions and attention then show on screen, alone and beside a run."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input, Select

from test_explorer import Host, settle, shown, wait_for

pytest.importorskip("transformers")

from test_hf_models import build_bert, build_roberta  # noqa: E402 - after the skip: they need transformers

from mlmlab.tui.explorer.pickers import DIR, CheckpointPickers  # noqa: E402
from mlmlab.tui.explorer.screen import MaskExplorerScreen  # noqa: E402
from mlmlab.tui.explorer.widget import MaskedSentence  # noqa: E402

TEXT = "The cat {sat} on [MASK] mat."


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("explorer-hf")
    return {"bert": build_bert(root / "bert"), "roberta": build_roberta(root / "roberta")}


async def open_model(pilot, screen, path: Path | str) -> None:
    """Type a path into the pickers' box and press Enter, as a user does."""
    box = screen.query_one("#model-path", Input)
    box.focus()
    box.value = str(path)
    await pilot.press("enter")


async def explorer(pilot):
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, MaskExplorerScreen))
    return pilot.app.screen


@pytest.mark.parametrize("name, kind", [("bert", "wordpiece"), ("roberta", "bytelevel")])
async def test_open_a_model_directory_and_read_its_predictions(tmp_path, model_dirs, name, kind):
    app = Host(tmp_path / "runs" / "mlmlab.db", None, text=TEXT)  # no runs at all: a model folder is enough
    async with app.run_test(size=(140, 50)) as pilot:
        screen = await explorer(pilot)
        await wait_for(pilot, lambda: "or open a model folder" in shown(screen, "#status"))
        await open_model(pilot, screen, model_dirs[name])
        await wait_for(pilot, lambda: f"model {name}" in shown(screen, "#primary"))
        primary = shown(screen, "#primary")
        assert "ForMaskedLM" in primary and "filled  The cat" in primary
        assert "answer unknown  saw [MASK]" in primary and "rank " in primary  # [MASK] and {sat}
        assert f"model reads ({kind}" in shown(screen, "#model-input")
        assert "2 hidden" in shown(screen, "#status")
        picker = screen.query_one("#run", Select)
        assert picker.value == DIR + str(model_dirs[name].resolve())
        screen.query_one(MaskedSentence).focus()
        await pilot.press("a")  # the attention view, from the model's own weights
        await wait_for(pilot, lambda: "attention · avg of all layers" in shown(screen, "#attention"))
        await settle(app)


async def test_a_bad_path_is_one_line_on_the_status(tmp_path, model_dirs):
    app = Host(tmp_path / "runs" / "mlmlab.db", None, text=TEXT)
    async with app.run_test(size=(140, 50)) as pilot:
        screen = await explorer(pilot)
        await open_model(pilot, screen, tmp_path / "nowhere")
        await wait_for(pilot, lambda: "does not exist" in shown(screen, "#status"))
        (tmp_path / "plain").mkdir()
        await open_model(pilot, screen, tmp_path / "plain")
        await wait_for(pilot, lambda: "holds no config.json" in shown(screen, "#status"))
        assert screen.query_one(CheckpointPickers).dirs == []
        await settle(app)


async def test_a_run_beside_a_model_directory(trained_run, model_dirs):
    db, run_id = trained_run
    app = Host(db, run_id, text="The {cat} sat on the mat.")
    async with app.run_test(size=(140, 50)) as pilot:
        screen = await explorer(pilot)
        await wait_for(pilot, lambda: f"run {run_id}" in shown(screen, "#primary"))
        await open_model(pilot, screen, model_dirs["bert"])
        await wait_for(pilot, lambda: "model bert" in shown(screen, "#primary"))
        screen.query_one("#compare", Select).value = f"run:{run_id}"
        # BERT reads one piece where the char run reads three letters: lined up by characters
        await wait_for(pilot, lambda: "side by side by characters" in shown(screen, "#comparison"))
        comparison = shown(screen, "#comparison")
        assert "model bert:" in comparison and f"run {run_id}:" in comparison
        assert f"run {run_id}" in shown(screen, "#secondary")
        await settle(app)
