"""Trained models out of run folders: ``advc.load_model`` and ``advc export --format robustbench``.

``load_model(RUN_DIR | CHECKPOINT)`` returns the plain ``nn.Module`` in eval mode, taking inputs
in [0, 1] (any normalisation is the model's first layer), with what is known about it in
``model.advc`` (spec, checkpoint, epoch, data set, threat model, ε). The model is rebuilt the way
``advc eval`` rebuilds it: from the run folder's recorded spec files through the checker, the
training identity checked against the checkpoint's, every tensor's name and shape checked.

``export_robustbench`` writes what a RobustBench submission asks for: the weights of the plain
module (``model.safetensors`` and ``state_dict.pt``), the model definition's name and constructor
arguments, the threat model and ε, and the clean and AutoAttack accuracies *as measured* on the
stated number of test points -- taken from the run folder's kept evaluations, never recomputed
or guessed (export refuses when no evaluation with both columns exists).
"""

from __future__ import annotations

import json
from pathlib import Path

from advc.errors import UserError


def load_model(target, *, spec=None, overrides=None, checkpoint: str = "best", trust_code: bool = False):
    """The trained model of a run folder (``checkpoint`` best or last) or of one checkpoint file
    (then ``spec`` says its model and data)."""
    from advc.compiler.identity import training_id
    from advc.runtime.checkpoint import load_checkpoint
    from advc.runtime.data import load_dataset
    from advc.runtime.eval_run import final_eps, resolve_target
    from advc.runtime.loop import load_model_state
    from advc.runtime.models import build_model

    chosen = resolve_target(Path(target), Path(spec) if spec else None, overrides, trust_code=trust_code)
    if chosen.run_dir is None:  # one checkpoint file: that one
        (path,) = chosen.checkpoints.values()
    elif checkpoint in chosen.checkpoints:
        path = chosen.checkpoints[checkpoint]
    else:
        raise UserError(f"the run folder has no {checkpoint} checkpoint", where=str(target),
                        hint=f"choose {' or '.join(chosen.checkpoints)}")
    program = chosen.program
    t = program.train
    state, _, extra = load_checkpoint(path)
    if extra.get("training_id") != training_id(program):
        raise UserError("the checkpoint was trained with other settings than the spec says", where=str(path),
                        hint="load it with the spec (and --set values) it was trained with")
    entry = _data_shape(t.data)
    if entry is None:  # an image folder: its shape is known only from its files
        args = dict(t.data_args)
        data = load_dataset(t.data, args.pop("root", None), False, **args)
        entry = (data.in_channels, data.num_classes, data.image_size[0])
    channels, classes, size = entry
    model = build_model(t.model, in_channels=channels, num_classes=classes, trust_code=trust_code,
                        **dict(t.model_args))
    load_model_state(model, state, path)
    model.eval()
    model.advc = {"spec": program.name, "checkpoint": str(path), "epoch": int(extra.get("epoch", -1)),
                  "data": t.data, "image_size": size, "channels": channels, "classes": classes,
                  "model": t.model, "model_args": dict(t.model_args), "threat": program.threat.norm,
                  "eps": final_eps(program), "inputs": "[0, 1]"}  # fmt: skip
    return model


def _data_shape(name: str):
    from advc.compiler.vocabulary.datasets import DATASETS

    d = DATASETS[name]
    return None if d.classes is None else (d.channels, d.classes, d.size)


def export_robustbench(run_dir, out, *, checkpoint: str = "best", trust_code: bool = False) -> list[Path]:
    """Write a RobustBench submission's files for one checkpoint of a run folder; returns them."""
    import torch
    from safetensors.torch import save_file

    from advc.runtime.checkpoint import checkpoint_digest
    from advc.runtime.results import load_evaluations

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError("-o must name a new or empty folder", where=str(out))
    model = load_model(run_dir, checkpoint=checkpoint, trust_code=trust_code)
    digest = checkpoint_digest(model.advc["checkpoint"])
    kept = [e for e in load_evaluations(run_dir)
            if e["weights_sha256"] == digest and "Natural" in e["results"] and "AA" in e["results"]]
    if not kept:
        raise UserError(f"no kept evaluation of the {checkpoint} checkpoint has both clean and AutoAttack accuracy",
                        where=str(run_dir / "evaluations"),
                        hint=f"measure them first: advc eval {run_dir} --attacks 'natural autoattack'")
    best = max(kept, key=lambda e: (e["n"], e["created"]))  # the most test points, then the newest
    meta = model.advc
    module = "advc.runtime.models" if ":" not in meta["model"] else meta["model"].partition(":")[0]
    card = {
        "model_name": f"advc_{meta['spec']}",
        "architecture": {"module": module, "callable": meta["model"].rpartition(":")[2],
                         "kwargs": {"in_channels": meta["channels"], "num_classes": meta["classes"], **meta["model_args"]}},
        "threat_model": {"linf": "Linf", "l2": "L2"}[meta["threat"]], "eps": meta["eps"], "inputs": "[0, 1], NCHW",
        "dataset": meta["data"], "clean_acc": best["results"]["Natural"], "autoattack_acc": best["results"]["AA"],
        "n_test_points": best["n"], "evaluation": {"attacks": best["attacks"], "created": best["created"],
                                                   "by": best["by"], "advc_version": best["advc_version"]},
        "checkpoint": {"file": Path(meta["checkpoint"]).name, "epoch": meta["epoch"], "sha256": digest},
        "training": {"spec": meta["spec"], "run_folder": str(run_dir)},
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    files = [out / "model.safetensors", out / "state_dict.pt", out / "model_card.json", out / "README.md"]
    save_file(state, str(files[0]))
    torch.save(state, files[1])  # tensors only: loads with torch.load(..., weights_only=True)
    files[2].write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    files[3].write_text(_readme(card), encoding="utf-8")
    return files


def _readme(card: dict) -> str:
    arch = card["architecture"]
    kwargs = ", ".join(f"{k}={v!r}" for k, v in arch["kwargs"].items())
    return (f"# {card['model_name']}\n\n"
            f"- threat model: {card['threat_model']}, eps = {card['eps']:.6g}, inputs in {card['inputs']}\n"
            f"- clean accuracy: {card['clean_acc']:.2f} %, AutoAttack accuracy: {card['autoattack_acc']:.2f} % "
            f"(measured on {card['n_test_points']} {card['dataset']} test points: `{card['evaluation']['attacks']}`)\n"
            f"- model: `from {arch['module']} import {arch['callable']}; model = {arch['callable']}({kwargs})`, "
            "then `model.load_state_dict(torch.load('state_dict.pt', weights_only=True))`\n")
