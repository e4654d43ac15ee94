"""The secagg error hierarchy.

Every error secagg raises on purpose derives from :class:`SecaggError`. Errors about
bad input also derive from :class:`ValueError`, so callers that already catch
``ValueError`` keep working. Catch the narrowest class that fits.

::

    SecaggError
    ├── PayloadError (ValueError)            malformed, truncated or foreign bytes
    │   ├── FormatError                       bad magic, version, sizes or header
    │   ├── KeyMismatchError                  another key's fingerprint
    │   ├── SpecMismatchError                 another model layout (spec hash)
    │   ├── RoundMismatchError                another round id
    │   └── SignatureError                    missing or invalid Ed25519 signature
    ├── ContextError (ValueError)             unusable CKKS context or key file
    │   └── SecretKeyExposureError            a secret key where none may be
    ├── UpdateValueError (ValueError)         non-finite or out-of-headroom values
    ├── AggregationError                      the aggregator refused an action
    │   ├── DuplicateClientError (ValueError)
    │   ├── UnknownClientError (ValueError)
    │   └── NotEnoughClientsError
    ├── ReleaseError                          the key holder refused to decrypt
    │   ├── IntegrityError                    not the verified sum it claims to be (MAC)
    │   ├── DecryptionBudgetExceededError     rotate the keys
    │   ├── RoundAlreadyReleasedError         one release per round id, ever
    │   └── RosterError (ValueError)          too few, unregistered or off-roster clients
    ├── PrivacyBudgetExceededError            a DP round would pass the ε budget
    ├── CheckpointError                       missing, corrupted or foreign checkpoint
    ├── DatasetUnavailableError               a dataset carrier package is not installed
    └── ConfigurationError (ValueError)       inconsistent options
"""

from __future__ import annotations

__all__ = [
    "AggregationError",
    "CheckpointError",
    "ConfigurationError",
    "ContextError",
    "DatasetUnavailableError",
    "DecryptionBudgetExceededError",
    "DuplicateClientError",
    "FormatError",
    "IntegrityError",
    "KeyMismatchError",
    "NotEnoughClientsError",
    "PayloadError",
    "PrivacyBudgetExceededError",
    "ReleaseError",
    "RosterError",
    "RoundAlreadyReleasedError",
    "RoundMismatchError",
    "SecaggError",
    "SecretKeyExposureError",
    "SignatureError",
    "SpecMismatchError",
    "UnknownClientError",
    "UpdateValueError",
]


class SecaggError(Exception):
    """Base class of every error secagg raises on purpose."""


class PayloadError(SecaggError, ValueError):
    """Bytes that are not a valid secagg payload for this use."""


class FormatError(PayloadError):
    """Bad magic, unsupported version, inconsistent sizes or an unreadable header."""


class KeyMismatchError(PayloadError):
    """The payload was made under another key (its key fingerprint differs)."""


class SpecMismatchError(PayloadError):
    """The payload describes another model layout (its spec hash differs)."""


class RoundMismatchError(PayloadError):
    """The payload belongs to another round."""


class SignatureError(PayloadError):
    """The payload's Ed25519 signature is missing, invalid or from an unregistered client."""


class ContextError(SecaggError, ValueError):
    """A CKKS context or key file that cannot be used as asked."""


class SecretKeyExposureError(ContextError):
    """A secret key was offered where none may be held (for example to the aggregator)."""


class UpdateValueError(SecaggError, ValueError):
    """An update holds values that cannot be encrypted safely (non-finite, or too large)."""


class AggregationError(SecaggError):
    """The aggregator refused an action."""


class DuplicateClientError(AggregationError, ValueError):
    """A second update from a client that already contributed to this round."""


class UnknownClientError(AggregationError, ValueError):
    """An update from a client that is not on this round's roster."""


class NotEnoughClientsError(AggregationError):
    """Fewer contributions than the round's ``min_clients``."""


class ReleaseError(SecaggError):
    """The key holder refused to decrypt and release an aggregate."""


class IntegrityError(ReleaseError):
    """The aggregate is not the exact sum of the claimed clients' ciphertexts of its round.

    Its MAC does not verify: the key holder refused it before decrypting anything and
    without spending any decryption budget.
    """


class DecryptionBudgetExceededError(ReleaseError):
    """The key's decryption budget is spent: rotate the keys before decrypting again."""


class RoundAlreadyReleasedError(ReleaseError):
    """An aggregate for a round id this key already released (or an older one)."""


class RosterError(ReleaseError, ValueError):
    """An aggregate of too few clients, or of clients that are unregistered or off its roster."""


class PrivacyBudgetExceededError(SecaggError):
    """A DP-SGD round would take a client past its ε budget; nothing was changed."""


class CheckpointError(SecaggError):
    """A checkpoint is missing, corrupted (checksum mismatch) or from another run."""


class DatasetUnavailableError(SecaggError):
    """A dataset's carrier package is not installed; the message names the install command."""


class ConfigurationError(SecaggError, ValueError):
    """Options that contradict each other or are out of range."""
