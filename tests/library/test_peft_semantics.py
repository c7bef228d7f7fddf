"""LearnerModel in HF PEFT's conventions: saving by key, loading frozen unless asked, unload vs merge,
the state dict, the config's own save/load, and where the frozen weight lives."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import tiny_batch, tiny_model, train_steps
from learners import LearnerConfig, LearnerModel, get_learner_model
from learners.errors import UsageError
from learners.learner.layer import LearnerColumnLinear, LearnerRowLinear
from learners.harness.train import TrainConfig, make_optimizer

CONFIG = LearnerConfig.primed(ratio=0.25, selection="random", seed=1)


def trained(model=None, config=CONFIG, steps=3):
    lm = get_learner_model(model if model is not None else tiny_model("bert"), config)
    return train_steps(lm, [tiny_batch(seed=step) for step in range(steps)])


def logits(model, seed=7):
    with torch.no_grad():
        return model(**tiny_batch(seed=seed)).logits


def test_save_pretrained_selects_by_key_so_a_frozen_model_saves_its_learners(tmp_path):
    lm = trained()
    expected = logits(lm)
    lm.requires_grad_(False)  # e.g. before inference: nothing requires grad any more
    lm.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "learners_model.safetensors"))
    assert any(k.endswith("learner_weight") for k in tensors) and "classifier.weight" in tensors
    assert torch.equal(logits(LearnerModel.from_pretrained(tiny_model("bert"), tmp_path)), expected)


@pytest.mark.parametrize("options", [{}, {"train_ffn_output_bias": True, "train_layer_norm": True, "layers": [1]}])
def test_saved_keys_are_the_learner_slices_the_trained_options_the_head_and_the_indices(options, tmp_path):
    lm = get_learner_model(tiny_model("bert"), LearnerConfig.primed(ratio=0.25, selection="random", **options))
    lm.save_pretrained(tmp_path)
    keys = set(load_file(str(tmp_path / "learners_model.safetensors")))
    assert keys | {"learners_config"} == set(lm.state_dict())  # the state dict also carries learners_config.json
    trainable = {n for n, p in lm.base_model.named_parameters() if p.requires_grad}
    assert keys == trainable | {f"learner_indices.{i}" for i in range(len(lm.indices))}
    assert ("bert.encoder.layer.1.output.dense.bias" in keys) == bool(options)
    assert ("bert.encoder.layer.1.output.LayerNorm.weight" in keys) == bool(options)


def test_from_pretrained_is_frozen_and_in_eval_mode_unless_trainable(tmp_path):
    lm = trained()
    lm.save_pretrained(tmp_path)
    frozen = LearnerModel.from_pretrained(tiny_model("bert").train(), tmp_path)
    assert not frozen.training and not frozen.base_model.training
    assert not any(p.requires_grad for p in frozen.parameters())
    trainable = LearnerModel.from_pretrained(tiny_model("bert").train(), tmp_path, is_trainable=True)
    assert trainable.training
    names = {n for n, p in trainable.base_model.named_parameters() if p.requires_grad}
    assert names == {k for k in trainable.state_dict() if not k.startswith("learner_indices.")} - {"learners_config"}
    assert trainable.parameter_counts() == lm.parameter_counts()


def test_learners_load_on_their_base_model_cast_to_bf16_but_not_on_another(tmp_path):
    lm = trained()
    lm.save_pretrained(tmp_path)
    restored = LearnerModel.from_pretrained(tiny_model("bert").to(torch.bfloat16), tmp_path)
    assert restored.ffn_blocks[0].up.learner_weight.dtype == torch.bfloat16
    with pytest.raises(UsageError, match="were trained on another base model"):
        LearnerModel.from_pretrained(tiny_model("bert", seed=1), tmp_path)


def base_with_a_mixed_requires_grad_state():
    model = tiny_model("bert")
    model.bert.embeddings.requires_grad_(False)  # the user froze the embeddings; the rest trains
    return model, {n: p.requires_grad for n, p in model.named_parameters()}


def test_unload_gives_back_the_base_model_unmerged_with_its_requires_grad():
    model, flags = base_with_a_mixed_requires_grad_state()
    original = copy.deepcopy(model).eval()
    lm = trained(model)
    assert not torch.equal(logits(lm), logits(original))
    base = lm.unload().eval()
    assert base is model
    assert not any(isinstance(m, (LearnerRowLinear, LearnerColumnLinear)) for m in base.modules())
    assert all(type(m) is nn.Linear for n, m in base.named_modules() if n.endswith(("intermediate.dense", "output.dense")))
    reference = dict(original.named_parameters())
    for name, p in base.named_parameters():
        assert torch.equal(p, reference[name]), name  # FFN weights and the head as they were
    assert {n: p.requires_grad for n, p in base.named_parameters()} == flags
    assert torch.equal(logits(base), logits(original))


def test_merge_and_unload_keeps_the_learners_and_head_and_restores_requires_grad():
    model, flags = base_with_a_mixed_requires_grad_state()
    lm = trained(model)
    expected = logits(lm)
    shared = lm.ffn_blocks[0].up.weight
    merged = lm.merge_and_unload().eval()
    assert merged.bert.encoder.layer[0].intermediate.dense.weight is shared  # merged in place: no copy
    assert {n: p.requires_grad for n, p in merged.named_parameters()} == flags  # not everything trainable
    torch.testing.assert_close(logits(merged), expected, atol=1e-6, rtol=0)


def test_safe_merge_refuses_non_finite_weights_before_changing_anything():
    lm = trained()
    expected = logits(lm)
    with torch.no_grad():
        lm.base_model.bert.encoder.layer[0].attention.self.query.weight[0, 0] = float("inf")  # a frozen base weight
    with pytest.raises(UsageError, match=r"NaN or infinite values \(first in .*query.weight\).*cannot be merged"):
        lm.merge_and_unload(safe_merge=True)
    assert isinstance(lm.ffn_blocks[0].up, LearnerRowLinear) and lm.active_learners == "default"
    with torch.no_grad():
        lm.base_model.bert.encoder.layer[0].attention.self.query.weight[0, 0] = 0.0
        lm.ffn_blocks[1].down.learner_weight[0, 0] = float("nan")  # a learner slice: refused by default too
    with pytest.raises(UsageError, match=r"first in .*output.dense.learner_weight.*cannot be merged"):
        lm.merge_and_unload()
    assert isinstance(lm.ffn_blocks[1].down, LearnerColumnLinear)
    with torch.no_grad():
        lm.ffn_blocks[1].down.learner_weight[0, 0] = 0.5
    assert not torch.equal(logits(lm), expected)  # still a working learner model


def test_learner_config_saves_and_loads_itself_compatibly_with_the_model(tmp_path):
    config = LearnerConfig.primed(num_neurons=[3, 5], selection="magnitude", layers=[0, 1], train_ffn_output_bias=True)
    config.save_pretrained(tmp_path / "config-only")
    assert LearnerConfig.from_pretrained(tmp_path / "config-only") == config

    lm = trained(config=LearnerConfig.primed(ratio=0.25, selection="random", seed=3))
    lm.save_pretrained(tmp_path / "learners")
    assert LearnerConfig.from_pretrained(tmp_path / "learners") == lm.learner_config
    lm.learner_config.save_pretrained(tmp_path / "learners")  # rewriting it keeps the labels and base facts
    restored = LearnerModel.from_pretrained(tiny_model("bert"), tmp_path / "learners")
    assert torch.equal(logits(restored), logits(lm))
    with pytest.raises(UsageError, match="holds no learners_config.json"):
        LearnerConfig.from_pretrained(tmp_path)


def test_the_frozen_full_weight_is_a_parameter_at_nn_linears_key_and_nothing_counts_or_optimizes_it():
    model = tiny_model("bert")
    original = model.bert.encoder.layer[0].intermediate.dense.weight
    total = sum(p.numel() for p in model.parameters())
    lm = get_learner_model(model, CONFIG)
    params = dict(lm.base_model.named_parameters())
    key = "bert.encoder.layer[0].intermediate.dense.weight".replace("[0]", ".0")
    assert params[key] is original and not original.requires_grad
    assert key in lm.base_model.state_dict() and key not in dict(lm.base_model.named_buffers())
    optimizer, _ = make_optimizer(lm, TrainConfig(learning_rate=1e-3), 1e-3, 0, 10, 0)
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(original) not in optimized
    counts = lm.parameter_counts()
    assert counts["total"] == total
    # 2 blocks x 16 neurons x (32 + 1 + 32), and the head: pooler 32x32+32, classifier 32x2+2
    assert (counts["learners"], counts["head"]) == (2 * 16 * 65, 32 * 32 + 32 + 32 * 2 + 2)


def test_state_dict_is_the_learner_state_with_nn_modules_signature():
    lm = trained()
    state = lm.state_dict()
    assert set(state) == set(lm.learner_state()) | {"learners_config"} and "learner_indices.1" in state
    assert all(not t.requires_grad for t in state.values())
    assert all(isinstance(t, nn.Parameter) for k, t in lm.state_dict(keep_vars=True).items()
               if "indices" not in k and k != "learners_config")
    assert set(lm.state_dict(prefix="x.")) == {f"x.{k}" for k in state}

    wrapper = nn.ModuleDict({"module": lm})  # as DDP or accelerate hold it: keys under "module."
    assert set(wrapper.state_dict()) == {f"module.{k}" for k in state}
    fresh = LearnerModel(tiny_model("bert"), CONFIG, lm.indices).eval()
    fresh_wrapper = nn.ModuleDict({"module": fresh})
    result = fresh_wrapper.load_state_dict(wrapper.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(logits(fresh), logits(lm))

    partial = {k: v for k, v in state.items() if k != "classifier.bias"} | {"bogus": torch.zeros(1)}
    result = fresh.load_state_dict(partial, strict=False)
    assert result.missing_keys == ["classifier.bias"] and result.unexpected_keys == ["bogus"]
    with pytest.raises(RuntimeError, match="Missing key"):
        fresh.load_state_dict(partial)


def test_state_dict_shape_mismatch_is_a_clear_error():
    lm = get_learner_model(tiny_model("bert"), CONFIG)
    state = dict(lm.state_dict())
    state["classifier.weight"] = torch.zeros(3, 32)
    with pytest.raises(UsageError, match=r"classifier.weight has shape \(3, 32\) but this model's is \(2, 32\)"):
        lm.load_state_dict(state)


def test_data_parallel_wrapper_saves_and_loads_the_learner_state(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        lm = trained()
        ddp = DistributedDataParallel(lm)
        state = ddp.state_dict()
        assert set(state) == {f"module.{k}" for k in lm.state_dict()}
        fresh = DistributedDataParallel(LearnerModel(tiny_model("bert"), CONFIG, lm.indices))
        fresh.load_state_dict(state)
        assert torch.equal(logits(fresh.module.eval()), logits(lm))
    finally:
        dist.destroy_process_group()


def test_a_failed_from_pretrained_leaves_the_model_as_it_was(tmp_path):
    from safetensors.torch import save_file

    lm = trained()
    lm.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "learners_model.safetensors"))
    tensors.pop("classifier.bias")
    save_file(tensors, str(tmp_path / "learners_model.safetensors"))
    model = tiny_model("bert").train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(UsageError, match=r"lacks trained tensors \['classifier.bias'\]"):
        LearnerModel.from_pretrained(model, tmp_path)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not any(isinstance(m, (LearnerRowLinear, LearnerColumnLinear)) for m in model.modules())
    assert torch.equal(logits(model.eval()), logits(tiny_model("bert").eval()))
