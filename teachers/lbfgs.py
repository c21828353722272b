"""L-BFGS over a batch of independent problems, each with its own state.

``torch.optim.LBFGS`` over a concatenated batch would couple the images: one shared
curvature history, one step size, one stopping rule. Here row ``b`` of the (B, N)
variable has its own history, step and convergence, so each image's trajectory is the
one it would follow alone (up to float rounding). The update rule is that of
``torch.optim.LBFGS`` without line search (the fixed-step variant Gatys-style
implementations use): the first step is scaled by ``min(1, 1 / |g|_1)``, later steps
use ``lr`` along the two-loop direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepReport:
    """What one call of :meth:`BatchedLBFGS.step` did, per row (B,)."""

    active: torch.Tensor  # bool: still optimising after this step
    stopped_reason: list[str | None]  # why each newly stopped row stopped, else None


class BatchedLBFGS:
    """Per-row L-BFGS state for a variable of shape (B, N).

    Usage: evaluate the loss (B,) and gradient (B, N) at ``x`` for the active rows, then
    call :meth:`step` which updates ``x`` in place for those rows and decides which rows
    stop (converged, stalled or non-finite).
    """

    def __init__(
        self,
        x: torch.Tensor,
        *,
        history_size: int = 100,
        lr: float = 1.0,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
    ) -> None:
        if x.dim() != 2:
            raise ValueError(f"x must be (B, N), got {tuple(x.shape)}")
        batch, numel = x.shape
        self.x = x
        self.history_size = history_size
        self.lr = lr
        self.tolerance_grad = tolerance_grad
        self.tolerance_change = tolerance_change
        options = {"device": x.device, "dtype": x.dtype}
        self.dirs = torch.zeros(batch, history_size, numel, **options)  # y_k = g_{k+1} - g_k
        self.steps = torch.zeros(batch, history_size, numel, **options)  # s_k = t_k d_k
        self.rho = torch.zeros(batch, history_size, **options)  # 1 / (y_k . s_k)
        self.head = torch.zeros(batch, dtype=torch.long, device=x.device)  # next ring slot
        self.count = torch.zeros(batch, dtype=torch.long, device=x.device)  # filled slots
        self.hessian_diag = torch.ones(batch, **options)
        self.prev_grad = torch.zeros(batch, numel, **options)
        self.prev_loss = torch.zeros(batch, **options)
        self.direction = torch.zeros(batch, numel, **options)
        self.step_size = torch.zeros(batch, **options)
        self.iterations = torch.zeros(batch, dtype=torch.long, device=x.device)
        self.active = torch.ones(batch, dtype=torch.bool, device=x.device)

    @torch.no_grad()
    def step(self, rows: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor) -> StepReport:
        """Take one step for ``rows`` (indices of active rows) given their loss (R,) and gradient (R, N)."""
        reasons: list[str | None] = [None] * self.x.shape[0]
        loss = loss.detach().to(self.x.dtype)
        grad = grad.detach().to(self.x.dtype)

        finite = torch.isfinite(loss) & torch.isfinite(grad).all(dim=1)
        first = self.iterations[rows] == 0
        if (~finite).any():
            bad = rows[~finite]
            # Undo the step that produced the non-finite value: the last good iterate is kept.
            was_stepped = self.iterations[bad] > 0
            undo = bad[was_stepped]
            self.x[undo] -= self.step_size[undo, None] * self.direction[undo]
            self._stop(bad, "non-finite loss", reasons)
        rows, loss, grad, first = rows[finite], loss[finite], grad[finite], first[finite]
        if rows.numel() == 0:
            return StepReport(self.active.clone(), reasons)

        # Convergence checks of torch.optim.LBFGS, per row.
        grad_small = grad.abs().amax(dim=1) <= self.tolerance_grad
        stalled = (~first) & ((loss - self.prev_loss[rows]).abs() < self.tolerance_change)
        done = grad_small | stalled
        if done.any():
            self._stop(rows[grad_small], "converged (gradient)", reasons)
            self._stop(rows[stalled & ~grad_small], "converged (loss change)", reasons)
        keep = ~done
        rows, loss, grad, first = rows[keep], loss[keep], grad[keep], first[keep]
        if rows.numel() == 0:
            return StepReport(self.active.clone(), reasons)

        self._update_history(rows[~first], grad[~first])
        direction = torch.where(first[:, None], -grad, -self._two_loop(rows, grad))
        step_size = torch.where(
            first, torch.clamp(1.0 / grad.abs().sum(dim=1), max=1.0) * self.lr, torch.full_like(loss, self.lr)
        )
        self.direction[rows] = direction
        self.step_size[rows] = step_size
        self.prev_grad[rows] = grad
        self.prev_loss[rows] = loss
        self.iterations[rows] += 1

        tiny = (direction * step_size[:, None]).abs().amax(dim=1) <= self.tolerance_change
        self.x[rows] += step_size[:, None] * direction
        if tiny.any():
            self._stop(rows[tiny], "converged (step size)", reasons)
        return StepReport(self.active.clone(), reasons)

    def _stop(self, rows: torch.Tensor, reason: str, reasons: list[str | None]) -> None:
        self.active[rows] = False
        for row in rows.tolist():
            reasons[row] = reason

    def _update_history(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        if rows.numel() == 0:
            return
        y = grad - self.prev_grad[rows]
        s = self.direction[rows] * self.step_size[rows, None]
        ys = (y * s).sum(dim=1)
        # Curvature condition: only positive-curvature pairs keep the inverse Hessian positive definite.
        accept = ys > 1e-10
        rows, y, s, ys = rows[accept], y[accept], s[accept], ys[accept]
        if rows.numel() == 0:
            return
        slot = self.head[rows]
        self.dirs[rows, slot] = y
        self.steps[rows, slot] = s
        self.rho[rows, slot] = 1.0 / ys
        self.head[rows] = (slot + 1) % self.history_size
        self.count[rows] = torch.clamp(self.count[rows] + 1, max=self.history_size)
        self.hessian_diag[rows] = ys / (y * y).sum(dim=1)

    def _two_loop(self, rows: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Approximate H^-1 g with each row's own history (newest pair first)."""
        count = self.count[rows]
        depth = int(count.max()) if count.numel() else 0
        q = grad.clone()
        alphas = []
        for j in range(depth):
            slot = (self.head[rows] - 1 - j) % self.history_size
            valid = (j < count)[:, None]
            s = self.steps[rows, slot]
            y = self.dirs[rows, slot]
            alpha = self.rho[rows, slot] * (s * q).sum(dim=1)
            alphas.append(alpha)
            q = torch.where(valid, q - alpha[:, None] * y, q)
        r = q * self.hessian_diag[rows, None]
        for j in reversed(range(depth)):
            slot = (self.head[rows] - 1 - j) % self.history_size
            valid = (j < count)[:, None]
            s = self.steps[rows, slot]
            y = self.dirs[rows, slot]
            beta = self.rho[rows, slot] * (y * r).sum(dim=1)
            r = torch.where(valid, r + s * (alphas[j] - beta)[:, None], r)
        return r
