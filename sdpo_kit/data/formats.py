"""Formats: turn one raw row into canonical chat messages, or say exactly why not.

    python -c "from sdpo_kit.data.formats import normalise; print(normalise({'prompt': 'Hi', 'chosen': 'Hey', 'rejected': 'Go'}, 'trl-standard', {}))"

Four layouts map onto one (`prompt`, `chosen`, `rejected`) triple of message lists:
- `trl-standard`: `prompt`/`chosen`/`rejected` strings;
- `trl-conversational`: message lists; without a `prompt` column `chosen`/`rejected` are whole
  conversations and the prompt is everything before their last (assistant) message;
- `sharegpt` (LLaMA-Factory): `conversations` of `{from, value}` plus single `chosen`/`rejected`
  messages, roles `human`/`gpt`/`system`;
- `hh` (Anthropic raw): `chosen`/`rejected` dialogues `\\n\\nHuman: ...\\n\\nAssistant: ...`.
Content is never altered; only the comparison for `identical` ignores surrounding whitespace and
invisible characters (zero-width, bidi: `without_invisible`).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from sdpo_kit.errors import UsageError

FORMATS = ("trl-standard", "trl-conversational", "sharegpt", "hh")
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
# Input columns each format turns into canonical ones (by canonical name; `columns` renames them).
CONSUMED = {
    "trl-standard": ("prompt", "chosen", "rejected", "source"),
    "trl-conversational": ("prompt", "chosen", "rejected", "source"),
    "sharegpt": ("conversations", "chosen", "rejected", "source"),
    "hh": ("chosen", "rejected", "source"),
}
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")

Message = dict[str, str]


class RowError(Exception):
    """A row that cannot become a pair: `reason` is one of the stable reject reasons."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def detect_format(row: dict, columns: dict[str, str]) -> str:
    """Guess the layout from one row's keys and value types."""
    col = lambda name: columns.get(name, name)  # noqa: E731
    if col("conversations") in row:
        return "sharegpt"
    if row.get(col("chosen")) is None or row.get(col("rejected")) is None:
        raise RowError("missing_field", f"cannot detect the format: no {col('chosen')!r}/{col('rejected')!r} values "
                       f"(columns: {sorted(row)}); map yours with --chosen_col/--rejected_col")
    if isinstance(row[col("chosen")], str):
        return "trl-standard" if row.get(col("prompt")) is not None else "hh"
    return "trl-conversational"


def normalise(row: dict, fmt: str, columns: dict[str, str]) -> tuple[list[Message], list[Message], list[Message]]:
    """(prompt, chosen, rejected) messages of a valid pair; raises RowError otherwise."""
    col = lambda name: columns.get(name, name)  # noqa: E731

    def field(name: str) -> Any:
        if row.get(col(name)) is None:
            raise RowError("missing_field", f"no {col(name)!r} value")
        return row[col(name)]

    if fmt == "trl-standard":
        p, c, r = (_string(field(n), col(n)) for n in ("prompt", "chosen", "rejected"))
        prompt, chosen, rejected = [_msg("user", p)], [_msg("assistant", c)], [_msg("assistant", r)]
    elif fmt == "hh":
        prompt, chosen, rejected = split_dialogues(
            _hh_messages(_string(field("chosen"), col("chosen")), col("chosen")),
            _hh_messages(_string(field("rejected"), col("rejected")), col("rejected")))
    elif fmt == "sharegpt":
        prompt = _messages(field("conversations"), col("conversations"))
        chosen = _messages(_as_list(field("chosen")), col("chosen"))
        rejected = _messages(_as_list(field("rejected")), col("rejected"))
    elif fmt == "trl-conversational":
        chosen = _messages(field("chosen"), col("chosen"))
        rejected = _messages(field("rejected"), col("rejected"))
        if row.get(col("prompt")) is None:
            prompt, chosen, rejected = split_dialogues(chosen, rejected)
        else:
            prompt = _messages(row[col("prompt")], col("prompt"))
    else:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_pair(prompt, chosen, rejected, col)
    return prompt, chosen, rejected


def split_dialogues(chosen: list[Message], rejected: list[Message]):
    """Whole dialogues -> (prompt, [last chosen turn], [last rejected turn]); the turns before
    the last one must agree, or the pair compares answers to different conversations."""
    if chosen[:-1] != rejected[:-1]:
        at = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
        raise RowError("prompt_mismatch", f"chosen and rejected dialogues differ before the last turn "
                       f"(first at turn {at + 1}: {len(chosen)} vs {len(rejected)} turns)")
    return chosen[:-1], chosen[-1:], rejected[-1:]


def check_pair(prompt: list[Message], chosen: list[Message], rejected: list[Message], col=lambda n: n) -> None:
    """Structure, then emptiness, then identity: the first problem found is the reason."""
    if not prompt or prompt[-1]["role"] != "user":
        last = prompt[-1]["role"] if prompt else "nothing"
        raise RowError("wrong_type", f"{col('prompt')}: must end with a user message, ends with {last}")
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        if len(side) != 1 or side[0]["role"] != "assistant":
            roles = [m["role"] for m in side]
            raise RowError("wrong_type", f"{col(name)}: must be one assistant message, got {roles}")
    if not any(m["content"].strip() for m in prompt if m["role"] == "user"):
        raise RowError("empty", f"{col('prompt')}: no user text")
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        if not side[0]["content"].strip():
            raise RowError("empty", f"{col(name)}: empty answer")
    c, r = chosen[0]["content"], rejected[0]["content"]
    if c == r:
        raise RowError("identical", "chosen and rejected answers are identical")
    if c.strip() == r.strip():
        raise RowError("identical", "chosen and rejected answers are identical after stripping surrounding whitespace")
    if not (_plain(c) and _plain(r)):  # only then can invisible characters be the difference
        seen_c, seen_r = without_invisible(c), without_invisible(r)
        if seen_c[0].strip() == seen_r[0].strip():
            hidden = ", ".join(f"U+{ord(ch):04X}" for ch in sorted(seen_c[1] | seen_r[1])[:4])
            raise RowError("identical", f"chosen and rejected answers differ only by invisible characters ({hidden})")


def _plain(text: str) -> bool:
    """No character but printable ones, line breaks and tabs (C speed: the common case skips the scan)."""
    return text.isprintable() or text.replace("\n", "").replace("\r", "").replace("\t", "").isprintable()


def without_invisible(text: str) -> tuple[str, set[str]]:
    """`text` without format and control characters other than line breaks and tabs (zero-width
    spaces and joiners, bidi marks and overrides, soft hyphens: Unicode Cf/Cc), and the set removed.
    Two answers equal but for these read the same to a person: no preference between them."""
    import unicodedata

    kept, removed = [], set()
    for ch in text:
        if ch not in "\n\r\t" and unicodedata.category(ch) in ("Cf", "Cc"):
            removed.add(ch)
        else:
            kept.append(ch)
    return "".join(kept), removed


def pair_id(prompt: list[Message], chosen: list[Message], rejected: list[Message]) -> str:
    """First 16 hex of sha256 over the normalised messages (docs/ARCHITECTURE.md)."""
    blob = json.dumps([prompt, chosen, rejected], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _msg(role: str, content: str) -> Message:
    return {"role": role, "content": content}


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{name}: expected a string, got {type(value).__name__}")
    return value


def _as_list(value: Any) -> Any:
    """ShareGPT's chosen/rejected are single messages; a one-element list is accepted too."""
    return [value] if isinstance(value, dict) else value


def _messages(value: Any, name: str) -> list[Message]:
    """Message list with roles mapped to user/assistant/system; accepts {role, content} and {from, value}."""
    if not isinstance(value, list):
        raise RowError("wrong_type", f"{name}: expected a list of messages, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RowError("wrong_type", f"{name}[{i}]: expected a message object, got {type(m).__name__}")
        role, content = (m.get("role"), m.get("content")) if "role" in m else (m.get("from"), m.get("value"))
        if role is None or content is None:
            raise RowError("missing_field", f"{name}[{i}]: message needs role/content (or from/value), has {sorted(m)}")
        if not isinstance(content, str):
            raise RowError("wrong_type", f"{name}[{i}]: content must be a string, got {type(content).__name__}")
        if role not in ROLES:
            raise RowError("unknown_role", f"{name}[{i}]: role {role!r} (known: {', '.join(ROLES)})")
        out.append(_msg(ROLES[role], content))
    return out


def _hh_messages(text: str, name: str) -> list[Message]:
    """Split Anthropic's raw dialogue on its `\\n\\nHuman: ` / `\\n\\nAssistant: ` markers."""
    parts = _HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text)
    if len(parts) < 3 or parts[0]:
        raise RowError("unparsable", f"{name}: not an HH dialogue (want '\\n\\nHuman: ...\\n\\nAssistant: ...'); "
                       "string answers without a prompt column are read as HH, map a prompt with --prompt_col")
    return [_msg("user" if r == "Human" else "assistant", c) for r, c in zip(parts[1::2], parts[2::2])]
