"""The guide's procedures that are more than one call: deploy checklist, troubleshoot, authoring and
review, backup and rehearsal, verify against a snapshot, backfills, fleets.
"""
