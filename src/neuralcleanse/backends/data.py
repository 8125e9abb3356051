"""Images and labels out of the datasets of the frameworks, as numpy arrays.

:func:`dataset_arrays` recognises a ``torch.utils.data.Dataset`` (items), a ``DataLoader``
(batches) or a ``tf.data.Dataset`` (elements, batched or not) without importing a framework
(it looks in ``sys.modules``, where the framework of such an object must already be), and reads
up to ``max_samples`` images through the framework's module, :mod:`.torch.data` or
:mod:`.tensorflow.data`. Each item (or batch) is ``(image, label)``, ``(image,)``, an image
alone, or a dict with the image under ``"image"`` (or ``"pixel_values"``, ``"img"``, ``"x"``)
and the label under ``"label"`` (or ``"labels"``, ``"target"``, ``"y"``), as Hugging Face and
TensorFlow Datasets give them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from neuralcleanse.core.errors import InputError, one_line

#: How many images are read from a dataset when nothing else is asked for.
DEFAULT_MAX_SAMPLES = 10_000

#: Keys of a dict item that hold the image, and the label, in the order they are looked for.
IMAGE_KEYS = ("image", "pixel_values", "img", "x")
LABEL_KEYS = ("label", "labels", "target", "y")


def dataset_arrays(data: Any, max_samples: int = DEFAULT_MAX_SAMPLES
                   ) -> tuple[np.ndarray, np.ndarray | None, bool] | None:
    """Read the images (and labels) of a framework dataset, or ``None`` for anything else.

    Args:
        data: A ``torch.utils.data.Dataset`` or ``DataLoader``, or a ``tf.data.Dataset``.
        max_samples: Read at most this many images, in the dataset's order.

    Returns:
        ``(images, labels or None, whether the data holds more than max_samples images)``,
        or ``None`` when ``data`` is none of those.

    Raises:
        InputError: On an empty dataset or elements of an unsupported structure.
    """
    if isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)) \
            or max_samples < 1:
        raise InputError(f"max_samples must be a whole number >= 1 (got {max_samples!r})")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(data, (torch.utils.data.Dataset,
                                               torch.utils.data.DataLoader)):
        from neuralcleanse.backends.torch.data import torch_elements

        elements, batched, to_array = torch_elements(data, int(max_samples))
        return collect(elements, type(data).__name__, batched, to_array, int(max_samples))
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(getattr(getattr(tf, "data", None), "Dataset", None), type) \
            and isinstance(data, tf.data.Dataset):
        from neuralcleanse.backends.tensorflow.data import tf_elements

        elements, batched = tf_elements(data, int(max_samples))
        return collect(elements, "tf.data.Dataset", batched, np.asarray, int(max_samples))
    return None


def collect(elements: Iterable[Any], name: str, batched: bool,
            to_array: Callable[[Any], np.ndarray], max_samples: int
            ) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Stack up to ``max_samples`` images (and labels) of items or batches.

    Returns:
        ``(images, labels or None, whether there were more)``.
    """
    images: list[np.ndarray] = []
    labels: list[np.ndarray | None] = []
    count, more = 0, False
    for element in elements:
        if count >= max_samples:
            more = True
            break
        xb, yb = split_element(element, name, batched, to_array)
        take = max_samples - count
        images.append(xb[:take])
        labels.append(None if yb is None else yb[:take])
        count += len(images[-1])
        if len(xb) > take:
            more = True
            break
    if count == 0:
        raise InputError(f"the {name} given as x= yielded no images")
    shapes = sorted({x.shape[1:] for x in images})
    if len(shapes) > 1:
        raise InputError(f"the {name} given as x= yields images of different shapes "
                         f"({', '.join(map(str, shapes[:4]))}); resize them to one shape "
                         "(e.g. with a transform)")
    with_labels = [y is not None for y in labels]
    if any(with_labels) and not all(with_labels):
        raise InputError(f"the {name} given as x= yields some items without a label")
    try:
        x = np.concatenate(images)
        y = np.concatenate(labels) if all(with_labels) else None  # type: ignore[arg-type]
    except ValueError as exc:
        raise InputError(f"the {name} given as x= yields labels that cannot be stacked: "
                         f"{one_line(exc)}") from None
    return x, y, more


def split_element(element: Any, name: str, batched: bool,
                  to_array: Callable[[Any], np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """``(images, labels or None)`` of one item (as a batch of one) or one batch."""
    label: Any = None
    if isinstance(element, dict):
        image = next((element[k] for k in IMAGE_KEYS if k in element), None)
        label = next((element[k] for k in LABEL_KEYS if k in element), None)
        if image is None:
            raise InputError(f"the {name} given as x= yields dicts with keys "
                             f"{sorted(map(str, element))[:8]}: expected the image under one "
                             f"of {', '.join(IMAGE_KEYS)} and the label under one of "
                             f"{', '.join(LABEL_KEYS)}")
    elif isinstance(element, (tuple, list)) and 1 <= len(element) <= 2:
        image = element[0]
        label = element[1] if len(element) == 2 else None
    elif isinstance(element, (tuple, list)):
        raise InputError(f"the {name} given as x= yields {type(element).__name__}s of "
                         f"{len(element)} elements: expected (image, label) pairs")
    else:
        image = element
    x = _as_array(image, name, "image", to_array)
    y = None if label is None else _as_array(label, name, "label", to_array)
    if not batched:
        x = x[None]
        y = None if y is None else y[None]
    elif x.ndim == 0 or (y is not None and (y.ndim == 0 or len(y) != len(x))):
        raise InputError(f"the {name} given as x= yields batches of images of shape {x.shape} "
                         f"with labels of shape {None if y is None else y.shape}: expected "
                         "one label per image")
    return x, y


def _as_array(value: Any, name: str, what: str, to_array: Callable[[Any], np.ndarray]
              ) -> np.ndarray:
    try:
        out = to_array(value)
    except (TypeError, ValueError, RuntimeError):
        out = None
    if not isinstance(out, np.ndarray) or out.dtype == object or out.dtype.kind in "USV":
        raise InputError(f"the {name} given as x= yields a {type(value).__name__} as its "
                         f"{what}: expected a tensor, a numpy array or a PIL image (and an "
                         "integer label)")
    return out
