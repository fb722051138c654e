"""The run and its what-if branches as a file: download them as JSON (`playground.branch_files`), load such a file
back, and every run is regenerated from its prompt, settings and forced tokens, and checked against the texts the
file saved. (A share link carries one branch; a file carries them all.)"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import gradio as gr

from ..branch_files import parent_for, read_path, report, to_json
from ..branches import Tree
from ..service import session_of, user_errors
from ..settings import number
from . import keep_on_failure, with_visitor


KEEP_S = 3600  # a branches file is removed an hour after it was written (gradio serves its own copy)


@functools.cache
def own_folder() -> Path:
    """This process's folder for the branches files it writes, made on first use."""
    return Path(tempfile.mkdtemp(prefix="axw-branches-"))


def files_folder() -> Path:
    """`own_folder()`, the files written there over KEEP_S ago removed first (only those: nothing else)."""
    now = time.time()
    for old in own_folder().glob("run-*/axw-branches.json"):
        try:
            if now - old.stat().st_mtime > KEEP_S:
                old.unlink()
                old.parent.rmdir()
        except OSError:  # another request removed it first
            pass
    return own_folder()


class Handlers:
    """The branches file's handlers, mixed into the app with `service.Playground`."""

    def branches_file(self, tree, request: gr.Request = None) -> str | None:
        """The visitor's runs written to a new file of their own (None when there are none)."""
        runs = list(tree.runs.values()) if isinstance(tree, Tree) and tree.root is not None else []
        if not runs:
            return None
        path = Path(tempfile.mkdtemp(prefix="run-", dir=files_folder())) / "axw-branches.json"
        path.write_text(to_json(runs, self.model_name), encoding="utf-8")
        return str(path)

    def check_branches(self, content: dict, session: str):
        """The file's forced steps and tokens against its settings and this model, before any compute."""
        m, _, _ = self.prepare(content["settings"], session)
        for saved in content["runs"][1:]:
            number(f"branch {saved['id']}'s step", saved["step"], 0, content["settings"].max_new_tokens - 1,
                   integer=True)
            number(f"branch {saved['id']}'s token", saved["token"], 0, m.net.num_tokens - 1, integer=True)

    def load_branches_ui(self, path, request: gr.Request = None) -> tuple[dict, str]:
        """(what the views show, what loading found) for an uploaded branches file: the generated text and every
        branch regenerated, the generated text opened."""
        session = session_of(request)
        with self.metered(request), user_errors():
            if not path:
                raise ValueError("pick a branches file (.json) to load")
            content = read_path(path)
            self.check_branches(content, session)
            _, root, updates, cache = self.start(content["prompt"], content["settings"], session, keep_cache=True)
            for root in updates:
                pass
            tree = Tree()
            self.keep(tree, root, cache, session, new=True)
            made, pairs = {content["runs"][0]["id"]: root}, [(content["runs"][0], root)]
            for saved in content["runs"][1:]:
                parent = parent_for(saved, made)
                if parent is None:
                    raise ValueError(f"branch {saved['id']} of the file branches from a run the file does not hold")
                _, run, updates, cache = self.branch(parent, saved["step"], saved["token"], session,
                                                     kept=self.caches.get(session, parent.id))
                for run in updates:
                    pass
                self.keep(tree, run, cache, session)
                made[saved["id"]] = run
                pairs.append((saved, run))
        tree.current = root.id
        return self.show(tree, root, 0), report(pairs, root.settings.model or self.model_name, content["model"])

    def keep(self, tree: Tree, run, cache, session: str, new: bool = False):
        """Add `run` to the visitor's tree, its KV cache kept for the branches that follow."""
        run.session = session
        tree.add(run)
        if new:
            self.caches.drop(session)
        self.caches.put(session, run.id, cache)


def build(app, tree):
    """The download and upload buttons and what loading found; returns (refresh(event): the download follows
    the visitor's runs after `event`, wire(place, outputs): loading a file updates the views)."""
    with gr.Row():
        download = gr.DownloadButton("Download the branches (JSON)", value=None, interactive=False, size="sm",
                                     elem_id="branches-download", scale=0, min_width=220)
        upload = gr.UploadButton("Load branches from a file", file_types=[".json"], type="filepath", size="sm",
                                 elem_id="branches-upload", scale=0, min_width=220)
    status = gr.Markdown("", elem_id="branches-status")

    def file_of(tree, request: gr.Request = None):
        path = app.branches_file(tree, request)
        return gr.DownloadButton(value=path, interactive=path is not None)

    def refresh(event):
        event.success(file_of, tree, download, api_visibility="private", queue=False, show_progress="hidden")

    def wire(place, outputs):
        def load_ui(path, request: gr.Request = None):
            shown, message = app.load_branches_ui(path, request)
            return [*place(shown), message]

        loaded = upload.upload(with_visitor(load_ui, 1), upload, [*outputs, status], api_visibility="private",
                               concurrency_id="gen")
        keep_on_failure(loaded, outputs)
        refresh(loaded)
        return loaded

    return refresh, wire
