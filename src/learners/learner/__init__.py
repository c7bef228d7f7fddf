"""Learner modules: config, plan, layers, selection, priming, and the model wrapper.

`learners.learner.trainer` (priming with a transformers Trainer) is imported on its own: it needs accelerate."""

from .config import LearnerConfig
from .model import LearnerModel, get_learner_model
from .plan import LearnerPlan, plan_learners
from .priming import Primer

__all__ = ["LearnerConfig", "LearnerModel", "LearnerPlan", "Primer", "get_learner_model", "plan_learners"]
