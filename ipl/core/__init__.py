"""The base every layer may use: errors, atomic writes, the generator and family interfaces, the run config."""
