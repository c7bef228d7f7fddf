"""Every ```python block of README.md runs, in order, as one script (issue 31, item 6).

The mechanism, as the README says: the hub id the snippets load (`sentence-transformers/all-MiniLM-L6-v2`) is
replaced by a tiny random BERT saved locally (tests/conftest.py), the hub's upload API is a stand-in that records
what would be uploaded, and the snippets run in a temporary working directory."""

import re
from pathlib import Path

import pytest
from huggingface_hub import HfApi

README = Path(__file__).resolve().parents[2] / "README.md"
HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def python_snippets(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_the_readme_has_the_snippets_this_test_runs():
    snippets = python_snippets(README.read_text())
    assert len(snippets) >= 4 and HUB_ID in snippets[0]
    assert any("push_to_hub" in s for s in snippets) and any("checkpoint-" in s for s in snippets)


def test_every_readme_python_snippet_runs_on_a_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    uploads = []
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kwargs: None)
    monkeypatch.setattr(HfApi, "upload_folder", lambda api, repo_id, folder_path, **kwargs: uploads.append(
        (repo_id, sorted(p.name for p in Path(folder_path).iterdir()))))
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for i, snippet in enumerate(python_snippets(README.read_text())):
        code = compile(snippet.replace(HUB_ID, str(tiny_model_dir)), f"README.md python snippet {i + 1}", "exec")
        try:
            exec(code, namespace)
        except Exception as e:
            pytest.fail(f"README.md python snippet {i + 1} failed: {type(e).__name__}: {e}\n{snippet}")
    assert uploads == [("your-name/cola-learners", ["README.md", "learners_config.json", "learners_model.safetensors"])]
    assert (tmp_path / "runs" / "learners" / "checkpoint-4" / "model.safetensors").is_file()
