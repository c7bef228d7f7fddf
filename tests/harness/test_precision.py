"""bf16 on the CPU: which precision a run uses, frozen linear weights kept in bf16, and saved results in fp32."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_batch, tiny_model
from learners import LearnerConfig, LearnerModel, get_learner_model
from learners.errors import UsageError
from learners.harness import precision
from learners.learner.layer import _LearnerLinear
from learners.harness.cli import main
from learners.harness.methods import build_method
from learners.harness.train import TrainConfig, make_accelerator, make_optimizer, training_step

CPU = torch.device("cpu")


def test_auto_is_bf16_where_the_cpu_has_it_and_fp32_where_not(monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.resolve_precision("auto", CPU) == "bf16" and precision.resolve_precision("bf16", CPU) == "bf16"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.resolve_precision("auto", CPU) == "no" and capsys.readouterr().err == ""
    assert precision.resolve_precision("bf16", CPU) == "no"  # asked for, but emulated there: fp32, said in one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no native bf16" in err[0] and "running in fp32" in err[0]
    with pytest.raises(UsageError, match="fp16 needs a GPU"):
        precision.resolve_precision("fp16", CPU)
    assert precision.resolve_precision("no", CPU) == "no"


def test_frozen_linears_go_to_bf16_and_what_trains_stays_fp32():
    lm = get_learner_model(tiny_model("bert"), LearnerConfig.primed(ratio=0.25, selection="random", layers="skip-1",
                                                             train_ffn_output_bias=True, train_layer_norm=True))
    assert precision.cast_frozen_linears(lm, torch.bfloat16) > 0
    linears = [m for m in lm.modules() if isinstance(m, (torch.nn.Linear, _LearnerLinear))]
    frozen = {id(t) for m in linears for t in (m.weight, m.bias) if not t.requires_grad}
    assert len(frozen) == 2 * 6 * 2 - 1  # weight and bias of each block's 6 linears, but the learner block's trained b2
    for name, p in lm.named_parameters():
        assert p.dtype == (torch.bfloat16 if id(p) in frozen else torch.float32), name
    embeddings = lm.base_model.bert.embeddings
    assert embeddings.word_embeddings.weight.dtype == embeddings.LayerNorm.weight.dtype == torch.float32


@pytest.mark.parametrize("method", ["learners", "bitfit", "lora", "full"])
def test_a_step_with_frozen_weights_in_bf16_computes_what_autocast_computes(method):
    """Kept in bf16, a frozen weight is what autocast casts it to at every step: the same loss, the same update."""
    options = {"selection": "magnitude", "frozen_prefix_cache_mb": 0} if method == "learners" else {}
    models = []
    for cast in (False, True):
        model = build_method(method, options).prepare(tiny_model("bert"), iter([tiny_batch()]))
        if cast:
            precision.cast_frozen_linears(model, torch.bfloat16)
        accelerator = make_accelerator(TrainConfig(learning_rate=1e-2, mixed_precision="bf16"))
        optimizer, scheduler = make_optimizer(model, TrainConfig(learning_rate=1e-2), 1e-2, 0, 10, 0)
        model, optimizer = accelerator.prepare(model, optimizer)
        losses = [training_step(model, tiny_batch(seed=s), optimizer, scheduler, accelerator, 1.0)[0] for s in range(3)]
        models.append((losses, {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}))
    (autocast_losses, autocast_params), (kept_losses, kept_params) = models
    assert torch.equal(torch.stack(kept_losses), torch.stack(autocast_losses))
    assert all(torch.equal(kept_params[n], p) for n, p in autocast_params.items())


def test_a_bf16_run_saves_fp32_learners_and_an_exact_fp32_merge(tmp_path, tiny_model_dir):
    rows = [f"word{i % 7} thing{i % 5},{'ab'[i % 2]}" for i in range(32)]
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "dev.csv").write_text("text,label\n" + "\n".join(rows[:8]) + "\n")
    out = tmp_path / "run"
    assert main(["finetune", "--train-file", str(tmp_path / "train.csv"), "--validation-file", str(tmp_path / "dev.csv"),
                 "--model", str(tiny_model_dir), "--max-steps", "3", "--batch-size", "8", "--mixed-precision", "bf16",
                 "--output-dir", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["mixed_precision"] == "bf16" and results["frozen_prefix_cache"]["misses"] > 0  # the trained model's
    merged = load_file(str(out / "model" / "model.safetensors"))
    assert {t.dtype for t in merged.values()} == {torch.float32}
    assert {t.dtype for t in load_file(str(out / "learners" / "learners_model.safetensors")).values()} <= {torch.float32,
                                                                                                           torch.int64}
    from transformers import AutoModelForSequenceClassification
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    expected = LearnerModel.from_pretrained(base, out / "learners").merge_and_unload().state_dict()
    assert set(merged) <= set(expected) and all(torch.equal(merged[k], expected[k]) for k in merged)


@pytest.mark.slow
def test_a_compiled_run_with_length_buckets_trains_as_the_eager_one(tmp_path, tiny_model_dir, capsys):
    """--compile with --pad-to-multiple-of: the learners' cache goes off (said in a line), and the trained learners
    are the eager run's up to rounding."""
    rows = [f"word{i % 7} thing{i % 5} " + "more " * (i % 9) + f",{'ab'[i % 2]}" for i in range(32)]
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "dev.csv").write_text("text,label\n" + "\n".join(rows[:8]) + "\n")
    learners = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        out = tmp_path / name
        assert main(["finetune", "--train-file", str(tmp_path / "train.csv"), "--validation-file", str(tmp_path / "dev.csv"),
                     "--model", str(tiny_model_dir), "--max-steps", "3", "--batch-size", "8", "--pad-to-multiple-of", "16",
                     "--learner-layers", "skip-1", "--output-dir", str(out), "--no-progress", *extra]) == 0
        learners[name] = load_file(str(out / "learners" / "learners_model.safetensors"))
    assert "frozen-prefix cache off with --compile" in capsys.readouterr().err
    for key, value in learners["eager"].items():
        torch.testing.assert_close(learners["compiled"][key], value, atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("mixed_precision,fused_attention", [("bf16", False), ("no", True)])
def test_a_training_step_on_the_cpu_in_bf16_runs_the_math_attention_kernel(mixed_precision, fused_attention):
    """The fused (flash) attention kernel's bf16 backward is slow on the CPU (145 ms against the math kernel's 60):
    a bf16 step asks for the math kernel; in fp32 torch's own choice (the fused kernel) stays."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    model = build_method("learners", {"selection": "magnitude", "frozen_prefix_cache_mb": 0}).prepare(
        tiny_model("bert"), iter([tiny_batch()]))
    accelerator = make_accelerator(TrainConfig(learning_rate=1e-2, mixed_precision=mixed_precision))
    optimizer, scheduler = make_optimizer(model, TrainConfig(learning_rate=1e-2), 1e-2, 0, 10, 0)
    model, optimizer = accelerator.prepare(model, optimizer)
    batch = {k: v for k, v in tiny_batch().items() if k != "attention_mask"}
    with Ops() as ops:
        training_step(model.train(), batch, optimizer, scheduler, accelerator, 1.0)
    assert any(name.startswith("_scaled_dot_product_flash_attention") for name in ops.names) == fused_attention
