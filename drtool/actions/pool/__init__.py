"""The drill pool: a central site runs many offices' fire drills from one PostgreSQL queue.

    enqueue.py     which drills are due; put them on the queue (`drtool pool enqueue`, the daemon)
    worker.py      `drtool pool worker`: procrastinate's worker, one drill at a time, and the reaper
    site_drill.py  one site's fire drill with only that site's kit, recorded and signed
"""

KEY_DIR = "pool"        # <fleet state_dir>/pool/signing-key.pem: the key the pool's drill reports are signed with
