.PHONY: bench bench-quick

bench:
	python -m bench

bench-quick:
	python -m bench --quick
