"""One source of defaults: `LearnerConfig()` is what `learners finetune` runs, and `finetune --help` and
LearnerConfig's docstring state the same defaults, written from the config's fields."""

from dataclasses import fields

import torch

from conftest import tiny_model
from learners import LearnerConfig, Primer, get_learner_model
from learners.harness.arguments import method_options
from learners.harness.cli import build_parser
from learners.harness.methods import build_method
from learners.learner.config import option_help


def cli_method(*flags):
    args = build_parser().parse_args(["finetune", "--task", "cola", "--output-dir", "unused", *flags])
    return build_method("learners", method_options(args))


def test_the_cli_runs_learner_config_with_its_defaults():
    assert cli_method().config == LearnerConfig()
    assert cli_method("--selection", "priming").config == LearnerConfig(selection="priming")
    assert cli_method("--learner-layers", "all", "--ratio", "0.25").config == LearnerConfig(layers="all", ratio=0.25)


def test_the_library_one_liner_trains_what_the_cli_trains():
    """get_learner_model(model, LearnerConfig()) picks the same neurons and trains the same tensors as the CLI's
    default method: the same blocks (all but the lowest), b2 and LayerNorm, no dropout below and in attention."""
    library = get_learner_model(tiny_model("bert"), LearnerConfig())
    harness = cli_method().prepare(tiny_model("bert"), batches=iter([]))
    assert [i.tolist() for i in library.indices] == [i.tolist() for i in harness.indices]
    trainable = {n for n, p in library.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in harness.named_parameters() if p.requires_grad}
    assert library.plan.positions == (1,)  # the tiny model's two blocks: the lowest stays frozen
    assert any(n.endswith("output.dense.bias") for n in trainable) and any("LayerNorm" in n for n in trainable)
    library.train()
    assert not library.base_model.bert.encoder.layer[0].training  # frozen below the learners: inference mode
    assert not library.base_model.bert.encoder.layer[1].attention.training
    assert library.base_model.bert.encoder.layer[1].output.training  # the FFN keeps its dropout


def test_finetune_help_and_the_docstring_state_the_configs_defaults():
    parser = build_parser()
    finetune = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("finetune"))
    help_text = " ".join(finetune.format_help().split())
    doc = " ".join(LearnerConfig.__doc__.split())
    shown = {"ratio", "num_neurons", "selection", "priming_steps", "priming_fraction", "reset_after_priming",
             "layers", "layer_coverage", "priming_scope", "frozen_dropout", "attention_dropout",
             "attention_probs_dropout", "train_ffn_output_bias", "train_layer_norm", "ffn_modules"}
    for name in shown:
        words = " ".join(option_help(name).split())
        assert words in help_text.replace("- ", "-"), name
        assert f"{name}: {words}" in doc, name
    defaults = LearnerConfig()
    assert "(default 1/8)" in option_help("ratio") and defaults.ratio == 1 / 8
    for f in fields(LearnerConfig):
        if isinstance(getattr(defaults, f.name), bool):
            assert option_help(f.name).endswith(f"(default {'on' if getattr(defaults, f.name) else 'off'})")
        elif f.name in ("selection", "layers", "priming_scope"):
            assert option_help(f.name).endswith(f"(default {getattr(defaults, f.name)})")


def test_the_papers_method_is_a_named_preset():
    primed = LearnerConfig.primed()
    assert (primed.selection, primed.layers, primed.ratio) == ("priming", "all", 1 / 16)
    assert primed.frozen_dropout and primed.attention_dropout
    assert not (primed.train_ffn_output_bias or primed.train_layer_norm)
    assert LearnerConfig.primed(num_neurons=4).num_neurons == 4 and LearnerConfig.primed(num_neurons=4).ratio is None
    model = tiny_model("bert")
    primer = Primer(model, LearnerConfig.primed(ratio=0.25))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n, _ in model.named_parameters()}
    torch.manual_seed(0)
    with torch.no_grad():
        for p in primer.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    learner_model = primer.reconfigure()
    assert learner_model.plan.positions == (0, 1) and learner_model.learner_config.selection == "priming"
