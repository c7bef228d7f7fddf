"""The library with a multi-label head (problem_type "multi_label_classification": a sigmoid per label, binary
cross-entropy): a LearnerModel trains it, and its save/load and merge are exact, the head's problem type and labels
restored with the learners."""

import torch

from conftest import tiny_batch, tiny_model
from learners import LearnerConfig, LearnerModel, get_learner_model

LABELS = {0: "arts", 1: "politics", 2: "sports"}


def multi_label_model(seed: int = 0):
    model = tiny_model("bert", seed=seed, num_labels=3)
    model.config.problem_type = "multi_label_classification"
    model.config.id2label, model.config.label2id = LABELS, {v: k for k, v in LABELS.items()}
    return model


def multi_hot_batch(seed: int):
    batch = tiny_batch(seed=seed)
    g = torch.Generator().manual_seed(seed)
    batch["labels"] = torch.randint(0, 2, (len(batch["input_ids"]), 3), generator=g).float()
    return batch


def test_multi_label_learner_model_trains_with_bce_and_saves_loads_and_merges_exactly(tmp_path):
    lm = get_learner_model(multi_label_model(), LearnerConfig(ratio=0.5, selection="random", layers="all"))
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(8):
        batch = multi_hot_batch(step % 2)
        out = lm(**batch)
        assert torch.allclose(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, batch["labels"]))
        losses.append(out.loss.item())
        out.loss.backward()
        optimizer.step(), optimizer.zero_grad()
    assert losses[-1] < losses[0]
    lm.eval()
    batch = {k: v for k, v in multi_hot_batch(7).items() if k != "labels"}
    with torch.no_grad():
        expected = lm(**batch).logits
    lm.save_pretrained(tmp_path / "learners")

    base = tiny_model("bert", num_labels=3)  # a plain base: the saved learners bring the head's labels and problem type
    restored = LearnerModel.from_pretrained(base, tmp_path / "learners").eval()
    assert restored.config.problem_type == "multi_label_classification" and restored.config.id2label == LABELS
    with torch.no_grad():
        assert torch.equal(restored(**batch).logits, expected)
        merged = restored.merge_and_unload().eval()
        assert merged.config.problem_type == "multi_label_classification" and merged.config.id2label == LABELS
        torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-6, rtol=0)
