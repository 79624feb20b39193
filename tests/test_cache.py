import json

import pytest

from core.cache import StepCache


class Counter:
    def __init__(self, fail_after: int | None = None):
        self.calls, self.items, self.fail_after = 0, 0, fail_after

    def __call__(self, ids):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        self.items += len(ids)
        return [{"value": f"out-{i}"} for i in ids]


def test_second_run_computes_nothing(tmp_path):
    ids = [f"i{k}" for k in range(10)]
    first, second = Counter(), Counter()
    a = StepCache(tmp_path).run("gen", {"model": "m"}, ids, first, chunk_size=3)
    b = StepCache(tmp_path).run("gen", {"model": "m"}, ids, second, chunk_size=3)
    assert a == b and first.items == 10 and second.items == 0


def test_other_payload_or_ids_miss(tmp_path):
    ids = ["a", "b"]
    c = Counter()
    StepCache(tmp_path).run("gen", {"model": "m"}, ids, c, chunk_size=8)
    StepCache(tmp_path).run("gen", {"model": "other"}, ids, c, chunk_size=8)
    StepCache(tmp_path).run("gen", {"model": "m"}, ["a", "b", "c"], c, chunk_size=8)
    StepCache(tmp_path).run("judge", {"model": "m"}, ids, c, chunk_size=8)
    assert c.items == 2 + 2 + 3 + 2


def test_interrupted_run_resumes_from_last_chunk(tmp_path):
    ids = [f"i{k}" for k in range(10)]
    dying = Counter(fail_after=2)  # two chunks of 3 land, the third dies
    with pytest.raises(KeyboardInterrupt):
        StepCache(tmp_path).run("gen", {"m": 1}, ids, dying, chunk_size=3)
    partial = list(tmp_path.glob("steps/gen/*/partial.jsonl"))
    assert len(partial) == 1
    lines = partial[0].read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ids[:6]
    cache = StepCache(tmp_path)
    rest = Counter()
    out = cache.run("gen", {"m": 1}, ids, rest, chunk_size=3)
    assert rest.items == 4 and list(out) == ids
    assert cache.reports[-1].status == "resumed" and cache.reports[-1].cached == 6
    assert not partial[0].exists() and partial[0].with_name("done.jsonl").exists()


def test_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not unique"):
        StepCache(tmp_path).run("gen", {}, ["a", "a"], Counter(), chunk_size=2)
