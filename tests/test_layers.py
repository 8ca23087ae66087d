"""The package is cut by stage and data flows one way: a stage imports only the shared floor and the stages below it,
and the report imports nothing the report env lacks."""
import ast
import subprocess
import sys

from conftest import ROOT

PACKAGE = ROOT / "workflow/scalpel"
# bottom to top; stages on one level may not import each other
LEVELS = [{"tasks"}, {"data"}, {"model"}, {"train"}, {"eval", "analysis"}, {"report"}]
STAGES = set().union(*LEVELS)
# whole-study commands: they read every stage's config (preflight, prefetch) or plan every job (slurm_preview)
TOP = {"cli", "__main__", "preflight", "prefetch", "slurm_preview"}


def _level(stage: str) -> int:
    return next(i for i, level in enumerate(LEVELS) if stage in level)


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, parts


def _imports(path) -> set[tuple[str, ...]]:
    """Every scalpel module `path` imports, as a tuple of name parts below `scalpel`, relative imports resolved."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import; the package imports itself by absolute name")
            if node.module and node.module.split(".")[0] == "scalpel":
                base = tuple(node.module.split(".")[1:])
                out |= {base + (a.name,) if not base else base for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {tuple(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "scalpel"}
    return {parts for parts in out if parts}


def _violations() -> list[str]:
    bad = []
    for path, parts in _modules():
        own = parts[0] if len(parts) > 1 else None
        for target in _imports(path):
            theirs = target[0] if target[0] in STAGES else None
            name = ".".join(parts)
            if own is None and parts[0] not in TOP:
                if theirs or target[0] in TOP:
                    bad.append(f"shared module {name} imports {'.'.join(target)}")
            elif own and theirs and theirs != own and _level(theirs) >= _level(own):
                bad.append(f"{name} ({own}) imports {'.'.join(target)} ({theirs})")
            elif own and target[0] in TOP:
                bad.append(f"{name} ({own}) imports the top-level command {'.'.join(target)}")
    return bad


def test_every_module_lives_in_a_stage_or_is_shared():
    flat = {parts[0] for _, parts in _modules() if len(parts) == 1}
    assert flat - TOP == {"__init__", "config", "io", "faults", "chat", "hub", "stats"}
    assert {parts[0] for _, parts in _modules() if len(parts) > 1} == STAGES


def test_imports_run_down_the_stages_only():
    assert _violations() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: an analysis module importing the report is caught."""
    fake = tmp_path / "scalpel"
    (fake / "analysis").mkdir(parents=True)
    (fake / "report").mkdir()
    (fake / "analysis/weights.py").write_text("from scalpel.report.weight_tables import summarize\n")
    (fake / "report/weight_tables.py").write_text("from scalpel.analysis import weights\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert _violations() == ["analysis.weights (analysis) imports report.weight_tables (report)"]


def test_the_report_imports_no_torch_transformers_lm_eval_or_safetensors():
    """envs/report.yaml has none of them: every module of the folder imports without them."""
    modules = [".".join(("scalpel",) + parts) for _, parts in _modules() if parts[0] == "report"]
    assert len(modules) > 5
    code = f"import sys, importlib; [importlib.import_module(m) for m in {modules}]; print(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=ROOT / "workflow").stdout
    assert [m for m in ("torch", "transformers", "lm_eval", "safetensors") if f"'{m}'" in loaded] == []
