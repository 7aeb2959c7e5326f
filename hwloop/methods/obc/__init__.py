"""Optimal Brain Compression (Frantar, Singh, Alistarh, NeurIPS 2022) for hwloop: ExactOBS / OBQ per layer
(:mod:`~hwloop.methods.obc.exactobs`), structured channel removal on coupled groups
(:mod:`~hwloop.methods.obc.structured`), the per-unit database (:mod:`~hwloop.methods.obc.database`), the
knapsack DP on latency (:mod:`~hwloop.methods.obc.dp`) and the method (:mod:`~hwloop.methods.obc.method`,
registered as ``obc``). See ``docs/obc.md``."""
