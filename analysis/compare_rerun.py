"""Does a from-scratch rerun of one arm and seed match the committed run? A markdown table, exit 1 if not.

    python analysis/compare_rerun.py analysis/results/factorial/runs/sdpo-random-fixed-seed0 \
        /tmp/rerun/runs/sdpo-random-fixed-seed0

Compares what the experiment committed (run.json, step_*/summary.json, eval/eval.json,
eval/generations.jsonl) with the rerun's files: per step the trained weights' fingerprint and the
first and last loss; per evaluated model the held-out accuracy and mean γ; the final model's reward
accuracy and margin against S; the answers file byte for byte. Numbers must agree to `--digits`
significant digits (default: all of them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for sdpo_kit


def load(run: Path) -> dict:
    """The compared values of one run folder, keyed by what they are."""
    from sdpo_kit.runs import read_step_summary  # today's keys, whatever version wrote the summary

    if not (run / "eval" / "eval.json").is_file():
        sys.exit(f"error: {run}: no eval/eval.json (not an evaluated run folder)")
    out = {}
    for step_dir in sorted(p.parent for p in run.glob("step_*/summary.json")):
        s = read_step_summary(step_dir)
        step = step_dir.name
        out.update({f"{step} fingerprint": s["model_fingerprint"], f"{step} loss first": s["loss_first"],
                    f"{step} sigmoid loss end": s.get("sigmoid_loss_end"),
                    f"{step} train_loss": s["train_loss"], f"{step} reference_exact": s["reference_exact"]})
    ev = json.loads((run / "eval" / "eval.json").read_text())
    for m in ev["models"]:
        out.update({f"{m['name']} accuracy": m["accuracy"], f"{m['name']} mean γ": m["mean_margin"]})
    for c in ev.get("comparisons", []):
        name = f"{c.get('policy', c.get('model', '?'))} vs {c.get('reference', 'S')}"
        out.update({f"{name} {k}": v for k, v in c.items() if isinstance(v, float)})
    gens = run / "eval" / "generations.jsonl"
    if gens.is_file():
        out["generations.jsonl sha256"] = hashlib.sha256(gens.read_bytes()).hexdigest()[:16]
    return out


def same(a, b, digits: int | None) -> bool:
    if isinstance(a, float) and isinstance(b, float) and digits is not None:
        return f"{a:.{digits}g}" == f"{b:.{digits}g}"
    return a == b


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("committed", type=Path)
    p.add_argument("rerun", type=Path)
    p.add_argument("--digits", type=int, default=None, help="significant digits compared (default: all)")
    a = p.parse_args(argv)
    old, new = load(a.committed), load(a.rerun)
    print(f"| value | committed ({a.committed}) | rerun ({a.rerun}) | |\n|---|---|---|---|")
    bad = 0
    for key in sorted(set(old) | set(new)):
        x, y = old.get(key, "missing"), new.get(key, "missing")
        ok = same(x, y, a.digits)
        bad += not ok
        print(f"| {key} | {x} | {y} | {'same' if ok else 'DIFFERS'} |")
    print(f"\n{'IDENTICAL' if not bad else f'{bad} value(s) differ'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
