"""URIs -> (pyarrow filesystem, path): one place that knows local paths and object storage.

Ray Train/Tune take the pair as `RunConfig(storage_path=path, storage_filesystem=fs)`; the data
reader and the checkpoint loader use the same pair, so an `s3://` URI works wherever a path does.

S3: the endpoint is the caller's (config `storage.s3_endpoint`, `--s3-endpoint`), else
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS itself. Credentials come only from AWS's own chain
(environment, profile, instance role): a filesystem never holds them, so one pickled to Ray's
workers carries none, and nothing here prints them. Every S3 request is retried by the AWS SDK on
throttling, timeouts, 5xx and refused connections (jittered backoff doubling up to 20 s, about two
minutes in all); whole-file operations here add a few retries of their own on top.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import pyarrow.fs as pafs

from lstmclf.errors import StorageError

T = TypeVar("T")
log = logging.getLogger(__name__)

S3_ATTEMPTS = 12  # per S3 request: waits of <1, <2, <4 ... s, capped at 20 s: ~2-3 min of outage ride through
OP_ATTEMPTS = 3  # per whole-file operation, on top of the SDK's per-request retries
# Error text of pyarrow (AWS SDK) and botocore that marks a failure worth retrying.
TRANSIENT = (
    "NETWORK_CONNECTION",
    "SLOW_DOWN",
    "SlowDown",
    "Throttl",
    "THROTTLING",
    "SERVICE_UNAVAILABLE",
    "ServiceUnavailable",
    "INTERNAL_FAILURE",
    "InternalError",
    "RequestTimeout",
    "REQUEST_TIMEOUT",
    "Timeout",
    "timed out",
    "Connection refused",
    "Connection reset",
    "Broken pipe",
    "curlCode",
    "HTTP status 500",
    "HTTP status 502",
    "HTTP status 503",
    "HTTP status 504",
)
NO_CREDENTIALS = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an instance role"


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def endpoint_url(endpoint: str = "") -> str:
    """The S3 endpoint in force: the given one, else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL ("" = AWS)."""
    return endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def redact(text: str) -> str:
    """`text` with the secrets of the AWS environment and any user:password@ of a URL masked."""
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        value = os.environ.get(var)
        if value and len(value) >= 8:  # real ones are 16+ characters; shorter would mask ordinary words
            text = text.replace(value, "***")
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", text)


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    if "@" in bucket:
        raise StorageError(f"{redact(uri)}: credentials do not belong in a URI; {NO_CREDENTIALS}")
    if not bucket:
        raise StorageError(f"{uri}: no bucket name")
    return bucket, key.strip("/")


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem, retrying each request `attempts` times, and still so once pickled:
    pyarrow's own pickling drops the retry strategy, so Ray's workers and controller would be
    back at 3 attempts. Never holds credentials (AWS's chain supplies them in every process)."""

    def __init__(self, attempts: int = S3_ATTEMPTS, **kwargs) -> None:
        super().__init__(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts), **kwargs)
        self._args = (attempts, kwargs)

    def __reduce__(self):
        return _rebuild_s3, self._args


def _rebuild_s3(attempts: int, kwargs: dict) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(attempts, **kwargs)


def s3_filesystem(endpoint: str = "", bucket: str = "") -> pafs.S3FileSystem:
    """An S3 filesystem for the endpoint in force, retrying each request; credentials from AWS's chain."""
    url = endpoint_url(endpoint)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kwargs: dict = {}
    if url:
        scheme, sep, host = url.partition("://")
        kwargs = {"endpoint_override": host.rstrip("/") if sep else scheme, "scheme": scheme if sep else "https"}
        region = region or "us-east-1"  # S3-compatible stores ignore it; the SDK wants one to sign
    elif not region and bucket:
        region = _bucket_region(bucket)
    return RetryingS3FileSystem(S3_ATTEMPTS, region=region, connect_timeout=5, request_timeout=30, **kwargs)


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str | None:
    """An AWS bucket's region (one request; what FileSystem.from_uri does), None if it cannot be told."""
    try:
        return pafs.resolve_s3_region(bucket)
    except OSError:
        return None  # a missing bucket is reported by check()


def resolve(uri: str, endpoint: str = "") -> tuple[pafs.FileSystem, str]:
    """Map a local path or URI to a filesystem and a path inside it (local paths made absolute).

    `endpoint` applies to s3:// URIs (see `endpoint_url`); other schemes go to pyarrow's `from_uri`."""
    if not is_remote(uri):
        local = uri.removeprefix("file://")
        return pafs.LocalFileSystem(), str(Path(os.path.expanduser(local)).resolve())
    if uri.startswith("s3://"):
        bucket, key = split_s3(uri)
        return s3_filesystem(endpoint, bucket), f"{bucket}/{key}".rstrip("/")
    if "@" in uri.split("://", 1)[1].split("/", 1)[0]:
        raise StorageError(f"{redact(uri)}: credentials do not belong in a URI")
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pafs.ArrowInvalid, OSError, ValueError) as e:
        raise StorageError(f"cannot open {uri}: {redact(str(e))}") from None
    return fs, path.rstrip("/")


def s3_client(endpoint: str = "", *, attempts: int = S3_ATTEMPTS, timeout: float = 30):
    """A boto3 S3 client for the endpoint in force (standard retry mode: throttling, 5xx, timeouts),
    by default with the same `S3_ATTEMPTS` per request as the pyarrow filesystem."""
    import boto3
    from botocore.config import Config as BotoConfig

    url = endpoint_url(endpoint)
    cfg = BotoConfig(
        retries={"mode": "standard", "max_attempts": attempts},
        connect_timeout=min(timeout, 5),
        read_timeout=timeout,
        s3={"addressing_style": "path"} if url else {},
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ("us-east-1" if url else None)
    return boto3.session.Session().client("s3", endpoint_url=url or None, region_name=region, config=cfg)


def check(uri: str, endpoint: str = "") -> None:
    """Fail fast, with one line, if an s3:// URI cannot be used: no credentials, endpoint unreachable,
    bucket missing or access refused. Local paths and other schemes pass (their own errors are clear).

    Run before Ray starts: inside Ray the same problems surface only after minutes of retries."""
    if not uri.startswith("s3://"):
        return
    import boto3
    from botocore import exceptions as bex

    bucket, key = split_s3(uri)
    url = endpoint_url(endpoint)
    where = f"at {url}" if url else "on AWS"
    if boto3.session.Session().get_credentials() is None:
        raise StorageError(f"no AWS credentials to reach {uri}: {NO_CREDENTIALS}")
    client = s3_client(endpoint, attempts=2, timeout=10)
    try:
        client.head_bucket(Bucket=bucket)
    except bex.NoCredentialsError:
        raise StorageError(f"no AWS credentials to reach {uri}: {NO_CREDENTIALS}") from None
    except (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError, bex.ConnectionClosedError) as e:
        raise StorageError(
            f"cannot reach the S3 endpoint {url or 'of AWS'} for {uri} "
            f"({type(e).__name__}); check storage.s3_endpoint / --s3-endpoint"
        ) from None
    except bex.ClientError as e:
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404:
            raise StorageError(f"bucket {bucket} does not exist {where} ({uri})") from None
        if status in (401, 403):
            code = _denial_code(client, bucket, key)
            if code in (
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "InvalidToken",
                "ExpiredToken",
                "AuthorizationHeaderMalformed",
            ):
                raise StorageError(f"the AWS credentials were refused {where} ({code}) for {uri}") from None
            raise StorageError(
                f"access to bucket {bucket} {where} is denied ({code or status}); check the credentials' permissions"
            ) from None
        code = e.response.get("Error", {}).get("Code", "")
        raise StorageError(f"cannot use {uri} {where}: {redact(code)} (HTTP {status})") from None
    except bex.BotoCoreError as e:
        raise StorageError(f"cannot use {uri} {where}: {redact(str(e))}") from None


def _denial_code(client, bucket: str, key: str) -> str:
    """HEAD responses carry no error code; a one-key listing says why access was refused."""
    from botocore import exceptions as bex

    try:
        client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    except bex.ClientError as e:
        return e.response.get("Error", {}).get("Code", "")
    except bex.BotoCoreError:
        return ""
    return ""


def is_transient(e: BaseException) -> bool:
    """Whether a storage error is worth retrying: throttling, timeouts, 5xx, dropped connections."""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, StorageError)):
        return False
    if type(e).__module__.startswith("botocore"):
        if type(e).__name__ in (
            "EndpointConnectionError",
            "ConnectionClosedError",
            "ReadTimeoutError",
            "ConnectTimeoutError",
            "ResponseStreamingError",
        ):
            return True
        response = getattr(e, "response", None) or {}
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or response.get("Error", {}).get("Code") in ("SlowDown", "Throttling", "RequestTimeout")
    return isinstance(e, OSError) and any(t in str(e) for t in TRANSIENT)


def retry(
    fn: Callable[[], T],
    what: str,
    *,
    attempts: int = OP_ATTEMPTS,
    delay: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fn`; while it fails with a transient storage error, again after ~1, 2, 4 ... s (jittered)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:
            if i == attempts - 1 or not is_transient(e):
                raise
            wait = min(20.0, delay * 2**i) * (0.5 + random.random() / 2)
            log.warning(
                "%s failed (%s); retry %d of %d in %.1f s",
                what,
                redact(str(e).splitlines()[0][:200]),
                i + 1,
                attempts - 1,
                wait,
            )
            sleep(wait)
    raise AssertionError("unreachable")


def to_uri(base_uri: str, fs_path: str) -> str:
    """A path inside the filesystem of `base_uri` (as Ray reports checkpoint paths) back to a URI."""
    if is_remote(base_uri) and fs_path:
        return f"{base_uri.split('://', 1)[0]}://{fs_path}"
    return fs_path


def join(uri: str, *parts: str) -> str:
    """Join path components onto a local path or URI with '/'."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """A whole file's raw bytes (no decompression guessed from ".gz"), retried on transient errors."""

    def read() -> bytes:
        with fs.open_input_stream(path, compression=None) as f:
            return f.read()

    try:
        return retry(read, f"reading {path}")
    except FileNotFoundError:
        raise StorageError(f"{path} does not exist") from None
    except OSError as e:
        raise StorageError(f"cannot read {path}: {redact(str(e))}") from None


def write_file(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write one whole file so that readers never see half of it, retried on transient errors.

    Local files go through a temporary name and a rename; an S3 PUT is atomic by itself (a
    multipart upload, too, shows nothing until it completes)."""

    def write() -> None:
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            with fs.open_output_stream(tmp, compression=None) as f:
                f.write(data)
            fs.move(tmp, path)
        else:
            with fs.open_output_stream(path, compression=None) as f:
                f.write(data)

    try:
        retry(write, f"writing {path}")
    except OSError as e:
        raise StorageError(f"cannot write {path}: {redact(str(e))}") from None


def delete_file(fs: pafs.FileSystem, path: str) -> None:
    """Delete one file (gone already is fine), retried on transient errors. On S3, pyarrow then
    writes an empty `{parent}/` directory marker (apache/arrow#36275); readers list files only."""
    try:
        retry(lambda: fs.delete_file(path), f"deleting {path}")
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StorageError(f"cannot delete {path}: {redact(str(e))}") from None


def write_bytes(uri: str, data: bytes, endpoint: str = "") -> None:
    """Write one whole file at a local path or URI (parent directories made as needed); see `write_file`."""
    fs, path = resolve(uri, endpoint)
    write_file(fs, path, data)


def upload_dir(local_dir: str | Path, fs: pafs.FileSystem, dest: str, *, last: Iterable[str] = ()) -> list[str]:
    """Copy the files of a flat local directory to `dest` on `fs`, each one whole and retried; the
    names in `last` go after all the others, so a reader that checks for them never sees a partial
    directory. Returns the names copied."""
    local = Path(local_dir)
    names = sorted(p.name for p in local.iterdir() if p.is_file())
    late = [n for n in last if n in names]
    retry(lambda: fs.create_dir(dest, recursive=True), f"creating {dest}")
    for name in [n for n in names if n not in late] + late:
        write_file(fs, f"{dest}/{name}", (local / name).read_bytes())
    return names


FILE, DIRECTORY, NOT_FOUND = pafs.FileType.File, pafs.FileType.Directory, pafs.FileType.NotFound


def file_info(fs: pafs.FileSystem, path: str) -> pafs.FileInfo:
    """What is at `path` (`.type` is FILE, DIRECTORY or NOT_FOUND; `.mtime`), retried on transient errors."""
    try:
        return retry(lambda: fs.get_file_info(path), f"looking up {path}")
    except OSError as e:
        raise StorageError(f"cannot look up {path}: {redact(str(e))}") from None


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return file_info(fs, path).type != NOT_FOUND


def list_dir(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """The entries directly under a directory (or prefix), files and directories; [] if there is none."""
    try:
        return retry(lambda: fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)), f"listing {path}")
    except OSError as e:
        raise StorageError(f"cannot list {path}: {redact(str(e))}") from None


def list_files(fs: pafs.FileSystem, path: str) -> list[str]:
    """Base names of the plain files directly under a directory (or prefix)."""
    try:
        infos = retry(lambda: fs.get_file_info(pafs.FileSelector(path, allow_not_found=False)), f"listing {path}")
    except FileNotFoundError:
        raise StorageError(f"{path} does not exist") from None
    except OSError as e:
        raise StorageError(f"cannot list {path}: {redact(str(e))}") from None
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
