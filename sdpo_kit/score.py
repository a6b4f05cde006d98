"""Reference log-probs for preference pairs: TRL-exact numbers, computed fast.

    sdpo curate score ../shared/data/dpo_en_demo.json --model default --limit 32 --out /tmp/scored.parquet

    from sdpo_kit.score import ScoreConfig, score_frame
    scored, rejects = score_frame(pairs, model, tokenizer, ScoreConfig(max_length=1024))

Per pair we reproduce TRL 1.16's `DPOTrainer` reference pass (tokenisation, truncation, the sum
of completion-token log-probs) but run it differently: pairs are sorted by length and grouped
under a token budget (little padding); chosen and rejected share one row, their common prefix
(the prompt and often the answer's opening) computed once with a block attention mask; and the
LM head projects only the positions whose next token is a scored completion token. The file
layer (shards, cache, resume, accelerate) is in `sdpo_kit.score_file`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from sdpo_kit.tokenize import Sequence, common_prefix_length, prompt_too_long, tokenize_pair, truncate

SCORED_COLUMNS = {
    "ref_chosen_logps": pl.Float64, "ref_rejected_logps": pl.Float64, "margin": pl.Float64,
    "ref_chosen_logps_mean": pl.Float64, "ref_rejected_logps_mean": pl.Float64, "margin_per_token": pl.Float64,
    "prompt_tokens": pl.Int64, "chosen_tokens": pl.Int64, "rejected_tokens": pl.Int64,
    "chosen_truncated": pl.Boolean, "rejected_truncated": pl.Boolean,
}
POLICY_COLUMNS = {"policy_chosen_logps": pl.Float64, "policy_rejected_logps": pl.Float64,
                  "reward_margin": pl.Float64, "reward_correct": pl.Boolean}
DTYPES = ("float32", "bfloat16")


@dataclass
class ScoreConfig:
    """How pairs are tokenised and scored; the fields that change the numbers go into provenance."""

    max_length: int | None = field(default=1024, metadata={
        "help": "Max tokens of prompt+completion per sequence (TRL's `max_length`); None = no truncation."})
    truncation_mode: str = field(default="keep_start", metadata={
        "help": "TRL's `truncation_mode`: 'keep_start' cuts the end (pairs whose prompt alone fills max_length "
                "become `prompt_too_long` rejects), 'keep_end' cuts the beginning."})
    dtype: str = field(default="float32", metadata={
        "help": "Model dtype: 'float32' (TRL-exact) or 'bfloat16' (faster, moves sums by up to ~1.5 nats: "
                "for ordering only). The model passed in must already have this dtype."})
    token_budget: int = field(default=4096, metadata={
        "help": "Tokens (rows x padded length) per forward call; larger = bigger matmuls and more memory."})
    beta: float = field(default=0.1, metadata={
        "help": "DPO beta scaling the implicit reward margin when a policy model is scored too."})
    share_prefix: bool = field(default=True, metadata={
        "help": "Compute the common prefix of chosen and rejected (the prompt at least) once per pair."})
    head_chunk: int = field(default=512, metadata={
        "help": "Positions projected through the LM head at once (bounds the chunk x vocab logits memory)."})

    def __post_init__(self):
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 or None, got {self.max_length}")
        if self.truncation_mode not in ("keep_start", "keep_end"):
            raise ValueError(f"truncation_mode must be 'keep_start' or 'keep_end', got {self.truncation_mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.token_budget < 1 or self.head_chunk < 1:
            raise ValueError(f"token_budget and head_chunk must be >= 1, got {self.token_budget}, {self.head_chunk}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")

    def settings(self) -> dict:
        """The fields that change the numbers (the cache key and the provenance)."""
        return {"max_length": self.max_length, "truncation_mode": self.truncation_mode, "dtype": self.dtype}


@dataclass
class Packed:
    """One pair as a single row: chosen's tokens, then rejected's tokens after their common prefix.

    Rejected's tail sits at row positions `len(chosen.ids)...` but keeps its own position ids
    (`prefix...`) and attends to the shared prefix plus itself, so each hidden state equals the
    one of a separate forward pass.
    """

    ids: list[int]
    positions: list[int]
    prefix: int  # tokens shared by chosen and rejected
    chosen: Sequence
    rejected: Sequence

    def gather(self, seq: Sequence, is_rejected: bool) -> tuple[list[int], list[int]]:
        """(row index of the hidden state predicting each scored token, the token ids)."""
        offset = len(self.chosen.ids) - self.prefix if is_rejected else 0
        rows = [t - 1 if t - 1 < self.prefix else t - 1 + offset for t in seq.scored]
        return rows, [seq.ids[t] for t in seq.scored]


def pack(chosen: Sequence, rejected: Sequence, share_prefix: bool = True) -> Packed:
    s = min(common_prefix_length(chosen.ids, rejected.ids), len(chosen.ids)) if share_prefix else 0
    tail = rejected.ids[s:]
    positions = list(range(len(chosen.ids))) + list(range(s, s + len(tail)))
    return Packed(chosen.ids + tail, positions, s, chosen, rejected)


def _pair_rows(pairs: pl.DataFrame, tokenizer, config: ScoreConfig, file: str, row_offset: int):
    """Per input row: a `Packed` plus token counts, or a `Reject` (prompt_too_long)."""
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
        out.append((pack(*seqs, share_prefix=config.share_prefix), (len(p), len(c), len(r))))
    return out


def batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices grouped so that rows x max length <= budget (a longer row goes alone), shortest first."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > budget:
            groups.append(current)
            current = []
        current.append(i)
    return groups + ([current] if current else [])


def _backbone_and_head(model):
    """The transformer body (hidden states out) and the LM head, as TRL's fused head finds them."""
    if hasattr(model, "get_base_model"):  # PEFT: the adapters live inside the wrapped model's modules
        model = model.get_base_model()
    text = model.config.get_text_config()
    scale = next((getattr(text, k) for k in ("logit_scale", "output_multiplier", "lm_head_multiplier")
                  if getattr(text, k, None) is not None), None)
    if scale is None and getattr(text, "logits_scaling", None) is not None:
        scale = text.logits_scaling if text.model_type == "hyperclovax" else 1 / text.logits_scaling
    softcap = getattr(text, "final_logit_softcapping", None)
    return model.base_model, model.get_output_embeddings(), (1.0 if scale is None else scale), softcap


def _inputs(packed: list[Packed], pad_id: int, dtype):
    """input_ids, position_ids (B, L) and the additive block-causal mask (B, 1, L, L) of a group."""
    import torch

    B, L = len(packed), max(len(p.ids) for p in packed)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    pos = torch.zeros((B, L), dtype=torch.long)
    causal = torch.ones((L, L), dtype=torch.bool).tril()
    allowed = torch.zeros((B, L, L), dtype=torch.bool)
    for b, p in enumerate(packed):
        n, a, s = len(p.ids), len(p.chosen.ids), p.prefix
        ids[b, :n] = torch.tensor(p.ids)
        pos[b, :n] = torch.tensor(p.positions)
        allowed[b, :a, :a] = causal[:a, :a]
        allowed[b, a:n, :s] = True  # rejected's tail sees the shared prefix ...
        allowed[b, a:n, a:n] = causal[: n - a, : n - a]  # ... and itself, never chosen's tail
        allowed[b, range(n, L), range(n, L)] = True  # padding attends to itself only (no NaN rows)
    mask = torch.zeros((B, 1, L, L), dtype=dtype).masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return ids, pos, mask


def _logp_sums(model, packed: list[Packed], pad_id: int, head_chunk: int):
    """Summed completion log-probs and scored-token counts, shape (2B,): [chosen_0, rejected_0, ...]."""
    import torch

    backbone, head, scale, softcap = _backbone_and_head(model)
    dtype, device = head.weight.dtype, head.weight.device
    ids, pos, mask = _inputs(packed, pad_id, dtype)
    hidden = backbone(input_ids=ids.to(device), position_ids=pos.to(device), attention_mask=mask.to(device),
                      use_cache=False).last_hidden_state
    b_idx, t_idx, targets, seg = [], [], [], []
    for b, p in enumerate(packed):
        for k, seq in enumerate((p.chosen, p.rejected)):
            rows, toks = p.gather(seq, is_rejected=k == 1)
            b_idx += [b] * len(rows)
            t_idx += rows
            targets += toks
            seg += [2 * b + k] * len(rows)
    h = hidden[torch.tensor(b_idx, dtype=torch.long), torch.tensor(t_idx, dtype=torch.long)]
    targets = torch.tensor(targets, dtype=torch.long, device=device)
    per_token = torch.cat([_head_logps(head, h[i:i + head_chunk], targets[i:i + head_chunk], scale, softcap)
                           for i in range(0, len(h), head_chunk)] or [h.new_zeros(0, dtype=torch.float32)])
    seg = torch.tensor(seg, dtype=torch.long, device=device)
    sums = torch.zeros(2 * len(packed), dtype=torch.float64, device=device).index_add_(0, seg, per_token.double())
    return sums.cpu(), torch.bincount(seg, minlength=2 * len(packed)).cpu()


def _head_logps(head, h, targets, scale: float, softcap: float | None):
    """log p(target) for (n, d) hidden states: the LM head on these rows only, log-softmax in fp32."""
    import torch

    logits = head(h).float() * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]


def _check_dtype(model, config: ScoreConfig, role: str) -> None:
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    if dtype != config.dtype:
        raise ValueError(f"the {role} model is {dtype} but ScoreConfig.dtype={config.dtype!r}: load it with "
                         f"sdpo_kit.models.load_model(path, dtype={config.dtype!r})")


def _score_packed(models: list, packed: list[Packed], pad_id: int, config: ScoreConfig, progress: bool):
    """(sums, counts) per model, each (2N,) in `packed` order, over token-budget groups."""
    import torch
    from tqdm.auto import tqdm

    sums = [torch.zeros(2 * len(packed), dtype=torch.float64) for _ in models]
    counts = torch.zeros(2 * len(packed), dtype=torch.long)
    # `progress` may be a caller's bar (the file scorer's, over all shards): update it, never close it.
    own = not hasattr(progress, "update")
    bar = tqdm(total=len(packed), unit="pair", desc="scoring", disable=not progress, dynamic_ncols=True) if own else progress
    with torch.inference_mode():
        for group in batches([len(p.ids) for p in packed], config.token_budget):
            where = torch.tensor([[2 * i, 2 * i + 1] for i in group]).flatten()
            for m, model in enumerate(models):
                s, n = _logp_sums(model, [packed[i] for i in group], pad_id, config.head_chunk)
                sums[m][where], counts[where] = s, n
            bar.update(len(group))
    if own:
        bar.close()
    return sums, counts


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
    items = _pair_rows(pairs, tokenizer, config, file, row_offset)
    rejects = [it for it in items if isinstance(it, Reject)]
    keep = [i for i, it in enumerate(items) if not isinstance(it, Reject)]
    packed = [items[i][0] for i in keep]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    models = [model] + ([policy] if policy is not None else [])
    sums, counts = _score_packed(models, packed, pad_id, config, progress)
    lengths = [items[i][1] for i in keep]
    return _assemble(pairs[keep], packed, lengths, sums, counts, config.beta), rejects


def _assemble(kept: pl.DataFrame, packed, lengths, sums, counts, beta: float) -> pl.DataFrame:
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
        "chosen_truncated": [p.chosen.truncated for p in packed],
        "rejected_truncated": [p.rejected.truncated for p in packed],
    }
    if len(sums) > 1:
        pc, pr = sums[1][0::2].tolist(), sums[1][1::2].tolist()
        reward = [beta * ((a - b) - (c - d)) for a, b, c, d in zip(pc, chosen, pr, rejected)]
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
        "versions": {"sdpo_kit": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "trl": trl.__version__},
    }


def config_from_dict(d: dict) -> ScoreConfig:
    names = {f.name for f in dataclasses.fields(ScoreConfig)}
    return ScoreConfig(**{k: v for k, v in d.items() if k in names})


def score_file(data, out, **kwargs):
    """Score a whole file into `out` with shards, cache, resume and accelerate: see `sdpo_kit.score_run`."""
    from sdpo_kit.score_run import score_file as run

    return run(data, out, **kwargs)
