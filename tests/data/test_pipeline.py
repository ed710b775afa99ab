"""`homellm data ingest` as users run it: books (an fb2 in cp1251, a mojibaked text) and an SQL
dump of dialogues into one dataset folder; a re-run skips done inputs; SIGKILL in the middle and
a re-run give the same files as an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from homellm.data.records import Conversation, Document, from_json
from tests.data.test_books import FB2

HOMELLM = [sys.executable, "-m", "homellm.cli"]
MAP = ("table=messages,conversation=chat_id,role=sender,text=body,order=id,"
       "roles=user:user,bot:assistant")
_WORDS_TEXT = (
    "мир свет дом река лес гора время слово жизнь душа путь сердце небо город поле "
    "окно дорога ночь утро вечер книга ответ вопрос дело"
)
WORDS = tuple(_WORDS_TEXT.split())


def corpus(folder: Path, conversations: int = 300) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "letters.fb2").write_bytes(FB2.encode("cp1251"))
    mojibake = "Привет, мир! Это проверка.\n".encode().decode("cp1251").encode()
    (folder / "broken.txt").write_bytes(mojibake * 3)
    rng = random.Random(5)
    for n in range(3):
        paragraphs = [f"Глава {n + 1}.\n\n"]
        paragraphs += [" ".join(rng.choice(WORDS) for _ in range(40)) + "." for _ in range(30)]
        (folder / f"book{n}.txt").write_text("\n\n".join(paragraphs), "utf-8")
    db = sqlite3.connect(folder / "chats.sqlite")
    db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, chat_id INTEGER, sender TEXT, "
               "body TEXT)")
    rows = []
    for chat in range(conversations):
        for turn in range(4):
            text = " ".join(rng.choice(WORDS) for _ in range(12)) + f" ({chat}.{turn})"
            if turn == 1 and chat % 7 == 0:
                text += " пишите на ivan.petrov@example.ru или +7 (912) 345-67-89"
            rows.append((chat, "user" if turn % 2 == 0 else "bot", text))
    db.executemany("INSERT INTO messages (chat_id, sender, body) VALUES (?, ?, ?)", rows)
    db.commit()
    (folder / "chats.sql").write_text("\n".join(db.iterdump()) + "\n", "utf-8")
    db.close()
    (folder / "chats.sqlite").unlink()  # the dump stands for the user's 590 MB SQL file
    return folder


def ingest(src: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*HOMELLM, "data", "ingest", str(src), "-o", str(out), "--map", MAP,
                             "--workers", "2", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "COLUMNS": "200"})


def splits(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "splits").glob("*.jsonl"))}


def test_ingest_books_and_dialogues(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src")
    proc = ingest(src, tmp_path / "ds", "--json")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    manifest = json.loads(out[out.index("{"):])
    kinds = sorted(e["kind"] for e in manifest["inputs"].values())
    assert kinds == ["dump", "text", "text", "text", "text", "text"]
    records = [from_json(json.loads(line)) for data in splits(tmp_path / "ds").values()
               for line in data.decode().splitlines()]
    convs = [r for r in records if isinstance(r, Conversation)]
    docs = [r for r in records if isinstance(r, Document)]
    assert len(convs) >= 250 and all(len(c.turns) >= 2 for c in convs)
    assert {t.role for c in convs for t in c.turns} == {"user", "assistant"}
    texts = "\n".join(t.text for c in convs for t in c.turns)
    assert "ivan.petrov@example.ru" not in texts and "345-67-89" not in texts  # scrubbed
    book_text = "\n".join(d.text for d in docs)
    assert "Привет, мир!" in book_text and "РџСЂ" not in book_text  # mojibake undone
    assert "духовная жизнь" in book_text  # the cp1251 fb2
    again = ingest(src, tmp_path / "ds")
    out, _ = again.communicate(timeout=240)
    assert again.returncode == 0 and "6 of 6 inputs already done" in out, out[-2000:]


def test_sigkill_mid_ingest_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src", conversations=12000)  # a dump that takes a few seconds
    clean = ingest(src, tmp_path / "clean")
    out, _ = clean.communicate(timeout=300)
    assert clean.returncode == 0, out[-3000:]
    killed = ingest(src, tmp_path / "killed", "--workers", "1")
    deadline = time.monotonic() + 60
    while not (tmp_path / "killed" / "manifest.json").exists():
        assert time.monotonic() < deadline and killed.poll() is None, "ingest never started"
        time.sleep(0.05)
    time.sleep(0.5)  # the first books are done, the dump is being read
    assert killed.poll() is None, "ingest ended before the kill: make the dump bigger"
    os.killpg(killed.pid, signal.SIGKILL)  # the process and its workers: a power cut
    killed.wait(30)
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())  # still whole
    assert not (tmp_path / "killed" / "splits").exists() or manifest
    resumed = ingest(src, tmp_path / "killed")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    assert splits(tmp_path / "killed") == splits(tmp_path / "clean")
    assert not [p for p in (tmp_path / "killed").rglob("*.tmp")]  # stale temp files cleared
    assert sorted(p.name for p in (tmp_path / "killed" / "ingested").iterdir()
                  if not p.name.startswith(".")) == sorted(
        p.name for p in (tmp_path / "clean" / "ingested").iterdir())


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "cut.fb2").write_text('<?xml version="1.0"?><FictionBook><body><p>обрыв', "utf-8")
    proc = ingest(src, tmp_path / "ds")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "cut.fb2" in out and "Traceback" not in out
    skipped = ingest(src, tmp_path / "ds", "--skip-bad", "--json")
    out, _ = skipped.communicate(timeout=120)  # the bad book is left out, counted and named
    assert skipped.returncode == 0, out[-2000:]
    (entry,) = json.loads(out[out.index("{"):])["inputs"].values()
    assert entry["status"] == "failed" and "cut.fb2" in entry["error"]
    (src / "cut.fb2").unlink()
    (src / "chats.sql").write_text("INSERT INTO messages VALUES (1, 'обрыв", "utf-8")
    proc = ingest(src, tmp_path / "ds2")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "chats.sql" in out and "Traceback" not in out


@pytest.mark.parametrize("bad", ["0.5,0.5", "a,b,c"])
def test_bad_split_option(tmp_path: Path, bad: str) -> None:
    proc = ingest(corpus(tmp_path / "src", conversations=3), tmp_path / "ds", "--split", bad)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--split" in out


def test_tokenizer_and_shards_from_the_cli(tmp_path: Path) -> None:
    """The chain a user runs after ingest: tokenizer train → data tokenize → reports."""
    src = corpus(tmp_path / "src", conversations=80)
    ds, tok = tmp_path / "ds", tmp_path / "tok"
    first = ingest(src, ds)
    out, _ = first.communicate(timeout=240)
    assert first.returncode == 0, out[-2000:]
    env = {**os.environ, "COLUMNS": "200"}

    def run(*args: str) -> str:
        done = subprocess.run([*HOMELLM, *args], capture_output=True, text=True, timeout=240,
                              env=env, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    run("tokenizer", "train", str(ds), "-o", str(tok), "--vocab", "400", "--special",
        "<|dialogue|>")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tok)
    assert len(hf.encode("<|dialogue|>", add_special_tokens=False)) == 1
    rendered = hf.apply_chat_template([{"role": "user", "content": "Привет"}], tokenize=False)
    assert "<|im_start|>user\nПривет<|im_end|>" in rendered
    run("data", "tokenize", str(ds), "--tokenizer", str(tok))
    report = json.loads(run("tokenizer", "report", str(ds), "--tokenizer", str(tok), "--json"))
    by_name = {(r["tokenizer"], r["source"]): r for r in report["rows"]}
    assert by_name[("bytes", "(all)")]["bytes_per_token"] == 1.0
    assert by_name[("tok", "(all)")]["bytes_per_token"] > 1.0
    data = json.loads(run("data", "report", str(ds), "--json"))
    (tokens,) = data["tokens"].values()
    assert tokens["train"] > 0 and set(tokens) == {"train", "val", "test"}


def test_roles_matching_nothing_and_an_empty_folder_are_one_line_errors(tmp_path: Path) -> None:
    src = corpus(tmp_path / "in", conversations=5)
    wrong = MAP.replace("roles=user:user,bot:assistant", "roles=u:user,b:assistant")
    for args, message in (
            ([str(src / "chats.sql"), "--map", wrong],
             r"roles=u:user,b:assistant match no turn of table messages; its role column holds "
             r"'user' ×10, 'bot' ×10"),
            ([str(tmp_path / "empty")], r"empty: no input files found")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        result = subprocess.run([*HOMELLM, "data", "ingest", *args, "-o", str(tmp_path / "out"),
                                 "--workers", "1"], capture_output=True, text=True,
                                env={**os.environ, "COLUMNS": "300"})
        errors = [line for line in result.stderr.splitlines() + result.stdout.splitlines()
                  if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1, result.stdout + result.stderr
        assert re.search(message, errors[0]), errors[0]
        assert "Traceback" not in result.stderr
