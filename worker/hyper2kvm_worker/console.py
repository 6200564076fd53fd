"""Text for people: the terminal progress bar and the human-readable inspection report."""

from __future__ import annotations

from typing import Any

from hyper2kvm_worker.protocol import Progress


def human_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_seconds(value: float | None) -> str:
    if value is None:
        return "--:--"
    seconds = int(value)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


def progress_line(progress: Progress, width: int = 30) -> str:
    phases = ",".join(
        sorted({d.phase for d in progress.disks if d.phase not in ("waiting", "done")})
    )
    filled = int(width * progress.percent / 100)
    bar = "#" * filled + "-" * (width - filled)
    return (
        f"[{bar}] {progress.percent:5.1f}% {phases or progress.state.value:<10} "
        f"{human_bytes(progress.rate_bytes_per_second)}/s ETA {human_seconds(progress.eta_seconds)}"
    )


def inspection_text(report: dict[str, Any]) -> str:
    lines = [
        f"source:           {report['source']}",
        f"format:           {report['format']} ({report['subformat']})",
        f"virtual size:     {human_bytes(report['virtual_size'])} ({report['virtual_size']} bytes)",
        f"allocated:        {human_bytes(report['allocated_bytes'])}",
        f"adapter type:     {report.get('adapter_type') or '-'}",
        f"hardware version: {report.get('hardware_version') or '-'}",
        f"uuid:             {report.get('uuid') or '-'}",
        f"CID / parentCID:  {report.get('cid') or '-'} / {report.get('parent_cid') or '-'}",
        f"logical sector:   {report.get('logical_sector_size') or '512 (not declared)'}",
    ]
    if report.get("integrity"):
        checked = ", ".join(f"{name} {state}" for name, state in report["integrity"].items())
        lines.append(f"manifest:         {checked}")
    if report.get("parent_file"):
        lines.append(f"parent:           {report['parent_file']}")
    lines.append("extents:")
    for extent in report["extents"]:
        lines.append(
            f"  {extent['access']:<7} {extent['type']:<8} {human_bytes(extent['size']):>10}  "
            f"{extent['file'] or '-'}"
        )
    table = report.get("partition_table")
    if table:
        lines.append(f"partitions ({table['scheme']}):")
        for part in table["partitions"]:
            fs = part.get("filesystem") or {}
            lines.append(
                f"  {part['number']:>2} {human_bytes(part['start']):>10} "
                f"+{human_bytes(part['size']):>10}"
                f"  {part['type_name']:<20} {fs.get('type', '-'):<8} {fs.get('label', '')}"
            )
    else:
        filesystems = report.get("filesystems") or []
        lines.append("partitions:       none")
        for fs in filesystems:
            lines.append(f"  whole disk: {fs.get('type', '-')} {fs.get('label', '')}")
    return "\n".join(lines)
