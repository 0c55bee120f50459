"""`mlmlab predict`: the table, --json for scripts, and one line with exit status 2 for each bad input."""

from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import run_cli
from mlmlab.cli import main
from mlmlab.store import Store


def test_json_output_shape(trained_run):
    db, run_id = trained_run
    result = run_cli("predict", str(run_id), "The {cat} sat on [MASK] mat", "--top-k", "3", "--json", "--db", str(db))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["run"] == {"id": run_id, "name": "shared"}
    assert out["mode"] == "all" and isinstance(out["checkpoint"], int)
    assert [p["index"] for p in out["positions"]] == [4, 5, 6, 15]
    assert [p["answer"] for p in out["positions"]] == ["c", "a", "t", None]
    for p in out["positions"]:
        assert len(p["top_k"]) == 3
        assert all(set(pair) == {"token", "probability"} for pair in p["top_k"])
        assert p["prediction"] == p["top_k"][0]["token"]
    filled = list("The cat sat on ? mat")
    for p in out["positions"]:
        filled[p["index"]] = p["prediction"]
    assert out["filled"] == "".join(filled)
    assert out["known"] == 3 and out["loss"] > 0


def test_table_output_and_iterative_flag(trained_run, capsys):
    db, run_id = trained_run
    assert main(["predict", "shared", "A {big} dog", "--iterative", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "fill one at a time, most confident first" in out
    assert out.splitlines()[1] == "input   A {big} dog"
    assert "pass" in out.splitlines()[4]
    assert " of 3 right" in out


def test_checkpoint_flag_picks_a_step(trained_run, capsys):
    db, run_id = trained_run
    with Store(db, readonly=True) as store:
        first = store.checkpoints(run_id)[0]["step"]
    assert main(["predict", str(run_id), "{a} cat", "--checkpoint", str(first), "--json", "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == first



def test_compare_two_checkpoints_marks_disagreements(trained_run, capsys):
    db, run_id = trained_run
    with Store(db, readonly=True) as store:
        steps = [r["step"] for r in store.checkpoints(run_id)]
    argv = ["predict", str(run_id), "the {old} man and the {sea}", "--compare", f"@{steps[0]}", "--db", str(db)]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checkpoint"] == steps[-1] and out["compare"]["checkpoint"] == steps[0]
    assert out["compare"]["run"] == out["run"]
    mine = {p["index"]: p["prediction"] for p in out["positions"]}
    theirs = {p["index"]: p["prediction"] for p in out["compare"]["positions"]}
    assert out["disagree"] == [i for i in mine if mine[i] != theirs[i]]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"@ step {steps[0]}" in text and f"@ step {steps[-1]}" in text
    assert f"they disagree at {len(out['disagree'])} of 6 hidden positions" in text
    # A run against itself (its latest checkpoint, by name) agrees everywhere.
    assert main(["predict", str(run_id), "{a} cat", "--compare", "shared", "--json", "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)["disagree"] == []


def test_compare_rejects_a_bad_reference(trained_run, capsys):
    db, run_id = trained_run
    args = ["predict", str(run_id), "{a} cat", "--db", str(db), "--compare"]
    assert "expected @STEP, RUN or RUN@STEP" in error_line(capsys, [*args, "shared@x"])
    assert "--compare needs @STEP, RUN or RUN@STEP" in error_line(capsys, [*args, ""])
    assert "no checkpoint at step 3 (it has: " in error_line(capsys, [*args, "@3"])
    assert "no run with id or name 'ghost'" in error_line(capsys, [*args, "ghost"])

def error_line(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("mlmlab: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty text"),
        ("the cat sat", "nothing is masked"),
        ("the {cat sat", "brace opened at column 5 is never closed"),
        ("the cat} sat", "closing brace at column 8 has no opening brace"),
    ],
)
def test_bad_text(trained_run, capsys, text, expected):
    db, run_id = trained_run
    assert expected in error_line(capsys, ["predict", str(run_id), text, "--db", str(db)])


def test_bad_runs_checkpoints_and_options(trained_run, capsys, tmp_path):
    db, run_id = trained_run
    args = ["--db", str(db)]
    assert "no run with id or name 'ghost'" in error_line(capsys, ["predict", "ghost", "{a}", *args])
    assert "run 99 not found" in error_line(capsys, ["predict", "99", "{a}", *args])
    assert "no checkpoint at step 3 (it has: " in error_line(capsys, ["predict", str(run_id), "{a}", "--checkpoint", "3", *args])
    assert "--top-k must be at least 1, not 0" in error_line(capsys, ["predict", str(run_id), "{a}", "--top-k", "0", *args])
    assert "no such file" in error_line(capsys, ["predict", "1", "{a}", "--db", str(tmp_path / "none.db")])
    spread = "{a}" + "b" * 40 + "{c}"  # the tiny model reads 32 characters at once
    assert "more than this model reads at once (max_seq_len 32)" in error_line(capsys, ["predict", str(run_id), spread, *args])


def test_no_checkpoint_yet(capsys, tmp_path):
    db = tmp_path / "fresh.db"
    with Store(db) as store:
        store.create_run(name="new", config={"train": {"checkpoint_every": 200}}, vocab={}, total_steps=5)
    line = error_line(capsys, ["predict", "new", "{a}", "--db", str(db)])
    assert "run 1 (new) has no checkpoint yet" in line and "every 200 steps" in line


def test_missing_and_corrupt_checkpoint_file(trained_run, capsys, tmp_path):
    db, run_id = trained_run
    copy = tmp_path / "copy.db"
    with sqlite3.connect(db) as a, sqlite3.connect(copy) as b:
        a.backup(b)

    def point_latest_at(path) -> None:
        with sqlite3.connect(copy) as conn:
            conn.execute("update checkpoints set path = ? where id = (select max(id) from checkpoints)", [str(path)])

    point_latest_at(tmp_path / "gone.pt")
    assert "gone.pt: file is missing" in error_line(capsys, ["predict", str(run_id), "{a}", "--db", str(copy)])
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"\x00" * 100)
    point_latest_at(broken)
    assert "broken.pt: " in (line := error_line(capsys, ["predict", str(run_id), "{a}", "--db", str(copy)])) and "corrupt" in line


def test_long_text_and_unseen_characters_are_noted(trained_run, capsys):
    db, run_id = trained_run
    text = "Ω " + "the cat sat on a mat " * 3 + "the {dog}"
    assert main(["predict", str(run_id), text, "--json", "--db", str(db)]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any("longer than this model reads at once (max_seq_len 32)" in n for n in notes)
    assert not any("never saw" in n for n in notes)  # the Ω lies outside the window the model read


def test_subprocess_error_has_no_traceback(trained_run):
    db, run_id = trained_run
    result = run_cli("predict", str(run_id), "a {b", "--db", str(db))
    assert result.returncode == 2
    assert result.stderr.strip() == "mlmlab: error: brace opened at column 3 is never closed (write \\{ for a literal brace)"
