"""Throwaway instances that drills restore into (product code, also used by tests)."""
