"""Per-example gradients two ways on the paper's MNIST MLP: torch.func (vmap of grad, the flat [n, P]
gradient) and hooks (layer inputs and output gradients from one batched backward pass, then
G_i = d_i a_i^T per layer). Medians over 5 repeats, one process.

    python benchmarks/per_example.py
"""

from __future__ import annotations

import torch
from common import median_seconds

import tdakit
from tdakit.grads import loss_grads
from tdakit.layers import gradient_factors
from tdakit.models import FlatModel


def main() -> None:
    setting = tdakit.preset("mnist")
    data = setting.data()
    model, task = FlatModel(setting.model(784)), setting.task
    theta = model.init(0)
    slots, _ = tdakit.layers.factored(model)
    for n in (128, 512):
        part = data.train.subset(slice(0, n))
        _, t_vmap = median_seconds(lambda part=part, n=n: loss_grads(model, task, theta, part, chunk=n), 5)

        def hooks(part=part):
            inputs, grads = gradient_factors(model, task, theta, part, "empirical", slots)
            return [torch.einsum("nto,nti->noi", d[0], a) for a, d in zip(inputs, grads, strict=True)]

        _, t_hooks = median_seconds(hooks, 5)
        print(f"{n} examples: vmap(grad) {t_vmap:.3f} s, hooks {t_hooks:.3f} s, ratio {t_vmap / t_hooks:.2f}")


if __name__ == "__main__":
    main()
