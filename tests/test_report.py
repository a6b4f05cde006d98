"""`sdpo report` and the plot functions, on run directories written to the ARCHITECTURE.md contract.

    python -m pytest -q tests/test_report.py

`write_contract_run` writes a run directory (run.json, step_t/{summary,trainer_state,reference},
a partitions folder, eval/) with known random numbers, so every plotted series can be checked
against the numbers that went in. The end-to-end test on a real trained run is in test_eval.py.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from sdpo_kit import plots  # noqa: E402
from sdpo_kit.cli import app  # noqa: E402
from sdpo_kit.report.evaluate import gamma_table, eval_results  # noqa: E402
from sdpo_kit.report.html import ReportConfig, write_report  # noqa: E402
from sdpo_kit.report.load import load_run  # noqa: E402
from sdpo_kit.stats import spearman  # noqa: E402

SOURCES = ["koala", "oasst", "vicuna"]


def _log_history(rng, n: int) -> list[dict]:
    rows = [{"loss": float(math.log(2) - 0.05 * i + rng.normal(0, 0.01)), "rewards/margins": float(0.02 * i),
             "rewards/accuracies": float(min(1.0, 0.5 + 0.1 * i)), "rewards/chosen": 0.01 * i,
             "rewards/rejected": -0.01 * i, "epoch": (i + 1) / n, "step": i + 1} for i in range(n)]
    return rows + [{"train_loss": 0.6, "train_runtime": 1.0, "step": n, "epoch": 1.0}]


def write_contract_run(root: Path, name: str = "run", steps: int = 2, seed: int = 0, label: str | None = None,
                       judge: bool = True, with_eval: bool = True, opt_steps=(4, 3)) -> Path:
    """A run directory exactly as ARCHITECTURE.md specifies, with a partitions folder beside it."""
    rng = np.random.default_rng(seed)
    parts, run = root / f"{name}_parts", root / name
    parts.mkdir(parents=True)
    manifest_steps, run_steps = [], []
    for t in range(1, steps + 1):
        n = 20 + 5 * t
        src = [SOURCES[(i + t) % len(SOURCES)] for i in range(n)]
        part = pl.DataFrame({"pair_id": [f"{t}-{i}" for i in range(n)], "source": src,
                             "margin": rng.normal(2.0 - t, 1.0, n)})
        part.write_parquet(parts / f"step_{t}.parquet")
        manifest_steps.append({"step": t, "file": f"step_{t}.parquet", "pairs": n, "mean_margin": part["margin"].mean(),
                               "reward_accuracy": float((part["margin"] > 0).mean()),
                               "sources": dict(part.group_by("source").len().iter_rows())})
        d = run / f"step_{t}"
        (d / "model").mkdir(parents=True)
        part.with_columns(pl.col("margin") + 0.5).write_parquet(d / "reference.parquet")
        log = _log_history(rng, opt_steps[(t - 1) % len(opt_steps)])
        (d / "trainer_state.json").write_text(json.dumps({"global_step": log[-1]["step"], "log_history": log}))
        (d / "summary.json").write_text(json.dumps({
            "step": t, "pairs": n, "optimizer_steps": log[-1]["step"], "ref_margin_mean": part["margin"].mean() + 0.5,
            "reward_margin_end": log[-2]["rewards/margins"], "reward_accuracy_end": log[-2]["rewards/accuracies"],
            "loss_first": log[0]["loss"], "loss_end": log[-2]["loss"], "seconds": 1.0,
            "reference_fingerprint": f"fp{t - 1}", "model_fingerprint": f"fp{t}"}))
        run_steps.append({"step": t, "dir": f"step_{t}", "partition": [str(parts / f"step_{t}.parquet")],
                          "reference_fingerprint": f"fp{t - 1}", "start_fingerprint": f"fp{t - 1}",
                          "model_fingerprint": f"fp{t}", "status": "done"})
    (parts / "manifest.json").write_text(json.dumps({"strategy": "margin", "params": {}, "seed": 0,
                                                     "steps": manifest_steps, "dropped": 0}))
    meta = {"mode": "stepwise", "base_model": "tiny", "base_fingerprint": "fp0", "partitions": str(parts),
            "beta": 0.1, "status": "done", "steps": run_steps, "seed": seed} | ({"label": label} if label else {})
    (run / "run.json").write_text(json.dumps(meta))
    if with_eval:
        write_contract_eval(run, rng, steps, judge)
    return run


def write_contract_eval(run: Path, rng, steps: int, judge: bool, n: int = 40) -> dict:
    """RUN/eval/{eval.json,scores.parquet} from known γ of S, M1.. through evaluate.eval_results."""
    names = ["S"] + [f"M{t}" for t in range(1, steps + 1)]
    pairs = pl.DataFrame({"pair_id": [f"h{i}" for i in range(n)], "source": [SOURCES[i % 3] for i in range(n)]})
    if judge:
        pairs = pairs.with_columns(judge_confidence=pl.Series(rng.uniform(0, 1, n)))
    base = rng.normal(-1.0, 2.0, n)
    scored = {m: pairs.select("pair_id").with_columns(margin=pl.Series(base + 0.7 * k + rng.normal(0, 0.3, n)))
              for k, m in enumerate(names)}
    steps = [{"step": t, "dir": f"step_{t}"} for t in range(1, len(names))]
    result = eval_results(gamma_table(pairs, scored), names, 0.1, {"reference_schedule": "stepwise", "steps": steps})
    (run / "eval").mkdir()
    result.pop("table").write_parquet(run / "eval" / "scores.parquet")
    result |= {"data": {"path": "heldout.parquet", "pairs": n, "rejected": 0}, "beta": 0.1}
    (run / "eval" / "eval.json").write_text(json.dumps(result))
    return result


def test_timeline_lays_steps_end_to_end():
    logs = [{"step": 1, "log_history": _log_history(np.random.default_rng(0), 4)},
            {"step": 2, "log_history": _log_history(np.random.default_rng(1), 3)}]
    ax = plots.plot_reward_margin_timeline(logs, plt.figure().gca())
    lines = {ln["label"]: ln for ln in plots.axes_series(ax)["lines"]}
    assert lines["step 1"]["x"] == [1, 2, 3, 4]
    assert lines["step 2"]["x"] == [5, 6, 7]  # step 2 starts where step 1 ended
    assert lines["step 2"]["y"] == pytest.approx([r["rewards/margins"] for r in logs[1]["log_history"][:-1]])
    assert "nats" in ax.get_ylabel() and ax.get_title()
    plt.close("all")


def test_loss_and_accuracy_overlay_use_step_local_axis():
    logs = [{"step": t, "log_history": _log_history(np.random.default_rng(t), 3)} for t in (1, 2)]
    fig, (a, b) = plt.subplots(1, 2)
    loss = plots.axes_series(plots.plot_loss_per_step(logs, a))
    acc = plots.axes_series(plots.plot_reward_accuracy_per_step(logs, b))
    by = {ln["label"]: ln for ln in loss["lines"]}
    assert by["step 1"]["x"] == by["step 2"]["x"] == [1, 2, 3]
    assert by["step 2"]["y"] == pytest.approx([r["loss"] for r in logs[1]["log_history"][:3]])
    assert by["ln 2"]["y"][0] == pytest.approx(math.log(2))
    assert [ln["y"] for ln in acc["lines"]] == [[0.5, 0.6, 0.7]] * 2
    plt.close(fig)


def test_partition_histograms_and_source_mix_read_back():
    rng = np.random.default_rng(3)
    parts = [{"step": 1, "margin": rng.normal(1, 1, 50).tolist(), "sources": {"a": 30, "b": 20}},
             {"step": 2, "margin": rng.normal(-1, 1, 30).tolist(), "sources": {"b": 25, "c": 5}}]
    fig, (a, b) = plt.subplots(1, 2)
    hist = plots.axes_series(plots.plot_partition_margins(parts, a))["hists"]
    assert [sum(h["counts"]) for h in hist] == [50, 30]
    assert hist[0]["edges"] == hist[1]["edges"]  # shared bins so the steps compare
    edges = hist[1]["edges"]
    counts, _ = np.histogram(np.clip(parts[1]["margin"], edges[0], edges[-1]), bins=edges)
    every = np.r_[parts[0]["margin"], parts[1]["margin"]]
    assert (edges[0], edges[-1]) == pytest.approx(tuple(np.percentile(every, [1, 99])))
    assert hist[1]["counts"] == counts.tolist()
    mix = plots.axes_series(plots.plot_partition_sources(parts, b))
    assert {s["label"]: s["values"] for s in mix["bars"]} == {"a": [30, 0], "b": [20, 25], "c": [0, 5]}
    assert mix["ticks"] == ["step 1", "step 2"]
    plt.close(fig)


def test_spearman_matches_scipy_and_is_in_title():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(4)
    x = rng.uniform(size=60)
    y = 2 * x + rng.normal(0, 0.3, 60)
    y[:5] = y[0]  # ties
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    ax = plots.plot_margin_vs_signal({"margin": y, "signal": x, "signal_name": "judge_confidence", "model": "S"},
                                     plt.figure().gca())
    assert f"{spearmanr(x, y).statistic:.3f}" in ax.get_title()
    assert np.allclose(plots.axes_series(ax)["points"][0]["xy"], np.c_[x, y])
    plt.close("all")


def test_run_comparison_error_bars_are_seed_sd():
    groups = [{"label": "sdpo", "values": [0.6, 0.7, 0.8]}, {"label": "dpo", "values": [0.55]}]
    ax = plots.plot_run_comparison(groups, plt.figure().gca(), "preference accuracy")
    bars = plots.axes_series(ax)["bars"][0]["values"]
    assert bars == pytest.approx([0.7, 0.55])
    assert plots.axes_series(ax)["errors"] == [pytest.approx([np.std([0.6, 0.7, 0.8], ddof=1), 0.0])]
    assert len(plots.axes_series(ax)["points"][0]["xy"]) == 4
    plt.close("all")


def _figures(out: Path) -> dict:
    return json.loads((out / "figures.json").read_text())


def test_report_from_contract_run_embeds_every_figure(tmp_path):
    run = write_contract_run(tmp_path, "sdpo", steps=2)
    out = tmp_path / "report"
    paths = write_report(ReportConfig([run], str(out)))
    page = paths["html"].read_text()
    figs = _figures(out)
    expected = {"sdpo_reward_margin", "sdpo_loss_accuracy", "sdpo_partitions", "sdpo_reference_margins",
                "sdpo_difficulty"}
    assert set(figs) == expected
    for name, f in figs.items():
        png = (out / f["png"]).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        embedded = re.search(rf"id='{name}'><img alt='{name}' src='data:image/png;base64,([^']+)'", page)
        assert embedded and base64.b64decode(embedded.group(1)) == png
    assert "src='http" not in page and "<script" not in page  # self-contained
    # Each figure's series equal the numbers on disk.
    data = load_run(run)
    margin_ax, end_ax = figs["sdpo_reward_margin"]["axes"]
    assert [ln["label"] for ln in margin_ax["lines"]] == ["step 1", "step 2"]
    assert margin_ax["lines"][1]["x"][0] == 5  # step 2 starts after step 1's 4 optimizer steps
    assert end_ax["bars"][0]["values"] == pytest.approx([s["summary"]["reward_margin_end"] for s in data["steps"]])
    ev = data["eval"]
    ref_ax, src_ax = figs["sdpo_reference_margins"]["axes"]
    assert ref_ax["ticks"] == ["S", "M1", "M2"]
    assert ref_ax["bars"][0]["values"] == pytest.approx([m["mean_margin"] for m in ev["models"]])
    assert src_ax["ticks"] == [*SOURCES, "all"]
    for bars, m in zip(src_ax["bars"], ev["models"]):
        assert bars["label"] == m["name"]
        assert bars["values"] == pytest.approx([m["per_source"][s]["accuracy"] for s in SOURCES] + [m["accuracy"]])
    hist_ax, mix_ax = figs["sdpo_partitions"]["axes"]
    assert [sum(h["counts"]) for h in hist_ax["hists"]] == [25, 30]
    manifest = data["manifest"]["steps"]
    for s in mix_ax["bars"]:
        assert s["values"] == [m["sources"].get(s["label"], 0) for m in manifest]
    diff = figs["sdpo_difficulty"]["axes"]
    rho = spearman(data["scores"]["judge_confidence"], data["scores"]["gamma_S"])
    assert f"ρ = {rho:.3f}" in diff[0]["title"] and f"ρ(γ of S, `judge_confidence`) = {rho:.3f}" in paths["summary"].read_text()
    assert [a["title"].split(":")[0] for a in diff] == ["γ_ref vs judge_confidence"] * 2
    assert [a["ylabel"] for a in diff] == ["γ of S on held-out pairs [nats]", "γ of M2 on held-out pairs [nats]"]


def test_report_compares_runs_grouped_by_label_and_seed(tmp_path):
    runs = [write_contract_run(tmp_path, "easy-seed1", seed=1), write_contract_run(tmp_path, "easy-seed2", seed=2),
            write_contract_run(tmp_path, "dpo_run", steps=1, seed=3, label="dpo")]
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out / "report.html") in result.output
    acc_ax, margin_ax = _figures(out)["comparison"]["axes"]
    finals = [load_run(r)["eval"]["models"][-1] for r in runs]
    assert acc_ax["ticks"] == ["easy", "dpo"]
    assert acc_ax["bars"][0]["values"] == pytest.approx([(finals[0]["accuracy"] + finals[1]["accuracy"]) / 2,
                                                         finals[2]["accuracy"]])
    vs_s = [next(c for c in load_run(r)["eval"]["comparisons"] if c["reference"] == "S" and c["policy"] == f["name"])
            for r, f in zip(runs, finals)]
    assert margin_ax["bars"][0]["values"] == pytest.approx([
        (vs_s[0]["reward_margin_mean"] + vs_s[1]["reward_margin_mean"]) / 2, vs_s[2]["reward_margin_mean"]])
    assert margin_ax["errors"][0][0] == pytest.approx(
        np.std([vs_s[0]["reward_margin_mean"], vs_s[1]["reward_margin_mean"]], ddof=1))
    assert "±1 sd over seeds" in acc_ax["title"]
    assert "id='comparison'" in (out / "report.html").read_text()
    assert "different held-out pairs" not in (out / "summary.md").read_text()
    ev = json.loads((runs[2] / "eval" / "eval.json").read_text())
    (runs[2] / "eval" / "eval.json").write_text(json.dumps(ev | {"data": ev["data"] | {"path": "other.parquet"}}))
    write_report(ReportConfig(runs, str(out)))
    assert "evaluated on different held-out pairs" in (out / "summary.md").read_text()


def test_report_without_eval_or_signal_says_what_is_missing(tmp_path):
    bare = write_contract_run(tmp_path, "bare", with_eval=False)
    nojudge = write_contract_run(tmp_path, "nojudge", judge=False)
    out = tmp_path / "report"
    page = write_report(ReportConfig([bare, nojudge], str(out)))["html"].read_text()
    assert "run `sdpo eval --run" in page and "no `judge_confidence` column" in page
    assert "bare_reference_margins" not in _figures(out) and "nojudge_reference_margins" in _figures(out)


def test_report_rejects_a_folder_without_run_json(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "no run.json" in result.output  # an input error (exit 1)


def screenshot_or_skip(html: Path, png: Path) -> Path:
    """scripts/screenshot_report.py on `html`; skip (visibly) when no Chromium is installed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("screenshot_report", Path(__file__).parents[1] / "scripts" / "screenshot_report.py")
    shot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shot)
    if shot.find_chromium() is None:
        pytest.skip("no Chromium installed (Debian: apt-get install -y chromium): report screenshot not taken")
    return shot.screenshot(html, png, width=1400, height=3000)


def assert_not_blank(png: Path) -> None:
    from PIL import Image

    with Image.open(png) as img:
        assert img.size == (1400, 3000)
        small = img.convert("RGB").resize((140, 300))
    colours = small.getcolors(maxcolors=1 << 16)
    assert len(colours) > 50  # figures and tables rendered, not a blank or error page


def test_screenshot_of_contract_report(tmp_path):
    runs = [write_contract_run(tmp_path, "easy-seed1", seed=1), write_contract_run(tmp_path, "easy-seed2", seed=2)]
    html = write_report(ReportConfig(runs, str(tmp_path / "report")))["html"]
    assert_not_blank(screenshot_or_skip(html, tmp_path / "report" / "screenshot.png"))


def test_report_config_runs_the_command_and_the_page_is_html_not_markdown(tmp_path, capsys):
    """`ReportConfig` + `run` (the `sdpo report` command); the page is written as HTML directly: data
    escaped once (a backtick inside a code span stays text), no markdown syntax left over."""
    from sdpo_kit.errors import UsageError
    from sdpo_kit.report.html import ReportConfig, run

    with pytest.raises(UsageError, match="RUNS is required"):
        ReportConfig(runs=[])
    name = "a`b<i>|x"
    r = write_contract_run(tmp_path, name)
    paths = run(ReportConfig(runs=[str(r)], out=str(tmp_path / "rep")))
    assert capsys.readouterr().out == f"report: {paths['html']}\nsummary: {paths['summary']}\n"
    page = paths["html"].read_text()
    assert "<h2>a`b&lt;i&gt;|x</h2>" in page and "label <code>a`b&lt;i&gt;|x</code>, seed 0" in page
    assert "<th>γ_ref mean (under the step&#x27;s reference)</th>" in page and "<td>first-step rewards 0 (reference = start)</td>" in page
    assert "**" not in page and "|---" not in page and "\\|" not in page and "\\`" not in page
    md = paths["summary"].read_text()
    assert "## a\\`b&lt;i&gt;\\|x" in md and "label `a\\`b&lt;i&gt;\\|x`, seed 0" in md
