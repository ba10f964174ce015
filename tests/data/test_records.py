"""Reading every supported file type, with the location of every record."""

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medpt.data.records import FileSource, resolve_files
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
