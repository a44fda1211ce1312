"""The CrystaLLM network: a GPT-2-style decoder (nanoGPT layout, as the reference model).

For token ids ``x`` of shape ``(B, T)``::

    h⁰ = dropout(W_tok[x] + W_pos[0:T])                         (B, T, d)
    hˡ = hˡ⁻¹ + Attn(LN₁(hˡ⁻¹));  hˡ ← hˡ + MLP(LN₂(hˡ))        pre-LN blocks, l = 1 … n_layer
    logits = LN_f(hᴸ) W_tokᵀ                                     (B, T, V), weights tied

``Attn`` is causal multi-head self-attention (``n_head`` heads of ``d / n_head``, one fused
``c_attn`` projection to q, k, v, torch's ``scaled_dot_product_attention``, output projection
``c_proj``); ``MLP(h) = c_proj(GELU_tanh(c_fc(h)))`` with hidden width ``4d``. Initialisation as
GPT-2/nanoGPT: N(0, 0.02) for linear and embedding weights, N(0, 0.02/√(2·n_layer)) for the
residual projections, zero biases.

**KV cache.** ``forward(x, cache=cache, start=s)`` treats ``x`` as positions ``s … s+T-1``,
stores their keys and values in ``cache`` (:class:`KVCache`, per layer ``(B, H, T_max, d/H)``)
and attends over positions ``0 … s+T-1``; decoding one token then costs O(T) instead of the
O(T²) of re-running the prefix.

**Loss** (:meth:`CrystaLLMNet.training_loss`): next-token cross entropy over the non-padding
targets of a right-padded ``(B, L)`` id batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from crystal.config import StrictModel
from crystal.errors import ConfigError
from crystal_crystallm.vocab import PAD, REFERENCE_VOCAB_SIZE, TOKENS, VOCAB_SIZE

__all__ = ["CrystaLLMNet", "GPTConfig", "KVCache"]


class GPTConfig(StrictModel):
    """Architecture of the decoder. Defaults: ours (CPU-sized); the paper's small model is
    ``n_layer=8, n_head=8, n_embd=512, block_size=1024, dropout=0.1, bias=False, vocab_size=371``
    (25.4 M parameters), the large one ``n_layer=16, n_head=16, n_embd=1024, block_size=2048``."""

    block_size: int = Field(512, ge=8, description="context length, tokens")
    n_layer: int = Field(4, ge=1, description="transformer blocks")
    n_head: int = Field(4, ge=1, description="attention heads per block")
    n_embd: int = Field(128, ge=8, description="embedding width d")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout after the embeddings and on each residual branch")
    bias: bool = Field(True, description="biases in linear layers and layer norms")
    vocab_size: int = Field(
        VOCAB_SIZE,
        description=f"token ids: {VOCAB_SIZE} (ours, with <pad>) or {REFERENCE_VOCAB_SIZE} (the released models)",
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> GPTConfig:
        if self.n_embd % self.n_head:
            raise ConfigError(f"crystallm: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.vocab_size not in (VOCAB_SIZE, REFERENCE_VOCAB_SIZE):
            raise ConfigError(
                f"crystallm: vocab_size={self.vocab_size}; CrystaLLM vocabularies have {REFERENCE_VOCAB_SIZE} "
                f"(the released models) or {VOCAB_SIZE} (ours) tokens"
            )
        return self


@dataclass
class KVCache:
    """Keys and values of every layer for ``B`` sequences: ``k[l], v[l]`` are ``(B, H, T_max, d/H)``."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @classmethod
    def empty(cls, cfg: GPTConfig, batch: int, length: int, *, dtype: torch.dtype, device: torch.device) -> KVCache:
        shape = (batch, cfg.n_head, length, cfg.n_embd // cfg.n_head)
        return cls(
            k=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)],
            v=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)],
        )

    def select(self, rows: torch.Tensor) -> KVCache:
        """The cache of the sequences ``rows`` only (drops finished samples)."""
        return KVCache(k=[t.index_select(0, rows) for t in self.k], v=[t.index_select(0, rows) for t in self.v])


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with an optional KV cache."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None, start: int) -> torch.Tensor:
        """``x`` (B, T, d) at positions ``start … start+T-1`` → (B, T, d)."""
        b, t, d = x.shape
        h = self.n_head
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))  # (B, H, T, d/H)
        mask: torch.Tensor | None = None
        causal = True
        if cache is not None:
            ck, cv = cache
            ck[:, :, start : start + t] = k
            cv[:, :, start : start + t] = v
            k, v = ck[:, :, : start + t], cv[:, :, : start + t]
            if start > 0:
                causal = False
                if t > 1:  # query i (position start+i) sees keys 0 … start+i
                    mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
        # no dropout on the attention weights (the reference has it): on the CPU it forces
        # torch's math kernel with an explicit (B, H, T, T) mask, ~7x slower than flash attention
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        y = y.transpose(1, 2).contiguous().view(b, t, d)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """``c_proj(GELU_tanh(c_fc(h)))``, hidden width 4d."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LN transformer block: ``h + Attn(LN₁ h)``, then ``h + MLP(LN₂ h)``."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None, start: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, start)
        return x + self.mlp(self.ln_2(x))


class CrystaLLMNet(nn.Module):
    """The decoder (see the module docstring); ``training_loss`` is the :func:`fit_model` contract."""

    def __init__(self, cfg: GPTConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or GPTConfig()
        self.pad_id = TOKENS.index(PAD)  # a row of wte only in our vocabulary (vocab_size 375)
        self.vocab_size = cfg.vocab_size
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        """Parameters counted once (the tied embedding/head matrix once)."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int, length: int | None = None) -> KVCache:
        """An empty cache for ``batch`` sequences of up to ``length`` (default: the context) tokens."""
        p = self.wte.weight
        return KVCache.empty(self.cfg, batch, length or self.cfg.block_size, dtype=p.dtype, device=p.device)

    def forward(self, idx: torch.Tensor, *, cache: KVCache | None = None, start: int = 0) -> torch.Tensor:
        """Logits ``(B, T, V)`` for ids ``idx`` ``(B, T)`` at positions ``start … start+T-1``."""
        _, t = idx.shape
        if start + t > self.cfg.block_size:
            raise ConfigError(
                f"crystallm: sequence of {start + t} tokens exceeds the model's context of {self.cfg.block_size}"
            )
        pos = torch.arange(start, start + t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else (cache.k[i], cache.v[i]), start)
        return self.lm_head(self.ln_f(x))

    def training_loss(self, batch: Any) -> dict[str, torch.Tensor]:
        """Next-token cross entropy of a right-padded ``(B, L)`` id batch, padding ignored.

        Returns ``loss`` (mean over predicted tokens, nats), ``perplexity = exp(loss)`` and
        ``accuracy`` (fraction of next tokens predicted by the arg-max).
        """
        ids = batch[0] if isinstance(batch, tuple | list) else batch
        real = ids != self.pad_id
        length = int(real.sum(dim=1).max())  # trim columns that are padding in every row
        ids, real = ids[:, :length], real[:, :length]
        logits = self(ids[:, :-1])
        target = ids[:, 1:].masked_fill(~real[:, 1:], -100)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        with torch.no_grad():
            keep = target != -100
            acc = (logits.argmax(-1) == target)[keep].float().mean()
        return {"loss": loss, "perplexity": torch.exp(loss.detach()), "accuracy": acc}
