"""LeRobot datasets in and out (issue 26): v3.0 written with MP4 video and read back, v2.1 with per-episode videos,
explicit feature mapping, and one-line refusals. Test data is made here (no hub)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlaforge.cli import main
from vlaforge.data.demos import load_demos
from vlaforge.data.lerobot import write_v3

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    d = tmp_path_factory.mktemp("demos") / "v2"
    assert main(["collect", "--suite", "pointreach", "--tasks", "train", "--episodes", "2", "--num-envs", "4",
                 "--out", str(d)]) == 0
    return d


def test_v3_round_trip_exact_state_action_and_codec_bounded_frames(v2, tmp_path):
    out = write_v3(v2, tmp_path / "v3")
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert (out / "data/chunk-000/file-000.parquet").is_file() and (out / "meta/tasks.parquet").is_file()
    assert (out / "meta/episodes/chunk-000/file-000.parquet").is_file() and (out / "meta/stats.json").is_file()
    cam = next(k for k, v in info["features"].items() if v["dtype"] == "video")
    assert (out / f"videos/{cam}/chunk-000/file-000.mp4").is_file() and info["features"][cam]["info"]["video.codec"] == "av1"
    a, b = load_demos(v2, success_only=False), load_demos(out, success_only=False)
    np.testing.assert_array_equal(a.state, b.state)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.sim_state, b.sim_state)
    np.testing.assert_array_equal(a.episode_end, b.episode_end)
    assert a.instructions == b.instructions and a.task_names == b.task_names
    assert a.images.shape == b.images.shape
    err = np.abs(a.images.astype(int) - b.images.astype(int)).mean()
    assert err < 6.0, err  # AV1 (crf 15, yuv420p) on 32-64 px frames: a few grey levels on average


def test_collect_format_v3_then_sft_from_it(tmp_path):
    d = tmp_path / "v3"
    assert main(["collect", "--suite", "pointreach", "--tasks", "train", "--episodes", "2", "--num-envs", "2",
                 "--format", "v3", "--out", str(d)]) == 0
    assert json.loads((d / "meta" / "info.json").read_text())["codebase_version"] == "v3.0"
    assert main(["sft", "--demos", str(d), "--out", str(tmp_path / "sft"), "--sft.steps", "2", "--sft.batch-size", "4",
                 "--threads", "1"]) == 0
    assert (tmp_path / "sft" / "model.safetensors").is_file()


def _encode(frames, f, fps=10):
    f.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(f), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for fr in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _foreign_v21(root, sizes=((32, 32), (32, 32)), nan=False):
    """A two-camera LeRobot v2.1 dataset as LeRobot writes it: per-episode parquet and per-episode MP4s."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cams = ["observation.images.top", "observation.images.wrist"]
    feats = {c: {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"]}
             for c, (h, w) in zip(cams, sizes)}
    feats.update({"observation.state": {"dtype": "float32", "shape": [2]}, "action": {"dtype": "float32", "shape": [2]},
                  "timestamp": {"dtype": "float32", "shape": [1]}, "episode_index": {"dtype": "int64", "shape": [1]},
                  "task_index": {"dtype": "int64", "shape": [1]}})
    info = {"codebase_version": "v2.1", "fps": 10, "chunks_size": 1000, "features": feats, "robot_type": "so100",
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"}
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "meta" / "tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "pick the cube"}) + "\n")
    rng = np.random.default_rng(0)
    with open(root / "meta" / "episodes.jsonl", "w") as f:
        for e in range(2):
            L = 6
            f.write(json.dumps({"episode_index": e, "tasks": ["pick the cube"], "length": L}) + "\n")
            act = rng.uniform(-1, 1, (L, 2)).astype(np.float32)
            if nan and e == 1:
                act[2, 0] = np.nan
            (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"observation.state": rng.normal(size=(L, 2)).astype(np.float32).tolist(),
                                     "action": act.tolist(), "timestamp": (np.arange(L) / 10).astype(np.float32),
                                     "episode_index": [e] * L, "task_index": [0] * L}),
                           root / f"data/chunk-000/episode_{e:06d}.parquet")
            for c, (h, w) in zip(cams, sizes):
                frames = np.zeros((L, h, w, 3), np.uint8)
                frames[:, :, :, 0] = 40 * e + 10 * np.arange(L)[:, None, None]  # smooth: each frame its own level
                _encode(frames, root / f"videos/chunk-000/{c}/episode_{e:06d}.mp4")
    return root


def test_a_foreign_v21_dataset_with_two_cameras_through_an_explicit_map(tmp_path):
    d = _foreign_v21(tmp_path / "so100")
    m = "observation.images.top=image0,observation.images.wrist=image1,observation.state=state,action=action"
    data = load_demos(d, demos_map=m)
    assert data.images.shape == (12, 2, 32, 32, 3) and data.instructions[0] == "pick the cube"
    assert np.abs(data.images[:6, 0, :, :, 0].mean((1, 2)) - 10 * np.arange(6)).max() < 4  # the right frames
    assert main(["sft", "--demos", str(d), "--demos-map", m, "--out", str(tmp_path / "sft"), "--sft.steps", "2",
                 "--sft.batch-size", "4", "--threads", "1"]) == 0


@pytest.mark.parametrize("case,msg", [
    ("bad-map", "has no feature"), ("role", "unknown role"), ("sizes", "differ in size"), ("nan", "NaN/inf")])
def test_dataset_mismatches_are_refused_in_one_line(tmp_path, capsys, case, msg):
    d = _foreign_v21(tmp_path / "ds", sizes=((32, 32), (16, 16)) if case == "sizes" else ((32, 32), (32, 32)),
                     nan=case == "nan")
    m = {"bad-map": "observation.images.front=image0,observation.state=state,action=action",
         "role": "observation.images.top=camera,observation.state=state,action=action"}.get(case)
    args = ["sft", "--demos", str(d), "--out", str(tmp_path / "sft"), "--sft.steps", "1", "--threads", "1"]
    assert main(args + (["--demos-map", m] if m else [])) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "sft").exists()
