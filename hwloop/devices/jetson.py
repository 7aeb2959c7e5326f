"""NVIDIA Jetson facts for the device fingerprint: model, L4T/JetPack, power mode, clocks.

The agent calls :func:`read_jetson_facts` on the board when ``/etc/nv_tegra_release``
exists. Identity (enters the fingerprint key): board model, L4T release, JetPack release,
nvpmodel mode. Info (context): whether ``jetson_clocks`` is on and the GPU/EMC/CPU clocks.
A warning is produced when the clocks are not locked, because latency then depends on
the DVFS governor.

Every parser takes the text of a file or command output, so it is tested against
fixtures; :func:`read_jetson_facts` only gathers that text (commands run with fixed argv).

Example:
    >>> parse_tegra_release("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64")
    '35.4.1'
    >>> jetpack_for_l4t("35.4.1")
    '5.1.2'
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ClockState", "JetsonFacts", "is_jetson", "parse_model", "parse_tegra_release", "jetpack_for_l4t",
           "parse_nvpmodel", "parse_jetson_clocks", "facts_from_text", "read_jetson_facts", "TEGRA_RELEASE", "L4T_TO_JETPACK"]

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
_MODEL_PATHS = (Path("/proc/device-tree/model"), Path("/sys/firmware/devicetree/base/model"))

#: L4T (Jetson Linux) release -> JetPack release, from NVIDIA's release notes.
L4T_TO_JETPACK: Mapping[str, str] = {
    "32.4.3": "4.4", "32.4.4": "4.4.1", "32.5.0": "4.5", "32.5.1": "4.5.1", "32.6.1": "4.6",
    "32.7.1": "4.6.1", "32.7.2": "4.6.2", "32.7.3": "4.6.3", "32.7.4": "4.6.4", "32.7.5": "4.6.5",
    "34.1.0": "5.0", "34.1.1": "5.0.1", "35.1.0": "5.0.2", "35.2.1": "5.1", "35.3.1": "5.1.1",
    "35.4.1": "5.1.2", "35.5.0": "5.1.3", "35.6.0": "5.1.4", "36.2.0": "6.0 DP", "36.3.0": "6.0",
    "36.4.0": "6.1", "36.4.3": "6.2",
}


def is_jetson(release_file: Path = TEGRA_RELEASE) -> bool:
    """True when this machine is an NVIDIA Jetson (L4T writes ``/etc/nv_tegra_release``)."""
    return release_file.is_file()


def parse_model(text: str) -> str:
    """The board model from ``/proc/device-tree/model`` (a NUL-terminated string)."""
    return text.replace("\x00", "").strip()


def parse_tegra_release(text: str) -> str | None:
    """The L4T release ``MAJOR.MINOR.PATCH`` from the first line of ``/etc/nv_tegra_release``.

    ``# R35 (release), REVISION: 4.1, ...`` gives ``35.4.1``; ``REVISION: 5.0`` gives ``35.5.0``.
    """
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return f"{m.group(1)}.{m.group(2)}.{m.group(3) or 0}"


def jetpack_for_l4t(l4t: str | None) -> str | None:
    """The JetPack release shipping an L4T release (None if unknown)."""
    return L4T_TO_JETPACK.get(l4t) if l4t else None


def parse_nvpmodel(text: str) -> tuple[str | None, int | None]:
    """``(mode name, mode id)`` from ``nvpmodel -q`` output (``NV Power Mode: MAXN`` then ``0``)."""
    name = None
    mode_id = None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        m = re.match(r"NV Power Mode:\s*(.+)$", ln)
        if m:
            name = m.group(1).strip()
            if i + 1 < len(lines) and lines[i + 1].isdigit():
                mode_id = int(lines[i + 1])
    return name, mode_id


@dataclass(frozen=True)
class ClockState:
    """One clock domain from ``jetson_clocks --show`` (frequencies in Hz)."""

    name: str
    min_hz: int
    max_hz: int
    current_hz: int

    @property
    def locked(self) -> bool:
        """Pinned at its maximum (what ``jetson_clocks`` does)."""
        return self.min_hz == self.max_hz == self.current_hz and self.max_hz > 0

    @property
    def at_max(self) -> bool:
        """Running at its maximum (EMC is pinned by an override, its MinFreq stays low)."""
        return self.current_hz == self.max_hz and self.max_hz > 0


def _freqs(line: str) -> tuple[int, int, int] | None:
    vals = dict(re.findall(r"(MinFreq|MaxFreq|CurrentFreq)=(\d+)", line))
    if {"MinFreq", "MaxFreq", "CurrentFreq"} <= set(vals):
        return int(vals["MinFreq"]), int(vals["MaxFreq"]), int(vals["CurrentFreq"])
    return None


def parse_jetson_clocks(text: str) -> dict[str, Any]:
    """Clock domains, the SoC and the power mode from ``jetson_clocks --show`` output.

    CPU frequencies there are in kHz; they are returned in Hz like GPU and EMC. Returns
    ``{"soc": str|None, "cpu": [ClockState...], "gpu": ClockState|None, "emc": ClockState|None,
    "emc_override": bool|None, "nvpmodel": str|None}``.
    """
    out: dict[str, Any] = {"soc": None, "cpu": [], "gpu": None, "emc": None, "emc_override": None, "nvpmodel": None}
    for raw in text.splitlines():
        ln = raw.strip()
        m = re.match(r"SOC family:\s*(\S+)", ln)
        if m:
            out["soc"] = m.group(1)
            continue
        m = re.match(r"(cpu\d+):\s*Online=(\d)", ln)
        f = _freqs(ln)
        if m and f and m.group(2) == "1":
            out["cpu"].append(ClockState(m.group(1), f[0] * 1000, f[1] * 1000, f[2] * 1000))
        elif ln.startswith("GPU ") and f:
            out["gpu"] = ClockState("gpu", *f)
        elif ln.startswith("EMC ") and f:
            out["emc"] = ClockState("emc", *f)
            m = re.search(r"FreqOverride=(\d)", ln)
            if m:
                out["emc_override"] = m.group(1) == "1"
        m = re.match(r"NV Power Mode:\s*(.+)$", ln)
        if m:
            out["nvpmodel"] = m.group(1).strip()
    return out


@dataclass(frozen=True)
class JetsonFacts:
    """What a Jetson says about itself; see :func:`read_jetson_facts`.

    Attributes:
        model: board model (``NVIDIA Jetson AGX Orin Developer Kit``).
        l4t: L4T release (``35.4.1``); jetpack: the matching JetPack (``5.1.2``).
        nvpmodel: power mode name (``MAXN``) and nvpmodel_id its number.
        clocks: parsed ``jetson_clocks --show`` (None when it could not run, e.g. not root).
    """

    model: str | None = None
    l4t: str | None = None
    jetpack: str | None = None
    nvpmodel: str | None = None
    nvpmodel_id: int | None = None
    clocks: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def clocks_locked(self) -> bool | None:
        """True when GPU and every online CPU are pinned at max and EMC runs at max (``jetson_clocks`` on)."""
        if not self.clocks or self.clocks.get("gpu") is None:
            return None
        doms = [self.clocks["gpu"], *(self.clocks.get("cpu") or [])]
        emc = self.clocks.get("emc")
        return all(d.locked for d in doms) and (emc is None or emc.at_max)

    def identity(self) -> dict[str, Any]:
        """Fields that define the device (enter the fingerprint key)."""
        return {"jetson_model": self.model, "l4t": self.l4t, "jetpack": self.jetpack, "nvpmodel": self.nvpmodel}

    def info(self) -> dict[str, Any]:
        """Context stored next to each measurement: clock lock state and frequencies (MHz)."""
        d: dict[str, Any] = {"jetson_clocks": self.clocks_locked, "nvpmodel_id": self.nvpmodel_id}
        if self.clocks:
            for k in ("gpu", "emc"):
                c = self.clocks.get(k)
                if c is not None:
                    d[f"{k}_mhz"] = round(c.current_hz / 1e6, 1)
                    d[f"{k}_max_mhz"] = round(c.max_hz / 1e6, 1)
            cpus = self.clocks.get("cpu") or []
            if cpus:
                d["cpu_mhz"] = [round(c.current_hz / 1e6, 1) for c in cpus]
        return d

    def warnings(self) -> list[str]:
        """Human warnings, e.g. clocks not locked."""
        out = []
        if self.clocks_locked is False:
            gpu = self.clocks["gpu"] if self.clocks else None
            where = f" (GPU at {gpu.current_hz / 1e6:.0f} of {gpu.max_hz / 1e6:.0f} MHz)" if gpu else ""
            out.append(f"clocks are not locked{where}; run `sudo jetson_clocks` for stable latencies")
        elif self.clocks_locked is None:
            out.append("clock state unknown (`jetson_clocks --show` needs root); latencies may drift with DVFS")
        return out


def _run(argv: list[str]) -> str | None:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def facts_from_text(model: str | None, tegra_release: str | None, nvpmodel_q: str | None,
                    jetson_clocks_show: str | None) -> JetsonFacts:
    """:class:`JetsonFacts` from the raw texts (None where a file or command was unavailable)."""
    l4t = parse_tegra_release(tegra_release or "")
    nv_name, nv_id = parse_nvpmodel(nvpmodel_q or "")
    clocks = parse_jetson_clocks(jetson_clocks_show) if jetson_clocks_show else None
    if nv_name is None and clocks:
        nv_name = clocks.get("nvpmodel")
    return JetsonFacts(model=parse_model(model) if model else None, l4t=l4t, jetpack=jetpack_for_l4t(l4t),
                       nvpmodel=nv_name, nvpmodel_id=nv_id, clocks=clocks)


def read_jetson_facts(release_file: Path = TEGRA_RELEASE) -> JetsonFacts:
    """Gather the facts on a Jetson (files + ``nvpmodel -q`` + ``jetson_clocks --show``, fixed argv)."""
    model = next((t for p in _MODEL_PATHS if (t := _read(p))), None)
    return facts_from_text(model, _read(release_file), _run(["nvpmodel", "-q"]), _run(["jetson_clocks", "--show"]))
