"""Budgets with units: every unit the CLI documents parses to the right number; bad ones say how to fix."""

from __future__ import annotations

import pytest

from fine_deploy.errors import FineDeployError
from fine_deploy.planner.units import (
    format_bytes,
    format_seconds,
    parse_bytes,
    parse_seconds,
    round_up_bytes,
    round_up_seconds,
)


@pytest.mark.parametrize(
    "text, want",
    [
        ("4GB", 4 * 10**9),
        ("3.5GiB", int(3.5 * 2**30)),
        ("512MB", 512 * 10**6),
        ("512MiB", 512 * 2**20),
        ("1.5 kB", 1500),
        ("2KiB", 2048),
        ("1TB", 10**12),
        ("1tib", 2**40),
        ("4gb", 4 * 10**9),
        ("1024B", 1024),
        (1024, 1024),
        ("100B", 100),
        ("1e3MB", 10**9),
    ],
)
def test_bytes_in_all_units(text, want):
    assert parse_bytes(text) == want


@pytest.mark.parametrize(
    "text, want",
    [("20ms", 0.02), ("2s", 2.0), ("150us", 150e-6), ("150µs", 150e-6), ("500ns", 5e-7), ("0.5", 0.5),
     ("1min", 60.0), ("2.5 ms", 0.0025)],
)
def test_seconds_in_all_units(text, want):
    assert parse_seconds(text) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("bad, fragment", [("4XB", "unknown unit"), ("GB", "not a number"), ("-1GB", "not a number"),
                                           ("0MB", "must be positive"), ("", "not a number"),
                                           ("4", "give a unit, e.g. 4GB")])
def test_bad_memory_budget_is_one_clear_line(bad, fragment):
    with pytest.raises(FineDeployError) as e:
        parse_bytes(bad)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert "4GB" in str(e.value) or "GiB" in str(e.value)  # names the fix


@pytest.mark.parametrize("bad", ["20 fortnights", "ms", "0s", "nan"])
def test_bad_latency_budget(bad):
    with pytest.raises(FineDeployError, match="latency budget"):
        parse_seconds(bad)


@pytest.mark.parametrize("n", [1, 999, 1024, 123_456_789, 3 * 2**30 + 1, 7.5 * 2**20])
def test_round_up_bytes_parses_back_to_at_least_n(n):
    text = round_up_bytes(n)
    assert n <= parse_bytes(text) <= n * 1.01 + 1


@pytest.mark.parametrize("s", [1.7e-6, 0.0123456, 2.00001, 109.3e-6])
def test_round_up_seconds_parses_back_to_at_least_s(s):
    text = round_up_seconds(s)
    assert s <= parse_seconds(text) <= s * 1.01


def test_formatting():
    assert format_bytes(3 * 2**30) == "3 GiB"
    assert format_bytes(800) == "800 B"
    assert format_seconds(0.02) == "20 ms"
    assert format_seconds(2.5) == "2.5 s"
