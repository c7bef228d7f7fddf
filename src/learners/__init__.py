"""learners: fine-tune small BERT-family encoders with Learner modules and priming."""

from .learner import LearnerConfig, LearnerModel, get_learner_model

__all__ = ["LearnerConfig", "LearnerModel", "get_learner_model"]
