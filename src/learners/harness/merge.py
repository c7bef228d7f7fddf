"""`learners merge`: saved learners + their base model -> one plain transformers model directory.

The merged model is written into OUTPUT/.merging and its files are moved into OUTPUT once all are written: a
full disk or a failure leaves OUTPUT as it was (and removes it if merge created it)."""

import json
import os
import shutil
from pathlib import Path

from ..errors import UsageError, check_output_path, give_user_permissions, raise_if_disk_full, read_json_file
from ..learner import LearnerModel
from .finetune import TASK_FILE
from .distributed import log
from .files import check_not_input, entry_names, listing
from .models import embedded_model_dir, load_model_and_tokenizer
from .token_data import is_token_task_file

STAGING = ".merging"


def learners_directory(path: Path) -> Path:
    """`path` itself, or its `learners/` where it is a finetune run's OUT (which saves the learners there). The OUT
    of another method's run (a whole model in OUT/model, no learners) is refused with the option that takes it."""
    if (path / "learners").is_dir():
        return path / "learners"
    method = _finished_run_method(path)
    if method is not None and method != "learners" and (path / "model").is_dir():
        raise UsageError(f"{path} is the output of a `learners finetune --method {method}` run, which saves a whole model "
                         f"({path / 'model'}) and no learners: predict with `learners predict --model {path / 'model'}`; "
                         "--learners takes the OUT of a --method learners run")
    return path


def _finished_run_method(path: Path) -> str | None:
    """The method that OUT/results.json records, if `path` is a finished finetune run's OUT."""
    try:
        method = json.loads((path / "results.json").read_text()).get("method")
    except (OSError, ValueError, AttributeError):
        return None
    return method if isinstance(method, str) else None


def head_labels(meta: dict, learners_dir: str) -> tuple[int, list[str] | None]:
    """The head's label count and names saved in learners_config.json (names None: regression)."""
    regression = meta.get("problem_type") == "regression"
    try:
        id2label = meta.get("id2label") or {}
        label_names = None if regression else [str(id2label[str(i)]) for i in range(len(id2label))] or None
        num_labels = int(meta.get("num_labels") or (1 if regression else len(label_names or [0, 1])))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{learners_dir}/learners_config.json has malformed labels (num_labels, id2label: "
                         f"{type(e).__name__} {e}); it is damaged") from e
    if num_labels < 1 or (label_names and len(label_names) != num_labels):
        raise UsageError(f"{learners_dir}/learners_config.json: num_labels {num_labels} does not fit id2label; it is damaged")
    return num_labels, label_names


def recorded_base(base: str | None, metas: list[dict]) -> str | None:
    """--base if given; else the base model that the learners record (every set the same one) when it is a local
    directory here, so that a run's learners merge without naming its --model again; else None (the embedded model)."""
    if base is not None:
        return base
    names = {meta.get("base_model_name_or_path") for meta in metas}
    name = names.pop() if len(names) == 1 else None
    if not name or not Path(name).is_dir() or Path(name).resolve() == embedded_model_dir().resolve():
        return None
    log(f"base model: {name}, which the learners record (--base to choose another)")
    return name


def run_merge(base: str | None, learners_dir: str, output: str, overwrite: bool = False) -> Path:
    out = check_output_path(output, "--output")
    check_not_input(out, "--output", {"--learners": learners_dir, "--base": base})  # again below, with what they name
    held = [name for name in entry_names(out) if name.rstrip("/") != STAGING]  # (.merging: a killed merge's)
    if held and not overwrite:  # the merged model's files would replace a model (or a run) kept there
        raise UsageError(f"--output {out} is not empty ({listing(held)}); choose a new directory, or pass --overwrite "
                         "to write the merged model over what it holds")
    if not Path(learners_dir).is_dir():
        raise UsageError(f"--learners {learners_dir} does not exist; pass a `learners finetune --method learners` "
                         "run's OUT (or OUT/learners)")
    learners_dir = str(learners_directory(Path(learners_dir)))
    meta = LearnerModel.read_metadata(learners_dir)
    num_labels, label_names = head_labels(meta, learners_dir)
    task_file = Path(learners_dir) / TASK_FILE  # text columns and labels, for `learners predict`
    task = read_json_file(task_file, "task file") if task_file.is_file() else None
    given_base, base = base, recorded_base(base, [meta])
    check_not_input(out, "--output", {"--learners": learners_dir, "--base" if given_base else "base model": base})
    model, tokenizer = load_model_and_tokenizer(base, num_labels, label_names, "--base", meta.get("problem_type"),
                                                token_classification=is_token_task_file(task))
    try:
        learner_model = LearnerModel.from_pretrained(model, learners_dir)
    except UsageError as e:
        raise UsageError(f"{e}; here --base was {base or 'not given: the embedded model'}") from e
    write_merged(out, learner_model.merge_and_unload(safe_merge=True), tokenizer, task)
    return out


def write_merged(out: Path, merged, tokenizer, task: dict | None) -> None:
    """The merged model, its tokenizer and task file into OUT/.merging, then moved into OUT file by file."""
    created = not out.exists()
    stage = out / STAGING
    shutil.rmtree(stage, ignore_errors=True)
    try:
        stage.mkdir(parents=True)
        merged.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        if task is not None:
            (stage / TASK_FILE).write_text(json.dumps(task, indent=2))
        give_user_permissions(stage)  # safetensors leaves its files 0600
    except Exception as e:
        shutil.rmtree(stage, ignore_errors=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        weights = sum(p.numel() * p.element_size() for p in merged.parameters())
        raise_if_disk_full(e, out, "the merged model", weights, "free some space and run the same command again")
        raise
    for path in sorted(stage.iterdir()):
        os.replace(path, out / path.name)
    stage.rmdir()
