"""Where the tasks of ``scan_many`` run: on Ray, or one after another in this process.

An engine takes tasks (:meth:`submit`) and hands back finished ones one at a time
(:meth:`next`), each as its tag and its value. :class:`RayEngine` runs them on an embedded local
Ray that it starts and stops (no dashboard, quiet logs, its temporary folder under the system's
temporary directory), on a Ray cluster given by address, or on the Ray this process has already
started; a task whose worker dies is run again by Ray (``max_retries``), errors of the task's own
never are (``retry_exceptions=False``). :class:`Sequential` runs them in this process, the
chunks and the confirmation of a model before the next model, when Ray is not installed or not
wanted.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

from neuralcleanse.core.errors import InputError, one_line
from neuralcleanse.distributed.tasks import confirm_labels, inspect_model, scan_chunk

INSTALL_HINT = "pip install 'neuralcleanse[distributed]'"
_warned_no_ray = False


class Sequential:
    """Tasks run one after another in this process (no Ray); a model's searches first.

    A model's label chunks and its confirmation run before the next model is looked at.
    """

    worker = False
    name = "sequential"

    def __init__(self) -> None:
        self.chunks: deque[tuple[Any, Callable[..., Any], tuple[Any, ...]]] = deque()
        self.others: deque[tuple[Any, Callable[..., Any], tuple[Any, ...]]] = deque()

    def submit(self, tag: Any, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a task."""
        searches = fn is scan_chunk or fn is confirm_labels
        (self.chunks if searches else self.others).append((tag, fn, args))

    def pending(self) -> int:
        """Tasks not yet run."""
        return len(self.chunks) + len(self.others)

    def next(self) -> tuple[Any, Any]:
        """Run the next task; returns its tag and its value."""
        tag, fn, args = (self.chunks or self.others).popleft()
        return tag, fn(*args)

    def cancel(self) -> None:
        """Forget the tasks not yet run."""
        self.chunks.clear()
        self.others.clear()

    def close(self) -> None:
        """Nothing to release."""


class RayEngine:
    """Tasks on Ray: an embedded Ray, a cluster by address, or the Ray already running.

    An embedded Ray (``address=None`` and no Ray running in this process) is started here with
    every core of the machine and stopped by :meth:`close`.
    """

    worker = True

    def __init__(self, address: str | None, cpus: float, gpus: float,
                 max_retries: int) -> None:
        import ray

        self.ray = ray
        self.started = False
        self.temp: str | None = None
        if ray.is_initialized():
            self.name = "ray (already running)"
        else:
            options: dict[str, Any] = dict(logging_level=logging.ERROR, log_to_driver=False)
            if address is None:
                self.temp = tempfile.mkdtemp(prefix="neuralcleanse-ray-")
                # "local": a new Ray on this machine, even where RAY_ADDRESS names a cluster
                options.update(address="local", num_cpus=os.cpu_count() or 1,
                               include_dashboard=False, _temp_dir=self.temp)
            else:
                options["address"] = address
            try:
                ray.init(**options)
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                self._remove_temp()
                where = f"the Ray cluster at address={address!r}" if address else "Ray"
                raise InputError(f"cannot start {where}: {one_line(exc)}") from None
            self.started = True
            self.name = "ray (embedded)" if address is None else f"ray ({address})"
        self._check_resources(cpus, gpus)
        self.remote = {fn: ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=max_retries,
                                      retry_exceptions=False)(fn)
                       for fn in (inspect_model, scan_chunk, confirm_labels)}
        self.refs: dict[Any, Any] = {}

    def _check_resources(self, cpus: float, gpus: float) -> None:
        have = self.ray.cluster_resources()
        for what, want, key in (("cpus_per_scan", cpus, "CPU"), ("gpus_per_scan", gpus, "GPU")):
            if want > have.get(key, 0.0):
                text = (f"{what}={want:g} but the Ray cluster has {have.get(key, 0.0):g} "
                        f"{key}(s): no task could start")
                if self.temp is not None:  # an embedded Ray never grows
                    self.close()
                    raise InputError(text)
                warnings.warn(text + " unless the cluster grows", UserWarning, stacklevel=4)

    def submit(self, tag: Any, fn: Callable[..., Any], *args: Any) -> None:
        """Start a task."""
        self.refs[self.remote[fn].remote(*args)] = tag

    def pending(self) -> int:
        """Tasks started and not yet collected."""
        return len(self.refs)

    def next(self) -> tuple[Any, Any]:
        """Wait for a task; returns its tag and its value, or the Ray error that ended it."""
        ready: list[Any] = []
        while not ready:
            ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=1.0)
        ref = ready[0]
        tag = self.refs.pop(ref)
        try:
            return tag, self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # its worker died (retries used up)
            return tag, exc

    def cancel(self) -> None:
        """Cancel every task not yet collected."""
        for ref in self.refs:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # already finished or gone: nothing to cancel
                pass
        self.refs.clear()

    def close(self) -> None:
        """Shut down the Ray this engine started (a cluster keeps running)."""
        if self.started:
            self.ray.shutdown()
            self.started = False
        self._remove_temp()

    def _remove_temp(self) -> None:
        if self.temp is not None:
            shutil.rmtree(self.temp, ignore_errors=True)
            self.temp = None


def make_engine(parallel: bool | None, address: str | None, cpus: float, gpus: float,
                max_retries: int) -> Sequential | RayEngine:
    """Ray unless ``parallel`` is false; without Ray installed, in turn (warned once)."""
    global _warned_no_ray
    if parallel is False:
        return Sequential()
    try:
        import ray  # noqa: F401 - only whether it is there
    except ImportError:
        if parallel or address is not None:
            raise InputError(f"parallel scans need Ray: {INSTALL_HINT}") from None
        if not _warned_no_ray:
            _warned_no_ray = True
            warnings.warn(f"Ray is not installed, so the models are scanned one after another; "
                          f"for parallel scans: {INSTALL_HINT}", UserWarning, stacklevel=4)
        return Sequential()
    return RayEngine(address, cpus, gpus, max_retries)


