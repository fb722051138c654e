"""One random source per batch row, so that a batch of sampled rows draws what each row would draw alone.

A run seeded `seed` draws its numbers from one `torch.Generator` seeded `seed`; a batch seeded that way shares one
generator between its rows, so row i's draws are not those of a run of its own. `RowGenerators(seeds)` gives row i
a generator seeded `seeds[i]`: pass it as `generate(..., generator=RowGenerators(...))` (with no `seed` in the
settings) and row i's tokens are those of a single run with `seed=seeds[i]`, the batch computed in one forward a
step. `uniform` is the draw every sampler makes through.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .utils import check_number


class RowGenerators:
    """A `torch.Generator` per batch row, row i seeded `seeds[i]` (each a whole number in [0, 2**63))."""

    def __init__(self, seeds, device="cpu"):
        seeds = [check_number(s, "seed", 0, 2**63, integer=True, high_open=True) for s in seeds]
        if not seeds:
            raise ValueError("RowGenerators needs one seed per row, got none")
        self.seeds, self.device = seeds, torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

    @classmethod
    def of(cls, generators: list) -> RowGenerators:
        """Row generators that are the given ones, row i drawing from `generators[i]` (a torch.Generator, or
        RowGenerators of one row): rows of several runs drawing together what each draws alone."""
        rows = cls.__new__(cls)
        rows.generators = [g.generators[0] if isinstance(g, RowGenerators) else g for g in generators]
        rows.seeds = [g.initial_seed() for g in rows.generators]
        rows.device = rows.generators[0].device
        return rows

    @staticmethod
    def check(generator, rows: int):
        """`generator`, or ValueError for RowGenerators whose seeds are not one per row of a batch of `rows`."""
        if isinstance(generator, RowGenerators) and len(generator) != rows:
            raise ValueError(f"RowGenerators give one seed per row: {len(generator)} seeds for {rows} rows")
        return generator

    def __len__(self) -> int:
        return len(self.generators)

    def rand(self, rows: int, cols: int = 1) -> Tensor:
        """(rows, cols) uniforms in [0, 1), row i from generator i: what torch.rand((1, cols)) draws alone."""
        if rows != len(self.generators):
            raise ValueError(f"a batch of {rows} rows drawing from {len(self.generators)} row generators: give one "
                             "seed per row")
        return torch.cat([torch.rand((1, cols), device=self.device, generator=g) for g in self.generators])

    def derived(self, salt: int) -> RowGenerators:
        """Row generators seeded `seed ^ salt`: a stream of their own beside these (XTC's coins)."""
        return RowGenerators([s ^ salt for s in self.seeds], self.device)


def uniform(rows: int, cols: int, device, generator) -> Tensor:
    """(rows, cols) uniforms in [0, 1) from `generator`: a torch.Generator (or None, torch's own), or
    `RowGenerators`, one per row."""
    if isinstance(generator, RowGenerators):
        return generator.rand(rows, cols).to(device)
    return torch.rand((rows, cols), device=device, generator=generator)
