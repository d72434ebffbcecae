"""The benchmark machinery measures real transfers and reports them in the agreed shape.

Every test here moves real bytes between a server process and this process over loopback, with
tiny transfers; nothing asserts a timing. What is asserted: the records are well formed (the
``stoq bench --json`` contract), every byte counted was confirmed by the server, the datagram
sizes used are the ones asked for, failures surface as :class:`BenchmarkFailed` with the
server's own error, and the soak keeps a STOQ server answering while it measures its memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from stoq import benchmark
from stoq.benchmark import (
    AIOQUIC_MAX_DATAGRAM,
    IMPLS,
    BenchmarkFailed,
    BenchPki,
    BenchRecord,
    Impl,
    ServerProcess,
    ServerSpec,
    concurrent_streams,
    connection_rate,
    handshake_latency,
    make_bench_pki,
    run_comparison,
    soak,
)
from stoq.config import StoqConfig
from stoq.errors import StoqError

CLI_IMPLS = {"stoq", "aioquic", "qh3", "tcp-tls"}
DEFAULT_ENGINE = next(f.default for f in fields(StoqConfig) if f.name == "engine")


def assert_cli_record(body: dict[str, object]) -> None:
    """The fields ``stoq bench --json`` promises, with their types."""
    assert body["impl"] in CLI_IMPLS
    assert body["datagram"] in (1200, "pmtu")
    assert isinstance(body["mb"], int)
    assert isinstance(body["gbps"], float)
    assert body["gbps"] > 0
    json.loads(json.dumps(body))  # one JSON object per line


def by_key(records: list[BenchRecord]) -> dict[tuple[str, object], BenchRecord]:
    return {(record.impl, record.datagram): record for record in records}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> BenchPki:
    return make_bench_pki(tmp_path_factory.mktemp("bench-pki"))


def test_bench_pki_issues_a_chain_for_each_node(pki: BenchPki) -> None:
    root = x509.load_pem_x509_certificate(Path(pki.root).read_bytes())
    for chain_file in (pki.server_chain, pki.client_chain):
        chain = x509.load_pem_x509_certificates(Path(chain_file).read_bytes())
        assert len(chain) == 2  # leaf, intermediate
        assert chain[1].issuer == root.subject
    server_leaf = x509.load_pem_x509_certificates(Path(pki.server_chain).read_bytes())[0]
    san = server_leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert pki.server_name in san.get_values_for_type(x509.DNSName)
    assert len(pki.crls) == 2


def test_raw_peers_report_every_byte_the_server_confirmed() -> None:
    records = list(run_comparison(mb=1, repeats=2, impls=("aioquic", "tcp-tls")))
    found = by_key(records)
    # TCP+TLS has no datagram size: it is measured once, reported as "pmtu" with a note.
    assert set(found) == {("aioquic", 1200), ("aioquic", "pmtu"), ("tcp-tls", "pmtu")}
    for record in records:
        body = record.to_json()
        assert_cli_record(body)
        assert body["mb"] == 1
        assert body["repeats"] == 2
        assert len(body["samples"]) == 2
        assert all(sample > 0 for sample in body["samples"])
    assert found["aioquic", 1200].largest_datagram == 1200
    pmtu = found["aioquic", "pmtu"]
    assert pmtu.datagram_bytes == AIOQUIC_MAX_DATAGRAM
    assert pmtu.largest_datagram == AIOQUIC_MAX_DATAGRAM
    assert found["tcp-tls", "pmtu"].note == "TCP segments; datagram size not applicable"
    assert found["tcp-tls", "pmtu"].largest_datagram is None


def test_stoq_bulk_records_carry_the_engine() -> None:
    records = list(run_comparison(mb=1, repeats=1, impls=("stoq",), engines=("aioquic",)))
    found = by_key(records)
    assert set(found) == {("stoq", 1200), ("stoq", "pmtu")}
    for record in records:
        body = record.to_json()
        assert_cli_record(body)
        assert body["engine"] == "aioquic"
    assert found["stoq", 1200].largest_datagram == 1200
    pmtu_seen = found["stoq", "pmtu"].largest_datagram
    assert pmtu_seen is not None
    assert 1200 < pmtu_seen <= AIOQUIC_MAX_DATAGRAM


def test_qh3_is_measured_when_installed() -> None:
    pytest.importorskip("qh3")
    records = list(run_comparison(mb=1, repeats=1, impls=("qh3",)))
    found = by_key(records)
    assert_cli_record(found["qh3", 1200].to_json())
    assert found["qh3", 1200].largest_datagram == 1200  # probing off at 1200
    pmtu = found["qh3", "pmtu"]
    assert_cli_record(pmtu.to_json())
    assert pmtu.largest_datagram is not None
    assert pmtu.largest_datagram > 1200  # DPLPMTUD found a larger path MTU on loopback


def test_a_missing_qh3_is_a_skipped_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(benchmark, "_qh3_available", lambda: False)
    records = list(run_comparison(mb=1, repeats=1, impls=("qh3",)))
    assert [(r.impl, r.datagram) for r in records] == [("qh3", 1200), ("qh3", "pmtu")]
    for record in records:
        body = record.to_json()
        assert body["skipped"] == "qh3 not installed"
        assert body["gbps"] is None
        assert body["samples"] == []


@given(sent=st.integers(min_value=0, max_value=1 << 40), received=st.integers(0, 1 << 40))
def test_a_count_other_than_what_was_sent_raises(sent: int, received: int) -> None:
    answer = json.dumps({"received": received}).encode()
    if sent == received:
        assert benchmark._check_count(answer, sent, "test")["received"] == sent
    else:
        with pytest.raises(BenchmarkFailed, match=f"sent {sent} bytes"):
            benchmark._check_count(answer, sent, "test")


@pytest.mark.parametrize("answer", [b"", b"not json", b"[]", b'{"bytes": 5}', b'{"received": "x"}'])
def test_a_malformed_answer_raises(answer: bytes) -> None:
    with pytest.raises(BenchmarkFailed, match="the server answered"):
        benchmark._check_count(answer, 5, "test")


def test_concurrent_streams_split_the_bytes_and_all_arrive() -> None:
    records = list(concurrent_streams(mb=1, repeats=1, counts=(1, 3), impls=("stoq", "aioquic")))
    assert [(r.impl, r.streams) for r in records] == [
        ("stoq", 1),
        ("stoq", 3),
        ("aioquic", 1),
        ("aioquic", 3),
    ]
    for record in records:
        body = record.to_json()
        assert body["figure"] == "streams"
        assert body["gbps"] > 0
        assert len(body["samples"]) == 1


def test_handshake_latency_counts_every_connection() -> None:
    records = list(handshake_latency(count=3, impls=("stoq", "aioquic", "tcp-tls"), warmup=1))
    assert [r.impl for r in records] == ["stoq", "aioquic", "tcp-tls"]
    for record in records:
        assert len(record.samples_ms) == 3
        assert record.median_ms is not None
        assert record.median_ms > 0
        json.dumps(record.to_json())
    assert records[0].pq_channel is True
    assert records[0].engine == DEFAULT_ENGINE  # no engine asked for: StoqConfig's default
    assert records[1].pq_channel is None


def test_connection_rate_makes_connections() -> None:
    records = list(connection_rate(seconds=0.2, impls=("stoq", "aioquic")))
    assert [r.impl for r in records] == ["stoq", "aioquic"]
    for record in records:
        assert record.connections >= 1
        assert record.per_second is not None
        assert record.per_second > 0


@pytest.mark.parametrize(
    ("comparison", "message"),
    [
        (lambda: run_comparison(mb=0), "mb must be positive"),
        (lambda: run_comparison(repeats=0), "repeats must be positive"),
        (
            lambda: run_comparison(impls=("aioquic",), datagrams=(AIOQUIC_MAX_DATAGRAM + 1,)),
            "aioquic 1.7.2",
        ),
        (lambda: run_comparison(impls=("aioquic",), datagrams=(1000,)), "from 1200"),
    ],
)
def test_impossible_comparisons_are_refused(
    comparison: Callable[[], Iterator[BenchRecord]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        next(comparison())


def test_a_server_that_cannot_start_fails_with_its_own_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    spec = ServerSpec(impl="aioquic", cert=missing, key=missing)
    with pytest.raises(BenchmarkFailed, match="exited with") as caught, ServerProcess(spec):
        pass
    assert "missing.pem" in str(caught.value)  # quoted from the server's stderr
    assert isinstance(caught.value, StoqError)


def test_server_process_reports_counters_and_memory(pki: BenchPki) -> None:
    with ServerProcess(ServerSpec(impl="stoq", pki=pki)) as server:
        assert server.port > 0
        assert server.alive()
        assert server.rss_kib() > 0
        stats = server.stats()
        assert stats["connections"] == 0
        assert set(stats) >= {"dropped_datagrams", "refused_connections", "largest_datagram"}
    assert not server.alive()


@given(st.sampled_from(IMPLS), st.integers(1200, 65507))
def test_server_spec_survives_its_command_line(impl: Impl, size: int) -> None:
    pki = BenchPki("k", "p", "r", ("c1", "c2"), "sk", "sc", "ck", "cc", "s.bench.hypermesh")
    spec = ServerSpec(impl=impl, datagram_bytes=size, pki=pki, stoq_datagram="pmtu")
    assert ServerSpec.from_json(spec.to_json()) == spec


@pytest.fixture(scope="module")
def soak_report() -> benchmark.SoakReport:
    # A gentle rate: this proves the machinery, `nox -s bench` runs the real soak.
    return soak(3.0, sample_every=1.0, fuzz_per_second=300.0, oversized_every=0.5)


@pytest.mark.slow
def test_soak_keeps_the_server_answering(soak_report: benchmark.SoakReport) -> None:
    assert soak_report.server_alive
    assert soak_report.round_trips > 1
    assert soak_report.accepting_at_end
    assert soak_report.connect_failures == 0, soak_report.last_connect_error
    assert soak_report.oversized_rejected >= 1


@pytest.mark.slow
def test_soak_sends_every_kind_of_garbage(soak_report: benchmark.SoakReport) -> None:
    assert soak_report.random_datagrams > 0
    assert soak_report.forged_initials > 0
    assert soak_report.mutated_initials > 0
    assert soak_report.server_stats["dropped_datagrams"] > 0


@pytest.mark.slow
def test_soak_reports_the_server_memory(soak_report: benchmark.SoakReport) -> None:
    assert soak_report.rss_start_kib > 0
    assert soak_report.rss_end_kib > 0
    assert soak_report.rss_peak_kib >= max(soak_report.rss_start_kib, soak_report.rss_end_kib)
    assert len(soak_report.rss_samples) >= 2
    body = soak_report.to_json()
    assert body["figure"] == "soak"
    json.dumps(body)
