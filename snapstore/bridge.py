"""The only module that imports libvirt: dump(), restore() and the removal of
a source's metadata, through libvirt's API.

Metadata moves one moment per call (getXMLDesc, snapshotCreateXML, delete),
so libvirt's RPC limits (4 MiB a string, 32 MiB a message; DESIGN §1) bound
one snapshot, never a whole domain.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import libvirt

from snapstore import codes, errors, kinds, limits, model
from snapstore.formats import mapping, xmlsafe

Progress = Callable[[int, int], None]  # (moments done, total)


# --- connections -------------------------------------------------------------------------------


@dataclasses.dataclass
class Host:
    """One libvirt connection and the URI it was opened with (for messages)."""

    uri: str
    conn: libvirt.virConnect


class _Process:
    """What libvirt allows only once per process."""

    event_loop: threading.Thread | None = None
    embedded_root: str | None = None


def embedded_root(uri: str) -> str | None:
    """The root of an embedded-driver URI (``qemu:///embed?root=DIR``), else None."""
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc or parts.path != "/embed":
        return None
    return urllib.parse.parse_qs(parts.query).get("root", [""])[0]


def connect(uri: str) -> Host:
    root = embedded_root(uri)
    if _Process.embedded_root not in (None, root):
        # libvirt 9.0: one embedded root per process (DESIGN §7), and once it
        # is open, qemu:/// URIs reach that in-process driver ("Missing URI
        # parameter 'root'") and qemu+unix:// finds no driver at all.
        raise errors.ConnectionFailed(uri=uri, reason=f"this process already opened the embedded root "
                                                     f"{_Process.embedded_root}, after which libvirt opens "
                                                     "no other URI")
    _start_event_loop()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise errors.ConnectionFailed(uri=uri, reason=_message(e)) from e
    if root is not None:
        _Process.embedded_root = root
    return Host(uri, conn)


@contextlib.contextmanager
def connected(uri: str) -> Iterator[Host]:
    host = connect(uri)
    try:
        yield host
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            host.conn.close()


@contextlib.contextmanager
def connected_pair(first: str, second: str) -> Iterator[tuple[Host, Host]]:
    """Two connections, an embedded root opened last (see connect())."""
    with contextlib.ExitStack() as stack:
        hosts = {uri: stack.enter_context(connected(uri))
                 for uri in sorted((first, second), key=lambda uri: embedded_root(uri) is not None)}
        yield hosts[first], hosts[second]


def _start_event_loop() -> None:
    # The embedded driver runs in this process and needs a registered,
    # running event loop before open() (DESIGN §7); remote connections use it
    # for keepalive. libvirt lets a process register one loop, once.
    if _Process.event_loop is not None:
        return
    # libvirt's default handler prints every error on stderr; ours reach the
    # operator once, as one line, through the exceptions below.
    libvirt.registerErrorHandler(_ignore_error, None)
    libvirt.virEventRegisterDefaultImpl()
    _Process.event_loop = threading.Thread(target=_run_events, name="libvirt-events", daemon=True)
    _Process.event_loop.start()


def _ignore_error(_context: Any, _error: Any) -> None:
    """libvirt's default handler prints every error on stderr; ours become one line."""


def _run_events() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def same_instance(first: Host, second: Host) -> bool:
    """True when two connections reach one libvirt: ``qemu:///system`` and
    ``qemu+ssh://thishost/system`` do (same driver and path, same hostname)."""
    return (_instance(first.uri), _hostname(first)) == (_instance(second.uri), _hostname(second))


def _instance(uri: str) -> tuple[str, str, str]:
    parts = urllib.parse.urlsplit(uri)
    return parts.scheme.split("+")[0], parts.path, embedded_root(uri) or ""


def _hostname(host: Host) -> str:
    return str(_call("get hostname", host.uri, host.conn.getHostname))


def check_domain(host: Host, domain: str) -> None:
    """Raise UnknownDomain unless ``domain`` is defined on ``host``."""
    _domain(host, domain)


def _domain(host: Host, name: str) -> libvirt.virDomain:
    try:
        return host.conn.lookupByName(name)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise errors.UnknownDomain(domain=name, reason=f"not defined on {host.uri}") from e
        raise _failure_error("lookup", name, e) from e


def _call(operation: str, subject: str, function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except libvirt.libvirtError as e:
        raise _failure_error(operation, subject, e) from e


def _failure_error(operation: str, subject: str, error: libvirt.libvirtError) -> errors.BridgeError:
    return errors.BridgeError(domain=subject, operation=operation, reason=_message(error),
                              code=error.get_error_code())


def _message(error: libvirt.libvirtError) -> str:
    return error.get_error_message() or str(error)


# --- the calls that differ between kinds -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Calls:
    """libvirt's calls for one kind of moment (snapshots or checkpoints)."""

    list_all: Callable[[libvirt.virDomain], list[Any]]  # parents before children
    lookup: Callable[[libvirt.virDomain, str], Any]
    xml: Callable[[Any], str]  # with secrets
    current: Callable[[libvirt.virDomain], str | None]
    redefine: Callable[[libvirt.virDomain, str, bool], None]  # (domain, xml, make current)
    delete_metadata: Callable[[Any], None]


def _current_snapshot(domain: libvirt.virDomain) -> str | None:
    if not domain.hasCurrentSnapshot(0):
        return None
    return str(domain.snapshotCurrent(0).getName())


def _redefine_snapshot(domain: libvirt.virDomain, xml: str, current: bool) -> None:
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
    if current:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
    domain.snapshotCreateXML(xml, flags)


_SNAPSHOT_CALLS = _Calls(
    list_all=lambda domain: domain.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL),
    lookup=lambda domain, name: domain.snapshotLookupByName(name, 0),
    xml=lambda handle: handle.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE),
    current=_current_snapshot,
    redefine=_redefine_snapshot,
    delete_metadata=lambda handle: handle.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY),
)


def _redefine_checkpoint(domain: libvirt.virDomain, xml: str, current: bool) -> None:
    # No _CURRENT: libvirt computes a checkpoint's "current" from the tree.
    domain.checkpointCreateXML(xml, libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE)


_CHECKPOINT_CALLS = _Calls(
    list_all=lambda domain: domain.listAllCheckpoints(libvirt.VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL),
    lookup=lambda domain, name: domain.checkpointLookupByName(name, 0),
    xml=lambda handle: handle.getXMLDesc(libvirt.VIR_DOMAIN_CHECKPOINT_XML_SECURE),
    current=lambda domain: None,
    redefine=_redefine_checkpoint,
    delete_metadata=lambda handle: handle.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY),
)


def _calls(kind: kinds.Kind) -> _Calls:
    return _CHECKPOINT_CALLS if kind is kinds.CHECKPOINT else _SNAPSHOT_CALLS


# --- dump --------------------------------------------------------------------------------------


def dump(host: Host, kind: kinds.Kind, domain: str, progress: Progress | None = None) -> model.Tree:
    """Every moment of ``domain`` as libvirt reports it, secrets included, validated."""
    calls = _calls(kind)
    handle = _domain(host, domain)
    listed = _call(f"list {kind.plural}", domain, calls.list_all, handle)
    moments = []
    for done, moment in enumerate(listed, 1):
        moments.append(_fetch(calls, moment, kind, host, domain))
        _report(progress, done, len(listed))
    current = _call(f"get current {kind.name}", domain, calls.current, handle)
    tree = model.Tree(kind, domain, moments, current)
    problems = tree.validate()
    if problems:  # a moment made or deleted while we listed them
        raise errors.TreeError(domain=domain, problems=problems)
    return tree


def _fetch(calls: _Calls, handle: Any, kind: kinds.Kind, host: Host, domain: str) -> model.Moment:
    text = _call(f"get {kind.name} XML", domain, calls.xml, handle)
    source = f"{host.uri}: {domain}: {kind.name} {handle.getName()!r}"
    element = xmlsafe.parse_bytes(text.encode(), source, limits.RPC_STRING)
    if element.tag != kind.root_tag:
        raise errors.FormatError(path=source, reason=f"libvirt returned <{xmlsafe.tag(element)}>, expected "
                                                    f"<{kind.root_tag}>",
                                 code=codes.WRONG_ROOT)
    xmlsafe.refuse_unnestable(element, source)
    return mapping.moment(element, source)


def _report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def differences(expected: model.Tree, actual: model.Tree) -> list[str]:
    """Why ``actual`` is not ``expected``; empty when they are the same tree.

    Names, current and each moment's C14N (which holds its parent) are
    compared, never list order: libvirt lists siblings newest first.
    """
    names, found = set(expected.by_name), []
    changed = [name for name in sorted(names & set(actual.by_name))
               if not mapping.same_content(expected.by_name[name], actual.by_name[name])]
    for label, group in (("gone", sorted(names - set(actual.by_name))),
                         ("new", sorted(set(actual.by_name) - names)), ("changed", changed)):
        if group:
            found.append(f"{label}: {listed(group)}")
    if expected.current != actual.current:
        found.append(f"current is {actual.current!r}, was {expected.current!r}")
    return found


def listed(names: list[str]) -> str:
    return ", ".join(map(repr, names))


# --- one moment per call -----------------------------------------------------------------------


@dataclasses.dataclass
class Failure:
    name: str
    action: str  # "redefine", "set current", "delete metadata"
    message: str  # libvirt's
    code: int


@dataclasses.dataclass
class Steps:
    """What a run of one-moment-per-call changes did; it stops at the first failure."""

    done: list[str] = dataclasses.field(default_factory=list)
    failure: Failure | None = None
    not_tried: list[str] = dataclasses.field(default_factory=list)


def _run_steps(names: list[str], action: str, step: Callable[[str], None],
               progress: Progress | None) -> Steps:
    # Stopping at the first failure keeps "not tried" exact: a later moment
    # may be a child of the failed one, and the usual causes (connection
    # lost, a full disk on the target) would fail every later call too.
    steps = Steps()
    for index, name in enumerate(names):
        try:
            step(name)
        except libvirt.libvirtError as e:
            steps.failure = Failure(name, action, _message(e), e.get_error_code())
            steps.not_tried = names[index + 1:]
            return steps
        steps.done.append(name)
        _report(progress, index + 1, len(names))
    return steps


# --- restore -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """What restore does, decided before any change; names in topological order."""

    tree: model.Tree  # as it will be defined (uuid rewritten if asked)
    define: list[str]  # absent on the target
    replace: list[str]  # present but different; only with --replace
    skip: list[str]  # present and identical
    extra: list[str]  # on the target only: left alone
    target_current: str | None

    def todo(self) -> list[str]:
        wanted = set(self.define) | set(self.replace)
        return [m.name for m in self.tree.topological() if m.name in wanted]


@dataclasses.dataclass
class RestoreResult:
    plan: Plan
    steps: Steps
    dry_run: bool

    @property
    def complete(self) -> bool:
        return not self.dry_run and self.steps.failure is None and not self.steps.not_tried

    def done_of(self, names: list[str]) -> list[str]:
        wanted = set(names)
        return [name for name in self.steps.done if name in wanted]


def restore(host: Host, tree: model.Tree, replace: bool = False, rewrite_uuid: bool = False,
            dry_run: bool = False, progress: Progress | None = None) -> RestoreResult:
    """Redefine every moment of ``tree`` on ``host``: parents first, then the
    current one marked last; identical moments are skipped, so a rerun after
    a failure finishes the job."""
    calls = _calls(tree.kind)
    handle = _domain(host, tree.domain)
    uuid = _call("get uuid", tree.domain, handle.UUIDString)
    tree = _with_target_uuid(tree, uuid, rewrite_uuid, host)
    plan = _plan(calls, handle, tree, replace, host)
    if dry_run:
        return RestoreResult(plan, Steps(), dry_run=True)
    texts = {m.name: m.body.decode() for m in tree.moments}
    steps = _run_steps(plan.todo(), "redefine", lambda name: calls.redefine(handle, texts[name], False), progress)
    if steps.failure is None and tree.current is not None and tree.kind.stores_current:
        steps.failure = _set_current(calls, handle, tree.current, texts[tree.current])
    return RestoreResult(plan, steps, dry_run=False)


def _with_target_uuid(tree: model.Tree, uuid: str, rewrite: bool, host: Host) -> model.Tree:
    found = tree.uuid()
    if found is None or found == uuid.lower():
        return tree
    if not rewrite:
        raise errors.Refused(domain=tree.domain, reason=(
            f"the {tree.kind.plural} belong to domain uuid {found}, but {tree.domain} on {host.uri} has uuid "
            f"{uuid}; nothing changed (pass --rewrite-uuid to rewrite the uuid in each {tree.kind.name})"))
    return model.Tree(tree.kind, tree.domain, [_with_uuid(m, uuid) for m in tree.moments], tree.current)


def _with_uuid(moment: model.Moment, uuid: str) -> model.Moment:
    """A copy whose embedded domain definitions carry ``uuid``: libvirt's
    REDEFINE requires the target domain's (virDomainSnapshotRedefinePrep)."""
    element = mapping.element(moment)  # a fresh parse: the moment itself is not changed
    for node in [*element.iterfind("domain/uuid"), *element.iterfind("inactiveDomain/uuid")]:
        node.text = uuid
    return mapping.moment(element, moment.source)


def _plan(calls: _Calls, handle: libvirt.virDomain, tree: model.Tree, replace: bool, host: Host) -> Plan:
    present = {moment.getName(): moment for moment in
               _call(f"list {tree.kind.plural}", tree.domain, calls.list_all, handle)}
    plan = Plan(tree, [], [], [], sorted(set(present) - set(tree.by_name)),
                _call(f"get current {tree.kind.name}", tree.domain, calls.current, handle))
    for moment in tree.topological():
        if moment.name not in present:
            plan.define.append(moment.name)
        elif mapping.same_content(_fetch(calls, present[moment.name], tree.kind, host, tree.domain), moment):
            plan.skip.append(moment.name)
        else:
            plan.replace.append(moment.name)
    if plan.replace and not replace:
        raise errors.Refused(domain=tree.domain, reason=(
            f"{len(plan.replace)} {tree.kind.plural} on {host.uri} differ from the file: {listed(plan.replace)}; "
            "nothing changed (pass --replace to redefine them)"))
    return plan


def _set_current(calls: _Calls, handle: libvirt.virDomain, name: str, xml: str) -> Failure | None:
    # Redefining without _CURRENT leaves libvirt's current moment alone, so it
    # moves once, here, after every parent exists; an identical REDEFINE of an
    # existing moment with _CURRENT is how libvirt moves it without a revert.
    try:
        if calls.current(handle) != name:
            calls.redefine(handle, xml, True)
    except libvirt.libvirtError as e:
        return Failure(name, "set current", _message(e), e.get_error_code())
    return None


# --- removing a source's metadata --------------------------------------------------------------


def delete_metadata(host: Host, tree: model.Tree, progress: Progress | None = None) -> Steps:
    """Remove the metadata (only: disk images keep their data) of every moment
    of ``tree``, children before parents, one per call.

    Never _DELETE_CHILDREN: with _METADATA_ONLY it crashes libvirt 9.0 on a
    subtree with two or more forks (DESIGN §1).
    """
    calls = _calls(tree.kind)
    handle = _domain(host, tree.domain)
    names = [m.name for m in reversed(tree.topological())]  # every child before its parent
    return _run_steps(names, "delete metadata",
                      lambda name: calls.delete_metadata(calls.lookup(handle, name)), progress)
