"""advc: a compiler and runner for adversarial-training objectives.

    import advc
    prog = advc.load("specs/fat.adv", overrides={"attack.steps": 10})
    res = prog.attack(model, x, y, epoch=0)      # res.x_adv, res.kappa, res.steps
    w = prog.weights(res, epoch=0)               # per-sample weights, mean 1
    loss = prog.loss(model, x, y, res, epoch=0)  # scalar
    model = advc.load_model("runs/quickstart")   # a trained model, eval mode, inputs in [0, 1]
"""

__version__ = "0.1.0"


def load(path, overrides=None):
    """Compile a spec and import the generated module (see ``advc.api``)."""
    from advc.api import load as _load

    return _load(path, overrides)


def load_model(target, *, spec=None, overrides=None, checkpoint: str = "best", trust_code: bool = False):
    """The trained ``nn.Module`` of a run folder or checkpoint: eval mode, inputs in [0, 1],
    metadata in ``model.advc`` (see ``advc.runtime.export``)."""
    from advc.runtime.export import load_model as _load_model

    return _load_model(target, spec=spec, overrides=overrides, checkpoint=checkpoint, trust_code=trust_code)


__all__ = ["__version__", "load", "load_model"]
