"""Every config error in one run: each table that does not decode is taken apart to name each
bad value, the semantic checks still run on the rest, and each error names its key path.
Enum errors list the allowed values (from the schema's types); durations say seconds."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

from monolake.config import parse_config
from monolake.config._schema import BalancerKind, LoopKind
from monolake.errors import ConfigError, ConfigErrors

GOOD = """
[upstreams.app]
endpoints = [{ endpoint = "127.0.0.1:9000" }]

[servers.web]
listener = "127.0.0.1:8080"

[[servers.web.routes]]
upstream = "app"
"""

# Ten mistakes in five tables: decode errors (types, enums, unknown keys) and semantic ones.
BAD = """
[runtime]
workers = -1
loop = "epoll"
drain_timeout = "10s"

[log]
levle = "info"

[upstreams.app]
endpoints = [{ endpoint = "127.0.0.1:9000" }]
load_balancer = "fastest"
connect_timeout = -1

[servers.web]
listener = "127.0.0.1:8080"

[[servers.web.routes]]
path = "api"
upstream = "app"

[[servers.web.routes]]
upstream = "nope"
timeout = -1

[servers.other]
listener = "nohost"
routes = [{ upstream = "app" }]
"""

BAD_PATHS = [
    "runtime.loop",
    "runtime.drain_timeout",
    "log",
    "upstreams.app.load_balancer",
    "runtime.workers",
    "upstreams.app.connect_timeout",
    "servers.web.routes[0].path",
    "servers.web.routes[1].upstream",
    "servers.web.routes[1].timeout",
    "servers.other.listener",
]


def errors_of(text: str) -> list[ConfigError]:
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text))
    return list(getattr(info.value, "errors", [info.value]))


def test_every_error_is_reported_with_its_key_path() -> None:
    errors = errors_of(BAD)
    assert [e.path for e in errors] == BAD_PATHS, errors


def test_several_errors_raise_config_errors_whose_first_is_the_path() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config(tomllib.loads(BAD))
    assert info.value.path == "runtime.loop"
    assert str(info.value).startswith(f"{len(BAD_PATHS)} errors: runtime.loop: ")


def test_one_error_is_raised_as_itself() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(GOOD.replace('upstream = "app"', 'upstream = "nope"')))
    assert type(info.value) is ConfigError
    assert info.value.path == "servers.web.routes[0].upstream"


def by_path(text: str) -> dict[str, str]:
    return {e.path: e.reason for e in errors_of(text)}


def test_enum_errors_list_the_allowed_values_from_the_schema() -> None:
    reasons = by_path(BAD)
    assert reasons["runtime.loop"] == "Invalid enum value 'epoll': not one of " + ", ".join(typing.get_args(LoopKind))
    assert reasons["upstreams.app.load_balancer"] == "Invalid enum value 'fastest': not one of " + ", ".join(
        typing.get_args(BalancerKind)
    )
    # Inside a list, and in an optional enum.
    text = GOOD.replace('upstream = "app"', 'upstream = "app"\nretry = { on = ["502", "418"] }')
    text += '\n[upstreams.app.tls]\nmin_version = "1.1"\n'
    reasons = by_path(text)
    assert reasons["servers.web.routes[0].retry.on[1]"].startswith("Invalid enum value '418': not one of connect")
    assert reasons["upstreams.app.tls.min_version"] == "Invalid enum value '1.1': not one of 1.2, 1.3"


@pytest.mark.parametrize(
    ("line", "path", "reason"),
    [
        ('drain_timeout = "10s"', "runtime.drain_timeout", "Expected `float`, got `str` '10s' (a number of seconds)"),
        ("drain_timeout = -1", "runtime.drain_timeout", "must be >= 0 (seconds)"),
        ("drain_timeout = true", "runtime.drain_timeout", "Expected `float`, got `bool` (seconds)"),
    ],
)
def test_duration_errors_say_seconds(line: str, path: str, reason: str) -> None:
    assert by_path(f"[runtime]\n{line}\n" + GOOD) == {path: reason}


def test_nested_durations_say_seconds() -> None:
    text = GOOD.replace(
        '"127.0.0.1:9000" }]', '"127.0.0.1:9000" }]\nhealth_check = { interval = 0, timeout = "2s" }\nread_timeout = 0'
    )
    assert by_path(text) == {
        "upstreams.app.health_check.timeout": "Expected `float`, got `str` '2s' (a number of seconds)",
        "upstreams.app.read_timeout": "must be > 0 (seconds)",
        "upstreams.app.health_check.interval": "must be > 0 (seconds)",
    }


def test_a_dropped_bad_value_causes_no_second_error() -> None:
    # upstream = 5 is a type error; the route without it must not also be "a route needs 'upstream'".
    assert list(by_path(GOOD.replace('upstream = "app"', "upstream = 5"))) == ["servers.web.routes[0].upstream"]


def test_a_cluster_that_does_not_decode_is_not_an_unknown_cluster() -> None:
    # endpoints is required: the cluster cannot be kept, but it exists.
    text = GOOD.replace('endpoints = [{ endpoint = "127.0.0.1:9000" }]', 'endpoints = "127.0.0.1:9000"')
    assert list(by_path(text)) == ["upstreams.app.endpoints"]


def test_unknown_keys_everywhere_are_each_named() -> None:
    text = "colour = 1\n" + GOOD.replace('upstream = "app"', 'upstream = "app"\nmethod = ["GET"]')
    text = text.replace('listener = "127.0.0.1:8080"', 'listener = "127.0.0.1:8080"\nlistner = "x"')
    assert by_path(text) == {
        "": "Object contains unknown field `colour`",
        "servers.web": "Object contains unknown field `listner`",
        "servers.web.routes[0]": "Object contains unknown field `method`",
    }


def cli(tmp_path: Path, command: str, text: str) -> subprocess.CompletedProcess[str]:
    p = tmp_path / "monolake.toml"
    p.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "monolake.cli", command, "-c", str(p)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("command", ["check", "run"])
def test_check_and_run_print_every_error_one_per_line(tmp_path: Path, command: str) -> None:
    done = cli(tmp_path, command, BAD)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert [line.split(": ", 3)[2] for line in lines] == BAD_PATHS, done.stderr
    assert all(line.startswith("monolake: config error: ") for line in lines)
    assert done.stdout == ""


def test_an_unknown_key_does_not_hide_the_other_errors_of_its_table() -> None:
    text = GOOD.replace('listener = "127.0.0.1:8080"', 'listener = "127.0.0.1:8080"\nlistner = "x"\nidle_timeout = 0')
    text = text.replace('upstream = "app"', 'upstream = "app"\npath = "api"')
    assert by_path(text) == {
        "servers.web": "Object contains unknown field `listner`",
        "servers.web.routes[0].path": "must start with '/', got 'api'",
        "servers.web.idle_timeout": "must be > 0 (seconds)",
    }
