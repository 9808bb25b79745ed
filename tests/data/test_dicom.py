"""DICOM input: made by the tests with pydicom, read through the same loader as PNG and JPEG."""

import warnings

import cv2
import numpy as np
import pytest
from helpers import dicom_bytes, ramp12
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from cxr.data.images import decode_gray, load_image
from cxr.errors import ImageError
from cxr.inference.predict import predict_files


def test_a_12_bit_monochrome2_file_is_scaled_to_the_full_8_bit_range():
    gray = decode_gray(dicom_bytes(ramp12()))
    assert gray.dtype == np.uint8 and gray.shape == (40, 50)
    assert gray.min() == 0 and gray.max() == 255 and gray[15, 15] == 255
    assert (np.diff(gray[30].astype(int)) >= 0).all()  # the ramp stays monotone


def test_monochrome1_is_inverted_so_it_matches_its_monochrome2_twin():
    pixels = ramp12()
    twin = (4095 - pixels).astype(np.uint16)
    np.testing.assert_array_equal(decode_gray(dicom_bytes(twin, "MONOCHROME1")), decode_gray(dicom_bytes(pixels)))


def test_the_window_from_the_file_is_applied():
    wide = decode_gray(dicom_bytes(ramp12()))
    narrow = decode_gray(dicom_bytes(ramp12(), window=(1000, 400)))  # 800..1200 spans the whole grey scale
    assert (narrow[30] == 0).sum() > (wide[30] == 0).sum() and (narrow[30] == 255).sum() > (wide[30] == 255).sum()


def test_an_image_that_fills_part_of_its_window_is_as_grey_as_a_viewer_shows_it():
    # Values 900-1100 under the window 800-1200: a viewer maps 800 to black and 1200 to white, so the image
    # spans about 64-191, not 0-255 (stretching it over its own range would double its contrast).
    pixels = np.tile(np.linspace(900, 1100, 50), (40, 1)).round().astype(np.uint16)
    gray = decode_gray(dicom_bytes(pixels, window=(1000, 400)))
    expected = ((pixels.astype(float) - 999.5) / 399 + 0.5) * 255  # DICOM's linear window (PS3.3 C.11.2.1.2)
    np.testing.assert_allclose(gray, expected, atol=1)
    assert 62 <= gray.min() <= 66 and 189 <= gray.max() <= 193
    # Without a window the file's own range is the grey scale, as before.
    plain = decode_gray(dicom_bytes(pixels))
    assert plain.min() == 0 and plain.max() == 255
    # A VOI LUT (here linear over 0-4095 to 16 bits) likewise: values 1000-3000 show as about 62-187.
    from pydicom.dataset import Dataset

    lut = Dataset()
    lut.LUTDescriptor, lut.LUTData = [4096, 0, 16], np.linspace(0, 65535, 4096).round().astype("<u2").tobytes()
    wide = np.tile(np.linspace(1000, 3000, 50), (40, 1)).round().astype(np.uint16)
    looked_up = decode_gray(dicom_bytes(wide, VOILUTSequence=[lut]))
    np.testing.assert_allclose(looked_up, wide / 4095 * 255, atol=1)


@pytest.mark.parametrize("tags", [
    {"WindowCenter": None, "WindowWidth": None},  # present but blank
    {"VOILUTSequence": []},  # present but empty
    {"WindowCenter": 1000, "WindowWidth": 0.5},  # a width pydicom refuses (viewers take 1)
])
def test_a_blank_or_unusable_window_leaves_the_image_as_if_it_had_none(tags):
    # Before: a blank window scaled every image over +-2^31 to one flat grey (and every such file hashed
    # alike), and a width pydicom refuses stopped the whole scan with a traceback.
    np.testing.assert_array_equal(decode_gray(dicom_bytes(ramp12(), **tags)), decode_gray(dicom_bytes(ramp12())))


def test_a_signed_lut_and_a_sigmoid_window_map_to_their_own_ends():
    from pydicom.dataset import Dataset

    # Signed values -1848..1952 through a LUT over -1024..1023: the LUT's ends are black and white, and
    # values beyond it clip there (the upper end was read from inside the LUT before).
    signed = (ramp12().astype(np.int32) - 2048).astype(np.int16)
    lut = Dataset()
    lut.LUTDescriptor, lut.LUTData = [2048, -1024, 16], np.linspace(0, 65535, 2048).round().astype("<u2").tobytes()
    gray = decode_gray(dicom_bytes(signed, VOILUTSequence=[lut], PixelRepresentation=1))
    inside = (signed >= -1024) & (signed <= 1023)
    np.testing.assert_allclose(gray[inside], (signed[inside] + 1024) / 2047 * 255, atol=1)
    assert (gray[signed < -1024] == 0).all() and (gray[signed > 1023] == 255).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow in exp() for a sigmoid window
        sigmoid = decode_gray(dicom_bytes(ramp12(), window=(2000, 1000), VOILUTFunction="SIGMOID"))
    assert sigmoid.min() < 40 and sigmoid.max() > 215


def test_jpeg_baseline_compressed_pixel_data_is_decoded():
    image = cv2.resize(np.tile(np.arange(256, dtype=np.uint8), (64, 1)), (64, 64))
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    data = dicom_bytes(image, syntax=JPEGBaseline8Bit, encoded=encapsulate([jpeg.tobytes()]))
    gray = decode_gray(data)
    assert gray.shape == (64, 64)
    assert np.abs(gray.astype(int) - cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(int)).mean() < 3


@pytest.mark.parametrize(("data", "reason"), [
    (dicom_bytes(None), "DICOM file has no pixel data (not an image)"),
    (dicom_bytes(np.zeros((2, 8, 8), np.uint8), frames=2), "multi-frame DICOM (2 frames); give a single radiograph"),
])
def test_unusable_dicom_files_are_refused_with_the_reason(data, reason):
    with pytest.raises(ImageError) as caught:
        decode_gray(data, "x.dcm")
    assert caught.value.reason == reason


def test_predict_reads_dicom_files_like_any_image(tiny_run, tmp_path):
    pixels = ramp12(64, 64)
    (tmp_path / "a.dcm").write_bytes(dicom_bytes(pixels))
    (tmp_path / "b.dcm").write_bytes(dicom_bytes((4095 - pixels).astype(np.uint16), "MONOCHROME1"))
    (tmp_path / "c.dcm").write_bytes(dicom_bytes(None))
    frame = predict_files(tiny_run, [tmp_path], engine="keras")
    assert frame["file"].map(lambda f: f.rsplit("/", 1)[1]).tolist() == ["a.dcm", "b.dcm", "c.dcm"]
    columns = [c for c in frame.columns if c.startswith("p_")]
    np.testing.assert_allclose(frame.loc[0, columns].to_numpy(float), frame.loc[1, columns].to_numpy(float))
    assert frame.loc[2, "error"] == "DICOM file has no pixel data (not an image)"
    assert load_image(tmp_path / "a.dcm", 32).shape == (32, 32)
