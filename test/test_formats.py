"""Dataset format loaders: tiny fixtures written in each real on-disk format, plus bad-input checks."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from pypcd4 import Encoding, PointCloud

from foundry_core.data.formats import (
    LOADERS, load_dataset, load_modelnet40_h5, load_modelnet40_txt, load_npz, load_omniobject3d,
    load_pcd_scenes, load_scanobjectnn, load_shapenet55, load_shapenetpart, read_point_file,
)
from foundry_core.data.shapeset import DatasetFormatError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RNG = np.random.default_rng(0)


def _layout_error(excinfo: pytest.ExceptionInfo, *words: str) -> None:
    msg = str(excinfo.value)
    assert "Expected layout" in msg, msg
    for w in words:
        assert w in msg, msg


def _h5(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


# ---------------------------------------------------------------- ModelNet40 h5
def _modelnet_h5(root: Path, names: bool = True) -> None:
    _h5(root / "ply_data_train0.h5", data=RNG.random((3, 16, 3), dtype=np.float32),
        label=np.array([[0], [1], [2]], np.uint8), normal=RNG.random((3, 16, 3), dtype=np.float32))
    _h5(root / "ply_data_train1.h5", data=RNG.random((2, 16, 3), dtype=np.float32),
        label=np.array([[2], [1]], np.uint8), normal=RNG.random((2, 16, 3), dtype=np.float32))
    _h5(root / "ply_data_test0.h5", data=RNG.random((2, 16, 3), dtype=np.float32),
        label=np.array([[1], [0]], np.uint8), normal=RNG.random((2, 16, 3), dtype=np.float32))
    if names:
        (root / "shape_names.txt").write_text("airplane\nbathtub\nbed\n")


def test_modelnet40_h5(tmp_path: Path) -> None:
    _modelnet_h5(tmp_path)
    tr = load_modelnet40_h5(tmp_path, "train")
    assert len(tr) == 5 and tr.classes == ["airplane", "bathtub", "bed"]
    assert tr.labels.tolist() == [0, 1, 2, 2, 1] and tr.labels.dtype == np.int64
    assert tr.points[0].shape == (16, 3) and tr.points[0].dtype == np.float32
    te = load_dataset("modelnet40_h5", tmp_path, split="test", normals=True)
    assert te.labels.tolist() == [1, 0] and te.points[1].shape == (16, 6)


def test_modelnet40_h5_default_names_and_errors(tmp_path: Path) -> None:
    _modelnet_h5(tmp_path, names=False)
    assert load_modelnet40_h5(tmp_path).classes == ["class_0", "class_1", "class_2"]
    assert load_modelnet40_h5(tmp_path, num_classes=40).num_classes == 40
    with pytest.raises(DatasetFormatError) as e:
        load_modelnet40_h5(tmp_path / "nope")
    _layout_error(e, "ply_data_")
    _h5(tmp_path / "ply_data_train2.h5", points=np.zeros((1, 16, 3), np.float32), label=np.zeros((1, 1)))
    with pytest.raises(DatasetFormatError) as e:
        load_modelnet40_h5(tmp_path)
    _layout_error(e, "'data'")
    (tmp_path / "ply_data_train2.h5").write_bytes(b"garbage, not hdf5")
    with pytest.raises(DatasetFormatError) as e:
        load_modelnet40_h5(tmp_path)
    _layout_error(e, "ply_data_train2.h5")


def test_modelnet40_h5_label_out_of_range(tmp_path: Path) -> None:
    _modelnet_h5(tmp_path)
    _h5(tmp_path / "ply_data_test1.h5", data=np.zeros((1, 16, 3), np.float32), label=np.array([[3]]))
    with pytest.raises(DatasetFormatError) as e:
        load_modelnet40_h5(tmp_path, "test")
    _layout_error(e, "out of range")


# ---------------------------------------------------------------- ModelNet txt
def _modelnet_txt(root: Path, variant: str = "modelnet40") -> None:
    classes = ["airplane", "night_stand"]
    (root).mkdir(parents=True, exist_ok=True)
    (root / f"{variant}_shape_names.txt").write_text("\n".join(classes) + "\n")
    (root / f"{variant}_train.txt").write_text("airplane_0001\nnight_stand_0001\nnight_stand_0002\n")
    (root / f"{variant}_test.txt").write_text("airplane_0002\n")
    for sid in ("airplane_0001", "airplane_0002", "night_stand_0001", "night_stand_0002"):
        (root / sid.rsplit("_", 1)[0]).mkdir(exist_ok=True)
        np.savetxt(root / sid.rsplit("_", 1)[0] / f"{sid}.txt", RNG.random((10, 6)), fmt="%.6f", delimiter=",")


def test_modelnet40_txt(tmp_path: Path) -> None:
    _modelnet_txt(tmp_path)
    tr = load_modelnet40_txt(tmp_path, "train")
    assert tr.labels.tolist() == [0, 1, 1] and tr.classes == ["airplane", "night_stand"]
    assert tr.points[0].shape == (10, 3) and tr.points[0].dtype == np.float32
    te = load_dataset("modelnet40_txt", tmp_path, "test", normals=True, num_points=4)
    assert te.points[0].shape == (4, 6)
    raw = np.loadtxt(tmp_path / "airplane" / "airplane_0002.txt", delimiter=",")
    np.testing.assert_allclose(te.points[0], raw[:4], atol=1e-6)


def test_modelnet10_txt_and_errors(tmp_path: Path) -> None:
    _modelnet_txt(tmp_path, "modelnet10")
    assert len(load_modelnet40_txt(tmp_path, variant="modelnet10")) == 3
    with pytest.raises(DatasetFormatError) as e:
        load_modelnet40_txt(tmp_path)  # modelnet40_* files absent
    _layout_error(e, "modelnet40_shape_names.txt")
    (tmp_path / "modelnet10_test.txt").unlink()
    with pytest.raises(DatasetFormatError) as e:
        load_modelnet40_txt(tmp_path, "test", variant="modelnet10")
    _layout_error(e, "modelnet10_test.txt")
    (tmp_path / "airplane" / "airplane_0001.txt").write_text("1.0,2.0,abc\n")
    with pytest.raises(DatasetFormatError) as e:
        load_modelnet40_txt(tmp_path, variant="modelnet10")
    _layout_error(e, "airplane_0001.txt")


# ---------------------------------------------------------------- ShapeNet55
def test_shapenet55(tmp_path: Path) -> None:
    lists, pc = tmp_path / "ShapeNet-55", tmp_path / "shapenet_pc"
    lists.mkdir()
    pc.mkdir()
    names = {"train": ["04379243-aaa.npy", "02691156-bbb.npy"], "test": ["03001627-ccc.npy"]}
    for split, ns in names.items():
        (lists / f"{split}.txt").write_text("\n".join(ns) + "\n")
        for n in ns:
            np.save(pc / n, RNG.random((32, 3), dtype=np.float32))
    tr = load_shapenet55(tmp_path, "train")
    assert tr.classes == ["02691156", "03001627", "04379243"]  # union of both splits, sorted
    assert tr.labels.tolist() == [2, 0] and tr.points[0].shape == (32, 3)
    te = load_dataset("shapenet55", tmp_path, "test", num_points=8)
    assert te.labels.tolist() == [1] and te.points[0].shape == (8, 3) and te.points[0].dtype == np.float32
    (pc / "03001627-ccc.npy").unlink()
    with pytest.raises(DatasetFormatError) as e:
        load_shapenet55(tmp_path, "test")
    _layout_error(e, "shapenet_pc")
    (lists / "test.txt").unlink()
    with pytest.raises(DatasetFormatError) as e:
        load_shapenet55(tmp_path, "test")
    _layout_error(e, "ShapeNet-55")


# ---------------------------------------------------------------- ScanObjectNN
def test_scanobjectnn_variants(tmp_path: Path) -> None:
    files = {"main_split_nobg/training_objectdataset.h5": 2, "main_split/training_objectdataset.h5": 3,
             "main_split/training_objectdataset_augmentedrot_scale75.h5": 4,
             "main_split/test_objectdataset_augmentedrot_scale75.h5": 1}
    for name, m in files.items():
        mask = np.where(RNG.random((m, 8)) < 0.5, -1, 3).astype(np.int32)
        _h5(tmp_path / "h5_files" / name, data=RNG.random((m, 8, 3), dtype=np.float32),
            label=np.arange(m) + 10, mask=mask)
    assert len(load_scanobjectnn(tmp_path, "train", variant="obj_only")) == 2
    assert len(load_scanobjectnn(tmp_path / "h5_files", "train", variant="OBJ_BG")) == 3
    hard = load_dataset("scanobjectnn", tmp_path, "train", variant="PB_T50_RS", with_mask=True)
    assert len(hard) == 4 and hard.classes[10:] == ["bed", "pillow", "sink", "sofa", "toilet"]
    assert hard.labels.tolist() == [10, 11, 12, 13] and hard.points[0].shape == (8, 3)
    assert set(np.concatenate(hard.seg).tolist()) <= {0, 1} and hard.seg_classes == ["background", "object"]
    with pytest.raises(DatasetFormatError) as e:
        load_scanobjectnn(tmp_path, "test", variant="obj_bg")
    _layout_error(e, "main_split")


def test_scanobjectnn_bad_label_and_keys(tmp_path: Path) -> None:
    _h5(tmp_path / "main_split" / "test_objectdataset.h5", data=np.zeros((2, 8, 3)), label=np.array([3, 15]))
    with pytest.raises(DatasetFormatError) as e:
        load_scanobjectnn(tmp_path, "test", variant="obj_bg")
    _layout_error(e, "out of range")
    _h5(tmp_path / "main_split" / "training_objectdataset.h5", data=np.zeros((2, 8, 3)), labels=np.zeros(2))
    with pytest.raises(DatasetFormatError) as e:
        load_scanobjectnn(tmp_path, "train", variant="obj_bg")
    _layout_error(e, "'label'")
    _h5(tmp_path / "main_split" / "training_objectdataset.h5", data=np.zeros((2, 8)), label=np.zeros(2))
    with pytest.raises(DatasetFormatError) as e:
        load_scanobjectnn(tmp_path, "train", variant="obj_bg")
    _layout_error(e, "expected (M,N,3)")


# ---------------------------------------------------------------- ShapeNetPart
def _shapenetpart(root: Path) -> None:
    (root / "train_test_split").mkdir(parents=True)
    (root / "synsetoffset2category.txt").write_text("Airplane\t02691156\nBag\t02773838\n")
    shapes = {"train": [("02691156", "a1", 0, 4), ("02773838", "b1", 4, 2)], "val": [("02691156", "a2", 0, 4)],
              "test": [("02773838", "b2", 4, 2)]}
    for split, items in shapes.items():
        entries = [f"shape_data/{s}/{i}" for s, i, _, _ in items]
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
        for s, i, first, n in items:
            (root / s).mkdir(exist_ok=True)
            rows = np.concatenate([RNG.random((12, 6)), (first + np.arange(12) % n)[:, None]], axis=1)
            np.savetxt(root / s / f"{i}.txt", rows, fmt="%.6f")


def test_shapenetpart(tmp_path: Path) -> None:
    _shapenetpart(tmp_path)
    tr = load_shapenetpart(tmp_path, "train")
    assert tr.labels.tolist() == [0, 1] and tr.num_classes == 16 and tr.classes[-1] == "Table"
    assert tr.points[0].shape == (12, 3) and tr.seg[0].dtype == np.int64
    assert sorted(set(tr.seg[0].tolist())) == [0, 1, 2, 3] and sorted(set(tr.seg[1].tolist())) == [4, 5]
    assert len(tr.seg_classes) == 50 and tr.category_of_seg.shape == (50,)
    assert tr.category_of_seg[[0, 3, 4, 8, 49]].tolist() == [0, 0, 1, 3, 15]
    assert tr.category_of_seg[[30, 35, 36, 47]].tolist() == [10, 10, 11, 15]
    tv = load_dataset("shapenetpart", tmp_path, "trainval", normals=True, categories=["Airplane"])
    assert len(tv) == 2 and tv.points[0].shape == (12, 6) and tv.labels.tolist() == [0, 0]


def test_shapenetpart_errors(tmp_path: Path) -> None:
    _shapenetpart(tmp_path)
    rows = np.concatenate([RNG.random((3, 6)), np.array([[0], [1], [7]])], axis=1)  # 7 is not an Airplane part
    np.savetxt(tmp_path / "02691156" / "a1.txt", rows)
    with pytest.raises(DatasetFormatError) as e:
        load_shapenetpart(tmp_path, "train")
    _layout_error(e, "out of range")
    (tmp_path / "train_test_split" / "shuffled_test_file_list.json").unlink()
    with pytest.raises(DatasetFormatError) as e:
        load_shapenetpart(tmp_path, "test")
    _layout_error(e, "shuffled_test_file_list.json")


# ---------------------------------------------------------------- OmniObject3D and single point files
def _ply_ascii(path: Path, xyz: np.ndarray) -> None:
    head = (f"ply\nformat ascii 1.0\ncomment test\nelement vertex {len(xyz)}\nproperty float x\n"
            "property float y\nproperty float z\nproperty uchar red\nelement face 1\n"
            "property list uchar int vertex_indices\nend_header\n")
    body = "".join(f"{a} {b} {c} 200\n" for a, b, c in xyz) + "3 0 1 2\n"
    path.write_text(head + body)


def _ply_binary(path: Path, xyz: np.ndarray) -> None:
    head = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(xyz)}\nproperty double x\n"
            "property double y\nproperty double z\nproperty float nx\nend_header\n").encode()
    arr = np.zeros(len(xyz), dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("nx", "<f4")])
    arr["x"], arr["y"], arr["z"] = xyz.T
    path.write_bytes(head + arr.tobytes())


def _pcd_xyz(path: Path, xyz: np.ndarray) -> None:
    PointCloud.from_xyz_points(xyz.astype(np.float32)).save(path, encoding=Encoding.BINARY_COMPRESSED)


def test_point_file_readers(tmp_path: Path) -> None:
    xyz = RNG.random((7, 3)).astype(np.float32)
    _ply_ascii(tmp_path / "a.ply", xyz)
    _ply_binary(tmp_path / "b.ply", xyz)
    _pcd_xyz(tmp_path / "c.pcd", xyz)
    np.savetxt(tmp_path / "d.xyz", xyz)
    np.savez(tmp_path / "e.npz", points=xyz)
    for name, cols in [("a.ply", 4), ("b.ply", 4), ("c.pcd", 3), ("d.xyz", 3), ("e.npz", 3)]:
        arr = read_point_file(tmp_path / name)
        assert arr.dtype == np.float32 and arr.shape == (7, cols), name
        np.testing.assert_allclose(arr[:, :3], xyz, atol=1e-5, err_msg=name)
    assert np.allclose(read_point_file(tmp_path / "a.ply")[:, 3], 200)


def test_omniobject3d(tmp_path: Path) -> None:
    writers = [lambda p, x: np.save(p.with_suffix(".npy"), x), lambda p, x: np.savez(p.with_suffix(".npz"), points=x),
               lambda p, x: _ply_ascii(p.with_suffix(".ply"), x), lambda p, x: _ply_binary(p.with_suffix(".ply"), x),
               lambda p, x: _pcd_xyz(p.with_suffix(".pcd"), x), lambda p, x: np.savetxt(p.with_suffix(".txt"), x)]
    for c, cls in enumerate(["toy_car", "apple"]):
        for k, write in enumerate(writers):
            obj = tmp_path / cls / f"{cls}_{k:03d}"
            obj.mkdir(parents=True)
            write(obj / "pcd_16", RNG.random((16, 3)).astype(np.float32))
    (tmp_path / "apple" / "notes.md").write_text("ignored")
    full = load_omniobject3d(tmp_path, "all")
    assert full.classes == ["apple", "toy_car"] and len(full) == 12
    assert full.labels.tolist() == [0] * 6 + [1] * 6
    assert all(p.shape == (16, 3) and p.dtype == np.float32 for p in full.points)
    tr = load_dataset("omniobject3d", tmp_path, "train", test_fraction=0.5, seed=3)
    te = load_dataset("omniobject3d", tmp_path, "test", test_fraction=0.5, seed=3)
    assert len(tr) == len(te) == 6 and np.bincount(te.labels).tolist() == [3, 3]
    assert not set(tr.meta["files"]) & set(te.meta["files"])
    assert tr.meta["files"] == load_omniobject3d(tmp_path, "train", test_fraction=0.5, seed=3).meta["files"]
    (tmp_path / "apple" / "apple_000" / "pcd_16.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DatasetFormatError) as e:
        load_omniobject3d(tmp_path)
    _layout_error(e, "pcd_16.npy")
    with pytest.raises(DatasetFormatError) as e:
        load_omniobject3d(tmp_path / "missing")
    _layout_error(e, "one sub-folder per class")


# ---------------------------------------------------------------- generic npz
def test_npz_dense_float16(tmp_path: Path) -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2], np.int16)
    np.savez(tmp_path / "s.npz", points=RNG.random((10, 8, 3)).astype(np.float16), label=labels,
             classes=np.array(["a", "b", "c"]), ids=np.array([f"id{i}" for i in range(10)]),
             seg=RNG.integers(0, 4, (10, 8)))
    full = load_npz(tmp_path / "s.npz")
    assert full.points[0].dtype == np.float32 and full.points[0].shape == (8, 3)
    assert full.labels.dtype == np.int64 and full.classes == ["a", "b", "c"] and full.seg[0].shape == (8,)
    tr = load_dataset("npz", tmp_path / "s.npz", "train", seed=1)
    te = load_dataset("npz", tmp_path / "s.npz", "test", seed=1)
    assert len(tr) + len(te) == 10 and not set(tr.meta["ids"]) & set(te.meta["ids"])
    assert [full.meta["ids"].index(i) for i in tr.meta["ids"]] == sorted(full.meta["ids"].index(i) for i in tr.meta["ids"])


def test_npz_object_arrays_and_folder(tmp_path: Path) -> None:
    pts = np.empty(3, dtype=object)
    for i, n in enumerate((5, 7, 9)):
        pts[i] = RNG.random((n, 4))
    np.savez(tmp_path / "train.npz", points=pts, label=np.array([1, 0, 1]))
    with pytest.raises(DatasetFormatError) as e:
        load_dataset("npz", tmp_path, "train")
    _layout_error(e, "allow_pickle=True")
    d = load_dataset("npz", tmp_path, "train", allow_pickle=True)
    assert [p.shape for p in d.points] == [(5, 4), (7, 4), (9, 4)] and d.classes == ["class_0", "class_1"]


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "keys.npz", data=np.zeros((2, 4, 3)), label=np.zeros(2))
    with pytest.raises(DatasetFormatError) as e:
        load_npz(tmp_path / "keys.npz")
    _layout_error(e, "'points'")
    np.savez(tmp_path / "range.npz", points=np.zeros((2, 4, 3)), label=np.array([0, 2]), classes=np.array(["a", "b"]))
    with pytest.raises(DatasetFormatError) as e:
        load_npz(tmp_path / "range.npz")
    _layout_error(e, "out of range")
    np.savez(tmp_path / "shape.npz", points=np.zeros((2, 4)), label=np.array([0, 1]))
    with pytest.raises(DatasetFormatError) as e:
        load_npz(tmp_path / "shape.npz")
    _layout_error(e, "(M,N,3+F)")
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "range.npz").read_bytes()[:50])
    with pytest.raises(DatasetFormatError) as e:
        load_npz(tmp_path / "trunc.npz")
    _layout_error(e, "trunc.npz")
    with pytest.raises(DatasetFormatError):
        load_npz(tmp_path / "absent.npz")


# ---------------------------------------------------------------- organised PCD scenes
W, H = 5, 4


def _scene(path: Path, labels: np.ndarray, rgba: int = 0x00FF8000) -> np.ndarray:
    """Organised W x H binary_compressed PCD; points with label 0 are NaN. Returns xyz (H*W, 3)."""
    xyz = RNG.random((H * W, 3)).astype(np.float32)
    xyz[labels == 0, 2] = np.nan
    cols = [labels.astype(np.uint32), xyz[:, 0], xyz[:, 1], xyz[:, 2], np.full(H * W, rgba, np.uint32)]
    pc = PointCloud.from_points(cols, ("label", "x", "y", "z", "rgba"),
                                (np.uint32, np.float32, np.float32, np.float32, np.uint32))
    pc.metadata = pc.metadata.derive(width=W, height=H)
    pc.save(path, encoding=Encoding.BINARY_COMPRESSED)
    return xyz


def test_pcd_scenes(tmp_path: Path) -> None:
    learn = tmp_path / "learn"
    learn.mkdir()
    lab = np.array([0, 1, 1, 2, 20, 21, 30, 30, 0, 1] * 2)
    xyz = _scene(learn / "learn0.pcd", lab)
    _scene(learn / "learn10.pcd", np.array([1] * 10 + [20] * 10))
    _scene(learn / "learn2.pcd", np.array([0] * 19 + [40]))
    assert b"DATA binary_compressed" in (learn / "learn0.pcd").read_bytes()[:400]
    sem = load_dataset("pcd_scenes", tmp_path, "train")  # train -> learn/
    assert sem.meta["files"] == ["learn0.pcd", "learn2.pcd", "learn10.pcd"]
    keep = np.flatnonzero(lab != 0)
    assert sem.meta["shape"][0] == (H, W) and sem.meta["index"][0].tolist() == keep.tolist()
    np.testing.assert_array_equal(sem.points[0], xyz[keep])
    assert sem.points[0].dtype == np.float32 and sem.seg_classes == ["table", "object"]
    assert sem.seg[0].tolist() == [0, 0, 0, 1, 1, 1, 1, 0] * 2 and sem.labels.tolist() == [-1, -1, -1]
    inst = load_pcd_scenes(learn, label_mode="instance", rgb=True)
    assert inst.seg[0].tolist() == [0, 0, 0, 1, 1, 2, 2, 0] * 2 and inst.seg[1].tolist() == [3]
    assert inst.seg_classes == ["table", "object_1", "object_2", "object_3"]
    np.testing.assert_allclose(inst.points[0][0, 3:], [1.0, 128 / 255, 0.0])
    raw = load_pcd_scenes(learn, label_mode="raw")
    assert raw.seg[0].tolist() == lab[keep].tolist() and raw.seg_classes is None


def test_pcd_scenes_errors(tmp_path: Path) -> None:
    _scene(tmp_path / "s0.pcd", np.array([1, 15] + [20] * 18))
    with pytest.raises(DatasetFormatError) as e:
        load_pcd_scenes(tmp_path)
    _layout_error(e, "label 0 = invalid")
    assert len(load_pcd_scenes(tmp_path, label_mode="raw")) == 1
    with pytest.raises(ValueError, match="sub-folder"):
        load_pcd_scenes(tmp_path, "test", label_mode="raw")
    data = (tmp_path / "s0.pcd").read_bytes()
    (tmp_path / "s0.pcd").write_bytes(data[: len(data) - 20])
    with pytest.raises(DatasetFormatError) as e:
        load_pcd_scenes(tmp_path, label_mode="raw")
    _layout_error(e, "s0.pcd")
    with pytest.raises(DatasetFormatError) as e:
        load_pcd_scenes(tmp_path / "missing")
    _layout_error(e, "*.pcd")


# ---------------------------------------------------------------- registry
def test_registry_unknown_format() -> None:
    assert set(LOADERS) == {"modelnet40_h5", "modelnet40_txt", "shapenet55", "scanobjectnn",
                            "shapenetpart", "omniobject3d", "npz", "pcd_scenes"}
    with pytest.raises(ValueError, match="modelnet40_h5.*pcd_scenes"):
        load_dataset("modelnet50", "/nowhere")
    with pytest.raises(ValueError, match="valid splits"):
        load_dataset("modelnet40_h5", "/nowhere", split="validation")


# ---------------------------------------------------------------- real data (skipped when absent)
def test_real_infomr_npz() -> None:
    path = SHARED / "shapes" / "infomr_2048.npz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    d = load_dataset("npz", path, split="all")
    assert len(d) == 2470 and d.num_classes == 69 and d.points[0].shape == (2048, 3)
    assert d.points[0].dtype == np.float32 and d.labels.min() == 0 and d.labels.max() == 68


def test_real_mosd_scene(tmp_path: Path) -> None:
    src = SHARED / "mosd" / "learn" / "learn0.pcd"
    if not src.exists():
        pytest.skip(f"{src} not present")
    (tmp_path / "learn0.pcd").symlink_to(src)  # a link, not a copy of the data
    d = load_pcd_scenes(tmp_path, label_mode="instance", rgb=True)
    assert d.meta["shape"][0] == (480, 640) and d.points[0].shape[1] == 6
    assert np.isfinite(d.points[0]).all() and len(d.points[0]) == len(d.meta["index"][0]) == len(d.seg[0])
    assert set(np.unique(d.seg[0]).tolist()) <= set(range(10)) and d.seg[0].min() == 0
