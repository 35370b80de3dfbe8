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


def executor() -> Executor | None:
    """The Ray executor when the operator asked for one, else None (run here). Raises ScdError if unreachable."""
    return _ray_executor() if wants_cluster() else None


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
