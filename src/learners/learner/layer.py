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
counts) skips it. The learner slice is a small trainable `nn.Parameter` (in
the weight's own dtype when the layer is made: a harness run in bf16 then
casts the frozen full weight, and the slice stays its fp32 master copy). The
full weight is kept equal to the merged weight (the `k` rows/columns written
into it in place whenever the slice changed: weight_sync.py), so a step costs
one dense matmul with the full weight, as in `nn.Linear`, and no `m x d` copy
is ever made. The base values under the slice are kept (a non-persistent
buffer of the slice's size), so `restore_base()` puts the original weight back
exactly (unloading; switching learner sets that share one backbone).

Learner-first order (`learner_first=True`, what `LearnerModel` uses for both
layers of an FFN): while the layer is installed, the FFN's neurons are
reordered in place so that the `k` learner neurons come first (W1's rows and
b1's entries, W2's columns, by the same permutation: the FFN's function is
unchanged, as the activation works neuron by neuron). The learner part of the
weight is then a contiguous slice: the backward pass takes a view of the
output gradient instead of gathering it, and a write after an optimizer step
is a plain copy into a slice. `merged_weight()`, `to_linear()` and
`restore_base()` give the original order back. A layer used alone (FAR's
rows of one linear) keeps the original order and gathers by index.

The backward passes (custom autograd functions below) are where the method saves:

* the input gradient goes through the full weight, and only when the layer
  below needs it: under the lowest learner layer nothing runs backward;
* the weight gradient is computed for the `k` learner rows/columns only, so no
  `m x d` gradient buffer or optimizer state exists for frozen weights;
* `LearnerColumnLinear` keeps only the learner slice `a[..., L]` of the FFN's
  hidden activation for its weight gradient, instead of all `m` neurons;
* under autocast the input and weight are cast once in forward (a weight
  already in autocast's dtype is not cast at all), and the casts are what
  backward reuses: no second cast.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .weight_sync import _optimizer_steps, _set_live, _watch_optimizer_steps


def _autocast(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The matmul's operands as autocast would cast them for nn.Linear (each cast once, and none where a tensor is
    already in autocast's dtype); outside autocast as they are."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device_type)
    return x.to(dtype), weight.to(dtype), bias.to(dtype)


def _learner_part(matrix: torch.Tensor, learners) -> torch.Tensor:
    """The learner columns of a 2-D (tokens, features) tensor: a view of the first `learners` columns (an int:
    learner-first order), or a gather of the columns `learners` (a tensor of indices)."""
    if isinstance(learners, int):
        return matrix.narrow(1, 0, learners)
    return matrix.index_select(1, learners)


class _RowLearnerFunction(torch.autograd.Function):
    """y = x W^T + b; gradients for the learner rows of W and b only (W, b already hold the learner rows)."""

    @staticmethod
    def forward(ctx, x, weight, bias, learner_weight, learner_bias, learners):
        x, weight, bias = _autocast(x, weight, bias)
        ctx.learners = learners
        ctx.save_for_backward(x if ctx.needs_input_grad[3] else None, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_lw = grad_lb = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ weight.to(grad_out.dtype)
        # From the (tokens, m) view: index_select over the last dim of a 3-D tensor takes a slow generic path on
        # the CPU (32 x 128 x 1536, 192 columns: 18 ms against 2.4 ms on the 2-D view).
        grad_rows = _learner_part(grad_out.reshape(-1, grad_out.shape[-1]), ctx.learners)  # (tokens, k)
        if ctx.needs_input_grad[3]:
            grad_lw = grad_rows.t() @ x.reshape(-1, x.shape[-1]).to(grad_rows.dtype)
        if ctx.needs_input_grad[4]:
            grad_lb = grad_rows.sum(0)
        return grad_x, None, None, grad_lw, grad_lb, None


class _ColumnLearnerFunction(torch.autograd.Function):
    """y = a W^T + b; gradients for the learner columns of W (and b if it trains) only."""

    @staticmethod
    def forward(ctx, a, weight, bias, learner_weight, learners):
        a, weight, bias = _autocast(a, weight, bias)
        a_learner = None
        if ctx.needs_input_grad[3]:  # only the learner neurons' activations are kept, for the weight gradient
            flat = a.reshape(-1, a.shape[-1])
            a_learner = torch.narrow_copy(flat, 1, 0, learners) if isinstance(learners, int) else flat.index_select(1, learners)
        ctx.save_for_backward(a_learner, weight if ctx.needs_input_grad[0] else None)
        return F.linear(a, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        a_learner, weight = ctx.saved_tensors
        grad_a = grad_b = grad_lw = None
        if ctx.needs_input_grad[0]:
            grad_a = grad_out @ weight.to(grad_out.dtype)
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])  # (tokens, d)
        if ctx.needs_input_grad[2]:
            grad_b = flat_grad.sum(0)
        if ctx.needs_input_grad[3]:
            grad_lw = flat_grad.t() @ a_learner.to(flat_grad.dtype)
        return grad_a, None, grad_b, grad_lw, None


class _LearnerLinear(nn.Module):
    """Shared storage for both sides: the frozen full weight (kept merged) + the trainable learner slice."""

    axis: int  # 0: learner rows (W1), 1: learner columns (W2)

    def __init__(self, base: nn.Linear, indices: torch.Tensor, learner_first: bool = False):
        super().__init__()
        if base.bias is None:
            raise ValueError("learner layers need an FFN linear with a bias")
        self._watched = []  # the learner tensors, as a plain list (sync reads it before every forward)
        self._views = [None, None]  # (storage key, leading slices): see _leading_slices
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
        # indices (the learner neurons' ids in the original order) and the order are not persistent: they are
        # fixed when the layer is made, so a state dict never moves them (LearnerModel.state_dict saves the indices).
        indices = indices.sort().values
        self.register_buffer("indices", indices, persistent=False)
        self.learner_first = learner_first
        self.register_buffer("base_weight_slice", None, persistent=False)
        self.learner_weight = nn.Parameter(self.weight.detach().index_select(self.axis, indices).clone())
        self._installed = False  # whether the weight is in its installed order (learner-first) with the base kept
        self._watched.append(self.learner_weight)
        self._synced = [None]  # the state of the last write (see sync); a plain list: read and set on every forward
        _watch_optimizer_steps()

    def __setstate__(self, state: dict) -> None:
        """Unpickled or deep-copied (torch.save of a whole model), an installed layer is live again."""
        super().__setstate__(state)
        self._views = [None, None]
        if self._installed:
            _set_live(self, True)

    @property
    def num_neurons(self) -> int:
        return self.indices.numel()

    @property
    def _learners(self) -> int | torch.Tensor:
        """The learners' place in the installed weight: the first k (an int), or their indices."""
        return self.indices.numel() if self.learner_first else self.indices

    def learner_parameters(self) -> list[nn.Parameter]:
        """What trains in this layer (never the shared full weight)."""
        return [self.learner_weight]

    def _slices(self) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
        """(full tensor, axis, learner tensor) for each part this layer writes: the weight (and W1's bias)."""
        return [(self.weight, self.axis, self.learner_weight)]

    def _write(self, full: torch.Tensor, axis: int, values: torch.Tensor) -> None:
        """Write `values` into the learner part of `full` (installed order), casting to its dtype."""
        if self.learner_first:
            full.narrow(axis, 0, self.num_neurons).copy_(values)
        else:
            full.index_copy_(axis, self.indices, values.detach().to(full.dtype))

    def _leading_slices(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(leading slice of a full tensor, the learner tensor written there) for each part, learner-first. The
        slices are views, made again only when a full tensor's storage changes (`.to()`, a cast)."""
        slices = self._slice_list
        key = tuple(full.data_ptr() for full, _, _ in slices)
        if self._views[0] != key:
            k = self.num_neurons
            self._views[:] = [key, [(full.detach().narrow(axis, 0, k), values) for full, axis, values in slices]]
        return self._views[1]

    def _write_learners(self) -> None:
        """Write every learner slice into its full tensor: learner-first, one foreach copy into the leading slices."""
        if self.learner_first:
            pairs = self._leading_slices()
            torch._foreach_copy_([d for d, _ in pairs], [v for _, v in pairs])
        else:
            for full, axis, values in self._slices():
                self._write(full, axis, values)

    def _state(self) -> tuple:
        """What a write depends on: the optimizer steps taken, and each learner tensor's version and storage."""
        tensors = self._watched
        return (_optimizer_steps[0], *[t._version for t in tensors], *[t.data_ptr() for t in tensors])

    def forget_sync(self) -> None:
        """Make the next forward (or sync) write the learner slices into the full weight."""
        self._synced[0] = None

    def _reorder(self, order: torch.Tensor) -> None:
        """Permute the learner axis of the weight (and W1's bias) in place: their storage stays where it is."""
        for full, axis, _ in self._slices():
            full.copy_(full.index_select(axis, order))

    def _install(self) -> None:
        """Keep the base values under the learners (original order), then reorder learner-first."""
        self.base_weight_slice = self.weight.detach().index_select(self.axis, self.indices).clone()
        if self.learner_first:
            self._reorder(self._order())
        self._installed = True
        _set_live(self, True)

    def sync(self) -> None:
        """Write the learner slices into the full weight in place if they changed since the last write.

        A slice changes through in-place updates (`copy_`, loading, most optimizers), which bump the
        parameter's version counter; through optimizer steps, also fused ones that do not bump it (counted
        globally); or by being replaced (`.to(device)`), which changes its storage. An edit through `.data`
        is seen at the next optimizer step; `restore_base()` or `forget_sync()` forces a write.

        Runs before every forward, so the check is kept cheap. Under torch.compile the forward passes run it
        eagerly (`_sync_before_forward`).
        """
        state = self._state()
        if state != self._synced[0]:
            with torch.no_grad():
                if not self._installed:  # made, or after restore_base: the full weight holds the base values
                    self._install()
                self._write_learners()
            self._synced[0] = state

    def _sync_before_forward(self) -> None:
        """`sync` in an eager forward pass (it catches edits of the slices between steps too). A compiled forward
        pass does not check: traced, the check of counters that change at every step made dynamo recompile at every
        step (docs/journal.md#five-epochs), and run eagerly it broke the graph at every learner layer. Optimizer steps write
        the slices right after they happen (the global post-step hook); edits made by hand between steps reach a
        compiled model at the next optimizer step, or at once with `sync()`."""
        if not torch.compiler.is_compiling():
            self.sync()

    def restore_base(self) -> None:
        """Put the base values back into the full weight's learner rows/columns, in the original order, and free
        their copy (the next forward or sync writes the learner slices in again): the weight is then exactly the
        base model's."""
        if self._installed:
            with torch.no_grad():
                self._restore_slices()
                if self.learner_first:
                    self._reorder(self._inverse_order())
            self.base_weight_slice = None
            self._installed = False
            _set_live(self, False)
        self._synced[0] = None

    def _restore_slices(self) -> None:
        self._write(self.weight, self.axis, self.base_weight_slice)

    def _order(self) -> torch.Tensor:
        """Learner-first order: the learner neurons (sorted), then the others (sorted). Worked out when needed
        (installing, restoring, merging) rather than kept: a set that is not in use holds only its slices."""
        rest = torch.ones(self.weight.shape[self.axis], dtype=torch.bool, device=self.indices.device)
        rest[self.indices] = False
        return torch.cat([self.indices, rest.nonzero()[:, 0]])

    def _inverse_order(self) -> torch.Tensor:
        return torch.argsort(self._order())

    def _original_order(self, full: torch.Tensor, axis: int) -> torch.Tensor:
        """A copy of `full` (the weight or W1's bias, synced) in the original neuron order."""
        full = full.detach()
        return full.index_select(axis, self._inverse_order()) if self.learner_first and self._installed else full.clone()

    def merged_weight(self) -> torch.Tensor:
        self.sync()
        return self._original_order(self.weight, self.axis)

    def to_linear(self) -> nn.Linear:
        """The merged `nn.Linear` in the original neuron order, holding this layer's weight and bias tensors
        themselves (reordered in place, no copy kept)."""
        self.sync()
        if self.learner_first:
            with torch.no_grad():
                self._reorder(self._inverse_order())
        self.base_weight_slice = None
        self._installed = False  # the weight now holds the merged values in the original order
        _set_live(self, False)
        self._synced[0] = None
        return _plain_linear(self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, learner_neurons={self.num_neurons}"
                f"{', learner-first' if self.learner_first else ''}")


class LearnerRowLinear(_LearnerLinear):
    """W1 of an FFN: output rows `indices` (and their bias entries) train."""

    axis = 0

    def __init__(self, base: nn.Linear, indices: torch.Tensor, learner_first: bool = False):
        super().__init__(base, indices, learner_first)
        self.bias = base.bias.requires_grad_(False)  # the model's own b1, kept merged like the weight
        self.register_buffer("base_bias_slice", None, persistent=False)
        self.learner_bias = nn.Parameter(self.bias.detach().index_select(0, self.indices).clone())
        self._watched.append(self.learner_bias)
        self._slice_list = self._slices()
        self.sync()

    def learner_parameters(self) -> list[nn.Parameter]:
        return [self.learner_weight, self.learner_bias]

    def _slices(self) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
        return [(self.weight, 0, self.learner_weight), (self.bias, 0, self.learner_bias)]

    def _install(self) -> None:
        self.base_bias_slice = self.bias.detach().index_select(0, self.indices).clone()
        super()._install()

    def _restore_slices(self) -> None:
        super()._restore_slices()
        self._write(self.bias, 0, self.base_bias_slice)
        self.base_bias_slice = None

    def forward(self, x):
        self._sync_before_forward()
        return _RowLearnerFunction.apply(x, self.weight, self.bias, self.learner_weight, self.learner_bias,
                                         self._learners)

    def merged_bias(self) -> torch.Tensor:
        self.sync()
        return self._original_order(self.bias, 0)

    def to_linear(self) -> nn.Linear:
        self.base_bias_slice = None
        return super().to_linear()


class LearnerColumnLinear(_LearnerLinear):
    """W2 of an FFN: input columns `indices` train; the bias b2 trains if asked (then as a copy, so the
    base model's b2 stays as it was)."""

    axis = 1

    def __init__(self, base: nn.Linear, indices: torch.Tensor, train_bias: bool = False, learner_first: bool = False):
        super().__init__(base, indices, learner_first)
        self.train_bias = train_bias
        self.bias = nn.Parameter(base.bias.detach().clone()) if train_bias else base.bias.requires_grad_(False)
        self._slice_list = self._slices()
        self.sync()

    def learner_parameters(self) -> list[nn.Parameter]:
        return [self.learner_weight, self.bias] if self.train_bias else [self.learner_weight]

    def forward(self, a):
        self._sync_before_forward()
        return _ColumnLearnerFunction.apply(a, self.weight, self.bias, self.learner_weight, self._learners)


def _plain_linear(weight: nn.Parameter, bias: nn.Parameter) -> nn.Linear:
    """An `nn.Linear` around existing parameters (made on the meta device, so nothing is allocated)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], device="meta")
    linear.weight, linear.bias = weight, bias
    return linear
