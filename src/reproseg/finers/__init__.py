"""FineRS: LPR and GSE stages, retrospective regions, two-stage inference."""
