"""Pure rendering of a TaskEvent for people (Slack, email): no I/O.

``summary`` decides what every human-facing channel shows; ``slack`` and ``mail`` only lay it out,
so a Slack message and an email about the same event say the same things.
"""
