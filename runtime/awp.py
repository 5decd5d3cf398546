"""Adversarial weight perturbation (AWP, Wu, Xia and Wang, NeurIPS 2020), for any objective.

Before an update, the weights move toward higher loss: a proxy copy of the model takes
``steps`` steps of SGD(lr) *ascending* the spec's own outer loss (so AT-AWP ascends the
cross-entropy on adversarial data, TRADES-AWP the TRADES loss, GAIR-AWP the weighted one); the
difference between proxy and model, layer by layer, is rescaled to ``||w_l||`` and the model's
weights move by ``gamma`` times that. The update's gradient is taken there, and the weights move
back afterwards (the official ``AdvWeightPerturb.calc_awp / perturb / restore``).

As the official code, only weight matrices and kernels are perturbed (parameters named
``*weight`` with more than one dimension): not biases or batch-norm parameters. With several
processes the proxy's gradients are averaged over them, so every process moves its weights alike.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

_EPS = 1e-20  # the official code's EPS in diff_in_weights


class WeightPerturbation:
    """The proxy and its optimiser for one model (the plain module, not a DDP wrapper)."""

    def __init__(self, model, *, gamma: float, lr: float, steps: int, accelerator=None):
        self.model = getattr(model, "module", model)  # DDP wraps the module it trains
        self.gamma, self.steps, self.accelerator = float(gamma), int(steps), accelerator
        self.proxy = copy.deepcopy(self.model)
        self.optimizer = torch.optim.SGD(self.proxy.parameters(), lr=lr)

    def perturb(self, loss, x, y, result, epoch, all_reduce=None) -> dict[str, torch.Tensor]:
        """Move the model's weights toward higher ``loss``; returns the move, for ``restore``."""
        self.proxy.load_state_dict(self.model.state_dict())
        self.proxy.train()
        fixed = dataclasses.replace(result, x_adv=result.x_adv.detach())  # the proxy moves weights, not inputs
        world = self.accelerator.num_processes if self.accelerator is not None else 1
        for _ in range(self.steps):
            value = -loss(self.proxy, x, y, fixed, epoch, all_reduce)
            self.optimizer.zero_grad(set_to_none=True)
            value.backward()
            if world > 1:  # the ascent direction of the global batch, the same in every process
                for p in self.proxy.parameters():
                    if p.grad is not None:
                        p.grad = self.accelerator.reduce(p.grad, reduction="sum") / world
            self.optimizer.step()
        moved = {}
        own, proxy = self.model.state_dict(), self.proxy.state_dict()
        for name, w in own.items():
            if w.dim() > 1 and "weight" in name:
                diff = proxy[name] - w
                moved[name] = w.norm() / (diff.norm() + _EPS) * diff
        self._add(moved, self.gamma)
        return moved

    def restore(self, moved: dict[str, torch.Tensor]) -> None:
        """Move the weights back by what ``perturb`` moved them."""
        self._add(moved, -self.gamma)

    def _add(self, moved: dict[str, torch.Tensor], coeff: float) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, diff in moved.items():
                params[name].add_(coeff * diff)  # as the official add_into_weights
