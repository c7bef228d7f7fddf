"""The Learner math: a frozen nn.Linear of which only a few neurons train.

An FFN is `W2 · act(W1 · x + b1) + b2` with `m` intermediate neurons. A learner
is the sub-FFN of `k` chosen neurons `L`: rows `W1[L, :]` and entries `b1[L]`
of the first linear, columns `W2[:, L]` of the second. Everything else stays
frozen, so the function at the start is the original one and merging back is
a plain `index_copy`.

Two layers, one per side of the FFN:

* `LearnerRowLinear` wraps W1: the `k` learner *output* rows train.
* `LearnerColumnLinear` wraps W2: the `k` learner *input* columns train.

Both run the same single dense matmul as `nn.Linear` in the forward pass. Their
backward passes (custom autograd functions below) are where the method saves:

* the input gradient goes through the full weight (earlier layers need it);
* the weight gradient is computed for the `k` learner rows/columns only, so no
  `m x d` gradient buffer or optimizer state exists for frozen weights;
* `LearnerColumnLinear` keeps only the learner slice `a[..., L]` of the FFN's
  hidden activation for its weight gradient, instead of all `m` neurons.

The full weight is a frozen buffer; the learner slice is a separate, small
`nn.Parameter`. The effective weight is rebuilt with `index_copy` (an `m x d`
copy, negligible next to the matmul) each forward and again in backward
rather than saved, so it costs no activation memory.
"""

import torch
import torch.nn.functional as F
from torch import nn


class _RowLearnerFunction(torch.autograd.Function):
    """y = x W^T + b where rows `idx` of W and b come from the learner slice."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, bias, learner_weight, learner_bias, idx):
        w = weight.index_copy(0, idx, learner_weight)
        b = bias.index_copy(0, idx, learner_bias)
        ctx.save_for_backward(x, weight, learner_weight, idx)
        return F.linear(x, w, b)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        x, weight, learner_weight, idx = ctx.saved_tensors
        grad_x = grad_lw = grad_lb = None
        if ctx.needs_input_grad[0]:
            w = weight.index_copy(0, idx, learner_weight)
            grad_x = grad_out @ w.to(grad_out.dtype)
        grad_rows = grad_out.index_select(-1, idx).reshape(-1, idx.numel())  # (tokens, k)
        if ctx.needs_input_grad[3]:
            grad_lw = grad_rows.t() @ x.reshape(-1, x.shape[-1]).to(grad_rows.dtype)
        if ctx.needs_input_grad[4]:
            grad_lb = grad_rows.sum(0)
        return grad_x, None, None, grad_lw, grad_lb, None


class _ColumnLearnerFunction(torch.autograd.Function):
    """y = a W^T + b where columns `idx` of W come from the learner slice."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, a, weight, bias, learner_weight, idx):
        w = weight.index_copy(1, idx, learner_weight)
        # Only the learner neurons' activations are needed for the weight gradient.
        a_learner = a.index_select(-1, idx) if ctx.needs_input_grad[3] else None
        ctx.save_for_backward(a_learner, weight, learner_weight, idx)
        return F.linear(a, w, bias)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        a_learner, weight, learner_weight, idx = ctx.saved_tensors
        grad_a = grad_b = grad_lw = None
        if ctx.needs_input_grad[0]:
            w = weight.index_copy(1, idx, learner_weight)
            grad_a = grad_out @ w.to(grad_out.dtype)
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])  # (tokens, d)
        if ctx.needs_input_grad[2]:
            grad_b = flat_grad.sum(0)
        if ctx.needs_input_grad[3]:
            grad_lw = flat_grad.t() @ a_learner.reshape(-1, idx.numel()).to(flat_grad.dtype)
        return grad_a, None, grad_b, grad_lw, None


class _LearnerLinear(nn.Module):
    """Shared storage for both sides: frozen full weight + trainable learner slice."""

    axis: int  # 0: learner rows (W1), 1: learner columns (W2)

    def __init__(self, base: nn.Linear, indices: torch.Tensor):
        super().__init__()
        if base.bias is None:
            raise ValueError("learner layers need an FFN linear with a bias")
        size = base.weight.shape[self.axis]
        indices = torch.as_tensor(indices, dtype=torch.long, device=base.weight.device)
        if indices.ndim != 1 or indices.numel() == 0:
            raise ValueError("learner indices must be a non-empty 1-D list of neuron ids")
        if indices.unique().numel() != indices.numel():
            raise ValueError("learner indices must be distinct")
        if int(indices.min()) < 0 or int(indices.max()) >= size:
            raise ValueError(f"learner indices must lie in [0, {size}); got {int(indices.min())}..{int(indices.max())}")
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.register_buffer("weight", base.weight.detach())
        self.register_buffer("indices", indices.sort().values)
        self.learner_weight = nn.Parameter(self.weight.index_select(self.axis, self.indices).clone())

    @property
    def num_neurons(self) -> int:
        return self.indices.numel()

    def merged_weight(self) -> torch.Tensor:
        return self.weight.index_copy(self.axis, self.indices, self.learner_weight.detach())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, learner_neurons={self.num_neurons}"


class LearnerRowLinear(_LearnerLinear):
    """W1 of an FFN: output rows `indices` (and their bias entries) train."""

    axis = 0

    def __init__(self, base: nn.Linear, indices: torch.Tensor):
        super().__init__(base, indices)
        self.register_buffer("bias", base.bias.detach())
        self.learner_bias = nn.Parameter(self.bias.index_select(0, self.indices).clone())

    def forward(self, x):
        return _RowLearnerFunction.apply(x, self.weight, self.bias, self.learner_weight, self.learner_bias, self.indices)

    def merged_bias(self) -> torch.Tensor:
        return self.bias.index_copy(0, self.indices, self.learner_bias.detach())

    def to_linear(self) -> nn.Linear:
        return _plain_linear(self.merged_weight(), self.merged_bias())


class LearnerColumnLinear(_LearnerLinear):
    """W2 of an FFN: input columns `indices` train; the bias b2 trains if asked."""

    axis = 1

    def __init__(self, base: nn.Linear, indices: torch.Tensor, train_bias: bool = False):
        super().__init__(base, indices)
        self.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=train_bias)

    def forward(self, a):
        return _ColumnLearnerFunction.apply(a, self.weight, self.bias, self.learner_weight, self.indices)

    def to_linear(self) -> nn.Linear:
        return _plain_linear(self.merged_weight(), self.bias.detach())


def _plain_linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return linear
