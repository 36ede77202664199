"""Dataset specs: class masks, V2 remapping, DomainNet, ObjectNet, clean sets and world sets, on
hand-made folders. Expected labels come from timm's and open_clip's own class lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import oodlab  # noqa: F401  (torchvision next to the CPU torch)
from oodlab.evaluation.datasets import load_dataset, resolve_spec
from oodlab.evaluation.specs import SPECS
from oodlab.evaluation.templates import TEMPLATE_SETS
from oodlab.utils.errors import InputError
from tests.helpers import write_image_folder

TIMM_INFO = Path(__import__("timm").__file__).parent / "data" / "_info"


def _timm(name: str) -> list[str]:
    return (TIMM_INFO / name).read_text().split()


IMAGENET = _timm("imagenet_synsets.txt")
R_WNIDS = _timm("imagenet_r_synsets.txt")
A_WNIDS = _timm("imagenet_a_synsets.txt")


def _openai_names() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def _by_key(ds) -> dict[str, int]:
    return {s.key: s.label for s in ds.samples}


def test_imagenet_val_labels_are_the_standard_indices(tmp_path):
    wnids = [IMAGENET[999], IMAGENET[0], IMAGENET[417]]
    write_image_folder(tmp_path / "val", {w: 2 for w in wnids})
    ds = load_dataset("imagenet-val", tmp_path / "val")
    assert len(ds.classes) == 1000 and list(ds.classes.ids) == IMAGENET
    assert list(ds.classes.names) == _openai_names()
    labels = _by_key(ds)
    for w in wnids:
        assert labels[f"{w}/{w}_000.jpg"] == IMAGENET.index(w)
    assert len(ds.templates) == 80


@pytest.mark.parametrize("spec,mask", [("imagenet-r", R_WNIDS), ("imagenet-a", A_WNIDS)])
def test_200_class_masks(tmp_path, spec, mask):
    chosen = [mask[0], mask[57], mask[199]]
    write_image_folder(tmp_path / spec, {w: 1 for w in chosen})
    ds = load_dataset(spec, tmp_path / spec)
    # the mask in ImageNet order, computed from timm's lists
    expected_ids = [w for w in IMAGENET if w in set(mask)]
    assert len(ds.classes) == 200 and list(ds.classes.ids) == expected_ids
    names = _openai_names()
    assert list(ds.classes.names) == [names[IMAGENET.index(w)] for w in expected_ids]
    for w in chosen:
        assert _by_key(ds)[f"{w}/{w}_000.jpg"] == expected_ids.index(w)


def test_folder_outside_the_mask_is_an_error_but_imagenet_200_skips_it(tmp_path):
    outside = next(w for w in IMAGENET if w not in set(R_WNIDS))
    write_image_folder(tmp_path / "d", {R_WNIDS[3]: 1, outside: 2})
    with pytest.raises(InputError, match="not classes of spec 'imagenet-r'"):
        load_dataset("imagenet-r", tmp_path / "d")
    ds = load_dataset("imagenet-200", tmp_path / "d")
    assert [s.key for s in ds.samples] == [f"{R_WNIDS[3]}/{R_WNIDS[3]}_000.jpg"]


def test_v2_integer_folders_map_to_wnids_by_index(tmp_path):
    # ImageFolder would sort these as 0, 10, 2, 999 and label them 0..3
    write_image_folder(tmp_path / "v2", {"0": 1, "2": 1, "10": 2, "999": 1}, ext=".jpeg")
    ds = load_dataset("imagenet-v2", tmp_path / "v2")
    labels = _by_key(ds)
    assert labels == {"0/0_000.jpeg": 0, "10/10_000.jpeg": 10, "10/10_001.jpeg": 10, "2/2_000.jpeg": 2,
                      "999/999_000.jpeg": 999}
    assert ds.classes.ids[10] == IMAGENET[10]
    write_image_folder(tmp_path / "bad", {"0": 1, "n01440764": 1})
    with pytest.raises(InputError, match="not class indices"):
        load_dataset("v2", tmp_path / "bad", spec="imagenetv2")


def test_clean_variant_keeps_the_classes_that_remain(tmp_path):
    kept = [A_WNIDS[150], A_WNIDS[5], A_WNIDS[70]]
    write_image_folder(tmp_path / "a", {w: 2 for w in kept})
    (tmp_path / "a" / A_WNIDS[9]).mkdir()  # emptied by cleaning: dropped
    ds = load_dataset("imagenet-a-clean", tmp_path / "a")
    expected = sorted(kept, key=IMAGENET.index)
    assert list(ds.classes.ids) == expected
    names = _openai_names()
    assert list(ds.classes.names) == [names[IMAGENET.index(w)] for w in expected]
    assert _by_key(ds)[f"{A_WNIDS[150]}/{A_WNIDS[150]}_001.jpg"] == expected.index(A_WNIDS[150])


def _domainnet_root(tmp_path: Path) -> Path:
    root = tmp_path / "domainnet"
    write_image_folder(root / "sketch", {"lion": 2, "banana": 1, "candle": 1})
    lines = ["sketch/lion/lion_000.jpg 174", "sketch/banana/banana_000.jpg 13", "sketch/candle/candle_000.jpg 58"]
    (root / "sketch_test.txt").write_text("\n".join(lines) + "\n")
    return root


def test_domainnet_list_and_folder_layouts(tmp_path):
    root = _domainnet_root(tmp_path)
    ds = load_dataset("domainnet-sketch", root)  # the root: reads sketch_test.txt
    assert len(ds.classes) == 345
    assert _by_key(ds) == {"sketch/lion/lion_000.jpg": 174, "sketch/banana/banana_000.jpg": 13,
                           "sketch/candle/candle_000.jpg": 58}
    assert ds.classes.names[0] == "aircraft carrier"
    assert len(ds.templates) == 86 and "a quickdraw of a {c}." in ds.templates
    listed = load_dataset("dn-sketch", root / "sketch_test.txt")
    assert _by_key(listed) == _by_key(ds)
    folder = load_dataset("x", root / "sketch", spec="domainnet-sketch")  # all images of the domain folder
    assert _by_key(folder) == {"banana/banana_000.jpg": 13, "candle/candle_000.jpg": 58,
                               "lion/lion_000.jpg": 174, "lion/lion_001.jpg": 174}
    clean = load_dataset("domainnet-sketch-clean", root / "sketch")
    assert list(clean.classes.ids) == ["banana", "candle", "lion"]
    assert _by_key(clean)["lion/lion_001.jpg"] == 2


def test_objectnet_uses_the_datasets_mapping_files(tmp_path):
    root = tmp_path / "objectnet-1.0"
    write_image_folder(root / "images", {"alarm_clock": 1, "banana": 2, "bench": 1}, ext=".png")
    (root / "mappings").mkdir()
    (root / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(
        {"alarm_clock": "Alarm clock", "banana": "Banana", "bench": "Bench"}))
    (root / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {"Banana": "banana", "Alarm clock": "analog clock; digital clock"}))
    ds = load_dataset("objectnet", tmp_path)  # the parent of objectnet-1.0 works too
    assert list(ds.classes.ids) == ["alarm_clock", "banana"]
    assert list(ds.classes.names) == ["alarm clock", "banana"]
    assert _by_key(ds) == {"objectnet-1.0/images/alarm_clock/alarm_clock_000.png": 0,
                           "objectnet-1.0/images/banana/banana_000.png": 1,
                           "objectnet-1.0/images/banana/banana_001.png": 1}
    with pytest.raises(InputError, match="not an ObjectNet 1.0 folder"):
        load_dataset("objectnet", root / "images")


def test_objectnet_subsample_is_wnid_folders_of_imagenet_classes(tmp_path):
    chosen = [IMAGENET[409], IMAGENET[954]]
    write_image_folder(tmp_path / "on", {w: 1 for w in chosen})
    ds = load_dataset("objectnet-subsample", tmp_path / "on")
    assert list(ds.classes.ids) == chosen
    assert list(ds.classes.names) == [_openai_names()[409], _openai_names()[954]]


def test_world_sets_get_their_classes_from_world_json(tiny_world):
    info = json.loads((tiny_world / "world.json").read_text())
    classes = info["classes"]
    ds = load_dataset("val", tiny_world / "eval" / "val")
    assert ds.spec.name == "world:eval/val"
    assert list(ds.classes.ids) == [c["wnid"] for c in classes]
    assert list(ds.classes.names) == [c["name"] for c in classes]
    truth = {r["key"]: r["class_index"] for r in _ground_truth(tiny_world, "eval/val")}
    assert {k: ds.classes.ids[v] for k, v in _by_key(ds).items()} == {k: classes[i]["wnid"] for k, i in truth.items()}
    subset = info["datasets"]["eval/r"]["classes"]
    r = load_dataset("r", tiny_world / "eval" / "r")
    assert list(r.classes.ids) == [classes[i]["wnid"] for i in subset]
    # a name that is a registered spec does not override the world
    sketch = load_dataset("dn-sketch", tiny_world / "domainnet" / "sketch_test.txt")
    assert sketch.spec.name == "world:domainnet/sketch_test.txt" and len(sketch.templates) == 86
    lines = (tiny_world / "domainnet" / "sketch_test.txt").read_text().split("\n")
    expected = {p: int(lbl) for p, lbl in (line.split() for line in lines if line)}
    assert _by_key(sketch) == expected  # the world's list labels are its class indices
    assert resolve_spec("v", tiny_world / "eval" / "v2", spec="world").name == "world:eval/v2"
    with pytest.raises(InputError, match="not an evaluable dataset"):
        load_dataset("pool", tiny_world / "pool")


def _ground_truth(root: Path, dataset: str) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for r in pq.read_table(root / "ground_truth.parquet").to_pylist() if r["dataset"] == dataset]


def test_unknown_names_and_specs_are_clear_errors(tmp_path):
    write_image_folder(tmp_path / "d", {"n01440764": 1})
    with pytest.raises(InputError, match="not the name of a spec") as err:
        load_dataset("mystery", tmp_path / "d")
    assert "imagenet-r" in str(err.value) and "Fix:" in str(err.value)
    with pytest.raises(InputError, match="spec 'nope' is unknown"):
        load_dataset("d", tmp_path / "d", spec="nope")
    with pytest.raises(InputError, match="does not exist"):
        load_dataset("imagenet-val", tmp_path / "missing")


def test_registry_and_templates_match_open_clip():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES] == list(TEMPLATE_SETS["openai"]())
    for base in ("imagenet-val", "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet",
                 "domainnet-real", "domainnet-quickdraw"):
        assert base in SPECS and f"{base}-clean" in SPECS and SPECS[f"{base}-clean"].present_only
