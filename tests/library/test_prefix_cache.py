"""The frozen-prefix cache (learners.learner.prefix_cache): a step on a cached example skips the frozen blocks
below the learners, and changes nothing but time: same logits and gradients as without it (to rounding), the
same values whether an example was cached or not (exactly), nothing cached where the frozen part is random."""

import copy
import warnings

import pytest
import torch

from conftest import FAMILIES, tiny_batch, tiny_model
from learners.errors import UsageError
from learners.harness.methods import build_method
from learners.learner import LearnerConfig, get_learner_model

CACHED_FAMILIES = ["bert", "distilbert", "roberta", "electra"]  # blocks that take the hidden states and the mask alone
RELATIVE_POSITION_FAMILIES = [f for f in FAMILIES if f not in CACHED_FAMILIES]  # MPNet, DeBERTa-v2


def learner_model(family="bert", layers="top-1", frozen_dropout=False, dropout=True, **config):
    model = tiny_model(family, layers=3, dropout=dropout)
    lm = get_learner_model(model, LearnerConfig.primed(ratio=0.25, selection="magnitude", layers=layers,
                                                frozen_dropout=frozen_dropout, **config))
    return lm.train()


def learner_grads(lm, batch):
    lm.zero_grad()
    lm(**batch).loss.backward()
    return [p.grad.clone() for p in lm.parameters() if p.requires_grad]


def frozen_attention_calls(lm) -> list[int]:
    """A counter of calls into the frozen blocks' attention (it is only reached when a block really runs)."""
    calls = [0]
    for block in lm.frozen_blocks_below_learners():
        block.get_submodule("attention").register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("family", CACHED_FAMILIES)
def test_cached_steps_give_the_uncached_logits_and_gradients_and_skip_the_frozen_blocks(family):
    lm = learner_model(family, dropout=False)  # no dropout anywhere: with and without the cache are comparable
    batch = tiny_batch(batch_size=4, length=9)
    reference_logits, reference_grads = lm(**batch).logits.detach(), learner_grads(lm, batch)
    cache = lm.enable_frozen_prefix_cache(max_mb=1)
    calls = frozen_attention_calls(lm)
    first, first_grads = lm(**batch).logits.detach(), learner_grads(lm, batch)
    assert calls[0] == 4 * 2  # the 2 frozen blocks ran once per example in the first call, not at all in the second
    assert (cache.misses, cache.hits, len(cache.entries)) == (4, 4, 4)
    second, second_grads = lm(**batch).logits.detach(), learner_grads(lm, batch)
    assert calls[0] == 8 and cache.hits == 12
    assert torch.equal(first, second) and all(torch.equal(a, b) for a, b in zip(first_grads, second_grads))
    torch.testing.assert_close(first, reference_logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(first_grads, reference_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert [row.shape[0] for row in cache.entries.values()] == [6, 9, 9, 9]  # real tokens only


def test_an_examples_cached_value_does_not_depend_on_its_batch():
    """Canonical values: the same sentence alone, or padded to a longer batch, is cached bit for bit the same."""
    lm = learner_model()
    batch = tiny_batch(batch_size=4, length=9)
    lm.enable_frozen_prefix_cache()
    lm(**batch)
    alone = dict(lm.frozen_prefix_cache.entries)
    lm.enable_frozen_prefix_cache()  # a new, empty cache
    longer = tiny_batch(batch_size=3, length=14, seed=5)
    padded = {"input_ids": torch.cat([longer["input_ids"][:, :14], torch.zeros(1, 14, dtype=torch.long)]),
              "attention_mask": torch.cat([longer["attention_mask"], torch.zeros(1, 14, dtype=torch.long)]),
              "labels": torch.cat([longer["labels"], batch["labels"][1:2]])}
    padded["input_ids"][3, :9], padded["attention_mask"][3, :9] = batch["input_ids"][1], 1
    lm(**padded)
    key = batch["input_ids"][1].numpy().tobytes()
    assert torch.equal(lm.frozen_prefix_cache.entries[key], alone[key])


def test_with_frozen_dropout_on_training_steps_bypass_the_cache_and_evaluation_uses_it():
    lm = learner_model(frozen_dropout=True)
    cache = lm.enable_frozen_prefix_cache()
    batch = tiny_batch()
    lm(**batch)
    assert len(cache.entries) == 0  # dropout below the learners: every step differs, nothing to cache
    lm.eval()
    with torch.no_grad():
        first = lm(**batch).logits
        second = lm(**batch).logits
    assert len(cache.entries) == 4 and cache.hits == 4 and torch.equal(first, second)


def test_a_change_to_a_frozen_weight_empties_the_cache():
    lm = learner_model(dropout=False)
    cache = lm.enable_frozen_prefix_cache()
    batch = tiny_batch()
    lm(**batch)
    with torch.no_grad():
        lm.base_model.bert.encoder.layer[0].attention.output.dense.weight.mul_(1.5)
        cached = lm(**batch).logits
    lm.disable_frozen_prefix_cache()
    with torch.no_grad():
        torch.testing.assert_close(cached, lm(**batch).logits, atol=1e-5, rtol=1e-5)
    assert cache.misses == 8 and cache.hits == 0


def test_calls_the_cache_cannot_serve_run_the_model_as_without_it():
    lm = learner_model(dropout=False).eval()
    batch = tiny_batch()
    left_padded = {**batch, "attention_mask": batch["attention_mask"].flip(1)}
    with torch.no_grad():
        plain = [lm(**left_padded).logits, lm(**batch, output_hidden_states=True).hidden_states]
        cache = lm.enable_frozen_prefix_cache()
        cached = [lm(**left_padded).logits, lm(**batch, output_hidden_states=True).hidden_states]
    assert torch.equal(plain[0], cached[0])
    assert all(torch.equal(a, b) for a, b in zip(plain[1], cached[1]))  # the frozen blocks' outputs are real
    assert len(cache.entries) == 0


def test_a_full_cache_stores_no_more_runs_the_rest_batched_and_stays_correct():
    lm = learner_model(dropout=False)
    batch = tiny_batch()
    reference = lm(**batch).logits.detach()
    cache = lm.enable_frozen_prefix_cache(max_mb=2 * 9 * 32 * 4 / 2**20)  # room for two examples
    calls = frozen_attention_calls(lm)
    with pytest.warns(UserWarning, match="frozen-prefix cache full"):
        logits = lm(**batch).logits.detach()
    assert len(cache.entries) == 2 and calls[0] == 4 * 2  # the first call still went example by example
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    logits = lm(**batch).logits.detach()
    assert calls[0] == 4 * 2 + 2 and (cache.hits, cache.misses) == (2, 6)  # the 2 misses: once per block, batched
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", RELATIVE_POSITION_FAMILIES)
def test_models_whose_blocks_take_batch_wide_position_terms_are_refused_or_skipped(family, capsys):
    """MPNet's and DeBERTa's encoders compute relative-position terms for the batch and give them to every block:
    a block run on one example alone would get none (MPNet: silently different values; DeBERTa: a crash)."""
    assert RELATIVE_POSITION_FAMILIES == ["mpnet", "deberta-v2"]
    lm = learner_model(family)
    with pytest.raises(UsageError, match=rf"supports model types bert, .* not '{family}': .*relative positions.*leave it off"):
        lm.enable_frozen_prefix_cache()
    assert lm.frozen_prefix_cache is None
    # the fine-tuning harness turns its default cache off and says why; asked for by name, it stops before training
    method = build_method("learners", {"layers": "top-1", "selection": "magnitude"})
    model = method.prepare(tiny_model(family, layers=3), batches=None)
    assert model.frozen_prefix_cache is None and "frozen-prefix cache off" in capsys.readouterr().err
    asked = build_method("learners", {"layers": "top-1", "frozen_prefix_cache_mb": 64})
    with pytest.raises(UsageError, match=r"--frozen-prefix-cache-mb: .* drop the option for this model"):
        asked.check(tiny_model(family, layers=3))


def test_learners_in_the_lowest_block_have_nothing_to_cache():
    lm = learner_model(layers="all")
    with pytest.raises(UsageError, match="top-N"):
        lm.enable_frozen_prefix_cache()


def test_the_cache_follows_set_switches_and_leaves_no_trace_after_unload(tmp_path):
    lm = learner_model(dropout=False)
    lm.save_pretrained(tmp_path / "top1")
    blocks = lm.frozen_blocks_below_learners()
    lm.enable_frozen_prefix_cache(max_mb=4)
    lm.load_learners(tmp_path / "top1", "again")
    lm.set_learners("again")
    assert lm.frozen_prefix_cache is not None and len(lm.frozen_prefix_cache.entries) == 0
    with lm.disable_learners():
        assert lm.frozen_prefix_cache is None
    assert lm.frozen_prefix_cache.max_bytes == 4 * 2**20
    base = lm.unload()
    assert all("forward" not in block.__dict__ for block in blocks)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in base.modules())


def test_a_deep_copy_has_its_own_cache():
    lm = learner_model(dropout=False)
    lm.enable_frozen_prefix_cache()
    batch = tiny_batch()
    lm(**batch)
    twin = copy.deepcopy(lm)
    with torch.no_grad():
        twin.base_model.bert.embeddings.word_embeddings.weight.mul_(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twin_logits, logits = twin(**batch).logits, lm(**batch).logits
    assert twin.frozen_prefix_cache is not lm.frozen_prefix_cache and twin.frozen_prefix_cache.misses == 8
    assert lm.frozen_prefix_cache.hits == 4 and not torch.allclose(twin_logits, logits)


def test_a_saved_model_keeps_its_cache_on_but_not_its_values(tmp_path):
    lm = learner_model().eval()
    lm.enable_frozen_prefix_cache()
    batch = tiny_batch(batch_size=4, length=9)
    logits = lm(**batch).logits
    assert lm.frozen_prefix_cache.entries
    torch.save(lm, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    cache = loaded.frozen_prefix_cache
    assert cache is not None and not cache.entries and cache.bytes == 0
    assert torch.equal(loaded(**batch).logits, logits) and len(cache.entries) == 4


def test_activation_checkpointing_with_the_cache_gives_the_same_gradients():
    """Checkpointed learner blocks recompute their forward in backward from the input the cache handed them (the
    cache's hook runs outside the checkpoint), so a cached step's gradients are those without checkpointing."""
    lm = learner_model(layers="top-2", dropout=False)
    batch = tiny_batch(batch_size=4, length=9)
    lm.enable_frozen_prefix_cache()
    learner_grads(lm, batch)  # fills the cache
    plain = learner_grads(lm, batch)
    lm.gradient_checkpointing_enable()
    assert lm.base_model.is_activation_checkpointing
    cache = lm.frozen_prefix_cache
    hits = cache.hits
    checkpointed = learner_grads(lm, batch)
    assert cache.hits == hits + 4  # served by the cache
    for a, b in zip(checkpointed, plain):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_the_harness_default_is_on_for_the_cpu_only_and_a_size_asked_for_turns_it_on_anywhere(capsys):
    """On a GPU, filling the cache (each example alone) costs more than a cached step saves (docs/journal.md#gpu-h200),
    so the fine-tuning harness keeps its default cache to the CPU. The meta device stands in for an accelerator
    (the decision reads the model's device type; nothing is computed there)."""
    default = build_method("learners", {"layers": "top-1", "selection": "magnitude"})
    on_cpu = default.with_prefix_cache(learner_model(dropout=False))
    assert on_cpu.frozen_prefix_cache is not None
    elsewhere = default.with_prefix_cache(learner_model(dropout=False).to("meta"))
    assert elsewhere.frozen_prefix_cache is None
    assert "frozen-prefix cache off on meta" in capsys.readouterr().err
    asked = build_method("learners", {"layers": "top-1", "selection": "magnitude", "frozen_prefix_cache_mb": 64})
    assert asked.with_prefix_cache(learner_model(dropout=False).to("meta")).frozen_prefix_cache.max_bytes == 64 * 2**20
    off = build_method("learners", {"layers": "top-1", "selection": "magnitude", "frozen_prefix_cache_mb": 0})
    assert off.with_prefix_cache(learner_model(dropout=False)).frozen_prefix_cache is None
