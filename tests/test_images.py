import cv2
import numpy as np
import pytest

from sfmfeat.errors import ImageReadError, InputError
from sfmfeat.images import list_images, read_image, read_image_list

from helpers import make_bad_input_folder


def test_formats_decode_to_rgb8(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    bgr = rgb[:, :, ::-1]
    cv2.imwrite(str(tmp_path / "a.png"), bgr)
    cv2.imwrite(str(tmp_path / "b16.png"), bgr.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "gray.png"), rgb[:, :, 0])
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(tmp_path / "c.tif"), bgr)
    for name in ("a.png", "b16.png", "rgba.png", "c.tif"):
        image = read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (40, 50, 3)
        np.testing.assert_array_equal(image, rgb)
    gray = read_image(tmp_path / "gray.png")
    np.testing.assert_array_equal(gray[:, :, 1], rgb[:, :, 0])


def test_exif_orientation_is_ignored_like_colmap(tmp_path):
    from PIL import Image

    pixels = np.zeros((30, 60, 3), np.uint8)
    pixels[:, :30] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° CW to display"
    Image.fromarray(pixels).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "rot.jpg")
    assert image.shape[:2] == (30, 60)  # stored grid, not the displayed one
    assert image[:, :20].mean() > 200 and image[:, 40:].mean() < 50


@pytest.mark.parametrize("name, reason", [("empty.jpg", "empty file"),
                                          ("text.jpg", "not a readable image"),
                                          ("corrupt.jpg", "not a readable image"),
                                          ("tiny.png", "smaller than"),
                                          ("missing.jpg", "not found")])
def test_bad_images_raise_with_reason(tmp_path, sacre_coeur_dir, name, reason):
    make_bad_input_folder(sacre_coeur_dir, tmp_path)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(tmp_path / name)
    assert name in str(info.value)


def test_listing_relative_names_with_subfolders_and_unicode(tmp_path, sacre_coeur_dir):
    kinds = make_bad_input_folder(sacre_coeur_dir, tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    assert list_images(tmp_path) == sorted(kinds)
    with pytest.raises(InputError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        list_images(tmp_path / "empty")
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\n\nsub dir/with space.jpg\n")
    assert read_image_list(listing) == ["sub dir/with space.jpg"]
