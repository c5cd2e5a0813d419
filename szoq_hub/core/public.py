"""Hiding this machine's paths before anything is published (a mask's recipe, a delta's settings,
a run's config and card): the one place that decides what is local and what it becomes."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from .files import path_exists


def is_local_path(value: object) -> bool:
    """True for an absolute (or `~`) path: something private to this machine."""
    return isinstance(value, str) and (os.path.isabs(value) or value.startswith("~"))


def public(value: object) -> object:
    """A JSON value with every absolute local path reduced to its file or folder name."""
    if is_local_path(value):
        return Path(value).name or value
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public(v) for v in value]
    return value


def public_word(word: str) -> str:
    """A command-line word safe to publish: a local path (absolute, `~`, or an existing relative
    path with a folder part), alone or as `--key=PATH`, becomes its file or folder name."""
    key, eq, value = word.partition("=")
    if eq and key.startswith("--"):
        return f"{key}={public_word(value)}"
    if is_local_path(word) or (os.sep in word and path_exists(word)):
        return Path(word).name or word
    return word


def command_words(command: str | None) -> list[str]:
    """The words of a recorded shell command (split on spaces where it does not parse)."""
    try:
        return shlex.split(command or "")
    except ValueError:
        return (command or "").split()


def local_paths(value: object) -> list[str]:
    """The absolute local paths a JSON value records (at any depth; `--key=PATH` words too), longest first."""
    found: set[str] = set()

    def walk(v: object) -> None:
        if isinstance(v, str):
            path = v.partition("=")[2] if v.startswith("--") else v
            if is_local_path(path):
                found.add(path)
        elif isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, list):
            for item in v:
                walk(item)
    walk(value)
    return sorted(found, key=len, reverse=True)


def public_text(text: str, paths: list[str]) -> str:
    """Text with each of `paths` (longest first, from `local_paths`) reduced to its name."""
    for path in paths:
        text = text.replace(path, Path(path).name or path)
    return text
