"""The commands behind `scripts/*.py` and the `armhubert-*` console scripts, one module each, `main(argv)`
in each."""
