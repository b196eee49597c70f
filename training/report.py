"""`leukoscreen report`: one page (Markdown and HTML) comparing runs, shortcut probes and the thesis.

Rows come from each run's metrics.json; the thesis' own figures stand beside them with how they were
measured, because they were measured differently (augmentation before a random split).
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np

from leukoscreen import RESEARCH_USE_NOTICE
from leukoscreen.training.runs import RunFolder

# Figures reported by the reference thesis, on its own data and split (see the note under the table).
THESIS_ROWS = [
    {"model": "Basic CNN (thesis 3.5)", "task": "ALL vs healthy", "train": "90.99%", "val": "~85%",
     "test": "80.91%", "how": "thesis data; augmentation before a random image-level split"},
    {"model": "Model 1: AlexNet fc7 features + SVM cubic (thesis 3.9)", "task": "ALL, 564 images", "train": "-",
     "val": "-", "test": "99.79%", "how": "augmentation before splitting; ImageNet-pretrained AlexNet"},
    {"model": "Model 2: fine-tuned AlexNet (thesis 3.9)", "task": "ALL, 564 images", "train": "-", "val": "-",
     "test": "100%", "how": "augmentation before an 80/20 hold-out split; ImageNet-pretrained AlexNet"},
]
CLASSICAL_COLUMNS = ["features", "task / colour", "classifier", "precision", "recall", "accuracy", "specificity",
                     "macro-F1", "test-split macro-F1"]

RUN_COLUMNS = ["run", "model", "task", "train acc", "val acc", "test acc [95% CI]", "test macro-F1 [95% CI]",
               "corner masked F1", "corner unmasked F1", "colour-standardised F1", "grayscale F1",
               "epochs", "training time"]


def _interval(metrics: dict, key: str) -> str:
    low, high = metrics["ci95"].get(key, (float("nan"), float("nan")))
    return f"{metrics[key]:.3f} [{low:.3f}-{high:.3f}]"


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def run_row(run: RunFolder) -> dict:
    config, metrics = run.config(), run.metrics()
    variant = metrics.get("variants", {})

    def f1(name):
        return f"{variant[name]['macro_f1']:.3f}" if name in variant else "-"

    model = config.model
    if model == "alexnet" and config.weights == "none":
        model = "alexnet (from scratch)"
    elif model in ("efficientnet-lite0", "mobilenet-v2"):
        model += " (ImageNet, fine-tuned)"
    return {"run": run.path.name, "model": model, "task": f"{config.task} ({Path(config.data).name})",
            "train acc": _number(metrics.get("train_accuracy")), "val acc": _number(metrics.get("val_accuracy")),
            "test acc [95% CI]": _interval(metrics, "accuracy"),
            "test macro-F1 [95% CI]": _interval(metrics, "macro_f1"),
            "corner masked F1": f1("corner_masked"), "corner unmasked F1": f1("corner_unmasked"),
            "colour-standardised F1": f1("colour_standardized"), "grayscale F1": f1("grayscale"),
            "epochs": str(metrics.get("epochs_run", "-")),
            "training time": f"{metrics['timing_seconds']['fit'] / 60:.1f} min"
            if "timing_seconds" in metrics else "-"}


def _markdown_table(columns: list[str], rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]


def _html_table(columns: list[str], rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns)
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


BUNDLE_COLUMNS = ["bundle", "format", "size MB", "x smaller than fp32", "test accuracy", "change vs Keras",
                  "macro-F1 change", "top-1 agreement", "median ms (1 thread)", "median ms (2 threads)",
                  "x reference", "peak RSS MB", "decision on test: sensitivity / specificity / indeterminate"]


def bundle_rows(bundle_dir: Path, bench_files: list[Path]) -> list[dict]:
    """One row per model format of a bundle: manifest metrics plus any benchmark of that bundle."""
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    bench = []
    for path in bench_files:
        data = json.loads(path.read_text())
        if Path(data["bundle"]).resolve() == bundle_dir.resolve():
            bench += data["rows"]
    fp32 = manifest["metrics"].get("tflite-fp32", {}).get("size_bytes")
    rows = [{"bundle": manifest["name"], "format": "keras-fp32 (reference)",
             "test accuracy": f"{manifest['metrics']['keras-fp32']['accuracy']:.4f}"}]
    for fmt in manifest["files"]:
        m = manifest["metrics"][fmt]
        timings = [r for r in bench if r.get("model") == fmt and "error" not in r]
        for runtime in dict.fromkeys(r["runtime"] for r in timings) or [None]:  # e.g. litert, litert built-in
            timed = {}  # the first bench file that timed this format on this runtime counts
            for r in timings:
                if r["runtime"] == runtime:
                    timed.setdefault(r["threads"], r)
            rows.append({
                "bundle": manifest["name"], "format": f"{fmt} ({runtime})" if "built-in" in (runtime or "") else fmt,
                "size MB": f"{m['size_bytes'] / 1e6:.2f}",
                "x smaller than fp32": f"{fp32 / m['size_bytes']:.1f}" if fp32 else "-",
                "test accuracy": f"{m['accuracy']:.4f}", "change vs Keras": f"{m['accuracy_change'] * 100:+.2f} pt",
                "macro-F1 change": f"{m['macro_f1_change'] * 100:+.2f} pt",
                "top-1 agreement": f"{m['top1_agreement']:.4f}",
                "median ms (1 thread)": f"{timed[1]['median_ms']:.2f}" if 1 in timed else "-",
                "median ms (2 threads)": f"{timed[2]['median_ms']:.2f}" if 2 in timed else "-",
                "x reference": f"{timed[min(timed)]['ratio_to_reference']:.2f}"
                if timed and "ratio_to_reference" in timed[min(timed)] else "-",
                "peak RSS MB": f"{max(r['peak_rss_mb'] for r in timed.values()):.0f}" if timed else "-",
                "decision on test: sensitivity / specificity / indeterminate":
                    "{sensitivity:.3f} / {specificity:.3f} / {indeterminate_share:.3f}".format(**m["screening"])
                    if "screening" in m else "-"})
    return rows


def classical_rows(folder: Path) -> list[dict]:
    """Model 1 rows (cross-validated, macro over classes) from `leukoscreen classical` output."""
    summary = json.loads((folder / "classical.json").read_text())
    weights = "from scratch (random weights)" if summary["weights"] == "none" else summary["weights"]
    rows = []
    for name, result in summary["classifiers"].items():
        cv = result["cross_validation"]
        rows.append({"features": f"{summary['backbone']} ({weights}), {summary['feature_size']}-d",
                     "task / colour": f"{summary['task']} / {summary['colour']}", "classifier": name,
                     "precision": _interval(cv, "macro_precision"), "recall": _interval(cv, "macro_recall"),
                     "accuracy": _interval(cv, "accuracy"), "specificity": _interval(cv, "macro_specificity"),
                     "macro-F1": _interval(cv, "macro_f1"),
                     "test-split macro-F1": f"{result['test_split']['macro_f1']:.3f}"})
    return rows


SEARCH_COLUMNS = ["search", "data / task", "method", "seed", "evaluations", "each evaluation", "best validation macro-F1",
                  "best configuration",
                  "test macro-F1 of the best [95% CI]", "search time"]


def search_row(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    test = summary.get("test")
    return {"search": folder.name, "data / task": _data_task(summary),
            "method": summary["method"], "seed": summary["seed"],
            "evaluations": summary["evaluations"], "each evaluation": _evaluation_kind(summary),
            "best validation macro-F1": f"{summary['best_val_macro_f1']:.3f}",
            "best configuration": ", ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in summary["best_params"].items()),
            "test macro-F1 of the best [95% CI]": _interval(test, "macro_f1") if test else "-",
            "search time": f"{summary['search_seconds'] / 60:.1f} min"}


ABLATION_COLUMNS = ["data / task", "method", "seeds", "evaluations each", "each evaluation",
                    "best validation macro-F1, mean (range)",
                    "test macro-F1 of the best, mean (range)", "search time, mean"]


def _data_task(summary: dict) -> str:
    return f"{Path(summary['data']).name} / {summary['task']}"


def _evaluation_kind(summary: dict) -> str:
    return f"{summary['epochs']} epochs" + (", balanced validation" if summary.get("balanced_validation") else "")


def _mean_range(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else f"{values[0]:.3f}"


def ablation_rows(search_dirs: list[Path]) -> list[dict]:
    """The ablation: per data set, task and search method, the mean and range over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for folder in search_dirs:
        summary = json.loads((folder / "summary.json").read_text())
        groups.setdefault((_data_task(summary), summary["method"], _evaluation_kind(summary)), []).append(summary)
    return [{"data / task": data, "method": method, "seeds": len(items),
             "evaluations each": items[0]["evaluations"], "each evaluation": kind,
             "best validation macro-F1, mean (range)": _mean_range([i["best_val_macro_f1"] for i in items]),
             "test macro-F1 of the best, mean (range)": _mean_range([i["test"]["macro_f1"] for i in items
                                                                     if i.get("test")]),
             "search time, mean": f"{np.mean([i['search_seconds'] for i in items]) / 60:.1f} min"}
            for (data, method, kind), items in groups.items()]


def write_report(run_paths: list[Path], out_dir: Path, probe_dirs: list[Path] | None = None,
                 bundle_dirs: list[Path] | None = None, bench_files: list[Path] | None = None,
                 classical_dirs: list[Path] | None = None, gradcam: bool = True,
                 search_dirs: list[Path] | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [RunFolder(p) for p in run_paths if (p / "metrics.json").exists()]
    if not runs:
        raise ValueError(f"none of {', '.join(map(str, run_paths))} is a finished run folder "
                         "(with metrics.json); train first")
    rows = [run_row(run) for run in runs]
    probe_rows = []
    for folder in probe_dirs or []:
        summary = json.loads((folder / "shortcuts.json").read_text())
        for name, result in summary["probes"].items():
            colour = {"standardize": " (colour-standardised)", "grayscale": " (grayscale)",
                      "reinhard": " (Reinhard-normalised)"}.get(
                summary.get("colour"), "")
            probe_rows.append({"probe": name + colour,
                               "data / task": _data_task(summary),
                               "features": result["features"],
                               "test accuracy": f"{result['accuracy']:.3f}",
                               "test macro-F1 [95% CI]": f"{result['macro_f1']:.3f} "
                               f"[{result['ci95']['macro_f1'][0]:.3f}-{result['ci95']['macro_f1'][1]:.3f}]"})
    figures = []
    for run in runs:
        for picture in ("training_curves.png", "confusion.png", "roc.png"):
            if (run.path / picture).exists():
                target = f"{run.path.name}-{picture}"
                shutil.copyfile(run.path / picture, out_dir / target)
                figures.append((run.path.name, picture.removesuffix(".png").replace("_", " "), target))
        if gradcam and (run.path / "model.keras").exists() and (run.path / "predictions.csv").exists():
            from leukoscreen.training.explain import explain_grid
            target = f"{run.path.name}-gradcam.png"
            if explain_grid(run.path, out_dir / target):
                figures.append((run.path.name, "Grad-CAM: true positives, false positives, false negatives", target))
    converted = [row for bundle in bundle_dirs or [] for row in bundle_rows(bundle, bench_files or [])]
    classical = [row for folder in classical_dirs or [] for row in classical_rows(folder)]
    searches = [search_row(folder) for folder in search_dirs or []]
    ablation = ablation_rows(search_dirs or [])
    search_note = ("ODRNN hyperparameter searches at equal budgets of evaluations (each a short training scored "
                   "on the validation part); the best configuration is then trained in full and scored on the "
                   "test split. 'default' is the default configuration, evaluated once.")
    classical_note = ("Model 1 (thesis Table 1): frozen CNN features + classical classifiers, 10-fold group "
                      "cross-validation over the whole data set (whole groups in one fold), macro averages over "
                      "the classes with 95% group-bootstrap intervals; the last column is the foundation's test "
                      "split (fitted on its train and validation parts).")
    probe_columns = ["probe", "data / task", "features", "test accuracy", "test macro-F1 [95% CI]"]
    thesis_columns = ["model", "task", "train", "val", "test", "how"]
    notes = [
        "Test figures are on a stratified group split (60/20/20): exact and near duplicates, patients and "
        "blocks of neighbouring file numbers (one smear) never cross splits. Intervals are 95% bootstrap "
        "intervals over groups.",
        "Augmentation (flips, rotation, shift, zoom, shear) is applied to the training part only, after "
        "splitting. The thesis augmented before splitting, so its test images had near-copies in training; "
        "its figures are not comparable with ours.",
        "Colour alone separates all-aria's classes, and so do histograms of colour-standardised and of grayscale "
        "images (see the shortcut probes): on such data a whole-field score does not show that a model reads "
        "the cells. The colour-standardised and grayscale columns show at least whether it leans on raw colour.",
    ]
    markdown = ["# LeukoScreen report", "", f"**{RESEARCH_USE_NOTICE}**", "", "## Runs", ""]
    markdown += _markdown_table(RUN_COLUMNS, rows)
    if probe_rows:
        markdown += ["", "## Shortcut probes (what a model should not rely on)", ""]
        markdown += _markdown_table(probe_columns, probe_rows)
    if classical:
        markdown += ["", "## Model 1: CNN features + classical classifiers", "", classical_note, ""]
        markdown += _markdown_table(CLASSICAL_COLUMNS, classical)
    if searches:
        markdown += ["", "## ODRNN: Red Deer Algorithm vs random search vs default", "", search_note, ""]
        markdown += _markdown_table(ABLATION_COLUMNS, ablation) + ["", "Each search:", ""]
        markdown += _markdown_table(SEARCH_COLUMNS, searches)
    if converted:
        markdown += ["", "## Converted models (test split, through the device runtime)", ""]
        markdown += _markdown_table(BUNDLE_COLUMNS, converted)
    markdown += ["", "## Figures reported by the thesis", ""] + _markdown_table(thesis_columns, THESIS_ROWS)
    markdown += ["", "## How these figures were measured", ""] + [f"- {n}" for n in notes] + ["", "## Plots", ""]
    markdown += [f"![{run} {title}]({target})" for run, title, target in figures]
    (out_dir / "report.md").write_text("\n".join(markdown) + "\n")
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>LeukoScreen report</title>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:90%}"
            "td,th{border:1px solid #bbb;padding:3px 6px}img{max-width:48%;margin:4px}</style></head><body>",
            "<h1>LeukoScreen report</h1>", f"<p><strong>{html.escape(RESEARCH_USE_NOTICE)}</strong></p>",
            "<h2>Runs</h2>", _html_table(RUN_COLUMNS, rows)]
    if probe_rows:
        page += ["<h2>Shortcut probes (what a model should not rely on)</h2>",
                 _html_table(probe_columns, probe_rows)]
    if classical:
        page += ["<h2>Model 1: CNN features + classical classifiers</h2>", f"<p>{html.escape(classical_note)}</p>",
                 _html_table(CLASSICAL_COLUMNS, classical)]
    if searches:
        page += ["<h2>ODRNN: Red Deer Algorithm vs random search vs default</h2>", f"<p>{html.escape(search_note)}</p>",
                 _html_table(ABLATION_COLUMNS, ablation), "<p>Each search:</p>", _html_table(SEARCH_COLUMNS, searches)]
    if converted:
        page += ["<h2>Converted models (test split, through the device runtime)</h2>",
                 _html_table(BUNDLE_COLUMNS, converted)]
    page += ["<h2>Figures reported by the thesis</h2>", _html_table(thesis_columns, THESIS_ROWS),
             "<h2>How these figures were measured</h2><ul>"]
    page += [f"<li>{html.escape(n)}</li>" for n in notes] + ["</ul><h2>Plots</h2>"]
    page += [f"<figure><img src='{html.escape(t)}' alt='{html.escape(r + ' ' + title)}'>"
             f"<figcaption>{html.escape(r)}: {html.escape(title)}</figcaption></figure>" for r, title, t in figures]
    page.append("</body></html>")
    (out_dir / "report.html").write_text("\n".join(page))
    print(f"report: {out_dir / 'report.md'} and {out_dir / 'report.html'}")
    return out_dir / "report.md"
