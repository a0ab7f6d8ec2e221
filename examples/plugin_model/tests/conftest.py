"""pytest's detailed assertion messages in bgmrec's contract tests: ``bgmrec.testing`` is rewritten as pytest
rewrites test modules, which it does only for modules registered before they are imported."""

import pytest

pytest.register_assert_rewrite("bgmrec.testing")
