"""Dialogue tables → Conversations: the mapping (--map string, YAML), grouping an unsorted dump,
ordering, role rules, merging and dropping turns, live SQLite, and the one-line errors."""

from __future__ import annotations

import importlib.util
import random
import sqlite3
from pathlib import Path

import pytest

from homellm.data.dialogues import (
    DialogueMap,
    DialogueStats,
    inspect_dump,
    iter_conversations,
)
from homellm.data.records import Conversation, from_json
from homellm.errors import ConfigError

MAP = ("table=messages,conversation=chat_id,role=sender,text=body,order=created_at,"
       "roles=user:user,bot:assistant,admin:system")

# (chat, time, sender, body): chat 1 has two user messages in a row, an empty one and an
# unmapped speaker; chat 3 has a single turn (dropped: fewer than 2)
MESSAGES = [
    (1, "2024-01-01 10:00:00", "user", "Привет! Как дела?"),
    (1, "2024-01-01 10:00:05", "user", "Ты тут?"),
    (1, "2024-01-01 10:00:09", "bot", "Да, всё хорошо. It's fine."),
    (1, "2024-01-01 10:00:10", "bot", "   "),
    (1, "2024-01-01 10:00:11", "spam", "buy now"),
    (1, "2024-01-01 10:00:12", "user", "Спасибо"),
    (2, "2024-01-02 09:00:00", "admin", "Be brief."),
    (2, "2024-01-02 09:00:01", "user", "2+2?"),
    (2, "2024-01-02 09:00:02", "bot", "4"),
    (3, "2024-01-03 00:00:00", "user", "alone"),
]


def write_db(path: Path, rows: list[tuple] = MESSAGES, seed: int = 7) -> Path:
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)   # a dump is not sorted by conversation
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, chat_id INTEGER, "
                "created_at TEXT, sender TEXT, body TEXT)")
    con.executemany("INSERT INTO messages (chat_id, created_at, sender, body) VALUES (?,?,?,?)",
                    shuffled)
    con.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    con.commit()
    con.close()
    return path


def write_dump(tmp_path: Path) -> Path:
    con = sqlite3.connect(write_db(tmp_path / "chat.db"))
    dump = tmp_path / "chat.sql"
    dump.write_text("\n".join(con.iterdump()), encoding="utf-8")
    con.close()
    return dump


def expected_turns(convs: list[Conversation]) -> list[list[tuple[str, str]]]:
    return [[(t.role, t.text) for t in c.turns] for c in convs]


EXPECTED = [
    [("user", "Привет! Как дела?\nТы тут?"), ("assistant", "Да, всё хорошо. It's fine."),
     ("user", "Спасибо")],
    [("system", "Be brief."), ("user", "2+2?"), ("assistant", "4")],
]


@pytest.mark.parametrize("kind", ["dump", "sqlite-path", "sqlite-url"])
def test_conversations_grouped_ordered_merged(tmp_path: Path, kind: str) -> None:
    if kind == "dump":
        source: str | Path = write_dump(tmp_path)
    else:
        db = write_db(tmp_path / "live.db")
        source = db if kind == "sqlite-path" else f"sqlite:///{db}"
    stats = DialogueStats()
    convs = list(iter_conversations(source, DialogueMap.parse(MAP), stats=stats))
    assert expected_turns(convs) == EXPECTED
    assert [c.turns[0].speaker for c in convs] == ["user", "admin"]
    assert stats.empty_texts == 1 and stats.unmapped_roles == 1 and stats.short == 1
    assert stats.conversations == 2 and stats.turns == 6
    name = Path(str(source)).name
    assert [c.id for c in convs] == [f"{name}:messages:1", f"{name}:messages:2"]
    again = list(iter_conversations(source, DialogueMap.parse(MAP)))
    assert [c.to_json() for c in again] == [c.to_json() for c in convs]   # stable ids
    assert from_json(convs[0].to_json()) == convs[0]


def test_dump_bigger_than_one_chunk_groups_in_order(tmp_path: Path) -> None:
    rows = [(c, f"t{i:06d}", "user" if i % 2 == 0 else "bot", f"msg {c}/{i}")
            for i in range(3000) for c in range(50)]
    con = sqlite3.connect(write_db(tmp_path / "big.db", rows, seed=1))
    dump = tmp_path / "big.sql"
    dump.write_text("\n".join(con.iterdump()), encoding="utf-8")
    convs = list(iter_conversations(dump, DialogueMap.parse(MAP), tmp_dir=tmp_path))
    assert len(convs) == 50
    assert all(len(c.turns) == 3000 for c in convs)
    assert convs[7].turns[10].text == "msg 7/10" and convs[7].turns[11].role == "assistant"
    assert not list(tmp_path.glob("homellm-dialogues-*"))   # the spill is gone


def test_role_rules_first_and_alternate(tmp_path: Path) -> None:
    dump = write_dump(tmp_path)
    first = DialogueMap.parse("table=messages,conversation=chat_id,role=sender,text=body,"
                              "order=created_at,roles=first")
    convs = list(iter_conversations(dump, first))
    assert expected_turns(convs)[0] == [
        ("user", "Привет! Как дела?\nТы тут?"),
        ("assistant", "Да, всё хорошо. It's fine.\nbuy now"), ("user", "Спасибо")]
    alternate = DialogueMap.parse("table=messages,conversation=chat_id,text=body,"
                                  "order=created_at,min_turns=1")
    convs = list(iter_conversations(dump, alternate))
    assert [t.role for t in convs[0].turns] == ["user", "assistant"] * 2 + ["user"]
    assert len(convs) == 3


def test_mapping_from_yaml_and_string(tmp_path: Path) -> None:
    spec = tmp_path / "map.yaml"
    spec.write_text("table: messages\nconversation: chat_id\nrole: sender\ntext: body\n"
                    "order: created_at\nroles: {user: user, bot: assistant, admin: system}\n")
    assert DialogueMap.load(spec) == DialogueMap.load(MAP) == DialogueMap.parse(MAP)
    m = DialogueMap.parse(MAP)
    assert m.roles == {"user": "user", "bot": "assistant", "admin": "system"}
    assert m.role_rule == "map" and m.min_turns == 2


@pytest.mark.parametrize(("spec", "message"), [
    ("table=messages,conversation=chat_id", "missing text"),
    ("table=m,conversation=c,text=t,role=r", "needs roles="),
    ("table=m,conversation=c,text=t,role=r,roles=a:robot", "robot are not one of"),
    ("table=m,conversation=c,text=t,colour=red", "unknown key(s) colour"),
    ("table=m,conversation=c,text=t,roles=first", "needs the role column"),
    ("nonsense", "expected KEY=VALUE"),
])
def test_bad_mappings(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        DialogueMap.parse(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["dump", "sqlite"])
def test_roles_that_match_nothing_name_the_roles_found(tmp_path: Path, kind: str) -> None:
    source = write_dump(tmp_path) if kind == "dump" else write_db(tmp_path / "x.db")
    wrong = MAP.replace("roles=user:user,bot:assistant,admin:system", "roles=u:user,b:assistant")
    with pytest.raises(ConfigError, match=r"roles=u:user,b:assistant match no turn of table "
                       r"messages; its role column holds 'user' ×\d+, 'bot' ×\d+") as err:
        list(iter_conversations(source, DialogueMap.parse(wrong)))
    assert "\n" not in str(err.value) and "'admin' ×1" in str(err.value)


@pytest.mark.parametrize("kind", ["dump", "sqlite"])
def test_missing_table_or_column_lists_what_exists(tmp_path: Path, kind: str) -> None:
    source = write_dump(tmp_path) if kind == "dump" else write_db(tmp_path / "x.db")
    with pytest.raises(ConfigError, match=r"no table 'msgs'; tables: .*messages\(id, chat_id, "
                       r"created_at, sender, body\).*users\(id, name\)"):
        list(iter_conversations(source, DialogueMap.parse(MAP.replace("messages", "msgs"))))
    with pytest.raises(ConfigError, match="table messages has no column chat; columns: id, "
                       "chat_id, created_at, sender, body"):
        list(iter_conversations(source, DialogueMap.parse(MAP.replace("chat_id", "chat"))))


def test_inspect_dump_and_live(tmp_path: Path) -> None:
    dump = write_dump(tmp_path)
    for source in (dump, tmp_path / "chat.db"):
        tables = {t.name: t for t in inspect_dump(source, samples=2)}
        assert set(tables) == {"messages", "users"}
        assert tables["messages"].columns == ("id", "chat_id", "created_at", "sender", "body")
        assert tables["messages"].row_count == len(MESSAGES)
        assert len(tables["messages"].sample_rows) == 2
        assert tables["users"].row_count == 0 and tables["users"].sample_rows == []


def test_server_databases_need_their_drivers() -> None:
    m = DialogueMap.parse(MAP)
    for url, module, hint in (("postgresql://me:secret@db/chat", "psycopg", "psycopg"),
                              ("mysql://me:secret@db/chat", "pymysql", "pymysql")):
        if importlib.util.find_spec(module) is not None:
            continue   # installed: a connection attempt would need a server
        with pytest.raises(ConfigError) as err:
            list(iter_conversations(url, m))
        assert hint in str(err.value) and "secret" not in str(err.value)


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        list(iter_conversations(tmp_path / "nope.sql", DialogueMap.parse(MAP)))
