"""The playground's request handlers: the API (/generate, /branch, /finetune) and the work behind the views.

Every handler checks its input before any compute (ValueError, shown as gr.Error), charges compute to the
visitor's fair share, and streams long work from a generator. The views (`playground.views`) place components
and wire them to these methods.
"""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import gradio as gr

from axw import NgramDatastore
from axw.specs import APP_SPECS

from . import branches
from . import models as model_store
from . import runs as R
from .branches import Tree
from .caps import FINETUNE_BYTES, MAX_SESSIONS, VISITOR_BUDGET_S, VISITOR_WINDOW_S
from .finetune import (CONTINUE, START_FROM, START_OVER, FineTune, finetune_setup, loss_curves, model_zip,
                       read_upload, split_heldout)
from .models import ModelCache
from .numbers.draws import draw
from .numbers.metrics import column_numbers
from .numbers.timeline import timeline
from .panels import beam_tree_svg, speculative_html
from .render import forks_html, side_by_side, step_html, tokens_html
from .sessions import ClassShare, KVStore, Sessions, env_number, visitor
from .sessions import trusted_proxies as proxy_count
from .settings import Settings, check_prompt, from_generation_config, number, settings_from_dict

STREAM_INTERVAL_S = 0.03

try:  # ZeroGPU on Spaces: borrow a GPU per call (imported before torch, as it asks); elsewhere a no-op
    import spaces
except ImportError:
    spaces = None


def gpu(fn, duration: int = 60):
    """Run `fn` on a ZeroGPU GPU for up to `duration` seconds per call, when on ZeroGPU."""
    return spaces.GPU(duration=duration)(fn) if spaces is not None else fn


def takes_settings(fn):
    """`fn(self, prompt, settings, request)` as an endpoint whose parameters are the prompt, every setting by
    name with its default (axw.specs' order: the order /generate has always taken them in) and the request;
    its docstring lists them with their help."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    # annotations as source text, as a function of this module written out by hand would have them
    params = [inspect.Parameter("self", kind), inspect.Parameter("prompt", kind, annotation="str")]
    params += [inspect.Parameter(s.name, kind, default=s.default, annotation=s.kind.__name__) for s in APP_SPECS]
    params.append(inspect.Parameter("request", kind, default=None, annotation="gr.Request"))
    signature = inspect.Signature(params, return_annotation="tuple[str, list, list]")

    @functools.wraps(fn)
    def endpoint(*args, **kwargs):
        values = signature.bind(*args, **kwargs)
        values.apply_defaults()
        values = dict(values.arguments)
        self, prompt, request = values.pop("self"), values.pop("prompt"), values.pop("request")
        return fn(self, prompt, Settings(**values), request)

    del endpoint.__wrapped__  # gradio and inspect read the signature below, not fn's
    endpoint.__signature__ = signature
    endpoint.__annotations__ = {p.name: p.annotation for p in params[1:]} | {"return": signature.return_annotation}
    endpoint.__doc__ = (fn.__doc__ or "") + "\n\n        Args:\n" + "".join(
        f"            {s.name}: {s.label}: {s.help}\n" for s in APP_SPECS)
    return endpoint


def throttle(items, interval: float = STREAM_INTERVAL_S):
    """The first item, then at most one every `interval` seconds, and always the
    last: a long text is not re-sent to the browser for every token."""
    shown, pending = 0.0, None
    for item in items:
        pending = item
        if time.perf_counter() - shown > interval:
            yield item
            shown, pending = time.perf_counter(), None
    if pending is not None:
        yield pending


def progress_text(history: list[dict], total: int) -> str:
    """The fine-tune's progress line: the step, its training loss and the latest held-out loss."""
    r = history[-1]
    text = f"step {r['step']} of {total}: training loss {r['loss']:.3f}"
    heldout = next((h for h in reversed(history) if h.get("heldout_loss") is not None), None)
    if heldout is not None:
        text += f", held-out {heldout['heldout_loss']:.3f} (step {heldout['step']})"
    return text


@contextmanager
def user_errors():
    """Our checks raise ValueError; the visitor sees it as a gr.Error and the app lives on. Running out of GPU
    memory is one visitor's request being too big for the moment, not a fault of the app: free what the failed
    request held and say so."""
    try:
        yield
    except ValueError as e:
        raise gr.Error(str(e)) from None
    except model_store.OutOfMemoryError:
        model_store.free_memory()
        raise gr.Error(model_store.OOM_MESSAGE) from None


def session_of(request) -> str:
    return getattr(request, "session_hash", None) or ""


class Playground:
    """What the app serves: the models, each visitor's fine-tune, KV caches and fair share, and the handlers."""

    def __init__(self, model: str, amateur: str | None, visitor_budget_s: float | None = None,
                 trust_proxy: bool | None = None, trusted_proxies: int | None = None, draft: str | None = None,
                 address_budget_s: float | None = None, finetunes: int | None = None):
        self.model_name, self.amateur_name = model, amateur
        self.draft_name = draft or model_store.default_draft(model, amateur)
        self.models = ModelCache([model, amateur, self.draft_name])
        self._datastores, self._datastores_lock = {}, threading.Lock()  # the draft's n-gram datastore, once loaded
        self.sessions = Sessions(
            size=env_number("AXW_FINETUNES", MAX_SESSIONS, 1, integer=True) if finetunes is None else finetunes,
            max_bytes=env_number("AXW_FINETUNE_BYTES", FINETUNE_BYTES, 0, integer=True))
        self.caches = KVStore()
        if visitor_budget_s is None:
            visitor_budget_s = env_number("AXW_VISITOR_BUDGET_S", VISITOR_BUDGET_S, 0)
        if address_budget_s is None and os.environ.get("AXW_ADDRESS_BUDGET_S", "").strip():
            address_budget_s = env_number("AXW_ADDRESS_BUDGET_S", 0, 0)
        self.share = ClassShare(visitor_budget_s, address_budget_s,
                                env_number("AXW_VISITOR_WINDOW_S", VISITOR_WINDOW_S, 1))
        # how many proxies append to X-Forwarded-For (AXW_TRUSTED_PROXIES; 1 on a Space); trust_proxy=True is 1
        self.trusted_proxies = proxy_count(trusted_proxies, trust_proxy)
        self.models.get(model)  # loaded once at start, onto the GPU when there is one

    @contextmanager
    def metered(self, request):
        """Refuse a visitor whose browser session has used its share, or whose address has used its ceiling (as a
        gr.Error, before any compute), else count the time spent in the block against both."""
        address, session = visitor(request, self.trusted_proxies), session_of(request)
        with user_errors():
            self.share.check(address, session)
        with self.share.charge(address, session):
            yield

    def model(self, name: str, use_finetuned: bool = False, session: str | None = None):
        if use_finetuned:
            run = self.sessions.get(session or "")
            if run is None:
                why = self.sessions.why_dropped(session or "")
                if why is not None:
                    raise ValueError(f"your fine-tuned model was dropped: {why}. Fine-tune again in the Fine-tune tab")
                raise ValueError("you have no fine-tuned model yet: train one in the Fine-tune tab")
            if not run.done.is_set():  # registered but not started yet, or training: the thread owns the copy
                raise ValueError("your fine-tune is still running: wait for it or press Stop")
            if run.error is not None:  # a half-trained copy is not what the visitor asked for
                raise ValueError("your last fine-tune failed: train again")
            return run.model
        return self.models.get(name or self.model_name)

    def load(self, name: str, progress=None):
        """The model `name`, a Hub model downloaded first with its progress passed to gradio's `progress`; a bad
        name, or a model that cannot load, as a gr.Error."""
        with user_errors():
            return self.models.get(name or self.model_name, progress=progress)

    def starting_settings(self, name: str | None = None) -> tuple[Settings | None, list[str]]:
        """A model's own settings (its generation_config.json) for the controls, or None when it has none."""
        config = self.models.get(name or self.model_name).generation_config
        return from_generation_config(config) if config is not None else (None, [])

    def prepare(self, settings: Settings, session: str | None, trace: bool = True):
        """(model, the models beside it by `start`'s names, GenerationConfig) for `settings`, all checked: nothing
        has run yet. Beside it: contrastive decoding's amateur, speculative decoding's draft model."""
        settings = settings.check()
        m = self.model(settings.model, settings.use_finetuned, session)
        config = settings.config(m, trace=trace)
        helpers = {}
        if settings.strategy == "contrastive decoding":
            helpers["amateur"] = self._same_vocab(m, settings.amateur or self.amateur_name or "", "amateur model")
        elif settings.strategy == "speculative decoding" and settings.drafter != "prompt lookup":
            draft = self._same_vocab(m, self._drafter_name(settings) or "", "draft model")
            if settings.drafter != "datastore":
                helpers["assistant"] = draft
            if settings.drafter.endswith("datastore"):
                helpers["datastore"] = self._datastore()
        return m, helpers, config

    def _datastore(self):
        """The n-gram datastore beside the draft model (in its folder), loaded once; the draft shares the model's
        tokenizer, and so does its datastore (the library refuses one of another vocabulary size)."""
        name = self.draft_name
        with self._datastores_lock:
            if name not in self._datastores:
                try:
                    self._datastores[name] = NgramDatastore.from_pretrained(name)
                except (OSError, ValueError) as e:
                    raise ValueError(f"the draft model {Path(name).name or name} has no n-gram datastore beside it: "
                                     "pick another drafter") from e
            return self._datastores[name]

    def _drafter_name(self, settings: Settings) -> str | None:
        """The model that drafts for speculative decoding: the amateur, or the draft model."""
        return settings.amateur or self.amateur_name if settings.drafter == "amateur" else self.draft_name

    def _same_vocab(self, m, name: str, role: str):
        # from the same cache as the expert, so it sits on the expert's device
        other = self.models.get(name)
        if other.net.num_tokens != m.net.num_tokens or other.tokenizer.get_vocab() != m.tokenizer.get_vocab():
            raise ValueError(f"the {role} must share the model's tokenizer (same vocabulary)")
        return other

    def start(self, prompt, settings: Settings, session: str | None, keep_cache: bool = False, trace: bool = True):
        """(model, run, its updates, its KV cache or None) for a new generation, checked before any compute."""
        check_prompt(prompt)
        m, helpers, config = self.prepare(settings, session, trace)
        settings = settings.check()
        cache = m.net.new_cache() if keep_cache and R.uses_cache(settings) else None
        run, updates = R.start(m, prompt, settings, config, cache=cache, **helpers)
        return m, run, updates, cache

    def branch(self, parent: R.Run, step, token, session: str, kept=None):
        """(model, branch run, its updates, its KV cache or None), checked before any compute."""
        m, helpers, config = self.prepare(parent.settings, session)
        step, token = branches.check_fork(parent, step, token, m.net.num_tokens, R.stop_set(m, parent.settings))
        return (m, *branches.branch(m, parent, step, token, config, kept=kept, **helpers))

    def forced(self, prompt, settings: Settings, session: str, keep_cache: bool = False):
        """(model, the run as generated, the branch that forces `settings.force_token` at `settings.force_step`,
        its updates, its KV cache): the run is generated up to that step with the same settings and seed (its KV
        cache kept), then the branch forces the token and goes on. Checked before any compute; only a step past
        where the text ended is found by generating up to it."""
        check_prompt(prompt)
        m, _, _ = self.prepare(settings, session)  # every setting, force_token against the vocabulary included
        settings = settings.check()
        step = settings.force_step - 1
        # the run as /generate runs it, up to the step (speculative decoding drafts as it would have)
        _, root, updates, cache = self.start(prompt, settings.unforced(), session, keep_cache=True)
        for root in updates:
            if len(root.rows) > step:
                break
        if step >= len(root.rows):
            raise ValueError(f"the text ended after {len(root.rows)} steps, before step {step + 1}")
        _, run, updates, kept = self.branch(root, step, settings.force_token, session, kept=cache)
        return m, root, run, updates, kept if keep_cache else None

    # --- the API: /generate, /branch and /finetune ---

    @takes_settings
    def generate_api(self, prompt: str, settings: Settings, request: gr.Request = None) -> tuple[str, list, list]:
        """Continue `prompt`. Returns (generated text, the new tokens as [token, probability], the per-step
        trace). Filters chain in the order of their parameters below, each off at its off value;
        sampler_order "temperature_first" puts temperature before them. strategy "speculative decoding" drafts
        num_assistant_tokens a round with the drafter. force_step (1-based; 0 = none) with force_token (a token
        id) is a what-if branch: the same run with that token forced at that step, continued with the same
        settings and seed. chat (for a model with a chat template) makes `prompt` the user's message after the
        system message `system`, laid out with the template; the text then ends at any of the model's stop ids."""
        session = session_of(request)
        with self.metered(request), user_errors():
            if settings.check().force_step:
                *_, updates, _ = self.forced(prompt, settings, session)
            else:
                _, run, updates, _ = self.start(prompt, settings, session)
            for run in updates:
                pass
        return "".join(run.pieces), [[p, q] for p, q in zip(run.pieces, run.probs)], run.rows

    def branch_api(self, prompt: str, step: int = 0, token: int = 0, settings: dict | None = None,
                   request: gr.Request = None) -> tuple[str, list, list]:
        """What /generate with `settings` (a dict of its parameters by name; those left out take its defaults)
        would have given had it taken token id `token` (one of the trace's candidates, say) at `step` (0-based)
        and gone on from there with the same settings and seed. Returns (text, tokens, trace) of the whole
        branch, like /generate, the forced step's trace row marked "forced". (/generate's force_step and
        force_token do the same, 1-based, under its own names.)"""
        session = session_of(request)
        with self.metered(request), user_errors():
            settings = settings_from_dict(settings)
            check_prompt(prompt)
            limit = settings.check().max_new_tokens
            step = number("step", step, 0, limit - 1, integer=True)
            m, _, _ = self.prepare(settings, session)
            token = number("token", token, 0, m.net.num_tokens - 1, integer=True)
            *_, updates, _ = self.forced(prompt, replace(settings, force_step=step + 1, force_token=token), session)
            for run in updates:
                pass
        return "".join(run.pieces), [[p, q] for p, q in zip(run.pieces, run.probs)], run.rows

    def finetune_api(
        self,
        text: str,
        steps: int = 20,
        learning_rate: float = 3e-4,
        batch_size: int = 8,
        context_length: int = 64,
        mask_prob: float = 0.0,
        seed: int = 0,
        model: str = "",
        request: gr.Request = None,
    ) -> dict:
        """Fine-tune a private copy of the model on `text`; returns {steps, stopped, loss, losses, val_losses}:
        the training loss of each step, and [step, loss] of the held-out last tenth of the text's tokens every
        tenth of the run and at its end (empty when that tenth is shorter than one window: context_length + 1
        tokens). Generate from it with /generate and use_finetuned=True (same client session)."""
        session = session_of(request)
        with self.metered(request), user_errors():
            run, _ = self._finetune_run(model, text, steps, learning_rate, batch_size, context_length, mask_prob,
                                        seed, session)
            self.sessions.put(session, run)
            for _ in run.run():
                pass
        train_curve, heldout = loss_curves(run.history)
        return dict(steps=run.result.step, stopped=run.result.stopped, loss=run.result.loss,
                    losses=[loss for _, loss in train_curve], val_losses=[[step, loss] for step, loss in heldout])

    def _finetune_run(self, model_name, text, steps, lr, batch_size, context, mask_prob, seed, session,
                      start_from=START_OVER) -> tuple[FineTune, str | None]:
        """A fine-tune checked and made, not started or registered: (run, why it has no held-out curve, or None).
        It trains a copy of the base model, or to continue (`start_from` CONTINUE) a copy of the session's
        finished fine-tuned copy. Everything is checked before any compute."""
        if start_from not in START_FROM:
            raise ValueError(f"start from must be one of: {', '.join(START_FROM)}")
        name = model_name or self.model_name
        earlier = None
        if start_from == CONTINUE:
            earlier = self.sessions.get(session)
            if earlier is None:
                why = self.sessions.why_dropped(session)
                raise ValueError("there is no fine-tuned copy to continue: "
                                 + (f"yours was dropped ({why})" if why else "you have not fine-tuned one yet")
                                 + f"; pick start from {START_OVER!r}")
            base = self.model("", True, session)  # refused while it trains, or when its fine-tune failed
            if earlier.base_name != name:
                raise ValueError(f"your fine-tuned copy is of {Path(earlier.base_name or '').name or earlier.base_name}"
                                 f", not {Path(name).name or name}: pick that model to continue it, or start over")
        else:
            base = self.model(model_name)
        ids, config = finetune_setup(base, text, steps, lr, batch_size, context, mask_prob, seed)
        train_ids, heldout_ids, no_heldout = split_heldout(ids, config.seq_len)
        run = FineTune(base, train_ids, config, heldout_ids, earlier=earlier.history if earlier is not None else None)
        run.base_name = name
        return run, no_heldout

    # --- the Generate tab: a run, its steps, its branches ---

    def show(self, tree: Tree, run: R.Run, step: int | None = 0, full: bool = True) -> dict:
        """What the views draw of `run` with `step` (0-based) open, by name: the output with that token
        highlighted and the step view; with `full`, also the strategy's own view (the beam tree, speculative
        rounds) with the step marked, the timeline and the branches. Opening another step of the same run (`full`
        off) leaves those as drawn: the page moves the strategy view's mark itself (views.generate), so a large
        beam tree is not drawn and sent again on every click. Each view places what it needs."""
        m = self._tokenizer_model(run)
        selected = None if step is None or not run.rows else min(max(int(step), 0), len(run.rows) - 1)
        row = run.rows[selected] if selected is not None else None
        previous = run.rows[selected - 1] if selected else None
        strategy = run.settings.strategy
        shown = dict(tree=tree, run=run, selected=selected, steps=len(run.rows), tokenizer=m.tokenizer,
                     output=tokens_html(run.prompt, run.pieces, run.probs, selected=selected, forced=run.step,
                                         specials=run.specials),
                     step=step_html(row, m.tokenizer, run.settings, previous=previous))
        if full:
            shown.update(beam_tree=beam_tree_svg(run.rows, m.tokenizer, run.prompt, selected,
                                                 run.settings.length_penalty) if strategy == "beam search" else None,
                         speculative=speculative_html(run.rows, m.tokenizer, selected,
                                                      self.drafter_label(run.settings))
                         if strategy == "speculative decoding" else None,
                         timeline=timeline(run), forks=forks_html(list(tree.runs.values()), m.tokenizer, run.id),
                         choices=tree.choices(m.tokenizer), current=run.id)
        return shown

    def drafter_label(self, settings: Settings) -> str:
        """The drafter as the rounds view names it: which model drafts."""
        if settings.drafter == "prompt lookup":
            return "prompt lookup"
        name = self._drafter_name(settings)
        first, *more = settings.drafter.split(" + ")
        return " + ".join([f"{first} ({Path(name or '').name or name})", *more])

    def _tokenizer_model(self, run: R.Run, session: str | None = None):
        return self.model(run.settings.model, run.settings.use_finetuned, session or run.session)

    def generate_ui(self, *values, request: gr.Request = None):
        """The Generate button. `values`: the controls (views.settings.UI_INPUTS order), then the visitor's tree.
        Yields what the views show: the output while it streams, then everything. A share link's what-if branch
        (force_step) is generated after its text, and opened."""
        from .views.settings import settings_from_ui

        *controls, tree = values
        session = session_of(request)
        with self.metered(request), user_errors():
            prompt, settings = settings_from_ui(*controls)
            force = settings.check().force_step
            m, run, updates, cache = self.start(prompt, settings.unforced(), session, keep_cache=True)
            if force:  # refused before any compute when the forced token is not a token of this model
                settings.check(m.net.num_tokens)
            for run in throttle(updates):
                if not run.done:
                    yield dict(output=tokens_html(run.prompt, run.pieces, run.probs, specials=run.specials))
            tree = tree if isinstance(tree, Tree) else Tree()
            run.session = session
            tree.add(run)
            self.caches.drop(session)
            self.caches.put(session, run.id, cache)
            yield self.show(tree, run, 0)
            if force:
                yield from self.branch_ui(tree, force - 1, settings.force_token, request, metered=False)

    def branch_ui(self, tree, step, token, request: gr.Request = None, metered: bool = True):
        """A candidate was clicked in the step view: branch the open run at `step` (0-based) with `token`, and
        open the branch. Yields like generate_ui."""
        session = session_of(request)
        parent = tree.get() if isinstance(tree, Tree) else None
        with (self.metered(request) if metered else nullcontext()), user_errors():
            if parent is None:
                raise ValueError("generate some text first: a branch starts from one of its steps")
            m, run, updates, cache = self.branch(parent, step, token, session, kept=self.caches.get(session, parent.id))
            for run in throttle(updates):
                if not run.done:
                    yield dict(output=tokens_html(run.prompt, run.pieces, run.probs, forced=run.step,
                                                    specials=run.specials))
            run.session = session
            tree.add(run)
            self.caches.drop(session, keep=set(tree.runs))
            self.caches.put(session, run.id, cache)
            yield self.show(tree, run, run.step)

    def step_ui(self, tree, step, request: gr.Request = None):
        """Open `step` (0-based) of the open run: the step view, and the output with that token highlighted."""
        with user_errors():
            run = tree.get() if isinstance(tree, Tree) else None
            if run is None or not run.rows:
                return {}
            step = number("step", step, 0, len(run.rows) - 1, integer=True)
            return self.show(tree, run, step, full=False)

    def open_ui(self, tree, run_id, request: gr.Request = None):
        """Open another run of the tree (the generated text or a branch), at its branch step."""
        with user_errors():
            run = tree.get(run_id) if isinstance(tree, Tree) else None
            if run is None:
                raise ValueError("that run is gone: generate again, or pick another")
            tree.current = run.id
            return self.show(tree, run, run.step if run.step is not None else 0)

    def side_by_side_ui(self, tree, a, b, request: gr.Request = None):
        with user_errors():
            runs = [tree.get(i) if isinstance(tree, Tree) else None for i in (a, b)]
            ref = next((r for r in runs if r is not None), None)
            if ref is None:
                return side_by_side(None, None, None)
            return side_by_side(*runs, self._tokenizer_model(ref).tokenizer)

    def sample_ui(self, tree, step, n, request: gr.Request = None):
        """Draw `n` tokens from the final distribution of `step` (0-based) of the open run: (its trace row, the
        labels, the exact probabilities, the counts), the last of each for all other tokens together."""
        run = tree.get() if isinstance(tree, Tree) else None
        with user_errors():
            if run is None or not run.rows:
                raise ValueError("generate some text and open a step first")
            step = number("step", step, 0, len(run.rows) - 1, integer=True)
            row = run.rows[step]
            exact, counts = draw(row, n, run.settings.seed)
            tokenizer = self._tokenizer_model(run).tokenizer
        from .render import show_token

        # numbered so that the plots, which order their bars by label, keep the candidates' order
        labels = [f"{i + 1:02d} {show_token(tokenizer, t)}" for i, t in enumerate(row["candidates"])]
        labels.append(f"{len(labels) + 1:02d} all others")
        return row, labels, exact, counts

    # --- the other tabs ---

    def compare_view_ui(self, model_name, prompt, seed, max_new_tokens, amateur, columns,
                        request: gr.Request = None, chat: bool = False, system: str = ""):
        """The Compare tab: (the columns' HTML, their numbers) as they stream; in chat mode (`chat`, `system`)
        every column answers the same laid-out chat."""
        from .views.compare import grid_html, metrics_frame

        with self.metered(request):
            tokenizer = None
            for cols in self._compare(model_name, prompt, seed, max_new_tokens, amateur, columns, session_of(request),
                                      chat, system):
                if tokenizer is None:
                    with user_errors():
                        tokenizer = self.model(model_name).tokenizer
                yield grid_html(cols, tokenizer), metrics_frame(cols)

    def _compare(self, model_name, prompt, seed, max_new_tokens, amateur, labels, session, chat=False, system=""):
        """Yields the columns (dicts: label, run or error, and once done its numbers) as they stream, greedy first
        (whether picked or not: the others are measured against it). Everything is checked
        before the first column runs; a column that cannot run (no amateur, say) says why in its place."""
        from .caps import MAX_COMPARE_COLUMNS
        from .views.compare import COLUMNS, COMPARE, LABELS, settings_of

        with user_errors():
            check_prompt(prompt)
            m = self.model(model_name)
            common = Settings(seed=seed, max_new_tokens=max_new_tokens, chat=chat, system=system).check()
            if common.chat:
                R.chat_prompt(m, prompt, common.system)  # a model without a template is refused once, not per column
            if not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) and x in LABELS for x in labels):
                raise ValueError(f"columns must be a list of these: {', '.join(LABELS)}")
            if len(labels) > MAX_COMPARE_COLUMNS:
                raise ValueError(f"at most {MAX_COMPARE_COLUMNS} columns at a time")
            greedy = COMPARE[0][0]
            if greedy not in labels:
                labels = [greedy, *labels]
            chosen = [c for c in COLUMNS if c[0] in labels]
            cols = []
            for label, strategy, values in chosen:
                settings = replace(settings_of(strategy, values), model=model_name or "", amateur=amateur or "",
                                   seed=common.seed, max_new_tokens=common.max_new_tokens, chat=common.chat,
                                   system=common.system)
                try:
                    cols.append(dict(label=label, updates=self.start(prompt, settings, session, trace=False)[2]))
                except ValueError as e:  # e.g. no amateur model: say so in that column, run the others
                    cols.append(dict(label=label, error=str(e)))
        reference_ids = None
        with user_errors():
            for col in cols:
                if "updates" not in col:
                    continue
                seconds, updates = 0.0, throttle(col.pop("updates"))
                while True:  # the time spent generating, not showing
                    began = time.perf_counter()
                    run = next(updates, None)
                    seconds += time.perf_counter() - began
                    if run is None:
                        break
                    col["run"] = run
                    yield cols
                run = col["run"]
                if col["label"] == COMPARE[0][0]:
                    reference_ids = run.new_ids
                col.update(done=True, **column_numbers(m, run, seconds, reference_ids))
        yield cols

    def finetune_ui(self, model_name, text, upload, steps, lr, batch_size, context, mask_prob, seed,
                    request: gr.Request, start_from=START_OVER, progress=None):
        """The Fine-tune button: yields (the loss curves, the status line) while it trains; the status line says
        how far it got (`progress`, a gr.Progress, is accepted from older callers and not used: a progress bar
        would cover what it tracks). `start_from` (START_FROM) comes after the request, so calls written before
        it existed still start over."""
        with self.metered(request):
            yield from self._finetune_ui(model_name, text, upload, steps, lr, batch_size, context, mask_prob, seed,
                                         request, start_from)

    def _finetune_ui(self, model_name, text, upload, steps, lr, batch_size, context, mask_prob, seed, request,
                     start_from=START_OVER):
        from .views.finetune import loss_frame

        session = session_of(request)
        with user_errors():
            if upload:
                text = read_upload(upload)
            run, no_heldout = self._finetune_run(model_name, text, steps, lr, batch_size, context, mask_prob, seed,
                                                 session, start_from)
            earlier = self.sessions.get(session)
            self.sessions.put(session, run)
        heldout_note = (f"held-out: the last tenth of your text ({run.heldout_ids.numel()} tokens), not trained on"
                        if run.heldout_ids is not None else no_heldout)
        heldout_note = heldout_note[0].upper() + heldout_note[1:] + "."
        try:
            with user_errors():
                for history in run.run():
                    line = "starting"
                    if history and history[-1]["step"] > run.start_step:
                        line = progress_text(history, run.start_step + run.config.steps)
                    yield loss_frame(history), f"**training**: {line}\n\n{heldout_note}"
        except gr.Error as e:
            if run.continued and earlier is not None:  # a failed continue leaves the copy it started from
                self.sessions.put(session, earlier)
                raise gr.Error(f"{e.message}; your fine-tuned copy is as it was before") from None
            raise
        r = run.result
        if run.continued:
            how = f"continued your fine-tuned copy: now {run.steps} steps in all ({r.step} more in {r.seconds:.1f} s)"
        else:
            how = "started over from the base model" if earlier is not None else "trained from the base model"
            how += f", {r.step} steps in {r.seconds:.1f} s"
        losses = f"last training loss {r.loss:.3f}" if r.loss is not None else "no step trained"
        if r.heldout_loss is not None:
            losses += f", held-out loss {r.heldout_loss:.3f}"
        word = "stopped" if r.stopped else "done"
        yield loss_frame(run.history), (f"**{word}**: {how}; {losses}. Generate from it below or in the Generate "
                                        f"tab.\n\n{heldout_note}")

    def generate_tuned_ui(self, prompt, request: gr.Request):
        """The fine-tune tab's own box: sampling at temperature 0.8 with top-p 0.9 from the visitor's copy."""
        settings = Settings(max_new_tokens=100, temperature=0.8, top_p=0.9, seed=0, use_finetuned=True)
        with self.metered(request), user_errors():
            _, _, updates, _ = self.start(prompt, settings, request.session_hash)
            for run in throttle(updates):
                yield tokens_html(run.prompt, run.pieces, run.probs)

    def unload(self, request: gr.Request):
        self.sessions.drop(request.session_hash)  # a closed tab frees its fine-tuned copy
        self.caches.drop(request.session_hash)  # and the KV caches its branches would continue from

    def stop_ui(self, request: gr.Request):
        run = self.sessions.get(request.session_hash)
        if run is not None:
            run.stop.set()

    def download_ui(self, request: gr.Request):
        with user_errors():
            m = self.model("", True, request.session_hash)
            path = model_zip(m)
            out = gr.File(path, visible=True)
            if out.value and out.value["path"] != path:  # gradio keeps its own copy: drop ours
                shutil.rmtree(Path(path).parent, ignore_errors=True)
            return out

    def push_ui(self, repo_id, token, private, request: gr.Request):
        with user_errors():
            m = self.model("", True, request.session_hash)
            if not (repo_id or "").strip():
                raise ValueError("give a Hub repo id such as your-name/my-model")
            if not (token or "").strip():
                raise ValueError("paste a Hugging Face write token (used for this upload only)")
            try:
                url = m.push_to_hub(repo_id.strip(), token=token.strip(), private=bool(private))
            except Exception as e:  # Hub errors: report them without ever repeating the token
                raise ValueError(f"push failed: {str(e).replace(token.strip(), '***')}") from None
        return f"pushed: {url}", ""  # the token box is cleared

    def info(self, name):
        with user_errors():
            m = self.model(name)
        params = sum(p.numel() for p in m.parameters())
        text = (f"{params / 1e6:.2f}M parameters, vocabulary {m.net.num_tokens}, context {m.max_seq_len} tokens, "
                f"on {m.device} ({next(m.parameters()).dtype})")
        if m.generation_config is not None:
            _, unsupported = from_generation_config(m.generation_config)
            text += "; its generation_config.json gives the starting settings"
            if unsupported:
                text += f" (without {', '.join(unsupported)}: set those by hand)"
        return text

