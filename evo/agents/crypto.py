"""Encryption at rest of the texts an agent records, with a key only the user holds.

:class:`TextCipher` is Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) keyed by scrypt
from the user's key and a per-store random salt, so the same key gives each store its own
Fernet key and a stolen store cannot be attacked with a table built for another. Tokens are
marked (``enc1:...``) so a reader can tell a ciphertext from a clear text.
"""

from __future__ import annotations

import base64
import os

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from evo.errors import ConfigError

__all__ = ["MARK", "TextCipher", "new_salt"]

MARK = "enc1:"
WRONG_KEY = "the key does not open this trace store"


def new_salt() -> bytes:
    """A fresh random salt for a new store (16 bytes)."""
    return os.urandom(16)


class TextCipher:
    """Encrypts and decrypts texts with a key derived from ``key`` and ``salt``.

    >>> c = TextCipher("correct horse battery staple", new_salt())
    >>> c.decrypt(c.encrypt("hello"))
    'hello'
    """

    def __init__(self, key: str | bytes, salt: bytes) -> None:
        raw = key.encode() if isinstance(key, str) else key
        if not isinstance(raw, bytes) or not raw:
            raise ConfigError("the encryption key is empty: give a non-empty str or bytes key")
        if len(salt) < 16:
            raise ConfigError(f"the salt has {len(salt)} bytes; at least 16 are needed")
        # scrypt n=2**14, r=8, p=1: the interactive-login parameters (~50 ms, 16 MiB), paid once
        # per store opened.
        derived = Scrypt(salt=salt, length=32, n=2 ** 14, r=8, p=1).derive(raw)
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def encrypt(self, text: str) -> str:
        """``text`` encrypted, as a marked token (``enc1:`` + the Fernet token)."""
        return MARK + self._fernet.encrypt(text.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The text of ``token``; a token made with another key (or altered) is a
        :class:`~evo.errors.ConfigError`."""
        if not token.startswith(MARK):
            raise ConfigError(f"{WRONG_KEY}: the text is not an encrypted token")
        try:
            return self._fernet.decrypt(token[len(MARK):].encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise ConfigError(WRONG_KEY) from None
