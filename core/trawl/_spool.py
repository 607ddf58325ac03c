"""The disk spool: batches a sink could not take yet, kept in order across restarts.

A spool is a directory of append-only segment files (``000000000001.seg``, ...). Each
record is one batch::

    b"TRWL" | payload length (u32, big endian) | CRC-32 of the payload (u32) | payload

and the payload is one JSON line ``{"db": ..., "rp": ..., "n": <points>}`` followed by the
batch as line protocol. A record goes to disk with a single ``write`` on a file opened for
appending, followed by ``fsync`` (once per call of `Spool.append`), so a crash (SIGKILL,
or of the machine) can only leave the record being written torn: reading
stops at the first record whose length or checksum does not hold, logs it, and a new run
never appends after it (it starts a new segment).

Delivery progress lives in the file ``ack`` (``<segment> <offset>`` of the oldest record
not yet delivered, replaced atomically after each delivered batch); segments wholly
delivered are deleted. A crash between a
delivery and its acknowledgement delivers that batch twice, which InfluxDB absorbs (same
series and timestamp: the point is overwritten with the same value).

``max_bytes`` caps the records waiting; going past it drops the oldest records, counted and
logged (records being delivered at that moment are kept; should trawl crash before that
delivery is acknowledged, records dropped behind them may come back after the restart:
the cap never loses more than it counts). A lock file keeps two trawl processes off one spool.

The class is synchronous and not thread-safe: the sink runner calls it from one worker
thread at a time.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ._batch import Batch
from ._errors import TrawlError

log = logging.getLogger("trawl.spool")

MAGIC = b"TRWL"
HEADER = struct.Struct(">4sII")
SUFFIX = ".seg"
ACK_FILE = "ack"
LOCK_FILE = "lock"


class SpoolError(TrawlError):
    """The spool directory cannot be used (permissions, in use by another process)."""


@dataclass(slots=True)
class Record:
    """Where one spooled batch lies, and what it holds."""

    segment: int
    offset: int
    size: int
    points: int
    db: str
    rp: str

    @property
    def end(self) -> int:
        return self.offset + self.size


def encode(batch: Batch) -> bytes:
    """One record: header, then the JSON head line and the line protocol."""
    head = json.dumps({"db": batch.db, "rp": batch.rp, "n": len(batch)},
                      separators=(",", ":"))
    payload = (head + "\n" + batch.line_protocol()).encode()
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode(payload: bytes) -> Batch:
    head, _, body = payload.decode().partition("\n")
    meta = json.loads(head)
    return Batch(str(meta["db"]), str(meta["rp"]), lines=body.splitlines())


class Spool:
    """An on-disk FIFO of batches; see the module docstring.

    Args:
      directory: Created when the first batch is spooled (and not before).
      max_bytes: Cap on the bytes of records waiting; 0 disables the spool.
      segment_bytes: A segment is closed once it holds this much; by default an eighth
        of ``max_bytes``, between 64 KiB and 16 MiB.
    """

    def __init__(self, directory: str | Path, max_bytes: int,
                 segment_bytes: int | None = None) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or min(max(max_bytes // 8, 64 * 1024), 16 << 20)
        self.records: deque[Record] = deque()
        self.inflight: list[Record] = []
        self.bytes = 0
        self.points = 0
        self.dropped_points = 0
        self._last_drop_log = -math.inf
        self._next_segment = 1
        self._write_segment = 0
        self._write_fd = -1
        self._write_offset = 0
        self._lock_fd = -1

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self.records) + len(self.inflight)

    # ------------------------------------------------------------------ opening
    def open(self) -> None:
        """Index what a previous run left (if the directory exists)."""
        if not self.enabled or not self.directory.is_dir():
            return
        self._lock()
        segments = sorted(int(p.stem) for p in self.directory.glob("*" + SUFFIX)
                          if p.stem.isdigit())
        ack_seg, ack_off = self._read_ack()
        for seg in segments:
            if seg < ack_seg:
                self._unlink(seg)
                continue
            self._scan(seg, ack_off if seg == ack_seg else 0)
        if segments:
            self._next_segment = segments[-1] + 1
        for seg in segments:
            if seg >= ack_seg and not any(r.segment == seg for r in self.records):
                self._unlink(seg)
        if self.records:
            log.info("spool %s: %d batches (%d points, %d bytes) left by a previous run",
                     self.directory, len(self.records), self.points, self.bytes)

    def _lock(self) -> None:
        if self._lock_fd >= 0:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SpoolError(f"spool {self.directory}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolError(f"spool {self.directory} is in use by another process") from None
        self._lock_fd = fd

    def _read_ack(self) -> tuple[int, int]:
        try:
            seg, off = (self.directory / ACK_FILE).read_text().split()
            return int(seg), int(off)
        except (OSError, ValueError):
            return 0, 0

    def _scan(self, seg: int, start: int) -> None:
        path = self._path(seg)
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.error("spool: cannot read %s: %s", path, exc.strerror)
            return
        offset = start
        while offset < len(data):
            if len(data) - offset < HEADER.size:
                break
            magic, length, crc = HEADER.unpack_from(data, offset)
            payload = data[offset + HEADER.size: offset + HEADER.size + length]
            if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
                break
            try:
                head = json.loads(payload.split(b"\n", 1)[0])
                points, db, rp = int(head["n"]), str(head["db"]), str(head["rp"])
            except (ValueError, KeyError, TypeError):
                break
            size = HEADER.size + length
            self.records.append(Record(seg, offset, size, points, db, rp))
            self.bytes += size
            self.points += points
            offset += size
        if offset < len(data):
            log.error("spool: %s: %d bytes from offset %d are torn or corrupt (a crash while "
                      "writing?): skipped", path, len(data) - offset, offset)

    # ------------------------------------------------------------------ writing
    def append(self, batches: list[Batch]) -> None:
        """Write batches at the tail; drop the oldest records past ``max_bytes``.

        Raises:
          SpoolError: the directory cannot be written.
        """
        for batch in batches:
            if not batch:
                continue
            data = encode(batch)
            if len(data) > self.max_bytes:
                self.dropped_points += len(batch)
                log.error("spool %s: a batch of %d bytes exceeds spool-max-size (%d): "
                          "dropped %d points", self.directory, len(data), self.max_bytes,
                          len(batch))
                continue
            self._make_room(len(data))
            fd = self._writable(len(data))
            try:
                written = os.write(fd, data)
            except OSError as exc:
                raise SpoolError(f"spool {self.directory}: cannot write: "
                                 f"{exc.strerror or exc}") from None
            if written != len(data):
                raise SpoolError(f"spool {self.directory}: short write ({written} of "
                                 f"{len(data)} bytes)")
            self.records.append(Record(self._write_segment, self._write_offset, len(data),
                                       len(batch), batch.db, batch.rp))
            self._write_offset += len(data)
            self.bytes += len(data)
            self.points += len(batch)
        if self._write_fd >= 0:
            try:
                os.fsync(self._write_fd)
            except OSError as exc:
                raise SpoolError(f"spool {self.directory}: cannot sync: "
                                 f"{exc.strerror or exc}") from None

    def _make_room(self, size: int) -> None:
        dropped = 0
        while self.records and self.bytes + size > self.max_bytes:
            rec = self.records.popleft()
            self._forget(rec)
            dropped += rec.points
        if dropped:
            self.dropped_points += dropped
            self._save_ack()
            now = time.monotonic()
            if now - self._last_drop_log < 10.0:
                return
            self._last_drop_log = now
            log.error("spool %s: spool-max-size (%d bytes) reached: dropped the oldest %d "
                      "points (%d so far; logged at most every 10 s)", self.directory,
                      self.max_bytes, dropped, self.dropped_points)

    def _writable(self, size: int) -> int:
        if self._write_fd >= 0 and self._write_offset + size > self.segment_bytes \
                and self._write_offset > 0:
            os.close(self._write_fd)
            self._write_fd = -1
        if self._write_fd < 0:
            self._lock()
            seg = self._next_segment
            self._next_segment += 1
            try:
                self._write_fd = os.open(self._path(seg),
                                         os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as exc:
                raise SpoolError(f"spool {self.directory}: {exc.strerror or exc}") from None
            self._write_segment = seg
            self._write_offset = 0
            self._sync_directory()
        return self._write_fd

    # ------------------------------------------------------------------ reading
    def peek(self, max_points: int) -> tuple[Batch, list[Record]] | None:
        """The oldest records of one db/rp, merged up to ``max_points`` (at least one).

        They stay *in flight* (still counted, never dropped by the size cap) until `ack`.
        """
        if not self.inflight:
            if not self.records:
                return None
            first = self.records[0]
            total = 0
            while self.records:
                rec = self.records[0]
                if (rec.db, rec.rp) != (first.db, first.rp):
                    break
                if self.inflight and total + rec.points > max_points:
                    break
                self.inflight.append(self.records.popleft())
                total += rec.points
        taken = list(self.inflight)
        batch = Batch(taken[0].db, taken[0].rp)
        for rec in taken:
            try:
                with open(self._path(rec.segment), "rb") as f:
                    f.seek(rec.offset + HEADER.size)
                    batch.lines.extend(decode(f.read(rec.size - HEADER.size)).lines)
            except (OSError, ValueError) as exc:
                raise SpoolError(f"spool {self.directory}: cannot read segment "
                                 f"{rec.segment}: {exc}") from None
        return batch, taken

    def discard(self) -> None:
        """Give up on every record (the spool cannot be read): counted as dropped."""
        lost = self.points
        self.records.clear()
        self.inflight.clear()
        self.bytes = self.points = 0
        if lost:
            self.dropped_points += lost
            log.error("spool %s: dropped %d unreadable points", self.directory, lost)

    def ack(self, taken: list[Record]) -> None:
        """Mark the records from `peek` delivered."""
        if not taken or taken != self.inflight:
            return
        self.inflight = []
        for rec in taken:
            self._forget(rec)
        self._save_ack()

    def _forget(self, rec: Record) -> None:
        self.bytes -= rec.size
        self.points -= rec.points
        if rec.segment == self._write_segment or any(
                r.segment == rec.segment for r in self.inflight):
            return
        if self.records and self.records[0].segment == rec.segment:
            return
        self._unlink(rec.segment)

    def _save_ack(self) -> None:
        if not self.records and not self.inflight:
            # Everything is delivered: start afresh with no files at all.
            if self._write_fd >= 0:
                os.close(self._write_fd)
                self._write_fd = -1
                self._unlink(self._write_segment)
                self._write_segment = 0
            self._remove(ACK_FILE)
            return
        head = self.inflight[0] if self.inflight else self.records[0]
        seg, off = head.segment, head.offset
        tmp = self.directory / (ACK_FILE + ".tmp")
        tmp.write_text(f"{seg} {off}\n")
        os.replace(tmp, self.directory / ACK_FILE)

    # ------------------------------------------------------------------ helpers
    def _sync_directory(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass

    def _path(self, seg: int) -> Path:
        return self.directory / f"{seg:012d}{SUFFIX}"

    def _unlink(self, seg: int) -> None:
        self._remove(self._path(seg).name)

    def _remove(self, name: str) -> None:
        try:
            os.unlink(self.directory / name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("spool: cannot remove %s: %s", self.directory / name, exc.strerror)

    def disk_bytes(self) -> int:
        """Bytes the segment files take on disk now."""
        return sum(p.stat().st_size for p in self.directory.glob("*" + SUFFIX)) \
            if self.directory.is_dir() else 0

    def close(self) -> None:
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
