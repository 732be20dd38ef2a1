"""What every config section shares: strict fields, and the error type of user mistakes."""

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A user mistake in a config: the message names the field and what is allowed."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
