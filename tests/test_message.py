"""The MIME message built for an approved email reads back as exactly what was approved:
the delivery refuses to send otherwise, so any drift here fails approved emails."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest

from service.domain import EmailAction
from service.mail.message import build_message, content_of, visible_content, visible_content_of

WORDS = ["refund", "order", "é", "Rückerstattung", "naïve", "café", "日本語", "x" * 30, "y" * 77, "Z", "—",
         "ok.", "ü" * 20, "https://example.com/orders/" + "a" * 120, "\t", "emoji 🎉"]


def round_trip(action: EmailAction) -> EmailAction:
    mime = build_message(action, sender="Support <support@example.com>", reply_to=None,
                         message_id="<1@countersign.example.com>", date=datetime(2026, 11, 21, tzinfo=timezone.utc))
    assert max(len(line) for line in mime.split(b"\r\n")) <= 998  # RFC 5322's hard line limit
    # What the decision hashes (rendered, not built) is what the recipient's parser finds.
    assert visible_content_of(mime) == visible_content(action, sender="Support <support@example.com>", reply_to=None)
    return content_of(mime)


@pytest.mark.parametrize("subject", [
    "y" * 77 + " Rückerstattung",  # a long first word: Python's folder used to leave a leading space
    "https://example.com/orders/" + "a" * 120 + " — bestätigt",
    "日本語の件名 " * 40,
])
def test_subjects_that_fold_read_back_unchanged(subject: str) -> None:
    action = EmailAction(to=("ann@example.com",), subject=subject[:500], body="Hello")
    assert round_trip(action).content_sha256() == action.content_sha256()


def test_random_subjects_and_bodies_read_back_unchanged() -> None:
    rng = random.Random(20261121)
    for _ in range(500):
        subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))).replace("\t", "x")[:500]
        body = "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(rng.randint(1, 5)))
        action = EmailAction(to=("ann@example.com",), cc=("b@example.com",), subject=subject, body=body)
        back = round_trip(action)
        assert back.content_sha256() == action.content_sha256(), (subject, back.subject)


def test_visible_content_is_what_the_message_shows() -> None:
    from datetime import datetime, timezone

    from service.domain import EmailAction
    from service.mail.message import build_message, visible_content, visible_content_of

    action = EmailAction(to=("ann@example.com",), cc=("o@example.com",), subject="Hi <b> & é",
                         body="Dear Ann,\n\nLine <x> & y\nmore\n\n\tok é", in_reply_to="<a@b>", references=("<c@d>",))
    for sender, reply_to in (("Support Team <support@example.com>", "help@example.com"),
                             ("Zoë Ünïcode <z@example.com>", None), ("plain@example.com", "Help <h@example.com>")):
        mime = build_message(action, sender=sender, reply_to=reply_to, message_id="<m@x>",
                             date=datetime.now(timezone.utc))
        expected = visible_content(action, sender=sender, reply_to=reply_to)
        assert visible_content_of(mime) == expected
        assert [p[0] for p in expected.parts] == ["text/plain", "text/html"]
        other = visible_content(action, sender="Support Team <support@evil.example>", reply_to=reply_to)
        assert other.sha256() != expected.sha256()
        changed_html = visible_content_of(mime.replace(b"<p>", b"<p>Pay <a href=x>here</a> "))
        assert changed_html.action == expected.action and changed_html.sha256() != expected.sha256()



def test_remembering_parsed_headers_changes_no_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-message header registry (a speed-up) builds the very bytes, and reads back the
    very content, that the standard `email` policies do."""
    from email import policy
    from email.parser import BytesParser

    import service.mail.message as message

    def boundary(mime: bytes) -> bytes:
        found = BytesParser(policy=policy.default).parsebytes(mime).get_boundary()
        assert found
        return found.encode()

    rng = random.Random(20261202)
    for i in range(200):
        subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))).replace("\t", "x")[:500]
        body = "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 9))) for _ in range(rng.randint(1, 6)))
        action = EmailAction(to=("ann@example.com", "Bob Müller <bob@example.com>")[: 1 + i % 2],
                             cc=("carl@example.com",) if i % 3 == 0 else (), subject=subject, body=body or "x")
        sender, reply_to = "Süpport Team <support@example.com>", "help@example.com" if i % 2 else None
        date = datetime(2026, 12, 2, tzinfo=timezone.utc)
        message_id = f"<{i}@countersign.example.com>"

        built = build_message(action, sender=sender, reply_to=reply_to, message_id=message_id, date=date)
        read = visible_content_of(built)
        with monkeypatch.context() as standard:
            standard.setattr(message, "_build_policy", lambda: message._POLICY)
            standard.setattr(message, "_parser", lambda: BytesParser(policy=policy.default))
            reference = build_message(action, sender=sender, reply_to=reply_to, message_id=message_id, date=date)
            reference_read = visible_content_of(built)
        # Only the multipart boundary is random.
        assert built == reference.replace(boundary(reference), boundary(built))
        assert read == reference_read
