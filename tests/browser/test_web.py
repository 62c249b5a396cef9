"""The user's paths through the web interface, by the names a user sees
(SPEC §14). Each page visited passes axe-core and causes no CSP violation
(the `watched` fixture fails the test otherwise)."""

import re
import uuid

from conftest import ADMIN_EMAIL, USER_EMAIL, USER_PASSWORD, sign_in

def field(label):
    """A form field's label: its name in words, marked "(required)" or not."""
    return re.compile("^" + re.escape(label) + r"( \(required\))?$")


NAV = ["Accounts", "Contacts", "Leads", "Opportunities", "Cases", "Activities", "Sync"]


def test_r_w2_sign_in_page_is_where_a_stranger_lands(watched):
    page = watched.page
    page.goto("/contacts")
    assert page.get_by_role("button", name="Sign in").is_visible()
    assert page.get_by_role("link", name="Contacts").count() == 0
    watched.accessible()


def test_r_w2_wrong_password_is_refused(watched):
    page = watched.page
    page.goto("/")
    page.get_by_label("Email").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("button", name="Sign in").is_visible()
    assert page.get_by_role("link", name="Contacts").count() == 0
    watched.accessible()


def test_r_w3_navigation_names_and_admin_only_for_admins(watched):
    page = watched.page
    sign_in(watched)
    for name in NAV + ["Admin"]:
        assert page.get_by_role("link", name=name, exact=True).count() >= 1, name
    watched.accessible()
    page.get_by_role("button", name="Sign out").or_(page.get_by_role("link", name="Sign out")).first.click()
    assert page.get_by_role("button", name="Sign in").is_visible()
    sign_in(watched, USER_EMAIL, USER_PASSWORD)
    for name in NAV:
        assert page.get_by_role("link", name=name, exact=True).count() >= 1, name
    assert page.get_by_role("link", name="Admin", exact=True).count() == 0


def test_r_w4_new_contact_saved_then_found_by_search(watched, crm):
    page = watched.page
    last = "Lee" + uuid.uuid4().hex[:8]
    sign_in(watched)
    page.get_by_role("link", name="Contacts", exact=True).first.click()
    watched.accessible()
    page.get_by_role("link", name="New").or_(page.get_by_role("button", name="New")).first.click()
    watched.accessible()
    page.get_by_label(field("First name")).fill("Ann")
    page.get_by_label(field("Last name")).fill(last)
    page.get_by_label(field("Email")).fill(f"{last.lower()}@example.com")
    page.get_by_role("button", name="Save").click()
    page.get_by_text(last).first.wait_for()
    watched.accessible()
    # The CRM holds it, as the API sees it.
    found = crm.api("GET", f"/contacts?q={last}")["items"]
    assert [c["last_name"] for c in found] == [last]
    page.get_by_role("link", name="Contacts", exact=True).first.click()
    page.get_by_label("Search").fill(last)
    page.get_by_role("button", name="Search").click()
    assert page.get_by_role("link", name=re.compile(last)).count() >= 1
    watched.accessible()


def test_r_w5_record_page_shows_its_timeline(watched, crm):
    page = watched.page
    name = "Acme " + uuid.uuid4().hex[:8]
    account = crm.api("POST", "/accounts", {"name": name})
    subject = "Kick-off " + uuid.uuid4().hex[:8]
    crm.api(
        "POST",
        "/appointments",
        {
            "subject": subject,
            "start": "2027-01-05T10:00:00Z",
            "end": "2027-01-05T11:00:00Z",
            "regarding": {"set": "accounts", "id": account["id"]},
        },
    )
    sign_in(watched)
    page.get_by_role("link", name="Accounts", exact=True).first.click()
    page.get_by_label("Search").fill(name)
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=name).first.click()
    page.get_by_text(subject).first.wait_for()
    assert page.get_by_role("link", name="Edit").or_(page.get_by_role("button", name="Edit")).count() >= 1
    assert page.get_by_role("button", name="Delete").or_(page.get_by_role("link", name="Delete")).count() >= 1
    watched.accessible()


def test_r_w1_hostile_record_text_is_shown_not_run(watched, crm):
    page = watched.page
    hostile = '<img src=x onerror="alert(1)">' + uuid.uuid4().hex[:6]
    contact = crm.api("POST", "/contacts", {"first_name": "Eve", "last_name": hostile})
    sign_in(watched)
    page.goto(f"/contacts/{contact['id']}")
    page.get_by_text(hostile).first.wait_for()
    assert page.locator("img[src=x]").count() == 0
    watched.accessible()


def test_r_w5_set_regarding_on_an_activity(watched, crm):
    page = watched.page
    name = "Globex " + uuid.uuid4().hex[:8]
    account = crm.api("POST", "/accounts", {"name": name})
    task = crm.api("POST", "/tasks", {"subject": "Call back " + uuid.uuid4().hex[:6]})
    sign_in(watched)
    page.goto(f"/tasks/{task['id']}")
    page.get_by_role("link", name="Set regarding").click()
    watched.accessible()
    page.get_by_label("Set").select_option(label="Accounts")
    page.get_by_label("Search").fill(name)
    page.get_by_role("button", name="Search").click()
    page.get_by_role("button", name=f"Choose {name}").click()
    page.get_by_role("link", name=name).first.wait_for()
    watched.accessible()
    assert crm.api("GET", f"/tasks/{task['id']}")["regarding"]["id"] == account["id"]


def test_r_w7_admin_changes_a_field_direction(watched, crm):
    page = watched.page
    sign_in(watched)
    page.get_by_role("link", name="Admin", exact=True).first.click()
    watched.accessible()
    page.get_by_role("link", name="Sync-field directions").click()
    watched.accessible()
    page.get_by_role("link", name="Contacts", exact=True).last.click()
    page.get_by_label("Job title", exact=True).select_option(label="CRM to mailbox only")
    page.get_by_role("button", name="Save").click()
    watched.accessible()
    assert crm.api("GET", "/sync-fields/contacts")["fields"]["job_title"] == "to_mailbox"
    assert page.get_by_label("Job title", exact=True).input_value() == "to_mailbox"


def test_r_w7_admin_configuration_pages_are_usable(watched, crm):
    page = watched.page
    sign_in(watched)
    page.goto("/admin")
    page.get_by_role("link", name="Organization settings").click()
    page.get_by_label("Tracking token prefix").fill("not valid!")
    page.get_by_role("button", name="Save").click()
    page.get_by_text("1 to 16 letters or digits").wait_for()
    watched.accessible()
    page.goto("/admin")
    page.get_by_role("link", name=f"Settings of {USER_EMAIL}").click()
    watched.accessible()
    page.goto("/admin")
    page.get_by_role("link", name="Field security").click()
    watched.accessible()
    page.goto("/admin")
    page.get_by_role("link", name="System sync filters").click()
    page.get_by_role("button", name="Add condition").click()
    page.get_by_label("Field of condition 2").wait_for()
    watched.accessible()
    name = "Only mine " + uuid.uuid4().hex[:6]
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Field of condition 1").fill("owner_id")
    page.get_by_label("Value of condition 1").fill("@me")
    page.get_by_role("button", name="Remove condition 2").click()
    page.get_by_role("button", name="Save filter").click()
    page.get_by_role("row", name=re.compile(re.escape(name))).wait_for()
    watched.accessible()
    saved = [f for f in crm.api("GET", "/sync-filters")["items"] if f["name"] == name]
    assert saved[0]["condition"] == {"all": [{"field": "owner_id", "op": "eq", "value": "@me"}]}


def test_r_w6_sync_page_lists_a_client_after_a_real_sync(watched, crm, tmp_path):
    """A real `crmsync sync` against the test server, with a local mailbox
    folder; the Sync page then names that client and its last sync."""
    import subprocess

    from conftest import BIN

    page = watched.page
    crm.api("POST", "/contacts", {"last_name": "Synced " + uuid.uuid4().hex[:6]}, token=crm.user_token)
    name = "laptop-" + uuid.uuid4().hex[:6]
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[crm]\nurl = "{crm.base}"\ntoken = "{crm.user_token}"\n'
        f'[client]\nname = "{name}"\ncache = "{tmp_path / "cache.db"}"\n'
        f'[mailbox.local]\nroot = "{tmp_path / "mailbox"}"\n[sync]\ninterval = "15m"\n'
    )
    (tmp_path / "mailbox").mkdir()
    out = subprocess.run([BIN, "sync", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    sign_in(watched, USER_EMAIL, USER_PASSWORD)
    page.get_by_role("link", name="Sync", exact=True).first.click()
    row = page.get_by_role("row", name=re.compile(re.escape(name)))
    row.wait_for()
    assert "Primary" in row.inner_text()
    assert "applied in the mailbox" in row.inner_text()
    assert page.get_by_role("button", name=f"Make {name} primary").count() == 1
    watched.accessible()


def test_r_w1_unknown_page_is_the_webs_own_not_found_page(watched):
    page = watched.page
    sign_in(watched)
    response = page.goto("/contacts/x/y")
    assert response.status == 404
    assert page.get_by_text("There is no such page").is_visible()
    watched.accessible()


def test_r_w6_connect_a_mailbox_on_the_server_then_test_it(watched):
    """Sync → "Connect a mailbox": the server keeps it and lists it; "Test"
    says what does not work (nothing listens on port 1) with the reason."""
    page = watched.page
    sign_in(watched, USER_EMAIL, USER_PASSWORD)
    page.get_by_role("link", name="Sync", exact=True).first.click()
    name = "work-" + uuid.uuid4().hex[:6]
    page.get_by_text("Connect a mailbox").click()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("IMAP server").fill("127.0.0.1")
    page.get_by_label("Port").fill("1")
    page.get_by_label("Security").select_option("none")
    page.get_by_label("IMAP user name").fill("me")
    page.get_by_label("IMAP password", exact=True).fill("not shown anywhere")
    page.get_by_role("button", name="Connect", exact=True).click()
    page.get_by_role("status").filter(has_text=f"Connected {name}").wait_for()
    assert "not shown anywhere" not in page.content()
    watched.accessible()
    page.get_by_role("button", name=f"Test {name}").click()
    result = page.get_by_role("table", name=f"Test of {name}")
    result.wait_for()
    row = result.get_by_role("row", name=re.compile("IMAP sign-in"))
    assert "Does not work" in row.inner_text()
    watched.accessible()


def test_r_o1_offline_copy_in_the_browser_with_the_same_password(browser, crm, tmp_path):
    """R-O1: the offline copy serves the same web interface; its user signs
    in with their own password, finds their records and creates one, which
    reaches the CRM at the next sync."""
    import subprocess
    import time
    import urllib.request

    from conftest import BIN, Watched, free_port

    pat = [u for u in crm.api("GET", "/users?limit=100")["items"] if u["email"] == USER_EMAIL][0]
    crm.api("PATCH", f"/users/{pat['id']}", {"go_offline": True})
    mine = "Offline" + uuid.uuid4().hex[:6]
    crm.api("POST", "/contacts", {"first_name": "Kim", "last_name": mine}, token=crm.user_token)
    port = free_port()
    config = tmp_path / "offline.toml"
    config.write_text(
        f'[crm]\nurl = "{crm.base}"\ntoken = "{crm.user_token}"\n'
        f'[client]\nname = "offline-laptop"\ncache = "{tmp_path / "cache.db"}"\n'
        f'[mailbox.local]\nroot = "{tmp_path / "mailbox"}"\n'
        f'[offline]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
    )
    (tmp_path / "mailbox").mkdir()
    sync = lambda: subprocess.run([BIN, "sync", "--config", str(config)], capture_output=True, text=True, timeout=120)
    out = sync()
    assert out.returncode == 0, out.stderr
    offline = subprocess.Popen([BIN, "offline", "--config", str(config)], stderr=subprocess.DEVNULL)
    new = "Metoffline" + uuid.uuid4().hex[:6]
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "crmsync offline did not start"
                time.sleep(0.1)
        context = browser.new_context(base_url=f"http://127.0.0.1:{port}")
        w = Watched(context.new_page())
        page = w.page
        sign_in(w, USER_EMAIL, USER_PASSWORD)
        page.get_by_role("link", name="Contacts", exact=True).first.click()
        page.get_by_text(mine).first.wait_for()
        w.accessible()
        page.get_by_role("link", name="New").or_(page.get_by_role("button", name="New")).first.click()
        page.get_by_label(field("Last name")).fill(new)
        page.get_by_role("button", name="Save").click()
        page.get_by_text(new).first.wait_for()
        w.accessible()
        context.close()
        assert not w.problems, "\n".join(w.problems)
    finally:
        offline.terminate()
        offline.wait(10)
    out = sync()
    assert out.returncode == 0, out.stderr
    found = crm.api("GET", f"/contacts?q={new}", token=crm.user_token)["items"]
    assert [c["last_name"] for c in found] == [new], "created offline, sent once"
