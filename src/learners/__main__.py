"""`python -m learners ...` (and `torchrun -m learners ...`): the `learners` command line."""

import sys

from .harness.cli import main

sys.exit(main())
