"""Git on the research branch: clean-tree checks, branch, commit, reset, diff, patches (GitPython + git CLI).

Writes go through the git CLI (a few ms per call); reads of committed objects go through GitPython's persistent
object reader. Every commit uses loopdeck's own author identity, so no global git configuration is needed, and
resets refuse to run on any branch that is not a `loopdeck/<tag>` research branch.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

import git

from loopdeck.engine.config import STATE_DIR
from loopdeck.engine.errors import LoopdeckError

AUTHOR_NAME = "loopdeck"
AUTHOR_EMAIL = "loopdeck@localhost"
BRANCH_PREFIX = "loopdeck/"
# Repo-local identity and no signing or hooks: research commits must work on any machine, unattended.
_COMMIT_CONFIG = ("-c", f"user.name={AUTHOR_NAME}", "-c", f"user.email={AUTHOR_EMAIL}",
                  "-c", "commit.gpgsign=false")
_IDENTITY_ENV = {"GIT_AUTHOR_NAME": AUTHOR_NAME, "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
                 "GIT_COMMITTER_NAME": AUTHOR_NAME, "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL}


class ResearchRepo:
    """The workspace's git repository; every write happens on a `loopdeck/<tag>` branch."""

    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        try:
            self._repo = git.Repo(path)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise LoopdeckError(f"{path} is not a git repository: run `git init` and commit your files there, or "
                                f"create a new workspace with `loopdeck init DIR`") from None
        if self._repo.bare or self._repo.working_tree_dir is None:
            raise LoopdeckError(f"{path} is a bare git repository: loopdeck needs a working tree")
        self.path = Path(self._repo.working_tree_dir)

    # --- state -------------------------------------------------------------------------------------------------

    def current_branch(self) -> str | None:
        """The checked-out branch name, or None when HEAD is detached."""
        head = self._repo.head
        return None if head.is_detached else head.ref.name

    def head(self) -> str:
        """Full sha of HEAD."""
        # One-shot git commands rather than GitPython's object database: its long-lived `git cat-file` helpers
        # share our process group, so a Ctrl-C kills them and the graceful stop that follows would fail.
        result = self._run("rev-parse", "--verify", "-q", "HEAD^{commit}")
        if result.returncode != 0:
            raise LoopdeckError(f"{self.path} has no commits yet: commit your files first "
                                "(`git add -A && git commit -m init`)")
        return result.stdout.decode().strip()

    def check_clean(self) -> None:
        """Raise LoopdeckError on a dirty tree (incl. untracked, non-ignored files) or a detached HEAD."""
        if self.current_branch() is None:
            raise LoopdeckError(f"HEAD is detached at {self.head()[:7]} in {self.path}: check out a branch first "
                                "(`git switch main`, or `git switch -c NAME` to keep this commit)")
        self.head()
        lines = self._git("status", "--porcelain", "--untracked-files=normal").splitlines()
        dirty = [line for line in lines if not _disposable(line)]
        if dirty:
            shown = ", ".join(line.strip() for line in dirty[:5]) + (" …" if len(dirty) > 5 else "")
            raise LoopdeckError(f"the working tree of {self.path} has uncommitted changes ({shown}): commit, stash "
                                "or delete them first; reverting an experiment resets the tree and removes "
                                "untracked files, which would destroy them (or add them to .gitignore)")

    def ensure_branch(self, tag: str) -> str:
        """Check out `loopdeck/<tag>`, creating it from the current commit if new; returns the branch name."""
        name = BRANCH_PREFIX + tag
        if self._run("check-ref-format", "--branch", name).returncode != 0:
            raise LoopdeckError(f"{name!r} is not a valid branch name: use letters, digits, '.', '_' or '-' "
                                "for the tag")
        if self.current_branch() == name:
            return name
        if name in (head.name for head in self._repo.heads):
            self._git("checkout", "-q", name)
        else:
            self._git("checkout", "-q", "-b", name)
        return name

    def switch_to(self, branch: str) -> None:
        """Check out an existing branch (the user's own, when a session ends having kept nothing); LoopdeckError
        on a dirty tree (an experiment's leftovers would follow the checkout onto that branch) or when git refuses
        (the branch is gone)."""
        self.check_clean()
        self._git("checkout", "-q", branch, "--")

    # --- writes ------------------------------------------------------------------------------------------------

    def commit_files(self, files: Mapping[str, str], message: str) -> str:
        """Write the contents, stage exactly those paths, commit as loopdeck; returns the new sha."""
        for name, content in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode("utf-8"))
        paths = list(files)
        self._git("add", "--", *paths)
        # `commit -- paths` commits only these paths, even if the user left something else staged.
        result = self._run("commit", "-q", "--no-verify", "-m", message.strip() or "loopdeck experiment", "--",
                           *paths, config=_COMMIT_CONFIG, env=_IDENTITY_ENV)
        if result.returncode != 0:
            if b"nothing" in result.stdout:
                raise LoopdeckError("nothing to commit: the files already have these contents")
            error = result.stderr.decode("utf-8", errors="replace").strip()
            raise LoopdeckError(f"git commit failed in {self.path}: {error}")
        return self.head()

    def reset_to(self, sha: str) -> None:
        """Hard-reset the research branch to sha and delete untracked, non-ignored files (never `.loopdeck/`)."""
        branch = self.current_branch()
        if branch is None or not branch.startswith(BRANCH_PREFIX):
            raise LoopdeckError(f"refusing to reset {branch or 'a detached HEAD'}: loopdeck only resets its own "
                                f"research branches ({BRANCH_PREFIX}<tag>)")
        self._git("reset", "-q", "--hard", sha)
        self._git("clean", "-q", "-f", "-d", "-e", f"/{STATE_DIR}/")

    # --- reads -------------------------------------------------------------------------------------------------

    def diff(self, old_sha: str, new_sha: str) -> str:
        """Unified diff between two commits."""
        return self._git("diff", "--no-color", "--no-ext-diff", old_sha, new_sha, strip=False)

    def read_files(self, paths: Iterable[str], at: str | None = None) -> dict[str, str]:
        """Contents of paths in the working tree (at=None) or at a commit."""
        contents = {}
        for name in paths:
            data = self._read_bytes(name, at)
            if data is None:
                where = "the working tree" if at is None else f"commit {at[:7]}"
                raise LoopdeckError(f"{name} not found in {where} of {self.path}")
            contents[name] = _decode(name, data)
        return contents

    def _read_bytes(self, name: str, at: str | None) -> bytes | None:
        if at is None:
            try:
                return (self.path / name).read_bytes()
            except OSError:
                return None
        result = self._run("cat-file", "blob", f"{at}:{name}")
        return result.stdout if result.returncode == 0 else None

    def apply_patch(self, patch_text: str) -> dict[str, str]:
        """New contents of the files a unified diff touches, computed without changing the tree."""
        if not patch_text.strip():
            raise LoopdeckError("the patch is empty")
        patch = patch_text if patch_text.endswith("\n") else patch_text + "\n"
        with tempfile.TemporaryDirectory(prefix="loopdeck-patch-") as scratch:
            # A scratch index seeded from HEAD: `apply --cached` changes it, never the working tree or real index.
            env = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
            self._git("read-tree", "HEAD", env=env)
            strip = next((p for p in ("-p1", "-p0") if self._run("apply", "--cached", "--check", p, "-",
                                                                   env=env, stdin=patch).returncode == 0), None)
            if strip is None:
                error = self._run("apply", "--cached", "--check", "-p1", "-", env=env, stdin=patch).stderr.decode(
                    "utf-8", errors="replace")
                detail = "; ".join(line.removeprefix("error: ") for line in error.strip().splitlines()[:3])
                raise LoopdeckError(f"the patch does not apply to the incumbent commit ({detail}): make it with "
                                    "`git diff` against the research branch's current files")
            self._git("apply", "--cached", strip, "-", env=env, stdin=patch)
            changes = self._git("diff-index", "--cached", "--no-renames", "--name-status", "-z", "HEAD",
                                env=env, strip=False).split("\0")
            touched = {}
            for status, name in zip(changes[0::2], changes[1::2], strict=False):
                if status == "D":
                    raise LoopdeckError(f"the patch deletes {name}: `loopdeck try` takes changes to files, "
                                        "not deletions")
                touched[name] = _decode(name, self._git_bytes("show", f":{name}", env=env))
        if not touched:
            raise LoopdeckError("the patch changes nothing")
        return touched

    # --- plumbing ----------------------------------------------------------------------------------------------

    def _run(self, *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None,
             config: tuple[str, ...] = ()) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["git", *config, *args], cwd=self.path, capture_output=True,
                              input=None if stdin is None else stdin.encode("utf-8"),
                              env={**os.environ, **(env or {})})

    def _git_bytes(self, *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None,
                   config: tuple[str, ...] = ()) -> bytes:
        result = self._run(*args, env=env, stdin=stdin, config=config)
        if result.returncode != 0:
            error = result.stderr.decode("utf-8", errors="replace").strip()
            raise LoopdeckError(f"git {args[0]} failed in {self.path}: {error}")
        return result.stdout

    def _git(self, *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None,
             config: tuple[str, ...] = (), strip: bool = True) -> str:
        text = self._git_bytes(*args, env=env, stdin=stdin, config=config).decode("utf-8", errors="replace")
        return text.strip() if strip else text


def _disposable(status_line: str) -> bool:
    """Untracked paths that are not user work: loopdeck's state and Python's bytecode caches (which a run of a
    repository without a .gitignore leaves behind and which a revert may delete)."""
    if not status_line.startswith("?? "):
        return False
    path = status_line[3:].strip('"')
    return path.startswith(f"{STATE_DIR}/") or PurePosixPath(path).name == "__pycache__" or path.endswith(".pyc")


def _decode(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise LoopdeckError(f"{name} is not UTF-8 text") from None


def unified_diff(old: Mapping[str, str], new: Mapping[str, str]) -> str:
    """git-style unified diff of file contents (for showing a proposal before it is committed)."""
    out: list[str] = []
    for name in sorted(new):
        before, after = old.get(name), new[name]
        if before == after:
            continue
        out.append(f"diff --git a/{name} b/{name}\n")
        if before is None:
            out.append("new file mode 100644\n")
        out.append("--- /dev/null\n" if before is None else f"--- a/{name}\n")
        out.append(f"+++ b/{name}\n")
        hunks = difflib.unified_diff((before or "").splitlines(keepends=True), after.splitlines(keepends=True),
                                     lineterm="\n")
        for line in list(hunks)[2:]:
            out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)
