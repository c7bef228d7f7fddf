"""Sharing learners on the Hugging Face hub, the PEFT way: only the learners, their config and their model card
go up (a few MB), never the base model's weights. `huggingface_hub` comes with transformers."""

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
