"""The SDK's PEP 517 build backend, standard library only.

`pip install ./sdk/python` needs no setuptools, wheel or network: this
backend zips the package into a pure-Python wheel (and an sdist, and an
editable wheel for `pip install -e`). The metadata is pyproject.toml's,
kept in step by a unit test (tests/test_unit.py).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "nullspace"
SUMMARY = "Python SDK for Nullspace machines: gVisor sandboxes that hibernate, resume, fork and wake on traffic"


def version() -> str:
    with open(os.path.join(ROOT, NAME, "_config.py"), encoding="utf-8") as f:
        m = re.search(r'^VERSION = "([^"]+)"', f.read(), re.M)
    assert m, "nullspace/_config.py has no VERSION"
    return m.group(1)


def _dist_info() -> str:
    return f"{NAME}-{version()}.dist-info"


def _metadata() -> Dict[str, bytes]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    meta = (
        "Metadata-Version: 2.1\n"
        f"Name: {NAME}\n"
        f"Version: {version()}\n"
        f"Summary: {SUMMARY}\n"
        "License: Apache-2.0\n"
        "Requires-Python: >=3.9\n"
        "Classifier: Programming Language :: Python :: 3\n"
        "Classifier: Typing :: Typed\n"
        "Description-Content-Type: text/markdown\n\n" + readme
    )
    wheel = "Wheel-Version: 1.0\nGenerator: nullspace-build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    return {"METADATA": meta.encode(), "WHEEL": wheel.encode(), "top_level.txt": f"{NAME}\n".encode()}


def _package_files() -> List[Tuple[str, bytes]]:
    out = []
    pkg = os.path.join(ROOT, NAME)
    for name in sorted(os.listdir(pkg)):
        if name.endswith(".py") or name == "py.typed":
            with open(os.path.join(pkg, name), "rb") as f:
                out.append((f"{NAME}/{name}", f.read()))
    return out


def _wheel(directory: str, files: List[Tuple[str, bytes]]) -> str:
    di = _dist_info()
    files = files + [(f"{di}/{k}", v) for k, v in _metadata().items()]
    record = []
    for path, data in files:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{di}/RECORD,,")
    files.append((f"{di}/RECORD", ("\n".join(record) + "\n").encode()))
    name = f"{NAME}-{version()}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, name), "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files:
            info = zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, data, zipfile.ZIP_DEFLATED)
    return name


def get_requires_for_build_wheel(config_settings: Optional[Dict[str, Any]] = None) -> List[str]:
    return []


get_requires_for_build_editable = get_requires_for_build_sdist = get_requires_for_build_wheel


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: Optional[Dict[str, Any]] = None) -> str:
    di = os.path.join(metadata_directory, _dist_info())
    os.makedirs(di, exist_ok=True)
    for k, v in _metadata().items():
        with open(os.path.join(di, k), "wb") as f:
            f.write(v)
    return _dist_info()


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(wheel_directory: str, config_settings: Optional[Dict[str, Any]] = None,
                metadata_directory: Optional[str] = None) -> str:
    return _wheel(wheel_directory, _package_files())


def build_editable(wheel_directory: str, config_settings: Optional[Dict[str, Any]] = None,
                   metadata_directory: Optional[str] = None) -> str:
    # A .pth file puts the source directory on sys.path.
    return _wheel(wheel_directory, [(f"_{NAME}_editable.pth", (ROOT + "\n").encode())])


def build_sdist(sdist_directory: str, config_settings: Optional[Dict[str, Any]] = None) -> str:
    base = f"{NAME}-{version()}"
    name = base + ".tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as t:
        for rel in ["pyproject.toml", "README.md", "_build/backend.py"] + [p for p, _ in _package_files()]:
            with open(os.path.join(ROOT, rel), "rb") as f:
                data = f.read()
            info = tarfile.TarInfo(f"{base}/{rel}")
            info.size, info.mode, info.mtime = len(data), 0o644, 1767225600
            t.addfile(info, io.BytesIO(data))
    return name
