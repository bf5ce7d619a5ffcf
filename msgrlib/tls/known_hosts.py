"""Trust on first use: relay fingerprints remembered per address, like SSH's known_hosts.

Errors are those of :mod:`msgrlib.tls.errors`. This module logs and prints nothing.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from msgrlib.tls.errors import KnownHostsError, TlsError, TlsSetupError
from msgrlib.tls.x509 import CONFIG_DIR_MODE, MAX_FILE_SIZE, normalize_fingerprint, unlink_quietly
from msgrlib.util.netaddr import host_port

__all__ = ["KnownHosts", "default_known_hosts_path", "relay_address"]

#: Longest relay address stored in known_hosts (a DNS name is at most 253
#: characters, plus brackets and a port).
MAX_ADDRESS_LENGTH = 300

_KNOWN_HOSTS_HEADER = (
    "# msgr known relays: one 'address fingerprint' per line, written on first use.\n"
    "# Delete a relay's line to forget its certificate.\n"
)


def relay_address(host: str, port: int) -> str:
    """The ``host:port`` key of a relay, as stored in known_hosts.

    Hostnames are lower-cased; IPv6 addresses are bracketed (``[::1]:7000``).
    """
    return host_port(host.strip().strip("[]").lower(), port)


def check_address(address: str) -> str:
    address = address.strip().lower()
    if (
        not address
        or len(address) > MAX_ADDRESS_LENGTH
        or address.startswith("#")
        or any(ch.isspace() or not ch.isprintable() for ch in address)
    ):
        raise TlsSetupError(f"invalid relay address {address[:80]!r} for known_hosts")
    return address


def default_known_hosts_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/msgr/known_hosts``, else ``~/.config/msgr/known_hosts``.

    A relative ``XDG_CONFIG_HOME`` is ignored, as the XDG spec asks.
    """
    config = environ.get("XDG_CONFIG_HOME", "")
    if not config or not os.path.isabs(config):
        home = environ.get("HOME") or os.path.expanduser("~")
        config = os.path.join(home, ".config")
    return Path(config) / "msgr" / "known_hosts"


class KnownHosts:
    """Fingerprints remembered per relay address, one ``address fingerprint`` per line.

    Blank lines and lines starting with ``#`` are kept as they are. The file
    is re-read on every call (it is tiny, and another client may have
    changed it) and rewritten atomically: a new 0o600 file next to it, then
    ``os.replace``. A corrupt file is never "repaired" silently: every call
    raises :class:`KnownHostsError` naming the line until the user fixes it.
    Two clients remembering at the same moment may lose one entry; it is
    then simply remembered again on the next connection.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def lookup(self, address: str) -> str | None:
        """The remembered fingerprint of ``address``, or None."""
        entry = self._entry(check_address(address))
        return None if entry is None else entry[0]

    def remember(self, address: str, fp: str) -> None:
        """Store ``fp`` for ``address``, replacing any previous fingerprint."""
        address = check_address(address)
        fp = normalize_fingerprint(fp)
        lines, entries = self._load()
        new_line = f"{address} {fp}\n"
        if address in entries:
            first = entries[address][1] - 1
            lines = [
                line
                for number, line in enumerate(lines)
                if number == first or _line_address(line) != address
            ]
            lines[first] = new_line
        else:
            if not lines:
                lines = [_KNOWN_HOSTS_HEADER]
            elif not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines.append(new_line)
        self._write(lines)

    def forget(self, address: str) -> bool:
        """Remove ``address``; return whether it was there."""
        address = check_address(address)
        lines, entries = self._load()
        if address not in entries:
            return False
        self._write([line for line in lines if _line_address(line) != address])
        return True

    def _entry(self, address: str) -> tuple[str, int] | None:
        """``(fingerprint, line number)`` of an already-checked address, or None."""
        return self._load()[1].get(address)

    def _discards(self) -> bool:
        """Whether the path is the null device (``--known-hosts /dev/null``:
        remember nothing). Any other path that exists must be a regular
        file: msgr never replaces a device, a pipe or a directory with one."""
        path = os.fspath(self.path)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise KnownHostsError(
                f"cannot read known hosts file {path}: {err.strerror or err}", path=path
            ) from None
        if stat.S_ISREG(info.st_mode):
            return False
        try:
            if os.path.samefile(path, os.devnull):
                return True
        except OSError:
            pass
        raise KnownHostsError(
            f"known hosts file {path} is not a regular file; choose a file path "
            f"(or {os.devnull} to remember nothing)",
            path=path,
        )

    def _load(self) -> tuple[list[str], dict[str, tuple[str, int]]]:
        """The file's lines (with their newlines) and ``{address: (fp, line)}``."""
        path = os.fspath(self.path)
        if self._discards():
            return [], {}
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return [], {}
        except OSError as err:
            raise KnownHostsError(
                f"cannot read known hosts file {path}: {err.strerror or err}", path=path
            ) from None
        if len(data) > MAX_FILE_SIZE:
            raise KnownHostsError(
                f"known hosts file {path} is larger than {MAX_FILE_SIZE} bytes", path=path
            )
        lines: list[str] = []
        entries: dict[str, tuple[str, int]] = {}
        for number, raw in enumerate(data.splitlines(keepends=True), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise self._corrupt(number, "it is not UTF-8 text") from None
            lines.append(line)
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 2:
                raise self._corrupt(number, "expected 'address fingerprint'")
            try:
                address = check_address(fields[0])
                fp = normalize_fingerprint(fields[1])
            except TlsError as err:
                raise self._corrupt(number, str(err)) from None
            if address in entries and entries[address][0] != fp:
                raise self._corrupt(
                    number,
                    f"{address} is also on line {entries[address][1]} with another fingerprint",
                )
            entries.setdefault(address, (fp, number))
        return lines, entries

    def _corrupt(self, number: int, reason: str) -> KnownHostsError:
        path = os.fspath(self.path)
        return KnownHostsError(
            f"known hosts file {path}, line {number} is corrupt ({reason}); "
            "fix or delete that line",
            path=path,
            line=number,
        )

    def _write(self, lines: list[str]) -> None:
        if self._discards():
            return
        # Write through a symlink (dotfile managers) rather than replacing it.
        target = Path(os.path.realpath(self.path))
        try:
            if not target.parent.exists():
                target.parent.mkdir(mode=CONFIG_DIR_MODE, parents=True, exist_ok=True)
            # mkstemp creates the file 0o600 with O_EXCL.
            fd, temp = tempfile.mkstemp(prefix=".known_hosts.", dir=target.parent)
        except OSError as err:
            raise KnownHostsError(
                f"cannot write known hosts file {target}: {err.strerror or err}",
                path=os.fspath(self.path),
            ) from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, target)
        except OSError as err:
            unlink_quietly(Path(temp))
            raise KnownHostsError(
                f"cannot write known hosts file {target}: {err.strerror or err}",
                path=os.fspath(self.path),
            ) from None


def _line_address(line: str) -> str | None:
    fields = line.split()
    if not fields or fields[0].startswith("#"):
        return None
    return fields[0].lower()
