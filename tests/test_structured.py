"""Structured output (axw.structured): the text obeys its constraint under every strategy on the bundled model,
each step's distribution is the model's renormalised over the tokens a brute-force matcher allows, and bad
constraints are refused before any compute."""

import itertools
import json
import re
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from axw import AutoregressiveWrapper, GenerationConfig
from axw.generation import Decoding
from axw.structured import MAX_CONSTRAINT_CHARS
from conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 10},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}}}
DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
SUM = 'start: NUMBER OP NUMBER\nOP: "+" | "-" | "*"\nNUMBER: /[0-9]{1,3}/'
SUM_RE = r"[0-9]{1,3}[+*-][0-9]{1,3}"  # the same language, by hand
ANSWERS = ["yes", "no", "perhaps"]


def valid_json(text: str) -> bool:
    """`text` is JSON valid under SCHEMA (checked by hand: no schema library here)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return (isinstance(value, dict) and set(value) == {"name", "age"} and isinstance(value["name"], str)
            and len(value["name"]) <= 10 and type(value["age"]) is int and 0 <= value["age"] <= 120)


OBEYS = dict(choices=lambda t: t in ANSWERS, regex=lambda t: re.fullmatch(DATE, t) is not None,
             json_schema=valid_json, grammar=lambda t: re.fullmatch(SUM_RE, t) is not None)
CONSTRAINTS = dict(choices=ANSWERS, regex=DATE, json_schema=SCHEMA, grammar=SUM)


@pytest.fixture(scope="module")
def bundled():
    load = AutoregressiveWrapper.from_pretrained
    return [load(ROOT / "assets/models" / name).eval() for name in ("shakespeare", "shakespeare-draft",
                                                                    "shakespeare-tiny")]


def strategies(draft, tiny):
    """Each strategy's settings, and whether it samples (then each prompt gives three rows, each its own draw)."""
    return {"sampling": (dict(temperature=1.0), True), "greedy": (dict(temperature=0.0), False),
            "top-p hot": (dict(temperature=1.5, filter_logits_fn="top_p", filter_kwargs=dict(thres=0.9)), True),
            "beam search": (dict(beams=3), False), "stochastic beams": (dict(beams=3, stochastic=True), False),
            "contrastive search": (dict(penalty_alpha=0.6, contrastive_k=4), False),
            "contrastive decoding": (dict(amateur_model=tiny, temperature=1.0), True),
            "speculative": (dict(assistant_model=draft, temperature=1.0, num_assistant_tokens=3), True),
            "speculative greedy": (dict(assistant_model=draft, temperature=0.0), False),
            "prompt lookup greedy": (dict(prompt_lookup_num_tokens=3, temperature=0.0), False)}


PROMPTS = ["ROMEO:\nWhat say you?", "JULIET:\nHow old art thou?", "First Citizen:\nSpeak,"]


@pytest.mark.parametrize("kind", list(CONSTRAINTS))
def test_every_strategy_obeys_the_constraint_and_stops_when_it_is_complete(bundled, kind):
    """Three prompts in one batch (when the strategy samples: three draws of each, three seeds):
    every text is complete and obeys the constraint (checked by hand: the regex by Python's re, the schema by
    a hand check, the grammar by the regex of its language), then EOS, then padding. Speculative decoding at
    temperature 0 is token for token greedy's, its drafts checked against the grammar."""
    model, draft, tiny = bundled
    tok = model.tokenizer
    prompts = [torch.tensor(tok.encode(p).ids) for p in PROMPTS]
    outputs = {}
    for name, (strategy, samples) in strategies(draft, tiny).items():
        seeds = range(3 * list(CONSTRAINTS).index(kind), 3 * list(CONSTRAINTS).index(kind) + 3) if samples else [0]
        runs = [model.generate(prompts, 32, seed=seed, num_return_sequences=3 if samples else 1,
                               **{kind: CONSTRAINTS[kind]}, **strategy) for seed in seeds]
        outputs[name] = out = runs[0]
        for row in torch.cat(runs)[:, -32:].tolist():
            assert 0 in row, (name, tok.decode(row))  # it stopped: EOS (id 0) within the budget
            end = row.index(0)
            text = tok.decode(row[:end])
            assert OBEYS[kind](text), (kind, name, text)
            assert all(t == model.pad_value for t in row[end:])
    assert torch.equal(outputs["speculative greedy"], outputs["greedy"])
    assert torch.equal(outputs["prompt lookup greedy"], outputs["greedy"])


# --- the exact distribution, on a vocabulary small enough to enumerate ---

PIECES = ["<eos>", "a", "b", "ab", "ba", "c"]


@pytest.fixture(scope="module")
def small():
    """A random model over six tokens (EOS, a, b, ab, ba, c), with its byte-level BPE tokenizer."""
    vocab = {p: i for i, p in enumerate(PIECES)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("b", "a")]))
    tok.add_special_tokens(["<eos>"])
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    model = tiny_model(seed=3, num_tokens=len(PIECES), max_seq_len=32).eval()
    model.tokenizer, model.eos_token_id = tok, 0
    return model


def language(kind: str, value) -> set[str]:
    """The constraint's language, by brute force over {a, b, c} up to 5 letters."""
    if kind == "choices":
        return set(value)
    words = {"".join(w) for n in range(1, 6) for w in itertools.product("abc", repeat=n)}
    return {w for w in words if re.fullmatch(value, w)}


def brute_allowed(words: set[str], text: str) -> list[bool]:
    """Per token: the text it makes is a prefix of a word of the language (EOS: the text is a word)."""
    return [text in words if i == 0 else any(w.startswith(text + p) for w in words) for i, p in enumerate(PIECES)]


def reachable(words: set[str]) -> list[list[int]]:
    """Every token sequence (EOS not included) a constrained run can be at, by brute force."""
    out, todo = [], [[]]
    while todo:
        ids = todo.pop()
        out.append(ids)
        text = "".join(PIECES[i] for i in ids)
        todo += [ids + [i] for i, ok in enumerate(brute_allowed(words, text)) if ok and i != 0]
    return out


@pytest.mark.parametrize("kind,value", [("choices", ["ab", "aab", "bac", "c", "abab"]), ("regex", "a{1,2}b|ba?c")])
def test_each_step_is_the_models_distribution_renormalised_over_the_allowed_tokens(small, kind, value):
    """For every text the constraint can be at (enumerated by a brute-force matcher), the pipeline's
    distribution is the model's (recomputed by a full forward) renormalised over the tokens the brute force
    allows, and the trace's grammar stage keeps those tokens and the model's probability they hold."""
    words = language(kind, value)
    prompt = torch.tensor([5, 1])
    config = GenerationConfig(temperature=1.0, filter_logits_fn=None, trace=True, **{kind: value})
    prefixes = reachable(words)
    assert len(prefixes) > 5
    for n in sorted({len(p) for p in prefixes}):
        rows = [p for p in prefixes if len(p) == n]
        seqs = torch.stack([torch.cat((prompt, torch.tensor(p, dtype=torch.long))) for p in rows])
        run = Decoding(small, seqs[:, :2], 8, config)
        pipeline = run.pipeline()
        logits = small.net(seqs)[:, -1]
        trace = run.new_trace(n, logits)
        processed = pipeline(logits, seqs, None, trace)
        allowed = torch.tensor([brute_allowed(words, "".join(PIECES[i] for i in p)) for p in rows])
        model_p = logits.softmax(-1)
        expected = torch.where(allowed, model_p, 0.0)
        expected = expected / expected.sum(-1, keepdim=True)
        torch.testing.assert_close(processed.softmax(-1), expected, atol=1e-6, rtol=1e-5)
        grammar = trace.stages.index("grammar")
        assert torch.equal(trace.kept_mask[grammar], allowed)
        torch.testing.assert_close(trace.mass[grammar], torch.where(allowed, model_p, 0.0).sum(-1))


def test_sampled_runs_draw_from_the_renormalised_distribution(small):
    """End to end: 32 sampled rows, each step's scores (what the token was drawn from) against the model's
    renormalised distribution after the row's own text; every row ends in one of the choices."""
    choices = ["ab", "aab", "bac", "c", "abab"]
    words = set(choices)
    out = small.generate(torch.tensor([5, 1]), 8, choices=choices, temperature=1.0, filter_logits_fn=None, seed=0,
                         num_return_sequences=32, output_scores=True, return_dict_in_generate=True)
    seen = set()
    for r, row in enumerate(out.sequences[:, 2:].tolist()):
        end = row.index(0)
        assert "".join(PIECES[i] for i in row[:end]) in words
        for step in range(end + 1):
            seq = out.sequences[r:r + 1, :2 + step]
            model_p = small.net(seq)[0, -1].softmax(-1)
            allowed = torch.tensor(brute_allowed(words, "".join(PIECES[i] for i in row[:step])))
            expected = torch.where(allowed, model_p, 0.0)
            torch.testing.assert_close(out.scores[step][r].softmax(-1), expected / expected.sum(), atol=1e-6,
                                       rtol=1e-5)
            seen.add(tuple(row[:step]))
    assert len(seen) > 5


def test_beam_search_keeps_each_beams_own_matcher(small):
    """Beams are reordered every step; each is checked against its own text: every beam returned that is
    still alive (a finite score) is a word of the language, and the best is the likeliest word (brute force
    over the language under the model)."""
    choices = ["ab", "aab", "bac", "c", "abab", "baab"]
    out = small.generate(torch.tensor([5, 1]), 8, choices=choices, beams=4, return_dict_in_generate=True)
    for beam, score in zip(out.beams.tolist(), out.beam_scores.tolist()):
        if score > -float("inf"):
            text = beam[2:]
            assert "".join(PIECES[i] for i in text[:text.index(0)]) in choices

    def log_prob(ids):  # the renormalised log-probability of a whole constrained text, EOS included
        total, seq = 0.0, [5, 1]
        for step, token in enumerate(ids + [0]):
            logits = small.net(torch.tensor([seq]))[0, -1]
            allowed = torch.tensor(brute_allowed(set(choices), "".join(PIECES[i] for i in ids[:step])))
            total += float(logits.masked_fill(~allowed, -float("inf")).log_softmax(-1)[token])
            seq.append(token)
        return total

    # every token sequence spelling a choice (the BPE's merges allow several)
    spellings = [ids for p in reachable(set(choices)) for ids in [p] if "".join(PIECES[i] for i in ids) in choices]
    best = max(spellings, key=log_prob)
    text = out.sequences[2:].tolist()
    assert text[:text.index(0)] == best


# --- refused before any compute ---


def test_bad_constraints_are_refused_before_any_compute(small, monkeypatch):
    def no_compute(*a, **k):
        raise AssertionError("the model ran")

    monkeypatch.setattr(small.net, "decode", no_compute)
    monkeypatch.setattr(small.net, "forward", no_compute)
    prompt = torch.tensor([5, 1])
    cases = [
        (dict(regex="a(b"), "regex is not valid"),
        (dict(json_schema='{"type": "object",'), "json_schema is not valid JSON"),
        (dict(json_schema={"type": "no such type"}), "JSON schema is not valid"),
        (dict(grammar="start: (("), "Lark grammar is not valid"),
        (dict(choices=["a"], regex="a"), "one constraint at a time"),
        (dict(choices=[]), "empty list"),
        (dict(choices="ab"), "list of strings"),
        (dict(choices=["ab", ""]), "non-empty string"),
        (dict(json_schema={"type": "string", "enum": ["x" * MAX_CONSTRAINT_CHARS]}), "at most"),
        (dict(regex="z+"), "allows no text this model's tokenizer can write"),
        (dict(choices=["ab", "abz"]), "'abz' cannot be written"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            small.generate(prompt, 4, **kwargs)
    with pytest.raises(ValueError, match="one constraint at a time"):
        GenerationConfig(regex="a", grammar="start: a")
    bare = tiny_model(num_tokens=len(PIECES), max_seq_len=32)
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        bare.generate(prompt, 4, regex="a")


def test_a_constraint_is_a_setting_that_round_trips():
    config = GenerationConfig(json_schema=json.dumps(SCHEMA))
    assert config.json_schema == SCHEMA and config.constraint == "json_schema"
    assert GenerationConfig.from_dict(json.loads(config.to_json())) == config
    assert GenerationConfig().constraint is None
    assert GenerationConfig().update(choices=("x", "y")).choices == ["x", "y"]


def test_a_continued_constrained_text_goes_on_as_one_run(bundled):
    """A constrained greedy run cut after k tokens and continued from the prompt plus those tokens
    (`constrained_prompt_tail=k`) is the uncut run; a prompt tail the constraint refuses is refused before any
    compute."""
    model = bundled[0]
    ids = model.tokenizer.encode(PROMPTS[1]).ids
    whole = model.generate(torch.tensor(ids), 32, json_schema=SCHEMA, temperature=0.0).tolist()
    for k in (1, 5, 9):
        prompt = torch.tensor(whole[:len(ids) + k])
        continued = model.generate(prompt, 32 - k, json_schema=SCHEMA, temperature=0.0, constrained_prompt_tail=k)
        assert continued.tolist() == whole
    with pytest.raises(ValueError, match="does not allow the text the prompt has begun"):
        model.generate(torch.tensor(ids + model.tokenizer.encode('{"x').ids), 8, json_schema=SCHEMA,
                       constrained_prompt_tail=3)


def llama_style_tokenizer():
    """A SentencePiece-style BPE as Llama's tokenizer.json has it: '▁' for a space, byte fallback <0xNN>."""
    from tokenizers import normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{i:02X}>": 3 + i for i in range(256)}}
    for piece in ["▁", "y", "e", "s", "ye", "yes", "▁yes", "n", "o", "no", "▁no"]:
        vocab[piece] = len(vocab)
    merges = [("y", "e"), ("ye", "s"), ("▁", "yes"), ("n", "o"), ("▁", "no")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<s>", "</s>"])
    return tok, {i: bytes([int(p[3:5], 16)]).decode("latin-1") if p.startswith("<0x") else p.replace("▁", " ")
                 for p, i in vocab.items() if i > 2}


def char_tokenizer():
    """A word-level tokenizer of single letters and no decoder (llguidance cannot read it from its JSON: the
    stage reads each token's text instead)."""
    tok = Tokenizer(models.WordLevel({"<eos>": 0, "a": 1, "b": 2, "c": 3}, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return tok, {1: "a", 2: "b", 3: "c"}


@pytest.mark.parametrize("make,eos,choices", [(llama_style_tokenizer, 2, [" yes", " no", " zz"]),
                                              (char_tokenizer, 0, ["abc", "ba", "cab"])], ids=["llama", "no decoder"])
def test_other_tokenizers_allow_what_a_brute_force_allows(make, eos, choices):
    """Sampled runs on a random model over each tokenizer: every step's kept tokens continue a choice (brute
    force over the token texts; EOS once the text is one), and every such token is kept but where a byte-fallback
    token spells what a regular token spells (llguidance may keep only the regular one); every text ends one."""
    tok, texts = make()
    vocab = tok.get_vocab_size()
    model = tiny_model(seed=1, num_tokens=vocab, max_seq_len=32).eval()
    model.tokenizer, model.eos_token_id = tok, eos
    prompt = torch.tensor([3, 3])
    for seed in range(3):
        for step in model.stream(prompt, 8, choices=choices, temperature=1.0, filter_logits_fn=None, seed=seed,
                                 trace=True, num_return_sequences=4):
            for r in range(4):
                so_far = "".join(texts.get(t, "") for t in step.sequences[r, :-1].tolist())
                if eos in step.sequences[r, :-1].tolist():
                    continue
                want = {i for i, t in texts.items() if any(c.startswith(so_far + t) for c in choices)}
                want |= {eos} if so_far in choices else set()
                kept = set(step.trace.kept_ids("grammar", r))
                regular = {i for i in want if not tok.id_to_token(i).startswith("<0x")}
                assert regular <= kept <= want, (so_far, step.step)
        out = model.generate(prompt, 8, choices=choices, temperature=1.0, seed=seed, num_return_sequences=4)
        for row in out[:, 2:].tolist():
            assert "".join(texts.get(t, "") for t in row[:row.index(eos)]) in choices


def junk_or(typical):
    from hypothesis import strategies as st

    junk = st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=6), st.lists(st.text(max_size=3), max_size=3),
                     st.dictionaries(st.text(max_size=3), st.one_of(st.text(max_size=3), st.floats()), max_size=2))
    return st.one_of(typical, typical, junk)


def test_any_constraint_gives_tokens_or_a_value_error(small):
    """Property-based: whatever the four settings hold, generate gives a text that obeys them or a ValueError."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    letters = st.text("abc", min_size=1, max_size=4)
    kinds = st.fixed_dictionaries({}, optional=dict(
        choices=junk_or(st.lists(letters, max_size=4)), regex=junk_or(st.text("abc|()*+?[]{}1-", max_size=8)),
        json_schema=junk_or(st.sampled_from([{"type": "string", "maxLength": 2}, '{"enum": ["ab", "c"]}', "{"])),
        grammar=junk_or(st.sampled_from(['start: "a" | "b" "c"', "start: ((", 'start: x\nx: "ab"'])))).filter(
        lambda kw: kw)

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(kw=kinds, seed=st.integers(0, 3))
    def check(kw, seed):
        try:
            out = small.generate(torch.tensor([5, 1]), 6, seed=seed, **kw)
        except ValueError as e:
            assert str(e)
            return
        assert out.shape == (8,) and bool(((out >= 0) & (out < len(PIECES))).all())
        if isinstance(kw.get("choices"), list) and 0 in out[2:].tolist():  # (None: off)
            text = out[2:].tolist()
            assert "".join(PIECES[i] for i in text[:text.index(0)]) in kw["choices"]

    check()
