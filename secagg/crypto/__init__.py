"""The crypto core: what clients, the aggregation server and the key holder run.

Torch-free (numpy, TenSEAL's SEAL bindings, ``cryptography``). Modules by role:

- :mod:`.client`: :func:`encrypt_update` (quantise or encode, encrypt, MAC-tag, sign);
- :mod:`.server`: :class:`Aggregator`, :class:`EncryptedAggregate` (no key at all);
- :mod:`.keyholder`: :class:`KeyHolder` (verify, then decrypt and release) and
  :mod:`.release` (the released result, flooding);
- keys: :mod:`.keys` (the secret context), :mod:`.context` (the server's), :mod:`.registry`
  (signing keys), :mod:`.federation_keys` (all of them, made at once);
- formats: :mod:`.presets`, :mod:`.layout`, :mod:`.spec`, :mod:`.wire`.

Users import these names from :mod:`secagg`.
"""
