"""CIF text ↔ CrystaLLM tokens ↔ integer ids.

Tokenisation (the reference tokenizer's rules, our code):

1. runs of spaces and tabs collapse to one space;
2. the text after ``_symmetry_space_group_name_H-M`` + one space, up to the end of the line,
   is one space-group token when it is one of the 230 symbols;
3. everywhere else the longest vocabulary token that matches wins (keywords before element
   symbols before single characters, so ``Ti0`` is ``Ti`` ``0`` and ``_cell_length_a`` is one
   token);
4. a word (``\\w+``) or any other character no token matches becomes ``<unk>``.

Canonical CIFs (:mod:`crystal_crystallm.canonical`) contain no ``<unk>`` and round-trip
exactly: ``decode(encode(text)) == text``.

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
from crystal_crystallm.vocab import (
    DIGITS,
    ELEMENTS,
    KEYWORDS,
    PAD,
    SPACE_GROUP_SYMBOLS,
    SPACE_GROUP_TOKENS,
    SYMBOLS,
    TEXTS,
    TOKENS,
    UNK,
)

__all__ = ["CIFTokenizer", "tokenizer"]

_SG_KEY = "_symmetry_space_group_name_H-M "
_SPACES = re.compile(r"[ \t]+")


class CIFTokenizer:
    """CrystaLLM's CIF tokenizer (see the module docstring); stateless, use :func:`tokenizer`."""

    def __init__(self) -> None:
        self.tokens: tuple[str, ...] = TOKENS
        self.texts: tuple[str, ...] = TEXTS
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(TOKENS)}
        self.pad_id = self.token_to_id[PAD]
        self.unk_id = self.token_to_id[UNK]
        self.newline_id = self.token_to_id["\n"]
        self._texts = np.array(TEXTS, dtype=object)
        # text → id for plain tokens and for space-group symbols (which have their own ids)
        self._plain = {t: self.token_to_id[t] for t in (*ELEMENTS, *DIGITS, *KEYWORDS, *SYMBOLS)}
        self._sg = {s: self.token_to_id[t] for s, t in zip(SPACE_GROUP_SYMBOLS, SPACE_GROUP_TOKENS)}
        plain = sorted(self._plain, key=len, reverse=True)
        groups = sorted(SPACE_GROUP_SYMBOLS, key=len, reverse=True)
        self._pattern = re.compile(
            rf"(?<={re.escape(_SG_KEY)})(?P<sg>{'|'.join(map(re.escape, groups))})(?=\n|$)"
            rf"|(?P<tok>{'|'.join(map(re.escape, plain))})"
            r"|(?P<unk>\w+|.)",
            re.DOTALL,
        )

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @cached_property
    def element_ids(self) -> dict[str, int]:
        """``{element symbol: token id}`` of the 89 elements in the vocabulary."""
        return {e: self.token_to_id[e] for e in ELEMENTS}

    # ------------------------------------------------------------------ text → ids
    def tokenize(self, text: str) -> list[str]:
        """Token names of ``text`` (``<unk>`` for anything outside the vocabulary)."""
        return [self.tokens[i] for i in self.encode(text)]

    def encode(self, text: str) -> list[int]:
        """Ids of the tokens of ``text`` (spaces/tabs collapsed first)."""
        text = _SPACES.sub(" ", text)
        ids: list[int] = []
        plain, sg, unk = self._plain, self._sg, self.unk_id
        for m in self._pattern.finditer(text):
            kind = m.lastgroup
            if kind == "tok":
                ids.append(plain[m.group()])
            elif kind == "sg":
                ids.append(sg[m.group()])
            else:
                ids.append(unk)
        return ids

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
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ConfigError(f"crystallm tokenizer: token ids must lie in 0–{self.vocab_size - 1}")
        return "".join(self._texts[arr].tolist())

    def decode_batch(self, ids: torch.Tensor) -> list[str]:
        """Texts of the rows of a ``(B, L)`` id tensor (padding dropped)."""
        arr = ids.detach().cpu().numpy()
        return ["".join(row) for row in self._texts[arr].tolist()]


_TOKENIZER: CIFTokenizer | None = None


def tokenizer() -> CIFTokenizer:
    """The shared tokenizer (its regular expression is compiled once)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = CIFTokenizer()
    return _TOKENIZER
