"""drtool: encrypted offsite snapshots of databases and files, and timed restore drills."""

__version__ = "0.1.0"
