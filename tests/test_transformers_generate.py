"""transformers' arguments of generate: attention_mask with left or right padding, pad_token_id, streamer,
num_return_sequences, output_scores / output_logits. Checked against each row run alone, against transformers'
own generate on imported tiny GPT-2 / Llama models, against a full forward recompute and against the processors'
math done by hand."""

import math

import pytest
import torch
from einops import rearrange

from axw import AutoregressiveWrapper, GenerationConfig
from axw.processors import contrastive_decode_fn
from conftest import tiny_model
from test_convert import VOCAB, gpt2, llama, one_thread, save  # noqa: F401 (one_thread: its one-thread fixture)

transformers = pytest.importorskip("transformers")

ROWS = [torch.tensor([5, 9, 2, 5, 9, 4]), torch.tensor([7, 1, 3]), torch.tensor([8, 8])]




@pytest.fixture(scope="module")
def model():
    return tiny_model().eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request, tmp_path_factory):
    hf = gpt2() if request.param == "gpt2" else llama()
    return hf, AutoregressiveWrapper.from_pretrained(save(hf, tmp_path_factory.mktemp(request.param)))


@pytest.fixture(scope="module")
def shakespeare():
    model = AutoregressiveWrapper.from_pretrained("assets/models/shakespeare")
    return model, transformers.PreTrainedTokenizerFast(tokenizer_object=model.tokenizer.backend)


def padded(rows, pad, side="left", width=None):
    """transformers' padded batch: (ids, attention_mask), the padding on `side` ("left", "right", or a list of
    sides by row)."""
    width = width or max(len(r) for r in rows)
    sides = [side] * len(rows) if isinstance(side, str) else side
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, s) in enumerate(zip(rows, sides)):
        at = {"left": slice(width - len(row), width), "right": slice(0, len(row)), "both": slice(1, 1 + len(row))}[s]
        ids[i, at], mask[i, at] = row, 1
    return ids, mask


# --- attention_mask ---


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(beams=3), dict(penalty_alpha=0.6, contrastive_k=4)])
def test_a_left_padded_batch_gives_each_row_its_own_tokens(model, kwargs):
    ids, mask = padded(ROWS, pad=11, width=7)  # every row padded, with a pad that is not pad_value
    out = model.generate(ids, 8, attention_mask=mask, **kwargs)
    assert out.shape == (3, 15) and torch.equal(out[:, :7], ids)  # the caller's prompt, as given
    for i, row in enumerate(ROWS):
        alone = model.generate(row[None], 8, **kwargs)[0, len(row):]
        assert torch.equal(out[i, 7:], alone), i
    assert torch.equal(out[:, 1:], model.generate(ROWS, 8, pad_token_id=11, **kwargs))  # a list's layout
    assert torch.equal(model.generate(input_ids=ids, attention_mask=mask.bool(), seq_len=8, **kwargs), out)


def test_greedy_with_attention_mask_matches_transformers_generate(pair):
    hf, model = pair
    torch.manual_seed(3)
    rows = [torch.randint(0, VOCAB - 2, (n,)) for n in (6, 2, 4)]
    ids, mask = padded(rows, pad=0)
    inputs = dict(input_ids=ids, attention_mask=mask)
    theirs = hf.generate(**inputs, max_new_tokens=25, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(model.generate(**inputs, max_new_tokens=25, do_sample=False), theirs)
    # with EOS (a token row 1 makes a few steps in): rows stop there and go on with the pad, pad_token_id
    new = theirs[1, 6:].tolist()
    eos = next(new[k] for k in range(3, 25) if new[k] not in new[:k])
    theirs = hf.generate(**inputs, max_new_tokens=25, do_sample=False, eos_token_id=eos, pad_token_id=1)
    ours = model.generate(**inputs, max_new_tokens=25, do_sample=False, eos_token_id=eos, pad_token_id=1)
    n = theirs.shape[1]
    assert torch.equal(ours[:, :n], theirs) and bool((ours[:, n:] == 1).all())
    assert bool((theirs[1] == 1).any())  # row 1 stopped early and was padded


@pytest.mark.parametrize("side", ["right", ["left", "right", "left"], ["both", "right", "left"]])
def test_right_padding_comes_back_as_the_same_prompts_left_padded(model, side):
    ids, mask = padded(ROWS, pad=11, side=side, width=8)
    out = model.generate(ids, 8, attention_mask=mask, temperature=0.0)
    assert out.shape == (3, 16) and bool((out[:, :2] == 0).all())
    assert torch.equal(out[:, 2:], model.generate(ROWS, 8, temperature=0.0))
    steps = [s.tokens for s in model.stream(ids, 8, attention_mask=mask, temperature=0.0)]
    assert torch.equal(torch.stack(steps, 1), out[:, 8:])


@pytest.mark.parametrize("ids, mask, message", [
    (torch.ones(2, 4, dtype=torch.long), torch.ones(2, 3), "attention_mask must have input_ids' shape"),
    (torch.ones(1, 4, dtype=torch.long), torch.tensor([[1, 2, 1, 1]]), "1 .a token. and 0 .padding. only"),
    (torch.ones(1, 4, dtype=torch.long), torch.tensor([[1, 0, 1, 1]]), "one run of 1s"),
    (torch.ones(2, 4, dtype=torch.long), torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]), r"one run of 1s \(at least one\)"),
    ([torch.tensor([1, 2])], torch.ones(1, 2), "a list of 1-D prompts needs no mask"),
    (torch.ones(1, 4), torch.ones(1, 4), "integer tensor"),
])
def test_a_bad_attention_mask_is_refused_before_any_compute(model, ids, mask, message):
    with pytest.raises(ValueError, match=message):
        model.generate(ids, 4, attention_mask=mask)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.generate(torch.ones(1, 3, dtype=torch.long), 4, attention_mask=torch.ones(1, 3),
                          prompt_lens=torch.tensor([3])), "give one"),
    (lambda m: m.generate(torch.ones(1, 3, dtype=torch.long), 4, input_ids=torch.ones(1, 3, dtype=torch.long)),
     "given twice"),
    (lambda m: m.generate(max_new_tokens=4), "needs prompts"),
    (lambda m: m.generate(torch.ones(1, 3, dtype=torch.long), 4, pad_token_id=97), r"pad_token_id must be a token id"),
    (lambda m: m.generate(torch.ones(1, 3, dtype=torch.long), 4, pad_token_id=-1), r"pad_token_id must be a token id"),
    (lambda m: GenerationConfig(pad_token_id=0), "pad_token_id is an argument of generate"),
])
def test_transformers_arguments_given_wrong_are_refused(model, call, message):
    with pytest.raises(ValueError, match=message):
        call(model)


def test_none_is_the_default_as_in_transformers(model):
    kwargs = dict(attention_mask=None, pad_token_id=None, streamer=None, num_return_sequences=None,
                  output_scores=None, output_logits=None)
    assert torch.equal(model.generate(ROWS, 6, temperature=0.0, **kwargs), model.generate(ROWS, 6, temperature=0.0))


def test_a_one_row_prompt_with_its_mask_stays_one_row(model):
    row = torch.tensor([11, 11, 4, 5, 6])
    out = model.generate(row, 5, attention_mask=torch.tensor([0, 0, 1, 1, 1]), temperature=0.0)
    assert out.shape == (10,) and torch.equal(out[:5], row)
    assert torch.equal(out[5:], model.generate(row[2:], 5, temperature=0.0)[3:])


# --- pad_token_id ---


def test_pad_token_id_is_the_pad_of_this_call(model):
    eos = int(model.generate(ROWS[1], 1, temperature=0.0)[-1])  # row 1 stops at its first token
    kwargs = dict(temperature=0.0, eos_token=eos)
    out = model.generate(ROWS, 6, pad_token_id=7, **kwargs)
    assert torch.equal(out, AutoregressiveWrapper(model.net, pad_value=7).generate(ROWS, 6, **kwargs))
    padding = torch.zeros_like(out, dtype=torch.bool)
    for r, row in enumerate(ROWS):
        new = out[r, 6:].tolist()
        padding[r, :6 - len(row)] = True
        padding[r, 6 + new.index(eos) + 1 if eos in new else 12:] = True
    assert out[1, 6] == eos and bool(padding[1, 7:].all()) and bool((out[padding] == 7).all())
    default = model.generate(ROWS, 6, **kwargs)  # pad_value's 0 in the same places, the same tokens elsewhere
    assert bool((default[padding] == 0).all()) and torch.equal(out[~padding], default[~padding])


# --- streamer ---


class Recorder:
    """transformers' streamer protocol, recorded."""

    def __init__(self):
        self.puts, self.ends = [], 0

    def put(self, value):
        assert self.ends == 0
        self.puts.append(value.clone())

    def end(self):
        self.ends += 1


def test_a_streamer_gets_what_transformers_gives_it(pair):
    hf, model = pair
    x = torch.tensor([[5, 9, 2, 7]])
    theirs, ours = Recorder(), Recorder()
    hf.generate(x, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0, streamer=theirs)
    out = model.generate(x, max_new_tokens=12, do_sample=False, streamer=ours)
    assert ours.ends == theirs.ends == 1 and len(ours.puts) == len(theirs.puts) == 13
    for a, b in zip(ours.puts, theirs.puts):
        assert a.shape == b.shape and torch.equal(a, b)
    assert torch.equal(torch.cat([p.view(-1) for p in ours.puts]), out[0])


def test_a_streamer_stops_with_the_row_at_eos(model):
    prompt = torch.tensor([5, 9, 2])
    new = model.generate(prompt, 10, temperature=0.0)[3:].tolist()
    k = next(i for i in range(1, 10) if new[i] not in new[:i])  # the first token that ends the text at step k
    rec = Recorder()
    out = model.generate(prompt, 10, temperature=0.0, eos_token=new[k], streamer=rec)
    assert [tuple(p.shape) for p in rec.puts] == [(1, 3)] + [(1,)] * (k + 1) and rec.ends == 1
    assert torch.equal(torch.cat([p.view(-1) for p in rec.puts]), out[:4 + k]) and out[3 + k] == new[k]


def test_transformers_text_streamers_print_and_yield_the_text(shakespeare, capsys):
    model, tok = shakespeare
    prompt = torch.tensor([tok.encode("ROMEO:")])
    out = model.generate(prompt, 20, temperature=0.0, streamer=transformers.TextStreamer(tok))
    assert capsys.readouterr().out == tok.decode(out[0]) + "\n"
    streamer = transformers.TextIteratorStreamer(tok, skip_prompt=True)
    model.generate(prompt, 20, temperature=0.0, streamer=streamer)
    assert "".join(streamer) == tok.decode(out[0, prompt.shape[1]:])


@pytest.mark.parametrize("call, message", [
    (lambda m, s: m.generate(torch.ones(2, 3, dtype=torch.long), 4, streamer=s), "one row"),
    (lambda m, s: m.generate(torch.ones(1, 3, dtype=torch.long), 4, num_return_sequences=2, streamer=s), "one row"),
    (lambda m, s: m.generate(torch.ones(1, 3, dtype=torch.long), 4, num_beams=2, streamer=s), "beam search"),
    (lambda m, s: m.beam_search(torch.ones(1, 3, dtype=torch.long), 4, streamer=s), "beam_search takes no streamer"),
    (lambda m, s: m.stream(torch.ones(1, 3, dtype=torch.long), 4, streamer=s), "stream takes no streamer"),
    (lambda m, s: m.generate(torch.ones(1, 3, dtype=torch.long), 4, streamer=print), "put.ids. and end"),
])
def test_a_streamer_is_refused_where_transformers_refuses_it(model, call, message):
    rec = Recorder()
    with pytest.raises(ValueError, match=message):
        call(model, rec)
    assert rec.puts == []


# --- num_return_sequences ---


def test_sampling_returns_each_prompts_rows_together_each_its_own_sample(model):
    kwargs = dict(temperature=1.0, seed=3)
    out = model.generate(ROWS, 8, num_return_sequences=3, **kwargs)
    assert torch.equal(out, model.generate([r for r in ROWS for _ in range(3)], 8, **kwargs))
    assert out.shape == (9, 14)
    for i in range(3):
        assert len({tuple(r) for r in out[3 * i:3 * i + 3, 6:].tolist()}) > 1  # not one sample copied
    one = model.generate(ROWS[0], 8, num_return_sequences=2, **kwargs)
    assert one.shape == (2, 14) and torch.equal(one[:, :6], ROWS[0].expand(2, 6))
    steps = list(model.stream(ROWS, 8, num_return_sequences=3, **kwargs))
    assert torch.equal(steps[-1].sequences, out[:, 6:])


def test_beam_search_returns_each_prompts_best_beams(model):
    x = torch.stack([ROWS[0], ROWS[0].flip(0)])
    beams, scores = model.beam_search(x, 8, beams=4, return_beams_and_scores=True)
    out = model.generate(x, 8, beams=4, num_return_sequences=3, return_dict_in_generate=True)
    assert torch.equal(out.sequences, rearrange(beams[:3], "k b n -> (b k) n"))
    assert torch.equal(out.sequences_scores, rearrange(scores[:3], "k b -> (b k)"))
    assert torch.equal(out.beams, beams) and torch.equal(out.beam_scores, scores)
    assert torch.equal(model.beam_search(x, 8, beams=4, num_return_sequences=3), out.sequences)
    assert torch.equal(model.generate(x, 8, beams=4, num_return_sequences=1), beams[0])


def test_beam_search_num_return_sequences_matches_transformers(pair):
    hf, model = pair
    torch.manual_seed(2)
    x = torch.randint(0, VOCAB, (2, 6))
    kwargs = dict(max_new_tokens=15, num_beams=4, num_return_sequences=3, do_sample=False, length_penalty=0.0)
    theirs = hf.generate(x, **kwargs, eos_token_id=None, pad_token_id=0)
    assert torch.equal(model.generate(x, **kwargs), theirs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0, num_return_sequences=2), "needs sampling or beam search"),
    (dict(do_sample=False, num_return_sequences=2), "needs sampling or beam search"),
    (dict(penalty_alpha=0.5, num_return_sequences=2), "needs sampling or beam search"),
    (dict(beams=2, num_return_sequences=3), "give at most beams"),
    (dict(num_return_sequences=0), "num_return_sequences must be an integer >= 1"),
])
def test_num_return_sequences_is_refused_where_it_has_no_meaning(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.generate(ROWS, 4, **kwargs)


def test_num_return_sequences_refusals_of_stream_and_cache(model):
    with pytest.raises(ValueError, match="stream yields each prompt's best beam"):
        model.stream(ROWS, 4, beams=3, num_return_sequences=2)
    with pytest.raises(ValueError, match="cannot continue from a cache"):
        model.generate(ROWS[0], 4, num_return_sequences=2, cache=model.prefill(ROWS[0][:3]))


# --- output_scores / output_logits ---


def full_logits(net, seq: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
    """The last position's logits of one whole forward (no cache)."""
    with torch.no_grad():
        return net(seq, seq_start_pos=start)[:, -1]


def recorded(model, kwargs, rows=ROWS, n=6, amateur=None):
    out = model.generate(rows, n, return_dict_in_generate=True, output_scores=True, output_logits=True,
                         amateur_model=amateur, **kwargs)
    t = max(len(r) for r in rows)
    start = torch.tensor([t - len(r) for r in rows])
    assert len(out.scores) == len(out.logits) == n
    for i in range(n):
        torch.testing.assert_close(out.logits[i], full_logits(model.net, out.sequences[:, :t + i], start),
                                   atol=1e-5, rtol=1e-5)
    return out, t, start


def test_greedy_scores_are_the_penalised_logits(model):
    out, t, start = recorded(model, dict(temperature=0.0, repetition_penalty=1.3))
    for i, (logits, scores) in enumerate(zip(out.logits, out.scores)):
        context = out.sequences[:, :t + i]
        seen = torch.zeros_like(logits, dtype=torch.bool)
        for r in range(len(ROWS)):
            seen[r, context[r, int(start[r]):]] = True
        by_hand = torch.where(seen, torch.where(logits < 0, logits * 1.3, logits / 1.3), logits)
        torch.testing.assert_close(scores, by_hand)
        assert torch.equal(scores.argmax(-1), out.sequences[:, t + i])


def test_sampling_scores_are_the_filtered_tempered_logits(model):
    out, t, _ = recorded(model, dict(temperature=0.7, filter_logits_fn="top_k", filter_kwargs=dict(k=5), seed=1))
    for i, (logits, scores) in enumerate(zip(out.logits, out.scores)):
        kth = logits.topk(5, dim=-1).values[:, -1:]
        # axw's temperature shifts the best token to 0: transformers' logits / T, shifted
        by_hand = ((logits - logits.amax(-1, keepdim=True)) / 0.7).masked_fill(logits < kth, -math.inf)
        torch.testing.assert_close(scores, by_hand)
        chosen = out.sequences[:, t + i]
        assert bool(torch.isfinite(scores.gather(1, chosen[:, None])).all())


def test_contrastive_decoding_scores_are_its_score_of_both_models(model):
    amateur = tiny_model(seed=1, depth=1).eval()
    out, t, start = recorded(model, dict(temperature=0.0), amateur=amateur)
    for i, (logits, scores) in enumerate(zip(out.logits, out.scores)):
        by_hand = contrastive_decode_fn(logits, full_logits(amateur.net, out.sequences[:, :t + i], start), 0.1, 0.5)
        torch.testing.assert_close(scores, by_hand, atol=1e-5, rtol=1e-5)
        assert torch.equal(scores.argmax(-1), out.sequences[:, t + i])
    assert out.strategy == "contrastive decoding"


def test_contrastive_search_scores_are_what_its_candidates_come_from(model):
    out, t, _ = recorded(model, dict(penalty_alpha=0.6, contrastive_k=4))
    for i, (logits, scores) in enumerate(zip(out.logits, out.scores)):
        assert torch.equal(scores, logits)  # no penalty: the model's own
        candidates = scores.topk(4, dim=-1).indices
        assert bool((candidates == out.sequences[:, t + i, None]).any(-1).all())


def test_beam_search_scores_and_logits_match_transformers(pair):
    hf, model = pair
    torch.manual_seed(2)
    x = torch.randint(0, VOCAB, (2, 6))
    kwargs = dict(max_new_tokens=8, num_beams=3, do_sample=False, length_penalty=0.0, return_dict_in_generate=True,
                  output_scores=True, output_logits=True)
    theirs = hf.generate(x, **kwargs, eos_token_id=None, pad_token_id=0)
    ours = model.generate(x, **kwargs)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert len(ours.scores) == len(theirs.scores) == 8
    for a, b in zip(ours.logits, theirs.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for a, b in zip(ours.scores, theirs.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_without_the_flags_nothing_is_kept(model):
    out = model.generate(ROWS, 4, temperature=0.0, return_dict_in_generate=True)
    assert out.scores is None and out.logits is None
    out = model.generate(ROWS, 4, temperature=0.0, return_dict_in_generate=True, output_logits=True)
    assert out.scores is None and len(out.logits) == 4


@pytest.mark.parametrize("call, message", [
    (lambda m: m.generate(ROWS, 4, output_scores=True), "pass return_dict_in_generate=True"),
    (lambda m: m.beam_search(ROWS, 4, output_logits=True), "pass return_dict_in_generate=True"),
    (lambda m: m.generate(ROWS, 4, output_scores="yes", return_dict_in_generate=True), "output_scores must be"),
    (lambda m: m.generate(ROWS, 4, prompt_lookup_num_tokens=2, output_scores=True, return_dict_in_generate=True),
     "speculative decoding does not keep them"),
    (lambda m: m.stream(ROWS, 4, output_scores=True), "stream takes no output_scores"),
])
def test_output_scores_is_refused_where_it_cannot_be_given(model, call, message):
    with pytest.raises(ValueError, match=message):
        call(model)


def test_the_docs_table_is_the_declared_names():
    from pathlib import Path

    from axw.specs import transformers_table

    text = (Path(__file__).resolve().parents[1] / "docs" / "transformers.md").read_text(encoding="utf-8")
    assert transformers_table() in text, ("docs/transformers.md's table is out of date: paste "
                                          "python -c 'from axw.specs import transformers_table as t; print(t())'")
