"""Small utilities: ``names`` (the name rules), ``safetext`` (the one sanitizer for text
others wrote), ``logfmt`` (log lines), ``netaddr`` (``[v6]:port``), ``exitcodes``."""
