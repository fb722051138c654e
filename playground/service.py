"""The playground's core, what every tab shares: the models, each visitor's fine-tuned copy, KV caches and fair
share (`Playground.metered`), runs started, branched and forced, and the named API's /generate and /branch.

Every handler checks its input before any compute (ValueError, shown as gr.Error by `user_errors`), charges
compute to the visitor's fair share, and streams long work from a generator. Each tab's own handlers live beside
its view (`playground.views`: `generate.Handlers`, `compare.Handlers`, `finetune.Handlers`), mixed into this
class by app.py; this module imports no view.
"""

from __future__ import annotations

import functools
import inspect
import os
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
from .caps import FINETUNE_BYTES, MAX_SESSIONS, VISITOR_BUDGET_S, VISITOR_WINDOW_S
from .models import ModelCache
from .sessions import (ClassShare, KVStore, Sessions, env_number, shared_alone, shared_forwards_on, workers_wanted,
                       visitor)
from .sessions import trusted_proxies as proxy_count
from .settings import Settings, check_prompt, from_generation_config, number, settings_from_dict
from .workers import WorkerError, Workers, serve

STREAM_INTERVAL_S = 0.05  # the least time between two updates of a streamed text
# what the page's streamed updates may cost the server together: each one re-renders and re-sends the text, work
# outside the model that a class's visitors would otherwise multiply; one stream updates every STREAM_INTERVAL_S,
# several together at most STREAM_UPDATES_PER_S updates a second in all, and each at least every
# STREAM_INTERVAL_MAX_S
STREAM_UPDATES_PER_S = 30
STREAM_INTERVAL_MAX_S = 0.5

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


class Streams:
    """The streamed texts in flight (a generation or a branch streaming to a page): how often each may update."""

    def __init__(self, least: float | None = None):
        self.count, self.lock = 0, threading.Lock()
        self.least = env_number("AXW_STREAM_INTERVAL_S", STREAM_INTERVAL_S, 0) if least is None else least

    @contextmanager
    def open(self):
        with self.lock:
            self.count += 1
        try:
            yield
        finally:
            with self.lock:
                self.count -= 1

    def interval(self) -> float:
        """Seconds between two updates of one stream: STREAM_INTERVAL_S alone (AXW_STREAM_INTERVAL_S), longer when
        many stream at once."""
        return max(self.least, min(STREAM_INTERVAL_MAX_S, self.count / STREAM_UPDATES_PER_S))


STREAMS = Streams()


def throttle(items, interval: float | None = None):
    """The first item, then at most one every `interval` seconds (by default `STREAMS.interval()`, which grows
    with the streams in flight), and always the last: a long text is not re-sent to the browser for every
    token."""
    with STREAMS.open() if interval is None else nullcontext():
        shown, pending = 0.0, None
        for item in items:
            pending = item
            if time.perf_counter() - shown > (STREAMS.interval() if interval is None else interval):
                yield item
                shown, pending = time.perf_counter(), None
        if pending is not None:
            yield pending


@contextmanager
def user_errors():
    """Our checks raise ValueError; the visitor sees it as a gr.Error and the app lives on. Running out of GPU
    memory is one visitor's request being too big for the moment, not a fault of the app: free what the failed
    request held and say so."""
    try:
        yield
    except (ValueError, WorkerError) as e:  # a worker process that failed a run says so too
        raise gr.Error(str(e)) from None
    except model_store.OutOfMemoryError:
        model_store.free_memory()
        raise gr.Error(model_store.OOM_MESSAGE) from None


def serve_worker(fd: int, args: dict, threads: int, cpu: int | None = None):
    """A worker process (`playground.workers`): a `Playground` built from `args`, serving runs on socket `fd`,
    kept to `cpu` when given."""
    from multiprocessing.connection import Connection

    serve(Connection(fd), lambda: Playground(**args), threads, cpu)


def session_of(request) -> str:
    return getattr(request, "session_hash", None) or ""


class Playground:
    """What every tab and the API share: the models, each visitor's fine-tuned copy, KV caches and fair share."""

    def __init__(self, model: str, amateur: str | None, visitor_budget_s: float | None = None,
                 trust_proxy: bool | None = None, trusted_proxies: int | None = None, draft: str | None = None,
                 address_budget_s: float | None = None, finetunes: int | None = None, workers: int | None = None):
        self.model_name, self.amateur_name = model, amateur
        self.draft_name = draft or model_store.default_draft(model, amateur)
        self.models = ModelCache([model, amateur, self.draft_name], shared=shared_forwards_on(),
                                 alone=shared_alone())
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
        # AXW_WORKERS: runs of these models generate in processes of their own, on the same torch threads
        workers = workers_wanted() if workers is None else workers
        self.workers = (Workers(workers, dict(model=model, amateur=amateur, draft=self.draft_name, workers=0))
                        if workers else None)

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
            draft = self._same_vocab(m, self.drafter_name(settings) or "", "draft model")
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

    def drafter_name(self, settings: Settings) -> str | None:
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
        if self.workers is not None and self.in_workers(settings):
            run, _ = R.start(m, prompt, settings, config, **helpers)  # made and checked here; nothing has run
            return m, run, self.workers.updates(run, prompt, settings, trace), None
        cache = m.net.new_cache() if keep_cache and R.uses_cache(settings) else None
        run, updates = R.start(m, prompt, settings, config, cache=cache, **helpers)
        return m, run, updates, cache

    def in_workers(self, settings: Settings) -> bool:
        """Whether a run of `settings` generates in the worker processes: every model it needs is one they hold
        (not a visitor's fine-tuned copy, nor a model picked since). Its KV cache stays there: a branch of it
        reads its prefix again."""
        return (not settings.use_finetuned and (settings.model or self.model_name) == self.model_name
                and (settings.strategy != "contrastive decoding"
                     or (settings.amateur or self.amateur_name) == self.amateur_name)
                and (settings.strategy != "speculative decoding" or settings.drafter == "prompt lookup"
                     or self.drafter_name(settings) in (self.draft_name, self.amateur_name)))

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

    def model_of(self, run: R.Run, session: str | None = None):
        """The model `run` was generated with (its tokenizer shows its tokens): a fine-tuned run's, its visitor's
        copy."""
        return self.model(run.settings.model, run.settings.use_finetuned, session or run.session)

    def unload(self, request: gr.Request):
        self.sessions.drop(request.session_hash)  # a closed tab frees its fine-tuned copy
        self.caches.drop(request.session_hash)  # and the KV caches its branches would continue from

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

    # --- the named API: /generate and /branch (/finetune is the Fine-tune tab's) ---

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

