"""Modules loaded on first use, so every command starts fast.

A command line imports its whole command table to build the parser; with
lxml, libvirt and the check machinery behind it, that cost ~0.2 s before any
work. importlib's documented LazyLoader recipe defers each heavy module
until an attribute of it is first used.
"""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def module(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module named {name!r}")
    spec.loader = importlib.util.LazyLoader(spec.loader)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    spec.loader.exec_module(loaded)
    return loaded
