"""One declared spec per setting: the library's checks, the playground's settings, controls and /generate's
parameters, and the README's sampler table all follow axw.specs."""

import inspect
import math
import subprocess
import sys
from pathlib import Path

import pytest

from axw import GenerationConfig
from axw.specs import APP_SPECS, FILTER_SPECS, LIBRARY_SPECS, SPEC, sampler_table
from playground.settings import Settings
from playground.views.settings import UI_INPUTS, control_names, settings_from_ui, ui_values

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = [s for s in APP_SPECS if s.kind in (int, float) and (s.library or s.is_filter)]


def outside(spec):
    """Values just outside the library's range, and one well inside it."""
    step = 1 if spec.integer else 1e-3
    bad = []
    if spec.low is not None:
        bad.append(spec.low if spec.low_open else spec.low - step)
    if spec.high is not None:
        bad.append(spec.high if spec.high_open else spec.high + step)
    return [b for b in bad if b != spec.off]


def inside(spec):
    low = spec.low if spec.low is not None else -1.0
    high = spec.high if spec.high is not None else low + 10
    value = (low + high) / 2
    return int(math.ceil(value)) if spec.integer else value


def library_call(spec, value) -> GenerationConfig:
    if spec.is_filter:
        return GenerationConfig(filter_logits_fn=spec.filter, filter_kwargs={spec.param: value})
    return GenerationConfig(**{spec.name: value})


def app_settings(spec, value) -> Settings:
    strategy = next(s for s in ("sampling", "beam search", "contrastive search", "contrastive decoding",
                                "speculative decoding") if spec.name in Settings(strategy=s).reads() or
                    spec.name in Settings(strategy=s, stochastic=True).reads())
    return Settings(strategy=strategy, **{spec.name: value})


@pytest.mark.parametrize("spec", NUMBERS, ids=lambda s: s.name)
def test_the_app_and_the_library_accept_the_same_range(spec):
    """The drift the spec ends: a value the library refuses, the app refuses too, by the setting's label; a
    value inside the range both take (where the app's cap for a shared machine allows it)."""
    for value in outside(spec):
        with pytest.raises(ValueError, match=spec.name if not spec.is_filter else spec.param):
            library_call(spec, value)
        with pytest.raises(ValueError, match=spec.label):
            app_settings(spec, value).check(vocab=1000)
    value = inside(spec)
    library_call(spec, value)
    if spec.cap is None or spec.cap[0] <= value <= spec.cap[1]:
        assert getattr(app_settings(spec, value).check(vocab=1000), spec.name) == value


def test_off_values_are_the_apps_and_the_library_leaves_the_setting_out():
    """0 means off for top-n-sigma in the app; the library's filter has no such value (n = 0 would keep only
    the top token), so the app leaves the filter out of the chain instead of passing 0."""
    model = type("M", (), dict(net=type("N", (), dict(num_tokens=50))(), eos_token_id=None, stop_token_ids=[]))()
    config = Settings(top_n_sigma=0.0, min_p=0.1).config(model)
    assert config.filter_logits_fn == ["min_p"]
    with pytest.raises(ValueError, match="top_n_sigma's n|n must be"):
        GenerationConfig(filter_logits_fn="top_n_sigma", filter_kwargs=dict(n=0.0))
    assert Settings(mirostat_tau=0.0).config(model).mirostat_tau is None
    with pytest.raises(ValueError, match="mirostat_tau"):
        GenerationConfig(mirostat_tau=0.0)


def test_every_library_setting_is_checked_by_its_spec():
    defaults = GenerationConfig()
    for spec in LIBRARY_SPECS:
        assert hasattr(defaults, spec.name), spec.name
        if spec.kind is bool:
            with pytest.raises(ValueError, match=spec.name):
                GenerationConfig(**{spec.name: "yes"})
        elif spec.choices:
            with pytest.raises(ValueError, match=spec.name):
                GenerationConfig(**{spec.name: "none of them"})


def test_generate_takes_every_setting_in_the_declared_order():
    from playground.service import Playground

    params = list(inspect.signature(Playground.generate_api).parameters)
    assert params == ["self", "prompt", *(s.name for s in APP_SPECS), "request"]
    for s in APP_SPECS:
        parameter = inspect.signature(Playground.generate_api).parameters[s.name]
        assert parameter.default == s.default and parameter.annotation == s.kind.__name__
    assert [f.name for f in Settings.__dataclass_fields__.values()] == [s.name for s in APP_SPECS]


def test_every_setting_has_its_controls_and_they_round_trip():
    """Each app setting is one control (a filter: its checkbox and slider), in the declared order; a settings
    value sent as the page sends it comes back as the same Settings."""
    names = [n for s in APP_SPECS if s.name != "model" for n in control_names(s)]
    assert UI_INPUTS == ["model", "prompt", *names]
    settings = Settings(strategy="sampling", top_k=7, top_p=0.8, top_n_sigma=2.0, typical_p=0.7, mirostat_tau=4.0,
                        seed=3, dry_multiplier=0.5)
    assert settings_from_ui(*ui_values("ROMEO:", settings)) == ("ROMEO:", settings)
    for f in FILTER_SPECS:  # a switched-off filter's slider holds its starting value; the setting is off
        values = ui_values("ROMEO:", Settings())
        assert values[UI_INPUTS.index(f.toggle)] is False
        if f.param is not None:
            assert values[UI_INPUTS.index(f.control)] == f.start
            assert f.slider[0] <= f.start <= f.slider[1]
        assert f.is_off(getattr(Settings(), f.name))


def test_sliders_lie_within_the_range():
    for s in APP_SPECS:
        if s.slider:
            low, high, _ = s.slider
            bounds = s.cap or (s.low, s.high)
            assert bounds[0] is None or low >= bounds[0] or s.is_off(low), s.name
            assert bounds[1] is None or high <= bounds[1], s.name


def test_the_readme_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert sampler_table() in readme
    for s in APP_SPECS:
        if s.group in ("filters", "stateful"):
            assert f"`{s.name}`" in sampler_table()
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "sampler_table.py"), "--check"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout


def test_names_are_unique_and_declared_once():
    names = [s.name for s in APP_SPECS]
    assert len(names) == len(set(names))
    controls = [n for s in APP_SPECS for n in control_names(s)]
    assert len(controls) == len(set(controls))
    assert SPEC["top_k"].filter == "top_k" and SPEC["temperature"].library
