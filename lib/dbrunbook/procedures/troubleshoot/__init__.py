"""The troubleshoot runbook's checks, one module per family; ``procedures.diagnose`` is their entry point.

Nine checks look at a target for the guide's problems. They share value objects (``results``), what they
read of a migration set (``state``) and of its SQL (``sqlread``); each family of checks has its module:
the version table against the scripts (``revisions``), the pending SQL against the live schema and rows
(``pending``), what the live server holds (``live``), and changes made behind the chain's back (``drift``).
Runbooks import ``procedures.diagnose``, which re-exports every public name of these modules.
"""
