"""The seed talk's claims and the zoo, as experiments on the embedded digits (3 seeds each).

    python benchmarks/digits_experiments.py claims [--out runs/claims] [--jobs 2] [--seeds 0,1,2]
    python benchmarks/digits_experiments.py zoo    [--out runs/zoo]    [--jobs 2] [--seeds 0,1,2]
    python benchmarks/digits_experiments.py --smoke              # both suites, tiny, in a temporary folder

Both suites are plain advc commands, printed before they run: ``advc sweep`` over
benchmarks/digits/*.adv (rerunning finishes a partial sweep), then ``advc table --cost`` and
``advc plot``. The full table, the figures and the summary printed at the end land in the sweep
folder (table.md, figures/, summary.md).

claims -- Madry, FAT, GAIRAT and GAIR-FAT at threat.eps 0.1, 0.2, 0.3 (the evaluation follows the
training eps). Each claim of the talk (FAT ICML 2020, GAIRAT ICLR 2021; ../shared/seeds) is then
checked per eps and checkpoint against Madry's runs of the same eps: the mean difference, and
Welch's one-sided t-test over the seeds. "holds" means the means differ in the claimed direction
with p < 0.05; "same direction" means they do, but the seeds do not separate them; "no" means
they do not.

zoo -- every benchmarks/digits spec of the second wave (Free AT, fast AT, AWP, TRADES-AWP,
curriculum, Dynamic AT, MAIL) beside Madry, all at threat.eps 0.1: what each costs (backward
passes per sample, seconds) and buys (natural and PGD-20 accuracy, differences to Madry).
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "benchmarks" / "digits"
SPECS = {"claims": ("madry", "fat", "gairat", "gair_fat"),
         "zoo": ("madry", "free_at", "fast_at", "awp", "trades_awp", "curriculum", "dynamic_at", "mail")}
SMOKE_SPECS = {"claims": ("madry", "fat"), "zoo": ("madry", "fast_at")}
SMOKE_SEEDS = {"claims": "0,1", "zoo": "0"}  # the verdicts' t-test needs two seeds; the zoo table does not


@dataclass(frozen=True)
class Claim:
    """``spec`` is claimed to have a larger (``sign`` +1) or smaller (-1) ``column`` than Madry."""

    text: str
    spec: str
    column: str
    sign: int


CLAIMS = (
    Claim("FAT spends fewer backward passes than Madry", "fat", "BPs/sample", -1),
    Claim("FAT has higher natural accuracy than Madry", "fat", "Natural", +1),
    Claim("GAIRAT has higher PGD-20 accuracy than Madry", "gairat", "PGD-20", +1),
    Claim("GAIR-FAT has higher natural accuracy than Madry", "gair_fat", "Natural", +1),
    Claim("GAIR-FAT has higher PGD-20 accuracy than Madry", "gair_fat", "PGD-20", +1),
)


def advc(*args: str) -> str:
    """Run an advc command (printed first, as a reader would type it); its stdout."""
    print("$ advc " + " ".join(shlex.quote(a) for a in args), flush=True)
    done = subprocess.run([sys.executable, "-m", "advc", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    if done.returncode:
        sys.exit(f"advc {args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def welch_one_sided(a: list[float], b: list[float]) -> float:
    """p-value of "mean(a) > mean(b)" by Welch's t-test (nan with fewer than two seeds each)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return 0.0 if statistics.mean(a) > statistics.mean(b) else 1.0
    with warnings.catch_warnings():  # one side constant (Madry's 10 BPs): Welch's test is still defined
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)


def summary(by: dict, suite: str) -> str:
    """The table a page shows: claims -- Natural, PGD-20 and BPs per training eps; zoo -- what each
    objective buys and costs next to Madry's runs (same checkpoint)."""
    specs = list(dict.fromkeys(k[0] for k in by))
    eps_values = sorted({k[1] for k in by})
    checkpoints = list(dict.fromkeys(k[2] for k in by))
    rows = []
    if suite == "claims":
        header = ["Objective", "Checkpoint", *(f"{c} @ ε={e:g}" for e in eps_values
                                                for c in ("Natural", "PGD-20", "BPs/sample"))]
        for spec in SPECS["claims"]:
            for checkpoint in checkpoints:
                cells = [_ms(by[spec, e, checkpoint].values(c)) if (spec, e, checkpoint) in by else "-"
                         for e in eps_values for c in ("Natural", "PGD-20", "BPs/sample")]
                if spec in specs:
                    rows.append([spec, checkpoint, *cells])
        return markdown(header, rows)
    header = ["Objective", "Checkpoint", "Natural", "PGD-20", "Δ Natural", "Δ PGD-20", "BPs/sample", "train s",
              "time / Madry"]
    (eps,) = eps_values
    for spec in [s for s in SPECS["zoo"] if s in specs]:
        for checkpoint in checkpoints:
            g, base = by[spec, eps, checkpoint], by.get(("madry", eps, checkpoint))
            rows.append([spec, checkpoint, *(_ms(g.values(c)) for c in ("Natural", "PGD-20")),
                         _versus(g, base, "Natural", "{:+.2f}", float.__sub__),
                         _versus(g, base, "PGD-20", "{:+.2f}", float.__sub__),
                         *(_ms(g.values(c)) for c in ("BPs/sample", "train s")),
                         _versus(g, base, "train s", "{:.2f}", float.__truediv__)])
    return markdown(header, rows)


def _versus(group, base, column: str, fmt: str, op) -> str:
    """``op(mean of group, mean of base)`` for one column, formatted; "-" where either has none."""
    if base is None or not group.values(column) or not base.values(column):
        return "-"
    return fmt.format(op(float(statistics.mean(group.values(column))), float(statistics.mean(base.values(column)))))


def groups(sweep: Path) -> dict:
    """The sweep's experiments measured, as (spec, training eps, checkpoint) -> advc's group."""
    from advc.runtime.results import collect

    by = {}
    for g in collect([sweep], cost=True).groups:
        by[str(g.settings["objective"]).removesuffix("_digits"), g.settings["threat.eps"], g.checkpoint] = g
    return by


def verdicts(by: dict) -> list[list[str]]:
    """One row per claim, training eps and checkpoint: the talk's claim against these runs."""
    rows = []
    for claim in CLAIMS:
        for (spec, eps, checkpoint), group in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2])):
            base = by.get(("madry", eps, checkpoint))
            if spec != claim.spec or base is None:
                continue
            mine, theirs = group.values(claim.column), base.values(claim.column)
            if not mine or not theirs:
                continue
            diff = statistics.mean(mine) - statistics.mean(theirs)
            p = welch_one_sided(*((mine, theirs) if claim.sign > 0 else (theirs, mine)))
            same = diff * claim.sign > 0
            verdict = "holds" if same and p < 0.05 else "same direction" if same else "no"
            rows.append([claim.text, f"{eps:g}", checkpoint, _ms(mine), _ms(theirs), f"{diff:+.2f}",
                         "-" if math.isnan(p) else f"{p:.3f}", verdict])
    return rows


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", choices=("claims", "zoo", "both"), default="both")
    parser.add_argument("--out", type=Path, help="the sweep folder (default runs/digits-SUITE)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--eps", default="0.1,0.2,0.3", help="claims: the training eps values")
    parser.add_argument("--smoke", action="store_true",
                        help="1 epoch on a tenth of the digits, one eps, 40 test samples; claims 2 seeds, zoo 1")
    args = parser.parse_args(argv)
    suites = ("claims", "zoo") if args.suite == "both" else (args.suite,)
    if args.out is not None and len(suites) > 1:
        parser.error("--out names one sweep folder: name the suite too")
    with tempfile.TemporaryDirectory() as tmp:
        for suite in suites:
            out = args.out or (Path(tmp) / suite if args.smoke else ROOT / "runs" / f"digits-{suite}")
            run_suite(suite, out, args)
    return 0


def run_suite(suite: str, out: Path, args: argparse.Namespace) -> None:
    specs = (SMOKE_SPECS if args.smoke else SPECS)[suite]
    sweep = ["sweep", *(str(DIGITS / f"{s}.adv") for s in specs), "--out", str(out), "--jobs", str(args.jobs),
             "--seeds", SMOKE_SEEDS[suite] if args.smoke else args.seeds, "--quiet"]
    sweep += ["--grid", f"threat.eps={'0.1' if args.smoke else args.eps}"] if suite == "claims" else \
        ["--set", "threat.eps=0.1"]
    if args.smoke:
        sweep += ["--set", "train.epochs=1", "--set", "train.data=digits(test = 0.9)", "--eval-n", "40",
                  "--allow", "unreachable-schedule",
                  "--allow", "weights-never-start"]
    advc(*sweep)
    table = advc("table", str(out), "--cost", *(["--by", "threat.eps"] if suite == "claims" else []))
    (out / "table.md").write_text(table, encoding="utf-8")  # every setting that differs, for the record
    print(advc("plot", str(out), "--out", str(out / "figures")))
    by = groups(out)
    text = summary(by, suite)
    if suite == "claims":
        text += "\n" + markdown(["Claim", "ε", "Checkpoint", "Claimed", "Madry", "Diff.", "p (Welch)", "Verdict"],
                                verdicts(by))
    (out / "summary.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
