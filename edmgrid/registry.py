"""One registry per design axis: a choice name maps to a Pydantic schema that implements it.

A choice is one class in one file::

    @schedules.register
    class VE(Schedule):
        name: Literal["ve"] = "ve"
        def sigma(self, t): return t.sqrt()

Schemas are validated as a discriminated union on the registry's key (``name`` for axes,
``arch`` for networks), so an unknown choice is an error that lists the registered ones.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, TypeVar, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Tag,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

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
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError(
                        "unknown_key",
                        "unknown key '{key}'; valid keys: {valid}",
                        {"key": str(key), "valid": ", ".join(cls.model_fields)},
                    )
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


class Choice(Strict):
    """Base of every registered choice: frozen, and unknown fields are errors."""

    model_config = ConfigDict(frozen=True, protected_namespaces=(), ser_json_inf_nan="constants")

    #: Fields naming local files or folders the choice reads; ``edmgrid run`` checks they exist.
    input_paths: ClassVar[tuple[str, ...]] = ()


class Registry:
    """Maps the choice names of one axis to their schema classes."""

    def __init__(self, axis: str, doc: str, key: str = "name") -> None:
        self.axis, self.doc, self.key = axis, doc, key
        self._choices: dict[str, type[BaseModel]] = {}

    def register(self, cls: T) -> T:
        name = cls.model_fields[self.key].default  # type: ignore[call-overload]
        if not isinstance(name, str) or name in self._choices:
            raise ValueError(f"{self.axis}: bad or duplicate choice {name!r} on {cls.__name__}")
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
        """The discriminated union of every registered choice (build it after registering)."""
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
        return out
