"""`devnet up` / `demo` with the real app export its inference graph in the background (DevnetConfig.
graph_cache), so that the tasks of the demo load it instead of building the Keras model."""

from __future__ import annotations

import json
from pathlib import Path

import skimage.data
from PIL import Image

from devnet.up import Devnet, DevnetConfig
from tests.fixtures_worker import iexec_env


def test_real_app_gets_a_background_built_graph(tmp_path: Path, run_worker, worker_weights_r50: Path) -> None:
    net = Devnet(
        DevnetConfig(
            data_dir=tmp_path / "data",
            app="real",
            weights=worker_weights_r50,
            cache_dir=tmp_path / "cache",
            graph_cache=True,
        )
    )
    cmd, env = net._app_command()
    assert cmd[-2:] == ["-m", "worker"] and env["SEGBOT_GRAPH_CACHE"] == str(tmp_path / "cache" / "graphs")
    builder = net._graph_builder
    assert builder is not None
    assert builder.wait(timeout=300) == 0, (tmp_path / "data" / "build-graph.log").read_text()[-2000:]

    name = "8" * 64
    task_env = iexec_env(tmp_path, name, **env)
    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "iexec_in" / name, "PNG")
    # the bot's default worker arguments (bot/settings.py worker_args)
    result = run_worker(["--max-dim", "1024", "--min-confidence", "0.7"], task_env)
    assert result.code == 0, result.stderr[-2000:]
    assert json.loads((result.out / "detections.json").read_text())["model"]["graph_cache"] == "hit"


def test_graph_cache_is_off_unless_asked(tmp_path: Path, worker_weights_r50: Path) -> None:
    net = Devnet(
        DevnetConfig(data_dir=tmp_path / "data", app="real", weights=worker_weights_r50, cache_dir=tmp_path / "cache")
    )
    _, env = net._app_command()
    assert "SEGBOT_GRAPH_CACHE" not in env and net._graph_builder is None
