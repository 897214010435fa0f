"""Look at the TensorBoard a user gets, in a real browser: HParams table and time series, as PNGs.

    python tools/tensorboard_screenshots.py --logdir /tmp/tb16 --out /tmp/tb16_shots [--make-runs]

``--make-runs`` first fills the logdir with short digits runs of every kind the HParams schema
covers (FP32, 8-bit QAT, KD, DoReFa W4A4 low-bit, and INT8 post-training from the FP32 run); then
TensorBoard starts on 127.0.0.1 at a free port and headless Chromium (Debian's ``chromium`` and
``chromium-driver`` packages, driven over the W3C WebDriver protocol with the standard library: no
selenium) saves ``hparams.png`` and ``timeseries.png``. The HParams table shows only its first five
columns until the user ticks more; the script ticks every hyper-parameter box first, as a user
comparing runs would.
"""

import argparse
import base64
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
COMMON = ["--dataset", "digits", "-b", "64", "-p", "0", "--deterministic"]


def _app(script, *argv):
    cmd = [sys.executable, os.path.join(ROOT, "apps", script), *argv]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)


def make_runs(logdir, epochs):
    """FP32, QAT, KD (student = teacher arch, from the FP32 run), low-bit (DoReFa W4A4 resnet20) and PTQ
    runs on digits."""
    arch = ["-a", "simplenet_digits", *COMMON, "--epochs", str(epochs), "--lr", "0.05", "-o", logdir]
    _app("compress_classifier.py", *arch, "-n", "fp32")
    fp32 = glob.glob(os.path.join(logdir, "fp32___*", "best.pth.tar"))[0]
    _app("compress_classifier.py", *arch, "-n", "qat_int8",
         "--compress", os.path.join(ROOT, "schedules", "quant_aware_train_8bit.yaml"))
    _app("compress_classifier.py", *arch, "-n", "kd", "--kd-teacher", "simplenet_digits", "--kd-resume", fp32)
    _app("compress_classifier.py", "-a", "resnet20_cifar", *COMMON, "--epochs", str(epochs), "--lr", "0.1",
         "-o", logdir, "-n", "dorefa_w4a4",
         "--compress", os.path.join(ROOT, "schedules", "quant_aware_train", "resnet20_cifar_dorefa_w4a4.yaml"))
    _app("post_train_quant.py", "-a", "simplenet_digits", "--dataset", "digits", "--resume-from", fp32,
         "--compress", os.path.join(ROOT, "schedules", "post_train_quant", "int8_per_channel_avg.yaml"),
         "--calibration-size", "256", "-o", logdir, "-n", "ptq_int8")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tensorboard(logdir, port):
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
                             "--port", str(port), "--reload_interval", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(f"http://127.0.0.1:{port}/data/runs", "TensorBoard")
    except SystemExit:
        proc.kill()
        raise
    return proc


# every unticked checkbox of the HParams query pane (inside nested shadow roots), ticked
TICK_ALL = """
const found = [];
const walk = (root) => { root.querySelectorAll('*').forEach((el) => {
  if (el.tagName === 'PAPER-CHECKBOX' && !el.checked) found.push(el);
  if (el.shadowRoot) walk(el.shadowRoot); }); };
walk(document);
found.forEach((el) => el.click());
return found.length;
"""

# the time-series view filtered to the tags runs are compared on
FILTER_TAGS = """
const box = document.querySelector('input[placeholder*="Filter tags"]');
if (!box) return false;
box.value = arguments[0];
box.dispatchEvent(new Event('input', {bubbles: true}));
return true;
"""


class Browser:
    """Headless Chromium through chromedriver's W3C WebDriver HTTP interface."""

    def __init__(self, chromium, chromedriver, size):
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.driver = subprocess.Popen([chromedriver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        _wait(f"http://127.0.0.1:{self.port}/status", "chromedriver")
        caps = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                         f"--window-size={size}"]}}
        self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def _call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.load(r)["value"]

    def open(self, url):
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def script(self, code, *args):
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": code, "args": list(args)})

    def screenshot(self, path):
        png = base64.b64decode(self._call("GET", f"/session/{self.session}/screenshot"))
        with open(path, "wb") as f:
            f.write(png)

    def close(self):
        try:
            self._call("DELETE", f"/session/{self.session}")
        finally:
            self.driver.terminate()
            self.driver.wait(timeout=30)
            shutil.rmtree(self.profile, ignore_errors=True)


def _wait(url, what, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{what} did not answer within {seconds} s")


def fold_for_docs(src, dst, left_pane=0.2, rows_px=420, width=1800):
    """The wide HParams table without its left pane (``left_pane`` of the width) and cut in two halves
    stacked, scaled to ``width``, in 64 colours (a small PNG)."""
    from PIL import Image  # matplotlib's dependency

    im = Image.open(src).convert("RGB")
    table = im.crop((int(left_pane * im.width), 0, im.width, min(im.height, rows_px)))
    half = table.width // 2
    folded = Image.new("RGB", (half, table.height * 2), "white")
    folded.paste(table.crop((0, 0, half, table.height)), (0, 0))
    folded.paste(table.crop((half, 0, table.width, table.height)), (0, table.height))
    folded = folded.resize((width, round(folded.height * width / half)), Image.LANCZOS).quantize(64)
    folded.save(dst, optimize=True)
    print(dst, f"{os.path.getsize(dst) / 1024:.0f} KiB")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logdir", required=True)
    p.add_argument("--out", required=True, help="folder for hparams.png and timeseries.png")
    p.add_argument("--make-runs", action="store_true", help="first fill --logdir with short digits runs")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--tags", default="Performance/(Test|Validation)/Top1",
                   help="tag filter (regex) of the time-series shot")
    p.add_argument("--docs-png", metavar="FILE", default=None,
                   help="also write the HParams table folded in two halves, scaled for the docs")
    p.add_argument("--size", default="5400,800", help="browser window WIDTH,HEIGHT")
    p.add_argument("--wait", type=float, default=8.0, help="seconds the page gets to load its data")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    args = p.parse_args(argv)
    if args.make_runs:
        make_runs(args.logdir, args.epochs)
    os.makedirs(args.out, exist_ok=True)
    port = free_port()
    tb = start_tensorboard(args.logdir, port)
    browser = None
    try:
        browser = Browser(args.chromium, args.chromedriver, args.size)
        browser.open(f"http://127.0.0.1:{port}/#hparams")
        time.sleep(args.wait)
        print("ticked", browser.script(TICK_ALL), "more HParams columns")
        time.sleep(2)
        browser.screenshot(os.path.join(args.out, "hparams.png"))
        browser.open(f"http://127.0.0.1:{port}/#timeseries")
        time.sleep(args.wait)
        try:
            browser.script(FILTER_TAGS, args.tags)
        except urllib.error.HTTPError as exc:  # the shot still shows every tag group
            print(f"warning: the tag filter could not be set ({exc}); time series unfiltered")
        time.sleep(2)
        browser.screenshot(os.path.join(args.out, "timeseries.png"))
        print(os.path.join(args.out, "hparams.png"), os.path.join(args.out, "timeseries.png"))
        if args.docs_png:
            fold_for_docs(os.path.join(args.out, "hparams.png"), args.docs_png)
    finally:
        if browser is not None:
            browser.close()
        tb.terminate()
        tb.wait(timeout=30)


if __name__ == "__main__":
    main()
