"""Layer-selective learners: where they go, what runs backward, and what priming trains."""

import copy

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, BertConfig

from conftest import FAMILIES, OddModel, tiny_batch, tiny_model
from learners import LearnerConfig, LearnerModel, get_learner_model
from learners.errors import UsageError
from learners.learner.ffn import locate_ffn_blocks
from learners.learner.plan import plan_learners
from learners.learner.selection import choose_layers, gradient_scores, select
from learners.harness.methods import build_method
from learners.learner.priming import priming_parameter_names


def four_layer_bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, vocab_size=120,
                        num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return AutoModelForSequenceClassification.from_config(config)


@pytest.mark.parametrize("layers,expected", [(None, [0, 1, 2, 3]), ("all", [0, 1, 2, 3]), ("top-1", [3]),
                                             ("top-3", [1, 2, 3]), ("skip-1", [1, 2, 3]), ("skip-0", [0, 1, 2, 3]),
                                             ([2, 0], [0, 2]), ("auto", [0, 1, 2, 3])])
def test_layer_specs_resolve_to_blocks(layers, expected):
    config = LearnerConfig.primed(ratio=0.25, layers=layers)
    plan = plan_learners(four_layer_bert(), config)
    assert list(plan.positions) == expected
    assert [b.name for b in plan.learner_blocks] == [f"bert.encoder.layer.{i}" for i in expected]


@pytest.mark.parametrize("layers,message", [
    ("top-0", "not understood"), ("skip-x", "not understood"), ("bottom", "not understood"), ([1, 1], "distinct"), ([-1], ">= 0"), ([], ">= 0"),
])
def test_bad_layer_specs_are_clear_errors(layers, message):
    with pytest.raises(UsageError, match=message):
        LearnerConfig.primed(ratio=0.25, layers=layers)


@pytest.mark.parametrize("layers,message", [("top-5", "at most top-4"), ([4], r"layers \[4\] do not exist")])
def test_layers_beyond_the_model_are_clear_errors(layers, message):
    with pytest.raises(UsageError, match=message):
        get_learner_model(four_layer_bert(), LearnerConfig.primed(ratio=0.25, selection="random", layers=layers))


@pytest.mark.parametrize("layers", ["skip-3", "skip-4", "skip-9"])
def test_skip_n_leaves_at_least_the_top_block(layers):
    """skip-N of a model with N blocks or fewer keeps the top one: the default, skip-1, fits a one-block model."""
    assert plan_learners(four_layer_bert(), LearnerConfig(layers=layers)).positions == (3,)
    one_block = get_learner_model(tiny_model("bert", layers=1), LearnerConfig())
    assert one_block.plan.positions == (0,) and one_block.learner_config.layers == "skip-1"


def test_the_ffn_blocks_are_located_once_per_wrap_and_a_plan_must_be_the_models(monkeypatch):
    """get_learner_model and Primer hand their plan to LearnerModel, which does not walk the model again; a plan
    of another config or another model is refused."""
    import learners.learner.plan as plan_module
    calls = []
    locate = plan_module.locate_ffn_blocks
    monkeypatch.setattr(plan_module, "locate_ffn_blocks", lambda *a, **k: calls.append(1) or locate(*a, **k))
    for config in (LearnerConfig(), LearnerConfig.primed(selection="magnitude", layers="auto", ratio=0.25)):
        calls.clear()
        lm = get_learner_model(four_layer_bert(), config)
        assert len(calls) == 1 and lm.plan.config == lm.learner_config
    model = four_layer_bert()
    plan = plan_learners(model, LearnerConfig())
    indices = [torch.arange(k) for k in plan.sizes]
    with pytest.raises(UsageError, match="plan was made for another LearnerConfig"):
        LearnerModel(model, LearnerConfig(ratio=0.25), indices, plan=plan)
    with pytest.raises(UsageError, match="plan was made for another model"):
        LearnerModel(four_layer_bert(), LearnerConfig(), indices, plan=plan)
    assert LearnerModel(model, LearnerConfig(), indices, plan=plan).plan is plan


def test_choose_layers_takes_the_fewest_top_blocks_that_hold_the_coverage():
    scores = [torch.tensor([4.0, 0, 0]), torch.tensor([1.0, 0, 0]), torch.tensor([2.0, 1, 0]), torch.tensor([3.0, 0, 0])]
    sizes = [1, 1, 1, 1]  # signals 4, 1, 2, 3 (of 10)
    assert choose_layers(scores, sizes, 0.3) == [3]
    assert choose_layers(scores, sizes, 0.5) == [2, 3]
    assert choose_layers(scores, sizes, 0.55) == [1, 2, 3]
    assert choose_layers(scores, sizes, 1.0) == [0, 1, 2, 3]
    # with k=2 the signals are 4, 1, 3, 3 (of 11): the top two hold 6
    assert choose_layers(scores, [2, 2, 2, 2], 6 / 11) == [2, 3]
    assert choose_layers(scores, [2, 2, 2, 2], 6.5 / 11) == [1, 2, 3]


def test_auto_selection_returns_the_chosen_blocks_and_their_top_neurons():
    model = four_layer_bert()
    config = LearnerConfig.primed(num_neurons=2, layers="auto", layer_coverage=0.5, selection="magnitude")
    scores = [torch.zeros(64) for _ in range(4)]
    scores[3][[5, 9]] = 3.0
    scores[0][[1, 2]] = 1.0
    scores[1][7] = 2.0
    plan, indices = select(plan_learners(model, config), scores)
    resolved = plan.config
    assert resolved.layers == [3] and plan.positions == (3,) and [i.tolist() for i in indices] == [[5, 9]]
    lm = LearnerModel(model, resolved, indices)
    assert [b.name for b in lm.ffn_blocks] == ["bert.encoder.layer.3"]
    with pytest.raises(UsageError, match="select"):
        LearnerModel(four_layer_bert(), config, indices)


def test_magnitude_selection_with_auto_layers():
    lm = get_learner_model(four_layer_bert(), LearnerConfig.primed(num_neurons=4, selection="magnitude", layers="auto"))
    assert isinstance(lm.learner_config.layers, list) and lm.learner_config.layers[-1] == 3
    assert len(lm.indices) == len(lm.learner_config.layers)


@pytest.mark.parametrize("layers", ["top-1", "top-2", [1, 3]])
def test_nothing_runs_backward_below_the_lowest_learner_block(layers):
    lm = get_learner_model(four_layer_bert(), LearnerConfig.primed(ratio=0.25, selection="random", layers=layers))
    lowest = lm.plan.positions[0]
    out = lm(**tiny_batch(), output_hidden_states=True)
    # hidden_states[i] is the input of block i: it has a graph only above the lowest learner block
    assert [h.grad_fn is not None for h in out.hidden_states] == [i > lowest for i in range(5)]
    seen = set()

    def walk(fn):
        if fn is None or fn in seen:
            return
        seen.add(fn)
        for next_fn, _ in fn.next_functions:
            walk(next_fn)

    walk(out.loss.grad_fn)
    # no graph node touches an attention weight of a block at or below the lowest learner block
    attention_leaves = {id(p) for n, p in lm.named_parameters() if ".attention." in n}
    assert not any(id(getattr(fn, "variable", None)) in attention_leaves for fn in seen)


@pytest.mark.parametrize("layers", ["top-1", [0, 2]])
def test_layer_selective_gradients_equal_the_full_models_slices(layers):
    model = four_layer_bert()
    reference = copy.deepcopy(model)
    lm = get_learner_model(model, LearnerConfig.primed(ratio=0.25, selection="random", layers=layers, seed=3))
    batch = tiny_batch()
    reference(**batch).loss.backward()
    lm(**batch).loss.backward()
    for block, idx in zip(lm.ffn_blocks, lm.indices):
        ref = reference.get_submodule(block.name)
        torch.testing.assert_close(block.up.learner_weight.grad, ref.intermediate.dense.weight.grad[idx], atol=1e-6, rtol=0)
        torch.testing.assert_close(block.up.learner_bias.grad, ref.intermediate.dense.bias.grad[idx], atol=1e-6, rtol=0)
        torch.testing.assert_close(block.down.learner_weight.grad, ref.output.dense.weight.grad[:, idx], atol=1e-6, rtol=0)


def test_under_autocast_the_learner_step_matches_nn_linear_under_autocast():
    model = four_layer_bert()
    reference = copy.deepcopy(model)
    lm = get_learner_model(model, LearnerConfig.primed(ratio=0.25, selection="random", layers="top-2"))
    batch = tiny_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss = reference(**batch).loss
        loss = lm(**batch).loss
    ref_loss.backward()
    loss.backward()
    torch.testing.assert_close(loss, ref_loss)
    for block, idx in zip(lm.ffn_blocks, lm.indices):
        ref = reference.get_submodule(block.name)
        assert block.up.learner_weight.grad.dtype == torch.float32
        torch.testing.assert_close(block.up.learner_weight.grad, ref.intermediate.dense.weight.grad[idx], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("scope", ["ffn", "learner-layers"])
@pytest.mark.parametrize("family", FAMILIES)
def test_priming_scope_trains_only_ffns_and_the_head(scope, family):
    model = tiny_model(family)
    method = build_method("learners", {"ratio": 0.25, "layers": "top-1", "priming_scope": scope, "selection": "priming"})
    model = method.prepare(model, iter([]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == priming_parameter_names(model, plan_learners(model, method.config), method.head_names)
    assert method.head_names <= trainable
    blocks = locate_ffn_blocks(model)
    expected_blocks = blocks if scope == "ffn" else blocks[-1:]
    ffn = {f"{b.name}.{m}.{k}" for b in expected_blocks for m in (b.up_name, b.down_name) for k in ("weight", "bias")}
    assert trainable - method.head_names == ffn
    assert set(method.pretrained) == ffn  # only what priming moves is kept to put back


def test_priming_with_a_scope_ends_as_base_model_plus_learners_plus_head():
    """After priming and reconfiguration the model is exactly base + learners + head, whatever the scope."""
    base = four_layer_bert()
    model = copy.deepcopy(base)
    method = build_method("learners", {"num_neurons": 4, "layers": "auto", "priming_scope": "ffn", "selection": "priming", "layer_coverage": 0.6})
    model = method.prepare(model, iter([]))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for seed in range(3):
        model(**tiny_batch(seed=seed)).loss.backward()
        optimizer.step(), optimizer.zero_grad()
    lm = method.after_priming(model, iter([]))
    assert isinstance(lm.learner_config.layers, list) and lm.learner_config.layers[-1] == 3
    assert len(method.layer_signal) == 4
    config, indices = lm.learner_config, lm.indices
    plain = lm.merge_and_unload()
    base_params, merged = dict(base.named_parameters()), dict(plain.named_parameters())
    for block, idx in zip(plan_learners(plain, config).learner_blocks, indices):
        w = f"{block.name}.intermediate.dense.weight"
        frozen = torch.ones(64, dtype=torch.bool)
        frozen[idx] = False
        assert torch.equal(merged[w][frozen], base_params[w][frozen])
        assert not torch.equal(merged[w][idx], base_params[w][idx])  # the primed warm start is kept
    untouched = [n for n in merged if ".attention." in n or "embeddings" in n]
    assert untouched and all(torch.equal(merged[n], base_params[n]) for n in untouched)


def test_auto_layers_with_learner_layer_priming_are_chosen_by_a_gradient_probe_before_priming():
    model = four_layer_bert()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = build_method("learners", {"num_neurons": 4, "layers": "auto", "priming_scope": "learner-layers", "selection": "priming",
                                       "gradient_batches": 2, "layer_coverage": 0.5})
    model = method.prepare(model, iter([tiny_batch(seed=s) for s in range(5)]))
    chosen = method.config.layers
    assert isinstance(chosen, list) and chosen[-1] == 3 and len(method.probe_signal) == 4
    probe_model = four_layer_bert()
    probe = gradient_scores(probe_model, plan_learners(probe_model, LearnerConfig.primed(num_neurons=4)),
                            [tiny_batch(seed=s) for s in range(2)])
    assert chosen == choose_layers(probe, [4] * 4, 0.5)
    # the probe updated nothing and left no gradients; priming trains only the chosen blocks' FFNs and the head
    assert all(torch.equal(p, before[n]) and p.grad is None for n, p in model.named_parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad} - method.head_names
    assert {int(n.split(".")[3]) for n in trainable} == set(chosen)


@pytest.mark.parametrize("frozen_dropout", [True, False])
def test_frozen_dropout_off_runs_the_part_below_the_learners_in_inference_mode(frozen_dropout):
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, vocab_size=120,
                        num_labels=2, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    lm = get_learner_model(AutoModelForSequenceClassification.from_config(config),
                           LearnerConfig.primed(ratio=0.25, selection="random", layers="top-2", frozen_dropout=frozen_dropout))
    lm.train()
    layers = lm.base_model.bert.encoder.layer
    assert [layers[i].training for i in range(4)] == [frozen_dropout, frozen_dropout, True, True]
    assert lm.base_model.bert.embeddings.training == frozen_dropout
    batch = tiny_batch()
    first, second = (lm(**batch, output_hidden_states=True).hidden_states for _ in range(2))
    assert torch.equal(first[2], second[2]) != frozen_dropout  # the input of the lowest learner block
    assert not torch.equal(first[4], second[4])  # dropout still acts in the learner blocks
    lm.eval()
    assert not any(m.training for m in lm.modules())


def assert_gradients_as_with_eval_modules(lm, reference, family, module_name):
    """The learner gradients of `lm` (learners in the top two blocks) equal the slices of `reference`'s gradients when
    `reference` runs each of those blocks' `module_name` in eval mode, under the same dropout draws."""
    reference.train()
    for block in plan_learners(reference, LearnerConfig.primed(ratio=0.25, layers="top-2")).learner_blocks:
        block.block.get_submodule(module_name).eval()
    batch = tiny_batch()
    torch.manual_seed(1)
    lm(**batch).loss.backward()
    torch.manual_seed(1)
    reference(**batch).loss.backward()
    up_name = "ffn.lin1" if family == "distilbert" else "intermediate.dense"
    for block, idx in zip(lm.ffn_blocks, lm.indices):
        ref_up = reference.get_submodule(block.name).get_submodule(up_name)
        torch.testing.assert_close(block.up.learner_weight.grad, ref_up.weight.grad[idx], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_attention_dropout_off_runs_the_learner_blocks_attention_in_inference_mode(family):
    """attention_dropout=False: in each learner block the (frozen) attention sublayer runs without dropout, the rest
    of the block (FFN dropout) and the blocks without learners as before; the gradients stay exact, those of the
    model with that attention in eval mode."""
    torch.manual_seed(0)
    model = tiny_model(family, dropout=True, layers=3)
    reference = copy.deepcopy(model)
    lm = get_learner_model(model, LearnerConfig.primed(ratio=0.25, selection="random", layers="top-2", attention_dropout=False))
    lm.train()
    blocks = [b.block for b in locate_ffn_blocks(lm.base_model)]
    assert [b.training for b in blocks] == [True, True, True]
    assert [b.attention.training for b in blocks] == [True, False, False]
    ffn = [b.block for b in lm.ffn_blocks]
    assert all(m.training for b in ffn for n, m in b.named_modules() if not n.startswith("attention"))
    assert_gradients_as_with_eval_modules(lm, reference, family, "attention")
    lm.eval()
    assert not any(m.training for m in lm.modules())
    lm.train()
    assert not blocks[2].attention.training  # every train() call keeps it so


@pytest.mark.parametrize("family", ["bert", "distilbert", "mpnet", "deberta-v2"])
def test_attention_probs_dropout_off_runs_only_the_self_attention_core_in_inference_mode(family):
    """attention_probs_dropout=False: in each learner block the module with the query, key and value projections runs
    without dropout (the attention probabilities); the dropout after the output projection and the FFN's stay.
    Gradients are those of the model with that module in eval mode."""
    torch.manual_seed(0)
    model = tiny_model(family, dropout=True, layers=3)
    reference = copy.deepcopy(model)
    lm = get_learner_model(model, LearnerConfig.primed(ratio=0.25, selection="random", layers="top-2",
                                                attention_probs_dropout=False))
    lm.train()
    core = {"bert": "attention.self", "distilbert": "attention", "mpnet": "attention.attn", "deberta-v2": "attention.self"}[family]
    blocks = [b.block for b in locate_ffn_blocks(lm.base_model)]
    for i, block in enumerate(blocks):
        evaluated = {n for n, m in block.named_modules() if not m.training}
        assert evaluated == (set() if i == 0 else {n for n, _ in block.get_submodule(core).named_modules(prefix=core)})
    assert_gradients_as_with_eval_modules(lm, reference, family, core)


def test_attention_probs_dropout_off_needs_the_query_key_value_module_and_the_whole_sublayer_option_does_not():
    model = OddModel()
    for block in model.blocks:
        block.attention = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1))  # one projection: no q, k, v module
    lm = get_learner_model(model, LearnerConfig.primed(ratio=0.5, selection="random", ffn_modules=("fc_in", "fc_out"),
                                                attention_dropout=False)).train()
    assert [b.attention.training for b in model.blocks] == [False, False]
    with pytest.raises(UsageError, match=r"no module with the query, key and value projections found in Sequential"):
        get_learner_model(lm.unload(), LearnerConfig.primed(ratio=0.5, selection="random", ffn_modules=("fc_in", "fc_out"),
                                                     attention_probs_dropout=False))


def test_attention_dropout_off_needs_an_attention_module_in_the_learner_blocks():
    model = OddModel()
    for option in ("attention_dropout", "attention_probs_dropout"):
        with pytest.raises(UsageError, match=r"no 'attention' submodule .*leave attention dropout on"):
            get_learner_model(model, LearnerConfig.primed(ratio=0.5, selection="random", ffn_modules=("fc_in", "fc_out"),
                                                   **{option: False}))
        assert all(p.requires_grad for p in model.parameters())  # refused before anything changed
