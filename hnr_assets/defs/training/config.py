"""Launchpad config built from a profile section: every setting, its description, the profile's value as default.

A profile section (a pydantic model) says what a run does by default; `config_class` turns it into a
`dg.Config` whose fields are the same settings with the profile's values as defaults, so the launchpad
scaffolds exactly what the profile would run and a user edits only what differs. `merge` validates
the edited values against the section's own rules (ranges, choices) before anything runs.
"""

from typing import TypeVar

import dagster as dg
from pydantic import BaseModel, Field, ValidationError, create_model

from hnr_assets.lib.runtime.errors import ConfigError

S = TypeVar("S", bound=BaseModel)


def config_class(name: str, values: BaseModel, doc: str) -> type[dg.Config]:
    """A `dg.Config` subclass mirroring `values`' model, defaulting to `values`.

    Args:
        name: Class name (shown in the launchpad).
        values: The profile section (its model's fields become the config fields).
        doc: Class docstring.
    """
    fields = {
        key: (info.annotation, Field(default=getattr(values, key), description=info.description))
        for key, info in type(values).model_fields.items()
    }
    return create_model(name, __base__=dg.Config, __doc__=doc, **fields)


def merge(values: S, config: dg.Config, where: str) -> S:
    """The profile section with the run's config applied, validated by the section's model.

    Raises:
        ConfigError: A value breaks the section's rules; the message names the key.
    """
    data = {**values.model_dump(), **config.model_dump()}
    try:
        return type(values).model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<config>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{where}: invalid run config: {problems}") from None
