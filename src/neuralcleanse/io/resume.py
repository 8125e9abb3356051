"""The resume store: a scan's finished labels, one file per label, so an interrupted scan resumes.

Each file records a fingerprint of the model file, the data and the search settings
(:func:`neuralcleanse.io.data_files.fingerprint`); results made with anything else are refused.
The folder may hold the user's files: the store reads, replaces and removes only the
``label_<n>.json`` files that it wrote itself, and removes the folder only when that leaves it
empty.

Besides the finished labels, the store keeps one checkpoint of the running search,
``checkpoint.npz`` (the state that :func:`neuralcleanse.search.reverse.reverse_engineer` gives its
``checkpoint`` callback), written through a temporary file renamed over the old one: a process
killed while writing leaves the previous checkpoint whole, and the temporary file is ignored.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult
from neuralcleanse.core.strict_json import dumps
from neuralcleanse.io.report import atomic_write


class PartialStore:
    """Label results written one file per label as they finish, so a scan can resume.

    A label file is the store's own when it is a regular file (not a link) named
    ``label_<n>.json`` that holds a JSON object with the store's ``kind`` marker (or none, as
    written by earlier versions), a ``fingerprint`` string and a ``result`` object. Anything else
    in the folder is left alone.

    Args:
        folder: The folder of the label files (created on the first save).
        key: The fingerprint of this scan's model, data and settings.
    """

    NAME = re.compile(r"label_(\d+)\.json")
    #: Temporary names of :func:`~neuralcleanse.io.report.atomic_write` for the label files
    #: (pid and random part): no one else writes these.
    TMP = re.compile(r"\.label_\d+\.json\.\d+\.[0-9a-f]{8}\.tmp")
    MARKER = "neuralcleanse partial label result"
    #: Own files are small (one label's mask and pattern); larger ones are not read.
    MAX_BYTES = 256 * 2**20

    CHECKPOINT = "checkpoint.npz"
    #: Temporary names of the checkpoint while it is written (left behind by a killed process).
    CHECKPOINT_TMP = re.compile(r"\.checkpoint\.npz\.\d+\.[0-9a-f]{8}\.tmp")
    CHECKPOINT_MARKER = "neuralcleanse search checkpoint"
    #: Largest total size of the arrays in a checkpoint that is read.
    MAX_CHECKPOINT_BYTES = 8 * 2**30

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self.key = key

    def path(self, label: int) -> Path:
        """File of one label's result."""
        return self.folder / f"label_{label}.json"

    def save(self, result: LabelResult) -> None:
        """Write one finished label (atomically: a killed process leaves no torn file).

        Raises:
            InputError: When a file the store did not write took the label's name during the
                scan.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(result.label)
        if target.exists() and self._own(target) is None:  # appeared during the scan
            raise InputError(f"{target} was not written by neuralcleanse, but a finished label "
                             "is saved under that name: move the file away and resume the scan")
        atomic_write(target, dumps({"kind": self.MARKER, "fingerprint": self.key,
                                    "result": result.to_dict()}, indent=None))

    @property
    def checkpoint_path(self) -> Path:
        """File of the search checkpoint."""
        return self.folder / self.CHECKPOINT

    def save_checkpoint(self, state: dict[str, np.ndarray]) -> None:
        """Replace the checkpoint by ``state`` (atomically: a killed process leaves the old one).

        Raises:
            InputError: When a file the store did not write took the checkpoint's name.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.checkpoint_path
        if (target.exists() or target.is_symlink()) and self._read_checkpoint(target) is None:
            raise InputError(f"{target} was not written by neuralcleanse, but the search saves "
                             "its checkpoint under that name: move the file away and resume")
        arrays = {f"state/{k}": np.asarray(v) for k, v in state.items()}
        buffer = io.BytesIO()
        np.savez(buffer, kind=np.array(self.CHECKPOINT_MARKER),
                 fingerprint=np.array(self.key), **arrays)
        atomic_write(target, buffer.getvalue())

    def load_checkpoint(self) -> dict[str, np.ndarray] | None:
        """The search state saved by an earlier run with the same model, data and settings.

        Returns ``None`` when there is no checkpoint (or the file of that name is not one the
        store wrote).

        Raises:
            InputError: When the checkpoint was written for another model, data or settings.
        """
        data = self._read_checkpoint(self.checkpoint_path)
        if data is None:
            return None
        if str(data.pop("fingerprint")) != self.key:
            raise InputError(f"{self.checkpoint_path} was written by a scan with another model, "
                             "data or settings, so it cannot be resumed")
        return {k.removeprefix("state/"): v for k, v in data.items() if k.startswith("state/")}

    def _read_checkpoint(self, path: Path) -> dict[str, np.ndarray] | None:
        """The arrays of ``path`` when it is a checkpoint this store wrote, else ``None``."""
        if path.is_symlink() or not path.is_file():
            return None
        try:
            raw = path.read_bytes()
            with zipfile.ZipFile(io.BytesIO(raw)) as archive:
                if sum(i.file_size for i in archive.infolist()) > self.MAX_CHECKPOINT_BYTES:
                    return None
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            return None
        kind, key = data.pop("kind", None), data.get("fingerprint")
        if kind is None or kind.shape != () or str(kind) != self.CHECKPOINT_MARKER \
                or key is None or key.shape != ():
            return None
        return data

    def _own(self, path: Path) -> dict[str, Any] | None:
        """The content of ``path`` when it is a label file this store wrote, else ``None``."""
        if not self.NAME.fullmatch(path.name) or path.is_symlink() or not path.is_file():
            return None
        try:
            if path.stat().st_size > self.MAX_BYTES:
                return None
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        if isinstance(data, dict) and isinstance(data.get("fingerprint"), str) \
                and isinstance(data.get("result"), dict) \
                and data.get("kind", self.MARKER) == self.MARKER:
            return data
        return None

    def _label_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted((f for f in self.folder.iterdir() if self.NAME.fullmatch(f.name)),
                      key=lambda f: int(self.NAME.fullmatch(f.name).group(1)))  # type: ignore[union-attr]

    def foreign(self, labels: list[int]) -> list[Path]:
        """Files in the way of these labels' results that this store did not write."""
        return [self.path(t) for t in labels
                if (self.path(t).exists() or self.path(t).is_symlink())
                and self._own(self.path(t)) is None]

    def load(self) -> list[LabelResult]:
        """The labels finished by an earlier run with the same model, data and settings.

        Files the store did not write are left alone.

        Raises:
            InputError: When one of the store's files was written for another model, data or
                settings, or holds a result that cannot be read.
        """
        found = []
        for f in self._label_files():
            data = self._own(f)
            if data is None:
                continue
            if data["fingerprint"] != self.key:
                raise InputError(f"{f} was written by a scan with another model, data or "
                                 "settings, so it cannot be resumed")
            try:
                found.append(LabelResult.from_dict(data["result"]))
            except InputError as exc:
                raise InputError(f"cannot resume from {f}: {exc}") from None
        return found

    def clear(self) -> None:
        """Remove the label files and the checkpoint this store wrote.

        The folder goes too when nothing else is in it.
        """
        if not self.folder.is_dir() or self.folder.is_symlink():
            return
        for f in self.folder.iterdir():
            if (self.TMP.fullmatch(f.name) or self.CHECKPOINT_TMP.fullmatch(f.name)) \
                    and f.is_file() and not f.is_symlink():
                f.unlink(missing_ok=True)
            elif f.name == self.CHECKPOINT and self._read_checkpoint(f) is not None:
                f.unlink(missing_ok=True)
            elif self._own(f) is not None:
                f.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:  # the user's files are still in it
            pass
