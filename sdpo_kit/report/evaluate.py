"""`sdpo eval`: score S and every M_t of a run on held-out pairs and summarise them.

    sdpo eval --run runs/sdpo --data data/alpaca_eval_pairs.parquet --limit 64

For each model π (S = the run's base model, M_t = the model after step t) the curation scorer
gives γ_π = log π(y_w|x) − log π(y_l|x) on every held-out pair. From those numbers alone:

- preference accuracy of π = share of pairs with γ_π > 0, and mean γ_π (per source too);
- implicit reward margin of M_t against a reference R = β·(γ_{M_t} − γ_R), which equals the
  scorer's `--policy M_t --reference R` margin β·[(πP_w−πR_w)−(πP_l−πR_l)]; R = S and R = M_{t-1};
- mean γ of each step's reference (S, M1, ...): γ of M_{t-1} is the reference of step t.

Writes `RUN/eval/`: `models/NAME.parquet` + `.rejects.jsonl` (`sdpo curate score`'s output for
that model; reused when the model fingerprint, the held-out pairs and the scoring settings match,
and scored pairs are cached across runs by the scorer's fingerprint-keyed pair cache),
`scores.parquet` (one row per pair kept by every model: pair_id, source, the held-out data's
scalar columns, `gamma_NAME` per model, `reward_margin_P_vs_R` per comparison),
`rejects.jsonl` (held-out rows dropped, with reasons; a scorer reject once per model, tagged
"model") and `eval.json` (`data.rejected` counts each dropped held-out pair once).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from sdpo_kit.console import note
from sdpo_kit.errors import InputError, UsageError
from sdpo_kit.io import read_json, write_json, write_jsonl, write_parquet

MESSAGE_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class EvalConfig:
    """Score S and every M_t on held-out pairs: accuracy, mean γ, reward margins vs S and vs M_{t-1}."""

    run: str = field(metadata={"help": "Run directory written by `sdpo train` (holds run.json)."})
    data: str = field(metadata={"help": "Held-out preference pairs, any format the data layer reads."})
    models: str = field(default="all", metadata={
        "help": "`all` (S and every M_t), `last` (S, M_{T-1} and M_T) or a comma list such as `S,M2`."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N held-out pairs."})
    max_length: int | None = field(default=None, metadata={
        "help": "Scorer max_length in tokens (0 = no truncation); default: the run's (run.json settings)."})
    truncation_mode: str | None = field(default=None, metadata={
        "help": "keep_start | keep_end; default: the run's (run.json settings)."})
    dtype: str = field(default="float32", metadata={"help": "Dtype the models are loaded and scored in: float32 "
                                                             "(TRL-exact) or bfloat16."})
    out: str | None = field(default=None, metadata={"help": "Output folder; default RUN/eval."})
    generate: int = field(default=0, metadata={
        "help": "Behaviour: answer the first N distinct held-out prompts (seeded order) with S and each M_t; 0 = off."})
    max_new_tokens: int = field(default=64, metadata={"help": "--generate: answer length limit in tokens."})
    sample_seed: int | None = field(default=None, metadata={
        "help": "--generate: sample with this seed instead of greedy decoding."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace an --out holding another run's evaluation (this run's own is refreshed without it)."})

    def __post_init__(self):  # values only: the run and the data are read by `evaluate`
        from sdpo_kit.scoring.frame import check_settings

        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be >= 1, got {self.limit}.")
        check_settings(max_length=self.max_length, truncation_mode=self.truncation_mode, dtype=self.dtype)
        if self.generate < 0 or self.max_new_tokens < 1:
            raise UsageError(f"--generate must be >= 0 and --max_new_tokens >= 1, got {self.generate}, "
                             f"{self.max_new_tokens}.")
        self.out = self.out or str(Path(self.run) / "eval")

    def scorer(self, run: dict):
        """The `ScoreConfig` held-out pairs are scored with: the run's max_length and truncation_mode
        (`sdpo_kit.runs.run_scorer_settings`) unless given here, in `dtype`."""
        from sdpo_kit.runs import run_scorer_settings
        from sdpo_kit.scoring.frame import ScoreConfig

        given = {"max_length": self.max_length, "truncation_mode": self.truncation_mode}
        settings = run_scorer_settings(run, self.run) | {k: v for k, v in given.items() if v is not None}
        return ScoreConfig(**settings, dtype=self.dtype)


def run_models(run_dir: str | Path) -> tuple[list[dict], dict]:
    """[{name, step, path, fingerprint}] for S, M1, ..., M_T of a run directory, and run.json."""
    from sdpo_kit.runs import read_run

    run_dir = Path(run_dir)
    meta = read_run(run_dir)  # a damaged or empty run.json is a one-line InputError
    models = [{"name": "S", "step": 0, "path": meta["base_model"], "fingerprint": meta.get("base_fingerprint")}]
    for s in sorted(meta.get("steps", []), key=lambda s: s["step"]):
        path = run_dir / s["dir"] / "model"
        if s.get("status", "done") == "done" and (path / "config.json").is_file():
            models.append({"name": f"M{s['step']}", "step": s["step"], "path": str(path),
                           "fingerprint": s.get("model_fingerprint")})
    return models, meta


def broken_models(meta: dict, models: list[dict]) -> list[dict]:
    """[{name, step, reason}]: steps that diverged in training (run.json; never evaluated) and evaluated
    models with non-finite γ. eval.json "broken"; the report's verdict leaves such a run out, saying why."""
    out = [{"name": f"M{s['step']}", "step": s["step"],
            "reason": f"diverged in training ({(s.get('diverged') or {}).get('where', 'non-finite values')} was "
                      f"{(s.get('diverged') or {}).get('value', 'not finite')}); not evaluated"}
           for s in meta.get("steps", []) if s.get("status") == "diverged"]
    out += [{"name": m["name"], "step": m.get("step"), "reason": f"{m['non_finite']} of {m['pairs']} held-out γ "
             "are not finite (NaN or infinite log-probs)"} for m in models if m.get("broken")]
    return out


def select_models(models: list[dict], spec: str) -> list[dict]:
    """Apply `--models`: all | last | comma list of names (S, M1, ...); order stays S, M1, ..."""
    if spec == "all":
        return models
    names = {m["name"] for m in models}
    wanted = {"S", models[-1]["name"], models[max(len(models) - 2, 0)]["name"]} if spec == "last" else {
        n.strip() for n in spec.split(",") if n.strip()}
    unknown = sorted(wanted - names)
    if unknown:
        raise UsageError(f"--models {spec!r}: unknown model(s) {unknown}; this run has {[m['name'] for m in models]}.")
    return [m for m in models if m["name"] in wanted]


def _as_dict(reject) -> dict:
    """A reject (data layer: has .to_dict(); scorer: a dataclass or a dict) as a plain dict."""
    if hasattr(reject, "to_dict"):
        return reject.to_dict()
    return asdict(reject) if is_dataclass(reject) else dict(reject)


def data_key(pairs) -> str:
    """16 hex over the held-out pair ids in order: the cache key of the data."""
    return hashlib.sha256("\n".join(pairs["pair_id"].to_list()).encode()).hexdigest()[:16]


def score_model(model: dict, pairs, cfg: EvalConfig, scorer, out: Path) -> tuple[Any, list[dict]]:
    """The scorer's frame of one model on the held-out pairs and its rejects (dicts).

    Scores through `sdpo_kit.scoring.files.score_file`, so finished pairs land in the scorer's
    per-pair cache keyed by the weights' fingerprint: S, shared by every run of a comparison,
    costs one forward pass in all. A sidecar `NAME.json` ({fingerprint, key}) lets a rerun skip
    even loading the model when nothing changed. `scorer`: the `ScoreConfig` (`EvalConfig.scorer`).
    """
    import polars as pl

    from sdpo_kit.models import load_model, model_fingerprint
    from sdpo_kit.scoring.files import check_rejects

    path = out / "models" / f"{model['name']}.parquet"
    sidecar = path.with_suffix(".json")
    key = {"data": data_key(pairs), **scorer.settings()}
    if not model["fingerprint"]:  # run.json lacks it: hashing the weights is cheap next to scoring
        model["fingerprint"] = model_fingerprint(load_model(model["path"], dtype=scorer.dtype)[0])
    done = sidecar.is_file() and path.is_file() and read_json(sidecar) == {"fingerprint": model["fingerprint"], "key": key}
    if done:
        note("sdpo eval", f"{model['name']}: cached ({Path(cfg.out) / 'models' / path.name})")
    else:
        from sdpo_kit.models import verify_model
        from sdpo_kit.scoring.files import ScoreFileConfig, score_file

        verify_model(model)  # never score other weights than the run recorded
        note("sdpo eval", f"scoring {model['name']} ({model['path']}) on {pairs.height} pairs ...")
        score_file(ScoreFileConfig(cfg.data, str(path), model=model["path"], limit=cfg.limit, resume=False), scorer)
        write_json(sidecar, {"fingerprint": model["fingerprint"], "key": key})
    scored = pl.read_parquet(path)
    scored = scored.drop([c for c in MESSAGE_COLUMNS if c in scored.columns])
    rejects = check_rejects(path)  # the rejects written with this parquet, not an older run's
    lines = rejects.read_text(encoding="utf-8").splitlines() if rejects.is_file() else []
    return scored, [json.loads(ln) for ln in lines if ln]


def gamma_table(pairs, scored: dict[str, Any]):
    """One row per pair every model kept: pair_id, source, the data's scalar columns, gamma_NAME."""
    import polars as pl

    scalar = [c for c, t in pairs.schema.items() if c not in MESSAGE_COLUMNS and not isinstance(t, (pl.List, pl.Struct))]
    table = pairs.select(scalar)
    for name, df in scored.items():
        table = table.join(df.select("pair_id", pl.col("margin").alias(f"gamma_{name}")), on="pair_id", how="inner")
    return table


def _stats(x) -> dict[str, float]:
    """pairs, share > 0 and mean (`sdpo_kit.stats.margin_stats`), and the standard error of the mean of a float Series."""
    import polars as pl

    from sdpo_kit.stats import margin_stats

    s = x.to_frame("x").select(margin_stats("x")).row(0, named=True)
    n = s["pairs"]
    bad = int((~x.cast(pl.Float64).is_finite()).sum())  # a broken model's γ: never an accuracy to believe
    return {"pairs": n, "accuracy": float(s["reward_accuracy"]) if n else float("nan"),
            "mean_margin": float(s["mean_margin"]) if n else float("nan"),
            "sem": float(x.std() / n**0.5) if n > 1 else 0.0, **({"non_finite": bad, "broken": True} if bad else {})}


def reference_margins(names: list[str], models: list[dict], run: dict) -> list[dict]:
    """Step t's reference and its held-out mean γ, for the evaluated models that were one.

    Each step's reference is read from `run` (run.json) through `sdpo_kit.runs.step_references`:
    S, M_{t-1}, or a weight average that `sdpo eval` does not score (left out rather than named
    after a model). Under the stepwise schedule the last model is also shown as the reference
    step T+1 would have (the paper's Figure 2 has every model).
    """
    from sdpo_kit.runs import run_schedule, step_references

    gamma = {n: m["mean_margin"] for n, m in zip(names, models)}
    references = step_references(run)
    pairs = [(r["step"], r["model"]) for r in references]
    if run_schedule(run) == "stepwise" and references:
        pairs.append((references[-1]["step"] + 1, f"M{references[-1]['step']}"))
    return [{"step": t, "reference": r, "mean_margin": gamma[r]} for t, r in pairs if r in gamma]


def _grouped(table, column: str) -> dict[str, dict]:
    return {src: _stats(g[column]) for (src,), g in sorted(table.group_by("source"), key=lambda kv: str(kv[0][0]))}


def eval_results(table, names: list[str], beta: float, run: dict) -> dict[str, Any]:
    """Every number of eval.json from the gamma table (columns gamma_S, gamma_M1, ...).

    Adds reward_margin_P_vs_R = β·(γ_P − γ_R) columns to `table` for M_t vs S and vs M_{t-1}.
    `run` (run.json) names each step's reference for `reference_margins`.
    """
    import polars as pl

    from sdpo_kit.scoring.dpo import reward_margin_of_gammas

    models = [{"name": n, **_stats(table[f"gamma_{n}"]), "per_source": _grouped(table, f"gamma_{n}")} for n in names]
    comparisons = []
    for n in names[1:]:
        t = int(n[1:])
        # M1's previous model is S itself: one comparison, not two identical ones.
        for ref, against in [("S", "S")] + ([(f"M{t - 1}", "previous")] if t > 1 else []):
            if ref not in names:
                continue
            col = f"reward_margin_{n}_vs_{ref}"
            margin = reward_margin_of_gammas(pl.col(f"gamma_{n}"), pl.col(f"gamma_{ref}"), beta)
            table = table.with_columns(margin.alias(col))
            s = _stats(table[col])
            comparisons.append({"policy": n, "reference": ref, "against": against, "pairs": s["pairs"],
                                "reward_margin_mean": s["mean_margin"], "reward_accuracy": s["accuracy"],
                                "sem": s["sem"], "per_source": {
                                    k: {"pairs": v["pairs"], "reward_margin_mean": v["mean_margin"],
                                        "reward_accuracy": v["accuracy"]} for k, v in _grouped(table, col).items()}})
    refs = reference_margins(names, models, run)
    return {"models": models, "comparisons": comparisons, "reference_margins": refs, "table": table}


def _length(table, scored: dict, names: list[str]):
    """Issue 12: per-token γ and the length ratio in scores.parquet, eval.json "length" (sdpo_kit.length)."""
    from sdpo_kit.length import eval_length_columns, eval_length_summary

    table = eval_length_columns(table, scored)
    return table, eval_length_summary(table, names)


def training_pairs(run_dir: str | Path, meta: dict):
    """pair_id and prompt text of every pair the run trained on: the steps' reference.parquet
    (inside the run folder), else the partition files run.json names; None when neither is there."""
    import polars as pl

    from sdpo_kit.data import prompt_text

    run_dir, frames = Path(run_dir), []
    for s in meta.get("steps", []):
        files = [run_dir / s["dir"] / "reference.parquet"]
        if not files[0].is_file():
            named = s.get("partition") or []
            files = [Path(f) for f in ([named] if isinstance(named, str) else named)]
        for f in files:
            if f.is_file():
                frames.append(pl.read_parquet(f, columns=["pair_id", "prompt"]).select(
                    "pair_id", prompt_text().alias("prompt_text")))
    return pl.concat(frames).unique() if frames else None


def overlap_with_training(pairs, trained) -> dict[str, int]:
    """How many held-out pairs share a pair_id, a prompt, or either, with the training pairs."""
    from sdpo_kit.data import prompt_text

    held = pairs.select("pair_id", prompt_text().alias("prompt_text"))
    by_id = held["pair_id"].is_in(trained["pair_id"].implode())
    by_prompt = held["prompt_text"].is_in(trained["prompt_text"].unique().implode())
    return {"pairs": held.height, "pair_id": int(by_id.sum()), "prompt": int(by_prompt.sum()),
            "any": int((by_id | by_prompt).sum())}


def overlap_warning(counts: dict[str, int]) -> str | None:
    """The line `sdpo eval` prints (after its `[sdpo eval]` prefix) when held-out pairs were seen in training, else None."""
    if not counts["any"]:
        return None
    return (f"warning: {counts['any']} of {counts['pairs']} held-out pairs overlap the run's training "
            f"partitions ({counts['pair_id']} by pair_id, {counts['prompt']} by prompt): these are not held-out "
            "numbers; make held-out data with `sdpo data split`")


COMMAND = "sdpo eval"
SCORES_KEY = "sdpo_kit.eval"  # scores.parquet footer: the data key and model fingerprints eval.json also records


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Score the selected models on the held-out pairs; write RUN/eval/ and return eval.json's content.
    One writer (`folder_lock`); written whole, then swapped in (`atomic_dir`): a kill leaves the old or the new."""
    from sdpo_kit.io import atomic_dir, check_out_dir, folder_lock
    from sdpo_kit.owner import claim_folder
    from sdpo_kit.runs import eval_of_run, reuse_eval_cache

    models, meta = run_models(cfg.run)  # a missing or damaged run.json: one InputError line
    if not Path(cfg.data).exists():
        raise InputError(f"--data {cfg.data}", "no such file or folder")
    out = Path(cfg.out)
    check_out_dir(out)  # before any model is loaded or scored
    models = select_models(models, cfg.models)
    scorer = cfg.scorer(meta)
    with folder_lock(out, COMMAND):
        claim_folder(out, COMMAND, cfg.overwrite or eval_of_run(out, cfg.run), inputs=[cfg.data, cfg.run])
        with atomic_dir(out, overwrite=True) as tmp:
            reuse_eval_cache(out, tmp)
            return _evaluate(cfg, models, meta, scorer, tmp)


def _evaluate(cfg: EvalConfig, models: list[dict], meta: dict, scorer, out: Path) -> dict[str, Any]:
    from sdpo_kit.data import load_pairs
    from sdpo_kit.io import sha256_file
    from sdpo_kit.owner import write_owner

    loaded = load_pairs(cfg.data, limit=cfg.limit)
    pairs = loaded.pairs
    if pairs.height == 0:
        raise InputError(f"{cfg.data}: no valid pairs to evaluate on ({len(loaded.rejects)} rejected rows).")
    trained = training_pairs(cfg.run, meta)
    overlap = overlap_with_training(pairs, trained) if trained is not None else None
    if overlap and overlap_warning(overlap):
        note("sdpo eval", overlap_warning(overlap), err=True)
    rejects = [_as_dict(r) for r in loaded.rejects]
    seen = {(r["file"], r["row"]) for r in rejects}
    scored = {}
    for m in models:
        scored[m["name"]], model_rejects = score_model(m, pairs, cfg, scorer, out)
        rejects += [{"model": m["name"], **r} for r in model_rejects if (r.get("file"), r.get("row")) not in seen]
    names = [m["name"] for m in models]
    result = eval_results(gamma_table(pairs, scored), names, float(meta.get("beta", 0.1)), meta)
    table = result.pop("table")
    table, result["length"] = _length(table, scored, names)
    for m, stats in zip(models, result["models"]):
        stats.update(step=m["step"], path=str(m["path"]), fingerprint=m["fingerprint"],
                     scores=f"models/{m['name']}.parquet")
    result["broken"] = broken_models(meta, result["models"])
    result = {"run": str(cfg.run), "beta": float(meta.get("beta", 0.1)), "config": asdict(cfg) | scorer.settings(),
              "data": {"path": str(cfg.data), "pairs": table.height, "loaded": pairs.height,
                       "rejected": len(loaded.rejects) + pairs.height - table.height, "key": data_key(pairs),
                       "overlap_with_training": overlap}, **result}
    if cfg.generate:
        result["behaviour"] = _behaviour(models, pairs, cfg, out)
    claim = {"data_key": result["data"]["key"], "models": {m["name"]: m["fingerprint"] for m in models}}
    write_parquet(out / "scores.parquet", table, metadata={SCORES_KEY: json.dumps(claim, sort_keys=True)})
    write_jsonl(out / "rejects.jsonl", rejects)
    result["scores"] = {"file": "scores.parquet", "sha256": sha256_file(out / "scores.parquet"), **claim}
    write_owner(out, COMMAND, run=str(Path(cfg.run).resolve()))
    write_json(out / "eval.json", result)
    return result


def run(cfg: EvalConfig) -> dict[str, Any]:
    """`sdpo eval`: evaluate, then print one line per model, per comparison and per model's answers."""
    result = evaluate(cfg)  # bad input raises InputError/UsageError: the CLI boundary answers in one line
    print(f"held-out pairs: {result['data']['pairs']} (rejected {result['data']['rejected']})")
    for b in result["broken"]:
        print(f"  {b['name']:>4}: BROKEN: {b['reason']}")
    for m in result["models"]:
        print(f"  {m['name']:>4}: preference accuracy {m['accuracy']:.3f}  mean γ {m['mean_margin']:+.3f}")
    for c in result["comparisons"]:
        print(f"  {c['policy']:>4} vs {c['reference']:<4}: reward margin {c['reward_margin_mean']:+.4f}"
              f"  reward accuracy {c['reward_accuracy']:.3f}")
    for name, b in result.get("behaviour", {}).get("models", {}).items():
        kl = "" if b.get("kl_vs_S") is None else f"  KL vs S {b['kl_vs_S']:+.4f}/token"
        print(f"  {name:>4}: answers {b['mean_tokens']:.1f} tokens, cut {b['cut_share']:.2f}, "
              f"distinct-2 {b['distinct_2'] if b['distinct_2'] is None else round(b['distinct_2'], 3)}{kl}")
    print(f"wrote {cfg.out}/eval.json")
    return result


def _behaviour(models: list[dict], pairs, cfg: EvalConfig, out: Path) -> dict:
    """`--generate`: answers and behaviour measures of every evaluated model (sdpo_kit/report/behaviour.py)."""
    from sdpo_kit.report.behaviour import evaluate_behaviour

    if models[0]["name"] != "S":
        raise UsageError(f"--generate compares each model with S: include S in --models (got {cfg.models!r}).")
    return evaluate_behaviour(models, pairs, cfg.generate, cfg.max_new_tokens, cfg.sample_seed, out)
