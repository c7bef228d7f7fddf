"""Learner modules under a token classification head (BertForTokenClassification, DistilBERT's): the library
works unchanged per token as per sequence. Gradients are the full model's slices, merging and saving are exact,
priming reconfigures to base model + learners + head, several tag sets share one backbone, and the frozen-prefix
cache gives the per-token logits and gradients of a run without it."""

import copy

import pytest
import torch
from transformers import AutoModelForTokenClassification

from conftest import (FFN_NAMES, VOCAB, assert_learner_gradients_match, assert_saved_and_merged_reproduce, tiny_model,
                      train_steps)
from learners import LearnerConfig, LearnerModel, Primer, get_learner_model

FAMILIES = ["bert", "distilbert"]


def tiny_tagger(family="bert", seed=0, num_labels=5, layers=2):
    """A tiny random token classification model, without dropout, with non-zero biases."""
    return tiny_model(family, seed, auto_class=AutoModelForTokenClassification, num_labels=num_labels, layers=layers)


def token_batch(batch_size=4, length=9, seed=0, num_labels=5):
    """Inputs with padding, and a tag per token: -100 on padding and on some continuation sub-tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch_size, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    labels = torch.randint(0, num_labels, (batch_size, length), generator=g)
    labels[mask == 0] = -100
    labels[:, 0] = labels[:, 4] = -100  # [CLS], a word's second piece
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train(lm, steps=3, seed=0, num_labels=5):
    return train_steps(lm, [token_batch(seed=seed + step, num_labels=num_labels) for step in range(steps)])


@pytest.mark.parametrize("family", FAMILIES)
def test_learner_gradients_equal_the_full_models_slices_per_token(family):
    model = tiny_tagger(family)
    reference = copy.deepcopy(model)
    lm = get_learner_model(model, LearnerConfig.primed(ratio=0.25, selection="random", seed=1))
    batch = token_batch()
    assert lm(**batch).logits.shape == (4, 9, 5)
    reference(**batch).loss.backward()
    lm(**batch).loss.backward()
    assert lm.head_names == {"classifier.weight", "classifier.bias"}  # the token head: no pooler
    assert_learner_gradients_match(lm, reference, family)


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_and_save_load_reproduce_the_trained_tagger(family, tmp_path):
    lm = train(get_learner_model(tiny_tagger(family), LearnerConfig.primed(ratio=0.25, selection="random", seed=1)))
    merged = assert_saved_and_merged_reproduce(lm, tiny_tagger(family), token_batch(seed=7), tmp_path / "learners")
    assert type(merged).__name__.endswith("ForTokenClassification")


def test_priming_a_tagger_reconfigures_to_base_plus_learners_plus_head():
    model = tiny_tagger()
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    primer = Primer(model, LearnerConfig.primed(ratio=0.25))
    optimizer = torch.optim.AdamW(primer.parameters(), lr=1e-2)
    for step in range(3):
        model(**token_batch(seed=step)).loss.backward()
        optimizer.step(), optimizer.zero_grad()
    lm = primer.reconfigure().eval()
    assert [i.numel() for i in lm.indices] == [16, 16]
    merged = copy.deepcopy(lm).merge_and_unload()
    up_name, _ = FFN_NAMES["bert"]
    for block, idx in zip(lm.ffn_blocks, lm.indices):  # outside the learner rows, W1 is the pre-trained one again
        rest = torch.ones(64, dtype=torch.bool)
        rest[idx] = False
        name = f"{block.name}.{up_name}.weight"
        assert torch.equal(merged.get_parameter(name)[rest], pretrained[name][rest])
        assert not torch.equal(merged.get_parameter(name)[idx], pretrained[name][idx])  # the warm start
    assert not torch.equal(merged.classifier.weight, pretrained["classifier.weight"])  # the head keeps its priming
    batch = token_batch(seed=5)
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(**batch).logits, lm(**batch).logits, atol=1e-6, rtol=0)


def test_several_tag_sets_share_one_backbone_exactly(tmp_path):
    """Two taggers with other tag counts, blocks and neurons, each saved; loaded as sets on one base model,
    switching gives each one's own per-token logits."""
    tasks = {"ner": (5, LearnerConfig.primed(ratio=0.25, selection="random", seed=1)),
             "pos": (7, LearnerConfig.primed(num_neurons=5, selection="random", seed=2, layers=[1]))}
    for task, (labels, config) in tasks.items():
        lm = train(get_learner_model(tiny_tagger(num_labels=labels), config), num_labels=labels, seed=len(task))
        lm.save_pretrained(tmp_path / task)
    shared = LearnerModel.from_pretrained(tiny_tagger(), tmp_path / "ner", name="ner")
    shared.load_learners(tmp_path / "pos", "pos")
    batch = token_batch(seed=9)
    with torch.no_grad():
        for task, (labels, _) in [*tasks.items(), *tasks.items()]:
            shared.set_learners(task)
            alone = LearnerModel.from_pretrained(tiny_tagger(), tmp_path / task).eval()  # the same base, its head
            assert shared(**batch).logits.shape[-1] == labels
            assert torch.equal(shared(**batch).logits, alone(**batch).logits)


def test_the_frozen_prefix_cache_gives_the_uncached_per_token_logits_and_gradients():
    lm = get_learner_model(tiny_tagger(layers=3), LearnerConfig.primed(ratio=0.25, selection="magnitude",
                                                                     layers="top-1", frozen_dropout=False)).train()
    batch = token_batch()

    def step():
        lm.zero_grad()
        out = lm(**batch)
        out.loss.backward()
        return out.logits.detach(), [p.grad.clone() for p in lm.parameters() if p.requires_grad]

    reference_logits, reference_grads = step()
    cache = lm.enable_frozen_prefix_cache(max_mb=1)
    first, _ = step()
    cached, cached_grads = step()
    assert (cache.misses, cache.hits) == (4, 4)
    assert torch.equal(first, cached)
    # the cache keeps real tokens only: padding positions' logits differ, and nothing reads them (their label is
    # -100, and predictions are read at words)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(cached[real], reference_logits[real], atol=1e-5, rtol=1e-5)
    for a, b in zip(cached_grads, reference_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
