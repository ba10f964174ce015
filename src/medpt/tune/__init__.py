"""`medpt tune`: hyperparameter search over `medpt train` runs with Optuna (pip install 'medpt[tune]').

- space.py: the search space (YAML: flag → distribution), checked against the schema before anything runs;
- objective.py: what a trial minimises, and the callback that reports it to the pruner;
- study.py: the command, the shared study, the workers and the objective (one `medpt train` run per trial);
- summary.py: the trials table, best.yaml and the plots.
"""
