
import pytest

from oodlab.data.folders import is_image_folder, read_file_list, scan_image_folder
from oodlab.utils.errors import InputError
from tests.helpers import jpeg_bytes, write_image_folder


def test_scan_matches_torchvision_imagefolder(tmp_path):
    import numpy as np
    from torchvision.datasets import ImageFolder

    rng = np.random.default_rng(0)
    write_image_folder(tmp_path, {"n02": 3, "n01": 2, "B": 2, "a": 1})
    # nested folders, upper-case extensions and non-images, as in real trees
    (tmp_path / "n01" / "sub").mkdir()
    (tmp_path / "n01" / "sub" / "x.JPEG").write_bytes(jpeg_bytes(rng))
    (tmp_path / "n01" / "notes.txt").write_text("not an image")
    (tmp_path / "n02" / "y.PNG").write_bytes(jpeg_bytes(rng))
    ours = scan_image_folder(tmp_path)
    ref = ImageFolder(str(tmp_path))
    assert ours.classes == ref.classes
    assert [(str(s.path), s.label) for s in ours.samples] == [(p, l) for p, l in ref.samples]
    assert all(s.key == s.path.relative_to(tmp_path).as_posix() for s in ours.samples)
    assert is_image_folder(tmp_path)


def test_scan_errors_name_the_folder(tmp_path):
    with pytest.raises(InputError, match="is not a folder"):
        scan_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(InputError, match="no images"):
        scan_image_folder(tmp_path / "empty")


def test_file_lists_resolve_relative_to_the_list(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.jpg").write_bytes(jpeg_bytes(rng))
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\nimgs/0.jpg\n\nimgs/2.jpg\n")
    samples = read_file_list([lst, tmp_path / "imgs" / "1.jpg"])
    assert [s.path for s in samples] == [tmp_path / "imgs/0.jpg", tmp_path / "imgs/2.jpg", tmp_path / "imgs/1.jpg"]
    lst.write_text("imgs/9.jpg\n")
    with pytest.raises(InputError, match=r"line 1: imgs/9.jpg does not exist"):
        read_file_list([lst])
