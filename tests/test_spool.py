"""The disk spool: record format, torn tails, acknowledgements across restarts, the size cap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from trawl import Batch, Series
from trawl._spool import HEADER, Spool, SpoolError


def batch(i: int, n: int = 3, db: str = "db", rp: str = "rp") -> Batch:
    s = Series("m", {"i": str(i)})
    return Batch(db, rp, [(s, float(j), 1000 + j) for j in range(n)])


def lines(b: Batch) -> list[str]:
    return list(b.iter_lines())


def drain(spool: Spool, max_points: int = 10_000) -> list[Batch]:
    out = []
    while (got := spool.peek(max_points)) is not None:
        out.append(got[0])
        spool.ack(got[1])
    return out


def test_nothing_is_created_until_something_is_spooled(tmp_path):
    spool = Spool(tmp_path / "s", 1 << 20)
    spool.open()
    assert not (tmp_path / "s").exists()
    assert spool.peek(10) is None
    spool.append([batch(1)])
    assert (tmp_path / "s").is_dir()
    assert spool.points == 3


def test_records_come_back_in_order_merged_per_db_rp(tmp_path):
    spool = Spool(tmp_path, 1 << 20)
    spool.append([batch(1), batch(2), batch(3, db="other"), batch(4)])
    first, taken = spool.peek(6)
    assert (first.db, first.rp) == ("db", "rp")
    assert first.lines == lines(batch(1)) + lines(batch(2))
    spool.ack(taken)
    second, taken = spool.peek(100)
    assert second.db == "other"
    spool.ack(taken)
    third, taken = spool.peek(1)   # at least one record, even past max_points
    assert third.lines == lines(batch(4))
    spool.ack(taken)
    assert len(spool) == 0
    assert spool.bytes == 0
    assert spool.points == 0
    assert list(tmp_path.glob("*.seg")) == []
    assert not (tmp_path / "ack").exists()


def test_a_new_run_delivers_what_the_last_one_did_not_acknowledge(tmp_path):
    spool = Spool(tmp_path, 1 << 20, segment_bytes=400)
    spool.append([batch(i) for i in range(10)])
    _got, taken = spool.peek(6)
    spool.ack(taken)                       # batches 0 and 1 delivered
    spool.peek(3)                          # batch 2 read but not acknowledged
    spool.close()
    assert len(list(tmp_path.glob("*.seg"))) > 1

    again = Spool(tmp_path, 1 << 20, segment_bytes=400)
    again.open()
    assert [b.lines for b in drain(again, 3)] == [lines(batch(i)) for i in range(2, 10)]
    again.append([batch(99)])
    assert drain(again)[0].lines == lines(batch(99))
    again.close()


def test_a_torn_record_loses_only_itself(tmp_path):
    spool = Spool(tmp_path, 1 << 20)
    spool.append([batch(1), batch(2)])
    spool.close()
    seg = next(tmp_path.glob("*.seg"))
    whole = seg.read_bytes()
    # A crash in the middle of writing the third record.
    third = Spool(tmp_path / "x", 1 << 20)
    third.append([batch(3)])
    torn = next((tmp_path / "x").glob("*.seg")).read_bytes()[: HEADER.size + 10]
    seg.write_bytes(whole + torn)

    again = Spool(tmp_path, 1 << 20)
    again.open()
    assert [b.lines for b in drain(again)] == [lines(batch(1)) + lines(batch(2))]
    # New records go to a new segment, never after the torn one.
    again.append([batch(4)])
    assert drain(again)[0].lines == lines(batch(4))


def test_a_corrupt_record_is_detected_by_its_checksum(tmp_path):
    spool = Spool(tmp_path, 1 << 20)
    spool.append([batch(1), batch(2)])
    spool.close()
    seg = next(tmp_path.glob("*.seg"))
    data = bytearray(seg.read_bytes())
    data[-5] ^= 0xFF                      # flip a byte in the second record's payload
    seg.write_bytes(bytes(data))
    again = Spool(tmp_path, 1 << 20)
    again.open()
    assert [b.lines for b in drain(again)] == [lines(batch(1))]


def test_the_size_cap_drops_the_oldest_and_counts_it(tmp_path):
    probe = Spool(tmp_path / "probe", 1 << 20)
    probe.append([batch(0)])
    size = probe.bytes
    spool = Spool(tmp_path / "s", size * 3, segment_bytes=size * 2)
    spool.append([batch(i) for i in range(5)])
    assert spool.dropped_points == 6               # batches 0 and 1
    assert spool.bytes <= size * 3
    assert [b.lines for b in drain(spool, 3)] == [lines(batch(i)) for i in (2, 3, 4)]
    # Dropping survives a restart: the acknowledgement moved past the dropped records.
    spool.append([batch(i) for i in range(5, 10)])
    spool.close()
    again = Spool(tmp_path / "s", size * 3, segment_bytes=size * 2)
    again.open()
    assert [b.lines for b in drain(again, 3)] == [lines(batch(i)) for i in (7, 8, 9)]


def test_a_batch_larger_than_the_cap_is_dropped_alone(tmp_path):
    spool = Spool(tmp_path, 200)
    spool.append([batch(1, n=50), batch(2, n=1)])
    assert spool.dropped_points == 50
    assert drain(spool)[0].lines == lines(batch(2, n=1))


def test_two_processes_cannot_share_a_spool(tmp_path):
    first = Spool(tmp_path, 1 << 20)
    first.append([batch(1)])
    second = Spool(tmp_path, 1 << 20)
    with pytest.raises(SpoolError, match="in use"):
        second.open()
    first.close()
    second.open()
    assert second.points == 3


def test_an_unwritable_directory_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        spool = Spool(blocker / "spool", 1 << 20)
    else:
        tmp_path.chmod(0o500)
        spool = Spool(Path(tmp_path) / "spool", 1 << 20)
    with pytest.raises(SpoolError, match="spool"):
        spool.append([batch(1)])
