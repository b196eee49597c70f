"""The `leukoscreen` command. Each sub-command imports what it needs only when it runs; choice lists come
from the typed definitions they belong to (the `Literal`s of the device and training code)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import get_args

from leukoscreen.edge.device_config import CAMERA_KINDS
from leukoscreen.edge.manifest import FORMATS
from leukoscreen.edge.preprocessing import COLOUR_MODES
from leukoscreen.edge.runtimes import RUNTIMES
from leukoscreen.training.runs import Backbone, Precision, Schedule

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "all-aria"
NO_XNNPACK_HELP = ("TFLite files: the runtime's built-in kernels instead of its XNNPACK delegate (slower, but "
                   "without XNNPACK's second copy of the weights in memory: for large models on small boards)")
BALANCED_VALIDATION_HELP = ("weight the validation loss by class as training does, so early stopping and the kept "
                            "epoch follow the class-balanced objective (advised for imbalanced tasks such as binary)")


def _data_default() -> str | None:
    return str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else None


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _options(pairs: list[str] | None) -> dict:
    """key=value pairs with numbers and true/false read as such."""
    options = {}
    for pair in pairs or []:
        key, separator, value = pair.partition("=")
        if not separator:
            raise ValueError(f"--model-option {pair!r}: write key=value, e.g. cell=gru")
        lowered = value.lower()
        if lowered in ("true", "false"):
            options[key] = lowered == "true"
            continue
        for kind in (int, float):
            try:
                options[key] = kind(value)
                break
            except ValueError:
                continue
        else:
            options[key] = value
    return options


def _stain_bounds(args) -> tuple | None:
    """--stain-bounds FILE (from `leukoscreen data hsv-bounds`) or --hsv-lower/--hsv-upper, or None."""
    if getattr(args, "stain_bounds", None):
        from leukoscreen.training.hsv_bounds import read_bounds
        return read_bounds(args.stain_bounds)
    if args.hsv_lower or args.hsv_upper:
        return tuple(args.hsv_lower or ()), tuple(args.hsv_upper or ())
    return None


def _runtime_options(args):
    from leukoscreen.edge.runtimes import RuntimeOptions
    return RuntimeOptions(format=getattr(args, "format", None), runtime=args.runtime,
                          providers=tuple(args.providers.split(",")) if getattr(args, "providers", None) else (),
                          xnnpack=not getattr(args, "no_xnnpack", False))


# --- handlers ---------------------------------------------------------------------------------------
def _cell_data(args) -> None:
    from leukoscreen.edge.cell_crops import CellGeometry
    from leukoscreen.training.cell_data import build_cell_data
    if not args.fields and not args.normal:
        raise ValueError("give --fields and/or --normal folders to cut cells from")
    geometry = CellGeometry(side_um=args.side_um, pixels=args.pixels)
    build_cell_data(_path(args.fields), [Path(p) for p in args.normal], Path(args.out), geometry, limit=args.limit)


def _train(args) -> None:
    from leukoscreen.training.runs import TrainConfig
    from leukoscreen.training.train import train
    if not args.data:
        raise ValueError(f"--data is required (no default data folder found at {DEFAULT_DATA})")
    config = TrainConfig.with_defaults(
        args.data, args.model, preset=args.preset, colour=args.colour, mask_corner=not args.no_mask_corner,
        hsv=_stain_bounds(args), learning_rate=args.learning_rate, epochs=args.epochs, schedule=args.schedule,
        patience=args.patience, task=args.task, kind=args.kind, batch_size=args.batch_size,
        augment=not args.no_augment, seed=args.seed, block_size=args.block_size, split_file=args.split,
        precision=args.precision, weights=args.weights, head_epochs=args.head_epochs,
        fine_tune_fraction=args.fine_tune_fraction, model_options=_options(args.model_option),
        augmentation=args.augmentation, balanced_validation=args.balanced_validation)
    out = args.out or f"runs/{args.model}-{Path(args.data).name}-{args.task or 'default'}"
    train(config, Path(out), n_boot=args.bootstrap)


def _evaluate(args) -> None:
    if (Path(args.run) / "manifest.json").exists():
        from leukoscreen.training.evaluation import evaluate_bundle
        evaluate_bundle(Path(args.run), _path(args.data), _path(args.out), _runtime_options(args), args.bootstrap)
        return
    from leukoscreen.training.evaluation import evaluate_run
    evaluate_run(Path(args.run), _path(args.data), args.split, _path(args.out), n_boot=args.bootstrap)


def _convert(args) -> None:
    from leukoscreen.convert.bundle_builder import convert_run, parse_formats
    convert_run(Path(args.run), Path(args.out), parse_formats(args.formats), representative=args.representative,
                max_accuracy_drop=args.max_accuracy_drop / 100, allow_drop=args.allow_accuracy_drop,
                target_sensitivity=args.target_sensitivity,
                negative_classes=args.negative_classes.split(",") if args.negative_classes else None,
                name=args.name, version=args.bundle_version, io_type=args.int8_io, classifier=args.classifier,
                per_channel=not args.per_tensor, size_ratio=args.size_ratio, bias_correction=args.bias_correction)


def _bundle(args) -> None:
    import json

    from leukoscreen.edge.bundle import load_bundle, write_manifest
    from leukoscreen.edge.manifest import Manifest
    if args.bundle_command == "schema":
        print(json.dumps(Manifest.model_json_schema(), indent=2))
        return
    if args.bundle_command in ("install", "rollback"):
        return _install(args)
    if args.bundle_command == "onnx-from-tflite":
        from leukoscreen.convert.bundle_builder import remake_onnx_int8
        remake_onnx_int8(Path(args.bundle), _path(args.data), args.bundle_version)
        return
    if args.bundle_command == "scale":
        from leukoscreen.convert.bundle_builder import record_field_scale
        record_field_scale(Path(args.bundle), _path(args.data), args.bundle_version)
        return
    if args.bundle_command == "guard":
        from leukoscreen.convert.guard_builder import add_guard
        add_guard(Path(args.bundle), _path(args.data), args.bundle_version, args.method, args.components, args.within,
                  [_path(f) for f in args.unfamiliar], args.limit)
        return
    bundle = load_bundle(args.bundle)
    if args.bundle_command == "upgrade":
        if write_manifest(bundle.path, bundle.manifest):
            print("note: its signature was of the old manifest and was removed: sign it again (`leukoscreen sign`)")
        print(f"{bundle.path / 'manifest.json'}: schema {bundle.manifest.schema_version}"
              + (" (rewritten)" if bundle.notes else " (already current; rewritten unchanged)"))
        return
    print(f"{bundle.title}: {bundle.manifest.task}, classes {', '.join(bundle.class_names)}, "
          f"{bundle.manifest.input_kind} input, formats {', '.join(bundle.formats)} "
          f"(default {bundle.manifest.default_format}); every file matches its sha256")
    for note in bundle.notes:
        print(f"note: {note}")
    guard = bundle.manifest.guard
    print("unfamiliar-image guard: " + ("none (`leukoscreen bundle guard` adds one)" if guard is None else
          f"{guard.method}, threshold {guard.threshold:.4g}: {guard.threshold_rule}; passes "
          f"{guard.familiar_test_share:.1%} of the "
          + ("test part" if not bundle.manifest.adaptation else "held-out local images"
             if bundle.manifest.adaptation.held_out else "local images fitted on, each left out of its class mean")))
    adaptation = bundle.manifest.adaptation
    if adaptation:
        print(f"adapted from {adaptation.adapted_from} on {adaptation.adapted_on} (`leukoscreen adapt`; the stored "
              "metrics are the original head's); held-out local images, sensitivity / specificity before -> after: "
              + " -> ".join(" / ".join("-" if part.get(k) is None else f"{part[k]:.1%}"
                                       for k in ("sensitivity", "specificity"))
                            for part in (adaptation.before, adaptation.after)))
    from leukoscreen.edge.runtimes import RuntimeOptions, RuntimeProblem
    signature_refused = _signature_line(bundle)
    failed = 0
    for fmt in bundle.formats:
        try:
            runner = bundle.runner(RuntimeOptions(format=fmt))
        except RuntimeProblem as error:
            failed += 1
            print(f"{fmt}: refused: {error}")
            continue
        difference = runner.self_test_difference
        print(f"{fmt}: runs on {runner.name}" + ("" if difference is None else
              f"; self-test passed (largest difference {difference:.4f}, tolerance "
              f"{bundle.manifest.self_test.tolerance})"))
    if failed:
        raise ValueError(f"{failed} of the {len(bundle.formats)} model formats of {bundle.path} cannot be used on "
                         "this device (above); the device would use " + ("another format" if failed < len(
                             bundle.formats) else "none") + ": convert the bundle again, or check the runtime")
    if signature_refused:
        raise ValueError(f"{bundle.path}: its signature does not hold (above); devices with trusted_keys refuse it: "
                         "sign it again with `leukoscreen sign`")


def _bench(args) -> None:
    from leukoscreen.edge.benchmark import REFERENCE, benchmark_bundle, benchmark_pipeline
    xnnpack = not args.no_xnnpack
    if args.pipeline:
        benchmark_pipeline(Path(args.bundle), Path(args.pipeline), args.captures, _path(args.out), xnnpack=xnnpack)
    elif args.web:
        from leukoscreen.edge.web_benchmark import benchmark_web
        benchmark_web(Path(args.bundle), Path(args.web), args.classifications, args.requests, out=_path(args.out),
                      xnnpack=xnnpack, mqtt=args.mqtt or "")
    elif args.mqtt:
        from leukoscreen.edge.mqtt_benchmark import benchmark_outbox
        benchmark_outbox(Path(args.bundle), args.mqtt, args.captures, args.runs_outbox, _path(args.out))
    else:
        benchmark_bundle(Path(args.bundle), args.runtime, tuple(args.threads), args.runs,
                         _path(args.reference) or REFERENCE, _path(args.out), xnnpack=xnnpack)


def _classify(args) -> int:
    import json

    from leukoscreen.edge.capture_record import failed
    from leukoscreen.edge.device_config import load_config
    from leukoscreen.edge.image_io import read_image
    from leukoscreen.edge.scale import MAX_UM_PER_PX, MIN_UM_PER_PX, ScaleConfig
    from leukoscreen.edge.screening import DEFAULT_BUNDLE, ScreeningModel, screen
    config = load_config(args.config)
    if args.um_per_px and not MIN_UM_PER_PX <= args.um_per_px <= MAX_UM_PER_PX:
        raise ValueError(f"--um-per-px {args.um_per_px:g}: give the camera's microns per pixel (a stage "
                         f"micrometer's value, between {MIN_UM_PER_PX} and {MAX_UM_PER_PX}), or leave it out to "
                         "estimate it on each field")
    model = ScreeningModel.open(args.bundle or DEFAULT_BUNDLE, _runtime_options(args), fallback=args.format is None)
    for note in model.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.um_per_px and model.bundle.manifest.input_kind != "cell" and not model.bundle.manifest.field_px:
        print(f"note: {model.title} records no training scale (`leukoscreen bundle scale` adds it): it reads whole "
              "frames as they are, --um-per-px sets only the scale focus is measured at", file=sys.stderr)
    results, scale = [], ScaleConfig(um_per_px=args.um_per_px) if args.um_per_px else config.scale
    for path in args.images:
        try:
            record = screen(read_image(path), model, config.cell_finder, config.quality, scale=scale,
                            source=f"file: {path}")
        except ValueError as error:  # ImageReadError included
            record = failed(f"Cannot classify: {error}")
        results.append(record.model_dump(mode="json") | {"image": path})
        if not args.json:
            counts = "".join(f", {name} {count}" for name, count in record.counts.items())
            if record.um_per_px:
                counts += f", {record.um_per_px:.3f} um per pixel ({record.scale_source})"
            if record.tiles:
                counts += f", read in {record.tiles} tile{'' if record.tiles == 1 else 's'} of the model's field"
            cells = f"{record.cells_found} cell{'' if record.cells_found == 1 else 's'} found"
            print(f"{path}: {record.message}" + (f" (blast score {record.blast_score:.2f}, {cells}{counts}, "
                                                 f"model {record.bundle})"
                                                 if record.blast_score is not None else "")
                  + (f" (guard score {record.guard_score:.4g}, above the bundle's threshold; {cells}, model "
                     f"{record.bundle})" if record.decision == "unfamiliar" else ""))
    if args.json:
        print(json.dumps(results, indent=2))
    return 2 if any(r["decision"] == "error" for r in results) else 0


def _serve(args) -> int:
    import signal

    from leukoscreen.edge.process_memory import return_freed_memory
    return_freed_memory()  # first, before the libraries allocate
    from leukoscreen import RESEARCH_USE_NOTICE
    from leukoscreen.edge.capture_queue import RELOAD
    from leukoscreen.edge.daemon import Daemon
    from leukoscreen.edge.device_config import load_config, with_changes
    from leukoscreen.edge.displays import open_display
    from leukoscreen.edge.triggers import KeyboardTrigger, open_trigger
    from leukoscreen.edge.web import WebServer
    config = load_config(args.config)
    camera = {key: value for key, value in (("kind", args.camera), ("folder", args.camera_folder)) if value}
    changes = {key: value for key, value in (("state_dir", args.state_dir), ("host", args.host), ("port", args.port))
               if value is not None} | ({"camera": camera} if camera else {})
    config = with_changes(config, changes) if changes else config  # validated like the file
    daemon = Daemon(config, display=open_display(config.display, echo=True))
    web = WebServer(daemon)
    try:
        web.start()
    except OSError:
        daemon.close()
        raise
    triggers = [open_trigger(config.button, lambda: print(daemon.press()), daemon.stop)]
    keyboard = config.button.kind == "keyboard" or sys.stdin.isatty()
    if config.button.kind != "keyboard" and sys.stdin.isatty():
        triggers.append(KeyboardTrigger(lambda: print(daemon.press()), daemon.stop))
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGHUP, lambda *_: daemon.queue.control(RELOAD))  # systemctl reload
    print(f"LeukoScreen device: model {daemon.models.deciding.title}, camera {config.camera.kind}, "
          f"results in {config.state_dir}, web page {web.url}. "
          + ("Press Enter to classify, q + Enter to stop. " if keyboard else "Classify on the page; stop with SIGTERM. ")
          + RESEARCH_USE_NOTICE, flush=True)
    try:
        daemon.run()
    finally:
        web.stop()
        for trigger in triggers:
            trigger.close()
        daemon.close()
    return 0


def _image_files(items: list[str]) -> list[Path]:
    """The image files named, and those in the folders named (searched recursively)."""
    from leukoscreen.edge.image_io import is_image_file
    return [f for item in map(Path, items) for f in (sorted(item.rglob("*")) if item.is_dir() else [item])
            if is_image_file(f)]


def _gate(args) -> None:
    """What the quality gate measures on images (optionally perturbed as `robustness` does): each measure's
    spread, and how many images it refuses and why."""
    import json
    from collections import Counter

    import numpy as np

    from leukoscreen.edge.device_config import load_config
    from leukoscreen.edge.field_analysis import analyse_field
    from leukoscreen.edge.image_io import ImageReadError, read_image
    from leukoscreen.edge.quality import reason_name
    config = load_config(args.config)
    perturb = None
    if args.perturb:
        from leukoscreen.training.robustness import PERTURBATIONS
        if args.perturb not in PERTURBATIONS:
            raise ValueError(f"--perturb {args.perturb!r}: choose from {', '.join(PERTURBATIONS)}")
        perturb = PERTURBATIONS[args.perturb]
    files = _image_files(args.images)
    reports = []
    for path in files:
        try:
            rgb = read_image(path)
        except ImageReadError as error:
            print(f"{path}: {error}", file=sys.stderr)
            continue
        try:   # as the device analyses a field: the configured pixel size sets the scale focus is measured at
            reports.append(analyse_field(perturb(rgb) if perturb else rgb, config.cell_finder, config.quality,
                                         config.scale if config.scale.um_per_px else None).quality)
        except ValueError as error:
            print(f"{path}: {error}", file=sys.stderr)
    if not reports:
        raise ValueError(f"no readable image among {len(files)} files")
    measures = ("focus", "dark_fraction", "clipped_fraction", "blockiness", "noise")
    summary = {"images": len(reports), "perturbation": args.perturb or "as acquired",
               "measures": {m: dict(zip(("p1", "median", "p99", "max"), np.round(np.percentile(
                   [getattr(r, m) for r in reports], [1, 50, 99, 100]), 4).tolist())) for m in measures},
               "refused": sum(not r.passed for r in reports),
               "reasons": dict(Counter(reason_name(r.reasons[0]) for r in reports if r.reasons))}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"quality gate on {len(reports)} images ({summary['perturbation']}):")
    for name, spread in summary["measures"].items():
        print(f"  {name:17s} " + "  ".join(f"{key} {value:g}" for key, value in spread.items()))
    print(f"  refused {summary['refused']} of {len(reports)}: {summary['reasons'] or 'none'}")


def _scale(args) -> None:
    import json

    import numpy as np

    from leukoscreen.edge.image_io import ImageReadError, read_image
    from leukoscreen.edge.scale import RED_CELL_DIAMETER_UM, estimate_scale
    files = _image_files(args.images)
    estimates = {}
    for path in files:
        try:
            estimates[str(path)] = estimate_scale(read_image(path))
        except ImageReadError as error:
            print(f"{path}: {error}", file=sys.stderr)
    found = [e.microns_per_pixel for e in estimates.values() if e]
    if not found:
        raise ValueError(f"none of the {len(files)} images shows enough red cells to estimate the scale")
    low, median, high = np.percentile(found, [25, 50, 75])
    summary = {"images": len(estimates), "estimated": len(found), "microns_per_pixel": round(float(median), 4),
               "interquartile_range": [round(float(low), 4), round(float(high), 4)],
               "red_cell_diameter_um": RED_CELL_DIAMETER_UM}
    if args.json:
        print(json.dumps(summary | {"per_image": {p: e and {"diameter_px": round(e.diameter_px, 2), "method": e.method,
                                                              "microns_per_pixel": round(e.microns_per_pixel, 4)}
                                                  for p, e in estimates.items()}}, indent=2))
        return
    print(f"{median:.3f} um per pixel (interquartile range {low:.3f}-{high:.3f}) from the red cells of "
          f"{len(found)} of {len(estimates)} images (a red cell taken as {RED_CELL_DIAMETER_UM} um across)")


def _cells(args) -> None:
    from leukoscreen.training.cell_finder_evaluation import evaluate_cell_finder
    evaluate_cell_finder(_path(args.data), _path(args.out), args.fields)


def _export(args) -> None:
    from leukoscreen.edge.device_config import load_config
    from leukoscreen.edge.device_status import device_name
    from leukoscreen.edge.mqtt_messages import check_topic_part
    from leukoscreen.edge.result_store import ResultStore, write_atomically
    config = load_config(args.config) if args.config else None
    state_dir = args.state_dir or (config.state_dir if config else None)
    if not state_dir:
        raise ValueError("give the device's --config (its state_dir and device_id) or --state-dir")
    if not (Path(state_dir) / "results.sqlite3").is_file():
        raise ValueError(f"{state_dir} holds no results (no results.sqlite3); give the device's state_dir")
    store = ResultStore(state_dir, min_free_mb=0)
    if args.sample and not store.captures(args.sample, limit=1):
        raise ValueError(f"no sample {args.sample!r} in {state_dir}; nothing was exported")
    out = Path(args.out)
    if args.format == "zip":
        count = store.export(out, args.sample, args.since, args.until)
        print(f"exported {count} captures to {out}")
    elif args.format == "fhir":
        from leukoscreen.edge.fhir_export import fhir_export
        device = (check_topic_part(args.device, "--device") if args.device else
                  config.device_name if config else device_name(""))
        bundles = [0]

        def pieces():  # written as made: one sample's images in memory at a time
            for piece in fhir_export(store, device, args.sample, args.since, args.until):
                bundles[0] += 1
                yield piece.encode()
        write_atomically(out, pieces())
        kind = "a FHIR Bundle (JSON)" if args.sample else f"{bundles[0]} FHIR Bundles (NDJSON, one per sample)"
        print(f"exported {kind} to {out}; preliminary: not reviewed. Research use only.")
    else:
        rows = store.captures(args.sample, args.since, args.until, limit=1_000_000)
        csv_text, json_text = store.tables(rows)
        write_atomically(out, (csv_text if args.format == "csv" else json_text).encode())
        print(f"exported {len(rows)} captures to {out}")


def _collect(args) -> None:
    import os
    try:
        from leukoscreen.edge.collector import run_collector
    except ModuleNotFoundError as error:
        raise ValueError(f"the collector needs {error.name}, which this install lacks: pip install "
                         "'.[collector]' in the source folder (make install includes it)") from error
    run_collector(args.broker, args.db, args.prefix, args.host, args.port, args.username,
                  os.environ.get("LEUKOSCREEN_MQTT_PASSWORD", ""), args.ca_file,
                  os.environ.get("LEUKOSCREEN_COLLECTOR_TOKEN", ""), args.client_id)


def _audit(args) -> None:
    from leukoscreen.training.audit import audit
    audit(Path(args.dir), Path(args.out), near_distance=args.near_distance)


def _hsv_bounds(args) -> None:
    from leukoscreen.training.hsv_bounds import hsv_bounds_report
    hsv_bounds_report(Path(args.dir), Path(args.out), args.task, args.per_class)


def _shortcuts(args) -> None:
    from leukoscreen.training.shortcuts import shortcut_probes
    shortcut_probes(Path(args.dir), Path(args.out), task=args.task, block_size=args.block_size,
                    seed=args.seed, colour=args.colour, probes=args.probes)


def _explain(args) -> None:
    from leukoscreen.training.explain import explain_images
    explain_images(Path(args.run), [Path(i) for i in args.images], Path(args.out))


def _search(args) -> None:
    from leukoscreen.training.odrnn_search import run_search
    out = Path(args.out or f"runs/search-odrnn-{args.method}-seed{args.seed}")
    summary = run_search(args.data, out, args.method, args.budget, args.seed, args.task, args.epochs,
                         args.input_size, _stain_bounds(args), final_epochs=args.final_epochs,
                         balanced_validation=args.balanced_validation, deterministic=args.deterministic)
    print(f"best validation macro-F1 {summary['best_val_macro_f1']:.3f} with {summary['best_params']} "
          f"after {summary['evaluations']} evaluations in {summary['search_seconds'] / 60:.1f} min")


def _tune_head(args) -> None:
    from leukoscreen.training.odrnn_search import tune_head
    tune_head(Path(args.run), Path(args.out), args.budget, args.seed, args.spread)


def _classical(args) -> None:
    from leukoscreen.training.classical import run_classical
    out = Path(args.out or f"runs/model1-{args.backbone}-{args.task or 'default'}")
    run_classical(args.data, out, args.backbone, args.weights, args.task, args.colour, args.folds,
                  args.block_size, args.seed, args.bootstrap)
    print((out / "classical.md").read_text())


def _robustness(args) -> None:
    from leukoscreen.edge.device_config import load_config
    from leukoscreen.training.robustness import robustness
    config = load_config(args.config)
    robustness(Path(args.bundle), [Path(d) for d in args.data], _path(args.out), args.perturb, config.cell_finder,
               config.quality, args.limit, config.scale)


def _adapt(args) -> None:
    from leukoscreen.convert.adapt import adapt
    from leukoscreen.edge.device_config import load_config
    adapt(Path(args.bundle), Path(args.data), Path(args.out), args.held_out, args.prior_weight, args.within,
          args.bundle_version, args.seed, load_config(args.config), args.accept_disagreement)


def _perturbed_data(args) -> None:
    from leukoscreen.training.robustness import write_perturbed
    write_perturbed(Path(args.bundle), Path(args.data), args.part, args.perturb, Path(args.out), args.limit, args.seed)


def _report(args) -> None:
    from leukoscreen.training.report import write_report
    write_report([Path(r) for r in args.runs], Path(args.out), [Path(p) for p in args.probes or []],
                 [Path(b) for b in args.bundles or []], [Path(b) for b in args.bench or []],
                 [Path(c) for c in args.classical or []], gradcam=not args.no_gradcam,
                 search_dirs=[Path(f) for f in args.searches or []],
                 robustness_dirs=[Path(f) for f in args.robustness or []])


# --- the parser: one function per command -----------------------------------------------------------
GATE_CONFIG_HELP = ("a device config (TOML) whose [quality], [cell_finder] and [scale] sections apply, as on "
                    "the device (default: the built-in ones)")


def _add_stain_options(command) -> None:
    command.add_argument("--stain-bounds", default=None, metavar="FILE",
                         help="keep only the stained pixels within the bounds of this hsv_bounds.json "
                              "(`leukoscreen data hsv-bounds`)")
    command.add_argument("--hsv-lower", type=int, nargs=3, metavar=("H", "S", "V"),
                         help="keep only pixels within these HSV bounds (odrnn default: the device's stained bounds)")
    command.add_argument("--hsv-upper", type=int, nargs=3, metavar=("H", "S", "V"))


def _add_data(commands) -> None:
    data = commands.add_parser("data", help="look at a data folder before training")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    audit = data_commands.add_parser("audit", help="counts, sizes, modes, unreadable files, duplicates")
    audit.add_argument("dir")
    audit.add_argument("--out", default="audit", help="folder for audit.json and audit.md")
    audit.add_argument("--near-distance", type=int, default=6,
                       help="perceptual-hash bits that may differ for a near duplicate (default 6)")
    audit.set_defaults(handler=_audit)
    bounds = data_commands.add_parser("hsv-bounds", help="propose HSV bounds for the stained cells; mask grid")
    bounds.add_argument("dir")
    bounds.add_argument("--task", default=None)
    bounds.add_argument("--out", default="hsv-bounds")
    bounds.add_argument("--per-class", type=int, default=4, help="images per class in the mask grid")
    bounds.set_defaults(handler=_hsv_bounds)
    probes = data_commands.add_parser("shortcuts", help="probes that see only colour or a corner patch")
    probes.add_argument("dir")
    probes.add_argument("--out", default="shortcuts")
    probes.add_argument("--task", default=None)
    probes.add_argument("--block-size", type=int, default=20)
    probes.add_argument("--seed", type=int, default=0)
    probes.add_argument("--colour", default="rgb", choices=COLOUR_MODES,
                        help="transform every image first (what is left of the colour shortcut?)")
    probes.add_argument("--probes", nargs="*", default=None, help="a subset of the probes")
    probes.set_defaults(handler=_shortcuts)
    cells = data_commands.add_parser("cells", help="a single-cell training set: the device's cell finder and crop "
                                                   "over fields (weak labels from the field) and single-cell images")
    cells.add_argument("--fields", default=None, help="a folder of labelled fields (all-aria): every white cell "
                                                      "found, labelled blast or non-blast by its field")
    cells.add_argument("--normal", action="append", default=[], metavar="DIR",
                       help="a folder of single-cell images of normal white cells (pbc-subset, bccd-wbc); repeatable")
    cells.add_argument("--out", required=True, help="a new folder for the crops, cells.csv and cells.json")
    cells.add_argument("--side-um", type=float, default=24.0, help="side of each crop in microns (default 24)")
    cells.add_argument("--pixels", type=int, default=64, help="side of each crop in pixels (default 64)")
    cells.add_argument("--limit", type=int, default=0, help="at most this many images per source (0: all)")
    cells.set_defaults(handler=_cell_data)
    perturbed = data_commands.add_parser("perturbed", help="one part of a bundle's split, perturbed as another "
                                                           "acquisition would be, as a labelled folder (for adapt)")
    perturbed.add_argument("--bundle", required=True, help="the bundle whose split.csv names the images")
    perturbed.add_argument("--data", required=True, help="the data folder the bundle was trained on")
    perturbed.add_argument("--part", default="val", choices=["train", "val", "test"])
    perturbed.add_argument("--perturb", required=True, help="e.g. 'blur (sigma 1.5)', 'zoom x1.33' (as robustness)")
    perturbed.add_argument("--limit", type=int, default=None, help="at most this many images, chosen at random")
    perturbed.add_argument("--seed", type=int, default=0)
    perturbed.add_argument("--out", required=True, help="a new folder: OUT/CLASS/IMAGE.png")
    perturbed.set_defaults(handler=_perturbed_data)


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train a model on a leak-free split")
    train.add_argument("--data", default=_data_default(), help=f"data folder (default {DEFAULT_DATA})")
    train.add_argument("--model", default="basic-cnn",
                       help="basic-cnn, odrnn, or a backbone to fine-tune: " + ", ".join(get_args(Backbone)))
    train.add_argument("--weights", default="imagenet", help="backbones: imagenet (installed package), none "
                                                            "(from scratch) or a .pth path (AlexNet)")
    train.add_argument("--preset", default=None, choices=["thesis"],
                       help="thesis: learning rate 1e-4, batch 5, 6 epochs, the whole network trained, 80/20 "
                            "hold-out (train + validation parts; same test part), the thesis' augmentation")
    train.add_argument("--augmentation", default="default", choices=["default", "thesis"],
                       help="thesis: reflection, rotation 25-125 degrees, 15-25 px translation")
    train.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                       help="odrnn: sequence=rows|cnn, cell=lstm|gru, layers=N, units=N, bidirectional=true, dropout=F")
    _add_stain_options(train)
    train.add_argument("--head-epochs", type=int, default=5, help="backbones: epochs for the new head alone")
    train.add_argument("--fine-tune-fraction", type=float, default=0.3,
                       help="backbones: share of the top layers trained after the head")
    train.add_argument("--task", default=None, help="binary, subtype or classes (default: the data set's first task)")
    train.add_argument("--kind", default="auto", choices=["auto", "aria", "cnmc", "folders", "cells"])
    train.add_argument("--out", default=None, help="run folder (default runs/MODEL-DATA-TASK)")
    train.add_argument("--epochs", type=int, default=None, help="default 30 for basic-cnn, 40 otherwise")
    train.add_argument("--schedule", default=None, choices=get_args(Schedule),
                       help="learning rate over the epochs (default cosine for basic-cnn, constant otherwise)")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--learning-rate", type=float, default=None,
                       help="default 1e-3 for basic-cnn, 1e-4 for fine-tuning a backbone")
    train.add_argument("--patience", type=int, default=None,
                       help="early-stopping patience in epochs (default 8; with a cosine schedule none: all epochs "
                            "run and the best validation epoch is kept)")
    train.add_argument("--balanced-validation", action="store_true", help=BALANCED_VALIDATION_HELP)
    train.add_argument("--no-augment", action="store_true")
    train.add_argument("--no-mask-corner", action="store_true",
                       help="keep the bottom-right corner (all-aria's scale-bar label) in training")
    train.add_argument("--colour", default="rgb", choices=COLOUR_MODES)
    train.add_argument("--block-size", type=int, default=20)
    train.add_argument("--split", default=None, help="re-use the split.csv of an earlier run")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--precision", default="auto", choices=get_args(Precision),
                       help="auto: bfloat16 mixed precision where the CPU computes it natively")
    train.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for intervals")
    train.set_defaults(handler=_train)


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="metrics of a run or bundle on a split or another data folder")
    evaluate.add_argument("run")
    evaluate.add_argument("--data", default=None, help="another data folder (every image is evaluated)")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    evaluate.add_argument("--out", default=None)
    evaluate.add_argument("--bootstrap", type=int, default=1000)
    evaluate.add_argument("--format", default=None, choices=FORMATS, help="bundle model format (default: the bundle's)")
    evaluate.add_argument("--runtime", default="auto", choices=RUNTIMES)
    evaluate.set_defaults(handler=_evaluate)


def _add_convert(commands) -> None:
    convert = commands.add_parser("convert", help="turn a run into a TFLite/ONNX model bundle for the device")
    convert.add_argument("run", help="a run folder of `leukoscreen train`, or of `leukoscreen classical` (a "
                                     "two-stage bundle: the backbone's features, then the classifier)")
    convert.add_argument("--classifier", default=None,
                         help="Model 1 runs: the classifier to ship, e.g. 'SVM cubic' (default: the best "
                              "cross-validated macro-F1)")
    convert.add_argument("--out", required=True, help="bundle folder to write")
    convert.add_argument("--formats", default=",".join(("tflite-int8", "tflite-dynamic", "tflite-fp32", "onnx-fp32",
                                                        "onnx-int8")),
                         help=f"comma-separated, from {', '.join(FORMATS)}; the first is the bundle's default")
    convert.add_argument("--representative", type=int, default=500,
                         help="training images used to calibrate int8 quantization")
    convert.add_argument("--max-accuracy-drop", type=float, default=1.0,
                         help="points of accuracy an int8 file may lose against the float model")
    convert.add_argument("--allow-accuracy-drop", action="store_true")
    convert.add_argument("--target-sensitivity", type=float, default=0.99)
    convert.add_argument("--negative-classes", default=None, help="comma-separated non-blast classes")
    convert.add_argument("--int8-io", default="int8", choices=["int8", "uint8"])
    convert.add_argument("--per-tensor", action="store_true",
                         help="TFLite int8 with one scale per convolution kernel instead of per output channel "
                              "(smaller files; usually less accurate)")
    convert.add_argument("--size-ratio", type=float, default=None, metavar="R",
                         help="make the int8 TFLite file at least R times smaller than float32: convolutions "
                              "get one scale per kernel, depthwise and widest first, until it is (the rest stay "
                              "per-channel; needs ai-edge-quantizer)")
    convert.add_argument("--bias-correction", type=int, default=64, metavar="N",
                         help="correct the biases of the int8 TFLite and ONNX files so that each layer's channel "
                              "means match float32 on N of the representative images (0: off)")
    convert.add_argument("--name", default=None)
    convert.add_argument("--bundle-version", default="1")
    convert.set_defaults(handler=_convert)


def _add_bundle(commands) -> None:
    bundle = commands.add_parser("bundle", help="the bundle manifest: its schema, checking and upgrading a bundle")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True)
    bundle_commands.add_parser("schema", help="print the manifest's JSON Schema").set_defaults(handler=_bundle)
    for name, text in (("check", "validate a bundle (manifest and file hashes) and describe it"),
                       ("upgrade", "rewrite an older manifest (schema 1) in the current schema")):
        command = bundle_commands.add_parser(name, help=text)
        command.add_argument("bundle")
        command.set_defaults(handler=_bundle)
    for name, text in (("install", "install a bundle folder or zip on this device (checked, then made current; "
                                   "the one it replaces is kept)"),
                       ("rollback", "make the previously installed bundle current again")):
        command = bundle_commands.add_parser(name, help=text)
        if name == "install":
            command.add_argument("source", help="a bundle folder, or a zip of one")
        command.add_argument("--config", help="the device config (its state_dir and trusted_keys)")
        command.add_argument("--state-dir", help="instead of the config's state_dir")
        command.set_defaults(handler=_bundle)
    remake = bundle_commands.add_parser(
        "onnx-from-tflite", help="make a bundle's onnx-int8 file again from its tflite-int8 file (one quantization "
                                 "for both formats), kept only if both decide every test image alike")
    remake.add_argument("bundle")
    remake.add_argument("--data", required=True, help="the data folder the bundle was trained on (its split's "
                                                      "test images are checked and read there)")
    remake.add_argument("--bundle-version", help="the bundle's new version (default: unchanged)")
    remake.set_defaults(handler=_bundle)
    guard = bundle_commands.add_parser(
        "guard", help="fit the unfamiliar-image guard into a bundle: its model files also output their features, "
                      "statistics from the training part, threshold from the validation part")
    guard.add_argument("bundle")
    guard.add_argument("--data", required=True, help="the data folder the bundle was trained on (its split's "
                                                     "images are checked and read there)")
    guard.add_argument("--method", default="mahalanobis", choices=["mahalanobis", "energy"])
    guard.add_argument("--components", type=int, default=128, help="mahalanobis: principal components kept")
    guard.add_argument("--within", type=float, default=0.99,
                       help="share of familiar images meant to pass (the threshold's split-conformal quantile)")
    guard.add_argument("--unfamiliar", nargs="*", default=[], metavar="DIR",
                       help="folders of images the model was not made for, to measure how well each method "
                            "separates them (the test part perturbed is always measured)")
    guard.add_argument("--limit", type=int, default=150, help="images of each unfamiliar set and of each perturbed "
                                                              "copy of the test part (default 150; 0: not measured)")
    guard.add_argument("--bundle-version", help="the bundle's new version (default: unchanged; give one, as the "
                                                "answers and the recorded separation figures change)")
    guard.set_defaults(handler=_bundle)
    field_scale = bundle_commands.add_parser(
        "scale", help="record a field bundle's training scale (pixel size and field side) in its manifest, so a "
                      "device with a configured pixel size reads frames at it")
    field_scale.add_argument("bundle")
    field_scale.add_argument("--data", required=True, help="the data folder the bundle was trained on")
    field_scale.add_argument("--bundle-version", help="the bundle's new version (default: unchanged)")
    field_scale.set_defaults(handler=_bundle)


def _signature_line(bundle) -> bool:
    """`bundle check`: whether the bundle is signed and the signature matches (which key a device trusts is
    its own config's business); True when a signature is there but does not hold."""
    import json

    from leukoscreen.edge.manifest import BundleError
    from leukoscreen.edge.signing import SIGNATURE_FILE, check_signature
    if not (bundle.path / SIGNATURE_FILE).exists():
        print("signature: none (devices with trusted_keys refuse it; `leukoscreen sign` signs it)")
        return False
    try:
        signer = json.loads((bundle.path / SIGNATURE_FILE).read_text(encoding="utf-8"))["public_key"]
        print(f"signature: by {check_signature(bundle, (str(signer),))}, matches the manifest")
        return False
    except (BundleError, ValueError, KeyError, TypeError, OSError) as error:
        print(f"signature: refused: {error}")
        return True


def _install(args) -> None:
    from leukoscreen.edge.bundle_install import install_bundle, rollback
    from leukoscreen.edge.device_config import load_config, with_changes
    config = load_config(args.config)
    if args.state_dir:
        config = with_changes(config, {"state_dir": args.state_dir})
    folder = install_bundle(args.source, config) if args.bundle_command == "install" else rollback(config)
    print(f"current bundle: {folder}" + (" (checked: every file's hash, the signature, the self-test)"
                                         if args.bundle_command == "install" else ""))
    if config.bundle:
        print(f"note: the config names bundle = {config.bundle!r}, which the device runs instead; empty it to run "
              "the installed bundle")
    print("a running device loads it on `systemctl reload leukoscreen` (SIGHUP)")


def _keygen(args) -> None:
    from leukoscreen.edge.signing import keygen
    private, public = keygen(Path(args.out), args.name)
    print(f"private key: {private} (keep it secret and backed up; it signs bundles)\n"
          f"public key:  {public}: add its line to trusted_keys in each device's config:\n"
          f"  trusted_keys = [\"{public.read_text().strip()}\"]")


def _sign(args) -> None:
    from leukoscreen.edge.signing import sign_bundle
    print(f"{sign_bundle(Path(args.bundle), Path(args.key))}: signed")


def _add_signing(commands) -> None:
    keygen = commands.add_parser("keygen", help="make an Ed25519 key pair for signing bundles")
    keygen.add_argument("--out", required=True, help="folder for NAME.pem (private) and NAME.pub (public)")
    keygen.add_argument("--name", default="leukoscreen-signing")
    keygen.set_defaults(handler=_keygen)
    sign = commands.add_parser("sign", help="sign a bundle (writes BUNDLE/manifest.sig); devices with "
                                            "trusted_keys load only bundles signed by one of them")
    sign.add_argument("bundle")
    sign.add_argument("--key", required=True, help="the private key file from `leukoscreen keygen`")
    sign.set_defaults(handler=_sign)


def _add_bench(commands) -> None:
    bench = commands.add_parser("bench", help="latency and memory of a bundle on this machine's runtimes")
    bench.add_argument("bundle")
    bench.add_argument("--runtime", default="auto", choices=RUNTIMES)
    bench.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    bench.add_argument("--runs", type=int, default=200)
    bench.add_argument("--no-xnnpack", action="store_true", help=NO_XNNPACK_HELP)
    bench.add_argument("--reference", default=None, help="reference .tflite (default: shared MobileNetV2)")
    bench.add_argument("--out", default=None, help="folder for bench.json / pipeline.json / web.json")
    bench.add_argument("--pipeline", default=None, metavar="FOLDER",
                       help="instead: time whole captures through the daemon, replaying this image folder")
    bench.add_argument("--captures", type=int, default=200)
    bench.add_argument("--web", default=None, metavar="FOLDER",
                       help="instead: run the device (replaying this folder) and load its HTTP API")
    bench.add_argument("--classifications", type=int, default=1000, help="--web: classifications through the API")
    bench.add_argument("--requests", type=int, default=500, help="--web: requests per endpoint under load")
    bench.add_argument("--mqtt", default=None, metavar="URL",
                       help="a broker (mqtt://127.0.0.1:1883): alone, the outbox's throughput to it (--captures per "
                            "run, --outbox-runs runs); with --web, the device's memory with and without MQTT")
    bench.add_argument("--outbox-runs", dest="runs_outbox", type=int, default=5)
    bench.set_defaults(handler=_bench)


def _add_device(commands) -> None:
    classify = commands.add_parser("classify", help="screen image files with a model bundle (research use only)")
    classify.add_argument("images", nargs="+")
    classify.add_argument("--bundle", default=None, help="bundle folder (default: the shipped default)")
    classify.add_argument("--format", default=None, choices=FORMATS)
    classify.add_argument("--runtime", default="auto", choices=RUNTIMES)
    classify.add_argument("--providers", default=None,
                          help="onnxruntime execution providers, comma-separated (e.g. CUDAExecutionProvider,"
                               "CPUExecutionProvider)")
    classify.add_argument("--no-xnnpack", action="store_true", help=NO_XNNPACK_HELP)
    classify.add_argument("--json", action="store_true", help="print JSON")
    classify.add_argument("--config", default=None, help=GATE_CONFIG_HELP)
    classify.add_argument("--um-per-px", type=float, default=0.0,
                          help="the camera's microns per pixel (a stage micrometer's value): cell models cut cells "
                               "at it, field models with a training scale read frames in tiles at theirs (default 0: "
                               "cell models estimate it on every field, field models read frames whole)")
    classify.set_defaults(handler=_classify)
    serve = commands.add_parser("serve", help="run the device: camera, button, model, results, displays")
    serve.add_argument("--config", default=None, help="TOML file (default: built-in defaults, synthetic camera)")
    serve.add_argument("--camera", default=None, choices=CAMERA_KINDS)
    serve.add_argument("--camera-folder", default=None, help="images for --camera folder")
    serve.add_argument("--state-dir", default=None, help="where results are kept")
    serve.add_argument("--port", type=int, default=None, help="web page port (default from the config: 8080)")
    serve.add_argument("--host", default=None, help="web page address (default 127.0.0.1; another address "
                                                    "listens on the network and needs access_token)")
    serve.set_defaults(handler=_serve)
    export = commands.add_parser("export", help="export stored results: a zip (CSV, JSON, images), CSV, JSON or "
                                                "FHIR R4 Bundles")
    export.add_argument("--config", default=None, help="the device's config (TOML): its state_dir and, for fhir, "
                                                       "its device_id, as the device's own export names it")
    export.add_argument("--state-dir", default=None, help="the device's state folder (instead of --config)")
    export.add_argument("--out", required=True, help="file to write")
    export.add_argument("--format", default="zip", choices=("zip", "csv", "json", "fhir"),
                        help="fhir: one sample's Bundle (JSON) with --sample, else one Bundle per sample (NDJSON)")
    export.add_argument("--device", default="", help="fhir: the device's name (default: the config's device_id, "
                                                     "else the host name)")
    export.add_argument("--sample", default=None)
    export.add_argument("--since", default=None, help="ISO date/time, e.g. 2026-11-01")
    export.add_argument("--until", default=None)
    export.set_defaults(handler=_export)
    collect = commands.add_parser("collect", help="the region's collector: every device's results from the MQTT "
                                                  "broker into one database, and a page of devices and samples")
    collect.add_argument("--broker", required=True, help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    collect.add_argument("--db", default=f"sqlite:///{Path.home() / '.local/state/leukoscreen/collector.sqlite3'}",
                         help="sqlite:///FILE (default under ~/.local/state/leukoscreen) or postgresql://USER@HOST/DB")
    collect.add_argument("--prefix", default="leukoscreen", help="the devices' mqtt.topic_prefix")
    collect.add_argument("--host", default="127.0.0.1", help="page address (another than loopback needs "
                                                             "LEUKOSCREEN_COLLECTOR_TOKEN)")
    collect.add_argument("--port", type=int, default=8090)
    collect.add_argument("--username", default="", help="broker user (password: LEUKOSCREEN_MQTT_PASSWORD)")
    collect.add_argument("--ca-file", default="", help="mqtts: the broker's CA certificate")
    collect.add_argument("--client-id", default="leukoscreen-collector",
                         help="the broker keeps this id's messages while the collector is away")
    collect.set_defaults(handler=_collect)
    gate = commands.add_parser("gate", help="what the quality gate measures on images: spreads, refusals, reasons")
    gate.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    gate.add_argument("--perturb", default=None, help="perturb each image first, as `robustness` does (e.g. "
                                                      "'jpeg q30', 'exposure x1.15')")
    gate.add_argument("--config", default=None, help=GATE_CONFIG_HELP)
    gate.add_argument("--json", action="store_true", help="print JSON")
    gate.set_defaults(handler=_gate)
    scale = commands.add_parser("scale", help="microns per pixel of images, from their red cells")
    scale.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    scale.add_argument("--json", action="store_true", help="print JSON, with every image's estimate")
    scale.set_defaults(handler=_scale)
    cells = commands.add_parser("cells", help="evaluate the cell finder (generated fields, a real folder)")
    cells.add_argument("--data", default=None, help="real data folder: cells found per field")
    cells.add_argument("--fields", type=int, default=200, help="generated fields with known cells")
    cells.add_argument("--out", default=None)
    cells.set_defaults(handler=_cells)


def _add_thesis_models(commands) -> None:
    explain = commands.add_parser("explain", help="Grad-CAM overlays: where a run's model looked")
    explain.add_argument("run")
    explain.add_argument("images", nargs="+")
    explain.add_argument("--out", default="explain")
    explain.set_defaults(handler=_explain)
    search = commands.add_parser("search", help="ODRNN hyperparameters by Red Deer Algorithm or random search")
    search.add_argument("--data", default=_data_default(), help=f"data folder (default {DEFAULT_DATA})")
    search.add_argument("--task", default=None)
    search.add_argument("--method", default="rda", choices=["rda", "random", "default"])
    search.add_argument("--budget", type=int, default=20, help="evaluations (trainings) in the search")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--epochs", type=int, default=10, help="epochs per evaluation")
    search.add_argument("--input-size", type=int, default=64)
    _add_stain_options(search)
    search.add_argument("--final-epochs", type=int, default=40, help="full training of the best (0: none)")
    search.add_argument("--balanced-validation", action="store_true", help=BALANCED_VALIDATION_HELP)
    search.add_argument("--deterministic", action="store_true",
                        help="TensorFlow op determinism for the whole search: a configuration scores the same each time")
    search.add_argument("--out", default=None, help="folder; an interrupted search resumes from it")
    search.set_defaults(handler=_search)
    tune = commands.add_parser("tune-head", help="RDA on a trained run's output-layer weights (validation)")
    tune.add_argument("run")
    tune.add_argument("--out", required=True)
    tune.add_argument("--budget", type=int, default=300)
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--spread", type=float, default=0.5, help="largest move per weight, in weight std units")
    tune.set_defaults(handler=_tune_head)
    classical = commands.add_parser("classical", help="thesis Model 1: frozen CNN features + classical classifiers")
    classical.add_argument("--data", default=_data_default(), help=f"data folder (default {DEFAULT_DATA})")
    classical.add_argument("--backbone", default="mobilenet-v2", choices=get_args(Backbone))
    classical.add_argument("--weights", default="imagenet",
                           help="imagenet (installed package), none (random: 'from scratch'), or a .pth path")
    classical.add_argument("--task", default=None)
    classical.add_argument("--colour", default="rgb", choices=COLOUR_MODES)
    classical.add_argument("--folds", type=int, default=10)
    classical.add_argument("--block-size", type=int, default=20)
    classical.add_argument("--seed", type=int, default=0)
    classical.add_argument("--bootstrap", type=int, default=1000)
    classical.add_argument("--out", default=None)
    classical.set_defaults(handler=_classical)


def _add_robustness(commands) -> None:
    robust = commands.add_parser("robustness", help="the whole device pipeline over data sets and perturbed "
                                                    "acquisitions: answers, sensitivity, specificity")
    robust.add_argument("bundle")
    robust.add_argument("--data", nargs="+", required=True,
                        help="folders: the first (e.g. all-aria: its test part) is also perturbed")
    robust.add_argument("--perturb", nargs="*", default=None,
                        help="perturbations of the first folder, e.g. 'jpeg q30' 'zoom x1.33' (default all; "
                             "none: give the option alone)")
    robust.add_argument("--config", default=None, help=GATE_CONFIG_HELP)
    robust.add_argument("--limit", type=int, default=None, help="at most this many images per source (a quick look)")
    robust.add_argument("--out", default=None, help="folder for robustness.json and robustness.md")
    robust.set_defaults(handler=_robustness)
    adapt = commands.add_parser("adapt", help="refit a bundle's head, calibration and guard on a site's own labelled "
                                              "images (backbone kept); before/after on a held-out part")
    adapt.add_argument("bundle")
    adapt.add_argument("--data", required=True, help="the site's images: one sub-folder per class of the bundle "
                                                     "(fields; crops for a cell bundle), about 100 in all")
    adapt.add_argument("--out", required=True, help="a new folder for the adapted bundle")
    adapt.add_argument("--held-out", type=float, default=0.3, help="share of each class kept out of the fit and "
                                                                   "screened before and after (default 0.3, at most 0.5)")
    adapt.add_argument("--prior-weight", type=float, default=5.0, help="each class mean is shrunk towards the "
                                                                       "original as if that were this many images")
    adapt.add_argument("--within", type=float, default=0.99, help="share of familiar images the guard passes")
    adapt.add_argument("--bundle-version", default=None, help="the new bundle's version (default: VERSION-adapted)")
    adapt.add_argument("--seed", type=int, default=0, help="which images are held out")
    adapt.add_argument("--config", default=None, help=GATE_CONFIG_HELP)
    adapt.add_argument("--accept-disagreement", action="store_true",
                       help="adapt even when the original model ranks the local blast images below the others "
                            "(AUROC < 0.7: the labels look swapped or wrong)")
    adapt.set_defaults(handler=_adapt)


def _add_report(commands) -> None:
    report = commands.add_parser("report", help="one page comparing runs with the thesis figures")
    report.add_argument("runs", nargs="+")
    report.add_argument("--out", default="report")
    report.add_argument("--probes", nargs="*", help="shortcut-probe folders to show beside the runs")
    report.add_argument("--bundles", nargs="*", help="converted bundles to show (format table)")
    report.add_argument("--bench", nargs="*", help="bench.json files of those bundles")
    report.add_argument("--classical", nargs="*", help="`leukoscreen classical` folders (Model 1 tables)")
    report.add_argument("--no-gradcam", action="store_true", help="leave out the Grad-CAM grids")
    report.add_argument("--searches", nargs="*", help="`leukoscreen search` folders (ODRNN ablation table)")
    report.add_argument("--robustness", nargs="*", help="`leukoscreen robustness --out` folders (the whole "
                        "pipeline across sources and perturbations)")
    report.set_defaults(handler=_report)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="leukoscreen", description=(
        "Leukemia screening aid for blood smears: training, evaluation and the edge device. "
        "Research use only; not for use in diagnostic procedures."))
    main.add_argument("--version", action="version", version=_version())
    commands = main.add_subparsers(dest="command", required=True)
    for add in (_add_data, _add_train, _add_evaluate, _add_convert, _add_bundle, _add_signing, _add_bench, _add_device,
                _add_thesis_models, _add_robustness, _add_report):
        add(commands)
    return main


def _version() -> str:
    from leukoscreen import __version__
    return f"leukoscreen {__version__}"


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        # SIGTERM (systemd, `timeout`) unwinds like Ctrl-C, so a command's half-written output is removed
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return args.handler(args) or 0
    except ModuleNotFoundError as error:  # a desktop command on a device-only install (`make run`'s)
        print(f"error: `leukoscreen {args.command}` needs {error.name}, which is not installed: the desktop commands "
              "(training, evaluation, conversion, adapt, robustness) need `make install` (`pip install -e "
              "'.[train]'`), not only the device side", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:  # user-facing errors carry a message that says what to do
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python's own advice for a closed pipe)
        return 0


if __name__ == "__main__":
    sys.exit(main())
