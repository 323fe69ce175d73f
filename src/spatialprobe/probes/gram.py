"""Gram matrices of flattened tokens, accumulated shard by shard: what the `linear` probe's dual ridge needs.

The dual ridge (features d >= samples n) needs the samples only through their centered Gram matrix
Kc (train x train) and the centered cross Gram Ct (test x train):
    (x_t - m) . (x_j - m) = G_tj - mean_i G_ti - mean_i G_ij + mean(G),
with G the plain products, m the training mean. Products are taken of rows minus a fixed shift (the
first training shard's mean): centering does not depend on the shift, and the shift keeps a large
common offset (outlier channels of an LLM) from cancelling digits away in float64.

Memory: a panel of rows held in float64 (`panel_bytes`, default 6 GiB; at least one shard), one shard
of the source in its stored dtype, one float64 column chunk of it (`CHUNK_BYTES`) and the Gram
matrices. Every panel reads the training shards once more (only those up to the panel's end for the
training Gram, which is symmetric), so the reads grow as n^2 / panel size; the float64 copy of the
whole design is never made.
"""
from __future__ import annotations

import torch

from ..store.sources import TokenSource

PANEL_BYTES = 6 * 2**30
#: float64 bytes of one column chunk of a shard converted at once
CHUNK_BYTES = 2**27


def flat_rows(tokens: torch.Tensor) -> torch.Tensor:
    """Each image's tokens as one row [b, N * C], the layout of the `linear` probe (no copy)."""
    return tokens.reshape(len(tokens), -1)


def first_shard_mean(source: TokenSource) -> torch.Tensor:
    """The float64 mean row of the source's first shard: the shift the products are taken around."""
    first = next(iter(source.shards()))
    return flat_rows(first.tokens).to(torch.float64).mean(0)


def _panels(sources: list[TokenSource], shift: torch.Tensor, panel_bytes: int):
    """(source index, first row, float64 shifted rows) panels of whole shards, about `panel_bytes` each."""
    cap = max(1, panel_bytes // (8 * len(shift)))
    for which, source in enumerate(sources):
        panel, filled, start, row = None, 0, 0, 0
        for shard in source.shards():
            rows = flat_rows(shard.tokens)
            if panel is not None and filled + len(rows) > len(panel):
                yield which, start, panel[:filled]
                panel, filled, start = None, 0, row
            if panel is None:
                panel = torch.empty(max(cap, len(rows)), len(shift), dtype=torch.float64)
            panel[filled:filled + len(rows)] = rows  # cast on copy: one float64 copy of this panel only
            panel[filled:filled + len(rows)] -= shift
            filled += len(rows)
            row += len(rows)
        if panel is not None:
            yield which, start, panel[:filled]


def _products(panel: torch.Tensor, rows: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """panel @ (rows - shift)^T [P, b], converting `rows` to float64 one column chunk at a time."""
    out = torch.zeros(len(panel), len(rows), dtype=torch.float64)
    step = max(1, CHUNK_BYTES // (8 * max(1, len(rows))))
    for c in range(0, rows.shape[1], step):
        chunk = rows[:, c:c + step].to(torch.float64) - shift[c:c + step]
        out += panel[:, c:c + step] @ chunk.T
    return out


def centered_grams(train: TokenSource, test: TokenSource,
                   panel_bytes: int = PANEL_BYTES) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The training samples' centered Gram matrix [n, n], the centered cross Gram of the test samples
    [m, n] (both float64) and the number of features d, from the sources' flattened tokens."""
    shift = first_shard_mean(train)
    n, m = len(train), len(test)
    gram = torch.zeros(n, n, dtype=torch.float64)
    cross = torch.zeros(m, n, dtype=torch.float64)
    for which, start, panel in _panels([train, test], shift, panel_bytes):
        stop, column = start + len(panel), 0
        for shard in train.shards():
            if which == 0 and column >= stop:
                break  # the upper triangle follows by symmetry
            rows = flat_rows(shard.tokens)
            target = gram if which == 0 else cross
            target[start:stop, column:column + len(rows)] = _products(panel, rows, shift)
            column += len(rows)
        del panel  # before the next panel is allocated: one panel at a time
    gram = torch.tril(gram) + torch.tril(gram, -1).T
    return (*center(gram, cross), int(len(shift)))


def center(gram: torch.Tensor, cross: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram [n, n] and cross Gram [m, n] of samples taken around any common shift -> both around the
    training samples' own mean. Applied to rows and columns picked from centered ones (a bootstrap
    resample), it centers them on the resample's mean."""
    col_mean, total_mean = gram.mean(0), gram.mean()
    centered = gram - col_mean[:, None] - col_mean[None, :] + total_mean
    return centered, cross - cross.mean(1, keepdim=True) - col_mean[None, :] + total_mean
