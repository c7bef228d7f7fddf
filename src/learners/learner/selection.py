"""Which `k` neurons of each FFN become the learner.

Every strategy scores the `m` intermediate neurons of each FFN and keeps the
top `k`. A neuron `i` owns row `W1[i, :]`, entry `b1[i]` and column `W2[:, i]`.

* priming   - how far the neuron moved during a short full fine-tuning:
              s_i = |dW1[i,:]|_1 + |dW2[:,i]|_1 + |db1[i]|
* gradient  - the same L1 sum over gradients, accumulated over a few batches
              without any update
* magnitude - the same L1 sum over the weights themselves
* random    - a seeded random choice

Scores are per learner block of a `LearnerPlan` (plan.py). With `layers="auto"` the same scores also choose *where* learners go
(`choose_layers`): the backward pass only has to reach the lowest learner
block, so the learner blocks are the fewest blocks counted down from the
output that hold `layer_coverage` of the signal.
"""

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UsageError
from .config import LearnerConfig
from .ffn import FFNBlock
from .plan import LearnerPlan, plan_learners


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


def snapshot_ffns(plan: LearnerPlan) -> list[tuple[torch.Tensor, ...]]:
    """The learner blocks' FFN weights before priming, to measure how far each neuron moves."""
    return [ffn_tensors(b) for b in plan.learner_blocks]


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


def select(plan: LearnerPlan, scores: list[torch.Tensor]) -> tuple[LearnerPlan, list[torch.Tensor]]:
    """Top-k neurons per learner block from per-neuron `scores` (one tensor per block of `plan.learner_blocks`).
    With layers="auto" the scores choose the blocks too: the plan returned names them (as its config does)."""
    if plan.config.layers != "auto":
        return plan, [top_k(s, k) for s, k in zip(scores, plan.sizes)]
    chosen = plan.with_layers(choose_layers(scores, list(plan.sizes), plan.config.layer_coverage))
    return chosen, [top_k(scores[p], k) for p, k in zip(chosen.positions, chosen.sizes)]


def priming_scores(plan: LearnerPlan, before: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """How far each neuron moved from `before` (see `snapshot_ffns`), per learner block."""
    scores = []
    for block, (w1, b1, w2) in zip(plan.learner_blocks, before):
        w1_now, b1_now, w2_now = ffn_tensors(block)
        scores.append(moved_l1(w1_now, w1, dim=1) + moved_l1(w2_now, w2, dim=0) + moved_l1(b1_now, b1))
    return scores


def magnitude_scores(plan: LearnerPlan) -> list[torch.Tensor]:
    """Per-neuron L1 weight mass, per learner block."""
    return [neuron_l1(*ffn_tensors(b)) for b in plan.learner_blocks]


def random_indices(plan: LearnerPlan) -> list[torch.Tensor]:
    """k neurons per learner block, drawn with `plan.config.seed` (sorted)."""
    generator = torch.Generator().manual_seed(plan.config.seed)
    return [torch.randperm(b.width, generator=generator)[:k].sort().values
            for b, k in zip(plan.learner_blocks, plan.sizes)]


def gradient_scores(model: nn.Module, plan: LearnerPlan, batches) -> list[torch.Tensor]:
    """Per-neuron gradient magnitude accumulated over `batches` (dicts of model inputs with labels), per learner
    block of `plan` (made for `model`). No parameter is updated; gradients are cleared afterwards.
    """
    blocks = plan.learner_blocks
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


# Selection in one call, for users: the indices for `get_learner_model(model, config, indices=...)`.

def select_by_magnitude(model: nn.Module, config: LearnerConfig) -> list[torch.Tensor]:
    """Top-k neurons per learner block by L1 weight mass."""
    plan = _fixed_plan(model, config)
    return select(plan, magnitude_scores(plan))[1]


def select_by_gradient(model: nn.Module, config: LearnerConfig, batches) -> list[torch.Tensor]:
    """Top-k neurons per learner block by gradient magnitude accumulated over `batches` (see `gradient_scores`)."""
    plan = _fixed_plan(model, config)
    return select(plan, gradient_scores(model, plan, batches))[1]


def _fixed_plan(model: nn.Module, config: LearnerConfig) -> LearnerPlan:
    if config.layers == "auto":
        raise UsageError("with layers='auto' the scores choose the blocks too: call learners.learner.selection.select("
                         "plan, scores), which returns the plan (plan.config names the blocks) and the indices")
    return plan_learners(model, config)
