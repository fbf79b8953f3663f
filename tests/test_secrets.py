"""No secrets in the repository: detect-secrets scans every tracked (and new, not ignored) file;
a finding fails the test unless tests/secrets_allowlist.toml lists it with a justification.
Inline `pragma: allowlist secret` comments are not honoured: the allow-list file is the one place."""

from __future__ import annotations

import contextlib
import subprocess
import tomllib
from pathlib import Path
from typing import Any

from detect_secrets import SecretsCollection
from detect_secrets.settings import default_settings

from tests.support.helpers import ROOT

ALLOWLIST = ROOT / "tests" / "secrets_allowlist.toml"


def _scan(files: list[str], root: Path) -> list[dict[str, Any]]:
    collection = SecretsCollection()
    with contextlib.chdir(root), default_settings() as settings:
        settings.disable_filters("detect_secrets.filters.allowlist.is_line_allowlisted")
        for name in files:
            if (root / name).is_file():
                collection.scan_file(name)
    return [finding for found in collection.json().values() for finding in found]


def _repository_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout  # fmt: skip
    # The allow-list itself holds only detect-secrets' SHA-1 hashes of findings (which look like
    # hex secrets): it is the one file not scanned.
    skip = str(ALLOWLIST.relative_to(ROOT))
    return sorted({name for name in out.decode().split("\0") if name and name != skip})


def _allowlist() -> list[dict[str, str]]:
    return list(tomllib.loads(ALLOWLIST.read_text())["allow"])


def _key(entry: dict[str, Any]) -> tuple[str, str, str]:
    return entry["filename"], entry["type"], entry["hashed_secret"]


def test_the_repository_holds_no_secret_outside_the_allowlist() -> None:
    files = _repository_files()
    assert len(files) > 50 and "pyproject.toml" in files
    findings = _scan(files, ROOT)
    allowed = {_key(e) for e in _allowlist()}
    unlisted = [f"{f['filename']}:{f['line_number']}: {f['type']} ({f['hashed_secret']})" for f in findings]
    unlisted = [line for f, line in zip(findings, unlisted, strict=True) if _key(f) not in allowed]
    assert not unlisted, "possible secrets (remove them, or justify them in the allow-list):\n" + "\n".join(
        unlisted
    )
    stale = allowed - {_key(f) for f in findings}
    assert not stale, f"allow-list entries that match nothing any more (remove them): {sorted(stale)}"


def test_every_allowlist_entry_is_justified() -> None:
    entries = _allowlist()
    assert entries
    for entry in entries:
        assert set(entry) == {"filename", "type", "hashed_secret", "reason"}, entry
        assert len(entry["reason"].split()) >= 5, f"justify {entry['filename']} in a sentence"


def test_the_scan_finds_a_planted_secret(tmp_path: Path) -> None:
    """The scanner is alive: a (made-up) AWS key and a private key header are found, even with an
    inline allowlist pragma."""
    aws = "AKIA" + "Z7QW3RTY5UIO2PLK"
    pem = "-----BEGIN " + "RSA PRIVATE KEY-----"
    (tmp_path / "leak.py").write_text(f'KEY = "{aws}"  # pragma: allowlist secret\nPEM = """{pem}"""\n')
    found = {f["type"] for f in _scan(["leak.py"], tmp_path)}
    assert {"AWS Access Key", "Private Key"} <= found, found
