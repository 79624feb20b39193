import json

import pytest

from core.errors import DataError
from core.records import AppendLog, query_text, read_records, write_jsonl_atomic


def test_reads_jsonl_json_array_and_sharegpt(tmp_path):
    jl = tmp_path / "a.jsonl"
    jl.write_text(
        '{"instruction": "Add 2 and 3.", "input": "", "output": "5"}\n\n'
        '{"id": "x", "instruction": "Hi", "input": "there"}\n'
    )
    recs = list(read_records(jl))
    assert [r["id"] for r in recs] == ["0", "x"]
    assert recs[1]["input"] == "there" and recs[1]["output"] == ""
    assert query_text(recs[1]) == "Hi\nthere" and query_text(recs[0]) == "Add 2 and 3."

    arr = tmp_path / "b.json"
    arr.write_text(
        json.dumps([{"instruction": "One"}, {"instruction": "Two", "output": "2"}], indent=1)
    )
    assert [r["instruction"] for r in read_records(arr)] == ["One", "Two"]

    sg = tmp_path / "c.json"
    sg.write_text(
        json.dumps(
            [
                {
                    "id": "c1",
                    "conversations": [
                        {"from": "system", "value": "be nice"},
                        {"from": "human", "value": "What is 2+2?"},
                        {"from": "gpt", "value": "4"},
                    ],
                },
                {"messages": [{"role": "user", "content": "Name a colour."}]},
            ]
        )
    )
    recs = list(read_records(sg))
    assert recs[0]["instruction"] == "What is 2+2?" and recs[0]["output"] == "4"
    assert recs[1]["instruction"] == "Name a colour." and recs[1]["output"] == ""


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"instruction": "ok"}\n{"instruction": "ok too"}\n{"instruction": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed JSON"):
        list(read_records(p))


def test_json_array_items_name_their_line(tmp_path):
    p = tmp_path / "arr.json"
    p.write_text('[\n {"instruction": "a"},\n {"nope": 1}\n]\n')
    with pytest.raises(DataError, match=r"arr\.json:3: record has no 'instruction'"):
        list(read_records(p))
    p.write_text('[\n {"instruction": "a"},\n {"instruction": \n]\n')
    with pytest.raises(DataError, match=r"arr\.json:\d+: malformed JSON"):
        list(read_records(p))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(read_records(tmp_path / "nope.jsonl"))


def test_append_log_cuts_a_torn_last_line(tmp_path):
    p = tmp_path / "part.jsonl"
    log = AppendLog(p)
    log.append([{"id": "a"}, {"id": "b"}])
    with p.open("ab") as f:  # a process killed inside a write
        f.write(b'{"id": "c", "resu')
    again = AppendLog(p)
    assert [r["id"] for r in again.records] == ["a", "b"]
    assert p.read_bytes().endswith(b'"b"}\n')
    again.append([{"id": "c"}])
    assert [r["id"] for r in AppendLog(p).records] == ["a", "b", "c"]


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path):
    p = tmp_path / "out.jsonl"
    write_jsonl_atomic(p, [{"id": "old"}])

    def boom():
        yield {"id": "new"}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl_atomic(p, boom())
    assert p.read_text() == '{"id": "old"}\n'
    assert [q.name for q in tmp_path.iterdir()] == ["out.jsonl"]


def test_json_array_items_are_named_by_their_line(tmp_path):
    rows = [{"instruction": f"Q{i}", "output": "x" * i} for i in range(200)]
    rows[150] = {"instruction": 7}
    p = tmp_path / "arr.json"
    p.write_text(json.dumps(rows, indent=2))
    # json.dumps(indent=2) puts each item's "{" on line 2 + 4 * index.
    with pytest.raises(DataError, match=rf"arr\.json:{2 + 4 * 150}: 'instruction' must be"):
        list(read_records(p))


@pytest.mark.parametrize("fmt,line", [("jsonl", 3), ("json", 4)])
def test_non_utf8_input_names_the_line(tmp_path, fmt, line):
    good = json.dumps({"instruction": "fine"})
    if fmt == "jsonl":
        blob = (good + "\n").encode() * 2 + b'{"instruction": "caf\xe9"}\n'
    else:
        blob = b"[\n" + (good + ",\n").encode() * 2 + b'{"instruction": "caf\xe9"}\n]\n'
    p = tmp_path / f"latin1.{fmt}"
    p.write_bytes(blob)
    with pytest.raises(DataError, match=rf"latin1\.{fmt}:{line}: not UTF-8"):
        list(read_records(p))


@pytest.mark.parametrize("field,value", [("input", 3), ("output", ["a"]), ("instruction", None)])
def test_fields_must_be_strings(tmp_path, field, value):
    row = {"instruction": "Q", field: value}
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"t\.jsonl:1: '{field}' must be a string"):
        list(read_records(p))


def test_damaged_lines_are_quarantined_and_the_rest_kept(tmp_path):
    from core.cache import _entry

    p = tmp_path / "done.jsonl"
    good = [json.dumps({"id": f"i{k}", "result": k}).encode() + b"\n" for k in range(5)]
    p.write_bytes(
        good[0]
        + b'{"id": "x", "result": "caf\xe9"}\n'  # not UTF-8
        + good[1]
        + b"\x00\x00\x00\n"  # NUL bytes
        + good[2]
        + b'["valid JSON", "wrong shape"]\n'
        + good[3]
        + b'{"id": "y"'  # no end: torn
        + b"\n"
        + good[4]
    )
    log = AppendLog(p, _entry)
    assert [r["id"] for r in log.records] == ["i0", "i1", "i2", "i3", "i4"]
    assert p.read_bytes() == b"".join(good)  # the file now holds only whole, valid lines
    corrupt = (tmp_path / "done.jsonl.corrupt").read_bytes()
    for n in (2, 4, 6, 8):
        assert f"# done.jsonl:{n}\n".encode() in corrupt


def test_a_damaged_cache_recomputes_only_what_was_lost(tmp_path):
    from core.cache import StepCache

    calls = []

    def compute(ids):
        calls.extend(ids)
        return [{"v": i} for i in ids]

    ids = [f"i{k}" for k in range(6)]
    cache = StepCache(tmp_path)
    cache.run("step", {"p": 1}, ids, compute, chunk_size=2)
    (done,) = (tmp_path / "steps" / "step").glob("*/done.jsonl")
    lines = done.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"id": "i2", "res\xff\n'
    done.write_bytes(b"".join(lines))
    calls.clear()
    out = StepCache(tmp_path).run("step", {"p": 1}, ids, compute, chunk_size=2)
    assert calls == ["i2"] and out == {i: {"v": i} for i in ids}
    assert StepCache(tmp_path).run("step", {"p": 1}, ids, compute, chunk_size=2) == out
    assert calls == ["i2"]  # whole again: a cache hit
