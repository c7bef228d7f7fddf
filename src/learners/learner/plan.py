"""`LearnerPlan`: where the learners go in one model, worked out once.

A plan locates every FFN block of the model (ffn.py), resolves `LearnerConfig.layers` (config.LayerSpec) to the
learner blocks among them, and the learner size k of each. `LearnerModel`, `Primer`, selection, learner sets and
the harness read it; nothing else walks the model for FFN blocks or reads the layer spec.

    plan = plan_learners(model, LearnerConfig())
    plan.blocks           # every FFN block, in encoder order
    plan.positions        # the learner blocks' positions among them ("auto": every block, the candidates)
    plan.learner_blocks   # those blocks, with plan.sizes their k
    plan.frozen_blocks    # the blocks below the lowest learner block: nothing there runs backward
"""

import math
from dataclasses import dataclass, replace

from torch import nn

from ..errors import UsageError, check_argument
from .config import LearnerConfig
from .ffn import FFNBlock, join, locate_ffn_blocks, norms_beside


@dataclass(frozen=True)
class LearnerPlan:
    config: LearnerConfig
    blocks: tuple[FFNBlock, ...]
    positions: tuple[int, ...]
    sizes: tuple[int, ...]

    @property
    def learner_blocks(self) -> list[FFNBlock]:
        return [self.blocks[i] for i in self.positions]

    @property
    def frozen_blocks(self) -> list[FFNBlock]:
        """The FFN blocks below the lowest learner block."""
        return list(self.blocks[:self.positions[0]])

    @property
    def trains_layer_norm(self) -> bool:
        """Whether the learner blocks' output LayerNorm trains: asked for, and the blocks have one after the FFN."""
        return self.config.train_layer_norm and self.blocks[0].layer_norm_name is not None

    def with_layers(self, positions: list[int]) -> "LearnerPlan":
        """This plan with the learner blocks chosen (layers="auto"): its config names them."""
        return _resolve(replace(self.config, layers=sorted(positions)), self.blocks)


def plan_learners(model: nn.Module, config: LearnerConfig) -> LearnerPlan:
    """The plan of `config` on `model`; a UsageError if its learner blocks or sizes do not fit the model."""
    check_argument(model, nn.Module, "model", "plan_learners", "a transformers model (a torch.nn.Module)")
    check_argument(config, LearnerConfig, "config", "plan_learners", "a LearnerConfig")
    blocks = tuple(locate_ffn_blocks(model, config.ffn_modules, config.layer_norm_module))
    if config.train_layer_norm and blocks[0].layer_norm_name is None and len(norms_beside(blocks[0].block,
                                                                                           blocks[0].down_name)) > 1:
        raise UsageError(
            f"training the output LayerNorm was asked for, but {join(blocks[0].name, blocks[0].down_name)} has several "
            "norm modules beside it: name it relative to the block as the third --ffn-modules name (e.g. "
            "intermediate.dense,output.dense,output.LayerNorm) or layer_norm_module=, or turn it off with "
            "--no-train-layer-norm / train_layer_norm=False")
    return _resolve(config, blocks)


def _resolve(config: LearnerConfig, blocks: tuple[FFNBlock, ...]) -> LearnerPlan:
    positions = config.layer_spec.positions(len(blocks))
    if isinstance(config.num_neurons, list):
        if config.layers == "auto":
            raise UsageError("layers='auto' chooses how many blocks get learners, so num_neurons must be one count, "
                             "not a list")
        if len(config.num_neurons) != len(positions):
            raise UsageError(f"num_neurons gives {len(config.num_neurons)} counts but {len(positions)} of the model's "
                             f"{len(blocks)} FFN blocks get learners (blocks {positions}, layers {config.layers!r}); give "
                             "one count, or one per learner block")
    sizes = tuple(_learner_size(config, i, blocks[p].width) for i, p in enumerate(positions))
    return LearnerPlan(config, blocks, tuple(positions), sizes)


def _learner_size(config: LearnerConfig, index: int, width: int) -> int:
    """k of the `index`-th learner block, whose FFN has `width` neurons."""
    if config.ratio is not None:
        k = math.ceil(config.ratio * width)
    elif isinstance(config.num_neurons, list):
        k = config.num_neurons[index]
    else:
        k = config.num_neurons
    if k > width:
        raise UsageError(f"learner size k={k} is larger than the FFN width m={width}; use at most {width} neurons")
    return k
