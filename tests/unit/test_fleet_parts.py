"""The fleet's pure parts: its settings, the host id, what a DSN shows, and
the generation record the outbox and the database share."""
from __future__ import annotations

from pathlib import Path

import pytest

from snapstore import config, errors, fleet, history, kinds
from snapstore.fleet import database


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "snapstore.toml"
    path.write_text(text)
    return config.load(path)


def test_fleet_section_sets_the_fleet_fields(tmp_path: Path) -> None:
    settings = load(tmp_path, '[fleet]\nenabled = true\ndsn = "host=db passfile=/etc/snapstore/pgpass"\n'
                              'host_id = "hv-01"\noutbox_max = 50\nstale_after = 60\n')
    assert (settings.fleet_enabled, settings.fleet_dsn, settings.fleet_host_id, settings.fleet_outbox_max,
            settings.fleet_stale_after) == (True, "host=db passfile=/etc/snapstore/pgpass", "hv-01", 50, 60.0)
    assert not config.Config().fleet_enabled, "off unless asked for"


@pytest.mark.parametrize(("text", "expected"), [
    ("[fleet]\nport = 5432\n", "unknown setting 'port' in [fleet]"),
    ("[fleet]\nenabled = 'yes'\n", "setting 'enabled' in [fleet]: expected bool, got str"),
    ('fleet_dsn = "x"\n', "fleet settings go in [fleet]"),
    ("history_keep = 0\n[fleet]\nenabled = true\n", "needs history"),
])
def test_bad_fleet_settings_name_the_setting(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(errors.ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        load(tmp_path, text)


def test_host_id_defaults_to_the_machine_id_and_must_be_a_role_name(tmp_path: Path) -> None:
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    assert fleet.host_id(config.Config(), machine_id) == "0123456789abcdef0123456789abcdef"
    assert fleet.host_id(config.Config(fleet_host_id="hv-01.example"), machine_id) == "hv-01.example"
    for bad in ("-x", "a b", "x" * 64, "é"):
        with pytest.raises(errors.ConfigError, match="cannot be a host id"):
            fleet.host_id(config.Config(fleet_host_id=bad), machine_id)
    with pytest.raises(errors.ConfigError, match="machine id cannot be read"):
        fleet.host_id(config.Config(), tmp_path / "absent")


def test_a_dsn_is_shown_without_its_password() -> None:
    assert database.describe("host=db.example port=5433 dbname=fleet user=hv-01 password=s3cret") == \
        "hv-01@db.example:5433/fleet"
    assert database.describe("postgresql://hv-01:s3cret@db.example/fleet?sslmode=verify-full") == \
        "hv-01@db.example/fleet"
    for bad in ("host=db password=s3cret nonsense=1", "postgresql://u:s3cret@h/x?bogus=1"):
        with pytest.raises(errors.FleetError) as caught:
            database.connect(bad)
        assert "s3cret" not in str(caught.value) and "cannot be read" in str(caught.value)
    with pytest.raises(errors.FleetError, match="no DSN"):
        database.connect("  ")


def test_a_committed_generation_survives_its_record() -> None:
    committed = history.Committed(kinds.CHECKPOINT, "vm é", 7, 1700000000.5, "consolidate", "ab" * 32, 123,
                                  "c2", {"c1": "d1", "c2": "d2"}, None, [1, 2, 3, 4])
    assert history.decode_committed(committed.encode()) == committed
    with pytest.raises(ValueError, match="format"):
        history.decode_committed({**committed.encode(), "format": 99})


@pytest.mark.parametrize("change", [
    {"digests": ["not", "a", "dict"]}, {"sha256": "XYZ"}, {"generation": 0}, {"uuid": "not-a-uuid"},
    {"domain": 7}, {"kind": "volume"},
])
def test_a_record_the_database_would_refuse_is_refused_here(change: dict[str, object]) -> None:
    committed = history.Committed(kinds.SNAPSHOT, "vm1", 3, 1700000000.0, "consolidate", "ab" * 32, 10, None,
                                  {"s1": "d1"}, "4f293fa2-6c6a-40c1-835c-76727585c2dc", [1, 2, 3, 4])
    with pytest.raises(ValueError):
        history.decode_committed({**committed.encode(), **change})


@pytest.mark.parametrize("dsn", ["postgresql://hv:s3cr3t/x@127.0.0.1/snap", "postgresql://hv:pa@ss@127.0.0.1/snap"])
def test_a_uri_whose_password_spills_into_other_fields_is_refused_unshown(dsn: str) -> None:
    """libpq reads an unescaped '/' or '@' of a password as part of host,
    port or database, which messages would show."""
    with pytest.raises(errors.FleetError) as caught:
        database.connect(dsn)
    assert "s3cr3t" not in str(caught.value) and "pa@ss" not in str(caught.value) and "ss@" not in str(caught.value)
    assert "percent-encoded" in str(caught.value)
    assert database.describe(dsn) == "(DSN not valid)"
    assert database.describe("host=::1 dbname=x user=y") == "y@::1/x"  # an IPv6 host is fine
