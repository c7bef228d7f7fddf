"""Head-only fine-tuning (linear probing with the two-layer head): the encoder stays frozen."""

from torch import nn

from .base import Method


class HeadOnly(Method):
    """Only the task head trains: BERT's pooler + classifier, RoBERTa's classification head
    (dense + out_proj), DistilBERT's pre_classifier + classifier (`head_parameter_names`).
    Every encoder parameter, embeddings included, is frozen.
    """

    name = "head"
    default_learning_rate = 1e-3
    default_lr_scheduler = "constant"
    default_weight_decay = 0.0

    def prepare(self, model: nn.Module, batches) -> nn.Module:
        super().prepare(model, batches)
        for name, p in model.named_parameters():
            p.requires_grad_(name in self.head_names)
        return model
