"""A run and its what-if branches as a file: downloaded, loaded back, every run regenerated and checked against
the saved texts; /generate's own what-if branch (force_step, force_token) is the independent reference. A
malformed or foreign file is refused with a message before any compute."""

import json

import pytest

pytest.importorskip("gradio")

import gradio as gr  # noqa: E402

from playground.branch_files import FORMAT  # noqa: E402
from playground.branches import Tree  # noqa: E402
from playground.caps import MAX_BRANCH_FILE_BYTES  # noqa: E402
from playground.settings import Settings  # noqa: E402

SETTINGS = dict(temperature=1.0, max_new_tokens=16, seed=3, top_k=40)


@pytest.fixture(scope="module")
def saved(app, tmp_path_factory):
    """(the runs, the file): a generation, two branches of it and a branch of a branch."""
    session = "files-test"
    _, root, updates, cache = app.start("ROMEO:", Settings(**SETTINGS), session, keep_cache=True)
    for root in updates:
        pass
    tree = Tree()
    app.keep(tree, root, cache, session, new=True)
    for parent_id, step, token in ((0, 2, 40), (0, 6, 41), (1, 1, 42)):
        parent = tree.get(parent_id)
        _, run, updates, cache = app.branch(parent, step, token, session, kept=app.caches.get(session, parent_id))
        for run in updates:
            pass
        app.keep(tree, run, cache, session)
    return list(tree.runs.values()), app.branches_file(tree)


def written(tmp_path, content, name="f.json") -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_a_file_loads_back_into_the_same_runs(app, saved):
    runs, path = saved
    content = json.loads(open(path).read())
    assert content["format"] == FORMAT and content["version"] == 1 and content["prompt"] == "ROMEO:"
    shown, message = app.load_branches_ui(path)
    loaded = list(shown["tree"].runs.values())
    assert "all 4 runs regenerated" in message
    assert [(r.parent, r.step, r.forced, r.new_ids, r.pieces) for r in loaded] == \
        [(r.parent, r.step, r.forced, r.new_ids, r.pieces) for r in runs]
    # the branches of the generated text are what /generate gives with that token forced at that step
    for r in loaded[1:3]:
        text, _, _ = app.generate_api("ROMEO:", **SETTINGS, force_step=r.step + 1, force_token=r.forced)
        assert "".join(r.pieces) == text


def test_a_branch_whose_parent_was_dropped_goes_on_from_its_prefix(app, saved, tmp_path):
    runs, path = saved
    content = json.loads(open(path).read())
    del content["runs"][1]  # branch 3 branched from branch 1 (before its forced token), which the tree had dropped
    shown, message = app.load_branches_ui(written(tmp_path, content))
    assert "all 3 runs regenerated" in message
    assert shown["tree"].runs[2].new_ids == runs[3].new_ids


def test_a_file_that_differs_says_which_runs(app, saved, tmp_path):
    _, path = saved
    content = json.loads(open(path).read())
    content["runs"][2]["tokens"][8] += 1
    content["runs"][2]["text"] += "!"
    _, message = app.load_branches_ui(written(tmp_path, content))
    assert "1 of 4 runs differ from the file: branch 2 departs at token 9" in message


def foreign(content):
    return {k: v for k, v in content.items() if k != "format"} | {"format": "something-else"}


@pytest.mark.parametrize("change, message", [
    (lambda c: "{not json", "not JSON"),
    (lambda c: [1, 2], "format is not axw-branches"),
    (foreign, "format is not axw-branches"),
    (lambda c: c | {"version": 7}, "version 7; this app reads version 1"),
    (lambda c: c | {"prompt": ""}, "prompt is empty"),
    (lambda c: c | {"settings": c["settings"] | {"warp": 3}}, "unknown settings warp"),
    (lambda c: c | {"settings": c["settings"] | {"temperature": -2}}, "temperature"),
    (lambda c: c | {"runs": []}, "holds no runs"),
    (lambda c: c | {"runs": c["runs"][1:]}, "must start with the generated text"),
    (lambda c: c | {"runs": [c["runs"][0], c["runs"][1] | {"token": 10**8}]}, "token"),
    (lambda c: c | {"runs": [c["runs"][0], c["runs"][1] | {"step": 16}]}, "step"),
    (lambda c: c | {"runs": [c["runs"][0], c["runs"][1] | {"tokens": "abc"}]}, "its tokens"),
    (lambda c: c | {"runs": [c["runs"][0], c["runs"][2] | {"parent": 9, "tokens": [0] * 16}]}, "does not hold"),
    (lambda c: c | {"pad": "x" * MAX_BRANCH_FILE_BYTES}, "at most 1,000,000"),
])
def test_a_malformed_or_foreign_file_is_refused_before_any_compute(app, saved, tmp_path, monkeypatch, change,
                                                                   message):
    _, path = saved
    content = change(json.loads(open(path).read()))
    bad = written(tmp_path, content)
    if message != "does not hold":  # that one is found after regenerating the runs it does hold
        monkeypatch.setattr(app, "start", lambda *a, **k: pytest.fail("generated before checking the file"))
    with pytest.raises(gr.Error, match=message):
        app.load_branches_ui(bad)
    with pytest.raises(gr.Error, match="pick a branches file"):
        app.load_branches_ui(None)


def test_the_files_it_wrote_go_after_an_hour_and_nothing_else(app, saved):
    import os
    import time

    import playground.views.branch_files as view

    runs, _ = saved
    assert app.branches_file(Tree()) is None  # no runs: no file
    tree = Tree()
    tree.runs = {r.id: r for r in runs}
    path = app.branches_file(tree)
    mine = view.own_folder()
    other = mine / "notes.txt"  # a file the program did not write there
    other.write_text("keep me")
    old = time.time() - view.KEEP_S - 60
    os.utime(path, (old, old))
    fresh = app.branches_file(tree)
    assert os.path.exists(fresh) and not os.path.exists(path) and other.read_text() == "keep me"
    assert json.loads(open(fresh).read())["runs"] == json.loads(open(saved[1]).read())["runs"]
