#!/usr/bin/env python3
"""Summarise HdrHistogram interval logs with an implementation other than
millrace's: the Python `hdrhistogram` package (import name `hdrh`), a port
of the Java reference. tests/load.rs checks that it reads what `millrace
load --hlog` wrote as millrace's own report does.

Usage: hlog_summary.py FILE.hlog...
Prints JSON: for each tag, the intervals, total count, and the 50th, 99th
and 99.9th percentiles and maximum in milliseconds, over every file.
"""
import json
import math
import sys

from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader

# millrace load's histograms: 1 ns to an hour, 3 significant digits.
LOWEST, HIGHEST, DIGITS = 1, 3_600_000_000_000, 3


def value_at(histogram, quantile):
    """The value at `quantile` by the rank rule of millrace's (Rust)
    HdrHistogram: the ceil(q * N)-th recorded value, as the highest value
    equivalent to it. The Java reference, and this package, round q * N to
    the nearest instead, which can name the next recorded value; reading
    both histograms with one rule compares their contents, not the rules."""
    total = histogram.get_total_count()
    # quantile * total as millrace computes it: 99.9 / 100 is not 0.999 in
    # floating point, and the difference can move the rank by one.
    rank = max(1, math.ceil(quantile * total))
    seen = 0
    for index in range(histogram.counts_len):
        seen += histogram.get_count_at_index(index)
        if seen >= rank:
            return histogram.get_highest_equivalent_value(histogram.get_value_from_index(index))
    return 0


def main(paths):
    totals = {}
    intervals = {}
    for path in paths:
        reader = HistogramLogReader(path, HdrHistogram(LOWEST, HIGHEST, DIGITS))
        while True:
            histogram = reader.get_next_interval_histogram()
            if histogram is None:
                break
            tag = histogram.get_tag() or ""
            if tag not in totals:
                totals[tag] = HdrHistogram(LOWEST, HIGHEST, DIGITS)
                intervals[tag] = 0
            totals[tag].add(histogram)
            intervals[tag] += 1
        reader.close()
    summary = {}
    for tag, histogram in totals.items():
        summary[tag] = {
            "intervals": intervals[tag],
            "count": histogram.get_total_count(),
            "p50_ms": value_at(histogram, 0.5) / 1e6,
            "p99_ms": value_at(histogram, 0.99) / 1e6,
            "p99.9_ms": value_at(histogram, 0.999) / 1e6,
            "max_ms": histogram.get_max_value() / 1e6,
        }
    json.dump(summary, sys.stdout, indent=2, sort_keys=True)
    print()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
