"""Which `k` neurons of each FFN become the learner.

Every strategy scores the `m` intermediate neurons of each FFN and keeps the
top `k`. A neuron `i` owns row `W1[i, :]`, entry `b1[i]` and column `W2[:, i]`.

* priming   - how far the neuron moved during a short full fine-tuning:
              s_i = |dW1[i,:]|_1 + |dW2[:,i]|_1 + |db1[i]|
* gradient  - the same L1 sum over gradients, accumulated over a few batches
              without any update
* magnitude - the same L1 sum over the weights themselves
* random    - a seeded random choice

With `layers="auto"` the same scores also choose *where* learners go
(`choose_layers`): the backward pass only has to reach the lowest learner
block, so the learner blocks are the fewest blocks counted down from the
output that hold `layer_coverage` of the signal.
"""

from dataclasses import replace

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UsageError
from .config import LearnerConfig
from .ffn import FFNBlock, find_ffn_blocks


def neuron_l1(w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Per-neuron L1 mass |w1[i,:]|_1 + |w2[:,i]|_1 + |b1[i]| for W1 (m x d), b1 (m), W2 (d x m)."""
    return w1.abs().sum(1) + w2.abs().sum(0) + b1.abs()


def moved_l1(now: torch.Tensor, before: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """How far a tensor moved from `before`: |now - before| summed over `dim` (L1 per row for dim=1,
    per column for dim=0), or per entry for dim=None. Priming's neuron scores and FAR's unit scores."""
    moved = (now - before).abs()
    return moved if dim is None else moved.sum(dim)


def rank0_scores(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Rank 0's `scores` (moved to the CPU) on every data-parallel rank, so that all select the same neurons
    and blocks; as given without a process group of several ranks. (Priming's scores agree anyway, DDP keeps
    the weights equal; a gradient probe's come from each rank's own batches.)"""
    scores = [s.cpu() for s in scores]
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return scores
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    box = [scores if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, device=device)
    return box[0]


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` highest scores, sorted ascending."""
    return torch.topk(scores.float(), k).indices.sort().values


def ffn_tensors(block: FFNBlock) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W1, b1, W2) of a plain FFN, detached copies on the CPU."""
    return (block.up.weight.detach().float().cpu().clone(), block.up.bias.detach().float().cpu().clone(),
            block.down.weight.detach().float().cpu().clone())


def snapshot_ffns(model: nn.Module, config: LearnerConfig) -> list[tuple[torch.Tensor, ...]]:
    """The FFN weights before priming, to measure how far each neuron moves."""
    return [ffn_tensors(b) for b in find_ffn_blocks(model, config)]


def _sizes(blocks: list[FFNBlock], config: LearnerConfig) -> list[int]:
    return [config.neurons_for(i, b.width) for i, b in enumerate(blocks)]


def choose_layers(scores: list[torch.Tensor], sizes: list[int], coverage: float) -> list[int]:
    """The fewest top blocks whose learners' signal (sum of their top-k scores) reaches `coverage` of all blocks'.

    Blocks above the lowest learner block cost no extra backward pass, so the choice is a depth:
    count blocks from the output down until the share is reached.
    """
    signal = [float(torch.topk(s.float(), k).values.sum()) for s, k in zip(scores, sizes)]
    total, covered = sum(signal), 0.0
    for n, value in enumerate(reversed(signal), start=1):
        covered += value
        if covered >= coverage * total:
            return list(range(len(signal) - n, len(signal)))
    return list(range(len(signal)))


def select(model: nn.Module, config: LearnerConfig, scores: list[torch.Tensor]) -> tuple[LearnerConfig, list[torch.Tensor]]:
    """Top-k neurons per learner block from per-neuron `scores` (one tensor per block of
    `find_ffn_blocks(model, config)`). With layers="auto" the scores choose the blocks too.

    Returns the config with the learner blocks written out (a list) and the indices per block.
    """
    blocks = find_ffn_blocks(model, config)
    if config.layers != "auto":
        return config, [top_k(s, k) for s, k in zip(scores, _sizes(blocks, config))]
    if isinstance(config.num_neurons, list):
        raise UsageError("layers='auto' chooses how many blocks get learners, so num_neurons must be one count, not a list")
    chosen = choose_layers(scores, _sizes(blocks, config), config.layer_coverage)
    resolved = replace(config, layers=chosen)
    return resolved, [top_k(scores[i], k) for i, k in zip(chosen, _sizes([blocks[i] for i in chosen], resolved))]


def priming_scores(model: nn.Module, config: LearnerConfig, before: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """How far each neuron moved from `before` (see `snapshot_ffns`), per block."""
    scores = []
    for block, (w1, b1, w2) in zip(find_ffn_blocks(model, config), before):
        w1_now, b1_now, w2_now = ffn_tensors(block)
        scores.append(moved_l1(w1_now, w1, dim=1) + moved_l1(w2_now, w2, dim=0) + moved_l1(b1_now, b1))
    return scores


def _fixed_layers(config: LearnerConfig, indices: list[torch.Tensor]) -> list[torch.Tensor]:
    if config.layers == "auto":
        raise UsageError("with layers='auto' the scores choose the blocks too: call "
                         "learners.learner.selection.select(model, config, scores), which returns the config and indices")
    return indices


def select_by_priming(model: nn.Module, config: LearnerConfig, before: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """Top-k neurons per FFN by how far they moved from `before` (see `snapshot_ffns`)."""
    return _fixed_layers(config, select(model, config, priming_scores(model, config, before))[1])


def magnitude_scores(model: nn.Module, config: LearnerConfig) -> list[torch.Tensor]:
    """Per-neuron L1 weight mass, per block."""
    return [neuron_l1(*ffn_tensors(b)) for b in find_ffn_blocks(model, config)]


def select_by_magnitude(model: nn.Module, config: LearnerConfig) -> list[torch.Tensor]:
    return _fixed_layers(config, select(model, config, magnitude_scores(model, config))[1])


def select_at_random(model: nn.Module, config: LearnerConfig) -> list[torch.Tensor]:
    blocks = find_ffn_blocks(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    return _fixed_layers(config, [torch.randperm(b.width, generator=generator)[:k].sort().values
                                  for b, k in zip(blocks, _sizes(blocks, config))])


def gradient_scores(model: nn.Module, config: LearnerConfig, batches) -> list[torch.Tensor]:
    """Per-neuron gradient magnitude accumulated over `batches` (dicts of model inputs with labels), per block.

    No parameter is updated; gradients are cleared afterwards.
    """
    blocks = find_ffn_blocks(model, config)
    scores = [torch.zeros(b.width) for b in blocks]
    was_training, requires_grad = model.training, {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)  # weight gradients for the scored tensors only, and nothing below the lowest block
    for b in blocks:
        for p in (b.up.weight, b.up.bias, b.down.weight):
            p.requires_grad_(True)
    model.train()
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for i, b in enumerate(blocks):
            scores[i] += neuron_l1(b.up.weight.grad, b.up.bias.grad, b.down.weight.grad).float().cpu()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    for p, flag in requires_grad.items():
        p.requires_grad_(flag)
    return scores


def select_by_gradient(model: nn.Module, config: LearnerConfig, batches) -> list[torch.Tensor]:
    """Top-k neurons by gradient magnitude accumulated over `batches` (see `gradient_scores`)."""
    return _fixed_layers(config, select(model, config, gradient_scores(model, config, batches))[1])
