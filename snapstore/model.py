"""Moments (snapshots or checkpoints) of one domain and the rules their tree obeys.

One implementation serves both kinds: ordering, validation and "current".
Validation is all-or-nothing and collects every problem, as libvirt's own
bulk parser (virDomainSnapshotObjListParse, 2019) refuses a whole list.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Iterable, Iterator

from snapstore import codes, kinds


@dataclasses.dataclass(eq=False)
class Moment:
    """One snapshot or checkpoint: its XML as bytes (libvirt's public format,
    no ``<active>``, indented as libvirt writes it) and the few fields the
    tree needs, read once.

    Bytes, not an lxml tree: a parsed snapshot takes about fifteen times its
    size in memory, and a commit writes the bytes as they are.
    ``formats.mapping.element`` parses them again for the few jobs that need
    the tree: the model knows no XML.
    """

    name: str
    parent: str | None
    creation_time: int | None
    body: bytes = dataclasses.field(repr=False)  # SECURE XML: may hold passwords
    state: str | None = None
    uuids: tuple[str, ...] = ()  # embedded domain uuids, lower case
    source: str = ""  # where it was read from, for messages

    @functools.cached_property
    def digest(self) -> str:
        """A short hash of the bytes: tells a changed moment from an unchanged one."""
        import hashlib  # only commits that keep history need it

        return hashlib.sha256(self.body).hexdigest()[:16]


class Tree:
    """All moments of one kind of one domain, and which one is current."""

    def __init__(self, kind: kinds.Kind, domain: str, moments: Iterable[Moment],
                 current: str | None = None) -> None:
        self.kind = kind
        self.domain = domain
        self.moments = list(moments)
        self.by_name = {m.name: m for m in self.moments}
        self.current = current if kind.stores_current else self._computed_current()

    def __len__(self) -> int:
        return len(self.moments)

    def children(self) -> dict[str | None, list[Moment]]:
        """Children of every name, roots under None, siblings in canonical order."""
        result: dict[str | None, list[Moment]] = {}
        for moment in self.moments:
            parent = moment.parent if moment.parent in self.by_name else None
            result.setdefault(parent, []).append(moment)
        for siblings in result.values():
            siblings.sort(key=_sibling_key)
        return result

    def topological(self) -> list[Moment]:
        """Parents before children, siblings by creationTime then name.

        Moments caught in a cycle are never reached; validate() reports them.
        A tree is not changed once built, so the order is computed once.
        """
        return list(self._order)

    @functools.cached_property
    def _order(self) -> list[Moment]:
        """The walk, or the order of a tree of the same shape walked before:
        the daemon builds a domain's tree anew at every change, and most
        changes (a description, the current snapshot) keep names, parents
        and creation times as they were."""
        shape = tuple((m.name, m.parent, m.creation_time) for m in self.moments)
        with _ORDERS_LOCK:  # the daemon's threads build trees too
            known = _ORDERS.get(shape)
        if known is None:
            position = {id(m): index for index, m in enumerate(self.moments)}
            known = tuple(position[id(m)] for m in self._walk())
            with _ORDERS_LOCK:
                if len(_ORDERS) >= _ORDERS_KEPT:
                    del _ORDERS[next(iter(_ORDERS))]  # the oldest
                _ORDERS[shape] = known
        return [self.moments[index] for index in known]

    def _walk(self) -> list[Moment]:
        children = self.children()
        order: list[Moment] = []
        seen: set[int] = set()  # a duplicated name may be its own child: visit each moment once
        stack = list(reversed(children.get(None, [])))
        while stack:
            moment = stack.pop()
            if id(moment) in seen:
                continue
            seen.add(id(moment))
            order.append(moment)
            stack.extend(reversed(children.get(moment.name, [])))
        return order

    def uuid(self) -> str | None:
        """The domain uuid embedded in the moments (the first found)."""
        return next((uuid for moment in self.moments for uuid in moment.uuids), None)

    def validate(self, expected_uuid: str | None = None) -> list[codes.Problem]:
        """Every broken rule (computed once per expected uuid: a tree is not changed once built)."""
        memo = self._validated
        if expected_uuid not in memo:
            memo[expected_uuid] = self._problems(expected_uuid)
        return list(memo[expected_uuid])

    @functools.cached_property
    def _validated(self) -> dict[str | None, list[codes.Problem]]:
        return {}

    def _problems(self, expected_uuid: str | None) -> list[codes.Problem]:
        return [
            *self._name_problems(),
            *self._parent_problems(),
            *self._cycle_problems(),
            *self._current_problems(),
            *self._uuid_problems(expected_uuid),
        ]

    def _name_problems(self) -> Iterator[codes.Problem]:
        seen: set[str] = set()
        for moment in self.moments:
            if not moment.name:
                yield codes.Problem(codes.EMPTY_NAME, f"{self.kind.name} in {moment.source or '?'} has no name")
            elif moment.name in seen:
                yield codes.Problem(codes.DUPLICATE, f"{self.kind.name} {moment.name!r} is defined more than once",
                                    moment.name)
            elif self.kind.name_pattern and not self.kind.name_pattern.fullmatch(moment.name):
                yield codes.Problem(codes.NAME_PATTERN, f"{self.kind.name} name {moment.name!r} is outside "
                                    f"libvirt's pattern {self.kind.name_pattern.pattern}", moment.name)
            seen.add(moment.name)

    def _parent_problems(self) -> Iterator[codes.Problem]:
        for moment in self.moments:
            if moment.parent is not None and moment.parent not in self.by_name:
                yield codes.Problem(codes.MISSING_PARENT, f"{self.kind.name} {moment.name!r}: parent "
                                    f"{moment.parent!r} does not exist", moment.name)

    def _cycle_problems(self) -> Iterator[codes.Problem]:
        if len(self.by_name) != len(self.moments):
            return  # duplicates make the walk ambiguous; reported already
        reached = {m.name for m in self.topological()}
        for moment in self.moments:
            if moment.name not in reached:
                yield codes.Problem(codes.CYCLE, f"{self.kind.name} {moment.name!r} is its own ancestor "
                                    "(parent cycle)", moment.name)

    def _current_problems(self) -> Iterator[codes.Problem]:
        if self.current is not None and self.current not in self.by_name:
            yield codes.Problem(codes.CURRENT_MISSING, f"current {self.kind.name} {self.current!r} does not exist",
                                self.current)

    def _uuid_problems(self, expected: str | None) -> Iterator[codes.Problem]:
        for moment in self.moments:
            for uuid in moment.uuids:
                expected = expected or uuid
                if uuid != expected:
                    yield codes.Problem(codes.UUID_MISMATCH, f"{self.kind.name} {moment.name!r}: domain uuid "
                                        f"{uuid} differs from {expected}", moment.name)

    def _computed_current(self) -> str | None:
        """libvirt's rule for checkpoints: the single leaf of one linear chain."""
        children = self.children()
        if len(children.get(None, [])) != 1 or any(len(c) > 1 for c in children.values()):
            return None
        leaves = [m for m in self.moments if m.name not in children]
        return leaves[0].name if len(leaves) == 1 else None


# Shape (name, parent, creation time of each moment, in list order) -> the
# walk's order as indices; a few shapes, the oldest dropped first.
_ORDERS: dict[tuple[tuple[str, str | None, int | None], ...], tuple[int, ...]] = {}
_ORDERS_KEPT = 16
_ORDERS_LOCK = threading.Lock()


def _sibling_key(moment: Moment) -> tuple[bool, int, str]:
    return (moment.creation_time is None, moment.creation_time or 0, moment.name)
