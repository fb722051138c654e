"""Checkpoints in the Hugging Face Hub layout: `config.json`, `model.safetensors`
and, when a tokenizer is attached, `tokenizer.json` (with a chat template,
`chat_template.jinja` and `tokenizer_config.json`, written by `axw.chat`).

Nothing is ever unpickled: weights load only from safetensors files, and a
repository that has only pickle weights is refused with an error.
"""

from __future__ import annotations

import json
import os
import re
import threading
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .utils import exists

FORMAT = "axw"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
DATASTORE_NAME = "ngrams.safetensors"  # a speculative drafter's n-gram datastore (axw.ngrams.NgramDatastore)
# what a download fetches: configs, safetensors weights (sharded too), tokenizer, chat templates, card
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "additional_chat_templates/*.jinja",
    "*.safetensors",
    "*.safetensors.index.json",
    "README.md",
]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def validate_repo_id(repo_id: str) -> str:
    """Hub ids are `name` or `owner/name` in letters, digits, '.', '_' and '-'."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith(".git"):
        raise ValueError(
            f"{repo_id!r} is neither a local folder nor a Hub repo id; a repo id looks like 'owner/name' "
            "using letters, digits, '.', '_' and '-'"
        )
    return repo_id


@dataclass(frozen=True)
class Bar:
    """Where one of huggingface_hub's progress bars stands: `done` of `total`
    `unit`s ('B' for bytes; `total` None where the bar shows none)."""

    desc: str
    done: float
    total: float | None
    unit: str


def reporting_bars(report: Callable[[list[Bar]], None]):
    """A tqdm class for huggingface_hub's downloads that passes the state of
    all its bars, in the order they were made, to `report` whenever one
    moves. It counts by itself, so it reports with the bars hidden too (as
    they are where stderr is not a terminal), and from whichever thread moves
    a bar (huggingface_hub's download threads do)."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    bars: list = []
    lock = threading.Lock()

    def send():
        report([Bar(b._desc, b._done, b._total if b._shows_total else None, b._unit) for b in bars])

    class ReportingBar(hf_tqdm):
        def __init__(self, *args, **kwargs):
            self._desc = kwargs.get("desc") or (args[1] if len(args) > 1 and isinstance(args[1], str) else "")
            self._done = kwargs.get("initial") or 0
            self._unit = kwargs.get("unit", "it")
            # huggingface_hub hides the total of a bar whose total is a guess (bytes over the network)
            self._shows_total = "total" in (kwargs.get("bar_format") or "{total}")
            super().__init__(*args, **kwargs)
            with lock:
                bars.append(self)
                send()

        @property
        def _total(self):
            return getattr(self, "total", None)

        def update(self, n=1):
            with lock:
                self._done += n or 0
                send()
            return super().update(n)

        def set_description(self, desc=None, refresh=True):
            self._desc = desc or ""
            return super().set_description(desc, refresh)

        def set_description_str(self, desc=None, refresh=True):
            self._desc = desc or ""
            return super().set_description_str(desc, refresh)

    return ReportingBar


def resolve(path_or_repo_id: str | os.PathLike, revision: str | None = None, token: str | None = None,
            cache_dir: str | os.PathLike | None = None, progress: Callable[[list[Bar]], None] | None = None,
            check: Callable[[dict], None] | None = None, files: list[str] | None = None) -> Path:
    """A local folder as is, else the folder huggingface_hub downloads (or
    finds in its cache) for the repo id: its `files` (patterns; default
    `HUB_FILES`, a model's). `progress`, called with the state of
    the download's bars (a list of `Bar`) as they move, from the download's
    threads. `check`, called with the repo's config.json alone before the
    rest downloads: its ValueError refuses a model before its weights come."""
    path = Path(path_or_repo_id)
    if path.is_dir():
        return path
    repo_id = str(path_or_repo_id)
    if path.exists() or repo_id.startswith((".", "/", "~")) or os.sep in repo_id.strip("/").replace("/", "", 1):
        raise ValueError(f"{repo_id!r} is not a folder holding a model")
    validate_repo_id(repo_id)

    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    if exists(check):
        try:
            with _download_errors(repo_id, revision):
                config = hf_hub_download(repo_id, CONFIG_NAME, revision=revision, token=token, cache_dir=cache_dir)
        except OSError as e:
            missing = e.__cause__
            if isinstance(missing, EntryNotFoundError) and not isinstance(missing, LocalEntryNotFoundError):
                raise ValueError(f"{repo_id!r} has no {CONFIG_NAME}: not a model repo") from None
            raise
        check(read_config(Path(config).parent))
    with _download_errors(repo_id, revision):
        folder = snapshot_download(
            repo_id, revision=revision, token=token, cache_dir=cache_dir, allow_patterns=files or HUB_FILES,
            tqdm_class=reporting_bars(progress) if exists(progress) else None,
        )
    return Path(folder)


@contextmanager
def _download_errors(repo_id: str, revision: str | None):
    """huggingface_hub's errors as an OSError naming the repo and what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError as e:
        raise OSError(f"{repo_id!r} is gated on the Hugging Face Hub: accept its terms and pass a token") from e
    except RepositoryNotFoundError as e:
        raise OSError(f"{repo_id!r} was not found on the Hugging Face Hub (or it is private: pass a token)") from e
    except RevisionNotFoundError as e:
        raise OSError(f"{repo_id!r} has no revision {revision!r} on the Hugging Face Hub") from e
    except LocalEntryNotFoundError as e:
        raise OSError(
            f"cannot download {repo_id!r}: the Hugging Face Hub is unreachable (or HF_HUB_OFFLINE is set) "
            "and the repo is not in the local cache"
        ) from e
    except Exception as e:  # connection resets, HTTP 5xx, bad tokens: say which repo failed
        raise OSError(f"cannot download {repo_id!r} from the Hugging Face Hub: {e}") from e


def read_config(folder: Path) -> dict:
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise ValueError(f"{folder} has no {CONFIG_NAME}: not a model folder")
    with open(config_path, encoding="utf-8") as f:
        return json.load(f)


def read_json(path: Path, what: str = "a JSON object") -> dict:
    """The JSON object in `path` ({} when there is no such file), or a ValueError naming the file."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            values = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} does not hold {what}")
    return values


def load_safetensors(folder: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a folder's safetensors weights, single file or sharded."""
    index = folder / f"{WEIGHTS_NAME}.index.json"
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    else:
        # a draft model's folder may hold its n-gram datastore beside its weights
        shards = sorted(p.name for p in folder.glob("*.safetensors") if p.name != DATASTORE_NAME)
    if not shards:
        pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        hint = f" (it has {', '.join(pickles)}, which axw never unpickles)" if pickles else ""
        raise ValueError(f"{folder} has no safetensors weights{hint}")
    state = {}
    for shard in shards:
        state.update(load_file(folder / shard, device=str(device)))
    return state


def load_tokenizer(folder: Path):
    path = folder / TOKENIZER_NAME
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def axw_config(model) -> dict:
    """config.json: each module's config dataclass, field by field."""
    return dict(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        net=model.net.config.to_dict(),
        attn_layers=model.net.attn_layers.config.to_dict(),
        wrapper=model.config.to_dict(),
        eos_token_id=model.eos_token_id,
        stop_token_ids=list(model.stop_token_ids),
    )


def load_generation_config(folder: Path):
    """The folder's `generation_config.json` as a GenerationConfig: axw's, or
    transformers' sampling settings; None when it has none. A transformers
    file that holds only token ids (most do) says nothing about decoding."""
    from .generation_config import GENERATION_CONFIG_NAME, GenerationConfig, from_transformers

    path = folder / GENERATION_CONFIG_NAME
    if not path.is_file():
        return None
    values = read_json(path, "a dict of settings")
    if values.get("format") == FORMAT:
        return GenerationConfig.from_pretrained(folder)
    if not set(values) & TRANSFORMERS_DECODING_KEYS:
        return None
    try:
        # the model's EOS is its eos_token_id: generate stops there when given eos_token (x-transformers' habit)
        return GenerationConfig.from_dict({k: v for k, v in from_transformers(values).items() if k != "eos_token"})
    except ValueError as e:
        warnings.warn(f"{path}: its decoding settings are not ones axw can use ({e}); ignoring them")
        return None


# keys of a transformers generation_config.json that are decoding settings
TRANSFORMERS_DECODING_KEYS = {
    "do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h",
    "repetition_penalty", "no_repeat_ngram_size", "num_beams", "penalty_alpha",
}


SAVE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def save_pretrained(model, folder: str | os.PathLike, model_card: str | None = None,
                    dtype: torch.dtype | None = None, state_dict: dict | None = None) -> Path:
    """`model`'s Hub folder; `state_dict`, when given, holds the weights to
    write in place of `model.net`'s (a sharded network's, gathered whole)."""
    if exists(dtype) and dtype not in SAVE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(str, SAVE_DTYPES))}, got {dtype!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = state_dict if exists(state_dict) else model.net.state_dict()
    state = {k: v.detach().to(dtype if exists(dtype) and v.is_floating_point() else v.dtype).contiguous().cpu()
             for k, v in weights.items()}
    save_file(state, folder / WEIGHTS_NAME, metadata={"format": "pt"})
    with open(folder / CONFIG_NAME, "w", encoding="utf-8") as f:
        json.dump(axw_config(model), f, indent=2, sort_keys=True)
        f.write("\n")
    if exists(model.tokenizer):
        model.tokenizer.save(str(folder / TOKENIZER_NAME))
    if exists(getattr(model, "generation_config", None)):
        model.generation_config.save_pretrained(folder)
    if exists(getattr(model, "chat_template", None)):
        model.chat_template.save_pretrained(folder)
    if exists(model_card):
        (folder / "README.md").write_text(model_card, encoding="utf-8")
    return folder


def push_to_hub(model, repo_id: str, token: str | None = None, private: bool = False,
                commit_message: str = "Upload axw model", model_card: str | None = None) -> str:
    """Create the repo if needed and upload the saved model; returns the commit URL."""
    return push_folder(lambda folder: save_pretrained(model, folder, model_card=model_card), repo_id, token,
                       private, commit_message)


def push_folder(write, repo_id: str, token: str | None = None, private: bool = False,
                commit_message: str = "Upload axw files") -> str:
    """Create the repo if needed and upload what `write(folder)` puts in a fresh folder (files of the same
    names in the repo are replaced, others stay); returns the commit URL."""
    import tempfile

    from huggingface_hub import HfApi

    validate_repo_id(repo_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory() as tmp:
        write(tmp)
        info = api.upload_folder(folder_path=tmp, repo_id=repo_id, repo_type="model", commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
