"""The text's colour scale: bins on log probability, checked against a hand computation."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playground.render import PROB_COLOURS, legend, prob_colour, tokens_html  # noqa: E402

RED, ORANGE_RED, ORANGE, YELLOW, YELLOW_GREEN, LIGHT_GREEN, GREEN = PROB_COLOURS

# the probabilities the bundled model's tokens were chosen with, quartiles (render.py's comment has the rest)
MEASURED_QUARTILES = {
    "temperature 0.8, top-p 0.9": (0.037, 0.206, 0.599),
    "greedy": (0.148, 0.302, 0.621),
    "temperature 1.0": (0.011, 0.068, 0.375),
    "beam search, 4 beams": (0.291, 0.597, 0.983),
}


def hue(colour: str) -> int:
    return int(re.fullmatch(r"hsl\((\d+), \d+%, \d+%\)", colour).group(1))


@pytest.mark.parametrize("p, colour", [
    (0.0, RED), (1e-6, RED), (0.000999, RED),
    (0.001, ORANGE_RED), (0.005, ORANGE_RED), (0.00999, ORANGE_RED),
    (0.01, ORANGE), (0.03, ORANGE), (0.0499, ORANGE),
    (0.05, YELLOW), (0.1, YELLOW), (0.199, YELLOW),
    (0.2, YELLOW_GREEN), (0.35, YELLOW_GREEN), (0.499, YELLOW_GREEN),
    (0.5, LIGHT_GREEN), (0.7, LIGHT_GREEN), (0.899, LIGHT_GREEN),
    (0.9, GREEN), (0.99, GREEN), (1.0, GREEN),
])
def test_each_probability_takes_its_bins_colour(p, colour):
    # by hand: the bins' edges are 0.001, 0.01, 0.05, 0.2, 0.5 and 0.9; an edge starts the bin above it
    assert prob_colour(p) == colour


def test_the_scale_runs_from_red_to_green_without_turning_back():
    grid = [10 ** (k / 20) for k in range(-100, 1)]  # 1e-5 .. 1 in steps of 1/20 decade
    hues = [hue(prob_colour(p)) for p in grid]
    assert hues == sorted(hues)
    assert hues[0] == 0 and hues[-1] > 120  # red at the bottom, green at the top
    assert len(set(PROB_COLOURS)) == len(PROB_COLOURS) == 7
    assert [hue(c) for c in PROB_COLOURS] == sorted(hue(c) for c in PROB_COLOURS)


def test_out_of_range_values_take_the_end_colours():
    assert prob_colour(-0.1) == RED and prob_colour(1.5) == GREEN and prob_colour(float("nan")) == RED


@pytest.mark.parametrize("strategy", MEASURED_QUARTILES)
def test_the_measured_quartiles_fall_in_different_bins(strategy):
    """The old scale (hue 120 p) drew a T 0.8 text's lower half within 25 degrees of red; each quartile of what the
    bundled model chooses now has a colour of its own."""
    quartiles = MEASURED_QUARTILES[strategy]
    assert len({prob_colour(p) for p in quartiles}) == 3


def test_the_legend_shows_every_bin_and_the_tokens_keep_their_exact_p():
    shown = legend()
    for colour in PROB_COLOURS:
        assert f"background:{colour}" in shown
    labels = re.findall(r'<span style="background:[^"]+">([^<]+)</span>', shown)
    assert labels == ["&lt; 0.001", "0.001&ndash;0.01", "0.01&ndash;0.05", "0.05&ndash;0.2", "0.2&ndash;0.5",
                      "0.5&ndash;0.9", "&ge; 0.9"]
    out = tokens_html("ROMEO:", [" a", " b", " c"], [0.2064, 0.00052, None])
    assert f'style="background:{YELLOW_GREEN}" title="step 1: p = 0.206"' in out
    assert f'style="background:{RED}" title="step 2: p = 0.00052"' in out
    assert 'data-i="2" title="step 3"' in out  # no probability: no colour


def test_a_token_drawn_again_keeps_its_own_marks():
    """Tokens are drawn once and kept (a streamed text is drawn again at every update): each drawing still marks
    the selected, forced and shared tokens it is asked to, and only those."""
    probs = [0.5, 0.5, 0.5]
    plain = tokens_html("P", ["a", "b", "c"], probs)
    marked = tokens_html("P", ["a", "b", "c"], probs, selected=1, forced=2, shared=2)
    assert tokens_html("P", ["a", "b", "c"], probs) == plain
    spans = r'<span class="([^"]+)" data-i="(\d)" style="[^"]+" title="([^"]+)">([^<]*)</span>'
    assert re.findall(spans, marked) == [("axw-tok axw-shared", "0", "step 1: p = 0.500", "a"),
                                         ("axw-tok axw-sel axw-shared", "1", "step 2: p = 0.500", "b"),
                                         ("axw-tok axw-forced", "2", "step 3: p = 0.500 (forced)", "c")]
    assert [c for c, *_ in re.findall(spans, plain)] == ["axw-tok"] * 3
    longer = tokens_html("P", ["a", "b", "c", "d<"], probs + [0.004])
    assert longer.startswith(plain[:-len("</div>")])
    assert longer.endswith(f'data-i="3" style="background:{prob_colour(0.004)}" title="step 4: p = 0.004">d&lt;'
                           '</span></div>')
