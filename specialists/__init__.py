"""Specialist ensembles (Hinton, Vinyals & Dean 2015, section 5).

    edgekd specialists build --teacher runs/generalist --data fashion-mnist --clusters auto --out runs/spec
    edgekd evaluate runs/spec --data fashion-mnist
    edgekd distill --teacher runs/spec --data fashion-mnist --student mlp --out runs/student-spec

- ``specialists.clustering``: confusion clustering, k-means on the columns of the covariance of the
  generalist's train-split probabilities (``find_clusters``), and the heatmap.
- ``specialists.training``: one specialist per cluster S (generalist's weights, |S|+1 head with a
  dustbin, half S / half other data, dustbin logit corrected for the oversampling).
- ``specialists.combine``: the KL combination at inference, the exportable module and the
  ``Teacher`` that ``edgekd.teachers`` loads for artifacts of kind "specialist-ensemble".
- ``specialists.build``: ``build_specialists`` (the stage, one artifact) and ``regate_specialists``.
- ``specialists.config``: ``SpecialistConfig``, where the stage's defaults live (no torch: the CLI reads them).

Defaults and where they differ from the paper (each is explained in its module):

- clustering temperature: ``softmax(z / 4)``, not the paper's T = 1 (``--cluster-temperature 1``
  gives the paper's): a confident 10-class generalist's raw covariance is diagonal-dominated and
  k-means returns degenerate clusters;
- ``--clusters auto``: the K in 2..min(C-1, max(8, ceil(2 sqrt C))) with the best cosine silhouette
  (the paper does not say how K was chosen); ``--clusters 3,5`` merges two clusterings into overlapping specialists;
- the generalist must be one model (its weights initialise the specialists); an ensemble is refused
  unless ``--member`` picks one;
- the new head starts from the generalist's rows for S (the paper does not say);
- dustbin correction: the exact prior-shift bias log(pi_dust/rho_dust) - log(pi_S/rho_S); the paper's
  "log of the oversampling proportion", log(rho_S/pi_S), is lower by log(pi_dust/rho_dust), about
  log 2 at half and half however small S is;
- solver: fixed-point (EM) updates of q, the logits' gradient step taken in probability space, instead
  of plain gradient descent on the logits, which converged far more slowly; exact after one update
  when at most one specialist is active (disjoint clusters with top-1 gating, the default);
- early stopping and model selection use a val set mixed in the training proportion.
"""
