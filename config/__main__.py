"""``python -m config``: the table of every configuration key, as docs/training.md holds it."""

from config.schema import key_table

print(key_table())
