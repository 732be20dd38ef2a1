"""What every config section shares: strict fields, and the error type of user mistakes."""

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A user mistake in a config: the message names the field and what is allowed."""


class Strict(BaseModel):
    # No NaN or infinity anywhere: `lr: .inf` or a NaN logit_bias is a mistake, never a setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Upper bounds that catch typos (an extra zero or three) before they hang a run or allocate
# billions of parameters; each is far above anything this code is run at.
MAX_SEED = 2**63 - 1  # torch.manual_seed's range
MAX_WIDTH = 65536
MAX_DEPTH = 1024
MAX_TOKENS = 16384  # text.max_len
MAX_PIXELS = 8192  # image.size
MAX_BATCH = 2**20
MAX_ACCUM = 4096
