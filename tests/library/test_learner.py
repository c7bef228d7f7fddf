"""Exact behaviour of Learner modules on tiny random BERT, DistilBERT and RoBERTa."""

import copy

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from conftest import (BERT_LAYOUT_FAMILIES, FAMILIES, OddModel, assert_learner_gradients_match,
                      assert_saved_and_merged_reproduce, tiny_batch, tiny_model, train_steps)
from learners import LearnerConfig, LearnerModel, get_learner_model
from learners.errors import UsageError
from learners.learner.ffn import layout_type
from learners.learner.plan import plan_learners
from learners.learner.layer import LearnerColumnLinear, LearnerRowLinear
from learners.learner.selection import (priming_scores, random_indices, select, select_by_gradient,
                                        select_by_magnitude, snapshot_ffns)
from learners.harness.train import TrainConfig, make_optimizer

def learner_model(family, ratio=0.25, **kwargs):
    model = tiny_model(family, **kwargs)
    reference = copy.deepcopy(model)
    return reference, get_learner_model(model, LearnerConfig.primed(ratio=ratio, selection="random", seed=1))


@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_equal_the_original_at_creation(family):
    reference, lm = learner_model(family)
    batch = tiny_batch()
    reference.eval(), lm.eval()
    torch.testing.assert_close(lm(**batch).logits, reference(**batch).logits, atol=1e-6, rtol=0)
    assert isinstance(lm.ffn_blocks[0].up, LearnerRowLinear) and isinstance(lm.ffn_blocks[0].down, LearnerColumnLinear)


@pytest.mark.parametrize("family", FAMILIES)
def test_learner_gradients_equal_the_full_models_slices(family):
    reference, lm = learner_model(family)
    batch = tiny_batch()
    reference(**batch).loss.backward()
    lm(**batch).loss.backward()
    assert_learner_gradients_match(lm, reference, family)  # the head's too; nothing frozen holds a gradient


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_weights_stay_bit_identical_and_optimizer_holds_no_state_for_them(family):
    reference, lm = learner_model(family)
    learner_layers = {n: m for n, m in lm.named_modules() if isinstance(m, (LearnerRowLinear, LearnerColumnLinear))}
    # The full-weight buffers of learner layers hold the learner slices (written in place); the rest is frozen.
    kept = {f"{n}.{b}" for n in learner_layers for b in ("weight", "bias")}
    frozen_before = {n: t.clone() for n, t in list(lm.named_buffers()) + list(lm.named_parameters())
                     if not t.requires_grad and n not in kept}
    # In the original neuron order (while installed, each FFN holds its learner neurons first)
    buffers_before = {n: (m.merged_weight(), m.merged_bias() if isinstance(m, LearnerRowLinear) else m.bias.detach().clone())
                      for n, m in learner_layers.items()}
    trainable_before = {n: p.detach().clone() for n, p in lm.named_parameters() if p.requires_grad}
    optimizer, scheduler = make_optimizer(lm, TrainConfig(learning_rate=1e-2), 1e-2, 0, 10, 0)
    for step in range(3):  # the optimizer's state is checked below
        lm(**tiny_batch(seed=step)).loss.backward()
        optimizer.step(), scheduler.step(), optimizer.zero_grad()
    current = dict(list(lm.named_buffers()) + list(lm.named_parameters()))
    for name, value in frozen_before.items():
        assert torch.equal(current[name], value), f"{name} changed"
    for name, module in learner_layers.items():
        weight, bias = buffers_before[name]
        merged = module.merged_weight()
        frozen = torch.ones(merged.shape[module.axis], dtype=torch.bool)
        frozen[module.indices] = False
        assert torch.equal(merged.index_select(module.axis, frozen.nonzero()[:, 0]),
                           weight.index_select(module.axis, frozen.nonzero()[:, 0])), name
        assert torch.equal(merged.index_select(module.axis, module.indices), module.learner_weight.detach())
        # installed, the learner neurons come first: the learner part of the weight is a contiguous slice
        assert torch.equal(module.weight.narrow(module.axis, 0, module.num_neurons), module.learner_weight.detach())
        if isinstance(module, LearnerRowLinear):
            merged_bias = module.merged_bias()
            assert torch.equal(merged_bias[frozen], bias[frozen])
            assert torch.equal(merged_bias[module.indices], module.learner_bias.detach())
    assert all(not torch.equal(p, trainable_before[n]) for n, p in lm.named_parameters() if p.requires_grad)
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in lm.parameters() if p.requires_grad}
    assert len(optimizer.state) == len(optimized)


def test_the_full_weight_follows_every_change_of_the_learner_slices_without_a_copy_per_step():
    """Optimizer steps, copy_ and loading all reach the forward pass; the buffer is written in place."""
    _, lm = learner_model("bert")
    block = lm.ffn_blocks[0]
    pointer = block.up.weight.data_ptr()
    batch = tiny_batch()
    lm.eval()
    with torch.no_grad():
        before = lm(**batch).logits
        block.up.learner_weight.add_(0.5)
        changed = lm(**batch).logits
        assert not torch.equal(changed, before)
        block.up.learner_weight.sub_(0.5)
        block.up.learner_bias.copy_(block.up.learner_bias)  # a no-op write still re-syncs, harmlessly
        torch.testing.assert_close(lm(**batch).logits, before, atol=1e-6, rtol=0)
    assert block.up.weight.data_ptr() == pointer
    assert torch.equal(block.up.merged_weight()[block.up.indices], block.up.learner_weight.detach())


def test_learner_layers_share_the_frozen_weights_instead_of_copying_them():
    model = tiny_model("bert")
    block = plan_learners(model, LearnerConfig.primed(ratio=0.25)).learner_blocks[0]
    up_weight, up_bias, down_weight = block.up.weight, block.up.bias, block.down.weight
    get_learner_model(model, LearnerConfig.primed(ratio=0.25, selection="magnitude"))
    assert block.up.weight.data_ptr() == up_weight.data_ptr()
    assert block.up.bias.data_ptr() == up_bias.data_ptr()
    assert block.down.weight.data_ptr() == down_weight.data_ptr()


def train_a_little(lm, steps=3):
    return train_steps(lm, [tiny_batch(seed=step) for step in range(steps)])


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_and_save_load_reproduce_the_trained_learner_model(family, tmp_path):
    _, lm = learner_model(family)
    train_a_little(lm)
    merged = assert_saved_and_merged_reproduce(lm, tiny_model(family), tiny_batch(seed=7), tmp_path / "learners")
    assert type(merged).__module__.startswith("transformers.")


def test_saved_learners_hold_only_trained_slices_and_indices(tmp_path):
    from safetensors.torch import load_file
    _, lm = learner_model("bert")
    lm.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "learners_model.safetensors"))
    trainable = {n for n, p in lm.base_model.named_parameters() if p.requires_grad}
    assert set(tensors) == trainable | {"learner_indices.0", "learner_indices.1"}
    assert sum(t.numel() for n, t in tensors.items() if n in trainable) == lm.parameter_counts()["trainable"]
    assert (tmp_path / "learners_config.json").is_file()


def test_options_train_ffn_output_bias_and_layer_norm_and_layers():
    model = tiny_model("bert")
    lm = get_learner_model(model, LearnerConfig.primed(num_neurons=3, selection="magnitude", layers=[1],
                                                train_ffn_output_bias=True, train_layer_norm=True))
    trainable = {n for n, p in lm.base_model.named_parameters() if p.requires_grad}
    assert "bert.encoder.layer.1.output.dense.bias" in trainable
    assert "bert.encoder.layer.1.output.LayerNorm.weight" in trainable
    assert not any(".layer.0." in n for n in trainable)
    assert [i.numel() for i in lm.indices] == [3]


def test_priming_selection_picks_exactly_the_top_k_of_a_constructed_delta():
    model = tiny_model("bert")
    config = LearnerConfig.primed(num_neurons=4, selection="priming")
    before = snapshot_ffns(plan_learners(model, config))
    chosen = [torch.tensor([3, 17, 40, 63]), torch.tensor([0, 5, 6, 50])]
    with torch.no_grad():
        for block, idx in zip(plan_learners(model, config).learner_blocks, chosen):
            block.up.weight[idx] += torch.arange(1, 5).float()[:, None] * 0.1   # large moves on chosen rows
            block.down.weight[:, idx] -= 0.05
            small = torch.ones(64, dtype=torch.bool)
            small[idx] = False
            block.up.bias[small] += 0.01                                        # small moves elsewhere
    plan = plan_learners(model, config)
    selected = select(plan, priming_scores(plan, before))[1]
    assert [s.tolist() for s in selected] == [c.tolist() for c in chosen]


@pytest.mark.parametrize("strategy", ["gradient", "magnitude", "random"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_strategy_returns_k_distinct_valid_indices_per_layer(strategy, family):
    model = tiny_model(family)
    config = LearnerConfig.primed(ratio=0.2, selection=strategy)
    if strategy == "gradient":
        selected = select_by_gradient(model, config, [tiny_batch(seed=s) for s in range(2)])
        assert all(p.grad is None for p in model.parameters())
    elif strategy == "magnitude":
        selected = select_by_magnitude(model, config)
    else:
        selected = random_indices(plan_learners(model, config))
    assert len(selected) == 2
    for idx in selected:
        assert idx.numel() == 13 and idx.unique().numel() == 13  # ceil(0.2 * 64)
        assert 0 <= int(idx.min()) and int(idx.max()) < 64


def test_magnitude_selection_matches_a_hand_computed_score():
    model = tiny_model("bert")
    block = plan_learners(model, LearnerConfig.primed(ratio=0.1)).learner_blocks[0]
    w1, b1, w2 = block.up.weight.detach(), block.up.bias.detach(), block.down.weight.detach()
    scores = [float(w1[i].abs().sum() + w2[:, i].abs().sum() + b1[i].abs()) for i in range(64)]
    expected = sorted(sorted(range(64), key=lambda i: -scores[i])[:5])
    assert select_by_magnitude(model, LearnerConfig.primed(num_neurons=5, selection="magnitude"))[0].tolist() == expected


@pytest.mark.parametrize("kwargs,message", [
    (dict(ratio=0), r"ratio must be in \(0, 1\]"),
    (dict(ratio=1.5), r"ratio must be in \(0, 1\]"),
    (dict(ratio=0.1, num_neurons=3), "one of ratio= .* and num_neurons=, not both"),
    (dict(ratio=0.1, selection="best"), "unknown selection 'best'"),
])
def test_bad_configs_give_clear_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        LearnerConfig.primed(**kwargs)


def test_k_larger_than_the_ffn_width_is_a_clear_error():
    with pytest.raises(UsageError, match=r"k=65 is larger than the FFN width m=64"):
        get_learner_model(tiny_model("bert"), LearnerConfig.primed(num_neurons=65, selection="random"))


def test_unknown_architecture_lists_linear_modules_and_says_how_to_name_the_ffn():
    with pytest.raises(UsageError, match=r"blocks\.\*\.fc_in \(16x8\).*ffn_modules="):
        get_learner_model(OddModel(), LearnerConfig.primed(ratio=0.5, selection="random"))
    lm = get_learner_model(OddModel(), LearnerConfig.primed(ratio=0.5, selection="random", ffn_modules=("fc_in", "fc_out")))
    assert [i.numel() for i in lm.indices] == [8, 8]


class NormBlock(nn.Module):
    """A block of an unknown architecture: FFN fc_in -> fc_out, and a LayerNorm beside fc_out (as ALBERT's)."""

    def __init__(self, width=16, norm=True):
        super().__init__()
        self.fc_in, self.fc_out = nn.Linear(8, width), nn.Linear(16, 8)
        if norm:
            self.norm = nn.LayerNorm(8)


def odd_model(**block_kwargs):
    model = nn.Module()
    model.config = type("Cfg", (), {"model_type": "odd"})()
    model.blocks = nn.ModuleList([NormBlock(**block_kwargs), NormBlock(**block_kwargs)])
    return model


@pytest.mark.parametrize("family", BERT_LAYOUT_FAMILIES)
@pytest.mark.slow
def test_encoders_with_berts_module_names_get_learners_without_naming_them(family, tmp_path):
    """ERNIE, RoFormer, MegatronBERT, MobileBERT...: model types learners has no entry for, whose blocks keep
    BERT's names. They are found as BERT's: exact at creation, exact gradients, and a merge to a plain model."""
    assert layout_type(tiny_model(family)) == "bert"
    reference, lm = learner_model(family)
    blocks = lm.ffn_blocks
    assert len(blocks) == (2 * 2 if family == "mobilebert" else 2)  # MobileBERT: its block's FFN and one more
    assert {(b.up_name, b.down_name) for b in blocks} == {("intermediate.dense", "output.dense")}
    assert {b.layer_norm_name for b in blocks} == {None if family == "megatron-bert" else "output.LayerNorm"}
    batch = tiny_batch()
    reference.eval(), lm.eval()
    torch.testing.assert_close(lm(**batch).logits, reference(**batch).logits, atol=1e-6, rtol=0)
    reference.train(), lm.train()
    reference(**batch).loss.backward()
    lm(**batch).loss.backward()
    assert_learner_gradients_match(lm, reference, "bert")
    train_a_little(lm)
    lm.eval()
    with torch.no_grad():
        expected = lm(**batch).logits
        torch.testing.assert_close(lm.merge_and_unload().eval()(**batch).logits, expected, atol=1e-6, rtol=0)


def test_layout_type_is_the_model_type_the_tables_know_else_berts_else_the_unknown_type():
    assert layout_type(tiny_model("distilbert")) == "distilbert" and layout_type(tiny_model("mpnet")) == "mpnet"
    funnel = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(
        "funnel", vocab_size=120, d_model=32, n_head=2, d_head=16, d_inner=64, block_sizes=[1, 1], num_decoder_layers=1))
    assert layout_type(funnel) == "funnel"
    with pytest.raises(UsageError, match=r"does not know where the FFN is in model type 'funnel'.*ffn\.linear_1"):
        get_learner_model(funnel, LearnerConfig.primed(ratio=0.5, selection="random"))


@pytest.mark.parametrize("names,message", [
    ("fc_in", "two linears"), (("a", "b", "c", "d"), "two linears"), (("fc_in", ""), "two linears"),
])
def test_ffn_modules_need_two_or_three_names(names, message):
    with pytest.raises(UsageError, match=message):
        LearnerConfig.primed(ratio=0.5, ffn_modules=names)


def test_a_third_ffn_module_name_is_the_layer_norm_and_names_are_stripped():
    config = LearnerConfig.primed(ratio=0.5, ffn_modules=" intermediate.dense, output.dense ,output.LayerNorm")
    assert config.ffn_modules == ("intermediate.dense", "output.dense") and config.layer_norm_module == "output.LayerNorm"
    with pytest.raises(UsageError, match="give it once"):
        LearnerConfig.primed(ratio=0.5, ffn_modules=("a", "b", "n1"), layer_norm_module="n2")


def test_named_ffn_modules_find_the_layer_norm_as_the_defaults_do():
    """Naming a known model's FFN pair (or an unknown model's) keeps its output LayerNorm: train_layer_norm is
    never silently dropped."""
    config = dict(ratio=0.25, selection="random", train_layer_norm=True)
    by_type = get_learner_model(tiny_model("bert"), LearnerConfig.primed(**config)).learner_state()
    named = get_learner_model(tiny_model("bert"), LearnerConfig.primed(ffn_modules=("intermediate.dense", "output.dense"),
                                                                **config)).learner_state()
    assert sorted(named) == sorted(by_type) and "bert.encoder.layer.0.output.LayerNorm.weight" in named
    odd = get_learner_model(odd_model(), LearnerConfig.primed(ffn_modules=("fc_in", "fc_out"), **config))
    assert {"blocks.0.norm.weight", "blocks.1.norm.bias"} <= set(odd.learner_state())
    no_norm = get_learner_model(odd_model(norm=False), LearnerConfig.primed(ffn_modules=("fc_in", "fc_out"), **config))
    assert not no_norm.plan.trains_layer_norm and not any("norm" in k for k in no_norm.learner_state())
    two_norms = odd_model()
    for block in two_norms.blocks:
        block.other_norm = nn.LayerNorm(8)
    with pytest.raises(UsageError, match=r"blocks\.0\.fc_out has several norm modules beside it.*--no-train-layer-norm"):
        get_learner_model(two_norms, LearnerConfig.primed(ffn_modules=("fc_in", "fc_out"), **config))
    with pytest.raises(UsageError, match=r"blocks\.0\.nope does not exist"):
        get_learner_model(odd_model(), LearnerConfig.primed(ffn_modules=("fc_in", "fc_out", "nope"), **config))
    plain = get_learner_model(odd_model(norm=False), LearnerConfig.primed(ffn_modules=("fc_in", "fc_out"), ratio=0.25, selection="random"))
    assert not any("norm" in k for k in plain.learner_state())


def test_gated_and_bias_free_ffns_are_refused_by_name():
    with pytest.raises(UsageError, match=r"blocks\.0\.fc_in has 32 outputs, blocks\.0\.fc_out 16 inputs.*gated FFN"):
        get_learner_model(odd_model(width=32), LearnerConfig.primed(ratio=0.5, selection="random", ffn_modules=("fc_in", "fc_out")))
    model = tiny_model("bert")
    model.bert.encoder.layer[1].output.dense.bias = None
    with pytest.raises(UsageError, match=r"bert\.encoder\.layer\.1\.output\.dense has no bias"):
        get_learner_model(model, LearnerConfig.primed(ratio=0.5, selection="random"))


def test_priming_and_gradient_need_training_batches():
    with pytest.raises(UsageError, match="indices="):
        get_learner_model(tiny_model("bert"), LearnerConfig.primed(ratio=0.1))


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.slow
def test_every_optimizer_step_reaches_the_forward_pass_fused_ones_too(fused):
    """Fused AdamW (the CUDA default of the engine and of transformers' Trainer) updates in place without
    bumping version counters; the layers still write the new slices into the full weight."""
    reference, lm = learner_model("bert")
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-2, fused=fused)
    for step in range(2):
        lm(**tiny_batch(seed=step)).loss.backward()
        optimizer.step(), optimizer.zero_grad()
    lm.eval()
    with torch.no_grad():
        logits = lm(**tiny_batch(seed=5)).logits
    for block in lm.ffn_blocks:  # the learner neurons come first while installed
        k = block.up.num_neurons
        assert torch.equal(block.up.weight[:k], block.up.learner_weight.detach())
        assert torch.equal(block.down.weight[:, :k], block.down.learner_weight.detach())
    with torch.no_grad():
        merged = lm.merge_and_unload().eval()
        torch.testing.assert_close(merged(**tiny_batch(seed=5)).logits, logits, atol=1e-6, rtol=0)


def test_an_optimizer_step_writes_only_the_learners_it_steps():
    """The post-step hook writes the slices of the layers whose learners the optimizer holds, not those of every
    learner model alive (an earlier run's, waiting for the garbage collector): a second model costs the step nothing,
    and still sees its own slices at its next forward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CopiedTensors(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._foreach_copy_.default:
                self.count += len(args[0])
            return func(*args, **(kwargs or {}))

    _, other = learner_model("bert")
    _, lm = learner_model("bert")
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-2)
    lm(**tiny_batch()).loss.backward()
    with CopiedTensors() as copied:
        optimizer.step()
    assert copied.count == 3 * len(lm.ffn_blocks)  # W1's rows and bias, W2's columns of each block: lm's alone
    for block in lm.ffn_blocks:
        assert torch.equal(block.up.weight[:block.up.num_neurons], block.up.learner_weight.detach())
    other_optimizer = torch.optim.SGD([p for p in other.parameters() if p.requires_grad], lr=1.0)
    other(**tiny_batch()).loss.backward()
    other_optimizer.step()
    other.eval()
    with torch.no_grad():
        logits = other(**tiny_batch(seed=5)).logits
        torch.testing.assert_close(other.merge_and_unload().eval()(**tiny_batch(seed=5)).logits, logits,
                                   atol=1e-6, rtol=0)


@pytest.mark.slow
def test_a_compiled_learner_model_trains_as_the_eager_one(caplog):
    """torch.compile (what Trainer's torch_compile=True does) traces the learner layers' autograd functions and
    their sync of the full weight; the aot_eager backend runs that tracing without a C++ compiler. Same losses,
    same slices, and the merged model gives the compiled model's outputs."""
    def train(compiled):
        lm = get_learner_model(tiny_model("bert"), LearnerConfig.primed(ratio=0.25, selection="random", seed=1,
                                                                 train_ffn_output_bias=True, train_layer_norm=True))
        run = torch.compile(lm, backend="aot_eager") if compiled else lm
        optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-2)
        losses = []
        for step in range(10):  # past dynamo's recompile limit (8)
            loss = run(**tiny_batch(seed=step)).loss
            loss.backward(), optimizer.step(), optimizer.zero_grad()
            losses.append(loss.detach())
        lm.eval()
        with torch.no_grad():
            return torch.stack(losses), run(**tiny_batch(seed=5)).logits, lm

    eager_losses, eager_logits, eager = train(False)
    torch._dynamo.reset()
    with caplog.at_level("WARNING", logger="torch._dynamo"):
        losses, logits, lm = train(True)
    assert "recompile" not in caplog.text  # the weight sync runs eagerly, not retraced at every step
    torch.testing.assert_close(losses, eager_losses, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits, eager_logits, atol=1e-6, rtol=0)
    assert torch.unique(eager_losses).numel() == 10  # the steps changed the model
    for block, eager_block in zip(lm.ffn_blocks, eager.ffn_blocks):
        torch.testing.assert_close(block.up.learner_weight, eager_block.up.learner_weight, atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(lm.merge_and_unload().eval()(**tiny_batch(seed=5)).logits, logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.slow
def test_torch_save_and_load_of_a_whole_learner_model(family, tmp_path):
    """`torch.save(model)` pickles the model object; the learner subclass is made again on load."""
    _, lm = learner_model(family)
    batch = tiny_batch()
    lm(**batch).loss.backward()
    torch.optim.SGD([p for p in lm.parameters() if p.requires_grad], lr=0.1).step()
    lm.eval()
    torch.save(lm, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert type(loaded) is type(lm) and isinstance(loaded, LearnerModel)
    assert torch.equal(loaded(**batch).logits, lm(**batch).logits)
    assert [n for n, p in loaded.named_parameters() if p.requires_grad] == [
        n for n, p in lm.named_parameters() if p.requires_grad]
    merged, reference = loaded.merge_and_unload(), lm.merge_and_unload()
    assert type(merged) is type(reference) and torch.equal(merged(**batch).logits, reference(**batch).logits)


def test_the_wrapper_shows_trainer_the_wrapped_models_forward_signature():
    """signature.py: Trainer keeps the columns the model's forward takes and finds its labels from the class;
    the run-time subclass carries the wrapped class's signature and name."""
    import inspect

    from transformers.utils import find_labels

    lm = get_learner_model(tiny_model("bert"), LearnerConfig())
    assert find_labels(type(lm)) == ["labels"]
    assert {"input_ids", "attention_mask", "labels"} <= set(inspect.signature(lm.forward).parameters)
    assert type(lm).__name__ == "LearnerModelForBertForSequenceClassification" and isinstance(lm, LearnerModel)
    assert type(get_learner_model(tiny_model("bert"), LearnerConfig())) is type(lm)  # one subclass per model class
