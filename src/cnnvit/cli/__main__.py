"""``python -m cnnvit.cli``: the ``cnnvit`` command."""

import sys

from cnnvit.cli import main

sys.exit(main())
