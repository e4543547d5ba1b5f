"""What a device (or the gateway next to it) runs to push its readings into its node's data server.

Get a write token once, on a machine with the CLI: ``flops data token --node node-a1 > grant.json``
(or ``POST /api/flops/data-tokens``); copy grant.json to the device. Then:
``python device_upload.py grant.json readings.npz sensors``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from flops_utils.data_uploader import DataUploader


def main(grant_file: str, data_file: str, tag: str) -> None:
    grant = json.loads(Path(grant_file).read_text())
    with np.load(data_file) as arrays:
        x, y = arrays["x"], arrays["y"]
    with DataUploader(grant["data_server"], grant["token"], grant["ca_pem"]) as uploader:
        rows = uploader.push(tag, x, y)
        print(f"stored {rows} rows under {tag}; the node now holds {uploader.tags()[tag].rows}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
