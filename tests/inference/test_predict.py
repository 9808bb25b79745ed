from pathlib import Path

import numpy as np
import pandas as pd
from helpers import pacs_export

from cxr.cli import main
from cxr.inference.engines import model_classes
from cxr.inference.predict import find_images, predict_files


def test_find_images_expands_folders_recursively_and_keeps_given_files(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a.png", "d/sub/b.JPG", "d/notes.txt", "d/.hidden.png", "c.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    found = find_images([tmp_path / "d", tmp_path / "c.jpeg", tmp_path / "missing.png"])
    assert [p.relative_to(tmp_path).as_posix() for p in found.files] == [
        "d/a.png", "d/sub/b.JPG", "c.jpeg", "missing.png"]
    assert found.looked_at == 3 and [p.name for p in found.not_images] == ["notes.txt"]


def test_files_without_an_extension_are_recognised_by_their_content(tmp_path):
    found = find_images([pacs_export(tmp_path)])
    assert [p.name for p in found.files] == ["IM0001", "IM0002", "snapshot"]  # sorted; hidden ones left out
    assert found.looked_at == 5 and sorted(p.name for p in found.not_images) == ["README", "index.xlsx"]
    assert found.summary() == ("looked at 5 file(s) in the given folder(s): 3 image(s); 2 not image(s) left out "
                               "(README, index.xlsx)")


def test_predictions_for_files_and_folders_with_unreadable_files_reported(tiny_run, phantoms, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    frame = predict_files(tiny_run / "model.keras", [phantoms / "COVID" / "images", bad, tmp_path / "gone.png"])
    classes = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert list(frame.columns) == ["file", "predicted", "probability"] + [f"p_{c}" for c in classes] + ["error"]
    assert len(frame) == 12 + 2
    good = frame[frame["error"] == ""]
    assert len(good) == 12 and set(good["predicted"]) <= set(classes)
    probabilities = good[[f"p_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(good["probability"], probabilities.max(axis=1))
    errors = frame.set_index("file").loc[[str(bad), str(tmp_path / "gone.png")], "error"].tolist()
    assert errors[0] == "PNG cannot be decoded (truncated or corrupt)" and errors[1].startswith("unreadable")


def test_predictions_match_the_evaluation_of_the_same_images(tiny_run, phantoms):
    evaluated = pd.read_csv(tiny_run / "eval" / "predictions_test.csv")
    files = [phantoms / f for f in evaluated["file"]]
    predicted = predict_files(tiny_run / "model.keras", files)
    np.testing.assert_allclose(predicted["p_COVID"], evaluated["p_COVID"], atol=1e-5)
    assert (predicted["predicted"].to_numpy() == evaluated["predicted_label"].to_numpy()).all()


def test_class_names_come_from_the_run_or_are_generic(tiny_run, tmp_path):
    assert model_classes(tiny_run / "model.keras", 4) == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert model_classes(tmp_path / "model.keras", 3) == ["class_0", "class_1", "class_2"]


def test_cli_prints_a_table_writes_a_csv_and_never_overwrites(tiny_run, phantoms, tmp_path, capsys):
    out = tmp_path / "p.csv"
    image = phantoms / "Normal" / "images" / "Normal-1.png"
    assert main(["predict", str(tiny_run), str(image), str(tmp_path / "gone.png"), "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Normal-1.png" in printed and "(unreadable)" in printed and "gone.png: unreadable" in printed
    assert len(pd.read_csv(out)) == 2
    assert main(["predict", str(tiny_run), str(image), "--csv", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_predicts_a_folder_of_extensionless_dicom_files(tiny_run, tmp_path, capsys):
    folder = pacs_export(tmp_path)
    assert main(["predict", str(tiny_run), str(folder), "--csv", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert "looked at 5 file(s) in the given folder(s): 3 image(s); 2 not image(s) left out" in err
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert [Path(f).name for f in table["file"]] == ["IM0001", "IM0002", "snapshot"] and (table["error"] == "").all()
    # A MONOCHROME1 file is inverted on reading, so it gets the same prediction as its MONOCHROME2 twin.
    np.testing.assert_allclose(table.loc[0, "p_COVID"], table.loc[1, "p_COVID"], atol=1e-6)


def test_cli_says_what_it_looked_at_when_a_folder_has_no_images(tiny_run, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("no images here")
    assert main(["predict", str(tiny_run), str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "looked at 1 file(s) in the given folder(s): 0 image(s); 1 not image(s) left out (notes.txt)" in err
    assert "no image files found" in err


def test_cli_exit_code_is_1_when_nothing_could_be_read(tiny_run, tmp_path, capsys):
    (tmp_path / "empty.png").write_bytes(b"")
    assert main(["predict", str(tiny_run / "model.keras"), str(tmp_path / "empty.png")]) == 1
    assert "empty file" in capsys.readouterr().out
