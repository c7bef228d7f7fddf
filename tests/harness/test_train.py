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


class HostReads:
    """Records every read of a tensor's values on the host while inside: `.item()`, `bool(t)`, `int(t)` (the
    dispatcher's `_local_scalar_dense`) and `.tolist()`, `.cpu()`, `.numpy()`, each with the file that asked.
    On a GPU each makes the host wait for the device; a training step must make none."""

    def __enter__(self):
        import traceback

        from torch.utils._python_dispatch import TorchDispatchMode

        self.reads = []
        reads = self.reads

        def where() -> str:
            frames = [f.filename for f in traceback.extract_stack()[:-2]]
            return next((f for f in reversed(frames) if "/torch/" not in f), frames[-1])

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.__name__.startswith("_local_scalar_dense"):
                    reads.append(("item", where()))
                return func(*args, **(kwargs or {}))

        self.patched = {}
        for name in ("tolist", "cpu", "numpy"):
            original = getattr(torch.Tensor, name)
            self.patched[name] = original

            def spy(tensor, *args, _name=name, _original=original, **kwargs):
                reads.append((_name, where()))
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, spy)
        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        for name, original in self.patched.items():
            setattr(torch.Tensor, name, original)


@pytest.mark.parametrize("method", ["learners", "full", "bitfit", "lora"])
def test_a_training_step_reads_nothing_on_the_host(method):
    """No `.item()`, `bool()`, `.tolist()` or `.cpu()` inside a step (a GPU would wait for each): the loss and the
    gradient norm stay on the device until the step log is read at a logging point, and a non-finite one skips the
    update on the device. transformers itself reads a padded batch's attention mask (is anything masked?): the
    collator drops a mask that masks nothing, so an unpadded batch makes no read at all, and a padded one only
    that read, once per forward pass."""
    from accelerate import Accelerator

    from conftest import tiny_batch
    from learners.harness.methods import build_method
    from learners.harness.train import StepLog, trainable_parameters, training_step

    options = {"selection": "magnitude", "frozen_prefix_cache_mb": 0} if method == "learners" else {}
    model = build_method(method, options).prepare(tiny_model("bert"), iter([tiny_batch()]))
    optimizer, scheduler = make_optimizer(model, TrainConfig(learning_rate=1e-3), 1e-3, 0, 10, 0)
    accelerator, log = Accelerator(cpu=True), StepLog()
    model, optimizer = accelerator.prepare(model, optimizer)
    params = trainable_parameters(optimizer)
    unpadded = {k: v for k, v in tiny_batch(seed=1).items() if k != "attention_mask"}
    padded = tiny_batch(seed=2)
    training_step(model, padded, optimizer, scheduler, accelerator, 1.0, params)  # the first step sets up state
    with HostReads() as unpadded_step:
        log.add(2, *training_step(model, unpadded, optimizer, scheduler, accelerator, 1.0, params))
    with HostReads() as padded_step:
        log.add(3, *training_step(model, padded, optimizer, scheduler, accelerator, 1.0, params))
    assert unpadded_step.reads == []
    assert [file for _, file in padded_step.reads] == [f for f in [padded_step.reads[0][1]] if f.endswith(
        "transformers/masking_utils.py")], padded_step.reads
    assert [step for step, _, _ in log.check()] == [2, 3]


def test_the_collator_drops_a_mask_that_masks_nothing_and_pads_to_a_multiple():
    from transformers import AutoTokenizer

    from learners.harness.collate import Collator
    from learners.harness.models import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    same = [tokenizer("one two three"), tokenizer("four five six")]
    assert "attention_mask" not in Collator(tokenizer)(same)
    mixed = [tokenizer("one two three"), tokenizer("four")]
    batch = Collator(tokenizer)(mixed)
    assert batch["input_ids"].shape == (2, 5) and batch["attention_mask"][1].tolist() == [1, 1, 1, 0, 0]
    assert Collator(tokenizer, pad_to_multiple_of=8)(mixed)["input_ids"].shape == (2, 8)
    assert Collator(tokenizer, pad_to_multiple_of=8)(same)["attention_mask"].shape == (2, 8)  # padded: kept
