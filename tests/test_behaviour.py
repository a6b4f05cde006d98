"""`sdpo eval --generate N`: answers of S and each M_t, length, cut share, distinct-2, KL estimate vs S.

    python -m pytest -q tests/test_behaviour.py
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sdpo_kit.report.behaviour import answer_logps, behaviour_stats, distinct_2, generate, generation_prompts
from sdpo_kit.cli import app
from test_train import FAST, write_partitions


def test_measures_by_hand_on_a_fixed_generation():
    answers = [{"tokens": [1, 2, 3, 1, 2], "cut": True, "ended": False},
               {"tokens": [4, 4, 4], "cut": False, "ended": True},
               {"tokens": [7], "cut": False, "ended": True}]
    # bigrams: (1,2) (2,3) (3,1) (1,2) | (4,4) (4,4) | none -> 4 distinct of 6
    own = [[-1.0, -2.0], [-0.5], [-3.0]]
    base = [[-1.5, -2.0], [-1.0], [-2.0]]  # per-token differences 0.5, 0, 0.5, -1 -> mean 0
    stats = behaviour_stats(answers, own, base)
    assert stats["distinct_2"] == pytest.approx(4 / 6)
    assert stats["cut_share"] == pytest.approx(1 / 3) and stats["mean_tokens"] == pytest.approx(9 / 3)
    assert stats["kl_vs_S"] == pytest.approx(0.0) and stats["kl_tokens"] == 4
    assert behaviour_stats(answers, [[-1.0, -2.0], [-0.5], [-3.0]], [[-2.0, -2.0], [-0.5], [-3.0]])["kl_vs_S"] == 0.25
    assert distinct_2([[5], []]) is None


def test_prompts_distinct_seeded_and_nested():
    import polars as pl

    msgs = [[{"role": "user", "content": f"q{i % 5}"}] for i in range(12)]
    pairs = pl.DataFrame({"prompt": msgs})
    five = generation_prompts(pairs, 5)
    assert len({p["prompt_id"] for p in five}) == 5  # duplicates of a prompt count once
    assert generation_prompts(pairs, 3) == five[:3]  # a smaller N is the start of the same order


def test_generation_cut_and_kl_zero_for_identical_weights(tiny_model_dir):
    import torch

    from sdpo_kit.models import load_model

    s, tok = load_model(tiny_model_dir)
    same, _ = load_model(tiny_model_dir)  # another object, identical weights
    prompts = [{"prompt_id": "a", "prompt": [{"role": "user", "content": "Name a colour."}]},
               {"prompt_id": "b", "prompt": [{"role": "user", "content": "Say hi."}]}]
    answers = generate(s, tok, prompts, max_new_tokens=6, sample_seed=None)
    for a in answers:  # a random tiny model: the cut flag follows from the tokens themselves
        assert a["cut"] == (not a["ended"] and len(a["tokens"]) == 6) and len(a["tokens"]) <= 6
    assert generate(same, tok, prompts, 6, None) == answers  # greedy is deterministic
    stats = behaviour_stats(answers, answer_logps(same, tok, prompts, answers), answer_logps(s, tok, prompts, answers))
    assert stats["kl_vs_S"] == 0.0
    with torch.no_grad():  # other weights: the estimate moves
        for p in same.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved = behaviour_stats(answers, answer_logps(same, tok, prompts, answers), answer_logps(s, tok, prompts, answers))
    assert moved["kl_vs_S"] != 0.0


@pytest.mark.slow
def test_eval_generate_end_to_end_cached(tmp_path, tiny_model_dir):
    parts = write_partitions(tmp_path / "parts", steps=1, pairs=4)
    run = tmp_path / "run"
    argv = ["train", "--partitions", str(parts), "--model", str(tiny_model_dir), "--out", str(run), *FAST]
    # M1 keeps S's weights exactly: an AdamW step of ~1e-30 is below fp32 resolution for every weight
    # (a learning rate of 0 is refused since issue 22).
    argv[argv.index("--learning_rate") + 1] = "1e-30"
    assert CliRunner().invoke(app, argv).exit_code == 0
    held = write_partitions(tmp_path / "held", steps=1, pairs=6, offset=20) / "step_1.parquet"
    cmd = ["eval", "--run", str(run), "--data", str(held), "--generate", "3", "--max-new-tokens", "8"]
    result = CliRunner().invoke(app, cmd)
    assert result.exit_code == 0, result.output
    ev = json.loads((run / "eval" / "eval.json").read_text())
    b = ev["behaviour"]
    assert b["prompts"] == 3 and b["decoding"] == "greedy" and set(b["models"]) == {"S", "M1"}
    assert b["models"]["S"]["kl_vs_S"] == 0.0 and b["models"]["M1"]["kl_vs_S"] == 0.0  # identical weights
    rows = [json.loads(ln) for ln in (run / "eval" / "generations.jsonl").read_text().splitlines()]
    assert [r["model"] for r in rows] == ["S"] * 3 + ["M1"] * 3
    assert [r["answer"] for r in rows[:3]] == [r["answer"] for r in rows[3:]]
    for name in ("S", "M1"):
        mine = [r for r in rows if r["model"] == name]
        assert b["models"][name]["cut_share"] == pytest.approx(sum(r["cut"] for r in mine) / 3)
        assert b["models"][name]["mean_tokens"] == pytest.approx(sum(r["tokens"] for r in mine) / 3)
    # The report: length drift per model and S vs the final model side by side, answers escaped.
    gen = run / "eval" / "generations.jsonl"
    rows[0]["answer"] = "<script>alert(1)</script> | x"
    gen.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rep = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    page = (tmp_path / "rep" / "report.html").read_text()
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "Behaviour on 3 held-out prompts" in md and "| prompt | S | M1 |" in md and "length drift vs S" in md
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; | x" in page
    assert "first-step rewards 0 (reference = start)" in md
    again = CliRunner().invoke(app, cmd)
    assert again.exit_code == 0 and "answers cached" in again.output
    bad = CliRunner().invoke(app, cmd[:-2] + ["--max-new-tokens", "0"])
    assert bad.exit_code == 2 and "--max_new_tokens >= 1" in bad.output
