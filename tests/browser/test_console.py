"""The operations console in a real browser: log in, import a file with one bad row and see the refusal,
edit an offer and see the change in a recommend answer, promote and roll back a model, and every page
renders what the API reports."""

from __future__ import annotations

import concurrent.futures
import re
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from features.demo_catalog import demo_catalog
from harness.members import simulate_members, write_members
from infra.registry import Registry
from infra.settings import Settings
from service import bulk
from tests.browser.conftest import login
from tests.service.conftest import ADMIN, SF, STOREFRONT_KEY

pytestmark = [pytest.mark.integration]


def test_login_refuses_wrong_keys_and_admits_the_admin_key(page: Page) -> None:
    page.goto("/console/campaigns")
    page.wait_for_url("**/console/login?next=*")  # no key yet: sent to the login page
    login(page, "not-a-key")
    expect(page.locator("#login-error")).to_contain_text("invalid API key")
    login(page, STOREFRONT_KEY)
    expect(page.locator("#login-error")).to_contain_text("not an admin key")
    login(page)
    page.wait_for_url("**/console/catalogue")
    expect(page.locator("#offers tbody tr").first).to_be_visible()
    page.click("#logout")
    page.wait_for_url("**/console/login")
    page.goto("/console/models")
    page.wait_for_url("**/console/login?next=*")


def test_import_shows_the_refused_row_before_applying(admin_page: Page, tmp_path: Path, server: str) -> None:
    page = admin_page
    offers = [
        o.model_copy(update={"offer_id": f"ui-{i}"}) for i, o in enumerate(demo_catalog(time.time(), 3))
    ]
    lines = bulk.to_csv(offers).splitlines()
    header = lines[0].split(",")
    bad = lines[2].split(",")
    bad[header.index("kind")] = "voucher"  # not a kind
    path = tmp_path / "campaign.csv"
    path.write_text("\n".join([lines[0], lines[1], ",".join(bad), lines[3]]) + "\n")

    page.click("#show-import")
    page.set_input_files("#import-file", str(path))
    page.click("#import-validate")
    report = page.locator("#import-report")
    expect(report).to_contain_text("3 rows: 2 valid, 1 refused")
    expect(report).to_contain_text("Nothing written yet")
    refused = page.locator("#refused-rows tbody tr")
    expect(refused).to_have_count(1)
    expect(refused.first).to_contain_text("ui-1")
    expect(refused.first).to_contain_text("kind")
    # validated, not applied: the API has none of them yet
    assert httpx.get(f"{server}/v1/admin/offers/ui-0", headers=ADMIN).status_code == 404

    page.click("#import-apply")
    expect(page.locator("#flash")).to_contain_text("2 created")
    page.fill("#search", "ui-")
    expect(page.locator("#offers tbody tr")).to_have_count(2)
    assert httpx.get(f"{server}/v1/admin/offers/ui-0", headers=ADMIN).status_code == 200
    assert httpx.get(f"{server}/v1/admin/offers/ui-1", headers=ADMIN).status_code == 404


def test_an_edit_in_the_console_reaches_the_recommend_answer(admin_page: Page, server: str) -> None:
    page = admin_page
    first = httpx.post(f"{server}/v1/recommend", json={"member_id": "cold-1"}, headers=SF).json()["offers"][0]
    before = httpx.get(f"{server}/v1/admin/offers/{first['offer_id']}", headers=ADMIN).json()
    page.fill("#search", first["offer_id"])
    row = page.locator(f'#offers tbody tr[data-offer="{first["offer_id"]}"]')
    row.locator("button.edit").click()
    new_title = "Edited in the console: 20 off everything"
    page.fill("#offer-form [name=title]", new_title)
    page.fill("#offer-form [name=display_text]", "Only this week")
    page.click("#offer-save")
    expect(page.locator("#flash")).to_contain_text(f"Saved {first['offer_id']}")
    expect(row).to_contain_text(new_title)
    after = httpx.get(f"{server}/v1/admin/offers/{first['offer_id']}", headers=ADMIN).json()
    # only what was edited changed (campaign times keep their seconds through the minute picker)
    assert {k for k in after if after[k] != before.get(k)} == {"title", "display_text"}

    answer = httpx.post(f"{server}/v1/recommend", json={"member_id": "cold-1"}, headers=SF).json()
    item = next(o for o in answer["offers"] if o["offer_id"] == first["offer_id"])
    assert item["title"] == new_title and item["display_text"] == "Only this week"

    # retire it (with the confirmation): it leaves the recommend answer
    row.locator("button.retire").click()
    page.click("#confirm-ok")
    expect(page.locator("#flash")).to_contain_text(f"Retired {first['offer_id']}")
    answer = httpx.post(
        f"{server}/v1/recommend", json={"member_id": "cold-1", "explain": True}, headers=ADMIN
    ).json()
    assert first["offer_id"] not in {o["offer_id"] for o in answer["offers"]}
    assert {"offer_id": first["offer_id"], "reason": "inactive"}.items() <= next(
        x for x in answer["excluded"] if x["offer_id"] == first["offer_id"]
    ).items()


def test_promote_and_roll_back_a_model_with_confirmation(admin_page: Page, registry: Registry) -> None:
    page = admin_page
    page.click("nav >> text=Models")
    expect(page.locator("#serving")).to_have_text("v1")
    v2 = page.locator('#models tbody tr[data-version="v2"]')
    v2.locator("button.promote").click()
    page.click("#confirm-cancel")  # cancelled: nothing changes
    expect(page.locator("#serving")).to_have_text("v1")
    assert registry.promoted() == "v1"

    v2.locator("button.promote").click()
    expect(page.locator("#confirm-text")).to_contain_text("Promote model v2")
    page.click("#confirm-ok")
    expect(page.locator("#flash")).to_contain_text("Now serving v2")
    expect(page.locator("#serving")).to_have_text("v2")
    expect(page.locator("#previous")).to_have_text("v1")

    page.click("#rollback")
    expect(page.locator("#confirm-text")).to_contain_text("Roll back from v2 to v1")
    page.click("#confirm-ok")
    expect(page.locator("#serving")).to_have_text("v1")
    assert registry.promoted() == "v1"

    # a model the code refuses: the error is shown and v1 keeps serving
    page.locator('#models tbody tr[data-version="bad-schema"] button.promote').click()
    page.click("#confirm-ok")
    expect(page.locator("#flash")).to_contain_text("refused (schema_mismatch)")
    expect(page.locator("#serving")).to_have_text("v1")


def test_every_page_shows_the_service_state(
    admin_page: Page, server: str, settings: Settings, shots: Path | None, tmp_path: Path
) -> None:
    page = admin_page
    # Playwright's sync API runs an event loop in this thread: write the member from another one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(write_members, settings, ["m-ui-1"], simulate_members(["m-ui-1"])).result()
    for _ in range(5):
        httpx.post(f"{server}/v1/recommend", json={"member_id": "m-ui-1"}, headers=SF)
    # A limited offer with 2 units claimed by 3 members: 2 accepted, 1 refused as sold out.
    limited = next(o for o in demo_catalog(time.time()) if o.inventory is not None)
    small = limited.model_copy(
        update={"offer_id": "flash-sale-hero", "inventory": 2, "title": "Flash sale: 30 off"}
    )
    httpx.post(f"{server}/v1/admin/offers", json=small.model_dump(mode="json"), headers=ADMIN)
    outcomes = []
    deadline = time.monotonic() + 20
    for member in ("m-ui-1", "m-ui-2", "m-ui-3"):
        claim = {"type": "claim", "member_id": member, "offer_id": "flash-sale-hero", "request_id": "r-ui"}
        while True:  # the producer connects to the broker in the background after start-up
            r = httpx.post(f"{server}/v1/feedback", json=claim, headers=SF)
            if r.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        outcomes.append(r.status_code)
    assert outcomes == [202, 202, 409]
    httpx.post(f"{server}/v1/recommend", json={"member_id": "m-ui-unknown"}, headers=SF)

    def shot(name: str) -> None:
        if shots is not None:
            page.screenshot(path=str(shots / f"{name}.png"))  # the viewport: long tables are cut

    shot("catalogue")
    page.click("#show-import")
    bad = tmp_path / "sale.csv"
    offers = [o.model_copy(update={"offer_id": f"sale-{o.offer_id}"}) for o in demo_catalog(time.time(), 4)]
    lines = bulk.to_csv(offers).splitlines()
    cells = lines[2].split(",")
    cells[bulk.CSV_COLUMNS.index("subtype")] = "mystery"
    bad.write_text(
        "\n".join([lines[0] + ",note", *(x + ",x" for x in [lines[1], ",".join(cells), *lines[3:]])])
    )
    page.set_input_files("#import-file", str(bad))
    page.click("#import-validate")
    expect(page.locator("#refused-rows tbody tr")).to_have_count(1)
    shot("catalogue-import")
    page.click("#offers tbody tr:first-child button.edit")
    expect(page.locator("#editor")).to_be_visible()
    page.locator("#editor").scroll_into_view_if_needed()
    shot("catalogue-edit")

    page.click("nav >> text=Campaigns")
    expect(page.locator("#campaigns tbody tr").first).to_be_visible()
    expect(page.locator("#campaigns tbody")).to_contain_text("unlimited")
    page.uncheck("#only-watched")
    assert page.locator("#campaigns tbody tr").count() == len(demo_catalog(0.0)) + 1  # + flash-sale-hero
    page.check("#only-watched")
    page.fill("#search", "flash")
    refusal = page.locator('#refusals tbody tr[data-offer="flash-sale-hero"]')
    expect(refusal).to_contain_text("1")  # refreshed every 5 s; the reasons table fills when refused
    expect(page.locator("#refusals thead")).to_contain_text("sold_out")
    expect(page.locator('#campaigns tbody tr[data-offer="flash-sale-hero"]')).to_contain_text("0 / 2")
    page.fill("#search", "")
    shot("campaigns")

    page.click("nav >> text=Models")
    expect(page.locator("#no-experiment")).to_be_visible()
    experiment = {
        "experiment_id": "ui-test",
        "arms": [
            {"name": "control", "share": 0.5},
            {"name": "challenger", "share": 0.5, "model_version": "v2"},
        ],
    }
    r = httpx.put(f"{server}/v1/admin/experiment", json=experiment, headers=ADMIN)
    assert r.status_code == 200, r.text
    page.reload()
    expect(page.locator('#arms tbody tr[data-arm="challenger"]')).to_contain_text("v2")
    expect(page.locator("#experiment-id")).to_have_text("ui-test")
    expect(page.locator('#models tbody tr[data-version="v1"]')).to_contain_text("serving")
    shot("models")
    page.click("#end-experiment")
    page.click("#confirm-ok")
    expect(page.locator("#no-experiment")).to_be_visible()
    assert httpx.get(f"{server}/v1/admin/experiment", headers=ADMIN).status_code == 404

    page.click("nav >> text=Health")
    expect(page.locator("#ready")).to_have_text("ready")
    expect(page.locator("#answers")).to_have_text("6")
    expect(page.locator("#modes tbody")).to_contain_text("personalised")
    expect(page.locator("#modes tbody")).to_contain_text("cold_start")
    expect(page.locator("#stages tbody")).to_contain_text("total")
    shot("health")

    page.click("nav >> text=Member")
    page.fill("#member-id", "m-ui-1")
    page.select_option("#member-form [name=page_type]", "category")
    page.select_option("#member-form [name=category]", "baby")
    page.click("#member-show")
    expect(page.locator("#slate-meta")).to_contain_text("mode personalised")
    expect(page.locator("#slate tbody tr").first).to_be_visible()
    expect(page.locator("#features tbody")).to_contain_text("orders_30d")
    expect(page.locator("#attributes tbody")).to_contain_text("tier")
    excluded = page.locator("#excluded tbody tr")
    assert excluded.count() > 0
    expect(page.locator("#excluded-count")).to_have_text(re.compile(r"\d+ offers"))
    shot("member")

    page.click("#logout")
    shot("login")
