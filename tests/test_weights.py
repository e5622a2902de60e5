"""Weight registry: manual entries, checked downloads (a local HTTP server on 127.0.0.1),
and the one ``weights`` option of every weighted extractor."""

import http.server
import threading
from pathlib import Path

import pytest
import torch

from sfmfeat import cli
from sfmfeat.errors import WeightsError
from sfmfeat.extractors import create_extractor
from sfmfeat.weights import WeightFile, resolve, resolve_weights, sha256_of


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def served(tmp_path):
    """A local HTTP server; ``served[name] = bytes`` publishes a file, returns base URL."""
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            html = body.lstrip().lower().startswith(b"<")
            self.send_header("Content-Type", "text/html" if html else "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield files, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_missing_caps_file_gives_the_manual_note_and_touches_nothing(tmp_path, monkeypatch,
                                                                     capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(cache))
    before = _tree(tmp_path)
    assert cli.main(["weights", "download", "caps"]) == 2
    err = capsys.readouterr().err
    assert "drive.google.com" in err and "by hand" in err and "weights install" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(WeightsError, match="cannot be downloaded automatically"):
        create_extractor("caps")
    assert cli.main(["weights", "list"]) == 0
    assert "caps/caps-pretrained.pth  missing (manual download)" in capsys.readouterr().out
    assert _tree(tmp_path) == before   # no folder, no partial file, no HTML page


def test_html_download_is_refused_and_leaves_no_file(tmp_path, monkeypatch, served):
    files, base = served
    files["w.pth"] = b"<!DOCTYPE html><html><body>Virus scan warning</body></html>"
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(tmp_path / "cache"))
    entry = WeightFile("demo", "w.pth", base + "w.pth", "MIT")
    with pytest.raises(WeightsError, match="returned a web page"):
        resolve(entry)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_download_that_is_not_a_checkpoint_or_fails_checksum_is_refused(tmp_path, monkeypatch,
                                                                       served):
    files, base = served
    files["junk.pth"] = b"\x00\x01 not a checkpoint" * 50
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(2)}, good)
    files["good.pth"] = good.read_bytes()
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(tmp_path / "cache"))
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        resolve(WeightFile("demo", "junk.pth", base + "junk.pth", "MIT"))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        resolve(WeightFile("demo", "good.pth", base + "good.pth", "MIT", sha256="0" * 64))
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    entry = WeightFile("demo", "good.pth", base + "good.pth", "MIT", sha256=sha256_of(good))
    path = resolve(entry)
    assert path == tmp_path / "cache" / "demo" / "good.pth" and sha256_of(path) == entry.sha256


def test_resolve_weights_names_paths_and_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(tmp_path / "cache"))
    entry = WeightFile("demo", "official.pth", "http://127.0.0.1:9/none", "MIT")
    (tmp_path / "cache" / "demo").mkdir(parents=True)
    torch.save({}, tmp_path / "cache" / "demo" / "official.pth")
    entries = (entry,)
    assert resolve_weights("official.pth", entries, "demo")[1] == "demo/official.pth"
    mine = tmp_path / "mine.pth"
    torch.save({"x": 1}, mine)
    path, identity = resolve_weights(str(mine), entries, "demo")
    assert path == mine and identity == f"sha256:{sha256_of(mine)}"
    with pytest.raises(WeightsError, match="not found .weights=.* is neither a registered file"):
        resolve_weights(str(tmp_path / "absent.pth"), entries, "demo")


def test_custom_weights_change_the_config_hash(tmp_path, weights_env):
    official = create_extractor("disk")
    copy = tmp_path / "copy.pth"
    state = torch.load(weights_env / "disk" / "depth-save.pth", map_location="cpu",
                       weights_only=True)
    state["extractor"]["unet.path_up.3.conv.3.bias"] += 1e-3
    torch.save(state, copy)
    assert create_extractor("disk", {"weights": str(copy)}).config_hash != official.config_hash
