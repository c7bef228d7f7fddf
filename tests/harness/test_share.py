"""Sharing results (issue 31, items 4 and 5): the model card, push_to_hub (the hub mocked: nothing leaves this
machine), what a LearnerModel forwards to its base, Trainer checkpoints that from_pretrained loads, and
`predict --scores`."""

import csv
import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file

from conftest import tiny_batch, tiny_model, write_three_class_csvs
from learners import LearnerConfig, LearnerModel, get_learner_model
from learners.errors import UsageError
from learners.harness.cli import main

CONFIG = LearnerConfig.primed(ratio=0.25, selection="random", seed=1)
LEARNER_FILES = {"learners_model.safetensors", "learners_config.json", "README.md"}


class FakeHub:
    """Stands in for HfApi.create_repo / upload_folder: records each call and the files the folder held."""

    def __init__(self, monkeypatch, fail: Exception | None = None):
        self.repos, self.uploads, self.fail = [], [], fail
        monkeypatch.setattr(HfApi, "create_repo", lambda api, *args, **kwargs: self.create_repo(api, *args, **kwargs))
        monkeypatch.setattr(HfApi, "upload_folder", lambda api, **kwargs: self.upload_folder(api, **kwargs))

    def create_repo(self, api, repo_id, **kwargs):
        if self.fail is not None:
            raise self.fail
        self.repos.append((repo_id, kwargs.get("private"), api.token))

    def upload_folder(self, api, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        self.uploads.append({"repo_id": repo_id, "files": {p.name: p.read_bytes() for p in folder.iterdir()}})
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


def logits(model, seed=3):
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in tiny_batch(seed=seed).items() if k != "labels"}).logits


def trained_learners():
    model = get_learner_model(tiny_model("bert"), CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)
    return model


# ---- the model card -----------------------------------------------------------------------------------------------

def test_save_pretrained_writes_a_model_card_with_the_base_task_labels_metrics_and_config(tmp_path):
    model = trained_learners()
    model.base_model.config.id2label = {0: "unacceptable", 1: "acceptable"}
    model.save_pretrained(tmp_path, task="cola", metrics={"matthews_correlation": 0.2871},
                          base_model="sentence-transformers/all-MiniLM-L6-v2")
    card = (tmp_path / "README.md").read_text()
    header = card.split("---\n")[1]
    assert "library_name: learners\n" in header and "base_model: sentence-transformers/all-MiniLM-L6-v2\n" in header
    assert "tags:\n- learners\n- text-classification\n- cola\n" in header
    assert "| 1 | acceptable |" in card and "| matthews_correlation | 0.2871 |" in card
    assert json.dumps(CONFIG.to_dict(), indent=2) in card
    assert "LearnerModel.from_pretrained(base, " in card and "merge_and_unload()" in card
    assert {p.name for p in tmp_path.iterdir()} == LEARNER_FILES


def test_save_pretrained_keeps_a_readme_of_the_users_own_and_refreshes_its_own_card(tmp_path):
    """A folder's README.md that is not a learners card is the user's: never written over (a warning says so); a
    learners card is brought up to date."""
    model = trained_learners()
    (tmp_path / "README.md").write_text("# My project\n\nNotes I keep beside my models.\n")
    with pytest.warns(UserWarning, match="not a learners model card; it is kept"):
        model.save_pretrained(tmp_path, task="cola")
    assert (tmp_path / "README.md").read_text() == "# My project\n\nNotes I keep beside my models.\n"
    assert (tmp_path / "learners_config.json").is_file()
    (tmp_path / "README.md").unlink()
    model.save_pretrained(tmp_path, task="cola")
    model.save_pretrained(tmp_path, task="sst2", metrics={"accuracy": 0.9})
    card = (tmp_path / "README.md").read_text()
    assert "- sst2\n" in card and "| accuracy | 0.9000 |" in card and "- cola\n" not in card


# ---- push_to_hub: the learners and the card, never the base weights ----------------------------------------------

def test_push_to_hub_uploads_only_the_learners_their_config_and_the_card(monkeypatch, tmp_path):
    hub = FakeHub(monkeypatch)
    model = trained_learners()
    url = model.push_to_hub("someone/cola-learners", token="hf_x", private=True, task="cola")
    assert url == "https://huggingface.co/someone/cola-learners/commit/abc"
    assert hub.repos == [("someone/cola-learners", True, "hf_x")]
    [upload] = hub.uploads
    assert set(upload["files"]) == LEARNER_FILES  # no model.safetensors, no config.json of the base
    tensors = load_file(str(model.save_pretrained(tmp_path) / "learners_model.safetensors"))
    assert len(upload["files"]["learners_model.safetensors"]) < 0.25 * sum(
        p.numel() * 4 for p in model.base_model.parameters())
    assert set(tensors) == {k for k in model.state_dict() if k != "learners_config"}
    assert 'LearnerModel.from_pretrained(base, "someone/cola-learners")' in upload["files"]["README.md"].decode()


def test_from_pretrained_takes_a_hub_repository_id_and_downloads_only_the_learners(monkeypatch, tmp_path):
    import huggingface_hub

    model = trained_learners()
    folder = model.save_pretrained(tmp_path / "downloaded")
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, allow_patterns: calls.append((repo_id, allow_patterns)) or str(folder))
    restored = LearnerModel.from_pretrained(tiny_model("bert"), "someone/cola-learners")
    assert calls == [("someone/cola-learners", ["learners_model.safetensors", "learners_config.json", "README.md"])]
    assert torch.equal(logits(restored), logits(model))

    def offline(repo_id, allow_patterns):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UsageError, match=r"someone/other is no folder here, and fetching it as a hub repository failed "
                                         r"\(ConnectionError: \[Errno -2\] Name or service not known\)"):
        LearnerModel.from_pretrained(tiny_model("bert"), "someone/other")


def test_push_to_hub_offline_is_one_clear_error(monkeypatch):
    FakeHub(monkeypatch, fail=ConnectionError("[Errno -2] Name or service not known"))
    with pytest.raises(UsageError, match=r"could not push .* to the hub repository someone/x \(ConnectionError: "
                                         r"\[Errno -2\] Name or service not known\); log in"):
        trained_learners().push_to_hub("someone/x")


# ---- forwarding: the base model's facts, not its methods ---------------------------------------------------------

def test_only_the_base_models_facts_are_forwarded_not_its_methods():
    model = trained_learners()
    assert model.config is model.base_model.config and model.device == torch.device("cpu")
    assert model.main_input_name == "input_ids" and model.num_parameters() == model.base_model.num_parameters()
    assert model.push_to_hub.__func__ is LearnerModel.push_to_hub  # ours, not BertForSequenceClassification's
    assert model.save_pretrained.__func__ is LearnerModel.save_pretrained
    with pytest.raises(AttributeError, match=r"no attribute 'set_adapter'.*model.base_model.set_adapter.*"
                                             r"its learners counterpart is model.set_learners"):
        model.set_adapter("cola")
    with pytest.raises(AttributeError, match=r"no attribute 'resize_token_embeddings'.*model\.base_model\."):
        model.resize_token_embeddings(10)
    assert not hasattr(model, "tie_weights") and getattr(model, "hf_device_map", None) is None


# ---- Trainer checkpoints load with from_pretrained ---------------------------------------------------------------

def test_a_trainer_checkpoint_and_save_model_load_with_from_pretrained(tmp_path):
    from test_trainer import trainer

    model = get_learner_model(tiny_model("bert"), CONFIG)
    t = trainer(model, tmp_path / "run", steps=2, save_strategy="steps", save_steps=2)
    t.train()
    t.save_model(str(tmp_path / "saved"))
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").stat().st_size < 64_000  # the learner state, not the base weights
    expected = logits(model)
    for folder in (checkpoint, tmp_path / "saved"):
        restored = LearnerModel.from_pretrained(tiny_model("bert"), folder)
        assert [i.tolist() for i in restored.indices] == [i.tolist() for i in model.indices]
        assert torch.equal(logits(restored), expected)
    trainable = LearnerModel.from_pretrained(tiny_model("bert"), checkpoint, is_trainable=True)
    assert trainable.parameter_counts() == model.parameter_counts()


def test_a_whole_models_safetensors_is_not_taken_for_learners(tmp_path):
    tiny_model("bert").save_pretrained(tmp_path)
    with pytest.raises(UsageError, match=r"holds no saved learners .*or a Trainer's model.safetensors of a LearnerModel"):
        LearnerModel.from_pretrained(tiny_model("bert"), tmp_path)


# ---- the command line: finetune's card and --push-to-hub, predict --scores ---------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """A three-class learners run pushed to a fake hub, and a regression run."""
    d = tmp_path_factory.mktemp("share")
    write_three_class_csvs(d)
    (d / "reg.csv").write_text("text,label\n" + "\n".join(f"word{i % 7} thing{i % 5},{i / 7:.2f}" for i in range(24)))
    common = ["--model", str(tiny_model_dir), "--max-steps", "2", "--batch-size", "12", "--no-progress", "--ratio", "0.25"]
    with pytest.MonkeyPatch.context() as mp:
        hub = FakeHub(mp)
        assert main(["finetune", "--train-file", str(d / "train.csv"), "--validation-file", str(d / "dev.csv"),
                     "--output-dir", str(d / "cls"), "--push-to-hub", "someone/abc-learners", *common]) == 0
    assert main(["finetune", "--train-file", str(d / "reg.csv"), "--validation-file", str(d / "reg.csv"),
                 "--output-dir", str(d / "reg"), *common]) == 0
    return d, hub


def test_finetune_writes_a_complete_card_and_pushes_the_learners(runs, tiny_model_dir):
    d, hub = runs
    results = json.loads((d / "cls" / "results.json").read_text())
    card = (d / "cls" / "learners" / "README.md").read_text()
    assert f"base_model: {tiny_model_dir}" in card and "- custom\n" in card
    assert f"| {results['metric_name']} | {results['best_metric']:.4f} |" in card
    assert "| 2 | c |" in card
    [upload] = hub.uploads
    assert upload["repo_id"] == "someone/abc-learners" and hub.repos == [("someone/abc-learners", None, None)]
    assert set(upload["files"]) == LEARNER_FILES | {"learners_task.json"}
    assert upload["files"]["README.md"].decode() == card


@pytest.mark.slow
def test_finetune_push_offline_is_one_line_and_keeps_the_run(runs, tmp_path, monkeypatch, capsys):
    d, _ = runs
    FakeHub(monkeypatch, fail=ConnectionError("[Errno -2] Name or service not known"))
    out = tmp_path / "run"
    code = main(["finetune", "--train-file", str(d / "train.csv"), "--validation-file", str(d / "dev.csv"),
                 "--model", str(json.loads((d / "cls" / "results.json").read_text())["model"]), "--max-steps", "1",
                 "--batch-size", "12", "--no-progress", "--output-dir", str(out), "--push-to-hub", "someone/x"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and last.startswith("learners: error: could not push")
    assert "Name or service not known" in last
    assert f"The run is saved in {out}; push it later with: hf upload someone/x {out / 'learners'}" in err
    assert (out / "results.json").is_file() and (out / "learners" / "learners_model.safetensors").is_file()


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_scores_are_probabilities_beside_each_label(runs, tmp_path):
    d, _ = runs
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(d / "cls"), "--input", str(d / "dev.csv"), "--output", str(out), "--scores",
                 "--batch-size", "4", "--device", "cpu"]) == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["text", "label", "prediction", "score_a", "score_b", "score_c"]
    for row in rows:
        probabilities = {label: float(row[f"score_{label}"]) for label in "abc"}
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-9) and min(probabilities.values()) > 0
        assert row["prediction"] == max(probabilities, key=probabilities.get)
    plain = tmp_path / "plain.csv"
    assert main(["predict", "--model", str(d / "cls"), "--input", str(d / "dev.csv"), "--output", str(plain)]) == 0
    assert [r["prediction"] for r in read_csv(plain)] == [r["prediction"] for r in rows]  # batch size changes nothing
    assert list(read_csv(plain)[0]) == ["text", "label", "prediction"]
    before = out.read_bytes()  # an existing --output is refused without --overwrite, and stays as it was
    assert main(["predict", "--model", str(d / "cls"), "--input", str(d / "dev.csv"), "--output", str(out), "--scores"]) == 2
    assert out.read_bytes() == before


def test_predict_scores_of_a_regression_and_of_several_tasks(runs, tmp_path, tiny_model_dir):
    d, _ = runs
    out = tmp_path / "r.jsonl"
    assert main(["predict", "--model", str(d / "reg"), "--input", str(d / "dev.csv"), "--output", str(out),
                 "--scores"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(isinstance(r["score"], float) and r["score"] == r["prediction"] for r in rows)
    both = tmp_path / "both.csv"
    assert main(["predict", "--learners", f"abc={d / 'cls'},reg={d / 'reg'}", "--base", str(tiny_model_dir),
                 "--input", str(d / "dev.csv"), "--output", str(both), "--scores"]) == 0
    rows = read_csv(both)
    assert list(rows[0]) == ["text", "label", "prediction_abc", "score_abc_a", "score_abc_b", "score_abc_c",
                             "prediction_reg", "score_reg"]
    assert all(sum(float(r[f"score_abc_{c}"]) for c in "abc") == pytest.approx(1, abs=1e-9) for r in rows)
