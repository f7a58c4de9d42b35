"""``--weights imagenet`` downloads the way torchvision does, tried for real against a local server.

The server runs on 127.0.0.1 (an ephemeral port) in a thread and serves a ResNet-18 state dict saved in
torchvision's format. Its URL replaces torchvision's through ``PNEUMONIA_CAM_WEIGHTS_URL`` (meant for
tests only), and its file name follows torchvision's convention ``resnet18-<first 8 hex digits of the
file's SHA-256>.pth``, so ``torch.hub``'s hash check runs on it exactly as on the real file. The
server answers at most ``MAX_REQUESTS`` requests, every wait in it is bounded, and the client's socket
timeout is shortened, so no test can hang.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import struct
import threading
import time

import pytest
import torch
import torchvision

from pneumonia_cam import train
from pneumonia_cam.steps.model import build_model
from pneumonia_cam.support import weights as weights_module
from pneumonia_cam.support.weights import WeightsUnavailableError, expected_weights_file

MAX_REQUESTS = 4  # no test needs more than one; the rest would be a retry loop gone wrong
WAIT_S = 5.0  # the longest any server thread waits for anything


@pytest.fixture(scope="module")
def weights_file() -> tuple[bytes, str, dict]:
    """(file bytes, torchvision-style name, state dict): a random ResNet-18 in torchvision's format."""
    torch.manual_seed(7)
    state = torchvision.models.resnet18(weights=None).state_dict()  # 1000-class fc, as ImageNet's
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    return data, f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth", state


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    mode = "ok"  # ok | corrupt | drop | reset | stall
    body = b""
    requests = 0
    release = None  # threading.Event: ends a stalled response

    def handle_error(self, request, client_address):
        # The "reset" handler closes its own socket, so socketserver's cleanup fails on it; a
        # traceback printed from this thread would land in the stderr the tests read.
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = WAIT_S  # a client that stops talking cannot hold the thread

    def do_GET(self):  # http.server calls this for each GET request
        server = self.server
        server.requests += 1
        if server.requests > MAX_REQUESTS:
            self.send_error(503, "request limit of the test server reached")
            return
        body = server.body
        if server.mode == "corrupt":  # same length, one byte changed: only the hash can tell
            body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))  # always the full length
        self.end_headers()
        if server.mode in ("ok", "corrupt"):
            self.wfile.write(body)
            return
        self.wfile.write(body[: len(body) // 2])  # half the body, then trouble
        self.wfile.flush()
        if server.mode == "stall":
            server.release.wait(WAIT_S)  # say nothing more until the test ends
        elif server.mode == "reset":
            time.sleep(0.2)  # let the client start reading the body
            # Linger 0: close() sends a TCP RST instead of an orderly FIN. Close here, before
            # socketserver's own shutdown(SHUT_WR) would send the FIN; the files hold the socket open.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.wfile.close()
            self.rfile.close()
            self.connection.close()
        self.close_connection = True  # "drop": the server closes after half the body (EOF)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(weights_file, tmp_path, monkeypatch):
    """A weights server on 127.0.0.1 and an empty ``$TORCH_HOME``; downloads allowed for this test."""
    data, name, _ = weights_file
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.body, srv.release = data, threading.Event()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(weights_module.OFFLINE_ENV, raising=False)
    monkeypatch.setenv(weights_module.URL_ENV, f"http://127.0.0.1:{srv.server_address[1]}/{name}")
    for var in ("no_proxy", "NO_PROXY"):  # a proxy set in the environment must not see these requests
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.setattr(weights_module, "DOWNLOAD_TIMEOUT_S", 1.0)  # for the stalled server
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert srv.requests <= MAX_REQUESTS


def _cache_files(tmp_path) -> list[str]:
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_download_lands_in_torchvision_cache_and_loads(server, weights_file, tmp_path, capsys):
    data, name, reference = weights_file
    path = expected_weights_file("resnet18")
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / name  # the name comes from the URL

    torch.manual_seed(0)  # another init than the file's, so equality below proves the file was loaded
    model = build_model("resnet18", weights="imagenet", progress=True)
    assert server.requests == 1
    assert _cache_files(tmp_path) == [name]  # the file and nothing else (no .partial left)
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
    for k, v in reference.items():
        if not k.startswith("fc."):
            assert torch.equal(model.state_dict()[k], v), k
    assert model.fc[0].weight.shape == (2, 512)  # our head, not ImageNet's 1000 classes
    assert "100%" in capsys.readouterr().err  # torch.hub's progress bar ran to the end

    torch.manual_seed(1)
    again = build_model("resnet18", weights="imagenet", progress=True)
    assert server.requests == 1  # the second model came from the cache, with no request
    assert torch.equal(again.layer1[0].conv1.weight, reference["layer1.0.conv1.weight"])


@pytest.mark.parametrize("mode, reason", [
    ("corrupt", "incomplete or corrupted"),  # hash mismatch
    ("drop", "incomplete or corrupted"),  # EOF after half the body: short data fails the hash check
    ("reset", "ConnectionResetError"),  # TCP RST after half the body
    ("stall", "TimeoutError"),  # half the body, then silence past the client's timeout
])
def test_failed_download_is_one_line_and_leaves_no_file(server, weights_file, tiny_train_args, tmp_path,
                                                        mode, reason, capsys):
    server.mode = mode
    t0 = time.perf_counter()
    assert train.main(tiny_train_args + ["--weights", "imagenet"]) == 2
    assert time.perf_counter() - t0 < 60  # bounded, whatever the server does
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("error: downloading the ImageNet weights for resnet18") and reason in err, err
    assert "nothing was saved" in err and "--weights none" in err
    assert server.requests == 1  # one try, no retry loop
    assert _cache_files(tmp_path) == []  # no half-written file, no .partial
    assert not (tmp_path / "runs" / "tiny" / "best.pt").exists()  # stopped before training


def test_offline_flag_never_requests(server, weights_file, tiny_train_args, tmp_path, capsys):
    assert train.main(tiny_train_args + ["--weights", "imagenet", "--offline"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "downloads are off" in err
    assert str(expected_weights_file("resnet18")) in err and "--weights PATH" in err
    assert server.requests == 0 and _cache_files(tmp_path) == []


def test_offline_environment_variable_never_requests(server, monkeypatch, tmp_path):
    monkeypatch.setenv(weights_module.OFFLINE_ENV, "1")
    with pytest.raises(WeightsUnavailableError, match="downloads are off"):
        build_model("resnet18", weights="imagenet")
    assert server.requests == 0 and _cache_files(tmp_path) == []


def test_url_override_must_stay_on_this_machine(monkeypatch):
    monkeypatch.setenv(weights_module.URL_ENV, "http://example.com/resnet18-00000000.pth")
    with pytest.raises(WeightsUnavailableError, match="127.0.0.1"):
        expected_weights_file("resnet18")
