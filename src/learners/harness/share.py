"""`learners finetune --push-to-hub REPO`: the finished run's learners and model card go to the hub."""

import re
from pathlib import Path

from ..errors import UsageError
from ..learner.hub import push_folder


def check_push_options(repo_id: str | None, method: str, token: str | None = None, private: bool = False) -> None:
    """Before training: only a learners run has learners (and their card) to push."""
    if repo_id is None and (token is not None or private):
        raise UsageError("--hub-token and --hub-private go with --push-to-hub REPO")
    if repo_id is not None and method != "learners":
        raise UsageError(f"--push-to-hub shares a learners run's OUT/learners; --method {method} writes none: "
                         "drop --push-to-hub, or push OUT/model yourself (hf upload REPO OUT/model)")
    if repo_id is not None and not re.fullmatch(r"([A-Za-z0-9][\w.-]*/)?[\w.-]+", repo_id):
        raise UsageError(f"--push-to-hub {repo_id!r} is not a hub repository id; pass NAME or USER/NAME (letters, "
                         "digits, - _ .)")


def push_run(output_dir: str, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload OUT/learners (learners, config, model card, task file) to `repo_id`; return the commit's URL. A
    failure says so in one line: the run stays in OUT, and `hf upload` can push it later."""
    folder = Path(output_dir) / "learners"
    try:
        return push_folder(folder, repo_id, token, private or None, "Upload learners (learners finetune)")
    except UsageError as e:
        raise UsageError(f"{e}. The run is saved in {output_dir}; push it later with: hf upload {repo_id} {folder}") from e
