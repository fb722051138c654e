"""Property-based: whatever arguments `generate` and `stream` get, they either
produce valid tokens (and finite trace probabilities) or raise ValueError with
a message. Never another exception, never NaN."""

import math

import torch
from conftest import tiny_model
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

MODEL = tiny_model(num_tokens=23, rotary=True, max_seq_len=16)
AMATEUR = tiny_model(seed=1, num_tokens=23, rotary=True, max_seq_len=16, depth=1)
V = 23

junk = st.one_of(
    st.none(), st.booleans(), st.text(max_size=3), st.lists(st.integers(), max_size=2),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70),
)
small_float = st.one_of(st.floats(0, 5), st.floats(-2, 5), st.sampled_from([0.0, 1e-300, 1e-8, 1.0, 1e30]))


def value(typical):
    """Mostly plausible values, sometimes junk of any type."""
    return st.one_of(typical, typical, typical, typical, typical, typical, typical, typical, typical, junk)


filter_names = st.sampled_from(["top_k", "top_p", "min_p", "top_a", "top_k", "top_p", "min_p", "top_a", "bogus", None])
filter_kwargs = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"k": value(st.integers(-1, 40))}),
    st.fixed_dictionaries({"thres": value(st.floats(0, 1.2))}),
    st.fixed_dictionaries({"min_p": value(st.floats(0, 1.2))}),
    st.fixed_dictionaries({}, optional={"min_p_pow": value(st.floats(0, 5)), "min_p_ratio": value(st.floats(0, 1))}),
    st.dictionaries(st.sampled_from(["k", "frac_num_tokens", "thres", "min_p", "other"]),
                    value(st.one_of(st.integers(-2, 40), small_float)), max_size=2),
)

generate_kwargs = st.fixed_dictionaries(
    {},
    optional={
        "temperature": value(small_float),
        "filter_logits_fn": st.one_of(filter_names, st.lists(filter_names, max_size=3)),
        "filter_kwargs": st.one_of(filter_kwargs, st.lists(filter_kwargs, max_size=3), junk),
        "beams": value(st.integers(-1, 5)),
        "penalty_alpha": value(st.one_of(st.none(), small_float)),
        "contrastive_k": value(st.integers(-1, 30)),
        "repetition_penalty": value(small_float),
        "no_repeat_ngram_size": value(st.integers(-1, 4)),
        "eos_token": value(st.integers(-2, V + 2)),
        "length_penalty": value(small_float),
        "stochastic": st.booleans(),
        "seed": value(st.one_of(st.integers(0, 2**32), st.integers(-5, 2**64))),
        "cache_kv": st.booleans(),
        "amateur_model": st.sampled_from([None, AMATEUR]),
        "contrastive_decode_kwargs": st.one_of(
            st.fixed_dictionaries({}, optional={"alpha": value(small_float), "beta": value(small_float)}), junk),
    },
)
token = st.one_of(st.integers(0, V - 1), st.integers(0, V - 1), st.integers(0, V - 1), st.integers(-3, V + 3))
prompts = st.one_of(
    st.lists(token, min_size=0, max_size=20).map(lambda xs: torch.tensor([xs], dtype=torch.long)),
    st.lists(st.lists(st.integers(0, V - 1), min_size=0, max_size=6), min_size=0, max_size=3).map(
        lambda rows: [torch.tensor(r, dtype=torch.long) for r in rows]),
)


def prompt_width(prompt):
    return prompt.shape[-1] if isinstance(prompt, torch.Tensor) else max(len(r) for r in prompt)


# seq_len stays small (a huge one is valid and just slow); junk types still come through
seq_lens = value(st.integers(-1, 24)).filter(lambda n: not isinstance(n, int) or isinstance(n, bool) or n < 64)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=prompts, seq_len=seq_lens, kwargs=generate_kwargs, trace=st.booleans())
def test_generate_gives_tokens_or_a_value_error(prompt, seq_len, kwargs, trace):
    try:
        steps = list(MODEL.stream(prompt, seq_len, trace=trace, **kwargs))
        out = MODEL.generate(prompt, seq_len, **kwargs)
    except ValueError as e:
        assert str(e)
        event("ValueError: " + str(e)[:30])
        return
    event("generated")
    batch = prompt.shape[0] if isinstance(prompt, torch.Tensor) else len(prompt)
    assert out.shape == (batch, prompt_width(prompt) + seq_len)
    assert ((out >= 0) & (out < V)).all()
    assert len(steps) <= seq_len
    for step in steps:
        assert ((step.tokens >= 0) & (step.tokens < V)).all()
        if trace:
            row = step.trace.row(0)
            for probs in row["probs"].values():
                assert all(math.isfinite(p) and 0 <= p <= 1 + 1e-6 for p in probs)
            for key in ("beam_scores",):
                if key in row:
                    assert not any(math.isnan(s) for s in row[key])


valid_kwargs = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.one_of(st.floats(0, 3), st.sampled_from([0.0, 1e-300, 1e30])),
        "filter_logits_fn": st.lists(st.sampled_from(["top_k", "top_p", "min_p", "top_a"]), min_size=1, max_size=4),
        "repetition_penalty": st.one_of(st.floats(0.1, 5), st.sampled_from([1e-30, 1e30])),
        "no_repeat_ngram_size": st.integers(0, 4),
        "eos_token": st.integers(0, V - 1),
        "seed": st.integers(0, 2**32),
        "cache_kv": st.booleans(),
    },
)
strategy = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"beams": st.integers(1, 6), "length_penalty": st.floats(-2, 2), "stochastic": st.booleans()}),
    st.fixed_dictionaries({"penalty_alpha": st.floats(0, 1), "contrastive_k": st.integers(1, 30)}),
    st.fixed_dictionaries({"amateur_model": st.just(AMATEUR), "contrastive_decode_kwargs": st.fixed_dictionaries(
        {"alpha": st.floats(1e-6, 1), "beta": st.floats(0, 10)})}),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=st.lists(st.integers(0, V - 1), min_size=1, max_size=20), seq_len=st.integers(0, 24),
       kwargs=valid_kwargs, strategy=strategy, filter_args=st.data())
def test_valid_arguments_always_generate(prompt, seq_len, kwargs, strategy, filter_args):
    """Every in-range combination runs (past max_seq_len too: the model is rotary)."""
    kwargs = {**kwargs, **strategy}
    if "filter_logits_fn" in kwargs:
        ranges = dict(top_k=dict(k=st.integers(1, 40)), top_p=dict(thres=st.floats(1e-6, 1)),
                      min_p=dict(min_p=st.floats(0, 1)), top_a=dict(min_p_ratio=st.floats(0, 1)))
        kwargs["filter_kwargs"] = [filter_args.draw(st.fixed_dictionaries(ranges[f])) for f in kwargs["filter_logits_fn"]]
    steps = list(MODEL.stream(torch.tensor(prompt), seq_len, trace=True, **kwargs))
    out = MODEL.generate(torch.tensor(prompt), seq_len, **kwargs)
    assert out.shape == (len(prompt) + seq_len,) and ((out >= 0) & (out < V)).all()
    for step in steps:
        for probs in step.trace.row(0)["probs"].values():
            assert all(math.isfinite(p) and 0 <= p <= 1 + 1e-6 for p in probs)
