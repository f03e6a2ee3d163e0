"""Prometheus metrics as node_exporter's textfile collector reads them.

The text exposition format (0.0.4): each family a ``# HELP`` and a ``# TYPE``
line, then its samples, label values escaped (backslash, double quote,
newline). A file is replaced whole (temp in the same folder, rename:
fsio.atomic_write), so the collector never reads half of one.
"""
from __future__ import annotations

import typing
from pathlib import Path

from snapstore import fsio

Labels = tuple[tuple[str, str], ...]


class Family(typing.NamedTuple):
    name: str
    type: str  # "gauge" or "counter" (a counter's name ends in _total)
    help: str
    samples: list[tuple[Labels, float]]


def render(families: list[Family]) -> bytes:
    lines: list[str] = []
    for family in families:
        lines += [f"# HELP {family.name} {_escape(family.help, quote=False)}", f"# TYPE {family.name} {family.type}"]
        lines += [f"{family.name}{_labels(labels)} {_number(value)}" for labels, value in family.samples]
    # A name that is not UTF-8 (a surrogate escape) cannot be a label value: '?' stands for its bytes.
    return "".join(f"{line}\n" for line in lines).encode("utf-8", "replace")


def write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` at ``mode`` (settings.metrics_mode).

    No fsync: the data is derived and rewritten at the next change or run;
    a crash leaves the old file, the new one, or at worst an empty one,
    which the collector reads as no metrics, never as wrong ones.
    """
    fsio.atomic_write(path, data, mode=mode, durable=False)


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value, quote=True)}"' for name, value in labels) + "}"


def _escape(text: str, quote: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
