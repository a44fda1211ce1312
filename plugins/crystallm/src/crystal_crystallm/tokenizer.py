"""CIF text ↔ CrystaLLM tokens ↔ integer ids, as the reference tokenizer splits text.

Tokenisation (the rules of the reference's ``CIFTokenizer.tokenize_cif``, our code):

1. a space-group symbol of the vocabulary that follows ``_symmetry_space_group_name_H-M``
   and spaces and ends its line becomes that symbol's space-group token (``Pm-3m`` →
   ``Pm-3m_sg``); a symbol the vocabulary lacks (P4_222, P6, P432 in the released models'
   vocabulary) stays text and is spelled with element and digit tokens;
2. then runs of spaces and tabs collapse to one space;
3. the text is scanned left to right: the longest vocabulary token that matches wins
   (``Ti0`` is ``Ti`` ``0``, ``_cell_length_a`` one token, ``Pm_sg`` one token); where none
   matches, a word (``\\w+``) or one of ``. , ; ! ?`` becomes ``<unk>``, and any other
   character (``#``, ``:``, ``*``, ``\\r`` …) is **dropped**, as the reference drops it.

Canonical CIFs (:mod:`crystal_crystallm.canonical`) contain no ``<unk>`` and round-trip
exactly: ``decode(encode(text)) == text``.

Two vocabularies (:mod:`crystal_crystallm.vocab`): the released models' 371 tokens
(``tokenizer(371)``, ids equal to the reference's) and ours, 375 (``tokenizer()``: the same
ids plus the three space groups the reference lacks and ``<pad>``). Decoding accepts every id
of ours in both (a released model never emits the extra ids).

Batched helpers: :meth:`CIFTokenizer.encode_batch` returns a right-padded ``(B, L)`` id
tensor; :meth:`CIFTokenizer.decode_batch` decodes rows of such a tensor (vectorised
look-up through a NumPy array of token texts).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch

from crystal.errors import ConfigError
from crystal_crystallm.vocab import ELEMENTS, PAD, REFERENCE_TOKENS, TEXTS, TOKENS, UNK

__all__ = ["CIFTokenizer", "tokenizer"]

_SG_TAG = "_symmetry_space_group_name_H-M"
_BLANKS = re.compile(r"[ \t]+")


def _alternation(words: Sequence[str]) -> str:
    """A regex alternation of ``words``, longest first (so the longest match wins)."""
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


class CIFTokenizer:
    """CrystaLLM's CIF tokenizer over ``tokens`` (a prefix of :data:`~crystal_crystallm.vocab.TOKENS`:
    the released models' 371 or our 375); stateless, use :func:`tokenizer`."""

    def __init__(self, tokens: Sequence[str] = TOKENS) -> None:
        tokens = tuple(tokens)
        if tokens != TOKENS[: len(tokens)] or UNK not in tokens:
            raise ConfigError("crystallm tokenizer: the vocabulary must be the reference's or ours")
        self.tokens: tuple[str, ...] = tokens
        self.texts: tuple[str, ...] = TEXTS
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        self.unk_id = self.token_to_id[UNK]
        self.pad_id = TOKENS.index(PAD)  # our padding id; never fed to a released model
        self.newline_id = self.token_to_id["\n"]
        self._texts = np.array(TEXTS, dtype=object)
        words = [t for t in tokens if t not in (UNK, PAD)]
        groups = [t.removesuffix("_sg") for t in words if t.endswith("_sg")]
        self.space_groups: frozenset[str] = frozenset(groups)
        self._sg = re.compile(rf"({re.escape(_SG_TAG)} *\b(?:{_alternation(groups)}))\n")
        self._scan = re.compile(rf"{_alternation(words)}|\w+|[.,;!?]")

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @cached_property
    def element_ids(self) -> dict[str, int]:
        """``{element symbol: token id}`` of the 89 elements in the vocabulary."""
        return {e: self.token_to_id[e] for e in ELEMENTS}

    # ------------------------------------------------------------------ text → ids
    def tokenize(self, text: str) -> list[str]:
        """Token names of ``text`` (``<unk>`` for words outside the vocabulary)."""
        return [self.tokens[i] for i in self.encode(text)]

    def encode(self, text: str) -> list[int]:
        """Ids of the tokens of ``text`` (rules 1–3 of the module docstring)."""
        text = _BLANKS.sub(" ", self._sg.sub(r"\1_sg\n", text))
        get, unk = self.token_to_id.get, self.unk_id
        return [get(piece, unk) for piece in self._scan.findall(text)]

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
        """``(B, L)`` long tensor of ids, right-padded with ``<pad>``; ``L`` = longest row.

        Raises :class:`~crystal.errors.ConfigError` naming the row when one is longer than
        ``max_length`` tokens.
        """
        rows = [self.encode(t) for t in texts]
        length = max((len(r) for r in rows), default=0)
        if max_length is not None and length > max_length:
            worst = max(range(len(rows)), key=lambda i: len(rows[i]))
            raise ConfigError(
                f"crystallm tokenizer: text {worst} has {len(rows[worst])} tokens, more than the "
                f"maximum of {max_length}"
            )
        out = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        return out

    # ------------------------------------------------------------------ ids → text
    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> str:
        """Text of ``ids`` (``<pad>`` decodes to nothing, space groups to their symbol)."""
        arr = np.asarray(ids.detach().cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= len(self.texts)):
            raise ConfigError(f"crystallm tokenizer: token ids must lie in 0–{len(self.texts) - 1}")
        return "".join(self._texts[arr].tolist())

    def decode_batch(self, ids: torch.Tensor) -> list[str]:
        """Texts of the rows of a ``(B, L)`` id tensor (padding dropped)."""
        arr = ids.detach().cpu().numpy()
        return ["".join(row) for row in self._texts[arr].tolist()]


_TOKENIZERS: dict[int, CIFTokenizer] = {}


def tokenizer(vocab_size: int = len(TOKENS)) -> CIFTokenizer:
    """The shared tokenizer of a model with ``vocab_size`` token ids: 375 (ours, the default) or
    371 (the released models); regular expressions are compiled once."""
    if vocab_size not in (len(TOKENS), len(REFERENCE_TOKENS)):
        raise ConfigError(
            f"crystallm tokenizer: no vocabulary of {vocab_size} tokens (the released models have "
            f"{len(REFERENCE_TOKENS)}, ours {len(TOKENS)})"
        )
    if vocab_size not in _TOKENIZERS:
        _TOKENIZERS[vocab_size] = CIFTokenizer(TOKENS[:vocab_size])
    return _TOKENIZERS[vocab_size]
