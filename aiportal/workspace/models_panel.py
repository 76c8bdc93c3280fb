"""The workspace's "Install weights" block in the AI panel: licence and size, asked once, progress, then usable.

When the picked model's weights are missing and aiportal knows their download (its manifest), the
block shows the licence and size and an Install button; the button opens one question (licence,
size, sources), and on yes the install runs in a background job (the same
:func:`aiportal.weights.offer.install_function` the desktop button runs: resumable, checked, locked,
atomic) while the page shows its bytes, speed and ETA. Run waits until the weights are there.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from trame.widgets import html
from trame.widgets.vuetify3 import (
    VAlert,
    VBtn,
    VCard,
    VCardActions,
    VCardText,
    VCardTitle,
    VChip,
    VDialog,
    VProgressLinear,
)

if TYPE_CHECKING:
    from aiportal.workspace.app import Workspace

POLL_INTERVAL_S = 0.25
NO_OFFER = {"installable": False, "installed": False, "question": "", "tooltip": "", "license": "", "size": ""}


def _testid(name: str) -> list[str]:
    return [f'data-testid="{name}"']


class WeightsInstaller:
    """The block's state and actions for one workspace (one install at a time)."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.job = None
        workspace.state.update({"weights_offer": dict(NO_OFFER), "weights_missing": False, "weights_dialog": False,
                                "weights_busy": False, "weights_progress": 0, "weights_stage": "",
                                "weights_message": "", "weights_error": "", "weights_error_fix": ""})
        workspace.state.change("ai_model_id")(lambda ai_model_id=None, **_: self.refresh(ai_model_id))
        workspace.server.controller.on_server_ready.add(lambda **_: self.refresh())

    def refresh(self, model_id: str | None = None) -> None:
        """What the block shows for ``model_id`` (default: the picked model)."""
        from aiportal.weights.offer import weights_offer

        model_id = model_id or self.workspace.state.ai_model_id
        try:
            offer = weights_offer(model_id) if model_id else None
        except Exception as error:  # an offer that cannot be made must not break the panel
            self.workspace.show_error(error, "weights")
            offer = None
        shown = dict(NO_OFFER) if offer is None else {
            "installable": offer.installable, "installed": offer.installed, "question": offer.question,
            "tooltip": offer.tooltip, "license": offer.license, "size": offer.size_text}
        with self.workspace.state as state:
            state.weights_offer = shown
            state.weights_missing = bool(shown["installable"] and not shown["installed"])

    def ask(self) -> None:
        self.workspace.clear_error("weights")
        self.workspace.state.weights_message = ""
        self.workspace.state.weights_dialog = True

    def confirm(self) -> None:
        """The user said yes to the question: install in a background job, followed by the page."""
        from aiportal.background import FunctionJob
        from aiportal.weights.offer import install_function

        self.workspace.state.weights_dialog = False
        model_id = self.workspace.state.ai_model_id
        if self.job is not None or not model_id:
            return
        self.job = FunctionJob(install_function(model_id), "installing weights")
        self.job.start()
        with self.workspace.state as state:
            state.weights_busy, state.weights_progress, state.weights_stage = True, 0, "starting the download"
        from trame_server.utils.asynchronous import create_task

        create_task(self._follow(self.job, model_id))

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.workspace.state.weights_stage = "cancelling…"

    async def _follow(self, job, model_id: str) -> None:
        try:
            while (status := job.poll()).state in ("queued", "running"):
                with self.workspace.state as state:
                    state.weights_progress = round(100 * status.fraction)
                    state.weights_stage = status.stage
                await asyncio.sleep(POLL_INTERVAL_S)
            summary = job.finish()
            with self.workspace.state as state:
                state.weights_message = summary  # says UNVERIFIED loudly when no sha256 was published
        except Exception as error:
            self.workspace.show_error(error, "weights")
        finally:
            self.job = None
            with self.workspace.state as state:
                state.weights_busy, state.weights_stage = False, ""
            self.refresh(model_id)


def weights_block(workspace: Workspace) -> WeightsInstaller:
    """The block's widgets (under the model picker) and its installer."""
    installer = WeightsInstaller(workspace)
    with html.Div(v_if=("weights_offer.installable",), classes="my-2", raw_attrs=_testid("weights-block")):
        with html.Div(v_if=("weights_offer.installed",), classes="d-flex align-center"):
            VChip("Weights installed", size="small", color="green", prepend_icon="mdi-check",
                  raw_attrs=_testid("weights-installed"))
        with html.Div(v_if=("!weights_offer.installed",)):
            html.Div("The weights of this model are not on this machine.", classes="text-caption")
            html.Div("Licence: {{ weights_offer.license }} · {{ weights_offer.size }}", classes="text-caption",
                     raw_attrs=_testid("weights-licence"))
            VBtn("Install weights", click=installer.ask, size="small", variant="tonal", color="primary",
                 prepend_icon="mdi-download", disabled=("weights_busy",), classes="mt-1",
                 raw_attrs=_testid("weights-install"))
        with html.Div(v_if=("weights_busy",), classes="mt-2", raw_attrs=_testid("weights-progress")):
            VProgressLinear(model_value=("weights_progress",), height=6, color="primary", rounded=True)
            html.Div("{{ weights_progress }}% · {{ weights_stage }}", classes="text-caption",
                     raw_attrs=_testid("weights-stage"))
            VBtn("Cancel", click=installer.cancel, size="x-small", variant="text", raw_attrs=_testid("weights-cancel"))
        html.Div("{{ weights_message }}", v_if=("weights_message",), classes="text-caption mt-1",
                 style="white-space: pre-line", raw_attrs=_testid("weights-message"))
        with VAlert(v_if=("weights_error",), type="error", variant="tonal", density="compact", classes="my-2",
                    raw_attrs=_testid("weights-error")):
            html.Div("{{ weights_error }}", classes="font-weight-bold")
            html.Div("{{ weights_error_fix }}", classes="text-caption")
    with VDialog(v_model=("weights_dialog",), max_width=560), VCard(raw_attrs=_testid("weights-dialog")):
        VCardTitle("Install weights")
        VCardText("{{ weights_offer.question }}", style="white-space: pre-line",
                  raw_attrs=_testid("weights-question"))
        with VCardActions():
            VBtn("Cancel", click="weights_dialog = false", variant="text", raw_attrs=_testid("weights-decline"))
            VBtn("Accept and install", click=installer.confirm, color="primary", variant="tonal",
                 raw_attrs=_testid("weights-accept"))
    return installer
