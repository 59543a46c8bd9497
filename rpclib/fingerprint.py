"""Fingerprints: catch schema and interface changes that forgot a version bump.

``object_fingerprints()`` maps each registered object to ``"VERSION-<hash>"``,
the hash covering its name, field names and field ``describe()`` strings and
whether it overrides ``obj_make_compatible``. ``interface_fingerprints()``
maps each endpoint's ``"<namespace>@<version>"`` to a hash of its public
methods' signatures. Check the tables into the repository and compare them in
a test (:func:`assert_fingerprints`) or in CI::

    python -m rpclib.fingerprint --objects myapp.objects --endpoints myapp.rpc:ENDPOINTS \\
        --write tests/fingerprints.json      # after an intended change (and bump)
    python -m rpclib.fingerprint --objects myapp.objects --endpoints myapp.rpc:ENDPOINTS \\
        --check tests/fingerprints.json      # in CI: exit 1 listing the problems

Hashes are sha256 over text built from names and reprs only, so they are the
same in every process and on every machine.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import FunctionType
from typing import Any

from rpclib import console
from rpclib.objects.base import Registry, VersionedObject, default_registry

__all__ = [
    "assert_fingerprints",
    "check_fingerprints",
    "interface_fingerprints",
    "main",
    "object_fingerprints",
]

_HASH_CHARS = 32
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_CLI = "python -m rpclib.fingerprint --objects MODULES [--endpoints MODULE:ATTR]"
_DEFAULT_HINT = f"{_CLI} --write TABLE"


def _digest(lines: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:_HASH_CHARS]


# --- objects ---------------------------------------------------------------------


def object_schema(cls: type[VersionedObject]) -> list[str]:
    """The lines an object fingerprint hashes (handy to diff when one changes)."""
    lines = [f"object {cls.obj_name()}"]
    lines += [f"field {name}: {cls.fields[name].describe()}" for name in sorted(cls.fields)]
    custom = cls.obj_make_compatible is not VersionedObject.obj_make_compatible
    lines.append(f"obj_make_compatible: {'overridden' if custom else 'inherited'}")
    return lines


def object_fingerprints(registry: Registry | None = None) -> dict[str, str]:
    """``{"Name": "VERSION-<hash>"}`` for every class in ``registry`` (default registry)."""
    reg = default_registry if registry is None else registry
    return {cls.obj_name(): f"{cls.VERSION}-{_digest(object_schema(cls))}" for cls in reg}


# --- interfaces ------------------------------------------------------------------


def _annotation(value: Any) -> str:
    if isinstance(value, str):
        return value
    return _ADDRESS.sub("", inspect.formatannotation(value))


def _signature_line(name: str, member: Any, drop_first: bool) -> str:
    try:
        sig = inspect.signature(member)
    except (TypeError, ValueError):
        return f"{name}(<no signature>)"
    params = list(sig.parameters.values())
    if drop_first and params:
        params = params[1:]
    parts = []
    for param in params:
        text = f"{param.name}:{param.kind.name}"
        if param.annotation is not inspect.Parameter.empty:
            text += f":{_annotation(param.annotation)}"
        if param.default is not inspect.Parameter.empty:
            text += f"={_ADDRESS.sub('', repr(param.default))}"
        parts.append(text)
    line = f"{name}({', '.join(parts)})"
    if sig.return_annotation is not inspect.Signature.empty:
        line += f" -> {_annotation(sig.return_annotation)}"
    return line


def interface_schema(endpoint: object) -> list[str]:
    """The lines an interface fingerprint hashes: one per public method."""
    is_class = isinstance(endpoint, type)
    lines = []
    for name in sorted(dir(endpoint)):
        if name.startswith("_") or name == "target":
            continue
        try:
            member = getattr(endpoint, name)
        except AttributeError:
            continue
        if not callable(member):
            continue
        # On a class, plain functions are unbound: their first parameter is self.
        drop_first = is_class and isinstance(inspect.getattr_static(endpoint, name), FunctionType)
        lines.append(_signature_line(name, member, drop_first))
    return lines


def interface_key(endpoint: object) -> str:
    """``"<namespace>@<version>"`` from ``endpoint.target`` (``"@1.0"`` by default)."""
    target = getattr(endpoint, "target", None)
    namespace = getattr(target, "namespace", None)
    version = getattr(target, "version", None) or "1.0"
    return f"{namespace or ''}@{version}"


def interface_fingerprints(endpoints: Iterable[object]) -> dict[str, str]:
    """``{"<namespace>@<version>": "<hash>"}`` for RPC endpoint objects (or classes)."""
    table: dict[str, str] = {}
    for endpoint in endpoints:
        key = interface_key(endpoint)
        if key in table:
            raise ValueError(f"two endpoints implement namespace/version {key!r}")
        table[key] = _digest(interface_schema(endpoint))
    return table


# --- checking ----------------------------------------------------------------------


def _split(value: str) -> tuple[str, str]:
    version, sep, digest = value.partition("-")
    return (version, digest) if sep else ("", value)


def _label(key: str) -> str:
    if "@" in key:
        namespace, _, version = key.rpartition("@")
        return f"interface {namespace or '(default namespace)'} {version}"
    return key


def check_fingerprints(
    actual: Mapping[str, str], expected: Mapping[str, str], *, hint: str = _DEFAULT_HINT
) -> list[str]:
    """Human-readable problems between the current and the recorded table ([] if none)."""
    regen = f"regenerate with `{hint}`"
    problems = []
    for key in sorted(expected.keys() - actual.keys()):
        problems.append(
            f"{_label(key)}: recorded but no longer present (removed or renamed?) — "
            f"if intended, {regen}"
        )
    for key in sorted(actual.keys() - expected.keys()):
        problems.append(f"{_label(key)}: new, not in the recorded table — {regen}")
    for key in sorted(actual.keys() & expected.keys()):
        if actual[key] == expected[key]:
            continue
        if "@" in key:
            version = key.rpartition("@")[2]
            problems.append(
                f"{_label(key)}: methods changed but the version is still {version} — "
                f"bump the target version and {regen}"
            )
            continue
        now_version, now_hash = _split(actual[key])
        was_version, was_hash = _split(expected[key])
        if now_version == was_version:
            problems.append(
                f"{key}: fields changed but VERSION is still {now_version} — "
                f"bump the version and {regen}"
            )
        elif now_hash == was_hash:
            problems.append(
                f"{key}: VERSION changed from {was_version} to {now_version} with the same "
                f"fields — {regen}"
            )
        else:
            problems.append(
                f"{key}: changed and now at VERSION {now_version} (recorded {was_version}) — "
                f"{regen}"
            )
    return problems


def load_table(path: str | Path) -> dict[str, str]:
    """Read a fingerprint table written by :func:`write_table` / the CLI."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(f"{path}: not a fingerprint table (a JSON object of strings)")
    return data


def write_table(table: Mapping[str, str], path: str | Path) -> None:
    """Write ``table`` as sorted, indented JSON (stable diffs)."""
    text = json.dumps(dict(sorted(table.items())), indent=2) + "\n"
    Path(path).write_text(text, encoding="utf-8")


def assert_fingerprints(actual: Mapping[str, str], expected_path: str | Path) -> None:
    """For tests: raise AssertionError listing every difference from the recorded table."""
    hint = f"{_CLI} --write {expected_path}"
    try:
        expected = load_table(expected_path)
    except FileNotFoundError:
        raise AssertionError(
            f"no fingerprint table at {expected_path}; create it with `{hint}`"
        ) from None
    problems = check_fingerprints(actual, expected, hint=hint)
    if problems:
        raise AssertionError(
            f"{len(problems)} fingerprint problem(s) against {expected_path}:\n  - "
            + "\n  - ".join(problems)
        )


# --- command line ------------------------------------------------------------------


def _split_list(values: Sequence[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _load_endpoints(spec: str) -> list[object]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise ValueError(f"--endpoints wants MODULE:ATTR, got {spec!r}")
    value: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        value = getattr(value, part)
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]


def main(argv: Sequence[str] | None = None, *, out: Callable[[str], object] = print) -> int:
    """``python -m rpclib.fingerprint``: write or check a fingerprint table."""
    parser = argparse.ArgumentParser(
        prog="python -m rpclib.fingerprint",
        description="Write or check the fingerprints of versioned objects and RPC interfaces.",
    )
    parser.add_argument(
        "--objects",
        action="append",
        default=[],
        metavar="MODULE[,MODULE]",
        help="modules to import so that their object classes register (repeatable)",
    )
    parser.add_argument(
        "--endpoints",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="an endpoint object, class, or list of them (repeatable)",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", metavar="PATH", help="write the table to PATH")
    action.add_argument("--check", metavar="PATH", help="compare with the table at PATH")
    console.add_standard_options(parser)
    args = parser.parse_args(argv)
    prog = parser.prog
    return console.run(prog, lambda: _fingerprint(parser, args, out), debug=args.debug)


def _fingerprint(
    parser: argparse.ArgumentParser, args: argparse.Namespace, out: Callable[[str], object]
) -> int:
    """Write or check the table ``args`` asks for; 1 if the check finds problems."""
    modules = _split_list(args.objects)
    endpoint_specs = _split_list(args.endpoints)
    if not modules and not endpoint_specs:
        parser.error("give --objects and/or --endpoints")
    try:
        for module in modules:
            importlib.import_module(module)
        endpoints = [ep for spec in endpoint_specs for ep in _load_endpoints(spec)]
    except (ImportError, AttributeError, ValueError) as exc:
        parser.error(str(exc))

    table = object_fingerprints() if modules else {}
    table.update(interface_fingerprints(endpoints))

    parts = []
    if modules:
        parts.append(f"--objects {','.join(modules)}")
    parts += [f"--endpoints {spec}" for spec in endpoint_specs]
    if args.write:
        with console.setting(f"--write {args.write}", (OSError,)):
            write_table(table, args.write)
        out(f"wrote {len(table)} fingerprints to {args.write}")
        return 0
    hint = f"python -m rpclib.fingerprint {' '.join(parts)} --write {args.check}"
    try:
        expected = load_table(args.check)
    except (OSError, ValueError) as exc:
        raise console.UsageError(f"--check: cannot read {args.check}: {exc}") from exc
    problems = check_fingerprints(table, expected, hint=hint)
    if problems:
        print(f"{len(problems)} fingerprint problem(s) against {args.check}:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    out(f"{len(table)} fingerprints match {args.check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
