"""What-if branches as a file: a run with its branches written as JSON (the format's name and version, the prompt,
the settings, and per run where it branched, the token it forced, its tokens and text), and read back, checked
before any compute. Loading regenerates every run from the prompt, the settings and the forced tokens (the
service does: `playground.views.branch_files`) and compares each with the text the file saved."""

from __future__ import annotations

import json
import os

from .caps import MAX_BRANCH_FILE_BYTES, MAX_FORKS
from .runs import Run
from .settings import check_prompt, number, settings_from_dict

FORMAT = "axw-branches"
VERSION = 1


def to_file(runs: list[Run], model_name: str = "") -> dict:
    """The file of a tree's runs (the generated text first, then its branches in the order they were made)."""
    root = next(r for r in runs if r.parent is None)
    return dict(format=FORMAT, version=VERSION, model=root.settings.model or model_name,
                prompt=root.message or root.prompt, settings=root.settings.unforced().to_dict(),
                runs=[dict(id=r.id, parent=r.parent, step=r.step, token=r.forced, tokens=list(r.new_ids),
                           text="".join(r.pieces)) for r in runs])


def to_json(runs: list[Run], model_name: str = "") -> str:
    return json.dumps(to_file(runs, model_name), indent=1, ensure_ascii=False)


def read_path(path) -> dict:
    """A branches file from disk (its size checked before it is read), checked (`read`)."""
    size = os.path.getsize(path)
    if size > MAX_BRANCH_FILE_BYTES:
        raise ValueError(f"the file is {size:,} bytes; a branches file is at most {MAX_BRANCH_FILE_BYTES:,}")
    with open(path, "rb") as f:
        return read(f.read())


def read(data: bytes | str) -> dict:
    """The file's content checked: {prompt, settings (Settings), runs}, or ValueError saying what is wrong."""
    if len(data) > MAX_BRANCH_FILE_BYTES:
        raise ValueError(f"the file is {len(data):,} bytes; a branches file is at most {MAX_BRANCH_FILE_BYTES:,}")
    try:
        content = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"this is not a branches file: not JSON ({e})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ValueError(f"this is not a branches file: its format is not {FORMAT} (save one with the "
                         "\"Download the branches\" button)")
    if content.get("version") != VERSION:
        raise ValueError(f"this branches file is version {content.get('version')!r}; this app reads version "
                         f"{VERSION}")
    try:
        prompt = check_prompt(content.get("prompt"))
        settings = settings_from_dict(content.get("settings")).check()
    except (TypeError, ValueError) as e:
        raise ValueError(f"the branches file's prompt or settings are not valid: {e}") from None
    return dict(prompt=prompt, settings=settings, model=content.get("model"), runs=read_runs(content.get("runs")))


def read_runs(runs) -> list[dict]:
    """The runs of a file checked: the generated text first, then branches, each of a run before it or one the
    tree had dropped, at a step and a token (checked against the model when it runs)."""
    if not isinstance(runs, list) or not runs:
        raise ValueError("the branches file holds no runs")
    if len(runs) > MAX_FORKS + 1:
        raise ValueError(f"the branches file holds {len(runs)} runs; at most {MAX_FORKS + 1} (the text and "
                         f"{MAX_FORKS} branches)")
    out, ids = [], set()
    for i, run in enumerate(runs):
        if not isinstance(run, dict):
            raise ValueError(f"run {i + 1} of the branches file is not an object")
        root = i == 0
        entry = dict(id=number(f"run {i + 1}'s id", run.get("id"), 0, 10**9, integer=True),
                     parent=None if root else number(f"run {i + 1}'s parent", run.get("parent"), 0, 10**9,
                                                     integer=True),
                     text=run.get("text"), tokens=run.get("tokens"))
        if root != (run.get("parent") is None) or entry["id"] in ids:
            raise ValueError("the branches file's runs must start with the generated text (no parent), then "
                             "branches, each with an id of its own")
        if not root:
            entry["step"] = number(f"run {i + 1}'s step", run.get("step"), 0, 10**6, integer=True)
            entry["token"] = number(f"run {i + 1}'s token", run.get("token"), 0, 10**9, integer=True)
        if not isinstance(entry["text"], str) or not isinstance(entry["tokens"], list) or \
                not all(isinstance(t, int) and not isinstance(t, bool) for t in entry["tokens"]):
            raise ValueError(f"run {i + 1} of the branches file needs its text and its tokens (a list of ids)")
        ids.add(entry["id"])
        out.append(entry)
    return out


def parent_for(saved: dict, made: dict[int, Run]) -> Run | None:
    """The run to branch `saved` from: the one it branched from, else (that one was dropped from the tree) any
    run made so far with the same tokens before its step: a branch goes on from its prefix alone."""
    if saved["parent"] in made:
        return made[saved["parent"]]
    prefix = saved["tokens"][:saved["step"]]
    return next((r for r in made.values() if r.new_ids[:saved["step"]] == prefix), None)


def differences(pairs: list[tuple[dict, Run]]) -> list[str]:
    """Where the regenerated runs differ from the file's: each differing run named, with where it departs."""
    out = []
    for saved, run in pairs:
        if run.new_ids != saved["tokens"] or "".join(run.pieces) != saved["text"]:
            at = next((i for i, (a, b) in enumerate(zip(run.new_ids, saved["tokens"])) if a != b),
                      min(len(run.new_ids), len(saved["tokens"])))
            name = "the generated text" if saved["parent"] is None else f"branch {saved['id']}"
            out.append(f"{name} departs at token {at + 1}")
    return out


def report(pairs: list[tuple[dict, Run]], model_name: str, saved_model) -> str:
    """What loading found: every run reproduced, or which differ (and the likely why)."""
    diff = differences(pairs)
    if not diff:
        return f"Loaded: all {len(pairs)} runs regenerated, each equal to the text the file saved."
    why = f" The file was saved with {saved_model!r}, this is {model_name!r}." if saved_model != model_name else \
        " A different model or version of it gives different texts."
    return (f"Loaded, but {len(diff)} of {len(pairs)} runs differ from the file: {'; '.join(diff)}.{why} Shown: "
            "the texts as regenerated here.")
