"""Throughput: device peak FLOP/s and a tokens/s + MFU meter (FLOPs per token: :mod:`hf_wsd.flops`).

- **Peak FLOP/s** is the vendor's dense (no 2:4 sparsity) matmul peak of one device as torch sees it (an
  MI250X shows up as two devices, one per GCD) at the precision the matmuls run in.
- **MFU** (percent) = FLOPs per token × tokens/s per device ÷ peak FLOP/s per device [torchtitan].

Everything here is pure except :func:`device_name` and :func:`matmul_precision`, which ask torch.
"""

from __future__ import annotations

import logging
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------- peak FLOP/s
@dataclass(frozen=True)
class DevicePeak:
    """Dense peak TFLOP/s of one device for matmuls in each precision (``None``: no such matmul units).

    ``pattern`` is a regular expression searched in the lower-cased ``torch.cuda.get_device_name()``.
    """

    name: str
    pattern: str
    bf16: float | None
    fp16: float | None
    tf32: float | None  # None: no TF32 units, fp32 matmuls run at the fp32 rate
    fp32: float | None


# Vendor figures with 2:4 sparsity are halved. NVIDIA fp32 is the non-tensor rate (no fp32 matrix units);
# AMD fp32 is the matrix (MFMA) rate. Order matters: the first matching pattern wins.
PEAK_TFLOPS: tuple[DevicePeak, ...] = (
    # https://www.nvidia.com/en-us/data-center/h100/ (datasheet: BF16 1671*, TF32 835*, FP32 60; * = sparsity)
    DevicePeak("H100 NVL", r"\bh100\b.*\bnvl\b", 835.5, 835.5, 417.5, 60.0),
    # same page: BF16 1513*, TF32 756*, FP32 51; "NVIDIA H100 PCIe" (an HBM2e H100 is the PCIe card)
    DevicePeak("H100 PCIe", r"\bh100\b.*\b(pcie|hbm2e)\b", 756.5, 756.5, 378.0, 51.0),
    # same page, SXM: BF16 1979*, TF32 989*, FP32 67; torch names it "NVIDIA H100 80GB HBM3"
    DevicePeak("H100 SXM", r"\bh100\b", 989.5, 989.5, 494.5, 67.0),
    # https://www.nvidia.com/en-us/data-center/h200/ (NVL: BF16 1671*, TF32 835*, FP32 60)
    DevicePeak("H200 NVL", r"\bh200\b.*\bnvl\b", 835.5, 835.5, 417.5, 60.0),
    # same page, SXM: BF16 1979*, TF32 989*, FP32 67
    DevicePeak("H200 SXM", r"\bh200\b", 989.5, 989.5, 494.5, 67.0),
    # No public NVIDIA page; NVIDIA's H20 product brief as reported (e.g. https://willitrunai.com/es/gpus/h20-96gb):
    # FP16/BF16 148, TF32 74, FP32 44, dense
    DevicePeak("H20", r"\bh20\b", 148.0, 148.0, 74.0, 44.0),
    # A100 datasheet: BF16 312 (624*), TF32 156 (312*), FP32 19.5; the same for 40/80 GB, SXM4 and PCIe.
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
    DevicePeak("A100", r"\ba100\b", 312.0, 312.0, 156.0, 19.5),
    # NVIDIA publishes no A10G (AWS G5) figures and its tensor rate is not the A10's, so no guess: pass peak_tflops.
    # (https://www.baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference/)
    DevicePeak("A10G", r"\ba10g\b", None, None, None, None),
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a10/pdf/a10-datasheet.pdf
    # BF16 125 (250*), TF32 62.5 (125*), FP32 31.2
    DevicePeak("A10", r"\ba10\b", 125.0, 125.0, 62.5, 31.2),
    # https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413: BF16 362.05 (733*), TF32 183 (366*), FP32 91.6
    DevicePeak("L40S", r"\bl40s\b", 362.05, 362.05, 183.0, 91.6),
    # NVIDIA L40 datasheet (Jan 2023): BF16 181.05 (362.1*), TF32 90.5 (181*), FP32 90.5
    DevicePeak("L40", r"\bl40\b", 181.05, 181.05, 90.5, 90.5),
    # https://resources.nvidia.com/en-us-data-center-overview/l4-gpu-datasheet: BF16 242*, TF32 120*, FP32 30.3
    DevicePeak("L4", r"\bl4\b", 121.0, 121.0, 60.0, 30.3),
    # https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf
    # Volta: FP16 tensor cores only (no BF16, no TF32). V100S PCIe 130 / 16.4, SXM2 125 / 15.7, PCIe 112 / 14
    DevicePeak("V100S PCIe", r"\bv100s\b", None, 130.0, None, 16.4),
    DevicePeak("V100 SXM2", r"\bv100-sxm2\b", None, 125.0, None, 15.7),
    DevicePeak("V100 PCIe", r"\bv100-pcie\b", None, 112.0, None, 14.0),
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf
    # FP16 mixed precision 65, FP32 8.1 (Turing: no BF16, no TF32)
    DevicePeak("T4", r"\bt4\b", None, 65.0, None, 8.1),
    # Ada whitepaper, appendix: https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf
    # FP16/BF16 tensor with FP32 accumulate 165.2 (330.4*), TF32 82.6 (165.2*), FP32 82.6
    DevicePeak("RTX 4090", r"\brtx 4090$", 165.2, 165.2, 82.6, 82.6),
    # GA102 whitepaper, appendix A: https://www.nvidia.com/content/PDF/nvidia-ampere-ga-102-gpu-architecture-whitepaper-v2.pdf
    # FP16/BF16 tensor with FP32 accumulate 71 (142*), TF32 35.6 (71*), FP32 35.6
    DevicePeak("RTX 3090", r"\brtx 3090$", 71.0, 71.0, 35.6, 35.6),
    # https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html
    # BF16/FP16 1307.4 (2614.9*), TF32 653.7, FP32 matrix 163.4
    DevicePeak("MI300X", r"\bmi300x\b", 1307.4, 1307.4, 653.7, 163.4),
    # https://www.amd.com/en/products/accelerators/instinct/mi200/mi250x.html: BF16/FP16 383, FP32 matrix 95.7 per
    # board, which torch sees as two devices (one per GCD): half each. CDNA2 has no TF32.
    DevicePeak("MI250X (one GCD)", r"\bmi250x\b", 191.5, 191.5, None, 47.85),
)

PRECISIONS = ("bf16", "fp16", "tf32", "fp32")
_PRECISION_ALIASES = {
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "torch.float16": "fp16",
    "tf32": "tf32", "tfloat32": "tf32",
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "torch.float32": "fp32",
}


def find_device(device_name: str) -> DevicePeak | None:
    """The :data:`PEAK_TFLOPS` row of a ``torch.cuda.get_device_name()`` string, or ``None``."""
    name = " ".join(device_name.lower().split())
    for row in PEAK_TFLOPS:
        if re.search(row.pattern, name):
            return row
    return None


def peak_flops(device_name: str, dtype: Any, override_tflops: float | None = None) -> float | None:
    """Dense peak FLOP/s of one device for matmuls in ``dtype`` (``"bf16"``, ``"fp16"``, ``"tf32"``, ``"fp32"``
    or a torch dtype), or ``None`` when unknown (CPU, an unlisted device, bf16 on a GPU without bf16 units).

    ``override_tflops`` (TFLOP/s) wins over the table.
    """
    precision = _precision(dtype)
    if override_tflops is not None:
        if isinstance(override_tflops, bool) or not isinstance(override_tflops, (int, float)) or not (
            math.isfinite(override_tflops) and override_tflops > 0
        ):
            raise ValueError(
                f"`peak_tflops` must be a positive number of TFLOP/s (e.g. 989.5 for an H100 SXM in bf16); "
                f"got {override_tflops!r}."
            )
        return float(override_tflops) * 1e12
    row = find_device(device_name)
    if row is None:
        logger.debug("No peak FLOP/s known for device %r.", device_name)
        return None
    tflops = getattr(row, precision)
    if tflops is None and precision == "tf32":
        tflops = row.fp32  # no TF32 units: fp32 matmuls run at the fp32 rate
    if tflops is None:
        logger.debug("%s has no %s matmul units; no peak FLOP/s for it.", row.name, precision)
        return None
    return float(round(tflops * 1e12))  # 16.4 * 1e12 is 16399999999999.998


def _precision(dtype: Any) -> str:
    precision = _PRECISION_ALIASES.get(str(dtype).lower())
    if precision is None:
        raise ValueError(f"unknown matmul precision `dtype`={dtype!r}; choose one of {', '.join(PRECISIONS)}.")
    return precision


def matmul_precision(*, bf16: bool = False, fp16: bool = False, tf32: bool | None = None) -> str:
    """The precision a Trainer's matmuls run in, from its ``bf16``/``fp16``/``tf32`` arguments.

    ``tf32=None`` (the ``TrainingArguments`` default) follows torch's current setting.
    """
    if bf16:
        return "bf16"
    if fp16:
        return "fp16"
    if tf32 is None:
        import torch

        tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    return "tf32" if tf32 else "fp32"


def device_name(device: Any = None) -> str:
    """``torch.cuda.get_device_name`` of a CUDA/ROCm ``device`` (default: the current one), else the device type."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


# ----------------------------------------------------------------------------------------- the meter
@dataclass
class _Interval:
    """Updates ``start_step + 1 … end_step``: the tokens they processed and the training seconds they took."""

    start_step: int
    end_step: int
    tokens: int = 0
    seconds: float = 0.0

    @property
    def updates(self) -> int:
        return self.end_step - self.start_step


class ThroughputMeter:
    """Tokens/s, TFLOP/s per device and MFU of a training run, with time outside training left out.

    Call :meth:`update` after every optimizer update with the global tokens seen so far, and
    :meth:`log_figures` at logging steps. Wrap work that is not training (budget folders, evaluation,
    checkpoints, WSD branch switches) in :meth:`pause` / :meth:`resume` or ``with meter.paused():``; pauses
    nest. The first update (or ``resume(step=…, tokens_seen=…)``) is the starting point: it counts nothing.

    Args:
        flops_per_token: training FLOPs per token (:func:`flops_per_token`); ``None``: tokens/s only.
        peak_flops: dense peak FLOP/s of one device (:func:`peak_flops`); ``None`` leaves MFU out.
        world_size: devices sharing the tokens (data-parallel processes).
        max_intervals: history kept for :meth:`summary`; beyond it neighbouring intervals are merged in pairs.
    """

    def __init__(
        self, flops_per_token: float | None, peak_flops: float | None = None, world_size: int = 1,
        max_intervals: int = 4096,
    ):
        if flops_per_token is not None and (
            isinstance(flops_per_token, bool) or not isinstance(flops_per_token, (int, float)) or flops_per_token <= 0
        ):
            raise ValueError(f"`flops_per_token` must be a positive number, or None; got {flops_per_token!r}.")
        if peak_flops is not None and not (isinstance(peak_flops, (int, float)) and peak_flops > 0):
            raise ValueError(f"`peak_flops` must be a positive number of FLOP/s, or None; got {peak_flops!r}.")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"`world_size` must be a positive integer; got {world_size!r}.")
        if isinstance(max_intervals, bool) or not isinstance(max_intervals, int) or max_intervals < 2:
            raise ValueError(f"`max_intervals` must be an integer of at least 2; got {max_intervals!r}.")
        self.flops_per_token = None if flops_per_token is None else float(flops_per_token)  # None: tokens/s only
        self.peak_flops = None if peak_flops is None or flops_per_token is None else float(peak_flops)
        self.world_size = world_size
        self.max_intervals = max_intervals
        self.intervals: list[_Interval] = []  # closed intervals, oldest first
        self._open: _Interval | None = None  # the interval being counted
        self._log_tokens = 0  # counted since the last log_figures()
        self._log_seconds = 0.0
        self._position: tuple[int, int] | None = None  # (step, tokens seen) that the next update counts from
        self._clock_at_position = 0.0  # training seconds on the clock at that position
        self._active = 0.0  # training seconds before the current running stretch
        self._running_since: float | None = None  # None: stopped (not started, or paused)
        self._pauses = 0
        if self.peak_flops is None and self.flops_per_token is not None:
            logger.info("Peak FLOP/s of the device unknown: logging tokens/s and TFLOP/s, no MFU (set `peak_tflops`).")

    # ------------------------------------------------------------------------------------- the clock
    def _clock(self, now: float) -> float:
        return self._active + (0.0 if self._running_since is None else now - self._running_since)

    def update(self, step: int, tokens_seen: int, now: float | None = None) -> None:
        """Record that optimizer update ``step`` is done, ``tokens_seen`` tokens (all devices) in all."""
        now = time.perf_counter() if now is None else now
        if self._position == (step, tokens_seen):
            return  # the same update reported twice
        if self._pauses:
            logger.debug("update(%d) while paused: not counted.", step)
        elif self._running_since is None:
            self._running_since = now  # the starting point: nothing to count yet
        elif step <= self._position[0] or tokens_seen < self._position[1]:
            # Moved back without resume(step=…): a restored checkpoint. Count on from here, nothing for this one.
            logger.debug("update(%d) after update %d: counting on from here.", step, self._position[0])
            self._close()
        else:
            seconds = self._clock(now) - self._clock_at_position
            tokens = tokens_seen - self._position[1]
            if self._open is None:
                self._open = _Interval(self._position[0], self._position[0])
            self._open.end_step = step
            self._open.tokens += tokens
            self._open.seconds += seconds
            self._log_tokens += tokens
            self._log_seconds += seconds
        self._position = (step, tokens_seen)
        self._clock_at_position = self._clock(now)

    def pause(self, now: float | None = None) -> None:
        """Stop the clock: what follows is not training. Pauses nest; each closes the current interval."""
        now = time.perf_counter() if now is None else now
        if self._running_since is not None:
            self._active = self._clock(now)
            self._running_since = None
        self._pauses += 1
        self._close()

    def resume(self, now: float | None = None, *, step: int | None = None, tokens_seen: int | None = None) -> None:
        """Restart the clock once every :meth:`pause` is matched.

        With ``step`` and ``tokens_seen`` training continues from there (a restored checkpoint, a WSD branch
        point): the next update counts from this position.
        """
        now = time.perf_counter() if now is None else now
        if self._pauses == 0:
            raise ValueError("resume() without a matching pause(): call pause() before work that is not training.")
        if (step is None) != (tokens_seen is None):
            raise ValueError(f"resume() takes both `step` and `tokens_seen` or neither; got {step!r}, {tokens_seen!r}.")
        self._pauses -= 1
        if step is not None:
            self._position = (step, tokens_seen)
            self._clock_at_position = self._active  # the clock stands still while paused
        if self._pauses == 0 and self._position is not None:
            self._running_since = now

    @contextmanager
    def paused(self) -> Iterator[None]:
        """``with meter.paused():`` around work that is not training."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def _close(self) -> None:
        if self._open is not None and self._open.updates:
            self.intervals.append(self._open)
            if len(self.intervals) > self.max_intervals:
                self._merge_pairs()
        self._open = None

    def _merge_pairs(self) -> None:
        """Halve the history: merge each interval with the next where they are contiguous."""
        merged, old, i = [], self.intervals, 0
        while i < len(old):
            if i + 1 < len(old) and old[i].end_step == old[i + 1].start_step:
                a, b = old[i], old[i + 1]
                merged.append(_Interval(a.start_step, b.end_step, a.tokens + b.tokens, a.seconds + b.seconds))
                i += 2
            else:
                merged.append(old[i])
                i += 1
        self.intervals = merged[-self.max_intervals:]

    # ------------------------------------------------------------------------------------- figures
    def log_figures(self) -> dict[str, float]:
        """Figures over the updates counted since the previous call, for the Trainer's log; ``{}`` if none.

        Keys: ``tokens_per_second`` (all devices), ``tokens_per_second_per_device``, ``tflops_per_device`` and
        ``mfu`` (percent of the peak; only when the peak is known).
        """
        figures = self._figures(self._log_tokens, self._log_seconds)
        self._log_tokens, self._log_seconds = 0, 0.0
        self._close()
        return figures

    def summary(self, first_step: int | None = None, last_step: int | None = None) -> dict[str, float]:
        """Mean figures over updates ``first_step + 1 … last_step`` (default: all): a budget's, for ``budget.json``.

        An interval straddling the range counts in proportion to its updates inside it. Adds ``updates``,
        ``tokens`` and ``seconds`` (training time) to the :meth:`log_figures` keys; ``{}`` if nothing was counted.
        """
        low = -math.inf if first_step is None else first_step
        high = math.inf if last_step is None else last_step
        tokens = seconds = updates = 0.0
        for interval in self.intervals + ([self._open] if self._open is not None and self._open.updates else []):
            inside = min(interval.end_step, high) - max(interval.start_step, low)
            if inside > 0:
                share = inside / interval.updates
                tokens += share * interval.tokens
                seconds += share * interval.seconds
                updates += inside
        figures = self._figures(tokens, seconds)
        if figures:
            figures.update(updates=int(updates), tokens=int(round(tokens)), seconds=_sig(seconds))
        return figures

    def _figures(self, tokens: float, seconds: float) -> dict[str, float]:
        if tokens <= 0 or seconds <= 0:
            return {}
        per_device = tokens / seconds / self.world_size
        figures = {"tokens_per_second": _sig(tokens / seconds), "tokens_per_second_per_device": _sig(per_device)}
        if self.flops_per_token is None:
            return figures  # FLOPs per token unknown (set `flops_per_token`): no TFLOP/s, no MFU
        flops = per_device * self.flops_per_token
        figures["tflops_per_device"] = _sig(flops / 1e12)
        if self.peak_flops is not None:
            figures["mfu"] = _sig(100.0 * flops / self.peak_flops)
        return figures


def _sig(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant figures (log lines stay short; tiny CPU figures survive)."""
    return float(f"{value:.{digits}g}")
