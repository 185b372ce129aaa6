"""One parser of a warehouse URL, for the client and the local stack alike.

The database comes from ``?database=`` if given, else from the path, else it is ``driftline``;
credentials are kept for the login and masked in every repr and error.
"""

from __future__ import annotations

import pytest

from driftline.stack.manage import warehouse_location
from driftline.stack.process import StackError
from driftline.streams.warehouse import WarehouseError, WarehouseLocation

SECRET = "pa:ss@w0rd/x"
QUOTED = "pa%3Ass%40w0rd%2Fx"


@pytest.mark.parametrize(
    ("url", "database"),
    [
        ("http://127.0.0.1:8123/?database=demo", "demo"),  # the URL the two old parsers disagreed on
        ("http://127.0.0.1:8123?database=demo", "demo"),
        ("http://127.0.0.1:8123/metrics?database=demo", "demo"),  # the query wins over the path
        ("http://127.0.0.1:8123/metrics", "metrics"),
        ("http://127.0.0.1:8123/metrics/", "metrics"),
        ("http://127.0.0.1:8123/", "driftline"),
        ("http://127.0.0.1:8123", "driftline"),
        ("http://127.0.0.1:8123/?compress=zstd", "driftline"),
    ],
)
def test_the_database_is_the_query_then_the_path_then_the_default(url: str, database: str) -> None:
    assert WarehouseLocation.parse(url).database == database
    assert warehouse_location(url) == WarehouseLocation.parse(url)  # the stack reads it with the same parser


def test_every_part_of_an_http_url() -> None:
    loc = WarehouseLocation.parse(f"https://bob:{QUOTED}@ch.example.com/metrics?database=demo")
    assert (loc.kind, loc.host, loc.port, loc.database, loc.username, loc.password) == (
        "https",
        "ch.example.com",
        8443,
        "demo",
        "bob",
        SECRET,
    )
    assert (loc.compress, loc.local, loc.path) == ("lz4", False, None)
    plain = WarehouseLocation.parse("http://localhost:9000/d")
    assert (plain.port, plain.username, plain.password) == (9000, "default", "")
    assert (plain.compress, plain.local) == ("none", True)  # a loopback server: no compression


def test_credentials_are_kept_and_masked_in_reprs_and_errors() -> None:
    loc = WarehouseLocation.parse(f"http://bob:{QUOTED}@127.0.0.1:8123/?database=demo")
    assert loc.password == SECRET
    for text in (repr(loc), str(loc), loc.redacted(), repr(warehouse_location(f"http://bob:{QUOTED}@h/d"))):
        assert SECRET not in text and QUOTED not in text and "***" in text
    assert loc.redacted() == "http://bob:***@127.0.0.1:8123/demo"
    for bad in (f"http://bob:{QUOTED}@h/d?database=1x", f"http://bob:{QUOTED}@h/1x?database=d"):
        with pytest.raises(WarehouseError) as raised:
            WarehouseLocation.parse(bad)
        assert QUOTED not in str(raised.value) and "bob:***@h" in str(raised.value)
        with pytest.raises(StackError) as stack_raised:
            warehouse_location(bad)
        assert QUOTED not in str(stack_raised.value)


def test_chdb_urls_and_what_the_stack_refuses() -> None:
    loc = WarehouseLocation.parse("chdb://.driftline/warehouse?database=demo")
    assert (loc.kind, loc.path, loc.database, loc.local) == ("chdb", ".driftline/warehouse", "demo", False)
    assert WarehouseLocation.parse("chdb://:memory:").database == "driftline"
    with pytest.raises(StackError, match="serves ClickHouse over HTTP"):
        warehouse_location("chdb://:memory:")
    with pytest.raises(StackError, match="must start with"):
        warehouse_location(f"postgresql://bob:{QUOTED}@h/d")
