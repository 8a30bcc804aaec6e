"""Local stand-ins for the Hub: a folder laid out as a Hub cache snapshot, so repo-id code paths run
offline, and an `HfApi`-like uploader that writes repos to disk."""

import fnmatch
import shutil
from pathlib import Path


def add_snapshot(repo_id: str, source: Path, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


class FakeHubApi:
    """Records what an upload would send and lays the files out like a repo on disk under `root`,
    honouring `ignore_patterns` as `HfApi.upload_folder` does (patterns on the path inside the folder)."""

    def __init__(self, root: Path):
        self.root, self.calls = Path(root), []

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)

    def upload_folder(self, repo_id, folder_path, commit_message=None, create_pr=False, ignore_patterns=None, **kw):
        self.calls.append(("upload_folder", repo_id, commit_message, create_pr))
        folder = Path(folder_path)
        for path in folder.rglob("*"):
            name = path.relative_to(folder).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(name, p) for p in ignore_patterns or []):
                (self.root / repo_id / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, self.root / repo_id / name)
        return f"https://example.invalid/{repo_id}/commit/0"
