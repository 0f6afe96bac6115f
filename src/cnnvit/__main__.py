"""``python -m cnnvit``: the ``cnnvit`` command (what ``torchrun -m cnnvit train`` runs in each
process)."""

import sys

from cnnvit.cli import main

sys.exit(main())
