"""Did a change keep `make demo`'s behaviour? Compares two demo_out folders (e.g. before/after a refactor).

    .venv/bin/python scripts/compare_demo.py /tmp/demo_before/demo_out demo_out

Partitions: every step parquet's decoded contents (sha256 over its rows), schema and manifest steps;
the footer differs only when the two demos ran from different folders (it records absolute paths).
Step summaries: every key except `seconds` (read through `sdpo_kit.runs.read_step_summary`, so a
summary written before `loss_end` became `sigmoid_loss_end` compares with one written after). Held-out eval.json: every number to 1e-6.
"""
import json, math, sys, hashlib
from pathlib import Path
import polars as pl
import pyarrow.parquet as pq
from sdpo_kit.runs import read_step_summary

a, b = Path(sys.argv[1]), Path(sys.argv[2])
bad = []

def parquet_digest(p):
    t = pq.read_table(p)
    # contents: every column's values, serialised row-wise in order
    return hashlib.sha256(json.dumps(t.to_pylist(), sort_keys=False, default=str).encode()).hexdigest(), t.num_rows, t.schema

print("== partitions")
for f in sorted((a / "partitions").glob("*.parquet")):
    g = b / "partitions" / f.name
    da, db = parquet_digest(f), parquet_digest(g)
    same_schema = da[2].remove_metadata() == db[2].remove_metadata()
    meta_a = {k: v for k, v in (pq.read_schema(f).metadata or {}).items() if k.startswith(b"sdpo_kit")}
    meta_b = {k: v for k, v in (pq.read_schema(g).metadata or {}).items() if k.startswith(b"sdpo_kit")}
    ok = da[0] == db[0] and same_schema
    print(f"  {f.name}: rows {da[1]} vs {db[1]}, contents sha256 {da[0][:16]} vs {db[0][:16]}, schema same {same_schema}, "
          f"sdpo_kit footer same {meta_a == meta_b}, file bytes same {f.read_bytes() == g.read_bytes()} -> {'SAME' if ok else 'DIFFERENT'}")
    if not ok: bad.append(f.name)
ma, mb = json.loads((a / "partitions/manifest.json").read_text()), json.loads((b / "partitions/manifest.json").read_text())
for k in ("steps", "dropped"):
    print(f"  manifest {k}: {'SAME' if ma.get(k) == mb.get(k) else 'DIFFERENT'}")
    if ma.get(k) != mb.get(k): bad.append("manifest " + k)

VOLATILE = {"seconds"}
print("== step summaries")
for run in ("sdpo", "dpo"):
    for s in sorted((a / "runs" / run).glob("step_*/summary.json")):
        x, y = read_step_summary(s.parent), read_step_summary(b / "runs" / run / s.parent.name)  # old keys read as today's
        keys = sorted(set(x) | set(y))
        diff = [k for k in keys if k not in VOLATILE and x.get(k) != y.get(k)
                and not (k == "reference_model" and str(x.get(k)).endswith(str(y.get(k)).split("/")[-1]))]
        print(f"  {run}/{s.parent.name}: {len(keys)} keys, differing (except {sorted(VOLATILE)}): {diff or 'none'}; "
              f"sigmoid_loss_end {x.get('sigmoid_loss_end')} vs {y.get('sigmoid_loss_end')}; model_fingerprint {x.get('model_fingerprint')} vs {y.get('model_fingerprint')}")
        if diff: bad.append(f"{run}/{s.parent.name} {diff}")

print("== held-out eval")
for run in ("sdpo", "dpo"):
    x, y = (json.loads((d / "runs" / run / "eval/eval.json").read_text()) for d in (a, b))
    worst = 0.0
    def walk(u, v, path=""):
        global worst
        if isinstance(u, dict):
            for k in set(u) | set(v):
                if k in ("seconds", "created", "run", "data_path", "path", "out"): continue
                walk(u.get(k), v.get(k), f"{path}.{k}")
        elif isinstance(u, list) and isinstance(v, list) and len(u) == len(v):
            for i, (p, q) in enumerate(zip(u, v)): walk(p, q, f"{path}[{i}]")
        elif isinstance(u, (int, float)) and isinstance(v, (int, float)) and not isinstance(u, bool):
            d = abs(u - v); worst = max(worst, d)
            if d > 1e-6: bad.append(f"{run}{path}: {u} vs {v}")
        elif u != v and not (isinstance(u, str) and isinstance(v, str) and ("/" in u or "/" in v)):
            bad.append(f"{run}{path}: {u!r} vs {v!r}")
    walk(x, y)
    for m, n in zip(x["models"], y["models"]):
        print(f"  {run} {m['name']}: mean γ {m['mean_margin']:.6f} vs {n['mean_margin']:.6f}, accuracy {m['accuracy']} vs {n['accuracy']}")
    print(f"  {run}: largest numeric difference anywhere in eval.json {worst:.3g}")
print("RESULT:", "IDENTICAL (to 1e-6)" if not bad else "DIFFERENCES: " + "; ".join(bad[:20]))
