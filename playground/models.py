"""Models by name, loaded once and kept; the device; memory after a failure."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from axw import AutoregressiveWrapper, SharedForwards
from axw.hub import validate_repo_id

from .caps import MAX_HUB_MODEL_BYTES, MODEL_CACHE_SIZE

ROOT = Path(__file__).resolve().parents[1]
# the bundled models; AXW_MODEL / AXW_AMATEUR (or app.py's --model / --amateur) point elsewhere
DEFAULT_MODEL = "assets/models/shakespeare"
DEFAULT_AMATEUR = "assets/models/shakespeare-tiny"
# speculative decoding's drafter: a small model distilled from the bundled one (its tokenizer); where the folder is
# missing, or the app serves another model, the amateur drafts instead
DEFAULT_DRAFT = "assets/models/shakespeare-draft"


@dataclass(frozen=True)
class HubModel:
    """A small model of today offered in the picker: its repo id, parameters (as its card gives them), whether it
    is tuned for chat, whether the Hub gates it (accept its license, then pass a token), and the tokenizer it
    shares with others (contrastive decoding's amateur and speculative decoding's drafter must share it)."""

    repo_id: str
    params: float
    instruct: bool = False
    gated: bool = False
    tokenizer: str = ""

    def label(self, cap_bytes: int | None = None) -> str:
        """What the picker shows: the id, the parameters and the memory its bf16 weights take (or that they are
        over this server's cap)."""
        size, cap_bytes = self.params * 2, hub_cap() if cap_bytes is None else cap_bytes  # bf16
        params = f"{self.params / 1e9:.2g}B" if self.params >= 1e9 else f"{self.params / 1e6:.0f}M"
        memory = f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"
        notes = [f"{params} parameters", f"{memory} in bf16" + (" (over this server's cap)" if size > cap_bytes
                                                                 else "")]
        if self.instruct:
            notes.append("chat")
        if self.gated:
            notes.append("gated: needs a token")
        return f"{self.repo_id} · {' · '.join(notes)}"


# today's small models, base and instruct, offered in the picker beside the bundled ones
HUB_MODELS = [
    HubModel("HuggingFaceTB/SmolLM2-135M", 135e6, tokenizer="smollm2"),
    HubModel("HuggingFaceTB/SmolLM2-135M-Instruct", 135e6, instruct=True, tokenizer="smollm2"),
    HubModel("HuggingFaceTB/SmolLM2-360M", 362e6, tokenizer="smollm2"),
    HubModel("HuggingFaceTB/SmolLM2-360M-Instruct", 362e6, instruct=True, tokenizer="smollm2"),
    HubModel("google/gemma-3-270m", 268e6, tokenizer="gemma3"),
    HubModel("google/gemma-3-270m-it", 268e6, instruct=True, tokenizer="gemma3"),
    HubModel("Qwen/Qwen2.5-0.5B-Instruct", 494e6, instruct=True, tokenizer="qwen2.5"),
    HubModel("Qwen/Qwen3-0.6B", 596e6, instruct=True, tokenizer="qwen3"),
    HubModel("meta-llama/Llama-3.2-1B", 1.24e9, gated=True, tokenizer="llama3"),
    HubModel("meta-llama/Llama-3.2-1B-Instruct", 1.24e9, instruct=True, gated=True, tokenizer="llama3"),
    HubModel("HuggingFaceTB/SmolLM3-3B", 3.08e9, instruct=True, tokenizer="smollm3"),
    HubModel("openai-community/gpt2", 124e6, tokenizer="gpt2"),
]
HUB_EXAMPLES = [m.repo_id for m in HUB_MODELS]


def smallest_sibling(repo_id: str) -> str | None:
    """The smallest listed model that shares `repo_id`'s tokenizer, other than itself (a base model before an
    instruct one of the same size): contrastive decoding's amateur and speculative decoding's drafter for it."""
    listed = {m.repo_id: m for m in HUB_MODELS}
    model = listed.get(repo_id)
    if model is None:
        return None
    siblings = [m for m in HUB_MODELS if m.tokenizer == model.tokenizer and m.repo_id != repo_id
                and m.params < model.params]
    return min(siblings, key=lambda m: (m.params, m.instruct)).repo_id if siblings else None

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


def freeze_heap():
    """Take every object alive now (torch, the models, gradio's page: some 300,000 in the app's process) out of the
    cyclic collector's sight, after one last collection. Otherwise each full collection walks them all, about
    130 ms holding the interpreter on a 2-core CPU, whenever enough new objects have lived on (a class's sessions
    and runs make them), and every run of the process stalls meanwhile. Call it once the server is built; what
    it freezes lives as long as the process does, and reference counting still frees any of it let go."""
    gc.collect()
    gc.freeze()


def model_path(env: str, default: str) -> str:
    return os.environ.get(env) or default


def default_draft(model: str, amateur: str | None) -> str | None:
    """The drafter for `model`: the bundled draft when `model` is the bundled model and the draft's folder is
    there ($AXW_DRAFT wins), else the amateur."""
    if os.environ.get("AXW_DRAFT"):
        return os.environ["AXW_DRAFT"]
    if model == DEFAULT_MODEL and (ROOT / DEFAULT_DRAFT).is_dir():
        return DEFAULT_DRAFT
    return amateur


def pick_device() -> tuple[torch.device, torch.dtype]:
    """CUDA in bf16 where the GPU has it (fp32 otherwise), else the CPU in fp32."""
    if torch.cuda.is_available():
        return torch.device("cuda"), (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    return torch.device("cpu"), torch.float32


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX, as oneDNN reports it)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def hub_dtype(device: torch.device, dtype: torch.dtype, env=os.environ) -> torch.dtype:
    """The precision a Hub model is served in: bf16 on a CPU that has it (half the memory of fp32, and faster
    there), unless AXW_HUB_DTYPE=float32 asks for fp32; on a GPU the device's own choice."""
    choice = env.get("AXW_HUB_DTYPE", "").strip().lower()
    if choice not in ("", "float32", "bfloat16"):
        raise ValueError(f"AXW_HUB_DTYPE must be float32 or bfloat16, got {choice!r}")
    if device.type == "cpu" and choice != "float32" and (choice == "bfloat16" or cpu_has_bf16()):
        return torch.bfloat16
    return dtype


class ModelCache:
    """Models by name, loaded once and kept in a bounded LRU cache. The local
    folders it was built with (the bundled models) are pinned; any other name
    must be a Hub repo id, so a visitor cannot read arbitrary server folders.
    With `shared`, each model's runs in flight share its forwards (`axw.SharedForwards`), once more than `alone`
    of them are in flight."""

    def __init__(self, local: list[str], size: int = MODEL_CACHE_SIZE, device=None, dtype=None, shared: bool = False,
                 alone: int = 0):
        default_device, default_dtype = pick_device()
        self.shared = shared  # each model's runs in flight share its forwards (axw.shared)
        self.alone = alone  # ... once more than this many are in flight
        self.device, self.dtype = device or default_device, dtype or default_dtype
        self.local = [str(p) for p in local if p]
        self.size = size
        self.pinned: dict[str, AutoregressiveWrapper] = {}
        self.cache: OrderedDict[str, AutoregressiveWrapper] = OrderedDict()
        self.lock = threading.Lock()
        self.report = None  # the load in progress (one at a time, under the lock) reports its download here

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
            model = AutoregressiveWrapper.from_pretrained(source, device=self.device, progress=self.report)
        except ImportError as e:
            raise ValueError(f"cannot load {name!r}: this axw cannot import its architecture ({e})") from None
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"cannot load {name!r}: {e}") from None
        if model.tokenizer is None:
            raise ValueError(f"{name!r} has no tokenizer.json, so the playground cannot turn text into tokens")
        dtype = self.dtype if name in self.local else hub_dtype(self.device, self.dtype)
        if dtype != torch.float32:
            model.to(dtype)
        if self.shared:
            SharedForwards(model.net, alone=self.alone)
        return model.eval()

    def get(self, name: str, progress=None) -> AutoregressiveWrapper:
        """The model `name`, loaded once. `progress`: gradio's progress tracker (or a callable taking the same
        arguments), shown a Hub download's progress (`show_download`)."""
        if name is not None and not isinstance(name, str):  # the API lets a client send any JSON value
            raise ValueError(f"a model is named by a string (a bundled model or a Hub repo id), got {name!r}")
        name = (name or "").strip()
        if not name:
            raise ValueError("choose a model: a bundled one or a Hub repo id")
        if name in self.pinned:  # the bundled models never wait behind a Hub download
            return self.pinned[name]
        if progress is not None and name not in self.cache:
            return show_download(lambda report: self._get(name, report), progress)
        return self._get(name)

    def _get(self, name: str, report=None) -> AutoregressiveWrapper:
        with self.lock:  # one load at a time; a second visitor asking for the same model waits for it
            if name in self.pinned:
                return self.pinned[name]
            if name in self.cache:
                self.cache.move_to_end(name)
                return self.cache[name]
            self.report = report
            try:
                model = self._load(name)
            finally:
                self.report = None
            if name in self.local:
                self.pinned[name] = model
            else:
                self.cache[name] = model
                while len(self.cache) > self.size:
                    self.cache.popitem(last=False)
            return model


def show_download(load, progress, every: float = 0.25):
    """`load(report)` run in a thread of its own while this one passes what it reports (huggingface_hub's
    progress bars, `axw.hub.Bar`) on to gradio's `progress` every `every` seconds. Gradio takes progress only
    from the handler's own thread (the event it belongs to lives in that thread's context), and its
    `track_tqdm` misses what huggingface_hub's download threads report: every byte downloaded."""
    latest, result = [None], {}

    def run():
        try:
            result["model"] = load(lambda bars: latest.__setitem__(0, bars))
        except BaseException as e:  # raised again in the handler's thread
            result["error"] = e

    thread = threading.Thread(target=run, name="model-download", daemon=True)
    thread.start()
    shown = None
    while thread.is_alive():
        thread.join(every)
        bars = latest[0]
        if bars and bars != shown:
            progress(*download_progress(bars))
            shown = bars
    if "error" in result:
        raise result["error"]
    return result["model"]


def download_progress(bars) -> tuple[float | None, str]:
    """What the page shows of a download: the bytes of the first bar counting bytes towards a total (else the
    first with a total) as a fraction, and every bar as text, as a terminal would show them."""
    def amount(value, unit):
        return f"{value / 1e6:.1f} MB" if unit == "B" else f"{value:g}"

    parts = []
    for bar in bars:
        shown = amount(bar.done, bar.unit) + (f" / {amount(bar.total, bar.unit)}" if bar.total else "")
        parts.append(f"{bar.desc}: {shown}" if bar.desc else shown)
    counted = [b for b in bars if b.total]
    main = next((b for b in counted if b.unit == "B"), counted[0] if counted else None)
    return (min(main.done / main.total, 1.0) if main else None), " · ".join(parts)


def hub_cap(env=os.environ) -> int:
    """The most bytes of safetensors a Hub model may have here: AXW_HUB_MODEL_BYTES, else 2 GB (about 1B parameters
    in bf16; Llama-3.2-1B's 2.5 GB needs it raised)."""
    raw = env.get("AXW_HUB_MODEL_BYTES", "").strip()
    if not raw:
        return MAX_HUB_MODEL_BYTES
    if not raw.isdigit():
        raise ValueError(f"AXW_HUB_MODEL_BYTES must be a whole number of bytes, got {raw!r}")
    return int(raw)


def check_hub_size(repo_id: str, limit: int | None = None):
    """Refuse, before downloading, a Hub model whose weights are over `limit` bytes: one visitor must not fill
    the server's memory and disk or hold the loader for minutes. Offline, nothing is downloaded (the cache
    serves or the load fails), so there is nothing to check."""
    from huggingface_hub import HfApi
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return
    from huggingface_hub.errors import GatedRepoError

    limit = hub_cap() if limit is None else limit

    try:
        info = HfApi().model_info(repo_id, files_metadata=True)
    except GatedRepoError:
        raise ValueError(f"{repo_id!r} is gated on the Hub: accept its license on its page, then give this server "
                         "a token of yours (the HF_TOKEN secret of the Space, or `hf auth login`)") from None
    except Exception as e:  # not found, unreachable: the Hub's reason, without a download
        raise ValueError(f"cannot load {repo_id!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         ) from None
    files = [f.rfilename for f in info.siblings or []]
    size = sum(f.size or 0 for f in info.siblings or [] if f.rfilename.endswith(".safetensors"))
    if not any(name.endswith(".safetensors") for name in files):
        pickles = [name for name in files if name.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        raise ValueError(f"{repo_id!r} has no safetensors weights" + (f" (only {', '.join(pickles)}, which would have "
                         "to be unpickled: never done here)" if pickles else ""))
    if size > limit:
        raise ValueError(f"{repo_id!r} has {size / 1e9:.1f} GB of weights; this playground loads at most "
                         f"{limit / 1e9:.1f} GB")
