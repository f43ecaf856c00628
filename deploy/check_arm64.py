"""`make check-arm64`: prove every runtime dependency installs on linux/aarch64 for the image's
Python, without an arm64 machine.

pip resolves the runtime dependencies of pyproject.toml once (`pip install --dry-run
--report`, for Python 3.11), then downloads each resolved version as a Raspberry Pi would
get it (`--platform manylinux2014_aarch64 ... --python-version 3.11 --only-binary=:all:`).
A package with no such wheel is built here from its sdist: a `py3-none-any` result is pure
Python and installs anywhere; anything else means the Pi would need a compiler and that
package's headers, and the check fails naming it. Exit 0 and the wheels, or 1 and the names.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: manylinux2014 is glibc 2.17; newer tags (2_28 for onnxruntime) are fine on Pi OS bookworm
#: (glibc 2.36) and the image's Debian base.
PLATFORMS = [
    "manylinux2014_aarch64",
    "manylinux_2_17_aarch64",
    "manylinux_2_28_aarch64",
    "manylinux_2_34_aarch64",
    "linux_aarch64",
]


def runtime_requirements() -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return list(data["project"]["dependencies"])


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
    )
    # The host's pip config may name local indexes that are absent; that noise is not ours.
    proc.stderr = "\n".join(
        line for line in proc.stderr.splitlines() if "is ignored: it is neither" not in line
    )
    return proc


def resolve(reqs: list[str]) -> list[str]:
    """Every package (name==version) the runtime dependencies pull in, resolved once."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "report.json")
        # Resolved by this interpreter (the same minor version as the image's, so the
        # same environment markers); only the downloads below pretend to be a Pi.
        proc = _pip(
            "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), *reqs
        )
        if proc.returncode != 0:
            raise SystemExit(
                f"check-arm64: FAILED: cannot resolve the dependencies:\n{proc.stderr}"
            )
        items = json.loads(report.read_text())["install"]
    return sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items)


def download(pins: list[str], dest: Path, python: str) -> subprocess.CompletedProcess[str]:
    args = ["download", "--quiet", "--no-deps", "--only-binary=:all:"]
    for p in PLATFORMS:
        args += ["--platform", p]
    args += ["--python-version", python, "--implementation", "cp", "--dest", str(dest)]
    return _pip(*args, *pins)


def pure_python_sdist(pin: str, dest: Path) -> str | None:
    """Build `pin` from its sdist here; the wheel's name if it is pure Python, else None."""
    before = set(dest.glob("*.whl"))
    proc = _pip("wheel", "--quiet", "--no-deps", "--no-binary=:all:", "--wheel-dir", str(dest), pin)
    new = sorted(set(dest.glob("*.whl")) - before)
    if proc.returncode != 0 or not new:
        print(proc.stderr, file=sys.stderr)
        return None
    return new[0].name if new[0].name.endswith("-none-any.whl") else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python-version", default="3.11", help="the image's Python (3.11)")
    args = ap.parse_args()
    py = args.python_version
    if f"{sys.version_info.major}.{sys.version_info.minor}" != py:
        print(f"check-arm64: note: resolving with Python {sys.version.split()[0]}, not {py}")
    pins = resolve(runtime_requirements())
    print(f"check-arm64: {len(pins)} packages for Python {py}: {' '.join(pins)}")
    with tempfile.TemporaryDirectory(prefix="millrace-arm64-") as tmp:
        dest = Path(tmp)
        # One request for all; only when it fails, one per package to name the culprits.
        missing = (
            []
            if download(pins, dest, py).returncode == 0
            else [pin for pin in pins if download([pin], dest, py).returncode != 0]
        )
        sdists, failed = [], []
        for pin in missing:
            wheel = pure_python_sdist(pin, dest)
            (sdists if wheel else failed).append(f"{pin} ({wheel})" if wheel else pin)
        for pin in failed:
            print(
                f"check-arm64: FAILED: {pin} has no linux/aarch64 wheel for Python {py} and its "
                "sdist does not build a pure-Python wheel (a Pi would need a compiler)",
                file=sys.stderr,
            )
        if failed:
            return 1
        wheels = sorted(p.name for p in dest.glob("*.whl"))
        native = [w for w in wheels if "aarch64" in w]
        for w in wheels:
            print(f"  {w}")
        print(
            f"check-arm64: OK: all {len(pins)} runtime packages install on linux/aarch64 with "
            f"Python {py}: {len(native)} aarch64 wheels, {len(wheels) - len(native) - len(sdists)} "
            f"pure-Python wheels, {len(sdists)} pure-Python sdist(s) built here: "
            f"{', '.join(sdists) or 'none'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
