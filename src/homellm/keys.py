"""API keys: a file of salted scrypt hashes, managed by ``homellm keys``, checked by the gateway.

A key reads ``hlk-<id>-<secret>``. The id names its record, so a check computes one scrypt hash
(stdlib ``hashlib.scrypt``, OpenSSL's), never one per stored key; a key that passed once is
remembered in memory by its SHA-256, so the slow hash runs once per key per process. The file
holds names, ids, hashes and allowed models, never a key, and is written atomically, mode 0600.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from pydantic import ValidationError

from homellm.config import KeyLimits
from homellm.errors import ConfigError
from homellm.fsutil import atomic_write_text

PREFIX = "hlk"
_BAD = ""  # a remembered wrong secret for a real key id
_MAX_REMEMBERED = 100_000
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


@dataclass
class KeyRecord:
    name: str
    key_id: str
    hash: str  # scrypt$n$r$p$salt_hex$digest_hex
    created: float
    models: list[str] | None = None  # None: every model
    revoked: bool = False
    meta: dict[str, str] = field(default_factory=dict)
    limits: dict[str, int] | None = None  # rpm, tpm, concurrent; the stack file may override

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    @cached_property
    def key_limits(self) -> KeyLimits | None:
        return KeyLimits.model_validate(self.limits) if self.limits else None


def _hash(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024,
                          dklen=32)


def hash_secret(secret: str) -> str:
    salt = os.urandom(16)
    digest = _hash(secret, salt, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def secret_matches(secret: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        computed = _hash(secret, bytes.fromhex(salt), int(n), int(r), int(p))
    except (ValueError, OverflowError):
        return False
    return hmac.compare_digest(computed, bytes.fromhex(digest))


def split_key(key: str) -> tuple[str, str] | None:
    parts = key.split("-", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class KeyFile:
    """The keys file: read, add, revoke; every write is atomic and owner-only."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> list[KeyRecord]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
            records = [KeyRecord(**item) for item in data["keys"]]
            for record in records:
                _ = record.key_limits  # a broken limits entry fails here, at load
            return records
        except FileNotFoundError:
            return []
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            raise ConfigError(f"{self.path}: key limits: {where}: {error['msg']}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.path}: not a homellm keys file ({type(exc).__name__}: "
                              f"{exc}); restore it or start a new one") from None

    def save(self, records: list[KeyRecord]) -> None:
        text = json.dumps({"keys": [asdict(r) for r in records]}, indent=2) + "\n"
        atomic_write_text(self.path, text, mode=0o600)

    def add(self, name: str, models: list[str] | None = None,
            limits: KeyLimits | None = None) -> str:
        """Store a new key's hash under ``name``; return the key (shown once, never stored)."""
        if not name or any(c.isspace() for c in name):
            raise ConfigError(f"key name {name!r}: use a non-empty name without spaces")
        records = self.load()
        if any(r.name == name and not r.revoked for r in records):
            raise ConfigError(f"{self.path}: a key named {name!r} exists; revoke it first")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        records.append(KeyRecord(name=name, key_id=key_id, hash=hash_secret(secret),
                                 created=time.time(), models=models,
                                 limits=limits.model_dump(exclude_none=True) or None
                                 if limits else None))
        self.save(records)
        return f"{PREFIX}-{key_id}-{secret}"

    def revoke(self, name: str) -> None:
        records = self.load()
        active = [r for r in records if r.name == name and not r.revoked]
        if not active:
            raise ConfigError(f"{self.path}: no active key named {name!r}")
        for record in active:
            record.revoked = True
        self.save(records)


class KeyVerifier:
    """What the gateway asks per request; re-reads the file when it changes (checked ≤ 1/s)."""

    def __init__(self, path: Path) -> None:
        self._file = KeyFile(path)
        self._by_id: dict[str, KeyRecord] = {}
        self._verified: dict[bytes, str] = {}  # sha256(key) → key id
        self._mtime: float | None = None
        self._checked = 0.0
        self._reload()

    def _reload(self) -> None:
        try:
            mtime = self._file.path.stat().st_mtime
        except FileNotFoundError:
            raise ConfigError(f"{self._file.path}: keys file not found; create one with "
                              "`homellm keys add NAME`") from None
        if mtime != self._mtime:
            self._by_id = {r.key_id: r for r in self._file.load() if not r.revoked}
            self._verified = {h: i for h, i in self._verified.items() if i in self._by_id}
            self._mtime = mtime

    def lookup(self, key: str) -> tuple[KeyRecord | None, bool]:
        """The fast part of a check: ``(record, True)`` for a key known good, ``(None, True)``
        for one known bad, ``(record, False)`` when only the slow hash can tell (then call
        :meth:`confirm`, off the event loop, and :meth:`settle` with its answer)."""
        now = time.monotonic()
        if now - self._checked > 1.0:
            self._checked = now
            with contextlib.suppress(ConfigError):  # a broken edit: keep the keys we had
                self._reload()
        parsed = split_key(key)
        if parsed is None:
            return None, True
        record = self._by_id.get(parsed[0])
        if record is None:
            return None, True
        fingerprint = hashlib.sha256(key.encode()).digest()
        known = self._verified.get(fingerprint)
        if known == record.key_id:
            return record, True
        if known == _BAD:
            return None, True
        return record, False

    @staticmethod
    def confirm(key: str, record: KeyRecord) -> bool:
        """The slow hash (tens of ms, the GIL released): run it in a thread."""
        parsed = split_key(key)
        return parsed is not None and secret_matches(parsed[1], record.hash)

    def settle(self, key: str, record: KeyRecord, good: bool) -> KeyRecord | None:
        fingerprint = hashlib.sha256(key.encode()).digest()
        if not good and len(self._verified) >= _MAX_REMEMBERED:
            return None  # do not let a flood of wrong keys grow the memory
        self._verified[fingerprint] = record.key_id if good else _BAD
        return record if good else None

    def verify(self, key: str) -> KeyRecord | None:
        """All of a check at once (it may block for the slow hash)."""
        record, settled = self.lookup(key)
        if settled or record is None:
            return record
        return self.settle(key, record, self.confirm(key, record))
