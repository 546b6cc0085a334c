"""A DICOMweb server (a PACS such as Orthanc, DCM4CHEE, a cloud DICOM store) through dicomweb-client:
a study retrieved with WADO-RS into a folder, a DICOM object stored with STOW-RS.

Every failure is one :class:`DicomWebError` line naming the server's URL and, where the server
answered, the HTTP status: unreachable, refusing (401, 403), unknown study (404), or a store that the
server answered without the object among its stored instances.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError, OutputError

#: Seconds to wait for the server to connect and for each answer (dicomweb-client passes it to requests).
TIMEOUT_S = 60.0
#: Tries of a request that fails to connect or is answered 408, 429, 503 or 504, and the back-off unit (ms).
RETRIES = 3
RETRY_WAIT_MS = 250


class DicomWebError(InputError):
    """The DICOMweb server could not be reached or refused a request; the message names its URL."""


class DicomWebStoreError(OutputError):
    """The DICOMweb server did not store what was sent (STOW-RS); the message names its URL."""


def _http_status(error: Exception) -> str:
    response = getattr(error, "response", None)
    if response is None:
        return ""
    return f"HTTP {response.status_code}{' ' + response.reason if response.reason else ''}"


class DicomWebServer:
    """One server, by its DICOMweb root URL (e.g. ``http://localhost:8042/dicom-web``)."""

    def __init__(self, url: str, timeout: float = TIMEOUT_S) -> None:
        from dicomweb_client import DICOMwebClient

        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise DicomWebError(f"{url}: not a DICOMweb URL (give http://HOST:PORT/PATH, e.g. "
                                f"http://localhost:8042/dicom-web)")
        self.client = DICOMwebClient(self.url, timeout=timeout)
        # dicomweb-client tries a failing request 5 times over 30 s; 3 tries over 1.5 s say "unreachable" sooner
        self.client.set_http_retry_params(max_attempts=RETRIES, wait_exponential_multiplier=RETRY_WAIT_MS)

    def _failure(self, error: Exception, what: str) -> str:
        """One line: the URL, what failed, and the HTTP status or the connection's problem."""
        import requests

        status = _http_status(error)
        if status:
            return f"{self.url}: the server answered {status} when {what}"
        if isinstance(error, requests.exceptions.Timeout):
            return f"{self.url}: no answer within {TIMEOUT_S:g} s when {what}"
        if isinstance(error, requests.exceptions.ConnectionError):
            reason = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(error))
            return (f"{self.url}: cannot reach the server ({reason.group(1).strip() if reason else 'no connection'}) "
                    f"when {what}")
        return f"{self.url}: {type(error).__name__} when {what} ({error})"

    def retrieve_study(self, study_uid: str, folder: Path) -> int:
        """WADO-RS: write every instance of the study into ``folder`` (one file each); returns the count."""
        import requests

        what = f"retrieving study {study_uid} (WADO-RS)"
        count = 0
        try:
            for dataset in self.client.iter_study(study_uid):
                dataset.save_as(Path(folder) / f"{count:06d}.dcm", enforce_file_format=True)
                count += 1
        except requests.exceptions.RequestException as error:
            raise DicomWebError(self._failure(error, what)) from None
        if count == 0:
            raise DicomWebError(f"{self.url}: study {study_uid} has no instances")
        return count

    def store(self, dataset) -> str:
        """STOW-RS: store ``dataset``; returns its WADO-RS URL on this server. Refuses a reply that does not list the
        instance among the stored ones (a server may answer 200 and store nothing)."""
        import requests

        uid = str(dataset.SOPInstanceUID)
        what = f"storing segmentation {uid} (STOW-RS)"
        try:
            reply = self.client.store_instances([dataset], study_instance_uid=str(dataset.StudyInstanceUID))
        except requests.exceptions.RequestException as error:
            raise DicomWebStoreError(self._failure(error, what)) from None
        failed = [item for item in getattr(reply, "FailedSOPSequence", []) or []
                  if str(getattr(item, "ReferencedSOPInstanceUID", "")) == uid]
        if failed:
            reason = getattr(failed[0], "FailureReason", None)
            raise DicomWebStoreError(f"{self.url}: the server refused {what}"
                                     f"{f' (FailureReason 0x{int(reason):04X})' if reason is not None else ''}")
        stored = next((item for item in getattr(reply, "ReferencedSOPSequence", []) or []
                       if str(getattr(item, "ReferencedSOPInstanceUID", "")) == uid), None)
        if stored is None:
            raise DicomWebStoreError(f"{self.url}: the server did not store it: {what} was answered without the "
                                     f"instance among the stored ones")
        return (f"{self.url}/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}/instances/"
                f"{uid}")
