"""``Record``: the ``to_dict`` of every stage's result object, JSON-ready (what ``--json`` prints)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path


def jsonable(value):
    """``value`` as JSON types: dataclasses as dicts (fields declared ``repr=False``, such as weights, left out),
    paths as strings, tuples and sets as lists, arrays and tensors as lists, non-finite floats as None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):   # numpy and torch scalars and arrays
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None   # (json.dumps would write NaN, which is not JSON)
    return value


class Record:
    """A mixin for frozen result dataclasses: ``to_dict()`` is ``jsonable(self)``."""

    def to_dict(self) -> dict:
        return jsonable(self)
