"""Media tests: make ``tests/media_fixtures.py`` importable from this folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
