"""The rooms import one way: edge <- training <- convert <- the command line (leukoscreen/cli.py). The device
side needs nothing of the desktop, training nothing of conversion. Every import counts, also those inside
functions."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOMS = {"edge": "edge", "training": "training", "convert": "convert", "leukoscreen": "cli"}
MAY_IMPORT = {"edge": {"edge"}, "training": {"edge", "training"}, "convert": {"edge", "training", "convert"},
              "cli": {"edge", "training", "convert", "cli"}}


def room_of_module(name: str) -> str | None:
    """The room a `leukoscreen...` module lives in; None for the package root (version, notice) and for
    modules outside the project."""
    parts = name.split(".")
    if parts[0] != "leukoscreen" or len(parts) == 1:
        return None
    return {"edge": "edge", "training": "training", "convert": "convert"}.get(parts[1], "cli")


def imported_rooms(source: str) -> list[tuple[int, str, str]]:
    """(line, module, room) of every project import in some source text."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.module != "leukoscreen" else [  # the root's names, or its packages
                f"leukoscreen.{alias.name}" for alias in node.names if alias.name in ("edge", "training", "convert",
                                                                                      "cli")]
        else:
            continue
        found += [(node.lineno, name, room) for name in names if (room := room_of_module(name))]
    return sorted(found)


def wrong_way(path: Path, room: str, root: Path = REPO) -> list[str]:
    return [f"{path.relative_to(root)}:{line} imports {module} ({target}), which the {room} room may not"
            for line, module, target in imported_rooms(path.read_text()) if target not in MAY_IMPORT[room]]


def test_rooms_import_one_way():
    problems, files = [], 0
    for folder, room in ROOMS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            files += 1
            problems += wrong_way(path, room)
    assert files > 50
    assert problems == [], "\n".join(problems)


def test_the_check_sees_imports_inside_functions_too(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from leukoscreen.convert.bundle_builder import convert_run\n"
                   "from leukoscreen import RESEARCH_USE_NOTICE, training\n")
    assert wrong_way(bad, "edge", tmp_path) == [
        "bad.py:2 imports leukoscreen.convert.bundle_builder (convert), which the edge room may not",
        "bad.py:3 imports leukoscreen.training (training), which the edge room may not"]
    assert wrong_way(bad, "convert", tmp_path) == []
