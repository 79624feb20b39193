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
