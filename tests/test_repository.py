"""The repository stands alone: no file points at documents that live outside it."""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# References to notes that only the project's authors had (matched case-insensitively):
# cite the paper (arXiv 2510.08549) or the authors' repository (nothingbutbut/era), or
# write the fact down under docs/.
OUTSIDE_REFERENCES = r"spec section|STACK\.md|ERA_SPEC|\.\./shared"


def test_no_file_refers_to_documents_outside_the_repository():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    # `:!tests/test_repository.py`: this file names the patterns it looks for.
    found = subprocess.run(
        ["git", "grep", "-niE", OUTSIDE_REFERENCES, "--", ".", ":!tests/test_repository.py"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert found.returncode in (0, 1), found.stderr  # 1: no match
    assert found.stdout == "", "references to documents outside the repository:\n" + found.stdout
