"""Publish this repository as a Hugging Face Space.

    python scripts/deploy_space.py <owner>/<space> [--private] [--hardware cpu-basic]

Creates the Space (Gradio SDK) if it does not exist, then uploads, in one
commit, exactly the files git tracks here, and removes files the Space holds
that git no longer tracks. The upload goes through huggingface_hub, which puts
binary files (the bundled weights, the screenshots) in the Hub's large-file
storage; the Hub refuses binary files over 1 MB in a plain `git push`.

The token is --token, else HF_TOKEN, else the one `hf auth login` saved; it
needs write access. The Space's card is the front matter at the top of
README.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from axw.hub import validate_repo_id  # noqa: E402

# the Space keeps the `.gitattributes` the Hub writes when it creates a repo
KEEP_ON_SPACE = {".gitattributes"}


def tracked_files(root: Path = ROOT) -> list[str]:
    """Paths git tracks under `root`, relative to it, that exist in the work tree."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"{root} must be a git checkout with git installed: {e}") from e
    return sorted(p for p in out.decode().split("\0") if p and (root / p).is_file())


def deploy(repo_id: str, token: str | None = None, private: bool = False, hardware: str | None = None,
           root: Path = ROOT, message: str = "Deploy axw playground") -> str:
    """Create or update the Space; returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    validate_repo_id(repo_id)
    if "/" not in repo_id:
        raise ValueError(f"a Space id is 'owner/name', got {repo_id!r}")
    files = tracked_files(root)
    if "app.py" not in files or "README.md" not in files:
        raise ValueError(f"{root} has no tracked app.py and README.md to deploy")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True,
                    space_hardware=hardware)
    stale = set(api.list_repo_files(repo_id, repo_type="space")) - set(files) - KEEP_ON_SPACE
    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(root / p)) for p in files]
    operations += [CommitOperationDelete(path_in_repo=p) for p in sorted(stale)]
    info = api.create_commit(repo_id, operations, commit_message=message, repo_type="space")
    return str(getattr(info, "commit_url", info))


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("space", help="owner/name of the Space")
    parser.add_argument("--token", help="a Hub token with write access (default: HF_TOKEN or the saved login)")
    parser.add_argument("--private", action="store_true", help="create the Space private")
    parser.add_argument("--hardware", help="hardware for a new Space, e.g. cpu-basic, t4-small, zero-a10g")
    args = parser.parse_args(argv)
    print(deploy(args.space, token=args.token, private=args.private, hardware=args.hardware))


if __name__ == "__main__":
    main()
