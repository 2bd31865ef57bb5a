"""Pure rendering of a TaskEvent for people (Slack, email): no I/O.

``summary`` decides what every human-facing channel shows; ``slack`` and ``mail`` only lay it out,
so a Slack message and an email about the same event say the same things. ``text`` holds the
shared text helpers, ``models`` the model-name catalogue and task kinds, ``names`` what render
knows about providers (handed in by the caller: render imports no provider module).
"""
