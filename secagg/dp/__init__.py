"""The training layer (torch and Opacus): the DP-SGD client and what it needs.

- :mod:`.accounting`: ε of a history of DP-SGD steps, and the σ that plans a target ε;
- :mod:`.client`: :class:`PrivateClient` (DP-SGD with CSPRNG noise, ledgers, plans);
- :mod:`.layers`: Opacus-compatible layers (the corrected batch-first attention);
- :mod:`.tensors`: torch tensors to and from the crypto core's arrays.

Users import these names from :mod:`secagg`.
"""
