"""Config: env expansion, secrets from files, and errors that name the YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import expand, load_config, parse_config, split_host_port
from relay.schema import ConfigError

BASE = """
sources:
  statsig: {type: statsig_webhook, path: /webhooks/statsig, signing_secret: "${SECRET}"}
targets:
  out: {type: webhook, url: "http://127.0.0.1:1/x", batch_max_events: 100, linger: 50ms}
routes:
  - {name: all, from: statsig, to: out, filter: {categories: [gate_exposure]}}
"""


def test_example_config_loads_without_any_secret_set() -> None:
    config = load_config(Path(__file__).resolve().parents[1] / "config.example.yaml", env={})
    assert config.spool.path == "./data/spool.db"
    assert config.sources["statsig"].signing_secret == ""
    assert [r.name for r in config.routes] == ["everything-to-file"]


def test_env_expansion_with_defaults_and_sizes() -> None:
    config = parse_config(
        BASE + "server: {max_body: 2MiB, listen: '${LISTEN:-127.0.0.1:9}'}", env={"SECRET": "s3"}
    )
    assert config.sources["statsig"].signing_secret == "s3"
    assert config.server.max_body == 2 * 1024 * 1024
    assert config.server.listen == "127.0.0.1:9"
    assert config.targets["out"].linger == pytest.approx(0.05)


def test_missing_variable_names_the_variable_and_the_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE, env={})
    assert str(err.value) == (
        "sources.statsig.signing_secret: environment variable SECRET is not set"
    )


def test_secret_from_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-file\n")
    text = BASE.replace("${SECRET}", "${file:${CREDS}/secret}")
    config = parse_config(text, env={"CREDS": str(tmp_path)})
    assert config.sources["statsig"].signing_secret == "from-file"


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        (
            ("batch_max_events: 100", "batch_max_evnts: 100"),
            "targets.out.batch_max_evnts",
            "unknown key",
        ),
        (("type: webhook", "type: webhok"), "targets.out.type", "unknown type 'webhok'"),
        (("to: out", "to: nowhere"), "routes[0].to", "no target named 'nowhere'"),
        (
            ("from: statsig", "from: [statsig, segment]"),
            "routes[0].from[1]",
            "no source named 'segment'",
        ),
        (
            ("[gate_exposure]", "[gate_exposures]"),
            "routes[0].filter.categories[0]",
            "unknown category",
        ),
        (("linger: 50ms", "linger: soon"), "targets.out.linger", "expected a duration"),
        (
            ("batch_max_events: 100", "batch_max_events: 0"),
            "targets.out.batch_max_events",
            "at least 1",
        ),
        (('url: "http://127.0.0.1:1/x", ', ""), "targets.out.url", "required key is missing"),
    ],
)
def test_bad_fields_are_named_by_their_yaml_path(
    change: tuple[str, str], path: str, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE.replace(*change), env={"SECRET": "x"})
    assert err.value.path == path
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("value", "words"), [("0s", "must be more than 0s"), ("-1s", "expected a duration")]
)
def test_a_body_timeout_that_could_only_refuse_every_body_is_refused(
    value: str, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + f"server: {{body_timeout: {value}}}", env={"SECRET": "x"})
    assert err.value.path == "server.body_timeout"
    assert words in str(err.value)
    default = parse_config(BASE, env={"SECRET": "x"}).server.body_timeout
    assert default == pytest.approx(30.0)


@pytest.mark.parametrize(
    ("value", "words"), [("0s", "must be more than 0s"), ("-1s", "expected a duration")]
)
def test_a_header_timeout_that_would_close_every_connection_is_refused(
    value: str, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + f"server: {{header_timeout: {value}}}", env={"SECRET": "x"})
    assert err.value.path == "server.header_timeout"
    assert words in str(err.value)
    server = parse_config(BASE, env={"SECRET": "x"}).server
    assert server.header_timeout == pytest.approx(10.0)
    assert server.shutdown_grace == pytest.approx(8.0)  # fits Docker's 10 s stop timeout


def test_unknown_top_level_key_and_bad_yaml() -> None:
    with pytest.raises(ConfigError, match=r"^sourcez: unknown key"):
        parse_config("sourcez: {}\n", env={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("sources: [\n", env={})


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        (":8080", "0.0.0.0", 8080),
        ("localhost:0", "localhost", 0),
        ("relay-1.internal.example:65535", "relay-1.internal.example", 65535),
        ("[::1]:9102", "::1", 9102),
        ("[::ffff:127.0.0.1]:80", "::ffff:127.0.0.1", 80),
        (":::8080", "::", 8080),  # unbracketed IPv6, as older configs may have it
    ],
)
def test_usable_listen_addresses_load(address: str, host: str, port: int) -> None:
    config = parse_config(BASE + f"server: {{listen: '{address}'}}", env={"SECRET": "x"})
    assert split_host_port(config.server.listen) == (host, port)


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("256.1.1.1:8080", "not a valid IPv4 address"),
        ("1.2.3:8080", "not a valid IPv4 address"),
        ("010.0.0.1:8080", "not a valid IPv4 address"),
        ("127.0.0.1:65536", "out of range"),
        ("[::1::2]:8080", "not a bracketed IPv6 address"),
        ("[127.0.0.1]:8080", "not a bracketed IPv6 address"),
        ("[::1:8080", "not a bracketed IPv6 address"),
        ("::zz:8080", "not an IPv6 address"),
        ("relay_host:8080", "not a valid host name"),
        ("-relay:8080", "not a valid host name"),
        ("a..b:8080", "not a valid host name"),
        ("relay host:8080", "not a valid host name"),
        ("127.0.0.1:８０", "expected host:port"),
    ],
)
@pytest.mark.parametrize("key", ["listen", "admin_listen"])
def test_unusable_listen_addresses_are_refused_naming_the_key(
    address: str, words: str, key: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + f"server: {{{key}: '{address}'}}", env={"SECRET": "x"})
    assert err.value.path == f"server.{key}"
    assert words in str(err.value)


def test_expand_leaves_plain_strings_alone() -> None:
    assert expand({"a": ["x", "${A}"], "b": 3}, {"A": "1"}) == {"a": ["x", "1"], "b": 3}
