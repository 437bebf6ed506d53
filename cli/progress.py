"""The encode progress bar (tqdm): iteration, loss, PSNR, it/s, ETA, one bar over all banks;
silent when asked or when stderr is not a terminal. It also warns once, early, when the whole
encode will take long, and says how to make it faster."""
import sys
import time

import click
from tqdm import tqdm

SLOW_SECONDS = 60  # above this, say how long and how to go faster
WARN_AFTER = 40  # iterations timed for the estimate


class FitProgress:
    def __init__(self, fit, quant, quiet: bool, banks: int = 1):
        self.per_bank = fit.iters + quant.qat_iters
        self.fit_iters = fit.iters
        self.banks = banks
        self.total = self.per_bank * banks
        self.quiet = quiet
        self.offset = 0  # iterations of the banks already finished
        self.stage, self.stage_base, self.stage_total = None, 0, 0  # within the current bank
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
        ran = self.stage_base + self.stage_total  # what this bank's stages actually counted
        self.offset += ran or self.per_bank
        self.stage, self.stage_base, self.stage_total = None, 0, 0

    def update(self, stage: str, it: int, total: int, loss: float, psnr: float):
        if stage != self.stage:  # stages (fit, distil, qat) follow each other in one bar
            self.stage_base += self.stage_total
            self.stage, self.stage_total = stage, total
        if stage == "fit" and total != self.fit_iters and self.offset == 0:
            self._resize(total)  # e.g. the denoising stopping rule chose the iterations
        done = self.offset + self.stage_base + it
        if self.bar is not None and done > self.bar.total:
            self.bar.total = done
        if stage == "fit" and not self.quiet and not self.warned:
            self._maybe_warn(done)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(f"{stage} loss {loss:.2e} PSNR {psnr:.2f} dB", refresh=False)

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
            click.echo(f"note: this encode will take about {eta / 60:.0f} min here; a GPU "
                       "(--device cuda), fewer --iters, a smaller -k or a smaller image make it "
                       "faster", err=True)
