"""API keys file: hashes only, owner-only, atomic; verification; the `homellm keys` commands."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from homellm.errors import ConfigError
from homellm.keys import KeyFile, KeyVerifier


def test_add_stores_only_a_salted_hash(tmp_path: Path) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    key = keys.add("alice", models=["tiny"])
    text = (tmp_path / "keys.json").read_text()
    assert key.startswith("hlk-") and key not in text and key.split("-", 2)[2] not in text
    assert oct((tmp_path / "keys.json").stat().st_mode & 0o777) == "0o600"
    record = keys.load()[0]
    assert record.name == "alice" and record.hash.startswith("scrypt$")
    assert record.models == ["tiny"]
    other = keys.add("bob")
    assert keys.load()[0].hash != keys.load()[1].hash and other != key
    with pytest.raises(ConfigError, match="a key named 'alice' exists"):
        keys.add("alice")


def test_verify_wrong_revoked_and_reload(tmp_path: Path) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    key = keys.add("alice")
    verifier = KeyVerifier(tmp_path / "keys.json")
    assert verifier.verify(key).name == "alice"
    assert verifier.verify(key).name == "alice"  # cached: no second scrypt
    key_id = key.split("-")[1]
    for wrong in ("", "Bearer x", "hlk-nope-secret", f"hlk-{key_id}-wrongsecret", key + "x"):
        assert verifier.verify(wrong) is None
    keys.revoke("alice")
    time.sleep(1.1)  # the verifier looks at the file at most once a second
    assert verifier.verify(key) is None


def test_corrupt_or_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "keys.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="not a homellm keys file"):
        KeyFile(broken).load()
    with pytest.raises(ConfigError, match="keys file not found"):
        KeyVerifier(tmp_path / "missing.json")


def test_keys_cli(tmp_path: Path) -> None:
    stack = tmp_path / "homellm.yaml"
    stack.write_text("models:\n  a:\n    source: x/y\n    replicas: [{}]\n"
                     "gateway:\n  api_keys_file: keys.json\n")

    def homellm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "homellm.cli", "keys", *args, "-c",
                               str(stack)], capture_output=True, text=True, check=False)

    added = homellm("add", "alice", "--models", "a")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("hlk-") and "shown only now" in added.stderr
    listed = json.loads(homellm("list", "--json").stdout)
    assert [(r["name"], r["models"], r["revoked"]) for r in listed] == [("alice", ["a"], False)]
    assert key not in homellm("list").stdout
    assert homellm("revoke", "alice").returncode == 0
    again = homellm("revoke", "alice")
    assert again.returncode == 2 and "no active key named 'alice'" in again.stderr
    assert KeyVerifier(tmp_path / "keys.json").verify(key) is None


def test_the_slow_hash_runs_once_per_key_good_or_bad(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    good = keys.add("alice")
    verifier = KeyVerifier(tmp_path / "keys.json")
    calls: list[str] = []
    real = KeyVerifier.confirm
    monkeypatch.setattr(KeyVerifier, "confirm", staticmethod(
        lambda key, record: calls.append(key) or real(key, record)))
    wrong = good[:-3] + "xyz"  # a real key id with a wrong secret
    record, settled = verifier.lookup(good)
    assert record is not None and not settled  # only the slow hash can tell
    for _ in range(3):
        assert verifier.verify(good) is not None
        assert verifier.verify(wrong) is None
    assert calls == [good, wrong]  # then both are remembered
    assert verifier.lookup("hlk-nosuchid-secret") == (None, True)  # no hash for an unknown id


def test_key_limits_are_stored_and_checked(tmp_path: Path) -> None:
    from homellm.config import KeyLimits

    keys = KeyFile(tmp_path / "keys.json")
    keys.add("ci", limits=KeyLimits(rpm=10, concurrent=2))
    assert keys.load()[0].key_limits == KeyLimits(rpm=10, concurrent=2)
    data = json.loads((tmp_path / "keys.json").read_text())
    data["keys"][0]["limits"] = {"rpm": 0}
    (tmp_path / "keys.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"key limits: rpm: Input should be greater than"):
        keys.load()
