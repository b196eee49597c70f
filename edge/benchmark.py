"""`leukoscreen bench`: speed and memory of a bundle's model files on this device's runtimes.

Each (model file, thread count) is measured in a fresh process, so load time and peak RSS are those of a
device process running only that model. A published full-int8 MobileNetV2 is timed in the same run as
a fixed yardstick, and every latency is also given as a ratio to it.
"""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mobilenet_v2_1.0_224_quant.tflite"


def save_json(out: Path | None, name: str, value) -> None:
    """A benchmark's figures as out/NAME, when an --out folder was given."""
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(value, indent=2))


def measure(path: str, runtime: str, threads: int, runs: int, classifier: str | None = None,
            xnnpack: bool = True) -> dict:
    """Load time, first-inference time, median and p95 latency, peak RSS of this process (a two-stage
    model: the feature model and its classifier)."""
    started = time.perf_counter()
    from leukoscreen.edge.runtimes import RuntimeOptions, open_runner
    runner = open_runner(path, RuntimeOptions(runtime=runtime, threads=threads, xnnpack=xnnpack), classifier)
    loaded = time.perf_counter()
    image = np.random.default_rng(0).integers(0, 256, (1, runner.input_size, runner.input_size, 3), np.uint8)
    runner.predict(image)
    first = time.perf_counter() - loaded
    latencies = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.predict(image)
        latencies.append(time.perf_counter() - t0)
    return {"file": path, "runtime": runner.name, "threads": threads, "load_s": loaded - started,
            "first_inference_ms": first * 1e3, "median_ms": statistics.median(latencies) * 1e3,
            "p95_ms": float(np.percentile(latencies, 95)) * 1e3,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "size_mb": sum(Path(p).stat().st_size for p in (path, classifier) if p) / 1e6, "runs": runs}


def measure_in_subprocess(path: Path, runtime: str, threads: int, runs: int, classifier: Path | None = None,
                          xnnpack: bool = True) -> dict:
    classifier = str(classifier) if classifier else None
    code = ("import json, sys; from leukoscreen.edge.benchmark import measure; "
            f"print(json.dumps(measure({str(path)!r}, {runtime!r}, {threads}, {runs}, {classifier!r}, {xnnpack})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        return {"file": str(path), "threads": threads, "error": result.stderr.strip().splitlines()[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def benchmark_bundle(bundle_path: Path, runtime: str = "auto", threads: tuple[int, ...] = (1, 2),
                     runs: int = 100, reference: Path | None = REFERENCE, out: Path | None = None,
                     xnnpack: bool = True) -> list[dict]:
    from leukoscreen.edge.bundle import load_bundle
    bundle = load_bundle(bundle_path)
    targets = []
    for fmt in bundle.formats:
        if runtime != "auto" and (runtime == "onnx") != fmt.startswith("onnx"):
            continue  # this runtime cannot run that format
        targets.append((fmt, bundle.file(fmt), runtime, bundle.classifier_file(fmt)))
    if reference and reference.is_file():
        targets.append(("reference MobileNetV2 int8", reference, "auto" if runtime == "onnx" else runtime, None))
    else:
        print(f"note: reference model not found at {reference}; no ratios")
    rows = []
    for count in threads:
        for label, path, file_runtime, classifier in targets:
            print(f"timing {label} with {count} thread(s)...", flush=True)
            row = measure_in_subprocess(path, file_runtime, count, runs, classifier, xnnpack)
            row["model"] = label
            rows.append(row)
    for count in threads:
        base = next((r for r in rows if r["model"].startswith("reference") and r["threads"] == count
                     and "error" not in r), None)
        for row in rows:
            if row["threads"] == count and base and "error" not in row:
                row["ratio_to_reference"] = row["median_ms"] / base["median_ms"]
    print(format_rows(rows))
    save_json(out, "bench.json", {"bundle": str(bundle_path), "rows": rows})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'model':<28}{'runtime':<17}{'thr':>4}{'load s':>8}{'first ms':>10}{'median ms':>11}"
             f"{'p95 ms':>9}{'x ref':>8}{'RSS MB':>8}{'MB':>7}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<28}{'':<17}{r['threads']:>4}  failed: {r['error']}")
            continue
        ratio = f"{r['ratio_to_reference']:.2f}" if "ratio_to_reference" in r else "-"
        lines.append(f"{r['model']:<28}{r['runtime']:<17}{r['threads']:>4}{r['load_s']:>8.2f}"
                     f"{r['first_inference_ms']:>10.2f}{r['median_ms']:>11.3f}{r['p95_ms']:>9.3f}{ratio:>8}"
                     f"{r['peak_rss_mb']:>8.0f}{r['size_mb']:>7.2f}")
    return "\n".join(lines)


PIPELINE_WORKER = """
import time
started = time.perf_counter()
import json, resource, sys, tempfile
from leukoscreen.edge.daemon import Daemon
from leukoscreen.edge.device_config import parse_config
from leukoscreen.edge.displays import Display
with tempfile.TemporaryDirectory() as state:
    config = parse_config({"bundle": sys.argv[1], "state_dir": state, "min_free_mb": 0,
                           "camera": {"kind": "folder", "folder": sys.argv[2]}, "xnnpack": sys.argv[4] == "1"})
    daemon = Daemon(config, Display())
    daemon.camera.connect()
    ready = time.perf_counter() - started
    rows = [daemon.capture_once().timings_ms for _ in range(int(sys.argv[3]))]
    daemon.close()
print(json.dumps({"ready_s": ready, "timings": rows,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def benchmark_pipeline(bundle_path: Path, folder: Path, captures: int = 200, out: Path | None = None,
                       xnnpack: bool = True) -> dict:
    """End-to-end time per capture through the daemon (folder replay: decode, quality gate, cell finder,
    classification, store), with a breakdown; cold start to ready and peak RSS, in a fresh process."""
    print(f"timing {captures} captures from {folder} through the daemon...", flush=True)
    result = subprocess.run([sys.executable, "-c", PIPELINE_WORKER, str(bundle_path), str(folder), str(captures),
                             str(int(xnnpack))], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pipeline benchmark failed: {result.stderr.strip().splitlines()[-1]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    stages = ["capture", "find_cells", "quality", "classify", "store", "total"]
    summary = {"captures": captures, "ready_s": measured["ready_s"], "peak_rss_mb": measured["peak_rss_mb"]}
    for stage in stages:
        values = [row[stage] for row in measured["timings"] if stage in row]
        if values:
            summary[stage] = {"median_ms": statistics.median(values), "p95_ms": float(np.percentile(values, 95)),
                              "n": len(values)}
    print(f"cold start to ready {summary['ready_s']:.2f} s, peak RSS {summary['peak_rss_mb']:.0f} MB")
    print(f"{'stage':<12}{'median ms':>11}{'p95 ms':>9}{'n':>6}")
    for stage in stages:
        if stage in summary:
            print(f"{stage:<12}{summary[stage]['median_ms']:>11.2f}{summary[stage]['p95_ms']:>9.2f}"
                  f"{summary[stage]['n']:>6}")
    save_json(out, "pipeline.json", summary)
    return summary
