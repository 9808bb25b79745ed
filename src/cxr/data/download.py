"""`cxr download`: the COVID-19 Radiography Database from Kaggle, with the user's own credentials.

Kaggle's own client, kagglehub, does the download (resumable, cached, checked); this module checks the
credentials first so that a missing token is one clear message, not an HTTP error, and says what to run next.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path

from cxr.errors import UserError

__all__ = ["DATASET", "DATASET_FOLDER", "dataset_root", "download_dataset"]

DATASET = "tawsifurrahman/covid19-radiography-database"
DATASET_FOLDER = "COVID-19_Radiography_Dataset"  # the folder inside the Kaggle archive
CREDENTIALS_HELP = ("Kaggle credentials are needed to download the dataset: create an API token at "
                    "https://www.kaggle.com/settings (API, Create New Token) and either save it as "
                    "~/.kaggle/kaggle.json or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN); "
                    "then run cxr download again")


def dataset_root(path: str | os.PathLike) -> Path:
    """The folder to give `cxr train --data`: the archive's COVID-19_Radiography_Dataset folder when it is
    there, else the downloaded folder itself.
    """
    path = Path(path)
    return path / DATASET_FOLDER if (path / DATASET_FOLDER).is_dir() else path


def download_dataset(out: str | os.PathLike | None = None, echo: Callable[[str], None] = print) -> Path:
    """Download the dataset (about 0.8 GB) and return the folder to train on.

    Args:
        out: the folder to download into (made if missing; one holding other files is refused); default:
            kagglehub's cache (~/.cache/kagglehub), where a second call finds it again without downloading.
        echo: where progress and the next command go.

    Returns:
        The dataset folder (its class folders inside).

    Raises:
        UserError: kagglehub is not installed, the credentials are missing or refused, or Kaggle cannot be
            reached.
        FileExistsError: `out` holds other files.
    """
    try:
        import kagglehub
        from kagglehub import config, exceptions
    except ImportError:
        raise UserError("cxr download uses Kaggle's client: pip install 'cxr[download]' (or pip install kagglehub)") \
            from None
    try:
        credentials = config.get_kaggle_credentials()
    except ValueError as error:  # an unreadable ~/.kaggle/kaggle.json
        raise UserError(f"the Kaggle credentials cannot be read: {error}") from None
    if credentials is None:
        raise UserError(CREDENTIALS_HELP)
    if out is not None:
        out = Path(out)
        if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / DATASET_FOLDER).is_dir()):
            raise FileExistsError(f"{out} already holds other files; choose an empty or new folder with --out")
    echo(f"downloading {DATASET} from Kaggle (about 0.8 GB) into {out or 'the kagglehub cache'}...")
    try:
        path = kagglehub.dataset_download(DATASET, output_dir=None if out is None else str(out))
    except (exceptions.UnauthenticatedError, exceptions.CredentialError) as error:
        raise UserError(f"Kaggle did not accept the credentials ({error}). {CREDENTIALS_HELP}") from None
    except exceptions.KaggleApiHTTPError as error:
        raise UserError(f"Kaggle refused the download: {error}") from None
    except OSError as error:  # requests' connection errors are OSErrors too
        raise UserError(f"could not download from Kaggle ({type(error).__name__}: {error}); check the network "
                        "connection and run cxr download again (a partial download is resumed)") from None
    root = dataset_root(path)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    echo(f"the dataset is in {root} ({', '.join(classes) or 'no class folders found'})")
    echo(f"next: cxr train --data {shlex.quote(str(root))}")
    return root
