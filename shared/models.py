"""The base of every model the product reads or writes as JSON: HTTP bodies, stored records, queue messages
and manifests. Python names are snake_case; on the wire every field is camelCase, as in Adobe's APIs.

Reading by the Python name still works for one release (`schema_id` as well as `schemaId`): HTTP requests
that use it get a `Deprecation` header naming the fields (functions/http.py), and records stored before the
change still load."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, model_validator
from pydantic.alias_generators import to_camel

# A validation context carrying this list records the snake_case fields a request used.
DEPRECATED_FIELDS = "deprecatedFields"


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, serialize_by_alias=True)

    @model_validator(mode="before")
    @classmethod
    def _note_python_names(cls, data: Any, info: ValidationInfo) -> Any:
        noted = (info.context or {}).get(DEPRECATED_FIELDS)
        if noted is not None and isinstance(data, dict):
            for name, spec in cls.model_fields.items():
                if spec.alias and spec.alias != name and name in data and spec.alias not in data:
                    noted.append(f"{name} (now {spec.alias})")
        return data


class Metrics(ApiModel):
    """What a job reports in `Job.metrics`, one model per job type: a key the model does not declare is refused
    when the job is written, so the writer and every reader (alert rules, the dashboard) agree on the names.
    Every field has a default: a job that failed early reports little more than its duration."""

    model_config = ConfigDict(extra="forbid")
