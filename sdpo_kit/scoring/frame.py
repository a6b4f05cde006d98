"""Reference log-probs for preference pairs: TRL-exact numbers, computed fast (the scoring engine).

    python -c "import polars as pl; from sdpo_kit.data import load_pairs; from sdpo_kit.models import load_model; \
from sdpo_kit.scoring.frame import ScoreConfig, score_frame; m, tok = load_model('default'); \
print(score_frame(load_pairs('data/dpo_en_demo.json').pairs.head(2), m, tok, ScoreConfig(max_length=256))[0])"

Per pair we reproduce TRL 1.16's `DPOTrainer` reference pass (tokenisation, truncation, the sum
of completion-token log-probs: `sdpo_kit.scoring.tokens`) but run it differently (`sdpo_kit.scoring.logps`):
length-sorted batches padded on the right without a mask, a long prefix shared by chosen and rejected
computed once, and the LM head only where a completion token is scored. Every job scores through
here: `sdpo curate score` (`scoring/files.py`, shards and resume), the trainer's reference pass
(`scoring/cache.py`), `sdpo eval` and `sdpo data card --scored`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from sdpo_kit.errors import UsageError
from sdpo_kit.scoring.dpo import reward_margin
from sdpo_kit.scoring.tokens import Sequence, prompt_too_long, tokenize_pair, truncate


SCORED_COLUMNS = {
    "ref_chosen_logps": pl.Float64, "ref_rejected_logps": pl.Float64, "margin": pl.Float64,
    "ref_chosen_logps_mean": pl.Float64, "ref_rejected_logps_mean": pl.Float64, "margin_per_token": pl.Float64,
    "prompt_tokens": pl.Int64, "chosen_tokens": pl.Int64, "rejected_tokens": pl.Int64,
    "chosen_truncated": pl.Boolean, "rejected_truncated": pl.Boolean,
    "margin_shared": pl.Float64, "chosen_chars": pl.Int64, "rejected_chars": pl.Int64,
    "ref_chosen_logps_shared": pl.Float64, "ref_rejected_logps_shared": pl.Float64,
}


# Part of the provenance, hence of the pair cache key and the resume stamp: bump it whenever the
# scored columns change, so pairs cached before a column existed are never served as complete.
SCORED_LAYOUT = 4  # 3: `identical_truncated` and `too_long` rejects (such pairs were cached as scored before);
                  # 4: ref_{chosen,rejected}_logps_shared (TRL's ld_alpha)


POLICY_COLUMNS = {"policy_chosen_logps": pl.Float64, "policy_rejected_logps": pl.Float64,
                  "reward_margin": pl.Float64, "reward_correct": pl.Boolean}


DTYPES = ("float32", "bfloat16")
AUTOCASTS = ("bfloat16", "float16")  # torch.autocast dtypes: a trainer's --bf16 / --fp16 mixed precision
TRUNCATION_MODES = ("keep_start", "keep_end")
MAX_LENGTH_DEFAULT = 1024  # TRL 1.16's DPOConfig.max_length: the scorer and the trainer agree by default
# The library's batching; `sdpo curate score` batches 4096 (`ScoreFileConfig.cli_defaults`). Batching moves a
# summed log-prob by float noise only (4e-5 nats on 1 of 21 demo pairs, 512 vs 4096), but that noise reaches
# the trained weights: one value for both would change every run's numbers, so both stay as they were.
TOKEN_BUDGET_DEFAULT = 512


def check_settings(max_length: int | None = None, truncation_mode: str | None = None, dtype: str | None = None,
                   *, prefix: str = "--") -> int | None:
    """The one check of the scorer's settings (those given, not None); returns `max_length` with 0 -> None.

    One meaning everywhere: `max_length` 0 or None = no truncation, else >= 2 tokens (a prompt
    token and a completion token). A config whose own field is an optional override (eval's, the
    data card's: None = "not given") checks what it got here, at parse time. Every problem is one
    UsageError line naming the flag (`prefix` + field name).
    """
    if truncation_mode is not None and truncation_mode not in TRUNCATION_MODES:
        raise UsageError(f"{prefix}truncation_mode", f"must be keep_start or keep_end, got {truncation_mode!r}")
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"{prefix}dtype", f"must be one of {', '.join(DTYPES)} (the scorer's dtypes), got {dtype!r}")
    if max_length is None or max_length == 0:
        return None
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise UsageError(f"{prefix}max_length", "must be >= 2 tokens (a prompt token and a completion token), "
                         f"or 0 for no truncation; got {max_length!r}")
    return max_length


@dataclass
class ScoreConfig:
    """How pairs are tokenised and scored; the fields that change the numbers go into provenance.

    It owns max_length / truncation_mode / dtype: every job that scores builds one of these (train:
    `sdpo_kit.training.config.scorer_config`; eval: from run.json's settings) and hands it down.
    """

    max_length: int | None = field(default=MAX_LENGTH_DEFAULT, metadata={
        "help": "Max tokens of prompt+completion per sequence (TRL's `max_length`); 0 (or none) = no truncation."})
    truncation_mode: str = field(default="keep_start", metadata={
        "help": "TRL's `truncation_mode`: 'keep_start' cuts the end (pairs whose prompt alone fills max_length "
                "become `prompt_too_long` rejects), 'keep_end' cuts the beginning."})
    dtype: str = field(default="float32", metadata={
        "help": "Model dtype: 'float32' (TRL-exact) or 'bfloat16' (faster, moves sums by up to ~1.5 nats: "
                "for ordering only). The model passed in must already have this dtype."})
    autocast: str | None = field(default=None, metadata={
        "help": "Run the forward under torch.autocast in this dtype ('bfloat16' or 'float16') over float32 weights, "
                "as a trainer with --bf16/--fp16 runs its policy (`sdpo train` sets it from its precision, so each "
                "step's reference matches the policy's first forward); none = plain float32 arithmetic."})
    token_budget: int = field(default=TOKEN_BUDGET_DEFAULT, metadata={
        "help": "Sequences of similar length (within 1/32) are batched, right-padded, up to this many tokens "
                "per forward counting padding; a longer sequence runs alone."})
    beta: float = field(default=0.1, metadata={
        "help": "DPO beta scaling the implicit reward margin when a policy model is scored too."})
    share_prefix: int = field(default=256, metadata={
        "help": "When chosen and rejected share at least this many leading tokens (long dialogue prompts), "
                "compute them once and run each completion on the prefix's KV cache; 0 = never."})
    head_chunk: int = field(default=512, metadata={
        "help": "Positions projected through the LM head at once (bounds the chunk x vocab logits memory)."})

    def __post_init__(self):
        self.max_length = check_settings(max_length=self.max_length, truncation_mode=self.truncation_mode,
                                         dtype=self.dtype)
        if self.autocast in ("", "none"):  # the command line's spelling of "no autocast"
            self.autocast = None
        if self.autocast is not None and self.autocast not in AUTOCASTS:
            raise UsageError("--autocast", f"must be one of {', '.join(AUTOCASTS)} or none, got {self.autocast!r}")
        if self.autocast is not None and self.dtype != "float32":
            raise UsageError("--autocast", f"{self.autocast} runs over float32 weights (mixed precision), "
                             f"got --dtype {self.dtype}: pass one of the two")
        if self.share_prefix < 0:
            raise UsageError(f"share_prefix must be >= 0 (0 = never share), got {self.share_prefix}")
        if self.token_budget < 1 or self.head_chunk < 1:
            raise UsageError(f"token_budget and head_chunk must be >= 1, got {self.token_budget}, {self.head_chunk}")
        if self.beta <= 0:
            raise UsageError(f"beta must be > 0, got {self.beta}")

    def settings(self) -> dict:
        """The fields that change the numbers (the cache key and the provenance).

        `autocast` appears only when set, so float32 scores keep the keys (and caches) they always had."""
        out = {"max_length": self.max_length, "truncation_mode": self.truncation_mode, "dtype": self.dtype}
        # "widths": autocast scores run every sequence at its own width (`plan_options`); "attention": and
        # attention in float32 on CPU (`sdpo_kit.attention`). Older bf16 caches (padded batches, bf16
        # attention) no longer match.
        return out | ({"autocast": self.autocast, "widths": "own", "attention": "cpu-fp32"} if self.autocast else {})

    def plan_options(self) -> dict:
        """How `logps.plan` batches. Under autocast a sequence's bf16/fp16 numbers depend on the width
        it runs at and on the KV-cache path (on the default model a 72-token row padded to 128 moved by
        0.046 nats); the trainer runs every row at its own width (`training/padding.py`,
        `trim_forward(groups=None)`), so here too: no padding, no shared prefix."""
        if self.autocast:
            return {"share_min": None, "own_width": True}
        return {"share_min": self.share_prefix or None, "own_width": False}

    def precision(self, device_type: str):
        """The context every forward of this config runs in: `torch.autocast` or nothing."""
        import contextlib

        import torch

        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=getattr(torch, self.autocast))


def model_context(model) -> int | None:
    """The longest sequence the model's positions cover (config.max_position_embeddings), if it says."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def context_warning(model, config: ScoreConfig) -> str | None:
    """One line when `max_length` (or no truncation) lets sequences pass the model's context."""
    context = model_context(model)
    if context is None or (config.max_length is not None and config.max_length <= context):
        return None
    what = "--max_length 0 (no truncation)" if config.max_length is None else f"--max_length {config.max_length}"
    return (f"warning: {what} exceeds the model's context of {context:,} tokens (max_position_embeddings): pairs "
            f"longer than that become `too_long` rejects; pass --max_length {context} or less to truncate them instead")


def _pair_rows(pairs: pl.DataFrame, tokenizer, config: ScoreConfig, file: str, row_offset: int,
               context: int | None = None):
    """Per input row: the truncated (chosen, rejected) sequences plus token counts, or a `Reject`."""
    from sdpo_kit.data import Reject

    extra = [c for c in ("tools", "chat_template_kwargs") if c in pairs.columns]
    out = []
    for i, row in enumerate(pairs.select(["prompt", "chosen", "rejected", *extra]).iter_rows(named=True)):
        p, c, r = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"],
                                tools=row.get("tools"), chat_template_kwargs=row.get("chat_template_kwargs"))
        if prompt_too_long(p, config.max_length, config.truncation_mode):
            raw = {k: row[k] for k in ("prompt", "chosen", "rejected")}
            detail = (f"prompt has {len(p)} tokens >= max_length={config.max_length}: with keep_start no completion "
                      "token would remain (TRL drops such pairs silently)")
            out.append(Reject(file, row_offset + i + 1, "prompt_too_long", detail, raw))
            continue
        seqs = (truncate(p, c, config.max_length, config.truncation_mode),
                truncate(p, r, config.max_length, config.truncation_mode))
        raw = {k: row[k] for k in ("prompt", "chosen", "rejected")}
        longest = max(len(seqs[0].ids), len(seqs[1].ids))
        if context is not None and longest > context:  # past the positions it was trained on (or a 200k-token pass)
            detail = (f"{longest} tokens after truncation (max_length={config.max_length}) exceed the model's context "
                      f"of {context} tokens (max_position_embeddings): pass --max_length {context} or less")
            out.append(Reject(file, row_offset + i + 1, "too_long", detail, raw))
            continue
        if seqs[0].ids == seqs[1].ids:  # both answers cut to the same tokens: γ = 0, nothing to prefer
            detail = (f"chosen and rejected are the same {len(seqs[0].ids)} tokens after truncation to "
                      f"max_length={config.max_length} ({config.truncation_mode}; answers {len(c)} and {len(r)} "
                      "tokens): raise --max_length to keep the part where they differ")
            out.append(Reject(file, row_offset + i + 1, "identical_truncated", detail, raw))
            continue
        out.append((seqs, (len(p), len(c), len(r))))
    return out


def _check_dtype(model, config: ScoreConfig, role: str) -> None:
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    if dtype != config.dtype:
        raise ValueError(f"the {role} model is {dtype} but ScoreConfig.dtype={config.dtype!r}: load it with "
                         f"sdpo_kit.models.load_model(path, dtype={config.dtype!r})")


def _score_pairs(models: list, pairs: list[tuple[Sequence, Sequence]], config: ScoreConfig, progress):
    """(sums, counts) per model, each (2N,) with [chosen_0, rejected_0, chosen_1, ...], via `logps.plan`."""
    import torch
    from tqdm.auto import tqdm

    from sdpo_kit.scoring.logps import Scorer, plan

    items = plan(pairs, config.token_budget, **config.plan_options())
    # `progress` may be a caller's bar (the file scorer's, over all shards): update it, never close it.
    own = not hasattr(progress, "update")
    bar = tqdm(total=len(pairs), unit="pair", desc="scoring", disable=not progress, dynamic_ncols=True) if own else progress
    scorers = [Scorer(m, 2 * len(pairs), config.head_chunk) for m in models]
    halves = [0] * len(pairs)  # segments done per pair: the bar counts whole pairs
    with torch.inference_mode(), config.precision(scorers[0].device.type):
        for item in items:
            for scorer in scorers:
                scorer.run(item, pairs)
            for i in ([item[1]] * 2 if item[0] == "prefix" else [seg // 2 for seg, _ in item[1]]):
                halves[i] += 1
                bar.update(halves[i] == 2)
    if own:
        bar.close()
    return [s.sums for s in scorers], scorers[0].counts, shared_sums(scorers[0], len(pairs))


def shared_sums(scorer, n_pairs: int) -> tuple[list[float], list[float]]:
    """Per pair: the chosen and the rejected log-prob over the first k = min(n_w, n_l) scored tokens of
    each (0.0 when k = 0: TRL's `ld_alpha` shared part then holds no token)."""
    chosen, rejected = [], []
    for i in range(n_pairs):
        k = int(min(scorer.counts[2 * i], scorer.counts[2 * i + 1]))
        chosen.append(scorer.shared_sum(2 * i, k) or 0.0)
        rejected.append(scorer.shared_sum(2 * i + 1, k) or 0.0)
    return chosen, rejected


def shared_margins(scorer, n_pairs: int) -> list[float | None]:
    """Per pair: chosen minus rejected log-prob over the first min(n_w, n_l) scored tokens (None if k = 0)."""
    chosen, rejected = shared_sums(scorer, n_pairs)
    empty = [min(scorer.counts[2 * i], scorer.counts[2 * i + 1]) == 0 for i in range(n_pairs)]
    return [None if e else c - r for c, r, e in zip(chosen, rejected, empty)]


def ld_weighted(frame: pl.DataFrame, alpha: float | None) -> pl.DataFrame:
    """`ref_chosen_logps`/`ref_rejected_logps` as TRL 1.16 sums them under `ld_alpha` (LD-DPO; the
    `ld_alpha` branches of `DPOTrainer.compute_ref_log_probs` and `_compute_loss`): the first
    min(n_w, n_l) completion tokens of each answer count fully, the rest of the longer one times α.
    From the scorer's per-token prefix sums (`*_shared`); `alpha` None returns `frame` unchanged."""
    if alpha is None:
        return frame
    return frame.with_columns(
        (pl.col(f"{c}_shared") + alpha * (pl.col(c) - pl.col(f"{c}_shared"))).alias(c)
        for c in ("ref_chosen_logps", "ref_rejected_logps"))


def completion_chars(frame: pl.DataFrame, col: str) -> pl.Series:
    """Characters of a completion column: a string, or the contents of a list of messages."""
    if frame.schema[col] == pl.String:
        expr = pl.col(col).str.len_chars()
    else:
        expr = pl.col(col).list.eval(pl.element().struct.field("content").str.len_chars()).list.sum()
    return frame.select(expr.cast(pl.Int64))[col]


def score_frame(pairs: pl.DataFrame, model, tokenizer, config: ScoreConfig, *, policy=None, progress=True,
                file: str = "", row_offset: int = 0, accelerator=None):
    """Score canonical pairs with `model` (the reference) and optionally `policy`.

    Returns `(scored, rejects)`: the kept input rows, in input order, with the columns of
    `SCORED_COLUMNS` (+ `POLICY_COLUMNS`), and a `Reject(reason="prompt_too_long")` for each pair
    TRL would drop; `file`/`row_offset` locate those rejects (row = row_offset + 1-based index).
    With an `accelerate.Accelerator` of several processes, each scores a contiguous share of the
    rows and every process returns the whole, gathered result.
    """
    if accelerator is not None and accelerator.num_processes > 1:
        return _score_distributed(pairs, model, tokenizer, config, policy, progress, file, row_offset, accelerator)
    from sdpo_kit.data import Reject

    _check_dtype(model, config, "reference")
    if policy is not None:
        _check_dtype(policy, config, "policy")
    items = _pair_rows(pairs, tokenizer, config, file, row_offset, model_context(model))
    rejects = [it for it in items if isinstance(it, Reject)]
    keep = [i for i, it in enumerate(items) if not isinstance(it, Reject)]
    seqs = [items[i][0] for i in keep]
    models = [model] + ([policy] if policy is not None else [])
    sums, counts, shared = _score_pairs(models, seqs, config, progress)
    lengths = [items[i][1] for i in keep]
    return _assemble(pairs[keep], seqs, lengths, sums, counts, config.beta, shared), rejects


def _assemble(kept: pl.DataFrame, seqs, lengths, sums, counts, beta: float, shared) -> pl.DataFrame:
    chosen, rejected = sums[0][0::2].tolist(), sums[0][1::2].tolist()
    n_c, n_r = counts[0::2].tolist(), counts[1::2].tolist()
    mean_c = [s / n if n else None for s, n in zip(chosen, n_c)]
    mean_r = [s / n if n else None for s, n in zip(rejected, n_r)]
    cols = {
        "ref_chosen_logps": chosen, "ref_rejected_logps": rejected,
        "margin": [c - r for c, r in zip(chosen, rejected)],
        "ref_chosen_logps_mean": mean_c, "ref_rejected_logps_mean": mean_r,
        "margin_per_token": [None if c is None or r is None else c - r for c, r in zip(mean_c, mean_r)],
        "prompt_tokens": [p for p, _, _ in lengths], "chosen_tokens": [c for _, c, _ in lengths],
        "rejected_tokens": [r for _, _, r in lengths],
        "chosen_truncated": [c.truncated for c, _ in seqs],
        "rejected_truncated": [r.truncated for _, r in seqs],
        "margin_shared": [None if min(a, b) == 0 else c - r
                          for c, r, a, b in zip(shared[0], shared[1], n_c, n_r)],
        "chosen_chars": completion_chars(kept, "chosen").to_list(),
        "rejected_chars": completion_chars(kept, "rejected").to_list(),
        "ref_chosen_logps_shared": shared[0], "ref_rejected_logps_shared": shared[1],  # SCORED_COLUMNS' order
    }
    if len(sums) > 1:
        pc, pr = sums[1][0::2].tolist(), sums[1][1::2].tolist()
        reward = reward_margin(sums[1][0::2], sums[1][1::2], sums[0][0::2], sums[0][1::2], beta).tolist()
        cols |= {"policy_chosen_logps": pc, "policy_rejected_logps": pr, "reward_margin": reward,
                 "reward_correct": [r > 0 for r in reward]}
    schema = SCORED_COLUMNS | POLICY_COLUMNS
    new = pl.DataFrame({k: pl.Series(k, v, dtype=schema[k]) for k, v in cols.items()})
    return kept.drop([c for c in new.columns if c in kept.columns]).hstack(new)


def shard_bounds(n: int, index: int, count: int) -> tuple[int, int]:
    """Contiguous rows [start, stop) of process `index` among `count` (sizes differ by at most one)."""
    base, extra = divmod(n, count)
    start = index * base + min(index, extra)
    return start, start + base + (index < extra)


def _score_distributed(pairs, model, tokenizer, config, policy, progress, file, row_offset, accelerator):
    from accelerate.utils import gather_object

    start, stop = shard_bounds(pairs.height, accelerator.process_index, accelerator.num_processes)
    scored, rejects = score_frame(pairs[start:stop], model, tokenizer, config, policy=policy,
                                  progress=progress if accelerator.is_main_process else False, file=file,
                                  row_offset=row_offset + start)
    parts = gather_object([(scored, rejects)])  # in process order = row order
    return pl.concat([p[0] for p in parts], how="vertical_relaxed"), [r for p in parts for r in p[1]]


def provenance(model, tokenizer, config: ScoreConfig) -> dict[str, Any]:
    """What produced a scored file: weights fingerprint, chat template hash, settings, versions."""
    import torch
    import transformers
    import trl

    from sdpo_kit import __version__
    from sdpo_kit.models import model_fingerprint

    template = getattr(tokenizer, "chat_template", None) or ""
    template = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return {
        "model": str(getattr(model, "name_or_path", "") or model.config._name_or_path),
        "fingerprint": model_fingerprint(model),
        "chat_template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
        **config.settings(),
        "scored_layout": SCORED_LAYOUT,
        "versions": {"sdpo_kit": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "trl": trl.__version__},
    }


def score_sample(pairs: pl.DataFrame, model: str, config: ScoreConfig, sample: int | None = None,
                 seed: int = 0) -> tuple[pl.DataFrame, list, dict]:
    """`sdpo data card --scored`: (scored frame, rejects, provenance) of the pairs under `model`.

    With `sample` < pairs, a seeded random subset kept in input order, so the card is reproducible;
    the provenance records the model argument and how many of how many pairs were scored."""
    from sdpo_kit.models import load_model

    total = pairs.height
    if sample is not None and sample < total:
        pairs = pairs.with_row_index("__i").sample(sample, seed=seed).sort("__i").drop("__i")
    m, tok = load_model(model, config.dtype)
    scored, rejects = score_frame(pairs, m, tok, config)
    scorer = {**provenance(m, tok, config), "model_arg": str(model), "scored_pairs": pairs.height, "of_pairs": total,
              "sample_seed": seed if pairs.height < total else None}
    return scored, list(rejects), scorer
