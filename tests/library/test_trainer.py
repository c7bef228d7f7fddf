"""A LearnerModel in a real `transformers.Trainer` (CPU): columns, labels, evaluation, small checkpoints,
resuming, gradient checkpointing."""

import copy

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments, default_data_collator

from conftest import VOCAB, tiny_batch, tiny_model
from learners import LearnerConfig, LearnerModel, get_learner_model

CONFIG = LearnerConfig.primed(ratio=0.25, selection="random", seed=1)


def dataset(n=24, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, length), generator=g)
    return Dataset.from_dict({
        "input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
        "labels": torch.randint(0, 2, (n,), generator=g).tolist(),
        # not a forward argument: Trainer must drop it, or the model's forward fails on it
        "sentence_id": [[i] * length for i in range(n)],
    })


def accuracy(prediction):
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def trainer(model, out, steps=4, **kwargs):
    args = TrainingArguments(output_dir=str(out), use_cpu=True, report_to=[], max_steps=steps, learning_rate=1e-2,
                             per_device_train_batch_size=4, per_device_eval_batch_size=8, seed=0, disable_tqdm=True,
                             logging_strategy="no", save_strategy=kwargs.pop("save_strategy", "no"),
                             dataloader_num_workers=0, **kwargs)
    return Trainer(model=model, args=args, train_dataset=dataset(), eval_dataset=dataset(8, seed=1),
                   data_collator=default_data_collator, compute_metrics=accuracy)


def learner_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_trainer_trains_evaluates_and_saves_the_small_learner_state(tmp_path):
    model = get_learner_model(tiny_model("bert"), CONFIG)
    before = learner_state(model)
    t = trainer(model, tmp_path / "run")
    assert t.label_names == ["labels"]  # found through the forward signature LearnerModel shows
    t.train()  # would fail on `sentence_id` if the columns were not pruned
    assert any(not torch.equal(v, before[k]) for k, v in learner_state(model).items() if "indices" not in k)
    metrics = t.evaluate()
    assert {"eval_loss", "eval_accuracy"} <= set(metrics) and np.isfinite(metrics["eval_loss"])

    t.save_model(str(tmp_path / "saved"))
    saved = tmp_path / "saved" / "model.safetensors"
    tensors = load_file(str(saved))
    assert set(tensors) == set(model.state_dict()) and "learner_indices.0" in tensors
    full = sum(p.numel() for p in model.base_model.parameters())
    assert sum(t.numel() for t in tensors.values()) < 0.25 * full

    fresh = LearnerModel(tiny_model("bert"), CONFIG, model.indices)
    result = fresh.load_state_dict(tensors, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    batch = tiny_batch(seed=3)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, model(**batch).logits)


@pytest.mark.slow
def test_resume_from_checkpoint_ends_where_an_uninterrupted_run_ends(tmp_path):
    model = get_learner_model(tiny_model("bert"), CONFIG)
    indices = model.indices
    trainer(model, tmp_path / "a", steps=4, save_strategy="steps", save_steps=2).train()
    checkpoint = tmp_path / "a" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").stat().st_size < 64_000

    resumed = LearnerModel(tiny_model("bert"), CONFIG, indices)
    trainer(resumed, tmp_path / "b", steps=4).train(resume_from_checkpoint=str(checkpoint))
    for key, value in learner_state(model).items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=1e-6, rtol=0, msg=key)


def test_loading_a_trainer_checkpoint_into_other_indices_is_a_clear_error(tmp_path):
    from learners.errors import UsageError

    model = get_learner_model(tiny_model("bert"), CONFIG)
    other = get_learner_model(tiny_model("bert"), LearnerConfig.primed(ratio=0.25, selection="random", seed=2))
    with pytest.raises(UsageError, match="learner_indices.0 differs from this model's learner neurons"):
        other.load_state_dict(model.state_dict(), strict=False)


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_gradients_and_the_same_training(tmp_path):
    plain = get_learner_model(tiny_model("bert"), CONFIG)
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable()
    assert checkpointed.base_model.is_activation_checkpointing
    plain.train(), checkpointed.train()
    batch = tiny_batch()
    plain(**batch).loss.backward()
    checkpointed(**batch).loss.backward()
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    for name, p in checkpointed.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[name], atol=1e-7, rtol=0, msg=name)
    # nothing below the lowest learner block runs backward: the embeddings' output does not require grad
    assert not checkpointed.base_model.get_input_embeddings()._forward_hooks

    without = get_learner_model(tiny_model("bert"), CONFIG)
    with_gc = get_learner_model(tiny_model("bert"), CONFIG)
    trainer(without, tmp_path / "a").train()
    t = trainer(with_gc, tmp_path / "b", gradient_checkpointing=True)
    t.train()
    assert with_gc.base_model.is_activation_checkpointing
    for key, value in learner_state(without).items():
        torch.testing.assert_close(with_gc.state_dict()[key], value, atol=1e-6, rtol=0, msg=key)


@pytest.mark.slow
def test_load_best_model_at_end_restores_the_best_evaluations_learners(tmp_path):
    """Trainer's best-checkpoint restore works on the small learner checkpoints (examples/glue_trainer.py uses it)."""
    model = get_learner_model(tiny_model("bert"), CONFIG)
    t = trainer(model, tmp_path / "run", steps=6, eval_strategy="steps", eval_steps=1, save_strategy="steps",
                save_steps=1, load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=False)
    t.train()
    best = t.state.best_model_checkpoint
    assert best is not None and best != str(tmp_path / "run" / "checkpoint-6")  # else the test shows nothing
    saved = load_file(str(tmp_path / "run" / best.split("/")[-1] / "model.safetensors"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
