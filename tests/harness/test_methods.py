"""Every fine-tuning method trains exactly what it says, counts it right, saves and merges it right.

Tiny random BERT/DistilBERT/RoBERTa (dropout off) through the real training engine.
"""

import copy
import json
import re

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import BERT_LAYOUT_FAMILIES, FAMILIES, tiny_batch, tiny_model
from learners.harness.cli import main
from learners.learner.ffn import head_parameter_names
from learners.learner.layer import LearnerRowLinear
from learners.harness.methods import METHODS, build_method
from learners.harness.methods.adapter import CONFIG_NAME, WEIGHTS_NAME, AdapterLinear
from learners.harness.methods.far import FreezeAndReconfigure, ffn_linear_names, select_units
from learners.harness.predict import load_finetuned
from learners.harness.train import TrainConfig, train

ALL_METHODS = ["full", "head", "bitfit", "lora", "adapter", "far", "learners"]
# Small settings for tiny models: adapters of size 8, a quarter of each FFN for far/learners, 2 priming steps.
OPTIONS = {"lora": {"dropout": 0.0}, "adapter": {"bottleneck_size": 8}, "far": {"ratio": 0.25, "priming_steps": 2},
           "learners": {"ratio": 0.25, "selection": "priming", "priming_steps": 2, "layers": "all"}}
STEPS = 6
FFN = {"bert": ("intermediate.dense", "output.dense"), "roberta": ("intermediate.dense", "output.dense"),
       "distilbert": ("ffn.lin1", "ffn.lin2"), "electra": ("intermediate.dense", "output.dense"), "mpnet": ("intermediate.dense", "output.dense"),
       "deberta-v2": ("intermediate.dense", "output.dense")}
FFN_LAYER_NORM = {"bert": "output.LayerNorm", "roberta": "output.LayerNorm", "distilbert": "output_layer_norm",
                  "electra": "output.LayerNorm", "mpnet": "output.LayerNorm", "deberta-v2": "output.LayerNorm"}
LORA_TARGETS = {"bert": ("query", "value"), "roberta": ("query", "value"), "distilbert": ("q_lin", "v_lin"),
                "electra": ("query", "value"), "mpnet": ("attn.q", "attn.v"), "deberta-v2": ("query_proj", "value_proj")}


def run_engine(model, method, steps=STEPS, lr=1e-2):
    """The real training loop on a few tiny batches (no evaluation data needed)."""
    batches = [tiny_batch(seed=s) for s in range(steps)]
    cfg = TrainConfig(learning_rate=lr, priming_learning_rate=lr, max_steps=steps, eval_steps=steps, warmup_ratio=0,
                      progress=False)
    return train(model, method, batches, lambda m: {"score": 0.0}, "score", cfg)


def test_all_seven_methods_are_registered():
    assert list(METHODS) == ALL_METHODS
    for name, cls in METHODS.items():
        assert cls.name == name and cls.default_learning_rate > 0
    for name in ("head", "bitfit", "lora", "adapter", "far"):  # the baselines say exactly what trains
        assert "train" in METHODS[name].__doc__.lower()


def expected_trainable(family: str, name: str, model, b2_and_layer_norm: bool = True) -> set[str]:
    """Names (of the plain model) whose tensors the method trains: the whole tensor changes. `b2_and_layer_norm`:
    learners with their default, or with --no-train-ffn-output-bias --no-train-layer-norm."""
    params = [n for n, _ in model.named_parameters()]
    head = set(head_parameter_names(model))
    up, down = FFN[family]
    if name == "full":
        return set(params)
    if name == "head":
        return head
    if name == "bitfit":
        return head | {n for n in params if n.endswith("bias")}
    if name == "lora":
        return head | {n for n in params if n.endswith(tuple(f".{t}.weight" for t in LORA_TARGETS[family]))}
    if name == "adapter":  # the adapters themselves are not in the plain model; checked separately
        return head | {n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)
                       for n in (f"{n}.weight", f"{n}.bias")}
    def ffn(linear, kinds=("weight", "bias")):  # e.g. bert.encoder.layer.0.output.dense.weight, not attention.output
        return {n for n in params if re.search(rf"\.\d+\.{re.escape(linear)}\.({'|'.join(kinds)})$", n)}
    if name == "far":
        return head | ffn(up) | ffn(down)
    if name == "learners" and not b2_and_layer_norm:  # W1 rows + b1 entries, W2 columns; b2 stays
        return head | ffn(up) | ffn(down, ["weight"])
    if name == "learners":  # by default b2 and the block's output LayerNorm too
        return head | ffn(up) | ffn(down) | ffn(FFN_LAYER_NORM[family])
    raise ValueError(name)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.slow
def test_only_the_methods_parameters_change(name, family):
    model = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = expected_trainable(family, name, model)
    method = build_method(name, OPTIONS.get(name))
    result = run_engine(model, method)
    trained = result.model

    # Where the slices are: selected rows (far) or neurons (learners), read before merging.
    slices = {}
    if name == "far":
        slices = {n: ("rows", m.indices) for n, m in trained.named_modules() if isinstance(m, LearnerRowLinear)}
        assert len(slices) == 4
    if name == "learners":
        for block, idx in zip(trained.ffn_blocks, trained.indices):
            base = block.name.removeprefix("base_model.")
            slices[f"{base}.{block.up_name}"] = ("rows", idx)
            slices[f"{base}.{block.down_name}"] = ("columns", idx)
    adapters = {n: copy.deepcopy(m.adapter) for n, m in trained.named_modules() if isinstance(m, AdapterLinear)}
    if name == "adapter":  # two adapters per block, all trained: the zero-initialised up-projection moved
        assert len(adapters) == 4 and all(a.up.weight.abs().sum() > 0 and a.down.weight.requires_grad
                                          for a in adapters.values())

    plain = method.plain_model(trained)
    assert type(plain).__module__.startswith("transformers.")
    after = plain.state_dict()
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == expected

    for module_name, (axis, idx) in slices.items():
        for kind in ("weight", "bias"):
            delta = (after[f"{module_name}.{kind}"] - before[f"{module_name}.{kind}"]) != 0
            if axis == "columns":
                if kind == "bias":  # b2 trains whole (a default of the harness; the expected set above has it)
                    continue
                delta = delta.t()
            moved = delta.reshape(delta.shape[0], -1).any(dim=1).nonzero().flatten()
            assert set(moved.tolist()) <= set(idx.tolist()) and moved.numel() > 0, module_name


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_learners_without_b2_and_layer_norm_leave_them_as_they_were(family):
    """The default trains each learner block's b2 and output LayerNorm; turned off, only the slices and the head move."""
    model = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = expected_trainable(family, "learners", model, b2_and_layer_norm=False)
    method = build_method("learners", {**OPTIONS["learners"], "train_ffn_output_bias": False, "train_layer_norm": False})
    after = method.plain_model(run_engine(model, method).model).state_dict()
    assert {k for k in before if not torch.equal(before[k], after[k])} == expected


@pytest.mark.slow
def test_parameter_counts_match_a_hand_count_on_tiny_bert():
    """Tiny BERT: hidden 32, intermediate 64, 2 layers, 2 heads, vocab 120, 64 positions, 2 labels."""
    embeddings = 120 * 32 + 64 * 32 + 2 * 32 + 2 * 32              # words, positions, token types, LayerNorm
    linear_32 = 32 * 32 + 32
    layer = 3 * linear_32 + linear_32 + 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 32   # qkv, out, LN, W1, W2, LN
    head = linear_32 + (32 * 2 + 2)                                   # pooler + classifier
    total = embeddings + 2 * layer + head
    assert total == 24226 and head == 1122
    biases = 32 + 2 * (3 * 32 + 32 + 32 + 64 + 32 + 32)              # embeddings LN + per layer: qkv, out, LN, W1, W2, LN
    lora = 2 * 2 * (8 * 32 + 32 * 8)                                  # r=8, query and value, A (8x32) + B (32x8)
    adapter = 2 * 2 * ((32 * 8 + 8) + (8 * 32 + 32))                  # size 8: down + up, two per layer
    layer_norms = 2 * 32 + 2 * 2 * (2 * 32)                           # embeddings LN + two per layer
    far = 2 * (16 * (32 + 1) + 8 * (64 + 1))                          # ratio 1/4: 16 of W1's 64 rows, 8 of W2's 32
    learners = 2 * (16 * (32 + 1 + 32) + 32 + 2 * 32)                 # 16 neurons: W1 row, b1 entry, W2 column; b2; LN
    expected = {"full": total - head, "head": 0, "bitfit": biases, "lora": lora, "adapter": adapter + layer_norms,
                "far": far, "learners": learners}
    for name, encoder in expected.items():
        method = build_method(name, OPTIONS.get(name))
        result = run_engine(tiny_model("bert"), method, steps=3)
        counts = method.parameter_counts(result.model)
        assert counts == {"encoder": encoder, "head": head, "trainable": encoder + head, "total": total}, name


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.slow
def test_lora_merged_model_gives_the_peft_models_logits(family, tmp_path):
    method = build_method("lora", {"dropout": 0.0})
    peft_model = run_engine(tiny_model(family), method).model.eval()
    batch = tiny_batch(seed=9)
    with torch.no_grad():
        expected = peft_model(**batch).logits
        plain = method.plain_model(peft_model).eval()
        assert not any("lora" in n or "modules_to_save" in n for n, _ in plain.named_parameters())
        torch.testing.assert_close(plain(**batch).logits, expected, atol=1e-5, rtol=0)
    plain.save_pretrained(tmp_path)
    loaded, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapters_start_as_the_identity(family):
    model = tiny_model(family).eval()
    batch = tiny_batch()
    with torch.no_grad():
        expected = model(**batch).logits
        build_method("adapter", {"bottleneck_size": 8}).prepare(model, None)
        assert torch.equal(model(**batch).logits, expected)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.slow
def test_adapter_model_round_trips_through_out_model_and_predict(family, tmp_path):
    from learners.harness.models import embedded_model_dir

    method = build_method("adapter", {"bottleneck_size": 8})
    trained = run_engine(tiny_model(family), method).model.eval()
    batch = {k: v for k, v in tiny_batch(seed=5).items() if k != "labels"}
    with torch.no_grad():
        expected = trained(**batch).logits
    # What finetune does: save_extra, then the plain model and the tokenizer into OUT/model.
    extra = method.save_extra(trained, tmp_path)
    method.plain_model(trained).save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(embedded_model_dir()).save_pretrained(tmp_path / "model")
    assert extra["adapter_sites"] == 4
    assert (tmp_path / "model" / WEIGHTS_NAME).is_file() and (tmp_path / "model" / CONFIG_NAME).is_file()

    # Plain transformers loading is clean (no adapter keys in the weights) but has no adapters ...
    plain, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert not torch.allclose(plain.eval()(**batch).logits, expected, atol=1e-6)
    # ... learners predict's loader puts them back: the trained model's logits exactly.
    loaded, _ = load_finetuned(str(tmp_path / "model"))
    assert sum(isinstance(m, AdapterLinear) for m in loaded.modules()) == 4
    with torch.no_grad():
        assert torch.equal(loaded.eval()(**batch).logits, expected)


def test_far_selects_exactly_the_top_r_units_of_a_constructed_delta():
    weight0, bias0 = torch.randn(10, 4), torch.randn(10)
    weight, bias = weight0.clone(), bias0.clone()
    weight[7] += 0.5           # L1 move 2.0
    weight[2, 0] -= 1.5        # 1.5
    bias[5] += 1.2             # 1.2, bias only
    weight[9] += 0.25          # 1.0 ...
    bias[9] -= 0.1             # ... + 0.1 = 1.1
    weight[0, 3] += 1.0        # 1.0
    weight[1:5] += 1e-3        # small moves elsewhere
    assert select_units(weight, bias, weight0, bias0, 3).tolist() == [2, 5, 7]
    assert select_units(weight, bias, weight0, bias0, 4).tolist() == [2, 5, 7, 9]


@pytest.mark.parametrize("family", FAMILIES)
def test_far_after_priming_trains_the_top_rows_from_the_original_weights(family):
    model = tiny_model(family)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = FreezeAndReconfigure({"ratio": 0.25})
    method.prepare(model, None)
    head = set(head_parameter_names(model))
    linears = ffn_linear_names(model)
    chosen = {}
    with torch.no_grad():  # "priming": every weight moves a little, chosen rows of each FFN linear a lot
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
        for i, name in enumerate(linears):
            linear = model.get_submodule(name)
            k = linear.out_features // 4
            idx = torch.randperm(linear.out_features, generator=torch.Generator().manual_seed(i))[:k]
            linear.weight[idx] += 0.1
            chosen[name] = idx.sort().values
    primed_head = {n: p.detach().clone() for n, p in model.named_parameters() if n in head}
    model = method.after_priming(model, None)
    assert set(method.units) == set(linears)
    for name in linears:
        module = model.get_submodule(name)
        assert isinstance(module, LearnerRowLinear)
        assert module.indices.tolist() == chosen[name].tolist()
        # the whole linear, the trainable rows included, is back at its pre-trained value
        assert torch.equal(module.merged_weight(), original[f"{name}.weight"])
        assert torch.equal(module.merged_bias(), original[f"{name}.bias"])
    for n, p in model.named_parameters():
        if n in head:
            assert torch.equal(p, primed_head[n]) and p.requires_grad
        elif not n.endswith(("learner_weight", "learner_bias")):
            assert torch.equal(p, original[n]) and not p.requires_grad, n


@pytest.mark.parametrize("name,options,message", [
    ("lora", {"rank": 0}, "--lora-rank"), ("lora", {"dropout": 1.0}, "--lora-dropout"),
    ("adapter", {"bottleneck_size": 0}, "--adapter-size"), ("far", {"ratio": 1.5}, "--far-ratio"),
    ("far", {"priming_fraction": 0}, "--far-priming-fraction"), ("lora", {"rnk": 4}, "unknown LoRA option"),
])
def test_bad_method_options_are_usage_errors(name, options, message):
    from learners.errors import UsageError
    with pytest.raises(UsageError, match=message):
        build_method(name, options)


# ---- through the command line ---------------------------------------------------------------------------

def finetune(tmp_path, tiny_model_dir, glue_dir, method, *extra):
    out = tmp_path / method
    args = ["finetune", "--task", "cola", "--data-dir", str(glue_dir), "--model", str(tiny_model_dir),
            "--output-dir", str(out), "--method", method, "--max-steps", "4", "--eval-steps", "4", "--batch-size", "8",
            "--max-train-samples", "64", "--no-progress", *extra]
    assert main(args) == 0
    return out, json.loads((out / "results.json").read_text())


HEAD = 32 * 32 + 32 + 32 * 2 + 2  # tiny BERT: pooler + classifier


@pytest.mark.parametrize("method,flags,encoder", [
    ("head", [], 0),
    ("bitfit", [], 32 + 2 * (3 * 32 + 32 + 32 + 64 + 32 + 32)),
    ("lora", ["--lora-rank", "4", "--lora-alpha", "8", "--lora-dropout", "0", "--lora-target-modules", "query,key"],
     2 * 2 * (4 * 32 + 32 * 4)),
    ("adapter", ["--adapter-size", "8"], 2 * 2 * ((32 * 8 + 8) + (8 * 32 + 32)) + 2 * 32 + 2 * 2 * 2 * 32),
    ("far", ["--far-ratio", "0.25", "--far-priming-fraction", "0.25"], 2 * (16 * 33 + 8 * 65)),
])
@pytest.mark.slow
def test_cli_finetune_each_baseline(method, flags, encoder, tmp_path, tiny_model_dir, glue_dir):
    out, r = finetune(tmp_path, tiny_model_dir, glue_dir, method, *flags)
    assert (r["method"], r["steps"], r["learning_rate"]) == (method, 4, METHODS[method].default_learning_rate)
    assert (r["encoder_trainable_params"], r["head_params"]) == (encoder, HEAD)
    assert r["trainable_params"] == encoder + HEAD < r["total_params"]
    model, info = AutoModelForSequenceClassification.from_pretrained(out / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert r["total_params"] == sum(p.numel() for p in model.parameters())
    if method == "far":
        assert r["priming_steps"] == 2 and r["far_units"] == [16, 8, 16, 8]  # round(0.25 * 64/8), ceil(r * out)
        assert [h["phase"] for h in r["history"]] == ["priming", "reconfigured", "train"]
    if method == "lora":
        assert (out / "lora" / "adapter_config.json").is_file() and r["lora_checkpoint_bytes"] > 0
    if method == "adapter":
        (tmp_path / "in.csv").write_text("sentence\nThe cat sat.\nCats sleeps.\n")
        assert main(["predict", "--model", str(out / "model"), "--input", str(tmp_path / "in.csv"),
                     "--output", str(tmp_path / "out.jsonl")]) == 0
        rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(row["prediction"] in {"acceptable", "unacceptable"} for row in rows)


def test_cli_bad_method_option_is_one_line_exit_2(tmp_path, capsys, glue_dir):
    assert main(["finetune", "--task", "cola", "--data-dir", str(glue_dir), "--method", "lora", "--lora-rank", "0",
                 "--output-dir", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("learners: error: ") and "--lora-rank" in err and err.count("\n") == 1


def test_priming_flags_are_an_error_only_where_no_priming_phase_runs():
    """Method.check_priming_flags: FAR and learners with --selection priming take them; full and random learners refuse
    them with the fix (the library path: FinetuneArgs reaches it without the CLI's per-method flag check)."""
    from learners.errors import UsageError
    from learners.harness.methods import build_method

    given = ["--priming-learning-rate", "--learner-warmup-steps"]
    build_method("far").check_priming_flags(given)
    build_method("learners", {"selection": "priming"}).check_priming_flags(given)
    build_method("full").check_priming_flags([])
    with pytest.raises(UsageError, match=r"^--priming-learning-rate and --learner-warmup-steps shape the priming phase, "
                                         r"but this --method full run has none: drop them$"):
        build_method("full").check_priming_flags(given)
    with pytest.raises(UsageError, match=r"--learner-warmup-steps shapes the priming phase, but --selection is 'magnitude', "
                                         r"which has none .*: add --selection priming$"):
        build_method("learners", {"selection": "magnitude"}).check_priming_flags(given[1:])


@pytest.mark.parametrize("family", BERT_LAYOUT_FAMILIES)
@pytest.mark.parametrize("name", ["lora", "adapter", "learners"])
@pytest.mark.slow
def test_encoders_with_berts_module_names_take_every_method_by_berts_names(name, family, capsys):
    """LoRA's targets, the adapters' sites and the learners' FFNs of ERNIE, RoFormer, MegatronBERT and MobileBERT
    are BERT's; pre-LN MegatronBERT has no LayerNorm after its FFNs, so the learners' default leaves it out."""
    model = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method(name, OPTIONS.get(name))
    trained = run_engine(model, method).model
    sites = {n for n, m in trained.named_modules() if isinstance(m, AdapterLinear)}
    after = method.plain_model(trained).state_dict()
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if name == "lora":
        assert {k for k in changed if "attention" in k} == {k for k in before if k.endswith((".query.weight", ".value.weight"))}
    if name == "adapter":
        blocks = 2 * 2 if family == "mobilebert" else 2  # MobileBERT: one more FFN per block, without attention
        assert len(sites) == 2 + blocks and all(s.endswith(".output.dense") for s in sites)
    if name == "learners":
        assert any(".intermediate.dense." in k for k in changed)
        layer_norms = {k for k in changed if ".output.LayerNorm." in k}
        assert bool(layer_norms) == (family != "megatron-bert")
        assert ("no LayerNorm after its FFNs" in capsys.readouterr().err) == (family == "megatron-bert")


def test_a_pre_ln_model_trains_no_layer_norm_after_its_ffns_even_when_asked_for(capsys):
    """train_layer_norm trains the LayerNorm after each learner block's FFN where the block has one; pre-LN blocks
    (MegatronBERT's) have none: nothing more trains, with a note, whether asked for by name or by default."""
    method = build_method("learners", {"ratio": 0.25, "train_layer_norm": True})
    method.check(tiny_model("megatron-bert"))
    learner_model = method.prepare(tiny_model("megatron-bert"), batches=iter([]))
    assert not learner_model.plan.trains_layer_norm
    assert not any("LayerNorm" in n for n, p in learner_model.named_parameters() if p.requires_grad)
    assert "no LayerNorm after its FFNs" in capsys.readouterr().err
