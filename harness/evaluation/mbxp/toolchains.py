"""Find the compilers and interpreters the checks need, before any scoring starts.

The reference checker scores every answer of a language as failed when its toolchain is missing; we
stop instead, with one message per missing tool. System tools come from PATH; typescript and lodash
from the npm prefix that tools/install_eval_toolchains.sh fills (MBXP_NODE_PREFIX, default
/opt/mbxp-node). Checks find lodash through NODE_PATH, and run tsc with node.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.evaluation.mbxp.programs import SCORED_LANGUAGES

INSTALL_HINT = "install it with: bash tools/install_eval_toolchains.sh"
DEFAULT_NODE_PREFIX = "/opt/mbxp-node"
# The TypeScript verdicts depend on tsc 5.x (7.x has no --target es5) ...
TYPESCRIPT_MAJOR = "5"
# ... and on tsc NOT knowing node's modules: with @types/node visible, `import * as assert from 'assert'`
# type-checks, tsc exits 0 instead of 2, and the reference would count the program as not compiled.
TYPES_NODE = Path("node_modules/@types/node")

PATH_TOOLS: dict[str, tuple[str, ...]] = {
    "cpp": ("g++",), "javascript": ("node",), "typescript": ("node",), "php": ("php",), "ruby": ("ruby",),
    "python": (),  # runs in this interpreter
}


@dataclass(frozen=True)
class Toolchains:
    executables: dict[str, str]  # tool name ("g++", "node", "php", "ruby") -> absolute path
    node_modules: Path  # holds typescript and lodash

    @property
    def tsc(self) -> str:
        return str(self.node_modules / "typescript" / "bin" / "tsc")


def node_prefix() -> Path:
    return Path(os.environ.get("MBXP_NODE_PREFIX", DEFAULT_NODE_PREFIX))


def _package_version(node_modules: Path, package: str) -> str | None:
    try:
        return json.loads((node_modules / package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def _node_module_problems(languages: set[str], node_modules: Path) -> list[str]:
    problems = []
    if "typescript" in languages:
        version = _package_version(node_modules, "typescript")
        if version is None:
            problems.append(f"typescript {TYPESCRIPT_MAJOR}.x (tsc) not found in {node_modules} "
                            f"(needed for typescript); {INSTALL_HINT}")
        elif version.split(".")[0] != TYPESCRIPT_MAJOR:
            problems.append(f"typescript {version} in {node_modules} is not {TYPESCRIPT_MAJOR}.x, which the "
                            f"reference verdicts need; {INSTALL_HINT}")
        # tsc looks for @types in node_modules of the folder it runs in (a fresh temp folder) and its parents.
        temp = Path(tempfile.gettempdir()).resolve()
        for folder in (temp, *temp.parents):
            if (folder / TYPES_NODE).exists():
                problems.append(f"{folder / TYPES_NODE} is visible to tsc and changes typescript verdicts; "
                                "remove it")
    if "javascript" in languages and _package_version(node_modules, "lodash") is None:
        problems.append(f"lodash not found in {node_modules} (javascript tests require it); {INSTALL_HINT}")
    return problems


def _find_toolchains(languages: Iterable[str]) -> tuple[Toolchains, list[str]]:
    wanted = set(languages)
    unknown = wanted - set(SCORED_LANGUAGES)
    if unknown:
        raise ValueError(f"not MBXP scored languages: {sorted(unknown)}")
    executables, problems = {}, []
    for tool in sorted({tool for lang in wanted for tool in PATH_TOOLS[lang]}):
        path = shutil.which(tool)
        if path:
            executables[tool] = os.path.abspath(path)
        else:
            needed_by = ", ".join(sorted(lang for lang in wanted if tool in PATH_TOOLS[lang]))
            problems.append(f"{tool} not found on PATH (needed for {needed_by}); {INSTALL_HINT}")
    node_modules = node_prefix() / "node_modules"
    problems += _node_module_problems(wanted, node_modules)
    return Toolchains(executables, node_modules), problems


def missing_toolchains(languages: Iterable[str]) -> list[str]:
    """One message per missing or unsuitable tool for these languages, [] when all are present."""
    return _find_toolchains(languages)[1]


def locate_toolchains(languages: Iterable[str]) -> Toolchains:
    toolchains, problems = _find_toolchains(languages)
    if problems:
        raise RuntimeError("MBXP toolchains missing:\n" + "\n".join(problems))
    return toolchains
