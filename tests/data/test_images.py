import cv2
import numpy as np
import pytest

from cxr.data.images import decode_gray, load_image, read_gray, to_gray8
from cxr.errors import ImageError


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


@pytest.fixture
def gray() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)


def test_gray_png_round_trips_exactly(gray):
    np.testing.assert_array_equal(decode_gray(encode(gray)), gray)


def test_rgb_with_equal_channels_gives_the_same_gray(gray):
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(decode_gray(encode(rgb)), gray)


def test_rgba_drops_alpha(gray):
    rgba = np.dstack([gray, gray, gray, np.zeros_like(gray)])
    np.testing.assert_array_equal(decode_gray(encode(rgba)), gray)


def test_16_bit_full_range_is_divided_by_257(gray):
    sixteen = gray.astype(np.uint16) * 257
    np.testing.assert_array_equal(decode_gray(encode(sixteen)), gray)


def test_12_bit_data_in_16_bit_png_is_stretched_to_full_range():
    twelve = np.array([[0, 4095], [2048, 1024]], dtype=np.uint16)
    out = decode_gray(encode(twelve))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 255], [128, 64]])


def test_jpeg_decodes_close_to_original(gray):
    smooth = cv2.GaussianBlur(gray, (0, 0), 3)
    out = decode_gray(encode(smooth, ".jpg"))
    assert out.shape == smooth.shape
    assert np.abs(out.astype(int) - smooth).mean() < 3


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_jpeg_is_decoded_upright_as_its_exif_orientation_says(gray, orientation):
    import io

    from PIL import Image, ImageOps

    smooth = cv2.GaussianBlur(np.kron(gray, np.ones((4, 4), np.uint8)), (0, 0), 2)  # 160 x 120, not square
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation  # as a phone stores a photo taken sideways
    Image.fromarray(smooth).save(buffer, "JPEG", quality=95, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))))
    out = decode_gray(buffer.getvalue())
    assert out.shape == expected.shape == (smooth.shape if orientation < 5 else smooth.shape[::-1])
    assert np.abs(out.astype(int) - expected).mean() < 1  # the same pixels, up to the two JPEG decoders


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"hello, I am a text file\n", "not an image (unrecognised content)"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "PNG cannot be decoded (truncated or corrupt)"),
    ],
)
def test_bad_bytes_raise_with_reason(data, reason):
    with pytest.raises(ImageError) as caught:
        decode_gray(data, "x.png")
    assert caught.value.reason == reason
    assert str(caught.value) == f"x.png: {reason}"


@pytest.mark.parametrize("ext, kind", [(".png", "PNG"), (".jpg", "JPEG")])
def test_truncated_files_are_rejected(gray, ext, kind):
    data = encode(gray, ext)
    with pytest.raises(ImageError, match=f"{kind} cannot be decoded"):
        decode_gray(data[: len(data) - 20])


def test_missing_file_is_reported_as_unreadable(tmp_path):
    with pytest.raises(ImageError, match="unreadable"):
        read_gray(tmp_path / "nope.png")


def test_load_image_resizes_to_square(tmp_path, gray):
    path = tmp_path / "a.png"
    path.write_bytes(encode(gray))
    out = load_image(path, 16)
    assert out.shape == (16, 16) and out.dtype == np.uint8


def test_to_gray8_rejects_float_images():
    with pytest.raises(ValueError, match="unsupported pixel type"):
        to_gray8(np.zeros((4, 4), dtype=np.float32))
