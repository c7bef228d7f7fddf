"""Which `k` neurons of each FFN become the learner.

Every strategy scores the `m` intermediate neurons of each FFN and keeps the
top `k`. A neuron `i` owns row `W1[i, :]`, entry `b1[i]` and column `W2[:, i]`.

* priming   - how far the neuron moved during a short full fine-tuning:
              s_i = |dW1[i,:]|_1 + |dW2[:,i]|_1 + |db1[i]|
* gradient  - the same L1 sum over gradients, accumulated over a few batches
              without any update
* magnitude - the same L1 sum over the weights themselves
* random    - a seeded random choice
"""

import torch
from torch import nn

from .config import LearnerConfig
from .ffn import FFNBlock, find_ffn_blocks


def neuron_l1(w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Per-neuron L1 mass |w1[i,:]|_1 + |w2[:,i]|_1 + |b1[i]| for W1 (m x d), b1 (m), W2 (d x m)."""
    return w1.abs().sum(1) + w2.abs().sum(0) + b1.abs()


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


def select_by_priming(model: nn.Module, config: LearnerConfig, before: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """Top-k neurons per FFN by how far they moved from `before` (see `snapshot_ffns`)."""
    blocks = find_ffn_blocks(model, config)
    indices = []
    for block, k, (w1, b1, w2) in zip(blocks, _sizes(blocks, config), before):
        w1_now, b1_now, w2_now = ffn_tensors(block)
        indices.append(top_k(neuron_l1(w1_now - w1, b1_now - b1, w2_now - w2), k))
    return indices


def select_by_magnitude(model: nn.Module, config: LearnerConfig) -> list[torch.Tensor]:
    blocks = find_ffn_blocks(model, config)
    return [top_k(neuron_l1(*ffn_tensors(b)), k) for b, k in zip(blocks, _sizes(blocks, config))]


def select_at_random(model: nn.Module, config: LearnerConfig) -> list[torch.Tensor]:
    blocks = find_ffn_blocks(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    return [torch.randperm(b.width, generator=generator)[:k].sort().values for b, k in zip(blocks, _sizes(blocks, config))]


def select_by_gradient(model: nn.Module, config: LearnerConfig, batches) -> list[torch.Tensor]:
    """Top-k neurons by gradient magnitude accumulated over `batches` (dicts of model inputs with labels).

    No parameter is updated; gradients are cleared afterwards.
    """
    blocks = find_ffn_blocks(model, config)
    scores = [torch.zeros(b.width) for b in blocks]
    was_training = model.training
    model.train()
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for i, b in enumerate(blocks):
            scores[i] += neuron_l1(b.up.weight.grad, b.up.bias.grad, b.down.weight.grad).float().cpu()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return [top_k(s, k) for s, k in zip(scores, _sizes(blocks, config))]

