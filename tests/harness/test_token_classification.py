"""Token classification (named-entity recognition) end to end: reading CoNLL and JSON-lines files, aligning tags
to sub-tokens, entity scores, and `learners finetune/predict/merge --task-type token-classification`."""

import json
import random

import pytest

from conftest import save_tiny_model_dir, tiny_model
from learners.harness.cli import main
from learners.harness.token_data import align_labels, continuation_ids, load_token_task, word_windows
from learners.harness.token_files import read_sentences
from learners.harness.token_metrics import entity_metrics, tag_metrics

NAMES, WORDS = ["paris", "london", "berlin"], "the cat sat on a mat in with big red".split()


def tagged_sentence(rng):
    tokens = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
    tags = ["O"] * len(tokens)
    i = rng.randrange(len(tokens))
    tokens[i], tags[i] = rng.choice(NAMES), "B-LOC"
    if rng.random() < 0.5:
        tokens.insert(i + 1, "city")
        tags.insert(i + 1, "I-LOC")
    return tokens, tags


def write_conll(path, sentences, separator="\n"):
    path.write_text(separator.join("".join(f"{t}\t{g}\n" for t, g in zip(*s)) for s in sentences))


def write_jsonl(path, sentences):
    path.write_text("".join(json.dumps({"tokens": t, "tags": g}) + "\n" for t, g in sentences))


@pytest.fixture(scope="module")
def ner(tmp_path_factory):
    """A tiny BERT, 40 training sentences (CoNLL) and 10 dev ones (JSON lines): places tagged B-LOC (I-LOC)."""
    d = tmp_path_factory.mktemp("ner")
    save_tiny_model_dir(d / "model")
    rng = random.Random(0)
    write_conll(d / "train.conll", [tagged_sentence(rng) for _ in range(40)])
    dev = [tagged_sentence(rng) for _ in range(10)]
    write_jsonl(d / "dev.jsonl", dev)
    write_conll(d / "dev.conll", dev, separator="\t\n")  # WNUT 2017 separates some sentences by a lone tab
    return d


def finetune(d, out, *extra):
    return main(["finetune", "--task-type", "token-classification", "--train-file", str(d / "train.conll"),
                 "--validation-file", str(d / "dev.jsonl"), "--model", str(d / "model"), "--output-dir", str(out),
                 "--max-steps", "3", "--batch-size", "8", "--mixed-precision", "no", "--no-progress", *map(str, extra)])


# ---- reading ------------------------------------------------------------------------------------

def test_conll_sentences_split_on_blank_and_tab_only_lines_with_docstart_and_spaces(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\n\t\nPeter\tNNP\tB-PER\n\n\nBlackburn NNP B-PER\n")
    sentences = read_sentences(path, "--train-file")
    assert [s.tokens for s in sentences] == [["EU", "rejects"], ["Peter"], ["Blackburn"]]
    assert [s.tags for s in sentences] == [["B-ORG", "O"], ["B-PER"], ["B-PER"]]
    assert [s.where for s in sentences] == ["a.conll line 3", "a.conll line 6", "a.conll line 9"]
    assert [s.tags for s in read_sentences(path, "--train-file", tag_column="2")][0] == ["NNP", "VBZ"]


def test_jsonl_tags_key_by_tag_column_or_ner_tags(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"tokens": ["a", "b"], "ner_tags": ["B-X", "O"], "pos": ["DT", "NN"]}) + "\n")
    assert read_sentences(path, "--train-file")[0].tags == ["B-X", "O"]
    assert read_sentences(path, "--train-file", tag_column="pos")[0].tags == ["DT", "NN"]


def test_wnut17_reads_as_its_readme_says():
    from pathlib import Path
    train = Path(__file__).resolve().parents[3] / "shared" / "ner" / "wnut17" / "train.conll"
    if not train.is_file():
        pytest.skip("WNUT 2017 not found")
    task = load_token_task(train, train.with_name("dev.conll"))
    assert (len(task.train), len(task.validation)) == (3394, 1009)
    assert len(task.label_names) == 13 and "O" in task.label_names


# ---- alignment -----------------------------------------------------------------------------------

def test_first_subtoken_carries_the_tag_others_minus_100_or_i_tag_with_label_all_subtokens():
    names = ["B-PER", "I-PER", "O"]
    word_ids = [None, 0, 0, 0, 1, 2, 2, None]  # "Johnson" in three pieces, "is", "here" in two
    assert align_labels(word_ids, [0, 2, 2], False) == [-100, 0, -100, -100, 2, 2, -100, -100]
    assert align_labels(word_ids, [0, 2, 2], True, continuation_ids(names)) == [-100, 0, 1, 1, 2, 2, 2, -100]


def test_windows_cover_a_long_sentence_in_whole_words(ner):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(ner / "model")
    tokens = ["internationalization"] * 30  # several pieces each
    windows = word_windows(tokenizer, tokens, 16)
    assert windows[0][0] == 0 and windows[-1][1] == 30 and len(windows) > 1
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))
    for start, end in windows:
        assert len(tokenizer(tokens[start:end], is_split_into_words=True)["input_ids"]) <= 16


# ---- metrics -------------------------------------------------------------------------------------

def test_entity_scores_need_the_exact_span_and_type():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["B-PER", "O"]]  # PER span cut short, ORG typed PER: only LOC counts
    m = entity_metrics(gold, predicted)
    assert list(m)[0] == "entity_f1"
    assert m["entity_precision"] == pytest.approx(1 / 3) and m["entity_recall"] == pytest.approx(1 / 3)
    assert m["f1_LOC"] == 1.0 and m["f1_PER"] == 0.0 and m["f1_ORG"] == 0.0
    assert m["token_accuracy"] == pytest.approx(4 / 6)


# ---- the command line ----------------------------------------------------------------------------

def predicted_f1(path, dev):
    gold = [json.loads(line)["tags"] for line in dev.read_text().splitlines()]
    predicted = [json.loads(line)["prediction"] for line in path.read_text().splitlines()]
    return entity_metrics(gold, predicted)["entity_f1"]


@pytest.mark.parametrize("method", ["learners", "full"])
def test_finetune_scores_entities_and_predict_tags_every_token(ner, tmp_path, method):
    assert finetune(ner, tmp_path / "run", "--method", method) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metric_name"] == "entity_f1" and "f1_LOC" in results["final_metrics"]
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["architectures"][0].endswith(
        "ForTokenClassification")
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(ner / "dev.jsonl"),
                 "--output", str(tmp_path / "p.jsonl")]) == 0
    # the saved model is the one whose dev score results.json reports
    assert predicted_f1(tmp_path / "p.jsonl", ner / "dev.jsonl") == pytest.approx(results["best_metric"])
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(ner / "dev.conll"),
                 "--output", str(tmp_path / "p.conll")]) == 0
    lines = (tmp_path / "p.conll").read_text().split("\n\n")
    jsonl = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [[row.split("\t")[2] for row in s.splitlines()] for s in lines if s] == [r["prediction"] for r in jsonl]
    assert [[row.split("\t")[1] for row in s.splitlines()] for s in lines if s] == [r["tags"] for r in jsonl]


def test_test_file_predictions_and_scores(ner, tmp_path):
    """--test-file writes the finished model's tags as predict would, in the test file's format; predict --scores adds
    each word's tag probabilities (JSON lines: every tag's, summing to 1, the predicted tag the likeliest; CoNLL: the
    predicted tag's, one more column)."""
    assert finetune(ner, tmp_path / "run", "--test-file", ner / "dev.conll") == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test_examples"] == 10 and results["test_predictions"].endswith("test_predictions.conll")
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(ner / "dev.conll"),
                 "--output", str(tmp_path / "p.conll")]) == 0
    assert (tmp_path / "run" / "test_predictions.conll").read_text() == (tmp_path / "p.conll").read_text()
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(ner / "dev.conll"),
                 "--output", str(tmp_path / "p.iob")]) == 0  # every CoNLL suffix the reader takes
    assert (tmp_path / "p.iob").read_text() == (tmp_path / "p.conll").read_text()

    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(ner / "dev.jsonl"),
                 "--output", str(tmp_path / "s.jsonl"), "--scores"]) == 0
    records = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    tags = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["label2id"]
    for r in records:
        assert len(r["scores"]) == len(r["tokens"]) == len(r["prediction"])
        for word, tag in zip(r["scores"], r["prediction"]):
            assert set(word) == set(tags) and sum(word.values()) == pytest.approx(1.0)
            assert max(word, key=word.get) == tag
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(ner / "dev.conll"),
                 "--output", str(tmp_path / "s.conll"), "--scores"]) == 0
    rows = [line.split("\t") for line in (tmp_path / "s.conll").read_text().splitlines() if line]
    assert [row[:3] for row in rows] == [line.split("\t") for line in (tmp_path / "p.conll").read_text().splitlines() if line]
    assert [float(row[3]) for row in rows] == pytest.approx([max(w.values()) for r in records for w in r["scores"]], abs=1e-6)


def test_plain_tags_are_scored_per_word():
    m = tag_metrics([["DET", "NOUN", "VERB"], ["NOUN"]], [["DET", "VERB", "VERB"], ["NOUN"]])
    assert m["token_accuracy"] == 0.75 and list(m)[0] == "token_accuracy"
    assert (m["f1_DET"], m["f1_NOUN"], m["f1_VERB"]) == (1.0, pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert m["tag_macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_several_taggers_predict_on_one_backbone(ner, tmp_path):
    """predict --learners with two token runs, one of named entities and one of part-of-speech-like plain tags
    (scored per word): each task's column is what its own run predicts."""
    (tmp_path / "pos.conll").write_text("".join(f"{line.split(chr(9))[0]}\t{'NOUN' if i % 2 else 'DET'}\n" if line
                                               else "\n" for i, line in enumerate(
                                                   (ner / "train.conll").read_text().split("\n")[:-1])))
    assert finetune(ner, tmp_path / "ner") == 0
    assert main(["finetune", "--task-type", "token-classification", "--train-file", str(tmp_path / "pos.conll"),
                 "--validation-file", str(tmp_path / "pos.conll"), "--model", str(ner / "model"), "--output-dir",
                 str(tmp_path / "pos"), "--max-steps", "3", "--batch-size", "8", "--no-progress", "--seed", "1"]) == 0
    results = json.loads((tmp_path / "pos" / "results.json").read_text())
    assert results["metric_name"] == "token_accuracy" and {"tag_macro_f1", "f1_DET"} <= set(results["final_metrics"])
    for task in ("ner", "pos"):
        assert main(["predict", "--model", str(tmp_path / task), "--input", str(ner / "dev.jsonl"),
                     "--output", str(tmp_path / f"{task}.jsonl"), "--scores"]) == 0
    assert main(["predict", "--learners", f"ner={tmp_path / 'ner'},pos={tmp_path / 'pos'}", "--base", str(ner / "model"),
                 "--input", str(ner / "dev.jsonl"), "--output", str(tmp_path / "both.jsonl"), "--scores"]) == 0
    both = [json.loads(line) for line in (tmp_path / "both.jsonl").read_text().splitlines()]
    for task in ("ner", "pos"):
        alone = [json.loads(line) for line in (tmp_path / f"{task}.jsonl").read_text().splitlines()]
        assert [b[f"prediction_{task}"] for b in both] == [a["prediction"] for a in alone]
        for b, a in zip(both, alone):
            for x, y in zip(b[f"scores_{task}"], a["scores"]):
                assert x == pytest.approx(y, abs=1e-6)
    assert main(["predict", "--learners", f"ner={tmp_path / 'ner'},pos={tmp_path / 'pos'}", "--base", str(ner / "model"),
                 "--input", str(ner / "dev.conll"), "--output", str(tmp_path / "both.conll")]) == 0
    rows = [line.split("\t") for line in (tmp_path / "both.conll").read_text().splitlines() if line]
    assert [row[2:] for row in rows] == [[n, p] for b in both for n, p in zip(b["prediction_ner"], b["prediction_pos"])]


def save_tiny_roberta_dir(path, words):
    """A tiny random RoBERTa with a byte-level BPE tokenizer trained here on `words` (RoBERTa's kind: a word reads
    differently at the start of a text than after a space, so words must be read with add_prefix_space)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoModelForTokenClassification, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(random.Random(i).choices(words, k=8)) for i in range(200)], vocab_size=300,
                            min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                            show_progress=False)
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                     pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    tokenizer.save_pretrained(path)
    tiny_model("roberta", vocab_size=len(tokenizer), auto_class=AutoModelForTokenClassification).save_pretrained(path)
    return path


def test_a_byte_level_bpe_model_reads_each_word_with_its_leading_space(ner, tmp_path):
    """RoBERTa's tokenizer: the run reads words as run_ner does (add_prefix_space=True), saves that tokenizer with
    its model, and predict aligns a tag to every word; its F1 is the run's."""
    from transformers import AutoTokenizer

    model = save_tiny_roberta_dir(tmp_path / "roberta", [*WORDS, *NAMES, "city"])
    assert AutoTokenizer.from_pretrained(model).add_prefix_space is False
    assert main(["finetune", "--task-type", "token-classification", "--train-file", str(ner / "train.conll"),
                 "--validation-file", str(ner / "dev.jsonl"), "--model", str(model), "--output-dir", str(tmp_path / "run"),
                 "--max-steps", "3", "--batch-size", "8", "--no-progress"]) == 0
    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    assert saved.add_prefix_space is True
    assert saved.convert_ids_to_tokens(saved(["paris", "city"], is_split_into_words=True)["input_ids"]) == \
        ["<s>", "\u0120paris", "\u0120city", "</s>"]  # each word as it reads after a space, one piece each
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(ner / "dev.jsonl"),
                 "--output", str(tmp_path / "p.jsonl")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert predicted_f1(tmp_path / "p.jsonl", ner / "dev.jsonl") == pytest.approx(results["best_metric"])


def test_merged_learners_predict_as_the_run_does(ner, tmp_path):
    assert finetune(ner, tmp_path / "run", "--label-all-subtokens") == 0
    assert main(["merge", "--learners", str(tmp_path / "run"), "--base", str(ner / "model"),
                 "--output", str(tmp_path / "merged")]) == 0
    for model, out in ((tmp_path / "run", "a.conll"), (tmp_path / "merged", "b.conll")):
        assert main(["predict", "--model", str(model), "--input", str(ner / "dev.conll"), "--output", str(tmp_path / out)]) == 0
    assert (tmp_path / "a.conll").read_text() == (tmp_path / "b.conll").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "bitfit", "adapter", "far", "head"])
def test_every_method_trains_a_tagger(ner, tmp_path, method):
    assert finetune(ner, tmp_path / "run", "--method", method) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(ner / "dev.jsonl"),
                 "--output", str(tmp_path / "p.jsonl")]) == 0
    assert predicted_f1(tmp_path / "p.jsonl", ner / "dev.jsonl") == pytest.approx(results["best_metric"])


@pytest.mark.slow
def test_full_fine_tuning_learns_the_places(ner, tmp_path):
    assert finetune(ner, tmp_path / "run", "--method", "full", "--max-steps", "60", "--learning-rate", "3e-3",
                    "--eval-steps", "20") == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["best_metric"] > 0.9


def test_a_sentence_longer_than_max_length_is_predicted_in_windows(ner, tmp_path):
    assert finetune(ner, tmp_path / "run", "--method", "full") == 0
    long = {"tokens": ["the", "cat"] * 40}
    (tmp_path / "long.jsonl").write_text(json.dumps(long) + "\n")
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(tmp_path / "long.jsonl"),
                 "--output", str(tmp_path / "p.jsonl"), "--max-length", "16"]) == 0
    assert len(json.loads((tmp_path / "p.jsonl").read_text())["prediction"]) == 80


@pytest.mark.slow
def test_bench_runs_a_tagging_grid_on_your_files(ner, tmp_path):
    assert main(["bench", "--train-file", str(ner / "train.conll"), "--validation-file", str(ner / "dev.jsonl"),
                 "--task-type", "token-classification", "--model", str(ner / "model"), "--methods", "full,learners",
                 "--seeds", "0", "--max-steps", "2", "--output-dir", str(tmp_path / "bench"), "--no-progress"]) == 0
    for method in ("full", "learners"):
        results = json.loads((tmp_path / "bench" / "runs" / "custom" / method / "seed0" / "results.json").read_text())
        assert results["metric_name"] == "entity_f1" and results["method"] == method
    assert "custom (entity_f1)" in (tmp_path / "bench" / "bench.md").read_text()
