"""drtool benchmarks: drtool vs bare restic, side by side in one run (see bench/README.md)."""
