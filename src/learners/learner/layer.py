"""The Learner math: a frozen nn.Linear of which only a few neurons train.

An FFN is `W2 · act(W1 · x + b1) + b2` with `m` intermediate neurons. A learner
is the sub-FFN of `k` chosen neurons `L`: rows `W1[L, :]` and entries `b1[L]`
of the first linear, columns `W2[:, L]` of the second. Everything else stays
frozen, so the function at the start is the original one and merging back is
a plain copy.

Two layers, one per side of the FFN:

* `LearnerRowLinear` wraps W1: the `k` learner *output* rows train.
* `LearnerColumnLinear` wraps W2: the `k` learner *input* columns train.

Storage: the full weight stays a frozen buffer (the model's own tensor, not a
copy) and the learner slice is a small `nn.Parameter`. The buffer is kept
equal to the merged weight: whenever a learner slice has changed since the
last forward (an optimizer step, a load, any in-place edit: tracked by the
parameter's version counter), the `k` rows/columns are written into the buffer
in place. So a step costs one single dense matmul with the buffer, as in
`nn.Linear`, and no `m x d` copy is ever made.

The backward passes (custom autograd functions below) are where the method saves:

* the input gradient goes through the full weight, and only when the layer
  below needs it: under the lowest learner layer nothing runs backward;
* the weight gradient is computed for the `k` learner rows/columns only, so no
  `m x d` gradient buffer or optimizer state exists for frozen weights;
* `LearnerColumnLinear` keeps only the learner slice `a[..., L]` of the FFN's
  hidden activation for its weight gradient, instead of all `m` neurons;
* under autocast the weight is cast once in forward and that cast is reused in
  backward (as autocast's cache does for `nn.Linear`).
"""

import torch
import torch.nn.functional as F
from torch import nn


def _compute_weight(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The weight in the dtype the matmul runs in: autocast's dtype when autocast is on, else as stored."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return weight.to(torch.get_autocast_dtype(device_type))
    return weight


class _RowLearnerFunction(torch.autograd.Function):
    """y = x W^T + b; gradients for rows `idx` of W and b only (W, b already hold the learner rows)."""

    @staticmethod
    def forward(ctx, x, weight, bias, learner_weight, learner_bias, idx):
        w = _compute_weight(weight, x)
        ctx.save_for_backward(x if ctx.needs_input_grad[3] else None, w, idx)
        return F.linear(x, w, bias.to(w.dtype))

    @staticmethod
    def backward(ctx, grad_out):
        x, w, idx = ctx.saved_tensors
        grad_x = grad_lw = grad_lb = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ w.to(grad_out.dtype)
        grad_rows = grad_out.index_select(-1, idx).reshape(-1, idx.numel())  # (tokens, k)
        if ctx.needs_input_grad[3]:
            grad_lw = grad_rows.t() @ x.reshape(-1, x.shape[-1]).to(grad_rows.dtype)
        if ctx.needs_input_grad[4]:
            grad_lb = grad_rows.sum(0)
        return grad_x, None, None, grad_lw, grad_lb, None


class _ColumnLearnerFunction(torch.autograd.Function):
    """y = a W^T + b; gradients for columns `idx` of W (and b if it trains) only."""

    @staticmethod
    def forward(ctx, a, weight, bias, learner_weight, idx):
        w = _compute_weight(weight, a)
        # Only the learner neurons' activations are needed for the weight gradient.
        a_learner = a.index_select(-1, idx) if ctx.needs_input_grad[3] else None
        ctx.save_for_backward(a_learner, w if ctx.needs_input_grad[0] else None, idx)
        return F.linear(a, w, bias.to(w.dtype))

    @staticmethod
    def backward(ctx, grad_out):
        a_learner, w, idx = ctx.saved_tensors
        grad_a = grad_b = grad_lw = None
        if ctx.needs_input_grad[0]:
            grad_a = grad_out @ w.to(grad_out.dtype)
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])  # (tokens, d)
        if ctx.needs_input_grad[2]:
            grad_b = flat_grad.sum(0)
        if ctx.needs_input_grad[3]:
            grad_lw = flat_grad.t() @ a_learner.reshape(-1, idx.numel()).to(flat_grad.dtype)
        return grad_a, None, grad_b, grad_lw, None


class _LearnerLinear(nn.Module):
    """Shared storage for both sides: frozen full weight (kept merged) + trainable learner slice."""

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
        self._synced_state = None

    @property
    def num_neurons(self) -> int:
        return self.indices.numel()

    def _learner_tensors(self) -> list[torch.Tensor]:
        return [self.learner_weight]

    def _write_slices(self) -> None:
        self.weight.index_copy_(self.axis, self.indices, self.learner_weight.detach().to(self.weight.dtype))

    def sync(self) -> None:
        """Write the learner slices into the full weight in place if they changed since the last write.

        A slice changes through in-place updates (optimizer steps, `copy_`, loading), which bump the
        parameter's version counter, or by being replaced (`.to(device)`), which changes its storage.
        """
        state = tuple((t.data_ptr(), t._version) for t in self._learner_tensors())
        if state != self._synced_state:
            with torch.no_grad():
                self._write_slices()
            self._synced_state = state

    def merged_weight(self) -> torch.Tensor:
        self.sync()
        return self.weight.detach().clone()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, learner_neurons={self.num_neurons}"


class LearnerRowLinear(_LearnerLinear):
    """W1 of an FFN: output rows `indices` (and their bias entries) train."""

    axis = 0

    def __init__(self, base: nn.Linear, indices: torch.Tensor):
        super().__init__(base, indices)
        self.register_buffer("bias", base.bias.detach())
        self.learner_bias = nn.Parameter(self.bias.index_select(0, self.indices).clone())
        self.sync()

    def _learner_tensors(self) -> list[torch.Tensor]:
        return [self.learner_weight, self.learner_bias]

    def _write_slices(self) -> None:
        super()._write_slices()
        self.bias.index_copy_(0, self.indices, self.learner_bias.detach().to(self.bias.dtype))

    def forward(self, x):
        self.sync()
        return _RowLearnerFunction.apply(x, self.weight, self.bias, self.learner_weight, self.learner_bias, self.indices)

    def merged_bias(self) -> torch.Tensor:
        self.sync()
        return self.bias.detach().clone()

    def to_linear(self) -> nn.Linear:
        return _plain_linear(self.merged_weight(), self.merged_bias())


class LearnerColumnLinear(_LearnerLinear):
    """W2 of an FFN: input columns `indices` train; the bias b2 trains if asked."""

    axis = 1

    def __init__(self, base: nn.Linear, indices: torch.Tensor, train_bias: bool = False):
        super().__init__(base, indices)
        self.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=train_bias)
        self.sync()

    def forward(self, a):
        self.sync()
        return _ColumnLearnerFunction.apply(a, self.weight, self.bias, self.learner_weight, self.indices)

    def to_linear(self) -> nn.Linear:
        return _plain_linear(self.merged_weight(), self.bias.detach())


def _plain_linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return linear
