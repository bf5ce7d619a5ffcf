"""TLS and trust: ``der`` (a DER writer), ``x509`` (self-signed certificates, PEM,
fingerprints), ``contexts`` (AEAD-only SSL contexts, peer checks), ``known_hosts``
(trust on first use), ``errors`` (the layer's exceptions)."""
