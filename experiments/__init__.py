"""Sweeps: grids of settings over seeds and Optuna searches, run by cooperating workers, reported with statistics.

`spec` (what to run), `space` (search spaces), `storage` (the Optuna storage holding the sweep's state),
`worker` (`run_worker`, the unit a process or a cluster job runs), `launch` (local worker processes pinned to
devices, SLURM worker jobs), `distributed` (a run under torchrun), `results` (results.csv from the storage),
`report` (statistics and report files). `sweep.py` is the command line.
"""
