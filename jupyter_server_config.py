# Jupyter server settings of a dbrunbook project (used by `dbrunbook lab`; `jupyter lab` run from this folder
# reads them too): signed records under outputs/ are read-only, so that JupyterLab's autosave of a record a
# reviewer merely opened cannot turn it into a "tampered" one. Interactive runs are edited in the working copy
# `dbrunbook open` prints (under .dbrunbook/, a dot folder, hence allow_hidden).
c = get_config()  # noqa: F821 (provided by Jupyter when it loads this file)
c.ServerApp.contents_manager_class = "dbrunbook.execution.jupyter_readonly.RecordsReadOnlyContentsManager"
c.ContentsManager.allow_hidden = True
