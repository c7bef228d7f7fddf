"""Priming through the public API (learners.Primer, learners.learner.trainer) with any training loop."""

import socket

import pytest
import torch

from conftest import tiny_batch, tiny_model
from learners import LearnerConfig, LearnerModel, Primer, get_learner_model
from learners.errors import UsageError
from learners.harness.methods import build_method
from learners.learner.ffn import head_parameter_names, locate_ffn_blocks
from learners.learner.plan import plan_learners
from learners.learner.selection import choose_layers, gradient_scores, top_k

BATCHES = [tiny_batch(seed=s) for s in range(6)]


def train_steps(model, steps: int = 4, batches: list[dict] = BATCHES, seed: int = 1) -> None:
    """A plain PyTorch loop: AdamW over what requires gradients, `steps` batches, dropout on."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for batch in batches[:steps]:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


CASES = {
    "all": {"ratio": 0.25, "layers": "all"},
    "ffn": {"ratio": 0.25, "layers": "all", "priming_scope": "ffn"},
    "learner-layers": {"ratio": 0.25, "layers": "top-2", "priming_scope": "learner-layers"},
    "reset": {"ratio": 0.25, "layers": "all", "reset_after_priming": True},
    "auto, whole model": {"num_neurons": 4, "layers": "auto", "layer_coverage": 0.6},
    "auto, learner-layers probe": {"num_neurons": 4, "layers": "auto", "priming_scope": "learner-layers",
                                   "gradient_batches": 2},
    "b2 and LayerNorm": {"ratio": 0.25, "layers": "all", "train_ffn_output_bias": True, "train_layer_norm": True},
}


@pytest.mark.parametrize("case", CASES)
def test_primer_with_a_plain_loop_gives_exactly_what_the_cli_method_gives(case):
    options = CASES[case]
    # The CLI selects at random by default. Its frozen-prefix cache is off here: cached prefixes are computed per
    # example, which with several threads can differ from the batched pass in the last bit (test_prefix_cache.py
    # checks the cache); this test compares the two priming paths exactly.
    method = build_method("learners", {**options, "selection": "priming", "frozen_prefix_cache_mb": 0})
    cli_model = method.prepare(tiny_model("bert", dropout=True, layers=4), iter(BATCHES))
    train_steps(cli_model)
    cli = method.after_priming(cli_model, iter(BATCHES))

    # ... and trains b2 and the LayerNorm by default, and runs the frozen part and the learner blocks' attention
    # without dropout, which the library's LearnerConfig leaves to the user
    library_options = {"train_ffn_output_bias": True, "train_layer_norm": True, "frozen_dropout": False,
                       "attention_dropout": False, **options}
    primer = Primer(tiny_model("bert", dropout=True, layers=4), LearnerConfig.primed(**library_options), batches=iter(BATCHES))
    train_steps(primer.model)
    ours = primer.reconfigure()

    assert isinstance(ours, LearnerModel) and ours.learner_config == cli.learner_config
    assert [i.tolist() for i in ours.indices] == [i.tolist() for i in cli.indices]
    assert (primer.layer_signal, primer.probe_signal) == (method.layer_signal, method.probe_signal)
    ours_state, cli_state = ours.state_dict(), cli.state_dict()
    assert ours_state.keys() == cli_state.keys()
    assert all(torch.equal(ours_state[k], cli_state[k]) for k in cli_state)
    trainable = lambda m: {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable(ours) == trainable(cli)
    ours.eval(), cli.eval()
    with torch.no_grad():
        assert torch.equal(ours(**BATCHES[5]).logits, cli(**BATCHES[5]).logits)


def movement(base, primed, block_name: str) -> torch.Tensor:
    """|dW1[i,:]|_1 + |dW2[:,i]|_1 + |db1[i]| of one BERT block, by hand."""
    p = f"{block_name}.intermediate.dense."
    q = f"{block_name}.output.dense."
    return ((primed[p + "weight"] - base[p + "weight"]).abs().sum(1) + (primed[q + "weight"] - base[q + "weight"]).abs().sum(0)
            + (primed[p + "bias"] - base[p + "bias"]).abs())


@pytest.mark.parametrize("scope", ["all", "ffn", "learner-layers"])
@pytest.mark.parametrize("reset", [False, True])
def test_reconfigured_model_is_base_plus_the_most_moved_neurons_plus_the_primed_head(scope, reset):
    model = tiny_model("bert", dropout=True, layers=4)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = LearnerConfig.primed(num_neurons=5, layers="top-3", priming_scope=scope, reset_after_priming=reset)
    primer = Primer(model, config)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    head = set(head_parameter_names(model))
    blocks = locate_ffn_blocks(model)
    ffn_names = lambda bs: {f"{b.name}.{m}.{k}" for b in bs for m in ("intermediate.dense", "output.dense")
                            for k in ("weight", "bias")}
    expected = {"all": set(base), "ffn": ffn_names(blocks) | head, "learner-layers": ffn_names(blocks[1:]) | head}[scope]
    assert trained == expected
    assert [id(p) for n, p in model.named_parameters() if n in trained] == [id(p) for p in primer.parameters()]
    train_steps(model)
    primed = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner_blocks = [b.name for b in blocks[1:]]
    chosen = {name: top_k(movement(base, primed, name), 5) for name in learner_blocks}

    plain = primer.reconfigure().merge_and_unload()
    final = dict(plain.named_parameters())
    learner_slices = {}  # parameter name -> (index into the tensor, kept value)
    for name, idx in chosen.items():
        up, down = f"{name}.intermediate.dense.", f"{name}.output.dense."
        learner_slices.update({up + "weight": (idx, primed[up + "weight"][idx]), up + "bias": (idx, primed[up + "bias"][idx]),
                               down + "weight": ((slice(None), idx), primed[down + "weight"][:, idx])})
    for n, value in final.items():
        if n in head:
            assert torch.equal(value, primed[n]) and not torch.equal(value, base[n]), n  # the primed head is kept
            continue
        expected_value = base[n].clone()
        if n in learner_slices and not reset:
            where, kept = learner_slices[n]
            expected_value[where] = kept  # the primed warm start
            assert not torch.equal(kept, base[n][where])
        assert torch.equal(value, expected_value), n


def test_auto_layers_with_whole_model_priming_are_chosen_by_the_movement():
    model = tiny_model("bert", dropout=True, layers=4)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    primer = Primer(model, LearnerConfig.primed(num_neurons=4, layers="auto", layer_coverage=0.6))
    assert primer.probe_signal is None  # the whole model primes: no probe needed
    train_steps(model)
    primed = {n: p.detach().clone() for n, p in model.named_parameters()}
    scores = [movement(base, primed, b.name) for b in locate_ffn_blocks(model)]
    lm = primer.reconfigure()
    assert lm.learner_config.layers == choose_layers(scores, [4] * 4, 0.6)
    assert primer.layer_signal == [round(float(s.sum()), 4) for s in scores]
    assert primer.config is lm.learner_config


def test_auto_layers_with_learner_layer_priming_are_probed_before_priming():
    config = LearnerConfig.primed(num_neurons=4, layers="auto", priming_scope="learner-layers", gradient_batches=2)
    model = tiny_model("bert", dropout=True, layers=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    primer = Primer(model, config, batches=iter(BATCHES))
    probe_model = tiny_model("bert", dropout=True, layers=4)
    probe = gradient_scores(probe_model, plan_learners(probe_model, LearnerConfig.primed(num_neurons=4)), BATCHES[:2])
    assert primer.config.layers == choose_layers(probe, [4] * 4, 0.5)
    assert primer.probe_signal == [round(float(s.sum()), 6) for s in probe]
    assert all(torch.equal(p, before[n]) and p.grad is None for n, p in model.named_parameters())  # the probe updated nothing
    blocks_trained = {int(n.split(".")[3]) for n, p in model.named_parameters() if p.requires_grad and ".layer." in n}
    assert blocks_trained == set(primer.config.layers)
    train_steps(model)
    assert primer.reconfigure().learner_config.layers == primer.config.layers


def test_steps_is_the_priming_budget():
    model = tiny_model("bert")
    assert Primer(model, LearnerConfig.primed(ratio=0.25)).steps(268) == 67  # a quarter of the first epoch
    assert Primer(tiny_model("bert"), LearnerConfig.primed(ratio=0.25, priming_fraction=0.01)).steps(10) == 1  # at least one
    assert Primer(tiny_model("bert"), LearnerConfig.primed(ratio=0.25, priming_steps=5)).steps(268) == 5


def test_reconfigure_twice_is_a_clear_error():
    primer = Primer(tiny_model("bert"), LearnerConfig.primed(ratio=0.25))
    train_steps(primer.model, steps=1)
    primer.reconfigure()
    with pytest.raises(UsageError, match="already reconfigured"):
        primer.reconfigure()


def test_reconfigure_before_any_training_step_is_a_clear_error():
    model = tiny_model("bert")
    primer = Primer(model, LearnerConfig.primed(ratio=0.25))
    with pytest.raises(UsageError, match="no FFN weight moved.*primer.steps"):
        primer.reconfigure()
    train_steps(model, steps=1)  # the same primer still works once it has trained
    assert isinstance(primer.reconfigure(), LearnerModel)


@pytest.mark.parametrize("config, batches, message", [
    (LearnerConfig.primed(ratio=0.25, selection="magnitude"), None, "selection is 'magnitude'"),
    (LearnerConfig.primed(num_neurons=4, layers="auto", priming_scope="learner-layers"), None, "pass batches="),
    (LearnerConfig.primed(num_neurons=[4, 4, 4]), None, "3 counts but 2 of the model.s 2 FFN blocks get learners"),
    (LearnerConfig.primed(num_neurons=[4, 4], layers="auto"), None, "one count, not a list"),
    (LearnerConfig.primed(num_neurons=65), None, "larger than the FFN width m=64"),
    (LearnerConfig.primed(ratio=0.25, layers="top-3"), None, "the model has 2"),
])
def test_a_config_that_does_not_fit_fails_before_priming(config, batches, message):
    model = tiny_model("bert")
    with pytest.raises(UsageError, match=message):
        Primer(model, config, batches=batches)
    assert all(p.requires_grad for p in model.parameters())  # nothing was changed


def test_a_model_with_learners_cannot_be_primed_and_get_learner_model_points_at_the_primer():
    lm = get_learner_model(tiny_model("bert"), LearnerConfig.primed(ratio=0.25, selection="random"))
    with pytest.raises(UsageError, match="already has learners"):
        Primer(lm, LearnerConfig.primed(ratio=0.25))
    with pytest.raises(UsageError, match=r"learners\.Primer\(model, config\).*reconfigure\(\).*prime_with_trainer"):
        get_learner_model(tiny_model("bert"), LearnerConfig.primed(ratio=0.25))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_batches(rank: int) -> list[dict]:
    return [tiny_batch(seed=10 * rank + s) for s in range(4)]


def _prime_on_rank(rank: int, port: int, out: str) -> None:
    """Each rank primes on its own batches (no DDP, so their weights differ) and saves what it selected."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = tiny_model("bert", dropout=True, layers=4)
        primer = Primer(model, LearnerConfig.primed(num_neurons=4, layers="auto", layer_coverage=0.6))
        train_steps(model, batches=rank_batches(rank))
        lm = primer.reconfigure()
        torch.save({"layers": lm.learner_config.layers, "indices": lm.indices}, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.slow
def test_every_data_parallel_rank_selects_rank_0s_neurons(tmp_path):
    torch.multiprocessing.start_processes(_prime_on_rank, args=(_free_port(), str(tmp_path)), nprocs=2,
                                          start_method="spawn")  # fork after OpenMP threads can hang
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["layers"] == rank1["layers"]
    assert [i.tolist() for i in rank0["indices"]] == [i.tolist() for i in rank1["indices"]]
    # and rank 0's choice is its own: the same as priming on its batches alone
    alone = tiny_model("bert", dropout=True, layers=4)
    primer = Primer(alone, LearnerConfig.primed(num_neurons=4, layers="auto", layer_coverage=0.6))
    train_steps(alone, batches=rank_batches(0))
    lm = primer.reconfigure()
    assert lm.learner_config.layers == rank0["layers"]
    assert [i.tolist() for i in lm.indices] == [i.tolist() for i in rank0["indices"]]
    # without the broadcast rank 1 would have chosen otherwise
    other = tiny_model("bert", dropout=True, layers=4)
    primer = Primer(other, LearnerConfig.primed(num_neurons=4, layers="auto", layer_coverage=0.6))
    train_steps(other, batches=rank_batches(1))
    assert [i.tolist() for i in primer.reconfigure().indices] != [i.tolist() for i in rank0["indices"]]


# ---- priming with a transformers Trainer -------------------------------------------------------------


def tiny_dataset(examples: int = 16, seed: int = 0):
    from datasets import Dataset

    batch = tiny_batch(batch_size=examples, seed=seed)
    return Dataset.from_dict({k: v.tolist() for k, v in batch.items()})


def trainer_for(model, tmp_path, learning_rate: float, **args):
    import numpy as np
    from transformers import Trainer, TrainingArguments

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    # Trainer's default optimizer (a fused AdamW in transformers 5): its steps must reach the learner layers.
    arguments = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=learning_rate,
                                  report_to="none", save_strategy="no", use_cpu=True,
                                  disable_tqdm=True, seed=0, **args)
    return Trainer(model=model, args=arguments, train_dataset=tiny_dataset(), eval_dataset=tiny_dataset(8, seed=1),
                   compute_metrics=accuracy)


def merged_weights(learner_model: LearnerModel) -> dict[str, torch.Tensor]:
    """The weights `merge_and_unload` would give, read without unloading."""
    weights = {}
    for name, module in learner_model.base_model.named_modules():
        if hasattr(module, "to_linear"):
            linear = module.to_linear()
            weights[f"{name}.weight"], weights[f"{name}.bias"] = linear.weight.detach().clone(), linear.bias.detach().clone()
    for name, p in learner_model.base_model.named_parameters():
        if not name.endswith(("learner_weight", "learner_bias")):
            weights.setdefault(name, p.detach().clone())
    return weights


@pytest.mark.slow
def test_prime_with_trainer_then_a_learner_trainer(tmp_path):
    from learners.learner.trainer import prime_with_trainer

    model = tiny_model("bert", dropout=True)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    priming = trainer_for(model, tmp_path / "priming", 1e-2, num_train_epochs=3)
    learner_model = prime_with_trainer(priming, LearnerConfig.primed(ratio=0.25, priming_fraction=0.5))
    assert priming.state.global_step == 2  # half of an epoch of 4 batches, though the arguments say 3 epochs
    assert isinstance(learner_model, LearnerModel)
    head = set(head_parameter_names(model))
    primed_head = {n: p.detach().clone() for n, p in learner_model.base_model.named_parameters() if n in head}
    assert all(not torch.equal(primed_head[n], base[n]) for n in head)

    learning = trainer_for(learner_model, tmp_path / "learners", 1e-2, num_train_epochs=2)
    before = merged_weights(learner_model)
    learning.train()
    metrics = learning.evaluate()
    assert {"eval_loss", "eval_accuracy"} <= set(metrics) and 0 <= metrics["eval_accuracy"] <= 1  # labels were found
    assert learning.state.global_step == 8
    indices = learner_model.indices
    after = dict(learner_model.merge_and_unload().named_parameters())
    assert after.keys() == before.keys()
    for n, old in before.items():
        new = after[n]
        if n in head:
            assert not torch.equal(new, old), n
            continue
        layer = n.split(".")[3] if ".layer." in n else None
        mask = torch.zeros_like(old, dtype=torch.bool)
        if layer is not None and n.endswith(("intermediate.dense.weight", "intermediate.dense.bias")):
            mask[indices[int(layer)]] = True
        elif layer is not None and n.endswith("output.dense.weight") and ".attention." not in n:
            mask[:, indices[int(layer)]] = True
        assert torch.equal(new[~mask], old[~mask]), n  # only the learner slices and the head train
        if mask.any():
            assert not torch.equal(new[mask], old[mask]), n


def test_prime_with_trainer_probes_layers_from_the_trainers_data(tmp_path):
    from learners.learner.trainer import prime_with_trainer

    model = tiny_model("bert", dropout=True, layers=4)
    trainer = trainer_for(model, tmp_path, 1e-2, max_steps=3)
    config = LearnerConfig.primed(num_neurons=4, layers="auto", priming_scope="learner-layers", gradient_batches=2)
    learner_model = prime_with_trainer(trainer, config)
    layers = learner_model.learner_config.layers
    assert isinstance(layers, list) and layers[-1] == 3 and trainer.state.global_step == 1  # a quarter of 4 batches


def test_prime_with_trainer_refuses_a_trainer_that_has_trained(tmp_path):
    from learners.learner.trainer import prime_with_trainer

    trainer = trainer_for(tiny_model("bert"), tmp_path, 1e-2, max_steps=1)
    trainer.train()
    with pytest.raises(UsageError, match="has not trained yet"):
        prime_with_trainer(trainer, LearnerConfig.primed(ratio=0.25))


def test_a_fused_adamw_step_reaches_the_learner_layers_forward():
    learner_model = get_learner_model(tiny_model("bert"), LearnerConfig.primed(ratio=0.25, selection="random"))
    optimizer = torch.optim.AdamW([p for p in learner_model.parameters() if p.requires_grad], lr=1e-2, fused=True)
    learner_model(**BATCHES[0]).loss.backward()
    optimizer.step()
    up = learner_model.ffn_blocks[0].up
    assert torch.equal(up.merged_weight()[up.indices], up.learner_weight.detach())


@pytest.mark.parametrize("options", [{}, {"train_ffn_output_bias": True, "train_layer_norm": True}])
def test_unload_after_priming_gives_back_the_pre_trained_encoder(options):
    """The learners sit on the pre-trained model, not on the primed one: unload() returns every encoder weight
    as it was before priming (the head keeps its primed values: it is not part of the pre-trained model)."""
    model = tiny_model("bert", dropout=True, layers=4)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    primer = Primer(model, LearnerConfig.primed(num_neurons=5, **options))
    train_steps(model)
    learner_model = primer.reconfigure()
    train_steps(learner_model, steps=2)
    head = set(head_parameter_names(model))
    unloaded = dict(learner_model.unload().named_parameters())
    assert set(unloaded) == set(base)
    for name, value in unloaded.items():
        assert torch.equal(value, base[name]) != (name in head), name
