"""How fast the mask explorer opens and answers with a local BERT-base-sized Hugging Face model on the CPU.

    python experiments/bench_hf_explore.py                 # builds the model in a temporary folder
    python experiments/bench_hf_explore.py --keep out/bert-base-random

It builds a `BertForMaskedLM` of BERT-base's shape (768 wide, 12 layers, 12 heads, d_ff 3072,
30,522 pieces: about 110M parameters) with random weights, and a WordPiece tokenizer of that size
(the pieces trained on made-up text, padded with filler pieces), saved with `save_pretrained`
(nothing downloaded, nothing committed). Then, as the explorer does (`PredictorCache`, one torch
thread), it measures:
  * load: `load_hf_predictor` in a fresh process (the first open: the transformers import
    included) and again in the same process (transformers already imported);
  * predict: one sentence with one hidden word and with three, all at once, after one warm-up;
  * iterative fill of the three words, and the attention map (averaged over layers and heads).
Each figure is the median of --rounds runs.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCE = "The old man walked down to the river and watched the boats in the evening sun."
ONE_WORD = "The old man walked down to the {river} and watched the boats in the evening sun."
THREE_WORDS = "The {old} man walked down to the {river} and watched the {boats} in the evening sun."
VOCAB = 30522  # BERT-base's
WORDS = ("the old man walked down to river and watched boats in evening sun a cat dog sat on mat ran big small "
         "red blue house tree fox jumps over lazy quick brown sea boat hill moon star bird sings").split()


def build_model(folder: Path) -> int:
    """A random-weight BERT-base-sized masked LM and its tokenizer in `folder`; returns the parameter count."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    rng = random.Random(0)
    text = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) + "." for _ in range(3000)]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trained = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    trained.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trained.train_from_iterator(text, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=specials))
    vocab = dict(trained.get_vocab())
    for i in range(VOCAB - len(vocab)):  # filler pieces: BERT-base's vocabulary size, so its embedding's size
        vocab[f"##x{i}"] = len(vocab)
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(fast)))  # the defaults are BERT-base's shape
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def median_ms(fn, rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure_in_process(folder: Path, rounds: int) -> dict:
    """Everything but the cold first load, in this process, as the explorer's worker does it."""
    from mlmlab.notation import parse
    from mlmlab.predict.loading import PredictorCache, use_prediction_threads
    from mlmlab.vocab import FILL_ITERATIVE

    use_prediction_threads()
    start = time.perf_counter()
    predictor = PredictorCache().get(folder)  # transformers is imported by now (the cold load ran first)
    warm_load = time.perf_counter() - start
    one, three = parse(ONE_WORD), parse(THREE_WORDS)
    return {
        "warm_load_s": warm_load,
        "predict_one_word_ms": median_ms(lambda: predictor.predict(one, 5), rounds),
        "predict_three_words_ms": median_ms(lambda: predictor.predict(three, 5), rounds),
        "iterative_three_words_ms": median_ms(lambda: predictor.predict(three, 5, FILL_ITERATIVE), rounds),
        "attention_ms": median_ms(lambda: predictor.attention(three), rounds),
        "hidden_pieces": [len(predictor.predict(m, 1).positions) for m in (one, three)],
        "pieces_read": len(predictor.predict(three, 1).model_input),
    }


COLD_LOAD = """
import sys, time
start = time.perf_counter()
from mlmlab.predict.loading import PredictorCache, use_prediction_threads
use_prediction_threads()
PredictorCache().get(sys.argv[1])
print(time.perf_counter() - start)
"""


def cold_load_s(folder: Path, rounds: int) -> float:
    """The explorer's first open of the folder: a fresh process, torch and transformers imported on the way."""
    times = [float(subprocess.run([sys.executable, "-c", COLD_LOAD, str(folder)], capture_output=True, text=True,
                                  check=True).stdout.split()[-1]) for _ in range(rounds)]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", type=Path, help="build the model here and keep it (default: a temporary folder)")
    parser.add_argument("--rounds", type=int, default=20, help="timed runs per figure (default 20)")
    parser.add_argument("--load-rounds", type=int, default=3, help="fresh processes for the cold load (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "bert-base-random"
        start = time.perf_counter()
        parameters = build_model(folder)
        built = time.perf_counter() - start
        figures = {"parameters": parameters, "build_s": built, "cold_load_s": cold_load_s(folder, args.load_rounds),
                   **measure_in_process(folder, args.rounds)}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
