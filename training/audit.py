"""`leukoscreen data audit`: what a data folder holds before anyone trains on it.

Counts per class, image sizes and modes, unreadable files, exact duplicates (same sha256) and near
duplicates (perceptual hashes within a few bits), written as audit.json and a readable audit.md.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from leukoscreen.training.datasets import open_dataset
from leukoscreen.training.fingerprints import fingerprint_files, near_duplicate_pairs
from leukoscreen.training.prepared_data import default_cache_dir


def audit(data_dir: Path, out_dir: Path, near_distance: int = 6, kind: str = "auto") -> dict:
    dataset = open_dataset(data_dir, kind=kind)
    infos = fingerprint_files([s.path for s in dataset.samples], default_cache_dir())
    classes = [s.cls for s in dataset.samples]
    by_hash = defaultdict(list)
    for info in infos:
        by_hash[info.sha256].append(info.path)
    exact = [paths for paths in by_hash.values() if len(paths) > 1]
    readable = [i for i, info in enumerate(infos) if not info.error]
    near = [(readable[i], readable[j], d) for i, j, d in
            near_duplicate_pairs([infos[i].phash for i in readable], near_distance)]
    near = [(i, j, d) for i, j, d in near if infos[i].sha256 != infos[j].sha256]
    cls_of = {s.path.as_posix(): s.cls for s in dataset.samples}
    conflicts = [paths for paths in exact if len({cls_of[Path(p).as_posix()] for p in paths}) > 1]
    result = {
        "data": str(dataset.root), "kind": dataset.kind, "tasks": dataset.tasks,
        "images": len(infos), "classes": dict(Counter(classes)),
        "groups": len({s.group for s in dataset.samples}),
        "sizes": {f"{w}x{h}": n for (w, h), n in Counter((i.width, i.height) for i in infos
                                                          if not i.error).most_common()},
        "modes": dict(Counter(i.mode or "unknown" for i in infos)),
        "unreadable": [{"path": i.path, "error": i.error} for i in infos if i.error],
        "exact_duplicates": exact,
        "exact_duplicates_with_different_classes": conflicts,
        "near_duplicates": [{"a": infos[i].path, "b": infos[j].path, "distance": d} for i, j, d in near],
        "near_distance": near_distance,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "audit.json").write_text(json.dumps(result, indent=2))
    text = audit_table(result)
    (out_dir / "audit.md").write_text(text)
    print(text)
    return result


def audit_table(result: dict) -> str:
    lines = [f"# Data audit: {result['data']}", "",
             f"{result['images']} images, kind {result['kind']}, tasks {', '.join(result['tasks'])}, "
             f"{result['groups']} groups before duplicate merging", "",
             "| class | images |", "|---|---:|"]
    lines += [f"| {name} | {count} |" for name, count in sorted(result["classes"].items())]
    lines += ["", "| size (WxH) | images |", "|---|---:|"]
    lines += [f"| {size} | {count} |" for size, count in list(result["sizes"].items())[:10]]
    if len(result["sizes"]) > 10:
        lines.append(f"| ({len(result['sizes']) - 10} more sizes) | |")
    lines += ["", "| mode | images |", "|---|---:|"]
    lines += [f"| {mode} | {count} |" for mode, count in result["modes"].items()]
    lines += ["", f"- unreadable files: {len(result['unreadable'])}"]
    lines += [f"  - {item['error']}" for item in result["unreadable"][:20]]
    lines += [f"- exact duplicate sets: {len(result['exact_duplicates'])} "
              f"({sum(len(s) for s in result['exact_duplicates'])} files), "
              f"{len(result['exact_duplicates_with_different_classes'])} with different classes",
              f"- near duplicate pairs (perceptual hash within {result['near_distance']} bits, not exact): "
              f"{len(result['near_duplicates'])}", ""]
    for paths in result["exact_duplicates"][:10]:
        lines.append(f"  - same content: {', '.join(Path(p).name for p in paths)}")
    return "\n".join(lines) + "\n"
