"""Fixed, public text tokenisation for federated training.

A federated client must not build a vocabulary from its private text: the vocabulary
itself would leak which words the client has seen, and every client would end up with a
different one. :class:`HashingTokenizer` instead maps each word to a bucket with a fixed,
public hash function (BLAKE2b with no key), so every party tokenises identically without
ever exchanging or learning anything from the text.

Token ids
---------
* ``0`` is padding.
* A word token ``t`` gets ``1 + (blake2b(t.encode("utf-8"), digest_size=8) as a big-endian
  unsigned integer) % num_buckets``, so ids lie in ``[1, num_buckets]``.
* Words in the tokenizer's ``stop_words`` (a fixed public list such as
  :func:`english_stop_words`, never one learned from the text) are dropped before hashing
  and before truncation.
* A text without any (kept) word token gets the single id :attr:`HashingTokenizer.empty_id` (the
  bucket of the sentinel ``"<empty>"``, which the word regex can never produce), so no
  encoded row is all padding.

The hash does not depend on Python's per-process ``hash()`` randomisation, so ids are stable
across processes, machines and Python versions.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Sequence

import numpy as np
import torch

from ..errors import ConfigurationError

__all__ = ["EMPTY_TOKEN", "TOKEN_PATTERN", "HashingTokenizer", "english_stop_words"]

#: Regular expression of a word token, applied to the lower-cased text: runs of letters,
#: digits and underscores, optionally joined by inner apostrophes ("don't", "o'neill").
TOKEN_PATTERN: str = r"\w+(?:'\w+)*"

#: Sentinel token whose bucket encodes a text without any word token.
EMPTY_TOKEN: str = "<empty>"

_TOKEN_RE = re.compile(TOKEN_PATTERN)

# Memoised token ids per tokenizer are dropped beyond this many entries (bounded memory).
_CACHE_LIMIT = 1_000_000


def _check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is a positive ``int`` (not ``bool``), else raise.

    Parameters
    ----------
    name : str
        Argument name, for the error message.
    value : object
        The value to check.

    Returns
    -------
    int
        ``value`` unchanged.

    Raises
    ------
    ConfigurationError
        If ``value`` is not an ``int`` or is smaller than 1.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return value


def english_stop_words() -> frozenset[str]:
    """Return scikit-learn's English stop-word list (318 function words: "the", "of", ...).

    A fixed, public list (Glasgow Information Retrieval Group's, as shipped in
    ``sklearn.feature_extraction.text.ENGLISH_STOP_WORDS``): dropping its words is a
    data-independent choice that leaks nothing about anyone's text. It suits topic
    classification; it also drops negations ("not", "no", "never"), so sentiment tasks
    should keep their stop words.

    Returns
    -------
    frozenset of str
        The lower-cased stop words.
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def _check_stop_words(stop_words: object) -> frozenset[str]:
    """Return ``stop_words`` as a frozenset of lower-cased words, or raise.

    Parameters
    ----------
    stop_words : object
        ``None`` or a collection of ``str``.

    Returns
    -------
    frozenset of str
        The words, lower-cased (empty for ``None``).

    Raises
    ------
    ConfigurationError
        If ``stop_words`` is a single ``str``, not a collection, or holds a non-``str``.
    """
    if stop_words is None:
        return frozenset()
    if isinstance(stop_words, (str, bytes)) or not isinstance(stop_words, Collection):
        raise ConfigurationError(
            f"stop_words must be a collection of words, got {type(stop_words).__name__}"
        )
    words = list(stop_words)
    for word in words:
        if not isinstance(word, str):
            raise ConfigurationError(f"stop_words must hold str, got {word!r}")
    return frozenset(word.lower() for word in words)


class HashingTokenizer:
    """Fixed public tokenisation: no vocabulary is ever built from (private) text.

    Text is lower-cased and split into word tokens with :data:`TOKEN_PATTERN`; each token is
    hashed with unkeyed 64-bit BLAKE2b into one of ``num_buckets`` buckets (ids
    ``1..num_buckets``; ``0`` is padding). Tokens in ``stop_words`` are dropped first;
    sequences are then truncated to ``max_len``.

    Parameters
    ----------
    num_buckets : int, default 4096
        Number of hash buckets (distinct non-padding ids).
    max_len : int, default 128
        Maximum number of ids per text; longer texts are truncated, and
        :meth:`encode_batch` pads to exactly this length.
    stop_words : collection of str or None, default None
        Words to drop before hashing (matched after lower-casing), for example
        :func:`english_stop_words`. They must be a fixed public list: a list derived from
        private text would leak which words it holds.

    Attributes
    ----------
    num_buckets : int
        Number of hash buckets.
    max_len : int
        Maximum sequence length.
    vocab_size : int
        ``num_buckets + 1``: the embedding table size, including padding id ``0``.
    padding_id : int
        Always ``0``.
    empty_id : int
        The id of a text without word tokens (the bucket of :data:`EMPTY_TOKEN`).
    stop_words : frozenset of str
        The dropped words (empty when none are).

    Raises
    ------
    ConfigurationError
        If ``num_buckets`` or ``max_len`` is not a positive integer, or ``stop_words`` is
        not a collection of ``str``.

    Examples
    --------
    >>> tok = HashingTokenizer(num_buckets=16, max_len=4)
    >>> tok.encode_batch(["a b", ""]).shape
    torch.Size([2, 4])
    """

    padding_id: int = 0

    def __init__(
        self,
        *,
        num_buckets: int = 4096,
        max_len: int = 128,
        stop_words: Collection[str] | None = None,
    ) -> None:
        self.num_buckets: int = _check_positive_int("num_buckets", num_buckets)
        self.max_len: int = _check_positive_int("max_len", max_len)
        self.stop_words: frozenset[str] = _check_stop_words(stop_words)
        self.vocab_size: int = self.num_buckets + 1
        self._cache: dict[str, int] = {}
        self.empty_id: int = self.token_id(EMPTY_TOKEN)

    def __repr__(self) -> str:
        """Return ``HashingTokenizer(num_buckets=..., max_len=..., stop_words=<n words>)``."""
        return (
            f"HashingTokenizer(num_buckets={self.num_buckets}, max_len={self.max_len}, "
            f"stop_words=<{len(self.stop_words)} words>)"
        )

    def token_id(self, token: str) -> int:
        """Return the id of one (already lower-cased) token.

        Parameters
        ----------
        token : str
            The token.

        Returns
        -------
        int
            ``1 + int.from_bytes(blake2b(token, digest_size=8), "big") % num_buckets``.
        """
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
        value = 1 + int.from_bytes(digest, "big") % self.num_buckets
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[token] = value
        return value

    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into lower-cased word tokens, stop words dropped (not truncated).

        Parameters
        ----------
        text : str
            The text.

        Returns
        -------
        list of str
            The tokens, in order.
        """
        tokens: list[str] = _TOKEN_RE.findall(text.lower())
        if self.stop_words:
            return [token for token in tokens if token not in self.stop_words]
        return tokens

    def encode(self, text: str) -> list[int]:
        """Encode one text as a list of ids, truncated to ``max_len`` and not padded.

        Parameters
        ----------
        text : str
            The text.

        Returns
        -------
        list of int
            Between 1 and ``max_len`` ids in ``[1, num_buckets]``; ``[empty_id]`` when the text
            has no word token (or only stop words).

        Raises
        ------
        TypeError
            If ``text`` is not a ``str``.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        tokens = self.tokenize(text)[: self.max_len]
        if not tokens:
            return [self.empty_id]
        return [self.token_id(token) for token in tokens]

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode texts into a right-padded id matrix.

        Parameters
        ----------
        texts : sequence of str
            The texts.

        Returns
        -------
        torch.Tensor
            ``int64`` tensor of shape ``(len(texts), max_len)``; row ``i`` holds
            ``encode(texts[i])`` followed by padding id ``0``.

        Raises
        ------
        TypeError
            If ``texts`` is a single ``str`` or holds a non-``str``.
        """
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a sequence of texts, not a single str")
        out = np.zeros((len(texts), self.max_len), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            out[row, : len(ids)] = ids
        return torch.from_numpy(out)
