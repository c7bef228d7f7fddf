"""Every bad input is one line on stderr and exit status 2: no traceback, nothing written to the output path.

Table-driven over finetune, predict, merge and bench; the CLI runs in-process (learners.harness.cli.main).
A case builds its command from `ctx` (a finished tiny learners run and adapter run, data files, a
tmp dir) and may damage a copy of a saved model first; `out` is the output path that must stay untouched.
"""

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file, save_file

from conftest import GLUE_DIR, tiny_model, write_three_class_csvs
from learners import LearnerConfig, LearnerModel, Primer, get_learner_model
from learners.errors import UsageError
from learners.harness.cli import main
from learners.learner.trainer import prime_with_trainer

LEARNERS = "learners_model.safetensors"
LEARNERS_CONFIG = "learners_config.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """A tiny learners run and a tiny adapter run on a three-class CSV, and the CSV files."""
    d = tmp_path_factory.mktemp("trained")
    write_three_class_csvs(d)
    for method in ("learners", "adapter"):
        assert main(["finetune", "--train-file", str(d / "train.csv"), "--validation-file", str(d / "dev.csv"),
                     "--model", str(tiny_model_dir), "--method", method, "--max-steps", "2",
                     "--batch-size", "12", "--output-dir", str(d / method), "--no-progress",
                     *(["--ratio", "0.25", "--selection", "priming", "--priming-steps", "1", "--learner-layers", "all"]
                       if method == "learners" else [])]) == 0
    (d / "ner.conll").write_text(NER_CONLL)
    assert main(["finetune", "--task-type", "token-classification", "--train-file", str(d / "ner.conll"),
                 "--validation-file", str(d / "ner.conll"), "--model", str(tiny_model_dir), "--max-steps", "1",
                 "--output-dir", str(d / "ner"), "--no-progress"]) == 0
    return d


@pytest.fixture
def ctx(tmp_path, trained, tiny_model_dir):
    (tmp_path / "afile").write_text("keep me\n")
    return SimpleNamespace(tmp=tmp_path, data=trained, model=tiny_model_dir, out=tmp_path / "out")


# ---- building blocks -----------------------------------------------------------------------------

def finetune(c, *extra, train=None, dev=None, out=None):
    return ["finetune", "--train-file", str(train or c.data / "train.csv"), "--validation-file", str(dev or c.data / "dev.csv"),
            "--model", str(c.model), "--output-dir", str(out or c.out), "--max-steps", "1", "--batch-size", "8",
            "--no-progress", *[str(x) for x in extra]]


NER_CONLL = "Paris\tB-LOC\nis\tO\nnice\tO\n\nBerlin\tB-LOC\nrocks\tO\n"


def ner(c, train=NER_CONLL, dev=NER_CONLL, *extra, suffix=".conll"):
    """A token classification finetune on `train` and `dev` (file contents), written into c.tmp."""
    (c.tmp / f"ner-train{suffix}").write_text(train)
    (c.tmp / f"ner-dev{suffix}").write_text(dev)
    return finetune(c, "--task-type", "token-classification", *extra, train=c.tmp / f"ner-train{suffix}",
                    dev=c.tmp / f"ner-dev{suffix}")


def without_files(argv):
    """A finetune command without its --train-file and --validation-file (the first two flags finetune() gives)."""
    return argv[:1] + argv[5:]


def predict(c, model=None, *extra, out=None, input=None):
    return ["predict", "--model", str(model or c.data / "learners" / "model"), "--input", str(input or c.data / "dev.csv"),
            "--output", str(out or c.out.with_suffix(".csv")), *[str(x) for x in extra]]


def predict_learners(c, spec=None, *extra, base=None, out=None):
    return ["predict", "--learners", spec or f"abc={c.data / 'learners'}", "--base", str(base or c.model),
            "--input", str(c.data / "dev.csv"), "--output", str(out or c.out.with_suffix(".csv")), *[str(x) for x in extra]]


def other_base(c):
    """A model directory like the learners' base (same shapes, tokenizer) with other weights."""
    from conftest import tiny_model
    from learners.harness.models import quiet_transformers
    d = copy(c, c.model, "other-base")
    vocab = json.loads((d / "config.json").read_text())["vocab_size"]
    with quiet_transformers():
        tiny_model("bert", seed=3, vocab_size=vocab).save_pretrained(d)
    return d


def merge(c, learners=None, *extra, out=None):
    return ["merge", "--base", str(c.model), "--learners", str(learners or c.data / "learners" / "learners"),
            "--output", str(out or c.out), *[str(x) for x in extra]]


def bench(c, *extra, out=None):
    return ["bench", "--output-dir", str(out or c.out), "--model", str(c.model), "--no-progress", *extra]


def csv_file(c, text, name="bad.csv"):
    (c.tmp / name).write_text(text)
    return c.tmp / name


def ml_file(c, name, *label_lists):
    """A JSON lines file in c.tmp whose labels are `label_lists` (multi-label data), one row each."""
    return csv_file(c, "".join(json.dumps({"text": f"w{i} v{i}", "label": labels}) + "\n" for i, labels in enumerate(label_lists)), name)


def config(c, name, text):
    """A --config file in c.tmp."""
    (c.tmp / name).write_text(text)
    return c.tmp / name


def copy(c, src, name="copy"):
    return Path(shutil.copytree(src, c.tmp / name))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def learners_copy(c, damage_tensors=None, damage_config=None, damage_dir=None):
    """A copy of the saved learners with its tensors, its config or its files changed."""
    d = copy(c, c.data / "learners" / "learners")
    if damage_dir:
        damage_dir(d)
    if damage_tensors:
        tensors = load_file(str(d / LEARNERS))
        damage_tensors(tensors)
        save_file(tensors, str(d / LEARNERS))
    if damage_config:
        meta = json.loads((d / LEARNERS_CONFIG).read_text())
        damage_config(meta)
        (d / LEARNERS_CONFIG).write_text(json.dumps(meta))
    return d


def model_copy(c, damage, source="learners"):
    d = copy(c, c.data / source / "model")
    damage(d)
    return d


def set_index(tensors, value):
    tensors["learner_indices.0"][0] = value


def write(path, text):
    path.write_text(text)


def broken_link(c):
    (c.tmp / "link").symlink_to(c.tmp / "gone")
    return c.tmp / "link"


def folder(c, name, **entries):
    """c.tmp/name holding files (text) and folders (a path to copy), e.g. folder(c, "d", model=c.model)."""
    d = c.tmp / name
    d.mkdir()
    for entry, content in entries.items():
        if isinstance(content, Path):
            shutil.copytree(content, d / entry.replace("_", "."))
        else:
            (d / entry.replace("_", ".")).write_text(content)
    return d


def saved_splits(c):
    """c.tmp/saved: the train CSV's rows as a DatasetDict (train, validation) written by save_to_disk."""
    import datasets
    data = datasets.Dataset.from_csv(str(c.data / "train.csv"), cache_dir=str(c.tmp / "cache"))
    datasets.DatasetDict(train=data, validation=data).save_to_disk(c.tmp / "saved")
    return c.tmp / "saved"


def unfinished_overwrite(c):
    """A finished run with an --overwrite of it stopped halfway (its checkpoint in .replacement)."""
    d = copy(c, c.data / "learners", "run")
    (d / ".replacement" / "checkpoint").mkdir(parents=True)
    (d / ".replacement" / "checkpoint" / "checkpoint.json").write_text("{}")
    return d


# ---- the table -----------------------------------------------------------------------------------
# (id, build(ctx) -> (argv, output path that must stay untouched), regex the message must match)

CASES = [
    # finetune
    ("ft-max-length-over-model", lambda c: (finetune(c, "--max-length", 100000), c.out), r"longer than this model takes \(64 tokens"),
    ("ft-max-length-zero", lambda c: (finetune(c, "--max-length", 0), c.out), r"--max-length must be positive"),
    ("ft-logging-steps-zero", lambda c: (finetune(c, "--logging-steps", 0), c.out), r"--logging-steps must be positive"),
    ("ft-report-to-unknown", lambda c: (finetune(c, "--report-to", "tensorboard,mlflow"), c.out),
     r"--report-to 'mlflow' is not one of tensorboard, wandb, all, none"),
    ("ft-report-to-none-and-more", lambda c: (finetune(c, "--report-to", "none,tensorboard"), c.out),
     r"'none' and 'all' stand alone; drop the others"),
    ("ft-fp16-on-the-cpu", lambda c: (finetune(c, "--mixed-precision", "fp16"), c.out), r"fp16 needs a GPU.*use bf16"),
    ("ft-compile-with-the-cache", lambda c: (finetune(c, "--compile", "--frozen-prefix-cache-mb", 100), c.out),
     r"--compile and --frozen-prefix-cache-mb do not go together"),
    ("ft-pad-multiple-zero", lambda c: (finetune(c, "--pad-to-multiple-of", 0), c.out),
     r"--pad-to-multiple-of must be a positive"),
    ("ft-pad-multiple-over-model", lambda c: (finetune(c, "--pad-to-multiple-of", 48), c.out),
     r"pads inputs of --max-length 64 to 96 tokens, more than this model takes \(64\)"),
    # finetune --task-type token-classification
    ("ft-ner-unseen-tag", lambda c: (ner(c, dev="Peter\tB-PER\n"), c.out),
     r"tag 'B-PER' of token 'Peter' in the validation sentence at ner-dev.conll line 1 never occurs in the training"),
    ("ft-ner-too-long", lambda c: (ner(c, "x\tO\n" * 70 + "\n" + NER_CONLL), c.out),
     r"training sentence at ner-train.conll line 1 is 72 tokens long .* more than --max-length 64.*split the sentence"),
    ("ft-ner-misaligned", lambda c: (ner(c, '{"tokens": ["a", "b"], "tags": ["O"]}\n', suffix=".jsonl"), c.out),
     r"ner-train.jsonl line 1 has 2 tokens but 1 tags; give every token one tag"),
    ("ft-ner-empty-sentence", lambda c: (ner(c, '{"tokens": [], "tags": []}\n', suffix=".jsonl"), c.out),
     r"ner-train.jsonl line 1 is an empty sentence"),
    ("ft-ner-line-without-tag", lambda c: (ner(c, NER_CONLL + "\nLondon\n"), c.out),
     r"ner-train.conll line 8 has 1 column, a token without a tag"),
    ("ft-ner-fewer-columns", lambda c: (ner(c, NER_CONLL, NER_CONLL, "--tag-column", 3), c.out),
     r"ner-train.conll line 1 has 2 columns, fewer than --tag-column 3 needs"),
    ("ft-ner-not-iob2", lambda c: (ner(c, "Paris\tLOC\nis\tO\n\nBerlin\tB-LOC\n"), c.out),
     r"tag 'LOC' of token 'Paris' .* is not an IOB2 tag .*, but other tags are"),
    ("ft-ner-io-scheme", lambda c: (ner(c, "Paris\tLOC\nis\tO\n", "Paris\tLOC\nis\tO\n"), c.out),
     r"tag 'LOC' of token 'Paris' .* has no B-/I- prefix, beside O tags: .* write them in IOB2"),
    ("ft-ner-class-ids", lambda c: (ner(c, *['{"tokens": ["Paris", "is"], "ner_tags": [5, 0]}\n'] * 2, suffix=".jsonl"), c.out),
     r"the tags are numbers \(0, 5, ...\), a data set's class ids: write the tag names instead"),
    ("ft-ner-empty-tag", lambda c: (ner(c, *['{"tokens": ["Paris", "is"], "tags": ["B-LOC", " "]}\n'] * 2, suffix=".jsonl"), c.out),
     r"token 'is' in the sentence at ner-train.jsonl line 1 has an empty tag"),
    ("ft-ner-csv", lambda c: (ner(c, "text,label\na,b\n", suffix=".csv"), c.out), r"token classification reads CoNLL files"),
    ("ft-ner-test-file-csv", lambda c: (ner(c, NER_CONLL, NER_CONLL, "--test-file", csv_file(c, "text\nhi\n", "test.csv")), c.out),
     r"--test-file test.csv: token classification reads CoNLL files"),
    ("ft-ner-test-file-empty-sentence", lambda c: (ner(c, NER_CONLL, NER_CONLL, "--test-file", csv_file(c, '{"tokens": []}\n', "test.jsonl")), c.out),
     r"test.jsonl line 1 is an empty sentence"),
    ("ft-tag-column-alone", lambda c: (finetune(c, "--tag-column", 2), c.out),
     r"--tag-column is for --task-type token-classification"),
    ("ft-ner-text-columns", lambda c: (ner(c, NER_CONLL, NER_CONLL, "--text-columns", "text"), c.out),
     r"--text-columns is for sentence-level data"),
    ("ft-output-is-file", lambda c: (finetune(c, out=c.tmp / "afile"), c.tmp / "afile"), r"is a file; pass a directory"),
    ("ft-output-under-file", lambda c: (finetune(c, out=c.tmp / "afile" / "run"), c.tmp / "afile"), r"is a file, not a directory"),
    ("ft-push-to-hub-other-method", lambda c: (finetune(c, "--method", "full", "--push-to-hub", "me/run"), c.out),
     r"--push-to-hub shares a learners run's OUT/learners; --method full writes none"),
    ("ft-push-to-hub-not-a-repo-id", lambda c: (finetune(c, "--push-to-hub", "a/b/c"), c.out),
     r"--push-to-hub 'a/b/c' is not a hub repository id"),
    ("ft-hub-token-without-push", lambda c: (finetune(c, "--hub-token", "hf_x"), c.out),
     r"--hub-token and --hub-private go with --push-to-hub REPO"),
    ("ft-model-missing", lambda c: (finetune(c) + ["--model", str(c.tmp / "nope")], c.out), r"no such model directory"),
    ("ft-model-not-a-model-dir", lambda c: (finetune(c) + ["--model", str(c.tmp)], c.out), r"not a model directory \(no config.json\)"),
    ("ft-model-truncated-weights", lambda c: (finetune(c) + ["--model", str(model_copy(c, lambda d: truncate(d / "model.safetensors")))], c.out),
     r"cannot load model .*local directory"),
    ("ft-model-pickle-only", lambda c: (finetune(c) + ["--model", str(model_copy(c, lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin")))], c.out),
     r"no file named model.safetensors"),
    ("ft-label-nan", lambda c: (finetune(c, train=csv_file(c, "text,label\na,x\nb,NaN\nc,y\n")), c.out), r"missing label 'NaN' at bad.csv line 3"),
    ("ft-labels-mixed", lambda c: (finetune(c, train=csv_file(c, "text,label\na,0\nb,1\nc,pos\nd,neg\n")), c.out), r"mix numbers and text"),
    ("ft-text-is-label", lambda c: (finetune(c, "--text-columns", "text,label"), c.out), r"both a text column and the label column"),
    ("ft-lora-target-missing", lambda c: (finetune(c, "--method", "lora", "--lora-target-modules", "qkv"), c.out), r"name no module of this bert model"),
    ("ft-no-validation-file", lambda c: (finetune(c)[:3] + finetune(c)[5:], c.out), r"--train-file needs --validation-file"),
    ("ft-warmup-ratio", lambda c: (finetune(c, "--warmup-ratio", 1), c.out), r"--warmup-ratio must be in \[0, 1\)"),
    ("ft-max-steps-zero", lambda c: (finetune(c, "--max-steps", "0"), c.out), r"--max-steps must be positive"),
    ("ft-dev-label-unknown", lambda c: (finetune(c, dev=csv_file(c, "text,label\na,zzz\n")), c.out), r"never occurs in the training labels"),
    ("ft-unsupported-file", lambda c: (finetune(c, train=csv_file(c, "x", "data.txt")), c.out), r"unsupported file type '.txt'"),
    ("ft-ratio-too-big", lambda c: (finetune(c, "--ratio", 2), c.out), r"ratio must be in \(0, 1\]"),
    ("ft-priming-steps-without-priming", lambda c: (finetune(c, "--priming-steps", 2, "--priming-scope", "ffn"), c.out),
     r"--priming-steps and --priming-scope shape the priming phase, but --selection is 'random'.*add --selection priming"),
    ("ft-reset-with-gradient", lambda c: (finetune(c, "--selection", "gradient", "--reset-after-priming"), c.out),
     r"--reset-after-priming shapes the priming phase, but --selection is 'gradient'"),
    ("ft-auto-layers-at-random", lambda c: (finetune(c, "--learner-layers", "auto"), c.out),
     r"learner layers 'auto' are ranked by the selection signal \(priming, gradient or magnitude\), and selection 'random' has none"),
    ("ft-unknown-method", lambda c: (finetune(c, "--method", "magic"), c.out), r"unknown method 'magic'"),
    ("ft-num-neurons-too-big", lambda c: (finetune(c, "--num-neurons", 1000), c.out), r"k=1000 is larger than the FFN width m=64"),
    ("ft-num-neurons-per-layer-count", lambda c: (finetune(c, "--num-neurons", "4,4,4"), c.out), r"gives 3 counts but 1 of the model.s 2 FFN blocks get learners \(blocks \[1\], layers .skip-1.\)"),
    ("ft-learner-layer-missing", lambda c: (finetune(c, "--learner-layers", 7), c.out), r"learner layers \[7\] do not exist"),
    ("ft-learner-layers-top-too-many", lambda c: (finetune(c, "--learner-layers", "top-9"), c.out), r"use at most top-2"),
    ("ft-learner-layers-garbage", lambda c: (finetune(c, "--learner-layers", "bottom"), c.out), r"learner layers 'bottom' not understood"),
    ("ft-learner-layers-auto-with-list", lambda c: (finetune(c, "--learner-layers", "auto", "--selection", "priming", "--num-neurons", "4,4"), c.out),
     r"must be one count, not a list"),
    ("ft-layer-coverage", lambda c: (finetune(c, "--layer-coverage", 0, "--learner-layers", "auto", "--selection", "priming"), c.out),
     r"layer_coverage must be in \(0, 1\]"),
    ("ft-layer-coverage-without-auto", lambda c: (finetune(c, "--layer-coverage", 0.3, "--learner-layers", "top-1"), c.out),
     r"--layer-coverage sets how many blocks --learner-layers auto picks, but --learner-layers is 'top-1': drop it"),
    ("ft-learners-flag-for-full", lambda c: (finetune(c, "--method", "full", "--ratio", 0.1), c.out),
     r"--ratio \(learners\) is an option of another method, not of --method full: drop it"),
    ("ft-other-methods-flags", lambda c: (finetune(c, "--method", "lora", "--selection", "priming", "--adapter-size", 8), c.out),
     r"--selection \(learners\), --adapter-size \(adapter\) are options of other methods, not of --method lora"),
    ("ft-priming-lr-without-priming", lambda c: (finetune(c, "--priming-learning-rate", "1e-4"), c.out),
     r"--priming-learning-rate shapes the priming phase, but --selection is 'random', which has none.*: add --selection priming"),
    ("ft-warmup-for-full", lambda c: (finetune(c, "--method", "full", "--learner-warmup-steps", 5), c.out),
     r"--learner-warmup-steps \(learners or far\) is an option of another method, not of --method full"),
    ("ft-bad-flag-value", lambda c: (finetune(c, "--batch-size", "abc"), c.out), r"invalid int value: 'abc'"),
    # an --output-dir that holds what no run wrote, or the run's own input (issue 32)
    ("ft-output-holds-a-model", lambda c: (finetune(c, out=folder(c, "d", model=c.model)), c.tmp / "d"),
     r"--output-dir .*d holds model/, which no learners run wrote .*choose a new or empty --output-dir, or pass --overwrite"),
    ("ft-output-not-a-run", lambda c: (finetune(c, out=folder(c, "d", notes_txt="mine")), c.tmp / "d"),
     r"holds notes.txt, which no learners run wrote"),
    ("ft-output-foreign-results", lambda c: (finetune(c, out=folder(c, "d", results_json='{"accuracy": 1}')), c.tmp / "d"),
     r"holds results.json, which no learners run wrote"),
    ("ft-output-holds-its-model", lambda c: (finetune(c, "--overwrite", out=folder(c, "d", model=c.model)) + ["--model", str(c.tmp / "d" / "model")], c.tmp / "d"),
     r"--output-dir .*d holds this command's input --model .*d/model: a command never writes over its input"),
    ("ft-output-holds-its-data", lambda c: (finetune(c, "--overwrite", train=folder(c, "d", train_csv=(c.data / "train.csv").read_text()) / "train.csv", out=c.tmp / "d"), c.tmp / "d"),
     r"holds this command's input --train-file"),
    ("ft-output-unfinished-overwrite", lambda c: (finetune(c, out=unfinished_overwrite(c)), c.tmp / "run"),
     r"holds an unfinished --overwrite run .*\.replacement.*pass --overwrite to continue it, or remove"),
    # multi-label data (multi_label.py): a list label among plain ones, in training or validation
    ("ft-multi-label-mixed", lambda c: (finetune(c, train=csv_file(c, '{"text": "a b", "label": "x"}\n{"text": "c", "label": ["x", "y"]}\n', "m.jsonl")), c.out),
     r"the label at m\.jsonl line 1 is a plain label, 'x', but the one at m\.jsonl line 2 is a JSON list; write every label as a list"),
    ("ft-multi-label-dev-unseen", lambda c: (finetune(c, train=ml_file(c, "t.jsonl", ["x"], ["y"]), dev=ml_file(c, "d.jsonl", ["x", "z"])), c.out),
     r"validation label 'z' at d\.jsonl line 1 never occurs in the training labels \(x, y\)"),
    ("ft-multi-label-delimiter-and-lists", lambda c: (finetune(c, "--label-delimiter", "|", train=ml_file(c, "t.jsonl", ["x"], ["y"]), dev=ml_file(c, "d.jsonl", ["x"])), c.out),
     r"--label-delimiter '\|' splits text cells, but the labels in t\.jsonl are JSON lists already .*drop --label-delimiter"),
    ("ft-multi-label-delimiter-and-task-type", lambda c: (finetune(c, "--label-delimiter", "|", "--task-type", "classification"), c.out),
     r"--label-delimiter splits each label cell .* but --task-type is classification; drop one of them"),
    ("ft-multi-label-lists-and-task-type", lambda c: (finetune(c, "--task-type", "regression", train=ml_file(c, "t.jsonl", ["x"], ["y"]), dev=ml_file(c, "d.jsonl", ["x"])), c.out),
     r"the label at t\.jsonl line 1 is a JSON list \(multi-label data\), but --task-type is regression.*pass --task-type multi-label"),
    ("ft-multi-label-not-strings", lambda c: (finetune(c, train=ml_file(c, "t.jsonl", ["x"], [1, 2]), dev=ml_file(c, "d.jsonl", ["x"])), c.out),
     r"the label list at t\.jsonl line 2 holds 1, not a string; write each label as a non-empty string"),
    ("ft-multi-label-null", lambda c: (finetune(c, train=ml_file(c, "t.jsonl", ["x"], None, ["y"]), dev=ml_file(c, "d.jsonl", ["x"])), c.out),
     r"missing label at t\.jsonl line 2 \(column 'label'\); write \[\] for an example with no labels"),
    ("ft-multi-label-one-label", lambda c: (finetune(c, train=ml_file(c, "t.jsonl", ["x"], []), dev=ml_file(c, "d.jsonl", ["x"])), c.out),
     r"hold only the label 'x'; multi-label classification needs two or more labels"),
    ("ft-threshold-zero", lambda c: (finetune(c, "--threshold", 0, train=ml_file(c, "t.jsonl", ["x"], ["y"]), dev=ml_file(c, "d.jsonl", ["x"])), c.out),
     r"--threshold 0.0 is not a probability strictly between 0 and 1"),
    ("ft-threshold-one", lambda c: (finetune(c, "--threshold", 1), c.out), r"--threshold 1.0 is not a probability strictly between 0 and 1"),
    ("ft-threshold-single-label", lambda c: (finetune(c, "--threshold", 0.3), c.out),
     r"--threshold applies to multi-label classification, and task custom is not multi-label; drop --threshold"),
    ("ft-label-delimiter-glue", lambda c: (without_files(finetune(c, "--label-delimiter", "|")) + ["--task", "cola", "--data-dir", str(GLUE_DIR)], c.out),
     r"--label-delimiter splits the label cells of your own data"),
    ("ft-text-object-jsonl", lambda c: (finetune(c, train=csv_file(c, '{"text": {"title": "a"}, "label": "x"}\n{"text": "c", "label": "y"}\n', "o.jsonl")), c.out),
     r"text column 'text' at o\.jsonl line 1 is a JSON object, not a string"),
    ("ft-ffn-modules-one-name", lambda c: (finetune(c, "--ffn-modules", "intermediate.dense"), c.out),
     r"ffn_modules names the FFN's two linears .*got 'intermediate.dense'"),
    ("ft-ffn-modules-no-such-layer-norm", lambda c: (finetune(c, "--ffn-modules", "intermediate.dense,output.dense,output.Nope"), c.out),
     r"bert\.encoder\.layer\.0\.output\.Nope does not exist: name the block's output LayerNorm"),
    # data in every form (issue 31): headers, headerless files, other formats, datasets folders and names
    ("ft-task-beside-train-file", lambda c: (finetune(c, "--task", "cola"), c.out),
     r"--task cola names a GLUE task, and --train-file gives other data to train on; pass one of them"),
    ("ft-duplicate-column", lambda c: (finetune(c, train=csv_file(c, "text,label,text\na,x,b\nc,y,d\n")), c.out),
     r"bad\.csv's header names the column 'text' twice \(columns 1 and 3\); rename one of them"),
    ("ft-headerless-without-no-header", lambda c: (finetune(c, train=csv_file(c, "1\ta fine and moving film\n0\tbad\n", "s.tsv")), c.out),
     r"no text column in s\.tsv .*first row looks like data.*pass --columns label,text"),
    ("ft-no-header-without-columns", lambda c: (finetune(c, "--no-header"), c.out), r"--no-header needs --columns"),
    ("ft-columns-on-a-file-with-header", lambda c: (finetune(c, "--columns", "label,text"), c.out),
     r"train\.csv line 1 is a header row \(text,label\), but --columns says the file has none; drop --columns"),
    ("ft-columns-count", lambda c: (finetune(c, "--no-header", "--columns", "label,text", train=csv_file(c, "a,b,c\n")), c.out),
     r"bad\.csv line 1 has 3 fields but --columns names 2 \(label,text\)"),
    ("ft-no-header-with-jsonl", lambda c: (finetune(c, "--no-header", "--columns", "text,label", train=csv_file(c, '{"text": "a", "label": "x"}\n', "t.jsonl")), c.out),
     r"--columns \(and --no-header\) are for CSV and TSV files without a header row; --train-file t\.jsonl names its columns"),
    ("ft-parquet-damaged", lambda c: (finetune(c, train=csv_file(c, "not parquet", "t.parquet")), c.out), r"t\.parquet cannot be read as Parquet"),
    ("ft-folder-not-a-dataset", lambda c: (finetune(c, train=folder(c, "d", notes_txt="x")), c.out),
     r"--train-file .*d is a folder, but not one written by datasets' save_to_disk"),
    ("ft-dataset-split-missing", lambda c: (without_files(finetune(c, "--train-split", "nope", "--train-file", saved_splits(c))), c.out),
     r"saved has no split 'nope' \(its splits: train, validation\); pass --train-split with one of them"),
    ("ft-split-of-a-file", lambda c: (finetune(c, "--validation-split", "dev"), c.out),
     r"--train-split and --validation-split pick the splits of a --dataset or of a folder written by save_to_disk"),
    ("ft-dataset-missing-path", lambda c: (without_files(finetune(c, "--dataset", c.tmp / "nope")), c.out),
     r"--dataset .*nope does not exist; check the path"),
    ("ft-dataset-and-train-file", lambda c: (finetune(c, "--dataset", str(c.tmp)), c.out),
     r"--dataset gives the train and validation data; drop --train-file"),
    ("ft-dataset-config-alone", lambda c: (finetune(c, "--dataset-config", "sst2"), c.out), r"--dataset-config names a configuration of a --dataset"),
    ("ft-test-file-missing", lambda c: (finetune(c, "--test-file", c.tmp / "none.csv"), c.out), r"--test-file .*none\.csv does not exist"),
    ("ft-test-file-lacks-text", lambda c: (finetune(c, "--test-file", csv_file(c, "words\nhi\n", "test.csv")), c.out),
     r"--test-file test\.csv lacks the text column\(s\) text; columns found: words"),
    ("ft-long-field-is-fine-but-label-missing", lambda c: (finetune(c, train=csv_file(c, 'text,label\n"' + "w " * 70_000 + '",x\nb,\n')), c.out),
     r"empty label at bad\.csv line 3"),
    # predict
    ("pr-input-columns-count", lambda c: (predict(c, None, "--no-header", "--columns", "text", input=csv_file(c, "a,b\n")), c.out.with_suffix(".csv")),
     r"bad\.csv line 1 has 2 fields but --columns names 1 \(text\)"),
    ("pr-input-headerless", lambda c: (predict(c, None, input=csv_file(c, "1\ta fine and moving film\n0\tbad\n", "s.tsv")), c.out.with_suffix(".csv")),
     r"--input s\.tsv lacks the model's text column\(s\) text; columns found: 1, a fine and moving film\. s\.tsv's first row "
     r"looks like data, not column names: if the file has no header row, pass --columns label,text"),
    ("pr-split-of-a-file", lambda c: (predict(c, None, "--split", "test"), c.out.with_suffix(".csv")),
     r"--split picks a split of an --input folder written by save_to_disk; drop it for a file"),
    ("pr-input-split-missing", lambda c: (predict(c, None, input=saved_splits(c)), c.out.with_suffix(".csv")),
     r"saved has no test split \(its splits: train, validation; looked for test\); pass --split"),
    ("pr-threshold-single-label", lambda c: (predict(c, None, "--threshold", 0.4), c.out.with_suffix(".csv")),
     r"--threshold applies to multi-label classification, and this model is not multi-label; drop --threshold"),
    ("pr-threshold-out-of-range", lambda c: (predict(c, None, "--threshold", 1.5), c.out.with_suffix(".csv")),
     r"--threshold 1.5 is not a probability strictly between 0 and 1"),
    ("pr-text-list-jsonl", lambda c: (predict(c, None, input=csv_file(c, '{"text": ["a", "b"]}\n', "p.jsonl")), c.out.with_suffix(".csv")),
     r"text column 'text' at p\.jsonl line 1 is a JSON list"),
    ("pr-model-missing", lambda c: (predict(c, c.tmp / "nope"), c.out.with_suffix(".csv")), r"not a model directory"),
    ("pr-output-is-dir", lambda c: (predict(c, out=c.tmp), c.tmp), r"is a directory; pass a file path"),
    ("pr-output-exists", lambda c: (predict(c, out=c.tmp / "afile.csv"), write(c.tmp / "afile.csv", "keep\n") or c.tmp / "afile.csv"),
     r"--output .*afile.csv exists; choose another file, or pass --overwrite to replace it"),
    ("pr-learners-output-exists", lambda c: (predict_learners(c, out=c.tmp / "afile.csv"), write(c.tmp / "afile.csv", "keep\n") or c.tmp / "afile.csv"),
     r"--output .*afile.csv exists"),
    ("pr-output-is-input", lambda c: (predict(c, None, "--overwrite", input=csv_file(c, "text\nhi\n", "in.csv"), out=c.tmp / "in.csv"), c.tmp / "in.csv"),
     r"--output .*in.csv is this command's input --input"),
    ("pr-output-suffix", lambda c: (predict(c, out=c.tmp / "p.xlsx"), c.tmp / "p.xlsx"), r"unsupported file type; use .csv"),
    ("pr-output-under-file", lambda c: (predict(c, out=c.tmp / "afile" / "p.csv"), c.tmp / "afile"), r"is a file, not a directory"),
    ("pr-max-length", lambda c: (predict(c, None, "--max-length", 100000), c.out.with_suffix(".csv")), r"longer than this model takes \(64"),
    ("pr-input-missing", lambda c: (predict(c, input=c.tmp / "none.csv"), c.out.with_suffix(".csv")), r"--input .*does not exist"),
    ("pr-input-lacks-column", lambda c: (predict(c, input=csv_file(c, "words\nhi\n")), c.out.with_suffix(".csv")), r"lacks the model's text column"),
    ("pr-task-file-broken", lambda c: (predict(c, model_copy(c, lambda d: write(d / "learners_task.json", "{oops"))), c.out.with_suffix(".csv")),
     r"task file .* cannot be read"),
    ("pr-weights-truncated", lambda c: (predict(c, model_copy(c, lambda d: truncate(d / "model.safetensors"))), c.out.with_suffix(".csv")),
     r"cannot load the model in"),
    ("pr-config-broken", lambda c: (predict(c, model_copy(c, lambda d: write(d / "config.json", "{oops"))), c.out.with_suffix(".csv")),
     r"cannot load the model in"),
    ("pr-tokenizer-broken", lambda c: (predict(c, model_copy(c, lambda d: write(d / "tokenizer.json", "{oops"))), c.out.with_suffix(".csv")),
     r"cannot load the tokenizer in"),
    ("pr-adapter-config-broken", lambda c: (predict(c, model_copy(c, lambda d: write(d / "adapters_config.json", "[1"), "adapter")), c.out.with_suffix(".csv")),
     r"adapter config .* cannot be read"),
    ("pr-adapter-weights-truncated", lambda c: (predict(c, model_copy(c, lambda d: truncate(d / "adapters.safetensors"), "adapter")), c.out.with_suffix(".csv")),
     r"adapter weights .* not a readable safetensors file"),
    ("pr-learners-syntax", lambda c: (predict_learners(c, "abc"), c.out.with_suffix(".csv")), r"--learners 'abc' is not a directory: pass a learners run's OUT"),
    ("pr-learners-syntax-pairs", lambda c: (predict_learners(c, f"abc,b={c.data / 'learners'}"), c.out.with_suffix(".csv")), r"--learners takes NAME=DIR pairs"),
    ("pr-learners-bad-name", lambda c: (predict_learners(c, f"a b={c.data / 'learners'}"), c.out.with_suffix(".csv")),
     r"--learners takes NAME=DIR pairs"),
    ("pr-learners-twice", lambda c: (predict_learners(c, f"a={c.data / 'learners'},a={c.data / 'learners'}"), c.out.with_suffix(".csv")),
     r"names 'a' twice"),
    ("pr-learners-missing", lambda c: (predict_learners(c, f"abc={c.tmp / 'nope'}"), c.out.with_suffix(".csv")),
     r"--learners abc=.*nope does not exist"),
    ("pr-learners-not-learners", lambda c: (predict_learners(c, f"abc={c.tmp}"), c.out.with_suffix(".csv")),
     r"--learners abc=.*holds no saved learners"),
    ("pr-learners-other-method", lambda c: (predict_learners(c, str(c.data / "adapter")), c.out.with_suffix(".csv")),
     r"is the output of a `learners finetune --method adapter` run.*learners predict --model .*adapter.model"),
    ("pr-learners-other-base", lambda c: (predict_learners(c, base=other_base(c)), c.out.with_suffix(".csv")),
     r"--learners abc=.*trained on another base model"),
    ("pr-learners-with-model", lambda c: (predict(c) + ["--learners", f"abc={c.data / 'learners'}"], c.out.with_suffix(".csv")),
     r"not allowed with argument"),
    ("pr-device-not-a-device", lambda c: (predict(c, None, "--device", "gpu0"), c.out.with_suffix(".csv")),
     r"--device gpu0: not a device; pass cpu, cuda or cuda:N"),
    ("pr-device-no-such-gpu", lambda c: (predict(c, None, "--device", "cuda:99"), c.out.with_suffix(".csv")),
     r"--device cuda:99: no such GPU here \(\d+ found\)"),
    ("pr-base-without-learners", lambda c: (predict(c) + ["--base", str(c.model)], c.out.with_suffix(".csv")),
     r"--base goes with --learners"),
    # merge
    ("mg-weights-truncated", lambda c: (merge(c, learners_copy(c, damage_dir=lambda d: truncate(d / LEARNERS))), c.out),
     r"learner weights .* not a readable safetensors file"),
    ("mg-config-broken-json", lambda c: (merge(c, learners_copy(c, damage_dir=lambda d: write(d / LEARNERS_CONFIG, "{oops"))), c.out),
     r"learner config .* cannot be read"),
    ("mg-config-array", lambda c: (merge(c, learners_copy(c, damage_dir=lambda d: write(d / LEARNERS_CONFIG, "[]"))), c.out),
     r"holds no JSON object"),
    ("mg-config-unknown-key", lambda c: (merge(c, learners_copy(c, damage_config=lambda m: m["learner_config"].update(bogus=1))), c.out),
     r"not a valid learner config .*bogus"),
    ("mg-config-bad-value", lambda c: (merge(c, learners_copy(c, damage_config=lambda m: m["learner_config"].update(ratio=7))), c.out),
     r"learner ratio must be in \(0, 1\]"),
    ("mg-config-no-learner-config", lambda c: (merge(c, learners_copy(c, damage_config=lambda m: m.pop("learner_config"))), c.out),
     r"has no learner_config object"),
    ("mg-config-bad-labels", lambda c: (merge(c, learners_copy(c, damage_config=lambda m: m.update(id2label={"7": "x"}))), c.out),
     r"malformed labels"),
    ("mg-index-out-of-range", lambda c: (merge(c, learners_copy(c, lambda t: set_index(t, 10**6))), c.out), r"indices .* do not fit this model.*must lie in"),
    ("mg-index-negative", lambda c: (merge(c, learners_copy(c, lambda t: set_index(t, -1))), c.out), r"must lie in"),
    ("mg-index-duplicate", lambda c: (merge(c, learners_copy(c, lambda t: set_index(t, int(t["learner_indices.0"][1])))), c.out), r"must be distinct"),
    ("mg-index-float", lambda c: (merge(c, learners_copy(c, lambda t: t.update({"learner_indices.0": t["learner_indices.0"].float()}))), c.out),
     r"not integers"),
    ("mg-index-missing", lambda c: (merge(c, learners_copy(c, lambda t: t.pop("learner_indices.0"))), c.out), r"lacks learner indices"),
    ("mg-weights-nan", lambda c: (merge(c, learners_copy(c, lambda t: t[next(k for k in t if "learner_weight" in k)].fill_(float("nan")))), c.out),
     r"NaN or infinite values .*cannot be merged"),
    ("mg-task-file-broken", lambda c: (merge(c, learners_copy(c, damage_dir=lambda d: write(d / "learners_task.json", "{oops"))), c.out),
     r"task file .* cannot be read"),
    ("mg-output-is-file", lambda c: (merge(c, out=c.tmp / "afile"), c.tmp / "afile"), r"is a file; pass a directory"),
    ("mg-output-holds-a-model", lambda c: (merge(c, out=copy(c, c.data / "learners" / "model", "kept-model")), c.tmp / "kept-model"),
     r"--output .*kept-model is not empty \(config.json, .*model.safetensors.*\); choose a new directory, or pass --overwrite"),
    ("mg-output-broken-link", lambda c: (merge(c, out=broken_link(c)), c.tmp / "link"), r"is a broken symbolic link"),
    ("mg-output-is-learners-run", lambda c: (merge(c, copy(c, c.data / "learners", "run"), "--overwrite", out=c.tmp / "run"), c.tmp / "run"),
     r"--output .*run is this command's input --learners"),
    ("mg-output-is-its-learners", lambda c: (merge(c, copy(c, c.data / "learners", "run"), "--overwrite", out=c.tmp / "run" / "learners"), c.tmp / "run"),
     r"--output .*learners is this command's input --learners"),
    ("mg-output-is-base", lambda c: (merge(c, None, "--overwrite", out=copy(c, c.model, "base")) + ["--base", str(c.tmp / "base")], c.tmp / "base"),
     r"--output .*base is this command's input --base"),
    ("mg-learners-missing", lambda c: (merge(c, c.tmp / "nope"), c.out), r"does not exist"),
    ("mg-learners-empty-dir", lambda c: (merge(c, c.tmp), c.out), r"holds no saved learners"),
    ("mg-learners-other-method", lambda c: (merge(c, c.data / "adapter"), c.out),
     r"is the output of a `learners finetune --method adapter` run, which saves a whole model"),
    ("mg-base-missing", lambda c: (merge(c) + ["--base", str(c.tmp / "nope")], c.out), r"--base .*no such model directory"),
    # bench
    ("pr-ner-csv-output", lambda c: (predict(c, c.data / "ner", input=c.data / "ner.conll"), c.out.with_suffix(".csv")),
     r"a token classification model writes a tag per word, as CoNLL \(.conll\) or JSON lines"),
    ("pr-ner-csv-input", lambda c: (predict(c, c.data / "ner", out=c.out.with_suffix(".conll")), c.out.with_suffix(".conll")),
     r"--input dev.csv: token classification reads CoNLL files"),
    ("pr-conll-from-sentence-model", lambda c: (predict(c, out=c.out.with_suffix(".conll")), c.out.with_suffix(".conll")),
     r"CoNLL output is for token classification models"),
    ("pr-bio-from-sentence-sets", lambda c: (predict_learners(c, out=c.out.with_suffix(".bio")), c.out.with_suffix(".bio")),
     r"--output .*\.bio: CoNLL output is for token classification models"),
    ("pr-learners-ner-and-sentence", lambda c: (predict_learners(c, f"ner={c.data / 'ner'},abc={c.data / 'learners'}"), c.out.with_suffix(".csv")),
     r"--learners mixes token classification runs \(ner\) with sentence-level ones \(abc\); .* in its own call"),
    ("pr-learners-ner-csv-output", lambda c: (predict_learners(c, f"ner={c.data / 'ner'}"), c.out.with_suffix(".csv")),
     r"a token classification model writes a tag per word, as CoNLL \(.conll\) or JSON lines"),
    ("pr-ner-threshold", lambda c: (predict(c, c.data / "ner", "--threshold", "0.3", input=c.data / "ner.conll",
                                            out=c.out.with_suffix(".conll")), c.out.with_suffix(".conll")),
     r"--threshold applies to multi-label classification, and a token classification model is not multi-label"),
    ("bn-train-file-and-tasks", lambda c: (bench(c, "--tasks", "cola", "--train-file", str(c.data / "train.csv")), c.out),
     r"--tasks names GLUE tasks and --train-file your own data; pass one of them"),
    ("bn-task-type-alone", lambda c: (bench(c, "--tasks", "cola", "--task-type", "token-classification"), c.out),
     r"--task-type goes with --train-file"),
    ("bn-data-flags-alone", lambda c: (bench(c, "--tasks", "cola", "--label-delimiter", "|", "--threshold", "0.3"), c.out),
     r"--label-delimiter, --threshold go with --train-file \(or --dataset\)"),
    ("bn-seeds", lambda c: (bench(c, "--tasks", "cola", "--seeds", "a,b"), c.out), r"--seeds takes comma-separated integers"),
    ("bn-method", lambda c: (bench(c, "--tasks", "cola", "--methods", "magic"), c.out), r"unknown method\(s\) magic"),
    ("bn-task", lambda c: (bench(c, "--tasks", "colaa"), c.out), r"unknown GLUE task 'colaa'"),
    ("bn-output-is-file", lambda c: (bench(c, "--tasks", "cola", out=c.tmp / "afile"), c.tmp / "afile"), r"is a file; pass a directory"),
    ("bn-target", lambda c: (bench(c, "--tasks", "cola", "--target", "abc"), c.out), r"--target takes a number"),
    # steering: early stopping, gradient accumulation, the evaluation's size, the config file
    ("ft-early-stopping-patience-zero", lambda c: (finetune(c, "--early-stopping-patience", 0), c.out),
     r"--early-stopping-patience must be positive, got 0"),
    ("ft-early-stopping-patience-negative", lambda c: (finetune(c, "--early-stopping-patience", -2), c.out),
     r"--early-stopping-patience must be positive, got -2"),
    ("ft-early-stopping-threshold-negative", lambda c: (finetune(c, "--early-stopping-patience", 2, "--early-stopping-threshold", -0.1), c.out),
     r"--early-stopping-threshold must be 0 or more, got -0.1"),
    ("ft-early-stopping-threshold-alone", lambda c: (finetune(c, "--early-stopping-threshold", 0.01), c.out),
     r"--early-stopping-threshold goes with --early-stopping-patience N"),
    ("ft-gradient-accumulation-zero", lambda c: (finetune(c, "--gradient-accumulation-steps", 0), c.out),
     r"--gradient-accumulation-steps must be positive, got 0"),
    ("ft-eval-batch-size-zero", lambda c: (finetune(c, "--eval-batch-size", 0), c.out), r"--eval-batch-size must be positive, got 0"),
    ("ft-max-eval-samples-zero", lambda c: (finetune(c, "--max-eval-samples", 0), c.out), r"--max-eval-samples must be positive, got 0"),
    ("ft-config-unknown-key", lambda c: (finetune(c, "--config", config(c, "run.json", '{"lerning_rate": 1e-4}')), c.out),
     r"--config .*run.json: unknown key 'lerning_rate' \(did you mean --learning-rate\?\)"),
    ("ft-config-missing", lambda c: (finetune(c, "--config", c.tmp / "nope.yaml"), c.out), r"--config .*nope.yaml: no such file"),
    ("ft-config-bad-json", lambda c: (finetune(c, "--config", config(c, "run.json", '{"learning_rate": 1e-4,}')), c.out),
     r"--config .*run.json: not valid JSON \(.*line 1 column 24"),
    ("ft-config-bad-yaml", lambda c: (finetune(c, "--config", config(c, "run.yaml", "learning_rate: [1\nseed: 2\n")), c.out),
     r"--config .*run.yaml: not valid YAML at line \d+, column \d+"),
    ("ft-config-not-a-mapping", lambda c: (finetune(c, "--config", config(c, "run.yml", "- learning_rate\n")), c.out),
     r"--config .*run.yml: must hold keys and values \(learning_rate: 3e-4\), not a list"),
    ("ft-config-other-format", lambda c: (finetune(c, "--config", config(c, "run.toml", "seed = 1\n")), c.out),
     r"--config .*run.toml: a config file is .json, .yaml or .yml"),
    ("ft-config-switch-not-bool", lambda c: (finetune(c, "--config", config(c, "run.json", '{"compile": "yes"}')), c.out),
     r"key 'compile' is a switch: give true or false, not 'yes'"),
    ("ft-config-bad-value", lambda c: (finetune(c, "--config", config(c, "run.json", '{"learning_rate": "fast"}')), c.out),
     r"argument --learning-rate: invalid float value: 'fast'"),
    ("bn-config-unknown-key", lambda c: (bench(c, "--tasks", "cola", "--config", str(config(c, "b.yaml", "per_device_batch_size: 8\n"))), c.out),
     r"unknown key 'per_device_batch_size' \(did you mean"),
    ("bn-early-stopping-patience-zero", lambda c: (bench(c, "--tasks", "cola", "--methods", "learners", "--early_stopping_patience", "0"), c.out),
     r"--early-stopping-patience must be positive, got 0"),
    ("bn-priming-lr-without-priming", lambda c: (bench(c, "--tasks", "cola", "--methods", "full,learners", "--priming-learning-rate", "1e-4"), c.out),
     r"--priming-learning-rate shapes the priming phase, but --selection is 'random', which has none.*: add --selection priming"),
    ("bn-learner-options-bad", lambda c: (bench(c, "--tasks", "cola", "--methods", "full,learners", "--ratio", "7"), c.out),
     r"learner ratio must be in \(0, 1\]"),
    ("bn-report-only-empty", lambda c: (bench(c, "--report-only"), c.out), r"no finished runs"),
    # a training option every run would refuse stops the bench before the first run, not once per run
    ("bn-max-steps-zero", lambda c: (bench(c, "--tasks", "cola,rte", "--methods", "full,learners", "--max-steps", "0"), c.out),
     r"--max-steps must be positive, got 0"),
    ("bn-warmup-ratio", lambda c: (bench(c, "--tasks", "cola", "--warmup-ratio", "1.5"), c.out), r"--warmup-ratio must be in \[0, 1\)"),
    ("bn-output-not-a-bench", lambda c: (bench(c, "--tasks", "cola", "--methods", "full", "--seeds", "0", "--data-dir", str(c.tmp),
                                               out=folder(c, "d", notes_txt="mine")), c.tmp / "d"),
     r"--output-dir .*d holds notes.txt, which learners bench did not write; choose a new or empty --output-dir"),
    ("bn-output-holds-its-model", lambda c: (bench(c, "--tasks", "cola", "--seeds", "0", "--data-dir", str(c.tmp), out=folder(c, "d", m=c.model))
                                             + ["--model", str(c.tmp / "d" / "m")], c.tmp / "d"),
     r"holds this command's input --model"),
]


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    return code, capsys.readouterr().err


def snapshot(path):
    """A file's bytes, or every name and file's bytes under a folder."""
    if path is None or not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("build,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(build, message, ctx, capsys):
    argv, out = build(ctx)
    before = snapshot(out)
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.endswith("\n"), err
    assert re.search(message, err), err
    assert snapshot(out) == before  # nothing created, nothing overwritten


def test_enough_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)
    commands = {c[0][:2] for c in CASES}
    assert commands == {"ft", "pr", "mg", "bn"}


# ---- the library's public functions: a wrong argument is an error naming it ---------------------------------

def wrapped():
    return get_learner_model(tiny_model("bert"), LearnerConfig(ratio=0.5, selection="random"))


RANDOM = LearnerConfig(ratio=0.5, selection="random")
LIBRARY_CASES = [
    ("config-ratio-text", lambda: LearnerConfig(ratio="abc"), r"LearnerConfig: ratio must be a number in \(0, 1\], got 'abc' \(str\)"),
    ("config-ratio-bool", lambda: LearnerConfig(ratio=True), r"ratio must be a number"),
    ("config-num-neurons-bool", lambda: LearnerConfig(num_neurons=True), r"num_neurons must be positive integers"),
    ("config-priming-steps-float", lambda: LearnerConfig(ratio=0.5, priming_steps=2.5), r"priming_steps must be an integer"),
    ("config-layers-number", lambda: LearnerConfig(ratio=0.5, layers=3), r"layers must be 'all', 'auto', 'top-N'"),
    ("config-ffn-modules-number", lambda: LearnerConfig(ratio=0.5, ffn_modules=3), r"ffn_modules must be two or three module names"),
    ("config-dropout-text", lambda: LearnerConfig(ratio=0.5, frozen_dropout="no"), r"frozen_dropout must be True or False"),
    ("config-seed-text", lambda: LearnerConfig(ratio=0.5, seed="1"), r"seed must be an integer"),
    ("config-from-pretrained-none", lambda: LearnerConfig.from_pretrained(None), r"from_pretrained: directory must be a path"),
    ("push-to-hub-repo-none", lambda: wrapped().push_to_hub(None), r"push_to_hub: repo_id must be a hub repository id"),
    ("get-model-none", lambda: get_learner_model(None, RANDOM), r"get_learner_model: model must be a transformers model"),
    ("get-config-dict", lambda: get_learner_model(tiny_model("bert"), {"ratio": 0.5}), r"config must be a LearnerConfig"),
    ("get-indices-text", lambda: get_learner_model(tiny_model("bert"), RANDOM, indices="0,1"), r"indices must be a list of integer tensors"),
    ("model-none", lambda: LearnerModel(None, RANDOM, []), r"LearnerModel: model must be a transformers model"),
    ("from-pretrained-none", lambda: LearnerModel.from_pretrained(tiny_model("bert"), None), r"from_pretrained: directory must be a path"),
    ("save-pretrained-none", lambda: wrapped().save_pretrained(None), r"save_pretrained: save_directory must be a path"),
    ("load-learners-none", lambda: wrapped().load_learners(None, "other"), r"load_learners: directory must be a path"),
    ("prefix-cache-mb-text", lambda: wrapped().enable_frozen_prefix_cache("big"), r"max_mb must be a number of MB"),
    ("primer-model-text", lambda: Primer("bert", LearnerConfig(ratio=0.5)), r"Primer: model must be a transformers model"),
    ("primer-config-none", lambda: Primer(tiny_model("bert"), None), r"Primer: config must be a LearnerConfig"),
    ("prime-with-trainer-none", lambda: prime_with_trainer(None, LearnerConfig(ratio=0.5)), r"trainer must be a transformers Trainer"),
]


@pytest.mark.parametrize("call,message", [c[1:] for c in LIBRARY_CASES], ids=[c[0] for c in LIBRARY_CASES])
def test_a_library_function_names_its_wrong_argument(call, message):
    """A wrong type or value is a UsageError naming the function and the argument, not a Python error from inside."""
    with pytest.raises(UsageError, match=message):
        call()
