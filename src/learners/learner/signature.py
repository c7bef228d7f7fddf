"""The run-time subclass that shows `transformers.Trainer` the wrapped model's `forward` signature.

`Trainer` reads the model's forward signature to keep the dataset columns the model takes and to find its label
argument (`find_labels` reads it from the class), and reads the class name (e.g. "QuestionAnswering"). A fixed
class with `forward(*args, **kwargs)` would hide all of that, so `LearnerModel(model, ...)` is an instance of a
subclass made per wrapped model class (cached), whose `forward` carries `functools.wraps(model_class.forward)`.
Pickling rebuilds the subclass on load (`rebuild_learner_model`), since it cannot be found by name.
"""

import functools

from torch import nn


def rebuild_learner_model(cls: type, model_class: type) -> nn.Module:
    """An empty instance of the subclass of `cls` made for `model_class`; unpickling then sets its state."""
    return nn.Module.__new__(learner_class(cls, model_class))


@functools.cache
def learner_class(cls: type, model_class: type) -> type:
    """`cls` with a `forward` that calls the wrapped model and shows `model_class.forward`'s signature.

    `Trainer` reads the signature from the class (`find_labels`) and from the bound method (column pruning);
    `*args, **kwargs` alone would hide `labels` and every input. The name keeps the model's, as Trainer
    also reads the class name (e.g. "QuestionAnswering").
    """
    @functools.wraps(model_class.forward)
    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    forward.__doc__ = f"Calls the wrapped {model_class.__name__} (its signature is shown)."
    return type(f"LearnerModelFor{model_class.__name__}", (cls,), {"forward": forward, "_wraps": model_class,
                                                                    "__module__": cls.__module__})

