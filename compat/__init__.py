"""Compatibility with the reference implementation (``Noahsark/DADA``), at the command-line edge.

* `compat.options`: the one table that maps the reference's options (its ``parameters.py`` flags and YAML
  keys) onto this project's configuration keys; `config.command_line` applies it to YAML files and the
  command line, so the configuration core reads only this project's keys.
* `compat.unpickler`: reads the reference's pickled checkpoints without executing any of their objects.
* `compat.weights`: maps the reference network's weights onto this project's model.
* `compat.checkpoint`: turns a reference checkpoint into an evaluation configuration (``eval.py``).

``python -m compat.options`` prints the option table.
"""
