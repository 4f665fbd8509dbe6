"""One registry per design axis: a choice name maps to a Pydantic schema that implements it.

A choice is one class in one file::

    @schedules.register
    class VE(Schedule):
        name: Literal["ve"] = "ve"
        def sigma(self, t): return t.sqrt()

Schemas are validated as a discriminated union on the registry's key (``name`` for axes,
``arch`` for networks), so an unknown choice is an error that lists the registered ones. The
union is read from the registry whenever a schema is built, so choices that a plugin registers
later take part once the schemas are rebuilt (``edmgrid.config.plugins``).

A choice defined outside the ``edmgrid`` package (a plugin's) serialises with one more key,
``plugin: "MODULE:SHA"``, the module and a hash of its source file: every content hash that
includes the choice (job ids, training and cache keys) changes when that file does.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from functools import cache
from typing import Annotated, Any, ClassVar, TypeVar, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    GetCoreSchemaHandler,
    SerializerFunctionWrapHandler,
    Tag,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import CoreSchema, PydanticCustomError

T = TypeVar("T", bound=type[BaseModel])


class Strict(BaseModel):
    """A schema whose errors say the fix: unknown keys list the valid ones; NaN is refused.

    ``+inf`` stays valid where a field's bounds allow it (``S_max``); NaN never is, since it
    passes no comparison and would only surface as non-finite samples.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        data = cls._recorded_plugin(data)
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError(
                        "unknown_key",
                        "unknown key '{key}'; valid keys: {valid}",
                        {"key": str(key), "valid": ", ".join(cls.model_fields)},
                    )
        return data

    @classmethod
    def _recorded_plugin(cls, data: Any) -> Any:
        """``data`` without the plugin key of a recorded plugin choice (see ``Choice``)."""
        return data

    @field_validator("*", mode="wrap")
    @classmethod
    def _not_nan(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # before parsing (so bounds do not report NaN as "not > 0") and after ("nan" strings)
        if _is_nan(value) or _is_nan(value := handler(value)):
            raise ValueError("NaN is not a number; give a finite value")
        return value


def _is_nan(value: Any) -> bool:
    """A float NaN, or a list or tuple holding one."""
    if isinstance(value, list | tuple):
        return any(_is_nan(v) for v in value)
    return isinstance(value, float) and math.isnan(value)


#: The key under which a plugin choice records its module and source hash.
PLUGIN_KEY = "plugin"

#: The entry point group in which installed packages name their plugin modules.
ENTRY_POINTS = "edmgrid.choices"


@cache
def plugin_origin(cls: type) -> str | None:
    """``MODULE:SHA`` of a class defined outside edmgrid (SHA: 12 hex digits of SHA-256 of its
    source file, read when first asked, i.e. when the plugin is imported); None for edmgrid's."""
    module = cls.__module__
    if module == "edmgrid" or module.startswith("edmgrid."):
        return None
    try:
        source = inspect.getsourcefile(cls)
    except TypeError:  # defined in __main__ or a notebook: no file to hash
        source = None
    if source is None:
        return module
    with open(source, "rb") as f:
        return f"{module}:{hashlib.sha256(f.read()).hexdigest()[:12]}"


class Choice(Strict):
    """Base of every registered choice: frozen, and unknown fields are errors.

    A plugin's choice (defined outside edmgrid) serialises with ``plugin: MODULE:SHA``; reading
    such a record back checks that the loaded plugin is the one that made it.
    """

    model_config = ConfigDict(frozen=True, protected_namespaces=(), ser_json_inf_nan="constants")

    #: Fields naming local files or folders the choice reads; ``edmgrid run`` checks they exist.
    input_paths: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _with_plugin(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        origin = plugin_origin(type(self))
        if origin is not None and isinstance(data, dict):
            data[PLUGIN_KEY] = origin
        return data

    @classmethod
    def _recorded_plugin(cls, data: Any) -> Any:
        if not isinstance(data, dict) or PLUGIN_KEY not in data:
            return data
        loaded = plugin_origin(cls)
        if loaded is None:  # a built-in choice has no such key: report it as unknown
            return data
        if data[PLUGIN_KEY] != loaded:
            raise PydanticCustomError(
                "plugin_changed",
                "recorded with plugin {recorded}, but the loaded plugin is {loaded} (its source "
                "changed): restore that version, or run the space again for new results",
                {"recorded": str(data[PLUGIN_KEY]), "loaded": loaded},
            )
        return {k: v for k, v in data.items() if k != PLUGIN_KEY}


class Registry:
    """Maps the choice names of one axis to their schema classes."""

    def __init__(self, axis: str, doc: str, key: str = "name") -> None:
        self.axis, self.doc, self.key = axis, doc, key
        self._choices: dict[str, type[BaseModel]] = {}

    def register(self, cls: T) -> T:
        """Add the choice ``cls`` under the default of its key field (a class decorator)."""
        fields = cls.model_fields  # type: ignore[call-overload]
        field = fields.get(self.key)
        name = None if field is None else field.default
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"{self.axis}: {cls.__name__} needs a default for its '{self.key}' field, e.g. "
                f"{self.key}: Literal['my_{self.axis}'] = 'my_{self.axis}'"
            )
        if name in self._choices:
            raise ValueError(
                f"{self.axis}: {cls.__name__} takes the name {name!r} of "
                f"{self._choices[name].__module__}.{self._choices[name].__name__}; rename it"
            )
        if PLUGIN_KEY in fields:
            raise ValueError(
                f"{self.axis}: {cls.__name__}: the field name '{PLUGIN_KEY}' is reserved"
            )
        self._choices[name] = cls
        return cls

    def __getitem__(self, name: str) -> type[BaseModel]:
        return self._choices[name]

    def __contains__(self, name: object) -> bool:
        return name in self._choices

    @property
    def names(self) -> list[str]:
        return list(self._choices)

    def _tag(self, value: Any) -> str | None:
        raw = value.get(self.key) if isinstance(value, dict) else getattr(value, self.key, None)
        return raw if isinstance(raw, str) and raw in self._choices else None

    def union(self) -> Any:
        """The type of a field that takes one of the choices: their discriminated union as
        registered when a schema using it is built (or rebuilt)."""
        return Annotated[Any, _Choices(self)]

    def tagged_union(self) -> Any:
        """The discriminated union of the choices registered now."""
        members = tuple(Annotated[cls, Tag(name)] for name, cls in self._choices.items())
        valid = ", ".join(self._choices)
        tag = Discriminator(
            self._tag,
            custom_error_type="unknown_choice",
            custom_error_message=f"{self.axis} needs '{self.key}: CHOICE'; valid choices: {valid}",
        )
        return Annotated[Union[members], tag]  # noqa: UP007

    def describe(self) -> dict[str, dict[str, Any]]:
        """Every choice with its parameters and their defaults (for ``edmgrid axes``)."""
        out: dict[str, dict[str, Any]] = {}
        for name, cls in self._choices.items():
            params = {
                field: (None if info.is_required() else info.get_default(call_default_factory=True))
                for field, info in cls.model_fields.items()
                if field != self.key
            }
            out[name] = {"doc": (cls.__doc__ or "").strip().splitlines()[0], "params": params}
            if (origin := plugin_origin(cls)) is not None:
                out[name]["plugin"] = origin
        return out


class _Choices:
    """Annotation metadata: the schema of a registry's union, read when the schema is built."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return handler.generate_schema(self.registry.tagged_union())
