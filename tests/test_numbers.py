"""The numbers the page prints: never a negative zero (a one-token distribution's entropy is -0.0 as torch
computes it, -(1 * log 1); a log-probability of -0.0001 is 0.00 to two decimals), a negative number that does not
round to zero keeps its sign."""

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playground import panels, render  # noqa: E402
from playground.render import rounded, show_number  # noqa: E402


@pytest.mark.parametrize("value, spec, text", [
    (-0.0001, ".2f", "0.00"), (-0.0, ".2f", "0.00"), (-0.5, ".2f", "-0.50"), (0.0, ".2f", "0.00"),
    (-0.004, ".2f", "0.00"), (-0.006, ".2f", "-0.01"), (1.005, ".3f", "1.005"), (-12.25, ".1f", "-12.2"),
    (-0.0, "g", "0"), (-1e-9, "g", "-1e-09"), (-0.3, "g", "-0.3"), (-0.004, ".0%", "0%"), (-0.3, ".0%", "-30%"),
    (-1e-5, ".3f", "0.000"), (-1e-5, ".2g", "-1e-05"), (-0.2, ".0f", "0"), (-0.6, ".0f", "-1"),
    (-math.inf, ".2f", "-inf"), (math.inf, ".2f", "inf"), (-1234.5, ",.1f", "-1,234.5"),
])
def test_show_number_drops_the_sign_of_a_zero_only(value, spec, text):
    assert show_number(value, spec) == text


def test_a_one_token_distributions_entropy_is_a_negative_zero_and_prints_as_zero():
    p = torch.tensor([1.0, 0.0])
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    assert entropy == 0 and math.copysign(1, entropy) == -1  # what a naive print shows as -0.00
    assert f"{entropy:.2f}" == "-0.00" and show_number(entropy) == "0.00"


def test_rounded_keeps_numbers_and_drops_a_negative_zero():
    assert math.copysign(1, rounded(-0.00001, 3)) == 1 and rounded(-0.00001, 3) == 0
    assert math.copysign(1, rounded(-0.0, 2)) == 1
    assert rounded(-0.5004, 3) == -0.5 and rounded(2.71828, 2) == 2.72
    assert rounded(7, 0) == 7 and rounded(None, 3) is None


class Tokens:
    """A tokenizer stand-in: token i reads as the letter chr(97 + i)."""

    def id_to_token(self, i):
        return chr(97 + i)

    def decode(self, ids):
        return "".join(chr(97 + i) for i in ids)


def test_the_step_view_prints_a_zero_entropy_and_zero_probabilities_unsigned():
    row = dict(step=0, candidates=[0, 1], stages=["model", "top_k"], chosen=0, chosen_rank=0, chosen_prob=1.0,
               probs=dict(model=[0.9, 0.1], top_k=[1.0, -0.0]), kept=dict(model=2, top_k=1),
               mass=dict(model=1.0, top_k=0.9), entropy=dict(model=0.469, top_k=-0.0))
    shown = render.step_html(row, Tokens())
    assert "entropy <b>0.00</b> bits" in shown and "entropy <b>0.47</b> bits" in shown
    assert "-0.0" not in shown and "-0" not in shown.replace("-0.", "")  # no negative zero anywhere


def test_the_strategy_panels_print_no_negative_zero():
    # contrastive decoding: an expert sure of its top token (log p -0.00001) and a cut at alpha 1 (log 1 = 0)
    row = dict(step=0, candidates=[0, 1], contrastive_decoding={"cd": dict(
        expert=[-1e-5, -11.5], amateur=[-0.0004, -2.0], plausible=[True, False], score=[-0.002, -math.inf])})
    settings = SimpleNamespace(cd_alpha=1.0)
    shown = panels.contrastive_decoding_panel(row, Tokens(), settings)
    assert "<td>0.00</td><td>0.00</td>" in shown and "<td>-11.50</td><td>-2.00</td>" in shown
    assert "-0.00" not in shown and "= 0.00 (p" in shown
    # contrastive search: a candidate whose degeneration penalty is a hair below zero
    row = dict(step=0, candidates=[0, 1], contrastive=dict(tokens=[0, 1], confidence=[0.6, 0.4],
                                                             degeneration_penalty=[-1e-6, 0.5],
                                                             score=[0.3, -0.2]))
    shown = panels.contrastive_panel(row, Tokens(), SimpleNamespace(penalty_alpha=0.5))
    assert "penalty 0.000" in shown and "-0.000" not in shown and "<td>-0.200</td>" in shown


def test_compare_and_the_timeline_print_no_negative_zero():
    from playground.views.compare import column_html, metrics_frame
    from playground.views.timeline import frame

    run = SimpleNamespace(prompt="a", pieces=["b", "c"], new_ids=[1, 2], specials=())
    col = dict(label="sampling (T 0.8, top-p 0.9)", run=run, done=True, departs=None, logprob=-0.0001,
               distinct2=1.0, repeated4=-0.0, speed=12.0)
    shown = column_html(col, Tokens())
    assert "mean log p 0.00" in shown and "repeated 4-grams 0%" in shown and "-0" not in shown
    numbers = metrics_frame([col]).iloc[0]
    assert math.copysign(1, numbers["mean log p (model)"]) == 1 and numbers["mean log p (model)"] == 0
    assert math.copysign(1, numbers["repeated 4-grams"]) == 1
    records = [dict(step=1, model_entropy=2.5, final_entropy=-0.0, chosen_prob=1.0, chosen_rank=1, kept=1, token=0)]
    points = frame(records)
    assert points.value.tolist() == [2.5, 0.0] and all(math.copysign(1, v) == 1 for v in points.value)
    assert math.copysign(1, points.entropy[0]) == 1
