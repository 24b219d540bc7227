"""Reading a final result given by file reference (the workflow cannot touch the disk)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from models.messages import ResultFile, encoded_size
from models.workflow_io import ReadResultFile


def read_result_file_sync(request: ReadResultFile) -> ResultFile:
    """Resolve ``file_ref`` inside ``files_root`` and read it; refuse anything else.

    Rules: the resolved path (symlinks followed) stays inside the root, ends in ``.md``,
    exists, is a regular file, is at most ``max_bytes`` and is UTF-8 text.
    """
    root = Path(request.files_root).resolve()
    ref = Path(request.file_ref)
    candidate = ref if ref.is_absolute() else root / ref
    path = candidate.resolve()
    if not path.is_relative_to(root):
        raise _refuse(f"{request.file_ref!r} resolves outside the results root {root}", "Escape")
    if path.suffix.lower() != ".md":
        raise _refuse(f"{request.file_ref!r} is not a .md file", "NotMarkdown")
    if not path.exists():
        raise _refuse(f"{request.file_ref!r} does not exist (looked at {path})", "Missing")
    if not path.is_file():
        raise _refuse(f"{request.file_ref!r} is not a regular file", "NotAFile")
    size = path.stat().st_size
    if size > request.max_bytes:
        raise _refuse(
            f"{request.file_ref!r} is {size} bytes; the limit is {request.max_bytes}", "TooLarge"
        )
    data = path.read_bytes()
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(f"{request.file_ref!r} is not UTF-8 text", "NotText") from None
    if (encoded := encoded_size(content)) > request.max_bytes:
        raise _refuse(
            f"{request.file_ref!r} is {encoded:,} bytes as JSON (control characters travel "
            f"escaped); the limit is {request.max_bytes:,}",
            "TooLarge",
        )
    return ResultFile(
        path=str(path),
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content=content,
    )


def _refuse(message: str, kind: str) -> ApplicationError:
    return ApplicationError(message, type=f"ResultFile{kind}", non_retryable=True)


@activity.defn(name="read_result_file")
async def read_result_file(request: ReadResultFile) -> ResultFile:
    return await asyncio.to_thread(read_result_file_sync, request)
