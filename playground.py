"""What the playground (app.py) does, without the UI: loading and caching
models, checking input, building generate's arguments, turning the teaching
trace into chart data, colouring tokens, and per-visitor fine-tunes.

Kept free of gradio so tests and benchmarks import it directly; app.py turns
the `ValueError`s raised here into `gr.Error` messages.
"""

from __future__ import annotations

import copy
import ctypes
import html
import os
import queue
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict, deque
from contextlib import contextmanager
from pathlib import Path

import torch

from axw import AutoregressiveWrapper
from axw.hub import validate_repo_id
from axw.utils import check_number
from axw.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent
# the bundled models; AXW_MODEL / AXW_AMATEUR (or app.py's --model / --amateur) point elsewhere
DEFAULT_MODEL = "assets/models/shakespeare"
DEFAULT_AMATEUR = "assets/models/shakespeare-tiny"
# Hub ids offered in the picker beside the bundled models (an axw repo or an imported family)
HUB_EXAMPLES = ["openai-community/gpt2", "HuggingFaceTB/SmolLM2-135M"]

# caps: what one request may ask for, so one visitor cannot hold the machine
MAX_NEW_TOKENS = 512
MAX_PROMPT_CHARS = 4000
MAX_UPLOAD_BYTES = 2_000_000
MAX_TRAIN_CHARS = 2_000_000
MAX_FINETUNE_STEPS = 500
MAX_BATCH_SIZE = 32
MAX_BEAMS = 8
MAX_CONTRASTIVE_K = 16
MODEL_CACHE_SIZE = 3
MAX_HUB_MODEL_BYTES = 2_000_000_000  # a Hub model's safetensors: about 1B parameters in fp16
MAX_SESSIONS = 8
SESSION_IDLE_S = 3600  # a fine-tuned copy unused for an hour is dropped
# each visitor's share of the machine: seconds holding a generation or fine-tuning slot per window
VISITOR_BUDGET_S = 60.0
VISITOR_WINDOW_S = 120.0
MAX_TRUSTED_PROXIES = 16  # proxies in front of the app that append to X-Forwarded-For
TRACE_TOP = 10

STRATEGIES = ["sampling", "beam search", "contrastive search", "contrastive decoding"]
FILTERS = ["top_k", "top_p", "min_p", "top_a"]  # the order the UI chains them in


# torch.cuda.OutOfMemoryError is this class; it exists in CPU builds too, so the handlers can name it
OutOfMemoryError = torch.OutOfMemoryError
OOM_MESSAGE = ("out of GPU memory for this request (the machine is busy or the request is big): try again, or ask "
               "for fewer new tokens, fewer beams, a shorter prompt, a smaller batch or context")



def free_memory():
    """Give the memory cached by a failed request back, so the next one can have it."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas. By default each thread that allocates may get its own, up to 8 per core, and a
    server whose requests run on many threads keeps growing its resident memory as they do. Returns whether the
    cap was set (False off glibc, or for `arenas` <= 0)."""
    if arenas <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_ARENA_MAX = -8
    return mallopt(M_ARENA_MAX, arenas) == 1


def model_path(env: str, default: str) -> str:
    return os.environ.get(env) or default


def pick_device() -> tuple[torch.device, torch.dtype]:
    """CUDA in bf16 where the GPU has it (fp32 otherwise), else the CPU in fp32."""
    if torch.cuda.is_available():
        return torch.device("cuda"), (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    return torch.device("cpu"), torch.float32


# --- models ---


class ModelCache:
    """Models by name, loaded once and kept in a bounded LRU cache. The local
    folders it was built with (the bundled models) are pinned; any other name
    must be a Hub repo id, so a visitor cannot read arbitrary server folders."""

    def __init__(self, local: list[str], size: int = MODEL_CACHE_SIZE, device=None, dtype=None):
        default_device, default_dtype = pick_device()
        self.device, self.dtype = device or default_device, dtype or default_dtype
        self.local = [str(p) for p in local if p]
        self.size = size
        self.pinned: dict[str, AutoregressiveWrapper] = {}
        self.cache: OrderedDict[str, AutoregressiveWrapper] = OrderedDict()
        self.lock = threading.Lock()

    def _load(self, name: str) -> AutoregressiveWrapper:
        if name in self.local:
            path = Path(name) if Path(name).is_absolute() else ROOT / name
            if not path.is_dir():
                raise ValueError(f"the model folder {name} is missing: train it (docs/training.md) or point AXW_MODEL / --model at a model")
            source = str(path)
        else:
            try:
                validate_repo_id(name)
            except ValueError:
                raise ValueError(f"{name!r} is not a Hub repo id: use 'owner/name' (letters, digits, '.', '_', '-') "
                                 "or pick a bundled model") from None
            if Path(name).exists():
                raise ValueError(f"{name!r} names a local path; only the bundled models and Hub repo ids load here")
            check_hub_size(name)
            source = name
        try:
            model = AutoregressiveWrapper.from_pretrained(source, device=self.device)
        except ImportError as e:
            raise ValueError(f"cannot load {name!r}: this axw cannot import its architecture ({e})") from None
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"cannot load {name!r}: {e}") from None
        if model.tokenizer is None:
            raise ValueError(f"{name!r} has no tokenizer.json, so the playground cannot turn text into tokens")
        if self.dtype != torch.float32:
            model.to(self.dtype)
        return model.eval()

    def get(self, name: str) -> AutoregressiveWrapper:
        if name is not None and not isinstance(name, str):  # the API lets a client send any JSON value
            raise ValueError(f"a model is named by a string (a bundled model or a Hub repo id), got {name!r}")
        name = (name or "").strip()
        if not name:
            raise ValueError("choose a model: a bundled one or a Hub repo id")
        if name in self.pinned:  # the bundled models never wait behind a Hub download
            return self.pinned[name]
        with self.lock:  # one load at a time; a second visitor asking for the same model waits for it
            if name in self.pinned:
                return self.pinned[name]
            if name in self.cache:
                self.cache.move_to_end(name)
                return self.cache[name]
            model = self._load(name)
            if name in self.local:
                self.pinned[name] = model
            else:
                self.cache[name] = model
                while len(self.cache) > self.size:
                    self.cache.popitem(last=False)
            return model


def check_hub_size(repo_id: str, limit: int = MAX_HUB_MODEL_BYTES):
    """Refuse, before downloading, a Hub model whose weights are over `limit` bytes: one visitor must not fill
    the server's memory and disk or hold the loader for minutes. Offline, nothing is downloaded (the cache
    serves or the load fails), so there is nothing to check."""
    from huggingface_hub import HfApi
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return
    try:
        info = HfApi().model_info(repo_id, files_metadata=True)
    except Exception as e:  # not found, gated, unreachable: the Hub's reason, without a download
        raise ValueError(f"cannot load {repo_id!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         ) from None
    size = sum(f.size or 0 for f in info.siblings or [] if f.rfilename.endswith(".safetensors"))
    if size > limit:
        raise ValueError(f"{repo_id!r} has {size / 1e9:.1f} GB of weights; this playground loads at most "
                         f"{limit / 1e9:.1f} GB")


# --- checks, before any compute ---


def _number(name, value, lo, hi, integer=False):
    if integer and isinstance(value, float) and value.is_integer():
        value = int(value)  # sliders and JSON send whole numbers as floats
    return check_number(value, name, lo, hi, integer=integer)


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type some text for the model to continue")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed")
    return prompt


def encode_prompt(model, prompt: str) -> torch.Tensor:
    ids = model.tokenizer.encode(prompt).ids
    if not ids:
        raise ValueError("the prompt encodes to no tokens")
    return torch.tensor(ids, dtype=torch.long, device=model.device)


def generation_kwargs(
    model,
    strategy: str = "sampling",
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    filters: dict | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    seed: int | None = 0,
    beams: int = 4,
    length_penalty: float = 0.0,
    penalty_alpha: float = 0.6,
    contrastive_k: int = 4,
    cd_alpha: float = 0.1,
    cd_beta: float = 0.5,
    amateur=None,
) -> dict:
    """Keyword arguments for `model.generate` / `model.stream` (after
    `seq_len`). `filters` maps each switched-on filter name to its value
    (top_k: k, top_p: threshold, min_p: ratio, top_a: ratio); they chain in
    `FILTERS` order. Raises ValueError with what is allowed."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    vocab = model.net.num_tokens
    kw = dict(
        eos_token=model.eos_token_id,
        repetition_penalty=_number("repetition penalty", repetition_penalty, 0.5, 3.0),
        no_repeat_ngram_size=_number("no-repeat n-gram size", no_repeat_ngram_size, 0, 10, integer=True),
    )
    _number("max new tokens", max_new_tokens, 1, MAX_NEW_TOKENS, integer=True)
    if seed is not None:
        kw["seed"] = _number("seed", seed, 0, 2**31 - 1, integer=True)
    if strategy in ("sampling", "contrastive decoding"):
        kw["temperature"] = _number("temperature", temperature, 0.0, 5.0)
    if strategy == "sampling":
        fns, fkw = [], []
        ranges = dict(top_k=("top-k", 1, vocab, True, "k"), top_p=("top-p", 0.01, 1.0, False, "thres"),
                      min_p=("min-p", 0.0, 1.0, False, "min_p"), top_a=("top-a", 0.0, 1.0, False, "min_p_ratio"))
        unknown = set(filters or {}) - set(FILTERS)
        if unknown:
            raise ValueError(f"unknown filters {sorted(unknown)}: choose from {', '.join(FILTERS)}")
        for name in FILTERS:
            if name in (filters or {}):
                label, lo, hi, integer, arg = ranges[name]
                fns.append(name)
                fkw.append({arg: _number(label, filters[name], lo, hi, integer)})
        kw.update(filter_logits_fn=fns, filter_kwargs=fkw)
    elif strategy == "beam search":
        kw.update(beams=_number("beams", beams, 2, MAX_BEAMS, integer=True),
                  length_penalty=_number("length penalty", length_penalty, -2.0, 2.0))
    elif strategy == "contrastive search":
        kw.update(penalty_alpha=_number("penalty alpha", penalty_alpha, 0.0, 1.0),
                  contrastive_k=_number("contrastive k", contrastive_k, 1, MAX_CONTRASTIVE_K, integer=True))
    else:
        if amateur is None:
            raise ValueError("contrastive decoding needs an amateur model")
        if amateur.net.num_tokens != vocab or amateur.tokenizer.get_vocab() != model.tokenizer.get_vocab():
            raise ValueError("the amateur model must share the expert's tokenizer (same vocabulary)")
        kw.update(amateur_model=amateur, filter_logits_fn=[], contrastive_decode_kwargs=dict(
            alpha=_number("contrastive decoding alpha", cd_alpha, 0.001, 1.0),
            beta=_number("contrastive decoding beta", cd_beta, 0.0, 5.0)))
    return kw


# --- output: token pieces, colours, the step trace ---


class Detokenizer:
    """The text each token adds, token by token. Decoding the whole prefix
    (not each token alone) keeps multi-byte characters that span tokens whole
    and respects decoders that treat a leading space specially; a token that
    only starts a character adds nothing until the one that completes it."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.pieces, self.text = tokenizer, [], [], ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        piece = ""
        if text.startswith(self.text) and not text.endswith("\ufffd"):
            piece, self.text = text[len(self.text):], text
        self.pieces.append(piece)
        return piece

    def finish(self) -> list[str]:
        """The pieces, the last one holding any trailing partial character."""
        pieces = list(self.pieces)
        text = self.tokenizer.decode(self.ids)
        if pieces and text != self.text:
            pieces[-1] += text[len(self.text):] if text.startswith(self.text) else ""
        return pieces


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    detok = Detokenizer(tokenizer)
    for token in ids:
        detok.push(token)
    return detok.finish()


def prob_colour(p: float) -> str:
    """Red (unlikely) through yellow to green (likely), light enough to read text on."""
    p = min(max(float(p), 0.0), 1.0)
    return f"hsl({120 * p:.0f}, 75%, 80%)"


def tokens_html(prompt: str, pieces: list[str], probs: list[float | None]) -> str:
    out = [f'<div class="axw-out"><span class="axw-prompt">{_text(prompt)}</span>']
    for piece, p in zip(pieces, probs):
        if p is None:
            out.append(f'<span class="axw-tok">{_text(piece)}</span>')
        else:
            out.append(f'<span class="axw-tok" style="background:{prob_colour(p)}" title="p = {p:.3f}">'
                       f'{_text(piece)}</span>')
    out.append("</div>")
    return "".join(out)


def _text(s: str) -> str:
    return html.escape(s).replace("\n", "<br>")


def show_token(tokenizer, token_id: int) -> str:
    """A token as a label: whitespace made visible."""
    text = tokenizer.decode([token_id])
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or f"#{token_id}"


@torch.no_grad()
def sequence_probs(model, prompt_ids: torch.Tensor, new_ids: list[int]) -> list[float]:
    """p_model(token | everything before it) for each new token: one forward
    pass (beam search colours by this, as its beams change every step)."""
    seq = torch.cat([prompt_ids, torch.tensor(new_ids, dtype=torch.long, device=prompt_ids.device)])
    seq = seq[-(model.max_seq_len + 1):]
    logits = model.net(seq[None, :-1])[0].float()
    probs = logits.softmax(-1)[torch.arange(seq.numel() - 1), seq[1:]]
    return probs[-len(new_ids):].tolist() if new_ids else []


def step_table(row: dict, tokenizer) -> list[dict]:
    """The chart data of one step: a record per candidate (the model's top
    tokens, most likely first) with its probability after each stage and
    whether that stage cut it."""
    records = []
    for rank, token in enumerate(row["candidates"]):
        probs = {stage: row["probs"][stage][rank] for stage in row["stages"]}
        records.append(dict(rank=rank, id=token, token=show_token(tokenizer, token), probs=probs,
                            cut={stage: p == 0.0 for stage, p in probs.items()},
                            chosen=token == row.get("chosen")))
    return records


def step_html(row: dict | None, tokenizer) -> str:
    """One step of the trace as an HTML chart: bars per candidate and stage for
    sampling, the beams for beam search, the scores for contrastive search."""
    if not row:
        return '<p class="axw-note">Generate some text, then pick a step.</p>'
    parts = [f'<div class="axw-step"><b>step {row["step"] + 1}</b>']
    if "chosen" in row:
        parts.append(f' &middot; chose <code>{html.escape(show_token(tokenizer, row["chosen"]))}</code> '
                     f'(rank {row["chosen_rank"] + 1} under the model, chosen with p = {row["chosen_prob"]:.3f})')
    if "contrastive" in row:
        c = row["contrastive"]
        parts.append('<p>Contrastive search scores each of the k most likely tokens by (1 - &alpha;) &middot; '
                     'confidence - &alpha; &middot; degeneration penalty and takes the best.</p>')
        parts.append('<table class="axw-table"><tr><th>token</th><th>confidence</th>'
                     '<th>degeneration penalty</th><th>score</th></tr>')
        best = max(range(len(c["score"])), key=lambda i: c["score"][i])
        for i, token in enumerate(c["tokens"]):
            mark = ' class="axw-chosen"' if i == best else ""
            parts.append(f'<tr{mark}><td><code>{html.escape(show_token(tokenizer, token))}</code></td>'
                         f'<td>{_bar(c["confidence"][i])}</td><td>{c["degeneration_penalty"][i]:.3f}</td>'
                         f'<td>{c["score"][i]:.3f}</td></tr>')
        parts.append("</table>")
    if "beams" in row:
        parts.append("<p>The live beams after this step, best first (score = summed log-probability"
                     ", divided by length<sup>length penalty</sup>).</p>")
        parts.append('<table class="axw-table"><tr><th>#</th><th>beam</th><th>score</th><th>ended</th></tr>')
        for i, (beam, score, done) in enumerate(zip(row["beams"], row["beam_scores"], row["beam_finished"])):
            text = html.escape(tokenizer.decode(beam)).replace("\n", "↵")
            parts.append(f'<tr><td>{i + 1}</td><td class="axw-beam">{text}</td><td>{score:.3f}</td>'
                         f'<td>{"yes" if done else ""}</td></tr>')
        parts.append("</table>")
    stages = row["stages"]
    if "beams" in row:  # the trace holds the distribution of the beam that was first going into this step
        parts.append("<p>The model's top candidates for the leading beam going into this step.</p>")
    else:
        parts.append("<p>The model's top candidates and their probability after each stage "
                     "(penalties, filters in order, temperature); <i>cut</i>: removed by that stage.</p>")
    parts.append('<table class="axw-table"><tr><th>token</th>'
                 + "".join(f'<th>{html.escape(s)}<br><small>{row["kept"][s]} kept</small></th>' for s in stages)
                 + "</tr>")
    for rec in step_table(row, tokenizer):
        mark = ' class="axw-chosen"' if rec["chosen"] else ""
        cells = "".join('<td class="axw-cut">cut</td>' if rec["cut"][s] else f"<td>{_bar(rec['probs'][s])}</td>"
                        for s in stages)
        gone = ' class="axw-gone"' if any(rec["cut"].values()) else ""
        parts.append(f"<tr{mark}><td{gone}><code>{html.escape(rec['token'])}</code></td>{cells}</tr>")
    parts.append("</table></div>")
    return "".join(parts)


def _bar(p: float) -> str:
    width = max(0.0, min(1.0, p)) * 100
    return (f'<div class="axw-bar"><div style="width:{width:.1f}%"></div>'
            f'<span>{p:.3f}</span></div>')


# --- a generation, streamed ---


def stream_text(model, prompt: str, max_new_tokens: int, kwargs: dict, trace: bool = True):
    """An iterator of (pieces, probs, trace rows, done) as each token is chosen,
    and once more at the end with done=True. Everything is checked here (by
    `stream`), before the first step runs."""
    ids = encode_prompt(model, prompt)
    steps = model.stream(ids, int(max_new_tokens), trace=trace, trace_top=TRACE_TOP, **kwargs)
    return _follow(model, ids, steps, beams=kwargs.get("beams", 1) > 1)


def _follow(model, ids, steps, beams: bool):
    rows, probs, new = [], [], []
    eos = model.eos_token_id
    detok = Detokenizer(model.tokenizer)
    for step in steps:
        new = step.sequences[0].tolist()
        if eos is not None and eos in new:
            new = new[: new.index(eos)]  # EOS ends the text; it is not part of it
        row = step.trace.row(0) if step.trace is not None else None
        if row is not None:
            rows.append(row)
            if not beams:
                probs.append(row.get("chosen_prob"))
        if beams:  # the best beam may change anywhere: show its text whole until the end
            yield [model.tokenizer.decode(new)], [None], rows, False
        else:  # tokens only append: one decode per step
            while len(detok.ids) < len(new):
                detok.push(new[len(detok.ids)])
            yield detok.pieces, probs[: len(new)], rows, False
        if bool(step.finished.all()):
            break
    if beams:  # colour the final best beam by the model's probabilities
        probs = sequence_probs(model, ids, new)
        pieces = token_pieces(model.tokenizer, new)
    else:
        pieces = detok.finish()
    yield pieces, (probs + [None] * len(new))[: len(new)], rows, True


# --- fine-tuning, per visitor ---


def read_upload(path) -> str:
    """The text of an uploaded file, refused if too big, not .txt or binary."""
    path = Path(path)
    if path.suffix.lower() not in (".txt", ".md", ""):
        raise ValueError(f"upload a plain-text .txt file, not {path.suffix}")
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise ValueError(f"the file has {size:,} bytes; at most {MAX_UPLOAD_BYTES:,} are allowed")
    data = path.read_bytes()
    if b"\x00" in data:
        raise ValueError("the file is binary, not text: upload a UTF-8 .txt file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the file is not UTF-8 text: upload a UTF-8 .txt file") from None


def finetune_setup(model, text: str, steps, learning_rate, batch_size, context_length, mask_prob, seed=0):
    """Check the fine-tune request and return (train_ids, TrainConfig), before
    any compute."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("no training text: paste some text or upload a .txt file")
    if len(text) > MAX_TRAIN_CHARS:
        raise ValueError(f"the text has {len(text):,} characters; at most {MAX_TRAIN_CHARS:,} are allowed")
    steps = _number("steps", steps, 1, MAX_FINETUNE_STEPS, integer=True)
    lr = _number("learning rate", learning_rate, 1e-6, 1e-1)
    batch_size = _number("batch size", batch_size, 1, MAX_BATCH_SIZE, integer=True)
    context = _number("context length", context_length, 8, model.max_seq_len, integer=True)
    mask_prob = _number("mask_prob", mask_prob, 0.0, 0.9)
    seed = _number("seed", seed, 0, 2**31 - 1, integer=True)
    ids = torch.tensor(model.tokenizer.encode(text).ids, dtype=torch.long)
    if ids.numel() < context + 1:
        raise ValueError(f"the text is {ids.numel()} tokens long; a training window needs context length + 1 = "
                         f"{context + 1}: add text or shorten the context length")
    config = TrainConfig(steps=steps, batch_size=batch_size, seq_len=context, lr=lr,
                         warmup_steps=min(10, max(1, steps // 10)), mask_prob=mask_prob, eval_every=0, seed=seed,
                         device=str(model.device))
    return ids, config


class FineTune:
    """One visitor's fine-tune: a deep copy of the base model trained in a
    worker thread, so no other visitor's model ever changes."""

    def __init__(self, base, train_ids, config: TrainConfig):
        self.model = copy.deepcopy(base).float()  # train in fp32 even when serving in bf16
        self.base_name = None
        self.train_ids, self.config = train_ids, config
        self.stop = threading.Event()
        self.records: queue.Queue = queue.Queue()
        self.history: list[dict] = []
        self.result = None
        self.error: BaseException | None = None
        # set once training has ended (finished, stopped or failed): until then the thread may be about to train
        # the copy or be training it, and nobody else may use it (not even to flip it into eval mode)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.result = train(self.model, self.train_ids, None, self.config, callback=self.records.put,
                                should_stop=self.stop.is_set)
        except BaseException as e:  # reported to the visitor by the waiting handler
            self.error = e
            if isinstance(e, OutOfMemoryError):
                free_memory()
        finally:
            self.model.eval()
            self.train_ids = None  # the token ids of a 2 MB text are not kept for the session's life
            self.done.set()
            self.records.put(None)

    def run(self, poll: float = 0.25):
        """Start, then yield the list of progress records every `poll` seconds
        (and at the end) until training ends."""
        self.thread.start()
        done = False
        while not done:
            try:
                record = self.records.get(timeout=poll)
            except queue.Empty:
                yield self.history
                continue
            while True:
                if record is None:
                    done = True
                    break
                self.history.append(record)
                try:
                    record = self.records.get_nowait()
                except queue.Empty:
                    break
            yield self.history
        self.thread.join()
        if isinstance(self.error, OutOfMemoryError):
            raise ValueError(f"fine-tuning failed: {OOM_MESSAGE}")
        if self.error is not None:
            raise ValueError(f"fine-tuning failed: {self.error}")


class Sessions:
    """Each visitor's fine-tune by session id. A browser tab's copy is dropped when the tab closes (app.py's
    unload); API clients never say goodbye, so copies idle for `idle_s` are dropped too, and at most `size` are
    kept (the least recently used goes first): memory stays bounded whoever comes."""

    def __init__(self, size: int = MAX_SESSIONS, idle_s: float = SESSION_IDLE_S):
        self.size, self.idle_s, self.lock = size, idle_s, threading.Lock()
        self.items: OrderedDict[str, FineTune] = OrderedDict()
        self.used: dict[str, float] = {}

    def put(self, key: str, run: FineTune):
        with self.lock:
            self._end(key)
            self.items[key], self.used[key] = run, time.monotonic()
            for old in [k for k, t in self.used.items() if k != key and time.monotonic() - t > self.idle_s]:
                self._end(old)
            while len(self.items) > self.size:
                self._end(next(iter(self.items)))

    def get(self, key: str) -> FineTune | None:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                self.used[key] = time.monotonic()
            return self.items.get(key)

    def drop(self, key: str):
        with self.lock:
            self._end(key)

    def _end(self, key: str):
        run = self.items.pop(key, None)
        self.used.pop(key, None)
        if run is not None:
            run.stop.set()  # a running fine-tune ends after its current step, then its copy is garbage


def trusted_proxies(trusted: int | None = None, trust_proxy: bool | None = None, env=os.environ) -> int:
    """How many proxies in front of the app append to X-Forwarded-For and are trusted to: `trusted` when given
    (`trust_proxy` True is 1, False 0), else AXW_TRUSTED_PROXIES, else AXW_TRUST_PROXY=1 (one), else one on a Space
    (SPACE_ID is set: the Hub's proxy), else none (the connection's address is the visitor)."""
    if trusted is None and trust_proxy is not None:
        trusted = int(bool(trust_proxy))
    if trusted is None:
        raw = env.get("AXW_TRUSTED_PROXIES", "").strip()
        if raw:
            try:
                return check_number(int(raw), "trusted proxies", 0, MAX_TRUSTED_PROXIES, integer=True)
            except ValueError:
                raise ValueError(f"AXW_TRUSTED_PROXIES must be how many proxies append to X-Forwarded-For, a whole "
                                 f"number from 0 (trust no header) to {MAX_TRUSTED_PROXIES}, got {raw!r}") from None
        else:
            trusted = int(env.get("AXW_TRUST_PROXY", "1" if env.get("SPACE_ID") else "0") == "1")
    return check_number(trusted, "trusted proxies", 0, MAX_TRUSTED_PROXIES, integer=True)


def forwarded_client(forwarded_for: list[str], trusted: int) -> str | None:
    """The visitor's address in X-Forwarded-For behind `trusted` proxies, or None to use the connection's.

    Each proxy appends the address it saw, so the entry `trusted` places from the right is the one the outermost
    trusted proxy added: the client as it saw it. Everything left of it is the client's own writing, free to change
    on every request. With fewer entries than trusted proxies the request skipped one, and the leftmost entries
    may again be the client's writing (a flooder reaching an inner proxy with "forged, forged2"): only the rightmost
    was added by the proxy nearest to us, so that one is the visitor. It may be a proxy's address, shared by
    everyone who came that way, which can refuse too much but never hands out a new identity per request."""
    if trusted <= 0 or not forwarded_for:
        return None
    return forwarded_for[-trusted] if len(forwarded_for) >= trusted else forwarded_for[-1]


class FairShare:
    """Seconds each visitor has held a compute slot in the last `window_s`. A visitor who has used `budget_s` is
    refused (before any compute) until enough of it ages out, so one client sending request after request, from
    however many sessions, cannot keep everyone else queueing. A request already running always finishes.
    `budget_s` <= 0 turns the limit off."""

    def __init__(self, budget_s: float = VISITOR_BUDGET_S, window_s: float = VISITOR_WINDOW_S,
                 clock=time.monotonic):
        self.budget_s, self.window_s, self.clock = budget_s, window_s, clock
        self.lock = threading.Lock()
        self.spans: dict[str, deque] = {}  # visitor -> (end, seconds) of recent requests, oldest first

    def spent(self, key: str) -> float:
        with self.lock:
            return self._spent(key, self.clock())

    def _spent(self, key: str, now: float) -> float:
        spans = self.spans.get(key)
        while spans and spans[0][0] <= now - self.window_s:
            spans.popleft()
        if spans is not None and not spans:
            del self.spans[key]
        return sum(s for _, s in spans) if spans else 0.0

    def check(self, key: str):
        if self.budget_s <= 0:
            return
        with self.lock:
            now = self.clock()
            spent = self._spent(key, now)
            if spent < self.budget_s:
                return
            # when enough of the oldest spans have aged out to bring the total under budget
            over, wait = spent - self.budget_s, 0.0
            for end, seconds in self.spans[key]:
                over -= seconds
                wait = end + self.window_s - now
                if over < 0:
                    break
        raise ValueError(f"you have used this machine for {spent:.0f} s in the last {self.window_s:.0f} s, the share "
                         f"each visitor gets so everyone has a turn; try again in {max(wait, 1):.0f} s")

    @contextmanager
    def charge(self, key: str):
        """Count the time spent inside the block against the visitor's share (`check` first)."""
        start = self.clock()
        try:
            yield
        finally:
            if self.budget_s > 0:
                with self.lock:
                    now = self.clock()
                    self.spans.setdefault(key, deque()).append((now, now - start))
                    if len(self.spans) > 1024:  # forget visitors who went quiet
                        for k in list(self.spans):
                            self._spent(k, now)


def model_zip(model, name: str = "axw-finetuned") -> str:
    """The model as a Hub-format folder (save_pretrained) in a zip; returns its path."""
    folder = Path(tempfile.mkdtemp(prefix="axw-"))
    model.save_pretrained(folder / name, model_card=f"# {name}\n\nFine-tuned in the axw playground.\n")
    path = folder / f"{name}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted((folder / name).iterdir()):
            z.write(f, f"{name}/{f.name}")
    shutil.rmtree(folder / name)
    return str(path)
