"""Summed completion log-probs of chosen/rejected sequences, computed fast on CPU (or any device).

    python benchmarks/score.py --pairs 8 --no-trl

Measured on this 2-core CPU (single thread, CPU seconds, default model): a forward without any
attention mask (the fused `is_causal` SDPA kernel) runs at 90-99 GFLOP/s for 128-1024 tokens, in
one row or several; sequences packed into one row behind a block-diagonal 4D mask ran at ~75 for
512-token rows and far less for 4096-token rows, whose dense (L, L) attention costs as much as the
whole model. So the plan here is:
- a pair whose chosen and rejected share a long prefix (>= `share_min` tokens, e.g. Anthropic
  HH dialogues) runs the prefix once, then each tail on a copy of the prefix's KV cache;
- every other sequence goes, longest first, into a batch of similar lengths (at most `budget`
  tokens counting padding, at most 1/32 padding per sequence), padded on the right and run with
  NO attention mask: under causal attention a real token only sees earlier positions, which are
  all real, so the pads change nothing and the fast causal kernel applies;
- the LM head projects only the hidden states that predict a scored completion token, and
  log p = logit[target] - logsumexp(logits) in fp32, in chunks of `head_chunk` rows.
"""

from __future__ import annotations

import copy

from sdpo_kit.scoring.tokens import Sequence


def plan(pairs: list[tuple[Sequence, Sequence]], budget: int, share_min: int | None, own_width: bool = False):
    """Work items: ("prefix", pair index, prefix length) and ("batch", [(segment, Sequence), ...]).

    Segment 2i is pair i's chosen sequence, 2i+1 its rejected one. A batch's sequences are sorted
    longest first; (count x longest) <= budget unless the batch holds one sequence. `own_width`: a
    batch holds sequences of one length only, so none is padded (under bf16 autocast a row's numbers
    depend on the width it runs at: `ScoreConfig.plan_options`).
    """
    from trl.data_utils import common_prefix_length

    items, singles = [], []
    for i, (chosen, rejected) in enumerate(pairs):
        s = common_prefix_length(chosen.ids, rejected.ids)
        if share_min is not None and s >= share_min:
            items.append(("prefix", i, s))
        else:
            singles += [(2 * i, chosen), (2 * i + 1, rejected)]
    batches: list[list] = []
    for seg, seq in sorted(singles, key=lambda x: -len(x[1].ids)):
        batch = batches[-1] if batches else None
        longest = len(batch[0][1].ids) if batch else 0
        # Padding is pure waste while a lone sequence of >= ~100 tokens already runs at full speed: join
        # only a batch whose longest is within 1/32 of this length (24 real pairs, 1 thread: 1/8 padding
        # took 79.7 CPU s, 1/32 73.5 s, no batching 72.8 s; batches still help short sequences).
        close = len(seq.ids) == longest if own_width else 32 * (longest - len(seq.ids)) <= longest
        if batch and (len(batch) + 1) * longest <= budget and close:
            batch.append((seg, seq))
        else:
            batches.append([(seg, seq)])
    return items + [("batch", batch) for batch in batches]


def backbone_and_head(model):
    """The transformer body (hidden states out), the LM head and TRL's logit scale / softcap.

    The scale and softcap are read as TRL 1.16.0 reads them in `trl/trainer/utils.py`,
    `add_fused_lm_head` (the fused LM head of TRL's DPO/SFT/GRPO passes; TRL exports no function for
    just this part): `logit_scale`, else `output_multiplier`, else `lm_head_multiplier`, else
    `logits_scaling` (a multiplier for hyperclovax, a divisor otherwise), else 1.0; then
    `final_logit_softcapping`, applied in `_logps` as cap·tanh(logits·scale / cap), the order of
    `trl/kernels/chunked_logprob.py`'s `_torch_transform`. Checked against the model's own forward
    (which applies both itself) in tests/test_score.py.
    """
    if hasattr(model, "get_base_model"):  # PEFT: the adapters live inside the wrapped model's modules
        model = model.get_base_model()
    text = model.config.get_text_config()
    scale = next((getattr(text, k) for k in ("logit_scale", "output_multiplier", "lm_head_multiplier")
                  if getattr(text, k, None) is not None), None)
    if scale is None and getattr(text, "logits_scaling", None) is not None:
        scale = text.logits_scaling if text.model_type == "hyperclovax" else 1 / text.logits_scaling
    softcap = getattr(text, "final_logit_softcapping", None)
    return model.base_model, model.get_output_embeddings(), (1.0 if scale is None else scale), softcap


class Scorer:
    """Runs work items of `plan` through one model; `sums`/`counts`/`prefix` are indexed by segment.

    `prefix[seg]` holds the running sums (float64) of the segment's per-token log-probs, so the
    sum over its first k scored tokens is `prefix[seg][k - 1]` (LD-DPO's shared part: `shared_sum`).
    """

    def __init__(self, model, n_segments: int, head_chunk: int = 512):
        import torch

        self.body, self.head, self.scale, self.softcap = backbone_and_head(model)
        self.device = self.head.weight.device
        self.head_chunk = head_chunk
        self.sums = torch.zeros(n_segments, dtype=torch.float64)
        self.counts = torch.zeros(n_segments, dtype=torch.long)
        self.prefix: list = [None] * n_segments

    def shared_sum(self, seg: int, k: int) -> float | None:
        """Sum of log p over the first `k` scored tokens of segment `seg` (None when k == 0)."""
        return float(self.prefix[seg][k - 1]) if k > 0 else None

    def run(self, item, pairs) -> None:
        if item[0] == "prefix":
            _, i, s = item
            self._shared(2 * i, *pairs[i], s)
        else:
            self._batch(item[1])

    def _tensor(self, ids):
        import torch

        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def _shared(self, seg: int, chosen: Sequence, rejected: Sequence, s: int) -> None:
        """The common prefix once, then each tail on its own copy of the prefix's KV cache."""
        import torch

        out = self.body(input_ids=self._tensor(chosen.ids[:s]), use_cache=True)
        for k, seq in enumerate((chosen, rejected)):
            hidden = out.last_hidden_state[0]
            if len(seq.ids) > s:
                cache = copy.deepcopy(out.past_key_values) if k == 0 else out.past_key_values
                tail = self.body(input_ids=self._tensor(seq.ids[s:]), past_key_values=cache, use_cache=True)
                hidden = torch.cat([hidden, tail.last_hidden_state[0]])
            self._add(seg + k, hidden, seq)

    def _batch(self, batch: list[tuple[int, Sequence]]) -> None:
        """Sequences (longest first) padded on the right to one (B, L) tensor, run without a mask."""
        import torch

        width = len(batch[0][1].ids)
        ids = torch.zeros((len(batch), width), dtype=torch.long)  # pad id is irrelevant: never attended
        for b, (_, seq) in enumerate(batch):
            ids[b, :len(seq.ids)] = torch.tensor(seq.ids)
        hidden = self.body(input_ids=ids.to(self.device), use_cache=False).last_hidden_state
        for b, (seg, seq) in enumerate(batch):
            self._add(seg, hidden[b], seq)

    def _add(self, seg: int, hidden, seq: Sequence) -> None:
        """Sum log p of seq's scored tokens; hidden[t - 1] predicts seq.ids[t]."""
        import torch

        rows = torch.tensor([t - 1 for t in seq.scored], dtype=torch.long, device=self.device)
        targets = torch.tensor([seq.ids[t] for t in seq.scored], dtype=torch.long, device=self.device)
        total, chunks = 0.0, []
        for i in range(0, len(rows), self.head_chunk):
            logps = self._logps(hidden[rows[i:i + self.head_chunk]], targets[i:i + self.head_chunk]).double()
            total += logps.sum()  # the sum exactly as before; the prefix sums ride along (no extra pass)
            chunks.append(logps)
        self.sums[seg] = float(total)
        self.counts[seg] = len(rows)
        self.prefix[seg] = torch.cat(chunks).cumsum(0).cpu() if chunks else torch.zeros(0, dtype=torch.float64)

    def _logps(self, h, targets):
        """(n, d) hidden states -> (n,) fp32 log-probs of `targets`, projecting only these rows."""
        import torch

        logits = self.head(h).float() * self.scale
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        # TRL's `selective_log_softmax` (trl/trainer/utils.py, 1.16) computes the same formula, but in fp32
        # it takes logsumexp row by row in a Python loop: other last bits than this one batched call
        # (up to 9.5e-6 nats in a summed log-prob of the demo's held-out pairs, which moved every number
        # downstream: the demo's held-out mean γ by up to 6e-5), so curation and training keep this line.
        return logits.gather(-1, targets[:, None])[:, 0] - logits.logsumexp(-1)
