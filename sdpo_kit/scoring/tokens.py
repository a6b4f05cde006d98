"""TRL 1.16's DPO tokenisation and truncation, as pure functions on token lists.

    python -c "from sdpo_kit.models import load_tokenizer; from sdpo_kit.scoring.tokens import tokenize_pair; \
print(tokenize_pair(load_tokenizer('default'), [{'role': 'user', 'content': 'Hi'}], \
[{'role': 'assistant', 'content': 'Hello'}], [{'role': 'assistant', 'content': 'Go away'}]))"

`tokenize_pair` is `DPOTrainer._prepare_dataset`'s `tokenize_fn` (chat template with the
generation prompt for the prompt alone, then prompt+completion, the completion starting at their
common prefix); `truncate` is `DataCollatorForPreference`'s per-sequence truncation of
prompt+completion to `max_length`. Keeping both here lets the scorer reproduce TRL's reference
log-probs exactly, so the stored numbers can replace TRL's reference pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


def _chat_ids(tokenizer, messages: list[dict], **kwargs) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return list(out["input_ids"])


def tokenize_pair(tokenizer, prompt, chosen, rejected, *, tools=None, chat_template_kwargs=None):
    """`(prompt_ids, chosen_ids, rejected_ids)` exactly as TRL 1.16's `DPOTrainer` tokenises a pair.

    Conversational (lists of `{role, content}`): chat template on the prompt with the generation
    prompt, and on prompt+completion; the completion starts where the two token lists diverge.
    Standard (strings): the EOS token is appended to each completion unless already there, and
    the text is tokenised without a template.
    """
    from trl.data_utils import common_prefix_length  # TRL's own (DPOTrainer's tokenize_fn calls it); lazy: heavy import

    if isinstance(prompt, list):
        tools = json.loads(tools) if isinstance(tools, str) else tools
        kwargs = {"tools": tools, **(chat_template_kwargs or {})}
        prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True, **kwargs)
        full_chosen = _chat_ids(tokenizer, list(prompt) + list(chosen), **kwargs)
        full_rejected = _chat_ids(tokenizer, list(prompt) + list(rejected), **kwargs)
    else:
        eos = tokenizer.eos_token
        chosen = chosen if chosen.endswith(eos) else chosen + eos
        rejected = rejected if rejected.endswith(eos) else rejected + eos
        prompt_ids = list(tokenizer(text=prompt)["input_ids"])
        full_chosen = list(tokenizer(text=prompt + chosen)["input_ids"])
        full_rejected = list(tokenizer(text=prompt + rejected)["input_ids"])
    n = min(common_prefix_length(prompt_ids, full_chosen), common_prefix_length(prompt_ids, full_rejected))
    return prompt_ids[:n], full_chosen[n:], full_rejected[n:]


@dataclass
class Sequence:
    """One prompt+completion after TRL's collator truncation.

    `ids` is what the model sees; the completion occupies `ids[start:]` (start may be 0 under
    `keep_end`). Position 0 is never scored (nothing predicts it), as in TRL.
    """

    ids: list[int]
    start: int
    truncated: bool

    @property
    def scored(self) -> range:
        """Positions t whose token is scored from the hidden state at t-1."""
        return range(max(self.start, 1), len(self.ids))


def truncate(prompt_ids: list[int], completion_ids: list[int], max_length: int | None, mode: str) -> Sequence:
    """`DataCollatorForPreference`'s truncation of prompt+completion to `max_length` tokens."""
    ids = prompt_ids + completion_ids
    if max_length is None or len(ids) <= max_length:
        return Sequence(ids, len(prompt_ids), False)
    if mode == "keep_start":
        return Sequence(ids[:max_length], min(len(prompt_ids), max_length), True)
    cut = len(ids) - max_length  # keep_end: tokens removed from the front
    return Sequence(ids[cut:], max(len(prompt_ids) - cut, 0), True)


def prompt_too_long(prompt_ids: list[int], max_length: int | None, mode: str) -> bool:
    """TRL's silent filter: with `keep_start`, a prompt that alone fills `max_length` leaves no completion."""
    return max_length is not None and mode == "keep_start" and len(prompt_ids) >= max_length
