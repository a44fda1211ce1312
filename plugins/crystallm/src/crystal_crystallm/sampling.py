"""Batched autoregressive sampling with a KV cache, temperature and top-k (as the reference's
``GPT.generate``, batched over samples).

All ``B`` prompts are decoded together, whatever their lengths: the common prefix of length
``p₀ = min pᵦ`` is run once (prefill), then one position ``t`` per step for the rows still
running; a row whose prompt is longer than ``t`` is *forced* to its prompt token instead of
the sampled one. Each step draws, for every running row,

    z = logits / temperature;  z_j = -inf unless j is among the top_k largest;  x_t ~ softmax(z)

(``greedy=True`` takes ``argmax z`` instead; ``<pad>`` is never drawn). A row ends when it
has generated two consecutive newlines (a blank line ends a CIF, as in the reference) and
is then dropped from the batch and from the cache; a row that fills the context without
ending is returned unfinished. Draws come from one ``torch.Generator``, so a seed fixes the
result.

Without the cache (``use_cache=False``) each step re-runs the whole prefix; both paths give
the same tokens up to floating-point round-off (tested with greedy decoding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crystal.errors import ConfigError
from crystal_crystallm.model import CrystaLLMNet

__all__ = ["sample_tokens"]


@torch.no_grad()
def sample_tokens(
    net: CrystaLLMNet,
    prompts: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    use_cache: bool = True,
    max_length: int | None = None,
    newline_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Complete ``prompts`` (lists of token ids) until a blank line or ``max_length`` tokens.

    Returns ``(ids, finished)``: ``ids`` ``(B, L)`` prompt + completion, right-padded with
    ``<pad>``; ``finished`` ``(B,)`` bool, ``False`` where the context ran out first.
    ``max_length`` defaults to the model's context.
    """
    if temperature <= 0:
        raise ConfigError(f"crystallm sampling: temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"crystallm sampling: top_k must be >= 1 or None, got {top_k}")
    context = net.cfg.block_size
    length = min(max_length or context, context)
    b = len(prompts)
    device = net.wte.weight.device
    if b == 0:
        return torch.zeros((0, length), dtype=torch.long, device=device), torch.zeros(0, dtype=torch.bool)
    plen = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)
    if int(plen.min()) < 1:
        raise ConfigError("crystallm sampling: empty prompt")
    if int(plen.max()) >= length:
        raise ConfigError(
            f"crystallm: prompt of {int(plen.max())} tokens leaves no room in the context of {length} tokens"
        )
    was_training = net.training
    net.eval()
    pad = net.pad_id
    seq = torch.full((b, length), pad, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        seq[i, : len(p)] = torch.as_tensor(list(p), dtype=torch.long, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    active = torch.arange(b, device=device)
    p0 = int(plen.min())
    cache = net.new_cache(b, length) if use_cache else None
    logits = net(seq[:, :p0], cache=cache, start=0)[:, -1]
    try:
        for t in range(p0, length):
            nxt = _choose(logits, temperature, top_k, generator, greedy, pad)
            forced = plen[active] > t
            nxt = torch.where(forced, seq[active, t], nxt)
            seq[active, t] = nxt
            ended = ~forced & (nxt == newline_id) & (plen[active] <= t - 1) & (seq[active, t - 1] == newline_id)
            finished[active[ended]] = True
            if t == length - 1:
                break
            if bool(ended.any()):
                keep = torch.nonzero(~ended).squeeze(1)
                active, nxt = active[keep], nxt[keep]
                if cache is not None:
                    cache = cache.select(keep)
                if active.numel() == 0:
                    break
            if cache is not None:
                logits = net(nxt[:, None], cache=cache, start=t)[:, -1]
            else:
                logits = net(seq[active, : t + 1])[:, -1]
    finally:
        net.train(was_training)
    return seq, finished.cpu()


def _choose(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
    greedy: bool,
    pad: int,
) -> torch.Tensor:
    """Next token per row of ``logits`` ``(A, V)`` → ``(A,)``."""
    z = logits.float() / temperature
    if pad < z.shape[-1]:  # released models (371 ids) have no <pad> logit
        z[:, pad] = -torch.inf
    if greedy:
        return z.argmax(dim=-1)
    if top_k is not None and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, -torch.inf)
    probs = torch.softmax(z, dim=-1)
    if generator is not None and generator.device != probs.device:
        # draw on the generator's device (the CPU for a CPU generator) for reproducibility
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
