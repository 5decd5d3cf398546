"""Per-epoch time of the compiled objectives against published-style implementations (issue #6, item 2).

    python benchmarks/published_style.py [--images 2048] [--repeats 3] [--workers 0] [--threads N] [--preact] [--smoke]

Same random CIFAR-shaped data (uint8 images, random labels), same initial weights, same model (the
published SmallCNN; with --preact also advc's preact_resnet18(width=16)), batch 128, SGD, one
epoch per measurement, the variants interleaved and the median of the repeats taken:

  compiled FAT / GAIRAT   advc.load(specs/...).train_step over advc's DeviceLoader on
                          device-resident float tensors, crop+flip drawn for the whole batch
                          (RandomCropFlip);
  published FAT           re-typed for timing after the official FAT code
                          (github.com/zjfheart/Friendly-Adversarial-Training, earlystop.py's
                          `earlystop` and the loop of FAT.py's `train`): a per-sample Python loop
                          deciding who stops, `loss.backward()` accumulating parameter gradients
                          during the attack, the extra clean forward `output_iter_clean_data`;
  published GAIRAT        after the official GAIRAT code (github.com/zjfheart/Geometry-aware-
                          Instance-reweighted-Adversarial-Training, attack_generator.py's `GA_PGD`,
                          GAIR.py's `GAIR` and GAIRAT.py's `train`): a per-sample loop for kappa,
                          parameter gradients during the attack, the tanh reweighting;
  both published ones read data as those repositories do: a torchvision-CIFAR-style Dataset of
  uint8 HWC arrays, `PIL.Image.fromarray` + transforms.RandomCrop(32, padding=4) +
  RandomHorizontalFlip + ToTensor per image, through a torch DataLoader (FAT.py/GAIRAT.py use
  num_workers=2; the default here is 0, see --workers).

FAT runs with tau = 0 (epoch 0 of the dynamic schedule), GAIRAT at epoch 60 so the weights are on.
The published-style code is written here for timing only; it keeps every sample with its own label
(the official code's label drift is a correctness bug, not a cost).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_floor import SmallCNN
from attack_floor import published_style as ga_pgd

ROOT = Path(__file__).resolve().parent.parent
TAU, GAIRAT_EPOCH = 0, 60


# ---------------------------------------------------------------------------------------------
# the published data pipeline


class CifarStyle(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's __getitem__: uint8 HWC array -> PIL image -> transform."""

    def __init__(self, data: np.ndarray, targets: list[int], transform):
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        from PIL import Image

        img, target = Image.fromarray(self.data[index]), self.targets[index]
        return self.transform(img), target


def published_loader(data, targets, batch, workers):
    from torchvision import transforms

    transform_train = transforms.Compose([  # FAT.py / GAIRAT.py
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
    ])
    return torch.utils.data.DataLoader(CifarStyle(data, targets, transform_train), batch_size=batch,
                                       shuffle=True, num_workers=workers)


# ---------------------------------------------------------------------------------------------
# the published attacks and training loops (re-typed for timing)


def earlystop(model, data, target, step_size, epsilon, perturb_steps, tau, omega):
    """earlystop.py's `earlystop` (uniform random init, CE loss), per-sample loop included."""
    model.eval()
    K = perturb_steps
    count = 0
    output_target, output_adv, output_natural = [], [], []
    control = torch.ones(len(target)) * tau
    iter_adv = data.detach() + torch.from_numpy(np.random.uniform(-epsilon, epsilon, data.shape)).float()
    iter_adv = torch.clamp(iter_adv, 0.0, 1.0)
    iter_clean_data = data.detach()
    iter_target = target.detach()
    output_iter_clean_data = model(data)  # noqa: F841  (computed, with a graph, and unused for CE)
    while K > 0:
        iter_adv.requires_grad_()
        output = model(iter_adv)
        pred = output.max(1, keepdim=True)[1]
        output_index, iter_index = [], []
        for idx in range(len(pred)):  # one host sync per sample on a GPU
            if pred[idx] != iter_target[idx]:
                if control[idx] == 0:
                    output_index.append(idx)
                else:
                    control[idx] -= 1
                    iter_index.append(idx)
            else:
                iter_index.append(idx)
        if len(output_index) != 0:
            if len(output_target) == 0:
                output_adv = iter_adv[output_index].reshape(-1, 3, 32, 32)
                output_natural = iter_clean_data[output_index].reshape(-1, 3, 32, 32)
                output_target = iter_target[output_index].reshape(-1)
            else:
                output_adv = torch.cat((output_adv, iter_adv[output_index].reshape(-1, 3, 32, 32)), dim=0)
                output_natural = torch.cat((output_natural, iter_clean_data[output_index].reshape(-1, 3, 32, 32)),
                                           dim=0)
                output_target = torch.cat((output_target, iter_target[output_index].reshape(-1)), dim=0)
        model.zero_grad()
        with torch.enable_grad():
            loss_adv = torch.nn.CrossEntropyLoss(reduction="mean")(output, iter_target)
        loss_adv.backward(retain_graph=True)  # parameter gradients too, never used
        grad = iter_adv.grad
        if len(iter_index) != 0:
            control = control[iter_index]
            iter_adv = iter_adv[iter_index]
            iter_clean_data = iter_clean_data[iter_index]
            iter_target = iter_target[iter_index]
            grad = grad[iter_index]
            eta = step_size * grad.sign()
            iter_adv = iter_adv.detach() + eta + omega * torch.randn(iter_adv.shape).detach()
            iter_adv = torch.min(torch.max(iter_adv, iter_clean_data - epsilon), iter_clean_data + epsilon)
            iter_adv = torch.clamp(iter_adv, 0, 1)
            count += len(iter_target)
        else:
            output_adv = output_adv.detach()
            return output_adv, output_target, output_natural, count
        K = K - 1
    if len(iter_target) != 0:
        output_target = torch.cat((output_target, iter_target.reshape(-1)), dim=0) if len(output_target) else iter_target
        output_adv = torch.cat((output_adv, iter_adv.reshape(-1, 3, 32, 32)), dim=0) if len(output_adv) else iter_adv
        output_natural = (torch.cat((output_natural, iter_clean_data.reshape(-1, 3, 32, 32)), dim=0)
                          if len(output_natural) else iter_clean_data)
    return output_adv.detach(), output_target, output_natural, count


def gair(num_steps, kappa, lam):
    """GAIR.py's `GAIR` with func = 'Tanh'."""
    reweight = ((lam + (int(num_steps / 2) - kappa) * 5 / (int(num_steps / 2))).tanh() + 1) / 2
    return reweight * len(reweight) / reweight.sum()


def published_fat_epoch(model, optimizer, loader, cfg):
    """FAT.py's `train`: earlystop, then one CE step on the returned (reordered) batch."""
    bp_count = 0
    for data, target in loader:
        output_adv, output_target, _, count = earlystop(model, data, target, cfg["alpha"], cfg["eps"], cfg["K"],
                                                        TAU, cfg["noise"])
        bp_count += count
        model.train()
        optimizer.zero_grad()
        output = model(output_adv)
        loss = torch.nn.CrossEntropyLoss(reduction="mean")(output, output_target)
        loss.backward()
        optimizer.step()
    return bp_count


def published_gairat_step(model, optimizer, data, target, cfg):
    """One step of GAIRAT.py's `train` after the burn-in: GA_PGD, then the kappa-reweighted CE
    step (kappa copied to the device first, `Kappa.cuda()` there; a no-op on the CPU)."""
    x_adv, kappa = ga_pgd(model, data, target, cfg["eps"], cfg["alpha"], cfg["K"])
    model.train()
    optimizer.zero_grad()
    logit = model(x_adv)
    kappa = kappa.to(logit.device)
    loss = torch.nn.CrossEntropyLoss(reduction="none")(logit, target)
    loss = loss.mul(gair(cfg["K"], kappa, -1.0)).mean()
    loss.backward()
    optimizer.step()
    return loss


def published_gairat_epoch(model, optimizer, loader, cfg):
    """GAIRAT.py's `train` after the burn-in, one `published_gairat_step` per batch."""
    for data, target in loader:
        published_gairat_step(model, optimizer, data, target, cfg)
    return None


def compiled_epoch(prog, epoch):
    def run(model, optimizer, loader, cfg):
        bps = 0
        for xb, yb in loader:
            result, _ = prog.train_step(model, optimizer, xb, yb, epoch)
            bps += int(result.steps.sum())
        return bps
    return run


# ---------------------------------------------------------------------------------------------


def make_model(name):
    if name == "SmallCNN":
        return SmallCNN()
    from advc.runtime.models import preact_resnet18

    return preact_resnet18(width=16)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the published pipeline")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--preact", action="store_true", help="also preact_resnet18(width=16)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark still runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.batch, args.repeats = 16, 8, 1

    import advc
    from advc.runtime.data import DeviceLoader, RandomCropFlip

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(args.images, 32, 32, 3), dtype=np.uint8)
    targets = [int(v) for v in rng.integers(0, 10, size=args.images)]
    x = torch.from_numpy(data).permute(0, 3, 1, 2).float().div(255).contiguous()
    y = torch.tensor(targets)

    fat = advc.load(ROOT / "specs" / "fat.adv", overrides={"form.tau": TAU})
    gairat = advc.load(ROOT / "specs" / "gairat.adv")
    m = fat.module
    cfg = {"K": m.STEPS, "eps": m.EPS, "alpha": m.STEP_SIZE, "noise": 0.001}

    def device_loader():
        return DeviceLoader(x, y, args.batch, shuffle=True, seed=0, augment=RandomCropFlip(4))

    variants = {
        "FAT compiled": (compiled_epoch(fat, 0), device_loader),
        "FAT published": (published_fat_epoch, lambda: published_loader(data, targets, args.batch, args.workers)),
        "GAIRAT compiled": (compiled_epoch(gairat, GAIRAT_EPOCH), device_loader),
        "GAIRAT published": (published_gairat_epoch,
                             lambda: published_loader(data, targets, args.batch, args.workers)),
    }
    models = ["SmallCNN"] + (["preact_resnet18(width=16)"] if args.preact else [])
    rows = []
    for model_name in models:
        torch.manual_seed(0)
        init = make_model(model_name)
        times = {name: [] for name in variants}
        bps = {}
        for _r in range(args.repeats):
            for name, (epoch_fn, loader_fn) in variants.items():
                model = copy.deepcopy(init)
                optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
                loader = loader_fn()
                start = time.perf_counter()
                bp = epoch_fn(model, optimizer, loader, cfg)
                times[name].append(time.perf_counter() - start)
                if bp is not None:
                    bps[name] = bp
        med = {name: statistics.median(t) for name, t in times.items()}
        rows.append((model_name, med, bps))

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; no GPU")
    print(f"{args.images} random 3x32x32 images, batch {args.batch}, K = {cfg['K']}, one epoch per measurement, "
          f"median of {args.repeats}, published DataLoader num_workers={args.workers}\n")
    print("| model | objective | compiled s/epoch | published s/epoch | published/compiled | BPs compiled / published |")
    print("|---|---|---|---|---|---|")
    for model_name, med, bps in rows:
        for obj in ["FAT", "GAIRAT"]:
            c, p = med[f"{obj} compiled"], med[f"{obj} published"]
            bp = (f"{bps.get(obj + ' compiled')} / {bps.get(obj + ' published')}" if obj == "FAT"
                  else f"{cfg['K'] * args.images} / {cfg['K'] * args.images}")
            print(f"| {model_name} | {obj} (tau = {TAU})" if obj == "FAT" else f"| {model_name} | {obj} (epoch {GAIRAT_EPOCH})",
                  end="")
            print(f" | {c:.2f} | {p:.2f} | {p / c:.2f} | {bp} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
