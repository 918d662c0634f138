"""Queue messages as models: what one side puts on a queue and the other reads is one pydantic model (camelCase
JSON), so a renamed field breaks the test of both sides, not a run in production."""

from __future__ import annotations

from typing import Any, Self

from azure.storage.queue import QueueClient
from pydantic import ValidationError as ModelError

from shared.errors import ValidationError
from shared.models import ApiModel


class QueueMessage(ApiModel):
    def send(self, queue: QueueClient, *, delay: float = 0) -> None:
        """Put the message on the queue, visible after `delay` seconds."""
        queue.send_message(self.model_dump_json(by_alias=True), visibility_timeout=int(delay) or None)

    @classmethod
    def of(cls, message: Self | dict[str, Any]) -> Self:
        """The message a queue trigger was given (its JSON), or a ValidationError naming what is wrong."""
        if isinstance(message, cls):
            return message
        try:
            return cls.model_validate(message)
        except ModelError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise ValidationError(f"not a {cls.__name__}: {problems}") from exc
