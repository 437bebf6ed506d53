"""The encode progress bar (tqdm): iteration, loss, PSNR, it/s, ETA, one bar over all banks;
silent when asked or when stderr is not a terminal. It also warns once, early, when the whole
encode will take long, and says how to make it faster."""
import sys
import time

import click
from tqdm import tqdm

from ddcodec.quant import rounding_steps

from .interrupt import raise_if_interrupted

SLOW_SECONDS = 60  # above this, say how long and how to go faster
WARN_AFTER = 40  # iterations timed for the estimate


class FitProgress:
    def __init__(self, fit, quant, quiet: bool, banks: int = 1, may_stop: bool = False):
        self.may_stop = may_stop  # a denoising fit's discrepancy stop: the whole budget is its bound
        self.per_bank = fit.iters + quant.qat_iters + rounding_steps(quant, fit.iters)
        self.fit_iters = fit.iters
        self.banks = banks
        self.total = self.per_bank * banks
        self.quiet = quiet
        self.offset = 0  # iterations of the banks already finished
        self.stage, self.stage_base, self.stage_total = None, 0, 0  # within the current bank
        self.stage_done = 0  # the current stage's last reported iteration
        self.done = 0  # iterations counted over all banks and stages
        self.bar = None
        self.warned = False
        self.first = None  # (time, iterations) at the first report

    def __enter__(self):
        if not self.quiet and sys.stderr.isatty():
            self.bar = tqdm(total=self.total, unit="it", dynamic_ncols=True, file=sys.stderr)
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False

    def next_bank(self):
        self._end_stage()
        self.offset += self.stage_base or self.per_bank  # what this bank's stages counted
        self.stage, self.stage_base, self.stage_total = None, 0, 0

    def _end_stage(self):
        # a stage that stopped early (the discrepancy stop ends a denoising fit before its
        # cap) gives its unused iterations back, so the bar does not jump over them
        self.stage_base += self.stage_done
        self._shrink(self.stage_total - self.stage_done)
        self.stage_total = self.stage_done = 0

    def update(self, stage: str, it: int, total: int, loss: float, psnr: float):
        raise_if_interrupted()  # a Ctrl-C that torch swallowed ends the fit here
        # stages (fit, distil, qat) follow each other in one bar; a stage may follow one of
        # its own name (the tiles' pilot fits, one per tile size; fits with no fine-tuning
        # between them), which its count starting again tells
        if stage != self.stage or it <= self.stage_done:
            self._end_stage()
            self.stage, self.stage_total = stage, total
        if stage == "fit" and total != self.fit_iters and self.offset == 0:
            self._resize(total)  # e.g. the denoising stopping rule chose the iterations
        self.stage_done = it
        done = self.done = self.offset + self.stage_base + it
        if self.bar is not None and done > self.bar.total:
            self.bar.total = done
        if stage == "fit" and not self.quiet and not self.warned:
            self._maybe_warn(done)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(f"{stage} loss {loss:.2e} PSNR {psnr:.2f} dB", refresh=False)

    def _shrink(self, n: int):
        if n > 0:
            self.total -= n
            if self.bar is not None:
                self.bar.total = max(self.total, self.bar.n)
                self.bar.refresh()

    def _resize(self, fit_iters: int):
        self.per_bank += fit_iters - self.fit_iters
        self.total = self.per_bank * self.banks
        self.fit_iters = fit_iters
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def _maybe_warn(self, done: int):
        # time a stretch after the first report: the first iterations carry one-off start-up
        # costs (thread pools, allocations) that made early estimates 10x too long
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, done)
            return
        if done - self.first[1] < WARN_AFTER:
            return
        self.warned = True
        per_it = (now - self.first[0]) / (done - self.first[1])
        eta = per_it * self.total * 1.1  # the quantization search and QAT cost a little more
        if eta > SLOW_SECONDS:
            bound = "up to about" if self.may_stop else "about"  # an early stop ends it sooner
            click.echo(f"note: this encode will take {bound} {eta / 60:.0f} min here; a GPU "
                       "(--device cuda), fewer --iters, a smaller -k or a smaller image make it "
                       "faster", err=True)
