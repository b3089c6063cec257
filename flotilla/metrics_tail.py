"""`flotilla metrics SERVICE [--follow] [--grep PATTERN]`: one service's metrics, like tail -f.

The first frame prints every sample's current value. With --follow, each later frame prints,
for counters, the rate per second since the previous frame and, for gauges, the current value.
Plain text (no colour codes), so it pipes into grep and files. An unreachable service is one
line on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class Unreachable(Exception):
    """The metrics endpoint did not answer with Prometheus text."""


@dataclass(frozen=True)
class Sample:
    """One exposed sample: its family's type and value."""

    kind: str  # counter, gauge, info, histogram, summary, untyped
    value: float


def scrape(url: str, timeout_s: float = 2.0) -> dict[SampleKey, Sample]:
    """Every sample at url, keyed by name and sorted labels (`*_created` timestamps left out)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            text = resp.read().decode()
        families = list(text_string_to_metric_families(text))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Unreachable(str(getattr(exc, "reason", exc))) from exc
    samples = {}
    for family in families:
        for s in family.samples:
            if not s.name.endswith("_created"):
                key = (s.name, tuple(sorted(s.labels.items())))
                samples[key] = Sample(family.type, s.value)
    return samples


def label_text(key: SampleKey) -> str:
    """name{a="b",...} as Prometheus prints it."""
    name, labels = key
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def first_frame(samples: dict[SampleKey, Sample], pattern: re.Pattern[str] | None) -> list[str]:
    """Current value of every (matching) sample."""
    return [
        f"{label_text(key)} {_number(sample.value)}"
        for key, sample in sorted(samples.items())
        if pattern is None or pattern.search(label_text(key))
    ]


def follow_frame(
    before: dict[SampleKey, Sample],
    after: dict[SampleKey, Sample],
    seconds: float,
    pattern: re.Pattern[str] | None,
) -> list[str]:
    """Counters as a rate per second over the interval; everything else as its value."""
    lines = []
    for key, sample in sorted(after.items()):
        text = label_text(key)
        if pattern is not None and not pattern.search(text):
            continue
        if sample.kind == "counter" and key in before and seconds > 0:
            rate = (sample.value - before[key].value) / seconds
            lines.append(f"{text} {_number(rate)}/s")
        else:
            lines.append(f"{text} {_number(sample.value)}")
    return lines


def _number(value: float) -> str:
    """Integers without a decimal point, other values with up to 6 significant digits."""
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else f"{value:.6g}"


def frames(
    url: str, follow: bool, interval_s: float, count: int, pattern: re.Pattern[str] | None
) -> Iterator[list[str]]:
    """The frames to print: one, or (following) one per interval, `count` in all (0: forever)."""
    previous = scrape(url)
    previous_at = time.monotonic()
    yield first_frame(previous, pattern)
    shown = 1
    while follow and (count == 0 or shown < count):
        time.sleep(interval_s)
        current, now = scrape(url), time.monotonic()
        yield follow_frame(previous, current, now - previous_at, pattern)
        previous, previous_at = current, now
        shown += 1


def run_metrics(
    service: str,
    url: str,
    follow: bool,
    grep: str | None,
    interval_s: float,
    count: int,
    out: TextIO | None = None,
) -> int:
    """Print the frames; one clear line and exit 1 when the service cannot be reached."""
    out = out or sys.stdout
    try:
        pattern = re.compile(grep) if grep else None
    except re.error as exc:
        print(f"flotilla metrics: bad --grep pattern {grep!r}: {exc}", file=sys.stderr)
        return 2
    try:
        for number, lines in enumerate(frames(url, follow, interval_s, count, pattern)):
            if follow:
                print(
                    f"--- {service} {time.strftime('%H:%M:%S')} ({'values' if number == 0 else 'rates'})",
                    file=out,
                )
            print("\n".join(lines), file=out, flush=True)
    except Unreachable as exc:
        print(f"flotilla metrics: cannot reach {service} at {url}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
