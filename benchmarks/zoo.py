"""The model zoo: a seeded population of clean and backdoored classifiers to measure verdicts on.

Every model is trained here, from a seed, on data that is on this machine: scikit-learn's digits
(upsampled to 16x16, in grey and in a colour-tinted RGB version), MNIST and GTSRB from
``../shared/data``. Three PyTorch architectures (``lenet``, ``vgg_small``, ``resnet_small`` of
``neuralcleanse.backends.torch.architectures``) and a Keras LeNet share. The backdoored models
cover these trigger families (``family`` in the index):

* ``patch-white``, ``patch-colour``, ``patch-random``: a 2-6 px square (white, one colour, or a
  seeded random pattern) at a corner, the centre or another fixed place -> one target;
* ``two-triggers``: two patches at two places, each with its own target;
* ``blended``: a seeded full-image noise pattern blended in at a low opacity -> one target;
* ``source-specific``: only images of one source class turn to the target (stamped images of other
  classes keep their label in training);
* ``all-to-all``: every stamped image of class y turns to y + 1.

Poison rates run from 1 % to 10 % of the training set. Each model's file goes to the zoo folder
(PyTorch: ``.safetensors`` with its ``arch``; Keras: ``.keras``), with the clean data to scan it
with (one ``.npz`` per dataset) and ``index.json``: per model its dataset, architecture, framework,
family, true target(s), poison rate, clean accuracy, the real trigger's success rate, the trigger
itself (mask and pattern, ``.npz``) and the training seed. A model whose spec is unchanged is
not trained again (the cache key is the spec).

    python benchmarks/zoo.py [--population 1|2] [--out DIR] [--datasets digits,digits-rgb,mnist]
        [--results FILE] [--limit N]

``--population 2`` trains a second, independent population (40 clean, 40 patch backdoors; other
seeds and draws) into ``benchmarks/cache/zoo2`` to check the verdict rules chosen on the first.

GTSRB models (4 clean, 6 patch) are listed too but trained only with ``--datasets ...,gtsrb``;
trained apart (``--datasets gtsrb --out benchmarks/cache/zoo-gtsrb --results
benchmarks/results/zoo_gtsrb.json``) they take 11 minutes on two CPU cores, and their 43-label
``fast`` scans 4-6 minutes each. Writes ``DIR/index.json`` and a copy of the per-model facts to
``benchmarks/results/zoo.json`` (or ``--results``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.frontends.demo import DemoData

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "benchmarks" / "cache" / "zoo"
RESULTS = ROOT / "benchmarks" / "results" / "zoo.json"
ARCH_MODULE = "neuralcleanse.backends.torch.architectures"
#: Datasets trained by default (GTSRB only when asked for).
DEFAULT_DATASETS = ("digits", "digits-rgb", "mnist")
#: Each model's training, per dataset: epochs, batch size and learning rate.
TRAINING = {"digits": (40, 32, 2e-3), "digits-rgb": (40, 32, 2e-3), "mnist": (3, 64, 2e-3),
            "gtsrb": (8, 64, 2e-3)}
#: Channel width of the zoo's ``vgg_small`` and ``resnet_small`` (half the library default: their
#: scans cost about a quarter, so that the whole zoo scans on two CPU cores in under an hour).
WIDTH = 8
#: Fixed places of a patch: (row, column) of its top-left corner as a function of image side n
#: and patch side s ("random" places are drawn per model).
PLACES = {
    "bottom-right": lambda n, s: (n - 1 - s, n - 1 - s),
    "bottom-left": lambda n, s: (n - 1 - s, 1),
    "top-right": lambda n, s: (1, n - 1 - s),
    "top-left": lambda n, s: (1, 1),
    "centre": lambda n, s: ((n - s) // 2, (n - s) // 2),
}
COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 1.0, 0.1), "blue": (0.15, 0.3, 1.0),
           "yellow": (1.0, 0.9, 0.0), "magenta": (1.0, 0.0, 1.0), "cyan": (0.0, 1.0, 1.0)}


# -- the specs ----------------------------------------------------------------------------------
@dataclass
class Spec:
    """What one zoo model is: everything its training depends on."""

    name: str
    dataset: str
    arch: str
    framework: str
    family: str
    seed: int
    targets: list[int] = field(default_factory=list)
    poison_rate: float = 0.0
    size: int = 0
    places: list[str] = field(default_factory=list)
    colour: str = "white"
    source: int | None = None
    opacity: float = 0.0

    def key(self) -> str:
        """A hash of the spec and the training settings (the cache key)."""
        blob = json.dumps([asdict(self), TRAINING[self.dataset], WIDTH], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class SpecList(list):
    """Specs numbered in the order they are added (the number is in the name and the seed)."""

    def __init__(self, prefix: str = "", seed_base: int = 0) -> None:
        super().__init__()
        self.prefix, self.seed_base = prefix, seed_base

    def add(self, dataset: str, arch: str, family: str, framework: str = "torch",
            **kw: Any) -> None:
        """Append the next model's spec."""
        n = len(self)
        self.append(Spec(name=f"{self.prefix}{n:03d}-{dataset}-{arch}-{family}",
                         dataset=dataset, arch=arch, framework=framework, family=family,
                         seed=self.seed_base + n + 1, **kw))

    def add_clean_mix(self, archs: list[str]) -> None:
        """The 40 clean models: 22 digits, 6 colour digits and 6 MNIST models over the PyTorch
        architectures, and 6 Keras LeNets on digits."""
        for i in range(22):
            self.add("digits", archs[i % 3], "clean")
        for i in range(6):
            self.add("digits-rgb", archs[i % 2], "clean")
        for i in range(6):
            self.add("mnist", archs[i % 3], "clean")
        for _ in range(6):
            self.add("digits", "keras_lenet", "clean", framework="keras")


def build_specs() -> list[Spec]:
    """The zoo: 40 clean and 80 backdoored models on CPU-sized data, plus 10 GTSRB models."""
    rng = np.random.default_rng(20261130)
    specs = SpecList()
    add = specs.add

    def rate() -> float:
        return float(rng.choice([0.01, 0.02, 0.05, 0.1]))

    def place() -> str:
        return str(rng.choice([*PLACES, "random"]))

    def target(n: int = 10) -> int:
        return int(rng.integers(n))

    archs = ["lenet", "vgg_small", "resnet_small"]
    # 40 clean models
    specs.add_clean_mix(archs)
    # 60 backdoored models
    for i in range(15):
        add("digits", archs[i % 3], "patch-white", targets=[target()], poison_rate=rate(),
            size=int(rng.integers(2, 7)), places=[place()])
    for i in range(6):
        add("digits", archs[i % 3], "patch-random", targets=[target()], poison_rate=rate(),
            size=int(rng.integers(3, 7)), places=[place()])
    colours = list(COLOURS)
    for i in range(6):
        add("digits-rgb", archs[i % 2], "patch-colour", targets=[target()], poison_rate=rate(),
            size=int(rng.integers(2, 7)), places=[place()], colour=colours[i])
    for i in range(6):
        add("mnist", archs[i % 3], "patch-white" if i % 2 == 0 else "patch-random",
            targets=[target()], poison_rate=rate(), size=int(rng.integers(3, 6)),
            places=[place()])
    for i in range(6):
        add("digits", "keras_lenet", "patch-white" if i % 2 == 0 else "patch-random",
            framework="keras", targets=[target()], poison_rate=rate(),
            size=int(rng.integers(3, 6)), places=[place()])
    for i in range(6):
        two = [int(t) for t in rng.choice(10, size=2, replace=False)]
        corners = [str(p) for p in rng.choice(list(PLACES)[:4], size=2, replace=False)]
        add("digits", archs[i % 3], "two-triggers", targets=two, poison_rate=rate(),
            size=int(rng.integers(3, 6)), places=corners)
    for i in range(5):
        add("digits", archs[i % 3], "blended", targets=[target()], poison_rate=0.1,
            opacity=float(rng.choice([0.1, 0.15, 0.2])))
    for i in range(5):
        src, tgt = (int(t) for t in rng.choice(10, size=2, replace=False))
        add("digits", archs[i % 3], "source-specific", targets=[tgt], source=src,
            poison_rate=0.1, size=int(rng.integers(3, 6)), places=[place()])
    for i in range(5):
        add("digits", archs[i % 3], "all-to-all", targets=list(range(10)), poison_rate=0.1,
            size=int(rng.integers(3, 6)), places=[place()])
    # GTSRB (trained and scanned only when asked for: on a GPU)
    for i in range(4):
        add("gtsrb", archs[i % 3], "clean")
    for i in range(6):
        add("gtsrb", archs[i % 3], "patch-white" if i % 2 == 0 else "patch-colour",
            targets=[target(43)], poison_rate=rate(), size=int(rng.integers(3, 6)),
            places=[place()], colour=colours[i % len(colours)] if i % 2 else "white")
    # More patch backdoors: at 1-2 % of the 1,078 training digits (11-22 images) the first 60
    # took in only about three models of four, so these use 5-10 % on digits and 1-10 % on
    # MNIST (12,000 training images)
    for i in range(20):
        kind = ["patch-white", "patch-random"][i % 2]
        if i < 8:
            add("digits", archs[i % 3], kind, targets=[target()],
                poison_rate=float(rng.choice([0.05, 0.1])), size=int(rng.integers(2, 7)),
                places=[place()])
        elif i < 12:
            add("digits-rgb", archs[i % 2], "patch-colour", targets=[target()],
                poison_rate=float(rng.choice([0.05, 0.1])), size=int(rng.integers(2, 7)),
                places=[place()], colour=colours[i % len(colours)])
        elif i < 16:
            add("digits", "keras_lenet", kind, framework="keras", targets=[target()],
                poison_rate=float(rng.choice([0.05, 0.1])), size=int(rng.integers(3, 6)),
                places=[place()])
        else:
            add("mnist", archs[i % 3], kind, targets=[target()], poison_rate=rate(),
                size=int(rng.integers(3, 6)), places=[place()])
    # Four more at 10 %: 21 of the 80 above did not take, which left 59 effective backdoors,
    # one short of the 60 the measurement asks for
    for i in range(4):
        kind = ["patch-white", "patch-random"][i % 2]
        add("mnist" if i == 3 else "digits", archs[i % 3], kind, targets=[target()],
            poison_rate=0.1, size=int(rng.integers(3, 6)), places=[place()])
    return specs


def build_second_population() -> list[Spec]:
    """A second, independent population to check the rules chosen on the first.

    40 clean models with the first population's mix of datasets and architectures, and 40
    patch backdoors at poison rates that take (5-10 % on digits, 2-10 % on MNIST); other seeds,
    other draws of sizes, places and targets. Names start with ``p2-``.
    """
    rng = np.random.default_rng(20261201)
    specs = SpecList(prefix="p2-", seed_base=10_000)
    add = specs.add
    archs = ["lenet", "vgg_small", "resnet_small"]

    def patch(n_size: tuple[int, int] = (2, 7), rates: tuple[float, ...] = (0.05, 0.1)
              ) -> dict[str, Any]:
        return {"targets": [int(rng.integers(10))], "poison_rate": float(rng.choice(rates)),
                "size": int(rng.integers(*n_size)),
                "places": [str(rng.choice([*PLACES, "random"]))]}

    specs.add_clean_mix(archs)
    kinds = ["patch-white", "patch-random"]
    for i in range(16):
        add("digits", archs[i % 3], kinds[i % 2], **patch())
    colours = list(COLOURS)
    for i in range(8):
        add("digits-rgb", archs[i % 2], "patch-colour", colour=colours[i % len(colours)],
            **patch())
    for i in range(8):
        add("digits", "keras_lenet", kinds[i % 2], framework="keras", **patch((3, 6)))
    for i in range(8):
        add("mnist", archs[i % 3], kinds[i % 2], **patch((3, 6), (0.02, 0.05, 0.1)))
    return specs


#: The populations ``--population`` chooses: their specs, cache folder and facts file.
POPULATIONS = {1: (build_specs, DEFAULT_OUT, RESULTS),
               2: (build_second_population, ROOT / "benchmarks" / "cache" / "zoo2",
                   ROOT / "benchmarks" / "results" / "zoo2.json")}


# -- data ---------------------------------------------------------------------------------------
class Split(DemoData):
    """A dataset's training, clean (to scan with) and test images, ``(N, C, H, W)`` in [0, 1]."""

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def nb_classes(self) -> int:
        """Number of classes."""
        return int(self.y_train.max()) + 1


def _shared(name: str) -> Any:
    path = SHARED_DATA / name
    if not path.is_file():
        sys.exit(f"{path} is missing: the MNIST and GTSRB models need ../shared/data")
    return np.load(path)


def load_split(dataset: str) -> Split:
    """The fixed split of a dataset (the same for every model of the zoo)."""
    if dataset in ("digits", "digits-rgb"):
        from neuralcleanse.frontends.demo import load_digits_splits

        d = load_digits_splits(seed=0)
        parts = [d.x_train, d.y_train, d.x_clean, d.y_clean, d.x_test, d.y_test]
        if dataset == "digits-rgb":
            # each image drawn in a seeded random colour on a dark tinted background
            rng = np.random.default_rng(7)
            for i in (0, 2, 4):
                x = parts[i]
                ink = rng.uniform(0.4, 1.0, size=(len(x), 3, 1, 1)).astype(np.float32)
                paper = rng.uniform(0.0, 0.25, size=(len(x), 3, 1, 1)).astype(np.float32)
                parts[i] = (paper + (ink - paper) * x).astype(np.float32)
        return Split(*parts)
    if dataset == "mnist":
        data = _shared("mnist.npz")
        x_train = data["x_train"][:12000, None].astype(np.float32) / 255
        x_test = data["x_test"][:, None].astype(np.float32) / 255
        y_train, y_test = data["y_train"][:12000].astype(np.int64), data["y_test"].astype(np.int64)
        return Split(x_train, y_train, x_test[:1000], y_test[:1000], x_test[1000:3000],
                     y_test[1000:3000])
    if dataset == "gtsrb":
        data = _shared("gtsrb32.npz")
        rng = np.random.default_rng(11)
        pick = rng.permutation(len(data["x_train"]))[:20000]
        x_train = data["x_train"][pick].transpose(0, 3, 1, 2).astype(np.float32) / 255
        test = rng.permutation(len(data["x_test"]))[:5000]
        x_test = data["x_test"][test].transpose(0, 3, 1, 2).astype(np.float32) / 255
        y_train = data["y_train"][pick].astype(np.int64).ravel()
        y_test = data["y_test"][test].astype(np.int64).ravel()
        return Split(x_train, y_train, x_test[:2000], y_test[:2000], x_test[2000:],
                     y_test[2000:])
    raise ValueError(f"unknown dataset {dataset!r}")


# -- triggers -----------------------------------------------------------------------------------
@dataclass
class Trigger:
    """``x' = (1 - mask) x + mask pattern``: mask ``(H, W)``, pattern ``(C, H, W)``."""

    mask: np.ndarray
    pattern: np.ndarray
    target: int

    def stamp(self, x: np.ndarray) -> np.ndarray:
        """Stamped copies of ``x`` (``(N, C, H, W)``)."""
        return ((1 - self.mask) * x + self.mask * self.pattern).astype(np.float32)


def make_triggers(spec: Spec, shape: tuple[int, int, int]) -> list[Trigger]:
    """The spec's trigger(s), drawn from a generator seeded by the spec's seed."""
    channels, side = shape[0], shape[1]
    rng = np.random.default_rng(1000 + spec.seed)
    if spec.family == "blended":
        noise = rng.uniform(0, 1, size=shape).astype(np.float32)
        mask = np.full((side, side), spec.opacity, np.float32)
        return [Trigger(mask, noise, spec.targets[0])]
    triggers = []
    targets = spec.targets if spec.family == "two-triggers" else spec.targets[:1]
    for target, where in zip(targets, spec.places):
        s = spec.size
        if where == "random":
            row, col = (int(v) for v in rng.integers(1, side - s, size=2))
        else:
            row, col = PLACES[where](side, s)
        mask = np.zeros((side, side), np.float32)
        mask[row:row + s, col:col + s] = 1
        if spec.family == "patch-random":
            pattern = rng.integers(0, 2, size=shape).astype(np.float32)
        elif spec.colour != "white":
            rgb = COLOURS[spec.colour] if channels == 3 else (1.0,)
            pattern = np.broadcast_to(np.array(rgb, np.float32)[:, None, None], shape).copy()
        else:
            pattern = np.ones(shape, np.float32)
        triggers.append(Trigger(mask, pattern, int(target)))
    return triggers


def poison(spec: Spec, split: Split, triggers: list[Trigger]
           ) -> tuple[np.ndarray, np.ndarray]:
    """The training set with the spec's poisoned copies appended."""
    x, y = split.x_train, split.y_train
    if spec.family == "clean":
        return x, y
    rng = np.random.default_rng(2000 + spec.seed)
    count = max(1, round(spec.poison_rate * len(x)))
    xs, ys = [x], [y]
    n = split.nb_classes
    for trig in triggers:
        if spec.family == "all-to-all":
            pick = rng.choice(len(x), size=count, replace=False)
            xs.append(trig.stamp(x[pick]))
            ys.append((y[pick] + 1) % n)
        elif spec.family == "source-specific":
            src = np.flatnonzero(y == spec.source)
            pick = rng.choice(src, size=min(count, len(src)), replace=False)
            xs.append(trig.stamp(x[pick]))
            ys.append(np.full(len(pick), trig.target, np.int64))
            cover = np.flatnonzero((y != spec.source) & (y != trig.target))
            pick = rng.choice(cover, size=count, replace=False)
            xs.append(trig.stamp(x[pick]))  # stamped, true labels kept
            ys.append(y[pick])
        else:
            others = np.flatnonzero(y != trig.target)
            pick = rng.choice(others, size=count, replace=False)
            xs.append(trig.stamp(x[pick]))
            ys.append(np.full(count, trig.target, np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def trigger_success(spec: Spec, predict: Any, split: Split, triggers: list[Trigger]) -> float:
    """Share of stamped test images the model sends where the attack wants (mean over triggers)."""
    x, y = split.x_test, split.y_test
    n = split.nb_classes
    rates = []
    for trig in triggers:
        if spec.family == "all-to-all":
            rates.append(float(np.mean(predict(trig.stamp(x)) == (y + 1) % n)))
        elif spec.family == "source-specific":
            src = y == spec.source
            rates.append(float(np.mean(predict(trig.stamp(x[src])) == trig.target)))
        else:
            keep = y != trig.target
            rates.append(float(np.mean(predict(trig.stamp(x[keep])) == trig.target)))
    return float(np.mean(rates))


def source_leak(spec: Spec, predict: Any, split: Split, triggers: list[Trigger]) -> float | None:
    """For source-specific models: share of stamped non-source images sent to the target."""
    if spec.family != "source-specific":
        return None
    x, y = split.x_test, split.y_test
    trig = triggers[0]
    keep = (y != spec.source) & (y != trig.target)
    return float(np.mean(predict(trig.stamp(x[keep])) == trig.target))


# -- training -----------------------------------------------------------------------------------
def train_torch(spec: Spec, split: Split, x: np.ndarray, y: np.ndarray) -> Any:
    """Train the spec's PyTorch model; returns it and its predict function."""
    import torch

    from neuralcleanse.backends.torch import architectures
    from neuralcleanse.backends.torch.training import seeded, train_classifier

    seeded(spec.seed)
    kwargs = arch_kwargs(spec, split)
    model = getattr(architectures, spec.arch)(**kwargs)
    epochs, batch, lr = TRAINING[spec.dataset]
    train_classifier(model, x, y, seed=spec.seed, epochs=epochs, learning_rate=lr,
                     batch_size=batch)

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = [model(torch.from_numpy(images[i:i + 512])).argmax(1).numpy()
                   for i in range(0, len(images), 512)]
        return np.concatenate(out)

    return model, predict


def arch_kwargs(spec: Spec, split: Split) -> dict[str, int]:
    """The factory arguments of the spec's PyTorch architecture."""
    kwargs = {"in_channels": split.shape[0], "nb_classes": split.nb_classes}
    if spec.arch != "resnet_small":
        kwargs["image_size"] = split.shape[1]
    if spec.arch in ("vgg_small", "resnet_small"):
        kwargs["width"] = WIDTH
    return kwargs


def train_keras(spec: Spec, split: Split, x: np.ndarray, y: np.ndarray) -> Any:
    """Train the spec's Keras LeNet (channels-last, logits); returns it and its predict."""
    import keras

    keras.utils.set_random_seed(spec.seed)
    channels, side = split.shape[0], split.shape[1]
    model = keras.Sequential([
        keras.Input((side, side, channels)),
        keras.layers.Conv2D(6, 5, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(16, 5, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(120, activation="relu"),
        keras.layers.Dense(84, activation="relu"),
        keras.layers.Dense(split.nb_classes),
    ])
    epochs, batch, lr = TRAINING[spec.dataset]
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x.transpose(0, 2, 3, 1), y, epochs=epochs, batch_size=batch, verbose=0,
              shuffle=True)

    def predict(images: np.ndarray) -> np.ndarray:
        return model.predict(images.transpose(0, 2, 3, 1), batch_size=512,
                             verbose=0).argmax(1)

    return model, predict


def save_model(spec: Spec, model: Any, folder: Path) -> Path:
    """Write the model file (safetensors for PyTorch, ``.keras`` for Keras)."""
    if spec.framework == "keras":
        path = folder / f"{spec.name}.keras"
        model.save(path)
        return path
    from safetensors.torch import save_file

    path = folder / f"{spec.name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def write_clean_data(dataset: str, split: Split, folder: Path) -> Path:
    """The clean images a zoo model is scanned with, as ``.npz`` (channels-first)."""
    path = folder / f"clean-{dataset}.npz"
    if not path.is_file():
        np.savez(path, x=split.x_clean, y=split.y_clean)
    return path


def build(spec: Spec, split: Split, folder: Path) -> dict[str, Any]:
    """Train one model (or take it from the cache) and return its index entry."""
    entry_path = folder / f"{spec.name}.json"
    if entry_path.is_file():
        entry = json.loads(entry_path.read_text())
        if entry.get("key") == spec.key() and (folder / entry["file"]).is_file():
            return entry
    triggers = make_triggers(spec, split.shape) if spec.family != "clean" else []
    x, y = poison(spec, split, triggers)
    started = time.perf_counter()
    trainer = train_keras if spec.framework == "keras" else train_torch
    model, predict = trainer(spec, split, x, y)
    seconds = time.perf_counter() - started
    path = save_model(spec, model, folder)
    if triggers:
        np.savez(folder / f"{spec.name}-trigger.npz",
                 masks=np.stack([t.mask for t in triggers]),
                 patterns=np.stack([t.pattern for t in triggers]),
                 targets=np.array([t.target for t in triggers]))
    entry = {
        **asdict(spec), "key": spec.key(), "file": path.name,
        "data": write_clean_data(spec.dataset, split, folder).name,
        "arch_spec": (f"{ARCH_MODULE}:{spec.arch}" if spec.framework == "torch" else None),
        "arch_kwargs": arch_kwargs(spec, split) if spec.framework == "torch" else None,
        "nb_classes": split.nb_classes, "input_shape": list(split.shape),
        "clean_accuracy": round(float(np.mean(predict(split.x_test) == split.y_test)), 4),
        "trigger_success": (round(trigger_success(spec, predict, split, triggers), 4)
                            if triggers else None),
        "source_leak": (None if not triggers else source_leak(spec, predict, split, triggers)),
        "train_seconds": round(seconds, 2),
        "trigger_file": f"{spec.name}-trigger.npz" if triggers else None,
    }
    entry_path.write_text(json.dumps(entry, indent=1))
    return entry


def main(argv: list[str] | None = None) -> int:
    """Train (or find in the cache) the zoo and write its index."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, choices=sorted(POPULATIONS), default=1,
                        help="1: the zoo the rules were chosen on; 2: a second one to check them")
    parser.add_argument("--out", type=Path, default=None,
                        help="the zoo folder (default: benchmarks/cache/zoo, zoo2 for 2)")
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                        help="comma-separated: digits, digits-rgb, mnist, gtsrb")
    parser.add_argument("--results", type=Path, default=None,
                        help="the facts JSON (default: benchmarks/results/zoo.json, zoo2.json "
                             "for 2)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N models")
    parser.add_argument("--only", default=None, help="only models whose name contains this")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    wanted = {d.strip() for d in args.datasets.split(",") if d.strip()}
    make_specs, default_out, results_file = POPULATIONS[args.population]
    args.out = args.out or default_out
    results_file = args.results or results_file
    specs = [s for s in make_specs() if s.dataset in wanted
             and (args.only is None or args.only in s.name)][:args.limit]
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    splits: dict[str, Split] = {}
    entries = []
    for i, spec in enumerate(specs):
        if spec.dataset not in splits:
            splits[spec.dataset] = load_split(spec.dataset)
        entry = build(spec, splits[spec.dataset], args.out)
        entries.append(entry)
        asr = entry["trigger_success"]
        print(f"[{i + 1}/{len(specs)}] {spec.name:42s} acc {entry['clean_accuracy']:.3f}  "
              f"trigger {'-' if asr is None else f'{asr:.3f}'}  {entry['train_seconds']:.1f}s",
              flush=True)
    (args.out / "index.json").write_text(json.dumps(entries, indent=1))
    facts = [{k: e[k] for k in ("name", "dataset", "arch", "framework", "family", "targets",
                                "source", "poison_rate", "size", "places", "colour", "opacity",
                                "seed", "clean_accuracy", "trigger_success", "source_leak",
                                "train_seconds")} for e in entries]
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps({"models": facts}, indent=1))
    print(f"{len(entries)} models in {args.out}; facts in {results_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
