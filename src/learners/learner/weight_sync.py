"""Keeping each learner layer's full weight equal to its merged weight, whatever updates the learner slices.

A learner layer computes with one full weight (layer.py): the frozen weight with its learner slice written in. The
slice changes in two ways the layer must see before its next forward. An in-place edit or a load bumps the
parameter's version counter, which the layer compares (`_LearnerLinear._state`). An optimizer step does not
always: fused and foreach optimizers (our engine's and transformers' Trainer's default) update in place without
bumping it. So a global post-step hook (torch.optim's `register_optimizer_step_post_hook`, installed once per
process) counts every step and writes the new slices of the installed layers that the stepping optimizer holds
into their full weights right away: a compiled forward then has nothing to check or write. Layers of other
learner models alive in the process are left to their own next forward.
"""

import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


_optimizer_steps = [0]  # optimizer steps taken in this process, counted by the hook below
_step_hook = []
_LIVE_LAYERS = weakref.WeakSet()  # the installed learner layers: their full weight holds their slices (_install)
_live_changes = [0]  # bumped whenever a layer joins or leaves _LIVE_LAYERS (invalidates _STEPPED)
_STEPPED = weakref.WeakKeyDictionary()  # optimizer -> (key, the installed layers whose learner tensors it steps)


def _set_live(layer, live: bool) -> None:
    (_LIVE_LAYERS.add if live else _LIVE_LAYERS.discard)(layer)
    _live_changes[0] += 1


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    """After every optimizer step: count it, and write the new learner slices of the installed layers that this
    optimizer steps into their full weights right away, so that a compiled forward pass has nothing to check or
    write (no graph break). Other learner models (an earlier run's, not yet collected) are left alone: each
    writes its own slices at its next forward if they changed."""
    _optimizer_steps[0] += 1
    if _LIVE_LAYERS:
        _sync_all(_stepped_layers(optimizer))


def _stepped_layers(optimizer) -> list:
    """The installed layers whose learner tensors are among `optimizer`'s parameters (kept per optimizer until a
    layer is installed or removed, or the optimizer's parameter list changes)."""
    key = (_live_changes[0], sum(len(group["params"]) for group in optimizer.param_groups))
    cached = _STEPPED.get(optimizer)
    if cached is None or cached[0] != key:
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        cached = (key, [layer for layer in list(_LIVE_LAYERS) if any(id(t) in stepped for t in layer._watched)])
        _STEPPED[optimizer] = cached
    return cached[1]


def _sync_all(layers: list) -> None:
    """`sync()` of every layer, the writes of all learner-first layers in one foreach copy (a step writes three
    slices per FFN block: one call instead of one per slice)."""
    destinations, sources, written = [], [], []
    for layer in layers:
        state = layer._state()
        if state == layer._synced[0]:
            continue
        if layer.learner_first and layer._installed:
            pairs = layer._leading_slices()
            destinations += [d for d, _ in pairs]
            sources += [v for _, v in pairs]
            written.append((layer, state))
        else:
            layer.sync()
    if destinations:
        with torch.no_grad():
            torch._foreach_copy_(destinations, sources)
    for layer, state in written:
        layer._synced[0] = state


def _watch_optimizer_steps() -> None:
    """Count every optimizer step (torch.optim's global post-step hook), once per process."""
    if not _step_hook:
        _step_hook.append(register_optimizer_step_post_hook(_count_optimizer_step))


