"""The file contract between the jobs: partition folders, run folders, and the footers they carry.

    python -c "from sdpo_kit.runs import read_run; print(read_run('demo_out/runs/sdpo')['steps'][0])"

`sdpo curate split` writes a partitions folder (`manifest.json` with each file's sha256,
`step_*.parquet`); `sdpo train` writes a run folder (`run.json`, `config.yaml`, `step_t/`);
`sdpo eval` writes `RUN/eval/` (eval.json naming its scores.parquet's sha256); `sdpo report`
reads them all and checks that they belong together (`check_eval_files`, `partitions_unchanged`).
Every reader goes through here, so a damaged or foreign folder is one line, the same line, in
every job. The layouts are in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdpo_kit.errors import InputError
from sdpo_kit.io import read_json, sha256_file, sha256_files

REFERENCE_KINDS = ("S", "M_{t-1}", "mix")  # what a step's reference is: the base model, the step's start, an average
SCORER_KEY = "sdpo_kit.scorer"  # parquet footer: how the scored columns were made (scoring/frame.py provenance)
REFERENCE_KEY = "sdpo_kit.reference"  # parquet footer of a step's reference scores
SPLIT_KEY = "sdpo_kit.split"  # parquet footer of every partition file: strategy, params, seed
STEP_KEY = "sdpo_kit.step"  # parquet footer of step_t.parquet: t


def partition_files(folder: str | Path) -> list[Path]:
    """step_1..step_T files in step order: from manifest.json when present, else step_*.parquet.

    Steps must be numbered 1..T without a gap: a missing step_2 is refused, never trained as
    "step 2" with step_3's pairs.
    """
    folder = Path(folder)
    if folder.is_file():
        raise InputError(f"--partitions {folder}", "is a file, not a folder: pass the folder written by "
                         "`sdpo curate split` (manifest.json, step_*.parquet)")
    if not folder.is_dir():
        raise InputError(f"--partitions {folder}", "folder does not exist (write it with `sdpo curate split`)")
    manifest = read_manifest(folder)
    if manifest is not None:
        steps = _manifest_steps(manifest, folder / "manifest.json")
        numbers, files = [s["step"] for s in steps], [folder / str(s["file"]) for s in steps]
    else:
        found = [(p, p.stem.split("_", 1)[1]) for p in folder.glob("step_*.parquet")]
        files = sorted((p for p, n in found if n.isdigit()), key=lambda p: int(p.stem.split("_")[1]))
        numbers = [int(p.stem.split("_")[1]) for p in files]
    if not files:
        raise InputError(f"--partitions {folder}", "no manifest.json and no step_*.parquet: not a folder written "
                         "by `sdpo curate split`")
    gaps = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
    if gaps or len(set(numbers)) != len(numbers):
        raise InputError(f"--partitions {folder}", f"steps {numbers} are not 1..T (missing step(s) {gaps}): "
                         "refusing to train a later partition as an earlier step")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"--partitions {folder}", f"manifest.json names missing file(s) {missing}")
    return files


def read_manifest(folder: str | Path) -> dict | None:
    """A partitions folder's manifest.json (the one reader of it); None when the folder has none, a
    one-line InputError when it is not a JSON object."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not a partitions manifest ({type(err).__name__}: {err})") from None
    if not isinstance(manifest, dict):
        raise InputError(path, f"not a partitions manifest (a JSON {type(manifest).__name__}, not an object)")
    return manifest


def _manifest_steps(manifest: dict, path: Path) -> list[dict]:
    """manifest.json's `steps` in step order, or a one-line InputError naming what is wrong."""
    try:
        steps = manifest["steps"]
        ok = isinstance(steps, list) and all(isinstance(s["step"], int) and s.get("file") for s in steps)
    except (KeyError, TypeError) as err:
        raise InputError(path, f"not a partitions manifest ({type(err).__name__}: {err})") from None
    if not ok or not steps:
        raise InputError(path, "not a partitions manifest: `steps` must list {step: int, file: name}")
    return sorted(steps, key=lambda s: s["step"])


def check_partitions(folder: str | Path, files: list[Path]) -> None:
    """Each partition file is the one manifest.json describes (its sha256, recorded by `sdpo curate
    split`; manifests from before the field are trusted): a file replaced or edited since is refused."""
    from sdpo_kit.io import sha256_file

    manifest = read_manifest(folder)
    if manifest is None:
        return
    for step, f in zip(_manifest_steps(manifest, Path(folder) / "manifest.json"), files):
        if step.get("sha256") and sha256_file(f) != step["sha256"]:
            raise InputError(f, f"is not the step {step['step']} file manifest.json describes (sha256 differs): it "
                             "changed after `sdpo curate split` wrote it; split again")


def partitions_digest(folder: str | Path, files: list[Path]) -> dict:
    """sha256 of manifest.json (null when absent) and over every partition file's bytes, in step order."""
    manifest = Path(folder) / "manifest.json"
    return {"manifest_sha256": sha256_file(manifest) if manifest.is_file() else None,
            "files_sha256": sha256_files(files)}


def read_run(run_dir: str | Path) -> dict:
    """run.json of a run directory, checked to be a run record (else a one-line InputError)."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise InputError(Path(run_dir), "no run.json: not a run directory written by `sdpo train`")
    try:
        run = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err}); the run record is damaged") from None
    missing = [k for k in ("base_model", "steps") if not isinstance(run, dict) or k not in run]
    if missing:
        raise InputError(path, f"not a run record: missing {', '.join(missing)} (written by `sdpo train`)")
    if not isinstance(run["base_model"], str) or not isinstance(run["steps"], list):
        raise InputError(path, "not a run record: `base_model` must be a path and `steps` a list")
    bad = [i for i, s in enumerate(run["steps"]) if not isinstance(s, dict) or not {"step", "dir"} <= set(s)
           or not isinstance(s["step"], int) or not isinstance(s["dir"], str)]
    if bad:
        raise InputError(path, f"not a run record: `steps` entries {bad} lack an integer step and a dir")
    return run


def read_step_summary(step_dir: str | Path) -> dict | None:
    """A step's summary.json (None when absent), in today's keys whatever version wrote it.

    `sigmoid_loss_end` (mean −log σ(m) over the partition after the step) was called `loss_end`
    by runs written before it was named honestly (with `end_over: "partition"`; the same number
    at label_smoothing 0). `loss_end` of a `last_logged_window` summary is TRL's logged loss and
    stays as it is.
    """
    path = Path(step_dir) / "summary.json"
    if not path.is_file():
        return None
    summary = read_json(path)
    if "sigmoid_loss_end" not in summary and summary.get("end_over") == "partition" and "loss_end" in summary:
        summary["sigmoid_loss_end"] = summary.pop("loss_end")
    return summary


def write_run(run_dir: str | Path, run: dict) -> None:
    """Write run.json (atomically): `sdpo train` records the run through here only."""
    from sdpo_kit.io import write_json

    write_json(Path(run_dir) / "run.json", run)


def schedule_record(mode: str, schedule: str, mix_alpha: float | None, beta: float) -> dict:
    """run.json's run-level record of how references were chosen: β, the effective schedule (null
    under --mode dpo, whose one step is against S) and the mix weight (mix only)."""
    return {"beta": beta, "reference_schedule": schedule if mode == "stepwise" else None, "ref_mix_alpha": mix_alpha}


def reference_record(t: int, kind: str, path: str | Path, fingerprint: str | None) -> dict:
    """Step t's reference as run.json records it (its step entry's "reference").

    {"kind": one of REFERENCE_KINDS, "model": the name `sdpo eval` gives that model (S, M1, ...;
    null for a weight average, which eval does not score), "path", "fingerprint"}.
    """
    if kind not in REFERENCE_KINDS:
        raise ValueError(f"reference kind {kind!r} is not one of {REFERENCE_KINDS}")
    model = "S" if kind == "S" or (kind == "M_{t-1}" and t == 1) else f"M{t - 1}" if kind == "M_{t-1}" else None
    return {"kind": kind, "model": model, "path": str(path), "fingerprint": fingerprint}


def run_schedule(run: dict) -> str:
    """The run's effective reference schedule: run.json's `reference_schedule`; `stepwise` for
    --mode dpo (one step against its start, S) and for runs from before the schedule flag."""
    return run.get("reference_schedule") or "stepwise"


def step_references(run: dict) -> list[dict]:
    """Every step's reference, [{"step", "kind", "model", "path", "fingerprint"}] in step order.

    From each step's "reference" record; a step without one (runs written before the record, or
    a step not trained yet) is derived here from the run's schedule, the one place that does so.
    """
    schedule, out = run_schedule(run), []
    for s in sorted(run["steps"], key=lambda s: s["step"]):
        t, rec = s["step"], s.get("reference")
        if not isinstance(rec, dict):
            kind = "S" if t == 1 or schedule == "fixed" else "mix" if schedule == "mix" else "M_{t-1}"
            path = s.get("reference_model") or (run.get("base_model") if kind == "S" else None)
            rec = reference_record(t, kind, path or "", s.get("reference_fingerprint"))
        out.append({"step": t, **rec})
    return out


def run_scorer_settings(run: dict, run_dir: str | Path) -> dict:
    """{"max_length", "truncation_mode"} the run trained (and scored its references) with.

    From run.json's `settings.trl` (every value, defaults included). Runs written before that
    record: the keys their config.yaml holds (it lists only values that differ from the defaults;
    a missing one was TRL's default, which the scorer's defaults equal).
    """
    trl = (run.get("settings") or {}).get("trl")
    if isinstance(trl, dict) and "max_length" in trl:
        return {k: trl[k] for k in ("max_length", "truncation_mode") if k in trl}
    from sdpo_kit.yaml_config import load_yaml_capped

    path = Path(run_dir) / "config.yaml"
    stored = (load_yaml_capped(path.read_text(encoding="utf-8"), path) or {}) if path.is_file() else {}
    return {k: stored[k] for k in ("max_length", "truncation_mode") if k in stored}


def partitions_unchanged(meta: dict, parts_dir: Path | None) -> bool:
    """Whether the partitions folder still holds what the run trained on (run.json `partitions_sha256`;
    runs from before the digest, and a folder that is gone, are not judged here)."""
    recorded = meta.get("partitions_sha256")
    if not recorded or parts_dir is None:
        return True
    try:
        return partitions_digest(parts_dir, partition_files(parts_dir)) == recorded
    except (InputError, OSError):
        return False


def check_eval_files(run_dir: str | Path, meta: dict, ev: dict, folder: str | Path) -> None:
    """eval.json covers the run's final model, and scores.parquet is the table written with it: else the
    verdict would compare an earlier model (eval ran before the last step, or with --models) or mix two evals."""
    from sdpo_kit.io import sha256_file

    folder = Path(folder)
    names = [m.get("name") for m in ev.get("models", [])]
    steps = [s["step"] for s in meta["steps"]]
    final = f"M{max(steps)}" if steps else "S"
    status = meta.get("status", "done")
    # A diverged run's eval lists its broken step (eval.json "broken"); the verdict leaves that run out.
    broken = status == "diverged" and bool(ev.get("broken"))
    if names and (names[-1] != final or status != "done") and not broken:
        why = f"the run is not finished (run.json status {status!r})" if status != "done" else (
            f"the run's final model is {final} (eval ran before the last step finished, or with --models)")
        raise InputError(folder / "eval.json", f"covers {', '.join(names)} but {why}: the verdict would compare "
                         f"{names[-1]}, not the final model; run `sdpo eval --run {run_dir}` once the run is done")
    claim, scores = ev.get("scores"), folder / "scores.parquet"
    if isinstance(claim, dict) and scores.is_file() and sha256_file(scores) != claim.get("sha256"):
        raise InputError(scores, "is not the table written with eval.json (sha256 differs): the two come from "
                         f"different evaluations; rerun `sdpo eval --run {run_dir}`")


def eval_of_run(out: str | Path, run: str | Path) -> bool:
    """Whether `out` holds this run's evaluation (refreshed without --overwrite): by its marker, else its place."""
    from sdpo_kit.owner import OWNER_FILE

    out = Path(out)
    marker = out / OWNER_FILE
    if marker.is_file():
        try:
            return read_json(marker).get("run") == str(Path(run).resolve())
        except (OSError, ValueError, AttributeError):
            return False
    return out.resolve() == (Path(run) / "eval").resolve()


def reuse_eval_cache(old: Path, new: Path) -> None:
    """Hard-link the earlier evaluation's per-model files (the cache) into the new folder: every writer
    replaces a file, never writes into one, so the old folder stays as it was until the swap."""
    import os
    import shutil

    for sub in ("models", "generations"):
        if not (old / sub).is_dir():
            continue
        for f in (old / sub).iterdir():
            if f.is_file() and not f.is_symlink() and not f.name.endswith(".lock"):
                (new / sub).mkdir(exist_ok=True)
                try:
                    os.link(f, new / sub / f.name)
                except OSError:  # a file system without hard links: copy
                    shutil.copy2(f, new / sub / f.name)
