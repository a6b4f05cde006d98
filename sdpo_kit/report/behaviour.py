"""Behaviour evaluation (`sdpo eval --generate N`): how S and each M_t answer held-out prompts.

    sdpo eval --run runs/sdpo --data data/alpaca_eval_pairs.parquet --limit 64 --generate 8 --max_new_tokens 64

For the first N distinct held-out prompts in a seeded order (seed 0, so a smaller N is a subset
of a larger one) every model answers (greedy by default; `--sample_seed K` samples with seed K).
Per model, over its N answers:

- `mean_tokens`: mean answer length in tokens (up to, not counting, the end-of-turn token);
- `cut_share`: share of answers that reached `--max_new_tokens` without ending;
- `distinct_2`: distinct bigrams / all bigrams over the model's answers (token ids; Li et al. 2016);
- `kl_vs_S`: mean over every answer token (end token included when generated) of
  log π_t(y_i | x, y_<i) − log π_S(y_i | x, y_<i) on M_t's OWN answers, both teacher-forced: a
  Monte-Carlo estimate of KL(π_t ‖ π_S) per token (exactly 0 for S, or any weights equal to S's).

Answers are cached per model in `eval/generations/NAME.jsonl` + `NAME.json` (key: fingerprint, S's
fingerprint, prompt ids, settings) and across runs in $SDPO_KIT_CACHE/generations/ (so S answers
once for a whole comparison); all of a run's answers are also in `eval/generations.jsonl`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sdpo_kit.console import note
from sdpo_kit.io import read_json, write_json, write_jsonl

PROMPT_SEED = 0
BATCH = 8  # prompts generated together (left-padded)


def prompt_key(messages) -> str:
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]


def generation_prompts(pairs, n: int) -> list[dict]:
    """The first `n` distinct prompts (message lists) of the held-out pairs in a seeded order."""
    import numpy as np

    seen = {}
    for messages in pairs["prompt"].to_list():
        seen.setdefault(prompt_key(messages), messages)
    keys = sorted(seen)
    order = np.random.default_rng(PROMPT_SEED).permutation(len(keys))
    return [{"prompt_id": keys[i], "prompt": seen[keys[i]]} for i in order[:n]]


def _prompt_ids(tokenizer, messages) -> list[int]:
    return tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                         return_dict=True)["input_ids"]


def generate(model, tokenizer, prompts: list[dict], max_new_tokens: int, sample_seed: int | None) -> list[dict]:
    """Each prompt's answer: `tokens` (ids, end token excluded), `ended`, `cut`, `text`."""
    import torch

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if sample_seed is not None:
        torch.manual_seed(sample_seed)
    answers = []
    for start in range(0, len(prompts), BATCH):
        ids = [_prompt_ids(tokenizer, p["prompt"]) for p in prompts[start:start + BATCH]]
        width = max(map(len, ids))
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        with torch.no_grad():
            out = model.generate(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                                 max_new_tokens=max_new_tokens, do_sample=sample_seed is not None,
                                 eos_token_id=eos, pad_token_id=pad, top_k=None, top_p=None, temperature=None)
        for row in out[:, width:].tolist():
            ended = eos in row
            tokens = row[:row.index(eos)] if ended else row
            answers.append({"tokens": tokens, "ended": ended, "cut": not ended and len(row) >= max_new_tokens,
                            "text": tokenizer.decode(tokens, skip_special_tokens=True)})
    return answers


def answer_logps(model, tokenizer, prompts: list[dict], answers: list[dict]) -> list[list[float]]:
    """Teacher-forced per-token log-probs of each answer (end token appended when generated), one at a time."""
    import torch

    eos = tokenizer.eos_token_id
    result = []
    for p, a in zip(prompts, answers):
        prompt = _prompt_ids(tokenizer, p["prompt"])
        target = a["tokens"] + ([eos] if a["ended"] else [])
        if not target:
            result.append([])
            continue
        ids = torch.tensor([prompt + target], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
        lp = torch.log_softmax(logits, dim=-1).gather(1, ids[0, len(prompt):, None])[:, 0]
        result.append(lp.tolist())
    return result


def distinct_2(token_lists: list[list[int]]) -> float | None:
    """Distinct bigrams over all bigrams of the answers (None when no answer has two tokens)."""
    grams = [tuple(t[i:i + 2]) for t in token_lists for i in range(len(t) - 1)]
    return len(set(grams)) / len(grams) if grams else None


def behaviour_stats(answers: list[dict], own: list[list[float]] | None = None,
                    base: list[list[float]] | None = None) -> dict:
    """Per-model measures from its answers and (optionally) the teacher-forced log-probs of them."""
    n = len(answers)
    stats = {"answers": n, "mean_tokens": sum(len(a["tokens"]) for a in answers) / n if n else None,
             "cut_share": sum(a["cut"] for a in answers) / n if n else None,
             "distinct_2": distinct_2([a["tokens"] for a in answers])}
    if own is not None and base is not None:
        diffs = [x - y for o, b in zip(own, base) for x, y in zip(o, b)]
        stats.update(kl_vs_S=sum(diffs) / len(diffs) if diffs else None, kl_tokens=len(diffs))
    return stats


def model_generations(model: dict, prompts: list[dict], settings: dict, base: dict, out: Path) -> dict:
    """Answers of one model (cached by fingerprint + prompts + settings) and its stats vs S (`base`)."""
    from sdpo_kit.models import verify_model
    from sdpo_kit.models import load_checked_model

    folder = out / "generations"
    path, sidecar = folder / f"{model['name']}.jsonl", folder / f"{model['name']}.json"
    key = {"fingerprint": model["fingerprint"], "S": base["fingerprint"], "prompts": [p["prompt_id"] for p in prompts],
           **settings}
    if sidecar.is_file() and path.is_file() and read_json(sidecar).get("key") == key:
        note("sdpo eval", f"{model['name']}: answers cached (generations/{path.name})")
        return read_json(sidecar)["stats"]
    shared = _shared_cache(key)  # S's answers are the same for every run of a comparison: made once
    if shared.with_suffix(".json").is_file() and shared.is_file():
        note("sdpo eval", f"{model['name']}: answers cached ({shared})")
        rows = [{**json.loads(ln), "model": model["name"]} for ln in shared.read_text(encoding="utf-8").splitlines() if ln]
        stats = read_json(shared.with_suffix(".json"))["stats"]
        write_jsonl(path, rows)
        write_json(sidecar, {"key": key, "stats": stats})
        return stats
    verify_model(model)
    note("sdpo eval", f"{model['name']}: answering {len(prompts)} prompts ...")
    lm, tok = load_checked_model(model["path"])
    lm.eval()
    answers = generate(lm, tok, prompts, settings["max_new_tokens"], settings["sample_seed"])
    own = answer_logps(lm, tok, prompts, answers)
    del lm
    ref, ref_tok = load_checked_model(base["path"])  # S teacher-forced on M_t's answers (S on its own: same numbers)
    ref.eval()
    base_lp = answer_logps(ref, ref_tok, prompts, answers)
    stats = behaviour_stats(answers, own, base_lp)
    rows = [{"model": model["name"], "prompt_id": p["prompt_id"], "prompt": p["prompt"], "answer": a["text"],
             "tokens": len(a["tokens"]), "cut": a["cut"], "ended": a["ended"]} for p, a in zip(prompts, answers)]
    write_jsonl(path, rows)
    write_json(sidecar, {"key": key, "stats": stats})
    write_jsonl(shared, rows)
    write_json(shared.with_suffix(".json"), {"key": key, "stats": stats})
    return stats


def _shared_cache(key: dict) -> Path:
    """$SDPO_KIT_CACHE/generations/HASH.jsonl: answers keyed by weights, S, prompts and decoding settings."""
    from sdpo_kit.models import cache_dir

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "generations" / f"{digest}.jsonl"


def evaluate_behaviour(models: list[dict], pairs, n: int, max_new_tokens: int, sample_seed: int | None,
                       out: Path) -> dict:
    """eval.json's "behaviour" block; writes eval/generations/ and eval/generations.jsonl."""
    prompts = generation_prompts(pairs, n)
    settings = {"max_new_tokens": max_new_tokens, "sample_seed": sample_seed,
                "decoding": "greedy" if sample_seed is None else "sample"}
    base = models[0] if models[0]["name"] == "S" else None
    if base is None:
        raise ValueError("behaviour evaluation needs S among --models")
    per_model = {m["name"]: model_generations(m, prompts, settings, base, out) for m in models}
    rows = [json.loads(ln) for m in models
            for ln in (out / "generations" / f"{m['name']}.jsonl").read_text(encoding="utf-8").splitlines() if ln]
    write_jsonl(out / "generations.jsonl", rows)
    return {**settings, "prompts": len(prompts), "models": per_model, "generations": "generations.jsonl"}
