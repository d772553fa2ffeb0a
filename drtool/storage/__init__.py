"""Offsite object storage adapters: import the module you need (drtool.storage.s3, .s3_url,
.rest, ...). Nothing is imported here, so `drtool.storage.s3_url` (pure URL parsing, which
validate uses) does not load the whole S3 adapter."""
