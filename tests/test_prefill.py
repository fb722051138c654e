"""`model.prefill`, a KV cache for a prefix as a run reads it, and `KVCache.crop`, a cache cut back to a
length: a run that continues from either gives the tokens of a run that never stopped."""

import pytest
import torch

from conftest import tiny_model


def test_a_run_continued_from_a_prefilled_cache_is_the_run_that_never_stopped(model):
    prompt = torch.tensor([[5, 9, 2, 6, 1], [3, 3, 8, 4, 7]])
    full = model.generate(prompt, 12, temperature=0.0)
    for n in (5, 9):  # the prompt alone, and the prompt with generated tokens
        cache = model.prefill(full[:, :n], prompt_len=5)
        assert cache.seq_length == n and cache.offset == 0
        assert torch.equal(model.generate(full[:, :n + 1], 11 - n + 5, temperature=0.0, cache=cache), full)
    one = model.prefill(full[0, :7])  # 1-D: one row
    assert one.seq_length == 7 and one.batch == 1
    assert torch.equal(model.generate(full[0, :8], 9, temperature=0.0, cache=one), full[0])


def test_prefill_cuts_a_long_prompt_as_a_run_does(rotary_model):
    model = rotary_model  # max_seq_len 64: the cache slides past it
    prompt = torch.randint(1, 97, (1, 80), generator=torch.Generator().manual_seed(0))
    full = model.generate(prompt, 10, temperature=0.0, restrict_to_max_seq_len=True)
    cache = model.prefill(full[:, :84], prompt_len=80)
    assert cache.offset == 80 - 64 and cache.seq_length == 84
    again = model.generate(full[:, :85], 5, temperature=0.0, restrict_to_max_seq_len=True, cache=cache)
    assert torch.equal(again, full)
    # the next position's logits are a full forward's over the window the run read
    hidden = model.net.decode(full[:, 84:85], model.prefill(full[:, :84], prompt_len=80))
    expected = model.net(full[:, 16:85])[:, -1]
    torch.testing.assert_close(model.net.logits(hidden[:, -1]), expected, atol=1e-4, rtol=0)


def test_prefill_refuses_bad_input_before_any_compute(model):
    ids = torch.tensor([[1, 2, 3]])
    for bad, match in [(dict(ids=torch.tensor([[1, 200]])), "outside the vocabulary"),
                       (dict(ids=torch.tensor([[1.0, 2.0]])), "integer tensor"),
                       (dict(ids=torch.zeros((1, 0), dtype=torch.long)), "at least one token"),
                       (dict(ids=ids, prompt_len=0), "prompt_len"), (dict(ids=ids, prompt_len=4), "prompt_len")]:
        with pytest.raises(ValueError, match=match):
            model.prefill(**bad)
    with pytest.raises(ValueError, match="absolute positions"):  # 64 positions at most, none cut from 10 prompt tokens
        model.prefill(torch.ones((1, 70), dtype=torch.long), prompt_len=10)


def test_crop_keeps_the_first_tokens_and_a_run_goes_on_from_there(model):
    prompt = torch.tensor([4, 8, 15, 16])
    cache = model.net.new_cache()
    full = model.generate(prompt, 10, temperature=0.0, cache=cache)
    assert cache.seq_length == 13  # the last token chosen is never read
    fork = cache.fork()
    fork.crop(7)
    assert fork.seq_length == 7 and cache.seq_length == 13
    assert torch.equal(model.generate(full[:8], 6, temperature=0.0, cache=fork), full)
    fork = cache.fork()
    fork.crop(-3)  # negative: that many from the end, as transformers' DynamicCache.crop
    assert fork.seq_length == 10
    assert torch.equal(model.generate(full[:11], 3, temperature=0.0, cache=fork), full)
    for bad in (14, -14, 2.5, True):
        with pytest.raises(ValueError):
            cache.fork().crop(bad)


def test_crop_refuses_below_the_cut_prompt_and_keys_the_window_discarded():
    model = tiny_model(rotary=True, max_seq_len=8).eval()
    prompt = torch.arange(1, 13)[None]
    cache = model.net.new_cache()
    model.generate(prompt, 30, temperature=0.0, cache=cache, restrict_to_max_seq_len=True)
    assert cache.offset == 4
    with pytest.raises(ValueError, match="cannot crop to 3 tokens"):
        cache.fork().crop(3)
    with pytest.raises(ValueError, match="discarded"):  # the sliding window compacted the early keys away
        cache.fork().crop(6)
