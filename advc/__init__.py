"""advc: a compiler and runner for adversarial-training objectives.

    import advc
    prog = advc.load("specs/fat.adv", overrides={"attack.steps": 10})
    res = prog.attack(model, x, y, epoch=0)      # res.x_adv, res.kappa, res.steps
    w = prog.weights(res, epoch=0)               # per-sample weights, mean 1
    loss = prog.loss(model, x, y, res, epoch=0)  # scalar
"""

__version__ = "0.1.0"


def load(path, overrides=None):
    """Compile a spec and import the generated module (see ``advc.api``)."""
    from advc.api import load as _load

    return _load(path, overrides)


__all__ = ["__version__", "load"]
