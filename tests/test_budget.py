"""A memory budget turned into the daemon's settings (thyme/kinesis/budget.py) and how `run` applies
them. Whether a host really stays within it is measured in benchmarks/catchup.py (README)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import SourcedClick
from thyme.errors import ConfigError
from thyme.kinesis import budget, entry
from thyme.kinesis.launcher import RunOptions, plan

GIB = 1024 * budget.MIB


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2GiB", 2 * GIB), ("1536MiB", 1536 * budget.MIB), ("512k", 512 * 1024), ("4096", 4096), ("1.5G", 3 * GIB // 2)],
)
def test_sizes_read_as_a_container_limit_is_written(text: str, expected: int) -> None:
    assert budget.parse_size(text, "--memory-budget") == expected


@pytest.mark.parametrize("text", ["", "two gigs", "0MiB", "-1GiB", "2TB"])
def test_a_size_it_cannot_read_names_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match="--memory-budget: expected a size such as 2GiB"):
        budget.parse_size(text, "--memory-budget")


def test_the_plan_stays_within_the_budget_and_grows_with_it() -> None:
    previous = 0
    for gib in (2, 3, 4, 8):
        planned = budget.plan(gib * GIB, 64, 1024)
        assert planned.expected_peak_mib() <= gib * 1024
        assert planned.max_records > previous  # more memory, larger batches
        assert planned.prefetch_batches == 1 and planned.prefetch_bytes == planned.batch_bytes
        assert planned.java_opts() == [f"-Xmx{planned.heap_mib}m", f"-XX:MaxMetaspaceSize={budget.METASPACE_MIB}m"]
        previous = planned.max_records
    assert budget.plan(64 * GIB, 8, 1024).max_records == budget.MAX_BATCH_RECORDS  # Kinesis' own limit


def test_larger_records_mean_fewer_of_them_and_a_batch_never_exceeds_what_getrecords_returns() -> None:
    small, large = budget.plan(4 * GIB, 32, 512), budget.plan(4 * GIB, 32, 4096)
    assert large.max_records < small.max_records
    huge = budget.plan(16 * GIB, 8, 1024 * 1024)  # 1 MiB records: 10 MiB a call at most
    assert huge.batch_bytes == budget.GETRECORDS_MAX_BYTES


def test_a_budget_too_small_for_the_shards_says_the_smallest_that_works() -> None:
    with pytest.raises(ConfigError) as info:
        budget.plan(1 * GIB, 64, 1024)
    message = str(info.value)
    assert message.startswith("--memory-budget: too small for 64 shards of 1024 B records")
    assert "(got '1024MiB')" in message
    smallest = message.split("Raise --memory-budget to at least ")[1].split(",", maxsplit=1)[0]
    assert budget.plan(budget.parse_size(smallest, "x"), 64, 1024).max_records >= budget.MIN_BATCH_RECORDS


def test_run_applies_the_plan_to_the_properties_and_the_jvm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("THYME_KCL_CLASSPATH", str(tmp_path))
    (tmp_path / "amazon-kinesis-client-multilang-3.1.3.jar").write_bytes(b"")
    monkeypatch.setattr(entry, "ensure", lambda classpath, java=None: tmp_path / "entry")
    monkeypatch.setenv("THYME_JAVA_OPTS", "-Xss512k")
    store = f"sqlite:///{tmp_path / 't.db'}"
    with caplog.at_level("INFO", logger="thyme.kinesis"):
        found = plan(SourcedClick, RunOptions(store_url=store, memory_budget=3 * GIB, max_shards=32))
    assert found.memory == budget.plan(3 * GIB, 32, budget.DEFAULT_RECORD_SIZE)
    rendered = found.properties.render()
    assert f"maxRecords = {found.memory.max_records}\n" in rendered
    assert "maxLeasesForWorker = 32\n" in rendered
    assert "thyme.prefetchBatches = 1\n" in rendered
    assert f"thyme.prefetchBytes = {found.memory.prefetch_bytes}\n" in rendered
    command = found.command(Path("/p"))
    heap = command.index(f"-Xmx{found.memory.heap_mib}m")
    assert heap < command.index("-Xss512k")  # the user's own options come after, and win
    assert any(r.message.startswith("memory budget 3072 MiB for up to 32 shards: batches of ") for r in caplog.records)
    # a smaller --max-records stays; the budget only ever lowers it
    capped = plan(SourcedClick, RunOptions(store_url=store, memory_budget=3 * GIB, max_shards=32, max_records=50))
    assert capped.properties.max_records == 50


def test_run_refuses_a_budget_it_cannot_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THYME_KCL_CLASSPATH", str(tmp_path))
    store = f"sqlite:///{tmp_path / 't.db'}"
    with pytest.raises(ConfigError, match="--memory-budget: needs --max-shards") as info:
        plan(SourcedClick, RunOptions(store_url=store, memory_budget=2 * GIB))
    assert "ceil(S/(R-1))" in str(info.value)
    with pytest.raises(ConfigError, match="--memory-budget: plans polling's batches"):
        plan(SourcedClick, RunOptions(store_url=store, memory_budget=2 * GIB, max_shards=4, retrieval="fan-out"))


def test_without_the_entry_point_the_budget_cannot_bound_the_prefetch_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("THYME_KCL_CLASSPATH", str(tmp_path))
    (tmp_path / "amazon-kinesis-client-multilang-3.1.3.jar").write_bytes(b"")
    monkeypatch.setattr(entry, "ensure", lambda classpath, java=None: None)
    found = plan(SourcedClick, RunOptions(store_url=f"sqlite:///{tmp_path / 't.db'}", memory_budget=GIB, max_shards=4))
    rendered = found.properties.render()
    assert "thyme.prefetch" not in rendered
    assert f"maxRecords = {budget.plan(GIB, 4).max_records}\n" in rendered  # the batch still follows the budget
    assert found.memory is None
    assert not [opt for opt in found.command(tmp_path / "p.properties") if opt.startswith("-Xmx")]
    assert [r.message for r in caplog.records if "stock daemon keeps KCL's prefetch" in r.message]


def test_a_postgresql_store_is_planned_with_its_larger_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite, postgresql = budget.plan(2 * GIB, 64, 512, "sqlite"), budget.plan(2 * GIB, 64, 512, "postgresql")
    assert postgresql.max_records < sqlite.max_records  # each child holds its driver: less room for batches
    assert postgresql.child_mib() > sqlite.child_mib()
    assert "into postgresql" in postgresql.describe()
    monkeypatch.setenv("THYME_KCL_CLASSPATH", str(tmp_path))
    (tmp_path / "amazon-kinesis-client-multilang-3.1.3.jar").write_bytes(b"")
    options = RunOptions(store_url="postgresql://u@db/t", memory_budget=2 * GIB, max_shards=64, record_size=512)
    assert plan(SourcedClick, options, open_the_store=False).memory == postgresql
