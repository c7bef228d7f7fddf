"""BitFit (Ben Zaken et al., 2022): only the bias terms train, plus the task head."""

from torch import nn

from .base import Method


class BitFit(Method):
    """Every bias term of the encoder trains: the query/key/value, attention-output and both FFN
    linears' biases, and the LayerNorm biases (beta), embeddings LayerNorm included. The task head
    (`head_parameter_names`) trains whole. All weight matrices and LayerNorm gains stay frozen.
    """

    name = "bitfit"
    default_learning_rate = 1e-3
    default_lr_scheduler = "constant"
    default_weight_decay = 0.0

    def prepare(self, model: nn.Module, batches) -> nn.Module:
        super().prepare(model, batches)
        for name, p in model.named_parameters():
            p.requires_grad_(name in self.head_names or name.endswith("bias"))
        return model
