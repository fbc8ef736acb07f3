"""The Storage SCP: C-ECHO and C-STORE of chest radiographs from modalities and PACS.

Handlers never raise: every failure becomes a DICOM status (PS3.4 Annex B.2.3 and GG):
0xC210 cannot understand (undecodable dataset or bad UIDs), 0xA700 out of resources
(disk below its floor), 0xC211 unexpected failure. An instance is on disk, fsynced, before
0x0000 is answered. Associations from calling AE titles or hosts not on the allow-lists
are rejected (A-ASSOCIATE-RJ, rejected-permanent, service-user; PS3.8 9.3.4).
"""

from __future__ import annotations

import logging
import ssl
import zlib
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.uid import (
    JPEG2000,
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select

from services.common.deflate import inflated_size
from services.common.store import Store, utcnow
from services.dicom.metrics import ASSOCIATIONS, INSTANCES_RECEIVED, INSTANCES_REJECTED
from services.dicom.records import DicomInstance, DicomStudy
from services.dicom.settings import DicomSettings
from services.dicom.storage import BadUidError, OutOfSpaceError, instance_path, write_instance

log = logging.getLogger(__name__)

STORAGE_SOP_CLASSES = (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                       DigitalXRayImageStorageForProcessing)
TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                     DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, JPEGBaseline8Bit,
                     JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
                     JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless)

SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND, UNEXPECTED = 0x0000, 0xA700, 0xC210, 0xC211


class StorageSCP:
    def __init__(self, settings: DicomSettings, store: Store, storage_root: Path) -> None:
        self.settings = settings
        self.store = store
        self.root = storage_root
        self.server: ThreadedAssociationServer | None = None

    def application_entity(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(Verification)
        ae.require_calling_aet = list(self.settings.allowed_calling_aets)
        ae.maximum_associations = self.settings.max_associations
        ae.acse_timeout = self.settings.acse_timeout_s
        ae.dimse_timeout = self.settings.dimse_timeout_s
        ae.network_timeout = self.settings.network_timeout_s
        return ae

    def tls_context(self) -> ssl.SSLContext | None:
        if self.settings.tls_certificate is None or self.settings.tls_private_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.settings.tls_certificate, self.settings.tls_private_key)
        if self.settings.tls_ca_certificates is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.settings.tls_ca_certificates)
        return context

    def start(self) -> ThreadedAssociationServer:
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self.handle_store), (evt.EVT_REQUESTED, self.screen),
            (evt.EVT_ACCEPTED, self.count_association("accepted")),
            (evt.EVT_REJECTED, self.count_association("rejected"))]
        tls = self.tls_context()
        server = self.application_entity().start_server(
            (self.settings.host, self.settings.port), block=False, evt_handlers=handlers,
            ssl_context=tls)
        assert server is not None  # non-blocking start returns the server
        self.server = server
        log.info("DICOM SCP %s listening on %s:%d%s", self.settings.ae_title,
                 self.settings.host, self.settings.port, " (TLS)" if tls else "")
        return server

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    @staticmethod
    def count_association(outcome: str) -> Any:
        def handler(event: evt.Event) -> None:
            ASSOCIATIONS.labels(outcome).inc()
        return handler

    def screen(self, event: evt.Event) -> None:
        """Reject an association from a host not on the allow-list (no reason given, PS3.8),
        or one past its host's share of the association slots (rejected-transient, local
        limit exceeded: it may try again once one of its own is released)."""
        allowed = self.settings.allowed_hosts
        address = event.assoc.requestor.address
        if allowed and address not in allowed:
            log.warning("association from a host not on the allow-list rejected")
            event.assoc.acse.send_reject(0x01, 0x01, 0x01)
            event.assoc.kill()  # returns once the A-ASSOCIATE-RJ has left
            return
        if self.associations_from(address, event.assoc) >= self.settings.max_associations_per_peer:
            log.warning("association rejected: the peer holds its share of association slots")
            event.assoc.acse.send_reject(0x02, 0x03, 0x02)
            event.assoc.kill()

    def associations_from(self, address: str, this: Any) -> int:
        """Associations the host at ``address`` holds now, besides ``this`` one.

        Only established ones count: a TCP health probe (a kubelet's, a load balancer's)
        connects and closes without associating, yet its thread lives on until the ACSE
        timeout; counted, a few probes would lock out every modality behind the same address.
        """
        held = self.server.active_associations if self.server is not None else []
        return sum(1 for a in held if a is not this and a.requestor.address == address
                   and a.is_alive() and a.is_established)

    def handle_store(self, event: evt.Event) -> int:
        limit = self.settings.max_instance_bytes
        request = cast(C_STORE, event.request)
        with cast(BytesIO, request.DataSet).getbuffer() as encoded:
            size = dataset_size(encoded, UID(event.context.transfer_syntax), limit)
        if size > limit:
            INSTANCES_REJECTED.labels("too_large").inc()
            log.warning("C-STORE refused: the dataset exceeds the size limit")
            return OUT_OF_RESOURCES
        try:
            ds = event.dataset
            meta = event.file_meta
            uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            path = instance_path(self.root, *uids)
            check_identity(ds, request.AffectedSOPClassUID)
            check_pixel_data(ds, meta.TransferSyntaxUID)
            data = event.encoded_dataset()
        except BadUidError:
            INSTANCES_REJECTED.labels("bad_uid").inc()
            return CANNOT_UNDERSTAND
        except Exception:  # undecodable: truncated, malformed, missing UIDs
            INSTANCES_REJECTED.labels("undecodable").inc()
            log.warning("C-STORE of an undecodable dataset refused")
            return CANNOT_UNDERSTAND
        if self.stored_elsewhere(str(ds.SOPInstanceUID), path):
            INSTANCES_REJECTED.labels("uid_conflict").inc()
            log.warning("C-STORE refused: this SOP Instance UID is stored under another "
                        "study or series")
            return CANNOT_UNDERSTAND
        try:
            new = write_instance(path, data, self.settings.min_free_bytes)
        except (OutOfSpaceError, OSError):
            INSTANCES_REJECTED.labels("out_of_resources").inc()
            log.error("C-STORE refused: out of storage")
            return OUT_OF_RESOURCES
        try:
            self.record(ds, meta, path, event.assoc.requestor.ae_title, new)
        except Exception:
            if new:  # no file on disk that nothing records
                path.unlink(missing_ok=True)
            INSTANCES_REJECTED.labels("unexpected").inc()
            log.exception("C-STORE: could not record the instance")
            return UNEXPECTED
        INSTANCES_RECEIVED.labels("new" if new else "duplicate").inc()
        return SUCCESS

    def stored_elsewhere(self, sop_instance_uid: str, path: Path) -> bool:
        """Whether this instance is already stored at another path (other study or series):
        one SOP Instance UID names one instance, so the second copy would be an orphan."""
        with self.store.session() as session:
            known = session.get(DicomInstance, sop_instance_uid)
            return known is not None and known.path != str(path)

    def record(self, ds: Any, meta: Any, path: Path, calling_aet: str, new: bool) -> None:
        """Track the instance and its study; a duplicate only refreshes the study's clock."""
        now = utcnow()
        study_uid = str(ds.StudyInstanceUID)
        with self.store.session() as session:
            if session.get(DicomInstance, str(ds.SOPInstanceUID)) is None:
                session.add(DicomInstance(
                    sop_instance_uid=str(ds.SOPInstanceUID), study_instance_uid=study_uid,
                    series_instance_uid=str(ds.SeriesInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    transfer_syntax_uid=str(meta.TransferSyntaxUID), path=str(path),
                    modality=_text(ds, "Modality"), body_part=_text(ds, "BodyPartExamined"),
                    view_position=_text(ds, "ViewPosition"),
                    image_laterality=_text(ds, "ImageLaterality"),
                    calling_aet=str(calling_aet).strip()[:16], received_at=now))
                new = True
            study = session.scalars(select(DicomStudy).where(
                DicomStudy.study_instance_uid == study_uid).with_for_update()).first()
            if study is None:
                session.add(DicomStudy(study_instance_uid=study_uid, state="receiving",
                                       instances=1, first_received_at=now,
                                       last_received_at=now))
            else:
                study.last_received_at = now
                study.instances += int(new)


def dataset_size(encoded: memoryview, transfer_syntax: UID, limit: int) -> int:
    """Bytes the dataset takes decoded; a deflated one is counted by ``inflated_size``
    (pynetdicom would inflate it whole, without a limit: a bomb)."""
    if not transfer_syntax.is_deflated:
        return encoded.nbytes
    try:
        return inflated_size(encoded, limit)
    except zlib.error:
        return 0  # corrupt: left to the decoder, which refuses it as undecodable


def check_identity(ds: Dataset, affected_sop_class: UID | None) -> None:
    """Raise unless the dataset names its SOP class, and the same one as the request."""
    if str(ds.get("SOPClassUID", "")).strip("\0 ") != str(affected_sop_class).strip("\0 "):
        raise ValueError("SOP Class UID missing or unlike the request's")


def check_pixel_data(ds: Any, transfer_syntax: UID) -> None:
    """Raise if the image's pixel data is missing or shorter than its header declares.

    A truncated transfer still parses (the last element just ends early), so the length is
    checked against Rows x Columns x Samples x Bits Allocated x Frames (PS3.5 8.1.1), and an
    encapsulated value must hold complete items (PS3.5 A.4).
    """
    if "PixelData" not in ds:
        raise ValueError("no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if UID(transfer_syntax).is_encapsulated:
        fragments = list(generate_fragments(ds.PixelData))
        if not fragments or sum(len(f) for f in fragments) == 0:
            raise ValueError("empty encapsulated pixel data")
        return
    expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                * int(ds.BitsAllocated) * frames + 7) // 8
    if len(ds.PixelData) < expected:
        raise ValueError("pixel data shorter than declared")


def _text(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value).strip()[:64] if value not in (None, "") else None
