"""The learning-rate schedule that spans priming and learner training."""

import pytest
import torch

from conftest import tiny_model
from learners.harness.train import TrainConfig, lr_multiplier, make_optimizer


def test_linear_schedule_warms_up_then_decays_to_zero():
    values = [lr_multiplier(s, total=10, warmup=2, kind="linear") for s in range(11)]
    assert values[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert values[2:] == pytest.approx([(10 - s) / 8 for s in range(2, 11)])
    assert values[-1] == 0.0


def test_constant_schedule_holds_after_warmup():
    assert [lr_multiplier(s, 10, 1, "constant") for s in range(4)] == pytest.approx([0.5, 1, 1, 1])


def test_optimizer_rebuilt_mid_run_continues_the_schedule():
    """After priming, a new optimizer at step 4 starts where the global schedule is, not at warm-up."""
    model = tiny_model("bert")
    cfg = TrainConfig(learning_rate=1e-3)
    optimizer, scheduler = make_optimizer(model, cfg, 1e-3, start_step=4, total=10, warmup=2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 6 / 8)
    optimizer.step(), scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 5 / 8)


def test_no_weight_decay_on_biases_and_norms_and_only_trainable_parameters():
    model = tiny_model("bert")
    for name, p in model.named_parameters():
        p.requires_grad_("layer.1" in name or "classifier" in name)
    optimizer, _ = make_optimizer(model, TrainConfig(learning_rate=1e-3, weight_decay=0.01), 1e-3, 0, 10, 0)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = ([names[id(p)] for p in g["params"]] for g in optimizer.param_groups)
    assert optimizer.param_groups[0]["weight_decay"] == 0.01 and optimizer.param_groups[1]["weight_decay"] == 0.0
    assert all(n.endswith("weight") and "LayerNorm" not in n for n in decay)
    assert all(n.endswith("bias") or "LayerNorm" in n for n in no_decay)
    assert len(decay) + len(no_decay) == sum(1 for p in model.parameters() if p.requires_grad)


def test_rewarm_ramps_the_learner_optimizers_rate_over_its_first_steps():
    """After priming a fresh AdamW starts at 10x priming's rate; rewarm ramps it up on top of the run's schedule."""
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(learning_rate=1e-3, lr_scheduler="constant")
    optimizer, scheduler = make_optimizer(model, cfg, 1e-3, start_step=5, total=20, warmup=2, rewarm=3)
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step(), scheduler.step()
    assert rates == pytest.approx([1e-3 * 1 / 4, 1e-3 * 2 / 4, 1e-3 * 3 / 4, 1e-3, 1e-3])
