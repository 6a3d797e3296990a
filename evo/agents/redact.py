"""PII redaction for what an agent records: emails, phone numbers, card and IBAN numbers, IPs.

Everything a trace store keeps passes through a redactor first (:class:`PIIRedactor`), so a
trace store, its JSONL exports and the examples made from it never hold those values. The
built-in detectors are patterns with checksums where the thing has one (Luhn for cards, mod-97
for IBANs, octet ranges for IPv4, :mod:`ipaddress` for IPv6), tuned to leave numbers that are not
PII alone: years, counts, dates, prices, decimals and version numbers. Stronger detectors (e.g.
Presidio or a NER model for names and addresses) plug in through ``extra``::

    redactor = PIIRedactor(extra=[my_presidio_redact])   # str -> str, run after the patterns
    redactor("mail jane@example.org or call +44 20 7946 0958")
    # 'mail [EMAIL] or call [PHONE]'
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Sequence

from evo.errors import ConfigError

__all__ = ["KINDS", "PIIRedactor", "redact"]

KINDS = ("email", "phone", "card", "iban", "ip")
_PRIORITY = ("email", "iban", "ip", "card", "phone")  # who keeps an overlapping span

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                    r"\.[A-Za-z]{2,}(?![\w-])")
# Digit groups joined by single spaces or dashes: the candidates for card numbers.
_DIGIT_RUN = re.compile(r"\d+(?:[ -]\d+)*")
_IBAN = re.compile(r"(?<![\w-])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|"
                   r"\d{1,3}(?:\.\d{1,3}){3})?(?:%[\w.]+)?(?![\w:%]|\.\d)")
_VERSION_BEFORE = re.compile(r"(?i)\b(?:version|ver|release|build)\s*$")
# Phones: international (+CC ...), or a national format: a trunk prefix 0 (06 12 34 56 78,
# 020 7946 0958), an area code in parentheses, NANP 415-555-2671 and local 555-2671. A plain
# digit string without separators (a count) or a date (dots or dashes in 2-2-4 / 4-2-2) is not.
_NOT_BEFORE, _NOT_AFTER = r"(?<![\w+.,/-])", r"(?!\w|[.,/:-]\d)"
_PHONES = [(re.compile(_NOT_BEFORE + pattern + _NOT_AFTER), low, high) for pattern, low, high in (
    (r"\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){1,7}", 7, 15),
    (r"\(\d{2,5}\)[ .-]?\d{3,4}[ .-]?\d{3,4}", 7, 12),
    (r"(?:1[ .-])?\d{3}([ .-])\d{3}\1\d{4}", 10, 11),
    (r"\d{3}-\d{4}", 7, 7),
    (r"0\d{1,4}(?:[ .-]?\d{2,4}){1,4}", 9, 11),
)]


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _iban_ok(text: str) -> bool:
    if not 15 <= len(text) <= 34:
        return False
    moved = text[4:] + text[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _emails(text: str) -> Iterator[tuple[int, int]]:
    for m in _EMAIL.finditer(text):
        yield m.span()


def _cards(text: str) -> Iterator[tuple[int, int]]:
    """Luhn-valid stretches of 13-19 digits (whole groups, leftmost-longest) in each run of
    digit groups that stands alone (not part of a word, a decimal or a date)."""
    for m in _DIGIT_RUN.finditer(text):
        start, end = m.span()
        before = text[max(0, start - 2):start]
        # (after a word, a number or a path: not a card; after 'visa:' or 'no.': a card)
        if re.search(r"[\w,/+]$|\d\.$", before) or \
                re.match(r"\w|[.,/:]\d", text[end:end + 2]):
            continue
        groups = [(g.start() + start, g.end() + start) for g in re.finditer(r"\d+", m.group())]
        i = 0
        while i < len(groups):
            digits, last = "", None
            for j in range(i, len(groups)):  # at most 19 digits: a few groups from each start
                digits += text[groups[j][0]:groups[j][1]]
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and _luhn(digits):
                    last = j
            if last is None:
                i += 1
            else:
                yield groups[i][0], groups[last][1]
                i = last + 1


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    """The longest mod-97-valid prefix (at a group end) of each IBAN-shaped match: a word in
    capitals after an IBAN ("... 3000 EUR") would otherwise spoil the checksum."""
    for m in _IBAN.finditer(text):
        ends = [g.end() for g in re.finditer(r"[A-Z0-9]+", m.group())]
        for end in reversed(ends):
            if re.match(r"\w", text[m.start() + end:m.start() + end + 1]) is None and \
                    _iban_ok(m.group()[:end].replace(" ", "")):
                yield m.start(), m.start() + end
                break


def _ips(text: str) -> Iterator[tuple[int, int]]:
    for m in _IPV4.finditer(text):
        if not _VERSION_BEFORE.search(text, 0, m.start()):
            yield m.span()
    for m in _IPV6.finditer(text):
        if re.search(r"[0-9A-Fa-f]", m.group()):
            try:
                ipaddress.IPv6Address(m.group().split("%")[0])
            except ValueError:
                continue
            yield m.span()


def _phones(text: str) -> Iterator[tuple[int, int]]:
    for pattern, low, high in _PHONES:
        for m in pattern.finditer(text):
            if low <= sum(ch.isdigit() for ch in m.group()) <= high:
                yield m.span()


_FINDERS: dict[str, Callable[[str], Iterable[tuple[int, int]]]] = {
    "email": _emails, "phone": _phones, "card": _cards, "iban": _ibans, "ip": _ips}


class PIIRedactor:
    """Replaces each email, phone, card, IBAN and IP address found in a text by ``[EMAIL]``,
    ``[PHONE]``, ``[CARD]``, ``[IBAN]``, ``[IP]``; then runs the ``extra`` redactors
    (``str -> str``, the hook for stronger detectors), in order.

    Redacting is idempotent for the built-in kinds: the result is redacted again until nothing
    more is found (a replacement can make a neighbour stand alone), and a placeholder is never
    found again.

    >>> PIIRedactor()("How many people lived in 1990? Ask bob@example.com")
    'How many people lived in 1990? Ask [EMAIL]'
    """

    def __init__(self, kinds: Sequence[str] = KINDS, *,
                 extra: Sequence[Callable[[str], str]] = ()) -> None:
        unknown = [k for k in kinds if k not in _FINDERS]
        if unknown:
            raise ConfigError(f"PIIRedactor: unknown kind(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(KINDS)}")
        self.kinds = tuple(kinds)
        self.extra = tuple(extra)

    def find(self, text: str) -> list[tuple[str, int, int]]:
        """The PII spans in ``text`` as ``(kind, start, end)``, in order, not overlapping (an
        email wins over the digits in it, an IBAN over a card, an IP over a phone)."""
        taken: list[tuple[str, int, int]] = []
        for kind in _PRIORITY:
            if kind not in self.kinds:
                continue
            for start, end in _FINDERS[kind](text):
                if all(end <= s or start >= e for _, s, e in taken):
                    taken.append((kind, start, end))
        return sorted(taken, key=lambda span: span[1])

    def _once(self, text: str) -> str:
        parts, at = [], 0
        for kind, start, end in self.find(text):
            parts += [text[at:start], f"[{kind.upper()}]"]
            at = end
        return "".join(parts) + text[at:]

    def __call__(self, text: str) -> str:
        # Each pass removes digits, "@" or ":" that no placeholder holds: it ends.
        while (again := self._once(text)) != text:
            text = again
        for redactor in self.extra:
            text = redactor(text)
        return text


_DEFAULT = PIIRedactor()


def redact(text: str) -> str:
    """``text`` with its emails, phones, cards, IBANs and IPs replaced (:class:`PIIRedactor`)."""
    return _DEFAULT(text)
