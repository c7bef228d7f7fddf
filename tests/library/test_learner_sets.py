"""Several learner sets on one backbone: switching is exact, costs only slices and heads, and none is the base."""

import pytest
import torch

from conftest import tiny_batch, tiny_model, train_steps
from learners import LearnerConfig, LearnerModel, get_learner_model
from learners.errors import UsageError
from learners.learner.layer import LearnerColumnLinear, LearnerRowLinear

# Two tasks trained differently: other label counts, other blocks, other neurons, other trained options.
TASKS = {
    "cola": (2, LearnerConfig.primed(ratio=0.25, selection="random", seed=1)),
    "mnli": (3, LearnerConfig.primed(num_neurons=5, selection="random", seed=2, layers=[1], train_ffn_output_bias=True,
                              train_layer_norm=True)),
}


def train(lm, num_labels, steps=3, seed=0):
    return train_steps(lm, [tiny_batch(seed=seed + step, num_labels=num_labels) for step in range(steps)], 2e-2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each task's learners trained on its own copy of the base model and saved."""
    root = tmp_path_factory.mktemp("sets")
    for task, (num_labels, config) in TASKS.items():
        lm = train(get_learner_model(tiny_model("bert", num_labels=num_labels), config), num_labels, seed=len(task))
        lm.base_model.config.id2label = {i: f"{task}-{i}" for i in range(num_labels)}
        lm.save_pretrained(root / task)
    return root


def logits(model, seed=9):
    with torch.no_grad():
        return model(**tiny_batch(seed=seed)).logits


def alone(saved, task):
    """The task's learners loaded alone, on a fresh base model (with the default 2-label head)."""
    return LearnerModel.from_pretrained(tiny_model("bert"), saved / task)


def test_switching_sets_gives_exactly_each_sets_own_model_back_and_forth(saved):
    expected = {task: logits(alone(saved, task)) for task in TASKS}
    expected[None] = logits(tiny_model("bert").eval())
    assert expected["mnli"].shape[-1] == 3 and expected["cola"].shape[-1] == 2
    lm = LearnerModel.from_pretrained(tiny_model("bert"), saved / "cola", name="cola")
    lm.load_learners(saved / "mnli", "mnli")
    assert lm.learner_sets == ["cola", "mnli"] and lm.active_learners == "cola"  # loading does not switch
    for name in ["mnli", "cola", None, "mnli", None, "cola", "cola", "mnli"] * 3:
        lm.set_learners(name)
        assert torch.equal(logits(lm), expected[name]), name
        labels = {"cola": 2, "mnli": 3, None: 2}[name]
        assert lm.config.num_labels == lm.base_model.num_labels == labels
    assert lm.config.id2label == {0: "mnli-0", 1: "mnli-1", 2: "mnli-2"}


def test_disable_learners_runs_the_base_model_exactly(saved):
    base = tiny_model("bert").eval()
    lm = LearnerModel.from_pretrained(tiny_model("bert"), saved / "mnli", name="mnli")
    with lm.disable_learners():
        assert lm.active_learners is None
        assert torch.equal(logits(lm), logits(base))
        assert not any(isinstance(m, (LearnerRowLinear, LearnerColumnLinear)) for m in lm.modules())
    assert lm.active_learners == "mnli" and torch.equal(logits(lm), logits(alone(saved, "mnli")))


def test_an_extra_set_costs_only_its_slices_and_head(saved):
    lm = LearnerModel.from_pretrained(tiny_model("bert"), saved / "cola", name="cola")
    before = {t.data_ptr() for t in lm.base_model.state_dict(keep_vars=True).values()}
    lm.load_learners(saved / "mnli", "mnli")
    mnli = lm._sets["mnli"]
    block = "bert.encoder.layer.1"
    up, down = mnli.modules[f"{block}.intermediate.dense"], mnli.modules[f"{block}.output.dense"]
    assert up.weight.data_ptr() in before and down.weight.data_ptr() in before and up.bias.data_ptr() in before
    new = {id(t): t for m in mnli.modules.values() for t in [*m.parameters(), *m.buffers()] if t.data_ptr() not in before}
    # per neuron: its W1 row, b1 entry and W2 column, and its index in each of the two layers; b2 and LayerNorm
    # (trained); the head: pooler 32x32+32, classifier 3x32+3. (In use, a set also keeps the base values
    # under its slices, to put them back.)
    slices = 5 * (32 + 1 + 32) + 2 * 5
    assert sum(t.numel() for t in new.values()) == slices + 32 + 2 * 32 + (32 * 32 + 32) + (3 * 32 + 3)
    lm.set_learners("mnli")
    assert up.base_weight_slice.shape == (5, 32) and down.base_weight_slice.shape == (32, 5)
    assert all(m.base_weight_slice is None for m in lm._sets["cola"].layers)


@pytest.mark.slow
def test_training_one_set_leaves_the_others_exact(saved):
    lm = LearnerModel.from_pretrained(tiny_model("bert"), saved / "cola", name="cola")
    lm.load_learners(saved / "mnli", "mnli", is_trainable=True)
    lm.set_learners("mnli")
    trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert trainable and all(".layer.1." in n or "pooler" in n or "classifier" in n for n in trainable)
    before = logits(lm)
    train(lm, num_labels=3, seed=5)
    assert not torch.equal(logits(lm), before)
    lm.set_learners("cola")
    assert torch.equal(logits(lm), logits(alone(saved, "cola")))
    lm.set_learners(None)
    assert torch.equal(logits(lm), logits(tiny_model("bert").eval()))


def test_sets_follow_the_model_to_another_dtype(saved):
    lm = LearnerModel.from_pretrained(tiny_model("bert"), saved / "cola", name="cola")
    lm.load_learners(saved / "mnli", "mnli")
    lm.double()
    for name in ["mnli", None, "cola"]:
        lm.set_learners(name)
        assert logits(lm).dtype == torch.float64
    expected = alone(saved, "cola").double()
    assert torch.equal(logits(lm), logits(expected))


def test_unload_and_merge_with_several_sets(saved):
    base = tiny_model("bert").eval()
    lm = LearnerModel.from_pretrained(tiny_model("bert"), saved / "cola", name="cola")
    lm.load_learners(saved / "mnli", "mnli")
    lm.set_learners("mnli")
    expected = logits(lm)
    merged = lm.merge_and_unload().eval()
    torch.testing.assert_close(logits(merged), expected, atol=1e-6, rtol=0)
    assert merged.config.num_labels == 3

    lm = LearnerModel.from_pretrained(tiny_model("bert"), saved / "cola", name="cola")
    lm.load_learners(saved / "mnli", "mnli")
    plain = lm.unload().eval()
    reference = dict(base.named_parameters())
    assert all(torch.equal(p, reference[n]) for n, p in plain.named_parameters())


def test_set_errors_are_clear(saved, tmp_path):
    lm = LearnerModel.from_pretrained(tiny_model("bert"), saved / "cola", name="cola")
    with pytest.raises(UsageError, match=r"no learner set named 'sst2'; loaded: cola"):
        lm.set_learners("sst2")
    with pytest.raises(UsageError, match="already loaded"):
        lm.load_learners(saved / "mnli", "cola")
    with pytest.raises(UsageError, match="holds no saved learners"):
        lm.load_learners(tmp_path, "x")
    with pytest.raises(UsageError, match="trained on another base model"):
        LearnerModel.from_pretrained(tiny_model("bert", seed=5), saved / "cola")
    foreign = LearnerModel(tiny_model("bert", seed=5), TASKS["cola"][1], [torch.arange(16), torch.arange(16)]).eval()
    before = logits(foreign)
    with pytest.raises(UsageError, match="trained on another base model"):
        foreign.load_learners(saved / "mnli", "mnli")
    assert foreign.learner_sets == ["default"] and foreign.active_learners == "default"  # as it was
    assert torch.equal(logits(foreign), before)
    lm.delete_learners("cola")
    assert lm.learner_sets == [] and lm.active_learners is None
