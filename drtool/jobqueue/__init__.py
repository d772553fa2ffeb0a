"""The drill pool's PostgreSQL: procrastinate's job queue (app.py) and drtool's central catalog (central.py).

An adapter like engine/ or storage/: it knows PostgreSQL, procrastinate and psycopg, never
drtool's actions. psycopg and procrastinate are imported only by the pool commands.
"""
