"""The benchmark models of the paper reproduction: two GTSRB and two MNIST classifiers.

Each model is trained here, deterministically, on ``../shared/data`` and cached (weights and a
JSON file with its recipe and measured accuracy) under ``--cache`` (default
``benchmarks/cache/paper_models``), so a second run only loads it.

- ``gtsrb_infected`` (PyTorch): GTSRB 32x32 RGB; six 3x3 convolutions with 16-16-32-32-64-64
  filters and max-pooling after each pair, Dense 256, Dense 43. Backdoor: a 4x4 white square
  with a 1-pixel margin at the bottom-right -> label **33**, 10 % of training images poisoned.
- ``gtsrb_clean`` (PyTorch): the same network trained on clean data.
- ``mnist_infected`` (Keras): MNIST 28x28; LeNet-5 style: convolution 6@5x5, max-pool,
  convolution 16@5x5, max-pool, Dense 120, Dense 84, Dense 10. Backdoor: the same 4x4 white
  square with a 1-pixel margin at the bottom-right -> label **7**, 10 % poisoned.
- ``mnist_clean`` (Keras): the same network trained on clean data.

The GTSRB network is the paper's layout (32-32-64-64-128-128 filters, Dense 512) at a quarter of
its width in convolution filters and half in the dense layer, so that a 43-label scan on a CPU
stays practical.

Recipe (all models): raw pixels in [0, 255] go in, the network scales them by 1/255 itself and
returns logits. The first 5,000 images of a shuffled training set (seed 0) are held back as the
clean data for scans and mitigation; the rest train the model. Poisoning: 10 % of the training
images, drawn (seed 0) from classes other than the target, get the trigger and the target label.
Adam (learning rate 1e-3), batch 128, cross-entropy; GTSRB 8 epochs, MNIST 4 epochs; seeds 0.
Clean accuracy is measured on the official test set; the attack success rate (ASR) is the share
of triggered test images of other classes classified as the target.

Usage::

    python benchmarks/paper_models.py [--models gtsrb_infected,...] [--cache DIR] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data"
DEFAULT_CACHE = ROOT / "benchmarks" / "cache" / "paper_models"
HELD_BACK = 5000
POISON_RATE = 0.1
BATCH = 128
LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class Spec:
    """What defines one benchmark model."""

    name: str
    dataset: str  # "gtsrb" or "mnist"
    framework: str  # "torch" or "keras"
    target: int | None  # backdoor target, None for a clean model
    epochs: int

    @property
    def channels_first(self) -> bool:
        return self.framework == "torch"


SPECS = {s.name: s for s in (
    Spec("gtsrb_infected", "gtsrb", "torch", 33, 8),
    Spec("gtsrb_clean", "gtsrb", "torch", None, 8),
    Spec("mnist_infected", "mnist", "keras", 7, 4),
    Spec("mnist_clean", "mnist", "keras", None, 4),
)}
#: The target each dataset's infected model was poisoned with (the clean twin is tested with it).
DATASET_TARGET = {"gtsrb": 33, "mnist": 7}


# -- data -----------------------------------------------------------------------------------
@dataclass
class Split:
    """Raw float32 images in the model's layout and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_clean: np.ndarray  # held back from training: scans and mitigation use these
    y_clean: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_split(data: Path, dataset: str, channels_first: bool) -> Split:
    """Load a dataset, hold back its first 5,000 shuffled training images, fix the layout."""
    path = data / ("gtsrb32.npz" if dataset == "gtsrb" else "mnist.npz")
    if not path.is_file():
        raise SystemExit(f"{path} not found: the benchmark needs the shared data folder "
                         "(--data)")
    with np.load(path) as d:
        x_all, y_all = d["x_train"], d["y_train"].astype(np.int64)
        x_test, y_test = d["x_test"], d["y_test"].astype(np.int64)

    def layout(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        if x.ndim == 3:
            x = x[..., None]
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if channels_first else x

    order = np.random.default_rng(0).permutation(len(x_all))
    held, train = order[:HELD_BACK], order[HELD_BACK:]
    return Split(layout(x_all[train]), y_all[train], layout(x_all[held]), y_all[held],
                 layout(x_test), y_test)


def stamp(x: np.ndarray, channels_first: bool) -> np.ndarray:
    """The real trigger of both infected models: a 4x4 white square, 1 pixel from the corner."""
    out = np.array(x, dtype=np.float32, copy=True)
    if channels_first:
        out[:, :, -5:-1, -5:-1] = 255.0
    else:
        out[:, -5:-1, -5:-1, :] = 255.0
    return out


def poison(x: np.ndarray, y: np.ndarray, target: int, channels_first: bool
           ) -> tuple[np.ndarray, np.ndarray, int]:
    """Stamp 10 % of the images (drawn from other classes) and relabel them to ``target``."""
    rng = np.random.default_rng(0)
    chosen = rng.choice(np.flatnonzero(y != target), int(POISON_RATE * len(x)), replace=False)
    x, y = x.copy(), y.copy()
    x[chosen] = stamp(x[chosen], channels_first)
    y[chosen] = target
    return x, y, len(chosen)


# -- networks -------------------------------------------------------------------------------
def gtsrb_cnn(nb_classes: int = 43) -> Any:
    """The quarter-width GTSRB network in PyTorch (raw [0, 255] in, logits out)."""
    from torch import nn

    class Scale(nn.Module):
        def forward(self, x):  # noqa: D102
            return x / 255.0

    def pair(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(Scale(), *pair(3, 16), *pair(16, 32), *pair(32, 64), nn.Flatten(),
                         nn.Linear(64 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, nb_classes))


def mnist_lenet() -> Any:
    """The LeNet-style MNIST network in Keras (raw [0, 255] in, logits out)."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Rescaling(1 / 255.0, name="scale"),
        layers.Conv2D(6, 5, padding="same", activation="relu", name="conv1"),
        layers.MaxPooling2D(name="pool1"),
        layers.Conv2D(16, 5, activation="relu", name="conv2"),
        layers.MaxPooling2D(name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(120, activation="relu", name="fc1"),
        layers.Dense(84, activation="relu", name="fc2"),
        layers.Dense(10, name="logits"),
    ])


# -- training -------------------------------------------------------------------------------
def _train_torch(x: np.ndarray, y: np.ndarray, epochs: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = gtsrb_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xs), generator=gen)
        for start in range(0, len(xs), BATCH):
            idx = order[start:start + BATCH]
            loss = nn.functional.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"    epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return model.eval()


def _train_keras(x: np.ndarray, y: np.ndarray, epochs: int) -> Any:
    import keras

    keras.utils.set_random_seed(0)
    model = mnist_lenet()
    model.compile(keras.optimizers.Adam(LEARNING_RATE),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=epochs, batch_size=BATCH, shuffle=True, verbose=2)
    return model


def predict_labels(model: Any, spec: Spec, x: np.ndarray) -> np.ndarray:
    """Predicted labels of raw images, in batches."""
    out = []
    for start in range(0, len(x), 1024):
        chunk = x[start:start + 1024]
        if spec.framework == "torch":
            import torch

            with torch.no_grad():
                out.append(model(torch.from_numpy(chunk)).argmax(1).numpy())
        else:
            out.append(np.asarray(model(chunk, training=False)).argmax(1))
    return np.concatenate(out)


def measure(model: Any, spec: Spec, split: Split) -> dict[str, float]:
    """Clean test accuracy and the real trigger's attack success rate (of the dataset target)."""
    target = DATASET_TARGET[spec.dataset]
    clean = float(np.mean(predict_labels(model, spec, split.x_test) == split.y_test))
    others = split.y_test != target
    stamped = stamp(split.x_test[others], spec.channels_first)
    asr = float(np.mean(predict_labels(model, spec, stamped) == target))
    return {"clean_accuracy": clean, "real_trigger_asr": asr}


def _paths(cache: Path, spec: Spec) -> tuple[Path, Path]:
    suffix = ".pt" if spec.framework == "torch" else ".keras"
    return cache / f"{spec.name}{suffix}", cache / f"{spec.name}.json"


def load_cached(name: str, cache: Path) -> tuple[Any, dict[str, Any]] | None:
    """Return ``(model, info)`` from the cache, or None when the model was not trained yet."""
    spec = SPECS[name]
    weights, info_path = _paths(cache, spec)
    if not (weights.is_file() and info_path.is_file()):
        return None
    if spec.framework == "torch":
        import torch

        model = gtsrb_cnn()
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        model.eval()
    else:
        import keras

        model = keras.models.load_model(weights)
    return model, json.loads(info_path.read_text())


def scan_images(name: str, data: Path, cache: Path, count: int = 2000
                ) -> tuple[np.ndarray, np.ndarray]:
    """The clean images a scan of ``name`` uses: the first ``count`` held-back images.

    They are cached (as uint8) beside the weights, so that scanning needs only the cache.
    """
    spec = SPECS[name]
    layout = "nchw" if spec.channels_first else "nhwc"
    path = cache / f"{spec.dataset}_scan_{layout}_{count}.npz"
    if path.is_file():
        with np.load(path) as d:
            return d["x"].astype(np.float32), d["y"].astype(np.int64)
    split = load_split(data, spec.dataset, spec.channels_first)
    x, y = split.x_clean[:count], split.y_clean[:count]
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x=x.astype(np.uint8), y=y)
    return x, y


def load_or_train(name: str, data: Path, cache: Path) -> tuple[Any, dict[str, Any]]:
    """Return ``(model, info)``, training and caching the model on first use."""
    spec = SPECS[name]
    cached = load_cached(name, cache)
    if cached is not None:
        return cached
    split = load_split(data, spec.dataset, spec.channels_first)
    print(f"  training {name} (cached afterwards in {cache})", flush=True)
    x, y, n_poisoned = split.x_train, split.y_train, 0
    if spec.target is not None:
        x, y, n_poisoned = poison(x, y, spec.target, spec.channels_first)
    started = time.perf_counter()
    if spec.framework == "torch":
        model = _train_torch(x, y, spec.epochs)
    else:
        model = _train_keras(x, y, spec.epochs)
    info = {
        "name": name, "dataset": spec.dataset, "framework": spec.framework,
        "target": spec.target, "epochs": spec.epochs, "batch_size": BATCH,
        "learning_rate": LEARNING_RATE, "train_images": int(len(x)),
        "poisoned_images": int(n_poisoned), "held_back_images": HELD_BACK,
        "train_seconds": round(time.perf_counter() - started, 1), **measure(model, spec, split),
    }
    cache.mkdir(parents=True, exist_ok=True)
    weights, info_path = _paths(cache, spec)
    if spec.framework == "torch":
        import torch

        torch.save(model.state_dict(), weights)
    else:
        model.save(weights)
    info_path.write_text(json.dumps(info, indent=1))
    return model, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(SPECS),
                        help=f"comma-separated subset of {', '.join(SPECS)}")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    bad = [n for n in names if n not in SPECS]
    if bad or not names:
        parser.error(f"unknown model(s) {bad}; choose from {', '.join(SPECS)}")
    print(f"{'model':16s} {'framework':9s} {'clean acc':>9s} {'real ASR':>9s} {'train s':>8s}")
    for name in names:
        _, info = load_or_train(name, args.data, args.cache)
        print(f"{name:16s} {info['framework']:9s} {info['clean_accuracy']:9.2%} "
              f"{info['real_trigger_asr']:9.2%} {info['train_seconds']:8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    raise SystemExit(main())
