"""Learner modules: config, layers, selection, and the model wrapper."""

from .config import LearnerConfig
from .model import LearnerModel, get_learner_model

__all__ = ["LearnerConfig", "LearnerModel", "get_learner_model"]
