"""`cxr download`: Kaggle's client is faked (no network here); what the user is told is real."""

from __future__ import annotations

import json
from pathlib import Path

import kagglehub
import pytest
from kagglehub import exceptions

from cxr.cli import main
from cxr.data.download import DATASET, download_dataset


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-config"))
    monkeypatch.setattr(kagglehub.config, "_kaggle_credentials", None)


@pytest.fixture
def credentials(no_credentials, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "radiologist")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")


def fake_kaggle(monkeypatch, calls, error=None, cache=None):
    """kagglehub.dataset_download as Kaggle answers it: the archive's folder in output_dir (or in `cache`)."""

    def dataset_download(handle, path=None, *, force_download=False, output_dir=None):
        calls.append({"handle": handle, "output_dir": output_dir})
        if error is not None:
            raise error
        root = Path(output_dir or cache)
        for label in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
            (root / "COVID-19_Radiography_Dataset" / label / "images").mkdir(parents=True, exist_ok=True)
        return str(root)

    monkeypatch.setattr(kagglehub, "dataset_download", dataset_download)


def test_download_fetches_the_dataset_and_says_what_to_run_next(credentials, monkeypatch, tmp_path, capsys):
    calls = []
    fake_kaggle(monkeypatch, calls)
    assert main(["download", "--out", str(tmp_path / "data set")]) == 0
    assert calls == [{"handle": DATASET, "output_dir": str(tmp_path / "data set")}]
    out = capsys.readouterr().out
    root = tmp_path / "data set" / "COVID-19_Radiography_Dataset"
    assert f"the dataset is in {root} (COVID, Lung_Opacity, Normal, Viral Pneumonia)" in out
    assert f"next: cxr train --data '{root}'" in out


def test_missing_credentials_are_one_clear_message_before_any_download(no_credentials, monkeypatch, tmp_path,
                                                                       capsys):
    calls = []
    fake_kaggle(monkeypatch, calls)
    assert main(["download", "--out", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "cxr: error: Kaggle credentials are needed to download the dataset: create an API token at " \
           "https://www.kaggle.com/settings" in err
    assert "~/.kaggle/kaggle.json or set KAGGLE_USERNAME and KAGGLE_KEY" in err
    assert calls == [] and not (tmp_path / "data").exists()


def test_an_unreadable_kaggle_json_is_named(no_credentials, tmp_path, monkeypatch):
    folder = tmp_path / "kaggle"
    folder.mkdir()
    (folder / "kaggle.json").write_text(json.dumps({"username": "x"}))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(folder))
    with pytest.raises(Exception, match=f"the Kaggle credentials cannot be read: .*{folder}.*missing 'key'"):
        download_dataset(tmp_path / "data", echo=lambda _: None)


@pytest.mark.parametrize("error, message", [
    (exceptions.UnauthenticatedError("401 Unauthorized"), "Kaggle did not accept the credentials (401 Unauthorized)"),
    (exceptions.KaggleApiHTTPError("403 Forbidden"), "Kaggle refused the download: 403 Forbidden"),
    (ConnectionError("Name or service not known"), "could not download from Kaggle (ConnectionError: Name or "
                                                   "service not known); check the network connection"),
])
def test_refusals_and_network_errors_say_what_happened(credentials, monkeypatch, tmp_path, error, message):
    fake_kaggle(monkeypatch, [], error)
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        download_dataset(tmp_path / "data", echo=lambda _: None)


def test_a_folder_with_other_files_is_refused(credentials, monkeypatch, tmp_path):
    calls = []
    fake_kaggle(monkeypatch, calls)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mine already holds other files; choose an empty or new folder"):
        download_dataset(tmp_path / "mine", echo=lambda _: None)
    assert calls == [] and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_the_default_is_kagglehubs_own_cache(credentials, monkeypatch, tmp_path):
    calls = []
    fake_kaggle(monkeypatch, calls, cache=tmp_path / "cache")
    root = download_dataset(echo=lambda _: None)
    assert calls == [{"handle": DATASET, "output_dir": None}]
    assert root == tmp_path / "cache" / "COVID-19_Radiography_Dataset"
