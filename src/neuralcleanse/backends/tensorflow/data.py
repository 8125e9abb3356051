"""The elements of a ``tf.data.Dataset`` as numpy arrays, batched or not.

The structure of the elements is read by :mod:`neuralcleanse.backends.data`; this module
walks the dataset and tells whether its elements are batches.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from neuralcleanse.backends.data import IMAGE_KEYS, LABEL_KEYS


def tf_elements(data: tf.data.Dataset, max_samples: int) -> tuple[Iterator[Any], bool]:
    """The elements as numpy values, and whether they are batches.

    Elements are batches when the image's leading dimension is unknown (what ``batch()``
    gives), when images have four dimensions, or when labels have one and it matches the
    images' first. An unbatched dataset is read to ``max_samples + 1`` elements (to tell
    whether there are more); a batched one until it has given ``max_samples`` images.
    """
    batched = _is_batched(data.element_spec)
    elements = data.as_numpy_iterator()
    if not batched:
        elements = itertools.islice(elements, max_samples + 1)
    return elements, batched


def _is_batched(spec: Any) -> bool:
    image_spec, label_spec = _parts(spec)
    shape = getattr(image_spec, "shape", None)
    if shape is None or shape.rank is None or shape.rank == 0:
        return False
    if shape.rank >= 4 or shape[0] is None:
        return True
    label_shape = getattr(label_spec, "shape", None)
    if label_shape is None or label_shape.rank is None:
        return False
    if label_shape.rank == 0:
        return False
    return label_shape[0] is None or label_shape[0] == shape[0] and label_shape.rank == 1


def _parts(spec: Any) -> tuple[Any, Any]:
    if isinstance(spec, dict):
        return (next((spec[k] for k in IMAGE_KEYS if k in spec), None),
                next((spec[k] for k in LABEL_KEYS if k in spec), None))
    if isinstance(spec, (tuple, list)):
        return (spec[0] if spec else None), (spec[1] if len(spec) > 1 else None)
    return spec, None
