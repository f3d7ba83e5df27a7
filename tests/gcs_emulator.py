"""The Cloud Storage server behind the ``gcs`` test fixture: gcp-storage-emulator (the JSON API,
in memory) with one gap filled.

    python tests/gcs_emulator.py PORT BUCKET

The gap: the emulator's media downloads carry no ``x-goog-generation`` header, which the real
service always sends. Tensorstore needs it: OCDBT (where Orbax keeps arrays) rewrites its manifest
on condition that it is still the generation last read, and without one that write fails with
"Malformed StorageGeneration" (a second checkpoint in a bucket never completes).
"""

from __future__ import annotations

import sys

from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):  # the emulator's handler signature
    _download(request, response, storage, *args, **kwargs)
    if response.status.value < 300:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = obj["generation"]
        response["x-goog-metageneration"] = obj["metageneration"]


objects.download = download  # the JSON API's GET ...?alt=media (objects.get) calls it by this name

if __name__ == "__main__":
    port, bucket = sys.argv[1:]
    main(["start", "--host", "localhost", "--port", port, "--default-bucket", bucket, "--in-memory", "-q"])
