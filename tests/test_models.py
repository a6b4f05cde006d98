"""The default model loads offline, converts once, and the cached copy is the GGUF model."""

import math

import pytest
import torch

from sdpo_kit import models


def _text_logprob(model, tokenizer, text: str) -> float:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = model(ids).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).sum().item()


@pytest.mark.slow
def test_default_model_gguf_and_cache_agree(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("SDPO_KIT_CACHE", str(tmp_path))
    gguf = models.default_gguf_path()
    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()

    model, tok = models.load_model("default")  # converts into tmp_path
    cached = tmp_path / "models" / models.DEFAULT_NAME
    assert (cached / "model.safetensors").is_file() and (cached / "config.json").is_file()
    assert "quantization_config" not in (cached / "config.json").read_text()

    text = "The quick brown fox jumps over the lazy dog."
    assert tok(text).input_ids == ref_tok(text).input_ids
    a, b = _text_logprob(ref, ref_tok, text), _text_logprob(model, tok, text)
    assert math.isfinite(a) and a < 0
    assert abs(a - b) < 1e-4, (a, b)

    again, _ = models.load_model("default")  # second load: from the cache, same weights
    assert models.model_fingerprint(again) == models.model_fingerprint(model)


def test_unknown_model_fails_fast_with_hint():
    with pytest.raises(FileNotFoundError, match="never downloads"):
        models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_tiny_model_fixture_loads(tiny_model_dir):
    model, tok = models.load_model(tiny_model_dir)
    assert model.config.num_hidden_layers == 2
    fp = models.model_fingerprint(model)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert models.model_fingerprint(model) != fp


def test_save_model_swaps_the_folder_whole_and_first_wins_keeps_a_finished_copy(tiny_model_dir, tmp_path):
    import os
    import stat

    model, tok = models.load_model(tiny_model_dir)
    out = tmp_path / "m"
    models.save_model(model, tok, out)
    mask = os.umask(0)
    os.umask(mask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o666 & ~mask}  # safetensors writes 0600
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    (out / "marker").write_text("another process finished first")
    models.save_model(model, tok, out, first_wins=True)  # the shared cache: the finished copy stays
    assert (out / "marker").is_file()
    models.save_model(model, tok, out)  # a step's M_t: replaced as a whole
    assert not (out / "marker").exists() and models.model_fingerprint(models.load_model(out)[0]) == \
        models.model_fingerprint(model)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp folder left beside it


# --- a model folder is data, never code (issue 22) ------------------------------------------------


def _copy(src, dest):
    import shutil

    shutil.copytree(src, dest)
    return dest


def _custom_code_folder(tiny_model_dir, dest, marker):
    """The tiny model under a custom model_type whose auto_map points at Python that writes `marker`."""
    import json

    d = _copy(tiny_model_dir, dest)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="evil_llama", architectures=["EvilForCausalLM"],
               auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                         "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (d / "config.json").write_text(json.dumps(cfg))
    touch = f"open({str(marker)!r}, 'w').write('ran')\n"
    (d / "configuration_evil.py").write_text(
        touch + "from transformers import LlamaConfig\nclass EvilConfig(LlamaConfig):\n    model_type = 'evil_llama'\n")
    (d / "modeling_evil.py").write_text(
        touch + "from transformers import LlamaForCausalLM\nclass EvilForCausalLM(LlamaForCausalLM):\n    pass\n")
    return d


def _score(model_dir, tmp_path, stdin=None):
    from typer.testing import CliRunner

    from conftest import shared
    from sdpo_kit.cli import app

    out = tmp_path / "scored.parquet"
    result = CliRunner().invoke(app, ["curate", "score", str(shared("dpo_en_demo.json")), "--model", str(model_dir),
                                      "--out", str(out), "--limit", "2", "--no-cache"], input=stdin)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr, out


def _refused(model_dir, tmp_path, words: str, stdin=None) -> str:
    code, err, out = _score(model_dir, tmp_path, stdin)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert words in lines[0], lines[0]
    assert not out.exists() and "[y/N]" not in err and "Traceback" not in err
    return lines[0]


def test_custom_code_folder_is_refused_without_prompt_or_running_it(tiny_model_dir, tmp_path):
    marker = tmp_path / "ran.txt"
    evil = _custom_code_folder(tiny_model_dir, tmp_path / "evil", marker)
    line = _refused(evil, tmp_path, "never runs a model folder's Python", stdin="y\n")  # a 'y' would be the answer
    assert "evil_llama" in line and str(evil / "config.json") in line
    assert not marker.exists()
    with pytest.raises(models.InputError, match="auto_map"):
        models.load_tokenizer(evil)
    assert not marker.exists()


def test_every_from_pretrained_passes_trust_remote_code_false():
    import ast
    from pathlib import Path

    import sdpo_kit

    calls = []
    for path in Path(sdpo_kit.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "from_pretrained":
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get("trust_remote_code"), ast.Constant) and \
                    kw["trust_remote_code"].value is False, f"{path}:{node.lineno}"
                calls.append(node)
    assert len(calls) >= 4  # the GGUF conversion (2), the tokenizer, the model


def test_tokenizer_without_chat_template_is_refused(tiny_model_dir, tmp_path):
    import json

    d = _copy(tiny_model_dir, tmp_path / "plain")
    (d / "chat_template.jinja").unlink()
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    _refused(d, tmp_path, "no chat template")


def test_pickle_weights_are_refused(tiny_model_dir, tmp_path):
    model, _ = models.load_model(tiny_model_dir)
    d = _copy(tiny_model_dir, tmp_path / "pickled")
    (d / "model.safetensors").unlink()
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    line = _refused(d, tmp_path, "pickle weights only (pytorch_model.bin)")
    assert "weights_only" not in line


def test_vocabulary_smaller_than_the_tokenizer_is_refused(tiny_model_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    d = _copy(tiny_model_dir, tmp_path / "small")
    config = LlamaConfig.from_pretrained(d)
    config.vocab_size -= 1000
    LlamaForCausalLM(config).save_pretrained(d)
    _refused(d, tmp_path, f"{config.vocab_size:,} embedding rows but the tokenizer {config.vocab_size + 1000:,}")


def test_non_finite_weights_are_refused_with_the_tensor(tiny_model_dir, tmp_path):
    model, tok = models.load_model(tiny_model_dir)
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight[3, 4] = float("inf")
    d = tmp_path / "diverged"
    models.save_model(model, tok, d)
    _refused(d, tmp_path, "weights are not finite (model.layers.1.self_attn.q_proj.weight holds inf)")
    code, err, out = _score(tiny_model_dir, tmp_path)  # the clean folder still scores
    assert code == 0 and out.is_file(), err
