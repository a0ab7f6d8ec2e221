"""``python -m bgmrec``: the ``bgmrec`` command, for environments where the console script is not on PATH."""

import sys

from bgmrec.cli import entry

sys.exit(entry())
