"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against real nodes.

Each test writes screenshots of what it saw to target/web-artifacts (SPHERE_WEB_ARTIFACTS)."""

import hashlib
import os
import signal

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import ARTIFACTS, Node, free_port, paid_config, start_demo_plugin

CHROMIUM = os.environ.get("SPHERE_CHROMIUM", "/usr/bin/chromium")
# Headless Chromium as root needs --no-sandbox; the machine has no internet to talk to.
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Live views refresh every 2 s; a plugin restart and an audit take a few seconds more.
expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/test-all installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"the page threw: {errors}"


def screenshot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_the_overview_shows_the_node_and_reads_on_a_phone(page, mesh, browser):
    requester, _providers = mesh
    page.goto(requester.url + "/")
    expect(page.locator("#node-id")).to_have_text(requester.node_id)
    expect(page.locator("#node-facts")).to_contain_text("Up for")
    expect(page.locator("#storage-text")).to_contain_text("offered")
    # The chart needs two samples of /metrics; tasks run meanwhile give it something to show.
    for _ in range(5):
        assert requester.call("POST", "/task", {"input": "chart"})[0] == 200
    expect(page.locator("#task-rate")).to_contain_text("tasks/s")
    screenshot(page, "overview")

    phone = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    try:
        small = phone.new_page()
        small.goto(requester.url + "/")
        expect(small.locator("#node-id")).to_have_text(requester.node_id)
        # Nothing wider than the screen: no sideways scrolling of the page itself.
        assert small.evaluate("document.documentElement.scrollWidth") <= 375
        screenshot(small, "overview-phone")
    finally:
        phone.close()


def test_a_file_is_stored_listed_downloaded_and_deleted_through_the_page(page, mesh, tmp_path):
    requester, providers = mesh
    original = tmp_path / "photo.bin"
    original.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    page.goto(requester.url + "/#/files")
    page.get_by_label("File to store", exact=True).set_input_files(str(original))
    page.get_by_label("Replicas the node picks among its peers", exact=True).fill("2")
    page.get_by_role("button", name="Store", exact=True).click()
    expect(page.locator("#upload-progress")).to_be_visible()
    expect(page.locator("#upload-status")).to_contain_text("Stored photo.bin")
    assert page.locator("#upload-progress").evaluate("bar => bar.value") == 100

    row = page.locator("#files-table tbody tr", has_text="photo.bin")
    expect(row).to_have_count(1)
    expect(row.locator(".health")).to_have_text("ok")
    # Both replicas audited and healthy (audits run every second on this requester).
    expect(row.locator(".replicas .badge-ok")).to_have_count(2)
    for provider in providers:
        expect(row.locator(".replicas")).to_contain_text(provider.grpc)
    screenshot(page, "files")

    with page.expect_download() as download:
        row.get_by_role("button", name="Download photo.bin", exact=True).click()
    saved = tmp_path / "downloaded.bin"
    download.value.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).digest() == hashlib.sha256(original.read_bytes()).digest()

    row.get_by_role("button", name="Delete photo.bin", exact=True).click()
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Delete photo.bin")
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(page.locator("#files-table tbody tr", has_text="photo.bin")).to_have_count(0)
    status, listing = requester.call("GET", "/files")
    assert status == 200 and all(file["name"] != "photo.bin" for file in listing["files"])


def test_a_task_run_from_the_form_shows_its_output_and_a_failure_its_code(page, mesh):
    requester, providers = mesh
    page.goto(requester.url + "/#/task")
    page.get_by_label("Input text", exact=True).fill("hello from the dashboard")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator("#task-output")).to_have_text("hello from the dashboard")
    expect(page.locator("#task-result")).to_contain_text("Succeeded on plugin hello")

    # On a peer chosen from the list.
    page.get_by_label("Target node", exact=True).select_option(
        f"{providers[0].node_id}@{providers[0].grpc}")
    page.get_by_label("Input text", exact=True).fill("on a peer")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator("#task-output")).to_have_text("on a peer")
    expect(page.locator("#task-result")).to_contain_text(f"of node {providers[0].node_id[:8]}")
    screenshot(page, "task")

    # Anywhere the scheduler chooses: one of the members that serve the plugin.
    page.get_by_label("Target node", exact=True).select_option("*")
    page.get_by_label("Plugin", exact=True).select_option("hello")
    page.get_by_label("Input text", exact=True).fill("anywhere")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator("#task-output")).to_have_text("anywhere")
    result = page.locator("#task-result").inner_text()
    assert any(f"of node {provider.node_id[:8]}" in result for provider in providers), result

    # A selector nobody matches fails with the scheduler's reasons.
    page.get_by_label("Labels the chosen node must carry", exact=False).fill("region=nowhere")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator("#task-result")).to_contain_text("no_capable_node")
    expect(page.locator("#task-result")).to_contain_text("no label region")

    page.get_by_label("or another node's gRPC address", exact=True).fill("127.0.0.1:1")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator("#task-result")).to_contain_text("target_unreachable")

    # Every task run from the form is listed, newest first, with how it ended.
    rows = page.locator("#tasks-table tbody tr")
    expect(rows).to_have_count(5)
    expect(rows.nth(0)).to_contain_text("failed")
    expect(rows.nth(0)).to_contain_text("target_unreachable")
    expect(rows.nth(4)).to_contain_text("succeeded")


def test_a_killed_plugin_shows_unhealthy_then_healthy_again(page):
    # A plugin someone else runs (the node does not restart it), so the page has time to show it
    # down; a plugin the node runs itself is back before the page's next refresh.
    port = free_port()
    plugin = start_demo_plugin(port)
    node = Node(args=["--plugin-address", f"http://127.0.0.1:{port}"])
    try:
        page.goto(node.url + "/#/plugins")
        health = page.locator("#plugins-table tr[data-plugin=hello] .health")
        expect(health).to_have_text("serving")
        plugin.kill()
        plugin.wait()
        expect(health).to_have_text("unreachable")
        # The last problem says why.
        expect(page.locator("#plugins-table tr[data-plugin=hello] td").last).not_to_have_text("–")
        screenshot(page, "plugins-down")
        plugin = start_demo_plugin(port)
        expect(health).to_have_text("serving")
        screenshot(page, "plugins")
    finally:
        plugin.kill()
        node.stop()


def test_the_peers_page_lists_the_members_and_shows_one_stopped_as_dead(page, mesh):
    requester, providers = mesh
    page.goto(requester.url + "/#/peers")
    for provider in providers:
        row = page.locator(f"#peers-table tbody tr[data-peer='{provider.node_id}']")
        expect(row).to_contain_text(provider.grpc)
        expect(row.locator(".state")).to_have_text("alive")
        expect(row.locator(".plugins")).to_contain_text("hello")
        expect(row.locator(".plugins")).to_contain_text("0 running, 0 queued")
        expect(row.locator(".seen")).to_contain_text("s ago")
        expect(row.locator(".prices")).to_have_text("free")
    screenshot(page, "peers")

    # A member that joined through the requester, then stopped: listed, then dead.
    joiner = Node({"mesh": {"bootstrap": [requester.grpc]}, "labels": {"region": "eu"}})
    row = page.locator(f"#peers-table tbody tr[data-peer='{joiner.node_id}']")
    expect(row.locator(".state")).to_have_text("alive")
    expect(row).to_contain_text("region=eu")
    joiner.process.kill()
    expect(row.locator(".state")).to_have_text("dead")
    joiner.stop()


def test_a_channel_is_opened_topped_up_redeemed_and_closed_through_the_page(page, chain):
    provider = Node(paid_config(chain), key=chain.keys[2])
    requester = Node(paid_config(chain, {"peers": [provider.grpc]}), key=chain.keys[1])
    try:
        page.goto(requester.url + "/#/payments")
        page.get_by_label("Provider's gRPC address", exact=True).fill(provider.grpc)
        page.get_by_label("Deposit", exact=True).fill("0.25eth")
        page.get_by_role("button", name="Open a channel", exact=True).click()
        dialog = page.locator("#confirm")
        expect(dialog).to_contain_text("deposit of 0.25eth")
        dialog.get_by_role("button", name="Open", exact=True).click()
        row = page.locator("#channels-out tbody tr[data-channel]")
        expect(row).to_have_count(1)
        expect(row.locator(".deposit")).to_have_text("0.25 ETH")
        expect(row).to_contain_text("open")
        expect(page.locator("#notice")).to_contain_text("Opened channel")
        screenshot(page, "payments")

        # A paid task spends from it.
        assert requester.call("POST", "/task", {"target": provider.grpc, "input": "paid"})[0] == 200
        expect(page.locator("#payments-summary")).to_contain_text("1000 wei")

        row.get_by_role("button", name="Top up", exact=True).click()
        dialog.get_by_label("Amount", exact=True).fill("0.05eth")
        dialog.get_by_role("button", name="Top up", exact=True).click()
        expect(row.locator(".deposit")).to_have_text("0.3 ETH")

        # The provider redeems what it earned, from its own dashboard.
        provider_page = page.context.new_page()
        provider_page.goto(provider.url + "/#/payments")
        expect(provider_page.locator("#channels-in tbody")).to_contain_text("1000 wei")
        provider_page.get_by_role("button", name="Redeem earnings now", exact=True).click()
        provider_page.locator("#confirm").get_by_role("button", name="Redeem", exact=True).click()
        expect(provider_page.locator("#notice")).to_contain_text("Redeemed 1 channel(s).")
        expect(provider_page.locator("#payments-summary")).to_contain_text("Redeemed1000 wei")

        row.get_by_role("button", name="Close", exact=True).click()
        expect(dialog).to_contain_text("challenge period")
        dialog.get_by_role("button", name="Close", exact=True).click()
        expect(row).to_contain_text("closing")
        expect(row.get_by_role("button", name="Finish closing", exact=True)).to_be_visible()
        assert requester.call("GET", "/payments")[1]["channels_out"][0]["phase"] == "closing"
    finally:
        requester.stop()
        provider.stop()


def test_a_node_beyond_loopback_asks_for_its_token_once(page):
    node = Node({"http": {"token": "secret-for-the-dashboard"}})
    try:
        page.goto(node.url + "/")
        dialog = page.locator("#token-dialog")
        expect(dialog).to_be_visible()
        page.get_by_label("Token", exact=True).fill("secret-for-the-dashboard")
        dialog.get_by_role("button", name="Use this token", exact=True).click()
        expect(page.locator("#node-id")).to_have_text(node.node_id)
        page.goto(node.url + "/#/files")
        expect(page.locator("#files-table tbody")).to_contain_text("No files yet.")
        expect(dialog).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('sphere-token')") == "secret-for-the-dashboard"
    finally:
        node.stop()


def test_every_control_is_labelled_and_a_task_runs_from_the_keyboard(page, mesh):
    requester, _providers = mesh
    page.goto(requester.url + "/")
    expect(page.locator("#node-id")).to_have_text(requester.node_id)
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter(control => !(control.labels && control.labels.length)
            && !control.getAttribute('aria-label') && !control.textContent.trim())
        .map(control => control.id || control.outerHTML)""")
    assert unlabelled == [], unlabelled

    # The first Tab reaches the skip link, the next ones the pages; Enter opens one.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(3):
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Run a task"
    page.keyboard.press("Enter")
    expect(page.locator("#page-task")).to_be_visible()

    # Typed, then Tab past the file input to the Run button, then Enter.
    page.get_by_label("Input text", exact=True).focus()
    page.keyboard.type("typed")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Run"
    page.keyboard.press("Enter")
    expect(page.locator("#task-output")).to_have_text("typed")
