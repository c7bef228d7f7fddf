"""Mixed precision: which one a run uses, and the frozen weights kept in it.

`resolve_precision` turns `--mixed-precision` into what the run does: `auto` is bf16 where the device computes
it natively (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX, or an Arm CPU with BF16), else fp32;
`bf16` asked for on a CPU without it says so in one line and runs fp32 (emulated bf16 is slower than fp32
there); `fp16` on a CPU is refused (no fast fp16 matmul on CPUs: 30x slower than fp32 on the AVX512-BF16 CPU
this was measured on).

`cast_frozen_linears`: under bf16 autocast every linear layer's weight is cast to bf16 at every forward pass and
the cast kept beside the fp32 weight for the backward pass. A weight that does not train never needs its fp32
values during training, so a run in bf16 stores the frozen linear weights (and frozen biases) in bf16 for good:
half their memory, no cast per step, and the same numbers as autocast computes. What trains (learner slices,
b2, LayerNorms, the head, LoRA's matrices, biases) keeps its fp32 master values, and embeddings and LayerNorms
stay as they are. The trained model is saved in fp32 all the same: `finetune` rebuilds it on the base model's
fp32 weights (`finetune.in_full_precision`).
"""

import contextlib
import platform
import re
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import UsageError
from ..learner.layer import _LearnerLinear
from . import distributed

PRECISIONS = ("auto", "no", "bf16", "fp16")


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (x86: AVX512-BF16 or AMX; Arm: the BF16 extension)."""
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        supported = getattr(torch.cpu, check, None)
        if supported is not None and supported():
            return True
    if platform.machine().lower() in ("aarch64", "arm64"):
        try:
            return re.search(r"^Features\s*:.*\bbf16\b", Path("/proc/cpuinfo").read_text(), re.M) is not None
        except OSError:
            return False
    return False


def device_has_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def resolve_precision(asked: str, device: torch.device) -> str:
    """What `--mixed-precision asked` means on `device`: "no", "bf16" or "fp16" (see the module's docstring)."""
    if asked not in PRECISIONS:
        raise UsageError(f"--mixed-precision {asked!r} is not one of {', '.join(PRECISIONS)}")
    if asked == "auto":
        return "bf16" if device_has_bf16(device) else "no"
    if device.type == "cpu" and asked == "fp16":
        raise UsageError("--mixed-precision fp16 needs a GPU: a CPU has no fast fp16 matrix products (fp32 ran 30x "
                         "faster); on the CPU use bf16 (where the CPU has AVX512-BF16 or AMX) or no")
    if asked == "bf16" and not device_has_bf16(device):
        distributed.log(f"--mixed-precision bf16: this {device.type.upper()} has no native bf16 (on x86 CPUs: "
                        "AVX512-BF16 or AMX), where bf16 is slower than fp32: running in fp32")
        return "no"
    return asked


def cast_frozen_linears(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the weight and bias of every linear layer that does not train in `dtype`, in place (the same
    Parameter objects); returns how many tensors changed. Learner layers' full weights count as frozen (their
    learner slices are trainable Parameters of their own, written into the weight in `dtype` after each step)."""
    changed = 0
    for module in model.modules():
        if not isinstance(module, (nn.Linear, _LearnerLinear)):
            continue
        for tensor in (module.weight, module.bias):
            if tensor is not None and not tensor.requires_grad and tensor.is_floating_point() and tensor.dtype != dtype:
                tensor.data = tensor.data.to(dtype)
                changed += 1
    return changed


def frozen_dtype(precision: str) -> torch.dtype | None:
    """The dtype frozen linear weights are kept in for a run in `precision` (None: as loaded)."""
    return torch.bfloat16 if precision == "bf16" else None


def training_attention(accelerator):
    """The attention kernels of a training step's forward pass: on a CPU in bf16, torch's math kernel. The fused
    (flash) kernel that attention without dropout takes there has a slow bf16 backward on the CPU: 145 ms against
    the math kernel's 60 ms (forward 20 against 41; 32 x 12 heads x 128 x 32, one thread, AMD EPYC). Attention with
    dropout (full fine-tuning, BitFit, LoRA) takes the math kernel anyway; the learners' blocks, run without attention
    dropout, gain. Elsewhere (fp32, GPUs, evaluation) torch chooses."""
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "bf16":
        return sdpa_kernel([SDPBackend.MATH])
    return contextlib.nullcontext()
