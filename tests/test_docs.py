"""The documentation site: it builds strictly, the README stays a front page, the pages speak to
a user (no issue numbers, no history of the work), every path they name is in the repository,
and the configuration reference lists every key `check` accepts."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

from relay.config import ServerConfig
from relay.router import RouteConfig
from relay.schema import ByteSize, Duration, parse_duration, parse_size
from relay.sources import SOURCES
from relay.spool.redis import RedisSpoolConfig
from relay.spool.sqlite import SqliteSpoolConfig
from relay.targets import TARGETS
from tests.daemon import REPO_ROOT

DOCS = REPO_ROOT / "docs"
README = REPO_ROOT / "README.md"
BENCH_README = REPO_ROOT / "bench" / "README.md"
REFERENCE = DOCS / "configuration.md"
PAGES = sorted(DOCS.rglob("*.md"))


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """A broken link or anchor, or a page missing from nav, is a warning; --strict fails on it."""
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(REPO_ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "index.html").is_file()  # the README, as the home page
    for page in PAGES:
        if page.is_relative_to(DOCS / "hooks"):
            continue
        html = page.relative_to(DOCS).with_suffix("")
        html = html.parent if html.name == "index" else html
        assert (tmp_path / "site" / html / "index.html").is_file(), page


def test_every_page_is_in_the_nav() -> None:
    """mkdocs only reports a page left out of nav when told to; say it here too, by name."""
    nav = (REPO_ROOT / "mkdocs.yml").read_text()
    for page in PAGES:
        if page.is_relative_to(DOCS / "hooks"):
            continue
        assert f": {page.relative_to(DOCS).as_posix()}\n" in nav, page


def test_the_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"


# "issue 10", "issues 3 and 4", "#17": the project's own tracker, which a reader cannot see.
ISSUE = re.compile(r"\bissues? #?\d+|(?<![\w&#/])#\d+\b", re.I)
# The history of the work: sessions, commit ids (7+ hex digits, a letter and a digit).
HISTORY = re.compile(
    r"\b(?:first|second|third|fourth|fifth|this|last|previous|next|later|earlier) session\b"
    r"|\bsession \d|\bthe integrator\b"
    r"|\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b",
    re.I,
)


def page_params() -> list[typing.Any]:
    params = []
    for page in [README, BENCH_README, *PAGES]:
        name = page.relative_to(DOCS if page.is_relative_to(DOCS) else REPO_ROOT).as_posix()
        params.append(pytest.param(page, id=name))
    return params


@pytest.mark.parametrize("page", page_params())
def test_no_page_speaks_of_issues_or_the_history_of_the_work(page: Path) -> None:
    text = page.read_text()
    found = [m.group(0) for m in ISSUE.finditer(text)] + [
        m.group(0) for m in HISTORY.finditer(text)
    ]
    assert not found, f"{page.name}: {found}"


TOP_LEVEL = {p.name for p in REPO_ROOT.iterdir() if not p.name.startswith(".")} | {".ci"}
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\s]+)`")


def ignored(path: str) -> bool:
    """A path git ignores: output the page says a command writes (bench/results/)."""
    check = ["git", "check-ignore", path, f"{path}/"]  # a folder: with its slash
    return subprocess.run(check, cwd=REPO_ROOT, capture_output=True).returncode == 0


@pytest.mark.parametrize(
    "page", [README, BENCH_README, *PAGES], ids=lambda p: p.relative_to(REPO_ROOT).as_posix()
)
def test_every_file_a_page_names_is_in_the_repository(page: Path) -> None:
    """Links (relative to the page) and `paths` under the repository's own folders, like
    `examples/x.yaml` or `tests/run.sh`, name files that exist: no reader is sent nowhere."""
    text = page.read_text()
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:|#", target):
            continue
        path = target.split("#")[0]
        if path and not (page.parent / path).exists():
            missing.append(target)
    for token in CODE.findall(text):
        path = token.rstrip("/.,:;")
        first = path.split("/")[0]
        placeholder = any(c in path for c in "*{<")  # dist/*.whl, row:{id}, test_<kind>.py
        if (
            "/" in path
            and first in TOP_LEVEL
            and not placeholder
            and not (REPO_ROOT / path).exists()
            and not ignored(path)
        ):
            missing.append(token)
    assert not missing, f"{page.name} names files that are not in the repository: {missing}"


# --- the configuration reference against the schema `check` validates with ------------------


def schema_keys(cls: type) -> set[str]:
    """Every key `check` accepts in a section built from dataclass ``cls`` (relay/schema.py
    ``build``: a field's YAML key, unknown keys refused), nested sections as dotted keys."""
    hints = typing.get_type_hints(cls)
    keys: set[str] = set()
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        key = field.metadata.get("key", field.name)
        keys.add(key)
        for nested in dataclass_types(hints[field.name]):
            keys |= {f"{key}.{inner}" for inner in schema_keys(nested)}
    return keys


def dataclass_types(tp: typing.Any) -> list[type]:
    if dataclasses.is_dataclass(tp):
        return [typing.cast(type, tp)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(tp) for t in dataclass_types(arg)]
    return []


def reference_tables() -> dict[tuple[str, str], set[str]]:
    """The keys in the first column of each `| key | default | meaning |` table, by
    (## heading, ### heading or "")."""
    tables: dict[tuple[str, str], set[str]] = {}
    h2 = h3 = ""
    fence = in_keys = False
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        if fence:
            continue
        if not line.startswith("|"):
            in_keys = False
        if line.startswith("## "):
            h2, h3 = line[3:].strip(), ""
        elif line.startswith("### "):
            h3 = line[4:].strip()
        elif line.startswith("| key |"):
            in_keys = True
        elif in_keys and line.startswith("| `"):
            first = line.split("|")[1]
            tables.setdefault((h2, h3), set()).update(re.findall(r"`([^`]+)`", first))
    return tables


def sections() -> list[typing.Any]:
    """(the schema class, the reference's tables that document it)."""
    found = [
        pytest.param(ServerConfig, [("`server`", "")], id="server"),
        pytest.param(
            SqliteSpoolConfig, [("`spool`", "SQLite: `backend: sqlite`")], id="spool-sqlite"
        ),
        pytest.param(
            RedisSpoolConfig,
            [("`spool`", "Redis: `backend: redis`"), ("`spool`", "Redis behind Sentinel")],
            id="spool-redis",
        ),
        pytest.param(RouteConfig, [("`routes`", "")], id="routes"),
    ]
    for section, registry in (("sources", SOURCES), ("targets", TARGETS)):
        every = "Every source" if section == "sources" else "Every target"
        for kind, component in registry.items():
            found.append(
                pytest.param(
                    component.config_class,
                    [(f"`{section}`", every), (f"`{section}`", f"`{kind}`")],
                    id=f"{section}-{kind}",
                )
            )
    return found


@pytest.mark.parametrize(("config_class", "tables"), sections())
def test_the_reference_lists_every_key_check_accepts(
    config_class: type, tables: list[tuple[str, str]]
) -> None:
    documented = reference_tables()
    for table in tables:
        assert table in documented, f"docs/configuration.md has no table under {table}"
    listed = set().union(*(documented[t] for t in tables))
    accepted = schema_keys(config_class)
    assert not accepted - listed, f"undocumented keys: {sorted(accepted - listed)}"
    # The type's own table names only keys that exist (a shared table may name keys of a
    # kind it does not apply to, e.g. `type` values): no stale or misspelt key.
    own = documented[tables[-1]]
    assert not own - accepted, f"keys the schema does not accept: {sorted(own - accepted)}"


def reference_defaults(table: tuple[str, str]) -> dict[str, str]:
    """key → its default cell, for rows of one key in the table under ``table``."""
    h2, h3 = table
    defaults: dict[str, str] = {}
    current = ("", "")
    in_keys = False
    for line in REFERENCE.read_text().splitlines():
        if not line.startswith("|"):
            in_keys = False
        if line.startswith("## "):
            current = (line[3:].strip(), "")
        elif line.startswith("### "):
            current = (current[0], line[4:].strip())
        elif line.startswith("| key |"):
            in_keys = True
        elif in_keys and current == (h2, h3) and line.startswith("| `"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            keys = re.findall(r"`([^`]+)`", cells[0])
            if len(keys) == 1:
                defaults[keys[0]] = cells[1]
    return defaults


def schema_defaults(cls: type, prefix: str = "") -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    found: dict[str, typing.Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        key = prefix + field.metadata.get("key", field.name)
        if field.default is not dataclasses.MISSING:
            found[key] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            found[key] = field.default_factory()
        for nested in dataclass_types(hints[field.name]):
            found.update(schema_defaults(nested, f"{key}."))
    return found


def written(cell: str, default: typing.Any) -> typing.Any:
    """The value a default cell states, read like the config reads it; None when the cell is
    prose (``none``, ``on when cors is set``, ``500 (target-specific caps)``)."""
    literal = re.fullmatch(r"`([^`]*)`|(\d+)", cell)
    if not literal or dataclasses.is_dataclass(default):  # a section: its keys are rows too
        return None
    text = literal.group(1) if literal.group(1) is not None else literal.group(2)
    if isinstance(default, ByteSize):
        return parse_size(text, "")
    if isinstance(default, Duration):
        return parse_duration(text, "")
    if isinstance(default, bool):
        return {"true": True, "false": False}.get(text)
    if isinstance(default, int):
        return int(text)
    if isinstance(default, list | dict):
        return {"[]": [], "{}": {}}.get(text)
    return text.strip('"') if text.startswith('"') else text


@pytest.mark.parametrize(("config_class", "tables"), sections())
def test_the_reference_states_each_default_check_uses(
    config_class: type, tables: list[tuple[str, str]]
) -> None:
    """Where the default column gives a value, it is the schema's default."""
    defaults = schema_defaults(config_class)
    wrong = {}
    for table in tables:
        if table[1] in ("Every source", "Every target"):
            continue  # shared tables: a kind may have its own default (stated on its page)
        for key, cell in reference_defaults(table).items():
            if key not in defaults:
                continue
            stated = written(cell, defaults[key])
            if stated is not None and stated != defaults[key]:
                wrong[key] = (cell, defaults[key])
    assert not wrong, f"stated default ≠ the schema's: {wrong}"


# --- what the repository's own files say about where to look -------------------------------


def repository_text_files() -> list[Path]:
    """Every text file git tracks (fixtures, the npm clients and this file, which spells out the
    patterns it looks for, aside)."""
    listed = subprocess.run(
        ["git", "ls-files"], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    ).stdout.split()
    files = []
    for name in listed:
        path = REPO_ROOT / name
        if name.startswith(("tests/fixtures/", "tests/js/")) or path.suffix in (".png", ".lock"):
            continue
        if path.is_file() and path != Path(__file__).resolve():
            files.append(path)
    return files


# A Markdown file named in the repository is one a clone has, not a note kept beside it. Upstream
# pages a module cites by their path in the vendor's repository (http-v2.md) are lower case and
# outside docs/; a docs/ path or an upper-case name (README.md) must be a file here.
MARKDOWN_NAME = re.compile(r"(?<![\w/.-])(docs/[\w/.-]+\.md|[A-Z][A-Z0-9_-]+\.md)\b")
# Paths on the machine the code was written on, which no reader has.
MACHINE_PATH = re.compile("/" + "(?:work|root)/")


def test_every_markdown_file_the_repository_names_is_in_it() -> None:
    missing = []
    for path in repository_text_files():
        for name in MARKDOWN_NAME.findall(path.read_text(errors="replace")):
            if not (REPO_ROOT / name).exists():
                missing.append(f"{path.relative_to(REPO_ROOT)}: {name}")
    assert not missing, missing


def test_no_file_names_a_path_on_the_developers_machine() -> None:
    found = []
    for path in repository_text_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()}")
    assert not found, found


def test_no_file_speaks_of_the_projects_issues() -> None:
    """Code and config too: "the trap of issue 9" means nothing to a reader of a clone."""
    found = []
    for path in repository_text_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if re.search(r"\bissues? #?\d+", line, re.I):
                found.append(f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()}")
    assert not found, found


# --- config.example.yaml: what a user uncomments works -----------------------------------

# A commented line that is a config key (`#   type: segment`, `# - name: x`, `#   # retry_max:
# 10m`); prose such as `# RudderStack: your data plane URL` is not (config keys are lower case).
COMMENTED_KEY = re.compile(r"^(\s*)# (\s*)(?:# )?((?:- )?[a-z_][a-z0-9_]*:(?:\s|$).*)$")
EXAMPLE_ENV = {
    "RELAY_LISTEN": "127.0.0.1:8080",
    "RELAY_ADMIN_LISTEN": "127.0.0.1:9102",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/x",
    "HOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "STATSIG_SERVER_SECRET": "secret-example",
    "STATSIG_CLIENT_KEY": "client-example",
}


def uncomment(line: str) -> str:
    return COMMENTED_KEY.sub(r"\1\2\3", line)


class AnyVariable(dict[str, str]):
    """Every variable is set: to a plausible value where the field checks its form."""

    def __contains__(self, name: object) -> bool:
        return True

    def __getitem__(self, name: str) -> str:
        return dict.get(self, name) or EXAMPLE_ENV.get(name, "example")


def test_every_commented_stanza_of_the_example_config_passes_check(tmp_path: Path) -> None:
    """config.example.yaml's sources, targets and routes with every commented key uncommented
    (the delivery settings too) pass `check`, but for the two path pairs its comment names:
    no commented key is misspelt or stale, no commented route breaks a rule."""
    from relay.config import parse_config
    from relay.schema import ConfigError

    lines, section = [], ""
    for line in (REPO_ROOT / "config.example.yaml").read_text().splitlines():
        if top := re.match(r"(\w+):", line):
            section = top.group(1)
        if section in ("sources", "targets", "routes"):
            line = uncomment(line)
        lines.append(line)
    env = AnyVariable(STATE_DIRECTORY=str(tmp_path))
    try:
        config = parse_config("\n".join(lines), env, "config.example.yaml")
    except ConfigError as exc:
        errors = [str(e) for e in getattr(exc, "errors", [exc])]
        assert all("is already served by source" in e for e in errors), errors
        assert len(errors) == 1  # the first collision: every other check passed
    else:
        pytest.fail(f"no path collision: the comment in the file is stale ({config.sources})")


def yaml_blocks() -> list[typing.Any]:
    """Every ```yaml block of the README and the docs pages, with its commented keys."""
    blocks = []
    for page in [README, *PAGES]:
        text = page.read_text()
        for block in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.M | re.S):
            line = text[: block.start()].count("\n") + 1
            name = f"{page.relative_to(REPO_ROOT).as_posix()}:{line}"
            blocks.append(pytest.param(page, block.group(1), id=name))
    return blocks


# Errors about what a key is called or which kind it names; a fragment on a page may well leave
# out the source its route reads from, or show two alternatives (tenant / url) at once.
NAMING = ("unknown key", "unknown type", "unknown preset", "required; one of")


@pytest.mark.parametrize(("page", "block"), yaml_blocks())
def test_every_key_a_page_shows_is_one_check_accepts(
    page: Path, block: str, tmp_path: Path
) -> None:
    """A YAML example on a page (its commented keys too) uses keys and types that exist."""
    from relay.config import parse_config
    from relay.schema import ConfigError

    text = "\n".join(uncomment(line) for line in block.splitlines())
    try:
        parse_config(text, AnyVariable(STATE_DIRECTORY=str(tmp_path)), page.name)
    except ConfigError as exc:
        errors = [str(e) for e in getattr(exc, "errors", [exc])]
        naming = [e for e in errors if any(n in e for n in NAMING) or "valid YAML" in e]
        assert not naming, naming


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_a_commented_key_on_a_target_page_shows_the_targets_default(kind: str) -> None:
    """On a target's page, `# batch_max_events: 1000` tells what the key is when left out: the
    value shown is that kind's own default (keys without one, like `# url: ...` where `tenant`
    is the other choice, are examples)."""
    import yaml

    defaults = schema_defaults(TARGETS[kind].config_class)
    page = DOCS / "targets" / f"{kind}.md"
    wrong = {}
    for block in re.findall(r"^```ya?ml\n(.*?)^```", page.read_text(), re.M | re.S):
        for line in block.splitlines():
            if uncomment(line) == line or re.match(r"\s*(?:# )?- ", line):
                continue
            key, value = next(iter(yaml.safe_load(uncomment(line).strip()).items()))
            default = defaults.get(key)
            if default is None or value is None:
                continue
            stated = written(f"`{value}`", default) if not isinstance(value, bool) else value
            if stated != default:
                wrong[key] = (value, default)
    assert not wrong, f"docs/targets/{kind}.md: shown ≠ the default: {wrong}"


# --- the commands the pages show ---------------------------------------------------------


def parser_tree() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """(command, action) → its parser, from the parser `statsig-relay` itself builds."""
    from relay.cli import build_parser

    tree: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        tree[path] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, (*path, name))

    walk(build_parser(), ())
    return tree


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


# Where commands are shown: the pages, and what ships (unit, image, alert annotations).
SHOWN_IN = [
    README,
    BENCH_README,
    *PAGES,
    REPO_ROOT / "config.example.yaml",
    *sorted((REPO_ROOT / "examples").glob("*.yaml")),
    REPO_ROOT / "systemd" / "statsig-relay.service",
    REPO_ROOT / "Dockerfile",
    REPO_ROOT / "deploy" / "prometheus" / "alerts.yml",
]
# `statsig-relay` (or `python -m relay`) where a shell would run it: first in a code span, a
# line, or after `$`, `=`, `&&`, `;`, `|` or a path; the words after it up to the end of the
# command (a pipe, a comment, the end of the code span).
INVOCATION = re.compile(
    r"(?:^|[`$=;&|]\s*|\s(?=\.venv/)|\s(?=/opt/))(?:[\w./-]*/)?"
    r"(?:statsig-relay|python3? -m relay)\b(?![./:\w-])((?:[^`|#;&\n]|\\\|)*)",
    re.M,
)


def code_lines(path: Path) -> list[tuple[int, str]]:
    """A page's code: the lines of its fenced blocks and its `code spans`, numbered; every line
    of a file that is not Markdown (comments included: they show commands too)."""
    lines = path.read_text().splitlines()
    if path.suffix != ".md":
        return list(enumerate(lines, 1))
    code, fence = [], False
    for n, line in enumerate(lines, 1):
        if line.startswith("```"):
            fence = not fence
        elif fence:
            code.append((n, line))
        else:
            code += [(n, span) for span in re.findall(r"`([^`]+)`", line)]
    return code


def invocations() -> list[tuple[str, str]]:
    """(where, the words after the executable) for each command shown."""
    found = []
    for path in SHOWN_IN:
        for n, line in code_lines(path):
            for match in INVOCATION.finditer(line):
                found.append((f"{path.relative_to(REPO_ROOT)}:{n}", match.group(1)))
    return found


def test_every_command_and_option_a_page_shows_exists() -> None:
    tree = parser_tree()
    wrong = []
    seen = 0
    for where, words in invocations():
        tokens = words.replace("\\|", " ").split()
        path: tuple[str, ...] = ()
        while tokens and not tokens[0].startswith("-") and (*path, tokens[0]) in tree:
            path = (*path, tokens.pop(0))
        if tokens and tokens[0] in ("COMMAND", "ACTION"):  # `statsig-relay COMMAND --help`
            continue
        if path == () and tokens and not tokens[0].startswith("-"):
            if re.fullmatch(r"[a-z]+", tokens[0]):
                wrong.append(f"{where}: no command {tokens[0]!r}")
            continue
        if len(path) == 1 and path[0] in ("dlq", "spool") and tokens:
            # `dlq list|show|export|replay|purge`: each one an action
            for name in re.findall(r"^[a-z|]+$", tokens[0].replace("\\", "")):
                wrong += [f"{where}: no action {path[0]} {a}" for a in name.split("|")
                          if (path[0], a) not in tree]  # fmt: skip
        options = option_strings(tree[path])
        for token in tokens:
            option = re.match(r"\[?(--?[a-zA-Z][\w-]*)", token)
            if option and option.group(1) not in options:
                wrong.append(f"{where}: {' '.join(path) or 'statsig-relay'} has no {option[1]}")
        seen += 1
    assert seen > 40, seen  # the pattern still finds the commands
    assert not wrong, wrong


def test_commands_md_names_every_command_and_action() -> None:
    text = (DOCS / "commands.md").read_text().replace("\\|", "|")
    missing = []
    for path in parser_tree():
        if not path:
            continue
        shown = re.compile(rf"statsig-relay {path[0]}\b" + (
            rf" (?:[a-z]+\|)*{path[1]}\b" if len(path) > 1 else ""))  # fmt: skip
        if not shown.search(text):
            missing.append(" ".join(path))
    assert not missing, f"docs/commands.md does not show: {missing}"


def test_every_option_is_documented() -> None:
    """Each option of each command is named in Commands or Operations (the DLQ's filters)."""
    text = (DOCS / "commands.md").read_text() + (DOCS / "operations.md").read_text()
    missing = set()
    for path, parser in parser_tree().items():
        for action in parser._actions:
            names = set(action.option_strings) - {"-h", "--help"}
            if names and not any(
                re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) for name in names
            ):
                missing.add(f"{' '.join(path) or 'statsig-relay'} {'/'.join(sorted(names))}")
    assert not missing, sorted(missing)


# --- the metrics the pages and the shipped dashboard and alerts name -------------------------

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported() -> dict[str, set[str]]:
    """Every sample name the relay's registry can export → its label names."""
    from relay.metrics import RelayMetrics

    names: dict[str, set[str]] = {}
    for collector in set(RelayMetrics().registry._collector_to_names):
        for family in collector.describe():
            labels = set(getattr(collector, "_labelnames", ()))
            labels |= {"job", "instance"}  # added by Prometheus to every series it scrapes
            for suffix in SUFFIXES[family.type]:
                names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
            if family.type == "histogram":  # a page names the histogram itself
                names[family.name] = labels
    return names


METRIC_NAMED = re.compile(r"\brelay_[a-z_]+\b")
SELECTOR = re.compile(r"\b(relay_[a-z_]+)\{([^}]*)\}")
NAMES_METRICS = [
    README,
    BENCH_README,
    *PAGES,
    *sorted((REPO_ROOT / "deploy").rglob("*.y*ml")),
    *sorted((REPO_ROOT / "deploy").rglob("*.json")),
]


@pytest.mark.parametrize("path", NAMES_METRICS, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_every_metric_named_is_one_the_relay_exports(path: Path) -> None:
    """A metric (and the labels of a selector) that a page, the dashboard or an alert names is
    one the relay's registry exports; `relay_events_` as a prefix (for grep) names some."""
    names = exported()
    text = path.read_text()
    unknown = [
        name
        for name in METRIC_NAMED.findall(text)
        if name not in names and not (name.endswith("_") and any(n.startswith(name) for n in names))
    ]
    assert not unknown, unknown
    wrong_labels = []
    for name, selector in SELECTOR.findall(text):
        for label in re.findall(r"(\w+)\s*(?:=~|!=|!~|=)", selector):
            if name in names and label not in names[name]:
                wrong_labels.append(f"{name}{{{label}}}")
    assert not wrong_labels, wrong_labels


def test_the_metrics_table_gives_each_metrics_labels() -> None:
    """docs/operations.md's table: every metric the relay exports, with its labels."""
    names = exported()
    documented = set()
    for row in re.findall(r"^\| (`relay_.*)$", (DOCS / "operations.md").read_text(), re.M):
        cells = [c.strip() for c in row.split("|")]
        labels = {label.strip() for label in cells[1].split(",") if label.strip()}
        for name in re.findall(r"`(relay_[a-z_]+)`", cells[0]):
            documented.add(name)
            assert name in names, name
            assert labels == names[name] - {"job", "instance"}, (name, labels)
    families = {n for n in names if not n.endswith(("_bucket", "_sum", "_count"))}
    assert families - documented == set()


# --- the layout in docs/development.md -------------------------------------------------------


def layout() -> list[tuple[str, str]]:
    """(top-level entry, the text describing it) from the Layout block of Development."""
    text = (DOCS / "development.md").read_text()
    block = re.search(r"^## Layout\n+```\n(.*?)^```", text, re.M | re.S)
    assert block, "docs/development.md has no Layout block"
    entries: list[tuple[str, str]] = []
    for line in block.group(1).splitlines():
        if line[:1].strip():
            name, _, rest = line.partition(" ")
            entries.append((name, rest))
        elif entries:
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + line)
    return entries


def test_the_layout_names_files_that_exist() -> None:
    """Each entry is in the repository, and each file it names is in that entry's folder (or,
    given from the top, in the repository)."""
    missing = []
    for entry, text in layout():
        if not (REPO_ROOT / entry).exists():
            missing.append(entry)
            continue
        if not entry.endswith("/"):
            continue
        here = [p.relative_to(REPO_ROOT / entry).as_posix() for p in (REPO_ROOT / entry).rglob("*")]
        for name in re.findall(r"(?<![\w./-])([\w./-]+\.(?:py|sh|lua|md|png|conf))\b", text):
            in_repo = (REPO_ROOT / name).exists()  # README.md, tests/test_status.py
            if not in_repo and not any(p == name or p.endswith(f"/{name}") for p in here):
                missing.append(f"{entry}{name}")
    assert not missing, f"docs/development.md's layout names what is not there: {missing}"


def test_the_layout_names_every_module() -> None:
    text = " ".join(f"{entry} {rest}" for entry, rest in layout())
    unnamed = [
        module.relative_to(REPO_ROOT).as_posix()
        for module in sorted((REPO_ROOT / "relay").rglob("*.py"))
        if module.name not in ("__init__.py", "__main__.py")
        and not re.search(rf"(?<![\w-]){re.escape(module.name)}\b", text)
    ]
    assert not unnamed, f"docs/development.md's layout leaves out: {unnamed}"


def test_the_readme_layout_names_where_an_event_enters_waits_and_leaves() -> None:
    text = README.read_text()
    block = re.search(r"^## Layout\n.*?^```\n(.*?)^```", text, re.M | re.S)
    assert block, "README.md has no Layout block"
    paths = [line.split()[0] for line in block.group(1).splitlines() if line.strip()]
    missing = [path for path in paths if not (REPO_ROOT / path).exists()]
    assert not missing, f"README.md's layout names what is not there: {missing}"
    for role in (
        "where an event enters",
        "where it is filtered",
        "where it waits",
        "where it leaves",
    ):
        assert role in block.group(1), f"README.md's layout does not say {role}"
