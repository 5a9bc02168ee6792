"""What people look at: the HTML archive and its style, plots, and the one table helper every notebook
table and ``_repr_html_`` uses.
"""
