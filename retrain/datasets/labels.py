"""Label estimation from overlapping reviews: a Dawid–Skene EM over reviewer labels.

Dawid & Skene (1979), "Maximum likelihood estimation of observer error-rates using the EM algorithm".
Every reviewer j has a confusion matrix θ_j[k, l] = P(j says l | the reply's true class is k) over the
classes (bad, neutral, good: those some fitted label uses); the classes have prior shares π_k. Given the labels n_ijl (how often
reviewer j said l on item i: a rating's label, a reviewer thumbs, a correction = bad), EM alternates

    E-step  T_ik ∝ π_k · Π_j Π_l θ_j[k, l] ^ n_ijl              (posterior of item i's class)
    M-step  π_k = (Σ_i T_ik + 1) / (N + K)     (only with `learn_prior`; by default π is uniform)
            θ_j[k, l] = (Σ_i T_ik n_ijl + α_j[k, l]) / Σ_l' (Σ_i T_ik n_ijl' + α_j[k, l'])

starting from the reliability-weighted vote shares, until the posteriors move less than `tol`.
The Dirichlet prior α_j is where gold items come in: row k is `strength` pseudo-labels spread as the
one-coin model with the reviewer's gold reliability r_j (feedback.quality): r_j on the diagonal plus
(1 - r_j) / K everywhere. With little overlap the prior dominates (a reliable reviewer outweighs an
unreliable one); with much overlap the data do, and a reviewer who systematically calls good replies
bad gets a confusion matrix that says so.

`strength` (10 pseudo-labels per row) keeps a reviewer's confusion matrix near its gold prior until it
has labelled tens of overlapped items: with a handful, one soft count would otherwise swing it (a
reviewer who happened to say "good" on every overlapped item would look uninformative and lose every
tie).

Only items with at least two distinct reviewers are fitted and given a posterior: with a single label
EM can only agree with it (every reviewer would look perfect, which is what made k = 1 reliability
meaningless). Reviewers of weight 0 (below the reliability floor) are left out before this runs.
"""

from collections.abc import Mapping, Sequence

import numpy as np

CLASSES: tuple[str, ...] = ("bad", "neutral", "good")


def dawid_skene(items: Mapping[str, Sequence[tuple[int, str]]], reliability: Mapping[int, float],
                default_reliability: float = 0.8, strength: float = 10.0, learn_prior: bool = False,
                max_iter: int = 200, tol: float = 1e-6) -> tuple[dict[str, dict[str, float]], dict]:
    """Posterior class shares per item (items with ≥ 2 distinct reviewers only) and a fit report.

    `items`: message id -> [(reviewer id, label in CLASSES)]; `reliability`: the gold reliability per
    reviewer (0..1) for the prior (clipped to 0.95: no reviewer is assumed infallible); reviewers
    missing from it get `default_reliability`. The class shares π stay uniform unless `learn_prior`:
    a base rate must not settle a tie between equally reliable reviewers (that goes to the
    `min_agreement` threshold as an unresolved conflict)."""
    fitted = {mid: [(r, lab) for r, lab in votes if lab in CLASSES] for mid, votes in items.items()}
    fitted = {mid: v for mid, v in sorted(fitted.items()) if len({r for r, _ in v}) >= 2}
    report = {"method": "Dawid-Skene EM (confusion matrix per reviewer, Dirichlet prior from gold reliability)",
              "items": len(fitted), "iterations": 0, "converged": True}
    if not fitted:
        return {}, report
    mids = list(fitted)
    reviewers = sorted({r for v in fitted.values() for r, _ in v})
    col = {r: j for j, r in enumerate(reviewers)}
    seen = {lab for v in fitted.values() for _, lab in v}
    classes = [c for c in CLASSES if c in seen]  # a class nobody used would soak up items as a free latent
    K, J, N = len(classes), len(reviewers), len(mids)
    index = {c: k for k, c in enumerate(classes)}
    # n[i, j, l]: label counts (dense: fine for the thousands of overlapped items a build sees)
    n = np.zeros((N, J, K))
    for i, mid in enumerate(mids):
        for r, lab in fitted[mid]:
            n[i, col[r], index[lab]] += 1
    rel = np.array([min(max(reliability.get(r, default_reliability), 0.0), 0.95) for r in reviewers])
    alpha = strength * (rel[:, None, None] * np.eye(K)[None] + (1 - rel[:, None, None]) / K)  # J x K x K
    # start: reliability-weighted vote shares
    T = (n * np.maximum(rel, 1e-3)[None, :, None]).sum(axis=1) + 1e-2
    T /= T.sum(axis=1, keepdims=True)
    for it in range(1, max_iter + 1):
        pi = (T.sum(axis=0) + 1) / (N + K) if learn_prior else np.full(K, 1 / K)
        counts = np.einsum("ik,ijl->jkl", T, n) + alpha
        theta = counts / counts.sum(axis=2, keepdims=True)
        log_t = np.log(pi)[None, :] + np.einsum("ijl,jkl->ik", n, np.log(theta))
        log_t -= log_t.max(axis=1, keepdims=True)
        new = np.exp(log_t)
        new /= new.sum(axis=1, keepdims=True)
        delta = float(np.abs(new - T).max())
        T = new
        report["iterations"] = it
        if delta < tol:
            break
    else:
        report["converged"] = False
    accuracy = {int(r): round(float((np.diag(theta[j]) * pi).sum()), 4) for r, j in col.items()}
    report["class_prior"] = {c: round(float(p), 4) for c, p in zip(classes, pi, strict=True)}
    report["reviewer_accuracy"] = {str(r): a for r, a in sorted(accuracy.items())}
    posteriors = {mid: {c: float(T[i, k]) for k, c in enumerate(classes)} for i, mid in enumerate(mids)}
    return posteriors, report
