"""iter_documents on every supported format, built here, and on the broken files users have."""

from __future__ import annotations

import base64
import gzip
import json
import sys
import zipfile
from pathlib import Path

import pytest

from homellm.data.books import doc_id, file_format, is_supported, iter_documents
from homellm.errors import HomellmError

FB2 = """<?xml version="1.0" encoding="windows-1251"?>
<FictionBook xmlns="http://www.gribuser.ru/xml/fictionbook/2.0"
             xmlns:l="http://www.w3.org/1999/xlink">
 <description>
  <title-info>
   <genre>religion</genre>
   <author><first-name>Феофан</first-name><last-name>Затворник</last-name></author>
   <author><nickname>Редактор</nickname></author>
   <book-title>Что есть духовная жизнь</book-title>
   <lang>ru</lang>
  </title-info>
 </description>
 <body>
  <image l:href="#cover.jpg"/>
  <title><p>Письмо первое</p></title>
  <section>
   <p>Вы спрашиваете, что есть <emphasis>духовная</emphasis> жизнь<a l:href="#n1"
      type="note">[1]</a>.</p>
   <p>Ответ   прост,
      но не лёгок.</p>
   <empty-line/>
   <poem><stanza><v>Первая строка,</v><v>вторая строка.</v></stanza></poem>
  </section>
 </body>
 <body name="notes">
  <section id="n1"><title><p>1</p></title><p>Текст сноски, которого не должно быть.</p></section>
 </body>
 <binary id="cover.jpg" content-type="image/jpeg">{image}</binary>
</FictionBook>
""".replace("{image}", base64.b64encode(b"\xff\xd8\xff\xe0 not really a jpeg").decode())

FB2_TEXT = ("Письмо первое\n\nВы спрашиваете, что есть духовная жизнь.\n\n"
            "Ответ прост, но не лёгок.\n\nПервая строка,\nвторая строка.")


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def _one(path: Path, **kw: str):  # type: ignore[no-untyped-def]
    docs = list(iter_documents(path, **kw))
    assert len(docs) == 1
    return docs[0]


# ----------------------------------------------------------------------------- fb2

def test_fb2_in_cp1251_without_notes_images_or_markup(tmp_path: Path) -> None:
    doc = _one(_write(tmp_path / "book.fb2", FB2.encode("cp1251")))
    assert doc.title == "Что есть духовная жизнь"
    assert doc.author == "Феофан Затворник, Редактор"
    assert doc.text == FB2_TEXT
    assert doc.meta == {"format": "fb2", "encoding": "windows-1251", "repaired": 0, "lang": "ru"}
    assert doc.source == str(tmp_path / "book.fb2")


def test_fb2_whose_declaration_lies_and_fb2_zip(tmp_path: Path) -> None:
    lying = FB2.replace("windows-1251", "utf-8").encode("cp1251")
    doc = _one(_write(tmp_path / "lies.fb2", lying))
    assert doc.text == FB2_TEXT and doc.meta["encoding"] == "cp1251"
    with zipfile.ZipFile(tmp_path / "book.fb2.zip", "w") as z:
        z.writestr("book.fb2", FB2.encode("cp1251"))
    assert _one(tmp_path / "book.fb2.zip").text == FB2_TEXT


def test_fb2_truncated_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "cut.fb2", FB2.encode("cp1251")[:900])
    with pytest.raises(HomellmError) as err:
        list(iter_documents(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "line" in message


def test_fb2_entity_bomb_is_refused(tmp_path: Path) -> None:
    bomb = ('<?xml version="1.0"?><!DOCTYPE b [<!ENTITY a "aaaaaaaaaa">'
            '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><FictionBook><body><p>&b;</p>'
            "</body></FictionBook>")
    with pytest.raises(HomellmError, match=r"bomb\.fb2: refused"):
        list(iter_documents(_write(tmp_path / "bomb.fb2", bomb)))


# ----------------------------------------------------------------------------- epub

OPF = """<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">
 <metadata xmlns:dc="http://purl.org/dc/elements/1.1/">
  <dc:title>Лествица</dc:title><dc:creator>Иоанн Лествичник</dc:creator>
  <dc:language>ru</dc:language><dc:identifier id="id">x</dc:identifier>
 </metadata>
 <manifest>
  <item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>
  <item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/>
  <item id="c1" href="Text/a_second.xhtml" media-type="application/xhtml+xml"/>
  <item id="c2" href="Text/b%20first.xhtml" media-type="application/xhtml+xml"/>
  <item id="notes" href="Text/notes.xhtml" media-type="application/xhtml+xml"/>
  <item id="img" href="cover.jpg" media-type="image/jpeg"/>
 </manifest>
 <spine toc="ncx">
  <itemref idref="nav"/><itemref idref="c2"/><itemref idref="c1"/>
  <itemref idref="notes" linear="no"/>
 </spine>
</package>"""

CHAPTER = """<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.1//EN" "http://www.w3.org/TR/xhtml11/DTD/xhtml11.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">
<head><title>не текст</title><style>p {{ margin: 0 }}</style></head>
<body><h1>{title}</h1>
<p>Первый&nbsp;абзац <i>главы</i>.<sup><a epub:type="noteref" href="notes.xhtml#n1">1</a></sup></p>
<p>Второй<br/>абзац &amp; &#171;цитата&#187;.</p><img src="../cover.jpg" alt="обложка"/>
<aside epub:type="footnote"><p>Сноска внутри главы.</p></aside>
<script>var x = "не текст";</script>
</body></html>"""


def _epub(path: Path, *, container: bool = True, opf: bool = True) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        if container:
            z.writestr("META-INF/container.xml", """<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
 <rootfiles><rootfile full-path="OEBPS/content.opf"
  media-type="application/oebps-package+xml"/></rootfiles></container>""")
        if opf:
            z.writestr("OEBPS/content.opf", OPF)
        z.writestr("OEBPS/toc.ncx", '<ncx xmlns="http://www.daisy.org/z3986/2005/ncx/">'
                   "<navMap/></ncx>")
        z.writestr("OEBPS/nav.xhtml", "<html><body><nav><ol><li>Оглавление</li></ol></nav>"
                   "<p>Оглавление</p></body></html>")
        z.writestr("OEBPS/Text/a_second.xhtml", CHAPTER.format(title="Слово второе"))
        z.writestr("OEBPS/Text/b first.xhtml", CHAPTER.format(title="Слово первое"))
        z.writestr("OEBPS/Text/notes.xhtml", "<html><body><p>Примечания</p></body></html>")
        z.writestr("OEBPS/cover.jpg", b"\xff\xd8\xff")
    return path


def test_epub_in_spine_order_with_metadata(tmp_path: Path) -> None:
    doc = _one(_epub(tmp_path / "book.epub"))
    assert (doc.title, doc.author) == ("Лествица", "Иоанн Лествичник")
    chapter = "Первый\xa0абзац главы.\n\nВторой\n\nабзац & «цитата»."  # nbsp: cleaning's job
    assert doc.text == f"Слово первое\n\n{chapter}\n\nСлово второе\n\n{chapter}"
    assert doc.meta == {"format": "epub", "encoding": "utf-8", "repaired": 0, "chapters": 2,
                        "lang": "ru"}


def test_epub_without_container_finds_the_opf(tmp_path: Path) -> None:
    assert _one(_epub(tmp_path / "b.epub", container=False)).title == "Лествица"


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: _epub(p, container=False, opf=False), "no OPF package document"),
    (lambda p: _write(p, b"PK\x03\x04 this is not really a zip"), "not a zip archive"),
    (lambda p: _write(p, FB2), "not a zip archive"),
])
def test_broken_epubs(tmp_path: Path, make, says: str) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path / "broken.epub")
    with pytest.raises(HomellmError, match=says) as err:
        list(iter_documents(path))
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_zip_that_is_not_an_epub(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "photos.epub", "w") as z:
        z.writestr("a.jpg", b"\xff\xd8")
    with pytest.raises(HomellmError, match=r"photos\.epub: not an EPUB: no OPF"):
        list(iter_documents(tmp_path / "photos.epub"))


# ----------------------------------------------------------------------------- plain text

RU = ("Глава первая\n\nВ начале было Слово, и Слово было у Бога, и Слово было Бог. "
      "Он шёл по дороге и думал о том, что всё в мире связано.\n") * 10


@pytest.mark.parametrize(("encoding", "data"), [
    ("koi8-r", RU.encode("koi8-r")),
    ("cp1251", RU.encode("cp1251")),
    ("utf-16-le", b"\xff\xfe" + RU.encode("utf-16-le")),
    ("utf-16-be", b"\xfe\xff" + RU.encode("utf-16-be")),
    ("utf-8-sig", b"\xef\xbb\xbf" + RU.replace("\n", "\r\n").encode("utf-8")),
])
def test_txt_encodings(tmp_path: Path, encoding: str, data: bytes) -> None:
    doc = _one(_write(tmp_path / "Автор - Книга.txt", data))
    assert doc.text == RU
    assert doc.meta == {"format": "txt", "encoding": encoding.replace("koi8-r", "koi8_r"),
                        "repaired": 0}
    assert doc.title == "Автор - Книга"


def test_mojibake_txt_is_repaired_and_counted(tmp_path: Path) -> None:
    lines = RU.split("\n")
    broken = [ln.encode().decode("cp1251", "replace") if i % 3 == 0 else ln
              for i, ln in enumerate(lines)]
    doc = _one(_write(tmp_path / "moji.txt", "\n".join(broken)))
    assert doc.text == RU
    assert doc.meta["repaired"] == sum(1 for i, ln in enumerate(lines) if i % 3 == 0 and ln)


def test_gz_and_markdown_title(tmp_path: Path) -> None:
    path = tmp_path / "notes.md.gz"
    path.write_bytes(gzip.compress("Вступление\n# Заголовок книги\n\nТекст.\n".encode("cp1251")
                                   * 5))
    doc = _one(path)
    assert doc.title == "Заголовок книги" and doc.meta["format"] == "md"
    assert doc.meta["encoding"] == "cp1251"
    _write(tmp_path / "bad.txt.gz", b"\x1f\x8b\x08\x00 truncated")
    with pytest.raises(HomellmError, match=r"bad\.txt\.gz: "):
        list(iter_documents(tmp_path / "bad.txt.gz"))


def test_empty_and_binary_and_missing_files(tmp_path: Path) -> None:
    assert list(iter_documents(_write(tmp_path / "empty.txt", " \n\n"))) == []
    with pytest.raises(HomellmError, match=r"pic\.txt: cannot tell the text encoding"):
        list(iter_documents(_write(tmp_path / "pic.txt", b"\x89PNG\x00\x00" * 50)))
    with pytest.raises(HomellmError, match=r"nope\.txt: cannot read"):
        list(iter_documents(tmp_path / "nope.txt"))
    with pytest.raises(HomellmError, match=r"unsupported file type '\.docx'"):
        list(iter_documents(tmp_path / "a.docx"))


# ----------------------------------------------------------------------------- tables

def test_jsonl_with_field_and_positions(tmp_path: Path) -> None:
    rows = [{"body": "Первый текст", "title": "Один"}, {"body": ""}, {"body": None},
            {"body": "РџСЂРёРІРµС‚", "author": "Некто"}]
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(("\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
                                    + "\n\n").encode()))
    docs = list(iter_documents(path, text_field="body"))
    assert [d.text for d in docs] == ["Первый текст", "Привет"]
    assert [d.meta["line"] for d in docs] == [1, 4]
    assert docs[0].title == "Один" and docs[1].author == "Некто"
    assert docs[1].meta["repaired"] == 1
    assert [d.id for d in docs] == [doc_id(path, 1), doc_id(path, 4)]
    assert [d.id for d in iter_documents(path, text_field="body")] == [d.id for d in docs]
    assert len({d.id for d in docs}) == 2


@pytest.mark.parametrize(("content", "says"), [
    ('{"text": "ok"}\n{"text": "ok", broken\n', r"bad\.jsonl:2: not JSON"),
    ('{"text": "ok"}\n{"body": "x"}\n', r"bad\.jsonl:2: no field 'text' \(has: body\)"),
    ('{"text": 5}\n', r"bad\.jsonl:1: field 'text' is int"),
])
def test_bad_jsonl(tmp_path: Path, content: str, says: str) -> None:
    with pytest.raises(HomellmError, match=says):
        list(iter_documents(_write(tmp_path / "bad.jsonl", content)))


def test_csv_cp1251_semicolons_and_a_long_cell(tmp_path: Path) -> None:
    long_text = "Очень длинный текст. " * 20_000  # over csv's default 128 KiB field limit
    data = ("id;content;title\n1;Привет, мир;Первый\n2;\"Строка\nс переносом\";\n"
            f"3;{long_text};\n").encode("cp1251")
    docs = list(iter_documents(_write(tmp_path / "t.csv", data), text_field="content"))
    assert [d.text for d in docs] == ["Привет, мир", "Строка\nс переносом", long_text]
    assert docs[0].title == "Первый" and docs[0].meta["encoding"] == "cp1251"
    with pytest.raises(HomellmError, match=r"t\.csv: no column 'text' \(has: id, content"):
        list(iter_documents(tmp_path / "t.csv"))


def test_tsv(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.tsv", "text\tx\nодин, два\t1\n")
    assert _one(path).text == "один, два"


def test_parquet_without_pyarrow_is_one_clear_line(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(HomellmError, match=r"t\.parquet: reading Parquet needs pyarrow"):
        list(iter_documents(_write(tmp_path / "t.parquet", b"PAR1")))


def test_parquet_with_pyarrow(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"text": ["один", None, "два"], "title": ["А", "Б", None]})
    pq.write_table(table, tmp_path / "t.parquet")
    docs = list(iter_documents(tmp_path / "t.parquet"))
    assert [(d.text, d.title, d.meta["row"]) for d in docs] == [("один", "А", 1), ("два", "", 3)]
    with pytest.raises(HomellmError, match="no column 'body'"):
        list(iter_documents(tmp_path / "t.parquet", text_field="body"))
    with pytest.raises(HomellmError, match=r"bad\.parquet: not a readable Parquet"):
        list(iter_documents(_write(tmp_path / "bad.parquet", b"not parquet")))


def test_suffixes() -> None:
    assert file_format(Path("a.TXT.gz")) == (".txt", True)
    assert file_format(Path("a.fb2.zip")) == (".fb2.zip", False)
    assert is_supported(Path("x.jsonl.gz")) and not is_supported(Path("x.epub.gz"))
    assert not is_supported(Path("README"))
