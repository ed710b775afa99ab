"""The dataset folder every ``homellm data`` step reads and writes (one layout, one place)::

    DATASET/
      manifest.json              inputs (path, size, sha256, reader, records out) and options;
                                 an input whose hash is recorded as done is not read again
      ingested/<input-id>.jsonl  what the readers made of one input: Document/Conversation
                                 records, one JSON object per line (records.py)
      splits/train.jsonl         cleaned, deduplicated, split records (same JSON lines);
      splits/val.jsonl           a document or a conversation is never cut across splits
      splits/test.jsonl
      splits/stats.json          counts per split and source, duplicates removed (with examples),
                                 encodings repaired, scrubbed items
      tokens/<tokenizer-id>/     token shards per split (shards.py) and their manifest
      report/                    `homellm data report` (PNG, HTML)

Every file is written atomically (temp file + fsync + rename), so a killed run leaves either
the old file or the new one, never half of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetLayout:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def ingested(self) -> Path:
        return self.root / "ingested"

    def ingested_file(self, input_id: str) -> Path:
        return self.ingested / f"{input_id}.jsonl"

    @property
    def splits(self) -> Path:
        return self.root / "splits"

    def split_file(self, split: str) -> Path:
        return self.splits / f"{split}.jsonl"

    @property
    def split_stats(self) -> Path:
        return self.splits / "stats.json"

    def tokens(self, tokenizer_id: str) -> Path:
        return self.root / "tokens" / tokenizer_id

    @property
    def report(self) -> Path:
        return self.root / "report"
