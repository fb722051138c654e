"""Deploying the repository as a Hugging Face Space: the Space card, and
scripts/deploy_space.py's choice of files (the Hub itself is not reachable
from the tests, so its three calls are recorded instead)."""

import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import deploy_space  # noqa: E402


def test_space_card_matches_the_app_and_its_pins():
    text = (ROOT / "README.md").read_text()
    card = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert card, "README.md must start with the Space card"
    fields = dict(line.split(": ", 1) for line in card.group(1).splitlines())
    assert fields["sdk"] == "gradio" and fields["app_file"] == "app.py"
    pins = dict(re.findall(r"^([\w-]+)==([\w.+]+)$", (ROOT / "requirements.txt").read_text(), re.M))
    assert fields["sdk_version"] == pins["gradio"]
    assert len(fields["short_description"]) <= 60  # the Hub's limit


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_tracked_files_are_what_git_tracks(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text(".venv/\n")
    (tmp_path / "app.py").write_text("print('hi')\n")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "w.bin").write_bytes(bytes(range(256)))
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "x.py").write_text("")
    (tmp_path / "untracked.txt").write_text("")
    _git(tmp_path, "add", ".gitignore", "app.py", "assets/w.bin")
    assert deploy_space.tracked_files(tmp_path) == [".gitignore", "app.py", "assets/w.bin"]
    (tmp_path / "app.py").unlink()  # deleted in the work tree: nothing to upload
    assert deploy_space.tracked_files(tmp_path) == [".gitignore", "assets/w.bin"]
    with pytest.raises(SystemExit, match="git checkout"):
        deploy_space.tracked_files(tmp_path / "assets" / "w.bin")


@pytest.fixture
def hub(monkeypatch):
    calls = []
    on_space = ["README.md", ".gitattributes", "old_module.py", "assets/old.png"]

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs, self.token))

    def list_repo_files(self, repo_id, **kwargs):
        calls.append(("list_repo_files", repo_id, kwargs))
        return list(on_space)

    def create_commit(self, repo_id, operations, **kwargs):
        calls.append(("create_commit", repo_id, list(operations), kwargs))
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/spaces/{repo_id}/commit/abc",
                                          commit_message=kwargs["commit_message"], commit_description="",
                                          oid="abc")

    for name, fn in (("create_repo", create_repo), ("list_repo_files", list_repo_files),
                     ("create_commit", create_commit)):
        monkeypatch.setattr(huggingface_hub.HfApi, name, fn)
    return calls


def test_deploy_uploads_the_checkout_and_removes_stale_files(hub, tmp_path):
    _git(tmp_path, "init", "-q")
    for name in ("app.py", "README.md", "requirements.txt", "assets/models/m/model.safetensors"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"\x00\x01" * 10)
    _git(tmp_path, "add", ".")
    (tmp_path / "notes.txt").write_text("not tracked")

    url = deploy_space.deploy("someone/playground", token="hf_secret", hardware="cpu-basic", root=tmp_path)
    assert url == "https://huggingface.co/spaces/someone/playground/commit/abc"
    (create, repo, kwargs, token), listing, commit = hub
    assert create == "create_repo" and repo == "someone/playground" and token == "hf_secret"
    assert kwargs["repo_type"] == "space" and kwargs["space_sdk"] == "gradio" and kwargs["exist_ok"]
    assert kwargs["space_hardware"] == "cpu-basic"
    assert listing[2] == {"repo_type": "space"}
    operations, commit_kwargs = commit[2], commit[3]
    assert commit_kwargs["repo_type"] == "space"
    added = {op.path_in_repo: op.path_or_fileobj for op in operations
             if isinstance(op, huggingface_hub.CommitOperationAdd)}
    assert sorted(added) == ["README.md", "app.py", "assets/models/m/model.safetensors", "requirements.txt"]
    assert all(Path(path) == tmp_path / name for name, path in added.items())
    deleted = [op.path_in_repo for op in operations if isinstance(op, huggingface_hub.CommitOperationDelete)]
    assert deleted == ["assets/old.png", "old_module.py"]  # .gitattributes stays


def test_deploy_plan_for_this_repository(hub):
    deploy_space.deploy("someone/playground")
    added = [op.path_in_repo for op in hub[-1][2] if isinstance(op, huggingface_hub.CommitOperationAdd)]
    for needed in ("app.py", "playground/__init__.py", "playground/views/generate.py", "README.md", "requirements.txt",
                   "axw/__init__.py",
                   "assets/models/shakespeare/model.safetensors", "assets/models/shakespeare/tokenizer.json",
                   "assets/models/shakespeare-tiny/model.safetensors"):
        assert needed in added
    assert not any(p.startswith((".venv/", "runs/", ".git/")) or "__pycache__" in p for p in added)


@pytest.mark.parametrize("space", ["no-owner", "bad id/x", "../up/x", ""])
def test_bad_space_ids_are_refused_before_any_call(hub, space):
    with pytest.raises(ValueError):
        deploy_space.deploy(space)
    assert hub == []
