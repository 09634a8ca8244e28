"""Model folders: what one is and the checked loader (`model_folders`), the remote-code entries a saved
folder carries (`remote_code`), model cards (`cards`)."""
