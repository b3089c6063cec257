"""Recording reader: `<recv_ns> <json>` lines, garbage counted and skipped, files merged."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from services.market_data.replay import LineCounter, RecordingError, merged, read_lines


def write(path: Path, lines: list[bytes], compress: bool = False) -> Path:
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_garbage_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path / "rec.txt",
        [
            b'100 {"stream":"a@trade"}',
            b"not-a-timestamp {}",
            b"12345",  # no payload at all
            b"200 ",  # empty payload
            b"",  # blank line
            b"-5 {}",  # a negative receive time is not a recorder timestamp
            b'300 {"stream":"b@trade"}',
        ],
    )
    counter = LineCounter()

    good = list(read_lines(path, counter))

    assert [ts for ts, _ in good] == [100, 300]
    assert good[0][1].strip() == b'{"stream":"a@trade"}'
    assert (counter.lines, counter.bad_lines) == (7, 5)


def test_files_are_merged_by_receive_time(tmp_path: Path) -> None:
    btc = write(tmp_path / "btc.gz", [b"1 {}", b"4 {}", b"6 {}"], compress=True)
    eth = write(tmp_path / "eth.txt", [b"2 {}", b"3 {}", b"5 {}", b"7 {}"])
    counter = LineCounter()

    order = [ts for ts, _ in merged([btc, eth], counter)]

    assert order == [1, 2, 3, 4, 5, 6, 7]
    assert (counter.lines, counter.bad_lines) == (7, 0)


def test_merge_keeps_going_past_garbage_in_one_file(tmp_path: Path) -> None:
    a = write(tmp_path / "a.txt", [b"1 {}", b"garbage", b"3 {}"])
    b = write(tmp_path / "b.txt", [b"2 {}"])
    counter = LineCounter()

    order = [ts for ts, _ in merged([a, b], counter)]

    assert order == [1, 2, 3]
    assert counter.bad_lines == 1


def test_a_missing_recording_is_an_error_before_anything_is_replayed(tmp_path: Path) -> None:
    present = write(tmp_path / "a.txt", [b"1 {}"])

    with pytest.raises(RecordingError, match=r"nope\.gz"):
        merged([present, tmp_path / "nope.gz"], LineCounter())


def test_a_directory_is_not_a_recording(tmp_path: Path) -> None:
    with pytest.raises(RecordingError):
        merged([tmp_path], LineCounter())
