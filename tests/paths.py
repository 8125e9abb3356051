"""Where the tests find the read-only shared data (``../shared/data`` beside the project)."""

from __future__ import annotations

import os
from pathlib import Path

#: ``../shared/data`` beside the project, or the folder named by NEURALCLEANSE_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("NEURALCLEANSE_SHARED_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")
