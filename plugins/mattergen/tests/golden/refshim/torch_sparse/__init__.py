"""Pure-torch stand-in for the part of ``torch_sparse.SparseTensor`` microsoft/mattergen uses
(``GemNetT.get_triplets``): a COO matrix sorted by (row, col) and row selection with a
LongTensor. Used ONLY by ``make_golden.py`` when the compiled package is not installed.
"""

from __future__ import annotations

import torch

__version__ = "shim"


class _Storage:
    def __init__(self, row: torch.Tensor, col: torch.Tensor, value: torch.Tensor | None):
        self._row, self._col, self._value = row, col, value

    def row(self) -> torch.Tensor:
        return self._row

    def col(self) -> torch.Tensor:
        return self._col

    def value(self) -> torch.Tensor | None:
        return self._value


class SparseTensor:
    def __init__(self, row=None, col=None, value=None, sparse_sizes=None, is_sorted=False, **kwargs):
        n_rows, n_cols = (int(s) for s in sparse_sizes)
        key = row * n_cols + col
        if not is_sorted and key.numel() > 1 and bool((key[1:] < key[:-1]).any()):
            perm = key.argsort()
            row, col = row[perm], col[perm]
            value = value[perm] if value is not None else None
        self.storage = _Storage(row, col, value)
        self._sizes = (n_rows, n_cols)

    def to(self, *args, **kwargs) -> SparseTensor:
        return self

    def __getitem__(self, index: torch.Tensor) -> SparseTensor:
        row, col, value = self.storage.row(), self.storage.col(), self.storage.value()
        counts = torch.bincount(row, minlength=self._sizes[0])
        start = torch.cumsum(counts, 0) - counts
        n = counts[index]
        new_row = torch.repeat_interleave(torch.arange(index.numel(), device=row.device), n)
        offset = torch.arange(int(n.sum()), device=row.device) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        src = start[index][new_row] + offset
        out = SparseTensor.__new__(SparseTensor)
        out.storage = _Storage(new_row, col[src], value[src] if value is not None else None)
        out._sizes = (index.numel(), self._sizes[1])
        return out
