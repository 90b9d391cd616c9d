"""What to attribute: a training loss and a query measurement, kept apart.

A ``Task`` gives two per-example functions of the model outputs:

- ``loss(outputs [n, o], targets [n]) -> [n]``: what training minimises (averaged over a batch);
- ``measurement(outputs [n, o], targets [n]) -> [n]``: the query quantity f_q whose change we explain.

Scores are d measurement / d w_i (docs/conventions.md), in the measurement's units.
Subclass ``Task`` to attribute anything else that is a function of one example's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import InputError, SettingError


@dataclass(frozen=True)
class Task:
    """Base class: override ``loss`` and ``measurement`` (both per example)."""

    name: str = "task"

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger measurement means the model does better on the query (a margin) or worse
        (an error or a loss). Subset removal uses it to know which direction hurts."""
        return False

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def measurement(self, outputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def sample_targets(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Targets drawn from the model's own predictive distribution (the one whose negative log
        likelihood the loss is): what the true Fisher uses. outputs [n, o] -> targets [n]."""
        raise NotImplementedError(f"{type(self).__name__} cannot sample targets; use the empirical Fisher "
                                  "or the exact Gauss-Newton (fisher='empirical' or 'ggn')")

    def check_targets(self, outputs: Tensor, targets: Tensor, name: str = "targets") -> None:
        """Raise a clear error when targets [n] do not fit the outputs [n, o]."""
        if outputs.shape[0] != targets.shape[0]:
            raise InputError(f"{outputs.shape[0]} outputs but {targets.shape[0]} {name}")
        self.check_values(outputs.shape[-1], targets, name)

    def check_values(self, outputs_per_example: int, targets: Tensor, name: str = "targets") -> None:
        """Raise a clear error, naming ``name`` and the first bad row, unless every target [n] fits a model with
        ``outputs_per_example`` outputs. Entry points call it on the whole split, not a sample."""
        if targets.dim() != 1:
            raise InputError(f"{name} must have shape [n], got {tuple(targets.shape)}")
        if targets.is_floating_point() and not bool(torch.isfinite(targets).all()):
            raise InputError(f"{name} hold NaN or inf (first at row {_first(~torch.isfinite(targets))}); drop or "
                             "fix those rows")


@dataclass(frozen=True)
class Regression(Task):
    """Squared-error loss (g - y)^2; measurement: absolute error |g - y| (units of the target) or
    the squared error ("loss"). Outputs [n, 1], targets [n]."""

    name: str = "regression"
    measure: str = "abs_error"

    def __post_init__(self):
        if self.measure not in ("abs_error", "loss"):
            raise SettingError(f"unknown measurement {self.measure!r}; use 'abs_error' or 'loss'")

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return (outputs[..., 0] - targets) ** 2

    def measurement(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if self.measure == "loss":
            return self.loss(outputs, targets)
        return (outputs[..., 0] - targets).abs()

    def sample_targets(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(g - y)^2 is the negative log likelihood of y ~ Normal(g, 1/2), up to a constant."""
        noise = torch.randn(outputs.shape[0], generator=generator, dtype=outputs.dtype).to(outputs.device)
        return outputs[..., 0].detach() + 0.5 ** 0.5 * noise

    def check_values(self, outputs_per_example: int, targets: Tensor, name: str = "targets") -> None:
        super().check_values(outputs_per_example, targets, name)
        if outputs_per_example != 1:
            raise InputError(f"Regression expects one output per example, the model gives {outputs_per_example}; "
                             "end the model with a layer of width 1, or use Classification() for class labels")


@dataclass(frozen=True)
class Classification(Task):
    """Cross-entropy loss; measurement: correct-class margin logit_y - logsumexp(other logits)
    ("margin", in nats) or the cross-entropy ("loss"). Outputs [n, classes], integer targets [n]."""

    name: str = "classification"
    measure: str = "margin"

    def __post_init__(self):
        if self.measure not in ("margin", "loss"):
            raise SettingError(f"unknown measurement {self.measure!r}; use 'margin' or 'loss'")

    @property
    def higher_is_better(self) -> bool:
        return self.measure == "margin"

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return torch.logsumexp(outputs, -1) - _pick(outputs, targets)

    def measurement(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if self.measure == "loss":
            return self.loss(outputs, targets)
        correct = _pick(outputs, targets)
        others = outputs.masked_fill(_one_hot_like(outputs, targets), float("-inf"))
        return correct - torch.logsumexp(others, -1)

    def sample_targets(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A class drawn from softmax(outputs) for every example."""
        probs = torch.softmax(outputs.detach().double(), -1).cpu()
        return torch.multinomial(probs, 1, generator=generator)[:, 0].to(outputs.device)

    def check_values(self, outputs_per_example: int, targets: Tensor, name: str = "targets") -> None:
        super().check_values(outputs_per_example, targets, name)
        if targets.is_floating_point() and not bool((targets == targets.round()).all()):
            raise InputError(f"Classification needs integer class labels, but {name} hold real values such as "
                             f"{float(targets[targets != targets.round()][0]):.4g} (row "
                             f"{_first(targets != targets.round())}); for real-valued targets use Regression()")
        if outputs_per_example < 2:
            raise InputError(f"Classification needs one output per class (at least 2), the model gives "
                             f"{outputs_per_example}; for a single real-valued output use Regression()")
        outside = (targets < 0) | (targets >= outputs_per_example)
        if bool(outside.any()):
            row = _first(outside)
            raise InputError(f"{name} must be class labels in 0..{outputs_per_example - 1} (the model has "
                             f"{outputs_per_example} outputs), but row {row} is {targets[row].item():g}; give the "
                             "model one output per class, or map the labels to 0..K-1")


IGNORE = -100  # a language model's target that does not count (padding, a prompt), as in torch's cross-entropy


@dataclass(frozen=True)
class LanguageModeling(Task):
    """Next-token cross-entropy over one sequence. Outputs [n, L, V] (logits at each position), targets [n, L]
    (the next token's id, or ``IGNORE`` where a position does not count: padding, or the prompt before a chosen
    continuation). loss: the mean over the counted positions (nats per token; what training minimises).
    measurement "log_prob" (default): the sum over counted positions of log p(target | what precedes it), in
    nats, higher is better (the log-probability of the continuation); "loss": the loss itself."""

    name: str = "language_model"
    measure: str = "log_prob"

    def __post_init__(self):
        if self.measure not in ("log_prob", "loss"):
            raise SettingError(f"unknown measurement {self.measure!r}; use 'log_prob' or 'loss'")

    @property
    def higher_is_better(self) -> bool:
        return self.measure == "log_prob"

    def _counted_log_probs(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(log p(target) at each position, 0 where not counted [n, L]; counted [n, L] as 0/1)."""
        counted = (targets != IGNORE).to(outputs.dtype)
        picked = _pick(torch.log_softmax(outputs, -1), targets)  # an IGNORE target picks nothing: 0
        return picked * counted, counted

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        log_probs, counted = self._counted_log_probs(outputs, targets)
        return -log_probs.sum(-1) / counted.sum(-1).clamp(min=1.0)

    def measurement(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if self.measure == "loss":
            return self.loss(outputs, targets)
        return self._counted_log_probs(outputs, targets)[0].sum(-1)

    def sample_targets(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A token drawn from softmax(outputs) at every position: [n, L]."""
        probs = torch.softmax(outputs.detach().double(), -1).cpu()
        drawn = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
        return drawn.reshape(probs.shape[:-1]).to(outputs.device)

    def check_targets(self, outputs: Tensor, targets: Tensor, name: str = "targets") -> None:
        if outputs.dim() != 3 or tuple(targets.shape) != tuple(outputs.shape[:2]):
            raise InputError(f"LanguageModeling needs outputs [n, L, vocabulary] and {name} [n, L] (the next "
                             f"token at each position), got outputs {tuple(outputs.shape)} and {name} "
                             f"{tuple(targets.shape)}")
        self.check_values(outputs.shape[-1], targets, name)

    def check_values(self, outputs_per_example: int, targets: Tensor, name: str = "targets") -> None:
        if targets.dim() != 2 or targets.is_floating_point():
            raise InputError(f"{name} of a language model must be integer token ids [n, L], got "
                             f"{tuple(targets.shape)} {targets.dtype}")
        outside = ((targets < 0) | (targets >= outputs_per_example)) & (targets != IGNORE)
        if bool(outside.any()):
            row = _first(outside.any(-1))
            raise InputError(f"{name} must be token ids in 0..{outputs_per_example - 1} (the model's vocabulary) "
                             f"or {IGNORE} (not counted), but row {row} holds {targets[row][outside[row]][0].item()}")


def _first(mask: Tensor) -> int:
    """The index of the first True in a boolean [n]."""
    return int(mask.nonzero()[0, 0])


def _one_hot_like(outputs: Tensor, targets: Tensor) -> Tensor:
    # a comparison, not F.one_hot, so that it works under vmap
    return targets.long()[..., None] == torch.arange(outputs.shape[-1], device=outputs.device)


def _pick(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs * _one_hot_like(outputs, targets)).sum(-1)
