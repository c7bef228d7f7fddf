"""learners: fine-tune small BERT-family encoders with Learner modules and priming."""

from .learner import LearnerConfig, LearnerModel, Primer, get_learner_model

__all__ = ["LearnerConfig", "LearnerModel", "Primer", "get_learner_model"]
