"""The samplers and the processor pipeline: kept sets against transformers'
warpers, the others against hand computations, and the order of the stages."""

import math

import pytest
import torch
from conftest import tiny_model

from axw import epsilon_cutoff, eta_cutoff, top_h, top_k, top_n_sigma, top_p, typical_p
from axw.processors import DRY, XTC, DynamicTemperature, Mirostat, apply_temperature

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import (  # noqa: E402
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)


def kept(logits):
    return torch.isfinite(logits)


def random_logits(seed, rows=8, vocab=300):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * (0.5 + seed)


# --- the new filters against transformers ---


@pytest.mark.parametrize("seed", range(5))
def test_new_filters_keep_what_transformers_keeps(seed):
    logits = random_logits(seed)
    for mass in (0.05, 0.2, 0.5, 0.9, 0.99):
        assert torch.equal(kept(typical_p(logits, mass=mass)), kept(TypicalLogitsWarper(mass)(None, logits.clone())))
    for eps in (1e-4, 3e-4, 1e-3, 0.01, 0.05, 0.9):
        assert torch.equal(kept(epsilon_cutoff(logits, epsilon=eps)),
                           kept(EpsilonLogitsWarper(eps)(None, logits.clone())))
        assert torch.equal(kept(eta_cutoff(logits, epsilon=eps)), kept(EtaLogitsWarper(eps)(None, logits.clone())))
    for h in (0.05, 0.2, 0.4, 0.8, 1.0):
        assert torch.equal(kept(top_h(logits, top_h=h)), kept(TopHLogitsWarper(h)(None, logits.clone())))


def test_new_filters_after_another_filter_keep_what_transformers_keeps():
    """Chained after top-k (so some logits are already -inf), as in a pipeline."""
    logits = top_k(random_logits(7), k=40)
    for fn, warper in ((lambda x: typical_p(x, mass=0.7), TypicalLogitsWarper(0.7)),
                       (lambda x: epsilon_cutoff(x, epsilon=0.02), EpsilonLogitsWarper(0.02)),
                       (lambda x: eta_cutoff(x, epsilon=0.02), EtaLogitsWarper(0.02)),
                       (lambda x: top_h(x, top_h=0.5), TopHLogitsWarper(0.5))):
        assert torch.equal(kept(fn(logits.clone())), kept(warper(None, logits.clone())))


def test_top_n_sigma_by_hand():
    logits = torch.tensor([[4.0, 3.5, 1.0, 0.0, -2.0, -math.inf]])
    finite = torch.tensor([4.0, 3.5, 1.0, 0.0, -2.0])
    mean = sum(finite) / 5
    std = (sum((v - mean) ** 2 for v in finite) / 5) ** 0.5
    for n in (0.0, 0.2, 0.5, 1.0, 2.0):
        expected = [bool(v >= 4.0 - n * std) for v in [4.0, 3.5, 1.0, 0.0, -2.0]] + [False]
        assert kept(top_n_sigma(logits, n=n))[0].tolist() == expected, n
    # the kept set does not move with temperature
    logits = random_logits(3)
    for t in (0.3, 2.0):
        assert torch.equal(kept(top_n_sigma(logits / t, n=1.0)), kept(top_n_sigma(logits, n=1.0)))


def test_filters_by_name_in_generate_and_their_checks():
    model = tiny_model(rotary=True)
    prompt = torch.randint(0, 97, (1, 5))
    for name, kwargs in (("typical_p", dict(mass=0.5)), ("epsilon_cutoff", dict(epsilon=0.01)),
                         ("eta_cutoff", dict(epsilon=0.01)), ("top_h", dict(top_h=0.3)),
                         ("top_n_sigma", dict(n=0.5))):
        step = next(iter(model.stream(prompt, 1, filter_logits_fn=name, filter_kwargs=kwargs, trace=True, seed=0)))
        logits = model.net(prompt)[0, -1].detach()
        fn = dict(typical_p=typical_p, epsilon_cutoff=epsilon_cutoff, eta_cutoff=eta_cutoff, top_h=top_h,
                  top_n_sigma=top_n_sigma)[name]
        assert step.trace.stages == ["model", name, "temperature"]
        assert int(step.trace.kept[1][0]) == int(kept(fn(logits[None], **kwargs)).sum())
    for name, kwargs, match in (("typical_p", dict(mass=0.0), "mass"), ("epsilon_cutoff", dict(epsilon=1.0), "epsilon"),
                                ("eta_cutoff", dict(epsilon=-1), "epsilon"), ("top_h", dict(top_h=1.5), "top_h"),
                                ("top_n_sigma", dict(n=-1), "n must"), ("top_h", dict(h=0.5), "unknown")):
        with pytest.raises(ValueError, match=match):
            model.generate(prompt, 2, filter_logits_fn=name, filter_kwargs=kwargs)


# --- sampler order ---


@pytest.mark.parametrize("seed", range(4))
def test_temperature_first_keeps_what_transformers_keeps(seed):
    """transformers applies temperature, then its warpers: with
    sampler_order='temperature_first' axw keeps the same tokens."""
    torch.manual_seed(seed)
    model = tiny_model(num_tokens=97, seed=seed)
    prompt = torch.randint(0, 97, (1, 6))
    logits = model.net(prompt)[0, -1:].detach()
    for temperature in (0.5, 1.7):
        theirs = TemperatureLogitsWarper(temperature)(None, logits.clone())
        chain = [("top_k", dict(k=30), TopKLogitsWarper(30)), ("top_p", dict(thres=0.8), TopPLogitsWarper(0.8)),
                 ("min_p", dict(min_p=0.05), MinPLogitsWarper(0.05)), ("typical_p", dict(mass=0.9),
                                                                        TypicalLogitsWarper(0.9))]
        for _, _, warper in chain:
            theirs = warper(None, theirs)
        step = next(iter(model.stream(prompt, 1, temperature=temperature, sampler_order="temperature_first",
                                      filter_logits_fn=[c[0] for c in chain], filter_kwargs=[c[1] for c in chain],
                                      trace=True, trace_top=97, seed=0)))
        t = step.trace
        assert t.stages == ["model", "temperature", "top_k", "top_p", "min_p", "typical_p"]
        assert int(t.kept[-1][0]) == int(kept(theirs).sum())
        final = t.probs[-1][0]  # probabilities of all 97 tokens, most likely first
        ours = torch.zeros(97, dtype=torch.bool)
        ours[t.candidates[0]] = final > 0
        assert torch.equal(ours, kept(theirs)[0])
        # x-transformers' order cuts on the untempered distribution instead
        step = next(iter(model.stream(prompt, 1, temperature=temperature, filter_logits_fn="top_p",
                                      filter_kwargs=dict(thres=0.8), trace=True, seed=0)))
        assert step.trace.stages == ["model", "top_p", "temperature"]
        assert int(step.trace.kept[1][0]) == int(kept(top_p(logits, thres=0.8)).sum())


# --- XTC, DRY, mirostat, dynamic temperature: hand computations ---


def test_xtc_by_hand():
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.1], [0.7, 0.1, 0.1, 0.1]])
    logits = probs.log()
    out = XTC(threshold=0.15, probability=1.0)(logits, None)
    # row 0: 0.5, 0.25 and 0.15 are at or above 0.15; all but the least likely of them (0.15) go
    assert kept(out)[0].tolist() == [False, False, True, True]
    # row 1: only one token above the threshold: nothing is excluded
    assert kept(out)[1].tolist() == [True, True, True, True]
    # with probability p per row and step: about p of the rows are cut
    many = logits[:1].repeat(4000, 1)
    cut = ~kept(XTC(0.15, 0.3, torch.Generator().manual_seed(0))(many, None))[:, 0]
    assert abs(cut.float().mean().item() - 0.3) < 0.03


def dry_by_hand(tokens, vocab, multiplier, base, allowed, breakers):
    """The reference algorithm, written out: for each earlier occurrence of
    the last token, how far back the match goes, and the token after it."""
    penalty = [0.0] * vocab
    if tokens[-1] in breakers:
        return penalty
    best = {}
    for i in range(len(tokens) - 1):
        if tokens[i] != tokens[-1] or tokens[i + 1] in breakers:
            continue
        n = 1
        while i - n >= 0 and tokens[i - n] == tokens[-1 - n] and tokens[-1 - n] not in breakers:
            n += 1
        best[tokens[i + 1]] = max(best.get(tokens[i + 1], 0), n)
    for token, n in best.items():
        if n >= allowed:
            penalty[token] = multiplier * base ** (n - allowed)
    return penalty


@pytest.mark.parametrize("seed", range(8))
def test_dry_by_hand(seed):
    g = torch.Generator().manual_seed(seed)
    vocab = 6
    # short alphabets repeat a lot: long and overlapping matches
    tokens = torch.randint(0, 4, (3, 40), generator=g)
    tokens[1, 20:] = tokens[1, :20]  # a long exact repeat
    breakers = [5, 3]
    dry = DRY(multiplier=0.8, base=1.75, allowed_length=2, breakers=torch.tensor(breakers))
    logits = torch.randn(3, vocab, generator=g)
    out = dry(logits, tokens)
    for row in range(3):
        expected = dry_by_hand(tokens[row].tolist(), vocab, 0.8, 1.75, 2, breakers)
        assert torch.allclose(logits[row] - out[row], torch.tensor(expected), rtol=1e-5), row


def test_dry_ignores_left_padding_and_breaks_repeats_in_generate():
    tokens = torch.tensor([[0, 1, 2, 5, 1, 2]])
    valid = torch.tensor([[False, False, False, True, True, True]])  # the first three are left padding
    dry = DRY(1.0, 2.0, 2, torch.zeros(0, dtype=torch.long))
    # unmasked, "1 2" at positions 1-2 would match the text's last two tokens and penalise the 5 after them
    assert dry.match_lengths(tokens, None, 6)[0, 5] == 2
    assert dry.match_lengths(tokens, valid, 6)[0].tolist() == [0] * 6
    # greedy decoding of a looping model stops looping once DRY is strong enough
    model = tiny_model(num_tokens=11, rotary=True)
    prompt = torch.randint(0, 11, (1, 4))
    loop = model.generate(prompt, 40, temperature=0.0)[0, 4:].tolist()
    free = model.generate(prompt, 40, temperature=0.0, dry_multiplier=5.0, dry_allowed_length=2,
                          dry_sequence_breakers=[])[0, 4:].tolist()

    def longest_repeat(seq):
        best = 0
        for i in range(len(seq)):
            for j in range(i):
                n = 0
                while i + n < len(seq) and seq[j + n] == seq[i + n] and j + n < i:
                    n += 1
                best = max(best, n)
        return best

    assert longest_repeat(free) < longest_repeat(loop)
    assert longest_repeat(free) <= 3  # a match of 2 followed by its next token, at most


def test_mirostat_by_hand():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    m = Mirostat(tau=2.0, eta=0.5)
    out = m(logits, None)
    surprise = -(logits.log_softmax(-1) / math.log(2))[0]
    assert kept(out)[0].tolist() == [bool(s <= 4.0) for s in surprise]  # mu starts at 2 tau = 4 bits
    chosen = torch.tensor([1])
    m.update(chosen, out)
    observed = -(out.log_softmax(-1)[0, 1] / math.log(2)).item()
    assert math.isclose(float(m.mu), 4.0 - 0.5 * (observed - 2.0), rel_tol=1e-6)
    # a target surprise close to zero leaves only the most likely token
    assert kept(Mirostat(tau=0.01, eta=0.1)(logits, None))[0].tolist() == [True, False, False, False, False]


def test_mirostat_holds_the_surprise_near_its_target():
    model = tiny_model(num_tokens=97, rotary=True, seed=2)
    prompt = torch.randint(0, 97, (64, 4))
    for tau in (2.0, 4.0):
        steps = list(model.stream(prompt, 40, mirostat_tau=tau, mirostat_eta=0.2, filter_logits_fn=None,
                                  trace=True, trace_top=97, seed=1))
        surprise = []
        for step in steps[10:]:  # after mu has settled
            t = step.trace
            final = t.probs[-1]  # distribution after mirostat over the 97 candidates
            index = (t.candidates == t.chosen[:, None]).float().argmax(-1)
            surprise.append(-final.gather(1, index[:, None]).log2().mean())
        assert abs(float(torch.stack(surprise).mean()) - tau) < 0.35, tau


def test_dynamic_temperature_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0, -math.inf], [5.0, -5.0, -5.0, -5.0]])
    dyn = DynamicTemperature(temperature=1.0, temperature_range=0.5, exponent=1.0)
    temps = dyn.temperatures(logits)
    for row, n in ((0, 3), (1, 4)):
        p = logits[row].softmax(-1)
        p = p[p > 0]
        h = float(-(p * p.log()).sum())
        assert math.isclose(float(temps[row]), 0.5 + 1.0 * h / math.log(n), rel_tol=1e-5)
    out = dyn(logits, None)
    assert torch.allclose(out[0, :3], apply_temperature(logits[:1], float(temps[0]))[0, :3])
    # a confident row is sampled colder than an unsure one
    assert temps[1] < temps[0]
    model = tiny_model(rotary=True)
    step = next(iter(model.stream(torch.tensor([[1, 2, 3]]), 1, dynatemp_range=0.5, trace=True, seed=0)))
    assert step.trace.stages == ["model", "top_k", "dynamic_temperature"]


def test_stage_numbers_by_hand():
    """Per stage: tokens kept, the model's probability mass they hold, entropy in bits."""
    model = tiny_model(rotary=True)
    prompt = torch.randint(0, 97, (1, 6))
    step = next(iter(model.stream(prompt, 1, filter_logits_fn="top_p", filter_kwargs=dict(thres=0.5),
                                  temperature=0.7, trace=True, seed=0)))
    row = step.trace.row(0)
    logits = model.net(prompt)[0, -1].detach()
    p = logits.softmax(-1)
    kept_p = kept(top_p(logits[None], thres=0.5))[0]
    assert row["kept"]["top_p"] == int(kept_p.sum())
    assert math.isclose(row["mass"]["top_p"], float(p[kept_p].sum()), rel_tol=1e-5)
    assert math.isclose(row["mass"]["model"], 1.0, rel_tol=1e-5)
    q = (top_p(logits[None], thres=0.5) / 0.7).softmax(-1)[0]
    q = q[q > 0]
    assert math.isclose(row["entropy"]["temperature"], float(-(q * q.log2()).sum()), rel_tol=1e-4)
    assert math.isclose(row["entropy"]["model"], float(-(p * p.log2()).sum()), rel_tol=1e-4)


def test_greedy_with_mirostat_set_is_greedy():
    model = tiny_model(rotary=True)
    prompt = torch.randint(0, 97, (2, 4))
    assert torch.equal(model.generate(prompt, 8, temperature=0.0, mirostat_tau=3.0),
                       model.generate(prompt, 8, temperature=0.0))


def test_xtc_keeps_the_runs_random_numbers():
    """XTC's coins come from their own generator: where XTC removes nothing
    (a threshold no two tokens reach), the text is the same as without it."""
    model = tiny_model(rotary=True)
    prompt = torch.randint(0, 97, (2, 4))
    plain = model.generate(prompt, 12, seed=4, filter_kwargs=dict(k=20))
    assert torch.equal(model.generate(prompt, 12, seed=4, filter_kwargs=dict(k=20), xtc_probability=0.5,
                                      xtc_threshold=0.9), plain)
