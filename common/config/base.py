"""The base of every config section: unknown keys fail, every field's docstring is its
description, defaults are validated too."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


__all__ = ["_Section"]
