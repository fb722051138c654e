"""Speculative decoding: greedy output equal to the model's own greedy output,
token for token, and sampled output with exactly the model's distribution
(enumerated on a tiny vocabulary)."""

from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from axw import AutoregressiveWrapper, NgramDatastore, top_k
from axw.speculative import ASSISTANT, DATASTORE, TEXT

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "models"


def pair(vocab=97, rotary=True, max_seq_len=64):
    target = tiny_model(seed=0, num_tokens=vocab, rotary=rotary, max_seq_len=max_seq_len)
    draft = tiny_model(seed=1, num_tokens=vocab, rotary=rotary, max_seq_len=max_seq_len, depth=1, dim=16)
    return target, draft


@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("n_draft", [1, 4])
def test_greedy_equals_the_models_own_greedy(rotary, n_draft):
    target, draft = pair(rotary=rotary)
    prompts = [torch.randint(1, 97, (n,)) for n in (5, 9, 2)]  # different lengths: left padding
    plain = target.generate(prompts, 24, temperature=0.0)
    assert torch.equal(target.generate(prompts, 24, temperature=0.0, assistant_model=draft,
                                       num_assistant_tokens=n_draft), plain)
    assert torch.equal(target.generate(prompts, 24, temperature=0.0, prompt_lookup_num_tokens=n_draft), plain)
    # the target itself as its own draft accepts everything
    assert torch.equal(target.generate(prompts, 24, temperature=0.0, assistant_model=target,
                                       num_assistant_tokens=n_draft), plain)


def test_greedy_past_the_window_with_penalties_eos_and_the_heuristic_schedule():
    target, draft = pair(max_seq_len=16)  # rotary: the caches slide past 16 positions
    prompt = torch.randint(1, 97, (2, 6))
    kwargs = dict(temperature=0.0, repetition_penalty=1.3, no_repeat_ngram_size=3)
    plain = target.generate(prompt, 30, **kwargs)
    for extra in (dict(assistant_model=draft, num_assistant_tokens=4, num_assistant_tokens_schedule="heuristic"),
                  dict(assistant_model=draft, num_assistant_tokens=6, assistant_confidence_threshold=0.5),
                  dict(assistant_model=draft, num_assistant_tokens=2), dict(prompt_lookup_num_tokens=3)):
        assert torch.equal(target.generate(prompt, 30, **kwargs, **extra), plain), extra
    eos = int(plain[0, 12])
    plain = target.generate(prompt, 30, **kwargs, eos_token=eos)
    assert torch.equal(target.generate(prompt, 30, **kwargs, eos_token=eos, assistant_model=draft), plain)
    steps = list(target.stream(prompt[:1], 30, **kwargs, eos_token=eos, assistant_model=draft))
    assert int(steps[-1].tokens[0]) == eos and len(steps) == 7  # ends at EOS, as plain decoding does


def bundled(name):
    path = ASSETS / name
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"{name} is not bundled")
    return AutoregressiveWrapper.from_pretrained(path)


@pytest.fixture(scope="module")
def bundled_greedy():
    """The bundled expert, two prompts and its plain greedy continuation of them."""
    expert = bundled("shakespeare")
    prompts = [torch.tensor(expert.tokenizer.encode(text).ids) for text in ("ROMEO:\n", "First Citizen:\nWe are")]
    return expert, prompts, expert.generate(prompts, 80, temperature=0.0)


@pytest.mark.parametrize("drafter, extra", [
    ("shakespeare-draft", {}), ("shakespeare-tiny", {}), ("prompt lookup", {}),
    # the draft with prompt lookup beside it, both schedules
    ("shakespeare-draft", dict(assistant_lookup_ngram=2)),
    ("shakespeare-draft", dict(assistant_lookup_ngram=2, num_assistant_tokens_schedule="heuristic"))])
def test_greedy_on_the_bundled_models(bundled_greedy, drafter, extra):
    expert, prompts, plain = bundled_greedy
    kwargs = dict(prompt_lookup_num_tokens=5) if drafter == "prompt lookup" else dict(
        assistant_model=bundled(drafter), num_assistant_tokens=4, **extra)
    assert torch.equal(expert.generate(prompts, 80, temperature=0.0, **kwargs), plain)


@torch.no_grad()
def exact_distribution(net, prompt, n, vocab, k, temperature):
    """p(x1..xn | prompt) of every continuation under softmax(top_k(logits) / T)."""
    seqs = torch.cartesian_prod(*[torch.arange(vocab)] * n).reshape(-1, n)
    x = torch.cat([prompt.expand(len(seqs), -1), seqs], 1)
    logits = net(x[:, :-1])[:, prompt.shape[0] - 1:]
    probs = (top_k(logits.reshape(-1, vocab), k=k) / temperature).softmax(-1).reshape(len(seqs), n, vocab)
    return probs.gather(2, seqs[..., None])[..., 0].prod(1)


def frequencies(seqs, vocab, n):
    index = torch.zeros(len(seqs), dtype=torch.long)
    for i in range(n):
        index = index * vocab + seqs[:, i]
    return torch.bincount(index, minlength=vocab ** n).float() / len(seqs)


@pytest.mark.parametrize("close", [False, True])
def test_sampling_has_exactly_the_models_distribution(close):
    """Thousands of sampled continuations: each sequence's frequency matches
    its probability under the model (after top-k and temperature) within
    sampling noise, a bound the draft's own distribution would break. A close
    draft accepts most tokens (whole rounds and bonus tokens); a distant one
    rejects most (the residual draws)."""
    vocab, n, k, temperature = 5, 3, 4, 0.8
    target = tiny_model(seed=0, num_tokens=vocab, rotary=True, dim=16)
    draft = tiny_model(seed=5, num_tokens=vocab, rotary=True, dim=16, depth=2 if close else 1)
    with torch.no_grad():
        target.net.to_logits.weight.mul_(20)  # far from uniform
        if close:  # the target with a little noise
            draft.load_state_dict(target.state_dict())
            for p in draft.parameters():
                p.add_(torch.randn_like(p) * 0.1 * p.std())
        else:
            draft.net.to_logits.weight.mul_(20)
    prompt = torch.tensor([1, 3])
    exact = exact_distribution(target.net, prompt, n, vocab, k, temperature)
    drafts_own = exact_distribution(draft.net, prompt, n, vocab, k, temperature)
    kwargs = dict(temperature=temperature, filter_kwargs=dict(k=k), assistant_model=draft, num_assistant_tokens=3)
    samples = [target.generate(prompt.repeat(rows, 1), n, seed=seed, **kwargs)[:, 2:]
               for seed, rows in enumerate([16] * 150 + [500] * 4)]  # small batches go deep into rounds
    observed = frequencies(torch.cat(samples), vocab, n)
    runs = sum(len(s) for s in samples)
    bound = 4.5 * (exact * (1 - exact) / runs).sqrt() + 2e-3
    assert ((observed - exact).abs() <= bound).all(), (observed - exact).abs().max()
    if not close:  # the bound tells the draft's own distribution from the target's
        assert ((drafts_own - exact).abs() > 2 * bound).any()
    # and the acceptance rate behaves: close drafts are mostly accepted
    *_, last = target.stream(prompt.repeat(64, 1), n, **kwargs, seed=0)
    rate = last.stats.accepted / last.stats.drafted
    assert rate > 0.6 if close else rate < 0.9


def sharp_pair(vocab=4):
    """A target far from uniform on a tiny vocabulary, and a draft nearer uniform: in sampling, copies (a
    one-hot proposal) and the assistant's draws are both often rejected."""
    target = tiny_model(seed=2, num_tokens=vocab, rotary=True, dim=16)
    draft = tiny_model(seed=7, num_tokens=vocab, rotary=True, dim=16, depth=1)
    with torch.no_grad():
        target.net.to_logits.weight.mul_(20)
        draft.net.to_logits.weight.mul_(10)
    return target, draft


def sampled_like_the_model(target, prompt, n, vocab, **kwargs) -> bool:
    """Whether 4,000 continuations sampled with `kwargs` (250 seeds of 16 rows, temperature 1, no filter) fall
    within sampling noise of the target's exact distribution over the n-token sequences."""
    exact = exact_distribution(target.net, prompt, n, vocab, vocab, 1.0)
    samples = torch.cat([target.generate(prompt.repeat(16, 1), n, seed=s, temperature=1.0, filter_logits_fn=None,
                                         **kwargs)[:, len(prompt):] for s in range(250)])
    bound = 4.5 * (exact * (1 - exact) / len(samples)).sqrt() + 2e-3
    return bool(((frequencies(samples, vocab, n) - exact).abs() <= bound).all())


def test_sampling_with_prompt_lookup_has_the_models_distribution():
    target, _ = sharp_pair()
    prompt = torch.tensor([1, 2, 3, 1, 2])  # "1 2" recurs: lookup proposes "3 1 2"
    assert sampled_like_the_model(target, prompt, 3, 4, prompt_lookup_num_tokens=3)


def test_seeded_sampling_reproduces():
    target, draft = pair()
    prompt = torch.randint(1, 97, (3, 4))
    a = target.generate(prompt, 20, seed=4, assistant_model=draft, temperature=0.9)
    assert torch.equal(a, target.generate(prompt, 20, seed=4, assistant_model=draft, temperature=0.9))
    assert not torch.equal(a, target.generate(prompt, 20, seed=5, assistant_model=draft, temperature=0.9))


@pytest.mark.parametrize("settings", [
    dict(temperature=0.9, filter_logits_fn="top_p", filter_kwargs=dict(thres=0.8)),
    dict(temperature=0.7, filter_logits_fn=["top_k", "min_p"], filter_kwargs=[dict(k=20), dict(min_p=0.05)]),
    dict(temperature=1.1, dynatemp_range=0.5),
])
def test_checking_the_drafts_in_one_pipeline_call_changes_nothing(settings, monkeypatch):
    """Row-wise stages (temperature, the built-in filters) run over all the checked positions of a round at once;
    the text equals that of one call per position, with batched prompts of different lengths."""
    from axw.processors import Pipeline

    target, draft = pair()
    prompts = [torch.randint(1, 97, (n,)) for n in (3, 6, 4)]
    run = lambda: [target.generate(prompts, 24, seed=s, assistant_model=draft, num_assistant_tokens=4,  # noqa: E731
                                   **settings) for s in range(4)]
    answers = []
    row_wise = Pipeline.row_wise.fget
    monkeypatch.setattr(Pipeline, "row_wise", property(lambda self: answers.append(row_wise(self)) or answers[-1]))
    at_once = run()
    assert answers and all(answers)  # every round checked its drafts in one call
    monkeypatch.setattr(Pipeline, "row_wise", property(lambda self: False))
    for a, b in zip(at_once, run()):
        assert torch.equal(a, b)


def test_stages_that_read_the_text_or_draw_are_not_row_wise():
    from axw.generation_config import GenerationConfig
    from axw.processors import build_pipeline

    assert build_pipeline(GenerationConfig(temperature=0.8, filter_logits_fn="top_p")).row_wise
    for extra in (dict(repetition_penalty=1.2), dict(no_repeat_ngram_size=2), dict(xtc_probability=0.5),
                  dict(mirostat_tau=3.0), dict(filter_logits_fn=lambda logits: logits)):
        assert not build_pipeline(GenerationConfig(**dict(dict(temperature=0.8), **extra))).row_wise, extra


def test_the_trace_of_each_round():
    target, draft = pair()
    prompt = torch.randint(1, 97, (1, 5))
    steps = list(target.stream(prompt, 24, temperature=0.0, assistant_model=draft, num_assistant_tokens=4,
                               trace=True))
    plain = target.generate(prompt, 24, temperature=0.0)[0, 5:]
    rounds = {}
    for i, step in enumerate(steps):
        row = step.trace.row(0)
        spec = row["speculative"]
        rounds.setdefault(spec["round"], []).append((spec, int(step.tokens[0])))
        assert row["chosen"] == int(plain[i]) and row["step"] == i
        assert row["stages"][0] == "model"
    for spec_tokens in rounds.values():
        spec = spec_tokens[0][0]
        tokens = [t for _, t in spec_tokens]
        n = spec["n_accepted"]
        # the accepted drafts come first, then the model's own token
        assert tokens[:-1] == spec["drafted"][:len(tokens) - 1]
        assert spec["accepted"][:n] == [True] * n and (n == len(spec["drafted"]) or not spec["accepted"][n])
        assert tokens[-1] == spec["replacement"] or len(tokens) - 1 < n
        assert [s["position"] for s, _ in spec_tokens] == list(range(len(tokens)))
        assert all(0 <= p <= 1 for p in spec["draft_probs"] + spec["model_probs"])
    assert 0 <= steps[-1].trace.row(0)["speculative"]["acceptance_rate"] <= 1


def test_bad_drafts_and_combinations_are_refused_before_compute():
    target, _ = pair()
    calls = []
    hook = target.net.attn_layers.register_forward_hook(lambda *a: calls.append(1))
    prompt = torch.tensor([[1, 2, 3]])
    try:
        for kwargs, match in ((dict(assistant_model=tiny_model(num_tokens=50)), "vocabulary size"),
                              (dict(assistant_model="draft"), "assistant"),
                              (dict(assistant_model=target, beams=2), "speculative decoding"),
                              (dict(prompt_lookup_num_tokens=3, penalty_alpha=0.5), "speculative decoding"),
                              (dict(prompt_lookup_num_tokens=3, assistant_model=target), "not both"),
                              (dict(prompt_lookup_num_tokens=0), "prompt_lookup_num_tokens"),
                              (dict(assistant_model=target, mirostat_tau=3.0), "mirostat")):
            with pytest.raises(ValueError, match=match):
                target.generate(prompt, 5, **kwargs)
        assert not calls
    finally:
        hook.remove()


def test_the_draft_stops_when_it_is_unsure():
    """assistant_confidence_threshold (transformers' name): a round's drafting
    ends at the first drafted token the draft gave less than the threshold."""
    target, draft = pair()
    prompt = torch.randint(1, 97, (1, 5))
    steps = list(target.stream(prompt, 30, temperature=0.0, assistant_model=draft, num_assistant_tokens=6,
                               assistant_confidence_threshold=0.3, trace=True))
    seen = set()
    for step in steps:
        spec = step.trace.row(0)["speculative"]
        if spec["round"] in seen or not spec["drafted"]:  # the last round may draft nothing
            continue
        seen.add(spec["round"])
        probs = spec["draft_probs"]
        # every drafted token but the last was proposed with at least the threshold
        assert all(p >= 0.3 for p in probs[:-1]), probs
        assert len(probs) == 6 or probs[-1] < 0.3 or len(probs) == 30 - step.step - 1
    assert any(len(step.trace.row(0)["speculative"]["drafted"]) < 6 for step in steps)


# --- the assistant and prompt lookup together (assistant_lookup_ngram) ---


def test_the_ngram_index_finds_what_a_scan_finds():
    """NgramIndex.next_tokens for the text seq[:, :end] against a scan: the
    token after the latest occurrence of the last n tokens whose next token is
    committed text, within the row's real (not left-pad) positions."""
    from axw.speculative import NgramIndex

    def after(index, seq, end):
        return index.next_tokens(seq[:, max(end - index.n, 0):end].tolist(), end)

    def scan(seq, starts, end, committed, sizes):
        """Per row, the token after the latest occurrence, followed by committed text, of the longest of the
        text's last n tokens (n in `sizes`, longest first) that occurred within the row's real positions; -1
        where none did."""
        want = []
        for row, first in zip(seq.tolist(), starts):
            hits = {n: [s for s in range(first, committed - n) if row[s:s + n] == row[end - n:end]] for n in sizes}
            want.append(next((row[hits[n][-1] + n] for n in sizes if hits[n] and end - n >= first), -1))
        return want

    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 3):
        seq = torch.randint(0, 4, (3, 60), generator=gen)
        starts = [0, 5, 17]
        index = NgramIndex(n, starts)
        for committed in range(0, 50, 7):
            index.update(seq, committed)
            for end in range(committed, committed + 8):  # positions past the committed text are drafts
                want = scan(seq, starts, end, committed, (n,))
                assert after(index, seq, end) == want, (n, committed, end)
    # several sizes (prompt lookup's max_matching_ngram_size): the longest suffix that occurred before wins
    seq = torch.randint(0, 3, (2, 50), generator=gen)
    starts = [0, 9]
    index = NgramIndex(3, starts, min_n=1)
    for end in range(12, 50, 5):
        index.update(seq, end)
        want = scan(seq, starts, end, end, (3, 2, 1))
        assert after(index, seq, end) == want, end


def repetitive_pair(vocab=7):
    target, draft = pair(vocab=vocab)
    with torch.no_grad():  # sharper models repeat themselves, so the text has n-grams to copy
        target.net.to_logits.weight.mul_(8)
    return target, draft


def count_calls(module):
    calls = []
    hook = module.register_forward_hook(lambda *a: calls.append(1))
    return calls, hook


@pytest.mark.parametrize("ngram", [1, 2, 3])
def test_greedy_with_the_assistant_and_prompt_lookup(ngram):
    """Copies where the text repeats, the assistant elsewhere: still the model's
    own greedy text, with fewer assistant forwards than the assistant alone."""
    target, draft = repetitive_pair()
    prompts = [torch.randint(1, 7, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 9, 3)]
    plain = target.generate(prompts, 40, temperature=0.0)
    calls, hook = count_calls(draft.net.attn_layers)
    try:
        alone = target.generate(prompts, 40, temperature=0.0, assistant_model=draft, num_assistant_tokens=3)
        n_alone = len(calls)
        calls.clear()
        both = target.generate(prompts, 40, temperature=0.0, assistant_model=draft, num_assistant_tokens=3,
                               assistant_lookup_ngram=ngram)
    finally:
        hook.remove()
    assert torch.equal(alone, plain) and torch.equal(both, plain)
    assert len(calls) < n_alone
    *_, last = target.stream(prompts, 40, temperature=0.0, assistant_model=draft, num_assistant_tokens=3,
                             assistant_lookup_ngram=ngram)
    assert 0 < last.stats.copied <= last.stats.drafted
    # without an assistant the setting changes nothing: plain decoding
    assert torch.equal(target.generate(prompts, 40, temperature=0.0, assistant_lookup_ngram=ngram), plain)


def test_sampling_with_the_assistant_and_prompt_lookup_has_the_models_distribution():
    """Rounds mixing copies (a one-hot proposal) and the assistant's samples:
    the sequences' frequencies match the model's exact distribution."""
    target, draft = sharp_pair()
    prompt = torch.tensor([1, 2, 3, 1, 2, 0])  # "1 2" recurs; what follows "2 0" must come from the assistant
    kwargs = dict(assistant_model=draft, num_assistant_tokens=2, assistant_lookup_ngram=1)
    assert sampled_like_the_model(target, prompt, 3, 4, **kwargs)
    *_, last = target.stream(prompt.repeat(64, 1), 3, **kwargs, temperature=1.0, filter_logits_fn=None, seed=0)
    assert 0 < last.stats.copied < last.stats.drafted  # both drafters proposed tokens


def test_the_trace_says_which_drafts_were_copied():
    target, draft = repetitive_pair()
    prompt = torch.tensor([[1, 2, 3, 4, 1, 2, 3]])
    steps = list(target.stream(prompt, 30, temperature=0.0, assistant_model=draft, num_assistant_tokens=3,
                               assistant_lookup_ngram=2, trace=True))
    seen, copies = set(), 0
    for step in steps:
        spec = step.trace.row(0)["speculative"]
        if spec["round"] in seen:
            continue
        seen.add(spec["round"])
        assert len(spec["copied"]) == len(spec["drafted"])
        for j, was_copied in enumerate(spec["copied"]):
            if was_copied:  # a copy is proposed with certainty
                copies += 1
                assert spec["draft_probs"][j] == 1.0
        # the assistant drafted at most num_assistant_tokens of them, copies at most as many again
        assert len(spec["drafted"]) - sum(spec["copied"]) <= 3 and len(spec["drafted"]) <= 6
    assert copies > 0


@pytest.mark.parametrize("bad", [-1, 33, 1.5, "2", True])
def test_a_bad_assistant_lookup_ngram_is_refused(bad):
    target, draft = pair()
    with pytest.raises(ValueError, match="assistant_lookup_ngram"):
        target.generate(torch.tensor([1, 2]), 4, assistant_model=draft, assistant_lookup_ngram=bad)


# --- drafting from an n-gram datastore ---


def counted(sequences, starts, sizes, min_count):
    """What a datastore should hold, counted another way: every (n-gram, next) pair in a list, then per n-gram the
    most frequent next token, the lowest id among equals."""
    pairs = [(tuple(seq[q - n:q]), seq[q]) for seq, first in zip(sequences, starts)
             for q in range(len(seq)) if q >= first for n in sizes if q - n >= 0]
    table = {}
    for key in {k for k, _ in pairs}:
        nexts = [t for k, t in pairs if k == key]
        best = max(sorted(set(nexts)), key=nexts.count)  # max keeps the first (lowest id) of equal counts
        if nexts.count(best) >= min_count:
            table[key] = best
    return table


@pytest.mark.parametrize("min_n, max_n, min_count", [(1, 1, 1), (2, 4, 1), (1, 3, 2)])
def test_the_datastore_holds_what_a_count_finds(tmp_path, min_n, max_n, min_count):
    g = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, 5, (n,), generator=g).tolist() for n in (30, 12, 1, 25)]
    starts = [3, 0, 0, 10]
    store = NgramDatastore.build(sequences, 5, max_n=max_n, min_n=min_n, min_count=min_count, starts=starts)
    assert store.table == counted(sequences, starts, range(min_n, max_n + 1), min_count) and len(store) > 0
    # saved and loaded, from the file or its folder: the same table
    path = store.save_pretrained(tmp_path / "store")
    for source in (path, tmp_path / "store", str(tmp_path / "store")):
        loaded = NgramDatastore.from_pretrained(source)
        assert loaded.table == store.table and (loaded.min_n, loaded.max_n, loaded.vocab_size) == (min_n, max_n, 5)
    # the longest n-gram held wins, for the text's end after each position
    for seq in sequences:
        tails = [seq[:q] for q in range(len(seq) + 1)]
        want = [next((store.table[tuple(t[-n:])] for n in range(max_n, min_n - 1, -1)
                      if len(t) >= n and tuple(t[-n:]) in store.table), -1) for t in tails]
        assert store.next_tokens(tails) == want


def test_drafts_from_a_datastore_read_each_rows_own_text_longest_ngram_first():
    """The first round's drafts, alone: row 0 (left-padded with 0) knows only its own "5", row 1 ends "4 5"."""
    target, _ = pair(vocab=7)
    store = NgramDatastore({(5,): 3, (4, 5): 1, (0, 5): 4, (0, 0, 5): 4, (3,): 6, (1,): 2}, 7, max_n=3, min_n=1)
    steps = list(target.stream([torch.tensor([5]), torch.tensor([2, 3, 4, 5])], 3, temperature=0.0,
                               assistant_datastore=store, num_assistant_tokens=2, trace=True))
    first = steps[0].trace
    assert first.row(0)["speculative"]["drafted"] == [3, 6] and first.row(1)["speculative"]["drafted"] == [1, 2]
    assert first.row(0)["speculative"]["sources"] == [DATASTORE] * 2


def test_a_model_folder_holding_a_datastore_loads_both(tmp_path):
    target, _ = pair()
    target.save_pretrained(tmp_path)
    NgramDatastore.build([[1, 2, 3, 1, 2]], 97).save_pretrained(tmp_path)
    loaded = AutoregressiveWrapper.from_pretrained(tmp_path)  # the datastore is not read as weights
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), target.state_dict().values()))
    assert NgramDatastore.from_pretrained(tmp_path).table == {(1, 2): 3, (2, 3): 1, (3, 1): 2, (1, 2, 3): 1,
                                                              (2, 3, 1): 2, (1, 2, 3, 1): 2}


def test_bad_datastores_are_refused(tmp_path):
    with pytest.raises(ValueError, match="vocabulary"):
        NgramDatastore.build([[1, 2, 9]], 5)
    with pytest.raises(ValueError, match="min_n"):
        NgramDatastore.build([[1, 2]], 5, max_n=2, min_n=3)
    with pytest.raises(ValueError, match="min_count"):
        NgramDatastore.build([[1, 2]], 5, min_count=0)
    for table in ({(1, 2): 5}, {(1, 9): 2}, {(1,): 2}, {(1, 2, 3, 4, 0): 2}, {"ab": 1}):
        with pytest.raises(ValueError, match="is not 2 to 4 token ids"):
            NgramDatastore(table, 5, max_n=4, min_n=2)
    with pytest.raises(ValueError, match="holds no ngrams.safetensors"):
        NgramDatastore.from_pretrained(tmp_path)
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, tmp_path / "ngrams.safetensors")
    with pytest.raises(ValueError, match="not an axw n-gram datastore"):
        NgramDatastore.from_pretrained(tmp_path)


def own_datastore(target, vocab, rows=24, length=40, max_n=3, min_n=1):
    """A datastore of the target's own greedy continuations of random prompts."""
    prompts = torch.randint(0, vocab, (rows, 4), generator=torch.Generator().manual_seed(3))
    return NgramDatastore.build(target.generate(prompts, length, temperature=0.0), vocab, max_n=max_n, min_n=min_n,
                                starts=[4] * rows)


@pytest.mark.parametrize("extra", [{}, dict(assistant_lookup_ngram=2), dict(num_assistant_tokens_schedule="heuristic")])
def test_greedy_with_a_datastore(extra):
    """The datastore's copies, with and without the assistant and the text's own repeats: still the model's own
    greedy text, batched prompts of different lengths included, with fewer assistant forwards."""
    target, draft = repetitive_pair()
    store = own_datastore(target, 7, max_n=3, min_n=2)
    prompts = [torch.randint(0, 7, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 9, 3)]
    plain = target.generate(prompts, 40, temperature=0.0)
    calls, hook = count_calls(draft.net.attn_layers)
    try:
        alone = target.generate(prompts, 40, temperature=0.0, assistant_model=draft, num_assistant_tokens=3, **extra)
        n_alone = len(calls)
        calls.clear()
        both = target.generate(prompts, 40, temperature=0.0, assistant_model=draft, num_assistant_tokens=3,
                               assistant_datastore=store, **extra)
    finally:
        hook.remove()
    assert torch.equal(alone, plain) and torch.equal(both, plain)
    assert len(calls) < n_alone
    for n_draft in (1, 3, 6):  # the datastore alone
        assert torch.equal(target.generate(prompts, 40, temperature=0.0, assistant_datastore=store,
                                           num_assistant_tokens=n_draft, **extra), plain), n_draft
    *_, last = target.stream(prompts, 40, temperature=0.0, assistant_datastore=store, **extra)
    assert 0 < last.stats.accepted <= last.stats.copied == last.stats.drafted
    # with EOS, each row stops as plain decoding stops it
    eos = int(plain[1, 20])
    assert torch.equal(target.generate(prompts, 40, temperature=0.0, eos_token=eos, assistant_datastore=store),
                       target.generate(prompts, 40, temperature=0.0, eos_token=eos))


def test_a_row_stopped_at_eos_does_not_hold_the_datastores_drafts_back():
    """Row 0 emits EOS at once; the datastore knows row 1's whole greedy text and nothing after EOS: the batch
    takes as few model forwards as row 1 alone, and each row's text is plain greedy decoding's."""
    target, _ = repetitive_pair()
    prompts = [torch.tensor([4, 2, 5, 4]), torch.tensor([2, 3, 4, 2, 5, 1])]
    eos = 6  # row 0's first greedy token; row 1 never says it
    row1 = target.generate(prompts[1], 30, temperature=0.0)
    assert eos not in row1.tolist()
    store = NgramDatastore.build([row1], 7, max_n=2, min_n=1)
    kwargs = dict(temperature=0.0, eos_token=eos, assistant_datastore=store, num_assistant_tokens=6)
    both = target._decoding(prompts, 30, None, dict(kwargs))
    alone = target._decoding(prompts[1], 30, None, dict(kwargs))
    assert torch.equal(both.output(), target.generate(prompts, 30, temperature=0.0, eos_token=eos))
    assert torch.equal(alone.output(), row1)
    # one round more: the first, where row 0 still drafted (and emitted EOS)
    assert both.stats.target_forwards <= alone.stats.target_forwards + 1 < 10


def test_sampling_with_a_datastore_has_the_models_distribution():
    """The datastore's copies (a one-hot proposal), alone and between the assistant's samples: the sequences'
    frequencies match the model's exact distribution."""
    target, draft = sharp_pair()
    prompt = torch.tensor([1, 2, 3, 1, 2, 0])
    # it knows what follows some of the model's likely bigrams, and not others (those need the assistant)
    store = NgramDatastore.build([[2, 0, 1, 3], [0, 1, 1, 2]], 4, max_n=2, min_n=2)
    for extra in (dict(assistant_model=draft, num_assistant_tokens=2), dict(num_assistant_tokens=3)):
        kwargs = dict(assistant_datastore=store, **extra)
        assert sampled_like_the_model(target, prompt, 3, 4, **kwargs), extra
        *_, last = target.stream(prompt.repeat(64, 1), 3, **kwargs, temperature=1.0, filter_logits_fn=None, seed=0)
        assert 0 < last.stats.copied <= last.stats.drafted


def test_the_trace_says_where_each_draft_came_from():
    target, draft = repetitive_pair()
    store = own_datastore(target, 7, rows=4, length=20, max_n=3, min_n=3)  # it knows a few 3-grams
    prompt = torch.tensor([[1, 2, 3, 4, 1, 2, 3]])
    steps = list(target.stream(prompt, 30, temperature=0.0, assistant_model=draft, num_assistant_tokens=3,
                               assistant_lookup_ngram=3, assistant_datastore=store, trace=True))
    text = prompt[0].tolist() + [int(s.tokens[0]) for s in steps]
    seen, sources, checked = set(), [], 0
    for step in steps:
        spec = step.trace.row(0)["speculative"]
        if spec["round"] in seen:
            continue
        seen.add(spec["round"])
        assert spec["copied"] == [s != ASSISTANT for s in spec["sources"]]
        sources += spec["sources"]
        start = len(prompt[0]) + step.step
        for j in range(spec["n_accepted"] + 1 if spec["n_accepted"] < len(spec["drafted"]) else len(spec["drafted"])):
            before = text[:start + j]  # the text the drafter read: the accepted drafts are in it
            # the text before the round (its index) held the last three tokens, and what followed them
            repeats = any(before[i:i + 3] == before[-3:] for i in range(start - 3))
            if spec["sources"][j] == DATASTORE:  # the text had no repeat of its last three tokens
                assert not repeats and store.table[tuple(before[-3:])] == spec["drafted"][j]
                checked += 1
            elif spec["sources"][j] == TEXT:
                assert repeats
    assert {ASSISTANT, TEXT, DATASTORE} <= set(sources) and checked


def test_bad_datastore_arguments_are_refused_before_compute():
    target, draft = pair()
    prompt = torch.tensor([1, 2])
    calls, hook = count_calls(target.net.attn_layers)
    try:
        with pytest.raises(ValueError, match="vocabulary of 97"):
            target.generate(prompt, 4, assistant_datastore=NgramDatastore.build([[1, 2, 3]], 5))
        with pytest.raises(ValueError, match="NgramDatastore"):
            target.generate(prompt, 4, assistant_datastore={(1, 2): 3})
        with pytest.raises(ValueError, match="assistant_lookup_ngram instead"):
            target.generate(prompt, 4, assistant_datastore=NgramDatastore.build([[1, 2, 3]], 97),
                            prompt_lookup_num_tokens=3)
        with pytest.raises(ValueError, match="not beam search"):
            target.generate(prompt, 4, assistant_datastore=NgramDatastore.build([[1, 2, 3]], 97), beams=2)
    finally:
        hook.remove()
    assert not calls
