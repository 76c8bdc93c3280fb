"""Auto-dispatch: watch an Orthanc PACS for new stable series and route them to models by rules.

Rules (a JSON file, ``aiportal serve --dispatch-rules rules.json``)::

    {"orthanc_url": "http://127.0.0.1:8042",      # Orthanc's REST root (its change feed is not DICOMweb)
     "silent_pilot": true,                         # store and audit the results, push nothing
     "poll_s": 2.0,
     "rules": [{"model": "classic-ct", "modality": "CT", "body_part": "CHEST|ABDOMEN",
                "description": "(?i)thorax|chest", "params": {}},
               {"model": "classic-ct", "modality": "SEG", "followup": true, "max_priors": 3}]}

A rule with ``"followup": true`` makes a follow-up job instead of a segmentation
(:mod:`aiportal.server.followup_job`): the study's priors found on the PACS, the lesions tracked over
them (``max_priors``, ``prior_description``; ``segment_missing``: segment a study without a SEG with the
rule's model). A SEG arriving is the usual trigger: the study's lesions exist then.

The first rule whose modality (exact, case-insensitive), body part and series description
(regular expressions, searched) all match a series decides its model. Orthanc's credentials are
those of the server's PACS endpoint (``--pacs``), from which the jobs pull the series as usual.
Each series becomes an ordinary job of the owner ``dispatch`` with the client request id
``dispatch:<series UID>:<model>``, so that reading the change feed again after a restart never
submits a series twice. The position in the feed is kept in ``DATA_DIR/dispatch.json``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import requests

from aiportal.errors import AIPortalError

log = logging.getLogger("aiportal.server")


@dataclass(frozen=True)
class DispatchRule:
    model: str
    modality: str = ""
    body_part: str = ""
    description: str = ""
    params: dict = field(default_factory=dict)
    formats: str = "nrrd,json,seg,sr"
    followup: bool = False  # a follow-up job (priors from the PACS, lesions tracked) instead of a segmentation
    max_priors: int = 3
    prior_description: str = ""
    segment_missing: bool = False

    def matches(self, tags: dict[str, str]) -> bool:
        if self.modality and tags.get("Modality", "").upper() != self.modality.upper():
            return False
        if self.body_part and not re.search(self.body_part, tags.get("BodyPartExamined", "")):
            return False
        return not (self.description and not re.search(self.description, tags.get("SeriesDescription", "")))


@dataclass(frozen=True)
class DispatchConfig:
    orthanc_url: str
    rules: tuple[DispatchRule, ...]
    silent_pilot: bool = True
    poll_s: float = 2.0

    @classmethod
    def load(cls, path: Path) -> DispatchConfig:
        try:
            data = json.loads(Path(path).read_text())
            rules = tuple(_with_followup(DispatchRule(**rule)) for rule in data["rules"])
            for rule in rules:
                for pattern in (rule.body_part, rule.description):
                    re.compile(pattern)
            return cls(str(data["orthanc_url"]).rstrip("/"), rules, bool(data.get("silent_pilot", True)),
                       float(data.get("poll_s", 2.0)))
        except (OSError, ValueError, KeyError, TypeError, re.error) as error:
            raise AIPortalError(f"dispatch rules {path} cannot be used: {type(error).__name__}: {error}",
                                "see aiportal.server.dispatch for the format") from error


def _with_followup(rule: DispatchRule) -> DispatchRule:
    """The follow-up options travel in the job's parameters, where the engine finds them."""
    if not rule.followup:
        return rule
    from aiportal.server.followup_job import followup_params

    return replace(rule, params=followup_params(rule.params, max_priors=rule.max_priors,
                                                description=rule.prior_description,
                                                segment_missing=rule.segment_missing))


def route(tags: dict[str, str], rules: tuple[DispatchRule, ...]) -> DispatchRule | None:
    return next((rule for rule in rules if rule.matches(tags)), None)


SubmitFunction = Callable[[str, str, DispatchRule, bool], None]  # study UID, series UID, rule, push


class OrthancDispatcher:
    """Reads Orthanc's ``/changes`` feed; each ``StableSeries`` that a rule matches is submitted."""

    def __init__(self, config: DispatchConfig, auth: tuple[str, str] | None, state_file: Path,
                 submit: SubmitFunction) -> None:
        self.config, self.state_file, self.submit = config, Path(state_file), submit
        self.session = requests.Session()
        self.session.auth = auth
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="aiportal-dispatch", daemon=True)

    def _since(self) -> int:
        try:
            return int(json.loads(self.state_file.read_text())["last"])
        except (OSError, ValueError, KeyError):
            return 0

    def _get(self, path: str, **params) -> dict:
        answer = self.session.get(f"{self.config.orthanc_url}{path}", params=params, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def poll_once(self) -> list[tuple[str, str]]:
        """One pass over new changes; returns (series UID, model) of each submitted series."""
        submitted = []
        while True:
            since = self._since()
            changes = self._get("/changes", since=since, limit=100)
            for change in changes["Changes"]:
                if change["ChangeType"] != "StableSeries":
                    continue
                series = self._get(f"/series/{change['ID']}")
                tags = series.get("MainDicomTags", {})
                rule = route(tags, self.config.rules)
                if rule is None:
                    continue
                study = self._get(f"/studies/{series['ParentStudy']}")
                study_uid = study["MainDicomTags"]["StudyInstanceUID"]
                self.submit(study_uid, tags["SeriesInstanceUID"], rule, not self.config.silent_pilot)
                submitted.append((tags["SeriesInstanceUID"], rule.model))
            self.state_file.write_text(json.dumps({"last": changes["Last"]}))
            if changes.get("Done", True) or changes["Last"] == since:
                return submitted

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.poll_s):
            try:
                for series_uid, model in self.poll_once():
                    log.info("dispatch: series %s -> %s%s", series_uid, model,
                             " (silent pilot)" if self.config.silent_pilot else "")
            except Exception as error:  # the PACS may be down for a while: keep watching
                log.warning("dispatch: change feed not read (%s)", type(error).__name__)
