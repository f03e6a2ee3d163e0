"""Names on disk: reversible escaping of domain names, and which moment names
can be libvirt file names.

libvirt stores a moment as ``<name>.xml`` without escaping, which is why qemu
refuses names with ``/`` or a leading ``.`` (qemuSnapshotCreateXML).
snapstore's own files escape every byte outside ``[A-Za-z0-9_+-.]`` and a
leading ``.`` as ``%XX``, so any domain name maps to exactly one safe name.

A name whose escaped form is longer than STEM_MAX bytes (a libvirt folder
name may be 255 bytes of UTF-8, and each non-ASCII byte escapes to three) is
stored under a bounded stem instead: the first escaped bytes, ``~`` (never
part of an escaped name) and 32 hex digits of the name's SHA-256.  That stem
is not reversible by itself; the store file's ``domain`` attribute holds the
name, and Store.domains reads it from there.
"""
from __future__ import annotations

import os
import re
import time

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+-.")
_ESCAPE = re.compile(r"%([0-9A-F]{2})")
NAME_MAX = 255  # bytes in one path component on Linux filesystems
# Room for the longest name snapstore builds around a stem: the attic's
# "checkpoints.<stem>.<stamp>-<random><suffix>" is 36 bytes plus the suffix.
STEM_MAX = 180
SUFFIX_MAX = 39
_DIGEST_CHARS = 32
_BOUNDED = re.compile(r"[A-Za-z0-9_+\-.%]*~[0-9a-f]{" + str(_DIGEST_CHARS) + "}")


def escape_domain(domain: str) -> str:
    raw = domain.encode("utf-8", "surrogateescape")
    out = []
    for index, byte in enumerate(raw):
        if byte in _SAFE and not (index == 0 and byte == ord(".")):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def unescape_domain(escaped: str) -> str:
    raw = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), escaped).encode("latin-1")
    return raw.decode("utf-8", "surrogateescape")


def is_escaped_form(name: str) -> bool:
    """True when ``name`` is what escape_domain() produces for some domain."""
    try:
        return escape_domain(unescape_domain(name)) == name
    except (UnicodeEncodeError, UnicodeDecodeError):
        return False


def domain_stem(domain: str) -> str:
    """The part of snapstore's file names that stands for ``domain``."""
    return _bounded(escape_domain(domain), STEM_MAX)


def is_bounded_stem(name: str) -> bool:
    """True when ``name`` may be domain_stem() of a name too long to escape
    in full; only the store file's ``domain`` attribute tells which."""
    return _BOUNDED.fullmatch(name) is not None


def _bounded(escaped: str, limit: int) -> str:
    if len(escaped) <= limit:
        return escaped
    import hashlib  # here: every command imports this module, few need a digest

    digest = hashlib.sha256(unescape_domain(escaped).encode("utf-8", "surrogateescape")).hexdigest()
    prefix = escaped[:limit - 1 - _DIGEST_CHARS]
    # Do not end the readable part in the middle of a %XX escape.
    cut = prefix.rfind("%", len(prefix) - 2)
    return (prefix[:cut] if cut >= 0 else prefix) + "~" + digest[:_DIGEST_CHARS]


def attic_name(plural: str, domain: str, suffix: str) -> str:
    """A unique name in attic/ for something of ``domain`` set aside now."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if len(suffix.encode("utf-8", "surrogateescape")) > SUFFIX_MAX:
        suffix = "." + _bounded(escape_domain(suffix.lstrip(".")), SUFFIX_MAX - 1)
    return f"{plural}.{domain_stem(domain)}.{stamp}-{os.urandom(3).hex()}{suffix}"


def xml_problem(name: str) -> str | None:
    """Why ``name`` cannot be an XML attribute value (control characters,
    undecodable bytes), or None: libvirt itself could not have written it."""
    for char in name:
        code = ord(char)
        if (code < 0x20 and char not in "\t\n\r") or 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF):
            return f"name holds the character {char!r}, which XML cannot carry"
    return None


def domain_problem(domain: str) -> str | None:
    """Why ``domain`` cannot be a libvirt domain's folder name, or None.

    libvirt names a domain's snapshot folder after the domain, unescaped;
    unlike a snapshot name, a domain name may start with '.' (libvirt
    accepts ".dot"), so only what no folder or no XML can hold is refused.
    """
    if domain in ("", ".", ".."):
        return f"{domain!r} cannot be a folder name"
    if "/" in domain or "\0" in domain:
        return "name contains '/' or a NUL byte"
    if len(domain.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"name is longer than {NAME_MAX} bytes"
    return xml_problem(domain)


def legacy_file_name(name: str) -> str:
    return name + ".xml"


def file_name_problem(name: str) -> str | None:
    """Why ``<name>.xml`` cannot be a libvirt metadata file, or None."""
    if not name:
        return "name is empty"
    if "/" in name:
        return "name contains '/'"
    if name.startswith("."):
        return "name starts with '.'"
    if "\0" in name:
        return "name contains a NUL byte"
    if len(legacy_file_name(name).encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"name is longer than {NAME_MAX - 4} bytes"
    return None
