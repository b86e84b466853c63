#!/usr/bin/env python3
"""Tables from one scripts/device-run.sh run, for docs/BENCHMARKS.md.

Usage: python3 bench/summarize_device_run.py DIR   (DIR: device-run.tgz unpacked)

Prints Markdown: the tests' outcome, every rfa row (burn-cuda builds and libtorch) with its first
step, median step, samples/s and memory, the PyTorch + peft rows, and for each rfa row the ratio
PyTorch time / rfa time against the PyTorch row of the same arithmetic: strict f32 for libtorch's
f32 rows, TF32 for burn-cuda's f32 rows (burn-cuda 0.21 has no strict f32 matmul) and libtorch's
TF32 rows, autocast bf16 for bf16 rows; then each framework's own cost per step (the "overhead"
rows: full depth at width 64, where the arithmetic is negligible). Standard library only (runs on
the GPU machine or here).
"""
import json
import re
import sys
from pathlib import Path


def json_rows(path):
    """The JSON objects of a file that holds one per line among other output."""
    rows = []
    try:
        text = path.read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def timed(rows):
    return [r for r in rows if "step_ms_median" in r]


def read_number(path):
    try:
        return float(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def fmt(x, digits=1, unit=""):
    return "—" if x is None else f"{x:,.{digits}f}{unit}"


def tests_table(root):
    lines = ["| tests | outcome |", "|---|---|"]
    for log in sorted((root / "tests").glob("*.log")):
        text = log.read_text(errors="replace")
        results = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", text)
        if results:
            passed = sum(int(p) for _, p, _ in results)
            failed = sum(int(f) for _, _, f in results)
            outcome = f"{passed} passed, {failed} failed"
        else:
            outcome = "no result line (crashed or timed out; see the log)"
        lines.append(f"| {log.stem} | {outcome} |")
    return lines


def failure_reason(text):
    """What a failed row's stderr says went wrong: the first panic's message (Rust prints it on
    the line after `panicked at FILE:LINE:COL:`), else the first `error` line, else the last line
    that is not backtrace boilerplate."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "panicked" in line:
            if line.endswith(":") and i + 1 < len(lines):
                return lines[i + 1].replace("|", "/")
            return line.replace("|", "/")
    for line in lines:
        if line.lower().startswith("error"):
            return line.replace("|", "/")
    rest = [line for line in lines if not line.startswith(("note:", "stack backtrace", "at ")) and not line[:1].isdigit()]
    return rest[-1].replace("|", "/") if rest else None


def precision(name, row):
    """Which PyTorch row an rfa row compares with: fp32 (strict), tf32 or bf16."""
    if row.get("dtype") == "bf16":
        return "bf16"
    if "-tch" in name and "tf32" not in name:
        return "fp32"
    return "tf32"


def overhead_table(root):
    """Each framework's step at full depth and width 64 (1 + 1 short samples): what it costs per
    step beyond the arithmetic. Rows by model (the part of the name before ':')."""
    torch = {r["model"].split(":")[0]: r for r in timed(json_rows(root / "torch" / "overhead.jsonl"))}
    rfa = {}
    for name in ("cuda", "tch"):
        for r in timed(json_rows(root / "bench" / f"overhead-{name}.json")):
            rfa[(r["model"], name)] = r
    if not torch and not rfa:
        return []
    lines = [
        "",
        "Cost per step at full depth, width 64, 1 + 1 samples (the framework's own work per step):",
        "",
        "| model | PyTorch + peft | its ATen ops (not views) | rfa burn-cuda | rfa libtorch | PyTorch / burn-cuda | PyTorch / libtorch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model in sorted(set(torch) | {m for m, _ in rfa}):
        t = torch.get(model)
        c, h = rfa.get((model, "cuda")), rfa.get((model, "tch"))
        ms = lambda r: fmt(r["step_ms_median"], 2, " ms") if r else "—"
        ratio = lambda r: f"{t['step_ms_median'] / r['step_ms_median']:.2f}" if r and t else "—"
        ops = f"{t.get('aten_ops_per_step', '—')} ({t.get('aten_compute_ops_per_step', '—')})" if t else "—"
        lines.append(f"| {model} | {ms(t)} | {ops} | {ms(c)} | {ms(h)} | {ratio(c)} | {ratio(h)} |")
    return lines


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = Path(sys.argv[1])
    out = ["# device run " + (root / "device.txt").read_text().strip().replace("\n", " · ") if (root / "device.txt").exists() else "# device run"]
    out += [""] + tests_table(root) + [""]

    torch, torch_failed = {}, []
    for f in sorted((root / "torch").glob("*.jsonl")):
        if f.stem.startswith(("ops", "overhead")):
            continue
        rows = json_rows(f)
        torch_failed += [f"| {r.get('model')} {r.get('dtype')} | failed: {str(r['error'])[:160].replace('|', '/')} | | | |" for r in rows if "error" in r]
        if not timed(rows) and not any("error" in r for r in rows):
            err = f.with_suffix(".err")
            reason = failure_reason(err.read_text(errors="replace")) if err.exists() else None
            torch_failed.append(f"| {f.stem} | failed: {(reason or 'no output')[:160]} | | | |")
        for r in timed(rows):
            kind = "tf32" if r.get("tf32") else r["dtype"]
            peak = read_number(f.with_suffix(".peak_mib")) if f.stem != "tf32" else None
            torch[(r["model"], kind)] = dict(r, smi_peak_mib=peak)

    out += ["| PyTorch + peft | step | samples/s | max_memory_allocated | nvidia-smi peak |", "|---|---:|---:|---:|---:|"]
    for (model, kind), r in sorted(torch.items()):
        peak = r.get("smi_peak_mib")
        out.append(
            f"| {model} {kind} | {fmt(r['step_ms_median'], 1, ' ms')} | {fmt(r['samples_per_s'])} | {fmt(r.get('peak_mem_gib'), 2, ' GiB')} "
            f"| {fmt(peak / 1024 if peak else None, 2, ' GiB')} |"
        )
    out += torch_failed
    out.append("")

    out += [
        "| rfa row | backend | first step | step | samples/s | vs PyTorch | nvidia-smi peak | in use / reserved after forward | sampled peak in use / reserved | kernels compiled |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in sorted((root / "bench").glob("*.json"), key=lambda f: f.stem):
        if f.stem.startswith("overhead"):
            continue
        rows = timed(json_rows(f))
        if not rows:
            err = f.with_suffix(".err")
            reason = failure_reason(err.read_text(errors="replace")) if err.exists() else None
            out.append(f"| {f.stem} | failed: {(reason or 'no output')[:160]} | | | | | | | | |")
            continue
        r = rows[-1]
        peer = torch.get((r["model"], precision(f.stem, r)))
        ratio = f"{peer['step_ms_median'] / r['step_ms_median']:.2f} ({precision(f.stem, r)})" if peer else "—"
        peak = read_number(f.with_suffix(".peak_mib"))
        compile_log = f.with_suffix(".compile.log")
        compiled = compile_log.read_text(errors="replace").count("Compiling kernel") if compile_log.exists() else None
        dev = f"{fmt(r.get('device_in_use_after_forward_gib'), 2)} / {fmt(r.get('device_reserved_after_forward_gib'), 2, ' GiB')}"
        peak_dev = f"{fmt(r.get('device_peak_in_use_sampled_gib'), 2)} / {fmt(r.get('device_peak_reserved_sampled_gib'), 2, ' GiB')}"
        out.append(
            f"| {f.stem} | {r.get('backend', '?')} | {fmt(r.get('first_step_ms'), 1, ' ms')} | {fmt(r['step_ms_median'], 1, ' ms')} "
            f"| {fmt(r['samples_per_s'])} | {ratio} | {fmt(peak / 1024 if peak else None, 2, ' GiB')} | {dev} | {peak_dev} "
            f"| {'—' if compiled is None else compiled} |"
        )
    out += overhead_table(root)
    demo = root / "demo-report.md"
    if demo.exists():
        # The report's header, its table and the paragraphs under it (where it ran, the steps'
        # times, peak device memory), up to its next section.
        text = demo.read_text(errors="replace").split("\n## ")[0].strip()
        out += ["", "`rfa demo --device cuda`:", ""] + ["> " + line if line else ">" for line in text.splitlines()]
    timeline = root / "timeline.txt"
    if timeline.exists():
        out += ["", "Timeline:", "", "```", timeline.read_text().strip(), "```"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
