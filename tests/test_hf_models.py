"""Any local Hugging Face masked LM in `mlmlab predict`: a tiny BERT (WordPiece) and a tiny RoBERTa
(byte-level BPE), built here with random weights and tokenizers trained on the test corpus and saved
with `save_pretrained` (no downloads, no committed weights); top-k checked against the fill-mask
pipeline, attention against the model's own, a run beside an HF model, the round trip export →
predict, and every bad input answered with one line and exit 2, with no network.

Needs `transformers` (the `hf` extra): the module skips without it.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, make_corpus, run_cli
from mlmlab.cli import main
from mlmlab.notation import parse
from mlmlab.vocab import FILL_ITERATIVE

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

SENTENCE = "The cat {sat} on [MASK] mat."
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _lines() -> list[str]:
    return make_corpus(800).splitlines()


def build_bert(folder: Path, with_mask: bool = True, head: bool = True) -> Path:
    """A tiny uncased BERT: WordPiece trained on the test corpus, [CLS] … [SEP] added as BERT's."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + (["[MASK]"] if with_mask else [])
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(_lines(), trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", **({"mask_token": "[MASK]"} if with_mask else {}))
    if not with_mask:
        fast.mask_token = None
    torch.manual_seed(0)
    config = BertConfig(**TINY, vocab_size=len(fast), max_position_embeddings=64)
    model = (BertForMaskedLM if head else BertModel)(config)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def build_roberta(folder: Path) -> Path:
    """A tiny RoBERTa: byte-level BPE trained on the test corpus, <s> … </s>, <mask> taking the space before it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForMaskedLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok.train_from_iterator(_lines(), trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])  # as roberta-base's
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    torch.manual_seed(0)
    config = RobertaConfig(**TINY, vocab_size=len(fast), max_position_embeddings=66, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    RobertaForMaskedLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def build_gpt2(folder: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=120, n_positions=64)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-models")
    return {"bert": build_bert(root / "bert"), "roberta": build_roberta(root / "roberta")}


@pytest.fixture
def offline(monkeypatch):
    """No socket may connect while the test runs: loading must never reach the network."""
    def refuse(*args, **kwargs):
        raise AssertionError("mlmlab tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def predictor_of(folder: Path):
    from mlmlab.predict.hf_model import load_hf_predictor

    return load_hf_predictor(folder)


def predict_json(capsys, *args: str) -> dict:
    assert main(["predict", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def fill_mask_top(folder: Path, text: str, k: int) -> list[tuple[int, float]]:
    """The fill-mask pipeline's candidates for the one mask in `text`, special tokens left out."""
    from transformers import AutoTokenizer, pipeline

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    fill = pipeline("fill-mask", model=str(folder), tokenizer=tok, device="cpu")
    found = fill(text.replace("[MASK]", tok.mask_token), top_k=k + len(tok.all_special_ids))
    return [(r["token"], r["score"]) for r in found if r["token"] not in tok.all_special_ids][:k]


# --- mlmlab predict on a model directory ----------------------------------------------------------


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_predict_braces_and_mask_on_a_model_directory(hf_dirs, capsys, offline, name):
    answer = predict_json(capsys, str(hf_dirs[name]), SENTENCE, "--top-k", "4")
    assert answer["model"]["name"] == name and answer["model"]["architecture"].endswith("ForMaskedLM")
    assert answer["checkpoint"] is None and answer["tokenizer"] == ("wordpiece" if name == "bert" else "bytelevel")
    specials = {"[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "<s>", "</s>", "<pad>", "<unk>", "<mask>"}
    braced = [p for p in answer["positions"] if p["answer"] is not None]
    masks = [p for p in answer["positions"] if p["answer"] is None]
    assert braced and len(masks) == 1  # [MASK] is one piece of the model's own tokenizer
    assert "".join(p["characters"] for p in braced).strip() == "sat"
    for p in answer["positions"]:
        assert len(p["top_k"]) == 4 and not {c["token"] for c in p["top_k"]} & specials
        assert all(a["probability"] >= b["probability"] for a, b in zip(p["top_k"], p["top_k"][1:]))
    for p in braced:
        assert p["answer_rank"] >= 1 and 0 < p["answer_probability"] < 1
    loss = sum(-math.log(p["answer_probability"]) for p in braced) / len(braced)
    assert answer["loss"] == pytest.approx(loss)
    tokens = [t["token"] for t in answer["tokens"]]
    assert not set(tokens) & (specials - {"[MASK]"})  # [CLS]/[SEP] frame the input but are no position


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_iterative_fill_on_a_model_directory(hf_dirs, capsys, name):
    answer = predict_json(capsys, str(hf_dirs[name]), "The {cat sat} on the mat.", "--iterative", "--top-k", "2")
    assert answer["mode"] == FILL_ITERATIVE
    passes = sorted(p["fill_pass"] for p in answer["positions"])
    assert passes == list(range(1, len(answer["positions"]) + 1))


def test_plain_text_output_names_the_model(hf_dirs, capsys):
    assert main(["predict", str(hf_dirs["bert"]), SENTENCE]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model bert (BertForMaskedLM) · fill all at once") and "(wordpiece subwords)" in out


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_top_k_equals_the_fill_mask_pipeline(hf_dirs, name):
    text = "The dog ran to [MASK] house."
    result = predictor_of(hf_dirs[name]).predict(parse(text), top_k=5)
    (position,) = result.positions
    ours = [(c.token_id, c.probability) for c in position.top]
    theirs = fill_mask_top(hf_dirs[name], text, 5)
    assert [i for i, _ in ours] == [i for i, _ in theirs]
    assert [p for _, p in ours] == pytest.approx([p for _, p in theirs], abs=1e-6)


def test_answer_probability_and_rank_are_the_models_own(hf_dirs):
    folder = hf_dirs["bert"]
    predictor = predictor_of(folder)
    result = predictor.predict(parse("The {cat} sat on the mat."), top_k=3)
    (position,) = result.positions
    tok = predictor.tokenizer.tok
    ids = tok("The [MASK] sat on the mat.")["input_ids"]
    with torch.inference_mode():
        logits = predictor.model(input_ids=torch.tensor([ids])).logits[0, ids.index(tok.mask_token_id)]
    probs = logits.softmax(-1)
    cat = tok.convert_tokens_to_ids("cat")
    assert position.answer_id == cat and position.answer_probability == pytest.approx(float(probs[cat]), abs=1e-6)
    real = probs.clone()
    real[tok.all_special_ids] = -1
    assert position.answer_rank == 1 + int((real > probs[cat]).sum())


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_attention_is_the_models_own_without_special_tokens(hf_dirs, name):
    predictor = predictor_of(hf_dirs[name])
    masked = parse("The {cat} sat on the mat.")
    attention = predictor.attention(masked, layer=1, head=0)
    assert (attention.n_layers, attention.n_heads) == (2, 2)
    tok = predictor.tokenizer.tok
    ids = tok(masked.text.replace("cat", tok.mask_token))["input_ids"]
    with torch.inference_mode():
        full = predictor.model(input_ids=torch.tensor([ids]), output_attentions=True).attentions[1][0, 0]
    n = len(attention.tokens)
    assert n == len(ids) - 2  # [CLS]/<s> and [SEP]/</s> are not shown
    assert torch.allclose(torch.tensor(attention.weights), full[1 : n + 1, 1 : n + 1], atol=1e-6)
    assert attention.subword and len(attention.spans) == n
    averaged = predictor.attention(masked)
    assert all(sum(row) <= 1 + 1e-5 for row in averaged.weights)


def test_mask_as_training_does_draws_berts_masking(hf_dirs):
    predictor = predictor_of(hf_dirs["bert"])
    masked = predictor.draw_training_mask(parse("The cat sat on the mat and the dog ran to a big house.", require_mask=False), seed=3)
    assert masked.hidden  # 15% of the pieces, at least one
    assert predictor.predict(masked).positions


# --- a run beside an HF model, and the round trip export -> predict -----------------------------


def test_compare_a_run_with_a_model_directory(trained_run, hf_dirs, capsys):
    db, run_id = trained_run
    answer = predict_json(capsys, "--db", str(db), str(run_id), "The {cat} sat on the mat.", "--compare", str(hf_dirs["bert"]))
    assert answer["run"]["id"] == run_id and answer["compare"]["model"]["name"] == "bert"
    assert answer["compare"]["tokenizer"] == "wordpiece"
    (row,) = answer["rows"]  # the char run's three letters and BERT's one piece, lined up by characters
    assert row["text"] == "cat" and len(row["positions"]) == 3 and len(row["compare_positions"]) == 1
    assert main(["predict", "--db", str(db), str(run_id), "The {cat} sat.", "--compare", str(hf_dirs["roberta"])]) == 0
    out = capsys.readouterr().out
    assert "side by side, aligned by characters:" in out and "model roberta" in out


def test_export_then_predict_gives_the_runs_top_k(trained_run, tmp_path, capsys):
    pytest.importorskip("safetensors")
    db, run_id = trained_run
    out = tmp_path / "exported"
    assert main(["export", "--db", str(db), str(run_id), str(out)]) == 0
    capsys.readouterr()
    text = "The {cat} sat on [MASK] mat."
    run = predict_json(capsys, "--db", str(db), str(run_id), text, "--top-k", "5")
    exported = predict_json(capsys, str(out), text, "--top-k", "5")
    assert exported["model"]["architecture"] == "MlmlabForMaskedLM"
    assert [p["index"] for p in exported["positions"]] == [p["index"] for p in run["positions"]]
    for ours, theirs in zip(exported["positions"], run["positions"]):
        assert [c["token"] for c in ours["top_k"]] == [c["token"] for c in theirs["top_k"]]
        assert [c["probability"] for c in ours["top_k"]] == pytest.approx([c["probability"] for c in theirs["top_k"]], abs=1e-5)
    assert exported["loss"] == pytest.approx(run["loss"], abs=1e-5)


# --- bad input: one line, exit 2, nothing reached for --------------------------------------------


def one_line_error(capsys, *args: str) -> str:
    assert main(["predict", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlmlab: error: "), captured.err
    return lines[0]


@pytest.fixture(scope="session")
def bad_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-models")
    (root / "empty").mkdir()
    (root / "file.txt").write_text("not a model\n")
    (root / "no-weights").mkdir()
    (root / "no-weights" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    return {"empty": root / "empty", "file": root / "file.txt", "no-weights": root / "no-weights", "no-mask": build_bert(root / "no-mask", with_mask=False),
            "bert-model": build_bert(root / "bert-model", head=False), "gpt2": build_gpt2(root / "gpt2")}


@pytest.mark.parametrize("which, words", [
    ("missing", "does not exist"),
    ("file", "is a file, not a model directory"),
    ("empty", "holds no config.json"),
    ("no-weights", "holds no weights"),
    ("no-mask", "has no mask token"),
    ("bert-model", "without a masked-LM head"),
    ("gpt2", "not a masked LM"),
])
def test_bad_model_directories_are_one_line(bad_dirs, tmp_path, capsys, offline, which, words):
    path = tmp_path / "nowhere" if which == "missing" else bad_dirs[which]
    line = one_line_error(capsys, str(path), SENTENCE)
    assert words in line and str(path.name) in line


def test_a_model_directory_has_no_checkpoint_steps(hf_dirs, capsys):
    assert "has one set of weights" in one_line_error(capsys, str(hf_dirs["bert"]), SENTENCE, "--checkpoint", "20")


def test_a_bad_compare_path_is_one_line(hf_dirs, tmp_path, capsys):
    line = one_line_error(capsys, str(hf_dirs["bert"]), SENTENCE, "--compare", str(tmp_path / "gone"))
    assert "does not exist" in line


def test_an_edited_export_runs_no_code(hf_dirs, tmp_path, capsys):
    """A directory asking for its own code that is not this mlmlab's export is refused, not run."""
    folder = tmp_path / "remote"
    folder.mkdir()
    config = json.loads((hf_dirs["bert"] / "config.json").read_text())
    config["auto_map"] = {"AutoModelForMaskedLM": "modeling_evil.EvilForMaskedLM"}
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((hf_dirs["bert"] / name).read_bytes())
    (folder / "modeling_evil.py").write_text("raise SystemExit('ran remote code')\n")
    assert "runs only the code of its own exports" in one_line_error(capsys, str(folder), SENTENCE)


def test_without_transformers_one_line_says_what_to_install(hf_dirs):
    code = ("import sys; sys.modules['transformers'] = None; from mlmlab.cli import main; "
            f"sys.exit(main(['predict', {str(hf_dirs['bert'])!r}, 'The {{cat}} sat.']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ['mlmlab: error: opening a Hugging Face model directory needs '
                                                  'transformers: pip install "mlmlab[hf]"']


def test_a_model_directory_in_a_subprocess_with_the_hub_unreachable(hf_dirs):
    """As a user runs it, with a proxy that refuses every connection: loading needs none."""
    env = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    result = run_cli("predict", str(hf_dirs["roberta"]), SENTENCE, "--json", env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"]["name"] == "roberta"
    assert result.stderr == ""  # no progress bars, no warnings


def test_the_cli_and_the_apps_start_import_no_transformers():
    code = ("import sys, mlmlab.cli, mlmlab.tui.app, mlmlab.tui.explorer, mlmlab.predict.hf_dir; "
            "sys.exit(1 if 'transformers' in sys.modules or 'torch' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
