"""Event-name rename rules: presets, maps and snake_case, shared by routes and sources.

A route's ``rename:`` and a source's ``rename:`` take the same forms (a preset name,
``{preset, map, snake_case}``, or a plain map of old → new names) and compile to the same
function, so one rule means the same everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .schema import ConfigError

# Event-name presets (the Datafly mapping; listed in docs/configuration.md). Names not listed
# pass unchanged.
RENAME_PRESETS: dict[str, dict[str, str]] = {
    "default": {
        "page": "page_view",
        "Signed Up": "sign_up",
        "Logged In": "login",
        "Products Searched": "search",
    },
    "retail": {
        "page": "page_view",
        "Products Searched": "search",
        "Product Viewed": "view_item",
        "Product Added": "add_to_cart",
        "Checkout Started": "begin_checkout",
        "Order Completed": "purchase",
    },
}

_CACHE_LIMIT = 10_000


@dataclass(kw_only=True)
class RenameConfig:
    preset: str | None = None  # default | retail
    map: dict[str, str] = field(default_factory=dict)  # wins over the preset
    snake_case: bool = False  # names neither map nor preset knows become snake_case

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in RENAME_PRESETS:
            raise ConfigError(
                "preset", f"unknown preset {self.preset!r}; one of {', '.join(RENAME_PRESETS)}"
            )


# The forms a ``rename:`` setting takes in the config.
RenameSetting = str | RenameConfig | dict[str, str] | None


def rename_config(setting: RenameSetting) -> RenameConfig | None:
    """The one shape of every form; raises ConfigError('rename', ...) for an unknown preset."""
    if isinstance(setting, str):
        if setting not in RENAME_PRESETS:
            raise ConfigError(
                "rename", f"unknown preset {setting!r}; one of {', '.join(RENAME_PRESETS)}"
            )
        return RenameConfig(preset=setting)
    if isinstance(setting, dict):
        return RenameConfig(map=setting)
    return setting


_SNAKE_1 = re.compile(r"(.)([A-Z][a-z]+)")
_SNAKE_2 = re.compile(r"([a-z0-9])([A-Z])")
_NON_WORD = re.compile(r"[^0-9a-zA-Z]+")


def snake_case(name: str) -> str:
    """``Order Completed`` → ``order_completed``; ``productViewed`` → ``product_viewed``."""
    name = _SNAKE_2.sub(r"\1_\2", _SNAKE_1.sub(r"\1_\2", name))
    return _NON_WORD.sub("_", name).strip("_").lower()


def compile_renamer(config: RenameConfig | None) -> Callable[[str], str] | None:
    """A function old name → new name, or None when nothing is renamed."""
    if config is None:
        return None
    table = dict(RENAME_PRESETS.get(config.preset or "", {}))
    table.update(config.map)
    if config.snake_case:
        cache: dict[str, str] = {}

        def rename(name: str) -> str:
            new = cache.get(name)
            if new is None:
                new = table.get(name) or snake_case(name)
                if len(cache) < _CACHE_LIMIT:
                    cache[name] = new
            return new

        return rename
    return lambda name: table.get(name, name)


def compile_rename(setting: RenameSetting) -> Callable[[str], str] | None:
    """The renamer of a ``rename:`` setting in any of its forms."""
    return compile_renamer(rename_config(setting))
