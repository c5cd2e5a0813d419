"""Option scoring: mean log-probability of each option's tokens, computing only what is needed.

- Shared single-token options (sst2, rte, cb, ...): one forward over the left-padded prompts with
  `logits_to_keep=1`; the options are read off the log-softmax at the last position.
- Otherwise (copa, custom multi-token words, or a tokenizer that merges the option into the
  prompt's last token): one forward per (example, option) sequence,
  left-padded so all options end at the same column, with `logits_to_keep = max option length
  + 1`: logits exist only for the positions that predict option tokens.
Never a full-vocabulary logit tensor for every position.

`copies=P` scores P copies of the batch in one forward (rows copy-major: [P * N, ...]); with
`runtime.SparseModel.perturbed` each copy sees its own sparse values, which is how a ZO step
evaluates its +eps z and -eps z points in one pass. Tensors are built on the model's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core import progress
from .tasks import Example

MAX_PROMPT_TOKENS = 1024


@dataclass
class Encoded:
    """Token ids of one example.

    Attributes:
        prompt: enc(prompt).
        options: Per option, the trailing tokens of enc(prompt + option) that the option adds.
        label: Index of the right option.
        contexts: Per option, the tokens before them (enc(prompt + option) minus the trailing
            tokens); equal to `prompt` unless the tokenizer merges across the boundary.
    """

    prompt: list[int]
    options: list[list[int]]
    label: int
    contexts: list[list[int]] | None = None

    def __post_init__(self) -> None:
        if self.contexts is None:
            self.contexts = [self.prompt] * len(self.options)


def encode(tokenizer, examples: list[Example], max_prompt_tokens: int = MAX_PROMPT_TOKENS) -> list[Encoded]:
    """Tokenize each prompt + option together and take the option's tokens from the end (MeZO).

    Tokenizing an option apart from its prompt is wrong for SentencePiece-style tokenizers
    (Llama-2, Mistral): `" terrible"` alone becomes `['▁', '▁terrible']`, inside the sentence
    `['▁terrible']`. The option's length is len(enc(prompt + option)) - len(enc(prompt)).
    Long contexts are cut from the left so the answer position is kept.
    """
    if not examples:  # e.g. --dev-samples 0 (tokenizers refuse an empty batch)
        return []
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=True)["input_ids"]
    fulls = tokenizer([e.prompt + o for e in examples for o in e.options], add_special_tokens=True)["input_ids"]
    out, k = [], 0
    for ex, ids in zip(examples, prompts):
        opts, ctxs = [], []
        for _ in ex.options:
            full = fulls[k]
            k += 1
            n = len(full) - len(ids)
            if n < 1:  # an empty option (or one the tokenizer swallowed): score end-of-sequence
                opts.append([tokenizer.eos_token_id])
                ctxs.append(full[-max_prompt_tokens:])
            else:
                opts.append(full[-n:])
                ctxs.append(full[:-n][-max_prompt_tokens:])
        out.append(Encoded(ids[-max_prompt_tokens:], opts, ex.label, ctxs))
    return out


def pad_id_of(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its eos token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a [N, T] id tensor and its [N, T] attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        attn[i, width - len(s):] = 1
    return ids, attn


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _forward(model, ids: torch.Tensor, attn: torch.Tensor, keep: int, copies: int = 1) -> torch.Tensor:
    """Logits of the last `keep` positions [copies * N, keep, V], with positions counted past the
    padding; the [N, T] ids are repeated `copies` times (copy-major) on the model's device."""
    device = _device(model)
    ids, attn = ids.to(device).repeat(copies, 1), attn.to(device).repeat(copies, 1)  # [copies * N, T]
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)  # [copies * N, T]
    out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids, logits_to_keep=keep, use_cache=False)
    return out.logits


def shared_single_token(batch: list[Encoded]) -> bool:
    """True when every example has the same options, each one token right after the whole prompt."""
    first = batch[0].options
    return (all(len(o) == 1 for o in first) and all(e.options == first for e in batch)
            and all(c == e.prompt for e in batch for c in e.contexts))


@torch.no_grad()
def option_scores(model, batch: list[Encoded], pad_id: int, copies: int = 1) -> torch.Tensor:
    """Mean log-probability of each option's tokens given the prompt.

    Args:
        model: A transformers causal LM.
        batch: Encoded examples.
        pad_id: Padding token id.
        copies: Score this many copies of the batch in one forward (see the module doc).

    Returns:
        [copies * B, max options] fp32 scores on the CPU (copy-major); -inf where an example
        has fewer options.
    """
    if shared_single_token(batch):
        ids, attn = _left_pad([e.prompt for e in batch], pad_id)  # [B, T]
        logp = _forward(model, ids, attn, 1, copies)[:, -1, :].float().log_softmax(-1)  # [copies * B, V]
        opts = torch.tensor([o[0] for o in batch[0].options], device=logp.device)  # [O]
        return logp[:, opts].cpu()  # [copies * B, O]
    pairs = [(b, j) for b, e in enumerate(batch) for j in range(len(e.options))]
    seqs = [batch[b].contexts[j] + batch[b].options[j] for b, j in pairs]
    lens = torch.tensor([len(batch[b].options[j]) for b, j in pairs])  # [N]
    width = int(lens.max())
    ids, attn = _left_pad(seqs, pad_id)  # [N, T]
    logits = _forward(model, ids, attn, width + 1, copies)[:, :-1, :]  # [copies * N, L, V]: predicts the last L tokens
    logp = logits.float().log_softmax(-1)
    targets = ids[:, -width:].to(logp.device).repeat(copies, 1)  # [copies * N, L]
    token_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()  # [copies * N, L]
    valid = torch.arange(width).unsqueeze(0) >= (width - lens).unsqueeze(1)  # [N, L]
    per_seq = ((token_lp.view(copies, len(pairs), width) * valid).sum(-1) / lens).view(-1)  # [copies * N]
    n_opts = max(len(e.options) for e in batch)
    scores = torch.full((copies * len(batch), n_opts), -math.inf)
    for c in range(copies):
        for k, (b, j) in enumerate(pairs):
            scores[c * len(batch) + b, j] = per_seq[c * len(pairs) + k]
    return scores


def _longest(e: Encoded) -> int:
    """Tokens of the example's longest scored sequence (the prompt when options follow it directly)."""
    return max([len(e.prompt)] + [len(c) + len(o) for c, o in zip(e.contexts, e.options)])


def micro_batches(batch: list[Encoded], size: int | None = None, *, tokens: int | None = None) -> list[list[Encoded]]:
    """Split `batch` into forwards of similar length: at most `size` examples each, or as many as
    fit `tokens` padded tokens per copy (neither: one forward).

    Sorting by length first means each forward pads to its own longest example, not the batch's.
    A token budget adapts to the task: ~4 SST-2 sentences fit where one BoolQ passage does.
    """
    if size is None and tokens is None:
        return [batch]
    if size is not None and size >= len(batch):
        return [batch]
    ordered = sorted(batch, key=_longest)  # stable: equal lengths keep batch order
    if size is not None:
        return [ordered[i:i + size] for i in range(0, len(ordered), size)]
    parts: list[list[Encoded]] = []
    for e in ordered:  # ascending length: a row pads the forward to its own length
        if parts and (len(parts[-1]) + 1) * _longest(e) <= tokens:
            parts[-1].append(e)
        else:
            parts.append([e])  # a row longer than the budget gets a forward of its own
    return parts


def loss_sums(model, batch: list[Encoded], pad_id: int, copies: int = 1, micro_batch_size: int | None = None,
              micro_batch_tokens: int | None = None) -> list[float]:
    """Per copy, the sum over the batch of the cross-entropy over option scores (float64 sums).

    Args:
        model: A transformers causal LM (a `SparseModel.model` inside `perturbed` for P > 1).
        batch: Encoded examples.
        pad_id: Padding token id.
        copies: Copies of the batch scored in one forward.
        micro_batch_size: Examples per forward, grouped by similar length.
        micro_batch_tokens: Padded tokens per copy per forward, grouped by similar length (when
            no `micro_batch_size`; neither: the whole batch in one forward). The loss is the
            same sum; only float rounding differs.

    Returns:
        `copies` losses, copy order.
    """
    totals = [0.0] * copies
    for part in micro_batches(batch, micro_batch_size, tokens=micro_batch_tokens):
        scores = option_scores(model, part, pad_id, copies).double().view(copies, len(part), -1)  # [P, b, O]
        labels = torch.tensor([e.label for e in part])  # [b]
        totals = [t + float(F.cross_entropy(s, labels, reduction="sum")) for t, s in zip(totals, scores)]
    return totals


def loss_sum(model, batch: list[Encoded], pad_id: int) -> float:
    """Sum over the batch of the cross-entropy over option scores (float64 for reductions)."""
    return loss_sums(model, batch, pad_id)[0]


def predict(model, examples: list[Encoded], pad_id: int, batch_size: int = 16) -> list[int]:
    """argmax option per example, batched by similar length (order of `examples` kept)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt))
    preds = [0] * len(examples)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        scores = option_scores(model, [examples[i] for i in idx], pad_id)
        for i, p in zip(idx, scores.argmax(-1).tolist()):
            preds[i] = p
        progress.emit("eval", "step", min(start + batch_size, len(order)), len(order))  # the CLI prints a line now and then
    return preds


def metric_value(metric: str, preds: list[int], labels: list[int]) -> float:
    """accuracy, binary f1 (positive = 1) or macro_f1 over the classes present in labels or preds."""
    if not labels:
        return float("nan")
    if metric == "accuracy":
        return sum(p == y for p, y in zip(preds, labels)) / len(labels)

    def f1(cls: int) -> float:
        tp = sum(p == cls and y == cls for p, y in zip(preds, labels))
        fp = sum(p == cls and y != cls for p, y in zip(preds, labels))
        fn = sum(p != cls and y == cls for p, y in zip(preds, labels))
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0

    if metric == "f1":
        return f1(1)
    classes = sorted(set(labels) | set(preds))
    return sum(f1(c) for c in classes) / len(classes)
