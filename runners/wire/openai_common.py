"""What OpenAI's chat, completions and Responses bodies share: the `stop` field's bound and usage that is
omitted rather than null."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, model_serializer


def _at_most_four(v: str | list[str]) -> str | list[str]:
    if isinstance(v, list) and len(v) > 4:
        raise ValueError("at most 4 stop sequences")
    return v


StopSequences = Annotated[str | list[str], AfterValidator(_at_most_four)]  # chat's and completions' `stop`


class OmitsAbsentUsage(BaseModel):
    """An answer without usage (a chunk, a response in progress) has no `usage` key: OpenAI's document does not
    allow null there."""

    @model_serializer(mode="wrap")
    def _omit_absent_usage(self, handler) -> dict[str, Any]:
        data = handler(self)
        if getattr(self, "usage", None) is None:
            data.pop("usage", None)
        return data
