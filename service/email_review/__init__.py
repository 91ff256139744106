"""The email reviewer channel: a request email with a personal link, and the review page it
opens (Approve / Edit and approve / Reject / Delegate as POST forms). A GET never decides,
never spends anything and never changes state: mail scanners and link previews fetch every
link. Decisions go through the same path, scopes and policy checks as Teams and the API.

- links.py     the links' tokens (random, stored as SHA-256 only) and one-time codes
- message.py   the request and code emails, text and HTML (pure)
- page.py      the review page's HTML (pure)
- handlers.py  GET / POST /review/{approval_id}/{token}
- channel.py   who gets a link when (request, reminder, escalation, delegation, Teams fallback)
"""
