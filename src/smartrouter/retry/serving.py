"""The retry advice in the service: `RetryService.advise` behind ``POST /v1/retry``.

The retry model ships in the promoted version's serving folder (``<version>/serving/retry``), so
it changes exactly when the routing model does; it is loaded on the first advice after a swap
(~50 ms, once) and a version without one (or whose one fails to load) gets rules-only advice:
darktime retries, no priced retry of an issuer decline. Processor health, eligibility (hard rules,
disabled processors, BIN overrides, candidates) and the online features are the router's own.
Card reattempt counts come from the caller (see retry_rules.toml: the service never sees a card).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from smartrouter.errors import SmartrouterError
from smartrouter.retry.advice import Advice, RetryAdvisor, retry_payment
from smartrouter.retry.model import load_retry_model
from smartrouter.retry.rules import RetryRules, load_rules

log = logging.getLogger("smartrouter.retry")


class RetryService:
    """Retry advice over a `Router` (its model holder, health, eligibility and online features)."""

    def __init__(self, router: Any, rules: RetryRules | None = None) -> None:
        self.router = router
        self.rules = rules or load_rules()
        self._lock = threading.Lock()
        self._path: Path | None = None
        self._model: Any = None
        self._advisor = RetryAdvisor(self.rules)
        self._version: str | None = None
        self.load_error: str | None = None

    def _current(self) -> tuple[Any, RetryAdvisor, str | None]:
        holder = getattr(self.router, "holder", None)
        loaded = holder.current if holder is not None else None
        path = Path(loaded.path) if loaded is not None else None
        if path != self._path:
            with self._lock:
                if path != self._path:
                    model, extra, error = None, 0.0, None
                    if path is not None:
                        try:
                            got = load_retry_model(path)
                            if got is not None:
                                model, extra = got
                        except SmartrouterError as exc:
                            error = str(exc)
                            log.error("retry model of %s refused: %s", loaded.version, exc)
                    self._model, self._advisor, self.load_error = model, RetryAdvisor(self.rules, extra), error
                    self._version = loaded.version if (loaded is not None and model is not None) else None
                    self._path = path
        return self._model, self._advisor, self._version

    def advise(self, payment: dict, *, code: str, processor: str, attempt_number: int, retries_24h: int,
               retries_30d: int, at: float, merchant_advice_code: str | None = None,
               candidates: Iterable[str] | None = None) -> tuple[Advice, str | None]:
        """(the advice for the declined attempt ``payment``, the model version that priced it)."""
        model, advisor, version = self._current()
        verdict = advisor.verdict(payment["CARD_BRAND"], code, attempt_number, retries_24h, retries_30d, merchant_advice_code)
        if not verdict.allowed:
            return advisor.advise(verdict, code, processor, [], None, source="rules"), None
        router = self.router
        reasons: list[str] = []
        eligible = router.eligible(payment, candidates, reasons)  # NoEligibleProcessor: the handler's 422
        health = router.health
        down = {p for p in {*eligible, processor} if health.is_down(p)}
        probs: Callable[[str], dict[str, float]] | None = None
        source = "rules"
        if model is not None and (router.features is None or router.features_warm(at)):
            enriched = router.enrich(payment, at)
            delays = self.rules.delays

            def priced(bucket: str) -> dict[str, float]:
                return model.score(retry_payment(enriched, code, processor, attempt_number, delays[bucket]))

            probs, source = priced, "retry_model"
        elif model is not None:
            reasons.append("online features not ready (history still loading): rules-only advice")
        elif self.load_error:
            reasons.append(f"retry model not loaded ({self.load_error}): rules-only advice")
        else:
            reasons.append("the served version has no retry model: rules-only advice")
        adv = advisor.advise(verdict, code, processor, eligible, probs, down, source=source)
        if reasons:
            adv.reasons[:0] = reasons
        return adv, version if source == "retry_model" else None


def retry_service(svc: Any) -> RetryService:
    """The service's RetryService, made on first use (the handlers' one place to get it)."""
    rs = svc.retry
    if rs is None:
        rs = svc.retry = RetryService(svc.router)
    return rs
