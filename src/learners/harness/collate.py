"""How examples become batches: padded by transformers' collator, and without a mask where nothing is masked.

Padding goes to the batch's longest example, or with `pad_to_multiple_of=N` (`--pad-to-multiple-of`) up to the
next multiple of N: a few fixed lengths (32, 64, 96, 128 for N=32 at the default --max-length), so that a
compiled training step (`--compile`) is traced once per length instead of once per batch. A batch whose
attention mask masks nothing goes without one: the model attends to every token either way, and the model's
own mask preparation then has nothing to read (transformers reads a 2-D mask on the host to see whether it
may drop it, which on a GPU makes the step wait for the device).
"""

from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

from ..errors import UsageError


class Collator:
    """A DataLoader's collate_fn: pad a list of tokenized examples into one batch of tensors."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None, token_labels: bool = False):
        """`token_labels`: a label per token (token classification), padded with -100 as the inputs are."""
        kind = DataCollatorForTokenClassification if token_labels else DataCollatorWithPadding
        self.pad = kind(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, features: list[dict]) -> dict:
        batch = self.pad(features)
        mask = batch.get("attention_mask")
        if mask is not None and bool(mask.all()):  # read here, on the host, before the batch moves to the device
            del batch["attention_mask"]
        return batch


def check_padding(pad_to_multiple_of: int | None, max_length: int, limit: int | None) -> None:
    """--pad-to-multiple-of must be positive, and padding --max-length up to it must fit the model's positions."""
    if pad_to_multiple_of is None:
        return
    if pad_to_multiple_of <= 0:
        raise UsageError(f"--pad-to-multiple-of must be a positive number of tokens, got {pad_to_multiple_of}")
    longest = -(-max_length // pad_to_multiple_of) * pad_to_multiple_of
    if limit and longest > limit:
        raise UsageError(f"--pad-to-multiple-of {pad_to_multiple_of} pads inputs of --max-length {max_length} to "
                         f"{longest} tokens, more than this model takes ({limit}); choose a divisor of "
                         f"{max_length} (e.g. 32 for 128) or a lower --max-length")
