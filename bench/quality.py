"""Quality study: does the C4 sensitivity mask (SensZOQ) beat the alternatives on real tasks?

The entry point of the study in `bench/quality_study/` (its package docstring describes the grid,
the records and the modules):

    nice -n 19 python bench/quality.py            # run pending cells in priority order
    python bench/quality.py --report              # only regenerate json/md/plots
    python bench/quality.py --only 'sst2-*' --max-cells 2
    python bench/quality.py --sweep '*'           # the lr sweep on SST-2 dev
    python bench/quality.py --verify KEY          # rerun a recorded cell from its argv, compare
    python bench/quality.py --transfer            # Σg² share rows
    python bench/quality.py --probe '*'           # memory/time probes for the Pareto plot

Needs `pip install -e '.[bench]'` for the plots; the data folder `../shared/data`.
"""

from quality_study.main import main

if __name__ == "__main__":
    main()
