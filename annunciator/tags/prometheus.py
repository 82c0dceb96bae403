"""Prometheus exposition of the tags (``GET /metrics``).

Naming: ``annunciator_`` + the tag path in snake case (``System/Gateway/Alarms/ActiveUnacked`` ->
``annunciator_system_gateway_alarms_active_unacked``), each a gauge: a tag is a current value, and
a scraper can ``rate()`` a gauge that only goes up as well as a counter.

* Int4, Int8, Float8: the value; Boolean: 1 or 0; DateTime: Unix seconds.
* String: ``<name>_info{value="..."} 1`` (Prometheus' convention for text).
* Dataset: one series per numeric column, ``<name>_<column>``, labelled with the row's
  key columns: text columns and columns whose name ends in ``Id`` (``UserId``, ``Username``,
  ``PhoneNumber``). So ``UserStatistics`` becomes ``..._user_statistics_messages_sent{UserId="0",
  Username="maria", PhoneNumber="+1..."} 3``.
* A tag whose quality is not Good is left out (a stale value must not look current), as is a tag
  with no value. Every tag's quality is exported as ``annunciator_tag_quality_good{path="..."}``.

Beside the tags, the node's place in a cluster, in the names a standby exports too
(core.standby.metrics_text), so one dashboard covers every node: ``annunciator_cluster_active``
(1 on the active node), ``annunciator_cluster_epoch`` and the counter
``annunciator_cluster_failovers_total``, each labelled ``node``. A single node (no cluster) is
always active, with epoch 0 and no failovers, labelled with the gateway's name.

Rendering uses prometheus_client's own registry and encoder, so the output is the format its
parser (and Prometheus) read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from annunciator.core.tag_provider import GOOD, TagProvider, TagValue
from annunciator.core.tag_types import Dataset

if TYPE_CHECKING:
    from annunciator.core.cluster import Term

PREFIX = "annunciator_"
CONTENT_TYPE = CONTENT_TYPE_LATEST


def metric_name(*parts: str) -> str:
    """``System/Gateway/MessagesSent`` -> ``system_gateway_messages_sent``."""
    out = []
    for part in parts:
        for seg in part.split("/"):
            seg = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", seg)
            seg = re.sub(r"[^a-zA-Z0-9]+", "_", seg).strip("_").lower()
            if seg:
                out.append(seg)
    return PREFIX + "_".join(out)


def label_name(column: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9_]", "_", column)
    return "_" + name if name[:1].isdigit() else name


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    return None


def _is_key(column: str, values: list[Any]) -> bool:
    return column.endswith("Id") or any(isinstance(v, str) for v in values)


class TagCollector:
    """A prometheus_client collector over a TagProvider, read at every scrape."""

    def __init__(self, tags: TagProvider, extra: Iterable[Metric] = ()):
        self.tags = tags
        self.extra = list(extra)  # families of the gateway itself (the cluster's); tags never shadow them

    def collect(self) -> Iterator[Metric]:
        seen: set[str] = set()
        for family in self.extra:
            seen.update((family.name, family.name + "_total"))  # a counter's samples end in _total
            yield family
        quality = GaugeMetricFamily(PREFIX + "tag_quality_good", "1 when a tag's quality is Good", labels=["path"])
        for tag in self.tags.browse():
            quality.add_metric([tag.path], 1.0 if tag.quality == GOOD else 0.0)
            if tag.quality != GOOD or tag.value is None:
                continue
            for family in self._families(tag):
                # two paths can map to one name (a/b_c and a/bC): keep the first, never emit twice
                if family.name not in seen:
                    seen.add(family.name)
                    yield family
        yield quality

    def _families(self, tag: TagValue) -> Iterator[Metric]:
        name = metric_name(tag.path)
        doc = tag.doc or f"tag {tag.path} ({tag.data_type})"
        if isinstance(tag.value, Dataset):
            yield from self._dataset(name, doc, tag.value)
        elif tag.data_type == "String":
            info = GaugeMetricFamily(name + "_info", doc, labels=["value"])
            info.add_metric([str(tag.value)], 1.0)
            yield info
        else:
            number = _number(tag.value)
            if number is not None:
                yield GaugeMetricFamily(name, doc, value=number)

    def _dataset(self, name: str, doc: str, ds: Dataset) -> Iterator[Metric]:
        columns = list(zip(*ds.rows, strict=True)) if ds.rows else [() for _ in ds.columns]
        keys = [i for i, c in enumerate(ds.columns) if _is_key(c, list(columns[i]))]
        labels = [label_name(ds.columns[i]) for i in keys]
        for i, column in enumerate(ds.columns):
            if i in keys:
                continue
            family = GaugeMetricFamily(metric_name(name[len(PREFIX):], column), f"{doc}, column {column}",
                                       labels=labels)
            for row in ds.rows:
                number = _number(row[i])
                if number is not None:
                    family.add_metric(["" if row[k] is None else str(row[k]) for k in keys], number)
            yield family


def cluster_families(term: Term | None, gateway_name: str) -> list[Metric]:
    """This node's role in the cluster (``term``: its term as the active node; None: a single node)."""
    if term is None:
        node, active, epoch, failovers = gateway_name, 1.0, 0.0, 0.0
    else:
        lease = term.lease
        node, active = lease.name, 1.0 if term.valid() else 0.0
        epoch, failovers = float(term.epoch), float(lease.failovers)
    families: list[Metric] = []
    for family, value in (
            (GaugeMetricFamily(PREFIX + "cluster_active", "1 on the active node of the cluster",
                               labels=["node"]), active),
            (GaugeMetricFamily(PREFIX + "cluster_epoch", "the lease epoch of this node's term as the active node",
                               labels=["node"]), epoch),
            # named with _total already, so the text reads as the standby's does
            (CounterMetricFamily(PREFIX + "cluster_failovers_total", "terms this node took over from another node",
                                 labels=["node"]), failovers)):
        family.add_metric([node], value)
        families.append(family)
    return families


def render(tags: TagProvider, extra: Iterable[Metric] = ()) -> bytes:
    """The exposition text for every tag, after ``extra`` families (cluster_families)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TagCollector(tags, extra))
    return generate_latest(registry)
