"""`leukoscreen report`: one page (Markdown and HTML) comparing runs, shortcut probes and the thesis.

Rows come from each run's metrics.json; the thesis' own figures stand beside them with how they were
measured, because they were measured differently (augmentation before a random split).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np

from leukoscreen import RESEARCH_USE_NOTICE
from leukoscreen.training.robustness import COLUMNS as ROBUSTNESS_COLUMNS, robustness_rows
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


BUNDLE_COLUMNS = ["bundle", "format", "size MB", "x smaller than fp32", "test accuracy", "change vs Keras",
                  "macro-F1 change", "top-1 agreement", "median ms (1 thread)", "median ms (2 threads)",
                  "x reference", "peak RSS MB", "decision on test: sensitivity / specificity / indeterminate"]


def bundle_rows(bundle_dir: Path, bench_files: list[Path]) -> list[dict]:
    """One row per model format of a bundle: manifest metrics plus any benchmark of that bundle."""
    from leukoscreen.edge.bundle import read_manifest
    manifest = read_manifest(bundle_dir)[0]
    bench = []
    for path in bench_files:
        data = json.loads(path.read_text())
        if Path(data["bundle"]).resolve() == bundle_dir.resolve():
            bench += data["rows"]
    fp32 = manifest.metrics["tflite-fp32"].size_bytes if "tflite-fp32" in manifest.metrics else None
    rows = [{"bundle": manifest.name, "format": "keras-fp32 (reference)",
             "test accuracy": f"{manifest.metrics['keras-fp32'].accuracy:.4f}"}]
    for fmt in manifest.files:
        m = manifest.metrics[fmt]
        timings = [r for r in bench if r.get("model") == fmt and "error" not in r]
        for runtime in dict.fromkeys(r["runtime"] for r in timings) or [None]:  # e.g. litert, litert built-in
            timed = {}  # the first bench file that timed this format on this runtime counts
            for r in timings:
                if r["runtime"] == runtime:
                    timed.setdefault(r["threads"], r)
            screening = m.screening
            rows.append({
                "bundle": manifest.name, "format": f"{fmt} ({runtime})" if "built-in" in (runtime or "") else fmt,
                "size MB": f"{m.size_bytes / 1e6:.2f}",
                "x smaller than fp32": f"{fp32 / m.size_bytes:.1f}" if fp32 else "-",
                "test accuracy": f"{m.accuracy:.4f}", "change vs Keras": f"{m.accuracy_change * 100:+.2f} pt",
                "macro-F1 change": f"{m.macro_f1_change * 100:+.2f} pt",
                "top-1 agreement": "-" if m.top1_agreement is None else f"{m.top1_agreement:.4f}",
                "median ms (1 thread)": f"{timed[1]['median_ms']:.2f}" if 1 in timed else "-",
                "median ms (2 threads)": f"{timed[2]['median_ms']:.2f}" if 2 in timed else "-",
                "x reference": f"{timed[min(timed)]['ratio_to_reference']:.2f}"
                if timed and "ratio_to_reference" in timed[min(timed)] else "-",
                "peak RSS MB": f"{max(r['peak_rss_mb'] for r in timed.values()):.0f}" if timed else "-",
                "decision on test: sensitivity / specificity / indeterminate":
                    f"{screening.sensitivity:.3f} / {screening.specificity:.3f} / {screening.indeterminate_share:.3f}"
                    if screening else "-"})
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


@dataclass
class Section:
    """One part of the report, rendered the same way into Markdown and HTML."""
    title: str
    note: str = ""
    tables: list[tuple[str, list[str], list[dict]]] = field(default_factory=list)  # (caption, columns, rows)
    items: list[str] = field(default_factory=list)      # a bulleted list
    figures: list[tuple[str, str, str]] = field(default_factory=list)   # (run, title, file)


MARKDOWN = """# LeukoScreen report

**{{ notice }}**
{% for section in sections %}
## {{ section.title }}
{% if section.note %}
{{ section.note }}
{% endif %}{% for caption, columns, rows in section.tables %}{% if caption %}
{{ caption }}
{% endif %}
| {{ columns | join(" | ") }} |
|{% for _ in columns %}---|{% endfor %}
{% for row in rows %}| {% for c in columns %}{{ row.get(c, "") }}{{ " | " if not loop.last }}{% endfor %} |
{% endfor %}{% endfor %}{% if section.items %}
{% for item in section.items %}- {{ item }}
{% endfor %}{% endif %}{% if section.figures %}
{% for run, title, file in section.figures %}![{{ run }} {{ title }}]({{ file }})
{% endfor %}{% endif %}{% endfor %}"""

HTML = """<!doctype html><html><head><meta charset='utf-8'><title>LeukoScreen report</title>
<meta name='viewport' content='width=device-width, initial-scale=1'>
<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:90%}
td,th{border:1px solid #bbb;padding:3px 6px}img{max-width:48%;margin:4px}</style></head><body>
<h1>LeukoScreen report</h1><p><strong>{{ notice }}</strong></p>
{% for section in sections %}<h2>{{ section.title }}</h2>
{% if section.note %}<p>{{ section.note }}</p>{% endif %}
{% for caption, columns, rows in section.tables %}{% if caption %}<p>{{ caption }}</p>{% endif %}
<table><thead><tr>{% for c in columns %}<th>{{ c }}</th>{% endfor %}</tr></thead><tbody>
{% for row in rows %}<tr>{% for c in columns %}<td>{{ row.get(c, "") }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
{% endfor %}{% if section.items %}<ul>{% for item in section.items %}<li>{{ item }}</li>{% endfor %}</ul>{% endif %}
{% for run, title, file in section.figures %}<figure><img src='{{ file }}' alt='{{ run }} {{ title }}'>
<figcaption>{{ run }}: {{ title }}</figcaption></figure>
{% endfor %}{% endfor %}</body></html>
"""

PROBE_COLUMNS = ["probe", "data / task", "features", "test accuracy", "test macro-F1 [95% CI]"]
THESIS_COLUMNS = ["model", "task", "train", "val", "test", "how"]
SEARCH_NOTE = ("ODRNN hyperparameter searches at equal budgets of evaluations (each a short training scored on the "
               "validation part); the best configuration is then trained in full and scored on the test split. "
               "'default' is the default configuration, evaluated once.")
CLASSICAL_NOTE = ("Model 1 (thesis Table 1): frozen CNN features + classical classifiers, 10-fold group "
                  "cross-validation over the whole data set (whole groups in one fold), macro averages over the "
                  "classes with 95% group-bootstrap intervals; the last column is the foundation's test split "
                  "(fitted on its train and validation parts).")
NOTES = [
    "Test figures are on a stratified group split (60/20/20): exact and near duplicates, patients and blocks of "
    "neighbouring file numbers (one smear) never cross splits. Intervals are 95% bootstrap intervals over groups.",
    "Augmentation (flips, rotation, shift, zoom, shear) is applied to the training part only, after splitting. The "
    "thesis augmented before splitting, so its test images had near-copies in training; its figures are not "
    "comparable with ours.",
    "Colour alone separates all-aria's classes, and so do histograms of colour-standardised and of grayscale images "
    "(see the shortcut probes): on such data a whole-field score does not show that a model reads the cells. The "
    "colour-standardised and grayscale columns show at least whether it leans on raw colour.",
]
COLOUR_LABELS = {"standardize": " (colour-standardised)", "grayscale": " (grayscale)",
                 "reinhard": " (Reinhard-normalised)"}


def probe_rows(folder: Path) -> list[dict]:
    summary = json.loads((folder / "shortcuts.json").read_text())
    colour = COLOUR_LABELS.get(summary.get("colour"), "")
    return [{"probe": name + colour, "data / task": _data_task(summary), "features": result["features"],
             "test accuracy": f"{result['accuracy']:.3f}",
             "test macro-F1 [95% CI]": f"{result['macro_f1']:.3f} [{result['ci95']['macro_f1'][0]:.3f}-"
                                       f"{result['ci95']['macro_f1'][1]:.3f}]"}
            for name, result in summary["probes"].items()]


def run_figures(runs: list[RunFolder], out_dir: Path, gradcam: bool) -> list[tuple[str, str, str]]:
    """Each run's plots copied beside the report, and its Grad-CAM grid."""
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
    return figures


def write_report(run_paths: list[Path], out_dir: Path, probe_dirs: list[Path] | None = None,
                 bundle_dirs: list[Path] | None = None, bench_files: list[Path] | None = None,
                 classical_dirs: list[Path] | None = None, gradcam: bool = True,
                 search_dirs: list[Path] | None = None, robustness_dirs: list[Path] | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [RunFolder(p) for p in run_paths if (p / "metrics.json").exists()]
    if not runs:
        raise ValueError(f"none of {', '.join(map(str, run_paths))} is a finished run folder "
                         "(with metrics.json); train first")
    sections = [Section("Runs", tables=[("", RUN_COLUMNS, [run_row(run) for run in runs])])]
    probes = [row for folder in probe_dirs or [] for row in probe_rows(folder)]
    if probes:
        sections.append(Section("Shortcut probes (what a model should not rely on)",
                                tables=[("", PROBE_COLUMNS, probes)]))
    classical = [row for folder in classical_dirs or [] for row in classical_rows(folder)]
    if classical:
        sections.append(Section("Model 1: CNN features + classical classifiers", CLASSICAL_NOTE,
                                tables=[("", CLASSICAL_COLUMNS, classical)]))
    if search_dirs:
        sections.append(Section("ODRNN: Red Deer Algorithm vs random search vs default", SEARCH_NOTE, tables=[
            ("", ABLATION_COLUMNS, ablation_rows(search_dirs)),
            ("Each search:", SEARCH_COLUMNS, [search_row(folder) for folder in search_dirs])]))
    converted = [row for bundle in bundle_dirs or [] for row in bundle_rows(bundle, bench_files or [])]
    if converted:
        sections.append(Section("Converted models (test split, through the device runtime)",
                                tables=[("", BUNDLE_COLUMNS, converted)]))
    for folder in robustness_dirs or []:
        result = json.loads((folder / "robustness.json").read_text())
        sections.append(Section(f"Robustness of {result['bundle']} across sources and acquisitions",
                                f"{result['measures']}; `leukoscreen robustness`.",
                                tables=[("", ROBUSTNESS_COLUMNS, robustness_rows(result))]))
    sections += [Section("Figures reported by the thesis", tables=[("", THESIS_COLUMNS, THESIS_ROWS)]),
                 Section("How these figures were measured", items=NOTES),
                 Section("Plots", figures=run_figures(runs, out_dir, gradcam))]
    for template, name, escape in ((MARKDOWN, "report.md", False), (HTML, "report.html", True)):
        page = jinja2.Environment(autoescape=escape, keep_trailing_newline=True).from_string(template)
        (out_dir / name).write_text(page.render(sections=sections, notice=RESEARCH_USE_NOTICE))
    print(f"report: {out_dir / 'report.md'} and {out_dir / 'report.html'}")
    return out_dir / "report.md"
