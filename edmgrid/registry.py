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

from typing import Annotated, Any, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Tag

T = TypeVar("T", bound=type[BaseModel])


class Choice(BaseModel):
    """Base of every registered choice: frozen, and unknown fields are errors."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, protected_namespaces=(), ser_json_inf_nan="constants"
    )


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
            custom_error_message=f"unknown {self.axis} '{self.key}'; valid choices: {valid}",
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
