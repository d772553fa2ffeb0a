"""Offsite object storage adapters (S3 via boto3, imported lazily inside drtool.storage.s3)."""

from drtool.storage.s3 import (
    BucketStatus,
    S3Location,
    S3Store,
    parse_s3_url,
    store_from_repository,
)

__all__ = ["BucketStatus", "S3Location", "S3Store", "parse_s3_url", "store_from_repository"]
