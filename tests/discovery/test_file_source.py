"""File discovery: a JSON or TOML records file watched with inotify, replaced the way tools
replace files (write a temporary file, rename it over); a file that does not parse keeps the
last good set. And the hub: one source per cluster, its sets published whole, admin edits."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

from test_dns_source import Sink, addresses  # tests/discovery is on sys.path

from monolake.apps.config import parse_config
from monolake.apps.discovery import DiscoveryHub, EndpointRecord
from monolake.apps.discovery._file import FileSource


def replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


async def test_json_file_changes_and_bad_content(tmp_path: Path) -> None:
    path = tmp_path / "eps.json"
    path.write_text(json.dumps([{"address": "10.0.0.1:80"}, {"address": "10.0.0.2:80", "weight": 2}]))
    src, sink = FileSource("c", str(path)), Sink()
    task = asyncio.get_running_loop().create_task(src.run(sink))
    try:
        await sink.wait(lambda: sink.sets)
        assert addresses(sink.sets[0]) == [("10.0.0.1:80", 1), ("10.0.0.2:80", 2)]
        replace(path, json.dumps({"endpoints": [{"address": "10.0.0.3:80", "zone": "b", "draining": True}]}))
        await sink.wait(lambda: len(sink.sets) == 2)
        assert sink.sets[1] == [EndpointRecord(address="10.0.0.3:80", zone="b", draining=True)]
        replace(path, '[{"address": "no port"}]')
        await sink.wait(lambda: sink.errors)
        assert "endpoints[0]" in sink.errors[0]
        replace(path, "{")
        await sink.wait(lambda: len(sink.errors) == 2)
        assert len(sink.sets) == 2  # the last good set stays
    finally:
        task.cancel()


async def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "eps.toml"
    path.write_text('[[endpoints]]\naddress = "unix:/run/app.sock"\ntags = ["x"]\n')
    src, sink = FileSource("c", str(path)), Sink()
    task = asyncio.get_running_loop().create_task(src.run(sink))
    try:
        await sink.wait(lambda: sink.sets)
        assert sink.sets[0] == [EndpointRecord(address="unix:/run/app.sock", tags=("x",))]
    finally:
        task.cancel()


def test_hub_publishes_sets_and_admin_edits(tmp_path: Path) -> None:
    path = tmp_path / "eps.json"
    path.write_text(json.dumps([{"address": "10.0.0.1:80"}]))
    raw = {
        "upstreams": {
            "f": {"discovery": {"kind": "file", "path": "eps.json"}},
            "m": {"endpoints": [{"endpoint": "10.9.0.1:80"}], "discovery": {"kind": "admin"}},
            "s": {"endpoints": [{"endpoint": "10.8.0.1:80"}]},
        },
        "servers": {"web": {"listener": "127.0.0.1:0", "routes": [{"path": "/", "upstream": "f"}]}},
    }
    cfg = parse_config(raw, tmp_path)
    got: list[tuple[str, dict[str, Any]]] = []
    cond = threading.Condition()

    def publish(topic: str, msg: dict[str, Any]) -> None:
        with cond:
            got.append((topic, msg))
            cond.notify_all()

    def wait(pred: Any) -> None:
        with cond:
            assert cond.wait_for(lambda: pred(), timeout=10)

    hub = DiscoveryHub(cfg, publish)
    hub.start()
    try:
        wait(lambda: {t for t, _ in got} == {"endpoints/f", "endpoints/m"})
        last = dict(got)
        assert last["endpoints/m"]["records"] == [
            {"address": "10.9.0.1:80", "weight": 1, "zone": "", "tags": [], "draining": False}
        ]
        assert [r["address"] for r in last["endpoints/f"]["records"]] == ["10.0.0.1:80"]
        assert hub.put("m", EndpointRecord(address="10.9.0.2:80", weight=3))
        assert hub.drain("m", "10.9.0.1:80") is True
        assert hub.delete("m", "10.9.0.7:80") is False
        assert hub.delete("s", "10.8.0.1:80") is None  # no discovery: not the hub's
        recs = dict(got)["endpoints/m"]["records"]
        assert [(r["address"], r["weight"], r["draining"]) for r in recs] == [
            ("10.9.0.1:80", 1, True),
            ("10.9.0.2:80", 3, False),
        ]
        stats = hub.statistics()
        assert stats["f"]["updates"] == 1 and stats["f"]["last_success"] is not None
        names = {f.name for f in hub.families()}
        assert "monolake_discovery_updates" in names and "monolake_discovery_last_success_timestamp_seconds" in names
        # A reload that drops a cluster's discovery forgets its retained set.
        raw["upstreams"]["m"].pop("discovery")
        hub.reconfigure(parse_config(raw, tmp_path))
        assert got[-1] == ("endpoints/m", {})
    finally:
        hub.close()


def test_hub_static_and_admin_sets_start_over_when_the_config_changes(tmp_path: Path) -> None:
    def cfg(addr: str) -> Any:
        return parse_config(
            {
                "upstreams": {
                    "s": {"endpoints": [{"endpoint": addr}], "discovery": {"kind": "static"}},
                    "m": {"endpoints": [{"endpoint": addr}], "discovery": {"kind": "admin"}},
                },
                "servers": {"web": {"listener": "127.0.0.1:0", "routes": [{"path": "/", "upstream": "s"}]}},
            }
        )

    got: list[tuple[str, dict[str, Any]]] = []
    hub = DiscoveryHub(cfg("10.0.0.1:80"), lambda t, m: got.append((t, m)))
    hub.start()
    try:
        assert [t for t, _ in got] == ["endpoints/m"]  # a static set is the config's: nothing to send
        hub.put("s", EndpointRecord(address="10.0.0.9:80"))
        hub.reconfigure(cfg("10.0.0.1:80"))  # unchanged: the admin edit stays
        assert [r.address for r in hub.current("s") or []] == ["10.0.0.1:80", "10.0.0.9:80"]
        hub.reconfigure(cfg("10.0.0.2:80"))
        for name in ("s", "m"):
            assert [r["address"] for r in dict(got)[f"endpoints/{name}"]["records"]] == ["10.0.0.2:80"]
    finally:
        hub.close()
