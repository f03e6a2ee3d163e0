"""Per-key quiet periods, with the clock passed in (pure, testable)."""
from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Debouncer(Generic[K]):
    """A key is due once ``quiet`` seconds passed without a new touch."""

    def __init__(self, quiet: float) -> None:
        self.quiet = quiet
        self._due: dict[K, float] = {}

    def touch(self, key: K, now: float) -> None:
        self._due[key] = now + self.quiet

    def retry(self, key: K, at: float) -> None:
        """Due again at ``at`` unless a touch comes first (and pushes it later)."""
        self._due[key] = max(at, self._due.get(key, at))

    def pop_due(self, now: float) -> list[K]:
        due = [key for key, at in self._due.items() if at <= now]
        for key in due:
            del self._due[key]
        return sorted(due, key=str)

    def due(self, key: K) -> float | None:
        return self._due.get(key)

    def items(self) -> list[tuple[K, float]]:
        """Every key waiting, with when it is due."""
        return list(self._due.items())

    def next_due(self) -> float | None:
        return min(self._due.values(), default=None)

    def __len__(self) -> int:
        return len(self._due)
