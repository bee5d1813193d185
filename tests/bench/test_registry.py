"""Committed benchmark results name their code, and say so when that code moved on."""

from __future__ import annotations

import json

from bench.registry import BENCHMARKS, RESULTS, main, staleness

#: Files in bench/results that are parts of a result, not results of their own.
_PARTS = ("_report.json", "_counters.json")


def test_every_committed_result_has_its_benchmark() -> None:
    names = {b.name for b in BENCHMARKS}
    results = [p.stem for p in RESULTS.glob("*.json") if not p.name.endswith(_PARTS)]
    assert results and set(results) <= names, sorted(set(results) - names)


def test_no_result_of_make_bench_is_stale() -> None:
    # A result that names its commit must be newer than every change to what it measures;
    # `make bench` reruns these (results from before commits were recorded are in STALE.md).
    stale = {b.name: why for b in BENCHMARKS if b.kind == "bench"
             and (why := staleness(b)) and "before results recorded" not in why}
    assert not stale, stale


def test_results_record_commit_and_command_when_they_have_one() -> None:
    for path in RESULTS.glob("*.json"):
        record = json.loads(path.read_text())
        if "git_commit" in record:
            assert len(record["git_commit"]) == 40 and "command" in record, path.name
            assert isinstance(record["git_dirty"], bool), path.name


def test_stale_md_is_current() -> None:
    assert main(["--check"]) == 0, "run python -m bench.registry"
