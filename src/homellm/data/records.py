"""What the readers yield and the rest of the pipeline consumes: documents and conversations.

Readers (``books.py`` for text formats, ``sqldump.py`` + ``dialogues.py`` for databases) turn
each input into these records and nothing else; cleaning, deduplication, splitting and
tokenizing read only these. ``to_json``/``from_json`` give the one JSONL line per record that
the dataset folder stores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]


@dataclass
class Document:
    """A book, an article, a text file: one piece of running text."""

    id: str                    # stable: derived from the source and the position in it
    source: str                # the input file (or database URL without credentials)
    text: str
    title: str = ""
    author: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # encoding, repaired, format, ...
    kind: Literal["document"] = "document"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Turn:
    role: Role
    text: str
    speaker: str = ""          # the name or id in the source, when the role was mapped from it


@dataclass
class Conversation:
    """A dialogue as structured turns, in order (never flattened to text before tokenizing)."""

    id: str
    source: str
    turns: list[Turn]
    meta: dict[str, Any] = field(default_factory=dict)
    kind: Literal["conversation"] = "conversation"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Record = Document | Conversation


def from_json(data: dict[str, Any]) -> Record:
    kind = data.get("kind")
    if kind == "document":
        return Document(**data)
    if kind == "conversation":
        turns = [Turn(**t) for t in data["turns"]]
        return Conversation(**{**data, "turns": turns})
    raise ValueError(f"not a homellm data record (kind={kind!r})")
