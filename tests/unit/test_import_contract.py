"""The import contract (scripts/import_contract.py, run by `make lint`): kept by this tree, and each rule bites."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def contract() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_contract", ROOT / "scripts" / "import_contract.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_contract", module)
    spec.loader.exec_module(module)
    return module


def test_this_tree_keeps_the_contract() -> None:
    assert contract().check(ROOT) == []


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    base = {"agent/__init__.py": '__version__ = "0"\n', "agent/config.py": "import tomllib\n",
            "agent/daemon/agent.py": "from agent.api.documents import x\n", "agent/api/__init__.py": "",
            "agent/api/documents.py": "x = 1\n", "agent/health/__init__.py": "import pymysql\n",
            "agent/cluster/__init__.py": "", "agent/cluster/kube.py": "import kubernetes_asyncio\n",
            "agent/sync/__init__.py": "", "agent/sync/watcher.py": "from agent.cluster import kube\n"}
    for name, text in {**base, **files}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_a_tree_that_keeps_it(tmp_path: Path) -> None:
    assert contract().check(tree(tmp_path, {})) == []


@pytest.mark.parametrize(("files", "words"), [
    ({"agent/api/documents.py":
      "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent.daemon.agent import Agent\n"},
     "agent.api.documents (line 3) imports agent.daemon.agent: the API sees the agent through "
     "agent.api.agent_view.AgentView"),
    ({"agent/config.py": "from agent.health.checks import load\n"},  # health.credentials is base: allowed
     "agent.config may import only the standard library and the base layer"),
    ({"agent/config.py": "import aiohttp\n"}, "agent.config may import only the standard library"),
    ({"agent/sync/watcher.py": "from kubernetes_asyncio import watch\n"},
     "only agent.cluster.kube may import kubernetes_asyncio"),
    ({"agent/cluster/kube.py": "from agent.sync import watcher\n"},
     "layer 'health | cluster' may not import the higher layer 'sync'"),
    ({"agent/health/__init__.py": "from agent.cluster import kube\n"}, "siblings in layer 'health | cluster'"),
    ({"agent/gadget.py": "import os\n"}, "agent.gadget is in no layer"),
    ({"agent/api/documents.py": "from agent.api import other\n",
      "agent/api/other.py": "from agent.api.documents import x\n"},
     "import cycle among agent.api.documents, agent.api.other"),
])
def test_each_rule_bites(tmp_path: Path, files: dict[str, str], words: str) -> None:
    problems = contract().check(tree(tmp_path, files))
    assert any(words in p for p in problems), problems
