"""What a `LearnerModel` forwards to the model it wraps, and what it refuses to.

Forwarding every unknown attribute (as PEFT's PeftModel does) would make the base model's own methods look like
the LearnerModel's: `push_to_hub` or `save_pretrained` of the base would write its full weights, PEFT's
`set_adapter` would fail deep inside PEFT. So only the names below go through: the facts of the model (config,
device, dtype, ...) and what `transformers.Trainer`, accelerate and the harness read (found by running the
library's, the Trainer's and the harness's tests with every forwarded name recorded). Anything else is an
AttributeError naming `model.base_model.NAME`, so `hasattr` and `getattr(model, NAME, default)` work as usual.
"""

FORWARDED = frozenset({
    # the model's facts
    "config", "device", "dtype", "name_or_path", "num_labels", "main_input_name", "base_model_prefix",
    "generation_config", "can_generate", "get_input_embeddings", "get_output_embeddings", "num_parameters",
    "warnings_issued", "model_tags",
    # what transformers.Trainer and accelerate read (gradient checkpointing, loss, device maps, quantization, TP)
    "supports_gradient_checkpointing", "is_gradient_checkpointing", "is_activation_checkpointing",
    "gradient_checkpointing_disable",
    "activation_checkpointing_disable", "enable_input_require_grads", "disable_input_require_grads",
    "accepts_loss_kwargs", "loss_type", "loss_function", "floating_point_ops", "estimate_tokens",
    "hf_device_map", "hf_quantizer", "is_quantized", "quantization_method", "is_loaded_in_8bit", "is_loaded_in_4bit",
    "tp_size", "_tp_size", "tp_plan", "_tp_plan", "is_distributed_loading_by_transformers", "_is_accelerate_prepared",
    "_is_replica",
})

# PEFT's names for what a LearnerModel does under its own.
PEFT_EQUIVALENTS = {
    "set_adapter": "set_learners", "load_adapter": "load_learners", "delete_adapter": "delete_learners",
    "disable_adapter": "disable_learners", "active_adapter": "active_learners", "peft_config": "learner_config",
    "get_base_model": "base_model", "merge_adapter": "merge_and_unload",
}


def not_forwarded(class_name: str, name: str) -> AttributeError:
    """The error for an attribute a LearnerModel neither has nor forwards."""
    hint = f"; its learners counterpart is model.{PEFT_EQUIVALENTS[name]}" if name in PEFT_EQUIVALENTS else ""
    return AttributeError(f"'{class_name}' object has no attribute '{name}': a LearnerModel forwards only the base "
                          f"model's facts (config, device, ...), not its methods; use model.base_model.{name} for the "
                          f"base model's own{hint}")
