"""What a run measured about one request, and the per-request latencies derived from it.

Owns `RequestRecord`: filled in by whoever observes the request (engine, simulator, benchmark
client), all times absolute on that run's clock. Knows nothing of how they were measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from flowprefill.core import Request


@dataclass
class RequestRecord:
    """One request's outcome.

    first_token_time: when the first token was produced (None: never).
    token_times: when each later token was produced, in order.
    finish_time: when the request completed (None: never, e.g. rejected or cut off).
    prefill_start / prefill_end: when its prefill job first ran and when it completed.
    preemption_latencies: seconds from each event that asked this request's job to yield (or
        asked for a switch to it) to the first operator of the job that ran next.
    output_tokens: tokens generated as the server counted them (its `usage`), when it said;
        streamed chunks may bundle tokens, so len(token_times) + 1 is only a lower bound.
    """

    request_id: str
    slo_class: str
    arrival: float
    prompt_len: int
    output_len: int
    ttft_slo: float
    tbt_slo: float = float("inf")
    first_token_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    finish_time: float | None = None
    preemptions: int = 0
    preemption_latencies: list[float] = field(default_factory=list)
    rejected: bool = False
    prefill_start: float | None = None  # first operator of its (first) prefill job
    prefill_end: float | None = None  # its prefill job completed
    output_tokens: int | None = None

    @property
    def queueing(self) -> float | None:
        """Seconds from arrival until its prefill first ran."""
        return None if self.prefill_start is None else self.prefill_start - self.arrival

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival

    @property
    def tbt(self) -> list[float]:
        """Gaps between consecutive tokens after the first (len(token_times) values)."""
        if self.first_token_time is None:
            return []
        times = [self.first_token_time, *self.token_times]
        return [b - a for a, b in zip(times, times[1:], strict=False)]

    @property
    def mean_tbt(self) -> float | None:
        gaps = self.tbt
        return sum(gaps) / len(gaps) if gaps else None

    @property
    def e2e(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.arrival

    @property
    def completed(self) -> bool:
        return self.finish_time is not None and not self.rejected

    def ttft_met_at(self, scale: float = 1.0) -> bool:
        """First token within `scale` x the TTFT SLO (rejected or unserved: not met)."""
        ttft = self.ttft
        return not self.rejected and ttft is not None and ttft <= self.ttft_slo * scale

    @property
    def ttft_met(self) -> bool:
        return self.ttft_met_at(1.0)

    @property
    def generated(self) -> int:
        """Tokens produced: the server's count when known, else one per streamed chunk."""
        if self.output_tokens is not None:
            return self.output_tokens
        return 0 if self.first_token_time is None else 1 + len(self.token_times)

    def tbt_fraction_at(self, scale: float = 1.0) -> float:
        """The FlowPrefill paper's per-request TBT attainment: the fraction of this request's
        inter-token gaps within `scale` x its TBT SLO. No first token (or rejected): 0; a
        first token and no gaps (one output token): 1."""
        if self.rejected or self.first_token_time is None:
            return 0.0
        gaps = self.tbt
        if not gaps:
            return 1.0
        bound = self.tbt_slo * scale
        return sum(g <= bound for g in gaps) / len(gaps)

    def tbt_met_at(self, scale: float = 1.0) -> bool:
        """Mean time between tokens (TPOT) within `scale` x the TBT SLO: the per-request test
        of `vllm bench serve --goodput tpot:...`, with this request's own SLO.

        Requires a first token; a request with a single output token has no gaps and meets it.
        """
        if self.rejected or self.first_token_time is None:
            return False
        mean = self.mean_tbt
        return mean is None or mean <= self.tbt_slo * scale

    @property
    def tbt_met(self) -> bool:
        return self.tbt_met_at(1.0)

    def to_dict(self) -> dict:
        """Fields plus derived latencies, JSON-ready."""
        d = asdict(self)
        d.update(ttft=self.ttft, e2e=self.e2e, ttft_met=self.ttft_met, tbt_met=self.tbt_met,
                 tbt_fraction=self.tbt_fraction_at(1.0))
        return d

    @classmethod
    def for_request(cls, req: Request) -> RequestRecord:
        """An empty record for `req` (SLOs, lengths, arrival copied); the observer fills in
        the times as they happen."""
        return cls(
            request_id=req.request_id,
            slo_class=req.slo.slo_class,
            arrival=req.arrival,
            prompt_len=req.prompt_len,
            output_len=req.max_tokens,
            ttft_slo=req.slo.ttft,
            tbt_slo=req.slo.tbt,
        )

    @classmethod
    def from_dict(cls, d: dict) -> RequestRecord:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})
