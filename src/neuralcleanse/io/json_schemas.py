"""JSON Schemas (draft 2020-12) of the files neuralcleanse writes, shipped with the package.

* ``report``: ``report.json`` of a scan (``schema_version`` 1), and the document
  ``neuralcleanse scan --format json`` prints (the same without the trigger arrays, plus
  ``report``, the paths written).
* ``summary``: ``summary.json`` of a run over many models (``schema_version`` 1).

The schemas are plain JSON files under ``neuralcleanse/io/schemas/``; any JSON Schema validator
can use them, e.g. ``jsonschema.validate(document, load_schema("report"))``. neuralcleanse
itself does not need a validator: it reads its files with its own checks.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from neuralcleanse.core.errors import InputError

#: The schemas shipped, by name.
SCHEMAS = ("report", "summary")


def schema_text(name: str) -> str:
    """The text of the schema ``name`` (``"report"`` or ``"summary"``).

    Raises:
        InputError: When ``name`` is not one of :data:`SCHEMAS`.
    """
    if name not in SCHEMAS:
        raise InputError(f"unknown schema {name!r}; choose from {', '.join(SCHEMAS)}")
    path = resources.files("neuralcleanse.io") / "schemas" / f"{name}.schema.json"
    return path.read_text(encoding="utf-8")


def load_schema(name: str) -> dict[str, Any]:
    """The schema ``name`` (``"report"`` or ``"summary"``) as a dict."""
    schema: dict[str, Any] = json.loads(schema_text(name))
    return schema
