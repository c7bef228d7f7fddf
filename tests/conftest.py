"""Small randomly initialised BERT, DistilBERT, RoBERTa, ELECTRA, MPNet and DeBERTa-v2 models, and a saved tiny model directory."""

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BertConfig, DebertaV2Config, DistilBertConfig,
                          ElectraConfig, MPNetConfig, RobertaConfig)

GLUE_DIR = Path(__file__).resolve().parents[2] / "shared" / "glue"
VOCAB = 120


def tiny_config(family: str, vocab_size: int = VOCAB, num_labels: int = 2, layers: int = 2):
    common = dict(vocab_size=vocab_size, num_labels=num_labels)
    if family == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=64, **common)
    if family == "roberta":
        return RobertaConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                             max_position_embeddings=72, pad_token_id=1, **common)
    if family == "distilbert":
        return DistilBertConfig(dim=32, n_layers=layers, n_heads=2, hidden_dim=64, max_position_embeddings=64, **common)
    if family == "electra":  # as ELECTRA-small: embeddings narrower than the blocks, projected up before them
        return ElectraConfig(embedding_size=16, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64, **common)
    if family == "mpnet":  # all-mpnet-base-v2's architecture: relative position buckets in every attention
        return MPNetConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=72, pad_token_id=1, **common)
    if family == "deberta-v2":  # disentangled attention over relative positions shared by every block
        return DebertaV2Config(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=64, relative_attention=True, position_buckets=16,
                               pos_att_type=["p2c", "c2p"], **common)
    if family in BERT_LAYOUT_FAMILIES:  # model types of their own whose blocks keep BERT's module names
        extra = {"roformer": dict(embedding_size=32),
                 "mobilebert": dict(embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16,
                                    num_feedforward_networks=2)}.get(family, {})
        return AutoConfig.for_model(family, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                    intermediate_size=64, max_position_embeddings=64, **extra, **common)
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0, dropout: bool = False, auto_class=AutoModelForSequenceClassification,
               **kwargs):
    """A tiny random `family` model with `auto_class`'s head (a sequence classifier; AutoModelForTokenClassification
    for a tagger), by default without dropout."""
    torch.manual_seed(seed)
    config = tiny_config(family, **kwargs)
    if not dropout:
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                     "seq_classif_dropout", "classifier_dropout"):
            if hasattr(config, name):
                setattr(config, name, 0.0)
    model = auto_class.from_config(config)
    # Non-zero biases so that every selection strategy and gradient sees real values.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return model


class OddBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc_in, self.fc_out = nn.Linear(8, 16), nn.Linear(16, 8)


class OddModel(nn.Module):
    """A model type learners has no entry for, with an FFN of its own names (fc_in, fc_out) and no attention."""

    def __init__(self):
        super().__init__()
        self.config = type("Cfg", (), {"model_type": "odd"})()
        self.blocks = nn.ModuleList([OddBlock(), OddBlock()])


def tiny_batch(batch_size: int = 4, length: int = 9, seed: int = 0, num_labels: int = 2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch_size, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # some padding
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, num_labels, (batch_size,), generator=g)}


def train_steps(lm, batches, learning_rate: float = 1e-2):
    """An optimizer step of `lm` on each of `batches` (the harness's optimizer and schedule); `lm` in eval mode after."""
    from learners.harness.train import TrainConfig, make_optimizer

    optimizer, scheduler = make_optimizer(lm, TrainConfig(learning_rate=learning_rate), learning_rate, 0, 10, 0)
    lm.train()
    for batch in batches:
        lm(**batch).loss.backward()
        optimizer.step(), scheduler.step(), optimizer.zero_grad()
    return lm.eval()


# Each family's FFN modules within a block: (W1, W2)
FFN_NAMES = {"bert": ("intermediate.dense", "output.dense"), "roberta": ("intermediate.dense", "output.dense"),
             "distilbert": ("ffn.lin1", "ffn.lin2"), "electra": ("intermediate.dense", "output.dense"),
             "mpnet": ("intermediate.dense", "output.dense"), "deberta-v2": ("intermediate.dense", "output.dense")}


def assert_learner_gradients_match(lm, reference, family: str) -> None:
    """After one backward pass of the same batch through each: every learner slice's gradient is the full model's
    rows of W1 (and b1) and columns of W2, the head's is the full model's, and nothing frozen holds a gradient."""
    up_name, down_name = FFN_NAMES[family]
    for block, idx in zip(lm.ffn_blocks, lm.indices):
        ref_block = reference.get_submodule(block.name)
        ref_up, ref_down = ref_block.get_submodule(up_name), ref_block.get_submodule(down_name)
        torch.testing.assert_close(block.up.learner_weight.grad, ref_up.weight.grad[idx], atol=1e-6, rtol=0)
        torch.testing.assert_close(block.up.learner_bias.grad, ref_up.bias.grad[idx], atol=1e-6, rtol=0)
        torch.testing.assert_close(block.down.learner_weight.grad, ref_down.weight.grad[:, idx], atol=1e-6, rtol=0)
    ref_params = dict(reference.named_parameters())
    for name, p in lm.base_model.named_parameters():
        if name in lm.head_names:
            torch.testing.assert_close(p.grad, ref_params[name].grad, atol=1e-6, rtol=0)
        elif not p.requires_grad:
            assert p.grad is None, name


def assert_saved_and_merged_reproduce(lm, fresh_base, batch, folder):
    """`lm` (trained, in eval mode) saved into `folder` and loaded onto `fresh_base` gives its logits on `batch`
    exactly; merged, it is a plain model without learner layers giving them within 1e-6. Returns the merged model."""
    from learners import LearnerModel
    from learners.learner.layer import LearnerColumnLinear, LearnerRowLinear

    with torch.no_grad():
        expected = lm(**batch).logits
    lm.save_pretrained(folder)
    restored = LearnerModel.from_pretrained(fresh_base, folder).eval()
    with torch.no_grad():
        assert torch.equal(restored(**batch).logits, expected)
        merged = lm.merge_and_unload().eval()
        assert not any(isinstance(m, (LearnerRowLinear, LearnerColumnLinear)) for m in merged.modules())
        torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-6, rtol=0)
    return merged


FAMILIES = ["bert", "distilbert", "roberta", "electra", "mpnet", "deberta-v2"]
# ERNIE and RoFormer as BERT; MegatronBERT pre-LN (no LayerNorm after the FFN); MobileBERT with bottlenecks and
# two FFNs per block
BERT_LAYOUT_FAMILIES = ["ernie", "roformer", "megatron-bert", "mobilebert"]


def save_tiny_model_dir(path: Path, dropout: bool = False) -> Path:
    """A tiny random BERT saved with the embedded model's tokenizer at `path`: a model directory like any other."""
    from learners.harness.models import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    tiny_model("bert", dropout=dropout, vocab_size=tokenizer.vocab_size).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_three_class_csvs(folder: Path) -> None:
    """`folder`/train.csv (24 rows, classes a, b, c) and dev.csv (its first 6): a tiny classification set."""
    rows = [f"word{i % 7} thing{i % 5},{'abc'[i % 3]}" for i in range(24)]
    (folder / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (folder / "dev.csv").write_text("text,label\n" + "\n".join(rows[:6]) + "\n")


def save_regression_run(root: Path, dropout: bool = False) -> Path:
    """`root`/model (a tiny BERT, see save_tiny_model_dir) and a small regression set, train.jsonl (60 rows) and
    dev.jsonl (its first 16): the inputs of a fast finetune run."""
    import json
    import random

    words = "the cat dog sat ran on a mat big small red blue happy sad old new".split()
    save_tiny_model_dir(root / "model", dropout=dropout)
    rng = random.Random(0)
    rows = []
    for i in range(60):
        text = [rng.choice(words) for _ in range(6)]
        rows.append({"text": " ".join(text), "label": text.count("happy") - text.count("sad") + 0.1 * (i % 3)})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT (no dropout) with the embedded model's tokenizer, shared by the session's tests."""
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def glue_dir() -> Path:
    if not GLUE_DIR.is_dir():
        pytest.skip(f"GLUE data not found at {GLUE_DIR}")
    return GLUE_DIR
