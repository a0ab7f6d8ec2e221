"""``python -m bgmrec``: the ``bgmrec`` command, for environments where the console script is not on PATH."""

import sys

from bgmrec.cli import entry

if __name__ == "__main__":  # importing this module (pydoc, autodoc) runs nothing
    sys.exit(entry())
