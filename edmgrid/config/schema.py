"""The JSON Schema of a space file, for editors (``edmgrid schema``).

It is the ``SpaceFile`` schema with ``base`` typed as a job (every field optional, since
``grid`` and ``zip`` may set any), the choices registered when it is made (plugins included),
``preset`` keys (with the preset names) where presets apply, and ``anyOf`` for the unions: a
preset may leave a choice's tag unset. Grid keys are dotted paths and are not checked.
"""

from __future__ import annotations

from typing import Any

from edmgrid.config.job import JobSpec
from edmgrid.config.presets import PRESETS
from edmgrid.config.space import SpaceFile

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def space_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a space file with the choices registered now."""
    job = JobSpec.model_json_schema()
    space = SpaceFile.model_json_schema()
    defs = {**job.pop("$defs", {}), **space.pop("$defs", {})}
    job.pop("required", None)
    job["description"] = "One job; grid and zip may set any field, so none is required here."
    space["properties"]["base"] = job
    for key, presets in PRESETS.items():
        for name in _targets(job, defs, key):
            defs[name]["properties"]["preset"] = _preset(key, list(presets))
    schema = {"$schema": DIALECT, **_any_of(space), "$defs": _any_of(defs)}
    return schema


def _targets(
    node: Any, defs: dict[str, Any], key: str, seen: frozenset[str] = frozenset()
) -> set[str]:
    """Names of the definitions that the property ``key`` may hold anywhere below ``node``."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= _targets(item, defs, key, seen)
    elif isinstance(node, dict):
        if key in node.get("properties", {}):
            found |= _refs(node["properties"][key])
        for value in node.values():
            found |= _targets(value, defs, key, seen)
        ref = node.get("$ref")
        if isinstance(ref, str) and (name := ref.rsplit("/", 1)[-1]) not in seen:
            found |= _targets(defs[name], defs, key, seen | {name})
    return found


def _refs(node: dict[str, Any]) -> set[str]:
    """The definitions a property refers to, directly or as members of a union."""
    if "$ref" in node:
        return {node["$ref"].rsplit("/", 1)[-1]}
    members = node.get("oneOf", node.get("anyOf", []))
    return {m["$ref"].rsplit("/", 1)[-1] for m in members if "$ref" in m}


def _preset(key: str, names: list[str]) -> dict[str, Any]:
    one = {"enum": names}
    return {
        "anyOf": [one, {"type": "array", "items": one}],
        "description": f"a {key} preset (or a list, merged in order); keys beside it override it",
    }


def _any_of(node: Any) -> Any:
    """``node`` with every ``oneOf`` as ``anyOf`` (and the discriminator mappings dropped)."""
    if isinstance(node, list):
        return [_any_of(v) for v in node]
    if isinstance(node, dict):
        return {
            ("anyOf" if k == "oneOf" else k): _any_of(v)
            for k, v in node.items()
            if k != "discriminator"
        }
    return node
