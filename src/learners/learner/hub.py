"""Sharing learners on the Hugging Face hub, the PEFT way: only the learners, their config and their model card
go up (a few MB), never the base model's weights. `huggingface_hub` comes with transformers."""

import re
from pathlib import Path

from ..errors import UsageError, check_argument, first_line


def push_folder(folder: str | Path, repo_id: str, token: str | None = None, private: bool | None = None,
                commit_message: str = "Upload learners") -> str:
    """Create `repo_id` (a model repository; kept if it exists) and upload every file of `folder` to it, in one
    commit; return the commit's URL. A failure (offline, not logged in, no write access) is one UsageError line."""
    from huggingface_hub import HfApi

    check_argument(repo_id, str, "repo_id", "push_to_hub", "a hub repository id such as 'user/cola-learners'")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                   repo_type="model")
    except Exception as e:  # the network's and the hub's errors (HTTP, connection, token) alike: one line, nothing lost
        raise UsageError(f"could not push {folder} to the hub repository {repo_id} ({type(e).__name__}: "
                         f"{first_line(e)}); log in (`hf auth login`, or pass a token) and check the network, then "
                         "push again") from e
    return str(getattr(commit, "commit_url", commit))


REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def local_or_from_hub(directory: str | Path, files: list[str]) -> Path:
    """`directory` where it exists here; a hub repository id ("user/name") that is not a local path is downloaded
    (`files` only: the learners, never a base model) into the hub's cache, and that folder is returned."""
    path = Path(directory)
    if path.exists() or not isinstance(directory, str) or not REPO_ID.fullmatch(directory):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(directory, allow_patterns=files))
    except Exception as e:  # offline, no such repository, no access: one line
        raise UsageError(f"{directory} is no folder here, and fetching it as a hub repository failed "
                         f"({type(e).__name__}: {first_line(e)}); pass the folder save_pretrained wrote, or a hub "
                         "repository id reachable from here") from e
