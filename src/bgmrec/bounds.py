"""Range checks of configuration fields, one wording for every config (models, training, simulated worlds)."""

from __future__ import annotations

import math
from typing import Any

#: the ranges :func:`check_bounds` knows, by how its messages write them
BOUNDS = {
    ">= 0": lambda v: v >= 0,
    "> 0": lambda v: v > 0,
    ">= 1": lambda v: v >= 1,
    ">= 2": lambda v: v >= 2,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
    "in [0, 2**63)": lambda v: 0 <= v < 2**63,  # a seed torch takes (2**70 failed inside torch's manual_seed)
    # sizes of a network: far above any useful one, below what ends in an allocation failure's traceback (a latent
    # of 100,000 asked the track prior's ridge regression for 75 GB; 10,000,000 hidden units torch for terabytes)
    "in [1, 4096]": lambda v: 1 <= v <= 4096,
    "in [1, 8192]": lambda v: 1 <= v <= 8192,
}


def check_bounds(config: Any, label: str = "", /, **bounds: str) -> None:
    """Raise ``ValueError("[LABEL]FIELD must be [finite and ]RANGE, got VALUE")`` for the first field of
    ``config`` out of its range (``label``, e.g. ``"world parameter "``, says what the fields are).

    ``bounds`` maps field names to keys of :data:`BOUNDS`; NaN and infinite floats are never in range (an
    infinite learning rate or temperature trained a model to chance, or diverged with advice to lower the
    learning rate). A tuple field is checked element by element.
    """
    for name, bound in bounds.items():
        value = getattr(config, name)
        values = value if isinstance(value, tuple) else (value,)
        infinite = any(isinstance(v, float) and math.isinf(v) for v in values)  # an int of any size is finite
        if infinite or not all(BOUNDS[bound](v) for v in values):
            each = "each of " if isinstance(value, tuple) else ""
            raise ValueError(f"{label}{each}{name} must be {'finite and ' if infinite else ''}{bound}, got {value!r}")
