"""Which names from the peer may become files: pure checks, shared by the file writer and the
archive checker.

A received name is refused (never silently changed, so what the user accepted is what is
written) when it:

* is empty, ``.`` or ``..``, or holds ``/``, ``\\`` or NUL (it could leave the chosen
  directory or name another one);
* holds a control character, a format character (bidirectional overrides, zero-width
  characters), a line or paragraph separator, a surrogate or an unassigned code point (it
  could rewrite the terminal it is shown on, or look like another name);
* is longer than 255 bytes in UTF-8 (Linux ``NAME_MAX``) or is not in Unicode NFC (two
  spellings of one name must not be two files);
* for a top-level file or directory name only: starts with ``.`` (a new ``~/.profile`` or
  ``~/.ssh`` is code or keys, not a download) or with ``-`` (it would read as an option in a
  shell command), or ends with a space or a dot.
"""

from __future__ import annotations

import unicodedata

from msgrlib.transfer.errors import UnsafeName, shown

#: Linux NAME_MAX: the longest single path component most file systems store.
MAX_NAME_BYTES = 255

_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def check_component(name: object, *, what: str = "name") -> str:
    """Return ``name`` if it is a safe single path component (rules above, without the
    top-level ones), else raise :class:`UnsafeName`."""
    if not isinstance(name, str):
        raise UnsafeName(f"the {what} is not text")
    if name in ("", ".", ".."):
        raise UnsafeName(f"the {what} {shown(name)} is not a file name")
    for ch in name:
        if ch in "/\\\x00":
            raise UnsafeName(f"the {what} {shown(name)} holds a path separator; "
                             "only a plain file name is accepted")
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            raise UnsafeName(f"the {what} {shown(name)} holds the character "
                             f"U+{ord(ch):04X}, which is not allowed in a name")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise UnsafeName(f"the {what} is longer than {MAX_NAME_BYTES} bytes")
    if unicodedata.normalize("NFC", name) != name:
        raise UnsafeName(f"the {what} {shown(name)} is not in Unicode normal form C")
    return name


def check_file_name(name: object, *, what: str = "file name") -> str:
    """Return ``name`` if it may be created at the top of the chosen directory, else raise
    :class:`UnsafeName` saying which rule it breaks."""
    checked = check_component(name, what=what)
    if checked.startswith("."):
        raise UnsafeName(f"the {what} {shown(checked)} starts with '.' (a hidden file); "
                         "refusing it")
    if checked.startswith("-"):
        raise UnsafeName(f"the {what} {shown(checked)} starts with '-'; refusing it")
    if checked.endswith((" ", ".")):
        raise UnsafeName(f"the {what} {shown(checked)} ends with a space or a dot")
    return checked


__all__ = ["MAX_NAME_BYTES", "check_component", "check_file_name"]
