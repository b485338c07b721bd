"""Keys, envelope encryption and signed manifests.

:mod:`~dsguard.crypto.keys` opens signers and key-encryption keys by URL (``file:``, ``env:``,
``pkcs11:``, plugins); :mod:`~dsguard.crypto.envelope` encrypts files in authenticated chunks;
:mod:`~dsguard.crypto.manifest` pins the files of a model bundle by signed SHA-256 digests;
:mod:`~dsguard.crypto.weights` applies both to model bundles and loads them into memory.
"""
