"""Cryptography that outlives the server: the recovery kit and signed records.

`kit`      the recovery kit file: scrypt + AES-256-GCM, versioned, with an
           ASCII armour (per-line checksums) for paper or a safe.
`signing`  Ed25519 signatures over run records and drill reports, so an
           auditor can trust a result that was not produced in front of them.

Both use only the `cryptography` package; nothing here touches the network.
"""
