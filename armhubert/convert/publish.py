"""Uploading a finished conversion to the Hugging Face Hub, as one commit.

The local output is always complete before an upload starts; a failed upload leaves it in place and the
Hub repository's files as they were.
"""

import os

from huggingface_hub import HfApi, constants

from ..cli import UserError

COMMIT_MESSAGE = "Convert the original release checkpoints with convert_checkpoint.py"


class PublishError(UserError):
    """The Hub upload failed; the local output is complete and kept."""


def push_to_hub(folder: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Create `repo_id` if needed and upload `folder` to it as one commit; returns the commit URL.

    Offline mode and missing or rejected credentials are found before anything is created. As the
    upload is a single commit, a failure leaves the repository's files as they were.
    """
    if constants.HF_HUB_OFFLINE:
        raise PublishError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to publish")
    api = HfApi()
    try:
        api.whoami()
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, repo_type="model", commit_message=COMMIT_MESSAGE
        )
    except Exception as error:  # noqa: BLE001 -- network, authentication and Hub errors come in many types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise PublishError(f"{type(error).__name__}: {reason}".rstrip(": ")) from None
    return commit.commit_url


def publish_output(folder: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """`push_to_hub`, whose failure message also says that `folder` is kept and how to upload it later."""
    try:
        return push_to_hub(folder, repo_id, private=private)
    except PublishError as error:
        raise PublishError(
            f"could not publish to {repo_id}: {str(error).rstrip('.')}. Nothing was committed; the converted output is complete in "
            f"{folder} (upload it later with `hf upload {repo_id} {folder}`)."
        ) from None
