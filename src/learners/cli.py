"""`python -m learners.cli`: the command line, which lives in the harness (learners.harness.cli)."""

from .harness.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
