"""The Learner math: a frozen nn.Linear of which only a few neurons train.

An FFN is `W2 · act(W1 · x + b1) + b2` with `m` intermediate neurons. A learner
is the sub-FFN of `k` chosen neurons `L`: rows `W1[L, :]` and entries `b1[L]`
of the first linear, columns `W2[:, L]` of the second. Everything else stays
frozen, so the function at the start is the original one and merging back is
a plain copy.

Two layers, one per side of the FFN:

* `LearnerRowLinear` wraps W1: the `k` learner *output* rows train.
* `LearnerColumnLinear` wraps W2: the `k` learner *input* columns train.

Storage: the full weight stays the model's own frozen `nn.Parameter`
(`requires_grad=False`), registered under the same key as in `nn.Linear`
(`...dense.weight`, `...dense.bias`), not a copy and not a buffer: so
`named_parameters()` and `state_dict()` list it where a user, FSDP wrapping or
a quantizer expects it, `.to()`/`.half()` treat it as a weight, and anything
that selects by `requires_grad` (optimizers, our checkpoints, the parameter
counts) skips it. The learner slice is a small trainable `nn.Parameter`. The
full weight is kept equal to the merged weight: whenever a learner slice has
changed since the last forward (an in-place edit or a load, tracked by the
parameter's version counter; or any optimizer step, counted by a global
post-step hook, because fused optimizers such as `AdamW(fused=True)`, the
CUDA default of our engine and transformers' Trainer, update in place without
bumping version counters), the `k` rows/columns are written into it in place. So a step costs one single dense matmul with the full weight,
as in `nn.Linear`, and no `m x d` copy is ever made. While the learner values are
written into the full weight, the base values they cover are kept (a
non-persistent buffer of the slice's size), so `restore_base()` puts the
original weight back exactly and frees that buffer (unloading; switching
learner sets that share one backbone: a set that is not in use holds only its
learner slices).

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
from torch.optim.optimizer import register_optimizer_step_post_hook


_optimizer_steps = [0]  # optimizer steps taken in this process, counted by the hook below
_step_hook = []


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    _optimizer_steps[0] += 1


def _watch_optimizer_steps() -> None:
    """Count every optimizer step (torch.optim's global post-step hook), once per process."""
    if not _step_hook:
        _step_hook.append(register_optimizer_step_post_hook(_count_optimizer_step))


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
        # Gathered from the (tokens, m) view: index_select over the last dim of a 3-D tensor takes a slow generic
        # path on the CPU (32 x 128 x 1536, 192 columns: 18 ms against 2.4 ms on the 2-D view; BENCHMARKS.md 5.23).
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1]).index_select(-1, idx)  # (tokens, k)
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
        # (tokens, k), gathered from the 2-D view (see _RowLearnerFunction.backward)
        a_learner = a.reshape(-1, a.shape[-1]).index_select(-1, idx) if ctx.needs_input_grad[3] else None
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
            grad_lw = flat_grad.t() @ a_learner.to(flat_grad.dtype)
        return grad_a, None, grad_b, grad_lw, None


class _LearnerLinear(nn.Module):
    """Shared storage for both sides: the frozen full weight (kept merged) + the trainable learner slice."""

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
        self.weight = base.weight.requires_grad_(False)  # the model's own Parameter, frozen
        # indices and base slices are not persistent: they are fixed when the layer is made, so a state
        # dict never moves them (LearnerModel.state_dict saves the indices itself).
        self.register_buffer("indices", indices.sort().values, persistent=False)
        self.register_buffer("base_weight_slice", self.weight.detach().index_select(self.axis, self.indices).clone(),
                             persistent=False)
        self.learner_weight = nn.Parameter(self.base_weight_slice.clone())
        self._synced_state = None
        _watch_optimizer_steps()

    @property
    def num_neurons(self) -> int:
        return self.indices.numel()

    def learner_parameters(self) -> list[nn.Parameter]:
        """What trains in this layer (never the shared full weight)."""
        return [self.learner_weight]

    def _learner_tensors(self) -> list[torch.Tensor]:
        return [self.learner_weight]

    def _write_slices(self) -> None:
        self.weight.index_copy_(self.axis, self.indices, self.learner_weight.detach().to(self.weight.dtype))

    def _keep_base(self) -> None:
        self.base_weight_slice = self.weight.detach().index_select(self.axis, self.indices).clone()

    def sync(self) -> None:
        """Write the learner slices into the full weight in place if they changed since the last write.

        A slice changes through in-place updates (`copy_`, loading, most optimizers), which bump the
        parameter's version counter; through optimizer steps, also fused ones that do not bump it (counted
        globally); or by being replaced (`.to(device)`), which changes its storage. An edit through `.data`
        is seen at the next optimizer step; `restore_base()` or `_synced_state = None` forces a write.

        Under torch.compile the forward passes run it eagerly (`_sync_before_forward`).
        """
        state = (_optimizer_steps[0], *((t.data_ptr(), t._version) for t in self._learner_tensors()))
        if state != self._synced_state:
            with torch.no_grad():
                if self.base_weight_slice is None:  # after restore_base: the full weight holds base values
                    self._keep_base()
                self._write_slices()
            self._synced_state = state

    def _sync_before_forward(self) -> None:
        """`sync`, run eagerly under torch.compile (a graph break around it): traced, its check of a step counter
        and of version counters that change at every step made dynamo recompile it at every step, up to its
        recompile limit, with a warning (BENCHMARKS.md 5.20). Eager runs call it directly (no wrapper cost)."""
        if torch.compiler.is_compiling():
            _eager_sync(self)
        else:
            self.sync()

    def restore_base(self) -> None:
        """Put the base values back into the full weight's learner rows/columns and free their copy (the next
        forward or sync writes the learner slices in again): the weight is then exactly the base model's."""
        if self.base_weight_slice is not None:
            with torch.no_grad():
                self._restore_slices()
            self.base_weight_slice = None
        self._synced_state = None

    def _restore_slices(self) -> None:
        self.weight.index_copy_(self.axis, self.indices, self.base_weight_slice)

    def merged_weight(self) -> torch.Tensor:
        self.sync()
        return self.weight.detach().clone()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, learner_neurons={self.num_neurons}"


_eager_sync = torch.compiler.disable(_LearnerLinear.sync)


class LearnerRowLinear(_LearnerLinear):
    """W1 of an FFN: output rows `indices` (and their bias entries) train."""

    axis = 0

    def __init__(self, base: nn.Linear, indices: torch.Tensor):
        super().__init__(base, indices)
        self.bias = base.bias.requires_grad_(False)  # the model's own b1, kept merged like the weight
        self.register_buffer("base_bias_slice", self.bias.detach().index_select(0, self.indices).clone(), persistent=False)
        self.learner_bias = nn.Parameter(self.base_bias_slice.clone())
        self.sync()

    def learner_parameters(self) -> list[nn.Parameter]:
        return [self.learner_weight, self.learner_bias]

    def _learner_tensors(self) -> list[torch.Tensor]:
        return [self.learner_weight, self.learner_bias]

    def _write_slices(self) -> None:
        super()._write_slices()
        self.bias.index_copy_(0, self.indices, self.learner_bias.detach().to(self.bias.dtype))

    def _keep_base(self) -> None:
        super()._keep_base()
        self.base_bias_slice = self.bias.detach().index_select(0, self.indices).clone()

    def _restore_slices(self) -> None:
        super()._restore_slices()
        self.bias.index_copy_(0, self.indices, self.base_bias_slice)
        self.base_bias_slice = None

    def forward(self, x):
        self._sync_before_forward()
        return _RowLearnerFunction.apply(x, self.weight, self.bias, self.learner_weight, self.learner_bias, self.indices)

    def merged_bias(self) -> torch.Tensor:
        self.sync()
        return self.bias.detach().clone()

    def to_linear(self) -> nn.Linear:
        """The merged `nn.Linear`, holding this layer's weight and bias tensors themselves (no copy)."""
        self.sync()
        return _plain_linear(self.weight, self.bias)


class LearnerColumnLinear(_LearnerLinear):
    """W2 of an FFN: input columns `indices` train; the bias b2 trains if asked (then as a copy, so the
    base model's b2 stays as it was)."""

    axis = 1

    def __init__(self, base: nn.Linear, indices: torch.Tensor, train_bias: bool = False):
        super().__init__(base, indices)
        self.train_bias = train_bias
        self.bias = nn.Parameter(base.bias.detach().clone()) if train_bias else base.bias.requires_grad_(False)
        self.sync()

    def learner_parameters(self) -> list[nn.Parameter]:
        return [self.learner_weight, self.bias] if self.train_bias else [self.learner_weight]

    def forward(self, a):
        self._sync_before_forward()
        return _ColumnLearnerFunction.apply(a, self.weight, self.bias, self.learner_weight, self.indices)

    def to_linear(self) -> nn.Linear:
        """The merged `nn.Linear`, holding this layer's weight and bias tensors themselves (no copy)."""
        self.sync()
        return _plain_linear(self.weight, self.bias)


def _plain_linear(weight: nn.Parameter, bias: nn.Parameter) -> nn.Linear:
    """An `nn.Linear` around existing parameters (made on the meta device, so nothing is allocated)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], device="meta")
    linear.weight, linear.bias = weight, bias
    return linear
