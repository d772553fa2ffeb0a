.PHONY: bench bench-quick bench-drill-sched

bench:
	python -m bench

bench-quick:
	python -m bench --quick

bench-drill-sched:
	python -m bench --only pgrestore,scheduler
