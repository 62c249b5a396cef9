"""The web interface in a real browser (SPEC §14; issue 13).

A `crmsync serve` on a temporary SQLite database, its admin with a password,
and Debian's Chromium driven by Playwright. Every page a test opens is
checked by axe-core (no serious or critical violation, R-W8) and watched for
Content-Security-Policy violations and script errors (R-W1): `page` fails
the test on any.

Run by scripts/test (after the crate tests) with:
    CRMSYNC_BIN=target/debug/crmsync $CRMSYNC_BROWSER_VENV/bin/pytest tests/browser
"""

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import sync_playwright

BIN = os.environ.get("CRMSYNC_BIN", "target/debug/crmsync")
CHROMIUM = os.environ.get("CRMSYNC_CHROMIUM", "/usr/bin/chromium")
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "correct horse battery staple"
USER_EMAIL = "pat@example.com"
USER_PASSWORD = "another long passphrase"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args, stdin=None):
    """Runs the crmsync binary; returns its standard output."""
    out = subprocess.run(
        [BIN, *args], input=stdin, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"crmsync {' '.join(args)}: {out.stderr}"
    return out.stdout


class Crm:
    """A running `crmsync serve` and its admin's API token."""

    def __init__(self, root):
        self.root = root
        self.db = f"sqlite://{root}/crm.db"
        init = run("admin", "init", "--db", self.db, "--email", ADMIN_EMAIL, "--name", "Admin")
        self.token = [line for line in init.splitlines() if line.strip()][-1].strip()
        run("admin", "user", "passwd", "--db", self.db, "--email", ADMIN_EMAIL, stdin=ADMIN_PASSWORD + "\n")
        user = run("admin", "user", "add", "--db", self.db, "--email", USER_EMAIL, "--name", "Pat")
        self.user_token = [line for line in user.splitlines() if line.strip()][-1].strip()
        run("admin", "user", "passwd", "--db", self.db, "--email", USER_EMAIL, stdin=USER_PASSWORD + "\n")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(root, "server.log"), "w")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--db", self.db, "--listen", f"127.0.0.1:{self.port}"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                assert self.proc.poll() is None, "crmsync serve exited"
                assert time.time() < deadline, "crmsync serve did not start"
                time.sleep(0.1)

    def api(self, method, path, body=None, token=None):
        """Calls the REST API; returns the decoded answer."""
        req = urllib.request.Request(
            self.base + "/api/v1" + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {token or self.token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
        return json.loads(text) if text else None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def crm(tmp_path_factory):
    server = Crm(str(tmp_path_factory.mktemp("crm")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Watched:
    """A page whose console and script errors are kept, with an axe check."""

    def __init__(self, page):
        self.page = page
        self.problems = []
        self.dialogs = []
        page.on("console", self._console)
        page.on("response", self._response)
        page.on("pageerror", lambda e: self.problems.append(f"script error: {e}"))
        page.on("dialog", self._dialog)

    def _console(self, msg):
        text = msg.text
        # A page answered with an error status (a refused sign-in is a 401)
        # is the test's to judge; a missing stylesheet or icon is a problem,
        # reported by _response.
        if text.startswith("Failed to load resource"):
            return
        if "Content Security Policy" in text or msg.type == "error":
            where = msg.location.get("url", "") if msg.location else ""
            self.problems.append(f"console {msg.type}: {text} ({where})")

    def _response(self, response):
        if response.status >= 400 and response.request.resource_type != "document":
            self.problems.append(f"{response.status} for {response.url}")

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def accessible(self):
        """axe-core on the page as it is: no serious or critical violation."""
        results = Axe().run(self.page)
        bad = [
            f"{v['id']} ({v['impact']}): {v['help']} at "
            + ", ".join(n["target"][0] for n in v["nodes"][:3])
            for v in results.response["violations"]
            if v.get("impact") in ("serious", "critical")
        ]
        assert not bad, f"{self.page.url}: " + "; ".join(bad)


@pytest.fixture
def watched(browser, crm):
    context = browser.new_context(base_url=crm.base)
    page = context.new_page()
    w = Watched(page)
    yield w
    context.close()
    assert not w.problems, "\n".join(w.problems)
    assert not w.dialogs, f"a script ran: {w.dialogs}"


def sign_in(w, email=ADMIN_EMAIL, password=ADMIN_PASSWORD):
    page = w.page
    page.goto("/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Sign out").or_(
        page.get_by_role("button", name="Sign out")
    ).first.wait_for()
