"""The PyTorch side of :class:`~neuralcleanse.backends.differentiable.DifferentiableClassifier`.

Adds losses, input gradients, raw layer outputs and optimiser steps to
:class:`~neuralcleanse.backends.torch.classifier.TorchClassifier`, for ``PyTorchNeuralCleanse``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from neuralcleanse.backends.differentiable import DifferentiableClassifier
from neuralcleanse.backends.torch.classifier import TorchClassifier
from neuralcleanse.core.errors import InputError, InputTypeError


class TorchDifferentiableClassifier(TorchClassifier, DifferentiableClassifier):
    """A :class:`TorchClassifier` with a loss and an optional optimiser for training.

    Args:
        model: The ``torch.nn.Module``.
        input_shape: Shape of one raw input.
        loss: A loss module or function ``loss(outputs, labels)`` taking integer labels (e.g.
            ``torch.nn.CrossEntropyLoss()``); ``None`` is the cross-entropy of the outputs
            (log of the probabilities, or log-softmax of logits). A module with a
            ``reduction`` attribute is switched to ``"none"`` while per-sample losses are
            needed.
        optimizer: The optimiser used by :meth:`train_batch` (over the model's parameters).
        **options: Any other :class:`TorchClassifier` option.
    """

    def __init__(self, model: torch.nn.Module, input_shape: tuple[int, ...], *,
                 loss: Any = None, optimizer: torch.optim.Optimizer | None = None,
                 **options: Any) -> None:
        super().__init__(model, input_shape, **options)
        if loss is not None and not callable(loss):
            raise InputTypeError(f"loss must be a callable loss(outputs, labels) (got {loss!r})")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise InputTypeError(f"optimizer must be a torch.optim.Optimizer (got "
                            f"{type(optimizer).__name__})")
        self.loss = loss
        self.optimizer = optimizer

    def copy(self) -> TorchDifferentiableClassifier:
        """An independent copy (without the optimiser, which is bound to the original)."""
        base = super().copy()
        twin = TorchDifferentiableClassifier(
            base.model, self.input_shape, loss=self.loss, output=self.output,
            channels_first=self.channels_first, clip_values=self.clip_values,
            preprocessing=self.preprocessing, device=self.device, nb_classes=self.nb_classes)
        return twin

    @contextmanager
    def mode(self, training: bool) -> Iterator[None]:
        """Layers in training or inference mode; every module's flag is restored on exit."""
        modes = [(m, m.training) for m in self.model.modules()]
        try:
            self.model.train(training)
            yield
        finally:
            for m, flag in modes:
                m.training = flag

    def _tensor(self, x: np.ndarray, grad: bool = False) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x, np.float32), device=self.device)
        return t.clone().requires_grad_(True) if grad else t

    def _per_sample_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss is None:
            log_p = (out.clamp_min(1e-12).log() if self.output == "probabilities"
                     else torch.log_softmax(out, dim=1))
            return -log_p.gather(1, y.view(-1, 1)).squeeze(1)
        reduction = getattr(self.loss, "reduction", None)
        if reduction is not None:
            self.loss.reduction = "none"
        try:
            values = self.loss(out, y)
        finally:
            if reduction is not None:
                self.loss.reduction = reduction
        if values.ndim == 0:
            raise InputError("the loss returned one value for the whole batch; give a loss "
                             "with a 'reduction' attribute (e.g. torch.nn.CrossEntropyLoss()) "
                             "so that per-sample losses can be computed")
        return values.reshape(len(out), -1).mean(dim=1)

    def outputs(self, x: np.ndarray, batch_size: int = 256, training: bool = False) -> np.ndarray:
        """Model outputs for raw inputs ``x`` (no gradients kept)."""
        outs = []
        with self.mode(training), torch.no_grad():
            for start in range(0, len(x), batch_size):
                outs.append(self.forward(self._tensor(x[start:start + batch_size]))
                            .float().cpu().numpy())
        if not outs:
            return np.zeros((0, self.nb_classes), dtype=np.float32)
        return np.concatenate(outs)

    def loss_values(self, x: np.ndarray, y: np.ndarray, training: bool = False) -> np.ndarray:
        """Loss of each sample."""
        outs = []
        with self.mode(training), torch.no_grad():
            for start in range(0, len(x), 256):
                out = self.forward(self._tensor(x[start:start + 256]))
                yb = torch.as_tensor(np.asarray(y[start:start + 256], np.int64),
                                     device=self.device)
                outs.append(self._per_sample_loss(out, yb).float().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros(0, np.float32)

    def loss_gradient(self, x: np.ndarray, y: np.ndarray, training: bool = False) -> np.ndarray:
        """Gradient of each sample's loss with respect to its raw input."""
        grads = []
        with self.mode(training):
            for start in range(0, len(x), 256):
                xb = self._tensor(x[start:start + 256], grad=True)
                yb = torch.as_tensor(np.asarray(y[start:start + 256], np.int64),
                                     device=self.device)
                loss = self._per_sample_loss(self.forward(xb), yb).sum()
                (grad,) = torch.autograd.grad(loss, xb)
                grads.append(grad.cpu().numpy())
        return np.concatenate(grads) if grads else np.zeros((0, *self.input_shape), np.float32)

    def class_gradient(self, x: np.ndarray, labels: np.ndarray | None,
                       training: bool = False) -> np.ndarray:
        """Gradients of the model outputs (all classes, or one class per sample)."""
        chunks = []
        with self.mode(training):
            for start in range(0, len(x), 256):
                xb = self._tensor(x[start:start + 256], grad=True)
                out = self.forward(xb)
                if labels is not None:
                    lb = torch.as_tensor(np.asarray(labels[start:start + 256], np.int64),
                                         device=self.device)
                    (grad,) = torch.autograd.grad(out.gather(1, lb.view(-1, 1)).sum(), xb)
                    chunks.append(grad.cpu().numpy()[:, None])
                    continue
                per_class = []
                for k in range(self.nb_classes):
                    (grad,) = torch.autograd.grad(out[:, k].sum(), xb,
                                                  retain_graph=k < self.nb_classes - 1)
                    per_class.append(grad.cpu().numpy())
                chunks.append(np.stack(per_class, axis=1))
        if not chunks:
            width = self.nb_classes if labels is None else 1
            return np.zeros((0, width, *self.input_shape), np.float32)
        return np.concatenate(chunks)

    def _capture(self, x: np.ndarray, layer: str | int, batch_size: int, training: bool,
                 keep_graph: bool) -> list[torch.Tensor]:
        name, side = self.resolve_layer(layer)
        module = dict(self.model.named_modules())[name]
        captured: list[torch.Tensor] = []

        def grab(value: Any) -> None:
            t = value[0] if isinstance(value, (tuple, list)) else value
            captured.append(t if keep_graph else t.detach().float().cpu())

        if side == "input":
            handle = module.register_forward_pre_hook(lambda _m, inp: grab(inp))
        else:
            handle = module.register_forward_hook(lambda _m, _i, out: grab(out))
        try:
            with self.mode(training), torch.set_grad_enabled(keep_graph):
                for start in range(0, len(x), batch_size):
                    self.forward(self._tensor(x[start:start + batch_size]))
        finally:
            handle.remove()
        return captured

    def layer_output(self, x: np.ndarray, layer: str | int, batch_size: int = 256,
                     training: bool = False) -> np.ndarray:
        """The full output of one leaf module for raw inputs ``x``."""
        captured = self._capture(x, layer, batch_size, training, keep_graph=False)
        return torch.cat(captured).numpy() if captured else np.zeros((0, 0), np.float32)

    def layer_output_framework(self, x: np.ndarray, layer: str | int) -> torch.Tensor:
        """The layer's output for ``x`` as a ``torch.Tensor`` still attached to the graph."""
        captured = self._capture(x, layer, max(len(x), 1), training=False, keep_graph=True)
        return torch.cat(captured) if captured else torch.zeros(0)

    def train_batch(self, x: np.ndarray, y: np.ndarray) -> float:
        """One step of the configured optimiser on the loss, in training mode."""
        if self.optimizer is None:
            raise InputError("training needs an optimizer: pass optimizer=torch.optim.X("
                             "model.parameters(), ...) to the estimator")
        with self.mode(True):
            out = self.forward(self._tensor(x))
            yb = torch.as_tensor(np.asarray(y, np.int64), device=self.device)
            loss = self._per_sample_loss(out, yb).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return float(loss.detach().cpu())

    def custom_loss_gradient(self, nn_function: Any, tensors: Any, input_values: Any,
                             name: str = "default") -> np.ndarray:
        """Gradient of ``nn_function(*inputs)`` (summed) with respect to its first input.

        ``nn_function`` is a callable on ``torch.Tensor`` inputs built from ``input_values``;
        ``tensors`` and ``name`` exist for signature compatibility with the Keras estimator.
        """
        if not callable(nn_function):
            raise InputTypeError("for PyTorch models nn_function must be a callable taking one "
                            "torch.Tensor per input value")
        values = input_values if isinstance(input_values, (list, tuple)) else [input_values]
        if not values:
            raise InputError("input_values must hold at least one array")
        feeds = [self._tensor(v, grad=i == 0) for i, v in enumerate(values)]
        result = nn_function(*feeds)
        if not isinstance(result, torch.Tensor) or not result.requires_grad:
            raise InputError("nn_function does not depend on its first input")
        (grad,) = torch.autograd.grad(result.float().sum(), feeds[0])
        return grad.cpu().numpy()
