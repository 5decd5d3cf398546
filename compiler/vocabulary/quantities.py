"""The words of weight, loss and stop expressions: functions, loss terms, per-sample quantities.

Three kinds of names may appear in those expressions:

* **functions** of numbers (``tanh``, ``exp``, ``min``, ...), on scalars and per-sample tensors;
* **loss terms** (loss expressions only): differentiable per-sample losses of the outer objective,
  computed from the logits of the update's forward pass (``ce(adv)``, ``kl(nat, adv)``, ...);
* **per-sample quantities**: detached values of each sample, computed only when a spec uses them.
  In a weight they are taken at the final adversarial point; in a stop rule at the current PGD
  iterate, before its step. Their formulas are in ``doc`` (and in docs/language.md).

Scalars visible everywhere: every numeric setting by its name (``eps``, ``steps``, ``lr``, ...),
``K`` (the attack's steps this epoch), ``epoch`` (from 0), ``progress`` (epoch / epochs).
"""

from __future__ import annotations

from dataclasses import dataclass

# name -> (min args, max args)
FUNCTIONS = {
    "tanh": (1, 1), "sigmoid": (1, 1), "exp": (1, 1), "log": (1, 1), "sqrt": (1, 1),
    "abs": (1, 1), "floor": (1, 1), "min": (2, 2), "max": (2, 2), "clamp": (3, 3),
}  # fmt: skip


@dataclass(frozen=True)
class Term:
    """A differentiable per-sample loss term: its argument forms and the generated call."""

    forms: dict[tuple[str, ...], str]  # argument tuple -> Python expression of the generated loss
    doc: str


TERMS: dict[str, Term] = {
    "ce": Term({("adv",): "cross_entropy(logits_adv, y)",
                ("nat",): "cross_entropy(logits_nat, y)"}, "cross-entropy CE(f(x), y)"),
    "bce": Term({("adv",): "boosted_ce(logits_adv, y)"},
                "MART's boosted CE: CE(f(x'), y) - log(1.0001 - max_{j≠y} p_j(x') + 1e-12)"),
    "kl": Term({("nat", "adv"): "kl_div(logits_nat, logits_adv)"},
               "KL(p(x) || p(x')) summed over classes (TRADES)"),
    "prob": Term({("adv",): "true_prob(logits_adv, y)",
                  ("nat",): "true_prob(logits_nat, y)"}, "p_y, the true class's probability"),
    "max_wrong_prob": Term({("adv",): "max_wrong_prob(logits_adv, y)",
                            ("nat",): "max_wrong_prob(logits_nat, y)"},
                           "max_{j≠y} p_j, the most probable wrong class's probability"),
}  # fmt: skip


@dataclass(frozen=True)
class Quantity:
    """A detached per-sample quantity (weights and stop rules)."""

    args: tuple[tuple[str, ...], ...]  # allowed argument tuples; () for a bare name
    needs: str  # what computing it takes: logits | logits_nat | grad | count
    doc: str


QUANTITIES: dict[str, Quantity] = {
    "kappa": Quantity(((),), "count", "GAIRAT's geometry value: checks before a step at which the sample "
                                      "was still classified correctly (0 <= kappa <= K)"),
    "steps": Quantity(((),), "count", "PGD steps the sample took (its backward passes)"),
    "margin": Quantity(((),), "logits", "max_{j≠y} z_j(x') - z_y(x'), logits z; > 0 exactly when misclassified"),
    "loss": Quantity(((),), "logits", "CE(f(x'), y)"),
    "prob": Quantity((("adv",), ("nat",)), "logits", "p_y(x') (adv) or p_y(x) (nat)"),
    "max_wrong_prob": Quantity((("adv",), ("nat",)), "logits", "max_{j≠y} p_j(x') (adv) or of x (nat)"),
    "pm": Quantity(((),), "logits", "probabilistic margin (MAIL): p_y(x') - max_{j≠y} p_j(x')"),
    "grad_norm": Quantity((("1",), ("2",), ("inf",)), "grad",
                          "||g||_p of g = the gradient of the attack loss with respect to the input at x'"),
    "fosc": Quantity(((),), "grad", "first-order stationarity (Dynamic AT): eps * ||g||_1 - <x' - x, g> "
                                    "(L-inf; eps * ||g||_2 - <x' - x, g> for L2), >= 0 in the ball "
                                    "(rounding below 0 is clamped)"),
}  # fmt: skip

# scalars every expression may read besides settings and bindings
SCALARS = {"K": "the attack's steps this epoch", "epoch": "the epoch, from 0",
           "progress": "epoch / epochs: 0 at the first epoch"}  # fmt: skip
