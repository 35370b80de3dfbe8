"""The app on a Ray cluster: chosen by the operator (``RAY_ADDRESS`` or ``SCD_EXECUTOR=ray``), shown in the sidebar.

Without either setting (the default), rankings run in the app's process and nothing here imports Ray.
"""

from __future__ import annotations

import streamlit as st

from scd_core import ScdError
from scd_core.config import settings
from scd_core.runtime.executors import Executor, get_executor


def wants_cluster() -> bool:
    s = settings()
    return s.executor == "ray" or bool(s.ray_address)


@st.cache_resource(show_spinner="Connecting to the Ray cluster…")
def _ray_executor() -> Executor:
    return get_executor("ray")  # one connection for the whole server, shared by every session


@st.cache_resource(show_spinner=False)
def _local_executor(workers: int, torch_threads: int) -> Executor:
    # one pool for the whole server; its workers never import the page that is __main__
    return get_executor("local", workers=workers, torch_threads=torch_threads, import_main=False)


def executor(images: int = 0, teachers: int = 0) -> Executor | None:
    """Where a ranking of ``images`` x ``teachers`` runs: the Ray cluster when the operator asked for one,
    worker processes when it is large (``SCD_RANK_IN_WORKERS_ABOVE``), else None (here, it is quick).
    Raises ScdError if the cluster is unreachable."""
    if wants_cluster():
        return _ray_executor()
    if images * teachers > settings().rank_in_workers_above:
        from scd_core.runtime.settings import read_settings

        runtime = read_settings()
        return _local_executor(runtime.workers, runtime.torch_threads)
    return None


def sidebar_cluster() -> None:
    """One sidebar block: where rankings run and, on a cluster, its resources right now."""
    if not wants_cluster():
        return
    try:
        info = executor().describe()
    except ScdError as exc:
        st.error(f"Ray cluster unavailable: {exc}", icon=":material/cloud_off:")
        return
    gpus = f", {info['gpus']:g} GPU ({info['free_gpus']:g} free)" if info["gpus"] else ", no GPU"
    st.markdown(f"**Runs on:** Ray ({info['address']})")
    st.caption(f"{info['nodes']} node(s), {info['cpus']:g} CPU ({info['free_cpus']:g} free){gpus}, "
               f"{info['memory_gib']:g} GiB memory; one task per teacher")
