"""The README's pictures, made from the code itself: a pending approval card built by the
card builder and rendered by the official Adaptive Cards renderer (npm `adaptivecards`, from
tests/cards_js) in Debian's headless Chromium, and the email review page as the review
channel renders it.

    .venv/bin/python -m tests.readme_pictures      # rewrites tests/fixtures/readme/

Next to each PNG is what it was made from (the card's JSON, the page's HTML);
tests/test_readme_pictures.py fails when the code would now make something else, so the
pictures cannot drift from the product unnoticed.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from adaptive_cards import ApprovalView, SourceView, build_pending_card
from service.email_review.page import PageState, ReviewPage, render

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures" / "readme"
CARDS_JS = HERE / "cards_js" / "node_modules"

SAMPLE = ApprovalView(
    approval_id="5f0c8a52-5d1e-4c55-9f3e-1b2a7d9c4e10", run_id="0b6d3f5e-8a0f-4c8e-a2a7-64b0e1f9d2c3", revision=1,
    status="pending", to=("ann.customer@example.com",), subject="Re: my refund for order 1042",
    body=("Hello Ann,\n\nThank you for sending the headphones back. Refunds are issued within 5 business days "
          "of the return arriving, to the original payment method.\n\nThe original shipping cost is refunded "
          "too when the item was faulty.\n\nKind regards,\nCustomer support"),
    sources=(SourceView("Returns and refunds", "returns-and-refunds.md",
                        "Refunds are issued within 5 business days of the return arriving."),
             SourceView("Damaged or wrong items", "damaged-or-wrong-items.md",
                        "we refund the item in full, including the original shipping cost.")),
    requested_by="ops@example.com", policy="refunds", reviewers=("rita@example.com", "sam@example.com"),
    deadline=datetime(2026, 12, 4, 16, 0, tzinfo=timezone.utc),
    progress=("0 of 2 approvals", "Still asked: rita@example.com, sam@example.com",
              "Next reminder: 2026-12-02 14:00 UTC; expires 2026-12-04 16:00 UTC"),
    delegable=True,
)


def card() -> dict[str, object]:
    return build_pending_card(SAMPLE)


def review_page() -> str:
    return render(ReviewPage(PageState.OPEN, "Approval requested", view=SAMPLE, reviewer="rita@example.com",
                             csrf="0" * 64, delegates=("dana@example.com",)))


_HOST = """<!doctype html><html><head><meta charset="utf-8"><style>
body { margin: 0; padding: 16px; background: #f5f5f5; font-family: "Segoe UI", Helvetica, Arial, sans-serif; }
#card { width: 520px; background: #fff; border-radius: 6px; box-shadow: 0 1px 4px rgba(0,0,0,.2); }
</style></head><body><div id="card"></div></body></html>"""


def main() -> int:
    from playwright.sync_api import sync_playwright

    from .peers.browser import CHROMIUM, FLAGS

    OUT.mkdir(parents=True, exist_ok=True)
    built = card()
    (OUT / "approval-card.json").write_text(json.dumps(built, indent=1, ensure_ascii=False) + "\n")
    page_html = review_page()
    (OUT / "review-page.html").write_text(page_html)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=list(FLAGS), headless=True)
        page = browser.new_page(viewport={"width": 560, "height": 900}, device_scale_factor=1)
        page.set_content(_HOST)
        page.add_script_tag(path=str(CARDS_JS / "markdown-it" / "dist" / "browser" / "markdown-it.umd.min.js"))
        page.add_script_tag(path=str(CARDS_JS / "adaptivecards" / "dist" / "adaptivecards.min.js"))
        page.evaluate("""card => {
            const md = window.markdownit();
            AdaptiveCards.AdaptiveCard.onProcessMarkdown = (text, result) => {
                result.outputHtml = md.render(text); result.didProcess = true; };
            const adaptive = new AdaptiveCards.AdaptiveCard();
            adaptive.parse(card);
            document.getElementById("card").appendChild(adaptive.render());
        }""", built)
        page.locator("#card").screenshot(path=str(OUT / "approval-card.png"))
        page = browser.new_page(viewport={"width": 820, "height": 900}, device_scale_factor=1)
        page.set_content(page_html)
        page.screenshot(path=str(OUT / "review-page.png"), full_page=True)
        browser.close()
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
