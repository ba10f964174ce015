"""Reading every supported file type, with the location of every record."""

import csv
import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medpt.data import records
from medpt.data.paths import resolve_files
from medpt.data.records import FileSource
from medpt.errors import BadRecordError, MedptError


def _read(path: Path, **kw):
    return [(r.line, r.value) for r in FileSource(path, **kw).records()]


def test_jsonl_with_bom_crlf_and_trailing_blank_lines(tmp_path: Path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n{"text": "b"}\r\n\r\n\n')
    assert _read(p) == [(1, {"text": "a"}), (2, {"text": "b"})]


def test_bad_json_line_is_yielded_with_its_line(tmp_path: Path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "a"}\n{"text": \n{"text": "c"}\n')
    items = list(FileSource(p).records())
    assert isinstance(items[1], BadRecordError) and str(items[1]).startswith(f"{p}:2: invalid JSON")
    assert items[2].line == 3


def test_json_array_and_json_lines_in_a_json_file(tmp_path: Path):
    a = tmp_path / "a.json"
    a.write_text('[\n  {"text": "x"},\n  {"text": "y"}\n]\n')
    assert _read(a) == [(2, {"text": "x"}), (3, {"text": "y"})]
    b = tmp_path / "b.json"
    b.write_text('{"text": "x"}\n{"text": "y"}\n')
    assert _read(b) == [(1, {"text": "x"}), (2, {"text": "y"})]
    c = tmp_path / "c.json"
    c.write_text('[{"text": "x"},\n {"text": }]')
    with pytest.raises(BadRecordError, match=r"c\.json:2: invalid JSON"):
        _read(c)


def test_csv_and_parquet_rows(tmp_path: Path):
    c = tmp_path / "a.csv"
    c.write_text('instruction,input,output\n"多行\n问题",,答\nq2,i2,a2\n', encoding="utf-8")
    assert _read(c) == [
        (2, {"instruction": "多行\n问题", "input": "", "output": "答"}),
        (4, {"instruction": "q2", "input": "i2", "output": "a2"}),
    ]
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["x", "y"]}), p)
    assert [(r.line, r.value, r.unit) for r in FileSource(p).records()] == [
        (1, {"text": "x"}, "row"),
        (2, {"text": "y"}, "row"),
    ]


@pytest.mark.parametrize(
    "split, expected",
    [
        ("paragraph", [(1, "第一段\n第二行"), (4, "第二段")]),
        ("line", [(1, "第一段"), (2, "第二行"), (4, "第二段")]),
        ("file", [(1, "第一段\n第二行\n\n第二段")]),
    ],
)
def test_txt_split_modes(tmp_path: Path, split, expected):
    p = tmp_path / "a.txt"
    p.write_bytes("第一段\r\n第二行\r\n\r\n第二段\r\n\r\n".encode())
    assert [(line, v["text"]) for line, v in _read(p, txt_split=split)] == expected


def test_gzip_and_other_encodings(tmp_path: Path):
    g = tmp_path / "a.jsonl.gz"
    with gzip.open(g, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "压缩"}, ensure_ascii=False) + "\n")
    assert _read(g) == [(1, {"text": "压缩"})]
    gb = tmp_path / "gb.jsonl"
    gb.write_bytes('{"text": "胃痛"}\n'.encode("gb18030"))
    assert _read(gb, encoding="gb18030") == [(1, {"text": "胃痛"})]


def test_non_utf8_file_names_line_and_suggests_encoding(tmp_path: Path):
    gb = tmp_path / "gb.jsonl"
    gb.write_bytes(b'{"text": "ok"}\n' + '{"text": "高血压"}\n'.encode("gb18030"))
    with pytest.raises(MedptError, match=r"gb\.jsonl:2: not valid utf-8 .* pass it with --encoding"):
        _read(gb)


def test_jsonl_slices_read_like_the_whole_file(tmp_path: Path):
    p = tmp_path / "big.jsonl"
    p.write_text("".join(json.dumps({"text": f"文档{i}" * (i % 7 + 1)}, ensure_ascii=False) + "\n" for i in range(500)))
    whole = _read(p)
    pieces = FileSource(p).chunks(1000)
    assert len(pieces) > 5
    assert [x for piece in pieces for x in [(r.line, r.value) for r in piece.records()]] == whole


def test_resolve_files_folders_globs_and_errors(tmp_path: Path, capsys):
    for name in ("train-0.jsonl", "train-1.jsonl.gz", "test.jsonl", "notes.md", ".hidden/x.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert [p.name for p in resolve_files([str(tmp_path / "train-*")], "f")] == ["train-0.jsonl", "train-1.jsonl.gz"]
    folder = resolve_files([str(tmp_path)], "train_file_dir")
    assert [p.name for p in folder] == ["test.jsonl", "train-0.jsonl", "train-1.jsonl.gz"]
    assert "holds files of several splits" in capsys.readouterr().out
    with pytest.raises(MedptError, match="--f .*missing: no such file or folder"):
        resolve_files([str(tmp_path / "missing")], "f")
    with pytest.raises(MedptError, match="unsupported file type"):
        resolve_files([str(tmp_path / "notes.md")], "f")
    with pytest.raises(MedptError, match="matches no"):
        resolve_files([str(tmp_path / "*.xml")], "f")


DEEP_ARRAY = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a": ' * 100_000 + "1" + "}" * 100_000
JUST_TOO_DEEP = "[" * 101 + "]" * 101  # json.loads reads it; later steps must not get it


def test_deeply_nested_jsonl_lines_are_skippable_bad_records(tmp_path: Path):
    p = tmp_path / "deep.jsonl"
    at_limit = '{"text": "x", "meta": ' + "[" * 99 + "]" * 99 + "}"  # 100 levels: the most that is read
    p.write_text("\n".join(['{"text": "a"}', DEEP_ARRAY, DEEP_OBJECT, JUST_TOO_DEEP, at_limit, '{"text": "b"}']) + "\n")
    items = list(FileSource(p).records())
    assert [type(i).__name__ for i in items] == ["Record"] + ["BadRecordError"] * 3 + ["Record"] * 2
    reason = "nested deeper than 100 levels of arrays/objects (the most medpt reads); flatten the record or remove it"
    for item, line, raw in zip(items[1:4], (2, 3, 4), (DEEP_ARRAY, DEEP_OBJECT, JUST_TOO_DEEP)):
        assert str(item) == f"{p}:{line}: {reason}"
        # What --on_bad_record skip writes to rejected.jsonl: the raw line, which json.dumps cannot overflow on.
        assert json.loads(json.dumps(item.to_json(), ensure_ascii=False))["record"] == raw
    assert (items[4].line, items[5].value) == (5, {"text": "b"})


def test_deeply_nested_records_in_a_json_file(tmp_path: Path):
    p = tmp_path / "a.json"
    p.write_text('[{"text": "a"},\n' + JUST_TOO_DEEP + ',\n{"text": "b"}]\n')
    items = list(FileSource(p).records())
    assert isinstance(items[1], BadRecordError) and str(items[1]).startswith(f"{p}:2: nested deeper than 100 levels")
    assert items[1].to_json()["record"] == JUST_TOO_DEEP and (items[2].line, items[2].value) == (3, {"text": "b"})
    # Deeper than the parser can go: fatal, as the next record's position is unknown; the line is still named.
    q = tmp_path / "b.json"
    q.write_text('[{"text": "a"},\n{"text": "b"},\n' + DEEP_ARRAY + "]\n")
    with pytest.raises(BadRecordError, match=r"b\.json:3: nested deeper than 100 levels"):
        _read(q)


@pytest.fixture
def _restore_csv_limit():
    limit = csv.field_size_limit()
    yield
    csv.field_size_limit(limit)


def test_csv_cells_beyond_the_csv_module_default_are_read(tmp_path: Path, _restore_csv_limit):
    p = tmp_path / "a.csv"
    long_text = "长" * 200_000  # the csv module's default limit is 131,072
    p.write_text(f'text,source\n"{long_text}",guide\nshort,x\n', encoding="utf-8")
    assert _read(p) == [(2, {"text": long_text, "source": "guide"}), (3, {"text": "short", "source": "x"})]
    assert csv.field_size_limit() == records.CSV_FIELD_LIMIT == 64 << 20


def test_csv_cell_over_the_limit_names_its_row(tmp_path: Path, monkeypatch, _restore_csv_limit):
    monkeypatch.setattr(records, "CSV_FIELD_LIMIT", 1000)  # stands in for 64 MiB
    p = tmp_path / "a.csv"
    p.write_text('text,source\nok,x\n"multi\nline",y\n' + "z" * 2000 + ",w\n")
    with pytest.raises(BadRecordError) as e:
        _read(p)
    assert str(e.value).startswith(
        f"{p}:5: the row starting here has a cell longer than 1,000 characters (the most medpt reads from one CSV "
        "cell); split the text over several rows or convert the file to .jsonl"
    )


@pytest.mark.parametrize(
    "text, line, field, last",
    [
        ('instruction,input,output\nq1,i1,a1\nq2,"i2 never closed,a2\nq3,i3,a3\n', 3, "input", 4),
        ('a,b\n"x\ny","opens on the row\'s second line\nmore\n', 3, "b", 4),
        ('a,b\r\nx,y\r\nz,"w\r\n', 3, "b", 3),
        ('a,b\nx,"say ""hi"" and never close', 2, "b", 2),
        ('"a,b\nx,y\n', 1, None, 2),  # the header itself
    ],
)
def test_csv_unclosed_quote_names_the_line_where_it_opens(tmp_path: Path, text, line, field, last):
    p = tmp_path / "a.csv"
    p.write_bytes(text.encode())
    with pytest.raises(BadRecordError) as e:
        _read(p)
    where = f"{p}:{line}: " + (f"field {field!r}: " if field else "")
    assert str(e.value) == (
        f"{where}a quoted CSV field opens here and is never closed, so lines {line}-{last} would be read as one "
        'cell; add the closing quote (a quote inside a quoted field is written "")'
    )


@pytest.mark.parametrize(
    "text",
    [
        'a,b\nx,"ends in a line end\n"\n',
        'a,b\nx,"\r\n"\r\n',  # a closed cell holding just the file's last line end
        'a,b\nx,"no final newline"',
        'a,b\nx,""',
        'a,b\nx,"say ""hi"""\n',
        'a,b\n5" screen,ok\n',  # a quote inside an unquoted cell is a character
        'a,b\nx,"a"b\n',  # a character after a closing quote continues the cell
        "a,b\nx,y,extra,more\nonly\n,\n\n",  # extra cells, a missing cell, an empty row, a blank line
        'a,a\n"1","2"\n',  # a repeated header name
    ],
)
def test_closed_csv_quotes_read_as_dictreader_does(tmp_path: Path, text):
    p = tmp_path / "a.csv"
    p.write_bytes(text.encode())
    rows = [r for r in csv.DictReader(io.StringIO(text, newline="")) if any(v not in (None, "") for v in r.values())]
    assert [v for _, v in _read(p)] == rows


def test_csv_row_after_a_blank_line_has_its_own_line(tmp_path: Path):
    p = tmp_path / "a.csv"
    p.write_text("a,b\nx,y\n\nz,w\n")
    assert _read(p) == [(2, {"a": "x", "b": "y"}), (4, {"a": "z", "b": "w"})]  # DictReader's skip made it line 3
