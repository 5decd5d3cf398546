"""Per-sample loss terms of the outer objectives (Madry, TRADES, MART).

Each returns one value per sample (shape ``(B,)``); the compiled objective combines them,
multiplies by the instance weights where the spec says so, and averages over the batch.
Where the published code differs from the paper, the code is followed and says so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE(f(x), y) per sample."""
    return F.cross_entropy(logits, y, reduction="none")


def kl_div(nat_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """KL(p(x) || p(x_adv)) summed over classes: TRADES' robust term (``KLDivLoss(sum) / B``).

    MART's code computes log(p_adv + 1e-12) instead of log_softmax; the difference is below
    float precision for any p_adv > 1e-6, so both use this one stable form.
    """
    return F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(nat_logits, dim=1), reduction="none").sum(dim=1)


def boosted_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MART's boosted CE: CE(f(x_adv), y) - log(1.0001 - p_{y'}(x_adv) + 1e-12).

    y' is the most probable wrong class (the published ``argsort(...)[:, -2:]`` trick);
    the constants 1.0001 and 1e-12 are the published code's.
    """
    probs = F.softmax(logits, dim=1)
    top2 = probs.topk(2, dim=1).indices
    wrong = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    p_wrong = probs.gather(1, wrong[:, None]).squeeze(1)
    return F.cross_entropy(logits, y, reduction="none") - torch.log(1.0001 - p_wrong + 1e-12)


def true_prob(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """p_y(x): the softmax probability of the true class."""
    return F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)


def max_wrong_prob(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} p_j(x): the probability of the most likely wrong class."""
    probs = F.softmax(logits, dim=1)
    return probs.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def probabilistic_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MAIL's probabilistic margin p_y(x) - max_{j != y} p_j(x): > 0 exactly when correct."""
    probs = F.softmax(logits, dim=1)
    true = probs.gather(1, y[:, None]).squeeze(1)
    return true - probs.scatter(1, y[:, None], float("-inf")).amax(dim=1)
