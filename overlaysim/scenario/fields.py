"""The base every scenario model shares: strict, frozen pydantic models and the name type.

Names become namespace, folder and table keys, so they are constrained in one place.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

#: What a name must look like; names become namespace, folder and table keys.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NAME_EXPECTED = "a name of letters, digits, '.', '_' or '-' starting with a letter or digit"


class StrictModel(BaseModel):
    """Base: unknown fields are errors, values are immutable, numbers must be finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=63)]
HostPair = tuple[Name, Name]
