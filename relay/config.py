"""The user's interface: the YAML file, loaded and validated once, up front.

``${VAR}`` and ``${VAR:-default}`` are expanded from the environment in every string value;
``${file:PATH}`` reads a secret from a file (e.g. systemd credentials:
``${file:${CREDENTIALS_DIRECTORY}/statsig_secret}``). Every error names the YAML path.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .events import CONFIG_CHANGE
from .guard import check_source, parse_networks
from .router import RouteConfig
from .schema import ByteSize, ConfigError, Duration, build, flatten, is_secret, raise_all
from .sources import SOURCES, SourceConfig
from .spool.backends import spool_config
from .targets import TARGETS, TargetConfig

T = TypeVar("T")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(kw_only=True)
class ServerConfig:
    listen: str = "0.0.0.0:8080"
    admin_listen: str = "127.0.0.1:9102"
    max_body: ByteSize = ByteSize(5 * 1024**2)
    # A request body not complete this long after its headers is answered 408 (and the
    # connection closed): a stalled client does not hold a handler for ever.
    body_timeout: Duration = Duration(30.0)
    # A connection must deliver a complete request head this long after it opens or after its
    # previous answer, or it is closed: a client sending its headers a byte at a time (or an
    # idle keep-alive connection) does not hold a connection for ever. aiohttp's keep-alive
    # timer, which closes a connection still waiting for its next request head.
    header_timeout: Duration = Duration(10.0)
    # SO_REUSEPORT on the public listener: several relays on one host share its port and the
    # kernel spreads their connections (one event loop each; see docs/scaling.md, "Several
    # relays on one host").
    reuse_port: bool = False
    # On SIGTERM, requests and sends in flight get this long in all (one deadline), then the
    # sends are cancelled and their rows stay in the spool. 8 s fits Docker's default 10 s stop
    # timeout with room to close the spool.
    shutdown_grace: Duration = Duration(8.0)
    retry_after: Duration = Duration(5.0)  # Retry-After sent with 503 when the spool is full
    log_level: str = "info"
    log_format: str = "text"  # text | json
    # Peers whose X-Forwarded-For is believed when finding a client's IP (relay/guard.py).
    trusted_proxies: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        parse_networks(self.trusted_proxies, "trusted_proxies")
        for key in ("listen", "admin_listen"):
            try:
                split_host_port(getattr(self, key))
            except ValueError as exc:
                raise ConfigError(key, str(exc)) from None
        if self.body_timeout <= 0:
            raise ConfigError("body_timeout", "must be more than 0s")
        if self.header_timeout <= 0:
            raise ConfigError("header_timeout", "must be more than 0s")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log_format", "must be text or json")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError("log_level", f"must be one of {', '.join(LOG_LEVELS)}")


@dataclass(kw_only=True)
class Config:
    server: ServerConfig
    spool: Any
    sources: dict[str, SourceConfig]
    targets: dict[str, TargetConfig]
    routes: list[RouteConfig]
    path: str = ""
    # Not errors, but likely mistakes: `check` prints them, `run` logs them.
    warnings: list[str] = field(default_factory=list)


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into its parts; refuses what could only fail at bind time
    (no DNS lookup: a name is checked for its syntax only)."""
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        raise ValueError(f"expected host:port, got {address!r}")
    if int(port) > 65535:
        raise ValueError(f"port {port} is out of range (0-65535) in {address!r}")
    if host.startswith("[") or host.endswith("]"):
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else ""
        if not _is_ip(inner, ipaddress.IPv6Address):
            raise ValueError(f"{host!r} is not a bracketed IPv6 address in {address!r}")
        return inner, int(port)
    if ":" in host:  # an IPv6 address without brackets, as older configs may have it
        if not _is_ip(host, ipaddress.IPv6Address):
            raise ValueError(f"{host!r} is not an IPv6 address (use [addr]:port) in {address!r}")
    elif host and set(host) <= _DOTTED:
        if not _is_ip(host, ipaddress.IPv4Address):
            raise ValueError(f"{host!r} is not a valid IPv4 address in {address!r}")
    elif host and not _HOSTNAME.fullmatch(host):
        raise ValueError(
            f"{host!r} is not a valid host name (letters, digits, hyphens, dots) in {address!r}"
        )
    return host or "0.0.0.0", int(port)


_DOTTED = frozenset("0123456789.")
# RFC 1123 labels: 1-63 letters, digits and inner hyphens; 253 characters in all.
_HOSTNAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?",
    re.ASCII,
)


def _is_ip(text: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


@dataclass
class Expansion:
    """What expanding a YAML tree found: unset variables (errors, all of them) and variables
    set to the empty string (checked once the fields they land in are known)."""

    errors: list[ConfigError] = field(default_factory=list)
    empty: list[tuple[str, str]] = field(default_factory=list)  # (YAML path, variable)


def expand(
    value: Any, env: Mapping[str, str], path: str = "", found: Expansion | None = None
) -> Any:
    """Expand ``${...}`` in every string of a parsed YAML tree; errors name the path. Without
    ``found`` the first error is raised; with it, every error is collected there."""
    collect = found if found is not None else Expansion()
    result = _expand_tree(value, env, path, collect)
    if found is None and collect.errors:
        raise collect.errors[0]
    return result


def _expand_tree(value: Any, env: Mapping[str, str], path: str, found: Expansion) -> Any:
    if isinstance(value, dict):
        return {
            k: _expand_tree(v, env, f"{path}.{k}" if path else str(k), found)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand_tree(v, env, f"{path}[{i}]", found) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    return _expand_text(value, env, path, found)


def _expand_text(text: str, env: Mapping[str, str], path: str, found: Expansion) -> str:
    """One string. A default is expanded only when it is used, so
    ``${URL:-https://${TENANT}.example.com}`` needs TENANT only when URL is unset."""
    out: list[str] = []
    i = 0
    while (start := text.find("${", i)) >= 0:
        end = _closing_brace(text, start)
        if end < 0:  # no closing brace: the rest is literal text
            break
        out.append(text[i:start])
        out.append(_evaluate(text[start + 2 : end], env, path, found))
        i = end + 1
    out.append(text[i:])
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth, k = 0, start
    while k < len(text):
        if text.startswith("${", k):
            depth, k = depth + 1, k + 2
            continue
        if text[k] == "}":
            depth -= 1
            if depth == 0:
                return k
        k += 1
    return -1


def _evaluate(expr: str, env: Mapping[str, str], path: str, found: Expansion) -> str:
    if expr.startswith("file:"):
        file_path = _expand_text(expr[5:], env, path, found)
        try:
            return Path(file_path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            found.errors.append(
                ConfigError(path, f"cannot read secret file {file_path}: {exc.strerror}")
            )
        except UnicodeDecodeError:  # never quoted: the bytes are a secret
            found.errors.append(ConfigError(path, f"secret file {file_path} is not UTF-8 text"))
        return ""
    name, sep, default = expr.partition(":-")
    if name in env:
        if env[name] == "":
            found.empty.append((path, name))
        try:  # os.environ keeps bytes that are not UTF-8 as lone surrogates
            env[name].encode()
        except UnicodeEncodeError:
            found.errors.append(ConfigError(path, f"environment variable {name} is not UTF-8 text"))
            return ""
        return env[name]
    if sep:
        return _expand_text(default, env, path, found)
    found.errors.append(ConfigError(path, f"environment variable {name} is not set"))
    return ""


def parse_config(text: str, env: Mapping[str, str] | None = None, path: str = "") -> Config:
    """The whole file, validated. Every error found is reported at once (ConfigErrors), except
    those that only follow from another (a field holding an unset variable, a route naming a
    target that failed to build)."""
    raw = _parse_yaml(text, path or "config")
    found = Expansion()
    raw = expand(raw, os.environ if env is None else env, "", found)
    check = _Collector([e.path for e in found.errors])
    check.add(*found.errors)
    warnings: list[str] = []
    for where, variable in found.empty:
        in_headers, in_secret = _field_kind(raw, where)
        if in_headers:
            warnings.append(
                f"{where}: environment variable {variable} is set but empty; the header is"
                " sent with what is left of its value"
            )
        elif in_secret:  # a credential sent, or accepted, as nothing
            check.refuse(
                ConfigError(
                    where,
                    f"environment variable {variable} is set but empty; a credential cannot be"
                    " empty",
                )
            )
    known = {"server", "spool", "sources", "targets", "routes"}
    for key in raw:
        if key not in known:
            check.add(
                ConfigError(str(key), f"unknown key; expected one of: {', '.join(sorted(known))}")
            )
    server = check.run(lambda: build(ServerConfig, raw.get("server"), "server"))
    spool = check.run(lambda: spool_config(raw.get("spool"), "spool"))
    source_classes = {k: v.config_class for k, v in SOURCES.items()}
    target_classes = {k: v.config_class for k, v in TARGETS.items()}
    sources = _components(raw.get("sources"), "sources", source_classes, check)
    targets = _components(raw.get("targets"), "targets", target_classes, check)
    routes_raw = raw.get("routes") or []
    routes: list[RouteConfig] = []
    if not isinstance(routes_raw, list):
        check.add(ConfigError("routes", "expected a list of routes"))
        routes_raw = []
    for i, r in enumerate(routes_raw):
        route = check.run(lambda r=r, i=i: build(RouteConfig, r, f"routes[{i}]"))
        if route is not None:
            routes.append(route)
    # A name that is in the file but failed to build was reported already.
    declared = (_names(raw.get("sources")), _names(raw.get("targets")))
    _check_routes(routes, sources, targets, declared, check)
    check.run(lambda: _check_paths(sources))
    raise_all(check.errors)
    return Config(
        server=server,
        spool=spool,
        sources=sources,
        targets=targets,
        routes=routes,
        path=path,
        warnings=warnings,
    )


class _Collector:
    """Errors of a whole config, in the order found; an error about a field that holds an
    unset variable (or about its section) is left out: it only repeats that one."""

    def __init__(self, unset: list[str]) -> None:
        self.unset = unset
        self.errors: list[ConfigError] = []

    def _follows(self, path: str) -> bool:
        return any(path == u or _inside(path, u) or _inside(u, path) for u in self.unset)

    def add(self, *errors: ConfigError) -> None:
        for error in flatten(list(errors)):
            if any(str(e) == str(error) for e in self.errors):
                continue
            unset = error.path in self.unset and "is not set" in error.message
            unreadable = "cannot read secret file" in error.message or error.message.endswith(
                "is not UTF-8 text"
            )
            if unset or unreadable or not self._follows(error.path):
                self.errors.append(error)

    def refuse(self, error: ConfigError) -> None:
        """An error that explains the others at its path (like an unset variable)."""
        self.unset.append(error.path)
        self.errors.append(error)

    def run(self, make: Callable[[], T]) -> T | None:
        try:
            return make()
        except ConfigError as exc:
            self.add(exc)
            return None


def _inside(path: str, parent: str) -> bool:
    return bool(parent) and path.startswith((parent + ".", parent + "["))


def _names(section: Any) -> list[str]:
    return [str(name) for name in section] if isinstance(section, dict) else []


def _field_kind(raw: dict[str, Any], path: str) -> tuple[bool, bool]:
    """Whether the YAML ``path`` (``targets.hooks.headers.Authorization``) lies in a
    ``headers`` mapping, and whether in a secret field, from the component's config class."""
    parts = re.findall(r"[^.\[\]]+", path)
    if len(parts) < 3 or parts[0] not in ("sources", "targets"):
        return False, False
    section, name, key = parts[:3]
    entry = (raw.get(section) or {}).get(name)
    registry = SOURCES if section == "sources" else TARGETS
    kind = entry.get("type") if isinstance(entry, dict) else None
    if kind not in registry:
        return False, False
    for known in dataclasses.fields(registry[kind].config_class):
        if known.metadata.get("key", known.name) == key:
            return key == "headers", is_secret(known)
    return False, False


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    return parse_config(_read(path), env, str(path))


@dataclass(kw_only=True)
class SpoolSection:
    """What the DLQ commands need: the spool, and the names of the configured targets."""

    spool: Any
    target_names: list[str]


def load_spool_section(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> SpoolSection:
    """Only the ``spool:`` section, expanded and validated: an unset secret elsewhere in the
    file (a source's signing secret) must not stop an operator from reading the DLQ."""
    raw = _load_raw(path)
    spool_raw = expand(raw.get("spool"), os.environ if env is None else env, "spool")
    targets = raw.get("targets")
    return SpoolSection(
        spool=spool_config(spool_raw, "spool"),
        target_names=[str(name) for name in targets] if isinstance(targets, dict) else [],
    )


def load_server_section(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> ServerConfig:
    """Only the ``server:`` section (``statsig-relay status -c`` needs the admin address)."""
    raw = _load_raw(path)
    server_raw = expand(raw.get("server"), os.environ if env is None else env, "server")
    return build(ServerConfig, server_raw, "server")


def _load_raw(path: str | os.PathLike[str]) -> dict[str, Any]:
    return _parse_yaml(_read(path), str(path))


def _parse_yaml(text: str, name: str) -> dict[str, Any]:
    """The top-level mapping. A syntax error names the line and column but never quotes the
    line: PyYAML's own message shows it, and it may be a secret's (an unclosed quote)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError("", f"{name} is not valid YAML: {_yaml_problem(exc)}") from None
    except yaml.YAMLError:
        raise ConfigError("", f"{name} is not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError("", "the config must be a YAML mapping with sources, targets, routes")
    return raw


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """``problem at line L, column C (while context started at line L)``, without snippets."""
    where = exc.problem_mark or exc.context_mark
    text = exc.problem or exc.context or "syntax error"
    if where is not None:
        text += f" at line {where.line + 1}, column {where.column + 1}"
    if exc.problem and exc.context and exc.context_mark is not None:
        text += f" ({exc.context} started at line {exc.context_mark.line + 1})"
    return text


def _read(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "",
            f"cannot read config {path}: not UTF-8 text"
            f" (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})",
        ) from None


def _components(
    raw: Any, section: str, classes: dict[str, type], check: _Collector
) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        check.add(ConfigError(section, "expected a mapping of name: {type: ..., ...}"))
        return {}
    built = {}
    for name, data in raw.items():
        where = f"{section}.{name}"
        if not isinstance(data, dict):
            check.add(ConfigError(where, "expected a mapping with a type"))
            continue
        kind = data.get("type")
        if kind not in classes:
            check.add(
                ConfigError(
                    f"{where}.type",
                    f"unknown type {kind!r}; one of: {', '.join(sorted(classes))}"
                    if kind
                    else f"required; one of: {', '.join(sorted(classes))}",
                )
            )
            continue
        component = check.run(
            lambda kind=kind, data=data, where=where: build(classes[kind], data, where)
        )
        if component is not None:
            built[str(name)] = component
    return built


def _check_routes(
    routes: list[RouteConfig],
    sources: dict[str, Any],
    targets: dict[str, Any],
    declared: tuple[list[str], list[str]],
    check: _Collector,
) -> None:
    names: set[str] = set()
    for i, route in enumerate(routes):
        check.run(
            lambda i=i, route=route: _check_route(i, route, names, sources, targets, declared)
        )


def _check_route(
    i: int,
    route: RouteConfig,
    names: set[str],
    sources: dict[str, Any],
    targets: dict[str, Any],
    declared: tuple[list[str], list[str]],
) -> None:
    where = f"routes[{i}]"
    errors: list[ConfigError] = []
    if route.name in names:
        errors.append(ConfigError(f"{where}.name", f"duplicate route name {route.name!r}"))
    names.add(route.name)
    if not route.sources:
        errors.append(ConfigError(f"{where}.from", "names no source"))
    for j, source in enumerate(route.sources):
        if source not in sources and source not in declared[0]:
            errors.append(
                ConfigError(
                    f"{where}.from[{j}]",
                    f"no source named {source!r}; sources: {', '.join(declared[0]) or 'none'}",
                )
            )
    if route.to not in targets:
        if route.to not in declared[1]:
            known = ", ".join(declared[1]) or "none"
            errors.append(
                ConfigError(f"{where}.to", f"no target named {route.to!r}; targets: {known}")
            )
    else:
        kind = targets[route.to].type
        if TARGETS[kind].only_config_changes and not route.filter.selects_only(CONFIG_CHANGE):
            errors.append(
                ConfigError(
                    f"{where}.filter",
                    f"route {route.name!r} to target {route.to!r}: a {kind} target carries"
                    " config changes only; add filter: {categories: [config_change]}",
                )
            )
    try:
        route.rename_config()
    except ConfigError as exc:
        errors.append(ConfigError(f"{where}.{exc.path}", exc.message))
    raise_all(errors)


def _check_paths(sources: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    for name, config in sources.items():
        source = SOURCES[config.type](name, config)
        check_source(name, source)
        for endpoint in source.endpoints():
            key = f"{endpoint.method} {endpoint.path}"
            if key in seen:
                raise ConfigError(
                    f"sources.{name}", f"{key} is already served by source {seen[key]!r}"
                )
            seen[key] = name
