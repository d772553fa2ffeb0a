"""Renderers of results for people and machines: json, junit xml, html, prometheus text.

Each module renders plain data (run records, drill reports, metric samples);
none of them runs restic or touches a repository.
"""
