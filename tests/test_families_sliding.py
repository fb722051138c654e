"""The KV cache of sliding-window layers (Mistral: every layer; Gemma 2 /
Gemma 3: sliding layers between global ones) keeps only their window, while
global layers keep every key: tiny random-weight models built with
transformers' own classes, compared with transformers on sequences several
windows long, with the sizes of the keys each layer holds and attends to
read from the cache itself."""

import pytest
import torch

from axw import AutoregressiveWrapper

transformers = pytest.importorskip("transformers")
from test_families import VOCAB, WINDOW, build, sequences  # noqa: E402
from test_families import one_thread  # noqa: E402,F401 (one thread here too)

PROMPT = 6
LONG = 50  # new tokens: 56 positions, seven windows, inside max_position_embeddings=64
BOUND = WINDOW + WINDOW // 4  # a sliding layer's buffer: its window and a quarter window of spare slots


@pytest.fixture(scope="module", params=["mistral", "gemma2", "gemma3_text"])
def pair(request, tmp_path_factory):
    hf = build(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return hf, AutoregressiveWrapper.from_pretrained(folder)


def sliding_layers(model) -> list[bool]:
    return [block.sliding for block in model.net.attn_layers.layers]


def recording(cache):
    """`cache`, recording per layer the most keys one query of a single-token step attended to."""
    attended = {}
    write = cache.write

    def write_and_record(layer, k, v):
        keys, values = write(layer, k, v)
        if k.shape[2] == 1:
            attended[layer] = max(attended.get(layer, 0), keys.shape[2])
        return keys, values

    cache.write = write_and_record
    return cache, attended


def assert_windows_kept(model, cache, attended=None):
    """Sliding layers hold at most the window's keys (in a buffer of BOUND slots); global layers every position."""
    sliding = sliding_layers(model)
    assert any(sliding)
    for layer, slides in enumerate(sliding):
        group, index = cache.layer_slot[layer]
        slots = cache.groups[group]
        assert 0 <= index < slots.k.shape[0] and slots.k.shape[0] == slots.v.shape[0]
        if slides:
            assert slots.window == WINDOW
            assert slots.live() <= WINDOW and slots.k.shape[3] <= BOUND and slots.v.shape[3] <= BOUND
            if attended is not None:
                assert attended[layer] == WINDOW  # the window, itself included
        else:
            assert slots.live() == cache.seen and slots.k.shape[3] >= cache.seen
            if attended is not None:
                assert attended[layer] == cache.seen
    if not all(sliding):
        # two groups: the sliding layers' buffers apart from the global ones
        assert len(cache.groups) == 2 and cache.groups[0].window != WINDOW


def test_long_greedy_matches_transformers_and_keeps_windows(pair):
    hf, model = pair
    x = sequences(PROMPT)
    cache, attended = recording(model.net.new_cache())
    ours = model.generate(x, LONG, temperature=0.0, cache=cache)
    theirs = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=LONG, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, theirs)
    assert cache.seen == PROMPT + LONG - 1  # the last token chosen is never fed
    assert_windows_kept(model, cache, attended)


def test_long_beam_search_matches_transformers_and_keeps_windows(pair, monkeypatch):
    hf, model = pair
    x = sequences(PROMPT)
    made = []

    def new_cache(capacity=0, new=model.net.new_cache):
        made.append(recording(new(capacity)))
        return made[-1][0]

    monkeypatch.setattr(model.net, "new_cache", new_cache)
    ours = model.beam_search(x, LONG, beams=4)
    theirs = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=LONG, do_sample=False, num_beams=4,
                         length_penalty=0.0, early_stopping=True, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, theirs)
    (cache, attended), = made
    assert cache.batch == 2 * 4
    assert_windows_kept(model, cache, attended)


def test_cached_decode_equals_full_forward_past_the_window(pair):
    """One token at a time, then chunks shorter and longer than the window,
    through the cache: the logits of a full forward, which masks the same
    window, and transformers'."""
    hf, model = pair
    net, x = model.net, sequences(PROMPT + LONG)
    with torch.no_grad():
        expected = hf(x).logits
        full = net(x)
        torch.testing.assert_close(full, expected, atol=1e-4, rtol=0)
        cache = net.new_cache()
        pieces, end = [], 0
        for size in [5] + [1] * 20 + [3, 13, 2, 1, 1, 11]:
            pieces.append(net.logits(net.decode(x[:, end:end + size], cache)))
            end += size
            if size == 1:
                assert_windows_kept(model, cache)
        assert end == x.shape[1]
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=0)


def test_rollback_is_exact_or_refused_and_forks_are_independent(pair):
    """Speculative decoding and the playground's branches roll caches back:
    the next logits then equal a full forward of the shorter text, or the
    rollback is refused (a sliding layer's keys it would need are gone) and
    nothing changed. A fork continues apart from its parent."""
    _, model = pair
    net, x = model.net, sequences(40)
    with torch.no_grad():
        cache = net.new_cache()
        for t in range(40):
            net.decode(x[:, t:t + 1], cache)
        done, refused = 0, 0
        for n in range(1, 12):
            fork = cache.fork()
            try:
                fork.rollback(n)
            except ValueError as error:
                assert "discarded" in str(error)
                assert fork.seen == 40 and [g.length for g in fork.groups] == [g.length for g in cache.groups]
                refused += 1
                continue
            done += 1
            step = net.logits(net.decode(x[:, 40 - n:41 - n], fork))[:, -1]
            torch.testing.assert_close(step, net(x[:, :41 - n])[:, -1], atol=1e-4, rtol=0)
        assert done and refused  # recent positions come back; older ones, past a compaction, do not
        # the parent is untouched by its forks and goes on as if they never were
        nxt = torch.randint(0, VOCAB, (2, 1))
        step = net.logits(net.decode(nxt, cache))[:, -1]
        torch.testing.assert_close(step, net(torch.cat((x, nxt), dim=1))[:, -1], atol=1e-4, rtol=0)


def test_strategies_that_crop_and_reorder_keep_greedy_tokens(pair):
    """Speculative decoding (the target rolls back rejected drafts, the
    drafter crops its own cache) and contrastive search (k candidates through
    the cache, one kept) on a run seven windows long."""
    _, model = pair
    x = sequences(PROMPT)
    plain = model.generate(x, LONG, temperature=0.0)
    assert torch.equal(model.generate(x, LONG, temperature=0.0, prompt_lookup_num_tokens=3), plain)
    assert torch.equal(model.generate(x, LONG, temperature=0.0, assistant_model=model, num_assistant_tokens=5),
                       plain)
    # contrastive search with penalty_alpha=0 is greedy search, through k parallel candidates per step
    assert torch.equal(model.generate(x, LONG, penalty_alpha=0.0, contrastive_k=3), plain)
    recomputed = model.generate(x, LONG, penalty_alpha=0.6, contrastive_k=3, cache_kv=False)
    assert torch.equal(model.generate(x, LONG, penalty_alpha=0.6, contrastive_k=3), recomputed)


def test_sliding_layers_memory_does_not_grow_with_the_text(pair):
    _, model = pair
    sizes = {}
    for new in (20, 50):
        cache = model.net.new_cache()
        model.generate(sequences(PROMPT), new, temperature=0.0, cache=cache)
        sizes[new] = [g.memory_bytes() for g in cache.groups]
    sliding = sliding_layers(model)
    if all(sliding):
        assert sizes[20] == sizes[50]
    else:
        assert sizes[20][1] == sizes[50][1] and sizes[20][0] < sizes[50][0]  # the global layers' grow
