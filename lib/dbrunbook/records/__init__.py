"""Signed records: in-toto statements and their SSH signatures, the DSSE envelope, the ledger, the chain
tips, whose key is trusted, and the archive's verification.

The package's own names are those of ``records.statements`` (``records.write_record``, ``records.verify_record``).
"""

from dbrunbook.records.statements import *  # noqa: F403 - the package's face
from dbrunbook.records.statements import __all__  # noqa: F401
