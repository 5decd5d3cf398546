"""The clauses of an objective and of the train block: their heads and parameters.

``HEADS[section][head]`` is the parameter table of ``section head(...)``, e.g.
``HEADS["attack"]["pgd"]["steps"]``. A setting is named by its parameter (``eps``, ``steps``,
``step_size``, ``tau``, ``lr``, ...): every number may refer to any other by that name
(``step_size = eps / 4``), see docs/language.md, "Numbers".
"""

from __future__ import annotations

from . import Param, fixed

OBJECTIVE_CLAUSES = ("threat", "attack", "form", "weight", "loss", "perturb")
GAIR_FUNCTIONS = ("tanh", "sigmoid", "discrete")
NORMALISE = ("mean", "sum", "none")

HEADS: dict[str, dict[str, dict[str, Param]]] = {
    "threat": {
        # inputs live in [0, 1]: an L-inf radius above 1 allows every image
        "linf": {"eps": Param("num", required=True, lo=0, hi=1, doc="radius of the L-inf ball")},
        "l2": {"eps": Param("num", required=True, lo=0, doc="radius of the L2 ball")},
    },
    "attack": {
        "pgd": {
            "steps": Param("int", required=True, lo=1, doc="K, the most steps a sample takes"),
            "step_size": Param("num", required=True, lo=0, doc="alpha, the size of one ascent step"),
            "init": Param("choice", default="uniform", choices=("none", "uniform", "normal")),
            "init_scale": fixed("num", default=0.001, lo=0, lo_strict=True, doc="std of the normal start"),
            "loss": Param("choice", default="ce", choices=("ce", "cw", "kl")),
            "noise": Param("num", default=0, lo=0, doc="std of Gaussian noise added to every step (FAT)"),
            "confidence": fixed("num", default=50, lo=0, doc="CW margin confidence"),
            "mode": Param("choice", default="eval", choices=("eval", "train"),
                          doc="model mode during the attack (train: batch-norm in training mode)"),
        },
    },
    "form": {
        "minmax": {},
        "minmin": {
            "tau": Param("int", default=0, lo=0, doc="extra steps after the stop rule first fires"),
            "rho": Param("num", default=0, lo=0, doc="margin the wrong class must win by"),
            "stop": Param("stop", doc="per-sample stop rule (default: misclassified by rho)"),
        },
        # Free AT (Shafahi et al. 2019): every minibatch is replayed m times; one backward gives the
        # model's gradient and the perturbation's ascent step; the perturbation persists across batches
        "free": {
            "replay": fixed("int", required=True, lo=1, hi=1000, doc="m: times each minibatch is replayed"),
        },
    },
    "weight": {
        "none": {},
        "gair": {
            "fn": Param("choice", default="tanh", choices=GAIR_FUNCTIONS),
            "lambda": Param("num", default=0, allow_inf=True, doc="GAIRAT's shift"),
            "from_epoch": fixed("int", default=0, lo=0, doc="burn-in: weights are 1 before this epoch"),
            "normalise": fixed("choice", default="mean", choices=NORMALISE),
        },
    },
}

# AWP (Wu et al. 2020): before each update the weights move toward higher loss, layer by layer by
# gamma * ||w_l||, found by `steps` ascent steps of SGD(lr) on a proxy copy; the update is taken there
HEADS["perturb"] = {
    "weights": {
        "gamma": fixed("num", required=True, lo=0, hi=1, doc="size of the perturbation relative to each layer's norm"),
        "steps": fixed("int", default=1, lo=1, hi=100, doc="ascent steps on the proxy"),
        "lr": fixed("num", default=0.01, lo=0, lo_strict=True, doc="the proxy's learning rate"),
        "from_epoch": fixed("int", default=0, lo=0, doc="warm-up: no perturbation before this epoch"),
    },
}

# the special where-bindings of a weight expression (`weight exp(-margin) where normalise = none`)
WEIGHT_SPECIAL = {k: HEADS["weight"]["gair"][k] for k in ("lambda", "from_epoch", "normalise")}

OPTIMIZERS: dict[str, dict[str, Param]] = {
    "sgd": {
        "lr": Param("num", required=True, lo=0, lo_strict=True),  # per step it may touch 0 (a warm-up)
        # momentum may follow the learning rate (CyclicLR's cycle_momentum: momentum = 0.9 - 0.5 * lr)
        "momentum": Param("num", default=0.9, lo=0, hi=1, hi_strict=True),
        "weight_decay": fixed("num", default=0, lo=0),
        "nesterov": fixed("bool", default=False),
    },
    "adam": {
        "lr": Param("num", required=True, lo=0, lo_strict=True),
        "weight_decay": fixed("num", default=0, lo=0),
    },
    "adamw": {
        "lr": Param("num", required=True, lo=0, lo_strict=True),
        "weight_decay": fixed("num", default=0.01, lo=0),
    },
}
# the settings that may change at every optimiser step (the rest follow the epoch at most)
PER_STEP = ("train.lr", "train.momentum")
# torch.optim class of each optimiser
OPTIMIZER_CLASSES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
# Accelerate's mixed_precision for each train precision
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
# a learning rate above this trains nothing useful with any of the optimisers above
LR_WARN = 10.0

# train-block settings that are plain values (data, model and optim are heads, checked apart)
TRAIN_VALUES: dict[str, Param] = {
    "epochs": fixed("int", required=True, lo=1),
    "batch": fixed("int", default=128, lo=1, hi=1_000_000),
    "seed": fixed("int", default=0, lo=0, hi=2**63 - 1),
    "precision": fixed("choice", default="fp32", choices=("fp32", "bf16", "fp16")),
    "val": fixed("num", default=0.02, lo=0, doc="validation split: a fraction below 1 or a number of samples"),
    "augment": fixed("bool", default=True),
    "sync_bn": fixed("bool", default=False),
    "channels_last": fixed("bool", default=False),
    "compile": fixed("bool", default=False),
}
# fast AT's early stop on catastrophic overfitting: PGD accuracy on the epoch's first training batch
GUARDS: dict[str, dict[str, Param]] = {
    "collapse": {
        "steps": fixed("int", default=5, lo=1, hi=1000, doc="PGD steps of the check"),
        "step_size": fixed("num", required=True, lo=0, lo_strict=True),
        "drop": fixed("num", default=0.2, lo=0, lo_strict=True, hi=1, doc="stop when accuracy falls by more"),
    },
}
TRAIN_CLAUSES = ("data", "model", "optim", "guard", *TRAIN_VALUES)
# what a train block must say, with an example each (for hints)
TRAIN_REQUIRED = {"data": "data digits", "model": "model small_cnn", "epochs": "epochs 10",
                  "optim": "optim sgd(lr = 0.1, momentum = 0.9)"}  # fmt: skip
