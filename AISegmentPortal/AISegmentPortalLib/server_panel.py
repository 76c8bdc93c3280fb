"""AISegmentPortal's Server section: the inference server's address and key, a connection check in the
background, and the user's consent (asked once per server) before an image leaves this computer.

The widget side only: the client is :class:`aiportal.server.client.ServerClient`, made by
AISegmentPortalLogic.serverClient (every face uses the same one).
"""

import os
from collections.abc import Callable

import slicer
from slicer.i18n import tr as _

from aiportal.background import FunctionJob


def consentKey(serverURL: str) -> str:
    """The application setting that keeps the user's consent to send images to this server."""
    return f"AIPortal/serverConsent/{serverURL}"


class ServerPanel:
    """Connects the Server section's widgets (``ui``) to ``logic``'s server client.

    ``parameterNode`` is a callable (the widget's current parameter node); ``followJob(job, onProgress,
    onDone)`` starts a job and follows it from the main thread.
    """

    def __init__(self, ui, logic, parameterNode: Callable, followJob: Callable) -> None:
        self.ui = ui
        self.logic = logic
        self._parameterNode = parameterNode
        self._followJob = followJob
        self._follower = None
        self.ui.testConnectionButton.connect("clicked(bool)", self.onTestConnection)
        # the API key stays in this session's memory (or the environment), never in the scene file
        self.ui.serverKeyLineEdit.text = os.environ.get("AIPORTAL_SERVER_API_KEY", "")

    def cancel(self) -> None:
        if self._follower is not None:
            self._follower.cancel()

    def client(self):
        """A client of the server in the parameter node, with the key typed in this session."""
        return self.logic.serverClient(self._parameterNode().serverURL, self.ui.serverKeyLineEdit.text)

    def askConsent(self, serverURL: str) -> bool:
        """Ask once per server before an image leaves this computer; the answer is kept in the settings."""
        if slicer.app.settings().value(consentKey(serverURL)) == "yes":
            return True
        question = _("The selected volume will be uploaded to {url} and processed there. Its DICOM header is "
                     "de-identified only if the server is set to do so. Send images to this server?")
        if not slicer.util.confirmYesNoDisplay(question.format(url=serverURL)):
            return False
        slicer.app.settings().setValue(consentKey(serverURL), "yes")
        return True

    def onTestConnection(self) -> None:
        """Check the server address and key (its health and models) in the background."""
        if self._follower is not None and self._follower.running:
            return
        with slicer.util.tryWithErrorDisplay(_("The server cannot be used.")):
            client = self.client()
            self.ui.serverStatusLabel.text = _("Connecting to {url}...").format(url=client.base_url)
            self._follower = self._followJob(
                FunctionJob(lambda progress, cancel: client.models(), "connecting"),  # needs a valid key
                lambda fraction, stage: None, self._onConnectionChecked)

    def _onConnectionChecked(self, models: list | None, error: str | None) -> None:
        if error is not None:
            self.ui.serverStatusLabel.text = _("Not connected.")
            slicer.util.errorDisplay(_("The server cannot be used.") + "\n\n" + error)
        elif models is not None:
            self.ui.serverStatusLabel.text = _("Connected: {count} models ({names}).").format(
                count=len(models), names=", ".join(m["id"] for m in models[:5]))
