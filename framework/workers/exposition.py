"""One /metrics for an instance of N worker processes, from the /metrics of each worker.

Counts add up over workers: the instance handled as many calls as its workers together, so
counters, histograms (a bucket's ``le`` is a label, so buckets add up too) and summaries are
summed per sample name and labels. Their ``*_created`` samples are creation times: the instance's
is the earliest. A gauge is a state of one process (its memory, its start time, ...), and a sum
of those is meaningless: gauges, info, statesets and untyped samples are kept per worker, with a
``worker="<i>"`` label (unless they have a ``worker`` label already), and so are a summary's
quantiles, which do not add up either.

The expositions are parsed with prometheus_client's text parser and the result written with
its generate_latest, so the output is the classic text format (0.0.4) prometheus_client writes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

# The parser names a counter's family without its "_total" (its samples keep it), as
# generate_latest expects; "_created" samples come as a gauge family of their own,
# "<family>_created", which generate_latest writes back as it came.
ADDITIVE = frozenset({"counter", "histogram", "summary"})

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


def merge(expositions: Sequence[str]) -> str:
    """One Prometheus text exposition (format 0.0.4) from those of the workers, worker i's at
    index i."""
    parsed = [_parse(worker, text) for worker, text in enumerate(expositions)]
    additive = {family.name for fams in parsed for family in fams if family.type in ADDITIVE}
    merged: dict[str, Metric] = {}  # by family name, in order of first appearance
    series: dict[str, dict[SeriesKey, Sample]] = {}
    for worker, families in enumerate(parsed):
        for family in families:
            first = merged.setdefault(family.name, family)
            if first.type != family.type:
                raise ValueError(
                    f"worker {worker}: {family.name} is a {family.type}, elsewhere a {first.type}"
                )
            combine = _combine(family, additive)
            samples = series.setdefault(family.name, {})
            for sample in family.samples:
                labels = sample.labels
                if combine is None or (family.type == "summary" and "quantile" in labels):
                    if "worker" not in labels:
                        labels = {**labels, "worker": str(worker)}
                    samples.setdefault(_key(sample.name, labels), sample._replace(labels=labels))
                    continue
                key = _key(sample.name, labels)
                if key in samples:
                    sample = sample._replace(value=combine(samples[key].value, sample.value))
                samples[key] = sample._replace(timestamp=None)
    for name, metric in merged.items():
        metric.samples = list(series[name].values())
    return generate_latest(_Collected(merged.values())).decode()


def _parse(worker: int, text: str) -> list[Metric]:
    try:
        return list(text_string_to_metric_families(text))
    except ValueError as error:
        raise ValueError(f"worker {worker}: its metrics do not parse: {error}") from error


def _combine(family: Metric, additive: set[str]) -> Callable[[float, float], float] | None:
    """How a family's samples of the same name and labels combine over workers; None: they
    do not, each worker's are kept."""
    if family.type in ADDITIVE:
        return operator.add
    created = family.type == "gauge" and family.name.endswith("_created")
    if created and family.name.removesuffix("_created") in additive:
        return min
    return None


def _key(name: str, labels: dict[str, str]) -> SeriesKey:
    return name, tuple(sorted(labels.items()))


class _Collected:
    """What generate_latest needs of a registry."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self._metrics = list(metrics)

    def collect(self) -> Iterable[Metric]:
        return self._metrics
