"""The shared object store: the content-addressed cache's bytes in an S3-compatible bucket.

Why: a CI runner or a fresh clone has the lock but neither the videos nor ``state/``; without a
shared copy of the bytes it would download them again from the provider (while the provider keeps
them, about 2 days) or pay for them again. Here every object the local cache commits is also kept
under ``prefix/ab/cdef…`` (the local layout) in a bucket the team shares, and the local cache
pulls from it what it lacks (``objects.ObjectCache`` sits in front and verifies every byte).

- Endpoint and credentials come only from the standard AWS environment, through boto3's own
  chain (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
  ``AWS_DEFAULT_REGION``, ``AWS_PROFILE`` and ``~/.aws``, instance roles), so AWS S3, MinIO,
  Cloudflare R2 and GCS's interoperability endpoint work unchanged. Nothing about them is read
  from or written to reconcile.yaml or the state.
- Writes are create-only (``If-None-Match: *``): the key is the content hash, so an object
  already there (412) is success, and nothing in the bucket is ever overwritten. A large object
  goes up in parts of ``PART`` bytes, each read from the file as it is sent; its hash is checked
  before the upload is completed, so wrong bytes are never published under a content key.
- Reads stream; the caller hashes them on the way in.
- Answers to "is it there?" are remembered for the process (a negative one for
  ``NEGATIVE_TTL`` seconds), and many questions at once are answered by listing the two-hex
  prefixes they fall in, so a plan of 10,000 specs costs at most 256 listings, once.

botocore's errors are mapped here, once, to ``StoreError``: nothing above sees a boto exception.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .errors import ReconcileError

PART = 8 * 1024 * 1024  # multipart part size: S3's minimum is 5 MiB; 10,000 parts is 80 GB
READ_CHUNK = 1024 * 1024
NEGATIVE_TTL = 60.0  # seconds an "absent" answer is trusted before the bucket is asked again
LIST_ABOVE = 16  # more unknown objects than this at once: list their prefixes instead of HEADs
WORKERS = 8  # concurrent listings or HEADs
HEX = frozenset("0123456789abcdef")


class StoreError(ReconcileError):
    """The shared object store could not be reached, or answered with an error. Not a
    StateError: a bucket outage is no reason for the daemon to think its state/ is gone."""


def parse(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix``); the URL is checked by
    ``config.objects_url`` already."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def _is_sha(text: str) -> bool:
    return len(text) == 64 and set(text) <= HEX


class S3Objects:
    """Objects named by sha256 in one bucket under one prefix, create-only."""

    def __init__(self, url: str, *, client: Any = None) -> None:
        self.url = url
        self.bucket, self.prefix = parse(url)
        self._client = client
        self._lock = threading.Lock()
        # sha256 -> ETag when the bucket holds it, or the monotonic time it was found absent
        self._known: dict[str, str | float] = {}

    @property
    def client(self) -> Any:
        """The boto3 client, made on first use: a run that needs nothing from the bucket never
        pays for importing boto3 (about a third of a second)."""
        with self._lock:
            if self._client is None:
                self._client = _make_client()
                self._check_bucket()
            return self._client

    def _drop_client(self) -> None:
        """Forget a client that could not use the bucket, closing its pool (a daemon retries:
        each retry must not leave a pool of connections behind)."""
        client, self._client = self._client, None
        with contextlib.suppress(Exception):
            client.close()

    def _check_bucket(self) -> None:
        """A missing bucket must never read as "no object is shared": HEAD of an object cannot
        tell the two apart, and a plan would then offer to pay for every video again."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            status = _status(exc)
            if status == 404:
                self._drop_client()
                raise StoreError(f"{self.url}: no such bucket (check objects: in reconcile.yaml "
                                 "or RECONCILE_OBJECTS, and AWS_ENDPOINT_URL)") from None  # fmt: skip
            if status is None:
                self._drop_client()
                raise self._error("reach", None, exc) from None
            # 403 and the like: some keys may read objects without listing the bucket.

    def close(self) -> None:
        """Close the client's connections (a client never made costs nothing)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def key(self, sha256: str) -> str:
        name = f"{sha256[:2]}/{sha256[2:]}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def where(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{self.key(sha256)}"

    # -- is it there? ------------------------------------------------------------------------------

    def etag(self, sha256: str) -> str | None:
        """The object's ETag when the bucket holds it, else None (asked once per process, a
        negative answer again after ``NEGATIVE_TTL``)."""
        return self.etags([sha256]).get(sha256)

    def etags(self, shas: Iterable[str]) -> dict[str, str]:
        """ETags of those of ``shas`` the bucket holds: HEADs for a few, listings for many."""
        wanted = set(shas)
        unknown = [s for s in wanted if not self._remembered(s)]
        if len(unknown) > LIST_ABOVE:
            prefixes = sorted({s[:2] for s in unknown})
            with ThreadPoolExecutor(WORKERS) as pool:
                for listed in pool.map(self._list_prefix, prefixes):
                    for sha, _size, etag in listed:
                        self._remember(sha, etag)
            for sha in unknown:
                if not self._remembered(sha):
                    self._remember(sha, None)
        elif unknown:
            with ThreadPoolExecutor(min(WORKERS, len(unknown))) as pool:
                for sha, found in zip(unknown, pool.map(self._head, unknown), strict=True):
                    self._remember(sha, found)
        with self._lock:
            return {s: e for s in wanted if isinstance(e := self._known.get(s), str)}

    def _remembered(self, sha256: str) -> bool:
        with self._lock:
            answer = self._known.get(sha256)
        if isinstance(answer, float):
            return time.monotonic() - answer < NEGATIVE_TTL
        return answer is not None

    def _remember(self, sha256: str, etag: str | None) -> None:
        with self._lock:
            self._known[sha256] = etag if etag is not None else time.monotonic()

    def _head(self, sha256: str) -> str | None:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except Exception as exc:
            if _status(exc) == 404:
                return None
            raise self._error("look up", sha256, exc) from None
        return str(answer["ETag"]).strip('"')

    def _list_prefix(self, two: str) -> list[tuple[str, int, str]]:
        return list(self._listing(f"{self.prefix}/{two}/" if self.prefix else f"{two}/"))

    def listing(self) -> Iterator[tuple[str, int]]:
        """Every object under the prefix named like a sha256: (sha256, size). Anything else
        there (another tool's files) is not ours and never listed."""
        for sha, size, etag in self._listing(f"{self.prefix}/" if self.prefix else ""):
            self._remember(sha, etag)
            yield sha, size

    def _listing(self, start: str) -> Iterator[tuple[str, int, str]]:
        base = len(f"{self.prefix}/") if self.prefix else 0
        try:
            pages = self.client.get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents", []):
                    two, _, rest = str(item["Key"])[base:].partition("/")
                    if len(two) == 2 and _is_sha(two + rest):
                        yield two + rest, int(item["Size"]), str(item["ETag"]).strip('"')
        except Exception as exc:
            raise self._error("list", None, exc) from None

    # -- bytes in and out --------------------------------------------------------------------------

    def read(self, sha256: str, sink: Callable[[bytes], object]) -> str | None:
        """Stream the object into ``sink``; its ETag, or None when the bucket does not hold it.
        The caller hashes what it got: nothing here vouches for the bytes."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))
            for chunk in answer["Body"].iter_chunks(READ_CHUNK):
                sink(chunk)
        except Exception as exc:
            if _status(exc) == 404:
                self._remember(sha256, None)
                return None
            raise self._error("download", sha256, exc) from None
        etag = str(answer["ETag"]).strip('"')
        self._remember(sha256, etag)
        return etag

    def write(self, sha256: str, path: Path) -> bool:
        """Upload ``path`` as the object ``sha256``, create-only; True when this call created it,
        False when the bucket held the key already (left alone, whatever it holds). The file is
        hashed as it goes up: bytes that do not match the name are never published."""
        size = path.stat().st_size
        try:
            with path.open("rb") as src:
                if size <= PART:
                    created = self._put(sha256, src.read())
                else:
                    created = self._put_parts(sha256, src, size)
        except StoreError:
            raise
        except Exception as exc:
            if _status(exc) == 412:
                created = False  # already there: the key is the content hash
            else:
                raise self._error("upload", sha256, exc) from None
        if created:
            self._forget(sha256)  # its ETag is learnt when next asked
        return created

    def _put(self, sha256: str, body: bytes) -> bool:
        self._check(sha256, hashlib.sha256(body))
        self.client.put_object(Bucket=self.bucket, Key=self.key(sha256), Body=body,
                               ContentType="video/mp4", IfNoneMatch="*")  # fmt: skip
        return True

    def _put_parts(self, sha256: str, src: Any, size: int) -> bool:
        """Multipart: each part streamed from the file (``_Window``); completed only once the
        hash matches."""
        key, client = self.key(sha256), self.client
        upload = client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType="video/mp4"
        )["UploadId"]
        try:
            digest = hashlib.sha256()
            parts: list[dict[str, Any]] = []
            for start in range(0, size, PART):
                body = _Window(src.fileno(), start, min(PART, size - start))
                while chunk := body.read(READ_CHUNK):
                    digest.update(chunk)
                body.seek(0)
                number = len(parts) + 1
                answer = client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload,
                                            PartNumber=number, Body=body)  # fmt: skip
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
            self._check(sha256, digest)
            client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload, IfNoneMatch="*",
                MultipartUpload={"Parts": parts},
            )  # fmt: skip
        except BaseException:
            # The upload's own error is the one worth showing; an abort that fails leaves parts
            # the bucket's lifecycle rule for incomplete uploads removes.
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            raise
        return True

    def _check(self, sha256: str, digest: Any) -> None:
        if digest.hexdigest() != sha256:
            raise StoreError(f"not uploaded to {self.where(sha256)}: the local copy's bytes "
                             "no longer match its name")  # fmt: skip

    def delete(self, sha256: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))
        except Exception as exc:
            raise self._error("delete", sha256, exc) from None
        self._forget(sha256)

    def _forget(self, sha256: str) -> None:
        with self._lock:
            self._known.pop(sha256, None)

    def _error(self, doing: str, sha256: str | None, exc: Exception) -> StoreError:
        where = self.where(sha256) if sha256 else self.url
        return StoreError(f"could not {doing} {where}: {_describe(exc)}")


def _make_client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise StoreError(
            "a shared object store (objects: s3://…) needs boto3: pip install 'reconciler[s3]'"
        ) from None
    # Our own sha256 checks every byte both ways; botocore's newer default checksums (aws-chunked
    # CRC trailers) are refused by some S3-compatible services, so they are sent only where an
    # operation requires them, unless the AWS environment says otherwise.
    calculation = os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION") or "when_required"
    validation = os.environ.get("AWS_RESPONSE_CHECKSUM_VALIDATION") or "when_required"
    config = Config(
        max_pool_connections=32,
        request_checksum_calculation=calculation,
        response_checksum_validation=validation,
    )
    try:
        return boto3.session.Session().client("s3", config=config)
    except Exception as exc:
        raise StoreError(f"the AWS environment is not usable for S3: {_describe(exc)}") from None


def _status(exc: Exception) -> int | None:
    """The HTTP status of a botocore ClientError (None for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = response.get("Error", {}).get("Code")
    if code in ("NoSuchKey", "404", "NotFound"):
        return 404
    if code in ("PreconditionFailed", "412"):
        return 412
    return int(status) if status else None


def _describe(exc: Exception) -> str:
    """One line for a boto error: its code and message, or its text (never a traceback)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("Error"):
        error = response["Error"]
        return f"{error.get('Code', '?')}: {error.get('Message') or 'no message'}"
    return str(exc) or type(exc).__name__


class _Window:
    """One part of an open file as a seekable file object. botocore reads a body like this in
    small pieces (to sign it, to send it) and seeks back to resend it, so a part never sits in
    memory whole: as ``bytes`` it did, with botocore's copies beside it (8 MiB each, and glibc
    kept them), which made an upload's peak memory grow with the video."""

    def __init__(self, fd: int, start: int, size: int) -> None:
        self._fd, self._start, self._size, self._pos = fd, start, size, 0

    def read(self, amount: int | None = -1) -> bytes:
        left = self._size - self._pos
        amount = left if amount is None or amount < 0 else min(amount, left)
        data = os.pread(self._fd, amount, self._start + self._pos) if amount > 0 else b""
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, min(base + offset, self._size))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._size
