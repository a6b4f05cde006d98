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
