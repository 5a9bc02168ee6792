"""PostgreSQL itself: the embedded server, connections and identity, SQL read by PostgreSQL's grammar,
row counts and schema snapshots, invalid indexes.
"""
