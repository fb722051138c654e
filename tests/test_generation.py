"""generate / stream / beam_search against independent references: full
recomputes, brute-force searches written here, and transformers' processors."""

import math

import pytest
import torch
from conftest import tiny_model

from axw import min_p, top_a, top_k, top_p


@torch.no_grad()
def greedy_by_recompute(net, prompt, n):
    seq = prompt.clone()
    for _ in range(n):
        nxt = net(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    return seq


@pytest.mark.parametrize("rotary", [False, True])
def test_greedy_equals_argmax_of_full_recomputes(rotary):
    model = tiny_model(rotary=rotary)
    prompt = torch.randint(0, 97, (3, 6))
    out = model.generate(prompt, 20, temperature=0.0)
    assert out.shape == (3, 26) and torch.equal(out[:, :6], prompt)
    assert torch.equal(out, greedy_by_recompute(model.net.eval(), prompt, 20))
    assert torch.equal(model.generate(prompt, 20, temperature=0.0, cache_kv=False), out)


def test_unbatched_prompt_and_zero_tokens(model):
    prompt = torch.randint(0, 97, (5,))
    out = model.generate(prompt, 4, temperature=0.0)
    assert out.shape == (9,) and torch.equal(out, greedy_by_recompute(model.net, prompt[None], 4)[0])
    assert torch.equal(model.generate(prompt, 0), prompt)


def test_sliding_window_decoding_past_max_seq_len():
    model = tiny_model(rotary=True, max_seq_len=12)
    prompt = torch.randint(0, 97, (2, 5))
    out = model.generate(prompt, 30, temperature=0.0)
    # the cached run agrees with the full (band-masked) forward at every step
    logits = model.net(out[:, :-1])
    assert torch.equal(logits[:, 4:].argmax(-1), out[:, 5:])


def test_absolute_positions_past_max_seq_len():
    model = tiny_model(max_seq_len=12)
    prompt = torch.randint(0, 97, (1, 5))
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(prompt, 9)
    # recomputing on the last max_seq_len tokens is allowed, as in x-transformers
    out = model.generate(prompt, 20, temperature=0.0, cache_kv=False)
    seq = prompt
    for _ in range(20):
        seq = torch.cat([seq, model.net(seq[:, -12:])[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("strategy", [dict(temperature=0.0), dict(beams=3), dict(penalty_alpha=0.6)])
def test_variable_length_prompts_equal_one_by_one(strategy):
    model = tiny_model(rotary=True)
    prompts = [torch.randint(1, 97, (n,)) for n in (3, 9, 1, 6)]
    out = model.generate(prompts, 12, **strategy)
    assert out.shape == (4, 9 + 12)
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], 12, **strategy)
        assert torch.equal(out[i, 9 - len(p):], alone[0]), i
        assert (out[i, : 9 - len(p)] == model.pad_value).all()


def test_prompt_lens_takes_right_padded_rows(model):
    a, b = torch.randint(1, 97, (7,)), torch.randint(1, 97, (4,))
    rows = torch.zeros(2, 7, dtype=torch.long)
    rows[0], rows[1, :4] = a, b
    out = model.generate(rows, 5, temperature=0.0, prompt_lens=torch.tensor([7, 4]))
    assert torch.equal(out[1, 3:], model.generate(b, 5, temperature=0.0))
    assert torch.equal(out[0], model.generate(a, 5, temperature=0.0))


def test_eos_stops_rows_and_pads_after():
    model = tiny_model()
    prompt = torch.randint(0, 97, (4, 3))
    free = model.generate(prompt, 15, temperature=0.0)
    eos = int(free[0, 6])  # a token row 0 emits at its 4th step
    out = model.generate(prompt, 15, temperature=0.0, eos_token=eos)
    assert out.shape == free.shape
    for row_free, row in zip(free, out):
        gen_free, gen = row_free[3:], row[3:]
        hits = (gen_free == eos).nonzero()
        stop = int(hits[0]) + 1 if len(hits) else 15
        assert torch.equal(gen[:stop], gen_free[:stop])
        assert (gen[stop:] == model.pad_value).all()
    # the loop ends as soon as every row has stopped
    steps = list(model.stream(prompt[:1], 15, temperature=0.0, eos_token=eos))
    assert len(steps) == 4 and bool(steps[-1].finished.all())


def test_seed_reproduces_and_generator_is_respected(model):
    prompt = torch.randint(0, 97, (2, 4))
    a = model.generate(prompt, 30, seed=7)
    assert torch.equal(a, model.generate(prompt, 30, seed=7))
    assert not torch.equal(a, model.generate(prompt, 30, seed=8))
    g = torch.Generator().manual_seed(7)
    assert torch.equal(a, model.generate(prompt, 30, generator=g))


def test_sampling_follows_the_filtered_distribution():
    """Token frequencies at one step match softmax(top_k(logits) / T)."""
    model = tiny_model(num_tokens=11)
    prompt = torch.randint(0, 11, (1, 5))
    logits = model.net.eval()(prompt)[0, -1]
    expected = (top_k(logits[None], k=4) / 0.7).softmax(-1)[0]
    batch = prompt.repeat(4000, 1)
    first = model.generate(batch, 1, temperature=0.7, filter_kwargs=dict(k=4), seed=0)[:, -1]
    freq = torch.bincount(first, minlength=11).float() / 4000
    assert (freq[expected == 0] == 0).all()
    assert torch.allclose(freq, expected, atol=0.03)


def test_stream_yields_the_generated_tokens_and_stops_early():
    model = tiny_model().train()
    prompt = torch.randint(0, 97, (2, 4))
    full = model.generate(prompt, 10, seed=3)
    assert model.training  # generate restores the mode
    steps = list(model.stream(prompt, 10, seed=3))
    assert torch.equal(torch.stack([s.tokens for s in steps], 1), full[:, 4:])
    assert torch.equal(steps[-1].sequences, full[:, 4:])
    it = model.stream(prompt, 10, seed=3)
    first = next(it)
    assert not model.training
    it.close()  # the caller stops: mode restored, nothing else runs
    assert model.training and torch.equal(first.tokens, full[:, 4])


def test_an_empty_cache_given_to_a_run_is_filled_as_the_runs_own():
    """A run given an empty KV cache (to keep it for branches) reserves the room its own cache would have had: the
    buffers are allocated once and never moved as the text grows, and the trace is bit for bit the run's without
    one."""
    model = tiny_model()
    prompt = torch.randint(0, 97, (1, 5))
    alone = list(model.stream(prompt, 12, temperature=0.9, seed=2, trace=True))
    cache = model.net.new_cache()
    steps = model.stream(prompt, 12, temperature=0.9, seed=2, trace=True, cache=cache)
    first = next(steps)
    buffer = cache.k.data_ptr()
    given = [first, *steps]
    assert cache.k.data_ptr() == buffer and cache.capacity >= 5 + 12
    for a, b in zip(alone, given, strict=True):
        assert torch.equal(a.tokens, b.tokens)
        assert all(torch.equal(p, q) for p, q in zip(a.trace.probs, b.trace.probs, strict=True))
        assert torch.equal(a.trace.chosen_prob, b.trace.chosen_prob)


# --- filters against transformers' warpers ---

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import (  # noqa: E402
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


def kept(logits):
    return torch.isfinite(logits)


@pytest.mark.parametrize("seed", range(5))
def test_filter_kept_sets_equal_transformers(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, 300, generator=g) * (1 + seed)
    for k in (1, 5, 50, 300):
        assert torch.equal(kept(top_k(logits, k=k)), kept(TopKLogitsWarper(k)(None, logits.clone())))
    for p in (0.05, 0.3, 0.9, 0.99, 1.0):
        assert torch.equal(kept(top_p(logits, thres=p)), kept(TopPLogitsWarper(p)(None, logits.clone())))
    for p in (0.0, 0.01, 0.1, 0.5, 1.0):
        assert torch.equal(kept(min_p(logits, min_p=p)), kept(MinPLogitsWarper(p)(None, logits.clone())))
    # x-transformers' default k is ceil(10% of the vocabulary)
    assert (kept(top_k(logits)).sum(-1) == 30).all()


@pytest.mark.parametrize("scale", [0.5, 2.0, 4.0, 8.0])
def test_top_p_over_a_large_vocabulary_equals_transformers(scale):
    """Past NUCLEUS_PROBE tokens top_p first looks for the nucleus among the most likely ones, and sorts the whole
    vocabulary only when a row's nucleus is larger: rows of both kinds in one batch, a batch of one, and logits
    already cut by top-k all keep what transformers' warper keeps."""
    from axw.filters import NUCLEUS_PROBE

    g = torch.Generator().manual_seed(int(scale * 10))
    vocab = 16 * NUCLEUS_PROBE
    logits = torch.randn(6, vocab, generator=g) * torch.tensor([scale, scale, 0.3, 8.0, scale, 1.0])[:, None]
    for p in (0.1, 0.5, 0.9, 0.95):
        for rows in (logits, logits[:1], logits[3:4], top_k(logits, k=200)):
            expected = kept(TopPLogitsWarper(p)(None, rows.clone()))
            assert torch.equal(kept(top_p(rows, thres=p)), expected)


def test_top_p_gives_each_row_of_a_batch_what_it_gives_the_row_alone():
    """Rows whose nucleus lies among the NUCLEUS_PROBE most likely tokens and rows whose nucleus does not, in one
    batch: each row's scores are, bit for bit, top_p's of that row alone (the rows of runs drawing together,
    `axw.sampling.Together`, rely on it), rows of several positions too."""
    from axw.filters import NUCLEUS_PROBE

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 16 * NUCLEUS_PROBE, generator=g) * torch.tensor([8.0, 0.3, 4.0, 0.5, 2.0, 1.0])[:, None]
    # a row whose cut at 0.9 found among the most likely tokens differs from a full sort's in its last token
    # (the two sum the probabilities in another order): beside a row that needs the sort, it keeps its own cut
    logits[0] = torch.randn(16 * NUCLEUS_PROBE, generator=torch.Generator().manual_seed(2672)) * 4.0
    for p in (0.5, 0.9, 0.95):
        together = top_p(logits, thres=p)
        for i in range(len(logits)):
            assert torch.equal(together[i:i + 1], top_p(logits[i:i + 1], thres=p)), (p, i)
        positions = top_p(logits.view(2, 3, -1), thres=p)
        assert torch.equal(positions.view(6, -1), together)


def test_top_a_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]])
    probs = logits.softmax(-1)[0]
    limit = probs.max() ** 2 * 0.2
    assert kept(top_a(logits, min_p_ratio=0.2))[0].tolist() == (probs >= limit).tolist()


def test_penalties_equal_transformers(model):
    ctx = torch.randint(0, 97, (3, 25))
    logits = torch.randn(3, 97)
    from axw.processors import NoRepeatNGram, RepetitionPenalty

    ours = RepetitionPenalty(1.3)(logits.clone(), ctx, None)
    assert torch.allclose(ours, RepetitionPenaltyLogitsProcessor(1.3)(ctx, logits.clone()))
    ctx[:, -2:] = ctx[:, 5:7]  # make a repeated bigram prefix
    for n in (1, 2, 3):
        ours = NoRepeatNGram(n)(logits.clone(), ctx, None)
        theirs = NoRepeatNGramLogitsProcessor(n)(ctx, logits.clone())
        assert torch.equal(kept(ours), kept(theirs)), n


def test_penalties_in_generate(model):
    prompt = torch.randint(0, 97, (2, 5))
    out = model.generate(prompt, 40, temperature=0.0, no_repeat_ngram_size=2)
    for row in out.tolist():
        grams = list(zip(row, row[1:]))
        assert len(grams) == len(set(grams))
    # repetition penalty by recompute
    out = model.generate(prompt, 10, temperature=0.0, repetition_penalty=2.0)
    from axw.processors import RepetitionPenalty

    seq = prompt
    for _ in range(10):
        logits = RepetitionPenalty(2.0)(model.net(seq)[:, -1], seq, None)
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_chained_filters_apply_in_order(model):
    prompt = torch.randint(0, 97, (1, 5))
    steps = list(model.stream(prompt, 3, filter_logits_fn=["top_k", top_p], filter_kwargs=[dict(k=30), dict(thres=0.5)],
                              trace=True, seed=0))
    logits = model.net(prompt)[0, -1]
    expected = top_p(top_k(logits[None], k=30), thres=0.5)
    t = steps[0].trace
    assert t.stages == ["model", "top_k", "top_p", "temperature"]
    assert int(t.kept[1][0]) == 30 and int(t.kept[2][0]) == int(kept(expected).sum())


# --- the trace ---


def test_trace_by_hand(model):
    prompt = torch.randint(0, 97, (1, 6))
    step = next(iter(model.stream(prompt, 1, temperature=0.5, filter_kwargs=dict(k=5), trace=True, seed=1)))
    t = step.trace.row(0)
    with torch.no_grad():
        logits = model.net(prompt)[0, -1]
    probs = logits.softmax(-1)
    top = probs.topk(10)
    assert t["candidates"] == top.indices.tolist()
    assert torch.allclose(torch.tensor(t["probs"]["model"]), top.values, atol=1e-6)
    final = (top_k(logits[None], k=5) / 0.5).softmax(-1)[0]
    assert torch.allclose(torch.tensor(t["probs"]["temperature"]), final[top.indices], atol=1e-6)
    assert t["kept"] == {"model": 97, "top_k": 5, "temperature": 5}
    assert t["chosen"] == int(step.tokens[0])
    assert t["chosen_rank"] == int((logits > logits[t["chosen"]]).sum())
    assert math.isclose(t["chosen_prob"], float(final[t["chosen"]]), rel_tol=1e-5)


# --- beam search ---


@torch.no_grad()
def brute_force_beam_search(net, prompt, steps, beams, eos=None, pad=0, length_penalty=0.0):
    """Keep the `beams` best hypotheses by summed log-prob, recomputing every
    hypothesis from scratch; finished ones carry over unchanged."""
    hyps = [(prompt.tolist(), 0.0, False)]
    for _ in range(steps):
        cands = []
        for tokens, score, done in hyps:
            if done:
                cands.append((tokens + [pad], score, True))
                continue
            logp = net(torch.tensor([tokens]))[0, -1].log_softmax(-1)
            for v in range(logp.shape[0]):
                cands.append((tokens + [v], score + float(logp[v]), v == eos))

        def rank(c):
            n = sum(1 for _ in c[0][len(prompt):])
            if c[2]:
                n = c[0][len(prompt):].index(eos) + 1
            return c[1] / n ** length_penalty if length_penalty else c[1]

        hyps = sorted(cands, key=rank, reverse=True)[:beams]
    return hyps, rank


@pytest.mark.parametrize("rotary", [False, True])
def test_beam_search_equals_brute_force(rotary):
    model = tiny_model(num_tokens=13, rotary=rotary)
    prompt = torch.randint(0, 13, (4,))
    beams, scores = model.beam_search(prompt, 5, beams=3, return_beams_and_scores=True)
    hyps, _ = brute_force_beam_search(model.net, prompt, 5, 3)
    assert beams.shape == (3, 9) and scores.shape == (3,)
    assert beams.tolist() == [h[0] for h in hyps]
    assert torch.allclose(scores, torch.tensor([h[1] for h in hyps]), atol=1e-4)
    assert torch.equal(model.generate(prompt, 5, beams=3), beams[0])
    assert torch.equal(model.beam_search(prompt, 5, beams=3, cache_kv=False), beams[0])


def test_beam_scores_are_recomputed_sequence_log_probs():
    model = tiny_model()
    prompt = torch.randint(0, 97, (2, 5))
    beams, scores = model.beam_search(prompt, 8, beams=4, return_beams_and_scores=True)
    assert beams.shape == (4, 2, 13) and scores.shape == (4, 2)
    assert (scores[:-1] >= scores[1:]).all()  # best first
    logp = model.net(beams.flatten(0, 1)[:, :-1]).log_softmax(-1)
    seq_logp = logp[:, 4:].gather(-1, beams.flatten(0, 1)[:, 5:, None]).sum((1, 2)).view(4, 2)
    assert torch.allclose(scores, seq_logp, atol=1e-4)


def test_beam_search_with_eos_and_length_penalty_equals_brute_force():
    model = tiny_model(num_tokens=7)
    prompt = torch.tensor([3, 1, 4])
    for eos, lp in [(2, 0.0), (2, 1.0), (5, 0.5)]:
        beams, scores = model.beam_search(prompt, 6, beams=3, eos_token=eos, length_penalty=lp,
                                          return_beams_and_scores=True)
        hyps, rank = brute_force_beam_search(model.net, prompt, 6, 3, eos=eos, pad=0, length_penalty=lp)
        assert beams.tolist() == [h[0] for h in hyps], (eos, lp)
        assert torch.allclose(scores, torch.tensor([rank(h) for h in hyps]), atol=1e-4)


def test_stochastic_beam_search_is_seeded_and_differs(model):
    prompt = torch.randint(0, 97, (1, 5))
    from axw.beam_search import gumbel_noise

    g = gumbel_noise(torch.zeros(20000), torch.Generator().manual_seed(0))  # Gumbel(0, 1): mean = Euler's gamma
    assert abs(float(g.mean()) - 0.5772) < 0.03 and abs(float(g.var()) - math.pi ** 2 / 6) < 0.1
    a = model.beam_search(prompt, 8, beams=3, stochastic=True, seed=1)
    assert torch.equal(a, model.beam_search(prompt, 8, beams=3, stochastic=True, seed=1))
    outs = {tuple(model.beam_search(prompt, 8, beams=3, stochastic=True, seed=s)[0].tolist()) for s in range(6)}
    assert len(outs) > 1


def test_beam_trace_shows_live_beams(model):
    prompt = torch.randint(0, 97, (1, 5))
    steps = list(model.stream(prompt, 4, beams=3, trace=True))
    last = steps[-1].trace.row(0)
    beams, scores = model.beam_search(prompt, 4, beams=3, return_beams_and_scores=True)
    assert sorted(map(tuple, last["beams"])) == sorted(map(tuple, beams[:, 0, 5:].tolist()))
    assert torch.equal(steps[-1].sequences, beams[0, :, 5:])


# --- contrastive search and contrastive decoding ---


def test_contrastive_search_alpha_zero_is_greedy(rotary_model):
    prompt = torch.randint(0, 97, (3, 5))
    assert torch.equal(rotary_model.generate(prompt, 15, penalty_alpha=0.0), rotary_model.generate(prompt, 15, temperature=0.0))


@torch.no_grad()
def contrastive_search_by_recompute(net, prompt, steps, alpha, k):
    seq = prompt.clone()
    for _ in range(steps):
        hidden = net(seq, return_embeddings=True)[0]
        probs = net.logits(hidden[-1]).softmax(-1)
        top_p_, top_i = probs.topk(k)
        scores = []
        for p, v in zip(top_p_, top_i):
            h = net(torch.cat([seq, v.view(1, 1)], 1), return_embeddings=True)[0, -1]
            penalty = torch.cosine_similarity(h[None], hidden, dim=-1).max()
            scores.append((1 - alpha) * p - alpha * penalty)
        seq = torch.cat([seq, top_i[torch.stack(scores).argmax()].view(1, 1)], 1)
    return seq


@pytest.mark.parametrize("alpha, k", [(0.6, 4), (0.3, 2), (1.0, 5)])
def test_contrastive_search_equals_recompute(alpha, k):
    model = tiny_model(rotary=True)
    prompt = torch.randint(0, 97, (1, 6))
    out = model.generate(prompt, 12, penalty_alpha=alpha, contrastive_k=k)
    assert torch.equal(out, contrastive_search_by_recompute(model.net, prompt, 12, alpha, k))


def test_contrastive_search_trace(rotary_model):
    prompt = torch.randint(0, 97, (1, 6))
    step = next(iter(rotary_model.stream(prompt, 1, penalty_alpha=0.5, contrastive_k=3, trace=True)))
    c = step.trace.row(0)["contrastive"]
    assert len(c["tokens"]) == 3
    best = max(range(3), key=lambda i: c["score"][i])
    assert c["tokens"][best] == int(step.tokens[0])
    for conf, pen, score in zip(c["confidence"], c["degeneration_penalty"], c["score"]):
        assert math.isclose(score, 0.5 * conf - 0.5 * pen, abs_tol=1e-6)


@pytest.mark.parametrize("alpha, beta", [(0.1, 0.5), (0.5, 1.0)])
def test_contrastive_decoding_greedy_by_recompute(alpha, beta):
    expert, amateur = tiny_model(seed=0, rotary=True), tiny_model(seed=1, rotary=True, depth=1)
    prompt = torch.randint(0, 97, (2, 5))
    out = expert.generate(prompt, 10, temperature=0.0, amateur_model=amateur,
                          contrastive_decode_kwargs=dict(alpha=alpha, beta=beta))
    seq = prompt
    with torch.no_grad():
        for _ in range(10):
            e, a = expert.net(seq)[:, -1], amateur.net(seq)[:, -1]
            plausible = e.softmax(-1) >= alpha * e.softmax(-1).max(-1, keepdim=True).values
            score = ((1 + beta) * e - beta * a).masked_fill(~plausible, -math.inf)
            seq = torch.cat([seq, score.argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_several_amateurs_each_with_its_own_cache():
    expert = tiny_model(seed=0, rotary=True)
    amateurs = [tiny_model(seed=1, rotary=True, depth=1), tiny_model(seed=2, rotary=True, depth=1)]
    prompt = torch.randint(0, 97, (1, 5))
    kw = [dict(alpha=0.1, beta=0.5), dict(alpha=0.2, beta=0.3)]
    cached = expert.generate(prompt, 8, temperature=0.0, amateur_model=amateurs, contrastive_decode_kwargs=kw)
    recomputed = expert.generate(prompt, 8, temperature=0.0, amateur_model=amateurs, contrastive_decode_kwargs=kw,
                                 cache_kv=False)
    assert torch.equal(cached, recomputed)
    # and the second amateur is applied on top of the first one's scores
    seq = prompt
    with torch.no_grad():
        for _ in range(8):
            e = expert.net(seq)[:, -1]
            for amateur, k in zip(amateurs, kw):
                plausible = e.softmax(-1) >= k["alpha"] * e.softmax(-1).max(-1, keepdim=True).values
                e = ((1 + k["beta"]) * e - k["beta"] * amateur.net(seq)[:, -1]).masked_fill(~plausible, -math.inf)
            seq = torch.cat([seq, e.argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached, seq)


# --- bad input ---


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompts=torch.zeros(1, 0, dtype=torch.long)), "n >= 1"),
        (dict(prompts=[]), "empty"),
        (dict(prompts=[torch.tensor([1]), torch.tensor([], dtype=torch.long)]), "non-empty"),
        (dict(prompts=torch.tensor([[1, 97]])), "vocabulary"),
        (dict(prompts=torch.tensor([[-1, 2]])), "vocabulary"),
        (dict(prompts=torch.tensor([[0.5]])), "integer"),
        (dict(seq_len=-1), "seq_len"),
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(filter_logits_fn="top_p", filter_kwargs=dict(thres=0.0)), "top_p"),
        (dict(filter_logits_fn="top_p", filter_kwargs=dict(thres=1.5)), "top_p"),
        (dict(filter_kwargs=dict(k=0)), "k must be"),
        (dict(filter_logits_fn="top_z"), "unknown filter"),
        (dict(filter_logits_fn="min_p", filter_kwargs=dict(min_p=2)), "min_p"),
        (dict(filter_logits_fn=["top_k", "top_p"], filter_kwargs=[dict(k=3)]), "filter_kwargs"),
        (dict(beams=0), "beams"),
        (dict(beams=200), "beams"),
        (dict(penalty_alpha=1.5), "penalty_alpha"),
        (dict(penalty_alpha=-0.1), "penalty_alpha"),
        (dict(contrastive_k=0), "contrastive_k"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
        (dict(eos_token=97), "eos_token"),
        (dict(beams=2, penalty_alpha=0.5), "cannot be combined"),
        (dict(amateur_model="other"), "vocabulary"),
    ],
)
def test_bad_generate_arguments_raise_before_compute(model, kwargs, match):
    kwargs = dict(kwargs)
    prompts = kwargs.pop("prompts", torch.tensor([[1, 2, 3]]))
    seq_len = kwargs.pop("seq_len", 5)
    if kwargs.get("amateur_model") == "other":
        kwargs["amateur_model"] = tiny_model(num_tokens=50)
    calls = []
    hook = model.net.attn_layers.register_forward_hook(lambda *a: calls.append(1))  # every pass runs the layers
    try:
        with pytest.raises(ValueError, match=match):
            model.generate(prompts, seq_len, **kwargs)
        assert not calls
    finally:
        hook.remove()


def test_bad_contrastive_decoding_kwargs(model):
    with pytest.raises(ValueError, match="alpha"):
        model.generate(torch.tensor([[1]]), 2, amateur_model=tiny_model(seed=3),
                       contrastive_decode_kwargs=dict(alpha=0.0, beta=0.5))


def test_a_stage_never_leaves_a_row_without_tokens():
    """Contrastive decoding at alpha 1 keeps only the expert's likeliest token;
    no-repeat size 1 would then often ban it, leaving nothing. That stage is
    skipped for the row, so the output is the expert's greedy text."""
    expert, amateur = tiny_model(seed=0, num_tokens=13), tiny_model(seed=1, num_tokens=13, depth=1)
    prompt = torch.randint(0, 13, (2, 4))
    out = expert.generate(prompt, 12, temperature=0.8, amateur_model=amateur, no_repeat_ngram_size=1,
                          contrastive_decode_kwargs=dict(alpha=1.0, beta=0.5), seed=0)
    assert torch.equal(out, expert.generate(prompt, 12, temperature=0.0))


# --- beam search: a beam of one, and stochastic beams against exact enumeration ---


def test_a_beam_of_one_is_greedy():
    model = tiny_model(rotary=True)
    prompt = torch.randint(0, 97, (3, 5))
    greedy = model.generate(prompt, 12, temperature=0.0)
    assert torch.equal(model.beam_search(prompt, 12, beams=1), greedy)
    assert torch.equal(model.beam_search(prompt, 12, beams=1, seed=1), model.beam_search(prompt, 12, beams=1, seed=2))


@torch.no_grad()
def sequence_probabilities(net, prompt, vocab):
    """p(a, b | prompt) for every 2-token continuation, by enumeration."""
    p1 = net(prompt[None])[0, -1].softmax(-1)
    table = torch.zeros(vocab, vocab)
    for a in range(vocab):
        p2 = net(torch.cat([prompt, torch.tensor([a])])[None])[0, -1].softmax(-1)
        table[a] = p1[a] * p2
    return table


def test_stochastic_beam_search_samples_sequences_without_replacement():
    """Kool et al. 2019: the first beam is a sample from the sequence
    distribution, the second a sample from it without the first."""
    vocab, runs = 4, 20000
    model = tiny_model(num_tokens=vocab, dim=16, seed=3).eval()
    with torch.no_grad():  # a sharper, lopsided distribution makes a biased sampler visible
        model.net.to_logits.weight.mul_(40)
    prompt = torch.tensor([1, 2])
    exact = sequence_probabilities(model.net, prompt, vocab).flatten()
    # rows of a batch are independent runs: one call draws them all
    beams, _ = model.beam_search(prompt.repeat(runs, 1), 2, beams=2, stochastic=True, seed=0,
                                 return_beams_and_scores=True)
    first = torch.bincount(beams[0, :, 2] * vocab + beams[0, :, 3], minlength=vocab * vocab).float()
    second = torch.bincount(beams[1, :, 2] * vocab + beams[1, :, 3], minlength=vocab * vocab).float()
    exact_second = torch.stack([(exact * exact[j] / (1 - exact)).sum() - exact[j] * exact[j] / (1 - exact[j])
                                for j in range(vocab * vocab)])
    for observed, expected in ((first / runs, exact), (second / runs, exact_second)):
        # sampling noise stays within 4.5 standard deviations of each cell's frequency
        bound = 4.5 * (expected * (1 - expected) / runs).sqrt() + 1e-3
        assert ((observed - expected).abs() <= bound).all(), (observed, expected)


# --- contrastive search never takes a banned token ---


@pytest.mark.parametrize("seed", range(4))
def test_contrastive_search_never_picks_a_banned_candidate(seed, monkeypatch):
    """With every earlier token banned (no-repeat size 1) and k as large as the
    vocabulary, the banned candidates (probability 0) are among those scored.
    A cosine penalty can be negative; here the least likely candidates get
    the most negative one, which makes a banned token the best scored. It
    must still lose."""
    from axw import contrastive_search

    real = contrastive_search.degeneration_penalty

    def lopsided(candidates, context, ok):
        penalty = real(candidates, context, ok)
        k = penalty.shape[-1]
        return penalty - 2 * torch.arange(k, dtype=penalty.dtype) / k  # the later (less likely), the lower

    monkeypatch.setattr(contrastive_search, "degeneration_penalty", lopsided)
    model = tiny_model(num_tokens=6, seed=seed, rotary=True)
    prompt = torch.tensor([[seed % 6]])
    out = model.generate(prompt, 5, penalty_alpha=0.9, contrastive_k=6, no_repeat_ngram_size=1)
    assert sorted(out[0].tolist()) == list(range(6))


# --- temperature without float64 (Apple's MPS has none) ---


class NoFloat64(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                raise AssertionError(f"{func} made a float64 tensor")
        return out


@pytest.mark.parametrize("temperature", [0.5, 1e-30, 1e-300, 1e30, 1e300])
def test_temperature_needs_no_float64_and_stays_finite(temperature):
    model = tiny_model(rotary=True)
    prompt = torch.randint(0, 97, (2, 4))
    with NoFloat64():
        steps = list(model.stream(prompt, 6, temperature=temperature, filter_kwargs=dict(k=20), trace=True, seed=0))
    for step in steps:
        for probs in step.trace.probs:
            assert torch.isfinite(probs).all()
    if temperature < 1e-20:  # as cold as it gets: the filtered argmax, which is greedy
        assert torch.equal(torch.stack([s.tokens for s in steps], 1), model.generate(prompt, 6, temperature=0.0)[:, 4:])


def test_contrastive_decoding_trace_by_hand():
    expert, amateur = tiny_model(seed=0, rotary=True), tiny_model(seed=1, rotary=True, depth=1)
    prompt = torch.randint(0, 97, (1, 5))
    step = next(iter(expert.stream(prompt, 1, temperature=0.0, amateur_model=amateur, trace=True,
                                   contrastive_decode_kwargs=dict(alpha=0.2, beta=0.7))))
    row = step.trace.row(0)
    cd = row["contrastive_decoding"]["contrastive_decoding"]
    with torch.no_grad():
        e, a = expert.net(prompt)[0, -1], amateur.net(prompt)[0, -1]
    cands = torch.tensor(row["candidates"])
    assert torch.allclose(torch.tensor(cd["expert"]), e.log_softmax(-1)[cands], atol=1e-5)
    assert torch.allclose(torch.tensor(cd["amateur"]), a.log_softmax(-1)[cands], atol=1e-5)
    plausible = e.softmax(-1) >= 0.2 * e.softmax(-1).max()
    assert cd["plausible"] == plausible[cands].tolist()
    score = 1.7 * e - 0.7 * a
    for i, token in enumerate(row["candidates"]):
        if cd["plausible"][i]:
            assert math.isclose(cd["score"][i], float(score[token]), rel_tol=1e-5)
    best = max((s, t) for s, t, ok in zip(cd["score"], row["candidates"], cd["plausible"]) if ok)[1]
    assert row["chosen"] == best


def test_one_uniform_draw_per_row_and_step():
    """Sampling takes exactly one uniform per row and step, by inverse
    transform, so runs with one seed share their random numbers."""
    from axw.generation import sample

    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.25, 0.25, 0.25, 0.25]])
    u = torch.rand((2, 1), generator=torch.Generator().manual_seed(3))
    expected = torch.searchsorted(probs.cumsum(-1), u, right=True)[:, 0]
    assert torch.equal(sample(probs, torch.Generator().manual_seed(3), logits=False), expected)
    draws = sample(probs[:1].repeat(20000, 1), torch.Generator().manual_seed(0), logits=False)
    assert torch.allclose(torch.bincount(draws, minlength=4).float() / 20000, probs[0], atol=0.012)
    # a filter that removes nothing leaves the sampled text unchanged under the same seed
    model = tiny_model(rotary=True)
    prompt = torch.randint(0, 97, (2, 4))
    assert torch.equal(model.generate(prompt, 12, filter_logits_fn=None, seed=5),
                       model.generate(prompt, 12, filter_logits_fn="top_k", filter_kwargs=dict(k=97), seed=5))
