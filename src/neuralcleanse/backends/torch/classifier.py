"""PyTorch backend: any ``torch.nn.Module`` classifier (and Keras 3 models on the torch backend).

The classifier itself: prediction, the model's facts, layers and activations, pruning (through
:mod:`.pruning`), copying, fine-tuning and saving. The trigger search runs in :mod:`.session`,
the ART gradient surface in :mod:`.differentiable`.
"""

from __future__ import annotations

import copy as copy_module
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuralcleanse.backends.base import (
    PROBABILITY_FLOOR,
    Classifier,
    Preprocessing,
    TriggerSession,
    checked_input_shape,
    keras_channels_first,
    keras_module,
    keras_output_kind,
)
from neuralcleanse.backends.differentiable import preprocessing_description, split_preprocessing
from neuralcleanse.backends.torch.pruning import pruned_state_dict, pruning_hooks, set_pruned
from neuralcleanse.backends.torch.session import TorchTriggerSession
from neuralcleanse.core.checks import check_clip_values, rows_are_probabilities
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError, InputTypeError


def _as_tensor_preprocessing(preprocessing: Preprocessing, device: torch.device,
                             input_shape: tuple[int, ...]) -> Callable[[torch.Tensor],
                                                                       torch.Tensor] | None:
    """Turn ``(subtrahend, divisor)`` or a callable into a function on tensors."""
    if callable(preprocessing):
        return preprocessing
    pair = split_preprocessing(preprocessing, input_shape)
    if pair is None:
        return None
    sub_t, div_t = (torch.from_numpy(np.asarray(a, np.float32)).to(device) for a in pair)
    return lambda x: (x - sub_t) / div_t


class TorchClassifier(Classifier):
    """A PyTorch image classifier seen through the backend interface.

    A Keras 3 model on the torch backend is a ``torch.nn.Module`` too; for one, what the model
    declares fills the options left out (its input shape, its layers' data format, and its
    final activation: softmax means probabilities), as the TensorFlow backend reads them.

    Args:
        model: The ``torch.nn.Module``; it is never modified.
        input_shape: Shape of one raw input (e.g. ``(1, 28, 28)``); may be left out for a Keras
            model that declares it.
        output: ``"logits"`` or ``"probabilities"``: what the model's last layer returns.
            Defaults to logits, or for a Keras model to what its final activation says (or
            failing that, to what a probe batch's outputs look like).
        channels_first: Whether inputs are ``(C, H, W)`` or ``(H, W, C)``. Defaults to True
            (PyTorch's convention), or for a Keras model to its layers' data format (Keras'
            configured ``image_data_format()`` when no layer has one); a value that contradicts
            the data format a Keras model's layers declare is refused.
        clip_values: Raw input range ``(min, max)``; stamped triggers stay inside it.
        preprocessing: ``(subtrahend, divisor)`` or a callable on tensors, applied to raw inputs
            (after a trigger is stamped) before the model.
        device: Where to compute; defaults to the device of the model's parameters.
        nb_classes: Number of outputs; found with one forward pass when omitted.
    """

    framework = "pytorch"

    def __init__(self, model: torch.nn.Module, input_shape: tuple[int, ...] | None = None, *,
                 output: str | None = None, channels_first: bool | None = None,
                 clip_values: tuple[float, float] = (0.0, 1.0),
                 preprocessing: Preprocessing = None, device: str | torch.device | None = None,
                 nb_classes: int | None = None) -> None:
        if not isinstance(model, torch.nn.Module):
            raise InputTypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
        if output is not None and output not in ("logits", "probabilities"):
            raise InputError(f"output must be 'logits' or 'probabilities' (got {output!r})")
        self.model = model
        #: The Keras package when ``model`` is a Keras 3 model on the torch backend, else None.
        self.keras = keras_module(model)
        self.input_shape = checked_input_shape(input_shape,
                                               model if self.keras is not None else None)
        if len(self.input_shape) not in (2, 3):
            raise InputError(f"input_shape must be (C, H, W), (H, W, C) or (H, W); got "
                             f"{self.input_shape}")
        if self.keras is not None:
            self.channels_first = keras_channels_first(model, channels_first)
        else:
            self.channels_first = True if channels_first is None else bool(channels_first)
        self.clip_values = check_clip_values(clip_values)
        first = next(iter(model.parameters()), None)
        home = first.device if first is not None else torch.device("cpu")
        self.device = home if device is None else torch.device(device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise InputError(f"device {str(device)!r} was asked for, but this PyTorch "
                                 f"({torch.__version__}) sees no CUDA GPU")
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
        if first is not None and self.device != home:
            # Work on a copy on the requested device: the caller's model stays where it is.
            self.model = copy_module.deepcopy(model).to(self.device)
        self.preprocessing = preprocessing
        self._preprocess = _as_tensor_preprocessing(preprocessing, self.device, self.input_shape)
        self._bytes_per_image: int | None = None
        #: How the class scores are taken from an output that is no tensor (decided on the
        #: first forward pass), and what was done, for :meth:`describe`.
        self._pick_scores: Callable[[Any], torch.Tensor] | None = None
        self.output_note: str | None = None
        self.output = output or "logits"
        self.nb_classes = int(nb_classes) if nb_classes else self._count_outputs()
        if output is None and self.keras is not None:
            self.output = keras_output_kind(model) or self._probe_output_kind()

    def _probe_output_kind(self) -> str:
        """Probabilities when a probe batch's outputs are probability rows, else logits."""
        lo, hi = self.clip_values
        probe = np.random.default_rng(0).uniform(lo, hi, (8, *self.input_shape))
        return "probabilities" if rows_are_probabilities(self.predict(probe)) else "logits"

    def describe(self) -> dict[str, Any]:
        """Model facts echoed in reports."""
        out = super().describe()
        out.update(device=str(self.device), torch_version=torch.__version__,
                   model_class=type(self.model).__name__,
                   preprocessing=preprocessing_description(self.preprocessing))
        if self.output_note:
            out["outputs"] = self.output_note
        if self.keras is not None:
            out.update(keras=self.keras.__name__, keras_backend="torch",
                       keras_version=getattr(self.keras, "__version__", ""))
        return out

    # -- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Inference mode with frozen weights; restores modes and ``requires_grad`` on exit."""
        modes = [(m, m.training) for m in self.model.modules()]
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            self.model.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            yield
        finally:
            for m, training in modes:
                m.training = training
            for p, flag in flags:
                p.requires_grad_(flag)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocess raw inputs and run the model."""
        if self._preprocess is not None:
            x = self._preprocess(x)
        # Keras layers take the mode as an argument, not from torch's module flag
        out = self.model(x) if self.keras is None else self.model(x, training=self.model.training)
        if isinstance(out, torch.Tensor):
            return out
        if self._pick_scores is None:  # decided once, on the first output that is no tensor
            self._pick_scores, self.output_note = scores_picker(out)
        return self._pick_scores(out)

    def _count_outputs(self) -> int:
        lo, hi = self.clip_values
        probe = torch.full((1, *self.input_shape), (lo + hi) / 2, device=self.device)
        with self.frozen(), torch.no_grad():
            try:
                out = self.forward(probe)
            except InputError:
                raise
            except Exception as exc:  # the model rejected the input shape
                raise InputError(f"the model could not run on inputs of shape "
                                 f"{(1, *self.input_shape)}: {exc}") from exc
        if out.ndim != 2:
            raise InputError(f"the model must return one row of class scores per image; got "
                             f"output shape {tuple(out.shape)}")
        return int(out.shape[1])

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Model outputs for raw inputs ``x``, computed in inference mode."""
        outs = []
        with self.frozen(), torch.no_grad():
            for start in range(0, len(x), batch_size):
                chunk = torch.as_tensor(np.asarray(x[start:start + batch_size], np.float32),
                                        device=self.device)
                outs.append(self.forward(chunk).float().cpu().numpy())
        if not outs:
            return np.zeros((0, self.nb_classes), dtype=np.float32)
        return np.concatenate(outs)

    def activation_bytes_per_image(self) -> int:
        """Bytes autograd keeps for one image's backward pass, times two (gradient workspace).

        Measured with saved-tensor hooks on a probe batch, so it also works for TorchScript
        modules, which refuse module hooks.
        """
        if self._bytes_per_image is None:

            def saved_bytes(n_images: int) -> int:
                saved = [0]

                def pack(tensor: torch.Tensor) -> torch.Tensor:
                    saved[0] += tensor.numel() * tensor.element_size()
                    return tensor

                probe = torch.zeros((n_images, *self.input_shape), device=self.device,
                                    requires_grad=True)
                with self.frozen(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    self.forward(probe)
                return saved[0]

            # the difference removes what does not grow with the batch (weights saved by ops)
            per_image = (saved_bytes(3) - saved_bytes(1)) // 2 + 4 * int(np.prod(self.input_shape))
            self._bytes_per_image = 2 * max(per_image, 1)
        return self._bytes_per_image

    # -- layers, pruning, fine-tuning, saving ------------------------------------------------
    def _refuse_keras_layers(self) -> None:
        # Keras layers are not torch submodules: hooks on what torch lists would never fire
        if self.keras is not None:
            raise InputError("layer activations and pruning of a Keras model run on the "
                             "TensorFlow backend only: set KERAS_BACKEND=tensorflow before "
                             "Keras is imported")

    def layer_names(self) -> list[str]:
        """Names of the model's leaf modules, in registration order."""
        self._refuse_keras_layers()
        return [name for name, m in self.model.named_modules() if name and not list(m.children())]

    def _final_layer(self) -> str:
        finals = [name for name, m in self.model.named_modules()
                  if isinstance(m, (torch.nn.Linear, torch.nn.LazyLinear))]
        if not finals:
            raise InputError("the model has no torch.nn.Linear layer to call the final "
                             "classification layer; choose a layer by name from: "
                             f"{', '.join(self.layer_names())}")
        return finals[-1]

    def resolve_layer(self, layer: str | int | None) -> tuple[str, str]:
        """Map a layer spec onto ``(module name, "input" | "output")``."""
        self._refuse_keras_layers()
        name = self.layer_spec_name(layer, extra_names=tuple(dict(self.model.named_modules())))
        return (self._final_layer(), "input") if name is None else (name, "output")

    def neuron_activations(self, x: np.ndarray, layer: str | int | None = None,
                           batch_size: int = 256) -> np.ndarray:
        """Per-neuron activations of one layer; convolution channels averaged over space."""
        name, side = self.resolve_layer(layer)
        module = dict(self.model.named_modules())[name]
        captured: list[torch.Tensor] = []

        def grab(tensor: Any) -> None:
            t = tensor[0] if isinstance(tensor, (tuple, list)) else tensor
            t = t.detach().float()
            if t.ndim > 2:
                t = t.flatten(2).mean(dim=2)
            captured.append(t.cpu())

        if side == "input":
            handle = module.register_forward_pre_hook(lambda _m, inp: grab(inp))
        else:
            handle = module.register_forward_hook(lambda _m, _i, out: grab(out))
        try:
            self.predict(x, batch_size=batch_size)
        finally:
            handle.remove()
        return torch.cat(captured).numpy() if captured else np.zeros((0, 0), np.float32)

    def set_pruned_neurons(self, layer: str | int | None, neurons: np.ndarray) -> None:
        """Zero some neurons of a layer through a hook; the weights stay as they are."""
        name, side = self.resolve_layer(layer)
        set_pruned(self.model, name, side, neurons)

    def pruned_neurons(self) -> dict[str, np.ndarray]:
        """The pruned neurons of every layer that has some, by module name."""
        return {name: h.pruned for name, h in pruning_hooks(self.model).items() if h.pruned.size}

    def copy(self) -> TorchClassifier:
        """An independent copy of the model (pruning hooks included) with the same settings."""
        return TorchClassifier(copy_module.deepcopy(self.model), self.input_shape,
                               output=self.output, channels_first=self.channels_first,
                               clip_values=self.clip_values, preprocessing=self.preprocessing,
                               device=self.device, nb_classes=self.nb_classes)

    def fine_tune(self, x: np.ndarray, y: np.ndarray, epochs: int, learning_rate: float,
                  batch_size: int, seed: int) -> None:
        """Adam on the cross-entropy, in training mode; the model ends in inference mode."""
        gen = torch.Generator().manual_seed(int(seed))
        params = [p for p in self.model.parameters()]
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        optimiser = torch.optim.Adam(params, lr=learning_rate)
        xs = torch.as_tensor(np.asarray(x, np.float32))
        ys = torch.as_tensor(np.asarray(y, np.int64))
        self.model.train()
        try:
            for _ in range(int(epochs)):
                order = torch.randperm(len(xs), generator=gen)
                for start in range(0, len(xs), batch_size):
                    idx = order[start:start + batch_size]
                    out = self.forward(xs[idx].to(self.device))
                    log_p = (out.clamp_min(PROBABILITY_FLOOR).log()
                             if self.output == "probabilities"
                             else torch.log_softmax(out, dim=1))
                    loss = torch.nn.functional.nll_loss(log_p, ys[idx].to(self.device))
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
        finally:
            self.model.eval()
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)

    def save(self, path: str) -> str:
        """Write the state dict (pruned neurons zeroed in the weights).

        A path ending in ``.safetensors`` gets a safetensors file (numbers only, safe to load
        anywhere); any other path a ``torch.save`` state dict. A Keras model is saved as Keras
        saves it (a ``.keras`` file, whatever the suffix asked for), so that it loads again as
        the model it is.
        """
        if self.keras is not None:
            if self.pruned_neurons():
                raise InputError("pruning hooks on a Keras model cannot be written into its "
                                 "weights; prune the model on the TensorFlow backend instead")
            keras_out = Path(path).with_suffix(".keras")
            keras_out.parent.mkdir(parents=True, exist_ok=True)
            self.model.save(str(keras_out))
            return str(keras_out)
        state = pruned_state_dict(self.model)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out))
        else:
            torch.save(state, out)
        return str(out)

    @contextmanager
    def trigger_session(self, x: np.ndarray, y: np.ndarray, config: ScanConfig
                        ) -> Iterator[TriggerSession]:
        """Open a stacked trigger search over ``x, y`` with the model frozen."""
        with self.frozen():
            yield TorchTriggerSession(self, x, y, config)


def scores_picker(out: Any) -> tuple[Callable[[Any], torch.Tensor], str]:
    """How to take the class scores from a model output that is not a tensor.

    A Hugging Face-style output object with a ``logits`` tensor gives its ``logits``, so does a
    dict with a ``"logits"`` key; a tuple or list gives its first element (a tensor).

    Returns:
        The function that takes the scores from such an output, and what it does in words.

    Raises:
        InputError: When the output holds no tensor of scores in one of those places.
    """
    if not isinstance(out, (tuple, list)) and isinstance(getattr(out, "logits", None),
                                                         torch.Tensor):
        return (lambda o: o.logits), "took .logits"
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return (lambda o: o["logits"]), "took ['logits']"
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return (lambda o: o[0]), f"took the first of {len(out)} outputs"
    what = type(out).__name__
    if isinstance(out, dict):
        what += f" with keys {sorted(map(str, out))[:8]}"
    raise InputError(f"the model returned a {what}: neuralcleanse needs a tensor of class "
                     "scores, or an output with a 'logits' tensor (attribute or key), or a "
                     "tuple whose first element is the scores; wrap the model so that it "
                     "returns the scores")
