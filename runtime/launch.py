"""Starting several training processes through Accelerate's own launcher.

``advc run --gpus N`` (or ``--cpu-procs N``) runs the generated training program it wrote into
the run folder under ``accelerate launch`` (``python -m accelerate.commands.launch --multi_gpu
--num_processes N runs/x/objective.py --out runs/x ...``), which starts N processes with
torchrun's machinery and the environment Accelerate expects; inside, each process builds
``Accelerator()`` and trains -- exactly what ``accelerate launch runs/x/objective.py`` does by hand. On the CPU
(``--cpu-procs``) the processes talk over gloo: ``ACCELERATE_USE_CPU`` makes every
``Accelerator`` a CPU one, and Accelerate picks gloo for CPU process groups.

Multi-node runs use Accelerate's flags directly, e.g.
``accelerate launch --num_machines 2 --machine_rank 0 --main_process_ip HOST -m advc run spec.adv``:
``advc run`` notices it already runs under a launcher (:func:`launched`) and just trains.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence

from advc.errors import UserError

__all__ = ["gpu_count", "launch", "launched", "require_gpus"]


def launched() -> bool:
    """True inside a process started by ``accelerate launch`` / torchrun."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def gpu_count() -> int:
    """GPUs visible to this process, counted without initialising CUDA (forks stay safe)."""
    import torch

    if not torch.cuda.is_available():
        return 0
    return torch.cuda.device_count()


def require_gpus(n: int) -> None:
    have = gpu_count()
    if n > have:
        raise UserError(
            f"--gpus {n} asks for {n} GPUs but this machine has {have}",
            where="--gpus",
            hint=f"use --gpus {have}"
            if have > 1
            else "run without --gpus, or use --cpu-procs N for CPU processes",
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    script: os.PathLike | str, script_args: Sequence[str], num_processes: int, *, cpu: bool,
    mixed_precision: str = "no",
) -> int:
    """Run ``python script <script_args>`` in ``num_processes`` processes via ``accelerate launch``.

    Returns the launcher's exit status. Output of the processes streams through; when a run
    fails with advc's own one-line ``error:`` (printed by the main process), the launcher's
    ``ChildFailedError`` report that follows it is dropped, so a user error stays one line.
    """
    if num_processes < 2:
        raise ValueError("launch() is for two or more processes")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu",  # torchrun-style launcher; with ACCELERATE_USE_CPU it starts CPU processes
        "--num_processes", str(num_processes),
        "--num_machines", "1",
        "--main_process_port", str(_free_port()),
        "--mixed_precision", mixed_precision,
        "--dynamo_backend", "no",
        str(script), *script_args,
    ]  # fmt: skip
    env = dict(os.environ)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stderr is not None
    said_error, held = False, []  # from the first traceback on, hold lines until we know
    for line in proc.stderr:
        if held or line.startswith("Traceback (most recent call last)"):
            held.append(line)
            continue
        said_error = said_error or line.startswith("error:")
        sys.stderr.write(line)
    code = proc.wait()
    report = "".join(held)
    if not (code and said_error and "ChildFailedError" in report):
        sys.stderr.write(report)  # a real crash: show everything
    sys.stderr.flush()
    return code
