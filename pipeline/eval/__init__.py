"""Judging outputs: error rates (``metrics``), held-out splits by source (``splits``), scoring a corpus run against
labels (``labels``) and the corpus report page (``report``)."""
