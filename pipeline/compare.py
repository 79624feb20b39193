"""`python -m pipeline.compare RUN_DIRS [--pair A B] [--out DIR]`: the comparison table and report
of any jobs, and with `--pair` the verdict of arm A vs arm B (reporting.compare, reporting.verdict).
The end of every multirun does the same (`compare.pair` in the config names the arms)."""

from reporting.compare import main

if __name__ == "__main__":
    main()
