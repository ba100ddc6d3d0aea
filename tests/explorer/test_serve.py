"""`asap serve` is safe by default: it listens on 127.0.0.1 only and answers only requests whose
Host header names it (no DNS rebinding); --address and --allow-websocket-origin open it up."""

from __future__ import annotations

import http.client
import subprocess
import sys

import psutil
import pytest

from explorer.server import allowed_hosts
from tests.explorer.test_browser import free_port, wait_for_port


def _get(port: int, host: str, path: str = "/asap") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path, headers={"Host": host})
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.fixture(scope="module")
def served(patterned_run):
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "serve",
        str(patterned_run[0]),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, proc)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)


def test_listens_on_loopback_only(served):
    port, proc = served
    listening = {
        c.laddr.ip
        for c in psutil.Process(proc.pid).net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    assert listening == {"127.0.0.1"}


def test_foreign_host_headers_are_refused(served):
    port, _ = served
    assert _get(port, f"127.0.0.1:{port}") == 200
    assert _get(port, f"localhost:{port}") == 200
    assert _get(port, f"evil.example:{port}") == 403
    assert _get(port, "evil.example", "/static/js/bokeh.min.js") == 403
    assert _get(port, f"127.0.0.1:{port + 1}") == 403


def test_page_is_light(served):
    """The served page leaves out Bokeh's MathJax bundle (1.7 MB of script that every new page
    parsed; the explorer shows no TeX) and has no header spinner (Panel's busy state is one per
    process: the template's spinner sent a patch to every open page at each event of any)."""
    port, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/asap", headers={"Host": f"localhost:{port}"})
    reply = conn.getresponse()
    page = reply.read().decode()
    conn.close()
    assert reply.status == 200 and "bokeh.min.js" in page and "panel.min.js" in page
    assert "mathjax" not in page.lower()
    assert "busy_indicator" not in page and "pn-busy" not in page


def test_thumbnails_by_id_only(served, patterned_run):
    """The overview's hover thumbnails: one route that takes an image id (digits only), reads it
    inside the run's image roots and answers 404 with the reason otherwise; behind the Host check
    like every route."""
    import io

    import numpy as np
    from PIL import Image

    from explorer.server import THUMB_ROUTE, THUMB_SIZE
    from pipeline.schema import open_run

    port, _ = served
    image_id = int(open_run(str(patterned_run[0])).images["id"].iloc[3])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", f"{THUMB_ROUTE}{image_id}", headers={"Host": f"localhost:{port}"})
    reply = conn.getresponse()
    assert reply.status == 200 and reply.getheader("Content-Type") == "image/png"
    thumb = np.asarray(Image.open(io.BytesIO(reply.read())))
    assert thumb.shape == (THUMB_SIZE, THUMB_SIZE, 3) and thumb.std() > 0
    conn.close()
    host = f"localhost:{port}"
    assert _get(port, host, f"{THUMB_ROUTE}999999999") == 404  # no such image
    assert _get(port, host, f"{THUMB_ROUTE}..%2F..%2Fetc%2Fpasswd") == 404  # not an id
    assert _get(port, f"evil.example:{port}", f"{THUMB_ROUTE}{image_id}") == 403


def test_allowed_hosts_follow_the_options():
    assert allowed_hosts(5006, None, ()) == {"localhost:5006", "127.0.0.1:5006", "[::1]:5006"}
    opened = allowed_hosts(5006, "10.0.0.5", ("box.lan:5006", "https://viewer.example"))
    assert {"10.0.0.5:5006", "box.lan:5006", "viewer.example", "viewer.example:5006"} <= opened
    assert "0.0.0.0:5006" not in allowed_hosts(5006, "0.0.0.0", ())


def test_procs_fork_servers_sharing_the_port(patterned_run):
    """`asap serve --procs 2`: the run is loaded once, then two server processes answer on the
    same port (new pages are built in parallel); a negative count is a one-line error."""
    port = free_port()
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", str(patterned_run[0]), "--port",
           str(port), "--procs", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, proc)
        assert all(_get(port, f"localhost:{port}") == 200 for _ in range(4))
        kids = psutil.Process(proc.pid).children()
        assert len(kids) == 2
        for kid in kids:
            ports = {c.laddr.port for c in kid.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN}  # fmt: skip
            assert port in ports
    finally:
        kids = psutil.Process(proc.pid).children(recursive=True)
        proc.terminate()
        proc.wait(20)
        for kid in kids:
            if kid.is_running():
                kid.terminate()
    bad = subprocess.run([*cmd[:-1], "-1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--procs must be 0" in bad.stderr
    assert "Traceback" not in bad.stderr
