"""Reading saved learners: what `save_pretrained` wrote (learners_model.safetensors and learners_config.json) or
what a Trainer saved of a LearnerModel (model.safetensors, whose `learners_config` tensor holds the config), with
the base model's fingerprint that refuses learners trained on another base model."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError, read_json_file, read_safetensors
from .config import CONFIG_NAME, LearnerConfig, config_from_metadata
from .model_card import CARD_NAME

WEIGHTS_NAME = "learners_model.safetensors"
TRAINER_WEIGHTS_NAME = "model.safetensors"  # what transformers.Trainer writes (save_model, checkpoints): state_dict()
SAVED_FILES = [WEIGHTS_NAME, CONFIG_NAME, CARD_NAME]  # what save_pretrained writes (and push_to_hub uploads)
CONFIG_KEY = "learners_config"  # in state_dict(): the metadata of learners_config.json, as UTF-8 JSON bytes (uint8)
FINGERPRINT_SIZE = 16
FINGERPRINT_TOLERANCE = 1e-2  # relative; casting the base model to bf16 moves a weight by at most 0.4%


def read_metadata(directory: str | Path) -> dict:
    """The saved metadata, its `learner_config` checked to be a valid LearnerConfig: save_pretrained's
    learners_config.json, or the `learners_config` tensor of a Trainer's model.safetensors (state_dict())."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file() or not (Path(directory) / WEIGHTS_NAME).is_file():
        meta = trainer_metadata(Path(directory))
        if meta is None:
            raise UsageError(f"{directory} holds no saved learners ({CONFIG_NAME} and {WEIGHTS_NAME}, or a "
                             f"Trainer's {TRAINER_WEIGHTS_NAME} of a LearnerModel); pass the directory that "
                             "LearnerModel.save_pretrained, learners finetune or Trainer.save_model wrote")
        path = Path(directory) / TRAINER_WEIGHTS_NAME
    else:
        meta = read_json_file(path, "learner config")
    config_from_metadata(meta, path)
    return meta


@dataclass
class SavedLearners:
    """What save_pretrained wrote in `directory`: config, per-block indices, tensors (without indices), metadata."""

    directory: Path
    config: LearnerConfig
    indices: list[torch.Tensor]
    tensors: dict[str, torch.Tensor]
    meta: dict
    weights_path: Path

    @classmethod
    def read(cls, directory: str | Path) -> "SavedLearners":
        directory = Path(directory)
        meta = read_metadata(directory)
        config = config_from_metadata(meta, directory / CONFIG_NAME)
        saved = (directory / CONFIG_NAME).is_file() and (directory / WEIGHTS_NAME).is_file()  # else a Trainer's
        weights = directory / (WEIGHTS_NAME if saved else TRAINER_WEIGHTS_NAME)
        tensors = read_safetensors(weights, "learner weights")
        tensors.pop(CONFIG_KEY, None)
        indices = _pop_indices(tensors, weights)
        return cls(directory, config, indices, tensors, meta, weights)

    def check_base(self, model: nn.Module) -> None:
        """Refuse learners whose base model fingerprint is not `model`'s."""
        if not _same_base(base_fingerprint(model), self.meta.get("base_fingerprint")):
            raise UsageError(f"the learners in {self.directory} were trained on another base model "
                             f"({self.meta.get('base_model_name_or_path')}): its input embeddings differ from this "
                             "model's; load them on the base model they were trained from")


def trainer_metadata(directory: Path) -> dict | None:
    """The learners_config.json content that a LearnerModel's state_dict() put in a Trainer's model.safetensors
    (None where the folder has no such file, or that file holds no learners: a whole model's weights)."""
    from safetensors import SafetensorError, safe_open

    path = directory / TRAINER_WEIGHTS_NAME
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if CONFIG_KEY not in f.keys():
                return None
            raw = f.get_tensor(CONFIG_KEY)
    except (SafetensorError, OSError) as e:
        raise UsageError(f"learner weights {path} is not a readable safetensors file ({e}); it is truncated or "
                         "damaged: copy or write it again") from e
    try:
        meta = json.loads(bytes(raw.tolist()).decode())
    except (ValueError, TypeError) as e:
        raise UsageError(f"{path}: its {CONFIG_KEY} tensor is not the JSON a LearnerModel writes; it is damaged") from e
    if not isinstance(meta, dict):
        raise UsageError(f"{path}: its {CONFIG_KEY} tensor is not the JSON a LearnerModel writes; it is damaged")
    return meta


def base_fingerprint(model: nn.Module) -> list[float] | None:
    """16 values of the input embeddings at fixed positions: learners never change them, so other values mean
    another base model (None where the model has no such embeddings)."""
    try:
        weight = model.get_input_embeddings().weight
    except (AttributeError, NotImplementedError):
        return None
    if not weight.is_floating_point():
        return None
    flat = weight.detach().reshape(-1)
    positions = torch.arange(FINGERPRINT_SIZE, device=flat.device) * (flat.numel() // FINGERPRINT_SIZE)
    return [float(v) for v in flat[positions].double().cpu()]


def _same_base(ours: list[float] | None, theirs) -> bool:
    """The fingerprints agree up to a cast of the base model (bf16 moves a value by at most 0.4%)."""
    if ours is None or not isinstance(theirs, list) or len(theirs) != len(ours) or not all(
            isinstance(b, (int, float)) for b in theirs):
        return True  # nothing to compare (older files, models without input embeddings)
    scale = (sum(float(b) ** 2 for b in theirs) / len(theirs)) ** 0.5
    return all(abs(a - float(b)) <= FINGERPRINT_TOLERANCE * (abs(float(b)) + scale) for a, b in zip(ours, theirs))


def _pop_indices(tensors: dict, path: Path) -> list[torch.Tensor]:
    """Remove and return the integer tensors `learner_indices.0`, `.1`, ... from the loaded `tensors`."""
    count = sum(1 for k in tensors if k.startswith("learner_indices."))
    try:
        indices = [tensors.pop(f"learner_indices.{i}") for i in range(count)]
    except KeyError as e:
        raise UsageError(f"{path} lacks learner indices {e}; it is damaged") from e
    if any(idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool for idx in indices):
        raise UsageError(f"{path} holds learner indices that are not integers; it is damaged")
    return indices
