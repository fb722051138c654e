"""Several stop ids (a chat model's EOS and end-of-turn tokens): each row stops at the first of any of them, under
every strategy, as the same run without stop ids cut there."""

import pytest
import torch
from conftest import tiny_model

from axw import GenerationConfig

PROMPT_LEN, NEW = 3, 15


def cut_at_first(free: torch.Tensor, stops: set[int], pad: int) -> torch.Tensor:
    """The generated part of each row of a run without stop ids, cut after its first stop id (a hand cut)."""
    out = free[:, PROMPT_LEN:].clone()
    for row in out:
        hits = [i for i, token in enumerate(row.tolist()) if token in stops]
        if hits:
            row[hits[0] + 1:] = pad
    return out


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=1.0, seed=3),
                                    dict(penalty_alpha=0.6, contrastive_k=4)],
                         ids=["greedy", "sampling", "contrastive search"])
def test_rows_stop_at_the_first_of_several_stop_ids(kwargs):
    model = tiny_model()
    prompt = torch.randint(0, 97, (4, PROMPT_LEN), generator=torch.Generator().manual_seed(0))
    free = model.generate(prompt, NEW, **kwargs)
    # two ids the rows emit at different steps: each row stops at whichever comes first in it
    stops = [int(free[0, PROMPT_LEN + 5]), int(free[1, PROMPT_LEN + 2])]
    out = model.generate(prompt, NEW, eos_token=stops, **kwargs)
    assert torch.equal(out[:, PROMPT_LEN:], cut_at_first(free, set(stops), model.pad_value))
    assert (out[:, PROMPT_LEN:] == model.pad_value).any()  # some row did stop early
    # one id in a list is that id
    single = model.generate(prompt, NEW, eos_token=stops[:1], **kwargs)
    assert torch.equal(single, model.generate(prompt, NEW, eos_token=stops[0], **kwargs))


def test_speculative_decoding_stops_at_any_stop_id():
    model, draft = tiny_model(), tiny_model(seed=1, depth=1)
    prompt = torch.randint(0, 97, (3, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    free = model.generate(prompt, NEW, temperature=0.0)
    stops = [int(free[0, PROMPT_LEN + 4]), int(free[2, PROMPT_LEN + 1])]
    out = model.generate(prompt, NEW, temperature=0.0, eos_token=stops, assistant_model=draft,
                         num_assistant_tokens=3)
    assert torch.equal(out[:, PROMPT_LEN:], cut_at_first(free, set(stops), model.pad_value))


def test_beam_search_ends_a_beam_at_any_stop_id():
    model = tiny_model()
    prompt = torch.randint(0, 97, (2, PROMPT_LEN), generator=torch.Generator().manual_seed(2))
    free = model.beam_search(prompt, NEW, beams=3)
    never = [t for t in range(97) if t not in set(free.flatten().tolist())][0]
    stop = int(free[0, PROMPT_LEN + 3])
    # an id no beam reaches changes nothing; beside it, the list behaves as its one reachable id
    assert torch.equal(model.beam_search(prompt, NEW, beams=3, eos_token=[never, stop]),
                       model.beam_search(prompt, NEW, beams=3, eos_token=stop))
    out = model.beam_search(prompt, NEW, beams=3, eos_token=[never, stop])
    for row in out[:, PROMPT_LEN:].tolist():  # nothing but padding after a stop id
        if stop in row:
            assert all(t == model.pad_value for t in row[row.index(stop) + 1:])


@pytest.mark.parametrize("bad", [[], [1, -2], [1, 2.5], "3"])
def test_bad_stop_ids_are_refused(bad):
    with pytest.raises(ValueError, match="eos_token"):
        GenerationConfig(eos_token=bad)


def test_a_stop_id_outside_the_vocabulary_is_refused_before_any_forward():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"eos_token.*\[0, 97\)"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 4, eos_token=[5, 97])
