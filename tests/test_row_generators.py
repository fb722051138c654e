"""Per-row random sources: a batch sampled with RowGenerators(seeds) gives, row by row, the tokens of single runs
seeded seeds[i] (the reference: those runs, one by one)."""

import pytest
import torch
from conftest import tiny_model

from axw import GenerationConfig, RowGenerators


@pytest.mark.parametrize("settings", [
    dict(temperature=1.0),
    dict(temperature=0.8, filter_logits_fn=["top_p"], filter_kwargs=[dict(thres=0.9)]),
    dict(temperature=1.2, xtc_threshold=0.05, xtc_probability=0.5),
    dict(temperature=1.0, mirostat_tau=3.0),
])
def test_each_row_draws_what_a_run_of_its_own_seed_draws(settings):
    model = tiny_model(seed=3).eval()
    prompt = torch.tensor([[5, 9, 2, 7]])
    seeds = [11, 12, 13, 40, 2**62]
    batch = model.generate(prompt.expand(len(seeds), -1), 12, GenerationConfig(**settings),
                           generator=RowGenerators(seeds))
    for i, seed in enumerate(seeds):
        alone = model.generate(prompt, 12, GenerationConfig(**settings, seed=seed))
        assert batch[i].tolist() == alone[0].tolist()
    # the same batch with one generator shared: rows draw one stream between them, not their own
    shared = model.generate(prompt.expand(len(seeds), -1), 12, GenerationConfig(**settings, seed=seeds[0]))
    assert shared[1:].tolist() != batch[1:].tolist()


def test_row_generators_are_checked():
    model = tiny_model().eval()
    prompt = torch.tensor([[5, 9, 2]])
    with pytest.raises(ValueError, match="one seed per row: 2 seeds for 3 rows"):
        model.generate(prompt.expand(3, -1), 4, temperature=1.0, generator=RowGenerators([1, 2]))
    with pytest.raises(ValueError, match="seed"):
        RowGenerators([1, -2])
    with pytest.raises(ValueError, match="none"):
        RowGenerators([])
    with pytest.raises(ValueError, match="generator must be"):
        model.generate(prompt, 4, temperature=1.0, generator=[1, 2])
