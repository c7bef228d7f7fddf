"""A cache of what the frozen blocks below the lowest learner block give each example.

With learners only in the upper blocks (`layers="top-N"`, `"skip-N"`, ...), the embeddings and the blocks
below the lowest learner block are frozen. When they are also deterministic (inference mode: evaluation,
or training with `frozen_dropout=False`), they give an example the same output every epoch. The cache
keeps that output per example, keyed by its tokens, so once an example was seen a step skips those
blocks: it runs the embeddings (a lookup) and then only the learner blocks and above, forward and
backward. This is the way past the forward-pass floor (docs/journal.md#step-time-by-depth): every other
method must run the whole forward pass every step.

Values are canonical: an example's frozen output is computed for it alone, without padding, whether the
rest of its batch was cached or not. So what the learner blocks receive does not depend on the batch an
example came in or on what the cache held: a run with the cache is deterministic given its data and
seed (a resumed run is bit-exact), and differs from a run without it only by floating-point rounding
(padding changes the summation order). Padded positions enter the learner blocks as zeros; the
attention mask hides them, as it hides their values without the cache. When the cache is full, examples
not in it run through the frozen blocks with their batch, as without the cache (and are not canonical).

Used when the call is `model(input_ids=..., attention_mask=..., token_type_ids=...)` with right padding,
as tokenizers of this model family pad; any other call (inputs_embeds, position_ids, hidden states or
attentions asked for, left padding, frozen part in training mode) runs the model as if there were no cache.
"""

import warnings

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils.rnn import pad_sequence

from ..errors import NUMBER, UsageError, check_argument

# Model types whose blocks take only the hidden states and the attention mask, so that a frozen block can run
# one example alone and give what it gives that example in a batch. MPNet and DeBERTa are not among them: their
# encoder computes relative-position terms for the whole batch and hands them to every block.
ANY_ATTENTION_KERNEL = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH,
                        SDPBackend.CUDNN_ATTENTION]
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert")


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the frozen-prefix cache cannot serve `model` (None: it can)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in SUPPORTED_MODEL_TYPES:
        return None
    return (f"the frozen-prefix cache supports model types {', '.join(SUPPORTED_MODEL_TYPES)}, not {model_type!r}: "
            "its blocks may take terms computed for the whole batch (relative positions), so a frozen block "
            "cannot run one example alone")


class PrefixCacheMixin:
    """LearnerModel's plumbing of the cache: what lies below the learners, and turning the cache on and off."""

    def frozen_below_learners(self) -> list[nn.Module]:
        """The embeddings (with ELECTRA's projection to the blocks' width) and the transformer blocks below the
        lowest block that holds a learner."""
        embeddings, blocks = self._frozen_prefix()
        return embeddings + blocks

    def frozen_blocks_below_learners(self) -> list[nn.Module]:
        """The transformer blocks below the lowest block that holds a learner (what the frozen-prefix cache skips)."""
        return self._frozen_prefix()[1]

    def _frozen_prefix(self) -> tuple[list[nn.Module], list[nn.Module]]:
        backbone = getattr(self.base_model, getattr(self.base_model, "base_model_prefix", ""), self.base_model)
        embeddings = [getattr(backbone, name, None) for name in ("embeddings", "embeddings_project")]
        return [m for m in embeddings if isinstance(m, nn.Module)], [b.block for b in self.plan.frozen_blocks]

    def enable_frozen_prefix_cache(self, max_mb: float = 2048) -> "FrozenPrefixCache":
        """Cache each example's output of the frozen blocks below the lowest learner block (see above).
        With learners in the upper blocks only, and those frozen blocks deterministic (`frozen_dropout=False`
        in training; always in evaluation), a step on an example seen before skips them. Holds up to `max_mb`
        of values. Stays on across `set_learners` (emptied; off while the set has a learner in the lowest block)."""
        check_argument(max_mb, NUMBER, "max_mb", "enable_frozen_prefix_cache", "a number of MB")
        if not max_mb > 0:
            raise UsageError(f"enable_frozen_prefix_cache: max_mb must be positive, got {max_mb}")
        self.disable_frozen_prefix_cache()
        if self._active is None:
            raise UsageError("no learner set is active: set_learners(name) first, then enable the frozen-prefix cache")
        reason = unsupported_reason(self.base_model)
        if reason is not None:
            raise UsageError(f"{reason}; leave it off for this model")
        embeddings, blocks = self._frozen_prefix()
        if not embeddings:
            raise UsageError("the frozen-prefix cache needs the model's embeddings module (BERT, DistilBERT, RoBERTa); "
                             "leave it off for this model")
        first = self.plan.learner_blocks[0]
        self._prefix_cache = FrozenPrefixCache(self.base_model, embeddings, blocks, first.block, first.up.in_features,
                                               int(max_mb * 2**20))
        self._prefix_cache_mb = max_mb
        return self._prefix_cache

    def disable_frozen_prefix_cache(self) -> None:
        if self._prefix_cache is not None:
            self._prefix_cache.close()
        self._prefix_cache, self._prefix_cache_mb = None, None

    @property
    def frozen_prefix_cache(self) -> "FrozenPrefixCache | None":
        return self._prefix_cache


class FrozenPrefixCache:
    """Installs itself on `model` (hooks, and a forward on each frozen block that can pass its input
    through); `close()` takes it all out. Made by `LearnerModel.enable_frozen_prefix_cache`."""

    def __init__(self, model: nn.Module, embeddings: list[nn.Module], frozen_blocks: list[nn.Module],
                 first_learner_block: nn.Module, width: int, max_bytes: int):
        """`embeddings`: the modules before the first block (ELECTRA's projection to the blocks' width too);
        `width`: the blocks' hidden size."""
        if not frozen_blocks:
            raise UsageError("the frozen-prefix cache needs frozen blocks below the learners, and the learners start "
                             "in the first block: put them higher (layers='top-N' or 'skip-N') or leave the cache off")
        self.embeddings, self.frozen_blocks, self.max_bytes = embeddings, frozen_blocks, max_bytes
        self.entries: dict[bytes, torch.Tensor] = {}
        self.bytes = self.hits = self.misses = 0
        self._keys: list[bytes] | None = None  # this forward call's rows, when the cache serves it
        self._signature = None
        self._full = False  # a value was refused for want of room: later misses run batched (see _substitute)
        self._block_forwards = [block.__dict__.get("forward") for block in frozen_blocks]
        self._returns_tuple = self._probe_output_type(frozen_blocks[0], width)
        self._handles = [
            model.register_forward_pre_hook(self._begin, with_kwargs=True),
            model.register_forward_hook(self._end, always_call=True),
            first_learner_block.register_forward_pre_hook(self._substitute, with_kwargs=True),
        ]
        for index, block in enumerate(frozen_blocks):
            block.forward = _PassThrough(self, index)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        for block, forward in zip(self.frozen_blocks, self._block_forwards):
            del block.forward
            if forward is not None:
                block.forward = forward
        self.clear()

    def __getstate__(self) -> dict:
        """A pickled or copied cache starts empty: its values are derived data, computed again on first use
        (so `torch.save(model)` does not store them)."""
        return {**self.__dict__, "entries": {}, "bytes": 0, "_full": False, "_keys": None}

    def clear(self) -> None:
        self.entries, self.bytes, self._full = {}, 0, False

    # ---- the forward call ----------------------------------------------------------

    def _begin(self, module, args, kwargs) -> None:
        """Decide whether this call is served by the cache: its rows' keys, or None."""
        self._keys = None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if (input_ids is None or input_ids.dim() != 2 or len(args) > 1 or kwargs.get("inputs_embeds") is not None
                or kwargs.get("position_ids") is not None or kwargs.get("output_hidden_states")
                or kwargs.get("output_attentions")
                or any(m.training for m in [*self.embeddings, *self.frozen_blocks])):
            return
        lengths = _right_padded_lengths(kwargs.get("attention_mask"), input_ids)
        if lengths is None:
            return
        signature = self._current_signature(input_ids.device)
        if signature != self._signature:  # frozen weights, dtype, device or autocast changed: old values are stale
            self.clear()
            self._signature = signature
        token_type_ids = kwargs.get("token_type_ids")
        ids = input_ids.detach().cpu()
        types = token_type_ids.detach().cpu() if token_type_ids is not None else None
        self._keys = [_row_key(ids[i, :n], None if types is None else types[i, :n]) for i, n in enumerate(lengths)]
        self._lengths = lengths

    def _end(self, module, args, kwargs_or_output, output=None) -> None:
        self._keys = None

    def _substitute(self, block, args, kwargs):
        """At the lowest learner block: its input becomes each row's cached frozen output (computed now for
        the rows not seen yet), padded with zeros to the batch's length."""
        if self._keys is None:
            return None
        embedded = args[0] if args else kwargs["hidden_states"]  # the frozen blocks passed it through
        batched = None
        if self._full and any(key not in self.entries for key in self._keys):
            # no room to keep them: run the frozen blocks once for the batch, with its mask, not per example
            batched = self._frozen_output(embedded, *args[1:], **{k: v for k, v in kwargs.items()
                                                                    if k != "hidden_states"})
        rows = []
        for i, (key, n) in enumerate(zip(self._keys, self._lengths)):
            row = self.entries.get(key)
            if row is None:
                self.misses += 1
                if batched is not None:
                    row = batched[i, :n]
                else:
                    row = self._frozen_output(embedded[i:i + 1, :n], None)[0]  # alone, no padding: no mask
                    self._store(key, row)
            else:
                self.hits += 1
            rows.append(row)
        hidden = pad_sequence(rows, batch_first=True)  # zeros after each row's tokens, one copy on any device
        if hidden.shape[1] < embedded.shape[1]:
            hidden = torch.nn.functional.pad(hidden, (0, 0, 0, embedded.shape[1] - hidden.shape[1]))
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def _frozen_output(self, embedded: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """`embedded` (batch x length x hidden) through the frozen blocks, each called with `args` and `kwargs`
        (the mask and the rest, as the lowest learner block got them: every block of the encoder gets the same)."""
        hidden = embedded
        # no backward runs here: any attention kernel will do, whatever a caller narrowed the choice to for its
        # training step (the harness asks for the math kernel on a CPU in bf16, whose fused kernel's backward is slow)
        with torch.no_grad(), sdpa_kernel(ANY_ATTENTION_KERNEL):
            for index in range(len(self.frozen_blocks)):
                out = self._run_block(index, hidden, *args, **kwargs)
                hidden = out[0] if isinstance(out, tuple) else out
        return hidden.detach()

    def _run_block(self, index: int, hidden_states, *args, **kwargs):
        original = self._block_forwards[index]
        if original is not None:
            return original(hidden_states, *args, **kwargs)
        block = self.frozen_blocks[index]
        return type(block).forward(block, hidden_states, *args, **kwargs)

    def _store(self, key: bytes, row: torch.Tensor) -> None:
        size = row.numel() * row.element_size()
        if self.bytes + size > self.max_bytes:
            if not self._full:
                warnings.warn(f"frozen-prefix cache full ({self.bytes / 2**20:.0f} MB): examples not in it run "
                              "through the frozen blocks with their batch every time, so their values depend on the "
                              "padding and a resumed run is no longer bit-exact; raise its size (max_mb, "
                              "--frozen-prefix-cache-mb) to hold the data set", stacklevel=2)
                self._full = True
            return
        self.entries[key] = row
        self.bytes += size

    def _current_signature(self, device: torch.device) -> tuple:
        params = [p for m in [*self.embeddings, *self.frozen_blocks] for p in m.parameters()]
        autocast = torch.is_autocast_enabled(device.type)
        return (tuple(p._version for p in params), tuple(p.data_ptr() for p in params), params[0].dtype,
                params[0].device, autocast, torch.get_autocast_dtype(device.type) if autocast else None)

    def _probe_output_type(self, block: nn.Module, width: int) -> bool:
        """Whether the frozen blocks return a tuple (older transformers) or the hidden states alone; the
        pass-through must return the same. A tuple with attentions in it cannot be passed through."""
        param = next(block.parameters())
        with torch.no_grad():
            was_training = block.training
            block.eval()
            out = self._run_block(0, torch.zeros(1, 1, width, dtype=param.dtype, device=param.device), None)
            block.train(was_training)
        if isinstance(out, tuple) and len(out) != 1:
            raise UsageError("the frozen-prefix cache needs blocks that return their hidden states alone; "
                             "this model's return more (attentions?): leave the cache off")
        return isinstance(out, tuple)


class _PassThrough:
    """A frozen block's forward while the cache is installed: its input unchanged when the cache serves
    the call (the lowest learner block then takes the cached values), else the block's own forward."""

    def __init__(self, cache: FrozenPrefixCache, index: int):
        self.cache, self.index = cache, index

    def __call__(self, hidden_states, *args, **kwargs):
        if self.cache._keys is None:
            return self.cache._run_block(self.index, hidden_states, *args, **kwargs)
        return (hidden_states,) if self.cache._returns_tuple else hidden_states


def _right_padded_lengths(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> list[int] | None:
    """Each row's length when every row is real tokens then padding (None otherwise)."""
    batch, length = input_ids.shape
    if attention_mask is None:
        return [length] * batch
    mask = attention_mask.detach().cpu()
    if mask.shape != input_ids.shape:
        return None
    lengths = mask.ne(0).sum(dim=1)
    if not torch.equal(mask.ne(0), torch.arange(length)[None, :] < lengths[:, None]) or bool((lengths == 0).any()):
        return None
    return lengths.tolist()


def _row_key(ids: torch.Tensor, types: torch.Tensor | None) -> bytes:
    key = ids.numpy().tobytes()
    return key if types is None else key + b"|" + types.numpy().tobytes()
