"""Sources to lake: schemas, datasets, file readers, validation and batch ingestion."""

from shared.ingestion.batch import BatchIngestion, batch_id_for
from shared.ingestion.datasets import Dataset, DatasetStore
from shared.ingestion.lake import LakeStore
from shared.ingestion.schemas import EVENT_SCHEMA, PROFILE_SCHEMA, FieldType, Namespace, Schema, SchemaStore

__all__ = [
    "EVENT_SCHEMA",
    "PROFILE_SCHEMA",
    "BatchIngestion",
    "Dataset",
    "DatasetStore",
    "FieldType",
    "LakeStore",
    "Namespace",
    "Schema",
    "SchemaStore",
    "batch_id_for",
]
